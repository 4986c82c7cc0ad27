import FedModel
import Foundation

/// One round of a simulated run, as written to the JSON report.
public struct RoundRecord: Codable, Sendable, Equatable {
    public var round: Int
    /// The task's headline metric (``metric``: accuracy, or RMSE for regression) of the global
    /// model after this round (nil when not evaluated).
    public var testMetric: Double?
    public var testLoss: Double?
    /// Example-weighted mean local training loss of the participants.
    public var trainLoss: Double
    /// Clients that trained this round.
    public var clients: Int
    /// Bytes the clients sent (their updates).
    public var uplinkBytes: Int
    /// Bytes the server sent (the global model to each participant).
    public var downlinkBytes: Int
    /// Wall-clock seconds for the round, evaluation included.
    public var seconds: Double
    /// Clients selected (with over-selection, more than those whose updates count).
    public var selected = 0
    /// Selected clients that dropped out before delivering.
    public var dropped = 0
    /// Clients whose update arrived after the deadline or after the round had enough.
    public var late = 0
    /// The round's duration on the virtual clock (nil without a device model).
    public var simulatedSeconds: Double?
    /// Which metric ``testMetric`` is.
    public var metric = Metric.accuracy
    /// With pruning, the fraction of the prunable weights the model after this round has pruned.
    public var sparsity: Double?
    /// Mean wall-clock seconds a client spent on its device's work this round: local training
    /// and encoding its update, on one worker thread (the memory transport; nil over TCP).
    public var clientSeconds: Double?

    enum CodingKeys: String, CodingKey {
        case round, clients, seconds, selected, dropped, late, metric, sparsity
        case simulatedSeconds = "simulated_seconds"
        case clientSeconds = "client_seconds"
        case testMetric = "test_metric"
        case testAccuracy = "test_accuracy"
        case testLoss = "test_loss"
        case trainLoss = "train_loss"
        case uplinkBytes = "uplink_bytes"
        case downlinkBytes = "downlink_bytes"
    }

    public init(round: Int, testMetric: Double?, testLoss: Double?, trainLoss: Double, clients: Int, uplinkBytes: Int, downlinkBytes: Int, seconds: Double,
                selected: Int = 0, dropped: Int = 0, late: Int = 0, simulatedSeconds: Double? = nil, metric: Metric = .accuracy) {
        self.round = round
        self.testMetric = testMetric
        self.testLoss = testLoss
        self.trainLoss = trainLoss
        self.clients = clients
        self.uplinkBytes = uplinkBytes
        self.downlinkBytes = downlinkBytes
        self.seconds = seconds
        self.selected = selected
        self.dropped = dropped
        self.late = late
        self.simulatedSeconds = simulatedSeconds
        self.metric = metric
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        round = try c.decode(Int.self, forKey: .round)
        metric = try c.decodeIfPresent(Metric.self, forKey: .metric) ?? .accuracy
        testMetric = try c.decodeIfPresent(Double.self, forKey: .testMetric) ?? c.decodeIfPresent(Double.self, forKey: .testAccuracy)
        testLoss = try c.decodeIfPresent(Double.self, forKey: .testLoss)
        trainLoss = try c.decode(Double.self, forKey: .trainLoss)
        clients = try c.decode(Int.self, forKey: .clients)
        uplinkBytes = try c.decode(Int.self, forKey: .uplinkBytes)
        downlinkBytes = try c.decode(Int.self, forKey: .downlinkBytes)
        seconds = try c.decode(Double.self, forKey: .seconds)
        selected = try c.decodeIfPresent(Int.self, forKey: .selected) ?? 0
        dropped = try c.decodeIfPresent(Int.self, forKey: .dropped) ?? 0
        late = try c.decodeIfPresent(Int.self, forKey: .late) ?? 0
        simulatedSeconds = try c.decodeIfPresent(Double.self, forKey: .simulatedSeconds)
        sparsity = try c.decodeIfPresent(Double.self, forKey: .sparsity)
        clientSeconds = try c.decodeIfPresent(Double.self, forKey: .clientSeconds)
    }

