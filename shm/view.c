/*
 * view.c -- a shard's view and the read path; the writer's shard operations.
 *
 * Each shard publishes one immutable view record (active memtable, frozen
 * memtable, tree root) through kvshm_shard.s_view. The writer builds a new
 * view for every change of any of the three and release-stores its offset;
 * a reader acquire-loads it once per lookup and so always searches a
 * consistent triple: active -> frozen -> tree (docs/shared-mode.md, "How it works").
 *
 * Ordering of the writer's steps that the read path relies on: a frozen
 * memtable stays in the view until the tree that contains its records is
 * published (kvshm_writer_fold publishes both changes in one view), so a
 * reader never misses a version that was in shared memory when it began.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- writer ---------------------------------------------------------------------- */

/* Allocate a view block for `shard` (done before a change, so that the
 * change cannot fail after it has been made). */
static kvshm_status view_alloc(kvshm_writer *w, uint32_t shard, uint64_t *off)
{
    return kvshm_blocks_alloc_inner(&w->blocks[shard], sizeof(struct kvshm_view), off);
}

/* Fill the view block (or a new one if preallocated is 0) from the writer's
 * shard state, publish it with a release store, retire the old view. */
kvshm_status kvshmi_publish_view(kvshm_writer *w, uint32_t shard, uint64_t preallocated)
{
    uint64_t off = preallocated;
    kvshm_status st;
    KV_ASSERT(shard < w->nshards);
    if (!off && (st = view_alloc(w, shard, &off))) return st;
    struct kvshm_view *v = kvshm_at(&w->seg, off, sizeof *v);
    KV_ASSERT(v != NULL);
    memset(v, 0, sizeof *v);
    v->v_active = w->active[shard];
    v->v_frozen = w->frozen[shard];
    v->v_tree_root = w->trees[shard].root;
    v->v_tree_height = w->trees[shard].height;
    v->v_tree_keys = w->trees[shard].keys;
    v->v_epoch = w->hdr->h_epoch;
    struct kvshm_shard *sh = &w->shards[shard];
    uint64_t old = sh->s_view;
    /* views are published in epoch order */
    KV_ASSERT_INTERNAL(!old || ((const struct kvshm_view *)kvshm_at(&w->seg, old, sizeof *v))
                                       ->v_epoch <= v->v_epoch);
    kv_atomic_store_release64(&sh->s_view, off);
    kv_atomic_store_relaxed64(&sh->s_tree_keys, w->trees[shard].keys);
    if (old) kvshm_blocks_retire(&w->blocks[shard], old, sizeof *v, w->hdr->h_epoch);
    return KVSHM_OK;
}

static void update_mt_stats(kvshm_writer *w, uint32_t s)
{
    uint64_t n = kvshm_mt_count(&w->seg, w->active[s]);
    if (w->frozen[s]) n += kvshm_mt_count(&w->seg, w->frozen[s]);
    kv_atomic_store_relaxed64(&w->shards[s].s_mt_keys, n);
}

kvshm_status kvshm_writer_put(kvshm_writer *w, const void *key, size_t klen,
                              const void *val, size_t vlen, uint64_t seq,
                              int tombstone)
{
    KVSHMI_WRITER_ONLY(w);
    if (!key || klen == 0 || klen > KVSHM_MAX_KEY || vlen > UINT32_MAX / 2 ||
        (vlen && !val && !tombstone))
        return KVSHM_E_INVAL;
    uint64_t h = kvshm_key_hash(key, klen);
    uint32_t s = w->nshards <= 1 ? 0 : (uint32_t)(h % w->nshards);
    /* Seqlock write side of the key's stripe (layout.h): odd, fence, apply,
     * even. A failed add changes nothing but still leaves the stamp +2. */
    uint64_t *stamp = &w->stripes[kvshm_stripe_of(h)];
    uint64_t e = kv_atomic_load_relaxed64(stamp);
    kv_atomic_store_relaxed64(stamp, e + 1);
    kv_atomic_fence_release();
    kvshm_status st = kvshm_mt_add_hint(&w->seg, w->active[s], &w->fingers[s], key,
                                        (uint32_t)klen, val, tombstone ? 0 : (uint32_t)vlen,
                                        seq, tombstone);
    kv_atomic_store_release64(stamp, e + 2);
    if (!st) update_mt_stats(w, s);
    return st;
}

