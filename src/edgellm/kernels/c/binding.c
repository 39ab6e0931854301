/* Python binding: edgellm.kernels._C. Buffers in, buffers out (no NumPy C API); the GIL is released
 * around every kernel so other Python threads (the server) keep running. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "edgellm.h"

/* (re)sized to n_threads; the caller holds the lock that guards *pool */
static el_pool *sized_pool(el_pool **pool, int n_threads) {
    if (n_threads < 1) n_threads = 1;
    if (!*pool || el_pool_threads(*pool) != n_threads) {
        el_pool_free(*pool);
        *pool = el_pool_create(n_threads);
    }
    return *pool;
}

/* Standalone kernels (matmul, quantize, ...) share one pool on the process's default path; calls from several
 * Python threads take turns. A model plan has a pool and a path of its own (model_obj). */
static el_pool *shared = NULL;
static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;

static el_pool *get_pool(int n_threads) { return sized_pool(&shared, n_threads); }

/* run `call` with the GIL released and the shared pool held (n_threads workers, default path) */
#define SHARED_POOL_CALL(call)                 \
    Py_BEGIN_ALLOW_THREADS                      \
    pthread_mutex_lock(&shared_lock);          \
    el_use_isa(el_default_isa());              \
    call;                                      \
    pthread_mutex_unlock(&shared_lock);        \
    Py_END_ALLOW_THREADS

/* A model plan with its run context: its kernel path and thread pool, so two models in one process do not
 * disturb each other; `lock` makes forward calls on one model (from any thread) take turns. */
typedef struct {
    el_model m; /* first: the capsule's pointer is the plan's */
    enum el_isa isa;
    el_pool *pool;
    el_scratch scratch; /* the forward pass's buffers, reused from call to call */
    pthread_mutex_t lock;
} model_obj;

/* this thread runs the calling function on the process's default kernel path */
#define USE_DEFAULT_PATH() el_use_isa(el_default_isa())

static int check_type(int type) {
    if (type < 0 || type >= EL_TYPE_COUNT || !el_traits[type].name) {
        PyErr_Format(PyExc_ValueError, "tensor type %d has no C kernel", type);
        return -1;
    }
    return 0;
}

static size_t row_bytes(int type, int n) {
    return (size_t)(n / el_traits[type].block_size) * el_traits[type].type_size;
}

static PyObject *py_capabilities(PyObject *self, PyObject *args) {
    USE_DEFAULT_PATH();
    PyObject *compiled = PyList_New(0), *supported = PyList_New(0);
    for (int i = 0; i < EL_ISA_COUNT; i++) {
        PyObject *name = PyUnicode_FromString(el_isa_names[i]);
        if (el_isa_compiled((enum el_isa)i)) PyList_Append(compiled, name);
        if (el_cpu_supports((enum el_isa)i)) PyList_Append(supported, name);
        Py_DECREF(name);
    }
    PyObject *result = Py_BuildValue("{s:N,s:N,s:s}", "compiled", compiled, "supported", supported, "current",
                                     el_isa_names[el_current_isa()]);
    return result;
}

