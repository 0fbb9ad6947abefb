/*
 * text_py.c - kohakuvault._kvault._TextVault: the native side of
 * kohakuvault.TextVault (API.md §7), a thin binding over engine/text.h.
 *
 * The native class takes texts as a sequence with one str per column (the
 * proxy turns a str or dict into that), encodes values per API.md §3 with
 * autopack.c, and raises builtin exceptions that the proxy maps with
 * kohakuvault.errors.map_exception (§2.3):
 *   ValueError  bad argument (→ InvalidArgument)
 *   RuntimeError SQLite failure, "database is locked", "ID n not found",
 *               "Query returned no rows" (→ KohakuVaultError/DatabaseBusy/NotFound)
 *   KeyError    get() miss (→ KohakuVaultError whose text is the KeyError repr)
 *
 * Concurrency: each object owns a PyThread lock taken around every engine
 * call; engine calls run with the GIL released (API.md §10), and Python
 * objects are only touched with the GIL held. Arguments are copied into
 * immutable objects (tuple of str, bytes, engine buffers) before the GIL is
 * released.
 *
 * Also home of the helpers shared with vector_py.c (kvpy_store_*, kvpy.h).
 */
#include "kvpy.h"

#include <string.h>

#include "kvault/text.h"

/* ====================================================================== */
/* Shared helpers (declared in kvpy.h)                                     */
/* ====================================================================== */

void kvpy_store_lock(PyThread_type_lock lock)
{
    if (!PyThread_acquire_lock(lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
}

PyObject *kvpy_store_raise(kv_status st, const char *msg)
{
    PyObject *type;
    if (!msg || !msg[0])
        msg = kv_strerror(st);
    switch (st) {
    case KV_INVALID:
        type = PyExc_ValueError;
        break;
    case KV_NOMEM:
        type = PyExc_MemoryError;
        break;
    case KV_IO:
        type = PyExc_OSError;
        break;
    default:
        type = PyExc_RuntimeError;
    }
    PyErr_SetString(type, msg);
    return NULL;
}

int kvpy_store_encode(PyObject *v, const kvpy_pack_opts *o, kv_buf *out)
{
    if (o->auto_pack)
        return kvpy_pack_value(v, o, out);
    if (PyUnicode_Check(v) || PyLong_Check(v)) {
        PyErr_Format(PyExc_TypeError,
                     "value must be bytes-like or a sequence of ints (auto-pack is off), got %s",
                     Py_TYPE(v)->tp_name);
        return -1;
    }
    PyObject *b = PyBytes_FromObject(v);
    if (!b)
        return -1;
    int rc = kv_buf_append(out, PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(b)) == KV_OK ? 0 : -1;
    Py_DECREF(b);
    if (rc < 0)
        PyErr_NoMemory();
    return rc;
}

/* ====================================================================== */
/* _TextVault                                                              */
/* ====================================================================== */

typedef struct {
    PyObject_HEAD
    kv_text *t;               /* engine handle, NULL once closed; under `lock` */
    PyThread_type_lock lock;  /* serialises engine calls (leaf lock) */
    PyObject *columns;        /* owned tuple of column names (str) */
    kvpy_pack_opts opts;      /* §3.6 switches; read/written with the GIL */
} TextVaultObject;

/* Engine failure → exception, reading the message while the lock is held. */
#define TV_FAIL(self, st) kvpy_store_raise((st), kv_text_errmsg((self)->t))

static int tv_open_check(TextVaultObject *self)
{
    if (self->t == NULL) {
        PyErr_SetString(PyExc_ValueError, "Cannot operate on closed TextVault");
        return -1;
    }
    return 0;
}

static void tv_unlock(TextVaultObject *self) { PyThread_release_lock(self->lock); }

/* Lock + closed check. 0 with the lock held, -1 (not held) on error. */
static int tv_lock(TextVaultObject *self)
{
    kvpy_store_lock(self->lock);
    if (tv_open_check(self) < 0) {
        tv_unlock(self);
        return -1;
    }
    return 0;
}

static PyObject *TextVault_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"path", "table", "columns", NULL};
    PyObject *path_obj, *cols = Py_None, *path_bytes = NULL, *seq = NULL;
    const char *table = "text_vault";
    TextVaultObject *self = NULL;
    const char **names = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|sO:_TextVault", kwlist, &path_obj, &table, &cols))
        return NULL;
    if (!PyUnicode_FSConverter(path_obj, &path_bytes))
        return NULL;
    if (cols == Py_None)
        seq = Py_BuildValue("(s)", "content");
    else
        seq = PySequence_Tuple(cols);
    if (!seq)
        goto fail;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "columns must not be empty");
        goto fail;
    }
    names = PyMem_Calloc((size_t)n, sizeof(char *));
    if (!names) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *c = PyTuple_GET_ITEM(seq, i);
        if (!PyUnicode_Check(c)) {
            PyErr_Format(PyExc_ValueError, "Invalid column name: %R", c);
            goto fail;
        }
        if (!(names[i] = PyUnicode_AsUTF8(c)))
            goto fail;
    }
    self = (TextVaultObject *)type->tp_alloc(type, 0);
    if (!self)
        goto fail;
    self->opts.auto_pack = self->opts.headers = self->opts.use_pickle = 1;
    self->lock = PyThread_allocate_lock();
    if (!self->lock) {
        PyErr_NoMemory();
        goto fail;
    }
    char err[512] = "";
    kv_status st;
    const char *path = PyBytes_AS_STRING(path_bytes);
    kv_text *t = NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_text_open(path, table, names, (size_t)n, &t, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        kvpy_store_raise(st, err);
        goto fail;
    }
    self->t = t;
    self->columns = seq;
    seq = NULL;
    PyMem_Free(names);
    Py_DECREF(path_bytes);
    return (PyObject *)self;
