#ifndef FED_CRC32_H
#define FED_CRC32_H
#include <stddef.h>
#include <stdint.h>

/// CRC-32 (ISO-HDLC, the zlib and PNG polynomial), continuing from `crc` exactly like zlib's
/// `crc32(crc, buffer, length)` (start with 0). Folds 64 bytes at a time with carry-less
/// multiplication where the CPU has it (x86-64 PCLMULQDQ), otherwise calls zlib.
uint32_t fed_crc32(uint32_t crc, const unsigned char *buffer, size_t length);

/// Whether ``fed_crc32`` uses carry-less multiplication in this build.
int fed_crc32_is_folded(void);
#endif
