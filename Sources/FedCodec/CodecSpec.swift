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
/// (configuration files, `fedsim --codec`, the training task on the wire); Protocol.md §8.2:
///
///     spec     = [ ( "topk:" FRACTION | "lowrank:" RANK ) "+" ] BASE { "+" OPTION }
///     FRACTION = decimal number in (0, 1], e.g. 0.01, 1e-3
///     RANK     = integer 1-1024: every weight matrix's delta as two rank-RANK factors (v4)
///     BASE     = "fp32" | "fp16" | "q8" | "q4" | "q2" | "sign"
///     OPTION   = "raw"        no zlib (zlib level 6 is applied otherwise)
///              | "z" LEVEL    zlib level 1-9
///              | "g" SIZE     group size 1-65536 (default 256); q8, q4, q2 and sign only
///              | "sr"         stochastic rounding; q8, q4 and q2 only
///              | "ef"         error feedback: what compression dropped is carried to the next round
///
/// Names are case-insensitive. Each option appears at most once; `raw` and `zN` conflict.
/// Anything else is refused with a message naming the option.
/// Examples: `q8`, `fp16+raw`, `topk:0.01+q8+ef`, `q4+g512+sr`, `lowrank:4+q8+ef`.
public struct CodecSpec: Sendable, Equatable, CustomStringConvertible {
    public var codec: ValueCodec
    /// Fraction of each shard's values kept by top-k sparsification (largest magnitudes), or nil.
    public var topK: Double?
    /// The rank of the low-rank factor coding of weight matrices (PowerSGD, ``LowRankFactors``),
    /// or nil. Only updates use it; a shard it does not shrink travels whole (Protocol.md §8.6).
    public var lowRank: Int?
    public var groupSize: Int
    public var rounding: Rounding
    /// zlib level, or nil for no compression.
    public var zlibLevel: Int?
    public var errorFeedback: Bool

    public static let defaultGroupSize = 256
    public static let groupSizes = 1...65_536
    public static let ranks = 1...1024

