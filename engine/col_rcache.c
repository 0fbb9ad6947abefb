/*
 * col_rcache.c - process-local read cache of a column vault: stored
 * lengths and 32 KiB blocks of chunk bytes, valid while SQLite's
 * WAL-index header is unchanged.
 *
 * Why: a 100-element slice read that goes to SQLite pays for a WAL read
 * transaction (fcntl() lock and unlock of a read mark: strace showed ~4
 * fcntl per Python slice, one transaction for the length and one for the
 * bytes), a lookup of the chunk row and sqlite3_blob_open, which compiles
 * a statement on every call and then walks the chunk's overflow-page chain
 * up to the offset. That is ~27 us per slice (37k slices/s). A hit here is
 * a 96-byte read of shared memory, a 48-byte compare and a memcpy.
 *
 * Validation: walsnap.c (snapshots of SQLite's WAL-index header, shared
 * with the KVault read cache; it gives the full argument). Applied here:
 *  - each cached value is read from SQLite after the snapshot S of the
 *    operation that read it was taken, so it is at least as new as S, and
 *    is tagged with S (an epoch number standing for S);
 *  - an operation takes a snapshot H first; if H != S the epoch advances
 *    and every entry becomes invalid; if H == S nothing committed since S,
 *    so entries read under S are the current state; no usable snapshot
 *    (torn or uninitialised header) forgets S and the operation reads
 *    SQLite directly;
 *  - an operation that mixes cached blocks with blocks it reads from SQLite
 *    checks the header again after its read transaction: unchanged means
 *    the transaction saw state S too; changed means the caller redoes the
 *    read without the cache (one consistent SQLite transaction);
 *  - writes through this vault advance the epoch at BEGIN (their commit
 *    changes the header anyway; this covers reads inside a failed write).
 * Not WAL (":memory:"), exclusive locking mode, or any failure to reach the
 * header -> the cache stays off and every read goes to SQLite.
 *
 * Memory: KVI_RC_BYTES (16 MiB) of blocks per vault at most, allocated on
 * first use, 4-way set-associative with LRU replacement per set. Reads
 * larger than KVI_RC_MAX_READ bypass the cache (a whole-column to_numpy()
 * must not evict the hot blocks).
 *
 * Locking: everything here runs with cv->mu held.
 */
#include "col_internal.h"

#include <string.h>

void kvi_rc_open(kv_colvault *cv)
{
    cv->rc.epoch = 1;
    kvi_walsnap_open(&cv->rc.ws, cv->db);
}

void kvi_rc_close(kv_colvault *cv)
{
    if (cv->rc.blk) {
        size_t n = cv->rc.nsets * KVI_RC_WAYS;
        for (size_t i = 0; i < n; i++)
            kvi_free(cv->rc.blk[i].data);
        kvi_free(cv->rc.blk);
    }
    cv->rc.blk = NULL;
    cv->rc.ws.shm = NULL;
}

int kvi_rc_begin(kv_colvault *cv)
{
    uint8_t snap[KVI_WALHDR_BYTES];
    KV_ASSERT_INTERNAL(cv->rc.epoch >= 1); /* 0 marks slots never filled */
    cv->rc.op_ok = 0;
    if (!kvi_walsnap_on(&cv->rc.ws))
        return 0;
    switch (kvi_walsnap_begin(&cv->rc.ws, snap)) {
    case KVI_WALSNAP_NONE:
        return 0;
    case KVI_WALSNAP_NEW:
        cv->rc.epoch++;
        cv->rc.drops++;
        break;
    case KVI_WALSNAP_SAME:
        break;
    }
    cv->rc.op_ok = 1;
    return 1;
}

int kvi_rc_unchanged(kv_colvault *cv)
{
    return kvi_walsnap_unchanged(&cv->rc.ws);
}

void kvi_rc_invalidate(kv_colvault *cv)
{
    cv->rc.epoch++;
    cv->rc.op_ok = 0;
}

/* ------------------------------------------------------------------------ */
/* blocks                                                                   */
/* ------------------------------------------------------------------------ */

