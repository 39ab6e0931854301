/* Sparse matrix x vector over the column layout (edgellm.h): only the channel rows of active inputs are read,
 * and a group's scales only when one of its channels is active. Once per product the active inputs of each
 * group are listed and quantized to int8 with the group's own scale (as the dense kernels quantize a block of
 * activations), four to a quad; threads then split the outputs in 64-row tiles and take each group's quads
 * with 4-way integer dot instructions. Every thread reads a contiguous piece of each active channel row, and
 * the result of an output does not depend on the thread count. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "edgellm.h"

#define COL_CHUNK 1024 /* outputs per accumulator pass: 4 KB stay in L1 */
#define MAX_GROUP 32


size_t el_col_stride(int kind, int n_rows) {
    switch (kind) {
    case EL_COL_U4: return (size_t)n_rows / 2;
    case EL_COL_U5: return (size_t)n_rows / 2 + (size_t)n_rows / 8;
    case EL_COL_I8: return (size_t)n_rows;
    case EL_COL_F16: return (size_t)n_rows * 2;
    case EL_COL_F32: return (size_t)n_rows * 4;
    default: return 0;
    }
}

static int col_valid(const el_colmat *w) {
    if (!w || w->kind < 0 || w->kind >= EL_COL_KINDS || !w->q) return 0;
    if (w->n_rows <= 0 || w->n_rows % EL_COL_TILE || w->n_cols <= 0) return 0;
    if (w->group <= 0 || w->group > MAX_GROUP || w->group % 4 || w->n_cols % w->group) return 0;
    const int floats = w->kind == EL_COL_F16 || w->kind == EL_COL_F32;
    return floats ? !w->d && !w->m : w->d != NULL;
}

/* bytes of a group's scales (d, and m when present) */
static size_t scale_bytes(const el_colmat *w) { return (size_t)w->n_rows * 2 * (w->d ? 1 + (w->m != NULL) : 0); }

typedef struct {
    const el_colmat *w;
    const int *idx;     /* active channels, ascending, each group's padded to whole quads */
    const int *start;   /* per group: its first entry in idx / xq / xs (n_groups + 1 entries) */
    const int8_t *xq;   /* integer kinds: quantized activations, parallel to idx (0 on padding) */
    const float *xs;    /* float kinds: the activations, parallel to idx */
    const float *scale; /* per group: activation scale */
    const float *sum;   /* per group: sum of its rounded active inputs, times the scale */
    float *y;
} sparse_ctx;

#define PREFETCH_GROUPS 1

static inline void prefetch_span(const void *p, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) __builtin_prefetch((const char *)p + o);
}

/* the active channel rows (outputs r0 .. r0 + n) of group g and its scales */
static void prefetch_group(const sparse_ctx *c, int g, size_t off, size_t seg, size_t hoff, int r0, int n) {
    const el_colmat *w = c->w;
    const size_t stride = el_col_stride(w->kind, w->n_rows);
    const int j0 = c->start[g], j1 = c->start[g + 1];
    for (int j = j0; j < j1; j++) {
        if (j > j0 && c->idx[j] == c->idx[j - 1]) continue; /* quad padding repeats a row */
        const uint8_t *row = w->q + (size_t)c->idx[j] * stride + off;
        prefetch_span(row, seg);
        if (w->kind == EL_COL_U5) prefetch_span(row + hoff, seg / 4);
    }
    if (j1 > j0 && w->d) {
        prefetch_span(w->d + (size_t)g * w->n_rows + r0, (size_t)n * 2);
        if (w->m) prefetch_span(w->m + (size_t)g * w->n_rows + r0, (size_t)n * 2);
    }
}

