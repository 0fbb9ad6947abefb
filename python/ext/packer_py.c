/*
 * packer_py.c - kohakuvault._kvault.DataPacker (docs/api.md §5) and the packing
 * helpers the column binding uses (packer_py.h).
 *
 * The dtype grammar, scalar/text/padding codecs live in engine/packer.c;
 * MessagePack and CBOR bodies reuse autopack.c's §5.4 model converters
 * (kvpy_model_encode/kvpy_model_decode, declared in kvpy.h), the same
 * ones KVault auto-pack uses. Vectors go through numpy (imported
 * lazily). JSON-schema validation uses the jsonschema package
 * (Draft7Validator), called from here.
 *
 * Sections: numpy | msgpack/cbor model | pack/unpack | DataPacker type.
 */
#include "packer_py.h"

#include <string.h>

/* ------------------------------------------------------------------------ */
/* numpy                                                                    */
/* ------------------------------------------------------------------------ */

static PyObject *kvpy_np; /* owned: the numpy module, imported on first use */

static PyObject *kvpy_numpy(void)
{
    if (!kvpy_np)
        kvpy_np = PyImport_ImportModule("numpy");
    return kvpy_np;
}

/* Shape of an array-like as a Python list string "[a, b]" for messages. */
static PyObject *kvpy_shape_list(PyObject *arr)
{
    PyObject *shape = PyObject_GetAttrString(arr, "shape");
    if (!shape)
        return NULL;
    PyObject *lst = PySequence_List(shape);
    Py_DECREF(shape);
    return lst;
}

/* np.ascontiguousarray(np.asarray(v).astype(name)) unless already exact. */
static PyObject *kvpy_as_array(PyObject *v, const char *name)
{
    PyObject *np = kvpy_numpy();
    if (!np)
        return NULL;
    PyObject *arr = PyObject_CallMethod(np, "asarray", "O", v);
    if (!arr)
        return NULL;
    PyObject *dt = PyObject_GetAttrString(arr, "dtype");
    int same = 0;
    if (dt) {
        PyObject *dn = PyObject_GetAttrString(dt, "name");
        if (dn) {
            same = PyUnicode_Check(dn) && PyUnicode_CompareWithASCIIString(dn, name) == 0;
            Py_DECREF(dn);
        }
        Py_DECREF(dt);
    }
    PyErr_Clear();
    if (!same) {
        PyObject *c = PyObject_CallMethod(arr, "astype", "s", name);
        Py_DECREF(arr);
        if (!c)
            return NULL;
        arr = c;
    }
    PyObject *c = PyObject_CallMethod(np, "ascontiguousarray", "O", arr);
    Py_DECREF(arr);
    return c;
}

/* New writable ndarray of `count` elements of type code `t`, filled from
 * data, reshaped to dims when ndim > 1. */
