/*
 * writer.h -- private declarations of kvault-writer, split by concern:
 *   writer.c   options, signals, main
 *   loop.c     the writer loop: drain, apply, commit, fold, misses, eviction
 *   clients.c  the unix socket: attaches, requests, client rings
 *   exec.c     table operations of other classes (EXEC): engine handles
 *   oncemap.c  which operation of each EXEC client was applied last
 *   registry.c the registry file `<db>-kvault` and crash recovery (replay
 *              of a dead writer's memtables)
 *   ckpt.c     the WAL checkpointer thread
 *   cluster.c  cluster mode: replication of the committed batches on
 *              libraft (cluster.h; off without --cluster)
 * Everything runs on one thread, but for the checkpointer, which only
 * checkpoints the WAL on its own SQLite connection (ckpt.c).
 */
#ifndef KVAULT_WRITER_H
#define KVAULT_WRITER_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "kvault/batch.h"
#include "kvault/kvault.h"
#include "kvshm/kvshm.h"
#include "kvshm/proto.h"
#include "kvshm/ring.h"

#include "cluster.h"

typedef struct wr_opts {
    const char *db_path;
    const char *table;
    uint32_t shards;
    uint64_t cache_bytes;        /* data segment size */
    uint64_t memtable_bytes;     /* one memtable arena */
    size_t max_value_bytes;      /* values above this are not cached */
    int commit_interval_ms;      /* group-commit interval */
    uint64_t batch_size;         /* records applied before a commit is forced */
    int synchronous;             /* 0..3 */
    uint32_t nslots;
    int linger_ms;               /* exit this long after the last client left; < 0: never */
    int group_access;            /* --group: peers of group `gid` admitted, files 0660 */
    uint32_t gid;
    wr_cluster_opts cluster;     /* --cluster / --node-id (spec NULL: single node) */
} wr_opts;

/* One attached process. */
typedef struct wr_client {
    int sock;                    /* SOCK_SEQPACKET connection, -1 when free */
    kvshm_ring *ring;            /* its submission ring (NULL before ATTACH) */
    uint32_t pid, slot;
    uint64_t applied_pos;        /* ring position up to which records are applied */
    uint64_t write_end;          /* end of the last PUT/DEL consumed (kvshm_ring_set_write_consumed) */
    uint64_t commit_pos;         /* applied_pos when the pending batch was frozen */
    uint64_t committed_pos;      /* last position marked committed in the ring */
    uint64_t hits, misses;       /* reported by STATS records */
    int dead;                    /* socket hung up: drain, then drop */
} wr_client;

typedef struct wr_ckpt wr_ckpt;
typedef struct wr_exec wr_exec;
typedef struct wr_cluster wr_cluster;

/* Where the commit in flight stands (loop.c, "Commit pipeline"). */
typedef enum wr_phase {
    WR_IDLE = 0,     /* no commit in flight */
    WR_FREEZE,       /* freezing the shards (retried when a freeze failed) */
    WR_INSERT,       /* writing the frozen memtables into the open kv_batch */
    WR_COMMIT,       /* kv_batch_commit with the batch's last sequence */
    WR_FOLD,         /* folding the committed memtables, one shard a step */
    WR_NPHASES
} wr_phase;
/* Names of the phases (STATUS: commit_phase). */
extern const char *const wr_phase_names[WR_NPHASES];

/* A missed key reported by a reader, waiting to be loaded (loop.c). */
typedef struct wr_miss {
    uint8_t *key;
    uint32_t klen;
    uint64_t hash;               /* kvshm_key_hash */
} wr_miss;

