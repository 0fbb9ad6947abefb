/*
 * attach_py.c - kohakuvault._kvault._AttachedKVault, the native half of
 * KVault in shared mode (DESIGN.md, "Two ways to run"), over kv_att
 * (shm/include/kvshm/attach.h). It implements the method set of
 * /work/brief/KV_NATIVE.md, so the proxy (proxy.py) drives it exactly like
 * _KVault; also `_attach_served(path, table)`.
 *
 * Differences from _KVault, all documented in docs/shared-mode.md:
 *   - put returns when the writer has APPLIED the write (every attached
 *     process sees it); put(..., sync=True) / sync() / flush_cache() wait
 *     until it is COMMITTED to SQLite;
 *   - the "write-back cache" is the ring itself: with it enabled, put
 *     returns as soon as the record is in the ring (batched apply) and the
 *     next read of this object waits for it; flush_cache() returns the
 *     number of puts since the last flush after they are committed;
 *   - count()/keys() first ask the writer to commit, so they see every
 *     write applied before the call.
 * Calls are serialised by a per-object leaf mutex; waits on the writer and
 * SQLite work run with the GIL released; segment hits keep it.
 *
 * Hot-value cache: get() keeps the decoded result of small values whose
 * decoded type is immutable (bytes, str, int, float, bool, None) in a
 * process-local 2-way set-associative table, each copy tagged with the
 * key-stripe token of kv_att_stamp (seqlock over a counter the writer bumps
 * around every applied put/delete of the stripe's keys). A hit is one xxh3 of
 * the key, one compare and two loads from the segment header: no tree walk,
 * no copy, no lock, no system call, and never an older value than the
 * segment itself would return. Bounded by read_cache_bytes.
 */
#include "kvpy.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pythread.h"
#include "kvshm/attach.h"

/* One hot-cache copy; key == NULL marks an empty entry. */
typedef struct {
    uint64_t h;                /* kv_att_key_hash of the key */
    uint64_t token;            /* kv_att_stamp when the copy was validated */
    PyObject *key;             /* owned bytes: the key as stored */
    PyObject *val;             /* owned, immutable decoded value */
    Py_ssize_t cost;           /* bytes charged against hot_limit */
    uint32_t tick;             /* insertion order, for the victim choice */
    uint32_t optk;             /* hot_optk: the decoding options of val */
} hot_ent;

#define HOT_ENTRY_BYTES 512          /* read_cache_bytes per table entry */
#define HOT_MAX_ENTRIES (1u << 20)
#define HOT_VALUE_MAX 16384          /* larger values are not kept */

typedef struct {
    PyObject_HEAD
    kv_att *a;                 /* owned; NULL once closed */
    PyThread_type_lock lock;   /* leaf mutex; owned */
    int busy;                  /* the lock is held (changed with the GIL held) */
    hot_ent *hot;              /* owned; NULL when the hot cache is off */
    uint64_t hot_mask;         /* entries - 1 (entries: a power of two >= 2) */
    Py_ssize_t hot_bytes, hot_limit;
    uint32_t hot_tick;
    uint64_t hot_hits;
    uint64_t hot_reported;     /* hot_hits already handed to kv_att_add_hits */
    kvpy_pack_opts opts;
    size_t chunk_size;
    int cache_on, cache_locked;
    Py_ssize_t cache_puts;     /* puts since the last flush (cache on) */
    PyObject *path;            /* owned str */
    PyObject *table;           /* owned str */
} ATObject;

static PyTypeObject ATType;

#define CLOSED_MSG "Cannot operate on closed KVault"

/* The GIL is held on return of at_lock and on entry to at_unlock, so `busy`
 * tells a thread holding the GIL whether another one is inside kv_att. */
