import Crypto
import FedProtocol

/// A client secret derived from a name, so that tests can name their clients' keys.
func testSecret(_ name: String) -> String {
    try! Authentication.secret(fromSeed: Array(SHA256.hash(data: Array(name.utf8))))
}

/// The public key registered for `testSecret(name)`.
func testPublicKey(_ name: String) -> String {
    try! Authentication.publicKey(ofSecret: testSecret(name))
}
