// fed_memory_hints.h is header-only (static inline functions Swift inlines); SwiftPM needs one source file per C target.
#include "fed_memory_hints.h"
