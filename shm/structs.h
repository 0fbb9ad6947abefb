/*
 * structs.h -- the building blocks inside a shard, one module each:
 * size-classed blocks with epoch retire lists (blocks.c), checksummed records
 * (blocks.c), the memtable skip list (memtable.c) and the copy-on-write
 * CSB+tree (csbtree.c). kvshm.h composes them into shards. Private to shm/
 * (and its white-box tests): the writer process reaches them only through
 * kvshm/kvshm.h.
 *
 * Process rules are stated per function: "writer only" functions mutate the
 * segment and need the writable mapping; "any reader" functions only load.
 */
#ifndef KVSHM_STRUCTS_H
#define KVSHM_STRUCTS_H

#include <stddef.h>
#include <stdint.h>

#include "atomics.h"
#include "kv_assert.h"
#include "kvshm/kvshm.h"
#include "layout.h"

/* ---- blocks (blocks.c) ---------------------------------------------------
 * Size classes: multiples of 16 bytes up to 1 KiB, then 4 classes per power
 * of two (at most 25% internal waste) up to 1 TiB. Blocks of 512 bytes or more
 * start on a 64-byte boundary, smaller ones on a 16-byte boundary (a small
 * block may be a piece of a larger one, split_larger in blocks.c). Free blocks of a class form a LIFO list whose
 * links live in the blocks themselves (first 8 bytes); the list heads, the
 * bump pointer and the retire FIFO are the writer's private memory.
 */
#define KVSHM_NCLASSES 192

typedef struct kvshm_retired {
    uint64_t off, bytes, epoch;
} kvshm_retired;

typedef struct kvshm_blocks {
    kvshm_seg *seg;
    struct kvshm_shard *stats;   /* shared stats mirror (may be NULL) */
    uint64_t lo, hi, bump;       /* region [lo, hi); next unused byte (grows up) */
    uint64_t top;                /* leaf area [top, ilo) grows down from ilo */
    uint64_t ilo, itop;          /* inner area [ilo, hi), bump itop grows down */
    uint64_t free_head[KVSHM_NCLASSES];
    uint64_t free_idx[KVSHM_NCLASSES];   /* free lists of the leaf area */
    uint64_t free_inner[KVSHM_NCLASSES]; /* free lists of the inner area */
    uint64_t splits;             /* free blocks split for a smaller class (split_larger) */
    uint64_t used;               /* class bytes allocated, incl. retired */
    uint64_t retired;            /* class bytes retired, not yet reclaimed */
    kvshm_retired *ret;          /* FIFO of retired blocks, epochs ascending */
    size_t ret_head, ret_len, ret_cap;
    int poison;                  /* debug: fill freed blocks with 0xdb */
} kvshm_blocks;

/* Initialise an allocator over [lo, lo + bytes) of seg. Writer only. */
void kvshm_blocks_init(kvshm_blocks *b, kvshm_seg *seg, uint64_t lo,
                       uint64_t bytes, struct kvshm_shard *stats);
/* Free the private retire FIFO (the region itself stays). Writer only. */
void kvshm_blocks_fini(kvshm_blocks *b);
/* Bytes a request of `bytes` really takes (its class size); 0 if too big. */
uint64_t kvshm_blocks_class_bytes(uint64_t bytes);
/* Allocate a block of at least `bytes`; *off gets its offset. Contents are
 * undefined. Blocks of 512 bytes or more are 64-byte aligned, smaller ones
 * 16-byte aligned: small value records pack densely (a 140-byte record takes
 * 144 bytes, not 192), so more of them share a page and a cache's working
 * set spans fewer pages. Writer only. Returns KVSHM_OK, KVSHM_E_INVAL (0 or
 * too big), KVSHM_E_FULL. */
kvshm_status kvshm_blocks_alloc(kvshm_blocks *b, uint64_t bytes, uint64_t *off);
/* Allocate from the index area at the top of the region (tree node groups,
 * separator keys, views): the blocks every lookup walks stay dense, so they
 * share cache lines and TLB entries instead of being strewn among values.
 * Same contract as kvshm_blocks_alloc. Writer only. */
kvshm_status kvshm_blocks_alloc_idx(kvshm_blocks *b, uint64_t bytes, uint64_t *off);
/* Allocate from the inner area (1/64 of the region at its very top):
 * internal tree node groups, roots and views -- the few blocks every lookup
 * passes through stay within a few hundred pages (TLB reach). Falls back to
 * the leaf area when the inner area is full. Writer only. */
