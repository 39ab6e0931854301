/* Portable IEEE half <-> single conversion (bit-exact with F16C and ggml's scalar fallback), plus the
 * 64K-entry table that scalar kernels read scales through. */
#include <math.h>
#include <string.h>

#include "edgellm.h"

float el_fp16_table[1 << 16];

static inline float from_bits(uint32_t w) { float f; memcpy(&f, &w, 4); return f; }
static inline uint32_t to_bits(float f) { uint32_t w; memcpy(&w, &f, 4); return w; }

float el_fp16_to_fp32(el_fp16_t h) {
    const uint32_t w = (uint32_t)h << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    /* normal numbers: shift the exponent/mantissa into place and rescale by 2^-112 */
    const float normalized = from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    /* subnormals: use the float mantissa as a fixed-point adder */
    const float denormalized = from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t result = sign | (two_w < (1u << 27) ? to_bits(denormalized) : to_bits(normalized));
    return from_bits(result);
}

el_fp16_t el_fp32_to_fp16(float f) {
    /* round to nearest even through float addition at the right exponent */
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = to_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = from_bits((bias >> 1) + 0x07800000u) + base;
    const uint32_t bits = to_bits(base);
    const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = bits & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return (el_fp16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

void el_fp16_init_table(void) {
    for (uint32_t i = 0; i < (1u << 16); i++) el_fp16_table[i] = el_fp16_to_fp32((el_fp16_t)i);
}
