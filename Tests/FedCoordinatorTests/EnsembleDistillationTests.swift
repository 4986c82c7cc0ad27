import FedModel
import FedStore
import Foundation
import Testing
@testable import FedCoordinator

/// FedDF on the coordinator: over real TCP, each round's aggregate is distilled from the
/// round's client models on the server's own examples before it is committed.
@Suite(.serialized) struct CoordinatorEnsembleDistillationTests {
    /// The last committed model of a 2-round run of 5 clients (all of them every round), with
    /// or without ensemble distillation, and its rounds.
    func run(ensemble: Bool) async throws -> (model: [Float], rounds: [CoordinatorRound]) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedfeddf-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var config = configuration(clients: 5, perRound: 5, rounds: 2)
        config.minimumUpdates = 5
        config.databasePath = directory.appendingPathComponent("run.sqlite").path
        config.trustedExamples = 1000
        config.ensemble.enabled = ensemble
        config.trustedDataPath = "(given below)"
        try config.validate()
        // The server's own examples, apart from the clients' and the test set.
        let deployment = try await Deployment.start(config, trusted: Data6k.subset(6000..<8000))
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 5, seed: 3)
        let tasks = (0..<5).map { i in Task { await deployment.client("device-\(i)", secret: "secret-\(i)", indices: shares[i]).run() } }
        let rounds = try await deployment.rounds()
        for task in tasks { await task.value }
        let model = try #require(try RunStore(path: config.databasePath!).lastCheckpoint()).model
        return (model, rounds)
    }

    @Test func theCommittedModelIsTheDistilledOne() async throws {
        let plain = try await run(ensemble: false)
        let fused = try await run(ensemble: true)
        #expect(fused.rounds.count == 2 && fused.rounds.allSatisfy { $0.completed == 5 })
        #expect(fused.rounds.last!.testMetric! > 0.75, "accuracy \(fused.rounds.map { $0.testMetric ?? 0 })")
        // The clients train the same way in both runs (their seeds and data); only the order
        // in which updates arrive differs, which moves FedAvg's sums by rounding alone.
        let difference = zip(plain.model, fused.model).map { abs($0 - $1) }.max()!
        #expect(difference > 1e-3, "the distilled model is FedAvg's (largest difference \(difference))")
    }

    @Test func itNeedsTheServersExamplesAndFedAvg() throws {
        var config = configuration(clients: 5, perRound: 5, rounds: 2)
        config.ensemble.enabled = true
        #expect { try config.validate() } throws: { "\($0)".contains("ensemble_distill needs trusted_data") }
        config.trustedDataPath = "/tmp/server-data"
        try config.validate()
        config.aggregation.rule = .median
        #expect { try config.validate() } throws: { "\($0)".contains("fedavg aggregator") }
        config.aggregation.rule = .fedavg
        #expect { try Coordinator(configuration: config, test: Data6k.test, trusted: nil) } throws: { "\($0)".contains("trusted_data") }
        // A sub-model client's teacher would be the full model with its places moved, not its own.
        config.widths = [0.5, 1]
        #expect { try config.validate() } throws: { "\($0)".contains("ensemble_distill") }
    }
}
