/*
 * kv_attached.c - the attached backend of _KVault (kv_backend.h): a
 * kvault-writer serves the file and this process is attached to it through
 * kv_att (shm/include/kvshm/attach.h; docs/shared-mode.md, "How it works"). Also
 * the hot-value cache of kv_hot.h.
 *
 * Differences from the embedded backend, all documented in
 * docs/shared-mode.md:
 *   - put returns when the writer has APPLIED the write (every attached
 *     process sees it); put(..., sync=True) / sync() / flush_cache() wait
 *     until it is COMMITTED to SQLite; a pipelined write (KVB_PUT_PIPELINED)
 *     returns once it is in the ring, and flush() waits until this handle's
 *     writes are applied;
 *   - put_many/del_many submit the whole batch, ring the writer's doorbell
 *     once and wait once (kv_att_put_many / kv_att_delete_many);
 *   - the "write-back cache" is the ring itself: with it enabled, put
 *     returns as soon as the record is in the ring (batched apply) and the
 *     next read of this handle waits for it; flush_cache() returns the
 *     number of puts since the last flush after they are committed;
 *   - count()/keys() first ask the writer to commit, so they see every
 *     write applied before the call;
 *   - get and exists answer from the segment with the GIL kept (no system
 *     call on a hit); get copies a value once, from the segment (or from
 *     SQLite on a miss) into the bytes object it returns (att_get_into);
 *   - there is no callback streaming: put_file/get_to_file of objects
 *     without a file descriptor go through a memfd.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_backend.h"
#include "kv_hot.h"

/* The handle: the attachment and the ring-batching state of the cache API. */
typedef struct att {
    kv_att *a;                 /* owned */
    char *path, *table;        /* route 2 ("spawn"): what att_respawn starts a writer for */
    int cache_on;              /* puts go into the ring without waiting */
    int cache_locked;          /* flush_cache() refuses (returns 0) */
    size_t cache_puts;         /* puts since the last flush (cache on) */
} att;

/* kv_attach_opts.respawn of a "spawn" object: a writer that died with
 * nobody taking over is replaced, and the handle re-attaches to it. */
static int att_respawn(void *ctx)
{
    att *t = ctx;
    return kvb_spawn_writer(t->path, t->table);
}

static void att_free(att *t)
{
    free(t->path);
    free(t->table);
    free(t);
}

/* route: 0 none, 1 "auto" (continue after the writer stops), 2 "spawn"
 * (also replace a writer that died: att_respawn) */
static kv_status att_open(const char *path, const kv_open_opts *o, int route, void **out,
                          char *err, size_t errlen)
{
    kv_attach_opts ao;
    kv_attach_opts_default(&ao);
    ao.table = o->table;
    ao.continue_on_stop = route;
    ao.db = *o;
    char msg[512] = "";
    att *t = calloc(1, sizeof *t);
    kv_status st = t ? KV_OK : KV_NOMEM;
    if (t && route == 2) {
        t->path = strdup(path);
        t->table = strdup(o->table ? o->table : "kv");
        ao.respawn = att_respawn;
        ao.respawn_ctx = t;
        if (!t->path || !t->table) st = KV_NOMEM;
    }
    if (st == KV_OK) st = kv_attach(path, &ao, &t->a, msg, sizeof msg);
    if (st != KV_OK) {
        if (t) att_free(t);
        t = NULL;
        snprintf(err, errlen, "attach: %s", msg[0] ? msg : kv_strerror(st));
    }
    *out = t;
    return st;
}

/* The writer keeps and commits everything it applied, so a failed final
 * wait loses nothing: the status of the detach is not reported. */
static kv_status att_close(void *h)
{
    att *t = h;
    kv_attach_close(t->a);
    att_free(t);
    return KV_OK;
}

static const char *att_errmsg(const void *h) { return kv_att_errmsg(((const att *)h)->a); }

