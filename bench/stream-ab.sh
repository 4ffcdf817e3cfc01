#!/usr/bin/env bash
# Interleaved A/B of two gateway builds on stream starts: N streams opened at once (default 100, 64 content
# chunks 20 ms apart, as `npm run bench` streams them), R pairs (default 6), A-B and B-A in turn; prints each
# pair's TTFT p50 (ms), the target's CPU ms per stream and its peak RSS (VmHWM, MB), then the means and mean
# differences. The burst
# TTFT swings run to run on a shared machine: believe a difference only when most pairs agree.
#   cp -r dist dist-base            # the build to compare against (git-ignored), then change, npm run build
#   npx tsc -p tsconfig.bench.json  # the load client (dist-bench/)
#   bench/stream-ab.sh dist-base dist 6 [STREAMS]
# Needs: taskset. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: bench/stream-ab.sh DIST_A DIST_B [PAIRS] [STREAMS]}
B=${2:?usage: bench/stream-ab.sh DIST_A DIST_B [PAIRS] [STREAMS]}
N=${3:-6}
STREAMS=${4:-100}
dir=$(mktemp -d)
trap 'kill ${SIM:-} ${TARGET:-} 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
SIM_PORT=${SIM_PORT:-19311}
PORT=${PORT:-19310}
cat > "$dir/gw.yaml" <<YAML
server: { host: 127.0.0.1, port: $PORT }
providers:
  - { name: a, base_url: http://127.0.0.1:$SIM_PORT/v1, api_key: sk-bench-a-0123456789abcdef, max_concurrency: 1100, models: [ { name: chat, price: { input_per_mtok: 0.1, output_per_mtok: 0.4 } } ] }
  - { name: b, base_url: http://127.0.0.1:$SIM_PORT/v1, api_key: sk-bench-b-0123456789abcdef, max_concurrency: 1100, models: [ { name: chat, price: { input_per_mtok: 0.5, output_per_mtok: 1.5 } } ] }
  - { name: c, base_url: http://127.0.0.1:$SIM_PORT/v1, api_key: sk-bench-c-0123456789abcdef, max_concurrency: 1100, models: [ { name: chat, price: { input_per_mtok: 1.0, output_per_mtok: 4.0 } } ] }
routes:
  bench-chat: { strategy: hybrid, targets: [a/chat, b/chat, c/chat] }
YAML
body='{"model":"bench-chat","stream":true,"messages":[{"role":"user","content":"Say hello, please."}]}'
args=$(node -e 'console.log(JSON.stringify({url:process.argv[1],body:process.argv[2],streams:+process.argv[3],expectedChunks:64,timeoutMs:30000}))' \
  "http://127.0.0.1:$PORT/v1/chat/completions" "$body" "$STREAMS")
taskset -c 1 node dist/main.js simulate --port "$SIM_PORT" --completion-tokens 64 --chunk-delay-ms 20 >/dev/null 2>&1 &
SIM=$!
cpu() { awk '{print $14+$15}' "/proc/$TARGET/stat"; }
# One build: started, warmed with one burst, then one measured burst: "TTFT-p50-ms CPU-ms-per-stream HWM-MB".
run() {
  taskset -c 0 node "$1/main.js" --config "$dir/gw.yaml" --log-level info >/dev/null 2>&1 &
  TARGET=$!
  sleep 1.5
  taskset -c 1 node dist-bench/bench/stream-load.js "$args" >/dev/null
  local c0 c1 out
  c0=$(cpu)
  out=$(taskset -c 1 node dist-bench/bench/stream-load.js "$args")
  c1=$(cpu)
  local hwm
  hwm=$(awk '/^VmHWM:/ {print int($2 / 1024)}' "/proc/$TARGET/status")
  kill "$TARGET"; wait "$TARGET" 2>/dev/null || true
  node -e 'const r=JSON.parse(process.argv[1]);const t=+process.argv[4];console.log(r.ttftP50Ms.toFixed(2), ((process.argv[3]-process.argv[2])*1000/t/r.streams).toFixed(3), process.argv[5])' \
    "$out" "$c0" "$c1" "$(getconf CLK_TCK)" "$hwm"
}
for i in $(seq 1 "$N"); do
  if [ $((i % 2)) -eq 1 ]; then a=$(run "$A"); b=$(run "$B"); else b=$(run "$B"); a=$(run "$A"); fi
  echo "$a $b"
done | awk -v A="$A" -v B="$B" -v S="$STREAMS" '{ print; ta += $1; ca += $2; ma += $3; tb += $4; cb += $5; mb += $6; n++ }
  END { printf "%d streams: %s TTFT p50 %.2f ms, %.3f CPU ms/stream, %.0f MB peak; %s %.2f ms, %.3f, %.0f MB; B-A %+.2f ms, %+.3f CPU ms/stream, %+.0f MB over %d pairs\n",
        S, A, ta / n, ca / n, ma / n, B, tb / n, cb / n, mb / n, (tb - ta) / n, (cb - ca) / n, (mb - ma) / n, n }'
