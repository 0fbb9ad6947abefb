/*
 * col_fixed.c - fixed-size columns (docs/api.md §6.3) and the public kv_col_*
 * entry points (which dispatch to col_var.c for variable-size pairs).
 *
 * Addressing: logical byte b of a column lives in col_chunks row
 * (col_id, b / M) at offset b % M, M = aligned max_chunk_bytes. Every chunk
 * but the last has capacity M; capacity = blob length = actual_size.
 *
 * Growth policy (docs/api.md §6.3, part of the file format): a new chunk
 * starts at min * 2^k, the smallest such size >= the bytes it must hold
 * (capped at M); a chunk without room doubles (capped at M). Because a
 * chunk index only changes every M logical bytes, a chunk is grown to M and
 * filled before the next one starts.
 *
 * I/O: chunk bytes are read and written with SQLite's incremental BLOB API
 * (sqlite3_blob_*), so a 100-element read touches only those bytes. A new
 * chunk is inserted with the caller's buffer bound directly (SQLITE_STATIC)
 * when it covers the whole chunk. A new chunk it only partly fills is
 * inserted as a zeroblob of its capacity and the bytes written into it
 * through the blob handle when the capacity is at most KVI_ZB_MAX (its
 * pages then stay in the connection's page cache between the two steps);
 * a larger one (the tail of a bulk extend) is bound as a capacity-sized
 * image (bytes + zeros). SQLite expands a zeroblob that is not the last
 * field of the record into a buffer of its own anyway, so the image costs
 * no more, and it lets the page cache stay small (col_meta.c).
 *
 * Sections: chunk I/O | fixed operations | public entry points.
 */
#include "col_internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* chunk I/O                                                                */
/* ------------------------------------------------------------------------ */

kv_status kvi_chunk_get(kv_colvault *cv, int64_t col_id, int64_t idx, kvi_chunk *c)
{
    sqlite3_stmt *s = cv->st[KVI_CS_SEL_CHUNK];
    sqlite3_bind_int64(s, 1, col_id);
    sqlite3_bind_int64(s, 2, idx);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        c->exists = 1;
        c->rowid = sqlite3_column_int64(s, 0);
        c->cap = sqlite3_column_int64(s, 1);
        c->used = sqlite3_column_int64(s, 2);
        sqlite3_reset(s);
        return KV_OK;
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return kvi_err_sqlite(&cv->err, cv->db, rc, "select chunk");
    memset(c, 0, sizeof *c);
    return KV_OK;
}

kv_status kvi_chunk_covering(kv_colvault *cv, const kvi_fx *fx, int64_t idx, uint64_t need,
                             kvi_chunk *c)
{
    kv_status st = kvi_chunk_get(cv, fx->col_id, idx, c);
    if (st == KV_OK && (!c->exists || (uint64_t)c->cap < need))
        st = kvi_err_set(&cv->err, KV_CORRUPT,
                         "column %lld: chunk %lld missing or short (need %llu bytes)",
                         (long long)fx->col_id, (long long)idx, (unsigned long long)need);
    return st;
}

kv_status kvi_blob_at(kv_colvault *cv, kvi_blob *bl, int64_t rowid, int writable)
{
    int rc;
    if (bl->b && bl->writable == writable) {
        rc = sqlite3_blob_reopen(bl->b, rowid);
        if (rc == SQLITE_OK)
            return KV_OK;
        sqlite3_blob_close(bl->b);
        bl->b = NULL;
    } else if (bl->b) {
        sqlite3_blob_close(bl->b);
        bl->b = NULL;
    }
    rc = sqlite3_blob_open(cv->db, "main", "col_chunks", "data", rowid, writable, &bl->b);
    if (rc != SQLITE_OK) {
        bl->b = NULL;
        return kvi_err_sqlite(&cv->err, cv->db, rc, "blob open");
    }
    bl->writable = writable;
    return KV_OK;
}

void kvi_blob_done(kvi_blob *bl)
{
    if (bl->b)
        sqlite3_blob_close(bl->b);
    bl->b = NULL;
}

int64_t kvi_grow_cap(const kvi_fx *fx, int64_t cap, int64_t need)
{
    if (cap <= 0)
        cap = fx->min;
    while (cap < need && cap < fx->max)
        cap *= 2;
    return cap > fx->max ? fx->max : cap;
}

int64_t kvi_first_cap(const kvi_fx *fx, int64_t need)
{
    return kvi_grow_cap(fx, 0, need);
}

/* Write n bytes at in-chunk offset `off` of chunk `idx`, creating or growing
 * the chunk per the growth policy. off + n <= fx->max. */
