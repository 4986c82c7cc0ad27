import FedCodec
import FedModel
import Testing

/// Zhu and Gupta's schedule, the magnitude mask, the sparse codec over a mask, and training
/// only the kept weights.
struct PruningTests {
    static let network = try! Network(ModelSpec(input: .vector(6), classes: 3, layers: [.dense(outputs: 5), .relu, .dense(outputs: 3)]))
    static var layout: ParameterLayout { network.layout }

    @Test func theScheduleFollowsZhuAndGuptasCubic() throws {
        let schedule = PruningSchedule(sparsity: 0.9, startRound: 10, endRound: 50, every: 10)
        #expect(schedule.step(afterRound: 9) == nil)
        #expect(schedule.step(afterRound: 10) == 0, "the first step is at the initial sparsity")
        #expect(schedule.step(afterRound: 15) == nil, "steps only every 10 rounds")
        let middle = try #require(schedule.step(afterRound: 30))
        #expect(abs(middle - (0.9 - 0.9 * 0.125)) < 1e-12, "s(t) = s_f + (s_i − s_f)(1 − 1/2)³")
        #expect(schedule.step(afterRound: 50) == 0.9)
        #expect(schedule.step(afterRound: 60) == nil, "no step after the end")
        #expect(schedule.sparsity(afterRound: 80) == 0.9)
        // An end off the grid still gets its step, at the final sparsity.
        #expect(PruningSchedule(sparsity: 0.5, startRound: 1, endRound: 8, every: 3).step(afterRound: 8) == 0.5)
        let values = (10...50).map(schedule.sparsity(afterRound:))
        #expect(zip(values, values.dropFirst()).allSatisfy { $0 <= $1 }, "sparsity never falls")
    }

    @Test(arguments: [
        (PruningSchedule(sparsity: 1, endRound: 5), "prune_sparsity"),
        (PruningSchedule(sparsity: 0.5, initialSparsity: 0.6, endRound: 5), "prune_initial_sparsity"),
        (PruningSchedule(sparsity: 0.5, startRound: 0, endRound: 5), "prune_start"),
        (PruningSchedule(sparsity: 0.5, startRound: 4, endRound: 3), "prune_end"),
        (PruningSchedule(sparsity: 0.5, endRound: 5, every: 0), "prune_every"),
        (PruningSchedule(sparsity: 0.5, endRound: 50), "last round"),
    ])
    func badSchedulesAreRefusedNamingTheKey(_ schedule: PruningSchedule, _ named: String) {
        #expect { try schedule.validate(rounds: 20) } throws: { "\($0)".contains(named) }
    }

    @Test func eachLayerKeepsItsLargestWeightsAndBiasesStayWhole() throws {
        var weights = Self.network.initialParameters(seed: 3)
        for i in weights.indices { weights[i] += Float(i % 7) * 0.001 }
        let mask = PruningMask(pruning: weights, layout: Self.layout, to: 0.6, scope: .layer)
        #expect(PruningMask.prunable(Self.layout) == [0, 2], "the two weight matrices, not the biases")
        #expect(mask.kept[1] == nil && mask.kept[3] == nil)
        for index in [0, 2] {
            let tensor = Self.layout.tensors[index]
            let kept = try #require(mask.kept[index])
            #expect(kept.count == tensor.count - Int((0.6 * Double(tensor.count)).rounded()))
            let smallestKept = kept.map { abs(weights[tensor.offset + Int($0)]) }.min()!
            let largestPruned = tensor.range.filter { !kept.contains(UInt32($0 - tensor.offset)) }.map { abs(weights[$0]) }.max()!
            #expect(smallestKept >= largestPruned, "tensor \(index): a pruned weight outweighs a kept one")
        }
        var pruned = weights
        mask.apply(to: &pruned, layout: Self.layout)
        #expect(PruningMask(zerosOf: pruned, layout: Self.layout) == mask, "the zeros of a pruned model give its mask back")
        #expect(abs(mask.sparsity(layout: Self.layout) - 0.6) < 0.05)
    }

