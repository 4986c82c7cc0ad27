import FedModel

/// What became of one selected client's part in a round.
public enum ParticipationState: String, Sendable, Equatable, CaseIterable {
    /// Its update was admitted into the round's aggregate.
    case accepted
    /// Its update was refused (stale, malformed, non-finite, unexpected); see the error code.
    case refused
    /// It was selected and left (or, simulated, dropped out) without delivering an update.
    case dropped
    /// Its update arrived after the deadline or after the round had all the updates it wanted.
    case late
}

/// Why the engine refused something, in the protocol's terms (the coordinator maps each code
/// to its wire error code, Protocol.md section 5).
public struct Refusal: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable, Equatable {
        case staleRound, lateUpdate, unexpectedMessage, badUpdate, authenticationFailed
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}

/// One client's part in a committed round, as recorded in the run store.
public struct RoundParticipation: Sendable, Equatable {
    public var client: String
    public var state: ParticipationState
    /// Encoded bytes of the update it sent (0 when none arrived).
    public var bytes: Int
    public var examples: Int
    public var localLoss: Double?
    /// Why it was refused or counted late.
    public var refusal: Refusal.Code?
    /// Seconds from its task to its update, on the engine's clock.
    public var durationSeconds: Double?
}

/// Something the aggregation rules did to one update: left out by the trust rule, clipped or
/// left out by the norm bound. The shells log, count and record these.
public struct AggregationNotice: Sendable, Equatable {
    public enum Kind: String, Sendable, Equatable {
        case untrusted, clipped, leftOut = "left out"
        /// Scaled down by the default update bound (``RoundEngine/Settings/updateBound``).
        case bounded
    }

    public var kind: Kind
    public var client: String
    public var message: String
}

/// A committed round: what the engine did, for logs, reports and the run store.
public struct RoundOutcome: Sendable, Equatable {
    public var round: Int
    public var selected: Int
    /// Updates admitted into the aggregate.
    public var completed: Int
    public var refused: Int
    public var dropped: Int
    public var late: Int
    /// Encoded bytes of every update that arrived for the round (admitted, late or refused).
    public var uplinkBytes: Int
    /// Bytes of the model shards sent to the round's clients (counted by the shell).
    public var downlinkBytes: Int
    /// Example-weighted mean of the admitted clients' training losses.
    public var trainingLoss: Double
    public var testMetric: Double?
    public var testLoss: Double?
    /// Wall-clock seconds (set by the shell that ran the round).
    public var seconds: Double
    /// Attempts abandoned below quorum before this one completed.
    public var abandonedAttempts: Int
    /// The model version after the round.
    public var modelVersion: UInt32
    /// When the round began and closed, on the engine's clock.
    public var startedAt: Double
    public var closedAt: Double
    public var participations: [RoundParticipation]
    public var notices: [AggregationNotice]
    /// Trust records of the clients aggregated this round (trust rule), to commit with it.
    public var trust: [String: TrustLedger.Record]
    /// With pruning, the fraction of the prunable weights the model after the round has pruned.
    public var sparsity: Double? = nil
    /// With width classes: per width (narrowest first), the new model's test metric at that
    /// width (the coordinator fills it in) and the updates its clients delivered this round.
    public var byWidth: [WidthRecord] = []
}

/// One width class in one round.
public struct WidthRecord: Sendable, Equatable {
    public var width: Double
    public var metric: Double?
    public var updates: Int

    public init(width: Double, metric: Double?, updates: Int) {
        self.width = width
        self.metric = metric
        self.updates = updates
    }
}

/// How a round closed.
public enum RoundClosing: Sendable, Equatable {
    /// Fewer updates than the quorum: nothing was applied; the round is drawn again.
    case abandoned(round: Int, updates: Int, quorum: Int)
    /// The commit guard refused the round's new model (non-finite, or its loss blew up): the
    /// previous model is kept and the round is drawn again, with updates now bounded.
    case rejected(round: Int, reason: String)
    case completed(RoundOutcome)
}