static PyObject *py_set_isa(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s", &name)) return NULL;
    for (int i = 0; i < EL_ISA_COUNT; i++) {
        if (strcmp(name, el_isa_names[i]) == 0) {
            if (el_set_isa((enum el_isa)i) != 0) {
                PyErr_Format(PyExc_ValueError, "kernel path '%s' is not available on this CPU/build", name);
                return NULL;
            }
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "unknown kernel path '%s'", name);
    return NULL;
}

static PyObject *py_type_info(PyObject *self, PyObject *args) {
    USE_DEFAULT_PATH();
    int type;
    if (!PyArg_ParseTuple(args, "i", &type)) return NULL;
    if (check_type(type)) return NULL;
    const el_type_traits *t = &el_traits[type];
    return Py_BuildValue("{s:s,s:i,s:n,s:i,s:O,s:O,s:O}", "name", t->name, "block_size", t->block_size,
                         "type_size", (Py_ssize_t)t->type_size, "dot_type", (int)t->dot_type, "has_dot",
                         t->dot ? Py_True : Py_False, "has_from_float", t->from_float ? Py_True : Py_False,
                         "has_to_float", t->to_float ? Py_True : Py_False);
}

/* matmul(type, w, n_rows, n_cols, x, n_tokens, out, n_threads[, packed]): with packed, w is first interleaved
 * with el_pack16 and multiplied by the gemm16 kernel (for tests and measurements; ValueError where there is none) */
static PyObject *py_matmul(PyObject *self, PyObject *args) {
    USE_DEFAULT_PATH();
    int type, n_rows, n_cols, n_tokens, n_threads, packed = 0;
    Py_buffer w, x, out;
    if (!PyArg_ParseTuple(args, "iy*iiy*iw*i|p", &type, &w, &n_rows, &n_cols, &x, &n_tokens, &out, &n_threads,
                          &packed))
        return NULL;
    PyObject *result = NULL;
    void *scratch = NULL, *w16 = NULL;
    if (check_type(type)) goto done;
    const el_type_traits *t = &el_traits[type];
    if (!t->dot) {
        PyErr_Format(PyExc_ValueError, "no matmul kernel for %s", t->name);
        goto done;
    }
    if (n_rows < 0 || n_cols <= 0 || n_tokens < 0 || n_cols % t->block_size) {
        PyErr_SetString(PyExc_ValueError, "bad matmul shape");
        goto done;
    }
    if ((size_t)w.len < row_bytes(type, n_cols) * (size_t)n_rows ||
        (size_t)x.len < (size_t)n_cols * n_tokens * sizeof(float) ||
        (size_t)out.len < (size_t)n_rows * n_tokens * sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "matmul buffer too small for the given shape");
        goto done;
    }
    const size_t w16_bytes = packed ? el_packed16_bytes((enum el_type)type, n_rows, n_cols) : 0;
    if (packed && (!w16_bytes || !t->gemm16)) {
        PyErr_Format(PyExc_ValueError, "no packed kernel for %s with %d x %d on this path", t->name, n_rows, n_cols);
        goto done;
    }
    size_t scratch_bytes = el_matmul_scratch_bytes((enum el_type)type, n_cols, n_tokens);
    if ((scratch_bytes && !(scratch = malloc(scratch_bytes))) ||
        (packed && !(w16 = aligned_alloc(64, (w16_bytes + 63) / 64 * 64)))) {
        PyErr_NoMemory();
        goto done;
    }
    if (packed) el_pack16((enum el_type)type, w.buf, n_rows, n_cols, w16);
    int rc;
    SHARED_POOL_CALL(rc = packed ? el_matmul_packed(get_pool(n_threads), (enum el_type)type, w16, n_rows, n_cols, x.buf,
                                                     n_tokens, out.buf, n_rows, scratch)
                                 : el_matmul(get_pool(n_threads), (enum el_type)type, w.buf, n_rows, n_cols, x.buf,
                                             n_tokens, out.buf, n_rows, scratch));
    if (rc != 0) {
        PyErr_SetString(PyExc_RuntimeError, "matmul failed");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    free(scratch);
    free(w16);
    PyBuffer_Release(&w);
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return result;
}

/* dot(type, w, y, n, nc, by, bs): the raw kernel, s[c * bs] = dot(w, y + c * by bytes); returns nc floats */
static PyObject *py_dot(PyObject *self, PyObject *args) {
    USE_DEFAULT_PATH();
    int type, n, nc;
    Py_ssize_t by, bs;
    Py_buffer w, y;
    if (!PyArg_ParseTuple(args, "iy*y*iinn", &type, &w, &y, &n, &nc, &by, &bs)) return NULL;
    PyObject *result = NULL;
    float *s = NULL;
    if (check_type(type)) goto done;
    const el_type_traits *t = &el_traits[type];
    const el_type_traits *yt = &el_traits[t->dot_type];
    if (!t->dot || nc < 1 || bs < 1 || n % t->block_size || (size_t)w.len < row_bytes(type, n) || !yt->name ||
        by < (Py_ssize_t)row_bytes(t->dot_type, n) || (size_t)y.len < (size_t)(nc - 1) * by + row_bytes(t->dot_type, n)) {
        PyErr_SetString(PyExc_ValueError, "bad dot arguments");
        goto done;
    }
    s = calloc((size_t)nc * bs, sizeof(float));
    if (!s) {
        PyErr_NoMemory();
        goto done;
    }
    t->dot(n, s, (size_t)bs, w.buf, y.buf, (size_t)by, nc);
    result = PyList_New(nc);
    if (result)
        for (int c = 0; c < nc; c++) PyList_SET_ITEM(result, c, PyFloat_FromDouble(s[(size_t)c * bs]));
done:
    free(s);
    PyBuffer_Release(&w);
    PyBuffer_Release(&y);
    return result;
}

/* mix(type, x, p, n, nr, m, bx): the weighted-rows kernel of a KV cache type, out[r, d] = sum_j p[r, j] x_j[d]
 * with x_j row j (n elements, bx bytes apart) and p float32 (nr x m); returns nr * n floats */
static PyObject *py_mix(PyObject *self, PyObject *args) {
    USE_DEFAULT_PATH();
    int type, n, nr, m;
    Py_ssize_t bx;
    Py_buffer x, p;
    if (!PyArg_ParseTuple(args, "iy*y*iiin", &type, &x, &p, &n, &nr, &m, &bx)) return NULL;
    PyObject *result = NULL;
    float *s = NULL;
    if (check_type(type)) goto done;
    const el_type_traits *t = &el_traits[type];
    if (!t->mix || n < 1 || nr < 1 || m < 1 || n % t->block_size || (size_t)p.len < (size_t)nr * m * sizeof(float) ||
        bx < (Py_ssize_t)row_bytes(type, n) || (size_t)x.len < (size_t)(m - 1) * bx + row_bytes(type, n)) {
        PyErr_SetString(PyExc_ValueError, "bad mix arguments");
        goto done;
    }
    s = malloc((size_t)nr * n * sizeof(float));
    if (!s) {
        PyErr_NoMemory();
        goto done;
    }
    t->mix(n, m, s, (size_t)n, p.buf, (size_t)m, nr, x.buf, (size_t)bx);
    result = PyList_New((Py_ssize_t)nr * n);
    if (result)
        for (size_t i = 0; i < (size_t)nr * n; i++) PyList_SET_ITEM(result, (Py_ssize_t)i, PyFloat_FromDouble(s[i]));
done:
    free(s);
    PyBuffer_Release(&x);
    PyBuffer_Release(&p);
    return result;
}

/* dot_rows(type, x, y, n, nr, m, bx, by): attention's scores kernel, out[r, j] = dot(x_j, y_r) for m rows x_j
 * of `type` (bx bytes apart) and nr rows y_r of its dot type (by bytes apart); returns nr * m floats */
static PyObject *py_dot_rows(PyObject *self, PyObject *args) {
    USE_DEFAULT_PATH();
    int type, n, nr, m;
    Py_ssize_t bx, by;
    Py_buffer x, y;
    if (!PyArg_ParseTuple(args, "iy*y*iiinn", &type, &x, &y, &n, &nr, &m, &bx, &by)) return NULL;
    PyObject *result = NULL;
    float *s = NULL;
    if (check_type(type)) goto done;
    const el_type_traits *t = &el_traits[type];
    if (!t->mix || n < 1 || nr < 1 || m < 1 || n % t->block_size || bx < (Py_ssize_t)row_bytes(type, n) ||
        by < (Py_ssize_t)row_bytes(t->dot_type, n) || (size_t)x.len < (size_t)(m - 1) * bx + row_bytes(type, n) ||
        (size_t)y.len < (size_t)(nr - 1) * by + row_bytes(t->dot_type, n)) {
        PyErr_SetString(PyExc_ValueError, "bad dot_rows arguments");
        goto done;
    }
    s = malloc((size_t)nr * m * sizeof(float));
    if (!s) {
        PyErr_NoMemory();
        goto done;
    }
    el_dot_rows(t, n, m, s, (size_t)m, y.buf, (size_t)by, nr, x.buf, (size_t)bx);
    result = PyList_New((Py_ssize_t)nr * m);
    if (result)
        for (size_t i = 0; i < (size_t)nr * m; i++) PyList_SET_ITEM(result, (Py_ssize_t)i, PyFloat_FromDouble(s[i]));
done:
    free(s);
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    return result;
}

/* quantize_row(dot_type, x, out): activation quantizer of a dot type (Q8_0, Q8_1, Q8_K) */
static PyObject *py_quantize_row(PyObject *self, PyObject *args) {
    USE_DEFAULT_PATH();
    int type;
    Py_buffer x, out;
    if (!PyArg_ParseTuple(args, "iy*w*", &type, &x, &out)) return NULL;
    PyObject *result = NULL;
    if (check_type(type)) goto done;
    const el_type_traits *t = &el_traits[type];
    const int64_t k = x.len / (Py_ssize_t)sizeof(float);
    if (!t->from_float || k % t->block_size || (size_t)out.len < row_bytes(type, (int)k)) {
        PyErr_SetString(PyExc_ValueError, "bad quantize_row arguments");
        goto done;
    }
    t->from_float(x.buf, out.buf, k);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return result;
}

/* dequantize_row(type, w, out): k = len(out) / 4 weights */
static PyObject *py_dequantize_row(PyObject *self, PyObject *args) {
    USE_DEFAULT_PATH();
    int type;
    Py_buffer w, out;
    if (!PyArg_ParseTuple(args, "iy*w*", &type, &w, &out)) return NULL;
    PyObject *result = NULL;
    if (check_type(type)) goto done;
    const el_type_traits *t = &el_traits[type];
    const int64_t k = out.len / (Py_ssize_t)sizeof(float);
    if (!t->to_float || k % t->block_size || (size_t)w.len < row_bytes(type, (int)k)) {
        PyErr_SetString(PyExc_ValueError, "bad dequantize_row arguments");
        goto done;
    }
    t->to_float(w.buf, out.buf, k);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&w);
    PyBuffer_Release(&out);
    return result;
}

/* quantize(type, x, out, n_rows, n_per_row, importance or None, n_threads): weight quantizer, rows split
 * over the pool */
typedef struct {
    int type;
    const float *x, *importance;
    char *y;
    int64_t n_rows, n_per_row;
    size_t row_bytes;
    int failed;
} quantize_task;

static void quantize_worker(void *ctx, int ith, int nth) {
    quantize_task *t = ctx;
    const int64_t r0 = t->n_rows * ith / nth, r1 = t->n_rows * (ith + 1) / nth;
    if (r1 > r0 && el_quantize_rows((enum el_type)t->type, t->x + r0 * t->n_per_row, t->y + r0 * t->row_bytes,
                                    r1 - r0, t->n_per_row, t->importance) != 0)
        t->failed = 1;
}

