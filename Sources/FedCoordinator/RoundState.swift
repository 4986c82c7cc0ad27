import FedProtocol

/// The bookkeeping of the round in progress, separate from sockets so its rules can be
/// tested directly: who was selected, who has reported, and whether an update is admitted.
public struct RoundState: Sendable {
    public enum Decision: Equatable, Sendable {
        case accept
        case refuse(ProtocolError.Code, String)
    }

    public let round: Int
    public let modelVersion: UInt32
    public let selected: Set<String>
    public let wanted: Int
    public private(set) var reported: Set<String> = []
    public private(set) var closed = false

    public init(round: Int, modelVersion: UInt32, selected: Set<String>, wanted: Int) {
        self.round = round
        self.modelVersion = modelVersion
        self.selected = selected
        self.wanted = wanted
    }

    /// Whether an update for (`round`, `version`) from `client` counts. Admitted updates are
    /// recorded; at most one per client per round, at most `wanted` per round.
    public mutating func admit(client: String, round: UInt32, version: UInt32) -> Decision {
        guard Int(round) == self.round, version == modelVersion else {
            return .refuse(.staleRound, "update for round \(round) (model version \(version)); the current round is \(self.round) (version \(modelVersion))")
        }
        guard selected.contains(client) else {
            return .refuse(.unexpectedMessage, "client \(client) was not selected for round \(self.round)")
        }
        guard !reported.contains(client) else {
            return .refuse(.unexpectedMessage, "client \(client) already sent its update for round \(self.round)")
        }
        guard !closed, reported.count < wanted else {
            return .refuse(.lateUpdate, "round \(self.round) already has its \(wanted) updates or passed its deadline")
        }
        reported.insert(client)
        return .accept
    }

    /// True once enough updates arrived.
    public var isComplete: Bool { reported.count >= wanted }

    /// Marks the deadline: later updates are refused as late.
    public mutating func close() { closed = true }
}
