/*
 * vector.h - vector store of libkvault: exact k-nearest-neighbour search
 * over vectors kept in a SQLite file (the engine behind
 * kohakuvault.VectorKVault).
 *
 * Layout (docs/vectors.md has the full description):
 *
 *   CREATE TABLE <table> (id INTEGER PRIMARY KEY, value_ref INTEGER NOT NULL,
 *       vector BLOB NOT NULL, chunk_id INTEGER, chunk_offset INTEGER)
 *   CREATE TABLE <table>_chunks (chunk_id INTEGER PRIMARY KEY,
 *       size INTEGER NOT NULL, validity BLOB NOT NULL, rowids BLOB NOT NULL)
 *   CREATE TABLE <table>_chunk_vectors (chunk_id INTEGER PRIMARY KEY,
 *       vectors BLOB NOT NULL)
 *   CREATE TABLE <table>_values (id INTEGER PRIMARY KEY AUTOINCREMENT,
 *       value BLOB NOT NULL)
 *
 * Vectors live in chunks: `vectors` holds `size` fixed-size elements back
 * to back, `rowids` their ids (int64 LE), `validity` one bit per slot
 * (bit s = bit s%8 of byte s/8; cleared on delete). The <table> row of a
 * vector maps its id to (chunk_id, chunk_offset) and to its value row.
 * Recent inserts wait as "unchunked" rows (chunk_id NULL, the bytes in
 * `vector`) until a chunk's worth of them is packed. A table written in the
 * older row-per-vector layout (no chunk columns) gets the two columns on
 * open and its rows are unchunked rows. Element bytes: float32 LE (4*N),
 * int8 (N) or bits (N/8, bit i = bit (i%8) of byte i/8).
 *
 * A table created by sqlite-vec as a `vec0` virtual table (as kohakuvault
 * releases on sqlite-vec wrote them) opens read-only: its shadow tables are read directly,
 * no extension needed; kv_vector_migrate_vec0 converts it.
 *
 * Search is an exact scan of an in-memory copy of the vectors held by the
 * handle (loaded on first use, reloaded when another connection commits,
 * detected by PRAGMA data_version): SIMD kernels chosen at run time fused
 * with a bounded top-k heap, optionally on several threads. Distances follow
 * sqlite-vec: cosine = 1 - a.b / (|a| |b|) (a zero vector gives 1.0 here,
 * where sqlite-vec gives NaN); L2 = Euclidean distance (not squared);
 * L1 = sum of absolute differences; hamming = number of differing bits. The
 * reported distances are recomputed for the hits with double accumulators
 * (kv_vector_distance) and rounded to float32. With the cosine metric, f32
 * vectors are L2-normalised before they are stored and before they are
 * searched for (a zero vector is left as is).
 *
 * WAL checkpoints: a commit that leaves 1000 WAL frames or more (SQLite's
 * wal_autocheckpoint) wakes a checkpointer thread of the handle, which runs
 * a PASSIVE checkpoint on a connection of its own instead of the commit
 * copying the WAL into the database file itself (started at the first such
 * commit; stopped by kv_vector_close). A fork() waits for a checkpoint in
 * progress (pthread_atfork), so the child inherits no SQLite mutex held.
 *
 * Thread safety: a kv_vector handle is not internally locked: one thread at
 * a time (a search may start its own worker threads internally). Distinct
 * handles may be used concurrently, also from several processes (WAL). Do
 * not use a handle in a child after fork().
 */
#ifndef KVAULT_VECTOR_H
#define KVAULT_VECTOR_H

#include "kvault/kvault.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Distance metrics. */
typedef enum kv_vector_metric {
    KV_VECTOR_COSINE = 0,   /**< 1 - cosine similarity (f32 only) */
    KV_VECTOR_L2,           /**< Euclidean distance (f32, int8) */
    KV_VECTOR_L1,           /**< Manhattan distance (f32, int8) */
    KV_VECTOR_HAMMING       /**< differing bits (bit only) */
} kv_vector_metric;

/** Element types. */
typedef enum kv_vector_elem {
    KV_VECTOR_F32 = 0,      /**< float32 LE, 4 bytes per dimension */
    KV_VECTOR_I8,           /**< int8, 1 byte per dimension */
    KV_VECTOR_BIT           /**< 1 bit per dimension, dimensions % 8 == 0 */
} kv_vector_elem;

/** Largest k accepted by kv_vector_search. */
#define KV_VECTOR_MAX_K 4096

