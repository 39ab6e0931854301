/* Portable C kernels for the k-quants (Q2_K..Q6_K) against Q8_K activations.
 *
 * A k-quant super-block holds 256 weights in sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or 32 (Q4_K, Q5_K), each with
 * a small integer scale (and, for Q2_K/Q4_K/Q5_K, a min) that the block's fp16 d (and dmin) scale:
 *     w = d * scale[s] * q - dmin * min[s]        (q: the integer quant of weight w, in sub-block s)
 * Each format has one unpack function that decodes a super-block into that common form (kq_block); the dot
 * product and the dequantizer are shared. Layouts (bit positions) follow ggml-common.h and are documented in
 * edgellm.formats.quants, whose dequantize is the spec: to_float here is bit-exact with it.
 *
 * The dot product is ggml's ggml_vec_dot_qX_K_q8_K_generic math: per super-block an int32 sum of
 * scale[s] * sum(q * q8) over sub-blocks, and for formats with mins an int32 sum(min[s] * bsums) taken from the
 * Q8_K block sums, combined in float as (y.d * d) * isum - (y.d * dmin) * summs.
 */
#include <string.h>

#include "../edgellm.h"

/* One super-block decoded: quants with any offset applied (Q3_K: q - 4, Q6_K: q - 32), per sub-block scale and
 * min (0 for formats without mins), and the float block scales. */
typedef struct {
    int sub;            /* weights per sub-block: 16 or 32 */
    int8_t q[QK_K];
    int scale[QK_K / 16];
    int min[QK_K / 16];
    float d, dmin;
} kq_block;

/* ---- unpacking, one per format ---- */

/* Q2_K: 16 sub-blocks of 16; scales[s] = scale | min << 4; 2-bit q, weight 128h + 32j + l is bits 2j..2j+1 of
 * qs[32h + l]. */
static void unpack_q2_K(const block_q2_K *x, kq_block *b) {
    b->sub = 16;
    b->d = el_f16(x->d);
    b->dmin = el_f16(x->dmin);
    for (int s = 0; s < QK_K / 16; s++) {
        b->scale[s] = x->scales[s] & 0x0F;
        b->min[s] = x->scales[s] >> 4;
    }
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) b->q[128 * h + 32 * j + l] = (x->qs[32 * h + l] >> (2 * j)) & 3;
}

/* Q3_K scale s (6 bits, stored + 32): low 4 bits in nibble s / 8 of byte s % 8, high 2 bits at bit 2 * (s / 4)
 * of byte 8 + s % 4. */
static inline int q3_K_scale(const uint8_t *sc, int s) {
    const int low = (sc[s % 8] >> (4 * (s / 8))) & 0x0F;
    const int high = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
    return (low | (high << 4)) - 32;
}

/* Q3_K: 16 sub-blocks of 16, no mins; q = (low 2 bits as Q2_K) | (bit 4h + j of hmask[l]) << 2, minus 4. */
static void unpack_q3_K(const block_q3_K *x, kq_block *b) {
    b->sub = 16;
    b->d = el_f16(x->d);
    b->dmin = 0.0f;
    for (int s = 0; s < QK_K / 16; s++) {
        b->scale[s] = q3_K_scale(x->scales, s);
        b->min[s] = 0;
    }
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) {
                const int low = (x->qs[32 * h + l] >> (2 * j)) & 3;
                const int high = (x->hmask[l] >> (4 * h + j)) & 1;
                b->q[128 * h + 32 * j + l] = (int8_t)((low | (high << 2)) - 4);
            }
}

/* Q4_K/Q5_K: 8 6-bit scales and 8 6-bit mins packed in 12 bytes (ggml's get_scale_min_k4).
 *   bytes 0..3: scale 0..3 in bits 0..5; bytes 4..7: min 0..3 in bits 0..5; their bits 6..7 are bits 4..5 of
 *   scale/min 4..7, whose bits 0..3 are the low/high nibble of bytes 8..11. */
