/*
 * layout.h -- the byte layout of kohakuvault's shared memory.
 *
 * Three regions (docs/shared-mode.md, "How it works"):
 *   data segment   created by the writer, mapped read-only by clients
 *   slot file      created by the writer, mapped read-write by clients
 *   submission ring  created by each client (memfd), mapped by the writer too
 * This header draws all three and the records inside them. It is private to
 * shm/ and its white-box tests: consumers (workers/, python/) go through
 * kvshm/kvshm.h, kvshm/ring.h and kvshm/attach.h. Only fixed-width integers
 * live in shared memory; every reference is a byte offset from the region
 * base (0 means null), turned into a pointer by exactly one helper,
 * kvshm_at(), which checks bounds. Every diagram below is backed by
 * _Static_assert offset checks so it cannot drift.
 *
 * Data segment:
 *
 *   0        header (struct kvshm_hdr, 4096 bytes reserved, 256 used)
 *   4096     key-stripe stamps: KVSHM_STRIPES x uint64_t (see below)
 *   36864    shard table: shards x struct kvshm_shard (64 bytes each)
 *   ...      shard 0 region | shard 1 region | ...  (equal, 64-byte aligned)
 *
 *   Each shard region is carved by the writer into size-classed blocks
 *   (blocks.c): view records, memtable arenas, CSB+tree node groups, cached
 *   value records and separator key records.
 *
 * Segment header (struct kvshm_hdr):
 *
 *      0      8      16     24     32     36     40     48     56     64
 *      +------+------+------+------+------+------+------+------+------+
 *      |magic |layout| size |gener-|shards|hdr_  |epoch |appl- |commi-|
 *      |      |hash  |bytes |ation |      |bytes |      |ied_  |tted_ |
 *      +------+------+------+------+------+------+------+------+------+
 *      64     72     80     88     96     104    112    120    128
 *      |shard_|heap_ |heap_ |evict-|reaped|state |writer|reser-|
 *      |tbl   |off   |bytes |ions  |      |      |_pid  |ved   |
 *      +------+------+------+------+------+------+------+------+
 *
 * Writers of each field: all by the writer process. Readers may assume
 * magic..heap_bytes are immutable after state == KVSHM_STATE_READY (set with a
 * release store last at creation). epoch, applied_seq, committed_seq are
 * published with release stores and read with acquire loads.
 */
#ifndef KVSHM_LAYOUT_H
#define KVSHM_LAYOUT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kvshm/kvshm.h"   /* KVSHM_MAX_KEY, kvshm_status */

/* ---- constants ---------------------------------------------------------- */
#define KVSHM_MAGIC_SEG    UINT64_C(0x31474553484d534b) /* "KSMHSEG1" LE bytes */
#define KVSHM_MAGIC_SLOTS  UINT64_C(0x31544f4c534d534b) /* "KSMSLOT1" */
#define KVSHM_MAGIC_MT     UINT64_C(0x3154424c544d534b) /* "KSMTLBT1" */
#define KVSHM_LAYOUT_VERSION 3u
#define KVSHM_STRIPE_OFF   4096u
#define KVSHM_STRIPES      4096u   /* power of two */
#define KVSHM_HDR_BYTES    (KVSHM_STRIPE_OFF + KVSHM_STRIPES * 8u)
#define KVSHM_LINE         64u
#define KVSHM_STATE_READY  1u
#define KVSHM_STATE_CLOSED 2u  /* writer exited cleanly */

/* ---- shared structs: one table per struct --------------------------------
 * Each struct that lives in shared memory is drawn by a table of rows
 * F(S, type, name, array suffix, byte offset) (an X-macro). KVSHM_STRUCT
 * declares the struct from its table and checks every row's offset and the
 * total size at compile time, so the numbers in the diagrams, the
 * declaration and the checks come from one place and cannot drift. */
