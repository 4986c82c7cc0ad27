#!/usr/bin/env bash
# Compressed-update comparison on MNIST 2NN (McMahan's IID and non-IID scenarios, 100 rounds):
# per codec, the mean bytes of one client update, the ratio to plain float32, accuracy at the
# last round and rounds to 97%. Prints a Markdown table; reports land in reports/codecs/.
# Usage: Simulations/codec-table.sh [rounds] [codec ...]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-100}
shift || true
codecs=("$@")
[ ${#codecs[@]} -gt 0 ] || codecs=(fp32+raw fp32 fp16 q8 q4 q2 sign topk:0.1+q8 topk:0.1+q8+ef topk:0.01+q8 topk:0.01+q8+ef)
swift build -c release --product fedsim >/dev/null
mkdir -p reports/codecs
for scenario in mnist-2nn-iid mnist-2nn-noniid; do
    for codec in "${codecs[@]}"; do
        out="reports/codecs/$scenario-${codec//[:+]/_}.json"
        echo "$scenario $codec" >&2
        .build/release/fedsim --config "Simulations/$scenario.toml" --rounds "$rounds" --codec "$codec" --quiet --report "$out" >/dev/null
    done
done
python3 - "$rounds" "${codecs[@]}" <<'PY'
import json, sys
rounds = int(sys.argv[1])
codecs = sys.argv[2:]
def load(scenario, codec):
    return json.load(open(f"reports/codecs/{scenario}-{codec.replace(':', '_').replace('+', '_')}.json"))
print(f"| codec | bytes per update | ratio to fp32 | IID accuracy at round {rounds} | IID rounds to 97% | non-IID accuracy at round {rounds} | non-IID rounds to 97% |")
print("| --- | --- | --- | --- | --- | --- | --- |")
reference = None
for codec in codecs:
    row = [f"`{codec}`"]
    iid, non = load("mnist-2nn-iid", codec), load("mnist-2nn-noniid", codec)
    updates = sum(r["clients"] for r in iid["rounds"])
    per_update = sum(r["uplink_bytes"] for r in iid["rounds"]) / updates
    reference = reference or per_update
    row += [f"{per_update:,.0f}", f"{reference / per_update:.1f}x"]
    for r in (iid, non):
        s = r["summary"]
        row += [f"{s['final_accuracy'] * 100:.2f}%", str(s["rounds_to_target"] or "-")]
    print("| " + " | ".join(row) + " |")
PY
