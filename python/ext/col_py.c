/*
 * col_py.c - kohakuvault._kvault._ColumnVault and its column handle type
 * _ColumnHandle: the native half of ColumnVault/Column/VarSizeColumn
 * (docs/api.md §6). The pure-Python proxies (kohakuvault/column_proxy.py) add
 * index normalisation, messages and the MutableSequence protocol.
 *
 * Every engine call runs with the GIL released (values are packed into a
 * C buffer first). Bulk paths: extend() of i64/f64 from a numpy array or
 * any matching buffer is one memcpy-free kv_col_append; from a list it is
 * one C conversion loop; read_raw() returns a whole range as one bytes.
 *
 * Ownership: a handle holds a strong reference to its vault object, so the
 * vault's connection outlives every column; a handle's dealloc flushes its
 * cache (flush on close).
 *
 * Locking and fork(): the engine serialises calls with its own mutex; every
 * call made here with the GIL released also holds the vault's fork lock
 * (kvpy_fork_node, forksafe.c), so a fork waits for it. In a forked child
 * the first call through the vault or one of its handles opens the vault's
 * own connection (bumping `gen`), and each handle opened on an older one
 * opens its column again on the new connection, its cache switch kept and
 * empty; the inherited connection and columns (and their cached elements,
 * the parent's to write) are leaked, never used, flushed or closed.
 * Non-blocking reads answered from the read cache with the GIL held skip
 * the lock (no fork can happen while they run) unless the handle is stale.
 */
#include "kvpy.h"
#include "packer_py.h"
#include "kvault/column.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* errors                                                                   */
/* ------------------------------------------------------------------------ */

/* Raise for status `st` of `op` with the engine's message `msg` (from the
 * vault's connection or from the writer that ran the write). */
static PyObject *kvpy_col_raise_msg(const char *msg, kv_status st, const char *op)
{
    if (!msg || !msg[0])
        msg = kv_strerror(st);
    switch (st) {
    case KV_NOMEM:
        return PyErr_NoMemory();
    case KV_INVALID:
        PyErr_Format(PyExc_ValueError, "%s: %s", op, msg);
        break;
    default: /* busy → "database is locked" text from SQLite; the rest raw RuntimeError */
        PyErr_Format(PyExc_RuntimeError, "%s", msg);
        break;
    }
    return NULL;
}

static PyObject *kvpy_col_raise(kv_colvault *cv, kv_status st, const char *op)
{
    return kvpy_col_raise_msg(cv ? kv_colvault_errmsg(cv) : "", st, op);
}

/* ------------------------------------------------------------------------ */
/* _ColumnVault                                                             */
/* ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    kv_colvault *cv;        /* owned */
    kvpy_fork_node fork;    /* lock around every GIL-released call; fork state */
    char *path;             /* owned: as opened, for a forked child */
    int64_t min_chunk, max_chunk;  /* as opened */
    unsigned gen;           /* connections opened so far (bumped in a forked child) */
    kvpy_route *route;      /* owned: writes to a served file go to its writer (NULL: never) */
} ColVaultObject;

typedef struct {
    PyObject_HEAD
    ColVaultObject *vault;  /* owned reference */
    kv_col *col;            /* owned */
    kv_packer pk;
    PyObject *name;         /* logical name (owned) */
    char *pname;            /* col_meta name of row col_id: the name, or <name>_data
                               (malloc'd; sent with every routed column write) */
    PyObject *dtype;        /* dtype string (owned) */
    int is_var;
    int64_t col_id;         /* fixed: its col_id; var: the _data col_id */
    int64_t idx_col_id;     /* var: the _idx col_id */
    int64_t max_chunk;      /* aligned max_chunk_bytes of the (fixed / data) column */
    unsigned gen;           /* vault->gen `col` was opened on */
    size_t cache_cap, cache_threshold;  /* the write-back cache as enabled (cap 0: off) */
} ColHandleObject;

static PyTypeObject ColVaultType, ColHandleType;

/* kvpy_fork_node.rehome: the vault's own connection in a forked child
 * (lock held); the lock_cache flag is carried over. */
static int ColVault_rehome(PyObject *obj)
{
    ColVaultObject *self = (ColVaultObject *)obj;
    char err[512] = "";
    kv_colvault *cv = NULL;
    kv_status st;
    int locked = kv_colvault_cache_locked(self->cv);
    Py_BEGIN_ALLOW_THREADS
    st = kv_colvault_open(self->path, self->min_chunk, self->max_chunk, &cv, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        PyErr_Format(PyExc_RuntimeError, "Failed to open %s: %s", self->path,
                     err[0] ? err : kv_strerror(st));
        return -1;
    }
    kv_colvault_cache_lock(cv, locked);
    if (self->route) {
        kv_colvault_set_commit_guard(cv, &self->route->guard);
        kv_colvault_conn(cv, &self->route->conn);
    }
    self->cv = cv;   /* the parent's is leaked */
    self->gen++;
    return 0;
}

/* Take the vault's lock, re-homing it in a forked child. 0, or -1 with the
 * exception (lock free). */
static int cv_enter(ColVaultObject *self)
{
    kvpy_fork_lock(&self->fork);
    if (kvpy_fork_rehome(&self->fork) < 0) {
        kvpy_fork_unlock(&self->fork);
        return -1;
    }
    return 0;
}

static inline void cv_leave(ColVaultObject *self)
{
    kvpy_fork_unlock(&self->fork);
}

static int ColVault_init(ColVaultObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"path", "min_chunk_bytes", "max_chunk_bytes", NULL};
    const char *path;
    long long mn = KV_COL_MIN_CHUNK_DEFAULT, mx = KV_COL_MAX_CHUNK_DEFAULT;
    char err[512] = "";
    kv_status st;
    kv_colvault *cv = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s|LL", kwlist, &path, &mn, &mx))
        return -1;
    if (self->cv) {
        PyErr_SetString(PyExc_RuntimeError, "_ColumnVault already initialised");
        return -1;
    }
    Py_BEGIN_ALLOW_THREADS
    st = kv_colvault_open(path, mn, mx, &cv, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        if (st == KV_INVALID)
            PyErr_Format(PyExc_ValueError, "Invalid ColumnVault arguments: %s", err);
        else
            PyErr_Format(PyExc_RuntimeError, "Failed to open %s: %s", path, err[0] ? err : kv_strerror(st));
        return -1;
    }
    free(self->path);
    self->path = strdup(path);
    self->min_chunk = mn;
    self->max_chunk = mx;
    if (!self->path ? (PyErr_NoMemory(), 1)
                    : kvpy_route_new(path, &self->route) < 0 ||
                          kvpy_fork_track(&self->fork, (PyObject *)self, ColVault_rehome) < 0) {
        kv_colvault_close(cv);
        kvpy_route_free(self->route);
        self->route = NULL;
        return -1;
    }
    if (self->route) {
        kv_colvault_set_commit_guard(cv, &self->route->guard);
        kv_colvault_conn(cv, &self->route->conn);
    }
    self->cv = cv;
    return 0;
}

/* Passive checkpoint, then close (kvpy_close_released; GIL released). */
static void colvault_shut(void *cv)
{
    kv_colvault_checkpoint(cv);
    kv_colvault_close(cv);
}

