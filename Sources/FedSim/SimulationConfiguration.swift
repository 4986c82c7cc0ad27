import FedCodec
@_exported import FedConfiguration
import FedCoordinator
import FedModel
import Foundation

/// Everything that defines a simulated federated run. Loaded from a TOML scenario file
/// (keys below, snake_case), then optionally overridden from the command line, then
/// validated as a whole.
public struct SimulationConfiguration: Sendable, Equatable {
    /// Scenario name, for reports.
    public var name = "simulation"
    /// Model preset (`2nn`, `cnn`) or, when `layers` is set, ignored.
    public var model = "2nn"
    /// Explicit layer list (`["dense:200", "relu", ...]`); overrides `model` when non-empty.
    public var layers: [String] = []
    /// With `layers`: the input shape (`[N]` or `[H, W, C]`), output size (class count; nil =
    /// MNIST's) and loss (nil = softmax cross-entropy).
    public var input: [Int]?
    public var classes: Int?
    public var loss: Loss?
    /// Directory with the four MNIST IDX files. Relative paths are resolved against the
    /// scenario file's directory.
    public var data = "data/mnist"
    /// Number of simulated clients K.
    public var clients = 100
    /// Fraction C of clients sampled each round (at least one client is always sampled).
    public var fraction = 0.1
    /// Number of rounds to run.
    public var rounds = 100
    /// Local epochs E per round.
    public var localEpochs = 1
    /// Local minibatch size B.
    public var batchSize = 10
    /// Client learning rate.
    public var learningRate = 0.1
    /// Client SGD momentum (0 = plain SGD).
    public var momentum = 0.0
    /// Client L2 weight decay.
    public var weightDecay = 0.0
    /// FedProx proximal coefficient mu (0 = FedAvg).
    public var proximalMu = 0.0
    /// How training data is split among clients.
    public var partition = PartitionKind.iid
    /// Shards per client for the `shards` partition (McMahan: 2).
    public var shardsPerClient = 2
    /// Concentration for the `dirichlet` partition.
    public var dirichletAlpha = 0.5
    /// Labels each client holds with `partition = "labels"`.
    public var labelsPerClient = 2
    /// With `train.csv` and `test.csv` data: the target's column and the user's (for the
    /// natural partition), by header name or position from 0 (−1 = last).
    public var labelColumn = "0"
    public var userColumn: String?
    /// Seed for initialisation, partitioning, sampling and shuffling.
    public var seed: UInt64 = 1
    /// Test accuracy whose first crossing is reported as "rounds to target" (0 = none).
    public var targetMetric = 0.0
    /// Stop as soon as the target accuracy is reached.
    public var stopAtTarget = false
    /// Evaluate the global model every this many rounds (the last round always).
    public var evaluateEvery = 1
    /// Worker threads training clients side by side (0 = one per core).
    public var threads = 0
    /// How clients encode their update (FedCodec spec, e.g. `q8`, `topk:0.01+q8+ef`).
    /// `fp32+raw` sends plain float32 deltas.
    public var codec = CodecSpec.fp32Raw
    /// How the server encodes the global model it sends (no top-k, no error feedback).
    public var downlink = CodecSpec.fp32Raw
    /// `memory`: clients are trained by worker threads; `tcp`: a real coordinator and one real
    /// client daemon per client, in this process, over 127.0.0.1.
    public var transport = Transport.memory
    /// Server optimizer applied to the aggregated delta: fedavg, fedavgm, fedadagrad, fedadam, fedyogi.
    public var serverOptimizer = "fedavg"
    /// Server learning rate η.
    public var serverLearningRate = 1.0
    /// β (FedAvgM) or β₁ (adaptive methods).
    public var serverMomentum = 0.9
    /// β₂ of FedAdam and FedYogi.
    public var serverBeta2 = 0.99
    /// τ of the adaptive methods.
    public var serverTau = 1e-3
    /// Device speeds, links, availability and dropout on a virtual clock (memory transport).
    public var devices = DeviceModel()
    /// How updates are combined (FedAvg or a robust rule), the norm bound and central DP.
    public var aggregation = AggregationSettings()
    private var aggregatorName: String?
    private var normBoundActionName: String?
    /// Trust rule: how many training examples the server holds as its trusted sample (drawn
    /// from the training set with the seed; the clients' partition is unchanged).
    public var trustedExamples = 1000
    /// Fraction of the clients that are malicious (chosen by the seed).
    public var attackers = 0.0
    /// What the malicious clients do: sign_flip, scale, noise or label_flip.
    public var attack = Attack.signFlip
    /// Factor of the `scale` attack.
    public var attackScale = 10.0
    /// Standard deviation per coordinate of the `noise` attack.
    public var attackNoise = 1.0
    /// The first round in which the attackers attack; before it they train honestly (a
    /// "sleeper" that earns trust first).
    public var attackFromRound = 1
    /// Federated magnitude pruning (nil = none): the `prune_` keys; an end of 0 means half
    /// the rounds.
    public var pruning: PruningSchedule?
    /// Students to distil from the final model (comma-separated layer lists, e.g.
    /// `dense:32,relu,dense:10`), trained on the server's held-out examples.
    public var distillStudents: [String] = []
    /// Training examples the server holds out of the clients' data (drawn with the seed) as
    /// its distillation transfer set; 0 = 5,000 when there are students, none otherwise.
    public var serverExamples = 0
    public var distillation = Distillation()
    /// Ensemble distillation each round (FedDF): FedAvg's model is trained further on the
    /// server's held-out examples against the mean outputs of the round's client models.
    public var ensemble = EnsembleDistillationSettings()
    /// The low-rank reference (0 = off): each client's update to every weight matrix is replaced
    /// by its rank-R approximation (``LowRank``) before it is encoded; what a low-rank update
    /// codec would be measured against. The update still travels in `codec`.
    public var svdRank = 0
    /// A model trained elsewhere that the run starts from (`base_model`: an exported model or a
    /// run database), copied in by tensor name; with low-rank adapters (`dense:N:loraR` layers)
    /// only the adapters train and travel.
    public var baseModel: String?
    /// Device classes by width (HeteroFL sub-models, ``SubModel``): a client of class k trains
    /// the model at width `widths[k]`, and `width_shares[k]` of the clients are in it (drawn with
    /// the seed). Width 0 is a class that does not take part (the devices too small for any
    /// model: the comparison with only the others training). Empty: every client trains the
    /// full model.
    public var widths: [Double] = []
    public var widthShares: [Double] = []
    /// FjORD's ordered dropout (Horvath et al. 2021): each batch of a client's local training
    /// runs at a width drawn uniformly from the classes' widths up to its own, so the model
    /// stays good at every width.
    public var orderedDropout = false
    /// The comparison with the coordinator's older answer to small devices: each width class
    /// stands for the memory budget at which that width just fits (16 bytes per parameter of its
    /// sub-model, ``ClientSelection/widthClass(memoryBudget:parameterCounts:)``), and its
    /// devices hold the whole model and train only the shards that budget picks
    /// (``ClientSelection/shardsToTrain(layout:memoryBudget:)``), the others frozen.
    public var frozenShards = false

