/* AVX512 column-layout kernels (sparse.c). Per 64-output tile and quad of active channels: the four channel
 * rows' tiles are unpacked to bytes (U5: fifth bits added under the bit plane as a byte mask; I8: offset to
 * unsigned, corrected by 128 x the activation sum), interleaved byte by byte within 128-bit lanes so that each
 * 32-bit lane holds four channels of one output, and multiplied by the quad's int8 activations with one
 * vpdpbusd per 16 outputs. The dot order of the layout makes the lanes come out in output order. */
#include <string.h>

#include "../../edgellm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512dq")
#include <immintrin.h>

#define INL static inline __attribute__((always_inline))

/* the 64 positions of a U4 tile as bytes */
INL __m512i u4_tile(const uint8_t *t) {
    const __m256i v = _mm256_loadu_si256((const __m256i *)t), low = _mm256_set1_epi8(15);
    const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

INL void dot_quads(int kind, int n, int32_t *acc, int n_quads, const int8_t *xq, const uint8_t *const *q,
                   size_t hoff) {
    const __m512i sixteen = _mm512_set1_epi8(16), flip = _mm512_set1_epi8((char)0x80);
    int32_t xsum = 0;
    for (int j = 0; j < 4 * n_quads; j++) xsum += xq[j];
    const __m512i correction = _mm512_set1_epi32(kind == EL_COL_I8 ? 128 * xsum : 0);
    memset(acc, 0, sizeof(int32_t) * (size_t)n);
    const size_t seg = kind == EL_COL_I8 ? (size_t)n : (size_t)n / 2;
    for (int j = 0; j < n_quads; j++) { /* quad by quad: each channel row is read in one sequential pass */
        if (j + 2 < n_quads) /* rows are a few cache lines: too short for the hardware prefetcher to follow */
            for (int i = 0; i < 4; i++) {
                const char *row = (const char *)q[4 * (j + 2) + i];
                for (size_t o = 0; o < seg; o += 64) _mm_prefetch(row + o, _MM_HINT_T0);
                if (kind == EL_COL_U5) _mm_prefetch(row + hoff, _MM_HINT_T0);
            }
        int32_t quad;
        memcpy(&quad, xq + 4 * j, 4);
        const __m512i x = _mm512_set1_epi32(quad);
        for (int t = 0; t < n / EL_COL_TILE; t++) {
            __m512i z[4];
            for (int i = 0; i < 4; i++) {
                const uint8_t *row = q[4 * j + i];
                if (kind == EL_COL_I8) {
                    z[i] = _mm512_xor_si512(_mm512_loadu_si512(row + t * 64), flip);
                } else {
                    z[i] = u4_tile(row + t * 32);
                    if (kind == EL_COL_U5) {
                        uint64_t bits;
                        memcpy(&bits, row + hoff + t * 8, 8);
                        z[i] = _mm512_mask_add_epi8(z[i], (__mmask64)bits, z[i], sixteen);
                    }
                }
            }
            const __m512i p12lo = _mm512_unpacklo_epi8(z[0], z[1]), p12hi = _mm512_unpackhi_epi8(z[0], z[1]);
            const __m512i p34lo = _mm512_unpacklo_epi8(z[2], z[3]), p34hi = _mm512_unpackhi_epi8(z[2], z[3]);
            int32_t *out = acc + t * EL_COL_TILE;
            _mm512_storeu_si512(out, _mm512_dpbusd_epi32(_mm512_loadu_si512(out), _mm512_unpacklo_epi16(p12lo, p34lo), x));
            _mm512_storeu_si512(out + 16, _mm512_dpbusd_epi32(_mm512_loadu_si512(out + 16), _mm512_unpackhi_epi16(p12lo, p34lo), x));
            _mm512_storeu_si512(out + 32, _mm512_dpbusd_epi32(_mm512_loadu_si512(out + 32), _mm512_unpacklo_epi16(p12hi, p34hi), x));
            _mm512_storeu_si512(out + 48, _mm512_dpbusd_epi32(_mm512_loadu_si512(out + 48), _mm512_unpackhi_epi16(p12hi, p34hi), x));
        }
    }
    if (kind == EL_COL_I8)
        for (int r = 0; r < n; r += 16)
            _mm512_storeu_si512(acc + r, _mm512_sub_epi32(_mm512_loadu_si512(acc + r), correction));
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
        const __m512 a = _mm512_set1_ps(xs[j]);
        for (int r = 0; r < n; r += 16) {
            const __m512 w = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(q[j] + 2 * r)));
            _mm512_storeu_ps(acc + r, _mm512_fmadd_ps(a, w, _mm512_loadu_ps(acc + r)));
        }
    }
}

static void axpy_f32(int n, float *acc, int n_ch, const float *xs, const uint8_t *const *q) {
    memset(acc, 0, sizeof(float) * (size_t)n);
    for (int j = 0; j < n_ch; j++) {
        const __m512 a = _mm512_set1_ps(xs[j]);
        const float *p = (const float *)q[j];
        for (int r = 0; r < n; r += 16)
            _mm512_storeu_ps(acc + r, _mm512_fmadd_ps(a, _mm512_loadu_ps(p + r), _mm512_loadu_ps(acc + r)));
    }
}

static void scale(int n, float *y, const int32_t *acc, float s, const el_fp16_t *d, const el_fp16_t *m, float sx) {
    const __m512 vs = _mm512_set1_ps(s), vsx = _mm512_set1_ps(sx);
    for (int r = 0; r < n; r += 16) {
        const __m512 a = _mm512_mul_ps(vs, _mm512_cvtepi32_ps(_mm512_loadu_si512(acc + r)));
        __m512 v = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(d + r))), a,
                                   _mm512_loadu_ps(y + r));
        if (m) v = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(m + r))), vsx, v);
        _mm512_storeu_ps(y + r, v);
    }
}

void el_register_columns_avx512(el_col_kernels *k) {
    k->dot[EL_COL_U4] = dot_u4;
    k->dot[EL_COL_U5] = dot_u5;
    k->dot[EL_COL_I8] = dot_i8;
    k->axpy[0] = axpy_f16;
    k->axpy[1] = axpy_f32;
    k->scale = scale;
}
#else
void el_register_columns_avx512(el_col_kernels *k) { (void)k; }
#endif
