/*
 * col_meta.c - the column vault: connection, the col_meta/col_chunks schema
 * of docs/api.md §6.2, chunk-size alignment, create/lookup/list/delete, and the
 * transaction helpers the other col_*.c files use.
 *
 * Sections: schema | transactions | vault open/close | column rows.
 */
#include "col_internal.h"
#include "store_internal.h"
#include "kvault/oprec.h"

#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------------ */
/* schema                                                                   */
/* ------------------------------------------------------------------------ */

/* docs/api.md §6.2, verbatim layout (users' files). */
static const char kvi_col_schema[] =
    "CREATE TABLE IF NOT EXISTS kohakuvault_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS col_meta(col_id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL,"
    " dtype TEXT NOT NULL, elem_size INTEGER NOT NULL, length INTEGER NOT NULL,"
    " chunk_bytes INTEGER NOT NULL, min_chunk_bytes INTEGER DEFAULT 131072,"
    " max_chunk_bytes INTEGER DEFAULT 16777216);"
    "CREATE INDEX IF NOT EXISTS col_meta_name_idx ON col_meta(name);"
    "CREATE TABLE IF NOT EXISTS col_chunks(col_id INTEGER NOT NULL, chunk_idx INTEGER NOT NULL,"
    " data BLOB NOT NULL, actual_size INTEGER NOT NULL, bytes_used INTEGER NOT NULL DEFAULT 0,"
    " has_deleted INTEGER NOT NULL DEFAULT 0, start_elem_idx INTEGER DEFAULT 0,"
    " end_elem_idx INTEGER DEFAULT 0, PRIMARY KEY (col_id, chunk_idx),"
    " FOREIGN KEY (col_id) REFERENCES col_meta(col_id) ON DELETE CASCADE);"
    "INSERT OR IGNORE INTO kohakuvault_meta(key, value) VALUES ('schema_version', '2');";

static const char *const kvi_col_sql[KVI_CS_COUNT] = {
    [KVI_CS_BEGIN_IMM] = "BEGIN IMMEDIATE",
    [KVI_CS_BEGIN] = "BEGIN",
    [KVI_CS_COMMIT] = "COMMIT",
    [KVI_CS_ROLLBACK] = "ROLLBACK",
    [KVI_CS_SEL_LEN] = "SELECT length, name FROM col_meta WHERE col_id = ?1",
    [KVI_CS_UPD_LEN] = "UPDATE col_meta SET length = ?2 WHERE col_id = ?1",
    [KVI_CS_SEL_CHUNK] = "SELECT rowid, actual_size, bytes_used FROM col_chunks"
                         " WHERE col_id = ?1 AND chunk_idx = ?2",
    [KVI_CS_INS_CHUNK] = "INSERT INTO col_chunks(col_id, chunk_idx, data, actual_size, bytes_used)"
                         " VALUES (?1, ?2, ?3, ?4, ?5)",
    [KVI_CS_UPD_CHUNK] = "UPDATE col_chunks SET data = ?2, actual_size = ?3, bytes_used = ?4"
                         " WHERE rowid = ?1",
    [KVI_CS_UPD_USED] = "UPDATE col_chunks SET bytes_used = ?2 WHERE rowid = ?1",
    [KVI_CS_SEL_LAST] = "SELECT chunk_idx, rowid, actual_size, bytes_used FROM col_chunks"
                        " WHERE col_id = ?1 ORDER BY chunk_idx DESC LIMIT 1",
};

/* ------------------------------------------------------------------------ */
/* transactions                                                             */
/* ------------------------------------------------------------------------ */

/* Step a statement whose rows are ignored, then clear its bindings (a
 * bound buffer may be freed next) and reset it. */
