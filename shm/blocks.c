/*
 * blocks.c -- size-classed block allocation inside one shard's region, epoch
 * retire lists, and checksummed records.
 *
 * Writer-private state (free-list heads, bump pointer, retire FIFO) lives in
 * the writer's heap; only the blocks and the free-list links inside free
 * blocks are in the segment. Readers never see a free block: a block reaches
 * a free list only through kvshm_blocks_free (never published) or through
 * kvshm_blocks_reclaim once no reader can hold it (epochs, slots.c).
 */
#include <stdlib.h>
#include <string.h>
/* xxh3 inlined: keys and values are short, a library call costs as much
 * as the hash itself. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "structs.h"

/* ---- size classes --------------------------------------------------------- */

static int size_class(uint64_t bytes, uint64_t *cbytes)
{
    if (bytes == 0) return -1;
    if (bytes <= 1024) {
        uint64_t c = (bytes + 15) >> 4;         /* 1..64 */
        *cbytes = c << 4;
        return (int)c - 1;
    }
    unsigned e = 63u - (unsigned)__builtin_clzll(bytes - 1); /* 2^e <= bytes-1 */
    if (e >= 40) return -1;
    uint64_t step = UINT64_C(1) << (e - 2);
    uint64_t r = (bytes + step - 1) & ~(step - 1);       /* (2^e, 2^(e+1)] */
    unsigned k = (unsigned)(r >> (e - 2));               /* 5..8 */
    *cbytes = r;
    return 64 + (int)(e - 10) * 4 + (int)(k - 5);
}

uint64_t kvshm_blocks_class_bytes(uint64_t bytes)
{
    uint64_t c;
    return size_class(bytes, &c) < 0 ? 0 : c;
}

void kvshm_blocks_init(kvshm_blocks *b, kvshm_seg *seg, uint64_t lo,
                       uint64_t bytes, struct kvshm_shard *stats)
{
    memset(b, 0, sizeof *b);
    b->seg = seg;
    b->stats = stats;
    b->lo = lo;
    b->hi = lo + bytes;
    b->bump = lo;
    uint64_t inner = (bytes / 64) & ~(uint64_t)4095;
    b->ilo = lo + bytes - inner;
    b->itop = lo + bytes;
    b->top = b->ilo;
}

void kvshm_blocks_fini(kvshm_blocks *b)
{
    free(b->ret);
    b->ret = NULL;
    b->ret_len = b->ret_cap = b->ret_head = 0;
}

static void publish_stats(kvshm_blocks *b)
{
    if (b->stats) {
        kv_atomic_store_relaxed64(&b->stats->s_used, b->used);
        kv_atomic_store_relaxed64(&b->stats->s_retired, b->retired);
    }
}

/* The three areas of a region (structs.h, kvshm_blocks): where a new block
 * is carved when its class's free list is empty. */
enum area { AREA_LEAF, AREA_IDX, AREA_INNER };

/* Carve a fresh block of class size cb from `area`. Blocks of 512 bytes or
 * more in the leaf area, and every block carved from the other two, are
 * 64-byte aligned; smaller leaf blocks 16-byte aligned (as are the pieces
 * split_larger makes in either area: nothing below 512 bytes needs more
 * than 16). Returns KVSHM_OK or
 * KVSHM_E_FULL (the area has no room). */
static kvshm_status carve(kvshm_blocks *b, enum area area, uint64_t cb, uint64_t *off)
{
    uint64_t at;
    switch (area) {
    case AREA_LEAF: {
        uint64_t align = cb >= 512 ? 64 : 16;   /* see kvshm_blocks_alloc */
        at = (b->bump + align - 1) & ~(align - 1);
        if (at > b->top || cb > b->top - at) return KVSHM_E_FULL;
        b->bump = at + cb;
        break;
    }
    case AREA_IDX:
        if (b->top < b->bump || cb > b->top - b->bump) return KVSHM_E_FULL;
        at = (b->top - cb) & ~(uint64_t)63;
        if (at < b->bump) return KVSHM_E_FULL;
        b->top = at;
        break;
    default:
        at = b->itop >= b->ilo + cb ? (b->itop - cb) & ~(uint64_t)63 : 0;
        if (at < b->ilo) return KVSHM_E_FULL;
        b->itop = at;
        break;
    }
    KV_ASSERT_INTERNAL(b->lo <= b->bump && b->bump <= b->top && b->top <= b->ilo &&
                       b->ilo <= b->itop && b->itop <= b->hi);
    *off = at;
    return KVSHM_OK;
}

