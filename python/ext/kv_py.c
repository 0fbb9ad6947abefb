/*
 * kv_py.c - kohakuvault._kvault._KVault, the native half of KVault
 * (behaviour: docs/api.md §3-§4), its key
 * iterator _KVaultKeys, the dict KV_DEFAULTS and _attach_served().
 *
 * One type over three backends (kv_backend.h): `_KVault(path, ...)` opens
 * the file embedded (kv_embedded.c, libkvault in this process),
 * `_KVault(path, ..., attach=True)` attaches to the kvault-writer serving it
 * (kv_attached.c, shared mode), `attach=2` routes the writes of a table the
 * writer does not serve through it (kv_routed.c). This file converts
 * arguments, encodes and decodes values (auto-pack), serialises calls and
 * raises exceptions; the backend stores.
 *
 * Calls are serialised by a per-object leaf mutex; it is acquired without
 * holding the GIL when contended (so a thread that holds it can always get
 * the GIL back), and backend operations that may wait run with the GIL
 * released (kv_backend.h says which ones keep it). `fork.busy` tells a thread
 * holding the GIL whether another one is inside the backend.
 *
 * Hot get path: no allocation besides the result object. Attached, a hit of
 * the hot-value cache (kv_hot.h) is answered before the lock and before any
 * call through the backend table. Otherwise the value is borrowed from the
 * backend (SQLite's row, the segment) and copied straight into the new
 * bytes/str/int/... object; values that need Python code to decode (pickle,
 * json) are first copied into bytes so that no Python code runs while the
 * value or the mutex is held.
 */
#include "kvpy.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pythread.h"
#include "kv_backend.h"
#include "kv_hot.h"

typedef struct KVObject {
    PyObject_HEAD
    void *h;                   /* backend handle, owned; NULL once closed */
    const kvb_ops *ops;        /* backend of h */
    kvpy_fork_node fork;       /* leaf mutex, its holder, fork state (forksafe.c) */
    kvhot *hot;                /* owned hot-value cache, or NULL */
    int write_flags;           /* KVB_PUT_PIPELINED, KVB_PUT_SYNC ("replicated") or 0:
                                  the object's write mode */
    kvpy_pack_opts opts;       /* §3.6 switches */
    size_t chunk_size;         /* default streaming chunk, bytes */
    PyObject *path;            /* owned str */
    PyObject *table;           /* owned str */
    /* "auto" mode (docs/shared-mode.md, "Objects opened before the writer",
     * "When the writer stops"): the object follows the writer of its file */
    int route;                 /* nonzero: kv_reroute may swap the backend */
    int guarded;               /* embedded or "auto": kv_reroute runs after a call */
    int cache_locked;          /* the write-back cache's lock flag, carried over a swap */
    char *cpath;               /* owned: the path as opened */
    char *ctable;              /* owned: o.table */
    char *reg;                 /* owned: registry path of the file */
    kv_open_opts o;            /* the open options, to open the other backend */
    kv_commit_guard guard;     /* embedded: refuses commits while a writer holds reg */
    kv_exec *probe;            /* "auto" mode: whether a writer serves the file (any table) */
    char route_err[512];       /* why kv_reroute's replay failed ("" if it did not): the
                                  text raise_status gives, once */
} KVObject;

static PyTypeObject KVType;
static PyTypeObject KVKeysType;

#define CLOSED_MSG "Cannot operate on closed KVault"

/* ======================================================================
 * Locking, errors, calls into the backend
 * ==================================================================== */

/* The GIL is held on return of kv_lock and on entry to kv_unlock.
 * Returns 0, or -1 with RuntimeError when the calling thread holds the lock
 * already: Python code run inside a call (a put_file reader, a get_to_file
 * writer, a finalizer or signal handler they trigger) called this object
 * again, which would otherwise wait for itself forever. */
static inline int kv_lock(KVObject *s)
{
    if (s->fork.busy && s->fork.owner == PyThread_get_thread_ident()) {
        PyErr_SetString(PyExc_RuntimeError,
                        "KVault re-entered from inside one of its own calls "
                        "(e.g. from a put_file reader or get_to_file writer)");
        return -1;
    }
    kvpy_fork_lock(&s->fork);
    return 0;
}

static inline void kv_unlock(KVObject *s)
{
    kvpy_fork_unlock(&s->fork);
}

static inline int check_open(KVObject *s)
{
    if (!s->h) {
        PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
        return -1;
    }
    return 0;
}

/* Take the lock of an open object: 0, or -1 with ValueError (closed; lock
 * free) or RuntimeError (re-entered, see kv_lock). */
static inline int kv_enter(KVObject *s)
{
    if (kv_lock(s) < 0)
        return -1;
    if (!s->h) {
        kv_unlock(s);
        PyErr_SetString(PyExc_ValueError, CLOSED_MSG);
        return -1;
    }
    if (kvpy_fork_rehome(&s->fork) < 0) {
        kv_unlock(s);
        return -1;
    }
    return 0;
}

/* Raise the Python exception for status `st` (errors_py.c's table) with the
 * handle's error text and errno. The lock is held and the handle open. */
static PyObject *raise_status(KVObject *s, kv_status st)
{
    /* a handle's message may be stale after a "not found" outcome */
    const char *msg = st == KV_NOTFOUND ? NULL : s->route_err[0] ? s->route_err
                                                                  : s->ops->errmsg(s->h);
    PyObject *r = kvpy_raise_status(st, msg, s->ops->os_errno ? s->ops->os_errno(s->h) : 0);
    s->route_err[0] = 0;
    return r;
}

/* Raise for a failed st (lock held), release the lock; returns st. */
static inline kv_status kv_leave(KVObject *s, kv_status st)
{
    if (st != KV_OK)
        raise_status(s, st);
    kv_unlock(s);
    return st;
}

static int kv_reroute(KVObject *s, kv_status *st);
static int route_init(KVObject *s, int route);

/* Times one call may be run again on another backend (kv_reroute). */
#define KV_REROUTES 4

/* Run the backend call `call` (a kv_status expression over self->h and
 * self->ops, evaluated again after a backend swap) under the lock, with the
 * GIL released when `blocks` is nonzero. In "auto" mode kv_reroute may swap
 * the backend after the call and have it run again. `st` receives its
 * status; on failure the exception is set (ValueError with st = KV_CLOSED
 * when the object is closed). */
#define KV_CALL(self, st, blocks, call)                                              \
    do {                                                                             \
        if (kv_enter(self) < 0) {                                                    \
            (st) = KV_CLOSED;                                                        \
            break;                                                                   \
        }                                                                            \
        for (int kv_run_ = 0;; kv_run_++) {                                          \
            if (blocks) {                                                            \
                Py_BEGIN_ALLOW_THREADS                                               \
                (st) = (call);                                                       \
                Py_END_ALLOW_THREADS                                                 \
            } else {                                                                 \
                (st) = (call);                                                       \
            }                                                                        \
            if (!(self)->guarded || kv_run_ >= KV_REROUTES || !kv_reroute((self), &(st))) \
                break;                                                               \
        }                                                                            \
        kv_leave((self), (st));                                                      \
    } while (0)

static inline PyObject *none_unless(kv_status st)
{
    if (st != KV_OK)
        return NULL;
    Py_RETURN_NONE;
}

/* A status for an operation the backend does not have. */
static PyObject *unsupported(KVObject *s, const char *what)
{
    PyErr_Format(PyExc_RuntimeError, "%s: not available on an %s KVault (%s)", what,
                 s->ops->name, kv_strerror(KV_UNSUPPORTED));
    return NULL;
}

/* The decoding options, as the hot-value cache tags its copies. */
static inline uint32_t pack_optk(const kvpy_pack_opts *o)
{
    return (uint32_t)((o->auto_pack != 0) | (o->headers != 0) << 1 | (o->use_pickle != 0) << 2 |
                      (o->no_pickle != 0) << 3);
}

