/*
 * kvshm/attach.h -- attaching to a database served by kvault-writer
 * (docs/shared-mode.md, "How it works", "Write modes" and "Failure behaviour").
 *
 * An attached process maps the writer's data segment read-only, takes a slot,
 * creates its own submission ring (a memfd) and hands it to the writer over
 * the writer's unix socket. Then:
 *   reads   segment (active memtable -> frozen -> CSB+tree), no lock, no
 *           system call; on a miss, the process's own SQLite connection
 *           (through libkvault), and the key is reported to the writer
 *           (a large value only when the writer would load it:
 *           kvshm_reader_miss_wanted);
 *   writes  a record in the ring; kv_att_put returns when the writer has
 *           APPLIED it (every attached process sees it), or with
 *           KV_ATT_SYNC when it is COMMITTED to SQLite, or with
 *           KV_ATT_ASYNC as soon as it is in the ring (later calls of the
 *           same handle wait for it before reading: read-your-writes).
 * The writer never returns SQLITE_BUSY to an attached process.
 *
 * Failures handled here: the writer dies and a new one starts (its
 * generation changes) -> the handle re-attaches by itself and hands the SAME
 * ring to the new writer, which applies what the old one had not (records
 * it had applied were replayed from the old segment); the process forks ->
 * the child's first call takes its own slot, ring, socket and SQLite
 * connection (the parent's stay the parent's).
 *
 * Threads: one thread at a time per handle (the Python binding serialises
 * with a mutex). Processes: a handle may be used in a forked child as said.
 * Layering: calls kvshm_* and kv_* (libkvault); never SQLite.
 */
#ifndef KVSHM_ATTACH_H
#define KVSHM_ATTACH_H

#include <stddef.h>
#include <stdint.h>

#include "kvault/kvault.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kv_att kv_att;

/** Options of kv_attach. Zero-initialise, call kv_attach_opts_default. */
typedef struct kv_attach_opts {
    const char *table;          /**< table to serve; must equal the writer's (default "kv") */
    uint32_t ring_bytes;        /**< submission ring capacity, power of two (default 4 MiB) */
    int reattach_timeout_ms;    /**< how long to wait for a restarted writer (default 60000) */
    int continue_on_stop;       /**< nonzero: a writer that stopped cleanly (registry
                                     state=stopped) ends the wait at once: the handle
                                     commits its ring's unapplied records through its own
                                     connection and is stopped (kv_att_stopped); so
                                     does a writer that died (registry lock free for
                                     500 ms: no successor took over): the handle
                                     first replays its applied
                                     records (kv_attach_recover); default 0 */
    kv_open_opts db;            /**< options of the process's own SQLite connection */
    /** With continue_on_stop: called once the writer is found dead (no
     *  successor took the registry within the 500 ms grace), before the
     *  handle replays and continues on its own: it starts a new writer
     *  (exactly one among racing processes is the callback's business)
     *  and returns nonzero when one serves the file now. The handle then
     *  re-attaches to it with its ring, as to a supervised restart: the new
     *  writer replays the dead one's records, then applies the ring's. 0:
     *  the handle goes on as without the callback. Called at most once per
     *  dead writer, from the thread whose call noticed, with no lock of the
     *  library held (the handle's caller may hold its own). NULL: none. */
    int (*respawn)(void *ctx);
    void *respawn_ctx;          /**< argument of respawn */
} kv_attach_opts;

/** Defaults: table "kv", 4 MiB ring, 60 s re-attach wait, kv_open_opts_default. */
void kv_attach_opts_default(kv_attach_opts *o);

/** 1 if a live writer serves `db_path` for `table` (its registry lock is
 *  held and the registry says ready), else 0. Takes no lock. Any process. */
int kv_attach_served(const char *db_path, const char *table);

/** Registry path of `db_path` (`<realpath>-kvault`, malloc'd; the caller
 *  frees it), or NULL when the file does not exist. */
char *kv_attach_registry_path(const char *db_path);

