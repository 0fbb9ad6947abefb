/*
 * cluster.c -- cluster mode of kvault-writer on libraft (cluster.h,
 * docs/replication.md).
 *
 * Consensus, elections and the replicated log are libraft's (Debian's
 * libraft 0.15, the Raft library dqlite is built on; its libuv disk I/O and
 * TCP transport, raft/uv.h). This file is the state machine and the glue:
 *
 * Entries. The unit of replication is one batch of the writer's commit
 * pipeline (loop.c): the newest version of every key written with a
 * sequence in (previous batch, last_seq], as the leader's INSERT phase walks
 * its frozen memtables. While inserting them into its open transaction, the
 * leader also encodes each record (wr_cluster_batch_add); the encoding is
 * proposed as one Raft entry (wr_cluster_batch_propose -> raft_apply), and
 * the transaction is committed only once the cluster committed the entry
 * (wr_cluster_batch_wait; loop.c, cm_commit). So every node's file holds
 * committed entries only, and a restarted node picks up the log where its
 * file ends.
 * Encoding, little-endian:
 *     header  u32 magic "KVR1", u32 records, u64 nonce, u64 last_seq
 *     record  u8 tombstone, u32 klen, u32 vlen, u64 seq, key, value
 * nonce: random per writer process, so a node knows its own entries.
 *
 * State machine (fsm_apply), on every node once an entry is committed:
 *   - its own entries (this process's nonce) are in its memtables already:
 *     nothing to do;
 *   - entries whose last_seq is below the sequence this node's file held
 *     when the writer started are in the file already (after a restart the
 *     log is applied again from the last snapshot on);
 *   - any other entry: its records go through the writer's apply path
 *     (wr_apply_write, the one client writes take) with their own
 *     sequences, so readers attached to this node see them at once, and the
 *     loop's commit pipeline commits them to this node's file.
 *
 * Deposition. A leader that loses the lead while it holds writes the cluster
 * has not committed (applied to its memtables, read by its clients, perhaps
 * proposed) cannot know yet whether the new leader keeps them. It exits
 * (WR_EXIT_DEPOSED) and its supervisor starts it again: the new process
 * starts from the file and the Raft log, and does not replay its segment.
 * Undoing applied writes in place would also be possible, but readers of the
 * segment already saw them; a restart takes under a second.
 *
 * Roles. Only a leader that has applied every entry of earlier terms takes
 * client writes: on election it appends a barrier (raft_barrier); when the
 * barrier is applied it commits everything pending locally (so its next
 * batch holds only its own writes) and lifts the segment's write refusal.
 * Every other node publishes a refusal naming the leader
 * (kvshm_writer_set_refusal), which clients report when they write.
 *
 * Snapshots (fsm_snapshot, fsm_restore): an image of the whole database
 * file (SQLite's backup API, kv_batch_snapshot), taken every
 * --snapshot-entries entries; libraft then drops the log before it. A node
 * whose log ends before the leader's first entry (a new node, or one down
 * for long) gets the snapshot and replaces its file with it.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#include "cluster.h"
#include "kv_assert.h"
#include "writer.h"

#define ENTRY_MAGIC 0x3152564bu   /* "KVR1" */
#define ENTRY_HDR 24u
#define SNAP_MAGIC 0x3153564bu    /* "KVS1" */
#define SNAP_HDR 24u
#define REC_HDR 17u
/* Raft timing, milliseconds: heartbeats every 100 ms, elections after
 * 500-1000 ms without one (libraft randomizes between T and 2T), so a new
 * leader is in place about a second after the old one died. */
/* Milliseconds without an answer after which the leader sends a snapshot
 * again (enough for an image of hundreds of megabytes over a LAN). */
#define SNAPSHOT_RESEND_MS 5000u
#define ELECTION_MS 500u
#define HEARTBEAT_MS 100u
/* libuv runs at most this often from the loop's passes, microseconds. */
#define UV_EVERY_US 100u
/* The idle wait's bound in cluster mode, milliseconds: Raft's sockets are
 * not among the doorbell's wake-ups. */
#define WAIT_MAX_MS 1
/* Attempts to apply a replicated record while the memtable is full. */
#define APPLY_ATTEMPTS 100

typedef struct node {
    uint64_t id;
    char addr[256];   /* HOST:PORT */
} node;

