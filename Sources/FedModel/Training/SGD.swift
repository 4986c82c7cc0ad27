/// Minibatch stochastic gradient descent, as a client runs it locally:
///
///     d = ∇loss(w) + weightDecay·w + proximalMu·(w − w_global)
///     v = momentum·v + d          (when momentum > 0; v starts at 0 each local run)
///     w = w − learningRate·(momentum > 0 ? v : d)
///
/// `proximalMu` is FedProx's term, the gradient of mu/2·‖w − w_global‖².
public struct SGD: Hashable, Sendable, Codable {
    public var learningRate: Float
    public var momentum: Float
    public var weightDecay: Float
    public var proximalMu: Float

    public init(learningRate: Float, momentum: Float = 0, weightDecay: Float = 0, proximalMu: Float = 0) {
        self.learningRate = learningRate
        self.momentum = momentum
        self.weightDecay = weightDecay
        self.proximalMu = proximalMu
    }

    /// Applies one step to `count` parameters.
    @inline(__always)
    func step(
        parameters w: UnsafeMutablePointer<Float>, gradient g: UnsafePointer<Float>,
        anchor: UnsafePointer<Float>?, velocity: UnsafeMutablePointer<Float>?, count: Int
    ) {
        let lr = learningRate, wd = weightDecay, mu = proximalMu, m = momentum
        if let velocity, m > 0 {
            if let anchor, mu > 0 {
                for i in 0..<count {
                    let d = g[i] + wd * w[i] + mu * (w[i] - anchor[i])
                    velocity[i] = m * velocity[i] + d
                    w[i] -= lr * velocity[i]
                }
            } else {
                for i in 0..<count {
                    velocity[i] = m * velocity[i] + g[i] + wd * w[i]
                    w[i] -= lr * velocity[i]
                }
            }
        } else if let anchor, mu > 0 {
            for i in 0..<count { w[i] -= lr * (g[i] + wd * w[i] + mu * (w[i] - anchor[i])) }
        } else if wd != 0 {
            for i in 0..<count { w[i] -= lr * (g[i] + wd * w[i]) }
        } else {
            for i in 0..<count { w[i] -= lr * g[i] }
        }
    }
}
