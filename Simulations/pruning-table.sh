#!/usr/bin/env bash
# Federated magnitude pruning on the MNIST 2NN (McMahan's IID and non-IID scenarios, 200
# rounds, seeds 1-3): for each setting, the exported model's bytes (float32, q8, q4; sparse
# over the kept weights), the mean bytes of one client update, test accuracy at the last round
# (median of the seeds) and of the exported model, rounds to 97%, and seconds per round.
# Prints a Markdown table and draws reports/pruning/accuracy-vs-bytes.svg; runs land in
# reports/pruning/.
# Usage: Simulations/pruning-table.sh [rounds] [seeds] [setting ...]
#   a setting is SPARSITY/UPLINK-CODEC, e.g. 0.9/fp32+raw (sparsity 0 = dense)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-200}
seeds=${2:-3}
shift 2 || true
settings=("$@")
[ ${#settings[@]} -gt 0 ] || settings=(0/fp32+raw 0.5/fp32+raw 0.8/fp32+raw 0.9/fp32+raw 0.95/fp32+raw 0.9/q4 0.95/q4)
swift build -c release --product fedsim --product fedcoord >/dev/null 2>&1 || { swift build -c release --product fedsim >/dev/null; swift build -c release --product fedcoord >/dev/null; }
mkdir -p reports/pruning
for scenario in mnist-2nn-iid mnist-2nn-noniid; do
    for setting in "${settings[@]}"; do
        sparsity=${setting%%/*}
        codec=${setting#*/}
        for seed in $(seq 1 "$seeds"); do
            tag="reports/pruning/$scenario-s$sparsity-${codec//[:+]/_}-seed$seed"
            [ -f "$tag.json" ] && [ -f "$tag.exports" ] && continue
            echo "$scenario sparsity $sparsity codec $codec seed $seed" >&2
            prune=()
            [ "$sparsity" != 0 ] && prune=(--prune "$sparsity")
            rm -f "$tag.sqlite"
            .build/release/fedsim --config "Simulations/$scenario.toml" --rounds "$rounds" --seed "$seed" --codec "$codec" \
                "${prune[@]}" --quiet --report "$tag.json" --db "$tag.sqlite" >/dev/null
            for export in fp32 q8 q4; do
                echo "$export $(.build/release/fedcoord export --db "$tag.sqlite" --out "$tag.$export.fedmodel" --codec "$export" --test-data Simulations/data/mnist | tr '\n' ' ')"
            done > "$tag.exports.tmp"
            mv "$tag.exports.tmp" "$tag.exports"
            rm -f "$tag.sqlite" "$tag".*.fedmodel
        done
    done
done
python3 Simulations/pruning_table.py "$rounds" "$seeds" "${settings[@]}"