static size_t rc_set(const kv_colvault *cv, int64_t col_id, int64_t chunk, int64_t blk)
{
    uint64_t h = (uint64_t)col_id * 0x9E3779B97F4A7C15ull ^ (uint64_t)chunk * 0xC2B2AE3D27D4EB4Full ^
                 (uint64_t)blk * 0x165667B19E3779F9ull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return (size_t)(h % cv->rc.nsets);
}

/* Valid block (col_id, chunk, blk) or NULL. */
static kvi_rblk *rc_find(kv_colvault *cv, int64_t col_id, int64_t chunk, int64_t blk)
{
    if (!cv->rc.blk)
        return NULL;
    kvi_rblk *s = cv->rc.blk + rc_set(cv, col_id, chunk, blk) * KVI_RC_WAYS;
    for (int w = 0; w < KVI_RC_WAYS; w++) {
        kvi_rblk *b = s + w;
        if (b->epoch == cv->rc.epoch && b->blk == blk && b->chunk_idx == chunk && b->col_id == col_id) {
            b->tick = ++cv->rc.tick;
            return b;
        }
    }
    return NULL;
}

/* Slot to fill for (col_id, chunk, blk): an invalid way, else the least
 * recently used; its data buffer is allocated. NULL when out of memory. */
static kvi_rblk *rc_victim(kv_colvault *cv, int64_t col_id, int64_t chunk, int64_t blk)
{
    if (!cv->rc.blk) {
        cv->rc.nsets = KVI_RC_BYTES / KVI_RC_BLOCK / KVI_RC_WAYS;
        cv->rc.blk = kvi_calloc(cv->rc.nsets * KVI_RC_WAYS, sizeof *cv->rc.blk);
        if (!cv->rc.blk)
            return NULL;
    }
    kvi_rblk *s = cv->rc.blk + rc_set(cv, col_id, chunk, blk) * KVI_RC_WAYS, *v = s;
    for (int w = 0; w < KVI_RC_WAYS; w++) {
        if (s[w].epoch != cv->rc.epoch) {
            v = s + w;
            break;
        }
        if (s[w].tick < v->tick)
            v = s + w;
    }
    if (!v->data) {
        v->data = kvi_malloc(KVI_RC_BLOCK);
        if (!v->data)
            return NULL;
    }
    v->epoch = 0; /* invalid until filled */
    return v;
}

/* The span at `off` (n > 0 bytes left) cut at the end of its cache block:
 * block index *blk inside the chunk, offset *bo inside the block. */
static kvi_span rc_span(const kvi_fx *fx, uint64_t off, uint64_t n, int64_t *blk, uint64_t *bo)
{
    kvi_span s = kvi_fx_span(fx, off, n);
    *blk = (int64_t)(s.in / KVI_RC_BLOCK);
    *bo = s.in % KVI_RC_BLOCK;
    if (KVI_RC_BLOCK - *bo < s.take)
        s.take = KVI_RC_BLOCK - *bo;
    return s;
}

/* Copy bytes [off, off + n) of column fx from valid blocks into dst.
 * Returns 1 when every block was cached, 0 at the first miss. */
static int rc_copy_hits(kv_colvault *cv, const kvi_fx *fx, uint64_t off, uint8_t *dst, uint64_t n)
{
    while (n > 0) {
        int64_t blk;
        uint64_t bo;
        kvi_span s = rc_span(fx, off, n, &blk, &bo);
        kvi_rblk *b = rc_find(cv, fx->col_id, s.chunk, blk);
        if (!b || bo + s.take > b->len)
            return 0; /* missing, or a short block: the chunk grew since; refetch */
        KV_ASSERT_INTERNAL(b->len <= KVI_RC_BLOCK && b->data);
        memcpy(dst, b->data + bo, (size_t)s.take);
        off += s.take;
        dst += s.take;
        n -= s.take;
    }
    return 1;
}

/* Read block blk of chunk s.chunk from SQLite into *slot (a victim slot is
 * taken when *slot is NULL), through one blob handle reused across calls;
 * *c caches the chunk row of chunk *c_idx (-1: none). */
