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
#include "kvshm/ops.h"
#include "kvtest_util.h"
#include "kvtest_writer.h"

static char db[600];
static pid_t writer = -1;

static void start_writer(const char *extra) { writer = kvtest_writer_start(db, extra); }

static void stop_writer(int sig)
{
    kvtest_writer_stop(writer, sig);
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

/* kv_att_get_into's allocator: a malloc'd buffer per call, the previous
 * one freed (each call replaces it), calls counted. */
typedef struct into_buf {
    uint8_t *p;
    size_t n;
    int calls;
} into_buf;

static void *into_alloc(void *ctx, size_t n)
{
    into_buf *b = ctx;
    free(b->p);
    b->p = malloc(n ? n : 1);
    b->n = n;
    b->calls++;
    return b->p;
}

Test(attach, get_into_copies_segment_and_sqlite_values_once_into_the_callers_buffer)
{
    kv_att *a = att();
    size_t sizes[] = {0, 1, 100, KV_GET_DIRECT_MIN - 1, KV_GET_DIRECT_MIN,
                      KV_GET_DIRECT_MIN + 1, 200000};
    char key[32];
    uint8_t *val = malloc(200000);
    for (size_t i = 0; i < 200000; i++) val[i] = (uint8_t)(i * 13 + 7);
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        snprintf(key, sizeof key, "v%zu", sizes[i]);
        cr_assert_eq(kv_att_put(a, key, strlen(key), val, sizes[i], KV_ATT_SYNC), KV_OK);
    }
    /* this handle: from the segment (memtable or tree); a second handle:
     * its first read of a folded key may be a miss read from SQLite */
    kv_att *b = att();
    kv_att *hs[] = {a, b, b};
    for (size_t h = 0; h < 3; h++) {
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
            into_buf ib = {0};
            size_t n = 12345;
            snprintf(key, sizeof key, "v%zu", sizes[i]);
            cr_assert_eq(kv_att_get_into(hs[h], key, strlen(key), into_alloc, &ib, &n), KV_OK);
            cr_assert_eq(n, sizes[i]);
            cr_assert_geq(ib.calls, 1);
            cr_assert_eq(ib.n, sizes[i], "the last buffer has the value's length");
            cr_assert_eq(memcmp(ib.p, val, n), 0, "value of %zu bytes", sizes[i]);
            free(ib.p);
        }
    }
    into_buf ib = {0};
    size_t n;
    cr_assert_eq(kv_att_get_into(b, "absent", 6, into_alloc, &ib, &n), KV_NOTFOUND);
    cr_assert_eq(kv_att_delete(a, "v100", 4, NULL), KV_OK);
    cr_assert_eq(kv_att_get_into(b, "v100", 4, into_alloc, &ib, &n), KV_NOTFOUND);
    free(ib.p);
    uint64_t hits = 0;
    kv_att_counters(b, &hits, NULL);
    cr_assert_gt(hits, 0);
    free(val);
    kv_attach_close(b);
    kv_attach_close(a);
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

/* Keys of the file's kv table, read through an embedded connection. */
static int64_t committed_count(void)
{
    kv_db *d = NULL;
    kv_open_opts o;
    kv_open_opts_default(&o);
    cr_assert_eq(kv_db_open(db, &o, &d, NULL, 0), KV_OK);
    int64_t cnt = 0;
    cr_assert_eq(kv_count(d, &cnt), KV_OK);
    kv_db_close(d);
    return cnt;
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
    cr_assert_eq(committed_count(), 5001);
    kv_attach_close(a);
}

/* kv_attach_opts.respawn of the test below: starts the suite's writer. */
static int respawn_calls;

static int respawn_writer(void *ctx)
{
    (void)ctx;
    respawn_calls++;
    start_writer(NULL);
    return 1;
}

Test(attach, dead_writer_is_replaced_by_respawn_and_the_ring_reattaches)
{
    stop_writer(SIGTERM);
    start_writer("600000");   /* never commits by itself */
    kv_attach_opts o;
    kv_attach_opts_default(&o);
    o.continue_on_stop = 2;
    o.respawn = respawn_writer;
    char err[512] = "";
    kv_att *a = NULL;
    cr_assert_eq(kv_attach(db, &o, &a, err, sizeof err), KV_OK, "attach: %s", err);
    uint64_t gen = kv_att_generation(a);
    char key[32];
    for (int i = 0; i < 500; i++) {
        int kl = snprintf(key, sizeof key, "k%d", i);
        cr_assert_eq(kv_att_put(a, key, (size_t)kl, key, (size_t)kl, 0), KV_OK);
    }
    stop_writer(SIGKILL);   /* applied, not committed: only in its segment */
    respawn_calls = 0;
    /* nobody restarts it: after the grace the handle asks for a writer and
     * goes on attached, with the dead writer's records replayed by it */
    cr_assert_eq(kv_att_put(a, "after", 5, "1", 1, KV_ATT_SYNC), KV_OK, "%s", kv_att_errmsg(a));
    cr_assert_eq(respawn_calls, 1);
    cr_assert_eq(kv_att_stopped(a), 0);
    cr_assert_gt(kv_att_generation(a), gen);
    cr_assert_eq(committed_count(), 501);
    kv_attach_close(a);
}