/* A chunk_size argument: None -> the object's default; else a positive int. */
static int chunk_arg(KVObject *s, PyObject *o, size_t *chunk)
{
    *chunk = s->chunk_size;
    if (o == Py_None)
        return 0;
    Py_ssize_t c = PyLong_AsSsize_t(o);
    if (c == -1 && PyErr_Occurred())
        return -1;
    if (c <= 0) {
        PyErr_SetString(PyExc_ValueError, "chunk_size must be positive");
        return -1;
    }
    *chunk = (size_t)c;
    return 0;
}

/* The write modes (docs/shared-mode.md, "Write modes"): name -> flags. */
static const struct {
    const char *name;
    int flags;
} write_modes[] = {{"applied", 0}, {"pipelined", KVB_PUT_PIPELINED}, {"replicated", KVB_PUT_SYNC}};

#define WRITE_MODE_MSG "write_mode must be 'applied', 'pipelined' or 'replicated', got %R"

/* The end of a write in the object's write mode: "replicated" returns once
 * the write is committed (ops->sync; in a cluster, once a quorum stored it).
 * put carries KVB_PUT_SYNC itself; put_many and delete take only
 * KVB_PUT_PIPELINED, so they sync after. */
#define KV_WRITE_END(self, st)                                                     \
    do {                                                                           \
        if ((st) == KV_OK && ((self)->write_flags & KVB_PUT_SYNC))                  \
            KV_CALL((self), (st), 1, (self)->ops->sync((self)->h));                \
    } while (0)

/* A write_mode argument into *flags; None leaves *flags as it is. 0, or -1
 * with ValueError. */
static int write_mode_arg(PyObject *o, int *flags)
{
    if (o == Py_None)
        return 0;
    for (size_t i = 0; PyUnicode_Check(o) && i < sizeof write_modes / sizeof *write_modes; i++) {
        if (PyUnicode_CompareWithASCIIString(o, write_modes[i].name) == 0) {
            *flags = write_modes[i].flags;
            return 0;
        }
    }
    PyErr_Format(PyExc_ValueError, WRITE_MODE_MSG, o);
    return -1;
}

/* ======================================================================
 * Construction
 * ==================================================================== */

static int KV_init(KVObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"path", "table", "chunk_size", "enable_wal", "page_size",
                             "mmap_size", "cache_kb", "read_cache_bytes", "attach",
                             "write_mode", "route", NULL};
    kv_open_opts o;
    kv_open_opts_default(&o);
    PyObject *pathb = NULL;
    Py_ssize_t chunk = (Py_ssize_t)o.chunk_size;
    Py_ssize_t read_cache = (Py_ssize_t)o.read_cache_bytes;
    long long mmap = o.mmap_size, cache_kb = o.cache_kb;
    int attach = 0, write_flags = 0, route = 0;
    PyObject *write_mode = Py_None;
    char err[512] = "";

    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&|snpiLL$niOi", kwlist, PyUnicode_FSConverter,
                                     &pathb, &o.table, &chunk, &o.enable_wal, &o.page_size,
                                     &mmap, &cache_kb, &read_cache, &attach, &write_mode, &route))
        return -1;
    if (write_mode_arg(write_mode, &write_flags) < 0) {
        Py_DECREF(pathb);
        return -1;
    }
    const char *bad = self->h ? "_KVault already initialised"
                      : attach < 0 || attach > 2 ? "attach must be 0, 1 (attached) or 2 (routed)"
                      : chunk <= 0 ? "chunk_size must be positive"
                      : read_cache < 0 ? "read_cache_bytes must be >= 0" : NULL;
    if (bad) {
        Py_DECREF(pathb);
        PyErr_SetString(self->h ? PyExc_RuntimeError : PyExc_ValueError, bad);
        return -1;
    }
    o.mmap_size = mmap;
    o.cache_kb = cache_kb;
    o.chunk_size = (size_t)chunk;
    o.read_cache_bytes = (size_t)read_cache;
    const kvb_ops *ops = attach == 2 ? &kvb_routed : attach ? &kvb_attached : &kvb_embedded;
    const char *path = PyBytes_AS_STRING(pathb);
    void *h = NULL;
    kv_status st;
    Py_BEGIN_ALLOW_THREADS
    st = ops->open(path, &o, route, &h, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        Py_DECREF(pathb);
        /* through the table: a file locked at open is a BusyError, which
         * KVault's busy-retry loop retries */
        kvpy_raise_status(st, err, 0);
        return -1;
    }
    Py_XSETREF(self->path, PyUnicode_DecodeFSDefaultAndSize(path, PyBytes_GET_SIZE(pathb)));
    Py_XSETREF(self->table, PyUnicode_FromString(o.table));
    kvhot *hot = NULL;
    if (self->path && self->table && ops->hot_new && read_cache > 0)
        hot = ops->hot_new(h, (size_t)read_cache);
    if (!self->path || !self->table || (ops->hot_new && read_cache > 0 && !hot)) {
        Py_DECREF(pathb);
        ops->close(h);
        return -1;
    }
    self->h = h;
    self->ops = ops;
    self->fork.bounded_wait = ops != &kvb_embedded;
    self->hot = hot;
    /* what opening the handle again needs (another backend, a forked child) */
    self->cpath = strdup(path);
    self->ctable = strdup(o.table);
    self->reg = kvb_attached_registry(path);
    Py_DECREF(pathb);   /* `path` points into it */
    self->o = o;
    self->o.table = self->ctable;
    /* every embedded object is guarded (a dead writer's records first,
     * docs/shared-mode.md "Recovery"); "auto" ones follow the writer too */
    if ((route || attach != 1) && route_init(self, route) == 0 && ops->set_guard)
        ops->set_guard(h, &self->guard);
    self->write_flags = write_flags;
    self->chunk_size = (size_t)chunk;
    self->opts.auto_pack = 1;
    self->opts.headers = 1;
    self->opts.use_pickle = 1;
    return 0;
}

/* kvpy_fork_node.rehome: first call of an object in a forked child (lock
 * and GIL held): an embedded or routed object opens its own handle of the
 * file and leaks the parent's (forksafe.c); the write-back cache switch is
 * kept, its entries stay the parent's to write. 0, or -1 with the exception set. */
static int kv_rehome(PyObject *obj)
{
    KVObject *s = (KVObject *)obj;
    const kvb_ops *ops = s->ops;
    if (ops == &kvb_attached)
        return 0;   /* attached: kv_attach re-homes the handle itself */
    if (!s->cpath || !s->ctable) {
        PyErr_NoMemory();
        return -1;
    }
    void *old = s->h, *h = NULL;
    char err[512] = "";
    kv_status st;
    int cache_on = ops->cache_enabled(old);
    Py_BEGIN_ALLOW_THREADS
    st = ops->open(s->cpath, &s->o, s->route, &h, err, sizeof err);
    if (st == KV_OK && cache_on)
        ops->cache_enable(h, KVB_DEFAULT_CACHE_CAP_BYTES, KVB_DEFAULT_CACHE_FLUSH_THRESHOLD);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        kvpy_raise_status(st, err, 0);
        return -1;
    }
    s->h = h;
    if (cache_on)
        ops->cache_set_locked(h, s->cache_locked);
    if (s->guarded)
        ops->set_guard(h, &s->guard);
    return 0;
}

