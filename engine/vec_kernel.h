/*
 * vec_kernel.h - distance kernels of the vector store and the bounded top-k
 * heap they feed. Private to engine/ (vector.c and the C tests use it).
 *
 * A kernel computes a *score* of one stored row against one query: the
 * smaller the nearer, monotonic in the metric's distance:
 *
 *   cosine  1 - q.x        (both already L2-normalised, see vector.h)
 *   L2      sum (q_i - x_i)^2   (the square of the distance)
 *   L1      sum |q_i - x_i|
 *   hamming popcount(q XOR x)
 *
 * f32 scores are float32 sums (SIMD accumulation order); int8 and bit
 * scores are exact integers (returned as double, exact up to 2^53). Scores
 * only rank; the search recomputes the reported distance of each hit with
 * kv_vector_distance (double accumulation).
 *
 * Every kernel exists as a portable scalar function and, on x86-64, as AVX2
 * (+FMA) and AVX-512 (F/BW, VPOPCNTDQ for hamming) variants compiled with
 * __attribute__((target)), so the library needs no global -m flags; the
 * variant is chosen at run time with __builtin_cpu_supports. All functions
 * here are pure and thread-safe.
 */
#ifndef KVAULT_VEC_KERNEL_H
#define KVAULT_VEC_KERNEL_H

#include <stddef.h>
#include <stdint.h>

#include "kvault/vector.h"

/** Instruction-set levels of the kernels. */
typedef enum kvk_isa {
    KVK_SCALAR = 0, /**< portable C */
    KVK_AVX2,       /**< AVX2 + FMA (+ POPCNT) */
    KVK_AVX512      /**< AVX-512 F + BW (+ VPOPCNTDQ for hamming) */
} kvk_isa;

/** Score of row `x` against query `q`, both of `dims` dimensions in the
 *  element type of the kernel (bit: dims/8 bytes). Any alignment. */
typedef double (*kvk_score_fn)(const void *q, const void *x, size_t dims);

/** Best ISA level this CPU supports for (metric, elem) (cached after the
 *  first call; thread-safe). */
kvk_isa kvk_best_isa(kv_vector_metric metric, kv_vector_elem elem);

/** The kernel for (metric, elem) at level `isa`, or NULL when that level is
 *  not compiled in or the CPU lacks it (KVK_SCALAR is always available for
 *  a compatible pair; NULL for an incompatible one). */
kvk_score_fn kvk_kernel(kv_vector_metric metric, kv_vector_elem elem, kvk_isa isa);

/** One candidate: its rank score and row id. */
typedef struct kvk_cand {
    double score;
    int64_t id;
    const uint8_t *row;   /**< where the row's bytes are (the scanned copy) */
} kvk_cand;

/** Bounded max-heap of the best `cap` candidates (ties: lower id is
 *  better); c[0] is the worst kept one. Caller-owned storage. */
typedef struct kvk_heap {
    kvk_cand *c;  /**< cap entries */
    size_t n;     /**< entries in use */
    size_t cap;   /**< k */
} kvk_heap;

/** Offer a candidate: kept when the heap is not full or it beats c[0]. */
void kvk_heap_push(kvk_heap *h, double score, int64_t id, const uint8_t *row);

/** Sort the heap's entries ascending (score, then id) in place; the heap is
 *  no longer a heap afterwards. */
void kvk_heap_sort(kvk_heap *h);

/** Score rows[0..n) (`row_bytes` apart) against `q` and offer each row whose
 *  validity bit is set (bit i of valid[] = byte (first+i)/8, bit
 *  (first+i)%8; valid NULL: every row) with id ids[i] to `h`. The kernel
 *  and top-k selection are fused: a row's score is compared with the
 *  current k-th before anything else is done with it. */
void kvk_scan(kvk_score_fn fn, const void *q, const uint8_t *rows, size_t n, size_t row_bytes,
              size_t dims, const uint8_t *valid, size_t first, const int64_t *ids, kvk_heap *h);

/** Check one f32 row of `dims` elements at `src` (any alignment) and, with
 *  `normalise`, write it scaled to unit L2 length into `dst` (`dims`
 *  floats, any alignment; a zero row is copied as is). The squared norm is
 *  summed in double precision and each element becomes (float)(x / |x|)
 *  computed in double, so every ISA level writes the same bytes up to the
 *  order of the norm's double sum. Returns -1, or the index of the first
 *  element that is not finite (dst is then undefined). */
typedef long (*kvk_prep_fn)(const void *src, void *dst, size_t dims, int normalise);

/** The row preparation function for level `isa` (NULL when that level is
 *  not compiled in or the CPU lacks it; KVK_SCALAR always exists). */
kvk_prep_fn kvk_prep_f32(kvk_isa isa);

#endif /* KVAULT_VEC_KERNEL_H */
