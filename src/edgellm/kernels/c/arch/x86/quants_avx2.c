/* AVX2 kernels. Compiled for every x86-64 build with a target pragma, used only when the CPU has it.
 *
 * Activation quantizers give the generic results bit for bit (q8_0/q8_1 round half away from zero as roundf,
 * q8_K rounds half to even as ggml's nearest_int). Dot kernels follow ggml-cpu/arch/x86/quants.c's math:
 * int8 products through maddubs (unsigned x signed) and madd (widening, and the sub-block scale where there
 * is one), one float fma per block and activation row.
 *
 * Every dot kernel is a "tile" inlined for NC = 1..4 activation rows: a weight block is unpacked once into
 * registers and multiplied against every row of the tile (prefill). NC == 1 (decode) takes two blocks per step
 * into two accumulators for the legacy formats; the k-quants have enough independent work per super-block.
 */
#include <string.h>

#include "../../edgellm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#define EL_AI static inline __attribute__((always_inline))
#define PF_BYTES 384 /* decode prefetch distance into the weight row */

EL_AI float f16(el_fp16_t h) { return _cvtsh_ss(h); }

EL_AI float hsum8(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

EL_AI int hsum8i(__m256i v) {
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    r = _mm_add_epi32(r, _mm_unpackhi_epi64(r, r));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(r);
}

/* 16 bytes of packed nibbles -> 32 bytes: low nibbles in the low lane (weights 0..15), high in the high lane */
EL_AI __m256i nibbles32(const uint8_t *p) {
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_and_si256(_mm256_srlv_epi64(b, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(0x0F));
}

/* 32 bits -> 32 bytes, 0xFF where the bit is set (byte j <- bit j) */
EL_AI __m256i bits32(const uint8_t *p) {
    uint32_t m;
    memcpy(&m, p, 4);
    const __m256i spread = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0);
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)m), spread);
    const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel);
}

/* sum of the 32 int8 products, as 8 int32 lanes: x signed, ax = |x|, y signed */
EL_AI __m256i dot_i8(__m256i ax, __m256i x, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(y, x)), _mm256_set1_epi16(1));
}

/* x unsigned (< 128), y signed */
EL_AI __m256i dot_u8(__m256i x, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
}

EL_AI __m256i load256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* ---------------------------------------------------------------------------------------------------------- */
/* activation quantizers                                                                                      */

/* roundf (half away from zero) of 8 floats, as int32: |v| + 0.5 - ulp then truncate is exact for every float */
EL_AI __m256i round_away(__m256 v) {
    const __m256 half = _mm256_or_ps(_mm256_and_ps(v, _mm256_set1_ps(-0.0f)), _mm256_set1_ps(0.49999997f));
    return _mm256_cvttps_epi32(_mm256_add_ps(v, half));
}

/* 4 x 8 int32 (each in int8 range) -> 32 int8 in order */
EL_AI __m256i pack32(__m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

EL_AI float absmax32(const float *x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x)), _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8)));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 16)));
    m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 24)));
    __m128 r = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    r = _mm_max_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

EL_AI void quantize_block32(const float *x, int8_t *qs, float *d_out, int *sum_out) {
    const float amax = absmax32(x);
    const float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f; /* the generic kernel's exact expressions */
    const __m256 m = _mm256_set1_ps(id);
    const __m256i i0 = round_away(_mm256_mul_ps(_mm256_loadu_ps(x), m));
    const __m256i i1 = round_away(_mm256_mul_ps(_mm256_loadu_ps(x + 8), m));
    const __m256i i2 = round_away(_mm256_mul_ps(_mm256_loadu_ps(x + 16), m));
    const __m256i i3 = round_away(_mm256_mul_ps(_mm256_loadu_ps(x + 24), m));
    _mm256_storeu_si256((__m256i *)qs, pack32(i0, i1, i2, i3));
    *d_out = d;
    if (sum_out) *sum_out = hsum8i(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
}

static void el_quantize_row_q8_0_avx2(const float *x, void *vy, int64_t k) {
    block_q8_0 *y = vy;
    for (int64_t i = 0; i < k / QK8_0; i++, x += QK8_0) {
        float d;
        quantize_block32(x, y[i].qs, &d, NULL);
        y[i].d = _cvtss_sh(d, 0);
    }
}

static void el_quantize_row_q8_1_avx2(const float *x, void *vy, int64_t k) {
    block_q8_1 *y = vy;
    for (int64_t i = 0; i < k / QK8_1; i++, x += QK8_1) {
        float d;
        int sum;
        quantize_block32(x, y[i].qs, &d, &sum);
        y[i].d = _cvtss_sh(d, 0);
        y[i].s = _cvtss_sh(d * (float)sum, 0);
    }
}

static void el_quantize_row_q8_K_avx2(const float *x, void *vy, int64_t k) {
    block_q8_K *y = vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < k / QK_K; i++, x += QK_K) {
        __m256 m = _mm256_setzero_ps();
        for (int j = 0; j < QK_K; j += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
        __m128 r = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        r = _mm_max_ps(r, _mm_movehl_ps(r, r));
        r = _mm_max_ss(r, _mm_movehdup_ps(r));
        const float amax = _mm_cvtss_f32(r);
        if (!amax) {
            memset(&y[i], 0, sizeof(block_q8_K));
            continue;
        }
        /* the signed value of the first element with the largest magnitude, as the generic loop picks it */
        float max = amax;
        const __m256 va = _mm256_set1_ps(amax);
        for (int j = 0; j < QK_K; j += 8) {
            const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)), va, _CMP_EQ_OQ));
            if (hit) {
                max = x[j + __builtin_ctz((unsigned)hit)];
                break;
            }
        }
        const float iscale = -127.0f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
        for (int j = 0; j < QK_K; j += 32) {
            __m256i q[4];
            for (int u = 0; u < 4; u++) {
                const __m256 v = _mm256_mul_ps(vs, _mm256_loadu_ps(x + j + 8 * u));
                q[u] = _mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
            }
            _mm256_storeu_si256((__m256i *)(y[i].qs + j), pack32(q[0], q[1], q[2], q[3])); /* saturates at 127 */
        }
        /* bsums: sums of 16 quants. Per 32 quants: 8 int32 sums of 4, the low lane holding the first 16 */
        const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
        __m256i p[8];
        for (int u = 0; u < 8; u++) p[u] = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, load256(y[i].qs + 32 * u)), ones16);
        /* per lane: [s0 s2 s4 s6 | s1 s3 s5 s7] for u = 0..3 (low lane even sums, high lane odd sums) */
        const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
        const __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
        const __m256i ab = _mm256_packs_epi32(a, b); /* low lane: even bsums 0..14, high lane: odd 1..15 */
        const __m128i ev = _mm256_castsi256_si128(ab), od = _mm256_extracti128_si256(ab, 1);
        _mm_storeu_si128((__m128i *)y[i].bsums, _mm_unpacklo_epi16(ev, od));
        _mm_storeu_si128((__m128i *)(y[i].bsums + 8), _mm_unpackhi_epi16(ev, od));
        y[i].d = 1.0f / iscale;
    }
}

