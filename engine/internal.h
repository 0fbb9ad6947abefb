/*
 * internal.h - helpers shared inside engine/ (kvi_ prefix). Not installed,
 * not part of the public contract.
 *
 * Who may call what:
 *   - any engine .c file may use everything here;
 *   - the other engine modules (DataPacker, columns, text, vectors; owned by
 *     other helpers) may call the "connections", "errors" and "memory"
 *     sections: kvi_conn_open, kvi_table_name_valid, kvi_status_from_sqlite,
 *     kvi_err_*, kvi_malloc & co. They must not touch struct kv_db.
 *   - nothing outside engine/ includes this file (python/ext includes only
 *     the headers in engine/include/kvault; it may include this header solely for the
 *     kvi_err type, never for struct kv_db).
 */
#ifndef KVAULT_INTERNAL_H
#define KVAULT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sqlite3.h>
#include <mimalloc.h>

#include "kvault/kvault.h"
#include "kvault/codec.h"
#include "kv_assert.h"
#include "walsnap.h"

/* ------------------------------------------------------------------------
 * Memory: every engine allocation goes through mimalloc.
 * ---------------------------------------------------------------------- */
#define kvi_malloc(n) mi_malloc(n)
#define kvi_calloc(n, s) mi_calloc((n), (s))
#define kvi_realloc(p, n) mi_realloc((p), (n))
#define kvi_free(p) mi_free(p)
#define kvi_strdup(s) mi_strdup(s)

/* ------------------------------------------------------------------------
 * Errors: the coarse kv_status plus the detail for diagnostics.
 * ---------------------------------------------------------------------- */

/** Last failure of a handle: status, SQLite extended code or errno, text. */
typedef struct kvi_err {
    kv_status st;      /**< status of the last failure (KV_OK if none) */
    int sqlite_rc;     /**< extended SQLite result code, 0 if not SQLite's */
    int os_errno;      /**< errno, 0 if not an OS failure */
    char msg[512];     /**< "op: reason" */
    int nest;          /**< the handle's writes run as savepoints of a
                            transaction its owner opened (kvi_store_tx_begin);
                            kvi_err_clear/kvi_err_set leave it */
} kvi_err;

/** Map an SQLite (extended or primary) result code to kv_status:
 *  OK/ROW/DONE → KV_OK, BUSY/LOCKED → KV_BUSY, NOMEM → KV_NOMEM,
 *  IOERR/CANTOPEN/FULL/READONLY/PERM → KV_IO, CORRUPT/NOTADB → KV_CORRUPT,
 *  TOOBIG/RANGE/MISMATCH → KV_INVALID, else KV_SQLITE. */
kv_status kvi_status_from_sqlite(int rc);

