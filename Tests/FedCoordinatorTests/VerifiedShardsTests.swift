import Testing
@testable import FedClient

/// The record of verified shards that daemons in one process share: a hit needs the same
/// bytes, count and hash; it forgets the oldest beyond its capacity.
@Suite struct VerifiedShardsTests {
    @Test func onlyIdenticalShardsAreTakenAsVerified() {
        let cache = VerifiedShards(capacity: 1000)
        let bytes: [UInt8] = (0..<300).map { UInt8($0 % 251) }
        let hash = [UInt8](repeating: 7, count: 32)
        #expect(!cache.contains(encoded: bytes, count: 60, sha256: hash))
        cache.insert(encoded: bytes, count: 60, sha256: hash)
        #expect(cache.contains(encoded: bytes, count: 60, sha256: hash))
        var changed = bytes
        changed[299] ^= 1
        #expect(!cache.contains(encoded: changed, count: 60, sha256: hash), "one bit differs")
        #expect(!cache.contains(encoded: Array(bytes.dropLast()), count: 60, sha256: hash))
        #expect(!cache.contains(encoded: bytes, count: 61, sha256: hash))
        #expect(!cache.contains(encoded: bytes, count: 60, sha256: [UInt8](repeating: 8, count: 32)))
        // Three more shards of 300 bytes: the first no longer fits in 1,000 bytes.
        for seed in 1...3 { cache.insert(encoded: bytes.map { $0 &+ UInt8(seed) }, count: 60, sha256: hash) }
        #expect(!cache.contains(encoded: bytes, count: 60, sha256: hash))
        #expect(cache.contains(encoded: bytes.map { $0 &+ 3 }, count: 60, sha256: hash))
        cache.insert(encoded: [UInt8](repeating: 1, count: 1001), count: 250, sha256: hash)
        #expect(!cache.contains(encoded: [UInt8](repeating: 1, count: 1001), count: 250, sha256: hash), "larger than the whole record")
    }
}
