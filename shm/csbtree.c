/*
 * csbtree.c -- the clean cache of a shard: a copy-on-write CSB+tree.
 *
 * Rao and Ross, "Making B+-trees cache conscious in main memory" (SIGMOD
 * 2000): an internal node stores its keys and ONE child offset, because its
 * n+1 children sit in one contiguous group; child i is at group + i * 512.
 * Nodes are 512 bytes (8 cache lines, layout.h) of 30 (prefix, offset)
 * entries. A search prefetches each child whole, as one burst, from its
 * parent, finds its position with a branch-free lower bound over the 30
 * big-endian key prefixes, and touches key records only when a prefix ties.
 *
 * Writer side: a batch is applied to process-local "working" nodes
 * (struct wnode) materialised lazily from the published tree along the
 * changed paths; splits and merges/borrows happen there with ordinary B+tree
 * rules (capacity 30 keys, minimum 10 below the root). Write-out allocates a
 * fresh group for every working internal node, copies untouched children
 * (whose subtrees are shared, not copied) and recurses into working ones,
 * then allocates a one-node block for the root. Nothing reachable from the
 * published root is ever written; the caller publishes the new root with one
 * release store and the replaced groups/records were retired at the batch's
 * epoch. Readers need no checks beyond bounds.
 *
 * Separator keys of internal nodes are stored as key records (vlen 0) owned
 * by the separator: allocated when a split or a borrow creates it, retired
 * when a merge or a borrow removes it, shared by every copy of the node.
 */
#include <stdlib.h>
#include <string.h>

#include "structs.h"

#define CAP KVSHM_NODE_KEYS
#define MINK 10

/* ---- reader side ------------------------------------------------------------ */

/* Compare the key of the record at ref with key. *bad on bounds failure. */
static inline int ref_cmp(const kvshm_seg *s, uint64_t ref, const void *key,
                          uint32_t klen, int *bad)
{
    const struct kvshm_rec *r = kvshm_rec_at(s, ref);
    if (!r) { *bad = 1; return 0; }
    return kvshm_key_cmp(kvshm_rec_key(r), r->r_klen, key, klen);
}

/* Number of the node's first n prefixes that are < p: a branch-free lower
 * bound over all CAP slots (5 compares for 30 slots, no data-dependent
 * branch), valid because write_node fills unused slots with UINT64_MAX,
 * which is never < p. Clamped to n so that a damaged node cannot send a
 * reader past its keys. */
static inline int count_less(const struct kvshm_entry *e, int n, uint64_t p)
{
    const struct kvshm_entry *b = e;
    unsigned len = CAP;
    while (len > 1) {
        unsigned half = len / 2;
        b = b[half].e_prefix < p ? b + half : b;
        len -= half;
    }
    int i = (int)(b - e) + (b->e_prefix < p);
    return i < n ? i : n;
}

/* Number of entries < key (le == 0) or <= key (le != 0) among n sorted
 * entries given by prefix[] and ref[]. */
static inline int rank(const kvshm_seg *s, const struct kvshm_entry *e,
                       int n, uint64_t p, const void *key, uint32_t klen, int le,
                       int *bad)
{
    int i = count_less(e, n, p);
    while (i < n && e[i].e_prefix == p) {
        int c = ref_cmp(s, e[i].e_ref, key, klen, bad);
        if (*bad) return 0;
        if (c < 0 || (le && c == 0)) i++;
        else break;
    }
    return i;
}

/* key's prefix as node nd stores prefixes: the 8 bytes after nd's skip
 * (layout.h). A key routed to nd is at least skip bytes long. */
static inline uint64_t node_prefix(const struct kvshm_node *nd, const void *key, uint32_t klen)
{
    uint32_t sk = nd->c_skip;
    return sk <= klen ? kvshm_key_prefix((const uint8_t *)key + sk, klen - sk) : 0;
}

/* Longest common prefix of two keys, in bytes. */
static uint32_t lcp(const uint8_t *a, uint32_t alen, const uint8_t *b, uint32_t blen)
{
    uint32_t m = alen < blen ? alen : blen, i = 0;
    while (i < m && a[i] == b[i]) i++;
    return i;
}

static inline const struct kvshm_node *node_at(const kvshm_seg *s, uint64_t off,
                                               unsigned level)
{
    const struct kvshm_node *nd = kvshm_at(s, off, KVSHM_NODE_BYTES);
    if (!nd || nd->c_level != level || nd->c_n > CAP) return NULL;
    return nd;
}

/* Start the misses of a whole node at off now, all at once (its
 * prefix/offset pairs span all of its lines). */
static inline void prefetch_node(const kvshm_seg *s, uint64_t off)
{
    const uint8_t *pf = s->base + (off < s->size ? off : 0);
    for (unsigned q = 0; q < KVSHM_NODE_BYTES / 64; q++) kvshm_prefetch(pf + 64 * q);
}

/* One internal level of a point lookup: the child of the level-lvl node at
 * off that covers key, prefetched. 0 with *err set on a bounds failure. */
