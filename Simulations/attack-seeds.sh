#!/usr/bin/env bash
# The attack table's 20 % row for one aggregator over several seeds (each seed draws its own
# split, initial model and attackers): accuracy at the last round, mean and standard deviation
# over the seeds, with clean FedAvg as the reference. Prints Markdown.
# Usage: Simulations/attack-seeds.sh [aggregator args...]      (default: trust; 100 rounds, seeds 1-5; about 9 minutes)
#        SEEDS="1 2 3" ROUNDS=100 FEDSIM=/path/to/fedsim Simulations/attack-seeds.sh multi_krum --krum-f 4
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-100}
seeds=${SEEDS:-1 2 3 4 5}
if [ -z "${FEDSIM:-}" ]; then
    swift build -c release --product fedsim >/dev/null
    FEDSIM=.build/release/fedsim
fi
if [ $# -eq 0 ]; then set -- trust; fi
mkdir -p reports
final() { # args → accuracy at the last round
    "$FEDSIM" --config Simulations/mnist-2nn-noniid.toml --rounds "$rounds" --progress none --quiet "$@" \
        | sed -n 's/.*final accuracy \([0-9.]*\).*/\1/p'
}
stats() { # accuracies → "mean ± sd"
    python3 -c 'import statistics as s, sys
v = [float(x) for x in sys.argv[1:]]
print("%.4f ± %.4f" % (s.mean(v), s.stdev(v) if len(v) > 1 else 0))' "$@"
}
echo "| run (20 % attackers) | seeds | accuracy at round $rounds, mean ± sd | per seed |"
echo "| --- | --- | ---: | --- |"
row() { # label, args...
    local label=$1; shift
    local values=()
    for seed in $seeds; do
        values+=("$(final --seed "$seed" "$@")")
        echo "$label seed $seed: ${values[-1]}" >&2
    done
    echo "| $label | ${seeds// /, } | $(stats "${values[@]}") | ${values[*]} |"
}
row "FedAvg, no attackers" --aggregator fedavg
row "$*, no attackers" --aggregator "$@"
for attack in sign_flip scale noise label_flip; do
    row "$*, $attack" --aggregator "$@" --attackers 0.2 --attack "$attack"
done
# Sleepers: honest (earning trust) until round 50, then attacking.
for attack in sign_flip label_flip; do
    row "$*, $attack from round 50" --aggregator "$@" --attackers 0.2 --attack "$attack" --attack-from-round 50
done