kvshm_status kvshm_blocks_alloc_inner(kvshm_blocks *b, uint64_t bytes, uint64_t *off);
/* Return a block no reader can reach (never published) at once. Writer only. */
void kvshm_blocks_free(kvshm_blocks *b, uint64_t off, uint64_t bytes);
/* Queue a block unlinked from the published structures during `epoch`; it is
 * reused once every reader has left that epoch. Epochs must not decrease
 * across calls. Writer only. Returns KVSHM_OK or KVSHM_E_NOMEM. */
kvshm_status kvshm_blocks_retire(kvshm_blocks *b, uint64_t off, uint64_t bytes,
                                 uint64_t epoch);
/* Free every retired block whose epoch < min_live_epoch; returns the bytes
 * reclaimed. Writer only; call after the slot scan (kvshm_writer_maintain). */
uint64_t kvshm_blocks_reclaim(kvshm_blocks *b, uint64_t min_live_epoch);
/* Epoch of the oldest retired block, or UINT64_MAX if none. */
uint64_t kvshm_blocks_oldest_retired(const kvshm_blocks *b);

/* ---- records (blocks.c) --------------------------------------------------- */

/* Checksum of a record: xxh3_64(value, seed = xxh3_64(key, seed = seqt ^
 * (klen << 32 | vlen))). Any process. */
uint64_t kvshm_rec_checksum(uint64_t seqt, const void *key, uint32_t klen,
                            const void *val, uint32_t vlen);
/* Bytes a record with these lengths occupies (header + key + value). */
static inline uint64_t kvshm_rec_bytes(uint32_t klen, uint32_t vlen)
{ return (uint64_t)KVSHM_REC_HDR + klen + vlen; }
/* Fill a record at dst (plain stores; publish it afterwards). Writer only. */
void kvshm_rec_fill(void *dst, const void *key, uint32_t klen, const void *val,
                    uint32_t vlen, uint64_t seq, int tombstone);
/* Allocate and fill a record block; *off gets its offset. Writer only.
 * Returns KVSHM_OK, KVSHM_E_INVAL, KVSHM_E_FULL. */
kvshm_status kvshm_rec_new(kvshm_blocks *b, const void *key, uint32_t klen,
                           const void *val, uint32_t vlen, uint64_t seq,
                           int tombstone, uint64_t *off);
/* Block size of the record at off (for retiring it). Writer only. */
uint64_t kvshm_rec_block_bytes(const kvshm_seg *s, uint64_t off);
/* Map a record: checks that header, key and value lie inside the segment.
 * Returns NULL if not. Any reader. Inline: every lookup's last step. */
static inline const struct kvshm_rec *kvshm_rec_at(const kvshm_seg *s, uint64_t off)
{
    const struct kvshm_rec *r = kvshm_at(s, off, KVSHM_REC_HDR);
    if (!r || !kvshm_at(s, off, kvshm_rec_bytes(r->r_klen, r->r_vlen))) return NULL;
    return r;
}
static inline const uint8_t *kvshm_rec_key(const struct kvshm_rec *r)
{ return (const uint8_t *)r + KVSHM_REC_HDR; }
static inline const uint8_t *kvshm_rec_val(const struct kvshm_rec *r)
{ return (const uint8_t *)r + KVSHM_REC_HDR + r->r_klen; }
/*
 * kvshm_rec_read: copy the value of the record at off into out (whose key
 * must equal key: the caller found it by that key) and verify the checksum
 * over the copy. Any reader. Returns KVSHM_OK; KVSHM_DELETED (tombstone;
 * out->seq set); KVSHM_E_SMALLBUF (out->len = needed); KVSHM_E_CORRUPT (bounds,
 * key or checksum mismatch: stale or damaged); KVSHM_E_NOMEM (out->alloc
 * returned NULL). With out->alloc set, the buffer comes from it (kvshm_val).
 */
kvshm_status kvshm_rec_read(const kvshm_seg *s, uint64_t off, const void *key,
                            uint32_t klen, kvshm_val *out);

/* ---- memtable (memtable.c) ------------------------------------------------
 * A skip list (Pugh 1990; LevelDB's memtable shape) in one append-only arena
 * block: nodes are appended, never changed after publication except for their
 * forward links, which the writer release-stores bottom level first. Order:
 * key ascending, then sequence descending, so the first node of a key is its
 * newest version. Branching factor 1/4, at most KVSHM_MT_MAXH levels.
 */

/* Create an empty memtable in a new block of arena_bytes (>= 4 KiB, <= 4 GiB).
 * Writer only. Returns KVSHM_OK, KVSHM_E_INVAL, KVSHM_E_FULL. */
kvshm_status kvshm_mt_create(kvshm_blocks *b, uint64_t arena_bytes, uint64_t *mt);
/* Lay out an empty memtable in a block the caller allocated (arena_bytes of
 * it, at off). Writer only. Returns KVSHM_OK, KVSHM_E_INVAL, KVSHM_E_CORRUPT. */
