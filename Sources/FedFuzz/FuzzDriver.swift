import FedCodec
import FedProtocol
import Foundation
import NIOCore

/// A seeded random-and-mutation fuzzer for everything that parses bytes from the network: the
/// frame decoder with message reassembly and message decoding, and the shard decoder of every
/// codec. Inputs are random byte strings and mutations (bit flips, boundary values, inserted,
/// deleted, duplicated and truncated bytes) of valid frames and encodings. A parser may accept
/// an input or refuse it with its typed error (``ProtocolError``, ``CodecError``); anything else
/// is a finding, and so is a crash (which ends the process) or an input that takes too long.
///
/// libFuzzer (`-sanitize=fuzzer`) would add coverage guidance; it needs a separate build of the
/// package, so this driver, which runs in any build and in the test suite, is the harness.
public struct FuzzDriver {
    public struct Report: Sendable, CustomStringConvertible {
        public var inputs = 0
        public var accepted = 0
        public var refused = 0
        /// Inputs a parser answered with an untyped error, or decoded to non-finite values.
        public var findings: [String] = []
        public var slowestInputSeconds = 0.0
        public var seconds = 0.0
        public var perTarget: [String: Int] = [:]

        public var description: String {
            String(format: "%d inputs in %.1f s (%.0f/s): %d accepted, %d refused with a typed error, %d findings; slowest input %.2f ms",
                   inputs, seconds, Double(inputs) / max(seconds, 1e-9), accepted, refused, findings.count, slowestInputSeconds * 1000)
        }
    }

    private var generator: SplitMix64
    private let frameCorpus: [[UInt8]]
    /// Encoded shards, the count they were encoded for, the pruning mask the receiver holds
    /// (for updates over a mask) and the columns it expects low-rank factors with.
    private let shardCorpus: [(bytes: [UInt8], count: Int, mask: [UInt32]?, columns: Int?)]

    public init(seed: UInt64) {
        generator = SplitMix64(seed: seed)
        frameCorpus = Self.sampleMessages.map { message in
            var buffer = ByteBuffer()
            for frame in MessageFramer(maximumFramePayload: 64).frames(for: message) { frame.write(to: &buffer) }
            return Array(buffer.readableBytesView)
        }
        var g = SplitMix64(seed: seed ^ 0x5EED)
        var corpus: [(bytes: [UInt8], count: Int, mask: [UInt32]?, columns: Int?)] = []
        for spec in ["fp32", "fp32+raw", "fp16", "q8", "q8+g32", "q4+raw", "q2", "sign", "topk:0.1+q8", "topk:0.5+fp16+raw", "topk:0.02+q4"] {
            for count in [0, 1, 7, 64, 300] {
                let values = (0..<count).map { _ in Float(Int(g.next() % 2001) - 1000) / 1000 }
                let bytes = try! values.withUnsafeBufferPointer { try ShardCodec.encode($0, spec: CodecSpec(parsing: spec), generator: &g) }
                corpus.append((bytes, count, nil, nil))
                // Pruned: a model shard sparse over a mask, and an update over the receiver's mask.
                guard count > 1 else { continue }
                let mask = (0..<UInt32(count)).filter { _ in g.next() % 3 == 0 }
                guard !mask.isEmpty else { continue }
                for holds in [false, true] {
                    let masked = try! values.withUnsafeBufferPointer {
                        try ShardCodec.encode($0, spec: CodecSpec(parsing: spec), keeping: mask, receiverHoldsMask: holds, generator: &g)
                    }
                    corpus.append((masked, count, holds ? mask : nil, nil))
                }
            }
        }
        // Low-rank factors (index encoding 4) of matrices of several shapes and ranks.
        for spec in ["lowrank:1+fp32+raw", "lowrank:2+q8", "lowrank:3+q4+g16+raw", "lowrank:1+sign", "lowrank:4+fp16"] {
            for (rows, columns) in [(4, 3), (10, 10), (30, 7), (64, 20)] {
                let parsed = try! CodecSpec(parsing: spec)
                guard let rank = parsed.factorRank(count: rows * columns, columns: columns) else { continue }
                let p = (0..<(rows * rank)).map { _ in Float(Int(g.next() % 2001) - 1000) / 1000 }
                let q = (0..<(columns * rank)).map { _ in Float(Int(g.next() % 2001) - 1000) / 1000 }
                let bytes = try! ShardCodec.encodeFactors(p: p, q: q, rows: rows, columns: columns, rank: rank, spec: parsed, generator: &g)
                corpus.append((bytes, rows * columns, nil, columns))
            }
        }
        shardCorpus = corpus
    }

