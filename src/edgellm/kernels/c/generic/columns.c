/* Portable column-layout kernels (sparse.c), also the fallback of every ISA path that lacks one. Integer kinds
 * are read in their dot order (edgellm.h) through el_col_row_of. */
#include <string.h>

#include "../edgellm.h"

/* value of dot-order position p of a 64-output tile */
static inline int u4_at(const uint8_t *t, int p) { return p < 32 ? t[p] & 15 : t[p - 32] >> 4; }

static void dot_kind(int kind, int n, int32_t *acc, int n_quads, const int8_t *xq, const uint8_t *const *q,
                     size_t hoff) {
    memset(acc, 0, sizeof(int32_t) * (size_t)n);
    for (int j = 0; j < 4 * n_quads; j++) {
        const int x = xq[j];
        if (!x) continue;
        for (int t = 0; t < n / EL_COL_TILE; t++) {
            int32_t *a = acc + t * EL_COL_TILE;
            for (int p = 0; p < EL_COL_TILE; p++) {
                int v;
                if (kind == EL_COL_I8) {
                    v = ((const int8_t *)q[j])[t * EL_COL_TILE + p];
                } else {
                    v = u4_at(q[j] + t * 32, p);
                    if (kind == EL_COL_U5) v |= ((q[j][hoff + t * 8 + p / 8] >> (p % 8)) & 1) << 4;
                }
                a[el_col_row_of(p)] += x * v;
            }
        }
    }
}

static void dot_u4(int n, int32_t *acc, int n_quads, const int8_t *xq, const uint8_t *const *q, size_t hoff) {
    dot_kind(EL_COL_U4, n, acc, n_quads, xq, q, hoff);
}

static void dot_u5(int n, int32_t *acc, int n_quads, const int8_t *xq, const uint8_t *const *q, size_t hoff) {
    dot_kind(EL_COL_U5, n, acc, n_quads, xq, q, hoff);
}

static void dot_i8(int n, int32_t *acc, int n_quads, const int8_t *xq, const uint8_t *const *q, size_t hoff) {
    dot_kind(EL_COL_I8, n, acc, n_quads, xq, q, hoff);
}

static void axpy_f16(int n, float *acc, int n_ch, const float *xs, const uint8_t *const *q) {
    memset(acc, 0, sizeof(float) * (size_t)n);
    for (int j = 0; j < n_ch; j++) {
        const float a = xs[j];
        const el_fp16_t *p = (const el_fp16_t *)q[j];
        for (int r = 0; r < n; r++) acc[r] += a * el_f16(p[r]);
    }
}

static void axpy_f32(int n, float *acc, int n_ch, const float *xs, const uint8_t *const *q) {
    memset(acc, 0, sizeof(float) * (size_t)n);
    for (int j = 0; j < n_ch; j++) {
        const float a = xs[j];
        const float *p = (const float *)q[j];
        for (int r = 0; r < n; r++) acc[r] += a * p[r];
    }
}

static void scale(int n, float *y, const int32_t *acc, float s, const el_fp16_t *d, const el_fp16_t *m, float sx) {
    for (int r = 0; r < n; r++) y[r] += el_f16(d[r]) * (s * (float)acc[r]) + (m ? el_f16(m[r]) * sx : 0.0f);
}

void el_register_columns_generic(el_col_kernels *k) {
    k->dot[EL_COL_U4] = dot_u4;
    k->dot[EL_COL_U5] = dot_u5;
    k->dot[EL_COL_I8] = dot_i8;
    k->axpy[0] = axpy_f16;
    k->axpy[1] = axpy_f32;
    k->scale = scale;
}
