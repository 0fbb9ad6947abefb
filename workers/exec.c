/*
 * exec.c -- the writer's executor of table operations (KVSHM_MSG_EXEC,
 * kvshm/ops.h): every write a TextVault or VectorKVault makes to a served
 * file is applied here, with the engine call the embedded binding makes
 * (docs/shared-mode.md, "Every class through the writer").
 *
 * Engine handles are opened on first use and kept, keyed by class, table
 * and open parameters (the decoded operation's key), up to WR_EXEC_HANDLES;
 * the least recently used one is closed to make room. Each has its own
 * SQLite connection; before an operation, the commit in flight of the KV
 * pipeline is finished (its kv_batch transaction holds SQLite's write lock).
 * Each operation is one engine call, one transaction; the reply goes out
 * after its commit, so the client reads its write through its own
 * connection at once.
 *
 * The operation is untrusted: kvshm_op_decode checks every length and count;
 * the engine checks names, dimensions and byte counts as it does for the
 * embedded binding, and its message travels back as the reply's payload.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kv_assert.h"
#include "kvault/text.h"
#include "kvault/vector.h"
#include "kvshm/ops.h"
#include "writer.h"

/* Engine handles kept open at once. */
#define WR_EXEC_HANDLES 64
/* Most EXEC requests gathered before they are applied (one socket poll
 * reads at most one request per readable client, 32 clients a round). */
#define WR_EXEC_BATCH 64
/* How long an operation waits for SQLite's write lock when another
 * connection holds it (a process opening a store creates its tables; an
 * embedded writer with shared=False), polling every WR_EXEC_BUSY_POLL_US,
 * before the client gets KV_BUSY (which its busy policy retries). Bounded:
 * the loop serves everyone else meanwhile. */
#define WR_EXEC_BUSY_MS 200
#define WR_EXEC_BUSY_POLL_US 1000

typedef struct wr_handle {
    uint8_t cls;
    uint8_t *key;            /* table + open parameters, as encoded */
    size_t key_len;
    void *h;                 /* kv_text * or kv_vector * */
    uint64_t used;           /* last use (wr_exec's counter) */
} wr_handle;

/* One EXEC request waiting for its group's commit (wr_exec_flush). */
typedef struct wr_pending {
    int sock;                /* the client's socket: the reply goes there */
    uint32_t type;
    int fd;                  /* the client's memfd (owned), or -1 */
    uint8_t *buf;            /* the encoded operation (owned) */
    size_t len;
    uint8_t cls;             /* decoded: class and handle key (into buf) */
    const uint8_t *key;
    size_t key_len;
    int ran;
    kv_status st;            /* KV_OK, or the failure err describes */
    char err[1024];
    uint8_t *res;            /* the result (owned) */
    size_t res_len;
} wr_pending;

struct wr_exec {
    wr_pending pend[WR_EXEC_BATCH];
    size_t npend;
    wr_handle hs[WR_EXEC_HANDLES];
    size_t n;
    uint64_t clock;
    kvshm_op op;             /* the decoded operation (large: kept here) */
    uint8_t *res;            /* the result of the current operation */
    size_t res_len, res_cap;
};

static void handle_close(wr_handle *w)
{
    if (w->cls == KVSHM_OPC_TEXT) kv_text_close(w->h);
    else kv_vector_close(w->h);
    free(w->key);
    memset(w, 0, sizeof *w);
}

void wr_exec_close(wr_state *ws)
{
    wr_exec *x = ws->exec;
    if (!x) return;
    wr_exec_flush(ws);
    for (size_t i = 0; i < x->n; i++) handle_close(&x->hs[i]);
    free(x->res);
    free(x);
    ws->exec = NULL;
}

/* The table name of `op` as a C string in buf (it is an identifier of at
 * most KVSHM_OP_TABLE_MAX bytes: kvshm_op_decode). */
static const char *table_name(const kvshm_op *op, char buf[KVSHM_OP_TABLE_MAX + 1])
{
    memcpy(buf, op->table, op->table_len);
    buf[op->table_len] = 0;
    return buf;
}

