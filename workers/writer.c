/*
 * writer.c -- kvault-writer, the single writer of a database in shared mode
 * (docs/shared-mode.md, "How it works" and "Failure behaviour"; docs/architecture.md, "The writer-side seam").
 *
 * One process per database file. It
 *   1. takes the registry lock on `<db>-kvault` (kvshm/proto.h);
 *   2. replays the valid records of a previous writer's segment that were
 *      applied but not committed (recover.c), bumping the generation;
 *   3. creates the data segment and slot file (kvshm_writer_create) and its
 *      abstract unix socket, then publishes the registry (state=ready);
 *   4. runs the writer loop, single-threaded:
 *        drain every client's submission ring into the active memtables
 *        (each record gets the next sequence number) -> when the batch size
 *        or the group-commit interval is reached, or a client asked for
 *        SYNC: freeze every shard, commit the frozen memtables in ONE
 *        transaction together with the batch's last sequence number
 *        (kv_batch), publish the committed sequence, tell each ring how far
 *        it is committed, fold into the CSB+trees -- in bounded steps with
 *        the rings drained between them (loop.c) -> load keys reported
 *        missed -> reclaim (epochs), evict under memory pressure; a
 *        checkpointer thread checkpoints the WAL (ckpt.c);
 *   5. on SIGTERM/SIGINT drains and commits everything, marks the segment
 *      closed, writes state=stopped and exits 0.
 *
 * Layering: this file calls kvshm_* (shm/) and kv_* / kv_batch_* (engine/);
 * it never calls SQLite itself.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <mimalloc.h>

#include "writer.h"

/* Bytes of mimalloc's arena, reserved at start (main). */
#define WR_ARENA_BYTES ((size_t)256 << 20)

/* ======================================================================
 * Options
 * ==================================================================== */

static void usage(FILE *f)
{
    fprintf(f,
        "usage: kvault-writer [options] DB\n"
        "  --table NAME             key-value table served (default kv)\n"
        "  --shards N               shards of the segment (default 4)\n"
        "  --cache-size SIZE        data segment bytes, suffix K/M/G (default 256M)\n"
        "  --memtable-size SIZE     bytes of one memtable arena (default 8M)\n"
        "  --max-value SIZE         largest value kept in the cache (default 256K)\n"
        "  --commit-interval-ms MS  group-commit interval (default 20)\n"
        "  --batch-size N           records per commit at most (default 65536)\n"
        "  --synchronous LEVEL      off|normal|full|extra (default normal)\n"
        "  --slots N                attached processes at once (default 128)\n"
        "  --linger-ms MS           stop cleanly MS after the last client detached\n"
        "                           (at least 10 s before the first client connected)\n"
        "                           (default: never; KVault(shared=\"spawn\") passes 2000)\n"
        "  --group GROUP            also serve processes of GROUP (a name or gid): the\n"
        "                           registry, segment and slot file get mode 0660 and\n"
        "                           that group (default: the writer's user only, 0600)\n"
        "  --cluster ID@HOST:PORT,...  cluster mode: the nodes of the cluster; batches are\n"
        "                           replicated through Raft (docs/replication.md)\n"
        "  --node-id ID             this node's ID among those of --cluster\n"
        "  --join                   a node added to a running cluster (kvault-launch\n"
        "                           cluster add): no bootstrap; waits for the leader\n"
        "  --snapshot-entries N     cluster: a snapshot of the file every N Raft entries\n"
        "                           (default 16384)\n");
}

/* A size: a number with an optional K/M/G suffix (powers of 1024; "KiB",
 * "KB", "B" spellings accepted). 0 and *out set, or -1 on anything else. */
static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v >= 0) || v >= 18446744073709551616.0) return -1;
    uint64_t m = 1;
    switch (*end) {
    case 'k': case 'K': m = 1024; end++; break;
    case 'm': case 'M': m = 1024 * 1024; end++; break;
    case 'g': case 'G': m = 1024ull * 1024 * 1024; end++; break;
    default: break;
    }
    if (*end == 'i' || *end == 'B' || *end == 'b') end++;
    if (*end == 'B') end++;
    if (*end || v * (double)m >= 18446744073709551616.0) return -1;
    *out = (uint64_t)(v * (double)m);
    return 0;
}

