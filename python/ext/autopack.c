/*
 * autopack.c - Python object <-> stored bytes (docs/api.md §3.2-§3.4, §5.4), in C.
 *
 * Encode: kvpy_pack_value applies the §3.2 rows in order (bytes raw;
 * duck-typed wrappers; numpy arrays → 0x02 vectors; __index__ → i64;
 * __float__ → f64; str → 0x06; dict/list → MessagePack else pickle; else
 * pickle) and writes the 10-byte header when headers are on.
 * Decode: kvpy_unpack_value parses the header and builds the Python object,
 * with MessagePack/CBOR decoded by libkvault's kv_decode through a visitor
 * that creates Python objects directly (no intermediate tree).
 * pickle and json go through Python's own modules (imported once, kept in
 * static references: the extension is single-interpreter); numpy through
 * its Python API (ascontiguousarray / frombuffer), with data moved via the
 * buffer protocol.
 *
 * Used by kv_py.c and by the TextVault/VectorKVault/DataPacker bindings
 * (declarations in kvpy.h). All functions need the GIL.
 */
#include "kvpy.h"

#include <stdarg.h>

#include <math.h>
#include <string.h>

#include "kvault/codec.h"

/* ======================================================================
 * Lazily imported Python helpers
 * ==================================================================== */

static PyObject *g_pickle_dumps, *g_pickle_loads, *g_json_dumps, *g_json_loads;
static PyObject *g_np_ascontig, *g_np_frombuffer;
static PyObject *s_encoding_name, *s_data, *s_dtype, *s_name, *s_array, *s_reshape;

static int import_attr(const char *mod, const char *attr, PyObject **out)
{
    if (*out)
        return 0;
    PyObject *m = PyImport_ImportModule(mod);
    if (!m)
        return -1;
    *out = PyObject_GetAttrString(m, attr);
    Py_DECREF(m);
    return *out ? 0 : -1;
}

static int intern_strings(void)
{
    if (s_encoding_name)
        return 0;
    s_encoding_name = PyUnicode_InternFromString("encoding_name");
    s_data = PyUnicode_InternFromString("data");
    s_dtype = PyUnicode_InternFromString("dtype");
    s_name = PyUnicode_InternFromString("name");
    s_array = PyUnicode_InternFromString("__array__");
    s_reshape = PyUnicode_InternFromString("reshape");
    return (s_encoding_name && s_data && s_dtype && s_name && s_array && s_reshape) ? 0 : -1;
}

