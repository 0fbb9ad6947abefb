/*
 * stream.c - put_file / get_to_file (docs/api.md §4.6): large values move between
 * a file descriptor (or a callback) and SQLite's incremental BLOB I/O in
 * chunks, so memory stays bounded by a few chunk buffers.
 *
 * put: BEGIN IMMEDIATE; upsert zeroblob(size); open the row's blob; keep up
 * to KVI_RING reads of the source in flight with io_uring into a ring of
 * buffers and hand completed chunks to sqlite3_blob_write in file order;
 * COMMIT. get: sqlite3_blob_read a chunk into a free buffer and submit its
 * write to the destination, keeping up to KVI_RING writes in flight.
 * Fallback: when io_uring_queue_init fails (old kernel, seccomp), when
 * KV_NO_URING=1, or for unseekable fds (pipes), plain pread/pwrite or
 * read/write loops do the same work one chunk at a time.
 *
 * Large values (longer than SQLite's length limit, see large.c): the value
 * is the concatenation of part rows; a `vblob` maps value offsets onto the
 * part blobs (one sqlite3_blob moved from part to part with
 * sqlite3_blob_reopen), so the io_uring and plain loops below stream parts
 * exactly as they stream a single row, all parts in one transaction.
 *
 * Memory bound: SQLite's page cache would otherwise hold dirty pages of the
 * whole transaction up to cache_size, and mmap'd reads would touch up to
 * mmap_size of file pages; for large streams both are lowered for the
 * duration (cache_size to KVI_STREAM_CACHE_KB, mmap off) and restored after.
 */
#include "internal.h"

#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KVI_RING 4                        /* buffers / requests in flight */
#define KVI_STREAM_BIG (8u << 20)         /* streams >= this lower cache/mmap */
#define KVI_STREAM_CACHE_KB 8192          /* page cache while streaming, KiB */
#define KVI_MAX_CHUNK (64u << 20)

/* ======================================================================
 * Memory guard: lower cache_size and mmap_size during big streams.
 * ==================================================================== */

typedef struct mem_guard {
    int active;
    sqlite3_int64 cache;    /* previous cache_size */
    sqlite3_int64 mmap;     /* previous mmap_size */
} mem_guard;

static void guard_enter(kv_db *db, uint64_t size, mem_guard *g)
{
    char sql[96];
    g->active = 0;
    if (size < KVI_STREAM_BIG)
        return;
    g->cache = kvi_query_i64(db->db, "PRAGMA cache_size");
    g->mmap = kvi_query_i64(db->db, "PRAGMA mmap_size");
    snprintf(sql, sizeof sql, "PRAGMA cache_size=-%d; PRAGMA mmap_size=0", KVI_STREAM_CACHE_KB);
    sqlite3_exec(db->db, sql, NULL, NULL, NULL);
    g->active = 1;
}

static void guard_leave(kv_db *db, mem_guard *g)
{
    char sql[128];
    if (!g->active)
        return;
    snprintf(sql, sizeof sql, "PRAGMA cache_size=%lld; PRAGMA mmap_size=%lld",
             (long long)g->cache, (long long)g->mmap);
    sqlite3_exec(db->db, sql, NULL, NULL, NULL);
    g->active = 0;
}

/* ======================================================================
 * io_uring setup
 * ==================================================================== */

static int uring_allowed(void)
{
    const char *e = getenv("KV_NO_URING");
    return !(e && e[0] == '1');
}

static size_t pick_chunk(kv_db *db, size_t chunk)
{
    if (chunk == 0)
        chunk = db->chunk_size;
    if (chunk > KVI_MAX_CHUNK)
        chunk = KVI_MAX_CHUNK;
    if (chunk < 4096)
        chunk = 4096;
    return chunk;
}

typedef struct ring_buf {
    uint8_t *p;
    uint64_t off;     /* byte offset within the value */
    size_t want;      /* bytes requested */
    int64_t res;      /* completion result, or -1 pending */
    int busy;         /* request in flight */
} ring_buf;

