/*
 * kv.c - the key-value store over one SQLite table (docs/api.md §4): handle
 * open/close, prepared statements kept per handle, get/put/delete/exists/
 * count, keyset-paginated key listing, meta features, checkpoint, optimize.
 *
 * Hot path: kv_get binds the key to a kept statement, steps it and lends the
 * row's blob pointer to the caller (no allocation, no copy); the statement
 * is reset by kv_get_done or by the next call on the handle.
 * The write-back cache lives in cache.c, streaming in stream.c.
 */
#include "internal.h"
#include "kvault/oprec.h"
#include "store_internal.h"

#include <stdio.h>
#include <string.h>

/* ======================================================================
 * Open / close
 * ==================================================================== */

KV_API void kv_open_opts_default(kv_open_opts *o)
{
    kvi_conn_opts co;
    kvi_conn_opts_default(&co); /* the connection pragmas of docs/api.md §4.1 */
    o->table = "kv";
    o->enable_wal = co.enable_wal;
    o->page_size = co.page_size;
    o->mmap_size = co.mmap_size;
    o->cache_kb = co.cache_kb;
    o->busy_timeout_ms = co.busy_timeout_ms;
    o->chunk_size = 1048576;
    o->read_cache_bytes = (size_t)32 << 20;
}

static void finalize_all(kv_db *db)
{
    sqlite3_stmt **sts[] = {&db->st_get, &db->st_get_into, &db->st_put, &db->st_del,
                            &db->st_exists, &db->st_count, &db->st_rowid, &db->st_putzero,
                            &db->st_begin, &db->st_commit, &db->st_rollback,
                            &db->st_parts_exists, &db->st_parts_list, &db->st_parts_ins,
                            &db->st_parts_zero};
    for (size_t i = 0; i < sizeof sts / sizeof sts[0]; i++) {
        sqlite3_finalize(*sts[i]);
        *sts[i] = NULL;
    }
}

/* Free a handle and everything it owns: read cache (before SQLite unmaps
 * the wal-index), statements, connection, buffers. Nothing is flushed. */
static void db_free(kv_db *db)
{
    kvi_rcache_close(db->rcache);
    db->rcache = NULL;
    kvi_largeread_close(db);
    finalize_all(db);
    kvi_oprec_finalize(&db->oprec);
    if (db->db)
        sqlite3_close_v2(db->db);
    void *owned[] = {db->parts_rowid, db->parts_len, db->parts_tbl, db->table, db};
    for (size_t i = 0; i < sizeof owned / sizeof owned[0]; i++)
        kvi_free(owned[i]);
}

static kv_status prepare_all(kv_db *db)
{
    char sql[512];
    kv_status st;
    const char *t = db->table;
#define PREP(field, ...)                                                  \
    do {                                                                  \
        snprintf(sql, sizeof sql, __VA_ARGS__);                           \
        if ((st = kvi_prepare(db->db, sql, &db->field, &db->err)) != KV_OK) \
            return st;                                                    \
    } while (0)
    PREP(st_get, "SELECT value FROM %s WHERE key=?1", t);
    PREP(st_get_into, KVI_SQL_GET_INTO, t);
    /* An upsert, not INSERT OR REPLACE: a new value of a stored key
     * rewrites its row in place, so the commit changes one page (the table
     * leaf) instead of about three (REPLACE deletes the row and inserts it
     * under a new rowid, which also moves the key's index entry). In WAL
     * mode every changed page is one frame of page_size bytes per commit,
     * which is what an autocommit put costs (test_kv.c checks the counts). */
    PREP(st_put, "INSERT INTO %s(key, value) VALUES(?1, ?2) "
                 "ON CONFLICT(key) DO UPDATE SET value=excluded.value", t);
    PREP(st_del, "DELETE FROM %s WHERE key=?1", t);
    PREP(st_exists, "SELECT 1 FROM %s WHERE key=?1", t);
    PREP(st_count, "SELECT COUNT(*) FROM %s", t);
    PREP(st_rowid, "SELECT rowid FROM %s WHERE key=?1", t);
    PREP(st_putzero, "INSERT INTO %s(key, value) VALUES(?1, zeroblob(?2)) "
                     "ON CONFLICT(key) DO UPDATE SET value=excluded.value", t);
    PREP(st_begin, "BEGIN IMMEDIATE");
    PREP(st_commit, "COMMIT");
    PREP(st_rollback, "ROLLBACK");
    PREP(st_parts_exists, "SELECT 1 FROM sqlite_master WHERE type='table' AND name='%s_parts'", t);
#undef PREP
    return KV_OK;
}

