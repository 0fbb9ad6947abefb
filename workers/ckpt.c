/*
 * ckpt.c -- the writer's WAL checkpointer: a thread with its own kv_batch
 * handle (its own SQLite connection) that runs passive checkpoints.
 *
 * Why a thread: a checkpoint copies the WAL into the database file and
 * fsyncs both (synchronous=NORMAL syncs only there), which took 20-80 ms on
 * the test machine while other processes wrote to the disk. Run from the
 * loop, every such fsync was a stall of every put. On its own connection the
 * checkpoint runs beside the loop's transactions (a passive checkpoint never
 * takes SQLite's write lock), and the thread spends that time waiting for
 * the disk, not on a core. The loop's connection is opened with
 * no_autocheckpoint, so its COMMITs never checkpoint (nor fsync) themselves.
 *
 * The loop calls wr_ckpt_kick every few commits; the thread checkpoints
 * once per kick (kicks that arrive meanwhile fold into one), so the WAL stays
 * short: once a checkpoint has copied all of it, SQLite restarts it from the
 * beginning. Explicit CHECKPOINT and OPTIMIZE requests pause the thread
 * (wr_ckpt_pause), since SQLite runs one checkpoint at a time and would
 * turn theirs away.
 */
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "writer.h"

struct wr_ckpt {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    kv_batch *b;            /* the thread's own connection */
    uint64_t kicks, done;   /* under mu */
    uint64_t stop;          /* under mu: nonzero once wr_ckpt_stop ran */
    uint64_t paused;        /* under mu: 1 between wr_ckpt_pause and _resume */
    int running;            /* under mu: a checkpoint in progress */
    _Atomic uint64_t max_us, runs;
};

static void *ckpt_main(void *arg)
{
    wr_ckpt *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->stop && (c->paused || c->done == c->kicks))
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->stop) break;
        c->done = c->kicks;
        c->running = 1;
        pthread_mutex_unlock(&c->mu);
        uint64_t t0 = wr_now_us();
        kv_batch_checkpoint(c->b, NULL);
        uint64_t us = wr_now_us() - t0;
        if (us > atomic_load_explicit(&c->max_us, memory_order_relaxed))
            atomic_store_explicit(&c->max_us, us, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->runs, 1, memory_order_relaxed);
        pthread_mutex_lock(&c->mu);
        c->running = 0;
        pthread_cond_broadcast(&c->cv);   /* a wr_ckpt_pause may wait for it */
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

wr_ckpt *wr_ckpt_start(const char *db_path, const char *table)
{
    wr_ckpt *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    kv_batch_opts bo;
    kv_batch_opts_default(&bo);
    bo.table = table;
    char err[256];
    if (kv_batch_open(db_path, &bo, &c->b, err, sizeof err) != KV_OK) {
        wr_log("checkpointer: open %s: %s", db_path, err);
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    /* The thread blocks every signal: SIGTERM/SIGINT must reach the loop's
     * thread, whose futex wait they interrupt. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int rc = pthread_create(&c->th, NULL, ckpt_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        wr_log("checkpointer: no thread");
        kv_batch_close(c->b);
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->cv);
        free(c);
        return NULL;
    }
    return c;
}

/* Store v into the word *w under the mutex and wake the thread (and a
 * waiting wr_ckpt_pause). Precondition: w points into c, and only the loop
 * thread writes it. */
static void ckpt_set(wr_ckpt *c, uint64_t *w, uint64_t v)
{
    pthread_mutex_lock(&c->mu);
    *w = v;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

void wr_ckpt_kick(wr_ckpt *c)
{
    ckpt_set(c, &c->kicks, c->kicks + 1);
}

void wr_ckpt_wait(wr_ckpt *c)
{
    pthread_mutex_lock(&c->mu);
    uint64_t want = ++c->kicks;
    pthread_cond_broadcast(&c->cv);
    /* done reaches `want` when a checkpoint starts after this kick; it has
     * ended once running is 0 again (a paused or stopped thread runs none) */
    while (!c->stop && !c->paused && (c->done < want || c->running))
        pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

void wr_ckpt_pause(wr_ckpt *c)
{
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    c->paused = 1;
    while (c->running) pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

void wr_ckpt_resume(wr_ckpt *c)
{
    if (c) ckpt_set(c, &c->paused, 0);
}

void wr_ckpt_stats(const wr_ckpt *c, uint64_t *runs, uint64_t *max_us)
{
    *runs = c ? atomic_load_explicit(&c->runs, memory_order_relaxed) : 0;
    *max_us = c ? atomic_load_explicit(&c->max_us, memory_order_relaxed) : 0;
}

void wr_ckpt_stop(wr_ckpt *c)
{
    if (!c) return;
    ckpt_set(c, &c->stop, 1);
    pthread_join(c->th, NULL);
    kv_batch_close(c->b);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}
