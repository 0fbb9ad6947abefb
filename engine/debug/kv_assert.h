/*
 * kv_assert.h -- the assertion layer of engine/, shm/ and workers/ (private:
 * not installed, not part of any public header).
 *
 * Graded checks selected by one compile-time level, KV_DEBUG (CMake option
 * of the same name; the idea and the three grades follow mimalloc's
 * mi_assert / mi_assert_internal / mi_assert_expensive):
 *
 *   KV_ASSERT(e)            level >= 1: cheap preconditions of a call
 *                           (arguments, handle state)
 *   KV_ASSERT_INTERNAL(e)   level >= 2: internal invariants on hot paths
 *   KV_ASSERT_EXPENSIVE(e)  level >= 3: whole-structure validation
 *                           (walk a tree, a list, a free map)
 *   kv_panic(fmt, ...)      always on: detected corruption of shared state,
 *                           where going on would spread the damage (as
 *                           Redis keeps serverPanic in production)
 *
 * Release builds use level 0: the three KV_ASSERT* compile to nothing and
 * never evaluate their argument, so an expression with side effects is a
 * bug. Sanitizer builds use level 2, `scripts/test --debug` level 3.
 *
 * A failed check prints the expression, file, line, function and pid, then
 * whatever the process registered with kv_assert_set_context() (the shared
 * segment's generation and the slot or worker id), and aborts.
 */
#ifndef KV_ASSERT_H
#define KV_ASSERT_H

#include <stddef.h>

#ifndef KV_DEBUG
#define KV_DEBUG 0
#endif

#if defined(__GNUC__)
#define KV_NORETURN __attribute__((noreturn))
#define KV_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define KV_COLD __attribute__((cold))
#else
#define KV_NORETURN
#define KV_PRINTF(a, b)
#define KV_COLD
#endif

/** Writes one line of context for an assertion or panic report into
 *  buf[0..cap) (NUL-terminated, truncated if longer). Called from the
 *  failing thread just before abort(); must not allocate or lock. */
typedef void (*kv_assert_context_fn)(char *buf, size_t cap);

/** Registers the context hook of this process (NULL removes it). The last
 *  call wins; process-wide; not synchronised with a concurrent failure. */
void kv_assert_set_context(kv_assert_context_fn fn);

/** Reports a failed check (expression text, location) to stderr with the
 *  pid and the registered context, then abort()s. Never returns. */
KV_NORETURN KV_COLD void kv_assert_fail(const char *expr, const char *file,
                                        int line, const char *func);

/** Reports detected corruption or an impossible state (printf-style
 *  message) with the pid and the registered context, then abort()s. Always
 *  compiled in, whatever KV_DEBUG is. */
KV_NORETURN KV_COLD KV_PRINTF(4, 5) void kv_panic_at(const char *file, int line,
                                                     const char *func,
                                                     const char *fmt, ...);

#define kv_panic(...) kv_panic_at(__FILE__, __LINE__, __func__, __VA_ARGS__)

#define KV_ASSERT_ON_(e) \
    ((e) ? (void)0 : kv_assert_fail(#e, __FILE__, __LINE__, __func__))
#define KV_ASSERT_OFF_(e) ((void)0)

#if KV_DEBUG >= 1
#define KV_ASSERT(e) KV_ASSERT_ON_(e)
#else
#define KV_ASSERT(e) KV_ASSERT_OFF_(e)
#endif
#if KV_DEBUG >= 2
#define KV_ASSERT_INTERNAL(e) KV_ASSERT_ON_(e)
#else
#define KV_ASSERT_INTERNAL(e) KV_ASSERT_OFF_(e)
#endif
#if KV_DEBUG >= 3
#define KV_ASSERT_EXPENSIVE(e) KV_ASSERT_ON_(e)
#else
#define KV_ASSERT_EXPENSIVE(e) KV_ASSERT_OFF_(e)
#endif

#endif /* KV_ASSERT_H */
