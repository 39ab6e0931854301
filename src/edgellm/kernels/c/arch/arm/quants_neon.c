/* NEON kernels (AArch64): activation quantizers Q8_0/Q8_1, dot products Q4_0, Q4_1, Q5_0, Q8_0 (vs Q8_0/Q8_1),
 * Q4_K and Q6_K (vs Q8_K), and attention's scores and P V over F32 / F16 cache rows. The math is ggml's (ggml-cpu/arch/arm/quants.c); products of 16 int8 pairs go through
 * vdotq_s32 when the compiler targets +dotprod, else vmull_s8 + vpadalq_s16 (baseline armv8-a).
 *
 * Every dot unpacks a weight block once into int8 vectors and reuses it for up to 4 activation rows (the
 * matmul token tile), accumulating each row in its own float32x4 vector. Integer sums per block are exact, so
 * results differ from the generic kernels only by float summation order. The quantizers are bit-exact with
 * the generic ones: same float ops, and vcvtaq (ties away from zero) matches roundf. */
#include "../../edgellm.h"

#if defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>

#define NC_TILE 4 /* activation rows handled per weight-block unpack */

/* acc += the 16 products a_i * b_i, summed in groups of 4 lanes */
static inline int32x4_t el_dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    const int16x8_t p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t p1 = vmull_high_s8(a, b);
    return vpadalq_s16(vpadalq_s16(acc, p0), p1);
#endif
}

/* ---- activation quantizers ---- */

/* scale, and the 32 values rounded half away from zero to int8 (as the generic roundf) */
static inline float quantize_32(const float *x, int8_t *qs, int32_t *sum) {
    float32x4_t v[8];
    float32x4_t amax = vdupq_n_f32(0.0f);
    for (int j = 0; j < 8; j++) {
        v[j] = vld1q_f32(x + 4 * j);
        amax = vmaxq_f32(amax, vabsq_f32(v[j]));
    }
    const float d = vmaxvq_f32(amax) / 127.0f, id = d ? 1.0f / d : 0.0f;
    int32x4_t acc = vdupq_n_s32(0);
    for (int j = 0; j < 8; j += 2) {
        const int32x4_t a = vcvtaq_s32_f32(vmulq_n_f32(v[j], id));
        const int32x4_t b = vcvtaq_s32_f32(vmulq_n_f32(v[j + 1], id));
        acc = vaddq_s32(acc, vaddq_s32(a, b));
        const int16x8_t ab = vcombine_s16(vmovn_s32(a), vmovn_s32(b));
        vst1_s8(qs + 4 * j, vmovn_s16(ab));
    }
    if (sum) *sum = vaddvq_s32(acc);
    return d;
}

static void quantize_row_q8_0_neon(const float *x, void *vy, int64_t k) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < k / QK8_0; i++, x += QK8_0) {
        int8_t qs[QK8_0];
        const float d = quantize_32(x, qs, NULL);
        y[i].d = el_fp32_to_fp16(d);
        memcpy(y[i].qs, qs, sizeof(qs));
    }
}

static void quantize_row_q8_1_neon(const float *x, void *vy, int64_t k) {
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < k / QK8_1; i++, x += QK8_1) {
        int8_t qs[QK8_1];
        int32_t sum;
        const float d = quantize_32(x, qs, &sum);
        memcpy(y[i].qs, qs, sizeof(qs));
        y[i].d = el_fp32_to_fp16(d);
        y[i].s = el_fp32_to_fp16(d * (float)sum);
    }
}

/* ---- legacy 32-weight formats ---- */

/* The 32-weight formats share one loop: UNPACK(i) sets int8x16_t w0 (weights 0..15) and w1 (16..31) of block i
 * and float dx; BODY(q) adds one activation block's contribution into sumv[r]. */
