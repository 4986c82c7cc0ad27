import FedCodec
import FedModel
import FedStore
import Foundation

/// A model trained elsewhere that a run starts from (`base_model`): fine-tuning, in full or
/// through low-rank adapters.
///
/// The file is either a model exported by `fedcoord export` or `fedsim --export` (any codec) or
/// a run database, whose last checkpoint is read. Its tensors are copied into the new model by
/// name (`dense1.weight`, ...). In a model with adapters every frozen tensor must be found there
/// with its shape, since training never changes it; in a plain model the tensors found with
/// their shape are copied, and the others (a new output layer, say) keep their initial values.
public struct BaseModel: Sendable {
    public var spec: ModelSpec
    public var parameters: [Float]
    /// Where it was read from, for messages.
    public var path: String

    /// Reads `path`; errors name the file and what is wrong with it.
    public init(path: String) throws {
        self.path = path
        guard let handle = FileHandle(forReadingAtPath: path) else { throw ModelError("base_model \(path): cannot open the file") }
        let magic = (try? handle.read(upToCount: 9)) ?? Data()
        try? handle.close()
        if magic == Data("FEDMODEL ".utf8) {
            (spec, parameters) = try Self.readExport(path)
        } else {
            let store: RunStore
            do { store = try RunStore(path: path) } catch {
                throw ModelError("base_model \(path): neither an exported model (FEDMODEL) nor a run database")
            }
            guard let description = try store.runConfiguration(), let checkpoint = try store.lastCheckpoint() else {
                throw ModelError("base_model \(path): the run database holds no committed round")
            }
            spec = try ModelSpec(wireDescription: description)
            guard checkpoint.model.count == (try Network(spec)).parameterCount else {
                throw ModelError("base_model \(path): its checkpoint does not match its model description")
            }
            parameters = checkpoint.model
        }
    }

    /// An exported model: "FEDMODEL 1", the description line, then each shard as a u32
    /// little-endian length and the encoded shard (``ModelExport``).
    private static func readExport(_ path: String) throws -> (ModelSpec, [Float]) {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let bytes = [UInt8](data)
        func fail(_ problem: String) -> ModelError { ModelError("base_model \(path): \(problem)") }
        var lines: [String] = []
        var position = 0
        while lines.count < 2 {
            guard let end = bytes[position...].firstIndex(of: 0x0A), end - position < 1 << 16 else { throw fail("truncated header") }
            lines.append(String(decoding: bytes[position..<end], as: UTF8.self))
            position = end + 1
        }
        guard lines[0] == "FEDMODEL 1" else { throw fail("unknown format \"\(lines[0].prefix(40))\" (expected FEDMODEL 1)") }
        let spec: ModelSpec
        do { spec = try ModelSpec(wireDescription: lines[1]) } catch let error as ModelError { throw fail(error.description) }
        let network = try Network(spec)
        var parameters = [Float](repeating: 0, count: network.parameterCount)
        for tensor in network.layout.tensors {
            guard position + 4 <= bytes.count else { throw fail("truncated at shard \(tensor.index) (\(tensor.name))") }
            let length = Int(UInt32(bytes[position]) | UInt32(bytes[position + 1]) << 8 | UInt32(bytes[position + 2]) << 16 | UInt32(bytes[position + 3]) << 24)
            position += 4
            guard length <= bytes.count - position else { throw fail("truncated at shard \(tensor.index) (\(tensor.name))") }
            do {
                try bytes.withUnsafeBytes { raw in
                    try parameters.withUnsafeMutableBufferPointer { all in
                        try ShardCodec.decode(UnsafeRawBufferPointer(rebasing: raw[position..<(position + length)]),
                                              into: UnsafeMutableBufferPointer(rebasing: all[tensor.range]))
                    }
                }
            } catch let error as CodecError {
                throw fail("shard \(tensor.index) (\(tensor.name)): \(error.message)")
            }
            position += length
        }
        guard position == bytes.count else { throw fail("\(bytes.count - position) bytes after the last shard") }
        guard parameters.allSatisfy(\.isFinite) else { throw fail("holds non-finite values") }
        return (spec, parameters)
    }

    /// `initial` with this model's tensors copied in by name (see the type's documentation).
    /// Returns the parameters and the names of the tensors that kept their initial values.
    public func load(into network: Network, initial: [Float]) throws -> (parameters: [Float], kept: [String]) {
        precondition(initial.count == network.parameterCount, "initial model does not match the network")
        guard network.spec.input == spec.input else {
            throw ModelError("base_model \(path): its input is \(spec.input), the model's \(network.spec.input)")
        }
        let source = try Network(spec).layout
        var parameters = initial
        var kept: [String] = []
        for tensor in network.layout.tensors {
            if let found = source.tensor(named: tensor.name), found.shape == tensor.shape {
                parameters.replaceSubrange(tensor.range, with: self.parameters[found.range])
            } else if !tensor.trainable, !LowRankAdapter.isAdapterTensor(tensor.name) {
                // (A frozen adapter factor, FFA-LoRA's A, keeps its seeded start.)
                let why = source.tensor(named: tensor.name).map { "\(tensor.name) has shape \($0.shape), the model needs \(tensor.shape)" } ?? "has no tensor \(tensor.name)"
                throw ModelError("base_model \(path): \(why); with low-rank adapters every other tensor is frozen at the base model's values")
            } else {
                kept.append(tensor.name)
            }
        }
        guard kept.count < network.layout.tensors.count else {
            throw ModelError("base_model \(path): none of its tensors (\(source.tensors.map(\.name).joined(separator: ", "))) fits the model")
        }
        return (parameters, kept)
    }
}
