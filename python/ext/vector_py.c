/*
 * vector_py.c - kohakuvault._kvault._VectorKVault: the native side of
 * kohakuvault.VectorKVault (API.md §8), a thin binding over engine/vector.h.
 *
 * Vectors arrive as a list of numbers or a buffer of float32 (the proxy
 * prepares them per §8.2) and are converted to float32 here; values are
 * encoded per §3 with autopack.c. Errors are builtin exceptions for the
 * proxy's map_exception: ValueError (bad input, "not yet supported" for int8
 * and bit tables, "Expected N dimensions, got M"), TypeError (non-numbers),
 * RuntimeError ("ID n not found", "No vectors found in database",
 * "Query returned no rows", SQLite failures, "database is locked").
 *
 * Concurrency: a per-object lock around engine calls, which run with the GIL
 * released (including the k-NN scan); see text_py.c.
 */
#include "kvpy.h"

#include <string.h>
#include <strings.h>

#include "kvault/vector.h"

typedef struct {
    PyObject_HEAD
    kv_vector *v;             /* engine handle, NULL once closed; under `lock` */
    PyThread_type_lock lock;  /* serialises engine calls (leaf lock) */
    size_t dims;              /* dimensions */
    kv_vector_metric metric;  /* table metric */
    kv_vector_elem elem;      /* table element type */
    kvpy_pack_opts opts;      /* §3.6 switches */
} VectorObject;

static const char *metric_names[] = {"cosine", "L2", "L1", "hamming"};
static const char *elem_names[] = {"float32", "int8", "bit"};

/* Parse a metric name (case-insensitive; API.md §8.1 spellings). */
static int parse_metric(const char *s, kv_vector_metric *m)
{
    if (!strcasecmp(s, "cosine"))
        *m = KV_VECTOR_COSINE;
    else if (!strcasecmp(s, "l2") || !strcasecmp(s, "euclidean"))
        *m = KV_VECTOR_L2;
    else if (!strcasecmp(s, "l1") || !strcasecmp(s, "manhattan"))
        *m = KV_VECTOR_L1;
    else if (!strcasecmp(s, "hamming"))
        *m = KV_VECTOR_HAMMING;
    else {
        PyErr_Format(PyExc_ValueError,
                     "Unknown metric '%s'. Supported: cosine, l2/euclidean, l1/manhattan, hamming", s);
        return -1;
    }
    return 0;
}

static int parse_elem(const char *s, kv_vector_elem *e)
{
    if (!strcasecmp(s, "f32") || !strcasecmp(s, "float32"))
        *e = KV_VECTOR_F32;
    else if (!strcasecmp(s, "i8") || !strcasecmp(s, "int8"))
        *e = KV_VECTOR_I8;
    else if (!strcasecmp(s, "bit"))
        *e = KV_VECTOR_BIT;
    else {
        PyErr_Format(PyExc_ValueError, "Unknown vector type: %s. Supported: f32, int8, bit", s);
        return -1;
    }
    return 0;
}

static void vk_unlock(VectorObject *self) { PyThread_release_lock(self->lock); }

static int vk_lock(VectorObject *self)
{
    kvpy_store_lock(self->lock);
    if (self->v == NULL) {
        vk_unlock(self);
        PyErr_SetString(PyExc_ValueError, "Cannot operate on closed VectorKVault");
        return -1;
    }
    return 0;
}

#define VK_FAIL(self, st) kvpy_store_raise((st), kv_vector_errmsg((self)->v))

/*
 * Vector argument → float32 bytes (a new bytes object of 4*dims bytes).
 * Accepts a list of numbers or any C-contiguous float32 buffer (what the
 * proxy passes for numpy input). Refuses int8/bit tables ("not yet
 * supported", API.md §8.2).
 */