/** Reset *e to "no error". */
void kvi_err_clear(kvi_err *e);
/** Record a failure with a printf-style message; returns st. */
kv_status kvi_err_set(kvi_err *e, kv_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/** Record SQLite failure `rc` of connection `db` (may be NULL) during `op`
 *  (may be NULL): keeps the extended code and SQLite's message
 *  ("op: database is locked"). Returns the mapped status (never KV_OK). */
kv_status kvi_err_sqlite(kvi_err *e, sqlite3 *db, int rc, const char *op);
/** Copy `msg` into the caller's buffer err[0..errlen) of an open call
 *  (truncated, NUL-terminated; nothing when err is NULL or errlen 0). */
void kvi_msg_copy(const char *msg, char *err, size_t errlen);
/* kv_db_set_commit_guard on any of the engine's connections (conn.c): the
 * KV handle's and the text and vector stores'. */
void kvi_commit_guard_install(sqlite3 *db, kv_commit_guard *g);
/** Record OS failure `err` (errno) during `op`; returns KV_IO or KV_NOMEM. */
kv_status kvi_err_os(kvi_err *e, int err, const char *op);

/* ------------------------------------------------------------------------
 * Connections
 * ---------------------------------------------------------------------- */

/* SQLite's wal_autocheckpoint on every connection of the engine (frames). */
#define KVI_AUTOCHECKPOINT_FRAMES 1000

/** Connection options (docs/api.md §4.1 pragmas). */
typedef struct kvi_conn_opts {
    int enable_wal;          /**< nonzero: journal_mode=WAL, wal_autocheckpoint=1000 */
    int page_size;           /**< bytes; applied only if the file is new; 0 = SQLite default */
    int64_t mmap_size;       /**< bytes, PRAGMA mmap_size; negative = leave SQLite's default */
    int64_t cache_kb;        /**< KiB, PRAGMA cache_size=-cache_kb; 0 = leave default */
    int busy_timeout_ms;     /**< busy timeout, ms (5000 per docs/api.md) */
    int nomutex;             /**< nonzero: SQLITE_OPEN_NOMUTEX (caller serialises all use) */
} kvi_conn_opts;

/** Fill *o with docs/api.md defaults (WAL, 32 KiB pages, 256 MiB mmap,
 *  100000 KiB cache, 5000 ms, serialized mode). */
void kvi_conn_opts_default(kvi_conn_opts *o);

/** Open a SQLite connection to `path` with the pragmas of *o: creates the
 *  parent directories of a plain path (not for ":memory:" / "file:" URIs),
 *  opens READWRITE|CREATE|URI, sets busy timeout first, page_size only if
 *  the file did not exist (or was empty), then WAL/autocheckpoint,
 *  synchronous=NORMAL, temp_store=MEMORY, mmap_size, cache_size.
 *  On success *out owns the connection (sqlite3_close_v2 it). On failure
 *  *out is NULL and err (may be NULL) receives a message of at most
 *  errlen-1 bytes. Returns KV_OK, KV_IO, KV_BUSY, KV_CORRUPT, KV_NOMEM,
 *  KV_SQLITE. Thread-safe. */
kv_status kvi_conn_open(const char *path, const kvi_conn_opts *o, sqlite3 **out,
                        char *err, size_t errlen);

/** KV_OK if `name` matches [A-Za-z_][A-Za-z0-9_]* and is 1..128 bytes,
 *  else KV_INVALID. NULL is invalid. */
kv_status kvi_table_name_valid(const char *name);

/** Scalar integer result of `sql` (a PRAGMA, a count): its first column of
 *  the first row, 0 when there is no row or the statement fails. */
static inline int64_t kvi_query_i64(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *s = NULL;
    int64_t r = 0;
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
        r = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return r;
}

/** Run `sql` (one or more statements, no results) on `db`; on failure
 *  records into *e (with op = sql) and returns the mapped status. */
kv_status kvi_exec(sqlite3 *db, const char *sql, kvi_err *e);

/** Prepare `sql` as a persistent statement; records failures into *e. */
kv_status kvi_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out, kvi_err *e);

/** Seconds on CLOCK_MONOTONIC (col_cache.c). Any thread. */
double kvi_now_s(void);

/** Statements of the operation records (oprec.c, kvault/oprec.h) a store
 *  handle keeps (zero-initialised: prepared at first use). */
enum { KVI_OPREC_GET, KVI_OPREC_PUT, KVI_OPREC_DEL, KVI_OPREC_COUNT };
typedef struct kvi_oprec_st {
    sqlite3_stmt *st[KVI_OPREC_COUNT];
    sqlite3_stmt *schema;   /* PRAGMA schema_version */
    int missing_known;      /* kohakuvault_meta was missing at schema version missing_at */
    int64_t missing_at;
} kvi_oprec_st;
/** Finalize them (at the handle's close, before its connection closes). */
void kvi_oprec_finalize(kvi_oprec_st *s);

/* ------------------------------------------------------------------------
 * The kv_db handle (kv.c, cache.c, stream.c only)
 * ---------------------------------------------------------------------- */

/** One cache entry: key bytes then value bytes in `data` (hash first: a
 *  hashslots.h entry). */
typedef struct kvi_centry {
    uint64_t hash;           /**< XXH3 of the key */
    size_t klen;             /**< key bytes */
    size_t vlen;             /**< value bytes */
    uint8_t data[];          /**< klen + vlen bytes */
} kvi_centry;

/** Write-back cache: open-addressing hash table (linear probing, backward
 *  shift deletion) of entry pointers. */
