import Testing
@testable import FedModel

/// Finite-difference checks of every layer's backward pass: with loss L = Σ r·y for a fixed
/// random r, ∂L/∂y = r, and each analytic ∂L/∂x and ∂L/∂θ entry must match the central
/// difference (L(v + ε) − L(v − ε)) / 2ε.
@Suite struct GradientCheckTests {
    struct Probe {
        let layer: any Layer
        let batch: Int
        var input: [Float]
        var parameters: [Float]
        let weights: [Float]  // r
        let scratch: UnsafeMutableRawPointer
        /// A training pass with a fixed step seed (dropout's mask is the same in every pass).
        var training = false

        init(_ layer: any Layer, batch: Int, seed: UInt64) {
            self.layer = layer
            self.batch = batch
            var g = SeededGenerator(seed: seed)
            input = (0..<(batch * layer.inputShape.count)).map { _ in g.nextUniform(-1, 1) }
            parameters = (0..<max(1, layer.parameterCount)).map { _ in g.nextUniform(-0.5, 0.5) }
            weights = (0..<(batch * layer.outputShape.count)).map { _ in g.nextUniform(-1, 1) }
            scratch = UnsafeMutableRawPointer.allocate(byteCount: max(64, layer.scratchBytes(batch: batch)), alignment: 64)
        }

        func loss() -> Double {
            var output = [Float](repeating: 0, count: batch * layer.outputShape.count)
            input.withUnsafeBufferPointer { x in parameters.withUnsafeBufferPointer { p in output.withUnsafeMutableBufferPointer { y in
                layer.forward(ForwardBuffers(batch: batch, parameters: p.baseAddress!, input: x.baseAddress!, output: y.baseAddress!, scratch: scratch, threads: 1, training: training, seed: 42))
            }}}
            return zip(output, weights).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        }

        func analytic() -> (input: [Float], parameters: [Float]) {
            var output = [Float](repeating: 0, count: batch * layer.outputShape.count)
            var dx = [Float](repeating: 0, count: input.count)
            var dp = [Float](repeating: 0, count: parameters.count)
            input.withUnsafeBufferPointer { x in parameters.withUnsafeBufferPointer { p in output.withUnsafeMutableBufferPointer { y in
                weights.withUnsafeBufferPointer { r in dx.withUnsafeMutableBufferPointer { dx in dp.withUnsafeMutableBufferPointer { dp in
                    let f = ForwardBuffers(batch: batch, parameters: p.baseAddress!, input: x.baseAddress!, output: y.baseAddress!, scratch: scratch, threads: 1, training: training, seed: 42)
                    layer.forward(f)
                    layer.backward(BackwardBuffers(forward: f, outputGradient: r.baseAddress!, inputGradient: dx.baseAddress!, parameterGradient: dp.baseAddress!))
                }}}
            }}}
            return (dx, dp)
        }
    }