    /// Runs `inputs` inputs, alternating between the targets.
    public mutating func run(inputs: Int, progress: ((Int) -> Void)? = nil) -> Report {
        var report = Report()
        let start = Date()
        for i in 0..<inputs {
            let began = DispatchTime.now().uptimeNanoseconds
            if i % 2 == 0 {
                fuzzFrames(&report)
            } else {
                fuzzShard(&report)
            }
            let took = Double(DispatchTime.now().uptimeNanoseconds - began) / 1e9
            report.slowestInputSeconds = max(report.slowestInputSeconds, took)
            report.inputs += 1
            if let progress, (i + 1) % 100_000 == 0 { progress(i + 1) }
        }
        report.seconds = Date().timeIntervalSince(start)
        return report
    }

    // MARK: Targets

    private mutating func fuzzFrames(_ report: inout Report) {
        var input = next(from: frameCorpus, maximumRandom: 200)
        if generator.next() % 4 == 0 {
            // Frames of two messages back to back, one of them mutated.
            input += frameCorpus[Int(generator.next() % UInt64(frameCorpus.count))]
        }
        report.perTarget["frames", default: 0] += 1
        var decoder = FrameDecoder(maximumPayload: 1 << 12)
        var framer = MessageFramer(maximumFramePayload: 1 << 12, maximumMessage: 1 << 16)
        var buffer = ByteBuffer()
        var offset = 0
        do {
            // Fed in random chunks, as TCP would deliver it.
            while offset < input.count {
                let chunk = 1 + Int(generator.next() % UInt64(max(1, min(64, input.count - offset))))
                buffer.writeBytes(input[offset..<min(input.count, offset + chunk)])
                offset += chunk
                while let frame = try decoder.decodeFrame(&buffer) {
                    _ = try framer.receive(frame)
                }
            }
            report.accepted += 1
        } catch is ProtocolError {
            report.refused += 1
        } catch {
            report.findings.append("frames: untyped error \(error) for input \(hex(input))")
        }
    }

    private mutating func fuzzShard(_ report: inout Report) {
        let base = shardCorpus[Int(generator.next() % UInt64(shardCorpus.count))]
        let input = generator.next() % 8 == 0 ? randomBytes(maximum: 200) : mutate(base.bytes)
        // Usually the count the shard was encoded for; sometimes another (a wrong layout).
        let count = generator.next() % 8 == 0 ? Int(generator.next() % 400) : base.count
        report.perTarget["shards", default: 0] += 1
        // The receiver's mask: the base's, sometimes a random one (or none), as a coordinator
        // that pruned again or a client that never pruned would hold.
        var mask = base.mask
        if generator.next() % 8 == 0 {
            mask = generator.next() % 2 == 0 ? nil : (0..<UInt32(max(1, count))).filter { _ in generator.next() % 2 == 0 }
        }
        // The columns it expects factors with: the base's, sometimes other ones (or none).
        var columns = base.columns
        if generator.next() % 8 == 0 { columns = generator.next() % 3 == 0 ? nil : Int(generator.next() % 70) }
        var output = [Float](repeating: 0, count: count)
        do {
            try input.withUnsafeBytes { raw in
                try output.withUnsafeMutableBufferPointer { try ShardCodec.decode(raw, into: $0, mask: mask, columns: columns) }
            }
            if let bad = output.firstIndex(where: { !$0.isFinite }) {
                report.findings.append("shard: decoded value \(bad) is \(output[bad]) for input \(hex(input))")
            } else {
                report.accepted += 1
            }
        } catch is CodecError {
            report.refused += 1
        } catch {
            report.findings.append("shard: untyped error \(error) for input \(hex(input))")
        }
    }

    // MARK: Inputs

    private mutating func next(from corpus: [[UInt8]], maximumRandom: Int) -> [UInt8] {
        generator.next() % 8 == 0 ? randomBytes(maximum: maximumRandom) : mutate(corpus[Int(generator.next() % UInt64(corpus.count))])
    }

