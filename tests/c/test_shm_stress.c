/* test_shm_stress.c - multi-process stress of the shared segment: one writer
 * (this process) applies random batches -- puts and deletes into memtables,
 * freezes, folds into the CSB+trees, reclamation -- while 2 reader processes
 * look keys up and iterate prefixes for 30 s. Every operation is a
 * deterministic function of its sequence number, so a reader can check that
 * each value it sees (a) was written by the writer for that key (bytes
 * regenerated and compared: never torn), (b) is not older than the last
 * version published before the read began, (c) was published by the time
 * the read ended; and that an iteration is ordered and complete.
 * KV_SHM_STRESS_SECONDS overrides the 30 s (default everywhere; the
 * sanitizer builds fit within ctest's 900 s with it). */
#include "shm_test_util.h"

#define K 1500            /* key ids */
#define READERS 2

static void setup(void) { setenv("KVSHM_POISON", "1", 1); shmt_setup(); }
static void teardown(void) { shmt_teardown(); }
TestSuite(shm_stress, .init = setup, .fini = teardown, .timeout = 600);

static uint64_t mix(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

typedef struct op { uint32_t id; int tomb; uint32_t vlen; } op;
static op op_of(uint64_t n)
{
    uint64_t h = mix(n);
    return (op){ (uint32_t)(h % K), (int)((h >> 20) % 8 == 0), 16 + (uint32_t)((h >> 32) % 200) };
}
static uint32_t key_of(char *k, uint32_t id) { snprintf(k, 24, "key:%012u", id); return 16; }
static void val_of(uint8_t *v, uint64_t n, op o)
{
    memcpy(v, &n, 8);
    memcpy(v + 8, &o.id, 4);
    uint64_t s = n;
    for (uint32_t i = 12; i < o.vlen; i++) v[i] = (uint8_t)shmt_rand(&s);
}

/* Latest op on id with seq <= s (0: none). */
static uint64_t latest(uint32_t id, uint64_t s)
{
    for (uint64_t m = s; m > 0; m--)
        if (op_of(m).id == id) return m;
    return 0;
}
/* Any delete of id with seq in (a, b]? */
static int deleted_between(uint32_t id, uint64_t a, uint64_t b)
{
    for (uint64_t m = a + 1; m <= b; m++) {
        op o = op_of(m);
        if (o.id == id && o.tomb) return 1;
    }
    return 0;
}

/* Check a value seen for id by a read that began at s0 and ended at s1. */
static int check_value(uint32_t id, const uint8_t *v, size_t len, uint64_t s0, uint64_t s1,
                       char *why)
{
    if (len < 12) { strcpy(why, "short value"); return 0; }
    uint64_t n; memcpy(&n, v, 8);
    op o = op_of(n);
    uint8_t want[256];
    if (n == 0 || n > s1) { sprintf(why, "seq %lu not published by %lu", (unsigned long)n, (unsigned long)s1); return 0; }
    if (o.id != id || o.tomb || o.vlen != len) {
        sprintf(why, "value of seq %lu (key %u%s, len %u) seen for key %u len %zu", (unsigned long)n,
                o.id, o.tomb ? ", delete" : "", o.vlen, id, len);
        return 0;
    }
    val_of(want, n, o);
    if (memcmp(want, v, len)) { strcpy(why, "torn value"); return 0; }
    uint64_t L = latest(id, s0);
    if (n < L) { sprintf(why, "stale: seq %lu < %lu published before the read", (unsigned long)n, (unsigned long)L); return 0; }
    return 1;
}

static int absent_ok(uint32_t id, uint64_t s0, uint64_t s1)
{
    uint64_t L = latest(id, s0);
    return L == 0 || op_of(L).tomb || deleted_between(id, s0, s1);
}

typedef struct rstats { uint64_t gets, hits, iters, items, fails; char why[160]; } rstats;

static void reader_main(int fd, double deadline, uint64_t seed)
{
    rstats st = { 0 };
    kvshm_reader *r;
    if (kvshm_reader_attach(shmt_seg, shmt_slot, &r) != KVSHM_OK) { st.fails = 1; strcpy(st.why, "attach"); goto out; }
    uint8_t v[256];
    char k[24];
    while (shmt_now() < deadline && !st.fails) {
        if (shmt_rand(&seed) % 8 == 0) {
            /* a batch through kvshm_reader_get_many: each key's result is
             * checked like a single get's, over the span of the whole call */
            enum { NB = 20 };
            static uint8_t bv[NB][256];
            char bk[NB][24];
            const void *kp[NB]; size_t kl[NB]; kvshm_val bo[NB]; kvshm_status bs[NB];
            uint32_t ids[NB];
            for (int i = 0; i < NB; i++) {
                ids[i] = (uint32_t)(shmt_rand(&seed) % K);
                kl[i] = key_of(bk[i], ids[i]);
                kp[i] = bk[i];
                bo[i] = (kvshm_val){ bv[i], sizeof bv[i], 0, 0, NULL, NULL };
            }
            uint64_t s0, s1;
            kvshm_reader_seqs(r, &s0, NULL);
            kvshm_status rc = kvshm_reader_get_many(r, NB, kp, kl, bo, bs);
            kvshm_reader_seqs(r, &s1, NULL);
            s1++;
            if (rc != KVSHM_OK) { st.fails++; sprintf(st.why, "get_many status %d", rc); break; }
            for (int i = 0; i < NB && !st.fails; i++) {
                st.gets++;
                if (bs[i] == KVSHM_OK) {
                    st.hits++;
                    if (!check_value(ids[i], bv[i], bo[i].len, s0, s1, st.why)) st.fails++;
                } else if (bs[i] == KVSHM_DELETED || bs[i] == KVSHM_NOTFOUND) {
                    if (!absent_ok(ids[i], s0, s1)) { st.fails++; sprintf(st.why, "get_many: key %u missing (rc %d)", ids[i], bs[i]); }
                } else {
                    st.fails++; sprintf(st.why, "get_many key status %d", bs[i]);
                }
            }
        } else if (shmt_rand(&seed) % 50 != 0) {
            uint32_t id = (uint32_t)(shmt_rand(&seed) % K);
            key_of(k, id);
            uint64_t s0, s1;
            kvshm_reader_seqs(r, &s0, NULL);
            kvshm_val out = { v, sizeof v, 0, 0, NULL, NULL };
            kvshm_status rc = kvshm_reader_get(r, k, 16, &out);
            kvshm_reader_seqs(r, &s1, NULL);
            s1++;   /* the writer publishes applied_seq just after each put */
            st.gets++;
            if (rc == KVSHM_OK) {
                st.hits++;
                if (!check_value(id, v, out.len, s0, s1, st.why)) st.fails++;
            } else if (rc == KVSHM_DELETED || rc == KVSHM_NOTFOUND) {
                if (!absent_ok(id, s0, s1)) { st.fails++; sprintf(st.why, "key %u missing (rc %d)", id, rc); }
            } else {
                st.fails++; sprintf(st.why, "get status %d", rc);
            }
        } else {
            /* prefix "key:" + dd as 10 digits covers ids dd*100 .. dd*100+99 */
            uint32_t dd = (uint32_t)(shmt_rand(&seed) % (K / 100));
            char prefix[24];
            snprintf(prefix, sizeof prefix, "key:%010u", dd);
            uint64_t s0, s1;
            kvshm_reader_seqs(r, &s0, NULL);
            char last[24]; size_t lastlen = 0;
            int seen[100] = { 0 };
            for (;;) {
                char kb[24];
                kvshm_val ko = { kb, sizeof kb, 0, 0, NULL, NULL }, vo = { v, sizeof v, 0, 0, NULL, NULL };
                kvshm_status rc = kvshm_reader_next(r, prefix, 14, last, lastlen, &ko, &vo);
                if (rc == KVSHM_EMPTY) break;
                uint64_t now; kvshm_reader_seqs(r, &now, NULL);
                now++;
                if (rc != KVSHM_OK || ko.len != 16 || memcmp(kb, prefix, 14)) {
                    st.fails++; sprintf(st.why, "iteration status %d", rc); break;
                }
                if (lastlen && memcmp(last, kb, 16) >= 0) { st.fails++; sprintf(st.why, "iteration out of order: %.16s after %.16s", kb, last); break; }
                kb[16] = 0;
                uint32_t id = (uint32_t)atoi(kb + 4);
                if (!check_value(id, v, vo.len, s0, now, st.why)) { st.fails++; break; }
                seen[id % 100] = 1;
                memcpy(last, kb, 16); lastlen = 16;
                st.items++;
            }
            kvshm_reader_seqs(r, &s1, NULL);
            s1++;
            for (uint32_t i = 0; i < 100 && !st.fails; i++) {
                uint32_t id = dd * 100 + i;
                uint64_t L = latest(id, s0);
                if (!seen[i] && L && !op_of(L).tomb && !deleted_between(id, s0, s1)) {
                    char kk[24]; key_of(kk, id);
                    kvshm_val o2 = { v, sizeof v, 0, 0, NULL, NULL };
                    kvshm_status g = kvshm_reader_get(r, kk, 16, &o2);
                    char kn[24]; kvshm_val ko2 = { kn, sizeof kn, 0, 0, NULL, NULL };
                    char prev[24]; key_of(prev, id - 1);
                    kvshm_status g2 = kvshm_reader_next(r, prefix, 14, prev, 16, &ko2, NULL);
                    st.fails++; sprintf(st.why, "iteration missed live key %u (L=%lu s0=%lu s1=%lu get=%d seq=%lu; next after %u: %d %.16s)", id,
                        (unsigned long)L, (unsigned long)s0, (unsigned long)s1, g, (unsigned long)o2.seq, id - 1, g2, kn);
                }
            }
            st.iters++;
        }
    }
    kvshm_reader_detach(r);
out:
    shmt_write(fd, &st, sizeof st);
    _exit(st.fails ? 1 : 0);
}

Test(shm_stress, one_writer_two_readers)
{
    double secs = 30;
    const char *env = getenv("KV_SHM_STRESS_SECONDS");
    if (env && atof(env) > 0) secs = atof(env);
    kvshm_config c = shmt_config(128u << 20, 4);
    c.memtable_bytes = 256u << 10;
    kvshm_writer *w;
    cr_assert_eq(kvshm_writer_create(&c, &w), KVSHM_OK);
    double deadline = shmt_now() + secs;
    int p[2];
    cr_assert_eq(pipe(p), 0);
    pid_t kids[READERS];
    for (int i = 0; i < READERS; i++) {
        kids[i] = fork();
        if (kids[i] == 0) { close(p[0]); reader_main(p[1], deadline, 1000 + (uint64_t)i); }
    }
    close(p[1]);
    uint64_t n = 0, seed = 42, batches = 0, folds = 0, freezes = 0;
    uint8_t v[256];
    char k[24];
    while (shmt_now() < deadline) {
        uint64_t bs = 1 + shmt_rand(&seed) % 300;
        for (uint64_t j = 0; j < bs; j++) {
            op o = op_of(++n);
            key_of(k, o.id);
            val_of(v, n, o);
            kvshm_status st;
            while ((st = kvshm_writer_put(w, k, 16, v, o.vlen, n, o.tomb)) == KVSHM_E_FULL) {
                uint32_t s = kvshm_shard_of(k, 16, c.shards);
                if (kvshm_writer_has_frozen(w, s)) {
                    cr_assert_eq(kvshm_writer_fold(w, s, 4096), KVSHM_OK); folds++;
                }
                cr_assert_eq(kvshm_writer_freeze(w, s), KVSHM_OK); freezes++;
            }
            cr_assert_eq(st, KVSHM_OK);
            kvshm_writer_publish_seq(w, n, 0);  /* applied = visible */
        }
        batches++;
        uint32_t s = (uint32_t)(shmt_rand(&seed) % c.shards);
        if (batches % 7 == 0 && kvshm_writer_has_frozen(w, s)) {
            cr_assert_eq(kvshm_writer_fold(w, s, 4096), KVSHM_OK); folds++;
        } else if (batches % 11 == 0 && !kvshm_writer_has_frozen(w, s)) {
            cr_assert_eq(kvshm_writer_freeze(w, s), KVSHM_OK); freezes++;
        }
        kvshm_maint m;
        cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
    }
    rstats tot = { 0 };
    for (int i = 0; i < READERS; i++) {
        rstats st;
        cr_assert_eq(shmt_read(p[0], &st, sizeof st), 0);
        cr_expect_eq(st.fails, 0, "reader: %s", st.why);
        tot.gets += st.gets; tot.hits += st.hits; tot.iters += st.iters; tot.items += st.items;
        tot.fails += st.fails;
    }
    for (int i = 0; i < READERS; i++) cr_assert_eq(shmt_wait(kids[i]), 0);
    cr_assert_eq(tot.fails, 0);
    cr_assert_gt(tot.gets, 1000);
    cr_assert_gt(tot.iters, 10);
    cr_assert_gt(folds, 3);
    cr_log_info("stress %.0fs: %lu writes in %lu batches, %lu freezes, %lu folds; readers %lu gets (%lu hits), %lu iterations (%lu items)",
                secs, (unsigned long)n, (unsigned long)batches, (unsigned long)freezes,
                (unsigned long)folds, (unsigned long)tot.gets, (unsigned long)tot.hits,
                (unsigned long)tot.iters, (unsigned long)tot.items);
    kvshm_writer_destroy(w, 1);
}