    /// Every key is always present; a round that was not evaluated has `null` metric and loss.
    /// `test_accuracy` repeats `test_metric` when the metric is accuracy (null otherwise).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(round, forKey: .round)
        try c.encode(metric, forKey: .metric)
        try c.encode(testMetric, forKey: .testMetric)
        try c.encode(metric == .accuracy ? testMetric : nil, forKey: .testAccuracy)
        try c.encode(testLoss, forKey: .testLoss)
        try c.encode(trainLoss, forKey: .trainLoss)
        try c.encode(clients, forKey: .clients)
        try c.encode(uplinkBytes, forKey: .uplinkBytes)
        try c.encode(downlinkBytes, forKey: .downlinkBytes)
        try c.encode(seconds, forKey: .seconds)
        try c.encode(selected, forKey: .selected)
        try c.encode(dropped, forKey: .dropped)
        try c.encode(late, forKey: .late)
        try c.encode(simulatedSeconds, forKey: .simulatedSeconds)
        try c.encode(sparsity, forKey: .sparsity)
        try c.encode(clientSeconds, forKey: .clientSeconds)
    }
}

/// Totals of a run.
public struct SimulationSummary: Codable, Sendable, Equatable {
    public var roundsRun: Int
    /// The headline metric's final and best values (``metric``; accuracy for classification).
    public var finalAccuracy: Double?
    public var bestAccuracy: Double?
    public var targetMetric: Double?
    /// First round whose test metric reached the target, if any.
    public var roundsToTarget: Int?
    public var totalSeconds: Double
    public var meanSecondsPerRound: Double
    public var uplinkBytes: Int
    public var downlinkBytes: Int
    /// Total duration on the virtual clock (nil without a device model).
    public var simulatedSeconds: Double? = nil
    /// The task's headline metric.
    public var metric = Metric.accuracy
    /// Accuracy per class of the final model (classification; nil for a class without test examples).
    public var perClassAccuracy: [Double?] = []
    /// Root mean squared and mean absolute error of the final model (regression).
    public var rmse: Double?
    public var mae: Double?
    /// With width classes: the global model's test metric at each class's width (in the order
    /// of `widths`), and the updates each class delivered over the run.
    public var widths: [WidthResult] = []

    public struct WidthResult: Codable, Sendable, Equatable {
        public var width: Double
        public var parameters: Int
        public var metric: Double
        public var updates: Int
        /// With `frozen_shards`: the parameters a device of this class trains (it holds the whole
        /// model, `parameters`).
        public var trainedParameters: Int?

        enum CodingKeys: String, CodingKey {
            case width, parameters, metric, updates
            case trainedParameters = "trained_parameters"
        }
    }

    enum CodingKeys: String, CodingKey {
        case metric, rmse, mae, widths
        case perClassAccuracy = "per_class_accuracy"
        case simulatedSeconds = "simulated_seconds"
        case roundsRun = "rounds_run"
        case finalAccuracy = "final_metric"
        case bestAccuracy = "best_metric"
        case targetMetric = "target"
        case finalAccuracyKey = "final_accuracy"
        case bestAccuracyKey = "best_accuracy"
        case targetAccuracyKey = "target_accuracy"
        case roundsToTarget = "rounds_to_target"
        case totalSeconds = "total_seconds"
        case meanSecondsPerRound = "mean_seconds_per_round"
        case uplinkBytes = "uplink_bytes"
        case downlinkBytes = "downlink_bytes"
    }

