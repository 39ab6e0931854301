/* edgellm kernel library: block layouts, kernel signatures and the dispatch table.
 *
 * Layouts are ggml's (ggml-common.h) byte for byte, so GGUF tensors are used in place. Every kernel has three
 * tiers sharing one signature: NumPy reference (edgellm.formats.quants), portable C (_generic) and ISA paths
 * (_avx2, _avx512, _neon). Weights are multiplied against activations quantized once per product to the
 * format's "dot type" (Q8_0, Q8_1 or Q8_K), as llama.cpp does.
 */
#ifndef EDGELLM_H
#define EDGELLM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef uint16_t el_fp16_t;

#define QK4_0 32
#define QK4_1 32
#define QK5_0 32
#define QK5_1 32
#define QK8_0 32
#define QK8_1 32
#define QK_K 256
#define K_SCALE_SIZE 12

/* ggml type ids (never change). */
enum el_type {
    EL_F32 = 0, EL_F16 = 1, EL_Q4_0 = 2, EL_Q4_1 = 3, EL_Q5_0 = 6, EL_Q5_1 = 7, EL_Q8_0 = 8, EL_Q8_1 = 9,
    EL_Q2_K = 10, EL_Q3_K = 11, EL_Q4_K = 12, EL_Q5_K = 13, EL_Q6_K = 14, EL_Q8_K = 15, EL_BF16 = 30,
    /* edgellm's own low-bit formats: ids far from ggml's, so no future ggml type collides */
    EL_Q4_NL = 100, EL_Q3_NL = 101, EL_Q2_NL = 102,
    EL_TYPE_COUNT = 103
};

/* d: scale; weight j = d * (q_j - 8); qs: weight j in the low nibble of byte j, weight j+16 in the high. */
typedef struct { el_fp16_t d; uint8_t qs[QK4_0 / 2]; } block_q4_0;
/* weight j = d * q_j + m */
typedef struct { el_fp16_t d; el_fp16_t m; uint8_t qs[QK4_1 / 2]; } block_q4_1;
/* weight j = d * (q_j - 16), q_j's fifth bit is bit j of qh */
typedef struct { el_fp16_t d; uint8_t qh[4]; uint8_t qs[QK5_0 / 2]; } block_q5_0;
typedef struct { el_fp16_t d; el_fp16_t m; uint8_t qh[4]; uint8_t qs[QK5_1 / 2]; } block_q5_1;
typedef struct { el_fp16_t d; int8_t qs[QK8_0]; } block_q8_0;
/* activation block for the formats with a min: s = d * sum(qs) carries the offset term */
typedef struct { el_fp16_t d; el_fp16_t s; int8_t qs[QK8_1]; } block_q8_1;
/* k-quants: super-blocks of 256 weights in sub-blocks of 16 or 32 with their own 4/6/8-bit scales */
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; el_fp16_t d; el_fp16_t dmin; } block_q2_K;
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; el_fp16_t d; } block_q3_K;
typedef struct { el_fp16_t d; el_fp16_t dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qs[QK_K / 2]; } block_q4_K;
typedef struct { el_fp16_t d; el_fp16_t dmin; uint8_t scales[K_SCALE_SIZE]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; el_fp16_t d; } block_q6_K;
/* edgellm's non-linear low-bit formats for rows that are a multiple of 32 (k-quants need 256):
 * weight j = scale(e) * grid[code_j], with a one-byte logarithmic block scale, scale(e) = 2^((e - 192) / 8)
 * (e = 0: zero), and a fixed non-uniform grid (generic/nlquants.c). The scale's 9 % steps cost little next to
 * 2-4-bit rounding and save 8 bits per block against an fp16 scale.
 * Q4_NL: code j in the low nibble of qs[j], code j + 16 in the high nibble (as Q4_0).
 * Q3_NL/Q2_NL: bits 0..1 of code j are bits 2 * (j / 8) of qs[j % 8]; Q3_NL's bit 2 is bit j of qh. */
