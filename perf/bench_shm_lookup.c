/*
 * bench_shm_lookup.c -- hot point lookups over 1,000,000 cached keys
 * (16-byte keys, 100-byte values, value copied out), from 1 and 2 reader
 * processes, in one run:
 *
 *   CSB+tree   kvshm_reader_get with every key folded into the shards' trees
 *   memtable   kvshm_reader_get with every key in the shards' active memtables
 *   LMDB       mdb_get in one long read transaction + memcpy of the value
 *              (Debian's liblmdb; the database file lives in /dev/shm)
 *   get_many   the same tree segment, kvshm_reader_get_many with 16 keys per
 *              call (the descents of a call's keys overlap their misses)
 *   hash table a process-local open-addressing table keyed by xxh3 with keys
 *              and values inline (the upper bound: no sharing, no epochs)
 *
 * Each configuration runs RUNS times; the table shows the median ops/s (for
 * 2 processes: the sum of both processes' rates) and the ratio to LMDB in
 * the same process count. Keys are uniformly random lookups over all keys.
 *
 * usage: bench_shm_lookup [keys] [lookups-per-process] [runs] [mask] [keys-style]
 * (mask: structures to run, bit 0 CSB+tree, 1 memtable, 2 LMDB, 3 hash,
 * 4 CSB+tree through kvshm_reader_get_many, 16 keys per call; default 31 = all; for profiling one structure alone. keys-style: "random"
 * (default, two mixed 64-bit words) or "decimal": "key-%012u" of the key
 * index, keys that share their first 8+ bytes as real key sets do)
 */
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "kvshm/kvshm.h"

#define KLEN 16
#define VLEN 100

