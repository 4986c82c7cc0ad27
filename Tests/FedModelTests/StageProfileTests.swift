import Testing
@testable import FedModel

/// `fedbench --profile` times training by stage through ``Workspace/profile``; profiling must
/// not change what is computed, and must account for every layer.
struct StageProfileTests {
    @Test func profilingTimesEveryStageAndChangesNothing() throws {
        let network = try Network(ModelSpec(input: TensorShape(height: 8, width: 8, channels: 1), classes: 3, layers: [
            .conv(kernelSize: 3, channels: 4), .relu, .maxPool, .flatten, .dense(outputs: 3),
        ]))
        var features: [Float] = []
        var labels: [Int32] = []
        var generator = SeededGenerator(seed: 4)
        for i in 0..<40 {
            features += (0..<64).map { _ in generator.nextUniform(0, 1) }
            labels.append(Int32(i % 3))
        }
        let data = try Dataset(name: "tiny", sampleShape: network.inputShape, classes: 3, features: features, labels: labels)
        let slice = DatasetSlice(dataset: data, indices: Array(0..<40))
        func train(profiled: Bool) -> ([Float], StageProfile?) {
            let trainer = LocalTrainer(network: network, batchCapacity: 8)
            let stages = profiled ? StageProfile(layers: network.layers.count) : nil
            trainer.workspace.profile = stages
            var parameters = network.initialParameters(seed: 1)
            var draws = SeededGenerator(seed: 2)
            _ = trainer.train(parameters: &parameters, anchor: nil, data: slice, epochs: 2, batchSize: 8, sgd: SGD(learningRate: 0.1), generator: &draws)
            return (parameters, stages)
        }
        let (plain, _) = train(profiled: false)
        let (profiled, stages) = train(profiled: true)
        #expect(plain == profiled, "profiling changed the training")
        let profile = try #require(stages)
        #expect(profile.batches == 10 && profile.examples == 80)
        #expect(profile.forward.allSatisfy { $0 > 0 } && profile.backward.allSatisfy { $0 > 0 } && profile.loss[0] > 0)
    }
}