#define LEGACY_DOT(WTYPE, YTYPE, QK, UNPACK, BODY)                                                      \
    const WTYPE *x = w;                                                                                \
    const int nb = n / (QK);                                                                           \
    for (int c0 = 0; c0 < nc; c0 += NC_TILE) {                                                         \
        const int nr = nc - c0 < NC_TILE ? nc - c0 : NC_TILE;                                          \
        const YTYPE *yr[NC_TILE];                                                                      \
        float32x4_t sumv[NC_TILE];                                                                     \
        float summ[NC_TILE];                                                                           \
        for (int r = 0; r < nr; r++) {                                                                 \
            yr[r] = (const YTYPE *)((const char *)y + (size_t)(c0 + r) * by);                          \
            sumv[r] = vdupq_n_f32(0.0f);                                                               \
            summ[r] = 0.0f;                                                                            \
        }                                                                                              \
        for (int i = 0; i < nb; i++) {                                                                 \
            int8x16_t w0, w1;                                                                          \
            float dx;                                                                                  \
            UNPACK;                                                                                    \
            for (int r = 0; r < nr; r++) {                                                             \
                const YTYPE *q = &yr[r][i];                                                            \
                int32x4_t acc = el_dot16(vdupq_n_s32(0), w0, vld1q_s8(q->qs));                         \
                acc = el_dot16(acc, w1, vld1q_s8(q->qs + 16));                                         \
                sumv[r] = vmlaq_n_f32(sumv[r], vcvtq_f32_s32(acc), dx * el_f16(q->d));                 \
                BODY;                                                                                  \
            }                                                                                          \
        }                                                                                              \
        for (int r = 0; r < nr; r++) s[(size_t)(c0 + r) * bs] = vaddvq_f32(sumv[r]) + summ[r];         \
    }

static void dot_q8_0_neon(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    LEGACY_DOT(block_q8_0, block_q8_0, QK8_0,
               {
                   w0 = vld1q_s8(x[i].qs);
                   w1 = vld1q_s8(x[i].qs + 16);
                   dx = el_f16(x[i].d);
               },
               (void)0)
}

static void dot_q4_0_neon(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const int8x16_t s8 = vdupq_n_s8(8);
    LEGACY_DOT(block_q4_0, block_q8_0, QK4_0,
               {
                   const uint8x16_t b = vld1q_u8(x[i].qs);
                   w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, m4)), s8);
                   w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), s8);
                   dx = el_f16(x[i].d);
               },
               (void)0)
}

static void dot_q4_1_neon(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    LEGACY_DOT(block_q4_1, block_q8_1, QK4_1,
               {
                   const uint8x16_t b = vld1q_u8(x[i].qs);
                   w0 = vreinterpretq_s8_u8(vandq_u8(b, m4));
                   w1 = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
                   dx = el_f16(x[i].d);
               },
               summ[r] += el_f16(x[i].m) * el_f16(q->s))
}

/* 16 bytes, byte j = 0x10 if bit j of the 16-bit value (lo | hi << 8) is set, else 0 */
static inline uint8x16_t high_bits_16(uint8_t lo, uint8_t hi) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t v = vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi));
    return vandq_u8(vtstq_u8(v, vld1q_u8(bit)), vdupq_n_u8(0x10));
}

static void dot_q5_0_neon(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    const int8x16_t s16 = vdupq_n_s8(16);
    LEGACY_DOT(block_q5_0, block_q8_0, QK5_0,
               {
                   const uint8x16_t b = vld1q_u8(x[i].qs);
                   const uint8x16_t h0 = high_bits_16(x[i].qh[0], x[i].qh[1]);
                   const uint8x16_t h1 = high_bits_16(x[i].qh[2], x[i].qh[3]);
                   w0 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(b, m4), h0)), s16);
                   w1 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(b, 4), h1)), s16);
                   dx = el_f16(x[i].d);
               },
               (void)0)
}

/* ---- edgellm's NL formats: codes -> int8 weights by a table lookup (vqtbl1q), then as Q8_0 ---- */

static inline int8x16_t grid_table(const int8_t *grid) { return vld1q_s8(grid); } /* 16-byte tables (edgellm.h) */

