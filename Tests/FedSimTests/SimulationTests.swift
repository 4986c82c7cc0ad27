import FedCodec
import FedModel
import Foundation
import Testing
@testable import FedSim

let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// Real MNIST, cut down so a federated run takes seconds: 6,000 training and 2,000 test examples.
enum SmallMNIST {
    static let full = try! MNIST.load(directory: repositoryRoot.appendingPathComponent("Simulations/data/mnist"), train: false)
    static let train = subset(0..<6000)
    static let test = subset(8000..<10_000)

    static func subset(_ range: Range<Int>) -> Dataset {
        let width = full.sampleShape.count
        return try! Dataset(
            name: "mnist[\(range)]", sampleShape: full.sampleShape, classes: 10,
            features: Array(full.features[(range.lowerBound * width)..<(range.upperBound * width)]),
            labels: Array(full.labels[range]))
    }
}

@Suite struct SimulationTests {
    func configuration(_ change: (inout SimulationConfiguration) -> Void = { _ in }) -> SimulationConfiguration {
        var c = SimulationConfiguration()
        c.clients = 20
        c.fraction = 0.25
        c.rounds = 4
        c.learningRate = 0.1
        c.seed = 5
        change(&c)
        return c
    }

    @Test func federatedAveragingImprovesTheModel() throws {
        let simulation = try Simulation(configuration: configuration { $0.rounds = 8 }, train: SmallMNIST.train, test: SmallMNIST.test)
        let report = try simulation.run()
        let accuracies = report.rounds.compactMap(\.testMetric)
        #expect(report.rounds.count == 8)
        #expect(accuracies.count == 8)
        #expect(accuracies.last! > accuracies.first!, "accuracy per round: \(accuracies)")
        #expect(accuracies.last! > 0.8, "accuracy per round: \(accuracies)")
        #expect(report.rounds.allSatisfy { $0.clients == 5 })
        // Default codec fp32+raw: the float32 deltas plus a 32-byte header per shard (6 shards).
        #expect(report.rounds[0].uplinkBytes == 5 * (199_210 * 4 + 6 * 32))
        #expect(report.rounds[0].downlinkBytes == 5 * (199_210 * 4 + 6 * 32))
    }

    @Test func aRoundIsTheExampleWeightedMeanOfClientDeltas() throws {
        // One client per round, E=1: the new global model is exactly that client's local model.
        let c = configuration { $0.fraction = 0.05; $0.rounds = 1; $0.threads = 1 }
        let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
        let start = simulation.global
        let client = simulation.sampleClients(round: 1)[0]
        try simulation.runRound()
        var local = start
        var generator = SeededGenerator(seed: c.seed, stream: 0xC11E, 1, UInt64(client))
        _ = LocalTrainer(network: simulation.network, batchCapacity: c.batchSize).train(
            parameters: &local, anchor: nil,
            data: DatasetSlice(dataset: SmallMNIST.train, indices: simulation.clientIndices[client]),
            epochs: 1, batchSize: c.batchSize, sgd: SGD(learningRate: Float(c.learningRate)), generator: &generator)
        let worst = zip(local, simulation.global).map { abs($0 - $1) }.max()!
        #expect(worst < 1e-6, "global differs from the single client's model by \(worst)")
    }

    @Test func sameSeedGivesTheSameRunWhateverTheThreads() throws {
        func run(threads: Int, seed: UInt64) throws -> [Float] {
            let c = configuration { $0.rounds = 2; $0.threads = threads; $0.seed = seed }
            let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
            _ = try simulation.run()
            return simulation.global
        }
        let one = try run(threads: 1, seed: 5)
        #expect(try run(threads: 2, seed: 5) == one, "2 worker threads changed the result")
        #expect(try run(threads: 1, seed: 6) != one)
    }

    @Test func clientSamplingIsSeededAndDistinct() throws {
        let simulation = try Simulation(configuration: configuration(), train: SmallMNIST.train, test: SmallMNIST.test)
        let a = simulation.sampleClients(round: 3)
        #expect(a == simulation.sampleClients(round: 3))
        #expect(a != simulation.sampleClients(round: 4))
        #expect(Set(a).count == a.count && a.allSatisfy { (0..<20).contains($0) })
    }