    /// The held-out examples in effect.
    public var effectiveServerExamples: Int { serverExamples > 0 ? serverExamples : (distillStudents.isEmpty && !ensemble.enabled ? 0 : 5000) }

    public init() {}

    static let keys: Set<String> = SharedKeys.aggregation.union(SharedKeys.serverOptimizer).union(SharedKeys.model).union(SharedKeys.pruning).union(SharedKeys.transfer).union(SharedKeys.ensembleDistillation).union([
        "widths", "width_shares", "ordered_dropout", "frozen_shards",
        "svd_rank", "distill", "server_examples", "distill_temperature", "distill_epochs", "distill_lr", "distill_batch",
        "name", "data", "clients", "fraction", "rounds", "local_epochs",
        "batch_size", "learning_rate", "momentum", "weight_decay", "proximal_mu", "partition",
        "shards_per_client", "dirichlet_alpha", "labels_per_client", "label_column", "user_column", "seed", "target_accuracy", "target", "stop_at_target",
        "evaluate_every", "threads", "codec", "downlink", "transport",
        "compute_speed", "uplink_mbps", "downlink_mbps", "availability", "dropout", "over_selection", "round_deadline",
        "trusted_examples", "attackers", "attack", "attack_scale", "attack_noise", "attack_from_round",
    ])

