/* test_vector.c - the vector store (engine/vector.c): distances of each
 * metric, exact top-k against a brute-force model, cosine normalisation,
 * CRUD and bad input, on real SQLite files. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvault/vector.h"
#include "kvtest_util.h"

static char path[600]; /* the test's database file, in a fresh directory */

static void setup(void) { kvtest_path(path, sizeof path, "v.db"); }

static void teardown(void) { kvtest_remove_dir_of(path); }

TestSuite(vector, .init = setup, .fini = teardown, .timeout = 120);

static kv_vector *vopen(size_t dims, kv_vector_metric m, kv_vector_elem e)
{
    kv_vector *v = NULL;
    char err[256];
    cr_assert(eq(int, kv_vector_open(path, "vec_kvault", dims, m, e, &v, err, sizeof err), KV_OK), "%s", err);
    return v;
}

/* Deterministic pseudo-random floats in [-1, 1). */
static uint64_t rng_state = 88172645463325252ULL;
static float frand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / (double)(1ULL << 53) * 2.0 - 1.0);
}

Test(vector, distances_of_each_metric)
{
    float a[3] = {1, 2, 3}, b[3] = {4, 6, 3};
    cr_expect(eq(dbl, kv_vector_distance(KV_VECTOR_L2, KV_VECTOR_F32, a, b, 3), 5.0));
    cr_expect(eq(dbl, kv_vector_distance(KV_VECTOR_L1, KV_VECTOR_F32, a, b, 3), 7.0));
    float x[2] = {1, 0}, y[2] = {0, 3}, z[2] = {-2, 0}, w[2] = {5, 0};
    cr_expect(eq(dbl, kv_vector_distance(KV_VECTOR_COSINE, KV_VECTOR_F32, x, y, 2), 1.0));
    cr_expect(eq(dbl, kv_vector_distance(KV_VECTOR_COSINE, KV_VECTOR_F32, x, z, 2), 2.0));
    cr_expect(eq(dbl, kv_vector_distance(KV_VECTOR_COSINE, KV_VECTOR_F32, x, w, 2), 0.0));
    float zero[2] = {0, 0};
    cr_expect(eq(dbl, kv_vector_distance(KV_VECTOR_COSINE, KV_VECTOR_F32, x, zero, 2), 1.0));
    int8_t p[4] = {-128, 0, 5, 127}, q[4] = {127, 0, 1, 127};
    cr_expect(eq(dbl, kv_vector_distance(KV_VECTOR_L1, KV_VECTOR_I8, p, q, 4), 259.0));
    cr_expect(eq(dbl, kv_vector_distance(KV_VECTOR_L2, KV_VECTOR_I8, p, q, 4), (double)(float)sqrt(255.0 * 255 + 16)));
    uint8_t m[16] = {0xFF, 0x0F}, n[16] = {0x00, 0x0F};
    n[15] = 0x81;
    cr_expect(eq(dbl, kv_vector_distance(KV_VECTOR_HAMMING, KV_VECTOR_BIT, m, n, 128), 10.0));
    /* float32 precision of the reported value */
    float s[1] = {0}, t[1] = {0.1f};
    cr_expect(eq(dbl, kv_vector_distance(KV_VECTOR_L1, KV_VECTOR_F32, s, t, 1), (double)0.1f));
}

Test(vector, compatibility_table)
{
    cr_expect(eq(int, kv_vector_compatible(KV_VECTOR_COSINE, KV_VECTOR_F32), 1));
    cr_expect(eq(int, kv_vector_compatible(KV_VECTOR_COSINE, KV_VECTOR_I8), 0));
    cr_expect(eq(int, kv_vector_compatible(KV_VECTOR_L2, KV_VECTOR_I8), 1));
    cr_expect(eq(int, kv_vector_compatible(KV_VECTOR_L1, KV_VECTOR_F32), 1));
    cr_expect(eq(int, kv_vector_compatible(KV_VECTOR_L1, KV_VECTOR_BIT), 0));
    cr_expect(eq(int, kv_vector_compatible(KV_VECTOR_HAMMING, KV_VECTOR_BIT), 1));
    cr_expect(eq(int, kv_vector_compatible(KV_VECTOR_HAMMING, KV_VECTOR_F32), 0));
}

/* Brute-force model: full sort of every (distance, id) pair. */
typedef struct {
    double d;
    int64_t id;
} pair;

