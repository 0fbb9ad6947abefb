/*
 * memtable.c -- the write-back cache of a shard: a skip list in one
 * append-only arena block (Pugh, "Skip lists: a probabilistic alternative to
 * balanced trees", CACM 1990; the shape of LevelDB's memtable).
 *
 * One writer appends; any number of readers search without locks. A node is
 * written completely (key prefix, height, its own forward links, the
 * checksummed record) with plain stores before it is linked; linking is a
 * release store into each predecessor's link, bottom level first, so a reader
 * that acquire-loads a link sees a complete node, and a node reachable at a
 * higher level is already reachable at level 0. Nodes are never removed: a
 * memtable is frozen and retired whole (the block returns to the allocator
 * once no reader can be inside it).
 *
 * Order: key ascending (memcmp, shorter first), then sequence descending, so
 * the first node of a key holds its newest version. Links are uint32_t
 * offsets from the arena start; 0 is null.
 */
#include <stdint.h>
#include <string.h>

#include "structs.h"

#define NODE_HDR(h) (((uint64_t)12 + 4u * (uint64_t)(h) + 7) & ~(uint64_t)7)
#define ALIGN8(x) (((uint64_t)(x) + 7) & ~(uint64_t)7)

static inline struct kvshm_mthdr *mt_hdr(const kvshm_seg *s, uint64_t mt)
{
    return kvshm_at(s, mt, KVSHM_MT_FIRST);
}

/* Node at arena-relative offset rel, with its links bounds-checked. */
static inline const struct kvshm_mtnode *mt_node(const kvshm_seg *s, uint64_t mt,
                                                 uint64_t bytes, uint32_t rel)
{
    if (rel < KVSHM_MT_HEAD || (uint64_t)rel + 16 > bytes) return NULL;
    const struct kvshm_mtnode *n = kvshm_at(s, mt + rel, 12);
    if (!n) return NULL;
    uint8_t h = n->n_height;
    if (h == 0 || h > KVSHM_MT_MAXH || (uint64_t)rel + NODE_HDR(h) > bytes) return NULL;
    return n;
}

/* The record of a node (bounds-checked against the arena). */
static inline const struct kvshm_rec *mt_rec(const kvshm_seg *s, uint64_t mt,
                                             uint64_t bytes, uint32_t rel,
                                             const struct kvshm_mtnode *n,
                                             uint64_t *rec_off)
{
    uint64_t ro = rel + NODE_HDR(n->n_height);
    if (ro + KVSHM_REC_HDR > bytes) return NULL;
    const struct kvshm_rec *r = kvshm_rec_at(s, mt + ro);
    if (!r || ro + kvshm_rec_bytes(r->r_klen, r->r_vlen) > bytes) return NULL;
    if (rec_off) *rec_off = mt + ro;
    return r;
}

/* Compare node's key with key: <0, 0, >0. *bad set on a bounds failure. */
static inline int node_cmp(const kvshm_seg *s, uint64_t mt, uint64_t bytes,
                           uint32_t rel, const struct kvshm_mtnode *n,
                           uint64_t prefix, const void *key, uint32_t klen, int *bad)
{
    uint64_t np = n->n_prefix;
    if (np != prefix) return np < prefix ? -1 : 1;
    const struct kvshm_rec *r = mt_rec(s, mt, bytes, rel, n, NULL);
    if (!r) { *bad = 1; return 1; }
    return kvshm_key_cmp(kvshm_rec_key(r), r->r_klen, key, klen);
}

/* 1 if the node at rel holds a key that sorts before key (assertions). */
static inline int node_before(const kvshm_seg *s, uint64_t mt, uint64_t bytes, uint32_t rel,
                              uint64_t prefix, const void *key, uint32_t klen)
{
    const struct kvshm_mtnode *n = mt_node(s, mt, bytes, rel);
    int bad = 0;
    return n && node_cmp(s, mt, bytes, rel, n, prefix, key, klen, &bad) < 0 && !bad;
}

kvshm_status kvshm_mt_create(kvshm_blocks *b, uint64_t arena_bytes, uint64_t *mt)
{
    if (arena_bytes < 4096 || arena_bytes > UINT32_MAX) return KVSHM_E_INVAL;
    uint64_t off;
    kvshm_status st = kvshm_blocks_alloc(b, arena_bytes, &off);
    if (st) return st;
    if ((st = kvshm_mt_create_at(b->seg, off, arena_bytes))) {
        kvshm_blocks_free(b, off, arena_bytes);
        return st;
    }
    *mt = off;
    return KVSHM_OK;
}

