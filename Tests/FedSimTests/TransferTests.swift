import FedCodec
import FedCoordinator
import FedModel
import FedStore
import Foundation
import Testing
@testable import FedSim

/// Starting from a model trained elsewhere (`base_model`), and federated fine-tuning through
/// low-rank adapters, on real MNIST: the base loads by tensor name from an exported file or a
/// run database, only the adapters train and travel, and the real coordinator and client
/// daemons over TCP do the same as the in-memory transport.
@Suite(.serialized) struct TransferTests {
    static let adapted = ["dense:200:lora2", "relu", "dense:200:lora2", "relu", "dense:10:lora2"]

    func configuration(_ change: (inout SimulationConfiguration) -> Void = { _ in }) -> SimulationConfiguration {
        var c = SimulationConfiguration()
        c.clients = 20
        c.fraction = 0.2
        c.rounds = 3
        c.learningRate = 0.1
        c.seed = 7
        change(&c)
        return c
    }

    /// A 2NN trained for 3 rounds, exported as float32 and recorded in a run database.
    static let base: (model: [Float], file: URL, database: URL) = {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("transfer-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var c = SimulationConfiguration()
        (c.clients, c.fraction, c.rounds, c.learningRate, c.seed) = (20, 0.2, 3, 0.1, 3)
        let simulation = try! Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
        let database = directory.appendingPathComponent("base.sqlite")
        let store = try! RunStore(path: database.path)
        try! store.recordRun(configuration: simulation.network.spec.wireDescription)
        simulation.store = store
        _ = try! simulation.run()
        let file = directory.appendingPathComponent("base.fedmodel")
        _ = try! ModelExport.write(model: simulation.global, network: simulation.network, codec: try! CodecSpec(parsing: "fp32"), to: file, test: nil)
        return (simulation.global, file, database)
    }()

    @Test func aBaseModelLoadsFromAnExportOrADatabase() throws {
        let network = try Network(.mnist2NN)
        for path in [Self.base.file.path, Self.base.database.path] {
            let base = try BaseModel(path: path)
            #expect(base.spec == .mnist2NN)
            #expect(base.parameters == Self.base.model, "\(path)")
            let (loaded, kept) = try base.load(into: network, initial: network.initialParameters(seed: 1))
            #expect(loaded == Self.base.model && kept.isEmpty)
        }
        // A model with another output layer keeps that layer's initial values (a new head).
        let wider = try Network(ModelSpec(input: .vector(784), classes: 12, layers: [.dense(outputs: 200), .relu, .dense(outputs: 200), .relu, .dense(outputs: 12)]))
        let (_, kept) = try BaseModel(path: Self.base.file.path).load(into: wider, initial: wider.initialParameters(seed: 1))
        #expect(kept == ["dense3.weight", "dense3.bias"])
    }

    /// Fine-tuning through adapters: the base weights stay exactly as loaded, the adapters move,
    /// only they are sent (a fraction of a full update), and the run starts at the base model's
    /// accuracy instead of from scratch.
    @Test func adaptersTrainAndTravelAlone() throws {
        let c = configuration { $0.layers = Self.adapted; $0.input = [784]; $0.classes = 10; $0.baseModel = Self.base.file.path }
        let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
        let layout = simulation.network.layout
        let report = try simulation.run()
        let plain = try Network(.mnist2NN).layout
        for tensor in layout.tensors {
            if let source = plain.tensor(named: tensor.name) {
                #expect(!tensor.trainable)
                #expect(simulation.global[tensor.range] == Self.base.model[source.range], "\(tensor.name) stays frozen")
            } else {
                #expect(tensor.trainable)
                #expect(simulation.global[tensor.range].contains { $0 != 0 }, "\(tensor.name) has trained")
            }
        }
        let adapterValues = layout.tensors.filter(\.trainable).reduce(0) { $0 + $1.count }
        let perUpdate = report.rounds[0].uplinkBytes / 4
        // fp32 with zlib: at most the raw floats and a header per adapter tensor.
        #expect(perUpdate <= adapterValues * 4 + 6 * 32 && perUpdate > adapterValues, "\(perUpdate) bytes per update for \(adapterValues) adapter values")
        let scratch = try Simulation(configuration: configuration { $0.rounds = 1 }, train: SmallMNIST.train, test: SmallMNIST.test).run()
        #expect(report.rounds[0].uplinkBytes * 20 < scratch.rounds[0].uplinkBytes, "adapters \(report.rounds[0].uplinkBytes), full \(scratch.rounds[0].uplinkBytes)")
        let first = report.rounds[0].testMetric!, fromScratch = scratch.rounds[0].testMetric!
        #expect(first > fromScratch + 0.2 && report.rounds.last!.testMetric! > first, "adapted \(report.rounds.map(\.testMetric)), scratch round 1 \(fromScratch)")
    }

    /// FFA-LoRA: A stays at its random start bit for bit, B trains, and an update carries the
    /// Bs only, so it is smaller than LoRA's at the same rank.
    @Test func frozenAAdaptersSendOnlyB() throws {
        let ffa = ["dense:200:ffa2", "relu", "dense:200:ffa2", "relu", "dense:10:ffa2"]
        let c = configuration { $0.layers = ffa; $0.input = [784]; $0.classes = 10; $0.baseModel = Self.base.file.path }
        let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
        let initial = simulation.global
        let report = try simulation.run()
        let layout = simulation.network.layout
        for tensor in layout.tensors where tensor.name.hasSuffix("ffa_a") {
            #expect(!tensor.trainable && simulation.global[tensor.range] == initial[tensor.range], "\(tensor.name) stays as drawn")
        }
        for tensor in layout.tensors where tensor.name.hasSuffix("lora_b") {
            #expect(tensor.trainable && simulation.global[tensor.range].contains { $0 != 0 }, "\(tensor.name) has trained")
        }
        let lora = try Simulation(configuration: configuration { $0.layers = Self.adapted; $0.input = [784]; $0.classes = 10; $0.baseModel = Self.base.file.path },
                                  train: SmallMNIST.train, test: SmallMNIST.test).run()
        // B is 2·200 + 2·200 + 2·10 values against LoRA's A and B: (784 + 200 + 200 + 200 + 200 + 10)·2.
        #expect(report.rounds[0].uplinkBytes * 3 < lora.rounds[0].uplinkBytes, "FFA \(report.rounds[0].uplinkBytes), LoRA \(lora.rounds[0].uplinkBytes)")
        #expect(report.rounds.last!.testMetric! > report.rounds[0].testMetric! - 0.02)
    }

    /// The coordinator sends tasks for the adapters only and the daemons train them: the same
    /// rounds as the in-memory transport. The daemons keep their shards (`keeps-shards`), so
    /// the frozen base goes down once: from the second round on only the adapters travel.
    @Test func overTCPTheCoordinatorTrainsOnlyTheAdapters() async throws {
        let c = configuration {
            $0.layers = Self.adapted; $0.input = [784]; $0.classes = 10; $0.baseModel = Self.base.file.path
            $0.rounds = 2; $0.clients = 4; $0.fraction = 1
        }
        let memory = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test).run()
        var tcp = c
        tcp.transport = .tcp
        let viaTCP = try await Simulation(configuration: tcp, train: SmallMNIST.train, test: SmallMNIST.test).runOverTCP()
        #expect(viaTCP.rounds.map(\.uplinkBytes) == memory.rounds.map(\.uplinkBytes))
        #expect(viaTCP.rounds.map(\.downlinkBytes) == memory.rounds.map(\.downlinkBytes))
        let (first, second) = (memory.rounds[0].downlinkBytes, memory.rounds[1].downlinkBytes)
        #expect(second * 20 < first && second >= memory.rounds[1].uplinkBytes / 2, "downlink: round 1 \(first) bytes, round 2 \(second)")
        for (a, b) in zip(viaTCP.rounds, memory.rounds) {
            #expect(abs(a.testMetric! - b.testMetric!) < 0.005, "round \(a.round): tcp \(a.testMetric!), memory \(b.testMetric!)")
        }
    }

