/*
 * kvault.h - public API of libkvault, the kohakuvault storage engine.
 *
 * libkvault keeps key-value data in one SQLite file: a table
 * `<table>(key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL)` plus the
 * `kohakuvault_meta` table. Values longer than SQLite's SQLITE_LIMIT_LENGTH
 * (1,000,000,000 bytes in Debian's build) are stored in parts: the main row
 * holds an empty value and `<table>_parts(key BLOB, part INTEGER, data
 * BLOB, PRIMARY KEY(key, part))` holds the bytes in order, in parts of at
 * most 256 MiB; the parts table and three triggers on `<table>` (which
 * delete a key's parts whenever its main row is inserted, updated or
 * deleted, by any writer) are created when the first large value is
 * written. Every call below reads and writes both forms transparently
 * (kv_exists/kv_count/kv_keys_batch see only main rows). The full layout is
 * in docs/storage-layout.md. This header is the whole public contract of the
 * key-value store:
 *
 *   - status codes (kv_status, kv_strerror);
 *   - the database handle kv_db: open/close, errors, checkpoint, optimize;
 *   - key-value calls: kv_get/kv_put/kv_put_many/kv_delete/kv_exists/kv_count,
 *     key listing in batches (kv_keys_batch);
 *   - the write-back cache (kv_cache_*);
 *   - the read cache (kv_open_opts.read_cache_bytes, kv_get_cached);
 *   - streaming of large values between a file descriptor or a callback and
 *     SQLite's incremental BLOB I/O (kv_put_fd, kv_get_to_fd, kv_put_stream,
 *     kv_get_stream).
 * The value codec (auto-pack header, MessagePack/CBOR, vectors) is in
 * codec.h.
 *
 * Who may call what: any C program (the Python extension, the workers,
 * tests) may call every function declared here. Only libkvault calls
 * sqlite3_*; internal helpers shared inside engine/ are in engine/internal.h
 * (kvi_ prefix) and are not part of this contract.
 *
 * Thread safety: a kv_db handle is NOT internally locked. One thread at a
 * time may use a handle (callers such as the Python binding serialise with
 * their own mutex). Different handles, even on the same file, may be used
 * from different threads and processes at once (SQLite WAL locking). Do not
 * use a handle in a child after fork(); open a new one.
 *
 * Memory: the engine allocates with mimalloc; memory it hands out is freed
 * with the matching kv_*_free call named in each function's doc.
 */
#ifndef KVAULT_KVAULT_H
#define KVAULT_KVAULT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Marks a symbol exported from the shared library (hidden by default). */
#define KV_API __attribute__((visibility("default")))

/* ------------------------------------------------------------------------
 * Status codes
 * ---------------------------------------------------------------------- */

/** Result of every fallible libkvault call. KV_OK is 0; the rest are
 *  outcomes (KV_NOTFOUND, KV_BUSY) or failures. */
typedef enum kv_status {
    KV_OK = 0,        /**< success */
    KV_NOTFOUND,      /**< the key (or row) does not exist: an outcome, not a failure */
    KV_BUSY,          /**< SQLite busy/locked after the busy timeout; retry later */
    KV_INVALID,       /**< bad argument: table name, size, closed stream, malformed input */
    KV_IO,            /**< operating-system I/O error (errno kept on the handle) */
    KV_NOMEM,         /**< allocation failed */
    KV_CORRUPT,       /**< malformed stored data: bad header, truncated payload, corrupt db */
    KV_SQLITE,        /**< any other SQLite error (extended code kept on the handle) */
    KV_CLOSED,        /**< the handle was closed */
    KV_UNSUPPORTED,   /**< a value outside the supported model (e.g. msgpack binary/ext) */
    KV_SHORT,         /**< a stream ended before the announced size */
    KV_CALLBACK,      /**< a caller-supplied callback reported failure */
    KV_NOTCACHED,     /**< a cache (the shared segment, a read cache) does not hold
                           the key: an outcome telling the caller to read SQLite;
                           never returned by a call that reads SQLite itself */
    KV_STATUS_COUNT   /**< number of codes (not a status) */
} kv_status;

/** Static English text for a status ("key not found", "database is locked",
 *  ...). Never NULL; unknown values give "unknown status". Thread-safe. */
KV_API const char *kv_strerror(kv_status st);

/* ------------------------------------------------------------------------
 * Database handle
 * ---------------------------------------------------------------------- */

/** Opaque handle: one SQLite connection, its prepared statements, its
 *  write-back cache and its last error. */
