/// One layer of a model description, as written in configuration files:
/// `dense:200`, `relu`, `conv5x5:32`, `conv3x3:32:s2`, `dwconv3x3`, `dwconv3x3:s2`, `maxpool2`,
/// `dropout:0.25`, `flatten`, and a dense or convolution layer with a low-rank adapter,
/// `dense:10:lora4`.
public indirect enum LayerSpec: Hashable, Sendable, CustomStringConvertible {
    case dense(outputs: Int)
    case relu
    case conv(kernelSize: Int, channels: Int, stride: Int = 1)
    /// Depthwise convolution, one filter per channel (``DepthwiseConv2D``).
    case depthwise(kernelSize: Int, stride: Int = 1)
    /// Inverted dropout at this rate in training (``Dropout``).
    case dropout(rate: Double)
    /// Token ids to vectors (``Embedding``): `embedding:V:D`.
    case embedding(vocabulary: Int, dimension: Int)
    /// A gated recurrent unit over the steps of its input, giving the last state (``GRU``): `gru:H`.
    case gru(hidden: Int)
    case maxPool
    case avgPool
    case globalAvgPool
    case groupNorm(groups: Int)
    case flatten
    /// A dense or convolution layer with a trainable rank-r adapter (``LowRankAdapter``):
    /// `dense:N:loraR`, `convKxK:C[:sS]:loraR`; with `freezesA` (`:ffaR`, FFA-LoRA, Sun et al.
    /// 2024) the adapter's A stays at its random start and only B trains.
    case adapted(LayerSpec, rank: Int, freezesA: Bool = false)

    /// Parses one layer string; throws ``ModelError`` naming the string when it is not understood.
    public init(parsing text: String) throws {
        let lowered = text.lowercased().trimmingCharacters(in: .whitespaces)
        func positive(_ s: Substring) throws -> Int {
            guard let value = Int(s), value > 0, value <= 1 << 24 else { throw ModelError("bad layer \"\(text)\": \"\(s)\" is not a positive integer") }
            return value
        }
        /// `KxK` after a prefix: an odd square kernel size.
        func kernel(_ s: Substring) throws -> Int {
            let size = s.split(separator: "x", omittingEmptySubsequences: false)
            guard size.count == 2, size[0] == size[1] else { throw ModelError("bad layer \"\(text)\": only square kernels (KxK)") }
            let k = try positive(size[0])
            guard k % 2 == 1 else { throw ModelError("bad layer \"\(text)\": kernel size must be odd for same padding") }
            return k
        }
        /// `sN`: a stride.
        func stride(_ s: Substring) throws -> Int {
            guard s.hasPrefix("s"), let value = Int(s.dropFirst()), (1...16).contains(value) else {
                throw ModelError("bad layer \"\(text)\": \"\(s)\" is not a stride (s1 to s16)")
            }
            return value
        }
        if let colon = lowered.lastIndex(of: ":"), let kind = ["lora", "ffa"].first(where: { lowered[lowered.index(after: colon)...].hasPrefix($0) }) {
            let rankText = lowered[lowered.index(after: colon)...].dropFirst(kind.count)
            let base = try LayerSpec(parsing: String(lowered[..<colon]))
            switch base {
            case .dense, .conv: self = .adapted(base, rank: try positive(rankText), freezesA: kind == "ffa")
            default: throw ModelError("bad layer \"\(text)\": only dense and convolution layers take an adapter (dense:N:loraR or :ffaR, convKxK:C:loraR)")
            }
            return
        }
        let expected = "expected dense:N, relu, convKxK:C[:sS], dwconvKxK[:sS], maxpool2, avgpool2, globalavgpool, groupnorm:G, dropout:P, embedding:V:D, gru:H or flatten, and dense or conv layers with :loraR or :ffaR"
        switch lowered {
        case "relu": self = .relu
        case "maxpool2", "maxpool": self = .maxPool
        case "avgpool2", "avgpool": self = .avgPool
        case "globalavgpool": self = .globalAvgPool
        case "flatten": self = .flatten
        default:
            let parts = lowered.split(separator: ":", omittingEmptySubsequences: false)
            if parts[0].hasPrefix("dwconv") {
                guard parts.count <= 2 else { throw ModelError("bad layer \"\(text)\": dwconvKxK or dwconvKxK:sS") }
                self = .depthwise(kernelSize: try kernel(parts[0].dropFirst(6)), stride: parts.count == 2 ? try stride(parts[1]) : 1)
                return
            }
            if parts[0] == "embedding" {
                guard parts.count == 3 else { throw ModelError("bad layer \"\(text)\": embedding:V:D (vocabulary, dimension)") }
                self = .embedding(vocabulary: try positive(parts[1]), dimension: try positive(parts[2]))
                return
            }
            if parts[0].hasPrefix("conv"), parts.count == 3 {
                self = .conv(kernelSize: try kernel(parts[0].dropFirst(4)), channels: try positive(parts[1]), stride: try stride(parts[2]))
                return
            }
            guard parts.count == 2 else { throw ModelError("unknown layer \"\(text)\" (\(expected))") }
            if parts[0] == "dropout" {
                guard let rate = Double(parts[1]), rate >= 0, rate < 1 else { throw ModelError("bad layer \"\(text)\": the dropout rate must be in [0, 1)") }
                self = .dropout(rate: rate)
            } else if parts[0] == "gru" {
                self = .gru(hidden: try positive(parts[1]))
            } else if parts[0] == "dense" {
                self = .dense(outputs: try positive(parts[1]))
            } else if parts[0] == "groupnorm" {
                self = .groupNorm(groups: try positive(parts[1]))
            } else if parts[0].hasPrefix("conv") {
                self = .conv(kernelSize: try kernel(parts[0].dropFirst(4)), channels: try positive(parts[1]))
            } else {
                throw ModelError("unknown layer \"\(text)\" (\(expected))")
            }
        }
    }

    public var description: String {
        switch self {
        case .dense(let n): "dense:\(n)"
        case .relu: "relu"
        case .conv(let k, let c, let s): "conv\(k)x\(k):\(c)" + (s == 1 ? "" : ":s\(s)")
        case .depthwise(let k, let s): "dwconv\(k)x\(k)" + (s == 1 ? "" : ":s\(s)")
        case .dropout(let rate): "dropout:\(rate)"
        case .embedding(let v, let d): "embedding:\(v):\(d)"
        case .gru(let h): "gru:\(h)"
        case .maxPool: "maxpool2"
        case .avgPool: "avgpool2"
        case .globalAvgPool: "globalavgpool"
        case .groupNorm(let g): "groupnorm:\(g)"
        case .flatten: "flatten"
        case .adapted(let base, let rank, let freezesA): "\(base):\(freezesA ? "ffa" : "lora")\(rank)"
        }
    }
}

