/*
 * conn.c - opening SQLite connections with kohakuvault's pragmas, table
 * name validation, and small statement helpers. Every engine module that
 * needs a connection (kv.c here; columns, text and vectors elsewhere) opens
 * it through kvi_conn_open so that all of them agree on the pragmas of
 * docs/api.md §4.1.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void kvi_conn_opts_default(kvi_conn_opts *o)
{
    o->enable_wal = 1;
    o->page_size = 32768;
    o->mmap_size = 268435456;
    o->cache_kb = 100000;
    o->busy_timeout_ms = 5000;
    o->nomutex = 0;
}

kv_status kvi_table_name_valid(const char *name)
{
    if (!name || !name[0])
        return KV_INVALID;
    size_t n = 0;
    for (const char *p = name; *p; p++, n++) {
        char c = *p;
        int alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
        int digit = c >= '0' && c <= '9';
        if (!(alpha || (n > 0 && digit)))
            return KV_INVALID;
        if (n >= 128)
            return KV_INVALID;
    }
    return KV_OK;
}

kv_status kvi_exec(sqlite3 *db, const char *sql, kvi_err *e)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return kvi_err_sqlite(e, db, rc, NULL);
    return KV_OK;
}

kv_status kvi_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **out, kvi_err *e)
{
    int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, NULL);
    if (rc != SQLITE_OK) {
        *out = NULL;
        return kvi_err_sqlite(e, db, rc, "prepare");
    }
    return KV_OK;
}

/* Create every missing parent directory of `path` (like mkdir -p of its
 * dirname). Returns 0 or an errno value. */
static int make_parents(const char *path)
{
    size_t n = strlen(path);
    char *buf = kvi_malloc(n + 1);
    if (!buf)
        return ENOMEM;
    memcpy(buf, path, n + 1);
    char *slash = strrchr(buf, '/');
    int err = 0;
    if (!slash || slash == buf)
        goto done;
    *slash = '\0';
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST) {
                err = errno;
                goto done;
            }
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
done:
    kvi_free(buf);
    return err;
}

static int is_special_path(const char *path)
{
    return path[0] == '\0' || strcmp(path, ":memory:") == 0 ||
           strncmp(path, "file:", 5) == 0;
}

kv_status kvi_conn_open(const char *path, const kvi_conn_opts *o, sqlite3 **out,
                        char *err, size_t errlen)
{
    kvi_err e;
    sqlite3 *db = NULL;
    char sql[128];
    kv_status st;
    int is_new = 1;

    kvi_err_clear(&e);
    *out = NULL;
    if (!path) {
        st = kvi_err_set(&e, KV_INVALID, "path is NULL");
        goto fail;
    }
    if (!is_special_path(path)) {
        struct stat sb;
        int mk = make_parents(path);
        if (mk) {
            st = kvi_err_os(&e, mk, "create parent directories");
            goto fail;
        }
        if (stat(path, &sb) == 0 && sb.st_size > 0)
            is_new = 0;
    }
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI |
                (o->nomutex ? SQLITE_OPEN_NOMUTEX : SQLITE_OPEN_FULLMUTEX);
    int rc = sqlite3_open_v2(path, &db, flags, NULL);
    if (rc != SQLITE_OK) {
        st = kvi_err_sqlite(&e, db, rc, "open");
        goto fail;
    }
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, o->busy_timeout_ms);

    if (is_new && o->page_size > 0) {
        snprintf(sql, sizeof sql, "PRAGMA page_size=%d", o->page_size);
        if ((st = kvi_exec(db, sql, &e)) != KV_OK)
            goto fail;
    }
    if (o->enable_wal) {
        if ((st = kvi_exec(db, "PRAGMA journal_mode=WAL", &e)) != KV_OK)
            goto fail;
        rc = sqlite3_wal_autocheckpoint(db, KVI_AUTOCHECKPOINT_FRAMES);
        if (rc != SQLITE_OK) {
            st = kvi_err_sqlite(&e, db, rc, "wal_autocheckpoint");
            goto fail;
        }
    }
    if ((st = kvi_exec(db, "PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY", &e)) != KV_OK)
        goto fail;
    if (o->mmap_size >= 0) {
        snprintf(sql, sizeof sql, "PRAGMA mmap_size=%lld", (long long)o->mmap_size);
        if ((st = kvi_exec(db, sql, &e)) != KV_OK)
            goto fail;
    }
    if (o->cache_kb != 0) {
        snprintf(sql, sizeof sql, "PRAGMA cache_size=%lld", -(long long)o->cache_kb);
        if ((st = kvi_exec(db, sql, &e)) != KV_OK)
            goto fail;
    }
    *out = db;
    return KV_OK;

fail:
    if (db)
        sqlite3_close_v2(db);
    kvi_msg_copy(e.msg, err, errlen);
    return st;
}

/* ---- commit guard (kvault.h, kv_db_set_commit_guard) ---------------------
 * sqlite3_commit_hook runs while the write transaction holds SQLite's write
 * lock, before the commit; a nonzero return turns the COMMIT into a
 * ROLLBACK. The data version of the connection changes only when another
 * connection committed (https://sqlite.org/c3ref/c_fcntl_begin_atomic_write.html,
 * SQLITE_FCNTL_DATA_VERSION), so a check whose answer could not have changed
 * since it last let a commit through is skipped. */
static int guard_hook(void *p)
{
    kv_commit_guard *g = p;
    if (g->bypass)
        return 0;
    unsigned dv = 0;
    if (sqlite3_file_control(g->conn, "main", SQLITE_FCNTL_DATA_VERSION, &dv) != SQLITE_OK)
        g->checked = 0;
    else if (g->checked && dv == g->data_version)
        return 0;
    if (g->check(g->ctx)) {
        g->refused = 1;
        return 1;
    }
    g->data_version = dv;
    g->checked = 1;
    return 0;
}

void kvi_commit_guard_install(sqlite3 *db, kv_commit_guard *g)
{
    if (g) {
        g->conn = db;
        g->checked = 0;
    }
    sqlite3_commit_hook(db, g ? guard_hook : NULL, g);
}

KV_API void kv_db_set_commit_guard(kv_db *db, kv_commit_guard *g)
{
    kvi_commit_guard_install(db->db, g);
}
