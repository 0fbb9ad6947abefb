/* shm_criterion_shim.h - the subset of Criterion's test API used by the shm
 * suites, for ThreadSanitizer builds only. Criterion cannot start under
 * TSan: its runner maps an "inheritable arena" at random fixed addresses
 * that fall into TSan's shadow ranges and aborts with "Could not initialize
 * inheritable arena" (Snaipe/Criterion issue #274). This runner keeps
 * Criterion's model: every test runs in its own forked process with the
 * suite's .init/.fini and a timeout; failures print file:line and the
 * message; the exit status is nonzero if any test failed. Arguments (such
 * as ctest's --jobs 2) are ignored. */
#ifndef SHM_CRITERION_SHIM_H
#define SHM_CRITERION_SHIM_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

struct shim_suite { const char *name; void (*init)(void); void (*fini)(void); int timeout; };
struct shim_test { const char *suite, *name; void (*fn)(void); struct shim_test *next; };
static struct shim_suite *shim_suites[32];
static int shim_nsuites;
static struct shim_test *shim_tests;
static int shim_expect_failed;

#define TestSuite(s, ...)                                                       \
    static struct shim_suite shim_suite_##s = { #s, __VA_ARGS__ };              \
    __attribute__((constructor)) static void shim_reg_suite_##s(void)           \
    { shim_suites[shim_nsuites++] = &shim_suite_##s; }

#define Test(s, n, ...)                                                         \
    static void shim_fn_##s##_##n(void);                                        \
    static struct shim_test shim_t_##s##_##n = { #s, #n, shim_fn_##s##_##n, 0 };\
    __attribute__((constructor)) static void shim_reg_##s##_##n(void)           \
    { shim_t_##s##_##n.next = shim_tests; shim_tests = &shim_t_##s##_##n; }     \
    static void shim_fn_##s##_##n(void)

static void shim_fail(const char *file, int line, const char *expr, int fatal, const char *fmt, ...)
{
    fprintf(stderr, "[----] %s:%d: %s failed: %s\n", file, line, fatal ? "Assertion" : "Expectation", expr);
    if (fmt && *fmt) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "[----]   ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n");
        va_end(ap);
    }
    if (fatal) _exit(1);
    shim_expect_failed = 1;
}

#define cr_assert(c, ...) do { if (!(c)) shim_fail(__FILE__, __LINE__, #c, 1, "" __VA_ARGS__); } while (0)
#define cr_expect(c, ...) do { if (!(c)) shim_fail(__FILE__, __LINE__, #c, 0, "" __VA_ARGS__); } while (0)
#define cr_assert_eq(a, b, ...) cr_assert((a) == (b), __VA_ARGS__)
#define cr_assert_neq(a, b, ...) cr_assert((a) != (b), __VA_ARGS__)
#define cr_assert_lt(a, b, ...) cr_assert((a) < (b), __VA_ARGS__)
#define cr_assert_leq(a, b, ...) cr_assert((a) <= (b), __VA_ARGS__)
#define cr_assert_gt(a, b, ...) cr_assert((a) > (b), __VA_ARGS__)
#define cr_assert_geq(a, b, ...) cr_assert((a) >= (b), __VA_ARGS__)
#define cr_assert_null(p, ...) cr_assert((p) == NULL, __VA_ARGS__)
#define cr_assert_not_null(p, ...) cr_assert((p) != NULL, __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...) cr_assert(strcmp((a), (b)) == 0, __VA_ARGS__)
#define cr_assert_arr_eq(a, b, n, ...) cr_assert(memcmp((a), (b), (n)) == 0, __VA_ARGS__)
#define cr_expect_eq(a, b, ...) cr_expect((a) == (b), __VA_ARGS__)
#define cr_log_info(...) (fprintf(stderr, "[LOG ] " __VA_ARGS__), fprintf(stderr, "\n"))

int main(int argc, char **argv)
{
    (void)argc; (void)argv;
    /* constructors ran in reverse order: restore the file order */
    struct shim_test *rev = NULL;
    while (shim_tests) { struct shim_test *t = shim_tests; shim_tests = t->next; t->next = rev; rev = t; }
    int tested = 0, failed = 0;
    for (struct shim_test *t = rev; t; t = t->next) {
        struct shim_suite *s = NULL;
        for (int i = 0; i < shim_nsuites; i++)
            if (!strcmp(shim_suites[i]->name, t->suite)) s = shim_suites[i];
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(s && s->timeout ? (unsigned)s->timeout : 600);
            if (s && s->init) s->init();
            t->fn();
            if (s && s->fini) s->fini();
            _exit(shim_expect_failed);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (!ok && s && s->fini) s->fini();   /* clean up names after a crash */
        fprintf(stderr, "[%s] %s::%s\n", ok ? "PASS" : "FAIL", t->suite, t->name);
        tested++;
        failed += !ok;
    }
    fprintf(stderr, "[====] Synthesis: Tested: %d | Passing: %d | Failing: %d\n", tested, tested - failed, failed);
    return failed ? 1 : 0;
}

#endif