/* Lookup attribute; 1 found (*out new ref), 0 absent (no error), -1 error. */
static int lookup_attr(PyObject *o, PyObject *name, PyObject **out)
{
    *out = PyObject_GetAttr(o, name);
    if (*out)
        return 1;
    if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

static int buf_nomem(void)
{
    PyErr_NoMemory();
    return -1;
}

/* ======================================================================
 * §5.4 model encoder: Python → MessagePack/CBOR
 * ==================================================================== */

#define MODEL_MAX_DEPTH 256

/* Returns 0; -1 hard error (exception set); -2 value outside the model
 * (ValueError set). */
static int model_enc(kv_enc *e, PyObject *o, int depth)
{
    if (depth > MODEL_MAX_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "nesting too deep to encode");
        return -2;
    }
    if (o == Py_None)
        return kv_enc_nil(e) == KV_OK ? 0 : buf_nomem();
    if (PyBool_Check(o))
        return kv_enc_bool(e, o == Py_True) == KV_OK ? 0 : buf_nomem();
    if (PyLong_Check(o)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (!overflow)
            return kv_enc_int(e, v) == KV_OK ? 0 : buf_nomem();
        if (overflow > 0) {
            unsigned long long u = PyLong_AsUnsignedLongLong(o);
            if (!(u == (unsigned long long)-1 && PyErr_Occurred()))
                return kv_enc_uint(e, u) == KV_OK ? 0 : buf_nomem();
            PyErr_Clear();
        }
        PyErr_SetString(PyExc_ValueError, "integer out of range for MessagePack/CBOR");
        return -2;
    }
    if (PyFloat_Check(o))
        return kv_enc_double(e, PyFloat_AS_DOUBLE(o)) == KV_OK ? 0 : buf_nomem();
    if (PyUnicode_Check(o)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(o, &n);
        if (!s)
            return -1;
        return kv_enc_str(e, s, (size_t)n) == KV_OK ? 0 : buf_nomem();
    }
    if (PyList_Check(o) || PyTuple_Check(o)) {
        PyObject *seq = PySequence_Fast(o, "expected a sequence");
        if (!seq)
            return -1;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        int rc = kv_enc_array(e, (size_t)n) == KV_OK ? 0 : buf_nomem();
        for (Py_ssize_t i = 0; rc == 0 && i < n; i++)
            rc = model_enc(e, PySequence_Fast_GET_ITEM(seq, i), depth + 1);
        Py_DECREF(seq);
        return rc;
    }
    if (PyAnySet_Check(o)) {
        Py_ssize_t n = PySet_GET_SIZE(o);
        if (kv_enc_array(e, (size_t)n) != KV_OK)
            return buf_nomem();
        PyObject *it = PyObject_GetIter(o), *item;
        if (!it)
            return -1;
        int rc = 0;
        while (rc == 0 && (item = PyIter_Next(it))) {
            rc = model_enc(e, item, depth + 1);
            Py_DECREF(item);
        }
        Py_DECREF(it);
        if (rc == 0 && PyErr_Occurred())
            rc = -1;
        return rc;
    }
    if (PyDict_Check(o)) {
        PyObject *keys = PyDict_Keys(o);
        if (!keys)
            return -1;
        Py_ssize_t n = PyList_GET_SIZE(keys);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (!PyUnicode_Check(PyList_GET_ITEM(keys, i))) {
                Py_DECREF(keys);
                PyErr_SetString(PyExc_ValueError, "map keys must be str");
                return -2;
            }
        }
        /* Bytewise UTF-8 order equals code point order, which is how
         * Python compares str. */
        if (PyList_Sort(keys) < 0) {
            Py_DECREF(keys);
            return -1;
        }
        int rc = kv_enc_map(e, (size_t)n) == KV_OK ? 0 : buf_nomem();
        for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
            PyObject *k = PyList_GET_ITEM(keys, i);
            rc = model_enc(e, k, depth + 1);
            if (rc)
                break;
            PyObject *v = PyDict_GetItemWithError(o, k);
            if (!v) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_RuntimeError, "dict changed size during encoding");
                rc = -1;
                break;
            }
            Py_INCREF(v);
            rc = model_enc(e, v, depth + 1);
            Py_DECREF(v);
        }
        Py_DECREF(keys);
        return rc;
    }
    PyErr_Format(PyExc_ValueError, "cannot encode object of type %.100s as MessagePack/CBOR",
                 Py_TYPE(o)->tp_name);
    return -2;
}

int kvpy_model_encode(PyObject *obj, kv_fmt fmt, kv_buf *out)
{
    kv_enc e;
    kv_enc_init(&e, fmt, out);
    int rc = model_enc(&e, obj, 0);
    return rc == 0 ? 0 : -1;
}

/* ======================================================================
 * §5.4 model decoder: visitor building Python objects
 * ==================================================================== */

typedef struct pv_frame {
    PyObject *obj;        /* list (pre-sized) or dict; owned */
    Py_ssize_t idx;       /* next list slot */
    PyObject *key;        /* pending map key; owned */
    PyObject *last_key;   /* previous key, for the sortedness check; borrowed from obj */
    int is_map;
    int unsorted;
} pv_frame;

typedef struct pv_ctx {
    pv_frame stack[KV_DECODE_MAX_DEPTH + 1];
    int depth;
    PyObject *result;     /* owned */
} pv_ctx;

/* Attach a new value (steals `v`). */
static int pv_push(pv_ctx *c, PyObject *v)
{
    if (!v)
        return -1;
    if (c->depth == 0) {
        c->result = v;
        return 0;
    }
    pv_frame *f = &c->stack[c->depth - 1];
    if (!f->is_map) {
        PyList_SET_ITEM(f->obj, f->idx, v);
        f->idx++;
        return 0;
    }
    if (!f->key) {
        if (f->last_key && PyUnicode_Compare(f->last_key, v) >= 0)
            f->unsorted = 1;
        f->key = v;
        return 0;
    }
    int rc = PyDict_SetItem(f->obj, f->key, v);
    f->last_key = f->key;        /* the dict holds a reference now */
    Py_DECREF(f->key);
    Py_DECREF(v);
    f->key = NULL;
    return rc;
}

