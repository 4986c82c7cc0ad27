import Testing
@testable import FedModel

/// Width-scaled sub-models: which units they keep, where their parameters sit in the full
/// model, and that they compute what the full model computes with the other units silenced.
@Suite struct SubModelTests {
    static let full = try! Network(ModelSpec(
        input: TensorShape(height: 6, width: 6, channels: 2), classes: 5,
        layers: [.conv(kernelSize: 3, channels: 8), .relu, .maxPool, .depthwise(kernelSize: 3), .conv(kernelSize: 1, channels: 12),
                 .relu, .flatten, .dense(outputs: 20), .relu, .dense(outputs: 5)]))

    @Test func widthsScaleEveryHiddenLayerAndKeepTheOutputs() throws {
        let half = try SubModel(of: Self.full, fraction: 0.5)
        #expect(half.network.spec.layers == [.conv(kernelSize: 3, channels: 4), .relu, .maxPool, .depthwise(kernelSize: 3), .conv(kernelSize: 1, channels: 6),
                                             .relu, .flatten, .dense(outputs: 10), .relu, .dense(outputs: 5)])
        let quarter = try SubModel(of: try Network(.mnist2NN), fraction: 0.25)
        #expect(quarter.network.spec.layers == [.dense(outputs: 50), .relu, .dense(outputs: 50), .relu, .dense(outputs: 10)])
        #expect(SubModel.width(200, 1.0 / 3) == 67 && SubModel.width(3, 0.1) == 1 && SubModel.width(64, 0.125) == 8)
        let whole = try SubModel(of: Self.full, fraction: 1)
        #expect(whole.positions == (0..<Int32(Self.full.parameterCount)).map { $0 }, "the full width is the model itself")
        #expect(throws: ModelError.self) { try SubModel(of: Self.full, fraction: 0) }
        let gru = try Network(ModelSpec(input: .vector(4), classes: 3, layers: [.embedding(vocabulary: 5, dimension: 2), .gru(hidden: 4), .dense(outputs: 3)]))
        #expect { try SubModel(of: gru, fraction: 0.5) } throws: { "\($0)".contains("not scaled") }
        let grouped = try Network(ModelSpec(input: TensorShape(height: 4, width: 4, channels: 1), classes: 2,
                                            layers: [.conv(kernelSize: 3, channels: 8), .groupNorm(groups: 4), .relu, .globalAvgPool, .dense(outputs: 2)]))
        #expect(try SubModel(of: grouped, fraction: 0.5).network.parameterCount > 0)
        #expect { try SubModel(of: grouped, fraction: 0.25) } throws: { "\($0)".contains("groupnorm:4") }
    }

    /// The sub-model's positions are distinct places of the full model, and the full model with
    /// every other parameter zero gives the same outputs as the sub-model.
    @Test func theSubModelIsTheFullModelWithTheOtherUnitsSilenced() throws {
        for fraction in [0.25, 0.5, 0.75] {
            let sub = try SubModel(of: Self.full, fraction: fraction)
            #expect(Set(sub.positions).count == sub.positions.count)
            #expect(sub.positions.allSatisfy { $0 >= 0 && Int($0) < Self.full.parameterCount })
            var generator = SeededGenerator(seed: 3)
            let trained = (0..<Self.full.parameterCount).map { _ in generator.nextUniform(-0.5, 0.5) }
            var silenced = [Float](repeating: 0, count: Self.full.parameterCount)
            let parameters = sub.gather(trained)
            sub.scatter(parameters, into: &silenced)
            for position in sub.positions { #expect(silenced[Int(position)] == trained[Int(position)]) }
            let examples = 4
            let input = (0..<(examples * Self.full.inputShape.count)).map { _ in generator.nextUniform(0, 1) }
            let a = logits(Self.full, silenced, input, examples), b = logits(sub.network, parameters, input, examples)
            #expect(a.count == b.count)
            #expect(zip(a, b).allSatisfy { abs($0 - $1) <= 1e-5 * max(1, abs($0)) }, "width \(fraction): \(a.prefix(5)) against \(b.prefix(5))")
        }
    }

    func logits(_ network: Network, _ parameters: [Float], _ input: [Float], _ batch: Int) -> [Float] {
        let workspace = Workspace(network: network, capacity: batch, threads: 1)
        workspace.input.update(from: input, count: input.count)
        return parameters.withUnsafeBufferPointer { p in
            let output = workspace.forward(parameters: p.baseAddress!, batch: batch)
            return Array(UnsafeBufferPointer(start: output, count: batch * network.classes))
        }
    }
}
