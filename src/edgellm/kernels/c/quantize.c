/* Weight quantizers: float rows -> packed blocks of every weight format, minimising squared error weighted
 * by per-column importance (the mean squared activation each weight multiplies, from an importance
 * matrix), or plain squared error without one.
 *
 * Each block (or k-quant sub-block) gets its scale (and min) from a search over candidate scales, each
 * scored by weighted least squares on the codes it produces. k-quants then quantize the sub-block scales
 * against a super-block scale and re-round every weight against the scale it will really be decoded with.
 * The layouts are those of edgellm.formats.quants, whose dequantizers decode what is written here.
 */
#include <math.h>
#include <string.h>

#include "edgellm.h"

static inline int nearest(float f) { return (int)lrintf(f); }
static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* x ~ scale * q + offset, q in 0..nmax. Returns scale, sets *offset and codes L. With `offset_le_zero`
 * the offset is kept <= 0 (k-quants store -offset as an unsigned min). */
static float fit_affine(int n, int nmax, const float *x, const float *w, uint8_t *L, float *offset,
                        int offset_le_zero) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        lo = fminf(lo, x[i]);
        hi = fmaxf(hi, x[i]);
    }
    if (offset_le_zero && lo > 0) lo = 0;
    if (hi <= lo) {
        memset(L, 0, (size_t)n);
        *offset = lo;
        return 0.0f;
    }
    float best_err = INFINITY, best_scale = (hi - lo) / nmax, best_off = lo;
    uint8_t Lc[QK_K];
    for (int step = -10; step <= 10; step++) {
        const float iscale = (nmax + 0.1f * step) / (hi - lo);
        double sw = 0, sl = 0, sll = 0, sx = 0, slx = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest(iscale * (x[i] - lo)), 0, nmax);
            Lc[i] = (uint8_t)l;
            sw += w[i];
            sl += w[i] * l;
            sll += w[i] * l * l;
            sx += w[i] * x[i];
            slx += w[i] * l * x[i];
        }
        const double det = sw * sll - sl * sl;
        if (det <= 0) continue;
        double a = (sw * slx - sl * sx) / det, b = (sll * sx - sl * slx) / det;
        if (offset_le_zero && b > 0) {
            b = 0;
            a = sll > 0 ? slx / sll : 0;
        }
        double err = 0;
        for (int i = 0; i < n; i++) {
            const double diff = a * Lc[i] + b - x[i];
            err += w[i] * diff * diff;
        }
        if (err < best_err && a > 0) {
            best_err = (float)err;
            best_scale = (float)a;
            best_off = (float)b;
            memcpy(L, Lc, (size_t)n);
        }
    }
    if (best_err == INFINITY) {
        for (int i = 0; i < n; i++) L[i] = (uint8_t)clampi(nearest((x[i] - lo) / best_scale), 0, nmax);
    }
    *offset = best_off;
    return best_scale;
}

/* x ~ scale * q, q in -nmax..nmax-1; the element of largest magnitude lands on -nmax (the longer side).
 * Returns scale (negative when that element is positive) and codes L = q + nmax. */
static float fit_symmetric(int n, int nmax, const float *x, const float *w, uint8_t *L) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            max = x[i];
        }
    }
    if (amax == 0) {
        memset(L, nmax, (size_t)n);
        return 0.0f;
    }
    float best_score = -1, best_scale = -max / nmax;
    uint8_t Lc[QK_K];
    for (int step = -9; step <= 9; step++) {
        const float iscale = -(nmax + 0.1f * step) / max;
        double sxl = 0, sll = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest(iscale * x[i]), -nmax, nmax - 1);
            Lc[i] = (uint8_t)(l + nmax);
            sxl += w[i] * x[i] * l;
            sll += w[i] * l * l;
        }
        /* with the best scale sxl/sll the weighted error is sum(w x^2) - sxl^2 / sll */
        if (sll > 0 && sxl * sxl / sll > best_score) {
            best_score = (float)(sxl * sxl / sll);
            best_scale = (float)(sxl / sll);
            memcpy(L, Lc, (size_t)n);
        }
    }
    if (best_score < 0) {
        for (int i = 0; i < n; i++) L[i] = (uint8_t)(clampi(nearest(x[i] / best_scale), -nmax, nmax - 1) + nmax);
    }
    return best_scale;
}