static inline void at_lock(ATObject *s)
{
    if (!PyThread_acquire_lock(s->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(s->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
    s->busy = 1;
}
static inline void at_unlock(ATObject *s)
{
    s->busy = 0;
    PyThread_release_lock(s->lock);
}

/* ---- hot-value cache (GIL held throughout) ------------------------------ */

static int hot_setup(ATObject *s, long long limit)
{
    if (limit <= 0) return 0;
    uint64_t n = 2;
    while (n < HOT_MAX_ENTRIES && n * 2 * HOT_ENTRY_BYTES <= (uint64_t)limit) n *= 2;
    s->hot = PyMem_Calloc((size_t)n, sizeof *s->hot);
    if (!s->hot) { PyErr_NoMemory(); return -1; }
    s->hot_mask = n - 1;
    s->hot_limit = (Py_ssize_t)(limit < PY_SSIZE_T_MAX ? limit : PY_SSIZE_T_MAX);
    return 0;
}

static void hot_drop(ATObject *s, hot_ent *e)
{
    if (!e->key) return;
    s->hot_bytes -= e->cost;
    Py_CLEAR(e->key);
    Py_CLEAR(e->val);
}

static void hot_free(ATObject *s)
{
    if (!s->hot) return;
    for (uint64_t i = 0; i <= s->hot_mask; i++) hot_drop(s, &s->hot[i]);
    PyMem_Free(s->hot);
    s->hot = NULL;
}

/* The decoding options a copy was made under: a copy decoded with other
 * options (e.g. before disable_auto_pack) is never served. */
static inline uint32_t hot_optk(const ATObject *s)
{
    return (uint32_t)((s->opts.auto_pack != 0) | (s->opts.headers != 0) << 1 |
                      (s->opts.use_pickle != 0) << 2);
}

static inline hot_ent *hot_find(ATObject *s, uint64_t h, const char *k, Py_ssize_t kn)
{
    hot_ent *set = &s->hot[h & s->hot_mask & ~UINT64_C(1)];
    for (int w = 0; w < 2; w++) {
        hot_ent *e = &set[w];
        if (e->h == h && e->key && PyBytes_GET_SIZE(e->key) == kn &&
            memcmp(PyBytes_AS_STRING(e->key), k, (size_t)kn) == 0)
            return e;
    }
    return NULL;
}

static inline int hot_keepable(PyObject *v)
{
    return PyBytes_CheckExact(v) || PyUnicode_CheckExact(v) || PyLong_CheckExact(v) ||
           PyFloat_CheckExact(v) || PyBool_Check(v) || v == Py_None;
}

/* Keep v (decoded from vn stored bytes) as key's copy, validated at token. */
static void hot_put(ATObject *s, uint64_t h, const char *k, Py_ssize_t kn, PyObject *v,
                    size_t vn, uint64_t token)
{
    if (vn > HOT_VALUE_MAX || !hot_keepable(v)) return;
    hot_ent *e = hot_find(s, h, k, kn);
    if (!e) {
        hot_ent *set = &s->hot[h & s->hot_mask & ~UINT64_C(1)];
        e = !set[0].key ? &set[0] : !set[1].key ? &set[1]
            : (int32_t)(set[0].tick - set[1].tick) <= 0 ? &set[0] : &set[1];
    }
    Py_ssize_t cost = (Py_ssize_t)vn + kn + (Py_ssize_t)sizeof(hot_ent) + 64;
    if (s->hot_bytes - (e->key ? e->cost : 0) + cost > s->hot_limit) return;
    PyObject *kb = PyBytes_FromStringAndSize(k, kn);
    if (!kb) { PyErr_Clear(); return; }
    hot_drop(s, e);
    Py_INCREF(v);
    e->h = h;
    e->token = token;
    e->key = kb;
    e->val = v;
    e->cost = cost;
    e->tick = s->hot_tick++;
    e->optk = hot_optk(s);
    s->hot_bytes += cost;
}


static PyObject *raise_st(ATObject *s, kv_status st)
{
    /* a handle's message may be stale after a "not found" outcome */
    return kvpy_raise_status(st, (st == KV_NOTFOUND || !s->a) ? NULL : kv_att_errmsg(s->a), 0);
}

/* Take the lock and check the object is open; -1 with ValueError if closed. */
static int enter(ATObject *s)
{
    at_lock(s);
    if (!s->a) {
        at_unlock(s);
        PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
        return -1;
    }
    return 0;
}

/* ---- construction ------------------------------------------------------ */

static int AT_init(ATObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"path", "table", "chunk_size", "enable_wal", "page_size",
                             "mmap_size", "cache_kb", "read_cache_bytes", NULL};
    PyObject *pathb = NULL;
    const char *table = "kv";
    Py_ssize_t chunk = 1048576;
    int wal = 1, page = 32768;
    long long mmap_sz = 268435456, cache_kb = 100000, hot_bytes = 33554432;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|snpiLLL", kwlist, PyUnicode_FSConverter,
                                     &pathb, &table, &chunk, &wal, &page, &mmap_sz, &cache_kb,
                                     &hot_bytes))
        return -1;
    if (hot_bytes < 0) {
        Py_DECREF(pathb);
        PyErr_SetString(PyExc_ValueError, "read_cache_bytes must be >= 0");
        return -1;
    }
    hot_free(self);
    if (hot_setup(self, hot_bytes) < 0) {
        Py_DECREF(pathb);
        return -1;
    }
    kv_attach_opts o;
    kv_attach_opts_default(&o);
    o.table = table;
    o.db.enable_wal = wal;
    o.db.page_size = page;
    o.db.mmap_size = mmap_sz;
    o.db.cache_kb = cache_kb;
    o.db.chunk_size = (size_t)chunk;
    char err[512] = "";
    kv_att *a = NULL;
    kv_status st;
    const char *p = PyBytes_AS_STRING(pathb);
    Py_BEGIN_ALLOW_THREADS
    st = kv_attach(p, &o, &a, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        PyErr_Format(PyExc_RuntimeError, "attach: %s", err[0] ? err : kv_strerror(st));
        Py_DECREF(pathb);
        return -1;
    }
    self->path = PyUnicode_DecodeFSDefaultAndSize(PyBytes_AS_STRING(pathb),
                                                  PyBytes_GET_SIZE(pathb));
    Py_DECREF(pathb);
    self->table = PyUnicode_FromString(table);
    if (!self->path || !self->table) {
        kv_attach_close(a);
        return -1;
    }
    self->a = a;
    self->chunk_size = (size_t)chunk;
    self->opts.auto_pack = 1;
    self->opts.headers = 1;
    self->opts.use_pickle = 1;
    return 0;
}

