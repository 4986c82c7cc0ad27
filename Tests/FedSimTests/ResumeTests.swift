import FedStore
import Foundation
import Testing

/// `fedsim --resume`: a run stopped after any round continues from its database, bit for bit.
@Suite(.serialized) struct ResumeTests {
    /// A fresh database path, and its removal.
    static func database() -> (path: String, remove: () -> Void) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("fedsim-resume-\(UUID().uuidString).sqlite").path
        return (path, { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } })
    }

    static func report(_ path: String) throws -> [[String: Any]] {
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        return object["rounds"] as! [[String: Any]]
    }

    /// The same run twice: once straight, once killed (SIGKILL) after its third committed round
    /// or later and resumed (pruning's schedule ends at round 8, half the rounds).
    @Test(arguments: [["--codec", "q8"], ["--prune", "0.5", "--codec", "q4"], ["--server-optimizer", "fedadam", "--server-lr", "0.01"]])
    func aKilledRunResumesAsIfItHadNotStopped(options: [String]) throws {
        let arguments = ["--rounds", "16", "--clients", "20", "--fraction", "0.2", "--seed", "7", "--quiet"] + options
        let (straight, removeStraight) = Self.database(), (killed, removeKilled) = Self.database()
        defer { removeStraight(); removeKilled() }
        let whole = try FedSimProcess.run(arguments + ["--db", straight])
        #expect(whole.status == 0, "\(whole.stderr)")

        let process = try Self.start(arguments + ["--db", killed], untilRound: 3)
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        let before = try #require(try RunStore(path: killed).lastCheckpoint()).round
        #expect(before >= 3 && before < 16, "killed after round \(before)")

        let resumed = try FedSimProcess.run(arguments + ["--db", killed, "--resume"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        let a = try RunStore(path: straight), b = try RunStore(path: killed)
        let (endA, endB) = (try #require(try a.lastCheckpoint()), try #require(try b.lastCheckpoint()))
        #expect(endA.round == 16 && endB.round == 16)
        #expect(endA.modelSHA256 == endB.modelSHA256, "the resumed run ended on another model")
        #expect(try a.rounds().map(\.testMetric) == b.rounds().map(\.testMetric))
        #expect(try a.rounds().map(\.uplinkBytes) == b.rounds().map(\.uplinkBytes))
        #expect(try b.events(kind: "restart").count == 1)
    }

    /// Starts fedsim with `arguments` (less --quiet) and returns once it has printed `round`
    /// rounds, still running. Rounds are counted from its progress lines (each printed after its round is
    /// committed), so a test never opens the database while fedsim creates it.
    static func start(_ arguments: [String], untilRound round: Int, stderr: Pipe? = nil) throws -> Process {
        let process = Process()
        process.executableURL = FedSimProcess.executable
        process.arguments = arguments.filter { $0 != "--quiet" } + ["--progress", "lines"]
        process.currentDirectoryURL = repositoryRoot
        let out = Pipe()
        process.standardOutput = out
        process.standardError = stderr ?? FileHandle.nullDevice
        try process.run()
        var committed = 0, pending = ""
        while committed < round, let chunk = try out.fileHandleForReading.read(upToCount: 256), !chunk.isEmpty {
            pending += String(decoding: chunk, as: UTF8.self)
            committed = pending.split(separator: "\n").filter { $0.hasPrefix("round ") }.count
        }
        #expect(process.isRunning, "the run ended before it could be stopped (\(committed) rounds)")
        return process
    }

    /// SIGTERM ends a run at once with status 143 and one line naming the last committed round,
    /// which is the database's, and how to continue; --resume then finishes the run.
    @Test func sigtermSaysWhereTheRunStopped() throws {
        let arguments = ["--rounds", "16", "--clients", "20", "--fraction", "0.2", "--seed", "5", "--quiet"]
        let (db, remove) = Self.database()
        defer { remove() }
        let err = Pipe()
        let process = try Self.start(arguments + ["--db", db], untilRound: 3, stderr: err)
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        let line = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationReason == .exit && process.terminationStatus == 143, "\(process.terminationReason) \(process.terminationStatus)")
        let round = try #require(try RunStore(path: db).lastCheckpoint()).round
        #expect(line == "fedsim: SIGTERM: stopped after round \(round) of 16, committed to \(db): the same command with --resume continues it\n")
        let resumed = try FedSimProcess.run(arguments + ["--db", db, "--resume"])
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(try RunStore(path: db).lastCheckpoint()?.round == 16)
    }

    /// A finished run goes on with more rounds, and its report lists them all.
    @Test func moreRoundsContinueAFinishedRun() throws {
        let common = ["--clients", "20", "--fraction", "0.2", "--seed", "3", "--quiet"]
        let (straight, removeStraight) = Self.database(), (grown, removeGrown) = Self.database()
        defer { removeStraight(); removeGrown() }
        let reports = FileManager.default.temporaryDirectory.appendingPathComponent("resume-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: reports, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: reports) }
        let whole = reports.appendingPathComponent("whole.json").path, continued = reports.appendingPathComponent("continued.json").path
        #expect(try FedSimProcess.run(common + ["--rounds", "5", "--db", straight, "--report", whole]).status == 0)
        #expect(try FedSimProcess.run(common + ["--rounds", "2", "--db", grown]).status == 0)
        let result = try FedSimProcess.run(common + ["--rounds", "5", "--db", grown, "--resume", "--report", continued])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try RunStore(path: straight).lastCheckpoint()?.modelSHA256 == RunStore(path: grown).lastCheckpoint()?.modelSHA256)
        let (a, b) = (try Self.report(whole), try Self.report(continued))
        #expect(b.map { $0["round"] as! Int } == [1, 2, 3, 4, 5])
        #expect(b.map { $0["test_accuracy"] as! Double } == a.map { $0["test_accuracy"] as! Double })
        #expect(b.map { $0["uplink_bytes"] as! Int } == a.map { $0["uplink_bytes"] as! Int })
    }

    @Test func whatCannotBeResumedSaysSo() throws {
        let (db, remove) = Self.database()
        defer { remove() }
        let common = ["--rounds", "2", "--clients", "20", "--fraction", "0.2", "--quiet"]
        func refused(_ arguments: [String], _ expected: String) throws {
            let result = try FedSimProcess.run(arguments)
            let lines = result.stderr.split(separator: "\n").filter { !$0.isEmpty }
            #expect(result.status == 1 && lines.count == 1 && result.stderr.contains(expected), "\(arguments): \(result.stderr)")
        }
        try refused(common + ["--resume"], "--resume continues the run in --db")
        try refused(common + ["--db", db, "--resume"], "holds no committed round")
        #expect(try FedSimProcess.run(common + ["--db", db]).status == 0)
        try refused(common + ["--db", db], "--resume continues it")
        try refused(common + ["--db", db, "--resume"], "give more --rounds")
        try refused(["--rounds", "3", "--clients", "20", "--fraction", "0.2", "--quiet", "--seed", "2", "--db", db, "--resume"], "other settings")
        try refused(["--rounds", "3", "--clients", "20", "--fraction", "0.2", "--quiet", "--codec", "q8+ef", "--db", db, "--resume"], "error feedback")
        // Pruning's end defaults to half the rounds: more rounds would change the schedule.
        let (pruned, removePruned) = Self.database()
        defer { removePruned() }
        #expect(try FedSimProcess.run(common + ["--prune", "0.5", "--db", pruned]).status == 0)
        try refused(["--rounds", "4", "--clients", "20", "--fraction", "0.2", "--quiet", "--prune", "0.5", "--db", pruned, "--resume"], "prune_end")
        // None of the refusals touched the run.
        #expect(try RunStore(path: db).lastCheckpoint()?.round == 2)
    }
}
