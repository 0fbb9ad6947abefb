/*
 * kv_backend.h - the storage behind kohakuvault._kvault._KVault.
 *
 * _KVault (kv_py.c) is written once: argument parsing, auto-pack, the
 * per-object lock, GIL handling, exceptions. What it stores through is a
 * backend, a table of operations over an untyped handle:
 *
 *   kvb_embedded (kv_embedded.c)  libkvault in this process (kv_*): one SQLite
 *                                 connection, the engine's write-back cache and
 *                                 read cache;
 *   kvb_attached (kv_attached.c)  a kvault-writer serving the file (kv_att_*,
 *                                 shm/include/kvshm/attach.h): reads from the
 *                                 shared segment, writes through the ring; the
 *                                 "write-back cache" is the ring itself
 *                                 (docs/shared-mode.md), plus the hot-value
 *                                 cache of kv_hot.h;
 *   kvb_routed (kv_routed.c)      a table of a served file that the writer does
 *                                 not serve through its segment: the embedded
 *                                 backend's reads on an own connection, every
 *                                 write one table operation the writer commits
 *                                 (kv_exec, docs/shared-mode.md, "Every class
 *                                 through the writer").
 *
 * Calling rules, for every operation unless its comment says otherwise:
 *   - the caller holds the object's lock (one call per handle at a time) and
 *     `h` is an open handle (never NULL, never closed);
 *   - the call runs WITHOUT the GIL and touches no Python object;
 *   - it returns KV_OK or a kv_status whose text is then errmsg(h); the
 *     binding turns it into an exception with kvpy_raise_status
 *     (errors_py.c). A "not found" outcome is KV_NOTFOUND; no other status
 *     carries a meaning the binding interprets.
 * A NULL entry means the backend does not have the operation; the comment
 * of each optional entry says what the binding does instead.
 */
#ifndef KV_BACKEND_H
#define KV_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "kvault/kvault.h"

/* ---- Defaults -------------------------------------------------------------
 * Every option of KVault has its default in exactly one place:
 *   - the open options (table, chunk_size, enable_wal, page_size, mmap_size,
 *     cache_kb, read_cache_bytes) in the engine: kv_open_opts_default
 *     (engine/kv.c), used by both backends (kv_attach_opts_default starts
 *     from it too);
 *   - the options of the binding and of the Python package below.
 * kv_py.c publishes both as the dict _kvault.KV_DEFAULTS, which
 * kohakuvault/proxy.py reads for its signatures. */
#define KVB_DEFAULT_RETRIES 4                              /* attempts per busy call */
#define KVB_DEFAULT_BACKOFF_BASE 0.02                      /* seconds, first busy sleep */
#define KVB_DEFAULT_CACHE_CAP_BYTES ((size_t)64 << 20)     /* enable_cache(cap_bytes) */
#define KVB_DEFAULT_CACHE_FLUSH_THRESHOLD ((size_t)16 << 20) /* enable_cache(flush_threshold) */
#define KVB_DEFAULT_KEYS_LIMIT 10000                       /* keys(limit) */

/** Flags of kvb_ops.put / put_many / del_many (the write modes of
 *  docs/shared-mode.md, "Write modes"). 0: return once the write is
 *  applied (every reader of the file sees it). */
#define KVB_PUT_SYNC 1       /**< return once the write is committed to SQLite */
#define KVB_PUT_PIPELINED 2  /**< return once the write is submitted (attached: in
                                  the ring; later reads of the handle wait for it);
                                  the embedded backend applies it before returning */

