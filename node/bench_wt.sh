#!/usr/bin/env bash
# node/bench_wt.sh - write-through throughput of kvnode against `kvbench read`, side by side.
#   [PORT0=17600] [PPI=64] [BIG=64M] [WTROUNDS=20] [WTBENCH=other kvn-wtbench] [WTARGS=...] node/bench_wt.sh BUILD_DIR [ROUNDS] [PAGE_BYTES] [TRANSPORTS...]
# For each transport and round: kvbench read (server + client, -s PAGE_BYTES -q 16), then a
# kvnode whose L1 is an engine in another process (kvn-wtbench --engine: the production
# path), then a kvnode with its own --l1 stand-in (loopback in one process). Prints one line
# per measurement and the medians and ratios per transport, then the median over rounds of
# the ratios measured within one round (the side-by-side figure: the machine's memory
# bandwidth drifts by 20 % or more between rounds). Ports: 127.0.0.1, PORT0..PORT0+10
# (kvbench on PORT0, the node on PORT0+5, its --events PUB on PORT0+6).
# kvn-wtbench runs with --events (the node's PUB): a round ends when CPU_PINNED BlockStored
# events announced every page it inserted, not at a stats poll.
# kvbench read of PAGE_BYTES ops re-reads one PAGE_BYTES buffer (cache-resident at 1 MiB), the
# node copies 128 MiB of distinct pages (DRAM): so each round also runs two DRAM-bound
# references: kvbench read of PAGE_BYTES ops cycling through a 128 MiB region (--buffer 128M:
# distinct pages on both sides, as the node's copies; -q 16 -n 512 -w 128: the warmup touches
# every one of the 128 slots once, so no page is first mapped while timed, as the node's
# untimed warmup round does), and kvbench read with BIG (default 64M, beyond the last-level
# cache) ops, 4 in flight; and a single-thread memcpy of the same pages (kvbench write -t
# memcpy -s PAGE_BYTES --buffer 128M): the DRAM copy floor the node's copies run into.
set -uo pipefail
PPI=${PPI:-64} # pages per insert (64 pages of 16 tokens: a 1024-token prompt)
BIG=${BIG:-64M}
WR=${WTROUNDS:-20} # kvn-wtbench rounds per node run (a round of 128 MiB lasts 7-30 ms)
P0=${PORT0:-17600}; PK=$P0; PN=$((P0 + 5)); PE=$((P0 + 6))
WTB=${WTBENCH:-} # another kvn-wtbench binary (A/B runs); default: BUILD_DIR's
WTARGS=${WTARGS:-} # extra kvn-wtbench args for the engine runs, e.g. "--engine-mem mmap --engine-poll busy"
B=${1:?build dir}; R=${2:-3}; PB=${3:-1M}; shift 3 2>/dev/null || shift $#
WTB=${WTB:-$B/node/kvn-wtbench}
TS=("$@"); [ ${#TS[@]} -eq 0 ] && TS=(ofi+tcp ofi+shm ucx+tcp ucx+sm)
bw_avg() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])["bw_avg_gbps"])'; }
# kvbench read server + client on transport $1 with the client options that follow: GB/s
kb_read() {
  local t=$1 s; shift
  "$B/bench/kvbench" read -t "$t" -p $PK -b 127.0.0.1 >/dev/null 2>&1 & s=$!
  sleep 0.5
  "$B/bench/kvbench" read -t "$t" -p $PK -b 127.0.0.1 "$@" --json 127.0.0.1 2>/dev/null | bw_avg
  kill $s 2>/dev/null; wait $s 2>/dev/null
}
med() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
for T in "${TS[@]}"; do
  : > /tmp/bwt_kb.$$; : > /tmp/bwt_wt.$$; : > /tmp/bwt_en.$$; : > /tmp/bwt_kd.$$; : > /tmp/bwt_kr.$$; : > /tmp/bwt_km.$$; : > /tmp/bwt_q1.$$; : > /tmp/bwt_qr.$$
  for r in $(seq 1 "$R"); do
    kb=$(kb_read "$T" -s "$PB" -n 400 -w 40 -q 16)
    kr=$(kb_read "$T" -s "$PB" --buffer 128M -n 512 -w 128 -q 16)
    kd=$(kb_read "$T" -s "$BIG" -n 24 -w 4 -q 4)
    km=$("$B/bench/kvbench" write -t memcpy -s "$PB" --buffer 128M -n 512 -w 128 --json 2>/dev/null | bw_avg)
    "$B/node/kvnode" --listen tcp://127.0.0.1:$PN --events tcp://127.0.0.1:$PE --transport "$T" \
      --page-size 16 --page-bytes "$PB" --host-pool 256M --no-hugepages --log-level warn & K=$!
    sleep 1
    en=$("$WTB" -c tcp://127.0.0.1:$PN --rounds "$WR" --pages-per-insert "$PPI" --engine 128 --events tcp://127.0.0.1:$PE $WTARGS --json)
    kill -TERM $K; wait $K
    "$B/node/kvnode" --listen tcp://127.0.0.1:$PN --events tcp://127.0.0.1:$PE --transport "$T" \
      --page-size 16 --page-bytes "$PB" --host-pool 256M --l1 128M --no-hugepages --log-level warn & K=$!
    sleep 1
    wt=$("$WTB" -c tcp://127.0.0.1:$PN --rounds "$WR" --pages-per-insert "$PPI" --events tcp://127.0.0.1:$PE --json)
    kill -TERM $K; wait $K
    g=$(echo "$wt" | python3 -c 'import json,sys; print(json.load(sys.stdin)["gbps"])')
    ge=$(echo "$en" | python3 -c 'import json,sys; print(json.load(sys.stdin)["gbps"])')
    echo "$T round $r: kvbench read $kb GB/s (128M region: $kr GB/s, $BIG ops: $kd GB/s, memcpy floor $km GB/s), write-through engine $ge GB/s, loopback $g GB/s"
    echo "  engine:   $en"; echo "  loopback: $wt"
    echo "$kb" >> /tmp/bwt_kb.$$; echo "$g" >> /tmp/bwt_wt.$$; echo "$ge" >> /tmp/bwt_en.$$; echo "$kd" >> /tmp/bwt_kd.$$; echo "$kr" >> /tmp/bwt_kr.$$; echo "$km" >> /tmp/bwt_km.$$
    python3 -c "print($ge/$kb if $kb > 0 else 0)" >> /tmp/bwt_q1.$$
    python3 -c "print($ge/$kr if $kr > 0 else 0)" >> /tmp/bwt_qr.$$
  done
  mk=$(med < /tmp/bwt_kb.$$); mw=$(med < /tmp/bwt_wt.$$); me=$(med < /tmp/bwt_en.$$); md=$(med < /tmp/bwt_kd.$$); mr=$(med < /tmp/bwt_kr.$$); mm=$(med < /tmp/bwt_km.$$)
  echo "$T median: kvbench read $mk GB/s | write-through engine $me GB/s (ratio $(python3 -c "print(round($me/$mk,2) if $mk>0 else 'n/a')")) | loopback $mw GB/s (ratio $(python3 -c "print(round($mw/$mk,2) if $mk>0 else 'n/a')")) | kvbench read 128M region $mr GB/s (engine/that $(python3 -c "print(round($me/$mr,2) if $mr>0 else 'n/a')")) | kvbench read $BIG ops $md GB/s (engine/that $(python3 -c "print(round($me/$md,2) if $md>0 else 'n/a')")) | memcpy floor $mm GB/s (engine/that $(python3 -c "print(round($me/$mm,2) if $mm>0 else 'n/a')"))"
  echo "$T side by side (median over rounds of the ratio within a round): engine / kvbench read $(med < /tmp/bwt_q1.$$ | xargs printf '%.2f') | engine / kvbench read 128M region $(med < /tmp/bwt_qr.$$ | xargs printf '%.2f')"
done
rm -f /tmp/bwt_q1.$$ /tmp/bwt_qr.$$ /tmp/bwt_kb.$$ /tmp/bwt_wt.$$ /tmp/bwt_en.$$ /tmp/bwt_kd.$$ /tmp/bwt_kr.$$ /tmp/bwt_km.$$