/* 2-bit codes j = 0..15 and 16..31 of a block (code j: bits 2 * (j / 8) of qs[j % 8]) */
static inline void low2_codes(const uint8_t *qs, uint8x16_t *c0, uint8x16_t *c1) {
    const uint8x8_t b = vld1_u8(qs), m3 = vdup_n_u8(3);
    *c0 = vcombine_u8(vand_u8(b, m3), vand_u8(vshr_n_u8(b, 2), m3));
    *c1 = vcombine_u8(vand_u8(vshr_n_u8(b, 4), m3), vshr_n_u8(b, 6));
}

static void dot_q4_nl_neon(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const int8x16_t lut = grid_table(el_grid_q4_nl);
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    LEGACY_DOT(block_q4_nl, block_q8_0, QK_NL,
               {
                   const uint8x16_t b = vld1q_u8(x[i].qs);
                   w0 = vqtbl1q_s8(lut, vandq_u8(b, m4));
                   w1 = vqtbl1q_s8(lut, vshrq_n_u8(b, 4));
                   dx = el_nl_scale[x[i].e];
               },
               (void)0)
}

static void dot_q3_nl_neon(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const int8x16_t lut = grid_table(el_grid_q3_nl);
    const uint8x16_t bits = vld1q_u8(bit), four = vdupq_n_u8(4);
    LEGACY_DOT(block_q3_nl, block_q8_0, QK_NL,
               {
                   uint8x16_t c0;
                   uint8x16_t c1;
                   low2_codes(x[i].qs, &c0, &c1);
                   const uint8x16_t h0 = vcombine_u8(vdup_n_u8(x[i].qh[0]), vdup_n_u8(x[i].qh[1]));
                   const uint8x16_t h1 = vcombine_u8(vdup_n_u8(x[i].qh[2]), vdup_n_u8(x[i].qh[3]));
                   w0 = vqtbl1q_s8(lut, vorrq_u8(c0, vandq_u8(vtstq_u8(h0, bits), four)));
                   w1 = vqtbl1q_s8(lut, vorrq_u8(c1, vandq_u8(vtstq_u8(h1, bits), four)));
                   dx = el_nl_scale[x[i].e];
               },
               (void)0)
}

static void dot_q2_nl_neon(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const int8x16_t lut = grid_table(el_grid_q2_nl);
    LEGACY_DOT(block_q2_nl, block_q8_0, QK_NL,
               {
                   uint8x16_t c0;
                   uint8x16_t c1;
                   low2_codes(x[i].qs, &c0, &c1);
                   w0 = vqtbl1q_s8(lut, c0);
                   w1 = vqtbl1q_s8(lut, c1);
                   dx = el_nl_scale[x[i].e];
               },
               (void)0)
}

/* ---- k-quants against Q8_K ---- */

/* Q4_K's 12 scale bytes -> 8 six-bit scales and 8 six-bit mins (ggml's get_scale_min_k4, in bulk) */
static inline void q4_K_scales_mins(const uint8_t *packed, uint8_t *sc, uint8_t *mn) {
    const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
    uint32_t u[4];
    memcpy(u, packed, 12);
    u[3] = ((u[2] >> 4) & kmask2) | (((u[1] >> 6) & kmask3) << 4);
    const uint32_t mins_lo = u[1] & kmask1;
    u[1] = (u[2] & kmask2) | (((u[0] >> 6) & kmask3) << 4);
    u[2] = mins_lo;
    u[0] &= kmask1;
    memcpy(sc, &u[0], 8);
    memcpy(mn, &u[2], 8);
}

