import Foundation

/// Draws a run's rounds as an SVG chart: test accuracy and test loss per round (top panel, two
/// y axes) and bytes up and down per round (bottom panel), with axes, ticks, labels and a legend.
public enum RunPlot {
    public static func svg(rounds: [RoundRow], title: String) -> String {
        let width = 900.0, height = 640.0
        let left = 80.0, right = 80.0, plotWidth = width - left - right
        let top1 = 60.0, height1 = 300.0, top2 = top1 + height1 + 70, height2 = 160.0
        let xs = rounds.map { Double($0.round) }
        let xMin = xs.min() ?? 0, xMax = max(xs.max() ?? 1, xMin + 1)
        func x(_ v: Double) -> Double { left + (v - xMin) / (xMax - xMin) * plotWidth }
        var out = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" font-family="Helvetica, Arial, sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(width / 2)" y="28" text-anchor="middle" font-size="16" font-weight="bold">\(escape(title))</text>

            """
        // Axis helpers.
        func niceTicks(_ low: Double, _ high: Double, count: Int = 5) -> [Double] {
            guard high > low else { return [low] }
            let raw = (high - low) / Double(count)
            let magnitude = pow(10, floor(log10(raw)))
            let step = [1.0, 2, 2.5, 5, 10].map { $0 * magnitude }.first { $0 >= raw } ?? raw
            var ticks: [Double] = []
            var t = ceil(low / step) * step
            while t <= high + step * 1e-9 { ticks.append(t); t += step }
            return ticks
        }
        func label(_ v: Double) -> String {
            if abs(v) >= 1e9 { return String(format: "%.1fG", v / 1e9) }
            if abs(v) >= 1e6 { return String(format: "%.1fM", v / 1e6) }
            if abs(v) >= 1e3 { return String(format: "%.0fk", v / 1e3) }
            return v == v.rounded() ? String(format: "%.0f", v) : String(format: "%.3g", v)
        }
        func panel(top: Double, height: Double, series: [(name: String, values: [Double?], color: String, axis: Int)], axisTitles: [String], fromZero: Bool = false) {
            // Frame and x axis.
            out += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(plotWidth)\" height=\"\(height)\" fill=\"none\" stroke=\"#444\"/>\n"
            for t in niceTicks(xMin, xMax, count: 8) {
                out += "<line x1=\"\(x(t))\" y1=\"\(top + height)\" x2=\"\(x(t))\" y2=\"\(top + height + 5)\" stroke=\"#444\"/>"
                out += "<text x=\"\(x(t))\" y=\"\(top + height + 18)\" text-anchor=\"middle\">\(label(t))</text>\n"
            }
            out += "<text x=\"\(left + plotWidth / 2)\" y=\"\(top + height + 36)\" text-anchor=\"middle\">round</text>\n"
            for axis in 0..<axisTitles.count {
                let values = series.filter { $0.axis == axis }.flatMap { $0.values.compactMap { $0 } }
                guard let lo = values.min(), let hi = values.max() else { continue }
                let pad = (hi - lo) * 0.05 + (hi == lo ? max(abs(hi) * 0.05, 1e-3) : 0)
                // Room above the data for the legend; bytes start at zero.
                let low = fromZero ? 0 : (axis == 1 || lo - pad < 0 ? max(0, lo - pad) : lo - pad)
                let high = hi + pad + (hi - low) * 0.12
                func y(_ v: Double) -> Double { top + height - (v - low) / (high - low) * height }
                let axisX = axis == 0 ? left : left + plotWidth
                for t in niceTicks(low, high) {
                    let tickEnd = axis == 0 ? axisX - 5 : axisX + 5
                    out += "<line x1=\"\(axisX)\" y1=\"\(y(t))\" x2=\"\(tickEnd)\" y2=\"\(y(t))\" stroke=\"#444\"/>"
                    if axis == 0 { out += "<line x1=\"\(left)\" y1=\"\(y(t))\" x2=\"\(left + plotWidth)\" y2=\"\(y(t))\" stroke=\"#ddd\"/>" }
                    out += "<text x=\"\(axis == 0 ? axisX - 8 : axisX + 8)\" y=\"\(y(t) + 4)\" text-anchor=\"\(axis == 0 ? "end" : "start")\">\(label(t))</text>\n"
                }
                let titleX = axis == 0 ? 20.0 : width - 20
                out += "<text transform=\"translate(\(titleX),\(top + height / 2)) rotate(-90)\" text-anchor=\"middle\">\(escape(axisTitles[axis]))</text>\n"
                for s in series where s.axis == axis {
                    let points = zip(xs, s.values).compactMap { px, v in v.map { "\(x(px)),\(y($0))" } }
                    guard !points.isEmpty else { continue }
                    out += "<polyline fill=\"none\" stroke=\"\(s.color)\" stroke-width=\"2\" points=\"\(points.joined(separator: " "))\"/>\n"
                    if points.count == 1 {
                        let p = points[0].split(separator: ",")
                        out += "<circle cx=\"\(p[0])\" cy=\"\(p[1])\" r=\"3\" fill=\"\(s.color)\"/>\n"
                    }
                }
            }
            // Legend.
            var lx = left + 10
            for s in series {
                out += "<rect x=\"\(lx)\" y=\"\(top + 10)\" width=\"14\" height=\"4\" fill=\"\(s.color)\"/>"
                out += "<text x=\"\(lx + 20)\" y=\"\(top + 16)\">\(escape(s.name))</text>\n"
                lx += 30 + Double(s.name.count) * 7
            }
        }
        let metric = "test " + (rounds.first?.metric ?? "accuracy").replacingOccurrences(of: "_", with: " ")
        panel(top: top1, height: height1, series: [
            (metric, rounds.map(\.testMetric), "#1f77b4", 0),
            ("test loss", rounds.map(\.testLoss), "#d62728", 1),
        ], axisTitles: [metric, "test loss"])
        panel(top: top2, height: height2, series: [
            ("bytes up", rounds.map { Double($0.uplinkBytes) }, "#2ca02c", 0),
            ("bytes down", rounds.map { Double($0.downlinkBytes) }, "#9467bd", 0),
        ], axisTitles: ["bytes per round"], fromZero: true)
        out += "</svg>\n"
        return out
    }

    private static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