/* ---------------------------------------------------------------------------------------------------------- */
/* legacy 32-weight formats: one step = one weight block against NC activation rows                            */

#define ROW(T, c) ((const T *)((const char *)y + (size_t)(c) * by) + i)

/* signed weights (Q4_0, Q5_0, Q8_0) against Q8_0 */
EL_AI void step_signed(__m256i qx, float dx, const void *y, size_t by, int i, __m256 *acc, const int NC) {
    const __m256i ax = _mm256_sign_epi8(qx, qx);
#pragma GCC unroll 4
    for (int c = 0; c < NC; c++) {
        const block_q8_0 *q = ROW(block_q8_0, c);
        const __m256 p = _mm256_cvtepi32_ps(dot_i8(ax, qx, load256(q->qs)));
        acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(dx * f16(q->d)), p, acc[c]);
    }
}

/* unsigned weights with a min (Q4_1, Q5_1) against Q8_1: (d, m) of the weights and (d, s) of the activations
 * are adjacent fp16 pairs, converted and multiplied together; lane 1 of accm collects m * s */
EL_AI void step_min(__m256i qx, const el_fp16_t *dm, const void *y, size_t by, int i, __m256 *acc, __m128 *accm,
                    const int NC) {
    uint32_t u;
    memcpy(&u, dm, 4);
    const __m128 xdm = _mm_cvtph_ps(_mm_cvtsi32_si128((int)u));
#pragma GCC unroll 4
    for (int c = 0; c < NC; c++) {
        const block_q8_1 *q = ROW(block_q8_1, c);
        uint32_t v;
        memcpy(&v, &q->d, 4);
        const __m128 prod = _mm_mul_ps(xdm, _mm_cvtph_ps(_mm_cvtsi32_si128((int)v))); /* d*d, m*s */
        const __m256 p = _mm256_cvtepi32_ps(dot_u8(qx, load256(q->qs)));
        acc[c] = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), p, acc[c]);
        accm[c] = _mm_add_ps(accm[c], prod);
    }
}

EL_AI void step_q4_0(const block_q4_0 *x, const void *y, size_t by, int i, __m256 *acc, __m128 *accm, const int NC) {
    (void)accm;
    if (NC == 1) { /* one row: (q - 8) . y as q . y - 8 . y in int16, cheaper than the sign trick */
        const block_q8_0 *q = ROW(block_q8_0, 0);
        const __m256i qy = load256(q->qs);
        const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(nibbles32(x->qs), qy), _mm256_maddubs_epi16(_mm256_set1_epi8(8), qy));
        const __m256 f = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
        acc[0] = _mm256_fmadd_ps(_mm256_set1_ps(f16(x->d) * f16(q->d)), f, acc[0]);
        return;
    }
    step_signed(_mm256_sub_epi8(nibbles32(x->qs), _mm256_set1_epi8(8)), f16(x->d), y, by, i, acc, NC);
}

