/*
 * kv_py.c - kohakuvault._kvault._KVault, the native half of KVault
 * (contract: /work/brief/KV_NATIVE.md; behaviour: API.md §3-§4), and its
 * key iterator type _KVaultKeys.
 *
 * Thin binding over libkvault: convert arguments, call kv_*, convert
 * results and statuses. Calls are serialised by a per-instance leaf mutex;
 * it is acquired without holding the GIL when contended (so a thread that
 * holds it can always get the GIL back), and SQLite/disk work runs with the
 * GIL released.
 *
 * Hot get path: no allocation besides the result object. The value is
 * borrowed from SQLite's row (kv_get) and copied straight into the new
 * bytes/str/int/... object; values that need Python code to decode (pickle,
 * json) are first copied into bytes so that no Python code runs while the
 * row or the mutex is held.
 */
#include "kvpy.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pythread.h"
#include "structmember.h"
#include "kvault/kvault.h"

/* GIL policy for the hot get, decided by measurement (50,000 hot 100 B
 * gets, 32 KiB pages, WAL; /tmp/bench_get.py in the engine report): releasing
 * the GIL around sqlite3_step gave 358k gets/s, keeping it 365k gets/s
 * (~2%). The SQLite read transaction dominates (2 fcntl + 1 fstat per call,
 * ~2.6 us in C), so releasing costs little and lets other threads run: it is
 * released for SQLite reads and kept for hits of the write-back cache or the
 * read cache (kv_get_cached: pure memory, no system call).
 * KVPY_GET_KEEP_GIL=1 keeps it for SQLite reads too. */
static int g_get_keep_gil = 0;

typedef struct {
    PyObject_HEAD
    kv_db *db;                 /* owned; NULL once closed */
    PyThread_type_lock lock;   /* leaf mutex; owned */
    kvpy_pack_opts opts;       /* §3.6 switches */
    size_t chunk_size;         /* default streaming chunk, bytes */
    PyObject *path;            /* owned str */
} KVObject;

static PyTypeObject KVType;
static PyTypeObject KVKeysType;

#define CLOSED_MSG "Cannot operate on closed KVault"

/* ======================================================================
 * Locking, keys, errors
 * ==================================================================== */

static inline void kv_lock(KVObject *s)
{
    if (!PyThread_acquire_lock(s->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(s->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
}

static inline void kv_unlock(KVObject *s)
{
    PyThread_release_lock(s->lock);
}

static inline int check_open(KVObject *s)
{
    if (!s->db) {
        PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
        return -1;
    }
    return 0;
}


/* Raise the Python exception for status `st` (errors_py.c's table), with
 * the handle's error text and errno. */
static PyObject *raise_status(KVObject *s, kv_status st)
{
    /* a handle's message may be stale after a "not found" outcome */
    return kvpy_raise_status(st, (st == KV_NOTFOUND || !s->db) ? NULL : kv_db_errmsg(s->db),
                             s->db ? kv_db_os_errno(s->db) : 0);
}

/* ======================================================================
 * Construction
 * ==================================================================== */

static int KV_init(KVObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"path", "table", "chunk_size", "enable_wal", "page_size",
                             "mmap_size", "cache_kb", "read_cache_bytes", NULL};
    PyObject *pathb = NULL;
    const char *table = "kv";
    Py_ssize_t chunk = 1048576;
    int wal = 1, page = 32768;
    long long mmap = 268435456, cache_kb = 100000;
    Py_ssize_t read_cache = (Py_ssize_t)32 << 20;
    char err[512];
    kv_db *db = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|snpiLL$n", kwlist, PyUnicode_FSConverter,
                                     &pathb, &table, &chunk, &wal, &page, &mmap, &cache_kb,
                                     &read_cache))
        return -1;
    if (self->db) {
        Py_DECREF(pathb);
        PyErr_SetString(PyExc_RuntimeError, "_KVault already initialised");
        return -1;
    }
    if (chunk <= 0) {
        Py_DECREF(pathb);
        PyErr_SetString(PyExc_ValueError, "chunk_size must be positive");
        return -1;
    }
    if (read_cache < 0) {
        Py_DECREF(pathb);
        PyErr_SetString(PyExc_ValueError, "read_cache_bytes must be >= 0");
        return -1;
    }
    kv_open_opts o;
    kv_open_opts_default(&o);
    o.table = table;
    o.enable_wal = wal;
    o.page_size = page;
    o.mmap_size = mmap;
    o.cache_kb = cache_kb;
    o.chunk_size = (size_t)chunk;
    o.read_cache_bytes = (size_t)read_cache;
    const char *path = PyBytes_AS_STRING(pathb);
    kv_status st;
    err[0] = '\0';
    Py_BEGIN_ALLOW_THREADS
    st = kv_db_open(path, &o, &db, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        Py_DECREF(pathb);
        if (st == KV_INVALID)
            PyErr_SetString(PyExc_ValueError, err[0] ? err : "invalid argument");
        else if (st == KV_NOMEM)
            PyErr_NoMemory();
        else
            PyErr_SetString(PyExc_RuntimeError, err[0] ? err : kv_strerror(st));
        return -1;
    }
    self->path = PyUnicode_DecodeFSDefaultAndSize(PyBytes_AS_STRING(pathb), PyBytes_GET_SIZE(pathb));
    Py_DECREF(pathb);
    if (!self->path) {
        kv_db_close(db);
        return -1;
    }
    self->db = db;
    self->chunk_size = (size_t)chunk;
    self->opts.auto_pack = 1;
    self->opts.headers = 1;
    self->opts.use_pickle = 1;
    return 0;
}

