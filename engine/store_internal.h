/*
 * store_internal.h - SQL plumbing shared by the engine's two table stores,
 * text.c (FTS5 documents) and vector.c (vectors). Private to engine/.
 *
 * Both stores keep one connection and one kvi_err per handle, write each
 * entry as a row of their own table plus a row of <table>_values (id INTEGER
 * PRIMARY KEY, value BLOB) that the entry points at through an integer
 * value_ref, and wrap every write in BEGIN IMMEDIATE ... COMMIT. These
 * helpers are that shared part; each records failures into the given
 * kvi_err with the failing operation as prefix ("commit: database is
 * locked"). Same threading rule as the handles: one thread at a time.
 */
#ifndef KVAULT_STORE_INTERNAL_H
#define KVAULT_STORE_INTERNAL_H

#include "internal.h"

/** BEGIN IMMEDIATE (write != 0: takes the write lock now, so a busy database
 *  fails here, before any work) or BEGIN (a read snapshot). KV_OK or the
 *  mapped SQLite failure (KV_BUSY "begin: database is locked").
 *  Inside a transaction opened by kvi_store_tx_begin (e->nest) it opens the
 *  savepoint kv_op instead, which kvi_store_commit releases and
 *  kvi_store_rollback rolls back alone; KV_IO when SQLite has rolled that
 *  transaction back already (an I/O or memory failure). */
kv_status kvi_store_begin(kvi_err *e, sqlite3 *db, int write);
/** End a read snapshot (kvi_store_begin with write = 0): reset the
 *  statements it used (a, b; NULL is skipped), then COMMIT (a read-only
 *  transaction: nothing to fail). */
void kvi_store_read_end(kvi_err *e, sqlite3 *db, sqlite3_stmt *a, sqlite3_stmt *b);
/** COMMIT; on failure rolls back and returns the mapped status. */
kv_status kvi_store_commit(kvi_err *e, sqlite3 *db);
/** ROLLBACK if a transaction is open (ROLLBACK TO the write's savepoint
 *  inside kvi_store_tx_begin's transaction); never fails. */
void kvi_store_rollback(kvi_err *e, sqlite3 *db);
/** Open a write transaction (BEGIN IMMEDIATE) that the handle's next writes
 *  join, each as its own savepoint (group commit: the writer process applies
 *  several clients' operations in one transaction, docs/shared-mode.md).
 *  Same statuses as kvi_store_begin; on KV_OK the handle is nested until
 *  kvi_store_tx_end. */
kv_status kvi_store_tx_begin(kvi_err *e, sqlite3 *db);
/** End kvi_store_tx_begin's transaction: COMMIT (commit != 0; on failure it
 *  is rolled back and the mapped status returned, KV_IO when SQLite had
 *  rolled it back already) or ROLLBACK (returns KV_OK). */
kv_status kvi_store_tx_end(kvi_err *e, sqlite3 *db, int commit);
/** Step a statement whose rows (if any) are ignored, then reset it and clear
 *  its bindings. KV_OK, or the mapped failure recorded as "<op>: ...". */
kv_status kvi_store_step_done(kvi_err *e, sqlite3 *db, sqlite3_stmt *st, const char *op);
/** Run `st` (one int64 parameter `id`, first column an int64) once: 1 with
 *  *out set when it returned a row, 0 when none, and *status != KV_OK (0
 *  returned) on failure, recorded as "<op>: ...". Resets `st`. */
int kvi_store_lookup_i64(kvi_err *e, sqlite3 *db, sqlite3_stmt *st, int64_t id, int64_t *out,
                         kv_status *status, const char *op);
/** Bind `key` to ?1 of `st` and step it once: KV_OK on a row (read its
 *  columns, then reset `st`), KV_NOTFOUND "ID <id> not found" when there
 *  is none (`id` is the entry the caller asked for), else the mapped
 *  SQLite failure. */
kv_status kvi_store_step_id(kvi_err *e, sqlite3 *db, sqlite3_stmt *st, int64_t key, int64_t id);
/** Copy column `col` of the current row of `st` (as a blob) into a new
 *  buffer *out (kvi_malloc, at least 1 + extra bytes; the caller frees) and
 *  its length into *n. KV_NOMEM "out of memory". */
kv_status kvi_store_column_copy(kvi_err *e, sqlite3_stmt *st, int col, size_t extra, uint8_t **out,
                                size_t *n);
/** *found = 1 when `st` (as kvi_store_lookup_i64) finds entry `id`, else
 *  0; returns KV_OK or the recorded failure. */
kv_status kvi_store_exists(kvi_err *e, sqlite3 *db, sqlite3_stmt *st, int64_t id, int *found,
                           const char *op);
/** Replace the value of entry `id`: find its value_ref with `ref_st` (as
 *  kvi_store_lookup_i64), then run `upd_st` (?1 = value blob, ?2 = value_ref).
 *  val[0..vlen) is bound as a blob (an empty blob when vlen is 0). Call inside
 *  a write transaction. KV_NOTFOUND "Query returned no rows" (docs/api.md §7.2,
 *  §8.3) when the entry does not exist; SQLite failures mapped. */
kv_status kvi_store_set_value(kvi_err *e, sqlite3 *db, sqlite3_stmt *ref_st, sqlite3_stmt *upd_st,
                              int64_t id, const void *val, size_t vlen);
/** Insert one entry in one write transaction: the value row (`val_st`,
 *  ?1 = val[0..vlen) as a blob, an empty blob when vlen is 0), then the
 *  entry row (`entry_st`, already bound by the caller but for parameter
 *  `ref_param`, which receives the new value row's id); *id = the entry's
 *  rowid. Both statements are reset and their bindings cleared. `op`
 *  prefixes a failure of the entry row ("insert document: ..."). KV_OK or
 *  the mapped failure, after which nothing was inserted. */
kv_status kvi_store_insert(kvi_err *e, sqlite3 *db, sqlite3_stmt *val_st, const void *val,
                           size_t vlen, sqlite3_stmt *entry_st, int ref_param, const char *op,
                           int64_t *id);
/** Update entry `id` in one write transaction: run `entry_st` (already
 *  bound by the caller; NULL: the entry row stays) with failures recorded
 *  as "<op>: ...", then, when val is not NULL, replace the value as
 *  kvi_store_set_value. KV_OK or the mapped failure (KV_NOTFOUND for a
 *  missing entry), after which nothing changed. */
kv_status kvi_store_update(kvi_err *e, sqlite3 *db, sqlite3_stmt *entry_st, const char *op,
                           sqlite3_stmt *ref_st, sqlite3_stmt *upd_val_st, int64_t id,
                           const void *val, size_t vlen);
/** Delete entry `id` and its value row in one write transaction: find the
 *  value_ref with `ref_st` (as kvi_store_lookup_i64), then run `del_entry_st`
 *  (?1 = id) and `del_val_st` (?1 = value_ref). *removed (may be NULL) is 1
 *  when the entry existed, else 0 (not an error). `what` names the entry in
 *  messages ("delete <what>: ..."). KV_OK or the mapped failure, after which
 *  nothing was deleted. */
kv_status kvi_store_delete(kvi_err *e, sqlite3 *db, sqlite3_stmt *ref_st, sqlite3_stmt *del_entry_st,
                           sqlite3_stmt *del_val_st, int64_t id, int *removed, const char *what);

#endif /* KVAULT_STORE_INTERNAL_H */