typedef struct wr_state {
    wr_opts o;
    volatile sig_atomic_t *stop;
    char db_abs[4096];           /* realpath of the database */
    char reg_path[4200];         /* <db>-kvault */
    int reg_fd;                  /* registry, locked */
    uint64_t generation;
    char seg_name[96], slot_name[96], sock_name[96];
    kvshm_writer *w;
    kv_batch *batch;
    kv_db *db;                   /* second connection: miss loads, streams, meta */
    wr_ckpt *ckpt;               /* checkpointer thread (NULL: the loop checkpoints) */
    wr_exec *exec;               /* table operations: engine handles (NULL until used) */
    wr_cluster *cluster;         /* cluster mode (cluster.c); NULL: single node */
    int lsock;                   /* listening socket */
    int ep;                      /* epoll */
    wr_client *clients;
    size_t nclients;
    uint64_t seq;                /* last sequence applied */
    uint64_t committed;          /* last sequence committed */
    uint64_t pending;            /* records applied since the last freeze */
    int sync_requested;          /* a SYNC record was applied since the last freeze */
    /* the commit in flight */
    wr_phase phase;
    uint32_t cm_shard;           /* shard being frozen / inserted / folded */
    kvshm_scan_cursor cm_cur;    /* insert position in that shard's frozen memtable */
    int cm_open;                 /* the kv_batch transaction is open */
    uint64_t cm_prop;            /* cluster: the batch's Raft proposal (cluster.c), from
                                    its proposal until its local commit; 0: none */
    uint64_t frozen_seq;         /* last sequence of the frozen (uncommitted) batch */
    uint64_t frozen_pending;     /* records in it */
    uint64_t last_commit_ms;     /* when the last commit started (its freeze) */
    int yield;                   /* this pass: commit and miss steps end early when a
                                    ring holds records (loop.c, "Step sizes") */
    /* socket polling */
    uint32_t req_seen;           /* kvshm_writer_requests at the last poll */
    uint64_t last_poll_us;
    /* reported misses, process-local: a FIFO and a lossy filter of its hashes */
    wr_miss *miss;
    size_t miss_head, nmiss;
    uint64_t *miss_filter;
    uint8_t *miss_buf;           /* values read for one load step */
    size_t miss_buf_cap;
    /* statistics */
    uint64_t stat_commits, stat_records, stat_miss_loads, stat_evicted_keys;
    uint64_t stat_replayed;
    uint64_t freeze_fail_log_ms;         /* when a failed freeze was last logged */
    uint64_t commit_fail_log_ms;         /* when a failed commit step was last logged */
    uint64_t stat_refused;               /* connections refused (peer credentials) */
    uint64_t stat_bad_records;           /* clients dropped for a malformed record or ring */
    uint64_t stat_commit_steps;          /* bounded commit steps run */
    uint64_t stat_insert_steps;          /* of which INSERT steps */
    uint64_t stat_applies_during_commit; /* records applied while a commit was in flight */
    uint64_t stat_commit_max_us[WR_NPHASES]; /* longest step per phase (wall); [0]: any */
    uint64_t stat_commit_cpu_max_us[WR_NPHASES]; /* the same in CPU time of the writer */
    uint64_t stat_ckpt_max_us;           /* longest WAL checkpoint of the loop */
    uint64_t stat_commit_sync;           /* commits finished synchronously */
    uint64_t stat_sock_polls;
    uint64_t stat_miss_skipped;          /* reported misses not read: queued or cached */
    uint64_t stat_execs;                 /* table operations received (EXEC) */
    uint64_t stat_exec_failed;           /* of which failed (refused, or the engine's error) */
    uint64_t stat_exec_batches;          /* transactions that applied several of them */
    uint64_t stat_exec_batched_ops;      /* operations in those transactions */
    uint64_t stat_exec_batch_max;        /* most operations in one of them */
    uint64_t stat_exec_replayed;         /* re-sent ones found applied: recorded reply */
    uint64_t stat_exec_leases;           /* of which blocks of ids asked for or given back */
    uint64_t stat_miss_declined;         /* large misses not cached: no free room */
    uint64_t stat_refused_writes;        /* ring writes dropped: not the cluster's leader */
    uint64_t hits_gone, misses_gone; /* from clients that left */
} wr_state;

/* loop.c */
int wr_run(wr_state *ws);
/* Commit everything applied so far, synchronously: finish the commit in
 * flight (every remaining step), then freeze, commit and fold what was
 * applied since. 0, or -1 (logged; the commit stays in flight and the loop
 * retries it). */
int wr_commit_all(wr_state *ws);
/* Finish the commit in flight, synchronously (every remaining step); the
 * kv_batch transaction is closed afterwards, so the second connection may
 * write. 0 (also with no commit in flight), or -1 (logged). */
int wr_commit_finish(wr_state *ws);
/* Room in the active memtables (backpressure when one is full): finish the
 * commit in flight synchronously, then start a new one (freeze), whose
 * remaining steps run from the loop. 0 or -1 (logged). */
int wr_commit_room(wr_state *ws);
/* Queue a key a reader missed for loading into the cache (a hint: dropped
 * when the queue is full, when the same key is queued, or when the key is
 * cached by the time it is loaded). */
void wr_miss_add(wr_state *ws, const uint8_t *key, uint32_t klen);
uint64_t wr_now_ms(void);
uint64_t wr_now_us(void);

/* clients.c */
int wr_sock_listen(wr_state *ws);
/* Serve every pending socket event without blocking (one epoll_wait, and
 * another after accepting connections so their first request is served in
 * the same call). */
void wr_sock_poll(wr_state *ws);
/* Apply every record in every ring; returns the number of records. */
size_t wr_drain(wr_state *ws);
/* Apply one write to the active memtables with sequence seq (a client's
 * next sequence, or a replicated record's own, cluster.c): val NULL and
 * vlen 0 for a tombstone; seq must exceed the key's last one. When the
 * memtable is full, finishes the commit in flight and freezes (wr_commit_room)
 * and retries. Raises ws->seq to seq, counts the record pending. 0 applied,
 * 1 still no room (retry later), -1 refused by the segment (logged). */
int wr_apply_write(wr_state *ws, const uint8_t *key, uint32_t klen, const uint8_t *val,
                   uint32_t vlen, int tomb, uint64_t seq);
/* What the loop's idle wait checks for work: ws and the request count
 * (kvshm_writer_requests) read before the loop pass polled the socket. */
typedef struct wr_idle {
    wr_state *ws;
    uint32_t requests;
} wr_idle;
/* has_work of kvshm_writer_idle_wait (ctx: a wr_idle): a client ring has
 * data, the request count moved, or a stop was asked; with final, also a zero-timeout
 * epoll_wait of the socket. */