    /// `distinctInputs` spaces the inputs ≥ 0.05 apart, so no perturbation of ±ε can
    /// change which input a max-pool window picks (the function is not differentiable there).
    /// `notComputed`: parameters whose gradient the layer leaves zero by design (a frozen base
    /// weight); the others are checked.
    func check(_ layer: any Layer, batch: Int = 3, seed: UInt64 = 1, samples: Int = 60, distinctInputs: Bool = false, training: Bool = false,
               notComputed: Range<Int> = 0..<0) {
        var probe = Probe(layer, batch: batch, seed: seed)
        probe.training = training
        if distinctInputs {
            var order = (0..<probe.input.count).map { Float($0) * 0.05 - 1 }
            var g = SeededGenerator(seed: seed + 7)
            order.withUnsafeMutableBufferPointer { g.shuffle($0) }
            probe.input = order
        }
        defer { probe.scratch.deallocate() }
        let (dx, dp) = probe.analytic()
        var g = SeededGenerator(seed: seed + 100)
        let eps: Float = 1e-2
        var checked = 0
        for _ in 0..<samples {
            let i = Int(g.next() % UInt64(probe.input.count))
            let saved = probe.input[i]
            probe.input[i] = saved + eps
            let plus = probe.loss()
            probe.input[i] = saved - eps
            let minus = probe.loss()
            probe.input[i] = saved
            let numeric = (plus - minus) / Double(2 * eps)
            #expect(abs(numeric - Double(dx[i])) <= 1e-2 * max(1, abs(numeric)), "\(layer) ∂x[\(i)]: analytic \(dx[i]) numeric \(numeric)")
            checked += 1
        }
        #expect(dp[notComputed].allSatisfy { $0 == 0 }, "\(layer): a gradient that is not computed must stay zero")
        let computed = (0..<layer.parameterCount).filter { !notComputed.contains($0) }
        if !computed.isEmpty {
            for _ in 0..<samples {
                let i = computed[Int(g.next() % UInt64(computed.count))]
                let saved = probe.parameters[i]
                probe.parameters[i] = saved + eps
                let plus = probe.loss()
                probe.parameters[i] = saved - eps
                let minus = probe.loss()
                probe.parameters[i] = saved
                let numeric = (plus - minus) / Double(2 * eps)
                #expect(abs(numeric - Double(dp[i])) <= 1e-2 * max(1, abs(numeric)), "\(layer) ∂θ[\(i)]: analytic \(dp[i]) numeric \(numeric)")
            }
        }
        #expect(checked == samples)
    }