#define QK_NL 32
typedef struct { uint8_t e; uint8_t qs[QK_NL / 2]; } block_q4_nl;
typedef struct { uint8_t e; uint8_t qh[4]; uint8_t qs[QK_NL / 4]; } block_q3_nl;
typedef struct { uint8_t e; uint8_t qs[QK_NL / 4]; } block_q2_nl;
extern const int8_t el_grid_q4_nl[16];
extern const int8_t el_grid_q3_nl[16]; /* 8 levels; padded to 16 bytes: one table-lookup register */
extern const int8_t el_grid_q2_nl[16]; /* 4 levels, padded likewise */
extern float el_nl_scale[256];
/* activation super-block for k-quants: float scale, and the sum of each 16 quants (bsums) */
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; } block_q8_K;

#define EL_STATIC_ASSERT(cond, msg) typedef char el_static_assert_##msg[(cond) ? 1 : -1]
EL_STATIC_ASSERT(sizeof(block_q4_0) == 18, q4_0);
EL_STATIC_ASSERT(sizeof(block_q4_1) == 20, q4_1);
EL_STATIC_ASSERT(sizeof(block_q5_0) == 22, q5_0);
EL_STATIC_ASSERT(sizeof(block_q5_1) == 24, q5_1);
EL_STATIC_ASSERT(sizeof(block_q8_0) == 34, q8_0);
EL_STATIC_ASSERT(sizeof(block_q8_1) == 36, q8_1);
EL_STATIC_ASSERT(sizeof(block_q2_K) == 84, q2_K);
EL_STATIC_ASSERT(sizeof(block_q3_K) == 110, q3_K);
EL_STATIC_ASSERT(sizeof(block_q4_K) == 144, q4_K);
EL_STATIC_ASSERT(sizeof(block_q5_K) == 176, q5_K);
EL_STATIC_ASSERT(sizeof(block_q6_K) == 210, q6_K);
EL_STATIC_ASSERT(sizeof(block_q8_K) == 292, q8_K);
EL_STATIC_ASSERT(sizeof(block_q4_nl) == 17, q4_nl);
EL_STATIC_ASSERT(sizeof(block_q3_nl) == 13, q3_nl);
EL_STATIC_ASSERT(sizeof(block_q2_nl) == 9, q2_nl);

/* Dot products of one weight row against `nc` activation rows.
 *   n: weights per row (a multiple of the block size); w: the packed weight row;
 *   y: first activation row in the dot type, rows `by` bytes apart; s[j * bs] = dot(w, y_j) for j < nc.
 * ISA paths may unpack a weight block once and reuse it for all nc rows (prefill tiles). */
typedef void (*el_dot_fn)(int n, float *s, size_t bs, const void *w, const void *y, size_t by, int nc);
/* Dot products of 16 weight rows, interleaved by el_pack16, against `nc` (<= 8) activation rows:
 * s[j * bs + i] = dot(w row i, y_j) for i < 16, j < nc. The 16 outputs of one activation row sit in one vector's
 * lanes, so a block's scales apply to all 16 rows at once and nothing is summed across lanes. */
typedef void (*el_gemm16_fn)(int n, float *s, size_t bs, const void *w16, const void *y, size_t by, int nc);
/* Activation quantizer: k floats (a multiple of the dot type's block size) -> blocks of the dot type. */
typedef void (*el_from_float_fn)(const float *x, void *y, int64_t k);
/* Dequantize k weights of a row (for gathers such as embedding lookups). */
typedef void (*el_to_float_fn)(const void *x, float *y, int64_t k);
/* Weighted sums of rows (attention's P V): s[r * bs + d] = sum_{j < m} p[r * bp + j] * x_j[d] for r < nr,
 * d < n, where x_j is row j (n elements of this type, rows bx bytes apart). Each row is read once for all nr
 * weight rows. */
typedef void (*el_mix_fn)(int n, int m, float *s, size_t bs, const float *p, size_t bp, int nr, const void *x,
                          size_t bx);
/* Dot products of m rows of this type against nr rows of its dot type (attention's scores, keys against
 * queries): s[r * bs + j] = dot(x_j, y_r), x_j row j (n elements, bx bytes apart), y_r `by` bytes apart. */
typedef void (*el_glu_fn)(float *g, const float *u, size_t n, int gelu);
typedef void (*el_dot_rows_fn)(int n, int m, float *s, size_t bs, const void *y, size_t by, int nr, const void *x,
                               size_t bx);