/** One backend of _KVault. Instances are static and immutable. */
typedef struct kvb_ops {
    const char *name;          /**< "embedded" / "attached" / "routed" (messages) */
    size_t keys_per_batch;     /**< keys per keys_batch call of the key iterator */
    int exists_blocks;         /**< nonzero: exists() may wait (call it with the GIL
                                    released); zero: memory first, kept with the GIL */

    /* ---- life cycle */
    /** Open `path` with options `o` (o->table is the table). `route`: the
     *  object is in "auto" mode (docs/shared-mode.md): attached, a writer
     *  that stops cleanly leaves the handle stopped (see `stopped`) instead
     *  of failing its calls. On KV_OK *out is the new handle, owned by the
     *  caller (close). Otherwise `err` holds a message (prefixed by the
     *  backend as it wants it shown). */
    kv_status (*open)(const char *path, const kv_open_opts *o, int route, void **out,
                      char *err, size_t errlen);
    /** Make everything written durable as the backend defines it (embedded:
     *  flush the write-back cache, checkpoint; attached: wait for the
     *  writer's commit) and free the handle, even on failure. The status of
     *  the flush is returned. */
    kv_status (*close)(void *h);
    /** Text of the last failure ("" if none). May be called with the GIL. */
    const char *(*errmsg)(const void *h);
    /** errno of the last KV_IO failure, or 0. NULL: always 0. */
    int (*os_errno)(const void *h);

    /* ---- reads */
    /** Memory-only read (no system call, no wait), called WITH the GIL:
     *  1 and the value (valid until get_done) when it can answer, else 0.
     *  NULL: there is no such cache; get is called directly. */
    int (*get_cached)(void *h, const void *key, size_t klen, const void **val, size_t *vlen);
    /** Whether the next get may wait (SQLite): it is then called without the
     *  GIL. Called with the GIL. NULL: get never waits long and runs with the
     *  GIL held. */
    int (*get_blocks)(const void *h);
    /** Read `key`: KV_OK with the value (valid until get_done or the next
     *  call), or KV_NOTFOUND. `token` is NULL unless the binding keeps a
     *  hot-value cache; then `key_hash` is kvhot_hash(key) and *token gets the
     *  validation token of the value read (0: do not keep a copy). */
    kv_status (*get)(void *h, const void *key, size_t klen, uint64_t key_hash,
                     const void **val, size_t *vlen, uint64_t *token);
    /** Release what a successful get or get_cached borrowed. NULL: nothing. */
    void (*get_done)(void *h);
    /** Read `key` as get does, copying the value once into the buffer
     *  `alloc(ctx, n)` returns (kv_get_into, kv_att_get_into). `alloc` may
     *  be called more than once (attached: a segment copy that raced the
     *  writer is read again); each call replaces the buffer of the previous
     *  one, and on KV_OK the last one holds exactly the value. Called
     *  without the GIL when get_blocks says so (then `alloc` takes it).
     *  `key_hash` and `token` as for get (*token 0: keep no copy). NULL: the
     *  backend has none; get is used. */
    kv_status (*get_into)(void *h, const void *key, size_t klen, uint64_t key_hash,
                          kv_alloc_fn alloc, void *ctx, size_t *vlen, uint64_t *token);
    /** *found = whether `key` is stored. */
    kv_status (*exists)(void *h, const void *key, size_t klen, int *found);
    /** *n = number of stored keys. */
    kv_status (*count)(void *h, int64_t *n);
    /** Up to `max` keys starting with `prefix`, after `after` (NULL: from
     *  the first), ascending bytewise, into *out (kv_keys_free). */
    kv_status (*keys_batch)(void *h, const void *prefix, size_t plen, const void *after,
                            size_t alen, size_t max, kv_keys **out);

    /* ---- writes */
    /** Upsert key -> value; `flags` KVB_PUT_*. */
    kv_status (*put)(void *h, const void *key, size_t klen, const void *val, size_t vlen,
                     int flags);
    /** Upsert n pairs (borrowed for the call), as one batch: embedded one
     *  transaction (without a write-back cache), attached one submission
     *  and at most one wait. n may be 0: then only waits for earlier writes
     *  as put would. `flags` KVB_PUT_PIPELINED or 0. */
    kv_status (*put_many)(void *h, const kv_item *items, size_t n, int flags);
    /** Delete n keys (keys[i] of klens[i] bytes, borrowed for the call) as
     *  one batch; *removed = number of distinct keys removed (a stored row
     *  or an entry of the write-back cache). `flags` KVB_PUT_PIPELINED or 0. */
    kv_status (*del_many)(void *h, const void *const *keys, const size_t *klens, size_t n,
                          int flags, size_t *removed);
    /** Return once every write made so far through `h` is applied
     *  (embedded: the write-back cache flushed, unless it is locked). */
    kv_status (*flush)(void *h);

    /* ---- streaming (raw values, no header) */
    /** Store `size` bytes read from `fd` (from its current offset). */
    kv_status (*put_fd)(void *h, const void *key, size_t klen, int fd, uint64_t size,
                        size_t chunk);
    /** Write key's stored bytes to `fd`; *written = bytes written. */
    kv_status (*get_to_fd)(void *h, const void *key, size_t klen, int fd, size_t chunk,
                           uint64_t *written);
    /** Store `size` bytes pulled from `rd`, called WITH the GIL (the callback
     *  runs Python code). NULL: the binding spools the reader into a memfd
     *  and calls put_fd. */
    kv_status (*put_stream)(void *h, const void *key, size_t klen, uint64_t size, size_t chunk,
                            kv_read_fn rd, void *ctx);
    /** Push key's stored bytes into `wr`, called WITH the GIL. NULL: the
     *  binding spools get_to_fd into a memfd and feeds the writer from it. */
    kv_status (*get_stream)(void *h, const void *key, size_t klen, size_t chunk,
                            kv_write_fn wr, void *ctx, uint64_t *written);
    /** Whether the last fd stream used io_uring (diagnostics). NULL: 0. */
    int (*stream_used_uring)(const void *h);

    /* ---- write-back cache (embedded: the engine's; attached: batching in
     * the ring, flush = wait until the writer committed) */
    kv_status (*cache_enable)(void *h, size_t cap_bytes, size_t flush_threshold);
    kv_status (*cache_disable)(void *h);
    /** *written = entries written (0 while locked). */
    kv_status (*cache_flush)(void *h, size_t *written);
    /** Called with the GIL (no wait). */
    void (*cache_set_locked)(void *h, int locked);
    /** Called with the GIL (no wait). */
    int (*cache_enabled)(const void *h);
    /** Return once every write made so far is committed to SQLite. */
    kv_status (*sync)(void *h);

    /* ---- maintenance */
    kv_status (*checkpoint)(void *h);
    kv_status (*optimize)(void *h);
    kv_status (*record_feature)(void *h, const char *name);
    /** The writer's STATUS text (`name=value` lines) into buf. NULL: the
     *  method raises RuntimeError (KV_UNSUPPORTED). */
    kv_status (*status)(void *h, char *buf, size_t cap);
    /** Segment hits and misses of the handle's reads, with the GIL. NULL:
     *  counters() raises RuntimeError (KV_UNSUPPORTED). */
    void (*counters)(const void *h, uint64_t *hits, uint64_t *misses);
    /** Writer generation, with the GIL. NULL: the `generation` attribute is None. */
    uint64_t (*generation)(const void *h);

    /* ---- "auto" mode: following the writer (docs/shared-mode.md) */
    /** Guard every commit of the handle with `g` (kv_db_set_commit_guard;
     *  NULL removes it). NULL entry: the backend does not commit itself. */
    void (*set_guard)(void *h, kv_commit_guard *g);
    /** 1 when the writer stopped cleanly and the handle committed what it
     *  had queued, 2 when it died and the handle also replayed it
     *  (kv_att_stopped): the object continues embedded ("spawn" mode: on 2
     *  it starts a new writer first). NULL: 0. */
    int (*stopped)(const void *h);

    /* ---- hot-value cache (kv_hot.h) */
    /** A hot-value cache over the handle bounded by `limit` bytes, owned by
     *  the caller (kvhot_free), called WITH the GIL. NULL with MemoryError
     *  set on failure. NULL entry: the backend has none. */
    struct kvhot *(*hot_new)(void *h, size_t limit);
} kvb_ops;

