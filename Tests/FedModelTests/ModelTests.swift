import Testing
@testable import FedModel

@Suite struct ModelTests {
    @Test func mcMahan2NNHasTheRightParameterCount() throws {
        let network = try Network(.mnist2NN)
        #expect(network.parameterCount == 199_210)
        #expect(network.layout.tensors.map(\.name) == [
            "dense1.weight", "dense1.bias", "dense2.weight", "dense2.bias", "dense3.weight", "dense3.bias",
        ])
        #expect(network.layout.tensors[0].shape == [784, 200])
    }

    @Test func mcMahanCNNHasTheRightParameterCount() throws {
        let network = try Network(.mnistCNN)
        #expect(network.parameterCount == 1_663_370)
        #expect(network.layout.tensor(named: "conv2.weight")?.shape == [5, 5, 32, 64])
        #expect(network.layout.tensor(named: "dense1.weight")?.shape == [3136, 512])
    }

    @Test(arguments: [ModelSpec.mnist2NN, .mnistCNN])
    func layoutIsContiguousAndIndexed(spec: ModelSpec) throws {
        let layout = try Network(spec).layout
        var offset = 0
        for (i, tensor) in layout.tensors.enumerated() {
            #expect(tensor.index == i)
            #expect(tensor.offset == offset, "tensor \(tensor.name) not packed")
            offset += tensor.count
        }
        #expect(offset == layout.parameterCount)
    }

    @Test func initialisationIsSeededAndBounded() throws {
        let network = try Network(.mnist2NN)
        let a = network.initialParameters(seed: 7)
        let b = network.initialParameters(seed: 7)
        let c = network.initialParameters(seed: 8)
        #expect(a == b)
        #expect(a != c)
        let bound = 1 / Float(784).squareRoot()
        let first = network.layout.tensors[0]
        #expect(a[first.range].allSatisfy { abs($0) <= bound })
    }

    @Test func layerStringsParse() throws {
        #expect(try LayerSpec(parsing: "dense:200") == .dense(outputs: 200))
        #expect(try LayerSpec(parsing: "conv5x5:32") == .conv(kernelSize: 5, channels: 32))
        #expect(try LayerSpec(parsing: "ReLU") == .relu)
        #expect(throws: ModelError.self) { try LayerSpec(parsing: "dense:0") }
        #expect(throws: ModelError.self) { try LayerSpec(parsing: "conv4x4:8") }
        #expect(throws: ModelError.self) { try LayerSpec(parsing: "lstm:3") }
    }

    @Test(arguments: [ModelSpec.mnist2NN, .mnistCNN])
    func wireDescriptionRoundTrips(spec: ModelSpec) throws {
        #expect(try ModelSpec(wireDescription: spec.wireDescription) == spec)
        #expect(throws: ModelError.self) { try ModelSpec(wireDescription: "784|10") }
        #expect(throws: ModelError.self) { try ModelSpec(wireDescription: "0|10|dense:10") }
    }

    @Test func mismatchedOutputIsRejected() {
        let spec = ModelSpec(input: .vector(4), classes: 10, layers: [.dense(outputs: 3)])
        #expect(throws: ModelError.self) { try Network(spec) }
    }

    /// A compact all-convolutional model: convolutions, average pooling and global average
    /// pooling in place of the large dense layer, named and parsed like every other layer.
    @Test func averagePoolingLayersBuildAndParse() throws {
        let spec = ModelSpec(input: TensorShape(height: 28, width: 28, channels: 1), classes: 10,
                             layers: try ["conv3x3:16", "relu", "avgpool2", "conv3x3:32", "relu", "globalavgpool", "dense:10"].map(LayerSpec.init(parsing:)))
        let network = try Network(spec)
        #expect(network.layers[2].outputShape == TensorShape(height: 14, width: 14, channels: 16))
        #expect(network.layers[5].outputShape == .vector(32))
        #expect(network.parameterCount == (9 * 16 + 16) + (9 * 16 * 32 + 32) + (32 * 10 + 10))
        #expect(try ModelSpec(wireDescription: spec.wireDescription) == spec)
        #expect(spec.wireDescription == "28x28x1|10|conv3x3:16,relu,avgpool2,conv3x3:32,relu,globalavgpool,dense:10")
        #expect(throws: ModelError.self) { try Network(ModelSpec(input: .vector(8), classes: 2, layers: [.globalAvgPool, .dense(outputs: 2)])) }
    }

    /// Group normalisation: γ starts at 1 and β at 0, one group per `groupnorm:G`, and the groups
    /// must divide the channels.
    @Test func groupNormBuildsAndInitialises() throws {
        let spec = ModelSpec(input: TensorShape(height: 8, width: 8, channels: 1), classes: 3,
                             layers: try ["conv3x3:16", "groupnorm:4", "relu", "globalavgpool", "dense:3"].map(LayerSpec.init(parsing:)))
        let network = try Network(spec)
        let parameters = network.initialParameters(seed: 1)
        let gamma = try #require(network.layout.tensors.first { $0.name == "norm1.gamma" })
        let beta = try #require(network.layout.tensors.first { $0.name == "norm1.beta" })
        #expect(parameters[gamma.range].allSatisfy { $0 == 1 } && parameters[beta.range].allSatisfy { $0 == 0 })
        #expect(spec.wireDescription == "8x8x1|3|conv3x3:16,groupnorm:4,relu,globalavgpool,dense:3")
        #expect { try Network(ModelSpec(input: TensorShape(height: 8, width: 8, channels: 1), classes: 3, layers: [.conv(kernelSize: 3, channels: 16), .groupNorm(groups: 5), .globalAvgPool, .dense(outputs: 3)])) }
            throws: { "\($0)".contains("must divide the 16 channels") }
    }
}