static kv_status kvi_chunk_write(kv_colvault *cv, const kvi_fx *fx, kvi_blob *bl, int64_t idx,
                                 int64_t off, const uint8_t *src, int64_t n)
{
    kvi_chunk c;
    int64_t end = off + n;
    KV_ASSERT_INTERNAL(idx >= 0 && off >= 0 && n > 0 && end <= fx->max);
    kv_status st = kvi_chunk_get(cv, fx->col_id, idx, &c);
    sqlite3_stmt *s;
    uint8_t *tmp = NULL;
    int rc;

    if (st != KV_OK)
        return st;
    if (!c.exists) {
        int64_t cap = kvi_first_cap(fx, end);
        s = cv->st[KVI_CS_INS_CHUNK];
        sqlite3_bind_int64(s, 1, fx->col_id);
        sqlite3_bind_int64(s, 2, idx);
        int whole = off == 0 && n == cap;
        if (!whole && cap > KVI_ZB_MAX) { /* image: zeros, the bytes, zeros */
            tmp = kvi_malloc((size_t)cap);
            if (!tmp)
                return KV_NOMEM;
            memset(tmp, 0, (size_t)off);
            memcpy(tmp + off, src, (size_t)n);
            memset(tmp + end, 0, (size_t)(cap - end));
            src = tmp;
            whole = 1;
        }
        if (whole) /* the whole chunk's bytes: bound as they are */
            sqlite3_bind_blob64(s, 3, src, (sqlite3_uint64)cap, SQLITE_STATIC);
        else /* zeros first, then the bytes written through the blob handle */
            sqlite3_bind_zeroblob64(s, 3, (sqlite3_uint64)cap);
        sqlite3_bind_int64(s, 4, cap);
        sqlite3_bind_int64(s, 5, end);
        st = kvi_col_step_done(cv, s, "insert chunk");
        kvi_free(tmp);
        if (st != KV_OK)
            return st;
        if (whole)
            return KV_OK;
        st = kvi_blob_at(cv, bl, sqlite3_last_insert_rowid(cv->db), 1);
        if (st != KV_OK)
            return st;
        rc = sqlite3_blob_write(bl->b, src, (int)n, (int)off);
        if (rc != SQLITE_OK)
            return kvi_err_sqlite(&cv->err, cv->db, rc, "blob write");
        return KV_OK;
    }
    if (end <= c.cap) {
        st = kvi_blob_at(cv, bl, c.rowid, 1);
        if (st != KV_OK)
            return st;
        rc = sqlite3_blob_write(bl->b, src, (int)n, (int)off);
        if (rc != SQLITE_OK)
            return kvi_err_sqlite(&cv->err, cv->db, rc, "blob write");
        if (end > c.used) {
            s = cv->st[KVI_CS_UPD_USED];
            sqlite3_bind_int64(s, 1, c.rowid);
            sqlite3_bind_int64(s, 2, end);
            return kvi_col_step_done(cv, s, "update bytes_used");
        }
        return KV_OK;
    }
    /* Grow: double (capped at M) until the write fits; rewrite the blob. */
    int64_t cap = kvi_grow_cap(fx, c.cap, end);
    if (cap < end)
        cap = end; /* defensive: cannot happen while off + n <= M */
    tmp = kvi_calloc(1, (size_t)cap);
    if (!tmp)
        return KV_NOMEM;
    if (c.cap > 0) {
        st = kvi_blob_at(cv, bl, c.rowid, 0);
        if (st == KV_OK) {
            rc = sqlite3_blob_read(bl->b, tmp, (int)c.cap, 0);
            if (rc != SQLITE_OK)
                st = kvi_err_sqlite(&cv->err, cv->db, rc, "blob read");
        }
        kvi_blob_done(bl); /* the UPDATE below would abort it anyway */
        if (st != KV_OK) {
            kvi_free(tmp);
            return st;
        }
    }
    memcpy(tmp + off, src, (size_t)n);
    s = cv->st[KVI_CS_UPD_CHUNK];
    sqlite3_bind_int64(s, 1, c.rowid);
    sqlite3_bind_blob64(s, 2, tmp, (sqlite3_uint64)cap, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, cap);
    sqlite3_bind_int64(s, 4, end > c.used ? end : c.used);
    st = kvi_col_step_done(cv, s, "grow chunk");
    kvi_free(tmp);
    return st;
}