int kvshm_writer_has_frozen(const kvshm_writer *w, uint32_t shard)
{
    return shard < w->nshards && w->frozen[shard] != 0;
}

void kvshmi_refill_spare(kvshm_writer *w, uint32_t s)
{
    if (w->spare_mt[s]) return;
    uint64_t off;
    if (kvshm_blocks_alloc(&w->blocks[s], w->cfg.memtable_bytes, &off) == KVSHM_OK)
        w->spare_mt[s] = off;
}

kvshm_status kvshm_writer_freeze(kvshm_writer *w, uint32_t s)
{
    KVSHMI_WRITER_ONLY(w);
    if (s >= w->nshards) return KVSHM_E_INVAL;
    if (w->frozen[s]) return KVSHM_E_BUSY;
    uint64_t vo, mt = w->spare_mt[s];
    kvshm_status st = view_alloc(w, s, &vo);
    if (st) return st;
    st = mt ? kvshm_mt_create_at(&w->seg, mt, w->cfg.memtable_bytes)
            : kvshm_mt_create(&w->blocks[s], w->cfg.memtable_bytes, &mt);
    if (st) {
        kvshm_blocks_free(&w->blocks[s], vo, sizeof(struct kvshm_view));
        return st;
    }
    /* The next spare is the block of the memtable frozen now, once it is
     * folded, retired and reclaimed (kvshm_writer_maintain): taking a fresh
     * block here would hold one memtable more than the shard needs. */
    w->spare_mt[s] = 0;
    kvshm_mt_freeze(&w->seg, w->active[s]);
    w->frozen[s] = w->active[s];
    w->active[s] = mt;
    w->fingers[s].mt = 0;
    return kvshmi_publish_view(w, s, vo);
}

kvshm_status kvshm_writer_frozen_scan(kvshm_writer *w, uint32_t s, kvshm_rec_fn fn, void *ctx)
{
    KVSHMI_WRITER_ONLY(w);
    if (s >= w->nshards) return KVSHM_E_INVAL;
    if (!w->frozen[s]) return KVSHM_OK;
    return kvshm_mt_scan(&w->seg, w->frozen[s], 1, fn, ctx);
}

kvshm_status kvshm_writer_frozen_scan_from(kvshm_writer *w, uint32_t s, kvshm_scan_cursor *cur,
                                           size_t max_records, kvshm_rec_fn fn, void *ctx)
{
    KVSHMI_WRITER_ONLY(w);
    if (s >= w->nshards || !cur || max_records == 0) return KVSHM_E_INVAL;
    uint64_t mt = w->frozen[s];
    if (!cur->mt) {
        if (!mt) return KVSHM_EMPTY;
        *cur = (kvshm_scan_cursor){ .mt = mt, .next = kvshm_mt_first(&w->seg, mt) };
    } else if (cur->mt != mt) {
        return KVSHM_E_INVAL;
    }
    if (!cur->next) return KVSHM_EMPTY;
    return kvshm_mt_walk(&w->seg, mt, 1, &cur->next, &cur->prev, max_records, fn, ctx);
}

kvshm_status kvshm_writer_cache_scan(kvshm_writer *w, uint32_t s, kvshm_rec_fn fn, void *ctx)
{
    KVSHMI_WRITER_ONLY(w);
    if (s >= w->nshards) return KVSHM_E_INVAL;
    return kvshm_tree_scan(&w->seg, &w->trees[s], fn, ctx);
}

typedef struct opvec {
    kvshm_tree_op *v;
    size_t n, cap;
    kvshm_writer *w;
    uint32_t shard;
    size_t max_value;
    kvshm_status err;
} opvec;

static int op_push(opvec *o, const void *key, uint32_t klen, uint64_t rec)
{
    if (o->n == o->cap) {
        size_t nc = o->cap ? o->cap * 2 : 256;
        kvshm_tree_op *nv = realloc(o->v, nc * sizeof *nv);
        if (!nv) { o->err = KVSHM_E_NOMEM; return 1; }
        o->v = nv; o->cap = nc;
    }
    o->v[o->n++] = (kvshm_tree_op){ key, klen, rec };
    return 0;
}

