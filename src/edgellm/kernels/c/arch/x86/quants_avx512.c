/* AVX512 kernels. Compiled for every x86-64 build with a target pragma, used only when the CPU has it.
 *
 * Dot products use VNNI (vpdpbusd: u8 x s8 -> s32, four products per lane) on 512-bit registers:
 *  - 32-weight formats: two blocks per register, lanes 0..7 block i, lanes 8..15 block i + 1, per-block
 *    float scales applied with one FMA per pair (the fp16 scales of both blocks are converted together).
 *  - signed formats: for one activation row the weights are used unsigned (q + offset) and the offset times the
 *    activation sum is subtracted (a second vpdpbusd); for a tile of rows the weights are made signed once and
 *    each row uses its activations flipped to unsigned (y ^ 0x80), the weight-only correction shared by all rows.
 *  - k-quants: 64 weights per register, sub-block scales as floats permuted into place, mins and offsets from
 *    the Q8_K bsums.
 * Every kernel unpacks a weight block once per tile of activation rows (nc; tiles of 8, then 4, then the rest).
 * Decode (nc = 1) and tails of up to 3 rows keep one accumulator per row (two for the 32-weight formats); the
 * 32-weight formats' tiles of 4 and 8 rows sum each block's lanes across rows first, so that 16 (row, block)
 * scales are applied at once (dot32_wide); the k-quants fold the weight scales in once per super-block.
 */
#include <string.h>

#include "../../edgellm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512dq")
#include <immintrin.h>

#define INL static inline __attribute__((always_inline))

INL uint32_t ld32(const void *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

INL float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INL float hsum512(__m512 v) {
    return hsum256(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

/* ---- 32-weight formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the NL formats against Q8_0 / Q8_1 ---- */

enum { F_Q4_0, F_Q4_1, F_Q5_0, F_Q5_1, F_Q8_0, F_Q4_NL, F_Q3_NL, F_Q2_NL };

/* NL formats: int8 weights looked up from their grid, then treated like Q8_0's; the scale is a log byte */
#define IS_NL(F) ((F) >= F_Q4_NL)
/* bytes per weight block, per activation block, offset of the activation quants */
#define WSIZE(F)                                                                                               \
    ((F) == F_Q4_0 ? 18 : (F) == F_Q4_1 ? 20 : (F) == F_Q5_0 ? 22 : (F) == F_Q5_1 ? 24 : (F) == F_Q8_0 ? 34     \
     : (F) == F_Q4_NL ? 17 : (F) == F_Q3_NL ? 13 : 9)
#define HAS_MIN(F) ((F) == F_Q4_1 || (F) == F_Q5_1)
#define YSIZE(F) (HAS_MIN(F) ? 36 : 34)
#define YQS(F) (HAS_MIN(F) ? 4 : 2)
/* the weights are stored as q - OFFSET (0: unsigned with a min) */
#define OFFSET(F) ((F) == F_Q4_0 ? 8 : (F) == F_Q5_0 ? 16 : ((F) == F_Q8_0 || IS_NL(F)) ? 128 : 0)
#define RAW_INT8(F) ((F) == F_Q8_0 || IS_NL(F)) /* weights already signed int8: no offset to subtract */

/* two 16-byte nibble arrays -> [a lo, a hi, b lo, b hi] as bytes 0..15 */
INL __m512i q4_pair(const uint8_t *a, const uint8_t *b) {
    __m512i z = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)a));
    z = _mm512_mask_broadcast_i32x4(z, 0xFF00, _mm_loadu_si128((const __m128i *)b));
    z = _mm512_mask_srli_epi16(z, 0xFF00FF00u, z, 4);
    return _mm512_and_si512(z, _mm512_set1_epi8(0x0F));
}

INL __m512i load_pair(const void *a, const void *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}

/* 2-bit codes of two NL blocks (8 bytes each at a, b) -> 64 bytes, code j of a at byte j, of b at 32 + j */
INL __m512i low2_pair(const uint8_t *a, const uint8_t *b) {
    uint64_t u, v;
    memcpy(&u, a, 8);
    memcpy(&v, b, 8);
    const __m512i z = _mm512_set_epi64((long long)v, (long long)v, (long long)v, (long long)v, (long long)u,
                                       (long long)u, (long long)u, (long long)u);
    return _mm512_and_si512(_mm512_srlv_epi64(z, _mm512_set_epi64(6, 4, 2, 0, 6, 4, 2, 0)), _mm512_set1_epi8(3));
}

/* grids are 16-byte tables (edgellm.h): loaded whole, never assembled on the stack (a partial store followed
 * by a 16-byte load stalls store forwarding on every block) */
INL __m512i grid_lookup(const int8_t *grid, __m512i codes) {
    return _mm512_shuffle_epi8(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)grid)), codes);
}

