/*
 * store_py.c - the plumbing shared by the _TextVault and _VectorKVault
 * bindings (text_py.c, vector_py.c): one engine handle behind a per-object
 * lock, value encoding per docs/api.md §3, and the methods whose logic is the same
 * for both stores (delete/exists/count by id, close, the §3.6 switches, the
 * `closed` property). Declarations in kvpy.h.
 *
 * Each binding embeds KVPY_STORE_HEAD at the top of its object struct and
 * describes its engine with a kvpy_store_kind (name for messages, close,
 * errmsg, delete, exists, count). Every engine call goes through
 * kvpy_store_call: take the lock (waiting with the GIL released), refuse a
 * closed handle, run the call with the GIL released, and on failure raise
 * while the engine's message is still protected by the lock.
 *
 * Exceptions (builtins; the proxies map them with
 * kohakuvault.errors.map_exception, docs/api.md §2.3):
 *   KV_IO → OSError, everything else through errors_py.c's table
 *   (KV_BUSY → _kvault.BusyError, KV_NOTFOUND → _kvault.KeyNotFoundError,
 *   both RuntimeError); a closed handle → ValueError("Cannot operate on closed <name>").
 */
#include "kvpy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvshm/attach.h"

/* ====================================================================== */
/* Errors, value encoding                                                  */
/* ====================================================================== */

PyObject *kvpy_store_raise(kv_status st, const char *msg)
{
    /* The text and vector engines report only OS-level failures as KV_IO
     * (their SQLite errors are KV_SQLITE), so KV_IO is OSError here even
     * without an errno. */
    if (st == KV_IO) {
        PyErr_SetString(PyExc_OSError, msg && msg[0] ? msg : kv_strerror(st));
        return NULL;
    }
    return kvpy_raise_status(st, msg, 0);
}

int kvpy_store_encode(PyObject *v, const kvpy_pack_opts *o, kv_buf *out)
{
    if (o->auto_pack)
        return kvpy_pack_value(v, o, out);
    if (PyUnicode_Check(v) || PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError,
                     "value must be bytes-like or a sequence of ints (auto-pack is off), got %s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    PyObject *b = PyBytes_FromObject(v);
    if (!b)
        return -1;
    int rc = kv_buf_append(out, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b)) == KV_OK ? 0 : -1;
    Py_DECREF(b);
    if (rc < 0)
        PyErr_NoMemory();
    return rc;
}

/* ====================================================================== */
/* Object lifetime and engine calls                                        */
/* ====================================================================== */

/* The start of every engine call: take the lock, refuse a closed store,
 * re-home it in a forked child. 0 with the lock held, or -1 with the
 * exception set and the lock released. */
static int store_enter(kvpy_store *s)
{
    kvpy_fork_lock(&s->fork);
    if (s->h == NULL) {
        kvpy_fork_unlock(&s->fork);
        PyErr_Format(PyExc_ValueError, "Cannot operate on closed %s", s->kind->name);
        return -1;
    }
    if (kvpy_fork_rehome(&s->fork) < 0) {
        kvpy_fork_unlock(&s->fork);
        return -1;
    }
    return 0;
}

/* ====================================================================== */
/* Routing writes to the writer serving the file                          */
/* ====================================================================== */

/* Writes one call may try: the own connection, the writer, the own
 * connection again when the writer went away meanwhile. */
#define ROUTE_ATTEMPTS 3
/* How long a pipelined insert applied on the own connection waits for
 * SQLite's write lock, polling every ROUTE_BUSY_POLL_MS (ms). */
#define ROUTE_BUSY_MS 30000
#define ROUTE_BUSY_POLL_MS 2

static int route_check(void *ctx)
{
    return kv_exec_served(((kvpy_route *)ctx)->ex);
}

/* (Re)install the commit guard on the current handle. */
static void route_guard(kvpy_store *s)
{
    if (s->route && s->h) {
        s->kind->set_guard(s->h, &s->route->guard);
        s->kind->conn(s->h, &s->route->conn);
    }
}

void kvpy_route_free(kvpy_route *r)
{
    if (!r)
        return;
    kv_exec_close(r->ex);
    PyMem_RawFree(r->dec);
    kv_oprec_free(&r->rec);
    kv_buf_free(&r->op);
    PyMem_RawFree(r);
}

