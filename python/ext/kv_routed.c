/*
 * kv_routed.c - the routed backend of _KVault (kv_backend.h): a KVault on a
 * table of a served file other than the one the kvault-writer serves
 * through its segment (docs/shared-mode.md, "Every class through the
 * writer").
 *
 * Reads are the embedded backend's, on the handle's own connection (the
 * entries below call kvb_embedded's with it). Every write is one table
 * operation of class KV (shm/include/kvshm/ops.h) sent to the writer
 * (kv_exec_call), which applies it with the engine call the embedded
 * backend makes and replies after its commit: the own connection reads the
 * write as soon as the call returns, and its read cache, validated by
 * SQLite's WAL-index header, drops what it held on the writer's commit.
 *
 * There is no private write-back cache: a routed put is committed when it
 * returns, so enable_cache() only records the switch and flushes have
 * nothing to write (as attached, where the ring is the cache). A writer
 * gone (stopped, or no longer answering), or one that now serves this
 * very table, marks the handle stopped: the binding continues embedded
 * (kv_py.c, kv_reroute), whose commit guard then follows a new writer.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kv_backend.h"
#include "kvshm/attach.h"
#include "kvshm/ops.h"

typedef struct kvr {
    void *db;                  /* the embedded backend's handle: reads, streams out */
    kv_exec *ex;               /* connection to the writer serving the file */
    kv_buf op;                 /* the encoded operation of the current write */
    char *path;                /* owned: the path as opened */
    char table[KVSHM_OP_TABLE_MAX + 1];
    int64_t chunk;             /* open parameter: the streaming chunk, bytes */
    int remote;                /* the last failure is the writer's (message in err) */
    int stopped;               /* no writer takes this table's writes now */
    int cache_on, cache_locked;   /* the enable_cache switch and its lock flag */
    size_t cache_puts;         /* puts since the last flush (switch on): what a flush
                                  reports written, as the attached backend does */
    kv_commit_guard *guard;    /* the binding's, on the own connection */
    char err[1024];
} kvr;

#define R(h) ((kvr *)(h))

static kv_status rt_open(const char *path, const kv_open_opts *o, int route, void **out,
                         char *err, size_t errlen)
{
    *out = NULL;
    if (strlen(o->table) > KVSHM_OP_TABLE_MAX) {   /* kv_db_open refuses it too */
        snprintf(err, errlen, "Invalid table name: %s", o->table);
        return KV_INVALID;
    }
    kvr *r = calloc(1, sizeof *r);
    if (!r || !(r->path = strdup(path))) {
        free(r);
        snprintf(err, errlen, "out of memory");
        return KV_NOMEM;
    }
    kv_buf_init(&r->op);
    snprintf(r->table, sizeof r->table, "%s", o->table);
    r->chunk = (int64_t)o->chunk_size;
    kv_status st = kv_exec_open(path, &r->ex);
    if (st != KV_OK)
        snprintf(err, errlen, "no kvault-writer serves %s", path);
    else
        st = kvb_embedded.open(path, o, route, &r->db, err, errlen);
    if (st != KV_OK) {
        kv_exec_close(r->ex);
        free(r->path);
        free(r);
        return st;
    }
    *out = r;
    return KV_OK;
}

static kv_status rt_close(void *h)
{
    kvr *r = h;
    kv_status st = kvb_embedded.close(r->db);
    kv_exec_close(r->ex);
    kv_buf_free(&r->op);
    free(r->path);
    free(r);
    return st;
}

static const char *rt_errmsg(const void *h)
{
    const kvr *r = h;
    return r->remote ? r->err : kvb_embedded.errmsg(r->db);
}

static int rt_os_errno(const void *h)
{
    const kvr *r = h;
    return r->remote ? 0 : kvb_embedded.os_errno(r->db);
}

/* ---- reads and the other calls of the own connection: the embedded
 * backend's entries on it (a failure there is the connection's) */

static void *own(void *h)
{
    R(h)->remote = 0;
    return R(h)->db;
}