int wr_has_work(void *ctx, int final);
void wr_clients_close(wr_state *ws);
/* Text of the STATUS reply into buf; returns its length. */
size_t wr_status_text(wr_state *ws, char *buf, size_t cap);

/* Send one reply (struct kvshm_msg of type `type | KVSHM_MSG_REPLY`, the
 * status, m_arg = arg, then len payload bytes, cut to one packet) without
 * blocking; a client that went away gets nothing. */
void wr_reply(int sock, uint32_t type, int32_t status, uint64_t arg, const void *payload,
              size_t len);

/* One reply of wr_reply_many: as wr_reply's arguments. */
typedef struct wr_reply_msg {
    int sock;
    uint32_t type;
    int32_t status;
    uint64_t arg;
    const void *payload;
    size_t len;
} wr_reply_msg;

/* Send n replies as wr_reply does, those of one socket in their order and
 * in one sendmmsg (a pass's replies to a pipelining client cost one system
 * call, not one each). A reply the socket has no room for is dropped, as
 * wr_reply drops it. */
void wr_reply_many(const wr_reply_msg *msgs, size_t n);

/* exec.c */
/* Take one EXEC request (kvshm_msg_parse passed it; fd: the memfd the
 * client passed, or -1, now owned by the executor): copy and decode the
 * operation and keep it for wr_exec_flush (run first when WR_EXEC_BATCH
 * requests wait). A request that cannot be decoded gets its error reply
 * at the flush too. */
void wr_exec_request(wr_state *ws, int sock, const struct kvshm_msg *m, const uint8_t *pl,
                     int fd);
/* Apply the kept EXEC requests: finish the commit in flight, then per
 * engine handle (opened on first use) one transaction, each operation in
 * its own savepoint; reply to each after its transaction committed with
 * its result or the engine's message. Call before a kept request's socket
 * closes; a no-op when none waits. */
void wr_exec_flush(wr_state *ws);
/* Take one EXEC_END (kvshm_msg_parse passed it): the client handle whose
 * id `pl` holds is closing; its record of applied operations is deleted at
 * the next wr_exec_flush. No reply. */
void wr_exec_end(wr_state *ws, const uint8_t *pl);
/* Close every engine handle of the executor (at exit). */
void wr_exec_close(wr_state *ws);

/* oncemap.c: token of an EXEC client -> number of its last operation the
 * executor applied (or found applied), for the tokens this writer saw. */
typedef struct wr_once {
    uint8_t token[KVSHM_EXEC_TOKEN];
    uint64_t seq;               /* >= 1 in the map */
    uint64_t seen_ms;           /* wr_now_ms() of its last operation */
} wr_once;
typedef struct wr_oncemap wr_oncemap;
/* The entry of `token`, or NULL (m may be NULL). */
wr_once *wr_oncemap_find(wr_oncemap *m, const uint8_t *token);
/* The entry of `token`, added (seq and seen_ms 0: the caller sets seq >= 1
 * before the next call) when absent; *mp is created at first use. NULL when
 * out of memory. Pointers into the map are valid until the next add or
 * delete. */
wr_once *wr_oncemap_add(wr_oncemap **mp, const uint8_t *token);
/* Remove the entry of `token` (if any). */
void wr_oncemap_del(wr_oncemap *m, const uint8_t *token);
/* Remove the entries last seen before before_ms; returns their count. */
size_t wr_oncemap_expire(wr_oncemap *m, uint64_t before_ms);
void wr_oncemap_free(wr_oncemap *m);

/* ckpt.c */
/* Start the checkpointer: a thread with its own kv_batch on db_path/table.
 * NULL (logged) when it cannot start: the loop then checkpoints itself. */
wr_ckpt *wr_ckpt_start(const char *db_path, const char *table);
/* Ask for a passive checkpoint (returns at once; kicks pending fold into
 * one checkpoint). Loop thread only. */
void wr_ckpt_kick(wr_ckpt *c);
/* Kick, then wait until a checkpoint that started after the kick has
 * ended (returns at once while the thread is paused or stopping). Loop
 * thread only. */
void wr_ckpt_wait(wr_ckpt *c);
/* Hold the checkpointer (waiting for a checkpoint in progress to end) so
 * the loop's own checkpoint or VACUUM is not turned away by SQLite's
 * checkpoint lock; wr_ckpt_resume lets it go on. NULL: no-op. Loop thread. */
void wr_ckpt_pause(wr_ckpt *c);
void wr_ckpt_resume(wr_ckpt *c);
/* Checkpoints run and the longest one, microseconds (0 for NULL). Any thread. */
void wr_ckpt_stats(const wr_ckpt *c, uint64_t *runs, uint64_t *max_us);
/* Stop and join the thread, close its connection, free c (NULL: no-op). */
void wr_ckpt_stop(wr_ckpt *c);

/* registry.c */
int wr_registry_lock(wr_state *ws);
int wr_registry_write(wr_state *ws, const char *state);
int wr_recover(wr_state *ws);

void wr_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* KVAULT_WRITER_H */
