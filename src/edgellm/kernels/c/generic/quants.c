/* Portable C kernels: activation quantizers and dot products for the legacy 32-weight formats and floats.
 * Bit-for-bit the same rounding as ggml-quants.c's reference quantizers; each dot accumulates in int32
 * per block and in float across blocks. */
#include <math.h>
#include <string.h>

#include "../edgellm.h"

void el_quantize_row_q8_0_generic(const float *x, void *vy, int64_t k) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < k / QK8_0; i++, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        y[i].d = el_fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

void el_quantize_row_q8_1_generic(const float *x, void *vy, int64_t k) {
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < k / QK8_1; i++, x += QK8_1) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_1; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK8_1; j++) {
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].d = el_fp32_to_fp16(d);
        y[i].s = el_fp32_to_fp16(d * (float)sum);
    }
}

static inline int nearest_int(float f) {
    /* round half to even through the float mantissa, as ggml's nearest_int */
    float v = f + 12582912.0f;
    int32_t i;
    memcpy(&i, &v, sizeof(i));
    return (i & 0x007fffff) - 0x00400000;
}

void el_quantize_row_q8_K_generic(const float *x, void *vy, int64_t k) {
    block_q8_K *y = vy;
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        float max = 0.0f, amax = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
        }
        if (!amax) {
            memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            int v = nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)(v > 127 ? 127 : v);
        }
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y[i].qs[j * 16 + l];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1.0f / iscale;
    }
}

/* ---- dot products: one weight row against nc activation rows ---- */

#define FOR_EACH_ROW(body)                                                     \
    for (int c = 0; c < nc; c++) {                                             \
        const void *yc = (const char *)y + (size_t)c * by;                     \
        float sumf = 0.0f;                                                     \
        body;                                                                  \
        s[(size_t)c * bs] = sumf;                                              \
    }

static void dot_q8_0(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const block_q8_0 *x = w;
    FOR_EACH_ROW({
        const block_q8_0 *q = yc;
        for (int i = 0; i < n / QK8_0; i++) {
            int sumi = 0;
            for (int j = 0; j < QK8_0; j++) sumi += x[i].qs[j] * q[i].qs[j];
            sumf += (float)sumi * el_f16(x[i].d) * el_f16(q[i].d);
        }
    })
}

static void dot_q4_0(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const block_q4_0 *x = w;
    FOR_EACH_ROW({
        const block_q8_0 *q = yc;
        for (int i = 0; i < n / QK4_0; i++) {
            int sumi = 0;
            for (int j = 0; j < QK4_0 / 2; j++) {
                sumi += ((x[i].qs[j] & 0x0F) - 8) * q[i].qs[j] + ((x[i].qs[j] >> 4) - 8) * q[i].qs[j + 16];
            }
            sumf += (float)sumi * el_f16(x[i].d) * el_f16(q[i].d);
        }
    })
}

static void dot_q4_1(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const block_q4_1 *x = w;
    FOR_EACH_ROW({
        const block_q8_1 *q = yc;
        for (int i = 0; i < n / QK4_1; i++) {
            int sumi = 0;
            for (int j = 0; j < QK4_1 / 2; j++) {
                sumi += (x[i].qs[j] & 0x0F) * q[i].qs[j] + (x[i].qs[j] >> 4) * q[i].qs[j + 16];
            }
            sumf += (float)sumi * el_f16(x[i].d) * el_f16(q[i].d) + el_f16(x[i].m) * el_f16(q[i].s);
        }
    })
}

