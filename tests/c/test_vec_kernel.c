/* test_vec_kernel.c - the scan kernels (engine/vec_kernel.c): every SIMD
 * variant this CPU runs gives the scalar kernel's score on random data of
 * many lengths (tails included), for f32 cosine/L2/L1, int8 L2/L1 and bit
 * hamming; the bounded heap keeps the best k in (score, id) order. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vec_kernel.h"

TestSuite(vec_kernel, .timeout = 120);

static uint64_t rs = 0x9E3779B97F4A7C15ULL;
static uint64_t next(void)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return rs;
}

/* Fill n bytes of element type e with random values (f32 in [-1, 1)). */
static void fill(kv_vector_elem e, void *p, size_t dims)
{
    if (e == KV_VECTOR_F32) {
        for (size_t i = 0; i < dims; i++) {
            float f = (float)((double)(next() >> 11) / (double)(1ULL << 53) * 2.0 - 1.0);
            memcpy((uint8_t *)p + 4 * i, &f, 4);
        }
    } else {
        uint8_t *b = p;
        for (size_t i = 0; i < kv_vector_row_bytes(e, dims); i++)
            b[i] = (uint8_t)next();
    }
}

static void compare_isas(kv_vector_metric m, kv_vector_elem e)
{
    static const size_t dims_list[] = {8, 16, 24, 40, 64, 72, 128, 136, 384, 768, 1000, 1024, 4104};
    kvk_score_fn scalar = kvk_kernel(m, e, KVK_SCALAR);
    cr_assert(scalar != NULL);
    int tested = 0;
    for (int isa = KVK_AVX2; isa <= KVK_AVX512; isa++) {
        kvk_score_fn fn = kvk_kernel(m, e, (kvk_isa)isa);
        if (!fn)
            continue; /* not on this CPU */
        tested++;
        for (size_t di = 0; di < sizeof dims_list / sizeof dims_list[0]; di++) {
            size_t dims = dims_list[di];
            if (e == KV_VECTOR_F32 || e == KV_VECTOR_I8)
                dims = dims - 1 + (di % 3); /* odd lengths exercise the tails */
            if (e == KV_VECTOR_BIT)
                dims = dims / 8 * 8;
            size_t nb = kv_vector_row_bytes(e, dims);
            /* +1 byte offset: any alignment must work */
            uint8_t *a = malloc(nb + 1), *b = malloc(nb + 1);
            for (int rep = 0; rep < 20; rep++) {
                fill(e, a + 1, dims);
                fill(e, b + 1, dims);
                double want = scalar(a + 1, b + 1, dims), got = fn(a + 1, b + 1, dims);
                if (e == KV_VECTOR_F32) /* summation order differs: relative float error */
                    cr_assert(fabs(got - want) <= 1e-5 * (1.0 + fabs(want)),
                              "metric %d isa %d dims %zu: %.9g vs %.9g", m, isa, dims, got, want);
                else /* integer sums: exact */
                    cr_assert(eq(dbl, got, want), "metric %d isa %d dims %zu", m, isa, dims);
            }
            free(a);
            free(b);
        }
    }
    cr_log_info("metric %d elem %d: %d SIMD level(s) checked, best %d", m, e, tested,
                kvk_best_isa(m, e));
}

Test(vec_kernel, f32_cosine_simd_equals_scalar) { compare_isas(KV_VECTOR_COSINE, KV_VECTOR_F32); }
Test(vec_kernel, f32_l2_simd_equals_scalar) { compare_isas(KV_VECTOR_L2, KV_VECTOR_F32); }
Test(vec_kernel, f32_l1_simd_equals_scalar) { compare_isas(KV_VECTOR_L1, KV_VECTOR_F32); }
Test(vec_kernel, i8_l2_simd_equals_scalar) { compare_isas(KV_VECTOR_L2, KV_VECTOR_I8); }
Test(vec_kernel, i8_l1_simd_equals_scalar) { compare_isas(KV_VECTOR_L1, KV_VECTOR_I8); }
Test(vec_kernel, bit_hamming_simd_equals_scalar) { compare_isas(KV_VECTOR_HAMMING, KV_VECTOR_BIT); }

