/*
 * vector_py.c - kohakuvault._kvault._VectorKVault: the native side of
 * kohakuvault.VectorKVault (docs/api.md §8), a thin binding over engine/vector.h.
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
 * released (including the k-NN scan). The lock/closed/GIL plumbing, the
 * id-based methods and the §3.6 switches are shared with text_py.c
 * (store_py.c, kvpy.h).
 */
#include "kvpy.h"

#include <string.h>
#include <strings.h>

#include "kvault/vector.h"

typedef struct {
    KVPY_STORE_HEAD           /* h is the kv_vector handle */
    size_t dims;              /* dimensions */
    kv_vector_metric metric;  /* table metric */
    kv_vector_elem elem;      /* table element type */
    int threads;              /* k-NN scan threads (kv_vector_set_threads) */
} VectorObject;

/* kv_vector through the untyped store interface (GIL released, lock held). */
static void vx_close(void *h) { kv_vector_close(h); }
static const char *vx_errmsg(const void *h) { return kv_vector_errmsg(h); }
static kv_status vx_delete(void *h, int64_t id, int *removed) { return kv_vector_delete(h, id, removed); }
static kv_status vx_exists(void *h, int64_t id, int *found) { return kv_vector_exists(h, id, found); }
static kv_status vx_count(void *h, int64_t *n) { return kv_vector_count(h, n); }
static kv_status vx_reopen(const kvpy_store *s, void **h, char *err, size_t errlen)
{
    const VectorObject *v = (const VectorObject *)s;
    kv_status st = kv_vector_open(s->path, s->table, v->dims, v->metric, v->elem,
                                  (kv_vector **)h, err, errlen);
    if (st == KV_OK)
        kv_vector_set_threads(*h, v->threads);
    return st;
}

static void vx_set_guard(void *h, kv_commit_guard *g) { kv_vector_set_commit_guard(h, g); }
static void vx_conn(void *h, kv_conn *c) { kv_vector_conn(h, c); }
/* Open parameters of the writer's handle: dims, metric, elem (kvshm/ops.h). */
static void vx_encode_open(const kvpy_store *s, kvshm_op_enc *e)
{
    const VectorObject *v = (const VectorObject *)s;
    kvshm_op_add_i64(e, (int64_t)v->dims);
    kvshm_op_add_i64(e, (int64_t)v->metric);
    kvshm_op_add_i64(e, (int64_t)v->elem);
}

/* kvpy_store_kind.run_posted: a pipelined insert (kvshm/ops.h, VECTOR
 * INSERT with its id) on the own handle. */
static kv_status vx_run_posted(void *h, const kvshm_op *op)
{
    if (op->cls != KVSHM_OPC_VECTOR || op->op != KVSHM_OP_INSERT || op->nargs != 3)
        return KV_INVALID;
    const kvshm_op_field *a = op->args;
    return kv_vector_insert_at(h, kvshm_op_i64(&a[2], NULL), a[0].p ? (const void *)a[0].p : "",
                               a[0].len, a[1].p, a[1].len);
}

static kv_status vx_tx_begin(void *h) { return kv_vector_tx_begin(h); }
static kv_status vx_tx_end(void *h, int commit) { return kv_vector_tx_end(h, commit); }

static const kvpy_store_kind vector_kind = {
    .name = "VectorKVault",
    .close = vx_close,
    .errmsg = vx_errmsg,
    .del = vx_delete,
    .exists = vx_exists,
    .count = vx_count,
    .reopen = vx_reopen,
    .op_class = KVSHM_OPC_VECTOR,
    .set_guard = vx_set_guard,
    .conn = vx_conn,
    .encode_open = vx_encode_open,
    .run_posted = vx_run_posted,
    .tx_begin = vx_tx_begin,
    .tx_end = vx_tx_end,
};

#define STORE(self) ((kvpy_store *)(self))

/* Arguments and results of one kv_vector call, read and written with the GIL
 * released (fields used per op as noted). */
