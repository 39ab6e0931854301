/* NEON column-layout kernels (sparse.c): as the AVX512 ones on quarter tiles of 16 positions, interleaved with
 * zip1/zip2 and multiplied with vdotq_s32 (dotprod builds) or vmull_s8 + pairwise adds (baseline armv8-a). */
#include <string.h>

#include "../../edgellm.h"

#if defined(__aarch64__)
#include <arm_neon.h>

#define INL static inline __attribute__((always_inline))

INL int32x4_t dot4(int32x4_t acc, int8x16_t q, int8x16_t x) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, q, x);
#else
    const int16x8_t lo = vmull_s8(vget_low_s8(q), vget_low_s8(x)), hi = vmull_high_s8(q, x);
    return vpadalq_s16(acc, vpaddq_s16(lo, hi));
#endif
}

/* 16 in byte i when bit i of the 16 bits at h is set */
INL uint8x16_t high16(const uint8_t *h) {
    static const uint8_t sel[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t bytes = vcombine_u8(vdup_n_u8(h[0]), vdup_n_u8(h[1]));
    return vandq_u8(vtstq_u8(bytes, vld1q_u8(sel)), vdupq_n_u8(16));
}

INL void dot_quads(int kind, int n, int32_t *acc, int n_quads, const int8_t *xq, const uint8_t *const *q,
                   size_t hoff) {
    const uint8x16_t low = vdupq_n_u8(15);
    for (int t = 0; t < n / EL_COL_TILE; t++) {
        int32x4_t a[4][4]; /* [i][k]: outputs 16i + 4k .. + 3 */
        for (int i = 0; i < 4; i++)
            for (int k = 0; k < 4; k++) a[i][k] = vdupq_n_s32(0);
        for (int j = 0; j < n_quads; j++) {
            int8x16_t z[4][4]; /* [k][channel]: positions 16k .. 16k + 15 */
            for (int c = 0; c < 4; c++) {
                const uint8_t *row = q[4 * j + c];
                if (kind == EL_COL_I8) {
                    for (int k = 0; k < 4; k++) z[k][c] = vld1q_s8((const int8_t *)row + t * 64 + 16 * k);
                } else {
                    const uint8x16_t v0 = vld1q_u8(row + t * 32), v1 = vld1q_u8(row + t * 32 + 16);
                    uint8x16_t u[4] = {vandq_u8(v0, low), vandq_u8(v1, low), vshrq_n_u8(v0, 4), vshrq_n_u8(v1, 4)};
                    for (int k = 0; k < 4; k++) {
                        if (kind == EL_COL_U5) u[k] = vorrq_u8(u[k], high16(row + hoff + t * 8 + 2 * k));
                        z[k][c] = vreinterpretq_s8_u8(u[k]);
                    }
                }
            }
            int32_t quad;
            memcpy(&quad, xq + 4 * j, 4);
            const int8x16_t x = vreinterpretq_s8_s32(vdupq_n_s32(quad));
            for (int k = 0; k < 4; k++) {
                const int8x16_t p12lo = vzip1q_s8(z[k][0], z[k][1]), p12hi = vzip2q_s8(z[k][0], z[k][1]);
                const int8x16_t p34lo = vzip1q_s8(z[k][2], z[k][3]), p34hi = vzip2q_s8(z[k][2], z[k][3]);
                const int16x8_t l12 = vreinterpretq_s16_s8(p12lo), h12 = vreinterpretq_s16_s8(p12hi);
                const int16x8_t l34 = vreinterpretq_s16_s8(p34lo), h34 = vreinterpretq_s16_s8(p34hi);
                a[0][k] = dot4(a[0][k], vreinterpretq_s8_s16(vzip1q_s16(l12, l34)), x);
                a[1][k] = dot4(a[1][k], vreinterpretq_s8_s16(vzip2q_s16(l12, l34)), x);
                a[2][k] = dot4(a[2][k], vreinterpretq_s8_s16(vzip1q_s16(h12, h34)), x);
                a[3][k] = dot4(a[3][k], vreinterpretq_s8_s16(vzip2q_s16(h12, h34)), x);
            }
        }
        int32_t *out = acc + t * EL_COL_TILE;
        for (int i = 0; i < 4; i++)
            for (int k = 0; k < 4; k++) vst1q_s32(out + 16 * i + 4 * k, a[i][k]);
    }
}

static void dot_u4(int n, int32_t *acc, int n_quads, const int8_t *xq, const uint8_t *const *q, size_t hoff) {
    dot_quads(EL_COL_U4, n, acc, n_quads, xq, q, hoff);
}

static void dot_u5(int n, int32_t *acc, int n_quads, const int8_t *xq, const uint8_t *const *q, size_t hoff) {
    dot_quads(EL_COL_U5, n, acc, n_quads, xq, q, hoff);
}

static void dot_i8(int n, int32_t *acc, int n_quads, const int8_t *xq, const uint8_t *const *q, size_t hoff) {
    dot_quads(EL_COL_I8, n, acc, n_quads, xq, q, hoff);
}

static void axpy_f16(int n, float *acc, int n_ch, const float *xs, const uint8_t *const *q) {
    memset(acc, 0, sizeof(float) * (size_t)n);
    for (int j = 0; j < n_ch; j++) {
        const float32x4_t a = vdupq_n_f32(xs[j]);
        for (int r = 0; r < n; r += 4) {
            uint16_t h[4];
            memcpy(h, q[j] + 2 * r, sizeof(h));
            vst1q_f32(acc + r, vfmaq_f32(vld1q_f32(acc + r), a, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)))));
        }
    }
}

static void axpy_f32(int n, float *acc, int n_ch, const float *xs, const uint8_t *const *q) {
    memset(acc, 0, sizeof(float) * (size_t)n);
    for (int j = 0; j < n_ch; j++) {
        const float32x4_t a = vdupq_n_f32(xs[j]);
        const float *p = (const float *)q[j];
        for (int r = 0; r < n; r += 4) vst1q_f32(acc + r, vfmaq_f32(vld1q_f32(acc + r), a, vld1q_f32(p + r)));
    }
}

static void scale(int n, float *y, const int32_t *acc, float s, const el_fp16_t *d, const el_fp16_t *m, float sx) {
    for (int r = 0; r < n; r += 4) {
        const float32x4_t a = vmulq_n_f32(vcvtq_f32_s32(vld1q_s32(acc + r)), s);
        float32x4_t v = vfmaq_f32(vld1q_f32(y + r), vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(d + r))), a);
        if (m) v = vfmaq_n_f32(v, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(m + r))), sx);
        vst1q_f32(y + r, v);
    }
}

void el_register_columns_neon(el_col_kernels *k) {
    k->dot[EL_COL_U4] = dot_u4;
    k->dot[EL_COL_U5] = dot_u5;
    k->dot[EL_COL_I8] = dot_i8;
    k->axpy[0] = axpy_f16;
    k->axpy[1] = axpy_f32;
    k->scale = scale;
}
#else
void el_register_columns_neon(el_col_kernels *k) { (void)k; }
#endif