static int pv_nil(void *ctx) { Py_INCREF(Py_None); return pv_push(ctx, Py_None); }
static int pv_bool(void *ctx, int v) { return pv_push(ctx, PyBool_FromLong(v)); }
static int pv_int(void *ctx, int64_t v) { return pv_push(ctx, PyLong_FromLongLong(v)); }
static int pv_uint(void *ctx, uint64_t v) { return pv_push(ctx, PyLong_FromUnsignedLongLong(v)); }
static int pv_double(void *ctx, double v)
{
    if (!isfinite(v)) {      /* §5.4: NaN/±inf come back as None */
        Py_INCREF(Py_None);
        return pv_push(ctx, Py_None);
    }
    return pv_push(ctx, PyFloat_FromDouble(v));
}
static int pv_str(void *ctx, const char *s, size_t n)
{
    return pv_push(ctx, PyUnicode_DecodeUTF8(s, (Py_ssize_t)n, "strict"));
}
static int pv_open(pv_ctx *c, size_t n, int is_map)
{
    if (c->depth >= KV_DECODE_MAX_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "nesting too deep");
        return -1;
    }
    if (n > (size_t)PY_SSIZE_T_MAX / 8) {
        PyErr_SetString(PyExc_ValueError, "container too large");
        return -1;
    }
    PyObject *o = is_map ? PyDict_New() : PyList_New((Py_ssize_t)n);
    if (!o)
        return -1;
    pv_frame *f = &c->stack[c->depth++];
    f->obj = o;
    f->idx = 0;
    f->key = NULL;
    f->last_key = NULL;
    f->is_map = is_map;
    f->unsorted = 0;
    return 0;
}
static int pv_array_begin(void *ctx, size_t n) { return pv_open(ctx, n, 0); }
static int pv_map_begin(void *ctx, size_t n) { return pv_open(ctx, n, 1); }
static int pv_close(pv_ctx *c)
{
    pv_frame *f = &c->stack[--c->depth];
    PyObject *o = f->obj;
    f->obj = NULL;
    if (f->is_map && f->unsorted) {
        /* Return maps sorted by key (§5.4). */
        PyObject *items = PyDict_Items(o), *d = NULL;
        Py_DECREF(o);
        if (!items || PyList_Sort(items) < 0) {
            Py_XDECREF(items);
            return -1;
        }
        d = PyDict_New();
        for (Py_ssize_t i = 0; d && i < PyList_GET_SIZE(items); i++) {
            PyObject *kv = PyList_GET_ITEM(items, i);
            if (PyDict_SetItem(d, PyTuple_GET_ITEM(kv, 0), PyTuple_GET_ITEM(kv, 1)) < 0)
                Py_CLEAR(d);
        }
        Py_DECREF(items);
        o = d;
    }
    return pv_push(c, o);
}
static int pv_end(void *ctx) { return pv_close(ctx); }

static const kv_visitor pv_visitor = {
    .on_nil = pv_nil, .on_bool = pv_bool, .on_int = pv_int, .on_uint = pv_uint,
    .on_double = pv_double, .on_str = pv_str, .on_array_begin = pv_array_begin,
    .on_array_end = pv_end, .on_map_begin = pv_map_begin, .on_map_end = pv_end,
};

PyObject *kvpy_model_decode(kv_fmt fmt, const void *data, size_t len, size_t *consumed)
{
    pv_ctx *c = PyMem_Malloc(sizeof *c);
    char err[128];
    if (!c)
        return PyErr_NoMemory();
    c->depth = 0;
    c->result = NULL;
    kv_status st = kv_decode(fmt, data, len, &pv_visitor, c, consumed, err, sizeof err);
    PyObject *r = c->result;
    while (c->depth > 0) {
        pv_frame *f = &c->stack[--c->depth];
        Py_XDECREF(f->obj);
        Py_XDECREF(f->key);
    }
    PyMem_Free(c);
    if (st == KV_OK)
        return r;
    Py_XDECREF(r);
    if (st == KV_CALLBACK) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "decode failed");
    } else if (st == KV_NOMEM) {
        PyErr_NoMemory();
    } else {
        PyErr_Format(PyExc_ValueError, "corrupt %s: %s",
                     fmt == KV_FMT_MSGPACK ? "MessagePack" : "CBOR", err);
    }
    return NULL;
}

