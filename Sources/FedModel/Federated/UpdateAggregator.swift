import Foundation

/// How a round's updates become one delta, and what is done to them first.
public struct AggregationSettings: Sendable, Equatable {
    public enum Rule: String, Sendable, CaseIterable {
        /// Example-weighted mean (McMahan et al. 2017); streams, O(model) memory.
        case fedavg
        /// Coordinate-wise median (Yin et al. 2018).
        case median
        /// Coordinate-wise mean after dropping the `trimBeta` fraction at each end.
        case trimmedMean = "trimmed_mean"
        /// The one update closest to its n − f − 2 nearest neighbours (Blanchard et al. 2017).
        case krum
        /// The mean of the `multiKrumSelect` best-scoring updates by Krum's score.
        case multiKrum = "multi_krum"
        /// Trust bootstrapping after FLTrust (Cao et al. 2021): the server computes, on a small
        /// dataset of its own, one descent direction per class; an update scores the sum of its
        /// highest and lowest cosine with them (a sign-flipped update scores the negative of the
        /// honest one), a client's trust is the moving average of its scores, and only clients
        /// trusted above `trustThreshold` × the round's median score are averaged (FedAvg), with
        /// norms clipped to `normBound` (default 1.5) × the round's median norm. Needs
        /// ``UpdateAggregator/setTrustedDirections(_:)`` every round.
        case trust
    }

    public var rule = Rule.fedavg
    /// Fraction trimmed at each end by the trimmed mean, in [0, 0.5).
    public var trimBeta = 0.1
    /// Attackers Krum is told to tolerate (f).
    public var byzantine = 1
    /// Updates multi-Krum averages (0 = n − f).
    public var multiKrumSelect = 0
    /// Refuse or clip an update whose L2 norm exceeds this multiple of the round's median norm
    /// (0 = off).
    public var normBound = 0.0
    /// With a norm bound: clip the outlier to the bound (true) or leave it out (false).
    public var clipToNormBound = true
    /// Central differential privacy: each update is clipped to this L2 norm (0 = off) ...
    public var dpClip = 0.0
    /// ... and Gaussian noise of standard deviation `dpNoiseMultiplier` × `dpClip` is added to
    /// the sum of the clipped updates before dividing (the Gaussian mechanism, McMahan et al. 2018).
    public var dpNoiseMultiplier = 0.0

    public init(rule: Rule = .fedavg) { self.rule = rule }

    /// Trust rule: a client counts when its trust exceeds this fraction of the round's median
    /// score (and 0) ...
    public var trustThreshold = 0.2
    /// ... where its trust is the moving average of its scores, each new score weighing this
    /// (0 = the plain mean of all its scores).
    public var trustDecay = 0.5

    /// Whether the rule needs the server's own directions on trusted data each round.
    public var needsTrustedDirections: Bool { rule == .trust }

    /// Whether the round's updates must be held until it closes (anything but plain FedAvg
    /// needs the whole set, or at least the round's median norm).
    public var holdsUpdates: Bool { rule != .fedavg || normBound > 0 }

    public func validate() throws {
        guard trimBeta >= 0, trimBeta < 0.5 else { throw ModelError("trim_beta must be in [0, 0.5), got \(trimBeta)") }
        guard byzantine >= 0 else { throw ModelError("krum_f must be non-negative, got \(byzantine)") }
        guard multiKrumSelect >= 0 else { throw ModelError("multi_krum_m must be non-negative, got \(multiKrumSelect)") }
        guard normBound == 0 || (normBound >= 1 && normBound.isFinite) else { throw ModelError("norm_bound must be 0 (off) or at least 1, got \(normBound)") }
        guard dpClip >= 0, dpClip.isFinite else { throw ModelError("dp_clip must be non-negative, got \(dpClip)") }
        guard dpNoiseMultiplier >= 0, dpNoiseMultiplier.isFinite else { throw ModelError("dp_noise_multiplier must be non-negative, got \(dpNoiseMultiplier)") }
        guard trustDecay >= 0, trustDecay <= 1 else { throw ModelError("trust_decay must be in [0, 1] (0 = plain mean), got \(trustDecay)") }
        guard trustDecay >= 0, trustDecay <= 1 else { throw ModelError("trust_decay must be in [0, 1] (0 = plain mean), got \(trustDecay)") }
        guard trustThreshold >= 0, trustThreshold < 1 else { throw ModelError("trust_threshold must be in [0, 1), got \(trustThreshold)") }
        guard dpNoiseMultiplier == 0 || dpClip > 0 else { throw ModelError("dp_noise_multiplier needs dp_clip (the noise is scaled by the clipping norm)") }
    }
}

