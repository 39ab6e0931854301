/* Standalone cross-check of the NEON kernels against the generic ones (run under qemu-aarch64 by
 * test_neon_cross.py). Build it together with the kernel library sources:
 *
 *   C=src/edgellm/kernels/c
 *   aarch64-linux-gnu-gcc -march=armv8.2-a+dotprod -O2 -pthread -static -I $C tests/kernels/neon_harness.c \
 *       $C/generic/[all .c] $C/arch/[all dirs]/[all .c] $C/fp16.c $C/dispatch.c $C/threadpool.c $C/matmul.c -lm
 *
 * For every format with a NEON kernel and nc in {1, 3, 4}, the same packed weights and quantized activations go
 * through el_set_isa(EL_ISA_NEON) and el_set_isa(EL_ISA_GENERIC); results must agree within a tolerance
 * relative to sum_i |w_i * y_i| (the kernels differ only in float summation order). Where the generic table
 * has no kernel yet (k-quants), a scalar transcription of ggml's generic kernel in this file stands in.
 * Activation quantizers (Q8_0, Q8_1) must match byte for byte. Attention's dot_rows and mix over F32 / F16
 * cache rows are checked against the generic dot and mix. Last line: "N passed, M failed"; exit status
 * 1 on any failure, 77 when the NEON path is not compiled in (not an AArch64 build). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgellm.h"

static int n_pass, n_fail;

static void check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(int ok, const char *fmt, ...) {
    if (ok) {
        n_pass++;
        return;
    }
    n_fail++;
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

/* ---- deterministic random data ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd_u32(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}
static float rnd_uniform(float lo, float hi) { return lo + (hi - lo) * (float)(rnd_u32() >> 8) / 16777216.0f; }
static float rnd_normal(void) {
    float s = 0.0f;
    for (int i = 0; i < 4; i++) s += rnd_uniform(-1.0f, 1.0f);
    return s;
}
static el_fp16_t rnd_scale(void) { return el_fp32_to_fp16(rnd_uniform(0.2f, 1.0f) * 0.05f / 8.0f); }

/* random quant bits with sane fp16 scales in every block of a row */
static void fill_weights(enum el_type type, void *row, int nblk) {
    const size_t ts = el_traits[type].type_size;
    uint8_t *p = row;
    for (size_t i = 0; i < ts * (size_t)nblk; i++) p[i] = (uint8_t)rnd_u32();
    for (int i = 0; i < nblk; i++) {
        void *b = p + ts * (size_t)i;
        switch (type) {
        case EL_Q4_0: ((block_q4_0 *)b)->d = rnd_scale(); break;
        case EL_Q4_1: ((block_q4_1 *)b)->d = rnd_scale(); ((block_q4_1 *)b)->m = rnd_scale(); break;
        case EL_Q5_0: ((block_q5_0 *)b)->d = rnd_scale(); break;
        case EL_Q8_0: ((block_q8_0 *)b)->d = rnd_scale(); break;
        case EL_Q4_K: ((block_q4_K *)b)->d = rnd_scale(); ((block_q4_K *)b)->dmin = rnd_scale(); break;
        case EL_Q6_K: ((block_q6_K *)b)->d = rnd_scale(); break;
        case EL_Q4_NL:
        case EL_Q3_NL:
        case EL_Q2_NL: ((uint8_t *)b)[0] = (uint8_t)(88 + rnd_u32() % 16); break; /* log scale near 2^-12 */
        default: break;
        }
    }
}

/* kind 0: normal; 1: all zeros; 2: constant; 3: large and tiny magnitudes mixed */
static void fill_floats(float *x, int n, int kind) {
    for (int j = 0; j < n; j++) {
        switch (kind) {
        case 1: x[j] = 0.0f; break;
        case 2: x[j] = 0.75f; break;
        /* 1e2 rather than larger: Q8_1's fp16 s = d * sum(q) overflows near 1e4 (in ggml too) */
        case 3: x[j] = rnd_normal() * ((j / 32) % 2 ? 1e2f : 1e-4f); break;
        default: x[j] = rnd_normal(); break;
        }
    }
}

/* ---- scalar reference (ggml's generic math) and |w|.|y| magnitudes for the tolerance ---- */