    @Test func dense() { check(Dense(inputs: 37, outputs: 21)) }
    @Test func denseWideOutput() { check(Dense(inputs: 5, outputs: 70), batch: 13) }
    @Test func relu() { check(ReLU(shape: .vector(50))) }
    @Test func conv2D() { check(Conv2D(input: TensorShape(height: 6, width: 7, channels: 3), kernelSize: 5, outputChannels: 4)) }
    @Test func conv2DSingleChannel3x3() { check(Conv2D(input: TensorShape(height: 5, width: 5, channels: 1), kernelSize: 3, outputChannels: 33), batch: 2) }
    /// The direct convolution of single-channel images (outputs multiples of 16), on a width
    /// that leaves positions after the last group of four.
    @Test func conv2DSingleChannelDirect() {
        let layer = Conv2D(input: TensorShape(height: 6, width: 7, channels: 1), kernelSize: 5, outputChannels: 16)
        #expect(layer.direct != nil)
        check(layer, batch: 2)
    }
    /// Winograd F(2×2, k×k) layers (channels multiples of 16), on odd sizes so the last tiles
    /// hang over the edge.
    @Test func conv2DWinograd5x5() {
        let layer = Conv2D(input: TensorShape(height: 7, width: 5, channels: 16), kernelSize: 5, outputChannels: 16)
        #expect(layer.winograd != nil)
        check(layer, batch: 2)
    }
    @Test func conv2DWinograd3x3() {
        let layer = Conv2D(input: TensorShape(height: 6, width: 3, channels: 32), kernelSize: 3, outputChannels: 16)
        #expect(layer.winograd != nil)
        check(layer, batch: 2)
    }
    @Test func avgPool() { check(AvgPool2D(shape: TensorShape(height: 5, width: 4, channels: 3))) }
    @Test func globalAvgPool() { check(GlobalAvgPool(shape: TensorShape(height: 3, width: 5, channels: 4))) }
    @Test func groupNorm() { check(GroupNorm(shape: TensorShape(height: 3, width: 4, channels: 6), groups: 3), samples: 80) }
    @Test func layerNormOnAVector() { check(GroupNorm(shape: .vector(12), groups: 1)) }
    @Test func maxPool() { check(MaxPool2D(shape: TensorShape(height: 6, width: 4, channels: 5)), distinctInputs: true) }
    @Test func stridedConvolution() {
        check(Conv2D(input: TensorShape(height: 7, width: 6, channels: 3), kernelSize: 3, outputChannels: 4, stride: 2))
        check(Conv2D(input: TensorShape(height: 5, width: 5, channels: 2), kernelSize: 5, outputChannels: 3, stride: 3))
    }
    @Test func depthwiseConvolution() {
        check(DepthwiseConv2D(input: TensorShape(height: 5, width: 6, channels: 5), kernelSize: 3))
        check(DepthwiseConv2D(input: TensorShape(height: 7, width: 7, channels: 4), kernelSize: 3, stride: 2))
        check(DepthwiseConv2D(input: TensorShape(height: 6, width: 5, channels: 3), kernelSize: 5, stride: 2), batch: 1)
    }
    @Test func dropoutInTrainingAndEvaluation() {
        check(Dropout(shape: .vector(40), rate: 0.3), training: true)
        check(Dropout(shape: .vector(40), rate: 0.3), training: false)
    }
    @Test func gruOverASequence() {
        check(GRU(input: TensorShape(height: 5, width: 1, channels: 3), hidden: 4), samples: 80)
        check(GRU(input: TensorShape(height: 2, width: 3, channels: 2), hidden: 3), batch: 1)
    }
    /// Token ids are not differentiable, so the embedding is checked through a whole network:
    /// every parameter of embedding → GRU → dense against finite differences of the mean loss.
    @Test func embeddingAndGRUInANetwork() throws {
        let network = try Network(ModelSpec(input: .vector(6), classes: 5, layers: [.embedding(vocabulary: 7, dimension: 3), .gru(hidden: 4), .dense(outputs: 5)]))
        let tokens: [Float] = [0, 3, 6, 2, 2, 1, 5, 4, 3, 2, 1, 0, 6, 6, 0, 3, 1, 4]
        let labels: [Int32] = [4, 0, 2]
        checkNetworkGradient(network, batch: 3) { workspace in
            workspace.input.update(from: tokens, count: tokens.count)
            workspace.labels.update(from: labels, count: labels.count)
        }
    }
    @Test func flatten() { check(Flatten(shape: TensorShape(height: 2, width: 3, channels: 4))) }
    /// Every slot of an adapted layer: ∂x through W + A·B, ∂A and ∂B; on a convolution also ∂W
    /// and ∂b of the merged weight (its ∂A = ∂W·Bᵀ and ∂B = Aᵀ·∂W), on a dense layer ∂b (its
    /// frozen ∂W is not computed).
    @Test func lowRankAdapters() {
        for (inputs, outputs, rank, batch) in [(23, 17, 3, 3), (9, 40, 1, 5), (784, 20, 4, 10)] {
            let adapter = LowRankAdapter(base: Dense(inputs: inputs, outputs: outputs), rank: rank)
            check(adapter, batch: batch, samples: 80, notComputed: 0..<(inputs * outputs))
        }
        check(LowRankAdapter(base: Conv2D(input: TensorShape(height: 5, width: 6, channels: 3), kernelSize: 3, outputChannels: 4), rank: 2), samples: 80)
        check(LowRankAdapter(base: Conv2D(input: TensorShape(height: 7, width: 6, channels: 2), kernelSize: 3, outputChannels: 5, stride: 2), rank: 4))
        let winograd = Conv2D(input: TensorShape(height: 6, width: 6, channels: 16), kernelSize: 3, outputChannels: 16)
        #expect(winograd.usesWinograd)
        check(LowRankAdapter(base: winograd, rank: 2), batch: 2)
    }