EL_AI void step_q5_0(const block_q5_0 *x, const void *y, size_t by, int i, __m256 *acc, __m128 *accm, const int NC) {
    (void)accm;
    /* a clear fifth bit puts 0xF0 in the high nibble: (q | 0xF0) as int8 is q - 16 */
    const __m256i hi = _mm256_andnot_si256(bits32(x->qh), _mm256_set1_epi8((char)0xF0));
    step_signed(_mm256_or_si256(nibbles32(x->qs), hi), f16(x->d), y, by, i, acc, NC);
}

EL_AI void step_q8_0(const block_q8_0 *x, const void *y, size_t by, int i, __m256 *acc, __m128 *accm, const int NC) {
    (void)accm;
    step_signed(load256(x->qs), f16(x->d), y, by, i, acc, NC);
}

EL_AI void step_q4_1(const block_q4_1 *x, const void *y, size_t by, int i, __m256 *acc, __m128 *accm, const int NC) {
    step_min(nibbles32(x->qs), &x->d, y, by, i, acc, accm, NC);
}

EL_AI void step_q5_1(const block_q5_1 *x, const void *y, size_t by, int i, __m256 *acc, __m128 *accm, const int NC) {
    const __m256i hi = _mm256_and_si256(bits32(x->qh), _mm256_set1_epi8(0x10));
    step_min(_mm256_or_si256(nibbles32(x->qs), hi), &x->d, y, by, i, acc, accm, NC);
}

/* NL formats: codes -> int8 weights through a byte shuffle of the grid, then as Q8_0 */
EL_AI __m256i grid_lookup(const int8_t *grid, __m256i codes) { /* grid: a 16-byte table (edgellm.h) */
    return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)grid)), codes);
}

/* 8 bytes of 2-bit codes -> 32 bytes: code j (bits 2 * (j / 8) of byte j % 8) at byte j */
EL_AI __m256i low2_codes(const uint8_t *p) {
    uint64_t u;
    memcpy(&u, p, 8);
    const __m256i z = _mm256_srlv_epi64(_mm256_set1_epi64x((long long)u), _mm256_set_epi64x(6, 4, 2, 0));
    return _mm256_and_si256(z, _mm256_set1_epi8(3));
}

EL_AI void step_q4_nl(const block_q4_nl *x, const void *y, size_t by, int i, __m256 *acc, __m128 *accm, const int NC) {
    (void)accm;
    step_signed(grid_lookup(el_grid_q4_nl, nibbles32(x->qs)), el_nl_scale[x->e], y, by, i, acc, NC);
}

EL_AI void step_q3_nl(const block_q3_nl *x, const void *y, size_t by, int i, __m256 *acc, __m128 *accm, const int NC) {
    (void)accm;
    const __m256i codes = _mm256_or_si256(low2_codes(x->qs), _mm256_and_si256(bits32(x->qh), _mm256_set1_epi8(4)));
    step_signed(grid_lookup(el_grid_q3_nl, codes), el_nl_scale[x->e], y, by, i, acc, NC);
}

EL_AI void step_q2_nl(const block_q2_nl *x, const void *y, size_t by, int i, __m256 *acc, __m128 *accm, const int NC) {
    (void)accm;
    step_signed(grid_lookup(el_grid_q2_nl, low2_codes(x->qs)), el_nl_scale[x->e], y, by, i, acc, NC);
}

/* The tile (one weight row, NC activation rows) and the kernel that cuts nc rows into tiles of up to 4. */
#define DOT_KERNEL(FN, BX, BLK, TILE)                                                                          \
    static void FN(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc) {              \
        const int nb = n / (BLK);                                                                              \
        const char *yy = y;                                                                                    \
        for (; nc >= 4; nc -= 4, s += 4 * bs, yy += 4 * by) TILE(nb, s, bs, (const BX *)w, yy, by, 4);        \
        switch (nc) {                                                                                          \
        case 3: TILE(nb, s, bs, (const BX *)w, yy, by, 3); break;                                              \
        case 2: TILE(nb, s, bs, (const BX *)w, yy, by, 2); break;                                              \
        case 1: TILE(nb, s, bs, (const BX *)w, yy, by, 1); break;                                              \
        default: break;                                                                                        \
        }                                                                                                      \
    }

