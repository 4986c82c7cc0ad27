@_exported import FedConfiguration
import FedProtocol
import FedModel
import Foundation

extension CoordinatorConfiguration {
    static let keys: Set<String> = SharedKeys.aggregation.union(SharedKeys.serverOptimizer).union(SharedKeys.model).union(SharedKeys.pruning).union(SharedKeys.transfer).union(SharedKeys.ensembleDistillation).union([
        "widths",
        "host", "port", "rounds", "target_accuracy", "target", "min_clients", "clients_per_round",
        "over_selection", "min_updates", "round_deadline", "max_tasks_in_flight", "local_epochs", "batch_size", "learning_rate",
        "codec", "downlink", "seed", "test_data", "heartbeat_ms", "handshake_timeout", "clients",
        "trusted_data", "trusted_examples", "update_bound", "loss_guard", "tls_certificate", "tls_key", "tls_client_ca",
        "max_connections", "idle_timeout", "read_timeout", "max_frame_bytes", "max_message_bytes", "database", "keep_checkpoints", "checkpoint_every", "metrics_port",
    ])

    /// Reads a coordinator configuration file (Configs/coordinator.toml documents every key).
    /// Returns the configuration and the test-data directory, if any (relative paths are
    /// resolved against the file's directory).
    public static func load(contentsOf url: URL) throws -> (CoordinatorConfiguration, testData: URL?) {
        let table = try ConfigurationTable(contentsOf: url, knownKeys: keys)
        let source = table.source
        var c = CoordinatorConfiguration()
        if let v = try table.string("host") { c.host = v }
        if let v = try table.int("port") { c.port = v }
        do {
            if let model = try ModelSpec.configured(table) { c.model = model }
        } catch let error as ConfigurationError { throw ConfigurationError("\(source): \(error)") }
        if let v = try table.int("rounds") { c.rounds = v }
        if table.contains("target"), table.contains("target_accuracy") { throw ConfigurationError(file: source, key: "target", value: nil, "give target or target_accuracy, not both") }
        if let v = try table.number("target") ?? table.number("target_accuracy") { c.targetMetric = v }
        if let v = try table.int("min_clients") { c.minimumClients = v }
        if let v = try table.int("clients_per_round") { c.clientsPerRound = v }
        if let v = try table.number("over_selection") { c.overSelection = v }
        if let v = try table.int("min_updates") { c.minimumUpdates = v }
        if let v = try table.number("round_deadline") { c.roundDeadline = v }
        if let v = try table.count("max_tasks_in_flight") {
            guard v <= 1_000_000 else { throw ConfigurationError(file: source, key: "max_tasks_in_flight", value: "\(v)", "must be in 0...1000000 (0 = no limit)") }
            c.maximumTasksInFlight = Int(v)
        }
        if let v = try table.int("local_epochs") { c.localEpochs = v }
        if let v = try table.int("batch_size") { c.batchSize = v }
        if let v = try table.number("learning_rate") { c.learningRate = Float(v) }
        if let v = try table.codec("codec") { c.uplinkCodec = v }
        if let v = try table.codec("downlink", download: true) { c.downlinkCodec = v }
        try c.serverOptimizer.read(table)
        if let v = try table.count("seed") { c.seed = v }
        if let v = try table.count("heartbeat_ms") {
            guard v <= 3_600_000 else { throw ConfigurationError(file: source, key: "heartbeat_ms", value: "\(v)", "must be in 50...3600000") }
            c.heartbeatMilliseconds = UInt32(v)
        }
        if let v = try table.number("handshake_timeout") { c.handshakeTimeout = v }
        try c.aggregation.read(table)
        try c.ensemble.read(table)
        c.pruning = try PruningSchedule.configured(table)
        if let v = try table.path("base_model") { c.baseModelPath = v }
        if let v = try table.numbers("widths") { c.widths = v }
        if let v = try table.number("update_bound") { c.updateBound = v }
        if let v = try table.number("loss_guard") { c.lossGuard = v }
        if let v = try table.int("trusted_examples") { c.trustedExamples = v }
        if let v = try table.int("max_connections") { c.maximumConnections = v }
        if let v = try table.number("idle_timeout") { c.idleTimeout = v }
        if let v = try table.number("read_timeout") { c.readTimeout = v }
        if let v = try table.int("max_frame_bytes") { c.maximumFramePayload = v }
        if let v = try table.int("max_message_bytes") { c.maximumMessage = v }
        if table.contains("clients") {
            guard let clients = try? table.stringTable("clients") else {
                throw ConfigurationError("\(source): [clients] must be a table of id = \"fedpk1:...\" (public keys)")
            }
            for (id, key) in clients {
                guard (try? Authentication.validate(publicKey: key)) != nil else {
                    throw ConfigurationError("\(source): client \"\(id)\" must map to its public key, \"fedpk1:\" and 64 hex digits (printed by `fedcoord clients add`)")
                }
                c.clientKeys[id] = key
            }
        }
        c.databasePath = try table.path("database")
        if let v = try table.int("metrics_port") { c.metricsPort = v }
        switch (try table.path("tls_certificate"), try table.path("tls_key")) {
        case (nil, nil):
            guard try table.path("tls_client_ca") == nil else { throw ConfigurationError("\(source): tls_client_ca needs tls_certificate and tls_key") }
        case (let certificate?, let key?):
            c.tls = ServerTLS(certificatePath: certificate, keyPath: key, clientCAPath: try table.path("tls_client_ca"))
        default:
            throw ConfigurationError("\(source): TLS needs both tls_certificate and tls_key")
        }
        c.trustedDataPath = try table.path("trusted_data")
        if let v = try table.int("keep_checkpoints") { c.retention.keepLast = max(1, v) }
        if let v = try table.int("checkpoint_every") { c.retention.keepEvery = max(1, v) }
        let testData = try table.path("test_data").map { URL(fileURLWithPath: $0) }
        do { try c.validate() } catch let error as ConfigurationError { throw ConfigurationError("\(source): \(error)") }
        return (c, testData)
    }