static int rt_get_cached(void *h, const void *k, size_t kn, const void **v, size_t *vn)
{
    return kvb_embedded.get_cached(R(h)->db, k, kn, v, vn);
}
static int rt_get_blocks(const void *h) { return kvb_embedded.get_blocks(((const kvr *)h)->db); }
static kv_status rt_get(void *h, const void *k, size_t kn, uint64_t kh, const void **v,
                        size_t *vn, uint64_t *token)
{
    return kvb_embedded.get(own(h), k, kn, kh, v, vn, token);
}
static void rt_get_done(void *h) { kvb_embedded.get_done(R(h)->db); }
static kv_status rt_get_into(void *h, const void *k, size_t kn, uint64_t kh, kv_alloc_fn alloc,
                             void *ctx, size_t *vn, uint64_t *token)
{
    return kvb_embedded.get_into(own(h), k, kn, kh, alloc, ctx, vn, token);
}
static kv_status rt_exists(void *h, const void *k, size_t kn, int *found)
{
    return kvb_embedded.exists(own(h), k, kn, found);
}
static kv_status rt_count(void *h, int64_t *n) { return kvb_embedded.count(own(h), n); }
static kv_status rt_keys_batch(void *h, const void *p, size_t pn, const void *a, size_t an,
                               size_t max, kv_keys **out)
{
    return kvb_embedded.keys_batch(own(h), p, pn, a, an, max, out);
}
static kv_status rt_get_to_fd(void *h, const void *k, size_t kn, int fd, size_t chunk,
                              uint64_t *written)
{
    return kvb_embedded.get_to_fd(own(h), k, kn, fd, chunk, written);
}
static kv_status rt_get_stream(void *h, const void *k, size_t kn, size_t chunk, kv_write_fn wr,
                               void *ctx, uint64_t *written)
{
    return kvb_embedded.get_stream(own(h), k, kn, chunk, wr, ctx, written);
}
static int rt_stream_used_uring(const void *h)
{
    return kvb_embedded.stream_used_uring(((const kvr *)h)->db);
}
static kv_status rt_checkpoint(void *h) { return kvb_embedded.checkpoint(own(h)); }

/* VACUUM rewrites the file without changing a row: made on the own
 * connection, past the commit guard (which refuses while a writer serves
 * the file). */
static kv_status rt_optimize(void *h)
{
    kvr *r = h;
    if (r->guard)
        r->guard->bypass = 1;
    kv_status st = kvb_embedded.optimize(own(h));
    if (r->guard)
        r->guard->bypass = 0;
    return st;
}

static void rt_set_guard(void *h, kv_commit_guard *g)
{
    R(h)->guard = g;
    kvb_embedded.set_guard(R(h)->db, g);
}

static int rt_stopped(const void *h) { return ((const kvr *)h)->stopped; }

kv_exec *kvb_routed_probe(const char *path)
{
    kv_exec *x = NULL;
    return kv_exec_open(path, &x) == KV_OK ? x : NULL;
}

int kvb_routed_served(const kv_exec *probe) { return probe && kv_exec_served(probe); }

void kvb_routed_probe_free(kv_exec *probe) { kv_exec_close(probe); }

/* ---- writes: one operation each, through the writer */

/* Start encoding operation `op` of this handle's table into r->op. */
static void op_begin(kvr *r, kvshm_op_enc *e, unsigned op)
{
    r->op.len = 0;
    kvshm_op_begin(e, &r->op, KVSHM_OPC_KV, op, r->table);
    kvshm_op_add_i64(e, r->chunk);
    kvshm_op_args(e);
}

/* Send the operation encoded in `e` and wait for the writer's reply (its
 * commit). KV_OK with the result in *res and *rlen, or the failure whose text
 * rt_errmsg gives. No writer (or one serving this table now): the handle
 * is stopped and KV_IO returned. */
