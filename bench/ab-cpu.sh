#!/usr/bin/env bash
# Interleaved A/B of two gateway builds with cpu-per-request.sh: N pairs (default 6), A-B and B-A in turn,
# then the means and the mean difference of CPU ms per 1,000 requests. Differences under ~2 ms are noise on
# a shared 2-core machine; believe one only when most pairs agree.
#   cp -r dist dist-base            # the build to compare against, inside the checkout (git-ignored)
#   ...change, npm run build...
#   bench/ab-cpu.sh dist-base dist 8
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: bench/ab-cpu.sh DIST_A DIST_B [PAIRS]}
B=${2:?usage: bench/ab-cpu.sh DIST_A DIST_B [PAIRS]}
N=${3:-6}
run() { DIST=$1 bench/cpu-per-request.sh | awk '{print $5}'; }
for i in $(seq 1 "$N"); do
  # A-B, then B-A: a machine drifting one way over the run (shared cores do) favours neither side.
  if [ $((i % 2)) -eq 1 ]; then a=$(run "$A"); b=$(run "$B"); else b=$(run "$B"); a=$(run "$A"); fi
  echo "$a $b"
done | awk -v A="$A" -v B="$B" '{ print; d += $2 - $1; sa += $1; sb += $2; n++ }
  END { printf "%s %.1f  %s %.1f  B-A %.1f CPU ms per 1k requests over %d pairs\n", A, sa / n, B, sb / n, d / n, n }'