static PyObject *vk_vector_bytes(VectorObject *self, PyObject *obj)
{
    if (self->elem != KV_VECTOR_F32) {
        PyErr_Format(PyExc_ValueError, "Vector type %s is not yet supported (only float32 works)",
                     elem_names[self->elem]);
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(4 * self->dims));
    if (!out)
        return NULL;
    float *dst = (float *)PyBytes_AS_STRING(out);
    if (PyList_Check(obj)) {
        Py_ssize_t n = PyList_GET_SIZE(obj);
        if ((size_t)n != self->dims) {
            PyErr_Format(PyExc_ValueError, "Expected %zu dimensions, got %zd", self->dims, n);
            goto fail;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *x = PyList_GET_ITEM(obj, i);
            if (!PyFloat_Check(x) && !PyLong_Check(x) && !PyNumber_Check(x)) {
                PyErr_Format(PyExc_TypeError, "vector elements must be numbers, got %s",
                             Py_TYPE(x)->tp_name);
                goto fail;
            }
            double d = PyFloat_AsDouble(x);
            if (d == -1.0 && PyErr_Occurred())
                goto fail;
            dst[i] = (float)d;
        }
        return out;
    }
    if (PyObject_CheckBuffer(obj)) {
        Py_buffer view;
        if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            goto fail;
        int ok = view.itemsize == 4 && view.format && (strcmp(view.format, "f") == 0 ||
                                                      strcmp(view.format, "<f") == 0 ||
                                                      strcmp(view.format, "=f") == 0);
        if (!ok) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_TypeError, "vector buffer must hold float32 values");
            goto fail;
        }
        if ((size_t)view.len != 4 * self->dims) {
            PyErr_Format(PyExc_ValueError, "Expected %zu dimensions, got %zd", self->dims, view.len / 4);
            PyBuffer_Release(&view);
            goto fail;
        }
        memcpy(dst, view.buf, (size_t)view.len);
        PyBuffer_Release(&view);
        return out;
    }
    PyErr_Format(PyExc_TypeError, "vector must be a list of numbers or a float32 buffer, got %s",
                 Py_TYPE(obj)->tp_name);
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *Vector_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"path", "table", "dimensions", "metric", "vector_type", NULL};
    PyObject *path_obj, *path_bytes = NULL;
    const char *table = "vec_kvault", *metric = "cosine", *vtype = "f32";
    Py_ssize_t dims = 768;
    kv_vector_metric m;
    kv_vector_elem e;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|snss:_VectorKVault", kwlist, &path_obj, &table,
                                     &dims, &metric, &vtype))
        return NULL;
    if (parse_metric(metric, &m) < 0 || parse_elem(vtype, &e) < 0)
        return NULL;
    if (!kv_vector_compatible(m, e)) {
        PyErr_Format(PyExc_ValueError, "Metric '%s' is not compatible with vector type '%s'", metric, vtype);
        return NULL;
    }
    if (dims <= 0) {
        PyErr_Format(PyExc_ValueError, "dimensions must be positive, got %zd", dims);
        return NULL;
    }
    if (e == KV_VECTOR_BIT && dims % 8 != 0) {
        PyErr_Format(PyExc_ValueError, "Bit vectors require dimensions divisible by 8, got %zd", dims);
        return NULL;
    }
    if (!PyUnicode_FSConverter(path_obj, &path_bytes))
        return NULL;
    VectorObject *self = (VectorObject *)type->tp_alloc(type, 0);
    if (!self) {
        Py_DECREF(path_bytes);
        return NULL;
    }
    self->dims = (size_t)dims;
    self->metric = m;
    self->elem = e;
    self->opts.auto_pack = self->opts.headers = self->opts.use_pickle = 1;
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        Py_DECREF(path_bytes);
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    char err[512] = "";
    kv_status st;
    kv_vector *v = NULL;
    const char *path = PyBytes_AS_STRING(path_bytes);
    Py_BEGIN_ALLOW_THREADS
    st = kv_vector_open(path, table, (size_t)dims, m, e, &v, err, sizeof err);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    if (st != KV_OK) {
        Py_DECREF(self);
        return kvpy_store_raise(st, err);
    }
    self->v = v;
    return (PyObject *)self;
}

static void Vector_dealloc(VectorObject *self)
{
    if (self->v) {
        kv_vector *v = self->v;
        self->v = NULL;
        Py_BEGIN_ALLOW_THREADS
        kv_vector_close(v);
        Py_END_ALLOW_THREADS
    }
    if (self->lock)
        PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(vk_insert_doc,
"insert(vector, value, metadata=None) -> int\n\n"
"Store a vector (list of numbers or float32 buffer of `dimensions` values;\n"
"L2-normalised first with the cosine metric) and its §3-encoded value.\n"
"Returns the row id. metadata must be a dict or None and is ignored.");

static PyObject *vk_insert(VectorObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"vector", "value", "metadata", NULL};
    PyObject *vec, *value, *meta = Py_None, *vb;
    kv_buf buf;
    kv_status st;
    int64_t id = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O:insert", kwlist, &vec, &value, &meta))
        return NULL;
    if (meta != Py_None && !PyDict_Check(meta)) {
        PyErr_SetString(PyExc_TypeError, "metadata must be a dict or None");
        return NULL;
    }
    if (!(vb = vk_vector_bytes(self, vec)))
        return NULL;
    kv_buf_init(&buf);
    if (kvpy_store_encode(value, &self->opts, &buf) < 0 || vk_lock(self) < 0)
        goto fail;
    Py_BEGIN_ALLOW_THREADS
    st = kv_vector_insert(self->v, PyBytes_AS_STRING(vb), (size_t)PyBytes_GET_SIZE(vb), buf.data,
                          buf.len, &id);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        VK_FAIL(self, st);
        vk_unlock(self);
        goto fail;
    }
    vk_unlock(self);
    Py_DECREF(vb);
    kv_buf_free(&buf);
    return PyLong_FromLongLong(id);
