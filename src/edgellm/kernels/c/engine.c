/* The transformer forward pass in C: one call per prefill batch or decoded token, so Python spends
 * nothing per layer. It mirrors edgellm.model.transformer (the NumPy reference it is tested against):
 * RMSNorm, Q/K/V projections (+bias), per-head Q/K norms, RoPE (adjacent pairs or NEOX halves), causal
 * attention with an optional sliding window, output projection, optional post-norms, gated FFN
 * (SiLU or tanh-GELU), and logits for the requested rows only. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "edgellm.h"

static size_t row_bytes(int type, int n) {
    return (size_t)(n / el_traits[type].block_size) * el_traits[type].type_size;
}

static void rms_norm(float *y, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++) y[i] = x[i] * scale * w[i];
}

static void norm_rows(float *y, const float *x, const el_weight *w, int n_rows, int n, float eps) {
    for (int r = 0; r < n_rows; r++) rms_norm(y + (size_t)r * n, x + (size_t)r * n, w->data, n, eps);
}

/* cos/sin of every (position, pair) of this batch, T x n_rot/2 each, as ggml_rope_ext: pair i turns by
 * position * base^(-2i/n_rot) / factors[i], times scale; with YaRN (ext_factor) the angle blends from the original
 * one (pairs below yarn_low) to the interpolated one (above yarn_high); cos and sin are multiplied by mscale. */
static void rope_table(float *cs, float *sn, int n_tokens, const int *pos, const el_model *m, float base, float scale,
                       const float *factors) {
    const int n_rot = m->rope_dim, half = n_rot / 2;
    const double span = m->rope_yarn_high - m->rope_yarn_low > 0.001 ? m->rope_yarn_high - m->rope_yarn_low : 0.001;
    for (int i = 0; i < half; i++) {
        const double freq = pow(base, -2.0 * i / n_rot) / (factors ? factors[i] : 1.0);
        double ramp = 1.0 - (i - m->rope_yarn_low) / span;
        ramp = ramp < 0.0 ? 0.0 : (ramp > 1.0 ? 1.0 : ramp);
        const double mix = m->rope_ext_factor * ramp; /* weight of the original angle */
        const double f = freq * (scale * (1.0 - mix) + mix);
        for (int t = 0; t < n_tokens; t++) {
            const double theta = pos[t] * f;
            cs[(size_t)t * half + i] = (float)(cos(theta) * m->rope_mscale);
            sn[(size_t)t * half + i] = (float)(sin(theta) * m->rope_mscale);
        }
    }
}

static void rope(float *x, int n_heads, int head_dim, int n_rot, const float *cs, const float *sn, int neox) {
    const int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        const float c = cs[i], s = sn[i];
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)h * head_dim;
            const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
            const float x0 = v[a], x1 = v[b];
            v[a] = x0 * c - x1 * s;
            v[b] = x0 * s + x1 * c;
        }
    }
}

/* ---- attention ----
 * One task item per (query tile, kv head, key range): the kv head's whole query group (Q_TILE tokens x the
 * heads sharing it) is scored against its keys by one dot_rows call and mixed with each value row in one pass
 * (mix), so every cache row is read once per item. A long cache is split into key ranges when there are
 * few items (decode), so that threads share it; each range leaves an unnormalised output with its running max and sum,
 * and attn_merge_task combines them (as flash decoding does). */
typedef struct {
    const el_model *m;
    const float *q;   /* n_tokens x n_head x head_dim */
    const char *q8;   /* Q8_0 cache: the queries quantized to Q8_0 (the cache's dot type), else NULL */
    const char *k;    /* this layer's cache: n_ctx x n_head_kv x head_dim elements of kv_type */
    const char *v;
    float *out;       /* n_tokens x n_head x head_dim_v */
    float *part;      /* per item: rows x (head_dim_v + 2): unnormalised output, max score, sum of weights */
    float *scratch;   /* per thread: rows x n_kv_max scores, then rows query rows */
    int n_tokens, n_past, window, n_kv_max, kv_type, n_split;
} attn_ctx;

#define Q_TILE 4 /* query tokens per attention item */

/* query rows of one item: Q_TILE tokens x the heads of one kv head */
static int attn_rows(const el_model *m) { return Q_TILE * (m->n_head / m->n_head_kv); }

/* bytes of n cache elements of kv_type (F32, F16: one per element; Q8_0: blocks of 32) */
static inline size_t kv_bytes(int kv_type, size_t n) {
    return n / (size_t)el_traits[kv_type].block_size * el_traits[kv_type].type_size;
}

/* first key a query at `pos` sees */
static inline int first_key(int pos, int window) { return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0; }

