import FedCodec
import FedModel

/// Keys that fedsim's scenarios and fedcoord's configuration share, read by one function each
/// so that both accept the same names and values.
public enum SharedKeys {
    /// How updates are combined: FedAvg or a robust rule, the norm bound, central DP, trust.
    public static let aggregation: Set<String> = [
        "aggregator", "trim_beta", "krum_f", "multi_krum_m", "norm_bound", "norm_bound_action",
        "dp_clip", "dp_noise_multiplier", "trust_threshold", "trust_decay",
    ]
    /// The server optimizer and its hyperparameters.
    public static let serverOptimizer: Set<String> = ["server_optimizer", "server_lr", "server_momentum", "server_beta2", "server_tau"]
    /// The model: a preset or a list of layers, with the task's input shape, output size
    /// (`classes`, or its synonym `outputs`) and loss.
    public static let model: Set<String> = ["model", "layers", "input", "classes", "outputs", "loss"]
    /// Federated magnitude pruning on Zhu and Gupta's schedule.
    public static let pruning: Set<String> = ["prune_sparsity", "prune_initial_sparsity", "prune_start", "prune_end", "prune_every", "prune_scope"]
    /// A model trained elsewhere that the run starts from (fine-tuning, in full or with adapters).
    public static let transfer: Set<String> = ["base_model"]
    /// Ensemble distillation of each round's client models on the server's examples (FedDF).
    public static let ensembleDistillation: Set<String> = ["ensemble_distill", "ensemble_temperature", "ensemble_epochs", "ensemble_lr", "ensemble_batch"]
}

/// FedDF (``EnsembleDistillation``): whether each round's aggregate is distilled further from
/// the round's client models on the server's examples, and how (the `ensemble_` keys). By
/// default a pass over the server's examples a round at T = 1, with a gentler step than a
/// student's from scratch (the aggregate is already trained).
public struct EnsembleDistillationSettings: Sendable, Hashable {
    public var enabled = false
    public var distillation = Distillation(temperature: 1, epochs: 1, batchSize: 64, learningRate: 0.01, momentum: 0.9)

    public init() {}

    public mutating func read(_ table: ConfigurationTable) throws {
        if let v = try table.bool("ensemble_distill") { enabled = v }
        if let v = try table.number("ensemble_temperature") { distillation.temperature = Float(v) }
        if let v = try table.int("ensemble_epochs") { distillation.epochs = v }
        if let v = try table.number("ensemble_lr") { distillation.learningRate = Float(v) }
        if let v = try table.int("ensemble_batch") { distillation.batchSize = v }
    }

    /// Checks the settings against the task and the aggregation (when enabled): only
    /// classifiers are distilled, and the ensemble is every added update, so a rule that sets
    /// some aside or noise that hides each one would be undone by the clients' own outputs.
    public func check(loss: Loss, aggregation: AggregationSettings) throws {
        guard enabled else { return }
        do { try distillation.validate() } catch let error as ModelError { throw ConfigurationError("ensemble_distill: \(error.description)") }
        guard loss == .softmaxCrossEntropy else { throw ConfigurationError("ensemble_distill teaches classifiers (softmax); this task's loss is \(loss)") }
        guard !aggregation.holdsUpdates, aggregation.dpClip == 0 else {
            throw ConfigurationError("ensemble_distill needs the fedavg aggregator without norm_bound or central DP (the ensemble holds every client's own model)")
        }
    }
}

extension ModelSpec {
    /// Why this model cannot be trained with the given options, or nil: low-rank adapters do
    /// not combine with pruning, and need a base model to adapt.
    public func transferProblem(baseModel: String?, pruning: Bool) -> String? {
        guard hasAdapters else { return nil }
        if pruning { return "low-rank adapters (:loraR layers) and pruning do not combine: the adapters train, the pruned base weights would be frozen" }
        if baseModel == nil { return "low-rank adapters (:loraR layers) adapt a trained model: set base_model to an exported model or a run database" }
        return nil
    }
}

extension PruningSchedule.Scope: ConfigurationChoice {}

