/// The value encodings a shard can use.
public enum ValueCodec: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case fp32 = 0, fp16 = 1, q8 = 2, q4 = 3, q2 = 4, sign = 5

    /// Bits per quantized value for the integer codecs (1 for sign), nil for floats.
    public var bits: Int? {
        switch self {
        case .fp32, .fp16: nil
        case .q8: 8
        case .q4: 4
        case .q2: 2
        case .sign: 1
        }
    }

    public var description: String {
        switch self {
        case .fp32: "fp32"
        case .fp16: "fp16"
        case .q8: "q8"
        case .q4: "q4"
        case .q2: "q2"
        case .sign: "sign"
        }
    }
}

/// Rounding of quantized values: to nearest (|x − x̂| ≤ step/2) or stochastic (unbiased,
/// E[x̂] = x, drawn from a seeded generator so runs stay reproducible).
public enum Rounding: Sendable, Equatable {
    case nearest, stochastic
}

/// A complete description of how a delta is encoded, written as one string everywhere
/// (configuration files, `fedsim --codec`, the training task on the wire):
///
///     spec   = [ "topk:" FRACTION "+" ] BASE { "+" OPTION }
///     BASE   = "fp32" | "fp16" | "q8" | "q4" | "q2" | "sign"
///     OPTION = "raw"        no zlib (zlib level 6 is applied otherwise)
///            | "z" LEVEL    zlib level 1-9
///            | "g" SIZE     quantization group size (default 256), 8...65536
///            | "sr"         stochastic rounding
///            | "ef"         error feedback: what compression dropped is carried to the next round
///
/// Examples: `q8`, `fp16+raw`, `topk:0.01+q8+ef`, `q4+g512+sr`.
public struct CodecSpec: Sendable, Equatable, CustomStringConvertible {
    public var codec: ValueCodec
    /// Fraction of each shard's values kept by top-k sparsification (largest magnitudes), or nil.
    public var topK: Double?
    public var groupSize: Int
    public var rounding: Rounding
    /// zlib level, or nil for no compression.
    public var zlibLevel: Int?
    public var errorFeedback: Bool

    public static let defaultGroupSize = 256

    public init(codec: ValueCodec, topK: Double? = nil, groupSize: Int = defaultGroupSize,
                rounding: Rounding = .nearest, zlibLevel: Int? = 6, errorFeedback: Bool = false) {
        self.codec = codec
        self.topK = topK
        self.groupSize = groupSize
        self.rounding = rounding
        self.zlibLevel = zlibLevel
        self.errorFeedback = errorFeedback
    }

    public init(parsing text: String) throws {
        var parts = text.lowercased().split(separator: "+", omittingEmptySubsequences: false).map(String.init)
        guard !parts.isEmpty, !parts.contains(where: \.isEmpty) else { throw CodecError.spec("empty part in codec spec \"\(text)\"") }
        var topK: Double?
        if parts[0].hasPrefix("topk:") {
            guard let fraction = Double(parts[0].dropFirst(5)), fraction > 0, fraction <= 1 else {
                throw CodecError.spec("top-k fraction in \"\(text)\" must be in (0, 1]")
            }
            topK = fraction
            parts.removeFirst()
            guard !parts.isEmpty else { throw CodecError.spec("\"\(text)\" has top-k but no value codec (e.g. topk:0.01+q8)") }
        }
        guard let codec = ValueCodec.allCases.first(where: { $0.description == parts[0] }) else {
            throw CodecError.spec("unknown codec \"\(parts[0])\" in \"\(text)\" (fp32, fp16, q8, q4, q2 or sign)")
        }
        self.init(codec: codec, topK: topK)
        for option in parts.dropFirst() {
            switch option {
            case "raw": zlibLevel = nil
            case "sr": rounding = .stochastic
            case "ef": errorFeedback = true
            default:
                if option.hasPrefix("z"), let level = Int(option.dropFirst()), (1...9).contains(level) {
                    zlibLevel = level
                } else if option.hasPrefix("g"), let size = Int(option.dropFirst()), (8...65_536).contains(size) {
                    groupSize = size
                } else {
                    throw CodecError.spec("unknown option \"\(option)\" in codec spec \"\(text)\" (raw, zN, gN, sr, ef)")
                }
            }
        }
    }

    public var description: String {
        var s = topK.map { "topk:\($0)+" } ?? ""
        s += codec.description
        if groupSize != Self.defaultGroupSize { s += "+g\(groupSize)" }
        if rounding == .stochastic { s += "+sr" }
        if errorFeedback { s += "+ef" }
        switch zlibLevel {
        case nil: s += "+raw"
        case 6?: break
        case let level?: s += "+z\(level)"
        }
        return s
    }

    /// True when decoding gives back exactly what was encoded (fp32, dense).
    public var isLossless: Bool { codec == .fp32 && topK == nil }
}