/* item `item` of one sequence's attention, on slice `ith`'s scratch */
static void attn_item(const attn_ctx *c, int item, int ith) {
    const el_model *m = c->m;
    const el_type_traits *kv = &el_traits[c->kv_type];
    const int group = m->n_head / m->n_head_kv, dv = m->head_dim_v, R = attn_rows(m);
    const size_t k_row = kv_bytes(c->kv_type, (size_t)m->n_head_kv * m->head_dim);
    const size_t v_row = kv_bytes(c->kv_type, (size_t)m->n_head_kv * dv);
    /* one query row as the cache's dot kernel takes it: floats, or Q8_0 blocks for a Q8_0 cache */
    const size_t qy = c->q8 ? kv_bytes(EL_Q8_0, (size_t)m->head_dim) : (size_t)m->head_dim * sizeof(float);
    float *scores = c->scratch + (size_t)ith * ((size_t)R * c->n_kv_max + (size_t)R * m->head_dim);
    char *qg = (char *)(scores + (size_t)R * c->n_kv_max);
    const int split = item % c->n_split, hk = item / c->n_split % m->n_head_kv;
    const int t0 = item / c->n_split / m->n_head_kv * Q_TILE;
    const int nq = c->n_tokens - t0 < Q_TILE ? c->n_tokens - t0 : Q_TILE, nr = nq * group;
    const int first = c->n_past + t0, last = first + nq - 1;
    /* this item's keys [a, b): its share of those any query of the tile sees */
    const int j0 = first_key(first, c->window), span = last - j0 + 1;
    const int a = j0 + (int)((int64_t)span * split / c->n_split);
    const int b = j0 + (int)((int64_t)span * (split + 1) / c->n_split);
    /* the group's query rows side by side: row i * group + g is token t0 + i, head hk * group + g */
    const char *qsrc = c->q8 ? c->q8 : (const char *)c->q;
    for (int i = 0; i < nq; i++)
        memcpy(qg + (size_t)i * group * qy, qsrc + ((size_t)(t0 + i) * m->n_head + (size_t)hk * group) * qy,
               (size_t)group * qy);
    const size_t k_head = kv_bytes(c->kv_type, (size_t)hk * m->head_dim);
    const char *keys = c->k + (size_t)a * k_row + k_head;
    el_dot_rows(kv, m->head_dim, b - a, scores, (size_t)c->n_kv_max, qg, qy, nr, keys, k_row);
    float *part = c->part + (size_t)item * R * (dv + 2);
    for (int r = 0; r < nr; r++) {
        const int pos = first + r / group, kf = first_key(pos, c->window);
        const int lo = kf > a ? kf : a, hi = pos < b - 1 ? pos : b - 1;
        float *s = scores + (size_t)r * c->n_kv_max; /* s[j - a]: score of key j */
        float mx = -INFINITY, sum = 0.0f;
        for (int j = lo; j <= hi; j++) {
            s[j - a] *= m->attn_scale;
            if (s[j - a] > mx) mx = s[j - a];
        }
        for (int j = a; j < b; j++) {
            const float e = j >= lo && j <= hi ? el_expf(s[j - a] - mx) : 0.0f;
            s[j - a] = e;
            sum += e;
        }
        part[(size_t)r * (dv + 2) + dv] = mx;
        part[(size_t)r * (dv + 2) + dv + 1] = sum;
    }
    kv->mix(dv, b - a, part, (size_t)dv + 2, scores, (size_t)c->n_kv_max, nr,
            c->v + (size_t)a * v_row + kv_bytes(c->kv_type, (size_t)hk * dv), v_row);
}

/* out = sum over key ranges of exp(max_s - max) out_s / sum of exp(max_s - max) sum_s, per query row */
static void attn_merge_item(const attn_ctx *c, int item) {
    const el_model *m = c->m;
    const int group = m->n_head / m->n_head_kv, dv = m->head_dim_v, R = attn_rows(m);
    const int hk = item % m->n_head_kv, t0 = item / m->n_head_kv * Q_TILE;
    const int nq = c->n_tokens - t0 < Q_TILE ? c->n_tokens - t0 : Q_TILE;
    const float *parts = c->part + (size_t)item * c->n_split * R * (dv + 2);
    for (int r = 0; r < nq * group; r++) {
        float mx = -INFINITY, total = 0.0f;
        for (int s = 0; s < c->n_split; s++) {
            const float *p = parts + ((size_t)s * R + r) * (dv + 2);
            if (p[dv + 1] > 0.0f && p[dv] > mx) mx = p[dv];
        }
        float *o = c->out + ((size_t)(t0 + r / group) * m->n_head + (size_t)hk * group + r % group) * dv;
        memset(o, 0, sizeof(float) * (size_t)dv);
        for (int s = 0; s < c->n_split; s++) {
            const float *p = parts + ((size_t)s * R + r) * (dv + 2);
            if (p[dv + 1] <= 0.0f) continue;
            const float w = c->n_split == 1 ? 1.0f : el_expf(p[dv] - mx);
            total += w * p[dv + 1];
            for (int d = 0; d < dv; d++) o[d] += w * p[d];
        }
        const float inv = 1.0f / total;
        for (int d = 0; d < dv; d++) o[d] *= inv;
    }
}

static int attn_items(const attn_ctx *c) { return (c->n_tokens + Q_TILE - 1) / Q_TILE * c->m->n_head_kv * c->n_split; }

/* the attention of every sequence of a batch as one job, so that a decode step of several sequences pays one
 * dispatch per layer rather than one per sequence, and threads share the items of all of them */
typedef struct {
    const attn_ctx *seq;
    int n_seqs;
} attn_batch;

static void attn_task(void *vctx, int ith, int nth) {
    const attn_batch *b = vctx;
    for (int s = 0, base = 0; s < b->n_seqs; base += attn_items(&b->seq[s]), s++) {
        const int n = attn_items(&b->seq[s]);
        for (int item = (ith - base % nth + nth) % nth; item < n; item += nth) attn_item(&b->seq[s], item, ith);
    }
}

static void attn_merge_task(void *vctx, int ith, int nth) {
    const attn_batch *b = vctx;
    for (int s = 0, base = 0; s < b->n_seqs; s++) {
        const attn_ctx *c = &b->seq[s];
        const int n = (c->n_tokens + Q_TILE - 1) / Q_TILE * c->m->n_head_kv;
        for (int item = (ith - base % nth + nth) % nth; item < n; item += nth) attn_merge_item(c, item);
        base += n;
    }
}

/* key ranges per (tile, kv head): enough items to keep up to 8 threads busy, about 128 keys or more each.
 * It does not depend on the thread count, so every thread count gives the same result. */
#define ATTN_MIN_ITEMS 16
static int attn_splits(const el_model *m, int n_tokens, int n_kv, int window) {
    const int items = (n_tokens + Q_TILE - 1) / Q_TILE * m->n_head_kv;
    const int span = window > 0 && window + Q_TILE < n_kv ? window + Q_TILE : n_kv;
    if (items >= ATTN_MIN_ITEMS || span < 256) return 1;
    const int want = (ATTN_MIN_ITEMS + items - 1) / items, cap = span / 128;
    return want < cap ? want : cap;
}

static void store_kv(char *dst, const float *src, size_t n, int kv_type) {
    if (kv_type == EL_F32) {
        memcpy(dst, src, n * sizeof(float));
    } else if (kv_type == EL_F16) {
        el_fp16_t *d = (el_fp16_t *)dst;
        for (size_t i = 0; i < n; i++) d[i] = el_fp32_to_fp16(src[i]);
    } else {
        el_traits[EL_Q8_0].from_float(src, dst, (int64_t)n);
    }
}

