import Foundation

/// The last round a simulation finished (and, with a database, committed), readable from
/// another thread: a signal handler that holds the gate sees every round either wholly
/// committed or not begun committing, and no round commits while it holds it.
public final class CommitGate: @unchecked Sendable {
    private let lock = NSLock()
    private var round: Int

    init(round: Int) { self.round = round }

    /// Runs `commit` (which writes round `round`) and then counts the round, with the gate held.
    func record(round: Int, _ commit: () throws -> Void) rethrows {
        lock.lock()
        defer { lock.unlock() }
        try commit()
        self.round = round
    }

    /// Calls `body` with the last round finished, holding the gate while it runs.
    public func holding<T>(_ body: (_ lastRound: Int) -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body(round)
    }
}