#define LEGACY_DOT(FN, BX, BLK, STEP)                                                                          \
    EL_AI void FN##_tile(int nb, float *s, size_t bs, const BX *x, const void *y, size_t by, const int NC) {  \
        __m256 acc[4], acc2[4];                                                                                \
        __m128 accm[4], accm2[4];                                                                              \
        for (int c = 0; c < 4; c++) {                                                                          \
            acc[c] = acc2[c] = _mm256_setzero_ps();                                                            \
            accm[c] = accm2[c] = _mm_setzero_ps();                                                             \
        }                                                                                                      \
        int i = 0;                                                                                             \
        if (NC == 1) {                                                                                         \
            for (; i + 2 <= nb; i += 2) {                                                                      \
                _mm_prefetch((const char *)(x + i) + PF_BYTES, _MM_HINT_T0);                                   \
                STEP(x + i, y, by, i, acc, accm, 1);                                                           \
                STEP(x + i + 1, y, by, i + 1, acc2, accm2, 1);                                                 \
            }                                                                                                  \
        }                                                                                                      \
        for (; i < nb; i++) STEP(x + i, y, by, i, acc, accm, NC);                                              \
        for (int c = 0; c < NC; c++) {                                                                         \
            const __m128 m = _mm_add_ps(accm[c], accm2[c]);                                                    \
            s[(size_t)c * bs] = hsum8(_mm256_add_ps(acc[c], acc2[c])) + _mm_cvtss_f32(_mm_movehdup_ps(m));     \
        }                                                                                                      \
    }                                                                                                          \
    DOT_KERNEL(FN, BX, BLK, FN##_tile)

LEGACY_DOT(el_vec_dot_q4_0_q8_0_avx2, block_q4_0, QK4_0, step_q4_0)
LEGACY_DOT(el_vec_dot_q4_1_q8_1_avx2, block_q4_1, QK4_1, step_q4_1)
LEGACY_DOT(el_vec_dot_q5_0_q8_0_avx2, block_q5_0, QK5_0, step_q5_0)
LEGACY_DOT(el_vec_dot_q5_1_q8_1_avx2, block_q5_1, QK5_1, step_q5_1)
LEGACY_DOT(el_vec_dot_q8_0_q8_0_avx2, block_q8_0, QK8_0, step_q8_0)
LEGACY_DOT(el_vec_dot_q4_nl_q8_0_avx2, block_q4_nl, QK_NL, step_q4_nl)
LEGACY_DOT(el_vec_dot_q3_nl_q8_0_avx2, block_q3_nl, QK_NL, step_q3_nl)
LEGACY_DOT(el_vec_dot_q2_nl_q8_0_avx2, block_q2_nl, QK_NL, step_q2_nl)

/* ---------------------------------------------------------------------------------------------------------- */
/* k-quants against Q8_K: per super-block, int32 sums per row (scales applied by madd), then one fma per row    */

/* Scales of 16-weight sub-blocks as 16 int16 (low lane: sub-blocks 0..7, high lane: 8..15). half(.., h) puts
 * lane h in both lanes; pair_scale(.., k) then gives a vector whose low lane is sub-block 2k of that half and
 * whose high lane is 2k+1: the scales of the 32 weights 32k..32k+31 of the half. */
EL_AI __m256i half_scales(__m256i sc16, int h) {
    return h ? _mm256_permute2x128_si256(sc16, sc16, 0x11) : _mm256_permute2x128_si256(sc16, sc16, 0x00);
}
EL_AI __m256i pair_scale(__m256i half, int k) {
    const __m128i lo = _mm_set1_epi16((short)(((4 * k + 1) << 8) | (4 * k)));
    const __m128i hi = _mm_set1_epi16((short)(((4 * k + 3) << 8) | (4 * k + 2)));
    return _mm256_shuffle_epi8(half, _mm256_set_m128i(hi, lo));
}
/* scale k of 8 (as int16 in both lanes' positions 0..7) broadcast to all 16 int16 */
EL_AI __m256i one_scale(__m256i sc16x2, int k) {
    return _mm256_shuffle_epi8(sc16x2, _mm256_set1_epi16((short)(((2 * k + 1) << 8) | (2 * k))));
}

#define ZERO_ROWS(v, zero)                                                                                     \
    for (int c = 0; c < 4; c++) v[c] = zero

EL_AI void q2_K_tile(int nb, float *s, size_t bs, const block_q2_K *x, const void *y, size_t by, const int NC) {
    const __m256i m3 = _mm256_set1_epi8(3);
    __m256 acc[4];
    ZERO_ROWS(acc, _mm256_setzero_ps());
    for (int i = 0; i < nb; i++) {
        const block_q2_K *xb = x + i;
        const __m128i sb = _mm_loadu_si128((const __m128i *)xb->scales);
        const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sb, _mm_set1_epi8(0x0F)));
        const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sb, 4), _mm_set1_epi8(0x0F)));
        __m256i sumi[4];
        ZERO_ROWS(sumi, _mm256_setzero_si256());
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m256i bits = load256(xb->qs + 32 * h);
            const __m256i sh = half_scales(sc16, h);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                const __m256i q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3);
                const __m256i sc = pair_scale(sh, k);
#pragma GCC unroll 4
                for (int c = 0; c < NC; c++) {
                    const __m256i p = _mm256_maddubs_epi16(q, load256(ROW(block_q8_K, c)->qs + 128 * h + 32 * k));
                    sumi[c] = _mm256_add_epi32(sumi[c], _mm256_madd_epi16(p, sc));
                }
            }
        }
        const float d = f16(xb->d), dmin = f16(xb->dmin);
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) {
            const block_q8_K *q = ROW(block_q8_K, c);
            const __m256i pm = _mm256_madd_epi16(mins16, load256(q->bsums));
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * q->d), _mm256_cvtepi32_ps(sumi[c]), acc[c]);
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(-dmin * q->d), _mm256_cvtepi32_ps(pm), acc[c]);
        }
    }
    for (int c = 0; c < NC; c++) s[(size_t)c * bs] = hsum8(acc[c]);
}