KV_API kv_status kv_db_open(const char *path, const kv_open_opts *o, kv_db **out,
                            char *err, size_t errlen)
{
    kv_open_opts defs;
    kvi_conn_opts co;
    kv_db *db = NULL;
    kv_status st;
    char sql[512];

    *out = NULL;
    if (!o) {
        kv_open_opts_default(&defs);
        o = &defs;
    }
    const char *table = o->table ? o->table : "kv";
    if (kvi_table_name_valid(table) != KV_OK) {
        if (err && errlen)
            snprintf(err, errlen, "Invalid table name: %s", table);
        return KV_INVALID;
    }
    if (o->page_size && (o->page_size < 512 || o->page_size > 65536 ||
                         (o->page_size & (o->page_size - 1)))) {
        if (err && errlen)
            snprintf(err, errlen, "Invalid page_size: %d", o->page_size);
        return KV_INVALID;
    }
    db = kvi_calloc(1, sizeof *db);
    if (!db) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return KV_NOMEM;
    }
    db->table = kvi_strdup(table);
    if (!db->table) {
        kvi_free(db);
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return KV_NOMEM;
    }
    db->parts_tbl = kvi_malloc(strlen(table) + 7);
    if (!db->parts_tbl) {
        kvi_free(db->table);
        kvi_free(db);
        if (err && errlen)
            snprintf(err, errlen, "out of memory");
        return KV_NOMEM;
    }
    snprintf(db->parts_tbl, strlen(table) + 7, "%s_parts", table);
    db->chunk_size = o->chunk_size ? o->chunk_size : 1048576;

    kvi_conn_opts_default(&co);
    co.enable_wal = o->enable_wal;
    co.page_size = o->page_size;
    co.mmap_size = o->mmap_size;
    co.cache_kb = o->cache_kb;
    co.busy_timeout_ms = o->busy_timeout_ms;
    co.nomutex = 1;
    db->busy_timeout_ms = o->busy_timeout_ms;
    st = kvi_conn_open(path, &co, &db->db, err, errlen);
    if (st != KV_OK)
        goto fail_quiet;

    snprintf(sql, sizeof sql,
             "CREATE TABLE IF NOT EXISTS %s (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL);"
             "CREATE TABLE IF NOT EXISTS kohakuvault_meta (key TEXT PRIMARY KEY, value BLOB)",
             table);
    if ((st = kvi_exec(db->db, sql, &db->err)) != KV_OK)
        goto fail;
    if ((st = prepare_all(db)) != KV_OK)
        goto fail;
    kvi_rcache_open(db, o->read_cache_bytes);
    *out = db;
    return KV_OK;

fail:
    kvi_msg_copy(db->err.msg, err, errlen);
fail_quiet:
    db_free(db);
    return st;
}