static PyObject *AT_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    ATObject *self = (ATObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    return (PyObject *)self;
}

static void AT_dealloc(ATObject *self)
{
    if (self->a) {
        kv_att *a = self->a;
        self->a = NULL;
        Py_BEGIN_ALLOW_THREADS
        kv_attach_close(a);
        Py_END_ALLOW_THREADS
    }
    hot_free(self);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_XDECREF(self->path);
    Py_XDECREF(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ---- get ------------------------------------------------------------------ */

/* Hot-cache hits are hits of the shared cache too: hand them to the attach
 * layer's reports every 4,096, so `kvault-launch status` counts them. Called
 * with the GIL held and the lock free (busy == 0), so it does not wait. */
#define HOT_REPORT_EVERY 4096u
static void hot_report(ATObject *s)
{
    at_lock(s);
    if (s->a) kv_att_add_hits(s->a, s->hot_hits - s->hot_reported);
    s->hot_reported = s->hot_hits;
    at_unlock(s);
}

static PyObject *do_get(ATObject *self, PyObject *key, int *missing)
{
    const char *k;
    Py_ssize_t kn;
    const void *v;
    size_t vn;
    *missing = 0;
    if (kvpy_key_arg(key, &k, &kn) < 0) return NULL;
    uint64_t h = 0, t1 = 0, t2 = 0;
    if (self->hot) {
        h = kv_att_key_hash(k, (size_t)kn);
        if (!self->busy && self->a) {
            hot_ent *e = hot_find(self, h, k, kn);
            if (e && e->optk == hot_optk(self) && e->token == kv_att_stamp(self->a, h, 0)) {
                if (++self->hot_hits - self->hot_reported >= HOT_REPORT_EVERY) hot_report(self);
                Py_INCREF(e->val);
                return e->val;
            }
        }
    }
    if (enter(self) < 0) return NULL;
    if (self->hot) t1 = kv_att_stamp(self->a, h, 0);
    kv_status st = kv_att_get(self->a, k, (size_t)kn, &v, &vn);
    if (st == KV_NOTFOUND) {
        at_unlock(self);
        *missing = 1;
        return NULL;
    }
    if (st != KV_OK) {
        raise_st(self, st);
        at_unlock(self);
        return NULL;
    }
    if (t1) t2 = kv_att_stamp(self->a, h, 1);
    PyObject *r;
    if (kvpy_unpack_needs_python(v, vn, &self->opts)) {
        PyObject *copy = PyBytes_FromStringAndSize(v, (Py_ssize_t)vn);
        at_unlock(self);
        if (!copy) return NULL;
        r = kvpy_unpack_value(PyBytes_AS_STRING(copy), vn, &self->opts);
        Py_DECREF(copy);
    } else {
        r = kvpy_unpack_value(v, vn, &self->opts);
        at_unlock(self);
    }
    if (r && t1 && t1 == t2 && self->hot) hot_put(self, h, k, kn, r, vn, t1);
    return r;
}

static PyObject *AT_get(ATObject *self, PyObject *key)
{
    int missing;
    PyObject *r = do_get(self, key, &missing);
    if (missing) PyErr_SetString(kvpy_KeyNotFoundError, "Key not found");
    return r;
}

static PyObject *AT_get_or(ATObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "get_or(key, default)");
        return NULL;
    }
    int missing;
    PyObject *r = do_get(self, args[0], &missing);
    if (missing) {
        Py_INCREF(args[1]);
        return args[1];
    }
    return r;
}

/* ---- put ------------------------------------------------------------------- */

static int encode(ATObject *self, PyObject *value, kv_buf *buf, Py_buffer *view,
                  const void **p, size_t *n)
{
    if (self->opts.auto_pack) {
        if (PyBytes_CheckExact(value)) {
            *p = PyBytes_AS_STRING(value);
            *n = (size_t)PyBytes_GET_SIZE(value);
            return 0;
        }
        if (kvpy_pack_value(value, &self->opts, buf) < 0) return -1;
        *p = buf->data;
        *n = buf->len;
        return 0;
    }
    if (!PyObject_CheckBuffer(value) || PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "value must be bytes-like (or enable auto-pack)");
        return -1;
    }
    if (PyObject_GetBuffer(value, view, PyBUF_SIMPLE) < 0) return -1;
    *p = view->buf;
    *n = (size_t)view->len;
    return 0;
}

