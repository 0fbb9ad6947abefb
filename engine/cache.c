/*
 * cache.c - the write-back cache of a kv_db (docs/api.md §4.7).
 *
 * A hash map key → encoded value (open addressing, linear probing,
 * backward-shift deletion; XXH3 hashes) plus the §4.7 byte counter. Flushes
 * write every entry in one IMMEDIATE transaction; a failed flush keeps every
 * entry. The lock flag refuses flushes; a put that would need a refused
 * flush writes its value straight to SQLite instead (and drops any older
 * cached value of that key so a later flush cannot overwrite it): no write
 * is ever dropped.
 */
#include "internal.h"

#include <string.h>

#include "hashslots.h"

#define INITIAL_SLOTS 64

static kvi_cache *cache_new(size_t cap, size_t thr)
{
    kvi_cache *c = kvi_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->slots = kvi_calloc(INITIAL_SLOTS, sizeof *c->slots);
    if (!c->slots) {
        kvi_free(c);
        return NULL;
    }
    c->nslots = INITIAL_SLOTS;
    c->cap_bytes = cap;
    c->flush_threshold = thr;
    return c;
}

/* Slot index holding `key`, or the empty slot where it would go. */
static size_t probe(const kvi_cache *c, uint64_t h, const void *key, size_t klen)
{
    return kvi_slots_find(c->slots, c->nslots, h, key, klen, offsetof(kvi_centry, klen),
                          offsetof(kvi_centry, data));
}

kvi_centry *kvi_cache_find(kvi_cache *c, const void *key, size_t klen)
{
    if (!c || c->count == 0)
        return NULL;
    return c->slots[probe(c, kvi_key_hash(key, klen), key, klen)];
}

static int grow(kvi_cache *c)
{
    void **ns = kvi_calloc(c->nslots * 2, sizeof *ns);
    if (!ns)
        return -1;
    kvi_slots_rehash(c->slots, c->nslots, ns, c->nslots * 2);
    kvi_free(c->slots);
    c->slots = ns;
    c->nslots *= 2;
    return 0;
}

/* Insert or replace; adds klen+vlen to the counter. */
static kv_status cache_insert(kvi_cache *c, const void *key, size_t klen,
                              const void *val, size_t vlen)
{
    if ((c->count + 1) * 2 > c->nslots && grow(c) != 0)
        return KV_NOMEM;
    uint64_t h = kvi_key_hash(key, klen);
    size_t i = probe(c, h, key, klen);
    kvi_centry *e = kvi_malloc(sizeof *e + klen + vlen);
    if (!e)
        return KV_NOMEM;
    e->hash = h;
    e->klen = klen;
    e->vlen = vlen;
    if (klen)
        memcpy(e->data, key, klen);
    if (vlen)
        memcpy(e->data + klen, val, vlen);
    if (c->slots[i])
        kvi_free(c->slots[i]);
    else
        c->count++;
    c->slots[i] = e;
    c->bytes += klen + vlen;
    return KV_OK;
}

int kvi_cache_remove(kvi_cache *c, const void *key, size_t klen)
{
    if (!c || c->count == 0)
        return 0;
    size_t i = probe(c, kvi_key_hash(key, klen), key, klen);
    if (!c->slots[i])
        return 0;
    kvi_free(c->slots[i]);
    kvi_slots_delete(c->slots, c->nslots, i);
    c->count--;
    return 1;
}

static void cache_clear(kvi_cache *c)
{
    for (size_t i = 0; i < c->nslots; i++) {
        kvi_free(c->slots[i]);
        c->slots[i] = NULL;
    }
    c->count = 0;
    c->bytes = 0;
}

void kvi_cache_destroy(kvi_cache *c)
{
    if (!c)
        return;
    cache_clear(c);
    kvi_free(c->slots);
    kvi_free(c);
}

