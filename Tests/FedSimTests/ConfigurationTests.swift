import Foundation
import Testing
@testable import FedSim

@Suite struct ConfigurationTests {
    let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test(arguments: ["mnist-2nn-iid", "mnist-2nn-noniid", "mnist-cnn-iid", "mnist-cnn-noniid", "mnist-2nn-iid-pruned", "mnist-2nn-noniid-pruned"])
    func bundledScenariosAreValid(name: String) throws {
        let c = try SimulationConfiguration.load(contentsOf: repository.appendingPathComponent("Simulations/\(name).toml"))
        try c.validate()
        #expect(c.name == name)
        #expect(c.clients == 100 && c.fraction == 0.1 && c.batchSize == 10)
        #expect(c.localEpochs == (name.contains("cnn") ? 5 : 1))
        #expect(c.partition == (name.contains("noniid") ? .shards : .iid))
        #expect(FileManager.default.fileExists(atPath: c.data + "/train-images-idx3-ubyte.gz"), "data path \(c.data) resolved against the scenario file")
    }

    @Test func parsesEveryKey() throws {
        let c = try SimulationConfiguration.parse("""
            name = "x"
            model = "cnn"
            clients = 7
            fraction = 0.5
            rounds = 3
            local_epochs = 2
            batch_size = 20
            learning_rate = 0.3
            momentum = 0.5
            weight_decay = 0.001
            proximal_mu = 0.01
            partition = "dirichlet"
            dirichlet_alpha = 0.3
            seed = 42
            target_accuracy = 0.9
            stop_at_target = true
            evaluate_every = 2
            threads = 1
            """, source: "t.toml")
        #expect(c.model == "cnn" && c.clients == 7 && c.fraction == 0.5 && c.rounds == 3)
        #expect(c.localEpochs == 2 && c.batchSize == 20 && c.learningRate == 0.3 && c.momentum == 0.5)
        #expect(c.partition == .dirichlet && c.dirichletAlpha == 0.3 && c.seed == 42 && c.stopAtTarget)
        #expect(c.clientsPerRound == 4)
        try c.validate()
    }

    @Test(arguments: [
        ("colour = 3", "unknown key \"colour\""),
        ("clients = \"ten\"", "\"clients\" must be an integer"),
        ("fraction = [1]", "\"fraction\" must be a number"),
        ("rounds = = 3", "invalid TOML at line 1"),
        ("layers = \"dense:10\"", "\"layers\" must be an array"),
    ])
    func malformedFilesAreRefused(text: String, message: String) {
        #expect { try SimulationConfiguration.parse(text, source: "bad.toml") } throws: { error in
            let d = "\(error)"
            return d.contains("bad.toml") && d.contains(message)
        }
    }

    @Test(arguments: [
        ("fraction = 0", "fraction"),
        ("fraction = 1.5", "fraction"),
        ("batch_size = 0", "batch_size"),
        ("clients = 0", "clients"),
        ("rounds = 0", "rounds"),
        ("learning_rate = -1", "learning_rate"),
        ("partition = \"zipf\"", "partition"),
        ("model = \"resnet\"", "model"),
        ("layers = [\"dense:10\", \"softmax\"]", "layers"),
        ("momentum = 1.0", "momentum"),
    ])
    func impossibleValuesAreRefused(text: String, key: String) throws {
        // A name outside a closed set is refused as it is read; other values by validate().
        #expect {
            try SimulationConfiguration.parse(text, source: "bad.toml").validate()
        } throws: { "\($0)".contains(key) }
    }

    @Test func missingFileIsNamed() {
        #expect { try SimulationConfiguration.load(contentsOf: URL(fileURLWithPath: "/no/such/scenario.toml")) } throws: {
            "\($0)".contains("/no/such/scenario.toml") && "\($0)".contains("no such file")
        }
    }
}

@Suite struct ExampleConfigurationTests {
    @Test func documentedExampleIsValid() throws {
        let url = repositoryRoot.appendingPathComponent("Configs/fedsim-example.toml")
        let c = try SimulationConfiguration.load(contentsOf: url)
        try c.validate()
        #expect(FileManager.default.fileExists(atPath: c.data + "/t10k-images-idx3-ubyte.gz"), "data path \(c.data)")
        // It documents every key fedsim reads (set or commented out).
        let lines = try String(contentsOf: url, encoding: .utf8).split(separator: "\n").map { $0.drop { $0 == "#" || $0 == " " } }
        for key in SimulationConfiguration.keys {
            #expect(lines.contains { $0.hasPrefix(key + " =") }, "\(key) is not in Configs/fedsim-example.toml")
        }
    }
}
