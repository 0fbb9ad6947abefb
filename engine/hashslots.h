/*
 * hashslots.h - the slot array of the engine's two key → value maps (the
 * write-back cache, cache.c, and the read cache, readcache.c): open
 * addressing with linear probing over a power-of-two array of entry
 * pointers (NULL = empty), backward-shift deletion (no tombstones), XXH3
 * key hashes. Engine-private, header-only (the lookups are hot).
 *
 * Every entry struct starts with `uint64_t hash`, the kvi_key_hash of its
 * key; finding a key (which needs the entry's key layout) stays with each
 * map. Thread safety: none; each map belongs to one handle.
 */
#ifndef KVAULT_HASHSLOTS_H
#define KVAULT_HASHSLOTS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <xxhash.h>

#include "kv_assert.h"

/** Hash of a key of klen bytes (key may be NULL when klen is 0). */
static inline uint64_t kvi_key_hash(const void *key, size_t klen)
{
    return XXH3_64bits(klen ? key : "", klen);
}

/** The hash stored at the start of entry e. */
static inline uint64_t kvi_slot_hash(const void *e)
{
    uint64_t h;
    memcpy(&h, e, sizeof h);
    return h;
}

/** Slot of slots[0..n) holding the entry of key[0..klen) with hash h, or
 *  the empty slot where it would go. An entry keeps its key length (size_t)
 *  at byte klen_off and its key bytes at key_off (offsetof of its struct;
 *  constants, so the inlined loop reads them directly). */
static inline size_t kvi_slots_find(void *const *slots, size_t n, uint64_t h, const void *key,
                                    size_t klen, size_t klen_off, size_t key_off)
{
    const size_t mask = n - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        const uint8_t *e = slots[i];
        size_t ek;
        if (!e)
            return i;
        memcpy(&ek, e + klen_off, sizeof ek);
        if (kvi_slot_hash(e) == h && ek == klen && (klen == 0 || memcmp(e + key_off, key, klen) == 0))
            return i;
    }
}

/** Put e into the first empty slot from its home in slots[0..n) (n a power
 *  of two with an empty slot; e's key is not in the array). */
static inline void kvi_slots_place(void **slots, size_t n, void *e)
{
    KV_ASSERT_INTERNAL(n > 0 && (n & (n - 1)) == 0);
    size_t j = (size_t)kvi_slot_hash(e) & (n - 1);
    while (slots[j])
        j = (j + 1) & (n - 1);
    slots[j] = e;
}

/** Place every entry of old[0..old_n) into the empty array ns[0..n) (a
 *  power of two, more slots than entries). */
static inline void kvi_slots_rehash(void *const *old, size_t old_n, void **ns, size_t n)
{
    for (size_t i = 0; i < old_n; i++)
        if (old[i])
            kvi_slots_place(ns, n, old[i]);
}

/** Empty slot i of slots[0..n) and move later entries of its probe run
 *  back into the hole when their home slot does not lie cyclically in
 *  (i, j] (backward-shift deletion: every entry stays reachable from its
 *  home without tombstones). */
static inline void kvi_slots_delete(void **slots, size_t n, size_t i)
{
    const size_t mask = n - 1;
    size_t j = i;
    slots[i] = NULL;
    for (;;) {
        j = (j + 1) & mask;
        void *e = slots[j];
        if (!e)
            break;
        size_t home = (size_t)kvi_slot_hash(e) & mask;
        int between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!between) {
            slots[i] = e;
            slots[j] = NULL;
            i = j;
        }
    }
}

#endif /* KVAULT_HASHSLOTS_H */
