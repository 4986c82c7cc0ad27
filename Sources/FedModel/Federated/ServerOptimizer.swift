/// How the server turns the round's aggregated delta Δ (the example-weighted mean of the
/// clients' `local − global`) into a new global model, after Reddi et al. 2021,
/// "Adaptive Federated Optimization" (Algorithm 2). With η the server learning rate:
///
/// - FedAvg:     x ← x + η·Δ
/// - FedAvgM:    m ← β·m + Δ;  x ← x + η·m
/// - FedAdagrad: m ← β₁·m + (1−β₁)·Δ;  v ← v + Δ²;                         x ← x + η·m/(√v + τ)
/// - FedAdam:    m ← β₁·m + (1−β₁)·Δ;  v ← β₂·v + (1−β₂)·Δ²;               x ← x + η·m/(√v + τ)
/// - FedYogi:    m ← β₁·m + (1−β₁)·Δ;  v ← v − (1−β₂)·Δ²·sign(v − Δ²);    x ← x + η·m/(√v + τ)
///
/// The moments m and v are the optimizer's state; they persist across rounds (and, with the
/// store, across coordinator restarts).
public struct ServerOptimizer: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        case fedAvg = "fedavg", fedAvgM = "fedavgm", fedAdagrad = "fedadagrad", fedAdam = "fedadam", fedYogi = "fedyogi"
    }

    public struct Settings: Sendable, Equatable {
        public var kind: Kind
        /// η.
        public var learningRate: Float
        /// β for FedAvgM, β₁ for the adaptive methods.
        public var momentum: Float
        /// β₂.
        public var beta2: Float
        /// τ, the adaptivity floor.
        public var tau: Float

        public init(kind: Kind = .fedAvg, learningRate: Float = 1, momentum: Float = 0.9, beta2: Float = 0.99, tau: Float = 1e-3) {
            self.kind = kind
            self.learningRate = learningRate
            self.momentum = momentum
            self.beta2 = beta2
            self.tau = tau
        }

        /// Checks the values; the message names the bad one.
        public func validate() throws {
            guard learningRate > 0, learningRate.isFinite else { throw ModelError("server learning rate must be positive, got \(learningRate)") }
            guard momentum >= 0, momentum < 1 else { throw ModelError("server momentum (beta1) must be in [0, 1), got \(momentum)") }
            guard beta2 >= 0, beta2 < 1 else { throw ModelError("server beta2 must be in [0, 1), got \(beta2)") }
            guard tau > 0, tau.isFinite else { throw ModelError("server tau must be positive, got \(tau)") }
        }
    }

    public let settings: Settings
    /// First moment (momentum buffer); empty for FedAvg.
    public private(set) var m: [Float]
    /// Second moment; empty unless adaptive.
    public private(set) var v: [Float]

    public init(settings: Settings, parameterCount: Int) {
        self.settings = settings
        m = settings.kind == .fedAvg ? [] : [Float](repeating: 0, count: parameterCount)
        switch settings.kind {
        case .fedAdagrad, .fedAdam, .fedYogi:
            // Reddi et al. initialise v to τ² so the first steps are not huge.
            v = [Float](repeating: settings.tau * settings.tau, count: parameterCount)
        case .fedAvg, .fedAvgM:
            v = []
        }
    }

    /// Restores saved moments (from a checkpoint).
    public init(settings: Settings, m: [Float], v: [Float]) {
        self.settings = settings
        self.m = m
        self.v = v
    }

    /// Applies the aggregated delta to `global`.
    public mutating func apply(delta: [Float], to global: inout [Float]) {
        precondition(delta.count == global.count, "delta does not match the model")
        let s = settings
        let eta = s.learningRate, b1 = s.momentum, b2 = s.beta2, tau = s.tau
        switch s.kind {
        case .fedAvg:
            for i in global.indices { global[i] += eta * delta[i] }
        case .fedAvgM:
            for i in global.indices {
                m[i] = b1 * m[i] + delta[i]
                global[i] += eta * m[i]
            }
        case .fedAdagrad, .fedAdam, .fedYogi:
            for i in global.indices {
                let d = delta[i]
                m[i] = b1 * m[i] + (1 - b1) * d
                let d2 = d * d
                switch s.kind {
                case .fedAdagrad: v[i] += d2
                case .fedAdam: v[i] = b2 * v[i] + (1 - b2) * d2
                default: v[i] -= (1 - b2) * d2 * (v[i] - d2 > 0 ? 1 : (v[i] - d2 < 0 ? -1 : 0))
                }
                global[i] += eta * m[i] / (v[i].squareRoot() + tau)
            }
        }
    }
}
