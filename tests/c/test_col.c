/* test_col.c - chunked columns (docs/api.md §6.2-6.4, 6.7): chunk arithmetic at
 * chunk boundaries, growth from min to max, alignment, insert/delete
 * shifting, variable-size placement and index rewrites, the cache.
 * The stored layout is checked by reading col_chunks back with SQLite. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "kvault/column.h"
#include "kvtest_util.h"

static char path[600];

static kv_colvault *open_cv(int64_t mn, int64_t mx)
{
    kv_colvault *cv = NULL;
    char err[256] = "";
    kvtest_path(path, sizeof path, "col.db");
    cr_assert(eq(int, kv_colvault_open(path, mn, mx, &cv, err, sizeof err), KV_OK), "%s", err);
    return cv;
}

/* actual_size of chunk idx of col_id, -1 if absent (read with a separate connection). */
static int64_t chunk_cap(int64_t col_id, int64_t idx)
{
    sqlite3 *db;
    sqlite3_stmt *s;
    int64_t r = -1;
    cr_assert(sqlite3_open(path, &db) == SQLITE_OK);
    sqlite3_prepare_v2(db, "SELECT actual_size, length(data) FROM col_chunks WHERE col_id=? AND chunk_idx=?", -1, &s, NULL);
    sqlite3_bind_int64(s, 1, col_id);
    sqlite3_bind_int64(s, 2, idx);
    if (sqlite3_step(s) == SQLITE_ROW) {
        r = sqlite3_column_int64(s, 0);
        cr_assert(eq(i64, r, sqlite3_column_int64(s, 1)), "actual_size is the blob length");
    }
    sqlite3_finalize(s);
    sqlite3_close(db);
    return r;
}

/* Create column "x" of i64 in cv and open it; *id receives its col_id. */
static kv_col *new_i64_col(kv_colvault *cv, int64_t *id)
{
    kv_col *c = NULL;
    cr_assert(eq(int, kv_col_create(cv, "x", "i64", 8, id), KV_OK));
    cr_assert(eq(int, kv_col_open_fixed(cv, *id, &c), KV_OK));
    return c;
}

static void put64(uint8_t *p, int64_t v) { memcpy(p, &v, 8); }
static int64_t get64(const uint8_t *p) { int64_t v; memcpy(&v, p, 8); return v; }

Test(col, growth_from_min_to_max_then_new_chunk)
{
    kv_colvault *cv = open_cv(64, 512);
    kv_col *c;
    int64_t id, n;
    c = new_i64_col(cv, &id);
    /* expected capacity of chunk 0 after k elements: 64 -> 128 -> 256 -> 512 */
    for (int64_t k = 1; k <= 64; k++) {
        uint8_t e[8];
        put64(e, k * 10);
        cr_assert(eq(int, kv_col_append(c, e, NULL, 1), KV_OK));
        int64_t need = k * 8, cap = 64;
        while (cap < need)
            cap *= 2;
        cr_assert(eq(i64, chunk_cap(id, 0), cap), "after %lld elements", (long long)k);
        cr_assert(eq(i64, chunk_cap(id, 1), -1));
    }
    uint8_t e[8];
    put64(e, 650);
    cr_assert(eq(int, kv_col_append(c, e, NULL, 1), KV_OK));
    cr_assert(eq(i64, chunk_cap(id, 0), 512), "full chunk has capacity M");
    cr_assert(eq(i64, chunk_cap(id, 1), 64), "next chunk starts at min again");
    /* a bulk append sizes the first new chunk min*2^k >= bytes, capped at M */
    uint8_t big[8 * 100];
    for (int i = 0; i < 100; i++)
        put64(big + 8 * i, 1000 + i);
    cr_assert(eq(int, kv_col_append(c, big, NULL, 100), KV_OK));
    cr_assert(eq(int, kv_col_len(c, &n), KV_OK));
    cr_assert(eq(i64, n, 165));
    cr_assert(eq(i64, chunk_cap(id, 1), 512));
    /* 165*8 = 1320 bytes: chunk 2 holds 296 bytes -> smallest 64*2^k >= 296 is 512 */
    cr_assert(eq(i64, chunk_cap(id, 2), 512));
    uint8_t all[8 * 165];
    cr_assert(eq(int, kv_col_read_fixed(c, 0, 165, all), KV_OK));
    cr_assert(eq(i64, get64(all + 8 * 63), 640));
    cr_assert(eq(i64, get64(all + 8 * 64), 650));
    cr_assert(eq(i64, get64(all + 8 * 164), 1099));
    kv_col_close(c);
    kv_colvault_close(cv);
}

