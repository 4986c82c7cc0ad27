#!/usr/bin/env bash
# A round over real TCP against the same round in memory, in interleaved pairs, as ratios.
#  - 2NN, McMahan's IID scenario (10 clients a round): each run's median seconds per round over
#    ROUNDS rounds; the ratio of each pair, and the median ratio.
#  - 1,000 clients, 100 a round: mean seconds per round after the first (which also connects
#    1,000 sockets), each pair's ratio and the median; and the TCP run's peak resident memory.
# Usage: Benchmarks/tcp_overhead.sh [pairs] [rounds]   (default 5 pairs, 40 rounds)
#   FEDSIM=path/to/fedsim measures another build (for example the previous main's).
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-5}
rounds=${2:-40}
fedsim=${FEDSIM:-.build/release/fedsim}
[ -n "${FEDSIM:-}" ] || swift build -c release --product fedsim >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for i in $(seq 1 "$pairs"); do
    for transport in memory tcp; do
        $fedsim --config Simulations/mnist-2nn-iid.toml --rounds "$rounds" --transport $transport --quiet --report "$out/small-$transport-$i.json" > /dev/null
        /usr/bin/time -f "%M" -o "$out/large-$transport-$i.rss" $fedsim --config Simulations/mnist-2nn-iid.toml --clients 1000 --fraction 0.1 \
            --rounds 11 --transport $transport --quiet --report "$out/large-$transport-$i.json" > /dev/null
    done
done
python3 - "$out" "$pairs" <<'PY'
import json, statistics, sys
out, pairs = sys.argv[1], int(sys.argv[2])
def rounds(name): return json.load(open(f"{out}/{name}.json"))["rounds"]
for label, per_run in (("2NN, 10 clients a round (median s/round)", lambda r: statistics.median(x["seconds"] for x in r)),
                       ("2NN, 1,000 clients, 100 a round (mean s/round after the first)", lambda r: statistics.mean(x["seconds"] for x in r[1:]))):
    size = "small" if label.startswith("2NN, 10") else "large"
    memory = [per_run(rounds(f"{size}-memory-{i}")) for i in range(1, pairs + 1)]
    tcp = [per_run(rounds(f"{size}-tcp-{i}")) for i in range(1, pairs + 1)]
    ratios = [t / m for m, t in zip(memory, tcp)]
    print(label)
    print("  memory " + " ".join(f"{x:.4f}" for x in memory))
    print("  tcp    " + " ".join(f"{x:.4f}" for x in tcp))
    print("  ratios " + " ".join(f"{x:.3f}" for x in ratios) + f"   median {statistics.median(ratios):.3f}")
rss = [int(open(f"{out}/large-tcp-{i}.rss").read().split()[-1]) / 1024 for i in range(1, pairs + 1)]
print("1,000 TCP clients, 11 rounds: peak RSS " + " ".join(f"{x:.0f}" for x in rss) + f" MB   max {max(rss):.0f} MB")
PY
