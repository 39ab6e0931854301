/* AVX2 column-layout kernels (sparse.c): as the AVX512 ones on half tiles of 32 outputs, with vpmaddubsw +
 * vpmaddwd for the 4-way dot (I8 through |q| and the activation's sign moved onto it, as llama.cpp does). */
#include <string.h>

#include "../../edgellm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#define INL static inline __attribute__((always_inline))

/* 16 in byte i when bit i of the 32 bits is set */
INL __m256i high_bits(uint32_t bits) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);  /* fmt */
    const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    const __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(b, sel), sel), _mm256_set1_epi8(16));
}

INL __m256i dot4(int kind, __m256i q, __m256i x) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (kind == EL_COL_I8) return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(x, q)), ones);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones);
}

INL void dot_quads(int kind, int n, int32_t *acc, int n_quads, const int8_t *xq, const uint8_t *const *q,
                   size_t hoff) {
    const __m256i low = _mm256_set1_epi8(15);
    for (int t = 0; t < n / EL_COL_TILE; t++) {
        __m256i a[2][4];
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 4; i++) a[h][i] = _mm256_setzero_si256();
        for (int j = 0; j < n_quads; j++) {
            __m256i z[2][4]; /* half h: positions 32h..32h+31 */
            for (int i = 0; i < 4; i++) {
                const uint8_t *row = q[4 * j + i];
                if (kind == EL_COL_I8) {
                    z[0][i] = _mm256_loadu_si256((const __m256i *)(row + t * 64));
                    z[1][i] = _mm256_loadu_si256((const __m256i *)(row + t * 64 + 32));
                } else {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(row + t * 32));
                    z[0][i] = _mm256_and_si256(v, low);
                    z[1][i] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                    if (kind == EL_COL_U5) {
                        uint32_t bits[2];
                        memcpy(bits, row + hoff + t * 8, 8);
                        z[0][i] = _mm256_or_si256(z[0][i], high_bits(bits[0]));
                        z[1][i] = _mm256_or_si256(z[1][i], high_bits(bits[1]));
                    }
                }
            }
            int32_t quad;
            memcpy(&quad, xq + 4 * j, 4);
            const __m256i x = _mm256_set1_epi32(quad);
            for (int h = 0; h < 2; h++) {
                const __m256i p12lo = _mm256_unpacklo_epi8(z[h][0], z[h][1]), p12hi = _mm256_unpackhi_epi8(z[h][0], z[h][1]);
                const __m256i p34lo = _mm256_unpacklo_epi8(z[h][2], z[h][3]), p34hi = _mm256_unpackhi_epi8(z[h][2], z[h][3]);
                a[h][0] = _mm256_add_epi32(a[h][0], dot4(kind, _mm256_unpacklo_epi16(p12lo, p34lo), x));
                a[h][1] = _mm256_add_epi32(a[h][1], dot4(kind, _mm256_unpackhi_epi16(p12lo, p34lo), x));
                a[h][2] = _mm256_add_epi32(a[h][2], dot4(kind, _mm256_unpacklo_epi16(p12hi, p34hi), x));
                a[h][3] = _mm256_add_epi32(a[h][3], dot4(kind, _mm256_unpackhi_epi16(p12hi, p34hi), x));
            }
        }
        /* a[h][i] lane k (of 2) holds outputs 16i + 4(2h + k) .. + 3, i.e. outputs 16i + 8h .. 16i + 8h + 7 */
        int32_t *out = acc + t * EL_COL_TILE;
        for (int i = 0; i < 4; i++)
            for (int h = 0; h < 2; h++) _mm256_storeu_si256((__m256i *)(out + 16 * i + 8 * h), a[h][i]);
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
        const __m256 a = _mm256_set1_ps(xs[j]);
        for (int r = 0; r < n; r += 8) {
            const __m256 w = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(q[j] + 2 * r)));
            _mm256_storeu_ps(acc + r, _mm256_fmadd_ps(a, w, _mm256_loadu_ps(acc + r)));
        }
    }
}

static void axpy_f32(int n, float *acc, int n_ch, const float *xs, const uint8_t *const *q) {
    memset(acc, 0, sizeof(float) * (size_t)n);
    for (int j = 0; j < n_ch; j++) {
        const __m256 a = _mm256_set1_ps(xs[j]);
        const float *p = (const float *)q[j];
        for (int r = 0; r < n; r += 8)
            _mm256_storeu_ps(acc + r, _mm256_fmadd_ps(a, _mm256_loadu_ps(p + r), _mm256_loadu_ps(acc + r)));
    }
}

static void scale(int n, float *y, const int32_t *acc, float s, const el_fp16_t *d, const el_fp16_t *m, float sx) {
    const __m256 vs = _mm256_set1_ps(s), vsx = _mm256_set1_ps(sx);
    for (int r = 0; r < n; r += 8) {
        const __m256 a = _mm256_mul_ps(vs, _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(acc + r))));
        __m256 v = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(d + r))), a, _mm256_loadu_ps(y + r));
        if (m) v = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(m + r))), vsx, v);
        _mm256_storeu_ps(y + r, v);
    }
}

void el_register_columns_avx2(el_col_kernels *k) {
    k->dot[EL_COL_U4] = dot_u4;
    k->dot[EL_COL_U5] = dot_u5;
    k->dot[EL_COL_I8] = dot_i8;
    k->axpy[0] = axpy_f16;
    k->axpy[1] = axpy_f32;
    k->scale = scale;
}
#else
void el_register_columns_avx2(el_col_kernels *k) { (void)k; }
#endif
