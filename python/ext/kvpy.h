/*
 * kvpy.h - shared declarations of the kohakuvault._kvault extension.
 *
 * The extension is split by concern: module.c creates the module and calls
 * one init function per file (kv_py.c: _KVault over the backends of
 * kv_backend.h; packer_py.c: DataPacker; col_py.c: _ColumnVault; ...). Each
 * init function adds its types to the module and returns 0, or sets a Python
 * exception and returns -1.
 * Layers only call down: these files call kv_* from engine/include/kvault
 * (and kv_attached.c kv_att_* from shm/include/kvshm), never SQLite directly.
 */
#ifndef KVPY_H
#define KVPY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <time.h>

/** Milliseconds on CLOCK_MONOTONIC: deadlines and idle times of the
 *  binding (route waits, leases). Any thread, GIL or not. */
static inline uint64_t kvpy_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Borrows the bytes of a key: `k` must be bytes or str (UTF-8, the str's
 * cached encoding). On success the pointer and length point into `k` (valid while `k` lives)
 * and 0 is returned; otherwise TypeError("key must be bytes or str") or the
 * encoding error is set and -1 returned. Used by every KV binding. */
static inline int kvpy_key_arg(PyObject *k, const char **p, Py_ssize_t *n)
{
    if (PyBytes_Check(k)) {
        *p = PyBytes_AS_STRING(k);
        *n = PyBytes_GET_SIZE(k);
        return 0;
    }
    if (PyUnicode_Check(k)) {
        *p = PyUnicode_AsUTF8AndSize(k, n);
        return *p ? 0 : -1;
    }
    PyErr_SetString(PyExc_TypeError, "key must be bytes or str");
    return -1;
}

/* ---- errors_py.c: kv_status -> Python exception, in one table. */
#include "kvault/kvault.h"
#include "kvault/oprec.h"
#include "kvshm/ops.h"

extern PyObject *kvpy_KeyNotFoundError;  /**< _kvault.KeyNotFoundError(RuntimeError) */
extern PyObject *kvpy_BusyError;         /**< _kvault.BusyError(RuntimeError) */

/** Sets the Python exception for status `st` and returns NULL (so a binding
 *  can `return kvpy_raise_status(...)`). `detail` is the message (the
 *  handle's error text; NULL or "" means kv_strerror(st)); `os_errno`, when
 *  nonzero with KV_IO, raises OSError from that errno instead. KV_CALLBACK keeps an exception the callback
 *  already set; KV_NOMEM raises MemoryError. Needs the GIL. */
PyObject *kvpy_raise_status(kv_status st, const char *detail, int os_errno);

int kvpy_init_errors(PyObject *module);
int kvpy_init_kv(PyObject *module);
int kvpy_init_packer(PyObject *module);
int kvpy_init_col(PyObject *module);
int kvpy_init_text(PyObject *module);
int kvpy_init_vector(PyObject *module);
int kvpy_init_tree(PyObject *module);

/* ---- forksafe.c: fork() safety of every object that owns a lock and an
 * engine handle (docs/shared-mode.md, "Failure behaviour"). Each such object
 * embeds a kvpy_fork_node and serialises its engine calls with the node's
 * lock. Handlers registered with os.register_at_fork take every live node's
 * lock before a fork and release it in both processes after it; in the
 * child every node is marked `forked` and the object's first call opens its
 * own engine handle through `rehome` (the inherited one is the parent's: it
 * is never used, closed or flushed in the child). All need the GIL. */
#include <pythread.h>

typedef struct kvpy_fork_node kvpy_fork_node;

/** One object's part in fork safety. Zero-initialised by tp_alloc. */
struct kvpy_fork_node {
    PyThread_type_lock lock;  /**< the object's leaf lock, owned (kvpy_fork_track) */
    int busy;                 /**< the lock is held (changed with the GIL held) */
    unsigned long owner;      /**< thread ident of the holder while busy */
    int forked;               /**< child of a fork: the handle is still the parent's */
    int bounded_wait;         /**< nonzero: a call in progress at a fork is waited
                                   for at most 200 ms in all (it may wait for the
                                   process being forked, or run Python code);
                                   0: until it ends (an SQLite call) */
    /** In the child, at the object's first kvpy_fork_rehome: open its own
     *  handle (lock and GIL held; `forked` already cleared). 0, or -1 with an
     *  exception set (`forked` is set again and the next call retries).
     *  NULL for an object with nothing to re-home (in memory). */
    int (*rehome)(PyObject *obj);
    PyObject *obj;            /**< the object embedding the node (borrowed) */
    kvpy_fork_node *prev, *next;  /**< live list, changed with the GIL held */
};