static kv_status open_text(wr_state *ws, const kvshm_op *op, void **h, char *err, size_t errlen)
{
    char table[KVSHM_OP_TABLE_MAX + 1];
    const char *names[255];
    char *copy[255] = {0};
    kv_status st = KV_OK;
    for (uint32_t i = 0; i < op->nopen && st == KV_OK; i++) {   /* 1..255 (decode) */
        if (!(copy[i] = strndup((const char *)op->open[i].p, op->open[i].len))) st = KV_NOMEM;
        names[i] = copy[i];
    }
    if (st == KV_OK)
        st = kv_text_open(ws->db_abs, table_name(op, table), names, op->nopen, (kv_text **)h,
                          err, errlen);
    for (uint32_t i = 0; i < op->nopen; i++) free(copy[i]);
    return st;
}

static kv_status open_vector(wr_state *ws, const kvshm_op *op, void **h, char *err,
                             size_t errlen)
{
    char table[KVSHM_OP_TABLE_MAX + 1];
    int64_t dims = kvshm_op_i64(&op->open[0], NULL), metric = kvshm_op_i64(&op->open[1], NULL),
            elem = kvshm_op_i64(&op->open[2], NULL);
    if (dims < 1 || metric < KV_VECTOR_COSINE || metric > KV_VECTOR_HAMMING ||
        elem < KV_VECTOR_F32 || elem > KV_VECTOR_BIT) {
        snprintf(err, errlen, "exec: bad vector parameters");
        return KV_INVALID;
    }
    return kv_vector_open(ws->db_abs, table_name(op, table), (size_t)dims,
                          (kv_vector_metric)metric, (kv_vector_elem)elem, (kv_vector **)h, err,
                          errlen);
}

/* The handle `op` runs on: kept, or opened now (the least recently used
 * one closed when all are taken). NULL with *st and err set on failure. */
static wr_handle *handle_get(wr_state *ws, const kvshm_op *op, kv_status *st, char *err,
                             size_t errlen)
{
    wr_exec *x = ws->exec;
    for (size_t i = 0; i < x->n; i++) {
        wr_handle *w = &x->hs[i];
        if (w->cls == op->cls && w->key_len == op->key_len && !memcmp(w->key, op->key, op->key_len)) {
            w->used = ++x->clock;
            return w;
        }
    }
    void *h = NULL;
    *st = op->cls == KVSHM_OPC_TEXT ? open_text(ws, op, &h, err, errlen)
                                    : open_vector(ws, op, &h, err, errlen);
    if (*st != KV_OK) return NULL;
    wr_handle *w;
    if (x->n < WR_EXEC_HANDLES) {
        w = &x->hs[x->n++];
    } else {
        w = &x->hs[0];
        for (size_t i = 1; i < x->n; i++)
            if (x->hs[i].used < w->used) w = &x->hs[i];
        handle_close(w);
    }
    w->key = malloc(op->key_len);
    if (!w->key) {
        if (op->cls == KVSHM_OPC_TEXT) kv_text_close(h);
        else kv_vector_close(h);
        x->n -= w == &x->hs[x->n - 1] && x->n > 0;
        memset(w, 0, sizeof *w);
        *st = KV_NOMEM;
        snprintf(err, errlen, "exec: out of memory");
        return NULL;
    }
    memcpy(w->key, op->key, op->key_len);
    w->key_len = op->key_len;
    w->cls = op->cls;
    w->h = h;
    w->used = ++x->clock;
    return w;
}

static kv_status result(wr_exec *x, const void *p, size_t n)
{
    if (n > x->res_cap) {
        uint8_t *r = realloc(x->res, n);
        if (!r) return KV_NOMEM;
        x->res = r;
        x->res_cap = n;
    }
    memcpy(x->res, p, n);
    x->res_len = n;
    return KV_OK;
}