static void q4_K_scale_min(int j, const uint8_t *q, int *d, int *m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* weights of one k-quant block as integers with their per-16/32 integer scale, into q[256], sc[256], mn[256] */
static void unpack_k(enum el_type type, const void *blk, int *q, int *sc, int *mn) {
    if (type == EL_Q4_K) {
        const block_q4_K *b = blk;
        for (int j = 0; j < 4; j++) {
            int d1, m1, d2, m2;
            q4_K_scale_min(2 * j, b->scales, &d1, &m1);
            q4_K_scale_min(2 * j + 1, b->scales, &d2, &m2);
            for (int l = 0; l < 32; l++) {
                const int i0 = 64 * j + l, i1 = 64 * j + 32 + l;
                q[i0] = b->qs[32 * j + l] & 0xF; sc[i0] = d1; mn[i0] = m1;
                q[i1] = b->qs[32 * j + l] >> 4; sc[i1] = d2; mn[i1] = m2;
            }
        }
    } else { /* Q6_K */
        const block_q6_K *b = blk;
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
            for (int l = 0; l < 32; l++) {
                int *o = q + 128 * h;
                o[l] = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                o[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            }
        }
        for (int i = 0; i < QK_K; i++) { sc[i] = b->scales[i / 16]; mn[i] = 0; }
    }
}

/* reference dot (double) of one weight row and one activation row; *mag = sum |w_i * y_i| */
static double ref_dot(enum el_type type, int n, const void *w, const void *y, double *mag) {
    double sum = 0.0, m = 0.0;
    if (type == EL_Q4_K || type == EL_Q6_K) {
        static int q[QK_K], sc[QK_K], mn[QK_K];
        for (int i = 0; i < n / QK_K; i++) {
            const block_q8_K *a = (const block_q8_K *)y + i;
            const char *blk = (const char *)w + el_traits[type].type_size * (size_t)i;
            unpack_k(type, blk, q, sc, mn);
            const double d = type == EL_Q4_K ? el_f16(((const block_q4_K *)blk)->d) : el_f16(((const block_q6_K *)blk)->d);
            const double dmin = type == EL_Q4_K ? el_f16(((const block_q4_K *)blk)->dmin) : 0.0;
            for (int j = 0; j < QK_K; j++) {
                const double wj = d * sc[j] * q[j] - dmin * mn[j], yj = (double)a->d * a->qs[j];
                sum += wj * yj;
                m += fabs(wj * yj);
            }
        }
    } else {
        /* legacy formats: weights through the generic dequantizer, activations d * q */
        const int nb = n / 32;
        float *wf = malloc(sizeof(float) * (size_t)n);
        el_traits[type].to_float(w, wf, n);
        const int q81 = el_traits[type].dot_type == EL_Q8_1;
        for (int i = 0; i < nb; i++) {
            const double dy = q81 ? el_f16(((const block_q8_1 *)y)[i].d) : el_f16(((const block_q8_0 *)y)[i].d);
            const int8_t *qs = q81 ? ((const block_q8_1 *)y)[i].qs : ((const block_q8_0 *)y)[i].qs;
            for (int j = 0; j < 32; j++) {
                const double t = (double)wf[32 * i + j] * dy * qs[j];
                sum += t;
                m += fabs(t);
            }
        }
        free(wf);
    }
    *mag = m;
    return sum;
}

/* ---- tests ---- */

static size_t row_bytes(enum el_type t, int n) { return (size_t)(n / el_traits[t].block_size) * el_traits[t].type_size; }

static void test_quantizers(void) {
    static const int lens[] = {32, 224, 3104};
    const enum el_type types[] = {EL_Q8_0, EL_Q8_1};
    for (int ti = 0; ti < 2; ti++) {
        const enum el_type t = types[ti];
        for (int li = 0; li < 3; li++) {
            for (int kind = 0; kind < 5; kind++) {
                const int n = lens[li];
                float *x = malloc(sizeof(float) * (size_t)n);
                if (kind < 4) {
                    fill_floats(x, n, kind);
                } else { /* exact ties: amax 127 gives scale 1, so k + 0.5 must round away from zero */
                    for (int j = 0; j < n; j++) x[j] = j % 32 == 0 ? 127.0f : (float)((int)(rnd_u32() % 200) - 100) + 0.5f;
                }
                const size_t rb = row_bytes(t, n);
                uint8_t *a = malloc(rb), *b = malloc(rb);
                el_set_isa(EL_ISA_GENERIC);
                el_traits[t].from_float(x, a, n);
                el_set_isa(EL_ISA_NEON);
                el_traits[t].from_float(x, b, n);
                size_t first = rb;
                for (size_t i = 0; i < rb; i++) {
                    if (a[i] != b[i]) { first = i; break; }
                }
                check(first == rb, "quantize %s n=%d kind=%d: byte %zu differs (generic %u, neon %u)",
                      el_traits[t].name, n, kind, first, first < rb ? a[first] : 0, first < rb ? b[first] : 0);
                free(x), free(a), free(b);
            }
        }
    }
}

static void test_dot(enum el_type type, int n, int nc, int kind) {
    const enum el_type dt = el_traits[type].dot_type;
    const size_t wb = row_bytes(type, n), yb = row_bytes(dt, n), by = yb + 8; /* padded row stride */
    const size_t bs = 3;                                                     /* output stride */
    void *w = malloc(wb);
    uint8_t *y = calloc((size_t)nc, by);
    float *x = malloc(sizeof(float) * (size_t)n);
    float *s_gen = malloc(sizeof(float) * bs * (size_t)nc), *s_neon = malloc(sizeof(float) * bs * (size_t)nc);
    fill_weights(type, w, n / el_traits[type].block_size);
    el_set_isa(EL_ISA_GENERIC);
    for (int c = 0; c < nc; c++) {
        fill_floats(x, n, c == 1 ? kind : 0);
        el_traits[dt].from_float(x, y + (size_t)c * by, n);
    }
    for (size_t i = 0; i < bs * (size_t)nc; i++) s_gen[i] = s_neon[i] = NAN;
    const el_dot_fn gen = el_traits[type].dot;
    if (gen) gen(n, s_gen, bs, w, y, by, nc);
    el_set_isa(EL_ISA_NEON);
    el_traits[type].dot(n, s_neon, bs, w, y, by, nc);
    for (int c = 0; c < nc; c++) {
        double mag;
        const double ref = ref_dot(type, n, w, y + (size_t)c * by, &mag);
        const double tol = 3e-5 * mag + 1e-30;
        const double expect = gen ? s_gen[(size_t)c * bs] : ref;
        const double got = s_neon[(size_t)c * bs];
        check(fabs(got - expect) <= tol, "dot %s n=%d nc=%d row=%d kind=%d: neon %.9g vs %s %.9g (tol %.3g)",
              el_traits[type].name, n, nc, c, kind, got, gen ? "generic" : "scalar ref", expect, tol);
        /* the scalar reference also bounds the generic kernel (catches a wrong reference as well) */
        check(fabs(got - ref) <= 1e-3 * mag + 1e-30, "dot %s n=%d nc=%d row=%d: neon %.9g vs float64 %.9g",
              el_traits[type].name, n, nc, c, got, ref);
        for (size_t g = 1; g < bs; g++) {
            check(isnan(s_neon[(size_t)c * bs + g]), "dot %s nc=%d: wrote outside s[j * bs]", el_traits[type].name, nc);
        }
    }
    free(w), free(y), free(x), free(s_gen), free(s_neon);
}

static void test_matmul(enum el_type type, int n_rows, int n_cols, int n_tokens) {
    el_pool *pool = el_pool_create(2);
    const size_t wb = row_bytes(type, n_cols);
    void *w = malloc(wb * (size_t)n_rows);
    float *x = malloc(sizeof(float) * (size_t)n_cols * n_tokens);
    float *o_gen = malloc(sizeof(float) * (size_t)n_rows * n_tokens), *o_neon = malloc(sizeof(float) * (size_t)n_rows * n_tokens);
    fill_weights(type, w, (n_cols / el_traits[type].block_size) * n_rows);
    fill_floats(x, n_cols * n_tokens, 0);
    el_set_isa(EL_ISA_GENERIC);
    void *scratch = malloc(el_matmul_scratch_bytes(type, n_cols, n_tokens) + 1);
    const int rg = el_traits[type].dot ? el_matmul(pool, type, w, n_rows, n_cols, x, n_tokens, o_gen, n_rows, scratch) : -1;
    el_set_isa(EL_ISA_NEON);
    const int rn = el_matmul(pool, type, w, n_rows, n_cols, x, n_tokens, o_neon, n_rows, scratch);
    check(rn == 0, "matmul %s: el_matmul returned %d", el_traits[type].name, rn);
    if (rg == 0 && rn == 0) {
        float amax = 0.0f, worst = 0.0f;
        for (int i = 0; i < n_rows * n_tokens; i++) {
            amax = fmaxf(amax, fabsf(o_gen[i]));
            worst = fmaxf(worst, fabsf(o_gen[i] - o_neon[i]));
        }
        check(worst <= 1e-4f * amax, "matmul %s %dx%d x %d tokens: worst diff %g (max |out| %g)", el_traits[type].name,
              n_rows, n_cols, n_tokens, worst, amax);
    }
    free(scratch), free(w), free(x), free(o_gen), free(o_neon);
    el_pool_free(pool);
}

/* attention kernels over F32 / F16 cache rows: NEON against generic (dot_rows: one generic dot per row) */
static void test_attention_rows(const el_type_traits *generic_tab, enum el_type type, int n, int m, int nr) {
    const size_t elem = type == EL_F16 ? 2 : 4, bx = (size_t)n * elem + 8;
    char *x = calloc((size_t)m, bx);
    float *y = malloc(sizeof(float) * (size_t)nr * n), *p = malloc(sizeof(float) * (size_t)nr * m);
    float *a = malloc(sizeof(float) * (size_t)nr * (n > m ? n : m)), *b = malloc(sizeof(float) * (size_t)nr * (n > m ? n : m));
    for (int j = 0; j < m; j++)
        for (int d = 0; d < n; d++) {
            const float v = rnd_normal();
            if (type == EL_F16) ((el_fp16_t *)(x + (size_t)j * bx))[d] = el_fp32_to_fp16(v);
            else ((float *)(x + (size_t)j * bx))[d] = v;
        }
    for (int i = 0; i < nr * n; i++) y[i] = rnd_normal();
    for (int i = 0; i < nr * m; i++) p[i] = rnd_uniform(0.0f, 1.0f);
    el_traits[type].dot_rows(n, m, a, (size_t)m, y, sizeof(float) * (size_t)n, nr, x, bx);
    for (int j = 0; j < m; j++) generic_tab[type].dot(n, b + j, (size_t)m, x + (size_t)j * bx, y, sizeof(float) * (size_t)n, nr);
    for (int i = 0; i < nr * m; i++)
        check(fabsf(a[i] - b[i]) <= 1e-4f * (1.0f + fabsf(b[i])) * sqrtf((float)n), "dot_rows %s n=%d m=%d nr=%d: %d neon %.7g generic %.7g",
              el_traits[type].name, n, m, nr, i, a[i], b[i]);
    el_traits[type].mix(n, m, a, (size_t)n, p, (size_t)m, nr, x, bx);
    generic_tab[type].mix(n, m, b, (size_t)n, p, (size_t)m, nr, x, bx);
    for (int i = 0; i < nr * n; i++)
        check(fabsf(a[i] - b[i]) <= 1e-4f * (1.0f + fabsf(b[i])) * sqrtf((float)m), "mix %s n=%d m=%d nr=%d: %d neon %.7g generic %.7g",
              el_traits[type].name, n, m, nr, i, a[i], b[i]);
    free(x), free(y), free(p), free(a), free(b);
}

/* Column-layout kernels (sparse.c): integer kinds exactly equal to generic (integer arithmetic), float kinds and
 * the scale step within float rounding; random channel rows of 3 tiles, 2 quads, U5 bit planes hoff away. */
static void test_columns(const el_col_kernels *generic) {
    enum { N = 3 * EL_COL_TILE, CH = 8 };
    static uint8_t rows[CH][4 * N + 64];
    const uint8_t *q[CH];
    int8_t xq[CH];
    float xs[CH];
    for (int j = 0; j < CH; j++) {
        for (int i = 0; i < 4 * N + 64; i++) rows[j][i] = (uint8_t)rnd_u32();
        q[j] = rows[j];
        xq[j] = (int8_t)(rnd_u32() % 255 - 127);
        xs[j] = rnd_normal();
    }
    for (int kind = EL_COL_U4; kind <= EL_COL_I8; kind++) {
        check(el_col->dot[kind] != generic->dot[kind], "column kind %d: NEON path did not register a kernel", kind);
        int32_t a[N], b[N];
        el_col->dot[kind](N, a, CH / 4, xq, q, N / 2);
        generic->dot[kind](N, b, CH / 4, xq, q, N / 2);
        check(memcmp(a, b, sizeof(a)) == 0, "column kind %d: NEON dot differs from generic", kind);
    }
    for (int kind = 0; kind < 2; kind++) { /* F16 rows: keep them finite */
        for (int j = 0; j < CH; j++)
            for (int i = 0; i < N; i++) {
                const el_fp16_t h = el_fp32_to_fp16(rnd_normal());
                memcpy(rows[j] + 2 * i, &h, 2);
            }
        if (kind == 1)
            for (int j = 0; j < CH; j++)
                for (int i = 0; i < N; i++) {
                    const float f = rnd_normal();
                    memcpy(rows[j] + 4 * i, &f, 4);
                }
        float a[N], b[N];
        el_col->axpy[kind](N, a, CH, xs, q);
        generic->axpy[kind](N, b, CH, xs, q);
        float worst = 0.0f;
        for (int i = 0; i < N; i++) worst = fabsf(a[i] - b[i]) > worst ? fabsf(a[i] - b[i]) : worst;
        check(worst < 1e-4f, "column float kind %d: NEON axpy differs from generic by %g", kind, worst);
    }
    int32_t acc[N];
    el_fp16_t d[N], m[N];
    float ya[N], yb[N];
    for (int i = 0; i < N; i++) {
        acc[i] = (int32_t)(rnd_u32() % 20001) - 10000;
        d[i] = el_fp32_to_fp16(rnd_uniform(0.001f, 0.01f));
        m[i] = el_fp32_to_fp16(rnd_uniform(-0.1f, 0.1f));
        ya[i] = yb[i] = rnd_normal();
    }
    el_col->scale(N, ya, acc, 0.02f, d, m, 1.5f);
    generic->scale(N, yb, acc, 0.02f, d, m, 1.5f);
    float worst = 0.0f;
    for (int i = 0; i < N; i++) worst = fabsf(ya[i] - yb[i]) > worst ? fabsf(ya[i] - yb[i]) : worst;
    check(worst < 1e-4f, "column scale: NEON differs from generic by %g", worst);
    printf("columns neon dot (U4, U5, I8), axpy (F16, F32) and scale against generic\n");
}

int main(void) {
    el_init();
    if (el_set_isa(EL_ISA_NEON) != 0) {
        printf("NEON path not compiled in (not an AArch64 build)\n0 passed, 0 failed\n");
        return 77;
    }
#if defined(__ARM_FEATURE_DOTPROD)
    printf("neon harness: dotprod build (vdotq_s32)\n");
#else
    printf("neon harness: baseline build (vmull_s8 / vpadalq_s16)\n");
#endif
    el_set_isa(EL_ISA_GENERIC);
    el_type_traits generic_tab[EL_TYPE_COUNT];
    memcpy(generic_tab, el_traits, sizeof(generic_tab));
    const el_col_kernels generic_cols = *el_col;
    el_set_isa(EL_ISA_NEON);

    test_quantizers();

    const enum el_type types[] = {EL_Q4_0, EL_Q4_1, EL_Q5_0, EL_Q8_0, EL_Q4_K, EL_Q6_K, EL_Q4_NL, EL_Q3_NL, EL_Q2_NL};
    const int ncs[] = {1, 3, 4, 5};
    for (size_t ti = 0; ti < sizeof(types) / sizeof(types[0]); ti++) {
        const enum el_type t = types[ti];
        if (el_traits[t].dot == generic_tab[t].dot) {
            check(0, "%s: NEON path did not register a kernel", el_traits[t].name);
            continue;
        }
        const int bsz = el_traits[t].block_size;
        const int nblks[] = {1, 7, bsz == QK_K ? 3 : 97};
        for (int ni = 0; ni < 3; ni++) {
            for (int ci = 0; ci < 4; ci++) {
                for (int kind = 0; kind < 4; kind++) test_dot(t, nblks[ni] * bsz, ncs[ci], kind);
            }
        }
        printf("%-5s %s against %s\n", el_traits[t].name, "neon", generic_tab[t].dot ? "generic" : "scalar ref (no generic kernel)");
    }
    test_matmul(EL_Q4_0, 37, 32 * 9, 5);
    test_matmul(EL_Q8_0, 20, 32 * 4, 1);
    test_matmul(EL_Q4_1, 17, 32 * 5, 6);
    const enum el_type cache_types[] = {EL_F32, EL_F16};
    const int dims[] = {8, 20, 64, 72, 256}, keys[] = {1, 5, 17}, rows[] = {1, 3, 5};
    for (int ti = 0; ti < 2; ti++) {
        check(el_traits[cache_types[ti]].mix != generic_tab[cache_types[ti]].mix, "%s: NEON path did not register mix",
              el_traits[cache_types[ti]].name);
        for (int di = 0; di < 5; di++)
            for (int ki = 0; ki < 3; ki++)
                for (int ri = 0; ri < 3; ri++) test_attention_rows(generic_tab, cache_types[ti], dims[di], keys[ki], rows[ri]);
        printf("%-5s neon dot_rows and mix against generic\n", el_traits[cache_types[ti]].name);
    }

    test_columns(&generic_cols);

    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
}