/** Allocate the node's lock and put it on the live list; `obj` embeds it,
 *  `rehome` as above. 0, or -1 with MemoryError. Call once, after tp_alloc. */
int kvpy_fork_track(kvpy_fork_node *n, PyObject *obj, int (*rehome)(PyObject *obj));
/** In tp_dealloc, before anything releases the GIL (a fork must not take a
 *  reference to a dying object): off the live list, free the lock; `forked`
 *  is kept. Safe on an untracked node. */
void kvpy_fork_untrack(kvpy_fork_node *n);
/** Take the lock (waiting with the GIL released when contended, so the
 *  holder, which may be inside an engine call, always progresses) and
 *  record the holder. */
void kvpy_fork_lock(kvpy_fork_node *n);
/** Release what kvpy_fork_lock took. */
void kvpy_fork_unlock(kvpy_fork_node *n);
/** With the lock held and the object open: re-home a forked object
 *  (n->rehome). 0, or -1 with the exception of rehome. */
static inline int kvpy_fork_rehome(kvpy_fork_node *n)
{
    if (__builtin_expect(!n->forked, 1))
        return 0;
    n->forked = 0;
    if (!n->rehome || n->rehome(n->obj) == 0)
        return 0;
    n->forked = 1;
    return -1;
}
/** Forks this process is a child of, counted by the after-in-child handler
 *  (GIL held): an in-memory guard without a lock (CSBTree's) tells a holder
 *  of the parent, which does not exist in the child, from a live one. */
extern unsigned long kvpy_fork_generation;
/** Register the at-fork handlers (once per process). 0 or -1. */
int kvpy_init_fork(PyObject *module);

/* ---- autopack.c. Python object <-> stored bytes per
 * docs/api.md §3.2-§3.4 and the §5.4 MessagePack/CBOR model. All need the GIL.
 * TextVault/VectorKVault/DataPacker bindings may call every function here. */
#include "kvault/codec.h"

/** Per-instance switches of docs/api.md §3.6. */
typedef struct kvpy_pack_opts {
    int auto_pack;    /**< nonzero: encode per §3.2 / decode per §3.3 */
    int headers;      /**< nonzero: write the 10-byte header (rows 2-8) */
    int use_pickle;   /**< nonzero: pickle fallback allowed */
    int no_pickle;    /**< nonzero: safe mode (unpickle=False): pickled values are
                           neither decoded (ValueError, pickle.loads never runs)
                           nor written (TypeError); see docs/security.md */
} kvpy_pack_opts;

/** Encode `v` per §3.2 (auto-pack on), appending to `out` (exact bytes are
 *  appended raw). Returns 0, or -1 with an exception set (TypeError
 *  "Cannot auto-pack object: ...", ValueError "Unknown encoding wrapper: ...",
 *  MemoryError, or whatever pickle/json raised). */
int kvpy_pack_value(PyObject *v, const kvpy_pack_opts *o, kv_buf *out);
/** Decode a stored value per §3.3 (auto-pack off: bytes unchanged). New
 *  reference, or NULL with ValueError for a malformed header. */
PyObject *kvpy_unpack_value(const void *data, size_t len, const kvpy_pack_opts *o);
/** After a failed decode: a ValueError pending is replaced by one naming
 *  the value, "value of <fmt...> cannot be decoded: <original text>"
 *  (fmt as PyUnicode_FromFormat, e.g. "key %R", "document %lld"); any other
 *  exception (MemoryError, what pickle.loads raised) stands. */
void kvpy_name_decode_error(const char *fmt, ...);
/** Decode a header-less payload of encoding id `enc` (KV_ENC_*). */
PyObject *kvpy_unpack_payload(uint8_t enc, const uint8_t *p, size_t n);
/** 1 if decoding this stored value runs Python code (pickle/json). */
int kvpy_unpack_needs_python(const void *data, size_t len, const kvpy_pack_opts *o);
/** §5.4 model: encode `obj` as MessagePack/CBOR onto `out`. 0, or -1 with
 *  ValueError (outside the model) or MemoryError set. */