    /// Reads a scenario file. Relative `data` paths are made absolute against its directory.
    public static func load(contentsOf url: URL) throws -> SimulationConfiguration {
        let table = try ConfigurationTable(contentsOf: url, knownKeys: keys)
        var configuration = try read(table)
        configuration.data = try table.path("data") ?? url.deletingLastPathComponent().appendingPathComponent(configuration.data).standardizedFileURL.path
        if let v = try table.path("base_model") { configuration.baseModel = v }
        return configuration
    }

    /// Parses TOML text; unknown keys and wrongly typed values are errors naming the key.
    public static func parse(_ text: String, source: String) throws -> SimulationConfiguration {
        try read(ConfigurationTable(parsing: text, source: source, knownKeys: keys))
    }

    private static func read(_ table: ConfigurationTable) throws -> SimulationConfiguration {
        var c = SimulationConfiguration()
        if let v = try table.string("name") { c.name = v }
        if let v = try table.string("model") { c.model = v }
        if let v = try table.strings("layers") { c.layers = v }
        if let v = try table.ints("input") { c.input = v }
        if let v = try table.int("classes") ?? table.int("outputs") { c.classes = v }
        if table.contains("classes"), table.contains("outputs") { throw ConfigurationError(file: table.source, key: "outputs", value: nil, "give classes or outputs, not both") }
        if let text = try table.string("loss") {
            guard let v = Loss(parsing: text) else {
                throw ConfigurationError(file: table.source, key: "loss", value: text, "must be softmax (classification), mse (regression) or bce (multi-label)")
            }
            c.loss = v
        }
        if let v = try table.string("data") { c.data = v }
        if let v = try table.int("clients") { c.clients = v }
        if let v = try table.number("fraction") { c.fraction = v }
        if let v = try table.int("rounds") { c.rounds = v }
        if let v = try table.int("local_epochs") { c.localEpochs = v }
        if let v = try table.int("batch_size") { c.batchSize = v }
        if let v = try table.number("learning_rate") { c.learningRate = v }
        if let v = try table.number("momentum") { c.momentum = v }
        if let v = try table.number("weight_decay") { c.weightDecay = v }
        if let v = try table.number("proximal_mu") { c.proximalMu = v }
        if let v = try table.choice("partition", as: PartitionKind.self) { c.partition = v }
        if let v = try table.int("shards_per_client") { c.shardsPerClient = v }
        if let v = try table.number("dirichlet_alpha") { c.dirichletAlpha = v }
        if let v = try table.int("labels_per_client") { c.labelsPerClient = v }
        if let v = try table.numberOrString("label_column") { c.labelColumn = v }
        if let v = try table.numberOrString("user_column") { c.userColumn = v }
        if let v = try table.count("seed") { c.seed = v }
        if table.contains("target"), table.contains("target_accuracy") { throw ConfigurationError(file: table.source, key: "target", value: nil, "give target or target_accuracy, not both") }
        if let v = try table.number("target") ?? table.number("target_accuracy") { c.targetMetric = v }
        if let v = try table.bool("stop_at_target") { c.stopAtTarget = v }
        if let v = try table.int("evaluate_every") { c.evaluateEvery = v }
        if let v = try table.int("threads") { c.threads = v }
        if let v = try table.codec("codec") { c.codec = v }
        if let v = try table.codec("downlink", download: true) { c.downlink = v }
        if let v = try table.choice("transport", as: Transport.self) { c.transport = v }
        var optimizer = ServerOptimizer.Settings()
        try optimizer.read(table)
        if table.contains("server_optimizer") { c.serverOptimizer = optimizer.kind.rawValue }
        if table.contains("server_lr") { c.serverLearningRate = Double(optimizer.learningRate) }
        if table.contains("server_momentum") { c.serverMomentum = Double(optimizer.momentum) }
        if table.contains("server_beta2") { c.serverBeta2 = Double(optimizer.beta2) }
        if table.contains("server_tau") { c.serverTau = Double(optimizer.tau) }
        func distribution(_ key: String) throws -> Distribution? {
            guard let text = try table.numberOrString(key) else { return nil }
            do { return try Distribution(parsing: text) } catch let error as ConfigurationError {
                throw ConfigurationError("\(table.source): \"\(key)\": \(error.description)")
            }
        }
        c.devices.computeSpeed = try distribution("compute_speed")
        c.devices.uplinkMbps = try distribution("uplink_mbps")
        c.devices.downlinkMbps = try distribution("downlink_mbps")
        if let v = try table.number("availability") { c.devices.availability = v }
        if let v = try table.number("dropout") { c.devices.dropout = v }
        if let v = try table.number("over_selection") { c.devices.overSelection = v }
        if let v = try table.number("round_deadline") { c.devices.roundDeadline = v }
        try c.aggregation.read(table)
        if let v = try table.int("trusted_examples") { c.trustedExamples = v }
        if let v = try table.number("attackers") { c.attackers = v }
        if let v = try table.choice("attack", as: Attack.self) { c.attack = v }
        if let v = try table.number("attack_scale") { c.attackScale = v }
        if let v = try table.number("attack_noise") { c.attackNoise = v }
        if let v = try table.int("attack_from_round") { c.attackFromRound = v }
        c.pruning = try PruningSchedule.configured(table)
        if let v = try table.int("svd_rank") { c.svdRank = v }
        if let v = try table.string("base_model") { c.baseModel = v }
        if let v = try table.numbers("widths") { c.widths = v }
        if let v = try table.numbers("width_shares") { c.widthShares = v }
        if let v = try table.bool("ordered_dropout") { c.orderedDropout = v }
        if let v = try table.bool("frozen_shards") { c.frozenShards = v }
        if let v = try table.strings("distill") { c.distillStudents = v }
        if let v = try table.int("server_examples") { c.serverExamples = v }
        if let v = try table.number("distill_temperature") { c.distillation.temperature = Float(v) }
        if let v = try table.int("distill_epochs") { c.distillation.epochs = v }
        if let v = try table.number("distill_lr") { c.distillation.learningRate = Float(v) }
        if let v = try table.int("distill_batch") { c.distillation.batchSize = v }
        try c.ensemble.read(table)
        return c
    }

