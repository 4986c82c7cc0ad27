import FedStore
import Foundation
import Testing

/// Faults done to real processes with real signals (the long version is
/// `Benchmarks/chaos-kill.sh`): the coordinator killed with SIGKILL at seeded moments and right
/// after commits, clients frozen with SIGSTOP and killed mid-run, a database on a filesystem
/// that fills up.
extension DaemonProcessTests {
    /// Seeded uniform draws in [0, 1), so a failing run replays from its printed seed.
    struct Draws {
        var state: UInt64
        mutating func next() -> Double {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Double(state >> 11) * 0x1p-53
        }
    }

    func directory(_ prefix: String) throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    func count(_ text: String, in log: URL) -> Int {
        ((try? String(contentsOf: log, encoding: .utf8)) ?? "").components(separatedBy: text).count - 1
    }

    /// Round durations from a coordinator log ("round    N ... 1.23s").
    func roundSeconds(_ log: URL) -> [Int: Double] {
        let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        var result: [Int: Double] = [:]
        for line in text.split(separator: "\n") where line.hasPrefix("round ") {
            let fields = line.split(separator: " ")
            if let round = Int(fields[1]), let last = fields.last, last.hasSuffix("s"), let seconds = Double(last.dropLast()) {
                result[round] = seconds
            }
        }
        return result
    }

    /// Three SIGKILLs of fedcoord with two fedclient processes training throughout: at a seeded
    /// moment, right after a commit is printed, and at another seeded moment; each restart
    /// resumes on the same database and port. No committed round may be lost or duplicated.
    @Test func theCoordinatorKilledAtSeededMomentsAndAtCommitsLosesNoRound() async throws {
        let seed = UInt64(ProcessInfo.processInfo.environment["FEDL_CHAOS_SEED"] ?? "") ?? 20_261_129
        print("chaos seed \(seed) (replay with FEDL_CHAOS_SEED=\(seed))")
        var draws = Draws(state: seed)
        let directory = try directory("fedchaos")
        defer { try? FileManager.default.removeItem(at: directory) }
        let (config, database) = try signalSetUp(directory, "round_deadline = 10")
        var log = directory.appendingPathComponent("coordinator-0.log")
        var coordinator = try start("fedcoord", ["serve", "--config", config.path, "--db", database.path], output: log)
        let port = try await port(of: log)
        let clients = try startClients(directory, port: port)
        defer { for process in clients + [coordinator] where process.isRunning { process.terminate() } }
        /// Waits until the coordinator writing `log` has committed more than `after` rounds.
        func waitForCommit(after: Int, _ what: String) async throws -> Int {
            var commits = after
            for _ in 0..<2400 where commits <= after {
                try await Task.sleep(nanoseconds: 25_000_000)
                commits = count("\nround ", in: log)
            }
            let tail = ((try? String(contentsOf: log, encoding: .utf8)) ?? "").suffix(1500)
            try #require(commits > after, "no round committed within 60 s \(what):\n\(tail)")
            return commits
        }
        var committed: [Int] = []
        for (trial, moment) in ["seeded", "after a commit", "seeded"].enumerated() {
            // Each coordinator first commits a round (its clients are back), so every kill finds
            // a run in progress; a machine under load may take a while to get there.
            let started = Date()
            let commits = try await waitForCommit(after: 0, "before kill \(trial + 1)")
            if trial > 0 { print(String(format: "restart %d: next round committed after %.2f s", trial, Date().timeIntervalSince(started))) }
            if moment == "after a commit" {
                _ = try await waitForCommit(after: commits, "before kill \(trial + 1)")
            } else {
                try await Task.sleep(nanoseconds: UInt64(draws.next() * 1.5e9))
            }
            kill(coordinator.processIdentifier, SIGKILL)
            coordinator.waitUntilExit()
            committed = try RunStore(path: database.path).rounds().map(\.round)
            print("kill \(trial + 1) (\(moment)): rounds \(committed.first ?? 0)...\(committed.last ?? 0) committed")
            #expect(committed == Array(stride(from: 1, through: committed.count, by: 1)), "after kill \(trial + 1) (seed \(seed)): \(committed)")
            log = directory.appendingPathComponent("coordinator-\(trial + 1).log")
            coordinator = try start("fedcoord", ["serve", "--config", config.path, "--db", database.path, "--port", "\(port)"], output: log)
        }
        _ = try await waitForCommit(after: 0, "after the last restart")
        coordinator.terminate()
        try await waitForExit(coordinator, seconds: 60)
        #expect(!coordinator.isRunning && coordinator.terminationStatus == 0, "the last coordinator stops cleanly")
        let final = try RunStore(path: database.path).rounds().map(\.round)
        #expect(final.count > committed.count, "the run went on after the last kill")
        #expect(final == Array(1...final.count), "no committed round lost or duplicated (seed \(seed)): \(final)")
        for client in clients {
            client.terminate()
            try await waitForExit(client, seconds: 10)
            #expect(!client.isRunning && client.terminationStatus == 0, "a client stops cleanly")
        }
    }

