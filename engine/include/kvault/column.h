/*
 * column.h - typed columns stored in chunked SQLite BLOBs (docs/api.md §6).
 *
 * A column vault (kv_colvault) is one SQLite connection on a kohakuvault
 * file plus the `col_meta`/`col_chunks` tables of docs/api.md §6.2. A column
 * handle (kv_col) addresses either
 *   - one fixed-size physical column: element i lives at logical byte
 *     i * elem_size, stored in chunk (i * elem_size) / M at offset
 *     (i * elem_size) % M, M = the column's aligned max_chunk_bytes; or
 *   - a variable-size pair `<n>_data` (packed bytes, elem_size 1) and
 *     `<n>_idx` (a fixed column of 12-byte entries
 *     [chunk_idx i32le][start i32le][end i32le]).
 * Elements cross this API as packed bytes (the DataPacker encoding, see
 * packer.h); the engine never interprets them.
 *
 * Every mutating call is one SQLite transaction (BEGIN IMMEDIATE ...
 * COMMIT): on failure nothing is changed. Appends never rewrite a whole
 * column: they write into the last chunk (growing it by doubling up to M)
 * and add new chunks.
 *
 * Threads: a vault serialises all calls on it and on its columns with one
 * mutex; any thread may call any function. Several vaults (in one or many
 * processes) may open one file; SQLite WAL arbitrates, busy waits up to
 * 5000 ms, then KV_BUSY.
 *
 * Lifetime: close every kv_col of a vault before kv_colvault_close.
 */
#ifndef KVAULT_COLUMN_H
#define KVAULT_COLUMN_H

#include <stddef.h>
#include <stdint.h>

#include "kvault/kvault.h"
#include "kvault/codec.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Opaque vault handle: one connection, prepared statements, a mutex. */
typedef struct kv_colvault kv_colvault;
/** Opaque column handle (fixed column or variable-size pair) + its cache. */
typedef struct kv_col kv_col;

/** Defaults of ColumnVault (docs/api.md §6.1), bytes. */
#define KV_COL_MIN_CHUNK_DEFAULT 131072
#define KV_COL_MAX_CHUNK_DEFAULT 16777216
/** elem_size of a variable-size column's `_idx` row; its dtype string. */
#define KV_COL_IDX_ELEM 12
#define KV_COL_IDX_DTYPE "adaptive_idx"

/** One `col_meta` row. */
typedef struct kv_col_info {
    int64_t ci_col_id;        /**< col_meta.col_id */
    int64_t ci_elem_size;     /**< bytes per element (1 for _data, 12 for _idx) */
    int64_t ci_length;        /**< stored element count (excludes any cache) */
    int64_t ci_chunk_bytes;   /**< col_meta.chunk_bytes (aligned min) */
    int64_t ci_min_chunk;     /**< aligned min_chunk_bytes */
    int64_t ci_max_chunk;     /**< aligned max_chunk_bytes: the addressing unit M */
    char ci_dtype[512];       /**< dtype string verbatim (truncated past 511 bytes) */
} kv_col_info;

/* ------------------------------------------------------------------------
 * Vault
 * ---------------------------------------------------------------------- */

/**
 * Open the vault on `path` (a file path, ":memory:" or a "file:" URI) with
 * journal_mode=WAL, wal_autocheckpoint=1000, synchronous=NORMAL, busy
 * timeout 5000 ms; create kohakuvault_meta, col_meta, col_meta_name_idx and
 * col_chunks if missing and insert schema_version='2' if absent.
 *
 * @param min_chunk_bytes, max_chunk_bytes  chunk bounds (bytes) recorded for
 *        columns created through this handle; both > 0.
 * @param out  receives the handle; free with kv_colvault_close.
 * @param err  errlen bytes for a message on failure (may be NULL).
 * @return KV_OK; KV_INVALID (bad sizes); KV_IO (cannot open, e.g. missing
 *         parent directory: parents are not created); KV_BUSY; KV_CORRUPT;
 *         KV_NOMEM; KV_SQLITE.
 */
KV_API kv_status kv_colvault_open(const char *path, int64_t min_chunk_bytes,
                                  int64_t max_chunk_bytes, kv_colvault **out, char *err,
                                  size_t errlen);

/** Close the connection and free the handle. All its kv_col must be closed
 *  first (their caches flushed by kv_col_close). NULL is a no-op. */
KV_API void kv_colvault_close(kv_colvault *cv);

/** Text of the last failure on this vault or any of its columns (""). Owned
 *  by the vault, valid until its next call. */
KV_API const char *kv_colvault_errmsg(kv_colvault *cv);