/* ---- helpers over the scratch arena ---- */
typedef struct {
    el_pool *pool;
    void *qscratch;
    el_stats *stats;
} run_ctx;

static int linear(run_ctx *r, const el_weight *w, const float *x, int n_tokens, float *out) {
    if (w->packed16 && el_traits[w->type].gemm16) {
        r->stats->weight_bytes += (double)el_packed16_bytes((enum el_type)w->type, w->n_rows, w->n_cols);
        return el_matmul_packed(r->pool, (enum el_type)w->type, w->packed16, w->n_rows, w->n_cols, x, n_tokens, out,
                                w->n_rows, r->qscratch);
    }
    r->stats->weight_bytes += (double)row_bytes(w->type, w->n_cols) * w->n_rows;
    return el_matmul(r->pool, (enum el_type)w->type, w->data, w->n_rows, w->n_cols, x, n_tokens, out, w->n_rows,
                     r->qscratch);
}

/* the product of matrix `slot` (see el_unit): from memory, or unit by unit as the streaming ring delivers its
 * rows (each row's arithmetic is the same either way) */
static int linear_slot(run_ctx *r, const el_model *m, int slot, const el_weight *w, const float *x, int n_tokens,
                       float *out) {
    int first;
    const int n = m->offload ? el_offload_units(m->offload, slot, &first) : 0;
    if (!n) return linear(r, w, x, n_tokens, out);
    r->stats->weight_bytes += (double)row_bytes(w->type, w->n_cols) * w->n_rows;
    const int resident = el_offload_unit(m->offload, first)->row0; /* rows before the first unit are in memory */
    int rc = resident ? el_matmul(r->pool, (enum el_type)w->type, w->data, resident, w->n_cols, x, n_tokens, out,
                                  w->n_rows, r->qscratch)
                      : 0;
    for (int u = first; u < first + n && rc == 0; u++) {
        const el_unit *unit = el_offload_unit(m->offload, u);
        const void *rows = el_offload_acquire(m->offload, u);
        if (!rows) return -1;
        rc = el_matmul(r->pool, (enum el_type)w->type, rows, unit->n_rows, w->n_cols, x, n_tokens, out + unit->row0,
                       w->n_rows, r->qscratch);
        el_offload_release(m->offload, u);
    }
    return rc;
}

/* a layer's product whose inputs were sparsified with threshold t: a decode step with a column layout skips
 * the inactive inputs' weights, anything else multiplies the zeroed inputs densely (the same numbers) */
static int linear_sparse(run_ctx *r, const el_model *m, int l, int slot, const el_weight *w, const float *x,
                         int n_tokens, float *out, float t) {
    const el_colmat *c = m->cols ? &m->cols[(size_t)l * EL_COL_SLOTS + slot] : NULL;
    if (n_tokens == 1 && t > 0.0f && c && c->q) return el_sparse_matvec(r->pool, c, x, t, out, &r->stats->weight_bytes);
    return linear_slot(r, m, l * EL_COL_SLOTS + slot, w, x, n_tokens, out);
}

/* The n_candidates largest values of row[0..n) (indices into top, a min-heap by value). */
static void top_candidates(const float *row, int n, int k, int *top) {
    int size = 0;
    for (int i = 0; i < n; i++) {
        const float v = row[i];
        if (size == k && !(v > row[top[0]])) continue;
        int pos;
        if (size < k) { /* sift up */
            pos = size++;
            while (pos > 0 && row[top[(pos - 1) / 2]] > v) {
                top[pos] = top[(pos - 1) / 2];
                pos = (pos - 1) / 2;
            }
        } else { /* replace the root, sift down */
            pos = 0;
            for (;;) {
                int child = 2 * pos + 1;
                if (child >= size) break;
                if (child + 1 < size && row[top[child + 1]] < row[top[child]]) child++;
                if (!(row[top[child]] < v)) break;
                top[pos] = top[child];
                pos = child;
            }
        }
        top[pos] = i;
    }
}

/* the candidate search of one row, split over threads: each takes the best K of its share of the vocabulary,
 * the caller keeps the best K of those, and the threads recompute them with the model's head */
typedef struct {
    const el_model *m;
    float *row;
    const char *y; /* the row's activations in the head's dot type */
    int K;
    int *cand;   /* nth x K: each thread's best, vocabulary ids */
    int *sel;    /* K: positions in cand of the best K overall */
    int *top;    /* K: their vocabulary ids */
    int *n_cand; /* nth: how many each thread found */
} head_ctx;

static void top_task(void *vctx, int ith, int nth) {
    head_ctx *c = vctx;
    const int V = c->m->n_vocab, v0 = (int)((int64_t)V * ith / nth), v1 = (int)((int64_t)V * (ith + 1) / nth);
    const int n = v1 - v0 < c->K ? v1 - v0 : c->K;
    int *mine = c->cand + (size_t)ith * c->K;
    top_candidates(c->row + v0, v1 - v0, n, mine);
    for (int j = 0; j < n; j++) mine[j] += v0;
    c->n_cand[ith] = n;
}

static void exact_task(void *vctx, int ith, int nth) {
    head_ctx *c = vctx;
    const el_weight *w = &c->m->output;
    const size_t wrow = row_bytes(w->type, c->m->n_embd);
    for (int j = (int)((int64_t)c->K * ith / nth); j < (int)((int64_t)c->K * (ith + 1) / nth); j++)
        el_traits[w->type].dot(c->m->n_embd, c->row + c->top[j], 0, (const char *)w->data + (size_t)c->top[j] * wrow,
                               c->y, 0, 1);
}