kvshm_status kvshm_mt_create_at(kvshm_seg *seg, uint64_t off, uint64_t arena_bytes)
{
    if (arena_bytes < 4096 || arena_bytes > UINT32_MAX) return KVSHM_E_INVAL;
    struct kvshm_mthdr *h = kvshm_at(seg, off, arena_bytes);
    if (!h) return KVSHM_E_CORRUPT;
    memset(h, 0, KVSHM_MT_FIRST);
    h->m_magic = KVSHM_MAGIC_MT;
    h->m_bytes = arena_bytes;
    h->m_used = KVSHM_MT_FIRST;
    h->m_level = 1;
    struct kvshm_mtnode *head = (struct kvshm_mtnode *)((uint8_t *)h + KVSHM_MT_HEAD);
    head->n_height = KVSHM_MT_MAXH;
    return KVSHM_OK;
}

static unsigned random_height(uint64_t seq, uint64_t count)
{
    /* splitmix64 of the sequence and position: deterministic, no state. */
    uint64_t x = seq * UINT64_C(0x9e3779b97f4a7c15) ^ (count << 32 | count >> 32);
    x ^= x >> 30; x *= UINT64_C(0xbf58476d1ce4e5b9);
    x ^= x >> 27; x *= UINT64_C(0x94d049bb133111eb);
    x ^= x >> 31;
    unsigned h = 1;
    while (h < KVSHM_MT_MAXH && (x & 3) == 0) { h++; x >>= 2; }
    return h;
}

/* Where the search for (key, seq) may start at each level, from the finger
 * f: the node added last (L) and its predecessors. Usable only when f still
 * describes this arena as it is (nothing appended since) and key sorts after
 * L's key; then start[lvl] is L where L has that level, else L's
 * predecessor there -- the last node before L at that level, which precedes
 * key. Returns 1 and fills start[], or 0 (search from the head). */
static int finger_starts(const kvshm_seg *s, uint64_t mt, const struct kvshm_mthdr *h,
                         const kvshm_mt_finger *f, uint64_t prefix, const void *key,
                         uint32_t klen, uint32_t *start)
{
    if (!f || f->mt != mt || f->used != h->m_used || !f->last) return 0;
    const struct kvshm_mtnode *ln = mt_node(s, mt, h->m_bytes, f->last);
    if (!ln) return 0;
    int bad = 0;
    if (node_cmp(s, mt, h->m_bytes, f->last, ln, prefix, key, klen, &bad) >= 0 || bad)
        return 0;
    for (unsigned lvl = 0; lvl < KVSHM_MT_MAXH; lvl++)
        start[lvl] = lvl < ln->n_height ? f->last : f->preds[lvl];
    return 1;
}

kvshm_status kvshm_mt_add(kvshm_seg *s, uint64_t mt, const void *key, uint32_t klen,
                          const void *val, uint32_t vlen, uint64_t seq, int tombstone)
{
    return kvshm_mt_add_hint(s, mt, NULL, key, klen, val, vlen, seq, tombstone);
}