Test(col, alignment_and_reads_across_chunk_boundaries)
{
    kv_colvault *cv = open_cv(50, 100);
    kv_col_info ci;
    kv_col *c;
    int64_t id;
    /* elem 12: min 50 -> 60 (up), max 100 -> 96 (down) */
    cr_assert(eq(int, kv_col_create(cv, "b", "bytes:12", 12, &id), KV_OK));
    cr_assert(eq(int, kv_col_info_get(cv, "b", &ci), KV_OK));
    cr_assert(eq(i64, ci.ci_min_chunk, 60));
    cr_assert(eq(i64, ci.ci_max_chunk, 96));
    cr_assert(eq(i64, ci.ci_chunk_bytes, 60));
    cr_assert(eq(int, kv_col_create(cv, "huge", "bytes:200", 200, NULL), KV_INVALID));
    cr_assert(strstr(kv_colvault_errmsg(cv), "Cannot align chunk sizes") != NULL);
    cr_assert(eq(int, kv_col_create(cv, "b", "i64", 8, NULL), KV_SQLITE), "duplicate name");
    cr_assert(strstr(kv_colvault_errmsg(cv), "UNIQUE") != NULL, "%s", kv_colvault_errmsg(cv));
    cr_assert(eq(int, kv_col_open_fixed(cv, id, &c), KV_OK));
    uint8_t src[12 * 50];
    for (int i = 0; i < 12 * 50; i++)
        src[i] = (uint8_t)(i * 7 + 1);
    cr_assert(eq(int, kv_col_append(c, src, NULL, 50), KV_OK));
    for (int64_t a = 0; a < 50; a += 3)
        for (int64_t b = a; b <= 50; b += 5) {
            uint8_t out[12 * 50];
            cr_assert(eq(int, kv_col_read_fixed(c, a, b - a, out), KV_OK));
            cr_assert(memcmp(out, src + 12 * a, (size_t)(12 * (b - a))) == 0, "%lld..%lld", (long long)a, (long long)b);
        }
    uint8_t out[24];
    cr_assert(eq(int, kv_col_read_fixed(c, 49, 2, out), KV_INVALID), "past the length");
    /* overwrite across a boundary (elements 7 and 8 straddle byte 96) */
    uint8_t w[24];
    memset(w, 0xAB, sizeof w);
    cr_assert(eq(int, kv_col_write(c, 7, w, NULL, 2), KV_OK));
    memcpy(src + 84, w, 24);
    uint8_t all[12 * 50];
    cr_assert(eq(int, kv_col_read_fixed(c, 0, 50, all), KV_OK));
    cr_assert(memcmp(all, src, sizeof all) == 0);
    cr_assert(eq(int, kv_col_write(c, 49, w, NULL, 2), KV_INVALID), "write past the length");
    kv_col_close(c);
    kv_colvault_close(cv);
}