typedef struct {
    const void *vec;          /* insert, update, search: float32 bytes (update: NULL = keep) */
    size_t vbytes;            /* bytes at vec */
    const void *val;          /* insert, update: encoded value (update: NULL = keep) */
    size_t vlen;              /* bytes at val */
    int64_t id;               /* in: get_by_id, update; out: insert */
    int64_t k;                /* search: neighbours wanted */
    kv_vector_hits *hits;     /* out: search (kv_vector_hits_free) */
    size_t n;                 /* insert_many, search_many: rows / queries */
    const void *const *vals;  /* insert_many: n encoded values */
    const size_t *vlens;      /* insert_many: their lengths */
    int64_t *ids;             /* out: insert_many, n ids */
    kv_vector_hits **many;    /* out: search_many, n result sets */
    uint8_t *vec_out;         /* out: get_by_id vector (kv_vector_free) */
    size_t vec_out_len;       /* bytes at vec_out */
    uint8_t *val_out;         /* out: get_by_id value (kv_vector_free) */
    size_t val_out_len;       /* bytes at val_out */
} vk_args;

static kv_status op_insert(void *h, void *c)
{
    vk_args *a = c;
    return kv_vector_insert(h, a->vec, a->vbytes, a->val, a->vlen, &a->id);
}

static kv_status op_insert_many(void *h, void *c)
{
    vk_args *a = c;
    return kv_vector_insert_many(h, a->n, a->vec, a->vbytes, a->vals, a->vlens, a->ids);
}

static kv_status op_search_many(void *h, void *c)
{
    vk_args *a = c;
    return kv_vector_search_many(h, a->vec, a->n, a->vbytes, a->k, a->many);
}

static kv_status op_update(void *h, void *c)
{
    vk_args *a = c;
    return kv_vector_update(h, a->id, a->vec, a->vbytes, a->val, a->vlen);
}

static kv_status op_search(void *h, void *c)
{
    vk_args *a = c;
    return kv_vector_search(h, a->vec, a->vbytes, a->k, &a->hits);
}

static kv_status op_get_by_id(void *h, void *c)
{
    vk_args *a = c;
    return kv_vector_get_by_id(h, a->id, &a->vec_out, &a->vec_out_len, &a->val_out, &a->val_out_len);
}

/* ---- the same writes through the writer (kvshm/ops.h, VECTOR) -------- */

/* An optional field: absent when p is NULL (update: keep). */
static void enc_opt(kvshm_op_enc *e, const void *p, size_t n)
{
    if (p)
        kvshm_op_add(e, p, n);
    else
        kvshm_op_add_absent(e);
}

static void enc_insert(const void *c, kvshm_op_enc *e)
{
    const vk_args *a = c;
    kvshm_op_add(e, a->vec, a->vbytes);
    kvshm_op_add(e, a->val ? a->val : "", a->vlen);
}

_Static_assert(sizeof(size_t) == sizeof(int64_t), "value lengths travel as i64");

static void enc_insert_many(const void *c, kvshm_op_enc *e)
{
    const vk_args *a = c;
    kvshm_op_add_i64(e, (int64_t)a->n);
    kvshm_op_add(e, a->vec ? a->vec : "", a->vbytes);
    if (a->vals) {
        kvshm_op_add(e, a->vlens, a->n * sizeof *a->vlens);
        kvshm_op_add_gather(e, (const void *const *)a->vals, a->vlens, a->n);
    }
}

static size_t max_insert_many(const void *c) { return ((const vk_args *)c)->n * 8; }

static void enc_update(const void *c, kvshm_op_enc *e)
{
    const vk_args *a = c;
    kvshm_op_add_i64(e, a->id);
    enc_opt(e, a->vec, a->vbytes);
    enc_opt(e, a->val, a->vlen);
}

static kv_status res_id(void *c, const uint8_t *res, size_t n)
{
    if (n != 8)
        return KV_IO;
    memcpy(&((vk_args *)c)->id, res, 8);
    return KV_OK;
}

static kv_status res_ids(void *c, const uint8_t *res, size_t n)
{
    vk_args *a = c;
    if (n != a->n * 8)
        return KV_IO;
    memcpy(a->ids, res, n);
    return KV_OK;
}

/* The checks of an insert, made before a pipelined one is sent (its
 * failure would otherwise surface at the object's next call). */
static kv_status check_insert(void *h, const void *c)
{
    const vk_args *a = c;
    return kv_vector_check(h, a->vec, a->vbytes);
}

static const kvpy_store_remote remote_insert = {
    .op = KVSHM_OP_INSERT,
    .encode = enc_insert,
    .result = res_id,
    .check = check_insert,
};
static const kvpy_store_remote remote_insert_many = {
    .op = KVSHM_OP_INSERT_MANY,
    .encode = enc_insert_many,
    .result_max = max_insert_many,
    .result = res_ids,
};
static const kvpy_store_remote remote_update = {.op = KVSHM_OP_UPDATE, .encode = enc_update};