extension PruningSchedule {
    /// The schedule the `prune_` keys of `table` describe, or nil when they are absent.
    /// `prune_sparsity` is required with any of them; `prune_end` 0 (the default) means half
    /// the run's rounds (``resolved(rounds:)``).
    public static func configured(_ table: ConfigurationTable) throws -> PruningSchedule? {
        guard !SharedKeys.pruning.isDisjoint(with: table.keys) else { return nil }
        guard let sparsity = try table.number("prune_sparsity") else {
            throw ConfigurationError(file: table.source, key: "prune_sparsity", value: nil, "is required with the other prune_ keys (the final fraction of weights pruned, e.g. 0.9)")
        }
        var schedule = PruningSchedule(sparsity: sparsity, endRound: 0)
        if let v = try table.number("prune_initial_sparsity") { schedule.initialSparsity = v }
        if let v = try table.int("prune_start") { schedule.startRound = v }
        if let v = try table.int("prune_end") { schedule.endRound = v }
        if let v = try table.int("prune_every") { schedule.every = v }
        if let v = try table.choice("prune_scope", as: Scope.self) { schedule.scope = v }
        return schedule
    }

    /// This schedule with an unset end (0) put at half of `rounds` (not before the start), and
    /// checked against the run; errors name the key.
    public func resolved(rounds: Int) throws -> PruningSchedule {
        var schedule = self
        if schedule.endRound == 0 { schedule.endRound = max(schedule.startRound, rounds / 2) }
        do { try schedule.validate(rounds: rounds) } catch let error as ModelError { throw ConfigurationError(error.description) }
        return schedule
    }
}

extension AggregationSettings.Rule: ConfigurationChoice {}
extension ServerOptimizer.Kind: ConfigurationChoice {}

/// What the norm bound does to an update beyond it.
public enum NormBoundAction: String, ConfigurationChoice, Sendable {
    case clip, refuse
}

extension AggregationSettings {
    /// Sets every aggregation key present in `table`.
    public mutating func read(_ table: ConfigurationTable) throws {
        if let rule = try table.choice("aggregator", as: Rule.self) { self.rule = rule }
        if let v = try table.number("trim_beta") { trimBeta = v }
        if let v = try table.int("krum_f") { byzantine = v }
        if let v = try table.int("multi_krum_m") { multiKrumSelect = v }
        if let v = try table.number("norm_bound") { normBound = v }
        if let action = try table.choice("norm_bound_action", as: NormBoundAction.self) { clipToNormBound = action == .clip }
        if let v = try table.number("dp_clip") { dpClip = v }
        if let v = try table.number("dp_noise_multiplier") { dpNoiseMultiplier = v }
        if let v = try table.number("trust_threshold") { trustThreshold = v }
        if let v = try table.number("trust_decay") { trustDecay = v }
    }
}

extension ServerOptimizer.Settings {
    /// Sets every server-optimizer key present in `table`.
    public mutating func read(_ table: ConfigurationTable) throws {
        if let kind = try table.choice("server_optimizer", as: ServerOptimizer.Kind.self) { self.kind = kind }
        if let v = try table.number("server_lr") { learningRate = Float(v) }
        if let v = try table.number("server_momentum") { momentum = Float(v) }
        if let v = try table.number("server_beta2") { beta2 = Float(v) }
        if let v = try table.number("server_tau") { tau = Float(v) }
    }
}

extension ModelSpec {
    /// The model a configuration table describes: `model`, `layers`, `input`, `classes` (or
    /// `outputs`) and `loss`, or nil when it names none of them.
    public static func configured(_ table: ConfigurationTable) throws -> ModelSpec? {
        guard !SharedKeys.model.isDisjoint(with: table.keys) else { return nil }
        if table.contains("classes"), table.contains("outputs") {
            throw ConfigurationError(key: "outputs", "give classes or outputs, not both")
        }
        var loss: Loss?
        if let text = try table.string("loss") {
            guard let parsed = Loss(parsing: text) else {
                throw ConfigurationError(key: "loss", value: text, "must be softmax (classification), mse (regression) or bce (multi-label)")
            }
            loss = parsed
        }
        return try configured(
            model: try table.string("model") ?? "2nn", layers: try table.strings("layers") ?? [],
            input: try table.ints("input"), classes: try table.int("classes") ?? table.int("outputs"), loss: loss)
    }

