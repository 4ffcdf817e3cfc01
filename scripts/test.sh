#!/usr/bin/env bash
# `npm test`: the type check and the linters (`npm run checks`), then vitest when they pass. Their output is
# held and shown only when they fail. Arguments go to vitest (`npm test -- test/unit`).
# Run beside vitest (at nice 19) the checks saved ~35 s, but CI runs then failed load-timed tests (chaos
# accounting, lease lapses) two times in four: the suite's timing margins are set for an otherwise idle machine.
set -uo pipefail
cd "$(dirname "$0")/.."

held=$(mktemp)
trap 'rm -f "$held"' EXIT
if ! npm run -s checks >"$held" 2>&1; then
  cat "$held"
  echo "checks FAILED (npm run checks): see above; vitest not run"
  exit 1
fi
echo "checks passed: tsc --noEmit, eslint, prettier --check"
npx vitest run "$@"
