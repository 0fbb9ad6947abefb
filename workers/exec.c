/*
 * exec.c -- the writer's executor of table operations (KVSHM_MSG_EXEC,
 * kvshm/ops.h): every write a TextVault, VectorKVault, ColumnVault or a
 * KVault on a table other than the served one makes to a served file is
 * applied here, with the engine call the embedded binding makes
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
 *
 * Exactly once (kvault/oprec.h): every operation carries its client's token
 * and number. Each runs inside a transaction of its handle's connection
 * (alone, or in a group), and the client's last one that succeeds there
 * writes its record (number, status, result) in that same transaction. An operation whose number the
 * client's record already holds (a re-send after its writer died between
 * commit and reply) gets the recorded reply and is not applied again; one
 * below it (a pipelined insert sent again) an empty success.
 *
 * Pipelined text and vector inserts (docs/shared-mode.md, "Pipelined
 * inserts") carry their id, taken from a block of ids LEASE granted the
 * client (kv_lease_grant, kv_vector_lease); an insert without an id takes
 * one above every block (kv_text_insert_leased, kv_lease_take). The
 * executor keeps the last number per token it saw (oncemap.c) and reads
 * the record only at the first sight of a token. Records go when their
 * client closes its handle (EXEC_END) or, stale, at the executor's first
 * use and every WR_EXEC_SWEEP_MS (kv_oprec_expire).
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
#include "kvault/oprec.h"
#include "kvault/text.h"
#include "kvault/vector.h"
#include "kvshm/ops.h"
#include "writer.h"

/* Engine handles kept open at once. */
#define WR_EXEC_HANDLES 64
/* Most EXEC requests gathered before they are applied (one socket poll
 * reads at most one request per readable client, 32 clients a round). */
#define WR_EXEC_BATCH 64
/* How long an operation waits for SQLite's write lock when another
 * connection holds it (a process opening a store creates its tables; an
 * embedded writer with shared=False), polling every WR_EXEC_BUSY_POLL_US,
 * before the client gets KV_BUSY (which its busy policy retries). Bounded:
 * the loop serves everyone else meanwhile. */
#define WR_EXEC_BUSY_MS 200
#define WR_EXEC_BUSY_POLL_US 1000
/* WAL frames from which a column handle's commit waits for a checkpoint
 * (column_checkpoint): 4 x SQLite's wal_autocheckpoint, 128 MiB of 32 KiB
 * pages. */
#define WR_EXEC_WAL_WAIT_FRAMES 4000
/* Largest memfd buffer kept between operations (bytes). */
#define WR_EXEC_KEEP_IN ((size_t)64 << 20)
/* Stale operation records are deleted at the executor's first use and then
 * this often (ms), with the tokens not seen for KV_OPREC_MAX_AGE_MS. */
#define WR_EXEC_SWEEP_MS (10u * 60 * 1000)
/* Most EXEC_END tokens kept for the next flush (more wait for a sweep). */
#define WR_EXEC_ENDS 1024

typedef struct wr_handle {
    uint8_t cls;
    uint8_t *key;            /* table + open parameters, as encoded */
    size_t key_len;
    void *h;                 /* kv_text *, kv_vector *, kv_colvault * or kv_db * */
    uint64_t used;           /* last use (wr_exec's counter) */
} wr_handle;

/* One EXEC request waiting for its group's commit (wr_exec_flush). */
typedef struct wr_pending {
    int sock;                /* the client's socket: the reply goes there */
    uint32_t type;
    struct kvshm_exec_id id; /* the client's token and the operation's number */
    size_t dup;              /* 1 + index of a kept request with the same id, or 0 */
    int replayed;            /* found applied: the reply is its record's */
    int applied;             /* ran and recorded in its group's transaction */
    int fd;                  /* the client's memfd (owned), or -1 */
    uint8_t *buf;            /* the encoded operation (owned) */
    size_t len;
    uint8_t cls;             /* decoded: class and handle key (into buf) */
    const uint8_t *key;
    size_t key_len;
    int ran;
    kv_status st;            /* KV_OK, or the failure err describes */
    char err[1024];
    uint8_t *res;            /* the result (owned) */
    size_t res_len;
} wr_pending;

struct wr_exec {
    wr_pending pend[WR_EXEC_BATCH];
    size_t npend;
    wr_handle hs[WR_EXEC_HANDLES];
    size_t n;
    uint64_t clock;
    kvshm_op op;             /* the decoded operation (large: kept here) */
    uint8_t *in;             /* an operation read from a memfd (read_memfd) */
    size_t in_cap;
    int in_busy;             /* a pending operation holds x->in */
    uint8_t *res;            /* the result of the current operation */
    char msg[256];           /* its error message when not the handle's own ("" else) */
    size_t res_len, res_cap;
    wr_oncemap *once;        /* token -> last operation applied (exactly once) */
    uint8_t (*ends)[KVSHM_EXEC_TOKEN];   /* tokens of closed clients (EXEC_END) */
    size_t nends;
    uint64_t swept_ms;       /* last sweep of stale records (0: none yet) */
};