/* A whole decimal number in lo..hi, else -1. */
static int parse_count(const char *s, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno == ERANGE || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* Message for an option value out of its range, naming the option; -1. */
static int bad_value(const char *opt, const char *value, const char *want)
{
    fprintf(stderr, "kvault-writer: --%s: expected %s, got '%s' (kvault-writer --help)\n", opt,
            want, value);
    return -1;
}

/* --group: the group named (or numbered) `s` into o, which the writer must
 * be able to give its files (fchown: root, or a member of the group).
 * 0, or -1 with the reason on stderr. */
static int parse_group(const char *s, wr_opts *o)
{
    struct group *g = getgrnam(s);
    long long n;
    if (!g && !parse_count(s, 0, UINT32_MAX - 1, &n)) g = getgrgid((gid_t)n);
    if (!g) return bad_value("group", s, "the name or gid of an existing group (getent group)");
    o->group_access = 1;
    o->gid = (uint32_t)g->gr_gid;
    if (geteuid() == 0 || getegid() == g->gr_gid) return 0;
    int k = getgroups(0, NULL), member = 0;
    gid_t *mine = k > 0 ? malloc((size_t)k * sizeof *mine) : NULL;
    if (mine) k = getgroups(k, mine);
    for (int i = 0; mine && i < k; i++) member |= mine[i] == g->gr_gid;
    free(mine);
    if (member) return 0;
    fprintf(stderr, "kvault-writer: --group: this user is not a member of group '%s' "
            "(gid %u), so it cannot give that group its files\n", g->gr_name,
            (unsigned)g->gr_gid);
    return -1;
}

static int parse_args(int argc, char **argv, wr_opts *o)
{
    static const struct option longs[] = {
        {"table", required_argument, 0, 't'},
        {"shards", required_argument, 0, 's'},
        {"cache-size", required_argument, 0, 'c'},
        {"memtable-size", required_argument, 0, 'm'},
        {"max-value", required_argument, 0, 'v'},
        {"commit-interval-ms", required_argument, 0, 'i'},
        {"batch-size", required_argument, 0, 'b'},
        {"synchronous", required_argument, 0, 'y'},
        {"slots", required_argument, 0, 'n'},
        {"linger-ms", required_argument, 0, 'l'},
        {"group", required_argument, 0, 'g'},
        {"cluster", required_argument, 0, 'C'},
        {"node-id", required_argument, 0, 'N'},
        {"join", no_argument, 0, 'J'},
        {"snapshot-entries", required_argument, 0, 'S'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    static const char size_text[] = "a size in bytes with an optional K/M/G suffix (e.g. 256M)";
    memset(o, 0, sizeof *o);
    o->table = "kv";
    o->shards = 4;
    o->cache_bytes = 256ull << 20;
    o->memtable_bytes = 8ull << 20;
    o->max_value_bytes = 256u << 10;
    o->commit_interval_ms = 20;
    o->batch_size = 65536;
    o->synchronous = 1;
    o->nslots = 128;
    o->linger_ms = -1;
    o->cluster.snapshot_entries = WR_CLUSTER_SNAPSHOT_ENTRIES;
    /* The whole-number options: range and what the message asks for. */
    static const struct { int c; long long lo, hi; const char *want; } counts[] = {
        {'s', 1, KVSHM_MAX_SHARDS, "an integer 1..256"},
        {'i', 0, INT_MAX, "a whole number of milliseconds, 0 or more"},
        {'b', 1, LLONG_MAX, "an integer, 1 or more"},
        {'n', 1, UINT32_MAX, "an integer, 1 or more"},
        {'l', 0, INT_MAX, "a whole number of milliseconds, 0 or more"},
        {'N', 1, LLONG_MAX, "a node ID, 1 or more"},
        {'S', 2, UINT32_MAX / 2, "a number of entries, 2 or more"},
    };
    int c, li = 0;
    while ((c = getopt_long(argc, argv, "h", longs, &li)) != -1) {
        uint64_t v = 0;
        long long n = 0;
        const char *opt = longs[li].name;
        for (size_t k = 0; k < sizeof counts / sizeof counts[0]; k++)
            if (counts[k].c == c && parse_count(optarg, counts[k].lo, counts[k].hi, &n))
                return bad_value(opt, optarg, counts[k].want);
        switch (c) {
        case 't': o->table = optarg; break;
        case 's': o->shards = (uint32_t)n; break;
        case 'i': o->commit_interval_ms = (int)n; break;
        case 'b': o->batch_size = (uint64_t)n; break;
        case 'n': o->nslots = (uint32_t)n; break;
        case 'l': o->linger_ms = (int)n; break;
        case 'C': o->cluster.spec = optarg; break;
        case 'N': o->cluster.node_id = (uint64_t)n; break;
        case 'J': o->cluster.join = 1; break;
        case 'S': o->cluster.snapshot_entries = (unsigned)n; break;
        case 'g':
            if (parse_group(optarg, o)) return -1;
            break;
        case 'c':
            if (parse_size(optarg, &o->cache_bytes) || !o->cache_bytes)
                return bad_value(opt, optarg, size_text);
            break;
        case 'm':
            if (parse_size(optarg, &o->memtable_bytes) || o->memtable_bytes < 65536)
                return bad_value(opt, optarg, "a size of at least 64K");
            break;
        case 'v':
            if (parse_size(optarg, &v) || v > SIZE_MAX) return bad_value(opt, optarg, size_text);
            o->max_value_bytes = (size_t)v;
            break;
        case 'y':
            if (!strcasecmp(optarg, "off")) o->synchronous = 0;
            else if (!strcasecmp(optarg, "normal")) o->synchronous = 1;
            else if (!strcasecmp(optarg, "full")) o->synchronous = 2;
            else if (!strcasecmp(optarg, "extra")) o->synchronous = 3;
            else return bad_value(opt, optarg, "off, normal, full or extra");
            break;
        case 'h': usage(stdout); exit(0);
        default: goto bad;    /* getopt_long printed what was wrong */
        }
    }
    if (optind != argc - 1) goto bad;
    o->db_path = argv[optind];
    char err[512];
    if (wr_cluster_check(&o->cluster, err, sizeof err) != 0) {
        fprintf(stderr, "kvault-writer: %s (kvault-writer --help)\n", err);
        return -1;
    }
    return 0;
bad:
    usage(stderr);
    return -1;
}

/* ======================================================================
 * Signals
 * ==================================================================== */

static volatile sig_atomic_t g_stop;

/* Process-directed SIGTERM/SIGINT reach this (the loop's) thread only: the
 * checkpointer thread blocks every signal (ckpt.c), so the signal interrupts
 * the loop's futex wait (EINTR) and the loop sees g_stop at once. */
static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* ======================================================================
 * main
 * ==================================================================== */

int main(int argc, char **argv)
{
    wr_opts o;
    if (parse_args(argc, argv, &o)) return 2;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    kv_batch_process_init();   /* fails only if SQLite is up already: harmless */
    /* An arena for mimalloc, its pages kept once touched: the large blocks
     * of table operations (a column chunk being rewritten, SQLite's record
     * of it: up to tens of MB each) are carved from it and stay mapped
     * when freed, where blocks from the OS were mmap'ed and munmap'ed (or
     * decommitted) again, so that every operation faulted its pages in
     * anew. The price: up to WR_ARENA_BYTES of freed memory stays resident.
     * Measured on ColumnVault extends of 1M i64 through the writer: ~8,400
     * -> ~5,000 page faults and ~150 -> ~105 ms of writer CPU per call. A
     * failure leaves mimalloc as it was. */
    (void)mi_reserve_os_memory(WR_ARENA_BYTES, true, false);

    wr_state *ws = calloc(1, sizeof *ws);
    if (!ws) return 1;
    ws->o = o;
    ws->stop = &g_stop;
    int rc = wr_run(ws);
    free(ws);
    return rc;
}