/* ======================================================================
 * Vectors
 * ==================================================================== */

int kvpy_vector_encode(PyObject *obj, uint8_t type, kv_buf *out)
{
    PyObject *arr = NULL;
    Py_buffer view;
    int rc = -1;

    if (import_attr("numpy", "ascontiguousarray", &g_np_ascontig) < 0)
        return -1;
    /* Native (little-endian on x86-64/aarch64), C-contiguous, exact dtype. */
    arr = PyObject_CallFunction(g_np_ascontig, "Os", obj, kv_vec_type_name(type));
    if (!arr)
        return -1;
    if (PyObject_GetBuffer(arr, &view, PyBUF_C_CONTIGUOUS | PyBUF_ND) < 0)
        goto out;
    uint64_t dims[255];
    int ndim = view.ndim;
    if (ndim > 255) {
        PyErr_SetString(PyExc_ValueError, "too many dimensions");
        PyBuffer_Release(&view);
        goto out;
    }
    for (int i = 0; i < ndim; i++)
        dims[i] = (uint64_t)view.shape[i];
    kv_status st = kv_vec_header_write(out, type, (size_t)ndim, dims);
    if (st == KV_OK)
        st = kv_buf_append(out, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (st == KV_NOMEM)
        PyErr_NoMemory();
    else if (st != KV_OK)
        PyErr_SetString(PyExc_ValueError, "vector dimension too large");
    else
        rc = 0;
out:
    Py_XDECREF(arr);
    return rc;
}

PyObject *kvpy_vector_decode(const kv_vec_view *v)
{
    if (import_attr("numpy", "frombuffer", &g_np_frombuffer) < 0)
        return NULL;
    /* A bytearray gives numpy a writable buffer: one copy, writable result. */
    PyObject *ba = PyByteArray_FromStringAndSize((const char *)v->data, (Py_ssize_t)v->data_len);
    if (!ba)
        return NULL;
    PyObject *arr = PyObject_CallFunction(g_np_frombuffer, "Os", ba, kv_vec_type_name(v->type));
    Py_DECREF(ba);
    if (!arr || v->ndim <= 1)
        return arr;
    PyObject *shape = PyTuple_New(v->ndim);
    if (!shape) {
        Py_DECREF(arr);
        return NULL;
    }
    for (int i = 0; i < v->ndim; i++)
        PyTuple_SET_ITEM(shape, i, PyLong_FromUnsignedLong(v->dims[i]));
    PyObject *r = PyObject_CallMethodOneArg(arr, s_reshape, shape);
    Py_DECREF(shape);
    Py_DECREF(arr);
    return r;
}

/* ======================================================================
 * Encode (§3.2)
 * ==================================================================== */

/* Reserve the header slot (when headers are on) and return its offset. */
static int begin_payload(kv_buf *out, const kvpy_pack_opts *o, size_t *hdr_at)
{
    *hdr_at = out->len;
    if (o->headers) {
        if (kv_buf_reserve(out, KV_HDR_SIZE) != KV_OK)
            return buf_nomem();
        out->len += KV_HDR_SIZE;
    }
    return 0;
}

static int end_payload(kv_buf *out, const kvpy_pack_opts *o, size_t hdr_at, uint8_t enc)
{
    if (o->headers)
        kv_hdr_write(out->data + hdr_at, enc);
    return 0;
}

static int append_bytes_obj(kv_buf *out, PyObject *b)
{
    if (kv_buf_append(out, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b)) != KV_OK)
        return buf_nomem();
    return 0;
}

/* `<module>.dumps(v)`, the function imported once into *fn: a new
 * reference, or NULL with the exception. */
static PyObject *call_dumps(const char *module, PyObject **fn, PyObject *v)
{
    if (import_attr(module, "dumps", fn) < 0)
        return NULL;
    return PyObject_CallOneArg(*fn, v);
}

