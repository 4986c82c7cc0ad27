/// Federated magnitude pruning: the coordinator decides which weights of the global model are
/// kept (a mask), on a schedule that raises the sparsity over rounds, and zeroes the rest; the
/// mask travels with the model (a masked shard is sent sparse), clients train only the kept
/// weights, and their updates travel sparse over the mask.
///
/// The schedule is Zhu and Gupta's gradual pruning (2017, "To prune, or not to prune"): with
/// initial sparsity sᵢ, final s_f, pruning from round t₀ every Δt rounds until round t₁,
///
///     s(t) = s_f + (sᵢ − s_f) · (1 − (t − t₀) / (t₁ − t₀))³   for t₀ ≤ t ≤ t₁,
///
/// so most weights go early, while the model still has many, and few late. A pruning step runs
/// after rounds t₀ + kΔt and after t₁ (the last step reaches s_f); the sparsity then stays.
///
/// Only weight tensors of two or more dimensions (dense, convolution, embedding and recurrent
/// weights) are pruned; biases and normalisation scales are small and stay whole.
public struct PruningSchedule: Sendable, Equatable {
    /// Which weights compete for the kept places.
    public enum Scope: String, Sendable, CaseIterable {
        /// Each tensor keeps its own (1 − s) fraction (the same sparsity in every layer).
        case layer
        /// All prunable tensors together keep the (1 − s) fraction of largest magnitudes.
        case global
    }

    /// s_f, in [0, 1).
    public var sparsity: Double
    /// sᵢ, in [0, s_f].
    public var initialSparsity: Double
    /// t₀: the round after which the first step runs (sparsity sᵢ).
    public var startRound: Int
    /// t₁: the round after which the final sparsity is reached.
    public var endRound: Int
    /// Δt: rounds between steps.
    public var every: Int
    public var scope: Scope

    public init(sparsity: Double, initialSparsity: Double = 0, startRound: Int = 1, endRound: Int, every: Int = 1, scope: Scope = .layer) {
        self.sparsity = sparsity
        self.initialSparsity = initialSparsity
        self.startRound = startRound
        self.endRound = endRound
        self.every = every
        self.scope = scope
    }

    /// Checks the values; the message names the bad one.
    public func validate(rounds: Int? = nil) throws {
        guard sparsity >= 0, sparsity < 1 else { throw ModelError("prune_sparsity must be in [0, 1), got \(sparsity)") }
        guard initialSparsity >= 0, initialSparsity <= sparsity else {
            throw ModelError("prune_initial_sparsity must be in [0, prune_sparsity = \(sparsity)], got \(initialSparsity)")
        }
        guard startRound >= 1 else { throw ModelError("prune_start must be a round ≥ 1, got \(startRound)") }
        guard endRound >= startRound else { throw ModelError("prune_end (\(endRound)) must not come before prune_start (\(startRound))") }
        guard every >= 1 else { throw ModelError("prune_every must be ≥ 1, got \(every)") }
        if let rounds, endRound > rounds {
            throw ModelError("prune_end (\(endRound)) is after the last round (\(rounds)): the final sparsity would never be reached")
        }
    }

    /// The sparsity to prune to after `round`, or nil when no pruning step runs then.
    public func step(afterRound round: Int) -> Double? {
        guard round >= startRound, round <= endRound else { return nil }
        guard (round - startRound) % every == 0 || round == endRound else { return nil }
        return sparsity(afterRound: round)
    }

    /// s(t): the schedule's sparsity after `round` (sᵢ before t₀ has no meaning and returns 0).
    public func sparsity(afterRound round: Int) -> Double {
        guard round >= startRound else { return 0 }
        let progress = endRound > startRound ? min(1, Double(round - startRound) / Double(endRound - startRound)) : 1
        let remaining = 1 - progress
        return sparsity + (initialSparsity - sparsity) * remaining * remaining * remaining
    }
}

/// Which weights a pruned model keeps: for each tensor of the layout, nil when it is whole, or
/// the ascending positions (within the tensor) it keeps. At least one position per tensor is
/// kept, so every tensor still travels.
public struct PruningMask: Sendable, Equatable {
    public private(set) var kept: [[UInt32]?]

    public init(kept: [[UInt32]?]) {
        self.kept = kept
    }

    /// A mask that keeps everything.
    public init(whole layout: ParameterLayout) {
        kept = Array(repeating: nil, count: layout.tensors.count)
    }

    /// The tensors pruning may thin: two or more dimensions.
    public static func prunable(_ layout: ParameterLayout) -> [Int] {
        layout.tensors.filter { $0.shape.count >= 2 }.map(\.index)
    }

