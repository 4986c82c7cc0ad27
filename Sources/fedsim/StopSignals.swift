import FedSim
import Foundation

/// SIGTERM and SIGINT end fedsim at once, with one line on standard error saying how far the
/// run got and how to go on, and status 128 + the signal (143, 130). Nothing needs handing
/// over: with --db every finished round is already committed, and the gate keeps a round from
/// committing while the line is written.
final class StopSignals: @unchecked Sendable {
    /// What the line says once the run has started.
    struct Run {
        var gate: CommitGate
        var rounds: Int
        /// The line's tail after "stopped after round N of M", given N (0: none finished).
        var howToGoOn: @Sendable (Int) -> String
    }

    private let lock = NSLock()
    private var run: Run?
    private var display: ProgressDisplay?
    private var sources: [any DispatchSourceSignal] = []

    /// Installs the handlers; until `started` the line says the run had not begun.
    init() {
        for signal in [SIGTERM, SIGINT] {
            Foundation.signal(signal, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signal, queue: .global())
            source.setEventHandler { [unowned self] in self.stop(signal) }
            source.resume()
            sources.append(source)
        }
    }

    func started(_ run: Run, display: ProgressDisplay) {
        lock.withLock {
            self.run = run
            self.display = display
        }
    }

    private func stop(_ signal: Int32) {
        let name = signal == SIGINT ? "SIGINT" : "SIGTERM"
        let (run, display) = lock.withLock { (self.run, self.display) }
        guard let run else { Self.exit(signal, "fedsim: \(name): stopped before the first round") }
        run.gate.holding { round in
            display?.finish()
            let whereStopped = round == 0 ? "stopped in round 1 of \(run.rounds), before any round finished" : "stopped after round \(round) of \(run.rounds)"
            Self.exit(signal, "fedsim: \(name): \(whereStopped)\(run.howToGoOn(round))")
        }
    }

    private static func exit(_ signal: Int32, _ line: String) -> Never {
        fflush(nil)
        FileHandle.standardError.write(Data((line + "\n").utf8))
        _exit(128 + signal)
    }
}
