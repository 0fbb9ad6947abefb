/* test_shm_segment.c - creating and attaching the data segment (header
 * checks, 0600 or 0660 with a group, posix_fallocate) and the full read path through a view:
 * active memtable -> frozen memtable -> CSB+tree, tombstones, cache
 * load/evict, ordered prefix iteration across shards, fork. */
#include <fcntl.h>
#include <inttypes.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <xxhash.h>

#include "shm_test_util.h"

static void setup(void) { setenv("KVSHM_POISON", "1", 1); shmt_setup(); }
static void teardown(void) { shmt_teardown(); }
TestSuite(shm_segment, .init = setup, .fini = teardown, .timeout = 120);

static kvshm_status get(kvshm_reader *r, const char *k, char *buf, size_t cap, size_t *len)
{
    kvshm_val out = { buf, cap, 0, 0, NULL, NULL };
    kvshm_status st = kvshm_reader_get(r, k, strlen(k), &out);
    if (len) *len = out.len;
    if (st == KVSHM_OK && out.len < cap) buf[out.len] = 0;
    return st;
}

/* stat of the shm object `name`, after checking its mode and group. */
static struct stat shm_access(const char *name, mode_t mode, gid_t gid)
{
    char path[128];
    struct stat sb;
    snprintf(path, sizeof path, "/dev/shm%s", name);
    cr_assert_eq(stat(path, &sb), 0);
    cr_assert_eq(sb.st_mode & 0777, mode, "%s: mode %o", name, (unsigned)(sb.st_mode & 0777));
    cr_assert_eq(sb.st_gid, gid, "%s: group %u", name, (unsigned)sb.st_gid);
    return sb;
}

Test(shm_segment, create_attach_and_mode_0600)
{
    kvshm_config c = shmt_config(8u << 20, 2);
    kvshm_writer *w;
    mode_t old = umask(0);   /* the mode is set explicitly, never left to the umask */
    cr_assert_eq(kvshm_writer_create(&c, &w), KVSHM_OK);
    umask(old);
    struct stat sb = shm_access(shmt_seg, 0600, getegid());
    cr_assert_eq((uint64_t)sb.st_size, c.size_bytes);
    cr_assert_geq((uint64_t)sb.st_blocks * 512, c.size_bytes, "posix_fallocate reserved every byte");
    shm_access(shmt_slot, 0600, getegid());
    kvshm_writer *w2;
    cr_assert_eq(kvshm_writer_create(&c, &w2), KVSHM_E_EXISTS);
    kvshm_reader *r;
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &r), KVSHM_OK);
    cr_assert_eq(kvshm_reader_generation(r), 1);
    char buf[8];
    cr_assert_eq(get(r, "nothing", buf, sizeof buf, NULL), KVSHM_NOTFOUND);
    kvshm_reader_detach(r);
    kvshm_writer_destroy(w, 1);
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &r), KVSHM_E_NOENT);
}

Test(shm_segment, group_access_gives_both_objects_0660_and_the_group)
{
    /* a group the process may give its files without privileges: its own
     * effective group (the writer checks membership for --group) */
    kvshm_config c = shmt_config(8u << 20, 1);
    c.group_access = 1;
    c.gid = (uint32_t)getegid();
    kvshm_writer *w;
    mode_t old = umask(0077);
    cr_assert_eq(kvshm_writer_create(&c, &w), KVSHM_OK);
    umask(old);
    shm_access(shmt_seg, 0660, getegid());
    shm_access(shmt_slot, 0660, getegid());
    kvshm_writer_destroy(w, 1);
}

Test(shm_segment, attach_rejects_bad_headers)
{
    kvshm_config c = shmt_config(8u << 20, 1);
    kvshm_writer *w;
    cr_assert_eq(kvshm_writer_create(&c, &w), KVSHM_OK);
    struct kvshm_hdr *h = (struct kvshm_hdr *)kvshm_writer_seg(w)->base;
    kvshm_reader *r;
    h->h_magic ^= 1;
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &r), KVSHM_E_MAGIC);
    h->h_magic ^= 1;
    h->h_layout_hash ^= 1;
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &r), KVSHM_E_LAYOUT);
    h->h_layout_hash ^= 1;
    h->h_size_bytes += 4096;
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &r), KVSHM_E_SIZE);
    h->h_size_bytes -= 4096;
    h->h_generation = 7;
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &r), KVSHM_E_GENERATION);
    h->h_generation = 1;
    h->h_state = 0;
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &r), KVSHM_E_NOTREADY);
    h->h_state = KVSHM_STATE_READY;
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &r), KVSHM_OK);
    kvshm_reader_detach(r);
    /* a writer that closes makes every reader stale */
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &r), KVSHM_OK);
    kvshm_writer_destroy(w, 0);
    char buf[8];
    cr_assert_eq(get(r, "k", buf, sizeof buf, NULL), KVSHM_E_STALE);
    kvshm_reader_detach(r);
    kvshm_reader *r2;
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &r2), KVSHM_E_STALE);
}

