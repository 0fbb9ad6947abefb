/* test_attach.c - the attach side of shared mode (shm/attach.c) against a
 * real kvault-writer process: reads, writes, misses, fork, writer restart. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvault/kvault.h"
#include "kvshm/attach.h"
#include "kvtest_util.h"

static char db[600];
static pid_t writer = -1;

/* build/<x>/tests/c/test_attach -> build/<x>/workers/kvault-writer */
static void writer_path(char *out, size_t n)
{
    char self[512];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    cr_assert(len > 0);
    self[len] = 0;
    snprintf(out, n, "%s/../../workers/kvault-writer", dirname(self));
}

static void start_writer(const char *extra)
{
    char exe[600];
    writer_path(exe, sizeof exe);
    writer = fork();
    cr_assert(writer >= 0);
    if (writer == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);   /* never outlive a timed-out test */
        int devnull = open("/dev/null", 1);
        dup2(devnull, 1);
        if (extra)
            execl(exe, exe, "--commit-interval-ms", extra, "--batch-size", "100000000", db,
                  (char *)NULL);
        else
            execl(exe, exe, db, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) {   /* up to 5 s */
        if (kv_attach_served(db, "kv")) return;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    cr_assert_fail("writer did not become ready");
}

static void stop_writer(int sig)
{
    if (writer > 0) {
        kill(writer, sig);
        int st;
        waitpid(writer, &st, 0);
        if (sig == SIGTERM) cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    writer = -1;
}

static void setup(void) { kvtest_path(db, sizeof db, "attach.db"); start_writer(NULL); }
static void teardown(void) { stop_writer(SIGTERM); }

TestSuite(attach, .init = setup, .fini = teardown, .timeout = 60);

/* Attach to the suite's writer; a failure fails the test with its message. */
static kv_att *att(void)
{
    char err[512] = "";
    kv_att *a = NULL;
    cr_assert_eq(kv_attach(db, NULL, &a, err, sizeof err), KV_OK, "attach: %s", err);
    return a;
}

Test(attach, put_get_delete_roundtrip)
{
    kv_att *a = att();
    const void *v;
    size_t n;
    cr_assert_eq(kv_att_get(a, "k", 1, &v, &n), KV_NOTFOUND);
    cr_assert_eq(kv_att_put(a, "k", 1, "hello", 5, 0), KV_OK);
    cr_assert_eq(kv_att_get(a, "k", 1, &v, &n), KV_OK);
    cr_assert_eq(n, 5);
    cr_assert_eq(memcmp(v, "hello", 5), 0);
    int existed = 0;
    cr_assert_eq(kv_att_delete(a, "k", 1, &existed), KV_OK);
    cr_assert_eq(existed, 1);
    cr_assert_eq(kv_att_get(a, "k", 1, &v, &n), KV_NOTFOUND);
    int64_t cnt = -1;
    cr_assert_eq(kv_att_count(a, &cnt), KV_OK);
    cr_assert_eq(cnt, 0);
    cr_assert_eq(kv_attach_close(a), KV_OK);
}

Test(attach, sync_put_is_in_sqlite_for_an_embedded_reader)
{
    kv_att *a = att();
    cr_assert_eq(kv_att_put(a, "durable", 7, "yes", 3, KV_ATT_SYNC), KV_OK);
    kv_db *d = NULL;
    kv_open_opts o;
    kv_open_opts_default(&o);
    cr_assert_eq(kv_db_open(db, &o, &d, NULL, 0), KV_OK);
    const void *v;
    size_t n;
    cr_assert_eq(kv_get(d, "durable", 7, &v, &n), KV_OK);
    cr_assert_eq(n, 3);
    kv_get_done(d);
    kv_db_close(d);
    kv_attach_close(a);
}

Test(attach, two_handles_see_each_others_writes)
{
    kv_att *a = att(), *b = att();
    char key[32], val[32];
    for (int i = 0; i < 2000; i++) {
        int kl = snprintf(key, sizeof key, "key%05d", i);
        int vl = snprintf(val, sizeof val, "val%d", i * 7);
        cr_assert_eq(kv_att_put(a, key, (size_t)kl, val, (size_t)vl, 0), KV_OK);
        const void *v;
        size_t n;
        cr_assert_eq(kv_att_get(b, key, (size_t)kl, &v, &n), KV_OK, "key %d", i);
        cr_assert_eq(n, (size_t)vl);
        cr_assert_eq(memcmp(v, val, n), 0);
    }
    kv_attach_close(a);
    kv_attach_close(b);
}

Test(attach, forked_child_reads_and_writes)
{
    kv_att *a = att();
    cr_assert_eq(kv_att_put(a, "parent", 6, "p", 1, 0), KV_OK);
    pid_t c = fork();
    cr_assert(c >= 0);
    if (c == 0) {
        const void *v;
        size_t n;
        int ok = kv_att_get(a, "parent", 6, &v, &n) == KV_OK && n == 1 &&
                 kv_att_put(a, "child", 5, "c", 1, 0) == KV_OK;
        _exit(ok ? 0 : 1);
    }
    int st;
    waitpid(c, &st, 0);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    const void *v;
    size_t n;
    cr_assert_eq(kv_att_get(a, "child", 5, &v, &n), KV_OK);
    cr_assert_eq(kv_att_put(a, "after", 5, "x", 1, 0), KV_OK);
    kv_attach_close(a);
}

Test(attach, writer_killed_then_restarted_keeps_applied_writes)
{
    stop_writer(SIGTERM);
    start_writer("600000");   /* never commits by itself */
    kv_att *a = att();
    uint64_t gen = kv_att_generation(a);
    char key[32];
    for (int i = 0; i < 5000; i++) {
        int kl = snprintf(key, sizeof key, "k%d", i);
        cr_assert_eq(kv_att_put(a, key, (size_t)kl, key, (size_t)kl, 0), KV_OK);
    }
    stop_writer(SIGKILL);
    start_writer(NULL);
    /* the first write after the restart re-attaches by itself */
    cr_assert_eq(kv_att_put(a, "after", 5, "1", 1, KV_ATT_SYNC), KV_OK, "%s", kv_att_errmsg(a));
    cr_assert_gt(kv_att_generation(a), gen);
    kv_db *d = NULL;
    kv_open_opts o;
    kv_open_opts_default(&o);
    cr_assert_eq(kv_db_open(db, &o, &d, NULL, 0), KV_OK);
    int64_t cnt = 0;
    cr_assert_eq(kv_count(d, &cnt), KV_OK);
    cr_assert_eq(cnt, 5001);
    kv_db_close(d);
    kv_attach_close(a);
}
