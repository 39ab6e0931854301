/* Memory read bandwidth: every thread streams its share of a buffer, summing 64-bit words so the loads
 * cannot be optimised away. Used to report how much of the machine's bandwidth decode uses. */
#include <stdint.h>
#include <time.h>

#include "edgellm.h"

typedef struct {
    const uint64_t *data;
    size_t n_words;
    uint64_t sums[64];
} read_ctx;

static void read_task(void *vctx, int ith, int nth) {
    read_ctx *c = vctx;
    const size_t w0 = c->n_words * ith / nth, w1 = c->n_words * (ith + 1) / nth;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = w0;
    for (; i + 4 <= w1; i += 4) {
        s0 += c->data[i];
        s1 += c->data[i + 1];
        s2 += c->data[i + 2];
        s3 += c->data[i + 3];
    }
    for (; i < w1; i++) s0 += c->data[i];
    c->sums[ith % 64] = s0 + s1 + s2 + s3;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

double el_read_bandwidth(el_pool *pool, const void *buf, size_t n_bytes, int repetitions) {
    read_ctx c = {buf, n_bytes / 8, {0}};
    el_pool_run(pool, read_task, &c); /* warm-up: fault pages in, wake threads */
    double best = 0.0;
    for (int r = 0; r < repetitions; r++) {
        const double t0 = now_seconds();
        el_pool_run(pool, read_task, &c);
        const double gbps = n_bytes / (now_seconds() - t0) / 1e9;
        if (gbps > best) best = gbps;
    }
    return best;
}
