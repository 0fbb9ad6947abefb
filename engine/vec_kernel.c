/*
 * vec_kernel.c - scoring kernels with runtime CPU dispatch, and the bounded
 * top-k heap (definitions in vec_kernel.h).
 *
 * Sections: 1. scalar kernels  2. AVX2 kernels  3. AVX-512 kernels
 *           4. dispatch  5. top-k heap and the fused scan
 *           6. row preparation (finite check, normalisation).
 */
#include "vec_kernel.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define KVK_X86 1
#include <immintrin.h>
#else
#define KVK_X86 0
#endif

/* ====================================================================== */
/* 1. Scalar kernels                                                       */
/* ====================================================================== */

static inline float ld_f32(const uint8_t *p)
{
    float f;
    memcpy(&f, p, sizeof f);
    return f;
}

static double f32_cos_scalar(const void *q, const void *x, size_t n)
{
    const uint8_t *a = q, *b = x;
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++)
        acc += ld_f32(a + 4 * i) * ld_f32(b + 4 * i);
    return 1.0f - acc;
}

static double f32_l2_scalar(const void *q, const void *x, size_t n)
{
    const uint8_t *a = q, *b = x;
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = ld_f32(a + 4 * i) - ld_f32(b + 4 * i);
        acc += d * d;
    }
    return acc;
}

static double f32_l1_scalar(const void *q, const void *x, size_t n)
{
    const uint8_t *a = q, *b = x;
    float acc = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float d = ld_f32(a + 4 * i) - ld_f32(b + 4 * i);
        acc += d < 0 ? -d : d;
    }
    return acc;
}

static double i8_l2_scalar(const void *q, const void *x, size_t n)
{
    const int8_t *a = q, *b = x;
    int64_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t d = (int32_t)a[i] - b[i];
        acc += d * d;
    }
    return (double)acc;
}

static double i8_l1_scalar(const void *q, const void *x, size_t n)
{
    const int8_t *a = q, *b = x;
    int64_t acc = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t d = (int32_t)a[i] - b[i];
        acc += d < 0 ? -d : d;
    }
    return (double)acc;
}

/* Hamming distance, 8 bytes at a time; inlined into the scalar kernel and
 * into the POPCNT-target one (where the builtin becomes the instruction). */
static inline __attribute__((always_inline)) double ham_words(const void *q, const void *x, size_t dims)
{
    const uint8_t *a = q, *b = x;
    size_t nb = dims / 8, i = 0;
    uint64_t acc = 0;
    for (; i + 8 <= nb; i += 8) {
        uint64_t u, v;
        memcpy(&u, a + i, 8);
        memcpy(&v, b + i, 8);
        acc += (uint64_t)__builtin_popcountll(u ^ v);
    }
    for (; i < nb; i++)
        acc += (uint64_t)__builtin_popcount((unsigned)(a[i] ^ b[i]));
    return (double)acc;
}

static double bit_ham_scalar(const void *q, const void *x, size_t dims) { return ham_words(q, x, dims); }

#if KVK_X86
/* ====================================================================== */
/* 2. AVX2 (+FMA, POPCNT) kernels                                           */
/* ====================================================================== */

#define AVX2 __attribute__((target("avx2,fma,popcnt")))

AVX2 static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2 static inline int64_t hsum256_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* Shared body of the three f32 AVX2 kernels: four 8-lane accumulators,
 * STEP(acc, qv, xv) folds one vector of each in. */
#define F32_AVX2_BODY(STEP, TAIL)                                                       \
    const float *a = q, *b = x;                                                         \
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;                         \
    size_t i = 0;                                                                       \
    for (; i + 32 <= n; i += 32) {                                                      \
        STEP(s0, _mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));                       \
        STEP(s1, _mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));               \
        STEP(s2, _mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16));             \
        STEP(s3, _mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24));             \
    }                                                                                   \
    for (; i + 8 <= n; i += 8)                                                          \
        STEP(s0, _mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));                       \
    float acc = hsum256(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));   \
    for (; i < n; i++)                                                                  \
        TAIL;