static void free_bufs(ring_buf *b, int n)
{
    for (int i = 0; i < n; i++)
        kvi_free(b[i].p);
}

static int alloc_bufs(ring_buf *b, int n, size_t chunk)
{
    memset(b, 0, sizeof *b * n);
    for (int i = 0; i < n; i++) {
        b[i].res = -1;
        b[i].off = UINT64_MAX;
        if (!(b[i].p = kvi_malloc(chunk)))
            return -1;
    }
    return 0;
}

/* ======================================================================
 * Value blobs: one row's blob, or the parts of a large value
 * ==================================================================== */

typedef struct vblob {
    kv_db *db;
    int writing;
    sqlite3_blob *one;      /* inline value, or NULL when in parts */
    size_t nparts;          /* 0: inline; else db->parts_rowid/parts_len */
    size_t cur;             /* part the blob `part` points at */
    uint64_t cur_start;     /* value offset where part `cur` starts */
    sqlite3_blob *part;     /* open on part `cur`, or NULL */
} vblob;

static void vb_init(vblob *vb, kv_db *db, int writing)
{
    memset(vb, 0, sizeof *vb);
    vb->db = db;
    vb->writing = writing;
}

/* Close the blob handles; returns the first SQLite error code (or OK). */
static int vb_close(vblob *vb)
{
    int rc = SQLITE_OK, r;
    if (vb->one && (r = sqlite3_blob_close(vb->one)) != SQLITE_OK)
        rc = r;
    if (vb->part && (r = sqlite3_blob_close(vb->part)) != SQLITE_OK && rc == SQLITE_OK)
        rc = r;
    vb->one = vb->part = NULL;
    return rc;
}

/* Read or write n bytes at value offset off. */
static kv_status vb_io(vblob *vb, void *p, size_t n, uint64_t off)
{
    kv_db *db = vb->db;
    int rc;
    if (!vb->nparts) {
        rc = vb->writing ? sqlite3_blob_write(vb->one, p, (int)n, (int)off)
                         : sqlite3_blob_read(vb->one, p, (int)n, (int)off);
        if (rc != SQLITE_OK)
            return kvi_err_sqlite(&db->err, db->db, rc, vb->writing ? "blob_write" : "blob_read");
        return KV_OK;
    }
    uint8_t *b = p;
    while (n > 0) {
        if (off < vb->cur_start) {          /* backwards: start over */
            vb->cur = 0;
            vb->cur_start = 0;
        }
        size_t was = vb->cur;
        while (vb->cur < vb->nparts && off >= vb->cur_start + db->parts_len[vb->cur]) {
            vb->cur_start += db->parts_len[vb->cur];
            vb->cur++;
        }
        if (vb->cur >= vb->nparts)
            return kvi_err_set(&db->err, KV_CORRUPT, "large value: offset %llu past its parts",
                               (unsigned long long)off);
        if (!vb->part) {
            rc = sqlite3_blob_open(db->db, "main", db->parts_tbl, "data",
                                   db->parts_rowid[vb->cur], vb->writing, &vb->part);
            if (rc != SQLITE_OK) {
                vb->part = NULL;
                return kvi_err_sqlite(&db->err, db->db, rc, "blob_open part");
            }
        } else if (vb->cur != was) {
            rc = sqlite3_blob_reopen(vb->part, db->parts_rowid[vb->cur]);
            if (rc != SQLITE_OK) {
                sqlite3_blob_close(vb->part);
                vb->part = NULL;
                return kvi_err_sqlite(&db->err, db->db, rc, "blob_reopen part");
            }
        }
        uint64_t in_off = off - vb->cur_start;
        uint64_t room = db->parts_len[vb->cur] - in_off;
        size_t k = n < room ? n : (size_t)room;
        rc = vb->writing ? sqlite3_blob_write(vb->part, b, (int)k, (int)in_off)
                         : sqlite3_blob_read(vb->part, b, (int)k, (int)in_off);
        if (rc != SQLITE_OK)
            return kvi_err_sqlite(&db->err, db->db, rc, vb->writing ? "blob_write" : "blob_read");
        b += k;
        off += k;
        n -= k;
    }
    return KV_OK;
}