static PyObject *do_put(ATObject *self, PyObject *key, PyObject *value, int sync)
{
    const char *k;
    Py_ssize_t kn;
    const void *vp = NULL;
    size_t vn = 0;
    kv_buf buf;
    Py_buffer view = {0};
    if (kvpy_key_arg(key, &k, &kn) < 0) return NULL;
    kv_buf_init(&buf);
    if (encode(self, value, &buf, &view, &vp, &vn) < 0) {
        kv_buf_free(&buf);
        return NULL;
    }
    PyObject *ret = NULL;
    if (enter(self) == 0) {
        int flags = sync ? KV_ATT_SYNC : (self->cache_on ? KV_ATT_ASYNC : 0);
        kv_status st;
        Py_BEGIN_ALLOW_THREADS
        st = kv_att_put(self->a, k, (size_t)kn, vp, vn, flags);
        Py_END_ALLOW_THREADS
        if (st == KV_OK) {
            if (self->cache_on) self->cache_puts++;
            ret = Py_None;
            Py_INCREF(ret);
        } else {
            raise_st(self, st);
        }
        at_unlock(self);
    }
    if (view.obj) PyBuffer_Release(&view);
    kv_buf_free(&buf);
    return ret;
}

static PyObject *AT_put(ATObject *self, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    int sync = 0;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "put(key, value, *, sync=False)");
        return NULL;
    }
    if (kwnames) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            if (PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "sync")) {
                PyErr_SetString(PyExc_TypeError, "put() got an unexpected keyword argument");
                return NULL;
            }
            sync = PyObject_IsTrue(args[nargs + i]);
            if (sync < 0) return NULL;
        }
    }
    return do_put(self, args[0], args[1], sync);
}

static PyObject *AT_put_many(ATObject *self, PyObject *items)
{
    PyObject *seq = PySequence_Fast(items, "put_many expects a sequence of (key, value) pairs");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    /* All or nothing: check every pair and encode every value before the
     * first record goes into the ring. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "put_many items must be (key, value) tuples");
            Py_DECREF(seq);
            return NULL;
        }
        const char *k;
        Py_ssize_t kn;
        const void *vp;
        size_t vn;
        kv_buf tmp;
        Py_buffer view = {0};
        kv_buf_init(&tmp);
        int bad = kvpy_key_arg(PyTuple_GET_ITEM(pair, 0), &k, &kn) < 0 ||
                  encode(self, PyTuple_GET_ITEM(pair, 1), &tmp, &view, &vp, &vn) < 0;
        if (view.obj) PyBuffer_Release(&view);
        kv_buf_free(&tmp);
        if (bad) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    int saved = self->cache_on;
    self->cache_on = 1;   /* stream the whole batch into the ring, then wait once */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "put_many items must be (key, value) tuples");
            goto fail;
        }
        PyObject *r = do_put(self, PyTuple_GET_ITEM(pair, 0), PyTuple_GET_ITEM(pair, 1), 0);
        if (!r) goto fail;
        Py_DECREF(r);
    }
    self->cache_on = saved;
    if (!saved) self->cache_puts = 0;
    Py_DECREF(seq);
    if (enter(self) < 0) return NULL;
    kv_status st;
    Py_BEGIN_ALLOW_THREADS
    st = kv_att_wait(self->a, 0);
    Py_END_ALLOW_THREADS
    at_unlock(self);
    if (st != KV_OK) return raise_st(self, st);
    Py_RETURN_NONE;
fail:
    self->cache_on = saved;
    Py_DECREF(seq);
    return NULL;
}

/* ---- delete / exists / count / keys ---------------------------------------- */

static PyObject *AT_delete(ATObject *self, PyObject *key)
{
    const char *k;
    Py_ssize_t kn;
    if (kvpy_key_arg(key, &k, &kn) < 0 || enter(self) < 0) return NULL;
    int existed = 0;
    kv_status st;
    Py_BEGIN_ALLOW_THREADS
    st = kv_att_delete(self->a, k, (size_t)kn, &existed);
    Py_END_ALLOW_THREADS
    at_unlock(self);
    if (st != KV_OK) return raise_st(self, st);
    return PyBool_FromLong(existed);
}

static PyObject *AT_exists(ATObject *self, PyObject *key)
{
    const char *k;
    Py_ssize_t kn;
    if (kvpy_key_arg(key, &k, &kn) < 0 || enter(self) < 0) return NULL;
    int found = 0;
    kv_status st = kv_att_exists(self->a, k, (size_t)kn, &found);
    at_unlock(self);
    if (st != KV_OK) return raise_st(self, st);
    return PyBool_FromLong(found);
}

static PyObject *AT_count(ATObject *self, PyObject *unused)
{
    if (enter(self) < 0) return NULL;
    int64_t n = 0;
    kv_status st;
    Py_BEGIN_ALLOW_THREADS
    st = kv_att_count(self->a, &n);
    Py_END_ALLOW_THREADS
    at_unlock(self);
    if (st != KV_OK) return raise_st(self, st);
    return PyLong_FromLongLong(n);
}