static void dot_q4_K_neon(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const block_q4_K *x = w;
    const int nb = n / QK_K;
    const uint8x16_t m4 = vdupq_n_u8(0x0F);
    for (int c0 = 0; c0 < nc; c0 += NC_TILE) {
        const int nr = nc - c0 < NC_TILE ? nc - c0 : NC_TILE;
        const block_q8_K *yr[NC_TILE];
        float sumf[NC_TILE];
        for (int r = 0; r < nr; r++) {
            yr[r] = (const block_q8_K *)((const char *)y + (size_t)(c0 + r) * by);
            sumf[r] = 0.0f;
        }
        for (int i = 0; i < nb; i++) {
            uint8_t sc[8], mn[8];
            q4_K_scales_mins(x[i].scales, sc, mn);
            const int16x8_t mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(mn)));
            const float d = el_f16(x[i].d), dmin = el_f16(x[i].dmin);
            /* unpack the 256 weights once: sub-block 2j = low nibbles of qs[32j..], 2j+1 = high nibbles */
            int8x16_t q[16];
            for (int j = 0; j < 4; j++) {
                const uint8x16_t b0 = vld1q_u8(x[i].qs + 32 * j), b1 = vld1q_u8(x[i].qs + 32 * j + 16);
                q[4 * j + 0] = vreinterpretq_s8_u8(vandq_u8(b0, m4));
                q[4 * j + 1] = vreinterpretq_s8_u8(vandq_u8(b1, m4));
                q[4 * j + 2] = vreinterpretq_s8_u8(vshrq_n_u8(b0, 4));
                q[4 * j + 3] = vreinterpretq_s8_u8(vshrq_n_u8(b1, 4));
            }
            for (int r = 0; r < nr; r++) {
                const block_q8_K *a = &yr[r][i];
                /* mins term: sum over sub-blocks of min * (sum of its 32 activations) */
                const int16x8_t bs0 = vld1q_s16(a->bsums), bs1 = vld1q_s16(a->bsums + 8);
                const int16x8_t bsum32 = vpaddq_s16(bs0, bs1); /* 8 sums of 32 */
                int32x4_t pm = vmull_s16(vget_low_s16(bsum32), vget_low_s16(mins));
                pm = vmlal_s16(pm, vget_high_s16(bsum32), vget_high_s16(mins));
                const int32_t summins = vaddvq_s32(pm);
                int32_t sumi = 0;
                for (int k = 0; k < 8; k++) {
                    int32x4_t acc = el_dot16(vdupq_n_s32(0), q[2 * k], vld1q_s8(a->qs + 32 * k));
                    acc = el_dot16(acc, q[2 * k + 1], vld1q_s8(a->qs + 32 * k + 16));
                    sumi += vaddvq_s32(acc) * sc[k];
                }
                sumf[r] += a->d * d * (float)sumi - a->d * dmin * (float)summins;
            }
        }
        for (int r = 0; r < nr; r++) s[(size_t)(c0 + r) * bs] = sumf[r];
    }
}