kv_status kvi_col_step_done(kv_colvault *cv, sqlite3_stmt *s, const char *op)
{
    int rc = sqlite3_step(s);
    sqlite3_clear_bindings(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return kvi_err_sqlite(&cv->err, cv->db, rc, op);
    return KV_OK;
}

kv_status kvi_col_begin(kv_colvault *cv, int immediate)
{
    KV_ASSERT(cv && cv->db);
    /* no transaction left open, but the one kv_colvault_tx_begin opened */
    KV_ASSERT_INTERNAL(cv->err.nest || sqlite3_get_autocommit(cv->db));
    if (immediate)
        kvi_rc_invalidate(cv); /* our write changes what the read cache holds */
    if (cv->err.nest) /* a savepoint of that transaction */
        return kvi_store_begin(&cv->err, cv->db, immediate);
    return kvi_col_step_done(cv, cv->st[immediate ? KVI_CS_BEGIN_IMM : KVI_CS_BEGIN], "begin");
}

kv_status kvi_col_commit(kv_colvault *cv)
{
    if (cv->err.nest)
        return kvi_store_commit(&cv->err, cv->db);
    kv_status st = kvi_col_step_done(cv, cv->st[KVI_CS_COMMIT], "commit");
    if (st != KV_OK)
        kvi_col_rollback(cv);
    return st;
}

void kvi_col_rollback(kv_colvault *cv)
{
    if (cv->err.nest) {
        kvi_store_rollback(&cv->err, cv->db);
        return;
    }
    if (!sqlite3_get_autocommit(cv->db)) {
        sqlite3_step(cv->st[KVI_CS_ROLLBACK]);
        sqlite3_reset(cv->st[KVI_CS_ROLLBACK]);
    }
}

kv_status kvi_col_txn(kv_colvault *cv, int immediate, kvi_col_body body, void *arg)
{
    kv_status st = kvi_col_begin(cv, immediate);
    if (st != KV_OK)
        return st;
    st = body(cv, arg);
    if (st == KV_OK)
        st = kvi_col_commit(cv);
    else
        kvi_col_rollback(cv);
    return st;
}

kv_status kvi_col_prepare_op(kv_col *col)
{
    kvi_err_clear(&col->cv->err);
    if (col->cache_on && col->cn)
        return kvi_cache_flush_locked(col, NULL);
    return KV_OK;
}

kv_status kvi_col_locked_txn(kv_colvault *cv, kv_col *col, int immediate, kvi_col_body body,
                             void *arg)
{
    kv_status st = KV_OK;
    pthread_mutex_lock(&cv->mu);
    if (col)
        st = kvi_col_prepare_op(col);
    else
        kvi_err_clear(&cv->err);
    if (st == KV_OK)
        st = kvi_col_txn(cv, immediate, body, arg);
    pthread_mutex_unlock(&cv->mu);
    return st;
}

kv_status kvi_col_range_error(kv_colvault *cv, const char *op, int64_t start, int64_t count,
                              int64_t len)
{
    return kvi_err_set(&cv->err, KV_INVALID, "%s range %lld..%lld beyond length %lld", op,
                       (long long)start, (long long)(start + count), (long long)len);
}

/* ------------------------------------------------------------------------ */
/* vault open/close                                                         */
/* ------------------------------------------------------------------------ */

/* ColumnVault does not create parent directories (docs/api.md §6.1). */
static int kvi_col_parent_exists(const char *path)
{
    if (strcmp(path, ":memory:") == 0 || strncmp(path, "file:", 5) == 0 || path[0] == '\0')
        return 1;
    char tmp[4096];
    if (strlen(path) >= sizeof tmp)
        return 1;
    strcpy(tmp, path);
    struct stat sb;
    const char *dir = dirname(tmp);
    return stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode);
}

kv_status kv_colvault_open(const char *path, int64_t min_chunk_bytes, int64_t max_chunk_bytes,
                           kv_colvault **out, char *err, size_t errlen)
{
    kv_colvault *cv = NULL;
    kvi_conn_opts o;
    kv_status st;

    *out = NULL;
    if (!path || min_chunk_bytes <= 0 || max_chunk_bytes <= 0) {
        if (err && errlen)
            snprintf(err, errlen, "invalid path or chunk sizes (min=%lld, max=%lld)",
                     (long long)min_chunk_bytes, (long long)max_chunk_bytes);
        return KV_INVALID;
    }
    if (!kvi_col_parent_exists(path)) {
        if (err && errlen)
            snprintf(err, errlen, "unable to open database file: %s (parent directory missing)", path);
        return KV_IO;
    }
    cv = kvi_calloc(1, sizeof *cv);
    if (!cv)
        return KV_NOMEM;
    pthread_mutex_init(&cv->mu, NULL);
    cv->min_chunk = min_chunk_bytes;
    cv->max_chunk = max_chunk_bytes;
    kvi_conn_opts_default(&o);
    o.nomutex = 1; /* cv->mu serialises every use */
    /* Page cache: KVI_COL_CACHE_KB (20000 KiB, 625 pages of 32 KiB)
     * instead of the KVault default of 100000 KiB. Random reads of chunks
     * still in the WAL walk each chunk's overflow-page chain up to the
     * offset, so the pages of whole 16 MiB chunks should stay cached (a
     * 2048 KiB cache made 100-element slices of a fresh 8 MB column ~700 us
     * per read-cache miss). Pages already checkpointed are read through
     * mmap and hot reads are served by the read cache (col_rcache.c). Bulk
     * appends shrink the cache while they run (col_fixed.c). */
    o.cache_kb = KVI_COL_CACHE_KB;
    st = kvi_conn_open(path, &o, &cv->db, err, errlen);
    if (st != KV_OK)
        goto fail;
    st = kvi_exec(cv->db, kvi_col_schema, &cv->err);
    if (st != KV_OK)
        goto fail_msg;
    for (int i = 0; i < KVI_CS_COUNT; i++) {
        st = kvi_prepare(cv->db, kvi_col_sql[i], &cv->st[i], &cv->err);
        if (st != KV_OK)
            goto fail_msg;
    }
    kvi_rc_open(cv);
    *out = cv;
    return KV_OK;
fail_msg:
    kvi_msg_copy(cv->err.msg, err, errlen);
fail:
    kv_colvault_close(cv);
    return st;
}