static int pair_cmp(const void *a, const void *b)
{
    const pair *x = a, *y = b;
    if (x->d != y->d)
        return x->d < y->d ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static void topk_matches_model(kv_vector_metric metric)
{
    enum { N = 600, D = 24 };
    static float data[N][D];
    static int64_t ids[N];
    kv_vector *v = vopen(D, metric, KV_VECTOR_F32);
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < D; j++)
            data[i][j] = frand();
        if (i % 50 == 7 && i > 7) /* exact duplicates exercise the id tie-break */
            memcpy(data[i], data[i - 1], sizeof data[i]);
        char val[32];
        int len = snprintf(val, sizeof val, "value-%d", i);
        cr_assert(eq(int, kv_vector_insert(v, data[i], sizeof data[i], val, (size_t)len, &ids[i]), KV_OK),
                  "%s", kv_vector_errmsg(v));
        if (metric == KV_VECTOR_COSINE) { /* the model sees what is stored */
            double n2 = 0;
            for (int j = 0; j < D; j++)
                n2 += (double)data[i][j] * data[i][j];
            for (int j = 0; j < D; j++)
                data[i][j] = (float)(data[i][j] / sqrt(n2));
        }
    }
    int64_t ks[] = {1, 5, 37, 600, 4096};
    for (int qi = 0; qi < 6; qi++) {
        float q[D];
        for (int j = 0; j < D; j++)
            q[j] = frand();
        float qn[D];
        memcpy(qn, q, sizeof q);
        if (metric == KV_VECTOR_COSINE) {
            double n2 = 0;
            for (int j = 0; j < D; j++)
                n2 += (double)q[j] * q[j];
            for (int j = 0; j < D; j++)
                qn[j] = (float)(q[j] / sqrt(n2));
        }
        static pair model[N];
        for (int i = 0; i < N; i++) {
            model[i].d = kv_vector_distance(metric, KV_VECTOR_F32, qn, data[i], D);
            model[i].id = ids[i];
        }
        qsort(model, N, sizeof model[0], pair_cmp);
        for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++) {
            kv_vector_hits *h = NULL;
            cr_assert(eq(int, kv_vector_search(v, q, sizeof q, ks[ki], &h), KV_OK), "%s", kv_vector_errmsg(v));
            size_t want = ks[ki] < N ? (size_t)ks[ki] : N;
            cr_assert(eq(sz, h->n, want));
            for (size_t r = 0; r < h->n; r++) {
                cr_assert(eq(i64, h->hits[r].id, model[r].id), "metric %d k %lld rank %zu", metric,
                          (long long)ks[ki], r);
                cr_assert(eq(dbl, h->hits[r].distance, model[r].d));
                char val[32];
                int len = snprintf(val, sizeof val, "value-%lld", (long long)(h->hits[r].id - ids[0]));
                cr_assert(eq(sz, h->hits[r].vlen, (size_t)len));
                cr_assert(memcmp(h->hits[r].val, val, (size_t)len) == 0);
            }
            kv_vector_hits_free(h);
        }
    }
    kv_vector_close(v);
}

Test(vector, topk_matches_bruteforce_cosine) { topk_matches_model(KV_VECTOR_COSINE); }
Test(vector, topk_matches_bruteforce_l2) { topk_matches_model(KV_VECTOR_L2); }
Test(vector, topk_matches_bruteforce_l1) { topk_matches_model(KV_VECTOR_L1); }

Test(vector, cosine_stores_unit_vectors)
{
    kv_vector *v = vopen(3, KV_VECTOR_COSINE, KV_VECTOR_F32);
    float a[3] = {3, 0, 4}, zero[3] = {0, 0, 0};
    int64_t id, idz;
    cr_assert(eq(int, kv_vector_insert(v, a, sizeof a, "a", 1, &id), KV_OK));
    cr_assert(eq(int, kv_vector_insert(v, zero, sizeof zero, "", 0, &idz), KV_OK));
    uint8_t *vec, *val;
    size_t vb, vl;
    cr_assert(eq(int, kv_vector_get_by_id(v, id, &vec, &vb, &val, &vl), KV_OK));
    cr_assert(eq(sz, vb, 12));
    float got[3];
    memcpy(got, vec, sizeof got);
    cr_expect(eq(flt, got[0], 0.6f));
    cr_expect(eq(flt, got[1], 0.0f));
    cr_expect(eq(flt, got[2], 0.8f));
    cr_expect(eq(sz, vl, 1));
    kv_vector_free(vec);
    kv_vector_free(val);
    cr_assert(eq(int, kv_vector_get_by_id(v, idz, &vec, &vb, &val, &vl), KV_OK));
    memcpy(got, vec, sizeof got);
    cr_expect(got[0] == 0.0f && got[1] == 0.0f && got[2] == 0.0f);
    cr_expect(eq(sz, vl, 0));
    kv_vector_free(vec);
    kv_vector_free(val);
    /* a scaled query finds the same vector at distance ~0 */
    float q[3] = {30, 0, 40};
    kv_vector_hits *h;
    cr_assert(eq(int, kv_vector_search(v, q, sizeof q, 1, &h), KV_OK));
    cr_assert(eq(sz, h->n, 1));
    cr_expect(eq(i64, h->hits[0].id, id));
    cr_expect(fabs(h->hits[0].distance) < 1e-6);
    kv_vector_hits_free(h);
    kv_vector_close(v);
}