EL_AI void q3_K_tile(int nb, float *s, size_t bs, const block_q3_K *x, const void *y, size_t by, const int NC) {
    const __m256i m3 = _mm256_set1_epi8(3), m1 = _mm256_set1_epi8(1);
    __m256 acc[4];
    ZERO_ROWS(acc, _mm256_setzero_ps());
    for (int i = 0; i < nb; i++) {
        const block_q3_K *xb = x + i;
        uint32_t a[3];
        memcpy(a, xb->scales, 12);
        const uint32_t lo4 = 0x0F0F0F0Fu, hi2 = 0x03030303u;
        const __m128i sc8 = _mm_sub_epi8(_mm_setr_epi32((int)((a[0] & lo4) | ((a[2] & hi2) << 4)),
                                                        (int)((a[1] & lo4) | (((a[2] >> 2) & hi2) << 4)),
                                                        (int)(((a[0] >> 4) & lo4) | (((a[2] >> 4) & hi2) << 4)),
                                                        (int)(((a[1] >> 4) & lo4) | (((a[2] >> 6) & hi2) << 4))),
                                         _mm_set1_epi8(32));
        const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
        const __m256i hbits = load256(xb->hmask);
        __m256i sumi[4];
        ZERO_ROWS(sumi, _mm256_setzero_si256());
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m256i bits = load256(xb->qs + 32 * h);
            const __m256i sh = half_scales(sc16, h);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                /* q = low 2 bits | hmask bit (4h + k) << 2, in 0..7; the -4 is taken off through bsums */
                const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(hbits, 4 * h + k), m1);
                const __m256i q = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 2 * k), m3), _mm256_slli_epi16(hb, 2));
                const __m256i sc = pair_scale(sh, k);
#pragma GCC unroll 4
                for (int c = 0; c < NC; c++) {
                    const __m256i p = _mm256_maddubs_epi16(q, load256(ROW(block_q8_K, c)->qs + 128 * h + 32 * k));
                    sumi[c] = _mm256_add_epi32(sumi[c], _mm256_madd_epi16(p, sc));
                }
            }
        }
        const float d = f16(xb->d);
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) {
            const block_q8_K *q = ROW(block_q8_K, c);
            const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(q->bsums)), 2);
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * q->d), _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[c], off)), acc[c]);
        }
    }
    for (int c = 0; c < NC; c++) s[(size_t)c * bs] = hsum8(acc[c]);
}

/* Q4_K / Q5_K scales and mins: 8 of each, 6 bits, packed in 12 bytes (see formats._k4_scales_mins) */
EL_AI void k4_scales(const uint8_t *p, __m256i *scales, __m256i *mins_pairs) {
    uint32_t a[3];
    memcpy(a, p, 12);
    const uint32_t six = 0x3F3F3F3Fu, lo4 = 0x0F0F0F0Fu, hi2 = 0x03030303u;
    const uint32_t sc0 = a[0] & six, sc1 = (a[2] & lo4) | (((a[0] >> 6) & hi2) << 4);
    const uint32_t mn0 = a[1] & six, mn1 = ((a[2] >> 4) & lo4) | (((a[1] >> 6) & hi2) << 4);
    *scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_setr_epi32((int)sc0, (int)sc1, 0, 0)));
    const __m128i mn = _mm_setr_epi32((int)mn0, (int)mn1, 0, 0);
    *mins_pairs = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn, mn)); /* min k for bsums 2k and 2k+1 */
}

EL_AI void q45_K_tile(int nb, float *s, size_t bs, const void *x, size_t bx, const void *y, size_t by, const int NC,
                      const int five) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m1 = _mm256_set1_epi8(1);
    __m256 acc[4];
    ZERO_ROWS(acc, _mm256_setzero_ps());
    for (int i = 0; i < nb; i++) {
        const uint8_t *xb = (const uint8_t *)x + (size_t)i * bx;
        const el_fp16_t *dd = (const el_fp16_t *)xb; /* d, dmin: first in both layouts */
        const uint8_t *qs = five ? ((const block_q5_K *)xb)->qs : ((const block_q4_K *)xb)->qs;
        __m256i scales, mins;
        k4_scales(five ? ((const block_q5_K *)xb)->scales : ((const block_q4_K *)xb)->scales, &scales, &mins);
        __m256i hbits = five ? load256(((const block_q5_K *)xb)->qh) : _mm256_setzero_si256();
        __m256i sumi[4];
        ZERO_ROWS(sumi, _mm256_setzero_si256());
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m256i bits = load256(qs + 32 * j);
            __m256i lo = _mm256_and_si256(bits, m4), hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            if (five) { /* fifth bits: bit 2j of qh for the low nibbles, 2j+1 for the high */
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hbits, m1), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hbits, 1), m1), 4));
                hbits = _mm256_srli_epi16(hbits, 2);
            }
            const __m256i sl = one_scale(scales, 2 * j), sh = one_scale(scales, 2 * j + 1);
