import Foundation
import NIOCore
import NIOSSL

/// TLS for the coordinator's listener (certificate and key files; with a client CA, mutual TLS:
/// every client must present a certificate that CA signed).
public struct ServerTLS: Sendable, Equatable {
    public var certificatePath: String
    public var keyPath: String
    /// PEM file of the CA(s) whose client certificates are accepted; nil = no client certificates.
    public var clientCAPath: String?

    public init(certificatePath: String, keyPath: String, clientCAPath: String? = nil) {
        self.certificatePath = certificatePath
        self.keyPath = keyPath
        self.clientCAPath = clientCAPath
    }

    /// Loads the files; a missing or unreadable file is a ``TLSSetupError`` naming it.
    public func makeContext() throws -> NIOSSLContext {
        let chain = try load(certificatePath, "certificate") { try NIOSSLCertificate.fromPEMFile($0) }
        let key = try load(keyPath, "private key") { try NIOSSLPrivateKey(file: $0, format: .pem) }
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        if let clientCAPath {
            let roots = try load(clientCAPath, "client CA") { try NIOSSLCertificate.fromPEMFile($0) }
            configuration.trustRoots = .certificates(roots)
            // Client certificates name devices, not hosts: the chain is checked, not a hostname.
            configuration.certificateVerification = .noHostnameVerification
        }
        return try NIOSSLContext(configuration: configuration)
    }
}

/// TLS for a client daemon: which CA signs the coordinator's certificate (nil = the system's
/// trust store), the name to check it against, and for mutual TLS the client's own certificate.
public struct ClientTLS: Sendable, Equatable {
    public var caPath: String?
    public var certificatePath: String?
    public var keyPath: String?
    /// The name the coordinator's certificate must carry (nil = the host connected to; an IP
    /// address is checked against the certificate's IP addresses).
    public var serverName: String?

    public init(caPath: String? = nil, certificatePath: String? = nil, keyPath: String? = nil, serverName: String? = nil) {
        self.caPath = caPath
        self.certificatePath = certificatePath
        self.keyPath = keyPath
        self.serverName = serverName
    }

    public func makeContext() throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        if let caPath {
            configuration.trustRoots = .certificates(try load(caPath, "CA") { try NIOSSLCertificate.fromPEMFile($0) })
        }
        switch (certificatePath, keyPath) {
        case (nil, nil): break
        case (let certificate?, let key?):
            configuration.certificateChain = try load(certificate, "certificate") { try NIOSSLCertificate.fromPEMFile($0) }.map { .certificate($0) }
            configuration.privateKey = .privateKey(try load(key, "private key") { try NIOSSLPrivateKey(file: $0, format: .pem) })
        default:
            throw TLSSetupError("a client certificate needs both tls_certificate and tls_key")
        }
        return try NIOSSLContext(configuration: configuration)
    }

    /// The handler for a connection to `host`.
    public func makeHandler(context: NIOSSLContext, host: String) throws -> NIOSSLClientHandler {
        let name = serverName ?? (Self.isIPAddress(host) ? nil : host)
        return try NIOSSLClientHandler(context: context, serverHostname: name)
    }

    static func isIPAddress(_ host: String) -> Bool {
        (try? SocketAddress(ipAddress: host, port: 0)) != nil
    }
}

/// A TLS file that cannot be used, named.
public struct TLSSetupError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

private func load<T>(_ path: String, _ what: String, _ body: (String) throws -> T) throws -> T {
    guard FileManager.default.isReadableFile(atPath: path) else {
        throw TLSSetupError("TLS \(what) \(path): \(FileManager.default.fileExists(atPath: path) ? "not readable" : "no such file")")
    }
    do {
        return try body(path)
    } catch {
        throw TLSSetupError("TLS \(what) \(path): not a usable PEM file (\(error))")
    }
}
