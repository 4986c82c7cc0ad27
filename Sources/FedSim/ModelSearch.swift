import FedCodec
import FedModel
import Foundation

/// A search for the model that fits a budget (`fedsim search`): candidate model descriptions
/// are drawn from a space built from the task's input (multilayer perceptrons for vectors;
/// plain or separable convolution stacks for images), those over the budget are dropped, and
/// successive halving trains them federated: every candidate for a short run, then the better
/// half for twice as many rounds, and so on until the finalists, which train the final number
/// of rounds. Every run starts from scratch with the scenario's settings and seed, so a search
/// is reproducible from its seed.
public struct ModelSearch: Sendable {
    /// What a candidate may cost.
    public enum Budget: Sendable, CustomStringConvertible {
        /// Parameters (float32 values).
        case parameters(Int)
        /// Bytes of the model exported with this codec (`fedsim --export`'s file).
        case exportBytes(Int, CodecSpec)
        /// Training FLOPs per example (``Network/trainingFlopsPerExample``): what a device
        /// computes, rather than what it stores.
        case trainingFlops(Int)

        public var description: String {
            switch self {
            case .parameters(let n): "\(n) parameters"
            case .exportBytes(let n, let codec): "\(n) bytes exported as \(codec)"
            case .trainingFlops(let n): "\(n) training FLOPs per example"
            }
        }

        /// What the front and the plot measure a candidate by: its training FLOPs under a FLOPs
        /// budget, its exported bytes otherwise.
        public func measure(_ candidate: Candidate) -> Int {
            if case .trainingFlops = self { return candidate.flops }
            return candidate.exportBytes
        }
    }

    public struct Candidate: Sendable {
        public var layers: [LayerSpec]
        public var parameters: Int
        /// Bytes of the exported model in the budget's codec (fp32 for a parameter or FLOPs budget).
        public var exportBytes: Int
        /// Training FLOPs per example.
        public var flops: Int
        /// The test metric after each rung it was trained in: (rounds, metric).
        public var results: [(rounds: Int, metric: Double)] = []

        public var description: String { layers.map(\.description).joined(separator: ",") }
        /// Its metric at the last rung it reached.
        public var metric: Double? { results.last?.metric }
        public var rounds: Int { results.last?.rounds ?? 0 }
    }

    public var budget: Budget
    public var candidates = 16
    /// Rounds of the first rung; each later rung doubles them.
    public var shortRounds = 10
    public var finalists = 3
    public var finalRounds = 100
    public var seed: UInt64 = 1

    public init(budget: Budget) { self.budget = budget }

    /// Draws `candidates` distinct model descriptions for the task that fit the budget.
    public func draw(for task: ModelSpec) throws -> [Candidate] {
        var generator = SeededGenerator(seed: seed, stream: 0x5EA)
        var drawn: [Candidate] = []
        var seen = Set<String>()
        for _ in 0..<(candidates * 200) where drawn.count < candidates {
            let layers = Self.sample(task, &generator)
            let key = layers.map(\.description).joined(separator: ",")
            guard seen.insert(key).inserted else { continue }
            let spec = ModelSpec(input: task.input, classes: task.classes, layers: layers, loss: task.loss)
            guard let network = try? Network(spec) else { continue }
            let bytes = try exportBytes(network)
            let flops = network.trainingFlopsPerExample
            let fits = switch budget {
            case .parameters(let n): network.parameterCount <= n
            case .exportBytes(let n, _): bytes <= n
            case .trainingFlops(let n): flops <= n
            }
            if fits { drawn.append(Candidate(layers: layers, parameters: network.parameterCount, exportBytes: bytes, flops: flops)) }
        }
        guard drawn.count >= candidates else {
            throw ModelError("only \(drawn.count) of the \(candidates) candidates asked for fit \(budget); raise the budget or ask for fewer")
        }
        return drawn
    }

    /// The exported file's size: its two header lines, then each shard's length and bytes.
    func exportBytes(_ network: Network) throws -> Int {
        let codec: CodecSpec
        switch budget {
        case .parameters, .trainingFlops: codec = try CodecSpec(parsing: "fp32")
        case .exportBytes(_, let spec):
            guard spec.lowRank == nil, !spec.errorFeedback else { throw ModelError("the budget's export codec cannot use low rank or error feedback, got \(spec)") }
            codec = spec
        }
        var generator = SeededGenerator(seed: seed)
        let shards = try UpdateCodec(spec: codec, shardRanges: network.layout.tensors.map(\.range))
            .encode(network.initialParameters(seed: seed), generator: &generator)
        return "FEDMODEL 1\n\(network.spec.wireDescription)\n".utf8.count + shards.reduce(0) { $0 + 4 + $1.count }
    }

