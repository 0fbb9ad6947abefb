/*
 * kvshm/kvshm.h -- kohakuvault's shared segment: the public C API.
 *
 * One writer process builds everything in the data segment; any number of
 * processes attach read-only and look keys up without locks or system calls
 * (docs/shared-mode.md, "How it works"). This header is the contract used by the
 * writer process (workers/) and by attach (python/, kv_attach):
 *
 *   writer:  kvshm_writer_create / _put / _freeze / _frozen_scan(_from) / _fold /
 *            _cache_load / _cache_evict / _publish_seq / _maintain / _idle_wait /
 *            _requests / _destroy
 *            figures and walks: _shards / _size_bytes / _generation /
 *            _shard_stats / _cache_scan; a dead writer's segment:
 *            kvshm_recover_scan / _close, kvshm_replay_segment
 *   readers: kvshm_reader_attach / _get / _next / _enter / _leave / _detach
 *
 * The byte layout behind these calls (shm/layout.h, shm/structs.h) is
 * private to shm/: no consumer reads a header field, a shard table or a
 * record itself. The submission ring is kvshm/ring.h; the registry text and
 * the ring's record formats are kvshm/proto.h.
 *
 * Process rules. "Writer only" functions may be called only by the process
 * that created the segment, from one thread at a time. "Any reader" functions
 * may be called by any process holding a kvshm_reader, one thread per reader
 * handle at a time (take one handle per thread). A handle survives fork():
 * the child's first call through an inherited handle takes a new slot for the
 * child (the parent's slot stays the parent's).
 *
 * Memory ordering, in one paragraph. The writer fills new records, nodes and
 * view records with plain stores and publishes each shard's view with a
 * release store (kvshm_shard.s_view); a reader acquire-loads the view, so
 * everything the writer wrote before the publication is visible to it.
 * Memtable records become visible the same way, through release-stored skip
 * list links. A reader enters an epoch with one relaxed load of the global
 * epoch and one plain store into its own slot (no read-modify-write and no
 * fence: the writer issues membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) before
 * it scans the slots, which orders every registered reader's slot store
 * against its later loads -- the asymmetric fence of userspace RCU). Memory
 * retired at epoch e is reused only when no slot shows an epoch <= e.
 *
 * Status codes: kvshm_status below (this library is independent of libkvault
 * and of SQLite; attach maps these to kv_status).
 *
 * Environment (diagnostics and tests only):
 *   KVSHM_READER_FENCE  readers fence after their epoch store instead of
 *                       relying on the writer's membarrier
 *   KVSHM_POISON        the writer fills every freed block with 0xdb, so a
 *                       block reused while still reachable shows at once
 */
#ifndef KVSHM_KVSHM_H
#define KVSHM_KVSHM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Longest key the segment stores, in bytes (keys are 1..KVSHM_MAX_KEY). */
#define KVSHM_MAX_KEY 4096u

/* A process's mapping of the data segment. Opaque here: its layout and the
 * bounds-checked accessors are private to shm/ (shm/layout.h). */
typedef struct kvshm_seg kvshm_seg;

/* ---- status codes ------------------------------------------------------- */
typedef enum kvshm_status {
    KVSHM_OK = 0,          /* success */
    KVSHM_NOTFOUND = 1,    /* outcome: key not cached (read SQLite, report a miss) */
    KVSHM_DELETED = 2,     /* outcome: a tombstone is newest: the key is deleted */
    KVSHM_EMPTY = 3,       /* outcome: ring has no record / iteration is done */
    KVSHM_TIMEOUT = 4,     /* outcome: a wait ran out of time */
    KVSHM_E_INVAL = -1,    /* bad argument (key length 0 or > KVSHM_MAX_KEY, ...) */
    KVSHM_E_NOMEM = -2,    /* process-local allocation failed */
    KVSHM_E_FULL = -3,     /* no room: shard region, memtable arena or ring */
    KVSHM_E_BUSY = -4,     /* writer: a frozen memtable is still pending */
    KVSHM_E_SMALLBUF = -5, /* caller's buffer too small; the needed size is returned */
    KVSHM_E_SYS = -6,      /* a system call failed; errno is kept in the handle */
    KVSHM_E_EXISTS = -7,   /* a shared-memory object with that name exists */
    KVSHM_E_NOENT = -8,    /* no shared-memory object with that name */
    KVSHM_E_MAGIC = -9,    /* attach: not a kvshm region (magic mismatch) */
    KVSHM_E_LAYOUT = -10,  /* attach: built with another layout (layout hash) */
    KVSHM_E_SIZE = -11,    /* attach: object size disagrees with its header */
    KVSHM_E_GENERATION = -12, /* attach: slot file and segment from different writers */
    KVSHM_E_NOTREADY = -13,/* attach: the writer has not finished creating it */
    KVSHM_E_NOSLOT = -14,  /* attach: every slot is taken */
    KVSHM_E_EVICTED = -15, /* read section invalidated by the writer: retry */
    KVSHM_E_CORRUPT = -16, /* bounds or checksum check failed (not an eviction) */
    KVSHM_E_STALE = -17    /* the writer closed this segment: re-attach */
} kvshm_status;