fail:
    Py_DECREF(vb);
    kv_buf_free(&buf);
    return NULL;
}

/* Validate a per-query metric (API.md §8.3 Q: name and compatibility only). */
static int vk_check_metric(VectorObject *self, PyObject *metric)
{
    kv_vector_metric m;
    if (metric == Py_None)
        return 0;
    if (!PyUnicode_Check(metric)) {
        PyErr_SetString(PyExc_TypeError, "metric must be str or None");
        return -1;
    }
    const char *s = PyUnicode_AsUTF8(metric);
    if (!s || parse_metric(s, &m) < 0)
        return -1;
    if (!kv_vector_compatible(m, self->elem)) {
        PyErr_Format(PyExc_ValueError, "Metric '%s' is not compatible with vector type '%s'", s,
                     elem_names[self->elem]);
        return -1;
    }
    return 0;
}

/* k-NN; returns a list of (id, distance, value). */
static PyObject *vk_knn(VectorObject *self, PyObject *vec, long long k, PyObject *metric)
{
    PyObject *vb = NULL, *list = NULL;
    kv_vector_hits *h = NULL;
    kv_status st;
    if (vk_check_metric(self, metric) < 0 || !(vb = vk_vector_bytes(self, vec)))
        return NULL;
    if (vk_lock(self) < 0) {
        Py_DECREF(vb);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    st = kv_vector_search(self->v, PyBytes_AS_STRING(vb), (size_t)PyBytes_GET_SIZE(vb), k, &h);
    Py_END_ALLOW_THREADS
    Py_DECREF(vb);
    if (st != KV_OK) {
        VK_FAIL(self, st);
        vk_unlock(self);
        return NULL;
    }
    vk_unlock(self);
    list = PyList_New((Py_ssize_t)h->n);
    for (size_t i = 0; list && i < h->n; i++) {
        kv_vector_hit *x = &h->hits[i];
        PyObject *val = kvpy_unpack_value(x->val, x->vlen, &self->opts);
        PyObject *item = val ? Py_BuildValue("(LdN)", (long long)x->id, x->distance, val) : NULL;
        if (!item) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    kv_vector_hits_free(h);
    return list;
}

PyDoc_STRVAR(vk_search_doc,
"search(query_vector, k=10, metric=None) -> list[(id, distance, value)]\n\n"
"Exact k-nearest neighbours in ascending distance (ties by id), computed\n"
"with the table's metric; `metric` is only validated (API.md §8.3).\n"
"k > 4096 or k < 0 → ValueError; an empty table → [].");

static PyObject *vk_search(VectorObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"query_vector", "k", "metric", NULL};
    PyObject *vec, *metric = Py_None;
    long long k = 10;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|LO:search", kwlist, &vec, &k, &metric))
        return NULL;
    return vk_knn(self, vec, k, metric);
}

PyDoc_STRVAR(vk_get_doc,
"get(query_vector, metric=None) -> value\n\n"
"Value of the nearest vector; empty table → RuntimeError('No vectors found in database').");

static PyObject *vk_get(VectorObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"query_vector", "metric", NULL};
    PyObject *vec, *metric = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:get", kwlist, &vec, &metric))
        return NULL;
    PyObject *list = vk_knn(self, vec, 1, metric);
    if (!list)
        return NULL;
    if (PyList_GET_SIZE(list) == 0) {
        Py_DECREF(list);
        PyErr_SetString(PyExc_RuntimeError, "No vectors found in database");
        return NULL;
    }
    PyObject *val = PyTuple_GET_ITEM(PyList_GET_ITEM(list, 0), 2);
    Py_INCREF(val);
    Py_DECREF(list);
    return val;
}

PyDoc_STRVAR(vk_get_by_id_doc,
"get_by_id(id) -> (bytes, value)\n\n"
"The stored vector as float32 LE bytes (normalised if cosine) and the value;\n"
"missing → RuntimeError('ID <id> not found').");

