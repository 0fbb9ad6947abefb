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

/* ---- kv_get_into: one copy into the caller's buffer ---------------------- */

/* The allocator of kv_get_into for these tests: counts its calls, records
 * the length asked for, optionally refuses (NULL), and can run `hook`
 * (another handle's write) between the length and the read. */
typedef struct {
    uint8_t *buf;
    size_t n;
    int calls;
    int refuse;
    void (*hook)(void *arg);
    void *arg;
} into_ctx;

static void *into_alloc(void *c, size_t n)
{
    into_ctx *x = c;
    x->calls++;
    x->n = n;
    if (x->refuse)
        return NULL;
    if (x->hook)
        x->hook(x->arg);
    x->buf = malloc(n ? n : 1);
    return x->buf;
}

/* kv_get_into `key` with `direct_min` and check it reads `want`. */
static void expect_into(kv_db *db, const char *key, size_t direct_min, const uint8_t *want,
                        size_t n)
{
    into_ctx c = {0};
    size_t vn = 12345;
    cr_assert(eq(int, kv_get_into(db, key, strlen(key), direct_min, into_alloc, &c, &vn), KV_OK),
              "%s", kv_db_errmsg(db));
    cr_assert(eq(int, c.calls, 1));
    cr_assert(eq(sz, c.n, n));
    cr_assert(eq(sz, vn, n));
    cr_assert(eq(int, memcmp(c.buf, want, n), 0), "value of %s (%zu B) differs", key, n);
    free(c.buf);
}

Test(large, get_into_threshold_empty_parts_and_absent, .timeout = 120)
{
    char path[512];
    kvtest_path(path, sizeof path, "into.db");
    kv_db *db = open_small(path);
    const size_t T = KV_GET_DIRECT_MIN;
    const size_t sizes[] = {0, 1, T - 1, T, T + 1, 3 * T + 17, 2 * LIMIT + 123};
    const size_t nsizes = sizeof sizes / sizeof sizes[0];
    uint8_t *vals[sizeof sizes / sizeof sizes[0]];
    char key[32];
    for (size_t i = 0; i < nsizes; i++) {
        vals[i] = pattern(sizes[i] ? sizes[i] : 1, (uint32_t)(i + 7));
        snprintf(key, sizeof key, "k%zu", i);
        cr_assert(eq(int, kv_put(db, key, strlen(key), vals[i], sizes[i]), KV_OK), "%s",
                  kv_db_errmsg(db));
    }
    cr_assert(eq(int, nparts(path, "k6"), 5)); /* 512 KiB parts */
    /* Each size through the row copy, the direct read at the threshold,
     * and with every value read directly (direct_min 0 and 1). */
    const size_t mins[] = {T, 0, 1, SIZE_MAX};
    for (size_t m = 0; m < sizeof mins / sizeof mins[0]; m++)
        for (size_t i = 0; i < nsizes; i++) {
            snprintf(key, sizeof key, "k%zu", i);
            expect_into(db, key, mins[m], vals[i], sizes[i]);
            expect_into(db, key, mins[m], vals[i], sizes[i]); /* read cache, if kept */
            expect_value(db, key, vals[i], sizes[i]);         /* kv_get agrees */
        }
    into_ctx c = {0};
    size_t vn;
    cr_assert(eq(int, kv_get_into(db, "absent", 6, T, into_alloc, &c, &vn), KV_NOTFOUND));
    cr_assert(eq(int, c.calls, 0));
    /* An allocator out of memory: KV_NOMEM, the handle stays usable. */
    for (size_t i = 0; i < nsizes; i++) {
        snprintf(key, sizeof key, "k%zu", i);
        into_ctx r = {.refuse = 1};
        cr_assert(eq(int, kv_get_into(db, key, strlen(key), T, into_alloc, &r, &vn), KV_NOMEM));
        cr_assert(eq(int, r.calls, 1));
        expect_into(db, key, T, vals[i], sizes[i]);
    }
    /* The write-back cache answers first. */
    cr_assert(eq(int, kv_cache_enable(db, 8 << 20, 4 << 20), KV_OK));
    cr_assert(eq(int, kv_put(db, "k3", 2, vals[4], sizes[4]), KV_OK));
    expect_into(db, "k3", T, vals[4], sizes[4]);
    cr_assert(eq(int, kv_cache_disable(db), KV_OK));
    expect_into(db, "k3", T, vals[4], sizes[4]);
    for (size_t i = 0; i < nsizes; i++)
        free(vals[i]);
    cr_assert(eq(int, kv_db_close(db), KV_OK));
    kvtest_remove_dir_of(path);
}

/* Another connection overwrites the key between the length and the read. */
typedef struct {
    kv_db *other;
    const char *key;
    const uint8_t *val;
    size_t n;
} overwrite_arg;