/* tail elements, loaded without assuming float alignment */
#define LDA(i) ld_f32((const uint8_t *)(a + (i)))
#define LDB(i) ld_f32((const uint8_t *)(b + (i)))
#define DOT_STEP(s, u, v) (s) = _mm256_fmadd_ps((u), (v), (s))
#define L2_STEP(s, u, v)                      \
    do {                                      \
        __m256 d_ = _mm256_sub_ps((u), (v));  \
        (s) = _mm256_fmadd_ps(d_, d_, (s));   \
    } while (0)
#define L1_STEP(s, u, v) \
    (s) = _mm256_add_ps((s), _mm256_andnot_ps(_mm256_set1_ps(-0.0f), _mm256_sub_ps((u), (v))))

AVX2 static double f32_cos_avx2(const void *q, const void *x, size_t n)
{
    F32_AVX2_BODY(DOT_STEP, acc += LDA(i) * LDB(i))
    return 1.0f - acc;
}

AVX2 static double f32_l2_avx2(const void *q, const void *x, size_t n)
{
    F32_AVX2_BODY(L2_STEP, { float d = LDA(i) - LDB(i); acc += d * d; })
    return acc;
}

AVX2 static double f32_l1_avx2(const void *q, const void *x, size_t n)
{
    F32_AVX2_BODY(L1_STEP, { float d = LDA(i) - LDB(i); acc += d < 0 ? -d : d; })
    return acc;
}

/* int8: widen 16 lanes to int16, subtract, then square (L2) or take the
 * absolute value (L1) and pair-sum into int32 with madd. Per 16 lanes a
 * madd lane holds at most 2 * 255^2, so int32 lanes hold any dims <= 65536. */
#define I8_AVX2_BODY(FOLD, TAIL)                                                            \
    const int8_t *a = q, *b = x;                                                            \
    __m256i s = _mm256_setzero_si256();                                                     \
    size_t i = 0;                                                                           \
    for (; i + 16 <= n; i += 16) {                                                          \
        __m256i d = _mm256_sub_epi16(                                                       \
            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(a + i))), \
            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(b + i)))); \
        s = _mm256_add_epi32(s, FOLD);                                                      \
    }                                                                                       \
    int64_t acc = hsum256_epi32(s);                                                         \
    for (; i < n; i++) {                                                                    \
        int32_t d = (int32_t)a[i] - b[i];                                                   \
        acc += TAIL;                                                                        \
    }                                                                                       \
    return (double)acc;

AVX2 static double i8_l2_avx2(const void *q, const void *x, size_t n)
{
    I8_AVX2_BODY(_mm256_madd_epi16(d, d), d * d)
}

AVX2 static double i8_l1_avx2(const void *q, const void *x, size_t n)
{
    I8_AVX2_BODY(_mm256_madd_epi16(_mm256_abs_epi16(d), _mm256_set1_epi16(1)), d < 0 ? -d : d)
}

AVX2 static double bit_ham_avx2(const void *q, const void *x, size_t dims) { return ham_words(q, x, dims); }

/* ====================================================================== */
/* 3. AVX-512 kernels                                                       */
/* ====================================================================== */

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define AVX512POP __attribute__((target("avx512f,avx512bw,avx512vpopcntdq")))

/* Two 16-lane accumulators; the tail is a masked load (zeros beyond n, which
 * add nothing to any of the three sums). */
#define F32_AVX512_BODY(STEP)                                                        \
    const float *a = q, *b = x;                                                      \
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;                                        \
    size_t i = 0;                                                                    \
    for (; i + 32 <= n; i += 32) {                                                   \
        STEP(s0, _mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));                    \
        STEP(s1, _mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));          \
    }                                                                                \
    for (; i < n; i += 16) {                                                         \
        __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1); \
        STEP(s0, _mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));  \
    }                                                                                \
    float acc = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));