static PyObject *KV_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    KVObject *self = (KVObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void KV_dealloc(KVObject *self)
{
    if (self->db) {
        /* Flushes the cache (never drops entries) and closes. */
        kv_db *db = self->db;
        self->db = NULL;
        Py_BEGIN_ALLOW_THREADS
        kv_db_close(db);
        Py_END_ALLOW_THREADS
    }
    if (self->lock)
        PyThread_free_lock(self->lock);
    Py_XDECREF(self->path);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ======================================================================
 * get / get_or
 * ==================================================================== */

/* Shared body: returns a new reference, or NULL with *missing=1 (no
 * exception) when the key is absent, or NULL with an exception. */
static PyObject *do_get(KVObject *self, PyObject *key, int *missing)
{
    const char *k;
    Py_ssize_t kn;
    const void *v;
    size_t vn;
    kv_status st;
    PyObject *r;

    *missing = 0;
    if (kvpy_key_arg(key, &k, &kn) < 0)
        return NULL;
    kv_lock(self);
    if (!self->db) {
        kv_unlock(self);
        PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
        return NULL;
    }
    if (kv_get_cached(self->db, k, (size_t)kn, &v, &vn)) {
        st = KV_OK;            /* a cache hit: memory only, GIL kept */
    } else if (g_get_keep_gil || kv_cache_enabled(self->db)) {
        st = kv_get(self->db, k, (size_t)kn, &v, &vn);
    } else {
        Py_BEGIN_ALLOW_THREADS
        st = kv_get(self->db, k, (size_t)kn, &v, &vn);
        Py_END_ALLOW_THREADS
    }
    if (st != KV_OK) {
        if (st == KV_NOTFOUND) {
            kv_unlock(self);
            *missing = 1;
            return NULL;
        }
        raise_status(self, st);
        kv_unlock(self);
        return NULL;
    }
    if (kvpy_unpack_needs_python(v, vn, &self->opts)) {
        /* Copy out; decode after releasing the row and the mutex. */
        PyObject *b = PyBytes_FromStringAndSize(v, (Py_ssize_t)vn);
        kv_get_done(self->db);
        kv_unlock(self);
        if (!b)
            return NULL;
        r = kvpy_unpack_value(PyBytes_AS_STRING(b), vn, &self->opts);
        Py_DECREF(b);
        return r;
    }
    if (!self->opts.auto_pack)
        r = PyBytes_FromStringAndSize(v, (Py_ssize_t)vn);
    else
        r = kvpy_unpack_value(v, vn, &self->opts);
    kv_get_done(self->db);
    kv_unlock(self);
    return r;
}

static PyObject *KV_get(KVObject *self, PyObject *key)
{
    int missing;
    PyObject *r = do_get(self, key, &missing);
    if (!r && missing)
        PyErr_SetString(kvpy_KeyNotFoundError, "Key not found");
    return r;
}

static PyObject *KV_get_or(KVObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int missing;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "get_or(key, default) takes exactly 2 arguments");
        return NULL;
    }
    PyObject *r = do_get(self, args[0], &missing);
    if (!r && missing) {
        Py_INCREF(args[1]);
        return args[1];
    }
    return r;
}

/* ======================================================================
 * put / put_many
 * ==================================================================== */

