/*
 * readcache.c - process-local read cache of a kv_db, validated by SQLite's
 * WAL-index header.
 *
 * Why: a hot kv_get that goes to SQLite pays for starting and ending a WAL
 * read transaction on every call (two fcntl() lock calls and one fstat(),
 * about 2.6 us of the ~2.9 us a 100-byte get costs in C). A cache hit here
 * costs one 96-byte read of shared memory plus one hash lookup (tens of ns).
 *
 * What: key → copy of the value as last read from SQLite, bounded by bytes
 * (default 32 MiB, kv_open_opts.read_cache_bytes; values larger than 1/8 of
 * the cap are never cached), CLOCK eviction. All entries belong to one
 * "tag": the WAL-index header under which they were read. The whole cache
 * is dropped when the header changes.
 *
 * The WAL-index header (https://www.sqlite.org/walformat.html, section
 * "The WAL-Index Header"): the first 96 bytes of the wal-index (the -shm
 * file, which every connection maps shared) hold two copies of a 48-byte
 * WalIndexHdr: iVersion, unused, iChange, isInit, bigEndCksum, szPage,
 * mxFrame, nPage, aFrameCksum[2], aSalt[2], aCksum[2]. A writer publishes a
 * commit by writing copy 2 (offset 48), a memory barrier, then copy 1
 * (offset 0); a reader copies copy 1, barrier, copy 2, and accepts the
 * header only if both are identical (otherwise it was torn by a concurrent
 * writer). We apply the same rule and accept only isInit == 1.
 *
 * How we reach it: we do not open the -shm file ourselves. Closing any
 * descriptor of a file releases every POSIX record lock the process holds
 * on it, which would silently drop the locks SQLite's own connections in
 * this process hold on the -shm (its DMS and read-mark locks). Instead we
 * ask SQLite's VFS for its existing mapping of wal-index region 0 through
 * the database file's xShmMap method (SQLITE_FCNTL_FILE_POINTER, bExtend=0):
 * the same shared mapping SQLite reads, valid until the connection closes
 * (or leaves WAL mode, which needs exclusive access to the file and so
 * cannot happen while this connection is open in WAL mode). Any failure
 * (not WAL, :memory:, exclusive locking mode, no mapping, unexpected
 * iVersion) leaves the cache off for the handle.
 *
 * Correctness (why a stale value is never returned). Let H(t) be the header
 * in shared memory at time t.
 *  1. Every commit changes the header: it appends at least one frame, so
 *     mxFrame grows (and aFrameCksum/iChange change); a WAL restart after a
 *     checkpoint resets mxFrame but increments salt-1 and randomises
 *     salt-2. So within the life of this connection (which holds the
 *     -shm's shared DMS lock, so no other process can re-initialise the
 *     wal-index) a header value never repeats after a commit, and if
 *     H(t1) == H(t2) no transaction committed in between. A checkpoint
 *     without restart copies frames into the database file and changes no
 *     content a reader can see (and leaves the header alone); a restart
 *     changes the header, which only costs a refill.
 *  2. kv_get takes snapshot S = H(t0) *before* it asks SQLite. SQLite's
 *     read transaction starts after t0 and reads the header itself (under
 *     its own barrier and read lock), so the value v it returns is from a
 *     database state at least as new as S. v is inserted tagged S.
 *  3. A later kv_get takes H(t1). It returns v from the cache only if
 *     H(t1) == S: by (1) nothing committed between t0 and t1, so the state
 *     at t1 is the state at t0, which is the state v was read from (it was
 *     at least as new as S and nothing newer existed before t1). If
 *     anything committed, H(t1) != S and the whole cache is dropped.
 *  4. Writes through this handle also drop the cache (they change the
 *     header too, once committed). Values the write-back cache holds are
 *     looked up before this cache.
 * Not covered (documented limits): processes that write the file without
 * SQLite's WAL protocol (e.g. copying a file over it), and a 2^32-restart
 * wrap of salt-1 combined with an equal random salt-2, mxFrame and frame
 * checksum.
 *
 * Cost: per get one snapshot (two 48-byte loads, an acquire fence, one
 * 48-byte compare); per miss one copy of the value into the cache; per
 * invalidation O(entries) frees (amortised O(1) per insert).
 *
 * Thread safety: as the kv_db handle (one thread at a time).
 */