static inline kv_status blob_write(kv_db *db, vblob *vb, const void *p, size_t n, uint64_t off)
{
    (void)db;
    return vb_io(vb, (void *)p, n, off);
}

static inline kv_status blob_read(kv_db *db, vblob *vb, void *p, size_t n, uint64_t off)
{
    (void)db;
    return vb_io(vb, p, n, off);
}

/* BEGIN IMMEDIATE; upsert the key with a zero-filled value of `size` bytes
 * (one row, or an empty main value plus zero-filled parts) and open it for
 * writing. On failure the transaction is rolled back. */
static kv_status open_new_blob(kv_db *db, const void *key, size_t klen, uint64_t size,
                               vblob *vb)
{
    kv_status st;
    int rc;
    static const uint8_t empty[1];
    const void *k = klen ? key : empty;

    vb_init(vb, db, 1);
    kvi_rcache_invalidate(db->rcache);
    if ((st = kvi_begin(db)) != KV_OK)
        return st;
    if (kvi_value_is_large(db, klen, size)) {
        if ((st = kvi_parts_create_zero(db, key, klen, size, &vb->nparts)) != KV_OK)
            goto fail;
        return KV_OK;
    }
    sqlite3_bind_blob64(db->st_putzero, 1, k, klen, SQLITE_STATIC);
    sqlite3_bind_int64(db->st_putzero, 2, (sqlite3_int64)size);
    rc = sqlite3_step(db->st_putzero);
    sqlite3_reset(db->st_putzero);
    if (rc != SQLITE_DONE) {
        st = kvi_err_sqlite(&db->err, db->db, rc, "put_file");
        goto fail;
    }
    sqlite3_bind_blob64(db->st_rowid, 1, k, klen, SQLITE_STATIC);
    rc = sqlite3_step(db->st_rowid);
    sqlite3_int64 rowid = rc == SQLITE_ROW ? sqlite3_column_int64(db->st_rowid, 0) : 0;
    sqlite3_reset(db->st_rowid);
    if (rc != SQLITE_ROW) {
        st = kvi_err_sqlite(&db->err, db->db, rc == SQLITE_DONE ? SQLITE_INTERNAL : rc, "put_file rowid");
        goto fail;
    }
    rc = sqlite3_blob_open(db->db, "main", db->table, "value", rowid, 1, &vb->one);
    if (rc != SQLITE_OK) {
        vb->one = NULL;
        st = kvi_err_sqlite(&db->err, db->db, rc, "blob_open");
        goto fail;
    }
    return KV_OK;
fail:
    kvi_rollback(db);
    return st;
}

/* Inside the caller's read transaction: open the value of `key` for
 * reading (its row, or the parts of a large value); *size = its length. */
static kv_status open_read_blob(kv_db *db, const void *key, size_t klen, vblob *vb,
                                uint64_t *size)
{
    static const uint8_t empty[1];
    const void *k = klen ? key : empty;
    vb_init(vb, db, 0);
    sqlite3_bind_blob64(db->st_rowid, 1, k, klen, SQLITE_STATIC);
    int rc = sqlite3_step(db->st_rowid);
    sqlite3_int64 rowid = rc == SQLITE_ROW ? sqlite3_column_int64(db->st_rowid, 0) : 0;
    sqlite3_reset(db->st_rowid);
    if (rc == SQLITE_DONE)
        return KV_NOTFOUND;
    if (rc != SQLITE_ROW)
        return kvi_err_sqlite(&db->err, db->db, rc, "get_to_file");
    rc = sqlite3_blob_open(db->db, "main", db->table, "value", rowid, 0, &vb->one);
    if (rc != SQLITE_OK) {
        vb->one = NULL;
        return kvi_err_sqlite(&db->err, db->db, rc, "blob_open");
    }
    *size = (uint64_t)sqlite3_blob_bytes(vb->one);
    if (*size == 0) {
        size_t n;
        uint64_t total;
        kv_status st = kvi_parts_list(db, key, klen, &n, &total);
        if (st != KV_OK) {
            vb_close(vb);
            return st;
        }
        if (n > 0) {
            vb_close(vb);
            vb->nparts = n;
            *size = total;
        }
    }
    return KV_OK;
}

