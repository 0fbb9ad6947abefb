/*
 * text_py.c - kohakuvault._kvault._TextVault: the native side of
 * kohakuvault.TextVault (docs/api.md §7), a thin binding over engine/text.h.
 *
 * The native class takes texts as a sequence with one str per column (the
 * proxy turns a str or dict into that), encodes values per docs/api.md §3 with
 * autopack.c, and raises builtin exceptions that the proxy maps with
 * kohakuvault.errors.map_exception (§2.3):
 *   ValueError  bad argument (→ InvalidArgument)
 *   RuntimeError SQLite failure, "database is locked", "ID n not found",
 *               "Query returned no rows" (→ KohakuVaultError/DatabaseBusy/NotFound)
 *   KeyError    get() miss (→ KohakuVaultError whose text is the KeyError repr)
 *
 * Concurrency: each object owns a PyThread lock taken around every engine
 * call; engine calls run with the GIL released (docs/api.md §10), and Python
 * objects are only touched with the GIL held. Arguments are copied into
 * immutable objects (tuple of str, bytes, engine buffers) before the GIL is
 * released.
 *
 * The lock/closed/GIL plumbing, the id-based methods and the §3.6
 * switches are shared with vector_py.c (store_py.c, kvpy.h).
 */
#include "kvpy.h"

#include <string.h>

#include "kvault/text.h"

/* ====================================================================== */
/* _TextVault                                                              */
/* ====================================================================== */

typedef struct {
    KVPY_STORE_HEAD           /* h is the kv_text handle */
    PyObject *columns;        /* owned tuple of column names (str) */
    const char **names;       /* owned (PyMem): UTF-8 of each column, into `columns` */
} TextVaultObject;

/* kv_text through the untyped store interface (GIL released, lock held). */
static void tx_close(void *h) { kv_text_close(h); }
static const char *tx_errmsg(const void *h) { return kv_text_errmsg(h); }
static kv_status tx_delete(void *h, int64_t id, int *removed) { return kv_text_delete(h, id, removed); }
static kv_status tx_exists(void *h, int64_t id, int *found) { return kv_text_exists(h, id, found); }
static kv_status tx_count(void *h, int64_t *n) { return kv_text_count(h, n); }
static kv_status tx_reopen(const kvpy_store *s, void **h, char *err, size_t errlen)
{
    const TextVaultObject *t = (const TextVaultObject *)s;
    return kv_text_open(s->path, s->table, t->names, (size_t)PyTuple_GET_SIZE(t->columns),
                        (kv_text **)h, err, errlen);
}

static void tx_set_guard(void *h, kv_commit_guard *g) { kv_text_set_commit_guard(h, g); }
static void tx_conn(void *h, kv_conn *c) { kv_text_conn(h, c); }
/* Open parameters of the writer's handle: the column names (kvshm/ops.h). */
static void tx_encode_open(const kvpy_store *s, kvshm_op_enc *e)
{
    const TextVaultObject *t = (const TextVaultObject *)s;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t->columns); i++)
        kvshm_op_add(e, t->names[i], strlen(t->names[i]));
}

/* kvpy_store_kind.run_posted: a pipelined insert (kvshm/ops.h, TEXT INSERT
 * with its id) on the own handle. */
static kv_status tx_run_posted(void *h, const kvshm_op *op)
{
    const char *texts[255];
    size_t lens[255];
    int64_t id;
    if (op->cls != KVSHM_OPC_TEXT || op->op != KVSHM_OP_INSERT || op->nargs != op->nopen + 2 ||
        op->nopen != kv_text_ncolumns(h))
        return KV_INVALID;
    for (uint32_t i = 0; i < op->nopen; i++) {
        texts[i] = (const char *)op->args[1 + i].p;
        lens[i] = op->args[1 + i].len;
    }
    return kv_text_insert_at(h, kvshm_op_i64(&op->args[op->nargs - 1], NULL), texts, lens,
                             op->args[0].p, op->args[0].len, &id);
}

static kv_status tx_tx_begin(void *h) { return kv_text_tx_begin(h); }
static kv_status tx_tx_end(void *h, int commit) { return kv_text_tx_end(h, commit); }