Test(col, insert_delete_shift_and_zero_tail)
{
    kv_colvault *cv = open_cv(16, 64);
    kv_col *c;
    int64_t id, n;
    c = new_i64_col(cv, &id);
    int64_t model[64];
    int mn = 0;
    for (int i = 0; i < 20; i++) {
        uint8_t e[8];
        put64(e, i);
        cr_assert(eq(int, kv_col_insert(c, i / 2, e), KV_OK));
        memmove(model + i / 2 + 1, model + i / 2, sizeof(int64_t) * (size_t)(mn - i / 2));
        model[i / 2] = i;
        mn++;
    }
    cr_assert(eq(int, kv_col_delete_at(c, 3), KV_OK));
    memmove(model + 3, model + 4, sizeof(int64_t) * (size_t)(mn - 4));
    mn--;
    cr_assert(eq(int, kv_col_delete_at(c, mn), KV_INVALID));
    cr_assert(eq(int, kv_col_insert(c, mn + 1, (uint8_t[8]){0}), KV_INVALID));
    cr_assert(eq(int, kv_col_len(c, &n), KV_OK));
    cr_assert(eq(i64, n, mn));
    uint8_t all[8 * 64];
    cr_assert(eq(int, kv_col_read_fixed(c, 0, n, all), KV_OK));
    for (int i = 0; i < mn; i++)
        cr_assert(eq(i64, get64(all + 8 * i), model[i]), "at %d", i);
    cr_assert(eq(int, kv_col_clear(c), KV_OK));
    cr_assert(eq(int, kv_col_len(c, &n), KV_OK));
    cr_assert(eq(i64, n, 0));
    kv_col_close(c);
    kv_colvault_close(cv);
}

static void var_read_check(kv_col *c, int n, char **model)
{
    kv_buf b;
    uint64_t offs[256];
    kv_buf_init(&b);
    cr_assert(eq(int, kv_col_read_var(c, 0, n, &b, offs), KV_OK));
    for (int i = 0; i < n; i++) {
        cr_assert(eq(u64, offs[i + 1] - offs[i], strlen(model[i])), "element %d", i);
        cr_assert(memcmp(b.data + offs[i], model[i], strlen(model[i])) == 0, "element %d", i);
    }
    kv_buf_free(&b);
}

Test(col, var_placement_updates_and_index_rewrites)
{
    kv_colvault *cv = open_cv(32, 64);
    kv_col *c;
    int64_t did, iid, n;
    char *model[256];
    int mn = 0;
    cr_assert(eq(int, kv_col_create_var(cv, "v", "bytes", &did, &iid), KV_OK));
    cr_assert(eq(int, kv_col_open_var(cv, did, iid, &c), KV_OK));
    /* appends: a mix of small values and one larger than M (own chunk) */
    const char *vals[] = {"alpha", "b", "", "gamma-gamma-gamma", "0123456789012345678901234567890123456789"
                          "0123456789012345678901234567890123456789", "delta"};
    for (int i = 0; i < 6; i++) {
        size_t l = strlen(vals[i]);
        cr_assert(eq(int, kv_col_append(c, vals[i], &l, 1), KV_OK));
        model[mn++] = strdup(vals[i]);
    }
    var_read_check(c, mn, model);
    /* the 80-byte value got a chunk sized exactly 80 */
    int found80 = 0;
    for (int k = 0; k < 8; k++)
        found80 |= chunk_cap(did, k) == 80;
    cr_assert(found80, "element larger than M gets its own chunk of exactly its size");
    /* batch extend across several chunks */
    char buf[64 * 30];
    size_t lens[30], off = 0;
    for (int i = 0; i < 30; i++) {
        int l = snprintf(buf + off, 64, "item-%d-%.*s", i, i % 20, "xxxxxxxxxxxxxxxxxxxxxxxx");
        lens[i] = (size_t)l;
        model[mn++] = strndup(buf + off, (size_t)l);
        off += (size_t)l;
    }
    cr_assert(eq(int, kv_col_append(c, buf, lens, 30), KV_OK));
    var_read_check(c, mn, model);
    /* shrink in place, grow (relocate), same size */
    size_t l1 = 1, l2 = 50, l3 = 5;
    char grow[51];
    memset(grow, 'G', 50);
    grow[50] = 0;
    cr_assert(eq(int, kv_col_write(c, 0, "Z", &l1, 1), KV_OK));
    free(model[0]); model[0] = strdup("Z");
    cr_assert(eq(int, kv_col_write(c, 1, grow, &l2, 1), KV_OK));
    free(model[1]); model[1] = strdup(grow);
    cr_assert(eq(int, kv_col_write(c, 5, "DELTA", &l3, 1), KV_OK));
    free(model[5]); model[5] = strdup("DELTA");
    var_read_check(c, mn, model);
    /* deletes shift the index entries */
    for (int k = 0; k < 5; k++) {
        int at = (k * 7) % mn;
        cr_assert(eq(int, kv_col_delete_at(c, at), KV_OK));
        free(model[at]);
        memmove(model + at, model + at + 1, sizeof(char *) * (size_t)(mn - at - 1));
        mn--;
    }
    var_read_check(c, mn, model);
    cr_assert(eq(int, kv_col_insert(c, 0, "x"), KV_UNSUPPORTED));
    kv_col_close(c);
    /* reopen and read again */
    cr_assert(eq(int, kv_col_open_var(cv, did, iid, &c), KV_OK));
    cr_assert(eq(int, kv_col_len(c, &n), KV_OK));
    cr_assert(eq(i64, n, mn));
    var_read_check(c, mn, model);
    kv_col_close(c);
    for (int i = 0; i < mn; i++)
        free(model[i]);
    int del = 0;
    cr_assert(eq(int, kv_col_delete(cv, "v", &del), KV_OK));
    cr_assert(eq(int, del, 1), "logical name deletes both rows");
    cr_assert(eq(i64, chunk_cap(did, 0), -1), "chunks removed");
    kv_colvault_close(cv);
}