/** The whole table of a backend whose functions are named <p>_open,
 *  <p>_close, ... (one per entry); a backend without an
 *  optional entry defines that name as NULL. */
#define KVB_OPS(p, name_, keys_per_batch_, exists_blocks_)                                   \
    {                                                                                         \
        .name = name_, .keys_per_batch = keys_per_batch_, .exists_blocks = exists_blocks_,    \
        .open = p##_open, .close = p##_close, .errmsg = p##_errmsg, .os_errno = p##_os_errno, \
        .get_cached = p##_get_cached, .get_blocks = p##_get_blocks, .get = p##_get,           \
        .get_done = p##_get_done, .get_into = p##_get_into, .exists = p##_exists, .count = p##_count,                   \
        .keys_batch = p##_keys_batch, .put = p##_put, .put_many = p##_put_many,               \
        .del_many = p##_del_many, .flush = p##_flush, .put_fd = p##_put_fd,                   \
        .get_to_fd = p##_get_to_fd,                                                           \
        .put_stream = p##_put_stream, .get_stream = p##_get_stream,                           \
        .stream_used_uring = p##_stream_used_uring, .cache_enable = p##_cache_enable,         \
        .cache_disable = p##_cache_disable, .cache_flush = p##_cache_flush,                   \
        .cache_set_locked = p##_cache_set_locked, .cache_enabled = p##_cache_enabled,         \
        .sync = p##_sync, .checkpoint = p##_checkpoint, .optimize = p##_optimize,             \
        .record_feature = p##_record_feature, .status = p##_status,                           \
        .counters = p##_counters, .generation = p##_generation, .hot_new = p##_hot_new,       \
        .set_guard = p##_set_guard, .stopped = p##_stopped,                                   \
    }

