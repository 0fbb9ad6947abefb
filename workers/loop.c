/*
 * loop.c -- the writer loop (DESIGN.md, "Writer loop").
 *
 * Invariants the read path relies on (DESIGN.md, "Read path"):
 *   - a record is in an active or frozen memtable from the moment it is
 *     applied until the tree that contains it is published;
 *   - the tree gets a batch (kvshm_writer_fold) only after that batch is
 *     committed, and the fold retires the frozen memtable in the same view
 *     publication, so a reader that misses all three finds it in SQLite.
 * Commit order: freeze every shard (so the batch is exactly the records with
 * sequence <= the batch's last sequence), commit the frozen memtables in one
 * kv_batch transaction with that sequence, publish it, fold every shard,
 * then tell each client ring how far it is committed.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "writer.h"

uint64_t wr_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
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
        if (st.used_bytes - st.retired_bytes > st.region_bytes / 4 * 3) {
            evict_shard(ws, i, 4);
            any = 1;
        }
    }
    if (any) kvshm_writer_maintain(ws->w, NULL);
}

/* ---- commit ---------------------------------------------------------------- */

typedef struct cm_ctx {
    kv_batch *b;
    kv_status st;
} cm_ctx;

static int cm_rec(void *ctx, const void *key, size_t klen, const void *val, size_t vlen,
                  uint64_t seq, int tomb)
{
    cm_ctx *c = ctx;
    c->st = tomb ? kv_batch_delete(c->b, key, klen) : kv_batch_put(c->b, key, klen, val, vlen);
    return c->st != KV_OK;
}

static int fold_all(wr_state *ws)
{
    uint32_t shards = kvshm_writer_shards(ws->w);
    for (uint32_t s = 0; s < shards; s++) {
        kvshm_status st;
        for (int attempt = 0; (st = kvshm_writer_fold(ws->w, s, ws->o.max_value_bytes)) ==
                              KVSHM_E_FULL && attempt < 4; attempt++) {
            /* Region full: evict half of this shard's cache, reclaim, retry;
             * the last attempts drop its whole cache (freed blocks stay in
             * their size classes, so only a full drop is sure to free the
             * node and record classes the fold needs). The data is in
             * SQLite already: the fold only decides what stays cached. */
            evict_shard(ws, s, attempt < 2 ? 2 : 1);
            kvshm_writer_maintain(ws->w, NULL);
        }
        if (st == KVSHM_E_FULL) {
            /* Last resort: fold without caching any value (every key of the
             * batch leaves the cache; the data is committed in SQLite), so
             * the frozen memtable is retired and writes can go on. */
            st = kvshm_writer_fold(ws->w, s, 0);
            kvshm_writer_maintain(ws->w, NULL);
        }
        if (st != KVSHM_OK) {
            wr_log("fold shard %u: %s", s, kvshm_strerror(st));
            return -1;
        }
    }
    return 0;
}

int wr_commit_all(wr_state *ws)
{
    uint32_t shards = kvshm_writer_shards(ws->w);
    int frozen = 0;
    for (uint32_t s = 0; s < shards; s++) frozen |= kvshm_writer_has_frozen(ws->w, s);
    if (!frozen) {
        /* A previous attempt may have left frozen memtables behind (commit
         * failed): those are committed first, with their own sequence. */
        if (ws->pending == 0) { ws->sync_requested = 0; return 0; }
        for (uint32_t s = 0; s < shards; s++) {
            kvshm_status st = kvshm_writer_freeze(ws->w, s);
            if (st != KVSHM_OK) {
                wr_log("freeze shard %u: %s", s, kvshm_strerror(st));
                return -1;
            }
        }
        ws->frozen_seq = ws->seq;
        ws->frozen_pending = ws->pending;
        ws->pending = 0;
        for (size_t i = 0; i < ws->nclients; i++) ws->clients[i].commit_pos =
            ws->clients[i].applied_pos;
    }
    if (ws->frozen_committed) goto fold;   /* committed earlier; only the fold failed */
    cm_ctx c = {.b = ws->batch, .st = KV_OK};
    kv_status st = kv_batch_begin(ws->batch);
    for (uint32_t s = 0; st == KV_OK && s < shards; s++) {
        kvshm_status ks = kvshm_writer_frozen_scan(ws->w, s, cm_rec, &c);
        st = c.st;
        if (st == KV_OK && ks != KVSHM_OK) st = KV_CORRUPT;
    }
    if (st == KV_OK) st = kv_batch_commit(ws->batch, ws->frozen_seq);
    else kv_batch_rollback(ws->batch);
    if (st != KV_OK) {
        wr_log("commit of sequence %" PRIu64 " failed (%s): %s; will retry", ws->frozen_seq,
               kv_strerror(st), kv_batch_errmsg(ws->batch));
        return -1;
    }
    ws->committed = ws->frozen_seq;
    ws->stat_commits++;
    kvshm_writer_publish_seq(ws->w, 0, ws->committed);
    ws->frozen_committed = 1;
fold:;
    int rc = fold_all(ws);
    if (rc == 0) ws->frozen_committed = 0;
    for (size_t i = 0; i < ws->nclients; i++) {
        wr_client *c2 = &ws->clients[i];
        if (c2->sock >= 0 && c2->ring) {
            kvshm_ring_set_committed(c2->ring, c2->commit_pos);
            c2->committed_pos = c2->commit_pos;
        }
    }
    ws->sync_requested = 0;
    ws->last_commit_ms = wr_now_ms();
    return rc;
}

/* ---- misses ---------------------------------------------------------------- */