/* Bulk writes (>= KVI_WB_MIN bytes in one operation): block preallocation
 * and asynchronous writeback of the WAL and database files.
 *
 * A bulk extend writes every page twice through the kernel's page cache:
 * into the WAL (spilled while the transaction runs, the rest at commit),
 * then, because the commit crosses wal_autocheckpoint, from the WAL into
 * the database file by the checkpoint SQLite runs inside the COMMIT. With
 * synchronous=NORMAL that checkpoint fdatasyncs the WAL before copying and
 * the database file after. Two costs are avoidable without changing what
 * SQLite writes, syncs or reports:
 *
 *  - Preallocation. Each write past the end of an ext4 file reserves
 *    delayed-allocation blocks page by page. We fallocate() the region
 *    the operation will write, with FALLOC_FL_KEEP_SIZE so the file sizes
 *    SQLite sees do not change: in the WAL, from offset 0 to the end of the
 *    frames we expect (a write transaction restarts the WAL at frame 1 when
 *    the previous checkpoint completed, else appends after mxFrame, read
 *    from the wal-index header); in the database file, the estimated pages
 *    past its end. A complete checkpoint ends by truncating the database
 *    file to its page count, which releases any block we over-estimated;
 *    the WAL keeps at most KVI_WB_SLACK frames of unused blocks until it is
 *    deleted. Measured (80 MB, this VM, 12 runs each): 80 MB of 32 KiB
 *    pwrite()s into a new file 24.7 ms -> 17.2 ms median with the blocks
 *    preallocated; fdatasync unchanged.
 *
 *  - Writeback. Left alone, the kernel keeps all those pages dirty until
 *    each fdatasync, which then waits for every byte while the CPU idles.
 *    While the operation runs, a helper thread calls Linux
 *    sync_file_range(SYNC_FILE_RANGE_WRITE) on both files every
 *    KVI_WB_PERIOD_US: it queues dirty pages for the disk and returns; no
 *    durability promise, the same fdatasyncs still run and wait for the
 *    same bytes. The disk writes while SQLite copies, and block allocation
 *    and I/O submission run on the helper's core. The helper is joined
 *    before the operation returns, so no work is left for the caller's next
 *    call. Measured: COMMIT of a 10M-value extend 125 ms -> 45 ms median.
 *
 *  - Page cache. The connection's page cache (KVI_COL_CACHE_KB) is sized
 *    for random reads; a bulk append only streams pages through it into
 *    the WAL, and every page the cache grows by is fresh memory. While the
 *    operation runs the cache is set to KVI_COL_BULK_CACHE_KB (PRAGMA
 *    cache_size, this connection only) and restored after. Measured on a
 *    10M-value extend into a new vault, interleaved runs: ~115 -> ~100 ms
 *    median.
 *
 * Descriptors (both stay open while the helper runs; cv->mu is held and the
 * connection stays open for the operation; every failure here is ignored:
 * it can only cost speed):
 *  - WAL: we open the -wal file ourselves (O_RDWR, never created) and close
 *    it when the operation ends. SQLite takes no POSIX locks on the -wal
 *    file (its locks are on the database file and the -shm), so closing
 *    our descriptor releases nothing of SQLite's.
 *  - Database file: we must not open and close a descriptor of our own.
 *    SQLite holds POSIX record locks on it (in WAL mode every connection
 *    keeps a SHARED lock for its whole life; that lock is how the last
 *    connection to close knows it may checkpoint and delete the WAL), and
 *    closing any descriptor of a file releases all of the process's locks
 *    on it. So we borrow a descriptor the process already holds read-write
 *    on the same file (device and inode), found in /proc/self/fd: normally
 *    one of SQLite's (the application may hold one too: kvi_wb_db_fd
 *    re-checks the file before each use). We never close it. While our connection holds its lock on
 *    the file (it does for the whole operation), SQLite's unix VFS closes
 *    no descriptor of that file (it defers the close of a connection's
 *    descriptor while any lock is held on the file), so it stays valid. */
#define KVI_WB_MIN ((uint64_t)16 << 20)
#define KVI_WB_PERIOD_US 2000
#define KVI_WB_SLACK 16       /* frames beyond the estimate (btree pages) */
#define KVI_WAL_HDR 32        /* WAL file header, bytes (walformat.html) */
#define KVI_WAL_FRAME_HDR 24  /* WAL frame header, bytes */

typedef struct kvi_wb {
    pthread_t th;
    pthread_mutex_t m;
    pthread_cond_t c;
    int stop;
    int started;
    int fd[2]; /* WAL (owned), database (borrowed); -1 when unknown */
    dev_t db_dev; /* the database file's identity, checked before each use */
    ino_t db_ino; /* of the borrowed descriptor (kvi_wb_db_fd) */
} kvi_wb;

/* Our own read-write descriptor of the existing regular file `path`, or -1.
 * Only for files SQLite holds no POSIX locks on (see above). */
