import FedClient
import FedModel
import FedProtocol
import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import FedCoordinator

let repositoryRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// Real MNIST cut down: 6,000 training examples for the clients, 2,000 test examples.
enum Data6k {
    static let full = try! MNIST.load(directory: repositoryRoot.appendingPathComponent("Simulations/data/mnist"), train: false)
    static let train = subset(0..<6000)
    static let test = subset(8000..<10_000)
    static func subset(_ range: Range<Int>) -> Dataset {
        let width = full.sampleShape.count
        return try! Dataset(name: "mnist[\(range)]", sampleShape: .vector(784), classes: 10,
                            features: Array(full.features[(range.lowerBound * width)..<(range.upperBound * width)]),
                            labels: Array(full.labels[range]))
    }
}

/// A coordinator on 127.0.0.1 with an OS-chosen port, and its clients, all in this process.
struct Deployment {
    let coordinator: Coordinator
    let port: Int
    let run: Task<[CoordinatorRound], Error>

    static func start(_ configuration: CoordinatorConfiguration, trusted: Dataset? = nil) async throws -> Deployment {
        let coordinator = try Coordinator(configuration: configuration, test: Data6k.test, trusted: trusted)
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let run = Task { try await coordinator.run(onBound: { continuation.yield($0) }) }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw CancellationError() }
        return Deployment(coordinator: coordinator, port: port, run: run)
    }

    /// The run's rounds; if the test is cancelled (its time limit), the run is cancelled too,
    /// so a stuck round fails the test instead of hanging the suite.
    func rounds() async throws -> [CoordinatorRound] {
        try await withTaskCancellationHandler { try await run.value } onCancel: { run.cancel() }
    }

    func client(_ id: String, secret: String, indices: [Int32], protocolVersions: [UInt8] = Array(Frame.supportedVersions)) -> ClientDaemon {
        var c = ClientConfiguration(clientID: id, secret: testSecret(secret), data: DatasetSlice(dataset: Data6k.train, indices: indices))
        c.port = port
        c.reconnect = false
        c.protocolVersions = protocolVersions
        return ClientDaemon(configuration: c)
    }
}

func configuration(clients: Int, perRound: Int, rounds: Int) -> CoordinatorConfiguration {
    var c = CoordinatorConfiguration()
    c.port = 0
    c.rounds = rounds
    c.minimumClients = clients
    c.clientsPerRound = perRound
    c.overSelection = 1
    c.minimumUpdates = max(1, perRound / 2)
    c.roundDeadline = 60
    c.learningRate = 0.1
    for i in 0..<clients { c.clientKeys["device-\(i)"] = testPublicKey("secret-\(i)") }
    return c
}

@Suite(.serialized) struct CoordinatorTests {
    @Test func twentyClientsThreeRoundsOverTCP() async throws {
        let deployment = try await Deployment.start(configuration(clients: 20, perRound: 10, rounds: 3))
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 20, seed: 1)
        let daemons = (0..<20).map { deployment.client("device-\($0)", secret: "secret-\($0)", indices: shares[$0]) }
        let clientTasks = daemons.map { daemon in Task { await daemon.run() } }
        let history = try await deployment.run.value
        for task in clientTasks { await task.value }

        #expect(history.count == 3)
        let accuracies = history.compactMap(\.testMetric)
        #expect(accuracies.count == 3 && accuracies.last! > accuracies.first!, "accuracy per round: \(accuracies)")
        #expect(accuracies.last! > 0.7)
        #expect(history.allSatisfy { $0.selected == 10 && $0.completed == 10 && $0.refused == 0 })
        // Every participation accounted for: what the clients uploaded is what the rounds counted.
        var uploaded = 0
        for daemon in daemons { uploaded += await daemon.completedRounds.count }
        #expect(uploaded == history.reduce(0) { $0 + $1.completed })
        #expect(history.allSatisfy { $0.uplinkBytes > 10 * 199_210 * 4 && $0.downlinkBytes > 0 })
    }

    /// With `max_tasks_in_flight`, the round's other clients wait their turn and are sent their
    /// task as updates come back: never more than the bound at once, and every round completes.
    @Test func tasksInFlightStayWithinTheBound() async throws {
        var config = configuration(clients: 6, perRound: 6, rounds: 2)
        config.minimumUpdates = 6
        config.maximumTasksInFlight = 2
        let deployment = try await Deployment.start(config)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 6, seed: 1)
        let daemons = (0..<6).map { deployment.client("device-\($0)", secret: "secret-\($0)", indices: shares[$0]) }
        let sampler = Task {
            var most = 0
            while !Task.isCancelled {
                most = max(most, await deployment.coordinator.tasksInFlight.count)
                try? await Task.sleep(nanoseconds: 200_000)
            }
            return most
        }
        let clientTasks = daemons.map { daemon in Task { await daemon.run() } }
        let history = try await deployment.run.value
        for task in clientTasks { await task.value }
        sampler.cancel()
        let most = await sampler.value
        #expect(history.count == 2 && history.allSatisfy { $0.selected == 6 && $0.completed == 6 })
        #expect(most >= 1 && most <= 2, "at most \(most) tasks were in flight at once")
    }
}