static kv_status run_text(wr_exec *x, kv_text *t, const kvshm_op *op)
{
    const kvshm_op_field *a = op->args;
    const char *texts[255];
    size_t lens[255];
    int64_t id = 0;
    int removed = 0;
    kv_status st;
    switch (op->op) {
    case KVSHM_OP_INSERT:   /* value, texts */
        for (uint32_t i = 0; i < op->nopen; i++) {
            texts[i] = (const char *)a[1 + i].p;
            lens[i] = a[1 + i].len;
        }
        st = kv_text_insert(t, texts, lens, a[0].p, a[0].len, &id);
        return st == KV_OK ? result(x, &id, 8) : st;
    case KVSHM_OP_UPDATE:   /* id, value|absent, [texts] */
        for (uint32_t i = 0; i + 2 < op->nargs; i++) {
            texts[i] = (const char *)a[2 + i].p;
            lens[i] = a[2 + i].len;
        }
        /* an absent value is NULL; a present empty one must not be */
        return kv_text_update(t, kvshm_op_i64(&a[0], NULL), op->nargs > 2 ? texts : NULL, lens,
                              a[1].present ? (a[1].p ? (const void *)a[1].p : "") : NULL,
                              a[1].len);
    case KVSHM_OP_DELETE:
        st = kv_text_delete(t, kvshm_op_i64(&a[0], NULL), &removed);
        if (st != KV_OK) return st;
        uint8_t r = (uint8_t)removed;
        return result(x, &r, 1);
    default:   /* KVSHM_OP_CLEAR (kvshm_op_decode) */
        return kv_text_clear(t);
    }
}

static kv_status run_vector(wr_exec *x, kv_vector *v, const kvshm_op *op)
{
    const kvshm_op_field *a = op->args;
    int64_t id = 0;
    int removed = 0;
    kv_status st;
    switch (op->op) {
    case KVSHM_OP_INSERT:   /* vector, value */
        st = kv_vector_insert(v, a[0].p, a[0].len, a[1].p, a[1].len, &id);
        return st == KV_OK ? result(x, &id, 8) : st;
    case KVSHM_OP_INSERT_MANY: {   /* n, vectors, [value lengths, values] */
        size_t n = (size_t)kvshm_op_i64(&a[0], NULL);
        const void **vals = NULL;
        size_t *vlens = NULL;
        int64_t *ids = malloc((n ? n : 1) * sizeof *ids);
        st = ids ? KV_OK : KV_NOMEM;
        if (st == KV_OK && op->nargs == 4) {
            vals = malloc((n ? n : 1) * sizeof *vals);
            vlens = malloc((n ? n : 1) * sizeof *vlens);
            if (!vals || !vlens) st = KV_NOMEM;
            const uint8_t *p = a[3].p;
            for (size_t i = 0; st == KV_OK && i < n; i++) {   /* sums checked by decode */
                int64_t l;
                memcpy(&l, a[2].p + i * 8, 8);
                vals[i] = p ? (const void *)p : "";
                vlens[i] = (size_t)l;
                if (p) p += l;
            }
        }
        if (st == KV_OK) st = kv_vector_insert_many(v, n, a[1].p ? (const void *)a[1].p : "",
                                                    a[1].len, vals, vlens, ids);
        if (st == KV_OK) st = result(x, ids, n * sizeof *ids);
        free(ids);
        free(vals);
        free(vlens);
        return st;
    }
    case KVSHM_OP_UPDATE:   /* id, vector|absent, value|absent */
        return kv_vector_update(v, kvshm_op_i64(&a[0], NULL),
                                a[1].present ? (a[1].p ? (const void *)a[1].p : "") : NULL,
                                a[1].len,
                                a[2].present ? (a[2].p ? (const void *)a[2].p : "") : NULL,
                                a[2].len);
    default:   /* KVSHM_OP_DELETE (kvshm_op_decode) */
        st = kv_vector_delete(v, kvshm_op_i64(&a[0], NULL), &removed);
        if (st != KV_OK) return st;
        uint8_t r = (uint8_t)removed;
        return result(x, &r, 1);
    }
}

/* Read the operation a client passed in a memfd: `len` bytes from offset
 * 0 of a regular file (a pipe or socket could block the loop). */
static uint8_t *read_memfd(int fd, uint64_t len, const char **why)
{
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size < len) {
        *why = "exec: the descriptor must be a memfd holding the operation";
        return NULL;
    }
    uint8_t *buf = malloc(len);
    if (!buf) {
        *why = "exec: out of memory";
        return NULL;
    }
    for (uint64_t off = 0; off < len;) {
        ssize_t n = pread(fd, buf + off, len - off, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            free(buf);
            *why = "exec: short read of the operation";
            return NULL;
        }
        off += (uint64_t)n;
    }
    return buf;
}

