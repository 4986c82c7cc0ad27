#ifndef FED_MEMORY_HINTS_H
#define FED_MEMORY_HINTS_H

/// Asks the CPU to start loading the cache line at `address` into every cache level, for a
/// read soon. Swift has no prefetch of its own; the numeric kernels call this when they stream
/// a matrix too large for the cache in an order the hardware prefetcher does not follow.
static inline void fed_prefetch(const void *address) {
    __builtin_prefetch(address, 0, 3);
}

#endif