static const char *metric_names[] = {"cosine", "L2", "L1", "hamming"};
static const char *elem_names[] = {"float32", "int8", "bit"};

/* Parse a metric name (case-insensitive; docs/api.md §8.1 spellings). */
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

/*
 * Vector argument → float32 bytes (a new bytes object of 4*dims bytes).
 * Accepts a list of numbers or any C-contiguous float32 buffer (what the
 * proxy passes for numpy input). Refuses int8/bit tables ("not yet
 * supported", docs/api.md §8.2).
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

/*
 * A batch of vectors → a new reference to an object exporting `n` rows of
 * float32 (n * 4 * dims bytes, C-contiguous) in *view (release with
 * PyBuffer_Release). Accepts any C-contiguous float32 buffer (2-D numpy
 * arrays from the proxy) of a multiple of 4 * dims bytes.
 */
static int vk_rows_view(VectorObject *self, PyObject *obj, Py_buffer *view, size_t *n)
{
    if (self->elem != KV_VECTOR_F32) {
        PyErr_Format(PyExc_ValueError, "Vector type %s is not yet supported (only float32 works)",
                     elem_names[self->elem]);
        return -1;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return -1;
    int ok = view->itemsize == 4 && view->format &&
             (strcmp(view->format, "f") == 0 || strcmp(view->format, "<f") == 0 ||
              strcmp(view->format, "=f") == 0);
    if (!ok) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "vectors buffer must hold float32 values");
        return -1;
    }
    size_t row = 4 * self->dims;
    size_t last = view->ndim >= 1 ? (size_t)view->shape[view->ndim - 1] : (size_t)view->len / 4;
    if ((size_t)view->len % row != 0 || (view->ndim >= 2 && last != self->dims)) {
        PyErr_Format(PyExc_ValueError, "Expected %zu dimensions, got %zu", self->dims,
                     view->ndim >= 2 ? last : (size_t)view->len / 4);
        PyBuffer_Release(view);
        return -1;
    }
    *n = (size_t)view->len / row;
    return 0;
}