/* One line per status; never NULL; static storage. Any process. */
const char *kvshm_strerror(kvshm_status st);

/* Copy-out target for a value: the caller's buffer and what was found.
 * With `alloc` set, the read asks it for the buffer instead: once the
 * record is found and its length n known (inside the read section, before
 * the copy), `alloc(alloc_ctx, n)` is called when buf is NULL or cap != n,
 * and buf/cap become its result and n. A read that is retried (the writer
 * evicted the reader while it copied, so the copy may be torn) may call it
 * again, with another length when the key changed meanwhile: each call
 * replaces the buffer of the previous one, which stays the caller's to
 * release or reuse. On KVSHM_OK buf holds exactly len bytes. `alloc`
 * returning NULL ends the read with KVSHM_E_NOMEM. It runs inside the
 * read section: it must be short and must not call into the reader. */
typedef struct kvshm_val {
    void    *buf;   /* caller's buffer (may be NULL when cap is 0) */
    size_t   cap;   /* its capacity in bytes */
    size_t   len;   /* out: value length in bytes (also on KVSHM_E_SMALLBUF) */
    uint64_t seq;   /* out: sequence number of the version returned */
    void  *(*alloc)(void *ctx, size_t n); /* NULL: copy into buf, KVSHM_E_SMALLBUF if short */
    void    *alloc_ctx;                   /* first argument of alloc */
} kvshm_val;

/* ---- writer -------------------------------------------------------------- */

typedef struct kvshm_config {
    const char *seg_name;       /* shm_open name of the data segment, "/..." */
    const char *slot_name;      /* shm_open name of the slot file, "/..." */
    uint64_t size_bytes;        /* data segment size; reserved with posix_fallocate */
    uint32_t shards;            /* 1..KVSHM_MAX_SHARDS; key -> xxh3(key) % shards */
    uint32_t nslots;            /* reader slots (processes attached at once) */
    uint64_t memtable_bytes;    /* arena size of one memtable */
    uint64_t retire_limit_bytes;/* retired-but-pinned memory per shard above which
                                   the writer evicts the reader pinning it; capped
                                   at a quarter of a shard's region (at least
                                   1.5 memtables) */
    uint64_t generation;        /* writer incarnation; bump on every restart */
    int group_access;           /* nonzero: both objects get mode 0660 and group `gid`
                                   (kvault-writer --group); 0: mode 0600, the creator's
                                   own group */
    uint32_t gid;               /* the group of group_access */
} kvshm_config;
#define KVSHM_MAX_SHARDS 256u

/* Fills cfg with defaults: 256 MiB segment, 4 shards, 128 slots, 4 MiB
 * memtables, 16 MiB retire limit, generation 1. Names are left NULL. */
void kvshm_config_default(kvshm_config *cfg);

typedef struct kvshm_writer kvshm_writer;

/*
 * kvshm_writer_create: create the data segment and the slot file (O_EXCL;
 * mode 0600, or 0660 and group cfg->gid with cfg->group_access), reserve
 * both with posix_fallocate, lay out the header and shards, give each shard
 * an empty active memtable and an empty tree, and publish state READY with a
 * release store. Writer only (the calling process becomes the writer).
 * *out is freed by kvshm_writer_destroy.
 * Returns KVSHM_OK; KVSHM_E_INVAL (bad config: names, shards, sizes too small
 * for the shard regions); KVSHM_E_EXISTS (a name is taken -- unlink a stale
 * one with kvshm_unlink first); KVSHM_E_FULL (posix_fallocate: /dev/shm has no
 * room); KVSHM_E_SYS (also when the group cannot be given: fchown EPERM for a
 * caller outside that group); KVSHM_E_NOMEM.
 */
kvshm_status kvshm_writer_create(const kvshm_config *cfg, kvshm_writer **out);

/*
 * kvshm_writer_destroy: mark the segment CLOSED (release store; readers then
 * get KVSHM_E_STALE), unmap, and if unlink is nonzero shm_unlink both names.
 * Writer only. Frees w.
 */
void kvshm_writer_destroy(kvshm_writer *w, int unlink_names);

/* Unlink a segment and slot file by name (stale objects after a crash).
 * Either name may be NULL. Any process with the rights. */
void kvshm_unlink(const char *seg_name, const char *slot_name);

/* The shard a key belongs to: xxh3_64(key) % shards. Any process. */
uint32_t kvshm_shard_of(const void *key, size_t klen, uint32_t shards);

/* xxh3_64 of the key (the hash behind shards and stripes). Any process. */
uint64_t kvshm_key_hash(const void *key, size_t klen);


