/* test_readcache.c - the WAL-header-validated read cache of kv_get
 * (engine/readcache.c): changes committed by another connection or another
 * process are seen on the next get; WAL restarts; deletes; the byte cap;
 * off outside WAL; and a randomized two-process check that a reader never
 * sees a version older than one committed before its read began.
 * Real SQLite files, real processes (fork). */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#include "internal.h"
#include "kvtest_util.h"

static kv_db *open_rc(const char *path, size_t cap, int wal)
{
    kv_open_opts o;
    kv_db *db = NULL;
    char err[256];
    kv_open_opts_default(&o);
    o.read_cache_bytes = cap;
    o.enable_wal = wal;
    cr_assert(eq(int, kv_db_open(path, &o, &db, err, sizeof err), KV_OK), "%s", err);
    return db;
}

/* Get key as a NUL-terminated string into buf; returns the status. */
static kv_status get_str(kv_db *db, const char *key, char *buf, size_t n)
{
    const void *v;
    size_t vn;
    kv_status st = kv_get(db, key, strlen(key), &v, &vn);
    if (st == KV_OK) {
        cr_assert(lt(sz, vn, n));
        memcpy(buf, v, vn);
        buf[vn] = '\0';
    }
    kv_get_done(db);
    return st;
}

static uint64_t hits(kv_db *db)
{
    uint64_t h;
    kvi_rcache_stats(db->rcache, NULL, NULL, &h, NULL, NULL);
    return h;
}

static void put_str(kv_db *db, const char *k, const char *v)
{
    cr_assert(eq(int, kv_put(db, k, strlen(k), v, strlen(v)), KV_OK), "%s", kv_db_errmsg(db));
}

Test(readcache, second_connection_commit_is_seen)
{
    char path[600], buf[64];
    kvtest_path(path, sizeof path, "rc.db");
    kv_db *a = open_rc(path, 1 << 20, 1), *b = open_rc(path, 1 << 20, 1);
    cr_assert(not(eq(ptr, a->rcache, NULL)), "read cache on in WAL mode");
    put_str(b, "k", "v1");
    cr_assert(eq(int, get_str(a, "k", buf, sizeof buf), KV_OK));
    cr_assert(eq(str, buf, "v1"));
    uint64_t h0 = hits(a);
    cr_assert(eq(int, get_str(a, "k", buf, sizeof buf), KV_OK));
    cr_assert(eq(str, buf, "v1"));
    cr_assert(eq(u64, hits(a), h0 + 1), "second get is a cache hit");
    /* b commits: a's next get must see it */
    put_str(b, "k", "v2");
    cr_assert(eq(int, get_str(a, "k", buf, sizeof buf), KV_OK));
    cr_assert(eq(str, buf, "v2"));
    /* a raw sqlite3 connection (no libkvault) commits too */
    sqlite3 *s;
    cr_assert(eq(int, sqlite3_open(path, &s), SQLITE_OK));
    cr_assert(eq(int, sqlite3_exec(s, "UPDATE kv SET value=x'7633' WHERE key=x'6b'", NULL, NULL, NULL), SQLITE_OK));
    cr_assert(eq(int, get_str(a, "k", buf, sizeof buf), KV_OK));
    cr_assert(eq(str, buf, "v3"));
    sqlite3_close(s);
    /* a's own writes invalidate as well */
    put_str(a, "k", "v4");
    cr_assert(eq(int, get_str(a, "k", buf, sizeof buf), KV_OK));
    cr_assert(eq(str, buf, "v4"));
    /* kv_get_cached serves a hit without SQLite, and nothing after a change */
    const void *v;
    size_t vn;
    cr_assert(eq(int, kv_get_cached(a, "k", 1, &v, &vn), 1));
    cr_assert(eq(int, memcmp(v, "v4", 2), 0));
    put_str(b, "k", "v5");
    cr_assert(eq(int, kv_get_cached(a, "k", 1, &v, &vn), 0));
    kv_db_close(a);
    kv_db_close(b);
}

/* Run fn(path, arg) in a child process with its own handle; wait for it. */
static void in_child(const char *path, void (*fn)(kv_db *, const char *), const char *arg)
{
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        kv_db *db = NULL;
        char err[256];
        if (kv_db_open(path, NULL, &db, err, sizeof err) != KV_OK)
            _exit(2);
        fn(db, arg);
        _exit(kv_db_close(db) == KV_OK ? 0 : 3);
    }
    int status;
    cr_assert(eq(int, waitpid(pid, &status, 0), pid));
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    cr_assert(ok, "child failed: %d", status);
}

static void child_put(kv_db *db, const char *v)
{
    if (kv_put(db, "k", 1, v, strlen(v)) != KV_OK)
        _exit(4);
}

static void child_delete(kv_db *db, const char *unused)
{
    (void)unused;
    int removed = 0;
    if (kv_delete(db, "k", 1, &removed) != KV_OK || !removed)
        _exit(5);
}