/* the weights of blocks a and b: unsigned q (0..15 / 0..31) for the 4/5-bit formats, raw int8 for Q8_0 and NL */
INL __m512i w_pair(const int F, const uint8_t *a, const uint8_t *b) {
    switch (F) {
    case F_Q4_NL: return grid_lookup(el_grid_q4_nl, q4_pair(a + 1, b + 1));
    case F_Q3_NL: {
        const __mmask64 k = (__mmask64)ld32(a + 1) | ((__mmask64)ld32(b + 1) << 32);
        const __m512i z = low2_pair(a + 5, b + 5);
        return grid_lookup(el_grid_q3_nl, _mm512_mask_add_epi8(z, k, z, _mm512_set1_epi8(4)));
    }
    case F_Q2_NL: return grid_lookup(el_grid_q2_nl, low2_pair(a + 1, b + 1));
    case F_Q4_0: return q4_pair(a + 2, b + 2);
    case F_Q4_1: return q4_pair(a + 4, b + 4);
    case F_Q5_0: {
        const __m512i z = q4_pair(a + 6, b + 6);
        const __mmask64 k = (__mmask64)ld32(a + 2) | ((__mmask64)ld32(b + 2) << 32);
        return _mm512_mask_add_epi8(z, k, z, _mm512_set1_epi8(16));
    }
    case F_Q5_1: {
        const __m512i z = q4_pair(a + 8, b + 8);
        const __mmask64 k = (__mmask64)ld32(a + 4) | ((__mmask64)ld32(b + 4) << 32);
        return _mm512_mask_add_epi8(z, k, z, _mm512_set1_epi8(16));
    }
    default: return load_pair(a + 2, b + 2);
    }
}

/* the fp16 pairs at the start of blocks a and b: [a0, a1, b0, b1] (d and m / s where the format has them) */
INL __m128 f16_pair(const void *a, const void *b) {
    return _mm_cvtph_ps(_mm_unpacklo_epi32(_mm_cvtsi32_si128((int)ld32(a)), _mm_cvtsi32_si128((int)ld32(b))));
}

/* the weight blocks' scales as f16_pair lays them out: [da, ma, db, mb] (NL: [da, 0, db, 0]) */
INL __m128 wscale_pair(const int F, const uint8_t *a, const uint8_t *b) {
    if (IS_NL(F)) return _mm_setr_ps(el_nl_scale[a[0]], 0.0f, el_nl_scale[b[0]], 0.0f);
    return f16_pair(a, b);
}

/* one pair of weight blocks (a, b) against NC activation rows; LAST: a == b, the copy scaled by zero */
INL void pair_step(const int F, const int NC, const int LAST, const uint8_t *x, const uint8_t *const *yr, int a,
                   int b, __m512 *acc, __m128 *macc) {
    const __m512i idx = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m512i off = _mm512_set1_epi8((char)OFFSET(F));
    const uint8_t *xa = x + (size_t)a * WSIZE(F), *xb = x + (size_t)b * WSIZE(F);
    const __m512i wq = w_pair(F, xa, xb);
    const __m128 wd = wscale_pair(F, xa, xb);
    __m512i ws = wq, negcorr = _mm512_setzero_si512();
    if (NC > 1 && OFFSET(F)) {
        /* signed weights, shared correction: sum((y + 128) * ws) - 128 * sum(ws) */
        if (!RAW_INT8(F)) ws = _mm512_sub_epi8(wq, off);
        negcorr = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, ws));
    }
    const __m512i wu = (NC == 1 && RAW_INT8(F)) ? _mm512_xor_si512(wq, flip) : wq;
    for (int r = 0; r < NC; r++) {
        const uint8_t *ya = yr[r] + (size_t)a * YSIZE(F), *yb = yr[r] + (size_t)b * YSIZE(F);
        const __m512i yq = load_pair(ya + YQS(F), yb + YQS(F));
        __m512i sumi;
        if (!OFFSET(F)) {
            sumi = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wu, yq);
        } else if (NC == 1) {
            sumi = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wu, yq),
                                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, yq));
        } else {
            sumi = _mm512_dpbusd_epi32(negcorr, _mm512_xor_si512(yq, flip), ws);
        }
        __m128 prod = _mm_mul_ps(wd, f16_pair(ya, yb)); /* [dw*dy, m*s] of block a, then block b */
        if (LAST) prod = _mm_blend_ps(prod, _mm_setzero_ps(), 0xC);
        const __m512 scale = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(prod));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), scale, acc[r]);
        if (HAS_MIN(F)) macc[r] = _mm_add_ps(macc[r], prod);
    }
}

/* Sums of four activation rows' products over a pair of blocks (p[r]: lanes 0..7 block a, 8..15 block b) ->
 * one register whose 128-bit lane L holds rows 0..3 (lanes 0, 1: partial sums of block a, lanes 2, 3: of b). */
INL __m512i reduce_rows4(const __m512i *p) {
    const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[0], p[1]), _mm512_unpackhi_epi32(p[0], p[1]));
    const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2], p[3]), _mm512_unpackhi_epi32(p[2], p[3]));
    return _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
}