int kvpy_route_new(const char *path, kvpy_route **out)
{
    const char *mode = getenv("KVAULT_SHARED");
    *out = NULL;
    if (mode && !strcmp(mode, "off"))
        return 0;
    kv_exec *ex = NULL;
    kv_status st;
    Py_BEGIN_ALLOW_THREADS
    st = kv_exec_open(path, &ex);
    Py_END_ALLOW_THREADS
    if (st == KV_NOMEM) {
        PyErr_NoMemory();
        return -1;
    }
    if (st != KV_OK)
        return 0;   /* no file behind the path (":memory:"): nothing to serve */
    kvpy_route *r = PyMem_RawCalloc(1, sizeof *r);
    if (!r) {
        kv_exec_close(ex);
        PyErr_NoMemory();
        return -1;
    }
    r->ex = ex;
    kv_buf_init(&r->op);
    r->guard.check = route_check;
    r->guard.ctx = r;
    *out = r;
    return 0;
}

int kvpy_store_route_open(kvpy_store *s)
{
    if (kvpy_route_new(s->path, &s->route) < 0)
        return -1;
    route_guard(s);
    return 0;
}

int kvpy_route_send(kvpy_route *r, size_t result_max, kv_status *st, const uint8_t **res,
                    size_t *rlen, char *msg, size_t mlen)
{
    int reached, found = 0;
    uint8_t token[KV_OPREC_TOKEN_BYTES];
    uint64_t seq;
    *st = kv_exec_call(r->ex, r->op.data, r->op.len, result_max, res, rlen, &reached);
    if (!reached && kv_exec_unsettled(r->ex, token, &seq) && r->conn.db) {
        /* the writer that received it died without replying: applied? */
        kv_oprec_free(&r->rec);
        if ((*st = kv_oprec_get(&r->conn, token, &r->rec, &found)) != KV_OK) {
            snprintf(msg, mlen, "%s", kv_conn_errmsg(&r->conn));
            return 1;
        }
        kv_exec_settle(r->ex);
        if (found && r->rec.seq == seq) {
            *st = (kv_status)r->rec.status;
            *res = r->rec.res;
            *rlen = r->rec.res_len;
            r->via_writer = 0;
            return 1;
        }
    }
    if (!reached) {   /* no writer serves the file now: the own connection */
        r->via_writer = 0;
        return 0;
    }
    if (*st != KV_OK)
        snprintf(msg, mlen, "%s", kv_exec_errmsg(r->ex));
    return 1;
}

/* Encode operation `op` of the store in r->op: the open parameters, the
 * arguments enc(ctx) adds (NULL: none), then `ids` (n i64). */
static kv_status route_encode_op(const kvpy_store *s, kvpy_route *r, unsigned op,
                                 void (*enc)(const void *, kvshm_op_enc *), const void *ctx,
                                 const int64_t *ids, size_t n)
{
    kvshm_op_enc e;
    r->op.len = 0;
    kvshm_op_begin(&e, &r->op, s->kind->op_class, op, s->table);
    s->kind->encode_open(s, &e);
    kvshm_op_args(&e);
    if (enc)
        enc(ctx, &e);
    for (size_t i = 0; i < n; i++)
        kvshm_op_add_i64(&e, ids[i]);
    return kvshm_op_end(&e);
}

/* Encode the write `rw` of ctx as one operation in r->op. */
static kv_status route_encode(const kvpy_store *s, kvpy_route *r, const kvpy_store_remote *rw,
                              const void *ctx)
{
    return route_encode_op(s, r, rw->op, rw->encode, ctx, NULL, 0);
}

/* Open a transaction on the own handle for pipelined inserts the writer
 * that had them did not apply, past the commit guard (route_own_end ends
 * both). The write lock may be held a while (a writer starting, another
 * process settling its own): these inserts' ids were returned, they must
 * not fail for that, so a busy file is tried again up to ROUTE_BUSY_MS. */