/* Close the blob and commit (also after a short write: the zero tail is
 * kept, as docs/api.md §4.6 says). On failure roll back. */
static kv_status finish_put(kv_db *db, vblob *vb, kv_status st)
{
    int rc = vb_close(vb);
    if (st != KV_OK && st != KV_SHORT) {
        kvi_rollback(db);
        return st;
    }
    if (rc != SQLITE_OK) {
        kvi_rollback(db);
        return kvi_err_sqlite(&db->err, db->db, rc, "blob_close");
    }
    kv_status cst = kvi_commit(db);
    if (cst != KV_OK) {
        kvi_rollback(db);
        return cst;
    }
    return st;
}

static kv_status short_err(kv_db *db, uint64_t got, uint64_t size)
{
    return kvi_err_set(&db->err, KV_SHORT, "short write: wrote %llu of %llu bytes",
                       (unsigned long long)got, (unsigned long long)size);
}

/* ======================================================================
 * put: source fd → blob
 * ==================================================================== */

/* Read exactly up to n bytes with pread (seekable) or read; returns bytes
 * read (< n only at EOF) or -errno. */
static int64_t full_read(int fd, void *p, size_t n, int64_t off, int seekable)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = seekable ? pread(fd, (uint8_t *)p + got, n - got, off + (int64_t)got)
                             : read(fd, (uint8_t *)p + got, n - got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (int64_t)got;
}

static int64_t full_write(int fd, const void *p, size_t n, int64_t off, int seekable)
{
    size_t put = 0;
    while (put < n) {
        ssize_t r = seekable ? pwrite(fd, (const uint8_t *)p + put, n - put, off + (int64_t)put)
                             : write(fd, (const uint8_t *)p + put, n - put);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        put += (size_t)r;
    }
    return (int64_t)put;
}

static kv_status put_plain(kv_db *db, vblob *blob, int fd, int64_t base, int seekable,
                           uint64_t size, size_t chunk, uint64_t *done)
{
    kv_status st = KV_OK;
    uint8_t *buf = kvi_malloc(chunk);
    if (!buf)
        return kvi_err_set(&db->err, KV_NOMEM, "out of memory");
    uint64_t off = 0;
    while (off < size) {
        size_t want = size - off < chunk ? (size_t)(size - off) : chunk;
        int64_t r = full_read(fd, buf, want, base + (int64_t)off, seekable);
        if (r < 0) {
            st = kvi_err_os(&db->err, (int)-r, "read");
            break;
        }
        if (r > 0 && (st = blob_write(db, blob, buf, (size_t)r, off)) != KV_OK)
            break;
        off += (uint64_t)r;
        if ((size_t)r < want) {
            st = short_err(db, off, size);
            break;
        }
    }
    *done = off;
    kvi_free(buf);
    return st;
}

/* One io_uring transfer between a descriptor and a value: the ring, its
 * buffers and the request counts. */
typedef struct ring_io {
    struct io_uring ring;
    ring_buf b[KVI_RING];
    int fd;          /* value byte x is at file offset base + x */
    int64_t base;
    int inflight;    /* requests submitted and not yet reaped */
    int queued;      /* requests queued since the last submit */
} ring_io;

/* Set up a ring and KVI_RING buffers of `chunk` bytes for one transfer
 * (and note that this handle used io_uring). KV_UNSUPPORTED when the
 * kernel refuses a ring (the caller falls back), KV_NOMEM. */