Test(shm_segment, create_fails_up_front_when_dev_shm_is_too_small)
{
    kvshm_config c = shmt_config(UINT64_C(1) << 42, 1);  /* 4 TiB: more than /dev/shm */
    kvshm_writer *w;
    cr_assert_eq(kvshm_writer_create(&c, &w), KVSHM_E_FULL);
    struct stat sb;
    char path[128];
    snprintf(path, sizeof path, "/dev/shm%s", shmt_seg);
    cr_assert_neq(stat(path, &sb), 0, "nothing left behind");
    c = shmt_config(8u << 20, 0);
    cr_assert_eq(kvshm_writer_create(&c, &w), KVSHM_E_INVAL);
}

Test(shm_segment, read_path_memtables_then_tree)
{
    kvshm_writer *w;
    kvshm_reader *r;
    shmt_open(32u << 20, 3, &w, &r);
    char buf[64]; size_t len;
    cr_assert_eq(kvshm_writer_put(w, "alpha", 5, "one", 3, 1, 0), KVSHM_OK);
    cr_assert_eq(get(r, "alpha", buf, sizeof buf, &len), KVSHM_OK);
    cr_assert_str_eq(buf, "one");
    /* freeze: still visible through the frozen memtable */
    uint32_t s = kvshm_shard_of("alpha", 5, 3);
    cr_assert_eq(kvshm_writer_freeze(w, s), KVSHM_OK);
    cr_assert_eq(kvshm_writer_freeze(w, s), KVSHM_E_BUSY);
    cr_assert_eq(get(r, "alpha", buf, sizeof buf, &len), KVSHM_OK);
    cr_assert_str_eq(buf, "one");
    /* newer version in the active memtable shadows the frozen one */
    cr_assert_eq(kvshm_writer_put(w, "alpha", 5, "two", 3, 2, 0), KVSHM_OK);
    cr_assert_eq(get(r, "alpha", buf, sizeof buf, &len), KVSHM_OK);
    cr_assert_str_eq(buf, "two");
    /* fold the frozen one into the tree; freeze/fold again: value from tree */
    cr_assert_eq(kvshm_writer_fold(w, s, 1024), KVSHM_OK);
    cr_assert_eq(kvshm_writer_freeze(w, s), KVSHM_OK);
    cr_assert_eq(kvshm_writer_fold(w, s, 1024), KVSHM_OK);
    cr_assert_eq(get(r, "alpha", buf, sizeof buf, &len), KVSHM_OK);
    cr_assert_str_eq(buf, "two");
    const struct kvshm_shard *sh = (const struct kvshm_shard *)(kvshm_writer_seg(w)->base + KVSHM_HDR_BYTES);
    cr_assert_eq(sh[s].s_tree_keys, 1);
    /* tombstone in the memtable hides the tree's value */
    cr_assert_eq(kvshm_writer_put(w, "alpha", 5, NULL, 0, 3, 1), KVSHM_OK);
    cr_assert_eq(get(r, "alpha", buf, sizeof buf, &len), KVSHM_DELETED);
    cr_assert_eq(kvshm_writer_freeze(w, s), KVSHM_OK);
    cr_assert_eq(kvshm_writer_fold(w, s, 1024), KVSHM_OK);
    cr_assert_eq(get(r, "alpha", buf, sizeof buf, &len), KVSHM_NOTFOUND, "tombstone folded: deleted from tree");
    cr_assert_eq(sh[s].s_tree_keys, 0);
    /* small buffer reports the size */
    cr_assert_eq(kvshm_writer_put(w, "beta", 4, "0123456789", 10, 4, 0), KVSHM_OK);
    cr_assert_eq(get(r, "beta", buf, 4, &len), KVSHM_E_SMALLBUF);
    cr_assert_eq(len, 10);
    kvshm_val out = { buf, sizeof buf, 0, 0, NULL, NULL };
    cr_assert_eq(kvshm_reader_get(r, "", 0, &out), KVSHM_E_INVAL);
    /* big values are not cached on fold */
    char big[2000]; memset(big, 'b', sizeof big);
    uint32_t sb2 = kvshm_shard_of("big", 3, 3);
    cr_assert_eq(kvshm_writer_put(w, "big", 3, big, sizeof big, 5, 0), KVSHM_OK);
    cr_assert_eq(kvshm_writer_freeze(w, sb2), KVSHM_OK);
    cr_assert_eq(kvshm_writer_fold(w, sb2, 1024), KVSHM_OK);
    cr_assert_eq(get(r, "big", buf, sizeof buf, &len), KVSHM_NOTFOUND);
    uint64_t ap, cm;
    kvshm_writer_publish_seq(w, 5, 4);
    kvshm_reader_seqs(r, &ap, &cm);
    cr_assert_eq(ap, 5); cr_assert_eq(cm, 4);
}

