import Foundation

/// One round of a simulated run, as written to the JSON report.
public struct RoundRecord: Codable, Sendable, Equatable {
    public var round: Int
    /// Test accuracy of the global model after this round (nil when not evaluated).
    public var testAccuracy: Double?
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

    enum CodingKeys: String, CodingKey {
        case round, clients, seconds, selected, dropped, late
        case simulatedSeconds = "simulated_seconds"
        case testAccuracy = "test_accuracy"
        case testLoss = "test_loss"
        case trainLoss = "train_loss"
        case uplinkBytes = "uplink_bytes"
        case downlinkBytes = "downlink_bytes"
    }

    /// Every key is always present; a round that was not evaluated has `null` accuracy and loss.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(round, forKey: .round)
        try c.encode(testAccuracy, forKey: .testAccuracy)
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
    }
}

/// Totals of a run.
public struct SimulationSummary: Codable, Sendable, Equatable {
    public var roundsRun: Int
    public var finalAccuracy: Double?
    public var bestAccuracy: Double?
    public var targetAccuracy: Double?
    /// First round whose test accuracy reached the target, if any.
    public var roundsToTarget: Int?
    public var totalSeconds: Double
    public var meanSecondsPerRound: Double
    public var uplinkBytes: Int
    public var downlinkBytes: Int
    /// Total duration on the virtual clock (nil without a device model).
    public var simulatedSeconds: Double? = nil

    enum CodingKeys: String, CodingKey {
        case simulatedSeconds = "simulated_seconds"
        case roundsRun = "rounds_run"
        case finalAccuracy = "final_accuracy"
        case bestAccuracy = "best_accuracy"
        case targetAccuracy = "target_accuracy"
        case roundsToTarget = "rounds_to_target"
        case totalSeconds = "total_seconds"
        case meanSecondsPerRound = "mean_seconds_per_round"
        case uplinkBytes = "uplink_bytes"
        case downlinkBytes = "downlink_bytes"
    }

    /// Every key is always present (`null` when there is no value, e.g. a target not reached).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(roundsRun, forKey: .roundsRun)
        try c.encode(finalAccuracy, forKey: .finalAccuracy)
        try c.encode(bestAccuracy, forKey: .bestAccuracy)
        try c.encode(targetAccuracy, forKey: .targetAccuracy)
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
            "dirichlet_alpha": .double(dirichletAlpha), "seed": .int(Int(seed)),
            "target_accuracy": .double(targetAccuracy), "stop_at_target": .bool(stopAtTarget),
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
        ]
    }
}