/*
 * kvshm_writer_put: append (key, value, seq, tombstone) to the active
 * memtable of the key's shard. Visible to every reader as soon as it returns
 * (the skip-list links are release-stored). seq must grow across calls for
 * the same key. For a tombstone pass val = NULL, vlen = 0. Writer only.
 * Returns KVSHM_OK; KVSHM_E_INVAL (klen 0 or > KVSHM_MAX_KEY);
 * KVSHM_E_FULL (the active memtable has no room: freeze, commit, fold, retry).
 */
kvshm_status kvshm_writer_put(kvshm_writer *w, const void *key, size_t klen,
                              const void *val, size_t vlen, uint64_t seq,
                              int tombstone);

/*
 * kvshm_writer_freeze: make the shard's active memtable the frozen one and
 * give the shard a new empty active memtable; publishes a new view (release).
 * Writer only. Returns KVSHM_OK; KVSHM_E_BUSY (a frozen memtable is still
 * pending: commit and fold it first); KVSHM_E_FULL (no room for a new arena).
 */
kvshm_status kvshm_writer_freeze(kvshm_writer *w, uint32_t shard);

/* Does the shard have a frozen memtable waiting to be committed/folded? */
int kvshm_writer_has_frozen(const kvshm_writer *w, uint32_t shard);

/*
 * Visitor for records: key/val point into the segment and stay valid until
 * the writer's next kvshm_writer_fold or _maintain. Return nonzero to stop.
 */
typedef int (*kvshm_rec_fn)(void *ctx, const void *key, size_t klen,
                            const void *val, size_t vlen, uint64_t seq,
                            int tombstone);

/*
 * kvshm_writer_frozen_scan: visit the newest version of every key in the
 * shard's frozen memtable in key order (what the writer commits to SQLite).
 * Writer only. Returns KVSHM_OK (also when there is no frozen memtable);
 * KVSHM_E_CORRUPT.
 */
kvshm_status kvshm_writer_frozen_scan(kvshm_writer *w, uint32_t shard,
                                      kvshm_rec_fn fn, void *ctx);

/*
 * Position of a resumable walk of a shard's frozen memtable (see
 * kvshm_writer_frozen_scan_from). The fields are the walk's own: start from
 * KVSHM_SCAN_CURSOR_INIT (or a zeroed struct) and pass it back unchanged.
 */
typedef struct kvshm_scan_cursor {
    uint64_t mt;      /* the frozen memtable walked (0: not started) */
    uint32_t next;    /* arena offset of the next node (0: walk finished) */
    uint32_t prev;    /* node of the last key visited (0: none yet) */
} kvshm_scan_cursor;
#define KVSHM_SCAN_CURSOR_INIT {0, 0, 0}

/*
 * kvshm_writer_frozen_scan_from: kvshm_writer_frozen_scan in bounded steps
 * (the writer commits a frozen memtable a few hundred records at a time and
 * applies new records to the active memtable between the steps). From the
 * position in *cur, visit at most max_records keys -- the newest version of
 * each, in key order -- and advance *cur past them. Across the calls of one
 * walk every key of the frozen memtable is visited exactly once, whatever
 * the step sizes; puts meanwhile go to the active memtable and are not seen.
 * When fn returns nonzero the step stops before that record, which the next
 * call visits again. The walk belongs to the frozen memtable it started on:
 * start a new one (KVSHM_SCAN_CURSOR_INIT) for a new frozen memtable.
 * Writer only. Returns KVSHM_OK (keys left: call again); KVSHM_EMPTY (the walk
 * is finished, also when the shard has no frozen memtable); KVSHM_E_INVAL
 * (shard out of range, max_records 0, or *cur belongs to another frozen
 * memtable);
 * KVSHM_E_CORRUPT.
 */
kvshm_status kvshm_writer_frozen_scan_from(kvshm_writer *w, uint32_t shard,
                                           kvshm_scan_cursor *cur, size_t max_records,
                                           kvshm_rec_fn fn, void *ctx);

/*
 * kvshm_writer_fold: fold the frozen memtable (already committed to SQLite)
 * into the shard's CSB+tree as one copy-on-write batch -- puts become cached
 * values (values above max_value_bytes are dropped from the cache instead),
 * tombstones delete -- then publish the view (new tree, no frozen memtable)
 * with one release store and retire the old memtable, nodes and replaced
 * values at the current epoch. Writer only. Returns KVSHM_OK (no-op without a
 * frozen memtable); KVSHM_E_FULL (region full: evict, then retry -- nothing
 * was changed); KVSHM_E_NOMEM.
 */
kvshm_status kvshm_writer_fold(kvshm_writer *w, uint32_t shard,
                               size_t max_value_bytes);

/* A clean value to cache (from SQLite after a reported miss). */
typedef struct kvshm_kv {
    const void *key; size_t klen;
    const void *val; size_t vlen;
    uint64_t seq;                  /* committed sequence it was read at */
} kvshm_kv;

