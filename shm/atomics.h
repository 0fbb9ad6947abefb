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

#define KVSHM_A64(p) ((_Atomic uint64_t *)(void *)(p))
#define KVSHM_A32(p) ((_Atomic uint32_t *)(void *)(p))
#define KVSHM_CA64(p) ((const _Atomic uint64_t *)(const void *)(p))
#define KVSHM_CA32(p) ((const _Atomic uint32_t *)(const void *)(p))

/* ---- 64-bit words ---------------------------------------------------- */
static inline uint64_t kv_atomic_load_relaxed64(const uint64_t *p)
{ return atomic_load_explicit((_Atomic uint64_t *)(uintptr_t)p, memory_order_relaxed); }
static inline uint64_t kv_atomic_load_acquire64(const uint64_t *p)
{ return atomic_load_explicit((_Atomic uint64_t *)(uintptr_t)p, memory_order_acquire); }
static inline void kv_atomic_store_relaxed64(uint64_t *p, uint64_t v)
{ atomic_store_explicit(KVSHM_A64(p), v, memory_order_relaxed); }
static inline void kv_atomic_store_release64(uint64_t *p, uint64_t v)
{ atomic_store_explicit(KVSHM_A64(p), v, memory_order_release); }
static inline void kv_atomic_store_seq_cst64(uint64_t *p, uint64_t v)
{ atomic_store_explicit(KVSHM_A64(p), v, memory_order_seq_cst); }
static inline uint64_t kv_atomic_fetch_add_acq_rel64(uint64_t *p, uint64_t v)
{ return atomic_fetch_add_explicit(KVSHM_A64(p), v, memory_order_acq_rel); }

/* ---- 32-bit words (futex words, skip-list links) --------------------- */
static inline uint32_t kv_atomic_load_relaxed32(const uint32_t *p)
{ return atomic_load_explicit((_Atomic uint32_t *)(uintptr_t)p, memory_order_relaxed); }
static inline uint32_t kv_atomic_load_acquire32(const uint32_t *p)
{ return atomic_load_explicit((_Atomic uint32_t *)(uintptr_t)p, memory_order_acquire); }
static inline void kv_atomic_store_relaxed32(uint32_t *p, uint32_t v)
{ atomic_store_explicit(KVSHM_A32(p), v, memory_order_relaxed); }
static inline void kv_atomic_store_release32(uint32_t *p, uint32_t v)
{ atomic_store_explicit(KVSHM_A32(p), v, memory_order_release); }
static inline void kv_atomic_store_seq_cst32(uint32_t *p, uint32_t v)
{ atomic_store_explicit(KVSHM_A32(p), v, memory_order_seq_cst); }
static inline uint32_t kv_atomic_load_seq_cst32(const uint32_t *p)
{ return atomic_load_explicit((_Atomic uint32_t *)(uintptr_t)p, memory_order_seq_cst); }
static inline uint32_t kv_atomic_fetch_add_acq_rel32(uint32_t *p, uint32_t v)
{ return atomic_fetch_add_explicit(KVSHM_A32(p), v, memory_order_acq_rel); }

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
