/* kvtest_util.h - shared helpers of the engine's Criterion tests: per-test
 * temporary directories, opening a KVault, one-value SQL queries on a file. */
#ifndef KVTEST_UTIL_H
#define KVTEST_UTIL_H
#include <criterion/criterion.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvault/kvault.h"

/* Make a fresh directory under $KV_TEST_TMP (or /tmp) and return `name`
 * inside it in buf. */
static inline const char *kvtest_path(char *buf, size_t n, const char *name)
{
    const char *base = getenv("KV_TEST_TMP");
    char dir[512];
    if (!base || !*base)
        base = "/tmp";
    mkdir(base, 0777);
    snprintf(dir, sizeof dir, "%s/kvtest-XXXXXX", base);
    if (!mkdtemp(dir))
        abort();
    if ((size_t)snprintf(buf, n, "%s/%s", dir, name) >= n)
        abort();   /* the caller's buffer is too small for the path */
    return buf;
}

/* Remove the directory kvtest_path made for `path` (the file's parent). */
static inline void kvtest_remove_dir_of(const char *path)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%.*s'", (int)(strrchr(path, '/') - path), path);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", path);
}

/* Let the fd streaming calls use io_uring (uring != 0) or force their
 * plain read/write fallback (KV_NO_URING). */
static inline void kvtest_select_uring(int uring)
{
    if (uring)
        unsetenv("KV_NO_URING");
    else
        setenv("KV_NO_URING", "1", 1);
}

/* A kv_put_stream source reading bytes p[0..n) from `off` on, at most
 * max_read bytes a call (0: as many as asked; smaller reads exercise the
 * callers' short-read handling). */
typedef struct kvtest_src {
    const uint8_t *p;
    size_t n, off, max_read;
} kvtest_src;

/* The read callback of a kvtest_src (ctx). */
static inline int64_t kvtest_src_read(void *ctx, void *buf, size_t cap)
{
    kvtest_src *s = ctx;
    size_t k = s->n - s->off < cap ? s->n - s->off : cap;
    if (s->max_read && k > s->max_read)
        k = s->max_read;
    memcpy(buf, s->p + s->off, k);
    s->off += k;
    return (int64_t)k;
}

/* Open the KVault of `path` with the default options; the test fails
 * unless that succeeds. */
static inline kv_db *kvtest_open_db(const char *path)
{
    kv_db *db = NULL;
    kv_open_opts o;
    char err[256] = "";
    kv_open_opts_default(&o);
    cr_assert(kv_db_open(path, &o, &db, err, sizeof err) == KV_OK, "%s", err);
    return db;
}

/* Run `sql` on a new SQLite connection to `path` and return a copy of the
 * first column of its first row (sqlite3_value_free it); the test fails
 * when the statement does not give a row. */
static inline sqlite3_value *kvtest_sql_value(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    cr_assert(sqlite3_open(path, &db) == SQLITE_OK, "%s", path);
    cr_assert(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql,
              sqlite3_errmsg(db));
    cr_assert(sqlite3_step(st) == SQLITE_ROW, "%s: no row", sql);
    sqlite3_value *v = sqlite3_value_dup(sqlite3_column_value(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    cr_assert(v != NULL);
    return v;
}

/* kvtest_sql_value as an integer. */
static inline sqlite3_int64 kvtest_sql_i64(const char *path, const char *sql)
{
    sqlite3_value *v = kvtest_sql_value(path, sql);
    sqlite3_int64 r = sqlite3_value_int64(v);
    sqlite3_value_free(v);
    return r;
}

/* kvtest_sql_value as a double. */
static inline double kvtest_sql_double(const char *path, const char *sql)
{
    sqlite3_value *v = kvtest_sql_value(path, sql);
    double r = sqlite3_value_double(v);
    sqlite3_value_free(v);
    return r;
}

/* kvtest_sql_value as text copied into buf[0..n) (truncated). */
static inline char *kvtest_sql_text(const char *path, const char *sql, char *buf, size_t n)
{
    sqlite3_value *v = kvtest_sql_value(path, sql);
    const unsigned char *t = sqlite3_value_text(v);
    snprintf(buf, n, "%s", t ? (const char *)t : "");
    sqlite3_value_free(v);
    return buf;
}
#endif
