#!/usr/bin/env bash
# Reproduces McMahan et al. 2017 (rounds to reach the target test accuracy, C=0.1) with the
# codecs fp32 and q8, then compares server strategies on the 2NN non-IID split. Prints
# Markdown tables; reports land in reports/paper-*.json.
# Usage: Simulations/reproduce-paper.sh [--cnn] [--strategies-only]
#   The 2NN rows take about a minute. --cnn adds the CNN rows (E=5): about 15 minutes for IID
#   and hours for non-IID on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cnn=0; rows=1
for a in "$@"; do
    case "$a" in
        --cnn) cnn=1 ;;
        --strategies-only) rows=0 ;;
        *) echo "usage: $0 [--cnn] [--strategies-only]" >&2; exit 2 ;;
    esac
done
swift build -c release --product fedsim >/dev/null
mkdir -p reports
run() { # name scenario rounds-cap extra-args...
    local name=$1 scenario=$2 cap=$3; shift 3
    echo "== $name" >&2
    .build/release/fedsim --config "Simulations/$scenario.toml" --rounds "$cap" --stop-at-target --progress none \
        --report "reports/paper-$name.json" "$@" | tail -1 >&2
}
table() { # title, then name:paper pairs
    python3 - "$@" <<'PY'
import json, sys
title, rows = sys.argv[1], sys.argv[2:]
print(f"\n{title}\n")
print("| run | target | paper | ours | final accuracy | rounds run | s/round |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for row in rows:
    name, paper = row.split(":")
    r = json.load(open(f"reports/paper-{name}.json"))
    s = r["summary"]
    ours = s["rounds_to_target"] or f"not in {s['rounds_run']}"
    print(f"| {name} | {s['target_accuracy'] * 100:.0f}% | {paper} | {ours} | {s['final_accuracy']:.4f} | {s['rounds_run']} | {s['mean_seconds_per_round']:.2f} |")
PY
}
if [ $rows = 1 ]; then
    pairs=()
    for codec in fp32+raw q8; do
        run "2nn-iid-$codec" mnist-2nn-iid 300 --codec "$codec"; pairs+=("2nn-iid-$codec:87")
        run "2nn-noniid-$codec" mnist-2nn-noniid 1000 --codec "$codec"; pairs+=("2nn-noniid-$codec:664")
        if [ $cnn = 1 ]; then
            run "cnn-iid-$codec" mnist-cnn-iid 100 --codec "$codec"; pairs+=("cnn-iid-$codec:20")
            run "cnn-noniid-$codec" mnist-cnn-noniid 300 --codec "$codec"; pairs+=("cnn-noniid-$codec:229")
        fi
    done
    table "McMahan et al. 2017, rounds to target (C=0.1, B=10; 2NN E=1, CNN E=5)" "${pairs[@]}"
fi
# Server strategies on the 2NN non-IID split (client lr 0.2; hyperparameters from a small grid).
run "strategy-fedavg" mnist-2nn-noniid 400
run "strategy-fedprox-mu0.001" mnist-2nn-noniid 400 --mu 0.001
run "strategy-fedprox-mu0.01" mnist-2nn-noniid 400 --mu 0.01
run "strategy-fedavgm" mnist-2nn-noniid 400 --server-optimizer fedavgm --server-lr 1 --server-momentum 0.5
run "strategy-fedadam" mnist-2nn-noniid 400 --server-optimizer fedadam --server-lr 0.01
run "strategy-fedyogi" mnist-2nn-noniid 400 --server-optimizer fedyogi --server-lr 0.01
table "Server strategies, 2NN non-IID, rounds to 97%" \
    strategy-fedavg:664 strategy-fedprox-mu0.001:- strategy-fedprox-mu0.01:- strategy-fedavgm:- strategy-fedadam:- strategy-fedyogi:-
