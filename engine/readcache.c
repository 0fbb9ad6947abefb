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
 * the cap are never cached, and kv_get_into does not insert the values it
 * reads straight into the caller's buffer, those of direct_min bytes or
 * more), CLOCK eviction. All entries belong to one
 * "tag": the WAL-index header under which they were read. The whole cache
 * is dropped when the header changes.
 *
 * Validation: walsnap.c (snapshots of SQLite's WAL-index header, shared
 * with the column read cache; it gives the full argument and its limits).
 * Applied here:
 *  - kv_get takes snapshot S with kvi_walsnap_begin *before* it asks
 *    SQLite, so the value it reads is at least as new as S; it is inserted
 *    only if S is still the tag (kvi_walsnap_is_tag);
 *  - a later kv_get returns a cached value only if its snapshot equals the
 *    tag (nothing committed since); otherwise the whole cache is dropped
 *    and the new header becomes the tag;
 *  - writes through this handle drop the cache and forget the tag (their
 *    commit changes the header too). Values the write-back cache holds are
 *    looked up before this cache.
 * No usable snapshot (a torn or uninitialised header) forgets the tag and
 * drops the entries; not WAL, :memory:, exclusive locking mode or no
 * mapping leave the cache off for the handle.
 *
 * Cost: per get one snapshot (two 48-byte loads, an acquire fence, one
 * 48-byte compare); per miss one copy of the value into the cache; per
 * invalidation O(entries) frees (amortised O(1) per insert).
 *
 * Thread safety: as the kv_db handle (one thread at a time).
 */
#include "internal.h"

#include <string.h>

#include "hashslots.h"

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
    kvi_walsnap ws;                /* header the entries were read under */
    void **slots;                  /* rentry pointers (hashslots.h), NULL = empty */
    size_t nslots;                 /* power of two */
    rentry **dense;                /* every entry, for CLOCK and clearing */
    size_t count, dense_cap;
    size_t bytes;                  /* sum of entry sizes */
    size_t cap;                    /* byte cap */
    size_t max_entry;              /* larger values are not cached */
    size_t hand;                   /* CLOCK hand into dense */
    uint64_t hits, misses, drops;
};

static inline size_t entry_size(size_t klen, size_t vlen)
{
    return sizeof(rentry) + klen + vlen;
}

/* ======================================================================
 * Hash table + dense array
 * ==================================================================== */

static size_t probe(const kvi_rcache *rc, uint64_t h, const void *key, size_t klen)
{
    return kvi_slots_find(rc->slots, rc->nslots, h, key, klen, offsetof(rentry, klen),
                          offsetof(rentry, data));
}

static int slots_resize(kvi_rcache *rc, size_t n)
{
    void **ns = kvi_calloc(n, sizeof *ns);
    if (!ns)
        return -1;
    kvi_slots_rehash(rc->slots, rc->nslots, ns, n);
    kvi_free(rc->slots);
    rc->slots = ns;
    rc->nslots = n;
    return 0;
}

/* Remove entry e from both structures and free it. */
static void entry_remove(kvi_rcache *rc, rentry *e)
{
    kvi_slots_delete(rc->slots, rc->nslots, probe(rc, e->hash, e->data, e->klen));
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
        void **ns = kvi_calloc(MIN_SLOTS, sizeof *ns);
        if (ns) {
            kvi_free(rc->slots);
            rc->slots = ns;
            rc->nslots = MIN_SLOTS;
            return;
        }
    }
    memset(rc->slots, 0, rc->nslots * sizeof *rc->slots);
}

#if KV_DEBUG >= 3
/* Whole-structure check: every entry sits at its dense index and is found
 * by its key, the slots hold exactly the entries, the byte sum matches. */
static int rc_valid(const kvi_rcache *rc)
{
    size_t bytes = 0, used = 0;
    for (size_t i = 0; i < rc->count; i++) {
        const rentry *e = rc->dense[i];
        if (e->idx != i || rc->slots[probe(rc, e->hash, e->data, e->klen)] != e)
            return 0;
        bytes += entry_size(e->klen, e->vlen);
    }
    for (size_t i = 0; i < rc->nslots; i++)
        used += rc->slots[i] != NULL;
    return used == rc->count && bytes == rc->bytes;
}
#endif

/* Invalidation: drop every entry (counted when there were any). */
static void drop_all(kvi_rcache *rc)
{
    if (rc->count) {
        clear_all(rc);
        rc->drops++;
    }
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

void kvi_rcache_open(kv_db *db, size_t cap_bytes)
{
    kvi_walsnap ws;

    db->rcache = NULL;
    if (cap_bytes == 0 || !kvi_walsnap_open(&ws, db->db))
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
    rc->ws = ws;
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
    kvi_walsnap_state s = kvi_walsnap_begin(&rc->ws, snap);
    if (s != KVI_WALSNAP_SAME)
        drop_all(rc);    /* filed under another (or an unknown) header */
    return s != KVI_WALSNAP_NONE;
}

int kvi_rcache_find(kvi_rcache *rc, const void *key, size_t klen,
                    const void **val, size_t *vlen)
{
    KV_ASSERT(rc && (key || klen == 0) && val && vlen);
    KV_ASSERT_INTERNAL(rc->ws.tag_ok || rc->count == 0); /* entries belong to the tag */
    if (rc->count) {
        rentry *e = rc->slots[probe(rc, kvi_key_hash(key, klen), key, klen)];
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
    if (!kvi_walsnap_is_tag(&rc->ws, snap))
        return;          /* invalidated since the snapshot */
    if (klen + vlen > rc->max_entry || need > rc->cap)
        return;
    uint64_t h = kvi_key_hash(key, klen);
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
    KV_ASSERT_INTERNAL(rc->bytes <= rc->cap && rc->count * 2 <= rc->nslots);
    KV_ASSERT_EXPENSIVE(rc_valid(rc));
}

void kvi_rcache_invalidate(kvi_rcache *rc)
{
    if (!rc)
        return;
    kvi_walsnap_forget(&rc->ws);
    drop_all(rc);
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
