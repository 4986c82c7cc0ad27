import ArgumentParser
import FedCodec
import FedModel
import FedSim
import FedStore
import Foundation

/// `fedsim search`: the best model for the scenario's task that fits a size budget.
struct Search: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fedsim search",
        abstract: "Search for the model that fits a budget: draw candidates, train them federated with successive halving, print and plot the accuracy-against-size front.",
        discussion: """
            Candidates come from the task's input: multilayer perceptrons for a vector, one to three \
            plain or separable convolution blocks for an image. Every candidate trains --short-rounds \
            rounds with the scenario's clients, data split and settings; the better half trains twice \
            as many, and so on down to the finalists, which train --final-rounds rounds. Seeded and \
            reproducible. The budget is parameters, exported bytes in a codec, or training FLOPs per \
            example (6 x the forward pass's multiply-adds). Examples:
            fedsim search --config Simulations/mnist-2nn-iid.toml --budget-bytes 50000 --budget-codec q8
            fedsim search --config Simulations/fashion-mnist-cnn-iid.toml --budget-flops 5000000
            """)

    @Option(help: "Scenario file (TOML): the task, data, clients, split and training settings.") var config: String?
    @Option(help: "Data directory (overrides the scenario's).") var data: String?
    @Option(name: .customLong("budget-params"), help: "Most parameters a candidate may have.") var budgetParameters: Int?
    @Option(name: .customLong("budget-bytes"), help: "Most bytes a candidate's exported model may take, in --budget-codec.") var budgetBytes: Int?
    @Option(name: .customLong("budget-codec"), help: "Codec of the export the byte budget is measured in.") var budgetCodec = "q8"
    @Option(name: .customLong("budget-flops"), help: "Most training FLOPs per example a candidate may cost (6 x the forward pass's multiply-adds; the MNIST CNN costs 73.6 million).") var budgetFlops: Int?
    @Option(help: "Candidates drawn (at least 16 for a real search).") var candidates = 16
    @Option(name: .customLong("short-rounds"), help: "Rounds of the first rung; each later rung doubles them.") var shortRounds = 10
    @Option(help: "Candidates trained to the end.") var finalists = 3
    @Option(name: .customLong("final-rounds"), help: "Rounds the finalists train.") var finalRounds = 100
    @Option(help: "Random seed (the candidates drawn and every run).") var seed: UInt64?
    @Option(help: "Worker threads (0 = one per core).") var threads: Int?
    @Option(help: "Draw every candidate's size and metric, and the front, into this SVG file.") var plot: String?
    @Option(help: "Record the candidates and the front in this run database (fedcoord report shows them).") var db: String?

    func validate() throws {
        guard [budgetParameters, budgetBytes, budgetFlops].compactMap({ $0 }).count == 1 else {
            throw ValidationError("give one budget: --budget-params, --budget-bytes or --budget-flops")
        }
        guard [budgetParameters, budgetBytes, budgetFlops].allSatisfy({ ($0 ?? 1) > 0 }) else { throw ValidationError("a budget must be positive") }
        guard candidates >= 1, shortRounds >= 1, finalists >= 1, finalRounds >= 1 else { throw ValidationError("--candidates, --short-rounds, --finalists and --final-rounds must be at least 1") }
        guard finalists <= candidates else { throw ValidationError("--finalists (\(finalists)) cannot exceed --candidates (\(candidates))") }
    }

    func run() throws {
        do {
            try search()
        } catch let error as ConfigurationError {
            fail(error.description)
        } catch let error as ModelError {
            fail(error.description)
        } catch let error as DataError {
            fail(error.description)
        } catch let error as StoreError {
            fail(error.description)
        } catch let error as CodecError {
            fail("--budget-codec: \(error.message)")
        }
    }

    private func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("fedsim search: error: \(message)\n".utf8))
        Foundation.exit(1)
    }

    private func search() throws {
        var c = try config.map { try SimulationConfiguration.load(contentsOf: URL(fileURLWithPath: $0)) } ?? SimulationConfiguration()
        if let data { c.data = data }
        if let seed { c.seed = seed }
        if let threads { c.threads = threads }
        try c.validate()
        let budget: ModelSearch.Budget = if let budgetBytes { .exportBytes(budgetBytes, try CodecSpec(parsing: budgetCodec)) }
            else if let budgetFlops { .trainingFlops(budgetFlops) } else { .parameters(budgetParameters!) }
        var search = ModelSearch(budget: budget)
        (search.candidates, search.shortRounds, search.finalists, search.finalRounds, search.seed) = (candidates, shortRounds, finalists, finalRounds, c.seed)
        let task = try c.modelSpec()
        let drawn = try search.draw(for: task)
        say("fedsim search: \(drawn.count) candidates within \(search.budget), \(c.clients) clients, \(c.clientsPerRound) per round, seed \(c.seed)")
        let directory = URL(fileURLWithPath: c.data)
        let targets = TargetFormat(task)
        let train = try DataDirectory.load(directory, train: true, targets: targets, columns: c.csvColumns)
        let test = try DataDirectory.load(directory, train: false, targets: targets, columns: c.csvColumns)
        let metric = task.loss.metric
        var done = 0
        let results = try search.run(drawn, base: c, train: train, test: test) { candidate, rounds in
            done += 1
            say(String(format: "fedsim search: [%d] %d rounds: %@ (%d parameters, %d bytes, %.2f MFLOP): %@ %.4f",
                         done, rounds, candidate.description, candidate.parameters, candidate.exportBytes, Double(candidate.flops) / 1e6,
                         metric.rawValue, candidate.metric ?? .nan))
        }
        let front = ModelSearch.front(results, metric: metric, measure: budget.measure)
        say("fedsim search: the front (finalists no smaller one beats), \(front.first?.rounds ?? finalRounds) rounds:")
        for candidate in front {
            say(String(format: "  %@ %.4f  %d parameters  %d bytes  %.2f MFLOP  %@", metric.rawValue, candidate.metric!, candidate.parameters, candidate.exportBytes,
                       Double(candidate.flops) / 1e6, candidate.description))
        }
        if let best = ModelSearch.finalists(results).max(by: { metric.best($0.metric!, $1.metric!) == $1.metric! && $0.metric! != $1.metric! }) {
            say(String(format: "fedsim search: best within the budget: %@ (%@ %.4f, %d parameters, %d bytes, %.2f MFLOP)",
                         best.description, metric.rawValue, best.metric!, best.parameters, best.exportBytes, Double(best.flops) / 1e6))
        }
        if let db {
            let store = try RunStore(path: db)
            for candidate in results {
                try store.recordEvent(kind: "search", message: String(
                    format: "%@ | %d parameters | %d bytes | %d training FLOPs | %d rounds | %@ %.4f%@", candidate.description, candidate.parameters,
                    candidate.exportBytes, candidate.flops, candidate.rounds, metric.rawValue, candidate.metric ?? .nan,
                    front.contains { $0.description == candidate.description } ? " | front" : ""))
            }
        }
        if let plot {
            try Self.svg(results, front: front, metric: metric, title: "fedsim search: \(search.budget)", measure: budget.measure,
                         axis: { if case .trainingFlops = budget { "training FLOPs per example" } else { "exported model bytes" } }())
                .write(toFile: plot, atomically: true, encoding: .utf8)
        }
    }

    /// Every candidate at its last rung (finalists filled) against its exported size (or its
    /// training FLOPs), and the front as a line.
    static func svg(_ candidates: [ModelSearch.Candidate], front: [ModelSearch.Candidate], metric: Metric, title: String,
                    measure: (ModelSearch.Candidate) -> Int = \.exportBytes, axis: String = "exported model bytes") -> String {
        let (width, height, left, right, top, bottom) = (720.0, 440.0, 70.0, 20.0, 40.0, 70.0)
        let points = candidates.filter { $0.metric?.isFinite == true }
        guard !points.isEmpty else { return "<svg xmlns=\"http://www.w3.org/2000/svg\"/>" }
        let xs = points.map { log10(Double(measure($0))) }, ys = points.map { $0.metric! }
        let (x0, x1) = (xs.min()! - 0.05, xs.max()! + 0.05), (y0, y1) = (ys.min()! - 0.005, ys.max()! + 0.005)
        func X(_ bytes: Int) -> Double { left + (log10(Double(bytes)) - x0) / (x1 - x0) * (width - left - right) }
        func Y(_ v: Double) -> Double { top + (y1 - v) / (y1 - y0) * (height - top - bottom) }
        var out = ["<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" font-family=\"sans-serif\" font-size=\"12\">",
                   "<rect width=\"\(Int(width))\" height=\"\(Int(height))\" fill=\"white\"/>",
                   "<text x=\"\(left)\" y=\"20\" font-weight=\"bold\">\(title): \(metric.rawValue) against \(axis) (log scale)</text>",
                   "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(width - left - right)\" height=\"\(height - top - bottom)\" fill=\"none\" stroke=\"#999\"/>"]
        for i in 0...4 {
            let v = y0 + (y1 - y0) * Double(i) / 4
            out.append(String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.2f%%</text>", left - 4, Y(v) + 4, v * 100))
            let b = Int(pow(10, x0 + (x1 - x0) * Double(i) / 4))
            out.append(String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>", X(b), height - bottom + 16, b))
        }
        out.append("<text x=\"\(left + (width - left - right) / 2)\" y=\"\(height - bottom + 32)\" text-anchor=\"middle\">\(axis)</text>")
        let rungs = Set(points.map(\.rounds)).sorted()
        for candidate in points {
            let shade = rungs.count > 1 ? 0.25 + 0.75 * Double(rungs.firstIndex(of: candidate.rounds)!) / Double(rungs.count - 1) : 1
            out.append(String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"#1f77b4\" fill-opacity=\"%.2f\"><title>%@: %d rounds</title></circle>",
                              X(measure(candidate)), Y(candidate.metric!), shade, candidate.description, candidate.rounds))
        }
        let line = front.map { String(format: "%.1f,%.1f", X(measure($0)), Y($0.metric!)) }.joined(separator: " ")
        out.append("<polyline points=\"\(line)\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\"/>")
        // Each front model ringed and labelled, so a front of one model shows too.
        for candidate in front {
            let (x, y) = (X(measure(candidate)), Y(candidate.metric!))
            out.append(String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"7\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\"/>", x, y))
            // Labels in the right half end left of their point, so none runs off the plot.
            let right = x > left + (width - left - right) / 2
            out.append(String(format: "<text x=\"%.1f\" y=\"%.1f\" fill=\"#d62728\" text-anchor=\"%@\">%.2f%%, %d parameters</text>",
                              right ? x - 10 : x + 10, y + 16, right ? "end" : "start", candidate.metric! * 100, candidate.parameters))
        }
        out.append("<text x=\"\(left)\" y=\"\(height - 12)\" font-size=\"11\">dots: every candidate after its last rung (darker: more rounds); red: the front of the finalists</text>")
        out.append("</svg>")
        return out.joined(separator: "\n")
    }
}

/// One line on standard output, written at once (progress shows even when output is a file).
private func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