    /// Checks every value; the error names the key and the bad value.
    public func validate() throws {
        func fail(_ message: String) -> ConfigurationError { ConfigurationError(message) }
        guard clients >= 1 else { throw fail("clients must be at least 1, got \(clients)") }
        guard fraction > 0, fraction <= 1, fraction.isFinite else { throw fail("fraction must be in (0, 1], got \(fraction)") }
        guard rounds >= 1 else { throw fail("rounds must be at least 1, got \(rounds)") }
        guard localEpochs >= 1 else { throw fail("local_epochs must be at least 1, got \(localEpochs)") }
        guard batchSize >= 1, batchSize <= 65_536 else { throw fail("batch_size must be in 1...65536, got \(batchSize)") }
        guard learningRate > 0, learningRate.isFinite else { throw fail("learning_rate must be positive, got \(learningRate)") }
        guard momentum >= 0, momentum < 1 else { throw fail("momentum must be in [0, 1), got \(momentum)") }
        guard weightDecay >= 0, weightDecay.isFinite else { throw fail("weight_decay must be non-negative, got \(weightDecay)") }
        guard proximalMu >= 0, proximalMu.isFinite else { throw fail("proximal_mu must be non-negative, got \(proximalMu)") }
        guard shardsPerClient >= 1 else { throw fail("shards_per_client must be at least 1, got \(shardsPerClient)") }
        guard dirichletAlpha > 0, dirichletAlpha.isFinite else { throw fail("dirichlet_alpha must be positive, got \(dirichletAlpha)") }
        guard labelsPerClient >= 1 else { throw fail("labels_per_client must be at least 1, got \(labelsPerClient)") }
        guard targetMetric >= 0, targetMetric.isFinite else { throw fail("target must be a finite number at least 0, got \(targetMetric)") }
        if (loss ?? .softmaxCrossEntropy).metric.higherIsBetter, targetMetric > 1 {
            throw fail("target is an accuracy for this task and must be in [0, 1], got \(targetMetric)")
        }
        guard evaluateEvery >= 1 else { throw fail("evaluate_every must be at least 1, got \(evaluateEvery)") }
        guard threads >= 0, threads <= 256 else { throw fail("threads must be in 0...256, got \(threads)") }
        _ = try partitionValue()
        _ = try modelSpec()
        try downlink.checkDownload()
        _ = try serverOptimizerSettings()
        try devices.validate()
        if let aggregatorName {
            throw ConfigurationError("aggregator must be one of \(AggregationSettings.Rule.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(aggregatorName)\"")
        }
        if let normBoundActionName { throw ConfigurationError("norm_bound_action must be clip or refuse, got \"\(normBoundActionName)\"") }
        do { try aggregation.validate() } catch let error as ModelError { throw ConfigurationError(error.description) }
        guard trustedExamples >= 2 else { throw ConfigurationError("trusted_examples must be at least 2, got \(trustedExamples)") }
        guard attackers >= 0, attackers < 1 else { throw ConfigurationError("attackers must be in [0, 1), got \(attackers)") }
        if let pruning { _ = try pruning.resolved(rounds: rounds) }
        guard (0...1024).contains(svdRank) else { throw fail("svd_rank must be in 0...1024 (0 = off), got \(svdRank)") }
        if let problem = try modelSpec().transferProblem(baseModel: baseModel, pruning: pruning != nil) { throw fail(problem) }
        try codec.checkLowRank(pruning: pruning != nil, widths: !widths.isEmpty)
        if codec.lowRank != nil, svdRank > 0 { throw fail("svd_rank and a lowrank codec do not combine: svd_rank is the per-client reference for the codec") }
        if !widths.isEmpty { try validateWidths() }
        if orderedDropout, widths.count < 2 { throw fail("ordered_dropout needs at least two width classes (widths)") }
        if frozenShards, widths.isEmpty { throw fail("frozen_shards needs width classes (widths) to stand for the memory budgets") }
        if frozenShards, orderedDropout { throw fail("frozen_shards and ordered_dropout do not combine: frozen-shard devices train the full model") }
        guard serverExamples >= 0 else { throw fail("server_examples must be at least 0, got \(serverExamples)") }
        if !distillStudents.isEmpty {
            do {
                try distillation.validate()
                _ = try StudentDistillation.specs(distillStudents, teacher: try modelSpec())
            } catch let error as ModelError {
                throw fail("distill: \(error.description)")
            }
        }
        try ensemble.check(loss: try modelSpec().loss, aggregation: aggregation)
        guard attackFromRound >= 1 else { throw ConfigurationError("attack_from_round must be at least 1, got \(attackFromRound)") }
        guard attackScale.isFinite, attackNoise >= 0, attackNoise.isFinite else { throw ConfigurationError("attack_scale and attack_noise must be finite (attack_noise non-negative)") }
        switch transport {
        case .memory: break
        case .tcp:
            guard !aggregation.needsTrustedDirections else {
                throw ConfigurationError("transport tcp: the trust aggregator is simulated by the memory transport only (the coordinator's trusted_data sets it for fedcoord)")
            }
            guard attackers == 0 else {
                throw ConfigurationError("transport tcp: malicious clients are simulated by the memory transport only (set the coordinator's aggregator with fedcoord)")
            }
            guard devices == DeviceModel() else {
                throw ConfigurationError("transport tcp runs on real time: device speeds, links, availability, dropout, over_selection and round_deadline are simulated by the memory transport only")
            }
            guard momentum == 0, weightDecay == 0, proximalMu == 0 else {
                throw ConfigurationError("transport tcp: the training task carries only the learning rate; momentum, weight_decay and proximal_mu must be 0")
            }
        }
    }