/* Encode `value` into *buf (or borrow it): sets *p and *n. */
static int encode_value(KVObject *self, PyObject *value, kv_buf *buf, Py_buffer *view,
                        const void **p, size_t *n)
{
    view->obj = NULL;
    if (PyBytes_Check(value)) {
        *p = PyBytes_AS_STRING(value);
        *n = (size_t)PyBytes_GET_SIZE(value);
        return 0;
    }
    if (!self->opts.auto_pack) {
        if (!PyObject_CheckBuffer(value) || PyUnicode_Check(value) ||
            PyObject_GetBuffer(value, view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            view->obj = NULL;
            PyErr_SetString(PyExc_TypeError, "value must be bytes-like (or enable auto-pack)");
            return -1;
        }
        *p = view->buf;
        *n = (size_t)view->len;
        return 0;
    }
    if (kvpy_pack_value(value, &self->opts, buf) < 0)
        return -1;
    *p = buf->data;
    *n = buf->len;
    return 0;
}

static PyObject *KV_put(KVObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const char *k;
    Py_ssize_t kn;
    kv_buf buf;
    Py_buffer view;
    const void *v;
    size_t vn;
    kv_status st;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "put(key, value) takes exactly 2 arguments");
        return NULL;
    }
    if (check_open(self) < 0 || kvpy_key_arg(args[0], &k, &kn) < 0)
        return NULL;
    kv_buf_init(&buf);
    if (encode_value(self, args[1], &buf, &view, &v, &vn) < 0) {
        kv_buf_free(&buf);
        return NULL;
    }
    kv_lock(self);
    if (!self->db) {
        st = KV_CLOSED;
    } else {
        Py_BEGIN_ALLOW_THREADS
        st = kv_put(self->db, k, (size_t)kn, v, vn);
        Py_END_ALLOW_THREADS
    }
    if (st != KV_OK && st != KV_CLOSED)
        raise_status(self, st);
    kv_unlock(self);
    if (view.obj)
        PyBuffer_Release(&view);
    kv_buf_free(&buf);
    if (st == KV_CLOSED) {
        PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
        return NULL;
    }
    if (st != KV_OK)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *KV_put_many(KVObject *self, PyObject *items)
{
    PyObject *seq = NULL;
    kv_buf buf;
    kv_item *it = NULL;
    size_t *offs = NULL;
    kv_status st = KV_OK;
    PyObject *ret = NULL;

    if (check_open(self) < 0)
        return NULL;
    seq = PySequence_Fast(items, "put_many expects a sequence of (key, value) pairs");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    kv_buf_init(&buf);
    it = PyMem_Calloc((size_t)n + 1, sizeof *it);
    offs = PyMem_Calloc((size_t)n * 4 + 1, sizeof *offs);
    if (!it || !offs) {
        PyErr_NoMemory();
        goto out;
    }
    /* Copy every key and encoded value into one buffer (positions first:
     * the buffer moves while growing). */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "put_many items must be (key, value) tuples");
            goto out;
        }
        const char *k;
        Py_ssize_t kn;
        if (kvpy_key_arg(PyTuple_GET_ITEM(pair, 0), &k, &kn) < 0)
            goto out;
        offs[4 * i] = buf.len;
        if (kv_buf_append(&buf, k, (size_t)kn) != KV_OK) {
            PyErr_NoMemory();
            goto out;
        }
        offs[4 * i + 1] = (size_t)kn;
        kv_buf tmp;
        Py_buffer view;
        const void *v;
        size_t vn;
        kv_buf_init(&tmp);
        if (encode_value(self, PyTuple_GET_ITEM(pair, 1), &tmp, &view, &v, &vn) < 0) {
            kv_buf_free(&tmp);
            goto out;
        }
        offs[4 * i + 2] = buf.len;
        offs[4 * i + 3] = vn;
        kv_status ast = kv_buf_append(&buf, v, vn);
        if (view.obj)
            PyBuffer_Release(&view);
        kv_buf_free(&tmp);
        if (ast != KV_OK) {
            PyErr_NoMemory();
            goto out;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        it[i].key = buf.data + offs[4 * i];
        it[i].klen = offs[4 * i + 1];
        it[i].val = buf.data + offs[4 * i + 2];
        it[i].vlen = offs[4 * i + 3];
    }
    kv_lock(self);
    if (!self->db) {
        kv_unlock(self);
        PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
        goto out;
    }
    Py_BEGIN_ALLOW_THREADS
    st = kv_put_many(self->db, it, (size_t)n);
    Py_END_ALLOW_THREADS
    if (st != KV_OK)
        raise_status(self, st);
    kv_unlock(self);
    if (st == KV_OK) {
        Py_INCREF(Py_None);
        ret = Py_None;
    }
out:
    PyMem_Free(it);
    PyMem_Free(offs);
    kv_buf_free(&buf);
    Py_XDECREF(seq);
    return ret;
}

/* ======================================================================
 * delete / exists / count
 * ==================================================================== */

typedef enum { OP_DELETE, OP_EXISTS } key_op;