static kv_status ring_open(kv_db *db, ring_io *r, int fd, int64_t base, size_t chunk)
{
    if (io_uring_queue_init(KVI_RING * 2, &r->ring, 0) < 0)
        return KV_UNSUPPORTED;
    if (alloc_bufs(r->b, KVI_RING, chunk) != 0) {
        free_bufs(r->b, KVI_RING);
        io_uring_queue_exit(&r->ring);
        return kvi_err_set(&db->err, KV_NOMEM, "out of memory");
    }
    r->fd = fd;
    r->base = base;
    r->inflight = r->queued = 0;
    db->used_uring = 1;
    return KV_OK;
}

/* Tear the ring down (requests still in flight end here) and free the
 * buffers. */
static void ring_close(ring_io *r)
{
    io_uring_queue_exit(&r->ring);
    free_bufs(r->b, KVI_RING);
}

/* Queue a read (write == 0) into, or a write (write == 1) from, the first
 * `want` bytes of rb at value offset `off`; rb is busy until its
 * completion. 0 when the submission queue is full. */
static int ring_queue(ring_io *r, ring_buf *rb, uint64_t off, size_t want, int write)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe)
        return 0;
    KV_ASSERT_INTERNAL(!rb->busy && want > 0);
    rb->off = off;
    rb->want = want;
    rb->busy = 1;
    rb->res = -1;
    if (write)
        io_uring_prep_write(sqe, r->fd, rb->p, (unsigned)want, (uint64_t)r->base + off);
    else
        io_uring_prep_read(sqe, r->fd, rb->p, (unsigned)want, (uint64_t)r->base + off);
    io_uring_sqe_set_data(sqe, rb);
    r->inflight++;
    r->queued++;
    return 1;
}

/* Submit the queued requests, then wait for one completion: returns 1 with
 * its buffer (no longer busy) and result; a failed request is recorded in
 * *st as "<op>: ..." unless *st already holds a failure. 0 when nothing is
 * in flight, or when waiting failed (recorded in *st). A wait interrupted
 * by a signal is retried. */
static int ring_wait_one(kv_db *db, ring_io *r, const char *op, ring_buf **rb, int *res,
                         kv_status *st)
{
    struct io_uring_cqe *cqe;
    int rc;
    if (r->queued)
        io_uring_submit(&r->ring);
    r->queued = 0;
    if (r->inflight == 0)
        return 0;
    while ((rc = io_uring_wait_cqe(&r->ring, &cqe)) == -EINTR)
        ;
    if (rc < 0) {
        *st = kvi_err_os(&db->err, -rc, "io_uring_wait_cqe");
        return 0;
    }
    *rb = io_uring_cqe_get_data(cqe);
    *res = cqe->res;
    io_uring_cqe_seen(&r->ring, cqe);
    (*rb)->busy = 0;
    r->inflight--;
    KV_ASSERT_INTERNAL(r->inflight >= 0);
    if (*res < 0 && *st == KV_OK)
        *st = kvi_err_os(&db->err, -*res, op);
    return 1;
}

/* Finish a short transfer of rb (done of its want bytes) synchronously:
 * bytes moved by full_read / full_write, or -errno. */
static int64_t ring_finish(const ring_io *r, const ring_buf *rb, size_t done, int write)
{
    int64_t at = r->base + (int64_t)(rb->off + (uint64_t)done);
    return write ? full_write(r->fd, rb->p + done, rb->want - done, at, 1)
                 : full_read(r->fd, rb->p + done, rb->want - done, at, 1);
}

/* io_uring: keep up to KVI_RING preads in flight; write completed chunks to
 * the blob strictly in order. Returns KV_UNSUPPORTED (before touching the
 * blob) when the ring cannot be set up, so the caller falls back. */
