import FedCodec
import FedModel
import Foundation

/// Writes a trained model to a file a device can load, in any codec, and measures what the
/// smaller file costs in accuracy (`fedcoord export`, `fedsim --export`).
///
/// File format: the line "FEDMODEL 1", the model description line (Protocol.md, section 6),
/// then for each shard in layout order a u32 little-endian length and the encoded shard
/// (Protocol.md, section 8). A pruned model (one trained with pruning: zeros in its weight
/// tensors) is written sparse over its kept weights, whatever the codec; a top-k codec prunes
/// at export, keeping each shard's largest-magnitude fraction.
public enum ModelExport {
    public struct Result: Sendable {
        /// Bytes of the file written.
        public var fileBytes: Int
        /// Bytes of the model as raw float32.
        public var float32Bytes: Int
        /// Weights that are nonzero after decoding, of all.
        public var nonzero: Int
        public var parameters: Int
        /// The model as trained, and as a device decodes the file, on the test data.
        public var reference: Evaluation?
        public var exported: Evaluation?

        /// How many times smaller than float32.
        public var ratio: Double { Double(float32Bytes) / Double(max(1, fileBytes)) }
    }

    /// Encodes `model` with `codec` (no error feedback) and writes it to `url`; evaluates both
    /// versions on `test` when given.
    public static func write(model: [Float], network: Network, codec spec: CodecSpec, to url: URL, test: Dataset?, threads: Int = availableCores) throws -> Result {
        guard !spec.errorFeedback else { throw ModelError("export codecs cannot use error feedback, got \(spec)") }
        guard spec.lowRank == nil else { throw ModelError("export codecs cannot use low rank (an update codec), got \(spec)") }
        let layout = network.layout
        let codec = UpdateCodec(spec: spec, shardRanges: layout.tensors.map(\.range))
        let mask = PruningMask(zerosOf: model, layout: layout)
        var generator = SeededGenerator(seed: 1)
        let shards = try codec.encode(model, masks: mask.isPruning ? mask.kept : nil, generator: &generator)
        var file = Data("FEDMODEL 1\n\(network.spec.wireDescription)\n".utf8)
        for shard in shards {
            var length = UInt32(shard.count).littleEndian
            file.append(Data(bytes: &length, count: 4))
            file.append(contentsOf: shard)
        }
        try file.write(to: url, options: .atomic)
        var decoded = model
        try codec.decode(shards, into: &decoded)
        var result = Result(fileBytes: file.count, float32Bytes: model.count * 4, nonzero: decoded.filter { $0 != 0 }.count, parameters: model.count)
        if let test {
            if let problem = network.accepts(test) { throw ModelError("test data: \(problem)") }
            let evaluator = Evaluator(network: network, threads: threads)
            result.reference = evaluator.evaluate(model, on: test.all)
            result.exported = evaluator.evaluate(decoded, on: test.all)
        }
        return result
    }

    /// Two lines for people: the file and its size against float32, then the metric of both.
    public static func describe(_ result: Result, codec: CodecSpec, path: String, what: String) -> [String] {
        var lines = [String(
            format: "exported %@ as %@ to %@ (%d bytes, float32 is %d: %.1fx smaller; %d of %d weights nonzero)",
            what, codec.description, path, result.fileBytes, result.float32Bytes, result.ratio, result.nonzero, result.parameters)]
        if let reference = result.reference, let exported = result.exported {
            if reference.metric == .rmse {
                lines.append(String(format: "test RMSE: float32 %.4f, exported %.4f (%+.2f%%)",
                                    reference.rmse, exported.rmse, (exported.rmse / max(reference.rmse, 1e-12) - 1) * 100))
            } else {
                lines.append(String(format: "test %@: float32 %.4f, exported %.4f (%+.2f points)", reference.metric.rawValue,
                                    reference.accuracy, exported.accuracy, (exported.accuracy - reference.accuracy) * 100))
            }
        }
        return lines
    }
}