static PyObject *KV_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    KVObject *self = (KVObject *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->ops = &kvb_embedded;
    if (kvpy_fork_track(&self->fork, (PyObject *)self, kv_rehome) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* Detach the handle and the hot cache from the object (lock held), free the
 * cache, close the handle with the GIL released. Returns the close status. */
static kv_status kv_detach(KVObject *self)
{
    void *h = self->h;
    kvhot *hot = self->hot;
    kv_status st = KV_OK;
    self->h = NULL;      /* marked closed even if the flush fails */
    self->hot = NULL;
    kvhot_free(hot);
    if (h && self->fork.forked && self->ops != &kvb_attached)
        h = NULL;   /* a forked child's inherited connection: the parent's, leaked */
    if (h) {
        /* the write-back cache is written, never dropped, writer or not */
        self->guard.bypass = 1;
        Py_BEGIN_ALLOW_THREADS
        st = self->ops->close(h);
        Py_END_ALLOW_THREADS
    }
    return st;
}

/* ======================================================================
 * "auto" mode: following the writer (docs/shared-mode.md)
 * ==================================================================== */

/* How long a write of an embedded object waits for a writer that holds the
 * registry to become ready before it fails busy (KVault retries busy calls). */
#define ROUTE_WAIT_MS 10000
#define ROUTE_POLL_US 20000

/* Commit guard of an embedded object: refuse while a dead writer's records
 * are not replayed (any mode) or, in "auto" mode, while a writer holds the
 * registry for our table or serves the file for another one (runs inside
 * SQLite's write lock, GIL or not). */
static int route_check(void *ctx)
{
    KVObject *s = ctx;
    return (s->route &&
            (kvb_attached_locked(s->reg, s->ctable) || kvb_routed_served(s->probe))) ||
           kvb_attached_recover_pending(s->reg, s->ctable);
}

/* Keep what opening the other backend and replaying a dead writer need
 * (`route`: "auto" mode). 0, or -1 (no registry: plain files only; the
 * object then stays where it is, unguarded). */
static int route_init(KVObject *s, int route)
{
    if (!s->cpath || !s->ctable || !s->reg)
        return -1;
    s->guard.check = route_check;
    s->guard.ctx = s;
    s->route = route;
    s->guarded = 1;
    if (route && !s->probe)
        s->probe = kvb_routed_probe(s->cpath);   /* NULL: no registry, never served */
    return 0;
}

/* Replace the object's handle by `h` of `ops` (lock and GIL held). The old
 * handle is closed after the swap (embedded: its write-back cache is written
 * directly, as close() writes it); the write-back cache switch is carried
 * over with the default sizes, and the hot-value cache follows the backend. */
static void kv_swap(KVObject *s, const kvb_ops *ops, void *h)
{
    void *old = s->h;
    const kvb_ops *oops = s->ops;
    int cache_on = oops->cache_enabled(old);
    kvhot_free(s->hot);
    s->hot = NULL;
    s->h = h;
    s->ops = ops;
    s->fork.bounded_wait = ops != &kvb_embedded;
    s->guard.bypass = 1;
    Py_BEGIN_ALLOW_THREADS
    oops->close(old);
    if (cache_on)
        ops->cache_enable(h, KVB_DEFAULT_CACHE_CAP_BYTES, KVB_DEFAULT_CACHE_FLUSH_THRESHOLD);
    Py_END_ALLOW_THREADS
    s->guard.bypass = 0;
    if (cache_on)
        ops->cache_set_locked(h, s->cache_locked);
    if (ops->set_guard)
        ops->set_guard(h, &s->guard);
    if (ops->hot_new && s->o.read_cache_bytes > 0 && !(s->hot = ops->hot_new(h, s->o.read_cache_bytes)))
        PyErr_Clear();   /* the object works without it */
}

/* `route` of an object opened with shared="spawn": as "auto", and a writer
 * that died under an attached object is replaced (kvb_spawn_writer). */
#define ROUTE_SPAWN 2

int kvb_spawn_writer(const char *cpath, const char *table)
{
#if PY_VERSION_HEX >= 0x030D0000
    if (Py_IsFinalizing())
#else
    if (_Py_IsFinalizing())
#endif
        return 0;
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *mod = PyImport_ImportModule("kohakuvault.proxy");
    PyObject *path = mod ? PyUnicode_DecodeFSDefault(cpath) : NULL;
    PyObject *r = path ? PyObject_CallMethod(mod, "_spawn_writer", "Os", path, table) : NULL;
    Py_XDECREF(path);
    Py_XDECREF(mod);
    int returned = r != NULL;
    if (!r)
        PyErr_Clear();
    Py_XDECREF(r);
    PyGILState_Release(g);
    return returned && kvb_attached_served(cpath, table);
}

/* After a call of an object in "auto" mode (lock and GIL held): 1 when the
 * backend was swapped and the call must run again, else 0 (*st may turn
 * into KV_BUSY).
 *   embedded, a commit refused by the guard: a dead writer's records are
 *     not replayed -> replay them (kv_attach_recover), run the call again;
 *     a writer holds the registry ("auto" mode) -> attach, waiting up to
 *     ROUTE_WAIT_MS for the writer to be ready; a writer that serves the
 *     file for another table -> routed (kv_routed.c); if it goes away
 *     instead, run the call embedded again;
 *   attached, the writer stopped cleanly or died (its handle replayed the
 *     dead writer and committed what it had queued): continue embedded;
 *     run the call again if it failed. In "spawn" mode a writer that died
 *     is replaced first (kvb_spawn_writer) and the object attaches to it. */
static int kv_reroute(KVObject *s, kv_status *st)
{
    void *h = NULL;
    char err[512];
    kv_status ost;
    if (s->ops == &kvb_embedded) {
        if (*st == KV_OK || !s->guard.refused)
            return 0;
        s->guard.refused = 0;
        if (kvb_attached_recover_pending(s->reg, s->ctable)) {
            Py_BEGIN_ALLOW_THREADS
            ost = kvb_attached_recover(s->cpath, s->ctable, err, sizeof err);
            Py_END_ALLOW_THREADS
            if (ost == KV_OK)
                return 1;
            snprintf(s->route_err, sizeof s->route_err, "%s", err);
            *st = ost;
            return 0;
        }
        if (!s->route)
            return 1;   /* the writer replayed meanwhile */
        uint64_t deadline = kvpy_now_ms() + ROUTE_WAIT_MS;
        for (;;) {
            int locked;
            Py_BEGIN_ALLOW_THREADS
            ost = kvb_attached.open(s->cpath, &s->o, 1, &h, err, sizeof err);
            locked = ost == KV_OK || kvb_attached_locked(s->reg, s->ctable);
            if (ost != KV_OK && locked)
                usleep(ROUTE_POLL_US);
            Py_END_ALLOW_THREADS
            if (ost == KV_OK) {
                kv_swap(s, &kvb_attached, h);
                return 1;
            }
            if (!locked && kvb_routed_served(s->probe)) {
                Py_BEGIN_ALLOW_THREADS
                ost = kvb_routed.open(s->cpath, &s->o, 1, &h, err, sizeof err);
                Py_END_ALLOW_THREADS
                if (ost == KV_OK)
                    kv_swap(s, &kvb_routed, h);
                return 1;
            }
            if (!locked)
                return 1;
            if (kvpy_now_ms() >= deadline) {
                *st = KV_BUSY;
                return 0;
            }
        }
    }
    int stopped;
    if (!s->route || !s->ops->stopped || !(stopped = s->ops->stopped(s->h)))
        return 0;
    if (s->route == ROUTE_SPAWN && stopped == 2 && kvb_spawn_writer(s->cpath, s->ctable)) {
        Py_BEGIN_ALLOW_THREADS
        ost = kvb_attached.open(s->cpath, &s->o, s->route, &h, err, sizeof err);
        Py_END_ALLOW_THREADS
        if (ost == KV_OK) {
            kv_swap(s, &kvb_attached, h);
            return *st != KV_OK;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    ost = kvb_embedded.open(s->cpath, &s->o, 1, &h, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (ost != KV_OK)
        return 0;   /* stays attached; its reads go to its own connection */
    kv_swap(s, &kvb_embedded, h);
    return *st != KV_OK;
}

static void KV_dealloc(KVObject *self)
{
    /* off the fork list first: a fork while the handle closes (GIL
     * released) must not take a reference to this dying object */
    kvpy_fork_untrack(&self->fork);   /* keeps `forked` for kv_detach */
    kv_detach(self);     /* flushes (never drops) and closes */
    free(self->cpath);
    free(self->ctable);
    free(self->reg);
    kvb_routed_probe_free(self->probe);
    Py_XDECREF(self->path);
    Py_XDECREF(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *KV_close(KVObject *self, PyObject *unused)
{
    if (kv_lock(self) < 0)
        return NULL;
    kv_status st = kv_detach(self);
    kv_unlock(self);
    if (st != KV_OK) {
        PyErr_Format(PyExc_RuntimeError, "close: cache flush failed: %s", kv_strerror(st));
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ======================================================================
 * get / get_or
 * ==================================================================== */

/* Count hits of the hot-value cache in the attach layer's reports. Called
 * with the GIL held and the lock free (busy == 0), so it does not wait. */
static void hot_report(KVObject *self)
{
    if (kv_lock(self) < 0) { /* not reached: callers check busy first */
        PyErr_Clear();
        return;
    }
    if (self->hot)
        kvhot_report(self->hot);
    kv_unlock(self);
}

/* kvb_ops.get_into's allocation: the Python bytes object the value is
 * read into; a later call (an attached read retried) drops the object of
 * the previous one. `ts` is the saved thread state while the GIL is
 * released (NULL: it is held). The GIL taken for the allocation is
 * released again only for a value of KV_GET_DIRECT_MIN bytes or more (read
 * from the file next); a shorter one is a copy from memory, cheaper than
 * giving the GIL back (measured: 100 B gets from SQLite ~4% slower with
 * the extra release). On failure MemoryError is left set. */
typedef struct {
    PyThreadState *ts;
    PyObject *bytes;
} get_into_ctx;

static void *get_into_alloc(void *ctx, size_t n)
{
    get_into_ctx *c = ctx;
    if (c->ts)
        PyEval_RestoreThread(c->ts);
    Py_CLEAR(c->bytes);
    c->bytes = n > (size_t)PY_SSIZE_T_MAX ? PyErr_NoMemory()
                                          : PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
    if (c->ts)
        c->ts = c->bytes && n >= KV_GET_DIRECT_MIN ? PyEval_SaveThread() : NULL;
    return c->bytes ? PyBytes_AS_STRING(c->bytes) : NULL;
}

/* do_get through get_into, after the memory-only caches missed: the value
 * lands once in a bytes object, returned as it is when it has no auto-pack
 * header. With `tokp` (a hot-value cache; `hash` its key hash) the result
 * is kept there when the backend gives a token. Same returns as do_get;
 * takes the lock from kv_enter. */
static PyObject *get_via_into(KVObject *self, PyObject *key, const char *k, Py_ssize_t kn,
                              uint64_t hash, uint64_t *tokp, int *missing)
{
    const kvb_ops *ops = self->ops;
    get_into_ctx c = {NULL, NULL};
    size_t vn = 0;
    kv_status st;
    if (ops->get_blocks && ops->get_blocks(self->h)) {
        c.ts = PyEval_SaveThread();
        st = ops->get_into(self->h, k, (size_t)kn, hash, get_into_alloc, &c, &vn, tokp);
        if (c.ts) /* not taken back by get_into_alloc */
            PyEval_RestoreThread(c.ts);
    } else {
        st = ops->get_into(self->h, k, (size_t)kn, hash, get_into_alloc, &c, &vn, tokp);
    }
    if (st != KV_OK) {
        Py_XDECREF(c.bytes);
        if (PyErr_Occurred()) { /* the bytes object could not be allocated */
            kv_unlock(self);
            return NULL;
        }
        *missing = st == KV_NOTFOUND;
        kv_leave(self, *missing ? KV_OK : st);
        return NULL;
    }
    kv_unlock(self);
    uint8_t enc;
    const uint8_t *p;
    size_t pn;
    PyObject *r = c.bytes;
    if (self->opts.auto_pack &&
        kv_hdr_parse(PyBytes_AS_STRING(c.bytes), vn, &enc, &p, &pn) != KV_HDR_NONE) {
        r = kvpy_unpack_value(PyBytes_AS_STRING(c.bytes), vn, &self->opts);
        Py_DECREF(c.bytes);
        if (!r)
            kvpy_name_decode_error("key %R", key);
    }
    if (r && tokp && *tokp && self->hot)
        kvhot_keep(self->hot, hash, k, kn, r, vn, *tokp, pack_optk(&self->opts));
    return r;
}

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
    uint64_t hash = 0, token = 0;

    *missing = 0;
    if (kvpy_key_arg(key, &k, &kn) < 0)
        return NULL;
    kvhot *hot = self->hot;
    if (hot) {
        hash = kvhot_hash(k, kn);
        if (!self->fork.busy && (r = kvhot_lookup(hot, hash, k, kn, pack_optk(&self->opts)))) {
            if (hot->hits - hot->reported >= KVHOT_REPORT_EVERY)
                hot_report(self);
            return r;
        }
    }
    if (kv_enter(self) < 0)
        return NULL;
    const kvb_ops *ops = self->ops;
    uint64_t *tokp = hot ? &token : NULL;
    if (ops->get_cached && ops->get_cached(self->h, k, (size_t)kn, &v, &vn)) {
        st = KV_OK;            /* memory only: GIL kept */
    } else if (ops->get_into) {
        return get_via_into(self, key, k, kn, hash, tokp, missing);
    } else if (ops->get_blocks && ops->get_blocks(self->h)) {
        Py_BEGIN_ALLOW_THREADS
        st = ops->get(self->h, k, (size_t)kn, hash, &v, &vn, tokp);
        Py_END_ALLOW_THREADS
    } else {
        st = ops->get(self->h, k, (size_t)kn, hash, &v, &vn, tokp);
    }
    if (st != KV_OK) {
        *missing = st == KV_NOTFOUND;
        kv_leave(self, *missing ? KV_OK : st);
        return NULL;
    }
    if (kvpy_unpack_needs_python(v, vn, &self->opts)) {
        /* Copy out; decode after releasing the value and the mutex. */
        PyObject *b = PyBytes_FromStringAndSize(v, (Py_ssize_t)vn);
        if (ops->get_done)
            ops->get_done(self->h);
        kv_unlock(self);
        if (!b)
            return NULL;
        r = kvpy_unpack_value(PyBytes_AS_STRING(b), vn, &self->opts);
        Py_DECREF(b);
    } else {
        if (!self->opts.auto_pack)
            r = PyBytes_FromStringAndSize(v, (Py_ssize_t)vn);
        else
            r = kvpy_unpack_value(v, vn, &self->opts);
        if (ops->get_done)
            ops->get_done(self->h);
        kv_unlock(self);
    }
    if (!r)
        kvpy_name_decode_error("key %R", key);
    if (r && token && self->hot)
        kvhot_keep(self->hot, hash, k, kn, r, vn, token, pack_optk(&self->opts));
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

/* Store key -> value with the backend's put (flags: KVB_PUT_*). */
static PyObject *do_put(KVObject *self, PyObject *key, PyObject *value, int flags)
{
    const char *k;
    Py_ssize_t kn;
    kv_buf buf;
    Py_buffer view;
    const void *v;
    size_t vn;
    kv_status st;

    if (check_open(self) < 0 || kvpy_key_arg(key, &k, &kn) < 0)
        return NULL;
    kv_buf_init(&buf);
    if (encode_value(self, value, &buf, &view, &v, &vn) < 0) {
        kv_buf_free(&buf);
        return NULL;
    }
    KV_CALL(self, st, 1, self->ops->put(self->h, k, (size_t)kn, v, vn, flags));
    if (view.obj)
        PyBuffer_Release(&view);
    kv_buf_free(&buf);
    return none_unless(st);
}

static PyObject *KV_put(KVObject *self, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    int sync = 0, flags = self->write_flags;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "put(key, value, *, sync=False) takes exactly 2 "
                                         "positional arguments");
        return NULL;
    }
    for (Py_ssize_t i = 0; kwnames && i < PyTuple_GET_SIZE(kwnames); i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i), *v = args[nargs + i];
        if (!PyUnicode_CompareWithASCIIString(name, "sync")) {
            if ((sync = PyObject_IsTrue(v)) < 0)
                return NULL;
        } else if (!PyUnicode_CompareWithASCIIString(name, "write_mode")) {
            if (write_mode_arg(v, &flags) < 0)
                return NULL;
        } else {
            PyErr_SetString(PyExc_TypeError, "put() got an unexpected keyword argument");
            return NULL;
        }
    }
    return do_put(self, args[0], args[1], flags | (sync ? KVB_PUT_SYNC : 0));
}

/* Append n bytes at p to buf: *off = where they start, *len = n. 0, or -1
 * with MemoryError. Positions, not pointers: buf moves while it grows. */
static int buf_add(kv_buf *buf, const void *p, size_t n, size_t *off, size_t *len)
{
    *off = buf->len;
    *len = n;
    if (kv_buf_append(buf, p, n) != KV_OK) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* buf_add of a key argument (bytes or str); TypeError for other types. */
static int buf_add_key(kv_buf *buf, PyObject *key, size_t *off, size_t *len)
{
    const char *k;
    Py_ssize_t kn;
    if (kvpy_key_arg(key, &k, &kn) < 0)
        return -1;
    return buf_add(buf, k, (size_t)kn, off, len);
}

static PyObject *KV_put_many(KVObject *self, PyObject *items)
{
    PyObject *seq = NULL;
    kv_buf buf;
    kv_item *it = NULL;
    size_t *offs = NULL;
    PyObject **held = NULL;
    kv_status st = KV_OK;
    PyObject *ret = NULL;
    Py_ssize_t n = 0;

    if (check_open(self) < 0)
        return NULL;
    seq = PySequence_Fast(items, "put_many expects a sequence of (key, value) pairs");
    if (!seq)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    kv_buf_init(&buf);
    it = PyMem_Calloc((size_t)n + 1, sizeof *it);
    offs = PyMem_Calloc((size_t)n * 4 + 1, sizeof *offs);
    held = PyMem_Calloc((size_t)n + 1, sizeof *held);
    if (!it || !offs || !held) {
        PyErr_NoMemory();
        goto out;
    }
    /* Copy every key and encoded value into one buffer (positions first:
     * the buffer moves while growing), so that every pair is checked before
     * the first is stored. A bytes value is immutable: it is not copied but
     * held (a reference of our own, as the sequence may change while the
     * GIL is released) and stored from its own memory. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "put_many items must be (key, value) tuples");
            goto out;
        }
        if (buf_add_key(&buf, PyTuple_GET_ITEM(pair, 0), &offs[4 * i], &offs[4 * i + 1]) < 0)
            goto out;
        PyObject *value = PyTuple_GET_ITEM(pair, 1);
        if (PyBytes_Check(value)) {
            held[i] = Py_NewRef(value);
            continue;
        }
        kv_buf tmp;
        Py_buffer view;
        const void *v;
        size_t vn;
        kv_buf_init(&tmp);
        if (encode_value(self, PyTuple_GET_ITEM(pair, 1), &tmp, &view, &v, &vn) < 0) {
            kv_buf_free(&tmp);
            goto out;
        }
        int rc = buf_add(&buf, v, vn, &offs[4 * i + 2], &offs[4 * i + 3]);
        if (view.obj)
            PyBuffer_Release(&view);
        kv_buf_free(&tmp);
        if (rc < 0)
            goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        it[i].key = buf.data + offs[4 * i];
        it[i].klen = offs[4 * i + 1];
        if (held[i]) {
            it[i].val = PyBytes_AS_STRING(held[i]);
            it[i].vlen = (size_t)PyBytes_GET_SIZE(held[i]);
        } else {
            it[i].val = buf.data + offs[4 * i + 2];
            it[i].vlen = offs[4 * i + 3];
        }
    }
    KV_CALL(self, st, 1, self->ops->put_many(self->h, it, (size_t)n,
                                             self->write_flags & KVB_PUT_PIPELINED));
    KV_WRITE_END(self, st);
    ret = none_unless(st);
out:
    for (Py_ssize_t i = 0; held && i < n; i++)
        Py_XDECREF(held[i]);
    PyMem_Free(held);
    PyMem_Free(it);
    PyMem_Free(offs);
    kv_buf_free(&buf);
    Py_XDECREF(seq);
    return ret;
}

/* ======================================================================
 * delete / exists / count
 * ==================================================================== */

/* exists(key), or delete(key) (del: a batch of one key, in the object's
 * write mode): the flag the backend answers. */
static PyObject *key_flag(KVObject *self, PyObject *key, int del)
{
    const char *k;
    Py_ssize_t kn;
    int found = 0;
    size_t removed = 0;
    kv_status st;
    if (kvpy_key_arg(key, &k, &kn) < 0)
        return NULL;
    const kvb_ops *ops = self->ops;
    const void *kp = k;
    size_t kl = (size_t)kn;
    if (del) {
        KV_CALL(self, st, 1, self->ops->del_many(self->h, &kp, &kl, 1,
                                                 self->write_flags & KVB_PUT_PIPELINED, &removed));
        KV_WRITE_END(self, st);
    } else
        KV_CALL(self, st, ops->exists_blocks, ops->exists(self->h, k, kl, &found));
    return st == KV_OK ? PyBool_FromLong(found || removed) : NULL;
}

static PyObject *KV_delete(KVObject *self, PyObject *key) { return key_flag(self, key, 1); }
static PyObject *KV_exists(KVObject *self, PyObject *key) { return key_flag(self, key, 0); }

/* delete_many(keys) -> number of distinct keys removed. The keys are copied
 * first (the sequence may change while the GIL is released). */
static PyObject *KV_delete_many(KVObject *self, PyObject *keys)
{
    if (check_open(self) < 0)
        return NULL;
    if (PyBytes_Check(keys) || PyUnicode_Check(keys)) {
        PyErr_SetString(PyExc_TypeError, "delete_many expects a sequence of keys, not one key");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(keys, "delete_many expects a sequence of keys");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    kv_buf buf;
    kv_buf_init(&buf);
    size_t *offs = PyMem_Calloc((size_t)n * 2 + 1, sizeof *offs);
    const void **kp = PyMem_Calloc((size_t)n + 1, sizeof *kp);
    PyObject *ret = NULL;
    size_t removed = 0;
    kv_status st;
    if (!offs || !kp) {
        PyErr_NoMemory();
        goto out;
    }
    size_t *klens = offs + n;
    for (Py_ssize_t i = 0; i < n; i++)
        if (buf_add_key(&buf, PySequence_Fast_GET_ITEM(seq, i), &offs[i], &klens[i]) < 0)
            goto out;
    for (Py_ssize_t i = 0; i < n; i++)
        kp[i] = buf.data + offs[i];
    KV_CALL(self, st, 1, self->ops->del_many(self->h, kp, klens, (size_t)n,
                                             self->write_flags & KVB_PUT_PIPELINED, &removed));
    KV_WRITE_END(self, st);
    if (st == KV_OK)
        ret = PyLong_FromSize_t(removed);
out:
    PyMem_Free(offs);
    PyMem_Free(kp);
    kv_buf_free(&buf);
    Py_DECREF(seq);
    return ret;
}

static PyObject *KV_count(KVObject *self, PyObject *unused)
{
    int64_t n = 0;
    kv_status st;
    KV_CALL(self, st, 1, self->ops->count(self->h, &n));
    return st == KV_OK ? PyLong_FromLongLong(n) : NULL;
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

static PyObject *KV_keys(KVObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"prefix", "limit", NULL};
    PyObject *prefix = Py_None;
    Py_ssize_t limit = KVB_DEFAULT_KEYS_LIMIT;
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
    size_t per = s->ops->keys_per_batch;
    size_t want = (size_t)it->remaining < per ? (size_t)it->remaining : per;
    const char *pp = it->prefix ? PyBytes_AS_STRING(it->prefix) : NULL;
    size_t pn = it->prefix ? (size_t)PyBytes_GET_SIZE(it->prefix) : 0;
    const char *ap = it->last ? PyBytes_AS_STRING(it->last) : NULL;
    size_t an = it->last ? (size_t)PyBytes_GET_SIZE(it->last) : 0;

    KV_CALL(s, st, 1, s->ops->keys_batch(s->h, pp, pn, ap, an, want, &ks));
    if (st != KV_OK)
        return -1;
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

/* kv_read_fn over reader.read(n) (GIL held). */
static int64_t py_read_cb(void *ctx, void *buf, size_t cap)
{
    PyObject *b = PyObject_CallMethod((PyObject *)ctx, "read", "n", (Py_ssize_t)cap);
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

/* kv_write_fn over writer.write(b) (GIL held). */
static int py_write_cb(void *ctx, const void *buf, size_t len)
{
    PyObject *w = ctx;
    /* Pass bytes: writers may keep the object (BytesIO copies anyway). */
    PyObject *b = PyBytes_FromStringAndSize(buf, (Py_ssize_t)len);
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

/* Copy between a memfd and Python code in `chunk` pieces: to_fd = 1 pulls up
 * to `size` bytes from reader.read (`ctx`) into fd, stopping early at the
 * end of the stream, and rewinds fd; to_fd = 0 pushes everything of fd, from
 * offset 0, into writer.write (`ctx`). 0, or -1 with an exception set. */
static int spool(int fd, int to_fd, PyObject *ctx, uint64_t size, size_t chunk)
{
    if (!to_fd && lseek(fd, 0, SEEK_SET) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    char *tmp = PyMem_Malloc(chunk);
    if (!tmp) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = 0;
    for (uint64_t total = 0; !to_fd || total < size;) {
        size_t want = to_fd && size - total < chunk ? (size_t)(size - total) : chunk;
        int64_t n = to_fd ? py_read_cb(ctx, tmp, want) : (int64_t)read(fd, tmp, want);
        if (n == 0)
            break;
        if (n < 0 || (to_fd ? write(fd, tmp, (size_t)n) != (ssize_t)n
                            : py_write_cb(ctx, tmp, (size_t)n) < 0)) {
            if (!PyErr_Occurred())
                PyErr_SetFromErrno(PyExc_OSError);
            rc = -1;
            break;
        }
        total += (uint64_t)n;
    }
    PyMem_Free(tmp);
    if (rc == 0 && to_fd && lseek(fd, 0, SEEK_SET) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        rc = -1;
    }
    return rc;
}

/* spool() as part of the object's call: with its lock held, so Python code
 * of the reader or writer that calls the object again (close() included)
 * is refused as inside the backend's own stream callbacks (kv_lock), and
 * the object stays open. 0, or -1 with an exception set. */
static int spool_locked(KVObject *self, int fd, int to_fd, PyObject *stream, uint64_t size,
                        size_t chunk)
{
    if (kv_enter(self) < 0)
        return -1;
    int rc = spool(fd, to_fd, stream, size, chunk);
    kv_unlock(self);
    return rc;
}

/* An unnamed temporary file in the directory of the database `db_path`
 * (O_TMPFILE; where the file system lacks it, a file created and unlinked
 * at once), or -1 with errno. Spooling there keeps a large stream on disk,
 * where its value goes anyway, instead of in shared memory. */
static int spool_file(const char *db_path)
{
    char dir[4096];
    const char *slash = db_path ? strrchr(db_path, '/') : NULL;
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - db_path) + (slash == db_path), db_path);
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd;
    char tmpl[4200];
    snprintf(tmpl, sizeof tmpl, "%s/.kvault-spool-XXXXXX", dir);
    fd = mkostemp(tmpl, O_CLOEXEC);
    if (fd >= 0)
        unlink(tmpl);
    return fd;
}

/* Store raw bytes with put. */
static PyObject *put_raw(KVObject *self, const char *k, Py_ssize_t kn, const void *p, size_t n)
{
    kv_status st;
    KV_CALL(self, st, 1, self->ops->put(self->h, k, (size_t)kn, p, n, 0));
    return none_unless(st);
}

/* Store `size` bytes of reader (no usable descriptor) with the backend's
 * callback stream, or spooled through a memfd. */
static PyObject *put_stream(KVObject *self, const char *k, Py_ssize_t kn, PyObject *reader,
                            uint64_t size, size_t chunk)
{
    kv_status st;
    if (self->ops->put_stream) {
        /* The callback needs the GIL: this variant keeps it. */
        /* after a swap the reader has moved: busy, which KVault retries
         * after rewinding a seekable reader */
        KV_CALL(self, st, 0,
                self->ops->put_stream
                    ? self->ops->put_stream(self->h, k, (size_t)kn, size, chunk, py_read_cb, reader)
                    : KV_BUSY);
        return none_unless(st);
    }
    /* A stream that ends early keeps the announced size: the backend stores
     * what there is plus a zero tail and reports the short write (§4.6).
     * At most `size` bytes are read, as the embedded stream reads; they are
     * spooled to an unnamed file next to the database, not into memory
     * (docs/reliability.md, "Streams"). */
    int fd = spool_file(self->cpath);
    if (fd < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    st = KV_CALLBACK;
    if (spool_locked(self, fd, 1, reader, size, chunk) == 0)
        KV_CALL(self, st, 1, self->ops->put_fd(self->h, k, (size_t)kn, fd, size, chunk));
    close(fd);
    return none_unless(st);
}

static PyObject *KV_put_file(KVObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"key", "reader", "size", "chunk_size", NULL};
    PyObject *key, *reader, *size_o = Py_None, *chunk_o = Py_None;
    const char *k;
    Py_ssize_t kn;
    size_t chunk;
    kv_status st;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|OO", kwlist, &key, &reader, &size_o, &chunk_o))
        return NULL;
    if (check_open(self) < 0 || kvpy_key_arg(key, &k, &kn) < 0 || chunk_arg(self, chunk_o, &chunk) < 0)
        return NULL;
    /* Bytes-like readers are stored raw (docs/api.md §4.6). */
    if (PyObject_CheckBuffer(reader) && !PyUnicode_Check(reader)) {
        Py_buffer view;
        if (PyObject_GetBuffer(reader, &view, PyBUF_SIMPLE) < 0)
            return NULL;
        PyObject *r = put_raw(self, k, kn, view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
        return r;
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
        PyObject *r = put_raw(self, k, kn, PyBytes_AS_STRING(all), (size_t)PyBytes_GET_SIZE(all));
        Py_DECREF(all);
        return r;
    }
    if (!regular)
        return put_stream(self, k, kn, reader, (uint64_t)size, chunk);
    /* Fast path: the OS file at the reader's logical position. */
    if (lseek(fd, (off_t)pos, SEEK_SET) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    /* a call run again after a backend swap starts at pos again */
    KV_CALL(self, st, 1,
            lseek(fd, (off_t)pos, SEEK_SET) < 0
                ? KV_IO
                : self->ops->put_fd(self->h, k, (size_t)kn, fd, (uint64_t)size, chunk));
    if (st != KV_OK)
        return NULL;
    /* Re-sync the Python object's buffered position. */
    if (file_seek(reader, pos + size, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Push key's bytes into a writer without a descriptor: the backend's
 * callback stream, or get_to_fd into a memfd fed to writer.write. */
static kv_status get_stream(KVObject *self, const char *k, Py_ssize_t kn, PyObject *writer,
                            size_t chunk, uint64_t *written)
{
    kv_status st;
    if (self->ops->get_stream) {
        /* The callback needs the GIL: this variant keeps it. */
        KV_CALL(self, st, 0,
                !self->ops->get_stream ? KV_BUSY
                                       : self->ops->get_stream(self->h, k, (size_t)kn, chunk,
                                                               py_write_cb, writer, written));
        return st;
    }
    int fd = memfd_create("kvault-get-file", MFD_CLOEXEC);
    if (fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return KV_IO;
    }
    KV_CALL(self, st, 1, self->ops->get_to_fd(self->h, k, (size_t)kn, fd, chunk, written));
    if (st == KV_OK && spool_locked(self, fd, 0, writer, 0, chunk) < 0)
        st = KV_CALLBACK;
    close(fd);
    return st;
}

static PyObject *KV_get_to_file(KVObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"key", "writer", "chunk_size", NULL};
    PyObject *key, *writer, *chunk_o = Py_None;
    const char *k;
    Py_ssize_t kn;
    size_t chunk;
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
    if (chunk_arg(self, chunk_o, &chunk) < 0)
        return NULL;
    int fd = file_fd(writer);
    if (fd < 0) {
        st = get_stream(self, k, kn, writer, chunk, &written);
        return st == KV_OK ? PyLong_FromUnsignedLongLong(written) : NULL;
    }
    /* Push Python-side buffered data out before writing to the fd. */
    PyObject *r = PyObject_CallMethod(writer, "flush", NULL);
    if (!r)
        PyErr_Clear();
    Py_XDECREF(r);
    long long pos = file_tell(writer);
    if (pos >= 0 && lseek(fd, (off_t)pos, SEEK_SET) < 0)
        pos = -1;
    KV_CALL(self, st, 1, self->ops->get_to_fd(self->h, k, (size_t)kn, fd, chunk, &written));
    if (st != KV_OK)
        return NULL;
    if (pos >= 0 && file_seek(writer, pos + (long long)written, 0) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(written);
}

/* ======================================================================
 * Cache, switches, maintenance
 * ==================================================================== */

static PyObject *KV_enable_cache(KVObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"cap_bytes", "flush_threshold", NULL};
    Py_ssize_t cap = (Py_ssize_t)KVB_DEFAULT_CACHE_CAP_BYTES;
    Py_ssize_t thr = (Py_ssize_t)KVB_DEFAULT_CACHE_FLUSH_THRESHOLD;
    kv_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|nn", kwlist, &cap, &thr))
        return NULL;
    if (cap <= 0 || thr < 0) {
        PyErr_SetString(PyExc_ValueError, "cap_bytes must be > 0 and flush_threshold >= 0");
        return NULL;
    }
    KV_CALL(self, st, 1, self->ops->cache_enable(self->h, (size_t)cap, (size_t)thr));
    return none_unless(st);
}

static PyObject *KV_flush_cache(KVObject *self, PyObject *unused)
{
    kv_status st;
    size_t n = 0;
    KV_CALL(self, st, 1, self->ops->cache_flush(self->h, &n));
    return st == KV_OK ? PyLong_FromSize_t(n) : NULL;
}

static PyObject *KV_set_cache_locked(KVObject *self, PyObject *flag)
{
    int f = PyObject_IsTrue(flag);
    if (f < 0 || kv_enter(self) < 0)
        return NULL;
    self->ops->cache_set_locked(self->h, f);
    self->cache_locked = f;
    kv_unlock(self);
    Py_RETURN_NONE;
}

static PyObject *KV_cache_enabled(KVObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    return PyBool_FromLong(self->ops->cache_enabled(self->h));
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

/* Safe mode (KVault(unpickle=False)): one way, there is no method that
 * turns unpickling back on for this object. */
static PyObject *KV_refuse_pickle(KVObject *self, PyObject *unused)
{
    self->opts.no_pickle = 1;
    Py_RETURN_NONE;
}

/* Setter and getter methods of the §3.6 switches. */
#define SWITCH(fname, field, value)                          \
    static PyObject *fname(KVObject *self, PyObject *unused) \
    {                                                        \
        if (check_open(self) < 0)                            \
            return NULL;                                     \
        self->opts.field = value;                            \
        Py_RETURN_NONE;                                      \
    }
#define SWITCH_GET(fname, field)                             \
    static PyObject *fname(KVObject *self, PyObject *unused) \
    {                                                        \
        if (check_open(self) < 0)                            \
            return NULL;                                     \
        return PyBool_FromLong(self->opts.field);            \
    }
SWITCH(KV_disable_auto_pack, auto_pack, 0)
SWITCH(KV_enable_headers, headers, 1)
SWITCH(KV_disable_headers, headers, 0)
SWITCH_GET(KV_auto_pack_enabled, auto_pack)
SWITCH_GET(KV_headers_enabled, headers)

/* Methods that are one backend call without arguments, returning None. */
#define SIMPLE_CALL(fname, op)                                    \
    static PyObject *fname(KVObject *self, PyObject *unused)      \
    {                                                             \
        kv_status st;                                             \
        KV_CALL(self, st, 1, self->ops->op(self->h));             \
        return none_unless(st);                                   \
    }
SIMPLE_CALL(KV_disable_cache, cache_disable)
SIMPLE_CALL(KV_sync, sync)
SIMPLE_CALL(KV_flush, flush)
SIMPLE_CALL(KV_checkpoint, checkpoint)
SIMPLE_CALL(KV_optimize, optimize)

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
    KV_CALL(self, st, 1, self->ops->record_feature(self->h, n));
    return none_unless(st);
}

static PyObject *KV_status(KVObject *self, PyObject *unused)
{
    char text[4096] = "";
    kv_status st;
    if (!self->ops->status)
        return unsupported(self, "status");
    KV_CALL(self, st, 1, self->ops->status(self->h, text, sizeof text));
    return st == KV_OK ? PyUnicode_FromString(text) : NULL;
}

/* (segment hits, segment misses, hot-cache hits) of this object. */
static PyObject *KV_counters(KVObject *self, PyObject *unused)
{
    uint64_t h = 0, m = 0;
    if (!self->ops->counters)
        return unsupported(self, "counters");
    if (self->h)
        self->ops->counters(self->h, &h, &m);
    return Py_BuildValue("(KKK)", (unsigned long long)h, (unsigned long long)m,
                         (unsigned long long)(self->hot ? self->hot->hits : 0));
}

static PyObject *KV__stream_used_uring(KVObject *self, PyObject *unused)
{
    if (check_open(self) < 0)
        return NULL;
    return PyBool_FromLong(self->ops->stream_used_uring &&
                           self->ops->stream_used_uring(self->h));
}

static PyObject *KV_get_closed(KVObject *self, void *unused)
{
    return PyBool_FromLong(self->h == NULL);
}

static PyObject *KV_get_path(KVObject *self, void *unused)
{
    return Py_NewRef(self->path ? self->path : Py_None);
}

static PyObject *KV_get_table(KVObject *self, void *unused)
{
    if (check_open(self) < 0)
        return NULL;
    return Py_NewRef(self->table);
}

static PyObject *KV_get_generation(KVObject *self, void *unused)
{
    if (!self->ops->generation)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(self->h ? self->ops->generation(self->h) : 0);
}

static PyObject *KV_get_attached(KVObject *self, void *unused)
{
    return PyBool_FromLong(self->ops != &kvb_embedded);
}

static PyObject *KV_get_write_mode(KVObject *self, void *unused)
{
    size_t i = 0;
    while (write_modes[i].flags != self->write_flags)
        i++;
    return PyUnicode_FromString(write_modes[i].name);
}

/* ======================================================================
 * Type objects, module members
 * ==================================================================== */

/* A method entry: the Python name `name` is the C function KV_<name>. */
#define KV_METHOD(name, flags, doc) {#name, (PyCFunction)(void (*)(void))KV_##name, flags, doc}

static PyMethodDef KV_methods[] = {
    KV_METHOD(get, METH_O, "get(key) -> value; KeyNotFoundError('Key not found') if missing"),
    KV_METHOD(get_or, METH_FASTCALL, "get_or(key, default) -> value or default"),
    KV_METHOD(put, METH_FASTCALL | METH_KEYWORDS,
              "put(key, value, *, sync=False, write_mode=None): upsert (auto-packed); sync: "
              "return once committed; write_mode: 'applied'/'pipelined'/'replicated' for this call "
              "(None: the object's)"),
    KV_METHOD(put_many, METH_O,
              "put_many([(key, value), ...]): every pair checked first, then one batch"),
    KV_METHOD(delete, METH_O, "delete(key) -> bool"),
    KV_METHOD(delete_many, METH_O,
              "delete_many([key, ...]) -> number of distinct keys removed (one batch)"),
    KV_METHOD(exists, METH_O, "exists(key) -> bool (the write-back cache is not consulted)"),
    KV_METHOD(count, METH_NOARGS, "count() -> int (attached: after a commit)"),
    KV_METHOD(keys, METH_VARARGS | METH_KEYWORDS,
              "keys(prefix=None, limit=10000) -> iterator of bytes, bytewise order"),
    KV_METHOD(put_file, METH_VARARGS | METH_KEYWORDS,
              "put_file(key, reader, size=None, chunk_size=None): stream into a raw value"),
    KV_METHOD(get_to_file, METH_VARARGS | METH_KEYWORDS,
              "get_to_file(key, writer, chunk_size=None) -> bytes written"),
    KV_METHOD(enable_cache, METH_VARARGS | METH_KEYWORDS,
              "enable_cache(cap_bytes, flush_threshold): flushes an existing cache first "
              "(attached: batch puts into the ring)"),
    KV_METHOD(disable_cache, METH_NOARGS, "flush (never drops) and remove the cache"),
    KV_METHOD(flush_cache, METH_NOARGS, "flush_cache() -> entries written (0 if locked)"),
    KV_METHOD(sync, METH_NOARGS, "return once every write made so far is committed"),
    KV_METHOD(flush, METH_NOARGS,
              "return once every write of this object is applied (embedded: flush the "
              "write-back cache unless locked)"),
    KV_METHOD(set_cache_locked, METH_O, "set_cache_locked(flag)"),
    KV_METHOD(cache_enabled, METH_NOARGS, "cache_enabled() -> bool"),
    KV_METHOD(enable_auto_pack, METH_VARARGS | METH_KEYWORDS,
              "enable_auto_pack(use_pickle=True): auto-pack and headers on"),
    {"_refuse_pickle", (PyCFunction)KV_refuse_pickle, METH_NOARGS,
     "_refuse_pickle(): safe mode for this object, one way: pickled values are neither "
     "decoded (ValueError) nor written (TypeError)"},
    KV_METHOD(disable_auto_pack, METH_NOARGS, "auto-pack off"),
    KV_METHOD(auto_pack_enabled, METH_NOARGS, "-> bool"),
    KV_METHOD(enable_headers, METH_NOARGS, "headers on"),
    KV_METHOD(disable_headers, METH_NOARGS, "headers off"),
    KV_METHOD(headers_enabled, METH_NOARGS, "-> bool"),
    KV_METHOD(record_feature, METH_O, "append to kohakuvault_meta kv_features"),
    KV_METHOD(checkpoint, METH_NOARGS, "PRAGMA wal_checkpoint(PASSIVE)"),
    KV_METHOD(optimize, METH_NOARGS, "PRAGMA optimize; VACUUM"),
    KV_METHOD(status, METH_NOARGS, "the writer's STATUS text (attached only)"),
    KV_METHOD(counters, METH_NOARGS,
              "(segment hits, segment misses, hot-cache hits) of this object (attached only)"),
    KV_METHOD(close, METH_NOARGS, "flush, close / detach; idempotent"),
    KV_METHOD(_stream_used_uring, METH_NOARGS, "whether the last fd stream used io_uring (diagnostics)"),
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef KV_getset[] = {
    {"closed", (getter)KV_get_closed, NULL, "True after close()", NULL},
    {"path", (getter)KV_get_path, NULL, "the path given to the constructor", NULL},
    {"table", (getter)KV_get_table, NULL, "the table name", NULL},
    {"attached", (getter)KV_get_attached, NULL,
     "True when the writes go through a kvault-writer (attached, or routed for a table it "
     "does not serve)", NULL},
    {"write_mode", (getter)KV_get_write_mode, NULL,
     "'applied', 'pipelined' or 'replicated' (docs/shared-mode.md, \"Write modes\")", NULL},
    {"generation", (getter)KV_get_generation, NULL,
     "writer generation attached to (0 once closed); None when embedded", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject KVType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kohakuvault._kvault._KVault",
    .tp_basicsize = sizeof(KVObject),
    .tp_dealloc = (destructor)KV_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "_KVault(path, table, chunk_size, enable_wal, page_size, mmap_size, cache_kb,\n"
              "        *, read_cache_bytes, attach=False, write_mode='applied')\n"
              "Native key-value store over one SQLite table (see kohakuvault.KVault);\n"
              "defaults in KV_DEFAULTS. attach=True: attached to the kvault-writer\n"
              "serving the file (shared mode, docs/shared-mode.md); attach=2: routed,\n"
              "a table the writer of the file does not serve, written through it;\n"
              "else embedded.\n"
              "read_cache_bytes: embedded, cap of the process-local read cache (WAL mode\n"
              "only; 0 = off), a cached value served only while SQLite's WAL-index header\n"
              "is unchanged; attached, cap of the hot-value cache (and of the own\n"
              "connection's read cache).",
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

static PyObject *mod_attach_served(PyObject *m, PyObject *args)
{
    PyObject *pathb = NULL;
    const char *table = "kv";
    if (!PyArg_ParseTuple(args, "O&|s", PyUnicode_FSConverter, &pathb, &table))
        return NULL;
    int r = kvb_attached_served(PyBytes_AS_STRING(pathb), table);
    Py_DECREF(pathb);
    return PyBool_FromLong(r);
}

static PyObject *mod_exec_served(PyObject *m, PyObject *arg)
{
    PyObject *pathb = NULL;
    if (!PyUnicode_FSConverter(arg, &pathb))
        return NULL;
    kv_exec *probe = kvb_routed_probe(PyBytes_AS_STRING(pathb));
    Py_DECREF(pathb);
    int r = kvb_routed_served(probe);
    kvb_routed_probe_free(probe);
    return PyBool_FromLong(r);
}

static PyMethodDef mod_methods[] = {
    {"_attach_served", mod_attach_served, METH_VARARGS,
     "_attach_served(path, table='kv') -> bool: a kvault-writer serves this file and table"},
    {"_exec_served", mod_exec_served, METH_O,
     "_exec_served(path) -> bool: a kvault-writer serves this file (for any table)"},
    {NULL, NULL, 0, NULL},
};

/* KV_DEFAULTS: read-only mapping of every KVault option's default (the
 * engine's open options and kv_backend.h's). */
static PyObject *defaults_mapping(void)
{
    kv_open_opts o;
    kv_open_opts_default(&o);
    PyObject *d = Py_BuildValue(
        "{s:s,s:n,s:O,s:i,s:L,s:L,s:n,s:i,s:d,s:n,s:n,s:i}", "table", o.table, "chunk_size",
        (Py_ssize_t)o.chunk_size, "enable_wal", o.enable_wal ? Py_True : Py_False, "page_size",
        o.page_size, "mmap_size", (long long)o.mmap_size, "cache_kb", (long long)o.cache_kb,
        "read_cache_bytes", (Py_ssize_t)o.read_cache_bytes, "retries", KVB_DEFAULT_RETRIES,
        "backoff_base", KVB_DEFAULT_BACKOFF_BASE, "cache_cap_bytes",
        (Py_ssize_t)KVB_DEFAULT_CACHE_CAP_BYTES, "cache_flush_threshold",
        (Py_ssize_t)KVB_DEFAULT_CACHE_FLUSH_THRESHOLD, "keys_limit", KVB_DEFAULT_KEYS_LIMIT);
    if (!d)
        return NULL;
    PyObject *proxy = PyDictProxy_New(d);
    Py_DECREF(d);
    return proxy;
}

int kvpy_init_kv(PyObject *module)
{
    if (PyModule_AddType(module, &KVType) < 0 || PyModule_AddType(module, &KVKeysType) < 0 ||
        PyModule_AddFunctions(module, mod_methods) < 0)
        return -1;
    PyObject *defaults = defaults_mapping();
    if (!defaults)
        return -1;
    int rc = PyModule_AddObjectRef(module, "KV_DEFAULTS", defaults);
    Py_DECREF(defaults);
    return rc;
}