static void free_op_recs(opvec *o)
{
    kvshm_blocks *b = &o->w->blocks[o->shard];
    for (size_t i = 0; i < o->n; i++)
        if (o->v[i].rec)
            kvshm_blocks_free(b, o->v[i].rec, kvshm_rec_block_bytes(b->seg, o->v[i].rec));
}

static int fold_visit(void *ctx, const void *key, size_t klen, const void *val,
                      size_t vlen, uint64_t seq, int tombstone)
{
    opvec *o = ctx;
    uint64_t rec = 0;
    if (!tombstone && vlen <= o->max_value) {
        o->err = kvshm_rec_new(&o->w->blocks[o->shard], key, (uint32_t)klen, val,
                               (uint32_t)vlen, seq, 0, &rec);
        if (o->err) return 1;
    }
    if (op_push(o, key, (uint32_t)klen, rec)) {
        if (rec) kvshm_blocks_free(&o->w->blocks[o->shard], rec, kvshm_rec_bytes((uint32_t)klen, (uint32_t)vlen));
        return 1;
    }
    return 0;
}

kvshm_status kvshm_writer_fold(kvshm_writer *w, uint32_t s, size_t max_value_bytes)
{
    KVSHMI_WRITER_ONLY(w);
    if (s >= w->nshards) return KVSHM_E_INVAL;
    if (!w->frozen[s]) return KVSHM_OK;
    uint64_t vo;
    kvshm_status st = view_alloc(w, s, &vo);
    if (st) return st;
    opvec o = { .w = w, .shard = s, .max_value = max_value_bytes };
    st = kvshm_mt_scan(&w->seg, w->frozen[s], 1, fold_visit, &o);
    if (!st) st = o.err;
    uint64_t epoch = w->hdr->h_epoch;
    if (!st) st = kvshm_tree_apply(&w->blocks[s], epoch, &w->trees[s], o.v, o.n);
    if (st) {
        free_op_recs(&o);
        free(o.v);
        kvshm_blocks_free(&w->blocks[s], vo, sizeof(struct kvshm_view));
        return st;
    }
    free(o.v);
    uint64_t old = w->frozen[s];
    w->frozen[s] = 0;
    kvshmi_publish_view(w, s, vo);
    kvshm_blocks_retire(&w->blocks[s], old, kvshm_mt_block_bytes(&w->seg, old), epoch);
    update_mt_stats(w, s);
    return KVSHM_OK;
}

/* Sort helpers for cache_load / cache_evict: (key, input index). */
typedef struct kidx { const void *key; uint32_t klen; size_t i; } kidx;
static int kidx_cmp(const void *a, const void *b)
{
    const kidx *x = a, *y = b;
    int c = kvshm_key_cmp(x->key, x->klen, y->key, y->klen);
    if (c) return c;
    return (x->i > y->i) - (x->i < y->i);
}

/* Has the key a version in the shard's memtables (newer than any cache fill)? */
static int in_memtables(kvshm_writer *w, uint32_t s, const void *key, uint32_t klen)
{
    uint64_t mts[2] = { w->active[s], w->frozen[s] };
    for (int j = 0; j < 2; j++) {
        if (!mts[j]) continue;
        kvshm_val out = { NULL, 0, 0, 0, NULL, NULL };
        if (kvshm_mt_get(&w->seg, mts[j], key, klen, &out) != KVSHM_NOTFOUND) return 1;
    }
    return 0;
}

int kvshm_writer_cached(kvshm_writer *w, const void *key, size_t klen)
{
    KVSHMI_WRITER_ONLY(w);
    if (!key || klen == 0 || klen > KVSHM_MAX_KEY) return 0;
    uint32_t s = kvshm_shard_of(key, klen, w->nshards);
    if (in_memtables(w, s, key, (uint32_t)klen)) return 1;
    kvshm_status err = KVSHM_OK;
    return kvshm_tree_find(&w->seg, w->trees[s].root, w->trees[s].height, key,
                           (uint32_t)klen, &err) != 0;
}