static void overwrite(void *a)
{
    overwrite_arg *o = a;
    cr_assert(eq(int, kv_put(o->other, o->key, strlen(o->key), o->val, o->n), KV_OK), "%s",
              kv_db_errmsg(o->other));
}

Test(large, get_into_overwritten_between_length_and_read, .timeout = 120)
{
    char path[512];
    kvtest_path(path, sizeof path, "into_race.db");
    kv_db *db = open_small(path), *other = open_small(path);
    const size_t T = KV_GET_DIRECT_MIN;
    /* old → new: direct read, row copy, parts, and across those shapes */
    const size_t pairs[][2] = {{T + 1, 2 * T + 5}, {T + 9, 3}, {T - 1, T + 1},
                               {2 * LIMIT + 7, T}, {T, 2 * LIMIT + 99}, {0, T + 3}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        uint8_t *old = pattern(pairs[i][0] + 1, (uint32_t)(100 + i));
        uint8_t *neu = pattern(pairs[i][1] + 1, (uint32_t)(200 + i));
        cr_assert(eq(int, kv_put(db, "r", 1, old, pairs[i][0]), KV_OK));
        overwrite_arg o = {other, "r", neu, pairs[i][1]};
        into_ctx c = {.hook = overwrite, .arg = &o};
        size_t vn;
        cr_assert(eq(int, kv_get_into(db, "r", 1, T, into_alloc, &c, &vn), KV_OK), "%s",
                  kv_db_errmsg(db));
        cr_assert(eq(sz, vn, pairs[i][0]), "pair %zu: the length of the snapshot", i);
        cr_assert(eq(int, memcmp(c.buf, old, vn), 0), "pair %zu: the bytes of the snapshot", i);
        free(c.buf);
        expect_into(db, "r", T, neu, pairs[i][1]); /* the next read sees the commit */
        free(old);
        free(neu);
    }
    cr_assert(ge(u64, db->lr_reads, 4), "the large-value reader took part");
    cr_assert(eq(int, kv_db_close(other), KV_OK));
    cr_assert(eq(int, kv_db_close(db), KV_OK));
    kvtest_remove_dir_of(path);
}

/* ---- kv_get_into through the large-value reader (engine/largeread.c) ---- */

static void expect_absent(kv_db *db, const char *key)
{
    into_ctx c = {0};
    size_t vn;
    cr_assert(eq(int, kv_get_into(db, key, strlen(key), KV_GET_DIRECT_MIN, into_alloc, &c, &vn),
                 KV_NOTFOUND), "%s", kv_db_errmsg(db));
    cr_assert(eq(int, c.calls, 0));
}

Test(large, reader_threshold_and_routing, .timeout = 120)
{
    char path[512];
    kvtest_path(path, sizeof path, "reader.db");
    kv_db *db = open_small(path);
    const size_t T = KV_GET_DIRECT_MIN;
    const size_t sizes[] = {T - 1, T, T + 1};
    uint8_t *vals[3];
    for (int i = 0; i < 3; i++) {
        vals[i] = pattern(sizes[i], (uint32_t)(300 + i));
        cr_assert(eq(int, kv_put(db, (char[]){(char)('a' + i), 0}, 1, vals[i], sizes[i]), KV_OK));
    }
    /* key: "a" T-1, "b" T, "c" T+1; expected reader count after each get */
    const struct { const char *key; int idx; uint64_t reads; } steps[] = {
        {"a", 0, 0}, /* short: the handle's row */
        {"a", 0, 0}, /* read cache */
        {"b", 1, 1}, /* at the threshold: the handle finds it, the reader reads it */
        {"c", 2, 2}, /* the last one was large: the reader first */
        {"b", 1, 3}, /* large values are not kept by the read cache */
        {"a", 0, 3}, /* the read cache still answers first */
    };
    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        expect_into(db, steps[s].key, T, vals[steps[s].idx], sizes[steps[s].idx]);
        cr_assert(eq(u64, db->lr_reads, steps[s].reads), "step %zu", s);
        cr_assert(eq(int, db->lr_state, steps[s].reads ? 1 : 0), "opened on first use");
    }
    /* After a large value, a short one that is not cached comes from the
     * reader's row copy, and the next short one from the handle again. */
    cr_assert(eq(int, kv_put(db, "d", 1, vals[0], sizes[0] - 5), KV_OK));
    expect_into(db, "c", T, vals[2], sizes[2]);
    uint64_t r = db->lr_reads;
    expect_into(db, "d", T, vals[0], sizes[0] - 5);
    cr_assert(eq(u64, db->lr_reads, r + 1));
    cr_assert(eq(int, kv_put(db, "e", 1, vals[0], 3), KV_OK));
    expect_into(db, "e", T, vals[0], 3);
    cr_assert(eq(u64, db->lr_reads, r + 1));
    for (int i = 0; i < 3; i++)
        free(vals[i]);
    cr_assert(eq(int, kv_db_close(db), KV_OK));
    kvtest_remove_dir_of(path);
}