/* Nearest level of a sorted grid of k levels. */
static int grid_code(const int8_t *grid, int k, float v) {
    int c = 0;
    while (c + 1 < k && v > 0.5f * (grid[c] + grid[c + 1])) c++;
    return c;
}

/* x ~ el_nl_scale[e] * grid[code]: the one-byte log scale e with the least weighted error, searched over
 * the steps around amax / grid max. Returns e and sets codes L. */
static int fit_grid_log_scale(int n, const int8_t *grid, int k, const float *x, const float *w, uint8_t *L) {
    float amax = 0;
    for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i]));
    memset(L, 0, (size_t)n);
    if (amax < el_nl_scale[1] * grid[k - 1] * 0.5f) return 0;
    const int e0 = 192 + (int)floorf(8.0f * log2f(amax / grid[k - 1]));
    double best_err = INFINITY;
    int best_e = 0;
    uint8_t Lc[QK_NL];
    for (int e = e0 - 6; e <= e0 + 2; e++) {
        if (e < 1 || e > 255) continue;
        const float d = el_nl_scale[e], id = 1.0f / d;
        double err = 0;
        for (int i = 0; i < n; i++) {
            const int c = grid_code(grid, k, x[i] * id);
            Lc[i] = (uint8_t)c;
            const double diff = x[i] - d * grid[c];
            err += w[i] * diff * diff;
        }
        if (err < best_err) {
            best_err = err;
            best_e = e;
            memcpy(L, Lc, (size_t)n);
        }
    }
    return best_e;
}

/* Weights of one block: importance per column, or 1. A tiny floor keeps columns with no recorded
 * activation from being ignored entirely. */
static void block_weights(const float *imp, int n, float *w) {
    if (!imp) {
        for (int i = 0; i < n; i++) w[i] = 1.0f;
        return;
    }
    float mean = 0;
    for (int i = 0; i < n; i++) mean += imp[i];
    mean /= n;
    for (int i = 0; i < n; i++) w[i] = imp[i] + 1e-6f * mean + 1e-30f;
}

/* ---- legacy 32-weight formats ----
 * Without an importance matrix these round exactly as ggml's reference quantizers (quantize_row_*_ref), so
 * a file made without one matches llama-quantize's bit for bit; with one, the scale is searched. */

/* ggml's reference: d = (signed abs-max) / -half, q = (int8)(x / d + half + 0.5) clamped (a truncation) */
static void rtn_symmetric(const float *x, int half, el_fp16_t *d_out, uint8_t *q) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    const float d = max / -half, id = d ? 1.0f / d : 0.0f;
    *d_out = el_fp32_to_fp16(d);
    for (int j = 0; j < 32; j++) {
        const int v = (int8_t)(x[j] * id + (half + 0.5f));
        q[j] = (uint8_t)(v < 2 * half - 1 ? v : 2 * half - 1);
    }
}

/* ggml's reference with a min: d = (max - min) / nmax, q = (int8)((x - min) / d + 0.5) clamped */
static void rtn_affine(const float *x, int nmax, el_fp16_t *d_out, el_fp16_t *m_out, uint8_t *q) {
    float lo = INFINITY, hi = -INFINITY;
    for (int j = 0; j < 32; j++) {
        lo = fminf(lo, x[j]);
        hi = fmaxf(hi, x[j]);
    }
    const float d = (hi - lo) / nmax, id = d ? 1.0f / d : 0.0f;
    *d_out = el_fp32_to_fp16(d);
    *m_out = el_fp32_to_fp16(lo);
    for (int j = 0; j < 32; j++) {
        const int v = (int8_t)((x[j] - lo) * id + 0.5f);
        q[j] = (uint8_t)(v < nmax ? v : nmax);
    }
}

static void quantize_q8_0(const float *x, void *vy, int n, const float *imp) {
    block_q8_0 *y = vy;
    (void)imp; /* 8 bits: round to nearest is already within the fp16 scale's own error */
    el_quantize_row_q8_0_generic(x, y, n);
}

static void quantize_q4_0(const float *x, void *vy, int n, const float *imp) {
    block_q4_0 *y = vy;
    float w[32];
    uint8_t L[32];
    for (int i = 0; i < n / 32; i++, x += 32) {
        if (!imp) {
            rtn_symmetric(x, 8, &y[i].d, L);
            for (int j = 0; j < 16; j++) y[i].qs[j] = (uint8_t)(L[j] | L[j + 16] << 4);
            continue;
        }
        block_weights(imp + 32 * i, 32, w);
        const float d = fit_symmetric(32, 8, x, w, L);
        y[i].d = el_fp32_to_fp16(d);
        const float id = el_f16(y[i].d) ? 1.0f / el_f16(y[i].d) : 0.0f;
        for (int j = 0; j < 16; j++) {
            const int lo = clampi(nearest(x[j] * id), -8, 7) + 8, hi = clampi(nearest(x[j + 16] * id), -8, 7) + 8;
            y[i].qs[j] = (uint8_t)(lo | hi << 4);
        }
    }
}