static PyObject *py_quantize(PyObject *self, PyObject *args) {
    USE_DEFAULT_PATH();
    int type, n_threads;
    long long n_rows, n_per_row;
    Py_buffer x, out;
    PyObject *importance;
    if (!PyArg_ParseTuple(args, "iy*w*LLOi", &type, &x, &out, &n_rows, &n_per_row, &importance, &n_threads))
        return NULL;
    PyObject *result = NULL;
    Py_buffer imp = {0};
    if (importance != Py_None && PyObject_GetBuffer(importance, &imp, PyBUF_SIMPLE) != 0) goto done;
    if (check_type(type)) goto done;
    if (n_rows < 0 || n_per_row <= 0 || n_per_row % el_traits[type].block_size ||
        x.len != (Py_ssize_t)(n_rows * n_per_row * (Py_ssize_t)sizeof(float)) ||
        (size_t)out.len < (size_t)n_rows * row_bytes(type, (int)n_per_row) ||
        (imp.buf && imp.len != (Py_ssize_t)(n_per_row * (Py_ssize_t)sizeof(float)))) {
        PyErr_SetString(PyExc_ValueError, "bad quantize arguments");
        goto done;
    }
    quantize_task task = {type, x.buf, imp.buf, out.buf, n_rows, n_per_row, row_bytes(type, (int)n_per_row), 0};
    SHARED_POOL_CALL(el_pool_run(get_pool(n_threads), quantize_worker, &task));
    if (task.failed) {
        PyErr_Format(PyExc_ValueError, "no quantizer for %s", el_traits[type].name);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    if (imp.buf) PyBuffer_Release(&imp);
    PyBuffer_Release(&x);
    PyBuffer_Release(&out);
    return result;
}

/* ---- whole-model plans ---- */

#define LAYER_FIELDS 20 /* el_layer is 20 el_weight fields, in declaration order */
#define N_GLOBALS 5     /* tok_embd, output_norm, output, rope_factors_short, rope_factors_long */

/* the matrices a forward pass multiplies whole: each layer's q, k, v, o, gate, up, down, and the head */
static int packable_weights(el_model *m, el_weight **out) {
    int n = 0;
    for (int l = 0; l < m->n_layers; l++) {
        el_layer *L = &m->layers[l];
        el_weight *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
        for (int i = 0; i < 7; i++) out[n++] = ws[i];
    }
    out[n++] = &m->output;
    return n;
}

static void free_packs(el_model *m) {
    el_weight **ws = malloc(sizeof(el_weight *) * ((size_t)m->n_layers * 7 + 1));
    if (!ws) return;
    const int n = packable_weights(m, ws);
    for (int i = 0; i < n; i++) {
        free((void *)ws[i]->packed16);
        ws[i]->packed16 = NULL;
    }
    free(ws);
}

static void model_destroy(PyObject *capsule) {
    el_model *m = PyCapsule_GetPointer(capsule, "edgellm.model");
    if (!m) return;
    model_obj *mo = (model_obj *)m;
    el_pool_free(mo->pool);
    el_scratch_free(&mo->scratch);
    free_packs(m);
    pthread_mutex_destroy(&mo->lock);
    free(m->layers);
    free(m->flags);
    free(m->thresholds);
    free(m->cols);
    el_offload_close(m->offload);
    free(m);
}

static int parse_weight(PyObject *item, el_weight *w) {
    unsigned long long addr;
    if (!PyArg_ParseTuple(item, "iKii", &w->type, &addr, &w->n_rows, &w->n_cols)) return -1;
    w->data = (const void *)(uintptr_t)addr;
    w->packed16 = NULL;
    if (w->data && (w->type < 0 || w->type >= EL_TYPE_COUNT || !el_traits[w->type].name)) {
        PyErr_Format(PyExc_ValueError, "tensor type %d has no C kernel", w->type);
        return -1;
    }
    return 0;
}

static int get_int(PyObject *d, const char *key, int *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) { PyErr_Format(PyExc_KeyError, "model parameter '%s' missing", key); return -1; }
    *out = (int)PyLong_AsLong(v);
    return PyErr_Occurred() ? -1 : 0;
}

static int get_float(PyObject *d, const char *key, float *out) {
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) { PyErr_Format(PyExc_KeyError, "model parameter '%s' missing", key); return -1; }
    *out = (float)PyFloat_AsDouble(v);
    return PyErr_Occurred() ? -1 : 0;
}

/* model_create(params: dict, flags: bytes (EL_LAYER_* per layer), weights: list[(type, address, n_rows, n_cols)]).
 * The caller keeps every weight buffer alive as long as the model. */
static PyObject *py_model_create(PyObject *self, PyObject *args) {
    PyObject *params, *weights;
    Py_buffer flags, thresholds = {0};
    if (!PyArg_ParseTuple(args, "O!y*O!|y*", &PyDict_Type, &params, &flags, &PyList_Type, &weights, &thresholds))
        return NULL;
    model_obj *mo = calloc(1, sizeof(model_obj));
    el_model *m = mo ? &mo->m : NULL;
    int ok = m != NULL;
    ok = ok && !get_int(params, "n_layers", &m->n_layers) && !get_int(params, "n_embd", &m->n_embd) &&
         !get_int(params, "n_ff", &m->n_ff) && !get_int(params, "n_head", &m->n_head) &&
         !get_int(params, "n_head_kv", &m->n_head_kv) && !get_int(params, "head_dim", &m->head_dim) &&
         !get_int(params, "head_dim_v", &m->head_dim_v) && !get_int(params, "n_vocab", &m->n_vocab) &&
         !get_int(params, "rope_dim", &m->rope_dim) && !get_int(params, "rope_neox", &m->rope_neox) &&
         !get_int(params, "gelu", &m->gelu) && !get_int(params, "sliding_window", &m->sliding_window) &&
         !get_float(params, "norm_eps", &m->norm_eps) && !get_float(params, "rope_base", &m->rope_base) &&
         !get_float(params, "rope_base_swa", &m->rope_base_swa) &&
         !get_float(params, "rope_scale", &m->rope_scale) && !get_float(params, "embed_scale", &m->embed_scale) &&
         !get_float(params, "attn_scale", &m->attn_scale) &&
         !get_float(params, "final_softcap", &m->final_softcap) &&
         !get_float(params, "rope_ext_factor", &m->rope_ext_factor) &&
         !get_float(params, "rope_yarn_low", &m->rope_yarn_low) &&
         !get_float(params, "rope_yarn_high", &m->rope_yarn_high) &&
         !get_float(params, "rope_mscale", &m->rope_mscale) && !get_int(params, "n_ctx_orig", &m->n_ctx_orig) &&
         !get_int(params, "n_expert", &m->n_expert) && !get_int(params, "n_expert_used", &m->n_expert_used);
    if (ok && (m->n_layers < 1 || m->n_layers > 65536)) {
        PyErr_SetString(PyExc_ValueError, "model_create: n_layers out of range");
        ok = 0;
    }
    if (ok && PyList_GET_SIZE(weights) != N_GLOBALS + (Py_ssize_t)m->n_layers * LAYER_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "weights list does not match n_layers");
        ok = 0;
    }
    if (ok && flags.len != m->n_layers) {
        PyErr_SetString(PyExc_ValueError, "flags must have one byte per layer");
        ok = 0;
    }
    if (ok) {
        m->layers = calloc((size_t)m->n_layers, sizeof(el_layer));
        m->flags = malloc((size_t)m->n_layers);
        ok = m->layers && m->flags;
        if (!ok) PyErr_NoMemory();
    }
    if (ok) {
        memcpy(m->flags, flags.buf, (size_t)m->n_layers);
        if (thresholds.buf) {
            const size_t n = (size_t)m->n_layers * EL_SPARSE_GROUPS * sizeof(float);
            m->thresholds = (size_t)thresholds.len == n ? malloc(n) : NULL;
            if (!m->thresholds) {
                PyErr_SetString(PyExc_ValueError, "model_create: thresholds must be n_layers x 4 float32");
                ok = 0;
            } else {
                memcpy(m->thresholds, thresholds.buf, n);
            }
        }
        el_weight *globals[N_GLOBALS] = {&m->tok_embd, &m->output_norm, &m->output, &m->rope_factors_short,
                                         &m->rope_factors_long};
        for (int i = 0; i < N_GLOBALS && ok; i++) ok = !parse_weight(PyList_GET_ITEM(weights, i), globals[i]);
        for (int l = 0; l < m->n_layers && ok; l++) {
            el_weight *fields = (el_weight *)&m->layers[l];
            for (int f = 0; f < LAYER_FIELDS && ok; f++)
                ok = !parse_weight(PyList_GET_ITEM(weights, N_GLOBALS + l * LAYER_FIELDS + f), &fields[f]);
        }
    }
    PyBuffer_Release(&flags);
    if (thresholds.buf) PyBuffer_Release(&thresholds);
    const char *problem = ok ? el_model_check(m) : NULL;
    if (problem) {
        PyErr_Format(PyExc_ValueError, "model_create: %s", problem);
        ok = 0;
    }
    if (!ok) {
        if (m) { free(m->layers); free(m->flags); free(m->thresholds); free(mo); }
        return NULL;
    }
    mo->isa = el_default_isa();
    pthread_mutex_init(&mo->lock, NULL);
    return PyCapsule_New(m, "edgellm.model", model_destroy);
}