/** 1 if a writer holds the registry lock at `reg_path` for `table` (or
 *  its text names no table yet: a writer that is starting), whatever state
 *  it shows; else 0. One open, fcntl and pread; takes no lock. The commit
 *  guard of embedded KVault objects in "auto" mode (docs/shared-mode.md,
 *  "Objects opened before the writer"). Any process and thread. */
int kv_attach_registry_locked(const char *reg_path, const char *table);

/** 1 if the registry at `reg_path` names a writer of `table` that is gone
 *  (its lock is free) without stopping cleanly and whose data segment still
 *  exists, or a client is replaying one now (kv_attach_recover): a commit
 *  made before kv_attach_recover would be overwritten by the replay. Also 1
 *  (any table) while no writer runs on the file of a cluster node (the
 *  registry's cluster= line): only that node's writer may write it. One
 *  open, fcntl, pread and stat; takes no lock. Any process and thread. */
int kv_attach_recover_pending(const char *reg_path, const char *table);

/** Replay a dead writer's applied records of `table` into `db_path` before
 *  this process writes the file without a writer (docs/shared-mode.md,
 *  "Recovery"): when kv_attach_recover_pending, take the registry lock
 *  (the range lock of a recovering client, which a starting writer and
 *  every commit guard see as taken), commit the records with
 *  kvshm_replay_segment, unlink the segment and mark the registry
 *  state=stopped, so the replay happens once (the next writer finds
 *  nothing). Waits up to `wait_ms` (polling every 20 ms) while another
 *  process replays or SQLite is busy. *replayed (may be NULL) = keys written.
 *  Returns KV_OK (also when nothing was pending or the file does not
 *  exist); KV_BUSY (still held after wait_ms); a kv_batch_open status; KV_IO
 *  (the segment could not be read or the batch failed); KV_UNSUPPORTED (the
 *  file is a cluster node's: nothing is replayed, see
 *  kv_attach_recover_pending); `err` receives a message. Any process and
 *  thread; blocks. */
kv_status kv_attach_recover(const char *db_path, const char *table, int wait_ms,
                            uint64_t *replayed, char *err, size_t errlen);

/** Attach to the writer serving `db_path`. *out is owned by the caller
 *  (kv_attach_close). Returns KV_OK; KV_NOTFOUND (no writer serves the file,
 *  or it serves another table); KV_IO (segment, socket or ring could not be
 *  set up; errno kept in the message); KV_NOMEM; or a kv_db_open status for
 *  the own connection. `err` (may be NULL) receives a message. */
kv_status kv_attach(const char *db_path, const kv_attach_opts *o, kv_att **out,
                    char *err, size_t errlen);

/** Wait until every write of this handle is committed (bounded by the
 *  re-attach timeout), then detach, close the ring, the socket and the own
 *  connection, and free. NULL is a no-op. Returns the wait's status. */
kv_status kv_attach_close(kv_att *a);

/** Message of the last failure on the handle ("" if none). */
const char *kv_att_errmsg(const kv_att *a);

/** 1 once the handle found its writer stopped cleanly with
 *  continue_on_stop set, 2 when it found it dead (no successor) and
 *  replayed its applied records itself (kv_attach_recover): every record of
 *  its ring is committed through its own connection, reads go to that
 *  connection, and calls that need a writer fail with KV_IO ("writer of ...
 *  stopped" / "died") unless a newer writer serves by then. Kept until a
 *  newer writer is attached; 0 otherwise. */
int kv_att_stopped(const kv_att *a);

/** Writer generation this handle is attached to. */
uint64_t kv_att_generation(const kv_att *a);

/** xxh3_64 of a key: the hash kv_att_stamp takes. Any thread. */
uint64_t kv_att_key_hash(const void *key, size_t klen);

