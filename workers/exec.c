/*
 * exec.c -- the writer's executor of table operations (KVSHM_MSG_EXEC,
 * kvshm/ops.h): every write a TextVault, VectorKVault or ColumnVault makes to a served
 * file is applied here, with the engine call the embedded binding makes
 * (docs/shared-mode.md, "Every class through the writer").
 *
 * Engine handles are opened on first use and kept, keyed by class, table
 * and open parameters (the decoded operation's key), up to WR_EXEC_HANDLES;
 * the least recently used one is closed to make room. Each has its own
 * SQLite connection; before an operation, the commit in flight of the KV
 * pipeline is finished (its kv_batch transaction holds SQLite's write lock).
 * Each operation is one engine call, one transaction; the reply goes out
 * after its commit, so the client reads its write through its own
 * connection at once.
 *
 * The operation is untrusted: kvshm_op_decode checks every length and count;
 * the engine checks names, dimensions and byte counts as it does for the
 * embedded binding, and its message travels back as the reply's payload.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kv_assert.h"
#include "kvault/column.h"
#include "kvault/text.h"
#include "kvault/vector.h"
#include "kvshm/ops.h"
#include "writer.h"

/* Engine handles kept open at once. */
#define WR_EXEC_HANDLES 64
/* How long an operation waits for SQLite's write lock when another
 * connection holds it (a process opening a store creates its tables; an
 * embedded writer with shared=False), polling every WR_EXEC_BUSY_POLL_US,
 * before the client gets KV_BUSY (which its busy policy retries). Bounded:
 * the loop serves everyone else meanwhile. */
#define WR_EXEC_BUSY_MS 200
#define WR_EXEC_BUSY_POLL_US 1000
/* Largest memfd buffer kept between operations (bytes). */
#define WR_EXEC_KEEP_IN ((size_t)64 << 20)

typedef struct wr_handle {
    uint8_t cls;
    uint8_t *key;            /* table + open parameters, as encoded */
    size_t key_len;
    void *h;                 /* kv_text *, kv_vector * or kv_colvault * */
    uint64_t used;           /* last use (wr_exec's counter) */
} wr_handle;

struct wr_exec {
    wr_handle hs[WR_EXEC_HANDLES];
    size_t n;
    uint64_t clock;
    kvshm_op op;             /* the decoded operation (large: kept here) */
    uint8_t *in;             /* an operation read from a memfd (read_memfd) */
    size_t in_cap;
    uint8_t *res;            /* the result of the current operation */
    size_t res_len, res_cap;
};

/* How the executor serves one class (exec_classes below). */
typedef struct wr_class {
    kv_status (*open)(wr_state *ws, const kvshm_op *op, void **h, char *err, size_t errlen);
    void (*close)(void *h);
    kv_status (*run)(wr_exec *x, void *h, const kvshm_op *op);
    const char *(*errmsg)(void *h);
} wr_class;

static const wr_class *class_of(unsigned cls);

static void handle_close(wr_handle *w)
{
    class_of(w->cls)->close(w->h);
    free(w->key);
    memset(w, 0, sizeof *w);
}

void wr_exec_close(wr_state *ws)
{
    wr_exec *x = ws->exec;
    if (!x) return;
    for (size_t i = 0; i < x->n; i++) handle_close(&x->hs[i]);
    free(x->res);
    free(x->in);
    free(x);
    ws->exec = NULL;
}

/* The table name of `op` as a C string in buf (it is an identifier of at
 * most KVSHM_OP_TABLE_MAX bytes: kvshm_op_decode). */
static const char *table_name(const kvshm_op *op, char buf[KVSHM_OP_TABLE_MAX + 1])
{
    memcpy(buf, op->table, op->table_len);
    buf[op->table_len] = 0;
    return buf;
}

static kv_status open_text(wr_state *ws, const kvshm_op *op, void **h, char *err, size_t errlen)
{
    char table[KVSHM_OP_TABLE_MAX + 1];
    const char *names[255];
    char *copy[255] = {0};
    kv_status st = KV_OK;
    for (uint32_t i = 0; i < op->nopen && st == KV_OK; i++) {   /* 1..255 (decode) */
        if (!(copy[i] = strndup((const char *)op->open[i].p, op->open[i].len))) st = KV_NOMEM;
        names[i] = copy[i];
    }
    if (st == KV_OK)
        st = kv_text_open(ws->db_abs, table_name(op, table), names, op->nopen, (kv_text **)h,
                          err, errlen);
    for (uint32_t i = 0; i < op->nopen; i++) free(copy[i]);
    return st;
}

