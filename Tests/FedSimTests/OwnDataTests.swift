import FedModel
import Foundation
import Testing
@testable import FedSim

/// A task of the user's own: NumPy files written by NumPy, a model described in the scenario
/// (its input shape, class count and layers), trained by fedsim end to end.
@Suite struct OwnDataTests {
    @Test func fedsimTrainsATaskFromNumPyFiles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fednpy-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // Three classes, eight sensor readings each: the class is which of the first three
        // readings is largest; the other five are noise.
        let script = """
            import numpy as np, sys
            d = sys.argv[1]
            rng = np.random.default_rng(7)
            for split, n in (("train", 3000), ("test", 600)):
                x = rng.normal(size=(n, 8)).astype(np.float32)
                np.save(f"{d}/{split}_x.npy", x)
                np.save(f"{d}/{split}_y.npy", np.argmax(x[:, :3], axis=1).astype(np.int64))
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, dir.path]
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "python3 with NumPy writes the files")
        let scenario = """
            name = "sensors"
            data = "\(dir.path)"
            input = [8]
            classes = 3
            layers = ["dense:32", "relu", "dense:3"]
            clients = 20
            fraction = 0.5
            local_epochs = 1
            batch_size = 10
            learning_rate = 0.1
            rounds = 8
            seed = 1
            """
        let configuration = try SimulationConfiguration.parse(scenario, source: "sensors.toml")
        #expect(try configuration.modelSpec().wireDescription == "8|3|dense:32,relu,dense:3")
        let report = try Simulation(configuration: configuration).run()
        let accuracy = try #require(report.summary.finalAccuracy)
        #expect(accuracy > 0.85, "final accuracy \(accuracy)")
    }

    /// The natural partition: one client per user id in `train_ids.npy`, holding that user's
    /// examples; `clients` must be the number of users.
    @Test func naturalPartitionGivesEachUserAClient() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fednpy-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let script = """
            import numpy as np, sys
            d = sys.argv[1]
            rng = np.random.default_rng(3)
            for split, n in (("train", 1200), ("test", 300)):
                x = rng.normal(size=(n, 4)).astype(np.float32)
                np.save(f"{d}/{split}_x.npy", x)
                np.save(f"{d}/{split}_y.npy", (x[:, 0] > x[:, 1]).astype(np.int32))
            np.save(f"{d}/train_ids.npy", rng.integers(100, 112, 1200))  # 12 users, ids 100 to 111
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, dir.path]
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        func scenario(clients: Int) -> String {
            """
            data = "\(dir.path)"
            input = [4]
            classes = 2
            layers = ["dense:8", "relu", "dense:2"]
            partition = "natural"
            clients = \(clients)
            fraction = 0.5
            rounds = 3
            learning_rate = 0.1
            """
        }
        let simulation = try Simulation(configuration: try SimulationConfiguration.parse(scenario(clients: 12), source: "users.toml"))
        let groups = try #require(simulation.trainData.groups)
        #expect(simulation.clientIndices.count == 12)
        for (client, indices) in simulation.clientIndices.enumerated() {
            #expect(!indices.isEmpty && indices.allSatisfy { groups[Int($0)] == Int32(100 + client) }, "client \(client) holds user \(100 + client)'s examples only")
        }
        #expect(simulation.clientIndices.reduce(0) { $0 + $1.count } == 1200)
        let report = try simulation.run()
        #expect(report.rounds.count == 3)
        #expect { try Simulation(configuration: try SimulationConfiguration.parse(scenario(clients: 10), source: "users.toml")) }
            throws: { "\($0)".contains("the data has 12 users") && "\($0)".contains("set clients = 12") }
    }

    @Test func theModelMustFitTheTask() throws {
        #expect { try SimulationConfiguration.parse("model = \"2nn\"\nclasses = 3", source: "s.toml").modelSpec() }
            throws: { "\($0)".contains("presets are MNIST-shaped") }
        #expect { try SimulationConfiguration.parse("layers = [\"dense:3\"]\ninput = [2, 3]", source: "s.toml").modelSpec() }
            throws: { "\($0)".contains("must be [N] values or [H, W, C]") }
        #expect { try SimulationConfiguration.parse("layers = [\"dense:3\"]\nclasses = 1", source: "s.toml").modelSpec() }
            throws: { "\($0)".contains("2...256") }
    }
}