#include "internal.h"

#include <string.h>
#include <xxhash.h>

#define WALINDEX_PGSZ 32768          /* size of a wal-index region (walformat.html) */
#define WAL_VERSION 3007000u          /* WalIndexHdr.iVersion */
#define HDR_ISINIT_OFF 12             /* offset of isInit in WalIndexHdr */
#define MIN_SLOTS 64

typedef struct rentry {
    uint64_t hash;       /* XXH3 of the key */
    size_t idx;          /* position in the dense array */
    size_t klen;
    size_t vlen;
    uint8_t ref;         /* CLOCK reference bit */
    uint8_t data[];      /* key then value */
} rentry;

struct kvi_rcache {
    const volatile uint8_t *hdr;   /* SQLite's mapping of wal-index region 0 */
    uint8_t tag[KVI_WALHDR_BYTES]; /* header the entries were read under */
    int tag_ok;                    /* tag holds a valid header */
    rentry **slots;                /* open addressing, NULL = empty */
    size_t nslots;                 /* power of two */
    rentry **dense;                /* every entry, for CLOCK and clearing */
    size_t count, dense_cap;
    size_t bytes;                  /* sum of entry sizes */
    size_t cap;                    /* byte cap */
    size_t max_entry;              /* larger values are not cached */
    size_t hand;                   /* CLOCK hand into dense */
    uint64_t hits, misses, drops;
};

static inline uint64_t key_hash(const void *key, size_t klen)
{
    return XXH3_64bits(klen ? key : "", klen);
}

static inline size_t entry_size(size_t klen, size_t vlen)
{
    return sizeof(rentry) + klen + vlen;
}

/* ======================================================================
 * Snapshot of the WAL-index header
 * ==================================================================== */

/* Copy both header copies (copy 1 first, as SQLite's readers do) and
 * accept copy 1 if they are equal and initialised. */
static int snap_take(const volatile uint8_t *h, uint8_t out[KVI_WALHDR_BYTES])
{
    uint64_t a[6], b[6];
    const volatile uint64_t *p = (const volatile uint64_t *)h;
    for (int i = 0; i < 6; i++)
        a[i] = p[i];
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    for (int i = 0; i < 6; i++)
        b[i] = p[6 + i];
    if (memcmp(a, b, sizeof a) != 0)
        return 0;
    memcpy(out, a, KVI_WALHDR_BYTES);
    return out[HDR_ISINIT_OFF] == 1;
}

/* ======================================================================
 * Hash table + dense array
 * ==================================================================== */

static size_t probe(const kvi_rcache *rc, uint64_t h, const void *key, size_t klen)
{
    size_t mask = rc->nslots - 1, i = (size_t)h & mask;
    for (;;) {
        rentry *e = rc->slots[i];
        if (!e || (e->hash == h && e->klen == klen && (klen == 0 || memcmp(e->data, key, klen) == 0)))
            return i;
        i = (i + 1) & mask;
    }
}

static int slots_resize(kvi_rcache *rc, size_t n)
{
    rentry **ns = kvi_calloc(n, sizeof *ns);
    if (!ns)
        return -1;
    for (size_t i = 0; i < rc->count; i++) {
        rentry *e = rc->dense[i];
        size_t j = (size_t)e->hash & (n - 1);
        while (ns[j])
            j = (j + 1) & (n - 1);
        ns[j] = e;
    }
    kvi_free(rc->slots);
    rc->slots = ns;
    rc->nslots = n;
    return 0;
}

/* Remove slot i with backward-shift deletion. */
static void slot_delete(kvi_rcache *rc, size_t i)
{
    size_t mask = rc->nslots - 1, j = i;
    rc->slots[i] = NULL;
    for (;;) {
        j = (j + 1) & mask;
        rentry *e = rc->slots[j];
        if (!e)
            break;
        size_t home = (size_t)e->hash & mask;
        /* e may move into the hole at i if its home is not in (i, j]. */
        int between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!between) {
            rc->slots[i] = e;
            rc->slots[j] = NULL;
            i = j;
        }
    }
}