    @Test func aPrunedWeightNeverComesBackEvenIfItGrows() throws {
        var weights = Self.network.initialParameters(seed: 4)
        let first = PruningMask(pruning: weights, layout: Self.layout, to: 0.5, scope: .layer)
        // Every pruned weight becomes the largest of its tensor.
        for index in [0, 2] {
            let tensor = Self.layout.tensors[index]
            let kept = Set(first.kept[index]!.map(Int.init))
            for position in 0..<tensor.count where !kept.contains(position) { weights[tensor.offset + position] = 100 }
        }
        let second = PruningMask(pruning: weights, layout: Self.layout, to: 0.7, scope: .layer, previous: first)
        for index in [0, 2] {
            #expect(Set(second.kept[index]!).isSubset(of: Set(first.kept[index]!)), "tensor \(index) brought back a pruned weight")
        }
    }

    @Test func globalScopeKeepsTheLargestAcrossTensors() throws {
        var weights = [Float](repeating: 0.01, count: Self.network.parameterCount)
        let big = Self.layout.tensors[2]
        for i in big.range { weights[i] = 1 + Float(i) * 0.001 }
        let mask = PruningMask(pruning: weights, layout: Self.layout, to: 0.5, scope: .global)
        let prunable = Self.layout.tensors[0].count + big.count
        let keep = prunable - Int((0.5 * Double(prunable)).rounded())
        #expect(mask.kept[2] == nil || mask.kept[2]!.count == min(big.count, keep), "the large tensor keeps as many as it can")
        #expect((mask.kept[0]?.count ?? 0) >= 1, "every tensor keeps at least one weight")
        #expect((mask.kept[0]?.count ?? Self.layout.tensors[0].count) < Self.layout.tensors[0].count / 2)
    }