typedef struct kv_db kv_db;

/** Options for kv_db_open. Zero-initialise, then call kv_open_opts_default
 *  to get the docs/api.md §4.1 defaults, then change fields. */
typedef struct kv_open_opts {
    const char *table;        /**< table name, `[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes; default "kv" */
    int enable_wal;           /**< nonzero: journal_mode=WAL + wal_autocheckpoint=1000; default 1 */
    int page_size;            /**< bytes, power of two 512..65536, applied only to a new file; default 32768 */
    int64_t mmap_size;        /**< bytes for PRAGMA mmap_size (0 disables); default 268435456 */
    int64_t cache_kb;         /**< KiB for PRAGMA cache_size=-cache_kb; default 100000 */
    int busy_timeout_ms;      /**< SQLite busy timeout, milliseconds; default 5000 */
    size_t chunk_size;        /**< default streaming chunk, bytes; default 1048576 */
    size_t read_cache_bytes;  /**< cap of the process-local read cache, bytes (0 = off);
                                   default 33554432 (32 MiB). Only used in WAL mode on a
                                   file; see kv_get. */
} kv_open_opts;

/** Fill *o with the defaults of docs/api.md §4.1 (table "kv", WAL on, 32 KiB
 *  pages, 256 MiB mmap, 100000 KiB cache, 5000 ms busy timeout, 1 MiB
 *  chunks) and a 32 MiB read cache. Never fails. */
KV_API void kv_open_opts_default(kv_open_opts *o);

/** Open (creating if needed) the database at `path` and the key-value table.
 *
 *  `path` is a file path (parent directories are created, mode 0777 & umask),
 *  ":memory:", or a "file:" URI. Pragmas: page_size (new file only),
 *  journal_mode=WAL and wal_autocheckpoint=1000 (if enable_wal),
 *  synchronous=NORMAL, temp_store=MEMORY, mmap_size, cache_size, busy timeout.
 *  Creates `<table>` and `kohakuvault_meta(key TEXT PRIMARY KEY, value BLOB)`
 *  if missing; writes no meta rows.
 *
 *  On success *out receives a handle owned by the caller (free with
 *  kv_db_close). On failure *out is NULL and, if `err` is non-NULL, a
 *  NUL-terminated message of at most errlen-1 bytes is written there
 *  (e.g. "Invalid table name: a b", or SQLite's text).
 *
 *  Returns KV_OK; KV_INVALID (bad table name or option); KV_BUSY (locked
 *  longer than the busy timeout while setting WAL or creating tables);
 *  KV_IO (cannot create directories / open the file); KV_NOMEM; KV_CORRUPT
 *  (not a database); KV_SQLITE. Thread-safe (touches no shared state). */
KV_API kv_status kv_db_open(const char *path, const kv_open_opts *o, kv_db **out,
                            char *err, size_t errlen);

/** Flush the write-back cache (if locked: write its entries directly; no
 *  entry is ever dropped), run a passive WAL checkpoint (errors ignored),
 *  finalize statements and close the connection, then free the handle.
 *  NULL is a no-op. If the flush fails the handle is still freed and the
 *  flush error is returned (the unwritten entries are then lost, which is
 *  reported, never silent): KV_OK, KV_BUSY, KV_IO, KV_SQLITE, ... */
KV_API kv_status kv_db_close(kv_db *db);

/** Message of the last failure on `db` ("" if none). Valid until the next
 *  call on `db`. Includes SQLite's text where SQLite failed (e.g.
 *  "database is locked"). */
KV_API const char *kv_db_errmsg(const kv_db *db);

/** Extended SQLite result code of the last SQLite failure on `db` (0 if
 *  the last failure was not SQLite's), for diagnostics. */
KV_API int kv_db_sqlite_errcode(const kv_db *db);

/** SQLite's English text for a (extended) result code, e.g. "database or
 *  disk is full" for 13 (sqlite3_errstr). Static storage; any thread. */
KV_API const char *kv_sqlite_errstr(int code);

/** errno of the last OS failure on `db` (0 if none), for diagnostics. */
KV_API int kv_db_os_errno(const kv_db *db);

/** The table name the handle was opened with (owned by the handle). */
KV_API const char *kv_db_table(const kv_db *db);

/** A check run inside the handle's write transactions (kv_db_set_commit_guard):
 *  return nonzero to refuse the commit. Runs with SQLite's write lock held,
 *  on the thread of the call that commits; must not use the handle. */