/* Remove entry e from both structures and free it. */
static void entry_remove(kvi_rcache *rc, rentry *e)
{
    slot_delete(rc, probe(rc, e->hash, e->data, e->klen));
    size_t last = rc->count - 1;
    if (e->idx != last) {
        rc->dense[e->idx] = rc->dense[last];
        rc->dense[e->idx]->idx = e->idx;
    }
    rc->count--;
    rc->bytes -= entry_size(e->klen, e->vlen);
    kvi_free(e);
}

static void clear_all(kvi_rcache *rc)
{
    if (rc->count == 0)
        return;
    for (size_t i = 0; i < rc->count; i++)
        kvi_free(rc->dense[i]);
    rc->count = 0;
    rc->bytes = 0;
    rc->hand = 0;
    /* Shrink a large slot array instead of clearing it, so a drop costs
     * O(entries), not O(slots). */
    if (rc->nslots > MIN_SLOTS * 4) {
        rentry **ns = kvi_calloc(MIN_SLOTS, sizeof *ns);
        if (ns) {
            kvi_free(rc->slots);
            rc->slots = ns;
            rc->nslots = MIN_SLOTS;
            return;
        }
    }
    memset(rc->slots, 0, rc->nslots * sizeof *rc->slots);
}

/* CLOCK: evict until `need` more bytes fit under the cap. */
static void evict_for(kvi_rcache *rc, size_t need)
{
    while (rc->count && rc->bytes + need > rc->cap) {
        if (rc->hand >= rc->count)
            rc->hand = 0;
        rentry *e = rc->dense[rc->hand];
        if (e->ref) {
            e->ref = 0;
            rc->hand++;
        } else {
            entry_remove(rc, e);   /* the last entry moved into hand */
        }
    }
}

/* ======================================================================
 * Interface
 * ==================================================================== */

/* Text of a one-row, one-column pragma, lower-cased into buf. */
static void pragma_text(sqlite3 *db, const char *sql, char *buf, size_t n)
{
    sqlite3_stmt *s = NULL;
    buf[0] = '\0';
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        size_t i = 0;
        for (; t && t[i] && i + 1 < n; i++)
            buf[i] = (char)(t[i] >= 'A' && t[i] <= 'Z' ? t[i] + 32 : t[i]);
        buf[i] = '\0';
    }
    sqlite3_finalize(s);
}

void kvi_rcache_open(kv_db *db, size_t cap_bytes)
{
    char mode[32];
    sqlite3_file *f = NULL;
    void volatile *region = NULL;
    uint8_t snap[KVI_WALHDR_BYTES];

    db->rcache = NULL;
    if (cap_bytes == 0)
        return;
    pragma_text(db->db, "PRAGMA journal_mode", mode, sizeof mode);
    if (strcmp(mode, "wal") != 0)
        return;
    pragma_text(db->db, "PRAGMA locking_mode", mode, sizeof mode);
    if (strcmp(mode, "normal") != 0)
        return;
    /* Start a read so that SQLite has opened and mapped the wal-index. */
    if (kvi_exec(db->db, "SELECT 1 FROM sqlite_master LIMIT 1", &db->err) != KV_OK) {
        kvi_err_clear(&db->err);
        return;
    }
    if (sqlite3_file_control(db->db, "main", SQLITE_FCNTL_FILE_POINTER, &f) != SQLITE_OK ||
        !f || !f->pMethods || f->pMethods->iVersion < 2 || !f->pMethods->xShmMap)
        return;
    if (f->pMethods->xShmMap(f, 0, WALINDEX_PGSZ, 0, &region) != SQLITE_OK || !region)
        return;
    const volatile uint8_t *hdr = region;
    if (!snap_take(hdr, snap))
        return;
    uint32_t version;
    memcpy(&version, snap, 4);
    if (version != WAL_VERSION)
        return;

    kvi_rcache *rc = kvi_calloc(1, sizeof *rc);
    if (!rc)
        return;
    rc->slots = kvi_calloc(MIN_SLOTS, sizeof *rc->slots);
    if (!rc->slots) {
        kvi_free(rc);
        return;
    }
    rc->nslots = MIN_SLOTS;
    rc->hdr = hdr;
    rc->cap = cap_bytes;
    rc->max_entry = cap_bytes / 8;
    db->rcache = rc;
}