Test(col, cache_counts_in_len_and_flushes_on_threshold_and_close)
{
    kv_colvault *cv = open_cv(64, 4096);
    kv_col *c;
    int64_t id, n;
    size_t fl = 0;
    c = new_i64_col(cv, &id);
    cr_assert(eq(int, kv_col_cache_enable(c, 1024, 256), KV_OK));
    for (int i = 0; i < 31; i++) {
        uint8_t e[8];
        put64(e, i);
        cr_assert(eq(int, kv_col_append(c, e, NULL, 1), KV_OK));
    }
    cr_assert(eq(int, kv_col_len(c, &n), KV_OK));
    cr_assert(eq(i64, n, 31));
    cr_assert(eq(i64, chunk_cap(id, 0), -1), "31*8 = 248 bytes < threshold: nothing stored yet");
    uint8_t e[8];
    put64(e, 31);
    cr_assert(eq(int, kv_col_append(c, e, NULL, 1), KV_OK)); /* reaches 256 -> flush */
    cr_assert(chunk_cap(id, 0) > 0);
    put64(e, 32);
    cr_assert(eq(int, kv_col_append(c, e, NULL, 1), KV_OK));
    uint8_t all[8 * 33];
    cr_assert(eq(int, kv_col_read_fixed(c, 0, 33, all), KV_OK), "reads flush first");
    cr_assert(eq(i64, get64(all + 8 * 32), 32));
    put64(e, 33);
    cr_assert(eq(int, kv_col_append(c, e, NULL, 1), KV_OK));
    cr_assert(eq(int, kv_col_cache_flush(c, &fl), KV_OK));
    cr_assert(eq(sz, fl, 8));
    put64(e, 34);
    cr_assert(eq(int, kv_col_append(c, e, NULL, 1), KV_OK));
    kv_col_close(c); /* flush on close */
    cr_assert(eq(int, kv_col_open_fixed(cv, id, &c), KV_OK));
    cr_assert(eq(int, kv_col_len(c, &n), KV_OK));
    cr_assert(eq(i64, n, 35));
    kv_col_close(c);
    kv_colvault_close(cv);
}

Test(col, schema_and_missing_parent)
{
    kv_colvault *cv = open_cv(131072, 16777216);
    int64_t cnt;
    cr_assert(eq(int, kv_col_count(cv, &cnt), KV_OK));
    cr_assert(eq(i64, cnt, 0));
    kv_col_info ci;
    cr_assert(eq(int, kv_col_info_get(cv, "nope", &ci), KV_NOTFOUND));
    kv_colvault_close(cv);
    kv_colvault *cv2 = NULL;
    char err[256];
    char bad[700];
    snprintf(bad, sizeof bad, "%s.missing/dir/x.db", path);
    cr_assert(eq(int, kv_colvault_open(bad, 64, 128, &cv2, err, sizeof err), KV_IO));
    cr_assert(cv2 == NULL);
}

