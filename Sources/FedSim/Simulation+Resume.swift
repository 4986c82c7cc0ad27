import Crypto
import FedModel
import FedStore
import Foundation

extension Simulation {
    /// A run recorded by `fedsim --db`, to continue (`fedsim --resume`): the last committed
    /// round's model and server state, the rounds so far, and the configuration it ran with.
    ///
    /// fedsim commits a checkpoint every round, and client selection, local training and
    /// evaluation are pure functions of the seed and the round, so a resumed run computes the
    /// same rounds, bit for bit, as one that never stopped. That holds while nothing else
    /// carries over from one round to the next: error feedback (`+ef`) keeps each client's
    /// residual in memory only, and width classes count each class's updates, so those runs
    /// cannot be resumed.
    public struct Resume: Sendable {
        public var round: Int
        public var modelVersion: UInt32
        public var model: [Float]
        public var optimizerM: [Float]
        public var optimizerV: [Float]
        public var trust: [String: TrustLedger.Record]
        /// The model before the last round (low-rank codecs follow their warm starts from it).
        public var previousModel: [Float]?
        /// The rounds committed so far, as the report lists them (without the client seconds
        /// and sparsity the database does not keep).
        public var records: [RoundRecord]
        /// ``Simulation/fingerprint(of:)`` of the configuration the run started with.
        public var fingerprint: String?

        /// The event kind under which fedsim records its configuration's fingerprint.
        public static let configurationEvent = "fedsim-configuration"

        /// Reads the run in `store`; nil when it holds no committed round.
        public static func load(from store: RunStore) throws -> Resume? {
            guard let checkpoint = try store.lastCheckpoint() else { return nil }
            let rows = try store.rounds()
            let records = rows.map { row in
                RoundRecord(round: row.round, testMetric: row.testMetric, testLoss: row.testLoss, trainLoss: row.trainingLoss,
                            clients: row.completed, uplinkBytes: row.uplinkBytes, downlinkBytes: row.downlinkBytes,
                            seconds: row.endedAt.timeIntervalSince(row.startedAt), selected: row.selected,
                            metric: Metric(rawValue: row.metric) ?? .accuracy)
            }
            return Resume(
                round: checkpoint.round, modelVersion: checkpoint.modelVersion, model: checkpoint.model,
                optimizerM: checkpoint.optimizerM, optimizerV: checkpoint.optimizerV,
                trust: try store.trustRecords().mapValues { TrustLedger.Record(trust: $0.trust, updates: $0.updates) },
                previousModel: checkpoint.round > 1 ? try store.checkpoint(round: checkpoint.round - 1)?.model : nil,
                records: records.filter { $0.round <= checkpoint.round },
                fingerprint: try store.events(kind: configurationEvent).last?.message)
        }

        /// Throws unless `configuration` can continue this run: the same settings (the number
        /// of rounds may grow), nothing a round hands the next outside the checkpoint.
        func check(_ configuration: SimulationConfiguration) throws {
            guard configuration.transport == .memory else { throw ConfigurationError("--resume continues a run of the memory transport") }
            if configuration.codec.errorFeedback {
                throw ConfigurationError("a run with error feedback (\(configuration.codec)) keeps each client's residual in memory only: it cannot be resumed")
            }
            guard configuration.widths.isEmpty else { throw ConfigurationError("a run with width classes cannot be resumed (each class's updates are counted in memory)") }
            guard let fingerprint else { throw ConfigurationError("the database does not say which configuration its run had (it was not written by this fedsim)") }
            guard fingerprint == Simulation.fingerprint(of: configuration) else {
                throw ConfigurationError("the run in the database was started with other settings: give the same scenario and options (only --rounds may change\(configuration.pruning.map { $0.endRound == 0 ? ", and with pruning only if prune_end is set" : "" } ?? ""))")
            }
            guard round < configuration.rounds else {
                throw ConfigurationError("the run already has \(round) rounds of the \(configuration.rounds) asked for: give more --rounds to continue it")
            }
        }
    }

    /// SHA-256 of every setting that shapes the run's rounds: all but the number of rounds and
    /// the worker threads, which change neither. (A pruning schedule whose end is left to half
    /// the rounds counts with its end as resolved, so more rounds change it.)
    public static func fingerprint(of configuration: SimulationConfiguration) -> String {
        var c = configuration
        c.pruning = try? c.pruning?.resolved(rounds: c.rounds)
        c.rounds = 0
        c.threads = 0
        return SHA256.hash(data: Data(String(reflecting: c).utf8)).map { String(format: "%02x", $0) }.joined()
    }
}