int kvpy_model_encode(PyObject *obj, kv_fmt fmt, kv_buf *out);
/** §5.4 model: decode ONE item from data[0..len); *consumed (may be NULL)
 *  gets the bytes used. New reference or NULL with ValueError. */
PyObject *kvpy_model_decode(kv_fmt fmt, const void *data, size_t len, size_t *consumed);
/** Append the arbitrary-shape vector form of array-like `obj` cast to
 *  element type `type` (KV_VEC_*). 0 or -1 with an exception. */
int kvpy_vector_encode(PyObject *obj, uint8_t type, kv_buf *out);
/** numpy array (writable copy) from a parsed vector; 1-D when ndim <= 1. */
PyObject *kvpy_vector_decode(const kv_vec_view *v);

/* ---- store_py.c. Plumbing shared by the TextVault and
 * VectorKVault bindings (text_py.c, vector_py.c). All need the GIL. */
#include "kvault/kvault.h"

/** Set the Python exception for a failed engine call and return NULL:
 *  KV_INVALID → ValueError, KV_NOMEM → MemoryError, KV_IO → OSError,
 *  everything else (NOTFOUND, BUSY "database is locked", SQLITE, CORRUPT) →
 *  RuntimeError, each with `msg` (or kv_strerror(st) when msg is empty). */
PyObject *kvpy_store_raise(kv_status st, const char *msg);
/** Encode a value for TextVault/VectorKVault: auto-pack on → §3.2 via
 *  kvpy_pack_value; off → bytes(value) (bytes-like or a sequence of ints,
 *  else TypeError). Appends to `out`. 0, or -1 with an exception set. */
int kvpy_store_encode(PyObject *v, const kvpy_pack_opts *o, kv_buf *out);

typedef struct kvpy_store kvpy_store;

/** One store engine (kv_text, kv_vector) seen through untyped handles. The
 *  functions are called with the GIL released, under the object's lock. */
typedef struct kvpy_store_kind {
    const char *name;                            /**< "TextVault", for messages */
    void (*close)(void *h);                      /**< close the handle */
    const char *(*errmsg)(const void *h);        /**< message of the last failure */
    kv_status (*del)(void *h, int64_t id, int *removed);
    kv_status (*exists)(void *h, int64_t id, int *found);
    kv_status (*count)(void *h, int64_t *n);
    /** Open the store's own handle again (a forked child, forksafe.c) from
     *  the C fields of `s` (s->path, s->table and the binding's own): *h
     *  gets it; a failure writes its message into err[errlen]. */
    kv_status (*reopen)(const kvpy_store *s, void **h, char *err, size_t errlen);
    /* Writes through the writer serving the file (kvpy_store_write). */
    unsigned op_class;                           /**< KVSHM_OPC_* */
    /** kv_*_set_commit_guard of the engine handle. */
    void (*set_guard)(void *h, kv_commit_guard *g);
    /** kv_*_conn of the engine handle (its operation records). */
    void (*conn)(void *h, kv_conn *out);
    /** Append the open parameters of `s` (kvshm/ops.h, per class). */
    void (*encode_open)(const kvpy_store *s, kvshm_op_enc *e);
    /** Apply an insert this store pipelined (kvpy_store_post_insert,
     *  decoded) on the own handle, with the id it carries: the writer that
     *  had it is gone. NULL: the store's inserts are not pipelined. */
    kv_status (*run_posted)(void *h, const kvshm_op *op);
    /** kv_*_tx_begin / kv_*_tx_end of the engine handle: the own
     *  connection applies a dead writer's share of pipelined inserts in
     *  one transaction. Set with run_posted. */
    kv_status (*tx_begin)(void *h);
    kv_status (*tx_end)(void *h, int commit);
} kvpy_store_kind;

/** How a write of a store travels to the writer (kvpy_store_write): its
 *  operation, the encoder of its arguments from the call's `ctx`, the
 *  largest result it can have and where the result goes. Called with the
 *  GIL released. */