typedef int (*kv_commit_check_fn)(void *ctx);

/** State of a commit guard, owned by the caller; zero-initialise, then set
 *  `check` and `ctx`. `refused` is set to 1 when a commit was refused (the
 *  transaction is rolled back and the call fails, e.g. with KV_SQLITE); the
 *  caller clears it. `bypass` nonzero lets every commit through unchecked.
 *  The other fields are the guard's own. */
typedef struct kv_commit_guard {
    kv_commit_check_fn check;
    void *ctx;
    int refused;
    int bypass;
    int checked;            /**< data_version below is valid */
    unsigned data_version;  /**< SQLITE_FCNTL_DATA_VERSION at the last check */
    void *conn;             /**< the sqlite3 connection guarded */
} kv_commit_guard;

/** Run g->check in every write transaction of `db` that commits, but only
 *  when another connection committed to the file since the last check
 *  that let a commit through (SQLite's data version of the transaction
 *  differs), or none was run yet: a handle that alone writes the file pays
 *  one SQLite file-control call per commit. `g` (NULL removes the guard)
 *  must outlive the guard. One thread at a time, like every call on `db`. */
KV_API void kv_db_set_commit_guard(kv_db *db, kv_commit_guard *g);

/** Group commit: open a write transaction (BEGIN IMMEDIATE) on the
 *  handle's connection that the next writes of `db` join (kv_put,
 *  kv_put_many, kv_delete, kv_delete_many, kv_record_feature, kv_put_fd,
 *  ...), each in its own savepoint: a write that fails is rolled back alone
 *  and returns its usual status and message, the others stay, and all
 *  become visible at kv_db_tx_end. For a handle without a write-back cache
 *  (the writes must reach SQLite). Drops the read cache. Returns KV_OK,
 *  KV_BUSY (another connection holds the write lock; nothing opened),
 *  KV_IO, KV_SQLITE. Not nestable. One thread at a time. */
KV_API kv_status kv_db_tx_begin(kv_db *db);

/** End kv_db_tx_begin's transaction: commit != 0 commits it (KV_OK, or the
 *  failure after which every write since kv_db_tx_begin is undone),
 *  commit == 0 rolls it back (KV_OK). The handle writes in its own
 *  transactions again afterwards. */
KV_API kv_status kv_db_tx_end(kv_db *db, int commit);

/** PRAGMA wal_checkpoint(PASSIVE). Errors (busy, not WAL) are swallowed:
 *  always returns KV_OK on an open handle. */
KV_API kv_status kv_checkpoint(kv_db *db);

/** PRAGMA optimize; then VACUUM (rebuilds the file; needs free disk space
 *  about the size of the database). Flushes nothing. Returns KV_OK, KV_BUSY,
 *  KV_IO, KV_SQLITE. */
KV_API kv_status kv_optimize(kv_db *db);

/** Append `name` (no commas, 1..64 bytes) to the comma-separated list in
 *  kohakuvault_meta row 'kv_features' unless already present (docs/api.md §4.3),
 *  in one IMMEDIATE transaction. Returns KV_OK, KV_INVALID, KV_BUSY,
 *  KV_SQLITE. */
KV_API kv_status kv_record_feature(kv_db *db, const char *name);

/* ------------------------------------------------------------------------
 * Key-value calls. Keys and values are byte strings (pointer + length in
 * bytes); a NULL pointer with length 0 is the empty string. Keys are bound
 * as BLOBs.
 * ---------------------------------------------------------------------- */

/** Look `key` up: the write-back cache first, then the read cache, then
 *  SQLite.
 *
 *  Read cache: in WAL mode the handle keeps copies of values it read (up to
 *  kv_open_opts.read_cache_bytes; values above 1/8 of that are not kept),
 *  tagged with SQLite's WAL-index header at the time of the read. A copy is
 *  returned only while the header is unchanged, i.e. while no transaction
 *  of any connection or process has committed since (every commit changes
 *  the header); on any change the whole cache is dropped. So kv_get never
 *  returns a value older than the last commit that finished before the
 *  call. Writes through this handle also drop it. The argument is in
 *  engine/readcache.c.
 *
 *  On KV_OK, *val / *vlen describe the stored value. The memory is BORROWED
 *  from the handle (a cache entry, SQLite's row, possibly an mmap'd page, or
 *  for a large value a buffer the handle allocated and reassembled from its
 *  parts): it stays valid only until kv_get_done(db) or the next call of any
 *  kind on `db`; copy it before then. While a row is held, the connection
 *  keeps a read snapshot open, so call kv_get_done promptly. Allocates only
 *  on a read-cache fill (one copy of the value) and for large values (the
 *  whole value: prefer kv_get_to_fd for those).
 *
 *  Returns KV_OK; KV_NOTFOUND (absent; nothing to release); KV_BUSY; KV_IO;
 *  KV_CORRUPT; KV_SQLITE; KV_NOMEM (a large value does not fit in memory);
 *  KV_INVALID (klen too large). */
