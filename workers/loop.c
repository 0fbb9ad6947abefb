/*
 * loop.c -- the writer loop (docs/architecture.md, "The writer-side seam"): drain the client
 * rings into the active memtables, commit them to SQLite in bounded steps,
 * fold them into the CSB+trees, load reported misses, reclaim and evict.
 *
 * Invariants the read path relies on (docs/shared-mode.md, "How it works"):
 *   - a record is in an active or frozen memtable from the moment it is
 *     applied until the tree that contains it is published;
 *   - the tree gets a batch (kvshm_writer_fold) only after that batch is
 *     committed, and the fold retires the frozen memtable in the same view
 *     publication, so a reader that misses all three finds it in SQLite;
 *   - a SYNC record is answered (its ring marked committed) only after the
 *     commit of a batch frozen after it was applied.
 *
 * Commit pipeline. A commit is a small state machine (ws->phase) advanced
 * by bounded steps in each loop pass, with the rings drained between passes;
 * records applied meanwhile go to the new active memtables, which are not
 * part of the batch in flight:
 *
 *   IDLE   --due-->  FREEZE  every shard's active memtable becomes its
 *                            frozen one, all in one step, so the batch is
 *                            exactly the records with sequence <= frozen_seq;
 *                            each client's commit_pos = its applied_pos
 *          --------> INSERT  BEGIN IMMEDIATE once, then per step the next
 *                            records of the frozen memtables (a resumable
 *                            walk: kvshm_writer_frozen_scan_from) go into the
 *                            kv_batch, until the step's time budget is spent
 *          --------> COMMIT  kv_batch_commit(frozen_seq): the rows and the
 *                            sequence in one transaction; publish the
 *                            committed sequence; mark every ring committed
 *                            up to its commit_pos (SYNC waiters return)
 *          --------> FOLD    one shard per step: the committed frozen
 *                            memtable into the tree (view published,
 *                            memtable retired)
 *          --------> IDLE
 *
 * "Due": records pending and a SYNC was applied, or batch_size records are
 * pending, or commit_interval_ms passed since the last freeze. Only one
 * frozen memtable per shard exists, so a new freeze waits for the commit in
 * flight. When an active memtable fills while a commit is in flight, the
 * apply finishes that commit synchronously and starts the next one
 * (wr_commit_room: backpressure, never a drop). Callers that need
 * "everything applied so far is committed and folded" (put_file, optimize,
 * shutdown) run wr_commit_all, which finishes the steps in flight first; a
 * FEATURE request finishes an open transaction first (it writes through the
 * second connection, which needs SQLite's write lock). A failed step (BEGIN,
 * a put or COMMIT failing: the batch is rolled back and inserted again from
 * the start; a fold that finds its region full after evictions) leaves the
 * phase as it is and is retried on a later pass.
 *
 * Step sizes. A pass runs commit steps for INSERT_STEP_US (300 us; at least
 * one step), or, when the pass drained a flood of pipelined records
 * (FLOOD_RECORDS), for as long as the drain took, up to FLOOD_STEP_US, so
 * the commit keeps pace with the applies. Outside a flood, a record waiting
 * in any ring ends the commit and miss work of the pass early (after one
 * chunk of INSERT_CHUNK inserts, or one step of another phase, or one miss):
 * an acknowledged put's producer waits for exactly that record, so the
 * loop goes back to draining, and the commit advances a chunk per pass --
 * far more than the one or two records a pass applies per waiting
 * producer. Figures measured on the 2-core test machine (release build,
 * 100-byte values, 4 shards, 2 client processes with acknowledged puts at
 * 40-60k puts/s in total, load average 3-7 from other builds), as CPU time
 * of the writer per step (STATUS commit_cpu_max_us; wall times add whatever
 * the scheduler took):
 *   freeze of all shards    0.25-0.7 ms (new arenas, views)
 *   insert step             0.5-1.4 ms at most (the budget is checked every
 *                           INSERT_CHUNK records; the first step also runs
 *                           BEGIN IMMEDIATE); rare outliers of several ms
 *                           inside SQLite
 *   kv_batch_commit         0.4-1.3 ms for a 20 ms batch (~1k records; the
 *                           WAL append, synchronous=NORMAL: no fsync) -- so
 *                           commit_interval_ms stays at 20 ms; its wall time
 *                           reached 2-13 ms only when the disk was busy
 *   fold of one shard       0.4-1.0 ms (one outlier of 6 ms)
 * With pipelined puts (2 processes, 290-320k records/s arriving, batches of
 * ~12k records) kv_batch_commit took 0.9-1.1 ms and a shard's fold 0.7-1.2
 * ms of CPU, inserts ran in the flood budget, and no memtable filled
 * (commit_sync stayed 0).
 * The WAL checkpoint takes 20-360 ms on that machine (it fsyncs): run by
 * the loop it stalled every put (put maxima of 67-80 ms equal to its
 * duration), so it runs on the checkpointer thread (ckpt.c) and the loop's
 * connection never checkpoints by itself.
 *
 * Misses. Readers report keys they had to read from SQLite (MISS records);
 * the writer queues them once (a lossy hash filter drops repeats), and
 * loads them within MISS_STEP_US per pass, skipping keys that are cached by
 * then (a memtable or the tree has them: just written, or folded), so an
 * acknowledged put waits for at most one SQLite read (records waiting in a
 * ring end the miss work) and never for more than MISS_STEP_US of them.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kv_assert.h"
#include "writer.h"

/* Time budget of one insert step, microseconds (see "Step sizes"). */
#define INSERT_STEP_US 300
/* A pass that drained this many records is a flood of pipelined records,
 * and may spend up to FLOOD_STEP_US on commit steps (commit_budget). */