static kv_status route_own_begin(kvpy_store *s, kvpy_route *r, char *msg, size_t mlen)
{
    kv_status st;
    r->guard.bypass = 1;
    for (int waited_ms = 0;; waited_ms += ROUTE_BUSY_POLL_MS) {
        st = s->kind->tx_begin(s->h);
        if (st != KV_BUSY || waited_ms >= ROUTE_BUSY_MS)
            break;
        usleep(ROUTE_BUSY_POLL_MS * 1000);
    }
    if (st != KV_OK) {
        r->guard.bypass = 0;
        snprintf(msg, mlen, "%s", s->kind->errmsg(s->h));
    }
    return st;
}

/* Commit route_own_begin's transaction; `st` the status of what ran in it
 * (its message in msg): the status of the whole. */
static kv_status route_own_end(kvpy_store *s, kvpy_route *r, kv_status st, char *msg,
                               size_t mlen)
{
    kv_status end = s->kind->tx_end(s->h, 1);
    r->guard.bypass = 0;
    if (st == KV_OK && end != KV_OK)
        snprintf(msg, mlen, "%s", s->kind->errmsg(s->h));
    return st != KV_OK ? st : end;
}

/* Apply pipelined operation op[0..len) on the own handle, inside
 * route_own_begin's transaction (a failure is rolled back alone). */
static kv_status route_apply_own(kvpy_store *s, kvpy_route *r, const uint8_t *op, size_t len,
                                 char *msg, size_t mlen)
{
    const char *why = NULL;
    if (!r->dec && !(r->dec = PyMem_RawMalloc(sizeof *r->dec)))
        return KV_NOMEM;
    if (kvshm_op_decode(op, len, r->dec, &why) != 0) {
        snprintf(msg, mlen, "%s: %s", s->kind->name, why);
        return KV_INVALID;
    }
    kv_status st = s->kind->run_posted(s->h, r->dec);
    if (st != KV_OK)
        snprintf(msg, mlen, "%s", s->kind->errmsg(s->h));
    return st;
}

/* No writer serves the file any more (r->via_writer was cleared): the
 * unused rest of the object's block of ids goes back through the own
 * connection, so the own inserts follow on (a failure only leaves the
 * ids unused). GIL released, lock held. */
static void route_writer_gone(kvpy_store *s, kvpy_route *r)
{
    if (r->lease_next < r->lease_end) {
        r->guard.bypass = 1;
        kv_lease_return(&r->conn, s->table, r->lease_next, r->lease_end);
        r->guard.bypass = 0;
    }
    r->lease_next = r->lease_end = r->lease_size = 0;
}

/* Settle the object's pipelined inserts (GIL released, lock held): wait
 * for their replies; when no writer serves the file any more, apply on the
 * own connection those its record (kvault/oprec.h) does not show applied,
 * in order, in one transaction. Returns KV_OK, or the first failure of one
 * of them (message in msg): one a reply reported first. The handle keeps
 * the inserts until that transaction committed: when it could not begin
 * or commit, the next call settles them again. The object's block of ids
 * ends with its writer. */