fail:
    PyMem_Free(names);
    Py_XDECREF(seq);
    Py_XDECREF(path_bytes);
    Py_XDECREF(self);
    return NULL;
}

static void TextVault_dealloc(TextVaultObject *self)
{
    if (self->t) {
        kv_text *t = self->t;
        self->t = NULL;
        Py_BEGIN_ALLOW_THREADS
        kv_text_close(t);
        Py_END_ALLOW_THREADS
    }
    if (self->lock)
        PyThread_free_lock(self->lock);
    Py_XDECREF(self->columns);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/*
 * Texts argument → tuple of str with one entry per column, plus UTF-8
 * pointers/lengths into it (valid while the tuple lives). Returns the new
 * tuple or NULL with ValueError/TypeError.
 */
static PyObject *tv_texts(TextVaultObject *self, PyObject *texts, const char **ptrs, size_t *lens)
{
    Py_ssize_t ncols = PyTuple_GET_SIZE(self->columns);
    PyObject *tup = PySequence_Tuple(texts);
    if (!tup)
        return NULL;
    if (PyTuple_GET_SIZE(tup) != ncols) {
        PyErr_Format(PyExc_ValueError, "expected %zd texts (one per column), got %zd", ncols,
                     PyTuple_GET_SIZE(tup));
        Py_DECREF(tup);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < ncols; i++) {
        PyObject *s = PyTuple_GET_ITEM(tup, i);
        Py_ssize_t len;
        if (!PyUnicode_Check(s)) {
            PyErr_Format(PyExc_TypeError, "text for column %R must be str, not %s",
                         PyTuple_GET_ITEM(self->columns, i), Py_TYPE(s)->tp_name);
            Py_DECREF(tup);
            return NULL;
        }
        if (!(ptrs[i] = PyUnicode_AsUTF8AndSize(s, &len))) {
            Py_DECREF(tup);
            return NULL;
        }
        lens[i] = (size_t)len;
    }
    return tup;
}

PyDoc_STRVAR(tv_insert_doc,
"insert(texts, value) -> int\n\n"
"Insert one document: `texts` is a sequence of str, one per column in column\n"
"order; `value` is encoded per API.md §3. Returns the document id (FTS rowid).\n"
"Raises ValueError/TypeError for bad texts or an unencodable value,\n"
"RuntimeError for SQLite failures ('database is locked' when busy).");

static PyObject *tv_insert(TextVaultObject *self, PyObject *args)
{
    PyObject *texts, *value, *tup = NULL;
    const char *ptrs[255];
    size_t lens[255];
    kv_buf buf;
    kv_status st;
    int64_t id = 0;

    if (!PyArg_ParseTuple(args, "OO:insert", &texts, &value))
        return NULL;
    kv_buf_init(&buf);
    if (!(tup = tv_texts(self, texts, ptrs, lens)) || kvpy_store_encode(value, &self->opts, &buf) < 0)
        goto fail;
    if (tv_lock(self) < 0)
        goto fail;
    Py_BEGIN_ALLOW_THREADS
    st = kv_text_insert(self->t, ptrs, lens, buf.data, buf.len, &id);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        TV_FAIL(self, st);
        tv_unlock(self);
        goto fail;
    }
    tv_unlock(self);
    Py_DECREF(tup);
    kv_buf_free(&buf);
    return PyLong_FromLongLong(id);
fail:
    Py_XDECREF(tup);
    kv_buf_free(&buf);
    return NULL;
}