/* logits of n_rows normed rows h: all from the cheap head, then its candidates exactly from the real one */
static int candidate_head(run_ctx *r, const el_model *m, const float *h, int n_rows, float *logits) {
    const el_weight *w = &m->output;
    const el_type_traits *t = &el_traits[w->type];
    const int E = m->n_embd, K = m->n_candidates < m->n_vocab ? m->n_candidates : m->n_vocab;
    int rc = 0;
    if (m->output_proj.data) { /* low rank: the copy multiplies the projected rows */
        float *z = malloc(sizeof(float) * (size_t)n_rows * m->output_proj.n_rows);
        if (!z) return -1;
        rc |= linear(r, &m->output_proj, h, n_rows, z);
        rc |= linear(r, &m->output_approx, z, n_rows, logits);
        free(z);
    } else {
        rc |= linear(r, &m->output_approx, h, n_rows, logits);
    }
    const size_t wrow = row_bytes(w->type, E);
    const size_t yrow = t->dot_type == EL_F32 ? sizeof(float) * (size_t)E : row_bytes(t->dot_type, E);
    if (K <= 0) return rc; /* the cheap head alone */
    const int nth = el_pool_size(r->pool);
    /* per thread: its share's best K (cand), their values; then the best K of those (top) */
    int *cand = malloc(sizeof(int) * ((size_t)nth * K * 2 + K + nth));
    float *vals = malloc(sizeof(float) * (size_t)nth * K);
    char *y = malloc(yrow + 64);
    if (!cand || !vals || !y) {
        free(cand);
        free(vals);
        free(y);
        return -1;
    }
    head_ctx c = {m, NULL, y, K, cand, cand + (size_t)nth * K, cand + (size_t)nth * K * 2,
                  cand + (size_t)nth * K * 2 + K};
    for (int i = 0; i < n_rows && rc == 0; i++) {
        c.row = logits + (size_t)i * m->n_vocab;
        const float *hi = h + (size_t)i * E;
        if (t->dot_type == EL_F32) memcpy(y, hi, sizeof(float) * (size_t)E);
        else el_traits[t->dot_type].from_float(hi, y, E);
        el_pool_run(r->pool, top_task, &c);
        int total = 0;
        for (int k = 0; k < nth; k++)
            for (int j = 0; j < c.n_cand[k]; j++, total++) {
                c.cand[total] = c.cand[(size_t)k * K + j]; /* total <= k K + j: compacting in place */
                vals[total] = c.row[c.cand[total]];
            }
        top_candidates(vals, total, K, c.sel);
        for (int j = 0; j < K; j++) c.top[j] = c.cand[c.sel[j]];
        el_pool_run(r->pool, exact_task, &c);
        r->stats->weight_bytes += (double)K * wrow;
    }
    free(cand);
    free(vals);
    free(y);
    return rc;
}

static void add_bias(float *x, const el_weight *b, int n_tokens, int n) {
    if (!b->data) return;
    const float *bias = b->data;
    for (int t = 0; t < n_tokens; t++)
        for (int i = 0; i < n; i++) x[(size_t)t * n + i] += bias[i];
}

/* bytes for the quantized activations of the largest product of this batch (they are reused by each) */
static size_t max_scratch(const el_model *m, int n_tokens) {
    size_t best = el_matmul_scratch_bytes((enum el_type)m->output.type, m->output.n_cols, n_tokens);
    const el_weight *heads[] = {&m->output_approx, &m->output_proj};
    for (int i = 0; i < 2; i++) {
        const size_t s = heads[i]->data ? el_matmul_scratch_bytes((enum el_type)heads[i]->type, heads[i]->n_cols, n_tokens) : 0;
        if (s > best) best = s;
    }
    for (int l = 0; l < m->n_layers; l++) {
        const el_layer *L = &m->layers[l];
        const el_weight *ws[] = {&L->wq,   &L->wk,       &L->wv,      &L->wo,     &L->gate,     &L->up,
                                 &L->down, &L->gate_inp, &L->gate_exps, &L->up_exps, &L->down_exps};
        for (int i = 0; i < 11; i++) {
            const size_t s = el_matmul_scratch_bytes((enum el_type)ws[i]->type, ws[i]->n_cols, n_tokens);
            if (s > best) best = s;
        }
    }
    return best;
}

/* ---- per-token stages, split over threads by token ranges ---- */
typedef struct {
    const el_model *m;
    const el_layer *L;
    int n_tokens, kv_type;
    float *x, *h, *q, *k, *v, *o, *g, *u;
    char **kc, **vc; /* per token: where its keys and values go in its sequence's cache (this layer) */
    const float *cs, *sn; /* RoPE table of this layer's base */
    const el_weight *norm; /* the norm applied by residual_norm_task */
} stage_ctx;

static void token_range(int n, int ith, int nth, int *t0, int *t1) {
    *t0 = (int)((int64_t)n * ith / nth);
    *t1 = (int)((int64_t)n * (ith + 1) / nth);
}

/* q/k/v biases, per-head q/k norms, RoPE, and the new keys/values into the cache */
static void qkv_task(void *vctx, int ith, int nth) {
    stage_ctx *c = vctx;
    const el_model *m = c->m;
    const el_layer *L = c->L;
    const int QD = m->n_head * m->head_dim, KD = m->n_head_kv * m->head_dim, VD = m->n_head_kv * m->head_dim_v;
    const int half = m->rope_dim / 2;
    int t0, t1;
    token_range(c->n_tokens, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++) {
        float *qt = c->q + (size_t)t * QD, *kt = c->k + (size_t)t * KD, *vt = c->v + (size_t)t * VD;
        add_bias(qt, &L->bq, 1, QD);
        add_bias(kt, &L->bk, 1, KD);
        add_bias(vt, &L->bv, 1, VD);
        if (L->q_norm.data) norm_rows(qt, qt, &L->q_norm, m->n_head, m->head_dim, m->norm_eps);
        if (L->k_norm.data) norm_rows(kt, kt, &L->k_norm, m->n_head_kv, m->head_dim, m->norm_eps);
        if (c->cs) {
            rope(qt, m->n_head, m->head_dim, m->rope_dim, c->cs + (size_t)t * half, c->sn + (size_t)t * half, m->rope_neox);
            rope(kt, m->n_head_kv, m->head_dim, m->rope_dim, c->cs + (size_t)t * half, c->sn + (size_t)t * half,
                 m->rope_neox);
        }
        store_kv(c->kc[t], kt, KD, c->kv_type);
        store_kv(c->vc[t], vt, VD, c->kv_type);
    }
}