KV_API kv_status kv_get(kv_db *db, const void *key, size_t klen,
                        const void **val, size_t *vlen);

/** The part of kv_get that never touches SQLite: if `key` is in the
 *  write-back cache, or in the read cache under an unchanged WAL-index
 *  header, lend its value as kv_get does and return 1; otherwise return 0
 *  (which says nothing about whether the key exists: call kv_get). Never
 *  blocks, never allocates, no system call; callers use it to serve hits
 *  without giving up a lock (e.g. Python's GIL). Same threading rule as
 *  kv_get. */
KV_API int kv_get_cached(kv_db *db, const void *key, size_t klen,
                         const void **val, size_t *vlen);

/** Allocator of kv_get_into: return a buffer of at least `n` bytes
 *  (n may be 0) that the caller of kv_get_into owns, or NULL when out of
 *  memory. */
typedef void *(*kv_alloc_fn)(void *ctx, size_t n);

/** The value length from which kv_get_into reads a value straight from
 *  SQLite's pages into the caller's buffer (sqlite3_blob_read) instead of
 *  copying the row SQLite assembled; see docs/performance.md, "Large
 *  values" for the measurements behind it. */
#define KV_GET_DIRECT_MIN ((size_t)32768)

/** Look `key` up as kv_get does (write-back cache, read cache, SQLite) and
 *  copy its value once into memory the caller allocates: `alloc(ctx, n)`
 *  is called exactly once with the value's length n when the key exists,
 *  never when it does not. Values of at least `direct_min` bytes are read
 *  from SQLite with sqlite3_blob_read straight into that buffer, by the
 *  handle's large-value reader when it can: a second, read-only connection
 *  to the file, opened on first use, without memory mapping and with a
 *  2,000 KiB page cache, so that reading many large values once each does
 *  not grow the handle's page cache or fault in its mapping (not used while
 *  the handle's connection has a transaction open, nor for a file that is
 *  not WAL with normal locking). Such values are not kept by the read
 *  cache. Shorter ones are copied from the row. Values stored as parts are
 *  read part by part into the buffer. The length and the bytes come from
 *  one read transaction, so a commit of another connection between the two
 *  (even inside `alloc`) does not mix versions: the value is the one of the
 *  snapshot that gave the length, which starts no earlier than the call.
 *  `alloc` runs with that snapshot open and must not call into `db`.
 *  Nothing is lent: kv_get_done is not needed.
 *
 *  On KV_OK *vlen = n and the buffer holds the value. On any other status
 *  the buffer `alloc` returned, if any, is still the caller's to free and
 *  its contents are undefined. Same threading rule as kv_get.
 *  Returns KV_OK; KV_NOTFOUND; KV_NOMEM (`alloc` returned NULL, or the
 *  value does not fit in memory); KV_BUSY; KV_IO; KV_CORRUPT; KV_SQLITE. */
KV_API kv_status kv_get_into(kv_db *db, const void *key, size_t klen, size_t direct_min,
                             kv_alloc_fn alloc, void *ctx, size_t *vlen);

/** Release what kv_get lent (resets the read statement, ending its
 *  snapshot). Safe to call at any time; idempotent. */
KV_API void kv_get_done(kv_db *db);

/** Upsert key → value. With the write-back cache enabled, follows docs/api.md
 *  §4.7 (may flush; values larger than cap_bytes bypass the cache and are
 *  written directly, also while the cache is locked). Copies both buffers.
 *  A value too long for one SQLite row is written as parts (one
 *  transaction); any older parts of the key are removed in the same
 *  transaction. Drops the read cache.
 *  Returns KV_OK, KV_BUSY, KV_NOMEM, KV_IO, KV_SQLITE, KV_INVALID. */
KV_API kv_status kv_put(kv_db *db, const void *key, size_t klen,
                        const void *val, size_t vlen);

/** One key/value pair for kv_put_many (borrowed pointers, lengths in bytes). */
typedef struct kv_item {
    const void *key;
    size_t klen;
    const void *val;
    size_t vlen;
} kv_item;

