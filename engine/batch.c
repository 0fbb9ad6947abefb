/*
 * batch.c - the shared-mode writer's commit backend over SQLite (batch.h).
 *
 * One connection of its own (NOMUTEX: the writer is single-threaded), four
 * prepared statements for the rows and two for the sequence row. A batch is
 * one BEGIN IMMEDIATE ... COMMIT transaction; kv_batch_commit writes the
 * batch's last sequence number into kohakuvault_meta inside that same
 * transaction, which is what makes a crash replay idempotent.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "kvault/batch.h"

struct kv_batch {
    sqlite3 *db;                /* owned connection */
    char seq_key[160];          /* "writer_seq:<table>" */
    sqlite3_stmt *st_put;       /* upsert into the table */
    sqlite3_stmt *st_del;       /* DELETE FROM t WHERE key=?1 */
    sqlite3_stmt *st_seq_get;   /* SELECT value FROM kohakuvault_meta WHERE key=?1 */
    sqlite3_stmt *st_seq_set;   /* INSERT OR REPLACE INTO kohakuvault_meta */
    int in_batch;               /* a BEGIN IMMEDIATE is open */
    kvi_err err;                /* last failure */
};

kv_status kv_batch_process_init(void)
{
    return sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0) == SQLITE_OK ? KV_OK : KV_SQLITE;
}

void kv_batch_opts_default(kv_batch_opts *o)
{
    o->table = "kv";
    o->synchronous = 1;
    o->busy_timeout_ms = 5000;
    o->no_autocheckpoint = 0;
}

static void finalize_all(kv_batch *b)
{
    sqlite3_finalize(b->st_put);
    sqlite3_finalize(b->st_del);
    sqlite3_finalize(b->st_seq_get);
    sqlite3_finalize(b->st_seq_set);
    b->st_put = b->st_del = b->st_seq_get = b->st_seq_set = NULL;
}

kv_status kv_batch_open(const char *path, const kv_batch_opts *o, kv_batch **out,
                        char *err, size_t errlen)
{
    static const char *sync_names[] = {"OFF", "NORMAL", "FULL", "EXTRA"};
    kv_batch_opts def;
    kvi_conn_opts co;
    char sql[512];
    kv_status st;
    kv_batch *b = NULL;

    *out = NULL;
    if (!o) {
        kv_batch_opts_default(&def);
        o = &def;
    }
    const char *table = o->table ? o->table : "kv";
    if (kvi_table_name_valid(table) != KV_OK) {
        if (err && errlen) snprintf(err, errlen, "Invalid table name: %s", table);
        return KV_INVALID;
    }
    if (o->synchronous < 0 || o->synchronous > 3) {
        if (err && errlen) snprintf(err, errlen, "synchronous must be 0..3, got %d", o->synchronous);
        return KV_INVALID;
    }
    b = kvi_calloc(1, sizeof *b);
    if (!b) {
        if (err && errlen) snprintf(err, errlen, "out of memory");
        return KV_NOMEM;
    }
    snprintf(b->seq_key, sizeof b->seq_key, "writer_seq:%s", table);

    kvi_conn_opts_default(&co);
    co.busy_timeout_ms = o->busy_timeout_ms > 0 ? o->busy_timeout_ms : 5000;
    co.nomutex = 1;
    if ((st = kvi_conn_open(path, &co, &b->db, err, errlen)) != KV_OK)
        goto fail_quiet;
    snprintf(sql, sizeof sql,
             "PRAGMA synchronous=%s;"
             "CREATE TABLE IF NOT EXISTS %s (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL);"
             "CREATE TABLE IF NOT EXISTS kohakuvault_meta (key TEXT PRIMARY KEY, value BLOB)",
             sync_names[o->synchronous], table);
    if ((st = kvi_exec(b->db, sql, &b->err)) != KV_OK) goto fail;
    if (o->no_autocheckpoint &&
        (st = kvi_exec(b->db, "PRAGMA wal_autocheckpoint=0", &b->err)) != KV_OK)
        goto fail;
    snprintf(sql, sizeof sql,
             "INSERT INTO %s(key, value) VALUES(?1, ?2) "
             "ON CONFLICT(key) DO UPDATE SET value=excluded.value", table);
    if ((st = kvi_prepare(b->db, sql, &b->st_put, &b->err)) != KV_OK) goto fail;
    snprintf(sql, sizeof sql, "DELETE FROM %s WHERE key=?1", table);
    if ((st = kvi_prepare(b->db, sql, &b->st_del, &b->err)) != KV_OK) goto fail;
    if ((st = kvi_prepare(b->db, "SELECT value FROM kohakuvault_meta WHERE key=?1",
                          &b->st_seq_get, &b->err)) != KV_OK) goto fail;
    if ((st = kvi_prepare(b->db, "INSERT OR REPLACE INTO kohakuvault_meta(key, value) "
                          "VALUES(?1, ?2)", &b->st_seq_set, &b->err)) != KV_OK) goto fail;
    *out = b;
    return KV_OK;

fail:
    kvi_msg_copy(b->err.msg, err, errlen);
fail_quiet:
    finalize_all(b);
    if (b->db) sqlite3_close_v2(b->db);
    kvi_free(b);
    return st;
}