/** Opaque vector store handle. */
typedef struct kv_vector kv_vector;

/** Whether `metric` may be used with `elem` (docs/api.md §8.1: cosine → f32;
 *  L2, L1 → f32 or int8; hamming → bit). Returns 1 or 0. Thread-safe. */
KV_API int kv_vector_compatible(kv_vector_metric metric, kv_vector_elem elem);

/** Bytes of one stored vector of `dims` dimensions of type `elem`
 *  (0 for an unknown type). */
KV_API size_t kv_vector_row_bytes(kv_vector_elem elem, size_t dims);

/** Open (creating if needed) the vector store `table` in the database at
 *  `path` for vectors of `dims` dimensions, type `elem`, metric `metric`.
 *
 *  Pragmas (docs/api.md §8.1): journal_mode=WAL, synchronous=NORMAL,
 *  temp_store=MEMORY, no busy timeout. `table` must be an ASCII identifier
 *  (1..128 bytes). dims is 1..65536; bit vectors need dims % 8 == 0; the
 *  metric must be compatible with the type.
 *
 *  On success *out owns the handle (kv_vector_close). On failure *out is
 *  NULL and `err` (may be NULL) receives a message (at most errlen-1 bytes).
 *  Returns KV_OK; KV_INVALID; KV_BUSY; KV_IO; KV_CORRUPT; KV_NOMEM;
 *  KV_SQLITE. When `table` is a sqlite-vec vec0 table, the handle is
 *  read-only (writes give KV_INVALID naming migrate_vec0), its declared
 *  type and dimensions must match (else KV_INVALID) and its declared metric
 *  is used. A row-per-vector table from an older version gets its chunk
 *  columns added (one write transaction). Thread-safe. */
KV_API kv_status kv_vector_open(const char *path, const char *table, size_t dims,
                                kv_vector_metric metric, kv_vector_elem elem,
                                kv_vector **out, char *err, size_t errlen);

/** kv_db_set_commit_guard on the store's connection: `g` (NULL removes it)
 *  runs in every write transaction of `v` that commits, as there; a refused
 *  commit makes the write fail (rolled back, nothing changed) with
 *  g->refused set. `g` must outlive the guard. One thread at a time. */
KV_API void kv_vector_set_commit_guard(kv_vector *v, kv_commit_guard *g);

/** Group commit, as kv_text_tx_begin: the next writes of `v` (insert,
 *  insert_many, update, delete) join one write transaction, each in its
 *  own savepoint. KV_OK, KV_BUSY, KV_IO, KV_SQLITE. One thread at a time. */
KV_API kv_status kv_vector_tx_begin(kv_vector *v);

/** End kv_vector_tx_begin's transaction as kv_text_tx_end. When it does
 *  not commit, the handle's copy of the vectors and its write state are
 *  dropped (reloaded from the file on next use). */
KV_API kv_status kv_vector_tx_end(kv_vector *v, int commit);

/** Scan threads of `v`'s searches: 0 (the default) = automatic (one
 *  thread below 8 MiB of vectors, else one per online CPU), n > 0 = n. */
KV_API void kv_vector_set_threads(kv_vector *v, int threads);

/** 1 if `v` is a sqlite-vec vec0 table opened read-only, else 0. */
KV_API int kv_vector_is_vec0(const kv_vector *v);

/** Stop and join the handle's checkpointer thread (waiting for a
 *  checkpoint in progress), then passive WAL checkpoint (errors ignored),
 *  finalize, close, free. NULL is a no-op. */
KV_API void kv_vector_close(kv_vector *v);

/** Message of the last failure on `v` ("" if none); valid until the next
 *  call on `v`. */
KV_API const char *kv_vector_errmsg(const kv_vector *v);

/** Insert a vector and its value in one transaction. `vec` holds
 *  kv_vector_row_bytes(elem, dims) bytes (`vbytes` must equal it) in the
 *  store's element type; for f32 any alignment is accepted. With the cosine
 *  metric the stored copy is L2-normalised. `val` is `vlen` opaque bytes
 *  (may be empty). *id receives the vector row id. Copies every buffer.
 *  Returns KV_OK; KV_INVALID (wrong byte count, non-finite f32 element);
 *  KV_BUSY; KV_IO; KV_NOMEM; KV_SQLITE. */
KV_API kv_status kv_vector_insert(kv_vector *v, const void *vec, size_t vbytes,
                                  const void *val, size_t vlen, int64_t *id);

