import FedProtocol
import FedModel
import Foundation
import TOMLKit

extension CoordinatorConfiguration {
    static let keys: Set<String> = [
        "host", "port", "model", "layers", "rounds", "target_accuracy", "min_clients", "clients_per_round",
        "over_selection", "min_updates", "round_deadline", "local_epochs", "batch_size", "learning_rate",
        "codec", "downlink", "server_optimizer", "server_lr", "server_momentum", "server_beta2", "server_tau",
        "seed", "test_data", "heartbeat_ms", "handshake_timeout", "clients",
        "aggregator", "trim_beta", "krum_f", "multi_krum_m", "norm_bound", "norm_bound_action", "dp_clip", "dp_noise_multiplier",
        "trusted_data", "trusted_examples", "trust_threshold", "trust_decay", "tls_certificate", "tls_key", "tls_client_ca",
        "max_connections", "idle_timeout", "read_timeout", "max_frame_bytes", "max_message_bytes", "database", "keep_checkpoints", "checkpoint_every", "metrics_port",
    ]

    /// Reads a coordinator configuration file (Configs/coordinator.toml documents every key).
    /// Returns the configuration and the test-data directory, if any (relative paths are
    /// resolved against the file's directory).
    public static func load(contentsOf url: URL) throws -> (CoordinatorConfiguration, testData: URL?) {
        let text: String
        do { text = try String(contentsOf: url, encoding: .utf8) } catch {
            throw ConfigurationFileError("\(url.path): \(FileManager.default.fileExists(atPath: url.path) ? "cannot read file" : "no such file")")
        }
        let table: TOMLTable
        do { table = try TOMLTable(string: text) } catch let error as TOMLParseError {
            throw ConfigurationFileError("\(url.path): invalid TOML at line \(error.source.begin.line): \(error.description)")
        }
        let source = url.path
        for key in table.keys where !keys.contains(key) {
            throw ConfigurationFileError("\(source): unknown key \"\(key)\"")
        }
        func value<T>(_ key: String, _ read: (TOMLValueConvertible) -> T?, _ type: String) throws -> T? {
            guard let v = table[key] else { return nil }
            guard let result = read(v) else { throw ConfigurationFileError("\(source): \"\(key)\" must be \(type)") }
            return result
        }
        let number: (TOMLValueConvertible) -> Double? = { $0.double ?? $0.int.map(Double.init) }
        var c = CoordinatorConfiguration()
        if let v = try value("host", { $0.string }, "a string") { c.host = v }
        if let v = try value("port", { $0.int }, "an integer") { c.port = v }
        if let v = try value("model", { $0.string }, "a string") {
            guard let spec = ModelSpec.preset(v) else { throw ConfigurationFileError("\(source): model must be 2nn or cnn, got \"\(v)\"") }
            c.model = spec
        }
        if let v = try value("layers", { $0.array?.compactMap { $0.string } }, "an array of strings") {
            do {
                let layers = try v.map(LayerSpec.init(parsing:))
                let conv = layers.contains { if case .conv = $0 { true } else { false } }
                c.model = ModelSpec(input: conv ? TensorShape(height: 28, width: 28, channels: 1) : .vector(784), classes: 10, layers: layers)
            } catch let error as ModelError { throw ConfigurationFileError("\(source): layers: \(error)") }
        }
        if let v = try value("rounds", { $0.int }, "an integer") { c.rounds = v }
        if let v = try value("target_accuracy", number, "a number") { c.targetAccuracy = v }
        if let v = try value("min_clients", { $0.int }, "an integer") { c.minimumClients = v }
        if let v = try value("clients_per_round", { $0.int }, "an integer") { c.clientsPerRound = v }
        if let v = try value("over_selection", number, "a number") { c.overSelection = v }
        if let v = try value("min_updates", { $0.int }, "an integer") { c.minimumUpdates = v }
        if let v = try value("round_deadline", number, "a number of seconds") { c.roundDeadline = v }
        if let v = try value("local_epochs", { $0.int }, "an integer") { c.localEpochs = v }
        if let v = try value("batch_size", { $0.int }, "an integer") { c.batchSize = v }
        if let v = try value("learning_rate", number, "a number") { c.learningRate = Float(v) }
        if let v = try value("codec", { $0.string }, "a string") { c.uplinkCodec = v }
        if let v = try value("downlink", { $0.string }, "a string") { c.downlinkCodec = v }
        if let v = try value("server_optimizer", { $0.string }, "a string") {
            guard let kind = ServerOptimizer.Kind(rawValue: v.lowercased()) else { throw ConfigurationFileError("\(source): unknown server_optimizer \"\(v)\"") }
            c.serverOptimizer.kind = kind
        }
        if let v = try value("server_lr", number, "a number") { c.serverOptimizer.learningRate = Float(v) }
        if let v = try value("server_momentum", number, "a number") { c.serverOptimizer.momentum = Float(v) }
        if let v = try value("server_beta2", number, "a number") { c.serverOptimizer.beta2 = Float(v) }
        if let v = try value("server_tau", number, "a number") { c.serverOptimizer.tau = Float(v) }
        if let v = try value("seed", { $0.int }, "an integer"), v >= 0 { c.seed = UInt64(v) }
        if let v = try value("heartbeat_ms", { $0.int }, "an integer") { c.heartbeatMilliseconds = UInt32(clamping: v) }
        if let v = try value("handshake_timeout", number, "a number of seconds") { c.handshakeTimeout = v }
        if let v = try value("aggregator", { $0.string }, "a string") {
            guard let rule = AggregationSettings.Rule(rawValue: v) else {
                throw ConfigurationFileError("\(source): aggregator must be one of \(AggregationSettings.Rule.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(v)\"")
            }
            c.aggregation.rule = rule
        }
        if let v = try value("trim_beta", number, "a number") { c.aggregation.trimBeta = v }
        if let v = try value("krum_f", { $0.int }, "an integer") { c.aggregation.byzantine = v }
        if let v = try value("multi_krum_m", { $0.int }, "an integer") { c.aggregation.multiKrumSelect = v }
        if let v = try value("norm_bound", number, "a number") { c.aggregation.normBound = v }
        if let v = try value("norm_bound_action", { $0.string }, "a string") {
            guard v == "clip" || v == "refuse" else { throw ConfigurationFileError("\(source): norm_bound_action must be clip or refuse, got \"\(v)\"") }
            c.aggregation.clipToNormBound = v == "clip"
        }
        if let v = try value("dp_clip", number, "a number") { c.aggregation.dpClip = v }
        if let v = try value("dp_noise_multiplier", number, "a number") { c.aggregation.dpNoiseMultiplier = v }
        if let v = try value("trusted_examples", { $0.int }, "an integer") { c.trustedExamples = v }
        if let v = try value("trust_threshold", number, "a number") { c.aggregation.trustThreshold = v }
        if let v = try value("trust_decay", number, "a number") { c.aggregation.trustDecay = v }
        if let v = try value("max_connections", { $0.int }, "an integer") { c.maximumConnections = v }
        if let v = try value("idle_timeout", number, "a number of seconds") { c.idleTimeout = v }
        if let v = try value("read_timeout", number, "a number of seconds") { c.readTimeout = v }
        if let v = try value("max_frame_bytes", { $0.int }, "an integer") { c.maximumFramePayload = v }
        if let v = try value("max_message_bytes", { $0.int }, "an integer") { c.maximumMessage = v }
        if let clients = table["clients"] {
            guard let t = clients.table else { throw ConfigurationFileError("\(source): [clients] must be a table of id = \"fedpk1:...\" (public keys)") }
            for id in t.keys {
                guard let key = t[id]?.string, (try? Authentication.validate(publicKey: key)) != nil else {
                    throw ConfigurationFileError("\(source): client \"\(id)\" must map to its public key, \"fedpk1:\" and 64 hex digits (printed by `fedcoord clients add`)")
                }
                c.clientKeys[id] = key
            }
        }
        if let v = try value("database", { $0.string }, "a string") {
            c.databasePath = v.hasPrefix("/") ? v : url.deletingLastPathComponent().appendingPathComponent(v).standardizedFileURL.path
        }
        if let v = try value("metrics_port", { $0.int }, "an integer") { c.metricsPort = v }
        func path(_ key: String) throws -> String? {
            try value(key, { $0.string }, "a path").map { $0.hasPrefix("/") ? $0 : url.deletingLastPathComponent().appendingPathComponent($0).standardizedFileURL.path }
        }
        switch (try path("tls_certificate"), try path("tls_key")) {
        case (nil, nil):
            guard try path("tls_client_ca") == nil else { throw ConfigurationFileError("\(source): tls_client_ca needs tls_certificate and tls_key") }
        case (let certificate?, let key?):
            c.tls = ServerTLS(certificatePath: certificate, keyPath: key, clientCAPath: try path("tls_client_ca"))
        default:
            throw ConfigurationFileError("\(source): TLS needs both tls_certificate and tls_key")
        }
        c.trustedDataPath = try path("trusted_data")
        if let v = try value("keep_checkpoints", { $0.int }, "an integer") { c.retention.keepLast = max(1, v) }
        if let v = try value("checkpoint_every", { $0.int }, "an integer") { c.retention.keepEvery = max(1, v) }
        var testData: URL?
        if let v = try value("test_data", { $0.string }, "a string") {
            testData = v.hasPrefix("/") ? URL(fileURLWithPath: v) : url.deletingLastPathComponent().appendingPathComponent(v).standardizedFileURL
        }
        try c.validate()
        return (c, testData)
    }