/* Push the free block at `at` onto list `cls` of `lists`. */
static kvshm_status push_free(kvshm_blocks *b, uint64_t *lists, int cls, uint64_t at)
{
    uint64_t *link = kvshm_at(b->seg, at, 8);
    if (!link) return KVSHM_E_CORRUPT;
    *link = lists[cls];
    lists[cls] = at;
    return KVSHM_OK;
}

/* Classes up to this one (1 KiB) are multiples of 16 bytes: a free block of
 * one splits into blocks of any smaller class. */
#define SPLIT_MAX_CLASS 63

/* A small block (class c, cb < 512 bytes) when its class's list is empty
 * and its area has no room left: split the smallest free block of a larger
 * small class, from the caller's area's lists first, then from the other
 * area's (`other`: a block of class c there is taken as it is). Without this, once the leaf area's bump pointer meets the
 * index area, a class whose list runs dry starves although half the region
 * may be free in other classes (measured: the tree's 48-byte separator
 * records; docs/performance.md, "Many small commits and the segment's size
 * classes"). The request takes the block's first cb bytes; the rest goes
 * back, as blocks of class c and one smaller block, onto the lists the
 * block came from, where kvshm_blocks_free files them too (by address).
 * Blocks below 512 bytes need only the 16-byte alignment every piece has.
 * KVSHM_OK, KVSHM_E_FULL (no such block), KVSHM_E_CORRUPT. */
static kvshm_status split_larger(kvshm_blocks *b, uint64_t *lists, uint64_t *other, int c,
                                 uint64_t cb, uint64_t *off)
{
    for (int pass = 0; pass < 2; pass++) {
        uint64_t *l = pass ? other : lists;
        if (!l) break;
        /* (the other area's own class-c list first: pieces of an earlier
         * split land there) */
        for (int k = pass ? c : c + 1; k <= SPLIT_MAX_CLASS; k++) {
            uint64_t head = l[k];
            if (!head) continue;
            uint64_t *link = kvshm_at(b->seg, head, 8);
            if (!link) return KVSHM_E_CORRUPT;
            l[k] = *link;
            KV_ASSERT_INTERNAL(head >= b->lo && head + ((uint64_t)(k + 1) << 4) <= b->hi);
            if (k == c) {
                *off = head;
                return KVSHM_OK;
            }
            uint64_t at = head + cb, end = head + ((uint64_t)(k + 1) << 4);
            kvshm_status st = KVSHM_OK;
            for (; st == KVSHM_OK && end - at >= cb; at += cb) st = push_free(b, l, c, at);
            if (st == KVSHM_OK && end > at) st = push_free(b, l, (int)((end - at) >> 4) - 1, at);
            if (st) return st;
            *off = head;
            b->splits++;
            return KVSHM_OK;
        }
    }
    return KVSHM_E_FULL;
}

/* Allocate a block of at least `bytes` from the free lists `lists` (one per
 * class; a free block's first 8 bytes link to the next) or, when its class's
 * list is empty, carve one from `area`; a small block may come from a
 * larger free block split in two when the area is full (split_larger). */
static kvshm_status alloc_in(kvshm_blocks *b, uint64_t bytes, uint64_t *lists,
                             enum area area, uint64_t *off)
{
    uint64_t cb;
    int c = size_class(bytes, &cb);
    if (c < 0) return KVSHM_E_INVAL;
    KV_ASSERT_INTERNAL(c < KVSHM_NCLASSES && cb >= bytes);
    uint64_t head = lists[c];
    if (head) {
        uint64_t *link = kvshm_at(b->seg, head, 8);
        if (!link) return KVSHM_E_CORRUPT;
        KV_ASSERT_INTERNAL(head >= b->lo && head + cb <= b->hi);
        lists[c] = *link;
        *off = head;
    } else {
        kvshm_status st = carve(b, area, cb, off);
        /* (the inner area's own fallback is the index area,
         * kvshm_blocks_alloc_inner, which may split there) */
        if (st == KVSHM_E_FULL && cb < 512 && lists != b->free_inner)
            st = split_larger(b, lists, lists == b->free_head ? b->free_idx : b->free_head, c,
                              cb, off);
        if (st) return st;
    }
    b->used += cb;
    publish_stats(b);
    return KVSHM_OK;
}