struct wr_cluster {
    uv_loop_t loop;
    struct raft_uv_transport transport;
    struct raft_io io;
    struct raft_fsm fsm;
    struct raft raft;
    int loop_ok, transport_ok, io_ok, raft_ok;
    int closed;                    /* raft_close's callback ran */
    node nodes[WR_CLUSTER_MAX_NODES];
    unsigned nnodes;
    const node *self;
    char dir[4300];                /* <db>.raft */
    uint64_t nonce;
    uint64_t start_committed;      /* the file's committed sequence at start */
    /* role */
    int role;                      /* raft_state() at the last pass */
    raft_id leader_seen;           /* leader named by the published refusal */
    int ready;                     /* leader with its barrier applied: takes writes */
    char refusal[KVSHM_REFUSE_MSG_MAX]; /* the published refusal ("" when ready) */
    int barrier_busy;
    struct raft_barrier barrier;
    uint64_t last_uv_us;
    /* the batch being encoded (raft_malloc'ed: handed to raft_apply) */
    uint8_t *buf;
    size_t len, cap;
    uint32_t nrec;
    int collecting;                /* this batch is the leader's own */
    uint64_t next_prop;            /* number of the last proposal */
    uint64_t committed_prop;       /* highest proposal the cluster committed */
    int deposed;                   /* lost the lead holding uncommitted writes: exit */
    int started;                   /* raft_start returned */
    int closing;                   /* wr_cluster_stop began */
    int restore_failed;            /* a snapshot could not be restored at start */
    wr_state *ws;
    int oom;
    /* the membership change in progress (wr_cluster_change) */
    struct raft_change change;
    int change_busy;
    raft_id change_id;
    char change_what[64];
    char change_error[160];        /* how the last change failed after it started; "" */
    /* figures */
    uint64_t snapshots, restores;
    uint64_t proposed, propose_failed, applied_entries, applied_records, skipped_entries;
    uint64_t inflight;
};

/* ---- --cluster ------------------------------------------------------------ */

/* Parse ID@HOST:PORT,... into nodes. 0, or -1 with err. */
static int parse_nodes(const char *spec, node *nodes, unsigned *n, char *err, size_t errlen)
{
    *n = 0;
    const char *p = spec;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char item[300];
        if (len == 0 || len >= sizeof item) {
            snprintf(err, errlen, "--cluster: expected ID@HOST:PORT,..., got '%s'", spec);
            return -1;
        }
        memcpy(item, p, len);
        item[len] = 0;
        char *at = strchr(item, '@'), *colon = strrchr(item, ':'), *e;
        errno = 0;
        unsigned long long id = at ? strtoull(item, &e, 10) : 0;
        long port = colon && colon > at ? strtol(colon + 1, &e, 10) : 0;
        if (!at || at == item || id == 0 || errno || !colon || colon == at + 1 || *e ||
            port < 1 || port > 65535 || strchr(item, ' ')) {
            snprintf(err, errlen, "--cluster: '%s' is not ID@HOST:PORT (ID a whole number"
                     " >= 1, PORT 1..65535)", item);
            return -1;
        }
        if (*n == WR_CLUSTER_MAX_NODES) {
            snprintf(err, errlen, "--cluster: more than %d nodes", WR_CLUSTER_MAX_NODES);
            return -1;
        }
        for (unsigned i = 0; i < *n; i++)
            if (nodes[i].id == id) {
                snprintf(err, errlen, "--cluster: node id %llu given twice", id);
                return -1;
            }
        nodes[*n].id = id;
        snprintf(nodes[*n].addr, sizeof nodes[*n].addr, "%s", at + 1);
        (*n)++;
        p += len + (end != NULL);
    }
    if (*n == 0) {
        snprintf(err, errlen, "--cluster: no node given");
        return -1;
    }
    return 0;
}

int wr_cluster_check(const wr_cluster_opts *o, char *err, size_t errlen)
{
    node nodes[WR_CLUSTER_MAX_NODES];
    unsigned n;
    if (!o->spec) {
        if (o->node_id || o->join) {
            snprintf(err, errlen, "%s needs --cluster", o->join ? "--join" : "--node-id");
            return -1;
        }
        return 0;
    }
    if (parse_nodes(o->spec, nodes, &n, err, errlen)) return -1;
    for (unsigned i = 0; i < n; i++)
        if (nodes[i].id == o->node_id) return 0;
    snprintf(err, errlen, "--node-id %" PRIu64 " is not among the nodes of --cluster '%s'",
             o->node_id, o->spec);
    return -1;
}

/* ---- encoding ------------------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

void wr_cluster_batch_reset(wr_state *ws)
{
    wr_cluster *cl = ws->cluster;
    if (!cl) return;
    cl->len = ENTRY_HDR;
    cl->nrec = 0;
    cl->oom = 0;
    /* a batch the cluster committed already and inserted again after a
     * failed local commit (loop.c, cm_restart) is not proposed again */
    cl->collecting = cl->ready && !ws->cm_prop;
}

int wr_cluster_batch_add(wr_state *ws, const void *key, size_t klen, const void *val,
                         size_t vlen, uint64_t seq, int tomb)
{
    wr_cluster *cl = ws->cluster;
    if (!cl || !cl->collecting || cl->oom) return 0;
    KV_ASSERT(klen <= UINT32_MAX && vlen <= UINT32_MAX);
    size_t need = cl->len + REC_HDR + klen + vlen;
    if (need > cl->cap || !cl->buf) {
        size_t nc = cl->cap ? cl->cap : 65536;
        while (nc < need) nc *= 2;
        uint8_t *nb = raft_realloc(cl->buf, nc);
        if (!nb) {
            cl->oom = 1;
            return -1;
        }
        cl->buf = nb;
        cl->cap = nc;
    }
    uint8_t *p = cl->buf + cl->len;
    p[0] = (uint8_t)(tomb != 0);
    put32(p + 1, (uint32_t)klen);
    put32(p + 5, tomb ? 0 : (uint32_t)vlen);
    put64(p + 9, seq);
    memcpy(p + REC_HDR, key, klen);
    if (!tomb && vlen) memcpy(p + REC_HDR + klen, val, vlen);
    cl->len += REC_HDR + klen + (tomb ? 0 : vlen);
    cl->nrec++;
    return 0;
}