/* Column texts of a hit/document: str for one column, dict for several. */
static PyObject *tv_texts_obj(TextVaultObject *self, const char *const *texts, const size_t *lens)
{
    Py_ssize_t ncols = PyTuple_GET_SIZE(self->columns);
    if (ncols == 1)
        return PyUnicode_DecodeUTF8(texts[0], (Py_ssize_t)lens[0], "replace");
    PyObject *d = PyDict_New();
    for (Py_ssize_t i = 0; d && i < ncols; i++) {
        PyObject *s = PyUnicode_DecodeUTF8(texts[i], (Py_ssize_t)lens[i], "replace");
        if (!s || PyDict_SetItem(d, PyTuple_GET_ITEM(self->columns, i), s) < 0) {
            Py_XDECREF(s);
            Py_CLEAR(d);
            break;
        }
        Py_DECREF(s);
    }
    return d;
}

/* Shared body of search / search_with_text / search_with_snippets. */
static PyObject *tv_search_impl(TextVaultObject *self, PyObject *query, long long k,
                                PyObject *column, int escape, int with_texts,
                                const kv_text_snippet *snip)
{
    Py_ssize_t qlen;
    const char *q, *col = NULL;
    kv_text_hits *h = NULL;
    kv_status st;
    PyObject *list = NULL;

    if (!PyUnicode_Check(query)) {
        PyErr_Format(PyExc_TypeError, "query must be str, not %s", Py_TYPE(query)->tp_name);
        return NULL;
    }
    if (!(q = PyUnicode_AsUTF8AndSize(query, &qlen)))
        return NULL;
    if (column != Py_None) {
        if (!PyUnicode_Check(column)) {
            PyErr_SetString(PyExc_TypeError, "column must be str or None");
            return NULL;
        }
        if (!(col = PyUnicode_AsUTF8(column)))
            return NULL;
    }
    unsigned flags = (escape ? KV_TEXT_ESCAPE : 0) | (with_texts ? KV_TEXT_WITH_TEXTS : 0);
    if (tv_lock(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_text_search(self->t, q, (size_t)qlen, col, (int64_t)k, flags, snip, &h);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        if (st == KV_INVALID && col)
            PyErr_Format(PyExc_ValueError, "Column '%s' not found. Available columns: %R", col,
                         self->columns);
        else
            TV_FAIL(self, st);
        tv_unlock(self);
        return NULL;
    }
    tv_unlock(self);

    list = PyList_New((Py_ssize_t)h->n);
    for (size_t i = 0; list && i < h->n; i++) {
        kv_text_hit *x = &h->hits[i];
        PyObject *val = kvpy_unpack_value(x->val, x->vlen, &self->opts), *item = NULL;
        if (val) {
            if (snip) {
                PyObject *s = PyUnicode_DecodeUTF8(x->snippet, (Py_ssize_t)x->snippet_len, "replace");
                item = s ? Py_BuildValue("(LdNN)", (long long)x->id, x->score, s, val) : NULL;
                if (!s)
                    Py_DECREF(val);
            } else if (with_texts) {
                PyObject *t = tv_texts_obj(self, x->texts, x->text_lens);
                item = t ? Py_BuildValue("(LdNN)", (long long)x->id, x->score, t, val) : NULL;
                if (!t)
                    Py_DECREF(val);
            } else {
                item = Py_BuildValue("(LdN)", (long long)x->id, x->score, val);
            }
        }
        if (!item) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    kv_text_hits_free(h);
    return list;
}

PyDoc_STRVAR(tv_search_doc,
"search(query, k=10, column=None, escape=True, with_texts=False) -> list\n\n"
"Full-text search ranked by BM25 (API.md §7.3): [(id, score, value)] with\n"
"score = -bm25 in descending order, or [(id, score, texts, value)] with\n"
"with_texts. escape=True searches the whole query as one phrase; column\n"
"restricts the match to that column (unknown → ValueError). FTS5 syntax\n"
"errors in an unescaped query → RuntimeError.");

static PyObject *tv_search(TextVaultObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"query", "k", "column", "escape", "with_texts", NULL};
    PyObject *query, *column = Py_None;
    long long k = 10;
    int escape = 1, with_texts = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|LOpp:search", kwlist, &query, &k, &column,
                                     &escape, &with_texts))
        return NULL;
    return tv_search_impl(self, query, k, column, escape, with_texts, NULL);
}

