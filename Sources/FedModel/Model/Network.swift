/// A built model: its layers and the stable layout of its parameters. Immutable and
/// shareable across threads; parameter values live outside, in a flat float32 vector
/// laid out by ``layout``, and per-thread pass buffers live in a ``Workspace``.
public final class Network: Sendable {
    public let spec: ModelSpec
    public let layers: [any Layer]
    public let layout: ParameterLayout
    /// Offset of each layer's first parameter in the flat vector.
    let parameterOffsets: [Int]

    public var parameterCount: Int { layout.parameterCount }
    public var classes: Int { spec.classes }
    public var inputShape: TensorShape { spec.input }
    /// Whether a training step makes random choices (dropout), so the trainer seeds each step.
    public var drawsPerStep: Bool { spec.layers.contains { if case .dropout(let rate) = $0 { rate > 0 } else { false } } }

    public init(_ spec: ModelSpec) throws {
        guard spec.input.count > 0 else { throw ModelError("model input shape must be non-empty") }
        guard spec.classes >= (spec.loss.usesClassLabels ? 2 : 1) else {
            throw ModelError(spec.loss.usesClassLabels ? "model needs at least 2 classes, got \(spec.classes)" : "model needs at least 1 output, got \(spec.classes)")
        }
        guard !spec.layers.isEmpty else { throw ModelError("model has no layers") }
        var layers: [any Layer] = []
        var layout = ParameterLayout()
        var offsets: [Int] = []
        var shape = spec.input
        var counters: [String: Int] = [:]
        func build(_ layerSpec: LayerSpec, _ shape: TensorShape) throws -> (layer: any Layer, kind: String) {
            let layer: any Layer
            let kind: String
            switch layerSpec {
            case .dense(let outputs):
                layer = Dense(inputs: shape.count, outputs: outputs)
                kind = "dense"
            case .relu:
                layer = ReLU(shape: shape)
                kind = "relu"
            case .conv(let k, let channels, let stride):
                guard shape.height > 1 || shape.width > 1 else {
                    throw ModelError("\(layerSpec) needs an image input, got a vector of \(shape.count)")
                }
                layer = Conv2D(input: shape, kernelSize: k, outputChannels: channels, stride: stride)
                kind = "conv"
            case .depthwise(let k, let stride):
                guard shape.height > 1 || shape.width > 1 else {
                    throw ModelError("\(layerSpec) needs an image input, got a vector of \(shape.count)")
                }
                layer = DepthwiseConv2D(input: shape, kernelSize: k, stride: stride)
                kind = "dwconv"
            case .dropout(let rate):
                layer = Dropout(shape: shape, rate: rate)
                kind = "dropout"
            case .embedding(let vocabulary, let dimension):
                layer = Embedding(input: shape, vocabulary: vocabulary, dimension: dimension)
                kind = "embedding"
            case .gru(let hidden):
                layer = GRU(input: shape, hidden: hidden)
                kind = "gru"
            case .maxPool:
                guard shape.height >= 2, shape.width >= 2 else {
                    throw ModelError("maxpool2 needs at least a 2x2 input, got \(shape)")
                }
                layer = MaxPool2D(shape: shape)
                kind = "pool"
            case .avgPool:
                guard shape.height >= 2, shape.width >= 2 else {
                    throw ModelError("avgpool2 needs at least a 2x2 input, got \(shape)")
                }
                layer = AvgPool2D(shape: shape)
                kind = "pool"
            case .globalAvgPool:
                guard shape.height > 1 || shape.width > 1 else {
                    throw ModelError("globalavgpool needs an image input, got a vector of \(shape.count)")
                }
                layer = GlobalAvgPool(shape: shape)
                kind = "pool"
            case .groupNorm(let groups):
                guard shape.channels % groups == 0 else {
                    throw ModelError("groupnorm:\(groups): the groups must divide the \(shape.channels) channels")
                }
                layer = GroupNorm(shape: shape, groups: groups)
                kind = "norm"
            case .flatten:
                layer = Flatten(shape: shape)
                kind = "flatten"
            case .adapted(let baseSpec, let rank, let freezesA):
                let base = try build(baseSpec, shape)
                layer = LowRankAdapter(base: base.layer, rank: rank, freezesA: freezesA)
                kind = base.kind
            }
            return (layer, kind)
        }
        let adapters = spec.hasAdapters
        for layerSpec in spec.layers {
            let (layer, kind) = try build(layerSpec, shape)
            if case .embedding = layerSpec, !layers.isEmpty { throw ModelError("\(layerSpec) reads token ids, so it must be the first layer") }
            counters[kind, default: 0] += 1
            offsets.append(layout.parameterCount)
            for parameter in layer.parameterShapes {
                layout.append(name: "\(kind)\(counters[kind]!).\(parameter.name)", shape: parameter.shape,
                              trainable: !adapters || LowRankAdapter.trains(parameter.name))
            }
            layers.append(layer)
            shape = layer.outputShape
        }
        guard shape.count == spec.classes else {
            throw ModelError("the last layer gives \(shape.count) outputs but the model has \(spec.classes) \(spec.loss.usesClassLabels ? "classes" : "outputs")")
        }
        self.spec = spec
        self.layers = layers
        self.layout = layout
        self.parameterOffsets = offsets
    }

    /// Why `data` cannot train or test this model (its features or targets do not fit), or nil.
    public func accepts(_ data: Dataset) -> String? {
        if data.sampleShape.count != inputShape.count {
            return "\(data.name) has \(data.sampleShape.count) values per example (\(data.sampleShape)); the model's input is \(inputShape.count) (\(inputShape))"
        }
        if let embedding = layers.first as? Embedding,
           let bad = data.features.firstIndex(where: { $0 < 0 || $0 >= Float(embedding.vocabulary) || $0.rounded() != $0 }) {
            return "\(data.name): example \(bad / inputShape.count), position \(bad % inputShape.count): \(data.features[bad]) is not a token id in 0..<\(embedding.vocabulary)"
        }
        if spec.loss.usesClassLabels {
            guard data.hasClassLabels else { return "\(data.name) has target values, the model's loss (softmax) needs class labels" }
            guard data.classes <= classes else { return "\(data.name) has \(data.classes) classes, the model \(classes)" }
        } else {
            guard !data.hasClassLabels else { return "\(data.name) has class labels, the model's loss (\(spec.loss)) needs \(classes) target values per example" }
            guard data.classes == classes else { return "\(data.name) has \(data.classes) target values per example, the model \(classes)" }
        }
        return nil
    }

    /// Fresh parameters, initialised layer by layer from `seed`.
    public func initialParameters(seed: UInt64) -> [Float] {
        var generator = SeededGenerator(seed: seed, stream: 0x1217)
        var parameters = [Float](repeating: 0, count: parameterCount)
        parameters.withUnsafeMutableBufferPointer { all in
            for (layer, offset) in zip(layers, parameterOffsets) where layer.parameterCount > 0 {
                let slice = UnsafeMutableBufferPointer(rebasing: all[offset..<(offset + layer.parameterCount)])
                layer.initialize(slice, generator: &generator)
            }
        }
        return parameters
    }

    /// One line per layer with its output shape and parameter count.
    public var summary: String {
        var lines: [String] = []
        for layer in layers {
            lines.append("\(layer) → \(layer.outputShape)  (\(layer.parameterCount) parameters)")
        }
        lines.append("total: \(parameterCount) parameters in \(layout.tensors.count) tensors")
        return lines.joined(separator: "\n")
    }
}