/* A proposal with its number (raft_apply's request). */
typedef struct proposal {
    struct raft_apply req;
    uint64_t no;
} proposal;

/* This node must not go on: it lost the lead holding writes the cluster has
 * not committed, or dropped a client's write (cluster.h). */
static void depose(wr_cluster *cl, const char *why)
{
    if (!cl->deposed)
        wr_log("cluster: node %" PRIu64 " is deposed (%s); exiting for a restart from the"
               " file and the Raft log", cl->self->id, why);
    cl->deposed = 1;
}

/* Entries commit in log order, so proposals complete in number order; a
 * proposal fails when this node stops leading before the entry commits. */
static void apply_done(struct raft_apply *req, int status, void *result)
{
    proposal *p = (proposal *)req;
    wr_cluster *cl = req->data;
    (void)result;
    cl->inflight--;
    if (status != 0) {
        cl->propose_failed++;
        wr_log("cluster: proposal %" PRIu64 " was not committed by the cluster: %s", p->no,
               raft_strerror(status));
        depose(cl, raft_strerror(status));
    } else if (p->no > cl->committed_prop) {
        cl->committed_prop = p->no;
    }
    free(p);
}

uint64_t wr_cluster_batch_propose(wr_state *ws, uint64_t last_seq)
{
    wr_cluster *cl = ws->cluster;
    if (!cl || !cl->collecting) return 0;
    cl->collecting = 0;
    if (cl->oom) {
        cl->propose_failed++;
        wr_log("cluster: batch ending at sequence %" PRIu64 " not replicated: out of memory",
               last_seq);
        depose(cl, "out of memory");
        return UINT64_MAX;
    }
    if (cl->nrec == 0) return 0;
    /* Every entry's length is a multiple of 8: libraft's uv log pads
     * entries to 8 bytes on disk, and entries of other lengths came back
     * shifted by a few bytes when a restarted node loaded its log (seen
     * with Debian's libraft 0.15: tests/python/test_cluster.py,
     * test_restarted_nodes_catch_up). The zero padding is ignored: decoding
     * stops after the header's record count. */
    size_t padded = (cl->len + 7) & ~(size_t)7;
    memset(cl->buf + cl->len, 0, padded - cl->len);   /* cap is a power of two >= 64 KiB */
    cl->len = padded;
    put32(cl->buf, ENTRY_MAGIC);
    put32(cl->buf + 4, cl->nrec);
    put64(cl->buf + 8, cl->nonce);
    put64(cl->buf + 16, last_seq);
    /* raft keeps the buffer in its in-memory log: hand it over at its
     * length, not at the capacity it grew to (64 KiB at least) */
    if (cl->cap > cl->len) {
        uint8_t *fit = raft_realloc(cl->buf, cl->len);
        if (fit) {
            cl->buf = fit;
            cl->cap = cl->len;
        }
    }
    proposal *p = malloc(sizeof *p);
    struct raft_buffer b = {.base = cl->buf, .len = cl->len};
    int rc = p ? 0 : RAFT_NOMEM;
    if (p) {
        p->req.data = cl;
        p->no = cl->next_prop + 1;
        rc = raft_apply(&cl->raft, &p->req, &b, 1, apply_done);
    }
    if (rc != 0) {
        free(p);
        cl->propose_failed++;
        wr_log("cluster: batch ending at sequence %" PRIu64 " (%u records) not proposed: %s",
               last_seq, cl->nrec, raft_strerror(rc));
        depose(cl, raft_strerror(rc));
        return UINT64_MAX;   /* the buffer stays ours */
    }
    cl->next_prop = p->no;
    cl->proposed++;
    cl->inflight++;
    cl->buf = NULL;   /* raft's now */
    cl->cap = 0;
    cl->len = ENTRY_HDR;
    cl->nrec = 0;
    return cl->next_prop;
}

static void follow_role(wr_state *ws);

int wr_cluster_batch_wait(wr_state *ws, uint64_t prop, int block)
{
    wr_cluster *cl = ws->cluster;
    KV_ASSERT(cl != NULL && prop > 0 && prop <= cl->next_prop);
    for (;;) {
        if (cl->committed_prop >= prop) return 1;
        if (cl->deposed) return -1;
        if (!block) return 0;
        /* Raft's heartbeat timer wakes this at least every HEARTBEAT_MS */
        uv_run(&cl->loop, UV_RUN_ONCE);
        follow_role(ws);
    }
}

int wr_cluster_deposed(const wr_state *ws)
{
    return ws->cluster && ws->cluster->deposed;
}

void wr_cluster_write_dropped(wr_state *ws)
{
    if (ws->cluster) depose(ws->cluster, "a client's write came in while it does not lead");
}