kvshm_status kvshm_mt_add_hint(kvshm_seg *s, uint64_t mt, kvshm_mt_finger *f,
                               const void *key, uint32_t klen, const void *val,
                               uint32_t vlen, uint64_t seq, int tombstone)
{
    KV_ASSERT(s->writable);
    struct kvshm_mthdr *h = mt_hdr(s, mt);
    if (!h || h->m_magic != KVSHM_MAGIC_MT) return KVSHM_E_CORRUPT;
    if (klen == 0 || klen > KVSHM_MAX_KEY || h->m_frozen) return KVSHM_E_INVAL;
    KV_ASSERT_INTERNAL(h->m_used >= KVSHM_MT_FIRST && h->m_used <= h->m_bytes);
    if (tombstone) vlen = 0;
    uint64_t bytes = h->m_bytes;
    unsigned ht = random_height(seq, h->m_count);
    uint64_t need = NODE_HDR(ht) + ALIGN8(kvshm_rec_bytes(klen, vlen));
    uint64_t at = h->m_used;
    if (at + need > bytes) return KVSHM_E_FULL;
    uint8_t *arena = kvshm_at(s, mt, bytes);
    if (!arena) return KVSHM_E_CORRUPT;

    /* Find the predecessor at each level: the last node that sorts before
     * (key, seq) -- equal keys with a larger (newer) seq come first. With a
     * usable finger (keys arriving in ascending order: logs, time stamps,
     * row numbers), a level starts from the finger until the walk above has
     * moved: a node reached by moving forward from the finger's start at a
     * higher level sorts at or after L, so after the finger's start here. */
    uint64_t prefix = kvshm_key_prefix(key, klen);
    uint32_t preds[KVSHM_MT_MAXH], start[KVSHM_MT_MAXH];
    int use_finger = finger_starts(s, mt, h, f, prefix, key, klen, start);
    uint32_t x = KVSHM_MT_HEAD;
    for (int lvl = KVSHM_MT_MAXH - 1; lvl >= 0; lvl--) {
        if (use_finger) x = start[lvl];
        for (;;) {
            const struct kvshm_mtnode *xn = (const void *)(arena + x);
            uint32_t nx = xn->n_next[lvl];
            if (!nx) break;
            const struct kvshm_mtnode *nn = mt_node(s, mt, bytes, nx);
            if (!nn) return KVSHM_E_CORRUPT;
            int bad = 0;
            int c = node_cmp(s, mt, bytes, nx, nn, prefix, key, klen, &bad);
            if (bad) return KVSHM_E_CORRUPT;
            if (c > 0) break;
            if (c == 0) {
                const struct kvshm_rec *r = mt_rec(s, mt, bytes, nx, nn, NULL);
                if ((r->r_seqt >> 1) <= seq) break; /* older version: we go first */
            }
            x = nx;
            use_finger = 0;
        }
        preds[lvl] = x;
    }
    /* Order: seq is newer than every version of key already here, so the
     * node before the insertion point holds a smaller key. */
    KV_ASSERT(preds[0] == KVSHM_MT_HEAD ||
              node_before(s, mt, bytes, preds[0], prefix, key, klen));

    /* Build the node and its record with plain stores: not yet reachable. */
    struct kvshm_mtnode *n = (struct kvshm_mtnode *)(arena + at);
    n->n_prefix = prefix;
    n->n_height = (uint8_t)ht;
    memset(n->n_pad, 0, sizeof n->n_pad);
    for (unsigned i = 0; i < ht; i++) {
        const struct kvshm_mtnode *p = (const void *)(arena + preds[i]);
        n->n_next[i] = p->n_next[i];
    }
    kvshm_rec_fill(arena + at + NODE_HDR(ht), key, klen, val, vlen, seq, tombstone);

    h->m_count++;
    if (!h->m_min_seq || seq < h->m_min_seq) h->m_min_seq = seq;
    if (seq > h->m_max_seq) h->m_max_seq = seq;
    kv_atomic_store_release64(&h->m_used, at + need);
    /* Link bottom-up with release stores: once a reader can reach the node
     * at any level, its contents and its level-0 position are visible. */
    for (unsigned i = 0; i < ht; i++) {
        struct kvshm_mtnode *p = (struct kvshm_mtnode *)(arena + preds[i]);
        kv_atomic_store_release32(&p->n_next[i], (uint32_t)at);
    }
    if (ht > h->m_level) kv_atomic_store_release32(&h->m_level, ht);
    if (f) {
        f->mt = mt;
        f->used = at + need;
        f->last = (uint32_t)at;
        memcpy(f->preds, preds, sizeof preds);
    }
    return KVSHM_OK;
}

void kvshm_mt_freeze(kvshm_seg *s, uint64_t mt)
{
    struct kvshm_mthdr *h = mt_hdr(s, mt);
    if (h) kv_atomic_store_release32(&h->m_frozen, 1);
}

/*
 * Descend to the last node whose key is < key (after == 0) or <= key
 * (after != 0) and return the level-0 successor's arena offset (0: none).
 * Step budget: a stale arena (reader evicted) cannot loop us forever.
 */