/// One round's aggregation: updates (model-sized deltas, each covering some shards) go in as they
/// arrive, ``finish(generator:)`` gives the delta to apply. Plain FedAvg streams into a running
/// sum; the robust rules and the norm bound keep each update until the round closes (memory:
/// one model per update; each shard is aggregated over the updates that carry it).
public struct UpdateAggregator: Sendable {
    public let settings: AggregationSettings
    public let shardRanges: [Range<Int>]
    private var stream: ShardedDeltaSum
    private var held: [(delta: [Float], shards: [Int], weight: Double, client: String?)] = []
    /// The previous round's reference norm: a round whose median is poisoned (attackers in the
    /// majority) cannot raise the bound beyond twice it.
    private let previousReference: Double?
    /// The server's descent directions on its trusted data, one per class (trust rule).
    private var trustedDirections: [[Float]] = []

    /// What happened to the updates beyond averaging.
    public struct Outcome: Sendable, Equatable {
        /// Indices (in arrival order) of updates clipped or left out by the norm bound (the trust
        /// rule clips trusted updates).
        public var clipped: [Int] = []
        public var excluded: [Int] = []
        /// Indices of the updates Krum or multi-Krum selected.
        public var selected: [Int] = []
        /// Trust rule, in arrival order: each update's score this round, its client's trust (the
        /// moving average of its scores), the threshold trust had to exceed, and the updates left out.
        public var scores: [Double] = []
        public var trust: [Double] = []
        public var trustThreshold: Double?
        public var untrusted: [Int] = []
        /// The norm the bound was relative to: the round's median update norm, capped at twice
        /// the previous round's (pass it to the next round's aggregator).
        public var referenceNorm: Double?
    }

    /// Each client's trust scores so far (trust rule); read it back after
    /// ``finish(generator:)`` and pass it to the next round's aggregator.
    public private(set) var ledger: TrustLedger

    public init(shardRanges: [Range<Int>], settings: AggregationSettings, previousReferenceNorm: Double? = nil, ledger: TrustLedger = TrustLedger()) {
        self.shardRanges = shardRanges
        self.ledger = ledger
        self.settings = settings
        previousReference = previousReferenceNorm.flatMap { $0 > 0 && $0.isFinite ? $0 : nil }
        stream = ShardedDeltaSum(shardRanges: shardRanges)
    }

    public var count: Int { settings.holdsUpdates ? held.count : stream.contributions }

    /// Whether updates covering only part of their shards (sub-models) can be aggregated: with
    /// plain FedAvg, no norm bound and no central DP.
    public var supportsPartialUpdates: Bool { !settings.holdsUpdates && settings.dpClip == 0 }

    /// Adds a delta covering `shards` (other entries of `delta` are ignored). `client` names the
    /// sender for the rules that remember clients across rounds (FLTrust's trust record).
    /// `positions`, when given, are the only places the update covers (a width-scaled
    /// sub-model's, ``SubModel``): each place is averaged over the updates that cover it. Only
    /// plain FedAvg without central DP takes such updates (``supportsPartialUpdates``).
    public mutating func add(delta: [Float], shards: [Int], weight: Double, client: String? = nil, positions: [Int32]? = nil) {
        if let positions {
            precondition(supportsPartialUpdates, "sub-model updates need plain FedAvg without central DP")
            stream.add(delta: delta, positions: positions, weight: weight)
            return
        }
        var delta = delta
        if settings.dpClip > 0 { Self.clip(&delta, shards: shards, ranges: shardRanges, to: settings.dpClip) }
        if settings.holdsUpdates {
            held.append((delta, shards, weight, client))
        } else {
            stream.add(delta: delta, shards: shards, weight: settings.dpClip > 0 ? 1 : weight)
        }
    }

