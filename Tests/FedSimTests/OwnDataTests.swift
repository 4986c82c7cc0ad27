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
        try runPython(script, in: dir)
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

    /// The bundled regression scenario (diabetes, mse): the report names RMSE, its target is
    /// reached downwards, and the model beats predicting the mean (79.5) by a wide margin.
    @Test func regressionScenarioReportsRMSE() throws {
        var configuration = try SimulationConfiguration.load(contentsOf: repositoryRoot.appendingPathComponent("Simulations/diabetes-mlp.toml"))
        configuration.rounds = 30
        let report = try Simulation(configuration: configuration).run()
        let rmse = try #require(report.summary.finalAccuracy)
        #expect(report.summary.metric == .rmse && report.rounds.allSatisfy { $0.metric == .rmse })
        #expect(rmse < 60 && report.summary.rmse == rmse && (report.summary.mae ?? 99) < rmse, "RMSE \(rmse)")
        #expect(report.summary.bestAccuracy == report.rounds.compactMap(\.testMetric).min())
        let firstBelow = report.rounds.first { ($0.testMetric ?? .infinity) <= 60 }?.round
        #expect(report.summary.roundsToTarget == firstBelow && firstBelow != nil)
        let json = try JSONSerialization.jsonObject(with: report.jsonData()) as! [String: Any]
        let summary = json["summary"] as! [String: Any]
        #expect(summary["metric"] as? String == "rmse" && summary["final_accuracy"] is NSNull && summary["final_metric"] as? Double == rmse)
        // Label flipping and label-sorted partitions need class labels.
        configuration.partition = .shards
        #expect { try Simulation(configuration: configuration) } throws: { "\($0)".contains("use iid or natural") }
    }

    /// A multi-label task (bce): each example carries three independent tags, tag j on when
    /// feature j is positive; trained from NumPy files with multi-hot targets [N, 3].
    @Test func multiLabelTaskTrainsWithBinaryCrossEntropy() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fedbce-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let script = """
            import numpy as np, sys
            d = sys.argv[1]
            rng = np.random.default_rng(11)
            for split, n in (("train", 2000), ("test", 500)):
                x = rng.normal(size=(n, 6)).astype(np.float32)
                np.save(f"{d}/{split}_x.npy", x)
                np.save(f"{d}/{split}_y.npy", (x[:, :3] > 0).astype(np.uint8))
            """
        try runPython(script, in: dir)
        let configuration = try SimulationConfiguration.parse("""
            data = "\(dir.path)"
            input = [6]
            outputs = 3
            loss = "bce"
            layers = ["dense:16", "relu", "dense:3"]
            clients = 10
            fraction = 0.5
            learning_rate = 0.5
            rounds = 10
            target = 0.9
            """, source: "tags.toml")
        #expect(try configuration.modelSpec().wireDescription == "6|3|dense:16,relu,dense:3|bce")
        let report = try Simulation(configuration: configuration).run()
        let accuracy = try #require(report.summary.finalAccuracy)
        #expect(report.summary.metric == .labelAccuracy && accuracy > 0.9, "label accuracy \(accuracy)")
    }

    /// Next-character prediction (the best-known federated task on phones), from token ids:
    /// sentences of a small vocabulary, 8 characters of context, a 27-symbol alphabet; an
    /// embedding and a GRU learn it far beyond the most frequent character (21%).
    @Test func nextCharacterPredictionWithAnEmbeddingAndAGRU() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fedchars-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let script = """
            import numpy as np, sys
            d = sys.argv[1]
            rng = np.random.default_rng(5)
            words = "the a cat dog bird sat ran flew on over under mat log tree and then quickly slowly".split()
            alphabet = " abcdefghijklmnopqrstuvwxyz"
            for split, n in (("train", 6000), ("test", 1000)):
                ids = np.array([alphabet.index(c) for c in " ".join(rng.choice(words, size=n)) + " "])
                starts = rng.choice(len(ids) - 9, size=n, replace=False)
                np.save(f"{d}/{split}_x.npy", np.stack([ids[s:s + 8] for s in starts]).astype(np.int32))
                np.save(f"{d}/{split}_y.npy", ids[starts + 8].astype(np.int64))
            """
        try runPython(script, in: dir)
        let configuration = try SimulationConfiguration.parse("""
            data = "\(dir.path)"
            input = [8]
            classes = 27
            layers = ["embedding:27:16", "gru:64", "dense:27"]
            clients = 10
            fraction = 0.5
            learning_rate = 0.5
            rounds = 15
            """, source: "chars.toml")
        #expect(try configuration.modelSpec().wireDescription == "8|27|embedding:27:16,gru:64,dense:27")
        let report = try Simulation(configuration: configuration).run()
        let accuracy = try #require(report.summary.finalAccuracy)
        #expect(accuracy > 0.6, "next-character accuracy \(accuracy)")
        // Features that are not token ids are refused, naming the example.
        var bad = configuration
        bad.layers = ["embedding:20:16", "gru:64", "dense:27"]
        #expect { try Simulation(configuration: bad) } throws: { "\($0)".contains("is not a token id in 0..<20") }
    }

    /// Sentiment from LEAF's Sent140 layout: tweets of users, as word ids from the training
    /// vocabulary, one client per user (natural partition), an embedding and a GRU.
    @Test func sent140SentimentWithANaturalPartition() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fedsent-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        var generator = SeededGenerator(seed: 9)
        let filler = "i the day today work home it was and my so just going now got".split(separator: " ")
        let happy = ["good", "great", "love", "happy", "fun"], sad = ["bad", "awful", "hate", "sad", "tired"]
        for (split, users) in [("train", 20), ("test", 5)] {
            try FileManager.default.createDirectory(at: dir.appendingPathComponent(split), withIntermediateDirectories: true)
            var userData: [String] = []
            for u in 0..<users {
                var xs: [String] = [], ys: [String] = []
                for t in 0..<20 {
                    let positive = (t + u) % 2 == 0
                    var words = (0..<6).map { _ in String(filler[Int(generator.next() % UInt64(filler.count))]) }
                    words.insert((positive ? happy : sad)[Int(generator.next() % 5)], at: Int(generator.next() % 7))
                    xs.append("[\"\(t)\", \"Mon Apr 06\", \"NO_QUERY\", \"u\(u)\", \"\(words.joined(separator: " "))\"]")
                    ys.append(positive ? "1" : "0")
                }
                userData.append("\"\(split)\(u)\": {\"x\": [\(xs.joined(separator: ", "))], \"y\": [\(ys.joined(separator: ", "))]}")
            }
            let names = (0..<users).map { "\"\(split)\($0)\"" }.joined(separator: ", ")
            try "{\"users\": [\(names)], \"num_samples\": [\((0..<users).map { _ in "20" }.joined(separator: ", "))], \"user_data\": {\(userData.joined(separator: ", "))}}"
                .write(to: dir.appendingPathComponent("\(split)/all_data_\(split).json"), atomically: true, encoding: .utf8)
        }
        let configuration = try SimulationConfiguration.parse("""
            data = "\(dir.path)"
            input = [\(LEAF.sentenceLength)]
            classes = 2
            layers = ["embedding:\(LEAF.vocabularySize):8", "gru:16", "dense:2"]
            partition = "natural"
            clients = 20
            fraction = 0.5
            local_epochs = 5
            learning_rate = 0.5
            rounds = 20
            """, source: "sent140.toml")
        let report = try Simulation(configuration: configuration).run()
        let accuracy = try #require(report.summary.finalAccuracy)
        #expect(accuracy > 0.9, "sentiment accuracy \(accuracy) (half the tweets are positive)")
    }

    /// A simulation split as CSV (`train.csv`, `test.csv`) with a device column: the natural
    /// partition gives every device its own client, the device column is not a feature, and the
    /// target column is named by the header.
    @Test func csvSplitsWithADeviceColumn() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fedcsv-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var generator = SeededGenerator(seed: 3)
        for (split, rows) in [("train", 600), ("test", 200)] {
            var text = "device,a,b,activity\n"
            for row in 0..<rows {
                let a = generator.nextUniform(-1, 1), b = generator.nextUniform(-1, 1)
                text += "sensor-\(row % 6),\(a),\(b),\(a > b ? 1 : 0)\n"
            }
            try text.write(to: dir.appendingPathComponent("\(split).csv"), atomically: true, encoding: .utf8)
        }
        let configuration = try SimulationConfiguration.parse("""
            data = "\(dir.path)"
            input = [2]
            classes = 2
            layers = ["dense:16", "relu", "dense:2"]
            label_column = "activity"
            user_column = "device"
            partition = "natural"
            clients = 6
            fraction = 1.0
            rounds = 10
            """, source: "csv.toml")
        let simulation = try Simulation(configuration: configuration)
        #expect(simulation.trainData.sampleShape == .vector(2) && simulation.clientIndices.map(\.count) == [100, 100, 100, 100, 100, 100])
        #expect(simulation.clientIndices[1].allSatisfy { $0 % 6 == 1 }, "client 1 holds sensor-1's rows")
        let accuracy = try #require(try simulation.run().summary.finalAccuracy)
        #expect(accuracy > 0.9, "accuracy \(accuracy)")
    }

    @Test func theModelMustFitTheTask() throws {
        #expect { try SimulationConfiguration.parse("model = \"2nn\"\nclasses = 3", source: "s.toml").modelSpec() }
            throws: { "\($0)".contains("presets are MNIST-shaped") }
        #expect { try SimulationConfiguration.parse("layers = [\"dense:3\"]\ninput = [2, 3]", source: "s.toml").modelSpec() }
            throws: { "\($0)".contains("must be [N] values or [H, W, C]") }
        #expect { try SimulationConfiguration.parse("layers = [\"dense:3\"]\nclasses = 1", source: "s.toml").modelSpec() }
            throws: { "\($0)".contains("must be in 2...1048576 for loss softmax") }
    }
}

/// Runs a Python script (with NumPy) that writes files into `directory` (its one argument).
func runPython(_ script: String, in directory: URL) throws {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["python3", "-c", script, directory.path]
    try process.run()
    process.waitUntilExit()
    #expect(process.terminationStatus == 0, "python3 with NumPy writes the files")
}
