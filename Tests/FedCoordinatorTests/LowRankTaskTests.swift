import FedCodec
import FedModel
import FedProtocol
import Testing
@testable import FedClient

/// What a client checks of a TRAINING_TASK's warm starts before it factors its update
/// (Protocol.md §8.6): one per factored shard, of the factors' shape, finite, and none for a
/// shard it does not factor.
@Suite struct LowRankTaskTests {
    static let layout = try! Network(ModelSpec(input: .vector(20), classes: 2, layers: [.dense(outputs: 10), .relu, .dense(outputs: 2)])).layout

    static func task(_ warmStarts: [TrainingTask.WarmStart]) -> TrainingTask {
        TrainingTask(round: 1, modelVersion: 0, shards: [0, 1, 2, 3], localEpochs: 1, batchSize: 10, learningRate: 0.1,
                     codec: "lowrank:2+q8+ef", deadlineMilliseconds: 1000, warmStarts: warmStarts)
    }

    @Test func warmStartsAreCheckedBeforeUse() throws {
        let tensors = Self.layout.tensors
        let codec = UpdateCodec(spec: try CodecSpec(parsing: "lowrank:2+q8+ef"), shardRanges: tensors.map(\.range), columns: tensors.map(\.columns))
        // 20 x 10 factors at rank 2; 10 x 2 would not shrink (2·12 ≥ 20), so it travels whole.
        #expect(codec.factorShapes.map { $0?.rank } == [2, nil, nil, nil])
        let good = TrainingTask.WarmStart(shardIndex: 0, rank: 2, columns: 10, values: LowRankFactors.initialWarmStart(columns: 10, rank: 2, seed: 1))
        let starts = try ClientDaemon.warmStarts(of: Self.task([good]), for: codec, shards: [0, 1, 2, 3])
        #expect(starts.count == 4 && starts[0] == good.values && starts.dropFirst().allSatisfy { $0 == nil })
        var nonFinite = good
        nonFinite.values[3] = .nan
        let bad: [(String, [TrainingTask.WarmStart])] = [
            ("none", []),
            ("another rank", [.init(shardIndex: 0, rank: 1, columns: 10, values: Array(good.values.prefix(10)))]),
            ("other columns", [.init(shardIndex: 0, rank: 2, columns: 5, values: Array(good.values.prefix(10)))]),
            ("non-finite", [nonFinite]),
            ("for a shard sent whole", [good, .init(shardIndex: 2, rank: 2, columns: 2, values: [1, 0, 0, 1])]),
            ("twice", [good, good]),
        ]
        for (name, warmStarts) in bad {
            #expect(throws: ProtocolError.self, "\(name)") { try ClientDaemon.warmStarts(of: Self.task(warmStarts), for: codec, shards: [0, 1, 2, 3]) }
        }
    }
}