static kv_status open_vector(wr_state *ws, const kvshm_op *op, void **h, char *err,
                             size_t errlen)
{
    char table[KVSHM_OP_TABLE_MAX + 1];
    int64_t dims = kvshm_op_i64(&op->open[0], NULL), metric = kvshm_op_i64(&op->open[1], NULL),
            elem = kvshm_op_i64(&op->open[2], NULL);
    if (dims < 1 || metric < KV_VECTOR_COSINE || metric > KV_VECTOR_HAMMING ||
        elem < KV_VECTOR_F32 || elem > KV_VECTOR_BIT) {
        snprintf(err, errlen, "exec: bad vector parameters");
        return KV_INVALID;
    }
    return kv_vector_open(ws->db_abs, table_name(op, table), (size_t)dims,
                          (kv_vector_metric)metric, (kv_vector_elem)elem, (kv_vector **)h, err,
                          errlen);
}

/* The handle `op` runs on: kept, or opened now (the least recently used
 * one closed when all are taken). NULL with *st and err set on failure. */
static wr_handle *handle_get(wr_state *ws, const kvshm_op *op, kv_status *st, char *err,
                             size_t errlen)
{
    wr_exec *x = ws->exec;
    for (size_t i = 0; i < x->n; i++) {
        wr_handle *w = &x->hs[i];
        if (w->cls == op->cls && w->key_len == op->key_len && !memcmp(w->key, op->key, op->key_len)) {
            w->used = ++x->clock;
            return w;
        }
    }
    void *h = NULL;
    *st = class_of(op->cls)->open(ws, op, &h, err, errlen);
    if (*st != KV_OK) return NULL;
    wr_handle *w;
    if (x->n < WR_EXEC_HANDLES) {
        w = &x->hs[x->n++];
    } else {
        w = &x->hs[0];
        for (size_t i = 1; i < x->n; i++)
            if (x->hs[i].used < w->used) w = &x->hs[i];
        handle_close(w);
    }
    w->key = malloc(op->key_len);
    if (!w->key) {
        class_of(op->cls)->close(h);
        x->n -= w == &x->hs[x->n - 1] && x->n > 0;
        memset(w, 0, sizeof *w);
        *st = KV_NOMEM;
        snprintf(err, errlen, "exec: out of memory");
        return NULL;
    }
    memcpy(w->key, op->key, op->key_len);
    w->key_len = op->key_len;
    w->cls = op->cls;
    w->h = h;
    w->used = ++x->clock;
    return w;
}

static kv_status result(wr_exec *x, const void *p, size_t n)
{
    if (n > x->res_cap) {
        uint8_t *r = realloc(x->res, n);
        if (!r) return KV_NOMEM;
        x->res = r;
        x->res_cap = n;
    }
    memcpy(x->res, p, n);
    x->res_len = n;
    return KV_OK;
}

static kv_status run_text(wr_exec *x, void *h, const kvshm_op *op)
{
    kv_text *t = h;
    const kvshm_op_field *a = op->args;
    const char *texts[255];
    size_t lens[255];
    int64_t id = 0;
    int removed = 0;
    kv_status st;
    switch (op->op) {
    case KVSHM_OP_INSERT:   /* value, texts */
        for (uint32_t i = 0; i < op->nopen; i++) {
            texts[i] = (const char *)a[1 + i].p;
            lens[i] = a[1 + i].len;
        }
        st = kv_text_insert(t, texts, lens, a[0].p, a[0].len, &id);
        return st == KV_OK ? result(x, &id, 8) : st;
    case KVSHM_OP_UPDATE:   /* id, value|absent, [texts] */
        for (uint32_t i = 0; i + 2 < op->nargs; i++) {
            texts[i] = (const char *)a[2 + i].p;
            lens[i] = a[2 + i].len;
        }
        /* an absent value is NULL; a present empty one must not be */
        return kv_text_update(t, kvshm_op_i64(&a[0], NULL), op->nargs > 2 ? texts : NULL, lens,
                              a[1].present ? (a[1].p ? (const void *)a[1].p : "") : NULL,
                              a[1].len);
    case KVSHM_OP_DELETE:
        st = kv_text_delete(t, kvshm_op_i64(&a[0], NULL), &removed);
        if (st != KV_OK) return st;
        uint8_t r = (uint8_t)removed;
        return result(x, &r, 1);
    default:   /* KVSHM_OP_CLEAR (kvshm_op_decode) */
        return kv_text_clear(t);
    }
}

