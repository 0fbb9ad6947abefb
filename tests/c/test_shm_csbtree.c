/* test_shm_csbtree.c - the copy-on-write CSB+tree (shm/csbtree.c) against a
 * sorted-array model: empty and one-key trees, splits, merges and borrows,
 * keys that tie on their 8-byte prefix, seek edges, copy-on-write isolation
 * of the old root, and all-or-nothing failure. Freed blocks are poisoned, so
 * a node reclaimed while still reachable breaks kvshm_tree_check. */
#include "shm_test_util.h"

SHMT_SCRATCH_SUITE(shm_csbtree, 192u << 20, 160u << 20, 1, 300);
static uint64_t EPOCH = 1;

/* ---- model: sorted array of keys with their current value seq ------------- */
typedef struct mkv { uint8_t k[24]; uint32_t kl; uint64_t seq; } mkv;
static mkv *M; static size_t MN;

static int mkv_cmp(const void *a, const void *b)
{
    const mkv *x = a, *y = b;
    return kvshm_key_cmp(x->k, x->kl, y->k, y->kl);
}
static mkv *model_find(const uint8_t *k, uint32_t kl)
{
    mkv key; memcpy(key.k, k, kl); key.kl = kl;
    if (MN == 0) return NULL;
    return bsearch(&key, M, MN, sizeof *M, mkv_cmp);
}
static void model_put(const uint8_t *k, uint32_t kl, uint64_t seq)
{
    mkv *f = model_find(k, kl);
    if (f) { f->seq = seq; return; }
    M = realloc(M, (MN + 1) * sizeof *M);
    memcpy(M[MN].k, k, kl); M[MN].kl = kl; M[MN].seq = seq; MN++;
    qsort(M, MN, sizeof *M, mkv_cmp);
}
static void model_del(const uint8_t *k, uint32_t kl)
{
    mkv *f = model_find(k, kl);
    if (!f) return;
    memmove(f, f + 1, (size_t)(M + MN - f - 1) * sizeof *M);
    MN--;
}

/* Key shapes: 0 = "key:%08u" (12 bytes, tying on their first 8 bytes but for skips),
 * 1 = 16 random-looking bytes, 2 = short (1..6 bytes), 3 = "user/profile/%u"
 * (14..19 bytes: a 13-byte shared prefix, then digits of varying length). */
static uint32_t mk(uint8_t *k, uint32_t id, int shape)
{
    if (shape == 0) { char t[24]; snprintf(t, sizeof t, "key:%08u", id); memcpy(k, t, 12); return 12; }
    if (shape == 3) {   /* a long shared prefix and variable lengths: node skips */
        char t[24];
        int l = snprintf(t, sizeof t, "user/profile/%u", id * 7919u % 100003u);
        memcpy(k, t, (size_t)l);
        return (uint32_t)l;
    }
    uint64_t s = id, a = shmt_rand(&s), b = shmt_rand(&s);
    if (shape == 1) { memcpy(k, &a, 8); memcpy(k + 8, &b, 8); return 16; }
    uint32_t l = 1 + id % 6; memcpy(k, &a, l); return l;
}

/* Value bytes derived from (key, seq) so any mix-up is visible. */
static uint32_t mkval(uint8_t *v, const uint8_t *k, uint32_t kl, uint64_t seq)
{
    uint64_t s = seq ^ kvshm_key_prefix(k, kl) ^ kl;
    uint32_t n = 8 + (uint32_t)(shmt_rand(&s) % 120);
    for (uint32_t i = 0; i < n; i++) v[i] = (uint8_t)shmt_rand(&s);
    return n;
}

typedef struct opbuf { kvshm_tree_op op; uint8_t k[24]; } opbuf;
static int op_cmp(const void *a, const void *b)
{
    const opbuf *x = a, *y = b;
    return kvshm_key_cmp(x->k, x->op.klen, y->k, y->op.klen);
}

static kvshm_tree T;

