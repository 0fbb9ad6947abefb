/*
 * replay.c -- committing a dead writer's applied records (kvshm.h,
 * kvshm_replay_segment).
 *
 * When a writer did not stop cleanly, its data segment still holds the
 * records it applied. Every record of its shards' published frozen and
 * active memtables whose checksum verifies (kvshm_recover_scan) and whose
 * sequence number is above the last sequence committed in SQLite
 * (kv_batch_last_seq) is collected; per key the newest one wins; all of
 * them are committed in one batch stored with the largest sequence, so a
 * second replay of the same segment changes nothing. Then the segment is
 * marked CLOSED (attached clients see KVSHM_E_STALE and re-attach).
 *
 * Two callers, each holding the registry lock of the database (so a
 * segment is replayed once): a starting writer (workers/registry.c) and an
 * embedded open or commit of a client (kv_attach_recover, attach.c), which
 * must not write before the dead writer's acknowledged records are in
 * SQLite, or the next writer's replay would overwrite its newer values.
 */
#include <stdlib.h>
#include <string.h>

#include "kvault/batch.h"
#include "kvshm/kvshm.h"

typedef struct rp_rec {
    uint8_t *key;    /* key bytes followed by the value bytes; owned */
    uint32_t klen;
    uint8_t *val;
    uint32_t vlen;
    uint64_t seq;
    int tomb;
} rp_rec;

typedef struct rp_ctx {
    rp_rec *v;
    size_t n, cap;
    uint64_t after;     /* only records with seq > after */
    int oom;
} rp_ctx;

static int rp_collect(void *ctx, const void *key, size_t klen, const void *val, size_t vlen,
                      uint64_t seq, int tombstone)
{
    rp_ctx *c = ctx;
    if (seq <= c->after) return 0;
    if (c->n == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 1024;
        rp_rec *nv = realloc(c->v, nc * sizeof *nv);
        if (!nv) { c->oom = 1; return 1; }
        c->v = nv;
        c->cap = nc;
    }
    rp_rec *r = &c->v[c->n];
    r->key = malloc(klen + vlen + 1);
    if (!r->key) { c->oom = 1; return 1; }
    memcpy(r->key, key, klen);
    if (vlen) memcpy(r->key + klen, val, vlen);
    r->klen = (uint32_t)klen;
    r->val = r->key + klen;
    r->vlen = (uint32_t)vlen;
    r->seq = seq;
    r->tomb = tombstone;
    c->n++;
    return 0;
}

/* memcmp order, shorter key first on a common prefix */
static int key_cmp(const rp_rec *x, const rp_rec *y)
{
    int c = memcmp(x->key, y->key, x->klen < y->klen ? x->klen : y->klen);
    return c ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

/* key ascending, then newest first */
static int rp_cmp(const void *a, const void *b)
{
    const rp_rec *x = a, *y = b;
    int c = key_cmp(x, y);
    if (c) return c;
    return (x->seq < y->seq) - (x->seq > y->seq);
}

kvshm_status kvshm_replay_segment(const char *seg_name, struct kv_batch *b, uint64_t committed,
                                  uint64_t *replayed, uint64_t *top)
{
    rp_ctx c = {.after = committed};
    *replayed = 0;
    *top = committed;
    kvshm_status ks = kvshm_recover_scan(seg_name, rp_collect, &c);
    if (ks == KVSHM_E_MAGIC || ks == KVSHM_E_SIZE) ks = KVSHM_E_LAYOUT;
    if (ks == KVSHM_OK && c.oom) ks = KVSHM_E_NOMEM;
    if (ks != KVSHM_OK) goto out;
    if (c.n) qsort(c.v, c.n, sizeof *c.v, rp_cmp);   /* c.v is NULL when none */
    uint64_t last = committed;
    for (size_t i = 0; i < c.n; i++) if (c.v[i].seq > last) last = c.v[i].seq;
    if (c.n) {
        uint64_t n = 0;
        kv_status st = kv_batch_begin(b);
        for (size_t i = 0; st == KV_OK && i < c.n; i++) {
            if (i && !key_cmp(&c.v[i], &c.v[i - 1]))
                continue;   /* an older version of the same key */
            st = c.v[i].tomb ? kv_batch_delete(b, c.v[i].key, c.v[i].klen)
                             : kv_batch_put(b, c.v[i].key, c.v[i].klen, c.v[i].val, c.v[i].vlen);
            n++;
        }
        if (st == KV_OK) st = kv_batch_commit(b, last);
        else kv_batch_rollback(b);
        if (st != KV_OK) {
            ks = KVSHM_E_SYS;
            goto out;
        }
        *replayed = n;
    }
    *top = last;
    /* Tell clients still mapping it that this segment is finished. */
    kvshm_recover_close(seg_name);
out:
    for (size_t i = 0; i < c.n; i++) free(c.v[i].key);
    free(c.v);
    return ks;
}