KV_API kv_status kv_db_close(kv_db *db)
{
    kv_status st = KV_OK;
    if (!db)
        return KV_OK;
    kvi_get_release(db);
    if (db->cache) {
        st = kvi_cache_flush_force(db, NULL);
        kvi_cache_destroy(db->cache);
        db->cache = NULL;
    }
    sqlite3_wal_checkpoint_v2(db->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    db_free(db);
    return st;
}

KV_API const char *kv_db_errmsg(const kv_db *db) { return db ? db->err.msg : ""; }
KV_API int kv_db_sqlite_errcode(const kv_db *db) { return db ? db->err.sqlite_rc : 0; }
KV_API const char *kv_sqlite_errstr(int code) { return sqlite3_errstr(code); }
KV_API int kv_db_os_errno(const kv_db *db) { return db ? db->err.os_errno : 0; }
KV_API const char *kv_db_table(const kv_db *db) { return db->table; }

KV_API void kv_db_conn(kv_db *db, kv_conn *out)
{
    *out = (kv_conn){.db = db->db, .err = &db->err, .stmts = &db->oprec, .mu = NULL};
}

KV_API kv_status kv_checkpoint(kv_db *db)
{
    kvi_get_release(db);
    sqlite3_wal_checkpoint_v2(db->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    return KV_OK;
}

KV_API kv_status kv_optimize(kv_db *db)
{
    kvi_get_release(db);
    return kvi_exec(db->db, "PRAGMA optimize; VACUUM", &db->err);
}

/* ======================================================================
 * Transactions
 * ==================================================================== */

static kv_status step_done(kv_db *db, sqlite3_stmt *s, const char *op)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return kvi_err_sqlite(&db->err, db->db, rc, op);
    return KV_OK;
}

/* Inside kv_db_tx_begin's transaction (db->err.nest) a write's own
 * transaction is the savepoint of the shared store helpers (store.c). */
kv_status kvi_begin(kv_db *db)
{
    if (db->err.nest)
        return kvi_store_begin(&db->err, db->db, 1);
    return step_done(db, db->st_begin, "begin");
}

kv_status kvi_commit(kv_db *db)
{
    if (db->err.nest)
        return kvi_store_commit(&db->err, db->db);
    return step_done(db, db->st_commit, "commit");
}

void kvi_rollback(kv_db *db)
{
    if (db->err.nest) {
        kvi_store_rollback(&db->err, db->db);
        return;
    }
    if (!sqlite3_get_autocommit(db->db)) {
        sqlite3_step(db->st_rollback);
        sqlite3_reset(db->st_rollback);
    }
}

KV_API kv_status kv_db_tx_begin(kv_db *db)
{
    KV_ASSERT(db && !db->cache);
    kvi_get_release(db);
    kvi_rcache_invalidate(db->rcache);
    return kvi_store_tx_begin(&db->err, db->db);
}

KV_API kv_status kv_db_tx_end(kv_db *db, int commit)
{
    KV_ASSERT(db);
    kvi_rcache_invalidate(db->rcache);
    return kvi_store_tx_end(&db->err, db->db, commit);
}

KV_API kv_status kv_record_feature(kv_db *db, const char *name)
{
    kv_status st;
    sqlite3_stmt *sel = NULL, *up = NULL;
    size_t n = name ? strlen(name) : 0;
    char *list = NULL;

    kvi_get_release(db);
    if (n == 0 || n > 64 || strchr(name, ','))
        return kvi_err_set(&db->err, KV_INVALID, "Invalid feature name");
    if ((st = kvi_begin(db)) != KV_OK)
        return st;
    if ((st = kvi_prepare(db->db, "SELECT value FROM kohakuvault_meta WHERE key='kv_features'",
                          &sel, &db->err)) != KV_OK)
        goto fail;
    int rc = sqlite3_step(sel);
    size_t have = 0;
    if (rc == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_blob(sel, 0);
        have = (size_t)sqlite3_column_bytes(sel, 0);
        list = kvi_malloc(have + n + 2);
        if (!list) {
            st = kvi_err_set(&db->err, KV_NOMEM, "out of memory");
            goto fail;
        }
        if (have)
            memcpy(list, v, have);
        list[have] = '\0';
        /* already present? compare comma-separated items */
        const char *p = list;
        while (*p) {
            const char *c = strchr(p, ',');
            size_t l = c ? (size_t)(c - p) : strlen(p);
            if (l == n && memcmp(p, name, n) == 0) {
                st = KV_OK;
                sqlite3_finalize(sel);
                sel = NULL;
                kvi_free(list);
                return kvi_commit(db);
            }
            p += l + (c ? 1 : 0);
        }
    } else if (rc != SQLITE_DONE) {
        st = kvi_err_sqlite(&db->err, db->db, rc, "read kv_features");
        goto fail;
    } else {
        list = kvi_malloc(n + 2);
        if (!list) {
            st = kvi_err_set(&db->err, KV_NOMEM, "out of memory");
            goto fail;
        }
    }
    if (have)
        list[have++] = ',';
    memcpy(list + have, name, n);
    have += n;
    sqlite3_finalize(sel);
    sel = NULL;
    if ((st = kvi_prepare(db->db, "INSERT OR REPLACE INTO kohakuvault_meta(key, value) "
                          "VALUES('kv_features', ?1)", &up, &db->err)) != KV_OK)
        goto fail;
    sqlite3_bind_text(up, 1, list, (int)have, SQLITE_STATIC);
    rc = sqlite3_step(up);
    if (rc != SQLITE_DONE) {
        st = kvi_err_sqlite(&db->err, db->db, rc, "write kv_features");
        goto fail;
    }
    sqlite3_finalize(up);
    kvi_free(list);
    return kvi_commit(db);

fail:
    sqlite3_finalize(sel);
    sqlite3_finalize(up);
    kvi_free(list);
    kvi_rollback(db);
    return st;
}

/* ======================================================================
 * Key-value calls
 * ==================================================================== */

static const uint8_t empty_blob[1];

/* Bind a blob, turning NULL/0 into an empty (non-NULL) blob: the columns are
 * NOT NULL and keys are BLOBs even when empty. */
static inline int bind_blob(sqlite3_stmt *s, int i, const void *p, size_t n)
{
    return sqlite3_bind_blob64(s, i, n ? p : empty_blob, n, SQLITE_STATIC);
}

/* Read the `n` parts listed by kvi_parts_list (db->parts_rowid /
 * parts_len) into `buf`, inside the caller's read transaction. */
static kv_status read_parts(kv_db *db, size_t n, uint8_t *buf)
{
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        sqlite3_blob *b = NULL;
        int rc = sqlite3_blob_open(db->db, "main", db->parts_tbl, "data", db->parts_rowid[i], 0, &b);
        if (rc == SQLITE_OK && db->parts_len[i])
            rc = sqlite3_blob_read(b, buf + off, (int)db->parts_len[i], 0);
        sqlite3_blob_close(b);
        if (rc != SQLITE_OK)
            return kvi_err_sqlite(&db->err, db->db, rc, "get part");
        off += db->parts_len[i];
    }
    return KV_OK;
}