static kv_status route_settle(kvpy_store *s, char *msg, size_t mlen)
{
    kvpy_route *r = s->route;
    int reached, found = 0;
    kv_status st = kv_exec_flush(r->ex, &reached);
    if (reached) {
        if (st != KV_OK)
            snprintf(msg, mlen, "%s", kv_exec_errmsg(r->ex));
        return st;
    }
    r->via_writer = 0;
    kv_status replied = kv_exec_failure(r->ex);   /* read before the writer went away */
    if (replied != KV_OK)
        snprintf(msg, mlen, "%s", kv_exec_errmsg(r->ex));
    uint8_t token[KV_OPREC_TOKEN_BYTES];
    kv_exec_token(r->ex, token);
    kv_oprec_free(&r->rec);
    if ((st = kv_oprec_get(&r->conn, token, &r->rec, &found)) != KV_OK) {
        if (replied == KV_OK)
            snprintf(msg, mlen, "%s", kv_conn_errmsg(&r->conn));
        return replied != KV_OK ? replied : st;
    }
    /* one transaction for them all: the file's write lock is taken once;
     * a message goes to msg only when no earlier failure is reported */
    char none[1];
    char *fmsg = replied == KV_OK ? msg : none;
    size_t fmlen = replied == KV_OK ? mlen : sizeof none;
    kv_status first = route_own_begin(s, r, fmsg, fmlen);
    int open = first == KV_OK;
    for (size_t i = 0, n = kv_exec_posted(r->ex); open && i < n; i++) {
        const uint8_t *op;
        size_t len;
        uint64_t seq;
        kv_exec_posted_op(r->ex, i, &op, &len, &seq);
        if (found && seq == r->rec.fail_seq && r->rec.fail_seq < r->rec.seq) {
            /* it failed at the dead writer, whose reply never left */
            if (first == KV_OK) {
                first = r->rec.fail_status != KV_OK ? (kv_status)r->rec.fail_status : KV_IO;
                snprintf(fmsg, fmlen, "%s", r->rec.fail_msg ? r->rec.fail_msg : "the insert failed");
            }
            continue;
        }
        if (found && seq <= r->rec.seq)
            continue;   /* the dead writer committed it */
        st = route_apply_own(s, r, op, len, first == KV_OK ? fmsg : none,
                             first == KV_OK ? fmlen : sizeof none);
        if (first == KV_OK)
            first = st;
    }
    kv_status end = open ? route_own_end(s, r, KV_OK, first == KV_OK ? fmsg : none,
                                         first == KV_OK ? fmlen : sizeof none) : first;
    if (end == KV_OK)   /* committed (an insert that failed in it was rolled back alone) */
        kv_exec_forget(r->ex);
    if (open && first == KV_OK)
        first = end;
    route_writer_gone(s, r);
    return replied != KV_OK ? replied : first;
}

/* Settle the pipelined inserts before any other call (lock held). */
static kv_status route_settle_if(kvpy_store *s, char *msg, size_t mlen)
{
    if (!s->route || !kv_exec_posted(s->route->ex))
        return KV_OK;
    return route_settle(s, msg, mlen);
}

/* A new block of ids from the writer into r->lease_next/_end. 1, or 0 when
 * the insert takes the ordinary path (no writer, or the request failed:
 * the ordinary path reports what fails again). GIL released, lock held. */
static int route_lease(kvpy_store *s, kvpy_route *r)
{
    const int64_t n = r->lease_size ? r->lease_size : 1;
    const uint8_t *res;
    size_t rlen;
    kv_status st;
    char msg[256];
    if (route_encode_op(s, r, KVSHM_OP_LEASE, NULL, NULL, &n, 1) != KV_OK)
        return 0;
    if (!kvpy_route_send(r, 8, &st, &res, &rlen, msg, sizeof msg)) {
        route_writer_gone(s, r);
        return 0;
    }
    if (st != KV_OK || rlen != 8)
        return 0;
    memcpy(&r->lease_next, res, 8);
    r->lease_end = r->lease_next + n;
    r->lease_size = n < KVPY_LEASE_BLOCK ? 2 * n : n;
    return 1;
}

/* Give the unused rest of the object's block of ids back (closing: the
 * next object's ids follow on): to the writer, or through the own
 * connection when none serves the file. Failures are ignored: the ids are
 * then skipped. GIL released, lock held. */
static void route_lease_return(kvpy_store *s, kvpy_route *r)
{
    const uint8_t *res;
    size_t rlen;
    kv_status st;
    char msg[256];
    int64_t range[2] = {r->lease_next, r->lease_end};
    if (r->lease_next >= r->lease_end)
        return;
    if (r->via_writer && route_encode_op(s, r, KVSHM_OP_LEASE_END, NULL, NULL, range, 2) == KV_OK &&
        kvpy_route_send(r, 8, &st, &res, &rlen, msg, sizeof msg)) {
        r->lease_next = r->lease_end = 0;
        return;
    }
    route_writer_gone(s, r);
}

/* The insert in r->op, which carries id `at` of the object's block, sent
 * and its reply awaited (it does not fit one packet), or applied on the
 * own connection when no writer serves the file. As route_post. */