static void dot_q6_K_neon(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const block_q6_K *x = w;
    const int nb = n / QK_K;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(0x03);
    const int8x16_t s32 = vdupq_n_s8(32);
    for (int c0 = 0; c0 < nc; c0 += NC_TILE) {
        const int nr = nc - c0 < NC_TILE ? nc - c0 : NC_TILE;
        const block_q8_K *yr[NC_TILE];
        float sumf[NC_TILE];
        for (int r = 0; r < nr; r++) {
            yr[r] = (const block_q8_K *)((const char *)y + (size_t)(c0 + r) * by);
            sumf[r] = 0.0f;
        }
        for (int i = 0; i < nb; i++) {
            const float d = el_f16(x[i].d);
            const int16x8_t sc16_0 = vmovl_s8(vld1_s8(x[i].scales)), sc16_1 = vmovl_s8(vld1_s8(x[i].scales + 8));
            const int32x4_t scv[4] = {vmovl_s16(vget_low_s16(sc16_0)), vmovl_s16(vget_high_s16(sc16_0)),
                                      vmovl_s16(vget_low_s16(sc16_1)), vmovl_s16(vget_high_s16(sc16_1))};
            /* unpack the 256 six-bit weights, minus 32, in order: q[k] holds weights 16k..16k+15 */
            int8x16_t q[16];
            for (int h = 0; h < 2; h++) {
                const uint8_t *ql = x[i].ql + 64 * h, *qh = x[i].qh + 32 * h;
                for (int l = 0; l < 2; l++) {
                    const uint8x16_t lo0 = vld1q_u8(ql + 16 * l), lo1 = vld1q_u8(ql + 32 + 16 * l);
                    const uint8x16_t hb = vld1q_u8(qh + 16 * l);
                    const uint8x16_t v0 = vorrq_u8(vandq_u8(lo0, m4), vshlq_n_u8(vandq_u8(hb, m3), 4));
                    const uint8x16_t v1 =
                        vorrq_u8(vandq_u8(lo1, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 2), m3), 4));
                    const uint8x16_t v2 = vorrq_u8(vshrq_n_u8(lo0, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(hb, 4), m3), 4));
                    const uint8x16_t v3 = vorrq_u8(vshrq_n_u8(lo1, 4), vshlq_n_u8(vshrq_n_u8(hb, 6), 4));
                    q[8 * h + 0 + l] = vsubq_s8(vreinterpretq_s8_u8(v0), s32);
                    q[8 * h + 2 + l] = vsubq_s8(vreinterpretq_s8_u8(v1), s32);
                    q[8 * h + 4 + l] = vsubq_s8(vreinterpretq_s8_u8(v2), s32);
                    q[8 * h + 6 + l] = vsubq_s8(vreinterpretq_s8_u8(v3), s32);
                }
            }
            for (int r = 0; r < nr; r++) {
                const block_q8_K *a = &yr[r][i];
                int32x4_t sums = vdupq_n_s32(0);
                for (int k = 0; k < 16; k += 4) {
                    /* four sub-blocks of 16: lane k' of sums = sum16 of sub-block k + k' */
                    const int32x4_t p0 = el_dot16(vdupq_n_s32(0), q[k + 0], vld1q_s8(a->qs + 16 * (k + 0)));
                    const int32x4_t p1 = el_dot16(vdupq_n_s32(0), q[k + 1], vld1q_s8(a->qs + 16 * (k + 1)));
                    const int32x4_t p2 = el_dot16(vdupq_n_s32(0), q[k + 2], vld1q_s8(a->qs + 16 * (k + 2)));
                    const int32x4_t p3 = el_dot16(vdupq_n_s32(0), q[k + 3], vld1q_s8(a->qs + 16 * (k + 3)));
                    const int32x4_t p = vpaddq_s32(vpaddq_s32(p0, p1), vpaddq_s32(p2, p3));
                    sums = vmlaq_s32(sums, p, scv[k / 4]);
                }
                sumf[r] += d * a->d * (float)vaddvq_s32(sums);
            }
        }
        for (int r = 0; r < nr; r++) s[(size_t)(c0 + r) * bs] = sumf[r];
    }
}

/* ---- attention over F32 / F16 cache rows ---- */

/* four floats of a cache row (F16 rows are converted) */
static inline float32x4_t load4(const char *row, int d, int half) {
    return half ? vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16((const uint16_t *)row + d)))
                : vld1q_f32((const float *)row + d);
}

static inline float elem(const char *row, int d, int half) {
    return half ? el_fp16_to_fp32(((const el_fp16_t *)row)[d]) : ((const float *)row)[d];
}

/* scores: s[r * bs + j] = x_j . y_r, each key row loaded once for all nr query rows (up to 4 at a time) */
static void dot_rows_x4(int n, int m, float *s, size_t bs, const void *y, size_t by, int nr, const void *x,
                        size_t bx, int half) {
    const int n4 = n & ~3;
    for (int j = 0; j < m; j++) {
        const char *row = (const char *)x + (size_t)j * bx;
        for (int r0 = 0; r0 < nr; r0 += NC_TILE) {
            const int rn = nr - r0 < NC_TILE ? nr - r0 : NC_TILE;
            float32x4_t acc[NC_TILE];
            for (int r = 0; r < NC_TILE; r++) acc[r] = vdupq_n_f32(0.0f);
            for (int d = 0; d < n4; d += 4) {
                const float32x4_t k = load4(row, d, half);
                for (int r = 0; r < rn; r++)
                    acc[r] = vfmaq_f32(acc[r], k, vld1q_f32((const float *)((const char *)y + (size_t)(r0 + r) * by) + d));
            }
            for (int r = 0; r < rn; r++) {
                const float *q = (const float *)((const char *)y + (size_t)(r0 + r) * by);
                float sum = vaddvq_f32(acc[r]);
                for (int d = n4; d < n; d++) sum += elem(row, d, half) * q[d];
                s[(size_t)(r0 + r) * bs + j] = sum;
            }
        }
    }
}

