import Testing
@testable import FedModel

@Suite struct UpdateAggregatorTests {
    /// Two shards: [0, 2) and [2, 4).
    let ranges = [0..<2, 2..<4]

    func aggregate(_ updates: [[Float]], weights: [Double]? = nil, shards: [[Int]]? = nil, _ settings: AggregationSettings) -> ([Float]?, UpdateAggregator.Outcome) {
        var aggregator = UpdateAggregator(shardRanges: ranges, settings: settings)
        for (i, u) in updates.enumerated() {
            aggregator.add(delta: u, shards: shards?[i] ?? [0, 1], weight: weights?[i] ?? 1)
        }
        var generator = SeededGenerator(seed: 1, stream: 2)
        let (delta, outcome) = aggregator.finish(generator: &generator)
        return (delta, outcome)
    }

    /// The eight-lane norm against the plain sum, over shards of every length about a vector's.
    @Test func theNormIsTheSumOfSquaresOverTheShards() {
        var generator = SeededGenerator(seed: 5, stream: 1)
        let values = (0..<1000).map { _ in Float.random(in: -3...3, using: &generator) }
        let ranges = [0..<0, 0..<7, 7..<8, 8..<16, 16..<33, 33..<1000]
        for shards in [[0], [1], [2, 4], [3, 5], Array(ranges.indices), [5, 1]] {
            let plain = shards.reduce(0.0) { sum, shard in ranges[shard].reduce(sum) { $0 + Double(values[$1]) * Double(values[$1]) } }.squareRoot()
            let norm = UpdateAggregator.norm(values, shards: shards, ranges: ranges)
            #expect(abs(norm - plain) <= 1e-12 * plain, "\(shards)")
        }
        #expect(UpdateAggregator.norm([], shards: [], ranges: []) == 0)
        #expect(UpdateAggregator.norm([3, 4], shards: [0], ranges: [0..<2]) == 5)
    }

    @Test func fedAvgIsTheWeightedMeanAndMatchesTheRunningSum() {
        let updates: [[Float]] = [[1, 2, 3, 4], [3, 2, 1, 0]]
        let (mean, _) = aggregate(updates, weights: [1, 3], AggregationSettings())
        let expected: [Float] = [2.5, 2, 1.5, 1]
        #expect(mean == expected)
        var sum = WeightedDeltaSum(parameterCount: 4)
        sum.add(delta: updates[0], weight: 1)
        sum.add(delta: updates[1], weight: 3)
        #expect(sum.mean == mean)
        // Held (norm bound on, nothing above it) gives the same numbers.
        var settings = AggregationSettings()
        settings.normBound = 100
        #expect(aggregate(updates, weights: [1, 3], settings).0 == mean)
    }

    @Test func medianAndTrimmedMeanIgnoreAFewOutliers() {
        let honest: [[Float]] = [[1, 1, 1, 1], [1.2, 0.8, 1, 1.1], [0.9, 1.1, 1, 0.9], [1.1, 0.9, 1, 1]]
        let poisoned = honest + [[1000, -1000, 1000, -1000]]
        let (median, _) = aggregate(poisoned, AggregationSettings(rule: .median))
        let expectedMedian: [Float] = [1.1, 0.9, 1, 1]
        #expect(median == expectedMedian)
        var trimmed = AggregationSettings(rule: .trimmedMean)
        trimmed.trimBeta = 0.2 // drops one value at each end of five
        let (mean, _) = aggregate(poisoned, trimmed)
        let expectedMean: [Float] = [1.1, 0.9, 1, 0.966_667]
        for (value, expected) in zip(mean!, expectedMean) {
            #expect(abs(value - expected) < 1e-5, "\(mean!)")
        }
        // With an even count the median is the mean of the middle two.
        let even: [Float] = [2, 0, 0, 0]
        #expect(aggregate([[1, 0, 0, 0], [3, 0, 0, 0]], AggregationSettings(rule: .median)).0 == even)
    }

    @Test func krumPicksAnUpdateFromTheHonestCluster() {
        let honest: [[Float]] = [[1, 1, 1, 1], [1.1, 1, 1, 1], [1, 1.1, 1, 1], [1, 1, 1.1, 1], [1, 1, 1, 1.1]]
        let attackers: [[Float]] = [[-5, -5, -5, -5], [-5.1, -5, -5, -5]]
        var settings = AggregationSettings(rule: .krum)
        settings.byzantine = 2
        let (chosen, outcome) = aggregate(attackers + honest, settings)
        #expect(outcome.selected.count == 1 && outcome.selected[0] >= 2, "\(outcome.selected)")
        #expect(chosen!.allSatisfy { $0 > 0.9 })
        settings.rule = .multiKrum
        let (mean, multi) = aggregate(attackers + honest, settings)
        #expect(Set(multi.selected) == Set(2...6))
        #expect(mean!.allSatisfy { $0 > 0.9 && $0 < 1.1 })
    }