static int route_send_at(kvpy_store *s, kvpy_route *r, int64_t at, int64_t *id, kv_status *st,
                         char *msg, size_t mlen)
{
    const uint8_t *res;
    size_t rlen;
    if ((*st = route_settle_if(s, msg, mlen)) != KV_OK)
        return -1;
    r->lease_next++;
    if (!kvpy_route_send(r, 8, st, &res, &rlen, msg, mlen)) {
        if ((*st = route_own_begin(s, r, msg, mlen)) == KV_OK)
            *st = route_own_end(s, r, route_apply_own(s, r, r->op.data, r->op.len, msg, mlen),
                                msg, mlen);
        route_writer_gone(s, r);
    }
    if (*st != KV_OK)
        return -1;
    *id = at;
    return 1;
}

/* kvpy_store_post_insert with the GIL released and the lock held: 1 sent
 * (or applied on the own connection), 0 the ordinary path, -1 failed (*st,
 * msg). */
static int route_post(kvpy_store *s, void *ctx, const kvpy_store_remote *rw, int64_t *id,
                      kv_status *st, char *msg, size_t mlen)
{
    kvpy_route *r = s->route;
    uint8_t tok[KV_OPREC_TOKEN_BYTES];
    uint64_t seq;
    int reached, queued;
    if (!r || !r->via_writer || !s->kind->run_posted || kv_exec_unsettled(r->ex, tok, &seq))
        return 0;
    if (rw->check && (*st = rw->check(s->h, ctx)) != KV_OK) {
        snprintf(msg, mlen, "%s", s->kind->errmsg(s->h));
        return -1;
    }
    uint64_t now = kvpy_now_ms();
    if (r->lease_next < r->lease_end && now - r->lease_used_ms > KVPY_LEASE_IDLE_MS) {
        /* a block idle that long goes back (KVPY_LEASE_IDLE_MS) */
        if ((*st = route_settle_if(s, msg, mlen)) != KV_OK)
            return -1;
        route_lease_return(s, r);
        if (!r->via_writer)
            return 0;
    }
    if (r->lease_next >= r->lease_end) {
        /* the object's inserts settled first: a failure of one is raised
         * here, not picked up (and lost) by the request for the block */
        if ((*st = route_settle_if(s, msg, mlen)) != KV_OK)
            return -1;
        if (!r->via_writer || !route_lease(s, r))
            return 0;
    }
    r->lease_used_ms = now;
    int64_t at = r->lease_next;
    if (route_encode_op(s, r, rw->op, rw->encode, ctx, &at, 1) != KV_OK)
        return 0;
    if (r->op.len > KV_EXEC_POST_MAX)   /* in a memfd, waiting for the reply; the id all the same */
        return route_send_at(s, r, at, id, st, msg, mlen);
    *st = kv_exec_post(r->ex, r->op.data, r->op.len, &reached, &queued);
    if (queued)
        r->lease_next++;
    if (reached) {
        if (*st != KV_OK) {   /* an earlier one failed */
            snprintf(msg, mlen, "%s", kv_exec_errmsg(r->ex));
            return -1;
        }
        *id = at;
        return 1;
    }
    /* no writer any more: what it did not apply runs here, this one too
     * when it was sent */
    if ((*st = route_settle(s, msg, mlen)) != KV_OK)
        return -1;
    if (!queued)
        return 0;
    *id = at;
    return 1;
}

int kvpy_store_post_insert(kvpy_store *s, void *ctx, const kvpy_store_remote *rw, int64_t *id)
{
    kv_status st = KV_OK;
    char msg[1024] = "";
    int rc;
    if (!s->route || !s->route->via_writer)
        return 0;   /* read without the lock: a stale look only picks the path */
    if (store_enter(s) < 0)
        return -1;
    Py_BEGIN_ALLOW_THREADS
    rc = route_post(s, ctx, rw, id, &st, msg, sizeof msg);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        kvpy_store_raise(st, msg);
    kvpy_fork_unlock(&s->fork);
    return rc;
}

/* The write, wherever it goes now (GIL released, lock held); on failure
 * the message is copied into msg. */