/* Apply n ops (ids/shape, ins flag) as one batch; update the model. */
static kvshm_status batch(const uint32_t *ids, const int *ins, size_t n, int shape, uint64_t *seq)
{
    opbuf *ob = calloc(n, sizeof *ob);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t k[24]; uint32_t kl = mk(k, ids[i], shape);
        int dup = 0;
        for (size_t j = 0; j < m; j++)
            if (ob[j].op.klen == kl && !memcmp(ob[j].k, k, kl)) { dup = 1; break; }
        if (dup) continue;
        memcpy(ob[m].k, k, kl); ob[m].op.klen = kl; ob[m].op.rec = ins[i];
        m++;
    }
    qsort(ob, m, sizeof *ob, op_cmp);
    kvshm_tree_op *ops = calloc(m ? m : 1, sizeof *ops);
    for (size_t j = 0; j < m; j++) {
        ops[j] = ob[j].op;
        ops[j].key = ob[j].k;
        if (ob[j].op.rec) {
            uint8_t v[128]; uint64_t s = ++*seq;
            uint32_t vl = mkval(v, ob[j].k, ob[j].op.klen, s);
            cr_assert_eq(kvshm_rec_new(&B, ob[j].k, ob[j].op.klen, v, vl, s, 0, &ops[j].rec), KVSHM_OK);
        }
    }
    kvshm_status st = kvshm_tree_apply(&B, EPOCH, &T, ops, m);
    if (st == KVSHM_OK) {
        for (size_t j = 0; j < m; j++) {
            if (ops[j].rec) {
                const struct kvshm_rec *r = kvshm_rec_at(S, ops[j].rec);
                model_put(ob[j].k, ob[j].op.klen, r->r_seqt >> 1);
            } else {
                model_del(ob[j].k, ob[j].op.klen);
            }
        }
        EPOCH++;
        kvshm_blocks_reclaim(&B, EPOCH); /* no readers: everything older goes */
    } else {
        for (size_t j = 0; j < m; j++)
            if (ops[j].rec) kvshm_blocks_free(&B, ops[j].rec, kvshm_rec_block_bytes(S, ops[j].rec));
    }
    free(ops); free(ob);
    return st;
}

typedef struct cmpst { size_t i; int ok; } cmpst;
static int cmp_cb(void *ctx, const void *key, size_t klen, const void *val, size_t vlen,
                  uint64_t seq, int tomb)
{
    cmpst *c = ctx;
    if (c->i >= MN || kvshm_key_cmp(key, (uint32_t)klen, M[c->i].k, M[c->i].kl) != 0 ||
        seq != M[c->i].seq) { c->ok = 0; return 1; }
    uint8_t v[128]; uint32_t vl = mkval(v, key, (uint32_t)klen, seq);
    if (vl != vlen || memcmp(v, val, vl)) { c->ok = 0; return 1; }
    c->i++;
    return 0;
}

/* kvshm_tree_find_many gives what kvshm_tree_find gives, probe by probe:
 * calls of more than two groups mixing present keys, absent ones (a
 * present key with a byte appended, which falls between it and its
 * successor) and a probe of an empty tree. */
static void verify_find_many(void)
{
    enum { NP = 2 * KVSHM_FIND_GROUP + 7 };   /* two groups and a part */
    uint8_t miss[NP][32];
    size_t step = NP * (1 + MN / 3000);
    for (size_t i = 0; i < MN || i == 0; i += step) {
        kvshm_tree_probe p[NP];
        int present[NP] = { 0 };
        size_t n = 0;
        for (size_t j = i; j < MN && n < NP - 1; j++, n++) {
            if (n % 3 == 2) {
                memcpy(miss[n], M[j].k, M[j].kl);
                miss[n][M[j].kl] = 0x7f;
                p[n] = (kvshm_tree_probe){ .root = T.root, .height = T.height,
                                           .klen = M[j].kl + 1, .key = miss[n] };
            } else {
                p[n] = (kvshm_tree_probe){ .root = T.root, .height = T.height,
                                           .klen = M[j].kl, .key = M[j].k };
                present[n] = 1;
            }
        }
        p[n++] = (kvshm_tree_probe){ .root = 0, .height = 0, .klen = 1, .key = "x" };
        kvshm_tree_find_many(S, p, n);
        for (size_t q = 0; q < n; q++) {
            kvshm_status err = KVSHM_OK;
            uint64_t want = kvshm_tree_find(S, p[q].root, p[q].height, p[q].key, p[q].klen, &err);
            cr_assert_eq(err, KVSHM_OK);
            cr_assert_eq(p[q].err, KVSHM_OK, "probe %zu of %zu", q, n);
            cr_assert_eq(p[q].rec, want, "probe %zu of %zu: find_many %lu, find %lu", q, n,
                         (unsigned long)p[q].rec, (unsigned long)want);
            if (present[q]) cr_assert_neq(want, 0, "present key found");
        }
        if (MN == 0) break;
    }
    /* a height beyond the maximum is refused */
    kvshm_tree_probe bad = { .root = T.root ? T.root : 64, .height = KVSHM_TREE_MAXH + 1,
                             .klen = 1, .key = "x" };
    kvshm_tree_find_many(S, &bad, 1);
    cr_assert_eq(bad.err, KVSHM_E_CORRUPT);
    cr_assert_eq(bad.rec, 0);
}