Test(vector, crud_and_bad_input)
{
    kv_vector *v = vopen(4, KV_VECTOR_L2, KV_VECTOR_F32);
    float a[4] = {1, 2, 3, 4}, b[4] = {0, 0, 0, 0};
    int64_t ia, ib, c;
    kv_vector_hits *h = NULL;
    cr_assert(eq(int, kv_vector_search(v, a, sizeof a, 10, &h), KV_OK));
    cr_expect(eq(sz, h->n, 0)); /* empty table */
    kv_vector_hits_free(h);
    cr_assert(eq(int, kv_vector_insert(v, a, sizeof a, "A", 1, &ia), KV_OK));
    cr_assert(eq(int, kv_vector_insert(v, b, sizeof b, "B", 1, &ib), KV_OK));
    cr_expect(eq(int, kv_vector_insert(v, a, 12, "x", 1, &c), KV_INVALID));
    cr_expect(strstr(kv_vector_errmsg(v), "Expected 4 dimensions, got 3") != NULL, "%s", kv_vector_errmsg(v));
    float nan4[4] = {1, NAN, 0, 0};
    cr_expect(eq(int, kv_vector_insert(v, nan4, sizeof nan4, "x", 1, &c), KV_INVALID));
    cr_expect(eq(int, kv_vector_search(v, a, sizeof a, 4097, &h), KV_INVALID));
    cr_expect(eq(int, kv_vector_search(v, a, sizeof a, -1, &h), KV_INVALID));
    cr_assert(eq(int, kv_vector_search(v, a, sizeof a, 0, &h), KV_OK));
    cr_expect(eq(sz, h->n, 0));
    kv_vector_hits_free(h);
    cr_assert(eq(int, kv_vector_count(v, &c), KV_OK));
    cr_expect(eq(i64, c, 2)); /* failed inserts stored nothing */

    /* update: vector for unknown id is a no-op; value for unknown id is NOTFOUND */
    cr_expect(eq(int, kv_vector_update(v, 999, a, sizeof a, NULL, 0), KV_OK));
    cr_expect(eq(int, kv_vector_update(v, 999, NULL, 0, "v", 1), KV_NOTFOUND));
    cr_expect(eq(int, kv_vector_update(v, ia, NULL, 0, NULL, 0), KV_INVALID));
    cr_assert(eq(int, kv_vector_update(v, ib, a, sizeof a, "BB", 2), KV_OK));
    cr_assert(eq(int, kv_vector_search(v, a, sizeof a, 2, &h), KV_OK));
    cr_expect(eq(dbl, h->hits[0].distance, 0.0));
    cr_expect(eq(dbl, h->hits[1].distance, 0.0));
    cr_expect(eq(i64, h->hits[0].id, ia)); /* tie broken by id */
    cr_expect(eq(sz, h->hits[1].vlen, 2));
    kv_vector_hits_free(h);

    int removed, found;
    cr_assert(eq(int, kv_vector_delete(v, ia, &removed), KV_OK));
    cr_expect(eq(int, removed, 1));
    cr_assert(eq(int, kv_vector_delete(v, ia, &removed), KV_OK));
    cr_expect(eq(int, removed, 0));
    cr_assert(eq(int, kv_vector_exists(v, ia, &found), KV_OK));
    cr_expect(eq(int, found, 0));
    uint8_t *vec, *val;
    size_t vb, vl;
    cr_expect(eq(int, kv_vector_get_by_id(v, ia, &vec, &vb, &val, &vl), KV_NOTFOUND));
    char msg[64];
    snprintf(msg, sizeof msg, "ID %lld not found", (long long)ia);
    cr_expect(eq(str, (char *)kv_vector_errmsg(v), msg));
    kv_vector_close(v);

    /* the value row went with its vector */
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT COUNT(*) FROM vec_kvault_values"), 1));
}

Test(vector, open_validation)
{
    kv_vector *v = (kv_vector *)0x1;
    char err[256];
    cr_expect(eq(int, kv_vector_open(path, "t", 12, KV_VECTOR_HAMMING, KV_VECTOR_BIT, &v, err, sizeof err), KV_INVALID));
    cr_expect(v == NULL);
    cr_expect(eq(int, kv_vector_open(path, "t", 8, KV_VECTOR_COSINE, KV_VECTOR_I8, &v, err, sizeof err), KV_INVALID));
    cr_expect(eq(int, kv_vector_open(path, "t", 0, KV_VECTOR_L2, KV_VECTOR_F32, &v, err, sizeof err), KV_INVALID));
    cr_expect(eq(int, kv_vector_open(path, "t;drop", 4, KV_VECTOR_L2, KV_VECTOR_F32, &v, err, sizeof err), KV_INVALID));
    /* reopening with other dimensions: stored rows are detected, not misread */
    v = vopen(4, KV_VECTOR_L2, KV_VECTOR_F32);
    float a[4] = {1, 1, 1, 1};
    int64_t id;
    cr_assert(eq(int, kv_vector_insert(v, a, sizeof a, "a", 1, &id), KV_OK));
    kv_vector_close(v);
    v = vopen(2, KV_VECTOR_L2, KV_VECTOR_F32);
    kv_vector_hits *h;
    cr_expect(eq(int, kv_vector_search(v, a, 8, 1, &h), KV_CORRUPT));
    kv_vector_close(v);
}

/* Insert a and b (nbytes each) into v, search for q: a first at distance
 * da, then b at distance db. */
static void expect_two_hits(kv_vector *v, const void *a, const void *b, const void *q,
                            size_t nbytes, double da, double db)
{
    int64_t ia, ib;
    kv_vector_hits *h;
    cr_assert(eq(int, kv_vector_insert(v, a, nbytes, "a", 1, &ia), KV_OK));
    cr_assert(eq(int, kv_vector_insert(v, b, nbytes, "b", 1, &ib), KV_OK));
    cr_assert(eq(int, kv_vector_search(v, q, nbytes, 5, &h), KV_OK));
    cr_assert(eq(sz, h->n, 2));
    cr_expect(eq(i64, h->hits[0].id, ia));
    cr_expect(eq(i64, h->hits[1].id, ib));
    cr_expect(eq(dbl, h->hits[0].distance, da));
    cr_expect(eq(dbl, h->hits[1].distance, db));
    kv_vector_hits_free(h);
}

