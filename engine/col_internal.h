/*
 * col_internal.h - structures shared by col_meta.c, col_fixed.c, col_var.c
 * and col_cache.c (kvi_col prefix). Not installed.
 *
 * Locking: every kv_col_* / kv_colvault_* entry point takes cv->mu and
 * releases it before returning; kvi_col* helpers run with cv->mu held and
 * never take it.
 */
#ifndef KVAULT_COL_INTERNAL_H
#define KVAULT_COL_INTERNAL_H

#include <pthread.h>

#include "internal.h"
#include "kv_assert.h"
#include "kvault/column.h"

/** Page cache of the column connection, KiB (col_meta.c explains). */
#define KVI_COL_CACHE_KB 20000
/** Page cache while a bulk append runs, KiB (col_fixed.c explains). */
#define KVI_COL_BULK_CACHE_KB 2048
/** Largest new, partly filled chunk written as zeroblob + blob write, bytes
 *  (its pages must stay cached in between: well under both caches). */
#define KVI_ZB_MAX ((int64_t)1 << 20)

/** Prepared statements of a vault (owned; finalized at close). */
enum {
    KVI_CS_BEGIN_IMM,    /* BEGIN IMMEDIATE */
    KVI_CS_BEGIN,        /* BEGIN (deferred, for consistent multi-chunk reads) */
    KVI_CS_COMMIT,
    KVI_CS_ROLLBACK,
    KVI_CS_SEL_LEN,      /* length of col_id */
    KVI_CS_UPD_LEN,      /* set length of col_id */
    KVI_CS_SEL_CHUNK,    /* rowid, actual_size, bytes_used of (col_id, chunk_idx) */
    KVI_CS_INS_CHUNK,    /* insert (col_id, chunk_idx, data, actual_size, bytes_used) */
    KVI_CS_UPD_CHUNK,    /* set data, actual_size, bytes_used by rowid */
    KVI_CS_UPD_USED,     /* set bytes_used by rowid */
    KVI_CS_SEL_LAST,     /* last chunk of col_id: chunk_idx, rowid, actual_size, bytes_used */
    KVI_CS_COUNT
};

/* Read cache (col_rcache.c): stored lengths and blocks of chunk bytes,
 * valid while the WAL-index header equals the tag of rc.ws (epoch numbers
 * stand for tags; an entry is valid iff its epoch == rc.epoch). */
#define KVI_RC_BLOCK 32768               /* bytes per cached block */
#define KVI_RC_WAYS 4                    /* set associativity */
#define KVI_RC_BYTES (16u << 20)         /* block memory per vault, bytes */
#define KVI_RC_MAX_READ (256u << 10)     /* larger reads bypass the cache */

typedef struct kvi_rblk {
    int64_t col_id, chunk_idx, blk;      /* key: block blk of chunk chunk_idx */
    uint64_t epoch;                      /* valid iff == rc.epoch (0: never) */
    uint64_t tick;                       /* LRU stamp */
    uint32_t len;                        /* valid bytes (< BLOCK at a chunk end) */
    uint8_t *data;                       /* KVI_RC_BLOCK bytes, owned */
} kvi_rblk;

typedef struct kvi_rcache_cv {
    kvi_walsnap ws;                      /* header the current epoch stands for (off: shm NULL) */
    int op_ok;                           /* kvi_rc_begin of the current op succeeded */
    uint64_t epoch;                      /* starts at 1 */
    kvi_rblk *blk;                       /* nsets * WAYS slots, lazily allocated */
    size_t nsets;
    uint64_t tick;
    uint64_t hits, misses, drops;        /* statistics (kv_colvault_read_cache_stats) */
} kvi_rcache_cv;

struct kv_colvault {
    sqlite3 *db;                       /* owned connection */
    pthread_mutex_t mu;                /* serialises every call on the vault and its columns */
    int64_t min_chunk, max_chunk;      /* bytes, for columns created here (unaligned) */
    sqlite3_stmt *st[KVI_CS_COUNT];    /* owned prepared statements */
    kvi_err err;                       /* last failure (message for kv_colvault_errmsg) */
    kvi_oprec_st oprec;                /* operation records (oprec.c) */
    struct kvi_wb *nest_wb;            /* bulk writeback helper of the kv_colvault_tx_begin
                                        * transaction, stopped after its COMMIT */
    int cache_locked;                  /* lock_cache flag, read by background flushers */
    kvi_rcache_cv rc;                  /* read cache (col_rcache.c) */
    kv_colvault_ckpt_fn ckpt_fn;       /* kv_colvault_set_checkpointer, NULL: SQLite's own */
    void *ckpt_ctx;
};