Test(shm_segment, cache_load_and_evict)
{
    kvshm_writer *w;
    kvshm_reader *r;
    shmt_open(32u << 20, 4, &w, &r);
    char keys[500][16], vals[500][16];
    kvshm_kv kv[501];
    for (int i = 0; i < 500; i++) {
        snprintf(keys[i], 16, "k%04d", i); snprintf(vals[i], 16, "v%d", i);
        kv[i] = (kvshm_kv){ keys[i], strlen(keys[i]), vals[i], strlen(vals[i]), 1 };
    }
    kv[500] = (kvshm_kv){ keys[7], strlen(keys[7]), "dup-wins", 8, 1 };
    /* a key with a memtable version is not overwritten by a cache fill */
    cr_assert_eq(kvshm_writer_put(w, keys[9], strlen(keys[9]), "fresh", 5, 10, 0), KVSHM_OK);
    cr_assert_eq(kvshm_writer_cache_load(w, kv, 501), KVSHM_OK);
    char buf[32]; size_t len;
    for (int i = 0; i < 500; i++) {
        cr_assert_eq(get(r, keys[i], buf, sizeof buf, &len), KVSHM_OK);
        cr_assert_str_eq(buf, i == 7 ? "dup-wins" : i == 9 ? "fresh" : vals[i]);
    }
    const void *ek[250]; size_t el[250];
    for (int i = 0; i < 250; i++) { ek[i] = keys[2 * i]; el[i] = strlen(keys[2 * i]); }
    cr_assert_eq(kvshm_writer_cache_evict(w, ek, el, 250), KVSHM_OK);
    for (int i = 0; i < 500; i++)
        cr_assert_eq(get(r, keys[i], buf, sizeof buf, &len), i % 2 == 0 ? KVSHM_NOTFOUND : KVSHM_OK);
}

/* get_many gives, key by key, what get gives: keys in the trees, in active
 * and frozen memtables, deleted, absent, too large for the buffer, invalid;
 * 3 shards; call sizes around the group size; inside an explicit section. */
Test(shm_segment, get_many_matches_get)
{
    kvshm_writer *w;
    kvshm_reader *r;
    shmt_open(64u << 20, 3, &w, &r);
    enum { N = 3000 };
    static char keys[N][24], vals[N][48];
    kvshm_kv *kv = malloc(N * sizeof *kv);
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof keys[i], i % 2 ? "user/profile/%d" : "k%07d", i);
        snprintf(vals[i], sizeof vals[i], "value of %d %s", i, i % 7 ? "" : "with a longer tail");
        kv[i] = (kvshm_kv){ keys[i], strlen(keys[i]), vals[i], strlen(vals[i]), 1 };
    }
    cr_assert_eq(kvshm_writer_cache_load(w, kv, 2000), KVSHM_OK);     /* keys 0..1999: trees */
    uint64_t seq = 10;
    for (int i = 1500; i < 2600; i++) {                                /* newer versions and new keys */
        if (i % 5 == 0)
            cr_assert_eq(kvshm_writer_put(w, keys[i], strlen(keys[i]), NULL, 0, seq++, 1), KVSHM_OK);
        else
            cr_assert_eq(kvshm_writer_put(w, keys[i], strlen(keys[i]), vals[(i * 7) % N],
                                          strlen(vals[(i * 7) % N]), seq++, 0), KVSHM_OK);
        if (i == 2200)   /* part of them in frozen memtables */
            for (uint32_t s = 0; s < 3; s++) cr_assert_eq(kvshm_writer_freeze(w, s), KVSHM_OK);
    }
    /* keys 2600..2999 are absent */
    enum { M = 1237 };   /* not a multiple of the group size */
    const void *kp[M]; size_t kl[M]; kvshm_val out[M]; kvshm_status st[M];
    static char buf[M][64];
    uint64_t rs = 7;
    for (int i = 0; i < M; i++) {
        int id = (int)(shmt_rand(&rs) % N);
        kp[i] = keys[id]; kl[i] = strlen(keys[id]);
        out[i] = (kvshm_val){ buf[i], i % 11 == 0 ? 8 : sizeof buf[i], 0, 0, NULL, NULL };  /* some too small */
    }
    kl[5] = 0;                       /* invalid: empty key */
    kp[9] = NULL;                    /* invalid: no key */
    int shapes[][2] = { { 0, 1 }, { 16, 17 }, { 33, M - 33 }, { 0, M } };   /* (first, count); all last */
    for (int round = 0; round < 2; round++) {
        if (round == 1) cr_assert_eq(kvshm_reader_enter(r), KVSHM_OK);
        for (size_t sh = 0; sh < sizeof shapes / sizeof shapes[0]; sh++) {
            int f = shapes[sh][0], n = shapes[sh][1];
            memset(st, 0x55, sizeof st);
            cr_assert_eq(kvshm_reader_get_many(r, (size_t)n, kp + f, kl + f, out + f, st + f), KVSHM_OK);
            for (int i = f; i < f + n; i++) {
                char one[64];
                kvshm_val o = { one, out[i].cap, 0, 0, NULL, NULL };
                kvshm_status want = kp[i] ? kvshm_reader_get(r, kp[i], kl[i], &o) : KVSHM_E_INVAL;
                cr_assert_eq(st[i], want, "key %d: get_many %d, get %d", i, st[i], want);
                if (want == KVSHM_OK || want == KVSHM_E_SMALLBUF) cr_assert_eq(out[i].len, o.len);
                if (want == KVSHM_OK || want == KVSHM_DELETED) cr_assert_eq(out[i].seq, o.seq);
                if (want == KVSHM_OK) cr_assert_eq(memcmp(buf[i], one, o.len), 0, "key %d value", i);
            }
        }
        if (round == 1) cr_assert_eq(kvshm_reader_leave(r), KVSHM_OK);
    }
    /* the call sizes covered every kind of key */
    int ok = 0, absent = 0, deleted = 0, small = 0, inval = 0;
    for (int i = 0; i < M; i++) {
        ok += st[i] == KVSHM_OK; absent += st[i] == KVSHM_NOTFOUND;
        deleted += st[i] == KVSHM_DELETED; small += st[i] == KVSHM_E_SMALLBUF;
        inval += st[i] == KVSHM_E_INVAL;
    }
    cr_assert(ok > 100 && absent > 50 && deleted > 10 && small > 10 && inval == 2,
              "ok %d absent %d deleted %d small %d invalid %d", ok, absent, deleted, small, inval);
    cr_assert_eq(kvshm_reader_get_many(r, 0, NULL, NULL, NULL, NULL), KVSHM_OK);
    cr_assert_eq(kvshm_reader_get_many(r, 1, NULL, kl, out, st), KVSHM_E_INVAL);
    free(kv);
}

