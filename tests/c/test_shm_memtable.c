/* test_shm_memtable.c - the memtable skip list (shm/memtable.c) against a
 * simple model: newest version per key, tombstones, ordered seek, prefix
 * edges, arena exhaustion, freeze, crash-replay scan. */
#include "shm_test_util.h"

SHMT_SCRATCH_SUITE(shm_memtable, 64u << 20, 32u << 20, 0, 120);

#define NK 600
typedef struct mver { uint64_t seq; int tomb; uint32_t vlen; uint8_t v[64]; int present; } mver;

static void mkkey(char *k, int i) { snprintf(k, 32, "key:%08d", i); }  /* 12 bytes, common 8-byte prefix */

Test(shm_memtable, empty_table_finds_nothing)
{
    uint64_t mt;
    cr_assert_eq(kvshm_mt_create(&B, 1 << 16, &mt), KVSHM_OK);
    kvshm_val out = { NULL, 0, 0, 0, NULL, NULL };
    cr_assert_eq(kvshm_mt_get(S, mt, "a", 1, &out), KVSHM_NOTFOUND);
    kvshm_status err = KVSHM_OK;
    cr_assert_eq(kvshm_mt_seek(S, mt, NULL, 0, 0, &err), 0);
    cr_assert_eq(kvshm_mt_seek(S, mt, "a", 1, 1, &err), 0);
    cr_assert_eq(err, KVSHM_OK);
    cr_assert_eq(kvshm_mt_count(S, mt), 0);
}

Test(shm_memtable, newest_version_wins_against_model)
{
    uint64_t mt;
    cr_assert_eq(kvshm_mt_create(&B, 8u << 20, &mt), KVSHM_OK);
    static mver model[NK];
    uint64_t seed = 11, seq = 0;
    char k[32];
    for (int step = 0; step < 20000; step++) {
        int i = (int)(shmt_rand(&seed) % NK);
        mkkey(k, i);
        int tomb = shmt_rand(&seed) % 5 == 0;
        uint32_t vlen = (uint32_t)(shmt_rand(&seed) % 64);
        uint8_t v[64];
        for (uint32_t j = 0; j < vlen; j++) v[j] = (uint8_t)shmt_rand(&seed);
        seq++;
        cr_assert_eq(kvshm_mt_add(S, mt, k, 12, v, vlen, seq, tomb), KVSHM_OK);
        model[i].seq = seq; model[i].tomb = tomb; model[i].present = 1;
        model[i].vlen = tomb ? 0 : vlen; memcpy(model[i].v, v, vlen);
        if (step % 997 == 0 || step == 19999) {
            for (int q = 0; q < NK; q++) {
                mkkey(k, q);
                uint8_t buf[64];
                kvshm_val out = { buf, sizeof buf, 0, 0, NULL, NULL };
                kvshm_status st = kvshm_mt_get(S, mt, k, 12, &out);
                if (!model[q].present) { cr_assert_eq(st, KVSHM_NOTFOUND); continue; }
                cr_assert_eq(out.seq, model[q].seq, "key %d", q);
                if (model[q].tomb) { cr_assert_eq(st, KVSHM_DELETED); continue; }
                cr_assert_eq(st, KVSHM_OK);
                cr_assert_eq(out.len, model[q].vlen);
                cr_assert_arr_eq(buf, model[q].v, out.len);
            }
        }
    }
    cr_assert_eq(kvshm_mt_count(S, mt), 20000);
}

typedef struct scanst { int n; char last[32]; size_t lastlen; int order_ok; uint64_t lastseq; int newest_ok; } scanst;
static int scan_cb(void *ctx, const void *key, size_t klen, const void *val, size_t vlen,
                   uint64_t seq, int tomb)
{
    scanst *s = ctx;
    int c = s->n ? kvshm_key_cmp(s->last, (uint32_t)s->lastlen, key, (uint32_t)klen) : -1;
    if (c > 0) s->order_ok = 0;
    if (c == 0 && seq >= s->lastseq) s->order_ok = 0;  /* same key: newer first */
    memcpy(s->last, key, klen); s->lastlen = klen; s->lastseq = seq;
    s->n++;
    return 0;
}