static int kvi_open_unlocked_file(const char *path)
{
    struct stat sb;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd >= 0 && (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* A descriptor this process already holds read-write on the regular file
 * `path` (same device and inode), found in /proc/self/fd, or -1. Borrowed:
 * the caller never closes it (see above for why it stays valid). */
static int kvi_find_open_fd(const char *path, dev_t *dev, ino_t *ino)
{
    struct stat want, sb;
    struct dirent *e;
    int found = -1;
    if (stat(path, &want) != 0 || !S_ISREG(want.st_mode))
        return -1;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    while (found < 0 && (e = readdir(d)) != NULL) {
        char *end;
        long fd = strtol(e->d_name, &end, 10);
        if (end == e->d_name || *end || fd < 0 || fd == dirfd(d))
            continue;
        if (fstat((int)fd, &sb) == 0 && sb.st_dev == want.st_dev && sb.st_ino == want.st_ino &&
            (fcntl((int)fd, F_GETFL) & O_ACCMODE) == O_RDWR)
            found = (int)fd;
    }
    closedir(d);
    *dev = want.st_dev;
    *ino = want.st_ino;
    return found;
}

/* The borrowed database descriptor, or -1 when it no longer refers to the
 * database file. The descriptor found may be one the application opened on
 * the same file rather than SQLite's; if another thread closes it and the
 * number is reused, this check (made before every fallocate and
 * sync_file_range) stops the helper from touching the other file. What the
 * check cannot close is the window between it and the call; a call in that
 * window is a writeback hint or a KEEP_SIZE preallocation of some other
 * file: it changes no byte of any file. If *st is not NULL it gets the
 * fstat of the file. */
static int kvi_wb_db_fd(const kvi_wb *w, struct stat *st)
{
    struct stat sb;
    if (w->fd[1] < 0 || fstat(w->fd[1], &sb) != 0 || sb.st_dev != w->db_dev ||
        sb.st_ino != w->db_ino)
        return -1;
    if (st)
        *st = sb;
    return w->fd[1];
}

static void *kvi_wb_main(void *arg)
{
    kvi_wb *w = arg;
    pthread_mutex_lock(&w->m);
    while (!w->stop) {
        struct timespec ts;
        pthread_mutex_unlock(&w->m);
        const int fds[2] = {w->fd[0], kvi_wb_db_fd(w, NULL)};
        for (int i = 0; i < 2; i++)
            if (fds[i] >= 0)
                (void)sync_file_range(fds[i], 0, 0, SYNC_FILE_RANGE_WRITE);
        pthread_mutex_lock(&w->m);
        if (w->stop)
            break;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += KVI_WB_PERIOD_US * 1000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&w->c, &w->m, &ts);
    }
    pthread_mutex_unlock(&w->m);
    return NULL;
}

/* Page size of the main database (0 when unknown). */
static int64_t kvi_page_size(sqlite3 *db)
{
    sqlite3_stmt *s = NULL;
    int64_t p = 0;
    if (sqlite3_prepare_v2(db, "PRAGMA main.page_size", -1, &s, NULL) == SQLITE_OK &&
        sqlite3_step(s) == SQLITE_ROW)
        p = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return p;
}

/* fallocate(KEEP_SIZE) the WAL frames and database pages an operation
 * writing `bytes` of column data will add (see above). */
static void kvi_wb_prealloc(kv_colvault *cv, const kvi_wb *w, uint64_t bytes)
{
    const int64_t P = kvi_page_size(cv->db);
    struct stat sb;
    if (P < 512)
        return;
    /* overflow pages carry P - 4 bytes each */
    const int64_t pages = (int64_t)(bytes / (uint64_t)(P - 4)) + KVI_WB_SLACK;
    if (w->fd[0] >= 0) {
        uint32_t mx, backfill;
        kvi_walsnap_frames(&cv->rc.ws, &mx, &backfill); /* both 0 when unknown */
        /* frame index the transaction starts at */
        const int64_t first = mx == backfill ? 0 : (int64_t)mx;
        (void)fallocate(w->fd[0], FALLOC_FL_KEEP_SIZE, 0,
                        (off_t)(KVI_WAL_HDR + (first + pages) * (P + KVI_WAL_FRAME_HDR)));
    }
    const int dbfd = kvi_wb_db_fd(w, &sb);
    if (dbfd >= 0)
        (void)fallocate(dbfd, FALLOC_FL_KEEP_SIZE, sb.st_size, (off_t)(pages * P));
}

/* Close the descriptor we own (the WAL's); the borrowed one stays open. */
static void kvi_wb_close_fds(kvi_wb *w)
{
    if (w->fd[0] >= 0)
        close(w->fd[0]);
    w->fd[0] = w->fd[1] = -1;
}

/* Start preallocation and the writeback helper for an operation writing
 * `bytes` (called inside the write transaction, so the WAL is open). Leaves
 * w->started 0 when the helper does not run. */
static void kvi_wb_start(kv_colvault *cv, kvi_wb *w, uint64_t bytes)
{
    pthread_condattr_t ca;
    memset(w, 0, sizeof *w);
    w->fd[0] = w->fd[1] = -1;
    if (bytes < KVI_WB_MIN)
        return;
    sqlite3_filename db = sqlite3_db_filename(cv->db, "main");
    if (!db || !db[0]) /* "": a temporary or in-memory database */
        return;
    const char *wal = sqlite3_filename_wal(db);
    w->fd[0] = wal && wal[0] ? kvi_open_unlocked_file(wal) : -1;
    w->fd[1] = kvi_find_open_fd(db, &w->db_dev, &w->db_ino);
    if (w->fd[0] < 0 && w->fd[1] < 0)
        return;
    kvi_wb_prealloc(cv, w, bytes);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->c, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&w->m, NULL);
    if (pthread_create(&w->th, NULL, kvi_wb_main, w) != 0) {
        pthread_cond_destroy(&w->c);
        pthread_mutex_destroy(&w->m);
        kvi_wb_close_fds(w);
        return;
    }
    w->started = 1;
}

/* PRAGMA cache_size=-kb on the column connection (errors ignored: only
 * speed depends on it). */
static void kvi_set_cache_kb(kv_colvault *cv, int kb)
{
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA main.cache_size=%d", -kb);
    (void)sqlite3_exec(cv->db, sql, NULL, NULL, NULL);
}

/* Stop and join the helper (no-op when it did not start). */
static void kvi_wb_stop(kvi_wb *w)
{
    if (!w->started)
        return;
    pthread_mutex_lock(&w->m);
    w->stop = 1;
    pthread_cond_signal(&w->c);
    pthread_mutex_unlock(&w->m);
    pthread_join(w->th, NULL);
    pthread_cond_destroy(&w->c);
    pthread_mutex_destroy(&w->m);
    kvi_wb_close_fds(w);
    w->started = 0;
}