kvshm_status kvshm_blocks_alloc(kvshm_blocks *b, uint64_t bytes, uint64_t *off)
{
    return alloc_in(b, bytes, b->free_head, AREA_LEAF, off);
}

kvshm_status kvshm_blocks_alloc_idx(kvshm_blocks *b, uint64_t bytes, uint64_t *off)
{
    return alloc_in(b, bytes, b->free_idx, AREA_IDX, off);
}

kvshm_status kvshm_blocks_alloc_inner(kvshm_blocks *b, uint64_t bytes, uint64_t *off)
{
    kvshm_status st = alloc_in(b, bytes, b->free_inner, AREA_INNER, off);
    /* inner area full: the index area takes it */
    return st == KVSHM_E_FULL ? kvshm_blocks_alloc_idx(b, bytes, off) : st;
}

void kvshm_blocks_free(kvshm_blocks *b, uint64_t off, uint64_t bytes)
{
    uint64_t cb = 0;
    int c = size_class(bytes, &cb);
    uint64_t *link = kvshm_at(b->seg, off, 8);
    KV_ASSERT(c >= 0 && link && off >= b->lo && off < b->hi);
    if (c < 0 || !link || off < b->lo || off >= b->hi) return;
    KV_ASSERT_INTERNAL(cb <= b->used);
    if (b->poison) memset(b->seg->base + off, 0xdb, cb);
    uint64_t *list = off >= b->ilo ? b->free_inner : off >= b->top ? b->free_idx : b->free_head;
    *link = list[c];
    list[c] = off;
    b->used -= cb;
    publish_stats(b);
}

kvshm_status kvshm_blocks_retire(kvshm_blocks *b, uint64_t off, uint64_t bytes,
                                 uint64_t epoch)
{
    KV_ASSERT(off >= b->lo && off < b->hi && kvshm_blocks_class_bytes(bytes) != 0);
    /* epochs never decrease along the FIFO (kvshm_blocks_reclaim relies on it) */
    KV_ASSERT(b->ret_len == 0 ||
              b->ret[(b->ret_head + b->ret_len - 1) % b->ret_cap].epoch <= epoch);
    if (b->ret_len == b->ret_cap) {
        size_t ncap = b->ret_cap ? b->ret_cap * 2 : 256;
        kvshm_retired *n = malloc(ncap * sizeof *n);
        if (!n) return KVSHM_E_NOMEM;
        for (size_t i = 0; i < b->ret_len; i++)
            n[i] = b->ret[(b->ret_head + i) % b->ret_cap];
        free(b->ret);
        b->ret = n;
        b->ret_cap = ncap;
        b->ret_head = 0;
    }
    b->ret[(b->ret_head + b->ret_len) % b->ret_cap] =
        (kvshm_retired){ .off = off, .bytes = bytes, .epoch = epoch };
    b->ret_len++;
    b->retired += kvshm_blocks_class_bytes(bytes);
    publish_stats(b);
    return KVSHM_OK;
}

uint64_t kvshm_blocks_reclaim(kvshm_blocks *b, uint64_t min_live_epoch)
{
    uint64_t freed = 0;
    /* Invariant: the FIFO is ordered by epoch, so the first entry that is
     * still live ends the pass. */
    while (b->ret_len) {
        kvshm_retired *r = &b->ret[b->ret_head];
        if (r->epoch >= min_live_epoch) break;
        uint64_t cb = kvshm_blocks_class_bytes(r->bytes);
        KV_ASSERT_INTERNAL(cb <= b->retired);
        kvshm_blocks_free(b, r->off, r->bytes);
        b->retired -= cb;
        freed += cb;
        b->ret_head = (b->ret_head + 1) % b->ret_cap;
        b->ret_len--;
    }
    publish_stats(b);
    return freed;
}

uint64_t kvshm_blocks_oldest_retired(const kvshm_blocks *b)
{
    return b->ret_len ? b->ret[b->ret_head].epoch : UINT64_MAX;
}

/* ---- records ---------------------------------------------------------------- */

