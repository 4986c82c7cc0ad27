import ArgumentParser
import FedProtocol
import FedStore
import Foundation

extension FedCoord {
    struct Clients: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register, list and revoke the clients allowed to join.",
            discussion: """
                The database keeps only each client's public key: `add` prints the client's secret \
                once, and nothing stored lets anyone authenticate as the client. A running \
                coordinator sees additions at the next handshake and disconnects revoked clients \
                at the next round.
                """,
            subcommands: [Add.self, List.self, Revoke.self])

        struct Database: ParsableArguments {
            @Option(help: "The coordinator's database (the same file as `serve --db` or `database =`).")
            var db = "fedcoord.sqlite"

            func open() throws -> RunStore {
                do { return try RunStore(path: db) } catch let error as StoreError { fail(error.description) }
            }
        }

        struct Add: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Register a client and print its secret (shown only once).")
            @Argument(help: "The client id (what the device puts in `id =`).") var id: String
            @OptionGroup var database: Database

            func validate() throws {
                guard !id.isEmpty, id.utf8.count <= 255, id.allSatisfy({ !$0.isWhitespace && !$0.isNewline }) else {
                    throw ValidationError("a client id is 1 to 255 bytes without spaces")
                }
            }

            func run() throws {
                let store = try database.open()
                let (secret, publicKey) = Authentication.generate()
                do { try store.addCredential(id: id, publicKey: publicKey) } catch let error as StoreError { fail(error.description) }
                try? store.recordEvent(kind: "registered", client: id, message: "public key \(publicKey)")
                print("client \(id) registered in \(database.db)")
                print("secret = \"\(secret)\"")
                FileHandle.standardError.write(Data("fedcoord: put the secret in the client's configuration now; it is not stored and cannot be shown again\n".utf8))
            }
        }

        struct List: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "List registered clients.")
            @OptionGroup var database: Database
            @Flag(help: "JSON instead of a table.") var json = false

            func run() throws {
                let store = try database.open()
                let rows: [(id: String, publicKey: String, createdAt: Date, revokedAt: Date?)]
                do { rows = try store.credentials() } catch let error as StoreError { fail(error.description) }
                let format = ISO8601DateFormatter()
                if json {
                    let objects = rows.map { r -> [String: Any] in
                        ["id": r.id, "public_key": r.publicKey, "registered": format.string(from: r.createdAt),
                         "revoked": r.revokedAt.map { format.string(from: $0) } ?? NSNull()]
                    }
                    let data = try JSONSerialization.data(withJSONObject: objects, options: [.prettyPrinted, .sortedKeys])
                    print(String(decoding: data, as: UTF8.self))
                    return
                }
                print("id".padding(toLength: 24, withPad: " ", startingAt: 0) + " status   registered")
                for r in rows {
                    let status = r.revokedAt == nil ? "active " : "revoked"
                    print(r.id.padding(toLength: max(24, r.id.count), withPad: " ", startingAt: 0) + " \(status)  \(format.string(from: r.createdAt))")
                }
            }
        }

        struct Revoke: ParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Revoke a client: it can no longer join, and is disconnected at the next round.")
            @Argument(help: "The client id.") var id: String
            @OptionGroup var database: Database

            func run() throws {
                let store = try database.open()
                do { try store.revokeCredential(id: id) } catch let error as StoreError { fail(error.description) }
                try? store.recordEvent(kind: "revoked", client: id, message: "revoked")
                print("client \(id) revoked")
            }
        }
    }
}

/// Prints `fedcoord: error: message` and exits with status 1.
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("fedcoord: error: \(message)\n".utf8))
    Foundation.exit(1)
}