/* ---- state machine ---------------------------------------------------------- */

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    wr_state *ws = fsm->data;
    wr_cluster *cl = ws->cluster;
    *result = NULL;
    const uint8_t *p = buf->base, *end = p + buf->len;
    if (buf->len < ENTRY_HDR || get32(p) != ENTRY_MAGIC) {
        wr_log("cluster: log entry of %zu bytes is not a batch: skipped", buf->len);
        return 0;
    }
    uint32_t n = get32(p + 4);
    uint64_t nonce = get64(p + 8), last_seq = get64(p + 16);
    /* (a deposed node exits: the entries are applied again after its restart) */
    if (nonce == cl->nonce || last_seq < cl->start_committed || cl->deposed) {
        cl->skipped_entries++;
        return 0;
    }
    /* a partly frozen batch takes no records (loop.c, cm_freeze) */
    if (ws->phase == WR_FREEZE) wr_commit_finish(ws);
    /* The whole entry counts as applied before its records are: a commit
     * that a full memtable forces halfway through (wr_commit_room) then
     * records last_seq as committed, and the entry is applied again after a
     * restart (start_committed) instead of being taken as committed while
     * its remaining records were only in memory. */
    if (ws->seq < last_seq) ws->seq = last_seq;
    p += ENTRY_HDR;
    for (uint32_t i = 0; i < n; i++) {
        if ((size_t)(end - p) < REC_HDR) goto bad;
        int tomb = p[0] != 0;
        uint32_t klen = get32(p + 1), vlen = get32(p + 5);
        uint64_t seq = get64(p + 9);
        if ((size_t)(end - p) - REC_HDR < (uint64_t)klen + vlen || seq > last_seq) goto bad;
        const uint8_t *key = p + REC_HDR;
        int rc = 1;
        for (int a = 0; rc == 1 && a < APPLY_ATTEMPTS; a++)
            rc = wr_apply_write(ws, key, klen, tomb ? NULL : key + klen, vlen, tomb, seq);
        if (rc != 0) kv_panic("cluster: a replicated record (sequence %" PRIu64 ") could not be"
                              " applied: %s", seq, rc > 0 ? "memtable stays full" : "rejected");
        p += REC_HDR + klen + vlen;
    }
    kvshm_writer_publish_seq(ws->w, ws->seq, 0);
    cl->applied_entries++;
    cl->applied_records += n;
    return 0;
bad:
    kv_panic("cluster: malformed batch entry (sequence %" PRIu64 ", %u records)", last_seq, n);
}

/* ---- snapshots ---------------------------------------------------------------- */

/* Make the file hold exactly what raft counts as applied: on a node that
 * does not lead, commit every applied record (the records of applied
 * entries; nothing else is applied there); on the leader, commit the batch
 * whose entry the cluster committed and that waits for its local commit
 * (its client writes not proposed yet stay out), in whatever phase it is
 * (a failed local commit inserts it again). Never waits for the cluster
 * (this runs inside a Raft callback; when that callback runs inside a
 * commit step's wait for the cluster, the step finds its batch committed:
 * loop.c, cm_commit). 0, or -1 when a commit failed (logged). */
static int commit_applied(wr_state *ws)
{
    wr_cluster *cl = ws->cluster;
    if (!cl->ready) return wr_commit_all(ws);
    if (ws->cm_prop && cl->committed_prop >= ws->cm_prop) {
        if (wr_commit_finish(ws) != 0) return -1;
        if (ws->cm_prop) return -1;   /* still not in the file */
    }
    return 0;
}

/* Snapshot: the header (SNAP_HDR bytes: u32 magic "KVS1", u32 0, u64 the
 * file's committed sequence, u64 image bytes), then the database image
 * (kv_batch_snapshot), zero-padded to a multiple of 8. Taken by libraft every
 * o.snapshot_entries entries (raft_set_snapshot_threshold); after it, libraft
 * drops the log before it but for the trailing entries. Runs on the loop
 * thread and stalls it for the copy of the whole database. */
static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n)
{
    wr_state *ws = fsm->data;
    wr_cluster *cl = ws->cluster;
    /* RAFT_BUSY: libraft takes the snapshot again after a later entry
     * (any other error would make a follower unavailable) */
    if (commit_applied(ws) != 0) return RAFT_BUSY;
    void *img;
    size_t len;
    if (kv_batch_snapshot(ws->batch, &img, &len) != KV_OK) {
        wr_log("cluster: snapshot: %s", kv_batch_errmsg(ws->batch));
        return RAFT_BUSY;
    }
    size_t total = (SNAP_HDR + len + 7) & ~(size_t)7;
    uint8_t *p = raft_malloc(total);
    struct raft_buffer *b = raft_malloc(sizeof *b);
    if (!p || !b) {
        raft_free(p);
        raft_free(b);
        free(img);
        return RAFT_BUSY;
    }
    put32(p, SNAP_MAGIC);
    put32(p + 4, 0);
    put64(p + 8, ws->committed);
    put64(p + 16, len);
    memcpy(p + SNAP_HDR, img, len);
    memset(p + SNAP_HDR + len, 0, total - SNAP_HDR - len);
    free(img);
    b->base = p;
    b->len = total;
    *bufs = b;
    *n = 1;
    cl->snapshots++;
    wr_log("cluster: snapshot at sequence %" PRIu64 " (%zu bytes)", ws->committed, len);
    return 0;
}

