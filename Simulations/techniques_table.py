"""Every technique for smaller models and updates on the MNIST 2NN in one table, from the runs the
other scripts leave in reports/: pruning-table.sh (dense float32, its exports, pruning),
lowrank-table.sh (low-rank updates), transfer-table.sh (adapters, on the digits 0-4 -> 5-9
transfer) and the distillation run of README's "Distillation into smaller students". Accuracy
is at round 200, the median of seeds 1-3 (distillation: seed 1). A device's milliseconds per
round come from device-time.sh. Prints Markdown.
With --scenario NAME, prints instead the four best settings on another model from the runs
best-settings.sh leaves in Simulations/results/best/ (median of the seeds found there; a
device's seconds per round are fedsim's client_seconds, one client training on each core); with
--plot PATH also an SVG of each setting's test accuracy, round by round, against the uplink
bytes its clients have sent so far.
Usage: python3 Simulations/techniques_table.py [--scenario NAME [--rounds R] [--plot PATH]]"""
import argparse, glob, json, re, statistics, sys

import svgplot

UPDATE32 = 797_032    # an fp32+raw 2NN update: the weights and six 32-byte shard headers
SPLITS = ("mnist-2nn-iid", "mnist-2nn-noniid")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def per_update(report):
    return sum(r["uplink_bytes"] for r in report["rounds"]) / sum(r["clients"] for r in report["rounds"])


def pruning(split, sparsity, codec):
    """The runs of pruning-table.sh: (report, {export codec: (bytes, accuracy)}) per seed."""
    out = []
    for path in sorted(glob.glob(f"reports/pruning/{split}-s{sparsity}-{codec}-seed*.json")):
        exports = {}
        for line in open(path.replace(".json", ".exports")):
            exports[line.split()[0]] = (int(re.search(r"\((\d+) bytes", line).group(1)), float(re.search(r"exported ([0-9.]+) \(", line).group(1)))
        out.append((json.load(open(path)), exports))
    return out


def rounds_to(reports):
    reached = [r["summary"].get("rounds_to_target") for r in reports]
    return "-" if not reached or None in reached else f"{median(reached):g}"


def device_ms(name):
    """A client's training and encoding time per round from device-time.sh, in ms (None if not run)."""
    try:
        rounds = json.load(open(f"reports/device-time/{name}.json"))["rounds"][1:]
    except FileNotFoundError:
        return None
    return statistics.median(r["client_seconds"] for r in rounds) * 1000


def exports_of(path):
    """{export codec: (bytes, accuracy, float32 bytes)} from the fedcoord export lines of a run."""
    exports = {}
    for line in open(path):
        exports[line.split()[0]] = (int(re.search(r"\((\d+) bytes", line).group(1)), float(re.search(r"exported ([0-9.]+) \(", line).group(1)),
                                    int(re.search(r"float32 is (\d+)", line).group(1)))
    return exports


BEST = (("dense", "dense float32", "#000000", False),
        ("prune0.9-q4", "pruning 90%, q4", "#1f77b4", False),
        ("prune0.95-q4", "pruning 95%, q4", "#2ca02c", True),
        ("lowrank4-q4", "lowrank:4+q4+ef", "#d62728", False),
        ("lowrank8-q8", "lowrank:8+q8+ef", "#ff7f0e", True))


def plot_best_settings(path, scenario, rounds, runs, reference):
    """Accuracy after each round against the uplink bytes of the run so far (the median over
    seeds of both), one curve per setting, from a point below the dense reference up."""
    floor = reference - 0.02
    curves = []
    for name, label, color, dashed in BEST:
        reports = [r for r, _ in runs(name)]
        if not reports:
            continue
        count = min(len(r["rounds"]) for r in reports)
        points = []
        for i in range(count):
            if i >= 50 and (i + 1) % 5 and i + 1 != count:
                continue    # every round to 50, then every fifth
            sent = median([sum(x["uplink_bytes"] for x in r["rounds"][:i + 1]) for r in reports])
            accuracy = median([r["rounds"][i]["test_metric"] for r in reports])
            if accuracy >= floor:
                points.append((sent, accuracy, f"{label}, round {i + 1}: {accuracy:.2%} after {sent / 1e6:,.1f} MB"))
        if points:
            curves.append((f"{label} ({len(reports)} seed{'s' if len(reports) > 1 else ''})", color, dashed, points))
    svgplot.log_x_plot(path, f"{scenario}: test accuracy against uplink bytes sent, rounds 1-{rounds}",
                       "uplink bytes of all clients so far (log scale; median of the seeds)", curves, x_format=svgplot.byte_label)
    print(f"plot: {path}")


def device_seconds(reports):
    """A client's seconds training and encoding its update (fedsim's client_seconds, one client
    a worker thread), the median over rounds 2 on and then over the seeds."""
    per_seed = [median([x.get("client_seconds") for x in r["rounds"][1:]]) for r in reports]
    return median(per_seed)