static PyObject *key_bool_op(KVObject *self, PyObject *key, key_op op)
{
    const char *k;
    Py_ssize_t kn;
    int flag = 0;
    kv_status st;
    if (kvpy_key_arg(key, &k, &kn) < 0)
        return NULL;
    kv_lock(self);
    if (!self->db) {
        kv_unlock(self);
        PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    st = op == OP_DELETE ? kv_delete(self->db, k, (size_t)kn, &flag)
                         : kv_exists(self->db, k, (size_t)kn, &flag);
    Py_END_ALLOW_THREADS
    if (st != KV_OK)
        raise_status(self, st);
    kv_unlock(self);
    if (st != KV_OK)
        return NULL;
    return PyBool_FromLong(flag);
}

static PyObject *KV_delete(KVObject *self, PyObject *key) { return key_bool_op(self, key, OP_DELETE); }
static PyObject *KV_exists(KVObject *self, PyObject *key) { return key_bool_op(self, key, OP_EXISTS); }

static PyObject *KV_count(KVObject *self, PyObject *unused)
{
    int64_t n = 0;
    kv_status st;
    kv_lock(self);
    if (!self->db) {
        kv_unlock(self);
        PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    st = kv_count(self->db, &n);
    Py_END_ALLOW_THREADS
    if (st != KV_OK)
        raise_status(self, st);
    kv_unlock(self);
    if (st != KV_OK)
        return NULL;
    return PyLong_FromLongLong(n);
}

/* ======================================================================
 * keys iterator
 * ==================================================================== */

typedef struct {
    PyObject_HEAD
    KVObject *kv;          /* owned */
    PyObject *prefix;      /* owned bytes or NULL (no prefix) */
    PyObject *last;        /* owned bytes: last key returned, or NULL */
    PyObject *batch;       /* owned list of bytes, or NULL */
    Py_ssize_t pos;        /* next index in batch */
    Py_ssize_t remaining;  /* keys still allowed by `limit` */
    int done;
} KeysObject;

#define KEYS_BATCH 1000

static PyObject *KV_keys(KVObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"prefix", "limit", NULL};
    PyObject *prefix = Py_None;
    Py_ssize_t limit = 10000;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|On", kwlist, &prefix, &limit))
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    PyObject *pb = NULL;
    if (prefix != Py_None) {
        if (PyBytes_Check(prefix)) {
            Py_INCREF(prefix);
            pb = prefix;
        } else if (PyUnicode_Check(prefix)) {
            pb = PyUnicode_AsUTF8String(prefix);
            if (!pb)
                return NULL;
        } else {
            PyErr_SetString(PyExc_TypeError, "prefix must be bytes or str");
            return NULL;
        }
    }
    KeysObject *it = PyObject_New(KeysObject, &KVKeysType);
    if (!it) {
        Py_XDECREF(pb);
        return NULL;
    }
    Py_INCREF(self);
    it->kv = self;
    it->prefix = pb;
    it->last = NULL;
    it->batch = NULL;
    it->pos = 0;
    it->remaining = limit < 0 ? 0 : limit;
    it->done = 0;
    return (PyObject *)it;
}

static void Keys_dealloc(KeysObject *it)
{
    Py_XDECREF(it->kv);
    Py_XDECREF(it->prefix);
    Py_XDECREF(it->last);
    Py_XDECREF(it->batch);
    PyObject_Free(it);
}

static int keys_fetch(KeysObject *it)
{
    KVObject *s = it->kv;
    kv_keys *ks = NULL;
    kv_status st;
    size_t want = it->remaining < KEYS_BATCH ? (size_t)it->remaining : KEYS_BATCH;
    const char *pp = it->prefix ? PyBytes_AS_STRING(it->prefix) : NULL;
    size_t pn = it->prefix ? (size_t)PyBytes_GET_SIZE(it->prefix) : 0;
    const char *ap = it->last ? PyBytes_AS_STRING(it->last) : NULL;
    size_t an = it->last ? (size_t)PyBytes_GET_SIZE(it->last) : 0;

    kv_lock(s);
    if (!s->db) {
        kv_unlock(s);
        PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
        return -1;
    }
    Py_BEGIN_ALLOW_THREADS
    st = kv_keys_batch(s->db, pp, pn, ap, an, want, &ks);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        raise_status(s, st);
        kv_unlock(s);
        return -1;
    }
    kv_unlock(s);
    PyObject *list = PyList_New((Py_ssize_t)ks->n);
    for (size_t i = 0; list && i < ks->n; i++) {
        PyObject *b = PyBytes_FromStringAndSize((const char *)ks->data + ks->off[i],
                                                (Py_ssize_t)(ks->off[i + 1] - ks->off[i]));
        if (!b) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, b);
    }
    size_t got = ks->n;
    kv_keys_free(ks);
    if (!list)
        return -1;
    Py_XSETREF(it->batch, list);
    it->pos = 0;
    if (got < want)
        it->done = 1;    /* no more keys after this batch */
    return 0;
}

static PyObject *Keys_next(KeysObject *it)
{
    for (;;) {
        if (it->batch && it->pos < PyList_GET_SIZE(it->batch)) {
            PyObject *k = PyList_GET_ITEM(it->batch, it->pos++);
            Py_INCREF(k);
            Py_INCREF(k);
            Py_XSETREF(it->last, k);
            it->remaining--;
            return k;
        }
        if (it->done || it->remaining <= 0) {
            Py_CLEAR(it->batch);
            return NULL;
        }
        if (keys_fetch(it) < 0)
            return NULL;
        if (PyList_GET_SIZE(it->batch) == 0) {
            it->done = 1;
            Py_CLEAR(it->batch);
            return NULL;
        }
    }
}

/* ======================================================================
 * Streaming
 * ==================================================================== */

typedef struct {
    PyObject *reader;
    PyObject *read_name;
} rd_ctx;

