/*
 * kv_embedded.c - the embedded backend of _KVault (kv_backend.h): libkvault
 * over SQLite in this process. The handle is a kv_db; every operation is the
 * engine call of the same name (engine/include/kvault/kvault.h), so the
 * engine's write-back cache, read cache and blob streaming are used as they
 * are.
 *
 * GIL policy for get, decided by measurement (50,000 hot 100 B gets, 32 KiB
 * pages, WAL): releasing the GIL around sqlite3_step gave 358k gets/s,
 * keeping it 365k gets/s (~2%). The SQLite read transaction dominates
 * (2 fcntl + 1 fstat per call, ~2.6 us in C), so releasing costs little and
 * lets other threads run: get_blocks says "release" for SQLite reads, and
 * hits of the read cache (get_cached) or the write-back cache keep it.
 * KVPY_GET_KEEP_GIL=1 in the environment keeps it for SQLite reads too.
 *
 * The binding reads through get_into (kv_get_into): the value is copied
 * once, into the Python bytes object. Values of KV_GET_DIRECT_MIN bytes or
 * more go from SQLite's pages straight into it (docs/performance.md,
 * "Large values"); KVPY_GET_DIRECT_MIN=<bytes> in the environment moves
 * that threshold, for measurements.
 */
#include <stdlib.h>

#include "kv_backend.h"

static int g_get_keep_gil = -1;   /* -1 until KVPY_GET_KEEP_GIL is read */
static size_t g_direct_min = KV_GET_DIRECT_MIN; /* KVPY_GET_DIRECT_MIN */

static kv_status emb_open(const char *path, const kv_open_opts *o, int route, void **out,
                          char *err, size_t errlen)
{
    (void)route;   /* the binding installs the commit guard (set_guard) */
    kv_db *db = NULL;
    if (g_get_keep_gil < 0) {
        const char *e = getenv("KVPY_GET_KEEP_GIL");
        g_get_keep_gil = e && e[0] == '1';
        const char *d = getenv("KVPY_GET_DIRECT_MIN");
        if (d && *d)
            g_direct_min = (size_t)strtoull(d, NULL, 10);
    }
    /* a dead writer's acknowledged records go into the file before this
     * handle can write it (docs/shared-mode.md, "Recovery") */
    kv_status st = kvb_attached_recover(path, o->table, err, errlen);
    /* a cluster node's file without its writer: it opens for reading, and
     * its commit guard refuses every write (kv_attach_recover_pending) */
    if (st == KV_UNSUPPORTED)
        st = KV_OK;
    if (st == KV_OK)
        st = kv_db_open(path, o, &db, err, errlen);
    *out = db;
    return st;
}

static kv_status emb_close(void *h) { return kv_db_close(h); }
static const char *emb_errmsg(const void *h) { return kv_db_errmsg(h); }
static int emb_os_errno(const void *h) { return kv_db_os_errno(h); }

static int emb_get_cached(void *h, const void *key, size_t klen, const void **val, size_t *vlen)
{
    return kv_get_cached(h, key, klen, val, vlen);
}

static int emb_get_blocks(const void *h)
{
    return !g_get_keep_gil && !kv_cache_enabled(h);
}

static kv_status emb_get(void *h, const void *key, size_t klen, uint64_t key_hash,
                         const void **val, size_t *vlen, uint64_t *token)
{
    (void)key_hash;
    if (token)
        *token = 0;
    return kv_get(h, key, klen, val, vlen);
}

static void emb_get_done(void *h) { kv_get_done(h); }

static kv_status emb_get_into(void *h, const void *key, size_t klen, uint64_t key_hash,
                              kv_alloc_fn alloc, void *ctx, size_t *vlen, uint64_t *token)
{
    (void)key_hash;
    if (token)
        *token = 0;
    return kv_get_into(h, key, klen, g_direct_min, alloc, ctx, vlen);
}

/* Every put is committed when it returns, unless the write-back cache
 * holds it: sync = flush that cache (nothing to do without one, or while it
 * is locked). Applied and committed are the same here, so flush = sync. */
static kv_status emb_sync(void *h) { return kv_cache_flush(h, NULL); }
#define emb_flush emb_sync

static kv_status emb_put(void *h, const void *key, size_t klen, const void *val, size_t vlen,
                         int flags)
{
    kv_status st = kv_put(h, key, klen, val, vlen);
    return st == KV_OK && (flags & KVB_PUT_SYNC) ? emb_sync(h) : st;
}

static kv_status emb_cache_flush(void *h, size_t *written) { return kv_cache_flush(h, written); }
static void emb_cache_set_locked(void *h, int locked) { kv_cache_set_locked(h, locked); }
static int emb_cache_enabled(const void *h) { return kv_cache_enabled(h); }
static int emb_stream_used_uring(const void *h) { return kv_stream_used_uring(h); }

/* Batches are one transaction when put_many/del_many return: the write
 * modes change nothing here (KVB_PUT_PIPELINED is ignored). */
static kv_status emb_put_many(void *h, const kv_item *it, size_t n, int flags)
{
    (void)flags;
    return kv_put_many(h, it, n);
}

static kv_status emb_del_many(void *h, const void *const *keys, const size_t *klens, size_t n,
                              int flags, size_t *removed)
{
    (void)flags;
    return kv_delete_many(h, keys, klens, n, removed);
}

/* The engine calls of the same name, with the kv_db seen as void *. */
static kv_status emb_exists(void *h, const void *k, size_t kn, int *x) { return kv_exists(h, k, kn, x); }
static kv_status emb_count(void *h, int64_t *n) { return kv_count(h, n); }
static kv_status emb_keys_batch(void *h, const void *p, size_t pn, const void *a, size_t an,
                                   size_t max, kv_keys **out)
{
    return kv_keys_batch(h, p, pn, a, an, max, out);
}
static kv_status emb_put_fd(void *h, const void *k, size_t kn, int fd, uint64_t size,
                               size_t chunk)
{
    return kv_put_fd(h, k, kn, fd, size, chunk);
}
static kv_status emb_get_to_fd(void *h, const void *k, size_t kn, int fd, size_t chunk,
                                  uint64_t *written)
{
    return kv_get_to_fd(h, k, kn, fd, chunk, written);
}
static kv_status emb_put_stream(void *h, const void *k, size_t kn, uint64_t size,
                                   size_t chunk, kv_read_fn rd, void *ctx)
{
    return kv_put_stream(h, k, kn, size, chunk, rd, ctx);
}
static kv_status emb_get_stream(void *h, const void *k, size_t kn, size_t chunk,
                                   kv_write_fn wr, void *ctx, uint64_t *written)
{
    return kv_get_stream(h, k, kn, chunk, wr, ctx, written);
}
static kv_status emb_cache_enable(void *h, size_t cap, size_t thr) { return kv_cache_enable(h, cap, thr); }
static kv_status emb_cache_disable(void *h) { return kv_cache_disable(h); }
static kv_status emb_checkpoint(void *h) { return kv_checkpoint(h); }
static kv_status emb_optimize(void *h) { return kv_optimize(h); }
static kv_status emb_record_feature(void *h, const char *n) { return kv_record_feature(h, n); }

static void emb_set_guard(void *h, kv_commit_guard *g) { kv_db_set_commit_guard(h, g); }

/* Shared-mode operations, which an embedded file does not have. */
#define emb_status NULL
#define emb_counters NULL
#define emb_generation NULL
#define emb_hot_new NULL
#define emb_stopped NULL

const kvb_ops kvb_embedded = KVB_OPS(emb, "embedded", 1000, 1);