#define PACK_ROWS 512 /* a multiple of 16 */

/* model_pack(model) -> bytes: a copy of every matrix that has an el_pack16 layout, in that layout, for the paths
 * with gemm16 kernels; the original pages are offered back to the kernel (they stay the file's, read again only
 * for what still uses them: embedding rows, a candidate head's rows). Not for streamed models. */
static PyObject *py_model_pack(PyObject *self, PyObject *args) {
    USE_DEFAULT_PATH();
    PyObject *capsule;
    int with_head = 1; /* 0: a pipeline stage that never runs the head leaves it unpacked (and unread) */
    if (!PyArg_ParseTuple(args, "O|p", &capsule, &with_head)) return NULL;
    model_obj *mo = PyCapsule_GetPointer(capsule, "edgellm.model");
    if (!mo) return NULL;
    el_model *m = &mo->m;
    el_weight **ws = malloc(sizeof(el_weight *) * ((size_t)m->n_layers * 7 + 1));
    if (!ws) return PyErr_NoMemory();
    size_t total = 0;
    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&mo->lock);
    el_use_isa(mo->isa); /* pack only what this model's path has kernels for */
    const int n = m->offload ? 0 : packable_weights(m, ws) - !with_head; /* the head is the last */
    for (int i = 0; i < n && !failed; i++) {
        el_weight *w = ws[i];
        const int usable = w->data && !w->packed16 && el_traits[w->type].gemm16;
        const size_t bytes = usable ? el_packed16_bytes((enum el_type)w->type, w->n_rows, w->n_cols) : 0;
        if (!bytes) continue;
        void *p = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!p) {
            failed = 1;
            break;
        }
        /* a few hundred rows at a time, each slice's file pages offered back once packed: the peak stays near
         * the packed copy alone (it would be the copy plus the largest matrix, e.g. a 28 MB head) */
        const size_t rb = row_bytes(w->type, w->n_cols), pb = el_packed16_bytes((enum el_type)w->type, 16, w->n_cols);
        for (int r0 = 0; r0 < w->n_rows; r0 += PACK_ROWS) {
            const int nr = w->n_rows - r0 < PACK_ROWS ? w->n_rows - r0 : PACK_ROWS;
            const char *src = (const char *)w->data + (size_t)r0 * rb;
            el_pack16((enum el_type)w->type, src, nr, w->n_cols, (char *)p + (size_t)r0 / 16 * pb);
#ifdef MADV_PAGEOUT
            const uintptr_t page = 4096, lo = ((uintptr_t)src + page - 1) / page * page;
            const uintptr_t hi = ((uintptr_t)src + rb * (size_t)nr) / page * page;
            if (hi > lo) madvise((void *)lo, hi - lo, MADV_PAGEOUT);
#endif
        }
        w->packed16 = p;
        total += bytes;
    }
    if (failed) free_packs(m);
    pthread_mutex_unlock(&mo->lock);
    Py_END_ALLOW_THREADS
    free(ws);
    if (failed) return PyErr_NoMemory();
    return PyLong_FromSize_t(total);
}

/* model_set_path(model, name): the kernel path this model runs on */
static PyObject *py_model_set_path(PyObject *self, PyObject *args) {
    PyObject *capsule;
    const char *name;
    if (!PyArg_ParseTuple(args, "Os", &capsule, &name)) return NULL;
    el_model *m = PyCapsule_GetPointer(capsule, "edgellm.model");
    if (!m) return NULL;
    for (int i = 0; i < EL_ISA_COUNT; i++) {
        if (strcmp(name, el_isa_names[i]) == 0 && el_cpu_supports((enum el_isa)i)) {
            model_obj *mo = (model_obj *)m;
            Py_BEGIN_ALLOW_THREADS
            pthread_mutex_lock(&mo->lock);
            mo->isa = (enum el_isa)i;
            pthread_mutex_unlock(&mo->lock);
            Py_END_ALLOW_THREADS
            Py_RETURN_NONE;
        }
    }
    PyErr_Format(PyExc_ValueError, "kernel path '%s' is not available on this CPU/build", name);
    return NULL;
}

/* model_scratch_bytes(model): what the model's forward buffers hold now (the largest call's needs) */
static PyObject *py_model_scratch_bytes(PyObject *self, PyObject *args) {
    PyObject *capsule;
    if (!PyArg_ParseTuple(args, "O", &capsule)) return NULL;
    model_obj *mo = PyCapsule_GetPointer(capsule, "edgellm.model");
    if (!mo) return NULL;
    size_t total = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&mo->lock);
    for (int i = 0; i < (int)(sizeof(mo->scratch.size) / sizeof(mo->scratch.size[0])); i++) total += mo->scratch.size[i];
    pthread_mutex_unlock(&mo->lock);
    Py_END_ALLOW_THREADS
    return PyLong_FromSize_t(total);
}

/* forward(model, tokens int32, seqs [(k_cache, v_cache, n_past, n_tokens), ...], kv_type, n_ctx, out_rows int32,
 * logits, n_threads[, hidden_in, hidden_out]): the sequences' tokens side by side, each sequence over its own cache.
 * A pipeline stage starts from hidden_in (n_tokens x n_embd float32; tokens then empty) and leaves the residual
 * stream after its last layer in hidden_out; None for either: the embeddings, no hidden states out. */
