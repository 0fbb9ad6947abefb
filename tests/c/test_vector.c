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