    @Test func normBoundClipsOrLeavesOutOutliers() {
        let updates: [[Float]] = [[3, 4, 0, 0], [0, 0, 3, 4], [4, 3, 0, 0], [30, 40, 0, 0]] // norms 5, 5, 5, 50
        var settings = AggregationSettings()
        settings.normBound = 2
        let (clipped, outcome) = aggregate(updates, settings)
        #expect(outcome.referenceNorm == 5)
        #expect(outcome.clipped == [3])
        // The outlier is scaled to norm 10: (6, 8, 0, 0).
        let expectedClipped: [Float] = [13.0 / 4, 15.0 / 4, 0.75, 1]
        #expect(clipped == expectedClipped)
        settings.clipToNormBound = false
        let (kept, refused) = aggregate(updates, settings)
        #expect(refused.excluded == [3])
        // A round where attackers are the majority cannot move the bound past twice the last one.
        var poisoned = UpdateAggregator(shardRanges: ranges, settings: settings, previousReferenceNorm: 5)
        for u in [[3, 4, 0, 0], [300, 400, 0, 0], [400, 300, 0, 0]] as [[Float]] { poisoned.add(delta: u, shards: [0, 1], weight: 1) }
        var g = SeededGenerator(seed: 1)
        let capped = poisoned.finish(generator: &g).outcome
        #expect(capped.referenceNorm == 10 && capped.excluded == [1, 2])
        let expectedKept: [Float] = [7.0 / 3, 7.0 / 3, 1, 4.0 / 3]
        #expect(kept!.enumerated().allSatisfy { abs($1 - expectedKept[$0]) < 1e-6 }, "\(kept!)")
    }

    @Test func eachShardIsAggregatedOverTheUpdatesThatCarryIt() {
        // The second update trained only shard 1; robust rules work shard by shard too.
        let updates: [[Float]] = [[2, 2, 2, 2], [9, 9, 4, 4], [4, 4, 6, 6]]
        let shards = [[0, 1], [1], [0, 1]]
        let expected: [Float] = [3, 3, 4, 4]
        #expect(aggregate(updates, shards: shards, AggregationSettings()).0 == expected)
        #expect(aggregate(updates, shards: shards, AggregationSettings(rule: .median)).0 == expected)
    }

    @Test func centralDPClipsEveryUpdateAndAddsCalibratedNoise() {
        var settings = AggregationSettings()
        settings.dpClip = 1
        // Without noise: both updates are clipped to norm 1 and weigh the same.
        let (clipped, _) = aggregate([[30, 40, 0, 0], [0, 0, 0, 0.5]], weights: [100, 1], settings)
        let expectedDP: [Float] = [0.3, 0.4, 0, 0.25]
        #expect(clipped!.enumerated().allSatisfy { abs($1 - expectedDP[$0]) < 1e-6 }, "\(clipped!)")
        // With noise: σ·S/n per coordinate on the mean; check its spread over many coordinates.
        settings.dpNoiseMultiplier = 2
        let count = 20_000
        var aggregator = UpdateAggregator(shardRanges: [0..<count], settings: settings)
        for _ in 0..<4 { aggregator.add(delta: [Float](repeating: 0, count: count), shards: [0], weight: 1) }
        var generator = SeededGenerator(seed: 3, stream: 4)
        let noisy = aggregator.finish(generator: &generator).delta!
        let variance = noisy.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(count)
        #expect(abs(variance.squareRoot() - 0.5) < 0.02, "noise sd \(variance.squareRoot()), expected 2 × 1 / 4")
    }

    @Test func settingsAreValidated() {
        var s = AggregationSettings()
        s.trimBeta = 0.5
        #expect(throws: ModelError.self) { try s.validate() }
        s = AggregationSettings()
        s.dpNoiseMultiplier = 1
        #expect(throws: ModelError.self) { try s.validate() }
        s = AggregationSettings()
        s.normBound = 0.5
        #expect(throws: ModelError.self) { try s.validate() }
    }

    // MARK: Trust rule

    /// Server directions of two classes in 4-d: class 0 moves (1, 1, 0, 0), class 1 (1, 0, 1, 0).
    let directions: [[Float]] = [[1, 1, 0, 0], [1, 0, 1, 0]]

    func trusted(_ updates: [[Float]], clients: [String], ledger: TrustLedger = TrustLedger(), threshold: Double = 0.2)
        -> ([Float]?, UpdateAggregator.Outcome, TrustLedger) {
        var settings = AggregationSettings(rule: .trust)
        settings.trustThreshold = threshold
        var aggregator = UpdateAggregator(shardRanges: ranges, settings: settings, ledger: ledger)
        for (u, client) in zip(updates, clients) { aggregator.add(delta: u, shards: [0, 1], weight: 1, client: client) }
        aggregator.setTrustedDirections(directions)
        var generator = SeededGenerator(seed: 1)
        let (delta, outcome) = aggregator.finish(generator: &generator)
        return (delta, outcome, aggregator.ledger)
    }