static kv_status rc_fill_block(kv_colvault *cv, const kvi_fx *fx, kvi_blob *bl, kvi_chunk *c,
                               int64_t *c_idx, kvi_span s, int64_t blk, kvi_rblk **slot)
{
    kv_status st;
    if (*c_idx != s.chunk || (uint64_t)c->cap < s.in + s.take) {
        *c_idx = -1;
        st = kvi_chunk_covering(cv, fx, s.chunk, s.in + s.take, c);
        if (st != KV_OK)
            return st;
        *c_idx = s.chunk;
    }
    kvi_rblk *b = *slot ? *slot : rc_victim(cv, fx->col_id, s.chunk, blk);
    if (!b)
        return KV_NOMEM;
    *slot = b;
    const uint64_t bstart = (uint64_t)blk * KVI_RC_BLOCK;
    const uint64_t blen = (uint64_t)c->cap - bstart < KVI_RC_BLOCK ? (uint64_t)c->cap - bstart
                                                                   : KVI_RC_BLOCK;
    KV_ASSERT_INTERNAL(bstart <= s.in && s.in + s.take <= bstart + blen);
    st = kvi_blob_at(cv, bl, c->rowid, 0);
    if (st != KV_OK)
        return st;
    int rc = sqlite3_blob_read(bl->b, b->data, (int)blen, (int)bstart);
    if (rc != SQLITE_OK)
        return kvi_err_sqlite(&cv->err, cv->db, rc, "blob read");
    b->col_id = fx->col_id;
    b->chunk_idx = s.chunk;
    b->blk = blk;
    b->len = (uint32_t)blen;
    b->epoch = cv->rc.epoch;
    b->tick = ++cv->rc.tick;
    cv->rc.misses++;
    return KV_OK;
}

/* Inside a read transaction: copy [off, off + n) into dst, serving cached
 * blocks and reading missing ones through one blob handle (reopened from
 * chunk to chunk) into the cache. */
static kv_status rc_fill_copy(kv_colvault *cv, const kvi_fx *fx, uint64_t off, uint8_t *dst,
                              uint64_t n)
{
    kvi_blob bl = {0};
    kvi_chunk c = {0};
    int64_t c_idx = -1;
    kv_status st = KV_OK;
    while (n > 0) {
        int64_t blk;
        uint64_t bo;
        kvi_span s = rc_span(fx, off, n, &blk, &bo);
        kvi_rblk *b = rc_find(cv, fx->col_id, s.chunk, blk);
        if (b && bo + s.take > b->len)
            b->epoch = 0; /* short (cannot happen within one state): refill this slot */
        if (!b || b->epoch == 0) {
            st = rc_fill_block(cv, fx, &bl, &c, &c_idx, s, blk, &b);
            if (st != KV_OK)
                break;
        }
        memcpy(dst, b->data + bo, (size_t)s.take);
        off += s.take;
        dst += s.take;
        n -= s.take;
    }
    kvi_blob_done(&bl);
    return st;
}

/* ------------------------------------------------------------------------ */
/* reads                                                                    */
/* ------------------------------------------------------------------------ */

int kvi_rc_len_hit(kv_col *col, int64_t *len)
{
    kv_colvault *cv = col->cv;
    if (!kvi_rc_begin(cv) || col->len_epoch != cv->rc.epoch)
        return 0;
    *len = col->len_cached;
    return 1;
}

void kvi_rc_len_store(kv_col *col, int64_t len)
{
    KV_ASSERT_INTERNAL(len >= 0);
    /* op_ok: kvi_rc_begin of this operation succeeded before SQLite was
     * asked, so `len` is at least as new as the current tag */
    if (col->cv->rc.op_ok) {
        col->len_cached = len;
        col->len_epoch = col->cv->rc.epoch;
    }
}

/* Arguments of rc_read_body. */
typedef struct kvi_rc_op {
    kv_col *col;
    int64_t start, count;   /* elements */
    uint8_t *out;           /* count * elem bytes */
} kvi_rc_op;

/* Hit path after a successful kvi_rc_begin: 1 when answered (*st is the
 * result: KV_OK, or KV_INVALID for a range beyond the cached length). */