PyDoc_STRVAR(tv_snippets_doc,
"search_with_snippets(query, k=10, snippet_column=0, snippet_tokens=10,\n"
"                     highlight_start='**', highlight_end='**', escape=True) -> list\n\n"
"As search, returning [(id, score, snippet, value)] where snippet is FTS5\n"
"snippet(table, snippet_column, start, end, '...', snippet_tokens);\n"
"snippet_column is a column index (out of range → ValueError).");

static PyObject *tv_search_with_snippets(TextVaultObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"query", "k", "snippet_column", "snippet_tokens", "highlight_start",
                             "highlight_end", "escape", NULL};
    PyObject *query;
    long long k = 10;
    int col = 0, tokens = 10, escape = 1;
    const char *hs = "**", *he = "**";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|Liissp:search_with_snippets", kwlist, &query, &k,
                                     &col, &tokens, &hs, &he, &escape))
        return NULL;
    kv_text_snippet sn = {.column = col, .start = hs, .end = he, .ellipsis = "...", .tokens = tokens};
    return tv_search_impl(self, query, k, Py_None, escape, 0, &sn);
}

PyDoc_STRVAR(tv_get_doc,
"get(key) -> value\n\n"
"Value of the first document whose first column contains `key` as a phrase.\n"
"Missing → KeyError; a multi-column store → ValueError.");

static PyObject *tv_get(TextVaultObject *self, PyObject *key)
{
    Py_ssize_t klen;
    const char *k;
    uint8_t *val = NULL;
    size_t vlen = 0;
    kv_status st;
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "key must be str, not %s", Py_TYPE(key)->tp_name);
        return NULL;
    }
    if (!(k = PyUnicode_AsUTF8AndSize(key, &klen)) || tv_lock(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_text_get(self->t, k, (size_t)klen, &val, &vlen);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        if (st == KV_NOTFOUND)
            PyErr_Format(PyExc_KeyError, "No document found with key: %U", key);
        else
            TV_FAIL(self, st);
        tv_unlock(self);
        return NULL;
    }
    tv_unlock(self);
    PyObject *r = kvpy_unpack_value(val, vlen, &self->opts);
    kv_text_free(val);
    return r;
}