#define FLOOD_RECORDS 512
#define FLOOD_STEP_US 4000
/* Records written between two looks at the clock inside an insert step. */
#define INSERT_CHUNK 32
/* After SIGTERM/SIGINT, how long the final commit is retried (a busy file, a
 * full disk) before the writer exits and leaves the applied records in its
 * segment for the next writer to replay (not in a cluster: registry.c). */
#define STOP_COMMIT_MS 10000
/* Time budget of miss loading per loop pass, microseconds. */
#define MISS_STEP_US 200
/* Reported misses queued at most (the rest are reported again later). */
#define MISS_QUEUE 4096
/* Commits between two checkpoints of the checkpointer thread. */
#define CKPT_EVERY 8
/* Slots of the filter of queued miss hashes (a power of two). */
#define MISS_FILTER 8192
/* A reported miss of this many bytes or more is a large value: it is
 * cached only into free room of its shard (miss_admit_large). The engine's
 * direct-read threshold: values it reads straight into the caller's buffer. */
#define MISS_LARGE_MIN KV_GET_DIRECT_MIN

/* KVAULT_WRITER_ADMIT_LARGE=all in the environment caches every large
 * miss, evicting as needed, as small ones are (for measurements;
 * docs/performance.md, "Large values in shared mode"). */
static int g_miss_admit_all = -1;

uint64_t wr_now_ms(void)
{
    return wr_now_us() / 1000u;
}

uint64_t wr_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- eviction ------------------------------------------------------------ */

typedef struct ev_ctx {
    const void **keys;
    size_t *lens;
    size_t n, cap;
    uint64_t i, stride;
} ev_ctx;

static int ev_pick(void *ctx, const void *key, size_t klen, const void *val, size_t vlen,
                   uint64_t seq, int tomb)
{
    ev_ctx *c = ctx;
    if (c->i++ % c->stride) return 0;
    if (c->n == c->cap) return 1;
    c->keys[c->n] = key;   /* valid until the next fold/maintain */
    c->lens[c->n++] = klen;
    return 0;
}

/* Evict about 1/stride of the shard's cached keys, sampled uniformly over
 * the key order (the data stays in SQLite). Returns keys evicted. */
static size_t evict_shard(wr_state *ws, uint32_t shard, uint64_t stride)
{
    kvshm_shard_stats st;
    if (kvshm_writer_shard_stats(ws->w, shard, &st) != KVSHM_OK || st.tree_keys == 0) return 0;
    ev_ctx c = {.cap = (size_t)(st.tree_keys / stride + 1), .stride = stride};
    c.keys = malloc(c.cap * sizeof *c.keys);
    c.lens = malloc(c.cap * sizeof *c.lens);
    size_t done = 0;
    if (c.keys && c.lens) {
        kvshm_writer_cache_scan(ws->w, shard, ev_pick, &c);
        if (c.n && kvshm_writer_cache_evict(ws->w, c.keys, c.lens, c.n) == KVSHM_OK)
            done = c.n;
    }
    free(c.keys);
    free(c.lens);
    ws->stat_evicted_keys += done;
    return done;
}

/* Under pressure (a shard region more than 3/4 used) evict a quarter of its
 * cached keys, then reclaim. */
static void evict_under_pressure(wr_state *ws)
{
    uint32_t shards = kvshm_writer_shards(ws->w);
    int any = 0;
    for (uint32_t i = 0; i < shards; i++) {
        kvshm_shard_stats st;
        kvshm_writer_shard_stats(ws->w, i, &st);
        if (st.used_bytes - st.retired_bytes > kvshm_evict_mark(&st)) {
            evict_shard(ws, i, 4);
            any = 1;
        }
    }
    if (any) kvshm_writer_maintain(ws->w, NULL);
}

/* ---- commit pipeline ------------------------------------------------------- */

const char *const wr_phase_names[WR_NPHASES] = {"idle", "freeze", "insert", "commit", "fold"};

/* CPU time of this thread, microseconds: a step's own work, without the
 * time other processes held the core (a system call; once per step). */
static uint64_t cpu_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

typedef struct cm_ctx {
    wr_state *ws;
    kv_status st;
} cm_ctx;

/* One record of the frozen batch into the kv_batch, and, in a cluster, into
 * the batch's Raft entry (cluster.c). */
