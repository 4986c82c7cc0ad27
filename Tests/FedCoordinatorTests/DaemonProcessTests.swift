import FedStore
import Foundation
import Testing

/// The real executables, as an operator and device owners start them, talking over 127.0.0.1.
@Suite(.serialized) struct DaemonProcessTests {
    static func executable(_ name: String) -> URL {
        var directory = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        while !FileManager.default.isExecutableFile(atPath: directory.appendingPathComponent(name).path), directory.pathComponents.count > 2 {
            directory = directory.deletingLastPathComponent()
        }
        return directory.appendingPathComponent(name)
    }

    func start(_ name: String, _ arguments: [String], output: URL) throws -> Process {
        let process = Process()
        process.executableURL = Self.executable(name)
        process.arguments = arguments
        process.currentDirectoryURL = repositoryRoot
        FileManager.default.createFile(atPath: output.path, contents: nil)
        let handle = try FileHandle(forWritingTo: output)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return process
    }

    /// Also with low-rank factors, which need protocol version 4 and the coordinator's warm
    /// starts in every task.
    @Test(arguments: ["topk:0.1+q8+ef", "lowrank:4+q8+ef"]) func coordinatorAndTwoClientProcessesTrainThreeRounds(codec: String) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedproc-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = directory.appendingPathComponent("coordinator.toml")
        try """
            port = 0
            rounds = 3
            min_clients = 2
            clients_per_round = 2
            over_selection = 1.0
            codec = "\(codec)"
            test_data = "\(repositoryRoot.path)/Simulations/data/mnist"
            [clients]
            a = "\(testPublicKey("secret-a"))"
            b = "\(testPublicKey("secret-b"))"
            """.write(to: config, atomically: true, encoding: .utf8)
        let coordinatorLog = directory.appendingPathComponent("coordinator.log")
        let coordinator = try start("fedcoord", ["serve", "--config", config.path], output: coordinatorLog)
        defer { if coordinator.isRunning { coordinator.terminate() } }
        var port: Int?
        for _ in 0..<200 where port == nil {
            try await Task.sleep(nanoseconds: 50_000_000)
            let text = (try? String(contentsOf: coordinatorLog, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("fedcoord: listening on") }) {
                port = Int(line.split(separator: ":").last!)
            }
        }
        let listening = try #require(port, "fedcoord did not report its port")
        var clients: [Process] = []
        for (id, range) in [("a", "0..<600"), ("b", "600..<1200")] {
            clients.append(try start("fedclient", [
                "--coordinator", "127.0.0.1:\(listening)", "--id", id, "--secret", testSecret("secret-\(id)"),
                "--data", "Simulations/data/mnist", "--examples", range,
                "--state-file", directory.appendingPathComponent("\(id).residual").path,
            ], output: directory.appendingPathComponent("\(id).log")))
        }
        for _ in 0..<600 where coordinator.isRunning { try await Task.sleep(nanoseconds: 100_000_000) }
        for client in clients {
            for _ in 0..<100 where client.isRunning { try await Task.sleep(nanoseconds: 100_000_000) }
        }
        let log = try String(contentsOf: coordinatorLog, encoding: .utf8)
        #expect(coordinator.terminationStatus == 0, "coordinator log:\n\(log)")
        #expect(log.contains("round    3"), "coordinator log:\n\(log)")
        #expect(log.contains("fedcoord: done: 3 rounds"))
        for (client, id) in zip(clients, ["a", "b"]) {
            let clientLog = try String(contentsOf: directory.appendingPathComponent("\(id).log"), encoding: .utf8)
            #expect(client.terminationStatus == 0, "client \(id):\n\(clientLog)")
            #expect(clientLog.contains("finished after 3 rounds"), "client \(id):\n\(clientLog)")
            // Error feedback is on, so the residual was persisted, one float per parameter.
            let residual = try Data(contentsOf: directory.appendingPathComponent("\(id).residual"))
            #expect(residual.count == 199_210 * 4)
        }
    }

    /// A task that is not image classification, over real processes: the diabetes regression
    /// (mse loss, one float target per patient, NumPy files) trained by fedcoord and three
    /// fedclient processes that read their targets as values once the coordinator names the
    /// task. The run beats predicting the mean (RMSE 79.5) by a wide margin, and the report,
    /// the store and the export all speak RMSE.
    @Test func aRegressionTaskTrainsOverTCP() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedreg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let database = directory.appendingPathComponent("run.sqlite").path
        let config = directory.appendingPathComponent("coordinator.toml")
        try """
            port = 0
            rounds = 40
            layers = ["dense:32", "relu", "dense:1"]
            input = [10]
            outputs = 1
            loss = "mse"
            min_clients = 3
            clients_per_round = 3
            over_selection = 1.0
            learning_rate = 0.001
            test_data = "\(repositoryRoot.path)/Simulations/data/diabetes"
            database = "\(database)"
            [clients]
            a = "\(testPublicKey("ra"))"
            b = "\(testPublicKey("rb"))"
            c = "\(testPublicKey("rc"))"
            """.write(to: config, atomically: true, encoding: .utf8)
        let coordinatorLog = directory.appendingPathComponent("coordinator.log")
        let coordinator = try start("fedcoord", ["serve", "--config", config.path], output: coordinatorLog)
        defer { if coordinator.isRunning { coordinator.terminate() } }
        let listening = try await port(of: coordinatorLog)
        let clients = try zip(["a", "b", "c"], ["0..<118", "118..<236", "236..<353"]).map { id, range in
            try start("fedclient", ["--coordinator", "127.0.0.1:\(listening)", "--id", id, "--secret", testSecret("r\(id)"),
                                    "--data", "Simulations/data/diabetes", "--examples", range],
                      output: directory.appendingPathComponent("\(id).log"))
        }
        defer { for c in clients where c.isRunning { c.terminate() } }
        try await waitForExit(coordinator, seconds: 60)
        let log = try String(contentsOf: coordinatorLog, encoding: .utf8)
        #expect(coordinator.terminationStatus == 0, "coordinator log:\n\(log)")
        let done = try #require(log.split(separator: "\n").first { $0.hasPrefix("fedcoord: done: 40 rounds, final rmse ") }, "\(log)")
        let rmse = try #require(Double(done.split(separator: " ").last!))
        #expect(rmse < 62, "final RMSE \(rmse); predicting the mean scores 79.5")
        #expect(log.contains("round   40  rmse "))
        let rows = try RunStore(path: database).rounds()
        #expect(rows.count == 40 && rows.allSatisfy { $0.metric == "rmse" } && abs((rows.last?.testMetric ?? 0) - rmse) < 1e-4)
        let csvLog = directory.appendingPathComponent("report.csv")
        let report = try start("fedcoord", ["report", "--db", database, "--csv"], output: csvLog)
        report.waitUntilExit()
        let csv = try String(contentsOf: csvLog, encoding: .utf8).split(separator: "\n")
        #expect(csv.first == "round,selected,completed,refused,uplink_bytes,downlink_bytes,training_loss,test_rmse,test_loss,seconds")
        let exportLog = directory.appendingPathComponent("export.log")
        let export = try start("fedcoord", ["export", "--db", database, "--out", directory.appendingPathComponent("m.fedmodel").path,
                                            "--codec", "q8", "--test-data", "Simulations/data/diabetes"], output: exportLog)
        export.waitUntilExit()
        let exportText = try String(contentsOf: exportLog, encoding: .utf8)
        #expect(export.terminationStatus == 0 && exportText.contains("test RMSE: float32"), "\(exportText)")
        for (client, id) in zip(clients, ["a", "b", "c"]) {
            try await waitForExit(client, seconds: 10)
            let clientLog = try String(contentsOf: directory.appendingPathComponent("\(id).log"), encoding: .utf8)
            #expect(!client.isRunning && client.terminationStatus == 0, "client \(id):\n\(clientLog)")
        }
    }

    /// A device whose data cannot serve the coordinator's task (class labels, a multi-label
    /// model with three outputs) stops at once with one line, instead of reconnecting forever.
    @Test func aClientWhoseDataDoesNotFitTheTaskStopsWithOneLine() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedfit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = directory.appendingPathComponent("coordinator.toml")
        try """
            port = 0
            rounds = 2
            layers = ["dense:3"]
            input = [784]
            outputs = 3
            loss = "bce"
            [clients]
            a = "\(testPublicKey("fa"))"
            """.write(to: config, atomically: true, encoding: .utf8)
        let coordinatorLog = directory.appendingPathComponent("coordinator.log")
        let coordinator = try start("fedcoord", ["serve", "--config", config.path], output: coordinatorLog)
        defer { if coordinator.isRunning { coordinator.terminate() } }
        let listening = try await port(of: coordinatorLog)
        let clientLog = directory.appendingPathComponent("a.log")
        let client = try start("fedclient", ["--coordinator", "127.0.0.1:\(listening)", "--id", "a", "--secret", testSecret("fa"),
                                             "--data", "Simulations/data/mnist", "--examples", "0..<100"], output: clientLog)
        try await waitForExit(client, seconds: 10)
        if client.isRunning { client.terminate() }
        let text = try String(contentsOf: clientLog, encoding: .utf8)
        #expect(client.terminationStatus == 1, "\(text)")
        #expect(text.contains("local data does not fit the coordinator's task (bce, 3 outputs)") && text.contains("1 target values per example, the model has 3 outputs"), "\(text)")
    }

    /// External training code (Configs/numpy_trainer.py, NumPy) as a first-class client over
    /// real processes, beside three whose trainers fail in each way: exit with an error, return
    /// NaN, and run past the task's time. Those decline the round (protocol version 3), the
    /// coordinator stops waiting for them, and they keep serving until the run ends; the good
    /// one's updates train the diabetes regression. A trainer that can never run stops its
    /// client at start with one line.
    @Test func externalTrainersTrainOrDeclineAndKeepServing() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedext-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        // The device's data: the diabetes training patients, as x.npy and y.npy.
        let device = directory.appendingPathComponent("device")
        try FileManager.default.createDirectory(at: device, withIntermediateDirectories: true)
        for (from, to) in [("train_x.npy", "x.npy"), ("train_y.npy", "y.npy")] {
            try FileManager.default.copyItem(at: repositoryRoot.appendingPathComponent("Simulations/data/diabetes/\(from)"), to: device.appendingPathComponent(to))
        }
        let database = directory.appendingPathComponent("run.sqlite").path
        let config = directory.appendingPathComponent("coordinator.toml")
        try """
            port = 0
            rounds = 4
            layers = ["dense:16", "relu", "dense:1"]
            input = [10]
            outputs = 1
            loss = "mse"
            min_clients = 4
            clients_per_round = 4
            over_selection = 1.0
            round_deadline = 3.0
            learning_rate = 0.001
            test_data = "\(repositoryRoot.path)/Simulations/data/diabetes"
            database = "\(database)"
            [clients]
            good = "\(testPublicKey("xg"))"
            fails = "\(testPublicKey("xf"))"
            nan = "\(testPublicKey("xn"))"
            slow = "\(testPublicKey("xs"))"
            """.write(to: config, atomically: true, encoding: .utf8)
        let nanTrainer = directory.appendingPathComponent("nan.py")
        try """
            import json, os, numpy as np
            t = json.load(open(os.environ["FEDL_TASK"]))
            for s in t["shards"]:
                np.save(os.path.join(t["output_dir"], s["name"] + ".npy"), np.full(s["shape"], np.nan, dtype=np.float32))
            json.dump({"examples": 10, "loss": 1.0}, open(t["result"], "w"))
            """.write(to: nanTrainer, atomically: true, encoding: .utf8)
        let coordinatorLog = directory.appendingPathComponent("coordinator.log")
        let coordinator = try start("fedcoord", ["serve", "--config", config.path], output: coordinatorLog)
        defer { if coordinator.isRunning { coordinator.terminate() } }
        let listening = try await port(of: coordinatorLog)
        let trainers = [("good", "xg", "python3 Configs/numpy_trainer.py"), ("fails", "xf", "false"),
                        ("nan", "xn", "python3 \(nanTrainer.path)"), ("slow", "xs", "sleep 30")]
        let clients = try trainers.map { id, secret, command in
            try start("fedclient", ["--coordinator", "127.0.0.1:\(listening)", "--id", id, "--secret", testSecret(secret),
                                    "--data", device.path, "--trainer", command,
                                    "--trainer-dir", directory.appendingPathComponent("work-\(id)").path],
                      output: directory.appendingPathComponent("\(id).log"))
        }
        defer { for c in clients where c.isRunning { c.terminate() } }
        try await waitForExit(coordinator, seconds: 60)
        let log = try String(contentsOf: coordinatorLog, encoding: .utf8)
        #expect(coordinator.terminationStatus == 0 && log.contains("fedcoord: done: 4 rounds"), "coordinator log:\n\(log)")
        #expect(log.contains("client declined the round") && log.contains("reason=trainerFailed") && log.contains("reason=invalidOutput"), "\(log)")
        let rows = try RunStore(path: database).rounds()
        #expect(rows.count == 4 && rows.allSatisfy { $0.completed == 1 }, "\(rows.map(\.completed))")
        // The good client's updates train the model: the initial one predicts about 0 (RMSE
        // about 165); after each round it beats predicting the mean (79.5).
        #expect(rows.allSatisfy { ($0.testMetric ?? 999) < 79.5 }, "\(rows.map(\.testMetric))")
        for (client, (id, _, _)) in zip(clients, trainers) {
            try await waitForExit(client, seconds: 40)
            let clientLog = try String(contentsOf: directory.appendingPathComponent("\(id).log"), encoding: .utf8)
            #expect(!client.isRunning && client.terminationStatus == 0, "client \(id):\n\(clientLog)")
            switch id {
            case "good":
                #expect(clientLog.contains("finished after 4 rounds"), "\(clientLog)")
            case "slow":
                // Its declines come at the deadline, so it is left out of the round after each
                // (a client that missed a deadline waits a round): at least one, at most four.
                #expect(clientLog.contains("cannot deliver this round") && clientLog.contains("finished after 0 rounds ("), "client \(id):\n\(clientLog)")
            default:
                #expect(clientLog.contains("cannot deliver this round") && clientLog.contains("finished after 0 rounds (4 declined)"), "client \(id):\n\(clientLog)")
            }
        }
        let slowLog = try String(contentsOf: directory.appendingPathComponent("slow.log"), encoding: .utf8)
        #expect(slowLog.contains("reason=trainerTimedOut"), "\(slowLog)")
        let nanLog = try String(contentsOf: directory.appendingPathComponent("nan.log"), encoding: .utf8)
        #expect(nanLog.contains("holds nan"), "\(nanLog)")

        // A trainer that can never run: one line at start.
        let missingLog = directory.appendingPathComponent("missing.log")
        let missing = try start("fedclient", ["--coordinator", "127.0.0.1:\(listening)", "--id", "good", "--secret", testSecret("xg"),
                                              "--trainer", "/nonexistent/train.sh"], output: missingLog)
        try await waitForExit(missing, seconds: 10)
        let missingText = try String(contentsOf: missingLog, encoding: .utf8)
        #expect(missing.terminationStatus == 1 && missingText == "fedclient: error: trainer: /nonexistent/train.sh is not an executable file\n", "\(missingText)")
    }

    /// A coordinator configuration for the signal tests, with `extra` keys, and the two
    /// clients' secrets registered in its database.
    func signalSetUp(_ directory: URL, _ extra: String) throws -> (config: URL, database: URL) {
        let database = directory.appendingPathComponent("run.sqlite")
        let config = directory.appendingPathComponent("coordinator.toml")
        try """
            port = 0
            rounds = 100000
            min_clients = 2
            clients_per_round = 2
            over_selection = 1.0
            database = "\(database.path)"
            [clients]
            a = "\(testPublicKey("sa"))"
            b = "\(testPublicKey("sb"))"

            """.replacingOccurrences(of: "over_selection = 1.0\n", with: "over_selection = 1.0\n\(extra)\n")
            .write(to: config, atomically: true, encoding: .utf8)
        return (config, database)
    }

    func waitForLine(_ log: URL, _ prefix: String, seconds: Double = 20) async throws -> String? {
        for _ in 0..<Int(seconds * 20) {
            let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            if let line = text.split(separator: "\n").first(where: { $0.contains(prefix) }) { return String(line) }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        return nil
    }

    func port(of log: URL) async throws -> Int {
        let line = try #require(try await waitForLine(log, "fedcoord: listening on"))
        return try #require(Int(line.split(separator: ":").last!))
    }

    func startClients(_ directory: URL, port: Int, examples: [String] = ["0..<300", "300..<600"]) throws -> [Process] {
        try zip(["a", "b"], examples).map { id, range in
            try start("fedclient", ["--coordinator", "127.0.0.1:\(port)", "--id", id, "--secret", testSecret("s\(id)"),
                                    "--data", "Simulations/data/mnist", "--examples", range,
                                    "--state-file", directory.appendingPathComponent("\(id).residual").path],
                      output: directory.appendingPathComponent("\(id).log"))
        }
    }

    func waitForExit(_ process: Process, seconds: Double) async throws {
        for _ in 0..<Int(seconds * 20) where process.isRunning { try await Task.sleep(nanoseconds: 50_000_000) }
    }

    @Test func sigtermBetweenRoundsCommitsTheRoundInFlightAndTheClientsReconnectUntilStopped() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedterm-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let (config, database) = try signalSetUp(directory, "")
        let log = directory.appendingPathComponent("coordinator.log")
        let coordinator = try start("fedcoord", ["serve", "--config", config.path], output: log)
        defer { if coordinator.isRunning { coordinator.terminate() } }
        let clients = try startClients(directory, port: try await port(of: log))
        defer { for client in clients where client.isRunning { client.terminate() } }
        #expect(try await waitForLine(log, "round    3") != nil)
        kill(coordinator.processIdentifier, SIGTERM)
        try await waitForExit(coordinator, seconds: 10)
        let text = try String(contentsOf: log, encoding: .utf8)
        #expect(!coordinator.isRunning && coordinator.terminationStatus == 0, "coordinator:\n\(text)")
        #expect(text.contains("shutting down") && text.contains("fedcoord: stopped:"), "coordinator:\n\(text)")
        // Every round it printed is committed, and nothing more: the round in flight finished.
        let printed = text.split(separator: "\n").filter { $0.hasPrefix("round ") }.count
        let store = try RunStore(path: database.path)
        #expect(try store.lastCheckpoint()?.round == printed, "\(printed) rounds printed")
        // Clients of protocol version 1 are not sent GOODBYE on a shutdown: they keep trying to
        // reconnect until they are stopped themselves, which they do cleanly.
        try await Task.sleep(nanoseconds: 500_000_000)
        #expect(clients.allSatisfy { $0.isRunning })
        for client in clients { kill(client.processIdentifier, SIGTERM) }
        for (client, id) in zip(clients, ["a", "b"]) {
            try await waitForExit(client, seconds: 10)
            let clientLog = try String(contentsOf: directory.appendingPathComponent("\(id).log"), encoding: .utf8)
            #expect(!client.isRunning && client.terminationStatus == 0, "client \(id):\n\(clientLog)")
            #expect(clientLog.contains("fedclient: finished after"), "client \(id):\n\(clientLog)")
        }
    }

    @Test(arguments: [SIGTERM, SIGINT]) func aSignalWhileWaitingForClientsStopsAtOnce(_ signal: Int32) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedwait-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let (config, _) = try signalSetUp(directory, "")
        let log = directory.appendingPathComponent("coordinator.log")
        let coordinator = try start("fedcoord", ["serve", "--config", config.path], output: log)
        defer { if coordinator.isRunning { coordinator.terminate() } }
        _ = try await port(of: log)
        kill(coordinator.processIdentifier, signal)
        try await waitForExit(coordinator, seconds: 5)
        let text = try String(contentsOf: log, encoding: .utf8)
        #expect(!coordinator.isRunning && coordinator.terminationStatus == 0, "\(text)")
        #expect(text.contains("fedcoord: stopped: 0 rounds"), "\(text)")
    }

    @Test func aSignalMidTrainingAbandonsTheRoundAtItsDeadlineAndASecondOneExitsAtOnce() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedtrain-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        // Local training far longer than the round deadline: the round cannot finish.
        let (config, database) = try signalSetUp(directory, "local_epochs = 100\nround_deadline = 1")
        let log = directory.appendingPathComponent("coordinator.log")
        let coordinator = try start("fedcoord", ["serve", "--config", config.path], output: log)
        defer { if coordinator.isRunning { coordinator.terminate() } }
        let clients = try startClients(directory, port: try await port(of: log), examples: ["0..<3000", "3000..<6000"])
        // Training goes on long after the test: end the clients outright.
        defer { for client in clients where client.isRunning { kill(client.processIdentifier, SIGKILL) } }
        for id in ["a", "b"] { #expect(try await waitForLine(directory.appendingPathComponent("\(id).log"), "connected") != nil) }
        // The round begins as the second client joins; both are training a few moments later.
        try await Task.sleep(nanoseconds: 500_000_000)
        kill(coordinator.processIdentifier, SIGTERM)
        try await waitForExit(coordinator, seconds: 10)
        let text = try String(contentsOf: log, encoding: .utf8)
        #expect(!coordinator.isRunning && coordinator.terminationStatus == 0, "\(text)")
        #expect(text.contains("fedcoord: stopped: 0 rounds"), "\(text)")
        #expect(try RunStore(path: database.path).lastCheckpoint() == nil, "nothing of the abandoned round is committed")
        kill(clients[1].processIdentifier, SIGKILL)
        // A client stopped mid-training: a second signal ends it at once with 128 + SIGTERM.
        kill(clients[0].processIdentifier, SIGTERM)
        try await Task.sleep(nanoseconds: 200_000_000)
        kill(clients[0].processIdentifier, SIGTERM)
        try await waitForExit(clients[0], seconds: 5)
        let clientLog = try String(contentsOf: directory.appendingPathComponent("a.log"), encoding: .utf8)
        #expect(!clients[0].isRunning && clients[0].terminationStatus == 143, "\(clientLog)")
        #expect(clientLog.contains("exiting at once"), "\(clientLog)")
    }

    @Test func aSignalMidDownloadStopsWithoutCommittingTheRound() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedload-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        // The CNN's 6.6 MB of shards go to a peer that reads none of them: the coordinator's
        // writes to it are stuck when the signal comes.
        let (config, database) = try signalSetUp(directory, "model = \"cnn\"\nround_deadline = 2")
        try String(contentsOf: config, encoding: .utf8).replacingOccurrences(of: "min_clients = 2\nclients_per_round = 2", with: "min_clients = 1\nclients_per_round = 1")
            .write(to: config, atomically: true, encoding: .utf8)
        let log = directory.appendingPathComponent("coordinator.log")
        let coordinator = try start("fedcoord", ["serve", "--config", config.path], output: log)
        defer { if coordinator.isRunning { coordinator.terminate() } }
        let peer = try await FramedPeer.connect(port: try await port(of: log))
        guard case .welcome? = try await peer.authenticate(id: "a", secret: "sa") else {
            Issue.record("not welcomed")
            return
        }
        try await Task.sleep(nanoseconds: 300_000_000)
        kill(coordinator.processIdentifier, SIGTERM)
        try await waitForExit(coordinator, seconds: 10)
        let text = try String(contentsOf: log, encoding: .utf8)
        #expect(!coordinator.isRunning && coordinator.terminationStatus == 0, "\(text)")
        #expect(text.contains("round abandoned at shutdown") || text.contains("round abandoned below quorum"), "\(text)")
        #expect(try RunStore(path: database.path).lastCheckpoint() == nil)
    }

    @Test func coordinatorKilledMidRunResumesWithoutLosingARound() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedkill-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let database = directory.appendingPathComponent("run.sqlite").path
        let config = directory.appendingPathComponent("coordinator.toml")
        try "port = 0\nrounds = 8\nmin_clients = 2\nclients_per_round = 2\nover_selection = 1.0\nserver_optimizer = \"fedyogi\"\nserver_lr = 0.02\n[clients]\na = \"\(testPublicKey("sa"))\"\nb = \"\(testPublicKey("sb"))\"\n"
            .write(to: config, atomically: true, encoding: .utf8)
        func waitFor(_ text: String, in log: URL, seconds: Double) async throws -> String? {
            for _ in 0..<Int(seconds * 20) {
                let content = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
                if content.contains(text) { return content }
                try await Task.sleep(nanoseconds: 50_000_000)
            }
            return nil
        }
        let firstLog = directory.appendingPathComponent("first.log")
        let first = try start("fedcoord", ["serve", "--config", config.path, "--db", database], output: firstLog)
        let listening = try #require(try await waitFor("fedcoord: listening on", in: firstLog, seconds: 10)
            .flatMap { $0.split(separator: "\n").first { $0.hasPrefix("fedcoord: listening on") } }
            .flatMap { Int($0.split(separator: ":").last!) })
        let clients = try ["a", "b"].map { id in
            try start("fedclient", ["--coordinator", "127.0.0.1:\(listening)", "--id", id, "--secret", testSecret("s\(id)"),
                                    "--data", "Simulations/data/mnist", "--examples", id == "a" ? "0..<2000" : "2000..<4000"],
                      output: directory.appendingPathComponent("\(id).log"))
        }
        defer { for c in clients where c.isRunning { c.terminate() } }
        _ = try #require(try await waitFor("round    3", in: firstLog, seconds: 60))
        kill(first.processIdentifier, SIGKILL)
        first.waitUntilExit()
        let beforeRestart = try RunStore(path: database)
        let committed = try #require(try beforeRestart.lastCheckpoint())
        let committedRounds = try beforeRestart.rounds().map(\.round)
        #expect(committedRounds == Array(1...committed.round))

        let secondLog = directory.appendingPathComponent("second.log")
        let second = try start("fedcoord", ["serve", "--config", config.path, "--db", database, "--port", "\(listening)"], output: secondLog)
        defer { if second.isRunning { second.terminate() } }
        let log = try #require(try await waitFor("fedcoord: done", in: secondLog, seconds: 90), "second coordinator did not finish")
        #expect(log.contains("model sha256=\(committed.modelSHA256)"), "resumed from the last committed model")
        #expect(log.contains("round    \(committed.round + 1) "), "continued at the next round")
        let rounds = try RunStore(path: database).rounds().map(\.round)
        #expect(rounds == Array(1...8), "no committed round lost or duplicated: \(rounds)")
        // The report command reads the same database.
        let csvLog = directory.appendingPathComponent("report.csv")
        let report = try start("fedcoord", ["report", "--db", database, "--csv"], output: csvLog)
        report.waitUntilExit()
        let csv = try String(contentsOf: csvLog, encoding: .utf8).split(separator: "\n")
        #expect(report.terminationStatus == 0)
        #expect(csv.first == "round,selected,completed,refused,uplink_bytes,downlink_bytes,training_loss,test_accuracy,test_loss,seconds")
        #expect(csv.dropFirst().map { Int($0.split(separator: ",")[0])! } == Array(1...8))
        // Export the last round's model as 8-bit and see its accuracy next to float32's.
        let exportLog = directory.appendingPathComponent("export.log")
        let modelFile = directory.appendingPathComponent("model.fedmodel")
        let export = try start("fedcoord", ["export", "--db", database, "--out", modelFile.path, "--codec", "q8"], output: exportLog)
        export.waitUntilExit()
        let exportText = try String(contentsOf: exportLog, encoding: .utf8)
        #expect(export.terminationStatus == 0, "\(exportText)")
        #expect(exportText.contains("exported round 8 as q8") && exportText.contains("test accuracy: float32"), "\(exportText)")
        let bytes = try Data(contentsOf: modelFile)
        #expect(bytes.starts(with: Data("FEDMODEL 1\n".utf8)) && bytes.count < 199_210 * 4 / 3)
        // Pruned at export: each shard's largest quarter kept, 4-bit, coded sparsely.
        let prunedLog = directory.appendingPathComponent("pruned.log")
        let pruned = try start("fedcoord", ["export", "--db", database, "--out", modelFile.path, "--codec", "topk:0.25+q4"], output: prunedLog)
        pruned.waitUntilExit()
        let prunedText = try String(contentsOf: prunedLog, encoding: .utf8)
        #expect(pruned.terminationStatus == 0 && prunedText.contains("49803 of 199210 weights nonzero"), "\(prunedText)")
        #expect(try Data(contentsOf: modelFile).count < 199_210 * 4 / 12, "at least 12 times smaller than float32")
        // Distilled into a student on the server's own examples (one epoch), written beside the teacher.
        let distillLog = directory.appendingPathComponent("distill.log")
        let distill = try start("fedcoord", ["distill", "--db", database, "--student", "dense:16,relu,dense:10", "--data", "Simulations/data/mnist",
                                             "--out", directory.path, "--epochs", "1"], output: distillLog)
        distill.waitUntilExit()
        let distillText = try String(contentsOf: distillLog, encoding: .utf8)
        #expect(distill.terminationStatus == 0 && distillText.contains("student 1 dense:16,relu,dense:10: 12730 parameters"), "\(distillText)")
        #expect(FileManager.default.fileExists(atPath: directory.appendingPathComponent("student-1.fedmodel").path))
        for client in clients {
            for _ in 0..<100 where client.isRunning { try await Task.sleep(nanoseconds: 50_000_000) }
            #expect(client.terminationStatus == 0)
        }
    }

    @Test func sigtermStopsAClientCleanly() async throws {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("fedclient-\(UUID().uuidString).log")
        defer { try? FileManager.default.removeItem(at: log) }
        // Nothing listens on this port: the daemon is in its reconnection backoff when stopped.
        let client = try start("fedclient", ["--coordinator", "127.0.0.1:9", "--id", "a", "--secret", testSecret("s"),
                                             "--data", "Simulations/data/mnist", "--examples", "0..<100"], output: log)
        try await Task.sleep(nanoseconds: 1_000_000_000)
        kill(client.processIdentifier, SIGTERM)
        for _ in 0..<100 where client.isRunning { try await Task.sleep(nanoseconds: 50_000_000) }
        let text = try String(contentsOf: log, encoding: .utf8)
        #expect(!client.isRunning && client.terminationStatus == 0, "\(text)")
        #expect(text.contains("fedclient: finished after 0 rounds"), "\(text)")
    }

    @Test func badConfigurationsAreOneLineErrors() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedcfg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let cases: [(String, String)] = [
            ("port = 0\n", "no clients registered"),
            ("port = 0\nrounds = 0\n[clients]\na = \"\(testPublicKey("s"))\"\n", "rounds"),
            ("port = 0\nflavour = 1\n[clients]\na = \"\(testPublicKey("s"))\"\n", "unknown key \"flavour\""),
            ("port = 0\ncodec = \"q9\"\n[clients]\na = \"\(testPublicKey("s"))\"\n", "codec"),
            ("port = 0\naggregator = \"trust\"\n[clients]\na = \"\(testPublicKey("s"))\"\n", "aggregator trust needs trusted_data"),
            ("port = 0\naggregator = \"trust\"\ntrusted_data = \"/no/such/dir\"\n[clients]\na = \"\(testPublicKey("s"))\"\n", "no such file"),
        ] + [
            // Values that used to pass validation and crash at the first round or connection.
            ("round_deadline = 1e7", "round_deadline"), ("round_deadline = inf", "round_deadline"),
            ("handshake_timeout = 1e11", "handshake_timeout"), ("handshake_timeout = inf", "handshake_timeout"),
            ("read_timeout = 1e17", "read_timeout"), ("idle_timeout = nan", "idle_timeout"),
            ("metrics_port = 70000", "metrics_port"), ("seed = -1", "seed"), ("heartbeat_ms = 99999999999", "heartbeat_ms"),
            ("update_bound = 0.5", "update_bound"), ("loss_guard = inf", "loss_guard"),
        ].map { ("port = 0\n\($0.0)\n[clients]\na = \"\(testPublicKey("s"))\"\n", $0.1) }
        for (index, (text, expected)) in cases.enumerated() {
            let config = directory.appendingPathComponent("c\(index).toml")
            try text.write(to: config, atomically: true, encoding: .utf8)
            let log = directory.appendingPathComponent("c\(index).log")
            let process = try start("fedcoord", ["serve", "--config", config.path], output: log)
            process.waitUntilExit()
            let output = try String(contentsOf: log, encoding: .utf8)
            #expect(process.terminationStatus == 1, "\(text): \(output)")
            #expect(output.contains(expected) && output.split(separator: "\n").count == 1, "\(text): \(output)")
        }
        // An empty file where the database should be is not silently a new run.
        let empty = directory.appendingPathComponent("empty.sqlite")
        FileManager.default.createFile(atPath: empty.path, contents: Data())
        let emptyConfig = directory.appendingPathComponent("empty.toml")
        try "port = 0\ndatabase = \"\(empty.path)\"\n".write(to: emptyConfig, atomically: true, encoding: .utf8)
        let emptyLog = directory.appendingPathComponent("empty.log")
        let emptyRun = try start("fedcoord", ["serve", "--config", emptyConfig.path], output: emptyLog)
        emptyRun.waitUntilExit()
        let emptyOutput = try String(contentsOf: emptyLog, encoding: .utf8)
        #expect(emptyRun.terminationStatus == 1 && emptyOutput.contains("the file is empty") && emptyOutput.split(separator: "\n").count == 1, "\(emptyOutput)")

        let log = directory.appendingPathComponent("client.log")
        let client = try start("fedclient", ["--id", "a", "--secret", testSecret("s"), "--data", "/no/such/dir"], output: log)
        client.waitUntilExit()
        #expect(client.terminationStatus == 1)
        #expect(try String(contentsOf: log, encoding: .utf8).contains("no such file"))
        // fedclient reads its file with the same typed reader: a quoted number is a type error.
        let clientConfig = directory.appendingPathComponent("client.toml")
        try "id = \"a\"\nmemory_budget = \"2000000\"\n".write(to: clientConfig, atomically: true, encoding: .utf8)
        let typed = try start("fedclient", ["--config", clientConfig.path], output: log)
        typed.waitUntilExit()
        let output = try String(contentsOf: log, encoding: .utf8)
        #expect(typed.terminationStatus == 1)
        #expect(output == "fedclient: error: \(clientConfig.path): \"memory_budget\" must be an integer, got \"2000000\"\n", "\(output)")
    }
}