/* two reduce_rows4 results (pairs (a, b) and (c, d)) -> lane 4k + r: row r, block k of a, b, c, d */
INL __m512i combine_pairs(__m512i u, __m512i v) {
    return _mm512_add_epi32(_mm512_shuffle_i32x4(u, v, _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i32x4(u, v, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* One step of dot32_wide: blocks i .. i + 2 * NP - 1 (NP pairs: 2, or 1 for a tail pair, whose lanes 8..15
 * stay zero and whose header loads stay within its 2 blocks). */
INL void wide_step(const int F, const int NG, const int NP, const uint8_t *x, const uint8_t *const *yr, int i,
                   __m512 *acc, __m512 *macc) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m512i off = _mm512_set1_epi8((char)OFFSET(F));
    const __m512i didx = _mm512_set_epi32(6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2, 0, 0, 0, 0);
    const __m512i midx = _mm512_set_epi32(7, 7, 7, 7, 5, 5, 5, 5, 3, 3, 3, 3, 1, 1, 1, 1);
    /* word 4k + r of row r's selection: block k's d (word k * YSIZE / 2 of the 128 bytes from block 0); word
     * 16 + 4k + r: the next word (s for Q8_1); row r keeps words 4k + r and 16 + 4k + r (hmask << r) */
    const int hw = YSIZE(F) / 2;
    const __m512i hsel = _mm512_set_epi16(3 * hw + 1, 3 * hw + 1, 3 * hw + 1, 3 * hw + 1, 2 * hw + 1, 2 * hw + 1,
                                          2 * hw + 1, 2 * hw + 1, hw + 1, hw + 1, hw + 1, hw + 1, 1, 1, 1, 1, 3 * hw,
                                          3 * hw, 3 * hw, 3 * hw, 2 * hw, 2 * hw, 2 * hw, 2 * hw, hw, hw, hw, hw, 0, 0,
                                          0, 0);
    const __mmask32 hmask = HAS_MIN(F) ? 0x11111111u : 0x1111u;
    const uint8_t *xi = x + (size_t)i * WSIZE(F);
    __m512i ws[2], neg[2];
    for (int h = 0; h < NP; h++) {
        const __m512i wq = w_pair(F, xi + 2 * h * WSIZE(F), xi + (2 * h + 1) * WSIZE(F));
        ws[h] = wq;
        neg[h] = _mm512_setzero_si512();
        if (OFFSET(F)) {
            /* signed weights, shared correction: sum((y + 128) * ws) - 128 * sum(ws) */
            if (!RAW_INT8(F)) ws[h] = _mm512_sub_epi8(wq, off);
            neg[h] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), flip, ws[h]));
        }
    }
    /* the weight blocks' fp16 pairs [d, m] (or d and quant bytes) -> lane 4k + r: d (m) of block k */
    __m256 wh;
    if (IS_NL(F)) {
        const float *sc = el_nl_scale;
        wh = NP == 2 ? _mm256_setr_ps(sc[xi[0]], 0, sc[xi[WSIZE(F)]], 0, sc[xi[2 * WSIZE(F)]], 0, sc[xi[3 * WSIZE(F)]], 0)
                     : _mm256_setr_ps(sc[xi[0]], 0, sc[xi[WSIZE(F)]], 0, 0, 0, 0, 0);
    } else {
        const __m128i wh16 = NP == 2 ? _mm_setr_epi32((int)ld32(xi), (int)ld32(xi + WSIZE(F)),
                                                      (int)ld32(xi + 2 * WSIZE(F)), (int)ld32(xi + 3 * WSIZE(F)))
                                     : _mm_setr_epi32((int)ld32(xi), (int)ld32(xi + WSIZE(F)), 0, 0);
        wh = _mm256_cvtph_ps(wh16);
    }
    const __m512 wd = _mm512_permutexvar_ps(didx, _mm512_castps256_ps512(wh));
    __m512 wm = _mm512_setzero_ps();
    if (HAS_MIN(F)) wm = _mm512_permutexvar_ps(midx, _mm512_castps256_ps512(wh));
    for (int g = 0; g < NG; g++) {
        __m512i u[2];
        u[1] = _mm512_setzero_si512();
        for (int h = 0; h < NP; h++) {
            __m512i p[4];
            for (int r = 0; r < 4; r++) {
                const uint8_t *ya = yr[4 * g + r] + (size_t)(i + 2 * h) * YSIZE(F);
                const __m512i yq = load_pair(ya + YQS(F), ya + YSIZE(F) + YQS(F));
                p[r] = OFFSET(F) ? _mm512_dpbusd_epi32(neg[h], _mm512_xor_si512(yq, flip), ws[h])
                                 : _mm512_dpbusd_epi32(_mm512_setzero_si512(), ws[h], yq);
            }
            u[h] = reduce_rows4(p);
        }
        const __m512i sumi = combine_pairs(u[0], u[1]);
        /* the fp16 headers of the 16 activation blocks: words 4k + r (d) and 16 + 4k + r (s); a tail pair's
         * 2 blocks (>= 68 bytes) hold its headers in the first 64 bytes */
        __m512i hdr = _mm512_setzero_si512();
        for (int r = 0; r < 4; r++) {
            const uint8_t *ya = yr[4 * g + r] + (size_t)i * YSIZE(F);
            const __m512i lo = _mm512_loadu_si512((const void *)ya);
            const __m512i hi = NP == 2 ? _mm512_loadu_si512((const void *)(ya + 64)) : _mm512_setzero_si512();
            hdr = _mm512_or_si512(hdr, _mm512_maskz_permutex2var_epi16(hmask << r, lo, hsel, hi));
        }
        const __m512 dy = _mm512_cvtph_ps(_mm512_castsi512_si256(hdr));
        acc[g] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), _mm512_mul_ps(wd, dy), acc[g]);
        if (HAS_MIN(F)) {
            const __m512 sy = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(hdr, 1));
            macc[g] = _mm512_fmadd_ps(wm, sy, macc[g]);
        }
    }
}

/* Prefill tile of 4 * NG activation rows (NG groups of 4). Per step of 4 weight blocks the weights are unpacked
 * once; each row's products of a pair of blocks are summed within the block across lanes and rows (reduce_rows4,
 * combine_pairs) into one register per group, lane 4k + r = (row r, block k), so the block scales of 4 rows x 4
 * blocks are applied with one conversion and one FMA. The activation scales of those 16 blocks are picked out of
 * each row's first 128 bytes of the step (within its 4 blocks) by one word permute per row (a vpgatherdd was
 * slower than the old per-row path on Zen 5). A tail pair is a half step; a last odd block goes through pair_step. */