static int cm_rec(void *ctx, const void *key, size_t klen, const void *val, size_t vlen,
                  uint64_t seq, int tomb)
{
    cm_ctx *c = ctx;
    kv_batch *b = c->ws->batch;
    c->st = tomb ? kv_batch_delete(b, key, klen) : kv_batch_put(b, key, klen, val, vlen);
    if (c->st == KV_OK && c->ws->cluster)
        wr_cluster_batch_add(c->ws, key, klen, val, vlen, seq, tomb);
    return c->st != KV_OK;
}

/* Fold shard s's committed frozen memtable into its tree. When the region is
 * full: evict half of this shard's cache, reclaim, retry; the last attempts
 * drop its whole cache (freed blocks stay in their size classes, so only a
 * full drop is sure to free the node and record classes the fold needs); as
 * a last resort fold without caching any value (the data is in SQLite
 * already: the fold only decides what stays cached), so the frozen memtable
 * is retired and writes can go on. 0 or -1 (logged). */
static int fold_shard(wr_state *ws, uint32_t s)
{
    kvshm_status st;
    for (int attempt = 0; (st = kvshm_writer_fold(ws->w, s, ws->o.max_value_bytes)) ==
                          KVSHM_E_FULL && attempt < 4; attempt++) {
        evict_shard(ws, s, attempt < 2 ? 2 : 1);
        kvshm_writer_maintain(ws->w, NULL);
    }
    if (st == KVSHM_E_FULL) {
        st = kvshm_writer_fold(ws->w, s, 0);
        kvshm_writer_maintain(ws->w, NULL);
    }
    if (st != KVSHM_OK) {
        wr_log("fold shard %u: %s", s, kvshm_strerror(st));
        return -1;
    }
    return 0;
}

/* Start a commit. Precondition: phase IDLE. Takes the batch (everything
 * applied so far) and each ring's position, then freezes (cm_freeze). */
static void cm_start(wr_state *ws)
{
    KV_ASSERT(ws->phase == WR_IDLE);
    ws->frozen_seq = ws->seq;
    ws->frozen_pending = ws->pending;
    ws->pending = 0;
    ws->sync_requested = 0;
    for (size_t i = 0; i < ws->nclients; i++)
        ws->clients[i].commit_pos = ws->clients[i].applied_pos;
    ws->phase = WR_FREEZE;
    ws->cm_shard = 0;
    ws->last_commit_ms = wr_now_ms();
}

/* FREEZE: freeze the shards not frozen yet. Precondition: phase FREEZE. A
 * shard whose freeze fails (no room for a new arena) is retried after an
 * eviction pass, and on the next step; until every shard is frozen the loop
 * does not drain the rings (records applied meanwhile would have a sequence
 * above frozen_seq in a memtable of this batch). 0 or -1. */
static int cm_freeze(wr_state *ws)
{
    uint32_t shards = kvshm_writer_shards(ws->w);
    for (; ws->cm_shard < shards; ws->cm_shard++) {
        kvshm_status st = kvshm_writer_freeze(ws->w, ws->cm_shard);
        /* No room for the next memtable: the read cache gives way (half of
         * the shard's cached keys per round, reclaimed at once), since
         * writes that cannot be applied stall every client. */
        for (int round = 0; st == KVSHM_E_FULL && round < 8; round++) {
            if (!evict_shard(ws, ws->cm_shard, 2) && round) break;
            kvshm_writer_maintain(ws->w, NULL);
            st = kvshm_writer_freeze(ws->w, ws->cm_shard);
        }
        if (st != KVSHM_OK) {
            /* clients waiting for room report it after a while (cleared by
             * the next commit that succeeds) */
            kvshm_writer_set_fault(ws->w, st == KVSHM_E_FULL ? KV_NOMEM : KV_CORRUPT, 0);
            uint64_t now = wr_now_ms();
            if (now - ws->freeze_fail_log_ms >= 1000) {   /* once a second at most */
                kvshm_shard_stats ss;
                kvshm_writer_shard_stats(ws->w, ws->cm_shard, &ss);
                wr_log("freeze shard %u: %s (region %" PRIu64 " bytes: %" PRIu64
                       " used, %" PRIu64 " retired; %" PRIu64 " keys cached)", ws->cm_shard,
                       kvshm_strerror(st), ss.region_bytes, ss.used_bytes, ss.retired_bytes,
                       ss.tree_keys);
                ws->freeze_fail_log_ms = now;
            }
            return -1;
        }
    }
    ws->phase = WR_INSERT;
    ws->cm_shard = 0;
    ws->cm_cur = (kvshm_scan_cursor)KVSHM_SCAN_CURSOR_INIT;
    wr_cluster_batch_reset(ws);
    return 0;
}

/* Abandon the open transaction: the batch is inserted again from the start. */
static void cm_restart(wr_state *ws)
{
    if (ws->cm_open) kv_batch_rollback(ws->batch);
    ws->cm_open = 0;
    ws->phase = WR_INSERT;
    ws->cm_shard = 0;
    ws->cm_cur = (kvshm_scan_cursor)KVSHM_SCAN_CURSOR_INIT;
    wr_cluster_batch_reset(ws);
}

/* 1 if a client ring holds a record: its producer may be waiting for it to
 * be applied (an acknowledged put), so long work should end this pass. */
