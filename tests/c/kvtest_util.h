/* kvtest_util.h - per-test temporary directories for the engine's Criterion
 * tests. */
#ifndef KVTEST_UTIL_H
#define KVTEST_UTIL_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Make a fresh directory under $KV_TEST_TMP (or /tmp) and return `name`
 * inside it in buf. */
static inline const char *kvtest_path(char *buf, size_t n, const char *name)
{
    const char *base = getenv("KV_TEST_TMP");
    char dir[512];
    if (!base || !*base)
        base = "/tmp";
    mkdir(base, 0777);
    snprintf(dir, sizeof dir, "%s/kvtest-XXXXXX", base);
    if (!mkdtemp(dir))
        abort();
    snprintf(buf, n, "%s/%s", dir, name);
    return buf;
}
#endif