    public init(roundsRun: Int, finalAccuracy: Double?, bestAccuracy: Double?, targetMetric: Double?, roundsToTarget: Int?,
                totalSeconds: Double, meanSecondsPerRound: Double, uplinkBytes: Int, downlinkBytes: Int, simulatedSeconds: Double? = nil,
                metric: Metric = .accuracy) {
        self.roundsRun = roundsRun
        self.finalAccuracy = finalAccuracy
        self.bestAccuracy = bestAccuracy
        self.targetMetric = targetMetric
        self.roundsToTarget = roundsToTarget
        self.totalSeconds = totalSeconds
        self.meanSecondsPerRound = meanSecondsPerRound
        self.uplinkBytes = uplinkBytes
        self.downlinkBytes = downlinkBytes
        self.simulatedSeconds = simulatedSeconds
        self.metric = metric
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        roundsRun = try c.decode(Int.self, forKey: .roundsRun)
        metric = try c.decodeIfPresent(Metric.self, forKey: .metric) ?? .accuracy
        finalAccuracy = try c.decodeIfPresent(Double.self, forKey: .finalAccuracy) ?? c.decodeIfPresent(Double.self, forKey: .finalAccuracyKey)
        bestAccuracy = try c.decodeIfPresent(Double.self, forKey: .bestAccuracy) ?? c.decodeIfPresent(Double.self, forKey: .bestAccuracyKey)
        targetMetric = try c.decodeIfPresent(Double.self, forKey: .targetMetric) ?? c.decodeIfPresent(Double.self, forKey: .targetAccuracyKey)
        roundsToTarget = try c.decodeIfPresent(Int.self, forKey: .roundsToTarget)
        totalSeconds = try c.decode(Double.self, forKey: .totalSeconds)
        meanSecondsPerRound = try c.decode(Double.self, forKey: .meanSecondsPerRound)
        uplinkBytes = try c.decode(Int.self, forKey: .uplinkBytes)
        downlinkBytes = try c.decode(Int.self, forKey: .downlinkBytes)
        simulatedSeconds = try c.decodeIfPresent(Double.self, forKey: .simulatedSeconds)
        perClassAccuracy = try c.decodeIfPresent([Double?].self, forKey: .perClassAccuracy) ?? []
        rmse = try c.decodeIfPresent(Double.self, forKey: .rmse)
        mae = try c.decodeIfPresent(Double.self, forKey: .mae)
        widths = try c.decodeIfPresent([WidthResult].self, forKey: .widths) ?? []
    }

    /// Every key is always present (`null` when there is no value, e.g. a target not reached).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(roundsRun, forKey: .roundsRun)
        try c.encode(metric, forKey: .metric)
        try c.encode(finalAccuracy, forKey: .finalAccuracy)
        try c.encode(bestAccuracy, forKey: .bestAccuracy)
        try c.encode(targetMetric, forKey: .targetMetric)
        // The accuracy names of earlier reports, for accuracy runs.
        let isAccuracy = metric == .accuracy
        try c.encode(isAccuracy ? finalAccuracy : nil, forKey: .finalAccuracyKey)
        try c.encode(isAccuracy ? bestAccuracy : nil, forKey: .bestAccuracyKey)
        try c.encode(isAccuracy ? targetMetric : nil, forKey: .targetAccuracyKey)
        if !perClassAccuracy.isEmpty { try c.encode(perClassAccuracy, forKey: .perClassAccuracy) }
        try c.encodeIfPresent(rmse, forKey: .rmse)
        try c.encodeIfPresent(mae, forKey: .mae)
        if !widths.isEmpty { try c.encode(widths, forKey: .widths) }
        try c.encode(roundsToTarget, forKey: .roundsToTarget)
        try c.encode(totalSeconds, forKey: .totalSeconds)
        try c.encode(meanSecondsPerRound, forKey: .meanSecondsPerRound)
        try c.encode(uplinkBytes, forKey: .uplinkBytes)
        try c.encode(downlinkBytes, forKey: .downlinkBytes)
        try c.encode(simulatedSeconds, forKey: .simulatedSeconds)
    }
}

/// The report `fedsim --report FILE.json` writes: the effective configuration, every round, totals.
public struct SimulationReport: Codable, Sendable {
    public var config: [String: ReportValue]
    public var rounds: [RoundRecord]
    public var summary: SimulationSummary

    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }
}