static kv_status route_run(kvpy_store *s, kvpy_store_op op, void *ctx,
                           const kvpy_store_remote *rw, char *msg, size_t mlen)
{
    kvpy_route *r = s->route;
    kv_status st = route_settle_if(s, msg, mlen);
    if (st != KV_OK)
        return st;
    for (int attempt = 0; attempt < ROUTE_ATTEMPTS; attempt++) {
        if (r && r->via_writer) {
            const uint8_t *res;
            size_t rlen;
            if ((st = route_encode(s, r, rw, ctx)) != KV_OK) {
                snprintf(msg, mlen, "%s: operation too large to send to the writer",
                         s->kind->name);
                return st;
            }
            if (!kvpy_route_send(r, rw->result_max ? rw->result_max(ctx) : 8, &st, &res, &rlen,
                                 msg, mlen)) {
                route_writer_gone(s, r);
                continue;
            }
            if (st == KV_OK && rw->result && (st = rw->result(ctx, res, rlen)) != KV_OK)
                snprintf(msg, mlen, "%s: malformed reply of the writer", s->kind->name);
            return st;
        }
        st = op(s->h, ctx);
        if (st == KV_OK)
            return st;
        if (!r || !r->guard.refused) {
            snprintf(msg, mlen, "%s", s->kind->errmsg(s->h));
            return st;
        }
        r->guard.refused = 0;   /* a writer serves the file: send it there */
        r->via_writer = 1;
    }
    /* the writer came and went under every attempt: commit here */
    if (r)
        r->guard.bypass = 1;
    st = op(s->h, ctx);
    if (r)
        r->guard.bypass = 0;
    if (st != KV_OK)
        snprintf(msg, mlen, "%s", s->kind->errmsg(s->h));
    return st;
}

int kvpy_store_write(kvpy_store *s, kvpy_store_op op, void *ctx, const kvpy_store_remote *rw,
                     kv_status *st_out)
{
    kv_status st;
    char msg[1024] = "";
    if (st_out)
        *st_out = KV_OK;
    if (store_enter(s) < 0)
        return -1;
    Py_BEGIN_ALLOW_THREADS
    st = route_run(s, op, ctx, rw, msg, sizeof msg);
    Py_END_ALLOW_THREADS
    if (st != KV_OK)
        kvpy_store_raise(st, msg);
    kvpy_fork_unlock(&s->fork);
    if (st_out)
        *st_out = st;
    return st == KV_OK ? 0 : -1;
}

/* kvpy_fork_node.rehome: the first call in a forked child opens the
 * store's own handle and leaks the parent's (forksafe.c). Lock held. */
static int store_rehome(PyObject *obj)
{
    kvpy_store *s = (kvpy_store *)obj;
    char err[512] = "";
    void *h = NULL;
    kv_status st;
    Py_BEGIN_ALLOW_THREADS
    st = s->kind->reopen(s, &h, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        kvpy_store_raise(st, err);
        return -1;
    }
    s->h = h;
    route_guard(s);
    if (s->route)   /* the parent's block of ids stays the parent's */
        s->route->lease_next = s->route->lease_end = s->route->lease_size = 0;
    return 0;
}

int kvpy_store_setup(kvpy_store *s, const kvpy_store_kind *kind, const char *path,
                     const char *table)
{
    s->kind = kind;
    s->opts.auto_pack = s->opts.headers = s->opts.use_pickle = 1;
    s->path = strdup(path);
    s->table = strdup(table);
    if (!s->path || !s->table) {
        PyErr_NoMemory();
        return -1;
    }
    return kvpy_fork_track(&s->fork, (PyObject *)s, store_rehome);
}

/* Detach the handle (lock held or the object unreachable) and close it with
 * the GIL released; a forked child's inherited handle is the parent's and is
 * leaked (forksafe.c). */
static void store_detach(kvpy_store *s)
{
    void *h = s->h;
    s->h = NULL;
    if (!s->fork.forked)
        kvpy_close_released(h, s->kind->close);
}

/* Before the handle closes (lock held or the object unreachable): settle
 * the pipelined inserts and give the unused ids back, GIL released. KV_OK
 * or the first failure of a pipelined insert (message in msg). */
static kv_status store_settle_close(kvpy_store *s, char *msg, size_t mlen)
{
    kv_status st = KV_OK;
    if (!s->route || !s->h || s->fork.forked)
        return KV_OK;
    Py_BEGIN_ALLOW_THREADS
    st = route_settle_if(s, msg, mlen);
    route_lease_return(s, s->route);
    Py_END_ALLOW_THREADS
    return st;
}

