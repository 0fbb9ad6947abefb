/*
 * registry.c -- the registry file `<db>-kvault` and crash recovery.
 *
 * The writer holds an F_OFD_SETLK write lock on the whole registry while it
 * lives; the kernel drops it when the process dies, however it dies. The
 * file itself stays, so a new writer reads the previous writer's generation
 * and segment name from it.
 *
 * Recovery (docs/shared-mode.md, "Failure behaviour"): when the previous writer did not stop
 * cleanly and no client replayed it since (kv_attach_recover), its data
 * segment still exists. kvshm_replay_segment (shm/replay.c) commits every
 * record of it above the last committed sequence, newest per key, and
 * marks the segment CLOSED (attached clients see KVSHM_E_STALE and
 * re-attach); then its names are unlinked. This file never reads the
 * segment's layout.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "writer.h"

/* Log lines: "<ISO-8601 local time with milliseconds and UTC offset>
 * kvault-writer[pid]: message", e.g. "2026-12-07T06:30:01.123+00:00
 * kvault-writer[42]: ...", the stamp format of the launcher's lines. */
void wr_log(const char *fmt, ...)
{
    va_list ap;
    struct timespec ts;
    struct tm tm;
    char day[32], zone[8];
    clock_gettime(CLOCK_REALTIME, &ts);
    localtime_r(&ts.tv_sec, &tm);
    strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
    strftime(zone, sizeof zone, "%z", &tm);          /* +hhmm */
    fprintf(stderr, "%s.%03ld%.3s:%.2s kvault-writer[%d]: ", day, ts.tv_nsec / 1000000, zone,
            zone + 3, (int)getpid());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int wr_registry_lock(wr_state *ws)
{
    /* The database must exist for realpath; the batch backend creates it. */
    if (!realpath(ws->o.db_path, ws->db_abs)) {
        wr_log("realpath %s: %s", ws->o.db_path, strerror(errno));
        return -1;
    }
    snprintf(ws->reg_path, sizeof ws->reg_path, "%s%s", ws->db_abs, KVSHM_REGISTRY_SUFFIX);
    ws->reg_fd = open(ws->reg_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (ws->reg_fd < 0) {
        wr_log("open %s: %s", ws->reg_path, strerror(errno));
        return -1;
    }
    /* The access of this run, also on a file an earlier writer left: 0660
     * and the group with --group (a failure ends the start), else 0600
     * (best effort: a file of another owner keeps its mode). */
    if (ws->o.group_access &&
        (fchown(ws->reg_fd, (uid_t)-1, (gid_t)ws->o.gid) != 0 || fchmod(ws->reg_fd, 0660) != 0)) {
        wr_log("give %s to group %u: %s", ws->reg_path, (unsigned)ws->o.gid, strerror(errno));
        return -1;
    }
    if (!ws->o.group_access) (void)fchmod(ws->reg_fd, 0600);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(ws->reg_fd, F_OFD_SETLK, &fl) != 0) {
        wr_log("%s is locked: another writer serves %s", ws->reg_path, ws->db_abs);
        return -1;
    }
    return 0;
}

int wr_registry_write(wr_state *ws, const char *state)
{
    char buf[1024];
    kvshm_registry reg = {.generation = ws->generation, .pid = (int)getpid(),
                          .table = ws->o.table, .segment = ws->seg_name,
                          .slots = ws->slot_name, .socket = ws->sock_name, .state = state,
                          .cluster_node = ws->o.cluster.spec ? ws->o.cluster.node_id : 0};
    int n = kvshm_registry_format(&reg, buf, sizeof buf);
    if (n < 0) {
        wr_log("registry text of %s does not fit", ws->reg_path);
        return -1;
    }
    /* the new text over the old one, then cut to its length: a reader sees
     * a whole text (the old one, or the new one up to its end line) or a
     * torn one, which kvshm_registry_complete rejects (it reads again) */
    if (pwrite(ws->reg_fd, buf, (size_t)n, 0) != n || ftruncate(ws->reg_fd, n) != 0) {
        wr_log("write %s: %s", ws->reg_path, strerror(errno));
        return -1;
    }
    fsync(ws->reg_fd);
    return 0;
}

/* ---- replay ------------------------------------------------------------ */

static int replay_segment(wr_state *ws, const char *seg_name, uint64_t committed,
                          uint64_t *replayed, uint64_t *max_seq)
{
    kvshm_status ks = kvshm_replay_segment(seg_name, ws->batch, committed, replayed, max_seq);
    switch (ks) {
    case KVSHM_OK:
    case KVSHM_E_NOENT:
        return 0;
    case KVSHM_E_LAYOUT:
        wr_log("old segment %s has another layout; not replayed", seg_name);
        return 0;
    case KVSHM_E_SYS:
        wr_log("replay commit failed: %s", kv_batch_errmsg(ws->batch));
        return -1;
    default:
        wr_log("replay of %s: %s", seg_name, kvshm_strerror(ks));
        return -1;
    }
}

/* Remove the shared memory of earlier writers of this database that are
 * gone and that the registry does not name (the one it names was replayed
 * just before): a writer killed after it created its segment but before it
 * served (so before it wrote the registry) never had a client, so its
 * segment holds nothing to replay. Names end with the writer's pid; a pid
 * that is alive (perhaps reused) keeps its objects. Returns objects removed. */
static unsigned sweep_dead_segments(uint64_t db_hash)
{
    char prefix[40];
    snprintf(prefix, sizeof prefix, "kvault-%016" PRIx64 "-", db_hash);
    DIR *d = opendir("/dev/shm");
    if (!d) return 0;
    unsigned removed = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0) continue;
        char name[256];
        snprintf(name, sizeof name, "%s", e->d_name);
        size_t n = strlen(name);
        if (n > 6 && strcmp(name + n - 6, "-slots") == 0) name[n - 6] = 0;
        const char *dash = strrchr(name, '-');
        char *end = NULL;
        long pid = dash ? strtol(dash + 1, &end, 10) : 0;
        if (pid <= 0 || !end || *end || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char path[260];
        snprintf(path, sizeof path, "/%s", e->d_name);
        if (shm_unlink(path) == 0) removed++;
    }
    closedir(d);
    return removed;
}

