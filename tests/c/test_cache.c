/* test_cache.c - libkvault write-back cache rules (docs/api.md §4.7): cap,
 * threshold, bypass of large values, lock flag refusing flushes, flush on
 * close, and that no write is ever dropped. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>

#include "kvault/kvault.h"
#include "kvtest_util.h"

static char path[600];

static kv_db *open_db(void)
{
    kv_db *db = NULL;
    char err[256];
    kvtest_path(path, sizeof path, "c.db");
    cr_assert(eq(int, kv_db_open(path, NULL, &db, err, sizeof err), KV_OK), "%s", err);
    return db;
}

static int stored(kv_db *db, const char *k)
{
    int f = -1;
    cr_assert(eq(int, kv_exists(db, k, strlen(k), &f), KV_OK));
    return f;
}

Test(cache, threshold_and_cap_flush)
{
    kv_db *db = open_db();
    char v[100] = {0};
    size_t entries, bytes, w;
    cr_assert(eq(int, kv_cache_enable(db, 1000, 500), KV_OK));
    cr_assert(eq(int, kv_put(db, "k1", 2, v, 98), KV_OK));       /* 100 bytes */
    kv_cache_stats(db, &entries, &bytes);
    cr_assert(eq(sz, entries, 1));
    cr_assert(eq(sz, bytes, 100));
    cr_assert(eq(int, stored(db, "k1"), 0), "cached, not yet in SQLite");
    const void *p;
    size_t n;
    cr_assert(eq(int, kv_get(db, "k1", 2, &p, &n), KV_OK), "get sees the cache");
    cr_assert(eq(sz, n, 98));
    kv_put(db, "k2", 2, v, 98);
    kv_put(db, "k3", 2, v, 98);
    kv_put(db, "k4", 2, v, 98);
    cr_assert(eq(int, stored(db, "k4"), 0));
    kv_put(db, "k5", 2, v, 98);                                  /* counter hits 500 */
    cr_assert(eq(int, stored(db, "k1"), 1), "threshold flush wrote everything");
    cr_assert(eq(int, stored(db, "k5"), 1));
    kv_cache_stats(db, &entries, &bytes);
    cr_assert(eq(sz, entries, 0));
    /* threshold 0: only the cap triggers */
    cr_assert(eq(int, kv_cache_enable(db, 250, 0), KV_OK));
    kv_put(db, "a1", 2, v, 98);
    kv_put(db, "a2", 2, v, 98);
    cr_assert(eq(int, stored(db, "a1"), 0));
    kv_put(db, "a3", 2, v, 98);                                  /* 300 > 250: flush first */
    cr_assert(eq(int, stored(db, "a1"), 1));
    cr_assert(eq(int, stored(db, "a3"), 0), "the new value is cached after the flush");
    cr_assert(eq(int, kv_cache_flush(db, &w), KV_OK));
    cr_assert(eq(sz, w, 1));
    cr_assert(eq(int, kv_cache_flush(db, &w), KV_OK));
    cr_assert(eq(sz, w, 0), "empty cache flush writes nothing");
    kv_db_close(db);
}

Test(cache, large_values_bypass)
{
    kv_db *db = open_db();
    static char big[5000];
    kv_cache_enable(db, 1000, 0);
    kv_put(db, "s", 1, "x", 1);
    cr_assert(eq(int, kv_put(db, "big", 3, big, sizeof big), KV_OK));
    cr_assert(eq(int, stored(db, "big"), 1), "larger than cap: written directly");
    cr_assert(eq(int, stored(db, "s"), 1), "and the cache was flushed before it");
    size_t entries;
    kv_cache_stats(db, &entries, NULL);
    cr_assert(eq(sz, entries, 0));
    kv_db_close(db);
}

Test(cache, lock_refuses_flush_but_never_drops)
{
    kv_db *db = open_db();
    char v[100] = {0};
    size_t w;
    kv_cache_enable(db, 300, 200);
    kv_cache_set_locked(db, 1);
    kv_put(db, "k1", 2, v, 98);
    kv_put(db, "k2", 2, v, 98);               /* over the threshold: flush refused */
    cr_assert(eq(int, stored(db, "k1"), 0));
    cr_assert(eq(int, kv_cache_flush(db, &w), KV_OK));
    cr_assert(eq(sz, w, 0), "locked: flush writes nothing");
    cr_assert(eq(int, kv_put(db, "k3", 2, v, 98), KV_OK)); /* 300 <= cap */
    cr_assert(eq(int, kv_put(db, "k4", 2, v, 98), KV_OK)); /* over the cap while locked */
    cr_assert(eq(int, stored(db, "k4"), 1), "written directly instead of dropped");
    static char big[1000];
    cr_assert(eq(int, kv_put(db, "k1", 2, big, sizeof big), KV_OK)); /* bypass while locked */
    const void *p;
    size_t n;
    cr_assert(eq(int, kv_get(db, "k1", 2, &p, &n), KV_OK));
    cr_assert(eq(sz, n, sizeof big), "the newer direct write wins over the stale cached value");
    kv_get_done(db);
    /* delete drops a cached entry too */
    int removed;
    cr_assert(eq(int, kv_delete(db, "k2", 2, &removed), KV_OK));
    cr_assert(eq(int, removed, 1));
    cr_assert(eq(int, kv_get(db, "k2", 2, &p, &n), KV_NOTFOUND));
    /* disabling while locked writes the entries (never drops) */
    cr_assert(eq(int, kv_cache_disable(db), KV_OK));
    cr_assert(eq(int, stored(db, "k3"), 1));
    cr_assert(eq(int, kv_get(db, "k1", 2, &p, &n), KV_OK));
    cr_assert(eq(sz, n, sizeof big));
    kv_db_close(db);
}

Test(cache, flush_on_close_even_when_locked)
{
    kv_db *db = open_db();
    kv_cache_enable(db, 1 << 20, 0);
    for (int i = 0; i < 1000; i++) {
        char k[16];
        snprintf(k, sizeof k, "key%d", i);
        cr_assert(eq(int, kv_put(db, k, strlen(k), k, strlen(k)), KV_OK));
    }
    kv_put(db, "key5", 4, "new", 3);     /* overwrite inside the cache */
    kv_cache_set_locked(db, 1);
    cr_assert(eq(int, kv_db_close(db), KV_OK));
    char err[256];
    cr_assert(eq(int, kv_db_open(path, NULL, &db, err, sizeof err), KV_OK));
    int64_t c;
    kv_count(db, &c);
    cr_assert(eq(i64, c, 1000));
    const void *p;
    size_t n;
    cr_assert(eq(int, kv_get(db, "key5", 4, &p, &n), KV_OK));
    cr_assert(eq(int, n == 3 && memcmp(p, "new", 3) == 0, 1));
    kv_db_close(db);
}