static inline uint64_t inner_step(const kvshm_seg *s, uint64_t off, unsigned lvl,
                                  const void *key, uint32_t klen, kvshm_status *err)
{
    int bad = 0;
    const struct kvshm_node *nd = node_at(s, off, lvl);
    if (!nd) { *err = KVSHM_E_CORRUPT; return 0; }
    int i = rank(s, nd->c_e, nd->c_n, node_prefix(nd, key, klen), key, klen, 1, &bad);
    if (bad) { *err = KVSHM_E_CORRUPT; return 0; }
    off = nd->c_child + (uint64_t)i * KVSHM_NODE_BYTES;
    prefetch_node(s, off);
    return off;
}

static inline void prefetch_rec(const kvshm_seg *s, uint64_t ro)
{
    if (ro < s->size - 192) {
        kvshm_prefetch(s->base + ro);
        kvshm_prefetch(s->base + ro + 64);
        kvshm_prefetch(s->base + ro + 128);
    }
}

/* The leaf step, first half: position *j of key's prefix in the leaf at off
 * (branch-free rank of the first prefix >= it: no mispredict on where the
 * key sits) and the record of that entry prefetched when the prefix is
 * equal. Returns the leaf, NULL with *err set on a bounds failure. */
static inline const struct kvshm_node *leaf_seek(const kvshm_seg *s, uint64_t off,
                                                 const void *key, uint32_t klen,
                                                 uint64_t *p, int *j, kvshm_status *err)
{
    const struct kvshm_node *lf = node_at(s, off, 0);
    if (!lf) { *err = KVSHM_E_CORRUPT; return NULL; }
    *p = node_prefix(lf, key, klen);
    *j = count_less(lf->c_e, lf->c_n, *p);
    if (*j < lf->c_n && lf->c_e[*j].e_prefix == *p) prefetch_rec(s, lf->c_e[*j].e_ref);
    return lf;
}

/* Second half: full-key compares from entry j across the entries whose
 * prefix equals p (this waits for their records; leaf_seek prefetched the
 * first, later ones tie only rarely). The record offset of key, 0 if
 * absent. */
static inline uint64_t leaf_match(const kvshm_seg *s, const struct kvshm_node *lf, int j,
                                  uint64_t p, const void *key, uint32_t klen,
                                  kvshm_status *err)
{
    int bad = 0;
    for (int n = lf->c_n; j < n && lf->c_e[j].e_prefix == p; j++) {
        uint64_t ro = lf->c_e[j].e_ref;
        int c = ref_cmp(s, ro, key, klen, &bad);
        if (bad) { *err = KVSHM_E_CORRUPT; return 0; }
        if (c == 0) return ro;
        if (c > 0) break;
    }
    return 0;
}

uint64_t kvshm_tree_find(const kvshm_seg *s, uint64_t root, uint32_t height,
                         const void *key, uint32_t klen, kvshm_status *err)
{
    if (!root || !height) return 0;
    if (height > KVSHM_TREE_MAXH) { *err = KVSHM_E_CORRUPT; return 0; }
    uint64_t off = root;
    for (unsigned lvl = height - 1; lvl > 0; lvl--)
        if (!(off = inner_step(s, off, lvl, key, klen, err))) return 0;
    uint64_t p;
    int j;
    const struct kvshm_node *lf = leaf_seek(s, off, key, klen, &p, &j, err);
    return lf ? leaf_match(s, lf, j, p, key, klen, err) : 0;
}

/*
 * Group prefetching (Chen, Ailamaki, Gibbons and Mowry, "Improving hash join
 * performance through prefetching", ICDE 2004, applied to tree descents):
 * the probes advance one step per round -- an internal level, the leaf
 * search, the full-key compare against the record -- so the miss a probe's
 * step prefetches is in flight while the other probes take their steps.
 */
static void find_group(const kvshm_seg *s, kvshm_tree_probe *p, size_t n)
{
    /* Per probe: the node to search next and the steps left. Steps left k:
     * k >= 3 an internal node of level k - 2, 2 the leaf, 1 the compare. */
    uint64_t off[KVSHM_FIND_GROUP], pre[KVSHM_FIND_GROUP];
    const struct kvshm_node *lf[KVSHM_FIND_GROUP];
    int at[KVSHM_FIND_GROUP];
    uint32_t k[KVSHM_FIND_GROUP];
    size_t left = 0;
    for (size_t i = 0; i < n; i++) {
        kvshm_tree_probe *q = &p[i];
        q->rec = 0;
        q->err = KVSHM_OK;
        k[i] = 0;
        if (!q->root || !q->height) continue;
        if (q->height > KVSHM_TREE_MAXH) { q->err = KVSHM_E_CORRUPT; continue; }
        k[i] = q->height + 1;
        off[i] = q->root;
        prefetch_node(s, q->root);
        left++;
    }
    while (left) {
        for (size_t i = 0; i < n; i++) {
            if (!k[i]) continue;
            kvshm_tree_probe *q = &p[i];
            int more = 0;
            if (k[i] >= 3)
                more = (off[i] = inner_step(s, off[i], k[i] - 2, q->key, q->klen, &q->err)) != 0;
            else if (k[i] == 2)
                more = (lf[i] = leaf_seek(s, off[i], q->key, q->klen, &pre[i], &at[i], &q->err)) != NULL;
            else
                q->rec = leaf_match(s, lf[i], at[i], pre[i], q->key, q->klen, &q->err);
            if (more) { k[i]--; continue; }
            k[i] = 0;
            left--;
        }
    }
}