static uint32_t mt_descend(const kvshm_seg *s, uint64_t mt, const void *key,
                           uint32_t klen, int after, uint64_t *bytes_out,
                           kvshm_status *err)
{
    const struct kvshm_mthdr *h = mt_hdr(s, mt);
    if (!h || h->m_magic != KVSHM_MAGIC_MT) { *err = KVSHM_E_CORRUPT; return 0; }
    uint64_t bytes = h->m_bytes;
    *bytes_out = bytes;
    if (!kvshm_at(s, mt, bytes)) { *err = KVSHM_E_CORRUPT; return 0; }
    const uint8_t *arena = (const uint8_t *)h;
    uint32_t level = kv_atomic_load_acquire32(&h->m_level);
    if (level == 0 || level > KVSHM_MT_MAXH) { *err = KVSHM_E_CORRUPT; return 0; }
    const struct kvshm_mtnode *head = (const void *)(arena + KVSHM_MT_HEAD);
    if (klen == 0) return kv_atomic_load_acquire32(&head->n_next[0]);
    uint64_t prefix = kvshm_key_prefix(key, klen);
    uint64_t budget = (bytes / 16) * 2 + 64;
    const struct kvshm_mtnode *x = head;
    uint32_t succ = 0;
    for (int lvl = (int)level - 1; lvl >= 0; lvl--) {
        for (;;) {
            uint32_t nx = kv_atomic_load_acquire32(&x->n_next[lvl]);
            succ = nx;
            if (!nx) break;
            const struct kvshm_mtnode *nn = mt_node(s, mt, bytes, nx);
            if (!nn || nn->n_height <= (unsigned)lvl || --budget == 0) {
                *err = KVSHM_E_CORRUPT; return 0;
            }
            int bad = 0;
            int c = node_cmp(s, mt, bytes, nx, nn, prefix, key, klen, &bad);
            if (bad) { *err = KVSHM_E_CORRUPT; return 0; }
            if (c > 0 || (c == 0 && !after)) break;
            x = nn;
        }
    }
    /* The successor is the link value compared at level 0, not a fresh load
     * of x's link: the writer may have linked a smaller key after x since. */
    return succ;
}

kvshm_status kvshm_mt_get(const kvshm_seg *s, uint64_t mt, const void *key,
                          uint32_t klen, kvshm_val *out)
{
    kvshm_status err = KVSHM_OK;
    uint64_t bytes = 0;
    uint32_t nx = mt_descend(s, mt, key, klen, 0, &bytes, &err);
    if (err) return err;
    if (!nx) return KVSHM_NOTFOUND;
    const struct kvshm_mtnode *n = mt_node(s, mt, bytes, nx);
    if (!n) return KVSHM_E_CORRUPT;
    if (n->n_prefix != kvshm_key_prefix(key, klen)) return KVSHM_NOTFOUND;
    uint64_t ro;
    const struct kvshm_rec *r = mt_rec(s, mt, bytes, nx, n, &ro);
    if (!r) return KVSHM_E_CORRUPT;
    if (kvshm_key_cmp(kvshm_rec_key(r), r->r_klen, key, klen) != 0) return KVSHM_NOTFOUND;
    return kvshm_rec_read(s, ro, key, klen, out);
}

uint64_t kvshm_mt_seek(const kvshm_seg *s, uint64_t mt, const void *key,
                       uint32_t klen, int after, kvshm_status *err)
{
    uint64_t bytes = 0;
    uint32_t nx = mt_descend(s, mt, key, klen, after, &bytes, err);
    if (*err || !nx) return 0;
    const struct kvshm_mtnode *n = mt_node(s, mt, bytes, nx);
    uint64_t ro = 0;
    if (!n || !mt_rec(s, mt, bytes, nx, n, &ro)) { *err = KVSHM_E_CORRUPT; return 0; }
    return ro;
}

uint32_t kvshm_mt_first(const kvshm_seg *s, uint64_t mt)
{
    const struct kvshm_mthdr *h = mt_hdr(s, mt);
    if (!h || h->m_magic != KVSHM_MAGIC_MT) return 0;
    const struct kvshm_mtnode *head = (const void *)((const uint8_t *)h + KVSHM_MT_HEAD);
    return kv_atomic_load_acquire32(&head->n_next[0]);
}