/** Validation token for a process-local copy of a key's value (used by the
 *  Python binding's hot-value cache; see docs/shared-mode.md).
 *
 *  Seqlock protocol over the key's stripe stamp (shm/layout.h, "Key-stripe
 *  stamps"): take t1 = kv_att_stamp(a, h, 0) before kv_att_get and
 *  t2 = kv_att_stamp(a, h, 1) after it; if t1 == t2 != 0, the value read is
 *  the key's current value for as long as kv_att_stamp(a, h, 0) returns t1.
 *  Tokens embed the writer generation, so a copy validated against an old
 *  segment never matches after a re-attach.
 *
 *  Returns 0 (never usable) when this handle has writes not yet known to be
 *  applied, after a fork until its next call re-homes it, when detached, while
 *  a write to the stripe is being applied, or when the segment was closed or
 *  replaced by a new writer. h = kv_att_key_hash(key). Not thread-safe
 *  against other calls on the same handle (a re-attach unmaps the segment):
 *  callers serialise it like every kv_att_* call. No system call. */
uint64_t kv_att_stamp(const kv_att *a, uint64_t key_hash, int after_read);

/** Read `key`: segment, then own SQLite connection. On KV_OK *val and *vlen
 *  point into a buffer owned by the handle, valid until its next call.
 *  Returns KV_OK, KV_NOTFOUND, KV_INVALID (key length 0 or > 4096 for the
 *  segment), KV_CORRUPT, KV_IO, KV_BUSY (SQLite fallback). */
kv_status kv_att_get(kv_att *a, const void *key, size_t klen, const void **val, size_t *vlen);

/** Read `key` as kv_att_get does, copying the value once into memory the
 *  caller allocates: `alloc(ctx, n)` gets a buffer for the n-byte value.
 *  From the segment the copy goes straight into that buffer inside the
 *  read section, with the segment's validation (checksum over the copy,
 *  eviction check); a copy that raced the writer's reclaim is read again,
 *  so `alloc` may be called more than once, with another length when the
 *  key changed meanwhile: each call replaces the buffer of the previous
 *  one, which stays the caller's to release or reuse. A value not in the
 *  segment is read from the own SQLite connection by kv_get_into
 *  (KV_GET_DIRECT_MIN: a large one by the engine's large-value reader)
 *  straight into a buffer of `alloc`, and the miss is reported to the
 *  writer (as in the reads above). On KV_OK *vlen = n and the last buffer `alloc` returned holds
 *  exactly the value. `alloc` runs inside the segment's read section or
 *  SQLite's read transaction: it must be short and not call into `a`.
 *  KV_NOMEM when it returned NULL; other statuses as kv_att_get. Not
 *  thread-safe (as every kv_att_* call on one handle). */
kv_status kv_att_get_into(kv_att *a, const void *key, size_t klen, kv_alloc_fn alloc, void *ctx,
                          size_t *vlen);

/** kv_att_put flags */
#define KV_ATT_ASYNC 1  /**< return once the record is in the ring */
#define KV_ATT_SYNC  2  /**< return once it is committed to SQLite */

/** Upsert key -> value through the writer (see the header comment for when
 *  it returns). Values larger than half the ring go as a stream (a memfd
 *  handed to the writer) and are committed on return. Returns KV_OK,
 *  KV_INVALID, KV_NOMEM, KV_IO (writer gone and none came back). */
kv_status kv_att_put(kv_att *a, const void *key, size_t klen, const void *val, size_t vlen,
                     int flags);

/** Delete key; *existed (may be NULL) = 1 if it existed just before.
 *  Returns when applied. Statuses as kv_att_put. */
kv_status kv_att_delete(kv_att *a, const void *key, size_t klen, int *existed);

/** *found = 1 if key exists (segment, then SQLite). Statuses as kv_att_get. */
kv_status kv_att_exists(kv_att *a, const void *key, size_t klen, int *found);

/** Wait until every write of this handle is applied (committed = 0) or ask
 *  the writer to commit now and wait until it has (committed = 1; this also
 *  commits every other process's applied writes). */
kv_status kv_att_wait(kv_att *a, int committed);

/** Ticket of this handle's writes so far: its ring position after the last
 *  record it submitted (a free-running byte count, 0 before any write; kept
 *  across a writer restart, which hands the same ring over). Any write
 *  submitted later gets a larger ticket. Same thread rules as kv_att_put. */
uint64_t kv_att_write_ticket(const kv_att *a);