Test(large, reader_sees_own_writes_deletes_and_transactions, .timeout = 120)
{
    char path[512];
    kvtest_path(path, sizeof path, "reader_rw.db");
    kv_db *db = open_small(path), *other = open_small(path);
    const size_t T = KV_GET_DIRECT_MIN;
    uint8_t *a = pattern(3 * T, 11), *b = pattern(2 * T + 1, 12), *c = pattern(T + 7, 13);
    cr_assert(eq(int, kv_put(db, "k", 1, a, 3 * T), KV_OK));
    expect_into(db, "k", T, a, 3 * T);
    expect_into(db, "k", T, a, 3 * T);
    uint64_t r = db->lr_reads;
    cr_assert(ge(u64, r, 2), "read by the reader");
    /* a write of the same handle, then the reader */
    cr_assert(eq(int, kv_put(db, "k", 1, b, 2 * T + 1), KV_OK));
    expect_into(db, "k", T, b, 2 * T + 1);
    cr_assert(eq(u64, db->lr_reads, r + 1));
    /* deleted by another connection between two gets, then put again */
    int removed = 0;
    cr_assert(eq(int, kv_delete(other, "k", 1, &removed), KV_OK));
    cr_assert(eq(int, removed, 1));
    expect_absent(db, "k");
    cr_assert(eq(int, kv_put(other, "k", 1, c, T + 7), KV_OK));
    expect_into(db, "k", T, c, T + 7);
    /* deleted by the same handle */
    cr_assert(eq(int, kv_delete(db, "k", 1, &removed), KV_OK));
    expect_absent(db, "k");
    /* rewritten by another connection with a value stored as parts: the
     * reader hands it back to the handle's connection */
    uint8_t *big = pattern(2 * LIMIT + 3, 14);
    cr_assert(eq(int, kv_put(db, "k", 1, a, 3 * T), KV_OK));
    expect_into(db, "k", T, a, 3 * T);
    cr_assert(eq(int, kv_put(other, "k", 1, big, 2 * LIMIT + 3), KV_OK));
    expect_into(db, "k", T, big, 2 * LIMIT + 3);
    /* inside a transaction of the handle's connection its uncommitted
     * write is what a get returns (the reader is not used), and after a
     * rollback the committed value again */
    cr_assert(eq(int, kv_put(db, "k", 1, a, 3 * T), KV_OK));
    expect_into(db, "k", T, a, 3 * T);
    r = db->lr_reads;
    cr_assert(eq(int, sqlite3_exec(db->db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK));
    cr_assert(eq(int, kv_put(db, "k", 1, b, 2 * T + 1), KV_OK));
    expect_into(db, "k", T, b, 2 * T + 1);
    cr_assert(eq(u64, db->lr_reads, r));
    cr_assert(eq(int, sqlite3_exec(db->db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK));
    expect_into(db, "k", T, a, 3 * T);
    cr_assert(eq(u64, db->lr_reads, r + 1));
    free(a);
    free(b);
    free(c);
    free(big);
    cr_assert(eq(int, kv_db_close(other), KV_OK));
    cr_assert(eq(int, kv_db_close(db), KV_OK));
    kvtest_remove_dir_of(path);
}

Test(large, reader_off_without_a_shared_wal_file)
{
    const size_t T = KV_GET_DIRECT_MIN;
    uint8_t *v = pattern(2 * T, 21);
    kv_db *db = NULL;
    char err[256];
    kv_open_opts o;
    kv_open_opts_default(&o);
    cr_assert(eq(int, kv_db_open(":memory:", &o, &db, err, sizeof err), KV_OK), "%s", err);
    cr_assert(eq(int, kv_put(db, "m", 1, v, 2 * T), KV_OK));
    expect_into(db, "m", T, v, 2 * T);
    expect_into(db, "m", T, v, 2 * T);
    cr_assert(eq(int, db->lr_state, -1));
    cr_assert(eq(u64, db->lr_reads, 0));
    cr_assert(eq(int, kv_db_close(db), KV_OK));
    /* rollback journal */
    char path[512];
    kvtest_path(path, sizeof path, "reader_nowal.db");
    o.enable_wal = 0;
    cr_assert(eq(int, kv_db_open(path, &o, &db, err, sizeof err), KV_OK), "%s", err);
    cr_assert(eq(int, kv_put(db, "m", 1, v, 2 * T), KV_OK));
    expect_into(db, "m", T, v, 2 * T);
    cr_assert(eq(int, db->lr_state, -1));
    cr_assert(eq(int, kv_db_close(db), KV_OK));
    free(v);
    kvtest_remove_dir_of(path);
}