    /// `layers` on `input` (`[N]` or `[H, W, C]`; MNIST's 28×28×1 when there is a convolution,
    /// else 784 values, when not given) with `classes` outputs (10 when not given) and `loss`
    /// (softmax cross-entropy when not given); otherwise the preset `model`, which is MNIST-shaped.
    public static func configured(model: String, layers: [String], input: [Int]? = nil, classes: Int? = nil, loss: Loss? = nil) throws -> ModelSpec {
        if !layers.isEmpty {
            let parsed: [LayerSpec]
            do { parsed = try layers.map(LayerSpec.init(parsing:)) } catch let error as ModelError {
                throw ConfigurationError("layers: \(error.description)")
            }
            let convolution = parsed.contains {
                switch $0 {
                case .conv, .depthwise: true
                default: false
                }
            }
            let shape: TensorShape
            switch input {
            case nil: shape = convolution ? TensorShape(height: 28, width: 28, channels: 1) : .vector(784)
            case let dims? where dims.count == 1 && dims[0] > 0 && dims[0] <= 1 << 24: shape = .vector(dims[0])
            case let dims? where dims.count == 3 && dims.allSatisfy({ $0 > 0 && $0 <= 1 << 16 }) && dims.reduce(1, *) <= 1 << 24:
                shape = TensorShape(height: dims[0], width: dims[1], channels: dims[2])
            case let dims?:
                throw ConfigurationError(key: "input", value: "\(dims)", "must be [N] values or [H, W, C], at most 16,777,216 values")
            }
            let loss = loss ?? .softmaxCrossEntropy
            let smallest = loss.usesClassLabels ? 2 : 1
            if let classes, !(smallest...Dataset.maximumClasses).contains(classes) {
                throw ConfigurationError(key: "classes", value: "\(classes)", "must be in \(smallest)...\(Dataset.maximumClasses) for loss \(loss)")
            }
            return ModelSpec(input: shape, classes: classes ?? 10, layers: parsed, loss: loss)
        }
        guard let spec = ModelSpec.preset(model) else {
            throw ConfigurationError(key: "model", value: model, "must be 2nn or cnn (or give layers)")
        }
        if input != nil || classes != nil || (loss != nil && loss != .softmaxCrossEntropy) {
            throw ConfigurationError(key: "model", value: model, "presets are MNIST-shaped (784 values or 28x28x1, 10 classes, softmax); give layers for another input, output size or loss")
        }
        return spec
    }
}

extension ConfigurationError {
    public init(key: String, value: String? = nil, _ problem: String) {
        self.init(file: nil, key: key, value: value, problem)
    }
}

extension CodecSpec {
    /// The codec spec `text` of `key`; a model download (`download`) may not use top-k or error
    /// feedback. Errors name the key and the value.
    public static func configured(_ text: String, key: String, file: String? = nil, download: Bool = false) throws -> CodecSpec {
        let spec: CodecSpec
        do { spec = try CodecSpec(parsing: text) } catch let error as CodecError {
            throw ConfigurationError((file.map { "\($0): " } ?? "") + "\(key): \(error.message)")
        }
        if download { try spec.checkDownload(key: key, file: file) }
        return spec
    }

    /// Top-k, low rank and error feedback make no sense for a model download.
    public func checkDownload(key: String = "downlink", file: String? = nil) throws {
        guard topK == nil, lowRank == nil, !errorFeedback else {
            throw ConfigurationError((file.map { "\($0): " } ?? "") + "\(key): \"\(self)\" may not use top-k, low rank or error feedback (fp32, fp16, q8, ...)")
        }
    }

    /// What a `lowrank:R` update codec does not combine with: a pruning mask (its shards travel
    /// sparse over the mask) and width classes (sub-model updates), named in one line.
    public func checkLowRank(pruning: Bool, widths: Bool, key: String = "codec") throws {
        guard lowRank != nil else { return }
        let other = (pruning ? ["pruning"] : []) + (widths ? ["widths"] : [])
        if !other.isEmpty { throw ConfigurationError("\(key): \"\(self)\" (low-rank factors) does not combine with " + other.joined(separator: " or ")) }
    }
}

extension ConfigurationTable {
    /// A codec spec (`q8`, `topk:0.01+q8+ef`).
    public func codec(_ key: String, download: Bool = false) throws -> CodecSpec? {
        try string(key).map { try CodecSpec.configured($0, key: key, file: source, download: download) }
    }
}

extension CodecSpec {
    /// Plain float32, uncompressed: what a configuration means when it names no codec.
    public static let fp32Raw = CodecSpec(codec: .fp32, zlibLevel: nil)
}