/* The parts of `key`, if any, listed inside the read transaction the
 * caller's statement holds open: *n parts of *total bytes (0 parts: the
 * empty main value is the value). KV_NOMEM when the total does not fit in
 * memory. */
static kv_status list_parts(kv_db *db, const void *key, size_t klen, size_t *n, uint64_t *total)
{
    kv_status st = kvi_parts_list(db, key, klen, n, total);
    if (st == KV_OK && *n && *total > (uint64_t)SIZE_MAX - 1)
        return kvi_err_set(&db->err, KV_NOMEM, "value of %llu bytes does not fit in memory",
                           (unsigned long long)*total);
    return st;
}

/* An empty main value: reassemble the parts of a large value, if any,
 * inside the read transaction st_get still holds open. On KV_OK with parts
 * *val points to db->lent (freed by kvi_get_release); without parts the
 * value stays the empty one. */
static kv_status get_large(kv_db *db, const void *key, size_t klen,
                           const void **val, size_t *vlen)
{
    size_t n;
    uint64_t total;
    kv_status st = list_parts(db, key, klen, &n, &total);
    if (st != KV_OK || n == 0)
        return st;
    uint8_t *buf = kvi_malloc(total ? (size_t)total : 1);
    if (!buf)
        return kvi_err_set(&db->err, KV_NOMEM, "out of memory (value of %llu bytes)",
                           (unsigned long long)total);
    if ((st = read_parts(db, n, buf)) != KV_OK) {
        kvi_free(buf);
        return st;
    }
    db->lent = buf;
    *val = buf;
    *vlen = (size_t)total;
    return KV_OK;
}

