/*
 * store.c - transactions, statement stepping and value-row updates shared by
 * the table stores (text.c, vector.c). Declarations and contract in
 * store_internal.h.
 */
#include "store_internal.h"

#include <stdio.h>

/* Savepoint of one write inside a transaction the handle's owner opened:
 * a failed write rolls back to it alone, the others stay. */
#define SP_BEGIN "SAVEPOINT kv_op"
#define SP_RELEASE "RELEASE kv_op"

kv_status kvi_store_begin(kvi_err *e, sqlite3 *db, int write)
{
    if (e->nest && sqlite3_get_autocommit(db))   /* SQLite rolled the outer one back */
        return kvi_err_set(e, KV_IO, "begin: the enclosing transaction was rolled back");
    int rc = sqlite3_exec(db, e->nest ? SP_BEGIN : write ? "BEGIN IMMEDIATE" : "BEGIN", NULL,
                          NULL, NULL);
    return rc == SQLITE_OK ? KV_OK : kvi_err_sqlite(e, db, rc, "begin");
}

void kvi_store_rollback(kvi_err *e, sqlite3 *db)
{
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, e->nest ? "ROLLBACK TO kv_op; " SP_RELEASE : "ROLLBACK", NULL, NULL,
                     NULL);
}

kv_status kvi_store_commit(kvi_err *e, sqlite3 *db)
{
    if (e->nest && sqlite3_get_autocommit(db))
        return kvi_err_set(e, KV_IO, "commit: the enclosing transaction was rolled back");
    int rc = sqlite3_exec(db, e->nest ? SP_RELEASE : "COMMIT", NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        return KV_OK;
    kv_status st = kvi_err_sqlite(e, db, rc, "commit");
    kvi_store_rollback(e, db);
    return st;
}

kv_status kvi_store_tx_begin(kvi_err *e, sqlite3 *db)
{
    KV_ASSERT(!e->nest);
    kvi_err_clear(e);
    kv_status st = kvi_store_begin(e, db, 1);
    if (st == KV_OK)
        e->nest = 1;
    return st;
}

kv_status kvi_store_tx_end(kvi_err *e, sqlite3 *db, int commit)
{
    KV_ASSERT(e->nest);
    e->nest = 0;
    kvi_err_clear(e);
    if (!commit) {
        kvi_store_rollback(e, db);
        return KV_OK;
    }
    if (sqlite3_get_autocommit(db))
        return kvi_err_set(e, KV_IO, "commit: the transaction was rolled back");
    return kvi_store_commit(e, db);
}

kv_status kvi_store_step_done(kvi_err *e, sqlite3 *db, sqlite3_stmt *st, const char *op)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        ;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? KV_OK : kvi_err_sqlite(e, db, rc, op);
}

int kvi_store_lookup_i64(kvi_err *e, sqlite3 *db, sqlite3_stmt *st, int64_t id, int64_t *out,
                         kv_status *status, const char *op)
{
    int found = 0;
    *status = KV_OK;
    sqlite3_bind_int64(st, 1, id);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        found = 1;
    } else if (rc != SQLITE_DONE) {
        *status = kvi_err_sqlite(e, db, rc, op);
    }
    sqlite3_reset(st);
    return found;
}

kv_status kvi_store_set_value(kvi_err *e, sqlite3 *db, sqlite3_stmt *ref_st, sqlite3_stmt *upd_st,
                              int64_t id, const void *val, size_t vlen)
{
    kv_status st;
    int64_t ref = 0;
    int found = kvi_store_lookup_i64(e, db, ref_st, id, &ref, &st, "lookup value_ref");
    if (st != KV_OK)
        return st;
    if (!found)
        return kvi_err_set(e, KV_NOTFOUND, "Query returned no rows");
    sqlite3_bind_blob64(upd_st, 1, vlen ? val : "", vlen, SQLITE_STATIC);
    sqlite3_bind_int64(upd_st, 2, ref);
    return kvi_store_step_done(e, db, upd_st, "update value");
}

kv_status kvi_store_exists(kvi_err *e, sqlite3 *db, sqlite3_stmt *st, int64_t id, int *found,
                           const char *op)
{
    int64_t ref;
    kv_status status;
    *found = kvi_store_lookup_i64(e, db, st, id, &ref, &status, op);
    return status;
}