static uint64_t NKEYS = 1000000, NLOOK = 2000000;
static int RUNS = 5;
static unsigned MASK = 31;  /* structures to run (bit per enum value) */
static uint8_t *KEYS;      /* NKEYS * KLEN */
static int DECIMAL;        /* key style "decimal" */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t mix(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

/* Key i: two mixed words. Computed on the fly in the timed loops (a few
 * cycles, no memory access), the same for every structure, so the loop adds
 * no cache miss of its own on top of the structure's. */
static inline void make_key(uint8_t *k, uint64_t i)
{
    if (DECIMAL) {   /* "key-" + 12 digits, no terminator: 16 bytes */
        memcpy(k, "key-", 4);
        for (int d = 15; d >= 4; d--, i /= 10) k[d] = (uint8_t)('0' + i % 10);
        return;
    }
    uint64_t a = mix(i * 2 + 1), b = mix(i * 2 + 2);
    memcpy(k, &a, 8);
    memcpy(k + 8, &b, 8);
}

static void make_val(uint8_t *v, uint64_t i)
{
    memcpy(v, &i, 8);
    for (int j = 8; j < VLEN; j++) v[j] = (uint8_t)(i * 131 + (uint64_t)j);
}

static void die(const char *what, int code)
{
    fprintf(stderr, "bench_shm_lookup: %s failed (%d)\n", what, code);
    exit(1);
}

/* ---- the four structures ------------------------------------------------ */

enum { S_TREE, S_MT, S_LMDB, S_HASH, S_MANY, NSTRUCT };
static const char *NAMES[NSTRUCT] = { "CSB+tree (kvshm)", "memtable (kvshm)",
                                      "LMDB mdb_get", "hash table (local)",
                                      "CSB+tree get_many" };
/* Table order: the batched tree row right below the one-key row. */
static const int ORDER[NSTRUCT] = { S_TREE, S_MANY, S_MT, S_LMDB, S_HASH };
#define BATCH 16   /* keys per kvshm_reader_get_many call */
static char SEG[2][64], SLOT[2][64];
static char LMDB_DIR[128];

/* process-local hash table: 2^21 slots of key index + 1 */
#define HBITS 21
static uint32_t *HT;
static uint8_t *HVALS;

static void build_hash(void)
{
    HT = calloc((size_t)1 << HBITS, sizeof *HT);
    HVALS = malloc(NKEYS * VLEN);
    for (uint64_t i = 0; i < NKEYS; i++) {
        make_val(HVALS + i * VLEN, i);
        uint64_t h = XXH3_64bits(KEYS + i * KLEN, KLEN) & ((1u << HBITS) - 1);
        while (HT[h]) h = (h + 1) & ((1u << HBITS) - 1);
        HT[h] = (uint32_t)i + 1;
    }
}

static int hash_get(const uint8_t *k, uint8_t *out)
{
    uint64_t h = XXH3_64bits(k, KLEN) & ((1u << HBITS) - 1);
    for (;;) {
        uint32_t e = HT[h];
        if (!e) return 0;
        if (!memcmp(KEYS + (uint64_t)(e - 1) * KLEN, k, KLEN)) {
            memcpy(out, HVALS + (uint64_t)(e - 1) * VLEN, VLEN);
            return 1;
        }
        h = (h + 1) & ((1u << HBITS) - 1);
    }
}

static void build_segments(void)
{
    uint8_t *vals = malloc(NKEYS * VLEN);
    for (uint64_t i = 0; i < NKEYS; i++) make_val(vals + i * VLEN, i);
    for (int which = 0; which < 2; which++) {
        if (!(MASK >> which & 1) && !(which == S_TREE && MASK >> S_MANY & 1)) continue;
        snprintf(SEG[which], 64, "/kvshm-bench-%d-%d-seg", (int)getpid(), which);
        snprintf(SLOT[which], 64, "/kvshm-bench-%d-%d-slot", (int)getpid(), which);
        kvshm_config c;
        kvshm_config_default(&c);
        c.seg_name = SEG[which];
        c.slot_name = SLOT[which];
        c.shards = 4;
        c.size_bytes = UINT64_C(1) << 30;
        c.memtable_bytes = which == S_MT ? (UINT64_C(96) << 20) : (UINT64_C(1) << 20);
        kvshm_writer *w;
        kvshm_status st = kvshm_writer_create(&c, &w);
        if (st) die("kvshm_writer_create", st);
        if (which == S_TREE) {
            const size_t B = 100000;
            kvshm_kv *kv = malloc(B * sizeof *kv);
            for (uint64_t i = 0; i < NKEYS; i += B) {
                size_t n = 0;
                for (uint64_t j = i; j < i + B && j < NKEYS; j++, n++)
                    kv[n] = (kvshm_kv){ KEYS + j * KLEN, KLEN, vals + j * VLEN, VLEN, 1 };
                if ((st = kvshm_writer_cache_load(w, kv, n))) die("kvshm_writer_cache_load", st);
                kvshm_writer_maintain(w, NULL);
            }
            free(kv);
        } else {
            for (uint64_t i = 0; i < NKEYS; i++)
                if ((st = kvshm_writer_put(w, KEYS + i * KLEN, KLEN, vals + i * VLEN, VLEN, i + 1, 0)))
                    die("kvshm_writer_put", st);
        }
        kvshm_maint m;
        kvshm_writer_maintain(w, &m);
        fprintf(stderr, "  %s segment: %.1f MiB of blocks in use\n", which == S_TREE ? "tree" : "memtable",
                (double)m.used_bytes / 1048576.0);
        /* The writer stays out of the way: we only need the segment. Its
         * handle is leaked on purpose until exit (names unlinked at the end). */
    }
    free(vals);
}

static int idx_cmp(const void *a, const void *b)
{
    return memcmp(KEYS + (uint64_t)*(const uint32_t *)a * KLEN,
                  KEYS + (uint64_t)*(const uint32_t *)b * KLEN, KLEN);
}

static void build_lmdb(void)
{
    snprintf(LMDB_DIR, sizeof LMDB_DIR, "/dev/shm/kvshm-bench-lmdb-%d", (int)getpid());
    mkdir(LMDB_DIR, 0700);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    int rc;
    if ((rc = mdb_env_create(&env)) || (rc = mdb_env_set_mapsize(env, UINT64_C(1) << 30)) ||
        (rc = mdb_env_open(env, LMDB_DIR, MDB_NOSYNC | MDB_WRITEMAP, 0600)))
        die("mdb_env_open", rc);
    /* sorted insert with MDB_APPEND */
    uint32_t *idx = malloc(NKEYS * sizeof *idx);
    for (uint64_t i = 0; i < NKEYS; i++) idx[i] = (uint32_t)i;
    qsort(idx, NKEYS, sizeof *idx, idx_cmp);
    if ((rc = mdb_txn_begin(env, NULL, 0, &txn)) || (rc = mdb_dbi_open(txn, NULL, 0, &dbi)))
        die("mdb_txn_begin", rc);
    uint8_t v[VLEN];
    for (uint64_t i = 0; i < NKEYS; i++) {
        make_val(v, idx[i]);
        MDB_val k = { KLEN, KEYS + (uint64_t)idx[i] * KLEN }, d = { VLEN, v };
        if ((rc = mdb_put(txn, dbi, &k, &d, MDB_APPEND))) die("mdb_put", rc);
    }
    if ((rc = mdb_txn_commit(txn))) die("mdb_txn_commit", rc);
    mdb_env_close(env);
    free(idx);
}

/* ---- one measured process --------------------------------------------------- */

/* Key index of lookup i: in order for the warm-up, else uniformly random
 * (multiply-shift range reduction of a mix). */
static inline uint64_t key_index(int warm, uint64_t seed, uint64_t i)
{
    return warm ? i : (uint64_t)(((unsigned __int128)mix(seed + i) * NKEYS) >> 64);
}

/* n lookups BATCH keys per kvshm_reader_get_many call, the same key
 * sequence as the one-key loop; returns the number of wrong results. */
static uint64_t run_many(kvshm_reader *r, int warm, uint64_t seed, uint64_t n)
{
    uint8_t k[BATCH][KLEN], out[BATCH][128];
    const void *kp[BATCH];
    size_t kl[BATCH];
    kvshm_val v[BATCH];
    kvshm_status st[BATCH];
    uint64_t ki[BATCH], bad = 0;
    for (uint64_t i = 0; i < n; i += BATCH) {
        size_t m = n - i < BATCH ? (size_t)(n - i) : BATCH;
        for (size_t j = 0; j < m; j++) {
            ki[j] = key_index(warm, seed, i + j);
            make_key(k[j], ki[j]);
            kp[j] = k[j];
            kl[j] = KLEN;
            v[j] = (kvshm_val){ out[j], sizeof out[j], 0, 0, NULL, NULL };
        }
        if (kvshm_reader_get_many(r, m, kp, kl, v, st) != KVSHM_OK) return n;
        for (size_t j = 0; j < m; j++) {
            uint64_t got;
            memcpy(&got, out[j], 8);
            if (st[j] != KVSHM_OK || v[j].len != VLEN || got != ki[j]) bad++;
        }
    }
    return bad;
}

static double run_one(int which, uint64_t seed, int go_fd)
{
    uint8_t out[128];
    kvshm_reader *r = NULL;
    MDB_env *env = NULL; MDB_txn *txn = NULL; MDB_dbi dbi = 0;
    int rc;
    if (which == S_TREE || which == S_MT || which == S_MANY) {
        int seg = which == S_MANY ? S_TREE : which;
        kvshm_status st = kvshm_reader_attach(SEG[seg], SLOT[seg], &r);
        if (st) die("kvshm_reader_attach", st);
    } else if (which == S_LMDB) {
        if ((rc = mdb_env_create(&env)) || (rc = mdb_env_set_mapsize(env, UINT64_C(1) << 30)) ||
            (rc = mdb_env_open(env, LMDB_DIR, MDB_RDONLY | MDB_NOLOCK, 0600)) ||
            (rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn)) || (rc = mdb_dbi_open(txn, NULL, 0, &dbi)))
            die("mdb open", rc);
    }
    uint64_t bad = 0;
    /* Warm-up: look every key up once (in key-index order), so that every
     * structure is hot -- pages mapped, upper levels cached -- then wait for
     * the start signal and time NLOOK uniformly random lookups. */
    for (int pass = 0; pass < 2; pass++) {
        uint64_t n = pass == 0 ? NKEYS : NLOOK;
        if (pass == 1) { char b; if (read(go_fd, &b, 1) != 1) exit(1); }
        double t0 = now();
        if (which == S_MANY) {
            bad += run_many(r, pass == 0, seed, n);
            goto timed;
        }
        for (uint64_t i = 0; i < n; i++) {
            /* uniform key index: multiply-shift range reduction of a mix */
            uint64_t ki = key_index(pass == 0, seed, i);
            uint8_t k[KLEN];
            make_key(k, ki);
            switch (which) {
            case S_TREE: case S_MT: {
                kvshm_val v = { out, sizeof out, 0, 0, NULL, NULL };
                if (kvshm_reader_get(r, k, KLEN, &v) != KVSHM_OK || v.len != VLEN) bad++;
                break;
            }
            case S_LMDB: {
                MDB_val key = { KLEN, (void *)k }, d;
                if (mdb_get(txn, dbi, &key, &d) || d.mv_size != VLEN) { bad++; break; }
                memcpy(out, d.mv_data, VLEN);
                break;
            }
            default:
                if (!hash_get(k, out)) bad++;
            }
            uint64_t got; memcpy(&got, out, 8);
            if (got != ki) bad++;
        }
    timed:;
        double dt = now() - t0;
        if (pass == 1) {
            if (bad) { fprintf(stderr, "%s: %lu wrong lookups\n", NAMES[which], (unsigned long)bad); exit(1); }
            if (r) kvshm_reader_detach(r);
            if (txn) { mdb_txn_abort(txn); mdb_env_close(env); }
            return (double)n / dt;
        }
    }
    return 0;
}