/* Found by fuzz/fuzz_colmeta.c: a file whose col_meta row holds a negative
 * length (written by another program) reached the read cache's assertion
 * and callers as a negative count. Now the length read refuses it. */
Test(col, negative_stored_length_is_corrupt)
{
    kv_colvault *cv = open_cv(64, 4096);
    int64_t id, n;
    kv_col *c = new_i64_col(cv, &id);
    sqlite3 *db;
    cr_assert(sqlite3_open(path, &db) == SQLITE_OK);
    cr_assert(sqlite3_exec(db, "UPDATE col_meta SET length = -5", NULL, NULL, NULL) == SQLITE_OK);
    sqlite3_close(db);
    cr_assert(eq(int, kv_col_len(c, &n), KV_CORRUPT));
    cr_assert(ne(ptr, strstr(kv_colvault_errmsg(cv), "negative length"), NULL));
    uint8_t buf[8];
    cr_assert(ne(int, kv_col_read_fixed(c, 0, 1, buf), KV_OK));
    kv_col_close(c);
    kv_colvault_close(cv);
}

/* ------------------------------------------------------------------------
 * Read cache (col_rcache.c): blocks across block and chunk boundaries, one
 * blob handle reopened from chunk to chunk, invalidation by another
 * connection's commit and by our own writes, off for ":memory:".
 * ---------------------------------------------------------------------- */

static void fill_i64(int64_t *v, int64_t n, int64_t seed)
{
    for (int64_t i = 0; i < n; i++)
        v[i] = i * 1000003 + seed;
}

Test(col, read_cache_across_block_and_chunk_boundaries)
{
    /* max 40000 -> chunks of 40000 bytes: blocks [0, 32768) and [32768, 40000),
     * so ranges cross block boundaries inside a chunk and chunk boundaries
     * (where the blob handle is reopened on the next chunk row) */
    kv_colvault *cv = open_cv(1024, 40000);
    kv_col *c;
    int64_t id, n = 30000; /* 240000 bytes: 6 chunks */
    uint64_t hits, misses, drops;
    int on;
    c = new_i64_col(cv, &id);
    int64_t *src = malloc(sizeof *src * (size_t)n), out[4096];
    fill_i64(src, n, 7);
    cr_assert(eq(int, kv_col_append(c, src, NULL, (size_t)n), KV_OK));
    kv_colvault_read_cache_stats(cv, &hits, &misses, &drops, &on);
    cr_assert(eq(int, on, 1), "WAL file: the read cache is on");
    /* ranges straddling every kind of boundary, each read twice (miss, hit) */
    const int64_t starts[] = {0, 4090, 4095, 4096, 4999, 5000, 9095, 14990, 29990, 24000};
    const int64_t counts[] = {10, 12, 1, 7, 2, 1000, 20, 4000, 10, 4000};
    for (int rep = 0; rep < 2; rep++)
        for (size_t k = 0; k < sizeof starts / sizeof *starts; k++) {
            memset(out, 0, sizeof out);
            cr_assert(eq(int, kv_col_read_fixed(c, starts[k], counts[k], out), KV_OK));
            cr_assert(memcmp(out, src + starts[k], (size_t)counts[k] * 8) == 0, "rep %d range %lld+%lld",
                      rep, (long long)starts[k], (long long)counts[k]);
        }
    uint64_t h1, m1;
    kv_colvault_read_cache_stats(cv, &h1, &m1, NULL, NULL);
    cr_assert(gt(u64, m1, misses), "first pass read blocks from SQLite");
    cr_assert(ge(u64, h1 - hits, 10), "second pass answered from the cache (%llu hits)",
              (unsigned long long)(h1 - hits));
    /* the non-blocking variant answers from warm blocks, refuses cold ones */
    int hit = 0;
    memset(out, 0, sizeof out);
    cr_assert(eq(int, kv_col_read_fixed_try(c, 4090, 12, out, &hit), KV_OK));
    cr_assert(eq(int, hit, 1));
    cr_assert(memcmp(out, src + 4090, 12 * 8) == 0);
    cr_assert(eq(int, kv_col_read_fixed_try(c, 29995, 10, out, &hit), KV_INVALID), "past the length");
    cr_assert(eq(int, hit, 1));
    /* a read past the length through the cache is still KV_INVALID */
    cr_assert(eq(int, kv_col_read_fixed(c, 29990, 11, out), KV_INVALID));
    /* a whole-column read (above the bypass size) stays exact */
    int64_t *all = malloc(sizeof *all * (size_t)n);
    cr_assert(eq(int, kv_col_read_fixed(c, 0, n, all), KV_OK));
    cr_assert(memcmp(all, src, (size_t)n * 8) == 0);
    free(all);
    free(src);
    kv_col_close(c);
    kv_colvault_close(cv);
}