static kv_status put_uring(kv_db *db, vblob *blob, int fd, int64_t base,
                           uint64_t size, size_t chunk, uint64_t *done)
{
    ring_io r;
    ring_buf *b = r.b;
    kv_status st = KV_OK;
    uint64_t next_submit = 0;   /* next value offset to request */
    uint64_t next_write = 0;    /* next value offset to hand to SQLite */

    *done = 0;
    if ((st = ring_open(db, &r, fd, base, chunk)) != KV_OK)
        return st;

    for (;;) {
        /* Queue reads into idle buffers. */
        for (int i = 0; i < KVI_RING && next_submit < size && st == KV_OK; i++) {
            if (b[i].busy || b[i].res >= 0)
                continue;
            size_t n = size - next_submit < chunk ? (size_t)(size - next_submit) : chunk;
            if (!ring_queue(&r, &b[i], next_submit, n, 0))
                break;
            next_submit += n;
        }
        /* Submit, reap one completion (in-flight requests of a failed wait
         * end with ring_close). */
        ring_buf *rb;
        int res;
        if (!ring_wait_one(db, &r, "read", &rb, &res, &st))
            break;
        if (res < 0) {
            rb->res = 0;
        } else {
            rb->res = res;
            /* A short but non-empty read: finish the chunk synchronously. */
            if ((size_t)res < rb->want && res > 0) {
                int64_t got = ring_finish(&r, rb, (size_t)res, 0);
                if (got < 0 && st == KV_OK)
                    st = kvi_err_os(&db->err, (int)-got, "read");
                else if (got > 0)
                    rb->res += got;
            }
        }
        if (st != KV_OK)
            continue;      /* drain remaining completions */
        /* Hand every in-order completed chunk to SQLite. */
        for (int progressed = 1; progressed && st == KV_OK;) {
            progressed = 0;
            for (int i = 0; i < KVI_RING; i++) {
                if (b[i].busy || b[i].res < 0 || b[i].off != next_write)
                    continue;
                if (b[i].res > 0)
                    st = blob_write(db, blob, b[i].p, (size_t)b[i].res, next_write);
                next_write += (uint64_t)b[i].res;
                int eof = (size_t)b[i].res < b[i].want;
                b[i].res = -1;
                b[i].off = UINT64_MAX;
                if (st == KV_OK && eof) {
                    st = short_err(db, next_write, size);
                    break;
                }
                progressed = 1;
            }
        }
    }
    *done = next_write;
    ring_close(&r);
    return st;
}

/* Start of kv_put_fd / kv_get_to_fd: release a lent row, pick the chunk
 * size, and find where the transfer starts in fd: *base is fd's current
 * offset when fd is seekable (returns 1), else 0 (returns 0: a pipe or
 * socket, read or written in order). */
static int fd_transfer_start(kv_db *db, int fd, size_t *chunk, off_t *base)
{
    kvi_get_release(db);
    db->used_uring = 0;
    *chunk = pick_chunk(db, *chunk);
    *base = lseek(fd, 0, SEEK_CUR);
    if (*base >= 0)
        return 1;
    *base = 0;
    return 0;
}

KV_API kv_status kv_put_fd(kv_db *db, const void *key, size_t klen, int fd,
                           uint64_t size, size_t chunk)
{
    vblob blob;
    mem_guard g;
    kv_status st;
    uint64_t done = 0;

    off_t base;
    int seekable = fd_transfer_start(db, fd, &chunk, &base);

    guard_enter(db, size, &g);
    if ((st = open_new_blob(db, key, klen, size, &blob)) != KV_OK)
        goto out;
    if (db->cache)
        kvi_cache_remove(db->cache, key, klen);   /* the stream is newer */
    st = KV_UNSUPPORTED;
    if (seekable && size > 0 && uring_allowed())
        st = put_uring(db, &blob, fd, base, size, chunk, &done);
    if (st == KV_UNSUPPORTED)
        st = put_plain(db, &blob, fd, base, seekable, size, chunk, &done);
    st = finish_put(db, &blob, st);
    if (seekable && (st == KV_OK || st == KV_SHORT))
        lseek(fd, base + (off_t)done, SEEK_SET);
out:
    guard_leave(db, &g);
    return st;
}