    /// Sets the server's descent directions for this round (trust rule): one per class of its
    /// trusted data, from the same global model. Without at least two, nobody is trusted and
    /// the round has no delta.
    public mutating func setTrustedDirections(_ directions: [[Float]]) {
        let count = shardRanges.last?.upperBound ?? 0
        precondition(directions.allSatisfy { $0.count == count }, "trusted direction does not match the model")
        trustedDirections = directions
    }

    /// The aggregate delta (nil when no update was added) and what the rules did.
    public mutating func finish(generator: inout SeededGenerator) -> (delta: [Float]?, outcome: Outcome) {
        var outcome = Outcome()
        var result: [Float]?
        if !settings.holdsUpdates {
            result = stream.mean
        } else if !held.isEmpty {
            if settings.normBound > 0, settings.rule != .trust { applyNormBound(&outcome) }
            result = robustAggregate(&outcome)
        }
        if settings.dpNoiseMultiplier > 0, var noisy = result {
            // With clipping, every update weighs the same: the mean is sum / n and the noise on
            // the sum (σ·S) becomes σ·S / n on the mean.
            for (shard, range) in shardRanges.enumerated() {
                let n = contributors(of: shard)
                guard n > 0 else { continue }
                let sigma = settings.dpNoiseMultiplier * settings.dpClip / Double(n)
                for i in range { noisy[i] += Float(sigma * generator.nextGaussian()) }
            }
            result = noisy
        }
        return (result, outcome)
    }

    private func contributors(of shard: Int) -> Int {
        // Streaming with clipping adds each update with weight 1: the shard's weight is its count.
        settings.holdsUpdates ? held.filter { $0.shards.contains(shard) }.count : Int(stream.weights[shard].rounded())
    }

    // MARK: Norm bound