void kvi_rcache_close(kvi_rcache *rc)
{
    if (!rc)
        return;
    for (size_t i = 0; i < rc->count; i++)
        kvi_free(rc->dense[i]);
    kvi_free(rc->dense);
    kvi_free(rc->slots);
    kvi_free(rc);
}

int kvi_rcache_begin(kvi_rcache *rc, uint8_t snap[KVI_WALHDR_BYTES])
{
    if (!snap_take(rc->hdr, snap)) {
        rc->tag_ok = 0;     /* unknown: forget the entries' tag */
        if (rc->count) {
            clear_all(rc);
            rc->drops++;
        }
        return 0;
    }
    if (!rc->tag_ok || memcmp(snap, rc->tag, KVI_WALHDR_BYTES) != 0) {
        if (rc->count) {
            clear_all(rc);
            rc->drops++;
        }
        memcpy(rc->tag, snap, KVI_WALHDR_BYTES);
        rc->tag_ok = 1;
    }
    return 1;
}

int kvi_rcache_find(kvi_rcache *rc, const void *key, size_t klen,
                    const void **val, size_t *vlen)
{
    if (rc->count) {
        rentry *e = rc->slots[probe(rc, key_hash(key, klen), key, klen)];
        if (e) {
            e->ref = 1;
            *val = e->data + e->klen;
            *vlen = e->vlen;
            rc->hits++;
            return 1;
        }
    }
    rc->misses++;
    return 0;
}

void kvi_rcache_insert(kvi_rcache *rc, const uint8_t snap[KVI_WALHDR_BYTES],
                       const void *key, size_t klen, const void *val, size_t vlen)
{
    size_t need = entry_size(klen, vlen);
    if (!rc->tag_ok || memcmp(snap, rc->tag, KVI_WALHDR_BYTES) != 0)
        return;          /* invalidated since the snapshot */
    if (klen + vlen > rc->max_entry || need > rc->cap)
        return;
    uint64_t h = key_hash(key, klen);
    size_t i = probe(rc, h, key, klen);
    if (rc->slots[i])
        entry_remove(rc, rc->slots[i]);   /* replaced (cannot normally happen) */
    evict_for(rc, need);
    if (rc->count == rc->dense_cap) {
        size_t nc = rc->dense_cap ? rc->dense_cap * 2 : 256;
        rentry **nd = kvi_realloc(rc->dense, nc * sizeof *nd);
        if (!nd)
            return;
        rc->dense = nd;
        rc->dense_cap = nc;
    }
    if ((rc->count + 1) * 2 > rc->nslots && slots_resize(rc, rc->nslots * 2) != 0)
        return;
    rentry *e = kvi_malloc(need);
    if (!e)
        return;
    e->hash = h;
    e->klen = klen;
    e->vlen = vlen;
    e->ref = 0;
    if (klen)
        memcpy(e->data, key, klen);
    if (vlen)
        memcpy(e->data + klen, val, vlen);
    e->idx = rc->count;
    rc->dense[rc->count++] = e;
    rc->slots[probe(rc, h, key, klen)] = e;
    rc->bytes += need;
}

void kvi_rcache_invalidate(kvi_rcache *rc)
{
    if (!rc)
        return;
    rc->tag_ok = 0;
    if (rc->count) {
        clear_all(rc);
        rc->drops++;
    }
}

void kvi_rcache_stats(const kvi_rcache *rc, size_t *entries, size_t *bytes,
                      uint64_t *hits, uint64_t *misses, uint64_t *drops)
{
    if (entries) *entries = rc ? rc->count : 0;
    if (bytes) *bytes = rc ? rc->bytes : 0;
    if (hits) *hits = rc ? rc->hits : 0;
    if (misses) *misses = rc ? rc->misses : 0;
    if (drops) *drops = rc ? rc->drops : 0;
}
