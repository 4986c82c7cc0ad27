#!/usr/bin/env bash
# Poisoned updates on MNIST 2NN non-IID: test accuracy at the last round (default 100) with
# 10 % and 20 % malicious clients, for FedAvg and each robust aggregator. Prints Markdown.
# Each cell: accuracy at the last round, and in brackets the mean over the last 10 rounds (on
# this split accuracy jumps by about a point from one round to the next).
# Usage: Simulations/attack-table.sh [rounds]   (about 20 minutes for 100 rounds on 2 cores)
#        FEDSIM=/path/to/fedsim Simulations/attack-table.sh   (use that binary, do not build)
#        ROWS="0 7" Simulations/attack-table.sh   (only those rows: 0 FedAvg ... 7 trust)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-100}
if [ -z "${FEDSIM:-}" ]; then
    swift build -c release --product fedsim >/dev/null
    FEDSIM=.build/release/fedsim
fi
mkdir -p reports
aggregators=("fedavg" "fedavg --norm-bound 1.5" "median" "trimmed_mean --trim-beta 0.2" "krum --krum-f 2" "multi_krum --krum-f 4"
             "multi_krum --krum-f 4 --norm-bound 1.5" "trust")
names=("FedAvg" "FedAvg + norm bound 1.5x median" "median" "trimmed mean (beta 0.2)" "Krum (f 2)" "multi-Krum (f 4)"
       "multi-Krum (f 4) + norm bound 1.5x" "trust (1,000 server examples)")
accuracy() { # args → "final (mean of the last 10 rounds)"
    "$FEDSIM" --config Simulations/mnist-2nn-noniid.toml --rounds "$rounds" --progress none --quiet \
        --report reports/attack-cell.json "$@" >/dev/null
    python3 -c 'import json, sys
r = [x["test_accuracy"] for x in json.load(open(sys.argv[1]))["rounds"] if x.get("test_accuracy") is not None]
print("%.4f (%.4f)" % (r[-1], sum(r[-10:]) / len(r[-10:])))' reports/attack-cell.json
}
rows=${ROWS:-${!aggregators[*]}}
for i in $rows; do
    # shellcheck disable=SC2086
    clean[$i]=$(accuracy --aggregator ${aggregators[$i]})
    echo "clean ${names[$i]}: ${clean[$i]}" >&2
done
for fraction in 0.1 0.2; do
    echo
    echo "$(awk "BEGIN {print $fraction * 100}")% attackers, accuracy at round $rounds (clean run in the first column):"
    echo
    echo "| aggregator | clean | sign flip | scale x10 | noise (sd 1) | label flip |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    for i in $rows; do
        row="| ${names[$i]} | ${clean[$i]}"
        for attack in sign_flip scale noise label_flip; do
            # shellcheck disable=SC2086
            a=$(accuracy --aggregator ${aggregators[$i]} --attackers "$fraction" --attack "$attack")
            echo "$fraction ${names[$i]} $attack: $a" >&2
            row="$row | $a"
        done
        echo "$row |"
    done
done