Test(vector, int8_and_bit_stores)
{
    kv_vector *v = vopen(4, KV_VECTOR_L1, KV_VECTOR_I8);
    int8_t a[4] = {1, 2, 3, 4}, b[4] = {-1, -2, -3, -4}, q[4] = {1, 2, 3, 5};
    expect_two_hits(v, a, b, q, 4, 1.0, 21.0);
    kv_vector_close(v);

    kv_vector *bv = NULL;
    char err[256];
    cr_assert(eq(int, kv_vector_open(path, "bits", 16, KV_VECTOR_HAMMING, KV_VECTOR_BIT, &bv, err, sizeof err), KV_OK), "%s", err);
    uint8_t x[2] = {0xFF, 0x00}, y[2] = {0x0F, 0x00}, bq[2] = {0xFF, 0x01};
    expect_two_hits(bv, x, y, bq, 2, 1.0, 5.0);
    kv_vector_close(bv);
}

/* ---- chunked layout: insert_many, deletes, updates, a second handle ---- */

typedef struct {
    int64_t id;
    uint8_t *vec; /* stored bytes (as get_by_id returns them) */
} live_row;

/* Random vector of type e: f32 in [-1, 1), int8 and bits uniform. */
static void rand_vec(kv_vector_elem e, uint8_t *p, size_t dims)
{
    if (e == KV_VECTOR_F32) {
        for (size_t i = 0; i < dims; i++) {
            float f = frand();
            memcpy(p + 4 * i, &f, 4);
        }
    } else {
        for (size_t i = 0; i < kv_vector_row_bytes(e, dims); i++)
            p[i] = (uint8_t)(frand() * 127.0f + 128.0f);
    }
}

/* Distance without the float32 rounding (the order the search ranks by). */
static double exact_distance(kv_vector_metric m, kv_vector_elem e, const uint8_t *a, const uint8_t *b,
                             size_t dims)
{
    double acc = 0, na = 0, nb = 0;
    for (size_t i = 0; i < (e == KV_VECTOR_BIT ? dims / 8 : dims); i++) {
        double x, y;
        if (e == KV_VECTOR_BIT) {
            acc += __builtin_popcount((unsigned)(a[i] ^ b[i]));
            continue;
        }
        if (e == KV_VECTOR_F32) {
            float fx, fy;
            memcpy(&fx, a + 4 * i, 4);
            memcpy(&fy, b + 4 * i, 4);
            x = fx;
            y = fy;
        } else {
            x = (int8_t)a[i];
            y = (int8_t)b[i];
        }
        if (m == KV_VECTOR_COSINE) {
            acc += x * y;
            na += x * x;
            nb += y * y;
        } else if (m == KV_VECTOR_L2) {
            acc += (x - y) * (x - y);
        } else {
            acc += fabs(x - y);
        }
    }
    if (m == KV_VECTOR_COSINE)
        return na == 0 || nb == 0 ? 1.0 : 1.0 - acc / (sqrt(na) * sqrt(nb));
    return m == KV_VECTOR_L2 ? sqrt(acc) : acc;
}

/* Search `v` for random queries and compare with a full sort of the live
 * rows by exact distance then id: same ids, and the distances
 * kv_vector_distance reports. */
static void expect_model(kv_vector *v, kv_vector_metric m, kv_vector_elem e, size_t dims, live_row *rows,
                         size_t n)
{
    size_t nb = kv_vector_row_bytes(e, dims);
    uint8_t *q = malloc(nb), *qn = malloc(nb);
    pair *model = malloc((n ? n : 1) * sizeof *model);
    for (int qi = 0; qi < 3; qi++) {
        rand_vec(e, q, dims);
        memcpy(qn, q, nb);
        if (m == KV_VECTOR_COSINE) {
            double n2 = 0;
            float f;
            for (size_t j = 0; j < dims; j++) {
                memcpy(&f, q + 4 * j, 4);
                n2 += (double)f * f;
            }
            for (size_t j = 0; j < dims; j++) {
                memcpy(&f, q + 4 * j, 4);
                f = (float)(f * (1.0 / sqrt(n2)));
                memcpy(qn + 4 * j, &f, 4);
            }
        }
        for (size_t i = 0; i < n; i++)
            model[i] = (pair){exact_distance(m, e, qn, rows[i].vec, dims), rows[i].id};
        qsort(model, n, sizeof *model, pair_cmp);
        for (size_t i = 0; i < n; i++)
            model[i].d = (double)(float)model[i].d;
        int64_t ks[] = {1, 10, 100};
        for (size_t ki = 0; ki < 3; ki++) {
            kv_vector_hits *h = NULL;
            cr_assert(eq(int, kv_vector_search(v, q, nb, ks[ki], &h), KV_OK), "%s", kv_vector_errmsg(v));
            size_t want = (size_t)ks[ki] < n ? (size_t)ks[ki] : n;
            cr_assert(eq(sz, h->n, want));
            for (size_t r = 0; r < h->n; r++) {
                cr_assert(eq(i64, h->hits[r].id, model[r].id), "metric %d elem %d dims %zu rank %zu", m, e,
                          dims, r);
                cr_assert(eq(dbl, h->hits[r].distance, model[r].d));
            }
            kv_vector_hits_free(h);
        }
    }
    free(model);
    free(q);
    free(qn);
}

/* Read back what the store holds for row `id`. */
static uint8_t *stored(kv_vector *v, int64_t id, size_t nb)
{
    uint8_t *vec, *val;
    size_t vb, vl;
    cr_assert(eq(int, kv_vector_get_by_id(v, id, &vec, &vb, &val, &vl), KV_OK), "%s", kv_vector_errmsg(v));
    cr_assert(eq(sz, vb, nb));
    uint8_t *copy = malloc(nb);
    memcpy(copy, vec, nb);
    kv_vector_free(vec);
    kv_vector_free(val);
    return copy;
}

