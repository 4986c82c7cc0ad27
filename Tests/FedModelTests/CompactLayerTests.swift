import Testing
@testable import FedModel

/// The layers compact on-device models are built from, beyond their gradient checks: strided
/// and depthwise convolutions agree with direct sums and give the same bits on one core or two;
/// dropout's masks are reproducible, of the right rate and scale, and off in evaluation.
@Suite struct CompactLayerTests {
    /// Runs `layer` forward (and backward with ∂y = 1) on `threads` cores.
    func run(_ layer: any Layer, input: [Float], parameters: [Float], batch: Int, threads: Int, training: Bool = false, seed: UInt64 = 0)
        -> (output: [Float], dx: [Float], dp: [Float]) {
        var output = [Float](repeating: 0, count: batch * layer.outputShape.count)
        var dx = [Float](repeating: 0, count: input.count)
        var dp = [Float](repeating: 0, count: max(1, parameters.count))
        let ones = [Float](repeating: 1, count: output.count)
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: max(64, layer.scratchBytes(batch: batch)), alignment: 64)
        defer { scratch.deallocate() }
        input.withUnsafeBufferPointer { x in parameters.withUnsafeBufferPointer { p in output.withUnsafeMutableBufferPointer { y in
            ones.withUnsafeBufferPointer { r in dx.withUnsafeMutableBufferPointer { dx in dp.withUnsafeMutableBufferPointer { dp in
                let f = ForwardBuffers(batch: batch, parameters: p.baseAddress ?? r.baseAddress!, input: x.baseAddress!, output: y.baseAddress!,
                                       scratch: scratch, threads: threads, training: training, seed: seed)
                layer.forward(f)
                layer.backward(BackwardBuffers(forward: f, outputGradient: r.baseAddress!, inputGradient: dx.baseAddress!, parameterGradient: dp.baseAddress!))
            }}}
        }}}
        return (output, dx, dp)
    }

    func random(_ count: Int, seed: UInt64) -> [Float] {
        var g = SeededGenerator(seed: seed)
        return (0..<count).map { _ in g.nextUniform(-1, 1) }
    }

    @Test func stridedAndDepthwiseConvolutionsMatchDirectSums() {
        let shape = TensorShape(height: 7, width: 6, channels: 3)
        let x = random(2 * shape.count, seed: 1)
        let conv = Conv2D(input: shape, kernelSize: 3, outputChannels: 2, stride: 2)
        let w = random(conv.parameterCount, seed: 2)
        #expect(conv.outputShape == TensorShape(height: 4, width: 3, channels: 2))
        let depthwise = DepthwiseConv2D(input: shape, kernelSize: 3, stride: 2)
        let d = random(depthwise.parameterCount, seed: 3)
        let convOut = run(conv, input: x, parameters: w, batch: 2, threads: 1).output
        let depthOut = run(depthwise, input: x, parameters: d, batch: 2, threads: 1).output
        func at(_ b: Int, _ y: Int, _ x0: Int, _ c: Int) -> Float {
            guard y >= 0, y < 7, x0 >= 0, x0 < 6 else { return 0 }
            return x[((b * 7 + y) * 6 + x0) * 3 + c]
        }
        for b in 0..<2 { for oy in 0..<4 { for ox in 0..<3 {
            for o in 0..<2 {
                var sum = Double(w[27 * 2 + o])
                for ky in 0..<3 { for kx in 0..<3 { for i in 0..<3 {
                    sum += Double(at(b, oy * 2 + ky - 1, ox * 2 + kx - 1, i)) * Double(w[((ky * 3 + kx) * 3 + i) * 2 + o])
                }}}
                #expect(abs(Double(convOut[((b * 4 + oy) * 3 + ox) * 2 + o]) - sum) < 1e-5)
            }
            for c in 0..<3 {
                var sum = Double(d[27 + c])
                for ky in 0..<3 { for kx in 0..<3 { sum += Double(at(b, oy * 2 + ky - 1, ox * 2 + kx - 1, c)) * Double(d[(ky * 3 + kx) * 3 + c]) } }
                #expect(abs(Double(depthOut[((b * 4 + oy) * 3 + ox) * 3 + c]) - sum) < 1e-5)
            }
        }}}
    }

    @Test func depthwiseGivesTheSameBitsOnOneCoreOrTwo() {
        let layer = DepthwiseConv2D(input: TensorShape(height: 14, width: 14, channels: 32), kernelSize: 3, stride: 2)
        let x = random(10 * layer.inputShape.count, seed: 4), p = random(layer.parameterCount, seed: 5)
        let one = run(layer, input: x, parameters: p, batch: 10, threads: 1)
        let two = run(layer, input: x, parameters: p, batch: 10, threads: 2)
        #expect(one.output == two.output && one.dx == two.dx && one.dp == two.dp)
    }

    /// GroupNorm over channel counts in multiples of 16 runs 16 channels at a time in registers;
    /// it must give the plain per-value loops' bits: the same sums in the same order.
    @Test func groupNormBlocksGiveThePlainLoopsBits() {
        let (shape, groups, batch) = (TensorShape(height: 3, width: 5, channels: 32), 8, 3)
        let layer = GroupNorm(shape: shape, groups: groups)
        var generator = SeededGenerator(seed: 12)
        let x = (0..<(batch * shape.count)).map { _ in generator.nextUniform(-2, 2) }
        let parameters = (0..<64).map { _ in generator.nextUniform(0.5, 1.5) }
        let dy = (0..<x.count).map { _ in generator.nextUniform(-1, 1) }
        var (y, dx, dp) = ([Float](repeating: 0, count: x.count), [Float](repeating: 0, count: x.count), [Float](repeating: 0, count: 64))
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: layer.scratchBytes(batch: batch), alignment: 64)
        defer { scratch.deallocate() }
        x.withUnsafeBufferPointer { xp in parameters.withUnsafeBufferPointer { pp in y.withUnsafeMutableBufferPointer { yp in
            dy.withUnsafeBufferPointer { dyp in dx.withUnsafeMutableBufferPointer { dxp in dp.withUnsafeMutableBufferPointer { dpp in
                let f = ForwardBuffers(batch: batch, parameters: pp.baseAddress!, input: xp.baseAddress!, output: yp.baseAddress!, scratch: scratch, threads: 1)
                layer.forward(f)
                layer.backward(BackwardBuffers(forward: f, outputGradient: dyp.baseAddress!, inputGradient: dxp.baseAddress!, parameterGradient: dpp.baseAddress!))
            }}}
        }}}
        // The plain loops, value by value.
        let (positions, c, width) = (shape.height * shape.width, 32, 32 / groups)
        var (hats, inverse) = ([Float](repeating: 0, count: x.count), [Float](repeating: 0, count: batch * groups))
        var (expectedY, expectedDx, expectedDp) = ([Float](repeating: 0, count: x.count), [Float](repeating: 0, count: x.count), [Float](repeating: 0, count: 64))
        for b in 0..<batch {
            var sum = [Double](repeating: 0, count: c), squares = [Double](repeating: 0, count: c)
            for p in 0..<positions { for ch in 0..<c { sum[ch] += Double(x[(b * positions + p) * c + ch]) } }
            for g in 0..<groups {
                let total = sum[(g * width)..<((g + 1) * width)].reduce(0, +)
                for ch in (g * width)..<((g + 1) * width) { sum[ch] = total / Double(positions * width) }
            }
            for p in 0..<positions { for ch in 0..<c { let d = Double(x[(b * positions + p) * c + ch]) - sum[ch]; squares[ch] += d * d } }
            for g in 0..<groups {
                let total = squares[(g * width)..<((g + 1) * width)].reduce(0, +)
                inverse[b * groups + g] = Float(1 / (total / Double(positions * width) + Double(GroupNorm.epsilon)).squareRoot())
            }
            for p in 0..<positions {
                for ch in 0..<c {
                    let i = (b * positions + p) * c + ch
                    hats[i] = (x[i] - Float(sum[ch])) * inverse[b * groups + ch / width]
                    expectedY[i] = parameters[ch] * hats[i] + parameters[c + ch]
                }
            }
            var (sumGradient, sumProduct) = ([Float](repeating: 0, count: c), [Float](repeating: 0, count: c))
            for p in 0..<positions {
                for ch in 0..<c {
                    let i = (b * positions + p) * c + ch
                    let product = dy[i] * hats[i]
                    expectedDp[ch] += product
                    expectedDp[c + ch] += dy[i]
                    sumGradient[ch] += dy[i]
                    sumProduct[ch] += product
                }
            }
            for g in 0..<groups {
                var (gradient, product): (Float, Float) = (0, 0)
                for ch in (g * width)..<((g + 1) * width) {
                    gradient += sumGradient[ch] * parameters[ch]
                    product += sumProduct[ch] * parameters[ch]
                }
                let count = Float(positions * width)
                for p in 0..<positions {
                    for ch in (g * width)..<((g + 1) * width) {
                        let i = (b * positions + p) * c + ch
                        expectedDx[i] = inverse[b * groups + g] * (dy[i] * parameters[ch] - gradient / count - hats[i] * (product / count))
                    }
                }
            }
        }
        #expect(y == expectedY)
        #expect(dx == expectedDx)
        #expect(dp == expectedDp)
    }

    @Test func dropoutMasksAreSeededScaledAndOffInEvaluation() {
        let layer = Dropout(shape: .vector(1000), rate: 0.25)
        let x = [Float](repeating: 2, count: 20_000)
        let a = run(layer, input: x, parameters: [], batch: 20, threads: 1, training: true, seed: 7)
        let b = run(layer, input: x, parameters: [], batch: 20, threads: 2, training: true, seed: 7)
        let c = run(layer, input: x, parameters: [], batch: 20, threads: 1, training: true, seed: 8)
        #expect(a.output == b.output, "the mask depends on the seed only, not on the cores")
        #expect(a.output != c.output)
        let dropped = a.output.filter { $0 == 0 }.count
        #expect(abs(Double(dropped) / 20_000 - 0.25) < 0.015, "dropped \(dropped) of 20,000")
        #expect(a.output.allSatisfy { $0 == 0 || $0 == 2 / 0.75 as Float })
        #expect(zip(a.output, a.dx).allSatisfy { y, g in (y == 0) == (g == 0) }, "the gradient flows where the value was kept")
        let evaluation = run(layer, input: x, parameters: [], batch: 20, threads: 1, training: false, seed: 7)
        #expect(evaluation.output == x && evaluation.dx == [Float](repeating: 1, count: x.count))
    }

    @Test func layerGrammarReadsTheNewLayers() throws {
        #expect(try LayerSpec(parsing: "conv3x3:32:s2") == .conv(kernelSize: 3, channels: 32, stride: 2))
        #expect(try LayerSpec(parsing: "dwconv3x3") == .depthwise(kernelSize: 3))
        #expect(try LayerSpec(parsing: "dwconv5x5:s2") == .depthwise(kernelSize: 5, stride: 2))
        #expect(try LayerSpec(parsing: "dropout:0.25") == .dropout(rate: 0.25))
        for text in ["conv3x3:32:s2", "dwconv3x3", "dwconv5x5:s2", "dropout:0.25", "conv5x5:32"] {
            #expect(try LayerSpec(parsing: text).description == text)
        }
        #expect { try LayerSpec(parsing: "dropout:1") } throws: { "\($0)".contains("in [0, 1)") }
        #expect { try LayerSpec(parsing: "conv3x3:8:2") } throws: { "\($0)".contains("not a stride") }
        #expect { try LayerSpec(parsing: "dwconv4x4") } throws: { "\($0)".contains("odd") }
        let spec = ModelSpec(input: TensorShape(height: 28, width: 28, channels: 1), classes: 10, layers: [
            .conv(kernelSize: 3, channels: 8), .relu, .depthwise(kernelSize: 3, stride: 2), .conv(kernelSize: 1, channels: 16), .relu,
            .dropout(rate: 0.1), .flatten, .dense(outputs: 10),
        ])
        let network = try Network(spec)
        #expect(network.layout.tensors.map(\.name) == ["conv1.weight", "conv1.bias", "dwconv1.weight", "dwconv1.bias", "conv2.weight", "conv2.bias", "dense1.weight", "dense1.bias"])
        #expect(network.layers[2].outputShape == TensorShape(height: 14, width: 14, channels: 8) && network.drawsPerStep)
        #expect(try ModelSpec(wireDescription: spec.wireDescription) == spec)
    }
}