static PyObject *py_forward(PyObject *self, PyObject *args) {
    PyObject *capsule, *items, *in_obj = Py_None, *out_obj = Py_None;
    Py_buffer tokens, rows, logits, hin = {0}, hout = {0};
    int kv_type, n_ctx, n_threads;
    if (!PyArg_ParseTuple(args, "Oy*O!iiy*w*i|OO", &capsule, &tokens, &PyList_Type, &items, &kv_type, &n_ctx, &rows,
                          &logits, &n_threads, &in_obj, &out_obj))
        return NULL;
    PyObject *result = NULL;
    if ((in_obj != Py_None && PyObject_GetBuffer(in_obj, &hin, PyBUF_C_CONTIGUOUS) < 0) ||
        (out_obj != Py_None && PyObject_GetBuffer(out_obj, &hout, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) < 0)) {
        if (hin.obj) PyBuffer_Release(&hin);
        PyBuffer_Release(&tokens);
        PyBuffer_Release(&rows);
        PyBuffer_Release(&logits);
        return NULL;
    }
    const Py_ssize_t n_seqs = PyList_GET_SIZE(items);
    el_seq *seqs = calloc(n_seqs > 0 ? (size_t)n_seqs : 1, sizeof(el_seq));
    Py_buffer *bufs = calloc(n_seqs > 0 ? 2 * (size_t)n_seqs : 1, sizeof(Py_buffer));
    Py_ssize_t n_held = 0; /* cache buffers acquired so far */
    el_model *m = PyCapsule_GetPointer(capsule, "edgellm.model");
    if (!m) goto done;
    if (!seqs || !bufs) {
        PyErr_NoMemory();
        goto done;
    }
    if (kv_type != EL_F32 && kv_type != EL_F16 && kv_type != EL_Q8_0) {
        PyErr_SetString(PyExc_ValueError, "forward: the KV cache must be F32, F16 or Q8_0");
        goto done;
    }
    const size_t kd = (size_t)m->n_head_kv * m->head_dim, vd = (size_t)m->n_head_kv * m->head_dim_v;
    Py_ssize_t total = 0;
    for (Py_ssize_t s = 0; s < n_seqs; s++) {
        if (!PyArg_ParseTuple(PyList_GET_ITEM(items, s), "w*w*ii", &bufs[2 * s], &bufs[2 * s + 1], &seqs[s].n_past,
                              &seqs[s].n_tokens))
            goto done;
        n_held = s + 1;
        if (n_ctx < 1 || (size_t)bufs[2 * s].len < (size_t)m->n_layers * n_ctx * row_bytes(kv_type, (int)kd) ||
            (size_t)bufs[2 * s + 1].len < (size_t)m->n_layers * n_ctx * row_bytes(kv_type, (int)vd)) {
            PyErr_SetString(PyExc_ValueError, "forward: cache buffer too small");
            goto done;
        }
        seqs[s].k_cache = bufs[2 * s].buf;
        seqs[s].v_cache = bufs[2 * s + 1].buf;
        total += seqs[s].n_tokens > 0 ? seqs[s].n_tokens : 0;
    }
    const int n_rows = (int)(rows.len / (Py_ssize_t)sizeof(int32_t));
    const Py_ssize_t hidden_bytes = total * m->n_embd * (Py_ssize_t)sizeof(float);
    if ((hin.obj && hin.len != hidden_bytes) || (hout.obj && hout.len != hidden_bytes)) {
        PyErr_SetString(PyExc_ValueError, "forward: hidden states must be n_tokens x n_embd float32");
        goto done;
    }
    if (tokens.len != (hin.obj ? 0 : total) * (Py_ssize_t)sizeof(int32_t) ||
        (size_t)logits.len < (size_t)n_rows * m->n_vocab * sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "forward: tokens do not match the sequences, or logits buffer too small");
        goto done;
    }
    int rc;
    el_stats stats;
    model_obj *mo = (model_obj *)m;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&mo->lock);
    el_use_isa(mo->isa);
    el_pool *pool = sized_pool(&mo->pool, n_threads);
    rc = pool ? el_forward_batch(m, pool, &mo->scratch, tokens.buf, seqs, (int)n_seqs, kv_type, n_ctx, rows.buf, n_rows, logits.buf,
                                 hin.obj ? hin.buf : NULL, hout.obj ? hout.buf : NULL, &stats)
              : -1;
    pthread_mutex_unlock(&mo->lock);
    Py_END_ALLOW_THREADS
    const char *io_error = m->offload ? el_offload_error(m->offload) : NULL;
    if (rc != 0 && io_error) {
        PyErr_SetString(PyExc_OSError, io_error);
        goto done;
    }
    if (rc != 0) {
        PyErr_SetString(PyExc_ValueError, "forward: bad arguments (token id, positions or rows) or out of memory");
        goto done;
    }
    result = Py_BuildValue("(dddddddd)", stats.weight_bytes, stats.kv_bytes, stats.io.bytes, stats.io.reads,
                           stats.io.wait_s, stats.io.busy_s, stats.io.expert_hits, stats.io.expert_misses);
done:
    for (Py_ssize_t i = 0; i < 2 * n_held; i++)
        if (bufs[i].obj) PyBuffer_Release(&bufs[i]);
    free(bufs);
    free(seqs);
    if (hin.obj) PyBuffer_Release(&hin);
    if (hout.obj) PyBuffer_Release(&hout);
    PyBuffer_Release(&tokens);
    PyBuffer_Release(&rows);
    PyBuffer_Release(&logits);
    return result;
}

/* A column-layout matrix from (kind, group, n_rows, n_cols, q_addr, q_len, d_addr, m_addr); addresses of
 * buffers the caller keeps alive. The sizes are checked against what the layout needs. */
static int parse_colmat(PyObject *item, el_colmat *c) {
    unsigned long long q, d, mm;
    Py_ssize_t q_len;
    if (!PyArg_ParseTuple(item, "iiiiKnKK", &c->kind, &c->group, &c->n_rows, &c->n_cols, &q, &q_len, &d, &mm))
        return -1;
    c->q = (const uint8_t *)(uintptr_t)q;
    c->d = (const el_fp16_t *)(uintptr_t)d;
    c->m = (const el_fp16_t *)(uintptr_t)mm;
    const int floats = c->kind == EL_COL_F16 || c->kind == EL_COL_F32;
    if (c->kind < 0 || c->kind >= EL_COL_KINDS || c->n_rows <= 0 || c->n_rows % EL_COL_TILE || c->group <= 0 || c->group > 32 || c->group % 4 ||
        c->n_cols <= 0 || c->n_cols % c->group || !c->q || (floats ? c->d || c->m : !c->d) ||
        (size_t)q_len != el_col_stride(c->kind, c->n_rows) * (size_t)c->n_cols) {
        PyErr_SetString(PyExc_ValueError, "column matrix: bad kind, shape, group or buffer size");
        return -1;
    }
    return 0;
}

/* the layer weight a column slot stands for (q, k, v, o, gate, up, down) */
static const el_weight *slot_weight(const el_layer *L, int slot) {
    const el_weight *ws[EL_COL_SLOTS] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
    return ws[slot];
}

/* model_set_offload(model, path, units: list of (slot, row0, n_rows, offset, bytes) in the order a forward pass
 * uses them, ring_bytes, synchronous, embd_offset (-1: embedding rows stay in memory)). The streamed matrices'
 * addresses are dropped: from now on their rows come from the file only. */