void kvpy_store_finalize(kvpy_store *s)
{
    char msg[16];
    /* off the fork list first: a fork while the handle closes (GIL released)
     * must not take a reference to this dying object */
    kvpy_fork_untrack(&s->fork);
    store_settle_close(s, msg, sizeof msg);   /* a failure has no caller left to see it */
    store_detach(s);
    kvpy_route_free(s->route);
    s->route = NULL;
    free(s->path);
    free(s->table);
    s->path = s->table = NULL;
}

int kvpy_store_call(kvpy_store *s, kvpy_store_op op, void *ctx, kv_status *st_out)
{
    kv_status st;
    if (st_out)
        *st_out = KV_OK;
    if (store_enter(s) < 0)
        return -1;
    void *h = s->h;
    char msg[1024] = "";
    Py_BEGIN_ALLOW_THREADS
    /* read-your-writes: the pipelined inserts are committed first */
    if ((st = route_settle_if(s, msg, sizeof msg)) == KV_OK)
        st = op(h, ctx);
    else
        op = NULL;
    Py_END_ALLOW_THREADS
    if (st != KV_OK)   /* message read under the lock */
        kvpy_store_raise(st, op ? s->kind->errmsg(h) : msg);
    kvpy_fork_unlock(&s->fork);
    if (st_out)
        *st_out = st;
    return st == KV_OK ? 0 : -1;
}

int kvpy_store_call_by_id(kvpy_store *s, kvpy_store_op op, void *ctx, int64_t id)
{
    kv_status st = KV_OK;
    if (kvpy_store_call(s, op, ctx, &st) == 0)
        return 0;
    if (st == KV_NOTFOUND) {
        PyErr_Clear();
        PyErr_Format(PyExc_RuntimeError, "ID %lld not found", (long long)id);
    }
    return -1;
}

int kvpy_store_id(PyObject *arg, int64_t *id)
{
    long long v = PyLong_AsLongLong(arg);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *id = (int64_t)v;
    return 0;
}

const void *kvpy_store_value_arg(PyObject *value, const kv_buf *buf)
{
    if (value == Py_None)
        return NULL;
    return buf->data ? (const void *)buf->data : (const void *)"";
}

int kvpy_store_update_args(PyObject *args, PyObject *kw, const char *payload, long long *id,
                           PyObject **payload_obj, PyObject **value)
{
    char *kwlist[] = {"id", (char *)payload, "value", NULL};
    *payload_obj = *value = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "L|OO:update", kwlist, id, payload_obj, value))
        return -1;
    if (*payload_obj == Py_None && *value == Py_None) {
        PyErr_Format(PyExc_ValueError, "Must provide either %s or value to update", payload);
        return -1;
    }
    return 0;
}

int kvpy_store_update_value(PyObject *value, const kvpy_pack_opts *o, kv_buf *buf,
                            const void **val, size_t *vlen)
{
    if (value != Py_None && kvpy_store_encode(value, o, buf) < 0)
        return -1;
    *val = kvpy_store_value_arg(value, buf);
    *vlen = buf->len;
    return 0;
}

/* ====================================================================== */
/* Methods shared by both stores                                           */
/* ====================================================================== */

/* Arguments of the by-id engine calls below (read with the GIL released). */
typedef struct {
    const kvpy_store_kind *kind;
    int64_t id;     /* in: row / document id */
    int flag;       /* out: removed / found */
    int64_t count;  /* out: count() */
} store_args;

static kv_status op_delete(void *h, void *c)
{
    store_args *a = c;
    return a->kind->del(h, a->id, &a->flag);
}

static kv_status op_exists(void *h, void *c)
{
    store_args *a = c;
    return a->kind->exists(h, a->id, &a->flag);
}

static kv_status op_count(void *h, void *c)
{
    store_args *a = c;
    return a->kind->count(h, &a->count);
}

static void enc_delete(const void *c, kvshm_op_enc *e)
{
    kvshm_op_add_i64(e, ((const store_args *)c)->id);
}