extern const kvb_ops kvb_embedded;   /**< kv_embedded.c */
extern const kvb_ops kvb_attached;   /**< kv_attached.c */
extern const kvb_ops kvb_routed;     /**< kv_routed.c */

typedef struct kv_exec kv_exec;
/** A probe of whether a writer serves the file at `path` (for any table;
 *  kv_exec_open, never connected), or NULL when the path has no registry
 *  (":memory:", a missing file) or memory ran out. Free with
 *  kvb_routed_probe_free. */
kv_exec *kvb_routed_probe(const char *path);
/** 1 if a writer serves the probe's file now, ready, for any table
 *  (kv_exec_served: one open, fcntl and pread); 0 for a NULL probe. Any
 *  thread, no GIL needed. */
int kvb_routed_served(const kv_exec *probe);
void kvb_routed_probe_free(kv_exec *probe);

/** 1 if a kvault-writer serves `path` for `table` (kv_attach_served). */
int kvb_attached_served(const char *path, const char *table);
/** Registry path of `path` (malloc'd) or NULL (kv_attach_registry_path). */
char *kvb_attached_registry(const char *path);
/** 1 if a writer holds the registry `reg` for `table`, ready or starting
 *  (kv_attach_registry_locked). Any thread, no GIL needed. */
int kvb_attached_locked(const char *reg, const char *table);
/** How long kvb_attached_recover waits for another process replaying the
 *  same dead writer (or a busy file) before it returns KV_BUSY, ms. */
#define KVB_RECOVER_WAIT_MS 10000
/** 1 if a dead writer's records of `table` are not replayed yet, or being
 *  replayed (kv_attach_recover_pending). Any thread, no GIL needed. */
int kvb_attached_recover_pending(const char *reg, const char *table);
/** Replay a dead writer's records of `table` into `path` before an
 *  embedded write (kv_attach_recover, waiting up to KVB_RECOVER_WAIT_MS).
 *  Blocks: call without the GIL. */
kv_status kvb_attached_recover(const char *path, const char *table, char *err, size_t errlen);
/** Start a writer for `path` and `table` as KVault(shared="spawn") does
 *  (kohakuvault.proxy._spawn_writer: exactly one among racing processes;
 *  kv_py.c). Takes the GIL (PyGILState_Ensure: with or without it held).
 *  1 when a writer serves the file afterwards, else 0 (an exception raised
 *  by the spawn is cleared; none is tried while the interpreter exits). */
int kvb_spawn_writer(const char *path, const char *table);

#endif /* KV_BACKEND_H */