/** Upsert `n` items. Without a cache: one IMMEDIATE transaction (all or
 *  nothing). With a cache: each item goes through kv_put's cache rules.
 *  Returns as kv_put. */
KV_API kv_status kv_put_many(kv_db *db, const kv_item *items, size_t n);

/** Delete `key` (and the parts of a large value, in the same statement)
 *  from SQLite and drop a cached entry for it (docs/api.md §4.7).
 *  *removed (may be NULL) is 1 if a stored row or a cached entry was
 *  removed, else 0. Returns KV_OK, KV_BUSY, KV_IO, KV_SQLITE. */
KV_API kv_status kv_delete(kv_db *db, const void *key, size_t klen, int *removed);

/** Delete n keys (keys[i] of klens[i] bytes, borrowed for the call) as
 *  kv_delete does, in one IMMEDIATE transaction (n <= 1: kv_delete). Cached
 *  entries of the keys are dropped once the transaction committed; on a
 *  failure nothing is deleted and no cached entry is dropped. *removed (may
 *  be NULL) = number of listed keys whose row or cached entry was removed (a
 *  key listed twice counts once). Returns as kv_delete, plus KV_NOMEM. */
KV_API kv_status kv_delete_many(kv_db *db, const void *const *keys, const size_t *klens,
                                size_t n, size_t *removed);

/** *found = 1 if `key` has a row in SQLite (the cache is not consulted).
 *  Returns KV_OK, KV_BUSY, KV_IO, KV_SQLITE. */
KV_API kv_status kv_exists(kv_db *db, const void *key, size_t klen, int *found);

/** *count = SELECT COUNT(*) of the table (cache excluded). Returns KV_OK,
 *  KV_BUSY, KV_IO, KV_SQLITE. */
KV_API kv_status kv_count(kv_db *db, int64_t *count);

/** A batch of keys returned by kv_keys_batch: `n` keys packed back to back
 *  in `data`; key i spans data[off[i] .. off[i+1]) (off has n+1 entries).
 *  Allocated by the engine; free with kv_keys_free. */
typedef struct kv_keys {
    size_t n;         /**< number of keys */
    size_t *off;      /**< n+1 byte offsets into data */
    uint8_t *data;    /**< concatenated keys */
} kv_keys;

/** List at most `max` keys in ascending bytewise (BLOB) order, for keyset
 *  pagination:
 *    - if `prefix` is non-NULL: prefix <= key < prefix || 0xFF (docs/api.md §4.5);
 *      if NULL: all keys;
 *    - if `after` is non-NULL: only keys > after (continue after the last
 *      key of the previous batch).
 *  The cache is not consulted. On KV_OK *out owns a new batch (possibly
 *  n == 0); free with kv_keys_free. Returns KV_OK, KV_BUSY, KV_NOMEM,
 *  KV_IO, KV_SQLITE. */
KV_API kv_status kv_keys_batch(kv_db *db, const void *prefix, size_t plen,
                               const void *after, size_t alen, size_t max,
                               kv_keys **out);

/** Free a batch from kv_keys_batch. NULL is a no-op. */
KV_API void kv_keys_free(kv_keys *k);

/* ------------------------------------------------------------------------
 * Write-back cache (docs/api.md §4.7): an in-memory map key → encoded value in
 * front of kv_put. Byte counter adds klen+vlen on every insert (overwrites
 * add again); a flush writes every entry in one IMMEDIATE transaction and
 * empties the map. No write is ever dropped: when a flush is refused (lock
 * flag) a value that does not fit is written directly instead.
 * ---------------------------------------------------------------------- */

/** Enable the cache with `cap_bytes` (> 0) and `flush_threshold` (bytes;
 *  0 = flush only at the cap). An existing cache is flushed first (its
 *  entries are written directly if it is locked), then replaced by an
 *  empty one. Returns KV_OK, KV_INVALID (cap 0), KV_NOMEM, or the flush
 *  status. */
KV_API kv_status kv_cache_enable(kv_db *db, size_t cap_bytes, size_t flush_threshold);

/** Flush (ignoring the lock flag: entries are never dropped) and remove the
 *  cache. No cache: KV_OK. On a failed flush the cache stays (nothing lost)
 *  and the error is returned. */
KV_API kv_status kv_cache_disable(kv_db *db);