/* 20 seeded random tables per (metric, type): bulk and single inserts (large
 * rows so several chunks form, small ones that stay unchunked), deletes and
 * vector updates in and out of chunks, then k-NN equals the model. */
static void seeded_tables(kv_vector_metric m, kv_vector_elem e)
{
    for (int seed = 0; seed < 20; seed++) {
        rng_state = 0x2545F4914F6CDD1DULL * (uint64_t)(seed + 1) + (uint64_t)m * 131 + (uint64_t)e;
        size_t dims;
        if (seed % 4 == 0) /* >= 16 KiB rows: 64-row chunks */
            dims = e == KV_VECTOR_F32 ? 4096 : e == KV_VECTOR_I8 ? 16384 : 65536;
        else
            dims = e == KV_VECTOR_BIT ? 8 * (size_t)(1 + seed * 3) : (size_t)(3 + seed * 7);
        size_t nb = kv_vector_row_bytes(e, dims), n = 150 + (size_t)((frand() + 1.0f) * 100.0f);
        char table[32];
        snprintf(table, sizeof table, "t%d_%d_%d", m, e, seed);
        kv_vector *v = NULL;
        char err[256];
        cr_assert(eq(int, kv_vector_open(path, table, dims, m, e, &v, err, sizeof err), KV_OK), "%s", err);
        uint8_t *batch = malloc(n * nb);
        for (size_t i = 0; i < n; i++)
            rand_vec(e, batch + i * nb, dims);
        size_t bulk = n * 2 / 3;
        int64_t *ids = malloc(n * sizeof *ids);
        cr_assert(eq(int, kv_vector_insert_many(v, bulk, batch, bulk * nb, NULL, NULL, ids), KV_OK), "%s",
                  kv_vector_errmsg(v));
        for (size_t i = bulk; i < n; i++)
            cr_assert(eq(int, kv_vector_insert(v, batch + i * nb, nb, "s", 1, &ids[i]), KV_OK));
        for (size_t i = 1; i < n; i++)
            cr_assert(eq(i64, ids[i], ids[i - 1] + 1));
        /* search once so the in-memory copy exists, then change rows */
        kv_vector_hits *h = NULL;
        cr_assert(eq(int, kv_vector_search(v, batch, nb, 1, &h), KV_OK));
        kv_vector_hits_free(h);
        live_row *rows = malloc(n * sizeof *rows);
        size_t nl = 0;
        for (size_t i = 0; i < n; i++) {
            if (i % 9 == 4) {
                int removed = 0;
                cr_assert(eq(int, kv_vector_delete(v, ids[i], &removed), KV_OK));
                cr_assert(eq(int, removed, 1));
                continue;
            }
            if (i % 11 == 6) {
                rand_vec(e, batch + i * nb, dims);
                cr_assert(eq(int, kv_vector_update(v, ids[i], batch + i * nb, nb, NULL, 0), KV_OK));
            }
            rows[nl++] = (live_row){ids[i], stored(v, ids[i], nb)};
        }
        int64_t count;
        cr_assert(eq(int, kv_vector_count(v, &count), KV_OK));
        cr_assert(eq(i64, count, (int64_t)nl));
        expect_model(v, m, e, dims, rows, nl);
        kv_vector_set_threads(v, 3); /* the threaded scan gives the same results */
        expect_model(v, m, e, dims, rows, nl);
        for (size_t i = 0; i < nl; i++)
            free(rows[i].vec);
        free(rows);
        free(ids);
        free(batch);
        kv_vector_close(v);
    }
}

Test(vector, seeded_tables_f32_cosine) { seeded_tables(KV_VECTOR_COSINE, KV_VECTOR_F32); }
Test(vector, seeded_tables_f32_l2) { seeded_tables(KV_VECTOR_L2, KV_VECTOR_F32); }
Test(vector, seeded_tables_f32_l1) { seeded_tables(KV_VECTOR_L1, KV_VECTOR_F32); }
Test(vector, seeded_tables_i8_l2) { seeded_tables(KV_VECTOR_L2, KV_VECTOR_I8); }
Test(vector, seeded_tables_i8_l1) { seeded_tables(KV_VECTOR_L1, KV_VECTOR_I8); }
Test(vector, seeded_tables_bit_hamming) { seeded_tables(KV_VECTOR_HAMMING, KV_VECTOR_BIT); }