static void ColVault_dealloc(ColVaultObject *self)
{
    kv_colvault *cv = self->cv;
    self->cv = NULL;
    /* off the fork list first (a fork while it closes must not take a
     * reference to it); a forked child's inherited connection is leaked */
    kvpy_fork_untrack(&self->fork);   /* keeps `forked` */
    if (!self->fork.forked)
        kvpy_close_released(cv, colvault_shut);
    kvpy_route_free(self->route);
    free(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define CV_CHECK(self)                                                     \
    do {                                                                   \
        if (!(self)->cv) {                                                 \
            PyErr_SetString(PyExc_RuntimeError, "_ColumnVault is closed"); \
            return NULL;                                                   \
        }                                                                  \
    } while (0)

/* ---- writes through the writer serving the file (kvshm/ops.h, COLUMN) --- */

/* Writes one call may try: the own connection, the writer, the own
 * connection again when the writer went away meanwhile. */
#define COL_ROUTE_ATTEMPTS 3

/* Start the operation `op` of the vault in its route's buffer: the open
 * parameters are the vault's chunk bounds (the writer's handle matches). */
static void cv_op_begin(ColVaultObject *v, kvshm_op_enc *e, unsigned op)
{
    v->route->op.len = 0;
    kvshm_op_begin(e, &v->route->op, KVSHM_OPC_COLUMN, op, "col_meta");
    kvshm_op_add_i64(e, v->min_chunk);
    kvshm_op_add_i64(e, v->max_chunk);
    kvshm_op_args(e);
}

/* After a local write failed with `st`: 1 when the guard refused its commit
 * because a writer serves the file (the write goes there next), else 0
 * with the engine's message in msg. */
static int cv_refused(ColVaultObject *v, char *msg, size_t mlen)
{
    kvpy_route *r = v->route;
    if (!r || !r->guard.refused) {
        snprintf(msg, mlen, "%s", kv_colvault_errmsg(v->cv));
        return 0;
    }
    r->guard.refused = 0;
    r->via_writer = 1;
    return 1;
}

/* A vault write (create, delete column): run(v, ctx) on the own connection,
 * or encode(v, ctx, e) to the writer serving the file, whose one-byte result
 * (delete) goes to *flag. Vault lock held, GIL released. */
typedef kv_status (*cv_run_fn)(ColVaultObject *v, void *ctx);
typedef void (*cv_enc_fn)(ColVaultObject *v, void *ctx, kvshm_op_enc *e);

static kv_status cv_write(ColVaultObject *v, cv_run_fn run, cv_enc_fn encode, void *ctx,
                          int *flag, char *msg, size_t mlen)
{
    kvpy_route *r = v->route;
    kv_status st = KV_OK;
    for (int attempt = 0; attempt < COL_ROUTE_ATTEMPTS; attempt++) {
        if (r && r->via_writer) {
            kvshm_op_enc e;
            const uint8_t *res;
            size_t rlen;
            encode(v, ctx, &e);
            if ((st = kvshm_op_end(&e)) != KV_OK) {
                snprintf(msg, mlen, "ColumnVault: operation too large to send to the writer");
                return st;
            }
            if (!kvpy_route_send(r, 8, &st, &res, &rlen, msg, mlen))
                continue;
            if (st == KV_OK && flag)
                *flag = rlen == 1 && res[0];
            return st;
        }
        if ((st = run(v, ctx)) == KV_OK || !cv_refused(v, msg, mlen))
            return st;
    }
    r->guard.bypass = 1;   /* the writer came and went under every attempt */
    st = run(v, ctx);
    r->guard.bypass = 0;
    if (st != KV_OK)
        snprintf(msg, mlen, "%s", kv_colvault_errmsg(v->cv));
    return st;
}

typedef struct {
    const char *name, *dtype;
    int64_t elem_size;      /* 0: variable-size pair */
    int deleted;
} cv_args;

static kv_status run_create(ColVaultObject *v, void *c)
{
    cv_args *a = c;
    return a->elem_size > 0 ? kv_col_create(v->cv, a->name, a->dtype, a->elem_size, NULL)
                            : kv_col_create_var(v->cv, a->name, a->dtype, NULL, NULL);
}

static void enc_create(ColVaultObject *v, void *c, kvshm_op_enc *e)
{
    cv_args *a = c;
    cv_op_begin(v, e, KVSHM_OP_COL_CREATE);
    kvshm_op_add(e, a->name, strlen(a->name));
    kvshm_op_add(e, a->dtype, strlen(a->dtype));
    kvshm_op_add_i64(e, a->elem_size);
}

static kv_status run_drop(ColVaultObject *v, void *c)
{
    cv_args *a = c;
    return kv_col_delete(v->cv, a->name, &a->deleted);
}

static void enc_drop(ColVaultObject *v, void *c, kvshm_op_enc *e)
{
    cv_args *a = c;
    cv_op_begin(v, e, KVSHM_OP_COL_DROP);
    kvshm_op_add(e, a->name, strlen(a->name));
}

static PyObject *ColVault_create_column(ColVaultObject *self, PyObject *args)
{
    const char *name, *dtype;
    kv_packer pk;
    kv_status st;
    CV_CHECK(self);
    if (!PyArg_ParseTuple(args, "ss", &name, &dtype))
        return NULL;
    if (kvpy_packer_parse(dtype, &pk) < 0 || cv_enter(self) < 0)
        return NULL;
    cv_args a = {.name = name, .dtype = dtype,
                 .elem_size = pk.pk_elem_size > 0 ? (int64_t)pk.pk_elem_size : 0};
    char msg[1024] = "";
    Py_BEGIN_ALLOW_THREADS
    st = cv_write(self, run_create, enc_create, &a, NULL, msg, sizeof msg);
    Py_END_ALLOW_THREADS
    if (st != KV_OK)
        /* duplicate names and alignment failures are raw RuntimeError (docs/api.md §2.5) */
        PyErr_Format(PyExc_RuntimeError, "%s", msg[0] ? msg : kv_strerror(st));
    cv_leave(self);
    return st != KV_OK ? NULL : Py_NewRef(Py_None);
}

static PyObject *ColHandle_make(ColVaultObject *vault, const char *name, kv_col *col,
                                const char *dtype, int is_var, int64_t col_id, int64_t idx_id,
                                int64_t max_chunk)
{
    ColHandleObject *h = PyObject_New(ColHandleObject, &ColHandleType);
    if (!h) {
        kv_col_close(col);
        return NULL;
    }
    h->col = col;
    Py_INCREF(vault);
    h->vault = vault;
    size_t nlen = strlen(name);
    if ((h->pname = malloc(nlen + sizeof "_data")))
        snprintf(h->pname, nlen + sizeof "_data", "%s%s", name, is_var ? "_data" : "");
    h->name = PyUnicode_FromString(name);
    h->dtype = PyUnicode_FromString(dtype);
    h->is_var = is_var;
    h->col_id = col_id;
    h->idx_col_id = idx_id;
    h->max_chunk = max_chunk;
    h->gen = vault->gen;
    h->cache_cap = h->cache_threshold = 0;
    if (!h->pname) {
        PyErr_NoMemory();
        Py_DECREF(h);
        return NULL;
    }
    if (!h->name || !h->dtype || kvpy_packer_parse(dtype, &h->pk) < 0) {
        Py_DECREF(h);
        return NULL;
    }
    return (PyObject *)h;
}

/* open_column(name) -> handle; KeyError(name) when no such column. */
static PyObject *ColVault_open_column(ColVaultObject *self, PyObject *args)
{
    const char *name;
    int raw = 0;
    kv_col_info di, ii, fi;
    kv_status st, st2 = KV_NOTFOUND;
    kv_col *col = NULL;
    char nd[1100], ni[1100];
    CV_CHECK(self);
    if (!PyArg_ParseTuple(args, "s|p", &name, &raw))
        return NULL;
    if (strlen(name) > 1000) {
        PyErr_SetString(PyExc_ValueError, "column name too long");
        return NULL;
    }
    snprintf(nd, sizeof nd, "%s_data", name);
    snprintf(ni, sizeof ni, "%s_idx", name);
    if (cv_enter(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_col_info_get(self->cv, nd, &di);
    if (st == KV_OK)
        st = kv_col_info_get(self->cv, ni, &ii);
    if (st == KV_OK)
        st2 = kv_col_open_var(self->cv, di.ci_col_id, ii.ci_col_id, &col);
    else if (st == KV_NOTFOUND) {
        st = kv_col_info_get(self->cv, name, &fi);
        if (st == KV_OK)
            st2 = kv_col_open_fixed(self->cv, fi.ci_col_id, &col);
    }
    Py_END_ALLOW_THREADS
    if (st == KV_NOTFOUND)
        PyErr_SetObject(PyExc_KeyError, PyTuple_GetItem(args, 0));
    else if (st != KV_OK || st2 != KV_OK)
        kvpy_col_raise(self->cv, st != KV_OK ? st : st2, "open column");
    cv_leave(self);
    if (st != KV_OK || st2 != KV_OK)
        return NULL;
    if (kv_col_is_var(col)) {
        PyObject *h = ColHandle_make(self, name, col, di.ci_dtype, 1, di.ci_col_id, ii.ci_col_id,
                                     di.ci_max_chunk);
        if (h && raw) /* raw-bytes mode (use_rust_packer=False): store values as given */
            kvpy_packer_parse("bytes", &((ColHandleObject *)h)->pk);
        return h;
    }
    return ColHandle_make(self, name, col, fi.ci_dtype, 0, fi.ci_col_id, 0, fi.ci_max_chunk);
}

static int kvpy_list_cb(void *ctx, const char *name, const char *dtype, int64_t length)
{
    PyObject *t = Py_BuildValue("(ssL)", name, dtype, (long long)length);
    if (!t)
        return 1;
    int rc = PyList_Append(ctx, t);
    Py_DECREF(t);
    return rc != 0;
}

static PyObject *ColVault_list_columns(ColVaultObject *self, PyObject *unused)
{
    CV_CHECK(self);
    PyObject *lst = PyList_New(0);
    if (!lst)
        return NULL;
    if (cv_enter(self) < 0) {
        Py_DECREF(lst);
        return NULL;
    }
    kv_status st = kv_col_list(self->cv, kvpy_list_cb, lst); /* callback needs the GIL: keep it */
    if (st != KV_OK && !PyErr_Occurred())
        kvpy_col_raise(self->cv, st, "list columns");
    cv_leave(self);
    if (st != KV_OK)
        Py_CLEAR(lst);
    return lst;
}

static PyObject *ColVault_count_columns(ColVaultObject *self, PyObject *unused)
{
    int64_t n = 0;
    kv_status st;
    CV_CHECK(self);
    if (cv_enter(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_col_count(self->cv, &n);
    Py_END_ALLOW_THREADS
    if (st != KV_OK)
        kvpy_col_raise(self->cv, st, "count columns");
    cv_leave(self);
    return st != KV_OK ? NULL : PyLong_FromLongLong(n);
}

static PyObject *ColVault_delete_column(ColVaultObject *self, PyObject *args)
{
    const char *name;
    kv_status st;
    CV_CHECK(self);
    if (!PyArg_ParseTuple(args, "s", &name) || cv_enter(self) < 0)
        return NULL;
    cv_args a = {.name = name};
    char msg[1024] = "";
    Py_BEGIN_ALLOW_THREADS
    st = cv_write(self, run_drop, enc_drop, &a, &a.deleted, msg, sizeof msg);
    Py_END_ALLOW_THREADS
    if (st != KV_OK)
        kvpy_col_raise_msg(msg, st, "delete column");
    cv_leave(self);
    return st != KV_OK ? NULL : PyBool_FromLong(a.deleted);
}

static PyObject *ColVault_checkpoint(ColVaultObject *self, PyObject *unused)
{
    CV_CHECK(self);
    if (cv_enter(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    kv_colvault_checkpoint(self->cv);
    Py_END_ALLOW_THREADS
    cv_leave(self);
    Py_RETURN_NONE;
}

static PyObject *ColVault_set_cache_locked(ColVaultObject *self, PyObject *flag)
{
    CV_CHECK(self);
    int v = PyObject_IsTrue(flag);
    if (v < 0 || cv_enter(self) < 0)
        return NULL;
    kv_colvault_cache_lock(self->cv, v);
    cv_leave(self);
    Py_RETURN_NONE;
}

static PyObject *ColVault_cache_locked(ColVaultObject *self, PyObject *unused)
{
    CV_CHECK(self);
    if (cv_enter(self) < 0)
        return NULL;
    int locked = kv_colvault_cache_locked(self->cv);
    cv_leave(self);
    return PyBool_FromLong(locked);
}

static PyMethodDef ColVault_methods[] = {
    {"create_column", (PyCFunction)ColVault_create_column, METH_VARARGS,
     "create_column(name, dtype) -> None. One col_meta row for a fixed dtype, the _data/_idx pair"
     " for a variable one. ValueError('Invalid dtype: ...'); RuntimeError for a duplicate name or"
     " chunk sizes that cannot be aligned."},
    {"open_column", (PyCFunction)ColVault_open_column, METH_VARARGS,
     "open_column(name, raw=False) -> _ColumnHandle (raw: a variable-size column packs values as"
     " plain bytes whatever its dtype). The variable-size pair <name>_data/<name>_idx wins over a"
     " fixed column <name>. KeyError(name) when neither exists."},
    {"list_columns", (PyCFunction)ColVault_list_columns, METH_NOARGS,
     "list_columns() -> list[(name, dtype, length)] of the physical col_meta rows by col_id."},
    {"count_columns", (PyCFunction)ColVault_count_columns, METH_NOARGS, "Number of col_meta rows."},
    {"delete_column", (PyCFunction)ColVault_delete_column, METH_VARARGS,
     "delete_column(name) -> bool. Deletes the row and its chunks (a logical var-size name deletes"
     " both rows). Handles on it must not be used afterwards."},
    {"checkpoint", (PyCFunction)ColVault_checkpoint, METH_NOARGS, "Passive WAL checkpoint; errors ignored."},
    {"set_cache_locked", (PyCFunction)ColVault_set_cache_locked, METH_O, "Set the lock_cache flag."},
    {"cache_locked", (PyCFunction)ColVault_cache_locked, METH_NOARGS, "The lock_cache flag."},
    {NULL},
};

static PyTypeObject ColVaultType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kohakuvault._kvault._ColumnVault",
    .tp_basicsize = sizeof(ColVaultObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "_ColumnVault(path, min_chunk_bytes=131072, max_chunk_bytes=16777216)\n\nNative column"
              " vault: its own SQLite connection (WAL, synchronous=NORMAL, busy timeout 5000 ms) and"
              " the col_meta/col_chunks tables. Thread-safe (one internal mutex; the GIL is released"
              " during SQLite work).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ColVault_init,
    .tp_dealloc = (destructor)ColVault_dealloc,
    .tp_methods = ColVault_methods,
};

/* ------------------------------------------------------------------------ */
/* _ColumnHandle                                                            */
/* ------------------------------------------------------------------------ */

static void col_close(void *col) { kv_col_close(col); /* flushes the cache */ }

/* The handle's column is not (yet) open on the vault's connection: a forked
 * child that has not re-homed the vault or this handle. */
static inline int h_stale(ColHandleObject *self)
{
    return self->vault->fork.forked || self->gen != self->vault->gen;
}

/* Open the handle's column again on the vault's re-homed connection (vault
 * lock held), its cache switch kept and empty; the old one is leaked. */
static int h_rehome(ColHandleObject *self)
{
    kv_colvault *cv = self->vault->cv;
    kv_col *col = NULL;
    kv_status st;
    Py_BEGIN_ALLOW_THREADS
    st = self->is_var ? kv_col_open_var(cv, self->col_id, self->idx_col_id, &col)
                      : kv_col_open_fixed(cv, self->col_id, &col);
    if (st == KV_OK && self->cache_cap)
        st = kv_col_cache_enable(col, self->cache_cap, self->cache_threshold);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        kvpy_col_raise(cv, st, "open column");
        kv_col_close(col);   /* NULL or new with an empty cache */
        return -1;
    }
    self->col = col;
    self->gen = self->vault->gen;
    return 0;
}

/* Take the vault's lock for a call through the handle, re-homing vault and
 * handle in a forked child. 0, or -1 with the exception (lock free). */
static int h_enter(ColHandleObject *self)
{
    if (cv_enter(self->vault) < 0)
        return -1;
    if (self->gen != self->vault->gen && h_rehome(self) < 0) {
        cv_leave(self->vault);
        return -1;
    }
    return 0;
}

static void col_flush_routed(ColHandleObject *self);

static void ColHandle_dealloc(ColHandleObject *self)
{
    kv_col *col = self->col;
    if (col && self->vault) {
        /* the flush runs under the vault's lock (a fork waits for it) unless
         * this thread holds it (dropped from inside a vault call); a forked
         * child's inherited column is the parent's: leaked */
        kvpy_fork_node *n = &self->vault->fork;
        int mine = n->busy && n->owner == PyThread_get_thread_ident();
        if (!mine)
            kvpy_fork_lock(n);
        if (!h_stale(self) && self->vault->route && self->cache_cap)
            col_flush_routed(self);   /* to the writer when one serves the file */
        self->col = NULL;
        if (!h_stale(self))
            kvpy_close_released(col, col_close);
        if (!mine)
            kvpy_fork_unlock(n);
    }
    Py_XDECREF(self->vault);
    Py_XDECREF(self->name);
    Py_XDECREF(self->dtype);
    free(self->pname);
    PyObject_Free(self);
}

/* Raise for a failed call on a column handle: as kvpy_col_raise, and a
 * corrupt file (KV_CORRUPT) names the column, since the engine's text knows
 * only its col_meta row. */
static PyObject *col_handle_raise_msg(ColHandleObject *self, const char *msg, kv_status st,
                                     const char *op)
{
    if (st != KV_CORRUPT)
        return kvpy_col_raise_msg(msg, st, op);
    PyErr_Format(PyExc_RuntimeError, "column %R: %s (the file is corrupt)", self->name,
                 msg && msg[0] ? msg : kv_strerror(st));
    return NULL;
}
#define H_ERR(self, st, op) \
    col_handle_raise_msg((self), kv_colvault_errmsg((self)->vault->cv), (st), (op))

/* Arguments and results of one kv_col call made by col_call (read and
 * written with the GIL released; fields used per op as noted). */
typedef struct {
    int64_t index;       /* insert, delete_at: position; write: first element */
    const void *data;    /* append, write, insert: packed elements */
    const size_t *lens;  /* append, write: element lengths (NULL for fixed size) */
    size_t n;            /* append, write: elements; cache_enable: capacity in bytes */
    size_t threshold;    /* cache_enable: flush threshold in bytes */
    size_t flushed;      /* out: cache_flush */
} col_args;

typedef kv_status (*col_op)(kv_col *col, col_args *a);

static kv_status op_append(kv_col *c, col_args *a) { return kv_col_append(c, a->data, a->lens, a->n); }
static kv_status op_write(kv_col *c, col_args *a) { return kv_col_write(c, a->index, a->data, a->lens, a->n); }
static kv_status op_insert(kv_col *c, col_args *a) { return kv_col_insert(c, a->index, a->data); }
static kv_status op_delete_at(kv_col *c, col_args *a) { return kv_col_delete_at(c, a->index); }
static kv_status op_clear(kv_col *c, col_args *a) { return kv_col_clear(c); }
static kv_status op_cache_enable(kv_col *c, col_args *a) { return kv_col_cache_enable(c, a->n, a->threshold); }
static kv_status op_cache_disable(kv_col *c, col_args *a) { return kv_col_cache_disable(c); }
static kv_status op_cache_flush(kv_col *c, col_args *a) { return kv_col_cache_flush(c, &a->flushed); }

/* The operation through the writer of a col_call op; 0 for the cache's
 * own calls (they only flush: the cache is sent first, then they run here
 * with nothing to write). */
static inline unsigned col_remote_op(col_op op)
{
    return op == op_append     ? KVSHM_OP_APPEND
           : op == op_write    ? KVSHM_OP_WRITE
           : op == op_insert   ? KVSHM_OP_INSERT
           : op == op_delete_at ? KVSHM_OP_DELETE
           : op == op_clear    ? KVSHM_OP_CLEAR
                               : 0;
}

/* Bytes of the a->n packed elements of `a`. */
static size_t col_bytes(ColHandleObject *self, const col_args *a)
{
    size_t bytes = 0;
    if (!self->is_var)
        return a->n * (size_t)kv_col_elem_size(self->col);
    for (size_t i = 0; i < a->n; i++)
        bytes += a->lens[i];
    return bytes;
}

/* Encode operation `rop` of the handle's column with the elements of `a`
 * (kvshm/ops.h, COLUMN) into the route's buffer. */
static kv_status col_encode(ColHandleObject *self, unsigned rop, const col_args *a)
{
    _Static_assert(sizeof(size_t) == 8, "element lengths travel as i64");
    kvshm_op_enc e;
    cv_op_begin(self->vault, &e, rop);
    kvshm_op_add_i64(&e, self->col_id);
    kvshm_op_add_i64(&e, self->is_var ? self->idx_col_id : 0);
    if (rop == KVSHM_OP_WRITE || rop == KVSHM_OP_INSERT || rop == KVSHM_OP_DELETE)
        kvshm_op_add_i64(&e, a->index);
    if (rop == KVSHM_OP_INSERT)
        kvshm_op_add(&e, a->data, self->pk.pk_elem_size);
    if (rop == KVSHM_OP_APPEND || rop == KVSHM_OP_WRITE) {
        kvshm_op_add(&e, a->data ? a->data : "", col_bytes(self, a));
        if (self->is_var)
            kvshm_op_add(&e, a->lens ? (const void *)a->lens : "", a->n * 8);
    }
    kvshm_op_add(&e, self->pname, strlen(self->pname));
    return kvshm_op_end(&e);
}

/* Send the encoded operation; as kvpy_route_send, with an encoding failure
 * reported as reached (*st set). */
static int col_send(ColHandleObject *self, kv_status est, kv_status *st, char *msg, size_t mlen)
{
    const uint8_t *res;
    size_t rlen;
    if ((*st = est) != KV_OK) {
        snprintf(msg, mlen, "ColumnVault: operation too large to send to the writer");
        return 1;
    }
    return kvpy_route_send(self->vault->route, 8, st, &res, &rlen, msg, mlen);
}

/* Send the handle's cached appends to the writer as one APPEND, then empty
 * the cache; *bytes gets their size. As col_send (1 with *st KV_OK when
 * nothing waits). */
static int col_drain(ColHandleObject *self, size_t *bytes, kv_status *st, char *msg, size_t mlen)
{
    kv_buf b;
    col_args a = {0};
    size_t *lens = NULL;
    *bytes = 0;
    *st = KV_OK;
    if (!kv_col_cache_pending(self->col))
        return 1;
    kv_buf_init(&b);
    if ((*st = kv_col_cache_copy(self->col, &b, &lens, &a.n)) != KV_OK) {
        snprintf(msg, mlen, "ColumnVault: out of memory");
        return 1;
    }
    a.data = b.data;
    a.lens = lens;
    int reached = col_send(self, col_encode(self, KVSHM_OP_APPEND, &a), st, msg, mlen);
    if (reached && *st == KV_OK) {
        kv_col_cache_discard(self->col);
        *bytes = b.len;
    }
    kv_buf_free(&b);
    free(lens);
    return reached;
}

/* op(col, a), on the own connection or through the writer serving the file
 * (vault lock held, GIL released); on failure the message is in msg.
 * Appends into an enabled cache stay here (no commit) until a flush, which
 * the writer applies when it serves the file; every other write sends the
 * cache first, as the engine flushes before every other operation. */
static kv_status col_write(ColHandleObject *self, col_op op, col_args *a, char *msg, size_t mlen)
{
    kvpy_route *r = self->vault->route;
    unsigned rop = col_remote_op(op);
    /* an append larger than the whole cache is written through (col_cache.c) */
    int cached = op == op_append && self->cache_cap && col_bytes(self, a) <= self->cache_cap;
    int drain = !cached;   /* send the cache first */
    kv_status st = KV_OK;
    for (int attempt = 0; attempt < COL_ROUTE_ATTEMPTS; attempt++) {
        size_t drained = 0;
        if (r && r->via_writer && drain) {
            if (!col_drain(self, &drained, &st, msg, mlen))
                continue;
            if (st != KV_OK)
                return st;
            if (rop && !cached) {
                if (!col_send(self, col_encode(self, rop, a), &st, msg, mlen))
                    continue;
                return st;
            }
        }
        size_t before = cached ? kv_col_cache_pending(self->col) : 0;
        st = op(self->col, a);
        a->flushed += drained;
        if (st == KV_OK || !cv_refused(self->vault, msg, mlen))
            return st;
        /* a flush of the cache was refused: it goes to the writer, with the
         * elements of a cached append unless they are in it already */
        drain = 1;
        if (cached && kv_col_cache_pending(self->col) == before + a->n)
            op = op_cache_flush;
        if (op == op_cache_flush)
            rop = cached = 0;
    }
    r->guard.bypass = 1;   /* the writer came and went under every attempt */
    st = op(self->col, a);
    r->guard.bypass = 0;
    if (st != KV_OK)
        snprintf(msg, mlen, "%s", kv_colvault_errmsg(self->vault->cv));
    return st;
}

/* Flush the cache through col_write (GIL held, vault lock held; errors
 * dropped, as a closing column's flush). */
static void col_flush_routed(ColHandleObject *self)
{
    col_args a = {0};
    char msg[1024];
    Py_BEGIN_ALLOW_THREADS
    col_write(self, op_cache_flush, &a, msg, sizeof msg);
    Py_END_ALLOW_THREADS
}

/* Runs op(col, a) with the GIL released (col_write); a failure raises for
 * `what` (kvpy_col_raise). 0, or -1 with the exception. Inline, so each
 * call site calls its op directly. */
static inline int col_call(ColHandleObject *self, col_op op, col_args *a, const char *what)
{
    kv_status st;
    char msg[1024] = "";
    if (h_enter(self) < 0)
        return -1;
    Py_BEGIN_ALLOW_THREADS
    st = col_write(self, op, a, msg, sizeof msg);
    Py_END_ALLOW_THREADS
    if (st != KV_OK)
        col_handle_raise_msg(self, msg, st, what);
    cv_leave(self->vault);
    return st != KV_OK ? -1 : 0;
}

/* col_call answering None. */
static inline PyObject *col_call_none(ColHandleObject *self, col_op op, col_args *a, const char *what)
{
    return col_call(self, op, a, what) < 0 ? NULL : Py_NewRef(Py_None);
}

/* Length: from the read cache with the GIL held when it answers at once
 * (no SQLite, no waiting), else through SQLite with the GIL released. */
static int ColHandle_length_of(ColHandleObject *self, int64_t *n)
{
    int hit = 0;
    kv_status st;
    if (!h_stale(self))
        kv_col_len_try(self->col, n, &hit);
    if (hit)
        return 0;
    if (h_enter(self) < 0)
        return -1;
    Py_BEGIN_ALLOW_THREADS
    st = kv_col_len(self->col, n);
    Py_END_ALLOW_THREADS
    if (st != KV_OK)
        H_ERR(self, st, "len");
    cv_leave(self->vault);
    return st != KV_OK ? -1 : 0;
}

static PyObject *ColHandle_len(ColHandleObject *self, PyObject *unused)
{
    int64_t n = 0;
    if (ColHandle_length_of(self, &n) < 0)
        return NULL;
    return PyLong_FromLongLong(n);
}

/* Elements [a, a+cnt) of a fixed column into buf: the read cache with the
 * GIL held when it answers at once, else SQLite with the GIL released. */
static int ColHandle_read_fixed_into(ColHandleObject *self, int64_t a, int64_t cnt, void *buf)
{
    int hit = 0;
    kv_status st = KV_OK;
    if (!h_stale(self))
        st = kv_col_read_fixed_try(self->col, a, cnt, buf, &hit);
    if (hit || st != KV_OK) {
        if (st != KV_OK)
            H_ERR(self, st, "read");
        return st != KV_OK ? -1 : 0;
    }
    if (h_enter(self) < 0)
        return -1;
    Py_BEGIN_ALLOW_THREADS
    st = kv_col_read_fixed(self->col, a, cnt, buf);
    Py_END_ALLOW_THREADS
    if (st != KV_OK)
        H_ERR(self, st, "read");
    cv_leave(self->vault);
    return st != KV_OK ? -1 : 0;
}

/* Elements [a, a+cnt) of a variable-size column: their bytes back to back in
 * *b (initialised here) and cnt + 1 offsets into it in *offs (PyMem_Malloc'd;
 * the caller frees both). SQLite is read with the GIL released. 0, or -1
 * with the exception set and nothing left to free. */
static int ColHandle_read_var_into(ColHandleObject *self, int64_t a, int64_t cnt, kv_buf *b,
                                   uint64_t **offs)
{
    kv_status st;
    kv_buf_init(b);
    *offs = PyMem_Malloc(sizeof **offs * (size_t)(cnt + 1));
    if (!*offs) {
        PyErr_NoMemory();
        return -1;
    }
    if (h_enter(self) < 0) {
        PyMem_Free(*offs);
        return -1;
    }
    Py_BEGIN_ALLOW_THREADS
    st = kv_col_read_var(self->col, a, cnt, b, *offs);
    Py_END_ALLOW_THREADS
    if (st != KV_OK)
        H_ERR(self, st, "read");
    cv_leave(self->vault);
    if (st != KV_OK) {
        PyMem_Free(*offs);
        kv_buf_free(b);
        return -1;
    }
    return 0;
}

/* Pack `values` into b (+lens for var). Fast paths for i64/f64. */
static int ColHandle_pack_values(ColHandleObject *self, PyObject *values, kv_buf *b, size_t **lens,
                                 size_t *n)
{
    kv_pk_kind k = self->pk.pk_kind;
    *lens = NULL;
    if ((k == KV_PK_I64 || k == KV_PK_F64) && PyList_Check(values)) {
        Py_ssize_t cnt = PyList_GET_SIZE(values);
        if (kv_buf_reserve(b, (size_t)cnt * 8) != KV_OK) {
            PyErr_NoMemory();
            return -1;
        }
        uint8_t *o = b->data + b->len;
        for (Py_ssize_t i = 0; i < cnt; i++) {
            PyObject *v = PyList_GET_ITEM(values, i);
            if (k == KV_PK_I64 && PyLong_CheckExact(v)) {
                long long x = PyLong_AsLongLong(v);
                if (x == -1 && PyErr_Occurred())
                    goto slow;
                memcpy(o + 8 * i, &x, 8);
            } else if (k == KV_PK_F64 && PyFloat_CheckExact(v)) {
                double d = PyFloat_AS_DOUBLE(v);
                memcpy(o + 8 * i, &d, 8);
            } else {
            slow:
                PyErr_Clear();
                kv_buf tmp;
                kv_buf_init(&tmp);
                if (kvpy_pack_one(&self->pk, v, &tmp) < 0) {
                    kv_buf_free(&tmp);
                    return -1;
                }
                memcpy(o + 8 * i, tmp.data, 8);
                kv_buf_free(&tmp);
            }
        }
        b->len += (size_t)cnt * 8;
        *n = (size_t)cnt;
        return 0;
    }
    return kvpy_pack_many(&self->pk, values, b, self->is_var ? lens : NULL, n);
}

/*
 * Packs `v` into the data of op's arguments -- one element, or with `many`
 * every element of a list (ColHandle_pack_values; a->n gets the count) --
 * and runs op through col_call: None, or NULL with the exception (a value
 * that cannot be packed leaves the column unchanged). Inline, so `many` and
 * `op` fold away at each call site.
 */
static inline PyObject *col_pack_call(ColHandleObject *self, col_op op, col_args *a, PyObject *v,
                                      int many, const char *what)
{
    kv_buf b;
    size_t *lens = NULL, len = 0;
    PyObject *r = NULL;
    kv_buf_init(&b);
    int rc = many ? ColHandle_pack_values(self, v, &b, &lens, &a->n) : kvpy_pack_one(&self->pk, v, &b);
    if (rc == 0) {
        len = b.len;
        a->data = b.data;
        a->lens = many ? lens : &len;
        if (!many)
            a->n = 1;
        r = col_call_none(self, op, a, what);
    }
    kv_buf_free(&b);
    PyMem_Free(lens);
    return r;
}

/* Numeric buffer fast path: returns 1 and fills view when `values` is a
 * C-contiguous buffer of exactly the column's numeric type (little-endian
 * host), 0 when not applicable, -1 on error. */
static int ColHandle_numeric_view(ColHandleObject *self, PyObject *values, Py_buffer *view,
                                  PyObject **holder)
{
    kv_pk_kind k = self->pk.pk_kind;
    *holder = NULL;
    if (k != KV_PK_I64 && k != KV_PK_F64)
        return 0;
    if (PyList_Check(values) || PyTuple_Check(values) || PyBytes_Check(values) ||
        PyByteArray_Check(values) || PyUnicode_Check(values))
        return 0;
    PyObject *src = values;
    if (!PyObject_CheckBuffer(values)) {
        if (!PyObject_HasAttrString(values, "__array__"))
            return 0;
    }
    /* numpy arrays of another dtype are cast once (astype), like DataPacker vectors */
    if (PyObject_HasAttrString(values, "__array__") || !PyObject_CheckBuffer(values)) {
        PyObject *np = PyImport_ImportModule("numpy");
        if (!np)
            return -1;
        src = PyObject_CallMethod(np, "ascontiguousarray", "Os", values, k == KV_PK_I64 ? "int64" : "float64");
        Py_DECREF(np);
        if (!src)
            return -1;
        *holder = src;
    }
    if (PyObject_GetBuffer(src, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        Py_CLEAR(*holder);
        return -1;
    }
    const char *f = view->format ? view->format : "B";
    if (*f == '<' || *f == '=' || *f == '@')
        f++;
    int ok = view->itemsize == 8 &&
             (k == KV_PK_I64 ? (strcmp(f, "q") == 0 || strcmp(f, "l") == 0) : strcmp(f, "d") == 0);
    if (!ok) {
        PyBuffer_Release(view);
        Py_CLEAR(*holder);
        return 0;
    }
    return 1;
}

static PyObject *ColHandle_extend(ColHandleObject *self, PyObject *values)
{
    Py_buffer view;
    PyObject *holder = NULL, *r;
    col_args a = {0};
    int nv = ColHandle_numeric_view(self, values, &view, &holder);
    if (nv < 0)
        return NULL;
    if (nv == 1) {
        a.data = view.buf;
        a.n = (size_t)view.len / 8;
        r = col_call_none(self, op_append, &a, "extend");
        PyBuffer_Release(&view);
        Py_XDECREF(holder);
    } else {
        r = col_pack_call(self, op_append, &a, values, 1, "extend");
    }
    if (!r)
        return NULL;
    Py_DECREF(r);
    return PyLong_FromSize_t(a.n);
}

static PyObject *ColHandle_append(ColHandleObject *self, PyObject *value)
{
    col_args a = {0};
    return col_pack_call(self, op_append, &a, value, 0, "append");
}

/* append_packed(data: bytes-like) for var columns / raw mode: one element. */
static PyObject *ColHandle_append_raw(ColHandleObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    size_t len = (size_t)view.len;
    if (!self->is_var && len != (size_t)self->pk.pk_elem_size) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_ValueError, "packed element must be %zu bytes", self->pk.pk_elem_size);
        return NULL;
    }
    col_args a = {.data = view.buf, .lens = &len, .n = 1};
    PyObject *r = col_call_none(self, op_append, &a, "append");
    PyBuffer_Release(&view);
    return r;
}

/* The (start, stop) arguments of read and read_raw: 0 <= start <= stop,
 * else ValueError("invalid range"). 0, or -1 with the exception. */
static int col_range_args(PyObject *args, long long *a, long long *z)
{
    if (!PyArg_ParseTuple(args, "LL", a, z))
        return -1;
    if (*a < 0 || *z < *a) {
        PyErr_SetString(PyExc_ValueError, "invalid range");
        return -1;
    }
    return 0;
}

/* read_raw(start, stop) -> bytes (fixed) or (bytes, offsets list) (var). */
static PyObject *ColHandle_read_raw(ColHandleObject *self, PyObject *args)
{
    long long a, z;
    if (col_range_args(args, &a, &z) < 0)
        return NULL;
    int64_t cnt = z - a;
    if (!self->is_var) {
        PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(cnt * (int64_t)self->pk.pk_elem_size));
        if (!out)
            return NULL;
        if (ColHandle_read_fixed_into(self, a, cnt, PyBytes_AS_STRING(out)) < 0) {
            Py_DECREF(out);
            return NULL;
        }
        return out;
    }
    kv_buf b;
    uint64_t *offs;
    if (ColHandle_read_var_into(self, a, cnt, &b, &offs) < 0)
        return NULL;
    PyObject *data = PyBytes_FromStringAndSize((const char *)b.data, (Py_ssize_t)b.len);
    PyObject *ol = PyList_New(cnt + 1);
    for (int64_t i = 0; ol && i <= cnt; i++)
        PyList_SET_ITEM(ol, i, PyLong_FromUnsignedLongLong(offs[i]));
    PyMem_Free(offs);
    kv_buf_free(&b);
    if (!data || !ol) {
        Py_XDECREF(data);
        Py_XDECREF(ol);
        return NULL;
    }
    PyObject *r = PyTuple_Pack(2, data, ol);
    Py_DECREF(data);
    Py_DECREF(ol);
    return r;
}

/* Unpack cnt fixed elements of buf into a new list. */
static PyObject *ColHandle_decode_fixed(ColHandleObject *self, const uint8_t *buf, int64_t cnt)
{
    size_t es = self->pk.pk_elem_size;
    PyObject *res = PyList_New((Py_ssize_t)cnt);
    if (!res)
        return NULL;
    for (int64_t i = 0; i < cnt; i++) {
        PyObject *v;
        if (self->pk.pk_kind == KV_PK_I64) {
            int64_t x;
            memcpy(&x, buf + 8 * i, 8);
            v = PyLong_FromLongLong(x);
        } else if (self->pk.pk_kind == KV_PK_F64) {
            double d;
            memcpy(&d, buf + 8 * i, 8);
            v = PyFloat_FromDouble(d);
        } else
            v = kvpy_unpack_one(&self->pk, buf + (size_t)i * es, es);
        if (!v) {
            Py_DECREF(res);
            return NULL;
        }
        PyList_SET_ITEM(res, i, v);
    }
    return res;
}

/* Elements [a, a+cnt) (already in range) as a list of values. */
static PyObject *ColHandle_read_range(ColHandleObject *self, int64_t a, int64_t cnt)
{
    if (cnt == 0)
        return PyList_New(0);
    if (!self->is_var) {
        uint8_t stackbuf[4096];
        size_t nbytes = (size_t)cnt * self->pk.pk_elem_size;
        uint8_t *buf = nbytes <= sizeof stackbuf ? stackbuf : PyMem_Malloc(nbytes);
        if (!buf)
            return PyErr_NoMemory();
        PyObject *res = NULL;
        if (ColHandle_read_fixed_into(self, a, cnt, buf) == 0)
            res = ColHandle_decode_fixed(self, buf, cnt);
        if (buf != stackbuf)
            PyMem_Free(buf);
        return res;
    }
    PyObject *res = PyList_New((Py_ssize_t)cnt);
    if (!res)
        return NULL;
    kv_buf b;
    uint64_t *offs;
    if (ColHandle_read_var_into(self, a, cnt, &b, &offs) < 0) {
        Py_DECREF(res);
        return NULL;
    }
    for (int64_t i = 0; i < cnt; i++) {
        PyObject *v = kvpy_unpack_one(&self->pk, b.data + offs[i], (size_t)(offs[i + 1] - offs[i]));
        if (!v) {
            Py_CLEAR(res);
            break;
        }
        PyList_SET_ITEM(res, i, v);
    }
    PyMem_Free(offs);
    kv_buf_free(&b);
    return res;
}

/* numpy.frombuffer and the int64/float64 dtypes, imported on first use and
 * kept for the life of the process (module-level cache, GIL-protected). */
static PyObject *kvpy_np_frombuffer, *kvpy_np_i8, *kvpy_np_f8;

static int kvpy_np_ready(void)
{
    if (kvpy_np_frombuffer)
        return 0;
    PyObject *np = PyImport_ImportModule("numpy");
    if (!np)
        return -1;
    PyObject *fb = PyObject_GetAttrString(np, "frombuffer");
    PyObject *dt = PyObject_GetAttrString(np, "dtype");
    PyObject *i8 = dt ? PyObject_CallFunction(dt, "s", "<i8") : NULL;
    PyObject *f8 = dt ? PyObject_CallFunction(dt, "s", "<f8") : NULL;
    Py_XDECREF(dt);
    Py_DECREF(np);
    if (!fb || !i8 || !f8) {
        Py_XDECREF(fb);
        Py_XDECREF(i8);
        Py_XDECREF(f8);
        return -1;
    }
    kvpy_np_frombuffer = fb;
    kvpy_np_i8 = i8;
    kvpy_np_f8 = f8;
    return 0;
}

/* read_numpy(start=None, stop=None) -> 1-D int64/float64 ndarray of the
 * elements [start, stop) of an i64/f64 column, bounds normalised like
 * slice(start, stop).indices(len). The array is read-only and views one
 * bytes object filled by a single engine read. */
static PyObject *ColHandle_read_numpy(ColHandleObject *self, PyObject *args)
{
    PyObject *a_obj = Py_None, *z_obj = Py_None;
    int64_t n;
    if (!PyArg_ParseTuple(args, "|OO", &a_obj, &z_obj))
        return NULL;
    if (self->is_var || (self->pk.pk_kind != KV_PK_I64 && self->pk.pk_kind != KV_PK_F64)) {
        PyErr_SetString(PyExc_TypeError, "read_numpy needs an i64 or f64 column");
        return NULL;
    }
    PyObject *sl = PySlice_New(a_obj, z_obj, NULL);
    if (!sl)
        return NULL;
    Py_ssize_t a, z, step;
    int bad = PySlice_Unpack(sl, &a, &z, &step);
    Py_DECREF(sl);
    if (bad < 0 || ColHandle_length_of(self, &n) < 0 || kvpy_np_ready() < 0)
        return NULL;
    PySlice_AdjustIndices((Py_ssize_t)n, &a, &z, 1);
    Py_ssize_t cnt = z > a ? z - a : 0;
    PyObject *raw = PyBytes_FromStringAndSize(NULL, cnt * 8);
    if (!raw)
        return NULL;
    if (cnt && ColHandle_read_fixed_into(self, a, cnt, PyBytes_AS_STRING(raw)) < 0) {
        Py_DECREF(raw);
        return NULL;
    }
    PyObject *arr = PyObject_CallFunctionObjArgs(
        kvpy_np_frombuffer, raw, self->pk.pk_kind == KV_PK_I64 ? kvpy_np_i8 : kvpy_np_f8, NULL);
    Py_DECREF(raw);
    return arr;
}

/* read(start, stop) -> list of unpacked values. */
static PyObject *ColHandle_read(ColHandleObject *self, PyObject *args)
{
    long long a, z;
    if (col_range_args(args, &a, &z) < 0)
        return NULL;
    return ColHandle_read_range(self, a, z - a);
}

/* getitem(idx) -> value or list: the whole of Column/VarSizeColumn
 * __getitem__ (docs/api.md §6.5/§6.6) in one call: slice.indices semantics,
 * step != 1 -> ValueError, ints (bool, __index__ objects) with negative
 * indices, IndexError / TypeError with the docs/api.md messages. */
static PyObject *ColHandle_getitem(ColHandleObject *self, PyObject *idx)
{
    int64_t n;
    if (PySlice_Check(idx)) {
        Py_ssize_t a, z, step;
        if (PySlice_Unpack(idx, &a, &z, &step) < 0)
            return NULL;
        if (ColHandle_length_of(self, &n) < 0)
            return NULL;
        PySlice_AdjustIndices((Py_ssize_t)n, &a, &z, step);
        if (step != 1) {
            PyErr_SetString(PyExc_ValueError, self->is_var
                                                  ? "Step slicing not supported for variable-size columns"
                                                  : "Step slicing not supported");
            return NULL;
        }
        return ColHandle_read_range(self, a, z > a ? z - a : 0);
    }
    PyObject *iobj;
    if (PyLong_Check(idx)) {
        iobj = PyNumber_Long(idx); /* bool -> int for the message */
    } else if (PyIndex_Check(idx)) {
        iobj = PyNumber_Index(idx);
    } else {
        PyErr_SetString(PyExc_TypeError, "Column indices must be integers or slices");
        return NULL;
    }
    if (!iobj)
        return NULL;
    if (ColHandle_length_of(self, &n) < 0) {
        Py_DECREF(iobj);
        return NULL;
    }
    int ovf = 0;
    long long i = PyLong_AsLongLongAndOverflow(iobj, &ovf);
    if (i == -1 && PyErr_Occurred()) {
        Py_DECREF(iobj);
        return NULL;
    }
    long long j = i < 0 ? i + n : i;
    if (ovf || j < 0 || j >= n) {
        if (self->is_var)
            PyErr_Format(PyExc_IndexError, "Column index out of range: %S", iobj);
        else
            PyErr_Format(PyExc_IndexError, "Column index out of range: %S (length=%lld)", iobj,
                         (long long)n);
        Py_DECREF(iobj);
        return NULL;
    }
    Py_DECREF(iobj);
    PyObject *lst = ColHandle_read_range(self, j, 1);
    if (!lst)
        return NULL;
    PyObject *v = PyList_GET_ITEM(lst, 0);
    Py_INCREF(v);
    Py_DECREF(lst);
    return v;
}

/* write(start, values: list) -> None: overwrite len(values) elements. */
static PyObject *ColHandle_write(ColHandleObject *self, PyObject *args)
{
    long long start;
    PyObject *values;
    if (!PyArg_ParseTuple(args, "LO", &start, &values))
        return NULL;
    col_args a = {.index = start};
    return col_pack_call(self, op_write, &a, values, 1, "write");
}

static PyObject *ColHandle_insert(ColHandleObject *self, PyObject *args)
{
    long long i;
    PyObject *value;
    if (!PyArg_ParseTuple(args, "LO", &i, &value))
        return NULL;
    if (self->is_var) {
        PyErr_SetString(PyExc_NotImplementedError,
                        "Insert not supported for variable-size columns. Use append instead.");
        return NULL;
    }
    col_args a = {.index = i};
    return col_pack_call(self, op_insert, &a, value, 0, "insert");
}

static PyObject *ColHandle_delete(ColHandleObject *self, PyObject *arg)
{
    col_args a = {.index = PyLong_AsLongLong(arg)};
    if (a.index == -1 && PyErr_Occurred())
        return NULL;
    return col_call_none(self, op_delete_at, &a, "delete");
}

static PyObject *ColHandle_clear(ColHandleObject *self, PyObject *unused)
{
    col_args a = {0};
    return col_call_none(self, op_clear, &a, "clear");
}

static PyObject *ColHandle_enable_cache(ColHandleObject *self, PyObject *args)
{
    long long cap, thr; /* "L": 2**63 and beyond raise OverflowError */
    if (!PyArg_ParseTuple(args, "LL", &cap, &thr))
        return NULL;
    if (cap <= 0 || thr < 0) { /* -1 would wrap to an unbounded cache */
        PyErr_Format(PyExc_ValueError,
                     "cap_bytes must be > 0 and flush_threshold >= 0, got %lld and %lld", cap, thr);
        return NULL;
    }
    col_args a = {.n = (size_t)cap, .threshold = (size_t)thr};
    if (col_call(self, op_cache_enable, &a, "enable_cache") < 0)
        return NULL;
    self->cache_cap = a.n;   /* kept by a forked child (h_rehome) */
    self->cache_threshold = a.threshold;
    Py_RETURN_NONE;
}

static PyObject *ColHandle_disable_cache(ColHandleObject *self, PyObject *unused)
{
    col_args a = {0};
    self->cache_cap = 0;
    return col_call_none(self, op_cache_disable, &a, "disable_cache");
}

static PyObject *ColHandle_flush_cache(ColHandleObject *self, PyObject *unused)
{
    col_args a = {0};
    if (col_call(self, op_cache_flush, &a, "flush_cache") < 0)
        return NULL;
    return PyLong_FromSize_t(a.flushed);
}

static PyObject *ColHandle_cache_enabled(ColHandleObject *self, PyObject *unused)
{
    if (h_enter(self) < 0)
        return NULL;
    int on = kv_col_cache_enabled(self->col);
    cv_leave(self->vault);
    return PyBool_FromLong(on);
}

static PyObject *ColHandle_cache_idle(ColHandleObject *self, PyObject *unused)
{
    if (h_enter(self) < 0)
        return NULL;
    double idle = kv_col_cache_idle_s(self->col);
    cv_leave(self->vault);
    return PyFloat_FromDouble(idle);
}

static PyObject *ColHandle_info(ColHandleObject *self, void *c)
{
    return Py_BuildValue("{s:O,s:O,s:i,s:L,s:L,s:L,s:n}", "name", self->name, "dtype", self->dtype,
                         "is_var", self->is_var, "col_id", (long long)self->col_id, "idx_col_id",
                         (long long)self->idx_col_id, "max_chunk", (long long)self->max_chunk,
                         "elem_size", (Py_ssize_t)self->pk.pk_elem_size);
}

static PyMethodDef ColHandle_methods[] = {
    {"length", (PyCFunction)ColHandle_len, METH_NOARGS, "Stored length + cached appends."},
    {"append", (PyCFunction)ColHandle_append, METH_O, "Pack and append one value (cached if enabled)."},
    {"append_raw", (PyCFunction)ColHandle_append_raw, METH_O, "Append one already-packed element."},
    {"extend", (PyCFunction)ColHandle_extend, METH_O,
     "extend(values) -> int count. A list/tuple is packed in C; for i64/f64 a numpy array or any"
     " C-contiguous buffer of int64/float64 is appended straight from its memory (other numpy dtypes"
     " are cast once). One transaction."},
    {"read", (PyCFunction)ColHandle_read, METH_VARARGS, "read(start, stop) -> list of values."},
    {"read_numpy", (PyCFunction)ColHandle_read_numpy, METH_VARARGS,
     "read_numpy(start=None, stop=None) -> int64/float64 ndarray (read-only) of an i64/f64"
     " column's elements [start, stop) (slice.indices bounds)."},
    {"getitem", (PyCFunction)ColHandle_getitem, METH_O,
     "getitem(idx) -> value (int index, negative from the end) or list (slice, step 1). IndexError"
     " out of range, ValueError for a step, TypeError for another index type (docs/api.md messages)."
     " Served from the vault's read cache with the GIL held when it can answer at once."},
    {"read_raw", (PyCFunction)ColHandle_read_raw, METH_VARARGS,
     "read_raw(start, stop) -> bytes (fixed: (stop-start)*elem_size bytes) or (bytes, offsets) for"
     " variable size (offsets has stop-start+1 entries)."},
    {"write", (PyCFunction)ColHandle_write, METH_VARARGS, "write(start, values) overwrites in place."},
    {"insert", (PyCFunction)ColHandle_insert, METH_VARARGS, "insert(i, value), 0 <= i <= len (fixed only)."},
    {"delete", (PyCFunction)ColHandle_delete, METH_O, "delete(i), 0 <= i < len."},
    {"clear", (PyCFunction)ColHandle_clear, METH_NOARGS, "Length -> 0; chunks are kept."},
    {"enable_cache", (PyCFunction)ColHandle_enable_cache, METH_VARARGS, "enable_cache(cap_bytes, flush_threshold)"},
    {"disable_cache", (PyCFunction)ColHandle_disable_cache, METH_NOARGS, "Flush and remove the cache."},
    {"flush_cache", (PyCFunction)ColHandle_flush_cache, METH_NOARGS, "Flush; returns bytes written."},
    {"cache_enabled", (PyCFunction)ColHandle_cache_enabled, METH_NOARGS, "True when the cache is on."},
    {"cache_idle", (PyCFunction)ColHandle_cache_idle, METH_NOARGS, "Seconds since the last cached append."},
    {NULL},
};

static PyGetSetDef ColHandle_getset[] = {
    {"info", (getter)ColHandle_info, NULL, "dict: name, dtype, is_var, col_id, idx_col_id, max_chunk, elem_size", NULL},
    {NULL},
};

static PyTypeObject ColHandleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kohakuvault._kvault._ColumnHandle",
    .tp_basicsize = sizeof(ColHandleObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Native handle on one column (fixed, or a variable-size _data/_idx pair); made by"
              " _ColumnVault.open_column. Indices must already be normalised (0-based, in range).",
    .tp_dealloc = (destructor)ColHandle_dealloc,
    .tp_methods = ColHandle_methods,
    .tp_getset = ColHandle_getset,
};

int kvpy_init_col(PyObject *module)
{
    /* PyModule_AddType readies each type and adds it under its tp_name's last part. */
    if (PyModule_AddType(module, &ColVaultType) < 0)
        return -1;
    return PyModule_AddType(module, &ColHandleType);
}