PyDoc_STRVAR(tv_get_by_id_doc,
"get_by_id(id) -> (texts, value)\n\n"
"texts is a str (one column) or a dict column → text. Missing →\n"
"RuntimeError('ID <id> not found').");

static PyObject *tv_get_by_id(TextVaultObject *self, PyObject *arg)
{
    long long id = PyLong_AsLongLong(arg);
    kv_text_doc *d = NULL;
    kv_status st;
    if (id == -1 && PyErr_Occurred())
        return NULL;
    if (tv_lock(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_text_get_by_id(self->t, id, &d);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        TV_FAIL(self, st);
        tv_unlock(self);
        return NULL;
    }
    tv_unlock(self);
    PyObject *texts = tv_texts_obj(self, (const char *const *)d->texts, d->text_lens);
    PyObject *val = texts ? kvpy_unpack_value(d->val, d->vlen, &self->opts) : NULL;
    kv_text_doc_free(d);
    if (!val) {
        Py_XDECREF(texts);
        return NULL;
    }
    return Py_BuildValue("(NN)", texts, val);
}

PyDoc_STRVAR(tv_delete_doc,
"delete(id) -> bool\n\nRemove a document and its value; False if the id was unknown.");

static PyObject *tv_delete(TextVaultObject *self, PyObject *arg)
{
    long long id = PyLong_AsLongLong(arg);
    int removed = 0;
    kv_status st;
    if ((id == -1 && PyErr_Occurred()) || tv_lock(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_text_delete(self->t, id, &removed);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        TV_FAIL(self, st);
        tv_unlock(self);
        return NULL;
    }
    tv_unlock(self);
    return PyBool_FromLong(removed);
}

PyDoc_STRVAR(tv_update_doc,
"update(id, texts=None, value=None) -> None\n\n"
"texts (one str per column) replace every column (unknown id: no-op); a\n"
"value for an unknown id → RuntimeError('Query returned no rows'). Both\n"
"None → ValueError.");

static PyObject *tv_update(TextVaultObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"id", "texts", "value", NULL};
    long long id;
    PyObject *texts = Py_None, *value = Py_None, *tup = NULL;
    const char *ptrs[255];
    size_t lens[255];
    kv_buf buf;
    kv_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "L|OO:update", kwlist, &id, &texts, &value))
        return NULL;
    if (texts == Py_None && value == Py_None) {
        PyErr_SetString(PyExc_ValueError, "Must provide either texts or value to update");
        return NULL;
    }
    kv_buf_init(&buf);
    if (texts != Py_None && !(tup = tv_texts(self, texts, ptrs, lens)))
        goto fail;
    if (value != Py_None && kvpy_store_encode(value, &self->opts, &buf) < 0)
        goto fail;
    if (tv_lock(self) < 0)
        goto fail;
    Py_BEGIN_ALLOW_THREADS
    st = kv_text_update(self->t, id, tup ? ptrs : NULL, lens,
                        value != Py_None ? (const void *)(buf.data ? buf.data : (uint8_t *)"") : NULL,
                        buf.len);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        TV_FAIL(self, st);
        tv_unlock(self);
        goto fail;
    }
    tv_unlock(self);
    Py_XDECREF(tup);
    kv_buf_free(&buf);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(tup);
    kv_buf_free(&buf);
    return NULL;
}

PyDoc_STRVAR(tv_exists_doc, "exists(id) -> bool\n\nWhether document `id` exists (ids only).");

static PyObject *tv_exists(TextVaultObject *self, PyObject *arg)
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
        Py_RETURN_FALSE; /* no rowid is that large */
    }
    if (tv_lock(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_text_exists(self->t, id, &found);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        TV_FAIL(self, st);
        tv_unlock(self);
        return NULL;
    }
    tv_unlock(self);
    return PyBool_FromLong(found);
}

PyDoc_STRVAR(tv_count_doc, "count() -> int\n\nNumber of rows of the FTS table.");

