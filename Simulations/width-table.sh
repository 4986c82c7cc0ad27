#!/usr/bin/env bash
# Device classes by width (HeteroFL), by default on the MNIST 2NN (McMahan's IID and non-IID
# scenarios, 200 rounds), or on the scenarios named (Simulations/NAME.toml): the global model's test accuracy at each width when 40% of the clients train
# it at width 1/4, 30% at 1/2 and 30% at full width, against every client at full width and
# against a model of each narrower width trained alone by every client, against the 30%
# full-width devices training alone (the others sitting out), against frozen shards under the
# same memory budgets (every device holds the full model and trains the shards its budget
# picks), and with FjORD's ordered dropout on the same classes. Prints a Markdown
# table; runs land in reports/width/.
# Usage: Simulations/width-table.sh [rounds] [seed] [scenario ...]
#   e.g. Simulations/width-table.sh 50 1 mnist-cnn-iid
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-200}
seed=${2:-1}
shift $(( $# < 2 ? $# : 2 ))
scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(mnist-2nn-iid mnist-2nn-noniid)
out=reports/width
mkdir -p "$out"
fedsim=${FEDSIM:-.build/release/fedsim}
[ -n "${FEDSIM:-}" ] || swift build -c release --product fedsim >/dev/null
declare -A runs=(
    [full]="--widths 1 --width-shares 1"
    [mix]="--widths 0.25,0.5,1 --width-shares 0.4,0.3,0.3"
    [ordered]="--widths 0.25,0.5,1 --width-shares 0.4,0.3,0.3 --ordered-dropout"
    [only]="--widths 0,1 --width-shares 0.7,0.3"
    [frozen]="--widths 0.25,0.5,1 --width-shares 0.4,0.3,0.3 --frozen-shards"
    [quarter]="--widths 0.25 --width-shares 1"
    [half]="--widths 0.5 --width-shares 1"
)
for scenario in "${scenarios[@]}"; do
    for name in full mix ordered only frozen quarter half; do
        tag="$out/$scenario-$name-r$rounds-seed$seed"
        [ -f "$tag.json" ] && continue
        echo "$scenario $name" >&2
        # shellcheck disable=SC2086
        $fedsim --config "Simulations/$scenario.toml" --rounds "$rounds" --seed "$seed" ${runs[$name]} --quiet --report "$tag.json" > "$tag.txt"
    done
done
python3 - "$out" "$seed" "$rounds" "${scenarios[@]}" <<'PY'
import json, sys
out, seed, rounds, scenarios = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
print(f"| scenario | width | parameters | mixed classes (40% / 30% / 30%): accuracy at round {rounds} | updates | with ordered dropout | the same width trained alone by every client | mixed minus alone (points) | only the 30% full-width devices | frozen shards, same budgets |")
print("| --- " * 10 + "|")
for scenario in scenarios:
    def load(name):
        return json.load(open(f"{out}/{scenario}-{name}-r{rounds}-seed{seed}.json"))["summary"]
    mix = load("mix")
    ordered = {w["width"]: w for w in load("ordered")["widths"]}
    only_text = "{:.2%}".format(load("only")["widths"][0]["metric"])
    frozen = load("frozen")["widths"]
    frozen_text = "{:.2%} (trained: {})".format(frozen[-1]["metric"], " / ".join(f"{w['trained_parameters']:,}" for w in frozen))
    alone = {0.25: load("quarter")["widths"][0], 0.5: load("half")["widths"][0], 1.0: load("full")["widths"][0]}
    for w in mix["widths"]:
        a = alone[w["width"]]
        print(f"| {scenario} | {w['width']:g} | {w['parameters']:,} | {w['metric']:.2%} | {w['updates']} | {ordered[w['width']]['metric']:.2%} | {a['metric']:.2%} | {(w['metric'] - a['metric']) * 100:+.2f} | {only_text if w['width'] == 1 else ''} | {frozen_text if w['width'] == 1 else ''} |")
PY
