"""A line plot with a log-scale x axis as a standalone SVG, for the table scripts."""
import math


def byte_label(v):
    """A tick's bytes in the largest unit they fill: 500 KB, 2 MB, 10 GB."""
    for unit, suffix in ((1e9, " GB"), (1e6, " MB"), (1e3, " KB")):
        if v >= unit:
            return f"{v / unit:g}{suffix}"
    return f"{v:g} B"


def log_x_plot(path, title, x_label, curves, x_unit=1000, x_suffix=" KB", x_format=None):
    """Writes `path`. `curves` is a list of (label, color, dashed, points), points being
    (x, accuracy, tooltip) tuples; each curve is drawn through its points in x order. Ticks
    read v / x_unit + x_suffix, or x_format(v) if given."""
    x_format = x_format or (lambda v: f"{v / x_unit:g}{x_suffix}")
    width, height, left, right, top, bottom = 760, 440, 70, 210, 30, 50
    all_points = [p for *_, points in curves for p in points]
    xs = [math.log10(p[0]) for p in all_points]
    ys = [p[1] for p in all_points]
    x0, x1 = math.floor(min(xs) * 4) / 4, math.ceil(max(xs) * 4) / 4
    y0, y1 = math.floor(min(ys) * 100) / 100, math.ceil(max(ys) * 100) / 100
    def X(v): return left + (math.log10(v) - x0) / (x1 - x0) * (width - left - right)
    def Y(v): return top + (y1 - v) / (y1 - y0) * (height - top - bottom)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14">{title}</text>']
    for decade in range(math.floor(x0), math.ceil(x1) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** decade
            if x0 <= math.log10(v) <= x1:
                svg.append(f'<line x1="{X(v):.1f}" y1="{top}" x2="{X(v):.1f}" y2="{height - bottom}" stroke="#eee"/>')
                if m == 1 or x1 - x0 <= 3:   # over more than 3 decades, only the powers of ten are labelled
                    svg.append(f'<text x="{X(v):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x_format(v)}</text>')
    step = next(s for s in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2) if (y1 - y0) / s <= 6)
    for i in range(math.ceil(y0 / step - 1e-9), math.floor(y1 / step + 1e-9) + 1):
        v = i * step
        svg.append(f'<line x1="{left}" y1="{Y(v):.1f}" x2="{width - right}" y2="{Y(v):.1f}" stroke="#eee"/>')
        svg.append(f'<text x="{left - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:.1%}</text>')
    svg.append(f'<text x="{(left + width - right) / 2}" y="{height - 10}" text-anchor="middle">{x_label}</text>')
    for legend, (label, color, dashed, points) in enumerate(curves):
        points = sorted(points)
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        line = " ".join(f"{'M' if i == 0 else 'L'}{X(b):.1f},{Y(a):.1f}" for i, (b, a, _) in enumerate(points))
        svg.append(f'<path d="{line}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
        for b, a, tip in points:
            svg.append(f'<circle cx="{X(b):.1f}" cy="{Y(a):.1f}" r="3" fill="{color}"><title>{tip}</title></circle>')
        y = top + 20 + legend * 18
        svg.append(f'<line x1="{width - right + 12}" y1="{y}" x2="{width - right + 36}" y2="{y}" stroke="{color}" stroke-width="2"{dash}/>')
        svg.append(f'<text x="{width - right + 42}" y="{y + 4}">{label}</text>')
    svg.append("</svg>")
    with open(path, "w") as file:
        file.write("\n".join(svg))