#pragma GCC unroll 4
            for (int c = 0; c < NC; c++) {
                const int8_t *q8 = ROW(block_q8_K, c)->qs + 64 * j;
                const __m256i pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load256(q8)), sl);
                const __m256i ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load256(q8 + 32)), sh);
                sumi[c] = _mm256_add_epi32(sumi[c], _mm256_add_epi32(pl, ph));
            }
        }
        const float d = f16(dd[0]), dmin = f16(dd[1]);
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) {
            const block_q8_K *q = ROW(block_q8_K, c);
            const __m256i pm = _mm256_madd_epi16(mins, load256(q->bsums));
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * q->d), _mm256_cvtepi32_ps(sumi[c]), acc[c]);
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(-dmin * q->d), _mm256_cvtepi32_ps(pm), acc[c]);
        }
    }
    for (int c = 0; c < NC; c++) s[(size_t)c * bs] = hsum8(acc[c]);
}

EL_AI void q4_K_tile(int nb, float *s, size_t bs, const block_q4_K *x, const void *y, size_t by, const int NC) {
    q45_K_tile(nb, s, bs, x, sizeof(block_q4_K), y, by, NC, 0);
}
EL_AI void q5_K_tile(int nb, float *s, size_t bs, const block_q5_K *x, const void *y, size_t by, const int NC) {
    q45_K_tile(nb, s, bs, x, sizeof(block_q5_K), y, by, NC, 1);
}

EL_AI void q6_K_tile(int nb, float *s, size_t bs, const block_q6_K *x, const void *y, size_t by, const int NC) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    __m256 acc[4];
    ZERO_ROWS(acc, _mm256_setzero_ps());
    for (int i = 0; i < nb; i++) {
        const block_q6_K *xb = x + i;
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)xb->scales));
        __m256i sumi[4];
        ZERO_ROWS(sumi, _mm256_setzero_si256());
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const __m256i ql0 = load256(xb->ql + 64 * h), ql1 = load256(xb->ql + 64 * h + 32);
            const __m256i qh = load256(xb->qh + 32 * h);
            const __m256i sh = half_scales(sc16, h);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                /* weights 32k..32k+31 of the half: nibble k/2 of ql[32(k%2) + l], bits 2k..2k+1 of qh[l] at bit 4 */
                const __m256i ql = (k & 1) ? ql1 : ql0;
                const __m256i low = (k & 2) ? _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4) : _mm256_and_si256(ql, m4);
                const __m256i high = k == 0 ? _mm256_slli_epi16(qh, 4)
                                   : k == 1 ? _mm256_slli_epi16(qh, 2)
                                   : k == 2 ? qh
                                            : _mm256_srli_epi16(qh, 2);
                const __m256i q = _mm256_or_si256(low, _mm256_and_si256(high, m30)); /* 0..63; -32 via bsums */
                const __m256i sc = pair_scale(sh, k);
#pragma GCC unroll 4
                for (int c = 0; c < NC; c++) {
                    const __m256i p = _mm256_maddubs_epi16(q, load256(ROW(block_q8_K, c)->qs + 128 * h + 32 * k));
                    sumi[c] = _mm256_add_epi32(sumi[c], _mm256_madd_epi16(p, sc));
                }
            }
        }
        const float d = f16(xb->d);
#pragma GCC unroll 4
        for (int c = 0; c < NC; c++) {
            const block_q8_K *q = ROW(block_q8_K, c);
            const __m256i off = _mm256_slli_epi32(_mm256_madd_epi16(sc16, load256(q->bsums)), 5);
            acc[c] = _mm256_fmadd_ps(_mm256_set1_ps(d * q->d), _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[c], off)), acc[c]);
        }
    }
    for (int c = 0; c < NC; c++) s[(size_t)c * bs] = hsum8(acc[c]);
}

DOT_KERNEL(el_vec_dot_q2_K_q8_K_avx2, block_q2_K, QK_K, q2_K_tile)
DOT_KERNEL(el_vec_dot_q3_K_q8_K_avx2, block_q3_K, QK_K, q3_K_tile)
DOT_KERNEL(el_vec_dot_q4_K_q8_K_avx2, block_q4_K, QK_K, q4_K_tile)
DOT_KERNEL(el_vec_dot_q5_K_q8_K_avx2, block_q5_K, QK_K, q5_K_tile)
DOT_KERNEL(el_vec_dot_q6_K_q8_K_avx2, block_q6_K, QK_K, q6_K_tile)

/* ---------------------------------------------------------------------------------------------------------- */
/* float weights against float activations (FMA); NC == 1 keeps 4 accumulators, more rows 2 each              */

EL_AI __m256 load_w_f32(const void *w, int j) { return _mm256_loadu_ps((const float *)w + j); }
EL_AI __m256 load_w_f16(const void *w, int j) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const el_fp16_t *)w + j)));
}
EL_AI __m256 load_w_bf16(const void *w, int j) {
    const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + j)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