kvshm_status kvshm_mt_walk(const kvshm_seg *s, uint64_t mt, int newest_only, uint32_t *next,
                           uint32_t *prev, size_t max_keys, kvshm_rec_fn fn, void *ctx)
{
    const struct kvshm_mthdr *h = mt_hdr(s, mt);
    if (!h || h->m_magic != KVSHM_MAGIC_MT) return KVSHM_E_CORRUPT;
    uint64_t bytes = h->m_bytes;
    uint32_t nx = *next;
    const struct kvshm_rec *pr = NULL;
    if (*prev) {
        const struct kvshm_mtnode *pn = mt_node(s, mt, bytes, *prev);
        if (!pn || !(pr = mt_rec(s, mt, bytes, *prev, pn, NULL))) return KVSHM_E_CORRUPT;
    }
    uint64_t budget = bytes / 16 + 1;   /* more nodes than fit: a cycle */
    size_t visited = 0;
    while (nx) {
        const struct kvshm_mtnode *n = mt_node(s, mt, bytes, nx);
        const struct kvshm_rec *r = n ? mt_rec(s, mt, bytes, nx, n, NULL) : NULL;
        if (!r || --budget == 0) return KVSHM_E_CORRUPT;
        int same = pr && kvshm_key_cmp(kvshm_rec_key(pr), pr->r_klen,
                                       kvshm_rec_key(r), r->r_klen) == 0;
        if (!(newest_only && same)) {
            /* A new key (or any version when all are visited): stop here
             * when the step is done, so the cursor rests on a key start. */
            if (visited == max_keys) break;
            if (fn(ctx, kvshm_rec_key(r), r->r_klen, kvshm_rec_val(r), r->r_vlen,
                   r->r_seqt >> 1, (int)(r->r_seqt & 1)))
                break;   /* not consumed: the next call visits it again */
            visited++;
            *prev = nx;
            pr = r;
        }
        nx = kv_atomic_load_acquire32(&n->n_next[0]);
    }
    *next = nx;
    return nx ? KVSHM_OK : KVSHM_EMPTY;
}

kvshm_status kvshm_mt_scan(const kvshm_seg *s, uint64_t mt, int newest_only,
                           kvshm_rec_fn fn, void *ctx)
{
    uint32_t next = kvshm_mt_first(s, mt), prev = 0;
    kvshm_status st = kvshm_mt_walk(s, mt, newest_only, &next, &prev, SIZE_MAX, fn, ctx);
    return st == KVSHM_EMPTY ? KVSHM_OK : st;
}

kvshm_status kvshm_mt_scan_valid(const kvshm_seg *s, uint64_t mt,
                                 kvshm_rec_fn fn, void *ctx, int *stopped)
{
    int stop = 0;
    if (!stopped) stopped = &stop;
    *stopped = 0;
    const struct kvshm_mthdr *h = mt_hdr(s, mt);
    if (!h || h->m_magic != KVSHM_MAGIC_MT) return KVSHM_E_CORRUPT;
    uint64_t bytes = h->m_bytes;
    uint64_t used = kv_atomic_load_acquire64(&h->m_used);
    if (used > bytes) used = bytes;
    uint64_t pos = KVSHM_MT_FIRST;
    while (pos + 16 <= used) {
        const struct kvshm_mtnode *n = mt_node(s, mt, bytes, (uint32_t)pos);
        if (!n) break;
        uint64_t ro;
        const struct kvshm_rec *r = mt_rec(s, mt, bytes, (uint32_t)pos, n, &ro);
        if (!r || ro - mt + kvshm_rec_bytes(r->r_klen, r->r_vlen) > used) break;
        if (r->r_klen == 0 || r->r_klen > KVSHM_MAX_KEY ||
            kvshm_rec_checksum(r->r_seqt, kvshm_rec_key(r), r->r_klen,
                               kvshm_rec_val(r), r->r_vlen) != r->r_checksum)
            break;
        if ((*stopped = fn(ctx, kvshm_rec_key(r), r->r_klen, kvshm_rec_val(r), r->r_vlen,
                           r->r_seqt >> 1, (int)(r->r_seqt & 1)) != 0))
            break;
        pos += NODE_HDR(n->n_height) + ALIGN8(kvshm_rec_bytes(r->r_klen, r->r_vlen));
    }
    return KVSHM_OK;
}

uint64_t kvshm_mt_count(const kvshm_seg *s, uint64_t mt)
{
    const struct kvshm_mthdr *h = mt_hdr(s, mt);
    return h ? kv_atomic_load_relaxed64(&h->m_count) : 0;
}

uint64_t kvshm_mt_used(const kvshm_seg *s, uint64_t mt)
{
    const struct kvshm_mthdr *h = mt_hdr(s, mt);
    return h ? kv_atomic_load_acquire64(&h->m_used) : 0;
}

uint64_t kvshm_mt_block_bytes(const kvshm_seg *s, uint64_t mt)
{
    const struct kvshm_mthdr *h = mt_hdr(s, mt);
    return h ? h->m_bytes : 0;
}