Test(shm_memtable, scan_orders_key_then_newest_first)
{
    uint64_t mt;
    cr_assert_eq(kvshm_mt_create(&B, 1u << 20, &mt), KVSHM_OK);
    char k[32];
    uint64_t seed = 3;
    for (uint64_t seq = 1; seq <= 3000; seq++) {
        mkkey(k, (int)(shmt_rand(&seed) % 100));
        cr_assert_eq(kvshm_mt_add(S, mt, k, 12, "v", 1, seq, 0), KVSHM_OK);
    }
    scanst all = { .order_ok = 1 }, newest = { .order_ok = 1 };
    cr_assert_eq(kvshm_mt_scan(S, mt, 0, scan_cb, &all), KVSHM_OK);
    cr_assert_eq(kvshm_mt_scan(S, mt, 1, scan_cb, &newest), KVSHM_OK);
    cr_assert_eq(all.n, 3000);
    cr_assert(all.order_ok);
    cr_assert_eq(newest.n, 100);
    cr_assert(newest.order_ok);
    scanst valid = { .order_ok = 1 };
    cr_assert_eq(kvshm_mt_scan_valid(S, mt, scan_cb, &valid, NULL), KVSHM_OK);
    cr_assert_eq(valid.n, 3000, "append-order replay sees every valid record");
}

/* Key found by a seek, as a string in a static buffer ("<none>" if none). */
static const char *seek_str(uint64_t mt, const char *k, int after, kvshm_status *err)
{
    static char buf[64];
    uint64_t o = kvshm_mt_seek(S, mt, k, (uint32_t)strlen(k), after, err);
    const struct kvshm_rec *r = o ? kvshm_rec_at(S, o) : NULL;
    if (!r) return "<none>";
    snprintf(buf, sizeof buf, "%.*s", (int)r->r_klen, (const char *)kvshm_rec_key(r));
    return buf;
}

Test(shm_memtable, seek_prefix_edges)
{
    uint64_t mt;
    cr_assert_eq(kvshm_mt_create(&B, 1u << 20, &mt), KVSHM_OK);
    const char *keys[] = { "a", "ab", "abc", "abd", "b", "ba", "\xff", "\xff\xff" };
    for (unsigned i = 0; i < 8; i++)
        cr_assert_eq(kvshm_mt_add(S, mt, keys[i], (uint32_t)strlen(keys[i]), "x", 1, i + 1, 0), KVSHM_OK);
    kvshm_status err = KVSHM_OK;
    #define SEEK(k, after) seek_str(mt, k, after, &err)
    cr_assert_str_eq(SEEK("", 0), "a");
    cr_assert_str_eq(SEEK("a", 0), "a");
    cr_assert_str_eq(SEEK("a", 1), "ab");
    cr_assert_str_eq(SEEK("abc", 1), "abd");
    cr_assert_str_eq(SEEK("abcz", 0), "abd");
    cr_assert_str_eq(SEEK("abd", 1), "b");
    cr_assert_str_eq(SEEK("b\x01", 0), "ba");
    cr_assert_str_eq(SEEK("\xff", 1), "\xff\xff");
    cr_assert_str_eq(SEEK("\xff\xff", 1), "<none>");
    cr_assert_str_eq(SEEK("\xff\xff\xff", 0), "<none>");
    cr_assert_eq(err, KVSHM_OK);
}