/* One chunk's part of a byte range: bytes [s.in, s.in + s.take) of chunk
 * s.chunk and buf (the caller's bytes to write or room to read into). */
typedef kv_status (*kvi_piece_fn)(kv_colvault *cv, const kvi_fx *fx, kvi_blob *bl, kvi_span s,
                                  uint8_t *buf);

/* Run `piece` over bytes [off, off + n) of column fx chunk by chunk, with
 * one blob handle reused across the chunks; stops at the first failure. */
static kv_status kvi_fx_each_chunk(kv_colvault *cv, const kvi_fx *fx, uint64_t off, uint8_t *buf,
                                   uint64_t n, kvi_piece_fn piece)
{
    kvi_blob bl = {0};
    kv_status st = KV_OK;
    while (n > 0 && st == KV_OK) {
        kvi_span s = kvi_fx_span(fx, off, n);
        st = piece(cv, fx, &bl, s, buf);
        off += s.take;
        buf += s.take;
        n -= s.take;
    }
    kvi_blob_done(&bl);
    return st;
}

static kv_status kvi_write_piece(kv_colvault *cv, const kvi_fx *fx, kvi_blob *bl, kvi_span s,
                                 uint8_t *buf)
{
    return kvi_chunk_write(cv, fx, bl, s.chunk, (int64_t)s.in, buf, (int64_t)s.take);
}

static kv_status kvi_read_piece(kv_colvault *cv, const kvi_fx *fx, kvi_blob *bl, kvi_span s,
                                uint8_t *buf)
{
    kvi_chunk c;
    kv_status st = kvi_chunk_covering(cv, fx, s.chunk, s.in + s.take, &c);
    if (st == KV_OK)
        st = kvi_blob_at(cv, bl, c.rowid, 0);
    if (st != KV_OK)
        return st;
    int rc = sqlite3_blob_read(bl->b, buf, (int)s.take, (int)s.in);
    return rc == SQLITE_OK ? KV_OK : kvi_err_sqlite(&cv->err, cv->db, rc, "blob read");
}

kv_status kvi_fx_write_bytes(kv_colvault *cv, const kvi_fx *fx, uint64_t off, const uint8_t *src,
                             uint64_t n)
{
    /* kvi_write_piece only reads buf */
    return kvi_fx_each_chunk(cv, fx, off, (uint8_t *)src, n, kvi_write_piece);
}

kv_status kvi_fx_read_bytes(kv_colvault *cv, const kvi_fx *fx, uint64_t off, uint8_t *dst,
                            uint64_t n)
{
    return kvi_fx_each_chunk(cv, fx, off, dst, n, kvi_read_piece);
}

/* ------------------------------------------------------------------------ */
/* fixed operations (cv->mu held, inside a write transaction)               */
/* ------------------------------------------------------------------------ */