/* Write-back cache, then read cache (needs the snapshot taken here). */
static inline int get_cached(kv_db *db, const void *key, size_t klen,
                             const void **val, size_t *vlen,
                             uint8_t snap[KVI_WALHDR_BYTES], int *snap_ok)
{
    *snap_ok = 0;
    if (db->cache) {
        kvi_centry *e = kvi_cache_find(db->cache, key, klen);
        if (e) {
            *val = e->data + e->klen;
            *vlen = e->vlen;
            return 1;
        }
    }
    if (db->rcache && sqlite3_get_autocommit(db->db)) {
        *snap_ok = kvi_rcache_begin(db->rcache, snap);
        if (*snap_ok && kvi_rcache_find(db->rcache, key, klen, val, vlen))
            return 1;
    }
    return 0;
}

KV_API int kv_get_cached(kv_db *db, const void *key, size_t klen,
                         const void **val, size_t *vlen)
{
    uint8_t snap[KVI_WALHDR_BYTES];
    int snap_ok;
    kvi_get_release(db);
    return get_cached(db, key, klen, val, vlen, snap, &snap_ok);
}

KV_API kv_status kv_get(kv_db *db, const void *key, size_t klen,
                        const void **val, size_t *vlen)
{
    uint8_t snap[KVI_WALHDR_BYTES];
    int snap_ok;
    kvi_get_release(db);
    KV_ASSERT((key || klen == 0) && val && vlen);
    if (get_cached(db, key, klen, val, vlen, snap, &snap_ok))
        return KV_OK;
    sqlite3_stmt *s = db->st_get;
    bind_blob(s, 1, key, klen);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        int n = sqlite3_column_bytes(s, 0);
        const void *p = sqlite3_column_blob(s, 0);
        *val = p ? p : (const void *)empty_blob;
        *vlen = (size_t)n;
        db->get_active = 1;
        if (n == 0) {
            kv_status st = get_large(db, key, klen, val, vlen);
            if (st != KV_OK) {
                kvi_get_release(db);
                return st;
            }
            if (db->lent) {
                /* Reassembled: the row is not needed any more; not cached. */
                sqlite3_reset(s);
                db->get_active = 0;
                return KV_OK;
            }
        }
        if (snap_ok)
            kvi_rcache_insert(db->rcache, snap, key, klen, *val, *vlen);
        return KV_OK;
    }
    sqlite3_reset(s);
    if (rc == SQLITE_DONE)
        return KV_NOTFOUND;
    return kvi_err_sqlite(&db->err, db->db, rc, "get");
}

/* kv_get_into below the caches: one statement, one read transaction for
 * the length and the bytes. A value of direct_min bytes or more is read by
 * the large-value reader when it can (largeread.c), otherwise here. */