static kv_status att_get(void *h, const void *key, size_t klen, uint64_t key_hash,
                         const void **val, size_t *vlen, uint64_t *token)
{
    kv_att *a = ((att *)h)->a;
    if (!token)
        return kv_att_get(a, key, klen, val, vlen);
    /* Seqlock of kv_att_stamp: the value is the key's current one while the
     * stamp stays at t1. */
    uint64_t t1 = kv_att_stamp(a, key_hash, 0);
    kv_status st = kv_att_get(a, key, klen, val, vlen);
    *token = st == KV_OK && t1 && kv_att_stamp(a, key_hash, 1) == t1 ? t1 : 0;
    return st;
}

/* get through kv_att_get_into: a value found in the segment is copied
 * once, into the caller's buffer (the Python bytes object); a miss is read
 * by the own connection straight into it. Token as in att_get. */
static kv_status att_get_into(void *h, const void *key, size_t klen, uint64_t key_hash,
                              kv_alloc_fn alloc, void *ctx, size_t *vlen, uint64_t *token)
{
    kv_att *a = ((att *)h)->a;
    if (!token)
        return kv_att_get_into(a, key, klen, alloc, ctx, vlen);
    uint64_t t1 = kv_att_stamp(a, key_hash, 0);
    kv_status st = kv_att_get_into(a, key, klen, alloc, ctx, vlen);
    *token = st == KV_OK && t1 && kv_att_stamp(a, key_hash, 1) == t1 ? t1 : 0;
    return st;
}

static kv_status att_exists(void *h, const void *key, size_t klen, int *found)
{
    return kv_att_exists(((att *)h)->a, key, klen, found);
}

static kv_status att_count(void *h, int64_t *n) { return kv_att_count(((att *)h)->a, n); }

static kv_status att_keys_batch(void *h, const void *p, size_t pn, const void *after,
                                size_t an, size_t max, kv_keys **out)
{
    return kv_att_keys_batch(((att *)h)->a, p, pn, after, an, max, out);
}

/* kv_att flags of KVB_PUT_* flags: committed, else submitted only
 * (pipelined), else applied. */
static int att_flags(int flags)
{
    return (flags & KVB_PUT_SYNC) ? KV_ATT_SYNC : (flags & KVB_PUT_PIPELINED) ? KV_ATT_ASYNC : 0;
}

/* Puts with the cache on are pipelined (batched in the ring) and counted
 * for flush_cache(). */
static kv_status att_put(void *h, const void *key, size_t klen, const void *val, size_t vlen,
                         int flags)
{
    att *t = h;
    int f = att_flags(flags | (t->cache_on ? KVB_PUT_PIPELINED : 0));
    kv_status st = kv_att_put(t->a, key, klen, val, vlen, f);
    if (st == KV_OK && t->cache_on)
        t->cache_puts++;
    return st;
}

/* A batch waits in the applied mode even with the cache on (put_many([])
 * is how a caller waits for the records batched before it). */
static kv_status att_put_many(void *h, const kv_item *it, size_t n, int flags)
{
    att *t = h;
    kv_status st = kv_att_put_many(t->a, it, n, att_flags(flags));
    if (st == KV_OK && t->cache_on)
        t->cache_puts += n;
    return st;
}

static kv_status att_del_many(void *h, const void *const *keys, const size_t *klens, size_t n,
                              int flags, size_t *removed)
{
    return kv_att_delete_many(((att *)h)->a, keys, klens, n, att_flags(flags), removed);
}

/* Wait until the writer applied every write of this handle. */
static kv_status att_flush(void *h) { return kv_att_wait(((att *)h)->a, 0); }

static kv_status att_put_fd(void *h, const void *key, size_t klen, int fd, uint64_t size,
                            size_t chunk)
{
    return kv_att_put_fd(((att *)h)->a, key, klen, fd, size, chunk);
}

static kv_status att_get_to_fd(void *h, const void *key, size_t klen, int fd, size_t chunk,
                               uint64_t *written)
{
    return kv_att_get_to_fd(((att *)h)->a, key, klen, fd, chunk, written);
}

