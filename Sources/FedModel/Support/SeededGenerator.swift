/// A fast, seeded pseudo-random generator (xoshiro256**, seeded through SplitMix64).
///
/// Everything random in a run (initialisation, partitioning, client sampling, shuffling)
/// draws from one of these, derived from the run's seed, so the same seed gives the same run.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var s0: UInt64, s1: UInt64, s2: UInt64, s3: UInt64

    /// A generator for `seed`, further separated by `stream` (for example round and client),
    /// so independent streams never overlap in practice and do not depend on execution order.
    public init(seed: UInt64, stream: UInt64...) {
        var x = seed ^ 0x6A09_E667_F3BC_C908
        for value in stream {
            x = Self.splitMix(&x) ^ value &* 0x9E37_79B9_7F4A_7C15
        }
        s0 = Self.splitMix(&x)
        s1 = Self.splitMix(&x)
        s2 = Self.splitMix(&x)
        s3 = Self.splitMix(&x)
    }

    private static func splitMix(_ x: inout UInt64) -> UInt64 {
        x &+= 0x9E37_79B9_7F4A_7C15
        var z = x
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = (s3 << 45) | (s3 >> 19)
        return result
    }

    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Double {
        Double(next() >> 11) * 0x1.0p-53
    }

    /// Uniform in [low, high).
    public mutating func nextUniform(_ low: Float, _ high: Float) -> Float {
        low + (high - low) * Float(nextUnit())
    }

    /// Standard normal (Box-Muller).
    public mutating func nextGaussian() -> Double {
        var u = nextUnit()
        while u <= .leastNonzeroMagnitude { u = nextUnit() }
        let v = nextUnit()
        return (-2 * _log(u)).squareRoot() * _cos(2 * .pi * v)
    }

    /// Gamma(shape, 1) (Marsaglia and Tsang), used for Dirichlet draws.
    public mutating func nextGamma(shape: Double) -> Double {
        precondition(shape > 0, "gamma shape must be positive")
        if shape < 1 {
            let u = nextUnit()
            return nextGamma(shape: shape + 1) * _pow(max(u, .leastNonzeroMagnitude), 1 / shape)
        }
        let d = shape - 1.0 / 3.0
        let c = 1 / (9 * d).squareRoot()
        while true {
            var x: Double
            var v: Double
            repeat {
                x = nextGaussian()
                v = 1 + c * x
            } while v <= 0
            v = v * v * v
            let u = nextUnit()
            if u < 1 - 0.0331 * x * x * x * x { return d * v }
            if _log(u) < 0.5 * x * x + d * (1 - v + _log(v)) { return d * v }
        }
    }

    /// Shuffles `buffer` in place (Fisher-Yates).
    public mutating func shuffle<T>(_ buffer: UnsafeMutableBufferPointer<T>) {
        var i = buffer.count
        while i > 1 {
            let j = Int(next() % UInt64(i))
            i -= 1
            buffer.swapAt(i, j)
        }
    }
}

#if canImport(Glibc)
import Glibc
@inline(__always) func _log(_ x: Double) -> Double { Glibc.log(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Glibc.cos(x) }
@inline(__always) func _pow(_ x: Double, _ y: Double) -> Double { Glibc.pow(x, y) }
@inline(__always) func _expf(_ x: Float) -> Float { Glibc.expf(x) }
@inline(__always) func _logf(_ x: Float) -> Float { Glibc.logf(x) }
#else
import Darwin
@inline(__always) func _log(_ x: Double) -> Double { Darwin.log(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Darwin.cos(x) }
@inline(__always) func _pow(_ x: Double, _ y: Double) -> Double { Darwin.pow(x, y) }
@inline(__always) func _expf(_ x: Float) -> Float { Darwin.expf(x) }
@inline(__always) func _logf(_ x: Float) -> Float { Darwin.logf(x) }
#endif