static int pack_pickle(PyObject *v, const kvpy_pack_opts *o, kv_buf *out)
{
    size_t at;
    if (o->no_pickle) {
        /* safe mode writes nothing it could not read back */
        PyErr_Format(PyExc_TypeError,
                     "Cannot auto-pack object of type %.100s: storing it needs pickle, which is "
                     "off (unpickle=False or KVAULT_UNPICKLE=0); store bytes, str, numbers, "
                     "numpy arrays, or dicts/lists that fit MessagePack",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    PyObject *b = call_dumps("pickle", &g_pickle_dumps, v);
    if (!b)
        return -1;
    int rc = begin_payload(out, o, &at);
    if (rc == 0)
        rc = append_bytes_obj(out, b);
    Py_DECREF(b);
    if (rc == 0)
        end_payload(out, o, at, KV_ENC_PICKLE);
    return rc;
}

static int pack_json(PyObject *v, const kvpy_pack_opts *o, kv_buf *out)
{
    size_t at;
    Py_ssize_t n;
    PyObject *s = call_dumps("json", &g_json_dumps, v);
    if (!s)
        return -1;
    const char *u = PyUnicode_AsUTF8AndSize(s, &n);
    int rc = u ? begin_payload(out, o, &at) : -1;
    if (rc == 0 && kv_buf_append(out, u, (size_t)n) != KV_OK)
        rc = buf_nomem();
    Py_DECREF(s);
    if (rc == 0)
        end_payload(out, o, at, KV_ENC_JSON);
    return rc;
}

/* MessagePack/CBOR with header; returns -2 when outside the model. */
static int pack_model(PyObject *v, kv_fmt fmt, const kvpy_pack_opts *o, kv_buf *out)
{
    size_t at, start = out->len;
    kv_enc e;
    if (begin_payload(out, o, &at) < 0)
        return -1;
    kv_enc_init(&e, fmt, out);
    int rc = model_enc(&e, v, 0);
    if (rc != 0) {
        out->len = start;
        return rc;
    }
    end_payload(out, o, at, fmt == KV_FMT_MSGPACK ? KV_ENC_MSGPACK : KV_ENC_CBOR);
    return 0;
}

static int cannot_pack(PyObject *v)
{
    PyObject *r = PyObject_Repr(v);
    if (!r)
        return -1;
    PyErr_Format(PyExc_TypeError, "Cannot auto-pack object: %U", r);
    Py_DECREF(r);
    return -1;
}

static int pack_wrapper(PyObject *name, PyObject *data, const kvpy_pack_opts *o, kv_buf *out)
{
    const char *n = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    if (n && strcmp(n, "msgpack") == 0)
        return pack_model(data, KV_FMT_MSGPACK, o, out) == 0 ? 0 : -1;
    if (n && strcmp(n, "cbor") == 0)
        return pack_model(data, KV_FMT_CBOR, o, out) == 0 ? 0 : -1;
    if (n && strcmp(n, "json") == 0)
        return pack_json(data, o, out);
    if (n && strcmp(n, "pickle") == 0)
        return pack_pickle(data, o, out);
    if (!n)
        PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "Unknown encoding wrapper: %S", name);
    return -1;
}

static int pack_i64(int64_t i, const kvpy_pack_opts *o, kv_buf *out)
{
    size_t at;
    if (begin_payload(out, o, &at) < 0 || kv_buf_append(out, &i, 8) != KV_OK)
        return buf_nomem();
    return end_payload(out, o, at, KV_ENC_PACKER);
}

static int pack_f64(double d, const kvpy_pack_opts *o, kv_buf *out)
{
    size_t at;
    if (begin_payload(out, o, &at) < 0 || kv_buf_append(out, &d, 8) != KV_OK)
        return buf_nomem();
    return end_payload(out, o, at, KV_ENC_PACKER);
}

int kvpy_pack_value(PyObject *v, const kvpy_pack_opts *o, kv_buf *out)
{
    size_t at;
    PyTypeObject *tp = Py_TYPE(v);

    if (intern_strings() < 0)
        return -1;
    /* Row 1: bytes (and subclasses) raw, never a header. */
    if (PyBytes_Check(v))
        return append_bytes_obj(out, v);
    /* Fast paths for exact builtins (they cannot be wrappers or arrays). */
    if (tp == &PyLong_Type || tp == &PyBool_Type) {
        int overflow = 0;
        long long i = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (i == -1 && PyErr_Occurred())
            return -1;
        if (!overflow)
            return pack_i64(i, o, out);
        double d = PyLong_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError))
                return -1;
            PyErr_Clear();
            return o->use_pickle ? pack_pickle(v, o, out) : cannot_pack(v);
        }
        return pack_f64(d, o, out);
    }
    if (tp == &PyFloat_Type)
        return pack_f64(PyFloat_AS_DOUBLE(v), o, out);
    if (tp == &PyUnicode_Type)
        goto row6;
    if (tp == &PyDict_Type || tp == &PyList_Type)
        goto row7;

    /* Row 2: duck-typed wrappers. */
    {
        PyObject *name, *data;
        int r = lookup_attr(v, s_encoding_name, &name);
        if (r < 0)
            return -1;
        if (r > 0) {
            r = lookup_attr(v, s_data, &data);
            if (r < 0) {
                Py_DECREF(name);
                return -1;
            }
            if (r > 0) {
                int rc = pack_wrapper(name, data, o, out);
                Py_DECREF(name);
                Py_DECREF(data);
                return rc;
            }
            Py_DECREF(name);
        }
    }
    /* Row 3: numpy arrays (and numpy scalars) of the ten numeric dtypes. */
    {
        PyObject *arrf;
        int r = lookup_attr(v, s_array, &arrf);
        if (r < 0)
            return -1;
        if (r > 0) {
            Py_DECREF(arrf);
            PyObject *dt, *nm = NULL;
            r = lookup_attr(v, s_dtype, &dt);
            if (r < 0)
                return -1;
            if (r > 0) {
                r = lookup_attr(dt, s_name, &nm);
                Py_DECREF(dt);
                if (r < 0)
                    return -1;
            }
            uint8_t type = 0;
            if (nm && PyUnicode_Check(nm))
                type = kv_vec_type_from_name(PyUnicode_AsUTF8(nm));
            Py_XDECREF(nm);
            if (type) {
                if (begin_payload(out, o, &at) < 0)
                    return -1;
                if (kvpy_vector_encode(v, type, out) < 0)
                    return -1;
                return end_payload(out, o, at, KV_ENC_PACKER);
            }
        }
    }
    /* Row 4: __index__ → i64 (falls to row 5 when out of range). */
    if (PyIndex_Check(v)) {
        /* numpy arrays of non-vector dtypes (bool, float16, ...) have an
         * nb_index slot that raises TypeError unless they are integer
         * scalars: such values are "not convertible" and fall through. */
        PyObject *i = PyNumber_Index(v);
        if (i) {
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(i, &overflow);
            Py_DECREF(i);
            if (x == -1 && PyErr_Occurred())
                return -1;
            if (!overflow)
                return pack_i64(x, o, out);
        } else if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
        } else {
            return -1;
        }
    }
    /* Row 5: anything float() accepts through __float__/__index__. */
    if (tp->tp_as_number && (tp->tp_as_number->nb_float || tp->tp_as_number->nb_index)) {
        double d = PyFloat_AsDouble(v);
        if (!(d == -1.0 && PyErr_Occurred()))
            return pack_f64(d, o, out);
        if (!PyErr_ExceptionMatches(PyExc_OverflowError) &&
            !PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError))
            return -1;
        PyErr_Clear();
    }
    /* Row 6: str. */
    if (PyUnicode_Check(v)) {
row6:;
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (!s)
            return -1;
        if (begin_payload(out, o, &at) < 0 || kv_buf_append(out, s, (size_t)n) != KV_OK)
            return buf_nomem();
        return end_payload(out, o, at, KV_ENC_STR);
    }
    /* Row 7: dict/list → MessagePack, else pickle. */
    if (PyDict_Check(v) || PyList_Check(v)) {
row7:;
        int rc = pack_model(v, KV_FMT_MSGPACK, o, out);
        if (rc != -2)
            return rc;
        PyErr_Clear();
        return o->use_pickle ? pack_pickle(v, o, out) : cannot_pack(v);
    }
    /* Row 8: everything else. */
    return o->use_pickle ? pack_pickle(v, o, out) : cannot_pack(v);
}

