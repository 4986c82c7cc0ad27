#!/usr/bin/env bash
# FedDF (ensemble distillation on the server, `--ensemble-distill`) against plain FedAvg on the
# MNIST 2NN, on three splits: IID, Dirichlet alpha = 0.3, and McMahan's pathological shards (two
# digits per client). Both hold the same 5,000 training examples out of the clients' data for
# the server (`--server-examples 5000`), so the clients train on the same data either way.
# Prints a Markdown table (accuracy at the last round, rounds to 97%, seconds per round; the
# median of the seeds) and draws reports/feddf/accuracy-per-round.svg. Runs land in
# reports/feddf/; finished runs are skipped when the script is run again. A FedDF run takes
# about 2 minutes for 200 rounds, a FedAvg run about 30 s.
# Usage: Simulations/feddf-table.sh [rounds] [seeds]   (default 200 rounds, seeds "1 2 3")
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit ;;
esac
rounds=${1:-200}
seeds=${2:-1 2 3}
out=reports/feddf
mkdir -p "$out"
fedsim=${FEDSIM:-.build/release/fedsim}
[ -n "${FEDSIM:-}" ] || swift build -c release --product fedsim >/dev/null
for seed in $seeds; do
    for split in iid dirichlet shards; do
        case $split in
            iid) args=(--config Simulations/mnist-2nn-iid.toml) ;;
            dirichlet) args=(--config Simulations/mnist-2nn-iid.toml --partition dirichlet --alpha 0.3) ;;
            shards) args=(--config Simulations/mnist-2nn-noniid.toml) ;;
        esac
        for method in fedavg feddf; do
            tag="$out/$split-$method-r$rounds-seed$seed"
            [ -f "$tag.json" ] && continue
            echo "$(date +%T) $split $method seed $seed" >&2
            extra=()
            [ $method = feddf ] && extra=(--ensemble-distill)
            $fedsim "${args[@]}" "${extra[@]}" --server-examples 5000 --rounds "$rounds" --seed "$seed" \
                --quiet --report "$tag.json.tmp" > /dev/null
            mv "$tag.json.tmp" "$tag.json"
        done
    done
done
python3 - "$out" "$rounds" "$seeds" <<'PY'
import json, statistics, sys
out, rounds, seeds = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
SPLITS = [("iid", "IID"), ("dirichlet", "Dirichlet α = 0.3"), ("shards", "shards (2 digits a client)")]
METHODS = [("fedavg", "FedAvg", "#1f77b4"), ("feddf", "FedDF", "#d62728")]
curves = {}
print(f"| split | method | accuracy at round {rounds} (seeds) | change | rounds to 97% | s per round |")
print("| --- | --- | ---: | ---: | ---: | ---: |")
for split, title in SPLITS:
    base = None
    for method, label, _ in METHODS:
        runs = [json.load(open(f"{out}/{split}-{method}-r{rounds}-seed{s}.json")) for s in seeds]
        accuracy = [r["rounds"][-1]["test_metric"] for r in runs]
        reached = [next((x["round"] for x in r["rounds"] if x["test_metric"] >= 0.97), None) for r in runs]
        to_target = "-" if any(v is None for v in reached) else f"{statistics.median(reached):.0f}"
        seconds = statistics.median(statistics.median(x["seconds"] for x in r["rounds"]) for r in runs)
        final = statistics.median(accuracy)
        base = final if base is None else base
        print(f"| {title} | {label} | {final:.2%} ({', '.join(f'{a:.2%}' for a in accuracy)}) | {(final - base) * 100:+.2f} | {to_target} | {seconds:.2f} |")
        curves[(split, method)] = [statistics.median(r["rounds"][i]["test_metric"] for r in runs) for i in range(rounds)]

# One panel per split: test accuracy per round, the median of the seeds.
width, height, gap = 1020, 340, 40
panel = (width - 2 * gap) // 3
left, right, top, bottom = 50, 10, 30, 40
parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" font-family="sans-serif" font-size="12">',
         f'<rect width="{width}" height="{height + 40}" fill="white"/>']
for p, (split, title) in enumerate(SPLITS):
    x0 = p * (panel + gap)
    values = [v for (s, _), c in curves.items() if s == split for v in c[len(c) // 10:]]
    lo, hi = max(0.0, min(values) - 0.005), min(1.0, max(values) + 0.005)
    X = lambda r: x0 + left + (r - 1) / max(1, rounds - 1) * (panel - left - right)
    Y = lambda v: top + (hi - v) / (hi - lo) * (height - top - bottom)
    parts.append(f'<text x="{x0 + left}" y="18" font-weight="bold">{title}</text>')
    parts.append(f'<rect x="{x0 + left}" y="{top}" width="{panel - left - right}" height="{height - top - bottom}" fill="none" stroke="#999"/>')
    for i in range(6):
        v = lo + (hi - lo) * i / 5
        parts.append(f'<text x="{x0 + left - 4}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.1%}</text>')
        parts.append(f'<line x1="{x0 + left}" x2="{x0 + panel - right}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#eee"/>')
    for r in sorted({1, rounds // 2, rounds}):
        parts.append(f'<text x="{X(r):.1f}" y="{height - bottom + 16}" text-anchor="middle">{r}</text>')
    parts.append(f'<text x="{x0 + left + (panel - left - right) / 2}" y="{height - 6}" text-anchor="middle">round</text>')
    for method, _, color in METHODS:
        points = " ".join(f"{X(i + 1):.1f},{Y(max(lo, v)):.1f}" for i, v in enumerate(curves[(split, method)]))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5"/>')
for i, (_, label, color) in enumerate(METHODS):
    x, y = left + i * 110, height + 20
    parts.append(f'<line x1="{x}" x2="{x + 20}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="3"/>')
    parts.append(f'<text x="{x + 25}" y="{y + 4}">{label}</text>')
parts.append(f'<text x="{left + 2 * 110}" y="{height + 24}">test accuracy per round, the median of {len(seeds)} seeds; '
             f'both hold 5,000 training examples out for the server</text>')
parts.append("</svg>")
open(f"{out}/accuracy-per-round.svg", "w").write("\n".join(parts))
print(f"\nplot: {out}/accuracy-per-round.svg")
PY
