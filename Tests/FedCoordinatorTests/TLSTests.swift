import Crypto
import FedClient
import FedModel
import FedProtocol
import Foundation
import SwiftASN1
import Testing
import X509
@testable import FedCoordinator

/// Throwaway certificates made at run time: a CA, a server certificate for 127.0.0.1 and
/// localhost, one for the DNS name coordinator.test only, a client certificate, and a second CA
/// with its own client (a stranger).
struct TestPKI {
    let directory: URL
    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("fedtls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let ca = try Self.authority("FederatedSwift test CA")
        let other = try Self.authority("Someone else's CA")
        try write("ca.pem", ca.certificate)
        try issue(by: ca, name: "coordinator", file: "server", server: true)
        try issue(by: ca, name: "coordinator", file: "named-server", server: true, names: [.dnsName("coordinator.test")])
        try issue(by: ca, name: "device-0", file: "client", server: false)
        try issue(by: other, name: "device-1", file: "stranger", server: false)
    }

    func remove() { try? FileManager.default.removeItem(at: directory) }

    typealias Authority = (certificate: Certificate, key: P256.Signing.PrivateKey, name: DistinguishedName)

    static func authority(_ commonName: String) throws -> Authority {
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName { CommonName(commonName) }
        let now = Date()
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now - 3600, notValidAfter: now + 86_400, issuer: name, subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                Critical(KeyUsage(keyCertSign: true))
            },
            issuerPrivateKey: .init(key))
        return (certificate, key, name)
    }

    func issue(
        by authority: Authority, name: String, file: String, server: Bool,
        names: [GeneralName] = [.dnsName("localhost"), .ipAddress(ASN1OctetString(contentBytes: [127, 0, 0, 1]))]
    ) throws {
        let key = P256.Signing.PrivateKey()
        let now = Date()
        let certificate = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now - 3600, notValidAfter: now + 86_400, issuer: authority.name,
            subject: try DistinguishedName { CommonName(name) },
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                try ExtendedKeyUsage([server ? .serverAuth : .clientAuth])
                if server {
                    SubjectAlternativeNames(names)
                }
            },
            issuerPrivateKey: .init(authority.key))
        try write("\(file).pem", certificate)
        try key.pemRepresentation.write(toFile: path("\(file).key"), atomically: true, encoding: .utf8)
    }

    func write(_ name: String, _ certificate: Certificate) throws {
        try certificate.serializeAsPEM().pemString.write(toFile: path(name), atomically: true, encoding: .utf8)
    }
}