/* Install a snapshot: at start (libraft loads the last one it stored) or
 * from the leader (this node's log ends before the leader's first entry).
 * A file that holds the snapshot's sequence already is kept (the entries
 * after it are applied, those it holds skipped). Otherwise the file's
 * contents are replaced by the image (kv_batch_restore); at start nothing
 * is cached yet, later the node is deposed so that it starts again from the
 * new file with an empty segment. Takes ownership of buf->base. */
static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    wr_state *ws = fsm->data;
    wr_cluster *cl = ws->cluster;
    const uint8_t *p = buf->base;
    if (buf->len < SNAP_HDR || get32(p) != SNAP_MAGIC || get64(p + 16) > buf->len - SNAP_HDR) {
        wr_log("cluster: snapshot of %zu bytes is not this writer's", buf->len);
        return RAFT_MALFORMED;
    }
    uint64_t seq = get64(p + 8), len = get64(p + 16);
    if (seq <= ws->committed) {
        wr_log("cluster: snapshot at sequence %" PRIu64 " kept out: the file holds %" PRIu64,
               seq, ws->committed);
        raft_free(buf->base);
        return 0;
    }
    if (ws->cm_open) {   /* records older than the snapshot: dropped with the restart */
        kv_batch_rollback(ws->batch);
        ws->cm_open = 0;
    }
    kv_status st = kv_batch_restore(ws->batch, p + SNAP_HDR, (size_t)len);
    raft_free(buf->base);
    if (st != KV_OK) {
        wr_log("cluster: restore of the snapshot at sequence %" PRIu64 ": %s", seq,
               kv_batch_errmsg(ws->batch));
        if (!cl->started) cl->restore_failed = 1;
        else depose(cl, "a snapshot could not be restored");
        return 0;   /* libraft keeps it: tried again at the restart */
    }
    wr_log("cluster: the file was replaced by the snapshot at sequence %" PRIu64
           " (it held %" PRIu64 ")", seq, ws->committed);
    cl->restores++;
    if (cl->started) {
        depose(cl, "installed a snapshot");
        return 0;
    }
    ws->seq = ws->committed = cl->start_committed = seq;
    kvshm_writer_publish_seq(ws->w, ws->seq, ws->committed);
    return 0;
}

/* ---- roles -------------------------------------------------------------- */

static const char *role_name(int state)
{
    switch (state) {
    case RAFT_FOLLOWER: return "follower";
    case RAFT_CANDIDATE: return "candidate";
    case RAFT_LEADER: return "leader";
    default: return "unavailable";
    }
}

static void barrier_done(struct raft_barrier *req, int status)
{
    wr_state *ws = req->data;
    wr_cluster *cl = ws->cluster;
    cl->barrier_busy = 0;
    if (status != 0 || raft_state(&cl->raft) != RAFT_LEADER) return;
    /* Everything of earlier terms is applied. Commit what is pending (the
     * records of other nodes' entries), so that the batches this node
     * proposes from now on hold only its own writes. */
    if (wr_commit_all(ws) != 0) return;   /* retried at the next pass */
    cl->ready = 1;
    cl->refusal[0] = 0;
    kvshm_writer_set_refusal(ws->w, NULL);
    wr_log("cluster: node %" PRIu64 " leads (term %llu): taking writes", cl->self->id,
           (unsigned long long)cl->raft.current_term);
}

/* Publish the refusal for a node that does not take writes. */
static void refuse(wr_state *ws, const char *why)
{
    snprintf(ws->cluster->refusal, sizeof ws->cluster->refusal, "%s", why);
    kvshm_writer_set_refusal(ws->w, why);
}

static void follow_role(wr_state *ws)
{
    wr_cluster *cl = ws->cluster;
    int state = raft_state(&cl->raft);
    /* libraft stops a node it hit an error in (a disk write of its log):
     * nothing would apply entries any more; a restart may cure it */
    if (state == RAFT_UNAVAILABLE && cl->started && !cl->closing)
        depose(cl, "raft stopped this node after an error");
    if (state == RAFT_LEADER) {
        if (cl->role != RAFT_LEADER) {
            cl->ready = 0;
            cl->leader_seen = cl->self->id;
            refuse(ws, "not the leader yet; this node was just elected and applies the log");
        }
        if (!cl->ready && !cl->barrier_busy) {
            cl->barrier.data = ws;
            if (raft_barrier(&cl->raft, &cl->barrier, barrier_done) == 0) cl->barrier_busy = 1;
        }
    } else {
        raft_id id = 0;
        const char *addr = NULL;
        raft_leader(&cl->raft, &id, &addr);
        if (cl->ready || cl->role != state || id != cl->leader_seen) {
            char msg[KVSHM_REFUSE_MSG_MAX];
            if (id && addr)
                snprintf(msg, sizeof msg, "not the leader; leader is %llu@%s",
                         (unsigned long long)id, addr);
            else
                snprintf(msg, sizeof msg, "not the leader; no leader is known yet (election"
                         " in progress)");
            refuse(ws, msg);
            if (cl->ready) {
                wr_log("cluster: node %" PRIu64 " lost the lead", cl->self->id);
                /* writes applied as leader that no committed entry holds */
                if (cl->inflight || ws->pending || ws->cm_prop ||
                    (ws->phase != WR_IDLE && ws->phase != WR_FOLD))
                    depose(cl, "lost the lead");
            }
            cl->ready = 0;
            cl->leader_seen = id;
        }
    }
    cl->role = state;
}