typedef struct {
    const char *name;
    int block_size;          /* weights per block */
    size_t type_size;        /* bytes per block */
    enum el_type dot_type;   /* activations are quantized to this type (EL_F32: used as float) */
    el_dot_fn dot;
    el_from_float_fn from_float; /* quantizer for this type when it is a dot type */
    el_to_float_fn to_float;
    el_mix_fn mix;           /* for KV cache types: F32, F16, Q8_0 */
    el_dot_rows_fn dot_rows; /* optional, for KV cache types (else one dot call per row) */
    el_gemm16_fn gemm16;     /* optional: products over el_pack16's layout */
    el_glu_fn glu;           /* F32 only, optional: the FFN's gate (el_glu_rows) compiled for the path */
} el_type_traits;

/* exp(x) without a libm call, so loops over it vectorize: 2^(x log2 e) split into 2^n (exponent bits) and
 * 2^f, |f| <= 1/2, by its Taylor series to degree 6 (relative error < 2e-7). */
static inline float el_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float t = x * 1.4426950408889634f;
    const float n = (t + 12582912.0f) - 12582912.0f; /* round to nearest */
    const float f = (t - n) * 0.6931471805599453f;
    const float p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 + f * (1.0f / 720))))));
    const int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

/* g = act(g) * u over n values, act SiLU or (gelu) GELU-tanh, 0.5 x (1 + tanh(y)) == x / (1 + exp(-2y)) with
 * y = sqrt(2/pi) (x + 0.044715 x^3). Inline here so that each path's file compiles it for its vector width: at
 * four sequences per step the gate was a tenth of a decode step in 128-bit vectors. */
static inline void el_glu_rows(float *restrict g, const float *restrict u, size_t n, int gelu) {
    if (gelu) {
        for (size_t i = 0; i < n; i++) {
            const float x = g[i];
            g[i] = x / (1.0f + el_expf(-1.5957691216057308f * (x + 0.044715f * x * x * x))) * u[i];
        }
    } else {
        for (size_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + el_expf(-g[i])) * u[i];
    }
}

/* Attention scores of m cache rows against nr query rows as one dot call per cache row. */
static inline void el_dot_rows_each(el_dot_fn dot, int n, int m, float *s, size_t bs, const void *y, size_t by,
                                    int nr, const void *x, size_t bx) {
    for (int j = 0; j < m; j++) dot(n, s + j, bs, (const char *)x + (size_t)j * bx, y, by, nr);
}

/* The same through the type's dot_rows kernel where a path has one. */
static inline void el_dot_rows(const el_type_traits *t, int n, int m, float *s, size_t bs, const void *y, size_t by,
                               int nr, const void *x, size_t bx) {
    if (t->dot_rows) t->dot_rows(n, m, s, bs, y, by, nr, x, bx);
    else el_dot_rows_each(t->dot, n, m, s, bs, y, by, nr, x, bx);
}

/* ISA paths, in order of preference. */
enum el_isa { EL_ISA_GENERIC = 0, EL_ISA_AVX2 = 1, EL_ISA_AVX512 = 2, EL_ISA_NEON = 3, EL_ISA_COUNT = 4 };

/* The kernel table of the calling thread: one table per path, filled once at init, so that two models in one
 * process can run on different paths. A thread picks its path with el_use_isa (a model's own, or the process
 * default); el_pool_run hands the caller's path to its workers. */
extern _Thread_local const el_type_traits *el_traits;
extern const char *el_isa_names[EL_ISA_COUNT];

/* CPU detection and the dispatch tables. */
int el_cpu_supports(enum el_isa isa);
int el_isa_compiled(enum el_isa isa);
int el_set_isa(enum el_isa isa); /* the process default path (and this thread's); 0 on success */
enum el_isa el_default_isa(void);
int el_use_isa(enum el_isa isa); /* this thread's path; 0 on success */
enum el_isa el_current_isa(void); /* this thread's path */
void el_init(void);