kv_status kvi_cache_flush_force(kv_db *db, size_t *written)
{
    kvi_cache *c = db->cache;
    kv_status st;
    if (written)
        *written = 0;
    if (!c)
        return KV_OK;
    if (c->count == 0) {
        c->bytes = 0;
        return KV_OK;
    }
    if ((st = kvi_begin(db)) != KV_OK)
        return st;
    for (size_t i = 0; i < c->nslots; i++) {
        kvi_centry *e = c->slots[i];
        if (!e)
            continue;
        if ((st = kvi_put_direct(db, e->data, e->klen, e->data + e->klen, e->vlen)) != KV_OK) {
            kvi_rollback(db);
            return st;
        }
    }
    if ((st = kvi_commit(db)) != KV_OK) {
        kvi_rollback(db);
        return st;
    }
    if (written)
        *written = c->count;
    cache_clear(c);
    return KV_OK;
}

/* Write one value directly, dropping any older cached value of the key. */
static kv_status put_bypass(kv_db *db, const void *key, size_t klen,
                            const void *val, size_t vlen)
{
    kv_status st = kvi_put_direct(db, key, klen, val, vlen);
    if (st == KV_OK)
        kvi_cache_remove(db->cache, key, klen);
    return st;
}

kv_status kvi_cache_put(kv_db *db, const void *key, size_t klen,
                        const void *val, size_t vlen)
{
    kvi_cache *c = db->cache;
    kv_status st;
    size_t size = klen + vlen;

    if (size > c->cap_bytes) {
        /* Too large for the cache: flush (unless locked), write directly. */
        if (!c->locked && (st = kvi_cache_flush_force(db, NULL)) != KV_OK)
            return st;
        return put_bypass(db, key, klen, val, vlen);
    }
    if (c->bytes + size > c->cap_bytes) {
        if (c->locked)
            return put_bypass(db, key, klen, val, vlen);   /* never drop */
        if ((st = kvi_cache_flush_force(db, NULL)) != KV_OK)
            return st;
    }
    if ((st = cache_insert(c, key, klen, val, vlen)) != KV_OK)
        return kvi_err_set(&db->err, st, "cache insert: out of memory");
    if (c->flush_threshold && c->bytes >= c->flush_threshold && !c->locked) {
        /* The value is cached already; a failed flush keeps it cached, so
         * report the error but lose nothing. */
        if ((st = kvi_cache_flush_force(db, NULL)) != KV_OK)
            return st;
    }
    return KV_OK;
}

/* ======================================================================
 * Public calls
 * ==================================================================== */

KV_API kv_status kv_cache_enable(kv_db *db, size_t cap_bytes, size_t flush_threshold)
{
    kv_status st;
    kvi_get_release(db);
    if (cap_bytes == 0)
        return kvi_err_set(&db->err, KV_INVALID, "cap_bytes must be > 0");
    if (db->cache) {
        if ((st = kvi_cache_flush_force(db, NULL)) != KV_OK)
            return st;
        kvi_cache_destroy(db->cache);
        db->cache = NULL;
    }
    db->cache = cache_new(cap_bytes, flush_threshold);
    if (!db->cache)
        return kvi_err_set(&db->err, KV_NOMEM, "out of memory");
    return KV_OK;
}

KV_API kv_status kv_cache_disable(kv_db *db)
{
    kv_status st;
    kvi_get_release(db);
    if (!db->cache)
        return KV_OK;
    if ((st = kvi_cache_flush_force(db, NULL)) != KV_OK)
        return st;
    kvi_cache_destroy(db->cache);
    db->cache = NULL;
    return KV_OK;
}

KV_API kv_status kv_cache_flush(kv_db *db, size_t *written)
{
    kvi_get_release(db);
    if (written)
        *written = 0;
    if (!db->cache || db->cache->locked)
        return KV_OK;
    return kvi_cache_flush_force(db, written);
}

KV_API void kv_cache_set_locked(kv_db *db, int locked)
{
    if (db->cache)
        db->cache->locked = locked != 0;
}

KV_API int kv_cache_enabled(const kv_db *db)
{
    return db->cache != NULL;
}

KV_API void kv_cache_stats(const kv_db *db, size_t *entries, size_t *bytes)
{
    if (entries)
        *entries = db->cache ? db->cache->count : 0;
    if (bytes)
        *bytes = db->cache ? db->cache->bytes : 0;
}
