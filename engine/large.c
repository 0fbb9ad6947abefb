/*
 * large.c - values longer than SQLite's length limit (docs/storage-layout.md).
 *
 * SQLite refuses strings, blobs and rows longer than SQLITE_LIMIT_LENGTH
 * (Debian builds SQLite with SQLITE_MAX_LENGTH = 1,000,000,000 bytes, so a
 * 1 GiB value does not fit in one row). Such a value is stored as:
 *   - the main row `<table>(key, value)` with an empty value, and
 *   - parts `<table>_parts(key, part, data)`, part = 0, 1, 2, ... in order,
 *     each at most KVI_PART_MAX (256 MiB) bytes; the value is the
 *     concatenation of the parts' data.
 * `<table>_parts` and three triggers on `<table>` are created the first
 * time a large value is written. The triggers (AFTER INSERT, AFTER UPDATE,
 * AFTER DELETE on `<table>`) delete the parts of the affected key in the
 * same statement, so *any* writer of the main table (this handle, the
 * shared-mode writer's batches, another process, the sqlite3 shell) keeps
 * the invariant "parts exist for a key only while its main row is the
 * empty value written together with them". A large put upserts the main row
 * first (its trigger removes older parts), then inserts the new parts, all
 * in one transaction. A reader that finds an empty main value looks for
 * parts in the same read transaction.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* Bytes of row overhead (record header, key length varints) kept free. */
#define ROW_SLACK 128

static const uint8_t empty_blob[1];

static uint64_t length_limit(kv_db *db)
{
    int lim = sqlite3_limit(db->db, SQLITE_LIMIT_LENGTH, -1);
    return lim > 0 ? (uint64_t)lim : 0;
}

int kvi_value_is_large(kv_db *db, size_t klen, uint64_t vlen)
{
    return vlen + (uint64_t)klen + ROW_SLACK > length_limit(db);
}

uint64_t kvi_part_size(kv_db *db, size_t klen)
{
    uint64_t lim = length_limit(db);
    uint64_t avail = lim > klen + ROW_SLACK ? lim - klen - ROW_SLACK : 0;
    uint64_t p = KVI_PART_MAX;
    while (p > avail && p > 1)
        p >>= 1;
    return p;
}

static kv_status prepare_parts(kv_db *db)
{
    char sql[512];
    kv_status st;
    const char *t = db->table;
    if (!db->st_parts_list) {
        snprintf(sql, sizeof sql, "SELECT rowid, length(data) FROM %s_parts WHERE key=?1 ORDER BY part", t);
        if ((st = kvi_prepare(db->db, sql, &db->st_parts_list, &db->err)) != KV_OK)
            return st;
    }
    if (!db->st_parts_ins) {
        snprintf(sql, sizeof sql, "INSERT INTO %s_parts(key, part, data) VALUES(?1, ?2, ?3)", t);
        if ((st = kvi_prepare(db->db, sql, &db->st_parts_ins, &db->err)) != KV_OK)
            return st;
    }
    if (!db->st_parts_zero) {
        snprintf(sql, sizeof sql, "INSERT INTO %s_parts(key, part, data) VALUES(?1, ?2, zeroblob(?3))", t);
        if ((st = kvi_prepare(db->db, sql, &db->st_parts_zero, &db->err)) != KV_OK)
            return st;
    }
    return KV_OK;
}

kv_status kvi_parts_ensure(kv_db *db)
{
    char sql[2048];
    const char *t = db->table;
    kv_status st;
    if (db->st_parts_list && db->st_parts_ins && db->st_parts_zero)
        return KV_OK;
    snprintf(sql, sizeof sql,
             "CREATE TABLE IF NOT EXISTS %s_parts (key BLOB NOT NULL, part INTEGER NOT NULL, "
             "data BLOB NOT NULL, PRIMARY KEY(key, part));"
             "CREATE TRIGGER IF NOT EXISTS %s_parts_ai AFTER INSERT ON %s BEGIN "
             "DELETE FROM %s_parts WHERE key=new.key; END;"
             "CREATE TRIGGER IF NOT EXISTS %s_parts_au AFTER UPDATE ON %s BEGIN "
             "DELETE FROM %s_parts WHERE key=old.key; END;"
             "CREATE TRIGGER IF NOT EXISTS %s_parts_ad AFTER DELETE ON %s BEGIN "
             "DELETE FROM %s_parts WHERE key=old.key; END",
             t, t, t, t, t, t, t, t, t, t);
    if ((st = kvi_exec(db->db, sql, &db->err)) != KV_OK)
        return st;
    return prepare_parts(db);
}

/* Grow the part arrays to hold n entries. */
static kv_status parts_reserve(kv_db *db, size_t n)
{
    if (n <= db->parts_cap)
        return KV_OK;
    size_t nc = db->parts_cap ? db->parts_cap : 8;
    while (nc < n)
        nc *= 2;
    sqlite3_int64 *r = kvi_realloc(db->parts_rowid, nc * sizeof *r);
    if (!r)
        return kvi_err_set(&db->err, KV_NOMEM, "out of memory");
    db->parts_rowid = r;
    uint64_t *l = kvi_realloc(db->parts_len, nc * sizeof *l);
    if (!l)
        return kvi_err_set(&db->err, KV_NOMEM, "out of memory");
    db->parts_len = l;
    db->parts_cap = nc;
    return KV_OK;
}