void kv_colvault_close(kv_colvault *cv)
{
    if (!cv)
        return;
    kvi_rc_close(cv);
    kvi_col_nest_done(cv);
    for (int i = 0; i < KVI_CS_COUNT; i++)
        sqlite3_finalize(cv->st[i]);
    kvi_oprec_finalize(&cv->oprec);
    if (cv->db)
        sqlite3_close_v2(cv->db);
    pthread_mutex_destroy(&cv->mu);
    kvi_free(cv);
}

const char *kv_colvault_errmsg(kv_colvault *cv)
{
    return cv->err.msg;
}

kv_status kv_colvault_checkpoint(kv_colvault *cv)
{
    pthread_mutex_lock(&cv->mu);
    sqlite3_wal_checkpoint_v2(cv->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    pthread_mutex_unlock(&cv->mu);
    return KV_OK;
}

/* sqlite3_wal_hook of a vault with a checkpointer: frames at or above
 * SQLite's wal_autocheckpoint go to the owner's function. */
static int kvi_colvault_wal_hook(void *arg, sqlite3 *db, const char *schema, int frames)
{
    (void)db;
    (void)schema;
    kv_colvault *cv = arg;
    if (frames >= KVI_AUTOCHECKPOINT_FRAMES)
        cv->ckpt_fn(cv->ckpt_ctx, frames);
    return SQLITE_OK;
}

void kv_colvault_set_checkpointer(kv_colvault *cv, kv_colvault_ckpt_fn fn, void *ctx)
{
    pthread_mutex_lock(&cv->mu);
    cv->ckpt_fn = fn;
    cv->ckpt_ctx = ctx;
    if (fn)
        sqlite3_wal_hook(cv->db, kvi_colvault_wal_hook, cv);
    else
        sqlite3_wal_autocheckpoint(cv->db, KVI_AUTOCHECKPOINT_FRAMES);
    pthread_mutex_unlock(&cv->mu);
}

void kv_colvault_set_commit_guard(kv_colvault *cv, kv_commit_guard *g)
{
    pthread_mutex_lock(&cv->mu);
    kvi_commit_guard_install(cv->db, g);
    pthread_mutex_unlock(&cv->mu);
}

kv_status kv_colvault_tx_begin(kv_colvault *cv)
{
    KV_ASSERT(cv);
    pthread_mutex_lock(&cv->mu);
    kvi_rc_invalidate(cv);
    kv_status st = kvi_store_tx_begin(&cv->err, cv->db);
    pthread_mutex_unlock(&cv->mu);
    return st;
}

kv_status kv_colvault_tx_end(kv_colvault *cv, int commit)
{
    KV_ASSERT(cv);
    pthread_mutex_lock(&cv->mu);
    kv_status st = kvi_store_tx_end(&cv->err, cv->db, commit);
    kvi_col_nest_done(cv);
    kvi_rc_invalidate(cv); /* what was read inside may be undone, or is committed now */
    pthread_mutex_unlock(&cv->mu);
    return st;
}

void kv_colvault_conn(kv_colvault *cv, kv_conn *out)
{
    *out = (kv_conn){.db = cv->db, .err = &cv->err, .stmts = &cv->oprec, .mu = &cv->mu};
}

void kv_colvault_cache_lock(kv_colvault *cv, int locked)
{
    pthread_mutex_lock(&cv->mu);
    cv->cache_locked = locked != 0;
    pthread_mutex_unlock(&cv->mu);
}

int kv_colvault_cache_locked(kv_colvault *cv)
{
    pthread_mutex_lock(&cv->mu);
    int v = cv->cache_locked;
    pthread_mutex_unlock(&cv->mu);
    return v;
}

/* ------------------------------------------------------------------------ */
/* column rows                                                              */
/* ------------------------------------------------------------------------ */

/* Prepare one-off statement `sql` with ?1 bound to `name` (borrowed until
 * the statement is finalized). */
static kv_status kvi_col_prepare_named(kv_colvault *cv, const char *sql, const char *name,
                                       sqlite3_stmt **s)
{
    kv_status st = kvi_prepare(cv->db, sql, s, &cv->err);
    if (st == KV_OK)
        sqlite3_bind_text(*s, 1, name, -1, SQLITE_STATIC);
    return st;
}

/* Run one-off statement `sql` (no rows) with ?1 = name; failures are
 * recorded as "<op>: ...". */
static kv_status kvi_col_exec_named(kv_colvault *cv, const char *sql, const char *name,
                                    const char *op)
{
    sqlite3_stmt *s = NULL;
    kv_status st = kvi_col_prepare_named(cv, sql, name, &s);
    if (st != KV_OK)
        return st;
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? KV_OK : kvi_err_sqlite(&cv->err, cv->db, rc, op);
}

/* Insert one col_meta row with aligned chunk bounds (cv->mu held, in a txn). */
static kv_status kvi_col_insert_row(kv_colvault *cv, const char *name, const char *dtype,
                                    int64_t elem, int64_t *col_id)
{
    int64_t mn = cv->min_chunk, mx = cv->max_chunk;
    sqlite3_stmt *s = NULL;
    kv_status st;
    int rc;

    if (elem < 1)
        return kvi_err_set(&cv->err, KV_INVALID, "elem_size must be >= 1 (got %lld)", (long long)elem);
    if (elem > 1) {
        mn = (mn + elem - 1) / elem * elem; /* round up */
        mx = mx / elem * elem;              /* round down */
    }
    if (mn > mx || mx <= 0)
        return kvi_err_set(&cv->err, KV_INVALID,
                           "Cannot align chunk sizes: min %lld > max %lld for elem_size %lld",
                           (long long)mn, (long long)mx, (long long)elem);
    st = kvi_col_prepare_named(cv,
                               "INSERT INTO col_meta(name, dtype, elem_size, length, chunk_bytes,"
                               " min_chunk_bytes, max_chunk_bytes)"
                               " VALUES (?1, ?2, ?3, 0, ?4, ?4, ?5)",
                               name, &s);
    if (st != KV_OK)
        return st;
    sqlite3_bind_text(s, 2, dtype, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, elem);
    sqlite3_bind_int64(s, 4, mn);
    sqlite3_bind_int64(s, 5, mx);
    rc = sqlite3_step(s);
    if (rc != SQLITE_DONE) {
        st = kvi_err_sqlite(&cv->err, cv->db, rc, NULL);
        sqlite3_finalize(s);
        return st;
    }
    sqlite3_finalize(s);
    if (col_id)
        *col_id = sqlite3_last_insert_rowid(cv->db);
    return KV_OK;
}

/* The col_meta rows one create inserts (a fixed column, or the _data and
 * _idx columns of a variable-size pair). */
typedef struct kvi_new_cols {
    int n;
    const char *name[2];
    const char *dtype[2];
    int64_t elem[2];
    int64_t *id[2];
} kvi_new_cols;

/* Names of the _data and _idx columns of variable-size column `name`
 * (at most 1000 bytes, checked by the caller). */
static void kvi_var_names(const char *name, char nd[1100], char ni[1100])
{
    snprintf(nd, 1100, "%s_data", name);
    snprintf(ni, 1100, "%s_idx", name);
}

static kv_status kvi_col_create_body(kv_colvault *cv, void *arg)
{
    const kvi_new_cols *a = arg;
    kv_status st = KV_OK;
    for (int i = 0; i < a->n && st == KV_OK; i++)
        st = kvi_col_insert_row(cv, a->name[i], a->dtype[i], a->elem[i], a->id[i]);
    return st;
}

kv_status kv_col_create(kv_colvault *cv, const char *name, const char *dtype, int64_t elem_size,
                        int64_t *col_id)
{
    kvi_new_cols a = {1, {name}, {dtype}, {elem_size}, {col_id}};
    return kvi_col_locked_txn(cv, NULL, 1, kvi_col_create_body, &a);
}

kv_status kv_col_create_var(kv_colvault *cv, const char *name, const char *dtype, int64_t *data_id,
                            int64_t *idx_id)
{
    char nd[1100], ni[1100];
    if (strlen(name) > 1000)
        return KV_INVALID;
    kvi_var_names(name, nd, ni);
    kvi_new_cols a = {2, {nd, ni}, {dtype, KV_COL_IDX_DTYPE}, {1, KV_COL_IDX_ELEM}, {data_id, idx_id}};
    return kvi_col_locked_txn(cv, NULL, 1, kvi_col_create_body, &a);
}

/* Fill *out from a statement positioned on a full col_meta row
 * (col_id, dtype, elem_size, length, chunk_bytes, min, max). */
static void kvi_col_row_info(sqlite3_stmt *s, kv_col_info *out)
{
    out->ci_col_id = sqlite3_column_int64(s, 0);
    const unsigned char *d = sqlite3_column_text(s, 1);
    snprintf(out->ci_dtype, sizeof out->ci_dtype, "%s", d ? (const char *)d : "");
    out->ci_elem_size = sqlite3_column_int64(s, 2);
    out->ci_length = sqlite3_column_int64(s, 3);
    out->ci_chunk_bytes = sqlite3_column_int64(s, 4);
    out->ci_min_chunk = sqlite3_column_type(s, 5) == SQLITE_NULL ? KV_COL_MIN_CHUNK_DEFAULT
                                                                 : sqlite3_column_int64(s, 5);
    out->ci_max_chunk = sqlite3_column_type(s, 6) == SQLITE_NULL ? KV_COL_MAX_CHUNK_DEFAULT
                                                                 : sqlite3_column_int64(s, 6);
}

static kv_status kvi_col_info_by(kv_colvault *cv, const char *where, const char *name,
                                 int64_t id, kv_col_info *out)
{
    char sql[256];
    sqlite3_stmt *s = NULL;
    kv_status st;
    snprintf(sql, sizeof sql,
             "SELECT col_id, dtype, elem_size, length, chunk_bytes, min_chunk_bytes,"
             " max_chunk_bytes FROM col_meta WHERE %s = ?1", where);
    st = kvi_prepare(cv->db, sql, &s, &cv->err);
    if (st != KV_OK)
        return st;
    if (name)
        sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
    else
        sqlite3_bind_int64(s, 1, id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        kvi_col_row_info(s, out);
        st = KV_OK;
        /* the row is input from the file: a negative length is refused
         * before any caller takes it as a count (kvi_fx_length checks the
         * length it re-reads the same way) */
        if (out->ci_length < 0)
            st = kvi_err_set(&cv->err, KV_CORRUPT,
                             "column %s%s%s (col_meta row %lld) has a negative length (%lld): the "
                             "file is corrupt; col_meta.length must be >= 0",
                             name ? "'" : "", name ? name : "", name ? "'" : "",
                             (long long)out->ci_col_id, (long long)out->ci_length);
    } else if (rc == SQLITE_DONE) {
        st = kvi_err_set(&cv->err, KV_NOTFOUND, "column not found");
    } else {
        st = kvi_err_sqlite(&cv->err, cv->db, rc, "col_meta lookup");
    }
    sqlite3_finalize(s);
    return st;
}

kv_status kv_col_info_get(kv_colvault *cv, const char *name, kv_col_info *out)
{
    pthread_mutex_lock(&cv->mu);
    kv_status st = kvi_col_info_by(cv, "name", name, 0, out);
    pthread_mutex_unlock(&cv->mu);
    return st;
}

/* Load geometry of col_id (cv->mu held). */
kv_status kvi_fx_load(kv_colvault *cv, int64_t col_id, kvi_fx *fx)
{
    kv_col_info ci;
    kv_status st = kvi_col_info_by(cv, "col_id", NULL, col_id, &ci);
    if (st != KV_OK)
        return st;
    fx->col_id = col_id;
    fx->elem = ci.ci_elem_size;
    fx->min = ci.ci_min_chunk;
    fx->max = ci.ci_max_chunk;
    if (fx->elem < 1 || fx->max < fx->elem || fx->min < 1 || fx->max % fx->elem != 0)
        return kvi_err_set(&cv->err, KV_CORRUPT,
                           "col_meta row %lld has inconsistent sizes (elem %lld, min %lld, max %lld)",
                           (long long)col_id, (long long)fx->elem, (long long)fx->min,
                           (long long)fx->max);
    return KV_OK;
}

kv_status kv_col_list(kv_colvault *cv, kv_col_list_fn fn, void *ctx)
{
    sqlite3_stmt *s = NULL;
    kv_status st;
    pthread_mutex_lock(&cv->mu);
    st = kvi_prepare(cv->db, "SELECT name, dtype, length FROM col_meta ORDER BY col_id", &s, &cv->err);
    if (st != KV_OK)
        goto out;
    for (;;) {
        int rc = sqlite3_step(s);
        if (rc == SQLITE_DONE)
            break;
        if (rc != SQLITE_ROW) {
            st = kvi_err_sqlite(&cv->err, cv->db, rc, "list columns");
            break;
        }
        if (fn(ctx, (const char *)sqlite3_column_text(s, 0), (const char *)sqlite3_column_text(s, 1),
               sqlite3_column_int64(s, 2))) {
            st = KV_CALLBACK;
            break;
        }
    }
    sqlite3_finalize(s);
out:
    pthread_mutex_unlock(&cv->mu);
    return st;
}

kv_status kv_col_count(kv_colvault *cv, int64_t *n)
{
    sqlite3_stmt *s = NULL;
    kv_status st;
    pthread_mutex_lock(&cv->mu);
    st = kvi_prepare(cv->db, "SELECT count(*) FROM col_meta", &s, &cv->err);
    if (st == KV_OK) {
        int rc = sqlite3_step(s);
        if (rc == SQLITE_ROW)
            *n = sqlite3_column_int64(s, 0);
        else
            st = kvi_err_sqlite(&cv->err, cv->db, rc, "count columns");
        sqlite3_finalize(s);
    }
    pthread_mutex_unlock(&cv->mu);
    return st;
}

/* Delete the row named `name` and its chunks; *n += rows removed. */
static kv_status kvi_col_delete_one(kv_colvault *cv, const char *name, int *n)
{
    kv_status st = kvi_col_exec_named(cv,
                                      "DELETE FROM col_chunks WHERE col_id IN"
                                      " (SELECT col_id FROM col_meta WHERE name = ?1)",
                                      name, "delete chunks");
    if (st == KV_OK)
        st = kvi_col_exec_named(cv, "DELETE FROM col_meta WHERE name = ?1", name, "delete column");
    if (st == KV_OK)
        *n += sqlite3_changes(cv->db);
    return st;
}

/* Arguments of kvi_col_delete_body. */
typedef struct kvi_del_op {
    const char *name;
    int n;            /* rows deleted */
} kvi_del_op;

/* Delete column `name`, or else the pair name_data/name_idx when both exist. */
static kv_status kvi_col_delete_body(kv_colvault *cv, void *arg)
{
    kvi_del_op *a = arg;
    char nd[1100], ni[1100];
    kv_col_info ci;
    kv_status st = kvi_col_delete_one(cv, a->name, &a->n);
    if (st == KV_OK && a->n == 0) {
        kvi_var_names(a->name, nd, ni);
        if (kvi_col_info_by(cv, "name", nd, 0, &ci) == KV_OK &&
            kvi_col_info_by(cv, "name", ni, 0, &ci) == KV_OK) {
            st = kvi_col_delete_one(cv, nd, &a->n);
            if (st == KV_OK)
                st = kvi_col_delete_one(cv, ni, &a->n);
        }
        kvi_err_clear(&cv->err);
    }
    return st;
}

kv_status kv_col_delete(kv_colvault *cv, const char *name, int *deleted)
{
    kvi_del_op a = {name, 0};
    *deleted = 0;
    if (strlen(name) > 1000)
        return KV_INVALID;
    kv_status st = kvi_col_locked_txn(cv, NULL, 1, kvi_col_delete_body, &a);
    if (st == KV_OK)
        *deleted = a.n > 0;
    return st;
}