    private mutating func randomBytes(maximum: Int) -> [UInt8] {
        let count = Int(generator.next() % UInt64(maximum + 1))
        return (0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
    }

    /// One to four mutations of `input`.
    private mutating func mutate(_ input: [UInt8]) -> [UInt8] {
        var bytes = input
        for _ in 0...(generator.next() % 4) {
            let position = bytes.isEmpty ? 0 : Int(generator.next() % UInt64(bytes.count))
            switch generator.next() % 8 {
            case 0 where !bytes.isEmpty: // flip a bit
                bytes[position] ^= 1 << UInt8(generator.next() % 8)
            case 1 where !bytes.isEmpty: // a boundary byte
                bytes[position] = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF][Int(generator.next() % 6)]
            case 2 where bytes.count >= 4: // a boundary 32-bit little-endian value
                let value: UInt32 = [0, 1, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF, UInt32(bytes.count), 1 << 20, 1 << 26][Int(generator.next() % 8)]
                let at = min(position, bytes.count - 4)
                for k in 0..<4 { bytes[at + k] = UInt8(truncatingIfNeeded: value >> (8 * UInt32(k))) }
            case 3: // insert random bytes
                let count = 1 + Int(generator.next() % 16)
                bytes.insert(contentsOf: (0..<count).map { _ in UInt8(truncatingIfNeeded: generator.next()) }, at: position)
            case 4 where !bytes.isEmpty: // delete a run
                let count = 1 + Int(generator.next() % UInt64(min(16, bytes.count - position)))
                bytes.removeSubrange(position..<(position + count))
            case 5 where !bytes.isEmpty: // truncate
                bytes.removeSubrange(position...)
            case 6 where !bytes.isEmpty: // duplicate a run
                let count = 1 + Int(generator.next() % UInt64(min(32, bytes.count - position)))
                bytes.insert(contentsOf: bytes[position..<(position + count)], at: position)
            default: // append garbage
                bytes.append(UInt8(truncatingIfNeeded: generator.next()))
            }
        }
        return bytes
    }

    private func hex(_ bytes: [UInt8]) -> String {
        bytes.prefix(256).map { String(format: "%02x", $0) }.joined() + (bytes.count > 256 ? "... (\(bytes.count) bytes)" : "")
    }

    static let sampleMessages: [Message] = [
        .hello(Hello(clientID: "device-17", protocolVersions: [1], codecs: ["q8", "topk:0.01+q8"], memoryBudget: 64 << 20, exampleCount: 600)),
        .challenge(nonce: Array(0..<32), version: 1),
        .authenticate(signature: Array(repeating: 0xAB, count: 64)),
        .welcome(Welcome(sessionID: 42, heartbeatMilliseconds: 5000, model: "784|10|dense:200,relu,dense:200,relu,dense:10", limits: Limits(maximumFramePayload: 1 << 20, maximumMessage: 64 << 20))),
        .modelShard(ModelShard(round: 3, modelVersion: 3, shardIndex: 1, sha256: Array(repeating: 7, count: 32), encoded: Array(0..<100))),
        .trainingTask(TrainingTask(round: 3, modelVersion: 3, shards: [0, 1, 2, 3, 4, 5], localEpochs: 1, batchSize: 10, learningRate: 0.1, codec: "q8", deadlineMilliseconds: 30_000)),
        .trainingTask(TrainingTask(round: 3, modelVersion: 3, shards: [0, 1, 2, 3], localEpochs: 1, batchSize: 10, learningRate: 0.1, codec: "lowrank:2+q8+ef", deadlineMilliseconds: 30_000,
                                   warmStarts: [.init(shardIndex: 0, rank: 2, columns: 3, values: [0.6, 0, 0.8, 0, 0, 1]), .init(shardIndex: 2, rank: 2, columns: 4, values: [Float](repeating: 0.5, count: 8))])),
        .update(Update(round: 3, modelVersion: 3, exampleCount: 600, trainingLoss: 0.25, shards: [ShardDelta(index: 0, encoded: Array(0..<90)), ShardDelta(index: 5, encoded: [])])),
        .acknowledgement(type: 7, round: 3),
        .error(code: ProtocolError.Code.staleRound.rawValue, message: "update for round 2, the coordinator is in round 3"),
        .heartbeat(timestamp: 1_700_000_000_000),
        .goodbye(Goodbye(.goingAway, reason: "shutting down")),
    ]
}