INL void dot32_wide(const int F, const int NG, int n, float *s, size_t bs, const void *w, const void *y, size_t by) {
    const uint8_t *x = w;
    const int NC = 4 * NG;
    const uint8_t *yr[8];
    __m512 acc[2], macc[2];
    for (int r = 0; r < NC; r++) yr[r] = (const uint8_t *)y + (size_t)r * by;
    for (int g = 0; g < NG; g++) acc[g] = macc[g] = _mm512_setzero_ps();
    const int nb = n / QK8_0;
    int i = 0;
    for (; i + 4 <= nb; i += 4) wide_step(F, NG, 2, x, yr, i, acc, macc);
    if (i + 2 <= nb) {
        wide_step(F, NG, 1, x, yr, i, acc, macc);
        i += 2;
    }
    /* lanes 4k + r -> row r */
    __m128 tot[2];
    for (int g = 0; g < NG; g++) {
        __m512 a = HAS_MIN(F) ? _mm512_add_ps(acc[g], macc[g]) : acc[g];
        const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
        tot[g] = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    }
    if (i < nb) {
        __m512 tacc[8];
        __m128 tmacc[8];
        for (int r = 0; r < NC; r++) {
            tacc[r] = _mm512_setzero_ps();
            tmacc[r] = _mm_setzero_ps();
        }
        pair_step(F, NC, 1, x, yr, i, i, tacc, tmacc);
        for (int g = 0; g < NG; g++) {
            float t[4];
            for (int r = 0; r < 4; r++) {
                float sum = hsum512(tacc[4 * g + r]);
                if (HAS_MIN(F)) {
                    const __m128 m = _mm_add_ps(tmacc[4 * g + r], _mm_movehl_ps(tmacc[4 * g + r], tmacc[4 * g + r]));
                    sum += _mm_cvtss_f32(_mm_shuffle_ps(m, m, 1));
                }
                t[r] = sum;
            }
            tot[g] = _mm_add_ps(tot[g], _mm_loadu_ps(t));
        }
    }
    for (int g = 0; g < NG; g++) {
        float t[4];
        _mm_storeu_ps(t, tot[g]);
        for (int r = 0; r < 4; r++) s[(size_t)(4 * g + r) * bs] = t[r];
    }
}

INL void dot32_tile(const int F, const int NC, int n, float *s, size_t bs, const void *w, const void *y,
                    size_t by) {
    const uint8_t *x = w;
    const uint8_t *yr[4];
    __m512 acc0[4], acc1[4];
    __m128 macc[4];
    for (int r = 0; r < NC; r++) {
        yr[r] = (const uint8_t *)y + (size_t)r * by;
        acc0[r] = acc1[r] = _mm512_setzero_ps();
        macc[r] = _mm_setzero_ps();
    }
    const int nb = n / QK8_0;
    int i = 0;
    for (; i + 4 <= nb; i += 4) {
        pair_step(F, NC, 0, x, yr, i, i + 1, acc0, macc);
        pair_step(F, NC, 0, x, yr, i + 2, i + 3, acc1, macc);
    }
    if (i + 2 <= nb) {
        pair_step(F, NC, 0, x, yr, i, i + 1, acc0, macc);
        i += 2;
    }
    if (i < nb) pair_step(F, NC, 1, x, yr, i, i, acc1, macc);
    for (int r = 0; r < NC; r++) {
        float sum = hsum512(_mm512_add_ps(acc0[r], acc1[r]));
        if (HAS_MIN(F)) {
            const __m128 m = _mm_add_ps(macc[r], _mm_movehl_ps(macc[r], macc[r])); /* lane 1: m*s of a + b */
            sum += _mm_cvtss_f32(_mm_shuffle_ps(m, m, 1));
        }
        s[(size_t)r * bs] = sum;
    }
}

/* 32-weight formats: nc rows in tiles of 8 and 4 (dot32_wide), then up to 3 with per-row accumulators. */
#define DOT32(F)                                                                                               \
    static void dot_##F(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {        \
        for (; nc >= 8; nc -= 8, s += 8 * bs, y = (const char *)y + 8 * by) dot32_wide(F_##F, 2, n, s, bs, w, y, by); \
        if (nc >= 4) {                                                                                         \
            dot32_wide(F_##F, 1, n, s, bs, w, y, by);                                                          \
            nc -= 4, s += 4 * bs, y = (const char *)y + 4 * by;                                                \
        }                                                                                                      \
        switch (nc) {                                                                                          \
        case 3: dot32_tile(F_##F, 3, n, s, bs, w, y, by); break;                                               \
        case 2: dot32_tile(F_##F, 2, n, s, bs, w, y, by); break;                                               \
        case 1: dot32_tile(F_##F, 1, n, s, bs, w, y, by); break;                                               \
        default: break;                                                                                        \
        }                                                                                                      \
    }
DOT32(Q4_0)
DOT32(Q4_1)
DOT32(Q5_0)
DOT32(Q5_1)
DOT32(Q8_0)
DOT32(Q4_NL)
DOT32(Q3_NL)
DOT32(Q2_NL)

/* ---- k-quants against Q8_K ---- */

/* per-row epilogue of a super-block: four int32 products (64 weights each) with their float scales */
INL __m512 k_sum4(const __m512i p[4], const __m512 sc[4]) {
    __m512 t0 = _mm512_mul_ps(_mm512_cvtepi32_ps(p[0]), sc[0]);
    __m512 t1 = _mm512_mul_ps(_mm512_cvtepi32_ps(p[1]), sc[1]);
    t0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[2]), sc[2], t0);
    t1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[3]), sc[3], t1);
    return _mm512_add_ps(t0, t1);
}

