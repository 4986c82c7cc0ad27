/// A width-scaled sub-model (HeteroFL, Diao et al. 2021): the same network with only the first
/// ⌈p·n⌉ units or channels of every hidden layer, nested inside the full model, so a device
/// with less memory or compute trains a thinner copy of it. The input and the outputs stay
/// whole. Each of its parameters is a parameter of the full model (``positions``), and the
/// coordinator averages each full-model weight over the clients whose sub-model contains it.
///
/// Which units: the first ⌈p·n⌉ outputs of a dense layer, the first ⌈p·C⌉ channels of a
/// convolution; a depthwise convolution, pooling, ReLU, dropout and flatten follow their
/// input; GroupNorm keeps its group count, which must divide every width used. The last layer
/// with parameters gives the model's outputs and keeps them whole. Embeddings, GRUs and
/// low-rank adapters are not scaled (a model with them is refused).
public struct SubModel: Sendable {
    /// The width fraction p in (0, 1].
    public let fraction: Double
    public let network: Network
    /// For each parameter of the sub-model, its offset in the full model's flat vector.
    public let positions: [Int32]
    /// The full model's parameter count.
    public let fullCount: Int

    /// ⌈p·n⌉, at least 1.
    public static func width(_ n: Int, _ fraction: Double) -> Int {
        max(1, Int((Double(n) * fraction - 1e-9).rounded(.up)))
    }

    public init(of full: Network, fraction: Double) throws {
        guard fraction > 0, fraction <= 1, fraction.isFinite else { throw ModelError("width fraction must be in (0, 1], got \(fraction)") }
        let spec = full.spec
        let lastWeighted = spec.layers.lastIndex { layer in
            switch layer {
            case .dense, .conv: true
            default: false
            }
        }
        var layers: [LayerSpec] = []
        for (index, layer) in spec.layers.enumerated() {
            let keep = index == lastWeighted
            switch layer {
            case .dense(let n): layers.append(.dense(outputs: keep ? n : Self.width(n, fraction)))
            case .conv(let k, let c, let s): layers.append(.conv(kernelSize: k, channels: keep ? c : Self.width(c, fraction), stride: s))
            case .embedding, .gru, .adapted:
                throw ModelError("width-scaled sub-models need dense, convolution, depthwise, pooling, groupnorm, dropout and flatten layers; \(layer) is not scaled")
            default: layers.append(layer)
            }
        }
        let subSpec = ModelSpec(input: spec.input, classes: spec.classes, layers: layers, loss: spec.loss)
        let network: Network
        do { network = try Network(subSpec) } catch let error as ModelError {
            throw ModelError("width \(fraction): \(error.description)")
        }
        self.fraction = fraction
        self.network = network
        fullCount = full.parameterCount

        // Walk both networks side by side. `inSub`/`inFull` are the shapes entering the layer.
        var positions: [Int32] = []
        positions.reserveCapacity(network.parameterCount)
        var inSub = spec.input, inFull = spec.input
        for (layerIndex, (sub, whole)) in zip(network.layers, full.layers).enumerated() {
            let base = full.parameterOffsets[layerIndex]
            switch (sub, whole) {
            case (let s as Dense, let f as Dense):
                // Input feature i of the sub-layer is (h, w, c) of the sub activation, the
                // same (h, w) and channel of the full one.
                let fullInput = (0..<s.inputCount).map { i -> Int in
                    let c = i % inSub.channels, hw = i / inSub.channels
                    return hw * inFull.channels + c
                }
                for i in fullInput { for o in 0..<s.outputCount { positions.append(Int32(base + i * f.outputCount + o)) } }
                for o in 0..<s.outputCount { positions.append(Int32(base + f.inputCount * f.outputCount + o)) }
            case (let s as Conv2D, let f as Conv2D):
                let k = s.kernelSize, cin = s.inputShape.channels, cout = s.outputChannels
                let fin = f.inputShape.channels, fout = f.outputChannels
                for tap in 0..<(k * k) { for i in 0..<cin { for o in 0..<cout { positions.append(Int32(base + (tap * fin + i) * fout + o)) } } }
                for o in 0..<cout { positions.append(Int32(base + k * k * fin * fout + o)) }
            case (let s as DepthwiseConv2D, let f as DepthwiseConv2D):
                let k = s.kernelSize, c = s.inputShape.channels, fc = f.inputShape.channels
                for tap in 0..<(k * k) { for i in 0..<c { positions.append(Int32(base + tap * fc + i)) } }
                for i in 0..<c { positions.append(Int32(base + k * k * fc + i)) }
            case (let s as GroupNorm, let f as GroupNorm):
                let c = s.inputShape.channels, fc = f.inputShape.channels
                for i in 0..<c { positions.append(Int32(base + i)) }
                for i in 0..<c { positions.append(Int32(base + fc + i)) }
            default:
                precondition(sub.parameterCount == 0, "unscaled layer \(sub) with parameters")
            }
            // Flatten keeps the NHWC order: the next dense layer maps its inputs through the
            // image shapes.
            if !(sub is Flatten) { (inSub, inFull) = (sub.outputShape, whole.outputShape) }
        }
        precondition(positions.count == network.parameterCount, "sub-model positions do not cover its parameters")
        self.positions = positions
    }

    /// The sub-model's parameters, read from the full model's.
    public func gather(_ full: [Float]) -> [Float] {
        precondition(full.count == fullCount, "parameters do not match the full model")
        return Self.gather(full, at: positions)
    }

    /// Writes the sub-model's values into their places in a full-model-sized vector (the other
    /// places are left as they are).
    public func scatter(_ sub: [Float], into full: inout [Float]) {
        precondition(full.count == fullCount, "sizes do not match")
        Self.scatter(sub, into: &full, at: positions)
    }

    /// `source[places[i]]` for every i (compiled optimised with the numeric library).
    public static func gather(_ source: [Float], at places: [Int32]) -> [Float] {
        [Float](unsafeUninitializedCapacity: places.count) { buffer, count in
            source.withUnsafeBufferPointer { s in
                places.withUnsafeBufferPointer { p in
                    for i in 0..<p.count { buffer[i] = s[Int(p[i])] }
                }
            }
            count = places.count
        }
    }

    /// `target[places[i]] = values[i]` for every i.
    public static func scatter(_ values: [Float], into target: inout [Float], at places: [Int32]) {
        precondition(values.count == places.count, "one place per value")
        target.withUnsafeMutableBufferPointer { t in
            values.withUnsafeBufferPointer { v in
                places.withUnsafeBufferPointer { p in
                    for i in 0..<p.count { t[Int(p[i])] = v[i] }
                }
            }
        }
    }
}