static void quantize_q5_0(const float *x, void *vy, int n, const float *imp) {
    block_q5_0 *y = vy;
    float w[32];
    uint8_t L[32];
    for (int i = 0; i < n / 32; i++, x += 32) {
        if (imp) {
            block_weights(imp + 32 * i, 32, w);
            y[i].d = el_fp32_to_fp16(fit_symmetric(32, 16, x, w, L));
            const float id = el_f16(y[i].d) ? 1.0f / el_f16(y[i].d) : 0.0f;
            for (int j = 0; j < 32; j++) L[j] = (uint8_t)(clampi(nearest(x[j] * id), -16, 15) + 16);
        } else {
            rtn_symmetric(x, 16, &y[i].d, L);
        }
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            const int lo = L[j], hi = L[j + 16];
            y[i].qs[j] = (uint8_t)((lo & 0xF) | (hi & 0xF) << 4);
            qh |= (uint32_t)(lo >> 4) << j | (uint32_t)(hi >> 4) << (j + 16);
        }
        memcpy(y[i].qh, &qh, 4);
    }
}

/* Q4_1 / Q5_1: w = d * q + m with a free (signed) m */
static void quantize_affine32(const float *x, void *vy, int n, const float *imp, int bits) {
    const int nmax = (1 << bits) - 1;
    float w[32];
    uint8_t L[32];
    for (int i = 0; i < n / 32; i++, x += 32) {
        el_fp16_t dh, mh;
        if (imp) {
            block_weights(imp + 32 * i, 32, w);
            float m;
            const float d = fit_affine(32, nmax, x, w, L, &m, 0);
            dh = el_fp32_to_fp16(d), mh = el_fp32_to_fp16(m);
            const float df = el_f16(dh), mf = el_f16(mh), id = df ? 1.0f / df : 0.0f;
            for (int j = 0; j < 32; j++) L[j] = (uint8_t)clampi(nearest((x[j] - mf) * id), 0, nmax);
        } else {
            rtn_affine(x, nmax, &dh, &mh, L);
        }
        if (bits == 4) {
            block_q4_1 *y = (block_q4_1 *)vy + i;
            y->d = dh;
            y->m = mh;
            for (int j = 0; j < 16; j++) y->qs[j] = (uint8_t)(L[j] | L[j + 16] << 4);
        } else {
            block_q5_1 *y = (block_q5_1 *)vy + i;
            y->d = dh;
            y->m = mh;
            uint32_t qh = 0;
            for (int j = 0; j < 16; j++) {
                y->qs[j] = (uint8_t)((L[j] & 0xF) | (L[j + 16] & 0xF) << 4);
                qh |= (uint32_t)(L[j] >> 4) << j | (uint32_t)(L[j + 16] >> 4) << (j + 16);
            }
            memcpy(y->qh, &qh, 4);
        }
    }
}

static void quantize_q4_1(const float *x, void *y, int n, const float *imp) { quantize_affine32(x, y, n, imp, 4); }
static void quantize_q5_1(const float *x, void *y, int n, const float *imp) { quantize_affine32(x, y, n, imp, 5); }

/* ---- k-quants ---- */

/* Scales and mins of the sub-blocks -> unsigned `bits`-bit integers times one fp16 super-scale each. */
static el_fp16_t quantize_unsigned_scales(const float *v, int n, int bits, uint8_t *q) {
    float max = 0;
    for (int i = 0; i < n; i++) max = fmaxf(max, v[i]);
    const int qmax = (1 << bits) - 1;
    const el_fp16_t dh = el_fp32_to_fp16(max / qmax);
    const float d = el_f16(dh);
    for (int i = 0; i < n; i++) q[i] = (uint8_t)(d > 0 ? clampi(nearest(v[i] / d), 0, qmax) : 0);
    return dh;
}

/* Signed sub-block scales -> -2^(bits-1)..2^(bits-1)-1 times one fp16 super-scale; the largest magnitude
 * goes to the negative end, as in fit_symmetric. */