/* ---- loop integration ------------------------------------------------------ */

void wr_cluster_pass(wr_state *ws)
{
    wr_cluster *cl = ws->cluster;
    if (!cl) return;
    uint64_t now = wr_now_us();
    if (now - cl->last_uv_us < UV_EVERY_US) return;
    cl->last_uv_us = now;
    uv_run(&cl->loop, UV_RUN_NOWAIT);
    follow_role(ws);
}

int wr_cluster_wait_ms(const wr_state *ws, int timeout_ms)
{
    if (!ws->cluster) return timeout_ms;
    return timeout_ms < 0 || timeout_ms > WAIT_MAX_MS ? WAIT_MAX_MS : timeout_ms;
}

int wr_cluster_io_ready(const wr_state *ws, int timeout_ms)
{
    if (!ws->cluster) return 0;
    struct pollfd pfd = {.fd = uv_backend_fd(&ws->cluster->loop), .events = POLLIN};
    return poll(&pfd, 1, timeout_ms) > 0;
}

int wr_cluster_accepts_writes(const wr_state *ws)
{
    return !ws->cluster || ws->cluster->ready;
}

const char *wr_cluster_refusal(const wr_state *ws)
{
    return ws->cluster && !ws->cluster->ready ? ws->cluster->refusal : "";
}

/* ---- membership ------------------------------------------------------------ */

static const char *member_role(int role)
{
    switch (role) {
    case RAFT_VOTER: return "voter";
    case RAFT_STANDBY: return "standby";
    case RAFT_SPARE: return "spare";
    default: return "unknown";
    }
}

static void change_done(struct raft_change *req, int status)
{
    wr_cluster *cl = req->data;
    cl->change_busy = 0;
    if (status != 0) {
        snprintf(cl->change_error, sizeof cl->change_error, "%s of node %llu failed: %s",
                 cl->change_what, (unsigned long long)cl->change_id, raft_strerror(status));
        wr_log("cluster: %s", cl->change_error);
        return;
    }
    wr_log("cluster: %s of node %llu committed", cl->change_what,
           (unsigned long long)cl->change_id);
    if (strcmp(cl->change_what, "add") != 0) return;
    /* the spare gets the log, then votes (raft_assign catches it up first) */
    snprintf(cl->change_what, sizeof cl->change_what, "promotion to voter");
    cl->change.data = cl;
    int rc = raft_assign(&cl->raft, &cl->change, cl->change_id, RAFT_VOTER, change_done);
    if (rc != 0) {
        snprintf(cl->change_error, sizeof cl->change_error, "promotion of node %llu to voter"
                 " refused: %s", (unsigned long long)cl->change_id, raft_strerror(rc));
        wr_log("cluster: %s", cl->change_error);
    } else {
        cl->change_busy = 1;
    }
}

kv_status wr_cluster_change(wr_state *ws, const char *cmd, char *msg, size_t msglen)
{
    wr_cluster *cl = ws->cluster;
    if (!cl) {
        snprintf(msg, msglen, "cluster: this writer is not a cluster node (no --cluster)");
        return KV_UNSUPPORTED;
    }
    if (!cl->ready) {
        snprintf(msg, msglen, "cluster: %s", cl->refusal);
        return KV_UNSUPPORTED;
    }
    if (cl->change_busy) {
        snprintf(msg, msglen, "cluster: the %s of node %llu is still in progress",
                 cl->change_what, (unsigned long long)cl->change_id);
        return KV_INVALID;
    }
    int rc;
    cl->change.data = cl;
    cl->change_error[0] = 0;
    if (!strncmp(cmd, "add ", 4)) {
        node n[WR_CLUSTER_MAX_NODES];
        unsigned nn;
        char err[400];
        if (parse_nodes(cmd + 4, n, &nn, err, sizeof err) || nn != 1) {
            snprintf(msg, msglen, "cluster add: expected one ID@HOST:PORT, got '%s'", cmd + 4);
            return KV_INVALID;
        }
        cl->change_id = n[0].id;
        /* a node already added (a spare whose promotion failed): promote */
        const struct raft_server *known = NULL;
        for (unsigned i = 0; i < cl->raft.configuration.n; i++)
            if (cl->raft.configuration.servers[i].id == n[0].id)
                known = &cl->raft.configuration.servers[i];
        if (known && known->role != RAFT_VOTER) {
            snprintf(cl->change_what, sizeof cl->change_what, "promotion to voter");
            rc = raft_assign(&cl->raft, &cl->change, n[0].id, RAFT_VOTER, change_done);
        } else {
            snprintf(cl->change_what, sizeof cl->change_what, "add");
            rc = raft_add(&cl->raft, &cl->change, n[0].id, n[0].addr, change_done);
        }
    } else if (!strncmp(cmd, "remove ", 7)) {
        char *end;
        errno = 0;
        unsigned long long id = strtoull(cmd + 7, &end, 10);
        if (errno || id == 0 || *end || end == cmd + 7) {
            snprintf(msg, msglen, "cluster remove: expected a node ID, got '%s'", cmd + 7);
            return KV_INVALID;
        }
        cl->change_id = id;
        snprintf(cl->change_what, sizeof cl->change_what, "removal");
        rc = raft_remove(&cl->raft, &cl->change, id, change_done);
    } else {
        snprintf(msg, msglen, "cluster: unknown request '%s' (add ID@HOST:PORT, remove ID)", cmd);
        return KV_INVALID;
    }
    if (rc != 0) {
        snprintf(msg, msglen, "cluster: %s of node %llu refused: %s", cl->change_what,
                 (unsigned long long)cl->change_id, raft_strerror(rc));
        return KV_INVALID;
    }
    cl->change_busy = 1;
    wr_log("cluster: %s of node %llu started", cl->change_what,
           (unsigned long long)cl->change_id);
    snprintf(msg, msglen, "%s of node %llu started", cl->change_what,
             (unsigned long long)cl->change_id);
    return KV_OK;
}