static int64_t py_read_cb(void *ctx, void *buf, size_t cap)
{
    rd_ctx *c = ctx;
    PyObject *b = PyObject_CallMethod(c->reader, "read", "n", (Py_ssize_t)cap);
    if (!b)
        return -1;
    if (!PyBytes_Check(b)) {
        PyErr_Format(PyExc_TypeError, "reader.read() must return bytes, got %.100s",
                     Py_TYPE(b)->tp_name);
        Py_DECREF(b);
        return -1;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(b);
    if ((size_t)n > cap) {
        PyErr_SetString(PyExc_ValueError, "reader.read(n) returned more than n bytes");
        Py_DECREF(b);
        return -1;
    }
    memcpy(buf, PyBytes_AS_STRING(b), (size_t)n);
    Py_DECREF(b);
    return n;
}

static int py_write_cb(void *ctx, const void *buf, size_t len)
{
    PyObject *w = ctx;
    PyObject *mv = PyMemoryView_FromMemory((char *)buf, (Py_ssize_t)len, PyBUF_READ);
    if (!mv)
        return -1;
    /* Pass bytes: writers may keep the object (BytesIO copies anyway). */
    PyObject *b = PyBytes_FromObject(mv);
    Py_DECREF(mv);
    if (!b)
        return -1;
    PyObject *r = PyObject_CallMethod(w, "write", "O", b);
    Py_DECREF(b);
    if (!r)
        return -1;
    if (r != Py_None && PyLong_Check(r)) {
        Py_ssize_t n = PyLong_AsSsize_t(r);
        if (n >= 0 && (size_t)n != len) {
            Py_DECREF(r);
            PyErr_Format(PyExc_OSError, "short write: writer accepted %zd of %zu bytes", n, len);
            return -1;
        }
    }
    Py_DECREF(r);
    return 0;
}

/* Real OS fd of a file-like, or -1 (no exception) if it has none. */
static int file_fd(PyObject *f)
{
    PyObject *r = PyObject_CallMethod(f, "fileno", NULL);
    if (!r) {
        PyErr_Clear();
        return -1;
    }
    long fd = PyLong_Check(r) ? PyLong_AsLong(r) : -1;
    Py_DECREF(r);
    if (fd < 0) {
        PyErr_Clear();
        return -1;
    }
    return (int)fd;
}

/* tell() of a file-like, or -1 (no exception). */
static long long file_tell(PyObject *f)
{
    PyObject *r = PyObject_CallMethod(f, "tell", NULL);
    if (!r) {
        PyErr_Clear();
        return -1;
    }
    long long v = PyLong_AsLongLong(r);
    Py_DECREF(r);
    if (v < 0)
        PyErr_Clear();
    return v;
}

static int file_seek(PyObject *f, long long off, int whence)
{
    PyObject *r = PyObject_CallMethod(f, "seek", "Li", off, whence);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

static PyObject *KV_put_file(KVObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"key", "reader", "size", "chunk_size", NULL};
    PyObject *key, *reader, *size_o = Py_None, *chunk_o = Py_None;
    const char *k;
    Py_ssize_t kn;
    kv_status st;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OO", kwlist, &key, &reader, &size_o, &chunk_o))
        return NULL;
    if (check_open(self) < 0 || kvpy_key_arg(key, &k, &kn) < 0)
        return NULL;
    size_t chunk = self->chunk_size;
    if (chunk_o != Py_None) {
        Py_ssize_t c = PyLong_AsSsize_t(chunk_o);
        if (c == -1 && PyErr_Occurred())
            return NULL;
        if (c <= 0) {
            PyErr_SetString(PyExc_ValueError, "chunk_size must be positive");
            return NULL;
        }
        chunk = (size_t)c;
    }
    /* Bytes-like readers are stored raw (API.md §4.6 "may fix"). */
    if (PyObject_CheckBuffer(reader) && !PyUnicode_Check(reader)) {
        Py_buffer view;
        if (PyObject_GetBuffer(reader, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        kv_lock(self);
        Py_BEGIN_ALLOW_THREADS
        st = self->db ? kv_put(self->db, k, (size_t)kn, view.buf, (size_t)view.len) : KV_CLOSED;
        Py_END_ALLOW_THREADS
        if (st != KV_OK && st != KV_CLOSED)
            raise_status(self, st);
        kv_unlock(self);
        PyBuffer_Release(&view);
        if (st == KV_CLOSED)
            PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
        if (st != KV_OK)
            return NULL;
        Py_RETURN_NONE;
    }
    if (!PyObject_HasAttrString(reader, "read")) {
        PyErr_SetString(PyExc_TypeError, "reader must be file-like or bytes-like");
        return NULL;
    }
    long long size = -1;
    if (size_o != Py_None) {
        size = PyLong_AsLongLong(size_o);
        if (size == -1 && PyErr_Occurred())
            return NULL;
        if (size < 0) {
            PyErr_SetString(PyExc_ValueError, "size must be non-negative");
            return NULL;
        }
    }
    int fd = file_fd(reader);
    long long pos = file_tell(reader);
    struct stat sb;
    int regular = fd >= 0 && pos >= 0 && fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode);
    if (size < 0) {
        if (regular) {
            size = sb.st_size > pos ? sb.st_size - pos : 0;
        } else if (pos >= 0 && file_seek(reader, 0, 2) == 0) {
            long long end = file_tell(reader);
            if (file_seek(reader, pos, 0) < 0)
                return NULL;
            size = end >= pos ? end - pos : -1;
        } else {
            PyErr_Clear();
        }
    }
    if (size < 0) {
        /* Unknown size (pipes, sockets): read everything, store with put. */
        PyObject *all = PyObject_CallMethod(reader, "read", NULL);
        if (!all)
            return NULL;
        if (!PyBytes_Check(all)) {
            PyErr_SetString(PyExc_TypeError, "reader.read() must return bytes");
            Py_DECREF(all);
            return NULL;
        }
        kv_lock(self);
        Py_BEGIN_ALLOW_THREADS
        st = self->db ? kv_put(self->db, k, (size_t)kn, PyBytes_AS_STRING(all),
                               (size_t)PyBytes_GET_SIZE(all)) : KV_CLOSED;
        Py_END_ALLOW_THREADS
        if (st != KV_OK && st != KV_CLOSED)
            raise_status(self, st);
        kv_unlock(self);
        Py_DECREF(all);
        if (st == KV_CLOSED)
            PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
        if (st != KV_OK)
            return NULL;
        Py_RETURN_NONE;
    }
    if (regular) {
        /* Fast path: the OS file at the reader's logical position. */
        if (lseek(fd, (off_t)pos, SEEK_SET) < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
        kv_lock(self);
        Py_BEGIN_ALLOW_THREADS
        st = self->db ? kv_put_fd(self->db, k, (size_t)kn, fd, (uint64_t)size, chunk) : KV_CLOSED;
        Py_END_ALLOW_THREADS
        if (st != KV_OK && st != KV_CLOSED)
            raise_status(self, st);
        kv_unlock(self);
        if (st == KV_CLOSED)
            PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
        if (st != KV_OK)
            return NULL;
        /* Re-sync the Python object's buffered position. */
        if (file_seek(reader, pos + size, 0) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    rd_ctx c = {reader, NULL};
    kv_lock(self);
    /* Callbacks need the GIL: this variant keeps it. */
    st = self->db ? kv_put_stream(self->db, k, (size_t)kn, (uint64_t)size, chunk, py_read_cb, &c)
                  : KV_CLOSED;
    if (st != KV_OK && st != KV_CLOSED)
        raise_status(self, st);
    kv_unlock(self);
    if (st == KV_CLOSED)
        PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
    if (st != KV_OK)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *KV_get_to_file(KVObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"key", "writer", "chunk_size", NULL};
    PyObject *key, *writer, *chunk_o = Py_None;
    const char *k;
    Py_ssize_t kn;
    kv_status st;
    uint64_t written = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &key, &writer, &chunk_o))
        return NULL;
    if (check_open(self) < 0 || kvpy_key_arg(key, &k, &kn) < 0)
        return NULL;
    if (!PyObject_HasAttrString(writer, "write")) {
        PyErr_SetString(PyExc_TypeError, "writer must be file-like (have a write method)");
        return NULL;
    }
    size_t chunk = self->chunk_size;
    if (chunk_o != Py_None) {
        Py_ssize_t c = PyLong_AsSsize_t(chunk_o);
        if (c == -1 && PyErr_Occurred())
            return NULL;
        if (c <= 0) {
            PyErr_SetString(PyExc_ValueError, "chunk_size must be positive");
            return NULL;
        }
        chunk = (size_t)c;
    }
    int fd = file_fd(writer);
    if (fd >= 0) {
        /* Push Python-side buffered data out before writing to the fd. */
        PyObject *r = PyObject_CallMethod(writer, "flush", NULL);
        if (!r)
            PyErr_Clear();
        Py_XDECREF(r);
        long long pos = file_tell(writer);
        if (pos >= 0 && lseek(fd, (off_t)pos, SEEK_SET) < 0)
            pos = -1;
        kv_lock(self);
        Py_BEGIN_ALLOW_THREADS
        st = self->db ? kv_get_to_fd(self->db, k, (size_t)kn, fd, chunk, &written) : KV_CLOSED;
        Py_END_ALLOW_THREADS
        if (st != KV_OK && st != KV_CLOSED)
            raise_status(self, st);
        kv_unlock(self);
        if (st == KV_CLOSED)
            PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
        if (st != KV_OK)
            return NULL;
        if (pos >= 0 && file_seek(writer, pos + (long long)written, 0) < 0)
            return NULL;
        return PyLong_FromUnsignedLongLong(written);
    }
    kv_lock(self);
    st = self->db ? kv_get_stream(self->db, k, (size_t)kn, chunk, py_write_cb, writer, &written)
                  : KV_CLOSED;
    if (st != KV_OK && st != KV_CLOSED)
        raise_status(self, st);
    kv_unlock(self);
    if (st == KV_CLOSED)
        PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
    if (st != KV_OK)
        return NULL;
    return PyLong_FromUnsignedLongLong(written);
}

/* ======================================================================
 * Cache, switches, maintenance
 * ==================================================================== */

/* Run `call` on the db under the lock with the GIL released. */
#define LOCKED_CALL(self, stvar, call)                    \
    do {                                                  \
        kv_lock(self);                                    \
        if (!(self)->db) {                                \
            kv_unlock(self);                              \
            PyErr_SetString(PyExc_ValueError, CLOSED_MSG); \
            return NULL;                                  \
        }                                                 \
        Py_BEGIN_ALLOW_THREADS                            \
        stvar = (call);                                   \
        Py_END_ALLOW_THREADS                              \
        if (stvar != KV_OK)                               \
            raise_status(self, stvar);                    \
        kv_unlock(self);                                  \
        if (stvar != KV_OK)                               \
            return NULL;                                  \
    } while (0)

static PyObject *KV_enable_cache(KVObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"cap_bytes", "flush_threshold", NULL};
    Py_ssize_t cap = 67108864, thr = 16777216;
    kv_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|nn", kwlist, &cap, &thr))
        return NULL;
    if (cap <= 0 || thr < 0) {
        PyErr_SetString(PyExc_ValueError, "cap_bytes must be > 0 and flush_threshold >= 0");
        return NULL;
    }
    LOCKED_CALL(self, st, kv_cache_enable(self->db, (size_t)cap, (size_t)thr));
    Py_RETURN_NONE;
}

static PyObject *KV_disable_cache(KVObject *self, PyObject *unused)
{
    kv_status st;
    LOCKED_CALL(self, st, kv_cache_disable(self->db));
    Py_RETURN_NONE;
}

static PyObject *KV_flush_cache(KVObject *self, PyObject *unused)
{
    kv_status st;
    size_t n = 0;
    LOCKED_CALL(self, st, kv_cache_flush(self->db, &n));
    return PyLong_FromSize_t(n);
}

static PyObject *KV_set_cache_locked(KVObject *self, PyObject *flag)
{
    int f = PyObject_IsTrue(flag);
    if (f < 0 || check_open(self) < 0)
        return NULL;
    kv_lock(self);
    if (self->db)
        kv_cache_set_locked(self->db, f);
    kv_unlock(self);
    Py_RETURN_NONE;
}

static PyObject *KV_cache_enabled(KVObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    return PyBool_FromLong(kv_cache_enabled(self->db));
}

static PyObject *KV_enable_auto_pack(KVObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"use_pickle", NULL};
    int use_pickle = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p", kwlist, &use_pickle))
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    self->opts.auto_pack = 1;
    self->opts.headers = 1;
    self->opts.use_pickle = use_pickle;
    Py_RETURN_NONE;
}

#define SWITCH(fname, field, value)                          \
    static PyObject *fname(KVObject *self, PyObject *unused) \
    {                                                        \
        if (check_open(self) < 0)                            \
            return NULL;                                     \
        self->opts.field = value;                            \
        Py_RETURN_NONE;                                      \
    }
SWITCH(KV_disable_auto_pack, auto_pack, 0)
SWITCH(KV_enable_headers, headers, 1)
SWITCH(KV_disable_headers, headers, 0)

static PyObject *KV_auto_pack_enabled(KVObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    return PyBool_FromLong(self->opts.auto_pack);
}

static PyObject *KV_headers_enabled(KVObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    return PyBool_FromLong(self->opts.headers);
}

static PyObject *KV_record_feature(KVObject *self, PyObject *name)
{
    kv_status st;
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "feature name must be str");
        return NULL;
    }
    const char *n = PyUnicode_AsUTF8(name);
    if (!n)
        return NULL;
    LOCKED_CALL(self, st, kv_record_feature(self->db, n));
    Py_RETURN_NONE;
}