typedef struct kvi_cache {
    void **slots;            /**< nslots kvi_centry pointers, NULL = empty (hashslots.h) */
    size_t nslots;           /**< power of two */
    size_t count;            /**< live entries */
    size_t bytes;            /**< docs/api.md §4.7 counter: sum of klen+vlen per insert */
    size_t cap_bytes;        /**< flush / bypass limit */
    size_t flush_threshold;  /**< flush when bytes >= this after an insert (0 = never) */
    int locked;              /**< nonzero: flushes are refused */
} kvi_cache;

/* ------------------------------------------------------------------------
 * Read cache (readcache.c): process-local cache of values read from SQLite,
 * valid while the WAL-index header is unchanged. See readcache.c for the
 * correctness argument.
 * ---------------------------------------------------------------------- */

typedef struct kvi_rcache kvi_rcache;

/** Set up the read cache of `db` with a cap of `cap_bytes` (0: none).
 *  Only in WAL mode on a real file with normal locking; needs a statement
 *  to have run on the connection (so SQLite has mapped the wal-index).
 *  Any failure leaves db->rcache NULL (cache off); never an error. */
void kvi_rcache_open(kv_db *db, size_t cap_bytes);
/** Free the read cache (NULL is a no-op). Call before closing SQLite. */
void kvi_rcache_close(kvi_rcache *rc);
/** Take a snapshot of the WAL-index header into snap (acquire ordered);
 *  if it differs from the header the cache was filled under, drop every
 *  entry and adopt it. Returns 1 if the snapshot is usable (stable copy,
 *  initialised), 0 if not (then neither look up nor insert). */
int kvi_rcache_begin(kvi_rcache *rc, uint8_t snap[KVI_WALHDR_BYTES]);
/** Look `key` up (after kvi_rcache_begin returned 1). On a hit lends the
 *  value (valid until the next call on the handle) and returns 1. */
int kvi_rcache_find(kvi_rcache *rc, const void *key, size_t klen,
                    const void **val, size_t *vlen);
/** Insert a copy of key → value read from SQLite after `snap` was taken
 *  (snap must come from kvi_rcache_begin of this call). Skipped when the
 *  cache was invalidated since, the value is above the per-entry limit,
 *  or memory is short. Evicts (CLOCK) to stay within the cap. */
void kvi_rcache_insert(kvi_rcache *rc, const uint8_t snap[KVI_WALHDR_BYTES],
                       const void *key, size_t klen, const void *val, size_t vlen);
/** Drop every entry (a write through this handle). NULL is a no-op. */
void kvi_rcache_invalidate(kvi_rcache *rc);
/** Entries / bytes / hits / misses / invalidations, for tests. */
void kvi_rcache_stats(const kvi_rcache *rc, size_t *entries, size_t *bytes,
                      uint64_t *hits, uint64_t *misses, uint64_t *drops);

/* ------------------------------------------------------------------------
 * Large values (large.c): values longer than SQLite's SQLITE_LIMIT_LENGTH
 * are stored as parts in `<table>_parts` (see docs/storage-layout.md).
 * ---------------------------------------------------------------------- */

/** Largest part size in bytes (256 MiB). */
#define KVI_PART_MAX ((uint64_t)256 << 20)

/** 1 if a value of `vlen` bytes under a key of `klen` bytes does not fit in
 *  one row under the connection's current SQLITE_LIMIT_LENGTH. */
int kvi_value_is_large(kv_db *db, size_t klen, uint64_t vlen);
/** Part size, bytes, for a large value under a key of `klen` bytes: the
 *  largest power of two <= KVI_PART_MAX that fits in a row. */
uint64_t kvi_part_size(kv_db *db, size_t klen);
/** Create `<table>_parts` and its triggers if missing (inside the caller's
 *  write transaction) and prepare the part statements. */
kv_status kvi_parts_ensure(kv_db *db);
/** Look up the parts of `key` inside the caller's read (or write)
 *  transaction. On KV_OK *n is the number of parts (0: none, or no parts
 *  table) and db->parts_rowid / db->parts_len hold them in order; *total
 *  is the sum of their lengths. */
kv_status kvi_parts_list(kv_db *db, const void *key, size_t klen, size_t *n,
                         uint64_t *total);
/** Upsert one row key → val of the table with the prepared put statement
 *  (no large-value or read-cache handling: kvi_put_direct does those). */
kv_status kvi_put_row(kv_db *db, const void *key, size_t klen, const void *val, size_t vlen);
/** Store key → val as a large value (main row '' plus parts), inside the
 *  caller's transaction if one is open, else in its own IMMEDIATE one. */