void kv_batch_close(kv_batch *b)
{
    if (!b) return;
    kv_batch_rollback(b);
    finalize_all(b);
    sqlite3_close_v2(b->db);
    kvi_free(b);
}

const char *kv_batch_errmsg(const kv_batch *b)
{
    return b ? b->err.msg : "";
}

int kv_batch_sqlite_errcode(const kv_batch *b)
{
    return b ? b->err.sqlite_rc : 0;
}

/* Run a one-shot statement to completion (SQLITE_DONE). */
static kv_status step_done(kv_batch *b, sqlite3_stmt *s, const char *op)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc == SQLITE_DONE) return KV_OK;
    return kvi_err_sqlite(&b->err, b->db, rc, op);
}

kv_status kv_batch_last_seq(kv_batch *b, uint64_t *seq)
{
    kvi_err_clear(&b->err);
    *seq = 0;
    sqlite3_bind_text(b->st_seq_get, 1, b->seq_key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(b->st_seq_get);
    kv_status st = KV_OK;
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(b->st_seq_get, 0);
        char *end = NULL;
        unsigned long long v = t ? strtoull((const char *)t, &end, 10) : 0;
        if (!t || end == (const char *)t || *end)
            st = kvi_err_set(&b->err, KV_CORRUPT, "last_seq: stored sequence is not a number");
        else
            *seq = (uint64_t)v;
    } else if (rc != SQLITE_DONE) {
        st = kvi_err_sqlite(&b->err, b->db, rc, "last_seq");
    }
    sqlite3_reset(b->st_seq_get);
    sqlite3_clear_bindings(b->st_seq_get);
    return st;
}

kv_status kv_batch_begin(kv_batch *b)
{
    kvi_err_clear(&b->err);
    if (b->in_batch)
        return kvi_err_set(&b->err, KV_INVALID, "begin: a batch is already open");
    kv_status st = kvi_exec(b->db, "BEGIN IMMEDIATE", &b->err);
    if (st == KV_OK) b->in_batch = 1;
    return st;
}

kv_status kv_batch_put(kv_batch *b, const void *key, size_t klen, const void *val,
                       size_t vlen)
{
    if (!b->in_batch) return kvi_err_set(&b->err, KV_INVALID, "put: no batch open");
    sqlite3_bind_blob64(b->st_put, 1, klen ? key : "", klen, SQLITE_STATIC);
    sqlite3_bind_blob64(b->st_put, 2, vlen ? val : "", vlen, SQLITE_STATIC);
    return step_done(b, b->st_put, "batch put");
}

kv_status kv_batch_delete(kv_batch *b, const void *key, size_t klen)
{
    if (!b->in_batch) return kvi_err_set(&b->err, KV_INVALID, "delete: no batch open");
    sqlite3_bind_blob64(b->st_del, 1, klen ? key : "", klen, SQLITE_STATIC);
    return step_done(b, b->st_del, "batch delete");
}

kv_status kv_batch_commit(kv_batch *b, uint64_t last_seq)
{
    char num[32];
    kv_status st;
    if (!b->in_batch) return kvi_err_set(&b->err, KV_INVALID, "commit: no batch open");
    uint64_t prev = 0;
    sqlite3_bind_text(b->st_seq_get, 1, b->seq_key, -1, SQLITE_STATIC);
    if (sqlite3_step(b->st_seq_get) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(b->st_seq_get, 0);
        prev = t ? strtoull((const char *)t, NULL, 10) : 0;
    }
    sqlite3_reset(b->st_seq_get);
    sqlite3_clear_bindings(b->st_seq_get);
    if (last_seq < prev) {
        st = kvi_err_set(&b->err, KV_INVALID,
                         "commit: sequence %" PRIu64 " below the stored %" PRIu64, last_seq, prev);
        goto fail;
    }
    snprintf(num, sizeof num, "%" PRIu64, last_seq);
    sqlite3_bind_text(b->st_seq_set, 1, b->seq_key, -1, SQLITE_STATIC);
    sqlite3_bind_text(b->st_seq_set, 2, num, -1, SQLITE_STATIC);
    if ((st = step_done(b, b->st_seq_set, "commit: store sequence")) != KV_OK) goto fail;
    if ((st = kvi_exec(b->db, "COMMIT", &b->err)) != KV_OK) goto fail;
    b->in_batch = 0;
    return KV_OK;
fail:
    kv_batch_rollback(b);
    return st;
}

void kv_batch_rollback(kv_batch *b)
{
    if (!b || !b->in_batch) return;
    if (!sqlite3_get_autocommit(b->db)) {
        kvi_err keep = b->err;
        kvi_exec(b->db, "ROLLBACK", &b->err);
        b->err = keep;
    }
    b->in_batch = 0;
}

kv_status kv_batch_checkpoint(kv_batch *b, int *wal_frames)
{
    int log = -1, ckpt = -1;
    if (wal_frames) *wal_frames = -1;
    if (b->in_batch) return kvi_err_set(&b->err, KV_INVALID, "checkpoint: inside a batch");
    if (sqlite3_wal_checkpoint_v2(b->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &ckpt) == SQLITE_OK
        && wal_frames)
        *wal_frames = log;
    return KV_OK;
}

