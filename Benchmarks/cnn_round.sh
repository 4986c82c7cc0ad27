#!/usr/bin/env bash
# A CNN round of McMahan's IID scenario (Simulations/mnist-cnn-iid.toml: 10 clients, E = 5,
# B = 10, evaluation on 10,000 test images) by this build and by another one, side by side in
# interleaved pairs: each run's mean seconds per round over ROUNDS rounds, and the ratio.
# Usage: Benchmarks/cnn_round.sh OTHER_FEDSIM [pairs] [rounds]   (default 2 pairs, 3 rounds)
#   e.g. build the previous main into a scratch path and pass its .build/release/fedsim.
set -euo pipefail
cd "$(dirname "$0")/.."
other=${1:?usage: Benchmarks/cnn_round.sh OTHER_FEDSIM [pairs] [rounds]}
pairs=${2:-2}
rounds=${3:-3}
fedsim=${FEDSIM:-.build/release/fedsim}
[ -n "${FEDSIM:-}" ] || swift build -c release --product fedsim >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for i in $(seq 1 "$pairs"); do
    $other --config Simulations/mnist-cnn-iid.toml --rounds "$rounds" --quiet --report "$out/other-$i.json" > /dev/null
    $fedsim --config Simulations/mnist-cnn-iid.toml --rounds "$rounds" --quiet --report "$out/this-$i.json" > /dev/null
done
python3 - "$out" "$pairs" <<'PY'
import json, sys
out, pairs = sys.argv[1], int(sys.argv[2])
mean = lambda name: json.load(open(f"{out}/{name}.json"))["summary"]["mean_seconds_per_round"]
other = [mean(f"other-{i}") for i in range(1, pairs + 1)]
this = [mean(f"this-{i}") for i in range(1, pairs + 1)]
print("other build " + " ".join(f"{x:.2f}" for x in other) + " s/round")
print("this build  " + " ".join(f"{x:.2f}" for x in this) + " s/round")
print("speed-up per pair " + " ".join(f"{o / t:.2f}x" for o, t in zip(other, this)) + f"   over all {sum(other) / sum(this):.2f}x")
PY