void kvshm_tree_find_many(const kvshm_seg *s, kvshm_tree_probe *p, size_t n)
{
    for (size_t b = 0; b < n; b += KVSHM_FIND_GROUP)
        find_group(s, p + b, n - b < KVSHM_FIND_GROUP ? n - b : KVSHM_FIND_GROUP);
}

uint64_t kvshm_tree_seek(const kvshm_seg *s, uint64_t root, uint32_t height,
                         const void *key, uint32_t klen, int after,
                         kvshm_status *err)
{
    if (!root || !height) return 0;
    if (height > KVSHM_TREE_MAXH) { *err = KVSHM_E_CORRUPT; return 0; }
    const struct kvshm_node *path[KVSHM_TREE_MAXH];
    int idx[KVSHM_TREE_MAXH];
    int bad = 0;
    uint64_t off = root;
    for (int lvl = (int)height - 1; lvl >= 0; lvl--) {
        const struct kvshm_node *nd = node_at(s, off, (unsigned)lvl);
        if (!nd) { *err = KVSHM_E_CORRUPT; return 0; }
        int i = klen ? rank(s, nd->c_e, nd->c_n, node_prefix(nd, key, klen), key, klen,
                            lvl > 0 ? 1 : after, &bad) : 0;
        if (bad) { *err = KVSHM_E_CORRUPT; return 0; }
        path[lvl] = nd;
        idx[lvl] = i;
        if (lvl > 0) off = nd->c_child + (uint64_t)i * KVSHM_NODE_BYTES;
    }
    /* Leaf position idx[0]; past the end, climb to the next subtree. */
    if (idx[0] < path[0]->c_n) return path[0]->c_e[idx[0]].e_ref;
    int lvl = 1;
    while (lvl < (int)height && ++idx[lvl] > path[lvl]->c_n) lvl++;
    if (lvl >= (int)height) return 0;
    off = path[lvl]->c_child + (uint64_t)idx[lvl] * KVSHM_NODE_BYTES;
    for (int d = lvl - 1; d >= 0; d--) {
        const struct kvshm_node *nd = node_at(s, off, (unsigned)d);
        if (!nd) { *err = KVSHM_E_CORRUPT; return 0; }
        path[d] = nd;
        idx[d] = 0;
        off = nd->c_child;
    }
    if (path[0]->c_n == 0) { *err = KVSHM_E_CORRUPT; return 0; }
    return path[0]->c_e[idx[0]].e_ref;
}

/* ---- writer side: working nodes ---------------------------------------------- */

typedef struct wnode wnode;
typedef struct wref { wnode *m; uint64_t off; } wref;
struct wnode {
    int level, n;
    uint64_t prefix[CAP + 1];
    uint64_t ref[CAP + 1];
    wref kid[CAP + 2];
};

typedef struct span { uint64_t off, bytes; } span;
typedef struct spanvec { span *v; size_t n, cap; } spanvec;

typedef struct bctx {
    kvshm_blocks *b;
    kvshm_seg *s;
    spanvec retire;       /* retired on success only */
    spanvec allocs;       /* freed on failure only */
    wnode **nodes; size_t nnodes, capnodes;
    int64_t dkeys;
    kvshm_status err;
} bctx;

static void sv_push(bctx *c, spanvec *v, uint64_t off, uint64_t bytes)
{
    if (v->n == v->cap) {
        size_t nc = v->cap ? v->cap * 2 : 64;
        span *nv = realloc(v->v, nc * sizeof *nv);
        if (!nv) { c->err = KVSHM_E_NOMEM; return; }
        v->v = nv; v->cap = nc;
    }
    v->v[v->n++] = (span){ off, bytes };
}

static wnode *wnew(bctx *c, int level)
{
    if (c->nnodes == c->capnodes) {
        size_t nc = c->capnodes ? c->capnodes * 2 : 64;
        wnode **nv = realloc(c->nodes, nc * sizeof *nv);
        if (!nv) { c->err = KVSHM_E_NOMEM; return NULL; }
        c->nodes = nv; c->capnodes = nc;
    }
    wnode *w = calloc(1, sizeof *w);
    if (!w) { c->err = KVSHM_E_NOMEM; return NULL; }
    w->level = level;
    c->nodes[c->nnodes++] = w;
    return w;
}

/* Make the node behind r a working node (copying it out of the segment). The
 * published node's child group will be replaced, so it is retired now. */