/** Geometry of one fixed physical column. */
typedef struct kvi_fx {
    int64_t col_id;
    int64_t elem;       /* bytes per element */
    int64_t min;        /* aligned min_chunk_bytes */
    int64_t max;        /* aligned max_chunk_bytes (M) */
    uint64_t name_hash; /* hash of col_meta.name when opened: a row that reused
                         * col_id after a delete_column is not this column */
} kvi_fx;

struct kv_col {
    kv_colvault *cv;     /* borrowed: the vault outlives its columns */
    int is_var;
    kvi_fx fx;           /* fixed column, or the _idx column of a var pair */
    kvi_fx data;         /* var pair only: the _data column (elem 1) */
    /* write-back cache (col_cache.c); all under cv->mu */
    int cache_on;
    size_t cache_cap, cache_thresh;   /* bytes */
    kv_buf cbuf;                      /* packed appends, back to back */
    size_t *clens;                    /* var only: byte length of each cached element */
    size_t cn, ccap;                  /* cached element count, clens capacity */
    double last_write_s;              /* monotonic seconds of the last cached append */
    /* read cache: stored length of fx as of epoch len_epoch (col_rcache.c) */
    int64_t len_cached;
    uint64_t len_epoch;
};

/** Stop the bulk writeback helper a bulk append started inside
 *  kv_colvault_tx_begin's transaction and restore the page cache size
 *  (col_fixed.c); after that transaction ended. cv->mu held. */
void kvi_col_nest_done(kv_colvault *cv);

/* col_meta.c */
/** BEGIN (IMMEDIATE when `immediate`; that also advances the read cache's
 *  epoch). cv->mu held, no transaction open. */
kv_status kvi_col_begin(kv_colvault *cv, int immediate);
/** COMMIT; on failure rolls back and returns the mapped status. */
kv_status kvi_col_commit(kv_colvault *cv);
/** ROLLBACK if a transaction is open. */
void kvi_col_rollback(kv_colvault *cv);
/** Body of an operation: runs with cv->mu held inside its transaction;
 *  a status other than KV_OK rolls the transaction back. */
typedef kv_status (*kvi_col_body)(kv_colvault *cv, void *arg);
/** kvi_col_begin(immediate), body(cv, arg), then COMMIT, or ROLLBACK when
 *  the body failed. cv->mu held. Returns the body's or COMMIT's status. */
kv_status kvi_col_txn(kv_colvault *cv, int immediate, kvi_col_body body, void *arg);
/** Clear the vault's error and flush col's pending appends (the first step
 *  of every column operation but append). cv->mu held. */
kv_status kvi_col_prepare_op(kv_col *col);
/** A whole entry point: take cv->mu, kvi_col_prepare_op(col) (or only
 *  clear the error when col is NULL: a vault operation), kvi_col_txn,
 *  release cv->mu. */
kv_status kvi_col_locked_txn(kv_colvault *cv, kv_col *col, int immediate, kvi_col_body body,
                             void *arg);
/** Record and return KV_INVALID "<op> range <start>..<end> beyond length <len>". */
kv_status kvi_col_range_error(kv_colvault *cv, const char *op, int64_t start, int64_t count,
                              int64_t len);
/** KV_OK when elements [start, start + count) lie within `len`, else
 *  kvi_col_range_error. Inline: the read cache's hit path checks it. */
static inline kv_status kvi_col_check_range(kv_colvault *cv, const char *op, int64_t start,
                                            int64_t count, int64_t len)
{
    return start + count <= len ? KV_OK : kvi_col_range_error(cv, op, start, count, len);
}
/** Step `s` (rows ignored), clear its bindings, reset it; KV_OK or the
 *  mapped failure recorded as "<op>: ...". */
kv_status kvi_col_step_done(kv_colvault *cv, sqlite3_stmt *s, const char *op);
kv_status kvi_fx_load(kv_colvault *cv, int64_t col_id, kvi_fx *fx);

/** One col_chunks row as the writers see it. */
typedef struct kvi_chunk {
    int exists;
    int64_t rowid;
    int64_t cap;     /* actual_size: blob length, bytes */
    int64_t used;    /* bytes_used */
} kvi_chunk;

/** Blob handle reused across the chunks of one operation (reopen is cheap). */
typedef struct kvi_blob {
    sqlite3_blob *b;
    int writable;
} kvi_blob;

/** Where byte `off` of a fixed column lies: its chunk, the offset inside
 *  it, and how many of the next n bytes stay inside that chunk. */
typedef struct kvi_span {
    int64_t chunk;    /* chunk_idx: off / M */
    uint64_t in;      /* off % M */
    uint64_t take;    /* min(M - in, n), > 0 */
} kvi_span;

/** The span at `off` of a range of n > 0 more bytes (chunk math of the
 *  addressing rule in col_fixed.c). */