static el_fp16_t quantize_signed_scales(const float *v, int n, int bits, int *q) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++) {
        if (fabsf(v[i]) > amax) {
            amax = fabsf(v[i]);
            max = v[i];
        }
    }
    const int half = 1 << (bits - 1);
    const el_fp16_t dh = el_fp32_to_fp16(amax ? -max / half : 0.0f);
    const float d = el_f16(dh);
    for (int i = 0; i < n; i++) q[i] = d != 0 ? clampi(nearest(v[i] / d), -half, half - 1) : 0;
    return dh;
}

/* Re-round sub-block weights to codes 0..nmax against the decoded scale and min. */
static void reround_affine(const float *x, int n, float scale, float min, int nmax, uint8_t *L) {
    for (int i = 0; i < n; i++) L[i] = (uint8_t)(scale > 0 ? clampi(nearest((x[i] + min) / scale), 0, nmax) : 0);
}

static void reround_symmetric(const float *x, int n, float scale, int nmax, uint8_t *L) {
    for (int i = 0; i < n; i++) L[i] = (uint8_t)((scale != 0 ? clampi(nearest(x[i] / scale), -nmax, nmax - 1) : 0) + nmax);
}

static void quantize_q2_K(const float *x, void *vy, int n, const float *imp) {
    block_q2_K *y = vy;
    float w[QK_K], scales[16], mins[16];
    uint8_t L[QK_K], qs[16], qm[16];
    for (int i = 0; i < n / QK_K; i++, x += QK_K) {
        block_weights(imp ? imp + QK_K * i : NULL, QK_K, w);
        for (int s = 0; s < 16; s++) {
            float off;
            scales[s] = fit_affine(16, 3, x + 16 * s, w + 16 * s, L + 16 * s, &off, 1);
            mins[s] = -off;
        }
        y[i].d = quantize_unsigned_scales(scales, 16, 4, qs);
        y[i].dmin = quantize_unsigned_scales(mins, 16, 4, qm);
        const float d = el_f16(y[i].d), dmin = el_f16(y[i].dmin);
        for (int s = 0; s < 16; s++) {
            y[i].scales[s] = (uint8_t)(qs[s] | qm[s] << 4);
            reround_affine(x + 16 * s, 16, d * qs[s], dmin * qm[s], 3, L + 16 * s);
        }
        memset(y[i].qs, 0, sizeof(y[i].qs));
        for (int j = 0; j < QK_K; j++) {
            const int h = j / 128, g = (j % 128) / 32, l = j % 32;
            y[i].qs[32 * h + l] |= (uint8_t)(L[j] << (2 * g));
        }
    }
}

/* Q3_K / Q6_K: 16 sub-blocks of 16 with signed `scale_bits`-bit scales under one fp16 d; codes L = q + nmax,
 * re-rounded against the scales as decoded. Returns d, sets the integer scales sc. */
static el_fp16_t symmetric_subblocks(const float *x, const float *w, int nmax, int scale_bits, int *sc, uint8_t *L) {
    float scales[16];
    for (int s = 0; s < 16; s++) scales[s] = fit_symmetric(16, nmax, x + 16 * s, w + 16 * s, L + 16 * s);
    const el_fp16_t dh = quantize_signed_scales(scales, 16, scale_bits, sc);
    const float d = el_f16(dh);
    for (int s = 0; s < 16; s++) reround_symmetric(x + 16 * s, 16, d * sc[s], nmax, L + 16 * s);
    return dh;
}

static void quantize_q3_K(const float *x, void *vy, int n, const float *imp) {
    block_q3_K *y = vy;
    float w[QK_K];
    int sc[16];
    uint8_t L[QK_K];
    for (int i = 0; i < n / QK_K; i++, x += QK_K) {
        block_weights(imp ? imp + QK_K * i : NULL, QK_K, w);
        y[i].d = symmetric_subblocks(x, w, 4, 6, sc, L);
        memset(y[i].scales, 0, sizeof(y[i].scales));
        for (int s = 0; s < 16; s++) {
            const int u = sc[s] + 32;
            y[i].scales[s % 8] |= (uint8_t)((u & 0xF) << (4 * (s / 8)));
            y[i].scales[8 + s % 4] |= (uint8_t)((u >> 4) << (2 * (s / 4)));
        }
        memset(y[i].qs, 0, sizeof(y[i].qs));
        memset(y[i].hmask, 0, sizeof(y[i].hmask));
        for (int j = 0; j < QK_K; j++) {
            const int h = j / 128, g = (j % 128) / 32, l = j % 32;
            y[i].qs[32 * h + l] |= (uint8_t)((L[j] & 3) << (2 * g));
            y[i].hmask[l] |= (uint8_t)((L[j] >> 2) << (j / 32));
        }
    }
}

