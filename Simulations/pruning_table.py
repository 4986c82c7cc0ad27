"""Reads reports/pruning/ (written by pruning-table.sh): prints the Markdown table and draws
accuracy against exported model bytes, one curve per export codec (SVG, log scale of bytes)."""
import json, re, statistics, sys

import svgplot

if len(sys.argv) < 4 or not sys.argv[1].isdigit() or not sys.argv[2].isdigit():
    sys.exit("usage: python3 Simulations/pruning_table.py ROUNDS SEEDS SPARSITY/CODEC... "
             "(Simulations/pruning-table.sh runs the simulations and calls it)")
rounds, seeds = int(sys.argv[1]), int(sys.argv[2])
settings = sys.argv[3:]
FLOAT32 = 199_210 * 4   # raw float32 bytes of the 2NN's weights (the model's ratio)
UPDATE32 = 797_032      # an fp32+raw update: the weights and six 32-byte shard headers


def runs(scenario, sparsity, codec):
    out = []
    for seed in range(1, seeds + 1):
        tag = f"reports/pruning/{scenario}-s{sparsity}-{codec.replace(':', '_').replace('+', '_')}-seed{seed}"
        try:
            report = json.load(open(tag + ".json"))
        except FileNotFoundError:
            sys.exit(f"pruning_table.py: no run {tag}.json; run Simulations/pruning-table.sh {rounds} {seeds} first")
        exports = {}
        for line in open(tag + ".exports"):
            name = line.split()[0]
            size = int(re.search(r"\((\d+) bytes", line).group(1))
            accuracy = float(re.search(r"exported ([0-9.]+) \(", line).group(1))
            exports[name] = (size, accuracy)
        out.append((report, exports))
    return out


def median(values):
    return statistics.median(values)


rows, points = [], {}
header = ("| scenario | sparsity | uplink codec | model bytes fp32 / q8 / q4 | ratio to float32 (q8, q4) | "
          f"bytes per update, mean of the run (ratio) | at round {rounds} (ratio) | accuracy at round {rounds} | q8 / q4 export | rounds to 97% | s per round |")
print(header)
print("| --- " * (header.count("|") - 1) + "|")
for scenario in ("mnist-2nn-iid", "mnist-2nn-noniid"):
    dense = None
    for setting in settings:
        sparsity, codec = setting.split("/", 1)
        results = runs(scenario, sparsity, codec)
        accuracy = median([r["summary"]["final_accuracy"] for r, _ in results])
        updates = [sum(x["uplink_bytes"] for x in r["rounds"]) / sum(x["clients"] for x in r["rounds"]) for r, _ in results]
        per_update = median(updates)
        final_update = median([r["rounds"][-1]["uplink_bytes"] / r["rounds"][-1]["clients"] for r, _ in results])
        size = {k: median([e[k][0] for _, e in results]) for k in ("fp32", "q8", "q4")}
        exported = {k: median([e[k][1] for _, e in results]) for k in ("q8", "q4")}
        reached = [r["summary"]["rounds_to_target"] for r, _ in results]
        to_target = "-" if any(x is None for x in reached) else str(int(median(reached)))
        seconds = median([r["summary"]["mean_seconds_per_round"] for r, _ in results])
        if dense is None:
            dense = accuracy
        rows.append((scenario, float(sparsity), codec, size, exported, accuracy, dense))
        print(f"| {scenario.replace('mnist-2nn-', '')} | {float(sparsity):.0%} | `{codec}` | "
              f"{size['fp32']:,.0f} / {size['q8']:,.0f} / {size['q4']:,.0f} | "
              f"{FLOAT32 / size['q8']:.1f}x, {FLOAT32 / size['q4']:.1f}x | {per_update:,.0f} ({UPDATE32 / per_update:.0f}x) | "
              f"{final_update:,.0f} ({UPDATE32 / final_update:.0f}x) | "
              f"{accuracy:.2%} ({accuracy - dense:+.2%}) | {exported['q8']:.2%} / {exported['q4']:.2%} | {to_target} | {seconds:.2f} |")
        for name in ("fp32", "q8", "q4"):
            value = exported.get(name, accuracy)
            points.setdefault((scenario, name), []).append((size[name], value, float(sparsity)))

print()
for scenario in ("mnist-2nn-iid", "mnist-2nn-noniid"):
    candidates = [(size[k], k, s, codec) for (sc, s, codec, size, exported, accuracy, dense) in rows if sc == scenario
                  for k in ("fp32", "q8", "q4") if (exported.get(k, accuracy)) >= dense - 0.01]
    if candidates:
        b, k, s, codec = min(candidates)
        print(f"{scenario}: smallest model within 1 point of dense float32: {s:.0%} pruned, exported {k}, "
              f"{b:,.0f} bytes, {FLOAT32 / b:.1f}x smaller than float32")

# The plot: accuracy against exported bytes, a curve per scenario and export codec.
colors = {"fp32": "#1f77b4", "q8": "#ff7f0e", "q4": "#2ca02c"}
curves = [(f'{scenario.replace("mnist-2nn-", "")}, {name}', colors[name], "noniid" in scenario,
           [(b, a, f"{scenario} {name} {s:.0%} pruned: {b:,.0f} bytes, {a:.2%}") for b, a, s in values])
          for (scenario, name), values in sorted(points.items())]
svgplot.log_x_plot("reports/pruning/accuracy-vs-bytes.svg",
                   f"MNIST 2NN, federated pruning: test accuracy at round {rounds} against exported model bytes",
                   "exported model bytes (log scale)", curves)
print("\nplot: reports/pruning/accuracy-vs-bytes.svg")
