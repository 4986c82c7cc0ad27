import FedModel
import Foundation

/// How a per-device quantity is spread over the population, written as a string in scenario
/// files: `"1000"` (every device the same), `"uniform:200,2000"` (low, high) or
/// `"lognormal:1000,0.8"` (median and the standard deviation of its natural logarithm, a common
/// fit for device speeds and link rates).
public struct Distribution: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case constant(Double)
        case uniform(low: Double, high: Double)
        case logNormal(median: Double, sigma: Double)
    }

    public var kind: Kind

    public init(_ kind: Kind) { self.kind = kind }

    /// Parses the string form; every value must be positive and finite.
    public init(parsing text: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let parts = trimmed.split(separator: ":", maxSplits: 1).map(String.init)
        func numbers(_ s: String, count: Int) throws -> [Double] {
            let values = s.split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
            guard values.count == count, values.allSatisfy({ $0 != nil && $0!.isFinite && $0! > 0 }) else {
                throw ConfigurationError("distribution \"\(text)\": expected \(count) positive number\(count == 1 ? "" : "s")")
            }
            return values.map { $0! }
        }
        switch parts.count == 2 ? parts[0].lowercased() : "constant" {
        case "constant":
            kind = .constant(try numbers(parts.count == 2 ? parts[1] : trimmed, count: 1)[0])
        case "uniform":
            let v = try numbers(parts[1], count: 2)
            guard v[0] <= v[1] else { throw ConfigurationError("distribution \"\(text)\": low must not exceed high") }
            kind = .uniform(low: v[0], high: v[1])
        case "lognormal":
            let v = try numbers(parts[1], count: 2)
            kind = .logNormal(median: v[0], sigma: v[1])
        default:
            throw ConfigurationError("distribution \"\(text)\": expected a number, uniform:LOW,HIGH or lognormal:MEDIAN,SIGMA")
        }
    }

    public func sample(_ generator: inout SeededGenerator) -> Double {
        switch kind {
        case .constant(let v): return v
        case .uniform(let low, let high): return low + (high - low) * generator.nextUnit()
        case .logNormal(let median, let sigma): return median * exp(sigma * generator.nextGaussian())
        }
    }

    public var description: String {
        switch kind {
        case .constant(let v): return "\(v)"
        case .uniform(let low, let high): return "uniform:\(low),\(high)"
        case .logNormal(let median, let sigma): return "lognormal:\(median),\(sigma)"
        }
    }
}

/// The simulated population's devices, on a virtual clock: how fast each trains, how fast its
/// link is, how often it is online and how often it drops out mid-round, and how the server
/// copes (over-selection, a deadline). Times are computed, never measured, so a run's results
/// do not depend on the speed of the machine that simulates it.
public struct DeviceModel: Sendable, Equatable {
    /// Examples per second a device trains (one example through forward and backward).
    public var computeSpeed: Distribution?
    /// Link rates in megabits per second.
    public var uplinkMbps: Distribution?
    public var downlinkMbps: Distribution?
    /// Chance that a device is online (selectable) in a given round.
    public var availability = 1.0
    /// Chance that a selected device drops out before delivering its update.
    public var dropout = 0.0
    /// The server selects ⌈clients_per_round × over_selection⌉ and keeps the first
    /// clients_per_round updates to arrive.
    public var overSelection = 1.0
    /// Simulated seconds after which a round closes (0 = wait for every selected device).
    public var roundDeadline = 0.0

    public init() {}

    /// Whether device times are simulated at all (a speed or a link rate is configured).
    public var hasClock: Bool { computeSpeed != nil || uplinkMbps != nil || downlinkMbps != nil }

    func validate() throws {
        guard availability > 0, availability <= 1 else { throw ConfigurationError("availability must be in (0, 1], got \(availability)") }
        guard dropout >= 0, dropout < 1 else { throw ConfigurationError("dropout must be in [0, 1), got \(dropout)") }
        guard overSelection >= 1, overSelection <= 10 else { throw ConfigurationError("over_selection must be in [1, 10], got \(overSelection)") }
        guard roundDeadline >= 0, roundDeadline.isFinite else { throw ConfigurationError("round_deadline must be non-negative, got \(roundDeadline)") }
        guard roundDeadline == 0 || hasClock else {
            throw ConfigurationError("round_deadline is in simulated seconds: set compute_speed (and uplink_mbps, downlink_mbps) too")
        }
    }

    /// One device's fixed properties, drawn once from the run's seed.
    struct Profile {
        var examplesPerSecond: Double
        var uplinkBytesPerSecond: Double
        var downlinkBytesPerSecond: Double

        /// Simulated seconds from selection to the server holding the update.
        func seconds(downlinkBytes: Int, examples: Int, uplinkBytes: Int) -> Double {
            Double(downlinkBytes) / downlinkBytesPerSecond + Double(examples) / examplesPerSecond
                + Double(uplinkBytes) / uplinkBytesPerSecond
        }
    }

    func profile(client: Int, seed: UInt64) -> Profile {
        var generator = SeededGenerator(seed: seed, stream: 0xDE71CE, UInt64(client))
        let speed = computeSpeed?.sample(&generator) ?? .infinity
        let up = uplinkMbps?.sample(&generator) ?? .infinity
        let down = downlinkMbps?.sample(&generator) ?? .infinity
        return Profile(examplesPerSecond: speed, uplinkBytesPerSecond: up * 125_000, downlinkBytesPerSecond: down * 125_000)
    }

    /// Whether `client` is online in `round`.
    func isAvailable(client: Int, round: Int, seed: UInt64) -> Bool {
        guard availability < 1 else { return true }
        var generator = SeededGenerator(seed: seed, stream: 0xA7A1, UInt64(round), UInt64(client))
        return generator.nextUnit() < availability
    }

    /// Whether `client`, selected in `round`, drops out before its update arrives.
    func dropsOut(client: Int, round: Int, seed: UInt64) -> Bool {
        guard dropout > 0 else { return false }
        var generator = SeededGenerator(seed: seed, stream: 0xD809, UInt64(round), UInt64(client))
        return generator.nextUnit() < dropout
    }
}