static wnode *materialize(bctx *c, wref *r, int level)
{
    if (r->m) return r->m;
    const struct kvshm_node *nd = node_at(c->s, r->off, (unsigned)level);
    if (!nd) { c->err = KVSHM_E_CORRUPT; return NULL; }
    wnode *w = wnew(c, level);
    if (!w) return NULL;
    w->n = nd->c_n;
    /* working nodes keep the prefix of the first 8 key bytes (no skip: keys
     * move between nodes); write_node stores them after the node's skip */
    for (int j = 0; j < w->n; j++) {
        const struct kvshm_rec *kr = kvshm_rec_at(c->s, nd->c_e[j].e_ref);
        if (!kr) { c->err = KVSHM_E_CORRUPT; return NULL; }
        w->prefix[j] = kvshm_key_prefix(kvshm_rec_key(kr), kr->r_klen);
        w->ref[j] = nd->c_e[j].e_ref;
    }
    if (level > 0) {
        for (int i = 0; i <= w->n; i++)
            w->kid[i] = (wref){ NULL, nd->c_child + (uint64_t)i * KVSHM_NODE_BYTES };
        sv_push(c, &c->retire, nd->c_child, (uint64_t)(w->n + 1) * KVSHM_NODE_BYTES);
    }
    r->m = w;
    return w;
}

static int wrank(bctx *c, const wnode *w, const void *key, uint32_t klen, int le)
{
    /* Not rank(): a working node may briefly hold CAP + 1 keys. */
    int bad = 0, i = 0, n = w->n;
    uint64_t p = kvshm_key_prefix(key, klen);
    while (i < n && w->prefix[i] < p) i++;
    while (i < n && w->prefix[i] == p) {
        int cm = ref_cmp(c->s, w->ref[i], key, klen, &bad);
        if (bad) { c->err = KVSHM_E_CORRUPT; return 0; }
        if (cm < 0 || (le && cm == 0)) i++;
        else break;
    }
    return i;
}

static kvshm_status new_sep(bctx *c, uint64_t rec_ref, uint64_t *sep)
{
    const struct kvshm_rec *r = kvshm_rec_at(c->s, rec_ref);
    if (!r) return KVSHM_E_CORRUPT;
    uint64_t off;
    uint64_t bytes = kvshm_rec_bytes(r->r_klen, 0);
    kvshm_status st = kvshm_blocks_alloc_idx(c->b, bytes, &off);
    if (st) return st;
    kvshm_rec_fill(kvshm_at(c->s, off, bytes), kvshm_rec_key(r), r->r_klen, "", 0, 0, 0);
    sv_push(c, &c->allocs, off, kvshm_rec_bytes(r->r_klen, 0));
    *sep = off;
    return KVSHM_OK;
}

static void retire_rec(bctx *c, uint64_t ref)
{
    uint64_t bytes = kvshm_rec_block_bytes(c->s, ref);
    if (!bytes) { c->err = KVSHM_E_CORRUPT; return; }
    sv_push(c, &c->retire, ref, bytes);
}

/* Split the overfull child i of p into two siblings. */
static void split_child(bctx *c, wnode *p, int i)
{
    wnode *x = p->kid[i].m;
    wnode *y = wnew(c, x->level);
    if (!y) return;
    uint64_t sp, sr;
    if (x->level == 0) {
        int keep = (x->n + 1) / 2;
        y->n = x->n - keep;
        memcpy(y->prefix, x->prefix + keep, (size_t)y->n * 8);
        memcpy(y->ref, x->ref + keep, (size_t)y->n * 8);
        x->n = keep;
        sp = y->prefix[0];
        if ((c->err = new_sep(c, y->ref[0], &sr))) return;
    } else {
        int mid = x->n / 2;
        sp = x->prefix[mid];
        sr = x->ref[mid];
        y->n = x->n - mid - 1;
        memcpy(y->prefix, x->prefix + mid + 1, (size_t)y->n * 8);
        memcpy(y->ref, x->ref + mid + 1, (size_t)y->n * 8);
        memcpy(y->kid, x->kid + mid + 1, (size_t)(y->n + 1) * sizeof(wref));
        x->n = mid;
    }
    memmove(p->prefix + i + 1, p->prefix + i, (size_t)(p->n - i) * 8);
    memmove(p->ref + i + 1, p->ref + i, (size_t)(p->n - i) * 8);
    memmove(p->kid + i + 2, p->kid + i + 1, (size_t)(p->n - i) * sizeof(wref));
    p->prefix[i] = sp;
    p->ref[i] = sr;
    p->kid[i + 1] = (wref){ y, 0 };
    p->n++;
}

/* The child of internal working node x that op's key routes to, made a
 * working node; *i gets its index. NULL with c->err set on failure. */
static wnode *route(bctx *c, wnode *x, const kvshm_tree_op *op, int *i)
{
    KV_ASSERT_INTERNAL(x->level > 0 && x->n <= CAP);
    *i = wrank(c, x, op->key, op->klen, 1);
    if (c->err) return NULL;
    KV_ASSERT_INTERNAL(*i >= 0 && *i <= x->n);
    return materialize(c, &x->kid[*i], x->level - 1);
}