kvshm_status kvshm_mt_create_at(kvshm_seg *seg, uint64_t off, uint64_t arena_bytes);
/* Append a version. seq must exceed every earlier seq of the same key in this
 * memtable. Visible to readers on return. Writer only. Returns KVSHM_OK,
 * KVSHM_E_INVAL (klen 0/too long, frozen), KVSHM_E_FULL (arena full). */
kvshm_status kvshm_mt_add(kvshm_seg *s, uint64_t mt, const void *key, uint32_t klen,
                          const void *val, uint32_t vlen, uint64_t seq, int tombstone);
/* Writer-private insertion hint of one memtable (kvshm_mt_add_hint): the
 * node added last and its predecessor at each level. Zero-initialised means
 * "none"; a hint that no longer matches the arena is ignored. */
typedef struct kvshm_mt_finger {
    uint64_t mt;                     /* memtable it describes (0: none) */
    uint64_t used;                   /* the arena's m_used right after that add */
    uint32_t last;                   /* arena offset of the node added last */
    uint32_t preds[KVSHM_MT_MAXH];   /* its predecessor at each level */
} kvshm_mt_finger;
/* kvshm_mt_add, starting the search from *f when the key sorts after the
 * last added one (ascending keys cost O(1) link reads instead of O(log n)
 * cache misses), and leaving *f describing this add. f may be NULL. Same
 * statuses as kvshm_mt_add; *f is updated only on KVSHM_OK. Writer only. */
kvshm_status kvshm_mt_add_hint(kvshm_seg *s, uint64_t mt, kvshm_mt_finger *f,
                               const void *key, uint32_t klen, const void *val,
                               uint32_t vlen, uint64_t seq, int tombstone);
/* Mark frozen (no more appends). Writer only. */
void kvshm_mt_freeze(kvshm_seg *s, uint64_t mt);
/* Point lookup: newest version of key. Any reader. Returns KVSHM_OK,
 * KVSHM_DELETED, KVSHM_NOTFOUND, KVSHM_E_SMALLBUF, KVSHM_E_CORRUPT. */
kvshm_status kvshm_mt_get(const kvshm_seg *s, uint64_t mt, const void *key,
                          uint32_t klen, kvshm_val *out);
/* Record offset of the newest version of the first key >= key (after == 0)
 * or > key (after != 0); klen 0 means from the beginning. 0 if none; *err
 * set to KVSHM_E_CORRUPT on a bounds failure. Any reader. */
uint64_t kvshm_mt_seek(const kvshm_seg *s, uint64_t mt, const void *key,
                       uint32_t klen, int after, kvshm_status *err);
/* Visit records in key order: newest version per key if newest_only, else all
 * versions. Returns KVSHM_OK (also when fn stopped it), KVSHM_E_CORRUPT. Any
 * process (the writer uses it to commit and fold). */
kvshm_status kvshm_mt_scan(const kvshm_seg *s, uint64_t mt, int newest_only,
                           kvshm_rec_fn fn, void *ctx);
/* Arena offset of the first node in key order (0: empty or no memtable at
 * mt): where a kvshm_mt_walk starts. Any process. */
uint32_t kvshm_mt_first(const kvshm_seg *s, uint64_t mt);
/* kvshm_mt_scan in steps, for a memtable that no longer changes (frozen):
 * from the node at *next (0: nothing left), visit at most max_keys records
 * in key order (newest_only: one per key, its newest version; else every
 * version), then leave *next on the first node not visited. *prev is the
 * node of the last record visited (0 before the first step): a later step
 * uses it to skip the remaining older versions of that key, so across steps
 * each key is visited once. When fn returns nonzero the walk stops before
 * that record (a later step visits it again). Returns KVSHM_OK (records
 * left), KVSHM_EMPTY (the walk is finished), KVSHM_E_CORRUPT (bounds check
 * failed, or more nodes than the arena can hold). Any process. */
kvshm_status kvshm_mt_walk(const kvshm_seg *s, uint64_t mt, int newest_only, uint32_t *next,
                           uint32_t *prev, size_t max_keys, kvshm_rec_fn fn, void *ctx);
/* Visit every record in append order whose checksum verifies (crash replay:
 * a new writer reads the old segment). Stops at the first invalid record or
 * when fn returns nonzero; *stopped (may be NULL) is set to 1 in the latter
 * case, else 0. Any process. Returns KVSHM_OK, KVSHM_E_CORRUPT (no memtable
 * at mt). */