/* fp16 <-> fp32 (portable; ISA files may use F16C / NEON conversions). */
float el_fp16_to_fp32(el_fp16_t h);
el_fp16_t el_fp32_to_fp16(float f);
extern float el_fp16_table[1 << 16];
static inline float el_f16(el_fp16_t h) { return el_fp16_table[h]; }

/* Per-ISA registration: each fills the kernels it implements into the table. */
void el_register_generic(el_type_traits *t);
void el_register_avx2(el_type_traits *t);
void el_register_avx512(el_type_traits *t);
void el_register_neon(el_type_traits *t);

/* Generic kernels (also the per-kernel fallback of every ISA path). */
void el_quantize_row_q8_0_generic(const float *x, void *y, int64_t k);
void el_quantize_row_q8_1_generic(const float *x, void *y, int64_t k);
void el_quantize_row_q8_K_generic(const float *x, void *y, int64_t k);

/* Weight quantizers (quantize.c): n_rows rows of n_per_row floats -> packed rows of `type`, minimising the
 * error weighted by `importance` (one value per column, e.g. mean squared activation; NULL = uniform).
 * Returns 0, or -1 when the type has no quantizer or the row is not whole blocks. */
int el_quantize_rows(enum el_type type, const float *x, void *y, int64_t n_rows, int64_t n_per_row,
                     const float *importance);

/* Thread pool: persistent workers; el_pool_run calls fn(ctx, ith, nth) once for each of nth = el_pool_size(pool)
 * slices of the job (ith = 0 .. nth - 1), on whichever threads are free (threadpool.c). Per-slice buffers are
 * sized by el_pool_size. */
typedef struct el_pool el_pool;
typedef void (*el_task_fn)(void *ctx, int ith, int nth);
el_pool *el_pool_create(int n_threads);
void el_pool_free(el_pool *pool);
#define EL_SLICES_PER_THREAD 4         /* a pool of one thread cuts a job into one slice */
int el_pool_size(const el_pool *pool);    /* slices a job is cut into */
int el_pool_threads(const el_pool *pool); /* threads, the caller's included */
void el_pool_run(el_pool *pool, el_task_fn fn, void *ctx);
/* the pool for an element-wise job of `elements` values, or NULL (the caller alone) below EL_SMALL_JOB: waking the
 * workers costs more than they save on a decode step's few rows */
#define EL_SMALL_JOB 4096
static inline el_pool *el_pool_for(el_pool *pool, size_t elements) { return elements >= EL_SMALL_JOB ? pool : NULL; }

/* Matrix products: out[t, r] = dot(W row r, x row t) for t < n_tokens, r < n_rows.
 *   w: n_rows rows of `type`, each n_cols weights; x: n_tokens x n_cols floats (row-major);
 *   out: n_tokens rows, out_stride floats apart. `scratch` must hold el_matmul_scratch_bytes(...) bytes. */
size_t el_matmul_scratch_bytes(enum el_type type, int n_cols, int n_tokens);
int el_matmul(el_pool *pool, enum el_type type, const void *w, int n_rows, int n_cols,
              const float *x, int n_tokens, float *out, int out_stride, void *scratch);

/* Rows interleaved in groups of 16 (packed.c), for the gemm16 kernels: per group and block of 32 weights, the
 * 16 rows' scales side by side, then their quants with the same 4 weights of the 16 rows in each 64 bytes.
 *   Q4_1: d[16], m[16] (fp16); 4 x 64 bytes, byte 4i + e of vector j = q_i[4j + e] | q_i[4j + 16 + e] << 4.
 *   Q8_0: d[16] (fp16), wsum[16] (int16: the block's sum of quants per row); 8 x 64 bytes, byte 4i + e of
 *         vector k = q_i[4k + e]. The kernel takes activations flipped to unsigned (q + 128) and subtracts
 *         128 * wsum (el_matmul_packed flips them).
 * el_packed16_bytes is 0 when the type has no such layout or n_rows is not a multiple of 16. */
size_t el_packed16_bytes(enum el_type type, int n_rows, int n_cols);
int el_pack16(enum el_type type, const void *w, int n_rows, int n_cols, void *out);
/* el_matmul over el_pack16's layout; -1 when the current path has no gemm16 kernel for the type */
int el_matmul_packed(el_pool *pool, enum el_type type, const void *w16, int n_rows, int n_cols, const float *x,
                     int n_tokens, float *out, int out_stride, void *scratch);