Test(col, read_cache_invalidated_by_other_connection_and_own_writes)
{
    kv_colvault *a = open_cv(1024, 65536), *b = NULL;
    char err[256] = "";
    kv_col *ca, *cb;
    int64_t id, n, v[64], out[64];
    int hit = 0;
    cr_assert(eq(int, kv_col_create(a, "x", "i64", 8, &id), KV_OK));
    cr_assert(eq(int, kv_col_open_fixed(a, id, &ca), KV_OK));
    cr_assert(eq(int, kv_colvault_open(path, 1024, 65536, &b, err, sizeof err), KV_OK), "%s", err);
    cr_assert(eq(int, kv_col_open_fixed(b, id, &cb), KV_OK));
    fill_i64(v, 64, 1);
    cr_assert(eq(int, kv_col_append(ca, v, NULL, 32), KV_OK));
    /* warm a's cache: length and the block of elements 0..31 */
    cr_assert(eq(int, kv_col_len(ca, &n), KV_OK));
    cr_assert(eq(i64, n, 32));
    cr_assert(eq(int, kv_col_read_fixed(ca, 0, 32, out), KV_OK));
    cr_assert(eq(int, kv_col_len_try(ca, &n, &hit), KV_OK));
    cr_assert(eq(int, hit, 1));
    cr_assert(eq(i64, n, 32));

    /* the second connection appends 16 and overwrites element 0 */
    cr_assert(eq(int, kv_col_append(cb, v + 32, NULL, 16), KV_OK));
    int64_t neu = -42;
    cr_assert(eq(int, kv_col_write(cb, 0, &neu, NULL, 1), KV_OK));
    /* a's cached length and block are no longer answered */
    cr_assert(eq(int, kv_col_len_try(ca, &n, &hit), KV_OK));
    cr_assert(eq(int, hit, 0), "a commit elsewhere invalidates the cached length");
    cr_assert(eq(int, kv_col_read_fixed_try(ca, 0, 1, out, &hit), KV_OK));
    cr_assert(eq(int, hit, 0), "... and the cached block");
    cr_assert(eq(int, kv_col_len(ca, &n), KV_OK));
    cr_assert(eq(i64, n, 48), "the other connection's append is seen");
    cr_assert(eq(int, kv_col_read_fixed(ca, 0, 48, out), KV_OK));
    cr_assert(eq(i64, out[0], -42));
    cr_assert(memcmp(out + 1, v + 1, 47 * 8) == 0);
    uint64_t drops;
    kv_colvault_read_cache_stats(a, NULL, NULL, &drops, NULL);
    cr_assert(ge(u64, drops, 2), "the header change was seen");

    /* own writes: the cached answer after a write through a is the new one */
    cr_assert(eq(int, kv_col_read_fixed(ca, 0, 48, out), KV_OK)); /* warm */
    neu = 77;
    cr_assert(eq(int, kv_col_write(ca, 5, &neu, NULL, 1), KV_OK));
    cr_assert(eq(int, kv_col_read_fixed(ca, 5, 1, out), KV_OK));
    cr_assert(eq(i64, out[0], 77));
    cr_assert(eq(int, kv_col_delete_at(ca, 0), KV_OK));
    cr_assert(eq(int, kv_col_len(ca, &n), KV_OK));
    cr_assert(eq(i64, n, 47));
    cr_assert(eq(int, kv_col_read_fixed(ca, 4, 1, out), KV_OK));
    cr_assert(eq(i64, out[0], 77), "shifted down by the delete");
    /* b sees a's writes too (its own cache was filled before them) */
    cr_assert(eq(int, kv_col_read_fixed(cb, 0, 47, out), KV_OK));
    cr_assert(eq(i64, out[4], 77));
    cr_assert(eq(int, kv_col_len(cb, &n), KV_OK));
    cr_assert(eq(i64, n, 47));
    kv_col_close(cb);
    kv_colvault_close(b);
    kv_col_close(ca);
    kv_colvault_close(a);
}