/*
 * kvshm_writer_cache_load: insert clean values into the CSB+trees (one
 * copy-on-write batch per shard touched; the array need not be sorted and
 * may mix shards; a later duplicate of a key wins). A key that has a version
 * in the shard's active or frozen memtable is skipped (the memtable is
 * newer). Publishes each touched shard's view with a release store.
 * Writer only. Returns KVSHM_OK; KVSHM_E_INVAL; KVSHM_E_FULL (a shard ran out
 * of room; shards processed before it are published, that shard unchanged);
 * KVSHM_E_NOMEM.
 */
kvshm_status kvshm_writer_cache_load(kvshm_writer *w, const kvshm_kv *kvs, size_t n);

/*
 * kvshm_writer_cached: 1 if the key has a version in its shard's active or
 * frozen memtable or a value in its CSB+tree (what a reader would find
 * without reading SQLite), else 0 (also for a key of length 0 or above
 * KVSHM_MAX_KEY). No system call, nothing changed: the writer uses it to
 * skip loading a reported miss that is cached already. Writer only.
 */
int kvshm_writer_cached(kvshm_writer *w, const void *key, size_t klen);

/*
 * kvshm_writer_cache_evict: drop keys from the CSB+trees (cache eviction; the
 * data stays in SQLite). Missing keys are ignored. Same batching, publication
 * and statuses as kvshm_writer_cache_load. Writer only.
 */
kvshm_status kvshm_writer_cache_evict(kvshm_writer *w, const void *const *keys,
                                      const size_t *klens, size_t n);

/* Commit fault: the writer cannot commit (a full disk, an I/O error), so
 * clients whose writes need room in a full memtable would wait for as long
 * as it lasts. status (a kv_status, nonzero) and the SQLite extended result
 * code are published for clients to report (kvshm_reader_fault); status 0
 * clears the fault once a commit succeeds. Writer only. */
void kvshm_writer_set_fault(kvshm_writer *w, uint32_t status, int64_t sqlite_code);

/* Write refusal: a writer that is a follower in a cluster (workers/cluster.c)
 * takes no writes of its own; clients check the refusal before they publish
 * a write and fail it with msg (e.g. "not the leader; leader is
 * 2@10.0.0.2:7001"; cut to KVSHM_REFUSE_MSG_MAX - 1 bytes). msg NULL lifts
 * the refusal. Writer only; readers see it through kvshm_reader_refusal. */
#define KVSHM_REFUSE_MSG_MAX 120
void kvshm_writer_set_refusal(kvshm_writer *w, const char *msg);

/* Publish the applied / committed sequence numbers (release stores; readers
 * acquire-load them with kvshm_reader_seqs). 0 leaves a value unchanged.
 * Writer only. */
void kvshm_writer_publish_seq(kvshm_writer *w, uint64_t applied, uint64_t committed);

/* What kvshm_writer_maintain did and how the segment stands. */
typedef struct kvshm_maint {
    uint64_t epoch;          /* global epoch after the pass */
    uint64_t min_live_epoch; /* oldest epoch a live reader holds (epoch if none) */
    uint32_t reaped;         /* dead owners' slots cleared in this pass */
    uint32_t evicted;        /* stalled readers evicted in this pass */
    uint64_t reclaimed_bytes;/* retired bytes made reusable in this pass */
    uint64_t used_bytes;     /* all shards: allocated block bytes (live + retired) */
    uint64_t retired_bytes;  /* all shards: retired, not yet reclaimed */
    uint32_t live_slots;     /* slots with an owner */
} kvshm_maint;

/*
 * kvshm_writer_maintain: one reclamation pass. Advances the global epoch
 * (release store), clears the slots of dead owners (an F_OFD_SETLK probe on
 * each owned slot succeeds only when the owner's lock is gone), issues
 * membarrier(GLOBAL_EXPEDITED) (or a seq_cst fence when unavailable), reads
 * every slot's epoch (acquire), and reclaims memory retired before the oldest
 * live epoch. If a shard's retired bytes still exceed retire_limit_bytes, the
 * readers holding the oldest epochs are evicted (their slot generation is
 * bumped with a release store after a new epoch is published) and reclamation
 * is retried. out may be NULL. Writer only.
 * Returns KVSHM_OK; KVSHM_E_SYS (a lock probe failed unexpectedly).
 */
kvshm_status kvshm_writer_maintain(kvshm_writer *w, kvshm_maint *out);

/*
 * kvshm_writer_idle_wait: the writer's wait for work. has_work(ctx, final)
 * returns nonzero when there is work (a client ring has data, a request
 * came in); it is polled while spinning (final = 0: must be cheap, a few
 * loads, no system call) and called once more (final = 1: may make a system
 * call, e.g. a zero-timeout poll of the socket) after the writer published
 * that it sleeps, so nothing published before a client's doorbell check is
 * missed. Spins first (adaptive budget up to 200 us, only if the clients
 * spinning now leave a usable CPU free; sh_writer_spinning is 1 meanwhile),
 * then sleeps on the doorbell up to timeout_ms (< 0: no limit; 0: checks
 * once). Returns KVSHM_OK (work, or woken: check again) or KVSHM_TIMEOUT.
 * Writer only, its loop thread.
 */
