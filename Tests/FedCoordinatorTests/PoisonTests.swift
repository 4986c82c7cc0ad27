import FedClient
import FedCodec
import FedModel
import FedProtocol
import FedStore
import Foundation
import Testing
@testable import FedCoordinator

/// Poisoned updates over real sockets: the norm bound and a robust rule in the coordinator.
@Suite(.serialized, .timeLimit(.minutes(3))) struct PoisonTests {
    /// An update of `value` everywhere (a huge, finite delta), or with `noise`, Gaussian noise of
    /// that standard deviation.
    func constantUpdate(_ value: Float, noise: Bool = false, round: UInt32, version: UInt32, spec: String = "fp32+raw") throws -> Update {
        let layout = try Network(.mnist2NN).layout
        var g = SeededGenerator(seed: 1)
        var n = SeededGenerator(seed: UInt64(round))
        let shards = try layout.tensors.map { tensor in
            let values = (0..<tensor.count).map { _ in noise ? value * Float(n.nextGaussian()) : value }
            return ShardDelta(index: UInt16(tensor.index), encoded: try values.withUnsafeBufferPointer {
                try ShardCodec.encode($0, spec: CodecSpec(parsing: spec), generator: &g)
            })
        }
        return Update(round: round, modelVersion: version, exampleCount: 600, trainingLoss: 0.1, shards: shards)
    }

    /// Connects the registered device-4 and answers every task with 5.0 in every weight (or
    /// with noise of standard deviation 5).
    func startAttacker(port: Int, noise: Bool = false) async throws -> Task<Void, Error> {
        let attacker = try await FramedPeer.connect(port: port)
        guard case .welcome? = try await attacker.authenticate(id: "device-4", secret: "secret-4") else {
            throw CancellationError()
        }
        return Task {
            while let message = try await attacker.reader.next() {
                if case .trainingTask(let task) = message {
                    try await attacker.writer.send(.update(try constantUpdate(5, noise: noise, round: task.round, version: task.modelVersion)))
                }
            }
        }
    }

    /// Over sockets for the norm bound (its events reach the store); the robust rules are the
    /// same engine code and are tested on it (RoundEngineTests).
    @Test(arguments: ["norm_bound"])
    func aPoisonedUpdateDoesNotWreckTheModel(defense: String) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedpoison-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var config = configuration(clients: 5, perRound: 5, rounds: 3)
        config.minimumUpdates = 5
        config.databasePath = directory.appendingPathComponent("run.sqlite").path
        switch defense {
        case "norm_bound": config.aggregation.normBound = 2
        case "median": config.aggregation.rule = .median
        default: config.aggregation.rule = .multiKrum; config.aggregation.byzantine = 1
        }
        let deployment = try await Deployment.start(config)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 4, seed: 3)
        let tasks = (0..<4).map { i in Task { await deployment.client("device-\(i)", secret: "secret-\(i)", indices: shares[i]).run() } }
        let attack = try await startAttacker(port: deployment.port)
        let rounds = try await deployment.rounds()
        attack.cancel()
        for task in tasks { await task.value }
        #expect(rounds.count == 3)
        #expect(rounds.allSatisfy { $0.completed == 5 }, "the attacker's updates arrive and are accepted on the wire")
        #expect(rounds.last!.testMetric! > 0.7, "accuracy \(rounds.map { $0.testMetric ?? 0 })")
        if defense == "norm_bound" {
            let events = try RunStore(path: config.databasePath!).events(kind: "norm_bound")
            #expect(events.count == 3 && events.allSatisfy { $0.client == "device-4" }, "\(events)")
        }
    }

    @Test func aHugeFiniteUpdateNeverReachesACheckpoint() async throws {
        // A client whose error-feedback state went to 1e30 sends right-sized, finite updates
        // of 1e30 in every value; the coordinator runs with its default settings.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedhuge-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var config = configuration(clients: 5, perRound: 5, rounds: 3)
        config.minimumUpdates = 5
        config.databasePath = directory.appendingPathComponent("run.sqlite").path
        let deployment = try await Deployment.start(config)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 4, seed: 3)
        let tasks = (0..<4).map { i in Task { await deployment.client("device-\(i)", secret: "secret-\(i)", indices: shares[i]).run() } }
        let attacker = try await FramedPeer.connect(port: deployment.port)
        guard case .welcome? = try await attacker.authenticate(id: "device-4", secret: "secret-4") else { throw CancellationError() }
        let attack = Task {
            while let message = try await attacker.reader.next() {
                if case .trainingTask(let task) = message {
                    try await attacker.writer.send(.update(try constantUpdate(1e30, round: task.round, version: task.modelVersion)))
                }
            }
        }
        let rounds = try await deployment.rounds()
        attack.cancel()
        for task in tasks { await task.value }
        #expect(rounds.count == 3)
        print("huge finite update: accuracy per round \(rounds.map { $0.testMetric ?? 0 })")
        #expect(rounds.last!.testMetric! > 0.7, "accuracy \(rounds.map { $0.testMetric ?? 0 })")
        let store = try RunStore(path: config.databasePath!)
        for round in try store.checkpointRounds() {
            let model = try #require(try store.checkpoint(round: round)).model
            #expect(model.allSatisfy { $0.isFinite && abs($0) < 10 }, "checkpoint \(round) is poisoned")
        }
        #expect(try store.events(kind: "rejected").count >= 1, "round 1's poisoned model was refused")
    }

    @Test(arguments: [false, true])
    func theTrustRuleLeavesOutOrClipsTheAttacker(noise: Bool) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedtrust-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var config = configuration(clients: 5, perRound: 5, rounds: 3)
        config.minimumUpdates = 5
        config.databasePath = directory.appendingPathComponent("run.sqlite").path
        config.aggregation.rule = .trust
        config.trustedExamples = 500
        // The server's own examples, apart from the clients' and the test set.
        let deployment = try await Deployment.start(config, trusted: Data6k.subset(6000..<8000))
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 4, seed: 3)
        let tasks = (0..<4).map { i in Task { await deployment.client("device-\(i)", secret: "secret-\(i)", indices: shares[i]).run() } }
        let attack = try await startAttacker(port: deployment.port, noise: noise)
        let rounds = try await deployment.rounds()
        attack.cancel()
        for task in tasks { await task.value }
        #expect(rounds.count == 3)
        print("huge finite update: accuracy per round \(rounds.map { $0.testMetric ?? 0 })")
        #expect(rounds.last!.testMetric! > 0.7, "accuracy \(rounds.map { $0.testMetric ?? 0 })")
        let store = try RunStore(path: config.databasePath!)
        let untrusted = try store.events(kind: "untrusted")
        let clipped = try store.events(kind: "norm_bound")
        if noise {
            // Random directions score about 0: below the threshold every round.
            #expect(untrusted.count == 3 && untrusted.allSatisfy { $0.client == "device-4" }, "\(untrusted)")
        } else {
            // A constant shift: left out or, if its score passes, clipped to the honest norms.
            let attacker = (untrusted + clipped).filter { $0.client == "device-4" }
            #expect(attacker.count >= 3, "\(untrusted) \(clipped)")
        }
        #expect(untrusted.allSatisfy { $0.client == "device-4" }, "no honest client is left out: \(untrusted)")
        // The clients' records are committed with the rounds (a restart picks them up).
        let records = try store.trustRecords()
        #expect(Set(records.keys) == ["device-0", "device-1", "device-2", "device-3", "device-4"] && records.values.allSatisfy { $0.updates == 3 })
        if noise { #expect(records["device-4"]!.trust < records["device-0"]!.trust) }
    }

    @Test func withoutADefenseThePoisonWins() async throws {
        // The control: plain FedAvg, without the default update bound and commit guard, takes
        // the attacker's 5.0 at a fifth of its weight.
        var config = configuration(clients: 5, perRound: 5, rounds: 1)
        config.updateBound = 0
        config.lossGuard = 0
        let deployment = try await Deployment.start(config)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 4, seed: 3)
        let tasks = (0..<4).map { i in Task { await deployment.client("device-\(i)", secret: "secret-\(i)", indices: shares[i]).run() } }
        let attack = try await startAttacker(port: deployment.port)
        let rounds = try await deployment.rounds()
        attack.cancel()
        for task in tasks { await task.value }
        #expect(rounds[0].testMetric! < 0.5, "accuracy \(rounds[0].testMetric!)")
    }

    /// A round that closes early below quorum (here a client that drops its connection on
    /// every task and reconnects at once, with a quorum that needs it) is drawn again after a
    /// pause that doubles (0.1 s to 5 s), not as fast as the client can reconnect.
    @Test func aRoundAbandonedBelowQuorumIsRetriedAfterAPause() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedretry-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var config = configuration(clients: 2, perRound: 2, rounds: 1)
        config.minimumUpdates = 2
        config.databasePath = directory.appendingPathComponent("run.sqlite").path
        let deployment = try await Deployment.start(config)
        let honest = Task { await deployment.client("device-0", secret: "secret-0", indices: Array(0..<100)).run() }
        let dropper = Task {
            while !Task.isCancelled {
                let peer = try await FramedPeer.connect(port: deployment.port)
                guard case .welcome? = try await peer.authenticate(id: "device-1", secret: "secret-1") else { return }
                while let message = try await peer.reader.next() {
                    if case .trainingTask = message { break } // leaves: the round loses it at once
                }
            }
        }
        try await Task.sleep(nanoseconds: 2_000_000_000)
        dropper.cancel()
        await deployment.coordinator.stop()
        _ = try? await deployment.rounds()
        await honest.value
        let attempts = try RunStore(path: config.databasePath!).events(kind: "abandoned").count
        // 0.1 + 0.2 + 0.4 + 0.8 s of pauses fit in 2 s: about 5 attempts, not dozens.
        #expect((2...7).contains(attempts), "\(attempts) attempts in 2 s")
    }
}