    @Test func trustScoresAreAntisymmetricAndLeaveOutFlippedAndUnrelatedUpdates() throws {
        let honest: [[Float]] = [[1, 1, 0, 0], [1, 0, 1, 0], [2, 1, 1, 0]]
        let flipped: [Float] = [-1, -1, 0, 0]
        let unrelated: [Float] = [0, 0, 0, 3] // orthogonal to every server direction
        let (mean, outcome, ledger) = trusted(honest + [flipped, unrelated], clients: ["a", "b", "c", "x", "y"])
        // cos((1,1,0,0), g0) = 1, with g1 = 1/2: score 1.5; the flip scores -1.5; unrelated 0.
        #expect(abs(outcome.scores[0] - 1.5) < 1e-9 && abs(outcome.scores[3] + 1.5) < 1e-9 && outcome.scores[4] == 0, "\(outcome.scores)")
        #expect(outcome.untrusted == [3, 4])
        // The third honest update (norm √6) is clipped to 1.5 × the trusted median norm (√2).
        #expect(outcome.clipped == [2])
        let bound = 1.5 * 2.0.squareRoot(), scale = Float(bound / 6.0.squareRoot())
        let expected: [Float] = [(1 + 1 + 2 * scale) / 3, (1 + scale) / 3, (1 + scale) / 3, 0]
        for (value, e) in zip(try #require(mean), expected) { #expect(abs(value - e) < 1e-6, "\(mean!)") }
        #expect(ledger.records["x"] == TrustLedger.Record(trust: outcome.scores[3], updates: 1))
    }

    @Test func aClientsRecordOutweighsOneNoisyRoundButNotATurn() {
        // Client "a" earned trust (1) over three rounds; one round in which its update scores a
        // little below zero keeps it in. A new client with the same update stays out.
        var ledger = TrustLedger()
        for _ in 0..<3 { ledger.record("a", score: 1) }
        let slightlyOff: [Float] = [0, -0.3, -0.2, 0.5]
        let honest: [[Float]] = [[1, 1, 0, 0], [1, 0, 1, 0]]
        let (_, outcome, after) = trusted(honest + [slightlyOff, slightlyOff], clients: ["b", "c", "a", "new"], ledger: ledger)
        #expect(outcome.scores[2] < 0)
        #expect(outcome.untrusted == [3], "\(outcome.trust)")
        #expect(after.records["a"]?.updates == 4)
        #expect(abs((after.records["a"]?.trust ?? 0) - (0.5 + 0.5 * outcome.scores[2])) < 1e-12)
        // A client that earned trust and then sends flipped updates loses it at once.
        var attacker = TrustLedger()
        for _ in 0..<5 { attacker.record("z", score: 0.5) }
        let (_, o, _) = trusted(honest + [[-1, -1, 0, 0]], clients: ["b", "c", "z"], ledger: attacker)
        #expect(o.trust[2] == 0 && o.untrusted == [2])
    }

    @Test func trustIsAMovingAverageOrWithDecay0ThePlainMean() {
        var ledger = TrustLedger()
        for score in [1.0, 0.0, -1.0] { ledger.record("a", score: score) }
        #expect(ledger.records["a"] == TrustLedger.Record(trust: -0.25, updates: 3)) // (1 / 2) / 2 - 1 / 2
        for score in [1.0, 0.0, -1.0, 2.0] { ledger.record("m", score: score, weight: 0) }
        #expect(abs(ledger.records["m"]!.trust - 0.5) < 1e-12 && ledger.records["m"]!.updates == 4)
    }

    @Test func withoutServerDirectionsNobodyIsTrusted() {
        var aggregator = UpdateAggregator(shardRanges: ranges, settings: AggregationSettings(rule: .trust))
        aggregator.add(delta: [1, 1, 0, 0], shards: [0, 1], weight: 1, client: "a")
        var generator = SeededGenerator(seed: 1)
        let (delta, outcome) = aggregator.finish(generator: &generator)
        #expect(delta == nil && outcome.untrusted == [0])
    }
}

/// HeteroFL's rule: a weight is averaged over the updates that carry it.
@Suite struct PartialCoverageTests {
    @Test func eachPlaceIsAveragedOverTheUpdatesThatCoverIt() throws {
        var aggregator = UpdateAggregator(shardRanges: [0..<4, 4..<6], settings: AggregationSettings())
        #expect(aggregator.supportsPartialUpdates)
        aggregator.add(delta: [1, 1, 1, 1, 1, 1], shards: [0, 1], weight: 1)
        aggregator.add(delta: [3, 0, 3, 0, 0, 3], shards: [0, 1], weight: 3, positions: [0, 2, 5])
        aggregator.add(delta: [5, 0, 0, 0, 0, 0], shards: [0, 1], weight: 1, positions: [0])
        var generator = SeededGenerator(seed: 1)
        let mean = try #require(aggregator.finish(generator: &generator).delta)
        // Place 0: (1·1 + 3·3 + 1·5) / 5; places 2 and 5: (1·1 + 3·3) / 4; the rest: 1.
        #expect(mean == [3, 1, 2.5, 1, 1, 2.5])
        #expect(!UpdateAggregator(shardRanges: [0..<4], settings: AggregationSettings(rule: .median)).supportsPartialUpdates)
    }
}
