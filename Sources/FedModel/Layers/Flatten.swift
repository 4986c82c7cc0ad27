/// Reshapes an `h × w × c` activation into a vector of `h·w·c` values (NHWC order).
public struct Flatten: Layer {
    public let inputShape: TensorShape

    public init(shape: TensorShape) { inputShape = shape }

    public var outputShape: TensorShape { .vector(inputShape.count) }
    public var parameterShapes: [(name: String, shape: [Int])] { [] }
    public var description: String { "Flatten" }
    public func scratchBytes(batch: Int) -> Int { 0 }
    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {}

    public func forward(_ f: ForwardBuffers) {
        f.output.update(from: f.input, count: f.batch * inputShape.count)
    }

    public func backward(_ g: BackwardBuffers) {
        g.inputGradient?.update(from: g.outputGradient, count: g.forward.batch * inputShape.count)
    }
}