static PyObject *AT_keys(ATObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"prefix", "limit", NULL};
    PyObject *prefix = Py_None;
    Py_ssize_t limit = 10000;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|On", kwlist, &prefix, &limit)) return NULL;
    const char *pp = NULL;
    Py_ssize_t pn = 0;
    if (prefix != Py_None && kvpy_key_arg(prefix, &pp, &pn) < 0) return NULL;
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    PyObject *last = NULL;
    Py_ssize_t left = limit;
    while (left > 0) {
        size_t want = left < 4096 ? (size_t)left : 4096;
        kv_keys *ks = NULL;
        if (enter(self) < 0) goto fail;
        kv_status st;
        const char *ap = last ? PyBytes_AS_STRING(last) : NULL;
        size_t an = last ? (size_t)PyBytes_GET_SIZE(last) : 0;
        Py_BEGIN_ALLOW_THREADS
        st = kv_att_keys_batch(self->a, pp, (size_t)pn, ap, an, want, &ks);
        Py_END_ALLOW_THREADS
        at_unlock(self);
        if (st != KV_OK) {
            raise_st(self, st);
            goto fail;
        }
        for (size_t i = 0; i < ks->n; i++) {
            PyObject *b = PyBytes_FromStringAndSize((const char *)ks->data + ks->off[i],
                                                    (Py_ssize_t)(ks->off[i + 1] - ks->off[i]));
            if (!b || PyList_Append(list, b) < 0) {
                Py_XDECREF(b);
                kv_keys_free(ks);
                goto fail;
            }
            Py_XSETREF(last, b);
        }
        size_t got = ks->n;
        kv_keys_free(ks);
        left -= (Py_ssize_t)got;
        if (got < want) break;
    }
    Py_XDECREF(last);
    PyObject *it = PyObject_GetIter(list);
    Py_DECREF(list);
    return it;
fail:
    Py_XDECREF(last);
    Py_DECREF(list);
    return NULL;
}

/* ---- streaming ------------------------------------------------------------- */

static int obj_fd(PyObject *f)
{
    PyObject *r = PyObject_CallMethod(f, "fileno", NULL);
    if (!r) {
        PyErr_Clear();
        return -1;
    }
    long fd = PyLong_AsLong(r);
    Py_DECREF(r);
    if (fd < 0 || PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return (int)fd;
}

static PyObject *AT_put_file(ATObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"key", "reader", "size", "chunk_size", NULL};
    PyObject *key, *reader, *size_o = Py_None, *chunk_o = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OO", kwlist, &key, &reader, &size_o, &chunk_o))
        return NULL;
    const char *k;
    Py_ssize_t kn;
    if (kvpy_key_arg(key, &k, &kn) < 0) return NULL;
    size_t chunk = chunk_o == Py_None ? self->chunk_size : (size_t)PyLong_AsSsize_t(chunk_o);
    if (PyErr_Occurred()) return NULL;
    long long size = -1;
    if (size_o != Py_None && (size = PyLong_AsLongLong(size_o)) < 0 && PyErr_Occurred())
        return NULL;
    int fd = obj_fd(reader), own = 0;
    if (fd >= 0) {
        /* flush Python-level buffering, then use the descriptor */
        PyObject *fl = PyObject_CallMethod(reader, "tell", NULL);
        if (fl) {
            long long pos = PyLong_AsLongLong(fl);
            Py_DECREF(fl);
            if (pos >= 0) lseek(fd, pos, SEEK_SET);
        }
        PyErr_Clear();
        if (size < 0) {
            struct stat sb;
            off_t cur = lseek(fd, 0, SEEK_CUR);
            if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && cur >= 0)
                size = (long long)(sb.st_size - cur);
        }
    }
    if (fd < 0 || size < 0) {
        /* no usable descriptor: spool the stream into a memfd */
        fd = memfd_create("kvault-put-file", MFD_CLOEXEC);
        if (fd < 0) return PyErr_SetFromErrno(PyExc_OSError);
        own = 1;
        long long total = 0;
        for (;;) {
            Py_ssize_t want = (Py_ssize_t)chunk;
            if (size >= 0 && size - total < want) want = (Py_ssize_t)(size - total);
            if (size >= 0 && want == 0) break;
            PyObject *b = PyObject_CallMethod(reader, "read", "n", want);
            if (!b) goto fail_own;
            if (!PyBytes_Check(b)) {
                PyErr_Format(PyExc_TypeError, "reader.read() must return bytes, got %.100s",
                             Py_TYPE(b)->tp_name);
                Py_DECREF(b);
                goto fail_own;
            }
            Py_ssize_t n = PyBytes_GET_SIZE(b);
            if (n == 0) { Py_DECREF(b); break; }
            if (write(fd, PyBytes_AS_STRING(b), (size_t)n) != n) {
                Py_DECREF(b);
                PyErr_SetFromErrno(PyExc_OSError);
                goto fail_own;
            }
            Py_DECREF(b);
            total += n;
        }
        /* A stream that ended early keeps the announced size: the writer
         * stores what there is plus a zero tail and reports the short
         * write (API.md §4.6), exactly as embedded mode does. */
        if (size < 0) size = total;
        lseek(fd, 0, SEEK_SET);
    }
    if (enter(self) < 0) goto fail_own;
    kv_status st;
    Py_BEGIN_ALLOW_THREADS
    st = kv_att_put_fd(self->a, k, (size_t)kn, fd, (uint64_t)size, chunk);
    Py_END_ALLOW_THREADS
    at_unlock(self);
    if (own) close(fd);
    if (st != KV_OK) return raise_st(self, st);
    Py_RETURN_NONE;