kvshm_status kvshm_mt_scan_valid(const kvshm_seg *s, uint64_t mt,
                                 kvshm_rec_fn fn, void *ctx, int *stopped);
/* Records appended / arena bytes used. Any process (relaxed loads). */
uint64_t kvshm_mt_count(const kvshm_seg *s, uint64_t mt);
uint64_t kvshm_mt_used(const kvshm_seg *s, uint64_t mt);
uint64_t kvshm_mt_block_bytes(const kvshm_seg *s, uint64_t mt);

/* ---- CSB+tree (csbtree.c) -------------------------------------------------
 * Keys with values (records) in a B+tree whose nodes are 256-byte
 * struct kvshm_node and whose internal nodes keep their children in one
 * contiguous group (Rao and Ross, SIGMOD 2000). The writer changes it only by
 * copy-on-write batches: every node on a changed path is rewritten into new
 * groups, untouched subtrees are shared, and the new root is published (by
 * the caller, in a view record) with one release store.
 */
typedef struct kvshm_tree {
    uint64_t root;      /* root node offset, 0 when empty */
    uint32_t height;    /* 0 empty, 1 root is a leaf */
    uint64_t keys;      /* keys stored */
} kvshm_tree;

typedef struct kvshm_tree_op {
    const void *key;
    uint32_t klen;
    uint64_t rec;       /* record to store under key; 0 deletes key */
} kvshm_tree_op;

/*
 * kvshm_tree_apply: apply a batch (ops sorted by key ascending, keys unique)
 * copy-on-write. On KVSHM_OK, *t describes the new tree (not yet published:
 * the caller publishes it), the tree owns every op's record, and every
 * replaced node group, record or separator key was retired at `epoch`.
 * On error *t and the old tree are unchanged, nothing was retired, every
 * block the call allocated is freed, and the ops' records still belong to
 * the caller. Writer only. Returns KVSHM_OK, KVSHM_E_INVAL (unsorted ops),
 * KVSHM_E_FULL, KVSHM_E_NOMEM, KVSHM_E_CORRUPT.
 */
kvshm_status kvshm_tree_apply(kvshm_blocks *b, uint64_t epoch, kvshm_tree *t,
                              const kvshm_tree_op *ops, size_t n);
/* Record offset stored under key, 0 if absent (*err = KVSHM_E_CORRUPT on a
 * bounds failure). Any reader. */
uint64_t kvshm_tree_find(const kvshm_seg *s, uint64_t root, uint32_t height,
                         const void *key, uint32_t klen, kvshm_status *err);
/* One key of kvshm_tree_find_many: the tree to search (root, height: a
 * shard's view), the key (caller's memory), and out: rec (the record
 * offset, 0 if absent) and err (KVSHM_OK or KVSHM_E_CORRUPT). */
typedef struct kvshm_tree_probe {
    uint64_t root;
    uint32_t height;
    uint32_t klen;
    const void *key;
    uint64_t rec;
    kvshm_status err;
} kvshm_tree_probe;
/* Probes kvshm_tree_find_many descends together. */
#define KVSHM_FIND_GROUP 16
/* kvshm_tree_find for n probes, each in its own tree, KVSHM_FIND_GROUP at a
 * time: the probes of a group descend one level per round, every step
 * prefetching the next node, so their cache and TLB misses overlap instead
 * of following one another (group prefetching, Chen et al., ICDE 2004).
 * Same results as n kvshm_tree_find calls. Any reader, inside a read
 * section. */
void kvshm_tree_find_many(const kvshm_seg *s, kvshm_tree_probe *p, size_t n);
/* Record offset of the first key >= key (after == 0) or > key (after != 0);
 * klen 0 means the smallest key. 0 if none. Any reader. */
uint64_t kvshm_tree_seek(const kvshm_seg *s, uint64_t root, uint32_t height,
                         const void *key, uint32_t klen, int after,
                         kvshm_status *err);
/* Visit all records in key order. Any process. */
kvshm_status kvshm_tree_scan(const kvshm_seg *s, const kvshm_tree *t,
                             kvshm_rec_fn fn, void *ctx);
/* Check every invariant (order, separators, fill, heights, key count);
 * KVSHM_OK or KVSHM_E_CORRUPT. Test/debug use; any process. */
kvshm_status kvshm_tree_check(const kvshm_seg *s, const kvshm_tree *t);
/* Retire every node, separator and record of the tree at epoch and empty *t.
 * Writer only. Returns KVSHM_OK or KVSHM_E_NOMEM. */
kvshm_status kvshm_tree_retire_all(kvshm_blocks *b, uint64_t epoch, kvshm_tree *t);

#endif /* KVSHM_STRUCTS_H */