    /// The README's adapter scenario: valid, its base model found against the scenario file.
    @Test func theBundledAdapterScenarioLoads() throws {
        let c = try SimulationConfiguration.load(contentsOf: repositoryRoot.appendingPathComponent("Simulations/fashion-mnist-2nn-lora.toml"))
        try c.validate()
        #expect(c.baseModel == repositoryRoot.appendingPathComponent("reports/transfer/mnist-2nn.fedmodel").standardizedFileURL.path)
        #expect(try Network(c.modelSpec()).layout.tensors.filter(\.trainable).reduce(0) { $0 + $1.count } == 6_376)
    }

    @Test func badTransferSettingsAreNamed() throws {
        let adapted = configuration { $0.layers = Self.adapted; $0.input = [784]; $0.classes = 10 }
        #expect { try adapted.validate() } throws: { "\($0)".contains("base_model") }
        var pruned = adapted
        pruned.baseModel = Self.base.file.path
        pruned.pruning = PruningSchedule(sparsity: 0.5, endRound: 2)
        #expect { try pruned.validate() } throws: { "\($0)".contains("pruning") }

        var coordinator = CoordinatorConfiguration()
        coordinator.model = try adapted.modelSpec()
        #expect { try coordinator.validate() } throws: { "\($0)".contains("base_model") }

        // A base whose hidden layers have another width cannot be frozen under adapters.
        var narrow = configuration { $0.layers = ["dense:100:lora2", "relu", "dense:10:lora2"]; $0.input = [784]; $0.classes = 10 }
        narrow.baseModel = Self.base.file.path
        #expect { try Simulation(configuration: narrow, train: SmallMNIST.train, test: SmallMNIST.test) } throws: {
            "\($0)".contains("dense1.weight") && "\($0)".contains("[784, 100]")
        }

        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("transfer-bad-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = try Data(contentsOf: Self.base.file)
        let cases: [(String, Data, String)] = [
            ("truncated", file.prefix(file.count - 100), "truncated"),
            ("trailing", file + Data([1, 2, 3]), "after the last shard"),
            ("version", Data("FEDMODEL 9\n".utf8) + file.dropFirst(11), "FEDMODEL 1"),
            ("text", Data("hello\n".utf8), "neither"),
        ]
        for (name, bytes, expected) in cases {
            let path = directory.appendingPathComponent(name).path
            try bytes.write(to: URL(fileURLWithPath: path))
            #expect { try BaseModel(path: path) } throws: { "\($0)".contains(expected) && "\($0)".contains(path) }
        }
        #expect { try BaseModel(path: directory.appendingPathComponent("missing").path) } throws: { "\($0)".contains("cannot open") }
    }
}
