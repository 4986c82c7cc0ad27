import FedStore
import Foundation
import Testing

/// Runs the real `fedsim` executable that `swift test` built next to the test bundle.
struct FedSimProcess {
    static var executable: URL {
        let testBinary = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var directory = testBinary.deletingLastPathComponent()
        // The Swift Testing runner may live inside the .xctest bundle on some platforms.
        while !FileManager.default.isExecutableFile(atPath: directory.appendingPathComponent("fedsim").path),
              directory.pathComponents.count > 2 {
            directory = directory.deletingLastPathComponent()
        }
        return directory.appendingPathComponent("fedsim")
    }

    static func run(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.currentDirectoryURL = repositoryRoot
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
    }
}

@Suite(.serialized) struct CommandLineTests {
    @Test func executableWasBuilt() {
        #expect(FileManager.default.isExecutableFile(atPath: FedSimProcess.executable.path), "no fedsim at \(FedSimProcess.executable.path)")
    }

    @Test func helpListsTheOverrides() throws {
        let result = try FedSimProcess.run(["--help"])
        #expect(result.status == 0)
        for option in ["--config", "--rounds", "--clients", "--fraction", "--local-epochs", "--batch", "--lr", "--partition", "--seed", "--report"] {
            #expect(result.stdout.contains(option), "help lacks \(option)")
        }
    }

    @Test(arguments: [
        (["--config", "/no/such/file.toml"], "no such file"),
        (["--fraction", "0"], "fraction"),
        (["--fraction", "1.5"], "fraction"),
        (["--batch", "0"], "batch_size"),
        (["--partition", "zipf"], "partition"),
        (["--data", "/no/such/mnist"], "no such file"),
        (["--clients", "40000", "--partition", "shards"], "80000 shards"),
        (["--rounds", "0"], "rounds"),
    ])
    func badInputIsOneLineAndNonZeroExit(arguments: [String], expected: String) throws {
        let result = try FedSimProcess.run((arguments.contains("--rounds") ? [] : ["--rounds", "1"]) + arguments + ["--quiet"])
        #expect(result.status != 0)
        let lines = result.stderr.split(separator: "\n").filter { !$0.isEmpty }
        #expect(!result.stderr.contains("Fatal error") && !result.stderr.contains("Stack dump"), "crashed: \(result.stderr)")
        #expect(lines.count == 1, "expected one error line, got: \(result.stderr)")
        #expect(result.stderr.contains(expected), "stderr: \(result.stderr)")
    }

    @Test func malformedScenarioIsRefused() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID().uuidString).toml")
        try "clients = 10\nlearning_rat = 0.1\n".write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let result = try FedSimProcess.run(["--config", file.path])
        #expect(result.status == 1)
        #expect(result.stderr.contains("unknown key \"learning_rat\""), "stderr: \(result.stderr)")
    }

    @Test func runIsRecordedInTheCoordinatorSchema() throws {
        let db = FileManager.default.temporaryDirectory.appendingPathComponent("fedsim-\(UUID().uuidString).sqlite").path
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: db + suffix) } }
        let result = try FedSimProcess.run(["--rounds", "3", "--clients", "20", "--fraction", "0.2", "--quiet", "--db", db, "--codec", "q8"])
        #expect(result.status == 0, "\(result.stderr)")
        let store = try RunStore(path: db)
        let rounds = try store.rounds()
        #expect(rounds.map(\.round) == [1, 2, 3])
        #expect(rounds.allSatisfy { $0.completed == 4 && $0.testMetric != nil })
        #expect(try store.participations(round: 2).count == 4)
        #expect(try store.participations(round: 2).allSatisfy { $0.codec == "q8" && $0.bytes > 0 })
        #expect(try store.lastCheckpoint()?.round == 3)
        // A second run into the same database is refused rather than mixed in.
        let again = try FedSimProcess.run(["--rounds", "1", "--quiet", "--db", db])
        #expect(again.status == 1 && again.stderr.contains("already holds a run"))
    }

    @Test func shortRunWritesAReport() throws {
        let report = FileManager.default.temporaryDirectory.appendingPathComponent("report-\(UUID().uuidString).json")
        defer { try? FileManager.default.removeItem(at: report) }
        let result = try FedSimProcess.run([
            "--config", "Simulations/mnist-2nn-iid.toml", "--rounds", "2", "--clients", "50",
            "--fraction", "0.1", "--seed", "3", "--report", report.path,
        ])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.contains("round    1/2"))
        #expect(result.stdout.contains("fedsim: done: 2 rounds"))
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: report)) as! [String: Any]
        #expect((json["rounds"] as! [Any]).count == 2)
        #expect((json["config"] as! [String: Any])["clients"] as? Int == 50)
    }

    @Test func liveBarAndPlot() throws {
        let plot = FileManager.default.temporaryDirectory.appendingPathComponent("plot-\(UUID().uuidString).svg")
        defer { try? FileManager.default.removeItem(at: plot) }
        let result = try FedSimProcess.run([
            "--config", "Simulations/mnist-2nn-devices.toml", "--rounds", "3", "--progress", "bar", "--plot", plot.path,
        ])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stderr.contains("round 3/3 [########################]"), "\(result.stderr)")
        #expect(result.stderr.contains("ETA"))
        #expect(!result.stdout.contains("round    1/3"))
        #expect(result.stdout.contains("simulated seconds"))
        let svg = try String(contentsOf: plot, encoding: .utf8)
        #expect(svg.hasPrefix("<svg") && svg.contains("accuracy"))
        let quiet = try FedSimProcess.run(["--config", "Simulations/mnist-2nn-devices.toml", "--rounds", "2", "--quiet"])
        #expect(quiet.stderr.isEmpty && quiet.stdout.split(separator: "\n").count == 1, "\(quiet.stdout)\(quiet.stderr)")
    }
}