static kvshm_status cache_apply(kvshm_writer *w, const kvshm_kv *kvs,
                                const void *const *keys, const size_t *klens, size_t n)
{
    KVSHMI_WRITER_ONLY(w);
    kvshm_status st = KVSHM_OK;
    kidx *ix = malloc((n ? n : 1) * sizeof *ix);
    uint32_t *sh = malloc((n ? n : 1) * sizeof *sh);
    if (!ix || !sh) { free(ix); free(sh); return KVSHM_E_NOMEM; }
    for (size_t i = 0; i < n; i++) {
        const void *k = kvs ? kvs[i].key : keys[i];
        size_t kl = kvs ? kvs[i].klen : klens[i];
        if (!k || kl == 0 || kl > KVSHM_MAX_KEY || (kvs && kvs[i].vlen > UINT32_MAX / 2)) {
            free(ix); free(sh); return KVSHM_E_INVAL;
        }
        sh[i] = kvshm_shard_of(k, kl, w->nshards);
    }
    for (uint32_t s = 0; s < w->nshards && !st; s++) {
        size_t m = 0;
        for (size_t i = 0; i < n; i++)
            if (sh[i] == s)
                ix[m++] = (kidx){ kvs ? kvs[i].key : keys[i],
                                  (uint32_t)(kvs ? kvs[i].klen : klens[i]), i };
        if (!m) continue;
        qsort(ix, m, sizeof *ix, kidx_cmp);
        opvec o = { .w = w, .shard = s };
        for (size_t j = 0; j < m && !o.err; j++) {
            /* duplicates: keep the last occurrence (largest input index) */
            if (j + 1 < m && kvshm_key_cmp(ix[j].key, ix[j].klen, ix[j + 1].key, ix[j + 1].klen) == 0)
                continue;
            uint64_t rec = 0;
            if (kvs) {
                if (in_memtables(w, s, ix[j].key, ix[j].klen)) continue;
                const kvshm_kv *kv = &kvs[ix[j].i];
                o.err = kvshm_rec_new(&w->blocks[s], kv->key, (uint32_t)kv->klen, kv->val,
                                      (uint32_t)kv->vlen, kv->seq, 0, &rec);
                if (o.err) break;
            }
            if (op_push(&o, ix[j].key, ix[j].klen, rec) && rec)
                kvshm_blocks_free(&w->blocks[s], rec, kvshm_rec_block_bytes(&w->seg, rec));
        }
        uint64_t vo = 0;
        st = o.err;
        if (!st && o.n) st = view_alloc(w, s, &vo);
        if (!st && o.n) {
            st = kvshm_tree_apply(&w->blocks[s], w->hdr->h_epoch, &w->trees[s], o.v, o.n);
            if (st) kvshm_blocks_free(&w->blocks[s], vo, sizeof(struct kvshm_view));
        }
        if (st) free_op_recs(&o);
        else if (o.n) kvshmi_publish_view(w, s, vo);
        free(o.v);
    }
    free(ix);
    free(sh);
    return st;
}

kvshm_status kvshm_writer_cache_load(kvshm_writer *w, const kvshm_kv *kvs, size_t n)
{
    if (!kvs && n) return KVSHM_E_INVAL;
    return cache_apply(w, kvs, NULL, NULL, n);
}

kvshm_status kvshm_writer_cache_evict(kvshm_writer *w, const void *const *keys,
                                      const size_t *klens, size_t n)
{
    if ((!keys || !klens) && n) return KVSHM_E_INVAL;
    return cache_apply(w, NULL, keys, klens, n);
}

void kvshm_writer_set_fault(kvshm_writer *w, uint32_t status, int64_t sqlite_code)
{
    KVSHMI_WRITER_ONLY(w);
    if (kv_atomic_load_relaxed32(&w->hdr->h_fault) == status) return;
    w->hdr->h_fault_code = sqlite_code;
    kv_atomic_store_release32(&w->hdr->h_fault, status);
}

void kvshm_writer_set_refusal(kvshm_writer *w, const char *msg)
{
    KVSHMI_WRITER_ONLY(w);
    struct kvshm_hdr *h = w->hdr;
    uint32_t v = kv_atomic_load_relaxed32(&h->h_refuse_ver);
    kv_atomic_store_relaxed32(&h->h_refuse_ver, v + 1);   /* odd: changing */
    kv_atomic_fence_release();
    size_t n = msg ? strnlen(msg, KVSHM_REFUSE_MSG_MAX - 1) : 0;
    if (n) memcpy(h->h_refuse_msg, msg, n);
    h->h_refuse_msg[n] = 0;
    kv_atomic_store_relaxed32(&h->h_refuse, msg != NULL);
    kv_atomic_store_release32(&h->h_refuse_ver, v + 2);
}