kv_status kvi_parts_list(kv_db *db, const void *key, size_t klen, size_t *n,
                         uint64_t *total)
{
    kv_status st;
    int rc;
    *n = 0;
    *total = 0;
    if (!db->st_parts_list) {
        /* Does the parts table exist (in this read transaction)? */
        sqlite3_stmt *s = db->st_parts_exists;
        rc = sqlite3_step(s);
        sqlite3_reset(s);
        if (rc == SQLITE_DONE)
            return KV_OK;
        if (rc != SQLITE_ROW)
            return kvi_err_sqlite(&db->err, db->db, rc, "parts lookup");
        if ((st = prepare_parts(db)) != KV_OK)
            return st;
    }
    sqlite3_stmt *s = db->st_parts_list;
    sqlite3_bind_blob64(s, 1, klen ? key : empty_blob, klen, SQLITE_STATIC);
    for (;;) {
        rc = sqlite3_step(s);
        if (rc == SQLITE_DONE)
            break;
        if (rc != SQLITE_ROW) {
            sqlite3_reset(s);
            return kvi_err_sqlite(&db->err, db->db, rc, "parts list");
        }
        if ((st = parts_reserve(db, *n + 1)) != KV_OK) {
            sqlite3_reset(s);
            return st;
        }
        db->parts_rowid[*n] = sqlite3_column_int64(s, 0);
        db->parts_len[*n] = (uint64_t)sqlite3_column_int64(s, 1);
        *total += db->parts_len[*n];
        (*n)++;
    }
    sqlite3_reset(s);
    return KV_OK;
}

/* Upsert the main row with an empty value (its trigger drops old parts). */
static kv_status put_main_empty(kv_db *db, const void *key, size_t klen)
{
    return kvi_put_row(db, key, klen, NULL, 0);
}

kv_status kvi_put_large(kv_db *db, const void *key, size_t klen,
                        const void *val, size_t vlen)
{
    kv_status st;
    /* its own transaction, or its own savepoint inside kv_db_tx_begin's */
    int own = sqlite3_get_autocommit(db->db) || db->err.nest;
    uint64_t psz = kvi_part_size(db, klen);

    if (own && (st = kvi_begin(db)) != KV_OK)
        return st;
    if ((st = kvi_parts_ensure(db)) != KV_OK)
        goto fail;
    if ((st = put_main_empty(db, key, klen)) != KV_OK)
        goto fail;
    sqlite3_stmt *s = db->st_parts_ins;
    const uint8_t *p = val;
    for (uint64_t off = 0, part = 0; off < vlen; off += psz, part++) {
        uint64_t n = vlen - off < psz ? vlen - off : psz;
        sqlite3_bind_blob64(s, 1, klen ? key : empty_blob, klen, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)part);
        sqlite3_bind_blob64(s, 3, p + off, n, SQLITE_STATIC);
        int rc = sqlite3_step(s);
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        if (rc != SQLITE_DONE) {
            st = kvi_err_sqlite(&db->err, db->db, rc, "put part");
            goto fail;
        }
    }
    if (own && (st = kvi_commit(db)) != KV_OK)
        goto fail;
    return KV_OK;
fail:
    if (own)
        kvi_rollback(db);
    return st;
}

/* Bytes a value may take at most: the free space of the file system
 * holding the database file (statvfs), or the physical memory for an
 * in-memory or temporary database (no file). UINT64_MAX when unknown. */
static uint64_t space_available(kv_db *db)
{
    const char *fn = sqlite3_db_filename(db->db, "main");
    struct statvfs sv;
    if (fn && fn[0])
        return statvfs(fn, &sv) == 0 ? (uint64_t)sv.f_bavail * sv.f_frsize : UINT64_MAX;
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : UINT64_MAX;
}

kv_status kvi_parts_create_zero(kv_db *db, const void *key, size_t klen,
                                uint64_t size, size_t *n)
{
    kv_status st;
    uint64_t psz = kvi_part_size(db, klen);
    *n = 0;
    /* A size that cannot fit fails before anything is written (rather than
     * filling the disk, or memory, with zero parts first). */
    if (size > space_available(db))
        return kvi_err_os(&db->err, ENOSPC, "put_file");
    if ((st = kvi_parts_ensure(db)) != KV_OK)
        return st;
    if ((st = put_main_empty(db, key, klen)) != KV_OK)
        return st;
    sqlite3_stmt *s = db->st_parts_zero;
    for (uint64_t off = 0, part = 0; off < size; off += psz, part++) {
        uint64_t len = size - off < psz ? size - off : psz;
        if ((st = parts_reserve(db, *n + 1)) != KV_OK)
            return st;
        sqlite3_bind_blob64(s, 1, klen ? key : empty_blob, klen, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)part);
        sqlite3_bind_int64(s, 3, (sqlite3_int64)len);
        int rc = sqlite3_step(s);
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        if (rc != SQLITE_DONE)
            return kvi_err_sqlite(&db->err, db->db, rc, "put part");
        db->parts_rowid[*n] = sqlite3_last_insert_rowid(db->db);
        db->parts_len[*n] = len;
        (*n)++;
    }
    return KV_OK;
}
