/*
 * cluster.h -- cluster mode of kvault-writer (docs/replication.md): the
 * writers of several hosts keep equal copies of one database by replicating
 * the writer's committed batches through a Raft log (libraft, with its libuv
 * disk I/O and TCP transport).
 *
 * The leader's writer takes writes as a single writer does; each batch it
 * freezes is serialized into one Raft entry, and committed to its SQLite
 * file only after the cluster committed that entry. Every
 * node applies the committed entries of other nodes' writers to its own
 * memtables (so readers attached to it see them at once) and its commit
 * pipeline commits them to its own file (loop.c). Followers refuse client
 * writes (kvshm_writer_set_refusal), naming the leader.
 *
 * Everything runs on the writer's loop thread: libuv's loop is embedded in
 * the writer loop (wr_cluster_pass runs it without blocking; the idle wait
 * is bounded by wr_cluster_wait_ms), so Raft's callbacks, the state machine
 * included, run on that thread between the loop's own steps.
 *
 * None of this is active without --cluster: ws->cluster stays NULL and each
 * entry point below is a no-op (or reports "single node").
 */
#ifndef KVAULT_WRITER_CLUSTER_H
#define KVAULT_WRITER_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "kvault/kvault.h"   /* kv_status */

struct wr_state;

/* The refusal of the writes cluster mode does not replicate (table
 * operations of the other classes, put_file streams), on the leader; the
 * other nodes give their usual refusal, naming the leader. */
#define WR_CLUSTER_NOT_REPLICATED                                                            \
    "cluster mode replicates the key-value table the writer serves only: table operations"  \
    " of TextVault, VectorKVault, ColumnVault and of a KVault on another table, and values" \
    " streamed with put_file (or larger than half the ring), are not replicated, so every"  \
    " node refuses them"

/* Default of --snapshot-entries. */
#define WR_CLUSTER_SNAPSHOT_ENTRIES 16384u

/* Largest number of nodes named by --cluster. */
#define WR_CLUSTER_MAX_NODES 16

/* --cluster ID@HOST:PORT,... and --node-id ID. */
typedef struct wr_cluster_opts {
    const char *spec;      /* the --cluster text, NULL: single node */
    uint64_t node_id;      /* --node-id; 0: not given */
    int join;              /* --join: a node added at run time (no bootstrap) */
    unsigned snapshot_entries; /* --snapshot-entries: Raft entries between snapshots */
} wr_cluster_opts;

/* Check a --cluster text and --node-id: every entry ID@HOST:PORT with a
 * distinct ID >= 1 and a port 1..65535, at most WR_CLUSTER_MAX_NODES, and
 * node_id among the IDs. 0, or -1 with the reason in err (errlen bytes). */
int wr_cluster_check(const wr_cluster_opts *o, char *err, size_t errlen);

/* Start the node: data directory `<db>.raft/` (created, mode 0700), libuv
 * loop, libraft's uv I/O and TCP transport bound to this node's address,
 * bootstrap with the configuration of --cluster when the directory holds no
 * Raft state yet (not with --join: such a node waits, with no configuration,
 * for the leader to add it: wr_cluster_change), start. The segment refuses writes until this node leads
 * (and has applied every entry of earlier terms). Call after the segment
 * exists and the recovery ran. 0, or -1 (logged). Loop thread. */
int wr_cluster_start(struct wr_state *ws);

/* One pass of the cluster's work: run libuv's ready callbacks without
 * blocking (Raft's timers, network, disk, state machine), then follow role
 * changes (leader elected, leadership lost: the write refusal). Rate-limited
 * to one libuv run per UV_EVERY_US (100 us). Loop thread. */
void wr_cluster_pass(struct wr_state *ws);

/* The idle wait's timeout, bounded so that Raft's sockets and timers are
 * served (a few milliseconds); timeout_ms unchanged without a cluster. */
int wr_cluster_wait_ms(const struct wr_state *ws, int timeout_ms);

/* 1 when libuv's backend has events ready, waiting for them up to
 * timeout_ms (a poll of its epoll descriptor: a system call; 0 ms is the
 * idle wait's final check). 0 without a cluster. */
int wr_cluster_io_ready(const struct wr_state *ws, int timeout_ms);

/* 1 when client writes are taken: no cluster, or this node leads and has
 * applied every entry before its term's barrier. */
int wr_cluster_accepts_writes(const struct wr_state *ws);
/* Why writes are refused (the text published in the segment), while
 * wr_cluster_accepts_writes is 0; "" otherwise. */