/* ======================================================================
 * Decode (§3.3, §3.4)
 * ==================================================================== */

static PyObject *call_on_bytes(PyObject *fn, const uint8_t *p, size_t n)
{
    PyObject *b = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    if (!b)
        return NULL;
    PyObject *r = PyObject_CallOneArg(fn, b);
    Py_DECREF(b);
    return r;
}

PyObject *kvpy_unpack_payload(uint8_t enc, const uint8_t *p, size_t n)
{
    switch (enc) {
    case KV_ENC_RAW:
        return PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    case KV_ENC_PICKLE:
        if (import_attr("pickle", "loads", &g_pickle_loads) < 0)
            return NULL;
        return call_on_bytes(g_pickle_loads, p, n);
    case KV_ENC_JSON: {
        if (import_attr("json", "loads", &g_json_loads) < 0)
            return NULL;
        PyObject *s = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, "strict");
        if (!s)
            return NULL;
        PyObject *r = PyObject_CallOneArg(g_json_loads, s);
        Py_DECREF(s);
        return r;
    }
    case KV_ENC_MSGPACK:
        return kvpy_model_decode(KV_FMT_MSGPACK, p, n, NULL);
    case KV_ENC_CBOR:
        return kvpy_model_decode(KV_FMT_CBOR, p, n, NULL);
    case KV_ENC_STR:
        return PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, "strict");
    case KV_ENC_PACKER: {
        kv_guess g;
        kv_packer_guess(p, n, &g);
        switch (g.kind) {
        case KV_GUESS_EMPTY: return PyBytes_FromStringAndSize("", 0);
        case KV_GUESS_INT: return PyLong_FromLongLong(g.i64);
        case KV_GUESS_FLOAT: return PyFloat_FromDouble(g.f64);
        case KV_GUESS_VECTOR:
            if (intern_strings() < 0)
                return NULL;
            return kvpy_vector_decode(&g.vec);
        case KV_GUESS_STR: return PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, "strict");
        case KV_GUESS_BYTES: return PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
        }
        break;
    }
    }
    PyErr_SetString(PyExc_ValueError, "Unknown encoding type");
    return NULL;
}