static PyObject *py_model_set_offload(PyObject *self, PyObject *args) {
    PyObject *capsule, *items, *experts = Py_None;
    const char *path;
    Py_ssize_t ring;
    int sync;
    long long embd_offset;
    if (!PyArg_ParseTuple(args, "OsO!niL|O", &capsule, &path, &PyList_Type, &items, &ring, &sync, &embd_offset,
                          &experts))
        return NULL;
    el_model *m = PyCapsule_GetPointer(capsule, "edgellm.model");
    if (!m) return NULL;
    if (m->offload) {
        PyErr_SetString(PyExc_ValueError, "model_set_offload: the model already streams its weights");
        return NULL;
    }
    const int head = m->n_layers * EL_COL_SLOTS, n_slots = head + 1;
    const Py_ssize_t n = PyList_GET_SIZE(items);
    el_unit *units = calloc((size_t)n + 1, sizeof(el_unit));
    int *covered = calloc((size_t)n_slots, sizeof(int)); /* rows of each slot covered so far, in order */
    if (!units || !covered) {
        free(units);
        free(covered);
        return PyErr_NoMemory();
    }
    const char *problem = NULL;
    for (Py_ssize_t i = 0; i < n && !problem; i++) {
        el_unit *u = &units[i];
        if (!PyArg_ParseTuple(PyList_GET_ITEM(items, i), "iiiLL", &u->slot, &u->row0, &u->n_rows, &u->offset,
                              &u->bytes)) {
            free(units);
            free(covered);
            return NULL;
        }
        if (u->slot < 0 || u->slot >= n_slots) {
            problem = "a unit names no matrix";
            break;
        }
        const el_weight *w = u->slot == head ? &m->output : slot_weight(&m->layers[u->slot / EL_COL_SLOTS], u->slot % EL_COL_SLOTS);
        if (!covered[u->slot]) covered[u->slot] = u->row0; /* rows before the first unit stay in memory */
        if (!w->data || u->row0 != covered[u->slot] || u->n_rows < 1 || u->row0 + u->n_rows > w->n_rows ||
            u->bytes != (int64_t)row_bytes(w->type, w->n_cols) * u->n_rows)
            problem = "units must cover each streamed matrix's rows in order";
        else if (u->slot != head && m->cols && m->cols[u->slot].q)
            problem = "a matrix with a column layout cannot be streamed";
        else if (u->slot == head && m->output_approx.data)
            problem = "the candidate head needs the head in memory";
        covered[u->slot] += u->n_rows;
    }
    for (int s = 0; s < n_slots && !problem; s++) {
        const el_weight *w = s == head ? &m->output : slot_weight(&m->layers[s / EL_COL_SLOTS], s % EL_COL_SLOTS);
        if (covered[s] && covered[s] != w->n_rows) problem = "units must cover each streamed matrix's rows in order";
    }
    const size_t erow = row_bytes(m->tok_embd.type, m->n_embd);
    if (!problem && embd_offset >= 0 && (!el_traits[m->tok_embd.type].to_float)) problem = "embedding has no row reader";
    if (problem) {
        free(units);
        free(covered);
        PyErr_Format(PyExc_ValueError, "model_set_offload: %s", problem);
        return NULL;
    }
    char err[256] = "";
    el_offload *o;
    Py_BEGIN_ALLOW_THREADS
    o = el_offload_open(path, units, (int)n, n_slots, (size_t)ring, sync, embd_offset >= 0 ? erow : 0, err, sizeof(err));
    Py_END_ALLOW_THREADS
    free(units);
    if (!o) {
        free(covered);
        PyErr_Format(PyExc_OSError, "%s: %s", path, err);
        return NULL;
    }
    if (experts != Py_None) { /* (offsets: int64, n_layers x n_expert x 3; sizes: int64, n_layers x 3; slabs) */
        Py_buffer offs, sizes;
        int n_cached;
        if (!PyArg_ParseTuple(experts, "y*y*i", &offs, &sizes, &n_cached)) {
            el_offload_close(o);
            free(covered);
            return NULL;
        }
        const size_t want = (size_t)m->n_layers * (m->n_expert > 0 ? m->n_expert : 0) * 3 * sizeof(int64_t);
        int bad = m->n_expert < 1 || (size_t)offs.len != want ||
                  (size_t)sizes.len != (size_t)m->n_layers * 3 * sizeof(int64_t);
        const int64_t *bytes = sizes.buf;
        for (int l = 0; l < m->n_layers && !bad; l++) {
            const el_layer *L = &m->layers[l];
            bad = bytes[l * 3] != (int64_t)(row_bytes(L->gate_exps.type, m->n_embd) * m->n_ff) ||
                  bytes[l * 3 + 1] != (int64_t)(row_bytes(L->up_exps.type, m->n_embd) * m->n_ff) ||
                  bytes[l * 3 + 2] != (int64_t)(row_bytes(L->down_exps.type, m->n_ff) * m->n_embd);
        }
        if (!bad) bad = el_offload_set_experts(o, m->n_layers, m->n_expert, offs.buf, bytes, n_cached) != 0;
        PyBuffer_Release(&offs);
        PyBuffer_Release(&sizes);
        if (bad) {
            el_offload_close(o);
            free(covered);
            PyErr_SetString(PyExc_ValueError, "model_set_offload: expert slabs do not match the model (or no memory)");
            return NULL;
        }
        for (int l = 0; l < m->n_layers; l++) { /* experts now come from the cache only */
            m->layers[l].gate_exps.data = NULL;
            m->layers[l].up_exps.data = NULL;
            m->layers[l].down_exps.data = NULL;
        }
    }
    for (int s = 0; s < n_slots; s++) { /* a matrix streamed from row 0 on has no address any more */
        int first;
        if (!el_offload_units(o, s, &first) || el_offload_unit(o, first)->row0 > 0) continue;
        el_weight *w = s == head ? &m->output : (el_weight *)slot_weight(&m->layers[s / EL_COL_SLOTS], s % EL_COL_SLOTS);
        w->data = NULL;
    }
    free(covered);
    if (embd_offset >= 0) {
        m->tok_embd.data = NULL;
        m->embd_offset = embd_offset;
    }
    m->offload = o;
    return Py_BuildValue("(ni)", (Py_ssize_t)el_offload_ring_bytes(o), el_offload_direct(o));
}

/* model_set_columns(model, list of n_layers * 7 entries: None or a column matrix tuple) */
static PyObject *py_model_set_columns(PyObject *self, PyObject *args) {
    PyObject *capsule, *items;
    if (!PyArg_ParseTuple(args, "OO!", &capsule, &PyList_Type, &items)) return NULL;
    el_model *m = PyCapsule_GetPointer(capsule, "edgellm.model");
    if (!m) return NULL;
    const Py_ssize_t n = (Py_ssize_t)m->n_layers * EL_COL_SLOTS;
    if (PyList_GET_SIZE(items) != n) {
        PyErr_SetString(PyExc_ValueError, "model_set_columns: need n_layers x 7 entries");
        return NULL;
    }
    el_colmat *cols = calloc((size_t)n, sizeof(el_colmat));
    if (!cols) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        if (item == Py_None) continue;
        const el_weight *w = slot_weight(&m->layers[i / EL_COL_SLOTS], (int)(i % EL_COL_SLOTS));
        if (parse_colmat(item, &cols[i]) != 0) goto fail;
        if (cols[i].n_rows != w->n_rows || cols[i].n_cols != w->n_cols) {
            PyErr_SetString(PyExc_ValueError, "model_set_columns: a column matrix does not match its layer weight");
            goto fail;
        }
    }
    free(m->cols);
    m->cols = cols;
    Py_RETURN_NONE;