/** Insert `n` vectors and their values in one transaction. `vecs` holds n
 *  rows back to back (`vbytes` must be n * kv_vector_row_bytes); vals[i]
 *  is vlens[i] bytes (vals NULL: every value empty). ids[0..n) receives
 *  the new row ids (consecutive, ascending; above every block of ids
 *  leased, kv_vector_lease). Every row is checked before
 *  anything is written; whole chunks are written as one BLOB each (with the
 *  cosine metric normalised chunk by chunk into a buffer of one chunk, so
 *  the input is not copied whole), the values and map rows 64 per INSERT
 *  statement. On failure nothing was inserted. Returns as kv_vector_insert;
 *  KV_INVALID also for a vec0 table (read-only). */
KV_API kv_status kv_vector_insert_many(kv_vector *v, size_t n, const void *vecs, size_t vbytes,
                                       const void *const *vals, const size_t *vlens, int64_t *ids);

/** Check one vector as kv_vector_insert would, without writing: KV_OK, or
 *  KV_INVALID (vec0 table, NULL vector, wrong byte count, non-finite f32
 *  element) with the message insert gives. A client pipelining inserts
 *  (docs/shared-mode.md, "Pipelined inserts") raises these before it
 *  sends. One thread at a time. */
KV_API kv_status kv_vector_check(kv_vector *v, const void *vec, size_t vbytes);

/** Grant a block of n (1..KV_LEASE_MAX) ids [*lo, *lo + n) for pipelined
 *  inserts (kv_lease_grant, kvault/oprec.h: above every stored and leased
 *  id), in a write transaction of its own (a savepoint inside
 *  kv_vector_tx_begin's), and remember it: until the block is used up,
 *  given back or idle for 15 s, this handle packs chunks only from rows
 *  below it, so rows inserted at its ids later need no repacking.
 *  KV_OK; KV_INVALID (n out of range, vec0 table); KV_BUSY; KV_IO;
 *  KV_NOMEM; KV_SQLITE. One thread at a time. */
KV_API kv_status kv_vector_lease(kv_vector *v, int64_t n, int64_t *lo);

/** Give back the unused tail [next, end) of a block kv_vector_lease
 *  granted (kv_lease_return) and forget the block. Statuses as
 *  kv_lease_return. One thread at a time. */
KV_API kv_status kv_vector_lease_return(kv_vector *v, int64_t next, int64_t end);

/** Insert one vector and its value, as kv_vector_insert, at id `id` (1 ..
 *  INT64_MAX / 2, not stored): the id a pipelining client took from its
 *  block. Rows may
 *  arrive in any id order: one below the chunked rows first unpacks the
 *  chunks above it (the rows stay; only their place in the file changes).
 *  Returns as kv_vector_insert; KV_INVALID also for an id out of range or
 *  one already stored ("vector id N is already stored"). One thread at a
 *  time. */
KV_API kv_status kv_vector_insert_at(kv_vector *v, int64_t id, const void *vec, size_t vbytes,
                                     const void *val, size_t vlen);

/** One search result; `val` borrows the kv_vector_hits holding it. */
typedef struct kv_vector_hit {
    int64_t id;            /**< vector row id */
    double distance;       /**< distance to the query (float32-rounded) */
    const uint8_t *val;    /**< value bytes */
    size_t vlen;           /**< bytes at val */
} kv_vector_hit;

/** Results of kv_vector_search in ascending distance (ties: ascending id).
 *  Free with kv_vector_hits_free. */
typedef struct kv_vector_hits {
    size_t n;              /**< number of hits (<= k) */
    kv_vector_hit *hits;   /**< n hits */
    void *mem_;            /**< private: value storage */
} kv_vector_hits;

/** Exact k-NN: the `k` stored vectors nearest to `query` under the store's
 *  metric, with their values, read in one snapshot. `query` is in the
 *  store's element type and has the row byte count (`qbytes`); with the
 *  cosine metric it is normalised first. Cost: one pass over the handle's
 *  in-memory copy (O(rows * dims)), plus loading that copy when it is
 *  missing or stale; the copy takes rows * row bytes per handle.
 *  k == 0 or an empty table give zero hits.
 *
 *  On KV_OK *out owns the results (kv_vector_hits_free). Returns KV_OK;
 *  KV_INVALID (k < 0, k > KV_VECTOR_MAX_K, wrong byte count, non-finite f32);
 *  KV_CORRUPT (a stored vector has a different size than the store's
 *  dimensions); KV_BUSY; KV_IO; KV_NOMEM; KV_SQLITE. */