/* optional post-norm of the block output o, residual add into x, then h = norm(x) for the next block */
static void residual_norm_task(void *vctx, int ith, int nth) {
    stage_ctx *c = vctx;
    const int E = c->m->n_embd;
    int t0, t1;
    token_range(c->n_tokens, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++) {
        float *o = c->o + (size_t)t * E, *x = c->x + (size_t)t * E;
        for (int i = 0; i < E; i++) x[i] += o[i];
        if (c->norm) rms_norm(c->h + (size_t)t * E, x, c->norm->data, E, c->m->norm_eps);
    }
}

static void post_norm_task(void *vctx, int ith, int nth) {
    stage_ctx *c = vctx;
    const int E = c->m->n_embd;
    int t0, t1;
    token_range(c->n_tokens, ith, nth, &t0, &t1);
    for (int t = t0; t < t1; t++) rms_norm(c->o + (size_t)t * E, c->o + (size_t)t * E, c->norm->data, E, c->m->norm_eps);
}

static void gate_task(void *vctx, int ith, int nth) {
    stage_ctx *c = vctx;
    const size_t F = (size_t)c->m->n_ff;
    int t0, t1;
    token_range(c->n_tokens, ith, nth, &t0, &t1);
    float *g = c->g + (size_t)t0 * F, *u = c->u + (size_t)t0 * F;
    const size_t n = (size_t)(t1 - t0) * F;
    if (el_traits[EL_F32].glu) el_traits[EL_F32].glu(g, u, n, c->m->gelu);
    else el_glu_rows(g, u, n, c->m->gelu);
}

/* a matrix of n_rows x n_cols whose rows are whole blocks, with a matrix product in its type */
static int matrix_ok(const el_weight *w, int n_rows, int n_cols) {
    if (!w->data || w->type < 0 || w->type >= EL_TYPE_COUNT || !el_traits[w->type].dot) return 0;
    return w->n_rows == n_rows && w->n_cols == n_cols && n_cols % el_traits[w->type].block_size == 0;
}

static int vector_ok(const el_weight *w, int n) { return !w->data || (w->type == EL_F32 && w->n_cols == n); }

#define ROPE_CTX_PAD 256
#define MIN_EXPERT_WEIGHT_SUM 6.103515625e-5f /* llama.cpp's floor under the chosen experts' weight sum */

const char *el_model_check(const el_model *m) {
    if (m->n_layers < 1 || m->n_embd < 1 || m->n_ff < 1 || m->n_vocab < 1) return "layers, widths and vocabulary must be >= 1";
    if (m->n_head < 1 || m->n_head_kv < 1 || m->n_head % m->n_head_kv) return "head counts must be >= 1 and divide";
    if (m->head_dim < 1 || m->head_dim_v < 1) return "head widths must be >= 1";
    if (m->n_expert < 0 || m->n_expert > 4096 || (m->n_expert && (m->n_expert_used < 1 || m->n_expert_used > m->n_expert)))
        return "expert counts must satisfy 1 <= used <= experts <= 4096";
    if (m->rope_dim < 0 || m->rope_dim > m->head_dim || m->rope_dim % 2) return "rope dimension must be even and <= head width";
    if (!(m->norm_eps > 0) || !isfinite(m->norm_eps) || !(m->rope_base > 0) || !isfinite(m->rope_base))
        return "norm epsilon and rope base must be finite and > 0";
    if (!isfinite(m->rope_scale) || !isfinite(m->attn_scale) || !isfinite(m->embed_scale) || m->sliding_window < 0 ||
        !isfinite(m->rope_mscale) || !isfinite(m->rope_ext_factor) || !isfinite(m->rope_yarn_low) ||
        !isfinite(m->rope_yarn_high))
        return "scales must be finite and the sliding window >= 0";
    if (!vector_ok(&m->rope_factors_short, m->rope_dim / 2) || !vector_ok(&m->rope_factors_long, m->rope_dim / 2))
        return "rope factors must hold one float per rotated pair";
    if (!m->flags) return "per-layer flags missing";
    for (int i = 0; m->thresholds && i < m->n_layers * EL_SPARSE_GROUPS; i++)
        if (!(m->thresholds[i] >= 0.0f) || !isfinite(m->thresholds[i])) return "sparsity thresholds must be finite and >= 0";
    if (m->thresholds && m->n_expert) return "activation sparsity is not supported for mixture-of-experts layers";
    const int E = m->n_embd, QD = m->n_head * m->head_dim, KD = m->n_head_kv * m->head_dim;
    const int VD = m->n_head_kv * m->head_dim_v, OD = m->n_head * m->head_dim_v;
    if (!m->tok_embd.data || m->tok_embd.n_rows != m->n_vocab || m->tok_embd.n_cols != E ||
        !el_traits[m->tok_embd.type].to_float || !matrix_ok(&m->output, m->n_vocab, E) || !m->output_norm.data ||
        !vector_ok(&m->output_norm, E))
        return "embedding, output norm or output head do not match the model's widths";
    for (int l = 0; l < m->n_layers; l++) {
        const el_layer *L = &m->layers[l];
        if (!matrix_ok(&L->wq, QD, E) || !matrix_ok(&L->wk, KD, E) || !matrix_ok(&L->wv, VD, E) ||
            !matrix_ok(&L->wo, E, OD))
            return "a layer's attention matrix does not match the model's widths";
        const int X = m->n_expert;
        if (X ? !matrix_ok(&L->gate_inp, X, E) || !matrix_ok(&L->gate_exps, X * m->n_ff, E) ||
                    !matrix_ok(&L->up_exps, X * m->n_ff, E) || !matrix_ok(&L->down_exps, X * E, m->n_ff)
              : !matrix_ok(&L->gate, m->n_ff, E) || !matrix_ok(&L->up, m->n_ff, E) || !matrix_ok(&L->down, E, m->n_ff))
            return "a layer's feed-forward matrix does not match the model's widths";
        if (!L->attn_norm.data || !L->ffn_norm.data || !vector_ok(&L->attn_norm, E) || !vector_ok(&L->ffn_norm, E) ||
            !vector_ok(&L->bq, QD) || !vector_ok(&L->bk, KD) || !vector_ok(&L->bv, VD) ||
            !vector_ok(&L->q_norm, m->head_dim) || !vector_ok(&L->k_norm, m->head_dim) ||
            !vector_ok(&L->attn_post_norm, E) || !vector_ok(&L->ffn_post_norm, E))
            return "a layer's norm or bias does not match the model's widths";
    }
    return NULL;
}