static int rings_waiting(wr_state *ws)
{
    for (size_t i = 0; i < ws->nclients; i++) {
        wr_client *c = &ws->clients[i];
        uint32_t type, len;
        const void *p;
        if (c->sock >= 0 && c->ring && kvshm_ring_peek(c->ring, &type, &p, &len) == KVSHM_OK)
            return 1;
    }
    return 0;
}

/* A step of the commit failed (it is retried): publish the fault, so that
 * clients waiting for room can report it, and log it at most once a second. */
static void commit_failed(wr_state *ws, const char *step, kv_status st, const char *msg)
{
    kvshm_writer_set_fault(ws->w, (uint32_t)st, kv_batch_sqlite_errcode(ws->batch));
    uint64_t now = wr_now_ms();
    if (now - ws->commit_fail_log_ms < 1000) return;
    ws->commit_fail_log_ms = now;
    wr_log("%s of sequence %" PRIu64 " failed (%s): %s; will retry", step, ws->frozen_seq,
           kv_strerror(st), msg);
}

/* INSERT: write frozen records into the kv_batch until deadline_us (UINT64_MAX:
 * all of them), or, with yield, until a ring holds a record (at least one
 * chunk of INSERT_CHUNK per call). Precondition: phase INSERT. 0 or -1
 * (logged; rolled back). */
static int cm_insert(wr_state *ws, uint64_t deadline_us, int yield)
{
    kv_status st;
    if (!ws->cm_open) {
        if ((st = kv_batch_begin(ws->batch)) != KV_OK) {
            commit_failed(ws, "begin", st, kv_batch_errmsg(ws->batch));
            return -1;
        }
        ws->cm_open = 1;
    }
    uint32_t shards = kvshm_writer_shards(ws->w);
    cm_ctx c = {.ws = ws, .st = KV_OK};
    while (ws->cm_shard < shards) {
        kvshm_status ks = kvshm_writer_frozen_scan_from(ws->w, ws->cm_shard, &ws->cm_cur,
                                                        INSERT_CHUNK, cm_rec, &c);
        if (c.st != KV_OK || (ks != KVSHM_OK && ks != KVSHM_EMPTY)) {
            commit_failed(ws, "insert", c.st != KV_OK ? c.st : KV_CORRUPT,
                          c.st != KV_OK ? kv_batch_errmsg(ws->batch)
                                        : kvshm_strerror(ks));
            cm_restart(ws);
            return -1;
        }
        if (ks == KVSHM_EMPTY) {
            ws->cm_shard++;
            ws->cm_cur = (kvshm_scan_cursor)KVSHM_SCAN_CURSOR_INIT;
        }
        if (wr_now_us() >= deadline_us || (yield && rings_waiting(ws))) break;
    }
    if (ws->cm_shard == shards) ws->phase = WR_COMMIT;
    return 0;
}

/* COMMIT: commit the batch with its last sequence, publish it, mark the
 * rings committed. In a cluster, a leader's batch is first proposed, and
 * committed to the file only once the cluster committed it: until then the
 * phase stays COMMIT and each step looks again (with sync, the step waits).
 * Precondition: phase COMMIT, transaction open. 0 or -1 (logged; the batch
 * is inserted again; or this node is deposed: wr_run exits). */
static int cm_commit(wr_state *ws, int sync)
{
    if (!ws->cm_prop) {
        uint64_t prop = wr_cluster_batch_propose(ws, ws->frozen_seq);
        if (prop == UINT64_MAX) return -1;   /* deposed */
        ws->cm_prop = prop;
    }
    if (ws->cm_prop) {
        int r = wr_cluster_batch_wait(ws, ws->cm_prop, sync);
        if (r <= 0) return r;   /* 0: not yet; -1: deposed */
        /* a snapshot taken inside the wait (cluster.c, commit_applied) may
         * have committed this batch already */
        if (!ws->cm_open || ws->phase != WR_COMMIT) return 0;
    }
    kv_status st = kv_batch_commit(ws->batch, ws->frozen_seq);
    ws->cm_open = 0;
    if (st != KV_OK) {
        commit_failed(ws, "commit", st, kv_batch_errmsg(ws->batch));
        cm_restart(ws);
        return -1;
    }
    kvshm_writer_set_fault(ws->w, 0, 0);
    ws->committed = ws->frozen_seq;
    ws->cm_prop = 0;
    ws->stat_commits++;
    if (ws->ckpt && ws->stat_commits % CKPT_EVERY == 0) wr_ckpt_kick(ws->ckpt);
    kvshm_writer_publish_seq(ws->w, 0, ws->committed);
    /* Durable now (in a cluster: on a quorum, too): SYNC waiters up to each
     * ring's freeze position return (the folds only decide what the trees
     * cache). */
    for (size_t i = 0; i < ws->nclients; i++) {
        wr_client *c = &ws->clients[i];
        if (c->sock >= 0 && c->ring && c->commit_pos > c->committed_pos) {
            kvshm_ring_set_committed(c->ring, c->commit_pos);
            c->committed_pos = c->commit_pos;
        }
    }
    ws->phase = WR_FOLD;
    ws->cm_shard = 0;
    return 0;
}