def best_settings(scenario, rounds, plot=None):
    """The table of best-settings.sh's runs of one scenario."""
    def runs(name):
        out = []
        for path in sorted(glob.glob(f"Simulations/results/best/{scenario}-{name}-r{rounds}-seed*.json")):
            exports = path.replace(".json", ".exports")
            out.append((json.load(open(path)), exports_of(exports)))
        return out
    dense = runs("dense")
    if not dense:
        sys.exit(f"techniques_table.py: no runs of {scenario} over {rounds} rounds in Simulations/results/best/; run Simulations/best-settings.sh {scenario} first")
    float32 = dense[0][1]["fp32"][2]
    update32 = median([per_update(r) for r, _ in dense])
    reference = median([r["summary"]["final_metric"] for r, _ in dense])
    target = dense[0][0]["summary"]["target"]
    seeds = len(dense)
    rows = []   # (technique, setting, model bytes, update bytes, accuracy, rounds to target, s per round, a device's s, seeds)
    for export in ("fp32", "q8", "q4"):
        rows.append(("dense", f"{export} export", median([e[export][0] for _, e in dense]), update32,
                     median([e[export][1] for _, e in dense]), rounds_to([r for r, _ in dense]),
                     median([r["summary"]["mean_seconds_per_round"] for r, _ in dense]), device_seconds([r for r, _ in dense]), len(dense)))
    for name, technique, setting, export in (("prune0.9-q4", "pruning", "90%, q4 export, q4 updates", "q4"),
                                             ("prune0.95-q4", "pruning", "95%, q4 export, q4 updates", "q4"),
                                             ("lowrank4-q4", "low-rank updates", "`lowrank:4+q4+ef`", "fp32"),
                                             ("lowrank8-q8", "low-rank updates", "`lowrank:8+q8+ef`", "fp32")):
        found = runs(name)
        if found:
            rows.append((technique, setting, median([e[export][0] for _, e in found]), median([per_update(r) for r, _ in found]),
                         median([e[export][1] for _, e in found]), rounds_to([r for r, _ in found]),
                         median([r["summary"]["mean_seconds_per_round"] for r, _ in found]), device_seconds([r for r, _ in found]), len(found)))
    within = [r for r in rows if r[4] >= reference - 0.01]
    best_model = min(within, key=lambda r: r[2])
    best_update = min(within, key=lambda r: r[3])
    print(f"{scenario}: round {rounds}, the median of the seeds run (dense float32: {seeds}); float32 model {float32:,} bytes, "
          f"fp32+raw update {update32:,.0f} bytes")
    print()
    print(f"| technique | setting | model bytes (smaller than float32) | bytes per update (less than float32) | accuracy (change) | rounds to {target:.0%} | s per simulated round | a device's s per round (train + encode) | seeds |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        technique, setting, model, update, accuracy, reached, seconds, device, count = row
        model_text = f"{model:,.0f} ({float32 / model:.1f}x)"
        update_text = f"{update:,.0f} ({update32 / update:.0f}x)"
        if row is best_model:
            model_text = f"**{model_text}**"
        if row is best_update:
            update_text = f"**{update_text}**"
        print(f"| {technique} | {setting} | {model_text} | {update_text} | {accuracy:.2%} ({(accuracy - reference) * 100:+.2f}) | {reached} | {seconds:.2f} | {'' if device is None else f'{device:.2f}'} | {count} |")
    if plot:
        plot_best_settings(plot, scenario, rounds, runs, reference)


arguments = argparse.ArgumentParser(description="Every technique for smaller models in one table.")
arguments.add_argument("--scenario", help="print the four best settings of best-settings.sh's runs of this scenario")
arguments.add_argument("--rounds", type=int, default=200, help="the runs' rounds (default 200)")
arguments.add_argument("--plot", metavar="PATH", help="with --scenario: also draw accuracy against uplink bytes (SVG)")
options = arguments.parse_args()
if options.plot and not options.scenario:
    arguments.error("--plot needs --scenario")
if options.scenario:
    best_settings(options.scenario, options.rounds, options.plot)
    sys.exit(0)

rows = []   # (technique, setting, model bytes, update bytes, {split: accuracy}, rounds to 97% per split, seconds per round, device ms per round)
dense = {split: pruning(split, "0", "fp32_raw") for split in SPLITS}
if not all(dense.values()):
    sys.exit("techniques_table.py: no dense runs in reports/pruning/; run Simulations/pruning-table.sh first "
             "(and lowrank-table.sh, transfer-table.sh and device-time.sh for their rows)")
for export in ("fp32", "q8", "q4"):
    accuracy = {s: median([e[export][1] if export != "fp32" else r["summary"]["final_metric"] for r, e in dense[s]]) for s in SPLITS}
    rows.append(("dense", f"{export} export", median([e[export][0] for _, e in dense["mnist-2nn-iid"]]),
                 UPDATE32, accuracy, [rounds_to([r for r, _ in dense[s]]) for s in SPLITS], median([r["summary"]["mean_seconds_per_round"] for r, _ in dense["mnist-2nn-iid"]]),
                 device_ms("dense-fp32_raw")))
for sparsity, codec, export in [("0.5", "fp32_raw", "q8"), ("0.8", "fp32_raw", "q8"), ("0.9", "fp32_raw", "q8"), ("0.95", "fp32_raw", "q8"),
                                ("0.9", "q4", "q4"), ("0.95", "q4", "q4")]:
    runs = {s: pruning(s, sparsity, codec) for s in SPLITS}
    if not all(runs.values()):
        continue
    rows.append(("pruning", f"{float(sparsity):.0%}, {export} export" + (", q4 updates" if codec == "q4" else ""),
                 median([e[export][0] for _, e in runs["mnist-2nn-iid"]]), median([per_update(r) for r, _ in runs["mnist-2nn-iid"]]),
                 {s: median([e[export][1] for _, e in runs[s]]) for s in SPLITS}, [rounds_to([r for r, _ in runs[s]]) for s in SPLITS],
                 median([r["summary"]["mean_seconds_per_round"] for r, _ in runs["mnist-2nn-iid"]]), device_ms(f"pruning-s{sparsity}-{codec}")))
for codec in ("lowrank:1+q8+ef", "lowrank:2+q8+ef", "lowrank:4+q8+ef", "lowrank:8+q8+ef", "lowrank:4+q4+ef"):
    name = codec.replace(":", "_").replace("+", "_")
    runs = {s: [json.load(open(p)) for p in sorted(glob.glob(f"reports/lowrank/{s}-{name}-r200-seed*.json"))] for s in SPLITS}
    if not all(runs.values()):
        continue
    rows.append(("low-rank updates", f"`{codec}`", median([e["fp32"][0] for _, e in dense["mnist-2nn-iid"]]), median([per_update(r) for r in runs["mnist-2nn-iid"]]),
                 {s: median([r["summary"]["final_metric"] for r in runs[s]]) for s in SPLITS}, [rounds_to(runs[s]) for s in SPLITS],
                 median([r["summary"]["mean_seconds_per_round"] for r in runs["mnist-2nn-iid"]]), device_ms(f"lowrank-{name}")))
students = "reports/distill/mnist-2nn-iid.txt"
try:
    for line in open(students):
        m = re.search(r"student \d+ (\S+): (\d+) parameters, (\d+) bytes as q8 .* accuracy ([0-9.]+)", line)
        if m:
            hidden = ",".join(layer for layer in m.group(1).split(",")[:-1] if layer != "relu")
            rows.append(("distilled student", f"`{hidden}`, q8", int(m.group(3)), None,
                         {"mnist-2nn-iid": float(m.group(4))}, ["", ""], None, None))
except FileNotFoundError:
    pass
for setting, label in (("lora4", "LoRA r = 4"), ("lora16", "LoRA r = 16"), ("ffa16", "FFA-LoRA r = 16"), ("full", "full fine-tuning")):
    runs = [json.load(open(p)) for p in sorted(glob.glob(f"reports/transfer/digits-{setting}-seed*.json"))]
    if runs:
        rows.append(("adapters (digits 0-4 → 5-9)", label, None, median([per_update(r) for r in runs]),
                     {"transfer": median([r["summary"]["final_metric"] for r in runs])}, [rounds_to(runs), ""],
                     median([r["summary"]["mean_seconds_per_round"] for r in runs]), device_ms(f"adapters-{setting}")))

reference = {s: rows[0][4][s] for s in SPLITS}
within = [r for r in rows if r[2] and "mnist-2nn-iid" in r[4] and r[4]["mnist-2nn-iid"] >= reference["mnist-2nn-iid"] - 0.01]
best_model = min(within, key=lambda r: r[2]) if within else None
both = [r for r in rows if r[3] and all(s in r[4] and r[4][s] >= reference[s] - 0.01 for s in SPLITS)]
best_update = min(both, key=lambda r: r[3]) if both else None


def accuracy(row, split):
    value = row[4].get(split)
    if value is None:
        return "transfer: " + f"{row[4]['transfer']:.2%}" if "transfer" in row[4] and split == "mnist-2nn-iid" else ""
    return f"{value:.2%} ({(value - reference[split]) * 100:+.2f})"


print("| technique | setting | model bytes (smaller than float32) | bytes per update | IID accuracy (change) | non-IID accuracy (change) | "
      "rounds to 97% (IID, non-IID) | s per simulated round | a device's ms per round (train + encode) |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for row in rows:
    technique, setting, model, update, _, reached, seconds, device = row
    model_text = f"{model:,.0f} ({796_840 / model:.1f}x)" if model else ""
    update_text = f"{update:,.0f} ({UPDATE32 / update:.0f}x)" if update else ""
    if row is best_model:
        model_text = f"**{model_text}**"
    if row is best_update:
        update_text = f"**{update_text}**"
    print(f"| {technique} | {setting} | {model_text} | {update_text} | {accuracy(row, 'mnist-2nn-iid')} | {accuracy(row, 'mnist-2nn-noniid')} | "
          f"{', '.join(x for x in reached if x)} | {'' if seconds is None else f'{seconds:.2f}'} | {'' if device is None else f'{device:.1f}'} |")