size_t wr_cluster_status(wr_state *ws, char *buf, size_t cap)
{
    wr_cluster *cl = ws->cluster;
    if (!cl || cap == 0) return 0;
    struct raft *r = &cl->raft;
    raft_id lid = 0;
    const char *laddr = NULL;
    raft_leader(r, &lid, &laddr);
    int state = raft_state(r);
    /* lag: a follower's committed entries not applied yet; the leader's
     * largest distance of a voter's replicated index from its last entry */
    unsigned long long last = raft_last_index(r), lag = r->commit_index - r->last_applied;
    char peers[512] = "";
    size_t pn = 0;
    if (state == RAFT_LEADER && r->leader_state.progress) {
        lag = 0;
        for (unsigned i = 0; i < r->configuration.n; i++) {
            const struct raft_server *s = &r->configuration.servers[i];
            unsigned long long m = s->id == r->id ? last : r->leader_state.progress[i].match_index;
            if (last - m > lag) lag = last - m;
            int k = snprintf(peers + pn, sizeof peers - pn, "%s%llu:%llu", pn ? "," : "",
                             (unsigned long long)s->id, m);
            if (k > 0 && (size_t)k < sizeof peers - pn) pn += (size_t)k;
        }
    }
    char members[1024] = "";
    size_t mn = 0;
    for (unsigned i = 0; i < r->configuration.n; i++) {
        const struct raft_server *s = &r->configuration.servers[i];
        int k = snprintf(members + mn, sizeof members - mn, "%s%llu@%s:%s", mn ? "," : "",
                         (unsigned long long)s->id, s->address, member_role(s->role));
        if (k > 0 && (size_t)k < sizeof members - mn) mn += (size_t)k;
    }
    char leader[300];
    if (lid && laddr) snprintf(leader, sizeof leader, "%llu@%s", (unsigned long long)lid, laddr);
    else snprintf(leader, sizeof leader, "none");
    int n = snprintf(buf, cap,
        "cluster_node=%" PRIu64 "@%s\ncluster_role=%s\ncluster_term=%llu\n"
        "cluster_commit_index=%llu\ncluster_last_applied=%llu\ncluster_last_index=%llu\n"
        "cluster_lag=%llu\ncluster_leader=%s\ncluster_accepts_writes=%d\n"
        "cluster_match_index=%s\ncluster_proposed=%" PRIu64 "\ncluster_propose_failed=%" PRIu64
        "\ncluster_applied_entries=%" PRIu64 "\ncluster_applied_records=%" PRIu64 "\n"
        "cluster_skipped_entries=%" PRIu64 "\ncluster_refused_writes=%" PRIu64 "\n"
        "cluster_members=%s\ncluster_change=%s\ncluster_change_error=%s\n"
        "cluster_snapshots=%" PRIu64
        "\ncluster_restores=%" PRIu64 "\n",
        cl->self->id, cl->self->addr, role_name(state), (unsigned long long)r->current_term,
        (unsigned long long)r->commit_index, (unsigned long long)r->last_applied, last, lag,
        leader, cl->ready, pn ? peers : "-", cl->proposed, cl->propose_failed,
        cl->applied_entries, cl->applied_records, cl->skipped_entries, ws->stat_refused_writes,
        mn ? members : "-", cl->change_busy ? cl->change_what : "-",
        cl->change_error[0] ? cl->change_error : "-", cl->snapshots,
        cl->restores);
    if (n < 0) return 0;
    return (size_t)n >= cap ? cap - 1 : (size_t)n;
}

/* ---- start / stop --------------------------------------------------------- */