/* activation sparsity: entries of x (n values) smaller in magnitude than t become zero */
static void sparsify(float *x, size_t n, float t) {
    if (t <= 0.0f) return;
    for (size_t i = 0; i < n; i++)
        if (fabsf(x[i]) < t) x[i] = 0.0f;
}

/* floats of scratch a mixture-of-experts layer needs for n tokens (see moe_ffn) */
static size_t moe_floats(const el_model *m, size_t n) {
    return m->n_expert ? n * (m->n_expert + 2 * (size_t)m->n_embd + 2 * (size_t)m->n_expert_used + 2) : 0;
}

/* Mixture of experts into c->o: softmax router over all experts, the top n_expert_used per token with their
 * weights renormalised (as llama.cpp), and each chosen expert's gated FFN run once on the tokens routed to it.
 * Experts that no token chose are never read. */
static int moe_ffn(run_ctx *r, const stage_ctx *c, float *scratch) {
    const el_model *m = c->m;
    const el_layer *L = c->L;
    const int T = c->n_tokens, E = m->n_embd, F = m->n_ff, X = m->n_expert, K = m->n_expert_used;
    float *probs = scratch, *xe = probs + (size_t)T * X, *de = xe + (size_t)T * E, *wt = de + (size_t)T * E;
    float *rw = wt + (size_t)T * K;
    int *chosen = (int *)(rw + T), *rows = chosen + (size_t)T * K;
    int rc = linear(r, &L->gate_inp, c->h, T, probs);
    for (int t = 0; t < T && rc == 0; t++) {
        float *p = probs + (size_t)t * X, mx = -INFINITY;
        for (int e = 0; e < X; e++) mx = p[e] > mx ? p[e] : mx;
        double sum = 0.0;
        for (int e = 0; e < X; e++) sum += (p[e] = expf(p[e] - mx));
        for (int e = 0; e < X; e++) p[e] = (float)(p[e] / sum);
        float total = 0.0f;
        for (int j = 0; j < K; j++) { /* the j-th most probable expert not chosen yet */
            int best = -1;
            for (int e = 0; e < X; e++) {
                int taken = 0;
                for (int i = 0; i < j; i++) taken |= chosen[(size_t)t * K + i] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            chosen[(size_t)t * K + j] = best;
            total += wt[(size_t)t * K + j] = p[best];
        }
        total = total > MIN_EXPERT_WEIGHT_SUM ? total : MIN_EXPERT_WEIGHT_SUM;
        for (int j = 0; j < K; j++) wt[(size_t)t * K + j] /= total;
    }
    memset(c->o, 0, sizeof(float) * (size_t)T * E);
    const size_t gb = row_bytes(L->gate_exps.type, E) * F, ub = row_bytes(L->up_exps.type, E) * F;
    const size_t db = row_bytes(L->down_exps.type, F) * E;
    for (int e = 0; e < X && rc == 0; e++) {
        int n = 0;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < K; j++)
                if (chosen[(size_t)t * K + j] == e) {
                    rows[n] = t;
                    rw[n++] = wt[(size_t)t * K + j];
                }
        if (!n) continue;
        for (int i = 0; i < n; i++) memcpy(xe + (size_t)i * E, c->h + (size_t)rows[i] * E, sizeof(float) * E);
        r->stats->weight_bytes += (double)(gb + ub + db);
        const void *slab[3] = {(const char *)L->gate_exps.data + e * gb, (const char *)L->up_exps.data + e * ub,
                               (const char *)L->down_exps.data + e * db};
        if (el_offload_has_experts(m->offload) && el_offload_expert(m->offload, (int)(L - m->layers), e, slab))
            return -1; /* streamed: the expert's slabs from the cache, read when missing */
        rc |= el_matmul(r->pool, L->gate_exps.type, slab[0], F, E, xe, n, c->g, F, r->qscratch);
        rc |= el_matmul(r->pool, L->up_exps.type, slab[1], F, E, xe, n, c->u, F, r->qscratch);
        stage_ctx ec = *c;
        ec.n_tokens = n;
        el_pool_run(n > 1 ? r->pool : NULL, gate_task, &ec);
        rc |= el_matmul(r->pool, L->down_exps.type, slab[2], E, F, c->g, n, de, E, r->qscratch);
        for (int i = 0; i < n; i++) {
            float *o = c->o + (size_t)rows[i] * E;
            const float *d = de + (size_t)i * E;
            for (int k = 0; k < E; k++) o[k] += rw[i] * d[k];
        }
    }
    return rc;
}

/* buffer i of the scratch, grown to at least n bytes (kept for the next call) */
static void *scratch_get(el_scratch *s, int i, size_t n) {
    if (s->size[i] < n) {
        free(s->ptr[i]);
        s->ptr[i] = malloc(n);
        s->size[i] = s->ptr[i] ? n : 0;
    }
    return s->ptr[i];
}

void el_scratch_free(el_scratch *s) {
    for (size_t i = 0; i < sizeof(s->ptr) / sizeof(s->ptr[0]); i++) {
        free(s->ptr[i]);
        s->ptr[i] = NULL;
        s->size[i] = 0;
    }
}