static PyObject *Vector_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"path", "table", "dimensions", "metric", "vector_type", "threads", NULL};
    PyObject *path_obj, *path_bytes = NULL;
    const char *table = "vec_kvault", *metric = "cosine", *vtype = "f32";
    Py_ssize_t dims = 768;
    int threads = 0;
    kv_vector_metric m;
    kv_vector_elem e;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|snss$i:_VectorKVault", kwlist, &path_obj, &table,
                                     &dims, &metric, &vtype, &threads))
        return NULL;
    if (threads < 0) {
        PyErr_Format(PyExc_ValueError, "threads must be >= 0, got %d", threads);
        return NULL;
    }
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
    const char *path = PyBytes_AS_STRING(path_bytes);
    if (!self || kvpy_store_setup(STORE(self), &vector_kind, path, table) < 0) {
        Py_DECREF(path_bytes);
        Py_XDECREF(self);
        return NULL;
    }
    self->dims = (size_t)dims;
    self->metric = m;
    self->elem = e;
    self->threads = threads;
    char err[512] = "";
    kv_status st;
    kv_vector *v = NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_vector_open(path, table, (size_t)dims, m, e, &v, err, sizeof err);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    if (st != KV_OK) {
        Py_DECREF(self);
        return kvpy_store_raise(st, err);
    }
    kv_vector_set_threads(v, threads);
    self->h = v;
    if (kvpy_store_route_open(STORE(self)) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void Vector_dealloc(VectorObject *self)
{
    kvpy_store_finalize(STORE(self));
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
    PyObject *vec, *value, *meta = Py_None, *vb, *ret = NULL;
    kv_buf buf;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O:insert", kwlist, &vec, &value, &meta))
        return NULL;
    if (meta != Py_None && !PyDict_Check(meta)) {
        PyErr_SetString(PyExc_TypeError, "metadata must be a dict or None");
        return NULL;
    }
    if (!(vb = vk_vector_bytes(self, vec)))
        return NULL;
    kv_buf_init(&buf);
    if (kvpy_store_encode(value, &self->opts, &buf) == 0) {
        vk_args a = {.vec = PyBytes_AS_STRING(vb), .vbytes = (size_t)PyBytes_GET_SIZE(vb),
                     .val = buf.data, .vlen = buf.len};
        int posted = kvpy_store_post_insert(STORE(self), &a, &remote_insert, &a.id);
        if (posted > 0 ||
            (posted == 0 && kvpy_store_write(STORE(self), op_insert, &a, &remote_insert, NULL) == 0))
            ret = PyLong_FromLongLong(a.id);
    }
    Py_DECREF(vb);
    kv_buf_free(&buf);
    return ret;
}

/* Validate a per-query metric (docs/api.md §8.3: name and compatibility only). */
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

/* Results → list of (id, distance, value); frees `h`. */
static PyObject *vk_hits_list(VectorObject *self, kv_vector_hits *h)
{
    PyObject *list = PyList_New((Py_ssize_t)h->n);
    for (size_t i = 0; list && i < h->n; i++) {
        kv_vector_hit *x = &h->hits[i];
        PyObject *val = kvpy_unpack_value(x->val, x->vlen, &self->opts);
        if (!val)
            kvpy_name_decode_error("row %lld", (long long)x->id);
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

/* k-NN; returns a list of (id, distance, value). */
static PyObject *vk_knn(VectorObject *self, PyObject *vec, long long k, PyObject *metric)
{
    PyObject *vb = NULL;
    if (vk_check_metric(self, metric) < 0 || !(vb = vk_vector_bytes(self, vec)))
        return NULL;
    vk_args a = {.vec = PyBytes_AS_STRING(vb), .vbytes = (size_t)PyBytes_GET_SIZE(vb), .k = k};
    int rc = kvpy_store_call(STORE(self), op_search, &a, NULL);
    Py_DECREF(vb);
    if (rc < 0)
        return NULL;
    return vk_hits_list(self, a.hits);
}

PyDoc_STRVAR(vk_insert_many_doc,
"insert_many(vectors, values) -> list[int]\n\n"
"Store n vectors (a C-contiguous float32 buffer of n * dimensions values,\n"
"e.g. an (n, dimensions) array) and n values in one transaction; returns\n"
"the n row ids. len(values) must equal n.");

static PyObject *vk_insert_many(VectorObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"vectors", "values", NULL};
    PyObject *vecs, *values, *seq = NULL, *ret = NULL;
    Py_buffer view;
    size_t n = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO:insert_many", kwlist, &vecs, &values))
        return NULL;
    if (vk_rows_view(self, vecs, &view, &n) < 0)
        return NULL;
    kv_buf *bufs = NULL;
    const void **vals = NULL;
    size_t *lens = NULL;
    int64_t *ids = NULL;
    size_t nb = 0;
    if (!(seq = PySequence_Fast(values, "values must be a sequence")))
        goto out;
    if ((size_t)PySequence_Fast_GET_SIZE(seq) != n) {
        PyErr_Format(PyExc_ValueError, "got %zu vectors but %zd values", n, PySequence_Fast_GET_SIZE(seq));
        goto out;
    }
    bufs = PyMem_Calloc(n ? n : 1, sizeof *bufs);
    vals = PyMem_Calloc(n ? n : 1, sizeof *vals);
    lens = PyMem_Calloc(n ? n : 1, sizeof *lens);
    ids = PyMem_Calloc(n ? n : 1, sizeof *ids);
    if (!bufs || !vals || !lens || !ids) {
        PyErr_NoMemory();
        goto out;
    }
    for (; nb < n; nb++) {
        kv_buf_init(&bufs[nb]);
        if (kvpy_store_encode(PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)nb), &self->opts, &bufs[nb]) < 0) {
            kv_buf_free(&bufs[nb]);
            goto out;
        }
        vals[nb] = bufs[nb].data;
        lens[nb] = bufs[nb].len;
    }
    vk_args a = {.vec = view.buf, .vbytes = (size_t)view.len, .n = n, .vals = vals, .vlens = lens, .ids = ids};
    if (kvpy_store_write(STORE(self), op_insert_many, &a, &remote_insert_many, NULL) < 0)
        goto out;
    ret = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; ret && i < n; i++) {
        PyObject *x = PyLong_FromLongLong(ids[i]);
        if (!x) {
            Py_CLEAR(ret);
            break;
        }
        PyList_SET_ITEM(ret, (Py_ssize_t)i, x);
    }
out:
    for (size_t i = 0; i < nb; i++)
        kv_buf_free(&bufs[i]);
    PyMem_Free(bufs);
    PyMem_Free(vals);
    PyMem_Free(lens);
    PyMem_Free(ids);
    Py_XDECREF(seq);
    PyBuffer_Release(&view);
    return ret;
}

