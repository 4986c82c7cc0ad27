import FedCoordinator
import FedModel
import FedRounds
import Foundation
import Testing
@testable import FedSim

/// Device classes by width (HeteroFL) in the simulator on real MNIST: each class trains its
/// nested sub-model, each weight is averaged over the clients that hold it, and the report
/// gives the global model's accuracy at every width.
@Suite struct WidthTests {
    func configuration(_ change: (inout SimulationConfiguration) -> Void = { _ in }) -> SimulationConfiguration {
        var c = SimulationConfiguration()
        c.clients = 20
        c.fraction = 0.5
        c.rounds = 4
        c.learningRate = 0.1
        c.seed = 11
        change(&c)
        return c
    }

    @Test func everyWidthLearnsAndEachWeightIsAveragedOverItsHolders() throws {
        let c = configuration { $0.widths = [0.25, 0.5, 1]; $0.widthShares = [0.4, 0.3, 0.3] }
        let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
        #expect((0..<3).map { k in simulation.widthClasses.filter { $0 == k }.count } == [8, 6, 6])
        let report = try simulation.run()
        let widths = report.summary.widths
        #expect(widths.map(\.width) == [0.25, 0.5, 1])
        #expect(widths.map(\.parameters) == [42_310, 89_610, 199_210])
        #expect(widths.reduce(0) { $0 + $1.updates } == 4 * 10)
        // Four short rounds: every width is far above chance (10%) already.
        #expect(widths.allSatisfy { $0.metric > 0.6 }, "accuracy by width: \(widths.map(\.metric))")
        #expect(widths[2].metric == report.rounds.last!.testMetric)
        let full = try Simulation(configuration: configuration(), train: SmallMNIST.train, test: SmallMNIST.test).run()
        #expect(report.summary.uplinkBytes * 10 < full.summary.uplinkBytes * 8, "narrow clients send less: \(report.summary.uplinkBytes) against \(full.summary.uplinkBytes)")
        #expect(widths[2].metric > full.rounds.last!.testMetric! - 0.15, "mixed \(widths[2].metric), all at full width \(full.rounds.last!.testMetric!)")
    }

    /// With every client at half width, the weights outside the half-width sub-model are never
    /// trained: they keep their initial values exactly, and the others move.
    @Test func weightsNoClientHoldsStayAsTheyWere() throws {
        let c = configuration { $0.widths = [0.5]; $0.widthShares = [1]; $0.rounds = 2 }
        let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
        let initial = simulation.global
        _ = try simulation.run()
        let sub = try #require(simulation.subModels[0])
        let held = Set(sub.positions.map(Int.init))
        let moved = simulation.global.indices.filter { simulation.global[$0] != initial[$0] }
        #expect(!moved.isEmpty && moved.allSatisfy(held.contains))
        // (The first layer's weights for pixels that are blank in every image never move.)
        #expect(Double(moved.count) > 0.75 * Double(held.count), "\(moved.count) of \(held.count) moved")
    }