KV_API kv_status kv_vector_search(kv_vector *v, const void *query, size_t qbytes,
                                  int64_t k, kv_vector_hits **out);

/** Exact k-NN for `nq` queries at once (`queries`: nq rows back to back,
 *  `qbytes` = nq * row bytes), in one snapshot. The stored vectors are read
 *  once, in blocks that stay in cache while every query is scored against
 *  them. out[0..nq) receives one result set each (free each with
 *  kv_vector_hits_free); all NULL on failure. Statuses as kv_vector_search. */
KV_API kv_status kv_vector_search_many(kv_vector *v, const void *queries, size_t nq, size_t qbytes,
                                       int64_t k, kv_vector_hits **out);

/** Convert the sqlite-vec vec0 table `table` of the database at `path` to
 *  this store's layout, in place, in one transaction: its vectors (ids and
 *  value_refs kept; normalised when its metric is cosine) are written as
 *  chunks, its shadow tables are dropped and its schema entry is removed
 *  (a virtual table has no b-tree pages; the entry is deleted with
 *  PRAGMA writable_schema and the schema cookie is bumped). The
 *  <table>_values rows are untouched. *moved (may be NULL) receives the
 *  number of vectors. On failure nothing changed and `err` gets a message.
 *  Returns KV_OK; KV_INVALID (not a vec0 table, unsupported declaration);
 *  KV_BUSY; KV_IO; KV_CORRUPT; KV_NOMEM; KV_SQLITE. */
KV_API kv_status kv_vector_migrate_vec0(const char *path, const char *table, int64_t *moved,
                                        char *err, size_t errlen);

/** Free search results (NULL is a no-op). */
KV_API void kv_vector_hits_free(kv_vector_hits *h);

/** Fetch row `id`: on KV_OK *vec receives a mi_malloc'd copy of the stored
 *  vector bytes (*vbytes; normalised if cosine) and *val a mi_malloc'd copy
 *  of the value (*vlen); free both with kv_vector_free. Returns KV_OK;
 *  KV_NOTFOUND (message "ID <id> not found"); KV_BUSY; KV_IO; KV_NOMEM;
 *  KV_SQLITE. */
KV_API kv_status kv_vector_get_by_id(kv_vector *v, int64_t id, uint8_t **vec, size_t *vbytes,
                                     uint8_t **val, size_t *vlen);

/** Free memory returned by this module (NULL is a no-op). */
KV_API void kv_vector_free(void *p);

/** Delete row `id` and its value row in one transaction; *removed (may be
 *  NULL) is 1 if a row was removed, 0 for an unknown id (not an error).
 *  Returns KV_OK, KV_BUSY, KV_IO, KV_SQLITE. */
KV_API kv_status kv_vector_delete(kv_vector *v, int64_t id, int *removed);

/** Update row `id` in one transaction: a non-NULL `vec` (`vbytes` bytes,
 *  normalised if cosine) replaces the vector, a no-op for an unknown id; a
 *  non-NULL `val` (`vlen` bytes) replaces the value, and an unknown id then
 *  gives KV_NOTFOUND ("Query returned no rows") with nothing changed.
 *  Returns KV_OK, KV_NOTFOUND, KV_INVALID (both NULL, wrong byte count),
 *  KV_BUSY, KV_IO, KV_SQLITE. */
KV_API kv_status kv_vector_update(kv_vector *v, int64_t id, const void *vec, size_t vbytes,
                                  const void *val, size_t vlen);

/** *found = 1 if row `id` exists. Returns KV_OK, KV_BUSY, KV_IO, KV_SQLITE. */
KV_API kv_status kv_vector_exists(kv_vector *v, int64_t id, int *found);

/** *count = number of vector rows. Returns KV_OK, KV_BUSY, KV_IO, KV_SQLITE. */
KV_API kv_status kv_vector_count(kv_vector *v, int64_t *count);

/** Distance between two vectors of `dims` dimensions of type `elem` under
 *  `metric` (no normalisation is applied here), as used by the search.
 *  For KV_VECTOR_BIT, a and b hold dims/8 bytes. Pure function, thread-safe. */
KV_API double kv_vector_distance(kv_vector_metric metric, kv_vector_elem elem, const void *a,
                                 const void *b, size_t dims);

#ifdef __cplusplus
}
#endif
#endif /* KVAULT_VECTOR_H */