kv_status kvi_put_large(kv_db *db, const void *key, size_t klen,
                        const void *val, size_t vlen);
/** Insert zero-filled part rows for a streamed large value of `size`
 *  bytes (inside the caller's write transaction, after the main row was
 *  upserted) and record their rowids in db->parts_rowid / parts_len.
 *  KV_IO (errno ENOSPC) before writing anything when `size` exceeds the
 *  free space of the database file's file system (physical memory for an
 *  in-memory database). */
kv_status kvi_parts_create_zero(kv_db *db, const void *key, size_t klen,
                                uint64_t size, size_t *n);

struct kv_db {
    sqlite3 *db;                 /**< owned connection (NOMUTEX: the handle is single-threaded) */
    char *table;                 /**< owned copy of the table name */
    char *parts_tbl;             /**< owned "<table>_parts" */
    size_t chunk_size;           /**< default streaming chunk, bytes */
    sqlite3_stmt *st_get;        /**< SELECT value FROM t WHERE key=?1 */
    sqlite3_stmt *st_get_into;   /**< rowid, length(value), value if shorter than ?2 */
    sqlite3_stmt *st_put;        /**< INSERT ... ON CONFLICT(key) DO UPDATE */
    sqlite3_stmt *st_del;        /**< DELETE FROM t WHERE key=?1 */
    sqlite3_stmt *st_exists;     /**< SELECT 1 FROM t WHERE key=?1 */
    sqlite3_stmt *st_count;      /**< SELECT COUNT(*) FROM t */
    sqlite3_stmt *st_rowid;      /**< SELECT rowid FROM t WHERE key=?1 */
    sqlite3_stmt *st_putzero;    /**< upsert of zeroblob(?2) */
    sqlite3_stmt *st_begin;      /**< BEGIN IMMEDIATE */
    sqlite3_stmt *st_commit;     /**< COMMIT */
    sqlite3_stmt *st_rollback;   /**< ROLLBACK */
    sqlite3_stmt *st_parts_exists; /**< SELECT 1 FROM sqlite_master WHERE name='<t>_parts' */
    sqlite3_stmt *st_parts_list; /**< SELECT rowid, length(data) FROM <t>_parts WHERE key=?1 ORDER BY part (lazy) */
    sqlite3_stmt *st_parts_ins;  /**< INSERT INTO <t>_parts VALUES(?1, ?2, ?3) (lazy) */
    sqlite3_stmt *st_parts_zero; /**< INSERT INTO <t>_parts VALUES(?1, ?2, zeroblob(?3)) (lazy) */
    int get_active;              /**< st_get holds a row lent out by kv_get */
    int used_uring;              /**< last fd stream used io_uring */
    kvi_cache *cache;            /**< write-back cache or NULL */
    kvi_rcache *rcache;          /**< read cache or NULL (off) */
    uint8_t *lent;               /**< reassembled large value lent by kv_get, or NULL */
    sqlite3_int64 *parts_rowid;  /**< rowids of the parts of the last kvi_parts_list */
    uint64_t *parts_len;         /**< their lengths, bytes */
    size_t parts_cap;            /**< capacity of both arrays */
    sqlite3 *lr_db;              /**< large-value reader connection (largeread.c), or NULL */
    sqlite3_stmt *lr_get;        /**< its KVI_SQL_GET_INTO statement */
    int lr_state;                /**< 0 not opened yet, 1 open, -1 not available */
    int lr_first;                /**< the last value kv_get_into read from SQLite was large:
                                      the next one asks lr_db first */
    uint64_t lr_reads;           /**< kv_get_into calls lr_db answered */
    int busy_timeout_ms;         /**< kv_open_opts.busy_timeout_ms, for lr_db too */
    kvi_err err;                 /**< last failure */
    kvi_oprec_st oprec;          /**< operation records (oprec.c) */
};

/** The statement of kv_get_into, on the handle's connection and on its
 *  large-value reader (printf format; %s = table): the rowid, the length
 *  and, only when it is shorter than ?2, the value of key ?1.
 *  length(value) reads only the record header (SQLite's OPFLAG_LENGTHARG)
 *  and the CASE loads the value only when it is short, so a longer value's
 *  overflow pages are read once, by sqlite3_blob_read into the caller's
 *  buffer (kvi_row_into). */