int el_forward_batch(const el_model *m, el_pool *pool, el_scratch *scratch, const int32_t *tokens, const el_seq *seqs,
                     int n_seqs, int kv_type, int n_ctx, const int32_t *out_rows, int n_out_rows, float *logits,
                     const float *x_in, float *x_out, el_stats *stats) {
    el_stats ignored;
    if (!stats) stats = &ignored;
    memset(stats, 0, sizeof(*stats));
    if (n_seqs < 1 || n_out_rows < 0 || (kv_type != EL_F32 && kv_type != EL_F16 && kv_type != EL_Q8_0)) return -1;
    if (kv_type == EL_Q8_0 && (m->head_dim % QK8_0 || m->head_dim_v % QK8_0)) return -1;
    int n_tokens = 0;
    for (int s = 0; s < n_seqs; s++) {
        const el_seq *q = &seqs[s];
        if (q->n_tokens <= 0 || q->n_past < 0 || q->n_past + q->n_tokens > n_ctx || !q->k_cache || !q->v_cache) return -1;
        n_tokens += q->n_tokens;
    }
    for (int t = 0; !x_in && t < n_tokens; t++)
        if (tokens[t] < 0 || tokens[t] >= m->n_vocab) return -1;
    if (n_out_rows > n_tokens || (n_out_rows > 0 && !m->output.data && !m->offload)) return -1; /* rows, a head */
    for (int i = 0; i < n_out_rows; i++)
        if (out_rows[i] < 0 || out_rows[i] >= n_tokens) return -1;
    const int E = m->n_embd, F = m->n_ff, half = m->rope_dim / 2;
    const int QD = m->n_head * m->head_dim, KD = m->n_head_kv * m->head_dim, VD = m->n_head_kv * m->head_dim_v;
    const int OD = m->n_head * m->head_dim_v;
    const size_t k_row = kv_bytes(kv_type, (size_t)KD), v_row = kv_bytes(kv_type, (size_t)VD);
    const int nth = el_pool_size(pool);
    const size_t T = (size_t)n_tokens;
    const int R = attn_rows(m);
    size_t attn_part = 0; /* every sequence's partial outputs (the sequences are attended in one job) */
    for (int s = 0; s < n_seqs; s++) {
        const int nt = seqs[s].n_tokens, tiles = (nt + Q_TILE - 1) / Q_TILE;
        attn_part += (size_t)tiles * m->n_head_kv * attn_splits(m, nt, seqs[s].n_past + nt, 0) * R * (m->head_dim_v + 2);
    }
    const size_t attn_scratch = (size_t)R * (n_ctx + m->head_dim); /* per thread */
    const size_t floats = T * (2 * E + QD + KD + VD + OD + 2 * F + E) + nth * attn_scratch + attn_part + 4 * T * half +
                          moe_floats(m, T);
    el_scratch own = {0}; /* without a caller's scratch: buffers for this call only */
    if (!scratch) scratch = &own;
    float *arena = scratch_get(scratch, 0, floats * sizeof(float));
    void *qscratch = scratch_get(scratch, 1, max_scratch(m, n_tokens) + 64);
    /* per token: its position, and where its keys and values go in the current layer */
    int *pos = scratch_get(scratch, 2, sizeof(int) * T);
    char **slots = scratch_get(scratch, 3, sizeof(char *) * 2 * T);
    /* a Q8_0 cache is read by the Q8_0 dot kernel, so the queries are quantized to Q8_0 too (as llama.cpp) */
    char *q8 = kv_type == EL_Q8_0 ? scratch_get(scratch, 4, kv_bytes(EL_Q8_0, T * (size_t)QD) + 64) : NULL;
    attn_ctx *actx = scratch_get(scratch, 5, sizeof(attn_ctx) * (size_t)n_seqs);
    if (!arena || !qscratch || !pos || !slots || !actx || (kv_type == EL_Q8_0 && !q8)) {
        el_scratch_free(&own);
        return -1;
    }
    float *x = arena, *h = x + T * E, *q = h + T * E, *k = q + T * QD, *v = k + T * KD, *att = v + T * VD;
    float *g = att + T * OD, *u = g + T * F, *o = u + T * F, *scores = o + T * E;
    float *part = scores + nth * attn_scratch, *cs = part + attn_part, *sn = cs + T * half;
    float *cs_swa = sn + T * half, *sn_swa = cs_swa + T * half, *moe = sn_swa + T * half;
    char **kslot = slots, **vslot = slots + T;
    for (int s = 0, t = 0; s < n_seqs; s++)
        for (int i = 0; i < seqs[s].n_tokens; i++) pos[t++] = seqs[s].n_past + i;
    run_ctx r = {pool, qscratch, stats};
    int rc = 0;
    el_io_stats io0 = {0};
    if (m->offload) el_offload_stats(m->offload, &io0);

    /* LongRoPE's factors: long ones when the context, padded as llama.cpp pads it, exceeds the original one */
    const int padded_ctx = (n_ctx + ROPE_CTX_PAD - 1) / ROPE_CTX_PAD * ROPE_CTX_PAD;
    const el_weight *fw = m->rope_factors_long.data && padded_ctx > m->n_ctx_orig ? &m->rope_factors_long
                                                                                 : &m->rope_factors_short;
    const float *factors = fw->data;
    rope_table(cs, sn, n_tokens, pos, m, m->rope_base, m->rope_scale, factors);
    if (m->rope_base_swa > 0) rope_table(cs_swa, sn_swa, n_tokens, pos, m, m->rope_base_swa, 1.0f, factors);

    /* embeddings, or the hidden states an earlier pipeline stage computed */
    const el_type_traits *et = &el_traits[m->tok_embd.type];
    const size_t erow = row_bytes(m->tok_embd.type, E);
    if (x_in) memcpy(x, x_in, T * E * sizeof(float));
    for (int t = 0; !x_in && t < n_tokens; t++) {
        const void *row = m->tok_embd.data ? (const char *)m->tok_embd.data + (size_t)tokens[t] * erow
                                           : el_offload_read_row(m->offload, m->embd_offset + (int64_t)tokens[t] * erow, erow);
        if (!row) {
            rc = -1;
            break;
        }
        et->to_float(row, x + (size_t)t * E, E);
        stats->weight_bytes += (double)erow;
        if (m->embed_scale != 1.0f)
            for (int i = 0; i < E; i++) x[(size_t)t * E + i] *= m->embed_scale;
    }
    norm_rows(h, x, &m->layers[0].attn_norm, n_tokens, E, m->norm_eps);

    for (int l = 0; l < m->n_layers && rc == 0; l++) {
        const el_layer *L = &m->layers[l];
        const int swa = m->flags[l] & EL_LAYER_SWA, no_rope = m->flags[l] & EL_LAYER_NO_ROPE;
        const int own_base = swa && m->rope_base_swa > 0;
        for (int s = 0, t = 0; s < n_seqs; s++)
            for (int i = 0; i < seqs[s].n_tokens; i++, t++) {
                kslot[t] = (char *)seqs[s].k_cache + ((size_t)l * n_ctx + (size_t)pos[t]) * k_row;
                vslot[t] = (char *)seqs[s].v_cache + ((size_t)l * n_ctx + (size_t)pos[t]) * v_row;
            }
        stage_ctx sc = {m, L, n_tokens, kv_type, x, h, q, k, v, o, g, u, kslot, vslot,
                        no_rope ? NULL : own_base ? cs_swa : cs, no_rope ? NULL : own_base ? sn_swa : sn, NULL};

        const float *th = m->thresholds ? m->thresholds + (size_t)l * EL_SPARSE_GROUPS : NULL;
        /* attention block: h holds norm(x) */
        const float t_in = th ? th[0] : 0.0f, t_att = th ? th[1] : 0.0f;
        const float t_ffn = th ? th[2] : 0.0f, t_down = th ? th[3] : 0.0f;
        sparsify(h, T * E, t_in);
        rc |= linear_sparse(&r, m, l, 0, &L->wq, h, n_tokens, q, t_in);
        rc |= linear_sparse(&r, m, l, 1, &L->wk, h, n_tokens, k, t_in);
        rc |= linear_sparse(&r, m, l, 2, &L->wv, h, n_tokens, v, t_in);
        el_pool_run(el_pool_for(pool, T * (QD + KD + VD)), qkv_task, &sc);
        if (q8) el_traits[EL_Q8_0].from_float(q, q8, (int64_t)T * QD);
        const int window = swa ? m->sliding_window : 0;
        int merge_work = 0; /* a merge worth the pool: prompt tokens, or key ranges to combine */
        float *seq_part = part;
        for (int s = 0, t0 = 0; s < n_seqs; t0 += seqs[s].n_tokens, s++) { /* each sequence over its own cache */
            const int nt = seqs[s].n_tokens, n_past = seqs[s].n_past, n_kv = n_past + nt;
            const char *kc = (const char *)seqs[s].k_cache + (size_t)l * n_ctx * k_row;
            const char *vc = (const char *)seqs[s].v_cache + (size_t)l * n_ctx * v_row;
            actx[s] = (attn_ctx){m, q + (size_t)t0 * QD, q8 ? q8 + kv_bytes(EL_Q8_0, (size_t)t0 * QD) : NULL, kc, vc,
                                 att + (size_t)t0 * OD, seq_part, scores, nt, n_past, window, n_ctx, kv_type,
                                 attn_splits(m, nt, n_kv, window)};
            seq_part += (size_t)attn_items(&actx[s]) * R * (m->head_dim_v + 2);
            merge_work |= nt > 1 || actx[s].n_split > 1;
            stats->kv_bytes += (double)(n_kv - first_key(n_kv - 1, window)) * (double)(k_row + v_row);
        }
        attn_batch ab = {actx, n_seqs};
        el_pool_run(pool, attn_task, &ab);
        el_pool_run(merge_work ? pool : NULL, attn_merge_task, &ab);
        sparsify(att, T * OD, t_att);
        rc |= linear_sparse(&r, m, l, 3, &L->wo, att, n_tokens, o, t_att);
        if (L->attn_post_norm.data) {
            sc.norm = &L->attn_post_norm;
            el_pool_run(el_pool_for(pool, T * E), post_norm_task, &sc);
        }
        sc.norm = &L->ffn_norm;
        el_pool_run(el_pool_for(pool, T * E), residual_norm_task, &sc);

        /* feed-forward block: h holds norm(x) */
        if (m->n_expert) {
            rc |= moe_ffn(&r, &sc, moe);
        } else {
            sparsify(h, T * E, t_ffn);
            rc |= linear_sparse(&r, m, l, 4, &L->gate, h, n_tokens, g, t_ffn);
            rc |= linear_sparse(&r, m, l, 5, &L->up, h, n_tokens, u, t_ffn);
            el_pool_run(el_pool_for(pool, T * F), gate_task, &sc);
            sparsify(g, T * F, t_down);
            rc |= linear_sparse(&r, m, l, 6, &L->down, g, n_tokens, o, t_down);
        }
        if (L->ffn_post_norm.data) {
            sc.norm = &L->ffn_post_norm;
            el_pool_run(el_pool_for(pool, T * E), post_norm_task, &sc);
        }
        sc.norm = l + 1 < m->n_layers ? &m->layers[l + 1].attn_norm : NULL;
        el_pool_run(el_pool_for(pool, T * E), residual_norm_task, &sc);
    }

    if (rc == 0 && x_out) memcpy(x_out, x, T * E * sizeof(float)); /* the residual stream, for the next stage */
    if (rc == 0 && n_out_rows > 0) {
        for (int i = 0; i < n_out_rows; i++)
            rms_norm(h + (size_t)i * E, x + (size_t)out_rows[i] * E, m->output_norm.data, E, m->norm_eps);
        if (m->output_approx.data) rc |= candidate_head(&r, m, h, n_out_rows, logits);
        else rc |= linear_slot(&r, m, m->n_layers * EL_COL_SLOTS, &m->output, h, n_out_rows, logits);
        if (m->final_softcap > 0) {
            const float cap = m->final_softcap;
            for (size_t i = 0; i < (size_t)n_out_rows * m->n_vocab; i++) logits[i] = tanhf(logits[i] / cap) * cap;
        }
    }
    if (m->offload) {
        el_offload_stats(m->offload, &stats->io);
        stats->io.bytes -= io0.bytes;
        stats->io.reads -= io0.reads;
        stats->io.wait_s -= io0.wait_s;
        stats->io.busy_s -= io0.busy_s;
        stats->io.expert_hits -= io0.expert_hits;
        stats->io.expert_misses -= io0.expert_misses;
    }
    el_scratch_free(&own);
    return rc ? -1 : 0;
}