static kv_status run_vector(wr_exec *x, void *h, const kvshm_op *op)
{
    kv_vector *v = h;
    const kvshm_op_field *a = op->args;
    int64_t id = 0;
    int removed = 0;
    kv_status st;
    switch (op->op) {
    case KVSHM_OP_INSERT:   /* vector, value */
        st = kv_vector_insert(v, a[0].p, a[0].len, a[1].p, a[1].len, &id);
        return st == KV_OK ? result(x, &id, 8) : st;
    case KVSHM_OP_INSERT_MANY: {   /* n, vectors, [value lengths, values] */
        size_t n = (size_t)kvshm_op_i64(&a[0], NULL);
        const void **vals = NULL;
        size_t *vlens = NULL;
        int64_t *ids = malloc((n ? n : 1) * sizeof *ids);
        st = ids ? KV_OK : KV_NOMEM;
        if (st == KV_OK && op->nargs == 4) {
            vals = malloc((n ? n : 1) * sizeof *vals);
            vlens = malloc((n ? n : 1) * sizeof *vlens);
            if (!vals || !vlens) st = KV_NOMEM;
            const uint8_t *p = a[3].p;
            for (size_t i = 0; st == KV_OK && i < n; i++) {   /* sums checked by decode */
                int64_t l;
                memcpy(&l, a[2].p + i * 8, 8);
                vals[i] = p ? (const void *)p : "";
                vlens[i] = (size_t)l;
                if (p) p += l;
            }
        }
        if (st == KV_OK) st = kv_vector_insert_many(v, n, a[1].p ? (const void *)a[1].p : "",
                                                    a[1].len, vals, vlens, ids);
        if (st == KV_OK) st = result(x, ids, n * sizeof *ids);
        free(ids);
        free(vals);
        free(vlens);
        return st;
    }
    case KVSHM_OP_UPDATE:   /* id, vector|absent, value|absent */
        return kv_vector_update(v, kvshm_op_i64(&a[0], NULL),
                                a[1].present ? (a[1].p ? (const void *)a[1].p : "") : NULL,
                                a[1].len,
                                a[2].present ? (a[2].p ? (const void *)a[2].p : "") : NULL,
                                a[2].len);
    default:   /* KVSHM_OP_DELETE (kvshm_op_decode) */
        st = kv_vector_delete(v, kvshm_op_i64(&a[0], NULL), &removed);
        if (st != KV_OK) return st;
        uint8_t r = (uint8_t)removed;
        return result(x, &r, 1);
    }
}

static kv_status open_column(wr_state *ws, const kvshm_op *op, void **h, char *err,
                             size_t errlen)
{
    return kv_colvault_open(ws->db_abs, kvshm_op_i64(&op->open[0], NULL),
                            kvshm_op_i64(&op->open[1], NULL), (kv_colvault **)h, err, errlen);
}

/* A field as a NUL-terminated string (no NUL inside: kvshm_op_decode);
 * malloc'd, NULL when out of memory. */
static char *field_str(const kvshm_op_field *f)
{
    return strndup(f->p ? (const char *)f->p : "", f->len);
}

/* The column an operation names by col_id and idx_id (0: fixed). */
static kv_status column_of(kv_colvault *cv, const kvshm_op_field *a, kv_col **col)
{
    int64_t id = kvshm_op_i64(&a[0], NULL), idx = kvshm_op_i64(&a[1], NULL);
    return idx ? kv_col_open_var(cv, id, idx, col) : kv_col_open_fixed(cv, id, col);
}

/* Elements of an APPEND or WRITE: `data`, and for a pair the lengths in
 * `lens` (i64 each, checked by decode) as *lv (malloc'd); for a fixed
 * column *n from the element size (KV_INVALID when it does not divide). */