/* ---- batches: kv_att_put_many / kv_att_delete_many --------------------- */

/* n items "b<i>" -> "v<i>" padded to vlen bytes, in one allocation. */
static kv_item *batch_items(size_t n, size_t vlen, char **store)
{
    kv_item *it = calloc(n, sizeof *it);
    char *s = calloc(n, 32 + vlen);
    cr_assert(it && s);
    for (size_t i = 0; i < n; i++) {
        char *k = s + i * (32 + vlen), *v = k + 16;
        int kl = snprintf(k, 16, "b%zu", i);
        memset(v, 'a' + (int)(i % 26), 16 + vlen);
        it[i] = (kv_item){k, (size_t)kl, v, vlen};
    }
    *store = s;
    return it;
}

Test(attach, put_many_applied_async_and_larger_than_the_ring)
{
    kv_attach_opts o;
    kv_attach_opts_default(&o);
    o.ring_bytes = 64u << 10;   /* the batch fills it many times over */
    char err[512] = "";
    kv_att *a = NULL;
    cr_assert_eq(kv_attach(db, &o, &a, err, sizeof err), KV_OK, "%s", err);
    kv_att *b = att();
    char *store;
    size_t n = 3000, vlen = 100;
    kv_item *it = batch_items(n, vlen, &store);
    /* one value larger than half the ring goes as a stream, in order */
    size_t big_len = 40u << 10;
    char *big = malloc(big_len);
    memset(big, 'z', big_len);
    it[1500].val = big;
    it[1500].vlen = big_len;
    cr_assert_eq(kv_att_put_many(a, it, n, 0), KV_OK, "%s", kv_att_errmsg(a));
    const void *v;
    size_t vn;
    for (size_t i = 0; i < n; i += 97) {   /* applied: another handle sees them */
        cr_assert_eq(kv_att_get(b, it[i].key, it[i].klen, &v, &vn), KV_OK);
        cr_assert_eq(vn, it[i].vlen);
        cr_assert_eq(memcmp(v, it[i].val, vn), 0);
    }
    cr_assert_eq(kv_att_get(b, it[1500].key, it[1500].klen, &v, &vn), KV_OK);
    cr_assert_eq(vn, big_len);
    /* ASYNC: the same handle reads them back at once */
    for (size_t i = 0; i < n; i++) it[i].val = "new";
    for (size_t i = 0; i < n; i++) it[i].vlen = 3;
    cr_assert_eq(kv_att_put_many(a, it, n, KV_ATT_ASYNC), KV_OK);
    cr_assert_eq(kv_att_get(a, it[n - 1].key, it[n - 1].klen, &v, &vn), KV_OK);
    cr_assert_eq(vn, 3);
    cr_assert_eq(memcmp(v, "new", 3), 0);
    cr_assert_eq(kv_att_put_many(a, NULL, 0, 0), KV_OK);   /* waits for the batch */
    cr_assert_eq(kv_att_get(b, it[0].key, it[0].klen, &v, &vn), KV_OK);
    cr_assert_eq(vn, 3);
    /* a bad key anywhere: nothing is submitted */
    char long_key[4097];
    memset(long_key, 'k', sizeof long_key);
    kv_item bad[2] = {{"fresh", 5, "1", 1}, {long_key, sizeof long_key, "2", 1}};
    cr_assert_eq(kv_att_put_many(a, bad, 2, 0), KV_INVALID);
    cr_assert_eq(kv_att_get(a, "fresh", 5, &v, &vn), KV_NOTFOUND);
    free(big);
    free(store);
    free(it);
    kv_attach_close(b);
    kv_attach_close(a);
}

