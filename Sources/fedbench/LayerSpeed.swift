import FedModel
import Foundation

/// One layer on one input shape, as `fedbench --layers` times it and
/// `Benchmarks/torch_reference.py --layers` times PyTorch's equivalent (the names match).
struct LayerCase {
    let name: String
    let input: TensorShape
    let layer: LayerSpec

    /// Shapes of compact models on 28×28 inputs (the Fashion-MNIST separable model's among
    /// them) and the CNN's, batch 10.
    static let all: [LayerCase] = [
        LayerCase(name: "dense784x200", input: .vector(784), layer: .dense(outputs: 200)),
        LayerCase(name: "conv5x5-1x32", input: TensorShape(height: 28, width: 28, channels: 1), layer: .conv(kernelSize: 5, channels: 32)),
        LayerCase(name: "conv5x5-32x64", input: TensorShape(height: 14, width: 14, channels: 32), layer: .conv(kernelSize: 5, channels: 64)),
        LayerCase(name: "conv3x3-1x32", input: TensorShape(height: 28, width: 28, channels: 1), layer: .conv(kernelSize: 3, channels: 32)),
        LayerCase(name: "conv3x3s2-32x64", input: TensorShape(height: 28, width: 28, channels: 32), layer: .conv(kernelSize: 3, channels: 64, stride: 2)),
        LayerCase(name: "conv1x1-32x64", input: TensorShape(height: 14, width: 14, channels: 32), layer: .conv(kernelSize: 1, channels: 64)),
        LayerCase(name: "dwconv3x3-64", input: TensorShape(height: 14, width: 14, channels: 64), layer: .depthwise(kernelSize: 3)),
        LayerCase(name: "dwconv3x3s2-32", input: TensorShape(height: 28, width: 28, channels: 32), layer: .depthwise(kernelSize: 3, stride: 2)),
        LayerCase(name: "maxpool2-32", input: TensorShape(height: 28, width: 28, channels: 32), layer: .maxPool),
        LayerCase(name: "avgpool2-32", input: TensorShape(height: 28, width: 28, channels: 32), layer: .avgPool),
        LayerCase(name: "globalavgpool-64", input: TensorShape(height: 7, width: 7, channels: 64), layer: .globalAvgPool),
        LayerCase(name: "groupnorm8-32", input: TensorShape(height: 14, width: 14, channels: 32), layer: .groupNorm(groups: 8)),
        LayerCase(name: "relu-32", input: TensorShape(height: 28, width: 28, channels: 32), layer: .relu),
        LayerCase(name: "dropout0.25-32", input: TensorShape(height: 14, width: 14, channels: 32), layer: .dropout(rate: 0.25)),
        LayerCase(name: "embedding80x64-T20", input: .vector(20), layer: .embedding(vocabulary: 80, dimension: 64)),
        LayerCase(name: "gru64x128-T20", input: TensorShape(height: 20, width: 1, channels: 64), layer: .gru(hidden: 128)),
    ]

    /// The layer as the model builder makes it (a network of this layer alone, classes = its outputs).
    func build() throws -> any Layer {
        try Network(ModelSpec(input: input, classes: 2, layers: [layer, .flatten, .dense(outputs: 2)])).layers[0]
    }
}

extension FedBench {
    /// Forward and backward (∂x and ∂θ) passes of each layer on a batch of 10, in a training
    /// pass, on `threads` cores: examples per second, the best of three timed runs of at
    /// least 0.2 s each (the machine is shared).
    func measureLayers(threads: Int) throws {
        print("layer examples/s")
        for item in LayerCase.all {
            let layer = try item.build()
            let batch = 10
            var generator = SeededGenerator(seed: 1)
            // Token ids for an embedding, values in ±1 otherwise.
            let input = (0..<(batch * layer.inputShape.count)).map { _ in
                layer is Embedding ? Float(Int(generator.next() % 80)) : generator.nextUniform(-1, 1)
            }
            let parameters = (0..<max(1, layer.parameterCount)).map { _ in generator.nextUniform(-0.1, 0.1) }
            let upstream = (0..<(batch * layer.outputShape.count)).map { _ in generator.nextUniform(-1, 1) }
            var output = [Float](repeating: 0, count: upstream.count)
            var dx = [Float](repeating: 0, count: input.count)
            var dp = [Float](repeating: 0, count: parameters.count)
            let scratch = UnsafeMutableRawPointer.allocate(byteCount: max(64, layer.scratchBytes(batch: batch)), alignment: 64)
            defer { scratch.deallocate() }
            var step: UInt64 = 0
            func pass(_ count: Int) {
                input.withUnsafeBufferPointer { x in parameters.withUnsafeBufferPointer { p in output.withUnsafeMutableBufferPointer { y in
                    upstream.withUnsafeBufferPointer { r in dx.withUnsafeMutableBufferPointer { dx in dp.withUnsafeMutableBufferPointer { dp in
                        for _ in 0..<count {
                            step += 1
                            let f = ForwardBuffers(batch: batch, parameters: p.baseAddress!, input: x.baseAddress!, output: y.baseAddress!,
                                                   scratch: scratch, threads: threads, training: true, seed: step)
                            layer.forward(f)
                            layer.backward(BackwardBuffers(forward: f, outputGradient: r.baseAddress!, inputGradient: dx.baseAddress!, parameterGradient: dp.baseAddress!))
                        }
                    }}}
                }}}
            }
            pass(3)
            var best = 0.0
            for _ in 0..<3 {
                var count = 0
                let start = DispatchTime.now().uptimeNanoseconds
                var elapsed = 0.0
                while elapsed < 0.2 {
                    pass(5)
                    count += 5
                    elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                }
                best = max(best, Double(count * batch) / elapsed)
            }
            print(String(format: "%@ %.0f", item.name, best))
        }
    }
}