/* ---- whole-database images (cluster snapshots) ------------------------------ */

/* A new in-memory database with the page size of b's file (the backup API
 * refuses to copy between databases of different page sizes when the
 * destination is in memory or in WAL mode). */
static kv_status open_mem_like(kv_batch *b, sqlite3 **mem, const char *op)
{
    sqlite3_stmt *st;
    int page = 0, rc = sqlite3_prepare_v2(b->db, "PRAGMA page_size", -1, &st, NULL);
    if (rc != SQLITE_OK) return kvi_err_sqlite(&b->err, b->db, rc, op);
    if (sqlite3_step(st) == SQLITE_ROW) page = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (sqlite3_open(":memory:", mem) != SQLITE_OK) {
        sqlite3_close(*mem);
        *mem = NULL;
        return kvi_err_set(&b->err, KV_NOMEM, "%s: cannot open an in-memory database", op);
    }
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA page_size=%d", page > 0 ? page : 4096);
    return kvi_exec(*mem, sql, &b->err);
}

/* Copy the whole of database `from` into `to` with the backup API. */
static kv_status backup_all(kv_batch *b, sqlite3 *to, sqlite3 *from, const char *op)
{
    sqlite3_backup *bk = sqlite3_backup_init(to, "main", from, "main");
    if (!bk) return kvi_err_sqlite(&b->err, to, sqlite3_errcode(to), op);
    int rc = sqlite3_backup_step(bk, -1);
    int fin = sqlite3_backup_finish(bk);
    if (rc == SQLITE_DONE) rc = fin;
    if (rc == SQLITE_OK || rc == SQLITE_DONE) return KV_OK;
    if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
        return kvi_err_set(&b->err, KV_BUSY, "%s: the database is busy", op);
    if (rc == SQLITE_READONLY)
        return kvi_err_set(&b->err, KV_INVALID, "%s: the image's page size is not the file's", op);
    if (rc == SQLITE_NOMEM) return kvi_err_set(&b->err, KV_NOMEM, "%s: out of memory", op);
    return kvi_err_set(&b->err, KV_SQLITE, "%s: %s", op, sqlite3_errstr(rc));
}

kv_status kv_batch_snapshot(kv_batch *b, void **image, size_t *len)
{
    kvi_err_clear(&b->err);
    *image = NULL;
    *len = 0;
    if (b->in_batch) return kvi_err_set(&b->err, KV_INVALID, "snapshot: inside a batch");
    sqlite3 *mem = NULL;
    kv_status st = open_mem_like(b, &mem, "snapshot");
    if (st == KV_OK) st = backup_all(b, mem, b->db, "snapshot");
    if (st == KV_OK) {
        sqlite3_int64 n = 0;
        unsigned char *bytes = sqlite3_serialize(mem, "main", &n, 0);
        void *copy = bytes && n > 0 ? malloc((size_t)n) : NULL;
        if (!copy) {
            st = kvi_err_set(&b->err, KV_NOMEM, "snapshot: out of memory (%lld bytes)",
                             (long long)n);
        } else {
            memcpy(copy, bytes, (size_t)n);
            *image = copy;
            *len = (size_t)n;
        }
        sqlite3_free(bytes);
    }
    sqlite3_close(mem);
    return st;
}

kv_status kv_batch_restore(kv_batch *b, const void *image, size_t len)
{
    kvi_err_clear(&b->err);
    if (b->in_batch) return kvi_err_set(&b->err, KV_INVALID, "restore: inside a batch");
    if (len < 100 || memcmp(image, "SQLite format 3", 16) != 0)
        return kvi_err_set(&b->err, KV_INVALID, "restore: not a database image");
    sqlite3 *mem = NULL;
    kv_status st = open_mem_like(b, &mem, "restore");
    unsigned char *copy = st == KV_OK ? sqlite3_malloc64(len) : NULL;
    if (st == KV_OK && !copy) st = kvi_err_set(&b->err, KV_NOMEM, "restore: out of memory");
    if (st == KV_OK) {
        memcpy(copy, image, len);
        /* The image of a WAL-mode file says so in its header (file format
         * bytes 18 and 19 = 2), and an in-memory database cannot open a WAL:
         * read it as a rollback-journal image (1). The destination keeps its
         * own journal mode. */
        copy[18] = copy[19] = 1;
        /* SQLite owns `copy` from here, even when this fails */
        int rc = sqlite3_deserialize(mem, "main", copy, (sqlite3_int64)len,
                                     (sqlite3_int64)len, SQLITE_DESERIALIZE_FREEONCLOSE |
                                     SQLITE_DESERIALIZE_READONLY);
        if (rc != SQLITE_OK) st = kvi_err_sqlite(&b->err, mem, rc, "restore: deserialize");
    }
    if (st == KV_OK) st = backup_all(b, b->db, mem, "restore");
    sqlite3_close(mem);
    return st;
}
