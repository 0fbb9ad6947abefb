/*
 * batch.h - the commit backend of the shared-mode writer (docs/architecture.md,
 * "The writer-side seam").
 *
 * The writer process (workers/kvault-writer) turns the records it applied to
 * the shared segment into durable rows through this one small interface:
 *
 *     kv_batch_open        connect to the store, create the table if needed
 *     kv_batch_last_seq    the sequence number of the last committed batch
 *     kv_batch_begin       start a batch (BEGIN IMMEDIATE)
 *     kv_batch_put/_delete apply records to it
 *     kv_batch_commit      store the batch's last sequence number in the SAME
 *                          transaction, then COMMIT
 *     kv_batch_rollback    abandon it
 *
 * Because the last sequence number is committed atomically with the rows, a
 * writer that replays records after a crash skips every record whose
 * sequence is <= kv_batch_last_seq: a replay is idempotent. The sequence is
 * kept in `kohakuvault_meta` under the key "writer_seq:<table>" as decimal
 * text. A second backend (a dqlite cluster) can implement the same calls;
 * nothing above this header knows it is SQLite.
 *
 * Thread and process rules: one thread at a time per handle; in shared mode
 * exactly one process (the writer, holding the registry lock) owns a
 * kv_batch for a given file and table. Do not use a handle after fork().
 */
#ifndef KVAULT_BATCH_H
#define KVAULT_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "kvault/kvault.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Opaque commit-backend handle (one SQLite connection and its statements). */
typedef struct kv_batch kv_batch;

/** Options for kv_batch_open. */
typedef struct kv_batch_opts {
    const char *table;     /**< key-value table, `[A-Za-z_][A-Za-z0-9_]*`; default "kv" */
    int synchronous;       /**< PRAGMA synchronous: 0 OFF, 1 NORMAL (default), 2 FULL, 3 EXTRA */
    int busy_timeout_ms;   /**< busy timeout, milliseconds; default 5000 */
    int no_autocheckpoint; /**< nonzero: a COMMIT never checkpoints the WAL itself
                                (wal_autocheckpoint=0); the owner runs kv_batch_checkpoint,
                                e.g. from another handle on another thread. Default 0 */
} kv_batch_opts;

/** Fill *o with the defaults (table "kv", synchronous NORMAL, 5000 ms,
 *  SQLite's automatic checkpoints on). */
KV_API void kv_batch_opts_default(kv_batch_opts *o);

/** Process-wide SQLite setup for a process whose only connections are
 *  commit backends (the writer): turns SQLite's memory statistics off
 *  (SQLITE_CONFIG_MEMSTATUS = 0). With them on, every sqlite3_malloc and
 *  sqlite3_free takes one process-wide mutex, about 6% of the writer's CPU
 *  under a stream of puts (perf profile of kvault-writer). sqlite3_status()
 *  and sqlite3_memory_used() then report 0.
 *  Call once, before any connection opens and before other threads start
 *  (sqlite3_config is not thread-safe). Returns KV_OK, or KV_SQLITE when
 *  SQLite is already initialised in this process (nothing changes). */
KV_API kv_status kv_batch_process_init(void);

/** Open the commit backend on the database at `path` (created if missing,
 *  WAL mode, the key-value table and kohakuvault_meta created if missing).
 *  *out is owned by the caller (kv_batch_close). On failure *out is NULL
 *  and `err` (may be NULL) gets a message of at most errlen-1 bytes.
 *  Returns KV_OK, KV_INVALID (bad table name / synchronous level), KV_BUSY,
 *  KV_IO, KV_CORRUPT, KV_NOMEM, KV_SQLITE. */
KV_API kv_status kv_batch_open(const char *path, const kv_batch_opts *o,
                               kv_batch **out, char *err, size_t errlen);

/** Roll back an open batch, close the connection, free the handle. NULL is
 *  a no-op. */
KV_API void kv_batch_close(kv_batch *b);

/** Message of the last failure ("" if none); valid until the next call. */
KV_API const char *kv_batch_errmsg(const kv_batch *b);

/** SQLite extended result code of the last failure (0 if it was not
 *  SQLite's, e.g. SQLITE_FULL = 13 for a full disk). */
KV_API int kv_batch_sqlite_errcode(const kv_batch *b);

/** *seq = sequence number stored by the last committed batch (0 if none).
 *  Returns KV_OK, KV_BUSY, KV_CORRUPT (the stored text is not a number),
 *  KV_SQLITE. Must not be called inside a batch. */
KV_API kv_status kv_batch_last_seq(kv_batch *b, uint64_t *seq);

/** Start a batch: BEGIN IMMEDIATE (takes SQLite's write lock, waiting up
 *  to the busy timeout). Returns KV_OK, KV_INVALID (a batch is already
 *  open), KV_BUSY, KV_IO, KV_SQLITE. */
KV_API kv_status kv_batch_begin(kv_batch *b);

/** Upsert key -> value inside the open batch (buffers are copied by
 *  SQLite before return). Returns KV_OK, KV_INVALID (no batch open, or a
 *  value above SQLite's limit), KV_BUSY, KV_IO, KV_NOMEM, KV_SQLITE. */
KV_API kv_status kv_batch_put(kv_batch *b, const void *key, size_t klen,
                              const void *val, size_t vlen);

/** Delete key inside the open batch (absent keys are fine). Returns as
 *  kv_batch_put. */
KV_API kv_status kv_batch_delete(kv_batch *b, const void *key, size_t klen);

/** Store `last_seq` as the committed sequence and COMMIT, in the one
 *  transaction opened by kv_batch_begin. `last_seq` must not be below the
 *  stored one (KV_INVALID, batch rolled back). On any failure the batch is
 *  rolled back: nothing of it is stored. Returns KV_OK, KV_INVALID, KV_BUSY,
 *  KV_IO, KV_SQLITE. */
KV_API kv_status kv_batch_commit(kv_batch *b, uint64_t last_seq);

/** Roll back the open batch (no-op without one). */
KV_API void kv_batch_rollback(kv_batch *b);

/** Passive WAL checkpoint; *wal_frames (may be NULL) gets the WAL size in
 *  frames before it (-1 if unknown). Errors are swallowed: returns KV_OK on
 *  an open handle outside a batch, KV_INVALID inside one. */
KV_API kv_status kv_batch_checkpoint(kv_batch *b, int *wal_frames);

/** The committed database, whole, as one database image (the bytes of an
 *  SQLite database file): SQLite's online backup API copies it into an
 *  in-memory database of the same page size, and sqlite3_serialize gives its
 *  bytes. Used for cluster snapshots (workers/cluster.c). *image is
 *  malloc'ed and the caller's to free; *len is its length in bytes. The
 *  whole database is held in memory three times at the peak (the in-memory
 *  copy, its serialization, the result). Must not be
 *  called inside a batch. Returns KV_OK, KV_INVALID (inside a batch),
 *  KV_NOMEM, KV_BUSY, KV_SQLITE. One thread at a time per handle. */
KV_API kv_status kv_batch_snapshot(kv_batch *b, void **image, size_t *len);

/** Replace the whole database with a database image (from
 *  kv_batch_snapshot, len bytes; copied, the caller keeps it): the backup API
 *  copies it into the file in one write transaction, so other connections
 *  see either the old contents or the new. The image's page size must be
 *  the file's (both come from the same cluster). Must not be called inside
 *  a batch. Returns KV_OK, KV_INVALID (inside a batch; not a database image
 *  or another page size), KV_NOMEM, KV_BUSY, KV_SQLITE. */
KV_API kv_status kv_batch_restore(kv_batch *b, const void *image, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* KVAULT_BATCH_H */
