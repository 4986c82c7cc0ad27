import Testing
@testable import FedModel

/// Winograd convolutions against the im2col products they replace: the same layer computed
/// both ways on the same input must agree to float rounding, forward, ∂x and ∂W, with the tiles
/// cut into several chunks and shared between cores.
@Suite struct WinogradTests {
    @Test(arguments: [
        (5, 14, 14, 32, 64, 4),  // the MNIST CNN's second convolution
        (5, 9, 11, 16, 16, 3),  // partial tiles at the bottom and right
        (3, 8, 8, 16, 48, 5),
        (3, 1, 1, 16, 16, 2),  // a single pixel: every tap but the centre is padding
    ])
    func agreesWithIm2col(shape: (Int, Int, Int, Int, Int, Int)) {
        let (k, h, w, inputs, _, _) = shape
        let layer = Conv2D(input: TensorShape(height: h, width: w, channels: inputs), kernelSize: k, outputChannels: shape.4)
        #expect(layer.winograd != nil)
        expectFastPathsAgreeWithIm2col(shape)
    }

    /// Single-channel images take the direct convolution: rows whose width is not a multiple of
    /// the four positions summed together, and kernels wider than the four taps of one ∂W pass.
    @Test(arguments: [
        (5, 28, 28, 1, 32, 3),  // the MNIST CNN's first convolution
        (3, 7, 9, 1, 16, 2),
        (7, 6, 5, 1, 48, 3),
        (1, 4, 3, 1, 16, 2),
        (5, 1, 1, 1, 16, 2),
    ])
    func singleChannelAgreesWithIm2col(shape: (Int, Int, Int, Int, Int, Int)) {
        let (k, h, w, inputs, outputs, _) = shape
        let layer = Conv2D(input: TensorShape(height: h, width: w, channels: inputs), kernelSize: k, outputChannels: outputs)
        #expect(layer.direct != nil && layer.winograd == nil)
        expectFastPathsAgreeWithIm2col(shape)
    }

    /// The input and output transforms are written out by hand for speed; they must be the
    /// plan's matrices Bᵀ and Aᵀ.
    @Test func writtenOutTransformsAreThePlansMatrices() {
        for k in WinogradPlan.kernels.sorted() {
            let plan = WinogradPlan(kernel: k)
            let a = plan.alpha
            for j in 0..<a {
                var unit = [SIMD16<Float>](repeating: SIMD16(), count: a)
                unit[j] = SIMD16(repeating: 1)
                unit.withUnsafeMutableBufferPointer { plan.applyBT($0.baseAddress!, stride: 1) }
                for i in 0..<a {
                    #expect(abs(unit[i][0] - plan.bt[i * a + j]) < 1e-6, "\(k)x\(k) Bᵀ[\(i), \(j)]: \(unit[i][0]) vs \(plan.bt[i * a + j])")
                }
                var column = [SIMD16<Float>](repeating: SIMD16(), count: a)
                column[j] = SIMD16(repeating: 1)
                let (top, bottom) = column.withUnsafeBytes { plan.applyAT($0.baseAddress!, stride: 64) }
                #expect(top[0] == plan.at[j] && bottom[0] == plan.at[a + j], "\(k)x\(k) Aᵀ[·, \(j)]")
                // A = (Aᵀ)ᵀ, used by the filter gradient: A·(1, 0) and A·(0, 1) are Aᵀ's rows.
                var rows = [SIMD16<Float>](repeating: SIMD16(), count: 2 * a)
                rows.withUnsafeMutableBufferPointer { rows in
                    plan.applyA(SIMD16(repeating: 1), SIMD16(), into: rows.baseAddress!)
                    plan.applyA(SIMD16(), SIMD16(repeating: 1), into: rows.baseAddress! + a)
                }
                #expect(rows[j][0] == plan.at[j] && rows[a + j][0] == plan.at[a + j], "\(k)x\(k) A[\(j), ·]")
            }
        }
    }