/* Write the result into the client's memfd (it did not fit a packet). */
static int write_memfd(int fd, const uint8_t *p, size_t n)
{
    if (ftruncate(fd, (off_t)n) != 0) return -1;
    for (size_t off = 0; off < n;) {
        ssize_t w = pwrite(fd, p + off, n - off, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        off += (size_t)w;
    }
    return 0;
}

/* Fail pending operation p with status st and message msg. */
static void pend_fail(wr_pending *p, kv_status st, const char *msg)
{
    p->st = st;
    snprintf(p->err, sizeof p->err, "%s", msg);
}

/* Send pending operation p's reply (after its transaction committed) and
 * release what it holds. */
static void pend_reply(wr_state *ws, wr_pending *p)
{
    char err[160];
    if (p->st != KV_OK) {
        ws->stat_exec_failed++;
        wr_reply(p->sock, p->type, p->st, 0, p->err, strlen(p->err));
    } else if (sizeof(struct kvshm_msg) + p->res_len <= KVSHM_MSG_MAX) {
        wr_reply(p->sock, p->type, KV_OK, 0, p->res, p->res_len);
    } else if (p->fd >= 0 && write_memfd(p->fd, p->res, p->res_len) == 0) {
        wr_reply(p->sock, p->type, KV_OK, p->res_len, NULL, 0);
    } else {
        /* committed, but the result cannot travel: say so */
        snprintf(err, sizeof err, "exec: result of %zu bytes does not fit a reply", p->res_len);
        wr_reply(p->sock, p->type, KV_IO, 0, err, strlen(err));
    }
    if (p->fd >= 0) close(p->fd);
    free(p->buf);
    free(p->res);
    memset(p, 0, sizeof *p);
    p->fd = -1;
}

/* Run pending operation p (decoded into x->op) on handle w; its status,
 * message and result are kept in p. */
static void pend_run(wr_exec *x, wr_handle *w, wr_pending *p, int busy_wait)
{
    kv_status st;
    uint64_t deadline = wr_now_ms() + WR_EXEC_BUSY_MS;
    /* alone, a busy file fails at BEGIN IMMEDIATE, before any change: run
     * again (in a group, the group's transaction holds the lock) */
    do {
        x->res_len = 0;
        st = x->op.cls == KVSHM_OPC_TEXT ? run_text(x, w->h, &x->op)
                                         : run_vector(x, w->h, &x->op);
    } while (busy_wait && st == KV_BUSY && wr_now_ms() < deadline &&
             !usleep(WR_EXEC_BUSY_POLL_US));
    if (st != KV_OK) {
        pend_fail(p, st, x->op.cls == KVSHM_OPC_TEXT ? kv_text_errmsg(w->h)
                                                    : kv_vector_errmsg(w->h));
        return;
    }
    p->st = KV_OK;
    if (x->res_len && !(p->res = malloc(x->res_len))) {
        pend_fail(p, KV_NOMEM, "exec: out of memory");
        return;
    }
    if (x->res_len) memcpy(p->res, x->res, x->res_len);
    p->res_len = x->res_len;
}

/* Open (or end) the group transaction of handle w. */
static kv_status group_begin(wr_handle *w)
{
    kv_status st;
    uint64_t deadline = wr_now_ms() + WR_EXEC_BUSY_MS;
    do {
        st = w->cls == KVSHM_OPC_TEXT ? kv_text_tx_begin(w->h) : kv_vector_tx_begin(w->h);
    } while (st == KV_BUSY && wr_now_ms() < deadline && !usleep(WR_EXEC_BUSY_POLL_US));
    return st;
}

static kv_status group_end(wr_handle *w, int commit)
{
    return w->cls == KVSHM_OPC_TEXT ? kv_text_tx_end(w->h, commit)
                                    : kv_vector_tx_end(w->h, commit);
}

static const char *handle_errmsg(wr_handle *w)
{
    return w->cls == KVSHM_OPC_TEXT ? kv_text_errmsg(w->h) : kv_vector_errmsg(w->h);
}

/* Apply the pending operations that run on the same engine handle as
 * x->pend[first] (same class and key): alone as before, or, when there are
 * several, in one transaction of that handle's connection with each
 * operation in its own savepoint (a failing one is rolled back alone and
 * gets its own error). Marks them run. */
static void run_group(wr_state *ws, size_t first)
{
    wr_exec *x = ws->exec;
    wr_pending *p0 = &x->pend[first];
    size_t members[WR_EXEC_BATCH], n = 0;
    for (size_t i = first; i < x->npend; i++) {
        wr_pending *p = &x->pend[i];
        if (!p->ran && p->st == KV_OK && p->cls == p0->cls && p->key_len == p0->key_len &&
            !memcmp(p->key, p0->key, p0->key_len))
            members[n++] = i;
    }
    char err[1024] = "";
    kv_status st = KV_OK;
    /* decode again: x->op holds one operation at a time */
    kvshm_op_decode(p0->buf, p0->len, &x->op, &(const char *){NULL});
    wr_handle *w = handle_get(ws, &x->op, &st, err, sizeof err);
    if (w && n > 1) {
        if ((st = group_begin(w)) != KV_OK) snprintf(err, sizeof err, "%s", handle_errmsg(w));
    }
    for (size_t k = 0; k < n; k++) {
        wr_pending *p = &x->pend[members[k]];
        p->ran = 1;
        if (st != KV_OK) {
            pend_fail(p, st, err);
            continue;
        }
        if (k) kvshm_op_decode(p->buf, p->len, &x->op, &(const char *){NULL});
        pend_run(x, w, p, n == 1);
    }
    if (!w || n < 2 || st != KV_OK) return;
    ws->stat_exec_batches++;
    ws->stat_exec_batched_ops += n;
    if (n > ws->stat_exec_batch_max) ws->stat_exec_batch_max = n;
    if ((st = group_end(w, 1)) != KV_OK) {
        /* nothing of the group was committed */
        snprintf(err, sizeof err, "%s", handle_errmsg(w));
        for (size_t k = 0; k < n; k++) pend_fail(&x->pend[members[k]], st, err);
    }
}

void wr_exec_flush(wr_state *ws)
{
    wr_exec *x = ws->exec;
    if (!x || !x->npend) return;
    /* the KV pipeline's open transaction holds SQLite's write lock */
    if (ws->cm_open && wr_commit_finish(ws) != 0)
        for (size_t i = 0; i < x->npend; i++)
            if (x->pend[i].st == KV_OK)
                pend_fail(&x->pend[i], KV_BUSY, "exec: the writer could not finish its commit");
    for (size_t i = 0; i < x->npend; i++)
        if (!x->pend[i].ran && x->pend[i].st == KV_OK) run_group(ws, i);
    for (size_t i = 0; i < x->npend; i++) pend_reply(ws, &x->pend[i]);
    x->npend = 0;
}

void wr_exec_request(wr_state *ws, int sock, const struct kvshm_msg *m, const uint8_t *pl,
                     int fd)
{
    const char *why = NULL;
    ws->stat_execs++;
    if (!ws->exec && !(ws->exec = calloc(1, sizeof *ws->exec))) {
        char msg[] = "exec: out of memory";
        ws->stat_exec_failed++;
        wr_reply(sock, m->m_type, KV_NOMEM, 0, msg, strlen(msg));
        if (fd >= 0) close(fd);
        return;
    }
    wr_exec *x = ws->exec;
    if (x->npend == WR_EXEC_BATCH) wr_exec_flush(ws);
    wr_pending *p = &x->pend[x->npend++];
    memset(p, 0, sizeof *p);
    p->sock = sock;
    p->type = m->m_type;
    p->fd = fd;
    p->st = KV_OK;
    if (!m->m_len) {   /* in the memfd (kvshm_msg_parse: 1..max bytes) */
        if (fd < 0) why = "exec: missing descriptor";
        else if ((p->buf = read_memfd(fd, m->m_arg, &why))) p->len = (size_t)m->m_arg;
    } else if ((p->buf = malloc(m->m_len))) {
        memcpy(p->buf, pl, m->m_len);
        p->len = m->m_len;
    } else {
        why = "exec: out of memory";
    }
    if (!why && kvshm_op_decode(p->buf, p->len, &x->op, &why) == 0) {
        p->cls = x->op.cls;
        p->key = x->op.key;   /* into p->buf */
        p->key_len = x->op.key_len;
    }
    if (why) pend_fail(p, strcmp(why, "exec: out of memory") ? KV_INVALID : KV_NOMEM, why);
}