kvshm_status kvshm_writer_idle_wait(kvshm_writer *w, int (*has_work)(void *ctx, int final),
                                    void *ctx, int timeout_ms);
/* Count of requests clients have sent on the writer's socket
 * (kvshm_reader_flag_request bumps it after each send; acquire load). The
 * writer polls its socket only when the count moved since its last poll
 * (or when a millisecond has passed: accepts and hang-ups are not counted),
 * so a loop pass costs no system call. Wraps around. Writer only. */
uint32_t kvshm_writer_requests(const kvshm_writer *w);

/* The writer's mapping, for shm/'s white-box tests (the struct is private
 * to shm/). Writer only. */
const kvshm_seg *kvshm_writer_seg(const kvshm_writer *w);

/* ---- writer: figures and walks ---------------------------------------------
 * What the writer process needs to know about the segment besides the
 * operations above; it never reads the layout itself. */

/* Shard count of the segment (kvshm_config.shards). Writer only. */
uint32_t kvshm_writer_shards(const kvshm_writer *w);
/* Mapped size of the data segment in bytes (kvshm_config.size_bytes).
 * Writer only. */
uint64_t kvshm_writer_size_bytes(const kvshm_writer *w);
/* Writer incarnation stored in the segment (kvshm_config.generation).
 * Writer only. */
uint64_t kvshm_writer_generation(const kvshm_writer *w);

/* Figures of one shard (or their sums over all shards), in bytes and keys. */
typedef struct kvshm_shard_stats {
    uint64_t region_bytes;  /* bytes of the shard's block region */
    uint64_t used_bytes;    /* block bytes allocated, live + retired */
    uint64_t retired_bytes; /* retired and not yet reclaimed */
    uint64_t tree_keys;     /* keys cached in the published CSB+tree */
    uint64_t mt_keys;       /* records in the active + frozen memtables */
} kvshm_shard_stats;
#define KVSHM_ALL_SHARDS UINT32_MAX

/* Live bytes (used - retired) above which a shard is under pressure: the
 * writer evicts there. 3/4 of the region. */
static inline uint64_t kvshm_evict_mark(const kvshm_shard_stats *st)
{
    return st->region_bytes / 4 * 3;
}

/* The free-room rule of large miss loads: 1 if a value taking `bytes` of
 * the region (kvshm_cached_bytes), with `pending` such bytes already read
 * for the shard and not loaded yet, keeps the shard's live bytes at or below
 * 5/8 of the region, else 0. The 1/8 of the region between that mark and
 * kvshm_evict_mark is left to writes and small misses: large loads that
 * went up to the eviction mark would have the next put start an eviction
 * of a sample of every cached key (the loaded values among them, which
 * readers would then report and the writer load again). The writer applies
 * it before loading; readers apply it (kvshm_reader_miss_wanted) before
 * reporting, with pending 0. */
static inline int kvshm_large_fits(const kvshm_shard_stats *st, uint64_t pending, uint64_t bytes)
{
    return st->used_bytes - st->retired_bytes + pending + bytes <= st->region_bytes / 8 * 5;
}

/*
 * kvshm_cached_bytes: the bytes of its shard's region a cached value of a
 * klen-byte key and vlen bytes takes: its record (header, key, value)
 * rounded up to the record's size-classed block (at most 25% more), the
 * amount the shard's used bytes grow by when it is loaded. 0 for a key of
 * length 0 or above KVSHM_MAX_KEY, or a value too large for any block.
 * Pure; any process.
 */
uint64_t kvshm_cached_bytes(size_t klen, size_t vlen);

/* Which reported misses the writer loads (kvshm_writer_set_miss_policy);
 * every segment starts at KVSHM_MISS_LARGE_FREE. */
#define KVSHM_MISS_LARGE_FREE 0u  /* large values only into free room (kvshm_large_fits) */
#define KVSHM_MISS_ALL        1u  /* every value, evicting as needed */

/*
 * kvshm_writer_set_miss_policy: publish the writer's miss policy
 * (KVSHM_MISS_*) in every shard record, where readers look it up
 * (kvshm_reader_miss_wanted). Writer only. Returns KVSHM_OK, KVSHM_E_INVAL
 * (unknown policy).
 */
kvshm_status kvshm_writer_set_miss_policy(kvshm_writer *w, uint32_t policy);

/*
 * kvshm_writer_shard_stats: fill *out with the figures of `shard`
 * (0..kvshm_writer_shards - 1), or with their sums over every shard when
 * shard is KVSHM_ALL_SHARDS. A snapshot of the counters the writer keeps in
 * the shard table (the same numbers attached processes may read). Writer
 * only. Returns KVSHM_OK, KVSHM_E_INVAL (shard out of range; *out zeroed).
 */