    /// The aggregation rule's name (`fedavg`, `median`, `trimmed_mean`, `krum`, `multi_krum`, `trust`);
    /// an unknown name is kept as written so that ``validate()`` can name it.
    public var aggregator: String {
        get { aggregatorName ?? aggregation.rule.rawValue }
        set {
            if let rule = AggregationSettings.Rule(configurationName: newValue) {
                aggregation.rule = rule
                aggregatorName = nil
            } else {
                aggregatorName = newValue
            }
        }
    }

    /// `clip` or `refuse` (an unknown value is kept for ``validate()`` to name).
    public var normBoundAction: String {
        get { normBoundActionName ?? (aggregation.clipToNormBound ? "clip" : "refuse") }
        set {
            switch NormBoundAction(configurationName: newValue) {
            case .clip?: aggregation.clipToNormBound = true; normBoundActionName = nil
            case .refuse?: aggregation.clipToNormBound = false; normBoundActionName = nil
            case nil: normBoundActionName = newValue
            }
        }
    }

    /// The server optimizer named by `server_optimizer` with its hyperparameters.
    public func serverOptimizerSettings() throws -> ServerOptimizer.Settings {
        let kind = try ServerOptimizer.Kind.parse(serverOptimizer, key: "server_optimizer")
        let settings = ServerOptimizer.Settings(
            kind: kind, learningRate: Float(serverLearningRate), momentum: Float(serverMomentum),
            beta2: Float(serverBeta2), tau: Float(serverTau))
        do { try settings.validate() } catch let error as ModelError { throw ConfigurationError(error.description) }
        return settings
    }