/* Best-of-`repetitions` read bandwidth over `buf` in GB/s (1e9 bytes/s), all pool threads reading. */
double el_read_bandwidth(el_pool *pool, const void *buf, size_t n_bytes, int repetitions);

/* ---- activation sparsity: matrices in input-channel-major ("column") layout (sparse.c) ----
 * A matrix of n_rows outputs x n_cols inputs stored so that the weights one input channel multiplies are
 * contiguous (its "channel row"), so an input below the threshold costs no read of its weights:
 *   w[r][c] = d[g][r] * q_c[r] + m[g][r],   g = c / group,
 * with q_c[r] in a container of `kind`, and d, m fp16 per (group, output row) (F16/F32 kinds: w = q). The
 * scales of a group are read only when one of its channels is active. Repacking a ggml block format keeps its
 * integers and scales (K-quants' sub-block scale products rounded to fp16), see edgellm.formats.columns.
 *
 * Integer kinds hold each 64-output tile in "dot order": position p = 16k + 4a + e holds output 16a + 4k + e,
 * so that interleaving four channel rows byte by byte (unpack / zip within 128-bit lanes) puts four channels of
 * one output in each 32-bit lane, in output order, ready for a 4-way dot instruction (vpdpbusd, vdotq_s32).
 * U4: per tile 32 bytes, byte i = q[p = i] | q[p = i + 32] << 4. U5: the same nibbles for bits 0..3, and after
 * all nibbles of the row 8 bytes per tile whose bit p is bit 4 of position p. I8: 64 int8 per tile. F16, F32:
 * one float per output, in output order. */
enum el_col_kind { EL_COL_U4, EL_COL_U5, EL_COL_I8, EL_COL_F16, EL_COL_F32, EL_COL_KINDS };
#define EL_COL_TILE 64

typedef struct {
    int kind, group, n_rows, n_cols; /* n_rows a multiple of EL_COL_TILE, n_cols of group */
    const uint8_t *q;                /* n_cols channel rows, el_col_stride(kind, n_rows) bytes apart */
    const el_fp16_t *d, *m;          /* (n_cols / group) x n_rows each; m may be NULL; both NULL for F16/F32 */
} el_colmat;

size_t el_col_stride(int kind, int n_rows);
/* Integer kinds: acc[0..n) = sum_{j < 4 n_quads} xq[j] * q_j[0..n), q[j] pointing at the first of the n outputs
 * (a multiple of 64) in channel j's row (for U5 its bit plane hoff bytes further); quads may be padded with
 * xq = 0. Activations are int8, quantized per group as the dense kernels quantize theirs. */
typedef void (*el_col_int_fn)(int n, int32_t *acc, int n_quads, const int8_t *xq, const uint8_t *const *q,
                              size_t hoff);
/* Float kinds: acc[0..n) = sum_{j < n_ch} xs[j] * q_j[0..n) */
typedef void (*el_col_float_fn)(int n, float *acc, int n_ch, const float *xs, const uint8_t *const *q);
/* y[0..n) += d[r] * s * acc[r] + m[r] * sx (m may be NULL) */
typedef void (*el_col_scale_fn)(int n, float *y, const int32_t *acc, float s, const el_fp16_t *d, const el_fp16_t *m,
                                float sx);
typedef struct {
    el_col_int_fn dot[3]; /* U4, U5, I8 */
    el_col_float_fn axpy[2]; /* F16, F32 */
    el_col_scale_fn scale;
} el_col_kernels;
extern _Thread_local const el_col_kernels *el_col; /* this thread's path's column kernels */
void el_register_columns_generic(el_col_kernels *k);
void el_register_columns_avx2(el_col_kernels *k);
void el_register_columns_avx512(el_col_kernels *k);
void el_register_columns_neon(el_col_kernels *k);
/* output of dot-order position p (0..63) within its tile */
static inline int el_col_row_of(int p) { return (p / 4 % 4) * 16 + p / 16 * 4 + p % 4; }

