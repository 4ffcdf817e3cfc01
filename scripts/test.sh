#!/usr/bin/env bash
# `npm test`: the type check and the linters (`npm run checks`) run beside vitest rather than before it.
# The suite spends most of its time waiting on sockets and timers (it keeps about one of two cores busy), so
# the checks fill the idle core instead of adding ~40 s in front of the suite; at nice 19 they give way
# whenever a test wants the CPU. Their output is held and printed after vitest's; either failing fails the run.
# Arguments go to vitest (`npm test -- test/unit`).
set -uo pipefail
cd "$(dirname "$0")/.."

held=$(mktemp)
trap 'rm -f "$held"' EXIT
nice -n 19 npm run -s checks >"$held" 2>&1 &
checks=$!

npx vitest run "$@"
tests=$?

wait "$checks"
checked=$?
if [ "$checked" -eq 0 ]; then
  echo "checks passed: tsc --noEmit, eslint, prettier --check"
else
  cat "$held"
  echo "checks FAILED (npm run checks): see above"
fi
[ "$tests" -eq 0 ] && [ "$checked" -eq 0 ]