static PyObject *kvpy_make_array(uint8_t t, const uint8_t *data, uint64_t count, unsigned ndim,
                                 const uint64_t *dims)
{
    PyObject *np = kvpy_numpy();
    const char *name = kv_vec_type_name(t);
    Py_buffer view;
    if (!np)
        return NULL;
    if (!name) {
        PyErr_Format(PyExc_ValueError, "Unknown vector type 0x%02x", t);
        return NULL;
    }
    PyObject *arr = PyObject_CallMethod(np, "empty", "Ks", (unsigned long long)count, name);
    if (!arr)
        return NULL;
    if (PyObject_GetBuffer(arr, &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        Py_DECREF(arr);
        return NULL;
    }
    memcpy(view.buf, data, (size_t)count * kv_vec_elem_size(t));
    PyBuffer_Release(&view);
    if (ndim > 1) {
        PyObject *shape = PyTuple_New(ndim);
        if (!shape) {
            Py_DECREF(arr);
            return NULL;
        }
        for (unsigned d = 0; d < ndim; d++)
            PyTuple_SET_ITEM(shape, d, PyLong_FromUnsignedLongLong(dims[d]));
        PyObject *r = PyObject_CallMethod(arr, "reshape", "O", shape);
        Py_DECREF(shape);
        Py_DECREF(arr);
        return r;
    }
    return arr;
}

/* ------------------------------------------------------------------------ */
/* pack/unpack                                                              */
/* ------------------------------------------------------------------------ */

int kvpy_packer_parse(const char *dtype, kv_packer *pk)
{
    char err[KV_PK_ERRLEN];
    if (kv_packer_parse(dtype, pk, err) != KV_OK) {
        PyErr_SetString(PyExc_ValueError, err);
        return -1;
    }
    return 0;
}

static int kvpy_raise_pk(kv_status st, const char *err)
{
    if (st == KV_NOMEM)
        PyErr_NoMemory();
    else
        PyErr_SetString(PyExc_ValueError, err);
    return -1;
}

/* Append `len` bytes, zero-padded to the fixed size when pk has one. */
static int kvpy_put_sized(const kv_packer *pk, const void *src, size_t len, kv_buf *out)
{
    char err[KV_PK_ERRLEN];
    if (pk->pk_has_fixed) {
        if (kv_buf_reserve(out, pk->pk_fixed) != KV_OK)
            return kvpy_raise_pk(KV_NOMEM, "");
        kv_status st = kv_pack_fixed(src, len, pk->pk_fixed, out->data + out->len, err);
        if (st != KV_OK)
            return kvpy_raise_pk(st, err);
        out->len += pk->pk_fixed;
        return 0;
    }
    if (kv_buf_append(out, src, len) != KV_OK)
        return kvpy_raise_pk(KV_NOMEM, "");
    return 0;
}

/* bytes-like value: buffer objects (not str) or a sequence of ints 0..255. */
static int kvpy_pack_bytes(const kv_packer *pk, PyObject *v, kv_buf *out)
{
    if (PyUnicode_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "Expected bytes, bytearray or a sequence of ints, got str");
        return -1;
    }
    if (PyObject_CheckBuffer(v)) {
        Py_buffer view;
        if (PyObject_GetBuffer(v, &view, PyBUF_C_CONTIGUOUS) < 0)
            return -1;
        int rc = kvpy_put_sized(pk, view.buf, (size_t)view.len, out);
        PyBuffer_Release(&view);
        return rc;
    }
    PyObject *seq = PySequence_Check(v) ? PySequence_Fast(v, "") : NULL;
    if (!seq) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "Expected bytes, bytearray or a sequence of ints, got %s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    uint8_t *tmp = PyMem_Malloc((size_t)n + 1);
    int rc = -1;
    if (!tmp) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *it = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyLong_Check(it)) {
            PyErr_Format(PyExc_TypeError, "Expected int in byte sequence, got %s", Py_TYPE(it)->tp_name);
            goto out;
        }
        long b = PyLong_AsLong(it);
        if (b < 0 || b > 255) {
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "byte must be in range(0, 256)");
            goto out;
        }
        tmp[i] = (uint8_t)b;
    }
    rc = kvpy_put_sized(pk, tmp, (size_t)n, out);
out:
    PyMem_Free(tmp);
    Py_DECREF(seq);
    return rc;
}

static int kvpy_check_shape(const kv_packer *pk, PyObject *arr, int skip_first)
{
    PyObject *shape = PyObject_GetAttrString(arr, "shape");
    if (!shape)
        return -1;
    Py_ssize_t nd = PyTuple_GET_SIZE(shape);
    int ok = nd - skip_first == pk->pk_ndim;
    for (Py_ssize_t d = skip_first; ok && d < nd; d++)
        ok = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, d)) == (long long)pk->pk_dims[d - skip_first];
    Py_DECREF(shape);
    if (ok)
        return 0;
    PyObject *exp = PyList_New(pk->pk_ndim);
    for (unsigned d = 0; exp && d < pk->pk_ndim; d++)
        PyList_SET_ITEM(exp, d, PyLong_FromUnsignedLong(pk->pk_dims[d]));
    PyObject *got = kvpy_shape_list(arr);
    if (got && skip_first) {
        PyObject *tail = PyList_GetSlice(got, 1, PY_SSIZE_T_MAX);
        Py_DECREF(got);
        got = tail;
    }
    if (exp && got)
        PyErr_Format(PyExc_ValueError, "Shape mismatch: expected %R, got %R", exp, got);
    Py_XDECREF(exp);
    Py_XDECREF(got);
    return -1;
}