static void verify(void)
{
    cr_assert_eq(kvshm_tree_check(S, &T), KVSHM_OK, "tree invariants (keys=%lu)", (unsigned long)MN);
    cr_assert_eq(T.keys, MN);
    cmpst c = { 0, 1 };
    cr_assert_eq(kvshm_tree_scan(S, &T, cmp_cb, &c), KVSHM_OK);
    cr_assert(c.ok && c.i == MN, "in-order scan equals the model (at %zu of %zu)", c.i, MN);
    for (size_t i = 0; i < MN; i += 1 + MN / 300) {
        kvshm_status err = KVSHM_OK;
        uint64_t rec = kvshm_tree_find(S, T.root, T.height, M[i].k, M[i].kl, &err);
        cr_assert_neq(rec, 0);
        uint8_t buf[128];
        kvshm_val out = { buf, sizeof buf, 0, 0, NULL, NULL };
        cr_assert_eq(kvshm_rec_read(S, rec, M[i].k, M[i].kl, &out), KVSHM_OK);
        cr_assert_eq(out.seq, M[i].seq);
        /* seek >= key finds the key; seek > key finds the successor */
        cr_assert_eq(kvshm_tree_seek(S, T.root, T.height, M[i].k, M[i].kl, 0, &err), rec);
        uint64_t nx = kvshm_tree_seek(S, T.root, T.height, M[i].k, M[i].kl, 1, &err);
        if (i + 1 < MN) {
            const struct kvshm_rec *r = kvshm_rec_at(S, nx);
            cr_assert_not_null(r);
            cr_assert_eq(kvshm_key_cmp(kvshm_rec_key(r), r->r_klen, M[i + 1].k, M[i + 1].kl), 0);
        } else {
            cr_assert_eq(nx, 0);
        }
        cr_assert_eq(err, KVSHM_OK);
    }
    verify_find_many();
}

static void reset_model(void) { free(M); M = NULL; MN = 0; T = (kvshm_tree){ 0, 0, 0 }; }

Test(shm_csbtree, empty_and_one_key_trees)
{
    reset_model();
    uint64_t seq = 0;
    cr_assert_eq(kvshm_tree_apply(&B, EPOCH, &T, NULL, 0), KVSHM_OK);
    verify();
    kvshm_status err = KVSHM_OK;
    cr_assert_eq(kvshm_tree_find(S, T.root, T.height, "x", 1, &err), 0);
    cr_assert_eq(kvshm_tree_seek(S, T.root, T.height, NULL, 0, 0, &err), 0);
    uint32_t id = 5; int ins = 1, del = 0;
    cr_assert_eq(batch(&id, &del, 1, 1, &seq), KVSHM_OK);   /* delete from empty */
    cr_assert_eq(T.height, 0);
    cr_assert_eq(batch(&id, &ins, 1, 1, &seq), KVSHM_OK);
    cr_assert_eq(T.height, 1);
    verify();
    cr_assert_neq(kvshm_tree_seek(S, T.root, T.height, NULL, 0, 0, &err), 0);
    cr_assert_eq(batch(&id, &ins, 1, 1, &seq), KVSHM_OK);   /* overwrite */
    verify();
    cr_assert_eq(batch(&id, &del, 1, 1, &seq), KVSHM_OK);
    cr_assert_eq(T.root, 0);
    cr_assert_eq(T.height, 0);
    verify();
    cr_assert_eq(B.used, 0, "all nodes and records reclaimed");
}