static void w_insert(bctx *c, wnode *x, const kvshm_tree_op *op)
{
    if (x->level == 0) {
        int i = wrank(c, x, op->key, op->klen, 0);
        if (c->err) return;
        int bad = 0;
        if (i < x->n && ref_cmp(c->s, x->ref[i], op->key, op->klen, &bad) == 0 && !bad) {
            retire_rec(c, x->ref[i]);
            x->ref[i] = op->rec;
            return;
        }
        if (bad) { c->err = KVSHM_E_CORRUPT; return; }
        memmove(x->prefix + i + 1, x->prefix + i, (size_t)(x->n - i) * 8);
        memmove(x->ref + i + 1, x->ref + i, (size_t)(x->n - i) * 8);
        x->prefix[i] = kvshm_key_prefix(op->key, op->klen);
        x->ref[i] = op->rec;
        x->n++;
        c->dkeys++;
        return;
    }
    int i;
    wnode *k = route(c, x, op, &i);
    if (!k) return;
    w_insert(c, k, op);
    if (!c->err && k->n > CAP) split_child(c, x, i);
}

static void remove_at(wnode *p, int s)
{
    /* drop separator s and child s+1 */
    memmove(p->prefix + s, p->prefix + s + 1, (size_t)(p->n - s - 1) * 8);
    memmove(p->ref + s, p->ref + s + 1, (size_t)(p->n - s - 1) * 8);
    memmove(p->kid + s + 1, p->kid + s + 2, (size_t)(p->n - s - 1) * sizeof(wref));
    p->n--;
}

/* Child i of p fell below MINK keys: merge it with a sibling or borrow. */
static void rebalance(bctx *c, wnode *p, int i)
{
    if (p->n == 0) return;
    int s = i > 0 ? i - 1 : 0;            /* separator between L and R */
    wnode *L = materialize(c, &p->kid[s], p->level - 1);
    wnode *R = L ? materialize(c, &p->kid[s + 1], p->level - 1) : NULL;
    if (!R) return;
    if (L->level == 0) {
        if (L->n + R->n <= CAP) {
            memcpy(L->prefix + L->n, R->prefix, (size_t)R->n * 8);
            memcpy(L->ref + L->n, R->ref, (size_t)R->n * 8);
            L->n += R->n;
            R->n = 0;
            sv_push(c, &c->retire, p->ref[s], kvshm_rec_block_bytes(c->s, p->ref[s]));
            remove_at(p, s);
            return;
        }
        if (L->n > R->n) {
            memmove(R->prefix + 1, R->prefix, (size_t)R->n * 8);
            memmove(R->ref + 1, R->ref, (size_t)R->n * 8);
            R->prefix[0] = L->prefix[L->n - 1];
            R->ref[0] = L->ref[L->n - 1];
            R->n++; L->n--;
        } else {
            L->prefix[L->n] = R->prefix[0];
            L->ref[L->n] = R->ref[0];
            L->n++;
            memmove(R->prefix, R->prefix + 1, (size_t)(R->n - 1) * 8);
            memmove(R->ref, R->ref + 1, (size_t)(R->n - 1) * 8);
            R->n--;
        }
        uint64_t sep;
        if ((c->err = new_sep(c, R->ref[0], &sep))) return;
        sv_push(c, &c->retire, p->ref[s], kvshm_rec_block_bytes(c->s, p->ref[s]));
        p->ref[s] = sep;
        p->prefix[s] = R->prefix[0];
        return;
    }
    if (L->n + R->n + 1 <= CAP) {
        L->prefix[L->n] = p->prefix[s];
        L->ref[L->n] = p->ref[s];
        memcpy(L->prefix + L->n + 1, R->prefix, (size_t)R->n * 8);
        memcpy(L->ref + L->n + 1, R->ref, (size_t)R->n * 8);
        memcpy(L->kid + L->n + 1, R->kid, (size_t)(R->n + 1) * sizeof(wref));
        L->n += R->n + 1;
        R->n = 0;
        remove_at(p, s);
        return;
    }
    if (L->n > R->n) {          /* rotate right through the parent */
        memmove(R->prefix + 1, R->prefix, (size_t)R->n * 8);
        memmove(R->ref + 1, R->ref, (size_t)R->n * 8);
        memmove(R->kid + 1, R->kid, (size_t)(R->n + 1) * sizeof(wref));
        R->prefix[0] = p->prefix[s];
        R->ref[0] = p->ref[s];
        R->kid[0] = L->kid[L->n];
        R->n++;
        p->prefix[s] = L->prefix[L->n - 1];
        p->ref[s] = L->ref[L->n - 1];
        L->n--;
    } else {                    /* rotate left */
        L->prefix[L->n] = p->prefix[s];
        L->ref[L->n] = p->ref[s];
        L->kid[L->n + 1] = R->kid[0];
        L->n++;
        p->prefix[s] = R->prefix[0];
        p->ref[s] = R->ref[0];
        memmove(R->prefix, R->prefix + 1, (size_t)(R->n - 1) * 8);
        memmove(R->ref, R->ref + 1, (size_t)(R->n - 1) * 8);
        memmove(R->kid, R->kid + 1, (size_t)R->n * sizeof(wref));
        R->n--;
    }
}