/* Q4_K / Q5_K 6-bit scales and mins: bytes 0..7 scales, 8..15 mins */
INL __m128i k4_scales(const uint8_t *q) {
    uint32_t u[4];
    memcpy(u, q, 12);
    const uint32_t kmask1 = 0x3f3f3f3f, kmask2 = 0x0f0f0f0f, kmask3 = 0x03030303;
    u[3] = ((u[2] >> 4) & kmask2) | (((u[1] >> 6) & kmask3) << 4);
    const uint32_t mins_lo = u[1] & kmask1;
    u[1] = (u[2] & kmask2) | (((u[0] >> 6) & kmask3) << 4);
    u[2] = mins_lo;
    u[0] &= kmask1;
    return _mm_setr_epi32((int)u[0], (int)u[1], (int)u[2], (int)u[3]);
}

/* Q4_K (HIGH = 0) and Q5_K (HIGH = 1): w = d * sc * q - dmin * m per sub-block of 32. Per super-block and
 * row: d * sum(sc * q.y) - dmin * sum(m * bsum), both weight scales folded in before the row's own scale. */
INL void dotk4_tile(const int HIGH, const int NC, int n, float *s, size_t bs, const void *w, const void *y,
                    size_t by) {
    const block_q8_K *yr[8];
    __m512 acc[8];
    for (int r = 0; r < NC; r++) {
        yr[r] = (const block_q8_K *)((const char *)y + (size_t)r * by);
        acc[r] = _mm512_setzero_ps();
    }
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const int nb = n / QK_K;
    for (int i = 0; i < nb; i++) {
        const uint8_t *xb = (const uint8_t *)w + (size_t)i * (HIGH ? sizeof(block_q5_K) : sizeof(block_q4_K));
        const uint8_t *qs = xb + (HIGH ? 48 : 16);
        const float d = _cvtsh_ss(*(const el_fp16_t *)xb), dmin = _cvtsh_ss(*(const el_fp16_t *)(xb + 2));
        const __m128i sm = k4_scales(xb + 4);
        const __m512 scf = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sm)), _mm512_set1_ps(d));
        __m256i mins = _mm256_cvtepu8_epi32(_mm_srli_si128(sm, 8));
        mins = _mm256_or_si256(mins, _mm256_slli_epi32(mins, 16)); /* each min in both int16 halves */
        const __m512 vdmin = _mm512_set1_ps(dmin);
        __m512 sc[4];
        __m512i wq[4];
        __m512i hb;
        if (HIGH) hb = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(xb + 16)));
        for (int j = 0; j < 4; j++) {
            sc[j] = _mm512_permutexvar_ps(_mm512_set_epi32(2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j + 1,
                                                           2 * j + 1, 2 * j + 1, 2 * j + 1, 2 * j, 2 * j, 2 * j,
                                                           2 * j, 2 * j, 2 * j, 2 * j, 2 * j),
                                          scf);
            __m512i z = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(qs + 32 * j)));
            z = _mm512_and_si512(_mm512_mask_srli_epi16(z, 0xFFFF0000u, z, 4), m4);
            if (HIGH) {
                const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * j))),
                                                       _mm256_set1_epi8((char)(2 << (2 * j))), 1);
                z = _mm512_mask_add_epi8(z, _mm512_test_epi8_mask(hb, bit), z, _mm512_set1_epi8(16));
            }
            wq[j] = z;
        }
        for (int r = 0; r < NC; r++) {
            const block_q8_K *q = yr[r] + i;
            __m512i p[4];
            for (int j = 0; j < 4; j++) {
                p[j] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[j],
                                           _mm512_loadu_si512((const void *)(q->qs + 64 * j)));
            }
            const __m256i pm = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)q->bsums), mins);
            const __m512 t = _mm512_fnmadd_ps(_mm512_zextps256_ps512(_mm256_cvtepi32_ps(pm)), vdmin, k_sum4(p, sc));
            acc[r] = _mm512_fmadd_ps(t, _mm512_set1_ps(q->d), acc[r]);
        }
    }
    for (int r = 0; r < NC; r++) s[(size_t)r * bs] = hsum512(acc[r]);
}