fail:
    free(cols);
    return NULL;
}

/* model_set_head(model, approx weight tuple or None, n_candidates, projection weight tuple or None) */
static PyObject *py_model_set_head(PyObject *self, PyObject *args) {
    PyObject *capsule, *item, *proj_item = Py_None;
    int k;
    if (!PyArg_ParseTuple(args, "OOi|O", &capsule, &item, &k, &proj_item)) return NULL;
    el_model *m = PyCapsule_GetPointer(capsule, "edgellm.model");
    if (!m) return NULL;
    el_weight w = {0}, proj = {0};
    if (item != Py_None) {
        if (parse_weight(item, &w) != 0 || (proj_item != Py_None && parse_weight(proj_item, &proj) != 0)) return NULL;
        const int width = proj.data ? proj.n_rows : m->n_embd;
        if (!w.data || !el_traits[w.type].dot || w.n_rows != m->n_vocab || w.n_cols != width ||
            w.n_cols % el_traits[w.type].block_size || k < 0 ||
            (proj.data && (!el_traits[proj.type].dot || proj.n_cols != m->n_embd ||
                           proj.n_cols % el_traits[proj.type].block_size))) {
            PyErr_SetString(PyExc_ValueError, "model_set_head: the cheap head must be n_vocab x n_embd (or n_vocab x r "
                                              "after an r x n_embd projection) with kernels, and candidates >= 0");
            return NULL;
        }
    }
    int first;
    if (item != Py_None && (!m->output.data || el_offload_units(m->offload, m->n_layers * EL_COL_SLOTS, &first))) {
        PyErr_SetString(PyExc_ValueError, "model_set_head: the candidate head needs the head in memory");
        return NULL;
    }
    m->output_approx = w;
    m->output_proj = proj;
    m->n_candidates = item != Py_None ? k : 0;
    Py_RETURN_NONE;
}

/* sparse_matvec(column matrix tuple, x float32, threshold, y float32 out, n_threads) -> bytes read */
static PyObject *py_sparse_matvec(PyObject *self, PyObject *args) {
    USE_DEFAULT_PATH();
    PyObject *item;
    Py_buffer x, y;
    float threshold;
    int n_threads;
    if (!PyArg_ParseTuple(args, "Oy*fw*i", &item, &x, &threshold, &y, &n_threads)) return NULL;
    PyObject *result = NULL;
    el_colmat c;
    if (parse_colmat(item, &c) != 0) goto done;
    if ((size_t)x.len != sizeof(float) * (size_t)c.n_cols || (size_t)y.len != sizeof(float) * (size_t)c.n_rows) {
        PyErr_SetString(PyExc_ValueError, "sparse_matvec: x must hold n_cols floats and y n_rows");
        goto done;
    }
    double bytes = 0.0;
    int rc;
    SHARED_POOL_CALL(rc = el_sparse_matvec(get_pool(n_threads), &c, x.buf, threshold, y.buf, &bytes));
    if (rc != 0) {
        PyErr_SetString(PyExc_ValueError, "sparse_matvec: bad matrix or threshold");
        goto done;
    }
    result = PyFloat_FromDouble(bytes);
done:
    PyBuffer_Release(&x);
    PyBuffer_Release(&y);
    return result;
}

/* The k-th largest of n floats, NaN skipped (-inf when fewer than k are not NaN): a min-heap of k, one comparison
 * per entry for a 49152-entry row of logits. `heap` holds k floats. */
static float kth_largest(const float *x, Py_ssize_t n, int k, float *heap) {
    int size = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (size == k && (i & 15) == 0 && i + 16 <= n) { /* skip 16 at a time while none beats the root */
            const float root = heap[0];
            int any = 0;
            for (int j = 0; j < 16; j++) any |= x[i + j] > root;
            if (!any) {
                i += 15;
                continue;
            }
        }
        const float v = x[i];
        if (v != v || (size == k && !(v > heap[0]))) continue;
        int pos;
        if (size < k) { /* sift up */
            for (pos = size++; pos > 0 && heap[(pos - 1) / 2] > v; pos = (pos - 1) / 2) heap[pos] = heap[(pos - 1) / 2];
        } else { /* replace the root, sift down */
            for (pos = 0;;) {
                int child = 2 * pos + 1;
                if (child >= size) break;
                if (child + 1 < size && heap[child + 1] < heap[child]) child++;
                if (!(heap[child] < v)) break;
                heap[pos] = heap[child];
                pos = child;
            }
        }
        heap[pos] = v;
    }
    return size == k ? heap[0] : -INFINITY;
}

/* kth_largest(float32 buffer, k) -> the k-th largest value (NaN skipped; -inf when fewer than k are not NaN) */
static PyObject *py_kth_largest(PyObject *self, PyObject *args) {
    Py_buffer buf;
    int k;
    if (!PyArg_ParseTuple(args, "y*i", &buf, &k)) return NULL;
    const Py_ssize_t n = buf.len / (Py_ssize_t)sizeof(float);
    float *heap = k >= 1 && k <= n ? malloc(sizeof(float) * (size_t)k) : NULL;
    if (!heap) {
        PyBuffer_Release(&buf);
        if (k >= 1 && k <= n) return PyErr_NoMemory();
        return PyErr_Format(PyExc_ValueError, "kth_largest: k = %d of %zd values", k, n);
    }
    const float kth = kth_largest(buf.buf, n, k, heap);
    free(heap);
    PyBuffer_Release(&buf);
    return PyFloat_FromDouble(kth);
}

typedef struct {
    double p;
    Py_ssize_t i;
} prob_index;

static int by_prob_descending(const void *a, const void *b) { /* ties in index order (a stable sort) */
    const prob_index *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return (x->i > y->i) - (x->i < y->i);
}

/* The sampler's chain after the logits are adjusted: top-k -> top-p -> min-p -> temperature -> one draw with the
 * uniform number u, step for step as runtime.sampling's NumPy functions compute it (which stay the reference):
 * one pass over the row and arithmetic on the candidates only, where NumPy spent a few hundred microseconds of
 * a server step per token. Returns the token, or -1 when no logit is finite. */
