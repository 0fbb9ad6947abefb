/*
 * kvault/oprec.h -- records of applied operations: what makes a table
 * operation sent through the shared-mode writer apply exactly once
 * (docs/shared-mode.md, "Exactly once").
 *
 * A client of the writer names each operation by a random 128-bit token
 * (one per client handle) and a sequence number. The writer applies an
 * operation and, in the same transaction of the store's connection, writes
 * the row `exec:<token as 32 lower-case hex digits>` of kohakuvault_meta
 * (key TEXT PRIMARY KEY, value BLOB): the sequence number, the status and
 * the result bytes of the client's last applied operation. A client that
 * re-sends an operation after the writer died (kill -9) between its commit
 * and its reply, or that is about to apply it on its own connection, finds
 * the row and takes the stored result instead of applying it again. One
 * row per client handle, replaced by each operation; the writer drops it
 * when the client closes its handle, and rows older than
 * KV_OPREC_MAX_AGE_MS at the writer's start or sweeps.
 *
 * Value layout (native byte order: the file is only shared by processes of
 * one machine):
 *     u8  version (1), u8 form (bit 0 clear: result bytes follow; set:
 *         the result is a run of i64 ids first, first + 1, ..., stored as
 *         i64 first, u64 count; bit 1: a failure block comes first), u16
 *         reserved (0), i32 status, u64 seq, i64 time (Unix milliseconds
 *         when written), then the failure block when bit 1 is set (u64
 *         fail_seq, i32 fail_status, u32 message length, the message),
 *         then the result (bytes, or first/count).
 * Form 1 keeps the record of a large insert_many (consecutive ids) at 16
 * bytes; any other result is stored as it is.
 *
 * The functions take the connection of an open store handle (kv_text_conn,
 * kv_vector_conn, kv_colvault_conn, kv_db_conn) and follow that handle's threading
 * rule (a column vault's mutex is taken); failures are recorded as the
 * handle's last error (kv_*_errmsg).
 */
#ifndef KVAULT_OPREC_H
#define KVAULT_OPREC_H

#include <stddef.h>
#include <stdint.h>

#include "kvault/kvault.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Bytes of a client token. */
#define KV_OPREC_TOKEN_BYTES 16
/** Rows not written for this long are stale: the writer deletes them at its
 *  start and in its sweeps (kv_oprec_expire). A record matters only for the
 *  seconds between a writer's death and its client's re-send or local
 *  fallback; an hour leaves a wide margin for a stalled client. */
#define KV_OPREC_MAX_AGE_MS (60LL * 60 * 1000)

typedef struct kv_text kv_text;
typedef struct kv_vector kv_vector;
typedef struct kv_colvault kv_colvault;

/** The connection of a store handle, as the functions below take it. Filled
 *  by kv_text_conn / kv_vector_conn / kv_colvault_conn / kv_db_conn; valid while that
 *  handle is open. The fields are the engine's. */
typedef struct kv_conn {
    void *db;      /**< sqlite3 * */
    void *err;     /**< the handle's last-error record */
    void *stmts;   /**< the handle's prepared statements of this API */
    void *mu;      /**< the handle's mutex, or NULL */
} kv_conn;

KV_API void kv_text_conn(kv_text *t, kv_conn *out);
KV_API void kv_vector_conn(kv_vector *v, kv_conn *out);
KV_API void kv_colvault_conn(kv_colvault *cv, kv_conn *out);
KV_API void kv_db_conn(kv_db *db, kv_conn *out);

/** Message of the handle's last failure (as kv_*_errmsg). */
KV_API const char *kv_conn_errmsg(const kv_conn *c);

/** A record as read back. `res` (kv_oprec_free) holds res_len result bytes,
 *  expanded from form 1 when stored so. */
typedef struct kv_oprec {
    uint64_t seq;
    int32_t status;
    int64_t time_ms;
    uint8_t *res;
    size_t res_len;
    uint64_t fail_seq;    /**< an earlier operation that failed (0: none) */
    int32_t fail_status;  /**< its status */
    char *fail_msg;       /**< its message (NUL-terminated), or NULL */
} kv_oprec;

/** Read the record of `token`: *found = 1 and *out filled (free with
 *  kv_oprec_free), or *found = 0 when there is none (also when the file has
 *  no kohakuvault_meta table, or the row is not a valid record). Runs in
 *  the connection's open transaction, if any, else in its own read. KV_OK,
 *  KV_NOMEM, or a mapped SQLite failure (KV_BUSY, KV_IO, ...). */
KV_API kv_status kv_oprec_get(const kv_conn *c, const uint8_t token[KV_OPREC_TOKEN_BYTES],
                              kv_oprec *out, int *found);

