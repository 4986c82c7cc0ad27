/// Group normalisation (Wu and He 2018): each example's channels are cut into `groups` equal
/// groups, each group's values (all positions, its channels) are normalised to mean 0 and
/// variance 1, then scaled and shifted per channel: y = γ[c]·(x − μ)/√(σ² + ε) + β[c], ε = 1e-5,
/// σ² the biased variance. With one group it is layer normalisation.
///
/// Chosen over batch normalisation because its statistics are each example's own: they do not
/// depend on the batch, which on a device is small and, across devices, drawn from different
/// distributions (batch statistics are a known failure of federated training on non-IID data,
/// Hsieh et al. 2020), and nothing but γ and β needs to be averaged. γ starts at 1, β at 0.
public struct GroupNorm: Layer {
    public let inputShape: TensorShape
    public let groups: Int
    static let epsilon: Float = 1e-5

    public init(shape: TensorShape, groups: Int) {
        precondition(groups > 0 && shape.channels % groups == 0, "GroupNorm groups must divide the channels")
        inputShape = shape
        self.groups = groups
    }

    public var outputShape: TensorShape { inputShape }
    public var parameterShapes: [(name: String, shape: [Int])] { [("gamma", [inputShape.channels]), ("beta", [inputShape.channels])] }
    public var description: String { "GroupNorm(\(groups))" }

    /// x̂ of every value, then 1/√(σ² + ε) of every (example, group).
    public func scratchBytes(batch: Int) -> Int {
        aligned64(batch * inputShape.count * MemoryLayout<Float>.stride) + aligned64(batch * groups * MemoryLayout<Float>.stride)
    }

    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {
        let c = inputShape.channels
        for i in 0..<c { parameters[i] = 1 }
        for i in c..<(2 * c) { parameters[i] = 0 }
    }

    private func buffers(_ scratch: UnsafeMutableRawPointer, batch: Int) -> (normalised: UnsafeMutablePointer<Float>, inverse: UnsafeMutablePointer<Float>) {
        let normalised = scratch.assumingMemoryBound(to: Float.self)
        let inverse = (scratch + aligned64(batch * inputShape.count * MemoryLayout<Float>.stride)).assumingMemoryBound(to: Float.self)
        return (normalised, inverse)
    }

    public func forward(_ f: ForwardBuffers) {
        let (positions, c) = (inputShape.height * inputShape.width, inputShape.channels)
        let width = c / groups
        let count = Double(positions * width)
        let (normalised, inverse) = buffers(f.scratch, batch: f.batch)
        let gamma = f.parameters, beta = f.parameters + c
        for b in 0..<f.batch {
            let x = f.input + b * inputShape.count
            for g in 0..<groups {
                // Mean and variance in binary64, two passes.
                var sum = 0.0
                for p in 0..<positions { for ch in (g * width)..<((g + 1) * width) { sum += Double(x[p * c + ch]) } }
                let mean = sum / count
                var squares = 0.0
                for p in 0..<positions {
                    for ch in (g * width)..<((g + 1) * width) {
                        let d = Double(x[p * c + ch]) - mean
                        squares += d * d
                    }
                }
                let scale = Float(1 / (squares / count + Double(Self.epsilon)).squareRoot())
                inverse[b * groups + g] = scale
                for p in 0..<positions {
                    for ch in (g * width)..<((g + 1) * width) {
                        let i = b * inputShape.count + p * c + ch
                        let hat = (x[p * c + ch] - Float(mean)) * scale
                        normalised[i] = hat
                        f.output[i] = gamma[ch] * hat + beta[ch]
                    }
                }
            }
        }
    }

    public func backward(_ g: BackwardBuffers) {
        let f = g.forward
        let (positions, c) = (inputShape.height * inputShape.width, inputShape.channels)
        let width = c / groups
        let count = Float(positions * width)
        let (normalised, inverse) = buffers(f.scratch, batch: f.batch)
        let gamma = f.parameters
        let dGamma = g.parameterGradient, dBeta = g.parameterGradient + c
        dGamma.update(repeating: 0, count: 2 * c)
        for b in 0..<f.batch {
            for group in 0..<groups {
                // ∂x = (1/σ̂)·(∂x̂ − mean(∂x̂) − x̂·mean(∂x̂·x̂)), ∂x̂ = ∂y·γ, over the group's values.
                var meanGradient: Float = 0, meanProduct: Float = 0
                for p in 0..<positions {
                    for ch in (group * width)..<((group + 1) * width) {
                        let i = b * inputShape.count + p * c + ch
                        let dy = g.outputGradient[i], hat = normalised[i]
                        dGamma[ch] += dy * hat
                        dBeta[ch] += dy
                        meanGradient += dy * gamma[ch]
                        meanProduct += dy * gamma[ch] * hat
                    }
                }
                guard let dx = g.inputGradient else { continue }
                meanGradient /= count
                meanProduct /= count
                let scale = inverse[b * groups + group]
                for p in 0..<positions {
                    for ch in (group * width)..<((group + 1) * width) {
                        let i = b * inputShape.count + p * c + ch
                        dx[i] = scale * (g.outputGradient[i] * gamma[ch] - meanGradient - normalised[i] * meanProduct)
                    }
                }
            }
        }
    }
}
