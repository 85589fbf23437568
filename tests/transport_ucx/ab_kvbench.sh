#!/usr/bin/env bash
# ab_kvbench.sh - not a test: ucx_perftest -t ucp_put_bw (UCX_TLS=tcp) and one or
# more kvbench binaries (write -t ucx+tcp, depth 16, >= 1 GiB per run), interleaved
# round by round, for A/B comparisons of transport/ucx builds (bench/RESULTS-xfer.md).
#   tests/transport_ucx/ab_kvbench.sh SIZE ROUNDS KVBENCH...   e.g. 64K 6 /tmp/a /tmp/b
size=$1; rounds=$2; shift 2
srv=$(mktemp); trap 'rm -f "$srv"' EXIT
bytes=$(python3 -c "s='$size';m={'K':1024,'M':1<<20};print(int(s[:-1])*m[s[-1]])")
iters=$(( (1<<30) / bytes )); [ $iters -lt 1000 ] && iters=1000
port=$((30000 + RANDOM % 20000))
for r in $(seq $rounds); do
  port=$((port+1))
  UCX_TLS=tcp timeout 120 ucx_perftest -p $port >/dev/null 2>&1 & sp=$!; sleep 0.5
  v=$(UCX_TLS=tcp timeout 120 ucx_perftest 127.0.0.1 -p $port -t ucp_put_bw -s $bytes -n $iters -w 100 -O 16 -f 2>&1 | awk 'NF >= 8 && $1 ~ /^[0-9]+$/ {v = $6} END {print v*1048576/1e9}')
  kill $sp 2>/dev/null; wait $sp 2>/dev/null
  echo "r$r $size perftest $v load $(cut -d' ' -f1 /proc/loadavg)"
  for b in "$@"; do
    port=$((port+1))
    timeout 120 $b write -t ucx+tcp -p $port -b 127.0.0.1 --timeout 30 >"$srv" 2>&1 & sp=$!
    for _ in $(seq 50); do grep -q "listening on" "$srv" && break; sleep 0.1; done
    v=$(timeout 120 $b write -t ucx+tcp -p $port -b 127.0.0.1 -s $size -n $iters -w 100 -q 16 --json 127.0.0.1 2>&1 | python3 -c 'import json,sys
for l in sys.stdin:
    if l.startswith("{"): print(round(json.loads(l)["bw_avg_gbps"],3))')
    for _ in $(seq 50); do kill -0 $sp 2>/dev/null || break; sleep 0.1; done
    kill $sp 2>/dev/null; wait $sp 2>/dev/null
    [ -z "$v" ] && tail -n 3 "$srv"
    echo "r$r $size $(basename $b) $v"
  done
done