fail_own:
    if (own) close(fd);
    return NULL;
}

static PyObject *AT_get_to_file(ATObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"key", "writer", "chunk_size", NULL};
    PyObject *key, *writer, *chunk_o = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &key, &writer, &chunk_o))
        return NULL;
    const char *k;
    Py_ssize_t kn;
    if (kvpy_key_arg(key, &k, &kn) < 0) return NULL;
    size_t chunk = chunk_o == Py_None ? self->chunk_size : (size_t)PyLong_AsSsize_t(chunk_o);
    if (PyErr_Occurred()) return NULL;
    int fd = obj_fd(writer), own = 0;
    if (fd >= 0) {
        PyObject *r = PyObject_CallMethod(writer, "flush", NULL);
        Py_XDECREF(r);
        PyErr_Clear();
    } else {
        fd = memfd_create("kvault-get-file", MFD_CLOEXEC);
        if (fd < 0) return PyErr_SetFromErrno(PyExc_OSError);
        own = 1;
    }
    if (enter(self) < 0) {
        if (own) close(fd);
        return NULL;
    }
    uint64_t written = 0;
    kv_status st;
    Py_BEGIN_ALLOW_THREADS
    st = kv_att_get_to_fd(self->a, k, (size_t)kn, fd, chunk, &written);
    Py_END_ALLOW_THREADS
    at_unlock(self);
    if (st != KV_OK) {
        if (own) close(fd);
        return raise_st(self, st);
    }
    if (own) {
        /* hand the spooled bytes to writer.write in chunks */
        lseek(fd, 0, SEEK_SET);
        char *tmp = PyMem_Malloc(chunk ? chunk : 1048576);
        size_t cap = chunk ? chunk : 1048576;
        if (!tmp) { close(fd); return PyErr_NoMemory(); }
        for (;;) {
            ssize_t n = read(fd, tmp, cap);
            if (n <= 0) break;
            PyObject *r = PyObject_CallMethod(writer, "write", "y#", tmp, (Py_ssize_t)n);
            if (!r) { PyMem_Free(tmp); close(fd); return NULL; }
            if (PyLong_Check(r)) {
                Py_ssize_t got = PyLong_AsSsize_t(r);
                if (got >= 0 && got < n) {
                    Py_DECREF(r);
                    PyMem_Free(tmp);
                    close(fd);
                    PyErr_Format(PyExc_OSError, "short write: writer accepted %zd of %zd bytes",
                                 got, (Py_ssize_t)n);
                    return NULL;
                }
            }
            Py_DECREF(r);
        }
        PyMem_Free(tmp);
        close(fd);
    } else {
        /* keep the Python file object's position in step with the fd */
        PyObject *r = PyObject_CallMethod(writer, "seek", "Li", (long long)0, 1);
        Py_XDECREF(r);
        PyErr_Clear();
    }
    return PyLong_FromUnsignedLongLong(written);
}

/* ---- cache, switches, misc ------------------------------------------------- */

static PyObject *wait_committed(ATObject *self, Py_ssize_t *puts)
{
    if (enter(self) < 0) return NULL;
    kv_status st;
    Py_BEGIN_ALLOW_THREADS
    st = kv_att_wait(self->a, 1);
    Py_END_ALLOW_THREADS
    if (puts) {
        *puts = self->cache_puts;
        self->cache_puts = 0;
    }
    at_unlock(self);
    if (st != KV_OK) return raise_st(self, st);
    Py_RETURN_NONE;
}

static PyObject *AT_enable_cache(ATObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"cap_bytes", "flush_threshold", NULL};
    Py_ssize_t cap = 0, thr = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "n|n", kwlist, &cap, &thr)) return NULL;
    if (cap <= 0) {
        PyErr_SetString(PyExc_ValueError, "cap_bytes must be > 0");
        return NULL;
    }
    PyObject *r = wait_committed(self, NULL);
    if (!r) return NULL;
    self->cache_on = 1;
    self->cache_puts = 0;
    return r;
}

static PyObject *AT_disable_cache(ATObject *self, PyObject *unused)
{
    PyObject *r = wait_committed(self, NULL);
    if (!r) return NULL;
    self->cache_on = 0;
    self->cache_puts = 0;
    return r;
}

static PyObject *AT_flush_cache(ATObject *self, PyObject *unused)
{
    if (self->cache_locked) {
        if (!self->a) {
            PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
            return NULL;
        }
        return PyLong_FromLong(0);
    }
    Py_ssize_t puts = 0;
    PyObject *r = wait_committed(self, &puts);
    if (!r) return NULL;
    Py_DECREF(r);
    return PyLong_FromSsize_t(self->cache_on ? puts : 0);
}

