/* Weights streamed from the model file when they do not fit the memory budget (see edgellm.h).
 *
 * The streamed matrices are cut into units (a matrix, or a range of its rows) listed in the order a forward
 * pass uses them. A reader thread reads the units in that order, round and round, into a ring buffer with
 * O_DIRECT (the page cache neither holds nor hides them) and stays as far ahead of the engine as the ring
 * allows, so reading layer i + 1 overlaps computing layer i, and the next token's first layers are read while
 * the head computes. The engine takes units from the ring in order and gives each back when its product is
 * done. The synchronous mode (no reader thread, every unit read when it is needed into a buffer of one unit)
 * is the naive baseline: every streamed byte re-read each token, nothing overlapped.
 */
#define _GNU_SOURCE
#include "edgellm.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ALIGN 4096

struct el_offload {
    int fd, direct, synchronous, n_units, n_slots;
    el_unit *units;
    int *slot_first, *slot_count; /* per slot: its first unit and how many */
    size_t *start, *span, *charged; /* per unit while in the ring: where, aligned bytes, bytes it holds up */
    int64_t *lead;                  /* per unit: bytes before its data in its aligned span */
    uint8_t *ring, *row_buf;
    size_t cap, fill, tail, row_cap;
    int64_t rseq, cseq;             /* units read / handed back since the start, in schedule order */
    int stop, failed;
    char error[256];
    struct stat st;                 /* the file as opened: a change of size or time is an error */
    /* mixture of experts: each (layer, expert)'s gate, up and down slabs read on demand into a cache of
     * n_cached slabs, the least often routed expert replaced first (ties: the least recently used) */
    int n_layers, n_expert, n_cached;
    int64_t *expert_off;   /* n_layers x n_expert x 3 file offsets */
    int64_t *expert_bytes; /* n_layers x 3: one expert's gate, up and down bytes in that layer */
    size_t slab_span[3], slab_bytes;
    uint8_t *slabs;
    int *where, *owner;   /* (layer, expert) -> slab or -1; slab -> (layer, expert) or -1 */
    int64_t *lead3;       /* per slab: bytes before each of its three tensors' data */
    int64_t *uses, *last_use, tick;
    pthread_t reader;
    int has_reader;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    el_io_stats io;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void fail(el_offload *o, const char *what) {
    if (!o->failed) snprintf(o->error, sizeof(o->error), "%s", what);
    o->failed = 1;
}

static int file_changed(el_offload *o) {
    struct stat st;
    if (fstat(o->fd, &st) != 0) return 1;
    return st.st_size != o->st.st_size || st.st_mtim.tv_sec != o->st.st_mtim.tv_sec ||
           st.st_mtim.tv_nsec != o->st.st_mtim.tv_nsec;
}

/* read `span` bytes at the aligned offset `at` into dst (aligned); 0, or -1 with o->error set (caller holds no
 * lock; fail() is called under the lock by the caller) */
static int read_span(el_offload *o, int64_t at, size_t span, uint8_t *dst, const char **why) {
    size_t done = 0;
    while (done < span) {
        const ssize_t n = pread(o->fd, dst + done, span - done, at + (int64_t)done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            *why = "a read of the model file failed";
            return -1;
        }
        if (n == 0) break; /* end of file: the last span may run past it, the data it needs must not */
        done += (size_t)n;
    }
    if (!o->direct) posix_fadvise(o->fd, at, (off_t)span, POSIX_FADV_DONTNEED);
    if ((int64_t)done < (int64_t)span && at + (int64_t)done < (int64_t)o->st.st_size) {
        *why = "a read of the model file came back short";
        return -1;
    }
    if (file_changed(o)) {
        *why = "the model file was changed or truncated during the run";
        return -1;
    }
    return 0;
}

static void unit_span(const el_offload *o, int u, int64_t *at, size_t *span, int64_t *lead) {
    const el_unit *x = &o->units[u];
    *at = x->offset / ALIGN * ALIGN;
    *lead = x->offset - *at;
    *span = (size_t)((*lead + x->bytes + ALIGN - 1) / ALIGN * ALIGN);
}

static void *reader_main(void *arg) {
    el_offload *o = arg;
    pthread_mutex_lock(&o->mu);
    for (;;) {
        const int u = (int)(o->rseq % o->n_units);
        int64_t at, lead;
        size_t span, start, charged;
        unit_span(o, u, &at, &span, &lead);
        for (;;) { /* wait for room, and never hold the same unit twice */
            if (o->stop || o->failed) break;
            if (o->fill == 0) o->tail = 0; /* an empty ring starts over: any unit up to cap then fits */
            const int wraps = o->tail + span > o->cap; /* the room left at the end is charged to this unit */
            start = wraps ? 0 : o->tail;
            charged = span + (wraps ? o->cap - o->tail : 0);
            if (o->fill + charged <= o->cap && o->rseq - o->cseq < o->n_units) break;
            pthread_cond_wait(&o->cv, &o->mu);
        }
        if (o->stop || o->failed) break;
        pthread_mutex_unlock(&o->mu);
        const double t0 = now_s();
        const char *why = NULL;
        const int rc = read_span(o, at, span, o->ring + start, &why);
        const double t1 = now_s();
        pthread_mutex_lock(&o->mu);
        o->io.busy_s += t1 - t0;
        if (rc) {
            fail(o, why);
            pthread_cond_broadcast(&o->cv);
            break;
        }
        o->io.bytes += (double)span;
        o->io.reads += 1;
        o->start[u] = start;
        o->span[u] = span;
        o->charged[u] = charged;
        o->lead[u] = lead;
        o->tail = (start + span) % o->cap;
        o->fill += charged;
        o->rseq++;
        pthread_cond_broadcast(&o->cv);
    }
    pthread_mutex_unlock(&o->mu);
    return NULL;
}

el_offload *el_offload_open(const char *path, const el_unit *units, int n_units, int n_slots, size_t ring_bytes,
                            int synchronous, size_t row_bytes_max, char *err, size_t err_len) {
    el_offload *o = calloc(1, sizeof(*o));
    if (!o) return NULL;
    o->fd = -1;
    o->synchronous = synchronous;
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
#ifdef O_DIRECT
    o->fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    o->direct = o->fd >= 0;
#endif
    if (o->fd < 0) o->fd = open(path, O_RDONLY | O_CLOEXEC); /* no O_DIRECT here: drop pages after each read */
    const char *why = NULL;
    if (o->fd < 0 || fstat(o->fd, &o->st) != 0) why = "cannot open the model file for streaming";
    size_t max_span = 0;
    if (!why && (n_units < 0 || n_slots < 0)) why = "bad unit list";
    o->n_units = n_units;
    o->n_slots = n_slots;
    o->units = calloc((size_t)n_units + 1, sizeof(el_unit));
    o->slot_first = calloc((size_t)n_slots + 1, sizeof(int));
    o->slot_count = calloc((size_t)n_slots + 1, sizeof(int));
    o->start = calloc((size_t)n_units + 1, sizeof(size_t));
    o->span = calloc((size_t)n_units + 1, sizeof(size_t));
    o->charged = calloc((size_t)n_units + 1, sizeof(size_t));
    o->lead = calloc((size_t)n_units + 1, sizeof(int64_t));
    if (!why && (!o->units || !o->slot_first || !o->slot_count || !o->start || !o->span || !o->charged || !o->lead))
        why = "out of memory";
    for (int u = 0; !why && u < n_units; u++) {
        const el_unit *x = &units[u];
        if (x->slot < 0 || x->slot >= n_slots || x->offset < 0 || x->bytes <= 0 || x->n_rows <= 0 || x->row0 < 0 ||
            x->offset + x->bytes > (int64_t)o->st.st_size)
            why = "a streamed tensor lies outside the model file";
        else if (u > 0 && units[u - 1].slot != x->slot && o->slot_count[x->slot])
            why = "a matrix's units are not consecutive";
        if (why) break;
        o->units[u] = *x;
        if (!o->slot_count[x->slot]++) o->slot_first[x->slot] = u;
        int64_t at, lead;
        size_t span;
        unit_span(o, u, &at, &span, &lead);
        max_span = span > max_span ? span : max_span;
    }
    if (!why && n_units > 0) {
        o->cap = synchronous ? max_span : (ring_bytes > max_span ? ring_bytes : max_span) / ALIGN * ALIGN;
        if (o->cap < max_span) o->cap = max_span;
        if (posix_memalign((void **)&o->ring, ALIGN, o->cap)) why = "out of memory for the streaming buffer";
    }
    o->row_cap = (row_bytes_max + 2 * ALIGN) / ALIGN * ALIGN;
    if (!why && row_bytes_max && posix_memalign((void **)&o->row_buf, ALIGN, o->row_cap))
        why = "out of memory for the row buffer";
    if (!why && !synchronous && n_units > 0) {
        if (pthread_create(&o->reader, NULL, reader_main, o)) why = "cannot start the reader thread";
        else o->has_reader = 1;
    }
    if (why) {
        snprintf(err, err_len, "%s", why);
        el_offload_close(o);
        return NULL;
    }
    return o;
}

void el_offload_close(el_offload *o) {
    if (!o) return;
    if (o->has_reader) {
        pthread_mutex_lock(&o->mu);
        o->stop = 1;
        pthread_cond_broadcast(&o->cv);
        pthread_mutex_unlock(&o->mu);
        pthread_join(o->reader, NULL);
    }
    if (o->fd >= 0) close(o->fd);
    free(o->units);
    free(o->slot_first);
    free(o->slot_count);
    free(o->start);
    free(o->span);
    free(o->charged);
    free(o->lead);
    free(o->ring);
    free(o->row_buf);
    free(o->expert_off);
    free(o->expert_bytes);
    free(o->slabs);
    free(o->where);
    free(o->owner);
    free(o->lead3);
    free(o->uses);
    free(o->last_use);
    pthread_mutex_destroy(&o->mu);
    pthread_cond_destroy(&o->cv);
    free(o);
}

int el_offload_units(const el_offload *o, int slot, int *first) {
    if (!o || slot < 0 || slot >= o->n_slots) return 0;
    *first = o->slot_first[slot];
    return o->slot_count[slot];
}

const el_unit *el_offload_unit(const el_offload *o, int u) { return &o->units[u]; }

/* hand back the oldest unit (lock held) */
static void release_front(el_offload *o) {
    const int u = (int)(o->cseq % o->n_units);
    o->fill -= o->charged[u];
    o->cseq++;
    pthread_cond_broadcast(&o->cv);
}

/* a read the engine waits for (naive units, embedding rows, routed experts): timed and counted; 0 or -1 */
static int read_waited(el_offload *o, int64_t at, size_t span, uint8_t *dst) {
    const double t0 = now_s();
    const char *why = NULL;
    const int rc = read_span(o, at, span, dst, &why);
    const double dt = now_s() - t0;
    pthread_mutex_lock(&o->mu);
    o->io.busy_s += dt;
    o->io.wait_s += dt;
    if (rc) fail(o, why);
    else {
        o->io.bytes += (double)span;
        o->io.reads += 1;
    }
    pthread_mutex_unlock(&o->mu);
    return rc;
}

const void *el_offload_acquire(el_offload *o, int u) {
    if (o->synchronous) {
        int64_t at, lead;
        size_t span;
        unit_span(o, u, &at, &span, &lead);
        return read_waited(o, at, span, o->ring) ? NULL : o->ring + lead;
    }
    pthread_mutex_lock(&o->mu);
    const double t0 = now_s();
    /* units the engine skipped (a head it did not need) are handed back unread by it */
    for (;;) {
        while (!o->failed && o->rseq <= o->cseq) pthread_cond_wait(&o->cv, &o->mu);
        if (o->failed || (int)(o->cseq % o->n_units) == u) break;
        release_front(o);
    }
    o->io.wait_s += now_s() - t0;
    const void *p = o->failed ? NULL : o->ring + o->start[u] + o->lead[u];
    pthread_mutex_unlock(&o->mu);
    return p;
}

void el_offload_release(el_offload *o, int u) {
    if (o->synchronous) return;
    pthread_mutex_lock(&o->mu);
    if (!o->failed && (int)(o->cseq % o->n_units) == u && o->rseq > o->cseq) release_front(o);
    pthread_mutex_unlock(&o->mu);
}

const void *el_offload_read_row(el_offload *o, int64_t offset, size_t n) {
    const int64_t at = offset / ALIGN * ALIGN, lead = offset - at;
    const size_t span = (size_t)((lead + (int64_t)n + ALIGN - 1) / ALIGN * ALIGN);
    if (!o->row_buf || span > o->row_cap || offset < 0 || offset + (int64_t)n > (int64_t)o->st.st_size) return NULL;
    return read_waited(o, at, span, o->row_buf) ? NULL : o->row_buf + lead;
}

void el_offload_stats(el_offload *o, el_io_stats *s) {
    pthread_mutex_lock(&o->mu);
    *s = o->io;
    pthread_mutex_unlock(&o->mu);
}

const char *el_offload_error(el_offload *o) {
    pthread_mutex_lock(&o->mu);
    const char *e = o->failed ? o->error : NULL;
    pthread_mutex_unlock(&o->mu);
    return e;
}

size_t el_offload_ring_bytes(const el_offload *o) { return o->cap + (o->row_buf ? o->row_cap : 0); }

int el_offload_direct(const el_offload *o) { return o->direct; }

int el_offload_set_experts(el_offload *o, int n_layers, int n_expert, const int64_t *offsets, const int64_t *bytes,
                           int n_cached) {
    if (o->slabs || n_layers < 1 || n_expert < 1 || n_cached < 1) return -1;
    const size_t keys = (size_t)n_layers * n_expert;
    for (size_t i = 0; i < keys * 3; i++) {
        const int64_t b = bytes[(i / 3 / (size_t)n_expert) * 3 + i % 3];
        if (b <= 0 || offsets[i] < 0 || offsets[i] + b > (int64_t)o->st.st_size) return -1;
    }
    o->n_layers = n_layers;
    o->n_expert = n_expert;
    o->n_cached = n_cached;
    o->slab_bytes = 0;
    for (int j = 0; j < 3; j++) { /* a slab holds the largest layer's tensors, at any lead < ALIGN */
        o->slab_span[j] = 0;
        for (int l = 0; l < n_layers; l++) {
            const size_t span = (size_t)((ALIGN - 1 + bytes[l * 3 + j] + ALIGN - 1) / ALIGN * ALIGN);
            o->slab_span[j] = span > o->slab_span[j] ? span : o->slab_span[j];
        }
        o->slab_bytes += o->slab_span[j];
    }
    o->expert_bytes = malloc(sizeof(int64_t) * (size_t)n_layers * 3);
    if (!o->expert_bytes) return -1;
    memcpy(o->expert_bytes, bytes, sizeof(int64_t) * (size_t)n_layers * 3);
    o->expert_off = malloc(sizeof(int64_t) * keys * 3);
    o->where = malloc(sizeof(int) * keys);
    o->uses = calloc(keys, sizeof(int64_t));
    o->owner = malloc(sizeof(int) * (size_t)n_cached);
    o->lead3 = calloc((size_t)n_cached * 3, sizeof(int64_t));
    o->last_use = calloc((size_t)n_cached, sizeof(int64_t));
    if (!o->expert_off || !o->where || !o->uses || !o->owner || !o->lead3 || !o->last_use ||
        posix_memalign((void **)&o->slabs, ALIGN, o->slab_bytes * (size_t)n_cached))
        return -1;
    memcpy(o->expert_off, offsets, sizeof(int64_t) * keys * 3);
    for (size_t i = 0; i < keys; i++) o->where[i] = -1;
    for (int i = 0; i < n_cached; i++) o->owner[i] = -1;
    return 0;
}

int el_offload_has_experts(const el_offload *o) { return o && o->slabs != NULL; }

int el_offload_expert(el_offload *o, int layer, int expert, const void *out[3]) {
    if (!o->slabs || layer < 0 || layer >= o->n_layers || expert < 0 || expert >= o->n_expert) return -1;
    const int key = layer * o->n_expert + expert;
    o->uses[key]++;
    o->tick++;
    int slot = o->where[key];
    if (slot >= 0) {
        pthread_mutex_lock(&o->mu);
        o->io.expert_hits += 1;
        pthread_mutex_unlock(&o->mu);
    } else {
        slot = 0; /* a free slab, else the least often routed (then least recently used) expert's */
        for (int i = 0; i < o->n_cached; i++) {
            if (o->owner[i] < 0) {
                slot = i;
                break;
            }
            const int64_t ui = o->uses[o->owner[i]], us = o->uses[o->owner[slot]];
            if (ui < us || (ui == us && o->last_use[i] < o->last_use[slot])) slot = i;
        }
        if (o->owner[slot] >= 0) o->where[o->owner[slot]] = -1;
        o->owner[slot] = -1;
        uint8_t *dst = o->slabs + (size_t)slot * o->slab_bytes;
        int rc = 0;
        for (int j = 0; j < 3 && rc == 0; j++) {
            const int64_t off = o->expert_off[(size_t)key * 3 + j], at = off / ALIGN * ALIGN;
            const size_t span = (size_t)((off - at + o->expert_bytes[layer * 3 + j] + ALIGN - 1) / ALIGN * ALIGN);
            o->lead3[(size_t)slot * 3 + j] = off - at;
            rc = read_waited(o, at, span, dst);
            dst += o->slab_span[j];
        }
        if (rc) return -1;
        pthread_mutex_lock(&o->mu);
        o->io.expert_misses += 1;
        pthread_mutex_unlock(&o->mu);
        o->owner[slot] = key;
        o->where[key] = slot;
    }
    o->last_use[slot] = o->tick;
    const uint8_t *base = o->slabs + (size_t)slot * o->slab_bytes;
    for (int j = 0; j < 3; j++) {
        out[j] = base + o->lead3[(size_t)slot * 3 + j];
        base += o->slab_span[j];
    }
    return 0;
}
