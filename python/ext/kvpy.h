/*
 * kvpy.h - shared declarations of the kohakuvault._kvault extension.
 *
 * The extension is split by concern: module.c creates the module and calls
 * one init function per file (kv_py.c: _KVault; packer_py.c: DataPacker;
 * col_py.c: _ColumnVault; ...). Each init function adds its types to the
 * module and returns 0, or sets a Python exception and returns -1.
 * Python -> engine only: these files call kv_* from engine/include/kvault,
 * never SQLite directly.
 */
#ifndef KVPY_H
#define KVPY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

int kvpy_init_kv(PyObject *module);
int kvpy_init_packer(PyObject *module);
int kvpy_init_col(PyObject *module);
int kvpy_init_text(PyObject *module);
int kvpy_init_vector(PyObject *module);
int kvpy_init_tree(PyObject *module);

/* ---- autopack.c (owner: engine helper). Python object <-> stored bytes per
 * API.md §3.2-§3.4 and the §5.4 MessagePack/CBOR model. All need the GIL.
 * TextVault/VectorKVault/DataPacker bindings may call every function here. */
#include "kvault/codec.h"

/** Per-instance switches of API.md §3.6. */
typedef struct kvpy_pack_opts {
    int auto_pack;    /**< nonzero: encode per §3.2 / decode per §3.3 */
    int headers;      /**< nonzero: write the 10-byte header (rows 2-8) */
    int use_pickle;   /**< nonzero: pickle fallback allowed */
} kvpy_pack_opts;

/** Encode `v` per §3.2 (auto-pack on), appending to `out` (exact bytes are
 *  appended raw). Returns 0, or -1 with an exception set (TypeError
 *  "Cannot auto-pack object: ...", ValueError "Unknown encoding wrapper: ...",
 *  MemoryError, or whatever pickle/json raised). */
int kvpy_pack_value(PyObject *v, const kvpy_pack_opts *o, kv_buf *out);
/** Decode a stored value per §3.3 (auto-pack off: bytes unchanged). New
 *  reference, or NULL with ValueError for a malformed header. */
PyObject *kvpy_unpack_value(const void *data, size_t len, const kvpy_pack_opts *o);
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

/* ---- text_py.c (owner: extras). Helpers shared by the TextVault and
 * VectorKVault bindings (text_py.c, vector_py.c). All need the GIL. */
#include <pythread.h>
#include "kvault/kvault.h"

/** Take a per-object mutex; waits with the GIL released when contended so
 *  the holder (which may be inside an engine call) always progresses. */
void kvpy_store_lock(PyThread_type_lock lock);
/** Set the Python exception for a failed engine call and return NULL:
 *  KV_INVALID → ValueError, KV_NOMEM → MemoryError, KV_IO → OSError,
 *  everything else (NOTFOUND, BUSY "database is locked", SQLITE, CORRUPT) →
 *  RuntimeError, each with `msg` (or kv_strerror(st) when msg is empty). */
PyObject *kvpy_store_raise(kv_status st, const char *msg);
/** Encode a value for TextVault/VectorKVault: auto-pack on → §3.2 via
 *  kvpy_pack_value; off → bytes(value) (bytes-like or a sequence of ints,
 *  else TypeError). Appends to `out`. 0, or -1 with an exception set. */
int kvpy_store_encode(PyObject *v, const kvpy_pack_opts *o, kv_buf *out);

#endif /* KVPY_H */
