#!/usr/bin/env bash
# putbw_vs_perftest.sh - the UCX backend's write bandwidth beside ucx_perftest,
# side by side in one run (issue 3 section 5, the backend owner's quick check;
# kvbench is the project's benchmark).
#
#   tests/transport_ucx/putbw_vs_perftest.sh [BUILD_DIR] [ROUNDS]
#
# For 64 KiB, 1 MiB and 4 MiB, ROUNDS (3) interleaved rounds of:
#   UCX_TLS=tcp ucx_perftest -t ucp_put_bw -O 16   vs   ucx_putbw ucx+tcp
#     (2000 / 300 / 100 iterations; WRITEs delivery-complete, the default,
#     and with local completion, DELIVERY=0, as ucx_perftest's puts)
#   UCX_TLS=sm  ucx_perftest -t ucp_put_bw -O 16   vs   ucx_putbw ucx+sm (ALLOC=1)
#     (10x as many)
# plus ucx_putbw ucx+sm on caller memory (ALLOC=0, UCX's software RMA).
# Prints the median GB/s (10^9 B/s; ucx_perftest's "overall" MB/s are 2^20
# B/s and are converted) and the ratio.  Every process runs under timeout.
set -uo pipefail
cd "$(dirname "$0")/../.."
B=${1:-build-ucx}
ROUNDS=${2:-3}
PUTBW=$B/tests/transport_ucx/ucx_putbw
[ -x "$PUTBW" ] || { echo "no $PUTBW (ninja -C $B tests/transport_ucx/ucx_putbw)" >&2; exit 1; }
command -v ucx_perftest >/dev/null || { echo "no ucx_perftest (ucx-utils)" >&2; exit 1; }
OUT=$(mktemp -d /tmp/putbw.XXXXXX)
PORT=$((30000 + RANDOM % 20000))

perftest() { # TLS SIZE ITERS -> GB/s
  PORT=$((PORT + 1))
  UCX_TLS=$1 timeout 120 ucx_perftest -p $PORT >/dev/null 2>&1 &
  local s=$!
  sleep 0.5
  local mbs
  mbs=$(UCX_TLS=$1 timeout 120 ucx_perftest 127.0.0.1 -p $PORT -t ucp_put_bw -s "$2" -n "$3" \
        -w 100 -O 16 2>/dev/null | awk '/^Final:/ {print $7}')
  wait $s 2>/dev/null
  awk -v m="${mbs:-0}" 'BEGIN {printf "%.3f", m * 1048576 / 1e9}'
}
putbw() { # URI SIZE ITERS ALLOC [DELIVERY] -> GB/s
  timeout 120 "$PUTBW" "$1" "$2" "$3" "$4" "${5:-1}" 2>/dev/null | awk '{print $(NF-1)}'
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : 0)}'; }

for size in 65536 1048576 4194304; do
  # about 128-400 MB per tcp run, 1.3-2 GB per sm run (sm is ~100x faster
  # here; fewer iterations would measure the end-of-run round trip)
  it=$(( size == 65536 ? 2000 : (size == 1048576 ? 300 : 100) ))
  is=$(( it * 10 ))
  for r in $(seq "$ROUNDS"); do
    echo "$(perftest tcp $size $it)" >>"$OUT/pt-tcp-$size"
    echo "$(putbw ucx+tcp $size $it 0)" >>"$OUT/kv-tcp-$size"
    echo "$(putbw ucx+tcp $size $it 0 0)" >>"$OUT/kv-tcpl-$size"
    echo "$(perftest sm $size $is)" >>"$OUT/pt-sm-$size"
    echo "$(putbw ucx+sm $size $is 1)" >>"$OUT/kv-sm-$size"
    echo "$(putbw ucx+sm $size $(( it / 10 + 10 )) 0)" >>"$OUT/kv-smu-$size"
  done
done

printf '| size | perftest tcp | ucx+tcp | ratio | ucx+tcp local cmpl | ratio | perftest sm | ucx+sm (alloc) | ratio | ucx+sm (caller mem) |\n'
printf '|---|---|---|---|---|---|---|---|---|---|\n'
for size in 65536 1048576 4194304; do
  pt=$(median <"$OUT/pt-tcp-$size"); kv=$(median <"$OUT/kv-tcp-$size")
  kl=$(median <"$OUT/kv-tcpl-$size")
  ps=$(median <"$OUT/pt-sm-$size"); ks=$(median <"$OUT/kv-sm-$size")
  ku=$(median <"$OUT/kv-smu-$size")
  awk -v s=$size -v pt=$pt -v kv=$kv -v kl=$kl -v ps=$ps -v ks=$ks -v ku=$ku 'BEGIN {
    printf "| %d | %s | %s | %.2f | %s | %.2f | %s | %s | %.2f | %s |\n", s, pt, kv,
      (pt > 0 ? kv / pt : 0), kl, (pt > 0 ? kl / pt : 0), ps, ks, (ps > 0 ? ks / ps : 0), ku }'
done
echo "raw values: $OUT"