static PyObject *vk_get_by_id(VectorObject *self, PyObject *arg)
{
    long long id = PyLong_AsLongLong(arg);
    uint8_t *vec = NULL, *val = NULL;
    size_t vb = 0, vl = 0;
    kv_status st;
    if ((id == -1 && PyErr_Occurred()) || vk_lock(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_vector_get_by_id(self->v, id, &vec, &vb, &val, &vl);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        VK_FAIL(self, st);
        vk_unlock(self);
        return NULL;
    }
    vk_unlock(self);
    PyObject *b = PyBytes_FromStringAndSize((const char *)vec, (Py_ssize_t)vb);
    PyObject *v = b ? kvpy_unpack_value(val, vl, &self->opts) : NULL;
    kv_vector_free(vec);
    kv_vector_free(val);
    if (!v) {
        Py_XDECREF(b);
        return NULL;
    }
    return Py_BuildValue("(NN)", b, v);
}

PyDoc_STRVAR(vk_delete_doc, "delete(id) -> bool\n\nRemove a row and its value; False if unknown.");

static PyObject *vk_delete(VectorObject *self, PyObject *arg)
{
    long long id = PyLong_AsLongLong(arg);
    int removed = 0;
    kv_status st;
    if ((id == -1 && PyErr_Occurred()) || vk_lock(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_vector_delete(self->v, id, &removed);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        VK_FAIL(self, st);
        vk_unlock(self);
        return NULL;
    }
    vk_unlock(self);
    return PyBool_FromLong(removed);
}

PyDoc_STRVAR(vk_update_doc,
"update(id, vector=None, value=None) -> None\n\n"
"A vector for an unknown id is a no-op; a value for an unknown id →\n"
"RuntimeError('Query returned no rows'); both None → ValueError.");

static PyObject *vk_update(VectorObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"id", "vector", "value", NULL};
    long long id;
    PyObject *vec = Py_None, *value = Py_None, *vb = NULL;
    kv_buf buf;
    kv_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "L|OO:update", kwlist, &id, &vec, &value))
        return NULL;
    if (vec == Py_None && value == Py_None) {
        PyErr_SetString(PyExc_ValueError, "Must provide either vector or value to update");
        return NULL;
    }
    kv_buf_init(&buf);
    if (vec != Py_None && !(vb = vk_vector_bytes(self, vec)))
        goto fail;
    if (value != Py_None && kvpy_store_encode(value, &self->opts, &buf) < 0)
        goto fail;
    if (vk_lock(self) < 0)
        goto fail;
    Py_BEGIN_ALLOW_THREADS
    st = kv_vector_update(self->v, id, vb ? PyBytes_AS_STRING(vb) : NULL,
                          vb ? (size_t)PyBytes_GET_SIZE(vb) : 0,
                          value != Py_None ? (const void *)(buf.data ? buf.data : (uint8_t *)"") : NULL,
                          buf.len);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        VK_FAIL(self, st);
        vk_unlock(self);
        goto fail;
    }
    vk_unlock(self);
    Py_XDECREF(vb);
    kv_buf_free(&buf);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(vb);
    kv_buf_free(&buf);
    return NULL;
}

PyDoc_STRVAR(vk_exists_doc, "exists(id) -> bool\n\nWhether row `id` exists (ids only).");