    /// The transforms are exact for constant inputs of small integers: every output of a
    /// constant image away from the border is bias + k²·Σ_i w.
    @Test func planReproducesDirectSumsOnAnExactCase() {
        for k in WinogradPlan.kernels.sorted() {
            let layer = Conv2D(input: TensorShape(height: 2 * k + 2, width: 2 * k + 2, channels: 16), kernelSize: k, outputChannels: 16)
            let input = [Float](repeating: 1, count: layer.inputShape.count)
            var parameters = [Float](repeating: 0, count: layer.parameterCount)
            for t in 0..<(k * k * 16 * 16) { parameters[t] = Float(t % 3) - 1 }
            var y = [Float](repeating: 0, count: layer.outputShape.count)
            let scratch = UnsafeMutableRawPointer.allocate(byteCount: layer.scratchBytes(batch: 1), alignment: 64)
            defer { scratch.deallocate() }
            input.withUnsafeBufferPointer { x in parameters.withUnsafeBufferPointer { p in y.withUnsafeMutableBufferPointer { out in
                layer.forward(ForwardBuffers(batch: 1, parameters: p.baseAddress!, input: x.baseAddress!, output: out.baseAddress!, scratch: scratch, threads: 1))
            }}}
            let centre = (k + 1) * (2 * k + 2) + (k + 1)
            for o in 0..<16 {
                var direct: Float = 0
                for t in 0..<(k * k) { for i in 0..<16 { direct += parameters[(t * 16 + i) * 16 + o] } }
                #expect(abs(y[centre * 16 + o] - direct) < 1e-4, "\(k)x\(k) output channel \(o): \(y[centre * 16 + o]) vs \(direct)")
            }
        }
    }
}

/// The layer computed with its fast path (Winograd or direct) on one core and on two against
/// the same layer through im2col products, on the same input: y, ∂x and ∂θ agree to float rounding.
func expectFastPathsAgreeWithIm2col(_ shape: (Int, Int, Int, Int, Int, Int)) {
    let (k, h, w, inputs, outputs, batch) = shape
    let input = TensorShape(height: h, width: w, channels: inputs)
    let fast = Conv2D(input: input, kernelSize: k, outputChannels: outputs)
    let reference = Conv2D(input: input, kernelSize: k, outputChannels: outputs, fastPaths: false)
    #expect(reference.winograd == nil && reference.direct == nil)
    var g = SeededGenerator(seed: UInt64(k * 100 + h))
    let x = (0..<(batch * input.count)).map { _ in g.nextUniform(-1, 1) }
    let parameters = (0..<fast.parameterCount).map { _ in g.nextUniform(-0.2, 0.2) }
    let dy = (0..<(batch * fast.outputShape.count)).map { _ in g.nextUniform(-1, 1) }
    func run(_ layer: Conv2D, threads: Int) -> (y: [Float], dx: [Float], dp: [Float]) {
        var y = [Float](repeating: 0, count: dy.count)
        var dx = [Float](repeating: 0, count: x.count)
        var dp = [Float](repeating: 0, count: parameters.count)
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: layer.scratchBytes(batch: batch), alignment: 64)
        defer { scratch.deallocate() }
        x.withUnsafeBufferPointer { x in parameters.withUnsafeBufferPointer { p in y.withUnsafeMutableBufferPointer { y in
            dy.withUnsafeBufferPointer { dy in dx.withUnsafeMutableBufferPointer { dx in dp.withUnsafeMutableBufferPointer { dp in
                let f = ForwardBuffers(batch: batch, parameters: p.baseAddress!, input: x.baseAddress!, output: y.baseAddress!, scratch: scratch, threads: threads)
                layer.forward(f)
                layer.backward(BackwardBuffers(forward: f, outputGradient: dy.baseAddress!, inputGradient: dx.baseAddress!, parameterGradient: dp.baseAddress!))
            }}}
        }}}
        return (y, dx, dp)
    }
    let expected = run(reference, threads: 1)
    for threads in [1, 2] {
        let got = run(fast, threads: threads)
        for (name, a, b) in [("y", got.y, expected.y), ("∂x", got.dx, expected.dx), ("∂θ", got.dp, expected.dp)] {
            let scale = b.map { abs($0) }.max() ?? 1
            let worst = zip(a, b).map { abs($0 - $1) }.max() ?? 0
            #expect(worst <= 1e-5 * max(1, scale) * Float(k * k * inputs).squareRoot(), "\(k)x\(k) \(h)x\(w) \(inputs)→\(outputs) \(name), \(threads) threads: worst difference \(worst) of \(scale)")
        }
    }
}