KV_API kv_status kv_put_stream(kv_db *db, const void *key, size_t klen,
                               uint64_t size, size_t chunk, kv_read_fn rd, void *ctx)
{
    vblob blob;
    mem_guard g;
    kv_status st = KV_OK;
    uint8_t *buf = NULL;
    uint64_t off = 0;

    kvi_get_release(db);
    chunk = pick_chunk(db, chunk);
    if (!(buf = kvi_malloc(chunk)))
        return kvi_err_set(&db->err, KV_NOMEM, "out of memory");
    guard_enter(db, size, &g);
    if ((st = open_new_blob(db, key, klen, size, &blob)) != KV_OK)
        goto out;
    if (db->cache)
        kvi_cache_remove(db->cache, key, klen);
    while (off < size) {
        size_t want = size - off < chunk ? (size_t)(size - off) : chunk;
        int64_t r = rd(ctx, buf, want);
        if (r < 0 || (uint64_t)r > want) {
            st = kvi_err_set(&db->err, KV_CALLBACK, "reader failed");
            break;
        }
        if (r == 0) {
            st = short_err(db, off, size);
            break;
        }
        if ((st = blob_write(db, &blob, buf, (size_t)r, off)) != KV_OK)
            break;
        off += (uint64_t)r;
    }
    st = finish_put(db, &blob, st);
out:
    guard_leave(db, &g);
    kvi_free(buf);
    return st;
}

/* ======================================================================
 * get: blob → destination fd
 * ==================================================================== */

static kv_status get_plain(kv_db *db, vblob *blob, uint64_t size, int fd, int64_t base,
                           int seekable, size_t chunk)
{
    kv_status st = KV_OK;
    uint8_t *buf = kvi_malloc(chunk);
    if (!buf)
        return kvi_err_set(&db->err, KV_NOMEM, "out of memory");
    for (uint64_t off = 0; off < size; ) {
        size_t n = size - off < chunk ? (size_t)(size - off) : chunk;
        if ((st = blob_read(db, blob, buf, n, off)) != KV_OK)
            break;
        int64_t w = full_write(fd, buf, n, base + (int64_t)off, seekable);
        if (w < 0) {
            st = kvi_err_os(&db->err, (int)-w, "write");
            break;
        }
        off += n;
    }
    kvi_free(buf);
    return st;
}

static kv_status get_uring(kv_db *db, vblob *blob, uint64_t size, int fd, int64_t base,
                           size_t chunk)
{
    ring_io r;
    ring_buf *b = r.b;
    kv_status st = KV_OK;
    uint64_t next = 0;

    if ((st = ring_open(db, &r, fd, base, chunk)) != KV_OK)
        return st;
    for (;;) {
        for (int i = 0; i < KVI_RING && next < size && st == KV_OK; i++) {
            if (b[i].busy)
                continue;
            size_t n = size - next < chunk ? (size_t)(size - next) : chunk;
            if ((st = blob_read(db, blob, b[i].p, n, next)) != KV_OK)
                break;
            if (!ring_queue(&r, &b[i], next, n, 1)) {
                /* cannot happen: ring has 2x entries; write synchronously */
                int64_t w = full_write(fd, b[i].p, n, base + (int64_t)next, 1);
                if (w < 0)
                    st = kvi_err_os(&db->err, (int)-w, "write");
            }
            next += n;
        }
        ring_buf *rb;
        int res;
        if (!ring_wait_one(db, &r, "write", &rb, &res, &st))
            break;
        if (res >= 0 && (size_t)res < rb->want && st == KV_OK) {
            int64_t w = ring_finish(&r, rb, (size_t)res, 1);
            if (w < 0)
                st = kvi_err_os(&db->err, (int)-w, "write");
        }
    }
    ring_close(&r);
    return st;
}