static int kvpy_pack_vec(const kv_packer *pk, PyObject *v, kv_buf *out)
{
    const char *name = kv_vec_type_name(pk->pk_vec_type);
    PyObject *arr = kvpy_as_array(v, name);
    Py_buffer view;
    int rc = -1;
    if (!arr)
        return -1;
    if (pk->pk_ndim > 0 && kvpy_check_shape(pk, arr, 0) < 0)
        goto out;
    if (PyObject_GetBuffer(arr, &view, PyBUF_C_CONTIGUOUS | PyBUF_ND) < 0)
        goto out;
    if (pk->pk_ndim > 0) {
        uint8_t t = pk->pk_vec_type;
        rc = (kv_buf_append(out, &t, 1) == KV_OK && kv_buf_append(out, view.buf, (size_t)view.len) == KV_OK)
                 ? 0 : kvpy_raise_pk(KV_NOMEM, "");
    } else {
        uint64_t dims[256];
        int nd = view.ndim;
        if (nd > 255) {
            PyErr_SetString(PyExc_ValueError, "Too many dimensions");
        } else {
            for (int d = 0; d < nd; d++)
                dims[d] = (uint64_t)view.shape[d];
            kv_status st = kv_vec_header_write(out, pk->pk_vec_type, (size_t)nd, dims);
            if (st == KV_OK && kv_buf_append(out, view.buf, (size_t)view.len) == KV_OK)
                rc = 0;
            else
                kvpy_raise_pk(st == KV_OK ? KV_NOMEM : st, "Invalid vector shape");
        }
    }
    PyBuffer_Release(&view);
out:
    Py_DECREF(arr);
    return rc;
}

int kvpy_pack_one(const kv_packer *pk, PyObject *v, kv_buf *out)
{
    size_t mark = out->len;
    uint8_t b8[8];
    char err[KV_PK_ERRLEN];
    int rc = -1;

    switch (pk->pk_kind) {
    case KV_PK_I64: {
        if (PyFloat_Check(v)) {
            PyErr_Format(PyExc_TypeError, "Expected int for i64, got %s", Py_TYPE(v)->tp_name);
            break;
        }
        PyObject *i = PyNumber_Index(v);
        if (!i)
            break;
        long long x = PyLong_AsLongLong(i);
        Py_DECREF(i);
        if (x == -1 && PyErr_Occurred()) {
            if (PyErr_ExceptionMatches(PyExc_OverflowError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "Integer out of range for i64");
            }
            break;
        }
        kv_pack_i64(x, b8);
        rc = kv_buf_append(out, b8, 8) == KV_OK ? 0 : kvpy_raise_pk(KV_NOMEM, "");
        break;
    }
    case KV_PK_F64: {
        if (PyUnicode_Check(v) || PyBytes_Check(v)) {
            PyErr_Format(PyExc_TypeError, "Expected float for f64, got %s", Py_TYPE(v)->tp_name);
            break;
        }
        double d = PyFloat_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred())
            break;
        kv_pack_f64(d, b8);
        rc = kv_buf_append(out, b8, 8) == KV_OK ? 0 : kvpy_raise_pk(KV_NOMEM, "");
        break;
    }
    case KV_PK_STR: {
        if (!PyUnicode_Check(v)) {
            PyErr_Format(PyExc_TypeError, "Expected str, got %s", Py_TYPE(v)->tp_name);
            break;
        }
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (!s) {
            if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "String contains surrogates; cannot encode");
            }
            break;
        }
        if (pk->pk_enc == KV_STR_UTF8) {
            rc = kvpy_put_sized(pk, s, (size_t)n, out);
            break;
        }
        uint8_t *enc = NULL;
        size_t elen = 0;
        kv_status st = kv_str_encode(pk->pk_enc, s, (size_t)n, &enc, &elen, err);
        if (st != KV_OK) {
            kvpy_raise_pk(st, err);
            break;
        }
        rc = kvpy_put_sized(pk, enc, elen, out);
        free(enc);
        break;
    }
    case KV_PK_BYTES:
        rc = kvpy_pack_bytes(pk, v, out);
        break;
    case KV_PK_MSGPACK:
    case KV_PK_CBOR: {
        kv_buf tmp;
        kv_buf_init(&tmp);
        if (kvpy_model_encode(v, pk->pk_kind == KV_PK_MSGPACK ? KV_FMT_MSGPACK : KV_FMT_CBOR, &tmp) == 0)
            rc = kvpy_put_sized(pk, tmp.data, tmp.len, out);
        kv_buf_free(&tmp);
        break;
    }
    case KV_PK_VEC:
        rc = kvpy_pack_vec(pk, v, out);
        break;
    }
    if (rc < 0)
        out->len = mark;
    return rc;
}