typedef struct kvpy_store_remote {
    unsigned op;                                            /**< KVSHM_OP_* */
    void (*encode)(const void *ctx, kvshm_op_enc *e);       /**< the arguments */
    size_t (*result_max)(const void *ctx);                  /**< NULL: 8 bytes */
    /** Store the result bytes in ctx: KV_OK, or KV_IO when they do not have
     *  the operation's shape. NULL: the operation returns nothing. */
    kv_status (*result)(void *ctx, const uint8_t *res, size_t n);
    /** The checks the engine would make of a pipelined insert, run on the
     *  own handle before it is sent (kvpy_store_post_insert), so bad input
     *  raises at its own call: KV_OK, or a failure with the engine's
     *  message. NULL: none. */
    kv_status (*check)(void *h, const void *ctx);
} kvpy_store_remote;

/** Where a store's writes go (store_py.c): its own connection, or the
 *  writer serving the file. The engine handle's commit guard asks whether
 *  a writer serves the file (kv_exec_served) whenever another connection
 *  committed since its last look; a refused commit (rolled back, nothing
 *  changed) sends the write to the writer, and later writes follow until
 *  the writer is gone. Used by the stores and by ColumnVault (col_py.c). */
typedef struct kvpy_route {
    struct kv_exec *ex;      /* connection to the writer (made at first use) */
    kv_commit_guard guard;   /* on the engine handle */
    kv_conn conn;            /* the engine handle's connection (kv_*_conn), set with the guard */
    kv_oprec rec;            /* the record of an operation a dead writer applied */
    int via_writer;          /* writes go to the writer */
    kv_buf op;               /* the encoded operation of the current write */
    int64_t lease_next;      /* the block of ids pipelined inserts take: */
    int64_t lease_end;       /*   [lease_next, lease_end), empty when equal */
    int64_t lease_size;      /* ids of the next block asked for (0: 1) */
    uint64_t lease_used_ms;  /* when the block last gave an id (CLOCK_MONOTONIC ms) */
    kvshm_op *dec;           /* a pipelined insert decoded again (own fallback) */
} kvpy_route;

/** A route for the file at `path` (unless KVAULT_SHARED is "off"; a path
 *  without a registry, ":memory:", gets none): *out, or NULL. Install
 *  &(*out)->guard on the engine handle. 0, or -1 with MemoryError. */
int kvpy_route_new(const char *path, kvpy_route **out);
/** Free a route (NULL is a no-op); its guard must be off every handle. */
void kvpy_route_free(kvpy_route *r);
/** Send the operation in r->op (GIL released). 1 when a writer answered:
 *  *st its status, *res and *rlen its result, and on failure its message in
 *  msg; 0 when none serves the file now (r->via_writer cleared): the caller
 *  applies it on its own connection. Exactly once: when the writer that
 *  received it died without replying, the operation's record is read first
 *  through r->conn (kvault/oprec.h); if the dead writer applied it, 1 with
 *  the recorded status and result (it must not be applied again); if the
 *  record cannot be read, 1 with that failure (the operation stays
 *  unsettled: the caller's retry of it is checked again). */
int kvpy_route_send(kvpy_route *r, size_t result_max, kv_status *st, const uint8_t **res,
                    size_t *rlen, char *msg, size_t mlen);

/** First members of a store object (embed as the struct's first line). */
#define KVPY_STORE_HEAD                                                              \
    PyObject_HEAD                                                                    \
    void *h;                       /* engine handle, NULL once closed; under the lock */ \
    kvpy_fork_node fork;           /* its lock serialises engine calls (leaf lock) */  \
    kvpy_pack_opts opts;           /* §3.6 switches; read/written with the GIL */     \
    const kvpy_store_kind *kind;   /* static engine description */                    \
    char *path, *table;            /* owned: as opened (kind->reopen) */                \
    kvpy_route *route;             /* NULL: writes always go to the own connection */

struct kvpy_store {
    KVPY_STORE_HEAD
};

/** An engine call made by kvpy_store_call: `h` is the open handle, `ctx` the
 *  caller's argument block. Runs without the GIL: touch no Python object. */
typedef kv_status (*kvpy_store_op)(void *h, void *ctx);

/** After tp_alloc: record `kind`, `path` and `table` (copied), turn every
 *  §3.6 switch on, allocate the lock and track the object for fork()
 *  (forksafe.c). 0, or -1 with MemoryError. */
int kvpy_store_setup(kvpy_store *s, const kvpy_store_kind *kind, const char *path,
                     const char *table);