/** 1 if every write of this handle up to `ticket` (kv_att_write_ticket) is
 *  known applied now, else 0: one acquire load of the ring's consumed
 *  position, no wait, no system call. 0 does not mean failed: kv_att_wait
 *  then waits (and re-attaches to a restarted writer). When `ticket` covers
 *  every write of the handle, later reads skip their wait for applied
 *  writes. Same thread rules as kv_att_put. */
int kv_att_applied(kv_att *a, uint64_t ticket);

/** Row count / key batch of SQLite after kv_att_wait(a, 1) (so both include
 *  every write applied before the call). As kv_count / kv_keys_batch. */
kv_status kv_att_count(kv_att *a, int64_t *count);
kv_status kv_att_keys_batch(kv_att *a, const void *prefix, size_t plen, const void *after,
                            size_t alen, size_t max, kv_keys **out);

/** Stream `size` bytes of `fd` (from its current offset) into key: the fd
 *  is passed to the writer (SCM_RIGHTS), which streams it with io_uring and
 *  commits before replying. Returns as kv_put_fd. */
kv_status kv_att_put_fd(kv_att *a, const void *key, size_t klen, int fd, uint64_t size,
                        size_t chunk);

/** Write key's value to fd: from the segment when cached, else streamed
 *  from the own SQLite connection (kv_get_to_fd, io_uring). */
kv_status kv_att_get_to_fd(kv_att *a, const void *key, size_t klen, int fd, size_t chunk,
                           uint64_t *written);

/** Ask the writer: record a kv_features name / PRAGMA optimize + VACUUM /
 *  WAL checkpoint. Returns the writer's status. */
kv_status kv_att_record_feature(kv_att *a, const char *name);
kv_status kv_att_optimize(kv_att *a);
kv_status kv_att_checkpoint(kv_att *a);

/** The writer's STATUS text (`name=value` lines) into buf (NUL-terminated). */
kv_status kv_att_status(kv_att *a, char *buf, size_t cap);

/** Hits/misses of this handle's reads since attach (its own segment reads;
 *  hits added with kv_att_add_hits are not among them). */
void kv_att_counters(const kv_att *a, uint64_t *hits, uint64_t *misses);

/** Count n reads that a layer above served from its own copies of segment
 *  values (the Python hot-value cache) as hits in the hit/miss reports this
 *  handle sends the writer, which `kvault-launch status` sums. Reports go
 *  out every 4,096 reads, hits and misses together. Same thread rules as
 *  kv_att_get (one thread at a time per handle). */
void kv_att_add_hits(kv_att *a, uint64_t n);

/* ---- batches: every record of a call is submitted, then the writer's
 * doorbell is rung once and the caller waits once (or not at all). */

/** Upsert the n pairs of `items` (kv_item: borrowed key/value pointers and
 *  lengths in bytes; read during the call only; n may be 0). Every key is
 *  checked first (1..4096 bytes): on KV_INVALID nothing is submitted. The
 *  records enter this handle's ring in order, the doorbell is rung once,
 *  then `flags` (as kv_att_put's) decide the return: 0 when the writer has
 *  applied every record (n == 0: every earlier write of the handle),
 *  KV_ATT_ASYNC at once (later reads of the handle wait for them),
 *  KV_ATT_SYNC once they are committed. When the ring fills up the
 *  doorbell is rung early and the call waits for room. A pair larger than
 *  half the ring goes as a stream, as kv_att_put sends it: after the pairs
 *  before it are applied, and committed before the next pair is submitted.
 *  Returns KV_OK, KV_INVALID, KV_NOMEM, KV_IO (writer gone and none came
 *  back; pairs submitted before are kept and applied by the next writer).
 *  Same thread rules as kv_att_put. */
kv_status kv_att_put_many(kv_att *a, const kv_item *items, size_t n, int flags);

