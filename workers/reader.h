/*
 * reader.h -- kvault-reader internals shared by the command layer
 * (reader.c) and its two event loops (reader_loop_epoll.c,
 * reader_loop_uring.c). Private to workers/.
 *
 * A reader is one process, one thread: it attaches to the writer serving a
 * database (kvshm/attach.h), accepts RESP2 clients and answers them from the
 * shared segment. A loop round is:
 *   1. receive on every ready connection, reader_conn_process() each one:
 *      every complete request in its input is executed, replies appended to
 *      its output; SET/MSET pairs are collected (copied) across connections;
 *   2. reader_round_end(): the collected pairs go to the writer's ring in one
 *      kv_att_put_many without waiting; the output of a connection from its
 *      first write reply of the round on is held until the writer has
 *      applied that round's writes (a hold: output offset + write ticket);
 *      holds whose writes are applied by now are released;
 *   3. each connection's sendable output (everything before its first hold)
 *      is sent with one send.
 * While replies are held the loop only polls for more input; when none
 * came it blocks in reader_wait_writes() until every write is applied. So a
 * write is acknowledged only once applied, replies leave in request order,
 * and the reader parses and submits the next requests of every connection
 * while earlier writes are being applied.
 */
#ifndef KV_READER_H
#define KV_READER_H

#include <stddef.h>
#include <stdint.h>

#include "kvshm/attach.h"
#include "resp.h"

/** Stop reading from a connection while this much output waits to be sent. */
#define READER_OUT_HIGH (4u << 20)

/** One client connection. */
typedef struct rconn {
    int fd;
    uint64_t id;           /**< CLIENT ID */
    resp_buf in;           /**< received, not yet executed bytes */
    resp_buf out;          /**< replies not yet sent */
    size_t need;           /**< bytes the incomplete request needs at least (0: unknown) */
    char *name;            /**< CLIENT SETNAME (NULL: none) */
    unsigned authed : 1;   /**< AUTH succeeded (or no password is configured) */
    unsigned closing : 1;  /**< execute nothing more; close once `out` is sent (QUIT, protocol error) */
    unsigned eof : 1;      /**< the peer sent everything: close once `out` is sent */
    unsigned dead : 1;     /**< close now, without sending */
    unsigned wrote : 1;    /**< replies to writes of this round are in `out` */
    unsigned dirty : 1;    /**< on the round's send list */
    unsigned stalled : 1;  /**< input left unprocessed because `out` is over READER_OUT_HIGH */
    size_t wrote_from;     /**< `out` offset of the first write reply of this round */
    /** Held output: bytes of `out` from hold_from[i] on wait until the writes
     *  up to hold_ticket[i] are applied (kv_att_applied); n_holds <= 2, the
     *  second absorbs later rounds' holds. */
    size_t hold_from[2];
    uint64_t hold_ticket[2];
    unsigned n_holds;
    struct rconn *held_prev, *held_next;  /**< on the reader's held list while n_holds */
    unsigned loop_flags;   /**< owned by the event loop (registered interest, ...) */
    void *loop_data;       /**< owned by the event loop */
    struct rconn *next_dirty;
    struct rconn *prev, *next;  /**< every open connection of the reader */
} rconn;

typedef struct reader reader;

/** Options and listening sockets of a reader. */
typedef struct reader_opts {
    const char *db;
    const char *table;
    const char *bind;        /**< TCP address (default 127.0.0.1) */
    int port;                /**< TCP port, -1 none, 0 any free port */
    const char *unix_path;   /**< unix socket to create (mode 0600), or NULL */
    int listen_fds[8];       /**< inherited listening sockets (already listening) */
    int n_listen_fds;
    const char *io;          /**< "auto", "epoll" or "uring" */
    const char *pass_file;   /**< --requirepass-file, or NULL */
    const char *stats_file;  /**< counters rewritten once a second, or NULL */
    resp_limits lim;
    size_t max_query;        /**< most bytes buffered for one connection's input */
} reader_opts;

/* ---- command layer (reader.c), used by the loops ---- */

/** Accepted connection fd -> new connection (NULL: out of memory; fd closed). */
rconn *reader_conn_new(reader *r, int fd);
/** Close fd and free. */
void reader_conn_free(reader *r, rconn *c);
/** The first open connection (follow ->next), for a loop's shutdown. */
rconn *reader_conns(reader *r);
/** Execute every complete request in c->in (until c->out passes
 *  READER_OUT_HIGH: then c->stalled), append replies to c->out, and put c on
 *  the round's send list when it has something to send or must close. */
void reader_conn_process(reader *r, rconn *c);
/** Add c to the round's send list (idempotent). */
void reader_mark_dirty(reader *r, rconn *c);
/** Submit the round's collected writes (no wait) and hold the replies of
 *  the connections that wrote; release the holds whose writes are applied
 *  by now. On a failed submission every connection with c->wrote is marked
 *  dead (its writes are not acknowledged). Then returns the send list
 *  (linked through next_dirty, flags dirty cleared by the caller) and
 *  empties it. */
rconn *reader_round_end(reader *r);
/** 1 while some connection's replies wait for writes to be applied: the
 *  loop then polls without blocking and calls reader_wait_writes() when
 *  nothing else is to be done. */
int reader_holding(const reader *r);
/** Block until every submitted write is applied, then release every hold
 *  (on failure: mark the held connections dead, their writes are not
 *  acknowledged); the connections go on the send list. */
void reader_wait_writes(reader *r);
/** Bytes at the start of c->out that may be sent now (before its first hold). */
size_t reader_sendable(const rconn *c);
/** n bytes (<= reader_sendable) of c->out were sent: drop them from out. */
void reader_sent(rconn *c, size_t n);
/** Everything of c->out is sent and nothing is held: a closing connection
 *  may close. */
static inline int reader_out_done(const rconn *c) { return c->out.len == 0 && !c->n_holds; }
/** Once a second: rewrite the stats file. */
void reader_tick(reader *r);
/** 1 once SIGTERM/SIGINT arrived. */
int reader_stopping(const reader *r);
/** The listening sockets (count in *n). */
const int *reader_listen_fds(const reader *r, int *n);
/** Name of the I/O engine in use, for INFO. */
void reader_set_io_name(reader *r, const char *name);
/** Bytes a receive into c->in should make room for. */
size_t reader_recv_hint(const reader *r, const rconn *c);
/** 1 if c->in is over the query buffer limit (the loop then closes c). */
int reader_query_over(const reader *r, const rconn *c);

/* ---- event loops: return 0 on a requested stop, -1 on a setup failure
 * (uring: the kernel lacks what it needs; the caller falls back) ---- */
int reader_loop_epoll(reader *r);
int reader_loop_uring(reader *r);
/** 1 if io_uring with multishot accept and receive works here. */
int reader_uring_supported(void);

#endif /* KV_READER_H */