static kv_status column_elems(kv_col *col, const kvshm_op_field *data,
                              const kvshm_op_field *lens, size_t **lv, size_t *n)
{
    *lv = NULL;
    if (!kv_col_is_var(col)) {
        size_t e = (size_t)kv_col_elem_size(col);
        *n = data->len / e;
        return data->len % e ? KV_INVALID : KV_OK;
    }
    *n = lens->len / 8;
    if (!(*lv = malloc((*n ? *n : 1) * sizeof **lv))) return KV_NOMEM;
    for (size_t i = 0; i < *n; i++) {
        int64_t l;
        memcpy(&l, lens->p + i * 8, 8);
        (*lv)[i] = (size_t)l;
    }
    return KV_OK;
}

static kv_status run_column(wr_exec *x, void *h, const kvshm_op *op)
{
    kv_colvault *cv = h;
    const kvshm_op_field *a = op->args;
    kv_status st;
    if (op->op == KVSHM_OP_COL_CREATE || op->op == KVSHM_OP_COL_DROP) {
        char *name = field_str(&a[0]), *dtype = op->op == KVSHM_OP_COL_CREATE ? field_str(&a[1]) : NULL;
        int deleted = 0;
        if (!name || (op->op == KVSHM_OP_COL_CREATE && !dtype)) st = KV_NOMEM;
        else if (op->op == KVSHM_OP_COL_DROP) st = kv_col_delete(cv, name, &deleted);
        else if (kvshm_op_i64(&a[2], NULL) > 0)
            st = kv_col_create(cv, name, dtype, kvshm_op_i64(&a[2], NULL), NULL);
        else st = kv_col_create_var(cv, name, dtype, NULL, NULL);
        free(name);
        free(dtype);
        uint8_t r = (uint8_t)deleted;
        return st == KV_OK && op->op == KVSHM_OP_COL_DROP ? result(x, &r, 1) : st;
    }
    kv_col *col = NULL;
    if ((st = column_of(cv, a, &col)) != KV_OK) return st;
    const void *data = NULL;
    size_t *lens = NULL, n = 0;
    switch (op->op) {
    case KVSHM_OP_APPEND:   /* col_id, idx_id, elements[, lengths] */
        if ((st = column_elems(col, &a[2], &a[3], &lens, &n)) == KV_OK)
            st = kv_col_append(col, a[2].p ? (const void *)a[2].p : "", lens, n);
        break;
    case KVSHM_OP_WRITE:    /* col_id, idx_id, start, elements[, lengths] */
        if ((st = column_elems(col, &a[3], &a[4], &lens, &n)) == KV_OK)
            st = kv_col_write(col, kvshm_op_i64(&a[2], NULL), a[3].p ? (const void *)a[3].p : "",
                              lens, n);
        break;
    case KVSHM_OP_INSERT:   /* col_id, idx_id, index, element */
        data = a[3].p;
        if (kv_col_is_var(col)) st = KV_UNSUPPORTED;
        else if (a[3].len != (size_t)kv_col_elem_size(col)) st = KV_INVALID;
        else st = kv_col_insert(col, kvshm_op_i64(&a[2], NULL), data);
        break;
    case KVSHM_OP_DELETE:
        st = kv_col_delete_at(col, kvshm_op_i64(&a[2], NULL));
        break;
    default:                /* KVSHM_OP_CLEAR (kvshm_op_decode) */
        st = kv_col_clear(col);
        break;
    }
    free(lens);
    kv_col_close(col);   /* no cache: nothing to flush */
    return st;
}

static void close_text(void *h) { kv_text_close(h); }
static void close_vector(void *h) { kv_vector_close(h); }
static void close_column(void *h) { kv_colvault_close(h); }
static const char *errmsg_text(void *h) { return kv_text_errmsg(h); }
static const char *errmsg_vector(void *h) { return kv_vector_errmsg(h); }
static const char *errmsg_column(void *h) { return kv_colvault_errmsg(h); }

static const wr_class exec_classes[] = {
    [KVSHM_OPC_TEXT] = {open_text, close_text, run_text, errmsg_text},
    [KVSHM_OPC_VECTOR] = {open_vector, close_vector, run_vector, errmsg_vector},
    [KVSHM_OPC_COLUMN] = {open_column, close_column, run_column, errmsg_column},
};

/* Every class kvshm_op_decode accepts has an entry. */
static const wr_class *class_of(unsigned cls)
{
    KV_ASSERT_INTERNAL(cls < sizeof exec_classes / sizeof exec_classes[0] && exec_classes[cls].run);
    return &exec_classes[cls];
}

