/* A persistent thread pool. Workers spin briefly on a generation counter (ops come microseconds apart
 * during a forward pass), then sleep on a condition variable so an idle pool costs nothing. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

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

struct el_pool {
    int n_threads;
    pthread_t *threads;
    el_task_fn fn;
    void *ctx;
    enum el_isa isa; /* the caller's kernel path, taken by every worker for the job */
    atomic_int generation;
    atomic_int n_done;
    atomic_int n_sleeping;
    atomic_int stop;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
};

typedef struct { el_pool *pool; int ith; } worker_arg;

static void *worker_main(void *varg) {
    worker_arg *arg = varg;
    el_pool *pool = arg->pool;
    const int ith = arg->ith;
    free(arg);
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
        el_use_isa(pool->isa);
        pool->fn(pool->ctx, ith, pool->n_threads);
        atomic_fetch_add(&pool->n_done, 1);
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
        worker_arg *arg = malloc(sizeof(worker_arg));
        arg->pool = pool;
        arg->ith = i;
        if (pthread_create(&pool->threads[i], NULL, worker_main, arg) != 0) {
            free(arg);
            pool->n_threads = i; /* run with the threads we got */
            break;
        }
    }
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

int el_pool_size(const el_pool *pool) { return pool ? pool->n_threads : 1; }

void el_pool_run(el_pool *pool, el_task_fn fn, void *ctx) {
    if (!pool || pool->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    pool->isa = el_current_isa();
    atomic_store(&pool->n_done, 0);
    atomic_fetch_add(&pool->generation, 1);
    wake_sleepers(pool);
    fn(ctx, 0, pool->n_threads);
    while (atomic_load(&pool->n_done) < pool->n_threads - 1) CPU_RELAX();
}
