import FedClient
import FedModel
import Testing
@testable import FedCoordinator

/// Federated pruning through the real coordinator and client daemons over TCP: the mask goes
/// out as sparse model shards, the clients train only the kept weights and send sparse updates.
@Suite(.serialized) struct PruningOverTCPTests {
    @Test func clientsTrainOnlyTheKeptWeightsAndUpdatesTravelSparse() async throws {
        var config = configuration(clients: 4, perRound: 4, rounds: 5)
        config.minimumUpdates = 4
        config.pruning = PruningSchedule(sparsity: 0.8, startRound: 1, endRound: 3)
        let deployment = try await Deployment.start(config)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 4, seed: 1)
        let daemons = (0..<4).map { deployment.client("device-\($0)", secret: "secret-\($0)", indices: shares[$0]) }
        let clientTasks = daemons.map { daemon in Task { await daemon.run() } }
        let history = try await deployment.rounds()
        for task in clientTasks { await task.value }

        #expect(history.count == 5 && history.allSatisfy { $0.completed == 4 && $0.refused == 0 }, "\(history.map { ($0.completed, $0.refused) })")
        #expect(history.map { $0.sparsity.map { ($0 * 100).rounded() / 100 } } == [0, 0.7, 0.8, 0.8, 0.8],
                "sparsity per round: \(history.map(\.sparsity))")
        let network = try Network(config.model)
        let global = await deployment.coordinator.global
        let mask = PruningMask(zerosOf: global, layout: network.layout)
        #expect(abs(mask.sparsity(layout: network.layout) - 0.8) < 0.01, "the committed model holds its pruned zeros")
        // fp32+raw: a dense update is 4 bytes a weight; over a 20% mask about 5 (value and index).
        let dense = 4 * (199_210 * 4 + 6 * 32)
        #expect(history[0].uplinkBytes >= dense)
        #expect(history[4].uplinkBytes < dense * 32 / 100, "round 5 uploaded \(history[4].uplinkBytes) bytes, dense is \(dense)")
        #expect(history[4].downlinkBytes < history[0].downlinkBytes * 32 / 100, "the model goes out sparse too")
        #expect(history.last!.testMetric! > 0.8, "accuracy per round: \(history.map(\.testMetric))")
    }
}