/* Q4_K / Q5_K: 8 sub-blocks of 32, 6-bit scales and mins packed as edgellm.formats.quants._k4_scales_mins */
static void quantize_k4(const float *x, uint8_t *scales_out, el_fp16_t *d_out, el_fp16_t *dmin_out,
                        const float *w, int nmax, uint8_t *L) {
    float scales[8], mins[8];
    uint8_t qs[8], qm[8];
    for (int s = 0; s < 8; s++) {
        float off;
        scales[s] = fit_affine(32, nmax, x + 32 * s, w + 32 * s, L + 32 * s, &off, 1);
        mins[s] = -off;
    }
    *d_out = quantize_unsigned_scales(scales, 8, 6, qs);
    *dmin_out = quantize_unsigned_scales(mins, 8, 6, qm);
    const float d = el_f16(*d_out), dmin = el_f16(*dmin_out);
    for (int j = 0; j < 4; j++) {
        scales_out[j] = (uint8_t)(qs[j] | (qs[j + 4] >> 4) << 6);
        scales_out[j + 4] = (uint8_t)(qm[j] | (qm[j + 4] >> 4) << 6);
        scales_out[j + 8] = (uint8_t)((qs[j + 4] & 0xF) | (qm[j + 4] & 0xF) << 4);
    }
    for (int s = 0; s < 8; s++) reround_affine(x + 32 * s, 32, d * qs[s], dmin * qm[s], nmax, L + 32 * s);
}

static void quantize_q4_K(const float *x, void *vy, int n, const float *imp) {
    block_q4_K *y = vy;
    float w[QK_K];
    uint8_t L[QK_K];
    for (int i = 0; i < n / QK_K; i++, x += QK_K) {
        block_weights(imp ? imp + QK_K * i : NULL, QK_K, w);
        quantize_k4(x, y[i].scales, &y[i].d, &y[i].dmin, w, 15, L);
        for (int j = 0; j < QK_K; j++) {
            const int h = j / 64, k = (j % 64) / 32, l = j % 32;
            if (k == 0) y[i].qs[32 * h + l] = L[j];
            else y[i].qs[32 * h + l] |= (uint8_t)(L[j] << 4);
        }
    }
}

static void quantize_q5_K(const float *x, void *vy, int n, const float *imp) {
    block_q5_K *y = vy;
    float w[QK_K];
    uint8_t L[QK_K];
    for (int i = 0; i < n / QK_K; i++, x += QK_K) {
        block_weights(imp ? imp + QK_K * i : NULL, QK_K, w);
        quantize_k4(x, y[i].scales, &y[i].d, &y[i].dmin, w, 31, L);
        memset(y[i].qh, 0, sizeof(y[i].qh));
        for (int j = 0; j < QK_K; j++) {
            const int h = j / 64, k = (j % 64) / 32, l = j % 32;
            if (k == 0) y[i].qs[32 * h + l] = L[j] & 0xF;
            else y[i].qs[32 * h + l] |= (uint8_t)((L[j] & 0xF) << 4);
            y[i].qh[j % 32] |= (uint8_t)((L[j] >> 4) << (j / 32));
        }
    }
}

static void quantize_q6_K(const float *x, void *vy, int n, const float *imp) {
    block_q6_K *y = vy;
    float w[QK_K];
    int sc[16];
    uint8_t L[QK_K];
    for (int i = 0; i < n / QK_K; i++, x += QK_K) {
        block_weights(imp ? imp + QK_K * i : NULL, QK_K, w);
        y[i].d = symmetric_subblocks(x, w, 32, 8, sc, L);
        for (int s = 0; s < 16; s++) y[i].scales[s] = (int8_t)sc[s];
        memset(y[i].ql, 0, sizeof(y[i].ql));
        memset(y[i].qh, 0, sizeof(y[i].qh));
        for (int j = 0; j < QK_K; j++) {
            const int h = j / 128, r = j % 128;
            y[i].ql[64 * h + r % 64] |= (uint8_t)((L[j] & 0xF) << (4 * (r / 64)));
            y[i].qh[32 * h + r % 32] |= (uint8_t)((L[j] >> 4) << (2 * (r / 32)));
        }
    }
}