EL_AI float one_f32(const void *w, int j) { return ((const float *)w)[j]; }
EL_AI float one_f16(const void *w, int j) { return f16(((const el_fp16_t *)w)[j]); }
EL_AI float one_bf16(const void *w, int j) {
    const uint32_t u = (uint32_t)((const uint16_t *)w)[j] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#define FLOAT_DOT(FN, LOADW, ONEW)                                                                             \
    EL_AI void FN##_tile(int n, float *s, size_t bs, const void *w, const void *y, size_t by, const int NC) { \
        enum { U_MAX = 4 };                                                                                    \
        const int U = NC == 1 ? 4 : 2;                                                                         \
        __m256 acc[4][U_MAX];                                                                                  \
        for (int c = 0; c < 4; c++)                                                                            \
            for (int u = 0; u < U_MAX; u++) acc[c][u] = _mm256_setzero_ps();                                   \
        int j = 0;                                                                                             \
        for (; j + 8 * U <= n; j += 8 * U) {                                                                   \
            _Pragma("GCC unroll 4") for (int u = 0; u < U; u++) {                                              \
                const __m256 wv = LOADW(w, j + 8 * u);                                                         \
                _Pragma("GCC unroll 4") for (int c = 0; c < NC; c++) {                                         \
                    const float *yc = (const float *)((const char *)y + (size_t)c * by);                       \
                    acc[c][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(yc + j + 8 * u), acc[c][u]);               \
                }                                                                                              \
            }                                                                                                  \
        }                                                                                                      \
        for (; j + 8 <= n; j += 8) {                                                                           \
            const __m256 wv = LOADW(w, j);                                                                     \
            _Pragma("GCC unroll 4") for (int c = 0; c < NC; c++) {                                             \
                const float *yc = (const float *)((const char *)y + (size_t)c * by);                           \
                acc[c][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(yc + j), acc[c][0]);                           \
            }                                                                                                  \
        }                                                                                                      \
        for (int c = 0; c < NC; c++) {                                                                         \
            const float *yc = (const float *)((const char *)y + (size_t)c * by);                               \
            __m256 t = _mm256_add_ps(_mm256_add_ps(acc[c][0], acc[c][1]), _mm256_add_ps(acc[c][2], acc[c][3])); \
            float sum = hsum8(t);                                                                              \
            for (int k = j; k < n; k++) sum += ONEW(w, k) * yc[k];                                             \
            s[(size_t)c * bs] = sum;                                                                           \
        }                                                                                                      \
    }                                                                                                          \
    DOT_KERNEL(FN, uint8_t, 1, FN##_tile)

FLOAT_DOT(el_vec_dot_f32_avx2, load_w_f32, one_f32)
FLOAT_DOT(el_vec_dot_f16_avx2, load_w_f16, one_f16)
FLOAT_DOT(el_vec_dot_bf16_avx2, load_w_bf16, one_bf16)

/* ---- attention scores: F32 / F16 key rows against float query rows, eight keys per pass and one hadd
 * tree for their eight sums (rows whose length is not a multiple of 8 take one dot call per key) ---- */
#define ROWS_MAX_BYTES 4096
static const float zero_row[ROWS_MAX_BYTES / sizeof(float)] __attribute__((aligned(32)));

/* lane i of the result = sum of the lanes of v[i] */
static inline __attribute__((always_inline)) __m256 sum8x8(const __m256 v[8]) {
    const __m256 s0123 = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    const __m256 s4567 = _mm256_hadd_ps(_mm256_hadd_ps(v[4], v[5]), _mm256_hadd_ps(v[6], v[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(s0123, s4567, 0x20), _mm256_permute2f128_ps(s0123, s4567, 0x31));
}

static inline __attribute__((always_inline)) void dot_rows_x8(int n, int m, float *s, size_t bs, const void *y,
                                                              size_t by, int nr, const void *x, size_t bx,
                                                              const int half) {
    const size_t elem = half ? 2 : 4;
    for (int j0 = 0; j0 < m; j0 += 8) {
        const int jn = m - j0 < 8 ? m - j0 : 8;
        const char *rows[8];
        for (int jj = 0; jj < 8; jj++)
            rows[jj] = jj < jn ? (const char *)x + (size_t)(j0 + jj) * bx : (const char *)zero_row;
        for (int r = 0; r < nr; r++) {
            const float *q = (const float *)((const char *)y + (size_t)r * by);
            __m256 acc[8];
            for (int jj = 0; jj < 8; jj++) acc[jj] = _mm256_setzero_ps();
            for (int d = 0; d < n; d += 8) {
                const __m256 qv = _mm256_loadu_ps(q + d);
                for (int jj = 0; jj < 8; jj++) {
                    const char *k = rows[jj] + (size_t)d * elem;
                    const __m256 kv = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)k))
                                           : _mm256_loadu_ps((const float *)k);
                    acc[jj] = _mm256_fmadd_ps(qv, kv, acc[jj]);
                }
            }
            float sums[8];
            _mm256_storeu_ps(sums, sum8x8(acc));
            memcpy(s + (size_t)r * bs + j0, sums, sizeof(float) * (size_t)jn);
        }
    }
}

static void dot_rows_f32(int n, int m, float *s, size_t bs, const void *y, size_t by, int nr, const void *x,
                         size_t bx) {
    if (n % 8 || (size_t)n * 4 > ROWS_MAX_BYTES) {
        el_dot_rows_each(el_traits[EL_F32].dot, n, m, s, bs, y, by, nr, x, bx);
        return;
    }
    dot_rows_x8(n, m, s, bs, y, by, nr, x, bx, 0);
}