void kvshm_writer_publish_seq(kvshm_writer *w, uint64_t applied, uint64_t committed)
{
    KVSHMI_WRITER_ONLY(w);
    /* sequence numbers only grow */
    KV_ASSERT(!applied || applied >= w->hdr->h_applied_seq);
    KV_ASSERT(!committed || committed >= w->hdr->h_committed_seq);
    if (applied) kv_atomic_store_release64(&w->hdr->h_applied_seq, applied);
    if (committed) kv_atomic_store_release64(&w->hdr->h_committed_seq, committed);
}

/* ---- readers --------------------------------------------------------------------- */

static inline const struct kvshm_view *load_view(const kvshm_reader *r, uint32_t s)
{
    uint64_t off = kv_atomic_load_acquire64(&r->shards[s].s_view);
    return kvshm_at(&r->seg, off, sizeof(struct kvshm_view));
}

/* The memtable part of a lookup in view v: active, then frozen. Returns
 * KVSHM_NOTFOUND when the tree must be searched next. */
static inline kvshm_status lookup_mem(const kvshm_reader *r, const struct kvshm_view *v,
                                      const void *key, uint32_t klen, kvshm_val *out)
{
    uint64_t active = v->v_active, frozen = v->v_frozen;
    kvshm_status st;
    if (active && (st = kvshm_mt_get(&r->seg, active, key, klen, out)) != KVSHM_NOTFOUND)
        return st;
    if (frozen && (st = kvshm_mt_get(&r->seg, frozen, key, klen, out)) != KVSHM_NOTFOUND)
        return st;
    return KVSHM_NOTFOUND;
}

/* What a tree search's result means for the caller. */
static inline kvshm_status tree_result(const kvshm_reader *r, uint64_t rec, kvshm_status err,
                                       const void *key, uint32_t klen, kvshm_val *out)
{
    if (err) return err;
    if (!rec) return KVSHM_NOTFOUND;
    return kvshm_rec_read(&r->seg, rec, key, klen, out);
}

static inline kvshm_status lookup(const kvshm_reader *r, uint32_t s, const void *key,
                                  uint32_t klen, kvshm_val *out)
{
    const struct kvshm_view *v = load_view(r, s);
    if (!v) return KVSHM_E_CORRUPT;
    uint64_t root = v->v_tree_root;
    uint32_t height = v->v_tree_height;
    kvshm_status st = lookup_mem(r, v, key, klen, out);
    if (st != KVSHM_NOTFOUND) return st;
    kvshm_status err = KVSHM_OK;
    uint64_t rec = kvshm_tree_find(&r->seg, root, height, key, klen, &err);
    return tree_result(r, rec, err, key, klen, out);
}

/* get_many's work for m <= KVSHM_FIND_GROUP keys inside a read section:
 * memtables key by key, then every tree descent at once. */
static void get_group(const kvshm_reader *r, const void *const *keys, const size_t *klens,
                      kvshm_val *outs, kvshm_status *sts, size_t m)
{
    kvshm_tree_probe pr[KVSHM_FIND_GROUP];
    size_t who[KVSHM_FIND_GROUP], np = 0;
    for (size_t i = 0; i < m; i++) {
        const void *key = keys[i];
        size_t kl = klens[i];
        if (!key || kl == 0 || kl > KVSHM_MAX_KEY) { sts[i] = KVSHM_E_INVAL; continue; }
        uint32_t s = r->nshards == 1 ? 0 : kvshm_shard_of(key, kl, r->nshards);
        const struct kvshm_view *v = load_view(r, s);
        if (!v) { sts[i] = KVSHM_E_CORRUPT; continue; }
        uint64_t root = v->v_tree_root;
        uint32_t height = v->v_tree_height;
        sts[i] = lookup_mem(r, v, key, (uint32_t)kl, &outs[i]);
        if (sts[i] != KVSHM_NOTFOUND || !root) continue;
        pr[np] = (kvshm_tree_probe){ .root = root, .height = height,
                                     .klen = (uint32_t)kl, .key = key };
        who[np++] = i;
    }
    kvshm_tree_find_many(&r->seg, pr, np);
    for (size_t j = 0; j < np; j++) {
        size_t i = who[j];
        sts[i] = tree_result(r, pr[j].rec, pr[j].err, keys[i], pr[j].klen, &outs[i]);
    }
}