Test(vector, chunks_are_written_and_other_handles_see_changes)
{
    enum { D = 4096 }; /* 16 KiB rows: 64 per chunk */
    kv_vector *a = vopen(D, KV_VECTOR_L2, KV_VECTOR_F32), *b = vopen(D, KV_VECTOR_L2, KV_VECTOR_F32);
    static float rows[200][D];
    for (int i = 0; i < 200; i++)
        for (int j = 0; j < D; j++)
            rows[i][j] = (float)i; /* row i is at distance sqrt(D)*|i-x| from x */
    int64_t ids[200];
    cr_assert(eq(int, kv_vector_insert_many(a, 130, rows, 130 * sizeof rows[0], NULL, NULL, ids), KV_OK));
    /* two whole chunks and two unchunked rows */
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault_chunks"), 2));
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault WHERE chunk_id IS NULL"), 2));
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT length(vectors) FROM vec_kvault_chunk_vectors LIMIT 1"),
                 64 * (int64_t)sizeof rows[0]));
    kv_vector_hits *h;
    cr_assert(eq(int, kv_vector_search(b, rows[77], sizeof rows[0], 2, &h), KV_OK)); /* b loads its copy */
    cr_expect(eq(i64, h->hits[0].id, ids[77]));
    kv_vector_hits_free(h);
    /* a: single inserts pack the unchunked rows into a third chunk */
    for (int i = 130; i < 200; i++)
        cr_assert(eq(int, kv_vector_insert(a, rows[i], sizeof rows[0], "x", 1, &ids[i]), KV_OK));
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault_chunks"), 3));
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault WHERE chunk_id IS NULL"), 8));
    int removed;
    cr_assert(eq(int, kv_vector_delete(a, ids[77], &removed), KV_OK));
    cr_assert(eq(int, kv_vector_delete(a, ids[199], &removed), KV_OK));
    cr_assert(eq(int, kv_vector_update(a, ids[10], rows[150], sizeof rows[0], NULL, 0), KV_OK));
    /* b sees all of it (data_version changed) */
    cr_assert(eq(int, kv_vector_search(b, rows[77], sizeof rows[0], 2, &h), KV_OK));
    cr_expect(eq(i64, h->hits[0].id, ids[76]));
    cr_expect(eq(i64, h->hits[1].id, ids[78]));
    kv_vector_hits_free(h);
    cr_assert(eq(int, kv_vector_search(b, rows[199], sizeof rows[0], 1, &h), KV_OK));
    cr_expect(eq(i64, h->hits[0].id, ids[198]));
    kv_vector_hits_free(h);
    cr_assert(eq(int, kv_vector_search(b, rows[150], sizeof rows[0], 2, &h), KV_OK));
    cr_expect(eq(i64, h->hits[0].id, ids[10])); /* tie with ids[150]: lower id first */
    cr_expect(eq(i64, h->hits[1].id, ids[150]));
    kv_vector_hits_free(h);
    /* a chunk whose every row is deleted goes away */
    for (int i = 0; i < 64; i++)
        cr_assert(eq(int, kv_vector_delete(b, ids[i], &removed), KV_OK));
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault_chunks"), 2));
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault_chunk_vectors"), 2));
    int64_t c;
    cr_assert(eq(int, kv_vector_count(a, &c), KV_OK));
    cr_expect(eq(i64, c, 200 - 2 - 64));
    kv_vector_close(a);
    kv_vector_close(b);
}

Test(vector, row_per_vector_files_still_open)
{
    /* the layout of earlier versions: one row per vector, no chunk columns */
    sqlite3 *db;
    cr_assert(eq(int, sqlite3_open(path, &db), SQLITE_OK));
    cr_assert(eq(int, sqlite3_exec(db,
                                   "CREATE TABLE vec_kvault (id INTEGER PRIMARY KEY, value_ref INTEGER NOT NULL,"
                                   " vector BLOB NOT NULL);"
                                   "CREATE TABLE vec_kvault_values (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                                   " value BLOB NOT NULL); BEGIN",
                                   NULL, NULL, NULL),
                 SQLITE_OK));
    sqlite3_stmt *s;
    sqlite3_prepare_v2(db, "INSERT INTO vec_kvault_values(value) VALUES('v'); ", -1, &s, NULL);
    sqlite3_stmt *r;
    sqlite3_prepare_v2(db, "INSERT INTO vec_kvault(value_ref, vector) VALUES(last_insert_rowid(), ?1)", -1, &r,
                       NULL);
    for (int i = 0; i < 5000; i++) {
        float x[2] = {(float)i, 0};
        sqlite3_step(s);
        sqlite3_reset(s);
        sqlite3_bind_blob(r, 1, x, sizeof x, SQLITE_STATIC);
        cr_assert(eq(int, sqlite3_step(r), SQLITE_DONE));
        sqlite3_reset(r);
    }
    sqlite3_finalize(s);
    sqlite3_finalize(r);
    cr_assert(eq(int, sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK));
    sqlite3_close(db);
    kv_vector *v = vopen(2, KV_VECTOR_L2, KV_VECTOR_F32);
    float q[2] = {1234.2f, 0};
    kv_vector_hits *h;
    cr_assert(eq(int, kv_vector_search(v, q, sizeof q, 2, &h), KV_OK), "%s", kv_vector_errmsg(v));
    cr_expect(eq(i64, h->hits[0].id, 1235));
    cr_expect(eq(i64, h->hits[1].id, 1236));
    kv_vector_hits_free(h);
    /* the next write packs the old rows into chunks (4096 rows each at 8 bytes) */
    int64_t id;
    cr_assert(eq(int, kv_vector_insert(v, q, sizeof q, "n", 1, &id), KV_OK), "%s", kv_vector_errmsg(v));
    cr_expect(eq(i64, id, 5001));
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault_chunks"), 1));
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault WHERE chunk_id IS NULL"), 905));
    cr_assert(eq(int, kv_vector_search(v, q, sizeof q, 2, &h), KV_OK));
    cr_expect(eq(i64, h->hits[0].id, 5001));
    cr_expect(eq(i64, h->hits[1].id, 1235));
    kv_vector_hits_free(h);
    kv_vector_close(v);
}

/* A commit that leaves 1000 WAL frames or more wakes the handle's
 * checkpointer: the database file receives the pages while the handles
 * stay open, two handles checkpointing the same file concurrently with
 * their writes and searches lose nothing, and close joins the thread. */
