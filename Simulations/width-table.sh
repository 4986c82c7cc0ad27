#!/usr/bin/env bash
# Device classes by width (HeteroFL) on the MNIST 2NN (McMahan's IID and non-IID scenarios,
# 200 rounds): the global model's test accuracy at each width when 40% of the clients train
# it at width 1/4, 30% at 1/2 and 30% at full width, against every client at full width and
# against a model of each narrower width trained alone by every client, against the 30%
# full-width devices training alone (the others sitting out), and with FjORD's ordered dropout
# on the same classes. Prints a Markdown
# table; runs land in reports/width/.
# Usage: Simulations/width-table.sh [rounds] [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-200}
seed=${2:-1}
out=reports/width
mkdir -p "$out"
fedsim=${FEDSIM:-.build/release/fedsim}
[ -n "${FEDSIM:-}" ] || swift build -c release --product fedsim >/dev/null
declare -A runs=(
    [full]="--widths 1 --width-shares 1"
    [mix]="--widths 0.25,0.5,1 --width-shares 0.4,0.3,0.3"
    [ordered]="--widths 0.25,0.5,1 --width-shares 0.4,0.3,0.3 --ordered-dropout"
    [only]="--widths 0,1 --width-shares 0.7,0.3"
    [quarter]="--widths 0.25 --width-shares 1"
    [half]="--widths 0.5 --width-shares 1"
)
for scenario in mnist-2nn-iid mnist-2nn-noniid; do
    for name in full mix ordered only quarter half; do
        tag="$out/$scenario-$name-seed$seed"
        [ -f "$tag.json" ] && continue
        echo "$scenario $name" >&2
        # shellcheck disable=SC2086
        $fedsim --config "Simulations/$scenario.toml" --rounds "$rounds" --seed "$seed" ${runs[$name]} --quiet --report "$tag.json" > "$tag.txt"
    done
done
python3 - "$out" "$seed" "$rounds" <<'PY'
import json, sys
out, seed, rounds = sys.argv[1], sys.argv[2], sys.argv[3]
print(f"| scenario | width | parameters | mixed classes (40% / 30% / 30%): accuracy at round {rounds} | updates | with ordered dropout | the same width trained alone by every client | mixed minus alone (points) | only the 30% full-width devices |")
print("| --- " * 9 + "|")
for scenario in ("mnist-2nn-iid", "mnist-2nn-noniid"):
    def load(name):
        return json.load(open(f"{out}/{scenario}-{name}-seed{seed}.json"))["summary"]
    mix = load("mix")
    ordered = {w["width"]: w for w in load("ordered")["widths"]}
    only_text = "{:.2%}".format(load("only")["widths"][0]["metric"])
    alone = {0.25: load("quarter")["widths"][0], 0.5: load("half")["widths"][0], 1.0: load("full")["widths"][0]}
    for w in mix["widths"]:
        a = alone[w["width"]]
        print(f"| {scenario} | {w['width']:g} | {w['parameters']:,} | {w['metric']:.2%} | {w['updates']} | {ordered[w['width']]['metric']:.2%} | {a['metric']:.2%} | {(w['metric'] - a['metric']) * 100:+.2f} | {only_text if w['width'] == 1 else ''} |")
PY