Test(shm_csbtree, ascending_inserts_split_then_deletes_merge_to_empty)
{
    for (int shape = 0; shape < 4; shape++) {
        reset_model();
        uint64_t seq = 0;
        uint32_t N = shape == 2 ? 2000 : 6000;   /* short keys collide: fewer ids */
        uint32_t ids[100]; int ins[100];
        for (uint32_t base = 0; base < N; base += 100) {
            for (int i = 0; i < 100; i++) { ids[i] = base + (uint32_t)i; ins[i] = 1; }
            cr_assert_eq(batch(ids, ins, 100, shape, &seq), KVSHM_OK);
        }
        verify();
        cr_assert_geq(T.height, 3, "splits built a multi-level tree (shape %d)", shape);
        /* delete in a scattered order, in batches, checking merges/borrows */
        uint64_t s2 = 99;
        uint32_t *perm = malloc(N * sizeof *perm);
        for (uint32_t i = 0; i < N; i++) perm[i] = i;
        for (uint32_t i = N - 1; i > 0; i--) { uint32_t j = (uint32_t)(shmt_rand(&s2) % (i + 1)); uint32_t t = perm[i]; perm[i] = perm[j]; perm[j] = t; }
        for (uint32_t base = 0; base < N; base += 100) {
            for (int i = 0; i < 100; i++) { ids[i] = perm[base + (uint32_t)i]; ins[i] = 0; }
            cr_assert_eq(batch(ids, ins, 100, shape, &seq), KVSHM_OK);
            if (base % 1000 == 0) verify();
        }
        free(perm);
        verify();
        cr_assert_eq(T.keys, 0);
        cr_assert_eq(T.root, 0);
        cr_assert_eq(B.used, 0, "no leak after emptying (shape %d)", shape);
    }
}

Test(shm_csbtree, random_batches_match_model)
{
    for (int shape = 0; shape < 4; shape++) {
        reset_model();
        uint64_t seq = 0, seed = 1234 + (uint64_t)shape;
        uint32_t ids[400]; int ins[400];
        for (int b = 0; b < 150; b++) {
            size_t n = 1 + shmt_rand(&seed) % 400;
            int del_bias = b > 100 ? 60 : 25;   /* later: shrink the tree */
            for (size_t i = 0; i < n; i++) {
                ids[i] = (uint32_t)(shmt_rand(&seed) % 5000);
                ins[i] = (int)(shmt_rand(&seed) % 100) >= del_bias;
            }
            cr_assert_eq(batch(ids, ins, n, shape, &seq), KVSHM_OK);
            if (b % 10 == 0) verify();
        }
        verify();
    }
}

typedef struct collect { mkv *v; size_t n; } collect;
static int collect_cb(void *ctx, const void *key, size_t klen, const void *val, size_t vlen,
                      uint64_t seq, int tomb)
{
    collect *c = ctx;
    memcpy(c->v[c->n].k, key, klen); c->v[c->n].kl = (uint32_t)klen; c->v[c->n].seq = seq;
    c->n++;
    return 0;
}