    @Test func aMaskedShardTravelsSparseOverExactlyItsKeptPositions() throws {
        let values: [Float] = [0.5, 0, -0.25, 3, 0, 0, 1e-3, -7]
        let mask: [UInt32] = [1, 3, 6]
        var generator = SeededGenerator(seed: 1)
        for spec in ["fp32+raw", "q8", "fp16"] {
            let codec = try CodecSpec(parsing: spec)
            let bytes = try values.withUnsafeBufferPointer { try ShardCodec.encode($0, spec: codec, keeping: mask, generator: &generator) }
            let header = try bytes.withUnsafeBytes { try ShardCodec.parseHeader($0, expectedCount: values.count) }
            #expect(header.sparse && header.keptCount == 3, "\(spec): a kept weight that is zero still travels")
            var decoded = [Float](repeating: 9, count: values.count)
            var kept: [UInt32]?
            try bytes.withUnsafeBytes { raw in try decoded.withUnsafeMutableBufferPointer { try ShardCodec.decode(raw, into: $0, keptPositions: &kept) } }
            #expect(kept == mask, "\(spec): the positions are the mask")
            #expect(decoded[0] == 0 && decoded[2] == 0 && decoded[7] == 0, "\(spec): pruned positions decode as zero")
            #expect(abs(decoded[3] - 3) < 0.02)
            #expect(codec.nonconformance(of: header) != nil, "\(spec): sparse without a mask is not the task's dense codec")
            #expect(codec.nonconformance(of: header, maskKeeps: 3) == nil)
            #expect(codec.nonconformance(of: header, maskKeeps: 2) != nil, "more values than the mask keeps")
        }
        // Top-k inside the mask: the largest of the kept positions.
        let topk = try CodecSpec(parsing: "topk:0.25+fp32")
        let bytes = try values.withUnsafeBufferPointer { try ShardCodec.encode($0, spec: topk, keeping: mask, generator: &generator) }
        var kept: [UInt32]?
        var decoded = [Float](repeating: 0, count: values.count)
        try bytes.withUnsafeBytes { raw in try decoded.withUnsafeMutableBufferPointer { try ShardCodec.decode(raw, into: $0, keptPositions: &kept) } }
        #expect(kept == [3, 6], "⌈0.25·8⌉ = 2 of the mask's positions, the largest: 3 and 6 (not 7, which is pruned)")
        // A mask that keeps everything is a dense shard.
        let whole = try values.withUnsafeBufferPointer { try ShardCodec.encode($0, spec: .fp32Raw, keeping: Array(0..<8), generator: &generator) }
        #expect(try whole.withUnsafeBytes { try ShardCodec.parseHeader($0, expectedCount: 8) }.sparse == false)
        #expect(throws: CodecError.self) {
            _ = try values.withUnsafeBufferPointer { try ShardCodec.encode($0, spec: .fp32Raw, keeping: [3, 1], generator: &generator) }
        }
    }

    @Test func anUpdateOverAMaskTheReceiverHoldsCarriesNoPositions() throws {
        let values: [Float] = [0.5, 0, -0.25, 3, 0, 0, 1e-3, -7]
        let mask: [UInt32] = [1, 3, 6]
        var generator = SeededGenerator(seed: 1)
        let fp32 = try CodecSpec(parsing: "fp32+raw")
        let withPositions = try values.withUnsafeBufferPointer { try ShardCodec.encode($0, spec: fp32, keeping: mask, generator: &generator) }
        let bytes = try values.withUnsafeBufferPointer { try ShardCodec.encode($0, spec: fp32, keeping: mask, receiverHoldsMask: true, generator: &generator) }
        #expect(bytes.count == ShardCodec.headerSize + 3 * 4, "the header and three float32 values, no index section")
        #expect(withPositions.count > bytes.count)
        let header = try bytes.withUnsafeBytes { try ShardCodec.parseHeader($0, expectedCount: 8) }
        #expect(header.sparse && header.isCodedOverMask)
        #expect(fp32.nonconformance(of: header, maskKeeps: 3) == nil)
        #expect(fp32.nonconformance(of: header, maskKeeps: 4) != nil, "coded over another mask")
        var decoded = [Float](repeating: 9, count: 8)
        try bytes.withUnsafeBytes { raw in try decoded.withUnsafeMutableBufferPointer { try ShardCodec.decode(raw, into: $0, mask: mask) } }
        #expect(decoded == [0, 0, 0, 3, 0, 0, 1e-3, 0])
        for wrong in [nil, [1, 3] as [UInt32], [1, 3, 9] as [UInt32]] {
            #expect(throws: CodecError.self, "mask \(String(describing: wrong))") {
                try bytes.withUnsafeBytes { raw in try decoded.withUnsafeMutableBufferPointer { try ShardCodec.decode(raw, into: $0, mask: wrong) } }
            }
        }
    }

    @Test func trainingWithAMaskMovesOnlyTheKeptWeights() throws {
        let data = try Dataset(name: "toy", sampleShape: .vector(6), classes: 3,
                               features: (0..<120).map { Float(($0 * 37) % 11) / 11 }, labels: (0..<20).map { Int32($0 % 3) })
        var weights = Self.network.initialParameters(seed: 2)
        let mask = PruningMask(pruning: weights, layout: Self.layout, to: 0.5, scope: .layer)
        mask.apply(to: &weights, layout: Self.layout)
        let start = weights
        var generator = SeededGenerator(seed: 7)
        _ = LocalTrainer(network: Self.network, batchCapacity: 5).train(
            parameters: &weights, anchor: nil, data: data.all, epochs: 3, batchSize: 5,
            sgd: SGD(learningRate: 0.5, momentum: 0.9), generator: &generator, keep: mask.multipliers(layout: Self.layout))
        let multipliers = try #require(mask.multipliers(layout: Self.layout))
        var moved = 0
        for i in weights.indices {
            if multipliers[i] == 0 { #expect(weights[i] == 0, "pruned weight \(i) moved to \(weights[i])") }
            else if weights[i] != start[i] { moved += 1 }
        }
        #expect(moved > multipliers.filter { $0 == 1 }.count / 2, "the kept weights trained")
    }
}

extension CodecSpec {
    fileprivate static let fp32Raw = CodecSpec(codec: .fp32, zlibLevel: nil)
}