#define DOT512(s, u, v) (s) = _mm512_fmadd_ps((u), (v), (s))
#define L2512(s, u, v)                       \
    do {                                     \
        __m512 d_ = _mm512_sub_ps((u), (v)); \
        (s) = _mm512_fmadd_ps(d_, d_, (s));  \
    } while (0)
#define L1512(s, u, v) (s) = _mm512_add_ps((s), _mm512_abs_ps(_mm512_sub_ps((u), (v))))

AVX512 static double f32_cos_avx512(const void *q, const void *x, size_t n)
{
    F32_AVX512_BODY(DOT512)
    return 1.0f - acc;
}

AVX512 static double f32_l2_avx512(const void *q, const void *x, size_t n)
{
    F32_AVX512_BODY(L2512)
    return acc;
}

AVX512 static double f32_l1_avx512(const void *q, const void *x, size_t n)
{
    F32_AVX512_BODY(L1512)
    return acc;
}

/* int8 with AVX-512BW: 32 lanes widened to int16 per step, masked tail. */
#define I8_AVX512_BODY(FOLD)                                                              \
    const int8_t *a = q, *b = x;                                                          \
    __m512i s = _mm512_setzero_si512();                                                   \
    for (size_t i = 0; i < n; i += 32) {                                                  \
        __mmask32 m = n - i >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (n - i)) - 1); \
        __m512i d = _mm512_sub_epi16(_mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, a + i)), \
                                     _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, b + i))); \
        s = _mm512_add_epi32(s, FOLD);                                                    \
    }                                                                                     \
    return (double)_mm512_reduce_add_epi32(s);

AVX512 static double i8_l2_avx512(const void *q, const void *x, size_t n)
{
    I8_AVX512_BODY(_mm512_madd_epi16(d, d))
}

AVX512 static double i8_l1_avx512(const void *q, const void *x, size_t n)
{
    I8_AVX512_BODY(_mm512_madd_epi16(_mm512_abs_epi16(d), _mm512_set1_epi16(1)))
}

AVX512POP static double bit_ham_avx512(const void *q, const void *x, size_t dims)
{
    const uint8_t *a = q, *b = x;
    size_t nb = dims / 8;
    __m512i s = _mm512_setzero_si512();
    for (size_t i = 0; i < nb; i += 64) {
        __mmask64 m = nb - i >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (nb - i)) - 1);
        __m512i u = _mm512_maskz_loadu_epi8(m, a + i), v = _mm512_maskz_loadu_epi8(m, b + i);
        s = _mm512_add_epi64(s, _mm512_popcnt_epi64(_mm512_xor_si512(u, v)));
    }
    return (double)_mm512_reduce_add_epi64(s);
}
#endif /* KVK_X86 */

/* ====================================================================== */
/* 4. Dispatch                                                              */
/* ====================================================================== */

/* Kernel table: [metric][isa], per element type. */
enum { NMETRIC = KV_VECTOR_HAMMING + 1, NISA = KVK_AVX512 + 1 };

static kvk_score_fn table_for(kv_vector_metric m, kv_vector_elem e, kvk_isa isa)
{
#if KVK_X86
    static const kvk_score_fn f32[NMETRIC][NISA] = {
        [KV_VECTOR_COSINE] = {f32_cos_scalar, f32_cos_avx2, f32_cos_avx512},
        [KV_VECTOR_L2] = {f32_l2_scalar, f32_l2_avx2, f32_l2_avx512},
        [KV_VECTOR_L1] = {f32_l1_scalar, f32_l1_avx2, f32_l1_avx512},
    };
    static const kvk_score_fn i8[NMETRIC][NISA] = {
        [KV_VECTOR_L2] = {i8_l2_scalar, i8_l2_avx2, i8_l2_avx512},
        [KV_VECTOR_L1] = {i8_l1_scalar, i8_l1_avx2, i8_l1_avx512},
    };
    static const kvk_score_fn bit[NMETRIC][NISA] = {
        [KV_VECTOR_HAMMING] = {bit_ham_scalar, bit_ham_avx2, bit_ham_avx512},
    };
#else
    static const kvk_score_fn f32[NMETRIC][NISA] = {
        [KV_VECTOR_COSINE] = {f32_cos_scalar}, [KV_VECTOR_L2] = {f32_l2_scalar},
        [KV_VECTOR_L1] = {f32_l1_scalar}};
    static const kvk_score_fn i8[NMETRIC][NISA] = {[KV_VECTOR_L2] = {i8_l2_scalar},
                                                   [KV_VECTOR_L1] = {i8_l1_scalar}};
    static const kvk_score_fn bit[NMETRIC][NISA] = {[KV_VECTOR_HAMMING] = {bit_ham_scalar}};
#endif
    if ((unsigned)m >= NMETRIC || (unsigned)isa >= NISA)
        return NULL;
    switch (e) {
    case KV_VECTOR_F32:
        return f32[m][isa];
    case KV_VECTOR_I8:
        return i8[m][isa];
    case KV_VECTOR_BIT:
        return bit[m][isa];
    }
    return NULL;
}