    @Test func stopsAtTarget() throws {
        let c = configuration { $0.rounds = 50; $0.targetMetric = 0.5; $0.stopAtTarget = true }
        let report = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test).run()
        #expect(report.rounds.count < 50)
        #expect(report.summary.roundsToTarget == report.rounds.count)
    }

    @Test func divergenceIsReportedAndTheModelKept() throws {
        let c = configuration { $0.learningRate = 1e8; $0.rounds = 3 }
        let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
        let before = simulation.global
        #expect { try simulation.runRound() } throws: { "\($0)".contains("diverged") && "\($0)".contains("learning_rate") }
        #expect(simulation.global == before, "a diverged round must not touch the global model")
        #expect(simulation.global.allSatisfy { $0.isFinite })
    }

    @Test func compressedUpdatesAreSmallerAndStillLearn() throws {
        func run(_ codec: String, downlink: String = "fp32+raw") throws -> SimulationReport {
            let c = configuration { $0.rounds = 6; $0.codec = try! CodecSpec(parsing: codec); $0.downlink = try! CodecSpec(parsing: downlink) }
            return try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test).run()
        }
        let fp32 = try run("fp32+raw")
        let q8 = try run("q8")
        let sparse = try run("topk:0.05+q8+ef", downlink: "q8")
        let ratio = Double(fp32.rounds[0].uplinkBytes) / Double(q8.rounds[0].uplinkBytes)
        #expect(ratio > 4, "q8 is only \(ratio)x smaller")
        #expect(Double(fp32.rounds[0].uplinkBytes) / Double(sparse.rounds[0].uplinkBytes) > 20)
        #expect(Double(fp32.rounds[0].downlinkBytes) / Double(sparse.rounds[0].downlinkBytes) > 3.5)
        let accuracy = { (r: SimulationReport) in r.summary.finalAccuracy ?? 0 }
        #expect(abs(accuracy(q8) - accuracy(fp32)) < 0.02, "q8 \(accuracy(q8)) vs fp32 \(accuracy(fp32))")
        #expect(accuracy(sparse) > 0.75, "top-k with error feedback learns: \(accuracy(sparse))")
    }

    @Test(arguments: ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
    func serverOptimizersTrain(name: String) throws {
        let c = configuration {
            $0.rounds = 5
            $0.serverOptimizer = name
            $0.serverLearningRate = name == "fedavgm" ? 1 : 0.03
            $0.serverMomentum = name == "fedavgm" ? 0.5 : 0.9
        }
        let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
        let report = try simulation.run()
        let accuracies = report.rounds.compactMap(\.testMetric)
        #expect(accuracies.last! > 0.7, "\(name): \(accuracies)")
        #expect(simulation.serverOptimizer.settings.kind.rawValue == name)
        #expect(!simulation.serverOptimizer.m.isEmpty)
    }

    @Test func codecRunsAreReproducible() throws {
        func run() throws -> [Float] {
            let c = configuration { $0.rounds = 2; $0.codec = try! CodecSpec(parsing: "topk:0.1+q4+sr+ef") }
            let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
            _ = try simulation.run()
            return simulation.global
        }
        #expect(try run() == run())
    }

    @Test func unknownServerOptimizerIsRefused() {
        let c = configuration { $0.serverOptimizer = "fedsgd2" }
        #expect { try c.validate() } throws: { "\($0)".contains("server_optimizer") }
    }

    @Test(arguments: [("codec", "q7"), ("codec", "topk:3+q8"), ("downlink", "topk:0.1+q8"), ("downlink", "q8+ef")])
    func badCodecSpecsAreConfigurationErrors(key: String, value: String) {
        #expect { try SimulationConfiguration.parse("\(key) = \"\(value)\"", source: "s.toml") } throws: { "\($0)".hasPrefix("s.toml: " + key + ":") }
    }

    /// Also with low-rank factors, whose warm starts travel in every TRAINING_TASK (version 4).
    @Test(arguments: ["fp32+raw", "lowrank:2+q8+ef"]) func tcpTransportMatchesMemoryTransport(codec: String) async throws {
        let spec = try CodecSpec(parsing: codec)
        let memory = try Simulation(configuration: configuration { $0.rounds = 3; $0.codec = spec }, train: SmallMNIST.train, test: SmallMNIST.test)
        let viaMemory = try memory.run()
        let tcp = try Simulation(configuration: configuration { $0.rounds = 3; $0.codec = spec; $0.transport = .tcp }, train: SmallMNIST.train, test: SmallMNIST.test)
        let viaTCP = try await tcp.runOverTCP()
        #expect(viaTCP.rounds.count == 3)
        for (a, b) in zip(viaMemory.rounds, viaTCP.rounds) {
            #expect(abs(a.testMetric! - b.testMetric!) < 0.01, "round \(a.round): memory \(a.testMetric!) tcp \(b.testMetric!)")
            #expect(a.clients == b.clients)
            #expect(a.selected == b.selected && a.dropped == b.dropped && a.late == b.late, "round \(a.round): the TCP report keeps selected, dropped and late")
        }
        #expect(viaTCP.rounds.allSatisfy { $0.selected > 0 })
        // Same clients, same training, same encoder: the same update bytes in round 1.
        #expect(viaMemory.rounds[0].uplinkBytes == viaTCP.rounds[0].uplinkBytes)
        #expect(viaMemory.rounds[0].trainLoss == viaTCP.rounds[0].trainLoss || abs(viaMemory.rounds[0].trainLoss - viaTCP.rounds[0].trainLoss) < 1e-6)
    }

    @Test func hundredsOfTCPClientsInOneProcess() async throws {
        // 300 real daemons on 300 sockets; the selected ones free their model after uploading,
        // so the third round must resend whole shards to any client selected again.
        let c = configuration { $0.clients = 300; $0.fraction = 0.05; $0.rounds = 3; $0.transport = .tcp }
        let report = try await Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test).runOverTCP()
        #expect(report.rounds.count == 3)
        #expect(report.rounds.allSatisfy { $0.clients == 15 })
        #expect(report.rounds.last!.testMetric! > report.rounds.first!.testMetric!)
    }

    @Test func moreShardsThanDataIsAConfigurationError() {
        let c = configuration { $0.clients = 4000; $0.partition = .shards }
        #expect { try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test) } throws: {
            "\($0)".contains("shards") && "\($0)".contains("examples")
        }
    }

    @Test func reportHasTheDocumentedKeys() throws {
        let c = configuration { $0.rounds = 2; $0.evaluateEvery = 2 }
        let report = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test).run()
        let json = try JSONSerialization.jsonObject(with: report.jsonData()) as! [String: Any]
        let config = json["config"] as! [String: Any]
        #expect(config["clients"] as? Int == 20)
        let rounds = json["rounds"] as! [[String: Any]]
        #expect(rounds.count == 2)
        for key in ["round", "test_accuracy", "test_loss", "clients", "uplink_bytes", "downlink_bytes", "seconds"] {
            #expect(rounds[0].keys.contains(key), "round object lacks \(key)")
        }
        #expect(rounds[0]["test_accuracy"] is NSNull, "round 1 is not evaluated with evaluate_every = 2")
        #expect(rounds[1]["test_accuracy"] as? Double != nil)
        // A client's own time: training and encoding take some, and less than its round.
        for round in report.rounds {
            let device = try #require(round.clientSeconds)
            #expect(device > 0 && device < round.seconds, "\(device) s of a \(round.seconds) s round")
        }
        // JSON carries the value (its text need not parse back to the same last bit).
        let written = try #require(rounds[0]["client_seconds"] as? Double)
        #expect(abs(written - report.rounds[0].clientSeconds!) <= 1e-9 * written)
    }
}