Test(shm_csbtree, old_root_unchanged_until_reclaimed)
{
    reset_model();
    uint64_t seq = 0, seed = 5;
    uint32_t ids[300]; int ins[300];
    for (int i = 0; i < 300; i++) { ids[i] = (uint32_t)i * 7; ins[i] = 1; }
    cr_assert_eq(batch(ids, ins, 300, 1, &seq), KVSHM_OK);
    kvshm_tree old = T;
    size_t oldn = MN;
    mkv *snap = malloc(MN * sizeof *snap);
    memcpy(snap, M, MN * sizeof *snap);
    /* Apply a batch without reclaiming: the old version must be intact. */
    opbuf ob[200]; kvshm_tree_op ops[200];
    size_t m = 0;
    for (int i = 0; i < 200; i++) {
        uint32_t id = (uint32_t)(shmt_rand(&seed) % 3000);
        uint32_t kl = mk(ob[m].k, id, 1);
        int dup = 0;
        for (size_t j = 0; j < m; j++) if (!memcmp(ob[j].k, ob[m].k, kl)) dup = 1;
        if (dup) continue;
        ob[m].op.klen = kl;
        ob[m].op.rec = (i % 3 != 0);
        m++;
    }
    qsort(ob, m, sizeof *ob, op_cmp);
    for (size_t j = 0; j < m; j++) {
        ops[j] = ob[j].op; ops[j].key = ob[j].k;
        if (ops[j].rec) cr_assert_eq(kvshm_rec_new(&B, ob[j].k, ob[j].op.klen, "new", 3, 999, 0, &ops[j].rec), KVSHM_OK);
    }
    cr_assert_eq(kvshm_tree_apply(&B, EPOCH, &T, ops, m), KVSHM_OK);
    cr_assert_neq(T.root, old.root);
    collect c = { malloc(oldn * sizeof(mkv)), 0 };
    cr_assert_eq(kvshm_tree_check(S, &old), KVSHM_OK, "old version still valid");
    cr_assert_eq(kvshm_tree_scan(S, &old, collect_cb, &c), KVSHM_OK);
    cr_assert_eq(c.n, oldn);
    for (size_t i = 0; i < oldn; i++) {
        cr_assert_eq(kvshm_key_cmp(c.v[i].k, c.v[i].kl, snap[i].k, snap[i].kl), 0);
        cr_assert_eq(c.v[i].seq, snap[i].seq, "old version sees old values");
    }
    cr_assert_eq(kvshm_tree_check(S, &T), KVSHM_OK);
    free(c.v); free(snap);
}

Test(shm_csbtree, failed_batch_changes_nothing)
{
    reset_model();
    /* A tiny allocator so that a big batch runs out of room midway. */
    kvshm_blocks_fini(&B);
    kvshm_blocks_init(&B, S, S->size - (160u << 20), 96u << 10, NULL);
    B.poison = 1;
    uint64_t seq = 0;
    uint32_t ids[100]; int ins[100];
    for (int i = 0; i < 100; i++) { ids[i] = (uint32_t)i; ins[i] = 1; }
    cr_assert_eq(batch(ids, ins, 100, 1, &seq), KVSHM_OK);
    verify();
    /* Next batch: records allocated, then the region is filled up so that
     * the tree's own node groups no longer fit. */
    opbuf ob[100]; kvshm_tree_op ops[100];
    for (int i = 0; i < 100; i++) {
        ob[i].op.klen = mk(ob[i].k, 1000 + (uint32_t)i, 1);
    }
    qsort(ob, 100, sizeof *ob, op_cmp);
    for (int i = 0; i < 100; i++) {
        ops[i] = ob[i].op; ops[i].key = ob[i].k;
        cr_assert_eq(kvshm_rec_new(&B, ob[i].k, ob[i].op.klen, "v", 1, 7, 0, &ops[i].rec), KVSHM_OK);
    }
    uint64_t fill[4096]; int nf = 0;
    while (nf < 4096 && kvshm_blocks_alloc(&B, 256, &fill[nf]) == KVSHM_OK) nf++;
    cr_assert_lt(nf, 4096);
    kvshm_blocks_free(&B, fill[--nf], 256);
    kvshm_blocks_free(&B, fill[--nf], 256);
    kvshm_tree before = T;
    uint64_t used = B.used;
    cr_assert_eq(kvshm_tree_apply(&B, EPOCH, &T, ops, 100), KVSHM_E_FULL);
    cr_assert_eq(T.root, before.root);
    cr_assert_eq(T.keys, before.keys);
    cr_assert_eq(T.height, before.height);
    cr_assert_eq(B.used, used, "every block of the failed batch was freed");
    cr_assert_eq(B.retired, 0, "nothing retired by a failed batch");
    verify();
    /* the records still belong to the caller: freeing them is safe */
    while (nf) { nf--; kvshm_blocks_free(&B, fill[nf], 256); }
    for (int i = 0; i < 100; i++) kvshm_blocks_free(&B, ops[i].rec, kvshm_rec_block_bytes(S, ops[i].rec));
    verify();
    /* unsorted ops are refused */
    kvshm_tree_op bad[2] = { { "b", 1, 0 }, { "a", 1, 0 } };
    cr_assert_eq(kvshm_tree_apply(&B, EPOCH, &T, bad, 2), KVSHM_E_INVAL);
}