static kv_status get_into_sqlite(kv_db *db, const void *key, size_t klen, size_t direct_min,
                                 kv_alloc_fn alloc, void *ctx, size_t *vlen,
                                 const uint8_t **fill)
{
    sqlite3_stmt *s = db->st_get_into;
    kv_status st;
    uint8_t *buf;
    size_t np;
    uint64_t total;
    int try_reader = 1, handled;

    *fill = NULL;
    if (db->lr_first) { /* the last value read from SQLite was large */
        st = kvi_largeread_get(db, key, klen, direct_min, alloc, ctx, vlen, &handled);
        if (handled)
            return st;
        try_reader = 0;
    }
    bind_blob(s, 1, key, klen);
    sqlite3_bind_int64(s, 2, direct_min > (size_t)INT64_MAX ? INT64_MAX : (sqlite3_int64)direct_min);
again:;
    int rc = sqlite3_step(s);
    if (rc != SQLITE_ROW)
        return rc == SQLITE_DONE ? KV_NOTFOUND : kvi_err_sqlite(&db->err, db->db, rc, "get");
    size_t n = (size_t)sqlite3_column_int64(s, 1);
    *vlen = n;
    if (n == 0) { /* empty, or the main row of a value stored as parts */
        if ((st = list_parts(db, key, klen, &np, &total)) != KV_OK)
            return st;
        *vlen = (size_t)total;
        if ((st = kvi_alloc_value(db, alloc, ctx, (size_t)total, &buf)) != KV_OK || np == 0)
            return st;
        return read_parts(db, np, buf);
    }
    if (try_reader && sqlite3_column_type(s, 2) == SQLITE_NULL) { /* n >= direct_min */
        sqlite3_reset(s); /* the reader's snapshot replaces this one */
        st = kvi_largeread_get(db, key, klen, direct_min, alloc, ctx, vlen, &handled);
        if (handled)
            return st;
        try_reader = 0;
        goto again;
    }
    db->lr_first = 0;
    return kvi_row_into(db, db->db, s, alloc, ctx, vlen, fill);
}

KV_API kv_status kv_get_into(kv_db *db, const void *key, size_t klen, size_t direct_min,
                             kv_alloc_fn alloc, void *ctx, size_t *vlen)
{
    uint8_t snap[KVI_WALHDR_BYTES];
    int snap_ok;
    const void *v;
    const uint8_t *fill;
    uint8_t *buf;
    kv_status st;

    kvi_get_release(db);
    KV_ASSERT((key || klen == 0) && alloc && vlen);
    if (get_cached(db, key, klen, &v, vlen, snap, &snap_ok)) {
        if ((st = kvi_alloc_value(db, alloc, ctx, *vlen, &buf)) == KV_OK && *vlen)
            memcpy(buf, v, *vlen);
        return st;
    }
    st = get_into_sqlite(db, key, klen, direct_min, alloc, ctx, vlen, &fill);
    sqlite3_reset(db->st_get_into);
    /* Only values copied from the handle's row are kept by the read cache;
     * values read straight into the caller's buffer (direct_min bytes or
     * more) are not: a reader of many large values once each would pay a
     * copy and its page faults per value. */
    if (st == KV_OK && fill && snap_ok && *vlen < direct_min)
        kvi_rcache_insert(db->rcache, snap, key, klen, fill, *vlen);
    return st;
}

KV_API void kv_get_done(kv_db *db)
{
    kvi_get_release(db);
}

kv_status kvi_put_direct(kv_db *db, const void *key, size_t klen,
                         const void *val, size_t vlen)
{
    kvi_rcache_invalidate(db->rcache);
    if (kvi_value_is_large(db, klen, vlen))
        return kvi_put_large(db, key, klen, val, vlen);
    return kvi_put_row(db, key, klen, val, vlen);
}

kv_status kvi_put_row(kv_db *db, const void *key, size_t klen, const void *val, size_t vlen)
{
    sqlite3_stmt *s = db->st_put;
    bind_blob(s, 1, key, klen);
    bind_blob(s, 2, val, vlen);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc != SQLITE_DONE)
        return kvi_err_sqlite(&db->err, db->db, rc, "put");
    return KV_OK;
}

