import Dispatch

/// Carries a value across a concurrency boundary the compiler cannot check. Only for
/// data whose disjoint use by each worker is guaranteed by the caller.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
}

/// Runs `body(i)` for i in 0..<iterations on the cores, returning when all are done.
/// The body must only write to memory that no other iteration touches.
public func parallelFor(_ iterations: Int, _ body: (Int) -> Void) {
    if iterations == 1 {
        body(0)
        return
    }
    withoutActuallyEscaping(body) { body in
        let box = UncheckedSendable(value: body)
        DispatchQueue.concurrentPerform(iterations: iterations) { box.value($0) }
    }
}

/// Cores available to this process.
public var availableCores: Int { max(1, ProcessInfo.processInfo.activeProcessorCount) }

import Foundation

/// Calls `body` with contiguous sub-ranges of 0..<count, one per thread (or once, whole,
/// when `threads` is 1 or there is too little to share).
public func forEachBatchChunk(_ count: Int, threads: Int, _ body: (Range<Int>) -> Void) {
    let parts = min(threads, count)
    if parts <= 1 {
        body(0..<count)
        return
    }
    parallelFor(parts) { p in
        body((count * p / parts)..<(count * (p + 1) / parts))
    }
}