/* P V: s[r * bs + d] = sum_j p[r * bp + j] x_j[d], columns in chunks of 16, each row chunk loaded once */
static void mix_x4(int n, int m, float *s, size_t bs, const float *p, size_t bp, int nr, const void *x, size_t bx,
                   int half) {
    const int n4 = n & ~3;
    for (int d0 = 0; d0 < n4; d0 += 16) {
        const int nv = (n4 - d0 < 16 ? n4 - d0 : 16) / 4;
        for (int r0 = 0; r0 < nr; r0 += NC_TILE) {
            const int rn = nr - r0 < NC_TILE ? nr - r0 : NC_TILE;
            float32x4_t acc[NC_TILE][4];
            for (int r = 0; r < NC_TILE; r++)
                for (int v = 0; v < 4; v++) acc[r][v] = vdupq_n_f32(0.0f);
            for (int j = 0; j < m; j++) {
                const char *row = (const char *)x + (size_t)j * bx;
                float32x4_t xv[4];
                for (int v = 0; v < nv; v++) xv[v] = load4(row, d0 + 4 * v, half);
                for (int r = 0; r < rn; r++) {
                    const float pj = p[(size_t)(r0 + r) * bp + j];
                    for (int v = 0; v < nv; v++) acc[r][v] = vfmaq_n_f32(acc[r][v], xv[v], pj);
                }
            }
            for (int r = 0; r < rn; r++)
                for (int v = 0; v < nv; v++) vst1q_f32(s + (size_t)(r0 + r) * bs + d0 + 4 * v, acc[r][v]);
        }
    }
    for (int d = n4; d < n; d++)
        for (int r = 0; r < nr; r++) {
            float sum = 0.0f;
            for (int j = 0; j < m; j++) sum += p[(size_t)r * bp + j] * elem((const char *)x + (size_t)j * bx, d, half);
            s[(size_t)r * bs + d] = sum;
        }
}

static void dot_rows_f32_neon(int n, int m, float *s, size_t bs, const void *y, size_t by, int nr, const void *x,
                              size_t bx) {
    dot_rows_x4(n, m, s, bs, y, by, nr, x, bx, 0);
}
static void dot_rows_f16_neon(int n, int m, float *s, size_t bs, const void *y, size_t by, int nr, const void *x,
                              size_t bx) {
    dot_rows_x4(n, m, s, bs, y, by, nr, x, bx, 1);
}
static void mix_f32_neon(int n, int m, float *s, size_t bs, const float *p, size_t bp, int nr, const void *x,
                         size_t bx) {
    mix_x4(n, m, s, bs, p, bp, nr, x, bx, 0);
}
static void mix_f16_neon(int n, int m, float *s, size_t bs, const float *p, size_t bp, int nr, const void *x,
                         size_t bx) {
    mix_x4(n, m, s, bs, p, bp, nr, x, bx, 1);
}

void el_register_neon(el_type_traits *t) {
    t[EL_Q8_0].from_float = quantize_row_q8_0_neon;
    t[EL_Q8_1].from_float = quantize_row_q8_1_neon;
    t[EL_Q8_0].dot = dot_q8_0_neon;
    t[EL_Q4_0].dot = dot_q4_0_neon;
    t[EL_Q4_1].dot = dot_q4_1_neon;
    t[EL_Q5_0].dot = dot_q5_0_neon;
    t[EL_Q4_K].dot = dot_q4_K_neon;
    t[EL_Q4_NL].dot = dot_q4_nl_neon;
    t[EL_Q3_NL].dot = dot_q3_nl_neon;
    t[EL_Q2_NL].dot = dot_q2_nl_neon;
    t[EL_Q6_K].dot = dot_q6_K_neon;
    t[EL_F32].dot_rows = dot_rows_f32_neon;
    t[EL_F16].dot_rows = dot_rows_f16_neon;
    t[EL_F32].mix = mix_f32_neon;
    t[EL_F16].mix = mix_f16_neon;
}
#else
void el_register_neon(el_type_traits *t) { (void)t; }
#endif
