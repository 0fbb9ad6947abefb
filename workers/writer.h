/*
 * writer.h -- private declarations of kvault-writer, split by concern:
 *   writer.c   options, signals, main
 *   loop.c     the writer loop: drain, apply, commit, fold, misses, eviction
 *   clients.c  the unix socket: attaches, requests, client rings
 *   registry.c the registry file `<db>-kvault` and crash recovery (replay
 *              of a dead writer's memtables)
 * Everything runs on one thread.
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
} wr_opts;

/* One attached process. */
typedef struct wr_client {
    int sock;                    /* SOCK_SEQPACKET connection, -1 when free */
    kvshm_ring *ring;            /* its submission ring (NULL before ATTACH) */
    uint32_t pid, slot;
    uint64_t applied_pos;        /* ring position up to which records are applied */
    uint64_t commit_pos;         /* applied_pos when the pending batch was frozen */
    uint64_t committed_pos;      /* last position marked committed in the ring */
    uint64_t hits, misses;       /* reported by STATS records */
    int dead;                    /* socket hung up: drain, then drop */
} wr_client;

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
    int lsock;                   /* listening socket */
    int ep;                      /* epoll */
    wr_client *clients;
    size_t nclients;
    uint64_t seq;                /* last sequence applied */
    uint64_t committed;          /* last sequence committed */
    uint64_t pending;            /* records applied since the last commit */
    int sync_requested;
    uint64_t frozen_seq;         /* last sequence of the frozen (uncommitted) batch */
    uint64_t frozen_pending;     /* records in it */
    int frozen_left;             /* a frozen batch failed to commit or fold: retry it */
    int frozen_committed;        /* the frozen batch is committed; its fold is pending */
    uint64_t last_commit_ms;
    /* reported misses, process-local */
    uint8_t **miss_keys;
    size_t *miss_lens;
    size_t nmiss, miss_cap;
    /* statistics */
    uint64_t stat_commits, stat_records, stat_miss_loads, stat_evicted_keys;
    uint64_t stat_replayed;
    uint64_t hits_gone, misses_gone; /* from clients that left */
} wr_state;

/* loop.c */
int wr_run(wr_state *ws);
/* Freeze, commit and fold everything applied. 0 or -1 (logged). */
int wr_commit_all(wr_state *ws);
uint64_t wr_now_ms(void);

/* clients.c */
int wr_sock_listen(wr_state *ws);
/* Serve every pending socket event without blocking. */
void wr_sock_poll(wr_state *ws);
/* Apply every record in every ring; returns the number of records. */
size_t wr_drain(wr_state *ws);
/* What the loop's idle wait checks for work: ws and the request count
 * (kvshm_writer_requests) read before the loop pass polled the socket. */
typedef struct wr_idle {
    wr_state *ws;
    uint32_t requests;
} wr_idle;
/* has_work of kvshm_writer_idle_wait (ctx: a wr_idle): a client ring has
 * data, or the request count moved; with final, also a zero-timeout
 * epoll_wait of the socket. */
int wr_has_work(void *ctx, int final);
void wr_clients_close(wr_state *ws);
/* Text of the STATUS reply into buf; returns its length. */
size_t wr_status_text(wr_state *ws, char *buf, size_t cap);

/* registry.c */
int wr_registry_lock(wr_state *ws);
int wr_registry_write(wr_state *ws, const char *state);
int wr_recover(wr_state *ws);

void wr_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif /* KVAULT_WRITER_H */