const char *wr_cluster_refusal(const struct wr_state *ws);

/* The batch being committed (loop.c): forget what wr_cluster_batch_add
 * collected (a new batch starts, or the insert restarts from scratch). */
void wr_cluster_batch_reset(struct wr_state *ws);
/* Add one record of the batch being inserted (the newest version of a key
 * in a frozen memtable; val NULL for a tombstone). 0, or -1 when out of
 * memory (the batch is then not replicated: logged at the proposal). */
int wr_cluster_batch_add(struct wr_state *ws, const void *key, size_t klen, const void *val,
                         size_t vlen, uint64_t seq, int tomb);
/* The frozen batch ending at sequence last_seq is inserted into the open
 * transaction (not committed): propose it as one Raft entry (raft_apply).
 * Returns 0 when the batch is not this node's to replicate (no cluster; a
 * follower committing replicated records; no record in it): commit it now;
 * else the proposal's number (> 0): commit it to the file only once
 * wr_cluster_batch_wait says the cluster committed it, so that a node's file
 * never holds a batch the cluster may drop; UINT64_MAX when the proposal
 * failed: this node does not lead anymore and is deposed
 * (wr_cluster_deposed). Loop thread. */
uint64_t wr_cluster_batch_propose(struct wr_state *ws, uint64_t last_seq);

/* Whether proposal prop (from wr_cluster_batch_propose) is committed by the
 * cluster: 1 committed (a quorum stored it), 0 not yet (only without
 * block), -1 it never will be here: the node lost the lead and is deposed.
 * With block, runs libuv's loop until the answer is 1 or -1 (at most about
 * an election timeout: a leader that cannot reach a quorum steps down).
 * Loop thread. */
int wr_cluster_batch_wait(struct wr_state *ws, uint64_t prop, int block);

/* Exit status of a deposed writer (EX_TEMPFAIL of sysexits.h): a supervisor
 * (kvault-launch serve) restarts it. */
#define WR_EXIT_DEPOSED 75

/* 1 when this writer must exit with WR_EXIT_DEPOSED: it lost the lead while
 * it held writes the cluster had not committed (applied to its memtables,
 * read by its clients, maybe proposed: whether the cluster keeps them is
 * the new leader's to decide), or it dropped a client's write
 * (wr_cluster_write_dropped). A new process starts from the file, which
 * holds only entries the cluster committed, and applies the Raft log from
 * there (its segment is not replayed: registry.c). Loop thread. */
int wr_cluster_deposed(const struct wr_state *ws);

/* A client's write came in while this node does not take writes (it was
 * published as the node lost the lead, or left in a ring handed over after
 * a restart): it is dropped, and the node deposed, so that the client hears
 * of the loss when it re-attaches to the restarted writer (clients.c,
 * handle_attach) instead of seeing its next SYNC succeed. Loop thread. */
void wr_cluster_write_dropped(struct wr_state *ws);

/* A membership change asked through the control socket (KVSHM_MSG_CLUSTER,
 * `kvault-launch cluster add|remove`), on the leader:
 *   "add ID@HOST:PORT"  raft_add (the node joins as a spare, receiving
 *                       nothing), then, once that configuration committed,
 *                       raft_assign to voter: libraft first brings the node's
 *                       log up to date (from the log, or from a snapshot when
 *                       the log no longer reaches back), then commits the
 *                       configuration in which it votes; an add of a node
 *                       that is a spare already only promotes it;
 *   "remove ID"         raft_remove.
 * Returns KV_OK once the change started (its progress and the end show in
 * the STATUS line cluster_members, and in the log), with a short text in
 * msg; KV_UNSUPPORTED on a node that does not lead (msg names the leader)
 * or without a cluster; KV_INVALID for a malformed request or one libraft
 * refuses (another change in progress, an unknown ID, ...), the reason in
 * msg. Loop thread. */
kv_status wr_cluster_change(struct wr_state *ws, const char *cmd, char *msg, size_t msglen);

/* Cluster lines of the STATUS text (role, term, indexes, leader, lag) into
 * buf; returns their length (0 without a cluster). */
size_t wr_cluster_status(struct wr_state *ws, char *buf, size_t cap);

/* Close Raft, its I/O and transport and the libuv loop (runs the loop until
 * every handle closed). No-op without a cluster. Loop thread. */
void wr_cluster_stop(struct wr_state *ws);

#endif /* KVAULT_WRITER_CLUSTER_H */