Test(vec_kernel, scores_match_the_distance_definitions)
{
    float a[3] = {1, 2, 3}, b[3] = {4, 6, 3};
    for (int isa = KVK_SCALAR; isa <= KVK_AVX512; isa++) {
        kvk_score_fn l2 = kvk_kernel(KV_VECTOR_L2, KV_VECTOR_F32, (kvk_isa)isa);
        kvk_score_fn l1 = kvk_kernel(KV_VECTOR_L1, KV_VECTOR_F32, (kvk_isa)isa);
        if (!l2)
            continue;
        cr_expect(eq(dbl, l2(a, b, 3), 25.0)); /* squared Euclidean */
        cr_expect(eq(dbl, l1(a, b, 3), 7.0));
    }
    float x[2] = {0.6f, 0.8f};
    cr_expect(fabs(kvk_kernel(KV_VECTOR_COSINE, KV_VECTOR_F32, KVK_SCALAR)(x, x, 2)) < 1e-7);
    cr_expect(kvk_kernel(KV_VECTOR_COSINE, KV_VECTOR_I8, KVK_SCALAR) == NULL); /* incompatible */
}

Test(vec_kernel, heap_keeps_best_k_with_id_ties)
{
    kvk_cand store[5];
    kvk_heap h = {store, 0, 5};
    double scores[] = {5, 1, 4, 1, 9, 0.5, 3, 1, 7};
    for (int i = 0; i < 9; i++)
        kvk_heap_push(&h, scores[i], 100 - i, NULL);
    kvk_heap_sort(&h);
    cr_assert(eq(sz, h.n, 5));
    double ws[] = {0.5, 1, 1, 1, 3};
    int64_t wi[] = {95, 93, 97, 99, 94};
    for (int i = 0; i < 5; i++) {
        cr_expect(eq(dbl, h.c[i].score, ws[i]));
        cr_expect(eq(i64, h.c[i].id, wi[i]));
    }
    kvk_heap empty = {store, 0, 0};
    kvk_heap_push(&empty, 1, 1, NULL);
    cr_expect(eq(sz, empty.n, 0));
}

/* Row preparation: every level finds the first non-finite element, leaves
 * zero rows as they are and writes unit rows within one float32 rounding of
 * the scalar level (only the order of the double norm sum differs). */
Test(vec_kernel, prep_f32_simd_equals_scalar)
{
    static const size_t dims_list[] = {1, 7, 8, 9, 15, 16, 17, 383, 384, 385, 1000};
    kvk_prep_fn scalar = kvk_prep_f32(KVK_SCALAR);
    cr_assert(scalar != NULL);
    for (int isa = KVK_SCALAR; isa <= KVK_AVX512; isa++) {
        kvk_prep_fn fn = kvk_prep_f32((kvk_isa)isa);
        if (!fn)
            continue;
        for (size_t di = 0; di < sizeof dims_list / sizeof dims_list[0]; di++) {
            size_t dims = dims_list[di];
            uint8_t *src = malloc(4 * dims + 1), *a = malloc(4 * dims + 1), *b = malloc(4 * dims + 1);
            fill(KV_VECTOR_F32, src + 1, dims); /* +1: any alignment */
            cr_assert(eq(long, fn(src + 1, a + 1, dims, 1), -1L));
            cr_assert(eq(long, scalar(src + 1, b + 1, dims, 1), -1L));
            double n2 = 0.0;
            for (size_t i = 0; i < dims; i++) {
                float x, y;
                memcpy(&x, a + 1 + 4 * i, 4);
                memcpy(&y, b + 1 + 4 * i, 4);
                cr_assert(fabsf(x - y) <= 1e-7f * (1.0f + fabsf(y)), "isa %d dims %zu i %zu", isa, dims, i);
                n2 += (double)x * x;
            }
            cr_assert(fabs(n2 - 1.0) < 1e-5, "isa %d dims %zu: |x|^2 = %.9g", isa, dims, n2);
            for (size_t bad = 0; bad < dims; bad += 1 + dims / 5) { /* NaN, then +inf, at `bad` */
                float keep, nan = NAN, inf = INFINITY;
                memcpy(&keep, src + 1 + 4 * bad, 4);
                memcpy(src + 1 + 4 * bad, &nan, 4);
                cr_assert(eq(long, fn(src + 1, a + 1, dims, 1), (long)bad), "isa %d dims %zu", isa, dims);
                memcpy(src + 1 + 4 * bad, &inf, 4);
                cr_assert(eq(long, fn(src + 1, NULL, dims, 0), (long)bad), "isa %d dims %zu", isa, dims);
                memcpy(src + 1 + 4 * bad, &keep, 4);
            }
            memset(src + 1, 0, 4 * dims); /* a zero row is copied as is */
            memset(a + 1, 0xff, 4 * dims);
            cr_assert(eq(long, fn(src + 1, a + 1, dims, 1), -1L));
            cr_assert(memcmp(a + 1, src + 1, 4 * dims) == 0);
            free(src);
            free(a);
            free(b);
        }
    }
}
