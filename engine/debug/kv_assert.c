/*
 * kv_assert.c -- reporting for the assertion layer (kv_assert.h): one line
 * to stderr with the pid and the process's registered context, then abort.
 */
#include "kv_assert.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static kv_assert_context_fn g_context;

void kv_assert_set_context(kv_assert_context_fn fn) { g_context = fn; }

static void report_context(void)
{
    char ctx[256];
    ctx[0] = '\0';
    if (g_context)
        g_context(ctx, sizeof ctx);
    fprintf(stderr, "kvault: pid %ld%s%s\n", (long)getpid(), ctx[0] ? ", " : "", ctx);
}

void kv_assert_fail(const char *expr, const char *file, int line, const char *func)
{
    fprintf(stderr, "kvault: assertion failed: %s (%s:%d, %s)\n", expr, file, line, func);
    report_context();
    fflush(stderr);
    abort();
}

void kv_panic_at(const char *file, int line, const char *func, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "kvault: panic (%s:%d, %s): ", file, line, func);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    report_context();
    fflush(stderr);
    abort();
}