/* Wait until the writer committed every applied write (of every process). */
static kv_status att_sync(void *h) { return kv_att_wait(((att *)h)->a, 1); }

/* Turn batching on or off after committing what came before. */
static kv_status att_cache_switch(att *t, int on)
{
    kv_status st = att_sync(t);
    if (st == KV_OK) {
        t->cache_on = on;
        t->cache_puts = 0;
    }
    return st;
}

static kv_status att_cache_enable(void *h, size_t cap_bytes, size_t flush_threshold)
{
    (void)cap_bytes;          /* the ring bounds what is in flight */
    (void)flush_threshold;    /* the writer's group commit decides */
    return att_cache_switch(h, 1);
}

static kv_status att_cache_disable(void *h) { return att_cache_switch(h, 0); }

static kv_status att_cache_flush(void *h, size_t *written)
{
    att *t = h;
    *written = 0;
    if (t->cache_locked)
        return KV_OK;
    kv_status st = att_sync(t);
    if (t->cache_on)
        *written = t->cache_puts;
    t->cache_puts = 0;
    return st;
}

static void att_cache_set_locked(void *h, int locked) { ((att *)h)->cache_locked = locked; }
static int att_cache_enabled(const void *h) { return ((const att *)h)->cache_on; }

static kv_status att_checkpoint(void *h) { return kv_att_checkpoint(((att *)h)->a); }
static kv_status att_optimize(void *h) { return kv_att_optimize(((att *)h)->a); }

static kv_status att_record_feature(void *h, const char *name)
{
    return kv_att_record_feature(((att *)h)->a, name);
}

static kv_status att_status(void *h, char *buf, size_t cap)
{
    return kv_att_status(((att *)h)->a, buf, cap);
}

static void att_counters(const void *h, uint64_t *hits, uint64_t *misses)
{
    kv_att_counters(((const att *)h)->a, hits, misses);
}

static uint64_t att_generation(const void *h) { return kv_att_generation(((const att *)h)->a); }
static int att_stopped(const void *h) { return kv_att_stopped(((const att *)h)->a); }

/* ---- hot-value cache (kv_hot.h); GIL held throughout ---------------------- */

static kvhot *att_hot_new(void *h, size_t limit)
{
    kvhot *c = PyMem_Calloc(1, sizeof *c);
    uint64_t n = 2;
    while (n < KVHOT_MAX_ENTRIES && n * 2 * KVHOT_ENTRY_BYTES <= (uint64_t)limit)
        n *= 2;
    uint64_t first = n < KVHOT_MIN_ENTRIES ? n : KVHOT_MIN_ENTRIES;
    if (c)
        c->ent = PyMem_Calloc((size_t)first, sizeof *c->ent);
    if (!c || !c->ent) {
        PyMem_Free(c);
        PyErr_NoMemory();
        return NULL;
    }
    c->a = ((att *)h)->a;
    c->mask = first - 1;
    c->max_mask = n - 1;
    c->limit = (Py_ssize_t)(limit < (size_t)PY_SSIZE_T_MAX ? limit : (size_t)PY_SSIZE_T_MAX);
    return c;
}

/* Double the table (rehash every copy), 0; -1 when memory is short (the
 * table stays as it is). The two ways of a set go to the set of the same
 * index or the one `entries` above it: no set of the new table overflows. */
static int hot_grow(kvhot *c)
{
    uint64_t n = (c->mask + 1) * 2;
    kvhot_ent *ent = PyMem_Calloc((size_t)n, sizeof *ent);
    if (!ent)
        return -1;
    for (uint64_t i = 0; i <= c->mask; i++) {
        kvhot_ent *e = &c->ent[i];
        if (!e->key)
            continue;
        kvhot_ent *set = &ent[e->h & (n - 1) & ~UINT64_C(1)];
        set[set[0].key ? 1 : 0] = *e;
    }
    PyMem_Free(c->ent);
    c->ent = ent;
    c->mask = n - 1;
    return 0;
}