/** In tp_dealloc: close the handle (GIL released; a forked child's
 *  inherited handle is leaked instead) and free the lock. The caller still
 *  releases its own members and calls tp_free. */
void kvpy_store_finalize(kvpy_store *s);
/** Take the lock, refuse a closed store (ValueError "Cannot operate on
 *  closed <name>"), re-home it in a forked child (kind->reopen), run
 *  op(h, ctx) with the GIL released, raise per kvpy_store_raise with the
 *  engine's message on failure, release the lock. Returns 0 on success, -1 with an exception set. *st_out (may be NULL)
 *  gets the engine's status (KV_OK when the call never ran), so a caller can
 *  replace the exception with a more specific one. */
int kvpy_store_call(kvpy_store *s, kvpy_store_op op, void *ctx, kv_status *st_out);
/** Open `s`'s route once its handle is open (the constructors): unless
 *  KVAULT_SHARED is "off", its writes follow a writer serving the file
 *  (docs/shared-mode.md, "Every class through the writer"): the handle's
 *  commit guard refuses a commit while a writer serves the file, and the
 *  write goes to that writer instead. A file without a registry path
 *  (":memory:") gets no route. 0, or -1 with MemoryError. */
int kvpy_store_route_open(kvpy_store *s);
/** kvpy_store_call for a write: run op(h, ctx) on the own connection, or,
 *  when a writer serves the file, send it as operation `rw` and put the
 *  writer's result into ctx (rw->result). A commit the guard refused goes to
 *  the writer; a writer gone (stopped, or dead and not replaced) makes the
 *  call run on the own connection. Raises what kvpy_store_call raises, with
 *  the engine's message from whichever side ran it. 0 or -1; *st_out as
 *  there. */
int kvpy_store_write(kvpy_store *s, kvpy_store_op op, void *ctx, const kvpy_store_remote *rw,
                     kv_status *st_out);
/** Pipelined insert (docs/shared-mode.md, "Pipelined inserts"): when a
 *  writer serves the file and the store's kind pipelines inserts, take the
 *  next id of the object's block of ids (asking the writer for a block when
 *  it is used up: 1 id, then twice as many each time up to
 *  KVPY_LEASE_BLOCK, so an object that inserts a few documents and ends
 *  without closing leaves few ids unused), send the insert `rw` of ctx with
 *  that id without waiting for its reply, and put the id in *id: 1. 0: the
 *  caller makes the ordinary write (kvpy_store_write): no writer serves
 *  the file, the insert does not fit one packet, or the kind does not
 *  pipeline. -1 with an exception: the failure of an earlier pipelined
 *  insert (raised here, by the next call of the object), or of this one
 *  when the writer went away and it was applied on the own connection. */
int kvpy_store_post_insert(kvpy_store *s, void *ctx, const kvpy_store_remote *rw, int64_t *id);
/** Most ids a pipelining object asks the writer for at once. */
#define KVPY_LEASE_BLOCK 256
/** A block of ids that gave no id for this long (ms) is given back before
 *  the object's next insert, which asks for a new one: the writer stops
 *  counting a block idle for 15 s (engine/vector.c, LEASE_IDLE_MS) and may
 *  then cut chunks above its ids, so no object fills a block that long idle. */
#define KVPY_LEASE_IDLE_MS 5000

/** kvpy_store_call for a get_by_id: an unknown `id` (KV_NOTFOUND) raises
 *  RuntimeError("ID <id> not found") -- a plain failure, KohakuVaultError once
 *  mapped, never NotFound (docs/api.md §2.5). 0 or -1 as above. */
int kvpy_store_call_by_id(kvpy_store *s, kvpy_store_op op, void *ctx, int64_t id);
/** An id argument (int or __index__) → *id. 0, or -1 with TypeError /
 *  OverflowError set. */
int kvpy_store_id(PyObject *arg, int64_t *id);
/** The value pointer for an engine update: NULL when `value` is None (keep
 *  the stored value), else the encoded bytes in `buf` (never NULL, even when
 *  empty). */
const void *kvpy_store_value_arg(PyObject *value, const kv_buf *buf);
/** Arguments of update(id, <payload>=None, value=None) (`payload` names the
 *  second one: "texts", "vector"): *payload_obj and *value are borrowed,
 *  Py_None when not given. Both None → ValueError("Must provide either
 *  <payload> or value to update"). 0, or -1 with the exception. */