static inline kvshm_status check_fork(kvshm_reader *r)
{
    if (__builtin_expect(r->fork_gen != kvshmi_fork_gen, 0)) return kvshmi_rehome(r);
    return KVSHM_OK;
}

kvshm_status kvshm_reader_enter(kvshm_reader *r)
{
    kvshm_status st = check_fork(r);
    if (st) return st;
    if (r->in_section) return KVSHM_E_INVAL;
    kvshmi_enter(r);
    r->in_section = 1;
    return KVSHM_OK;
}

kvshm_status kvshm_reader_leave(kvshm_reader *r)
{
    if (!r->in_section) return KVSHM_E_INVAL;
    r->in_section = 0;
    return kvshmi_leave(r) ? KVSHM_E_EVICTED : KVSHM_OK;
}

uint64_t kvshm_reader_stamp(const kvshm_reader *r, uint64_t key_hash, int after_read)
{
    if (after_read) kv_atomic_fence_acquire();
    uint64_t e = kv_atomic_load_acquire64(&r->stripes[kvshm_stripe_of(key_hash)]);
    if (__builtin_expect(kv_atomic_load_relaxed32(&r->hdr->h_state) != KVSHM_STATE_READY, 0))
        return 1;
    return e;
}

/* Was a failure inside a section caused by eviction? (peek, no leave) */
static int evicted_now(const kvshm_reader *r)
{
    kv_atomic_fence_acquire();
    return kv_atomic_load_acquire64(&r->slot->sl_gen) != r->gen_seen;
}

kvshm_status kvshm_reader_get(kvshm_reader *r, const void *key, size_t klen,
                              kvshm_val *out)
{
    if (!key || klen == 0 || klen > KVSHM_MAX_KEY) return KVSHM_E_INVAL;
    kvshm_status st = check_fork(r);
    if (st) return st;
    uint32_t s = r->nshards == 1 ? 0 : kvshm_shard_of(key, klen, r->nshards);
    if (r->in_section) {
        st = lookup(r, s, key, (uint32_t)klen, out);
        if (st == KVSHM_E_CORRUPT && evicted_now(r)) return KVSHM_E_EVICTED;
        return st;
    }
    for (;;) {
        kvshmi_enter(r);
        if (__builtin_expect(kv_atomic_load_relaxed32(&r->hdr->h_state) != KVSHM_STATE_READY, 0)) {
            kvshmi_leave(r);
            return KVSHM_E_STALE;
        }
        st = lookup(r, s, key, (uint32_t)klen, out);
        if (__builtin_expect(kvshmi_leave(r), 0)) continue;  /* evicted: retry */
        return st;
    }
}

kvshm_status kvshm_reader_get_many(kvshm_reader *r, size_t n, const void *const *keys,
                                   const size_t *klens, kvshm_val *outs, kvshm_status *sts)
{
    if (n && (!keys || !klens || !outs || !sts)) return KVSHM_E_INVAL;
    kvshm_status st = check_fork(r);
    if (st) return st;
    for (size_t b = 0; b < n; b += KVSHM_FIND_GROUP) {
        size_t m = n - b < KVSHM_FIND_GROUP ? n - b : KVSHM_FIND_GROUP;
        if (r->in_section) {
            get_group(r, keys + b, klens + b, outs + b, sts + b, m);
            for (size_t i = 0; i < m; i++)
                if (sts[b + i] == KVSHM_E_CORRUPT && evicted_now(r)) return KVSHM_E_EVICTED;
            continue;
        }
        for (;;) {
            kvshmi_enter(r);
            if (__builtin_expect(kv_atomic_load_relaxed32(&r->hdr->h_state) != KVSHM_STATE_READY, 0)) {
                kvshmi_leave(r);
                return KVSHM_E_STALE;
            }
            get_group(r, keys + b, klens + b, outs + b, sts + b, m);
            if (!__builtin_expect(kvshmi_leave(r), 0)) break;  /* evicted: retry */
        }
    }
    return KVSHM_OK;
}

/* One source's candidate for the iteration step. */
typedef struct cand { const struct kvshm_rec *rec; uint64_t off; } cand;