Test(vector, checkpointer_copies_the_wal_while_open)
{
    enum { D = 256, N = 6000 }; /* 6 MB of vectors per bulk insert: ~1500 frames */
    kv_vector *a = vopen(D, KV_VECTOR_L2, KV_VECTOR_F32), *b = vopen(D, KV_VECTOR_L2, KV_VECTOR_F32);
    static float rows[N][D];
    for (int i = 0; i < N; i++)
        for (int j = 0; j < D; j++)
            rows[i][j] = (float)i;
    static int64_t ids[N];
    cr_assert(eq(int, kv_vector_insert_many(a, N, rows, sizeof rows, NULL, NULL, ids), KV_OK));
    struct stat sb;
    for (int tries = 0; tries < 600 && (stat(path, &sb) != 0 || sb.st_size < (off_t)sizeof rows); tries++)
        usleep(50 * 1000); /* up to 30 s on a loaded machine */
    cr_assert(stat(path, &sb) == 0);
    cr_expect(sb.st_size >= (off_t)sizeof rows, "database file %lld bytes after the checkpoint",
              (long long)sb.st_size);
    for (int round = 0; round < 3; round++) {
        kv_vector *w = round % 2 ? a : b;
        cr_assert(eq(int, kv_vector_insert_many(w, N, rows, sizeof rows, NULL, NULL, ids), KV_OK));
        for (int i = 0; i < 50; i++)
            cr_assert(eq(int, kv_vector_insert(w, rows[i], sizeof rows[0], "s", 1, &ids[i]), KV_OK));
        kv_vector_hits *h;
        cr_assert(eq(int, kv_vector_search(round % 2 ? b : a, rows[N - 1], sizeof rows[0], 4, &h), KV_OK));
        cr_expect(eq(sz, h->n, 4));
        cr_expect(eq(dbl, h->hits[0].distance, 0.0));
        kv_vector_hits_free(h);
    }
    int64_t c;
    cr_assert(eq(int, kv_vector_count(b, &c), KV_OK));
    cr_expect(eq(i64, c, 4 * N + 150));
    kv_vector_close(a);
    kv_vector_close(b);
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault"), 4 * N + 150));
}

/* Group commit (kv_vector_tx_begin): a vector of the wrong size fails alone
 * inside the transaction; a rollback undoes the others and the handle's
 * copy and ids follow the file afterwards. */
Test(vector, tx_groups_writes_and_rollback_resets_the_handle)
{
    kv_vector *v = vopen(4, KV_VECTOR_L2, KV_VECTOR_F32);
    float x[4] = {1, 2, 3, 4}, bad[3] = {1, 2, 3};
    int64_t id = 0, n = -1;
    cr_assert(eq(int, kv_vector_tx_begin(v), KV_OK), "%s", kv_vector_errmsg(v));
    cr_assert(eq(int, kv_vector_insert(v, x, sizeof x, "a", 1, &id), KV_OK));
    cr_expect(eq(i64, id, 1));
    cr_expect(eq(int, kv_vector_insert(v, bad, sizeof bad, "b", 1, &id), KV_INVALID));
    cr_assert(eq(int, kv_vector_insert(v, x, sizeof x, "c", 1, &id), KV_OK));
    cr_expect(eq(i64, id, 2));
    cr_assert(eq(int, kv_vector_tx_end(v, 0), KV_OK));
    cr_expect(eq(int, kv_vector_count(v, &n), KV_OK));
    cr_expect(eq(i64, n, 0));
    cr_assert(eq(int, kv_vector_tx_begin(v), KV_OK));
    cr_assert(eq(int, kv_vector_insert(v, x, sizeof x, "d", 1, &id), KV_OK));
    cr_expect(eq(i64, id, 1));
    cr_assert(eq(int, kv_vector_insert(v, x, sizeof x, "e", 1, &id), KV_OK));
    cr_assert(eq(int, kv_vector_tx_end(v, 1), KV_OK));
    cr_assert(eq(int, kv_vector_insert(v, x, sizeof x, "f", 1, &id), KV_OK));
    cr_expect(eq(i64, id, 3));
    cr_expect(eq(int, kv_vector_count(v, &n), KV_OK));
    cr_expect(eq(i64, n, 3));
    kv_vector_close(v);
}

/* The layout invariant (engine/vector.c, section 5b): every row at or
 * below the last chunk's largest id is in a chunk, every row above it is
 * unchunked, and chunks are full. */
static void expect_layout(int64_t rows, int64_t chunk_rows)
{
    int64_t mark = kvtest_sql_i64(path, "SELECT coalesce(max(id), 0) FROM vec_kvault WHERE chunk_id IS NOT NULL");
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault"), rows));
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault WHERE id <= (SELECT coalesce(max(id), 0) "
                                           "FROM vec_kvault WHERE chunk_id IS NOT NULL) AND chunk_id IS NULL"),
                 0), "an unchunked row below the chunks (mark %lld)", (long long)mark);
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault_chunks WHERE size != "
                                           "(SELECT max(size) FROM vec_kvault_chunks)"),
                 0));
    if (mark)
        cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT max(size) FROM vec_kvault_chunks"), chunk_rows));
}