static kv_status res_delete(void *c, const uint8_t *res, size_t n)
{
    if (n != 1)
        return KV_IO;
    ((store_args *)c)->flag = res[0] != 0;
    return KV_OK;
}

static const kvpy_store_remote remote_delete = {
    .op = KVSHM_OP_DELETE,
    .encode = enc_delete,
    .result = res_delete,
};

PyObject *kvpy_store_delete(PyObject *self, PyObject *arg)
{
    kvpy_store *s = (kvpy_store *)self;
    store_args a = {.kind = s->kind};
    if (kvpy_store_id(arg, &a.id) < 0 || kvpy_store_write(s, op_delete, &a, &remote_delete, NULL) < 0)
        return NULL;
    return PyBool_FromLong(a.flag);
}

PyObject *kvpy_store_exists(PyObject *self, PyObject *arg)
{
    kvpy_store *s = (kvpy_store *)self;
    store_args a = {.kind = s->kind};
    if (!PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "id must be int, not %s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    if (kvpy_store_id(arg, &a.id) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear();
        Py_RETURN_FALSE; /* no rowid is that large */
    }
    if (kvpy_store_call(s, op_exists, &a, NULL) < 0)
        return NULL;
    return PyBool_FromLong(a.flag);
}

PyObject *kvpy_store_count(PyObject *self, PyObject *unused)
{
    kvpy_store *s = (kvpy_store *)self;
    store_args a = {.kind = s->kind};
    if (kvpy_store_call(s, op_count, &a, NULL) < 0)
        return NULL;
    return PyLong_FromLongLong(a.count);
}

PyObject *kvpy_store_close(PyObject *self, PyObject *unused)
{
    kvpy_store *s = (kvpy_store *)self;
    char msg[1024] = "";
    kvpy_fork_lock(&s->fork);
    kv_status st = store_settle_close(s, msg, sizeof msg);
    store_detach(s);
    /* no write follows: the writer can forget this object's record now */
    kvpy_route *r = s->route;
    s->route = NULL;
    kvpy_fork_unlock(&s->fork);
    kvpy_route_free(r);
    if (st != KV_OK)   /* a pipelined insert failed: closed all the same */
        return kvpy_store_raise(st, msg);
    Py_RETURN_NONE;
}

PyObject *kvpy_store_get_closed(PyObject *self, void *closure)
{
    return PyBool_FromLong(((kvpy_store *)self)->h == NULL);
}

/* ---- §3.6 switches (per instance, read and written with the GIL) ------- */

PyObject *kvpy_store_enable_auto_pack(PyObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"use_pickle", NULL};
    kvpy_store *s = (kvpy_store *)self;
    int use_pickle = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p:enable_auto_pack", kwlist, &use_pickle))
        return NULL;
    s->opts.auto_pack = s->opts.headers = 1;
    s->opts.use_pickle = use_pickle;
    Py_RETURN_NONE;
}

PyObject *kvpy_store_refuse_pickle(PyObject *self, PyObject *unused)
{
    ((kvpy_store *)self)->opts.no_pickle = 1;
    Py_RETURN_NONE;
}

static kvpy_pack_opts *store_opts(PyObject *self)
{
    return &((kvpy_store *)self)->opts;
}

/* Sets one switch; returns None. */
static PyObject *store_set_switch(int *flag, int on)
{
    *flag = on;
    Py_RETURN_NONE;
}

PyObject *kvpy_store_disable_auto_pack(PyObject *self, PyObject *unused)
{
    return store_set_switch(&store_opts(self)->auto_pack, 0);
}

PyObject *kvpy_store_auto_pack_enabled(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(store_opts(self)->auto_pack);
}

PyObject *kvpy_store_enable_headers(PyObject *self, PyObject *unused)
{
    return store_set_switch(&store_opts(self)->headers, 1);
}

PyObject *kvpy_store_disable_headers(PyObject *self, PyObject *unused)
{
    return store_set_switch(&store_opts(self)->headers, 0);
}

PyObject *kvpy_store_headers_enabled(PyObject *self, PyObject *unused)
{
    return PyBool_FromLong(store_opts(self)->headers);
}