static PyObject *AT_sync(ATObject *self, PyObject *unused) { return wait_committed(self, NULL); }

static PyObject *AT_set_cache_locked(ATObject *self, PyObject *flag)
{
    int f = PyObject_IsTrue(flag);
    if (f < 0) return NULL;
    self->cache_locked = f;
    Py_RETURN_NONE;
}

static PyObject *AT_cache_enabled(ATObject *self, PyObject *unused)
{
    return PyBool_FromLong(self->cache_on);
}

static PyObject *AT_enable_auto_pack(ATObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"use_pickle", NULL};
    int up = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p", kwlist, &up)) return NULL;
    self->opts.auto_pack = 1;
    self->opts.use_pickle = up;
    Py_RETURN_NONE;
}

static PyObject *AT_disable_auto_pack(ATObject *self, PyObject *u) { self->opts.auto_pack = 0; Py_RETURN_NONE; }
static PyObject *AT_auto_pack_enabled(ATObject *self, PyObject *u) { return PyBool_FromLong(self->opts.auto_pack); }
static PyObject *AT_enable_headers(ATObject *self, PyObject *u) { self->opts.headers = 1; Py_RETURN_NONE; }
static PyObject *AT_disable_headers(ATObject *self, PyObject *u) { self->opts.headers = 0; Py_RETURN_NONE; }
static PyObject *AT_headers_enabled(ATObject *self, PyObject *u) { return PyBool_FromLong(self->opts.headers); }

typedef kv_status (*req_fn)(kv_att *);

static PyObject *do_request(ATObject *self, req_fn fn)
{
    if (enter(self) < 0) return NULL;
    kv_status st;
    Py_BEGIN_ALLOW_THREADS
    st = fn(self->a);
    Py_END_ALLOW_THREADS
    at_unlock(self);
    if (st != KV_OK) return raise_st(self, st);
    Py_RETURN_NONE;
}

static PyObject *AT_record_feature(ATObject *self, PyObject *name)
{
    const char *n = PyUnicode_AsUTF8(name);
    if (!n || enter(self) < 0) return NULL;
    kv_status st;
    Py_BEGIN_ALLOW_THREADS
    st = kv_att_record_feature(self->a, n);
    Py_END_ALLOW_THREADS
    at_unlock(self);
    if (st != KV_OK) return raise_st(self, st);
    Py_RETURN_NONE;
}

static PyObject *AT_checkpoint(ATObject *self, PyObject *u) { return do_request(self, kv_att_checkpoint); }
static PyObject *AT_optimize(ATObject *self, PyObject *u) { return do_request(self, kv_att_optimize); }

static PyObject *AT_status(ATObject *self, PyObject *u)
{
    char text[4096] = "";
    if (enter(self) < 0) return NULL;
    kv_status st;
    Py_BEGIN_ALLOW_THREADS
    st = kv_att_status(self->a, text, sizeof text);
    Py_END_ALLOW_THREADS
    at_unlock(self);
    if (st != KV_OK) return raise_st(self, st);
    return PyUnicode_FromString(text);
}

static PyObject *AT_close(ATObject *self, PyObject *u)
{
    at_lock(self);
    kv_att *a = self->a;
    self->a = NULL;
    at_unlock(self);
    hot_free(self);
    if (a) {
        kv_status st;
        Py_BEGIN_ALLOW_THREADS
        st = kv_attach_close(a);
        Py_END_ALLOW_THREADS
        (void)st;   /* the writer keeps and commits everything it applied */
    }
    Py_RETURN_NONE;
}

static PyObject *AT_get_closed(ATObject *self, void *u) { return PyBool_FromLong(self->a == NULL); }
static PyObject *AT_get_path(ATObject *self, void *u) { Py_INCREF(self->path); return self->path; }
static PyObject *AT_get_table(ATObject *self, void *u) { Py_INCREF(self->table); return self->table; }
static PyObject *AT_get_generation(ATObject *self, void *u)
{
    return PyLong_FromUnsignedLongLong(self->a ? kv_att_generation(self->a) : 0);
}
/* (segment hits, segment misses, hot-cache hits) of this object. */
static PyObject *AT_counters(ATObject *self, PyObject *u)
{
    uint64_t h = 0, m = 0;
    if (self->a) kv_att_counters(self->a, &h, &m);
    return Py_BuildValue("(KKK)", (unsigned long long)h, (unsigned long long)m,
                         (unsigned long long)self->hot_hits);
}