static kv_status op_send(kvr *r, kvshm_op_enc *e, size_t result_max, const uint8_t **res,
                         size_t *rlen)
{
    int reached = 0;
    r->remote = 1;
    kv_status st = kvshm_op_end(e);
    if (st != KV_OK) {
        snprintf(r->err, sizeof r->err,
                 st == KV_NOMEM ? "out of memory" : "operation too large to send to the writer");
        return st;
    }
    st = kv_exec_call(r->ex, r->op.data, r->op.len, result_max, res, rlen, &reached);
    if (!reached || (st == KV_INVALID && kvb_attached_served(r->path, r->table)))
        r->stopped = 1;
    if (!reached)
        st = KV_IO;
    if (st != KV_OK)
        snprintf(r->err, sizeof r->err, "%s", kv_exec_errmsg(r->ex));
    return st;
}

/* One PUT operation. */
static kv_status put_op(kvr *r, const void *k, size_t kn, const void *v, size_t vn)
{
    kvshm_op_enc e;
    const uint8_t *res;
    size_t rlen;
    op_begin(r, &e, KVSHM_OP_PUT);
    kvshm_op_add(&e, k, kn);
    kvshm_op_add(&e, v, vn);
    return op_send(r, &e, 0, &res, &rlen);
}

static kv_status rt_put(void *h, const void *k, size_t kn, const void *v, size_t vn, int flags)
{
    (void)flags;   /* committed on return whatever the write mode */
    kvr *r = h;
    kv_status st = put_op(r, k, kn, v, vn);
    r->cache_puts += st == KV_OK && r->cache_on;
    return st;
}

/* A field of n i64 lengths and one of the n spans back to back. */
static kv_status add_spans(kvshm_op_enc *e, const void *const *p, const size_t *len, size_t n,
                           int64_t *lens)
{
    for (size_t i = 0; i < n; i++)
        lens[i] = (int64_t)len[i];
    kvshm_op_add(e, lens, n * 8);
    kvshm_op_add_gather(e, p, len, n);
    return e->st;
}

static kv_status rt_put_many(void *h, const kv_item *it, size_t n, int flags)
{
    (void)flags;
    kvr *r = h;
    if (n == 0)
        return KV_OK;
    kvshm_op_enc e;
    const uint8_t *res;
    size_t rlen;
    const void **p = malloc(2 * n * sizeof *p);
    size_t *len = malloc(2 * n * sizeof *len);
    int64_t *lens = malloc(n * sizeof *lens);
    kv_status st = KV_NOMEM;
    if (p && len && lens) {
        for (size_t i = 0; i < n; i++) {
            p[i] = it[i].key;
            len[i] = it[i].klen;
            p[n + i] = it[i].val;
            len[n + i] = it[i].vlen;
        }
        op_begin(r, &e, KVSHM_OP_PUT_MANY);
        add_spans(&e, p, len, n, lens);
        add_spans(&e, p + n, len + n, n, lens);   /* the first field is copied already */
        st = op_send(r, &e, 0, &res, &rlen);
        if (st == KV_OK && r->cache_on)
            r->cache_puts += n;
    } else {
        r->remote = 1;
        snprintf(r->err, sizeof r->err, "out of memory");
    }
    free(p);
    free(len);
    free(lens);
    return st;
}

/* A result of `want` bytes, or KV_IO: the writer's reply has not the
 * operation's shape. */
static kv_status result_of(kvr *r, kv_status st, size_t rlen, size_t want)
{
    if (st != KV_OK || rlen == want)
        return st;
    snprintf(r->err, sizeof r->err, "malformed reply of the writer");
    return KV_IO;
}