static void sparse_task(void *vctx, int ith, int nth) {
    const sparse_ctx *c = vctx;
    const el_colmat *w = c->w;
    const int tiles = w->n_rows / EL_COL_TILE, n_groups = w->n_cols / w->group;
    const int r_begin = (int)((int64_t)tiles * ith / nth) * EL_COL_TILE;
    const int r_end = (int)((int64_t)tiles * (ith + 1) / nth) * EL_COL_TILE;
    const size_t stride = el_col_stride(w->kind, w->n_rows);
    const int floats = w->kind == EL_COL_F16 || w->kind == EL_COL_F32;
    int32_t acc[COL_CHUNK];
    float facc[COL_CHUNK];
    const uint8_t *ptrs[MAX_GROUP];
    for (int r0 = r_begin; r0 < r_end; r0 += COL_CHUNK) {
        const int n = r_end - r0 < COL_CHUNK ? r_end - r0 : COL_CHUNK;
        float *y = c->y + r0;
        memset(y, 0, sizeof(float) * (size_t)n);
        /* where outputs r0.. start inside a channel row, and a U5 row's bit plane relative to that */
        const size_t off = floats ? (size_t)r0 * (w->kind == EL_COL_F16 ? 2 : 4)
                                  : (w->kind == EL_COL_I8 ? (size_t)r0 : (size_t)r0 / 2);
        const size_t hoff = w->kind == EL_COL_U5 ? (size_t)w->n_rows / 2 - off + (size_t)r0 / 8 : 0;
        /* Channel rows are short (a few cache lines per thread), too short for the hardware prefetcher to
         * follow, so the rows and scales of the group PREFETCH_GROUPS ahead are requested explicitly. */
        const size_t seg = floats ? (size_t)n * (w->kind == EL_COL_F16 ? 2 : 4)
                                  : (w->kind == EL_COL_I8 ? (size_t)n : (size_t)n / 2);
        for (int g = 0; g < PREFETCH_GROUPS && g < n_groups; g++) prefetch_group(c, g, off, seg, hoff, r0, n);
        for (int g = 0; g < n_groups; g++) {
            if (g + PREFETCH_GROUPS < n_groups) prefetch_group(c, g + PREFETCH_GROUPS, off, seg, hoff, r0, n);
            const int j0 = c->start[g], nj = c->start[g + 1] - j0;
            if (!nj) continue;
            for (int j = 0; j < nj; j++) ptrs[j] = w->q + (size_t)c->idx[j0 + j] * stride + off;
            if (floats) {
                el_col->axpy[w->kind - EL_COL_F16](n, facc, nj, c->xs + j0, ptrs);
                for (int r = 0; r < n; r++) y[r] += facc[r];
            } else {
                el_col->dot[w->kind](n, acc, nj / 4, c->xq + j0, ptrs, hoff);
                const size_t s = (size_t)g * w->n_rows + r0;
                el_col->scale(n, y, acc, c->scale[g], w->d + s, w->m ? w->m + s : NULL, c->sum[g]);
            }
        }
    }
}

int el_sparse_matvec(el_pool *pool, const el_colmat *w, const float *x, float threshold, float *y,
                     double *bytes_read) {
    if (!col_valid(w) || !(threshold >= 0.0f)) return -1;
    const int n_groups = w->n_cols / w->group;
    /* per input (padded to quads per group): index, int8 and float activation; per group: start, scale, sum */
    const size_t cap = (size_t)w->n_cols + 3 * (size_t)n_groups;
    char *mem = malloc(cap * (sizeof(int) + 1 + sizeof(float)) + (size_t)(n_groups + 1) * sizeof(int) +
                       2 * (size_t)n_groups * sizeof(float));
    if (!mem) return -1;
    int *idx = (int *)mem, *start = idx + cap;
    float *xs = (float *)(start + n_groups + 1), *scale = xs + cap, *sum = scale + n_groups;
    int8_t *xq = (int8_t *)(sum + n_groups);
    int n = 0, touched = 0, active = 0;
    for (int g = 0; g < n_groups; g++) {
        start[g] = n;
        float amax = 0.0f;
        for (int ch = g * w->group; ch < (g + 1) * w->group; ch++) {
            const float v = x[ch];
            if (fabsf(v) < threshold || v == 0.0f) continue; /* NaN stays active, as in the dense product */
            idx[n] = ch;
            xs[n++] = v;
            if (!(fabsf(v) <= amax)) amax = fabsf(v);
        }
        const int k = n - start[g];
        active += k;
        touched += k > 0;
        while ((n - start[g]) % 4) { /* pad to a whole quad: any valid row, weight 0 */
            idx[n] = k ? idx[start[g]] : g * w->group;
            xs[n++] = 0.0f;
        }
        const float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
        const int finite = isfinite(amax); /* else the group's outputs become NaN, as a dense product's would */
        int qsum = 0;
        for (int j = start[g]; j < n; j++) qsum += xq[j] = finite ? (int8_t)roundf(xs[j] * inv) : 0;
        scale[g] = finite ? d : NAN;
        /* the offset term takes the sum of the rounded inputs, as the dense kernels' Q8_1 sum does: the rounding
         * errors then meet q + m / d (e.g. q - 8 for Q4_0), not q, exactly as in the dense product */
        sum[g] = d * (float)qsum;
    }
    start[n_groups] = n;
    if (bytes_read) *bytes_read += (double)touched * scale_bytes(w) + (double)active * el_col_stride(w->kind, w->n_rows);
    sparse_ctx c = {w, idx, start, xq, xs, scale, sum, y};
    el_pool_run(pool, sparse_task, &c);
    free(mem);
    return 0;
}