/* Q6_K: w = d * sc * (q - 32) per sub-block of 16 */
INL void dotq6k_tile(const int NC, int n, float *s, size_t bs, const void *w, const void *y, size_t by) {
    const block_q6_K *x = w;
    const block_q8_K *yr[8];
    __m512 acc[8];
    for (int r = 0; r < NC; r++) {
        yr[r] = (const block_q8_K *)((const char *)y + (size_t)r * by);
        acc[r] = _mm512_setzero_ps();
    }
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30);
    /* qh bits 0-1 / 2-3 to bits 4-5 (low 32 bytes / high 32 bytes); bits 4-5 / 6-7 likewise */
    const __m512i shl = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i shr = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    const int nb = n / QK_K;
    for (int i = 0; i < nb; i++) {
        const float d = _cvtsh_ss(x[i].d);
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m512 scf = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(sc8)), _mm512_set1_ps(d));
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
        const __m512 d32 = _mm512_set1_ps(32.0f * d);
        __m512 sc[4];
        __m512i wq[4];
        for (int j = 0; j < 4; j++) {
            const int b = 4 * j;
            sc[j] = _mm512_permutexvar_ps(_mm512_set_epi32(b + 3, b + 3, b + 3, b + 3, b + 2, b + 2, b + 2, b + 2,
                                                           b + 1, b + 1, b + 1, b + 1, b, b, b, b),
                                          scf);
        }
        for (int h = 0; h < 2; h++) {
            const __m512i l = _mm512_loadu_si512((const void *)(x[i].ql + 64 * h));
            const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(x[i].qh + 32 * h)));
            wq[2 * h] = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_and_si512(_mm512_sllv_epi16(qh, shl), m30));
            wq[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4),
                                            _mm512_and_si512(_mm512_srlv_epi16(qh, shr), m30));
        }
        for (int r = 0; r < NC; r++) {
            const block_q8_K *q = yr[r] + i;
            __m512i p[4];
            for (int j = 0; j < 4; j++) {
                p[j] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq[j],
                                           _mm512_loadu_si512((const void *)(q->qs + 64 * j)));
            }
            /* the -32 offset: 32 * sum over sub-blocks of sc * bsum */
            const __m256i pm = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)q->bsums), sc16);
            const __m512 t = _mm512_fnmadd_ps(_mm512_zextps256_ps512(_mm256_cvtepi32_ps(pm)), d32, k_sum4(p, sc));
            acc[r] = _mm512_fmadd_ps(t, _mm512_set1_ps(q->d), acc[r]);
        }
    }
    for (int r = 0; r < NC; r++) s[(size_t)r * bs] = hsum512(acc[r]);
}

/* k-quants: nc rows in tiles of 8 and 4, then the remainder */
#define KTILED(name, tile_call)                                                                                \
    static void name(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {           \
        for (; nc >= 8; nc -= 8, s += 8 * bs, y = (const char *)y + 8 * by) tile_call(8);                       \
        if (nc >= 4) {                                                                                         \
            tile_call(4);                                                                                      \
            nc -= 4, s += 4 * bs, y = (const char *)y + 4 * by;                                                \
        }                                                                                                      \
        switch (nc) {                                                                                          \
        case 3: tile_call(3); break;                                                                           \
        case 2: tile_call(2); break;                                                                           \
        case 1: tile_call(1); break;                                                                           \
        default: break;                                                                                        \
        }                                                                                                      \
    }

#define Q4_K_CALL(NC) dotk4_tile(0, NC, n, s, bs, w, y, by)
#define Q5_K_CALL(NC) dotk4_tile(1, NC, n, s, bs, w, y, by)
#define Q6_K_CALL(NC) dotq6k_tile(NC, n, s, bs, w, y, by)
KTILED(dot_Q4_K, Q4_K_CALL)
KTILED(dot_Q5_K, Q5_K_CALL)
KTILED(dot_Q6_K, Q6_K_CALL)

/* ---- attention scores: F32 / F16 key rows against float query rows ----
 * Sixteen keys at a time: each key's products over the head accumulate in one vector, and the sixteen
 * vectors are reduced together (a transpose-add tree) instead of one horizontal sum per key. */
#define ROWS_MAX_BYTES 4096
static const float zero_row[ROWS_MAX_BYTES / sizeof(float)] __attribute__((aligned(64)));

/* lane i of the result = sum of the lanes of v[i] */
static inline __attribute__((always_inline)) __m512 sum16x16(__m512 v[16]) {
    __m512 t[8], u[4];
    for (int i = 0; i < 8; i++) /* 128-bit chunks (a0+a2, a1+a3, b0+b2, b1+b3) */
        t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
    for (int k = 0; k < 4; k++) /* chunk c: four partial sums of v[4k + c] */
        u[k] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * k], t[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(t[2 * k], t[2 * k + 1], 0xDD));
    const __m512 w01 = _mm512_add_ps(_mm512_unpacklo_ps(u[0], u[1]), _mm512_unpackhi_ps(u[0], u[1]));
    const __m512 w23 = _mm512_add_ps(_mm512_unpacklo_ps(u[2], u[3]), _mm512_unpackhi_ps(u[2], u[3]));
    const __m512 y = _mm512_add_ps(_mm512_shuffle_ps(w01, w23, _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_ps(w01, w23, _MM_SHUFFLE(3, 2, 3, 2)));
    /* lane 4c + k holds the sum of v[4k + c] */
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), y);
}

static inline __attribute__((always_inline)) void dot_rows_x16(int n, int m, float *s, size_t bs, const void *y,
                                                               size_t by, int nr, const void *x, size_t bx,
                                                               const int half) {
    const size_t elem = half ? 2 : 4;
    for (int j0 = 0; j0 < m; j0 += 16) {
        const int jn = m - j0 < 16 ? m - j0 : 16;
        const char *rows[16];
        for (int jj = 0; jj < 16; jj++)
            rows[jj] = jj < jn ? (const char *)x + (size_t)(j0 + jj) * bx : (const char *)zero_row;
        for (int r = 0; r < nr; r++) {
            const float *q = (const float *)((const char *)y + (size_t)r * by);
            __m512 acc[16];
            for (int jj = 0; jj < 16; jj++) acc[jj] = _mm512_setzero_ps();
            for (int d = 0; d < n; d += 16) {
                const __mmask16 mk = n - d >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - d)) - 1);
                const __m512 qv = _mm512_maskz_loadu_ps(mk, q + d);
                for (int jj = 0; jj < 16; jj++) {
                    const char *k = rows[jj] + (size_t)d * elem;
                    const __m512 kv = half ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, k))
                                           : _mm512_maskz_loadu_ps(mk, (const float *)k);
                    acc[jj] = _mm512_fmadd_ps(qv, kv, acc[jj]);
                }
            }
            _mm512_mask_storeu_ps(s + (size_t)r * bs + j0, (__mmask16)((1u << jn) - 1), sum16x16(acc));
        }
    }
}