Test(attach, write_ticket_is_applied_only_once_the_writer_applied_it)
{
    kv_att *a = att(), *b = att();
    cr_assert_eq(kv_att_write_ticket(a), 0);
    cr_assert_eq(kv_att_applied(a, 0), 1);
    kv_item it = {"tk", 2, "v1", 2};
    cr_assert_eq(kv_att_put_many(a, &it, 1, 0), KV_OK);
    uint64_t t1 = kv_att_write_ticket(a);
    cr_assert_gt(t1, 0);
    cr_assert_eq(kv_att_applied(a, t1), 1);
    /* the writer stopped: submitted, not applied */
    kill(writer, SIGSTOP);
    it.val = "v2";
    cr_assert_eq(kv_att_put_many(a, &it, 1, KV_ATT_ASYNC), KV_OK);
    uint64_t t2 = kv_att_write_ticket(a);
    cr_assert_gt(t2, t1);
    cr_assert_eq(kv_att_applied(a, t2), 0);
    cr_assert_eq(kv_att_applied(a, t1), 1);
    const void *v;
    size_t n;
    cr_assert_eq(kv_att_get(b, "tk", 2, &v, &n), KV_OK);
    cr_assert_eq(memcmp(v, "v1", 2), 0);
    kill(writer, SIGCONT);
    int applied = 0;
    for (int i = 0; i < 500 && !applied; i++) {   /* up to 5 s */
        applied = kv_att_applied(a, t2);
        struct timespec ts = {0, 10 * 1000 * 1000};
        if (!applied) nanosleep(&ts, NULL);
    }
    cr_assert_eq(applied, 1);
    cr_assert_eq(kv_att_get(b, "tk", 2, &v, &n), KV_OK);   /* applied: every handle sees it */
    cr_assert_eq(memcmp(v, "v2", 2), 0);
    kv_attach_close(b);
    kv_attach_close(a);
}

Test(attach, delete_many_counts_distinct_keys_that_existed)
{
    kv_att *a = att();
    kv_att *b = att();
    char *store;
    size_t n = 500;
    kv_item *it = batch_items(n, 8, &store);
    cr_assert_eq(kv_att_put_many(a, it, n, KV_ATT_ASYNC), KV_OK);
    /* every even key, each listed twice, plus two missing keys */
    size_t m = n + 2;
    const void **keys = calloc(m, sizeof *keys);
    size_t *klens = calloc(m, sizeof *klens);
    for (size_t i = 0; i < n; i++) {
        keys[i] = it[(i / 2) * 2].key;
        klens[i] = it[(i / 2) * 2].klen;
    }
    keys[n] = "missing";
    klens[n] = 7;
    keys[n + 1] = "";   /* an empty key that does not exist is skipped */
    klens[n + 1] = 0;
    size_t removed = 0;
    cr_assert_eq(kv_att_delete_many(a, keys, klens, m, 0, &removed), KV_OK, "%s",
                 kv_att_errmsg(a));
    cr_assert_eq(removed, n / 2);
    const void *v;
    size_t vn;
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(kv_att_get(b, it[i].key, it[i].klen, &v, &vn),
                     i % 2 ? KV_OK : KV_NOTFOUND, "key %zu", i);
    /* again: nothing left to remove; pipelined, read back by the same handle */
    cr_assert_eq(kv_att_delete_many(a, keys, klens, m, KV_ATT_ASYNC, &removed), KV_OK);
    cr_assert_eq(removed, 0);
    const void *one = it[1].key;
    size_t one_len = it[1].klen;
    cr_assert_eq(kv_att_delete_many(a, &one, &one_len, 1, KV_ATT_ASYNC, &removed), KV_OK);
    cr_assert_eq(removed, 1);
    cr_assert_eq(kv_att_get(a, it[1].key, it[1].klen, &v, &vn), KV_NOTFOUND);
    cr_assert_eq(kv_att_delete_many(a, NULL, NULL, 0, KV_ATT_SYNC, &removed), KV_OK);
    cr_assert_eq(removed, 0);
    int64_t cnt = -1;
    cr_assert_eq(kv_att_count(b, &cnt), KV_OK);
    cr_assert_eq(cnt, (int64_t)(n / 2 - 1));
    free(keys);
    free(klens);
    free(store);
    free(it);
    kv_attach_close(b);
    kv_attach_close(a);
}

/* One encoded operation through the suite's writer (kv_exec). Returns the
 * writer's status; the result in *res and *rlen. */
static kv_status exec_kv(kv_exec *x, kv_buf *op, const uint8_t **res, size_t *rlen)
{
    int reached = 0;
    kv_status st = kv_exec_call(x, op->data, op->len, 64, res, rlen, &reached);
    cr_assert(reached, "no writer answered: %s", kv_exec_errmsg(x));
    return st;
}