/** Delete n keys (keys[i] of klens[i] bytes; arrays and keys borrowed for
 *  the call; n may be 0). First every key is looked up (after this
 *  handle's earlier writes are applied, as kv_att_exists does); *removed
 *  (may be NULL) = number of distinct keys that existed then (a key listed
 *  twice counts once). A key of length 0 or > 4096 that exists fails the
 *  whole call with KV_INVALID before anything is submitted (one that does
 *  not exist is skipped). Then one DEL record per distinct key enters the
 *  ring, the doorbell is rung once, and `flags` decide the return as in
 *  kv_att_put_many. Returns KV_OK, KV_INVALID, KV_NOMEM, KV_IO, or a
 *  kv_att_get status (KV_CORRUPT, KV_BUSY) of a lookup. */
kv_status kv_att_delete_many(kv_att *a, const void *const *keys, const size_t *klens, size_t n,
                             int flags, size_t *removed);

/* ---- table operations through the writer (KVSHM_MSG_EXEC) ------------
 * A store other than the served KV table (TextVault, VectorKVault) sends
 * each write, encoded by kvshm/ops.h, to the writer serving its file and
 * reads its own writes through its own connection once the call returned
 * (the writer replies after the commit). A kv_exec is a connection to
 * whichever writer serves the file now: made at the first call, made again
 * when the writer changed (docs/shared-mode.md, "Every class through the
 * writer"). One thread at a time per handle; a forked child's first call
 * makes its own connection. */
typedef struct kv_exec kv_exec;

/** A handle for `db_path` (not connected yet). KV_OK; KV_NOTFOUND (the
 *  file does not exist); KV_NOMEM. */
kv_status kv_exec_open(const char *db_path, kv_exec **out);

/** Close the connection and free (NULL: no-op). A handle connected to a
 *  writer tells it first that it is closing (EXEC_END, no reply awaited):
 *  the writer deletes the handle's record of applied operations. */
void kv_exec_close(kv_exec *x);

/** 1 if a live writer serves the file now (registry locked and ready, any
 *  table), else 0. One open, fcntl and pread. The commit guard of a store
 *  that routes its writes (kv_text_set_commit_guard, ...). Any thread. */
int kv_exec_served(const kv_exec *x);

/** Send the encoded operation op[0..len) to the writer and wait for its
 *  reply. *reached = 1 when a writer received it and replied: the return
 *  value is then the operation's status, *res and *rlen its result bytes (owned
 *  by the handle, valid until its next call) or, on failure, the message is
 *  kv_exec_errmsg's. *reached = 0 when no writer serves the file (none
 *  ready, or it stopped or died and no new one is ready): the operation was
 *  not applied by a writer that stopped cleanly; the caller runs it itself.
 *  A writer that dies (kill -9) after receiving it may have committed it:
 *  the operation is then unsettled (kv_exec_unsettled), and the caller must
 *  look whether it was applied before it applies it itself.
 *  Exactly once: each call is a new operation (the handle's next number),
 *  except while the last one is unsettled: then the call is its re-send and
 *  keeps its number, and a writer that finds it applied replies with the
 *  recorded result instead of applying it again (docs/shared-mode.md,
 *  "Exactly once"). Re-sends inside one call (the writer changed) keep it
 *  too. `result_max` is the largest result the operation can have (bytes):
 *  operations or results above one packet travel in a memfd. Blocks until
 *  the reply. */
kv_status kv_exec_call(kv_exec *x, const void *op, size_t len, size_t result_max,
                       const uint8_t **res, size_t *rlen, int *reached);

/** 1 when the handle's last operation reached a writer that gave no reply
 *  (it died, possibly after committing it), with the handle's token and the
 *  operation's number in token[0..16) and *seq: the key of its record
 *  (kvault/oprec.h, kv_oprec_get through the caller's own connection: a
 *  record with that seq means the operation was applied, with that status
 *  and result). 0 otherwise. */
int kv_exec_unsettled(const kv_exec *x, uint8_t token[16], uint64_t *seq);

/** The caller is done with the unsettled operation (it found its record,
 *  or found none and applies it itself): the next call is a new
 *  operation. No-op when none is unsettled. */
void kv_exec_settle(kv_exec *x);

/** Message of the last failed call ("" if none). */
const char *kv_exec_errmsg(const kv_exec *x);