KV_API kv_status kv_put(kv_db *db, const void *key, size_t klen,
                        const void *val, size_t vlen)
{
    kvi_get_release(db);
    KV_ASSERT((key || klen == 0) && (val || vlen == 0));
    if (db->cache)
        return kvi_cache_put(db, key, klen, val, vlen);
    return kvi_put_direct(db, key, klen, val, vlen);
}

KV_API kv_status kv_put_many(kv_db *db, const kv_item *items, size_t n)
{
    kv_status st;
    kvi_get_release(db);
    if (db->cache) {
        for (size_t i = 0; i < n; i++)
            if ((st = kvi_cache_put(db, items[i].key, items[i].klen,
                                    items[i].val, items[i].vlen)) != KV_OK)
                return st;
        return KV_OK;
    }
    if (n == 0)
        return KV_OK;
    if ((st = kvi_begin(db)) != KV_OK)
        return st;
    for (size_t i = 0; i < n; i++) {
        if ((st = kvi_put_direct(db, items[i].key, items[i].klen,
                                 items[i].val, items[i].vlen)) != KV_OK) {
            kvi_rollback(db);
            return st;
        }
    }
    if ((st = kvi_commit(db)) != KV_OK)
        kvi_rollback(db);
    return st;
}

KV_API kv_status kv_delete(kv_db *db, const void *key, size_t klen, int *removed)
{
    kvi_get_release(db);
    int dropped = db->cache ? kvi_cache_remove(db->cache, key, klen) : 0;
    kvi_rcache_invalidate(db->rcache);
    sqlite3_stmt *s = db->st_del;
    bind_blob(s, 1, key, klen);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return kvi_err_sqlite(&db->err, db->db, rc, "delete");
    if (removed)
        *removed = dropped || sqlite3_changes(db->db) > 0;
    return KV_OK;
}

KV_API kv_status kv_delete_many(kv_db *db, const void *const *keys, const size_t *klens,
                                size_t n, size_t *removed)
{
    if (removed)
        *removed = 0;
    if (n <= 1) {
        int one = 0;
        kv_status st = n ? kv_delete(db, keys[0], klens[0], &one) : KV_OK;
        if (removed)
            *removed = (size_t)one;
        return st;
    }
    kvi_get_release(db);
    KV_ASSERT(keys && klens);
    uint8_t *gone = kvi_malloc(n);
    if (!gone)
        return kvi_err_set(&db->err, KV_NOMEM, "out of memory");
    kvi_rcache_invalidate(db->rcache);
    kv_status st = kvi_begin(db);
    sqlite3_stmt *s = db->st_del;
    for (size_t i = 0; i < n && st == KV_OK; i++) {
        bind_blob(s, 1, keys[i], klens[i]);
        int rc = sqlite3_step(s);
        sqlite3_reset(s);
        gone[i] = rc == SQLITE_DONE && sqlite3_changes(db->db) > 0;
        if (rc != SQLITE_DONE)
            st = kvi_err_sqlite(&db->err, db->db, rc, "delete");
    }
    if (st == KV_OK)
        st = kvi_commit(db);
    if (st != KV_OK) {
        kvi_rollback(db);
        kvi_free(gone);
        return st;
    }
    /* Cached entries go only once the rows are gone (a failed call drops
     * nothing); a key counts when its row or its cached entry went. */
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        int dropped = db->cache ? kvi_cache_remove(db->cache, keys[i], klens[i]) : 0;
        count += gone[i] || dropped;
    }
    kvi_free(gone);
    if (removed)
        *removed = count;
    return KV_OK;
}

KV_API kv_status kv_exists(kv_db *db, const void *key, size_t klen, int *found)
{
    kvi_get_release(db);
    sqlite3_stmt *s = db->st_exists;
    bind_blob(s, 1, key, klen);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc == SQLITE_ROW) {
        *found = 1;
        return KV_OK;
    }
    if (rc == SQLITE_DONE) {
        *found = 0;
        return KV_OK;
    }
    return kvi_err_sqlite(&db->err, db->db, rc, "exists");
}