int kvpy_store_update_args(PyObject *args, PyObject *kw, const char *payload, long long *id,
                           PyObject **payload_obj, PyObject **value);
/** The value half of an update: encodes a non-None `value` into `buf`
 *  (kvpy_store_encode) and points *val / *vlen at it, or at NULL / 0 to keep
 *  the stored value (kvpy_store_value_arg). 0, or -1 with the exception. */
int kvpy_store_update_value(PyObject *value, const kvpy_pack_opts *o, kv_buf *buf,
                            const void **val, size_t *vlen);

/* Methods with the same meaning on both stores (self is a kvpy_store). */
PyObject *kvpy_store_delete(PyObject *self, PyObject *arg);     /**< METH_O -> bool removed */
PyObject *kvpy_store_exists(PyObject *self, PyObject *arg);     /**< METH_O, int ids only */
PyObject *kvpy_store_count(PyObject *self, PyObject *unused);   /**< METH_NOARGS -> int */
PyObject *kvpy_store_close(PyObject *self, PyObject *unused);   /**< idempotent */
PyObject *kvpy_store_get_closed(PyObject *self, void *closure); /**< getter `closed` */
PyObject *kvpy_store_enable_auto_pack(PyObject *self, PyObject *args, PyObject *kw);
PyObject *kvpy_store_disable_auto_pack(PyObject *self, PyObject *unused);
PyObject *kvpy_store_auto_pack_enabled(PyObject *self, PyObject *unused);
PyObject *kvpy_store_enable_headers(PyObject *self, PyObject *unused);
PyObject *kvpy_store_disable_headers(PyObject *self, PyObject *unused);
PyObject *kvpy_store_headers_enabled(PyObject *self, PyObject *unused);
/** METH_NOARGS: safe mode (unpickle=False) for this object, one way. */
PyObject *kvpy_store_refuse_pickle(PyObject *self, PyObject *unused);

/** PyMethodDef entries of close() and the §3.6 switches, for a method table. */
#define KVPY_STORE_METHODS                                                                     \
    {"close", kvpy_store_close, METH_NOARGS,                                                   \
     "close() -> None\n\nClose the connection (idempotent); later calls raise ValueError."},    \
    {"enable_auto_pack", (PyCFunction)(void (*)(void))kvpy_store_enable_auto_pack,             \
     METH_VARARGS | METH_KEYWORDS,                                                              \
     "enable_auto_pack(use_pickle=True): auto-pack on, headers on (docs/api.md §3.6)."},            \
    {"disable_auto_pack", kvpy_store_disable_auto_pack, METH_NOARGS,                           \
     "Auto-pack off: values must be bytes-like; reads return stored bytes."},                  \
    {"auto_pack_enabled", kvpy_store_auto_pack_enabled, METH_NOARGS, "Auto-pack switch."},     \
    {"enable_headers", kvpy_store_enable_headers, METH_NOARGS, "Headers on (§3.6)."},          \
    {"disable_headers", kvpy_store_disable_headers, METH_NOARGS, "Headers off (§3.6)."},       \
    {"headers_enabled", kvpy_store_headers_enabled, METH_NOARGS, "Header switch."},           \
    {"_refuse_pickle", kvpy_store_refuse_pickle, METH_NOARGS,                                  \
     "_refuse_pickle(): safe mode, one way: pickled values are neither decoded (ValueError) "  \
     "nor written (TypeError)."}

/** PyGetSetDef entry of the read-only `closed` property. */
#define KVPY_STORE_GETSET_CLOSED \
    {"closed", kvpy_store_get_closed, NULL, "True once close() was called.", NULL}

/* ---- Engine handles (shared by every binding that owns one). */

/** Runs close_fn(h) with the GIL released, if `h` is not NULL: the end of a
 *  tp_dealloc or close() that has already cleared its own pointer to `h`
 *  (so no other call can reach the handle). Needs the GIL. */
static inline void kvpy_close_released(void *h, void (*close_fn)(void *h))
{
    if (h == NULL)
        return;
    Py_BEGIN_ALLOW_THREADS
    close_fn(h);
    Py_END_ALLOW_THREADS
}

#endif /* KVPY_H */