PyDoc_STRVAR(vk_search_doc,
"search(query_vector, k=10, metric=None) -> list[(id, distance, value)]\n\n"
"Exact k-nearest neighbours in ascending distance (ties by id), computed\n"
"with the table's metric; `metric` is only validated (docs/api.md §8.3).\n"
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

PyDoc_STRVAR(vk_search_many_doc,
"search_many(queries, k=10, metric=None) -> list[list[(id, distance, value)]]\n\n"
"search() for each of n queries (a C-contiguous float32 buffer of\n"
"n * dimensions values) in one snapshot and one pass over the vectors.");

static PyObject *vk_search_many(VectorObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"queries", "k", "metric", NULL};
    PyObject *qs, *metric = Py_None, *ret = NULL;
    long long k = 10;
    Py_buffer view;
    size_t n = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|LO:search_many", kwlist, &qs, &k, &metric))
        return NULL;
    if (vk_check_metric(self, metric) < 0 || vk_rows_view(self, qs, &view, &n) < 0)
        return NULL;
    kv_vector_hits **many = PyMem_Calloc(n ? n : 1, sizeof *many);
    if (!many) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    vk_args a = {.vec = view.buf, .vbytes = (size_t)view.len, .n = n, .k = k, .many = many};
    int rc = kvpy_store_call(STORE(self), op_search_many, &a, NULL);
    PyBuffer_Release(&view);
    if (rc == 0)
        ret = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; i < n; i++) {
        PyObject *one = NULL;
        if (ret && many[i] && !(one = vk_hits_list(self, many[i]))) {
            Py_CLEAR(ret);
        } else if (!ret || !one) {
            kv_vector_hits_free(many[i]);
        }
        many[i] = NULL;
        if (ret && one)
            PyList_SET_ITEM(ret, (Py_ssize_t)i, one);
    }
    PyMem_Free(many);
    return ret;
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
    vk_args a = {0};
    if (kvpy_store_id(arg, &a.id) < 0 ||
        kvpy_store_call_by_id(STORE(self), op_get_by_id, &a, a.id) < 0)
        return NULL;
    PyObject *b = PyBytes_FromStringAndSize((const char *)a.vec_out, (Py_ssize_t)a.vec_out_len);
    PyObject *v = b ? kvpy_unpack_value(a.val_out, a.val_out_len, &self->opts) : NULL;
    kv_vector_free(a.vec_out);
    kv_vector_free(a.val_out);
    if (!v) {
        kvpy_name_decode_error("row %lld", (long long)a.id);
        Py_XDECREF(b);
        return NULL;
    }
    return Py_BuildValue("(NN)", b, v);
}

PyDoc_STRVAR(vk_delete_doc, "delete(id) -> bool\n\nRemove a row and its value; False if unknown.");

PyDoc_STRVAR(vk_update_doc,
"update(id, vector=None, value=None) -> None\n\n"
"A vector for an unknown id is a no-op; a value for an unknown id →\n"
"RuntimeError('Query returned no rows'); both None → ValueError.");

static PyObject *vk_update(VectorObject *self, PyObject *args, PyObject *kw)
{
    long long id;
    PyObject *vec, *value, *vb = NULL, *ret = NULL;
    kv_buf buf;
    if (kvpy_store_update_args(args, kw, "vector", &id, &vec, &value) < 0)
        return NULL;
    kv_buf_init(&buf);
    if (vec != Py_None && !(vb = vk_vector_bytes(self, vec)))
        goto out;
    vk_args a = {.id = id, .vec = vb ? PyBytes_AS_STRING(vb) : NULL,
                 .vbytes = vb ? (size_t)PyBytes_GET_SIZE(vb) : 0};
    if (kvpy_store_update_value(value, &self->opts, &buf, &a.val, &a.vlen) == 0 &&
        kvpy_store_write(STORE(self), op_update, &a, &remote_update, NULL) == 0)
        ret = Py_NewRef(Py_None);
out:
    Py_XDECREF(vb);
    kv_buf_free(&buf);
    return ret;
}

PyDoc_STRVAR(vk_exists_doc, "exists(id) -> bool\n\nWhether row `id` exists (ids only).");

PyDoc_STRVAR(vk_count_doc, "count() -> int\n\nNumber of vector rows.");

PyDoc_STRVAR(vk_info_doc,
"info() -> dict\n\n{table, dimensions, metric (cosine/L2/L1/hamming), vector_type\n"
"(float32/int8/bit), count}; the table key is filled in by the proxy.");