/* Model for iteration: which keys exist. */
Test(shm_segment, prefix_iteration_across_shards_and_structures)
{
    kvshm_writer *w;
    kvshm_reader *r;
    shmt_open(64u << 20, 4, &w, &r);
    enum { N = 400 };
    static int present[N];
    uint64_t seed = 77, seq = 0;
    char k[32];
    for (int round = 0; round < 6; round++) {
        for (int j = 0; j < 300; j++) {
            int i = (int)(shmt_rand(&seed) % N);
            snprintf(k, sizeof k, "%c/%05d", 'a' + i % 3, i);
            int del = shmt_rand(&seed) % 4 == 0;
            cr_assert_eq(kvshm_writer_put(w, k, strlen(k), k, strlen(k), ++seq, del), KVSHM_OK);
            present[i] = !del;
        }
        for (uint32_t s = 0; s < 4; s++) {   /* leave some in frozen, some folded */
            if (round % 2 == 0) { kvshm_writer_fold(w, s, 1024); kvshm_writer_freeze(w, s); }
        }
        for (int pfx = 0; pfx < 5; pfx++) {
            const char *prefix = pfx < 3 ? (char[]){ (char)('a' + pfx), 0 } : pfx == 3 ? "" : "b/001";
            int expect[N], ne = 0;
            for (int i = 0; i < N; i++) {
                snprintf(k, sizeof k, "%c/%05d", 'a' + i % 3, i);
                if (present[i] && strncmp(k, prefix, strlen(prefix)) == 0) expect[ne++] = i;
            }
            /* expected order: sort keys */
            for (int x = 1; x < ne; x++) for (int y = x; y > 0; y--) {
                char ka[32], kb[32];
                snprintf(ka, 32, "%c/%05d", 'a' + expect[y - 1] % 3, expect[y - 1]);
                snprintf(kb, 32, "%c/%05d", 'a' + expect[y] % 3, expect[y]);
                if (strcmp(ka, kb) > 0) { int t = expect[y]; expect[y] = expect[y - 1]; expect[y - 1] = t; } else break;
            }
            char last[32] = ""; size_t lastlen = 0;
            int got = 0;
            for (;;) {
                char kb[32], vb[32];
                kvshm_val ko = { kb, sizeof kb, 0, 0, NULL, NULL }, vo = { vb, sizeof vb, 0, 0, NULL, NULL };
                kvshm_status st = kvshm_reader_next(r, prefix, strlen(prefix), last, lastlen, &ko, &vo);
                if (st == KVSHM_EMPTY) break;
                cr_assert_eq(st, KVSHM_OK);
                cr_assert_lt(got, ne);
                char want[32];
                snprintf(want, 32, "%c/%05d", 'a' + expect[got] % 3, expect[got]);
                cr_assert_eq(ko.len, strlen(want));
                cr_assert_arr_eq(kb, want, ko.len, "round %d prefix '%s' item %d", round, prefix, got);
                cr_assert_arr_eq(vb, want, vo.len);
                memcpy(last, kb, ko.len); lastlen = ko.len;
                got++;
            }
            cr_assert_eq(got, ne, "round %d prefix '%s'", round, prefix);
        }
    }
    /* prefix past every key, and `after` beyond the prefix range */
    char kb[32];
    kvshm_val ko = { kb, sizeof kb, 0, 0, NULL, NULL };
    cr_assert_eq(kvshm_reader_next(r, "zz", 2, NULL, 0, &ko, NULL), KVSHM_EMPTY);
    cr_assert_eq(kvshm_reader_next(r, "a", 1, "b", 1, &ko, NULL), KVSHM_EMPTY);
}