    @Test func softmaxCrossEntropy() {
        let batch = 4, classes = 7
        var g = SeededGenerator(seed: 3)
        var logits = (0..<(batch * classes)).map { _ in g.nextUniform(-3, 3) }
        let labels: [Int32] = [0, 6, 3, 3]
        func meanLoss() -> Double {
            logits.withUnsafeBufferPointer { z in labels.withUnsafeBufferPointer { y in
                SoftmaxCrossEntropy.evaluate(logits: z.baseAddress!, labels: y.baseAddress!, batch: batch, classes: classes, gradient: nil).lossSum / Double(batch)
            }}
        }
        var gradient = [Float](repeating: 0, count: logits.count)
        logits.withUnsafeBufferPointer { z in labels.withUnsafeBufferPointer { y in gradient.withUnsafeMutableBufferPointer { d in
            _ = SoftmaxCrossEntropy.evaluate(logits: z.baseAddress!, labels: y.baseAddress!, batch: batch, classes: classes, gradient: d.baseAddress!)
        }}}
        for i in logits.indices {
            let saved = logits[i]
            logits[i] = saved + 1e-2
            let plus = meanLoss()
            logits[i] = saved - 1e-2
            let minus = meanLoss()
            logits[i] = saved
            let numeric = (plus - minus) / 2e-2
            #expect(abs(numeric - Double(gradient[i])) < 1e-3, "∂z[\(i)]: analytic \(gradient[i]) numeric \(numeric)")
        }
    }

    /// The whole chain, as the trainer uses it: a small CNN's parameter gradient from
    /// ``Workspace/lossAndGradient`` against finite differences of the mean loss.
    @Test func wholeNetwork() throws {
        let spec = ModelSpec(
            input: TensorShape(height: 6, width: 6, channels: 2), classes: 3,
            layers: [.conv(kernelSize: 3, channels: 4), .relu, .maxPool, .flatten, .dense(outputs: 5), .relu, .dense(outputs: 3)])
        var g = SeededGenerator(seed: 11)
        let inputs = (0..<(4 * 72)).map { _ in g.nextUniform(0, 1) }
        let labels: [Int32] = [0, 1, 2, 1]
        try checkNetworkGradient(Network(spec), batch: 4, samples: 80) { workspace in
            workspace.input.update(from: inputs, count: inputs.count)
            workspace.labels.update(from: labels, count: labels.count)
        }
    }
}

/// A whole network's parameter gradient, as the trainer computes it
/// (``Workspace/lossAndGradient``), against central differences of the mean loss: every
/// parameter, or `samples` drawn at random. `load` writes the batch (inputs and targets).
func checkNetworkGradient(_ network: Network, batch: Int, samples: Int? = nil, seed: UInt64 = 4, load: (Workspace) -> Void) {
    let workspace = Workspace(network: network, capacity: batch)
    var parameters = network.initialParameters(seed: seed)
    load(workspace)
    _ = parameters.withUnsafeBufferPointer { workspace.lossAndGradient(parameters: $0.baseAddress!, batch: batch) }
    let analytic = Array(UnsafeBufferPointer(start: workspace.parameterGradient, count: network.parameterCount))
    var g = SeededGenerator(seed: seed &+ 7)
    let indices = samples.map { n in (0..<n).map { _ in Int(g.next() % UInt64(network.parameterCount)) } } ?? Array(0..<network.parameterCount)
    func meanLoss() -> Double {
        load(workspace)
        return parameters.withUnsafeBufferPointer { workspace.loss(parameters: $0.baseAddress!, batch: batch).lossSum } / Double(batch)
    }
    for i in indices {
        let saved = parameters[i]
        parameters[i] = saved + 1e-2
        let plus = meanLoss()
        parameters[i] = saved - 1e-2
        let minus = meanLoss()
        parameters[i] = saved
        let numeric = (plus - minus) / 2e-2
        let tensor = network.layout.tensors.first { $0.range.contains(i) }!.name
        #expect(abs(numeric - Double(analytic[i])) <= 2e-3 + 1e-2 * abs(numeric), "parameter \(i) (\(tensor)): analytic \(analytic[i]) numeric \(numeric)")
    }
}
