/*
 * kv_hot.h - the hot-value cache of an attached _KVault (docs/shared-mode.md).
 *
 * get() keeps the decoded result of small values whose decoded type is
 * immutable (bytes, str, int, float, bool, None) in a process-local 2-way
 * set-associative table, each copy tagged with the key-stripe token of
 * kv_att_stamp (seqlock over a counter the writer bumps around every applied
 * put/delete of the stripe's keys). A hit is one xxh3 of the key, one compare
 * and two loads from the segment header: no tree walk, no copy, no lock, no
 * system call, and never an older value than the segment itself would
 * return. Bounded by read_cache_bytes. The table starts at
 * KVHOT_MIN_ENTRIES and doubles when a copy would evict one while the bound
 * allows more: a table sized for the bound up front is untouched zeroed
 * memory whose every page costs a page fault on its first lookup, about one
 * fault per get while the keys read are new (a loader's first epoch).
 * While the handle has writes the writer has not applied yet (pipelined,
 * or batched by enable_cache), kv_att_stamp returns 0 and every lookup
 * misses: the read then goes through kv_att_get, which waits for them, so
 * an object reads its own writes.
 *
 * The lookup is inline here so that kv_py.c's get checks it before any call
 * through the backend table; the rest is in kv_attached.c. Everything needs
 * the GIL. kvhot_lookup must not run while another thread is inside a kv_att
 * call on the same handle (a re-attach unmaps the segment): kv_py.c checks
 * its `busy` flag first.
 */
#ifndef KV_HOT_H
#define KV_HOT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include "kvshm/attach.h"

#define KVHOT_ENTRY_BYTES 512        /* read_cache_bytes per table entry */
#define KVHOT_MAX_ENTRIES (1u << 20)
#define KVHOT_MIN_ENTRIES 64u        /* the table starts here and doubles up to its bound */
#define KVHOT_VALUE_MAX 16384        /* larger stored values are not kept */
#define KVHOT_REPORT_EVERY 4096u     /* hits handed to kv_att_add_hits at a time */

/* One copy; key == NULL marks an empty entry. */
typedef struct kvhot_ent {
    uint64_t h;                /* kv_att_key_hash of the key */
    uint64_t token;            /* kv_att_stamp when the copy was validated */
    PyObject *key;             /* owned bytes: the key as stored */
    PyObject *val;             /* owned, immutable decoded value */
    Py_ssize_t cost;           /* bytes charged against limit */
    uint32_t tick;             /* insertion order, for the victim choice */
    uint32_t optk;             /* decoding options val was made under */
} kvhot_ent;

typedef struct kvhot {
    kv_att *a;                 /* borrowed: the attached handle the tokens come from */
    kvhot_ent *ent;            /* owned, mask + 1 entries */
    uint64_t mask;             /* entries - 1 (entries: a power of two >= 2) */
    uint64_t max_mask;         /* mask of the largest table read_cache_bytes allows */
    Py_ssize_t bytes, limit;
    uint32_t tick;
    uint64_t hits;             /* lookups answered */
    uint64_t reported;         /* hits already handed to kv_att_add_hits */
} kvhot;

/** The key hash the cache and kv_att_stamp use. */
static inline uint64_t kvhot_hash(const char *k, Py_ssize_t kn)
{
    return kv_att_key_hash(k, (size_t)kn);
}

/** The entry holding key (hash h), or NULL. */
static inline kvhot_ent *kvhot_find(kvhot *c, uint64_t h, const char *k, Py_ssize_t kn)
{
    kvhot_ent *set = &c->ent[h & c->mask & ~UINT64_C(1)];
    for (int w = 0; w < 2; w++) {
        kvhot_ent *e = &set[w];
        if (e->h == h && e->key && PyBytes_GET_SIZE(e->key) == kn &&
            memcmp(PyBytes_AS_STRING(e->key), k, (size_t)kn) == 0)
            return e;
    }
    return NULL;
}

/** A new reference to the valid copy of key (hash h) decoded under options
 *  `optk`, counting a hit; NULL (no exception) when there is none. */
static inline PyObject *kvhot_lookup(kvhot *c, uint64_t h, const char *k, Py_ssize_t kn,
                                     uint32_t optk)
{
    kvhot_ent *e = kvhot_find(c, h, k, kn);
    if (e && e->optk == optk && e->token == kv_att_stamp(c->a, h, 0)) {
        c->hits++;
        Py_INCREF(e->val);
        return e->val;
    }
    return NULL;
}

/** Keep v (decoded under `optk` from vn stored bytes) as key's copy,
 *  validated at `token` (nonzero). Values that are too large or mutable,
 *  or that do not fit the limit, are not kept. Never raises. */
void kvhot_keep(kvhot *c, uint64_t h, const char *k, Py_ssize_t kn, PyObject *v, size_t vn,
                uint64_t token, uint32_t optk);
/** Hand the hits not yet reported to kv_att_add_hits. Same thread rules as
 *  a kv_att call: under the object's lock. */
void kvhot_report(kvhot *c);
/** Drop every copy and free the cache. NULL is a no-op. */
void kvhot_free(kvhot *c);

#endif /* KV_HOT_H */