static void hot_drop(kvhot *c, kvhot_ent *e)
{
    if (!e->key)
        return;
    c->bytes -= e->cost;
    Py_CLEAR(e->key);
    Py_CLEAR(e->val);
}

void kvhot_free(kvhot *c)
{
    if (!c)
        return;
    for (uint64_t i = 0; i <= c->mask; i++)
        hot_drop(c, &c->ent[i]);
    PyMem_Free(c->ent);
    PyMem_Free(c);
}

static int hot_keepable(PyObject *v)
{
    return PyBytes_CheckExact(v) || PyUnicode_CheckExact(v) || PyLong_CheckExact(v) ||
           PyFloat_CheckExact(v) || PyBool_Check(v) || v == Py_None;
}

void kvhot_keep(kvhot *c, uint64_t h, const char *k, Py_ssize_t kn, PyObject *v, size_t vn,
                uint64_t token, uint32_t optk)
{
    if (vn > KVHOT_VALUE_MAX || !hot_keepable(v))
        return;
    kvhot_ent *e = kvhot_find(c, h, k, kn);
    if (!e) {
        kvhot_ent *set = &c->ent[h & c->mask & ~UINT64_C(1)];
        if (set[0].key && set[1].key && c->mask < c->max_mask && hot_grow(c) == 0)
            set = &c->ent[h & c->mask & ~UINT64_C(1)];
        e = !set[0].key ? &set[0] : !set[1].key ? &set[1]
            : (int32_t)(set[0].tick - set[1].tick) <= 0 ? &set[0] : &set[1];
    }
    Py_ssize_t cost = (Py_ssize_t)vn + kn + (Py_ssize_t)sizeof(kvhot_ent) + 64;
    if (c->bytes - (e->key ? e->cost : 0) + cost > c->limit)
        return;
    PyObject *kb = PyBytes_FromStringAndSize(k, kn);
    if (!kb) {
        PyErr_Clear();
        return;
    }
    hot_drop(c, e);
    Py_INCREF(v);
    e->h = h;
    e->token = token;
    e->key = kb;
    e->val = v;
    e->cost = cost;
    e->tick = c->tick++;
    e->optk = optk;
    c->bytes += cost;
}

/* Hot-cache hits are hits of the shared cache too: `kvault-launch status`
 * counts them through the attach layer's reports. */
void kvhot_report(kvhot *c)
{
    kv_att_add_hits(c->a, c->hits - c->reported);
    c->reported = c->hits;
}

/* ---- the table --------------------------------------------------------------- */

int kvb_attached_served(const char *path, const char *table)
{
    return kv_attach_served(path, table);
}

char *kvb_attached_registry(const char *path) { return kv_attach_registry_path(path); }

int kvb_attached_locked(const char *reg, const char *table)
{
    return kv_attach_registry_locked(reg, table);
}

int kvb_attached_recover_pending(const char *reg, const char *table)
{
    return kv_attach_recover_pending(reg, table);
}

kv_status kvb_attached_recover(const char *path, const char *table, char *err, size_t errlen)
{
    return kv_attach_recover(path, table, KVB_RECOVER_WAIT_MS, NULL, err, errlen);
}

/* Not here: no errno kept (KV_IO text carries it), no memory-only read
 * besides the hot-value cache, nothing borrowed across get (the value lives
 * in the handle's buffer or the caller's), no callback streaming (kv_py.c spools through a
 * memfd), no io_uring report. */
#define att_os_errno NULL
#define att_get_cached NULL
#define att_get_blocks NULL
#define att_get_done NULL
#define att_put_stream NULL
#define att_get_stream NULL
#define att_stream_used_uring NULL
#define att_set_guard NULL   /* the writer commits; the own connection guards itself */

const kvb_ops kvb_attached = KVB_OPS(att, "attached", 4096, 0);