static inline kvi_span kvi_fx_span(const kvi_fx *fx, uint64_t off, uint64_t n)
{
    const uint64_t M = (uint64_t)fx->max;
    KV_ASSERT_INTERNAL(M > 0 && n > 0);
    kvi_span s = {(int64_t)(off / M), off % M, 0};
    s.take = M - s.in < n ? M - s.in : n;
    KV_ASSERT_INTERNAL(s.take > 0 && s.in + s.take <= M);
    return s;
}

kv_status kvi_chunk_get(kv_colvault *cv, int64_t col_id, int64_t idx, kvi_chunk *c);
/** kvi_chunk_get of chunk `idx`, which must exist and hold at least `need`
 *  bytes: otherwise KV_CORRUPT "column N: chunk I missing or short". */
kv_status kvi_chunk_covering(kv_colvault *cv, const kvi_fx *fx, int64_t idx, uint64_t need,
                             kvi_chunk *c);
kv_status kvi_blob_at(kv_colvault *cv, kvi_blob *bl, int64_t rowid, int writable);
void kvi_blob_done(kvi_blob *bl);
/** Capacity of a chunk of capacity `cap` (<= 0: a new chunk, from min)
 *  that must hold `need` bytes: doubled until >= need, capped at max. */
int64_t kvi_grow_cap(const kvi_fx *fx, int64_t cap, int64_t need);
/** Smallest min * 2^k >= need, capped at max (first capacity of a chunk). */
int64_t kvi_first_cap(const kvi_fx *fx, int64_t need);

/* col_fixed.c (cv->mu held, inside a transaction where they write) */
/* Stored length; KV_NOTFOUND when the row is gone or its col_id now belongs
 * to another column (kvi_fx.name_hash). */
kv_status kvi_fx_length(kv_colvault *cv, const kvi_fx *fx, int64_t *len);
kv_status kvi_fx_set_length(kv_colvault *cv, const kvi_fx *fx, int64_t len);
kv_status kvi_fx_write_bytes(kv_colvault *cv, const kvi_fx *fx, uint64_t off, const uint8_t *src,
                             uint64_t n);
kv_status kvi_fx_read_bytes(kv_colvault *cv, const kvi_fx *fx, uint64_t off, uint8_t *dst,
                            uint64_t n);
kv_status kvi_fx_append_raw(kv_colvault *cv, const kvi_fx *fx, const uint8_t *src, uint64_t nelem);
kv_status kvi_fx_delete_at(kv_colvault *cv, const kvi_fx *fx, int64_t idx, int64_t len);

kv_status kvi_col_append_direct(kv_col *col, const void *data, const size_t *lens, size_t n);

/* col_var.c (cv->mu held, inside a transaction) */
kv_status kvi_var_append_raw(kv_col *col, const uint8_t *src, const size_t *lens, size_t n);
kv_status kvi_var_read(kv_col *col, int64_t start, int64_t count, kv_buf *data, uint64_t *offs);
kv_status kvi_var_write(kv_col *col, int64_t start, const uint8_t *src, const size_t *lens,
                        size_t n);
kv_status kvi_var_clear(kv_col *col);

/* col_rcache.c (cv->mu held) */
/** Find SQLite's wal-index mapping; leaves the cache off when unusable. */
void kvi_rc_open(kv_colvault *cv);
void kvi_rc_close(kv_colvault *cv);
/** Snapshot the header at the start of an operation (advancing the epoch
 *  when it changed). 1 when the cache may be used for this operation. */
int kvi_rc_begin(kv_colvault *cv);
/** 1 when the header still equals the tag (no commit since kvi_rc_begin). */
int kvi_rc_unchanged(kv_colvault *cv);
/** Drop every entry (a write through this vault). */
void kvi_rc_invalidate(kv_colvault *cv);
/** kvi_rc_begin + the cached stored length of col->fx; 0 on a miss. */
int kvi_rc_len_hit(kv_col *col, int64_t *len);
/** Remember `len`, read from SQLite after this operation's kvi_rc_begin. */
void kvi_rc_len_store(kv_col *col, int64_t len);
/** Answer a fixed read from the cache only (no SQLite). 1 when answered
 *  (*st = KV_OK, or KV_INVALID beyond the length). */
int kvi_rc_read_hit(kv_col *col, int64_t start, int64_t count, uint8_t *out, kv_status *st);
/** Read through the cache, filling missing blocks in one read transaction.
 *  *served = 0 (nothing returned, status KV_OK) when the cache is off, the
 *  read is too large, or a commit landed during the read. */
kv_status kvi_rc_read(kv_col *col, int64_t start, int64_t count, uint8_t *out, int *served);

/* col_cache.c (cv->mu held) */
kv_status kvi_cache_append_locked(kv_col *col, const void *data, const size_t *lens, size_t n);
kv_status kvi_cache_flush_locked(kv_col *col, size_t *flushed);

#endif /* KVAULT_COL_INTERNAL_H */