static inline void get_scale_min_k4(int j, const uint8_t *q, int *scale, int *min) {
    if (j < 4) {
        *scale = q[j] & 63;
        *min = q[j + 4] & 63;
    } else {
        *scale = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
        *min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* Q4_K: 8 sub-blocks of 32; 4-bit q, weight 64h + 32k + l is nibble k of qs[32h + l]. */
static void unpack_q4_K(const block_q4_K *x, kq_block *b) {
    b->sub = 32;
    b->d = el_f16(x->d);
    b->dmin = el_f16(x->dmin);
    for (int s = 0; s < QK_K / 32; s++) get_scale_min_k4(s, x->scales, &b->scale[s], &b->min[s]);
    for (int h = 0; h < 4; h++)
        for (int l = 0; l < 32; l++) {
            b->q[64 * h + l] = x->qs[32 * h + l] & 0x0F;
            b->q[64 * h + 32 + l] = x->qs[32 * h + l] >> 4;
        }
}

/* Q5_K: as Q4_K, plus bit 4 of q: weight 32s + l is bit s of qh[l]. */
static void unpack_q5_K(const block_q5_K *x, kq_block *b) {
    b->sub = 32;
    b->d = el_f16(x->d);
    b->dmin = el_f16(x->dmin);
    for (int s = 0; s < QK_K / 32; s++) get_scale_min_k4(s, x->scales, &b->scale[s], &b->min[s]);
    for (int h = 0; h < 4; h++)
        for (int l = 0; l < 32; l++) {
            const int lo = 64 * h + l, hi = lo + 32; /* sub-blocks 2h and 2h + 1 */
            b->q[lo] = (int8_t)((x->qs[32 * h + l] & 0x0F) | (((x->qh[l] >> (2 * h)) & 1) << 4));
            b->q[hi] = (int8_t)((x->qs[32 * h + l] >> 4) | (((x->qh[l] >> (2 * h + 1)) & 1) << 4));
        }
}

/* Q6_K: 16 sub-blocks of 16, int8 scales, no mins; q - 32 with q's weight 128h + 32j + l (j < 4) taking
 * bits 0..3 from nibble j / 2 of ql[64h + 32(j % 2) + l] and bits 4..5 from bits 2j..2j+1 of qh[32h + l]. */
static void unpack_q6_K(const block_q6_K *x, kq_block *b) {
    b->sub = 16;
    b->d = el_f16(x->d);
    b->dmin = 0.0f;
    for (int s = 0; s < QK_K / 16; s++) {
        b->scale[s] = x->scales[s];
        b->min[s] = 0;
    }
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) {
                const int low = (x->ql[64 * h + 32 * (j % 2) + l] >> (4 * (j / 2))) & 0x0F;
                const int high = (x->qh[32 * h + l] >> (2 * j)) & 3;
                b->q[128 * h + 32 * j + l] = (int8_t)((low | (high << 4)) - 32);
            }
}

/* ---- shared dot product and dequantizer ---- */

/* dot(w block, y block): int32 sums (|isum| < 2^27 for every format), scales applied once per super-block. */
static inline float kq_dot(const kq_block *b, const block_q8_K *y) {
    int isum = 0, summs = 0;
    for (int s = 0; s < QK_K / b->sub; s++) {
        const int8_t *q = b->q + s * b->sub, *q8 = y->qs + s * b->sub;
        int sumi = 0;
        for (int l = 0; l < b->sub; l++) sumi += q[l] * q8[l];
        isum += b->scale[s] * sumi;
    }
    /* sum over the block of min * q8, from the Q8_K sums of 16 (all zero for the formats without mins) */
    for (int j = 0; j < QK_K / 16; j++) summs += b->min[j * 16 / b->sub] * y->bsums[j];
    return (y->d * b->d) * (float)isum - (y->d * b->dmin) * (float)summs;
}

/* Same float operations, in the same order, as the NumPy reference: dl = d * scale, ml = dmin * min,
 * w = dl * q - ml. Formats without mins have ml = +0, and x - (+0) == x bit for bit, so w = dl * q as there. */
static inline void kq_to_float(const kq_block *b, float *y) {
    for (int s = 0; s < QK_K / b->sub; s++) {
        const float dl = b->d * (float)b->scale[s], ml = b->dmin * (float)b->min[s];
        for (int l = 0; l < b->sub; l++) y[s * b->sub + l] = dl * (float)b->q[s * b->sub + l] - ml;
    }
}

/* ---- per-format kernels: one weight row against nc activation rows, and row dequantizers ---- */

#define FOR_EACH_ROW(body)                                                     \
    for (int c = 0; c < nc; c++) {                                             \
        const void *yc = (const char *)y + (size_t)c * by;                     \
        float sumf = 0.0f;                                                     \
        body;                                                                  \
        s[(size_t)c * bs] = sumf;                                              \
    }

#define DEFINE_KQUANT(name)                                                                          \
    static void dot_##name(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) { \
        const block_##name *x = w;                                                                   \
        kq_block b;                                                                                  \
        FOR_EACH_ROW({                                                                               \
            const block_q8_K *q = yc;                                                                \
            for (int i = 0; i < n / QK_K; i++) {                                                     \
                unpack_##name(&x[i], &b);                                                            \
                sumf += kq_dot(&b, &q[i]);                                                           \
            }                                                                                        \
        })                                                                                           \
    }                                                                                                \
    static void to_float_##name(const void *vx, float *y, int64_t k) {                              \
        const block_##name *x = vx;                                                                  \
        kq_block b;                                                                                  \
        for (int64_t i = 0; i < k / QK_K; i++, y += QK_K) {                                          \
            unpack_##name(&x[i], &b);                                                                \
            kq_to_float(&b, y);                                                                      \
        }                                                                                            \
    }

DEFINE_KQUANT(q2_K)
DEFINE_KQUANT(q3_K)
DEFINE_KQUANT(q4_K)
DEFINE_KQUANT(q5_K)
DEFINE_KQUANT(q6_K)

void el_register_generic_kquants(el_type_traits *t) {
    t[EL_Q2_K] = (el_type_traits){"Q2_K", QK_K, sizeof(block_q2_K), EL_Q8_K, dot_q2_K, NULL, to_float_q2_K};
    t[EL_Q3_K] = (el_type_traits){"Q3_K", QK_K, sizeof(block_q3_K), EL_Q8_K, dot_q3_K, NULL, to_float_q3_K};
    t[EL_Q4_K] = (el_type_traits){"Q4_K", QK_K, sizeof(block_q4_K), EL_Q8_K, dot_q4_K, NULL, to_float_q4_K};
    t[EL_Q5_K] = (el_type_traits){"Q5_K", QK_K, sizeof(block_q5_K), EL_Q8_K, dot_q5_K, NULL, to_float_q5_K};
    t[EL_Q6_K] = (el_type_traits){"Q6_K", QK_K, sizeof(block_q6_K), EL_Q8_K, dot_q6_K, NULL, to_float_q6_K};
}