/* ---- edgellm's non-linear formats ---- */

static void pack_low2(const uint8_t *L, uint8_t *qs) {
    memset(qs, 0, QK_NL / 4);
    for (int j = 0; j < QK_NL; j++) qs[j % 8] |= (uint8_t)((L[j] & 3) << (2 * (j / 8)));
}

static void quantize_q4_nl(const float *x, void *vy, int n, const float *imp) {
    block_q4_nl *y = vy;
    float w[QK_NL];
    uint8_t L[QK_NL];
    for (int i = 0; i < n / QK_NL; i++, x += QK_NL) {
        block_weights(imp ? imp + QK_NL * i : NULL, QK_NL, w);
        y[i].e = (uint8_t)fit_grid_log_scale(QK_NL, el_grid_q4_nl, 16, x, w, L);
        for (int j = 0; j < 16; j++) y[i].qs[j] = (uint8_t)(L[j] | L[j + 16] << 4);
    }
}

static void quantize_q3_nl(const float *x, void *vy, int n, const float *imp) {
    block_q3_nl *y = vy;
    float w[QK_NL];
    uint8_t L[QK_NL];
    for (int i = 0; i < n / QK_NL; i++, x += QK_NL) {
        block_weights(imp ? imp + QK_NL * i : NULL, QK_NL, w);
        y[i].e = (uint8_t)fit_grid_log_scale(QK_NL, el_grid_q3_nl, 8, x, w, L);
        pack_low2(L, y[i].qs);
        uint32_t qh = 0;
        for (int j = 0; j < QK_NL; j++) qh |= (uint32_t)(L[j] >> 2) << j;
        memcpy(y[i].qh, &qh, 4);
    }
}

static void quantize_q2_nl(const float *x, void *vy, int n, const float *imp) {
    block_q2_nl *y = vy;
    float w[QK_NL];
    uint8_t L[QK_NL];
    for (int i = 0; i < n / QK_NL; i++, x += QK_NL) {
        block_weights(imp ? imp + QK_NL * i : NULL, QK_NL, w);
        y[i].e = (uint8_t)fit_grid_log_scale(QK_NL, el_grid_q2_nl, 4, x, w, L);
        pack_low2(L, y[i].qs);
    }
}

/* ---- floats ---- */

static void quantize_f32(const float *x, void *y, int n, const float *imp) {
    (void)imp;
    memcpy(y, x, (size_t)n * sizeof(float));
}

static void quantize_f16(const float *x, void *vy, int n, const float *imp) {
    el_fp16_t *y = vy;
    (void)imp;
    for (int i = 0; i < n; i++) y[i] = el_fp32_to_fp16(x[i]);
}

typedef void (*quantize_fn)(const float *x, void *y, int n, const float *importance);

static quantize_fn quantizer(enum el_type type) {
    switch (type) {
    case EL_F32: return quantize_f32;
    case EL_F16: return quantize_f16;
    case EL_Q8_0: return quantize_q8_0;
    case EL_Q4_0: return quantize_q4_0;
    case EL_Q4_1: return quantize_q4_1;
    case EL_Q5_0: return quantize_q5_0;
    case EL_Q5_1: return quantize_q5_1;
    case EL_Q2_K: return quantize_q2_K;
    case EL_Q3_K: return quantize_q3_K;
    case EL_Q4_K: return quantize_q4_K;
    case EL_Q5_K: return quantize_q5_K;
    case EL_Q6_K: return quantize_q6_K;
    case EL_Q4_NL: return quantize_q4_nl;
    case EL_Q3_NL: return quantize_q3_nl;
    case EL_Q2_NL: return quantize_q2_nl;
    default: return NULL;
    }
}

int el_quantize_rows(enum el_type type, const float *x, void *y, int64_t n_rows, int64_t n_per_row,
                     const float *importance) {
    const quantize_fn fn = type >= 0 && type < EL_TYPE_COUNT ? quantizer(type) : NULL;
    if (!fn || !el_traits[type].name || n_per_row % el_traits[type].block_size) return -1;
    const size_t row_bytes = (size_t)(n_per_row / el_traits[type].block_size) * el_traits[type].type_size;
    for (int64_t r = 0; r < n_rows; r++) {
        fn(x + r * n_per_row, (char *)y + r * row_bytes, (int)n_per_row, importance);
    }
    return 0;
}