/** PRAGMA wal_checkpoint(PASSIVE); errors are ignored. Always KV_OK. */
KV_API kv_status kv_colvault_checkpoint(kv_colvault *cv);

/** Called after a commit of a vault's connection that leaves `wal_frames`
 *  frames in the WAL, at least SQLite's wal_autocheckpoint (1000), with
 *  SQLite's write lock already released; runs on the committing thread,
 *  under the vault's mutex (it must not call into the vault). */
typedef void (*kv_colvault_ckpt_fn)(void *ctx, int wal_frames);

/** Hand the vault's checkpoints to its owner: after each commit that leaves
 *  at least 1000 frames in the WAL, fn(ctx, frames) runs instead of the
 *  PASSIVE checkpoint SQLite's wal_autocheckpoint would run inside that
 *  commit (sqlite3_wal_hook replaces it). The owner checkpoints the file
 *  on a connection of its own, so the copy of the WAL into the database
 *  file and its fsyncs are not on the committing caller's time; it also
 *  keeps the WAL bounded (by waiting for a checkpoint when fn sees too many
 *  frames). fn NULL: SQLite's automatic checkpoint again. Under the vault's
 *  mutex; `ctx` must outlive the setting. */
KV_API void kv_colvault_set_checkpointer(kv_colvault *cv, kv_colvault_ckpt_fn fn, void *ctx);

/**
 * Create one physical column row (docs/api.md §6.2): dtype verbatim, elem_size,
 * length 0, min/max aligned to elem_size when elem_size > 1 (min up, max
 * down), chunk_bytes = aligned min.
 * @param col_id  receives the new col_id (may be NULL).
 * @return KV_OK; KV_INVALID ("Cannot align chunk sizes ..." when the aligned
 *         min exceeds the aligned max, or elem_size < 1); KV_SQLITE with
 *         "UNIQUE constraint failed: col_meta.name" for a duplicate; KV_BUSY.
 */
KV_API kv_status kv_col_create(kv_colvault *cv, const char *name, const char *dtype,
                               int64_t elem_size, int64_t *col_id);

/**
 * Create a variable-size column: rows `<name>_data` (dtype, elem_size 1) and
 * `<name>_idx` ("adaptive_idx", elem_size 12) in one transaction.
 * @return as kv_col_create.
 */
KV_API kv_status kv_col_create_var(kv_colvault *cv, const char *name, const char *dtype,
                                   int64_t *data_id, int64_t *idx_id);

/** Fetch the `col_meta` row named `name` into *out.
 *  @return KV_OK, KV_NOTFOUND, KV_BUSY, KV_SQLITE. */
KV_API kv_status kv_col_info_get(kv_colvault *cv, const char *name, kv_col_info *out);

/** Callback of kv_col_list: one row; strings borrowed for the call only.
 *  Return 0 to continue, nonzero to stop (kv_col_list returns KV_CALLBACK). */
typedef int (*kv_col_list_fn)(void *ctx, const char *name, const char *dtype, int64_t length);

/** Call `fn` for each `col_meta` row ordered by col_id. */
KV_API kv_status kv_col_list(kv_colvault *cv, kv_col_list_fn fn, void *ctx);

/** *n = number of `col_meta` rows. */
KV_API kv_status kv_col_count(kv_colvault *cv, int64_t *n);

/**
 * Delete the column `name` and its chunks. If no row has that exact name
 * but `<name>_data` and `<name>_idx` exist, both are deleted (docs/api.md §6.1).
 * *deleted = 1 when something was removed, else 0.
 * Open kv_col handles of a deleted column must not be used afterwards.
 */
KV_API kv_status kv_col_delete(kv_colvault *cv, const char *name, int *deleted);

/* ------------------------------------------------------------------------
 * Column handles
 * ---------------------------------------------------------------------- */

/** Open a handle on the fixed column `col_id`. Free with kv_col_close.
 *  @return KV_OK, KV_NOTFOUND, KV_NOMEM, KV_SQLITE. */
KV_API kv_status kv_col_open_fixed(kv_colvault *cv, int64_t col_id, kv_col **out);

/** Open a handle on the variable-size pair (data_id, idx_id). */
KV_API kv_status kv_col_open_var(kv_colvault *cv, int64_t data_id, int64_t idx_id, kv_col **out);

/** Flush the cache (errors ignored: use kv_col_cache_flush first to see
 *  them), free the handle. NULL is a no-op. */
KV_API void kv_col_close(kv_col *col);

/** 1 for a variable-size pair, 0 for a fixed column. */
KV_API int kv_col_is_var(const kv_col *col);

