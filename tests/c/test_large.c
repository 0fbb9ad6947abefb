/* test_large.c - values longer than SQLite's length limit, stored as parts
 * in <table>_parts (engine/large.c, docs/storage-layout.md). The limit is
 * lowered to 1 MiB on the test connection (sqlite3_limit) so that parts of
 * 512 KiB are exercised with small files: in-memory put/get, fd and
 * callback streams (io_uring and plain), overwrite with a small value,
 * delete, put_many, a foreign writer (triggers), short input, and kill
 * safety of put_fd (a SIGKILLed child leaves the old value intact). */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdint.h>
#include <sys/wait.h>

#include "internal.h"
#include "kvtest_util.h"

#define LIMIT (1 << 20)
#define PART (512 << 10)

static kv_db *open_small(const char *path)
{
    kv_db *db = NULL;
    char err[256];
    cr_assert(eq(int, kv_db_open(path, NULL, &db, err, sizeof err), KV_OK), "%s", err);
    sqlite3_limit(db->db, SQLITE_LIMIT_LENGTH, LIMIT);
    return db;
}

static uint8_t *pattern(size_t n, uint32_t seed)
{
    uint8_t *p = malloc(n);
    cr_assert(not(eq(ptr, p, NULL)));
    uint32_t x = seed | 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 17; x ^= x << 5;
        p[i] = (uint8_t)x;
    }
    return p;
}