    /// Checks every value; the error names the key.
    public func validate() throws {
        func fail(_ m: String) -> ConfigurationFileError { ConfigurationFileError(m) }
        guard (0...65_535).contains(port) else { throw fail("port must be in 0...65535, got \(port)") }
        guard rounds >= 1 else { throw fail("rounds must be at least 1") }
        guard minimumClients >= 1 else { throw fail("min_clients must be at least 1") }
        guard clientsPerRound >= 1 else { throw fail("clients_per_round must be at least 1") }
        guard overSelection >= 1, overSelection <= 10 else { throw fail("over_selection must be in [1, 10], got \(overSelection)") }
        guard minimumUpdates >= 1, minimumUpdates <= clientsPerRound else { throw fail("min_updates must be in 1...clients_per_round") }
        guard roundDeadline > 0 else { throw fail("round_deadline must be positive") }
        guard (1...65_535).contains(localEpochs) else { throw fail("local_epochs must be in 1...65535") }
        guard (1...1024).contains(batchSize) else { throw fail("batch_size must be in 1...1024") }
        guard learningRate > 0, learningRate.isFinite else { throw fail("learning_rate must be positive") }
        guard handshakeTimeout > 0 else { throw fail("handshake_timeout must be positive") }
        guard maximumConnections >= 1 else { throw fail("max_connections must be at least 1") }
        guard idleTimeout >= 0, readTimeout >= 0 else { throw fail("idle_timeout and read_timeout must be non-negative (0 = no limit)") }
        guard idleTimeout == 0 || idleTimeout * 1000 > Double(heartbeatMilliseconds) * 2 else {
            throw fail("idle_timeout must exceed two heartbeat periods (heartbeat_ms = \(heartbeatMilliseconds))")
        }
        guard (1024...(16 << 20)).contains(maximumFramePayload) else { throw fail("max_frame_bytes must be in 1024...16777216") }
        guard maximumMessage >= maximumFramePayload, maximumMessage <= 1 << 30 else { throw fail("max_message_bytes must be at least max_frame_bytes and at most 1 GiB") }
        do {
            _ = try CodecSpecCheck.parse(uplinkCodec)
            _ = try CodecSpecCheck.parse(downlinkCodec)
            try serverOptimizer.validate()
            try aggregation.validate()
            _ = try Network(model)
        } catch let error as ModelError {
            throw fail(error.description)
        } catch {
            throw fail("\(error)")
        }
        guard trustedExamples >= 2 else { throw fail("trusted_examples must be at least 2, got \(trustedExamples)") }
        guard !aggregation.needsTrustedDirections || trustedDataPath != nil else {
            throw fail("aggregator trust needs trusted_data: a directory with MNIST-format training files the server trusts")
        }
        guard !clientKeys.isEmpty || databasePath != nil else {
            throw fail("no clients registered: set database and run `fedcoord clients add ID`, or add a [clients] table of id = \"fedpk1:...\"")
        }
    }
}

import FedCodec
enum CodecSpecCheck {
    static func parse(_ text: String) throws -> CodecSpec {
        do { return try CodecSpec(parsing: text) } catch let error as CodecError { throw ConfigurationFileError("codec: \(error.message)") }
    }
}

/// A configuration file that cannot be used; the message names the file or key.
public struct ConfigurationFileError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