    /// Checks every value; the error names the key.
    public func validate() throws {
        func fail(_ m: String) -> ConfigurationError { ConfigurationError(m) }
        guard (0...65_535).contains(port) else { throw fail("port must be in 0...65535, got \(port)") }
        guard rounds >= 1 else { throw fail("rounds must be at least 1") }
        guard minimumClients >= 1 else { throw fail("min_clients must be at least 1") }
        guard clientsPerRound >= 1 else { throw fail("clients_per_round must be at least 1") }
        guard overSelection >= 1, overSelection <= 10 else { throw fail("over_selection must be in [1, 10], got \(overSelection)") }
        guard minimumUpdates >= 1, minimumUpdates <= clientsPerRound else { throw fail("min_updates must be in 1...clients_per_round") }
        // Every duration and size has a range: beyond it the conversions to the wire's
        // milliseconds and the timers' nanoseconds would overflow.
        guard roundDeadline > 0, roundDeadline <= 86_400 else { throw fail("round_deadline must be in (0, 86400] seconds, got \(roundDeadline)") }
        guard (1...65_535).contains(localEpochs) else { throw fail("local_epochs must be in 1...65535") }
        guard (1...1024).contains(batchSize) else { throw fail("batch_size must be in 1...1024") }
        guard learningRate > 0, learningRate.isFinite else { throw fail("learning_rate must be positive") }
        guard handshakeTimeout > 0, handshakeTimeout <= 3_600 else { throw fail("handshake_timeout must be in (0, 3600] seconds, got \(handshakeTimeout)") }
        guard (50...3_600_000).contains(heartbeatMilliseconds) else { throw fail("heartbeat_ms must be in 50...3600000, got \(heartbeatMilliseconds)") }
        guard targetMetric >= 0, targetMetric.isFinite else { throw fail("target must be a finite number at least 0, got \(targetMetric)") }
        if model.loss.metric.higherIsBetter, targetMetric > 1 {
            throw fail("target is an accuracy for this task and must be in [0, 1], got \(targetMetric)")
        }
        guard metricsPort.map({ (0...65_535).contains($0) }) ?? true else { throw fail("metrics_port must be in 0...65535, got \(metricsPort!)") }
        guard trustedExamples <= 1_000_000 else { throw fail("trusted_examples must be at most 1000000, got \(trustedExamples)") }
        guard maximumConnections >= 1 else { throw fail("max_connections must be at least 1") }
        guard idleTimeout >= 0, idleTimeout <= 86_400, readTimeout >= 0, readTimeout <= 86_400 else {
            throw fail("idle_timeout and read_timeout must be in [0, 86400] seconds (0 = no limit), got \(idleTimeout) and \(readTimeout)")
        }
        guard maximumConnections <= 1_000_000 else { throw fail("max_connections must be at most 1000000, got \(maximumConnections)") }
        guard rounds <= 100_000_000, clientsPerRound <= 1_000_000, minimumClients <= 1_000_000 else { throw fail("rounds, clients_per_round and min_clients are out of range") }
        guard idleTimeout == 0 || idleTimeout * 1000 > Double(heartbeatMilliseconds) * 2 else {
            throw fail("idle_timeout must exceed two heartbeat periods (heartbeat_ms = \(heartbeatMilliseconds))")
        }
        guard (1024...(16 << 20)).contains(maximumFramePayload) else { throw fail("max_frame_bytes must be in 1024...16777216") }
        guard maximumMessage >= maximumFramePayload, maximumMessage <= 1 << 30 else { throw fail("max_message_bytes must be at least max_frame_bytes and at most 1 GiB") }
        do {
            try downlinkCodec.checkDownload()
            try serverOptimizer.validate()
            try aggregation.validate()
            _ = try Network(model)
        } catch let error as ModelError {
            throw fail(error.description)
        } catch {
            throw fail("\(error)")
        }
        guard updateBound == 0 || (updateBound >= 1 && updateBound.isFinite) else { throw fail("update_bound must be 0 (off) or a finite number of at least 1, got \(updateBound)") }
        guard lossGuard == 0 || (lossGuard >= 1 && lossGuard.isFinite) else { throw fail("loss_guard must be 0 (off) or a finite number of at least 1, got \(lossGuard)") }
        guard trustedExamples >= 2 else { throw fail("trusted_examples must be at least 2, got \(trustedExamples)") }
        if let pruning {
            do { _ = try pruning.resolved(rounds: rounds) } catch let error as ConfigurationError { throw fail(error.description) }
        }
        if let problem = model.transferProblem(baseModel: baseModelPath, pruning: pruning != nil) { throw fail(problem) }
        do { try uplinkCodec.checkLowRank(pruning: pruning != nil, widths: !widths.isEmpty, key: "codec") } catch let error as ConfigurationError { throw fail(error.description) }
        if !widths.isEmpty {
            guard widths.allSatisfy({ $0 > 0 && $0 <= 1 }), Set(widths).count == widths.count else {
                throw fail("widths must be distinct fractions in (0, 1], got \(widths)")
            }
            let network = try Network(model)
            for width in widths {
                do { _ = try SubModel(of: network, fraction: width) } catch let error as ModelError { throw fail("widths: \(error.description)") }
            }
            guard !aggregation.holdsUpdates, aggregation.dpClip == 0, pruning == nil, !model.hasAdapters, !ensemble.enabled else {
                throw fail("widths (device classes) need plain FedAvg without norm_bound or central DP, and do not combine with pruning, adapters or ensemble_distill")
            }
        }
        guard !aggregation.needsTrustedDirections || trustedDataPath != nil else {
            throw fail("aggregator trust needs trusted_data: a data directory the server trusts (train_x.npy/train_y.npy, train.npz, CIFAR, LEAF or IDX files)")
        }
        try ensemble.check(loss: model.loss, aggregation: aggregation)
        guard !ensemble.enabled || trustedDataPath != nil else {
            throw fail("ensemble_distill needs trusted_data: examples the server holds itself (train_x.npy/train_y.npy, train.npz, CIFAR, LEAF or IDX files; labels are not used)")
        }
        guard !clientKeys.isEmpty || databasePath != nil else {
            throw fail("no clients registered: set database and run `fedcoord clients add ID`, or add a [clients] table of id = \"fedpk1:...\"")
        }
    }
}