KV_API kv_status kv_get_to_fd(kv_db *db, const void *key, size_t klen, int fd,
                              size_t chunk, uint64_t *written)
{
    vblob blob;
    mem_guard g = {0};
    kv_status st;
    uint64_t size = 0;

    off_t base;
    int seekable = fd_transfer_start(db, fd, &chunk, &base);
    *written = 0;
    kvi_centry *e = kvi_cache_find(db->cache, key, klen);
    if (e) {
        int64_t w = full_write(fd, e->data + e->klen, e->vlen, base, seekable);
        if (w < 0)
            return kvi_err_os(&db->err, (int)-w, "write");
        if (seekable)
            lseek(fd, base + (off_t)e->vlen, SEEK_SET);
        *written = e->vlen;
        return KV_OK;
    }
    /* The size is unknown until the blob is open, and mmap_size only
     * changes outside a read transaction: lower cache/mmap for every stored
     * stream (a few pragma calls, negligible next to streaming). A read
     * transaction keeps the blob stable while we stream it. */
    guard_enter(db, UINT64_MAX, &g);
    if ((st = kvi_exec(db->db, "BEGIN", &db->err)) != KV_OK)
        goto out_nocommit;
    if ((st = open_read_blob(db, key, klen, &blob, &size)) != KV_OK)
        goto out;
    st = KV_UNSUPPORTED;
    if (seekable && size > 0 && uring_allowed())
        st = get_uring(db, &blob, size, fd, base, chunk);
    if (st == KV_UNSUPPORTED)
        st = get_plain(db, &blob, size, fd, base, seekable, chunk);
    vb_close(&blob);
    if (st == KV_OK) {
        *written = size;
        if (seekable)
            lseek(fd, base + (off_t)size, SEEK_SET);
    }
out:
    kvi_exec(db->db, "COMMIT", &db->err);
out_nocommit:
    guard_leave(db, &g);
    return st;
}

KV_API kv_status kv_get_stream(kv_db *db, const void *key, size_t klen,
                               size_t chunk, kv_write_fn wr, void *ctx,
                               uint64_t *written)
{
    vblob blob;
    mem_guard g = {0};
    kv_status st;
    uint64_t size = 0;
    uint8_t *buf = NULL;

    kvi_get_release(db);
    *written = 0;
    chunk = pick_chunk(db, chunk);
    kvi_centry *e = kvi_cache_find(db->cache, key, klen);
    if (e) {
        if (wr(ctx, e->data + e->klen, e->vlen) != 0)
            return kvi_err_set(&db->err, KV_CALLBACK, "writer failed");
        *written = e->vlen;
        return KV_OK;
    }
    guard_enter(db, UINT64_MAX, &g);
    if ((st = kvi_exec(db->db, "BEGIN", &db->err)) != KV_OK) {
        guard_leave(db, &g);
        return st;
    }
    if ((st = open_read_blob(db, key, klen, &blob, &size)) != KV_OK)
        goto out;
    if (!(buf = kvi_malloc(size < chunk ? (size ? size : 1) : chunk))) {
        st = kvi_err_set(&db->err, KV_NOMEM, "out of memory");
        vb_close(&blob);
        goto out;
    }
    uint64_t off = 0;
    while (off < size) {
        size_t n = size - off < chunk ? (size_t)(size - off) : chunk;
        if ((st = blob_read(db, &blob, buf, n, off)) != KV_OK)
            break;
        if (wr(ctx, buf, n) != 0) {
            st = kvi_err_set(&db->err, KV_CALLBACK, "writer failed");
            break;
        }
        off += n;
    }
    vb_close(&blob);
    if (st == KV_OK)
        *written = size;
out:
    kvi_exec(db->db, "COMMIT", &db->err);
    guard_leave(db, &g);
    kvi_free(buf);
    return st;
}

KV_API int kv_stream_used_uring(const kv_db *db)
{
    return db->used_uring;
}