static PyMethodDef AT_methods[] = {
    {"get", (PyCFunction)AT_get, METH_O, "get(key) -> value; RuntimeError('Key not found')"},
    {"get_or", (PyCFunction)(void (*)(void))AT_get_or, METH_FASTCALL, "get_or(key, default)"},
    {"put", (PyCFunction)(void (*)(void))AT_put, METH_FASTCALL | METH_KEYWORDS,
     "put(key, value, *, sync=False): returns when applied (sync: committed)"},
    {"put_many", (PyCFunction)AT_put_many, METH_O, "put_many([(key, value), ...])"},
    {"delete", (PyCFunction)AT_delete, METH_O, "delete(key) -> bool"},
    {"exists", (PyCFunction)AT_exists, METH_O, "exists(key) -> bool"},
    {"count", (PyCFunction)AT_count, METH_NOARGS, "count() -> int (after a commit)"},
    {"keys", (PyCFunction)(void (*)(void))AT_keys, METH_VARARGS | METH_KEYWORDS,
     "keys(prefix=None, limit=10000) -> iterator of bytes (after a commit)"},
    {"put_file", (PyCFunction)(void (*)(void))AT_put_file, METH_VARARGS | METH_KEYWORDS,
     "put_file(key, reader, size=None, chunk_size=None): the writer streams the fd"},
    {"get_to_file", (PyCFunction)(void (*)(void))AT_get_to_file, METH_VARARGS | METH_KEYWORDS,
     "get_to_file(key, writer, chunk_size=None) -> bytes written"},
    {"enable_cache", (PyCFunction)(void (*)(void))AT_enable_cache, METH_VARARGS | METH_KEYWORDS,
     "batch puts into the ring without waiting"},
    {"disable_cache", (PyCFunction)AT_disable_cache, METH_NOARGS, "wait for commit, stop batching"},
    {"flush_cache", (PyCFunction)AT_flush_cache, METH_NOARGS, "wait for commit -> puts since last flush"},
    {"sync", (PyCFunction)AT_sync, METH_NOARGS, "wait until every applied write is committed"},
    {"set_cache_locked", (PyCFunction)AT_set_cache_locked, METH_O, "set_cache_locked(flag)"},
    {"cache_enabled", (PyCFunction)AT_cache_enabled, METH_NOARGS, "-> bool"},
    {"enable_auto_pack", (PyCFunction)(void (*)(void))AT_enable_auto_pack,
     METH_VARARGS | METH_KEYWORDS, "auto-pack on"},
    {"disable_auto_pack", (PyCFunction)AT_disable_auto_pack, METH_NOARGS, "auto-pack off"},
    {"auto_pack_enabled", (PyCFunction)AT_auto_pack_enabled, METH_NOARGS, "-> bool"},
    {"enable_headers", (PyCFunction)AT_enable_headers, METH_NOARGS, "headers on"},
    {"disable_headers", (PyCFunction)AT_disable_headers, METH_NOARGS, "headers off"},
    {"headers_enabled", (PyCFunction)AT_headers_enabled, METH_NOARGS, "-> bool"},
    {"record_feature", (PyCFunction)AT_record_feature, METH_O, "via the writer"},
    {"checkpoint", (PyCFunction)AT_checkpoint, METH_NOARGS, "WAL checkpoint by the writer"},
    {"optimize", (PyCFunction)AT_optimize, METH_NOARGS, "PRAGMA optimize; VACUUM by the writer"},
    {"status", (PyCFunction)AT_status, METH_NOARGS, "the writer's STATUS text"},
    {"counters", (PyCFunction)AT_counters, METH_NOARGS, "(segment hits, segment misses, hot-cache hits) of this object"},
    {"close", (PyCFunction)AT_close, METH_NOARGS, "wait for commit, detach; idempotent"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef AT_getset[] = {
    {"closed", (getter)AT_get_closed, NULL, "True after close()", NULL},
    {"path", (getter)AT_get_path, NULL, "the path given to the constructor", NULL},
    {"table", (getter)AT_get_table, NULL, "the table name", NULL},
    {"generation", (getter)AT_get_generation, NULL, "writer generation attached to", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ATType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kohakuvault._kvault._AttachedKVault",
    .tp_basicsize = sizeof(ATObject),
    .tp_dealloc = (destructor)AT_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "KVault attached to a kvault-writer (shared mode); same methods as _KVault.",
    .tp_methods = AT_methods,
    .tp_getset = AT_getset,
    .tp_init = (initproc)AT_init,
    .tp_new = AT_new,
};

static PyObject *mod_attach_served(PyObject *m, PyObject *args)
{
    PyObject *pathb = NULL;
    const char *table = "kv";
    if (!PyArg_ParseTuple(args, "O&|s", PyUnicode_FSConverter, &pathb, &table)) return NULL;
    int r = kv_attach_served(PyBytes_AS_STRING(pathb), table);
    Py_DECREF(pathb);
    return PyBool_FromLong(r);
}

static PyMethodDef mod_methods[] = {
    {"_attach_served", mod_attach_served, METH_VARARGS,
     "_attach_served(path, table='kv') -> bool: a kvault-writer serves this file and table"},
    {NULL, NULL, 0, NULL},
};

int kvpy_init_attach(PyObject *module)
{
    if (PyType_Ready(&ATType) < 0) return -1;
    Py_INCREF(&ATType);
    if (PyModule_AddObject(module, "_AttachedKVault", (PyObject *)&ATType) < 0) {
        Py_DECREF(&ATType);
        return -1;
    }
    return PyModule_AddFunctions(module, mod_methods);
}