Test(vector, leased_ids_pack_below_the_horizon_and_late_rows_unpack)
{
    enum { D = 4096, C = 64 }; /* 16 KiB rows: 64 per chunk */
    kv_vector *w = vopen(D, KV_VECTOR_L2, KV_VECTOR_F32), *other = vopen(D, KV_VECTOR_L2, KV_VECTOR_F32);
    static float row[D];
    int64_t a, b, id;
    /* two clients' blocks, filled at once, in alternation */
    cr_assert(eq(int, kv_vector_lease(w, 100, &a), KV_OK), "%s", kv_vector_errmsg(w));
    cr_assert(eq(int, kv_vector_lease(w, 100, &b), KV_OK));
    cr_expect(eq(i64, a, 1));
    cr_expect(eq(i64, b, 101));
    for (int i = 0; i < 100; i++) {
        row[0] = (float)i;
        cr_assert(eq(int, kv_vector_insert_at(w, b + i, row, sizeof row, "b", 1), KV_OK), "%s", kv_vector_errmsg(w));
        cr_assert(eq(int, kv_vector_insert_at(w, a + i, row, sizeof row, "a", 1), KV_OK));
        /* while both blocks are in use, chunks are cut only from rows
         * below both blocks' next ids (block a's) */
        int64_t chunks = kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault_chunks");
        if (i < 99)
            cr_expect(le(i64, chunks * C, i + 1), "%lld chunks after %d rows of block a", (long long)chunks, i + 1);
    }
    expect_layout(200, C);
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault_chunks"), 3));
    /* an id taken twice is refused, nothing changes */
    cr_expect(eq(int, kv_vector_insert_at(w, a + 5, row, sizeof row, "x", 1), KV_INVALID));
    cr_expect(eq(str, (char *)kv_vector_errmsg(w), "vector id 6 is already stored"));
    /* a block whose rows come after chunks were cut above it (a writer
     * before this one granted it): its rows unpack those chunks */
    int64_t late;
    cr_assert(eq(int, kv_vector_lease(other, 10, &late), KV_OK));
    cr_expect(eq(i64, late, 201));
    int64_t ids[3 * C];
    static float many[3 * C][D];
    cr_assert(eq(int, kv_vector_insert_many(w, 3 * C, many, sizeof many, NULL, NULL, ids), KV_OK));
    cr_expect(eq(i64, ids[0], 211)); /* above both blocks */
    expect_layout(200 + 3 * C, C);
    int64_t before = kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault WHERE chunk_id IS NULL");
    for (int i = 0; i < 10; i++)
        cr_assert(eq(int, kv_vector_insert_at(w, late + i, row, sizeof row, "late", 4), KV_OK), "%s",
                  kv_vector_errmsg(w));
    expect_layout(200 + 3 * C + 10, C);
    cr_expect(gt(i64, kvtest_sql_i64(path, "SELECT count(*) FROM vec_kvault WHERE chunk_id IS NULL"), before));
    /* every row is found where it is */
    for (int i = 0; i < 10; i++) {
        uint8_t *vec, *val;
        size_t vb, vl;
        cr_assert(eq(int, kv_vector_get_by_id(other, late + i, &vec, &vb, &val, &vl), KV_OK));
        cr_expect(eq(sz, vl, 4));
        kv_vector_free(vec);
        kv_vector_free(val);
    }
    kv_vector_hits *h;
    row[0] = 42.0f;
    cr_assert(eq(int, kv_vector_search(other, row, sizeof row, 3, &h), KV_OK));
    cr_expect(eq(dbl, h->hits[0].distance, 0.0));
    kv_vector_hits_free(h);
    /* the unused tail of a block goes back: the next ids follow on */
    cr_assert(eq(int, kv_vector_lease(w, 20, &id), KV_OK));
    cr_assert(eq(int, kv_vector_lease_return(w, id, id + 20), KV_OK));
    cr_assert(eq(int, kv_vector_insert(w, row, sizeof row, "n", 1, &id), KV_OK));
    cr_expect(eq(i64, id, 211 + 3 * C));
    int64_t n;
    cr_assert(eq(int, kv_vector_count(other, &n), KV_OK));
    cr_expect(eq(i64, n, 200 + 3 * C + 10 + 1));
    expect_layout(n, C);
    kv_vector_close(w);
    kv_vector_close(other);
}

Test(vector, an_embedded_handle_sees_leases_granted_after_it_looked)
{
    /* a handle that found no kohakuvault_meta (it remembers that) still
     * takes its ids above a block another connection grants later */
    kv_vector *emb = vopen(4, KV_VECTOR_L2, KV_VECTOR_F32), *w = vopen(4, KV_VECTOR_L2, KV_VECTOR_F32);
    float x[4] = {1, 2, 3, 4};
    int64_t id, lo;
    cr_assert(eq(int, kv_vector_insert(emb, x, sizeof x, "a", 1, &id), KV_OK));
    cr_expect(eq(i64, id, 1));
    cr_assert(eq(int, kv_vector_insert(emb, x, sizeof x, "b", 1, &id), KV_OK));
    cr_expect(eq(i64, id, 2));
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT count(*) FROM sqlite_master WHERE name='kohakuvault_meta'"), 0));
    cr_assert(eq(int, kv_vector_lease(w, 50, &lo), KV_OK), "%s", kv_vector_errmsg(w));
    cr_expect(eq(i64, lo, 3));
    cr_assert(eq(int, kv_vector_insert(emb, x, sizeof x, "c", 1, &id), KV_OK));
    cr_expect(eq(i64, id, 53));
    kv_vector_close(emb);
    kv_vector_close(w);
}
