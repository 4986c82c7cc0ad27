import ArgumentParser
import FedSim
import FedModel
import Foundation

/// How `fedsim` shows progress.
enum ProgressStyle: String, ExpressibleByArgument, CaseIterable {
    case auto, bar, lines, none

    /// `auto` becomes a live bar on a terminal and one line per round otherwise.
    func resolved(terminal: Bool) -> ProgressStyle {
        self == .auto ? (terminal ? .bar : .lines) : self
    }
}

/// Prints each finished round: as a line on standard output, or as one live line on standard
/// error (round i/N, a bar, accuracy, seconds per round and the time left).
final class ProgressDisplay: @unchecked Sendable {
    private let style: ProgressStyle
    private let rounds: Int
    private let virtualClock: Bool
    private let lock = NSLock()
    private let started = Date()
    private var best: Double?
    private var drawn = false

    init(style: ProgressStyle, rounds: Int, virtualClock: Bool) {
        self.style = style
        self.rounds = rounds
        self.virtualClock = virtualClock
    }

    func show(_ record: RoundRecord) {
        lock.lock()
        defer { lock.unlock() }
        if let value = record.testMetric { best = best.map { record.metric.best($0, value) } ?? value }
        switch style {
        case .lines: printLine(record)
        case .bar: drawBar(record)
        case .none, .auto: break
        }
    }

    /// Ends the live line so that what follows starts on a new one.
    func finish() {
        lock.lock()
        defer { lock.unlock() }
        if drawn { FileHandle.standardError.write(Data("\n".utf8)) }
        drawn = false
    }

    private func printLine(_ record: RoundRecord) {
        let value = record.testMetric.map { String(format: "%.4f", $0) } ?? "-"
        let loss = record.testLoss.map { String(format: "%.4f", $0) } ?? "-"
        var line = String(
            format: "round %4d/%d  %@ %@  loss %@  train_loss %.4f  clients %d  %.2fs",
            record.round, rounds, record.metric.rawValue, value, loss, record.trainLoss, record.clients, record.seconds)
        if let sparsity = record.sparsity { line += String(format: "  sparsity %.3f", sparsity) }
        if record.selected > record.clients || record.dropped > 0 || record.late > 0 {
            line += "  selected \(record.selected) dropped \(record.dropped) late \(record.late)"
        }
        if virtualClock, let simulated = record.simulatedSeconds { line += String(format: "  simulated %.1fs", simulated) }
        print(line)
        fflush(nil)
    }

    private func drawBar(_ record: RoundRecord) {
        let width = 24
        let done = min(width, record.round * width / max(1, rounds))
        let elapsed = Date().timeIntervalSince(started)
        let perRound = elapsed / Double(record.round)
        let left = perRound * Double(max(0, rounds - record.round))
        var line = "round \(record.round)/\(rounds) [" + String(repeating: "#", count: done) + String(repeating: ".", count: width - done) + "]"
        if let value = record.testMetric { line += String(format: " %@ %.4f", record.metric == .accuracy ? "acc" : record.metric.rawValue, value) }
        if let best { line += String(format: " (best %.4f)", best) }
        line += String(format: " %.2fs/round ETA %@", perRound, Self.duration(left))
        FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8))
        drawn = true
    }

    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        if s >= 3600 { return String(format: "%dh%02dm", s / 3600, s % 3600 / 60) }
        if s >= 60 { return String(format: "%dm%02ds", s / 60, s % 60) }
        return "\(s)s"
    }
}