static PyObject *kvpy_not_enough(size_t need, size_t have)
{
    PyErr_Format(PyExc_ValueError, "Not enough data: need %zu bytes, have %zu", need, have);
    return NULL;
}

PyObject *kvpy_unpack_one(const kv_packer *pk, const uint8_t *data, size_t len)
{
    char err[KV_PK_ERRLEN];
    size_t n = len;
    if (pk->pk_elem_size > 0) {
        if (len < pk->pk_elem_size)
            return kvpy_not_enough(pk->pk_elem_size, len);
        n = pk->pk_elem_size;
    }
    switch (pk->pk_kind) {
    case KV_PK_I64:
        return PyLong_FromLongLong(kv_unpack_i64(data));
    case KV_PK_F64:
        return PyFloat_FromDouble(kv_unpack_f64(data));
    case KV_PK_STR: {
        char *s = NULL;
        size_t sl = 0;
        if (pk->pk_enc == KV_STR_UTF8) {
            size_t m = n;
            if (pk->pk_has_fixed)
                while (m > 0 && data[m - 1] == 0)
                    m--;
            PyObject *r = PyUnicode_DecodeUTF8((const char *)data, (Py_ssize_t)m, "strict");
            if (!r && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "Invalid UTF-8 data");
            }
            return r;
        }
        kv_status st = kv_str_decode(pk->pk_enc, data, n, pk->pk_has_fixed, &s, &sl, err);
        if (st != KV_OK) {
            kvpy_raise_pk(st, err);
            return NULL;
        }
        PyObject *r = PyUnicode_DecodeUTF8(s, (Py_ssize_t)sl, "strict");
        free(s);
        return r;
    }
    case KV_PK_BYTES:
        return PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)n);
    case KV_PK_MSGPACK:
    case KV_PK_CBOR:
        if (n == 0)
            return kvpy_not_enough(1, 0);
        return kvpy_model_decode(pk->pk_kind == KV_PK_MSGPACK ? KV_FMT_MSGPACK : KV_FMT_CBOR, data, n, NULL);
    case KV_PK_VEC: {
        if (pk->pk_ndim > 0) {
            uint8_t t;
            const uint8_t *p;
            size_t nb;
            uint64_t dims[KV_PK_MAX_DIMS];
            kv_status st = kv_packer_vec_fixed(pk, data, len, &t, &p, &nb, err);
            if (st != KV_OK) {
                kvpy_raise_pk(st, err);
                return NULL;
            }
            for (unsigned d = 0; d < pk->pk_ndim; d++)
                dims[d] = pk->pk_dims[d];
            return kvpy_make_array(t, p, pk->pk_count, pk->pk_ndim, dims);
        }
        kv_vec_view vv;
        if (kv_vec_parse(data, n, &vv) != KV_OK) {
            if (n < 2 || kv_vec_elem_size(data[0]) == 0)
                PyErr_Format(PyExc_ValueError, n < 2 ? "Not enough data for vector header (%zu bytes)"
                                                     : "Invalid vector data: unknown type (%zu bytes)", n);
            else
                PyErr_Format(PyExc_ValueError, "Not enough data for vector (%zu bytes)", n);
            return NULL;
        }
        uint64_t dims[256];
        unsigned nd = vv.ndim ? vv.ndim : 1;
        for (unsigned d = 0; d < vv.ndim; d++)
            dims[d] = vv.dims[d];
        if (!vv.ndim)
            dims[0] = 1;
        return kvpy_make_array(vv.type, vv.data, vv.count, nd, dims);
    }
    }
    PyErr_SetString(PyExc_ValueError, "corrupt packer");
    return NULL;
}

