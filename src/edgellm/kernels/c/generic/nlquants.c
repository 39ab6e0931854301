/* Portable C kernels for edgellm's non-linear 2-, 3- and 4-bit formats (Q2_NL, Q3_NL, Q4_NL): dot products
 * against Q8_0 activations and row dequantization. The grids and the scale table live here; every ISA path
 * uses the same values. */
#include <math.h>
#include <string.h>

#include "../edgellm.h"

/* Levels (16, 8 and 4), outermost 127, from importance-weighted Lloyd iterations over calibrated LLM weight
 * blocks (formats/quants.py says how): the weights that matter most are often small within their block, so
 * the inner levels sit nearer zero than a Gaussian's Lloyd-Max levels would. */
const int8_t el_grid_q4_nl[16] = {-127, -101, -77, -59, -44, -29, -16, -4, 4, 16, 29, 44, 59, 77, 101, 127};
const int8_t el_grid_q3_nl[16] = {-127, -72, -35, -9, 9, 35, 72, 127};
const int8_t el_grid_q2_nl[16] = {-127, -23, 23, 127};
float el_nl_scale[256];

void el_nl_init_scales(void) {
    el_nl_scale[0] = 0.0f;
    for (int e = 1; e < 256; e++) el_nl_scale[e] = (float)exp2((e - 192) / 8.0);
}

static inline int code_low(const uint8_t *qs, int j) { return (qs[j % 8] >> (2 * (j / 8))) & 3; }

static inline int code_q3(const block_q3_nl *b, int j) {
    return code_low(b->qs, j) | (((b->qh[j / 8] >> (j % 8)) & 1) << 2);
}

static inline int code_q4(const block_q4_nl *b, int j) { return j < 16 ? b->qs[j] & 0xF : b->qs[j - 16] >> 4; }

#define NL_DOT(name, block_t, value)                                                                   \
    static void dot_##name(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) { \
        const block_t *x = w;                                                                          \
        for (int c = 0; c < nc; c++) {                                                                 \
            const block_q8_0 *q = (const void *)((const char *)y + (size_t)c * by);                    \
            float sumf = 0.0f;                                                                         \
            for (int i = 0; i < n / QK_NL; i++) {                                                      \
                int sumi = 0;                                                                          \
                for (int j = 0; j < QK_NL; j++) sumi += (value) * q[i].qs[j];                          \
                sumf += (float)sumi * el_nl_scale[x[i].e] * el_f16(q[i].d);                            \
            }                                                                                          \
            s[(size_t)c * bs] = sumf;                                                                  \
        }                                                                                              \
    }                                                                                                  \
    static void to_float_##name(const void *vx, float *y, int64_t k) {                                 \
        const block_t *x = vx;                                                                         \
        for (int64_t i = 0; i < k / QK_NL; i++, y += QK_NL) {                                          \
            const float d = el_nl_scale[x[i].e];                                                       \
            for (int j = 0; j < QK_NL; j++) y[j] = d * (value);                                        \
        }                                                                                              \
    }

NL_DOT(q4_nl, block_q4_nl, el_grid_q4_nl[code_q4(&x[i], j)])
NL_DOT(q3_nl, block_q3_nl, el_grid_q3_nl[code_q3(&x[i], j)])
NL_DOT(q2_nl, block_q2_nl, el_grid_q2_nl[code_low(x[i].qs, j)])

void el_register_generic_nlquants(el_type_traits *t) {
    t[EL_Q4_NL] = (el_type_traits){"Q4_NL", QK_NL, sizeof(block_q4_nl), EL_Q8_0, dot_q4_nl, NULL, to_float_q4_nl};
    t[EL_Q3_NL] = (el_type_traits){"Q3_NL", QK_NL, sizeof(block_q3_nl), EL_Q8_0, dot_q3_nl, NULL, to_float_q3_nl};
    t[EL_Q2_NL] = (el_type_traits){"Q2_NL", QK_NL, sizeof(block_q2_nl), EL_Q8_0, dot_q2_nl, NULL, to_float_q2_nl};
}