/** Free what kv_oprec_get put into *r (NULL members are fine). */
KV_API void kv_oprec_free(kv_oprec *r);

/** Write (insert or replace) the record of `token`: seq, status, res[0..len)
 *  and the current time. Meant to run inside the write transaction that
 *  applied the operation (creates kohakuvault_meta when missing). KV_OK,
 *  KV_NOMEM, or a mapped SQLite failure. */
KV_API kv_status kv_oprec_put(const kv_conn *c, const uint8_t token[KV_OPREC_TOKEN_BYTES],
                              uint64_t seq, int32_t status, const void *res, size_t len);

/** kv_oprec_put that also records an earlier operation of the same client
 *  that failed in the same transaction: fail_seq (< seq; 0: none, as
 *  kv_oprec_put), its status and message (may be NULL). A pipelined client
 *  whose writer died before that failure's reply left learns of it from
 *  the record (kv_oprec.fail_seq) instead of taking the operation for
 *  applied. Statuses as kv_oprec_put. */
KV_API kv_status kv_oprec_put_failed(const kv_conn *c, const uint8_t token[KV_OPREC_TOKEN_BYTES],
                                     uint64_t seq, int32_t status, const void *res, size_t len,
                                     uint64_t fail_seq, int32_t fail_status,
                                     const char *fail_msg);

/** Delete the record of `token` (none: KV_OK). Autocommit unless the
 *  connection has a transaction open. KV_OK or a mapped SQLite failure. */
KV_API kv_status kv_oprec_drop(const kv_conn *c, const uint8_t token[KV_OPREC_TOKEN_BYTES]);

/** Delete every record written more than max_age_ms ago, or with a time in
 *  the future or an unreadable value, in one write transaction; *dropped
 *  (may be NULL) gets their count. KV_OK (also without kohakuvault_meta) or
 *  a mapped SQLite failure (KV_BUSY: another connection holds the write
 *  lock; nothing was deleted). */
KV_API kv_status kv_oprec_expire(const kv_conn *c, int64_t max_age_ms, int64_t *dropped);

/* ---- id leases --------------------------------------------------------
 * A client of the shared-mode writer that inserts without waiting for each
 * reply (docs/shared-mode.md, "Pipelined inserts") chooses its documents'
 * ids itself, from a block the writer granted it. The next id no block has
 * covered yet is kept as the row `lease:<name>` of kohakuvault_meta (value:
 * i64, native order), written in the transaction that grants the block, so
 * a writer that starts after a kill -9 grants above every block a client may
 * still be filling. */

/** Largest block of one grant (ids). */
#define KV_LEASE_MAX 65536

/** Grant the block [*lo, *lo + n) of lease `name` (1..256 bytes): *lo =
 *  max(floor, the stored next id), and the stored next id becomes *lo + n.
 *  `floor` is the id the store would give its next row (kv_text_next_id).
 *  Meant to run inside a write transaction of c (creates kohakuvault_meta
 *  when missing). KV_OK; KV_INVALID (n outside 1..KV_LEASE_MAX, floor < 1,
 *  bad name); KV_NOMEM or a mapped SQLite failure. */
KV_API kv_status kv_lease_grant(const kv_conn *c, const char *name, int64_t floor, int64_t n,
                                int64_t *lo);

/** The id of a row the caller inserts at once, in the same transaction,
 *  without a block: *id = max(floor, the stored next id), never one of a
 *  block granted. The stored next id moves past it only when blocks reach
 *  the store's end (stored >= floor); else the row itself moves the floor.
 *  KV_OK; KV_INVALID (floor < 1, bad name); a mapped SQLite failure. */
KV_API kv_status kv_lease_next(const kv_conn *c, const char *name, int64_t floor, int64_t *id);

/** kv_lease_next for n >= 1 consecutive ids [*lo, *lo + n) of rows the
 *  caller inserts at once, in the same transaction: none of a block
 *  granted. Statuses as kv_lease_next; KV_INVALID also for n < 1. */
KV_API kv_status kv_lease_take(const kv_conn *c, const char *name, int64_t floor, int64_t n,
                               int64_t *lo);

/** Give back the unused tail [next, end) of a block of lease `name`: when
 *  no block was granted after it (the stored next id is still `end`), the
 *  stored next id becomes `next`, so the store's next ids follow on as if
 *  the block had ended there; else nothing changes. Inside the write
 *  transaction of c, or (none open) in one of its own. KV_OK; KV_INVALID (next < 1, end < next, bad name); a
 *  mapped SQLite failure. */
KV_API kv_status kv_lease_return(const kv_conn *c, const char *name, int64_t next, int64_t end);

#ifdef __cplusplus
}
#endif
#endif /* KVAULT_OPREC_H */
