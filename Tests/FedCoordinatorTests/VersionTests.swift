import FedClient
import FedCodec
import FedModel
import FedProtocol
import Testing
@testable import FedCoordinator

/// Protocol versioning (Protocol.md §1, §2): a coordinator serves version-1 clients with what
/// version 1 can express, beside version-2 clients, over a quantized downlink whose shard
/// hashes both must match bit for bit.
@Suite(.serialized) struct VersionTests {
    @Test func versionOneAndVersionTwoClientsTrainTogether() async throws {
        var config = configuration(clients: 4, perRound: 4, rounds: 2)
        config.minimumUpdates = 4
        config.downlinkCodec = try CodecSpec(parsing: "q8")
        config.uplinkCodec = try CodecSpec(parsing: "topk:0.1+q8+ef")
        let deployment = try await Deployment.start(config)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: 4, seed: 3)
        let daemons = (0..<4).map { i in
            deployment.client("device-\(i)", secret: "secret-\(i)", indices: shares[i], protocolVersions: i < 2 ? [1] : [1, 2])
        }
        let tasks = daemons.map { daemon in Task { await daemon.run() } }
        let history = try await deployment.rounds()
        for task in tasks { await task.value }
        #expect(history.count == 2)
        #expect(history.allSatisfy { $0.completed == 4 }, "every client, either version, is in every round")
        for daemon in daemons {
            #expect(await daemon.completedRounds == [1, 2])
            #expect(await daemon.goodbyeReason == "training finished")
            #expect(await daemon.fatalError == nil)
        }
    }

    @Test func aClientOfferingOnlyAnUnknownVersionIsRefused() async throws {
        let deployment = try await Deployment.start(configuration(clients: 4, perRound: 1, rounds: 1))
        defer { deployment.run.cancel() }
        let peer = try await FramedPeer.connect(port: deployment.port)
        guard case .error(let code, _)? = try await peer.authenticate(id: "device-0", secret: "secret-0", versions: [Frame.currentVersion + 1, 7]) else {
            Issue.record("a client speaking only unknown versions was not refused")
            return
        }
        #expect(code == ProtocolError.Code.unsupportedVersion.rawValue)
        // fedclient takes it as an error waiting cannot fix.
        let daemon = deployment.client("device-1", secret: "secret-1", indices: [0, 1, 2], protocolVersions: [Frame.currentVersion + 1])
        await daemon.run()
        #expect(await daemon.fatalError?.contains("protocol version") == true)
    }

    /// A coordinator that is stopped (not finished) tells version-2 clients it is going away,
    /// so they reconnect later; version-1 clients, for which any GOODBYE ends the run, only
    /// see the connection close.
    @Test func aStoppingCoordinatorSaysGoingAwayToVersionTwoOnly() async throws {
        let deployment = try await Deployment.start(configuration(clients: 4, perRound: 1, rounds: 1))
        let v2 = try await FramedPeer.connect(port: deployment.port)
        let v1 = try await FramedPeer.connect(port: deployment.port)
        guard case .welcome? = try await v2.authenticate(id: "device-0", secret: "secret-0", versions: [1, 2]),
              case .welcome? = try await v1.authenticate(id: "device-1", secret: "secret-1", versions: [1]) else {
            Issue.record("not welcomed")
            return
        }
        await deployment.coordinator.stop()
        var saidToV2: [Message] = []
        while let message = try? await v2.reader.next() { saidToV2.append(message) }
        #expect(saidToV2.contains { if case .goodbye(let g) = $0 { g.code == .goingAway } else { false } }, "\(saidToV2)")
        var saidToV1: [Message] = []
        while let message = try? await v1.reader.next() { saidToV1.append(message) }
        #expect(!saidToV1.contains { if case .goodbye = $0 { true } else { false } }, "\(saidToV1)")
    }
}