Test(shm_segment, forked_child_takes_its_own_slot)
{
    kvshm_writer *w;
    kvshm_reader *r;
    shmt_open(16u << 20, 2, &w, &r);
    cr_assert_eq(kvshm_writer_put(w, "k", 1, "parent", 6, 1, 0), KVSHM_OK);
    uint32_t parent_slot = kvshm_reader_slot(r);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    if (pid == 0) {
        char buf[16]; size_t len;
        int ok = get(r, "k", buf, sizeof buf, &len) == KVSHM_OK && !strcmp(buf, "parent");
        uint32_t slot = kvshm_reader_slot(r);
        ok = ok && slot != parent_slot;
        shmt_write(p[1], &slot, sizeof slot);
        kvshm_reader_detach(r);
        _exit(ok ? 0 : 1);
    }
    uint32_t child_slot;
    cr_assert_eq(shmt_read(p[0], &child_slot, sizeof child_slot), 0);
    cr_assert_eq(shmt_wait(pid), 0);
    cr_assert_neq(child_slot, parent_slot);
    /* the parent's slot is still the parent's: the writer does not reap it */
    kvshm_maint m;
    cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
    cr_assert_eq(m.reaped, 0, "child detached cleanly, parent alive");
    cr_assert_eq(m.live_slots, 1);
    char buf[16];
    cr_assert_eq(get(r, "k", buf, sizeof buf, NULL), KVSHM_OK);
    cr_assert_eq(kvshm_reader_slot(r), parent_slot);
}

Test(shm_segment, slots_run_out)
{
    kvshm_config c = shmt_config(8u << 20, 1);
    c.nslots = 3;
    kvshm_writer *w;
    cr_assert_eq(kvshm_writer_create(&c, &w), KVSHM_OK);
    kvshm_reader *r[4];
    for (int i = 0; i < 3; i++) cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &r[i]), KVSHM_OK);
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &r[3]), KVSHM_E_NOSLOT);
    kvshm_reader_detach(r[1]);
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &r[3]), KVSHM_OK);
    cr_assert_eq(kvshm_reader_slot(r[3]), 1);
    for (int i = 0; i < 4; i++) if (i != 1) kvshm_reader_detach(r[i]);
    kvshm_writer_destroy(w, 1);
    cr_assert_str_eq(kvshm_strerror(KVSHM_E_NOSLOT), "no free reader slot");
}

/* Key-stripe stamps (layout.h): +2 per applied put/delete of the stripe's
 * keys, untouched by folds, loads and evictions; odd once the segment closes. */
Test(shm_segment, stripe_stamps_follow_applied_writes_only)
{
    kvshm_writer *w;
    kvshm_reader *r;
    shmt_open(32u << 20, 2, &w, &r);
    uint64_t ha = kvshm_key_hash("alpha", 5);
    cr_assert_eq(ha, XXH3_64bits("alpha", 5));
    /* a key in another stripe than alpha's */
    char other[16];
    uint64_t ho = 0;
    for (int i = 0; i < 100000; i++) {
        snprintf(other, sizeof other, "o%d", i);
        ho = kvshm_key_hash(other, strlen(other));
        if (kvshm_stripe_of(ho) != kvshm_stripe_of(ha)) break;
    }
    cr_assert_neq(kvshm_stripe_of(ho), kvshm_stripe_of(ha));
    uint64_t a0 = kvshm_reader_stamp(r, ha, 0), o0 = kvshm_reader_stamp(r, ho, 0);
    cr_assert_eq(a0 & 1, 0);
    cr_assert_eq(kvshm_writer_put(w, "alpha", 5, "one", 3, 1, 0), KVSHM_OK);
    cr_assert_eq(kvshm_reader_stamp(r, ha, 1), a0 + 2);
    cr_assert_eq(kvshm_reader_stamp(r, ho, 0), o0, "another stripe is untouched");
    cr_assert_eq(kvshm_writer_put(w, "alpha", 5, NULL, 0, 2, 1), KVSHM_OK);  /* delete */
    cr_assert_eq(kvshm_reader_stamp(r, ha, 0), a0 + 4);
    /* freeze + fold and a cache load change no visible value: no bump */
    uint32_t s = kvshm_shard_of("alpha", 5, 2);
    cr_assert_eq(kvshm_writer_freeze(w, s), KVSHM_OK);
    cr_assert_eq(kvshm_writer_fold(w, s, 1024), KVSHM_OK);
    kvshm_kv kv = { "alpha", 5, "one", 3, 1 };
    cr_assert_eq(kvshm_writer_cache_load(w, &kv, 1), KVSHM_OK);
    cr_assert_eq(kvshm_reader_stamp(r, ha, 0), a0 + 4);
    /* a closed segment never validates a copy */
    kvshm_writer_destroy(w, 1);
    shmt_w = NULL;
    cr_assert_eq(kvshm_reader_stamp(r, ha, 0) & 1, 1);
}

