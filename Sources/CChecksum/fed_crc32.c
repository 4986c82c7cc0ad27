// CRC-32 by folding with carry-less multiplication (Gopal et al., "Fast CRC Computation for
// Generic Polynomials Using PCLMULQDQ Instruction", Intel, 2009), for the bit-reflected
// polynomial 0xEDB88320. Four 128-bit lanes are folded forward 512 bits at a time (sixteen
// lanes 2048 bits at a time first, where VPCLMULQDQ and AVX-512 exist), then into one lane; that lane's CRC is taken with zlib over its 16 bytes, and zlib finishes the tail.
// The folding constants are x^e mod P(x), bit-reflected and shifted left by one (33 bits);
// ChecksumTests recomputes them and checks every length and alignment against zlib.
#include "fed_crc32.h"
#include <zlib.h>

#if defined(__x86_64__) && defined(__PCLMUL__) && defined(__SSE4_1__)
#include <immintrin.h>

static inline __m128i fold(__m128i x, __m128i k) {
    __m128i low = _mm_clmulepi64_si128(x, k, 0x00);   // x.low64 * k.low64
    __m128i high = _mm_clmulepi64_si128(x, k, 0x11);  // x.high64 * k.high64
    return _mm_xor_si128(low, high);
}

static inline __m128i load(const unsigned char *p) { return _mm_loadu_si128((const __m128i *)p); }

#if defined(__VPCLMULQDQ__) && defined(__AVX512F__)
// The same fold on four 128-bit lanes at once (VPCLMULQDQ).
static inline __m512i fold512(__m512i x, __m512i k) {
    return _mm512_xor_si512(_mm512_clmulepi64_epi128(x, k, 0x00), _mm512_clmulepi64_epi128(x, k, 0x11));
}

static inline __m512i load512(const unsigned char *p) { return _mm512_loadu_si512((const void *)p); }
#endif

uint32_t fed_crc32(uint32_t crc, const unsigned char *buffer, size_t length) {
    if (length < 256) return (uint32_t)crc32(crc, buffer, (uInt)length);
    // x^(512+32), x^(512-32): four lanes forward; x^(128+32), x^(128-32): one lane forward.
    const __m128i fold4 = _mm_set_epi64x(0x1c6e41596, 0x154442bd4);
    const __m128i fold1 = _mm_set_epi64x(0x0ccaa009e, 0x1751997d0);
    __m128i x0, x1, x2, x3;
    const unsigned char *p;
    size_t left;
#if defined(__VPCLMULQDQ__) && defined(__AVX512F__)
    if (length >= 512) {
        // Sixteen lanes in four 512-bit registers, folded forward 2048 bits at a time, then
        // into the first register (512 bits at a time): its four lanes are x0...x3 below.
        const __m512i fold16 = _mm512_broadcast_i32x4(_mm_set_epi64x(0x1322d1430, 0x11542778a));
        const __m512i fold4wide = _mm512_broadcast_i32x4(fold4);
        __m512i z0 = _mm512_xor_si512(load512(buffer), _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)~crc)));
        __m512i z1 = load512(buffer + 64), z2 = load512(buffer + 128), z3 = load512(buffer + 192);
        p = buffer + 256;
        left = length - 256;
        while (left >= 256) {
            z0 = _mm512_xor_si512(fold512(z0, fold16), load512(p));
            z1 = _mm512_xor_si512(fold512(z1, fold16), load512(p + 64));
            z2 = _mm512_xor_si512(fold512(z2, fold16), load512(p + 128));
            z3 = _mm512_xor_si512(fold512(z3, fold16), load512(p + 192));
            p += 256;
            left -= 256;
        }
        z0 = _mm512_xor_si512(fold512(z0, fold4wide), z1);
        z0 = _mm512_xor_si512(fold512(z0, fold4wide), z2);
        z0 = _mm512_xor_si512(fold512(z0, fold4wide), z3);
        x0 = _mm512_extracti32x4_epi32(z0, 0);
        x1 = _mm512_extracti32x4_epi32(z0, 1);
        x2 = _mm512_extracti32x4_epi32(z0, 2);
        x3 = _mm512_extracti32x4_epi32(z0, 3);
    } else
#endif
    {
        x0 = _mm_xor_si128(load(buffer), _mm_cvtsi32_si128((int)~crc));
        x1 = load(buffer + 16), x2 = load(buffer + 32), x3 = load(buffer + 48);
        p = buffer + 64;
        left = length - 64;
    }
    while (left >= 64) {
        x0 = _mm_xor_si128(fold(x0, fold4), load(p));
        x1 = _mm_xor_si128(fold(x1, fold4), load(p + 16));
        x2 = _mm_xor_si128(fold(x2, fold4), load(p + 32));
        x3 = _mm_xor_si128(fold(x3, fold4), load(p + 48));
        p += 64;
        left -= 64;
    }
    x0 = _mm_xor_si128(fold(x0, fold1), x1);
    x0 = _mm_xor_si128(fold(x0, fold1), x2);
    x0 = _mm_xor_si128(fold(x0, fold1), x3);
    while (left >= 16) {
        x0 = _mm_xor_si128(fold(x0, fold1), load(p));
        p += 16;
        left -= 16;
    }
    // x0 is congruent to everything so far: its CRC register, from 0, is the running register.
    unsigned char lane[16];
    _mm_storeu_si128((__m128i *)lane, x0);
    uint32_t registerValue = ~(uint32_t)crc32(0xFFFFFFFFu, lane, 16);
    return (uint32_t)crc32(~registerValue, p, (uInt)left);
}

int fed_crc32_is_folded(void) { return 1; }
#else
uint32_t fed_crc32(uint32_t crc, const unsigned char *buffer, size_t length) {
    return (uint32_t)crc32(crc, buffer, (uInt)length);
}

int fed_crc32_is_folded(void) { return 0; }
#endif
