import Testing
@testable import FedModel

@Suite struct ServerOptimizerTests {
    typealias S = ServerOptimizer.Settings

    @Test func fedAvgAddsTheScaledDelta() {
        var optimizer = ServerOptimizer(settings: S(kind: .fedAvg, learningRate: 0.5), parameterCount: 2)
        var x: [Float] = [1, 2]
        optimizer.apply(delta: [2, -4], to: &x)
        #expect(x == [2, 0])
    }

    @Test func fedAvgMAccumulatesMomentum() {
        var optimizer = ServerOptimizer(settings: S(kind: .fedAvgM, learningRate: 1, momentum: 0.5), parameterCount: 1)
        var x: [Float] = [0]
        optimizer.apply(delta: [1], to: &x)  // m = 1, x = 1
        optimizer.apply(delta: [1], to: &x)  // m = 1.5, x = 2.5
        #expect(x == [2.5])
        #expect(optimizer.m == [1.5])
    }

    /// One step of each adaptive method against the formula written out in Double.
    @Test(arguments: [ServerOptimizer.Kind.fedAdagrad, .fedAdam, .fedYogi])
    func adaptiveStepsFollowReddiEtAl(kind: ServerOptimizer.Kind) {
        let settings = S(kind: kind, learningRate: 0.1, momentum: 0.9, beta2: 0.99, tau: 1e-3)
        var optimizer = ServerOptimizer(settings: settings, parameterCount: 3)
        var x: [Float] = [0, 1, -1]
        let delta: [Float] = [0.2, -0.05, 0]
        optimizer.apply(delta: delta, to: &x)
        for i in 0..<3 {
            let d = Double(delta[i]), tau = 1e-3
            let m = 0.1 * d
            let v0 = tau * tau
            let v: Double
            switch kind {
            case .fedAdagrad: v = v0 + d * d
            case .fedAdam: v = 0.99 * v0 + 0.01 * d * d
            default: v = v0 - 0.01 * d * d * (v0 - d * d > 0 ? 1 : (v0 - d * d < 0 ? -1 : 0))
            }
            let expected = Double([0, 1, -1][i]) + 0.1 * m / (v.squareRoot() + tau)
            #expect(abs(Double(x[i]) - expected) < 1e-5, "\(kind) parameter \(i): \(x[i]) vs \(expected)")
        }
    }

    @Test func adaptiveMethodsDifferFromEachOther() {
        var results: [[Float]] = []
        for kind in [ServerOptimizer.Kind.fedAdagrad, .fedAdam, .fedYogi] {
            var optimizer = ServerOptimizer(settings: S(kind: kind, learningRate: 0.1), parameterCount: 2)
            var x: [Float] = [0, 0]
            for _ in 0..<5 { optimizer.apply(delta: [0.3, -0.01], to: &x) }
            results.append(x)
        }
        #expect(results[0] != results[1] && results[1] != results[2])
    }

    @Test func badSettingsAreRefused() {
        #expect(throws: ModelError.self) { try S(learningRate: 0).validate() }
        #expect(throws: ModelError.self) { try S(momentum: 1).validate() }
        #expect(throws: ModelError.self) { try S(tau: 0).validate() }
    }
}
