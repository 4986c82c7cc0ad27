import FedClient
import FedCodec
import FedModel
import FedStore
import Foundation
import Testing
@testable import FedCoordinator

/// Device classes by width through the real coordinator and client daemons over TCP: each
/// client's memory budget picks its width, its WELCOME names that sub-model, it trains and
/// uploads only that, and the round reports the model's accuracy at every width.
@Suite(.serialized) struct WidthsOverTCPTests {
    @Test func threeBudgetClassesTrainOneModelThatEveryClassCanRun() async throws {
        var config = configuration(clients: 6, perRound: 6, rounds: 4)
        config.minimumUpdates = 6
        config.widths = [0.25, 0.5, 1]
        config.uplinkCodec = try CodecSpec(parsing: "fp32+raw")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("widths-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        config.databasePath = directory.appendingPathComponent("run.sqlite").path
        let network = try Network(config.model)
        let quarter = try SubModel(of: network, fraction: 0.25), half = try SubModel(of: network, fraction: 0.5)
        // Two devices fit only the quarter-width model, two the half, two state no budget.
        let budgets: [UInt64] = [UInt64(16 * quarter.network.parameterCount), UInt64(16 * quarter.network.parameterCount + 1000),
                                 UInt64(16 * half.network.parameterCount), UInt64(16 * half.network.parameterCount + 1000), 0, 0]
        let deployment = try await Deployment.start(config)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 6, seed: 1)
        let daemons = (0..<6).map { i in
            var c = ClientConfiguration(clientID: "device-\(i)", secret: testSecret("secret-\(i)"), data: DatasetSlice(dataset: Data6k.train, indices: shares[i]))
            c.port = deployment.port
            c.reconnect = false
            c.memoryBudget = budgets[i]
            return ClientDaemon(configuration: c)
        }
        let clientTasks = daemons.map { daemon in Task { await daemon.run() } }
        let history = try await deployment.rounds()
        for task in clientTasks { await task.value }

        #expect(history.count == 4 && history.allSatisfy { $0.completed == 6 && $0.refused == 0 }, "\(history.map { ($0.completed, $0.refused) })")
        #expect(history.allSatisfy { $0.byWidth.map(\.width) == [0.25, 0.5, 1] && $0.byWidth.map(\.updates) == [2, 2, 2] })
        let last = try #require(history.last?.byWidth)
        #expect(last.allSatisfy { ($0.metric ?? 0) > 0.75 }, "accuracy by width: \(last.map(\.metric))")
        #expect(last[2].metric == history.last!.testMetric)
        // Each narrow client uploads its sub-model only: 4 quarter-, 4 half-width updates and 4 whole.
        let full = 4 * network.parameterCount + 32 * 6, sizes = [quarter, half].map { 4 * $0.network.parameterCount + 32 * 6 }
        #expect(history[0].uplinkBytes == 2 * sizes[0] + 2 * sizes[1] + 2 * full, "uplink \(history[0].uplinkBytes)")
        let events = try RunStore(path: config.databasePath!).events(kind: "widths")
        #expect(events.count == 4 && events.last!.message.hasPrefix("round 4: width 0.25 accuracy "), "\(events.map(\.message))")
    }
}