/* Read the operation a client passed in a memfd: `len` bytes from offset
 * 0 of a regular file (a pipe or socket could block the loop), into x->in
 * (kept for the next one up to WR_EXEC_KEEP_IN bytes: an extend of a
 * column every call would otherwise fault in fresh pages each time). */
static uint8_t *read_memfd(wr_exec *x, int fd, uint64_t len, const char **why)
{
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size < len) {
        *why = "exec: the descriptor must be a memfd holding the operation";
        return NULL;
    }
    if (len > x->in_cap) {
        free(x->in);
        x->in_cap = 0;
        if (!(x->in = malloc(len))) {
            *why = "exec: out of memory";
            return NULL;
        }
        x->in_cap = len;
    }
    uint8_t *buf = x->in;
    for (uint64_t off = 0; off < len;) {
        ssize_t n = pread(fd, buf + off, len - off, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            *why = "exec: short read of the operation";
            return NULL;
        }
        off += (uint64_t)n;
    }
    return buf;
}

/* Write the result into the client's memfd (it did not fit a packet). */
static int write_memfd(int fd, const uint8_t *p, size_t n)
{
    if (ftruncate(fd, (off_t)n) != 0) return -1;
    for (size_t off = 0; off < n;) {
        ssize_t w = pwrite(fd, p + off, n - off, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        off += (size_t)w;
    }
    return 0;
}

void wr_exec_request(wr_state *ws, int sock, const struct kvshm_msg *m, const uint8_t *pl,
                     int fd)
{
    char err[1024] = "";
    const char *why = NULL;
    const uint8_t *buf = pl;
    size_t len = m->m_len;
    kv_status st = KV_OK;
    ws->stat_execs++;
    if (!ws->exec && !(ws->exec = calloc(1, sizeof *ws->exec))) {
        why = "exec: out of memory";
        st = KV_NOMEM;
    }
    if (st == KV_OK && !m->m_len) {   /* in the memfd (kvshm_msg_parse: 1..max bytes) */
        if (fd < 0) why = "exec: missing descriptor";
        else if ((buf = read_memfd(ws->exec, fd, m->m_arg, &why))) len = (size_t)m->m_arg;
        if (!buf) st = KV_INVALID;
    }
    wr_exec *x = ws->exec;
    if (st == KV_OK && kvshm_op_decode(buf, len, &x->op, &why) != 0) st = KV_INVALID;
    /* the KV pipeline's open transaction holds SQLite's write lock */
    if (st == KV_OK && ws->cm_open && wr_commit_finish(ws) != 0) {
        st = KV_BUSY;
        why = "exec: the writer could not finish its commit";
    }
    wr_handle *w = NULL;
    if (st == KV_OK && (w = handle_get(ws, &x->op, &st, err, sizeof err))) {
        /* a busy file fails at BEGIN IMMEDIATE, before any change: run again */
        uint64_t deadline = wr_now_ms() + WR_EXEC_BUSY_MS;
        do {
            x->res_len = 0;
            st = class_of(x->op.cls)->run(x, w->h, &x->op);
        } while (st == KV_BUSY && wr_now_ms() < deadline && !usleep(WR_EXEC_BUSY_POLL_US));
        if (st != KV_OK)
            snprintf(err, sizeof err, "%s", class_of(x->op.cls)->errmsg(w->h));
    }
    if (x && x->in_cap > WR_EXEC_KEEP_IN) {
        free(x->in);
        x->in = NULL;
        x->in_cap = 0;
    }
    if (why) snprintf(err, sizeof err, "%s", why);
    if (st != KV_OK) {
        ws->stat_exec_failed++;
        wr_reply(sock, m->m_type, st, 0, err, strlen(err));
    } else if (sizeof *m + x->res_len <= KVSHM_MSG_MAX) {
        wr_reply(sock, m->m_type, KV_OK, 0, x->res, x->res_len);
    } else if (fd >= 0 && write_memfd(fd, x->res, x->res_len) == 0) {
        wr_reply(sock, m->m_type, KV_OK, x->res_len, NULL, 0);
    } else {
        /* committed, but the result cannot travel: say so */
        snprintf(err, sizeof err, "exec: result of %zu bytes does not fit a reply", x->res_len);
        wr_reply(sock, m->m_type, KV_IO, 0, err, strlen(err));
    }
}
