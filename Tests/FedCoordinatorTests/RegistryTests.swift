import FedClient
import FedModel
import FedProtocol
import FedStore
import Foundation
import Testing
@testable import FedCoordinator

/// Clients registered in the database (`fedcoord clients add`), revoked, unknown and replaying.
@Suite(.serialized, .timeLimit(.minutes(3))) struct RegistryTests {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedreg-\(UUID().uuidString)")

    func start(minimumClients: Int = 3) async throws -> (Deployment, RunStore) {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent("run.sqlite").path
        let store = try RunStore(path: path)
        try store.addCredential(id: "dev-a", publicKey: testPublicKey("key-a"))
        try store.addCredential(id: "dev-b", publicKey: testPublicKey("key-b"))
        try store.revokeCredential(id: "dev-b")
        var c = configuration(clients: 0, perRound: 1, rounds: 1)
        c.minimumClients = minimumClients
        c.databasePath = path
        return (try await Deployment.start(c), store)
    }

    @Test func onlyActiveRegisteredClientsWithTheRightKeyGetIn() async throws {
        defer { try? FileManager.default.removeItem(at: directory) }
        let (deployment, store) = try await start()
        defer { deployment.run.cancel() }
        let refused = Message.error(code: ProtocolError.Code.authenticationFailed.rawValue, message: "authentication failed for client \"dev-b\"")
        guard case .welcome? = try await FramedPeer.connect(port: deployment.port).authenticate(id: "dev-a", secret: "key-a") else {
            Issue.record("a registered client was refused")
            return
        }
        #expect(try await FramedPeer.connect(port: deployment.port).authenticate(id: "dev-b", secret: "key-b") == refused)
        if case .error(let code, _)? = try await FramedPeer.connect(port: deployment.port).authenticate(id: "dev-a", secret: "key-b") {
            #expect(code == ProtocolError.Code.authenticationFailed.rawValue)
        } else {
            Issue.record("a wrong key was accepted")
        }
        if case .error(let code, _)? = try await FramedPeer.connect(port: deployment.port).authenticate(id: "stranger", secret: "key-a") {
            #expect(code == ProtocolError.Code.authenticationFailed.rawValue)
        } else {
            Issue.record("an unknown client was accepted")
        }
        // Every refusal is an event naming the client it claimed to be.
        let events = try store.events(kind: "refusal")
        #expect(Set(events.compactMap(\.client)).isSuperset(of: ["dev-b", "stranger", "dev-a"]), "\(events)")
        #expect(events.contains { $0.message.contains("bad signature") })
        #expect(events.contains { $0.message.contains("unknown or revoked") })
    }

    @Test func aReplayedSignatureFails() async throws {
        defer { try? FileManager.default.removeItem(at: directory) }
        let (deployment, _) = try await start()
        defer { deployment.run.cancel() }
        // An eavesdropper records a genuine signature and replays it on its own connection.
        let genuine = try await FramedPeer.connect(port: deployment.port)
        try await genuine.writer.send(.hello(Hello(clientID: "dev-a", protocolVersions: [Frame.currentVersion], codecs: ["fp32", "fp16", "q8", "q4", "q2", "sign", "topk"], memoryBudget: 0, exampleCount: 10)))
        guard case .challenge(let nonce, _)? = try await genuine.reader.next() else { Issue.record("no challenge"); return }
        let recorded = try Authentication.sign(secret: testSecret("key-a"), nonce: nonce, clientID: "dev-a")
        let replayer = try await FramedPeer.connect(port: deployment.port)
        try await replayer.writer.send(.hello(Hello(clientID: "dev-a", protocolVersions: [Frame.currentVersion], codecs: ["fp32", "fp16", "q8", "q4", "q2", "sign", "topk"], memoryBudget: 0, exampleCount: 10)))
        guard case .challenge? = try await replayer.reader.next() else { Issue.record("no challenge"); return }
        try await replayer.writer.send(.authenticate(signature: recorded))
        guard case .error(let code, _)? = try await replayer.reader.next() else { Issue.record("the replay was accepted"); return }
        #expect(code == ProtocolError.Code.authenticationFailed.rawValue)
    }

    @Test func aClientRevokedWhileConnectedIsDisconnected() async throws {
        defer { try? FileManager.default.removeItem(at: directory) }
        let (deployment, store) = try await start()
        defer { deployment.run.cancel() }
        let peer = try await FramedPeer.connect(port: deployment.port)
        guard case .welcome? = try await peer.authenticate(id: "dev-a", secret: "key-a") else { Issue.record("refused"); return }
        // `fedcoord clients revoke dev-a` from another process: a second handle on the file.
        try RunStore(path: store.path).revokeCredential(id: "dev-a")
        let start = Date()
        #expect(try await peer.nextError() == .authenticationFailed)
        #expect(Date().timeIntervalSince(start) < 10)
        // And it cannot come back.
        guard case .error? = try await FramedPeer.connect(port: deployment.port).authenticate(id: "dev-a", secret: "key-a") else {
            Issue.record("a revoked client got back in")
            return
        }
    }
}

@Suite struct ExampleCoordinatorConfigurationTests {
    @Test func documentedExampleLoadsAndListsEveryKey() throws {
        let url = repositoryRoot.appendingPathComponent("Configs/coordinator.toml")
        let (configuration, testData) = try CoordinatorConfiguration.load(contentsOf: url)
        #expect(configuration.clientKeys.keys.sorted() == ["device-1", "device-2"])
        #expect(FileManager.default.fileExists(atPath: try #require(testData).appendingPathComponent("t10k-images-idx3-ubyte.gz").path))
        let lines = try String(contentsOf: url, encoding: .utf8).split(separator: "\n").map { $0.drop { $0 == "#" || $0 == " " } }
        for key in CoordinatorConfiguration.keys where key != "clients" {
            #expect(lines.contains { $0.hasPrefix(key + " =") }, "\(key) is not in Configs/coordinator.toml")
        }
        #expect(lines.contains { $0.hasPrefix("[clients]") })
    }

    /// The own-task example the README walks through: a regression over TCP.
    @Test func ownTaskExampleLoads() throws {
        let (configuration, testData) = try CoordinatorConfiguration.load(contentsOf: repositoryRoot.appendingPathComponent("Configs/own-task-coordinator.toml"))
        try configuration.validate()
        #expect(configuration.model.wireDescription == "10|1|dense:32,relu,dense:1|mse" && configuration.targetMetric == 55)
        #expect(FileManager.default.fileExists(atPath: try #require(testData).appendingPathComponent("test_x.npy").path))
    }
}