void kvi_store_read_end(kvi_err *e, sqlite3 *db, sqlite3_stmt *a, sqlite3_stmt *b)
{
    sqlite3_reset(a); /* NULL is a no-op */
    sqlite3_reset(b);
    sqlite3_exec(db, e->nest ? SP_RELEASE : "COMMIT", NULL, NULL, NULL);
}

kv_status kvi_store_step_id(kvi_err *e, sqlite3 *db, sqlite3_stmt *st, int64_t key, int64_t id)
{
    sqlite3_bind_int64(st, 1, key);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        return KV_OK;
    if (rc == SQLITE_DONE)
        return kvi_err_set(e, KV_NOTFOUND, "ID %lld not found", (long long)id);
    return kvi_err_sqlite(e, db, rc, NULL);
}

kv_status kvi_store_column_copy(kvi_err *e, sqlite3_stmt *st, int col, size_t extra, uint8_t **out,
                                size_t *n)
{
    const void *p = sqlite3_column_blob(st, col);
    size_t len = (size_t)sqlite3_column_bytes(st, col);
    *out = kvi_malloc(len + extra ? len + extra : 1);
    if (!*out)
        return kvi_err_set(e, KV_NOMEM, "out of memory");
    if (len)
        memcpy(*out, p, len);
    *n = len;
    return KV_OK;
}

kv_status kvi_store_insert(kvi_err *e, sqlite3 *db, sqlite3_stmt *val_st, const void *val,
                           size_t vlen, sqlite3_stmt *entry_st, int ref_param, const char *op,
                           int64_t *id)
{
    kv_status st = kvi_store_begin(e, db, 1);
    if (st != KV_OK) {
        sqlite3_clear_bindings(entry_st);
        return st;
    }
    /* zeroblob-free empty value: bind "" rather than NULL (NOT NULL column) */
    sqlite3_bind_blob64(val_st, 1, vlen ? val : "", vlen, SQLITE_STATIC);
    if ((st = kvi_store_step_done(e, db, val_st, "insert value")) != KV_OK) {
        sqlite3_clear_bindings(entry_st);
        kvi_store_rollback(e, db);
        return st;
    }
    sqlite3_bind_int64(entry_st, ref_param, sqlite3_last_insert_rowid(db));
    if ((st = kvi_store_step_done(e, db, entry_st, op)) != KV_OK) {
        kvi_store_rollback(e, db);
        return st;
    }
    *id = sqlite3_last_insert_rowid(db);
    return kvi_store_commit(e, db);
}

kv_status kvi_store_update(kvi_err *e, sqlite3 *db, sqlite3_stmt *entry_st, const char *op,
                           sqlite3_stmt *ref_st, sqlite3_stmt *upd_val_st, int64_t id,
                           const void *val, size_t vlen)
{
    kv_status st = kvi_store_begin(e, db, 1);
    if (st != KV_OK) {
        if (entry_st)
            sqlite3_clear_bindings(entry_st);
        return st;
    }
    if (entry_st)
        st = kvi_store_step_done(e, db, entry_st, op);
    if (st == KV_OK && val)
        st = kvi_store_set_value(e, db, ref_st, upd_val_st, id, val, vlen);
    if (st != KV_OK) {
        kvi_store_rollback(e, db);
        return st;
    }
    return kvi_store_commit(e, db);
}

kv_status kvi_store_delete(kvi_err *e, sqlite3 *db, sqlite3_stmt *ref_st, sqlite3_stmt *del_entry_st,
                           sqlite3_stmt *del_val_st, int64_t id, int *removed, const char *what)
{
    kv_status st;
    int64_t ref = 0;
    char op[64];
    if (removed)
        *removed = 0;
    if ((st = kvi_store_begin(e, db, 1)) != KV_OK)
        return st;
    int found = kvi_store_lookup_i64(e, db, ref_st, id, &ref, &st, "lookup value_ref");
    if (st != KV_OK)
        goto fail;
    if (found) {
        snprintf(op, sizeof op, "delete %s", what);
        sqlite3_bind_int64(del_entry_st, 1, id);
        if ((st = kvi_store_step_done(e, db, del_entry_st, op)) != KV_OK)
            goto fail;
        sqlite3_bind_int64(del_val_st, 1, ref);
        if ((st = kvi_store_step_done(e, db, del_val_st, "delete value")) != KV_OK)
            goto fail;
    }
    if ((st = kvi_store_commit(e, db)) == KV_OK && removed)
        *removed = found;
    return st;
fail:
    kvi_store_rollback(e, db);
    return st;
}