/* One step of the commit in flight, ending by deadline_us where the phase
 * allows (insert steps; a commit or a fold of one shard is one unit), or
 * every remaining step when sync is set. Precondition: phase not IDLE.
 * 0 or -1 (logged; the phase stays for a retry). */
static int cm_step(wr_state *ws, uint64_t budget_us, int sync)
{
    uint64_t t0 = wr_now_us(), c0 = sync ? 0 : cpu_now_us();
    wr_phase ph = ws->phase;
    int rc = 0;
    do {
        switch (ws->phase) {
        case WR_FREEZE: rc = cm_freeze(ws); break;
        case WR_INSERT:
            rc = sync ? cm_insert(ws, UINT64_MAX, 0) : cm_insert(ws, t0 + budget_us, ws->yield);
            break;
        case WR_COMMIT: rc = cm_commit(ws, sync); break;
        case WR_FOLD:
            if ((rc = fold_shard(ws, ws->cm_shard)) == 0 &&
                ++ws->cm_shard == kvshm_writer_shards(ws->w))
                ws->phase = WR_IDLE;
            break;
        default: break;
        }
    } while (sync && rc == 0 && ws->phase != WR_IDLE);
    if (!sync) {
        uint64_t us = wr_now_us() - t0, cpu = cpu_now_us() - c0;
        ws->stat_commit_steps++;
        if (ph == WR_INSERT) ws->stat_insert_steps++;
        if (us > ws->stat_commit_max_us[ph]) ws->stat_commit_max_us[ph] = us;
        if (us > ws->stat_commit_max_us[WR_IDLE]) ws->stat_commit_max_us[WR_IDLE] = us;
        if (cpu > ws->stat_commit_cpu_max_us[ph]) ws->stat_commit_cpu_max_us[ph] = cpu;
    }
    return rc;
}

int wr_commit_finish(wr_state *ws)
{
    if (ws->phase == WR_IDLE) return 0;
    ws->stat_commit_sync++;
    return cm_step(ws, 0, 1);
}

int wr_commit_room(wr_state *ws)
{
    if (wr_commit_finish(ws) != 0) return -1;
    if (ws->pending == 0) return 0;
    cm_start(ws);
    return cm_step(ws, 0, 0);   /* the freeze: a new active memtable per shard */
}

int wr_commit_all(wr_state *ws)
{
    if (wr_commit_finish(ws) != 0) return -1;
    if (ws->pending == 0) return 0;
    cm_start(ws);
    return wr_commit_finish(ws);
}

/* Commit work allowed in a pass that drained `drained` records in drain_us:
 * INSERT_STEP_US, or under a flood of pipelined records (FLOOD_RECORDS or
 * more in one pass: nobody waits on a single record) as long as the drain
 * took, up to FLOOD_STEP_US, so the commit keeps pace with the applies and
 * the memtables do not fill. */
static uint64_t commit_budget(size_t drained, uint64_t drain_us)
{
    if (drained < FLOOD_RECORDS || drain_us <= INSERT_STEP_US) return INSERT_STEP_US;
    return drain_us < FLOOD_STEP_US ? drain_us : FLOOD_STEP_US;
}

/* The loop's commit work for one pass: start a commit when one is due, and
 * run steps of the commit in flight until budget_us is spent (at least
 * one step; each step bounded on its own). */
static void cm_tick(wr_state *ws, uint64_t now_ms, uint64_t budget_us)
{
    uint64_t deadline = wr_now_us() + budget_us;
    if (ws->phase == WR_IDLE) {
        if (!ws->pending || !(ws->sync_requested || ws->pending >= ws->o.batch_size ||
                              now_ms - ws->last_commit_ms >= (uint64_t)ws->o.commit_interval_ms))
            return;
        cm_start(ws);
    }
    do {
        uint64_t now = wr_now_us();
        if (cm_step(ws, deadline > now ? deadline - now : 0, 0) != 0) break;
        /* a batch waiting for the cluster's commit: nothing to do until
         * Raft's answer (the loop waits for it) */
        if (ws->phase == WR_COMMIT && ws->cm_prop) break;
    } while (ws->phase != WR_IDLE && wr_now_us() < deadline && !(ws->yield && rings_waiting(ws)));
}

/* ---- misses ---------------------------------------------------------------- */

void wr_miss_add(wr_state *ws, const uint8_t *key, uint32_t klen)
{
    if (klen == 0 || klen > KVSHM_MAX_KEY) return;   /* never cached */
    if (!ws->miss) {
        ws->miss = calloc(MISS_QUEUE, sizeof *ws->miss);
        ws->miss_filter = calloc(MISS_FILTER, sizeof *ws->miss_filter);
        if (!ws->miss || !ws->miss_filter) {
            free(ws->miss);
            free(ws->miss_filter);
            ws->miss = NULL;
            ws->miss_filter = NULL;
            return;
        }
    }
    uint64_t h = kvshm_key_hash(key, klen) | 1;   /* 0 marks a free filter slot */
    uint64_t *slot = &ws->miss_filter[h & (MISS_FILTER - 1)];
    if (ws->nmiss == MISS_QUEUE || *slot == h) {   /* full, or queued already */
        ws->stat_miss_skipped++;
        return;
    }
    uint8_t *k = malloc(klen);
    if (!k) return;
    memcpy(k, key, klen);
    *slot = h;
    ws->miss[(ws->miss_head + ws->nmiss++) % MISS_QUEUE] = (wr_miss){k, klen, h};
}