/* ---- the writer's figures and walks ------------------------------------- */

typedef struct walk { int n, ordered, stop_after; char last[32]; } walk;

static int walk_rec(void *ctx, const void *key, size_t klen, const void *val, size_t vlen,
                    uint64_t seq, int tombstone)
{
    walk *c = ctx;
    char k[32];
    snprintf(k, sizeof k, "%.*s", (int)klen, (const char *)key);
    if (c->n && strcmp(c->last, k) >= 0) c->ordered = 0;
    snprintf(c->last, sizeof c->last, "%s", k);
    c->n++;
    return c->stop_after && c->n >= c->stop_after;
}

/* Shard figures add up to the segment's, and a cache walk visits every
 * cached key of a shard in key order. */
Test(shm_segment, writer_figures_and_cache_walk)
{
    kvshm_writer *w;
    kvshm_reader *r;
    shmt_open(32u << 20, 3, &w, &r);
    cr_assert_eq(kvshm_writer_shards(w), 3);
    cr_assert_eq(kvshm_writer_size_bytes(w), 32u << 20);
    cr_assert_eq(kvshm_writer_generation(w), 1);
    enum { N = 300 };
    static char keys[N][16];
    kvshm_kv kv[N];
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof keys[i], "c%05d", i);
        kv[i] = (kvshm_kv){ keys[i], strlen(keys[i]), "v", 1, 1 };
    }
    cr_assert_eq(kvshm_writer_cache_load(w, kv, N), KVSHM_OK);
    for (int i = 0; i < 7; i++)
        cr_assert_eq(kvshm_writer_put(w, keys[i], strlen(keys[i]), "new", 3, 10 + i, 0), KVSHM_OK);
    kvshm_shard_stats all, one, sum = {0};
    cr_assert_eq(kvshm_writer_shard_stats(w, KVSHM_ALL_SHARDS, &all), KVSHM_OK);
    cr_assert_eq(all.tree_keys, N);
    cr_assert_eq(all.mt_keys, 7);
    cr_assert(all.used_bytes > 0 && all.used_bytes <= all.region_bytes);
    cr_assert(all.region_bytes < 32u << 20);
    int walked = 0;
    for (uint32_t s = 0; s < 3; s++) {
        cr_assert_eq(kvshm_writer_shard_stats(w, s, &one), KVSHM_OK);
        sum.tree_keys += one.tree_keys; sum.mt_keys += one.mt_keys;
        sum.used_bytes += one.used_bytes; sum.region_bytes += one.region_bytes;
        walk c = { .ordered = 1 };
        cr_assert_eq(kvshm_writer_cache_scan(w, s, walk_rec, &c), KVSHM_OK);
        cr_assert_eq((uint64_t)c.n, one.tree_keys, "shard %u", s);
        cr_assert(c.ordered, "shard %u walked in key order", s);
        walked += c.n;
    }
    cr_assert_eq(walked, N);
    cr_assert_eq(sum.tree_keys, all.tree_keys);
    cr_assert_eq(sum.mt_keys, all.mt_keys);
    cr_assert_eq(sum.used_bytes, all.used_bytes);
    cr_assert_eq(sum.region_bytes, all.region_bytes);
    walk stop = { .ordered = 1, .stop_after = 5 };
    cr_assert_eq(kvshm_writer_cache_scan(w, 0, walk_rec, &stop), KVSHM_OK);
    cr_assert_eq(stop.n, 5, "a nonzero return stops the walk");
    cr_assert_eq(kvshm_writer_shard_stats(w, 3, &one), KVSHM_E_INVAL);
    cr_assert_eq(one.tree_keys, 0);
    cr_assert_eq(kvshm_writer_cache_scan(w, 3, walk_rec, &stop), KVSHM_E_INVAL);
}

/* A new writer's recovery: the records a writer applied (active and frozen
 * memtables) are visited from its segment; closing it makes readers stale. */