static void dot_rows_f32(int n, int m, float *s, size_t bs, const void *y, size_t by, int nr, const void *x,
                         size_t bx) {
    if ((size_t)n * 4 > ROWS_MAX_BYTES) {
        el_dot_rows_each(el_traits[EL_F32].dot, n, m, s, bs, y, by, nr, x, bx);
        return;
    }
    dot_rows_x16(n, m, s, bs, y, by, nr, x, bx, 0);
}

static void dot_rows_f16(int n, int m, float *s, size_t bs, const void *y, size_t by, int nr, const void *x,
                         size_t bx) {
    if ((size_t)n * 2 > ROWS_MAX_BYTES) {
        el_dot_rows_each(el_traits[EL_F16].dot, n, m, s, bs, y, by, nr, x, bx);
        return;
    }
    dot_rows_x16(n, m, s, bs, y, by, nr, x, bx, 1);
}

/* ---- weighted sums of F32 / F16 rows (attention's P V) ----
 * Columns in chunks of 64 (four vectors, masked at the tail), weight rows in groups of up to four: each
 * chunk of a cache row is loaded once per group and accumulated into 16 registers. */
static inline __attribute__((always_inline)) void mix_tile(const int NR, int w, int m, float *s, size_t bs,
                                                           const float *p, size_t bp, const char *x, size_t bx,
                                                           int half) {
    __mmask16 mk[4];
    for (int k = 0; k < 4; k++) {
        const int left = w - 16 * k;
        mk[k] = left >= 16 ? (__mmask16)0xFFFF : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
    }
    __m512 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int k = 0; k < 4; k++) acc[r][k] = _mm512_setzero_ps();
    for (int j = 0; j < m; j++) {
        const char *row = x + (size_t)j * bx;
        __m512 v[4];
        for (int k = 0; k < 4; k++)
            v[k] = half ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk[k], (const el_fp16_t *)row + 16 * k))
                       : _mm512_maskz_loadu_ps(mk[k], (const float *)row + 16 * k);
        for (int r = 0; r < NR; r++) {
            const __m512 pj = _mm512_set1_ps(p[(size_t)r * bp + j]);
            for (int k = 0; k < 4; k++) acc[r][k] = _mm512_fmadd_ps(pj, v[k], acc[r][k]);
        }
    }
    for (int r = 0; r < NR; r++)
        for (int k = 0; k < 4; k++) _mm512_mask_storeu_ps(s + (size_t)r * bs + 16 * k, mk[k], acc[r][k]);
}

static void mix_x16(int n, int m, float *s, size_t bs, const float *p, size_t bp, int nr, const void *x, size_t bx,
                    int half) {
    const size_t elem = half ? 2 : 4;
    for (int d0 = 0; d0 < n; d0 += 64) {
        const int w = n - d0 < 64 ? n - d0 : 64;
        const char *xc = (const char *)x + (size_t)d0 * elem;
        for (int r0 = 0; r0 < nr; r0 += 4) {
            float *sr = s + (size_t)r0 * bs + d0;
            const float *pr = p + (size_t)r0 * bp;
            switch (nr - r0 < 4 ? nr - r0 : 4) {
            case 4: mix_tile(4, w, m, sr, bs, pr, bp, xc, bx, half); break;
            case 3: mix_tile(3, w, m, sr, bs, pr, bp, xc, bx, half); break;
            case 2: mix_tile(2, w, m, sr, bs, pr, bp, xc, bx, half); break;
            default: mix_tile(1, w, m, sr, bs, pr, bp, xc, bx, half); break;
            }
        }
    }
}

static void mix_f32(int n, int m, float *s, size_t bs, const float *p, size_t bp, int nr, const void *x, size_t bx) {
    mix_x16(n, m, s, bs, p, bp, nr, x, bx, 0);
}

static void mix_f16(int n, int m, float *s, size_t bs, const float *p, size_t bp, int nr, const void *x, size_t bx) {
    mix_x16(n, m, s, bs, p, bp, nr, x, bx, 1);
}

/* ---- 16 interleaved rows (el_pack16): lane i of every vector is row i ---- */

/* the two fp16 values at p (an activation block's scale, and Q8_1's sum) as floats in lanes 0 and 1: one 32-bit load
 * and one conversion for both */
INL __m128 f16_scales(const void *p) { return _mm_cvtph_ps(_mm_cvtsi32_si128((int)ld32(p))); }

/* acc += unsigned bytes of w times the signed 4-byte group at p in every lane, the group broadcast from memory by
 * the instruction itself ({1to16}): GCC issues a separate broadcast for _mm512_set1_epi32, one more uop per
 * product, which a multi-row tile pays for every row */
INL __m512i dpbusd_splat(__m512i acc, __m512i w, const void *p) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(w), "m"(*(const int32_t *)p));
    return acc;
}