int kvpy_pack_many(const kv_packer *pk, PyObject *values, kv_buf *out, size_t **lens, size_t *n)
{
    size_t mark = out->len;
    *n = 0;
    if (lens)
        *lens = NULL;
    /* Fixed-shape vectors: stack once, one type byte per row. */
    if (pk->pk_kind == KV_PK_VEC && pk->pk_ndim > 0 && !lens) {
        PyObject *np = kvpy_numpy();
        if (!np)
            return -1;
        Py_ssize_t cnt = PyObject_Length(values);
        if (cnt < 0)
            return -1;
        if (cnt == 0)
            return 0;
        PyObject *stacked = PyObject_HasAttrString(values, "__array__") || PyObject_CheckBuffer(values)
                                ? (Py_INCREF(values), values)
                                : PyObject_CallMethod(np, "stack", "O", values);
        if (!stacked) {
            if (PyErr_ExceptionMatches(PyExc_ValueError)) { /* ragged shapes */
                PyErr_Clear();
                PyErr_SetString(PyExc_ValueError, "Shape mismatch: all vectors must have the dtype's shape");
            }
            return -1;
        }
        PyObject *arr = kvpy_as_array(stacked, kv_vec_type_name(pk->pk_vec_type));
        Py_DECREF(stacked);
        if (!arr)
            return -1;
        int rc = kvpy_check_shape(pk, arr, 1);
        Py_buffer view;
        if (rc == 0 && PyObject_GetBuffer(arr, &view, PyBUF_C_CONTIGUOUS | PyBUF_ND) == 0) {
            size_t row = pk->pk_elem_size - 1, rows = row ? (size_t)view.len / row : 0;
            if (kv_buf_reserve(out, rows * pk->pk_elem_size) != KV_OK) {
                PyErr_NoMemory();
                rc = -1;
            } else {
                for (size_t r = 0; r < rows; r++) {
                    out->data[out->len++] = pk->pk_vec_type;
                    memcpy(out->data + out->len, (const uint8_t *)view.buf + r * row, row);
                    out->len += row;
                }
                *n = rows;
            }
            PyBuffer_Release(&view);
        } else
            rc = -1;
        Py_DECREF(arr);
        return rc;
    }
    PyObject *seq = PySequence_Fast(values, "values must be a sequence");
    if (!seq)
        return -1;
    Py_ssize_t cnt = PySequence_Fast_GET_SIZE(seq);
    size_t *l = NULL;
    if (lens) {
        l = PyMem_Malloc(sizeof *l * (size_t)(cnt ? cnt : 1));
        if (!l) {
            Py_DECREF(seq);
            PyErr_NoMemory();
            return -1;
        }
    }
    if (pk->pk_elem_size && kv_buf_reserve(out, pk->pk_elem_size * (size_t)cnt) != KV_OK) {
        PyMem_Free(l);
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < cnt; i++) {
        size_t before = out->len;
        if (kvpy_pack_one(pk, PySequence_Fast_GET_ITEM(seq, i), out) < 0) {
            out->len = mark;
            PyMem_Free(l);
            Py_DECREF(seq);
            return -1;
        }
        if (l)
            l[i] = out->len - before;
    }
    Py_DECREF(seq);
    if (lens)
        *lens = l;
    *n = (size_t)cnt;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* DataPacker type                                                          */
/* ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    kv_packer pk;
    PyObject *dtype;      /* owned: the dtype string (for repr) */
    PyObject *validator;  /* owned or NULL: jsonschema Draft7Validator */
} DataPackerObject;

static PyTypeObject DataPackerType;

static int DataPacker_init(DataPackerObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"dtype", NULL};
    const char *dtype;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "s", kwlist, &dtype))
        return -1;
    if (kvpy_packer_parse(dtype, &self->pk) < 0)
        return -1;
    Py_XSETREF(self->dtype, PyUnicode_FromString(dtype));
    Py_CLEAR(self->validator);
    return self->dtype ? 0 : -1;
}