/* y = W x over the inputs with |x_c| >= threshold only (threshold 0: every nonzero input). Threads split the
 * outputs, so the result does not depend on their number. Adds the bytes of W it read to *bytes_read (may be
 * NULL). Returns 0, or -1 on a bad matrix or out of memory. */
int el_sparse_matvec(el_pool *pool, const el_colmat *w, const float *x, float threshold, float *y,
                     double *bytes_read);

/* ---- whole-model forward pass (engine.c): Python builds this plan once, C runs it for every step ---- */

typedef struct {
    int type;          /* enum el_type; data == NULL means the tensor is absent */
    const void *data;  /* packed rows, n_rows x row_bytes(type, n_cols) */
    int n_rows, n_cols;
    const void *packed16; /* the same rows in el_pack16's layout, or NULL */
} el_weight;

typedef struct {
    el_weight attn_norm, wq, wk, wv, wo, bq, bk, bv, q_norm, k_norm, attn_post_norm;
    el_weight ffn_norm, gate, up, down, ffn_post_norm;
    /* mixture of experts (n_expert > 0) instead of gate/up/down: the router (n_expert x n_embd) and every
     * expert's matrices stacked, n_rows = n_expert x rows of one expert */
    el_weight gate_inp, gate_exps, up_exps, down_exps;
} el_layer;

#define EL_SPARSE_GROUPS 4
#define EL_COL_SLOTS 7 /* q, k, v, o, gate, up, down */

/* ---- weights streamed from the model file under a memory budget (offload.c) ----
 * A unit is a streamed matrix or a range of its rows; units are listed in the order a forward pass uses them,
 * slots name the matrices: layer l's q, k, v, o, gate, up, down are slots 7 l .. 7 l + 6 (EL_COL_SLOTS order),
 * the head is slot 7 n_layers. */
typedef struct {
    int slot, row0, n_rows;
    int64_t offset, bytes; /* the rows' bytes in the file */
} el_unit;
typedef struct {
    double bytes, reads;  /* read from storage (whole 4 KiB pages) */
    double wait_s;        /* the engine waiting for reads */
    double busy_s;        /* reads in flight */
    double expert_hits, expert_misses; /* mixture of experts: routed experts found in the cache, read */
} el_io_stats;
typedef struct el_offload el_offload;
/* ring_bytes: the streaming buffer (at least one unit); synchronous: read each unit when it is needed, no reader
 * thread (the naive baseline); row_bytes_max: the largest single row read on demand (embedding rows), 0: none.
 * NULL with a reason in err on failure. */
el_offload *el_offload_open(const char *path, const el_unit *units, int n_units, int n_slots, size_t ring_bytes,
                            int synchronous, size_t row_bytes_max, char *err, size_t err_len);
void el_offload_close(el_offload *o);
int el_offload_units(const el_offload *o, int slot, int *first); /* units of a slot (0: resident) */
const el_unit *el_offload_unit(const el_offload *o, int u);
const void *el_offload_acquire(el_offload *o, int u); /* waits for unit u's rows; NULL on a read error */
void el_offload_release(el_offload *o, int u);
const void *el_offload_read_row(el_offload *o, int64_t offset, size_t n); /* valid until the next call */
void el_offload_stats(el_offload *o, el_io_stats *s);
const char *el_offload_error(el_offload *o); /* NULL while reads succeed */
size_t el_offload_ring_bytes(const el_offload *o); /* the ring and the row buffer, as allocated */
int el_offload_direct(const el_offload *o);          /* 1: reads bypass the page cache (O_DIRECT) */
/* Mixture of experts: experts are read when routed, into a cache of n_cached experts (least often routed
 * replaced first). offsets: n_layers x n_expert x 3 file offsets of each expert's gate, up and down slabs;
 * bytes: n_layers x 3, their sizes in each layer. 0, or -1 on bad arguments or out of memory. */
int el_offload_set_experts(el_offload *o, int n_layers, int n_expert, const int64_t *offsets, const int64_t *bytes,
                           int n_cached);
int el_offload_has_experts(const el_offload *o);
int el_offload_expert(el_offload *o, int layer, int expert, const void *out[3]); /* 0, or -1 on a read error */