    /// Three clients, two needed per round. One is frozen (SIGSTOP) after round 1: the one
    /// round it is selected in waits for its deadline, and later rounds do not wait for it.
    /// Then it is thawed and another is killed (SIGKILL): the run still completes, and the
    /// thawed client ends with it.
    @Test func clientsFrozenAndKilledMidRunCostAtMostADeadline() async throws {
        let directory = try directory("fedfreeze")
        defer { if ProcessInfo.processInfo.environment["FEDL_KEEP"] == nil { try? FileManager.default.removeItem(at: directory) } }
        let deadline = 3.0
        let database = directory.appendingPathComponent("run.sqlite")
        let config = directory.appendingPathComponent("coordinator.toml")
        try """
            port = 0
            rounds = 8
            min_clients = 2
            clients_per_round = 3
            min_updates = 2
            over_selection = 1.0
            round_deadline = \(deadline)
            heartbeat_ms = 200
            database = "\(database.path)"
            [clients]
            a = "\(testPublicKey("sa"))"
            b = "\(testPublicKey("sb"))"
            c = "\(testPublicKey("sc"))"

            """.write(to: config, atomically: true, encoding: .utf8)
        let log = directory.appendingPathComponent("coordinator.log")
        let coordinator = try start("fedcoord", ["serve", "--config", config.path, "--db", database.path], output: log)
        let port = try await port(of: log)
        let clients = try ["a", "b", "c"].enumerated().map { i, id in
            try start("fedclient", ["--coordinator", "127.0.0.1:\(port)", "--id", id, "--secret", testSecret("s\(id)"),
                                    "--data", "Simulations/data/mnist", "--examples", "\(i * 300)..<\(i * 300 + 300)"],
                      output: directory.appendingPathComponent("\(id).log"))
        }
        let (a, b, c) = (clients[0], clients[1], clients[2])
        defer {
            kill(c.processIdentifier, SIGCONT)
            for process in clients + [coordinator] where process.isRunning { process.terminate() }
        }
        _ = try #require(try await waitForLine(log, "round    1"))
        kill(c.processIdentifier, SIGSTOP)
        _ = try #require(try await waitForLine(log, "round    4", seconds: 30), "rounds went on without the frozen client")
        kill(c.processIdentifier, SIGCONT)
        kill(b.processIdentifier, SIGKILL)
        try await waitForExit(coordinator, seconds: 60)
        #expect(!coordinator.isRunning && coordinator.terminationStatus == 0)
        #expect(try RunStore(path: database.path).rounds().map(\.round) == Array(1...8))
        let seconds = roundSeconds(log)
        print("frozen and killed clients: seconds per round \(seconds.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" })")
        let waited = (2...4).filter { (seconds[$0] ?? 0) >= deadline * 0.9 }
        #expect(waited.count <= 1, "only the round the frozen client was selected in waits for the deadline: \(seconds)")
        for round in 2...4 where !waited.contains(round) {
            #expect((seconds[round] ?? 99) < deadline * 0.9, "round \(round) did not wait for the frozen client: \(seconds)")
        }
        for client in [a, c] {
            try await waitForExit(client, seconds: 10)
            #expect(!client.isRunning && client.terminationStatus == 0, "the thawed and the healthy client end with the run")
        }
    }

    /// The database on a 3 MiB filesystem (tmpfs, where this machine lets the test mount one):
    /// when it fills, fedcoord stops with a one-line error and the committed rounds are intact;
    /// it resumes from them once there is room.
    @Test func aFullDiskStopsTheRunWithOneLineAndLosesNothing() async throws {
        let directory = try directory("fedfull")
        defer { try? FileManager.default.removeItem(at: directory) }
        let mountPoint = directory.appendingPathComponent("small")
        try FileManager.default.createDirectory(at: mountPoint, withIntermediateDirectories: true)
        let mount = Process()
        mount.executableURL = URL(fileURLWithPath: "/bin/mount")
        mount.arguments = ["-t", "tmpfs", "-o", "size=3m", "tmpfs", mountPoint.path]
        mount.standardError = FileHandle.nullDevice
        try? mount.run()
        mount.waitUntilExit()
        guard mount.terminationStatus == 0 else {
            print("skipped: this machine does not let the test mount a small tmpfs (needs root or CAP_SYS_ADMIN)")
            return
        }
        defer {
            let umount = Process()
            umount.executableURL = URL(fileURLWithPath: "/bin/umount")
            umount.arguments = ["-l", mountPoint.path]
            try? umount.run()
            umount.waitUntilExit()
        }
        let database = mountPoint.appendingPathComponent("run.sqlite")
        let (config, _) = try signalSetUp(directory, "")
        let log = directory.appendingPathComponent("coordinator.log")
        let coordinator = try start("fedcoord", ["serve", "--config", config.path, "--db", database.path], output: log)
        let port = try await port(of: log)
        let clients = try startClients(directory, port: port)
        defer { for process in clients + [coordinator] where process.isRunning { process.terminate() } }
        try await waitForExit(coordinator, seconds: 60)
        #expect(!coordinator.isRunning, "fedcoord stops when the disk is full")
        let text = try String(contentsOf: log, encoding: .utf8)
        let errors = text.split(separator: "\n").filter { $0.hasPrefix("fedcoord: error") }
        print("full disk: \(errors.first ?? "no error line")")
        #expect(coordinator.terminationStatus != 0 && errors.count == 1, "one error line:\n\(text.suffix(2000))")
        #expect(errors.first?.contains("full") == true || errors.first?.contains("space") == true, "\(errors)")
        // Every committed round is whole and in order: a copy on a roomy disk resumes from it.
        let roomy = directory.appendingPathComponent("roomy.sqlite")
        for suffix in ["", "-wal", "-shm"] where FileManager.default.fileExists(atPath: database.path + suffix) {
            try FileManager.default.copyItem(atPath: database.path + suffix, toPath: roomy.path + suffix)
        }
        let committed = try RunStore(path: roomy.path).rounds().map(\.round)
        #expect(!committed.isEmpty && committed == Array(1...committed.count), "\(committed)")
        let checkpoint = try #require(try RunStore(path: roomy.path).lastCheckpoint())
        #expect(checkpoint.round == committed.last)
        let resumedLog = directory.appendingPathComponent("resumed.log")
        let resumed = try start("fedcoord", ["serve", "--config", config.path, "--db", roomy.path], output: resumedLog)
        let resumedClients = try startClients(directory, port: try await self.port(of: resumedLog))
        defer { for process in resumedClients + [resumed] where process.isRunning { process.terminate() } }
        let next = String(format: "round %4d", checkpoint.round + 1)
        #expect(try await waitForLine(resumedLog, next, seconds: 30) != nil, "resumed at round \(checkpoint.round + 1) once there was room")
    }
}