/** Write every cached entry in one transaction and empty the cache.
 *  *written (may be NULL) receives the number of entries written: 0 when
 *  there is no cache, it is empty, or the lock flag is set (then nothing
 *  is written and KV_OK is returned). On failure the cache keeps every
 *  entry. Returns KV_OK, KV_BUSY, KV_IO, KV_SQLITE. */
KV_API kv_status kv_cache_flush(kv_db *db, size_t *written);

/** Set (nonzero) or clear the lock flag; while set, kv_cache_flush and the
 *  flushes inside kv_put refuse to write. No-op without a cache. */
KV_API void kv_cache_set_locked(kv_db *db, int locked);

/** 1 if a cache is installed, else 0. */
KV_API int kv_cache_enabled(const kv_db *db);

/** Number of entries and byte counter of the cache (0,0 without one).
 *  Either pointer may be NULL. */
KV_API void kv_cache_stats(const kv_db *db, size_t *entries, size_t *bytes);

/* ------------------------------------------------------------------------
 * Streaming (docs/api.md §4.6): large values move between a file descriptor or
 * a callback and SQLite's incremental BLOB I/O in `chunk` pieces, so memory
 * stays bounded by a few chunks whatever the value size. Values are stored
 * raw (no header), outside the cache and outside any other transaction.
 * The fd variants keep at least two reads (put) or writes (get) in flight
 * with io_uring; if io_uring_queue_init fails, or the environment variable
 * KV_NO_URING=1 is set, they use plain pread/pwrite (or read/write on
 * unseekable fds). A value too long for one row (see the top of this file)
 * is streamed into / out of its parts the same way, in one transaction.
 * ---------------------------------------------------------------------- */

/** Store `size` bytes read from `fd` (starting at its current offset for
 *  seekable fds, which is advanced by size) under `key`, in ONE IMMEDIATE
 *  transaction: upserts a zero-filled blob of that size (or, for a large
 *  value, an empty main value plus zero-filled parts), then fills it in
 *  `chunk`-byte pieces (0 = the handle's default). A process killed midway
 *  leaves the old value (the transaction never committed). Memory: a few
 *  chunk buffers plus an 8 MiB page cache during the stream. The fd stays
 *  owned by the caller. Drops the read cache.
 *  Returns KV_OK; KV_SHORT (EOF before `size` bytes: the value keeps its
 *  zero tail, message "short write: wrote X of Y bytes"); KV_IO; KV_BUSY;
 *  KV_NOMEM; KV_SQLITE. */
KV_API kv_status kv_put_fd(kv_db *db, const void *key, size_t klen, int fd,
                           uint64_t size, size_t chunk);

/** Write the value of `key` to `fd` (at its current offset for seekable
 *  fds, which is advanced) in `chunk`-byte pieces; a cached value is
 *  written in one go. *written receives the byte count. Returns KV_OK,
 *  KV_NOTFOUND, KV_IO, KV_BUSY, KV_NOMEM, KV_SQLITE. */
KV_API kv_status kv_get_to_fd(kv_db *db, const void *key, size_t klen, int fd,
                              size_t chunk, uint64_t *written);

/** Reader callback: fill up to `cap` bytes at `buf`; return the number of
 *  bytes (0 = EOF) or -1 on failure (the call then returns KV_CALLBACK). */
typedef int64_t (*kv_read_fn)(void *ctx, void *buf, size_t cap);

/** Writer callback: consume `len` bytes at `buf` (valid during the call
 *  only); return 0, or -1 on failure (the call returns KV_CALLBACK). */
typedef int (*kv_write_fn)(void *ctx, const void *buf, size_t len);

/** As kv_put_fd, pulling data from `rd` instead of a descriptor (for
 *  sources without a file descriptor). Returns as kv_put_fd plus
 *  KV_CALLBACK. The callback runs on the calling thread. */
KV_API kv_status kv_put_stream(kv_db *db, const void *key, size_t klen,
                               uint64_t size, size_t chunk, kv_read_fn rd, void *ctx);

/** As kv_get_to_fd, pushing data to `wr`. Returns as kv_get_to_fd plus
 *  KV_CALLBACK. */
KV_API kv_status kv_get_stream(kv_db *db, const void *key, size_t klen,
                               size_t chunk, kv_write_fn wr, void *ctx,
                               uint64_t *written);

/** 1 if the last fd stream on `db` used io_uring, 0 if it used plain I/O
 *  (for tests and diagnostics). */
KV_API int kv_stream_used_uring(const kv_db *db);

#ifdef __cplusplus
}
#endif
#endif /* KVAULT_KVAULT_H */