Test(col, read_cache_off_in_memory)
{
    kv_colvault *cv = NULL;
    kv_col *c;
    char err[256] = "";
    int64_t id, v[8], out[8];
    int on = 1, hit = 1;
    cr_assert(eq(int, kv_colvault_open(":memory:", 1024, 65536, &cv, err, sizeof err), KV_OK), "%s", err);
    kv_colvault_read_cache_stats(cv, NULL, NULL, NULL, &on);
    cr_assert(eq(int, on, 0), "no WAL-index: no read cache");
    c = new_i64_col(cv, &id);
    fill_i64(v, 8, 3);
    cr_assert(eq(int, kv_col_append(c, v, NULL, 8), KV_OK));
    cr_assert(eq(int, kv_col_read_fixed(c, 0, 8, out), KV_OK));
    cr_assert(memcmp(out, v, sizeof v) == 0);
    cr_assert(eq(int, kv_col_read_fixed_try(c, 0, 8, out, &hit), KV_OK));
    cr_assert(eq(int, hit, 0));
    kv_col_close(c);
    kv_colvault_close(cv);
}

/* kv_colvault_set_checkpointer: what the function saw. */
typedef struct {
    int calls, max_frames;
} ckpt_seen;

static void ckpt_record(void *ctx, int wal_frames)
{
    ckpt_seen *s = ctx;
    s->calls++;
    if (wal_frames > s->max_frames)
        s->max_frames = wal_frames;
}

static int64_t file_size(const char *suffix)
{
    char p[640];
    struct stat sb;
    snprintf(p, sizeof p, "%s%s", path, suffix);
    return stat(p, &sb) == 0 ? (int64_t)sb.st_size : -1;
}

Test(col, checkpointer_replaces_the_automatic_checkpoint)
{
    kv_colvault *cv = open_cv(1 << 20, 4 << 20);
    kv_col *c;
    int64_t id, n = 5 << 20; /* 40 MiB: more than 1000 WAL frames of 32 KiB */
    ckpt_seen seen = {0};
    c = new_i64_col(cv, &id);
    int64_t *src = malloc(sizeof *src * (size_t)n);
    fill_i64(src, n, 3);
    kv_colvault_set_checkpointer(cv, ckpt_record, &seen);
    cr_assert(eq(int, kv_col_append(c, src, NULL, (size_t)n), KV_OK));
    cr_assert(eq(int, seen.calls, 1), "one commit past 1000 frames: one call");
    cr_assert(ge(int, seen.max_frames, 1000));
    /* nothing was copied into the database file: the pages are in the WAL */
    cr_assert(lt(i64, file_size(""), n * 8 / 2), "db %lld bytes", (long long)file_size(""));
    cr_assert(ge(i64, file_size("-wal"), n * 8));
    /* back to SQLite's own: the next commit checkpoints in place */
    kv_colvault_set_checkpointer(cv, NULL, NULL);
    cr_assert(eq(int, kv_col_append(c, src, NULL, 1), KV_OK));
    cr_assert(eq(int, seen.calls, 1));
    cr_assert(ge(i64, file_size(""), n * 8), "checkpointed: db %lld bytes", (long long)file_size(""));
    int64_t out[4];
    cr_assert(eq(int, kv_col_read_fixed(c, n - 3, 4, out), KV_OK));
    cr_assert(eq(i64, out[0], src[n - 3]));
    cr_assert(eq(i64, out[3], src[0]));
    free(src);
    kv_col_close(c);
    kv_colvault_close(cv);
}