uint64_t kvshm_rec_checksum(uint64_t seqt, const void *key, uint32_t klen,
                            const void *val, uint32_t vlen)
{
    uint64_t seed = seqt ^ ((uint64_t)klen << 32 | vlen);
    uint64_t hk = XXH3_64bits_withSeed(key, klen, seed);
    return XXH3_64bits_withSeed(val, vlen, hk);
}

void kvshm_rec_fill(void *dst, const void *key, uint32_t klen, const void *val,
                    uint32_t vlen, uint64_t seq, int tombstone)
{
    struct kvshm_rec *r = dst;
    r->r_klen = klen;
    r->r_vlen = vlen;
    r->r_seqt = seq << 1 | (tombstone ? 1u : 0u);
    memcpy((uint8_t *)dst + KVSHM_REC_HDR, key, klen);
    if (vlen) memcpy((uint8_t *)dst + KVSHM_REC_HDR + klen, val, vlen);
    r->r_checksum = kvshm_rec_checksum(r->r_seqt, key, klen, val, vlen);
}

kvshm_status kvshm_rec_new(kvshm_blocks *b, const void *key, uint32_t klen,
                           const void *val, uint32_t vlen, uint64_t seq,
                           int tombstone, uint64_t *off)
{
    if (klen == 0 || klen > KVSHM_MAX_KEY) return KVSHM_E_INVAL;
    uint64_t o;
    kvshm_status st = kvshm_blocks_alloc(b, kvshm_rec_bytes(klen, vlen), &o);
    if (st) return st;
    kvshm_rec_fill(kvshm_at(b->seg, o, kvshm_rec_bytes(klen, vlen)), key, klen,
                   val, vlen, seq, tombstone);
    *off = o;
    return KVSHM_OK;
}

uint64_t kvshm_cached_bytes(size_t klen, size_t vlen)
{
    if (klen == 0 || klen > KVSHM_MAX_KEY || vlen > UINT32_MAX) return 0;
    return kvshm_blocks_class_bytes(kvshm_rec_bytes((uint32_t)klen, (uint32_t)vlen));
}

uint64_t kvshm_rec_block_bytes(const kvshm_seg *s, uint64_t off)
{
    const struct kvshm_rec *r = kvshm_rec_at(s, off);
    return r ? kvshm_rec_bytes(r->r_klen, r->r_vlen) : 0;
}

kvshm_status kvshm_rec_read(const kvshm_seg *s, uint64_t off, const void *key,
                            uint32_t klen, kvshm_val *out)
{
    const struct kvshm_rec *r = kvshm_at(s, off, KVSHM_REC_HDR);
    if (!r) return KVSHM_E_CORRUPT;
    /* Read each header field once: a stale block may change under us and
     * every later check must use the same values. */
    uint64_t sum = r->r_checksum, seqt = r->r_seqt;
    uint32_t kl = r->r_klen, vl = r->r_vlen;
    kv_compiler_barrier();
    if (kl != klen || !kvshm_at(s, off, kvshm_rec_bytes(kl, vl)))
        return KVSHM_E_CORRUPT;
    const uint8_t *p = (const uint8_t *)r + KVSHM_REC_HDR;
    if (kvshm_key_cmp(p, klen, key, klen) != 0) return KVSHM_E_CORRUPT;
    out->seq = seqt >> 1;
    out->len = vl;
    if (seqt & 1) {
        if (vl != 0 || kvshm_rec_checksum(seqt, key, klen, "", 0) != sum)
            return KVSHM_E_CORRUPT;
        return KVSHM_DELETED;
    }
    if (out->alloc && (!out->buf || out->cap != vl)) {
        void *b = out->alloc(out->alloc_ctx, vl);   /* kvshm_val: replaces the last one */
        if (!b) return KVSHM_E_NOMEM;
        out->buf = b;
        out->cap = vl;
    }
    if (vl > out->cap) return KVSHM_E_SMALLBUF;
    if (vl) memcpy(out->buf, p + klen, vl);
    /* The checksum is computed over the caller's copies (key compared equal,
     * value just copied), so a copy torn by a concurrent reuse cannot pass. */
    if (kvshm_rec_checksum(seqt, key, klen, out->buf, vl) != sum)
        return KVSHM_E_CORRUPT;
    return KVSHM_OK;
}