/// A scalar configuration value in a report.
public enum ReportValue: Codable, Sendable, Equatable {
    case string(String)
    case int(Int)
    case double(Double)
    case bool(Bool)
    case strings([String])

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let v): try container.encode(v)
        case .int(let v): try container.encode(v)
        case .double(let v): try container.encode(v)
        case .bool(let v): try container.encode(v)
        case .strings(let v): try container.encode(v)
        }
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let v = try? container.decode(Int.self) { self = .int(v) }
        else if let v = try? container.decode(Double.self) { self = .double(v) }
        else if let v = try? container.decode(Bool.self) { self = .bool(v) }
        else if let v = try? container.decode([String].self) { self = .strings(v) }
        else { self = .string(try container.decode(String.self)) }
    }
}

extension SimulationConfiguration {
    /// The configuration as report keys (the same names as the scenario file).
    public var reportValues: [String: ReportValue] {
        [
            "name": .string(name), "model": .string(model), "layers": .strings(layers), "data": .string(data),
            "clients": .int(clients), "fraction": .double(fraction), "rounds": .int(rounds),
            "local_epochs": .int(localEpochs), "batch_size": .int(batchSize),
            "learning_rate": .double(learningRate), "momentum": .double(momentum),
            "weight_decay": .double(weightDecay), "proximal_mu": .double(proximalMu),
            "partition": .string(partition.rawValue), "shards_per_client": .int(shardsPerClient),
            "dirichlet_alpha": .double(dirichletAlpha), "labels_per_client": .int(labelsPerClient), "seed": .int(Int(seed)),
            "target": .double(targetMetric), "stop_at_target": .bool(stopAtTarget),
            "input": .string(input.map { $0.map(String.init).joined(separator: "x") } ?? ""),
            "classes": .int(classes ?? 0), "loss": .string((loss ?? .softmaxCrossEntropy).rawValue),
            "evaluate_every": .int(evaluateEvery), "threads": .int(effectiveThreads),
            "clients_per_round": .int(clientsPerRound),
            "codec": .string(codec.description), "downlink": .string(downlink.description),
            "server_optimizer": .string(serverOptimizer), "server_lr": .double(serverLearningRate),
            "server_momentum": .double(serverMomentum), "server_beta2": .double(serverBeta2),
            "server_tau": .double(serverTau), "transport": .string(transport.rawValue),
            "compute_speed": .string(devices.computeSpeed?.description ?? ""),
            "uplink_mbps": .string(devices.uplinkMbps?.description ?? ""),
            "downlink_mbps": .string(devices.downlinkMbps?.description ?? ""),
            "availability": .double(devices.availability), "dropout": .double(devices.dropout),
            "over_selection": .double(devices.overSelection), "round_deadline": .double(devices.roundDeadline),
            "aggregator": .string(aggregator), "trim_beta": .double(aggregation.trimBeta), "krum_f": .int(aggregation.byzantine),
            "multi_krum_m": .int(aggregation.multiKrumSelect), "norm_bound": .double(aggregation.normBound),
            "norm_bound_action": .string(normBoundAction), "dp_clip": .double(aggregation.dpClip),
            "dp_noise_multiplier": .double(aggregation.dpNoiseMultiplier), "trusted_examples": .int(trustedExamples),
            "trust_threshold": .double(aggregation.trustThreshold), "trust_decay": .double(aggregation.trustDecay),
            "attackers": .double(attackers), "attack": .string(attack.rawValue), "attack_scale": .double(attackScale), "attack_noise": .double(attackNoise),
            "attack_from_round": .int(attackFromRound),
            "widths": .string(widths.map { "\($0)" }.joined(separator: ",")), "width_shares": .string(widthShares.map { "\($0)" }.joined(separator: ",")),
            "ordered_dropout": .bool(orderedDropout), "frozen_shards": .bool(frozenShards),
        ]
    }
}