/** Bytes per element of a fixed column (0 for variable-size). */
KV_API int64_t kv_col_elem_size(const kv_col *col);

/** *n = stored element count + elements waiting in the cache. */
KV_API kv_status kv_col_len(kv_col *col, int64_t *n);

/**
 * Append `n` packed elements.
 * Fixed: `data` holds n * elem_size bytes, `lens` is ignored (may be NULL).
 * Variable: `data` holds the elements back to back, lens[i] bytes each.
 * With the cache enabled the bytes are copied into it (flushing first when
 * they would exceed cap_bytes, and afterwards when flush_threshold is
 * reached); otherwise one transaction writes them. The caller keeps
 * ownership of `data`/`lens`.
 * Bulk writes (>= 16 MiB in one transaction) also preallocate the blocks the
 * WAL and database file will receive (fallocate, file sizes unchanged), set
 * the connection's page cache to 2 MiB for the call, and run one helper
 * thread that starts asynchronous writeback of both files
 * (sync_file_range); the thread is joined and the cache restored before
 * the call returns. Durability is that of any commit (the same fdatasyncs).
 * @return KV_OK; KV_INVALID (element above 2 GiB in a var column); KV_BUSY;
 *         KV_NOMEM; KV_SQLITE. On failure the stored column is unchanged.
 */
KV_API kv_status kv_col_append(kv_col *col, const void *data, const size_t *lens, size_t n);

/**
 * Read elements [start, start+count) of a fixed column into `out`
 * (count * elem_size bytes, caller-owned). Flushes the cache first.
 * @return KV_OK; KV_INVALID when the range exceeds the length or the
 *         column is variable-size; KV_CORRUPT (a chunk is missing); KV_BUSY.
 */
KV_API kv_status kv_col_read_fixed(kv_col *col, int64_t start, int64_t count, void *out);

/**
 * Non-blocking variants for callers that hold a lock of their own (the
 * Python binding keeps the GIL for them): answer only from the vault's
 * read cache, never calling SQLite and never waiting for the vault mutex.
 * *hit = 1 when answered; *hit = 0 (nothing written, KV_OK) when the mutex
 * is taken, the cache is off or cold, something committed since it was
 * filled, or appends wait in the write-back cache (a read must flush them
 * first); the caller then uses kv_col_len / kv_col_read_fixed.
 *
 * The read cache (per vault, process-local): stored lengths and 32 KiB
 * blocks of chunk bytes (16 MiB at most per vault, reads above 256 KiB
 * bypass it), valid while SQLite's WAL-index header is unchanged, i.e.
 * while no connection in any process has committed; kv_col_len and
 * kv_col_read_fixed use it too. Off when the file is not in WAL mode.
 * @return kv_col_read_fixed_try: KV_OK; KV_INVALID for a variable-size
 *         column, a negative argument, or (with *hit = 1) a range beyond
 *         the length.
 */
KV_API kv_status kv_col_len_try(kv_col *col, int64_t *n, int *hit);
KV_API kv_status kv_col_read_fixed_try(kv_col *col, int64_t start, int64_t count, void *out,
                                       int *hit);

/** Read-cache counters of the vault: answers served without SQLite
 *  (hits), 32 KiB blocks read from SQLite (misses), epoch changes after a
 *  commit was seen (drops); *enabled = 1 when the WAL-index header is
 *  reachable. Any pointer may be NULL. Thread-safe. */
KV_API void kv_colvault_read_cache_stats(kv_colvault *cv, uint64_t *hits, uint64_t *misses,
                                         uint64_t *drops, int *enabled);

/**
 * Read elements [start, start+count) of a variable-size column: their
 * bytes are appended back to back to `data`, and offs[0..count] (caller
 * array of count+1 entries) receive byte offsets relative to data->len at
 * entry, so element i is [offs[i], offs[i+1]). Flushes the cache first.
 * @return as kv_col_read_fixed.
 */
KV_API kv_status kv_col_read_var(kv_col *col, int64_t start, int64_t count, kv_buf *data,
                                 uint64_t *offs);

/**
 * Overwrite elements [start, start+n) in place (one transaction).
 * Fixed: data holds n * elem_size bytes. Variable: lens[i] bytes each; an
 * element that fits its old slot is rewritten there (shrink), one at the
 * tail of its chunk grows in place when capacity allows, else its bytes
 * are appended and its index entry moved (the old bytes become garbage).
 * Flushes the cache first.
 * @return KV_OK; KV_INVALID (range beyond the length); KV_BUSY; KV_SQLITE.
 */
KV_API kv_status kv_col_write(kv_col *col, int64_t start, const void *data, const size_t *lens,
                              size_t n);