static PyObject *tv_count(TextVaultObject *self, PyObject *unused)
{
    int64_t n = 0;
    kv_status st;
    if (tv_lock(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_text_count(self->t, &n);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        TV_FAIL(self, st);
        tv_unlock(self);
        return NULL;
    }
    tv_unlock(self);
    return PyLong_FromLongLong(n);
}

PyDoc_STRVAR(tv_count_matches_doc,
"count_matches(query) -> int\n\n"
"Documents matching the raw FTS5 expression (never escaped); syntax errors\n"
"→ RuntimeError.");

static PyObject *tv_count_matches(TextVaultObject *self, PyObject *query)
{
    Py_ssize_t qlen;
    const char *q;
    int64_t n = 0;
    kv_status st;
    if (!PyUnicode_Check(query)) {
        PyErr_Format(PyExc_TypeError, "query must be str, not %s", Py_TYPE(query)->tp_name);
        return NULL;
    }
    if (!(q = PyUnicode_AsUTF8AndSize(query, &qlen)) || tv_lock(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_text_count_matches(self->t, q, (size_t)qlen, &n);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        TV_FAIL(self, st);
        tv_unlock(self);
        return NULL;
    }
    tv_unlock(self);
    return PyLong_FromLongLong(n);
}

PyDoc_STRVAR(tv_clear_doc, "clear() -> None\n\nDelete every document and value.");

static PyObject *tv_clear(TextVaultObject *self, PyObject *unused)
{
    kv_status st;
    if (tv_lock(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_text_clear(self->t);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        TV_FAIL(self, st);
        tv_unlock(self);
        return NULL;
    }
    tv_unlock(self);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(tv_keys_doc,
"keys(limit=10000, offset=0) -> list[int]\n\nDocument ids in table (rowid) order.");

static PyObject *tv_keys(TextVaultObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"limit", "offset", NULL};
    long long limit = 10000, offset = 0;
    int64_t *ids = NULL;
    size_t n = 0;
    kv_status st;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|LL:keys", kwlist, &limit, &offset))
        return NULL;
    if (tv_lock(self) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_text_keys(self->t, limit, offset, &ids, &n);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        TV_FAIL(self, st);
        tv_unlock(self);
        return NULL;
    }
    tv_unlock(self);
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *o = PyLong_FromLongLong(ids[i]);
        if (!o) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, o);
    }
    kv_text_free(ids);
    return list;
}

PyDoc_STRVAR(tv_close_doc,
"close() -> None\n\nClose the connection (idempotent); later calls raise ValueError.");

static PyObject *tv_close(TextVaultObject *self, PyObject *unused)
{
    kvpy_store_lock(self->lock);
    kv_text *t = self->t;
    self->t = NULL;
    Py_BEGIN_ALLOW_THREADS
    kv_text_close(t);
    Py_END_ALLOW_THREADS
    tv_unlock(self);
    Py_RETURN_NONE;
}

/* ---- §3.6 switches ----------------------------------------------------- */

static PyObject *tv_enable_auto_pack(TextVaultObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"use_pickle", NULL};
    int use_pickle = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|p:enable_auto_pack", kwlist, &use_pickle))
        return NULL;
    self->opts.auto_pack = 1;
    self->opts.headers = 1;
    self->opts.use_pickle = use_pickle;
    Py_RETURN_NONE;
}

static PyObject *tv_disable_auto_pack(TextVaultObject *self, PyObject *u)
{
    self->opts.auto_pack = 0;
    Py_RETURN_NONE;
}

static PyObject *tv_auto_pack_enabled(TextVaultObject *self, PyObject *u)
{
    return PyBool_FromLong(self->opts.auto_pack);
}

static PyObject *tv_enable_headers(TextVaultObject *self, PyObject *u)
{
    self->opts.headers = 1;
    Py_RETURN_NONE;
}

static PyObject *tv_disable_headers(TextVaultObject *self, PyObject *u)
{
    self->opts.headers = 0;
    Py_RETURN_NONE;
}