kvshm_status kvshm_writer_shard_stats(const kvshm_writer *w, uint32_t shard,
                                      kvshm_shard_stats *out);

/*
 * kvshm_writer_cache_scan: visit every key cached in the shard's published
 * CSB+tree, in key order (val/vlen: its cached value; seq: the sequence it
 * was cached at; tombstone always 0). key and val point into the segment and
 * stay valid until the writer's next kvshm_writer_fold, _cache_load,
 * _cache_evict or _maintain, so a visitor may collect keys to pass to
 * kvshm_writer_cache_evict. The visitor must not call back into the writer.
 * Writer only. Returns KVSHM_OK (also for an empty cache), KVSHM_E_INVAL
 * (shard out of range), KVSHM_E_CORRUPT (a bounds check failed).
 */
kvshm_status kvshm_writer_cache_scan(kvshm_writer *w, uint32_t shard,
                                     kvshm_rec_fn fn, void *ctx);

/* ---- recovery: a previous writer's segment ---------------------------------- */

/*
 * kvshm_recover_scan: map the data segment `seg_name` of a writer that did
 * not stop cleanly (read-write, not populated) and visit every record of
 * each shard's published frozen and active memtables, in append order per
 * memtable, whose checksum verifies (a torn last append ends that
 * memtable's walk). The records are what that writer applied; which of them
 * are committed is for the caller to tell (by sequence number). key and val
 * are valid only during the call of fn; return nonzero from fn to stop.
 * Unmaps before returning. Called by a new writer before it creates its own
 * segment. Returns KVSHM_OK; KVSHM_E_NOENT (no such segment: nothing to
 * replay); KVSHM_E_MAGIC, KVSHM_E_LAYOUT or KVSHM_E_SIZE (not a segment of
 * this layout: not replayed); KVSHM_E_CORRUPT (its shard table is out of
 * bounds); KVSHM_E_SYS.
 */
kvshm_status kvshm_recover_scan(const char *seg_name, kvshm_rec_fn fn, void *ctx);

/*
 * kvshm_recover_close: mark the data segment `seg_name` CLOSED (release
 * store), so processes still mapping it see KVSHM_E_STALE and re-attach.
 * Call it once its records are committed elsewhere, before unlinking its
 * names (kvshm_unlink). Returns KVSHM_OK, KVSHM_E_NOENT, KVSHM_E_MAGIC,
 * KVSHM_E_LAYOUT, KVSHM_E_SIZE, KVSHM_E_SYS.
 */
kvshm_status kvshm_recover_close(const char *seg_name);

struct kv_batch;

/*
 * kvshm_replay_segment: commit the applied records of a dead writer's data
 * segment `seg_name` through `b` (a kv_batch on the segment's database and
 * table, with no batch open): every record kvshm_recover_scan visits whose
 * sequence is above `committed` (kv_batch_last_seq of `b`), the newest per
 * key, in one batch stored with the largest sequence, so a second replay
 * changes nothing; then kvshm_recover_close. The caller holds the
 * database's registry lock (one replay at a time) and unlinks the names
 * afterwards. *replayed = keys written, *top = the largest sequence
 * (`committed` when none). Returns KVSHM_OK; KVSHM_E_NOENT (no such
 * segment: nothing to replay); KVSHM_E_LAYOUT (not a segment of this
 * layout: not replayed); KVSHM_E_CORRUPT; KVSHM_E_NOMEM; KVSHM_E_SYS (the
 * batch failed: kv_batch_errmsg(b); nothing was committed).
 */
kvshm_status kvshm_replay_segment(const char *seg_name, struct kv_batch *b, uint64_t committed,
                                  uint64_t *replayed, uint64_t *top);

/* ---- readers ------------------------------------------------------------- */

typedef struct kvshm_reader kvshm_reader;

/*
 * kvshm_reader_attach: map the data segment read-only (MAP_POPULATE: the
 * whole segment is faulted in once here, so lookups never page-fault) and the
 * slot file read-write, check magic, layout hash, size and generation,
 * register for membarrier, and claim a free slot (F_OFD_SETLK on its byte).
 * A reader does not notice by itself that a writer was killed (the segment
 * stays READY): attach code must watch the writer (registry lock, socket).
 * Any process
 * (including the writer, for tests). *out is freed by kvshm_reader_detach.
 * Returns KVSHM_OK; KVSHM_E_NOENT; KVSHM_E_MAGIC; KVSHM_E_LAYOUT; KVSHM_E_SIZE;
 * KVSHM_E_GENERATION; KVSHM_E_NOTREADY; KVSHM_E_STALE (writer closed it);
 * KVSHM_E_NOSLOT; KVSHM_E_SYS; KVSHM_E_NOMEM.
 */