/* what one forward call read: weight bytes (matrices, head, embedding rows) and KV cache bytes, and of the
 * weights what came from storage */
typedef struct {
    double weight_bytes, kv_bytes;
    el_io_stats io;
} el_stats;

/* per-layer flags */
enum { EL_LAYER_SWA = 1, EL_LAYER_NO_ROPE = 2 };

typedef struct {
    int n_layers, n_embd, n_ff, n_head, n_head_kv, head_dim, head_dim_v, n_vocab, rope_dim;
    float norm_eps, rope_base, rope_base_swa, rope_scale, embed_scale, attn_scale, final_softcap;
    /* RoPE as ggml_rope_ext: YaRN blend over pairs [yarn_low, yarn_high], cos/sin times mscale, angles divided
     * per pair by rope_factors (short, or long when the padded context exceeds n_ctx_orig) */
    float rope_ext_factor, rope_yarn_low, rope_yarn_high, rope_mscale;
    int rope_neox, gelu, sliding_window, n_ctx_orig;
    int n_expert, n_expert_used; /* experts per layer and per token (0: dense FFN); n_ff is one expert's width */
    /* activation sparsity: per layer, EL_SPARSE_GROUPS magnitude thresholds below which the inputs of the
     * attention input, attention output, FFN input and down products are zeroed (NULL: dense) */
    float *thresholds;
    /* optional column layouts of each layer's q, k, v, o, gate, up, down (EL_COL_SLOTS per layer, kind < 0 or
     * NULL: none): decode steps with a threshold > 0 run those products with el_sparse_matvec */
    el_colmat *cols;
    uint8_t *flags; /* per layer: EL_LAYER_* bits */
    el_weight tok_embd, output_norm, output, rope_factors_short, rope_factors_long;
    el_layer *layers;
    /* candidate head: when output_approx is set, logits come from this cheap copy of the head, and the
     * n_candidates best of each row are recomputed exactly with `output`. The copy is n_vocab x n_embd (fewer
     * bits), or n_vocab x r after the projection output_proj (r x n_embd, a low-rank factor) when that is set;
     * 0 candidates: the cheap head's logits alone */
    el_weight output_approx, output_proj;
    int n_candidates;
    /* weights streamed from the model file (NULL: all in memory): their el_weight data is NULL; a NULL
     * tok_embd.data means embedding rows are read from the file at embd_offset */
    el_offload *offload;
    int64_t embd_offset;
} el_model;

/* NULL when the plan can run, else what is wrong with it (the engine never trusts its caller's shapes). */
const char *el_model_check(const el_model *m);

/* One sequence of a batch: n_tokens new tokens at positions n_past.. of its own cache. k_cache: n_layers x n_ctx x
 * (n_head_kv * head_dim) elements of the cache type (EL_F32, EL_F16 or EL_Q8_0); v_cache likewise with head_dim_v. */
typedef struct {
    void *k_cache, *v_cache;
    int n_past, n_tokens;
} el_seq;

/* Working buffers kept between forward calls (freed with el_scratch_free): a new buffer of megabytes each call
 * would cost the kernel's page zeroing every step. */
typedef struct {
    void *ptr[6];
    size_t size[6];
} el_scratch;
void el_scratch_free(el_scratch *s);

/* Several sequences in one pass (continuous batching): their tokens side by side (sequence by sequence) share
 * every weight read, and each attends over its own cache. Logits of the batch rows out_rows[0..n_out_rows).
 * A pipeline stage (a plan of some of the model's layers) starts from x_in, the residual stream of every token
 * (n_tokens x n_embd floats; tokens unused) instead of the embeddings, and x_out, when given, receives the
 * residual stream after the plan's last layer. scratch may be NULL (buffers allocated for this call only); stats
 * may be NULL. Returns 0, or -1 on bad arguments or out of memory. */
int el_forward_batch(const el_model *m, el_pool *pool, el_scratch *scratch, const int32_t *tokens, const el_seq *seqs,
                     int n_seqs, int kv_type, int n_ctx, const int32_t *out_rows, int n_out_rows, float *logits,
                     const float *x_in, float *x_out, el_stats *stats);

#ifdef __cplusplus
}
#endif
#endif