/* How the executor serves one class (exec_classes below). */
typedef struct wr_class {
    kv_status (*open)(wr_state *ws, const kvshm_op *op, void **h, char *err, size_t errlen);
    void (*close)(void *h);
    kv_status (*run)(wr_exec *x, void *h, const kvshm_op *op);
    const char *(*errmsg)(void *h);
    /* Group commit (run_group): open the handle's transaction, in which
     * each run is a savepoint, and end it. NULL: the class runs each
     * operation in a transaction of its own. */
    kv_status (*tx_begin)(void *h);
    kv_status (*tx_end)(void *h, int commit);
    /* The connection of a handle, for its operation records (kvault/oprec.h). */
    void (*conn)(void *h, kv_conn *c);
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
    wr_exec_flush(ws);
    for (size_t i = 0; i < x->n; i++) handle_close(&x->hs[i]);
    wr_oncemap_free(x->once);
    free(x->ends);
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
    char table[KVSHM_OP_TABLE_MAX + 1];
    kv_conn c;
    switch (op->op) {
    case KVSHM_OP_INSERT:   /* value, texts, [id] */
        for (uint32_t i = 0; i < op->nopen; i++) {
            texts[i] = (const char *)a[1 + i].p;
            lens[i] = a[1 + i].len;
        }
        if (op->nargs > 1 + op->nopen)   /* the id from the client's block */
            st = kv_text_insert_at(t, kvshm_op_i64(&a[op->nargs - 1], NULL), texts, lens, a[0].p,
                                   a[0].len, &id);
        else   /* never one of a block a client holds */
            st = kv_text_insert_leased(t, texts, lens, a[0].p, a[0].len, &id);
        return st == KV_OK ? result(x, &id, 8) : st;
    case KVSHM_OP_LEASE:   /* n: a block above every id in use or leased */
        kv_text_conn(t, &c);
        if ((st = kv_text_next_id(t, &id)) == KV_OK)
            st = kv_lease_grant(&c, table_name(op, table), id, kvshm_op_i64(&a[0], NULL), &id);
        return st == KV_OK ? result(x, &id, 8) : st;
    case KVSHM_OP_LEASE_END:   /* next, end */
        kv_text_conn(t, &c);
        return kv_lease_return(&c, table_name(op, table), kvshm_op_i64(&a[0], NULL),
                               kvshm_op_i64(&a[1], NULL));
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
    case KVSHM_OP_INSERT:   /* vector, value, [id] */
        if (op->nargs == 3) {   /* the id from the client's block */
            id = kvshm_op_i64(&a[2], NULL);
            st = kv_vector_insert_at(v, id, a[0].p, a[0].len, a[1].p, a[1].len);
        } else {   /* never one of a block a client holds */
            st = kv_vector_insert(v, a[0].p, a[0].len, a[1].p, a[1].len, &id);
        }
        return st == KV_OK ? result(x, &id, 8) : st;
    case KVSHM_OP_LEASE:   /* n: a block above every id in use or leased */
        st = kv_vector_lease(v, kvshm_op_i64(&a[0], NULL), &id);
        return st == KV_OK ? result(x, &id, 8) : st;
    case KVSHM_OP_LEASE_END:   /* next, end */
        return kv_vector_lease_return(v, kvshm_op_i64(&a[0], NULL), kvshm_op_i64(&a[1], NULL));
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

/* Checkpoints after the commits of a column handle
 * (kv_colvault_set_checkpointer): the checkpointer thread (ckpt.c) runs
 * them, so a reply does not wait for the copy of the WAL into the database
 * file and its fsyncs, which an embedded ColumnVault's commit runs in
 * place. From WR_EXEC_WAL_WAIT_FRAMES frames on, the commit waits for one,
 * which bounds the WAL while appends come faster than the checkpoints
 * copy them. */
static void column_checkpoint(void *ctx, int wal_frames)
{
    wr_ckpt *c = ctx;
    if (wal_frames >= WR_EXEC_WAL_WAIT_FRAMES)
        wr_ckpt_wait(c);
    else
        wr_ckpt_kick(c);
}

static kv_status open_column(wr_state *ws, const kvshm_op *op, void **h, char *err,
                             size_t errlen)
{
    kv_status st = kv_colvault_open(ws->db_abs, kvshm_op_i64(&op->open[0], NULL),
                                    kvshm_op_i64(&op->open[1], NULL), (kv_colvault **)h, err,
                                    errlen);
    if (st == KV_OK && ws->ckpt) kv_colvault_set_checkpointer(*h, column_checkpoint, ws->ckpt);
    return st;
}

/* A field as a NUL-terminated string (no NUL inside: kvshm_op_decode);
 * malloc'd, NULL when out of memory. */
static char *field_str(const kvshm_op_field *f)
{
    return strndup(f->p ? (const char *)f->p : "", f->len);
}

/* The column an operation names by col_id and idx_id (0: fixed). */
static kv_status column_of(wr_exec *x, kv_colvault *cv, const kvshm_op *op, kv_col **col)
{
    const kvshm_op_field *a = op->args;
    int64_t id = kvshm_op_i64(&a[0], NULL), idx = kvshm_op_i64(&a[1], NULL);
    /* the name the client's handle opened (its last argument) must still
     * name row col_id: a column deleted meanwhile, whose id another column
     * took, is gone for that handle, as an embedded handle finds
     * (kvi_fx_length) */
    char *pname = field_str(&a[op->nargs - 1]);
    kv_col_info info;
    kv_status st = pname ? kv_col_info_get(cv, pname, &info) : KV_NOMEM;
    free(pname);
    if (st == KV_OK && info.ci_col_id != id) st = KV_NOTFOUND;
    if (st == KV_NOTFOUND) {
        snprintf(x->msg, sizeof x->msg, "column %lld no longer exists", (long long)id);
        return KV_NOTFOUND;
    }
    if (st != KV_OK) return st;
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
    if ((st = column_of(x, cv, op, &col)) != KV_OK) return st;
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

/* A KVault table other than the served one. The handle has no write-back
 * cache and no read cache: each group commits, and reads are the clients'. */
static kv_status open_kv(wr_state *ws, const kvshm_op *op, void **h, char *err, size_t errlen)
{
    char table[KVSHM_OP_TABLE_MAX + 1];
    table_name(op, table);
    if (!strcmp(table, ws->o.table)) {
        /* an EXEC write would bypass the memtables: readers would go stale */
        snprintf(err, errlen,
                 "exec: table %s is served through the shared segment: attach to write it",
                 table);
        return KV_INVALID;
    }
    kv_open_opts o;
    kv_open_opts_default(&o);
    o.table = table;
    o.chunk_size = (size_t)kvshm_op_i64(&op->open[0], NULL);   /* > 0 (decode) */
    o.read_cache_bytes = 0;
    o.busy_timeout_ms = 0;   /* pend_run and group_begin poll for WR_EXEC_BUSY_MS */
    return kv_db_open(ws->db_abs, &o, (kv_db **)h, err, errlen);
}

/* The n (key or value) spans of a lengths field and its bytes (checked by
 * decode) into ptr[]/len[]. */
static void kv_spans(const kvshm_op_field *lens, const kvshm_op_field *data, size_t n,
                     const void **ptr, size_t *len)
{
    const uint8_t *p = data->p;
    for (size_t i = 0; i < n; i++) {
        int64_t l;
        memcpy(&l, lens->p + i * 8, 8);
        ptr[i] = p ? (const void *)p : "";
        len[i] = (size_t)l;
        if (p) p += l;
    }
}

static kv_status run_kv(wr_exec *x, void *h, const kvshm_op *op)
{
    kv_db *db = h;
    const kvshm_op_field *a = op->args;
    kv_status st;
    switch (op->op) {
    case KVSHM_OP_PUT:   /* key, value */
        return kv_put(db, a[0].p ? (const void *)a[0].p : "", a[0].len,
                      a[1].p ? (const void *)a[1].p : "", a[1].len);
    case KVSHM_OP_DELETE: {   /* key */
        int removed = 0;
        st = kv_delete(db, a[0].p ? (const void *)a[0].p : "", a[0].len, &removed);
        uint8_t r = (uint8_t)removed;
        return st == KV_OK ? result(x, &r, 1) : st;
    }
    case KVSHM_OP_FEATURE: {   /* name (no NUL, decode) */
        char *name = field_str(&a[0]);
        st = name ? kv_record_feature(db, name) : KV_NOMEM;
        free(name);
        return st;
    }
    default:
        break;
    }
    /* PUT_MANY: key lengths, keys, value lengths, values; DEL_MANY: key
     * lengths, keys */
    size_t n = a[0].len / 8;
    const void **ptr = malloc((n ? n : 1) * 2 * sizeof *ptr);
    size_t *len = malloc((n ? n : 1) * 2 * sizeof *len);
    kv_item *items = op->op == KVSHM_OP_PUT_MANY ? malloc((n ? n : 1) * sizeof *items) : NULL;
    if (!ptr || !len || (op->op == KVSHM_OP_PUT_MANY && !items)) {
        st = KV_NOMEM;
        snprintf(x->msg, sizeof x->msg, "exec: out of memory");
    } else if (op->op == KVSHM_OP_PUT_MANY) {
        kv_spans(&a[0], &a[1], n, ptr, len);
        kv_spans(&a[2], &a[3], n, ptr + n, len + n);
        for (size_t i = 0; i < n; i++)
            items[i] = (kv_item){ptr[i], len[i], ptr[n + i], len[n + i]};
        st = kv_put_many(db, items, n);
    } else {   /* KVSHM_OP_DEL_MANY (kvshm_op_decode) */
        size_t removed = 0;
        kv_spans(&a[0], &a[1], n, ptr, len);
        st = kv_delete_many(db, ptr, len, n, &removed);
        int64_t r = (int64_t)removed;
        if (st == KV_OK) st = result(x, &r, 8);
    }
    free(ptr);
    free(len);
    free(items);
    return st;
}

static void close_kv(void *h) { kv_db_close(h); }
static const char *errmsg_kv(void *h) { return kv_db_errmsg(h); }
static kv_status tx_begin_kv(void *h) { return kv_db_tx_begin(h); }
static kv_status tx_end_kv(void *h, int commit) { return kv_db_tx_end(h, commit); }

static void close_text(void *h) { kv_text_close(h); }
static void close_vector(void *h) { kv_vector_close(h); }
static void close_column(void *h) { kv_colvault_close(h); }
static const char *errmsg_text(void *h) { return kv_text_errmsg(h); }
static const char *errmsg_vector(void *h) { return kv_vector_errmsg(h); }
static const char *errmsg_column(void *h) { return kv_colvault_errmsg(h); }

static kv_status tx_begin_text(void *h) { return kv_text_tx_begin(h); }
static kv_status tx_end_text(void *h, int commit) { return kv_text_tx_end(h, commit); }
static kv_status tx_begin_vector(void *h) { return kv_vector_tx_begin(h); }
static kv_status tx_end_vector(void *h, int commit) { return kv_vector_tx_end(h, commit); }
static kv_status tx_begin_column(void *h) { return kv_colvault_tx_begin(h); }
static kv_status tx_end_column(void *h, int commit) { return kv_colvault_tx_end(h, commit); }

/* The connection of each class's handle. */
static void conn_text(void *h, kv_conn *c) { kv_text_conn(h, c); }
static void conn_vector(void *h, kv_conn *c) { kv_vector_conn(h, c); }
static void conn_column(void *h, kv_conn *c) { kv_colvault_conn(h, c); }
static void conn_kv(void *h, kv_conn *c) { kv_db_conn(h, c); }

static const wr_class exec_classes[] = {
    [KVSHM_OPC_TEXT] = {open_text, close_text, run_text, errmsg_text, tx_begin_text,
                        tx_end_text, conn_text},
    [KVSHM_OPC_VECTOR] = {open_vector, close_vector, run_vector, errmsg_vector,
                          tx_begin_vector, tx_end_vector, conn_vector},
    [KVSHM_OPC_COLUMN] = {open_column, close_column, run_column, errmsg_column,
                          tx_begin_column, tx_end_column, conn_column},
    [KVSHM_OPC_KV] = {open_kv, close_kv, run_kv, errmsg_kv, tx_begin_kv, tx_end_kv, conn_kv},
};

/* Every class kvshm_op_decode accepts has an entry. */
static const wr_class *class_of(unsigned cls)
{
    KV_ASSERT_INTERNAL(cls < sizeof exec_classes / sizeof exec_classes[0] && exec_classes[cls].run);
    return &exec_classes[cls];
}

/* Release an operation's buffer: x->in is kept (dropped when above
 * WR_EXEC_KEEP_IN bytes), any other is freed. */
static void release_in(wr_exec *x, uint8_t *buf)
{
    if (buf != x->in || !buf) {
        free(buf);
        return;
    }
    x->in_busy = 0;
    if (x->in_cap > WR_EXEC_KEEP_IN) {
        free(x->in);
        x->in = NULL;
        x->in_cap = 0;
    }
}

/* Read the operation a client passed in a memfd: `len` bytes from offset
 * 0 of a regular file (a pipe or socket could block the loop). Into x->in
 * when no pending operation holds it (kept for the next one up to
 * WR_EXEC_KEEP_IN bytes: an extend of a column every call would otherwise
 * fault in fresh pages each time), else into a buffer of its own; release
 * either with release_in. */
static uint8_t *read_memfd(wr_exec *x, int fd, uint64_t len, const char **why)
{
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size < len) {
        *why = "exec: the descriptor must be a memfd holding the operation";
        return NULL;
    }
    uint8_t *buf;
    if (!x->in_busy) {
        if (len > x->in_cap) {
            free(x->in);
            x->in_cap = 0;
            if (!(x->in = malloc(len))) {
                *why = "exec: out of memory";
                return NULL;
            }
            x->in_cap = len;
        }
        buf = x->in;
        x->in_busy = 1;
    } else if (!(buf = malloc(len))) {
        *why = "exec: out of memory";
        return NULL;
    }
    for (uint64_t off = 0; off < len;) {
        ssize_t n = pread(fd, buf + off, len - off, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            *why = "exec: short read of the operation";
            release_in(x, buf);
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

/* Fail pending operation p with status st and message msg. */
static void pend_fail(wr_pending *p, kv_status st, const char *msg)
{
    p->st = st;
    snprintf(p->err, sizeof p->err, "%s", msg);
}

/* Pending operation p's reply (after its transaction committed) into *r:
 * its payload stays in p until pend_release. */
static void pend_reply(wr_state *ws, wr_pending *p, wr_reply_msg *r)
{
    *r = (wr_reply_msg){.sock = p->sock, .type = p->type, .status = p->st};
    if (p->st != KV_OK) {
        ws->stat_exec_failed++;
        r->payload = p->err;
        r->len = strlen(p->err);
    } else if (sizeof(struct kvshm_msg) + p->res_len <= KVSHM_MSG_MAX) {
        r->payload = p->res;
        r->len = p->res_len;
    } else if (p->fd >= 0 && write_memfd(p->fd, p->res, p->res_len) == 0) {
        r->arg = p->res_len;
    } else {
        /* committed, but the result cannot travel: say so */
        snprintf(p->err, sizeof p->err, "exec: result of %zu bytes does not fit a reply",
                 p->res_len);
        r->status = KV_IO;
        r->payload = p->err;
        r->len = strlen(p->err);
    }
}

/* Release what pending operation p holds (its reply sent). */
static void pend_release(wr_state *ws, wr_pending *p)
{
    if (p->fd >= 0) close(p->fd);
    release_in(ws->exec, p->buf);
    free(p->res);
    memset(p, 0, sizeof *p);
    p->fd = -1;
}

/* Run pending operation p (decoded into x->op) on handle w; its status,
 * message and result are kept in p. */
static void pend_run(wr_exec *x, wr_handle *w, wr_pending *p, int busy_wait)
{
    kv_status st;
    uint64_t deadline = wr_now_ms() + WR_EXEC_BUSY_MS;
    /* alone, a busy file fails at BEGIN IMMEDIATE, before any change: run
     * again (in a group, the group's transaction holds the lock) */
    do {
        x->res_len = 0;
        x->msg[0] = 0;
        st = class_of(x->op.cls)->run(x, w->h, &x->op);
    } while (busy_wait && st == KV_BUSY && wr_now_ms() < deadline &&
             !usleep(WR_EXEC_BUSY_POLL_US));
    if (st != KV_OK) {
        pend_fail(p, st, x->msg[0] ? x->msg : class_of(x->op.cls)->errmsg(w->h));
        return;
    }
    p->st = KV_OK;
    if (x->res_len && !(p->res = malloc(x->res_len))) {
        pend_fail(p, KV_NOMEM, "exec: out of memory");
        return;
    }
    if (x->res_len) memcpy(p->res, x->res, x->res_len);
    p->res_len = x->res_len;
}

/* Open (or end) the group transaction of handle w. */
static kv_status group_begin(wr_handle *w)
{
    kv_status st;
    uint64_t deadline = wr_now_ms() + WR_EXEC_BUSY_MS;
    do {
        st = class_of(w->cls)->tx_begin(w->h);
    } while (st == KV_BUSY && wr_now_ms() < deadline && !usleep(WR_EXEC_BUSY_POLL_US));
    return st;
}

static kv_status group_end(wr_handle *w, int commit)
{
    return class_of(w->cls)->tx_end(w->h, commit);
}

static const char *handle_errmsg(wr_handle *w)
{
    return class_of(w->cls)->errmsg(w->h);
}

/* The connection of handle w, for its operation records. */
static void handle_conn(const wr_handle *w, kv_conn *c)
{
    class_of(w->cls)->conn(w->h, c);
}

/* Delete the records of the clients that closed (EXEC_END), in the
 * transaction open on w's connection. Kept for the next flush on failure. */
static void drop_ends(wr_exec *x, wr_handle *w)
{
    kv_conn c;
    handle_conn(w, &c);
    size_t k = 0;
    while (k < x->nends && kv_oprec_drop(&c, x->ends[k]) == KV_OK) {
        wr_oncemap_del(x->once, x->ends[k]);
        k++;
    }
    memmove(x->ends, x->ends + k, (x->nends - k) * sizeof *x->ends);
    x->nends -= k;
}

/* Delete stale records (and forget their tokens) when a sweep is due: at
 * the first use of the executor, then every WR_EXEC_SWEEP_MS. Outside any
 * transaction of w. */
static void sweep(wr_exec *x, wr_handle *w)
{
    uint64_t now = wr_now_ms();
    if (x->swept_ms && now - x->swept_ms < WR_EXEC_SWEEP_MS) return;
    x->swept_ms = now;
    kv_conn c;
    int64_t n = 0;
    handle_conn(w, &c);
    if (kv_oprec_expire(&c, KV_OPREC_MAX_AGE_MS, &n) != KV_OK)
        wr_log("exec: stale operation records not deleted: %s", handle_errmsg(w));
    else if (n)
        wr_log("exec: %lld stale operation records deleted", (long long)n);
    if (now > (uint64_t)KV_OPREC_MAX_AGE_MS)
        wr_oncemap_expire(x->once, now - (uint64_t)KV_OPREC_MAX_AGE_MS);
}

/* Whether pending operation p must run (1), or was applied already (0:
 * p holds the recorded reply, or the failure of the look-up). Reads the
 * client's record through w's connection (inside its transaction) at the
 * first sight of its token, and for a re-send of its last operation. */
static int once_check(wr_state *ws, wr_handle *w, wr_pending *p)
{
    wr_exec *x = ws->exec;
    wr_once *e = wr_oncemap_find(x->once, p->id.x_token);
    if (e && p->id.x_seq > e->seq) return 1;   /* the common case: a new operation */
    kv_conn c;
    kv_oprec r;
    int found;
    handle_conn(w, &c);
    kv_status st = kv_oprec_get(&c, p->id.x_token, &r, &found);
    if (st != KV_OK) {
        pend_fail(p, st, handle_errmsg(w));
        return 0;
    }
    if (!found && !e) return 1;   /* first sight, no record: nothing was applied */
    if (!e && (e = wr_oncemap_add(&x->once, p->id.x_token))) {   /* first sight */
        e->seq = r.seq;
        e->seen_ms = wr_now_ms();
    }
    if (found && r.seq == p->id.x_seq) {   /* applied: its recorded reply */
        p->replayed = 1;
        p->st = (kv_status)r.status;
        if (r.res_len && !(p->res = malloc(r.res_len))) {
            pend_fail(p, KV_NOMEM, "exec: out of memory");
        } else if (r.res_len) {
            memcpy(p->res, r.res, r.res_len);
            p->res_len = r.res_len;
        }
        kv_oprec_free(&r);
        ws->stat_exec_replayed++;
        return 0;
    }
    if (found && p->id.x_seq > r.seq) {
        kv_oprec_free(&r);
        return 1;
    }
    if (found) {
        /* older than the last one recorded: a pipelined client re-sends
         * every operation whose reply it did not get, and each one was
         * applied before that one (its result is not kept), or failed: the
         * record names the first that failed in its transaction */
        p->replayed = 1;
        p->st = KV_OK;
        if (r.fail_seq == p->id.x_seq)
            pend_fail(p, r.fail_status != KV_OK ? (kv_status)r.fail_status : KV_IO,
                      r.fail_msg ? r.fail_msg : "exec: the operation failed");
        kv_oprec_free(&r);
        ws->stat_exec_replayed++;
        return 0;
    }
    kv_oprec_free(&r);
    pend_fail(p, KV_INVALID, "exec: the operation number is not the client's next one");
    return 0;
}

/* The first member before members[k] of the same client (token) that ran
 * and failed, or NULL: the record of members[k] names it, so that its
 * failure is not taken for an applied operation if the writer dies before
 * its reply leaves. */
static const wr_pending *first_failed(const wr_exec *x, const size_t *members, size_t k)
{
    const wr_pending *p = &x->pend[members[k]];
    for (size_t j = 0; j < k; j++) {
        const wr_pending *q = &x->pend[members[j]];
        if (q->ran && !q->applied && !q->replayed && !q->dup && q->st != KV_OK &&
            !memcmp(q->id.x_token, p->id.x_token, KVSHM_EXEC_TOKEN))
            return q;
    }
    return NULL;
}

/* 1 when a member after members[k] applied an operation of the same
 * client (token). */
static int later_applied(const wr_exec *x, const size_t *members, size_t k, size_t n)
{
    const wr_pending *p = &x->pend[members[k]];
    for (size_t j = k + 1; j < n; j++) {
        const wr_pending *q = &x->pend[members[j]];
        if (q->applied && !memcmp(q->id.x_token, p->id.x_token, KVSHM_EXEC_TOKEN)) return 1;
    }
    return 0;
}

/* Apply the pending operations that run on the same engine handle as
 * x->pend[first] (same class and key) in one transaction of that handle's
 * connection, each operation in its own savepoint (a failing one is rolled
 * back alone and gets its own error), each that succeeds followed by its
 * client's record (exactly once). Marks them run. */
static void run_group(wr_state *ws, size_t first)
{
    wr_exec *x = ws->exec;
    wr_pending *p0 = &x->pend[first];
    size_t members[WR_EXEC_BATCH], n = 0;
    for (size_t i = first; i < x->npend; i++) {
        wr_pending *p = &x->pend[i];
        if (!p->ran && !p->dup && p->st == KV_OK && p->cls == p0->cls &&
            p->key_len == p0->key_len && !memcmp(p->key, p0->key, p0->key_len))
            members[n++] = i;
    }
    char err[1024] = "";
    kv_status st = KV_OK;
    /* decode again: x->op holds one operation at a time */
    kvshm_op_decode(p0->buf, p0->len, &x->op, &(const char *){NULL});
    wr_handle *w = handle_get(ws, &x->op, &st, err, sizeof err);
    /* a class without group transactions runs each operation alone, and
     * unrecorded (at least once) */
    int grouped = w && class_of(p0->cls)->tx_begin, open = 0;
    if (grouped) {
        sweep(x, w);
        if ((st = group_begin(w)) != KV_OK) snprintf(err, sizeof err, "%s", handle_errmsg(w));
        else open = 1;
        if (open && x->nends) drop_ends(x, w);
    }
    kv_conn c;
    if (w) handle_conn(w, &c);
    size_t applied = 0;
    for (size_t k = 0; k < n; k++) {
        wr_pending *p = &x->pend[members[k]];
        p->ran = 1;
        if (st != KV_OK) {
            pend_fail(p, st, err);
            continue;
        }
        if (grouped && !once_check(ws, w, p)) continue;
        if (k) kvshm_op_decode(p->buf, p->len, &x->op, &(const char *){NULL});
        pend_run(x, w, p, !grouped);
        if (!grouped || p->st != KV_OK) continue;
        p->applied = 1;
        applied++;
    }
    /* each client's record, in the same transaction: it commits with the
     * operations or not at all. One per client: that of its last operation
     * applied here (its earlier ones are older than the record says) */
    for (size_t k = 0; st == KV_OK && k < n; k++) {
        wr_pending *p = &x->pend[members[k]];
        if (!p->applied || later_applied(x, members, k, n)) continue;
        const wr_pending *f = first_failed(x, members, k);
        if ((st = kv_oprec_put_failed(&c, p->id.x_token, p->id.x_seq, KV_OK, p->res, p->res_len,
                                      f ? f->id.x_seq : 0, f ? (int32_t)f->st : 0,
                                      f ? f->err : NULL)) != KV_OK)
            snprintf(err, sizeof err, "%s", handle_errmsg(w));
    }
    if (!grouped) return;
    if (st == KV_OK && applied > 1) {
        ws->stat_exec_batches++;
        ws->stat_exec_batched_ops += applied;
        if (applied > ws->stat_exec_batch_max) ws->stat_exec_batch_max = applied;
    }
    if (st == KV_OK) {
        if ((st = group_end(w, 1)) != KV_OK) snprintf(err, sizeof err, "%s", handle_errmsg(w));
    } else if (open) {
        group_end(w, 0);   /* a record could not be written: roll the group back */
    }
    if (st != KV_OK) {
        /* nothing of the group was committed: every operation that ran
         * fails (a replayed one keeps its recorded reply) */
        for (size_t k = 0; k < n; k++) {
            wr_pending *p = &x->pend[members[k]];
            if (p->replayed) continue;
            free(p->res);
            p->res = NULL;
            p->res_len = 0;
            p->applied = 0;
            pend_fail(p, st, err);
        }
        return;
    }
    uint64_t now = wr_now_ms();
    for (size_t k = 0; k < n; k++) {   /* committed: remember the numbers */
        wr_pending *p = &x->pend[members[k]];
        if (!p->applied) continue;
        wr_once *e = wr_oncemap_add(&x->once, p->id.x_token);
        if (!e) continue;   /* out of memory: the record is read at the next sight */
        e->seq = p->id.x_seq;
        e->seen_ms = now;
    }
}

/* A request with the same id as an earlier kept one (a re-send that
 * arrived while the first was still waiting) gets that one's reply. */
static void copy_dup(wr_pending *p, const wr_pending *orig)
{
    p->st = orig->st;
    memcpy(p->err, orig->err, sizeof p->err);
    if (orig->st == KV_OK && orig->res_len) {
        if (!(p->res = malloc(orig->res_len))) {
            pend_fail(p, KV_NOMEM, "exec: out of memory");
            return;
        }
        memcpy(p->res, orig->res, orig->res_len);
        p->res_len = orig->res_len;
    }
}

void wr_exec_flush(wr_state *ws)
{
    wr_exec *x = ws->exec;
    if (!x || (!x->npend && !x->nends)) return;
    /* the KV pipeline's open transaction holds SQLite's write lock */
    if (ws->cm_open && wr_commit_finish(ws) != 0)
        for (size_t i = 0; i < x->npend; i++)
            if (x->pend[i].st == KV_OK)
                pend_fail(&x->pend[i], KV_BUSY, "exec: the writer could not finish its commit");
    for (size_t i = 0; i < x->npend; i++)
        if (!x->pend[i].ran && !x->pend[i].dup && x->pend[i].st == KV_OK) run_group(ws, i);
    for (size_t i = 0; i < x->npend; i++)
        if (x->pend[i].dup) copy_dup(&x->pend[i], &x->pend[x->pend[i].dup - 1]);
    wr_reply_msg replies[WR_EXEC_BATCH];
    for (size_t i = 0; i < x->npend; i++) pend_reply(ws, &x->pend[i], &replies[i]);
    wr_reply_many(replies, x->npend);
    for (size_t i = 0; i < x->npend; i++) pend_release(ws, &x->pend[i]);
    x->npend = 0;
    /* closed clients whose records no group transaction took */
    wr_handle *w = x->n ? &x->hs[0] : NULL;
    if (x->nends && w && class_of(w->cls)->tx_begin && !(ws->cm_open && wr_commit_finish(ws))) {
        if (group_begin(w) == KV_OK) {
            drop_ends(x, w);
            if (group_end(w, 1) != KV_OK) x->nends = 0;   /* left to the sweep */
        }
    }
}

void wr_exec_end(wr_state *ws, const uint8_t *pl)
{
    if (!ws->exec && !(ws->exec = calloc(1, sizeof *ws->exec))) return;
    wr_exec *x = ws->exec;
    if (!x->ends && !(x->ends = malloc(WR_EXEC_ENDS * sizeof *x->ends))) return;
    if (x->nends == WR_EXEC_ENDS) return;   /* left to the sweep */
    memcpy(x->ends[x->nends++], pl, KVSHM_EXEC_TOKEN);   /* x_token leads the id */
}

void wr_exec_request(wr_state *ws, int sock, const struct kvshm_msg *m, const uint8_t *pl,
                     int fd)
{
    const char *why = NULL;
    ws->stat_execs++;
    if (!ws->exec && !(ws->exec = calloc(1, sizeof *ws->exec))) {
        char msg[] = "exec: out of memory";
        ws->stat_exec_failed++;
        wr_reply(sock, m->m_type, KV_NOMEM, 0, msg, strlen(msg));
        if (fd >= 0) close(fd);
        return;
    }
    wr_exec *x = ws->exec;
    if (x->npend == WR_EXEC_BATCH) wr_exec_flush(ws);
    wr_pending *p = &x->pend[x->npend++];
    memset(p, 0, sizeof *p);
    p->sock = sock;
    p->type = m->m_type;
    p->fd = fd;
    p->st = KV_OK;
    /* the id, then the operation (kvshm_msg_parse: the id is there) */
    memcpy(&p->id, pl, sizeof p->id);
    pl += sizeof p->id;
    size_t oplen = m->m_len - sizeof p->id;
    for (size_t i = 0; i + 1 < x->npend; i++)
        if (!memcmp(&x->pend[i].id, &p->id, sizeof p->id)) p->dup = i + 1;
    if (m->m_arg) {   /* in the memfd (kvshm_msg_parse: 1..max bytes) */
        if (fd < 0) why = "exec: missing descriptor";
        else if ((p->buf = read_memfd(x, fd, m->m_arg, &why))) p->len = (size_t)m->m_arg;
    } else if ((p->buf = malloc(oplen))) {
        memcpy(p->buf, pl, oplen);
        p->len = oplen;
    } else {
        why = "exec: out of memory";
    }
    if (!why && kvshm_op_decode(p->buf, p->len, &x->op, &why) == 0) {
        if (x->op.op == KVSHM_OP_LEASE || x->op.op == KVSHM_OP_LEASE_END) ws->stat_exec_leases++;
        p->cls = x->op.cls;
        p->key = x->op.key;   /* into p->buf */
        p->key_len = x->op.key_len;
    }
    if (why) pend_fail(p, strcmp(why, "exec: out of memory") ? KV_INVALID : KV_NOMEM, why);
    /* a cluster node takes no table operation: they are not replicated
     * (docs/replication.md), so one applied here would be on this node
     * alone; a node that does not lead names the leader */
    else if (ws->cluster)
        pend_fail(p, KV_UNSUPPORTED, wr_cluster_accepts_writes(ws) ? WR_CLUSTER_NOT_REPLICATED
                                                                   : wr_cluster_refusal(ws));
}