static int rc_read_hit_begun(kv_col *col, int64_t start, int64_t count, uint8_t *out,
                             kv_status *st)
{
    kv_colvault *cv = col->cv;
    const kvi_fx *fx = &col->fx;
    uint64_t n = (uint64_t)count * (uint64_t)fx->elem;
    *st = KV_OK;
    if (col->len_epoch != cv->rc.epoch)
        return 0;
    *st = kvi_col_check_range(cv, "read", start, count, col->len_cached);
    if (*st != KV_OK)
        return 1;
    if (!rc_copy_hits(cv, fx, (uint64_t)start * (uint64_t)fx->elem, out, n))
        return 0;
    cv->rc.hits++;
    return 1;
}

int kvi_rc_read_hit(kv_col *col, int64_t start, int64_t count, uint8_t *out, kv_status *st)
{
    uint64_t n = (uint64_t)count * (uint64_t)col->fx.elem;
    *st = KV_OK;
    if (n > KVI_RC_MAX_READ || !kvi_rc_begin(col->cv))
        return 0;
    return rc_read_hit_begun(col, start, count, out, st);
}

/* Miss path of kvi_rc_read inside its read transaction: the length (cached
 * or read), the range check, then the bytes through the cache. */
static kv_status rc_read_body(kv_colvault *cv, void *arg)
{
    const kvi_rc_op *a = arg;
    kv_col *col = a->col;
    int64_t len;
    kv_status st = KV_OK;
    if (col->len_epoch == cv->rc.epoch) {
        len = col->len_cached;
    } else {
        st = kvi_fx_length(cv, &col->fx, &len);
        if (st == KV_OK)
            kvi_rc_len_store(col, len);
    }
    if (st == KV_OK)
        st = kvi_col_check_range(cv, "read", a->start, a->count, len);
    if (st == KV_OK && a->count > 0)
        st = rc_fill_copy(cv, &col->fx, (uint64_t)a->start * (uint64_t)col->fx.elem, a->out,
                          (uint64_t)a->count * (uint64_t)col->fx.elem);
    return st;
}

kv_status kvi_rc_read(kv_col *col, int64_t start, int64_t count, uint8_t *out, int *served)
{
    KV_ASSERT(!col->is_var && start >= 0 && count >= 0 && (out || count == 0));
    kv_colvault *cv = col->cv;
    uint64_t n = (uint64_t)count * (uint64_t)col->fx.elem;
    kvi_rc_op a = {col, start, count, out};
    kv_status st;

    *served = 0;
    if (n > KVI_RC_MAX_READ || !kvi_rc_begin(cv))
        return KV_OK;
    if (rc_read_hit_begun(col, start, count, out, &st)) {
        *served = 1;
        return st;
    }
    /* miss: one read transaction; what it reads is filled under the
     * current epoch (the snapshot was taken above, before SQLite reads) */
    st = kvi_col_txn(cv, 0, rc_read_body, &a);
    if (st == KV_NOMEM) {
        /* no memory for a block: not an error of the read itself */
        kvi_rc_invalidate(cv);
        kvi_err_clear(&cv->err);
        return KV_OK; /* the caller reads directly */
    }
    if (!kvi_rc_unchanged(cv)) {
        /* a commit landed while we read: cached and fresh blocks may come
         * from two states; drop everything, the caller reads directly */
        kvi_rc_invalidate(cv);
        kvi_err_clear(&cv->err);
        return KV_OK;
    }
    *served = 1;
    return st;
}

void kv_colvault_read_cache_stats(kv_colvault *cv, uint64_t *hits, uint64_t *misses,
                                  uint64_t *drops, int *enabled)
{
    pthread_mutex_lock(&cv->mu);
    if (hits)
        *hits = cv->rc.hits;
    if (misses)
        *misses = cv->rc.misses;
    if (drops)
        *drops = cv->rc.drops;
    if (enabled)
        *enabled = kvi_walsnap_on(&cv->rc.ws);
    pthread_mutex_unlock(&cv->mu);
}
