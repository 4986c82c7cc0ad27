#!/usr/bin/env bash
# Learning-rate grid for a scenario, as McMahan et al. chose theirs: runs the scenario once
# per rate (stopping at its target accuracy) and prints rounds to target and seconds per round.
# Usage: Simulations/lr-grid.sh Simulations/mnist-2nn-iid.toml "0.05 0.1 0.2" [extra fedsim flags]
set -euo pipefail
scenario=$1
rates=$2
shift 2
cd "$(dirname "$0")/.."
swift build -c release --product fedsim >/dev/null
out=$(mktemp -d)
printf '%-8s %-16s %-14s %s\n' lr rounds_to_target best_accuracy s_per_round
for lr in $rates; do
    .build/release/fedsim --config "$scenario" --lr "$lr" --stop-at-target --quiet --report "$out/$lr.json" "$@" >/dev/null
    python3 - "$out/$lr.json" "$lr" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
print(f'{sys.argv[2]:<8} {str(s["rounds_to_target"] or "not reached (" + str(s["rounds_run"]) + ")"):<16} {s["best_accuracy"]:<14.4f} {s["mean_seconds_per_round"]:.3f}')
PY
done