    /// The partition named by `partition`.
    public func partitionValue() throws -> Partition {
        switch partition {
        case .iid: .iid
        case .shards: .shards(perClient: shardsPerClient)
        case .dirichlet: .dirichlet(alpha: dirichletAlpha)
        case .labels: .labels(perClient: labelsPerClient)
        case .natural: .natural
        }
    }

    /// Which CSV columns are the target and the user.
    public var csvColumns: CSVColumns {
        CSVColumns(label: CSVLabelColumn(parsing: labelColumn), user: userColumn.map(CSVLabelColumn.init(parsing:)))
    }

    /// The model architecture: `layers` on `input` with `classes` (MNIST's when not given),
    /// else the preset.
    public func modelSpec() throws -> ModelSpec {
        try ModelSpec.configured(model: model, layers: layers, input: input, classes: classes, loss: loss)
    }

    /// Clients sampled per round: max(1, round(C·K)).
    public var clientsPerRound: Int { max(1, Int((fraction * Double(clients)).rounded())) }

    /// Worker threads actually used.
    public var effectiveThreads: Int { threads > 0 ? threads : availableCores }
}

/// How a simulation splits the training data among its clients.
public enum PartitionKind: String, ConfigurationChoice, Sendable {
    /// Shuffled equal shares.
    case iid
    /// McMahan's pathological non-IID split: sorted by label, cut into shards, `shards_per_client` each.
    case shards
    /// Label skew drawn from a Dirichlet distribution with concentration `dirichlet_alpha`.
    case dirichlet
    /// The data's own split: one client per user id (`train_ids.npy`); `clients` must be their number.
    case natural
    /// Each client holds `labels_per_client` labels (NIID-Bench's quantity-based label skew, "#C = k").
    case labels