/** Insert one element (elem_size bytes) before index `idx` (0 <= idx <= len)
 *  of a fixed column, shifting later elements up. Flushes first.
 *  @return KV_OK; KV_INVALID (bad index); KV_UNSUPPORTED for a variable-size
 *  column; KV_BUSY; KV_SQLITE. */
KV_API kv_status kv_col_insert(kv_col *col, int64_t idx, const void *elem);

/** Remove element `idx` (0 <= idx < len), shifting later ones down; for a
 *  fixed column the freed last slot is zeroed, for a variable-size column
 *  only the index entry goes (its bytes stay as garbage). Flushes first.
 *  @return KV_OK; KV_INVALID (bad index); KV_BUSY; KV_SQLITE. */
KV_API kv_status kv_col_delete_at(kv_col *col, int64_t idx);

/** Set the length to 0 (chunks are kept and reused). Flushes first. */
KV_API kv_status kv_col_clear(kv_col *col);

/* ------------------------------------------------------------------------
 * Write-back cache (docs/api.md §6.7)
 * ---------------------------------------------------------------------- */

/** Enable (or re-configure) the append cache: `cap_bytes` bounds the
 *  buffer, reaching `flush_threshold` bytes flushes it. A cache that is
 *  already on is flushed before being re-configured (docs/api.md §6.7).
 *  @return KV_OK, or the status of that flush. */
KV_API kv_status kv_col_cache_enable(kv_col *col, size_t cap_bytes, size_t flush_threshold);

/** Flush and remove the cache (no-op when off). */
KV_API kv_status kv_col_cache_disable(kv_col *col);

/** Write the cached appends in one transaction; *flushed (may be NULL) =
 *  bytes written (0 when off or empty). On failure the cache is kept. */
KV_API kv_status kv_col_cache_flush(kv_col *col, size_t *flushed);

/** 1 when the cache is enabled. */
KV_API int kv_col_cache_enabled(kv_col *col);

/** Seconds since the last cached append (or since enabling); 0 when off. */
KV_API double kv_col_cache_idle_s(kv_col *col);

/** Elements waiting in the cache (0 when off). */
KV_API size_t kv_col_cache_pending(kv_col *col);

/** Copy the cached appends out, the cache unchanged: their bytes back to
 *  back are appended to `data`, their count goes to *n, and for a
 *  variable-size column *lens gets a malloc'd array of their byte lengths
 *  (NULL for a fixed one; the caller frees it). With kv_col_cache_discard,
 *  for a caller that writes them elsewhere (the writer serving the file;
 *  it keeps other calls on the column out in between). @return KV_OK or
 *  KV_NOMEM. */
KV_API kv_status kv_col_cache_copy(kv_col *col, kv_buf *data, size_t **lens, size_t *n);

/** Empty the cache (it stays on) without writing it. */
KV_API void kv_col_cache_discard(kv_col *col);

/** kv_db_set_commit_guard on the vault's connection: `g` (NULL removes it)
 *  runs in every write transaction of `cv` and its columns that commits; a
 *  refused commit makes the write fail (rolled back, nothing changed; a
 *  failed cache flush keeps the cache) with g->refused set. `g` must
 *  outlive the guard. Under the vault's mutex. */
KV_API void kv_colvault_set_commit_guard(kv_colvault *cv, kv_commit_guard *g);

/** Group commit, as kv_text_tx_begin: the vault's next writes (column
 *  creation and deletion, appends without the write-back cache, writes,
 *  inserts, deletes, clears) run as savepoints of one write transaction
 *  (BEGIN IMMEDIATE) until kv_colvault_tx_end; a failing one is rolled back
 *  alone. Appends into an enabled write-back cache must not run meanwhile
 *  (their flush would commit inside it). KV_OK, or the failure of BEGIN
 *  (KV_BUSY: another connection holds the write lock). Takes the vault's
 *  mutex. */
KV_API kv_status kv_colvault_tx_begin(kv_colvault *cv);

/** End kv_colvault_tx_begin's transaction as kv_text_tx_end; the read
 *  cache is invalidated either way. */
KV_API kv_status kv_colvault_tx_end(kv_colvault *cv, int commit);

/** Vault-wide cache lock flag (docs/api.md §6.1 lock_cache): only background
 *  flushers consult it (kv_colvault_cache_locked); manual flushes ignore it. */
KV_API void kv_colvault_cache_lock(kv_colvault *cv, int locked);
/** Current value of the lock flag. */
KV_API int kv_colvault_cache_locked(kv_colvault *cv);

#ifdef __cplusplus
}
#endif
#endif /* KVAULT_COLUMN_H */