static void w_delete(bctx *c, wnode *x, const kvshm_tree_op *op)
{
    if (x->level == 0) {
        int i = wrank(c, x, op->key, op->klen, 0);
        if (c->err || i >= x->n) return;
        int bad = 0;
        if (ref_cmp(c->s, x->ref[i], op->key, op->klen, &bad) != 0 || bad) {
            if (bad) c->err = KVSHM_E_CORRUPT;
            return;
        }
        retire_rec(c, x->ref[i]);
        memmove(x->prefix + i, x->prefix + i + 1, (size_t)(x->n - i - 1) * 8);
        memmove(x->ref + i, x->ref + i + 1, (size_t)(x->n - i - 1) * 8);
        x->n--;
        c->dkeys--;
        return;
    }
    int i;
    wnode *k = route(c, x, op, &i);
    if (!k) return;
    w_delete(c, k, op);
    if (!c->err && k->n < MINK) rebalance(c, x, i);
}

/* Write working node w into dst (512 bytes), allocating its child group.
 * lo/hi: its fence keys (NULL: unbounded), which fix its skip. */
static void write_node(bctx *c, const wnode *w, struct kvshm_node *dst, const uint8_t *lo,
                       uint32_t lolen, const uint8_t *hi, uint32_t hilen)
{
    memset(dst, 0, sizeof *dst);
    dst->c_n = (uint16_t)w->n;
    dst->c_level = (uint8_t)w->level;
    uint32_t sk = lo && hi ? lcp(lo, lolen, hi, hilen) : 0;
    dst->c_skip = (uint16_t)(sk > UINT16_MAX ? UINT16_MAX : sk);
    const struct kvshm_rec *kr[CAP];
    for (int i = 0; i < w->n; i++) {
        if (!(kr[i] = kvshm_rec_at(c->s, w->ref[i]))) { c->err = KVSHM_E_CORRUPT; return; }
        dst->c_e[i] = (struct kvshm_entry){
            node_prefix(dst, kvshm_rec_key(kr[i]), kr[i]->r_klen), w->ref[i] };
    }
    for (int i = w->n; i < CAP; i++) dst->c_e[i].e_prefix = UINT64_MAX;  /* see count_less */
    if (w->level == 0) return;
    uint64_t gbytes = (uint64_t)(w->n + 1) * KVSHM_NODE_BYTES, g;
    /* groups of internal nodes go to the small inner area, leaf groups to
     * the leaf area */
    if ((c->err = w->level >= 2 ? kvshm_blocks_alloc_inner(c->b, gbytes, &g)
                                : kvshm_blocks_alloc_idx(c->b, gbytes, &g)))
        return;
    sv_push(c, &c->allocs, g, gbytes);
    uint8_t *gp = kvshm_at(c->s, g, gbytes);
    for (int i = 0; i <= w->n && !c->err; i++) {
        struct kvshm_node *kd = (struct kvshm_node *)(gp + (size_t)i * KVSHM_NODE_BYTES);
        if (w->kid[i].m) {
            /* child i lies between separators i-1 and i */
            const uint8_t *clo = i > 0 ? kvshm_rec_key(kr[i - 1]) : lo;
            const uint8_t *chi = i < w->n ? kvshm_rec_key(kr[i]) : hi;
            uint32_t cll = i > 0 ? kr[i - 1]->r_klen : lolen;
            uint32_t chl = i < w->n ? kr[i]->r_klen : hilen;
            write_node(c, w->kid[i].m, kd, clo, cll, chi, chl);
        } else {
            /* untouched: its fences did not change (every separator change
             * materialises the children on both sides of it) */
            const void *src = kvshm_at(c->s, w->kid[i].off, KVSHM_NODE_BYTES);
            if (!src) { c->err = KVSHM_E_CORRUPT; return; }
            memcpy(kd, src, KVSHM_NODE_BYTES);
        }
    }
    dst->c_child = g;
}

static void bctx_free(bctx *c)
{
    for (size_t i = 0; i < c->nnodes; i++) free(c->nodes[i]);
    free(c->nodes);
    free(c->retire.v);
    free(c->allocs.v);
}