Test(readcache, other_process_commit_and_delete)
{
    char path[600], buf[64];
    kvtest_path(path, sizeof path, "rc.db");
    kv_db *a = open_rc(path, 1 << 20, 1);
    put_str(a, "k", "parent");
    cr_assert(eq(int, get_str(a, "k", buf, sizeof buf), KV_OK));
    cr_assert(eq(int, get_str(a, "k", buf, sizeof buf), KV_OK));
    cr_assert(eq(u64, hits(a), 1));
    in_child(path, child_put, "child");
    cr_assert(eq(int, get_str(a, "k", buf, sizeof buf), KV_OK));
    cr_assert(eq(str, buf, "child"));
    cr_assert(eq(int, get_str(a, "k", buf, sizeof buf), KV_OK));   /* cached again */
    in_child(path, child_delete, NULL);
    cr_assert(eq(int, get_str(a, "k", buf, sizeof buf), KV_NOTFOUND));
    kv_db_close(a);
}

Test(readcache, wal_restart_after_checkpoint)
{
    char path[600], buf[64], key[16], val[32];
    kvtest_path(path, sizeof path, "rc.db");
    kv_db *a = open_rc(path, 1 << 20, 1), *b = open_rc(path, 1 << 20, 1);
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof key, "k%d", i);
        snprintf(val, sizeof val, "gen0-%d", i);
        put_str(b, key, val);
    }
    for (int round = 1; round <= 5; round++) {
        for (int i = 0; i < 50; i++) {           /* fill a's cache */
            snprintf(key, sizeof key, "k%d", i);
            cr_assert(eq(int, get_str(a, key, buf, sizeof buf), KV_OK));
        }
        /* A checkpoint alone changes no content: entries stay valid. */
        uint64_t h0 = hits(a);
        cr_assert(eq(int, sqlite3_wal_checkpoint_v2(b->db, NULL, SQLITE_CHECKPOINT_TRUNCATE,
                                                    NULL, NULL), SQLITE_OK));
        cr_assert(eq(int, get_str(a, "k0", buf, sizeof buf), KV_OK));
        cr_log_info("round %d: hit after checkpoint: %d", round, (int)(hits(a) - h0));
        /* The next write restarts the WAL (new salts, mxFrame from 0):
         * exactly one frame-sized commit, like many earlier ones. */
        snprintf(val, sizeof val, "gen%d-7", round);
        put_str(b, "k7", val);
        cr_assert(eq(int, get_str(a, "k7", buf, sizeof buf), KV_OK));
        cr_assert(eq(str, buf, val), "round %d", round);
        snprintf(key, sizeof key, "k%d", round);
        cr_assert(eq(int, get_str(a, key, buf, sizeof buf), KV_OK));
    }
    kv_db_close(a);
    kv_db_close(b);
}

Test(readcache, bounded_by_bytes)
{
    char path[600], key[16];
    static uint8_t val[8192];
    kvtest_path(path, sizeof path, "rc.db");
    size_t cap = 64 << 10;
    kv_db *a = open_rc(path, cap, 1);
    kv_item items[500];
    static char keys[500][16];
    for (int i = 0; i < 500; i++) {
        snprintf(keys[i], 16, "k%03d", i);
        items[i] = (kv_item){keys[i], strlen(keys[i]), val, 1000};
    }
    cr_assert(eq(int, kv_put_many(a, items, 500), KV_OK));
    kv_put(a, "big", 3, val, sizeof val);      /* 8 KiB = cap/8: not cached */
    const void *v;
    size_t vn, entries, bytes;
    for (int pass = 0; pass < 3; pass++)
        for (int i = 0; i < 500; i++) {
            snprintf(key, sizeof key, "k%03d", i);
            cr_assert(eq(int, kv_get(a, key, strlen(key), &v, &vn), KV_OK));
            cr_assert(eq(sz, vn, 1000));
            kvi_rcache_stats(a->rcache, &entries, &bytes, NULL, NULL, NULL);
            cr_assert(le(sz, bytes, cap), "bytes %zu > cap", bytes);
        }
    cr_assert(gt(sz, entries, 30), "the cache holds entries (%zu)", entries);
    cr_assert(lt(sz, entries, 70), "but not more than fit (%zu)", entries);
    kvi_rcache_stats(a->rcache, &entries, &bytes, NULL, NULL, NULL);
    size_t before = entries;
    cr_assert(eq(int, kv_get(a, "big", 3, &v, &vn), KV_OK));
    cr_assert(eq(int, kv_get(a, "big", 3, &v, &vn), KV_OK));
    cr_assert(eq(sz, vn, sizeof val));
    kvi_rcache_stats(a->rcache, &entries, NULL, NULL, NULL, NULL);
    cr_assert(eq(sz, entries, before), "a value above cap/8 is not cached");
    kv_db_close(a);
}