/* FNV-1a, 64-bit (Fowler, Noll, Vo; public domain) of a col_meta name. */
static uint64_t kvi_name_hash(const unsigned char *p, int n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (int i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

/* Length and name hash of the col_meta row fx->col_id. */
static kv_status kvi_fx_row(kv_colvault *cv, const kvi_fx *fx, int64_t *len, uint64_t *hash)
{
    sqlite3_stmt *s = cv->st[KVI_CS_SEL_LEN];
    sqlite3_bind_int64(s, 1, fx->col_id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *len = sqlite3_column_int64(s, 0);
        *hash = kvi_name_hash(sqlite3_column_text(s, 1), sqlite3_column_bytes(s, 1));
        sqlite3_reset(s);
        /* a file's col_meta row is input: a negative length is refused
         * here, before any cache or caller takes it as a count */
        if (*len < 0)
            return kvi_err_set(&cv->err, KV_CORRUPT, "col_meta row %lld has a negative length (%lld)",
                               (long long)fx->col_id, (long long)*len);
        return KV_OK;
    }
    sqlite3_reset(s);
    if (rc == SQLITE_DONE)
        return kvi_err_set(&cv->err, KV_NOTFOUND, "column %lld no longer exists", (long long)fx->col_id);
    return kvi_err_sqlite(&cv->err, cv->db, rc, "select length");
}

kv_status kvi_fx_length(kv_colvault *cv, const kvi_fx *fx, int64_t *len)
{
    uint64_t hash = 0;
    kv_status st = kvi_fx_row(cv, fx, len, &hash);
    if (st == KV_OK && hash != fx->name_hash) /* deleted, and its col_id reused */
        st = kvi_err_set(&cv->err, KV_NOTFOUND, "column %lld no longer exists", (long long)fx->col_id);
    return st;
}

/* kvi_fx_load, then remember the row's name (kvi_fx.name_hash). */
static kv_status kvi_fx_open(kv_colvault *cv, int64_t col_id, kvi_fx *fx)
{
    int64_t len;
    kv_status st = kvi_fx_load(cv, col_id, fx);
    return st == KV_OK ? kvi_fx_row(cv, fx, &len, &fx->name_hash) : st;
}

kv_status kvi_fx_set_length(kv_colvault *cv, const kvi_fx *fx, int64_t len)
{
    sqlite3_stmt *s = cv->st[KVI_CS_UPD_LEN];
    sqlite3_bind_int64(s, 1, fx->col_id);
    sqlite3_bind_int64(s, 2, len);
    return kvi_col_step_done(cv, s, "update length");
}

kv_status kvi_fx_append_raw(kv_colvault *cv, const kvi_fx *fx, const uint8_t *src, uint64_t nelem)
{
    int64_t len = 0;
    kv_status st = kvi_fx_length(cv, fx, &len);
    if (st != KV_OK)
        return st;
    st = kvi_fx_write_bytes(cv, fx, (uint64_t)len * (uint64_t)fx->elem, src,
                            nelem * (uint64_t)fx->elem);
    if (st != KV_OK)
        return st;
    return kvi_fx_set_length(cv, fx, len + (int64_t)nelem);
}

kv_status kvi_fx_delete_at(kv_colvault *cv, const kvi_fx *fx, int64_t idx, int64_t len)
{
    uint64_t E = (uint64_t)fx->elem;
    uint64_t tail = (uint64_t)(len - idx - 1) * E;
    uint8_t *buf = kvi_malloc(tail > E ? tail : E);
    kv_status st = KV_OK;
    if (!buf)
        return KV_NOMEM;
    if (tail) {
        st = kvi_fx_read_bytes(cv, fx, (uint64_t)(idx + 1) * E, buf, tail);
        if (st == KV_OK)
            st = kvi_fx_write_bytes(cv, fx, (uint64_t)idx * E, buf, tail);
    }
    if (st == KV_OK) { /* unused capacity is zeros (docs/api.md §6.3) */
        memset(buf, 0, E);
        st = kvi_fx_write_bytes(cv, fx, (uint64_t)(len - 1) * E, buf, E);
    }
    kvi_free(buf);
    if (st == KV_OK)
        st = kvi_fx_set_length(cv, fx, len - 1);
    return st;
}

/* ------------------------------------------------------------------------ */
/* public entry points                                                      */
/* ------------------------------------------------------------------------ */

static kv_status kvi_col_new(kv_colvault *cv, kv_col **out)
{
    kv_col *c = kvi_calloc(1, sizeof *c);
    if (!c)
        return KV_NOMEM;
    c->cv = cv;
    kv_buf_init(&c->cbuf);
    *out = c;
    return KV_OK;
}

kv_status kv_col_open_fixed(kv_colvault *cv, int64_t col_id, kv_col **out)
{
    kv_col *c = NULL;
    kv_status st = kvi_col_new(cv, &c);
    if (st != KV_OK)
        return st;
    pthread_mutex_lock(&cv->mu);
    st = kvi_fx_open(cv, col_id, &c->fx);
    pthread_mutex_unlock(&cv->mu);
    if (st != KV_OK) {
        kvi_free(c);
        return st;
    }
    *out = c;
    return KV_OK;
}

kv_status kv_col_open_var(kv_colvault *cv, int64_t data_id, int64_t idx_id, kv_col **out)
{
    kv_col *c = NULL;
    kv_status st = kvi_col_new(cv, &c);
    if (st != KV_OK)
        return st;
    c->is_var = 1;
    pthread_mutex_lock(&cv->mu);
    st = kvi_fx_open(cv, idx_id, &c->fx);
    if (st == KV_OK)
        st = kvi_fx_open(cv, data_id, &c->data);
    if (st == KV_OK && c->fx.elem != KV_COL_IDX_ELEM)
        st = kvi_err_set(&cv->err, KV_CORRUPT, "index column %lld has elem_size %lld, not 12",
                         (long long)idx_id, (long long)c->fx.elem);
    pthread_mutex_unlock(&cv->mu);
    if (st != KV_OK) {
        kvi_free(c);
        return st;
    }
    *out = c;
    return KV_OK;
}

void kv_col_close(kv_col *col)
{
    if (!col)
        return;
    pthread_mutex_lock(&col->cv->mu);
    if (col->cache_on)
        kvi_cache_flush_locked(col, NULL);
    pthread_mutex_unlock(&col->cv->mu);
    kv_buf_free(&col->cbuf);
    kvi_free(col->clens);
    kvi_free(col);
}

int kv_col_is_var(const kv_col *col)
{
    return col->is_var;
}

int64_t kv_col_elem_size(const kv_col *col)
{
    return col->is_var ? 0 : col->fx.elem;
}

kv_status kv_col_len(kv_col *col, int64_t *n)
{
    kv_colvault *cv = col->cv;
    kv_status st = KV_OK;
    pthread_mutex_lock(&cv->mu);
    if (!kvi_rc_len_hit(col, n)) {
        st = kvi_fx_length(cv, &col->fx, n);
        if (st == KV_OK)
            kvi_rc_len_store(col, *n);
    }
    if (st == KV_OK)
        *n += (int64_t)col->cn;
    pthread_mutex_unlock(&cv->mu);
    return st;
}

kv_status kv_col_len_try(kv_col *col, int64_t *n, int *hit)
{
    kv_colvault *cv = col->cv;
    *hit = 0;
    if (pthread_mutex_trylock(&cv->mu) != 0)
        return KV_OK;
    if (kvi_rc_len_hit(col, n)) {
        *n += (int64_t)col->cn;
        *hit = 1;
    }
    pthread_mutex_unlock(&cv->mu);
    return KV_OK;
}

/* Append without the cache: one transaction (cv->mu held). */
kv_status kvi_col_append_direct(kv_col *col, const void *data, const size_t *lens, size_t n)
{
    kv_colvault *cv = col->cv;
    kvi_wb wb;
    uint64_t bytes = 0;
    kv_status st = kvi_col_begin(cv, 1);
    if (st != KV_OK)
        return st;
    if (col->is_var) {
        for (size_t i = 0; i < n; i++)
            bytes += lens[i];
    } else {
        bytes = (uint64_t)n * (uint64_t)col->fx.elem;
    }
    const int bulk = bytes >= KVI_WB_MIN;
    /* inside kv_colvault_tx_begin's transaction the helper and the bulk
     * cache size last until its COMMIT (kvi_col_nest_done) */
    kvi_wb *w = &wb;
    if (bulk && cv->err.nest && !cv->nest_wb && (cv->nest_wb = kvi_malloc(sizeof *cv->nest_wb)))
        w = cv->nest_wb;
    else if (cv->err.nest)
        bytes = 0;   /* one helper per transaction, or none */
    if (bytes >= KVI_WB_MIN)
        kvi_set_cache_kb(cv, KVI_COL_BULK_CACHE_KB);
    kvi_wb_start(cv, w, bytes);
    if (col->is_var)
        st = kvi_var_append_raw(col, data, lens, n);
    else
        st = kvi_fx_append_raw(cv, &col->fx, data, n);
    if (st == KV_OK)
        st = kvi_col_commit(cv);
    else
        kvi_col_rollback(cv);
    if (w == &wb) {
        kvi_wb_stop(&wb);
        if (bytes >= KVI_WB_MIN)
            kvi_set_cache_kb(cv, KVI_COL_CACHE_KB);
    }
    return st;
}

void kvi_col_nest_done(kv_colvault *cv)
{
    if (!cv->nest_wb)
        return;
    kvi_wb_stop(cv->nest_wb);
    kvi_free(cv->nest_wb);
    cv->nest_wb = NULL;
    kvi_set_cache_kb(cv, KVI_COL_CACHE_KB);
}

kv_status kv_col_append(kv_col *col, const void *data, const size_t *lens, size_t n)
{
    kv_colvault *cv = col->cv;
    kv_status st;
    if (n == 0)
        return KV_OK;
    pthread_mutex_lock(&cv->mu);
    kvi_err_clear(&cv->err);
    if (col->cache_on)
        st = kvi_cache_append_locked(col, data, lens, n);
    else
        st = kvi_col_append_direct(col, data, lens, n);
    pthread_mutex_unlock(&cv->mu);
    return st;
}

/* Arguments of the operation bodies below (kvi_col_body). */
typedef struct kvi_col_op {
    kv_col *col;
    int64_t start;        /* first element, or the index of insert/delete */
    int64_t count;        /* elements read or written */
    const void *src;      /* write/insert: packed elements */
    const size_t *lens;   /* write: element lengths (var columns) */
    void *out;            /* read_fixed: count * elem bytes */
    kv_buf *data;         /* read_var: element bytes are appended */
    uint64_t *offs;       /* read_var: count + 1 offsets into data */
} kvi_col_op;

static kv_status kvi_fx_read_body(kv_colvault *cv, void *arg)
{
    const kvi_col_op *a = arg;
    const kvi_fx *fx = &a->col->fx;
    int64_t len = 0;
    kv_status st = kvi_fx_length(cv, fx, &len);
    if (st == KV_OK)
        st = kvi_col_check_range(cv, "read", a->start, a->count, len);
    if (st == KV_OK && a->count > 0)
        st = kvi_fx_read_bytes(cv, fx, (uint64_t)a->start * (uint64_t)fx->elem, a->out,
                               (uint64_t)a->count * (uint64_t)fx->elem);
    return st;
}

kv_status kv_col_read_fixed(kv_col *col, int64_t start, int64_t count, void *out)
{
    kv_colvault *cv = col->cv;
    kvi_col_op a = {.col = col, .start = start, .count = count, .out = out};
    kv_status st;
    if (col->is_var || start < 0 || count < 0)
        return KV_INVALID;
    pthread_mutex_lock(&cv->mu);
    st = kvi_col_prepare_op(col);
    if (st == KV_OK) {
        int served = 0;
        st = kvi_rc_read(col, start, count, out, &served);
        if (st == KV_OK && !served)
            st = kvi_col_txn(cv, 0, kvi_fx_read_body, &a);
    }
    pthread_mutex_unlock(&cv->mu);
    return st;
}

kv_status kv_col_read_fixed_try(kv_col *col, int64_t start, int64_t count, void *out, int *hit)
{
    kv_colvault *cv = col->cv;
    kv_status st = KV_OK;
    *hit = 0;
    if (col->is_var || start < 0 || count < 0)
        return KV_INVALID;
    if (pthread_mutex_trylock(&cv->mu) != 0)
        return KV_OK;
    if (!(col->cache_on && col->cn)) { /* pending appends: the read must flush first */
        kvi_err_clear(&cv->err);
        *hit = kvi_rc_read_hit(col, start, count, out, &st);
    }
    pthread_mutex_unlock(&cv->mu);
    return *hit ? st : KV_OK;
}

static kv_status kvi_var_read_body(kv_colvault *cv, void *arg)
{
    const kvi_col_op *a = arg;
    (void)cv;
    return kvi_var_read(a->col, a->start, a->count, a->data, a->offs);
}

kv_status kv_col_read_var(kv_col *col, int64_t start, int64_t count, kv_buf *data, uint64_t *offs)
{
    kvi_col_op a = {.col = col, .start = start, .count = count, .data = data, .offs = offs};
    if (!col->is_var || start < 0 || count < 0)
        return KV_INVALID;
    return kvi_col_locked_txn(col->cv, col, 0, kvi_var_read_body, &a);
}

static kv_status kvi_col_write_body(kv_colvault *cv, void *arg)
{
    const kvi_col_op *a = arg;
    kv_col *col = a->col;
    int64_t len = 0;
    kv_status st = kvi_fx_length(cv, &col->fx, &len);
    if (st == KV_OK)
        st = kvi_col_check_range(cv, "write", a->start, a->count, len);
    if (st != KV_OK)
        return st;
    if (col->is_var)
        return kvi_var_write(col, a->start, a->src, a->lens, (size_t)a->count);
    return kvi_fx_write_bytes(cv, &col->fx, (uint64_t)a->start * (uint64_t)col->fx.elem, a->src,
                              (uint64_t)a->count * (uint64_t)col->fx.elem);
}

kv_status kv_col_write(kv_col *col, int64_t start, const void *data, const size_t *lens, size_t n)
{
    kvi_col_op a = {.col = col, .start = start, .count = (int64_t)n, .src = data, .lens = lens};
    if (start < 0)
        return KV_INVALID;
    if (n == 0)
        return KV_OK;
    return kvi_col_locked_txn(col->cv, col, 1, kvi_col_write_body, &a);
}

static kv_status kvi_col_insert_body(kv_colvault *cv, void *arg)
{
    const kvi_col_op *a = arg;
    const kvi_fx *fx = &a->col->fx;
    const int64_t idx = a->start;
    int64_t len = 0;
    kv_status st = kvi_fx_length(cv, fx, &len);
    if (st == KV_OK && (idx < 0 || idx > len))
        st = kvi_err_set(&cv->err, KV_INVALID, "insert index %lld outside 0..%lld", (long long)idx,
                         (long long)len);
    if (st != KV_OK)
        return st;
    /* the element, then the tail it displaces, rewritten one element on */
    const uint64_t E = (uint64_t)fx->elem;
    const uint64_t tail = (uint64_t)(len - idx) * E;
    uint8_t *buf = kvi_malloc(E + tail);
    if (!buf)
        return KV_NOMEM;
    memcpy(buf, a->src, E);
    if (tail)
        st = kvi_fx_read_bytes(cv, fx, (uint64_t)idx * E, buf + E, tail);
    if (st == KV_OK)
        st = kvi_fx_write_bytes(cv, fx, (uint64_t)idx * E, buf, E + tail);
    kvi_free(buf);
    if (st == KV_OK)
        st = kvi_fx_set_length(cv, fx, len + 1);
    return st;
}

kv_status kv_col_insert(kv_col *col, int64_t idx, const void *elem)
{
    kvi_col_op a = {.col = col, .start = idx, .src = elem};
    if (col->is_var)
        return KV_UNSUPPORTED;
    return kvi_col_locked_txn(col->cv, col, 1, kvi_col_insert_body, &a);
}

static kv_status kvi_col_delete_body(kv_colvault *cv, void *arg)
{
    const kvi_col_op *a = arg;
    const int64_t idx = a->start;
    int64_t len = 0;
    kv_status st = kvi_fx_length(cv, &a->col->fx, &len);
    if (st == KV_OK && (idx < 0 || idx >= len))
        st = kvi_err_set(&cv->err, KV_INVALID, "delete index %lld outside 0..%lld", (long long)idx,
                         (long long)len);
    if (st == KV_OK)
        st = kvi_fx_delete_at(cv, &a->col->fx, idx, len); /* var: the _idx entries shift */
    return st;
}

kv_status kv_col_delete_at(kv_col *col, int64_t idx)
{
    kvi_col_op a = {.col = col, .start = idx};
    return kvi_col_locked_txn(col->cv, col, 1, kvi_col_delete_body, &a);
}

static kv_status kvi_col_clear_body(kv_colvault *cv, void *arg)
{
    const kvi_col_op *a = arg;
    int64_t len = 0;
    kv_status st = kvi_fx_length(cv, &a->col->fx, &len); /* still this column? */
    if (st == KV_OK)
        st = kvi_fx_set_length(cv, &a->col->fx, 0);
    if (st == KV_OK && a->col->is_var)
        st = kvi_var_clear(a->col);
    return st;
}

kv_status kv_col_clear(kv_col *col)
{
    kvi_col_op a = {.col = col};
    return kvi_col_locked_txn(col->cv, col, 1, kvi_col_clear_body, &a);
}