/* Run `procs` processes of structure `which`; returns the summed ops/s. */
static double run_config(int which, int procs, int run)
{
    int res[2][2], go[2];
    pid_t pid[2];
    if (pipe(go)) die("pipe", errno);
    for (int p = 0; p < procs; p++) {
        if (pipe(res[p])) die("pipe", errno);
        pid[p] = fork();
        if (pid[p] == 0) {
            double ops = run_one(which, (uint64_t)run * 1000003u + (uint64_t)p * 7919u + 1, go[0]);
            if (write(res[p][1], &ops, sizeof ops) != sizeof ops) _exit(1);
            _exit(0);
        }
    }
    usleep(200000);  /* let every child finish its warm-up (children block on go) */
    char b[2] = { 'g', 'g' };
    if (write(go[1], b, (size_t)procs) != procs) die("write", errno);
    double total = 0;
    for (int p = 0; p < procs; p++) {
        double ops = 0;
        if (read(res[p][0], &ops, sizeof ops) != sizeof ops) die("child result", 0);
        int st;
        waitpid(pid[p], &st, 0);
        total += ops;
        close(res[p][0]); close(res[p][1]);
    }
    close(go[0]); close(go[1]);
    return total;
}

static int dcmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    if (argc > 1) NKEYS = strtoull(argv[1], NULL, 10);
    if (argc > 2) NLOOK = strtoull(argv[2], NULL, 10);
    if (argc > 3) RUNS = atoi(argv[3]);
    if (argc > 4) MASK = (unsigned)strtoul(argv[4], NULL, 0);
    if (argc > 5) DECIMAL = !strcmp(argv[5], "decimal");
    if (RUNS < 1 || RUNS > 99 || NKEYS < 1000 || NKEYS > (1u << 20)) {
        fprintf(stderr, "usage: bench_shm_lookup [keys<=1048576] [lookups] [runs]\n");
        return 2;
    }
    /* random 16-byte keys (distinct with overwhelming probability) */
    KEYS = malloc(NKEYS * KLEN);
    for (uint64_t i = 0; i < NKEYS; i++) make_key(KEYS + i * KLEN, i);
    fprintf(stderr, "building: %lu keys of %d bytes, values of %d bytes\n",
            (unsigned long)NKEYS, KLEN, VLEN);
    build_segments();
    if (MASK >> S_LMDB & 1) build_lmdb();
    if (MASK >> S_HASH & 1) build_hash();

    /* Runs are interleaved (run 1 of every structure, then run 2, ...) so
     * that a change in the machine's load hits every structure alike. */
    double med[NSTRUCT][3];
    for (int procs = 1; procs <= 2; procs++) {
        double v[NSTRUCT][99];
        for (int run = 0; run < RUNS; run++)
            for (int s = 0; s < NSTRUCT; s++)
                v[s][run] = (MASK >> s & 1) ? run_config(s, procs, run) : 1;
        for (int s = 0; s < NSTRUCT; s++) {
            qsort(v[s], (size_t)RUNS, sizeof v[s][0], dcmp);
            med[s][procs] = v[s][RUNS / 2];
            fprintf(stderr, "  %-20s %d proc: median %.2f M/s (min %.2f, max %.2f)\n", NAMES[s], procs,
                    med[s][procs] / 1e6, v[s][0] / 1e6, v[s][RUNS - 1] / 1e6);
        }
    }

    char cpu[256] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "model name", 10)) {
                char *c = strchr(line, ':');
                if (c) { snprintf(cpu, sizeof cpu, "%s", c + 2); cpu[strcspn(cpu, "\n")] = 0; }
                break;
            }
        fclose(f);
    }
    struct utsname u;
    uname(&u);
    printf("hot point lookups, %lu keys (16 B %s keys, 100 B values copied out), %lu lookups per process, median of %d runs\n",
           (unsigned long)NKEYS, DECIMAL ? "\"key-%012u\"" : "random", (unsigned long)NLOOK, RUNS);
    printf("machine: %s, %ld cores online, Linux %s\n\n", cpu, sysconf(_SC_NPROCESSORS_ONLN), u.release);
    printf("| structure | 1 process ops/s | vs LMDB | 2 processes ops/s | vs LMDB |\n");
    printf("|---|---:|---:|---:|---:|\n");
    for (int o = 0; o < NSTRUCT; o++) {
        int s = ORDER[o];
        if (!(MASK >> s & 1)) continue;
        printf("| %s | %.2fM | %.2fx | %.2fM | %.2fx |\n", NAMES[s], med[s][1] / 1e6,
               med[s][1] / med[S_LMDB][1], med[s][2] / 1e6, med[s][2] / med[S_LMDB][2]);
    }

    if (MASK >> S_TREE & 1 || MASK >> S_MANY & 1) kvshm_unlink(SEG[0], SLOT[0]);
    if (MASK >> S_MT & 1) kvshm_unlink(SEG[1], SLOT[1]);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "%s/data.mdb", LMDB_DIR); unlink(cmd);
    snprintf(cmd, sizeof cmd, "%s/lock.mdb", LMDB_DIR); unlink(cmd);
    rmdir(LMDB_DIR);
    int ok = med[S_TREE][1] >= 2 * med[S_LMDB][1] && med[S_TREE][2] >= 2 * med[S_LMDB][2];
    printf("\nCSB+tree >= 2x LMDB in 1 and 2 processes: %s\n", ok ? "yes" : "NO");
    if (MASK >> S_MANY & 1 && MASK >> S_LMDB & 1)
        printf("CSB+tree get_many (%d keys per call, not the one-key target above): %.2fx, %.2fx\n",
               BATCH, med[S_MANY][1] / med[S_LMDB][1], med[S_MANY][2] / med[S_LMDB][2]);
    /* issue 4's goal; exit 1 when it was judged (tree and LMDB both run) and
     * missed. perf/run keeps the figures either way. */
    return (MASK & 5) == 5 && !ok ? 1 : 0;
}
