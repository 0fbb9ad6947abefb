/*
 * atomics.h -- C11 atomics on shared-memory words, named by memory order.
 *
 * Every access to a word that another process may touch at the same time goes
 * through one of these wrappers, so the ordering is spelled at the call site
 * (the mimalloc atomic.h convention). The words live in shared memory as plain
 * fixed-width integers (uint32_t / uint64_t); the wrappers cast them to the
 * matching _Atomic type, which on Linux/x86-64 and AArch64 has the same size,
 * alignment and representation and is lock-free for 4- and 8-byte words.
 *
 * Cost on x86-64: acquire loads and release stores are plain MOVs (they only
 * stop the compiler from reordering); seq_cst stores and RMWs are locked or
 * fenced instructions. The reader hot path uses only the former.
 */
#ifndef KVSHM_ATOMICS_H
#define KVSHM_ATOMICS_H

#include <stdatomic.h>
#include <stdint.h>

_Static_assert(sizeof(_Atomic uint64_t) == sizeof(uint64_t), "atomic u64 layout");
_Static_assert(sizeof(_Atomic uint32_t) == sizeof(uint32_t), "atomic u32 layout");

/* A shared 32-bit word as an atomic, for the RMWs without a wrapper below. */
#define KVSHM_A32(p) ((_Atomic uint32_t *)(void *)(p))

/*
 * The wrappers of one word width: kv_atomic_load_{relaxed,acquire,seq_cst}<bits>,
 * kv_atomic_store_{relaxed,release,seq_cst}<bits> and
 * kv_atomic_fetch_add_acq_rel<bits>, over words of type T. Instantiated below
 * for 64-bit words (epochs, offsets, positions) and 32-bit words (futex
 * words, skip-list links).
 */
#define KVSHM_ATOMIC_OPS(bits, T)                                                  \
    static inline T kv_atomic_load_relaxed##bits(const T *p)                       \
    { return atomic_load_explicit((_Atomic T *)(uintptr_t)p, memory_order_relaxed); } \
    static inline T kv_atomic_load_acquire##bits(const T *p)                       \
    { return atomic_load_explicit((_Atomic T *)(uintptr_t)p, memory_order_acquire); } \
    static inline T kv_atomic_load_seq_cst##bits(const T *p)                       \
    { return atomic_load_explicit((_Atomic T *)(uintptr_t)p, memory_order_seq_cst); } \
    static inline void kv_atomic_store_relaxed##bits(T *p, T v)                    \
    { atomic_store_explicit((_Atomic T *)(void *)p, v, memory_order_relaxed); }    \
    static inline void kv_atomic_store_release##bits(T *p, T v)                    \
    { atomic_store_explicit((_Atomic T *)(void *)p, v, memory_order_release); }    \
    static inline void kv_atomic_store_seq_cst##bits(T *p, T v)                    \
    { atomic_store_explicit((_Atomic T *)(void *)p, v, memory_order_seq_cst); }    \
    static inline T kv_atomic_fetch_add_acq_rel##bits(T *p, T v)                   \
    { return atomic_fetch_add_explicit((_Atomic T *)(void *)p, v, memory_order_acq_rel); }

KVSHM_ATOMIC_OPS(64, uint64_t)
KVSHM_ATOMIC_OPS(32, uint32_t)

/* ---- fences ------------------------------------------------------------ */
#if defined(__SANITIZE_THREAD__)
/* TSan does not model fences (GCC warns -Wtsan); give it a seq_cst RMW on a
 * private word instead, which orders at least as strongly on x86-64. */
static _Atomic uint32_t kv_tsan_fence_word;
static inline void kv_atomic_fence_acquire(void)
{ atomic_fetch_add_explicit(&kv_tsan_fence_word, 0, memory_order_acq_rel); }
static inline void kv_atomic_fence_release(void)
{ atomic_fetch_add_explicit(&kv_tsan_fence_word, 0, memory_order_acq_rel); }
static inline void kv_atomic_fence_seq_cst(void)
{ atomic_fetch_add_explicit(&kv_tsan_fence_word, 0, memory_order_seq_cst); }
#else
static inline void kv_atomic_fence_acquire(void) { atomic_thread_fence(memory_order_acquire); }
static inline void kv_atomic_fence_release(void) { atomic_thread_fence(memory_order_release); }
static inline void kv_atomic_fence_seq_cst(void) { atomic_thread_fence(memory_order_seq_cst); }
#endif
/* Compiler-only barrier: keeps the compiler from moving memory accesses. */
static inline void kv_compiler_barrier(void) { atomic_signal_fence(memory_order_seq_cst); }

#endif /* KVSHM_ATOMICS_H */