int wr_cluster_start(wr_state *ws)
{
    const wr_cluster_opts *o = &ws->o.cluster;
    if (!o->spec) return 0;
    wr_cluster *cl = calloc(1, sizeof *cl);
    if (!cl) return -1;
    ws->cluster = cl;
    cl->ws = ws;
    char err[512];
    if (parse_nodes(o->spec, cl->nodes, &cl->nnodes, err, sizeof err)) {
        wr_log("%s", err);
        return -1;
    }
    for (unsigned i = 0; i < cl->nnodes; i++)
        if (cl->nodes[i].id == o->node_id) cl->self = &cl->nodes[i];
    KV_ASSERT(cl->self != NULL);   /* wr_cluster_check passed */
    if (getrandom(&cl->nonce, sizeof cl->nonce, 0) != sizeof cl->nonce) {
        wr_log("cluster: getrandom: %s", strerror(errno));
        return -1;
    }
    cl->nonce |= 1;   /* never 0 */
    cl->start_committed = ws->committed;
    cl->role = -1;
    cl->len = ENTRY_HDR;
    snprintf(cl->dir, sizeof cl->dir, "%s.raft", ws->db_abs);
    if (mkdir(cl->dir, 0700) != 0 && errno != EEXIST) {
        wr_log("cluster: mkdir %s: %s", cl->dir, strerror(errno));
        return -1;
    }
    refuse(ws, "not the leader; no leader is known yet (election in progress)");
    int rc = uv_loop_init(&cl->loop);
    if (rc != 0) {
        wr_log("cluster: uv_loop_init: %s", uv_strerror(rc));
        return -1;
    }
    cl->loop_ok = 1;
    if ((rc = raft_uv_tcp_init(&cl->transport, &cl->loop)) != 0) goto raft_fail;
    cl->transport_ok = 1;
    if ((rc = raft_uv_init(&cl->io, &cl->loop, cl->dir, &cl->transport)) != 0) goto raft_fail;
    cl->io_ok = 1;
    cl->fsm.version = 1;
    cl->fsm.data = ws;
    cl->fsm.apply = fsm_apply;
    cl->fsm.snapshot = fsm_snapshot;
    cl->fsm.restore = fsm_restore;
    if ((rc = raft_init(&cl->raft, &cl->io, &cl->fsm, cl->self->id, cl->self->addr)) != 0)
        goto raft_fail;
    cl->raft_ok = 1;
    cl->raft.data = ws;
    struct raft_configuration conf;
    raft_configuration_init(&conf);
    for (unsigned i = 0; i < cl->nnodes && rc == 0; i++)
        rc = raft_configuration_add(&conf, cl->nodes[i].id, cl->nodes[i].addr, RAFT_VOTER);
    if (rc == 0 && !o->join) {
        rc = raft_bootstrap(&cl->raft, &conf);
        if (rc == RAFT_CANTBOOTSTRAP) rc = 0;   /* state on disk: a restart */
    }
    raft_configuration_close(&conf);
    if (rc != 0) goto raft_fail;
    raft_set_election_timeout(&cl->raft, ELECTION_MS);
    raft_set_heartbeat_timeout(&cl->raft, HEARTBEAT_MS);
    raft_set_snapshot_threshold(&cl->raft, o->snapshot_entries);
    raft_set_snapshot_trailing(&cl->raft, o->snapshot_entries / 2 + 1);
    /* a snapshot sent to a node that was down is sent again after this long
     * without an answer (libraft's default, 30 s, left a restarted node
     * behind that long) */
    raft_set_install_snapshot_timeout(&cl->raft, SNAPSHOT_RESEND_MS);
    raft_set_pre_vote(&cl->raft, true);
    if ((rc = raft_start(&cl->raft)) != 0) goto raft_fail;
    cl->started = 1;
    if (cl->restore_failed) return -1;   /* logged */
    wr_log("cluster: node %" PRIu64 "@%s of %u, raft state in %s", cl->self->id, cl->self->addr,
           cl->nnodes, cl->dir);
    return 0;
raft_fail:
    {
        const char *why = cl->raft_ok ? raft_errmsg(&cl->raft) : "";
        wr_log("cluster: node %" PRIu64 "@%s (raft state in %s) cannot start: %s%s%s%s",
               cl->self->id, cl->self->addr, cl->dir, raft_strerror(rc), why[0] ? ": " : "", why,
               rc == RAFT_IOERR ? " (is the address in use, or not this host's?)" : "");
    }
    return -1;
}

static void raft_closed(struct raft *r)
{
    wr_state *ws = r->data;
    ws->cluster->closed = 1;
}

void wr_cluster_stop(wr_state *ws)
{
    wr_cluster *cl = ws->cluster;
    if (!cl) return;
    cl->closing = 1;
    if (cl->raft_ok) {
        raft_close(&cl->raft, raft_closed);
        while (!cl->closed) uv_run(&cl->loop, UV_RUN_ONCE);
    }
    if (cl->io_ok) raft_uv_close(&cl->io);
    if (cl->transport_ok) raft_uv_tcp_close(&cl->transport);
    if (cl->loop_ok) {
        uv_run(&cl->loop, UV_RUN_DEFAULT);
        uv_loop_close(&cl->loop);
    }
    raft_free(cl->buf);
    free(cl);
    ws->cluster = NULL;
}
