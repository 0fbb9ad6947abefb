/*
 * largeread.c - reads of large values (kv_get_into, values of at least
 * direct_min bytes) through a second connection of the handle: the
 * large-value reader.
 *
 * Why. The handle's connection runs with the pragmas of docs/api.md §4.1:
 * a 100,000 KiB page cache and a 256 MiB memory mapping. SQLite 3.40 as
 * Debian builds it reads a value's overflow pages through the pager (the
 * page cache counted one miss per overflow page in a C test), so a process
 * that reads many large values once each, such as a training loader's
 * forked worker, fills its page cache up to 100 MB, page fault by page
 * fault, and faults in every 4 KiB page of the mapping it copies from;
 * none of it is read twice. On this project's VM a page fault costs tens
 * of microseconds. Measured (one process, 750 shuffled gets of 50-200 KB
 * values, CPU per get): the handle's connection with the read cache off
 * 306 us and 12.8 faults; a connection with mmap_size=0 and a 2,000 KiB
 * cache 49-65 us and 0.7-1.4 faults; the stdlib sqlite3 module 175-235 us
 * (docs/performance.md, "Large values read by a second connection").
 *
 * What. The reader is a read-only connection to the same file through the
 * same VFS, opened on the first large read, with mmap_size=0 and a page
 * cache of LR_CACHE_KB, whose page buffers are recycled instead of grown.
 * The handle's connection still finds the key (its pages are the hot
 * b-tree pages small gets use); when the length is at least direct_min it
 * ends its read transaction and the reader looks the key up again and
 * reads the value in one read transaction of its own. After a large value
 * the next get asks the reader first (kv_db.lr_first), which skips the
 * handle's lookup and the faults of its mapping on the leaf pages. The value returned
 * is therefore the one of the reader's snapshot, which starts after the
 * handle's lookup: as new or newer, with its own length, so a rewrite or
 * delete by another connection in between is seen as such (a value now
 * short is copied from the row, a deleted key is KV_NOTFOUND, a key now
 * empty or stored as parts goes back to the handle's connection).
 *
 * Read-your-writes. Writes of the handle are committed by the handle's
 * connection before the call returns (or are held by the write-back
 * cache, which kv_get_into looks at first), so a read transaction the
 * reader starts later sees them. While the handle's connection has a
 * transaction open, the reader is not used (*handled = 0).
 *
 * Only for shared WAL files (kvi_conn_wal_shared): a rollback-journal
 * reader would take a SHARED lock beside the handle's own, and exclusive
 * locking mode would make the reader wait for the handle. A ":memory:" or
 * temporary database has no file another connection could open.
 *
 * Fork: the reader belongs to the handle and follows its rule (kvault.h:
 * a child opens a new handle and does not use the inherited one).
 * Thread safety: as the kv_db handle (one thread at a time).
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>

/* Page cache of the reader, KiB: SQLite's own default (-2000). It holds
 * the b-tree pages of the lookups; overflow pages pass through it. */
#define LR_CACHE_KB 2000

kv_status kvi_alloc_value(kv_db *db, kv_alloc_fn alloc, void *ctx, size_t n, uint8_t **out)
{
    *out = alloc(ctx, n);
    if (!*out)
        return kvi_err_set(&db->err, KV_NOMEM, "out of memory (value of %zu bytes)", n);
    return KV_OK;
}