Test(shm_segment, recover_scan_and_close)
{
    kvshm_writer *w;
    kvshm_reader *r;
    shmt_open(32u << 20, 2, &w, &r);
    char k[16];
    for (int i = 0; i < 40; i++) {
        snprintf(k, sizeof k, "r%03d", i);
        cr_assert_eq(kvshm_writer_put(w, k, strlen(k), "x", 1, 1 + (uint64_t)i, i % 9 == 0),
                     KVSHM_OK);
        if (i == 19)   /* the first half in frozen memtables */
            for (uint32_t s = 0; s < 2; s++) cr_assert_eq(kvshm_writer_freeze(w, s), KVSHM_OK);
    }
    walk all = { 0 };
    cr_assert_eq(kvshm_recover_scan(shmt_seg, walk_rec, &all), KVSHM_OK);
    cr_assert_eq(all.n, 40, "every applied record, frozen and active");
    walk stop = { .stop_after = 3 };
    cr_assert_eq(kvshm_recover_scan(shmt_seg, walk_rec, &stop), KVSHM_OK);
    cr_assert_eq(stop.n, 3, "a nonzero return stops the whole scan");
    cr_assert_eq(kvshm_recover_scan("/kvshm-no-such-segment", walk_rec, &stop), KVSHM_E_NOENT);
    char buf[8];
    cr_assert_eq(get(r, "r001", buf, sizeof buf, NULL), KVSHM_OK);
    cr_assert_eq(kvshm_recover_close(shmt_seg), KVSHM_OK);
    cr_assert_eq(get(r, "r001", buf, sizeof buf, NULL), KVSHM_E_STALE);
    /* another layout is not replayed */
    struct kvshm_hdr *h = (struct kvshm_hdr *)kvshm_writer_seg(w)->base;
    h->h_layout_hash ^= 1;
    cr_assert_eq(kvshm_recover_scan(shmt_seg, walk_rec, &stop), KVSHM_E_LAYOUT);
    cr_assert_eq(kvshm_recover_close(shmt_seg), KVSHM_E_LAYOUT);
    h->h_layout_hash ^= 1;
}

#if KV_DEBUG >= 1
/* Assertion builds: a "writer only" call from a forked child of the writer
 * aborts, and the report names the segment (the assert context hook). */
Test(shm_segment, writer_only_call_from_a_child_aborts_with_context)
{
    kvshm_writer *w;
    kvshm_reader *r;
    shmt_open(16u << 20, 1, &w, &r);
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 2);
        kvshm_writer_put(w, "k", 1, "v", 1, 1, 0);
        _exit(0);
    }
    close(p[1]);
    char report[2048] = "";
    size_t got = 0;
    ssize_t n;
    while (got < sizeof report - 1 && (n = read(p[0], report + got, sizeof report - 1 - got)) > 0)
        got += (size_t)n;
    close(p[0]);
    cr_assert_eq(shmt_wait(pid), 128 + SIGABRT);
    cr_assert(strstr(report, "assertion failed"), "report: %s", report);
    cr_assert(strstr(report, "kvshm writer, segment generation 1"), "report: %s", report);
}
#endif

/* ---- resumable walk of a frozen memtable ---------------------------------- */

#define FW_KEYS 700
typedef struct fw_model { uint64_t seq; int tomb; char v[24]; int present; } fw_model;
typedef struct fw_ctx {
    const fw_model *frozen;    /* newest version per key at the freeze */
    int *seen;
    int visits, wrong, refuse_every, calls;
    char last[32];
    size_t lastlen;
} fw_ctx;

static void fw_key(char *k, int i) { snprintf(k, 32, "fw:%06d", i); }   /* 9 bytes */

static int fw_visit(void *ctx, const void *key, size_t klen, const void *val, size_t vlen,
                    uint64_t seq, int tomb)
{
    fw_ctx *c = ctx;
    /* a visitor may refuse a record: it must come again on the next call */
    if (c->refuse_every && ++c->calls % c->refuse_every == 0) return 1;
    int i = atoi((const char *)key + 3);
    if (klen != 9 || i < 0 || i >= FW_KEYS) { c->wrong++; return 0; }
    const fw_model *m = &c->frozen[i];
    if (!m->present || m->seq != seq || m->tomb != tomb) c->wrong++;
    if (!tomb && (vlen != strlen(m->v) || memcmp(val, m->v, vlen) != 0)) c->wrong++;
    if (c->visits && kvshm_key_cmp(c->last, (uint32_t)c->lastlen, key, (uint32_t)klen) >= 0)
        c->wrong++;   /* key order across steps */
    memcpy(c->last, key, klen);
    c->lastlen = klen;
    c->seen[i]++;
    c->visits++;
    return 0;
}