static Py_ssize_t sample_row(const float *x, Py_ssize_t n, int top_k, double top_p, double min_p, double temperature,
                             double u) {
    const int by_k = top_k > 0 && top_k < n;
    float *heap = by_k ? malloc(sizeof(float) * (size_t)top_k) : NULL;
    if (by_k && !heap) return -2;
    const float kth = by_k ? kth_largest(x, n, top_k, heap) : -INFINITY;
    free(heap);
    Py_ssize_t m = 0; /* the candidates: at least the k-th largest and finite (comparisons only, so it vectorizes) */
    for (Py_ssize_t i = 0; i < n; i++) m += (x[i] >= kth) & (x[i] > -INFINITY) & (x[i] < INFINITY);
    if (m == 0) return -1;
    Py_ssize_t *ids = malloc(sizeof(Py_ssize_t) * (size_t)m);
    float *kept = malloc(sizeof(float) * (size_t)m);
    double *w = malloc(sizeof(double) * (size_t)m);
    prob_index *order = top_p < 1.0 ? malloc(sizeof(prob_index) * (size_t)m) : NULL;
    Py_ssize_t token = -2;
    if (!ids || !kept || !w || (top_p < 1.0 && !order)) goto done;
    for (Py_ssize_t i = 0, j = 0; i < n; i += 16) {
        const Py_ssize_t end = i + 16 < n ? i + 16 : n;
        int any = 0;
        for (Py_ssize_t t = i; t < end; t++) any |= (x[t] >= kth) & (x[t] > -INFINITY) & (x[t] < INFINITY);
        if (any)
            for (Py_ssize_t t = i; t < end; t++)
                if (x[t] >= kth && x[t] > -INFINITY && x[t] < INFINITY) ids[j] = t, kept[j++] = x[t];
    }
    if (top_p < 1.0) { /* the most likely tokens whose probability reaches top_p */
        float mx = kept[0];
        for (Py_ssize_t j = 1; j < m; j++) mx = kept[j] > mx ? kept[j] : mx;
        double sum = 0.0;
        for (Py_ssize_t j = 0; j < m; j++) sum += w[j] = exp((double)kept[j] - (double)mx);
        for (Py_ssize_t j = 0; j < m; j++) order[j] = (prob_index){w[j] / sum, j};
        qsort(order, (size_t)m, sizeof(prob_index), by_prob_descending);
        Py_ssize_t n_keep = 0;
        double cumulative = 0.0;
        while (n_keep < m && (cumulative += order[n_keep].p) < top_p) n_keep++;
        for (Py_ssize_t j = n_keep + 1; j < m; j++) kept[order[j].i] = -INFINITY;
    }
    if (min_p > 0.0) { /* drop tokens less likely than min_p times the most likely one */
        float mx = -INFINITY;
        for (Py_ssize_t j = 0; j < m; j++) mx = kept[j] > mx ? kept[j] : mx;
        const double threshold = (double)mx + log(min_p);
        for (Py_ssize_t j = 0; j < m; j++)
            if (!((double)kept[j] >= threshold)) kept[j] = -INFINITY;
    }
    float mx = -INFINITY;
    for (Py_ssize_t j = 0; j < m; j++) mx = (kept[j] = kept[j] / (float)temperature) > mx ? kept[j] : mx;
    double sum = 0.0;
    for (Py_ssize_t j = 0; j < m; j++) sum += w[j] = exp((double)kept[j] - (double)mx);
    double cdf = 0.0, total = 0.0; /* the draw as NumPy's Generator.choice: the first cumulative share above u */
    for (Py_ssize_t j = 0; j < m; j++) total += w[j] / sum;
    token = -1;
    for (Py_ssize_t j = 0; j < m; j++) {
        if (w[j] == 0.0) continue;
        token = ids[j];
        if ((cdf += w[j] / sum) / total > u) break;
    }
done:
    free(ids);
    free(kept);
    free(w);
    free(order);
    return token;
}

/* sample(float32 buffer, top_k, top_p, min_p, temperature, u) -> token id, or -1 when no logit is finite */
static PyObject *py_sample(PyObject *self, PyObject *args) {
    Py_buffer buf;
    int top_k;
    double top_p, min_p, temperature, u;
    if (!PyArg_ParseTuple(args, "y*idddd", &buf, &top_k, &top_p, &min_p, &temperature, &u)) return NULL;
    Py_ssize_t token;
    Py_BEGIN_ALLOW_THREADS;
    token = sample_row(buf.buf, buf.len / (Py_ssize_t)sizeof(float), top_k, top_p, min_p, temperature, u);
    Py_END_ALLOW_THREADS;
    PyBuffer_Release(&buf);
    if (token == -2) return PyErr_NoMemory();
    return PyLong_FromSsize_t(token);
}

/* read_bandwidth(buffer, n_threads, repetitions) -> GB/s */
static PyObject *py_read_bandwidth(PyObject *self, PyObject *args) {
    Py_buffer buf;
    int n_threads, reps;
    if (!PyArg_ParseTuple(args, "y*ii", &buf, &n_threads, &reps)) return NULL;
    double gbps;
    SHARED_POOL_CALL(gbps = el_read_bandwidth(get_pool(n_threads), buf.buf, (size_t)buf.len, reps < 1 ? 1 : reps));
    PyBuffer_Release(&buf);
    return PyFloat_FromDouble(gbps);
}

static PyMethodDef methods[] = {
    {"kth_largest", py_kth_largest, METH_VARARGS, "The k-th largest of a float32 row (a top-k threshold)."},
    {"sample", py_sample, METH_VARARGS, "One draw of the sampler's top-k/top-p/min-p/temperature chain."},
    {"read_bandwidth", py_read_bandwidth, METH_VARARGS, "Memory read bandwidth over a buffer, GB/s."},
    {"model_create", py_model_create, METH_VARARGS, "Build a whole-model plan from weight addresses."},
    {"forward", py_forward, METH_VARARGS, "Run sequences' tokens through a model plan, filling their KV caches and logits."},
    {"model_set_path", py_model_set_path, METH_VARARGS, "The kernel path a model plan runs on."},
    {"model_pack", py_model_pack, METH_VARARGS, "Interleave a model plan's matrices for the gemm16 kernels."},
    {"model_scratch_bytes", py_model_scratch_bytes, METH_VARARGS, "Bytes of a model plan's forward buffers."},
    {"model_set_offload", py_model_set_offload, METH_VARARGS, "Stream some matrices from the model file."},
    {"model_set_columns", py_model_set_columns, METH_VARARGS, "Attach column layouts for sparse decode products."},
    {"model_set_head", py_model_set_head, METH_VARARGS, "Attach a cheap head and a candidate count (None: off)."},
    {"sparse_matvec", py_sparse_matvec, METH_VARARGS, "y = W x over the inputs at or above a threshold."},
    {"capabilities", py_capabilities, METH_NOARGS, "Compiled, supported and current kernel paths."},
    {"set_isa", py_set_isa, METH_VARARGS, "Use one kernel path (generic, avx2, avx512, neon)."},
    {"type_info", py_type_info, METH_VARARGS, "Block geometry and available kernels of a type id."},
    {"matmul", py_matmul, METH_VARARGS, "out[t, r] = W[r] . x[t] on packed weights."},
    {"dot", py_dot, METH_VARARGS, "One kernel call with explicit strides (for tests)."},
    {"mix", py_mix, METH_VARARGS, "Weighted sums of KV cache rows, as attention mixes values (for tests)."},
    {"dot_rows", py_dot_rows, METH_VARARGS, "KV cache rows against query rows, as attention scores (for tests)."},
    {"quantize_row", py_quantize_row, METH_VARARGS, "Quantize floats to an activation block type."},
    {"quantize", py_quantize, METH_VARARGS, "Quantize float weight rows to a weight format."},
    {"dequantize_row", py_dequantize_row, METH_VARARGS, "Dequantize packed weights to floats."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "edgellm C kernels", -1, methods};

PyMODINIT_FUNC PyInit__C(void) {
    el_init();
    PyObject *mod = PyModule_Create(&module);
    if (mod && PyModule_AddIntConstant(mod, "SLICES_PER_THREAD", EL_SLICES_PER_THREAD)) Py_CLEAR(mod);
    return mod;
}