/* Take the oldest queued miss (its key is the caller's to free). */
static wr_miss miss_pop(wr_state *ws)
{
    wr_miss m = ws->miss[ws->miss_head];
    ws->miss_head = (ws->miss_head + 1) % MISS_QUEUE;
    ws->nmiss--;
    uint64_t *slot = &ws->miss_filter[m.hash & (MISS_FILTER - 1)];
    if (*slot == m.hash) *slot = 0;
    return m;
}

/* kv_get_into's allocator of a miss load: room for the value at the end of
 * ws->miss_buf, or NULL (the value is not read: kv_get_into returns
 * KV_NOMEM) when it is not to be cached: above max_value_bytes, or a large
 * value (MISS_LARGE_MIN or more) whose shard has no free room for it
 * (miss_admit_large). */
typedef struct miss_ctx {
    wr_state *ws;
    uint32_t shard;           /* the key's shard */
    size_t used;              /* bytes of miss_buf taken by this step */
    size_t klen;              /* the key's length */
    uint64_t large_pending;   /* region bytes of large values read, not loaded yet */
    int declined;             /* the last call refused a large value */
} miss_ctx;

/* Whether a large value taking `bytes` of the region (kvshm_cached_bytes)
 * may be cached in `shard` now: only into free room, so that loading it never starts an eviction
 * (evict_under_pressure, at 3/4 of the region), which would drop a sample
 * of every cached key, the hot small ones too. */
static int miss_admit_large(wr_state *ws, uint32_t shard, uint64_t pending, uint64_t bytes)
{
    if (g_miss_admit_all) return 1;
    kvshm_shard_stats st;
    if (kvshm_writer_shard_stats(ws->w, shard, &st) != KVSHM_OK) return 0;
    return kvshm_large_fits(&st, pending, bytes);
}

static void *miss_alloc(void *ctx, size_t vlen)
{
    miss_ctx *c = ctx;
    wr_state *ws = c->ws;
    c->declined = 0;
    if (vlen > ws->o.max_value_bytes) return NULL;
    if (vlen >= MISS_LARGE_MIN &&
        !miss_admit_large(ws, c->shard, c->large_pending, kvshm_cached_bytes(c->klen, vlen))) {
        c->declined = 1;
        return NULL;
    }
    if (!ws->miss_buf || c->used + vlen > ws->miss_buf_cap) {
        size_t nc = ws->miss_buf_cap ? ws->miss_buf_cap : 65536;
        while (nc < c->used + vlen) nc *= 2;
        uint8_t *nb = realloc(ws->miss_buf, nc);
        if (!nb) return NULL;
        ws->miss_buf = nb;
        ws->miss_buf_cap = nc;
    }
    return ws->miss_buf + c->used;
}

/* Load queued misses from SQLite into the cache for at most MISS_STEP_US:
 * keys cached by now are skipped, values that are not to be cached
 * (miss_alloc) are not read, the others are read once into miss_buf
 * (kv_get_into: a large one by the engine's large-value reader, without
 * growing the connection's page cache or faulting in its mapping), and
 * everything read is inserted in one kvshm_writer_cache_load. */
static void load_misses(wr_state *ws)
{
    if (!ws->nmiss) return;
    enum { MAXN = 256 };
    wr_miss taken[MAXN];
    size_t off[MAXN], len[MAXN], n = 0;
    miss_ctx c = {.ws = ws};
    uint32_t shards = kvshm_writer_shards(ws->w);
    uint64_t deadline = wr_now_us() + MISS_STEP_US;
    while (ws->nmiss && n < MAXN) {
        wr_miss m = miss_pop(ws);
        size_t vlen;
        if (kvshm_writer_cached(ws->w, m.key, m.klen)) {
            ws->stat_miss_skipped++;
            free(m.key);
        } else {
            c.shard = kvshm_shard_of(m.key, m.klen, shards);
            c.klen = m.klen;
            if (kv_get_into(ws->db, m.key, m.klen, KV_GET_DIRECT_MIN, miss_alloc, &c, &vlen) ==
                KV_OK) {
                taken[n] = m;
                off[n] = c.used;
                len[n++] = vlen;
                c.used += vlen;
                if (vlen >= MISS_LARGE_MIN) c.large_pending += kvshm_cached_bytes(m.klen, vlen);
            } else {
                if (c.declined) ws->stat_miss_declined++;
                free(m.key);
            }
        }
        if (wr_now_us() >= deadline || (ws->yield && rings_waiting(ws))) break;
    }
    if (!n) return;
    kvshm_kv kvs[MAXN];
    for (size_t i = 0; i < n; i++)
        kvs[i] = (kvshm_kv){.key = taken[i].key, .klen = taken[i].klen,
                            .val = ws->miss_buf + off[i], .vlen = len[i], .seq = ws->committed};
    kvshm_status st = kvshm_writer_cache_load(ws->w, kvs, n);
    if (st == KVSHM_E_FULL) evict_under_pressure(ws);
    else if (st == KVSHM_OK) ws->stat_miss_loads += n;
    for (size_t i = 0; i < n; i++) free(taken[i].key);
}

