/* kvtest_util.h - shared helpers of the engine's Criterion tests: per-test
 * temporary directories, opening a KVault. */
#ifndef KVTEST_UTIL_H
#define KVTEST_UTIL_H
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvault/kvault.h"

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

/* Open the KVault of `path` with the default options; the test fails
 * unless that succeeds. */
static inline kv_db *kvtest_open_db(const char *path)
{
    kv_db *db = NULL;
    kv_open_opts o;
    char err[256] = "";
    kv_open_opts_default(&o);
    cr_assert(kv_db_open(path, &o, &db, err, sizeof err) == KV_OK, "%s", err);
    return db;
}
#endif
