/* Quantized matrix products: activations quantized once per product to the weight format's dot type, then
 * weight rows split across threads. Each thread walks its rows in blocks and, inside a block, tiles of
 * tokens, so a weight row is unpacked once per tile (prefill) and the block stays in cache across tiles. Long
 * batches go in chunks of tokens whose activations fit in L2, all of the thread's row blocks per chunk. */
#include <stdlib.h>

#include "edgellm.h"

#define ROW_BLOCK 16
#define TOKEN_TILE 8
#define TOKEN_CHUNK_BYTES (256 * 1024)

static size_t row_bytes(enum el_type type, int n) {
    const el_type_traits *t = &el_traits[type];
    return (size_t)(n / t->block_size) * t->type_size;
}

size_t el_matmul_scratch_bytes(enum el_type type, int n_cols, int n_tokens) {
    const enum el_type dt = el_traits[type].dot_type;
    return dt == EL_F32 ? 0 : row_bytes(dt, n_cols) * (size_t)n_tokens;
}

typedef struct {
    const el_type_traits *traits;
    const char *w;
    size_t w_row_bytes;
    int n_rows, n_cols, n_tokens;
    const float *x;
    const char *y;
    size_t y_row_bytes;
    char *y_out;
    float *out;
    int out_stride;
    int flip; /* activations made unsigned (quants + 128) for the packed Q8_0 kernel */
} matmul_ctx;

static void quantize_task(void *vctx, int ith, int nth) {
    matmul_ctx *c = vctx;
    const el_from_float_fn q = el_traits[c->traits->dot_type].from_float;
    for (int t = ith; t < c->n_tokens; t += nth) {
        char *y = c->y_out + (size_t)t * c->y_row_bytes;
        q(c->x + (size_t)t * c->n_cols, y, c->n_cols);
        if (c->flip)
            for (block_q8_0 *b = (block_q8_0 *)y; (char *)b < y + c->y_row_bytes; b++)
                for (int j = 0; j < QK8_0; j++) b->qs[j] = (int8_t)((uint8_t)b->qs[j] ^ 0x80);
    }
}

static void dot_task(void *vctx, int ith, int nth) {
    matmul_ctx *c = vctx;
    /* split rows in whole blocks so that threads do not share cache lines of `out` */
    const int n_blocks = (c->n_rows + ROW_BLOCK - 1) / ROW_BLOCK;
    const int b0 = (int)((int64_t)n_blocks * ith / nth), b1 = (int)((int64_t)n_blocks * (ith + 1) / nth);
    const el_dot_fn dot = c->traits->dot;
    /* tokens in chunks whose activations stay in L2 while every row block of this thread passes over them */
    int chunk = (int)(TOKEN_CHUNK_BYTES / c->y_row_bytes) / TOKEN_TILE * TOKEN_TILE;
    if (chunk < TOKEN_TILE) chunk = TOKEN_TILE;
    for (int c0 = 0; c0 < c->n_tokens; c0 += chunk) {
        const int c1 = c0 + chunk < c->n_tokens ? c0 + chunk : c->n_tokens;
        for (int b = b0; b < b1; b++) {
            const int r0 = b * ROW_BLOCK, r1 = r0 + ROW_BLOCK < c->n_rows ? r0 + ROW_BLOCK : c->n_rows;
            for (int t0 = c0; t0 < c1; t0 += TOKEN_TILE) {
                const int nc = c1 - t0 < TOKEN_TILE ? c1 - t0 : TOKEN_TILE;
                const char *y = c->y + (size_t)t0 * c->y_row_bytes;
                float *out = c->out + (size_t)t0 * c->out_stride;
                for (int r = r0; r < r1; r++) {
                    dot(c->n_cols, out + r, (size_t)c->out_stride, c->w + (size_t)r * c->w_row_bytes, y, c->y_row_bytes, nc);
                }
            }
        }
    }
}

/* rows in groups of 16 (one ROW_BLOCK), each group against tiles of tokens */
static void packed_task(void *vctx, int ith, int nth) {
    matmul_ctx *c = vctx;
    const int n_groups = c->n_rows / 16;
    const int g0 = (int)((int64_t)n_groups * ith / nth), g1 = (int)((int64_t)n_groups * (ith + 1) / nth);
    const el_gemm16_fn gemm16 = c->traits->gemm16;
    const size_t group_bytes = c->w_row_bytes; /* of 16 rows */
    int chunk = (int)(TOKEN_CHUNK_BYTES / c->y_row_bytes) / TOKEN_TILE * TOKEN_TILE;
    if (chunk < TOKEN_TILE) chunk = TOKEN_TILE;
    for (int c0 = 0; c0 < c->n_tokens; c0 += chunk) {
        const int c1 = c0 + chunk < c->n_tokens ? c0 + chunk : c->n_tokens;
        for (int g = g0; g < g1; g++)
            for (int t0 = c0; t0 < c1; t0 += TOKEN_TILE) {
                const int nc = c1 - t0 < TOKEN_TILE ? c1 - t0 : TOKEN_TILE;
                gemm16(c->n_cols, c->out + (size_t)t0 * c->out_stride + 16 * g, (size_t)c->out_stride,
                       c->w + (size_t)g * group_bytes, c->y + (size_t)t0 * c->y_row_bytes, c->y_row_bytes, nc);
            }
    }
}

int el_matmul_packed(el_pool *pool, enum el_type type, const void *w16, int n_rows, int n_cols, const float *x,
                     int n_tokens, float *out, int out_stride, void *scratch) {
    if (type < 0 || type >= EL_TYPE_COUNT || !el_traits[type].gemm16 || !el_packed16_bytes(type, n_rows, n_cols))
        return -1;
    const el_type_traits *t = &el_traits[type];
    matmul_ctx c = {t, w16, el_packed16_bytes(type, 16, n_cols), n_rows, n_cols, n_tokens, x, scratch, row_bytes(t->dot_type, n_cols), scratch, out,
                    out_stride, type == EL_Q8_0};
    el_pool_run(el_pool_for(pool, (size_t)n_tokens * n_cols), quantize_task, &c);
    el_pool_run(pool, packed_task, &c);
    return 0;
}

int el_matmul(el_pool *pool, enum el_type type, const void *w, int n_rows, int n_cols, const float *x,
              int n_tokens, float *out, int out_stride, void *scratch) {
    if (type < 0 || type >= EL_TYPE_COUNT) return -1;
    const el_type_traits *t = &el_traits[type];
    if (!t->dot || n_cols % t->block_size) return -1;
    matmul_ctx c = {t, w, row_bytes(type, n_cols), n_rows, n_cols, n_tokens, x, NULL, 0, NULL, out, out_stride};
    if (t->dot_type == EL_F32) {
        c.y = (const char *)x;
        c.y_row_bytes = (size_t)n_cols * sizeof(float);
    } else {
        if (n_cols % el_traits[t->dot_type].block_size) return -1;
        c.y_row_bytes = row_bytes(t->dot_type, n_cols);
        c.y_out = scratch;
        c.y = scratch;
        el_pool_run(el_pool_for(pool, (size_t)n_tokens * n_cols), quantize_task, &c);
    }
    el_pool_run(pool, dot_task, &c);
    return 0;
}