kvshm_status kvshm_reader_attach(const char *seg_name, const char *slot_name,
                                 kvshm_reader **out);

/* Release the slot (clears its epoch, closes the locked descriptor) and unmap.
 * Any reader; the handle's owner (in a forked child, the child's own slot). */
void kvshm_reader_detach(kvshm_reader *r);

/*
 * kvshm_reader_stamp: the seqlock stamp of the stripe of the key whose
 * kvshm_key_hash is key_hash (shm/layout.h, "Key-stripe stamps"), for a reader
 * that keeps its own copy of the key's value. Any attached reader; no epoch
 * needed (the stripes live in the header, never reclaimed).
 *
 * Call it with after_read = 0 before a lookup (acquire load) and with
 * after_read = 1 after it (acquire fence first, so the lookup's loads are
 * ordered before it). A copy made by that lookup is current when both calls
 * return the same EVEN value, and stays current while later calls return
 * it. Returns an odd value (never usable) while a write to the stripe is
 * being applied or when the segment is no longer KVSHM_STATE_READY (its
 * writer exited or was replaced: re-attach). Stamps restart at 0 in every
 * segment: a copy must be dropped when the reader re-attaches.
 */
uint64_t kvshm_reader_stamp(const kvshm_reader *r, uint64_t key_hash, int after_read);

/*
 * kvshm_reader_get: the read path for one key. Enter epoch -> acquire-load
 * the shard's view -> active memtable -> frozen memtable -> CSB+tree -> copy
 * the value into out->buf -> verify its checksum -> leave epoch -> re-check the
 * slot generation (retrying the whole lookup if the writer evicted us).
 * The value returned is at least as new as every version published before the
 * call began. Any reader. Wait-free except for eviction retries.
 * Returns KVSHM_OK (out->len, out->seq set); KVSHM_NOTFOUND (not cached: read
 * SQLite); KVSHM_DELETED (a newer tombstone: the key does not exist);
 * KVSHM_E_SMALLBUF (out->len is the size needed; call again);
 * KVSHM_E_INVAL; KVSHM_E_STALE (writer gone: re-attach); KVSHM_E_CORRUPT;
 * KVSHM_E_NOMEM (out->alloc returned NULL). With out->alloc set the value
 * is copied once, into the buffer alloc returns (kvshm_val), and a copy
 * torn by a reclaim is caught as any other: by the checksum over the copy
 * and the slot generation check, and read again.
 */
kvshm_status kvshm_reader_get(kvshm_reader *r, const void *key, size_t klen,
                              kvshm_val *out);

/*
 * kvshm_reader_miss_wanted: whether the writer would load a large value
 * (one it applies the free-room rule to) of vlen bytes for key, read from
 * SQLite after a miss, if the reader reported it now: 1 when the writer's
 * policy is KVSHM_MISS_ALL or the value fits the free room of the key's
 * shard (kvshm_large_fits of kvshm_cached_bytes on the shard's published
 * figures), else 0. The reader counts what it answered 1 for as pending
 * until the shard's live bytes grow by as much, or for at most 200 ms, so a
 * burst of misses faster than the writer's loads is not all reported into
 * the same free room. A hint read with relaxed loads from the shard table:
 * no section, no system call; the writer applies the rule again when it
 * loads. Any reader (it updates the handle's own counts).
 */
int kvshm_reader_miss_wanted(kvshm_reader *r, const void *key, size_t klen, uint64_t vlen);

/*
 * kvshm_reader_get_many: kvshm_reader_get for n keys, with the CSB+tree
 * descents of up to KVSHM_FIND_GROUP (16) keys at a time interleaved: each
 * round takes one level of every key's search and prefetches its next node
 * or record, so the keys' cache and TLB misses overlap instead of following
 * one another (group prefetching; see kvshm_tree_find_many). Memtable
 * lookups run key by key. keys[i] / klens[i] (caller's memory) is looked up
 * into outs[i] exactly as kvshm_reader_get fills *out, and sts[i] gets that
 * key's status: KVSHM_OK, KVSHM_NOTFOUND, KVSHM_DELETED, KVSHM_E_SMALLBUF,
 * KVSHM_E_INVAL (bad key: the others are still looked up), KVSHM_E_CORRUPT.
 * Each group of 16 is one epoch section (retried whole if the writer
 * evicted us), so every value is at least as new as every version published
 * before the call began. Inside an explicit section, the section is reused
 * and an eviction returns KVSHM_E_EVICTED. Any reader. Returns KVSHM_OK
 * (statuses in sts), KVSHM_E_INVAL (NULL arrays with n > 0), KVSHM_E_STALE
 * (writer gone: re-attach; sts of later keys unset), KVSHM_E_EVICTED.
 */
kvshm_status kvshm_reader_get_many(kvshm_reader *r, size_t n, const void *const *keys,
                                   const size_t *klens, kvshm_val *outs, kvshm_status *sts);