static inline uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static void dot_q5_0(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const block_q5_0 *x = w;
    FOR_EACH_ROW({
        const block_q8_0 *q = yc;
        for (int i = 0; i < n / QK5_0; i++) {
            const uint32_t qh = load_u32(x[i].qh);
            int sumi = 0;
            for (int j = 0; j < QK5_0 / 2; j++) {
                const int lo = ((x[i].qs[j] & 0x0F) | (((qh >> j) & 1) << 4)) - 16;
                const int hi = ((x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
                sumi += lo * q[i].qs[j] + hi * q[i].qs[j + 16];
            }
            sumf += (float)sumi * el_f16(x[i].d) * el_f16(q[i].d);
        }
    })
}

static void dot_q5_1(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const block_q5_1 *x = w;
    FOR_EACH_ROW({
        const block_q8_1 *q = yc;
        for (int i = 0; i < n / QK5_1; i++) {
            const uint32_t qh = load_u32(x[i].qh);
            int sumi = 0;
            for (int j = 0; j < QK5_1 / 2; j++) {
                const int lo = (x[i].qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
                const int hi = (x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
                sumi += lo * q[i].qs[j] + hi * q[i].qs[j + 16];
            }
            sumf += (float)sumi * el_f16(x[i].d) * el_f16(q[i].d) + el_f16(x[i].m) * el_f16(q[i].s);
        }
    })
}

static void dot_f32(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const float *x = w;
    FOR_EACH_ROW({
        const float *q = yc;
        for (int j = 0; j < n; j++) sumf += x[j] * q[j];
    })
}

static void dot_f16(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const el_fp16_t *x = w;
    FOR_EACH_ROW({
        const float *q = yc;
        for (int j = 0; j < n; j++) sumf += el_f16(x[j]) * q[j];
    })
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void dot_bf16(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {
    const uint16_t *x = w;
    FOR_EACH_ROW({
        const float *q = yc;
        for (int j = 0; j < n; j++) sumf += bf16_to_f32(x[j]) * q[j];
    })
}

/* ---- dequantize rows (gathers) ---- */

static void to_float_f32(const void *x, float *y, int64_t k) { memcpy(y, x, (size_t)k * sizeof(float)); }

static void to_float_f16(const void *vx, float *y, int64_t k) {
    const el_fp16_t *x = vx;
    for (int64_t j = 0; j < k; j++) y[j] = el_f16(x[j]);
}

static void to_float_bf16(const void *vx, float *y, int64_t k) {
    const uint16_t *x = vx;
    for (int64_t j = 0; j < k; j++) y[j] = bf16_to_f32(x[j]);
}

static void to_float_q8_0(const void *vx, float *y, int64_t k) {
    const block_q8_0 *x = vx;
    for (int64_t i = 0; i < k / QK8_0; i++) {
        const float d = el_f16(x[i].d);
        for (int j = 0; j < QK8_0; j++) y[i * QK8_0 + j] = x[i].qs[j] * d;
    }
}

static void to_float_q4_0(const void *vx, float *y, int64_t k) {
    const block_q4_0 *x = vx;
    for (int64_t i = 0; i < k / QK4_0; i++, y += QK4_0) {
        const float d = el_f16(x[i].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[j] = ((x[i].qs[j] & 0x0F) - 8) * d;
            y[j + 16] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void to_float_q4_1(const void *vx, float *y, int64_t k) {
    const block_q4_1 *x = vx;
    for (int64_t i = 0; i < k / QK4_1; i++, y += QK4_1) {
        const float d = el_f16(x[i].d), m = el_f16(x[i].m);
        for (int j = 0; j < QK4_1 / 2; j++) {
            y[j] = (x[i].qs[j] & 0x0F) * d + m;
            y[j + 16] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}

static void to_float_q5_0(const void *vx, float *y, int64_t k) {
    const block_q5_0 *x = vx;
    for (int64_t i = 0; i < k / QK5_0; i++, y += QK5_0) {
        const float d = el_f16(x[i].d);
        const uint32_t qh = load_u32(x[i].qh);
        for (int j = 0; j < QK5_0 / 2; j++) {
            const int lo = (int)((x[i].qs[j] & 0x0F) | (((qh >> j) & 1) << 4)) - 16;
            const int hi = (int)((x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16;
            y[j] = lo * d;
            y[j + 16] = hi * d;
        }
    }
}

static void to_float_q5_1(const void *vx, float *y, int64_t k) {
    const block_q5_1 *x = vx;
    for (int64_t i = 0; i < k / QK5_1; i++, y += QK5_1) {
        const float d = el_f16(x[i].d), m = el_f16(x[i].m);
        const uint32_t qh = load_u32(x[i].qh);
        for (int j = 0; j < QK5_1 / 2; j++) {
            y[j] = ((x[i].qs[j] & 0x0F) | (((qh >> j) & 1) << 4)) * d + m;
            y[j + 16] = ((x[i].qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) * d + m;
        }
    }
}

/* ---- weighted sums of rows (attention over the V cache) ---- */

/* s = p x over row chunks of 64 elements: each chunk of a row is converted once and added to all nr sums */
static void mix_rows(int n, int m, float *s, size_t bs, const float *p, size_t bp, int nr, const void *x, size_t bx,
                     el_to_float_fn to_float, int block_size, size_t type_size) {
    float row[64];
    for (int d0 = 0; d0 < n; d0 += 64) {
        const int w = n - d0 < 64 ? n - d0 : 64;
        for (int r = 0; r < nr; r++) memset(s + (size_t)r * bs + d0, 0, sizeof(float) * (size_t)w);
        for (int j = 0; j < m; j++) {
            to_float((const char *)x + (size_t)j * bx + (size_t)(d0 / block_size) * type_size, row, w);
            for (int r = 0; r < nr; r++) {
                const float pj = p[(size_t)r * bp + j];
                float *o = s + (size_t)r * bs + d0;
                for (int d = 0; d < w; d++) o[d] += pj * row[d];
            }
        }
    }
}

#define MIX(NAME, TO_FLOAT, BLOCK, SIZE)                                                                       \
    static void NAME(int n, int m, float *s, size_t bs, const float *p, size_t bp, int nr, const void *x,     \
                     size_t bx) {                                                                             \
        mix_rows(n, m, s, bs, p, bp, nr, x, bx, TO_FLOAT, BLOCK, SIZE);                                       \
    }
MIX(mix_f32, to_float_f32, 1, 4)
MIX(mix_f16, to_float_f16, 1, 2)
MIX(mix_q8_0, to_float_q8_0, QK8_0, sizeof(block_q8_0))

void el_register_generic_kquants(el_type_traits *t);
void el_register_generic_nlquants(el_type_traits *t);

void el_register_generic(el_type_traits *t) {
    t[EL_F32] = (el_type_traits){"F32", 1, 4, EL_F32, dot_f32, NULL, to_float_f32, mix_f32};
    t[EL_F16] = (el_type_traits){"F16", 1, 2, EL_F32, dot_f16, NULL, to_float_f16, mix_f16};
    t[EL_BF16] = (el_type_traits){"BF16", 1, 2, EL_F32, dot_bf16, NULL, to_float_bf16};
    t[EL_Q8_0] = (el_type_traits){"Q8_0", QK8_0, sizeof(block_q8_0), EL_Q8_0, dot_q8_0,
                                  el_quantize_row_q8_0_generic, to_float_q8_0, mix_q8_0};
    t[EL_Q8_1] = (el_type_traits){"Q8_1", QK8_1, sizeof(block_q8_1), EL_Q8_1, NULL,
                                  el_quantize_row_q8_1_generic, NULL};
    t[EL_Q4_0] = (el_type_traits){"Q4_0", QK4_0, sizeof(block_q4_0), EL_Q8_0, dot_q4_0, NULL, to_float_q4_0};
    t[EL_Q4_1] = (el_type_traits){"Q4_1", QK4_1, sizeof(block_q4_1), EL_Q8_1, dot_q4_1, NULL, to_float_q4_1};
    t[EL_Q5_0] = (el_type_traits){"Q5_0", QK5_0, sizeof(block_q5_0), EL_Q8_0, dot_q5_0, NULL, to_float_q5_0};
    t[EL_Q5_1] = (el_type_traits){"Q5_1", QK5_1, sizeof(block_q5_1), EL_Q8_1, dot_q5_1, NULL, to_float_q5_1};
    t[EL_Q8_K] = (el_type_traits){"Q8_K", QK_K, sizeof(block_q8_K), EL_Q8_K, NULL,
                                  el_quantize_row_q8_K_generic, NULL};
    el_register_generic_kquants(t);
    el_register_generic_nlquants(t);
}
