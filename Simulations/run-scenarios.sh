#!/usr/bin/env bash
# Runs McMahan et al.'s MNIST scenarios and prints rounds to target, accuracy and seconds
# per round next to the paper's figures. Reports land in reports/<scenario>.json.
# Usage: Simulations/run-scenarios.sh [scenario ...] [-- extra fedsim flags]
#   e.g. Simulations/run-scenarios.sh mnist-2nn-iid mnist-2nn-noniid
#        Simulations/run-scenarios.sh mnist-cnn-noniid -- --rounds 3
set -euo pipefail
cd "$(dirname "$0")/.."
scenarios=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do scenarios+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#scenarios[@]} -gt 0 ] || scenarios=(mnist-2nn-iid mnist-2nn-noniid mnist-cnn-iid mnist-cnn-noniid)
swift build -c release --product fedsim >/dev/null
mkdir -p reports
for s in "${scenarios[@]}"; do
    echo "== $s" >&2
    .build/release/fedsim --config "Simulations/$s.toml" --report "reports/$s.json" "$@" | tail -1 >&2
done
python3 - "${scenarios[@]}" <<'PY'
import json, sys
paper = {"mnist-2nn-iid": 87, "mnist-2nn-noniid": 664, "mnist-cnn-iid": 20, "mnist-cnn-noniid": 229}
print(f"{'scenario':<18} {'lr':>5} {'target':>7} {'paper':>6} {'ours':>14} {'final acc':>9} {'rounds':>6} {'s/round':>8}")
for name in sys.argv[1:]:
    r = json.load(open(f"reports/{name}.json"))
    c, s = r["config"], r["summary"]
    ours = s["rounds_to_target"] or f"> {s['rounds_run']}"
    print(f"{name:<18} {c['learning_rate']:>5} {c['target_accuracy']*100:>6.0f}% {paper.get(name, '-'):>6} {str(ours):>14} "
          f"{s['final_accuracy']:>9.4f} {s['rounds_run']:>6} {s['mean_seconds_per_round']:>8.2f}")
PY