static void misses_free(wr_state *ws)
{
    while (ws->nmiss) free(miss_pop(ws).key);
    free(ws->miss);
    free(ws->miss_filter);
    free(ws->miss_buf);
}

/* ---- run --------------------------------------------------------------- */

int wr_run(wr_state *ws)
{
    char err[512] = "";
    int rc = 1;
    ws->reg_fd = ws->lsock = ws->ep = -1;
    if (g_miss_admit_all < 0) {
        const char *e = getenv("KVAULT_WRITER_ADMIT_LARGE");
        g_miss_admit_all = e && !strcmp(e, "all");
    }

    kv_batch_opts bo;
    kv_batch_opts_default(&bo);
    bo.table = ws->o.table;
    bo.synchronous = ws->o.synchronous;
    bo.no_autocheckpoint = 1;   /* checkpoints: ckpt.c, or the loop's fallback below */
    if (kv_batch_open(ws->o.db_path, &bo, &ws->batch, err, sizeof err) != KV_OK) {
        wr_log("open %s: %s", ws->o.db_path, err);
        return 1;
    }
    if (wr_registry_lock(ws) != 0) goto out;
    if (wr_recover(ws) != 0) goto out;
    ws->ckpt = wr_ckpt_start(ws->o.db_path, ws->o.table);
    kv_open_opts oo;
    kv_open_opts_default(&oo);
    oo.table = ws->o.table;
    if (kv_db_open(ws->o.db_path, &oo, &ws->db, err, sizeof err) != KV_OK) {
        wr_log("open %s: %s", ws->o.db_path, err);
        goto out;
    }

    kvshm_config cfg;
    kvshm_config_default(&cfg);
    cfg.seg_name = ws->seg_name;
    cfg.slot_name = ws->slot_name;
    cfg.size_bytes = ws->o.cache_bytes;
    cfg.shards = ws->o.shards;
    cfg.nslots = ws->o.nslots;
    cfg.memtable_bytes = ws->o.memtable_bytes;
    cfg.generation = ws->generation;
    cfg.group_access = ws->o.group_access;
    cfg.gid = ws->o.gid;
    kvshm_status ks = kvshm_writer_create(&cfg, &ws->w);
    if (ks != KVSHM_OK) {
        wr_log("create segment %s (%" PRIu64 " bytes): %s", ws->seg_name, ws->o.cache_bytes,
               kvshm_strerror(ks));
        goto out;
    }
    kvshm_writer_publish_seq(ws->w, ws->seq, ws->committed);
    /* readers report large misses only when this policy would load them */
    kvshm_writer_set_miss_policy(ws->w, g_miss_admit_all ? KVSHM_MISS_ALL : KVSHM_MISS_LARGE_FREE);
    if (wr_sock_listen(ws) != 0) goto out;
    if (wr_cluster_start(ws) != 0) goto out;
    if (wr_registry_write(ws, "ready") != 0) goto out;
    wr_log("serving %s (table %s) generation %" PRIu64 ", segment %s, %u shards, %" PRIu64
           " bytes", ws->db_abs, ws->o.table, ws->generation, ws->seg_name, ws->o.shards,
           ws->o.cache_bytes);
    /* The launcher waits for this line on stdout. */
    printf("ready %s\n", ws->seg_name);
    fflush(stdout);

    ws->last_commit_ms = wr_now_ms();
    ws->req_seen = kvshm_writer_requests(ws->w);
    uint64_t last_maint = ws->last_commit_ms, commits_at_ckpt = 0;
    int stopping = 0, final_poll = 0;
    uint64_t stop_ms = 0;
    for (;;) {
        /* The socket costs a system call: polled when a client flagged a
         * request, else once a millisecond (accepts, hang-ups). */
        wr_cluster_pass(ws);
        if (wr_cluster_deposed(ws)) {
            rc = WR_EXIT_DEPOSED;
            goto out;
        }
        uint32_t req = kvshm_writer_requests(ws->w);
        wr_idle idle = {.ws = ws, .requests = req};
        uint64_t now_us = wr_now_us();
        if (req != ws->req_seen || now_us - ws->last_poll_us >= 1000) {
            ws->req_seen = req;
            ws->last_poll_us = now_us;
            ws->stat_sock_polls++;
            wr_sock_poll(ws);
        }
        /* A partly frozen batch takes no records (see cm_freeze). */
        size_t drained = ws->phase == WR_FREEZE ? 0 : wr_drain(ws);
        if (wr_cluster_deposed(ws)) {   /* before any ring is marked committed below */
            rc = WR_EXIT_DEPOSED;
            goto out;
        }
        if (ws->phase != WR_IDLE) ws->stat_applies_during_commit += drained;
        uint64_t drain_us = wr_now_us() - now_us;
        uint64_t now = wr_now_ms();
        if (stopping) {
            if (wr_commit_all(ws) != 0) {
                if (now - stop_ms >= STOP_COMMIT_MS) {
                    wr_log("stop: the final commit keeps failing (%s); sequence %" PRIu64
                           " to %" PRIu64 " stays in segment %s for the next writer to"
                           " replay", kv_batch_errmsg(ws->batch), ws->committed + 1, ws->seq,
                           ws->seg_name);
                    rc = 1;
                    goto out;
                }
                struct timespec ts = {0, 20 * 1000 * 1000};
                nanosleep(&ts, NULL);   /* busy or full: retry */
            }
        } else {
            /* Records waiting in a ring end this pass's commit and miss
             * steps early (a producer may wait for each of them), except
             * under a flood of pipelined records: the commit must keep pace. */
            ws->yield = drained < FLOOD_RECORDS;
            cm_tick(ws, now, commit_budget(drained, drain_us));
        }
        if (ws->pending == 0 && ws->phase == WR_IDLE) {
            /* Nothing uncommitted: every applied ring record is committed
             * (covers SYNC/MISS/STATS records with no write behind them). */
            for (size_t i = 0; i < ws->nclients; i++) {
                wr_client *c = &ws->clients[i];
                if (c->sock >= 0 && c->ring && c->committed_pos != c->applied_pos) {
                    c->commit_pos = c->committed_pos = c->applied_pos;
                    kvshm_ring_set_committed(c->ring, c->applied_pos);
                }
            }
            ws->sync_requested = 0;
        }
        load_misses(ws);
        if (now - last_maint >= 50) {
            kvshm_maint mi;
            kvshm_writer_maintain(ws->w, &mi);
            evict_under_pressure(ws);
            last_maint = now;
            if (!ws->ckpt && ws->stat_commits - commits_at_ckpt >= 64 && !ws->cm_open) {
                int frames = -1;
                uint64_t t0 = wr_now_us();
                kv_batch_checkpoint(ws->batch, &frames);
                uint64_t us = wr_now_us() - t0;
                if (us > ws->stat_ckpt_max_us) ws->stat_ckpt_max_us = us;
                commits_at_ckpt = ws->stat_commits;
            }
        }
        if (stopping && !drained && ws->pending == 0 && ws->phase == WR_IDLE) {
            /* A client that sent its requests and exited just before this
             * pass (its pipelined inserts returned) may not have been read
             * yet: one last look at the socket, which applies the EXEC
             * requests it reads (wr_sock_poll flushes them) and leaves the
             * ring records for the next pass. */
            if (final_poll) break;
            final_poll = 1;
            ws->stat_sock_polls++;
            wr_sock_poll(ws);
            continue;
        }
        if (*ws->stop && !stopping) {
            stopping = 1;
            stop_ms = now;
            wr_log("stopping: committing everything pending");
            continue;
        }
        /* A batch waiting for the cluster's commit: wait for Raft's answer
         * up to 1 ms (client records are drained at least that often). */
        if (ws->phase == WR_COMMIT && ws->cm_prop && !drained && !ws->nmiss) {
            wr_cluster_io_ready(ws, 1);
            continue;
        }
        /* A commit in flight or queued misses: the next pass goes on with them. */
        if (ws->phase != WR_IDLE || ws->nmiss) continue;
        if (drained || stopping) continue;
        /* At most 100 ms: a SIGTERM that lands between the last look at
         * *ws->stop and the futex wait is seen by the next pass. */
        int timeout = 100;
        if (ws->pending) {
            uint64_t left = ws->last_commit_ms + (uint64_t)ws->o.commit_interval_ms;
            if (left <= now) continue;
            if (left - now < (uint64_t)timeout) timeout = (int)(left - now);
        }
        kvshm_writer_idle_wait(ws->w, wr_has_work, &idle, wr_cluster_wait_ms(ws, timeout));
    }
    rc = 0;
    wr_log("stopped: committed sequence %" PRIu64 ", %" PRIu64 " commits", ws->committed,
           ws->stat_commits);
out:
    wr_cluster_stop(ws);
    wr_clients_close(ws);
    if (ws->w) {
        if (rc == 0) wr_registry_write(ws, "stopped");
        /* Applied records that no commit holds stay in the segment: the
         * registry still names it, and the next writer replays them (a
         * single node; a cluster node's next writer takes them from the
         * Raft log instead: registry.c). */
        kvshm_writer_destroy(ws->w, ws->committed == ws->seq);
    }
    if (ws->lsock >= 0) close(ws->lsock);
    if (ws->ep >= 0) close(ws->ep);
    kv_db_close(ws->db);
    wr_exec_close(ws);
    wr_ckpt_stop(ws->ckpt);
    if (ws->batch) kv_batch_checkpoint(ws->batch, NULL);
    kv_batch_close(ws->batch);
    misses_free(ws);
    if (ws->reg_fd >= 0) close(ws->reg_fd);
    return rc;
}