static PyObject *KV_checkpoint(KVObject *self, PyObject *unused)
{
    kv_status st;
    LOCKED_CALL(self, st, kv_checkpoint(self->db));
    Py_RETURN_NONE;
}

static PyObject *KV_optimize(KVObject *self, PyObject *unused)
{
    kv_status st;
    LOCKED_CALL(self, st, kv_optimize(self->db));
    Py_RETURN_NONE;
}

static PyObject *KV_close(KVObject *self, PyObject *unused)
{
    kv_status st = KV_OK;
    kv_lock(self);
    kv_db *db = self->db;
    self->db = NULL;     /* marked closed even if the flush fails */
    if (db) {
        Py_BEGIN_ALLOW_THREADS
        st = kv_db_close(db);
        Py_END_ALLOW_THREADS
    }
    kv_unlock(self);
    if (st != KV_OK) {
        PyErr_Format(PyExc_RuntimeError, "close: cache flush failed: %s", kv_strerror(st));
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *KV_get_closed(KVObject *self, void *unused)
{
    return PyBool_FromLong(self->db == NULL);
}

static PyObject *KV_get_path(KVObject *self, void *unused)
{
    Py_INCREF(self->path ? self->path : Py_None);
    return self->path ? self->path : Py_None;
}

static PyObject *KV_get_table(KVObject *self, void *unused)
{
    if (check_open(self) < 0)
        return NULL;
    return PyUnicode_FromString(kv_db_table(self->db));
}

static PyObject *KV_stream_used_uring(KVObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    return PyBool_FromLong(kv_stream_used_uring(self->db));
}

/* ======================================================================
 * Type objects
 * ==================================================================== */

static PyMethodDef KV_methods[] = {
    {"get", (PyCFunction)KV_get, METH_O, "get(key) -> value; RuntimeError('Key not found') if missing"},
    {"get_or", (PyCFunction)(void (*)(void))KV_get_or, METH_FASTCALL, "get_or(key, default) -> value or default"},
    {"put", (PyCFunction)(void (*)(void))KV_put, METH_FASTCALL, "put(key, value): upsert (auto-packed)"},
    {"put_many", (PyCFunction)KV_put_many, METH_O, "put_many([(key, value), ...]) in one transaction"},
    {"delete", (PyCFunction)KV_delete, METH_O, "delete(key) -> bool"},
    {"exists", (PyCFunction)KV_exists, METH_O, "exists(key) -> bool (SQLite only)"},
    {"count", (PyCFunction)KV_count, METH_NOARGS, "count() -> int (SELECT COUNT(*))"},
    {"keys", (PyCFunction)(void (*)(void))KV_keys, METH_VARARGS | METH_KEYWORDS,
     "keys(prefix=None, limit=10000) -> iterator of bytes, bytewise order"},
    {"put_file", (PyCFunction)(void (*)(void))KV_put_file, METH_VARARGS | METH_KEYWORDS,
     "put_file(key, reader, size=None, chunk_size=None): stream into a raw blob"},
    {"get_to_file", (PyCFunction)(void (*)(void))KV_get_to_file, METH_VARARGS | METH_KEYWORDS,
     "get_to_file(key, writer, chunk_size=None) -> bytes written"},
    {"enable_cache", (PyCFunction)(void (*)(void))KV_enable_cache, METH_VARARGS | METH_KEYWORDS,
     "enable_cache(cap_bytes, flush_threshold): flushes an existing cache first"},
    {"disable_cache", (PyCFunction)KV_disable_cache, METH_NOARGS, "flush (never drops) and remove the cache"},
    {"flush_cache", (PyCFunction)KV_flush_cache, METH_NOARGS, "flush_cache() -> entries written (0 if locked)"},
    {"set_cache_locked", (PyCFunction)KV_set_cache_locked, METH_O, "set_cache_locked(flag)"},
    {"cache_enabled", (PyCFunction)KV_cache_enabled, METH_NOARGS, "cache_enabled() -> bool"},
    {"enable_auto_pack", (PyCFunction)(void (*)(void))KV_enable_auto_pack, METH_VARARGS | METH_KEYWORDS,
     "enable_auto_pack(use_pickle=True): auto-pack and headers on"},
    {"disable_auto_pack", (PyCFunction)KV_disable_auto_pack, METH_NOARGS, "auto-pack off"},
    {"auto_pack_enabled", (PyCFunction)KV_auto_pack_enabled, METH_NOARGS, "-> bool"},
    {"enable_headers", (PyCFunction)KV_enable_headers, METH_NOARGS, "headers on"},
    {"disable_headers", (PyCFunction)KV_disable_headers, METH_NOARGS, "headers off"},
    {"headers_enabled", (PyCFunction)KV_headers_enabled, METH_NOARGS, "-> bool"},
    {"record_feature", (PyCFunction)KV_record_feature, METH_O, "append to kohakuvault_meta kv_features"},
    {"checkpoint", (PyCFunction)KV_checkpoint, METH_NOARGS, "PRAGMA wal_checkpoint(PASSIVE), errors swallowed"},
    {"optimize", (PyCFunction)KV_optimize, METH_NOARGS, "PRAGMA optimize; VACUUM"},
    {"close", (PyCFunction)KV_close, METH_NOARGS, "flush cache, checkpoint, close; idempotent"},
    {"_stream_used_uring", (PyCFunction)KV_stream_used_uring, METH_NOARGS,
     "whether the last fd stream used io_uring (diagnostics)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef KV_getset[] = {
    {"closed", (getter)KV_get_closed, NULL, "True after close()", NULL},
    {"path", (getter)KV_get_path, NULL, "the path given to the constructor", NULL},
    {"table", (getter)KV_get_table, NULL, "the table name", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject KVType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kohakuvault._kvault._KVault",
    .tp_basicsize = sizeof(KVObject),
    .tp_dealloc = (destructor)KV_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "_KVault(path, table='kv', chunk_size=1048576, enable_wal=True, page_size=32768,\n"
              "        mmap_size=268435456, cache_kb=100000, *, read_cache_bytes=33554432)\n"
              "Native key-value store over one SQLite table (see kohakuvault.KVault).\n"
              "read_cache_bytes: cap of the process-local read cache (WAL mode only; 0 = off);\n"
              "a cached value is served only while SQLite's WAL-index header is unchanged,\n"
              "i.e. no process has committed since it was read.",
    .tp_methods = KV_methods,
    .tp_getset = KV_getset,
    .tp_init = (initproc)KV_init,
    .tp_new = KV_new,
};

static PyTypeObject KVKeysType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kohakuvault._kvault._KVaultKeys",
    .tp_basicsize = sizeof(KeysObject),
    .tp_dealloc = (destructor)Keys_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Iterator over _KVault keys (bytes), fetched in batches (keyset pagination).",
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)Keys_next,
};

int kvpy_init_kv(PyObject *module)
{
    const char *e = getenv("KVPY_GET_KEEP_GIL");
    g_get_keep_gil = e && e[0] == '1';
    if (PyType_Ready(&KVType) < 0 || PyType_Ready(&KVKeysType) < 0)
        return -1;
    Py_INCREF(&KVType);
    if (PyModule_AddObject(module, "_KVault", (PyObject *)&KVType) < 0) {
        Py_DECREF(&KVType);
        return -1;
    }
    Py_INCREF(&KVKeysType);
    if (PyModule_AddObject(module, "_KVaultKeys", (PyObject *)&KVKeysType) < 0) {
        Py_DECREF(&KVKeysType);
        return -1;
    }
    return 0;
}
