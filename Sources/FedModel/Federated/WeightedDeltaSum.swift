/// FedAvg's aggregate as a running sum: each client's delta (local − global) is added,
/// weighted by its example count, the moment it arrives, so memory is one model's worth
/// however many clients report. ``mean`` is Σ nₖ·Δₖ / Σ nₖ.
public struct WeightedDeltaSum: Sendable {
    public private(set) var sum: [Float]
    public private(set) var totalWeight: Double = 0
    public private(set) var contributions = 0

    public init(parameterCount: Int) {
        sum = [Float](repeating: 0, count: parameterCount)
    }

    /// Adds weight·(local − global) without forming the delta.
    public mutating func add(local: [Float], global: [Float], weight: Double) {
        precondition(local.count == sum.count && global.count == sum.count, "delta does not match the model")
        let w = Float(weight)
        sum.withUnsafeMutableBufferPointer { s in
            local.withUnsafeBufferPointer { l in
                global.withUnsafeBufferPointer { g in
                    for i in 0..<s.count { s[i] += w * (l[i] - g[i]) }
                }
            }
        }
        totalWeight += weight
        contributions += 1
    }

    /// Adds weight·delta for an already formed delta.
    public mutating func add(delta: [Float], weight: Double) {
        precondition(delta.count == sum.count, "delta does not match the model")
        let w = Float(weight)
        sum.withUnsafeMutableBufferPointer { s in
            delta.withUnsafeBufferPointer { d in
                for i in 0..<s.count { s[i] += w * d[i] }
            }
        }
        totalWeight += weight
        contributions += 1
    }

    /// The weighted mean delta, or nil when nothing was added.
    public var mean: [Float]? {
        guard totalWeight > 0 else { return nil }
        let scale = Float(1 / totalWeight)
        return sum.map { $0 * scale }
    }

    /// global += mean delta. Returns false (and leaves `global` alone) when nothing was added.
    @discardableResult
    public func apply(to global: inout [Float]) -> Bool {
        guard totalWeight > 0 else { return false }
        let scale = Float(1 / totalWeight)
        global.withUnsafeMutableBufferPointer { g in
            sum.withUnsafeBufferPointer { s in
                for i in 0..<g.count { g[i] += s[i] * scale }
            }
        }
        return true
    }

    public mutating func reset() {
        sum.withUnsafeMutableBufferPointer { $0.update(repeating: 0) }
        totalWeight = 0
        contributions = 0
    }
}