static PyObject *vk_info(VectorObject *self, PyObject *unused)
{
    PyObject *count = kvpy_store_count((PyObject *)self, NULL);
    if (!count)
        return NULL;
    return Py_BuildValue("{s:n,s:s,s:s,s:N}", "dimensions", (Py_ssize_t)self->dims, "metric",
                         metric_names[self->metric], "vector_type", elem_names[self->elem], "count",
                         count);
}

static PyGetSetDef vk_getset[] = {
    KVPY_STORE_GETSET_CLOSED,
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef vk_methods[] = {
    {"insert", (PyCFunction)(void (*)(void))vk_insert, METH_VARARGS | METH_KEYWORDS, vk_insert_doc},
    {"search", (PyCFunction)(void (*)(void))vk_search, METH_VARARGS | METH_KEYWORDS, vk_search_doc},
    {"search_many", (PyCFunction)(void (*)(void))vk_search_many, METH_VARARGS | METH_KEYWORDS,
     vk_search_many_doc},
    {"insert_many", (PyCFunction)(void (*)(void))vk_insert_many, METH_VARARGS | METH_KEYWORDS,
     vk_insert_many_doc},
    {"get", (PyCFunction)(void (*)(void))vk_get, METH_VARARGS | METH_KEYWORDS, vk_get_doc},
    {"get_by_id", (PyCFunction)vk_get_by_id, METH_O, vk_get_by_id_doc},
    {"delete", kvpy_store_delete, METH_O, vk_delete_doc},
    {"update", (PyCFunction)(void (*)(void))vk_update, METH_VARARGS | METH_KEYWORDS, vk_update_doc},
    {"exists", kvpy_store_exists, METH_O, vk_exists_doc},
    {"count", kvpy_store_count, METH_NOARGS, vk_count_doc},
    {"info", (PyCFunction)vk_info, METH_NOARGS, vk_info_doc},
    KVPY_STORE_METHODS,
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(vk_doc,
"_VectorKVault(path, table='vec_kvault', dimensions=768, metric='cosine', vector_type='f32',\n"
"              *, threads=0)\n\n"
"Native vector store with exact k-NN (docs/api.md §8); use kohakuvault.VectorKVault.\n"
"Constructor errors are ValueError (unknown metric/type, incompatible pair,\n"
"bit dimensions) or RuntimeError (SQLite). Thread-safe: calls are serialised\n"
"per object and run with the GIL released. threads: scan threads of a\n"
"search (0 = automatic: one per CPU for tables of 8 MiB of vectors or more).");

static PyTypeObject Vector_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kohakuvault._kvault._VectorKVault",
    .tp_basicsize = sizeof(VectorObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = vk_doc,
    .tp_new = Vector_new,
    .tp_dealloc = (destructor)Vector_dealloc,
    .tp_methods = vk_methods,
    .tp_getset = vk_getset,
};

PyDoc_STRVAR(vk_migrate_doc,
"_migrate_vec0(path, table) -> int\n\n"
"Convert the sqlite-vec vec0 table `table` of `path` to the native layout in\n"
"place, in one transaction; returns the number of vectors. ValueError (not a\n"
"vec0 table, unsupported declaration), RuntimeError (SQLite, busy).");

static PyObject *vk_migrate(PyObject *unused, PyObject *args)
{
    PyObject *path_obj, *path_bytes = NULL;
    const char *table;
    char err[512] = "";
    int64_t moved = 0;
    kv_status st;
    if (!PyArg_ParseTuple(args, "Os:_migrate_vec0", &path_obj, &table) ||
        !PyUnicode_FSConverter(path_obj, &path_bytes))
        return NULL;
    const char *path = PyBytes_AS_STRING(path_bytes);
    Py_BEGIN_ALLOW_THREADS
    st = kv_vector_migrate_vec0(path, table, &moved, err, sizeof err);
    Py_END_ALLOW_THREADS
    Py_DECREF(path_bytes);
    if (st != KV_OK)
        return kvpy_store_raise(st, err);
    return PyLong_FromLongLong(moved);
}

static PyMethodDef vk_module_funcs[] = {
    {"_migrate_vec0", vk_migrate, METH_VARARGS, vk_migrate_doc},
    {NULL, NULL, 0, NULL},
};

int kvpy_init_vector(PyObject *module)
{
    if (PyModule_AddFunctions(module, vk_module_funcs) < 0)
        return -1;
    return PyModule_AddType(module, &Vector_Type); /* readies it; name from tp_name */
}
