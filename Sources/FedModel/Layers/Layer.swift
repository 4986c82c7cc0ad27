/// What a layer reads and writes in one forward pass over a batch. All buffers are
/// contiguous, NHWC, example-major; `parameters` points at this layer's first parameter.
public struct ForwardBuffers {
    public var batch: Int
    public var parameters: UnsafePointer<Float>
    public var input: UnsafePointer<Float>
    public var output: UnsafeMutablePointer<Float>
    /// At least ``Layer/scratchBytes(batch:)`` bytes, 64-byte aligned, kept from forward to backward.
    public var scratch: UnsafeMutableRawPointer
    /// Cores the layer may use for this pass (1 = stay on the calling thread).
    public var threads: Int
    /// Whether this is a training pass (dropout draws its masks) or an evaluation (dropout
    /// passes values through).
    public var training: Bool
    /// The training step's random seed (dropout's masks); the same seed gives the same masks.
    public var seed: UInt64

    public init(batch: Int, parameters: UnsafePointer<Float>, input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>,
                scratch: UnsafeMutableRawPointer, threads: Int, training: Bool = false, seed: UInt64 = 0) {
        self.batch = batch
        self.parameters = parameters
        self.input = input
        self.output = output
        self.scratch = scratch
        self.threads = threads
        self.training = training
        self.seed = seed
    }
}

/// What a layer reads and writes in one backward pass.
public struct BackwardBuffers {
    public var forward: ForwardBuffers
    /// ∂loss/∂output.
    public var outputGradient: UnsafePointer<Float>
    /// ∂loss/∂input, or nil when nothing below needs it (the first layer).
    public var inputGradient: UnsafeMutablePointer<Float>?
    /// ∂loss/∂parameters for this layer's slice, overwritten (not accumulated).
    public var parameterGradient: UnsafeMutablePointer<Float>

    public init(forward: ForwardBuffers, outputGradient: UnsafePointer<Float>, inputGradient: UnsafeMutablePointer<Float>?, parameterGradient: UnsafeMutablePointer<Float>) {
        self.forward = forward
        self.outputGradient = outputGradient
        self.inputGradient = inputGradient
        self.parameterGradient = parameterGradient
    }
}

/// A differentiable layer. Layers are immutable descriptions; all state of a pass lives in
/// the buffers the ``Workspace`` hands them, so one layer value serves many threads.
public protocol Layer: Sendable, CustomStringConvertible {
    var inputShape: TensorShape { get }
    var outputShape: TensorShape { get }
    /// Names (relative to the layer) and shapes of the parameter tensors, in layout order.
    var parameterShapes: [(name: String, shape: [Int])] { get }
    /// Scratch bytes the layer needs for a batch of `batch` examples.
    func scratchBytes(batch: Int) -> Int
    /// Writes initial values into this layer's parameter slice.
    func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator)
    func forward(_ buffers: ForwardBuffers)
    func backward(_ buffers: BackwardBuffers)
    /// Whether ``backward(_:update:)`` applies the optimiser itself, piece by piece (see there).
    var fusesUpdate: Bool { get }
    /// A training step's backward pass that hands each piece of the parameter gradient to
    /// `update` as soon as it is final and the pass no longer reads those parameters, so the
    /// optimiser steps them while they are still in cache, and a large weight is read and
    /// written once per step instead of in three passes (gradient, then the step).
    /// `update(offset, gradient, count)` steps this layer's parameters `offset..<offset+count`;
    /// calls for disjoint ranges may come from several threads at once. The gradient handed
    /// over is the one ``backward(_:)`` computes, bit for bit, but it need not be left in
    /// ``BackwardBuffers/parameterGradient``. Layers that gain nothing leave both to the
    /// default: ``backward(_:)`` followed by one call for all of their parameters.
    func backward(_ buffers: BackwardBuffers, update: ParameterStep)
}

/// Applies the optimiser to `count` parameters of a layer, from `offset` (relative to the
/// layer's first parameter), whose gradient is at the pointer (see ``Layer/backward(_:update:)``).
public typealias ParameterStep = (_ offset: Int, _ gradient: UnsafePointer<Float>, _ count: Int) -> Void

extension Layer {
    public var fusesUpdate: Bool { false }

    public func backward(_ buffers: BackwardBuffers, update: ParameterStep) {
        backward(buffers)
        if parameterCount > 0 { update(0, buffers.parameterGradient, parameterCount) }
    }

    public var parameterCount: Int {
        parameterShapes.reduce(0) { $0 + $1.shape.reduce(1, *) }
    }
}

/// PyTorch's default initialisation for dense and convolution layers (Kaiming-uniform with
/// a = √5): weights and biases uniform in ±1/√fanIn.
func initializeUniform(_ parameters: UnsafeMutableBufferPointer<Float>, fanIn: Int, generator: inout SeededGenerator) {
    let bound = 1 / Float(fanIn).squareRoot()
    for i in parameters.indices {
        parameters[i] = generator.nextUniform(-bound, bound)
    }
}

/// Rounds a byte count up to a multiple of 64 so sub-buffers stay cache-line aligned.
@inline(__always)
func aligned64(_ bytes: Int) -> Int { (bytes + 63) & ~63 }