    /// Every client at full width: without ordered dropout the half-width slice of the model is
    /// never trained as a model of its own; with it, half of the batches train exactly that slice.
    @Test func orderedDropoutKeepsTheNarrowWidthGood() throws {
        func halfWidthAccuracy(ordered: Bool) throws -> Double {
            let c = configuration { $0.widths = [0.5, 1]; $0.widthShares = [0, 1]; $0.orderedDropout = ordered; $0.rounds = 6 }
            let report = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test).run()
            #expect(report.summary.widths.map(\.updates) == [0, 60])
            return report.summary.widths[0].metric
        }
        let (plain, ordered) = (try halfWidthAccuracy(ordered: false), try halfWidthAccuracy(ordered: true))
        #expect(ordered > 0.7 && ordered > plain + 0.1, "half width: \(plain) without ordered dropout, \(ordered) with it")
        #expect { try configuration { $0.orderedDropout = true }.validate() } throws: { "\($0)".contains("ordered_dropout") }
    }

    /// Width 0: a class of devices that does not take part (only the others train).
    @Test func aClassOfWidthZeroSitsOut() throws {
        let c = configuration { $0.widths = [0, 1]; $0.widthShares = [0.7, 0.3]; $0.rounds = 2 }
        let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
        let report = try simulation.run()
        let takingPart = Set(simulation.widthClasses.indices.filter { simulation.widthClasses[$0] == 1 })
        #expect(takingPart.count == 6)
        #expect((1...2).allSatisfy { Set(simulation.sampleClients(round: $0)).isSubset(of: takingPart) })
        #expect(report.summary.widths.map(\.width) == [1] && report.summary.widths[0].updates == 2 * 6)
    }

    /// Frozen shards under the same budgets: every device holds the whole model and trains only
    /// the shards its class's budget picks (16 bytes per parameter of that width's sub-model, the
    /// coordinator's rule); each shard is averaged over the updates that carry it, the others'
    /// values stay as they were, and narrow devices send only their shards.
    @Test func frozenShardsTrainWhatTheBudgetPicks() throws {
        let c = configuration { $0.widths = [0.25, 0.5, 1]; $0.widthShares = [0.4, 0.3, 0.3]; $0.frozenShards = true; $0.rounds = 2 }
        let simulation = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test)
        let layout = simulation.network.layout
        let initial = simulation.global
        let report = try simulation.run()
        let widths = report.summary.widths
        #expect(widths.map(\.parameters) == [199_210, 199_210, 199_210])
        #expect(widths.reduce(0) { $0 + $1.updates } == 2 * 10)
        // At width 1/4 (677 KB) not even the model fits (797 KB): the smallest shard, the output
        // bias. At 1/2 (1.43 MB): the 200x200 layer and the output layer.
        let expected = [0.25, 0.5, 1.0].map { w -> [Int] in
            let parameters = w < 1 ? try! SubModel(of: simulation.network, fraction: w).network.parameterCount : 199_210
            return ClientSelection.shardsToTrain(layout: layout, memoryBudget: UInt64(16 * parameters)).map(Int.init)
        }
        #expect(widths.map(\.trainedParameters) == expected.map { $0.reduce(0) { $0 + layout.tensors[$1].count } })
        #expect(widths[0].trainedParameters == 10 && widths[1].trainedParameters == 42_410 && widths[2].trainedParameters == 199_210)
        #expect(Set(widths.map(\.metric)).count == 1, "every class runs the same full model")
        // Full-width devices took part (6 of 20), so every tensor moved.
        #expect(layout.tensors.allSatisfy { t in t.range.contains { simulation.global[$0] != initial[$0] } })
        // Same seed, only the two narrow classes: the tensors no narrow budget picks stay put.
        let narrow = configuration { $0.widths = [0.25, 0.5]; $0.widthShares = [0.5, 0.5]; $0.frozenShards = true; $0.rounds = 2 }
        let narrowRun = try Simulation(configuration: narrow, train: SmallMNIST.train, test: SmallMNIST.test)
        let narrowReport = try narrowRun.run()
        let picked = Set(expected[0] + expected[1])
        for t in layout.tensors {
            let moved = t.range.contains { narrowRun.global[$0] != initial[$0] }
            #expect(moved == picked.contains(t.index), "tensor \(t.name) moved: \(moved)")
        }
        let full = try Simulation(configuration: configuration { $0.rounds = 2 }, train: SmallMNIST.train, test: SmallMNIST.test).run()
        #expect(narrowReport.summary.uplinkBytes * 3 < full.summary.uplinkBytes, "narrow \(narrowReport.summary.uplinkBytes), full \(full.summary.uplinkBytes)")
        #expect { try configuration { $0.frozenShards = true }.validate() } throws: { "\($0)".contains("frozen_shards needs width classes") }
        #expect { try configuration { $0.widths = [0.5, 1]; $0.widthShares = [0.5, 0.5]; $0.frozenShards = true; $0.orderedDropout = true }.validate() } throws: {
            "\($0)".contains("do not combine")
        }
        #expect(try SimulationConfiguration.parse("frozen_shards = true", source: "t.toml").frozenShards)
    }

    /// Over TCP the real coordinator and client daemons run the same classes: each daemon
    /// declares its class's budget in HELLO, so the coordinator gives it that sub-model (or, with
    /// frozen shards, those shards), and a width-0 device never connects. The same clients
    /// deliver the same bytes as in memory, and the accuracy at each width agrees.
    @Test(arguments: [false, true]) func overTCPTheClassesMatchTheMemoryTransport(frozenShards: Bool) async throws {
        let c = configuration { $0.widths = [0, 0.25, 0.5, 1]; $0.widthShares = [0.2, 0.3, 0.2, 0.3]; $0.frozenShards = frozenShards; $0.rounds = 2 }
        let memory = try Simulation(configuration: c, train: SmallMNIST.train, test: SmallMNIST.test).run()
        var overTCP = c
        overTCP.transport = .tcp
        let tcp = try await Simulation(configuration: overTCP, train: SmallMNIST.train, test: SmallMNIST.test).runOverTCP()
        #expect(tcp.summary.widths.map(\.width) == [0.25, 0.5, 1])
        #expect(memory.summary.widths.map(\.updates) == tcp.summary.widths.map(\.updates))
        #expect(tcp.summary.widths.reduce(0) { $0 + $1.updates } == 2 * 10)
        #expect(memory.rounds[0].uplinkBytes == tcp.rounds[0].uplinkBytes, "memory \(memory.rounds[0].uplinkBytes), tcp \(tcp.rounds[0].uplinkBytes)")
        for (a, b) in zip(memory.summary.widths, tcp.summary.widths) {
            #expect(abs(a.metric - b.metric) < 0.02, "width \(a.width): memory \(a.metric), tcp \(b.metric)")
        }
    }

    @Test func badWidthClassesAreNamed() throws {
        let cases: [((inout SimulationConfiguration) -> Void, String)] = [
            ({ $0.widths = [0.5, 1]; $0.widthShares = [1] }, "one entry per device class"),
            ({ $0.widths = [0.5, 1]; $0.widthShares = [0.5, 0.6] }, "sum to 1"),
            ({ $0.widths = [-0.5, 1]; $0.widthShares = [0.5, 0.5] }, "(0, 1]"),
            ({ $0.widths = [0]; $0.widthShares = [1] }, "(0, 1]"),
            ({ $0.widths = [0.5, 0.5]; $0.widthShares = [0.5, 0.5] }, "distinct"),
            ({ $0.widths = [0.5, 1]; $0.widthShares = [0.5, 0.5]; $0.aggregator = "median" }, "robust aggregators"),
            ({ $0.widths = [0.5, 1]; $0.widthShares = [0.5, 0.5]; $0.orderedDropout = true; $0.transport = .tcp }, "transport tcp with ordered_dropout"),
        ]
        for (change, expected) in cases {
            #expect { try configuration(change).validate() } throws: { "\($0)".contains(expected) }
        }
        let parsed = try SimulationConfiguration.parse("widths = [0.25, 1]\nwidth_shares = [0.5, 0.5]", source: "t.toml")
        #expect(parsed.widths == [0.25, 1] && parsed.widthShares == [0.5, 0.5])
    }

    /// The command line: width classes, the accuracy by width, and a model exported at a width.
    @Test func fedsimReportsEveryWidthAndExportsANarrowModel() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("half-\(UUID().uuidString).fedmodel")
        defer { try? FileManager.default.removeItem(at: file) }
        let result = try FedSimProcess.run([
            "--config", "Simulations/mnist-2nn-iid.toml", "--rounds", "2", "--clients", "20", "--fraction", "0.5",
            "--widths", "0.5,1", "--width-shares", "0.5,0.5", "--export", file.path, "--export-width", "0.5", "--progress", "none",
        ])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.contains("fedsim: by width: 0.5 (89610 parameters, "), "\(result.stdout)")
        #expect(result.stdout.contains("the final model at width 0.5"))
        let exported = try BaseModel(path: file.path)
        #expect(exported.spec.layers == [.dense(outputs: 100), .relu, .dense(outputs: 100), .relu, .dense(outputs: 10)])
        let bad = try FedSimProcess.run(["--config", "Simulations/mnist-2nn-iid.toml", "--rounds", "1", "--widths", "0.5,1", "--width-shares", "0.7,0.7"])
        #expect(bad.status != 0 && bad.stderr.contains("width_shares"), "\(bad.stderr)")
    }
}