static void DataPacker_dealloc(DataPackerObject *self)
{
    Py_XDECREF(self->dtype);
    Py_XDECREF(self->validator);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *DataPacker_new_dtype(const char *dtype)
{
    return PyObject_CallFunction((PyObject *)&DataPackerType, "s", dtype);
}

static PyObject *DataPacker_with_json_schema(PyObject *cls, PyObject *schema)
{
    PyObject *mod = PyImport_ImportModule("jsonschema");
    if (!mod)
        return NULL;
    PyObject *vcls = PyObject_GetAttrString(mod, "Draft7Validator");
    PyObject *exc_schema = PyObject_GetAttrString(mod, "SchemaError");
    Py_DECREF(mod);
    PyObject *self = NULL, *validator = NULL;
    if (!vcls || !exc_schema)
        goto out;
    PyObject *r = PyObject_CallMethod(vcls, "check_schema", "O", schema);
    if (!r) {
        PyObject *et, *ev, *tb;
        PyErr_Fetch(&et, &ev, &tb);
        PyErr_NormalizeException(&et, &ev, &tb);
        PyObject *msg = ev ? PyObject_GetAttrString(ev, "message") : NULL;
        if (!msg) {
            PyErr_Clear();
            msg = ev ? PyObject_Str(ev) : PyUnicode_FromString("invalid schema");
        }
        PyErr_Format(PyExc_ValueError, "Schema compilation failed: %S", msg);
        Py_XDECREF(msg);
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(tb);
        goto out;
    }
    Py_DECREF(r);
    validator = PyObject_CallFunctionObjArgs(vcls, schema, NULL);
    if (!validator)
        goto out;
    self = DataPacker_new_dtype("msgpack");
    if (self)
        ((DataPackerObject *)self)->validator = validator, validator = NULL;
out:
    Py_XDECREF(validator);
    Py_XDECREF(vcls);
    Py_XDECREF(exc_schema);
    return self;
}

static PyObject *DataPacker_with_cddl_schema(PyObject *cls, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"schema", NULL};
    PyObject *schema = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O", kwlist, &schema))
        return NULL;
    return DataPacker_new_dtype("cbor"); /* the schema is accepted and ignored */
}

/* Validate against the JSON schema, if any: ValueError("Validation errors: ..."). */
static int DataPacker_validate(DataPackerObject *self, PyObject *value)
{
    if (!self->validator)
        return 0;
    PyObject *it = PyObject_CallMethod(self->validator, "iter_errors", "O", value);
    if (!it)
        return -1;
    PyObject *errs = PySequence_List(it);
    Py_DECREF(it);
    if (!errs)
        return -1;
    if (PyList_GET_SIZE(errs) == 0) {
        Py_DECREF(errs);
        return 0;
    }
    PyObject *msgs = PyList_New(0);
    for (Py_ssize_t i = 0; msgs && i < PyList_GET_SIZE(errs); i++) {
        PyObject *m = PyObject_GetAttrString(PyList_GET_ITEM(errs, i), "message");
        if (!m || PyList_Append(msgs, m) < 0) {
            Py_XDECREF(m);
            Py_CLEAR(msgs);
            break;
        }
        Py_DECREF(m);
    }
    Py_DECREF(errs);
    if (!msgs)
        return -1;
    PyObject *sep = PyUnicode_FromString("; ");
    PyObject *joined = sep ? PyUnicode_Join(sep, msgs) : NULL;
    Py_XDECREF(sep);
    Py_DECREF(msgs);
    if (joined) {
        PyErr_Format(PyExc_ValueError, "Validation errors: %U", joined);
        Py_DECREF(joined);
    }
    return -1;
}

static PyObject *kvpy_buf_to_bytes(kv_buf *b)
{
    PyObject *r = PyBytes_FromStringAndSize((const char *)b->data, (Py_ssize_t)b->len);
    kv_buf_free(b);
    return r;
}