static PyObject *vk_exists(VectorObject *self, PyObject *arg)
{
    if (!PyLong_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "id must be int, not %s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    long long id = PyLong_AsLongLong(arg);
    int found = 0;
    kv_status st;
    if (id == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    if (vk_lock(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_vector_exists(self->v, id, &found);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        VK_FAIL(self, st);
        vk_unlock(self);
        return NULL;
    }
    vk_unlock(self);
    return PyBool_FromLong(found);
}

PyDoc_STRVAR(vk_count_doc, "count() -> int\n\nNumber of vector rows.");

static PyObject *vk_count(VectorObject *self, PyObject *unused)
{
    int64_t n = 0;
    kv_status st;
    if (vk_lock(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_vector_count(self->v, &n);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        VK_FAIL(self, st);
        vk_unlock(self);
        return NULL;
    }
    vk_unlock(self);
    return PyLong_FromLongLong(n);
}

PyDoc_STRVAR(vk_info_doc,
"info() -> dict\n\n{table, dimensions, metric (cosine/L2/L1/hamming), vector_type\n"
"(float32/int8/bit), count}; the table key is filled in by the proxy.");

static PyObject *vk_info(VectorObject *self, PyObject *unused)
{
    PyObject *count = vk_count(self, NULL);
    if (!count)
        return NULL;
    return Py_BuildValue("{s:n,s:s,s:s,s:N}", "dimensions", (Py_ssize_t)self->dims, "metric",
                         metric_names[self->metric], "vector_type", elem_names[self->elem], "count",
                         count);
}

static PyObject *vk_close(VectorObject *self, PyObject *unused)
{
    kvpy_store_lock(self->lock);
    kv_vector *v = self->v;
    self->v = NULL;
    Py_BEGIN_ALLOW_THREADS
    kv_vector_close(v);
    Py_END_ALLOW_THREADS
    vk_unlock(self);
    Py_RETURN_NONE;
}

static PyObject *vk_enable_auto_pack(VectorObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"use_pickle", NULL};
    int use_pickle = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p:enable_auto_pack", kwlist, &use_pickle))
        return NULL;
    self->opts.auto_pack = self->opts.headers = 1;
    self->opts.use_pickle = use_pickle;
    Py_RETURN_NONE;
}

static PyObject *vk_disable_auto_pack(VectorObject *self, PyObject *u)
{
    self->opts.auto_pack = 0;
    Py_RETURN_NONE;
}

static PyObject *vk_auto_pack_enabled(VectorObject *self, PyObject *u)
{
    return PyBool_FromLong(self->opts.auto_pack);
}

static PyObject *vk_enable_headers(VectorObject *self, PyObject *u)
{
    self->opts.headers = 1;
    Py_RETURN_NONE;
}

static PyObject *vk_disable_headers(VectorObject *self, PyObject *u)
{
    self->opts.headers = 0;
    Py_RETURN_NONE;
}

static PyObject *vk_headers_enabled(VectorObject *self, PyObject *u)
{
    return PyBool_FromLong(self->opts.headers);
}

static PyMethodDef vk_methods[] = {
    {"insert", (PyCFunction)(void (*)(void))vk_insert, METH_VARARGS | METH_KEYWORDS, vk_insert_doc},
    {"search", (PyCFunction)(void (*)(void))vk_search, METH_VARARGS | METH_KEYWORDS, vk_search_doc},
    {"get", (PyCFunction)(void (*)(void))vk_get, METH_VARARGS | METH_KEYWORDS, vk_get_doc},
    {"get_by_id", (PyCFunction)vk_get_by_id, METH_O, vk_get_by_id_doc},
    {"delete", (PyCFunction)vk_delete, METH_O, vk_delete_doc},
    {"update", (PyCFunction)(void (*)(void))vk_update, METH_VARARGS | METH_KEYWORDS, vk_update_doc},
    {"exists", (PyCFunction)vk_exists, METH_O, vk_exists_doc},
    {"count", (PyCFunction)vk_count, METH_NOARGS, vk_count_doc},
    {"info", (PyCFunction)vk_info, METH_NOARGS, vk_info_doc},
    {"close", (PyCFunction)vk_close, METH_NOARGS, "close(): close the connection (idempotent)."},
    {"enable_auto_pack", (PyCFunction)(void (*)(void))vk_enable_auto_pack, METH_VARARGS | METH_KEYWORDS,
     "enable_auto_pack(use_pickle=True): auto-pack on, headers on (API.md §3.6)."},
    {"disable_auto_pack", (PyCFunction)vk_disable_auto_pack, METH_NOARGS, "Auto-pack off."},
    {"auto_pack_enabled", (PyCFunction)vk_auto_pack_enabled, METH_NOARGS, "Auto-pack switch."},
    {"enable_headers", (PyCFunction)vk_enable_headers, METH_NOARGS, "Headers on."},
    {"disable_headers", (PyCFunction)vk_disable_headers, METH_NOARGS, "Headers off."},
    {"headers_enabled", (PyCFunction)vk_headers_enabled, METH_NOARGS, "Header switch."},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(vk_doc,
"_VectorKVault(path, table='vec_kvault', dimensions=768, metric='cosine', vector_type='f32')\n\n"
"Native vector store with exact k-NN (API.md §8); use kohakuvault.VectorKVault.\n"
"Constructor errors are ValueError (unknown metric/type, incompatible pair,\n"
"bit dimensions) or RuntimeError (SQLite). Thread-safe: calls are serialised\n"
"per object and run with the GIL released.");

static PyTypeObject Vector_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kohakuvault._kvault._VectorKVault",
    .tp_basicsize = sizeof(VectorObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = vk_doc,
    .tp_new = Vector_new,
    .tp_dealloc = (destructor)Vector_dealloc,
    .tp_methods = vk_methods,
};

int kvpy_init_vector(PyObject *module)
{
    if (PyType_Ready(&Vector_Type) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "_VectorKVault", (PyObject *)&Vector_Type);
}
