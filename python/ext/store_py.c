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

static int route_check(void *ctx)
{
    return kv_exec_served(((kvpy_route *)ctx)->ex);
}

/* (Re)install the commit guard on the current handle. */
static void route_guard(kvpy_store *s)
{
    if (s->route && s->h)
        s->kind->set_guard(s->h, &s->route->guard);
}

void kvpy_route_free(kvpy_route *r)
{
    if (!r)
        return;
    kv_exec_close(r->ex);
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
    int reached;
    *st = kv_exec_call(r->ex, r->op.data, r->op.len, result_max, res, rlen, &reached);
    if (!reached) {   /* no writer serves the file now: the own connection */
        r->via_writer = 0;
        return 0;
    }
    if (*st != KV_OK)
        snprintf(msg, mlen, "%s", kv_exec_errmsg(r->ex));
    return 1;
}

/* Encode the write `rw` of ctx as one operation in r->op. */
static kv_status route_encode(const kvpy_store *s, kvpy_route *r, const kvpy_store_remote *rw,
                              const void *ctx)
{
    kvshm_op_enc e;
    r->op.len = 0;
    kvshm_op_begin(&e, &r->op, s->kind->op_class, rw->op, s->table);
    s->kind->encode_open(s, &e);
    kvshm_op_args(&e);
    rw->encode(ctx, &e);
    return kvshm_op_end(&e);
}

/* The write, wherever it goes now (GIL released, lock held); on failure
 * the message is copied into msg. */
static kv_status route_run(kvpy_store *s, kvpy_store_op op, void *ctx,
                           const kvpy_store_remote *rw, char *msg, size_t mlen)
{
    kvpy_route *r = s->route;
    kv_status st = KV_OK;
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
                                 msg, mlen))
                continue;
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

void kvpy_store_finalize(kvpy_store *s)
{
    /* off the fork list first: a fork while the handle closes (GIL released)
     * must not take a reference to this dying object */
    kvpy_fork_untrack(&s->fork);
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
    Py_BEGIN_ALLOW_THREADS
    st = op(h, ctx);
    Py_END_ALLOW_THREADS
    if (st != KV_OK)
        kvpy_store_raise(st, s->kind->errmsg(h)); /* message read under the lock */
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

static const kvpy_store_remote remote_delete = {KVSHM_OP_DELETE, enc_delete, NULL, res_delete};

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
    kvpy_fork_lock(&s->fork);
    store_detach(s);
    kvpy_fork_unlock(&s->fork);
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