Test(shm_segment, frozen_scan_from_visits_every_key_once_across_steps)
{
    kvshm_writer *w;
    kvshm_reader *r;
    shmt_open(64u << 20, 2, &w, &r);
    static fw_model model[FW_KEYS], frozen[FW_KEYS];
    uint64_t seed = 29, seq = 0;
    char k[32];
    /* several versions of most keys, some deleted */
    for (int n = 0; n < 5000; n++) {
        int i = (int)(shmt_rand(&seed) % FW_KEYS);
        fw_key(k, i);
        fw_model *m = &model[i];
        m->tomb = shmt_rand(&seed) % 7 == 0;
        snprintf(m->v, sizeof m->v, "v%d-%" PRIu64, i, ++seq);
        m->seq = seq;
        m->present = 1;
        cr_assert_eq(kvshm_writer_put(w, k, 9, m->tomb ? NULL : m->v, m->tomb ? 0 : strlen(m->v),
                                      seq, m->tomb), KVSHM_OK);
    }
    memcpy(frozen, model, sizeof model);
    for (uint32_t s = 0; s < 2; s++) cr_assert_eq(kvshm_writer_freeze(w, s), KVSHM_OK);
    int expect = 0;
    for (int i = 0; i < FW_KEYS; i++) expect += frozen[i].present;
    static int seen[FW_KEYS];
    int total = 0;
    for (uint32_t s = 0; s < 2; s++) {
        fw_ctx c = {.frozen = frozen, .seen = seen, .refuse_every = s ? 5 : 0};
        kvshm_scan_cursor cur = KVSHM_SCAN_CURSOR_INIT;
        kvshm_status st;
        int calls = 0;
        do {
            st = kvshm_writer_frozen_scan_from(w, s, &cur, 1 + shmt_rand(&seed) % 7, fw_visit, &c);
            cr_assert(st == KVSHM_OK || st == KVSHM_EMPTY, "step status %d", st);
            /* puts between the steps go to the active memtable, unseen */
            for (int j = 0; j < 3; j++) {
                int i = (int)(shmt_rand(&seed) % FW_KEYS);
                fw_key(k, i);
                cr_assert_eq(kvshm_writer_put(w, k, 9, "new", 3, ++seq, 0), KVSHM_OK);
            }
            cr_assert_lt(++calls, 100000);
        } while (st == KVSHM_OK);
        cr_assert(calls > 20, "many small steps (%d)", calls);
        cr_assert_eq(c.wrong, 0, "shard %u: %d wrong visits", s, c.wrong);
        cr_assert_eq(kvshm_writer_frozen_scan_from(w, s, &cur, 5, fw_visit, &c), KVSHM_EMPTY,
                     "a finished walk stays finished");
        total += c.visits;
    }
    cr_assert_eq(total, expect);
    for (int i = 0; i < FW_KEYS; i++)
        cr_assert_eq(seen[i], frozen[i].present, "key %d visited %d times", i, seen[i]);
    /* the cursor belongs to its frozen memtable */
    kvshm_scan_cursor cur = KVSHM_SCAN_CURSOR_INIT;
    fw_ctx c = {.frozen = frozen, .seen = seen};
    cr_assert_eq(kvshm_writer_frozen_scan_from(w, 0, &cur, 1, fw_visit, &c), KVSHM_OK);
    cr_assert_eq(kvshm_writer_fold(w, 0, 1024), KVSHM_OK);
    cr_assert_eq(kvshm_writer_frozen_scan_from(w, 0, &cur, 1, fw_visit, &c), KVSHM_E_INVAL);
    kvshm_scan_cursor none = KVSHM_SCAN_CURSOR_INIT;
    cr_assert_eq(kvshm_writer_frozen_scan_from(w, 0, &none, 1, fw_visit, &c), KVSHM_EMPTY,
                 "no frozen memtable: nothing to walk");
    cr_assert_eq(kvshm_writer_frozen_scan_from(w, 9, &none, 1, fw_visit, &c), KVSHM_E_INVAL);
    cr_assert_eq(kvshm_writer_frozen_scan_from(w, 0, &none, 0, fw_visit, &c), KVSHM_E_INVAL);
    /* kvshm_writer_cached: memtables and tree, never SQLite */
    fw_key(k, 0);
    cr_assert_eq(kvshm_writer_put(w, k, 9, "x", 1, ++seq, 0), KVSHM_OK);
    cr_assert(kvshm_writer_cached(w, k, 9));
    cr_assert(!kvshm_writer_cached(w, "absent", 6));
    cr_assert_eq(kvshm_writer_fold(w, 1, 1024), KVSHM_OK);
    uint32_t st = kvshm_shard_of("treeonly", 8, 2);
    cr_assert_eq(kvshm_writer_put(w, "treeonly", 8, "t", 1, ++seq, 0), KVSHM_OK);
    cr_assert_eq(kvshm_writer_freeze(w, st), KVSHM_OK);
    cr_assert_eq(kvshm_writer_fold(w, st, 1024), KVSHM_OK);
    cr_assert(kvshm_writer_cached(w, "treeonly", 8), "found in the tree alone");
    (void)r;
}

typedef struct req_seen {
    const kvshm_writer *w;
    uint32_t requests;
} req_seen;

/* has_work of kvshm_writer_idle_wait: the request count moved. */
static int requests_moved(void *ctx, int final)
{
    (void)final;
    const req_seen *rs = ctx;
    return kvshm_writer_requests(rs->w) != rs->requests;
}

Test(shm_segment, flagged_requests_are_counted_and_end_the_idle_wait)
{
    kvshm_writer *w;
    kvshm_reader *r;
    shmt_open(8u << 20, 1, &w, &r);
    req_seen rs = {.w = w, .requests = kvshm_writer_requests(w)};
    cr_assert_eq(kvshm_writer_idle_wait(w, requests_moved, &rs, 20), KVSHM_TIMEOUT,
                 "nothing flagged: the wait times out");
    kvshm_reader_flag_request(r);
    kvshm_reader_flag_request(r);
    cr_assert_eq(kvshm_writer_requests(w), rs.requests + 2);
    cr_assert_eq(kvshm_writer_idle_wait(w, requests_moved, &rs, 10000), KVSHM_OK,
                 "a flagged request ends the idle wait at once");
}
