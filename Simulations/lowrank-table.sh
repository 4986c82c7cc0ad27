#!/usr/bin/env bash
# The low-rank update codec (`lowrank:R`, PowerSGD with the coordinator's warm start) on the
# MNIST 2NN, McMahan's IID and non-IID scenarios: per codec, bytes of one update, the ratio to
# float32 (fp32+raw), and the median over seeds of the test accuracy at the last round (with
# its change against fp32+raw on the same seeds) and of the rounds to 97%. Prints a Markdown
# table and draws reports/lowrank/uplink-accuracy-vs-bytes.svg; reports land in reports/lowrank/.
# Usage: Simulations/lowrank-table.sh [rounds] [seeds] [codec ...]
#   e.g. Simulations/lowrank-table.sh 200 "1 2 3" lowrank:1+q8+ef lowrank:4+q8+ef
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-200}
seeds=${2:-1 2 3}
shift $(( $# < 2 ? $# : 2 ))
codecs=("$@")
[ ${#codecs[@]} -gt 0 ] || codecs=(lowrank:1+q8+ef lowrank:2+q8+ef lowrank:4+q8+ef lowrank:8+q8+ef)
codecs=(fp32+raw "${codecs[@]}")
out=reports/lowrank
mkdir -p "$out"
fedsim=${FEDSIM:-.build/release/fedsim}
[ -n "${FEDSIM:-}" ] || swift build -c release --product fedsim >/dev/null
for scenario in mnist-2nn-iid mnist-2nn-noniid; do
    for codec in "${codecs[@]}"; do
        for seed in $seeds; do
            tag="$out/$scenario-${codec//[:+]/_}-r$rounds-seed$seed.json"
            [ -f "$tag" ] && continue
            echo "$scenario $codec seed $seed" >&2
            $fedsim --config "Simulations/$scenario.toml" --rounds "$rounds" --seed "$seed" --codec "$codec" --quiet --report "$tag" >/dev/null
        done
    done
done
python3 - "$out" "$rounds" "$seeds" "${codecs[@]}" <<'PY'
import json, statistics, sys
out, rounds, seeds, codecs = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4:]
def load(scenario, codec, seed):
    return json.load(open(f"{out}/{scenario}-{codec.replace(':', '_').replace('+', '_')}-r{rounds}-seed{seed}.json"))
def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
print(f"| codec | bytes per update | less than float32 | IID accuracy at round {rounds} (change) | IID rounds to 97% | non-IID accuracy (change) | non-IID rounds to 97% |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
reference = None
dense = {}
for codec in codecs:
    row = [f"`{codec}`"]
    runs = {s: [load(s, codec, seed) for seed in seeds] for s in ("mnist-2nn-iid", "mnist-2nn-noniid")}
    first = runs["mnist-2nn-iid"][0]
    per_update = sum(r["uplink_bytes"] for r in first["rounds"]) / sum(r["clients"] for r in first["rounds"])
    reference = reference or per_update
    row += [f"{per_update:,.0f}", f"{reference / per_update:.1f}x"]
    for scenario, reports in runs.items():
        accuracy = median([r["summary"]["final_metric"] for r in reports])
        dense.setdefault(scenario, accuracy)
        reached = [r["summary"].get("rounds_to_target") for r in reports]
        rounds_to = median(reached) if None not in reached else None
        row += [f"{accuracy * 100:.2f}% ({(accuracy - dense[scenario]) * 100:+.2f})", f"{rounds_to:g}" if rounds_to else "-"]
    print("| " + " | ".join(row) + " |")
PY
# The plot beside pruning's runs (Simulations/pruning-table.sh), where those exist.
python3 Simulations/uplink_plot.py