Test(shm_memtable, full_arena_and_freeze)
{
    uint64_t mt;
    cr_assert_eq(kvshm_mt_create(&B, 4096, &mt), KVSHM_OK);
    char k[32], v[100] = { 0 };
    int n = 0;
    kvshm_status st;
    do { mkkey(k, n); st = kvshm_mt_add(S, mt, k, 12, v, 100, (uint64_t)n + 1, 0); n++; }
    while (st == KVSHM_OK);
    cr_assert_eq(st, KVSHM_E_FULL);
    cr_assert_gt(n, 20);
    /* everything appended before the full arena is still there */
    for (int i = 0; i < n - 1; i++) {
        mkkey(k, i);
        char buf[128];
        kvshm_val out = { buf, sizeof buf, 0, 0, NULL, NULL };
        cr_assert_eq(kvshm_mt_get(S, mt, k, 12, &out), KVSHM_OK);
    }
    uint64_t mt2;
    cr_assert_eq(kvshm_mt_create(&B, 1 << 16, &mt2), KVSHM_OK);
    kvshm_mt_freeze(S, mt2);
    cr_assert_eq(kvshm_mt_add(S, mt2, "a", 1, "b", 1, 1, 0), KVSHM_E_INVAL);
    cr_assert_eq(kvshm_mt_add(S, mt, "", 0, "b", 1, 1, 0), KVSHM_E_INVAL);
    cr_assert_eq(kvshm_mt_create(&B, 100, &mt2), KVSHM_E_INVAL);
}

/* The insertion hint changes where a search starts, never where a node goes:
 * the same adds with and without a finger give byte-identical arenas (node
 * heights depend only on seq and count). The stream mixes ascending runs
 * (the finger's case), jumps back, rewrites of the last key, keys sharing
 * their 8-byte prefix, and adds made without the finger in between (which
 * must make it stale, not wrong). */
Test(shm_memtable, finger_hint_builds_the_same_list)
{
    uint64_t a, b;
    const uint64_t bytes = 4u << 20;
    cr_assert_eq(kvshm_mt_create(&B, bytes, &a), KVSHM_OK);
    cr_assert_eq(kvshm_mt_create(&B, bytes, &b), KVSHM_OK);
    kvshm_mt_finger f;
    memset(&f, 0, sizeof f);
    uint64_t seed = 7, seq = 0;
    int next = 0;
    char k[32];
    for (int step = 0; step < 20000; step++) {
        uint64_t r = shmt_rand(&seed) % 100;
        if (r < 70) next++;                                   /* ascending run */
        else if (r < 80) next = (int)(shmt_rand(&seed) % 5000); /* jump anywhere */
        /* else: the same key again (a newer version goes first) */
        mkkey(k, next);
        seq++;
        cr_assert_eq(kvshm_mt_add(S, a, k, 12, k, 4, seq, 0), KVSHM_OK);
        if (r == 99) /* an add the finger did not see */
            cr_assert_eq(kvshm_mt_add(S, b, k, 12, k, 4, seq, 0), KVSHM_OK);
        else
            cr_assert_eq(kvshm_mt_add_hint(S, b, &f, k, 12, k, 4, seq, 0), KVSHM_OK);
    }
    cr_assert_eq(kvshm_mt_used(S, a), kvshm_mt_used(S, b));
    const uint8_t *pa = kvshm_at(S, a, bytes), *pb = kvshm_at(S, b, bytes);
    cr_assert_arr_eq(pa, pb, kvshm_mt_used(S, a));

    /* a finger of another memtable is ignored: a descending pair added with
     * b's finger builds what it builds without one */
    uint64_t c, d;
    cr_assert_eq(kvshm_mt_create(&B, 1 << 16, &c), KVSHM_OK);
    cr_assert_eq(kvshm_mt_create(&B, 1 << 16, &d), KVSHM_OK);
    for (int i = 0; i < 2; i++) {
        mkkey(k, i ? 1 : 999999);
        seq++;
        cr_assert_eq(kvshm_mt_add_hint(S, c, &f, k, 12, "v", 1, seq, 0), KVSHM_OK);
        cr_assert_eq(kvshm_mt_add(S, d, k, 12, "v", 1, seq, 0), KVSHM_OK);
    }
    cr_assert_eq(kvshm_mt_used(S, c), kvshm_mt_used(S, d));
    cr_assert_arr_eq(kvshm_at(S, c, 1 << 16), kvshm_at(S, d, 1 << 16), kvshm_mt_used(S, c));
}
