#!/usr/bin/env bash
# Quick A/B probe for hot-path work: gateway (or the bare pass-through with PT=1) under wrk -c64 for 5 s,
# printing req/s and the target's CPU ms per 1,000 requests (utime+stime from /proc). Same placement as
# `npm run bench` (target on core 0, simulator and wrk on core 1). BODY_FILE=path posts that body instead;
# NODE_FLAGS="--max-semi-space-size=8" starts the target with those Node/V8 flags.
# Single runs vary +-8% on a shared machine: alternate variants and repeat, e.g.
# `for i in 1 2 3; do PT=1 bench/cpu-per-request.sh; bench/cpu-per-request.sh; done`.
# Needs: wrk, taskset, a build (`npm run build && npx tsc -p tsconfig.bench.json`). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'kill ${SIM:-} ${TARGET:-} 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
SIM_PORT=${SIM_PORT:-19301}
PORT=${PORT:-19300}
cat > "$dir/gw.yaml" <<YAML
server: { host: 127.0.0.1, port: $PORT }
providers:
  - { name: a, base_url: http://127.0.0.1:$SIM_PORT/v1, api_key: sk-bench-a-0123456789abcdef, max_concurrency: 1100, models: [ { name: chat, price: { input_per_mtok: 0.1, output_per_mtok: 0.4 } } ] }
  - { name: b, base_url: http://127.0.0.1:$SIM_PORT/v1, api_key: sk-bench-b-0123456789abcdef, max_concurrency: 1100, models: [ { name: chat, price: { input_per_mtok: 0.5, output_per_mtok: 1.5 } } ] }
  - { name: c, base_url: http://127.0.0.1:$SIM_PORT/v1, api_key: sk-bench-c-0123456789abcdef, max_concurrency: 1100, models: [ { name: chat, price: { input_per_mtok: 1.0, output_per_mtok: 4.0 } } ] }
routes:
  bench-chat: { strategy: ${STRATEGY:-hybrid}, targets: [a/chat, b/chat, c/chat] }
YAML
body='{"model":"bench-chat","messages":[{"role":"user","content":"Say hello in one short sentence, please."}],"max_tokens":16}'
# BODY_FILE=path sends that request body instead (its model must be bench-chat), e.g. a 2k-token prompt.
[ -n "${BODY_FILE:-}" ] && body=$(cat "$BODY_FILE")
case $body in *']==]'*) echo "the body must not contain ]==] (it closes the Lua string)" >&2; exit 2 ;; esac
cat > "$dir/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = [==[$body]==]
LUA
taskset -c 1 node dist/main.js simulate --fast --port "$SIM_PORT" >/dev/null 2>&1 &
SIM=$!
if [ -n "${PT:-}" ]; then
  taskset -c 0 node ${NODE_FLAGS:-} dist-bench/bench/passthrough.js --upstream "http://127.0.0.1:$SIM_PORT" --port "$PORT" >/dev/null 2>&1 &
else
  taskset -c 0 node ${NODE_FLAGS:-} "${DIST:-dist}/main.js" --config "$dir/gw.yaml" --log-level "${LOG_LEVEL:-info}" >/dev/null 2>&1 &
fi
TARGET=$!
sleep 1.5
url="http://127.0.0.1:$PORT/v1/chat/completions"
taskset -c 1 wrk -t1 -c64 -d2s -s "$dir/post.lua" "$url" >/dev/null
cpu() { awk '{print $14+$15}' "/proc/$TARGET/stat"; }
c0=$(cpu)
out=$(taskset -c 1 wrk -t1 -c64 -d5s -s "$dir/post.lua" "$url")
c1=$(cpu)
reqs=$(echo "$out" | awk '/requests in/ {print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
tick=$(getconf CLK_TCK)
echo "$([ -n "${PT:-}" ] && echo pass-through || echo gateway) req/s $rps  cpu-ms/1k $(awk -v a="$c0" -v b="$c1" -v n="$reqs" -v t="$tick" 'BEGIN { printf "%.1f", (b - a) * 1000 / t * 1000 / n }')"