    public static var aliases: [String: PartitionKind] { ["noniid": .shards, "non_iid": .shards, "pathological": .shards] }
}

/// How fedsim runs its clients.
public enum Transport: String, ConfigurationChoice, Sendable {
    /// Worker threads train the clients; updates stay in memory (a virtual clock with a device model).
    case memory
    /// The real coordinator and one real client daemon per client, over 127.0.0.1.
    case tcp
}

/// What a malicious simulated client does to its update.
public enum Attack: String, ConfigurationChoice, Sendable {
    /// Sends the negated delta.
    case signFlip = "sign_flip"
    /// Sends the delta times `attack_scale`.
    case scale
    /// Sends Gaussian noise (standard deviation `attack_noise`) instead of a delta.
    case noise
    /// Trains honestly on poisoned labels (label l becomes 9 − l).
    case labelFlip = "label_flip"
}

extension SimulationConfiguration {
    /// Checks the device classes by width and what they do not combine with.
    func validateWidths() throws {
        func fail(_ message: String) -> ConfigurationError { ConfigurationError(message) }
        guard widths.count == widthShares.count else {
            throw fail("widths and width_shares must have one entry per device class, got \(widths.count) and \(widthShares.count)")
        }
        guard widths.allSatisfy({ $0 >= 0 && $0 <= 1 }), widths.contains(where: { $0 > 0 }), Set(widths).count == widths.count else {
            throw fail("widths must be distinct fractions in (0, 1] (0: a class of devices that does not take part), got \(widths)")
        }
        guard widthShares.allSatisfy({ $0 >= 0 && $0.isFinite }), abs(widthShares.reduce(0, +) - 1) < 1e-6 else {
            throw fail("width_shares must be non-negative and sum to 1, got \(widthShares)")
        }
        let network = try Network(modelSpec())
        for width in widths where width > 0 {
            do { _ = try SubModel(of: network, fraction: width) } catch let error as ModelError { throw fail("widths: \(error.description)") }
        }
        var other: [String] = []
        if aggregation.holdsUpdates || aggregation.dpClip > 0 { other.append("robust aggregators, norm_bound and central DP (each weight is a mean over the clients that hold it)") }
        if pruning != nil { other.append("pruning") }
        if svdRank > 0 { other.append("svd_rank") }
        if attackers > 0 { other.append("attackers") }
        if transport == .tcp, orderedDropout { other.append("transport tcp with ordered_dropout (fedclient trains at its own width only)") }
        if !distillStudents.isEmpty { other.append("distill") }
        if ensemble.enabled { other.append("ensemble_distill") }
        if devices.overSelection > 1 || devices.roundDeadline > 0 { other.append("over_selection and round_deadline") }
        if baseModel != nil { other.append("base_model") }
        if !other.isEmpty { throw fail("width classes (widths) do not combine with " + other.joined(separator: ", ")) }
    }

    /// Each client's device class (an index into ``widths``): `width_shares` of the clients in
    /// each, drawn with the seed. Empty without width classes.
    public func widthClasses() -> [Int] {
        guard !widths.isEmpty else { return [] }
        var order = Array(0..<clients)
        var generator = SeededGenerator(seed: seed, stream: 0x1D7)
        order.withUnsafeMutableBufferPointer { generator.shuffle($0) }
        var classes = [Int](repeating: widths.count - 1, count: clients)
        var start = 0
        for (k, share) in widthShares.enumerated().dropLast() {
            let n = Int((share * Double(clients)).rounded())
            for client in order[start..<min(clients, start + n)] { classes[client] = k }
            start = min(clients, start + n)
        }
        return classes
    }
}