/* How long the start barrier keeps trying on a busy file, milliseconds. */
#define BARRIER_WAIT_MS 60000

int wr_recover(wr_state *ws)
{
    char text[2048] = "", gen[32], seg[96] = "", slots[96] = "", state[32] = "";
    ssize_t n = pread(ws->reg_fd, text, sizeof text - 1, 0);
    if (n > 0) text[n] = 0;
    uint64_t old_gen = 0;
    if (!kvshm_registry_field(text, "generation", gen, sizeof gen))
        old_gen = strtoull(gen, NULL, 10);
    kvshm_registry_field(text, "segment", seg, sizeof seg);
    kvshm_registry_field(text, "slots", slots, sizeof slots);
    kvshm_registry_field(text, "state", state, sizeof state);
    ws->generation = old_gen + 1;
    /* A cluster node's file is written by that node's writer alone: a
     * single-node writer (kvault-launch serve without --cluster, or one a
     * client spawned) would add writes the cluster does not have. */
    uint64_t node = kvshm_registry_cluster_node(text);
    if (node && !ws->o.cluster.spec) {
        wr_log("%s is the copy of cluster node %" PRIu64 ": start this writer with --cluster "
               "and --node-id %" PRIu64 ", or delete %s to serve the file alone", ws->db_abs,
               node, node, ws->reg_path);
        return -1;
    }

    uint64_t committed = 0;
    if (kv_batch_last_seq(ws->batch, &committed) != KV_OK) {
        wr_log("cannot read the committed sequence: %s", kv_batch_errmsg(ws->batch));
        return -1;
    }
    uint64_t top = committed, replayed = 0;
    /* In a cluster the segment is not replayed: its applied records that the
     * file lacks are either in the Raft log (applied again from there:
     * cluster.c) or were never committed by the cluster, and must not reach
     * this node's file alone. */
    if (seg[0] && ws->o.cluster.spec) {
        if (strcmp(state, "stopped") != 0)
            wr_log("cluster: segment %s of the previous writer not replayed (the Raft log is)",
               seg);
    } else if (seg[0]) {
        if (replay_segment(ws, seg, committed, &replayed, &top) != 0) {
            wr_log("replay of %s failed", seg);
            return -1;
        }
        if (replayed)
            wr_log("replayed %" PRIu64 " records of generation %" PRIu64
                   " (sequence %" PRIu64 " -> %" PRIu64 ")", replayed, old_gen, committed, top);
    }
    if (seg[0]) kvshm_unlink(seg, slots[0] ? slots : NULL);
    ws->stat_replayed = replayed;
    /* Start barrier (docs/shared-mode.md, "Objects opened before the
     * writer"): the registry lock is held, so an embedded KVault in "auto"
     * mode refuses any commit that checks from now on. One write
     * transaction that changes the file (the committed sequence, one past
     * the last) waits for every embedded transaction that checked before
     * the lock and changes SQLite's data version, so every embedded handle
     * checks again at its next commit. Everything this writer reads from
     * SQLite later includes the commits that were let through. The
     * transaction stores the committed sequence again: INSERT OR REPLACE
     * deletes the row and inserts it under a new rowid, so the file
     * changes although the value does not. */
    /* An embedded process that writes without pause can keep SQLite's
     * write lock past one busy timeout (its commits are let through until
     * this writer is ready): the barrier keeps trying, up to
     * BARRIER_WAIT_MS, rather than leave the file without a writer. */
    kv_status bst;
    uint64_t barrier_deadline = wr_now_ms() + BARRIER_WAIT_MS;
    for (;;) {
        bst = kv_batch_begin(ws->batch);
        if (bst == KV_OK) bst = kv_batch_commit(ws->batch, top);
        if (bst != KV_BUSY || wr_now_ms() >= barrier_deadline) break;
        kv_batch_rollback(ws->batch);
        usleep(1000);
    }
    if (bst != KV_OK) {
        wr_log("start barrier: %s", kv_batch_errmsg(ws->batch));
        return -1;
    }
    ws->seq = ws->committed = top;

    /* Names of this incarnation: xxh3 of the database path + generation. */
    uint64_t hsh = XXH3_64bits(ws->db_abs, strlen(ws->db_abs));
    /* The pid keeps names unique even for a database that was deleted and
     * re-created while an old writer of it still runs. */
    int pid = (int)getpid();
    snprintf(ws->seg_name, sizeof ws->seg_name, "/kvault-%016" PRIx64 "-%" PRIu64 "-%d", hsh,
             ws->generation, pid);
    snprintf(ws->slot_name, sizeof ws->slot_name, "/kvault-%016" PRIx64 "-%" PRIu64 "-%d-slots",
             hsh, ws->generation, pid);
    snprintf(ws->sock_name, sizeof ws->sock_name, "kvault-%016" PRIx64 "-%" PRIu64 "-%d", hsh,
             ws->generation, pid);
    kvshm_unlink(ws->seg_name, ws->slot_name);   /* leftovers of a failed start */
    unsigned swept = sweep_dead_segments(hsh);
    if (swept) wr_log("removed %u shared-memory objects of dead writers of this database", swept);
    return 0;
}
