/* A persistent thread pool that holds up when the device is busy.
 *
 * A job is cut into slices (EL_SLICES_PER_THREAD per thread) that any thread claims while some are left, so a worker
 * the OS has descheduled does not hold back a share fixed in advance: the others take its slices. Only a slice
 * already claimed must be waited for. When the caller still spends much of its time waiting for such stragglers
 * (another process wants the cores), the pool runs jobs on the calling thread alone for a while, then tries all its
 * threads again. Workers spin briefly on a generation counter (jobs come microseconds apart during a forward
 * pass), then sleep on a condition variable so an idle pool costs nothing.
 *
 * Tasks see (slice, number of slices) as (ith, nth): every task's result depends only on its partition of the
 * work, never on which thread ran it, so results do not depend on the thread count or on the adaptation. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "edgellm.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

#define SPIN_ROUNDS 20000
/* adaptation: a window of WINDOW jobs straggles when the caller spent more than STALL_BUDGET_S, and more than
 * STRAGGLE of its time, in stalls (waits for a claimed slice longer than STALL_S: a descheduled worker, not the last
 * slice finishing). After STRAGGLING_WINDOWS in a row (a virtual machine's occasional hiccup is one), the next jobs
 * run on the calling thread alone: SOLO_JOBS of them, doubled each time all threads straggle again right after
 * (up to SOLO_MAX), back to SOLO_JOBS after a window without trouble. */
#define WINDOW 128
#define STRAGGLE 0.25
#define STALL_S 100e-6
#define STALL_BUDGET_S 1e-3
#define STRAGGLING_WINDOWS 2
#define SOLO_JOBS 4096
#define SOLO_MAX (1 << 20)

struct el_pool {
    int n_threads, n_slices;
    pthread_t *threads;
    el_task_fn fn;
    void *ctx;
    enum el_isa isa; /* the caller's kernel path, taken by every worker for the job */
    _Atomic uint64_t claim; /* (job generation << 32) | next slice to claim */
    atomic_int n_done; /* slices of the current job finished */
    atomic_int generation;
    atomic_int n_sleeping;
    atomic_int stop;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    /* adaptation (the caller's thread only) */
    int solo; /* jobs left to run alone */
    int solo_next; /* how many the next straggling sends alone */
    int straggled; /* straggling windows in a row */
    int window_jobs;
    double window_time, window_stalls;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* claim and run slices of job `gen` while there are any */
static void run_slices(el_pool *pool, uint32_t gen) {
    for (;;) {
        uint64_t c = atomic_load(&pool->claim);
        if ((uint32_t)(c >> 32) != gen || (uint32_t)c >= (uint32_t)pool->n_slices) return;
        if (!atomic_compare_exchange_weak(&pool->claim, &c, c + 1)) continue;
        /* the job's fields were written before its claim word was published, and stay until all its slices are
         * done, which this one is not */
        el_use_isa(pool->isa);
        pool->fn(pool->ctx, (int)(uint32_t)c, pool->n_slices);
        atomic_fetch_add(&pool->n_done, 1);
    }
}

static void *worker_main(void *varg) {
    el_pool *pool = varg;
    int seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop) && spins < SPIN_ROUNDS) {
            CPU_RELAX();
            spins++;
        }
        if (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop)) {
            pthread_mutex_lock(&pool->mutex);
            atomic_fetch_add(&pool->n_sleeping, 1);
            while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop)) {
                pthread_cond_wait(&pool->wake, &pool->mutex);
            }
            atomic_fetch_sub(&pool->n_sleeping, 1);
            pthread_mutex_unlock(&pool->mutex);
        }
        if (atomic_load(&pool->stop)) return NULL;
        seen = atomic_load(&pool->generation);
        run_slices(pool, (uint32_t)seen);
    }
}

el_pool *el_pool_create(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    el_pool *pool = calloc(1, sizeof(el_pool));
    if (!pool) return NULL;
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&pool->threads[i], NULL, worker_main, pool) != 0) {
            pool->n_threads = i; /* run with the threads we got */
            break;
        }
    }
    pool->n_slices = pool->n_threads > 1 ? pool->n_threads * EL_SLICES_PER_THREAD : 1;
    return pool;
}

static void wake_sleepers(el_pool *pool) {
    if (atomic_load(&pool->n_sleeping) > 0) {
        pthread_mutex_lock(&pool->mutex);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mutex);
    }
}

void el_pool_free(el_pool *pool) {
    if (!pool) return;
    atomic_store(&pool->stop, 1);
    pthread_mutex_lock(&pool->mutex);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 1; i < pool->n_threads; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->mutex);
    pthread_cond_destroy(&pool->wake);
    free(pool->threads);
    free(pool);
}

int el_pool_size(const el_pool *pool) { return pool ? pool->n_slices : 1; }

int el_pool_threads(const el_pool *pool) { return pool ? pool->n_threads : 1; }

/* after a job run by every thread: when stalls take too much time, go solo */
static void adapt(el_pool *pool, double work, double wait) {
    pool->window_time += work + wait;
    if (wait > STALL_S) pool->window_stalls += wait;
    if (++pool->window_jobs < WINDOW) return;
    const int straggling = pool->window_stalls > STALL_BUDGET_S && pool->window_stalls > STRAGGLE * pool->window_time;
    pool->straggled = straggling ? pool->straggled + 1 : 0;
    if (pool->straggled >= STRAGGLING_WINDOWS) {
        pool->solo = pool->solo_next > 0 ? pool->solo_next : SOLO_JOBS;
        pool->solo_next = pool->solo < SOLO_MAX / 2 ? 2 * pool->solo : SOLO_MAX;
        pool->straggled = 0;
    } else if (!straggling) {
        pool->solo_next = SOLO_JOBS; /* a whole window without trouble: the cores are free again */
    }
    pool->window_jobs = 0;
    pool->window_time = pool->window_stalls = 0.0;
}

void el_pool_run(el_pool *pool, el_task_fn fn, void *ctx) {
    if (!pool || pool->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    if (pool->solo > 0) { /* the others are busy elsewhere: the same slices, on this thread */
        pool->solo--;
        for (int s = 0; s < pool->n_slices; s++) fn(ctx, s, pool->n_slices);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    pool->isa = el_current_isa();
    atomic_store(&pool->n_done, 0);
    const uint32_t gen = (uint32_t)atomic_load(&pool->generation) + 1;
    atomic_store(&pool->claim, (uint64_t)gen << 32); /* the job, published before workers are told of it */
    atomic_store(&pool->generation, (int)gen);
    wake_sleepers(pool);
    const double t0 = now_s();
    run_slices(pool, gen);
    const double t1 = now_s();
    while (atomic_load(&pool->n_done) < pool->n_slices) CPU_RELAX();
    adapt(pool, t1 - t0, now_s() - t1);
}