kvshm_status kvshm_tree_apply(kvshm_blocks *b, uint64_t epoch, kvshm_tree *t,
                              const kvshm_tree_op *ops, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (ops[i].klen == 0 || ops[i].klen > KVSHM_MAX_KEY) return KVSHM_E_INVAL;
        if (i && kvshm_key_cmp(ops[i - 1].key, ops[i - 1].klen, ops[i].key, ops[i].klen) >= 0)
            return KVSHM_E_INVAL;
    }
    if (n == 0) return KVSHM_OK;
    bctx c = { .b = b, .s = b->seg };
    wref root = { NULL, t->root };
    int height = (int)t->height;
    for (size_t i = 0; i < n && !c.err; i++) {
        const kvshm_tree_op *op = &ops[i];
        if (op->rec == 0) {
            /* A delete of a key the published tree lacks (and this batch has
             * not inserted: keys are unique) changes nothing: skip the copy. */
            if (height == 0) continue;
            kvshm_status e = KVSHM_OK;
            if (!kvshm_tree_find(c.s, t->root, t->height, op->key, op->klen, &e)) {
                if (e) c.err = e;
                continue;
            }
            wnode *r = materialize(&c, &root, height - 1);
            if (!r) break;
            w_delete(&c, r, op);
            if (c.err) break;
            if (r->level > 0 && r->n == 0) {
                wnode *k = materialize(&c, &r->kid[0], r->level - 1);
                if (!k) break;
                root.m = k;
                height--;
            } else if (r->level == 0 && r->n == 0) {
                root = (wref){ NULL, 0 };
                height = 0;
            }
            continue;
        }
        if (height == 0) {
            wnode *lf = wnew(&c, 0);
            if (!lf) break;
            root = (wref){ lf, 0 };
            height = 1;
        }
        wnode *r = materialize(&c, &root, height - 1);
        if (!r) break;
        w_insert(&c, r, op);
        if (c.err) break;
        if (r->n > CAP) {
            if (height >= KVSHM_TREE_MAXH) { c.err = KVSHM_E_FULL; break; }
            wnode *nr = wnew(&c, r->level + 1);
            if (!nr) break;
            nr->kid[0] = (wref){ r, 0 };
            split_child(&c, nr, 0);
            root = (wref){ nr, 0 };
            height++;
        }
    }
    uint64_t new_root = 0;
    if (!c.err && root.m) {
        if (!(c.err = kvshm_blocks_alloc_inner(b, KVSHM_NODE_BYTES, &new_root))) {
            sv_push(&c, &c.allocs, new_root, KVSHM_NODE_BYTES);
            write_node(&c, root.m, kvshm_at(c.s, new_root, KVSHM_NODE_BYTES), NULL, 0, NULL, 0);
        }
    } else if (!c.err) {
        new_root = root.off;  /* emptied, or untouched */
    }
    if (c.err) {
        for (size_t i = c.allocs.n; i-- > 0;)
            kvshm_blocks_free(b, c.allocs.v[i].off, c.allocs.v[i].bytes);
        kvshm_status st = c.err;
        bctx_free(&c);
        return st;
    }
    /* The old root block is replaced whenever the root was materialised. */
    if (t->root && new_root != t->root)
        kvshm_blocks_retire(b, t->root, KVSHM_NODE_BYTES, epoch);
    for (size_t i = 0; i < c.retire.n; i++)
        kvshm_blocks_retire(b, c.retire.v[i].off, c.retire.v[i].bytes, epoch);
    KV_ASSERT_INTERNAL(c.dkeys >= 0 || (uint64_t)-c.dkeys <= t->keys);
    KV_ASSERT_INTERNAL(height >= 0 && height <= KVSHM_TREE_MAXH);
    t->root = new_root;
    t->height = (uint32_t)height;
    t->keys = (uint64_t)((int64_t)t->keys + c.dkeys);
    bctx_free(&c);
    KV_ASSERT_EXPENSIVE(kvshm_tree_check(b->seg, t) == KVSHM_OK);
    return KVSHM_OK;
}

/* ---- whole-tree walks ------------------------------------------------------- */

static kvshm_status scan_rec(const kvshm_seg *s, uint64_t off, int level,
                             kvshm_rec_fn fn, void *ctx, int *stop)
{
    const struct kvshm_node *nd = node_at(s, off, (unsigned)level);
    if (!nd) return KVSHM_E_CORRUPT;
    if (level == 0) {
        for (int j = 0; j < nd->c_n && !*stop; j++) {
            const struct kvshm_rec *r = kvshm_rec_at(s, nd->c_e[j].e_ref);
            if (!r) return KVSHM_E_CORRUPT;
            *stop = fn(ctx, kvshm_rec_key(r), r->r_klen, kvshm_rec_val(r), r->r_vlen,
                       r->r_seqt >> 1, (int)(r->r_seqt & 1));
        }
        return KVSHM_OK;
    }
    for (int j = 0; j <= nd->c_n && !*stop; j++) {
        kvshm_status st = scan_rec(s, nd->c_child + (uint64_t)j * KVSHM_NODE_BYTES,
                                   level - 1, fn, ctx, stop);
        if (st) return st;
    }
    return KVSHM_OK;
}

kvshm_status kvshm_tree_scan(const kvshm_seg *s, const kvshm_tree *t,
                             kvshm_rec_fn fn, void *ctx)
{
    if (!t->root) return KVSHM_OK;
    int stop = 0;
    return scan_rec(s, t->root, (int)t->height - 1, fn, ctx, &stop);
}