#define KVI_SQL_GET_INTO \
    "SELECT rowid, length(value), CASE WHEN length(value) < ?2 THEN value END FROM %s WHERE key=?1"

/** kv_get_into's allocation of an n-byte value: *out = alloc(ctx, n);
 *  KV_NOMEM (recorded in db->err) when it returned NULL. */
kv_status kvi_alloc_value(kv_db *db, kv_alloc_fn alloc, void *ctx, size_t n, uint8_t **out);

/** The value of the row that statement `s` (KVI_SQL_GET_INTO of `table`
 *  on connection `c`, stepped to a row with a length n > 0) points to,
 *  copied once into `alloc(ctx, n)`: from the row when SQLite loaded it,
 *  otherwise with sqlite3_blob_read in the read transaction `s` holds.
 *  Sets *vlen = n and, when `fill` is not NULL and the value came from
 *  the row, *fill = the buffer (for the read cache). KV_OK; KV_NOMEM
 *  (alloc returned NULL); an SQLite failure recorded in db->err. Does not
 *  reset `s`. */
kv_status kvi_row_into(kv_db *db, sqlite3 *c, sqlite3_stmt *s, kv_alloc_fn alloc, void *ctx,
                       size_t *vlen, const uint8_t **fill);

/** kv_get_into of a value found to be at least `direct_min` bytes long,
 *  through the handle's large-value reader connection (largeread.c): a
 *  second connection to the same file, opened on first use, without
 *  memory-mapped I/O and with a small page cache, which looks the key up
 *  again in a read transaction of its own and reads the value once into
 *  `alloc(ctx, n)`. Call it with no statement of the handle's connection
 *  active. Sets *handled = 0 (nothing done, `alloc` not called) when the
 *  handle's connection must read the value: it has a transaction open
 *  (its uncommitted writes are not visible elsewhere), the file is not
 *  shared WAL (":memory:", rollback journal, exclusive locking), the
 *  connection could not be opened, or the key now has an empty value (or
 *  parts). Otherwise *handled = 1 and the status is kv_get_into's. */
kv_status kvi_largeread_get(kv_db *db, const void *key, size_t klen, size_t direct_min,
                            kv_alloc_fn alloc, void *ctx, size_t *vlen, int *handled);

/** Close the large-value reader connection, if open (db_free). */
void kvi_largeread_close(kv_db *db);

/** Reset st_get if kv_get lent a row, free a lent large value. Called at
 *  the start of every call. */
static inline void kvi_get_release(kv_db *db)
{
    KV_ASSERT(db && db->db && db->st_get); /* an open handle */
    KV_ASSERT_INTERNAL(!db->get_active || !db->lent);
    if (db->get_active) {
        sqlite3_reset(db->st_get);
        db->get_active = 0;
    }
    if (db->lent) {
        kvi_free(db->lent);
        db->lent = NULL;
    }
}

/** Upsert one row straight into SQLite (no cache, no transaction). */
kv_status kvi_put_direct(kv_db *db, const void *key, size_t klen,
                         const void *val, size_t vlen);
/** Run BEGIN IMMEDIATE / COMMIT / ROLLBACK with the kept statements. */
kv_status kvi_begin(kv_db *db);
kv_status kvi_commit(kv_db *db);
void kvi_rollback(kv_db *db);

/* cache.c */
/** Find a cached entry (NULL if absent or no cache). */
kvi_centry *kvi_cache_find(kvi_cache *c, const void *key, size_t klen);
/** Remove a cached entry; returns 1 if one was removed. */
int kvi_cache_remove(kvi_cache *c, const void *key, size_t klen);
/** Write all entries in one transaction ignoring the lock flag, then empty
 *  the cache; on failure nothing is removed. *written may be NULL. */
kv_status kvi_cache_flush_force(kv_db *db, size_t *written);
/** Free the cache and all entries (no writes). */
void kvi_cache_destroy(kvi_cache *c);
/** kv_put's cache path (the cache exists). */
kv_status kvi_cache_put(kv_db *db, const void *key, size_t klen,
                        const void *val, size_t vlen);

#endif /* KVAULT_INTERNAL_H */