static PyObject *DataPacker_pack(DataPackerObject *self, PyObject *value)
{
    kv_buf b;
    if (DataPacker_validate(self, value) < 0)
        return NULL;
    kv_buf_init(&b);
    if (kvpy_pack_one(&self->pk, value, &b) < 0) {
        kv_buf_free(&b);
        return NULL;
    }
    return kvpy_buf_to_bytes(&b);
}

static PyObject *DataPacker_pack_many(DataPackerObject *self, PyObject *values)
{
    kv_buf b;
    size_t n;
    if (self->validator) {
        PyObject *seq = PySequence_Fast(values, "values must be a sequence");
        if (!seq)
            return NULL;
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++)
            if (DataPacker_validate(self, PySequence_Fast_GET_ITEM(seq, i)) < 0) {
                Py_DECREF(seq);
                return NULL;
            }
        Py_DECREF(seq);
    }
    kv_buf_init(&b);
    if (kvpy_pack_many(&self->pk, values, &b, NULL, &n) < 0) {
        kv_buf_free(&b);
        return NULL;
    }
    return kvpy_buf_to_bytes(&b);
}

static PyObject *DataPacker_unpack(DataPackerObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"data", "offset", NULL};
    Py_buffer view;
    Py_ssize_t offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|n", kwlist, &view, &offset))
        return NULL;
    PyObject *r = NULL;
    if (offset < 0 || offset > view.len)
        PyErr_Format(PyExc_ValueError, "Not enough data: offset %zd beyond %zd bytes", offset, view.len);
    else
        r = kvpy_unpack_one(&self->pk, (const uint8_t *)view.buf + offset, (size_t)(view.len - offset));
    PyBuffer_Release(&view);
    return r;
}

static PyObject *DataPacker_unpack_many(DataPackerObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"data", "count", "offsets", NULL};
    Py_buffer view;
    PyObject *count = Py_None, *offsets = Py_None, *res = NULL, *seq = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|OO", kwlist, &view, &count, &offsets))
        return NULL;
    const uint8_t *d = view.buf;
    size_t len = (size_t)view.len;
    if (self->pk.pk_elem_size > 0) {
        if (count == Py_None) {
            PyErr_SetString(PyExc_ValueError, "Fixed-size types require count parameter");
            goto out;
        }
        Py_ssize_t c = PyLong_AsSsize_t(count);
        if (c == -1 && PyErr_Occurred())
            goto out;
        if (c < 0) {
            PyErr_SetString(PyExc_ValueError, "count must be >= 0");
            goto out;
        }
        size_t es = self->pk.pk_elem_size;
        if ((size_t)c > len / es) {
            kvpy_not_enough((size_t)c * es, len);
            goto out;
        }
        res = PyList_New(c);
        for (Py_ssize_t i = 0; res && i < c; i++) {
            PyObject *v = kvpy_unpack_one(&self->pk, d + (size_t)i * es, es);
            if (!v) {
                Py_CLEAR(res);
                break;
            }
            PyList_SET_ITEM(res, i, v);
        }
        goto out;
    }
    if (offsets == Py_None) {
        PyErr_SetString(PyExc_ValueError, "Variable-size types require offsets parameter");
        goto out;
    }
    seq = PySequence_Fast(offsets, "offsets must be a sequence of ints");
    if (!seq)
        goto out;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    res = PyList_New(n);
    for (Py_ssize_t i = 0; res && i < n; i++) {
        Py_ssize_t s = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(seq, i));
        Py_ssize_t e = i + 1 < n ? PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(seq, i + 1)) : (Py_ssize_t)len;
        if (PyErr_Occurred()) {
            Py_CLEAR(res);
            break;
        }
        if (s < 0 || e < s || (size_t)e > len) {
            PyErr_Format(PyExc_ValueError, "Offset out of bounds: element %zd spans %zd..%zd of %zu bytes",
                         i, s, e, len);
            Py_CLEAR(res);
            break;
        }
        PyObject *v = kvpy_unpack_one(&self->pk, d + s, (size_t)(e - s));
        if (!v) {
            Py_CLEAR(res);
            break;
        }
        PyList_SET_ITEM(res, i, v);
    }
out:
    Py_XDECREF(seq);
    PyBuffer_Release(&view);
    return res;
}