/* Whether the CPU runs code of level `isa` for element type `e`. */
static int cpu_has(kvk_isa isa, kv_vector_elem e)
{
#if KVK_X86
    __builtin_cpu_init();
    switch (isa) {
    case KVK_SCALAR:
        return 1;
    case KVK_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("popcnt");
    case KVK_AVX512:
        if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw"))
            return 0;
        if (e == KV_VECTOR_BIT)
            return __builtin_cpu_supports("avx512vpopcntdq");
        return __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
    }
    return 0;
#else
    (void)e;
    return isa == KVK_SCALAR;
#endif
}

kvk_score_fn kvk_kernel(kv_vector_metric metric, kv_vector_elem elem, kvk_isa isa)
{
    if (!cpu_has(isa, elem))
        return NULL;
    return table_for(metric, elem, isa);
}

kvk_isa kvk_best_isa(kv_vector_metric metric, kv_vector_elem elem)
{
    for (int isa = KVK_AVX512; isa > KVK_SCALAR; isa--)
        if (kvk_kernel(metric, elem, (kvk_isa)isa))
            return (kvk_isa)isa;
    return KVK_SCALAR;
}

/* ====================================================================== */
/* 5. Top-k heap and the fused scan                                         */
/* ====================================================================== */

static inline int worse(const kvk_cand *a, const kvk_cand *b)
{
    return a->score > b->score || (a->score == b->score && a->id > b->id);
}

static void sift_down(kvk_cand *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && worse(&h[l], &h[m]))
            m = l;
        if (r < n && worse(&h[r], &h[m]))
            m = r;
        if (m == i)
            return;
        kvk_cand t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

void kvk_heap_push(kvk_heap *h, double score, int64_t id, const uint8_t *row)
{
    kvk_cand c = {score, id, row};
    if (h->n < h->cap) {
        size_t i = h->n++;
        h->c[i] = c;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!worse(&h->c[i], &h->c[p]))
                break;
            kvk_cand t = h->c[i];
            h->c[i] = h->c[p];
            h->c[p] = t;
            i = p;
        }
    } else if (h->cap && worse(&h->c[0], &c)) {
        h->c[0] = c;
        sift_down(h->c, h->n, 0);
    }
}

void kvk_heap_sort(kvk_heap *h)
{
    for (size_t m = h->n; m > 1; m--) {
        kvk_cand t = h->c[0];
        h->c[0] = h->c[m - 1];
        h->c[m - 1] = t;
        sift_down(h->c, m - 1, 0);
    }
}

void kvk_scan(kvk_score_fn fn, const void *q, const uint8_t *rows, size_t n, size_t row_bytes,
              size_t dims, const uint8_t *valid, size_t first, const int64_t *ids, kvk_heap *h)
{
    if (!h->cap)
        return;
    /* the k-th score so far: +inf until the heap is full */
    double bound = h->n < h->cap ? __builtin_inf() : h->c[0].score;
    for (size_t i = 0; i < n; i++) {
        size_t s = first + i;
        if (valid && !(valid[s >> 3] & (1u << (s & 7))))
            continue;
        const uint8_t *row = rows + i * row_bytes;
        double sc = fn(q, row, dims);
        if (sc > bound)
            continue;
        kvk_heap_push(h, sc, ids[i], row);
        if (h->n == h->cap)
            bound = h->c[0].score;
    }
}