    public init(codec: ValueCodec, topK: Double? = nil, lowRank: Int? = nil, groupSize: Int = defaultGroupSize,
                rounding: Rounding = .nearest, zlibLevel: Int? = 6, errorFeedback: Bool = false) {
        precondition(topK == nil || lowRank == nil, "top-k and low rank do not combine")
        self.codec = codec
        self.topK = topK
        self.lowRank = lowRank
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
            let digits = parts[0].dropFirst(5)
            guard Self.isDecimal(digits), let fraction = Double(digits), fraction > 0, fraction <= 1 else {
                throw CodecError.spec("top-k fraction \"\(digits)\" in \"\(text)\" must be a decimal number in (0, 1]")
            }
            topK = fraction
            parts.removeFirst()
            guard !parts.isEmpty else { throw CodecError.spec("\"\(text)\" has top-k but no value codec (e.g. topk:0.01+q8)") }
        }
        var lowRank: Int?
        if parts[0].hasPrefix("lowrank:") {
            guard topK == nil else { throw CodecError.spec("\"\(text)\": top-k and low rank do not combine") }
            let digits = parts[0].dropFirst(8)
            guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let rank = Int(digits), Self.ranks.contains(rank) else {
                throw CodecError.spec("low rank \"\(digits)\" in \"\(text)\" must be an integer from 1 to 1024")
            }
            lowRank = rank
            parts.removeFirst()
            guard !parts.isEmpty else { throw CodecError.spec("\"\(text)\" has a low rank but no value codec (e.g. lowrank:4+q8)") }
            guard !parts[0].hasPrefix("topk:") else { throw CodecError.spec("\"\(text)\": top-k and low rank do not combine") }
        }
        guard let codec = ValueCodec.allCases.first(where: { $0.description == parts[0] }) else {
            throw CodecError.spec(parts[0].hasPrefix("lowrank:") ? "\"\(text)\": top-k and low rank do not combine"
                                  : "unknown codec \"\(parts[0])\" in \"\(text)\" (fp32, fp16, q8, q4, q2 or sign)")
        }
        self.init(codec: codec, topK: topK, lowRank: lowRank)
        var seen: Set<String> = []
        for option in parts.dropFirst() {
            let name = option.first.map { ["z", "g"].contains($0) && option.count > 1 && option.dropFirst().allSatisfy(\.isNumber) ? String($0) : option } ?? option
            guard seen.insert(name).inserted else {
                throw CodecError.spec("option \"\(option)\" in \"\(text)\" repeats an earlier \"\(name)\" option")
            }
            switch name {
            case "raw":
                guard !seen.contains("z") else { throw CodecError.spec("option \"raw\" in \"\(text)\" conflicts with a zlib level") }
                zlibLevel = nil
            case "z":
                guard !seen.contains("raw") else { throw CodecError.spec("option \"\(option)\" in \"\(text)\" conflicts with \"raw\"") }
                guard let level = Int(option.dropFirst()), (1...9).contains(level) else {
                    throw CodecError.spec("option \"\(option)\" in \"\(text)\": the zlib level is 1 to 9")
                }
                zlibLevel = level
            case "g":
                guard codec.bits != nil else {
                    throw CodecError.spec("option \"\(option)\" in \"\(text)\": \(codec) has no groups (q8, q4, q2 and sign do)")
                }
                guard let size = Int(option.dropFirst()), Self.groupSizes.contains(size) else {
                    throw CodecError.spec("option \"\(option)\" in \"\(text)\": the group size is 1 to 65536")
                }
                groupSize = size
            case "sr":
                guard codec == .q8 || codec == .q4 || codec == .q2 else {
                    throw CodecError.spec("option \"sr\" in \"\(text)\": stochastic rounding applies to q8, q4 and q2 only")
                }
                rounding = .stochastic
            case "ef":
                errorFeedback = true
            default:
                throw CodecError.spec("unknown option \"\(option)\" in codec spec \"\(text)\" (raw, z1-z9, g1-g65536, sr, ef)")
            }
        }
    }

    /// Digits with at most one point and an optional exponent: what `Double.description` prints
    /// for a fraction (0.01, 1e-05), and nothing Swift alone would read (hex floats, "nan").
    private static func isDecimal(_ text: Substring) -> Bool {
        var mantissa = text, exponent: Substring?
        if let e = text.firstIndex(of: "e") {
            mantissa = text[..<e]
            exponent = text[text.index(after: e)...]
        }
        let parts = mantissa.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), parts.contains(where: { !$0.isEmpty }),
              parts.allSatisfy({ $0.allSatisfy { $0.isASCII && $0.isNumber } }) else { return false }
        guard var exponent else { return true }
        if exponent.first == "-" || exponent.first == "+" { exponent = exponent.dropFirst() }
        return !exponent.isEmpty && exponent.allSatisfy { $0.isASCII && $0.isNumber }
    }

    public var description: String {
        var s = topK.map { "topk:\($0)+" } ?? lowRank.map { "lowrank:\($0)+" } ?? ""
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
    public var isLossless: Bool { codec == .fp32 && topK == nil && lowRank == nil }

    /// The rank a shard of `count` values with `columns` columns (its tensor's last dimension;
    /// nil for a vector) is factored at under this spec, or nil when it travels whole: r =
    /// min(rank, rows, columns), and only when the r·(rows + columns) factor values are fewer
    /// than the count (Protocol.md §8.6).
    public func factorRank(count: Int, columns: Int?) -> Int? {
        guard let lowRank, let columns, columns > 0, count % columns == 0 else { return nil }
        let rows = count / columns
        let r = min(lowRank, rows, columns)
        return r * (rows + columns) < count ? r : nil
    }

    /// Values a top-k shard of `n` values keeps: ⌈F·n⌉ (F·n in binary64), at least 1, at most n.
    public static func keptCount(of n: Int, fraction: Double) -> Int {
        min(n, max(1, Int((fraction * Double(n)).rounded(.up))))
    }

    /// Why an encoded shard's header does not follow this spec (Protocol.md §8.3: an UPDATE
    /// must use its task's codec), or nil when it does: the same value codec; sparse exactly
    /// when the spec has top-k, with at most ⌈F·n⌉ values; the spec's group size for the
    /// grouped codecs; the stochastic flag only with `sr`; no zlib with `raw`.
    ///
    /// `maskKeeps` is the number of positions a pruned shard keeps: its update may be sparse
    /// over them (or dense: the receiver drops what falls outside the mask).
    ///
    /// `factorRank` is the rank this shard must be factored at (``factorRank(count:columns:)``),
    /// nil when it must travel whole.
    public func nonconformance(of header: ShardCodec.Header, maskKeeps: Int? = nil, factorRank: Int? = nil) -> String? {
        guard header.codec == codec else { return "encoded with \(header.codec), the task asked for \(self)" }
        if header.rank != (factorRank ?? 0) {
            return factorRank.map { header.rank == 0 ? "whole, the task asked for rank-\($0) factors (\(self))" : "rank-\(header.rank) factors, the task asked for rank \($0)" }
                ?? "low-rank factors, the task asked for the whole shard"
        }
        if let topK {
            guard header.sparse else { return "dense, the task asked for top-k (\(self))" }
            let allowed = min(Self.keptCount(of: header.elementCount, fraction: topK), maskKeeps ?? Int.max)
            guard header.keptCount <= allowed else { return "keeps \(header.keptCount) values, the task's top-k\(maskKeeps == nil ? "" : " and pruning mask") allow\(maskKeeps == nil ? "s" : "") \(allowed)" }
        } else if header.sparse {
            guard let maskKeeps else { return "sparse, the task asked for a dense \(self)" }
            if header.isCodedOverMask, header.keptCount != maskKeeps { return "coded over a mask of \(header.keptCount) positions, the pruning mask keeps \(maskKeeps)" }
            guard header.keptCount <= maskKeeps else { return "keeps \(header.keptCount) values, the pruning mask keeps \(maskKeeps)" }
        }
        if codec.bits != nil, header.groupSize != groupSize {
            return "group size \(header.groupSize), the task asked for \(groupSize)"
        }
        if header.stochastic, rounding != .stochastic { return "stochastic rounding, the task did not ask for it (sr)" }
        if header.zlib, zlibLevel == nil { return "zlib-compressed, the task said raw" }
        return nil
    }
}

