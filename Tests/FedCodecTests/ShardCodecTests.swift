import Foundation
import PropertyBased
import Testing
@testable import FedCodec

/// The tests' own fixed-seed randomness.
typealias TestGenerator = SplitMix64

func encode(_ values: [Float], _ spec: String, seed: UInt64 = 1) throws -> [UInt8] {
    var g = TestGenerator(seed: seed)
    return try values.withUnsafeBufferPointer { try ShardCodec.encode($0, spec: CodecSpec(parsing: spec), generator: &g) }
}

func gaussianLike(_ n: Int, seed: UInt64, scale: Float = 0.01) -> [Float] {
    var g = TestGenerator(seed: seed)
    return (0..<n).map { _ in (Float.random(in: -1...1, using: &g) + Float.random(in: -1...1, using: &g)) * scale }
}

@Suite struct CodecSpecTests {
    @Test(arguments: ["fp32", "fp16", "q8", "q4", "q2", "sign", "topk:0.01+q8", "topk:0.1+q8+ef", "q4+g512+sr", "fp16+raw", "q8+z9"])
    func specsRoundTripThroughText(text: String) throws {
        let spec = try CodecSpec(parsing: text)
        #expect(try CodecSpec(parsing: spec.description) == spec)
    }

    @Test func specFieldsAreParsed() throws {
        let spec = try CodecSpec(parsing: "topk:0.05+q4+g128+sr+ef+raw")
        #expect(spec.codec == .q4 && spec.topK == 0.05 && spec.groupSize == 128)
        #expect(spec.rounding == .stochastic && spec.errorFeedback && spec.zlibLevel == nil)
        #expect(try CodecSpec(parsing: "q8").zlibLevel == 6)
    }

    @Test(arguments: [
        "", "q3", "topk:0+q8", "topk:2+q8", "topk:0.1", "topk:nan+q8", "topk:0x1p-3+q8", "topk:.+q8", "topk:1e+q8",
        "q8+g0", "q8+g65537", "q8+g", "q8+z0", "q8+z10", "q8+turbo", "q8++raw",
        "q8+raw+z3", "q8+z3+raw", "q8+raw+raw", "q8+g64+g128", "q8+sr+sr", "fp16+sr", "fp32+sr", "sign+sr", "fp16+g64", "fp32+g8",
    ])
    func badSpecsAreRefused(text: String) {
        #expect { try CodecSpec(parsing: text) } throws: { ($0 as? CodecError)?.code == .badSpec }
    }

    @Test(arguments: ["q8+g1", "q8+g3", "q2+g65536", "sign+g7", "Q8+RAW", "topk:1e-05+q8", "topk:1+fp32+ef", "topk:.5+q4+sr+z9"])
    func edgeSpecsAreAccepted(text: String) throws {
        let spec = try CodecSpec(parsing: text)
        #expect(try CodecSpec(parsing: spec.description) == spec)
    }

    @Test func refusalsNameTheOption() {
        for (text, named) in [("q8+g7x", "g7x"), ("q8+raw+z3", "z3"), ("fp16+sr", "sr"), ("q8+g0", "g0"), ("fp32+g8", "g8")] {
            #expect { try CodecSpec(parsing: text) } throws: { "\($0)".contains("\"\(named)\"") }
        }
    }
}

