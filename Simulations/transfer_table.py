"""Reads reports/transfer/ (written by transfer-table.sh): prints the Markdown table and draws
test accuracy per round, one curve per setting and a panel per transfer (SVG)."""
import json, os, statistics, sys

if len(sys.argv) != 3 or not sys.argv[1].isdigit() or not sys.argv[2].isdigit():
    sys.exit("usage: python3 Simulations/transfer_table.py ROUNDS SEEDS "
             "(Simulations/transfer-table.sh runs the simulations and calls it)")
rounds, seeds = int(sys.argv[1]), int(sys.argv[2])
OUT = "reports/transfer"
TASKS = [("digits", "MNIST digits 0-4 → 5-9", 0.97), ("fmnist", "MNIST → Fashion-MNIST", 0.85)]
SETTINGS = [("scratch", "from scratch", 199_210), ("full", "full fine-tuning", 199_210),
            ("lora1", "LoRA r = 1", 1_594), ("lora4", "LoRA r = 4", 6_376), ("lora16", "LoRA r = 16", 25_504),
            ("ffa16", "FFA-LoRA r = 16", 6_560)]
UPDATE32 = 797_032  # an fp32+raw 2NN update: the weights and six 32-byte shard headers
early = min(20, rounds)


def load(task, setting):
    """The runs that finished (a diverged run leaves a .failed file instead), and how many failed."""
    runs, failed = [], 0
    for seed in range(1, seeds + 1):
        tag = f"{OUT}/{task}-{setting}-seed{seed}"
        try:
            runs.append(json.load(open(tag + ".json")))
        except FileNotFoundError:
            if not os.path.exists(tag + ".failed"):
                sys.exit(f"transfer_table.py: no run {tag}.json; run Simulations/transfer-table.sh {rounds} {seeds} first")
            failed += 1
    return runs, failed


def median(values):
    return statistics.median(values)


print(f"| transfer | setting | learning rate | values trained and sent | bytes per update (fp32, raw) | smaller than a full update | "
      f"downlink per round, mean | accuracy at round {early} | at round {rounds} | rounds to target |")
print("| --- " * 10 + "|")
curves = {}
for task, title, target in TASKS:
    for setting, label, values in SETTINGS:
        runs, failed = load(task, setting)
        if not runs:
            print(f"| {title} (target {target:.0%}) | {label} | | {values:,} | | | | diverged | diverged | |")
            continue
        updates = [sum(r["clients"] for r in run["rounds"]) for run in runs]
        per_update = median([run["summary"]["uplink_bytes"] / n for run, n in zip(runs, updates)])
        downlink = median([run["summary"]["downlink_bytes"] / len(run["rounds"]) for run in runs])
        at_early = median([run["rounds"][early - 1]["test_metric"] for run in runs])
        final = median([run["summary"]["final_accuracy"] for run in runs])
        reached = [run["summary"]["rounds_to_target"] for run in runs]
        to_target = median([r if r is not None else float("inf") for r in reached])
        to_target = "not reached" if to_target == float("inf") else f"{to_target:g}"
        lr = runs[0]["config"]["learning_rate"]
        print(f"| {title} (target {target:.0%}) | {label} | {lr:g} | {values:,} | {per_update:,.0f} | {UPDATE32 / per_update:.0f}x | "
              f"{downlink / 1e6:.2f} MB | {at_early:.2%} | **{final:.2%}**{f' ({failed} of {seeds} diverged)' if failed else ''} | {to_target} |")
        curves[(task, setting)] = [median([run["rounds"][i]["test_metric"] for run in runs]) for i in range(rounds)]

# SVG: accuracy per round, one panel per transfer.
width, height, gap = 900, 380, 60
panel = (width - gap) // 2
left, right, top, bottom = 50, 10, 30, 40
colors = {"scratch": "#444444", "full": "#1f77b4", "lora1": "#ff7f0e", "lora4": "#2ca02c", "lora16": "#d62728", "ffa16": "#9467bd"}
parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 60}" font-family="sans-serif" font-size="12">',
         f'<rect width="{width}" height="{height + 60}" fill="white"/>']
for p, (task, title, target) in enumerate(TASKS):
    x0 = p * (panel + gap)
    values = [v for (t, _), c in curves.items() if t == task for v in c]
    lo = max(0.0, min(sorted(values)[len(values) // 50], target - 0.1))
    hi = min(1.0, max(values) + 0.005)

    def X(r):
        return x0 + left + (r - 1) / max(1, rounds - 1) * (panel - left - right)

    def Y(v):
        return top + (hi - v) / (hi - lo) * (height - top - bottom)

    parts.append(f'<text x="{x0 + left}" y="18" font-weight="bold">{title}: test accuracy per round (median of {seeds} seeds)</text>')
    parts.append(f'<rect x="{x0 + left}" y="{top}" width="{panel - left - right}" height="{height - top - bottom}" fill="none" stroke="#999"/>')
    steps = 5
    for i in range(steps + 1):
        v = lo + (hi - lo) * i / steps
        parts.append(f'<text x="{x0 + left - 4}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.1%}</text>')
        parts.append(f'<line x1="{x0 + left}" x2="{x0 + panel - right}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#eee"/>')
    for r in sorted({1, rounds // 4, rounds // 2, 3 * rounds // 4, rounds}):
        parts.append(f'<text x="{X(r):.1f}" y="{height - bottom + 16}" text-anchor="middle">{r}</text>')
    parts.append(f'<text x="{x0 + left + (panel - left - right) / 2}" y="{height - 6}" text-anchor="middle">round</text>')
    if lo < target < hi:
        parts.append(f'<line x1="{x0 + left}" x2="{x0 + panel - right}" y1="{Y(target):.1f}" y2="{Y(target):.1f}" stroke="#999" stroke-dasharray="4 3"/>')
    for setting, label, _ in SETTINGS:
        if (task, setting) not in curves:
            continue
        points = " ".join(f"{X(i + 1):.1f},{Y(max(lo, v)):.1f}" for i, v in enumerate(curves[(task, setting)]))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colors[setting]}" stroke-width="1.5"/>')
for i, (setting, label, values) in enumerate(SETTINGS):
    x, y = left + (i % 3) * 280, height + 10 + (i // 3) * 20
    parts.append(f'<line x1="{x}" x2="{x + 20}" y1="{y}" y2="{y}" stroke="{colors[setting]}" stroke-width="3"/>')
    parts.append(f'<text x="{x + 25}" y="{y + 4}">{label} ({values:,} values trained)</text>')
parts.append("</svg>")
open(f"{OUT}/accuracy-per-round.svg", "w").write("\n".join(parts))
print(f"\nplot: {OUT}/accuracy-per-round.svg")