void kvpy_name_decode_error(const char *fmt, ...)
{
    if (!PyErr_ExceptionMatches(PyExc_ValueError))
        return;
    PyObject *type, *val, *tb;
    PyErr_Fetch(&type, &val, &tb);
    PyErr_NormalizeException(&type, &val, &tb);
    va_list ap;
    va_start(ap, fmt);
    PyObject *what = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    PyObject *msg = what && val ? PyObject_Str(val) : NULL;
    if (msg)
        PyErr_Format(PyExc_ValueError, "value of %U cannot be decoded: %U", what, msg);
    Py_XDECREF(what);
    Py_XDECREF(msg);
    if (PyErr_Occurred()) {
        Py_XDECREF(type);
        Py_XDECREF(val);
        Py_XDECREF(tb);
    } else {
        PyErr_Restore(type, val, tb);  /* formatting failed: keep the original */
    }
}

int kvpy_unpack_needs_python(const void *data, size_t len, const kvpy_pack_opts *o)
{
    uint8_t enc;
    const uint8_t *p;
    size_t n;
    if (!o->auto_pack)
        return 0;
    if (kv_hdr_parse(data, len, &enc, &p, &n) != KV_HDR_OK)
        return 0;
    return enc == KV_ENC_PICKLE || enc == KV_ENC_JSON;
}

PyObject *kvpy_unpack_value(const void *data, size_t len, const kvpy_pack_opts *o)
{
    uint8_t enc;
    const uint8_t *p;
    size_t n;
    if (!o->auto_pack)
        return PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
    kv_hdr_result r = kv_hdr_parse(data, len, &enc, &p, &n);
    if (r == KV_HDR_NONE)
        return PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
    if (r != KV_HDR_OK) {
        PyErr_SetString(PyExc_ValueError, kv_hdr_strerror(r));
        return NULL;
    }
    if (enc == KV_ENC_PICKLE && o->no_pickle) {
        PyErr_SetString(PyExc_ValueError,
                        "the stored value is pickled and unpickling is off (unpickle=False or "
                        "KVAULT_UNPICKLE=0): unpickling runs code from the file; open it with "
                        "unpickle=True only if you trust the file");
        return NULL;
    }
    return kvpy_unpack_payload(enc, p, n);
}