kv_status kvi_row_into(kv_db *db, sqlite3 *c, sqlite3_stmt *s, kv_alloc_fn alloc, void *ctx,
                       size_t *vlen, const uint8_t **fill)
{
    size_t n = (size_t)sqlite3_column_int64(s, 1);
    KV_ASSERT_INTERNAL(n > 0);
    uint8_t *buf;
    *vlen = n;
    kv_status st = kvi_alloc_value(db, alloc, ctx, n, &buf);
    if (st != KV_OK)
        return st;
    if (sqlite3_column_type(s, 2) != SQLITE_NULL) { /* shorter than direct_min */
        memcpy(buf, sqlite3_column_blob(s, 2), n);
        if (fill)
            *fill = buf;
        return KV_OK;
    }
    sqlite3_blob *b = NULL;
    int rc = sqlite3_blob_open(c, "main", db->table, "value", sqlite3_column_int64(s, 0), 0, &b);
    if (rc == SQLITE_OK)
        rc = sqlite3_blob_read(b, buf, (int)n, 0);
    sqlite3_blob_close(b);
    if (rc != SQLITE_OK)
        return kvi_err_sqlite(&db->err, c, rc, "get");
    return KV_OK;
}

/* Open the reader (lr_state 1) or find it cannot be (lr_state -1). */
static void lr_open(kv_db *db)
{
    char sql[512];
    sqlite3_vfs *vfs = NULL;
    const char *fn = sqlite3_db_filename(db->db, "main");

    db->lr_state = -1;
    if (!fn || !fn[0] || !kvi_conn_wal_shared(db->db) ||
        sqlite3_file_control(db->db, "main", SQLITE_FCNTL_VFS_POINTER, &vfs) != SQLITE_OK || !vfs)
        return;
    if (sqlite3_open_v2(fn, &db->lr_db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                        vfs->zName) != SQLITE_OK)
        goto fail;
    sqlite3_extended_result_codes(db->lr_db, 1);
    sqlite3_busy_timeout(db->lr_db, db->busy_timeout_ms);
    snprintf(sql, sizeof sql, "PRAGMA mmap_size=0; PRAGMA cache_size=-%d", LR_CACHE_KB);
    if (sqlite3_exec(db->lr_db, sql, NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    snprintf(sql, sizeof sql, KVI_SQL_GET_INTO, db->table);
    if (sqlite3_prepare_v3(db->lr_db, sql, -1, SQLITE_PREPARE_PERSISTENT, &db->lr_get, NULL) !=
        SQLITE_OK)
        goto fail;
    db->lr_state = 1;
    return;
fail:
    kvi_largeread_close(db);
    db->lr_state = -1;
}

void kvi_largeread_close(kv_db *db)
{
    sqlite3_finalize(db->lr_get);
    db->lr_get = NULL;
    if (db->lr_db)
        sqlite3_close_v2(db->lr_db);
    db->lr_db = NULL;
}

kv_status kvi_largeread_get(kv_db *db, const void *key, size_t klen, size_t direct_min,
                            kv_alloc_fn alloc, void *ctx, size_t *vlen, int *handled)
{
    static const uint8_t empty_key[1];
    *handled = 0;
    if (db->lr_state < 0 || !sqlite3_get_autocommit(db->db))
        return KV_OK;
    if (db->lr_state == 0) {
        lr_open(db);
        if (db->lr_state < 0)
            return KV_OK;
    }
    sqlite3_stmt *s = db->lr_get;
    sqlite3_bind_blob64(s, 1, klen ? key : empty_key, klen, SQLITE_STATIC);
    sqlite3_bind_int64(s, 2, direct_min > (size_t)INT64_MAX ? INT64_MAX : (sqlite3_int64)direct_min);
    int rc = sqlite3_step(s);
    kv_status st;
    if (rc == SQLITE_ROW && sqlite3_column_int64(s, 1) == 0) {
        sqlite3_reset(s); /* empty, or stored as parts: the handle's connection reads it */
        return KV_OK;
    }
    *handled = 1;
    if (rc == SQLITE_ROW) {
        db->lr_first = (size_t)sqlite3_column_int64(s, 1) >= direct_min;
        st = kvi_row_into(db, db->lr_db, s, alloc, ctx, vlen, NULL);
    }
    else
        st = rc == SQLITE_DONE ? KV_NOTFOUND : kvi_err_sqlite(&db->err, db->lr_db, rc, "get");
    sqlite3_reset(s);
    db->lr_reads++;
    return st;
}