    /// One random model for the task: a multilayer perceptron for a vector input; for an image,
    /// one to three blocks of a plain or a separable (depthwise, then 1x1) convolution with
    /// ReLU and 2x2 max-pooling, then an optional hidden dense layer.
    static func sample(_ task: ModelSpec, _ g: inout SeededGenerator) -> [LayerSpec] {
        func pick<T>(_ options: [T]) -> T { options[Int(g.next() % UInt64(options.count))] }
        var layers: [LayerSpec] = []
        let image = task.input.height > 1 || task.input.width > 1
        if image {
            var size = min(task.input.height, task.input.width)
            let blocks = pick([1, 2, 3])
            for _ in 0..<blocks where size >= 2 {
                let channels = pick([4, 8, 16, 32, 64])
                let kernel = pick([3, 5])
                if pick([false, true]) {
                    layers += [.depthwise(kernelSize: kernel), .conv(kernelSize: 1, channels: channels)]
                } else {
                    layers.append(.conv(kernelSize: kernel, channels: channels))
                }
                layers += [.relu, .maxPool]
                size /= 2
            }
            layers.append(.flatten)
            if let hidden = pick([nil, 32, 64, 128] as [Int?]) { layers += [.dense(outputs: hidden), .relu] }
        } else {
            for _ in 0..<pick([1, 2, 3]) { layers += [.dense(outputs: pick([16, 24, 32, 48, 64, 96, 128, 192, 256])), .relu] }
        }
        layers.append(.dense(outputs: task.classes))
        return layers
    }

    /// Successive halving over `candidates` with `base`'s task, data split and settings.
    /// `progress(candidate, rounds, metric)` is called after every training run.
    public func run(_ candidates: [Candidate], base: SimulationConfiguration, train: Dataset, test: Dataset,
                    progress: (Candidate, Int) -> Void = { _, _ in }) throws -> [Candidate] {
        var all = candidates
        var alive = Array(all.indices)
        var rounds = shortRounds
        let task = try base.modelSpec()
        let metric = task.loss.metric
        let input = task.input.height == 1 && task.input.width == 1 ? [task.input.channels] : [task.input.height, task.input.width, task.input.channels]
        while true {
            let final = alive.count <= finalists
            let trainRounds = final ? max(finalRounds, rounds) : rounds
            for index in alive {
                var c = base
                c.model = ""
                c.layers = all[index].layers.map(\.description)
                (c.input, c.classes, c.loss) = (input, task.classes, task.loss)
                c.rounds = trainRounds
                c.evaluateEvery = trainRounds
                c.stopAtTarget = false
                let report = try Simulation(configuration: c, train: train, test: test).run()
                all[index].results.append((trainRounds, report.summary.finalAccuracy ?? .nan))
                progress(all[index], trainRounds)
            }
            if final { break }
            let keep = max(finalists, (alive.count + 1) / 2)
            alive = alive.sorted { a, b in
                let (x, y) = (all[a].metric ?? .nan, all[b].metric ?? .nan)
                return x == y ? a < b : metric.best(x, y) == x && !x.isNaN
            }.prefix(keep).sorted()
            rounds *= 2
        }
        return all
    }

    /// The finalists: the candidates trained longest (the final rung trains `finalRounds`, or
    /// the last rung's rounds if halving reached more).
    public static func finalists(_ candidates: [Candidate]) -> [Candidate] {
        let trained = candidates.filter { $0.metric != nil }
        guard let longest = trained.map(\.rounds).max() else { return [] }
        return trained.filter { $0.rounds == longest }
    }

    /// The finalists that no smaller finalist beats: the accuracy-against-size front (size in
    /// `measure`: exported bytes, or training FLOPs).
    public static func front(_ candidates: [Candidate], metric: Metric, measure: (Candidate) -> Int = \.exportBytes) -> [Candidate] {
        let finals = finalists(candidates).sorted { measure($0) < measure($1) }
        var front: [Candidate] = []
        for candidate in finals where front.last.map({ metric.best(candidate.metric!, $0.metric!) == candidate.metric! && candidate.metric! != $0.metric! }) ?? true {
            front.append(candidate)
        }
        return front
    }
}