typedef struct ckst { const void *lo; uint32_t lolen; const void *hi; uint32_t hilen; } ckst;

/* Every key k in the subtree satisfies lo <= k < hi (NULL: unbounded). */
static kvshm_status check_rec(const kvshm_seg *s, uint64_t off, int level, int is_root,
                              const void *lo, uint32_t lolen, const void *hi,
                              uint32_t hilen, uint64_t *count)
{
    const struct kvshm_node *nd = node_at(s, off, (unsigned)level);
    if (!nd) return KVSHM_E_CORRUPT;
    int n = nd->c_n;
    if (!is_root && n < MINK) return KVSHM_E_CORRUPT;
    /* the skip is exactly the fences' common prefix */
    if (nd->c_skip != (lo && hi ? lcp(lo, lolen, hi, hilen) : 0)) return KVSHM_E_CORRUPT;
    if (is_root && level > 0 && n < 1) return KVSHM_E_CORRUPT;
    const void *pk = lo; uint32_t pl = lolen;
    for (int j = 0; j < n; j++) {
        const struct kvshm_rec *r = kvshm_rec_at(s, nd->c_e[j].e_ref);
        if (!r) return KVSHM_E_CORRUPT;
        const void *k = kvshm_rec_key(r);
        if (node_prefix(nd, k, r->r_klen) != nd->c_e[j].e_prefix) return KVSHM_E_CORRUPT;
        if (pk) {
            int c = kvshm_key_cmp(pk, pl, k, r->r_klen);
            if (c > 0 || (c == 0 && (j > 0 || level > 0))) return KVSHM_E_CORRUPT;
        }
        if (hi && kvshm_key_cmp(k, r->r_klen, hi, hilen) >= 0) return KVSHM_E_CORRUPT;
        if (level == 0 && kvshm_rec_checksum(r->r_seqt, k, r->r_klen, kvshm_rec_val(r),
                                             r->r_vlen) != r->r_checksum)
            return KVSHM_E_CORRUPT;
        pk = k; pl = r->r_klen;
    }
    if (level == 0) { *count += (uint64_t)n; return KVSHM_OK; }
    for (int j = 0; j <= n; j++) {
        const void *clo = lo, *chi = hi; uint32_t cll = lolen, chl = hilen;
        if (j > 0) { const struct kvshm_rec *r = kvshm_rec_at(s, nd->c_e[j - 1].e_ref);
                     clo = kvshm_rec_key(r); cll = r->r_klen; }
        if (j < n) { const struct kvshm_rec *r = kvshm_rec_at(s, nd->c_e[j].e_ref);
                     chi = kvshm_rec_key(r); chl = r->r_klen; }
        kvshm_status st = check_rec(s, nd->c_child + (uint64_t)j * KVSHM_NODE_BYTES,
                                    level - 1, 0, clo, cll, chi, chl, count);
        if (st) return st;
    }
    return KVSHM_OK;
}

kvshm_status kvshm_tree_check(const kvshm_seg *s, const kvshm_tree *t)
{
    if (!t->root) return (t->height == 0 && t->keys == 0) ? KVSHM_OK : KVSHM_E_CORRUPT;
    if (t->height == 0 || t->height > KVSHM_TREE_MAXH) return KVSHM_E_CORRUPT;
    uint64_t count = 0;
    kvshm_status st = check_rec(s, t->root, (int)t->height - 1, 1, NULL, 0, NULL, 0, &count);
    if (st) return st;
    return count == t->keys ? KVSHM_OK : KVSHM_E_CORRUPT;
}

static kvshm_status retire_rec_all(kvshm_blocks *b, uint64_t epoch, uint64_t off, int level)
{
    const struct kvshm_node *nd = node_at(b->seg, off, (unsigned)level);
    if (!nd) return KVSHM_E_CORRUPT;
    kvshm_status st = KVSHM_OK;
    for (int j = 0; j < nd->c_n && !st; j++)
        st = kvshm_blocks_retire(b, nd->c_e[j].e_ref, kvshm_rec_block_bytes(b->seg, nd->c_e[j].e_ref), epoch);
    if (level > 0) {
        for (int j = 0; j <= nd->c_n && !st; j++)
            st = retire_rec_all(b, epoch, nd->c_child + (uint64_t)j * KVSHM_NODE_BYTES, level - 1);
        if (!st) st = kvshm_blocks_retire(b, nd->c_child,
                                          (uint64_t)(nd->c_n + 1) * KVSHM_NODE_BYTES, epoch);
    }
    return st;
}

kvshm_status kvshm_tree_retire_all(kvshm_blocks *b, uint64_t epoch, kvshm_tree *t)
{
    if (!t->root) return KVSHM_OK;
    kvshm_status st = retire_rec_all(b, epoch, t->root, (int)t->height - 1);
    if (!st) st = kvshm_blocks_retire(b, t->root, KVSHM_NODE_BYTES, epoch);
    if (!st) *t = (kvshm_tree){ 0, 0, 0 };
    return st;
}