/* ---- pipelined operations: sent without waiting for their replies ------
 * (docs/shared-mode.md, "Pipelined inserts"). The handle keeps each one
 * (its bytes and number) until its reply arrives; the replies come in
 * order. A writer that dies is handed every one without a reply again
 * (with its number: the next writer replies with the record to those the
 * dead one applied, exactly once); when no writer serves the file any
 * more, the caller applies them itself (kv_exec_posted_op). A sync call
 * (kv_exec_call) waits for the pipelined ones first. */

/** Most bytes of an operation kv_exec_post takes: one socket packet
 *  (64 KiB) less its header and the operation's id (24 bytes each). */
#define KV_EXEC_POST_MAX (64u * 1024u - 48u)

/** Send the encoded operation op[0..len) (len <= KV_EXEC_POST_MAX, else
 *  KV_INVALID) as the handle's next operation and return without its
 *  reply: the replies that arrived meanwhile are read, and with 64 without
 *  a reply the call waits until 32 are left. *queued = 1 when the
 *  operation was sent (it is the handle's to settle now). *reached = 1:
 *  a writer has it. *reached = 0: no writer serves the file: either
 *  nothing was sent (*queued 0) and the caller applies the operation
 *  itself, or the writer went away with operations of the handle
 *  unreplied (kv_exec_posted > 0, *queued may be 1) and the caller
 *  settles them as kv_exec_posted_op says. A failure an earlier reply
 *  reported is returned before anything is sent (*queued 0, *reached 1):
 *  an operation whose call returned a failure was never sent. After the
 *  send, the call returns only this operation's own failure; one of an
 *  earlier operation read meanwhile is kept for the next call (this one,
 *  kv_exec_flush or kv_exec_failure). Returns KV_OK, KV_INVALID (too
 *  large, or a sync operation is unsettled), KV_NOMEM, KV_IO, KV_NOTFOUND
 *  (*reached 0) or a reply's failure. Blocks while the socket is full. */
kv_status kv_exec_post(kv_exec *x, const void *op, size_t len, int *reached, int *queued);

/** Wait for the reply of every pipelined operation (re-sending them to the
 *  next writer when the one that had them died). *reached = 1: every one
 *  is replied; the return value is the first failure a reply reported
 *  since the last flush (message: kv_exec_errmsg), or KV_OK. *reached = 0
 *  (KV_NOTFOUND): no writer serves the file and kv_exec_posted
 *  operations have no reply: the caller settles them (kv_exec_posted_op,
 *  then kv_exec_forget; a failure a reply reported before is kept for
 *  kv_exec_failure). In a forked child the parent's are not the
 *  child's: KV_OK at once. */
kv_status kv_exec_flush(kv_exec *x, int *reached);

/** The failure a reply of a pipelined operation reported that no call
 *  returned yet (message: kv_exec_errmsg), or KV_OK; cleared. For a caller
 *  that settles the operations itself after kv_exec_flush's *reached = 0
 *  (failures read before the writer went away). */
kv_status kv_exec_failure(kv_exec *x);

/** Pipelined operations without a reply (0 in a forked child). */
size_t kv_exec_posted(const kv_exec *x);

/** Pipelined operation i (0: the oldest) without a reply: its bytes (owned
 *  by the handle, valid until kv_exec_forget or the next call) and its
 *  number. A writer applied it if the handle's record
 *  (kv_oprec_get(token of kv_exec_token)) holds that number or a larger
 *  one; else the caller applies it itself. i < kv_exec_posted. */
void kv_exec_posted_op(const kv_exec *x, size_t i, const uint8_t **op, size_t *len,
                       uint64_t *seq);

/** The handle's token (the key of its record, kvault/oprec.h). */
void kv_exec_token(const kv_exec *x, uint8_t token[16]);

/** Drop the pipelined operations without a reply (the caller settled
 *  them) and any failure kept for kv_exec_flush. */
void kv_exec_forget(kv_exec *x);

#ifdef __cplusplus
}
#endif
#endif /* KVSHM_ATTACH_H */