/// A task and the model that learns it: input shape, output size, loss and layers. The final
/// layer's output size must equal ``classes``: the class count (logits for softmax
/// cross-entropy), or the number of target values (mse) or labels (bce).
public struct ModelSpec: Hashable, Sendable {
    public var input: TensorShape
    /// The output size: classes, target values or labels, as the loss reads them.
    public var classes: Int
    public var layers: [LayerSpec]
    public var loss: Loss

    public init(input: TensorShape, classes: Int, layers: [LayerSpec], loss: Loss = .softmaxCrossEntropy) {
        self.input = input
        self.classes = classes
        self.layers = layers
        self.loss = loss
    }

    /// The output size (the same as ``classes``).
    public var outputs: Int { classes }

    /// Whether some layer has a low-rank adapter: then only the adapters are trained.
    public var hasAdapters: Bool { layers.contains { if case .adapted = $0 { true } else { false } } }

    /// McMahan et al. 2017's "2NN": 784-200-200-10 with ReLU, 199,210 parameters.
    public static let mnist2NN = ModelSpec(
        input: .vector(784), classes: 10,
        layers: [.dense(outputs: 200), .relu, .dense(outputs: 200), .relu, .dense(outputs: 10)])

    /// McMahan et al. 2017's "CNN": conv5x5·32 → pool → conv5x5·64 → pool → dense 512 → dense 10,
    /// 1,663,370 parameters.
    public static let mnistCNN = ModelSpec(
        input: TensorShape(height: 28, width: 28, channels: 1), classes: 10,
        layers: [
            .conv(kernelSize: 5, channels: 32), .relu, .maxPool,
            .conv(kernelSize: 5, channels: 64), .relu, .maxPool,
            .flatten, .dense(outputs: 512), .relu, .dense(outputs: 10),
        ])

    /// The named presets: `2nn` and `cnn`.
    public static func preset(_ name: String) -> ModelSpec? {
        switch name.lowercased() {
        case "2nn", "mnist-2nn": mnist2NN
        case "cnn", "mnist-cnn": mnistCNN
        default: nil
        }
    }
}

/// A model that cannot be built or used as asked.
public struct ModelError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

import Foundation

extension ModelSpec {
    /// The task as one line, `HxWxC|outputs|layer,layer,...` (a vector input is just its
    /// length), as the coordinator sends it to clients: `784|10|dense:200,relu,dense:10`. A loss
    /// other than softmax cross-entropy is a fourth field: `10|1|dense:16,relu,dense:1|mse`.
    public var wireDescription: String {
        let input = input.height == 1 && input.width == 1 ? "\(input.channels)" : "\(input.height)x\(input.width)x\(input.channels)"
        let text = "\(input)|\(classes)|" + layers.map(\.description).joined(separator: ",")
        return loss == .softmaxCrossEntropy ? text : text + "|\(loss)"
    }

    /// Parses ``wireDescription``.
    public init(wireDescription text: String) throws {
        let parts = text.split(separator: "|", omittingEmptySubsequences: false)
        guard parts.count == 3 || parts.count == 4 else { throw ModelError("model description \"\(text)\" is not input|outputs|layers[|loss]") }
        var loss = Loss.softmaxCrossEntropy
        if parts.count == 4 {
            guard let named = Loss(parsing: String(parts[3])), parts[3] != "softmax" else {
                throw ModelError("unknown loss \"\(parts[3])\" in model description (mse or bce; softmax is written by leaving the field out)")
            }
            loss = named
        }
        let dims = parts[0].split(separator: "x").map { Int($0) }
        let shape: TensorShape
        if dims.count == 1, let n = dims[0], n > 0 {
            shape = .vector(n)
        } else if dims.count == 3, let h = dims[0], let w = dims[1], let c = dims[2], h > 0, w > 0, c > 0 {
            shape = TensorShape(height: h, width: w, channels: c)
        } else {
            throw ModelError("bad input shape \"\(parts[0])\" in model description")
        }
        guard let classes = Int(parts[1]), classes >= (loss.usesClassLabels ? 2 : 1), classes <= Dataset.maximumClasses else {
            throw ModelError("bad output count \"\(parts[1])\" in model description")
        }
        let layers = try parts[2].split(separator: ",").map { try LayerSpec(parsing: String($0)) }
        self.init(input: shape, classes: classes, layers: layers, loss: loss)
    }
}
