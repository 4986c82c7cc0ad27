import Foundation
import Synchronization

/// Model shards this process has already decoded and checked against their SHA-256.
///
/// Decoding is a function of the encoded bytes alone (Protocol.md, section 8), so a shard whose
/// encoded bytes, element count and SHA-256 equal ones verified before decodes to the same
/// values, which match that hash: comparing the bytes (memory speed) stands in for hashing the
/// decoded values again (about ten times slower). One device verifies every shard it receives
/// once either way; this pays off where many daemons share a process and one cache
/// (`fedsim --transport tcp` hands the same model to a hundred clients a round), and is off
/// for a lone device (``ClientConfiguration/verifiedShards`` nil), where it would only hold a
/// second copy of the model. It holds at most `capacity` bytes of encoded shards, the most
/// recently verified first.
public final class VerifiedShards: Sendable {
    private struct Entry {
        var sha256: [UInt8]
        var count: Int
        var encoded: [UInt8]
    }

    private let capacity: Int
    private let entries = Mutex<[Entry]>([])

    public init(capacity: Int = 64 << 20) {
        self.capacity = capacity
    }

    /// Whether `encoded`, decoded to `count` values, was verified against `sha256` before.
    public func contains(encoded: [UInt8], count: Int, sha256: [UInt8]) -> Bool {
        entries.withLock { entries in
            entries.contains { entry in
                entry.count == count && entry.sha256 == sha256 && entry.encoded.count == encoded.count
                    && entry.encoded.withUnsafeBytes { a in encoded.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 } }
            }
        }
    }

    /// Records that `encoded` decoded to `count` values whose SHA-256 is `sha256`.
    public func insert(encoded: [UInt8], count: Int, sha256: [UInt8]) {
        guard encoded.count <= capacity, !encoded.isEmpty else { return }
        entries.withLock { entries in
            entries.insert(Entry(sha256: sha256, count: count, encoded: encoded), at: 0)
            var total = 0
            entries = Array(entries.prefix { entry in
                total += entry.encoded.count
                return total <= capacity
            })
        }
    }
}