#define KVSHM_FIELD_DECL(S, type, name, arr, off) type name arr;
#define KVSHM_FIELD_CHECK(S, type, name, arr, off) \
    _Static_assert(offsetof(struct S, name) == (off), #S "." #name " offset");
#define KVSHM_STRUCT(S, FIELDS, bytes)                   \
    struct S { FIELDS(KVSHM_FIELD_DECL, S) };            \
    FIELDS(KVSHM_FIELD_CHECK, S)                         \
    _Static_assert(sizeof(struct S) == (bytes), #S " size")

/* ---- data segment header ------------------------------------------------- */
#define KVSHM_HDR_FIELDS(F, S)                                                 \
    F(S, uint64_t, h_magic,         ,   0) /* KVSHM_MAGIC_SEG; writer, immutable */ \
    F(S, uint64_t, h_layout_hash,   ,   8) /* kvshm_layout_hash(); writer, immutable */ \
    F(S, uint64_t, h_size_bytes,    ,  16) /* mapped size of the segment; immutable */ \
    F(S, uint64_t, h_generation,    ,  24) /* writer incarnation; immutable per segment */ \
    F(S, uint32_t, h_shards,        ,  32) /* shard count (1..KVSHM_MAX_SHARDS); immutable */ \
    F(S, uint32_t, h_hdr_bytes,     ,  36) /* KVSHM_HDR_BYTES; immutable */ \
    F(S, uint64_t, h_epoch,         ,  40) /* global epoch, >= 1; writer release-stores */ \
    F(S, uint64_t, h_applied_seq,   ,  48) /* last sequence applied to memtables; release */ \
    F(S, uint64_t, h_committed_seq, ,  56) /* last sequence committed to SQLite; release */ \
    F(S, uint64_t, h_shard_tbl,     ,  64) /* offset of the shard table; immutable */ \
    F(S, uint64_t, h_heap_off,      ,  72) /* offset of shard 0's region; immutable */ \
    F(S, uint64_t, h_heap_bytes,    ,  80) /* total bytes of all shard regions; immutable */ \
    F(S, uint64_t, h_evictions,     ,  88) /* readers evicted for stalling; writer, relaxed */ \
    F(S, uint64_t, h_reaped,        ,  96) /* dead readers' slots cleared; writer, relaxed */ \
    F(S, uint32_t, h_state,         , 104) /* KVSHM_STATE_*; writer release-stores */ \
    F(S, uint32_t, h_fault,         , 108) /* kv_status of the failing commit, 0: none; release */ \
    F(S, uint64_t, h_writer_pid,    , 112) /* pid of the writer; immutable */   \
    F(S, int64_t,  h_fault_code,    , 120) /* its SQLite extended result code; written before h_fault */ \
    /* write refusal of a cluster follower (kvshm_writer_set_refusal): a     \
     * seqlock -- h_refuse_ver is odd while h_refuse/h_refuse_msg change */  \
    F(S, uint32_t, h_refuse_ver,    , 128) /* bumped by 1 before and after a change */ \
    F(S, uint32_t, h_refuse,        , 132) /* 1: writes are refused */           \
    F(S, char,     h_refuse_msg, [120], 136) /* why, NUL-terminated */
KVSHM_STRUCT(kvshm_hdr, KVSHM_HDR_FIELDS, 256);

/*
 * Key-stripe stamps: a seqlock per stripe of keys, for process-local copies.
 *
 * KVSHM_STRIPES 64-bit counters at KVSHM_STRIPE_OFF; a key belongs to stripe
 * kvshm_stripe_of(xxh3(key)). Before the writer applies a put or delete of a
 * key to a memtable it makes the key's counter odd (relaxed store, then a
 * release fence, so the odd value is visible before the record's links), and
 * after it makes it even again (release store): +2 per applied write. Folds
 * into the tree, loads of missed keys and evictions do not change any key's
 * visible value and leave the counters alone.
 *
 * A reader that keeps a copy of a key's value outside the segment reads the
 * stripe (acquire) before its lookup and again after it (acquire fence, then
 * load); when both reads return the same even value E, the copy stays the
 * key's current value for as long as the counter still reads E. Readers only
 * read the counters. A counter starts at 0 in every segment, so a copy is
 * tied to the segment (generation) it was validated against.
 */
static inline uint32_t kvshm_stripe_of(uint64_t key_hash)
{
    return (uint32_t)(key_hash >> 40) & (KVSHM_STRIPES - 1u);
}

/*
 * Shard record (64 bytes, one cache line, all fields written by the writer;
 * the counters are relaxed statistics).
 */
#define KVSHM_SHARD_FIELDS(F, S)                                                    \
    /* offset of the current struct kvshm_view; release-stored, readers           \
     * acquire-load it: the one publication point of a shard */                   \
    F(S, uint64_t, s_view,         ,  0)                                          \
    F(S, uint64_t, s_region,       ,  8) /* offset of this shard's block region */ \
    F(S, uint64_t, s_region_bytes, , 16) /* its size in bytes */                  \
    F(S, uint64_t, s_used,         , 24) /* block bytes allocated (live + retired) */ \
    F(S, uint64_t, s_retired,      , 32) /* bytes retired, not yet reclaimed */   \
    F(S, uint64_t, s_tree_keys,    , 40) /* keys in the published tree */         \
    F(S, uint64_t, s_mt_keys,      , 48) /* records in active + frozen memtables */ \
    F(S, uint64_t, s_miss_policy,  , 56) /* KVSHM_MISS_*: misses the writer loads; relaxed */
KVSHM_STRUCT(kvshm_shard, KVSHM_SHARD_FIELDS, 64);

/*
 * View record (64 bytes, a block in the shard's region). Immutable once
 * published: the writer builds a new one and release-stores its offset into
 * kvshm_shard.s_view, then retires the old one. A reader therefore always
 * searches a consistent (active, frozen, tree) triple. Offsets 0 mean none.
 */
#define KVSHM_VIEW_FIELDS(F, S)                                                     \
    F(S, uint64_t, v_active,      ,     0) /* offset of the active memtable */    \
    F(S, uint64_t, v_frozen,      ,     8) /* the frozen one being committed */   \
    F(S, uint64_t, v_tree_root,   ,    16) /* CSB+tree root node (0: empty) */    \
    F(S, uint32_t, v_tree_height, ,    24) /* levels (0: empty, 1: root is a leaf) */ \
    F(S, uint32_t, v_pad,         ,    28)                                        \
    F(S, uint64_t, v_tree_keys,   ,    32) /* keys in the tree */                 \
    F(S, uint64_t, v_epoch,       ,    40) /* global epoch when published (diagnostics) */ \
    F(S, uint64_t, v_reserved,    [2], 48)
KVSHM_STRUCT(kvshm_view, KVSHM_VIEW_FIELDS, 64);

/*
 * Record: a key/value version, the unit both the memtable and the tree hand
 * out. Stored at 8-byte alignment, immutable once published; the header is
 * followed by key[klen] and value[vlen].
 */
#define KVSHM_REC_FIELDS(F, S)                                                      \
    F(S, uint64_t, r_checksum, ,  0) /* kvshm_rec_checksum(seqt, key, value) */   \
    F(S, uint32_t, r_klen,     ,  8) /* key bytes (1..KVSHM_MAX_KEY) */           \
    F(S, uint32_t, r_vlen,     , 12) /* value bytes (0 for a tombstone) */        \
    F(S, uint64_t, r_seqt,     , 16) /* sequence number << 1 | tombstone bit */
KVSHM_STRUCT(kvshm_rec, KVSHM_REC_FIELDS, 24);
#define KVSHM_REC_HDR 24u

/*
 * Memtable arena header (at the arena's start; the arena is one block).
 * Links inside an arena are uint32_t offsets relative to the arena start.
 *
 *   0 magic     KVSHM_MAGIC_MT
 *   8 bytes     arena size in bytes
 *  16 used      append position; writer release-stores after each record
 *  24 count     records appended
 *  32 min_seq   smallest sequence appended (0: none)
 *  40 max_seq   largest sequence appended
 *  48 level     highest link level in use (1..KVSHM_MT_MAXH)
 *  52 frozen    1 once frozen (no more appends)
 *  56 reserved
 *  64 head node (struct kvshm_mtnode with KVSHM_MT_MAXH links)
 */
#define KVSHM_MT_MAXH 16u
struct kvshm_mtnode {
    uint64_t n_prefix;    /* first 8 key bytes, big-endian, zero padded */
    uint8_t  n_height;    /* links in n_next (1..KVSHM_MT_MAXH) */
    uint8_t  n_pad[3];
    uint32_t n_next[];    /* arena-relative offsets; writer release-stores */
    /* then, at an 8-byte boundary, a struct kvshm_rec */
};
_Static_assert(offsetof(struct kvshm_mtnode, n_height) == 8, "mtnode layout");
_Static_assert(offsetof(struct kvshm_mtnode, n_next) == 12, "mtnode layout");

struct kvshm_mthdr {
    uint64_t m_magic;
    uint64_t m_bytes;
    uint64_t m_used;
    uint64_t m_count;
    uint64_t m_min_seq;
    uint64_t m_max_seq;
    uint32_t m_level;
    uint32_t m_frozen;
    uint64_t m_reserved;
    /* offset 64: head node */
};
_Static_assert(sizeof(struct kvshm_mthdr) == 64, "mthdr size");
#define KVSHM_MT_HEAD 64u
#define KVSHM_MT_FIRST 192u /* first record node; head takes 12 + 16*4 bytes */

/*
 * CSB+tree node (Rao and Ross, "Making B+-trees cache conscious in main
 * memory", SIGMOD 2000): 512 bytes = 8 cache lines, 64-byte aligned. The
 * children of an internal node sit in one contiguous group of (n+1) nodes, so
 * a node stores one child offset. Then 30 entries of (key prefix, offset):
 * the prefix is the 8 key bytes after `skip` (below) as a big-endian u64,
 * zero padded; the offset is the
 * key's value record (leaf) or its separator key record (internal; read only
 * when a prefix ties). Prefix and offset share a line, so the line where a
 * leaf search ends also holds the record offset it needs next.
 *
 * Why 30 keys: at 1M keys a lookup is bound by dependent cache and TLB
 * misses. With 30-key nodes the tree is 4 levels instead of 6, the internal
 * levels (about 1 MiB at 1M keys) stay in L2/L3, and a reader prefetches a
 * whole child (8 lines) as one burst of parallel misses, so a lookup pays
 * about one memory latency for the leaf and one for the value record. On the
 * development machine 30-key nodes did 1.6-1.8M lookups/s where 14-key nodes
 * (256 bytes) did 1.3-1.5M; 62-key nodes were slower again
 * (docs/performance.md, "Shared segment lookups").
 *
 *   0 n        keys in use (0..KVSHM_NODE_KEYS)
 *   2 level    0 for a leaf
 *   3 pad
 *   4 skip     bytes every key routed to this node shares (prefix
 *              truncation, Bayer and Unterauer, "Prefix B-trees", TODS 1977):
 *              the longest common prefix of the node's two fence keys (the
 *              separators around it in its parent, 0 when either side is
 *              unbounded). Any key k with lo <= k < hi starts with those
 *              bytes, so prefixes are taken after them: keys such as
 *              "user:000123" no longer tie on their first 8 bytes
 *   6 pad
 *   8 child    internal: offset of the child group; leaf: 0
 *  16 e[30]    {prefix, ref}: 16 bytes each; unused entries (n..29) have
 *              prefix UINT64_MAX, so readers search all 30 without a branch
 *              on n
 * 496 reserved[2]
 */
#define KVSHM_NODE_KEYS 30
#define KVSHM_NODE_BYTES 512u
struct kvshm_node {
    uint16_t c_n;
    uint8_t  c_level;
    uint8_t  c_pad0;
    uint16_t c_skip;
    uint8_t  c_pad[2];
    uint64_t c_child;
    struct kvshm_entry {
        uint64_t e_prefix;
        uint64_t e_ref;
    } c_e[KVSHM_NODE_KEYS];
    uint64_t c_reserved[2];
};
_Static_assert(offsetof(struct kvshm_node, c_level) == 2, "node layout");
_Static_assert(offsetof(struct kvshm_node, c_skip) == 4, "node layout");
_Static_assert(offsetof(struct kvshm_node, c_child) == 8, "node layout");
_Static_assert(offsetof(struct kvshm_node, c_e) == 16, "node layout");
_Static_assert(sizeof(struct kvshm_entry) == 16, "node layout");
_Static_assert(sizeof(struct kvshm_node) == KVSHM_NODE_BYTES, "node size");
#define KVSHM_TREE_MAXH 24

/*
 * Slot file:
 *
 *   0   header (struct kvshm_slothdr, 128 bytes)
 *   128 slots[nslots] (struct kvshm_slot, 64 bytes each, one cache line)
 *
 * Slot i is owned by whichever process holds an F_OFD_SETLK write lock on
 * byte (128 + 64*i) of the slot file; the kernel drops the lock when the last
 * descriptor of that open file description closes (normally: the process
 * dies), which is how the writer tells dead owners without trusting pids.
 */
#define KVSHM_SLOTHDR_FIELDS(F, S)                                          \
    F(S, uint64_t, sh_magic,           ,      0) /* KVSHM_MAGIC_SLOTS; writer, immutable */ \
    F(S, uint64_t, sh_layout_hash,     ,      8) /* immutable */            \
    F(S, uint64_t, sh_generation,      ,     16) /* equals the segment's generation; immutable */ \
    F(S, uint32_t, sh_nslots,          ,     24) /* immutable */            \
    /* futex word the writer sleeps on; a client that finds the writer      \
     * asleep after publishing bumps it and wakes it (kvshm.h)  */          \
    F(S, uint32_t, sh_doorbell,        ,     28)                            \
    F(S, uint32_t, sh_writer_sleeping, ,     32) /* 1 while the writer sleeps on sh_doorbell */ \
    F(S, uint32_t, sh_spinners,        ,     36) /* clients spinning in a wait right now (spinwait.h) */ \
    /* clients bump it after sending a request on the writer's socket; the  \
     * writer polls the socket when it moved (or at most every millisecond) */ \
    F(S, uint32_t, sh_requests,        ,     40)                            \
    F(S, uint32_t, sh_writer_spinning, ,     44) /* 1 while the writer spins idle */ \
    F(S, uint64_t, sh_reserved,        [10], 48)
KVSHM_STRUCT(kvshm_slothdr, KVSHM_SLOTHDR_FIELDS, 128);

/* A reader slot (64 bytes, one cache line). */
#define KVSHM_SLOT_FIELDS(F, S)                                                     \
    /* epoch the owner entered, 0 when idle. Written only by the owner (one      \
     * plain release store to enter, one to leave) and by the writer when it     \
     * clears a dead owner's slot */                                              \
    F(S, uint64_t, sl_epoch,     ,     0)                                         \
    /* slot generation; written only by the writer, which bumps it to evict a    \
     * stalled owner or when it clears a dead one. The owner re-reads it after   \
     * each read and retries if it moved */                                       \
    F(S, uint64_t, sl_gen,       ,     8)                                         \
    F(S, uint32_t, sl_pid,       ,    16) /* owner's pid (diagnostics; liveness: the OFD lock) */ \
    F(S, uint32_t, sl_flags,     ,    20) /* KVSHM_SLOT_*; owner */               \
    F(S, uint64_t, sl_attach_ns, ,    24) /* CLOCK_MONOTONIC time of the claim; owner */ \
    /* 1 while the owner spins in a wait and counts in sh_spinners; the    \
     * writer takes the count back when it reaps a dead owner's slot */      \
    F(S, uint32_t, sl_spinning,  ,    32)                                         \
    F(S, uint32_t, sl_pad,       ,    36)                                         \
    F(S, uint64_t, sl_reserved,  [3], 40)
KVSHM_STRUCT(kvshm_slot, KVSHM_SLOT_FIELDS, 64);
#define KVSHM_SLOTS_OFF 128u
#define KVSHM_SLOT_FENCED 1u /* owner could not register for membarrier; it fences itself */

/*
 * Submission ring (kvshm/ring.h): the memfd a client creates. A 256-byte
 * header, then data[capacity] at KVSHM_RING_HDR. The header's lines, by who
 * writes them (so neither side's stores invalidate the line the other side
 * writes):
 *
 *     0  immutable     magic, layout hash, capacity
 *    64  producer      tail; the positions it sleeps for (head_want,
 *                      commit_want) and its "sleeping" flags; tail_seq
 *   128  consumer      head, committed; head_seq, commit_seq (futex words
 *                      the producer sleeps on); its "sleeping" flag
 *   192  reserved
 *
 * Positions are free-running byte counts. The wake-up protocol is
 * described at the top of shm/ring.c.
 */
#define KVSHM_MAGIC_RING UINT64_C(0x31474e49524d534b) /* "KSMRING1" */
#define KVSHM_RING_HDR 256u
#define KVSHM_RING_HDR_FIELDS(F, S)                                                 \
    F(S, uint64_t, rh_magic,            ,     0) /* KVSHM_MAGIC_RING; producer, immutable */ \
    F(S, uint64_t, rh_layout_hash,      ,     8) /* immutable */                  \
    F(S, uint32_t, rh_capacity,         ,    16) /* data bytes, power of two; immutable */ \
    F(S, uint32_t, rh_flags,            ,    20)                                  \
    F(S, uint64_t, rh_pad0,             [5], 24)                                  \
    /* ---- written by the producer ---- */                                       \
    F(S, uint64_t, rh_tail,             ,    64) /* end of published data (release) */ \
    F(S, uint64_t, rh_head_want,        ,    72) /* head position the sleeping producer waits for */ \
    F(S, uint64_t, rh_commit_want,      ,    80) /* committed position it waits for */ \
    F(S, uint32_t, rh_tail_seq,         ,    88) /* futex: bumped for a sleeping consumer */ \
    F(S, uint32_t, rh_producer_waiting, ,    92) /* 1 while sleeping on head_seq (release) */ \
    F(S, uint32_t, rh_commit_waiting,   ,    96) /* 1 while sleeping on commit_seq (release) */ \
    F(S, uint32_t, rh_pad1,             ,   100)                                  \
    F(S, uint64_t, rh_pad2,             [3], 104)                                 \
    /* ---- written by the consumer ---- */                                       \
    F(S, uint64_t, rh_head,             ,   128) /* start of unconsumed data (release) */ \
    F(S, uint64_t, rh_committed,        ,   136) /* records before it are committed (release) */ \
    F(S, uint32_t, rh_head_seq,         ,   144) /* futex: bumped to wake a producer waiting on head */ \
    F(S, uint32_t, rh_commit_seq,       ,   148) /* futex: bumped to wake one waiting on committed */ \
    F(S, uint32_t, rh_consumer_waiting, ,   152) /* 1 while sleeping on tail_seq */ \
    F(S, uint32_t, rh_pad3,             ,   156)                                  \
    F(S, uint64_t, rh_write_consumed,   ,   160) /* end of the last PUT/DEL consumed (release; \
                                                    stored before the head passes it) */ \
    F(S, uint64_t, rh_pad4,             [3], 168)                                 \
    F(S, uint64_t, rh_reserved,         [8], 192)
KVSHM_STRUCT(kvshm_ring_hdr, KVSHM_RING_HDR_FIELDS, KVSHM_RING_HDR);

/* ---- process-local mapping handle and the bounds-checked dereference ---- */

/*
 * A process's mapping of the data segment. `base` is wherever mmap put it;
 * nothing shared ever stores it.
 */
typedef struct kvshm_seg {
    uint8_t *base;        /* start of the mapping */
    uint64_t size;        /* bytes mapped */
    uint64_t lo;          /* smallest valid object offset (KVSHM_HDR_BYTES) */
    int      writable;    /* 1 in the writer */
    int      fd;          /* shm object descriptor (-1 once closed) */
} kvshm_seg;

/*
 * kvshm_at: the one place an offset becomes a pointer. Returns base + off if
 * [off, off + len) lies inside the mapping and off is not in the header
 * (offset 0 is null), else NULL. Callers treat NULL as "corrupt or stale".
 * Any process; pure function of the mapping.
 */
static inline void *kvshm_at(const kvshm_seg *s, uint64_t off, uint64_t len)
{
    if (__builtin_expect(off < s->lo || off > s->size || len > s->size - off, 0))
        return NULL;
    return s->base + off;
}

/* Start loading the cache line at p (prefetcht0; never faults). An asm
 * statement rather than __builtin_prefetch: GCC 12 at -O2 silently deleted
 * every __builtin_prefetch of the tree's read path once it was split into
 * inline helpers (the address was a select of offset or 0), which made
 * lookups about 25% slower with no other sign. */
static inline void kvshm_prefetch(const void *p)
{
#if defined(__x86_64__) || defined(__i386__)
    __asm__ volatile("prefetcht0 %0" : : "m"(*(const char *)p));
#else
    __builtin_prefetch(p);
#endif
}

/* First 8 bytes of a key as a big-endian integer, zero padded: comparing two
 * prefixes as integers orders keys like memcmp on those bytes. */
static inline uint64_t kvshm_key_prefix(const void *key, uint32_t klen)
{
    uint64_t v = 0;
    if (klen >= 8) memcpy(&v, key, 8);
    else memcpy(&v, key, klen);
    return __builtin_bswap64(v);
}

/* memcmp order, shorter key first on a common prefix. Compares 8 bytes at a
 * time inline (keys are short; a libc memcmp call costs more than the
 * compare itself on the lookup path). */
static inline int kvshm_key_cmp(const void *a, uint32_t alen, const void *b, uint32_t blen)
{
    const uint8_t *x = a, *y = b;
    uint32_t m = alen < blen ? alen : blen, i = 0;
    for (; i + 8 <= m; i += 8) {
        uint64_t u, v;
        memcpy(&u, x + i, 8);
        memcpy(&v, y + i, 8);
        if (u != v) return __builtin_bswap64(u) < __builtin_bswap64(v) ? -1 : 1;
    }
    for (; i < m; i++)
        if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
    return (alen > blen) - (alen < blen);
}

/* Layout fingerprint: xxh3 of the version and every offset/size above. */
uint64_t kvshm_layout_hash(void);

#endif /* KVSHM_LAYOUT_H */
