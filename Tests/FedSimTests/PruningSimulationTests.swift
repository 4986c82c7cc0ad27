import FedCodec
import FedCoordinator
import FedModel
import Foundation
import Testing
@testable import FedSim

/// Federated pruning in the simulator on real MNIST: the schedule's sparsity is reached, the
/// model keeps its zeros, updates shrink with the mask, and the pruned model exports sparse.
struct PruningSimulationTests {
    func configuration(prune sparsity: Double?) -> SimulationConfiguration {
        var c = SimulationConfiguration()
        c.clients = 20
        c.fraction = 0.25
        c.rounds = 8
        c.learningRate = 0.1
        c.seed = 5
        c.pruning = sparsity.map { PruningSchedule(sparsity: $0, startRound: 1, endRound: 4) }
        return c
    }

    @Test func aPrunedRunReachesItsSparsityAndSendsLess() throws {
        let dense = try Simulation(configuration: configuration(prune: nil), train: SmallMNIST.train, test: SmallMNIST.test).run()
        let simulation = try Simulation(configuration: configuration(prune: 0.8), train: SmallMNIST.train, test: SmallMNIST.test)
        let pruned = try simulation.run()
        let layout = simulation.network.layout
        #expect(pruned.rounds.map { $0.sparsity.map { ($0 * 100).rounded() / 100 } } == [0, 0.56, 0.77, 0.8, 0.8, 0.8, 0.8, 0.8],
                "s(t) = 0.8 − 0.8·(1 − (t − 1)/3)³; sparsity per round: \(pruned.rounds.map(\.sparsity))")
        #expect(dense.rounds.allSatisfy { $0.sparsity == nil })
        let mask = PruningMask(zerosOf: simulation.global, layout: layout)
        for index in PruningMask.prunable(layout) {
            let n = layout.tensors[index].count
            #expect(mask.kept[index]?.count == n - Int((0.8 * Double(n)).rounded()), "tensor \(index) is pruned per layer to 80%")
        }
        let ratio = Double(pruned.rounds.last!.uplinkBytes) / Double(dense.rounds.last!.uplinkBytes)
        #expect(ratio < 0.3, "a round's uplink at 80% sparsity is \(ratio) of the dense one's")
        let accuracy = pruned.rounds.last!.testMetric!, reference = dense.rounds.last!.testMetric!
        // 80% of the weights gone within 4 short rounds costs a few points this early; the
        // README's table measures the cost at round 200.
        #expect(accuracy > 0.8 && accuracy > reference - 0.05, "pruned \(accuracy), dense \(reference)")

        // Exported: sparse over the mask, a fraction of the dense file, the same accuracy.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pruning-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let q8 = try CodecSpec(parsing: "q8")
        let written = try ModelExport.write(model: simulation.global, network: simulation.network, codec: q8,
                                            to: directory.appendingPathComponent("pruned.fedmodel"), test: SmallMNIST.test)
        let whole = try ModelExport.write(model: simulation.global, network: simulation.network, codec: try CodecSpec(parsing: "q8+raw"),
                                          to: directory.appendingPathComponent("whole.fedmodel"), test: nil)
        #expect(written.nonzero <= simulation.network.parameterCount / 4)
        #expect(written.ratio > 8, "80% pruned and q8: \(written.ratio)x smaller than float32")
        #expect(whole.fileBytes > written.fileBytes)
        #expect(abs(written.exported!.accuracy - written.reference!.accuracy) < 0.005)
        let file = try Data(contentsOf: directory.appendingPathComponent("pruned.fedmodel"))
        #expect(file.count == written.fileBytes)
        #expect(String(decoding: file.prefix(11), as: UTF8.self) == "FEDMODEL 1\n")
    }

    @Test func pruningKeysAreReadAndCheckedFromAScenario() throws {
        let c = try SimulationConfiguration.parse("""
            rounds = 40
            prune_sparsity = 0.9
            prune_start = 5
            prune_every = 5
            prune_scope = "global"
            """, source: "test.toml")
        let schedule = try #require(c.pruning)
        #expect(schedule.sparsity == 0.9 && schedule.startRound == 5 && schedule.every == 5 && schedule.scope == .global)
        #expect(try schedule.resolved(rounds: 40).endRound == 20, "the end defaults to half the rounds")
        #expect { try SimulationConfiguration.parse("prune_start = 3", source: "t.toml") } throws: { "\($0)".contains("prune_sparsity") }
        var late = c
        late.pruning?.endRound = 50
        #expect { try late.validate() } throws: { "\($0)".contains("prune_end") }
        #expect { try SimulationConfiguration.parse("prune_sparsity = 0.5\nprune_scope = \"row\"", source: "t.toml") } throws: { "\($0)".contains("prune_scope") }
    }
}