/* Number of part rows stored for `key` (read with plain SQLite). */
static int nparts(const char *path, const char *key)
{
    sqlite3 *s;
    sqlite3_stmt *st;
    int n = -1;
    cr_assert(eq(int, sqlite3_open(path, &s), SQLITE_OK));
    if (sqlite3_prepare_v2(s, "SELECT count(*) FROM kv_parts WHERE key=?1", -1, &st, NULL) != SQLITE_OK) {
        sqlite3_close(s);
        return 0;   /* no parts table yet */
    }
    sqlite3_bind_blob(st, 1, key, (int)strlen(key), SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(s);
    return n;
}

static void expect_value(kv_db *db, const char *key, const uint8_t *want, size_t n)
{
    const void *v;
    size_t vn;
    cr_assert(eq(int, kv_get(db, key, strlen(key), &v, &vn), KV_OK), "%s", kv_db_errmsg(db));
    cr_assert(eq(sz, vn, n));
    cr_assert(eq(int, memcmp(v, want, n), 0), "value of %s differs", key);
    kv_get_done(db);
}

typedef struct { uint8_t *p; size_t n, cap; } sink;
static int sink_wr(void *c, const void *buf, size_t len)
{
    sink *s = c;
    if (s->n + len > s->cap)
        return -1;
    memcpy(s->p + s->n, buf, len);
    s->n += len;
    return 0;
}

/* get_to_fd into a temp file and compare with want. */
static void expect_fd(kv_db *db, const char *dir_file, const char *key, const uint8_t *want, size_t n,
                      size_t chunk)
{
    char dst[700];
    snprintf(dst, sizeof dst, "%s.out", dir_file);
    int fd = open(dst, O_CREAT | O_TRUNC | O_RDWR, 0600);
    cr_assert(fd >= 0);
    uint64_t w = 0;
    cr_assert(eq(int, kv_get_to_fd(db, key, strlen(key), fd, chunk, &w), KV_OK), "%s", kv_db_errmsg(db));
    cr_assert(eq(u64, w, n));
    uint8_t *back = malloc(n + 1);
    cr_assert(eq(sz, (size_t)pread(fd, back, n + 1, 0), n));
    cr_assert(eq(int, memcmp(back, want, n), 0), "streamed value differs");
    free(back);
    close(fd);
    unlink(dst);
}

Test(large, in_memory_put_get_overwrite_delete)
{
    char path[600];
    kvtest_path(path, sizeof path, "l.db");
    kv_db *db = open_small(path);
    size_t n = 3 * PART + 12345;        /* 4 parts */
    uint8_t *big = pattern(n, 1);
    cr_assert(eq(int, kvi_value_is_large(db, 3, n), 1));
    cr_assert(eq(u64, kvi_part_size(db, 3), PART));
    cr_assert(eq(int, nparts(path, "big"), 0), "no parts table before the first large value");
    cr_assert(eq(int, kv_put(db, "big", 3, big, n), KV_OK), "%s", kv_db_errmsg(db));
    cr_assert(eq(int, nparts(path, "big"), 4));
    expect_value(db, "big", big, n);
    expect_fd(db, path, "big", big, n, 100000);            /* chunks straddle parts */
    sink s = {malloc(n), 0, n};
    uint64_t w;
    cr_assert(eq(int, kv_get_stream(db, "big", 3, 77777, sink_wr, &s, &w), KV_OK));
    cr_assert(eq(u64, w, n));
    cr_assert(eq(int, memcmp(s.p, big, n), 0));
    free(s.p);
    int found;
    int64_t count;
    cr_assert(eq(int, kv_exists(db, "big", 3, &found), KV_OK));
    cr_assert(eq(int, found, 1));
    cr_assert(eq(int, kv_count(db, &count), KV_OK));
    cr_assert(eq(i64, count, 1), "parts are not keys");
    /* a genuinely empty value stays empty */
    cr_assert(eq(int, kv_put(db, "empty", 5, "", 0), KV_OK));
    expect_value(db, "empty", (const uint8_t *)"", 0);
    /* overwrite with a small value: parts gone */
    cr_assert(eq(int, kv_put(db, "big", 3, "small", 5), KV_OK));
    cr_assert(eq(int, nparts(path, "big"), 0));
    expect_value(db, "big", (const uint8_t *)"small", 5);
    /* large again (different bytes), then delete */
    uint8_t *big2 = pattern(n - 1000, 2);
    cr_assert(eq(int, kv_put(db, "big", 3, big2, n - 1000), KV_OK));
    expect_value(db, "big", big2, n - 1000);
    int removed;
    cr_assert(eq(int, kv_delete(db, "big", 3, &removed), KV_OK));
    cr_assert(eq(int, removed, 1));
    cr_assert(eq(int, nparts(path, "big"), 0), "delete removes the parts");
    const void *v;
    size_t vn;
    cr_assert(eq(int, kv_get(db, "big", 3, &v, &vn), KV_NOTFOUND));
    kv_db_close(db);
    free(big);
    free(big2);
}

static void fd_roundtrip(int uring)
{
    char path[600], src[700];
    kvtest_select_uring(uring);
    kvtest_path(path, sizeof path, "l.db");
    snprintf(src, sizeof src, "%s.src", path);
    size_t n = 10 * PART + 4321;        /* 11 parts */
    uint8_t *big = pattern(n, 3);
    int fd = open(src, O_CREAT | O_TRUNC | O_RDWR, 0600);
    cr_assert(eq(sz, (size_t)write(fd, big, n), n));
    lseek(fd, 0, SEEK_SET);
    kv_db *db = open_small(path);
    cr_assert(eq(int, kv_put_fd(db, "file", 4, fd, n, 300000), KV_OK), "%s", kv_db_errmsg(db));
    cr_assert(eq(i64, (int64_t)lseek(fd, 0, SEEK_CUR), (int64_t)n));
    cr_assert(eq(int, kv_stream_used_uring(db), uring ? kv_stream_used_uring(db) : 0));
    close(fd);
    cr_assert(eq(int, nparts(path, "file"), 11));
    expect_fd(db, path, "file", big, n, 0);
    expect_fd(db, path, "file", big, n, 4096);
    expect_value(db, "file", big, n);
    /* replacing a large value by a smaller large one leaves only its parts */
    fd = open(src, O_RDONLY);
    cr_assert(eq(int, kv_put_fd(db, "file", 4, fd, 3 * PART, 0), KV_OK));
    close(fd);
    cr_assert(eq(int, nparts(path, "file"), 3));
    expect_value(db, "file", big, 3 * PART);
    kv_db_close(db);
    unlink(src);
    free(big);
}

Test(large, put_fd_get_to_fd_uring, .timeout = 120) { fd_roundtrip(1); }
Test(large, put_fd_get_to_fd_plain, .timeout = 120) { fd_roundtrip(0); }

Test(large, put_stream_short_put_many_and_foreign_writer)
{
    char path[600];
    kvtest_path(path, sizeof path, "l.db");
    kv_db *db = open_small(path);
    size_t n = 2 * PART + 99;
    uint8_t *big = pattern(n, 4);
    /* announced 3 parts' worth, only 1 MiB delivered: KV_SHORT, zero tail */
    kvtest_src c = {big, LIMIT, 0, 0};
    cr_assert(eq(int, kv_put_stream(db, "s", 1, n, 65536, kvtest_src_read, &c), KV_SHORT));
    const void *v;
    size_t vn;
    cr_assert(eq(int, kv_get(db, "s", 1, &v, &vn), KV_OK));
    cr_assert(eq(sz, vn, n));
    cr_assert(eq(int, memcmp(v, big, LIMIT), 0));
    cr_assert(eq(u8, ((const uint8_t *)v)[n - 1], 0));
    kv_get_done(db);
    /* put_many: one transaction with small and large items */
    kv_item items[3] = {{"a", 1, "x", 1}, {"b", 1, big, n}, {"c", 1, big, 10}};
    cr_assert(eq(int, kv_put_many(db, items, 3), KV_OK), "%s", kv_db_errmsg(db));
    expect_value(db, "b", big, n);
    expect_value(db, "c", big, 10);
    cr_assert(eq(int, nparts(path, "b"), 3));
    /* a writer that knows nothing of parts (plain SQL): triggers clean up */
    sqlite3 *s;
    cr_assert(eq(int, sqlite3_open(path, &s), SQLITE_OK));
    cr_assert(eq(int, sqlite3_exec(s, "INSERT OR REPLACE INTO kv(key, value) VALUES(x'62', x'')",
                                   NULL, NULL, NULL), SQLITE_OK));
    sqlite3_close(s);
    cr_assert(eq(int, nparts(path, "b"), 0));
    expect_value(db, "b", (const uint8_t *)"", 0);
    kv_db_close(db);
    free(big);
}

/* Child: stream `size` bytes from the pipe into key "k" with put_fd. */
static void child_stream(const char *path, int rfd, uint64_t size)
{
    kv_db *db = NULL;
    char err[256];
    if (kv_db_open(path, NULL, &db, err, sizeof err) != KV_OK)
        _exit(2);
    sqlite3_limit(db->db, SQLITE_LIMIT_LENGTH, LIMIT);
    kv_status st = kv_put_fd(db, "k", 1, rfd, size, 65536);
    kv_db_close(db);
    _exit(st == KV_OK ? 0 : 10 + (int)st);
}

Test(large, sigkilled_put_fd_keeps_old_value, .timeout = 120)
{
    char path[600];
    kvtest_path(path, sizeof path, "l.db");
    size_t oldn = 3 * PART + 7, newn = 16 * PART;    /* both large */
    uint8_t *old = pattern(oldn, 5), *nv = pattern(newn, 6);
    kv_db *db = open_small(path);
    cr_assert(eq(int, kv_put(db, "k", 1, old, oldn), KV_OK));
    kv_db_close(db);

    for (int round = 0; round < 2; round++) {
        int killed = round == 0;
        int pfd[2];
        cr_assert(eq(int, pipe(pfd), 0));
        pid_t pid = fork();
        cr_assert(pid >= 0);
        if (pid == 0) {
            close(pfd[1]);
            child_stream(path, pfd[0], newn);
        }
        close(pfd[0]);
        size_t send = killed ? newn / 2 : newn;   /* half: the child is mid-stream */
        for (size_t off = 0; off < send;) {
            ssize_t w = write(pfd[1], nv + off, send - off);
            cr_assert(gt(sz, (size_t)w, 0));
            off += (size_t)w;
        }
        if (killed) {
            usleep(200000);
            kill(pid, SIGKILL);
        }
        close(pfd[1]);
        int status;
        cr_assert(eq(int, waitpid(pid, &status, 0), pid));
        if (killed) {
            int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
            cr_assert(eq(int, sig, SIGKILL), "child was killed mid-stream (status %d)", status);
        } else {
            int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
            cr_assert(ok, "child completed (status %d)", status);
        }
        db = open_small(path);
        if (killed) {
            expect_value(db, "k", old, oldn);
            cr_assert(eq(int, nparts(path, "k"), 4), "old parts intact");
        } else {
            expect_value(db, "k", nv, newn);
            cr_assert(eq(int, nparts(path, "k"), 16));
        }
        sqlite3_stmt *st;
        cr_assert(eq(int, sqlite3_prepare_v2(db->db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK));
        cr_assert(eq(int, sqlite3_step(st), SQLITE_ROW));
        cr_assert(eq(str, (char *)sqlite3_column_text(st, 0), "ok"));
        sqlite3_finalize(st);
        kv_db_close(db);
    }
    free(old);
    free(nv);
}