KV_API kv_status kv_count(kv_db *db, int64_t *count)
{
    kvi_get_release(db);
    sqlite3_stmt *s = db->st_count;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *count = sqlite3_column_int64(s, 0);
        sqlite3_reset(s);
        return KV_OK;
    }
    sqlite3_reset(s);
    return kvi_err_sqlite(&db->err, db->db, rc, "count");
}

/* ======================================================================
 * Key listing (keyset pagination)
 * ==================================================================== */

KV_API void kv_keys_free(kv_keys *k)
{
    if (!k)
        return;
    kvi_free(k->off);
    kvi_free(k->data);
    kvi_free(k);
}

KV_API kv_status kv_keys_batch(kv_db *db, const void *prefix, size_t plen,
                               const void *after, size_t alen, size_t max,
                               kv_keys **out)
{
    char sql[512];
    sqlite3_stmt *s = NULL;
    kv_status st;
    uint8_t *hi = NULL;
    kv_keys *k = NULL;
    size_t cap_n = 0, cap_d = 0, used = 0;

    kvi_get_release(db);
    *out = NULL;
    int n = snprintf(sql, sizeof sql, "SELECT key FROM %s WHERE 1", db->table);
    if (prefix)
        n += snprintf(sql + n, sizeof sql - n, " AND key >= ?1 AND key < ?2");
    if (after)
        n += snprintf(sql + n, sizeof sql - n, " AND key > ?3");
    snprintf(sql + n, sizeof sql - n, " ORDER BY key LIMIT ?4");
    if ((st = kvi_prepare(db->db, sql, &s, &db->err)) != KV_OK)
        return st;
    if (prefix) {
        hi = kvi_malloc(plen + 1);
        if (!hi) {
            st = kvi_err_set(&db->err, KV_NOMEM, "out of memory");
            goto fail;
        }
        if (plen)
            memcpy(hi, prefix, plen);
        hi[plen] = 0xFF;
        bind_blob(s, 1, prefix, plen);
        bind_blob(s, 2, hi, plen + 1);
    }
    if (after)
        bind_blob(s, 3, after, alen);
    sqlite3_bind_int64(s, 4, max > INT64_MAX ? INT64_MAX : (sqlite3_int64)max);

    k = kvi_calloc(1, sizeof *k);
    if (!k)
        goto nomem;
    cap_n = 64;
    k->off = kvi_malloc((cap_n + 1) * sizeof(size_t));
    if (!k->off)
        goto nomem;
    k->off[0] = 0;
    for (;;) {
        int rc = sqlite3_step(s);
        if (rc == SQLITE_DONE)
            break;
        if (rc != SQLITE_ROW) {
            st = kvi_err_sqlite(&db->err, db->db, rc, "keys");
            goto fail;
        }
        const void *p = sqlite3_column_blob(s, 0);
        size_t l = (size_t)sqlite3_column_bytes(s, 0);
        if (k->n == cap_n) {
            size_t *no = kvi_realloc(k->off, (cap_n * 2 + 1) * sizeof(size_t));
            if (!no)
                goto nomem;
            k->off = no;
            cap_n *= 2;
        }
        if (used + l > cap_d) {
            size_t nc = cap_d ? cap_d * 2 : 4096;
            while (nc < used + l)
                nc *= 2;
            uint8_t *nd = kvi_realloc(k->data, nc);
            if (!nd)
                goto nomem;
            k->data = nd;
            cap_d = nc;
        }
        if (l)
            memcpy(k->data + used, p, l);
        used += l;
        k->n++;
        k->off[k->n] = used;
    }
    sqlite3_finalize(s);
    kvi_free(hi);
    *out = k;
    return KV_OK;

nomem:
    st = kvi_err_set(&db->err, KV_NOMEM, "out of memory");
fail:
    sqlite3_finalize(s);
    kvi_free(hi);
    kv_keys_free(k);
    return st;
}