    /// The mask a pruned model implies: in each prunable tensor, the positions holding a
    /// nonzero value (nil when it holds no zero). This is how a pruned model is read back
    /// from a checkpoint; a kept weight that is exactly zero would read as pruned, which
    /// trained float weights practically never are.
    public init(zerosOf weights: [Float], layout: ParameterLayout) {
        kept = Array(repeating: nil, count: layout.tensors.count)
        for index in Self.prunable(layout) {
            let range = layout.tensors[index].range
            let nonzero = range.filter { weights[$0] != 0 }
            if nonzero.count < range.count {
                let positions = nonzero.isEmpty ? [0] : nonzero.map { UInt32($0 - range.lowerBound) }
                kept[index] = positions
            }
        }
    }

    /// Prunes `weights` by magnitude to `sparsity` of the prunable weights, never bringing back
    /// what `previous` pruned: the positions pruned before count as the smallest. Ties go to
    /// the lower position, so the mask is a pure function of its inputs.
    public init(pruning weights: [Float], layout: ParameterLayout, to sparsity: Double, scope: PruningSchedule.Scope, previous: PruningMask? = nil) {
        precondition(weights.count == layout.parameterCount, "weights do not match the layout")
        precondition(sparsity >= 0 && sparsity < 1, "sparsity \(sparsity) outside [0, 1)")
        kept = Array(repeating: nil, count: layout.tensors.count)
        let tensors = Self.prunable(layout)
        // |w| per position, with what `previous` pruned below every real magnitude.
        func magnitudes(_ tensor: Int) -> [Float] {
            let range = layout.tensors[tensor].range
            var m = weights[range].map { abs($0) }
            if let previous, let kept = previous.kept[tensor] {
                var keptFlag = [Bool](repeating: false, count: m.count)
                for position in kept where Int(position) < m.count { keptFlag[Int(position)] = true }
                for position in m.indices where !keptFlag[position] { m[position] = -1 }
            }
            return m
        }
        switch scope {
        case .layer:
            for tensor in tensors {
                let m = magnitudes(tensor)
                let n = m.count
                let keep = max(1, n - Int((sparsity * Double(n)).rounded()))
                guard keep < n else { continue }
                let order = (0..<n).sorted { a, b in m[a] != m[b] ? m[a] > m[b] : a < b }
                kept[tensor] = order[..<keep].map { UInt32($0) }.sorted()
            }
        case .global:
            var all: [(tensor: Int, position: Int, magnitude: Float)] = []
            for tensor in tensors {
                for (position, value) in magnitudes(tensor).enumerated() { all.append((tensor, position, value)) }
            }
            let keep = max(tensors.count, all.count - Int((sparsity * Double(all.count)).rounded()))
            guard keep < all.count else { return }
            all.sort { a, b in
                a.magnitude != b.magnitude ? a.magnitude > b.magnitude : (a.tensor, a.position) < (b.tensor, b.position)
            }
            var positions = Array(repeating: [UInt32](), count: layout.tensors.count)
            for entry in all[..<keep] { positions[entry.tensor].append(UInt32(entry.position)) }
            for tensor in tensors {
                let n = layout.tensors[tensor].count
                if positions[tensor].isEmpty { positions[tensor] = [0] }
                if positions[tensor].count < n { kept[tensor] = positions[tensor].sorted() }
            }
        }
    }

    /// Whether any tensor is thinned.
    public var isPruning: Bool { kept.contains { $0 != nil } }

    /// The fraction of the prunable weights that are pruned.
    public func sparsity(layout: ParameterLayout) -> Double {
        var total = 0, pruned = 0
        for index in Self.prunable(layout) {
            let n = layout.tensors[index].count
            total += n
            pruned += n - (kept[index]?.count ?? n)
        }
        return total > 0 ? Double(pruned) / Double(total) : 0
    }

    /// Zeroes every pruned position of `weights`.
    public func apply(to weights: inout [Float], layout: ParameterLayout) {
        weights.withUnsafeMutableBufferPointer { w in
            for (index, positions) in kept.enumerated() {
                guard let positions else { continue }
                let range = layout.tensors[index].range
                var next = 0
                for position in 0..<range.count {
                    if next < positions.count, positions[next] == UInt32(position) {
                        next += 1
                    } else {
                        w[range.lowerBound + position] = 0
                    }
                }
            }
        }
    }

    /// One multiplier per parameter, 1 kept and 0 pruned (nil when nothing is pruned): what
    /// training multiplies its weights by after every step.
    public func multipliers(layout: ParameterLayout) -> [Float]? {
        guard isPruning else { return nil }
        var m = [Float](repeating: 1, count: layout.parameterCount)
        apply(to: &m, layout: layout)
        return m
    }
}