static kv_status rt_del_many(void *h, const void *const *keys, const size_t *klens, size_t n,
                             int flags, size_t *removed)
{
    (void)flags;
    kvr *r = h;
    kvshm_op_enc e;
    const uint8_t *res;
    size_t rlen;
    kv_status st;
    *removed = 0;
    if (n == 0)
        return KV_OK;
    if (n == 1) {   /* as kv_delete_many: one key is kv_delete */
        op_begin(r, &e, KVSHM_OP_DELETE);
        kvshm_op_add(&e, keys[0], klens[0]);
        st = op_send(r, &e, 1, &res, &rlen);
        st = result_of(r, st, rlen, 1);
        if (st == KV_OK)
            *removed = res[0] != 0;
        return st;
    }
    int64_t *lens = malloc(n * sizeof *lens), cnt = 0;
    if (!lens) {
        r->remote = 1;
        snprintf(r->err, sizeof r->err, "out of memory");
        return KV_NOMEM;
    }
    op_begin(r, &e, KVSHM_OP_DEL_MANY);
    add_spans(&e, keys, klens, n, lens);
    st = op_send(r, &e, 8, &res, &rlen);
    st = result_of(r, st, rlen, 8);
    free(lens);
    if (st == KV_OK) {
        memcpy(&cnt, res, 8);
        *removed = (size_t)cnt;
    }
    return st;
}

static kv_status rt_record_feature(void *h, const char *name)
{
    kvr *r = h;
    kvshm_op_enc e;
    const uint8_t *res;
    size_t rlen;
    op_begin(r, &e, KVSHM_OP_FEATURE);
    kvshm_op_add(&e, name, strlen(name));
    return op_send(r, &e, 0, &res, &rlen);
}

/* A value from a descriptor: read here (from its current offset, which
 * advances), sent as one put. A descriptor that ends early stores the
 * value with a zero tail and fails KV_SHORT, as kv_put_fd does. */
static kv_status rt_put_fd(void *h, const void *k, size_t kn, int fd, uint64_t size,
                           size_t chunk)
{
    (void)chunk;
    kvr *r = h;
    r->remote = 1;
    if (size > KVSHM_OP_MAX_BYTES - kn - 4096) {
        snprintf(r->err, sizeof r->err,
                 "value of %llu bytes is too large to send to the writer (at most ~%llu)",
                 (unsigned long long)size, (unsigned long long)KVSHM_OP_MAX_BYTES);
        return KV_INVALID;
    }
    uint8_t *buf = calloc(size ? size : 1, 1);
    if (!buf) {
        snprintf(r->err, sizeof r->err, "out of memory");
        return KV_NOMEM;
    }
    uint64_t done = 0;
    while (done < size) {
        ssize_t n = read(fd, buf + done, size - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(r->err, sizeof r->err, "read: %s", strerror(errno));
            free(buf);
            return KV_IO;
        }
        if (n == 0)
            break;
        done += (uint64_t)n;
    }
    kv_status st = put_op(r, k, kn, buf, size);   /* outside the cache, as embedded */
    free(buf);
    if (st == KV_OK && done < size) {
        snprintf(r->err, sizeof r->err, "short write: wrote %llu of %llu bytes",
                 (unsigned long long)done, (unsigned long long)size);
        return KV_SHORT;
    }
    return st;
}

/* Every write is committed when it returns: nothing waits here. */
static kv_status rt_flush(void *h)
{
    (void)h;
    return KV_OK;
}
#define rt_sync rt_flush

static kv_status rt_cache_enable(void *h, size_t cap, size_t thr)
{
    (void)cap;
    (void)thr;
    R(h)->cache_on = 1;
    R(h)->cache_puts = 0;
    return KV_OK;
}
static kv_status rt_cache_disable(void *h)
{
    R(h)->cache_on = 0;
    R(h)->cache_puts = 0;
    return KV_OK;
}
static kv_status rt_cache_flush(void *h, size_t *written)
{
    kvr *r = h;
    *written = 0;
    if (r->cache_locked)
        return KV_OK;
    if (r->cache_on)
        *written = r->cache_puts;
    r->cache_puts = 0;
    return KV_OK;
}
static void rt_cache_set_locked(void *h, int locked) { R(h)->cache_locked = locked; }
static int rt_cache_enabled(const void *h) { return ((const kvr *)h)->cache_on; }

#define rt_put_stream NULL   /* spooled into a memfd, then put_fd */
#define rt_status NULL
#define rt_counters NULL
#define rt_generation NULL
#define rt_hot_new NULL

const kvb_ops kvb_routed = KVB_OPS(rt, "routed", 1000, 1);