static void dot_rows_f16(int n, int m, float *s, size_t bs, const void *y, size_t by, int nr, const void *x,
                         size_t bx) {
    if (n % 8 || (size_t)n * 2 > ROWS_MAX_BYTES) {
        el_dot_rows_each(el_traits[EL_F16].dot, n, m, s, bs, y, by, nr, x, bx);
        return;
    }
    dot_rows_x8(n, m, s, bs, y, by, nr, x, bx, 1);
}

/* ---- weighted sums of F32 / F16 rows (attention's P V): columns in chunks of 32, up to four weight rows
 * per pass, the last n % 8 columns in scalar code ---- */
static inline __attribute__((always_inline)) void mix_tile(const int NR, int w, int m, float *s, size_t bs,
                                                           const float *p, size_t bp, const char *x, size_t bx,
                                                           int half) {
    const int nv = w / 8;
    __m256 acc[4][4];
    for (int r = 0; r < 4; r++)
        for (int k = 0; k < 4; k++) acc[r][k] = _mm256_setzero_ps();
    for (int j = 0; j < m; j++) {
        const char *row = x + (size_t)j * bx;
        __m256 v[4];
        for (int k = 0; k < 4; k++)
            v[k] = k >= nv ? _mm256_setzero_ps()
                   : half  ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const el_fp16_t *)row + 8 * k)))
                           : _mm256_loadu_ps((const float *)row + 8 * k);
        for (int r = 0; r < NR; r++) {
            const __m256 pj = _mm256_set1_ps(p[(size_t)r * bp + j]);
            for (int k = 0; k < 4; k++) acc[r][k] = _mm256_fmadd_ps(pj, v[k], acc[r][k]);
        }
    }
    for (int r = 0; r < NR; r++)
        for (int k = 0; k < nv; k++) _mm256_storeu_ps(s + (size_t)r * bs + 8 * k, acc[r][k]);
}

static void mix_x8(int n, int m, float *s, size_t bs, const float *p, size_t bp, int nr, const void *x, size_t bx,
                   int half) {
    const size_t elem = half ? 2 : 4;
    const int n8 = n & ~7;
    for (int d = n8; d < n; d++)
        for (int r = 0; r < nr; r++) {
            float sum = 0.0f;
            for (int j = 0; j < m; j++) {
                const char *row = (const char *)x + (size_t)j * bx;
                sum += p[(size_t)r * bp + j] * (half ? f16(((const el_fp16_t *)row)[d]) : ((const float *)row)[d]);
            }
            s[(size_t)r * bs + d] = sum;
        }
    for (int d0 = 0; d0 < n8; d0 += 32) {
        const int w = n8 - d0 < 32 ? n8 - d0 : 32;
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
    mix_x8(n, m, s, bs, p, bp, nr, x, bx, 0);
}

static void mix_f16(int n, int m, float *s, size_t bs, const float *p, size_t bp, int nr, const void *x, size_t bx) {
    mix_x8(n, m, s, bs, p, bp, nr, x, bx, 1);
}

static void glu_f32(float *g, const float *u, size_t n, int gelu) { el_glu_rows(g, u, n, gelu); }

void el_register_avx2(el_type_traits *t) {
    t[EL_F32].glu = glu_f32;
    t[EL_F32].mix = mix_f32;
    t[EL_F16].mix = mix_f16;
    t[EL_F32].dot_rows = dot_rows_f32;
    t[EL_F16].dot_rows = dot_rows_f16;
    t[EL_Q8_0].from_float = el_quantize_row_q8_0_avx2;
    t[EL_Q8_1].from_float = el_quantize_row_q8_1_avx2;
    t[EL_Q8_K].from_float = el_quantize_row_q8_K_avx2;
    t[EL_Q4_0].dot = el_vec_dot_q4_0_q8_0_avx2;
    t[EL_Q4_1].dot = el_vec_dot_q4_1_q8_1_avx2;
    t[EL_Q5_0].dot = el_vec_dot_q5_0_q8_0_avx2;
    t[EL_Q5_1].dot = el_vec_dot_q5_1_q8_1_avx2;
    t[EL_Q8_0].dot = el_vec_dot_q8_0_q8_0_avx2;
    t[EL_Q4_NL].dot = el_vec_dot_q4_nl_q8_0_avx2;
    t[EL_Q3_NL].dot = el_vec_dot_q3_nl_q8_0_avx2;
    t[EL_Q2_NL].dot = el_vec_dot_q2_nl_q8_0_avx2;
    t[EL_Q2_K].dot = el_vec_dot_q2_K_q8_K_avx2;
    t[EL_Q3_K].dot = el_vec_dot_q3_K_q8_K_avx2;
    t[EL_Q4_K].dot = el_vec_dot_q4_K_q8_K_avx2;
    t[EL_Q5_K].dot = el_vec_dot_q5_K_q8_K_avx2;
    t[EL_Q6_K].dot = el_vec_dot_q6_K_q8_K_avx2;
    t[EL_F32].dot = el_vec_dot_f32_avx2;
    t[EL_F16].dot = el_vec_dot_f16_avx2;
    t[EL_BF16].dot = el_vec_dot_bf16_avx2;
}
#else
void el_register_avx2(el_type_traits *t) { (void)t; }
#endif