@Suite(.serialized, .timeLimit(.minutes(3))) struct TLSTests {
    /// Runs `rounds` with these clients; with `waitForRounds` false the run is stopped once the
    /// clients have given up (for clients that cannot get in).
    func run(server: ServerTLS, clients: [(id: Int, tls: ClientTLS?)], rounds: Int = 2, waitForRounds: Bool = true) async throws -> (rounds: [CoordinatorRound], completed: [Int]) {
        var config = configuration(clients: clients.count, perRound: clients.count, rounds: rounds)
        config.minimumUpdates = clients.count
        config.tls = server
        config.roundDeadline = 20
        let deployment = try await Deployment.start(config)
        let shares = try Partition.iid.split(labels: Data6k.train.labels, classes: 10, clients: clients.count, seed: 5)
        let daemons = clients.enumerated().map { index, client in
            var c = ClientConfiguration(clientID: "device-\(client.id)", secret: testSecret("secret-\(client.id)"),
                                        data: DatasetSlice(dataset: Data6k.train, indices: shares[index]))
            c.port = deployment.port
            c.reconnect = false
            c.tls = client.tls
            return ClientDaemon(configuration: c)
        }
        let tasks = daemons.map { daemon in Task { await daemon.run() } }
        if !waitForRounds {
            for task in tasks { await task.value }
            deployment.run.cancel()
        }
        let result = waitForRounds ? try await deployment.rounds() : []
        for task in tasks { await task.value }
        var completed: [Int] = []
        for daemon in daemons { completed.append(await daemon.completedRounds.count) }
        return (result, completed)
    }

    @Test func clientsTrainOverTLS() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        let server = ServerTLS(certificatePath: pki.path("server.pem"), keyPath: pki.path("server.key"))
        let trusting = ClientTLS(caPath: pki.path("ca.pem"))
        let result = try await run(server: server, clients: [(0, trusting), (1, ClientTLS(caPath: pki.path("ca.pem"), serverName: "localhost"))])
        #expect(result.rounds.count == 2 && result.rounds.allSatisfy { $0.completed == 2 })
        #expect(result.completed == [2, 2])
    }

    @Test func aPlaintextClientOrOneThatDistrustsTheServerGetsNowhere() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var config = configuration(clients: 2, perRound: 2, rounds: 1)
        config.tls = ServerTLS(certificatePath: pki.path("server.pem"), keyPath: pki.path("server.key"))
        let deployment = try await Deployment.start(config)
        defer { deployment.run.cancel() }
        // (A wrong server name is tried below: NIOSSL also accepts a certificate whose IP address
        // matches the peer's, which this one's does.)
        for tls in [nil, ClientTLS(caPath: pki.path("stranger.pem")), ClientTLS()] as [ClientTLS?] {
            var c = ClientConfiguration(clientID: "device-0", secret: testSecret("secret-0"), data: DatasetSlice(dataset: Data6k.train, indices: [0, 1, 2]))
            c.port = deployment.port
            c.reconnect = false
            c.tls = tls
            let daemon = ClientDaemon(configuration: c)
            await daemon.run()
            #expect(await daemon.completedRounds.isEmpty)
        }
        #expect(await deployment.coordinator.history.isEmpty)
    }

    @Test func theServerNameIsChecked() async throws {
        // NIOSSL accepts a certificate that names either the expected host (DNS name) or the
        // connected IP address (RFC 6125, as NIOSSL implements it); this one names only a host.
        let pki = try TestPKI()
        defer { pki.remove() }
        let server = ServerTLS(certificatePath: pki.path("named-server.pem"), keyPath: pki.path("named-server.key"))
        let wrong = try await run(server: server, clients: [(0, ClientTLS(caPath: pki.path("ca.pem"), serverName: "other.test"))], rounds: 1, waitForRounds: false)
        #expect(wrong.completed == [0])
        let right = try await run(server: server, clients: [(0, ClientTLS(caPath: pki.path("ca.pem"), serverName: "coordinator.test"))], rounds: 1)
        #expect(right.completed == [1])
    }

    @Test func mutualTLSAdmitsOnlyClientsWithACertificateFromTheCA() async throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        var config = configuration(clients: 2, perRound: 1, rounds: 1)
        config.minimumClients = 1
        config.tls = ServerTLS(certificatePath: pki.path("server.pem"), keyPath: pki.path("server.key"), clientCAPath: pki.path("ca.pem"))
        let deployment = try await Deployment.start(config)
        // Without a certificate, and with one from another CA: refused during the TLS handshake.
        for (certificate, key) in [(nil, nil), (pki.path("stranger.pem"), pki.path("stranger.key"))] as [(String?, String?)] {
            var c = ClientConfiguration(clientID: "device-1", secret: testSecret("secret-1"), data: DatasetSlice(dataset: Data6k.train, indices: [0, 1, 2]))
            c.port = deployment.port
            c.reconnect = false
            c.tls = ClientTLS(caPath: pki.path("ca.pem"), certificatePath: certificate, keyPath: key)
            let daemon = ClientDaemon(configuration: c)
            await daemon.run()
            #expect(await daemon.completedRounds.isEmpty)
        }
        #expect(await deployment.coordinator.history.isEmpty)
        // With the CA's client certificate: in, and the round runs.
        var c = ClientConfiguration(clientID: "device-0", secret: testSecret("secret-0"), data: DatasetSlice(dataset: Data6k.train, indices: Array(0..<300)))
        c.port = deployment.port
        c.reconnect = false
        c.tls = ClientTLS(caPath: pki.path("ca.pem"), certificatePath: pki.path("client.pem"), keyPath: pki.path("client.key"))
        let daemon = ClientDaemon(configuration: c)
        let task = Task { await daemon.run() }
        let rounds = try await deployment.rounds()
        await task.value
        #expect(rounds.count == 1 && rounds[0].completed == 1)
    }

    @Test func missingOrBrokenFilesAreNamed() throws {
        let pki = try TestPKI()
        defer { pki.remove() }
        #expect(throws: TLSSetupError.self) { try ServerTLS(certificatePath: pki.path("nope.pem"), keyPath: pki.path("server.key")).makeContext() }
        try "not a certificate".write(toFile: pki.path("junk.pem"), atomically: true, encoding: .utf8)
        let error = #expect(throws: TLSSetupError.self) { try ServerTLS(certificatePath: pki.path("junk.pem"), keyPath: pki.path("server.key")).makeContext() }
        #expect(error?.description.contains("junk.pem") == true)
        #expect(throws: TLSSetupError.self) { try ClientTLS(caPath: pki.path("ca.pem"), certificatePath: pki.path("client.pem")).makeContext() }
    }
}
