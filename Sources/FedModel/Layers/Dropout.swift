/// Inverted dropout (Srivastava et al. 2014): in a training pass each value is kept with
/// probability 1 − rate and scaled by 1/(1 − rate), or set to 0; in an evaluation pass values
/// go through unchanged. The mask is a counter-based hash of the step's seed and the value's
/// position, so it is reproducible from the run's seed and the same on any number of cores.
public struct Dropout: Layer {
    public let shape: TensorShape
    public let rate: Double

    public init(shape: TensorShape, rate: Double) {
        precondition(rate >= 0 && rate < 1, "dropout rate must be in [0, 1)")
        self.shape = shape
        self.rate = rate
    }

    public var inputShape: TensorShape { shape }
    public var outputShape: TensorShape { shape }
    public var parameterShapes: [(name: String, shape: [Int])] { [] }
    public var description: String { "Dropout(\(rate))" }
    /// The mask's scale factors (0 or 1/(1 − rate)) of the last training pass.
    public func scratchBytes(batch: Int) -> Int { batch * shape.count * MemoryLayout<Float>.stride }
    public func initialize(_ parameters: UnsafeMutableBufferPointer<Float>, generator: inout SeededGenerator) {}

    /// Keeps a value when its hash falls below this 64-bit threshold.
    private var threshold: UInt64 { rate == 0 ? .max : UInt64((1 - rate) * 0x1p64.nextDown) }

    public func forward(_ f: ForwardBuffers) {
        let count = f.batch * shape.count
        guard f.training, rate > 0 else {
            f.output.update(from: f.input, count: count)
            return
        }
        let mask = f.scratch.assumingMemoryBound(to: Float.self)
        let scale = Float(1 / (1 - rate)), keep = threshold, seed = f.seed
        forEachElementChunk(count, threads: f.threads) { range in
            for i in range {
                let m: Float = Self.mix(seed &+ UInt64(i) &* 0x9E37_79B9_7F4A_7C15) < keep ? scale : 0
                mask[i] = m
                f.output[i] = f.input[i] * m
            }
        }
    }

    public func backward(_ g: BackwardBuffers) {
        guard let dx = g.inputGradient else { return }
        let count = g.forward.batch * shape.count
        guard g.forward.training, rate > 0 else {
            dx.update(from: g.outputGradient, count: count)
            return
        }
        let mask = UnsafePointer(g.forward.scratch.assumingMemoryBound(to: Float.self))
        let dy = g.outputGradient
        forEachElementChunk(count, threads: g.forward.threads) { range in
            for i in range { dx[i] = dy[i] * mask[i] }
        }
    }

    /// SplitMix64's finaliser: a well-mixed 64-bit hash of `x`.
    @inline(__always)
    static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