static const kvpy_store_kind text_kind = {
    .name = "TextVault",
    .close = tx_close,
    .errmsg = tx_errmsg,
    .del = tx_delete,
    .exists = tx_exists,
    .count = tx_count,
    .reopen = tx_reopen,
    .op_class = KVSHM_OPC_TEXT,
    .set_guard = tx_set_guard,
    .conn = tx_conn,
    .encode_open = tx_encode_open,
    .run_posted = tx_run_posted,
    .tx_begin = tx_tx_begin,
    .tx_end = tx_tx_end,
};

#define STORE(self) ((kvpy_store *)(self))

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
    const char *path = PyBytes_AS_STRING(path_bytes);
    if (!self || kvpy_store_setup(STORE(self), &text_kind, path, table) < 0)
        goto fail;
    char err[512] = "";
    kv_status st;
    kv_text *t = NULL;
    Py_BEGIN_ALLOW_THREADS
    st = kv_text_open(path, table, names, (size_t)n, &t, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (st != KV_OK) {
        kvpy_store_raise(st, err);
        goto fail;
    }
    self->h = t;
    self->columns = seq;
    self->names = names;
    seq = NULL;
    Py_DECREF(path_bytes);
    if (kvpy_store_route_open(STORE(self)) < 0) {
        Py_DECREF(self);
        return NULL;
    }
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
    kvpy_store_finalize(STORE(self));
    PyMem_Free(self->names);
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

/* Arguments and results of one kv_text call, read and written with the GIL
 * released (fields used per op as noted). */
typedef struct {
    const char *const *texts;       /* insert, update: one per column (update: NULL = keep) */
    const size_t *lens;             /* insert, update: byte lengths of texts */
    const void *val;                /* insert, update: encoded value (update: NULL = keep) */
    size_t vlen;                    /* insert, update: bytes at val */
    const char *q;                  /* search, count_matches: query; get: key */
    size_t qlen;                    /* bytes at q */
    const char *col;                /* search: column filter or NULL */
    unsigned flags;                 /* search: KV_TEXT_* */
    const kv_text_snippet *snip;    /* search: snippet request or NULL */
    int64_t id;                     /* in: get_by_id, update; out: insert */
    int64_t limit, offset;          /* keys (in); search: limit = k */
    int64_t n;                      /* out: count_matches */
    kv_text_hits *hits;             /* out: search (kv_text_hits_free) */
    kv_text_doc *doc;               /* out: get_by_id (kv_text_doc_free) */
    uint8_t *out;                   /* out: get value (kv_text_free) */
    int64_t *ids;                   /* out: keys (kv_text_free) */
    size_t nout;                    /* out: bytes at out / entries at ids */
    size_t ncols;                   /* insert, update: entries at texts (through the writer) */
} tv_args;

/* Every insert of the own connection takes its id past the blocks of ids
 * a writer granted (kv_text_insert_leased), whatever the object's mode: a
 * writer may serve the file to other objects or processes whose pipelined
 * inserts carry ids of their blocks not yet stored. With no lease row this
 * costs one read of kohakuvault_meta. */
static kv_status op_insert(void *h, void *c)
{
    tv_args *a = c;
    return kv_text_insert_leased(h, a->texts, a->lens, a->val, a->vlen, &a->id);
}

static kv_status op_update(void *h, void *c)
{
    tv_args *a = c;
    return kv_text_update(h, a->id, a->texts, a->lens, a->val, a->vlen);
}

static kv_status op_search(void *h, void *c)
{
    tv_args *a = c;
    return kv_text_search(h, a->q, a->qlen, a->col, a->limit, a->flags, a->snip, &a->hits);
}

static kv_status op_get(void *h, void *c)
{
    tv_args *a = c;
    return kv_text_get(h, a->q, a->qlen, &a->out, &a->nout);
}

static kv_status op_get_by_id(void *h, void *c)
{
    tv_args *a = c;
    return kv_text_get_by_id(h, a->id, &a->doc);
}

static kv_status op_count_matches(void *h, void *c)
{
    tv_args *a = c;
    return kv_text_count_matches(h, a->q, a->qlen, &a->n);
}

static kv_status op_clear(void *h, void *c)
{
    (void)c;
    return kv_text_clear(h);
}

static kv_status op_keys(void *h, void *c)
{
    tv_args *a = c;
    return kv_text_keys(h, a->limit, a->offset, &a->ids, &a->nout);
}

/* ---- the same writes through the writer (kvshm/ops.h, TEXT) ---------- */

/* A value as an operation field: absent when NULL (update: keep). */
static void enc_value(kvshm_op_enc *e, const void *val, size_t vlen)
{
    if (val)
        kvshm_op_add(e, val, vlen);
    else
        kvshm_op_add_absent(e);
}

static void enc_texts(const tv_args *a, kvshm_op_enc *e)
{
    for (size_t i = 0; i < a->ncols; i++)
        kvshm_op_add(e, a->texts[i] ? a->texts[i] : "", a->lens[i]);
}

static void enc_insert(const void *c, kvshm_op_enc *e)
{
    const tv_args *a = c;
    kvshm_op_add(e, a->val ? a->val : "", a->vlen);
    enc_texts(a, e);
}

static void enc_update(const void *c, kvshm_op_enc *e)
{
    const tv_args *a = c;
    kvshm_op_add_i64(e, a->id);
    enc_value(e, a->val, a->vlen);
    if (a->texts)
        enc_texts(a, e);
}

static void enc_clear(const void *c, kvshm_op_enc *e) { (void)c; (void)e; }

static kv_status res_id(void *c, const uint8_t *res, size_t n)
{
    if (n != 8)
        return KV_IO;
    memcpy(&((tv_args *)c)->id, res, 8);
    return KV_OK;
}

static const kvpy_store_remote remote_insert = {
    .op = KVSHM_OP_INSERT,
    .encode = enc_insert,
    .result = res_id,
};
static const kvpy_store_remote remote_update = {.op = KVSHM_OP_UPDATE, .encode = enc_update};
static const kvpy_store_remote remote_clear = {.op = KVSHM_OP_CLEAR, .encode = enc_clear};

/* A str argument → UTF-8 in a->q / a->qlen (valid while `obj` lives). */
static int tv_query_arg(PyObject *obj, const char *what, tv_args *a)
{
    Py_ssize_t len;
    if (!PyUnicode_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be str, not %s", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    if (!(a->q = PyUnicode_AsUTF8AndSize(obj, &len)))
        return -1;
    a->qlen = (size_t)len;
    return 0;
}

PyDoc_STRVAR(tv_insert_doc,
"insert(texts, value) -> int\n\n"
"Insert one document: `texts` is a sequence of str, one per column in column\n"
"order; `value` is encoded per docs/api.md §3. Returns the document id (FTS rowid).\n"
"Raises ValueError/TypeError for bad texts or an unencodable value,\n"
"RuntimeError for SQLite failures ('database is locked' when busy).");

static PyObject *tv_insert(TextVaultObject *self, PyObject *args)
{
    PyObject *texts, *value, *tup = NULL, *ret = NULL;
    const char *ptrs[255];
    size_t lens[255];
    kv_buf buf;

    if (!PyArg_ParseTuple(args, "OO:insert", &texts, &value))
        return NULL;
    kv_buf_init(&buf);
    if (!(tup = tv_texts(self, texts, ptrs, lens)) || kvpy_store_encode(value, &self->opts, &buf) < 0)
        goto out;
    tv_args a = {.texts = ptrs, .lens = lens, .val = buf.data, .vlen = buf.len,
                 .ncols = (size_t)PyTuple_GET_SIZE(self->columns)};
    int posted = kvpy_store_post_insert(STORE(self), &a, &remote_insert, &a.id);
    if (posted > 0 || (posted == 0 && kvpy_store_write(STORE(self), op_insert, &a, &remote_insert, NULL) == 0))
        ret = PyLong_FromLongLong(a.id);
out:
    Py_XDECREF(tup);
    kv_buf_free(&buf);
    return ret;
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
    tv_args a = {.limit = (int64_t)k, .snip = snip,
                 .flags = (escape ? KV_TEXT_ESCAPE : 0) | (with_texts ? KV_TEXT_WITH_TEXTS : 0)};
    kv_status st;
    if (tv_query_arg(query, "query", &a) < 0)
        return NULL;
    if (column != Py_None) {
        if (!PyUnicode_Check(column)) {
            PyErr_SetString(PyExc_TypeError, "column must be str or None");
            return NULL;
        }
        if (!(a.col = PyUnicode_AsUTF8(column)))
            return NULL;
    }
    if (kvpy_store_call(STORE(self), op_search, &a, &st) < 0) {
        if (st == KV_INVALID && a.col)
            PyErr_Format(PyExc_ValueError, "Column '%s' not found. Available columns: %R", a.col,
                         self->columns);
        return NULL;
    }
    kv_text_hits *h = a.hits;
    PyObject *list = PyList_New((Py_ssize_t)h->n);
    for (size_t i = 0; list && i < h->n; i++) {
        kv_text_hit *x = &h->hits[i];
        PyObject *val = kvpy_unpack_value(x->val, x->vlen, &self->opts), *item = NULL;
        if (!val)
            kvpy_name_decode_error("document %lld", (long long)x->id);
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
"Full-text search ranked by BM25 (docs/api.md §7.3): [(id, score, value)] with\n"
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
    tv_args a = {0};
    kv_status st;
    if (tv_query_arg(key, "key", &a) < 0)
        return NULL;
    if (kvpy_store_call(STORE(self), op_get, &a, &st) < 0) {
        if (st == KV_NOTFOUND)
            PyErr_Format(PyExc_KeyError, "No document found with key: %U", key);
        return NULL;
    }
    PyObject *r = kvpy_unpack_value(a.out, a.nout, &self->opts);
    kv_text_free(a.out);
    if (!r)
        kvpy_name_decode_error("the document found for %R", key);
    return r;
}

PyDoc_STRVAR(tv_get_by_id_doc,
"get_by_id(id) -> (texts, value)\n\n"
"texts is a str (one column) or a dict column → text. Missing →\n"
"RuntimeError('ID <id> not found').");

static PyObject *tv_get_by_id(TextVaultObject *self, PyObject *arg)
{
    tv_args a = {0};
    if (kvpy_store_id(arg, &a.id) < 0 ||
        kvpy_store_call_by_id(STORE(self), op_get_by_id, &a, a.id) < 0)
        return NULL;
    kv_text_doc *d = a.doc;
    PyObject *texts = tv_texts_obj(self, (const char *const *)d->texts, d->text_lens);
    PyObject *val = texts ? kvpy_unpack_value(d->val, d->vlen, &self->opts) : NULL;
    kv_text_doc_free(d);
    if (!val) {
        if (texts)
            kvpy_name_decode_error("document %lld", (long long)a.id);
        Py_XDECREF(texts);
        return NULL;
    }
    return Py_BuildValue("(NN)", texts, val);
}

PyDoc_STRVAR(tv_delete_doc,
"delete(id) -> bool\n\nRemove a document and its value; False if the id was unknown.");

PyDoc_STRVAR(tv_update_doc,
"update(id, texts=None, value=None) -> None\n\n"
"texts (one str per column) replace every column (unknown id: no-op); a\n"
"value for an unknown id → RuntimeError('Query returned no rows'). Both\n"
"None → ValueError.");

static PyObject *tv_update(TextVaultObject *self, PyObject *args, PyObject *kw)
{
    long long id;
    PyObject *texts, *value, *tup = NULL, *ret = NULL;
    const char *ptrs[255];
    size_t lens[255];
    kv_buf buf;
    if (kvpy_store_update_args(args, kw, "texts", &id, &texts, &value) < 0)
        return NULL;
    kv_buf_init(&buf);
    if (texts != Py_None && !(tup = tv_texts(self, texts, ptrs, lens)))
        goto out;
    tv_args a = {.id = id, .texts = tup ? ptrs : NULL, .lens = lens,
                 .ncols = (size_t)PyTuple_GET_SIZE(self->columns)};
    if (kvpy_store_update_value(value, &self->opts, &buf, &a.val, &a.vlen) == 0 &&
        kvpy_store_write(STORE(self), op_update, &a, &remote_update, NULL) == 0)
        ret = Py_NewRef(Py_None);
out:
    Py_XDECREF(tup);
    kv_buf_free(&buf);
    return ret;
}

PyDoc_STRVAR(tv_exists_doc, "exists(id) -> bool\n\nWhether document `id` exists (ids only).");

PyDoc_STRVAR(tv_count_doc, "count() -> int\n\nNumber of rows of the FTS table.");

PyDoc_STRVAR(tv_count_matches_doc,
"count_matches(query) -> int\n\n"
"Documents matching the raw FTS5 expression (never escaped); syntax errors\n"
"→ RuntimeError.");

static PyObject *tv_count_matches(TextVaultObject *self, PyObject *query)
{
    tv_args a = {0};
    if (tv_query_arg(query, "query", &a) < 0 ||
        kvpy_store_call(STORE(self), op_count_matches, &a, NULL) < 0)
        return NULL;
    return PyLong_FromLongLong(a.n);
}

PyDoc_STRVAR(tv_clear_doc, "clear() -> None\n\nDelete every document and value.");

static PyObject *tv_clear(TextVaultObject *self, PyObject *unused)
{
    tv_args a = {0};
    if (kvpy_store_write(STORE(self), op_clear, &a, &remote_clear, NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(tv_keys_doc,
"keys(limit=10000, offset=0) -> list[int]\n\nDocument ids in table (rowid) order.");

static PyObject *tv_keys(TextVaultObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"limit", "offset", NULL};
    long long limit = 10000, offset = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|LL:keys", kwlist, &limit, &offset))
        return NULL;
    tv_args a = {.limit = limit, .offset = offset};
    if (kvpy_store_call(STORE(self), op_keys, &a, NULL) < 0)
        return NULL;
    PyObject *list = PyList_New((Py_ssize_t)a.nout);
    for (size_t i = 0; list && i < a.nout; i++) {
        PyObject *o = PyLong_FromLongLong(a.ids[i]);
        if (!o) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, o);
    }
    kv_text_free(a.ids);
    return list;
}

static PyObject *tv_get_columns(TextVaultObject *self, void *closure)
{
    return PySequence_List(self->columns);
}

static PyGetSetDef tv_getset[] = {
    {"columns", (getter)tv_get_columns, NULL, "Column names (a new list).", NULL},
    KVPY_STORE_GETSET_CLOSED,
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef tv_methods[] = {
    {"insert", (PyCFunction)tv_insert, METH_VARARGS, tv_insert_doc},
    {"search", (PyCFunction)(void (*)(void))tv_search, METH_VARARGS | METH_KEYWORDS, tv_search_doc},
    {"search_with_snippets", (PyCFunction)(void (*)(void))tv_search_with_snippets,
     METH_VARARGS | METH_KEYWORDS, tv_snippets_doc},
    {"get", (PyCFunction)tv_get, METH_O, tv_get_doc},
    {"get_by_id", (PyCFunction)tv_get_by_id, METH_O, tv_get_by_id_doc},
    {"delete", kvpy_store_delete, METH_O, tv_delete_doc},
    {"update", (PyCFunction)(void (*)(void))tv_update, METH_VARARGS | METH_KEYWORDS, tv_update_doc},
    {"exists", kvpy_store_exists, METH_O, tv_exists_doc},
    {"count", kvpy_store_count, METH_NOARGS, tv_count_doc},
    {"count_matches", (PyCFunction)tv_count_matches, METH_O, tv_count_matches_doc},
    {"clear", (PyCFunction)tv_clear, METH_NOARGS, tv_clear_doc},
    {"keys", (PyCFunction)(void (*)(void))tv_keys, METH_VARARGS | METH_KEYWORDS, tv_keys_doc},
    KVPY_STORE_METHODS,
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(tv_doc,
"_TextVault(path, table='text_vault', columns=None)\n\n"
"Native FTS5 full-text store (docs/api.md §7); use kohakuvault.TextVault. Opens\n"
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
    return PyModule_AddType(module, &TextVault_Type); /* readies it; name from tp_name */
}