static PyObject *DataPacker_get_elem_size(DataPackerObject *self, void *c)
{
    return PyLong_FromSize_t(self->pk.pk_elem_size);
}

static PyObject *DataPacker_get_is_varsize(DataPackerObject *self, void *c)
{
    return PyBool_FromLong(self->pk.pk_elem_size == 0);
}

static PyObject *DataPacker_repr(DataPackerObject *self)
{
    if (self->validator)
        return PyUnicode_FromFormat("DataPacker(msgpack with JSON schema)");
    return PyUnicode_FromFormat("DataPacker(%U, elem_size=%zu)", self->dtype, self->pk.pk_elem_size);
}

static PyMethodDef DataPacker_methods[] = {
    {"with_json_schema", (PyCFunction)DataPacker_with_json_schema, METH_O | METH_CLASS,
     "with_json_schema(schema: dict) -> DataPacker\n\nVariable-size MessagePack packer whose pack()"
     " validates each value against the JSON Schema (draft 7, via jsonschema.Draft7Validator).\n"
     "Raises ValueError('Schema compilation failed: ...') for an invalid schema; pack raises"
     " ValueError('Validation errors: ...'). unpack does not validate."},
    {"with_cddl_schema", (PyCFunction)(void (*)(void))DataPacker_with_cddl_schema,
     METH_VARARGS | METH_KEYWORDS | METH_CLASS,
     "with_cddl_schema(schema: str | None = None) -> DataPacker\n\nPlain variable-size CBOR packer;"
     " the schema is accepted and ignored."},
    {"pack", (PyCFunction)DataPacker_pack, METH_O,
     "pack(value) -> bytes\n\nEncode one value (docs/api.md §5.3). TypeError for a wrong value type;"
     " ValueError for size ('Data too long'), encoding ('non-ASCII', 'outside Latin1 range'),"
     " shape ('Shape mismatch') or data-model problems."},
    {"pack_many", (PyCFunction)DataPacker_pack_many, METH_O,
     "pack_many(values: list) -> bytes\n\nConcatenation of pack() of each value (no delimiters)."
     " Fixed-shape vectors are stacked with numpy and cast once."},
    {"unpack", (PyCFunction)(void (*)(void))DataPacker_unpack, METH_VARARGS | METH_KEYWORDS,
     "unpack(data: bytes, offset: int = 0) -> object\n\nDecode one value starting at offset;"
     " variable-size kinds use the rest of the buffer. ValueError('Not enough data ...') for a"
     " short buffer, ValueError for malformed input."},
    {"unpack_many", (PyCFunction)(void (*)(void))DataPacker_unpack_many, METH_VARARGS | METH_KEYWORDS,
     "unpack_many(data: bytes, count=None, offsets=None) -> list\n\nFixed-size: count elements at"
     " i*elem_size. Variable-size: offsets are start positions, element i ends at offsets[i+1]"
     " (the last at len(data))."},
    {NULL},
};

static PyGetSetDef DataPacker_getset[] = {
    {"elem_size", (getter)DataPacker_get_elem_size, NULL, "bytes per element; 0 for variable size", NULL},
    {"is_varsize", (getter)DataPacker_get_is_varsize, NULL, "elem_size == 0", NULL},
    {NULL},
};

static PyTypeObject DataPackerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kohakuvault._kvault.DataPacker",
    .tp_basicsize = sizeof(DataPackerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "DataPacker(dtype: str)\n\nTyped serializer of kohakuvault columns (docs/api.md §5): parses the"
              " dtype grammar (i64, f64, str[:N][:enc], bytes[:N], msgpack[:N], cbor[:N], vec:<et>[:dims])"
              " and packs/unpacks values to the exact byte formats stored in columns. Raises"
              " ValueError('Invalid dtype: ...') for an unparseable dtype. Not thread-safe.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)DataPacker_init,
    .tp_dealloc = (destructor)DataPacker_dealloc,
    .tp_repr = (reprfunc)DataPacker_repr,
    .tp_methods = DataPacker_methods,
    .tp_getset = DataPacker_getset,
};

int kvpy_init_packer(PyObject *module)
{
    return PyModule_AddType(module, &DataPackerType); /* readies it; name from tp_name */
}
