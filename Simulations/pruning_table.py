"""Reads reports/pruning/ (written by pruning-table.sh): prints the Markdown table and draws
accuracy against exported model bytes, one curve per export codec (SVG, log scale of bytes)."""
import json, math, re, statistics, sys

rounds, seeds = int(sys.argv[1]), int(sys.argv[2])
settings = sys.argv[3:]
FLOAT32 = 199_210 * 4   # raw float32 bytes of the 2NN's weights (the model's ratio)
UPDATE32 = 797_032      # an fp32+raw update: the weights and six 32-byte shard headers


def runs(scenario, sparsity, codec):
    out = []
    for seed in range(1, seeds + 1):
        tag = f"reports/pruning/{scenario}-s{sparsity}-{codec.replace(':', '_').replace('+', '_')}-seed{seed}"
        report = json.load(open(tag + ".json"))
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
width, height, left, right, top, bottom = 760, 440, 70, 190, 30, 50
all_points = [p for values in points.values() for p in values]
xs = [math.log10(p[0]) for p in all_points]
ys = [p[1] for p in all_points]
x0, x1 = math.floor(min(xs) * 4) / 4, math.ceil(max(xs) * 4) / 4
y0, y1 = math.floor(min(ys) * 100) / 100, math.ceil(max(ys) * 100) / 100
def X(v): return left + (math.log10(v) - x0) / (x1 - x0) * (width - left - right)
def Y(v): return top + (y1 - v) / (y1 - y0) * (height - top - bottom)
colors = {"fp32": "#1f77b4", "q8": "#ff7f0e", "q4": "#2ca02c"}
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
       f'<rect width="{width}" height="{height}" fill="white"/>',
       f'<text x="{left}" y="18" font-size="14">MNIST 2NN, federated pruning: test accuracy at round {rounds} against exported model bytes</text>']
e = x0
while e <= x1 + 1e-9:
    for m in (1, 2, 5):
        v = m * 10 ** math.floor(e)
        if x0 <= math.log10(v) <= x1 and abs(math.log10(v) - e) < 1 and math.floor(math.log10(v)) == math.floor(e):
            svg.append(f'<line x1="{X(v):.1f}" y1="{top}" x2="{X(v):.1f}" y2="{height - bottom}" stroke="#eee"/>')
            svg.append(f'<text x="{X(v):.1f}" y="{height - bottom + 16}" text-anchor="middle">{v / 1000:g} KB</text>')
    e = math.floor(e) + 1
steps = 5
for i in range(steps + 1):
    v = y0 + (y1 - y0) * i / steps
    svg.append(f'<line x1="{left}" y1="{Y(v):.1f}" x2="{width - right}" y2="{Y(v):.1f}" stroke="#eee"/>')
    svg.append(f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.1%}</text>')
svg.append(f'<text x="{(left + width - right) / 2}" y="{height - 10}" text-anchor="middle">exported model bytes (log scale)</text>')
legend = 0
for (scenario, name), values in sorted(points.items()):
    values.sort()
    dash = "" if scenario.endswith("iid") and "non" not in scenario else ' stroke-dasharray="5,3"'
    path = " ".join(f"{'M' if i == 0 else 'L'}{X(b):.1f},{Y(a):.1f}" for i, (b, a, s) in enumerate(values))
    svg.append(f'<path d="{path}" fill="none" stroke="{colors[name]}" stroke-width="2"{dash}/>')
    for b, a, s in values:
        svg.append(f'<circle cx="{X(b):.1f}" cy="{Y(a):.1f}" r="3" fill="{colors[name]}"><title>{scenario} {name} {s:.0%} pruned: {b:,.0f} bytes, {a:.2%}</title></circle>')
    y = top + 20 + legend * 18
    svg.append(f'<line x1="{width - right + 12}" y1="{y}" x2="{width - right + 36}" y2="{y}" stroke="{colors[name]}" stroke-width="2"{dash}/>')
    svg.append(f'<text x="{width - right + 42}" y="{y + 4}">{scenario.replace("mnist-2nn-", "")}, {name}</text>')
    legend += 1
svg.append("</svg>")
open("reports/pruning/accuracy-vs-bytes.svg", "w").write("\n".join(svg))
print("\nplot: reports/pruning/accuracy-vs-bytes.svg")