static PyObject *tv_headers_enabled(TextVaultObject *self, PyObject *u)
{
    return PyBool_FromLong(self->opts.headers);
}

static PyObject *tv_get_columns(TextVaultObject *self, void *closure)
{
    return PySequence_List(self->columns);
}

static PyObject *tv_get_closed(TextVaultObject *self, void *closure)
{
    return PyBool_FromLong(self->t == NULL);
}

static PyGetSetDef tv_getset[] = {
    {"columns", (getter)tv_get_columns, NULL, "Column names (a new list).", NULL},
    {"closed", (getter)tv_get_closed, NULL, "True once close() was called.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef tv_methods[] = {
    {"insert", (PyCFunction)tv_insert, METH_VARARGS, tv_insert_doc},
    {"search", (PyCFunction)(void (*)(void))tv_search, METH_VARARGS | METH_KEYWORDS, tv_search_doc},
    {"search_with_snippets", (PyCFunction)(void (*)(void))tv_search_with_snippets,
     METH_VARARGS | METH_KEYWORDS, tv_snippets_doc},
    {"get", (PyCFunction)tv_get, METH_O, tv_get_doc},
    {"get_by_id", (PyCFunction)tv_get_by_id, METH_O, tv_get_by_id_doc},
    {"delete", (PyCFunction)tv_delete, METH_O, tv_delete_doc},
    {"update", (PyCFunction)(void (*)(void))tv_update, METH_VARARGS | METH_KEYWORDS, tv_update_doc},
    {"exists", (PyCFunction)tv_exists, METH_O, tv_exists_doc},
    {"count", (PyCFunction)tv_count, METH_NOARGS, tv_count_doc},
    {"count_matches", (PyCFunction)tv_count_matches, METH_O, tv_count_matches_doc},
    {"clear", (PyCFunction)tv_clear, METH_NOARGS, tv_clear_doc},
    {"keys", (PyCFunction)(void (*)(void))tv_keys, METH_VARARGS | METH_KEYWORDS, tv_keys_doc},
    {"close", (PyCFunction)tv_close, METH_NOARGS, tv_close_doc},
    {"enable_auto_pack", (PyCFunction)(void (*)(void))tv_enable_auto_pack, METH_VARARGS | METH_KEYWORDS,
     "enable_auto_pack(use_pickle=True): auto-pack on, headers on (API.md §3.6)."},
    {"disable_auto_pack", (PyCFunction)tv_disable_auto_pack, METH_NOARGS,
     "Auto-pack off: values must be bytes-like; reads return stored bytes."},
    {"auto_pack_enabled", (PyCFunction)tv_auto_pack_enabled, METH_NOARGS, "Auto-pack switch."},
    {"enable_headers", (PyCFunction)tv_enable_headers, METH_NOARGS, "Headers on (§3.6)."},
    {"disable_headers", (PyCFunction)tv_disable_headers, METH_NOARGS, "Headers off (§3.6)."},
    {"headers_enabled", (PyCFunction)tv_headers_enabled, METH_NOARGS, "Header switch."},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(tv_doc,
"_TextVault(path, table='text_vault', columns=None)\n\n"
"Native FTS5 full-text store (API.md §7); use kohakuvault.TextVault. Opens\n"
"the file with WAL, synchronous=NORMAL, temp_store=MEMORY and no busy\n"
"timeout. Bad table/column names → ValueError. Thread-safe: calls are\n"
"serialised per object and run with the GIL released.");

static PyTypeObject TextVault_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kohakuvault._kvault._TextVault",
    .tp_basicsize = sizeof(TextVaultObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = tv_doc,
    .tp_new = TextVault_new,
    .tp_dealloc = (destructor)TextVault_dealloc,
    .tp_methods = tv_methods,
    .tp_getset = tv_getset,
};

int kvpy_init_text(PyObject *module)
{
    if (PyType_Ready(&TextVault_Type) < 0)
        return -1;
    return PyModule_AddObjectRef(module, "_TextVault", (PyObject *)&TextVault_Type);
}