/* Q4_1 against Q8_1 activations: sum_i d_w d_y q_w q_y + m_w s_y per block */
INL void gemm16_q4_1_tile(const int NC, int n, float *s, size_t bs, const uint8_t *w, const uint8_t *y, size_t by) {
    __m512 acc[8];
    for (int a = 0; a < NC; a++) acc[a] = _mm512_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const int nb = n / QK8_1;
    for (int b = 0; b < nb; b++, w += 16 * sizeof(block_q4_1)) {
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)w));
        const __m512 mw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + 32)));
        __m512i wk[8];
        for (int j = 0; j < 4; j++) {
            const __m512i p = _mm512_loadu_si512((const void *)(w + 64 + 64 * j));
            wk[j] = _mm512_and_si512(p, m4);
            wk[j + 4] = _mm512_and_si512(_mm512_srli_epi16(p, 4), m4);
        }
        for (int a = 0; a < NC; a++) {
            const uint8_t *yb = y + (size_t)a * by + (size_t)b * sizeof(block_q8_1);
            __m512i sum = _mm512_setzero_si512();
            for (int k = 0; k < 8; k++) sum = dpbusd_splat(sum, wk[k], yb + 4 + 4 * k);
            const __m128 ds = f16_scales(yb);
            acc[a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, _mm512_broadcastss_ps(ds)), acc[a]);
            acc[a] = _mm512_fmadd_ps(mw, _mm512_broadcastss_ps(_mm_movehdup_ps(ds)), acc[a]);
        }
    }
    for (int a = 0; a < NC; a++) _mm512_storeu_ps(s + (size_t)a * bs, acc[a]);
}

/* Q8_0 against Q8_0 activations flipped to unsigned: sum (q_y + 128) q_w - 128 wsum, times d_w d_y */
INL void gemm16_q8_0_tile(const int NC, int n, float *s, size_t bs, const uint8_t *w, const uint8_t *y, size_t by) {
    __m512 acc[8];
    for (int a = 0; a < NC; a++) acc[a] = _mm512_setzero_ps();
    const int nb = n / QK8_0;
    for (int b = 0; b < nb; b++, w += 16 * (sizeof(block_q8_0) + 2)) {
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)w));
        const __m512i corr =
            _mm512_slli_epi32(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(w + 32))), 7);
        __m512i wk[8];
        for (int k = 0; k < 8; k++) wk[k] = _mm512_loadu_si512((const void *)(w + 64 + 64 * k));
        for (int a = 0; a < NC; a++) {
            const uint8_t *yb = y + (size_t)a * by + (size_t)b * sizeof(block_q8_0);
            __m512i sum = _mm512_sub_epi32(_mm512_setzero_si512(), corr);
            for (int k = 0; k < 8; k++) sum = _mm512_dpbusd_epi32(sum, _mm512_set1_epi32((int)ld32(yb + 2 + 4 * k)), wk[k]);
            acc[a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, _mm512_broadcastss_ps(f16_scales(yb))), acc[a]);
        }
    }
    for (int a = 0; a < NC; a++) _mm512_storeu_ps(s + (size_t)a * bs, acc[a]);
}

#define GEMM16(NAME, TILE)                                                                                     \
    static void NAME(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {          \
        switch (nc) {                                                                                          \
        case 8: TILE(8, n, s, bs, w, y, by); break;                                                            \
        case 7: TILE(7, n, s, bs, w, y, by); break;                                                            \
        case 6: TILE(6, n, s, bs, w, y, by); break;                                                            \
        case 5: TILE(5, n, s, bs, w, y, by); break;                                                            \
        case 4: TILE(4, n, s, bs, w, y, by); break;                                                            \
        case 3: TILE(3, n, s, bs, w, y, by); break;                                                            \
        case 2: TILE(2, n, s, bs, w, y, by); break;                                                            \
        case 1: TILE(1, n, s, bs, w, y, by); break;                                                            \
        default: break;                                                                                        \
        }                                                                                                      \
    }
GEMM16(gemm16_q4_1, gemm16_q4_1_tile)
GEMM16(gemm16_q8_0, gemm16_q8_0_tile)

static void glu_f32(float *g, const float *u, size_t n, int gelu) { el_glu_rows(g, u, n, gelu); }

void el_register_avx512(el_type_traits *t) {
    t[EL_F32].glu = glu_f32;
    t[EL_F32].mix = mix_f32;
    t[EL_F16].mix = mix_f16;
    t[EL_F32].dot_rows = dot_rows_f32;
    t[EL_F16].dot_rows = dot_rows_f16;
    t[EL_Q4_0].dot = dot_Q4_0;
    t[EL_Q4_1].dot = dot_Q4_1;
    t[EL_Q5_0].dot = dot_Q5_0;
    t[EL_Q5_1].dot = dot_Q5_1;
    t[EL_Q8_0].dot = dot_Q8_0;
    t[EL_Q4_NL].dot = dot_Q4_NL;
    t[EL_Q3_NL].dot = dot_Q3_NL;
    t[EL_Q2_NL].dot = dot_Q2_NL;
    t[EL_Q4_K].dot = dot_Q4_K;
    t[EL_Q5_K].dot = dot_Q5_K;
    t[EL_Q6_K].dot = dot_Q6_K;
    t[EL_Q4_1].gemm16 = gemm16_q4_1;
    t[EL_Q8_0].gemm16 = gemm16_q8_0;
}
#else
void el_register_avx512(el_type_traits *t) { (void)t; }
#endif
