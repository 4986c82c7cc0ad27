#!/usr/bin/env bash
# A device's own time per round for each technique of techniques_table.py on the MNIST 2NN:
# the seconds one client spends training its local epoch and encoding its update (fedsim's
# `client_seconds`, on one worker thread so clients do not share a core), median over rounds
# 2-6 of a 6-round run, seed 1. The adapter rows train on the digits 5-9 with a base trained on
# 0-4, as in transfer-table.sh (run that first; they are skipped otherwise). Runs land in
# reports/device-time/; techniques_table.py adds them as a column.
# Usage: Simulations/device-time.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=reports/device-time
mkdir -p "$out"
fedsim=${FEDSIM:-.build/release/fedsim}
[ -n "${FEDSIM:-}" ] || swift build -c release --product fedsim >/dev/null
run() {   # name, fedsim arguments...
    local name=$1; shift
    [ -f "$out/$name.json" ] && return
    echo "$name" >&2
    $fedsim "$@" --rounds 6 --seed 1 --threads 1 --quiet --report "$out/$name.json" > /dev/null
}
run dense-fp32_raw --config Simulations/mnist-2nn-iid.toml
for sparsity in 0.5 0.8 0.9 0.95; do run "pruning-s$sparsity-fp32_raw" --config Simulations/mnist-2nn-iid.toml --prune "$sparsity"; done
for sparsity in 0.9 0.95; do run "pruning-s$sparsity-q4" --config Simulations/mnist-2nn-iid.toml --prune "$sparsity" --codec q4; done
for codec in lowrank:1+q8+ef lowrank:2+q8+ef lowrank:4+q8+ef lowrank:8+q8+ef lowrank:4+q4+ef; do
    run "lowrank-${codec//[:+]/_}" --config Simulations/mnist-2nn-iid.toml --codec "$codec"
done
transfer=reports/transfer
if [ -f "$transfer/mnist-0to4.fedmodel" ] && [ -d "$transfer/mnist-5to9" ] && [ -f "$transfer/lora4.toml" ]; then
    base=$transfer/mnist-0to4.fedmodel data=$transfer/mnist-5to9
    run adapters-full --config Simulations/mnist-2nn-iid.toml --base-model "$base" --lr 0.1 --data "$data"
    for setting in lora4 lora16 ffa16; do run "adapters-$setting" --config "$transfer/$setting.toml" --base-model "$base" --lr 0.05 --data "$data"; done
else
    echo "no $transfer/mnist-0to4.fedmodel, mnist-5to9 or lora4.toml: run Simulations/transfer-table.sh for the adapter rows" >&2
fi
python3 - "$out" <<'PY'
import glob, json, os, statistics, sys
for path in sorted(glob.glob(f"{sys.argv[1]}/*.json")):
    rounds = json.load(open(path))["rounds"][1:]
    print(f"{os.path.basename(path)[:-5]}: {statistics.median(r['client_seconds'] for r in rounds) * 1000:.1f} ms per client per round")
PY
