"""Accuracy against bytes per update, one curve per uplink technique and split: the low-rank
codec (reports/lowrank/, from lowrank-table.sh) and federated pruning (reports/pruning/, from
pruning-table.sh), MNIST 2NN, 200 rounds, the median of seeds 1-3. Draws
reports/lowrank/uplink-accuracy-vs-bytes.svg from whatever runs are there."""
import glob, json, re, statistics, sys

import svgplot


def per_update(report):
    return sum(r["uplink_bytes"] for r in report["rounds"]) / sum(r["clients"] for r in report["rounds"])


def collect(pattern, key):
    """(x, accuracy) medians over seeds, grouped by the setting `key` extracts from a file name."""
    groups = {}
    for path in glob.glob(pattern):
        setting = key(path)
        if setting is not None:
            groups.setdefault(setting, []).append(json.load(open(path)))
    return {s: (statistics.median(per_update(r) for r in runs), statistics.median(r["summary"]["final_metric"] for r in runs), len(runs))
            for s, runs in groups.items() if len(runs) >= 3}


curves = []
colors = {"low rank, q8+ef": "#1f77b4", "low rank, q4+ef": "#17becf", "low rank, q2+ef": "#9467bd",
          "pruning, fp32 up": "#ff7f0e", "pruning, q4 up": "#2ca02c", "dense fp32": "#000000"}
def groups(pattern):
    """The groups of `pattern` in a file name, or None when it does not match."""
    return lambda path: (lambda m: m.groups() if m else None)(re.search(pattern, path))


for split in ("iid", "noniid"):
    lowrank = collect(f"reports/lowrank/mnist-2nn-{split}-*-r200-seed*.json", groups(r"-(lowrank_(\d+)_(q\d)_(?:g\d+_)?ef|fp32_raw)-r200"))
    pruning = collect(f"reports/pruning/mnist-2nn-{split}-s*-seed*.json", groups(r"-s([0-9.]+)-(fp32_raw|q4)-seed"))
    families = {}
    for (name, rank, base), (x, a, n) in lowrank.items():
        if name == "fp32_raw":
            families.setdefault("dense fp32", []).append((x, a, f"{split} fp32+raw: {x:,.0f} bytes, {a:.2%}"))
        else:
            families.setdefault(f"low rank, {base}+ef", []).append((x, a, f"{split} lowrank:{rank}+{base}+ef: {x:,.0f} bytes, {a:.2%}"))
    for (sparsity, codec), (x, a, n) in pruning.items():
        if float(sparsity) == 0:
            continue
        family = "pruning, fp32 up" if codec == "fp32_raw" else "pruning, q4 up"
        families.setdefault(family, []).append((x, a, f"{split} {float(sparsity):.0%} pruned, {codec}: {x:,.0f} bytes (mean of the run), {a:.2%}"))
    for family in colors:
        if family in families:
            curves.append((f"{split.replace('noniid', 'non-IID').replace('iid', 'IID')}, {family}", colors[family], split == "noniid", families[family]))

if not curves:
    sys.exit("uplink_plot.py: no runs with 3 seeds in reports/lowrank/ or reports/pruning/; run Simulations/lowrank-table.sh "
             "and Simulations/pruning-table.sh first")
svgplot.log_x_plot("reports/lowrank/uplink-accuracy-vs-bytes.svg",
                   "MNIST 2NN: test accuracy at round 200 against bytes per update (median of 3 seeds)",
                   "bytes per client update, mean of the run (log scale)", curves)
print("plot: reports/lowrank/uplink-accuracy-vs-bytes.svg")