/*
 * kvshm_reader_next: ordered iteration, one step, stateless: find the
 * smallest key that starts with prefix[0..plen) and is greater than
 * after[0..alen) (alen 0 = from the start of the prefix), across all shards
 * and all three structures, newest version wins, deleted keys skipped. The
 * key is copied into key->buf (len = key length) and, if val is not NULL, the
 * value into val. Each step is its own epoch section, so an iteration never
 * pins memory between steps; it sees every key present for its whole
 * duration, and keys added or deleted meanwhile may or may not appear.
 * Any reader. Returns KVSHM_OK; KVSHM_EMPTY (no further key);
 * KVSHM_E_SMALLBUF (key->len / val->len say what is needed); KVSHM_E_INVAL;
 * KVSHM_E_STALE; KVSHM_E_CORRUPT.
 * Note: keys present only in SQLite are not seen; attach merges them.
 */
kvshm_status kvshm_reader_next(kvshm_reader *r, const void *prefix, size_t plen,
                               const void *after, size_t alen,
                               kvshm_val *key, kvshm_val *val);

/*
 * Explicit read sections (for a batch of lookups under one epoch, and for
 * tests). kvshm_reader_enter publishes the epoch (one store); between enter
 * and leave, kvshm_reader_get and _next reuse the section instead of opening
 * their own, and report KVSHM_E_EVICTED instead of retrying. kvshm_reader_leave
 * clears the epoch (release store) and returns KVSHM_E_EVICTED if the writer
 * evicted the reader during the section -- every result obtained inside it
 * must then be discarded and the work redone -- else KVSHM_OK.
 * Any reader. Sections do not nest.
 */
kvshm_status kvshm_reader_enter(kvshm_reader *r);
kvshm_status kvshm_reader_leave(kvshm_reader *r);

/* The writer's commit fault (kvshm_writer_set_fault): its kv_status, 0 when
 * commits succeed; *sqlite_code (may be NULL) gets the SQLite extended result
 * code. Any reader. */
uint32_t kvshm_reader_fault(const kvshm_reader *r, int64_t *sqlite_code);

/* The writer's write refusal (kvshm_writer_set_refusal): 1 with its message
 * copied into msg (cap bytes, NUL-terminated; cap >= 1) while writes are
 * refused, else 0. A consistent copy (seqlock read; 0 when the writer died
 * in the middle of a change and left it inconsistent). Any reader. */
int kvshm_reader_refusal(const kvshm_reader *r, char *msg, size_t cap);

/* Applied and committed sequence numbers as last published (acquire loads).
 * Either pointer may be NULL. Any reader. */
void kvshm_reader_seqs(const kvshm_reader *r, uint64_t *applied, uint64_t *committed);

/* Wake the writer after publishing records in a submission ring, if it
 * sleeps: seq_cst fence, then one load of its sleeping flag; only when it
 * is set, fetch_add + FUTEX_WAKE on the doorbell. A writer that is awake
 * finds the records itself (kvshm_writer_idle_wait). Any reader. */
void kvshm_reader_ring_doorbell(kvshm_reader *r);

/* After sending a request on the writer's socket: bump the slot file's
 * request count (seq_cst fetch_add; kvshm_writer_requests) and ring the
 * doorbell, so the writer polls its socket on its next pass. Any reader. */
void kvshm_reader_flag_request(kvshm_reader *r);

/* The request bell of a process that sends socket requests without being
 * attached to the segment (KVSHM_MSG_EXEC clients, kvshm/attach.h
 * kv_exec_*): the slot file's header only, no slot taken.
 * kvshm_bell_open maps the header of slot file `slot_name` read-write and
 * checks its magic, layout and `generation`: KVSHM_OK (*out owned: close
 * with kvshm_bell_close), KVSHM_E_NOENT, KVSHM_E_SIZE, KVSHM_E_MAGIC,
 * KVSHM_E_LAYOUT, KVSHM_E_GENERATION, KVSHM_E_SYS, KVSHM_E_NOMEM.
 * kvshm_bell_request does what kvshm_reader_flag_request does. One thread
 * at a time per bell; a forked child opens its own. */
typedef struct kvshm_bell kvshm_bell;
kvshm_status kvshm_bell_open(const char *slot_name, uint64_t generation, kvshm_bell **out);
void kvshm_bell_request(kvshm_bell *b);
void kvshm_bell_close(kvshm_bell *b);

/* This handle's slot index and the segment generation; errno of the last
 * KVSHM_E_SYS. Any reader. */
uint32_t kvshm_reader_slot(const kvshm_reader *r);
uint64_t kvshm_reader_generation(const kvshm_reader *r);
int kvshm_reader_errno(const kvshm_reader *r);
const kvshm_seg *kvshm_reader_seg(const kvshm_reader *r);

#ifdef __cplusplus
}
#endif
#endif /* KVSHM_KVSHM_H */