/* ====================================================================== */
/* 6. Row preparation                                                       */
/* ====================================================================== */

/* An f32 bit pattern with every exponent bit set is an infinity or a NaN. */
#define F32_EXP_MASK 0x7f800000u

/* Elements [from, to) of the f32 row at p (any alignment): the index of the
 * first infinity or NaN, or -1 with their squares added to *n2. */
static long check_f32_range(const uint8_t *p, size_t from, size_t to, double *n2)
{
    for (size_t i = from; i < to; i++) {
        uint32_t u;
        memcpy(&u, p + 4 * i, 4);
        if ((u & F32_EXP_MASK) == F32_EXP_MASK)
            return (long)i;
        double f = ld_f32(p + 4 * i);
        *n2 += f * f;
    }
    return -1;
}

static long prep_f32_scalar(const void *src, void *dst, size_t dims, int normalise)
{
    const uint8_t *p = src;
    double n2 = 0.0;
    long bad = check_f32_range(p, 0, dims, &n2);
    if (bad >= 0)
        return bad;
    if (!normalise)
        return -1;
    if (n2 == 0.0) {
        memmove(dst, src, 4 * dims);
        return -1;
    }
    double inv = 1.0 / __builtin_sqrt(n2);
    uint8_t *d = dst;
    for (size_t i = 0; i < dims; i++) {
        float f = (float)(ld_f32(p + 4 * i) * inv);
        memcpy(d + 4 * i, &f, 4);
    }
    return -1;
}

#if KVK_X86
/* 8 floats per step: the exponent test on the bit patterns, the squares
 * summed in two 4-lane double accumulators; the tail is scalar. */
AVX2 static long prep_f32_avx2(const void *src, void *dst, size_t dims, int normalise)
{
    const float *p = src;
    const __m256i emask = _mm256_set1_epi32((int)F32_EXP_MASK);
    __m256d s0 = _mm256_setzero_pd(), s1 = s0;
    size_t i = 0;
    for (; i + 8 <= dims; i += 8) {
        __m256 v = _mm256_loadu_ps(p + i);
        __m256i e = _mm256_and_si256(_mm256_castps_si256(v), emask);
        if (_mm256_movemask_epi8(_mm256_cmpeq_epi32(e, emask)))
            return prep_f32_scalar(p + i, NULL, 8, 0) + (long)i;
        __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
        __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        s0 = _mm256_fmadd_pd(lo, lo, s0);
        s1 = _mm256_fmadd_pd(hi, hi, s1);
    }
    __m256d s = _mm256_add_pd(s0, s1);
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    double n2 = _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
    long bad = check_f32_range(src, i, dims, &n2);   /* the tail, any alignment */
    if (bad >= 0)
        return bad;
    if (!normalise)
        return -1;
    if (n2 == 0.0) {
        memmove(dst, src, 4 * dims);
        return -1;
    }
    const double invs = 1.0 / __builtin_sqrt(n2);
    const __m256d inv = _mm256_set1_pd(invs);
    float *d = dst;
    for (i = 0; i + 4 <= dims; i += 4)
        _mm_storeu_ps(d + i, _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(p + i)), inv)));
    for (; i < dims; i++) {
        float f = (float)(ld_f32((const uint8_t *)(p + i)) * invs);
        memcpy(d + i, &f, 4);
    }
    return -1;
}
#endif

kvk_prep_fn kvk_prep_f32(kvk_isa isa)
{
    if (isa == KVK_SCALAR)
        return prep_f32_scalar;
#if KVK_X86
    if (isa == KVK_AVX2 && cpu_has(KVK_AVX2, KV_VECTOR_F32))
        return prep_f32_avx2;
#endif
    return NULL;
}
