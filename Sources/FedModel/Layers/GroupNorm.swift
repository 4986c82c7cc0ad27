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

    /// Every loop runs over whole NHWC rows (all channels of one position), so it vectorises;
    /// sums are kept per channel, in binary64 for the statistics, and gathered into groups.
    public func forward(_ f: ForwardBuffers) {
        let (positions, c) = (inputShape.height * inputShape.width, inputShape.channels)
        let width = c / groups
        let count = Double(positions * width)
        let (normalised, inverse) = buffers(f.scratch, batch: f.batch)
        let gamma = f.parameters, beta = f.parameters + c
        withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * c) { sums in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * c) { perChannel in
                let sum = sums.baseAddress!, squares = sum + c
                let mean = perChannel.baseAddress!, scale = mean + c
                for b in 0..<f.batch {
                    let x = f.input + b * inputShape.count
                    sum.update(repeating: 0, count: 2 * c)
                    if c % 16 == 0 {
                        // The same sums in the same order, 16 channels at a time in registers.
                        for block in stride(from: 0, to: c, by: 16) {
                            var total = SIMD16<Double>()
                            for p in 0..<positions { total += SIMD16<Double>(load16(x + p * c + block)) }
                            store16(total, sum + block)
                        }
                    } else {
                        for p in 0..<positions {
                            let row = x + p * c
                            for ch in 0..<c { sum[ch] += Double(row[ch]) }
                        }
                    }
                    // Each group's mean, spread back over its channels, then the squared deviations.
                    for g in 0..<groups {
                        var total = 0.0
                        for ch in (g * width)..<((g + 1) * width) { total += sum[ch] }
                        for ch in (g * width)..<((g + 1) * width) { sum[ch] = total / count }
                    }
                    if c % 16 == 0 {
                        for block in stride(from: 0, to: c, by: 16) {
                            let centre = load16(sum + block)
                            var total = SIMD16<Double>()
                            for p in 0..<positions {
                                let d = SIMD16<Double>(load16(x + p * c + block)) - centre
                                total += d * d
                            }
                            store16(total, squares + block)
                        }
                    } else {
                        for p in 0..<positions {
                            let row = x + p * c
                            for ch in 0..<c {
                                let d = Double(row[ch]) - sum[ch]
                                squares[ch] += d * d
                            }
                        }
                    }
                    for g in 0..<groups {
                        var total = 0.0
                        for ch in (g * width)..<((g + 1) * width) { total += squares[ch] }
                        let inverseDeviation = Float(1 / (total / count + Double(Self.epsilon)).squareRoot())
                        inverse[b * groups + g] = inverseDeviation
                        for ch in (g * width)..<((g + 1) * width) {
                            mean[ch] = Float(sum[ch])
                            scale[ch] = inverseDeviation
                        }
                    }
                    if c % 16 == 0 {
                        for block in stride(from: 0, to: c, by: 16) {
                            let (m, s, g, o) = (load16(mean + block), load16(scale + block), load16(gamma + block), load16(beta + block))
                            for p in 0..<positions {
                                let i = b * inputShape.count + p * c + block
                                let hat = (load16(x + p * c + block) - m) * s
                                store16(hat, normalised + i)
                                store16(g * hat + o, f.output + i)
                            }
                        }
                    } else {
                        for p in 0..<positions {
                            let i = b * inputShape.count + p * c
                            let row = x + p * c, hats = normalised + i, out = f.output + i
                            for ch in 0..<c {
                                let hat = (row[ch] - mean[ch]) * scale[ch]
                                hats[ch] = hat
                                out[ch] = gamma[ch] * hat + beta[ch]
                            }
                        }
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
        withUnsafeTemporaryAllocation(of: Float.self, capacity: 5 * c) { buffer in
            let sumGradient = buffer.baseAddress!, sumProduct = sumGradient + c
            let meanGradient = sumProduct + c, meanProduct = meanGradient + c, scale = meanProduct + c
            for b in 0..<f.batch {
                sumGradient.update(repeating: 0, count: 2 * c)
                // ∂x = (1/σ̂)·(∂x̂ − mean(∂x̂) − x̂·mean(∂x̂·x̂)), ∂x̂ = ∂y·γ, over each group's values.
                if c % 16 == 0 {
                    // The same sums in the same order, 16 channels at a time in registers.
                    for block in stride(from: 0, to: c, by: 16) {
                        var (gammaSum, betaSum) = (load16(dGamma + block), load16(dBeta + block))
                        var (gradientSum, productSum) = (SIMD16<Float>(), SIMD16<Float>())
                        for p in 0..<positions {
                            let i = b * inputShape.count + p * c + block
                            let dy = load16(g.outputGradient + i)
                            let product = dy * load16(normalised + i)
                            gammaSum += product
                            betaSum += dy
                            gradientSum += dy
                            productSum += product
                        }
                        store16(gammaSum, dGamma + block)
                        store16(betaSum, dBeta + block)
                        store16(gradientSum, sumGradient + block)
                        store16(productSum, sumProduct + block)
                    }
                } else {
                    for p in 0..<positions {
                        let i = b * inputShape.count + p * c
                        let dy = g.outputGradient + i, hats = UnsafePointer(normalised + i)
                        for ch in 0..<c {
                            let product = dy[ch] * hats[ch]
                            dGamma[ch] += product
                            dBeta[ch] += dy[ch]
                            sumGradient[ch] += dy[ch]
                            sumProduct[ch] += product
                        }
                    }
                }
                guard let dx = g.inputGradient else { continue }
                for group in 0..<groups {
                    var gradient: Float = 0, product: Float = 0
                    for ch in (group * width)..<((group + 1) * width) {
                        gradient += sumGradient[ch] * gamma[ch]
                        product += sumProduct[ch] * gamma[ch]
                    }
                    for ch in (group * width)..<((group + 1) * width) {
                        meanGradient[ch] = gradient / count
                        meanProduct[ch] = product / count
                        scale[ch] = inverse[b * groups + group]
                    }
                }
                if c % 16 == 0 {
                    for block in stride(from: 0, to: c, by: 16) {
                        let (s, gm) = (load16(scale + block), load16(gamma + block))
                        let (mg, mp) = (load16(meanGradient + block), load16(meanProduct + block))
                        for p in 0..<positions {
                            let i = b * inputShape.count + p * c + block
                            store16(s * (load16(g.outputGradient + i) * gm - mg - load16(normalised + i) * mp), dx + i)
                        }
                    }
                } else {
                    for p in 0..<positions {
                        let i = b * inputShape.count + p * c
                        let dy = g.outputGradient + i, hats = UnsafePointer(normalised + i), out = dx + i
                        for ch in 0..<c {
                            out[ch] = scale[ch] * (dy[ch] * gamma[ch] - meanGradient[ch] - hats[ch] * meanProduct[ch])
                        }
                    }
                }
            }
        }
    }
}

@inline(__always) private func load16(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
}

@inline(__always) private func load16(_ p: UnsafeMutablePointer<Float>) -> SIMD16<Float> { load16(UnsafePointer(p)) }

@inline(__always) private func load16(_ p: UnsafeMutablePointer<Double>) -> SIMD16<Double> {
    UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Double>.self)
}

@inline(__always) private func store16(_ value: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: value, as: SIMD16<Float>.self)
}

@inline(__always) private func store16(_ value: SIMD16<Double>, _ p: UnsafeMutablePointer<Double>) {
    UnsafeMutableRawPointer(p).storeBytes(of: value, as: SIMD16<Double>.self)
}