static void kv_op_begin(kvshm_op_enc *e, kv_buf *b, unsigned op, const char *table)
{
    b->len = 0;
    kvshm_op_begin(e, b, KVSHM_OPC_KV, op, table);
    kvshm_op_add_i64(e, 1 << 20);
    kvshm_op_args(e);
}

/* A KVault table the writer does not serve is written by the writer as
 * table operations (docs/shared-mode.md, "Every class through the
 * writer"): committed when the call returns, read through an own
 * connection; the served table is refused (its writes go through the
 * ring). */
Test(attach, exec_writes_a_table_the_writer_does_not_serve)
{
    kv_exec *x = NULL;
    kv_buf b;
    kvshm_op_enc e;
    const uint8_t *res;
    size_t rlen;
    kv_buf_init(&b);
    cr_assert_eq(kv_exec_open(db, &x), KV_OK);

    kv_op_begin(&e, &b, KVSHM_OP_PUT, "other");
    kvshm_op_add(&e, "k", 1);
    kvshm_op_add(&e, "hello", 5);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert_eq(exec_kv(x, &b, &res, &rlen), KV_OK, "%s", kv_exec_errmsg(x));

    int64_t kl[3] = {1, 1, 2}, vl[3] = {1, 0, 3};
    kv_op_begin(&e, &b, KVSHM_OP_PUT_MANY, "other");
    kvshm_op_add(&e, kl, sizeof kl);
    kvshm_op_add(&e, "abcd", 4);
    kvshm_op_add(&e, vl, sizeof vl);
    kvshm_op_add(&e, "1234", 4);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert_eq(exec_kv(x, &b, &res, &rlen), KV_OK, "%s", kv_exec_errmsg(x));

    /* committed on return: an own connection reads every value */
    kv_open_opts o;
    kv_open_opts_default(&o);
    o.table = "other";
    kv_db *own = NULL;
    char err[256];
    cr_assert_eq(kv_db_open(db, &o, &own, err, sizeof err), KV_OK, "%s", err);
    const struct { const char *k, *v; } want[] = {{"k", "hello"}, {"a", "1"}, {"b", ""},
                                                  {"cd", "234"}};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const void *v;
        size_t n;
        cr_assert_eq(kv_get(own, want[i].k, strlen(want[i].k), &v, &n), KV_OK, "%s", want[i].k);
        cr_assert(n == strlen(want[i].v) && !memcmp(v, want[i].v, n), "%s", want[i].k);
        kv_get_done(own);
    }

    kv_op_begin(&e, &b, KVSHM_OP_DELETE, "other");
    kvshm_op_add(&e, "k", 1);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert_eq(exec_kv(x, &b, &res, &rlen), KV_OK);
    cr_assert(rlen == 1 && res[0] == 1);
    cr_assert_eq(exec_kv(x, &b, &res, &rlen), KV_OK);
    cr_assert(rlen == 1 && res[0] == 0);   /* gone already */

    int64_t dl[3] = {1, 1, 1};
    kv_op_begin(&e, &b, KVSHM_OP_DEL_MANY, "other");
    kvshm_op_add(&e, dl, sizeof dl);
    kvshm_op_add(&e, "aax", 3);   /* a twice, x missing */
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert_eq(exec_kv(x, &b, &res, &rlen), KV_OK);
    int64_t removed = -1;
    cr_assert_eq(rlen, 8);
    memcpy(&removed, res, 8);
    cr_assert_eq(removed, 1);

    kv_op_begin(&e, &b, KVSHM_OP_FEATURE, "other");
    kvshm_op_add(&e, "routed", 6);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert_eq(exec_kv(x, &b, &res, &rlen), KV_OK, "%s", kv_exec_errmsg(x));

    int64_t n = -1;
    cr_assert_eq(kv_count(own, &n), KV_OK);
    cr_assert_eq(n, 2);   /* b, cd */

    /* the served table is refused, and nothing of it is written */
    kv_op_begin(&e, &b, KVSHM_OP_PUT, "kv");
    kvshm_op_add(&e, "k", 1);
    kvshm_op_add(&e, "v", 1);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert_eq(exec_kv(x, &b, &res, &rlen), KV_INVALID);
    cr_assert(strstr(kv_exec_errmsg(x), "served through the shared segment"), "%s",
              kv_exec_errmsg(x));
    kv_att *a = att();
    const void *v;
    size_t vn;
    cr_assert_eq(kv_att_get(a, "k", 1, &v, &vn), KV_NOTFOUND);
    cr_assert_eq(kv_attach_close(a), KV_OK);

    kv_db_close(own);
    kv_exec_close(x);
    kv_buf_free(&b);
}