@Suite struct ShardCodecTests {
    @Test(arguments: ["fp32", "fp32+raw", "fp16", "q8", "q4", "q2", "sign", "topk:0.1+q8", "topk:0.01+fp32", "topk:0.5+q2+raw"])
    func decodesToTheEncodedShape(spec: String) throws {
        let values = gaussianLike(1000, seed: 3)
        let bytes = try encode(values, spec)
        let decoded = try ShardCodec.decode(bytes, expectedCount: 1000)
        #expect(decoded.count == 1000)
        #expect(decoded.allSatisfy { $0.isFinite })
        if spec.hasPrefix("fp32") { #expect(decoded == values) }
    }

    @Test func quantizedSizesShrinkAsExpected() throws {
        let values = gaussianLike(199_210, seed: 4)
        let fp32 = try encode(values, "fp32+raw").count
        let q8 = try encode(values, "q8+raw").count
        let q4 = try encode(values, "q4+raw").count
        let sign = try encode(values, "sign+raw").count
        #expect(fp32 == 32 + 199_210 * 4)
        #expect(Double(fp32) / Double(q8) > 3.8)
        #expect(Double(fp32) / Double(q4) > 7.5)
        #expect(Double(fp32) / Double(sign) > 28)
    }

    @Test func nearestRoundingErrorIsAtMostHalfAStep() async {
        await propertyCheck(count: 200, input: Gen.float(in: -1000...1000).array(of: 1...700), Gen.int(in: 0...2)) { values, which in
            let codec = ["q8", "q4", "q2"][which]
            let levels: Float = [255, 15, 3][which]
            let decoded = try! ShardCodec.decode(encode(values, codec + "+g64"), expectedCount: values.count)
            for start in stride(from: 0, to: values.count, by: 64) {
                let group = values[start..<min(values.count, start + 64)]
                let step = (group.max()! - group.min()!) / levels
                for i in group.indices {
                    let bound = step / 2 + max(abs(values[i]), step) * 1e-5
                    #expect(abs(decoded[i] - values[i]) <= bound, "\(codec): \(values[i]) → \(decoded[i]), step \(step)")
                }
            }
        }
    }

    @Test func fp16IsWithinItsPrecision() async {
        await propertyCheck(count: 100, input: Gen.float(in: -60000...60000).array(of: 1...300)) { values in
            let decoded = try! ShardCodec.decode(encode(values, "fp16"), expectedCount: values.count)
            for (x, y) in zip(values, decoded) { #expect(abs(x - y) <= abs(x) * 0x1p-11 + 0x1p-24) }
        }
    }

    @Test func stochasticRoundingIsUnbiased() throws {
        // Many encodings of the same group: the mean of the decoded values converges to the input.
        var g = TestGenerator(seed: 9)
        let values: [Float] = (0..<64).map { _ in Float.random(in: -1...1, using: &g) }
        var sums = [Double](repeating: 0, count: values.count)
        let trials = 2000
        for t in 0..<trials {
            let decoded = try ShardCodec.decode(encode(values, "q2+g64+sr", seed: UInt64(t)), expectedCount: 64)
            for i in values.indices { sums[i] += Double(decoded[i]) }
        }
        let step = Double(values.max()! - values.min()!) / 3
        var worst = 0.0
        for i in values.indices { worst = max(worst, abs(sums[i] / Double(trials) - Double(values[i]))) }
        // Each decoded value has standard deviation ≤ step/2, so the mean's is ≤ step/(2√trials) ≈ 0.011·step.
        #expect(worst < 0.06 * step, "largest bias \(worst) against step \(step)")
        // Nearest rounding of the same values is biased far beyond that for some of them.
        let nearest = try ShardCodec.decode(encode(values, "q2+g64"), expectedCount: 64)
        #expect(zip(values, nearest).map { Double(abs($0 - $1)) }.max()! > 0.1 * step)
    }

    @Test func stochasticRoundingIsSeeded() throws {
        let values = gaussianLike(500, seed: 2)
        #expect(try encode(values, "q4+sr", seed: 5) == encode(values, "q4+sr", seed: 5))
        #expect(try encode(values, "q4+sr", seed: 5) != encode(values, "q4+sr", seed: 6))
    }

    @Test func signKeepsSignsAndGroupScale() throws {
        let values: [Float] = [0.5, -0.25, 0.25, -1]
        let decoded = try ShardCodec.decode(encode(values, "sign"), expectedCount: 4)
        #expect(decoded == [0.5, -0.5, 0.5, -0.5])
    }

    @Test func topKKeepsTheLargestMagnitudes() throws {
        let values: [Float] = (0..<1000).map { i in Float(i % 2 == 0 ? i : -i) / 1000 }
        let decoded = try ShardCodec.decode(encode(values, "topk:0.01+fp32"), expectedCount: 1000)
        let kept = decoded.indices.filter { decoded[$0] != 0 }
        #expect(kept == Array(990..<1000))
        for i in kept { #expect(decoded[i] == values[i]) }
    }

    @Test func topKPicksTheSmallerIndexEncoding() throws {
        let values = gaussianLike(10_000, seed: 5)
        let sparse = try encode(values, "topk:0.01+fp32+raw")
        let dense = try encode(values, "topk:0.6+fp32+raw")
        #expect(sparse[5] == 1, "1% kept: delta varints")
        #expect(dense[5] == 2, "60% kept: bitmap")
        #expect(try ShardCodec.decode(dense, expectedCount: 10_000).filter { $0 != 0 }.count == 6000)
    }

    @Test(arguments: ["fp32", "fp16", "q8"])
    func nonFiniteInputIsRefused(spec: String) {
        for bad in [Float.nan, .infinity, -.infinity] {
            #expect { try encode([1, bad, 2], spec) } throws: { ($0 as? CodecError)?.code == .nonFinite }
        }
    }

    @Test func errorFeedbackCarriesWhatWasDropped() throws {
        let codec = UpdateCodec(spec: try CodecSpec(parsing: "topk:0.1+fp32"), shardRanges: [0..<50, 50..<100])
        var feedback = ErrorFeedback(count: 100)
        let delta = gaussianLike(100, seed: 8)
        var g = TestGenerator(seed: 1)
        var totalSent = [Float](repeating: 0, count: 100)
        for _ in 0..<40 {
            var send = delta
            feedback.compensate(&send)
            var decoded = [Float](repeating: 0, count: 100)
            try codec.decode(codec.encode(send, generator: &g), into: &decoded)
            feedback.record(sent: send, decoded: decoded)
            for i in 0..<100 { totalSent[i] += decoded[i] }
        }
        // Sent in total + still owed = 40 × delta, exactly up to rounding.
        for i in 0..<100 {
            #expect(abs(totalSent[i] + feedback.residual[i] - 40 * delta[i]) < 1e-4)
        }
    }
}