Test(readcache, off_without_wal)
{
    char path[600], buf[64];
    kvtest_path(path, sizeof path, "nowal.db");
    kv_db *a = open_rc(path, 1 << 20, 0);
    cr_assert(eq(ptr, a->rcache, NULL), "rollback journal: cache off");
    put_str(a, "k", "v");
    cr_assert(eq(int, get_str(a, "k", buf, sizeof buf), KV_OK));
    cr_assert(eq(str, buf, "v"));
    kv_db_close(a);
    kv_db *m = open_rc(":memory:", 1 << 20, 1);
    cr_assert(eq(ptr, m->rcache, NULL), ":memory: cache off");
    kv_db_close(m);
    kvtest_path(path, sizeof path, "zero.db");
    kv_db *z = open_rc(path, 0, 1);
    cr_assert(eq(ptr, z->rcache, NULL), "read_cache_bytes=0: off");
    kv_db_close(z);
}

/* ---------------------------------------------------------------------
 * Randomized two processes: the writer commits increasing versions of
 * random keys and publishes, after each commit, the version in shared
 * memory; the reader loads the published version BEFORE each get and
 * checks the value is never older.
 * ------------------------------------------------------------------- */

#define NKEYS 16
#define WRITES 3000

typedef struct shared {
    _Atomic uint64_t committed[NKEYS];
    _Atomic int done;
} shared;

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return *s = x;
}

Test(readcache, randomized_two_process_never_stale, .timeout = 300)
{
    char path[600], key[16];
    kvtest_path(path, sizeof path, "rc.db");
    shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert(not(eq(ptr, sh, MAP_FAILED)));
    kv_db *a = open_rc(path, 1 << 20, 1);
    for (int i = 0; i < NKEYS; i++) {
        uint64_t zero = 0;
        snprintf(key, sizeof key, "k%02d", i);
        cr_assert(eq(int, kv_put(a, key, strlen(key), &zero, 8), KV_OK));
        atomic_store(&sh->committed[i], 0);
    }
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        kv_db *w = NULL;
        char err[256], k[16];
        uint64_t seed = 0x9e3779b97f4a7c15ull;
        if (kv_db_open(path, NULL, &w, err, sizeof err) != KV_OK)
            _exit(2);
        for (uint64_t ver = 1; ver <= WRITES; ver++) {
            int i = (int)(xorshift(&seed) % NKEYS);
            snprintf(k, sizeof k, "k%02d", i);
            kv_status st;
            while ((st = kv_put(w, k, strlen(k), &ver, 8)) == KV_BUSY)
                ;
            if (st != KV_OK)
                _exit(3);
            atomic_store_explicit(&sh->committed[i], ver, memory_order_release);
            if (ver % 500 == 0)   /* exercise WAL restarts too */
                kv_checkpoint(w);
            struct timespec ts = {0, (long)(xorshift(&seed) % 200) * 1000};
            nanosleep(&ts, NULL);
        }
        kv_db_close(w);
        atomic_store(&sh->done, 1);
        _exit(0);
    }
    uint64_t seed = 12345, reads = 0;
    while (!atomic_load(&sh->done)) {
        int i = (int)(xorshift(&seed) % NKEYS);
        snprintf(key, sizeof key, "k%02d", i);
        uint64_t before = atomic_load_explicit(&sh->committed[i], memory_order_acquire);
        const void *v;
        size_t vn;
        kv_status st = kv_get(a, key, strlen(key), &v, &vn);
        if (st == KV_BUSY)
            continue;
        cr_assert(eq(int, st, KV_OK), "%s", kv_db_errmsg(a));
        cr_assert(eq(sz, vn, 8));
        uint64_t got;
        memcpy(&got, v, 8);
        kv_get_done(a);
        cr_assert(ge(u64, got, before), "stale read of %s: got version %llu, %llu was committed before",
                  key, (unsigned long long)got, (unsigned long long)before);
        reads++;
    }
    int status;
    cr_assert(eq(int, waitpid(pid, &status, 0), pid));
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    cr_assert(ok, "writer failed: %d", status);
    /* after the writer is done, every key reads its final version */
    for (int i = 0; i < NKEYS; i++) {
        const void *v;
        size_t vn;
        uint64_t got;
        snprintf(key, sizeof key, "k%02d", i);
        cr_assert(eq(int, kv_get(a, key, strlen(key), &v, &vn), KV_OK));
        memcpy(&got, v, 8);
        cr_assert(eq(u64, got, atomic_load(&sh->committed[i])));
    }
    uint64_t h, m, d;
    kvi_rcache_stats(a->rcache, NULL, NULL, &h, &m, &d);
    cr_log_info("reads %llu: hits %llu, misses %llu, drops %llu", (unsigned long long)reads,
                (unsigned long long)h, (unsigned long long)m, (unsigned long long)d);
    cr_assert(gt(u64, h, 0), "the cache served some reads");
    cr_assert(gt(u64, d, 100), "and was dropped on commits");
    kv_db_close(a);
    munmap(sh, sizeof *sh);
}