static void load_misses(wr_state *ws)
{
    if (!ws->nmiss) return;
    kvshm_kv *kvs = calloc(ws->nmiss, sizeof *kvs);
    uint8_t **copies = calloc(ws->nmiss, sizeof *copies);
    size_t n = 0;
    for (size_t i = 0; kvs && copies && i < ws->nmiss; i++) {
        const void *v;
        size_t vlen;
        if (kv_get(ws->db, ws->miss_keys[i], ws->miss_lens[i], &v, &vlen) != KV_OK) continue;
        if (vlen <= ws->o.max_value_bytes && (copies[n] = malloc(vlen ? vlen : 1))) {
            memcpy(copies[n], v, vlen);
            kvs[n] = (kvshm_kv){.key = ws->miss_keys[i], .klen = ws->miss_lens[i],
                                .val = copies[n], .vlen = vlen, .seq = ws->committed};
            n++;
        }
        kv_get_done(ws->db);
    }
    if (n) {
        kvshm_status st = kvshm_writer_cache_load(ws->w, kvs, n);
        if (st == KVSHM_E_FULL) {
            evict_under_pressure(ws);
        } else if (st == KVSHM_OK) {
            ws->stat_miss_loads += n;
        }
    }
    for (size_t i = 0; i < n; i++) free(copies[i]);
    for (size_t i = 0; i < ws->nmiss; i++) free(ws->miss_keys[i]);
    ws->nmiss = 0;
    free(kvs);
    free(copies);
}

/* ---- run --------------------------------------------------------------- */

int wr_run(wr_state *ws)
{
    char err[512] = "";
    int rc = 1;
    ws->reg_fd = ws->lsock = ws->ep = -1;

    kv_batch_opts bo;
    kv_batch_opts_default(&bo);
    bo.table = ws->o.table;
    bo.synchronous = ws->o.synchronous;
    if (kv_batch_open(ws->o.db_path, &bo, &ws->batch, err, sizeof err) != KV_OK) {
        wr_log("open %s: %s", ws->o.db_path, err);
        return 1;
    }
    if (wr_registry_lock(ws) != 0) goto out;
    if (wr_recover(ws) != 0) goto out;
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
    kvshm_status ks = kvshm_writer_create(&cfg, &ws->w);
    if (ks != KVSHM_OK) {
        wr_log("create segment %s (%" PRIu64 " bytes): %s", ws->seg_name, ws->o.cache_bytes,
               kvshm_strerror(ks));
        goto out;
    }
    kvshm_writer_publish_seq(ws->w, ws->seq, ws->committed);
    if (wr_sock_listen(ws) != 0) goto out;
    if (wr_registry_write(ws, "ready") != 0) goto out;
    wr_log("serving %s (table %s) generation %" PRIu64 ", segment %s, %u shards, %" PRIu64
           " bytes", ws->db_abs, ws->o.table, ws->generation, ws->seg_name, ws->o.shards,
           ws->o.cache_bytes);
    /* The launcher waits for this line on stdout. */
    printf("ready %s\n", ws->seg_name);
    fflush(stdout);

    ws->last_commit_ms = wr_now_ms();
    uint64_t last_maint = ws->last_commit_ms, commits_at_ckpt = 0;
    int stopping = 0;
    for (;;) {
        wr_idle idle = {.ws = ws, .requests = kvshm_writer_requests(ws->w)};
        wr_sock_poll(ws);
        size_t drained = wr_drain(ws);
        uint64_t now = wr_now_ms();
        int due = ws->pending && (ws->sync_requested || ws->pending >= ws->o.batch_size ||
                                  now - ws->last_commit_ms >= (uint64_t)ws->o.commit_interval_ms);
        if (due || stopping || ws->frozen_left) {
            if (wr_commit_all(ws) == 0) ws->frozen_left = 0;
            else ws->frozen_left = 1;
        }
        if (ws->pending == 0 && !ws->frozen_left) {
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
            if (ws->stat_commits - commits_at_ckpt >= 64) {
                int frames = -1;
                kv_batch_checkpoint(ws->batch, &frames);
                commits_at_ckpt = ws->stat_commits;
            }
        }
        if (stopping && !drained && ws->pending == 0 && !ws->frozen_left) break;
        if (*ws->stop && !stopping) {
            stopping = 1;
            wr_log("stopping: committing everything pending");
            continue;
        }
        if (drained || stopping) continue;
        int timeout = 100;
        if (ws->pending) {
            uint64_t left = ws->last_commit_ms + (uint64_t)ws->o.commit_interval_ms;
            timeout = left > now ? (int)(left - now) : 0;
            if (timeout == 0) continue;
        }
        kvshm_writer_idle_wait(ws->w, wr_has_work, &idle, timeout);
    }
    rc = 0;
    wr_log("stopped: committed sequence %" PRIu64 ", %" PRIu64 " commits", ws->committed,
           ws->stat_commits);
out:
    wr_clients_close(ws);
    if (ws->w) {
        if (rc == 0) wr_registry_write(ws, "stopped");
        kvshm_writer_destroy(ws->w, 1);
    }
    if (ws->lsock >= 0) close(ws->lsock);
    if (ws->ep >= 0) close(ws->ep);
    kv_db_close(ws->db);
    if (ws->batch) kv_batch_checkpoint(ws->batch, NULL);
    kv_batch_close(ws->batch);
    for (size_t i = 0; i < ws->nmiss; i++) free(ws->miss_keys[i]);
    free(ws->miss_keys);
    free(ws->miss_lens);
    if (ws->reg_fd >= 0) close(ws->reg_fd);
    return rc;
}
