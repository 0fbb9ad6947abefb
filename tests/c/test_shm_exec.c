/* test_shm_exec.c - exactly-once table operations through the writer
 * (docs/shared-mode.md, "Exactly once"): the records of applied operations
 * (kvault/oprec.h) on a real file, and EXEC requests sent to a real
 * kvault-writer with a chosen (token, seq), including a re-send after the
 * writer was killed (SIGKILL) between its commit and the client's read of
 * the reply. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvault/oprec.h"
#include "kvault/text.h"
#include "kvshm/attach.h"
#include "kvshm/ops.h"
#include "kvshm/proto.h"
#include "kvtest_util.h"
#include "kvtest_writer.h"

static char db[600];
static pid_t writer = -1;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void start_writer(void) { writer = kvtest_writer_start(db, NULL); }

static void stop_writer(int sig)
{
    kvtest_writer_stop(writer, sig);
    writer = -1;
}

/* A connection to the writer serving db, and its request bell. */
typedef struct conn {
    int sock;
    kvshm_bell *bell;
} conn;

/* Connect to the writer the registry names (one attempt): 1, or 0. */
static int try_connect(conn *c)
{
    char *reg = kv_attach_registry_path(db);
    cr_assert(reg);
    char text[2048] = "", sock[108], slots[96], gen[32], state[16];
    int fd = open(reg, O_RDONLY);
    free(reg);
    cr_assert(fd >= 0);
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return 0;
    text[n] = 0;
    if (!kvshm_registry_complete(text) ||
        kvshm_registry_field(text, "socket", sock, sizeof sock) ||
        kvshm_registry_field(text, "slots", slots, sizeof slots) ||
        kvshm_registry_field(text, "generation", gen, sizeof gen) ||
        kvshm_registry_field(text, "state", state, sizeof state) || strcmp(state, "ready"))
        return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t len = strlen(sock);
    memcpy(sa.sun_path + 1, sock, len);   /* abstract: a leading NUL */
    cr_assert((c->sock = socket(AF_UNIX, SOCK_SEQPACKET, 0)) >= 0);
    if (connect(c->sock, (struct sockaddr *)&sa,
                (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len)) != 0 ||
        kvshm_bell_open(slots, strtoull(gen, NULL, 10), &c->bell) != KVSHM_OK) {
        close(c->sock);
        return 0;
    }
    return 1;
}

static conn writer_connect(void)
{
    conn c = {-1, NULL};
    for (int i = 0; i < 500; i++) {   /* up to 5 s */
        if (try_connect(&c)) return c;
        sleep_ms(10);
    }
    cr_assert_fail("cannot connect to the writer");
    return c;
}

static void conn_close(conn *c)
{
    close(c->sock);
    kvshm_bell_close(c->bell);
}

static const char *const cols[] = {"body"};