    /// The L2 norm of `delta` over `shards`, summed in binary64 over eight lanes (lane j takes
    /// the values j, j + 8, j + 16, ... of each shard), then the lanes in order.
    public static func norm(_ delta: [Float], shards: [Int], ranges: [Range<Int>]) -> Double {
        delta.withUnsafeBufferPointer { all in
            var lanes = SIMD8<Double>()
            var tail = 0.0
            guard let base = all.baseAddress else { return 0 }
            let raw = UnsafeRawPointer(base)
            for shard in shards {
                let range = ranges[shard]
                var i = range.lowerBound
                while i + 8 <= range.upperBound {
                    let x = SIMD8<Double>(raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self))
                    lanes += x * x
                    i += 8
                }
                while i < range.upperBound {
                    tail += Double(all[i]) * Double(all[i])
                    i += 1
                }
            }
            return (lanes.indices.reduce(0.0) { $0 + lanes[$1] } + tail).squareRoot()
        }
    }

    private static func clip(_ delta: inout [Float], shards: [Int], ranges: [Range<Int>], to bound: Double) {
        let n = norm(delta, shards: shards, ranges: ranges)
        guard n > bound else { return }
        let scale = Float(bound / n)
        for shard in shards { for i in ranges[shard] { delta[i] *= scale } }
    }

    private mutating func applyNormBound(_ outcome: inout Outcome) {
        let norms = held.map { Self.norm($0.delta, shards: $0.shards, ranges: shardRanges) }
        var reference = Self.median(norms)
        if let previousReference { reference = min(reference, 2 * previousReference) }
        outcome.referenceNorm = reference
        let bound = settings.normBound * reference
        var kept: [(delta: [Float], shards: [Int], weight: Double, client: String?)] = []
        for (i, update) in held.enumerated() {
            guard norms[i] > bound else { kept.append(update); continue }
            if settings.clipToNormBound {
                var delta = update.delta
                Self.clip(&delta, shards: update.shards, ranges: shardRanges, to: bound)
                kept.append((delta, update.shards, update.weight, update.client))
                outcome.clipped.append(i)
            } else {
                outcome.excluded.append(i)
            }
        }
        held = kept
    }

    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return 0 }
        let mid = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
    }

    // MARK: Robust rules, shard by shard

    private mutating func robustAggregate(_ outcome: inout Outcome) -> [Float]? {
        guard !held.isEmpty else { return nil }
        var result = [Float](repeating: 0, count: shardRanges.last?.upperBound ?? 0)
        var selectedAnywhere = Set<Int>()
        for (shard, range) in shardRanges.enumerated() {
            let members = held.indices.filter { held[$0].shards.contains(shard) }
            guard !members.isEmpty else { continue }
            switch settings.rule {
            case .fedavg:
                weightedMean(members, range: range, into: &result)
            case .median, .trimmedMean:
                let n = members.count
                let trim = settings.rule == .median ? 0 : min(Int(settings.trimBeta * Double(n)), (n - 1) / 2)
                var column = [Float](repeating: 0, count: n)
                for i in range {
                    for (k, m) in members.enumerated() { column[k] = held[m].delta[i] }
                    column.sort()
                    if settings.rule == .median {
                        result[i] = n % 2 == 1 ? column[n / 2] : (column[n / 2 - 1] + column[n / 2]) / 2
                    } else {
                        var sum: Float = 0
                        for k in trim..<(n - trim) { sum += column[k] }
                        result[i] = sum / Float(n - 2 * trim)
                    }
                }
            case .krum, .multiKrum:
                let chosen = krum(members, range: range)
                selectedAnywhere.formUnion(chosen)
                weightedMean(chosen, range: range, into: &result)
            case .trust:
                break
            }
        }
        outcome.selected = selectedAnywhere.sorted()
        if settings.rule == .trust { return trustedMean(&outcome) }
        return result
    }

    /// The trust rule over whole updates (each scored on the shards it carries; see
    /// ``AggregationSettings/Rule/trust``). Nil when nobody is trusted.
    private mutating func trustedMean(_ outcome: inout Outcome) -> [Float]? {
        var norms = [Double](repeating: 0, count: held.count)
        for (k, update) in held.enumerated() {
            let (score, norm) = trustScore(update.delta, shards: update.shards)
            norms[k] = norm
            outcome.scores.append(score)
            outcome.trust.append(max(0, update.client.map { ledger.record($0, score: score, weight: settings.trustDecay).trust } ?? score))
        }
        let threshold = max(0, settings.trustThreshold * Self.median(outcome.scores))
        var trusted = held.indices.filter { outcome.trust[$0] > threshold }
        outcome.untrusted = held.indices.filter { outcome.trust[$0] <= threshold }
        outcome.trustThreshold = threshold
        guard !trusted.isEmpty else { return nil }
        // The magnitude: cosines ignore it, so a trusted update above a multiple of the round's
        // median norm (over every update, capped at 1.5 × the previous round's reference) is
        // clipped to it or left out. Scaled honest directions are trusted: a median over the
        // trusted alone would be theirs whenever they outnumber the trusted honest updates.
        var reference = Self.median(norms)
        if let previousReference { reference = min(reference, 1.5 * previousReference) }
        outcome.referenceNorm = reference
        let bound = (settings.normBound > 0 ? settings.normBound : 1.5) * reference
        if !settings.clipToNormBound {
            outcome.excluded = trusted.filter { norms[$0] > bound }
            trusted.removeAll { norms[$0] > bound }
        }
        var result = [Float](repeating: 0, count: shardRanges.last?.upperBound ?? 0)
        for (shard, range) in shardRanges.enumerated() {
            let members = trusted.filter { held[$0].shards.contains(shard) }
            let total = members.reduce(0.0) { $0 + held[$1].weight }
            guard total > 0 else { continue }
            for m in members {
                let scale = norms[m] > bound ? bound / norms[m] : 1
                let w = Float(held[m].weight / total * scale)
                let delta = held[m].delta
                for i in range { result[i] += w * delta[i] }
            }
        }
        outcome.clipped = trusted.filter { norms[$0] > bound }
        return result
    }

    /// max_c cos(Δ, g_c) + min_c cos(Δ, g_c) over the trusted directions g_c, on `shards`, and
    /// ‖Δ‖ there. Antisymmetric (−Δ scores the negative); -1 without two directions or for a
    /// zero or non-finite update.
    private func trustScore(_ delta: [Float], shards: [Int]) -> (score: Double, norm: Double) {
        var own = 0.0
        for shard in shards { for i in shardRanges[shard] { own += Double(delta[i]) * Double(delta[i]) } }
        let norm = own.squareRoot()
        guard trustedDirections.count >= 2, own > 0, own.isFinite else { return (-1, norm.isFinite ? norm : 0) }
        var highest = -Double.infinity, lowest = Double.infinity
        for direction in trustedDirections {
            var dot = 0.0, server = 0.0
            for shard in shards {
                for i in shardRanges[shard] {
                    let y = Double(direction[i])
                    dot += Double(delta[i]) * y
                    server += y * y
                }
            }
            let cosine = server > 0 ? dot / (norm * server.squareRoot()) : 0
            highest = max(highest, cosine)
            lowest = min(lowest, cosine)
        }
        let score = highest + lowest
        return (score.isFinite ? score : -1, norm)
    }

    private func weightedMean(_ members: [Int], range: Range<Int>, into result: inout [Float]) {
        let total = members.reduce(0.0) { $0 + (settings.dpClip > 0 ? 1 : held[$1].weight) }
        for m in members {
            let w = Float((settings.dpClip > 0 ? 1 : held[m].weight) / total)
            let delta = held[m].delta
            for i in range { result[i] += w * delta[i] }
        }
    }

    /// Krum's choice among `members` on this shard: scores are the sums of squared distances to
    /// the n − f − 2 nearest others (at least one); Krum keeps the lowest, multi-Krum the m lowest.
    private func krum(_ members: [Int], range: Range<Int>) -> [Int] {
        let n = members.count
        guard n > 2 else { return members }
        var distances = [[Double]](repeating: [Double](repeating: 0, count: n), count: n)
        for a in 0..<n {
            for b in (a + 1)..<n {
                let x = held[members[a]].delta, y = held[members[b]].delta
                var d = 0.0
                for i in range { let t = Double(x[i] - y[i]); d += t * t }
                distances[a][b] = d
                distances[b][a] = d
            }
        }
        let neighbours = max(1, n - settings.byzantine - 2)
        let scores = (0..<n).map { a -> Double in
            var row = distances[a]
            row.remove(at: a)
            row.sort()
            return row.prefix(neighbours).reduce(0, +)
        }
        let order = (0..<n).sorted { (scores[$0], $0) < (scores[$1], $1) }
        let keep = settings.rule == .krum ? 1 : (settings.multiKrumSelect > 0 ? min(settings.multiKrumSelect, n) : max(1, n - settings.byzantine))
        return order.prefix(keep).map { members[$0] }
    }
}

/// What the server has seen of each client under the trust rule: an exponential moving average
/// of its updates' scores. A client is trusted while it is high enough, so a steady attacker is
/// left out after its first update even when one honest round's score is noisy, and a client
/// that earned trust and then turns loses it within an update or two.
public struct TrustLedger: Sendable, Equatable {
    public struct Record: Sendable, Equatable {
        /// The moving average of the scores (the first score as it is).
        public var trust: Double
        public var updates: Int
        public init(trust: Double = 0, updates: Int = 0) {
            self.trust = trust
            self.updates = updates
        }
    }

    public private(set) var records: [String: Record] = [:]

    public init(records: [String: Record] = [:]) { self.records = records }

    /// Folds one update's score into `client`'s record, the new score weighing `weight` (in
    /// (0, 1]; 0 = the plain mean of all its scores), and returns the record.
    @discardableResult
    public mutating func record(_ client: String, score: Double, weight: Double = 0.5) -> Record {
        var record = records[client] ?? Record()
        record.updates += 1
        let w = weight > 0 ? weight : 1 / Double(record.updates)
        record.trust = record.updates == 1 ? score : (1 - w) * record.trust + w * score
        records[client] = record
        return record
    }
}