static kvshm_status next_once(kvshm_reader *r, const void *prefix, uint32_t plen,
                              uint8_t *last, uint32_t *lastlen, int have_last,
                              kvshm_val *kout, kvshm_val *vout)
{
    for (;;) {
        const uint8_t *seek = have_last ? last : prefix;
        uint32_t seeklen = have_last ? *lastlen : plen;
        const struct kvshm_rec *best = NULL;
        uint64_t best_off = 0;
        for (uint32_t s = 0; s < r->nshards; s++) {
            const struct kvshm_view *v = load_view(r, s);
            if (!v) return KVSHM_E_CORRUPT;
            uint64_t src[2] = { v->v_active, v->v_frozen };
            uint64_t root = v->v_tree_root;
            uint32_t height = v->v_tree_height;
            const struct kvshm_rec *sb = NULL;  /* shard's best: newest source first */
            uint64_t sbo = 0;
            for (int j = 0; j < 3; j++) {
                kvshm_status err = KVSHM_OK;
                uint64_t off;
                if (j < 2) {
                    if (!src[j]) continue;
                    off = kvshm_mt_seek(&r->seg, src[j], seek, seeklen, have_last, &err);
                } else {
                    off = kvshm_tree_seek(&r->seg, root, height, seek, seeklen, have_last, &err);
                }
                if (err) return err;
                if (!off) continue;
                const struct kvshm_rec *rc = kvshm_rec_at(&r->seg, off);
                if (!rc) return KVSHM_E_CORRUPT;
                /* strictly smaller wins; on a tie the earlier (newer) source stays */
                if (!sb || kvshm_key_cmp(kvshm_rec_key(rc), rc->r_klen,
                                         kvshm_rec_key(sb), sb->r_klen) < 0) {
                    sb = rc; sbo = off;
                }
            }
            if (sb && (!best || kvshm_key_cmp(kvshm_rec_key(sb), sb->r_klen,
                                              kvshm_rec_key(best), best->r_klen) < 0)) {
                best = sb; best_off = sbo;
            }
        }
        if (!best) return KVSHM_EMPTY;
        uint32_t kl = best->r_klen;
        if (kl < plen || memcmp(kvshm_rec_key(best), prefix, plen) != 0) return KVSHM_EMPTY;
        if (kl > KVSHM_MAX_KEY) return KVSHM_E_CORRUPT;
        memcpy(last, kvshm_rec_key(best), kl);
        *lastlen = kl;
        have_last = 1;
        kvshm_val tmp = { NULL, 0, 0, 0, NULL, NULL };
        kvshm_val *vo = vout ? vout : &tmp;
        kvshm_status st = kvshm_rec_read(&r->seg, best_off, last, kl, vo);
        if (st == KVSHM_DELETED) continue;            /* deleted key: skip */
        if (st == KVSHM_E_SMALLBUF && !vout) st = KVSHM_OK;
        if (st != KVSHM_OK && st != KVSHM_E_SMALLBUF) return st;
        kout->len = kl;
        if (kl > kout->cap) return KVSHM_E_SMALLBUF;
        memcpy(kout->buf, last, kl);
        kout->seq = vo->seq;
        return st;
    }
}

kvshm_status kvshm_reader_next(kvshm_reader *r, const void *prefix, size_t plen,
                               const void *after, size_t alen,
                               kvshm_val *key, kvshm_val *val)
{
    if (!key || plen > KVSHM_MAX_KEY || alen > KVSHM_MAX_KEY || (plen && !prefix) ||
        (alen && !after))
        return KVSHM_E_INVAL;
    kvshm_status st = check_fork(r);
    if (st) return st;
    uint8_t last[KVSHM_MAX_KEY];
    for (;;) {
        uint32_t lastlen = 0;
        int have_last = 0;
        /* an `after` below the prefix range means: start of the prefix */
        if (alen && kvshm_key_cmp(after, (uint32_t)alen, prefix, (uint32_t)plen) >= 0) {
            memcpy(last, after, alen);
            lastlen = (uint32_t)alen;
            have_last = 1;
        }
        int own = !r->in_section;
        if (own) kvshmi_enter(r);
        st = next_once(r, prefix, (uint32_t)plen, last, &lastlen, have_last, key, val);
        if (own) {
            if (kvshmi_leave(r)) continue;
        } else if (st == KVSHM_E_CORRUPT && evicted_now(r)) {
            return KVSHM_E_EVICTED;
        }
        return st;
    }
}