/* First column of the first row of `sql` on t's connection. */
static int64_t query_i64(kv_text *t, const char *sql)
{
    kv_conn c;
    kv_text_conn(t, &c);
    sqlite3_stmt *s = NULL;
    cr_assert_eq(sqlite3_prepare_v2(c.db, sql, -1, &s, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(s), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return v;
}

#define RECORDS "SELECT count(*) FROM kohakuvault_meta WHERE key LIKE 'exec:%'"

/* The TextVault INSERT of (value, text) on table "docs" (as the binding
 * encodes it). */
static void text_insert_op(kv_buf *b, const char *value, const char *text)
{
    kvshm_op_enc e;
    kv_buf_init(b);
    kvshm_op_begin(&e, b, KVSHM_OPC_TEXT, KVSHM_OP_INSERT, "docs");
    kvshm_op_add(&e, cols[0], strlen(cols[0]));
    kvshm_op_args(&e);
    kvshm_op_add(&e, value, strlen(value));
    kvshm_op_add(&e, text, strlen(text));
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
}

/* Send EXEC (id, op) on c without reading the reply. */
static void exec_send(conn *c, const struct kvshm_exec_id *id, const kv_buf *op)
{
    struct kvshm_msg m = {.m_magic = KVSHM_PROTO_MAGIC, .m_type = KVSHM_MSG_EXEC,
                          .m_len = (uint32_t)(sizeof *id + op->len)};
    struct iovec iov[3] = {{&m, sizeof m}, {(void *)id, sizeof *id}, {op->data, op->len}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 3};
    cr_assert(sendmsg(c->sock, &mh, MSG_NOSIGNAL) > 0);
    kvshm_bell_request(c->bell);
}

/* Read one EXEC reply: its status, and its result as an id (8 bytes). */
static kv_status exec_reply(conn *c, int64_t *id)
{
    uint8_t buf[KVSHM_MSG_MAX];
    ssize_t n = recv(c->sock, buf, sizeof buf, 0);
    struct kvshm_msg m;
    cr_assert(n >= (ssize_t)sizeof m, "no reply");
    memcpy(&m, buf, sizeof m);
    cr_assert_eq(m.m_type, KVSHM_MSG_EXEC | KVSHM_MSG_REPLY);
    if (m.m_status == KV_OK) {
        cr_assert_eq(m.m_len, 8, "result of %u bytes", m.m_len);
        memcpy(id, buf + sizeof m, 8);
    }
    return (kv_status)m.m_status;
}

static int64_t exec_call(conn *c, const struct kvshm_exec_id *id, const kv_buf *op)
{
    int64_t rid = -1;
    exec_send(c, id, op);
    cr_assert_eq(exec_reply(c, &rid), KV_OK);
    return rid;
}

/* Documents in table docs, counted through a connection of our own. */
static int64_t doc_count(void)
{
    kv_text *t = NULL;
    char err[256];
    cr_assert_eq(kv_text_open(db, "docs", cols, 1, &t, err, sizeof err), KV_OK, "%s", err);
    int64_t n = -1;
    cr_assert_eq(kv_text_count(t, &n), KV_OK);
    kv_text_close(t);
    return n;
}

/* The record of `token` read through a connection of our own. */
static int read_record(const uint8_t *token, kv_oprec *r)
{
    kv_text *t = NULL;
    char err[256];
    cr_assert_eq(kv_text_open(db, "docs", cols, 1, &t, err, sizeof err), KV_OK, "%s", err);
    kv_conn c;
    int found = 0;
    kv_text_conn(t, &c);
    cr_assert_eq(kv_oprec_get(&c, token, r, &found), KV_OK, "%s", kv_conn_errmsg(&c));
    kv_text_close(t);
    return found;
}

static void setup(void)
{
    kvtest_path(db, sizeof db, "once.db");
    /* the file and the docs table exist before the writer starts */
    kv_text *t = NULL;
    char err[256];
    cr_assert_eq(kv_text_open(db, "docs", cols, 1, &t, err, sizeof err), KV_OK, "%s", err);
    kv_text_close(t);
    start_writer();
}

static void teardown(void)
{
    stop_writer(SIGTERM);
    kvtest_remove_dir_of(db);
}

TestSuite(shm_exec, .init = setup, .fini = teardown, .timeout = 120);

/* The id (token, seq) of a test's operations. */
static struct kvshm_exec_id make_id(const char *token, uint64_t seq)
{
    struct kvshm_exec_id id = {.x_seq = seq};
    memcpy(id.x_token, token, sizeof id.x_token);
    return id;
}

Test(shm_exec, same_id_twice_applies_once)
{
    conn c = writer_connect();
    kv_buf op;
    text_insert_op(&op, "v1", "hello world");
    struct kvshm_exec_id id = make_id("0123456789abcdef", 1);
    int64_t first = exec_call(&c, &id, &op);
    cr_assert_gt(first, 0);
    int64_t again = exec_call(&c, &id, &op);   /* the same id: a re-send */
    cr_assert_eq(again, first);
    cr_assert_eq(doc_count(), 1);
    /* the next number is a new operation, with the same bytes */
    id.x_seq = 2;
    int64_t second = exec_call(&c, &id, &op);
    cr_assert_neq(second, first);
    cr_assert_eq(doc_count(), 2);
    /* an older number than the last applied is one applied before it (a
     * pipelined operation sent again): an empty success, not applied */
    id.x_seq = 1;
    exec_send(&c, &id, &op);
    uint8_t buf[KVSHM_MSG_MAX];
    struct kvshm_msg m;
    cr_assert_eq(recv(c.sock, buf, sizeof buf, 0), (ssize_t)sizeof m);
    memcpy(&m, buf, sizeof m);
    cr_assert_eq(m.m_status, KV_OK);
    cr_assert_eq(m.m_len, 0);
    cr_assert_eq(doc_count(), 2);
    /* two requests of one id waiting in the same pass get one apply */
    id.x_seq = 3;
    exec_send(&c, &id, &op);
    exec_send(&c, &id, &op);
    int64_t a = -1, b = -2;
    cr_assert_eq(exec_reply(&c, &a), KV_OK);
    cr_assert_eq(exec_reply(&c, &b), KV_OK);
    cr_assert_eq(a, b);
    cr_assert_eq(doc_count(), 3);
    kv_oprec r;
    cr_assert(read_record(id.x_token, &r));
    cr_assert_eq(r.seq, 3);
    cr_assert_eq(r.res_len, 8);
    cr_assert_eq(memcmp(r.res, &a, 8), 0);
    kv_oprec_free(&r);
    kv_buf_free(&op);
    conn_close(&c);
}

Test(shm_exec, resend_after_writer_killed_between_commit_and_reply)
{
    kv_buf op;
    text_insert_op(&op, "v", "killed writer");
    struct kvshm_exec_id id = make_id("fedcba9876543210", 41);
    conn c = writer_connect();
    exec_send(&c, &id, &op);
    /* committed (visible to our own connection), reply not read: kill */
    for (int i = 0; i < 1000 && doc_count() == 0; i++) sleep_ms(5);
    cr_assert_eq(doc_count(), 1);
    stop_writer(SIGKILL);
    conn_close(&c);
    /* without a writer, the record says the operation was applied */
    kv_oprec r;
    cr_assert(read_record(id.x_token, &r));
    cr_assert_eq(r.seq, 41);
    cr_assert_eq(r.status, KV_OK);
    int64_t applied_id;
    cr_assert_eq(r.res_len, 8);
    memcpy(&applied_id, r.res, 8);
    kv_oprec_free(&r);
    /* the next writer finds it applied: the same id, no second row */
    start_writer();
    c = writer_connect();
    cr_assert_eq(exec_call(&c, &id, &op), applied_id);
    cr_assert_eq(doc_count(), 1);
    id.x_seq = 42;
    cr_assert_neq(exec_call(&c, &id, &op), applied_id);
    cr_assert_eq(doc_count(), 2);
    kv_buf_free(&op);
    conn_close(&c);
}

/* The client API: each call a new operation; an unsettled one keeps its
 * number; closing the handle deletes its record. */
/* A client handle on db, and in *op an insert of `text` that the handle's
 * first call, made here, applied. */
/* Send op through x once more (a new operation); its status, and in
 * *reached whether a writer got it. */
static kv_status exec_again(kv_exec *x, const kv_buf *op, int *reached)
{
    const uint8_t *res;
    size_t rlen;
    return kv_exec_call(x, op->data, op->len, 8, &res, &rlen, reached);
}

static kv_exec *exec_first_call(kv_buf *op, const char *text)
{
    kv_exec *x = NULL;
    cr_assert_eq(kv_exec_open(db, &x), KV_OK);
    text_insert_op(op, "v", text);
    int reached;
    cr_assert_eq(exec_again(x, op, &reached), KV_OK);
    cr_assert(reached);
    return x;
}

Test(shm_exec, client_handle_numbers_and_end)
{
    kv_buf op;
    kv_exec *x = exec_first_call(&op, "through the client");
    int reached;
    cr_assert_eq(exec_again(x, &op, &reached), KV_OK);
    cr_assert_eq(doc_count(), 2);   /* two calls, two operations */
    uint8_t token[16];
    uint64_t seq;
    cr_assert_eq(kv_exec_unsettled(x, token, &seq), 0);
    /* find the handle's record: the only one with seq 2 */
    kv_text *t = NULL;
    char err[256];
    cr_assert_eq(kv_text_open(db, "docs", cols, 1, &t, err, sizeof err), KV_OK, "%s", err);
    kv_exec_close(x);   /* EXEC_END: the writer deletes the record */
    int left = 1;
    for (int i = 0; i < 400 && left; i++) {
        sleep_ms(5);
        left = (int)query_i64(t, RECORDS);
    }
    cr_assert_eq(left, 0, "the closed handle's record stayed");
    kv_text_close(t);
    kv_buf_free(&op);
}

/* Closes the descriptor *arg after 300 ms: the end of the registry lock
 * it holds. */
static void *unlock_later(void *arg)
{
    sleep_ms(300);
    close(*(int *)arg);
    return NULL;
}

/* A call made while a successor of a killed writer holds the registry but
 * does not serve yet (it still shows the dead writer's text: "ready", a
 * socket nobody listens on) waits for it rather than report at once that no
 * writer serves the file. The lock is this test's (a whole-file OFD lock,
 * as a starting writer holds it), dropped after 300 ms with no writer
 * behind it: only then does the call give up. */
Test(shm_exec, call_waits_while_a_successor_holds_the_registry)
{
    kv_buf op;
    kv_exec *x = exec_first_call(&op, "served");
    int reached;
    stop_writer(SIGKILL);
    char *reg = kv_attach_registry_path(db);
    cr_assert(reg);
    int fd = open(reg, O_RDWR | O_CLOEXEC);
    free(reg);
    cr_assert(fd >= 0);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    cr_assert_eq(fcntl(fd, F_OFD_SETLK, &fl), 0, "registry lock: %s", strerror(errno));
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, unlock_later, &fd), 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    kv_status st = exec_again(x, &op, &reached);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    pthread_join(th, NULL);
    double waited_ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    cr_assert_eq(st, KV_NOTFOUND, "%s", kv_exec_errmsg(x));
    cr_assert_not(reached);
    cr_assert_geq(waited_ms, 250.0, "gave up after %.0f ms while the registry was held",
                  waited_ms);
    kv_exec_close(x);
    kv_buf_free(&op);
    start_writer();   /* replays the killed one; the suite's teardown stops it */
}

/* The engine's record API on a file of its own (no writer). */
Test(shm_exec, records_put_get_drop_expire)
{
    kv_text *t = NULL;
    char err[256];
    cr_assert_eq(kv_text_open(db, "docs", cols, 1, &t, err, sizeof err), KV_OK, "%s", err);
    kv_conn c;
    kv_text_conn(t, &c);
    uint8_t tok[16] = {1, 2, 3};
    kv_oprec r;
    int found = 1;
    cr_assert_eq(kv_oprec_get(&c, tok, &r, &found), KV_OK);
    cr_assert_eq(found, 0);
    /* ids of an insert_many, consecutive: stored as a run, read back whole */
    int64_t ids[1000];
    for (int i = 0; i < 1000; i++) ids[i] = 500 + i;
    cr_assert_eq(kv_oprec_put(&c, tok, 7, KV_OK, ids, sizeof ids), KV_OK);
    cr_assert_eq(kv_oprec_get(&c, tok, &r, &found), KV_OK);
    cr_assert(found);
    cr_assert_eq(r.seq, 7);
    cr_assert_eq(r.res_len, sizeof ids);
    cr_assert_eq(memcmp(r.res, ids, sizeof ids), 0);
    kv_oprec_free(&r);
    cr_assert_lt(query_i64(t, "SELECT max(length(value)) FROM kohakuvault_meta"
                                     " WHERE key LIKE 'exec:%'"), 64);
    /* replaced in place; any other result stored as it is */
    ids[5] = 3;
    cr_assert_eq(kv_oprec_put(&c, tok, 8, KV_OK, ids, sizeof ids), KV_OK);
    cr_assert_eq(kv_oprec_get(&c, tok, &r, &found), KV_OK);
    cr_assert(found && r.seq == 8 && r.res_len == sizeof ids);
    cr_assert_eq(memcmp(r.res, ids, sizeof ids), 0);
    kv_oprec_free(&r);
    cr_assert_eq(query_i64(t, RECORDS), 1);
    /* with an earlier failed operation named: read back, beside a run */
    cr_assert_eq(kv_oprec_put_failed(&c, tok, 12, KV_OK, ids + 6, 800 * 8, 10, KV_INVALID,
                                     "vector id 9 is already stored"),
                 KV_OK);
    cr_assert_eq(kv_oprec_get(&c, tok, &r, &found), KV_OK);
    cr_assert(found && r.seq == 12 && r.res_len == 800 * 8);
    cr_assert_eq(memcmp(r.res, ids + 6, 800 * 8), 0);
    cr_assert_eq(r.fail_seq, 10);
    cr_assert_eq(r.fail_status, KV_INVALID);
    cr_assert_str_eq(r.fail_msg, "vector id 9 is already stored");
    kv_oprec_free(&r);
    cr_assert_eq(kv_oprec_put(&c, tok, 13, KV_OK, "z", 1), KV_OK);   /* the next one forgets it */
    cr_assert_eq(kv_oprec_get(&c, tok, &r, &found), KV_OK);
    cr_assert(found && r.seq == 13 && r.fail_seq == 0 && r.fail_msg == NULL);
    kv_oprec_free(&r);
    cr_assert_eq(kv_oprec_drop(&c, tok), KV_OK);
    cr_assert_eq(kv_oprec_get(&c, tok, &r, &found), KV_OK);
    cr_assert_eq(found, 0);
    /* expire: records older than the bound go, younger ones stay */
    uint8_t old[16] = {9};
    cr_assert_eq(kv_oprec_put(&c, old, 1, KV_OK, "x", 1), KV_OK);
    sleep_ms(30);
    cr_assert_eq(kv_oprec_put(&c, tok, 9, KV_OK, "y", 1), KV_OK);
    int64_t n = -1;
    cr_assert_eq(kv_oprec_expire(&c, 15, &n), KV_OK);
    cr_assert_eq(n, 1);
    cr_assert_eq(kv_oprec_get(&c, old, &r, &found), KV_OK);
    cr_assert_eq(found, 0);
    cr_assert_eq(kv_oprec_get(&c, tok, &r, &found), KV_OK);
    cr_assert(found && r.seq == 9);
    kv_oprec_free(&r);
    kv_text_close(t);
}
