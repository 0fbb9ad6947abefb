/*
 * vector.c - the vector store: vectors in contiguous BLOB chunks plus a row
 * per vector, an in-memory decoded copy per handle, and exact k-NN by a
 * fused scan (kernels in vec_kernel.c). Layout and distance definitions:
 * include/kvault/vector.h and docs/vectors.md.
 *
 * Sections: 1. distances  2. the in-memory copy  3. open/close
 *           4. writes  5. search  6. reads by id  7. vec0 migration.
 *
 * Storage (native layout):
 *   <t>(id, value_ref, vector, chunk_id, chunk_offset)  one row per vector:
 *       `vector` holds the bytes while the row is not yet in a chunk
 *       (chunk_id NULL, "unchunked"), and x'' once it is;
 *   <t>_chunks(chunk_id, size, validity, rowids)   per chunk: slot count,
 *       validity bitmap (bit s = byte s/8, bit s%8), int64 LE row ids;
 *   <t>_chunk_vectors(chunk_id, vectors)           size * row_bytes bytes;
 *   <t>_values                                     the values.
 * New rows are unchunked; once chunk_rows(v) of them exist, the oldest
 * chunk_rows(v) are packed into a new chunk (same transaction). A bulk
 * insert writes whole chunks directly. Deleting a chunked row clears its
 * validity bit; a chunk with no valid slot left is removed.
 *
 * The copy in memory mirrors the chunks and the unchunked rows. It is
 * loaded on the first search and reloaded when `PRAGMA data_version`
 * reports a commit by another connection; this handle's own writes are
 * applied to it after they commit (a failed write drops it).
 */
#include "store_internal.h"
#include "kvault/vector.h"
#include "kvault/oprec.h"
#include "vec_kernel.h"

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "vector.c reads stored float32/int64 LE data in place: little-endian hosts only"
#endif

/* Bytes aimed at per chunk; the slot count is this over the row size,
 * rounded down to a multiple of 64 and kept within 64..4096. */
#define CHUNK_TARGET_BYTES (1u << 20)
/* Tables of at least this many bytes are scanned by several threads when
 * the thread count is automatic. */
#define PARALLEL_MIN_BYTES (8u << 20)
/* Bytes of vectors in one scan block of search_many (sized to stay in L2),
 * and the queries scored against each block in one pass. */
#define MANY_BLOCK_BYTES (64u << 10)
#define MANY_GROUP 256
/* Rows per multi-row INSERT of a bulk write (one statement amortises the
 * statement's fixed cost and, for the values, the AUTOINCREMENT update). */
#define INS_BATCH 64
/* WAL frames after a commit from which the checkpointer is woken (SQLite's
 * default wal_autocheckpoint). */
#define CKPT_FRAMES 1000
/* Blocks of leased ids (section 5b): a block no insert advanced for this
 * long no longer holds chunk packing back (its client died; a live client
 * gives back a block idle for 5 s before it inserts again,
 * KVPY_LEASE_IDLE_MS in python/ext/kvpy.h). */
#define LEASE_IDLE_MS 15000
/* Chunks one insert at leased ids cuts at most (pack_below): rows held
 * back by a long block are packed over the next inserts, not all by one. */
#define PACK_MAX_CHUNKS 8
/* Largest id an insert may bring (kv_vector_insert_at): ids stay far from
 * int64 overflow in the handle's arithmetic. */
#define ID_MAX (INT64_MAX / 2)
/* The block taken for granted when an insert brings an id of a block this
 * handle did not grant (one a writer before it granted): the largest block
 * a client asks for. */
#define LEASE_IMPLICIT 256
/* Rows inserted at leased ids between two looks for a chunk to cut below
 * the horizon that found none (pack_below). */
#define PACK_LOOK_EVERY 64

/* One chunk of the in-memory copy (also used for the unchunked rows, then
 * with valid == NULL: every slot valid). */
typedef struct vchunk {
    int64_t chunk_id;
    size_t size;       /* slots */
    size_t cap;        /* allocated slots (growable unchunked tail only) */
    uint8_t *valid;    /* (size+7)/8 bytes, or NULL */
    int64_t *ids;      /* size row ids */
    int64_t *refs;     /* size value_refs (vec0 tables), else NULL */
    uint8_t *vecs;     /* size * row_bytes, 64-byte aligned */
} vchunk;

typedef struct vcache {
    vchunk *chunks;    /* ascending chunk_id */
    size_t n, cap;
    vchunk tail;       /* unchunked rows, ascending id */
    int loaded;
    int64_t dv;        /* PRAGMA data_version when loaded */
} vcache;

/* WAL checkpointer of a handle: a thread with its own connection that
 * runs a passive checkpoint whenever a commit of the handle leaves
 * CKPT_FRAMES frames or more in the WAL (section 3). */
typedef struct vckpt {
    pthread_t th;
    pthread_mutex_t m;
    pthread_cond_t c;
    int sync_init;     /* m and c initialised */
    int started;       /* th runs */
    int stop;          /* ask th to exit */
    int pending;       /* a checkpoint is wanted */
    int failed;        /* th could not open its connection and exited */
    char *path;        /* database file (owned); NULL: no checkpointer */
} vckpt;

struct kv_vector {
    sqlite3 *db;              /* owned connection */
    char *table;              /* owned table name */
    size_t dims;              /* dimensions */
    size_t row_bytes;         /* bytes of one stored vector */
    size_t chunk_rows;        /* slots of a new chunk */
    kv_vector_metric metric;
    kv_vector_elem elem;
    int vec0;                 /* table is sqlite-vec vec0 (read-only) */
    int threads;              /* 0 = automatic */
    kvk_score_fn score;       /* kernel for (metric, elem) */
    kvk_prep_fn prep;         /* f32 row check and normalisation */
    uint8_t *scratch;         /* row_bytes-sized buffer for normalised copies */
    vcache cache;
    /* write state, valid while ws_dv == data_version */
    int ws_valid;
    int64_t ws_dv, next_id, next_chunk, unchunked;
    int64_t mark;             /* largest id in a chunk: rows above it are unchunked */
    sqlite3_stmt *st_dv;        /* PRAGMA data_version */
    sqlite3_stmt *st_ins_val;   /* INSERT INTO t_values(value) VALUES(?1) */
    sqlite3_stmt *st_ins_row;   /* INSERT INTO t VALUES(?1..?5) */
    sqlite3_stmt *st_ins_vals;  /* INSERT INTO t_values(value): INS_BATCH rows */
    sqlite3_stmt *st_ins_rows;  /* INSERT INTO t: INS_BATCH chunked rows (id, ref, chunk, slot) */
    sqlite3_stmt *st_ins_chunk; /* INSERT INTO t_chunks VALUES(?1..?4) */
    sqlite3_stmt *st_ins_cvec;  /* INSERT INTO t_chunk_vectors VALUES(?1, ?2) */
    sqlite3_stmt *st_wstate;    /* max id, max chunk_id */
    sqlite3_stmt *st_last;      /* size, validity, rowids of the last chunk */
    sqlite3_stmt *st_above;     /* count of rows with id > ?1 */
    sqlite3_stmt *st_layout;    /* bytes of the last chunk's vectors and of one row above ?1 */
    sqlite3_stmt *st_unchunked; /* rows with id > ?1, ascending */
    sqlite3_stmt *st_move;      /* mark a row chunked */
    sqlite3_stmt *st_load;      /* chunks with their vectors (and vec0 refs) */
    sqlite3_stmt *st_load_tail; /* unchunked rows (id > ?1) */
    sqlite3_stmt *st_get_val;   /* SELECT value FROM t_values WHERE id=?1 */
    sqlite3_stmt *st_get_row;   /* value_ref, vector, chunk_id, chunk_offset by id */
    sqlite3_stmt *st_del_row;   /* DELETE FROM t WHERE id=?1 */
    sqlite3_stmt *st_del_val;   /* DELETE FROM t_values WHERE id=?1 */
    sqlite3_stmt *st_del_chunk; /* DELETE FROM t_chunks WHERE chunk_id=?1 */
    sqlite3_stmt *st_del_cvec;  /* DELETE FROM t_chunk_vectors WHERE chunk_id=?1 */
    sqlite3_stmt *st_upd_vec;   /* UPDATE t SET vector=?1 WHERE id=?2 */
    sqlite3_stmt *st_upd_val;   /* UPDATE t_values SET value=?1 WHERE id=?2 */
    sqlite3_stmt *st_count;     /* SELECT COUNT(*) FROM t */
    kvi_err err;                /* last failure */
    kvi_oprec_st oprec;         /* operation records (oprec.c) */
    vckpt ckpt;                 /* WAL checkpoints off the writing thread */
    sqlite3_stmt *st_cvec;      /* SELECT vectors FROM t_chunk_vectors WHERE chunk_id=?1 */
    sqlite3_stmt *st_unmove;    /* mark a row unchunked, with its vector */
    sqlite3_stmt *st_nth;       /* the ?2-th (0-based) row id above ?1 */
    struct vlease {             /* blocks of ids granted and not used up (section 5b) */
        int64_t next, end;      /* ids [next, end) still to come */
        uint64_t touched_ms;    /* grant or last insert (mono_ms) */
    } *leases;
    size_t nleases, cap_leases;
    int granted;                /* kv_vector_lease granted a block: a writer's handle */
    int pack_wait;              /* rows to insert before pack_below looks again */
};

/* ====================================================================== */
/* 1. Distances                                                            */
/* ====================================================================== */

static inline float load_f32(const uint8_t *p)
{
    float f;
    memcpy(&f, p, sizeof f); /* stored LE; host LE (checked above) */
    return f;
}

static double dist_f32(kv_vector_metric m, const uint8_t *a, const uint8_t *b, size_t n)
{
    double acc = 0.0;
    switch (m) {
    case KV_VECTOR_COSINE: {
        double dot = 0.0, na = 0.0, nb = 0.0;
        for (size_t i = 0; i < n; i++) {
            double x = load_f32(a + 4 * i), y = load_f32(b + 4 * i);
            dot += x * y;
            na += x * x;
            nb += y * y;
        }
        if (na == 0.0 || nb == 0.0)
            return 1.0; /* no direction: similarity 0 */
        acc = 1.0 - dot / (sqrt(na) * sqrt(nb));
        break;
    }
    case KV_VECTOR_L2:
        for (size_t i = 0; i < n; i++) {
            double d = (double)load_f32(a + 4 * i) - (double)load_f32(b + 4 * i);
            acc += d * d;
        }
        acc = sqrt(acc);
        break;
    case KV_VECTOR_L1:
        for (size_t i = 0; i < n; i++)
            acc += fabs((double)load_f32(a + 4 * i) - (double)load_f32(b + 4 * i));
        break;
    case KV_VECTOR_HAMMING:
        return NAN;
    }
    return acc;
}

static double dist_i8(kv_vector_metric m, const int8_t *a, const int8_t *b, size_t n)
{
    int64_t acc = 0;
    if (m == KV_VECTOR_L2) {
        for (size_t i = 0; i < n; i++) {
            int64_t d = (int64_t)a[i] - b[i];
            acc += d * d;
        }
        return sqrt((double)acc);
    }
    if (m == KV_VECTOR_L1) {
        for (size_t i = 0; i < n; i++)
            acc += a[i] > b[i] ? a[i] - b[i] : b[i] - a[i];
        return (double)acc;
    }
    return NAN;
}

static double dist_bit(const uint8_t *a, const uint8_t *b, size_t nbytes)
{
    uint64_t acc = 0;
    for (size_t i = 0; i < nbytes; i++)
        acc += (uint64_t)__builtin_popcount((unsigned)(a[i] ^ b[i]));
    return (double)acc;
}

/* The distance before rounding to float32 precision. */
static double distance_exact(kv_vector_metric metric, kv_vector_elem elem, const void *a, const void *b,
                             size_t dims)
{
    double d;
    switch (elem) {
    case KV_VECTOR_F32:
        d = dist_f32(metric, a, b, dims);
        break;
    case KV_VECTOR_I8:
        d = dist_i8(metric, a, b, dims);
        break;
    case KV_VECTOR_BIT:
        d = metric == KV_VECTOR_HAMMING ? dist_bit(a, b, dims / 8) : NAN;
        break;
    default:
        d = NAN;
    }
    return d;
}

double kv_vector_distance(kv_vector_metric metric, kv_vector_elem elem, const void *a, const void *b,
                          size_t dims)
{
    return (double)(float)distance_exact(metric, elem, a, b, dims); /* as sqlite-vec reports */
}

int kv_vector_compatible(kv_vector_metric metric, kv_vector_elem elem)
{
    switch (metric) {
    case KV_VECTOR_COSINE:
        return elem == KV_VECTOR_F32;
    case KV_VECTOR_L2:
    case KV_VECTOR_L1:
        return elem == KV_VECTOR_F32 || elem == KV_VECTOR_I8;
    case KV_VECTOR_HAMMING:
        return elem == KV_VECTOR_BIT;
    }
    return 0;
}

size_t kv_vector_row_bytes(kv_vector_elem elem, size_t dims)
{
    switch (elem) {
    case KV_VECTOR_F32:
        return 4 * dims;
    case KV_VECTOR_I8:
        return dims;
    case KV_VECTOR_BIT:
        return dims / 8;
    }
    return 0;
}

static size_t chunk_rows_for(size_t row_bytes)
{
    size_t n = (CHUNK_TARGET_BYTES / row_bytes) & ~(size_t)63;
    return n < 64 ? 64 : n > 4096 ? 4096 : n;
}

/* ====================================================================== */
/* 2. The in-memory copy                                                    */
/* ====================================================================== */

static void vchunk_free(vchunk *c)
{
    kvi_free(c->valid);
    kvi_free(c->ids);
    kvi_free(c->refs);
    kvi_free(c->vecs);
    memset(c, 0, sizeof *c);
}

static void cache_drop(vcache *c)
{
    for (size_t i = 0; i < c->n; i++)
        vchunk_free(&c->chunks[i]);
    kvi_free(c->chunks);
    vchunk_free(&c->tail);
    memset(c, 0, sizeof *c);
}

/* Allocate a chunk of `size` slots (ids, vectors; validity and refs when
 * asked). NULL members on failure: the caller checks `ids && vecs`. */
static int vchunk_alloc(vchunk *c, size_t size, size_t row_bytes, int with_valid, int with_refs)
{
    memset(c, 0, sizeof *c);
    c->size = c->cap = size;
    c->ids = kvi_malloc(size ? size * 8 : 8);
    c->vecs = mi_malloc_aligned(size ? size * row_bytes : 64, 64);
    if (with_valid)
        c->valid = kvi_calloc((size + 7) / 8 + 1, 1);
    if (with_refs)
        c->refs = kvi_malloc(size ? size * 8 : 8);
    if (!c->ids || !c->vecs || (with_valid && !c->valid) || (with_refs && !c->refs)) {
        vchunk_free(c);
        return -1;
    }
    return 0;
}

/* Append a chunk (moved in) to the copy. */
static int cache_push(vcache *c, vchunk *ch)
{
    if (c->n == c->cap) {
        size_t ncap = c->cap ? 2 * c->cap : 16;
        vchunk *p = kvi_realloc(c->chunks, ncap * sizeof *p);
        if (!p)
            return -1;
        c->chunks = p;
        c->cap = ncap;
    }
    c->chunks[c->n++] = *ch;
    memset(ch, 0, sizeof *ch);
    return 0;
}

/* Append n rows to the unchunked tail of the copy. */
static int tail_append(vcache *c, size_t row_bytes, const int64_t *ids, const uint8_t *vecs, size_t n)
{
    vchunk *t = &c->tail;
    if (t->size + n > t->cap) {
        size_t ncap = t->cap ? t->cap : 64;
        while (ncap < t->size + n)
            ncap *= 2;
        int64_t *ni = kvi_realloc(t->ids, ncap * 8);
        if (!ni)
            return -1;
        t->ids = ni;
        uint8_t *nv = mi_realloc_aligned(t->vecs, ncap * row_bytes, 64);
        if (!nv)
            return -1;
        t->vecs = nv;
        t->cap = ncap;
    }
    memcpy(t->ids + t->size, ids, n * 8);
    memcpy(t->vecs + t->size * row_bytes, vecs, n * row_bytes);
    t->size += n;
    return 0;
}

static kv_status sql_fail(kv_vector *v, int rc, const char *op)
{
    return kvi_err_sqlite(&v->err, v->db, rc, op);
}

/* PRAGMA data_version of this connection into *dv. */
static kv_status data_version(kv_vector *v, int64_t *dv)
{
    int rc = sqlite3_step(v->st_dv);
    kv_status st = KV_OK;
    if (rc == SQLITE_ROW)
        *dv = sqlite3_column_int64(v->st_dv, 0);
    else
        st = sql_fail(v, rc, "data_version");
    sqlite3_reset(v->st_dv);
    return st;
}

static kv_status corrupt_chunk(kv_vector *v, int64_t id, const char *what, size_t got, size_t want)
{
    return kvi_err_set(&v->err, KV_CORRUPT,
                       "chunk %lld: %s has %zu bytes, expected %zu (table opened with %zu dimensions)",
                       (long long)id, what, got, want, v->dims);
}

/* Decode one row of st_load (chunk_id, size, validity, rowids, vectors,
 * refs-or-NULL) into *ch. */
static kv_status load_chunk(kv_vector *v, sqlite3_stmt *s, vchunk *ch)
{
    int64_t id = sqlite3_column_int64(s, 0), size = sqlite3_column_int64(s, 1);
    if (size < 0 || size > (1 << 24))
        return kvi_err_set(&v->err, KV_CORRUPT, "chunk %lld: bad size %lld", (long long)id,
                           (long long)size);
    size_t n = (size_t)size, vb = (size_t)sqlite3_column_bytes(s, 2);
    size_t rb = (size_t)sqlite3_column_bytes(s, 3), xb = (size_t)sqlite3_column_bytes(s, 4);
    int refs = sqlite3_column_type(s, 5) != SQLITE_NULL;
    if (vb < (n + 7) / 8)
        return corrupt_chunk(v, id, "validity", vb, (n + 7) / 8);
    if (rb < n * 8)
        return corrupt_chunk(v, id, "rowids", rb, n * 8);
    if (xb != n * v->row_bytes)
        return corrupt_chunk(v, id, "vectors", xb, n * v->row_bytes);
    if (refs && (size_t)sqlite3_column_bytes(s, 5) < n * 8)
        return corrupt_chunk(v, id, "metadata", (size_t)sqlite3_column_bytes(s, 5), n * 8);
    if (vchunk_alloc(ch, n, v->row_bytes, 1, refs) < 0)
        return kvi_err_set(&v->err, KV_NOMEM, "out of memory");
    ch->chunk_id = id;
    memcpy(ch->valid, sqlite3_column_blob(s, 2), (n + 7) / 8);
    memcpy(ch->ids, sqlite3_column_blob(s, 3), n * 8);
    if (n)
        memcpy(ch->vecs, sqlite3_column_blob(s, 4), n * v->row_bytes);
    if (refs)
        memcpy(ch->refs, sqlite3_column_blob(s, 5), n * 8);
    if (v->vec0 && v->metric == KV_VECTOR_COSINE) /* vec0 stores what it was given */
        for (size_t r = 0; r < n; r++)
            v->prep(ch->vecs + r * v->row_bytes, ch->vecs + r * v->row_bytes, v->dims, 1);
    return KV_OK;
}

/* Largest valid id of a chunk (validity bitmap, int64 LE ids, size slots),
 * INT64_MIN when none: chunks are cut in id order, so this of the last
 * chunk is the watermark above which every row is unchunked. */
static int64_t chunk_mark(const void *valid, const void *ids, size_t size)
{
    const uint8_t *b = valid;
    int64_t m = INT64_MIN, id;
    for (size_t s = 0; s < size; s++)
        if (b[s >> 3] & (1u << (s & 7))) {
            memcpy(&id, (const uint8_t *)ids + 8 * s, 8);
            if (id > m)
                m = id;
        }
    return m;
}

/* Inside a read or write transaction: make the copy current (reload it
 * when it was never loaded or another connection committed since). */
static kv_status cache_refresh(kv_vector *v)
{
    int64_t dv = 0;
    kv_status st = data_version(v, &dv);
    if (st != KV_OK)
        return st;
    if (v->cache.loaded && v->cache.dv == dv)
        return KV_OK;
    cache_drop(&v->cache);
    int rc;
    while ((rc = sqlite3_step(v->st_load)) == SQLITE_ROW) {
        vchunk ch;
        if ((st = load_chunk(v, v->st_load, &ch)) != KV_OK)
            break;
        if (cache_push(&v->cache, &ch) < 0) {
            vchunk_free(&ch);
            st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
            break;
        }
    }
    if (st == KV_OK && rc != SQLITE_DONE)
        st = sql_fail(v, rc, "load chunks");
    sqlite3_reset(v->st_load);
    if (v->st_load_tail) {
        const vchunk *last = v->cache.n ? &v->cache.chunks[v->cache.n - 1] : NULL;
        sqlite3_bind_int64(v->st_load_tail, 1, last ? chunk_mark(last->valid, last->ids, last->size) : INT64_MIN);
    }
    while (st == KV_OK && v->st_load_tail && (rc = sqlite3_step(v->st_load_tail)) == SQLITE_ROW) {
        int64_t id = sqlite3_column_int64(v->st_load_tail, 0);
        size_t len = (size_t)sqlite3_column_bytes(v->st_load_tail, 1);
        if (len != v->row_bytes) {
            st = kvi_err_set(&v->err, KV_CORRUPT,
                             "stored vector of row %lld has %zu bytes, expected %zu "
                             "(table opened with %zu dimensions)",
                             (long long)id, len, v->row_bytes, v->dims);
            break;
        }
        if (tail_append(&v->cache, v->row_bytes, &id, sqlite3_column_blob(v->st_load_tail, 1), 1) < 0)
            st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
    }
    if (v->st_load_tail) {
        if (st == KV_OK && rc != SQLITE_DONE)
            st = sql_fail(v, rc, "load rows");
        sqlite3_reset(v->st_load_tail);
    }
    if (st != KV_OK) {
        cache_drop(&v->cache);
        return st;
    }
    v->cache.loaded = 1;
    v->cache.dv = dv;
    return KV_OK;
}

/* Where row `id` is in the copy: *ch and *slot (0 when absent). */
static int cache_find(vcache *c, int64_t id, vchunk **ch, size_t *slot)
{
    for (size_t i = 0; i <= c->n; i++) {
        vchunk *x = i < c->n ? &c->chunks[i] : &c->tail;
        for (size_t s = 0; s < x->size; s++)
            if (x->ids[s] == id && (!x->valid || (x->valid[s >> 3] & (1u << (s & 7))))) {
                *ch = x;
                *slot = s;
                return 1;
            }
    }
    return 0;
}

/* ====================================================================== */
/* 3. Open / close                                                          */
/* ====================================================================== */

/*
 * Checkpoints. A commit that crosses wal_autocheckpoint makes SQLite copy
 * the WAL into the database file inside that COMMIT, in the caller's
 * thread: for a bulk insert that copy (a read and a write per page, then
 * an fdatasync of each file) costs more than writing the data to the WAL.
 * A handle instead installs a WAL hook (which replaces SQLite's automatic
 * checkpoint on its connection) that wakes a thread of its own; the thread
 * opens its own connection to the file and runs a PASSIVE checkpoint,
 * which copies what no reader still needs without blocking readers or
 * writers (sqlite.org/wal.html, "Checkpointing"). The WAL is checkpointed
 * at the same frame count as before, only not on the writer's time.
 * Without the thread (it could not start or could not open the file
 * again, or an in-memory database) the hook checkpoints in place as SQLite
 * would. kv_vector_close stops and
 * joins the thread before its own final checkpoint.
 *
 * fork(): a thread inside SQLite may hold one of its process-wide mutexes
 * (the unix VFS's, the allocator's), which would stay locked forever in a
 * child. The threads hold g_ckpt_sqlite for every SQLite call they make,
 * and a pthread_atfork handler takes it before the fork and releases it on
 * both sides, so a fork waits for a running checkpoint to finish. The
 * threads do not exist in a child; the child's copy of the handle must not
 * be used (vector.h).
 */
static pthread_mutex_t g_ckpt_sqlite = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_ckpt_once = PTHREAD_ONCE_INIT;

static void ckpt_fork_prepare(void) { pthread_mutex_lock(&g_ckpt_sqlite); }
static void ckpt_fork_release(void) { pthread_mutex_unlock(&g_ckpt_sqlite); }
static void ckpt_atfork(void) { pthread_atfork(ckpt_fork_prepare, ckpt_fork_release, ckpt_fork_release); }

static void *ckpt_main(void *arg)
{
    vckpt *c = arg;
    sqlite3 *db = NULL;
    pthread_mutex_lock(&c->m);
    for (;;) {
        while (!c->stop && !c->pending)
            pthread_cond_wait(&c->c, &c->m);
        if (c->stop)
            break;
        c->pending = 0;
        pthread_mutex_unlock(&c->m);
        pthread_mutex_lock(&g_ckpt_sqlite);
        if (!db) {
            if (sqlite3_open_v2(c->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) == SQLITE_OK) {
                (void)sqlite3_exec(db, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
            } else { /* the file cannot be opened again (moved, removed) */
                sqlite3_close_v2(db);
                db = NULL;
            }
        }
        if (db) /* errors only leave the WAL longer: the next wake-up retries */
            (void)sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        pthread_mutex_unlock(&g_ckpt_sqlite);
        pthread_mutex_lock(&c->m);
        if (!db) { /* the hook checkpoints in place from now on */
            c->failed = 1;
            break;
        }
    }
    pthread_mutex_unlock(&c->m);
    pthread_mutex_lock(&g_ckpt_sqlite);
    sqlite3_close_v2(db);
    pthread_mutex_unlock(&g_ckpt_sqlite);
    return NULL;
}

/* sqlite3_wal_hook callback, after each commit of the handle's connection
 * with the WAL's frame count. */
static int ckpt_hook(void *arg, sqlite3 *db, const char *schema, int frames)
{
    kv_vector *v = arg;
    vckpt *c = &v->ckpt;
    if (frames < CKPT_FRAMES)
        return SQLITE_OK;
    if (c->path && !c->started && !c->stop) {
        pthread_mutex_lock(&c->m);
        c->started = pthread_create(&c->th, NULL, ckpt_main, c) == 0;
        pthread_mutex_unlock(&c->m);
    }
    int inline_ckpt = !c->started;
    if (c->started) {
        pthread_mutex_lock(&c->m);
        inline_ckpt = c->failed;
        c->pending = 1;
        pthread_cond_signal(&c->c);
        pthread_mutex_unlock(&c->m);
    }
    if (inline_ckpt)
        (void)sqlite3_wal_checkpoint_v2(db, schema, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    return SQLITE_OK;
}

/* Install the hook on v->db (the thread starts at the first wake-up). */
static void ckpt_init(kv_vector *v)
{
    vckpt *c = &v->ckpt;
    const char *file = sqlite3_db_filename(v->db, "main");
    pthread_once(&g_ckpt_once, ckpt_atfork);
    if (file && file[0] && (c->path = kvi_strdup(file))) {
        pthread_mutex_init(&c->m, NULL);
        pthread_cond_init(&c->c, NULL);
        c->sync_init = 1;
    } else {
        kvi_free(c->path);
        c->path = NULL;
    }
    sqlite3_wal_hook(v->db, ckpt_hook, v);
}

/* Stop and join the thread, free the rest. */
static void ckpt_stop(vckpt *c)
{
    if (c->sync_init) {
        pthread_mutex_lock(&c->m);
        c->stop = 1;
        pthread_cond_signal(&c->c);
        pthread_mutex_unlock(&c->m);
        if (c->started)
            pthread_join(c->th, NULL);
        pthread_cond_destroy(&c->c);
        pthread_mutex_destroy(&c->m);
    }
    kvi_free(c->path);
    memset(c, 0, sizeof *c);
}

const char *kv_vector_errmsg(const kv_vector *v) { return v ? v->err.msg : ""; }

void kv_vector_free(void *p) { kvi_free(p); }

void kv_vector_set_threads(kv_vector *v, int threads) { v->threads = threads < 0 ? 0 : threads; }

int kv_vector_is_vec0(const kv_vector *v) { return v->vec0; }

void kv_vector_close(kv_vector *v)
{
    if (!v)
        return;
    ckpt_stop(&v->ckpt);
    sqlite3_stmt *sts[] = {v->st_dv,        v->st_ins_val,  v->st_ins_row, v->st_ins_chunk,
                           v->st_ins_vals,  v->st_ins_rows,
                           v->st_ins_cvec,  v->st_wstate,   v->st_unchunked, v->st_move,
                           v->st_last,      v->st_above,    v->st_layout,
                           v->st_load,      v->st_load_tail, v->st_get_val, v->st_get_row,
                           v->st_del_row,   v->st_del_val,  v->st_del_chunk, v->st_del_cvec,
                           v->st_upd_vec,   v->st_upd_val,  v->st_count,
                           v->st_cvec,      v->st_unmove,   v->st_nth};
    for (size_t i = 0; i < sizeof sts / sizeof sts[0]; i++)
        sqlite3_finalize(sts[i]);
    kvi_oprec_finalize(&v->oprec);
    if (v->db) {
        sqlite3_wal_checkpoint_v2(v->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        sqlite3_close_v2(v->db);
    }
    cache_drop(&v->cache);
    kvi_free(v->scratch);
    kvi_free(v->leases);
    kvi_free(v->table);
    kvi_free(v);
}

static const char *elem_name(kv_vector_elem e)
{
    return e == KV_VECTOR_F32 ? "float" : e == KV_VECTOR_I8 ? "int8" : "bit";
}

/* A vec0 table's declaration, as far as this store reads it. */
typedef struct vec0_decl {
    kv_vector_elem elem;
    size_t dims;
    kv_vector_metric metric;
    int vec_index;   /* which vector column (vector_chunksNN) */
    int ref_index;   /* which metadata column holds value_ref (metadatachunksNN) */
} vec0_decl;

/* Parse "CREATE VIRTUAL TABLE x USING vec0(col type, ...)" as sqlite-vec based
 * kohakuvault releases declare it: one vector column (float[N], int8[N] or bit[N],
 * optional distance_metric=) and an INTEGER metadata column value_ref.
 * Returns 0, or -1 with a message in msg. */
static int vec0_parse(const char *sql, vec0_decl *d, char *msg, size_t msglen)
{
    const char *p = strcasestr(sql, "vec0(");
    int nvec = 0, nmeta = 0;
    memset(d, 0, sizeof *d);
    d->metric = KV_VECTOR_L2; /* vec0's default */
    d->ref_index = -1;
    if (!p) {
        snprintf(msg, msglen, "not a vec0 declaration: %s", sql);
        return -1;
    }
    p += 5;
    while (*p && *p != ')') {
        char def[256];
        size_t n = strcspn(p, ",)");
        if (n >= sizeof def)
            n = sizeof def - 1;
        memcpy(def, p, n);
        def[n] = 0;
        p += n;
        if (*p == ',')
            p++;
        char name[128] = "", type[128] = "", opt[128] = "";
        int got = sscanf(def, " %127s %127s %127s", name, type, opt);
        if (got < 2) {
            if (got == 1 && strchr(name, '='))
                continue; /* table option (chunk_size=...) */
            snprintf(msg, msglen, "unsupported vec0 column: %s", def);
            return -1;
        }
        unsigned long dims = 0;
        char kind[16] = "";
        if (sscanf(type, "%15[a-zA-Z0-9][%lu]", kind, &dims) == 2) {
            if (!strcasecmp(kind, "float") || !strcasecmp(kind, "f32"))
                d->elem = KV_VECTOR_F32;
            else if (!strcasecmp(kind, "int8") || !strcasecmp(kind, "i8"))
                d->elem = KV_VECTOR_I8;
            else if (!strcasecmp(kind, "bit"))
                d->elem = KV_VECTOR_BIT;
            else {
                snprintf(msg, msglen, "unsupported vec0 vector type: %s", type);
                return -1;
            }
            if (nvec++) {
                snprintf(msg, msglen, "vec0 tables with several vector columns are not supported");
                return -1;
            }
            d->vec_index = 0;
            d->dims = dims;
            const char *m = strcasestr(def, "distance_metric=");
            if (m) {
                m += strlen("distance_metric=");
                if (!strncasecmp(m, "cosine", 6))
                    d->metric = KV_VECTOR_COSINE;
                else if (!strncasecmp(m, "l2", 2))
                    d->metric = KV_VECTOR_L2;
                else if (!strncasecmp(m, "l1", 2))
                    d->metric = KV_VECTOR_L1;
                else if (!strncasecmp(m, "hamming", 7))
                    d->metric = KV_VECTOR_HAMMING;
            }
            if (d->elem == KV_VECTOR_BIT)
                d->metric = KV_VECTOR_HAMMING;
        } else if (!strcasecmp(type, "integer") || !strcasecmp(type, "int")) {
            if (!strcasecmp(name, "value_ref"))
                d->ref_index = nmeta;
            nmeta++;
        } else if (!strcasecmp(type, "text") || !strcasecmp(type, "float") ||
                   !strcasecmp(type, "double") || !strcasecmp(type, "boolean")) {
            nmeta++;
        } else {
            snprintf(msg, msglen, "unsupported vec0 column: %s", def);
            return -1;
        }
    }
    if (!nvec || d->ref_index < 0) {
        snprintf(msg, msglen, "vec0 table lacks a vector column or a value_ref INTEGER column");
        return -1;
    }
    return 0;
}

/* The declaration SQL of `table` if it is a vec0 virtual table (a new
 * sqlite3_malloc'd string), else NULL. */
static char *vec0_sql(sqlite3 *db, const char *table)
{
    sqlite3_stmt *s = NULL;
    char *out = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT sql FROM sqlite_master WHERE type='table' AND name=?1 "
                           "AND sql LIKE 'CREATE VIRTUAL TABLE%' AND sql LIKE '%vec0%'",
                           -1, &s, NULL) != SQLITE_OK)
        return NULL;
    sqlite3_bind_text(s, 1, table, -1, SQLITE_STATIC);
    if (sqlite3_step(s) == SQLITE_ROW)
        out = sqlite3_mprintf("%s", (const char *)sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
    return out;
}

/* 1 if <table> has the chunk columns of this layout, else 0. */
static int has_chunk_columns(kv_vector *v)
{
    char sql[300];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pragma_table_info('%s') WHERE name='chunk_offset'",
             v->table);
    return kvi_query_i64(v->db, sql) == 1;
}

/* Create the native layout, or add the chunk columns to a table written by
 * the row-per-vector layout, inside the caller's write transaction. */
static kv_status create_schema(kv_vector *v)
{
    char sql[2048];
    const char *t = v->table;
    snprintf(sql, sizeof sql,
             "CREATE TABLE IF NOT EXISTS \"%s\" (id INTEGER PRIMARY KEY, "
             "value_ref INTEGER NOT NULL, vector BLOB NOT NULL, chunk_id INTEGER, chunk_offset INTEGER)",
             t);
    kv_status st = kvi_exec(v->db, sql, &v->err);
    if (st == KV_OK && !has_chunk_columns(v)) {
        /* a table of the row-per-vector layout: its rows become unchunked rows */
        snprintf(sql, sizeof sql,
                 "ALTER TABLE \"%s\" ADD COLUMN chunk_id INTEGER;"
                 "ALTER TABLE \"%s\" ADD COLUMN chunk_offset INTEGER",
                 t, t);
        st = kvi_exec(v->db, sql, &v->err);
    }
    snprintf(sql, sizeof sql,
             "CREATE TABLE IF NOT EXISTS \"%s_values\" "
             "(id INTEGER PRIMARY KEY AUTOINCREMENT, value BLOB NOT NULL);"
             "CREATE TABLE IF NOT EXISTS \"%s_chunks\" (chunk_id INTEGER PRIMARY KEY, "
             "size INTEGER NOT NULL, validity BLOB NOT NULL, rowids BLOB NOT NULL);"
             "CREATE TABLE IF NOT EXISTS \"%s_chunk_vectors\" "
             "(chunk_id INTEGER PRIMARY KEY, vectors BLOB NOT NULL)",
             t, t, t);
    if (st == KV_OK)
        st = kvi_exec(v->db, sql, &v->err);
    return st;
}

/* create_schema in its own write transaction, when anything is missing. */
static kv_status ensure_schema(kv_vector *v)
{
    char sql[300];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM sqlite_master WHERE name='%s_chunk_vectors'", v->table);
    if (kvi_query_i64(v->db, sql) == 1 && has_chunk_columns(v))
        return KV_OK;
    kv_status st = kvi_store_begin(&v->err, v->db, 1);
    if (st != KV_OK)
        return st;
    if ((st = create_schema(v)) != KV_OK) {
        kvi_store_rollback(&v->err, v->db);
        return st;
    }
    return kvi_store_commit(&v->err, v->db);
}

#define PREP(stmt, ...)                                                \
    do {                                                               \
        snprintf(sql, sizeof sql, __VA_ARGS__);                        \
        if ((st = kvi_prepare(v->db, sql, &(stmt), &v->err)) != KV_OK) \
            return st;                                                 \
    } while (0)

/* INS_BATCH copies of `tuple` joined by commas, in buf. */
static const char *repeat_tuple(char *buf, size_t len, const char *tuple)
{
    size_t at = 0;
    for (int i = 0; i < INS_BATCH; i++)
        at += (size_t)snprintf(buf + at, len - at, "%s%s", i ? "," : "", tuple);
    KV_ASSERT_INTERNAL(at < len);
    return buf;
}

/* Statements of the native layout. */
static kv_status prepare_native(kv_vector *v)
{
    char sql[2048], tup[INS_BATCH * 20];
    kv_status st;
    const char *table = v->table;
    PREP(v->st_ins_val, "INSERT INTO \"%s_values\"(value) VALUES(?1)", table);
    PREP(v->st_ins_row,
         "INSERT INTO \"%s\"(id, value_ref, vector, chunk_id, chunk_offset) VALUES(?1, ?2, ?3, ?4, ?5)",
         table);
    PREP(v->st_ins_vals, "INSERT INTO \"%s_values\"(value) VALUES%s", table, repeat_tuple(tup, sizeof tup, "(?)"));
    PREP(v->st_ins_rows, "INSERT INTO \"%s\"(id, value_ref, vector, chunk_id, chunk_offset) VALUES%s", table,
         repeat_tuple(tup, sizeof tup, "(?, ?, x'', ?, ?)"));
    PREP(v->st_ins_chunk, "INSERT INTO \"%s_chunks\"(chunk_id, size, validity, rowids) VALUES(?1, ?2, ?3, ?4)",
         table);
    PREP(v->st_ins_cvec, "INSERT INTO \"%s_chunk_vectors\"(chunk_id, vectors) VALUES(?1, ?2)", table);
    PREP(v->st_wstate, "SELECT (SELECT max(id) FROM \"%s\"), (SELECT max(chunk_id) FROM \"%s_chunks\")",
         table, table);
    PREP(v->st_last,
         "SELECT size, validity, rowids, chunk_id FROM \"%s_chunks\" ORDER BY chunk_id DESC LIMIT 1",
         table);
    PREP(v->st_cvec, "SELECT vectors FROM \"%s_chunk_vectors\" WHERE chunk_id = ?1", table);
    PREP(v->st_unmove,
         "UPDATE \"%s\" SET vector = ?1, chunk_id = NULL, chunk_offset = NULL WHERE id = ?2", table);
    PREP(v->st_nth, "SELECT id FROM \"%s\" WHERE id > ?1 ORDER BY id LIMIT 1 OFFSET ?2", table);
    PREP(v->st_above, "SELECT count(*) FROM \"%s\" WHERE id > ?1", table);
    PREP(v->st_layout,
         "SELECT (SELECT length(vectors) FROM \"%s_chunk_vectors\" ORDER BY chunk_id DESC LIMIT 1), "
         "(SELECT size FROM \"%s_chunks\" ORDER BY chunk_id DESC LIMIT 1), "
         "(SELECT length(vector) FROM \"%s\" WHERE id > ?1 LIMIT 1)",
         table, table, table);
    PREP(v->st_unchunked, "SELECT id, vector FROM \"%s\" WHERE id > ?1 ORDER BY id", table);
    PREP(v->st_move, "UPDATE \"%s\" SET vector = x'', chunk_id = ?1, chunk_offset = ?2 WHERE id = ?3",
         table);
    PREP(v->st_load,
         "SELECT c.chunk_id, c.size, c.validity, c.rowids, v.vectors, NULL "
         "FROM \"%s_chunks\" c JOIN \"%s_chunk_vectors\" v USING (chunk_id) ORDER BY c.chunk_id",
         table, table);
    PREP(v->st_load_tail, "SELECT id, vector FROM \"%s\" WHERE id > ?1 ORDER BY id", table);
    PREP(v->st_get_row, "SELECT value_ref, vector, chunk_id, chunk_offset FROM \"%s\" WHERE id = ?1",
         table);
    PREP(v->st_del_row, "DELETE FROM \"%s\" WHERE id = ?1", table);
    PREP(v->st_del_val, "DELETE FROM \"%s_values\" WHERE id = ?1", table);
    PREP(v->st_del_chunk, "DELETE FROM \"%s_chunks\" WHERE chunk_id = ?1", table);
    PREP(v->st_del_cvec, "DELETE FROM \"%s_chunk_vectors\" WHERE chunk_id = ?1", table);
    PREP(v->st_upd_vec, "UPDATE \"%s\" SET vector = ?1 WHERE id = ?2", table);
    PREP(v->st_upd_val, "UPDATE \"%s_values\" SET value = ?1 WHERE id = ?2", table);
    PREP(v->st_count, "SELECT COUNT(*) FROM \"%s\"", table);
    return KV_OK;
}

/* Statements reading a vec0 table declared as `d`. */
static kv_status prepare_vec0(kv_vector *v, const vec0_decl *d)
{
    char sql[1024];
    kv_status st;
    const char *table = v->table;
    PREP(v->st_load,
         "SELECT c.chunk_id, c.size, c.validity, c.rowids, v.vectors, m.data "
         "FROM \"%s_chunks\" c JOIN \"%s_vector_chunks%02d\" v ON v.rowid = c.chunk_id "
         "JOIN \"%s_metadatachunks%02d\" m ON m.rowid = c.chunk_id ORDER BY c.chunk_id",
         table, table, d->vec_index, table, d->ref_index);
    return KV_OK;
}
#undef PREP

kv_status kv_vector_open(const char *path, const char *table, size_t dims, kv_vector_metric metric,
                         kv_vector_elem elem, kv_vector **out, char *err, size_t errlen)
{
    kv_vector *v = NULL;
    kv_status st;
    kvi_conn_opts o;
    char msg[512] = "", sql[1024];
    char *vsql = NULL;

    *out = NULL;
    if (kvi_table_name_valid(table) != KV_OK) {
        snprintf(msg, sizeof msg, "Invalid table name: %s", table ? table : "(null)");
        st = KV_INVALID;
        goto fail;
    }
    if ((unsigned)elem > KV_VECTOR_BIT || (unsigned)metric > KV_VECTOR_HAMMING) {
        snprintf(msg, sizeof msg, "Unknown metric or vector type");
        st = KV_INVALID;
        goto fail;
    }
    if (dims == 0 || dims > 65536) {
        snprintf(msg, sizeof msg, "dimensions must be 1..65536, got %zu", dims);
        st = KV_INVALID;
        goto fail;
    }
    if (elem == KV_VECTOR_BIT && dims % 8 != 0) {
        snprintf(msg, sizeof msg, "Bit vectors need dimensions divisible by 8, got %zu", dims);
        st = KV_INVALID;
        goto fail;
    }
    if (!kv_vector_compatible(metric, elem)) {
        snprintf(msg, sizeof msg, "Metric is not compatible with vector type");
        st = KV_INVALID;
        goto fail;
    }
    v = kvi_calloc(1, sizeof *v);
    if (!v || !(v->table = kvi_strdup(table))) {
        snprintf(msg, sizeof msg, "out of memory");
        st = KV_NOMEM;
        goto fail;
    }
    v->dims = dims;
    v->metric = metric;
    v->elem = elem;
    v->row_bytes = kv_vector_row_bytes(elem, dims);
    v->chunk_rows = chunk_rows_for(v->row_bytes);
    if (!(v->scratch = kvi_malloc(v->row_bytes))) {
        snprintf(msg, sizeof msg, "out of memory");
        st = KV_NOMEM;
        goto fail;
    }
    kvi_err_clear(&v->err);

    kvi_conn_opts_default(&o);
    o.page_size = 0;
    o.mmap_size = -1;
    o.cache_kb = 0;
    o.busy_timeout_ms = 0; /* no busy timeout (the Python contract) */
    o.nomutex = 1;
    if ((st = kvi_conn_open(path, &o, &v->db, msg, sizeof msg)) != KV_OK)
        goto fail;
    ckpt_init(v);

    snprintf(sql, sizeof sql, "PRAGMA data_version");
    if ((st = kvi_prepare(v->db, sql, &v->st_dv, &v->err)) != KV_OK)
        goto fail_msg;
    if ((vsql = vec0_sql(v->db, table))) {
        /* a sqlite-vec vec0 table: read its shadow tables */
        vec0_decl d;
        if (vec0_parse(vsql, &d, msg, sizeof msg) < 0) {
            st = KV_INVALID;
            goto fail;
        }
        if (d.elem != elem || d.dims != dims) {
            snprintf(msg, sizeof msg,
                     "vec0 table %s holds %zu-dimension %s vectors, opened with %zu dimensions of %s",
                     table, d.dims, elem_name(d.elem), dims, elem_name(elem));
            st = KV_INVALID;
            goto fail;
        }
        v->vec0 = 1;
        v->metric = d.metric; /* the file's metric ranks, as vec0 would */
        if ((st = prepare_vec0(v, &d)) != KV_OK)
            goto fail_msg;
    } else if ((st = ensure_schema(v)) != KV_OK || (st = prepare_native(v)) != KV_OK) {
        goto fail_msg;
    }
    snprintf(sql, sizeof sql, "SELECT value FROM \"%s_values\" WHERE id = ?1", table);
    if ((st = kvi_prepare(v->db, sql, &v->st_get_val, &v->err)) != KV_OK)
        goto fail_msg;
    v->score = kvk_kernel(v->metric, v->elem, kvk_best_isa(v->metric, v->elem));
    v->prep = kvk_prep_f32(KVK_AVX2) ? kvk_prep_f32(KVK_AVX2) : kvk_prep_f32(KVK_SCALAR);
    sqlite3_free(vsql);
    *out = v;
    return KV_OK;

fail_msg:
    snprintf(msg, sizeof msg, "%s", v->err.msg);
fail:
    sqlite3_free(vsql);
    kv_vector_close(v);
    kvi_msg_copy(msg, err, errlen);
    return st;
}

/* ====================================================================== */
/* 4. Writes                                                                */
/* ====================================================================== */

/*
 * Check n caller vectors (n * row_bytes bytes at vec; any alignment) and
 * return the bytes to store or search with: the input itself, or (cosine)
 * normalised copies in `buf` (n * row_bytes bytes, the caller's). NULL with
 * the error recorded on failure.
 */
static const void *prepare_rows(kv_vector *v, const void *vec, size_t n, uint8_t *buf, kv_status *st)
{
    *st = KV_OK;
    if (v->elem != KV_VECTOR_F32)
        return vec;
    const int norm = v->metric == KV_VECTOR_COSINE;
    for (size_t r = 0; r < n; r++) {
        long bad = v->prep((const uint8_t *)vec + r * v->row_bytes, buf + r * v->row_bytes, v->dims, norm);
        if (bad >= 0) {
            *st = kvi_err_set(&v->err, KV_INVALID, "vector element %ld is not finite", bad);
            return NULL;
        }
    }
    return norm ? buf : vec;
}

static int check_bytes(kv_vector *v, size_t vbytes, size_t n, kv_status *st)
{
    if (vbytes == n * v->row_bytes)
        return 0;
    size_t each = n ? vbytes / n : vbytes;
    *st = kvi_err_set(&v->err, KV_INVALID, "Expected %zu dimensions, got %zu", v->dims,
                      v->elem == KV_VECTOR_F32 ? each / 4 : v->elem == KV_VECTOR_BIT ? each * 8 : each);
    return -1;
}

static kv_status read_only(kv_vector *v)
{
    return kvi_err_set(&v->err, KV_INVALID,
                       "table %s is a sqlite-vec vec0 table, opened read-only; convert it with "
                       "kohakuvault.migrate_vec0(path, %s) to write to it",
                       v->table, v->table);
}

/* The vectors already in the table have this handle's row size: the last
 * chunk's vector blob is size * row_bytes and an unchunked row (above the
 * watermark) row_bytes. Dimensions and type are not stored in the file, so a
 * handle opened with others would otherwise insert rows no search can read,
 * or, updating a chunk slot, write across its neighbours. Two O(log n)
 * lookups; run with the write state, inside the write transaction. */
static kv_status check_layout(kv_vector *v)
{
    kv_status st = KV_OK;
    sqlite3_bind_int64(v->st_layout, 1, v->mark);
    int rc = sqlite3_step(v->st_layout);
    if (rc != SQLITE_ROW) {
        st = sql_fail(v, rc, "vector layout");
    } else {
        size_t have = 0;
        if (sqlite3_column_type(v->st_layout, 2) != SQLITE_NULL)
            have = (size_t)sqlite3_column_int64(v->st_layout, 2);
        else if (sqlite3_column_type(v->st_layout, 0) != SQLITE_NULL &&
                 sqlite3_column_int64(v->st_layout, 1) > 0)
            have = (size_t)(sqlite3_column_int64(v->st_layout, 0) / sqlite3_column_int64(v->st_layout, 1));
        if (have && have != v->row_bytes)
            st = kvi_err_set(&v->err, KV_INVALID,
                             "table %s holds vectors of %zu bytes, but this VectorKVault was opened "
                             "with %zu dimensions of %s (%zu bytes): open it with the dimensions and "
                             "vector type the table was created with",
                             v->table, have, v->dims, elem_name(v->elem), v->row_bytes);
    }
    sqlite3_reset(v->st_layout);
    return st;
}

/* v->mark from the last chunk (INT64_MIN when there is none). */
static kv_status read_mark(kv_vector *v)
{
    kv_status st = KV_OK;
    int rc = sqlite3_step(v->st_last);
    v->mark = INT64_MIN;
    if (rc == SQLITE_ROW) {
        size_t n = (size_t)sqlite3_column_int64(v->st_last, 0);
        if ((size_t)sqlite3_column_bytes(v->st_last, 1) < (n + 7) / 8 ||
            (size_t)sqlite3_column_bytes(v->st_last, 2) < n * 8)
            st = kvi_err_set(&v->err, KV_CORRUPT, "last chunk: bitmap or rowids too short");
        else
            v->mark = chunk_mark(sqlite3_column_blob(v->st_last, 1), sqlite3_column_blob(v->st_last, 2), n);
    } else if (rc != SQLITE_DONE) {
        st = sql_fail(v, rc, "write state");
    }
    sqlite3_reset(v->st_last);
    return st;
}

/* In a write transaction: make the write state current. */
static kv_status write_state(kv_vector *v)
{
    int64_t dv = 0;
    kv_status st = data_version(v, &dv);
    if (st != KV_OK || (v->ws_valid && v->ws_dv == dv))
        return st;
    int rc = sqlite3_step(v->st_wstate);
    if (rc == SQLITE_ROW) {
        v->next_id = sqlite3_column_int64(v->st_wstate, 0) + 1;
        v->next_chunk = sqlite3_column_int64(v->st_wstate, 1) + 1;
    } else {
        st = sql_fail(v, rc, "write state");
    }
    sqlite3_reset(v->st_wstate);
    v->pack_wait = 0;
    if (st == KV_OK)
        st = read_mark(v);
    if (st == KV_OK) {
        sqlite3_bind_int64(v->st_above, 1, v->mark);
        if ((rc = sqlite3_step(v->st_above)) == SQLITE_ROW)
            v->unchunked = sqlite3_column_int64(v->st_above, 0);
        else
            st = sql_fail(v, rc, "write state");
        sqlite3_reset(v->st_above);
    }
    if (st == KV_OK)
        st = check_layout(v);
    if (st == KV_OK) {
        v->ws_valid = 1;
        v->ws_dv = dv;
    }
    return st;
}

/* Write one full chunk: ids[0..n), vecs (n * row_bytes), all valid. */
static kv_status write_chunk(kv_vector *v, int64_t cid, const int64_t *ids, const uint8_t *vecs, size_t n)
{
    uint8_t valid[4096 / 8 + 1];
    size_t nb = (n + 7) / 8;
    memset(valid, 0, sizeof valid);
    memset(valid, 0xff, n / 8);
    if (n % 8)
        valid[n / 8] = (uint8_t)((1u << (n % 8)) - 1);
    sqlite3_bind_int64(v->st_ins_chunk, 1, cid);
    sqlite3_bind_int64(v->st_ins_chunk, 2, (int64_t)n);
    sqlite3_bind_blob64(v->st_ins_chunk, 3, valid, nb, SQLITE_STATIC);
    sqlite3_bind_blob64(v->st_ins_chunk, 4, ids, n * 8, SQLITE_STATIC);
    kv_status st = kvi_store_step_done(&v->err, v->db, v->st_ins_chunk, "insert chunk");
    if (st != KV_OK)
        return st;
    sqlite3_bind_int64(v->st_ins_cvec, 1, cid);
    sqlite3_bind_blob64(v->st_ins_cvec, 2, vecs, n * v->row_bytes, SQLITE_STATIC);
    return kvi_store_step_done(&v->err, v->db, v->st_ins_cvec, "insert chunk vectors");
}

/* Read the `n` unchunked rows (ids above the watermark, ascending) into
 * ids[] and vecs[]. */
static kv_status read_unchunked(kv_vector *v, size_t n, int64_t *ids, uint8_t *vecs)
{
    size_t got = 0;
    int rc;
    kv_status st = KV_OK;
    sqlite3_bind_int64(v->st_unchunked, 1, v->mark);
    while ((rc = sqlite3_step(v->st_unchunked)) == SQLITE_ROW && got < n) {
        size_t len = (size_t)sqlite3_column_bytes(v->st_unchunked, 1);
        if (len != v->row_bytes) {
            st = kvi_err_set(&v->err, KV_CORRUPT, "stored vector of row %lld has %zu bytes, expected %zu",
                             (long long)sqlite3_column_int64(v->st_unchunked, 0), len, v->row_bytes);
            break;
        }
        ids[got] = sqlite3_column_int64(v->st_unchunked, 0);
        memcpy(vecs + got * v->row_bytes, sqlite3_column_blob(v->st_unchunked, 1), len);
        got++;
    }
    if (st == KV_OK && rc != SQLITE_DONE && rc != SQLITE_ROW)
        st = sql_fail(v, rc, "read unchunked rows");
    sqlite3_reset(v->st_unchunked);
    if (st == KV_OK && got != n)
        st = kvi_err_set(&v->err, KV_CORRUPT, "expected %zu unchunked rows, found %zu", n, got);
    return st;
}

/* Mirror a committed insert of rows ids[0..n) (vecs as stored) into the
 * copy, as put_rows wrote them: append to the unchunked rows, then pack
 * chunks of chunk_rows from the oldest, numbered from `cid`. */
static void cache_apply_insert(kv_vector *v, int64_t cid, const int64_t *ids, const uint8_t *vecs, size_t n)
{
    vcache *c = &v->cache;
    size_t C = v->chunk_rows;
    if (!c->loaded)
        return;
    if (tail_append(c, v->row_bytes, ids, vecs, n) < 0)
        goto drop;
    size_t packed = 0;
    while (c->tail.size - packed >= C) {
        vchunk ch;
        if (vchunk_alloc(&ch, C, v->row_bytes, 1, 0) < 0)
            goto drop;
        ch.chunk_id = cid++;
        memcpy(ch.ids, c->tail.ids + packed, C * 8);
        memcpy(ch.vecs, c->tail.vecs + packed * v->row_bytes, C * v->row_bytes);
        memset(ch.valid, 0xff, C / 8);
        if (cache_push(c, &ch) < 0) {
            vchunk_free(&ch);
            goto drop;
        }
        packed += C;
    }
    if (packed) {
        c->tail.size -= packed;
        memmove(c->tail.ids, c->tail.ids + packed, c->tail.size * 8);
        memmove(c->tail.vecs, c->tail.vecs + packed * v->row_bytes, c->tail.size * v->row_bytes);
    }
    return;
drop:
    cache_drop(c);
}

/* Bind and run st_ins_row: row `id` with value `ref`, in chunk `cid` at
 * `slot` (vec NULL) or unchunked with its bytes at `vec`. */
static kv_status put_row(kv_vector *v, int64_t id, int64_t ref, const uint8_t *vec, int64_t cid, size_t slot)
{
    sqlite3_bind_int64(v->st_ins_row, 1, id);
    sqlite3_bind_int64(v->st_ins_row, 2, ref);
    if (vec) {
        sqlite3_bind_blob64(v->st_ins_row, 3, vec, v->row_bytes, SQLITE_STATIC);
    } else {
        sqlite3_bind_blob64(v->st_ins_row, 3, "", 0, SQLITE_STATIC);
        sqlite3_bind_int64(v->st_ins_row, 4, cid);
        sqlite3_bind_int64(v->st_ins_row, 5, (int64_t)slot);
    }
    return kvi_store_step_done(&v->err, v->db, v->st_ins_row, "insert vector");
}

/* Copy `count` rows from src to dst, L2-normalising each when `norm`
 * (the rows were checked by prepare_rows). */
static void take_rows(const kv_vector *v, uint8_t *dst, const uint8_t *src, size_t count, int norm)
{
    if (!norm) {
        memcpy(dst, src, count * v->row_bytes);
        return;
    }
    for (size_t r = 0; r < count; r++)
        v->prep(src + r * v->row_bytes, dst + r * v->row_bytes, v->dims, 1);
}

/*
 * Inside a write transaction with a current write state: add rows
 * ids[i] / refs[i] / rows[0..n) (ids ascending, above every stored id).
 * The rows are stored as they are, or L2-normalised on the way when `norm`
 * (checked rows of a cosine table: each chunk is normalised into a
 * chunk-sized buffer just before it is written, so no copy of the whole
 * input is made). The sequence S = (the U unchunked rows, oldest first)
 * then the new rows is cut into chunks of C = chunk_rows from its front
 * while C rows remain; the rest stays unchunked. A chunk made only of new
 * rows is written straight from the caller's buffer when no normalisation
 * is needed; old rows are read back only when a chunk takes them. The map
 * rows of a chunk's new rows are inserted INS_BATCH per statement. On
 * success *next_chunk, *left and *mark receive the write state after the
 * write (applied to v by the caller once the transaction commits).
 */
static kv_status put_rows(kv_vector *v, size_t n, const uint8_t *rows, int norm, const int64_t *ids,
                          const int64_t *refs, int64_t *next_chunk, int64_t *left, int64_t *mark)
{
    size_t C = v->chunk_rows, U = (size_t)v->unchunked, total = U + n, nch = total / C;
    size_t rb = v->row_bytes;
    int64_t *old_ids = NULL, *cids = NULL, cid = v->next_chunk;
    uint8_t *old_vecs = NULL, *cvecs = NULL;
    kv_status st = KV_OK;
    *mark = v->mark;
    if (nch && U && (!(old_ids = kvi_malloc(U * 8)) || !(old_vecs = mi_malloc_aligned(U * rb, 64)) ||
                     !(cids = kvi_malloc(C * 8))))
        st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
    if (st == KV_OK && nch && (U || norm) && !(cvecs = mi_malloc_aligned(C * rb, 64)))
        st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
    if (st == KV_OK && nch && U)
        st = read_unchunked(v, U, old_ids, old_vecs);
    for (size_t c = 0; c < nch && st == KV_OK; c++, cid++) {
        size_t start = c * C;
        const int64_t *pid = ids + (start - (start >= U ? U : start));
        const uint8_t *pvec = rows + (start >= U ? (start - U) * rb : 0);
        if (start < U) { /* takes old rows: gather into one buffer */
            size_t old = U - start < C ? U - start : C;
            memcpy(cids, old_ids + start, old * 8);
            memcpy(cids + old, ids, (C - old) * 8);
            memcpy(cvecs, old_vecs + start * rb, old * rb);
            take_rows(v, cvecs + old * rb, rows, C - old, norm);
            pid = cids;
            pvec = cvecs;
        } else if (norm) {
            take_rows(v, cvecs, pvec, C, 1);
            pvec = cvecs;
        }
        st = write_chunk(v, cid, pid, pvec, C);
        for (size_t j = 0, s = start; j < C && st == KV_OK; j++, s++) {
            if (s >= U && j + INS_BATCH <= C) { /* INS_BATCH new rows in one statement */
                for (int b = 0; b < INS_BATCH; b++) {
                    sqlite3_bind_int64(v->st_ins_rows, 4 * b + 1, ids[s - U + (size_t)b]);
                    sqlite3_bind_int64(v->st_ins_rows, 4 * b + 2, refs[s - U + (size_t)b]);
                    sqlite3_bind_int64(v->st_ins_rows, 4 * b + 3, cid);
                    sqlite3_bind_int64(v->st_ins_rows, 4 * b + 4, (int64_t)(j + (size_t)b));
                }
                st = kvi_store_step_done(&v->err, v->db, v->st_ins_rows, "insert vectors");
                j += INS_BATCH - 1;
                s += INS_BATCH - 1;
                continue;
            }
            if (s >= U) {
                st = put_row(v, ids[s - U], refs[s - U], NULL, cid, j);
                continue;
            }
            sqlite3_bind_int64(v->st_move, 1, cid);
            sqlite3_bind_int64(v->st_move, 2, (int64_t)j);
            sqlite3_bind_int64(v->st_move, 3, old_ids[s]);
            st = kvi_store_step_done(&v->err, v->db, v->st_move, "chunk row");
        }
        *mark = pid[C - 1];
    }
    for (size_t s = nch * C > U ? nch * C : U; s < total && st == KV_OK; s++) {
        const uint8_t *row = rows + (s - U) * rb;
        if (norm) {
            take_rows(v, v->scratch, row, 1, 1);
            row = v->scratch;
        }
        st = put_row(v, ids[s - U], refs[s - U], row, 0, 0);
    }
    kvi_free(old_ids);
    kvi_free(old_vecs);
    kvi_free(cids);
    kvi_free(cvecs);
    *next_chunk = cid;
    *left = (int64_t)(total - nch * C);
    return st;
}

static int64_t lease_horizon(kv_vector *v);
static kv_status rows_unchunked(kv_vector *v, size_t n, const uint8_t *rows, int norm,
                                const int64_t *ids, const int64_t *refs);

/*
 * Insert n checked rows in one write transaction: values vals[i]
 * (vlens[i] bytes; vals NULL: all empty) and vectors rows[0..n), stored
 * as they are or, with `norm`, L2-normalised by put_rows. Ids are assigned
 * consecutively into ids[], from max(id)+1 or above every block of ids
 * leased (kv_lease_take). When the in-memory copy is
 * loaded it needs the stored bytes after the commit: the rows are then
 * normalised into one buffer first.
 */
static kv_status rows_insert(kv_vector *v, size_t n, const uint8_t *rows, int norm,
                             const void *const *vals, const size_t *vlens, int64_t *ids)
{
    int64_t one_ref, *refs = n == 1 ? &one_ref : kvi_malloc(n * 8), next_chunk = 0, unchunked = 0, mark = 0;
    uint8_t *whole = NULL;
    if (!refs)
        return kvi_err_set(&v->err, KV_NOMEM, "out of memory");
    if (norm && v->cache.loaded && n > 1) {
        if (!(whole = mi_malloc_aligned(n * v->row_bytes, 64))) {
            kvi_free(refs);
            return kvi_err_set(&v->err, KV_NOMEM, "out of memory");
        }
        take_rows(v, whole, rows, n, 1);
        rows = whole;
        norm = 0;
    } else if (norm && n == 1) {
        take_rows(v, v->scratch, rows, 1, 1);
        rows = v->scratch;
        norm = 0;
    }
    kv_status st = kvi_store_begin(&v->err, v->db, 1);
    if (st == KV_OK)
        st = write_state(v);
    int64_t first_chunk = v->next_chunk, first = v->next_id;
    if (st == KV_OK) {   /* above every block of ids a writer's client fills (kvault/oprec.h) */
        kv_conn c;
        kv_vector_conn(v, &c);
        st = kv_lease_take(&c, v->table, v->next_id, (int64_t)n, &first);
    }
    /* blocks granted by this handle and still being filled: chunks are
     * packed only below them (section 5b) */
    const int held = st == KV_OK && lease_horizon(v) != INT64_MAX;
    for (size_t i = 0; i < n && st == KV_OK;) {
        /* INS_BATCH values per statement while that many remain: AUTOINCREMENT
         * gives the rows of one statement consecutive ids ending at the last
         * insert rowid */
        size_t m = n - i >= INS_BATCH ? INS_BATCH : 1;
        sqlite3_stmt *s = m > 1 ? v->st_ins_vals : v->st_ins_val;
        for (size_t b = 0; b < m; b++) {
            size_t vl = vals ? vlens[i + b] : 0;
            sqlite3_bind_blob64(s, (int)b + 1, vl ? vals[i + b] : "", vl, SQLITE_STATIC);
        }
        st = kvi_store_step_done(&v->err, v->db, s, "insert value");
        int64_t last = sqlite3_last_insert_rowid(v->db);
        for (size_t b = 0; b < m; b++, i++) {
            ids[i] = first + (int64_t)i;
            refs[i] = last - (int64_t)(m - 1 - b);
        }
    }
    if (st == KV_OK && held)
        st = rows_unchunked(v, n, rows, norm, ids, refs);
    else if (st == KV_OK)
        st = put_rows(v, n, rows, norm, ids, refs, &next_chunk, &unchunked, &mark);
    if (refs != &one_ref)
        kvi_free(refs);
    if (st == KV_OK && (st = kvi_store_commit(&v->err, v->db)) == KV_OK) {
        v->next_id = first + (int64_t)n;
        if (held) {   /* v's write state was moved along by rows_unchunked */
            cache_drop(&v->cache);
        } else {
            v->next_chunk = next_chunk;
            v->unchunked = unchunked;
            v->mark = mark;
            cache_apply_insert(v, first_chunk, ids, rows, n); /* rows as stored when the copy is loaded */
        }
        kvi_free(whole);
        return KV_OK;
    }
    kvi_free(whole);
    kvi_store_rollback(&v->err, v->db);
    v->ws_valid = 0;
    cache_drop(&v->cache);
    return st;
}

kv_status kv_vector_insert(kv_vector *v, const void *vec, size_t vbytes, const void *val,
                           size_t vlen, int64_t *id)
{
    return kv_vector_insert_many(v, 1, vec, vbytes, &val, &vlen, id);
}

/* The checks of n >= 1 rows to insert: present, n rows' bytes, f32
 * elements finite. KV_OK, or KV_INVALID with the message insert gives. */
static kv_status check_rows(kv_vector *v, const void *vecs, size_t vbytes, size_t n)
{
    kv_status st = KV_OK;
    if (!vecs)
        return kvi_err_set(&v->err, KV_INVALID, n == 1 ? "vector is NULL" : "vectors are NULL");
    if (check_bytes(v, vbytes, n, &st) < 0)
        return st;
    for (size_t r = 0; v->elem == KV_VECTOR_F32 && r < n; r++) {
        long bad = v->prep((const uint8_t *)vecs + r * v->row_bytes, NULL, v->dims, 0);
        if (bad >= 0)
            return kvi_err_set(&v->err, KV_INVALID, "vector element %ld is not finite", bad);
    }
    return KV_OK;
}

kv_status kv_vector_insert_many(kv_vector *v, size_t n, const void *vecs, size_t vbytes,
                                const void *const *vals, const size_t *vlens, int64_t *ids)
{
    kv_status st;
    kvi_err_clear(&v->err);
    if (v->vec0)
        return read_only(v);
    if (n == 0)
        return KV_OK;
    /* every row checked before anything is written; cosine rows are
     * normalised later, chunk by chunk, on their way into the file */
    if ((st = check_rows(v, vecs, vbytes, n)) != KV_OK)
        return st;
    const int norm = v->elem == KV_VECTOR_F32 && v->metric == KV_VECTOR_COSINE;
    return rows_insert(v, n, vecs, norm, vals, vlens, ids);
}

/* ====================================================================== */
/* 5b. Inserts at leased ids (pipelined inserts of a writer's clients)     */
/* ====================================================================== */

/*
 * A client of the shared-mode writer inserts without waiting for each
 * reply, so it picks each row's id itself, from a block of ids the writer
 * granted it (kvault/oprec.h). Rows then arrive out of id order: client A
 * fills [1, 64) while client B fills [64, 192). The layout needs chunks cut
 * in id order (every id above the mark is unchunked), so the handle that
 * granted the blocks packs a chunk only from rows below its horizon: the
 * lowest id still to come of a block in use. A row that arrives below the
 * mark anyway first unpacks the chunks above it, so the layout holds in
 * every order. That happens when its block was granted by a writer before
 * this one (then tracked from its first row on, LEASE_IMPLICIT), when an
 * embedded process cut chunks meanwhile, or when its client stalled
 * LEASE_IDLE_MS inside one call (a live client gives an idle block back
 * first); each costs a rewrite of the rows above it, once.
 */

/* Monotonic milliseconds (kvi_now_s). */
static uint64_t mono_ms(void) { return (uint64_t)(kvi_now_s() * 1000.0); }

/* The lowest id still to come of a block in use (blocks idle for
 * LEASE_IDLE_MS are forgotten), or INT64_MAX when there is none. */
static int64_t lease_horizon(kv_vector *v)
{
    int64_t h = INT64_MAX;
    uint64_t now = v->nleases ? mono_ms() : 0;
    for (size_t i = 0; i < v->nleases;) {
        struct vlease *b = &v->leases[i];
        if (now - b->touched_ms > LEASE_IDLE_MS) {
            *b = v->leases[--v->nleases];
            continue;
        }
        if (b->next < h)
            h = b->next;
        i++;
    }
    return h;
}

/* Track block [next, end). -1 out of memory (the block is then not
 * tracked: its rows may unpack chunks, nothing worse). */
static int lease_track(kv_vector *v, int64_t next, int64_t end)
{
    if (v->nleases == v->cap_leases) {
        size_t cap = v->cap_leases ? 2 * v->cap_leases : 8;
        struct vlease *nb = kvi_realloc(v->leases, cap * sizeof *nb);
        if (!nb)
            return -1;
        v->leases = nb;
        v->cap_leases = cap;
    }
    v->leases[v->nleases++] = (struct vlease){next, end, mono_ms()};
    return 0;
}

/* Row `id` was inserted: its block moves past it (a block it ends is
 * forgotten). On a handle that grants blocks (a writer's), an id of no
 * tracked block starts one of LEASE_IMPLICIT ids after it: its client goes
 * on filling a block granted before this handle (a writer's
 * predecessor). A client's own handle, applying its inserts a dead writer
 * did not, tracks nothing. */
static void lease_used(kv_vector *v, int64_t id)
{
    for (size_t i = 0; i < v->nleases; i++) {
        struct vlease *b = &v->leases[i];
        if (id >= b->next && id < b->end) {
            b->next = id + 1;
            b->touched_ms = mono_ms();
            if (b->next == b->end)
                *b = v->leases[--v->nleases];
            return;
        }
    }
    if (v->granted && v->nleases < 4096)
        (void)lease_track(v, id + 1, id + 1 + LEASE_IMPLICIT);
}

/* Unpack the chunks holding ids at or above `id` (the last ones: chunks
 * are cut in id order) back into unchunked rows, so v->mark < id. Inside a
 * write transaction with a current write state. */
static kv_status unpack_above(kv_vector *v, int64_t id)
{
    kv_status st = KV_OK;
    while (st == KV_OK && v->mark >= id) {
        int rc = sqlite3_step(v->st_last);
        if (rc != SQLITE_ROW) {
            sqlite3_reset(v->st_last);
            return rc == SQLITE_DONE ? kvi_err_set(&v->err, KV_CORRUPT, "no chunk holds the mark")
                                     : sql_fail(v, rc, "unpack chunk");
        }
        size_t n = (size_t)sqlite3_column_int64(v->st_last, 0);
        int64_t cid = sqlite3_column_int64(v->st_last, 3);
        uint8_t valid[4096 / 8 + 1];
        int64_t *ids = NULL;
        if (n > v->chunk_rows || n > 4096 || (size_t)sqlite3_column_bytes(v->st_last, 1) < (n + 7) / 8 ||
            (size_t)sqlite3_column_bytes(v->st_last, 2) < n * 8)
            st = kvi_err_set(&v->err, KV_CORRUPT, "chunk %lld: bad size, bitmap or rowids", (long long)cid);
        else if (!(ids = kvi_malloc(n * 8 + 8)))
            st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
        if (st == KV_OK) {
            memcpy(valid, sqlite3_column_blob(v->st_last, 1), (n + 7) / 8);
            memcpy(ids, sqlite3_column_blob(v->st_last, 2), n * 8);
        }
        sqlite3_reset(v->st_last);
        sqlite3_bind_int64(v->st_cvec, 1, cid);
        if (st == KV_OK && (rc = sqlite3_step(v->st_cvec)) != SQLITE_ROW)
            st = rc == SQLITE_DONE ? kvi_err_set(&v->err, KV_CORRUPT, "chunk %lld has no vectors", (long long)cid)
                                   : sql_fail(v, rc, "unpack chunk");
        if (st == KV_OK && (size_t)sqlite3_column_bytes(v->st_cvec, 0) < n * v->row_bytes)
            st = corrupt_chunk(v, cid, "vectors", (size_t)sqlite3_column_bytes(v->st_cvec, 0), n * v->row_bytes);
        const uint8_t *vecs = st == KV_OK ? sqlite3_column_blob(v->st_cvec, 0) : NULL;
        for (size_t j = 0; st == KV_OK && j < n; j++) {
            if (!(valid[j >> 3] & (1u << (j & 7))))
                continue;
            sqlite3_bind_blob64(v->st_unmove, 1, vecs + j * v->row_bytes, v->row_bytes, SQLITE_STATIC);
            sqlite3_bind_int64(v->st_unmove, 2, ids[j]);
            st = kvi_store_step_done(&v->err, v->db, v->st_unmove, "unpack row");
            v->unchunked++;
        }
        sqlite3_reset(v->st_cvec);
        kvi_free(ids);
        if (st == KV_OK) {
            sqlite3_bind_int64(v->st_del_chunk, 1, cid);
            st = kvi_store_step_done(&v->err, v->db, v->st_del_chunk, "unpack chunk");
        }
        if (st == KV_OK) {
            sqlite3_bind_int64(v->st_del_cvec, 1, cid);
            st = kvi_store_step_done(&v->err, v->db, v->st_del_cvec, "unpack chunk");
        }
        if (st == KV_OK)
            st = read_mark(v);
    }
    v->pack_wait = 0;
    return st;
}

/* Cut chunks from the lowest unchunked rows while chunk_rows of them lie
 * below horizon `h`. Looking costs a walk over chunk_rows ids, so after a
 * look that finds too few the next PACK_LOOK_EVERY rows inserted while a
 * block is in use do not look (packing later only leaves rows unchunked a while longer: searches
 * read them all the same). Inside a write transaction with a current write
 * state. */
static kv_status pack_below(kv_vector *v, int64_t h)
{
    const size_t C = v->chunk_rows;
    kv_status st = KV_OK;
    int64_t *ids = NULL;
    uint8_t *vecs = NULL;
    if (v->pack_wait > 0 && h != INT64_MAX) {
        v->pack_wait--;
        return KV_OK;
    }
    for (int cut = 0; st == KV_OK && (size_t)v->unchunked >= C && cut < PACK_MAX_CHUNKS; cut++) {
        sqlite3_bind_int64(v->st_nth, 1, v->mark);
        sqlite3_bind_int64(v->st_nth, 2, (int64_t)C - 1);
        int rc = sqlite3_step(v->st_nth);
        int64_t nth = rc == SQLITE_ROW ? sqlite3_column_int64(v->st_nth, 0) : INT64_MAX;
        sqlite3_reset(v->st_nth);
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
            st = sql_fail(v, rc, "pack chunk");
            break;
        }
        if (rc == SQLITE_DONE) {
            st = kvi_err_set(&v->err, KV_CORRUPT, "expected %lld unchunked rows", (long long)v->unchunked);
            break;
        }
        if (nth >= h) {
            v->pack_wait = PACK_LOOK_EVERY;
            break;
        }
        if (!ids && (!(ids = kvi_malloc(C * 8)) || !(vecs = mi_malloc_aligned(C * v->row_bytes, 64)))) {
            st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
            break;
        }
        if ((st = read_unchunked(v, C, ids, vecs)) != KV_OK ||
            (st = write_chunk(v, v->next_chunk, ids, vecs, C)) != KV_OK)
            break;
        for (size_t j = 0; j < C && st == KV_OK; j++) {
            sqlite3_bind_int64(v->st_move, 1, v->next_chunk);
            sqlite3_bind_int64(v->st_move, 2, (int64_t)j);
            sqlite3_bind_int64(v->st_move, 3, ids[j]);
            st = kvi_store_step_done(&v->err, v->db, v->st_move, "chunk row");
        }
        v->mark = ids[C - 1];
        v->unchunked -= (int64_t)C;
        v->next_chunk++;
    }
    kvi_free(ids);
    mi_free(vecs);
    return st;
}

/* Rows ids[0..n) (values at refs[]) stored unchunked, L2-normalised on
 * the way when `norm`, then chunks packed below the horizon. Inside a
 * write transaction with a current write state; moves v's write state
 * along. */
static kv_status rows_unchunked(kv_vector *v, size_t n, const uint8_t *rows, int norm,
                                const int64_t *ids, const int64_t *refs)
{
    kv_status st = KV_OK;
    for (size_t i = 0; i < n && st == KV_OK; i++) {
        const uint8_t *row = rows + i * v->row_bytes;
        if (norm) {
            take_rows(v, v->scratch, row, 1, 1);
            row = v->scratch;
        }
        if (ids[i] <= v->mark && (st = unpack_above(v, ids[i])) != KV_OK)
            break;
        if ((st = put_row(v, ids[i], refs[i], row, 0, 0)) != KV_OK)
            break;
        v->unchunked++;
    }
    return st == KV_OK ? pack_below(v, lease_horizon(v)) : st;
}

kv_status kv_vector_check(kv_vector *v, const void *vec, size_t vbytes)
{
    kvi_err_clear(&v->err);
    return v->vec0 ? read_only(v) : check_rows(v, vec, vbytes, 1);
}

kv_status kv_vector_lease(kv_vector *v, int64_t n, int64_t *lo)
{
    kvi_err_clear(&v->err);
    if (v->vec0)
        return read_only(v);
    kv_conn c;
    kv_vector_conn(v, &c);
    kv_status st = kvi_store_begin(&v->err, v->db, 1);
    if (st == KV_OK && (st = write_state(v)) == KV_OK)
        st = kv_lease_grant(&c, v->table, v->next_id, n, lo);
    if (st == KV_OK)
        st = kvi_store_commit(&v->err, v->db);
    else
        kvi_store_rollback(&v->err, v->db);
    if (st == KV_OK) {   /* untracked (out of memory): its rows may unpack chunks, no worse */
        (void)lease_track(v, *lo, *lo + n);
        v->granted = 1;
    }
    return st;
}

kv_status kv_vector_lease_return(kv_vector *v, int64_t next, int64_t end)
{
    kvi_err_clear(&v->err);
    if (v->vec0)
        return read_only(v);
    for (size_t i = 0; i < v->nleases; i++)
        if (v->leases[i].end == end) {
            v->leases[i] = v->leases[--v->nleases];
            break;
        }
    kv_conn c;
    kv_vector_conn(v, &c);
    return kv_lease_return(&c, v->table, next, end);
}

kv_status kv_vector_insert_at(kv_vector *v, int64_t id, const void *vec, size_t vbytes,
                              const void *val, size_t vlen)
{
    kv_status st = kv_vector_check(v, vec, vbytes);
    if (st != KV_OK)
        return st;
    if (id < 1 || id > ID_MAX)
        return kvi_err_set(&v->err, KV_INVALID, "vector id %lld is out of range", (long long)id);
    int64_t ref = 0;
    const int norm = v->elem == KV_VECTOR_F32 && v->metric == KV_VECTOR_COSINE;
    if ((st = kvi_store_begin(&v->err, v->db, 1)) != KV_OK)
        return st;
    st = write_state(v);
    if (st == KV_OK) {
        sqlite3_bind_blob64(v->st_ins_val, 1, vlen ? val : "", vlen, SQLITE_STATIC);
        st = kvi_store_step_done(&v->err, v->db, v->st_ins_val, "insert value");
        ref = sqlite3_last_insert_rowid(v->db);
    }
    if (st == KV_OK) {
        lease_used(v, id);
        st = rows_unchunked(v, 1, vec, norm, &id, &ref);
        /* the map's primary key refuses a stored id (no lookup first) */
        if (st != KV_OK && v->err.sqlite_rc == SQLITE_CONSTRAINT_PRIMARYKEY)
            st = kvi_err_set(&v->err, KV_INVALID, "vector id %lld is already stored", (long long)id);
    }
    if (st == KV_OK && (st = kvi_store_commit(&v->err, v->db)) == KV_OK) {
        if (id >= v->next_id)
            v->next_id = id + 1;
        cache_drop(&v->cache);   /* the copy's unchunked rows are kept in id order */
        return KV_OK;
    }
    kvi_store_rollback(&v->err, v->db);
    v->ws_valid = 0;
    cache_drop(&v->cache);
    return st;
}

/* Find row `id` in a write transaction: *found, *ref, *chunk (-1 when
 * unchunked), *slot. */
static kv_status locate(kv_vector *v, int64_t id, int *found, int64_t *ref, int64_t *chunk, int64_t *slot)
{
    sqlite3_bind_int64(v->st_get_row, 1, id);
    int rc = sqlite3_step(v->st_get_row);
    kv_status st = KV_OK;
    *found = 0;
    if (rc == SQLITE_ROW) {
        *found = 1;
        *ref = sqlite3_column_int64(v->st_get_row, 0);
        *chunk = sqlite3_column_type(v->st_get_row, 2) == SQLITE_NULL ? -1 : sqlite3_column_int64(v->st_get_row, 2);
        *slot = sqlite3_column_int64(v->st_get_row, 3);
    } else if (rc != SQLITE_DONE) {
        st = sql_fail(v, rc, "lookup row");
    }
    sqlite3_reset(v->st_get_row);
    return st;
}

/* Read-modify-write bytes [off, off+len) of column `col` of `tbl` row
 * `rowid` (incremental blob I/O: the rest of the blob is not rewritten). */
static kv_status blob_io(kv_vector *v, const char *suffix, const char *col, int64_t rowid, int write,
                         void *buf, size_t len, size_t off)
{
    char tbl[300];
    sqlite3_blob *b = NULL;
    snprintf(tbl, sizeof tbl, "%s%s", v->table, suffix);
    int rc = sqlite3_blob_open(v->db, "main", tbl, col, rowid, write, &b);
    if (rc == SQLITE_OK)
        rc = write ? sqlite3_blob_write(b, buf, (int)len, (int)off) : sqlite3_blob_read(b, buf, (int)len, (int)off);
    kv_status st = rc == SQLITE_OK ? KV_OK : sql_fail(v, rc, "chunk blob");
    sqlite3_blob_close(b);
    return st;
}

/* Clear validity bit `slot` of chunk `chunk`; drop the chunk when no valid
 * slot remains. */
static kv_status chunk_clear(kv_vector *v, int64_t chunk, int64_t slot)
{
    uint8_t valid[4096 / 8 + 1];
    sqlite3_stmt *s = NULL;
    char sql[300];
    size_t nb = 0;
    snprintf(sql, sizeof sql, "SELECT validity FROM \"%s_chunks\" WHERE chunk_id = ?1", v->table);
    kv_status st = kvi_prepare(v->db, sql, &s, &v->err);
    if (st != KV_OK)
        return st;
    sqlite3_bind_int64(s, 1, chunk);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        nb = (size_t)sqlite3_column_bytes(s, 0);
        if (nb > sizeof valid || (size_t)slot / 8 >= nb)
            st = kvi_err_set(&v->err, KV_CORRUPT, "chunk %lld: bad validity bitmap", (long long)chunk);
        else
            memcpy(valid, sqlite3_column_blob(s, 0), nb);
    } else {
        st = rc == SQLITE_DONE ? kvi_err_set(&v->err, KV_CORRUPT, "chunk %lld missing", (long long)chunk)
                               : sql_fail(v, rc, "read validity");
    }
    sqlite3_finalize(s);
    if (st != KV_OK)
        return st;
    valid[slot / 8] &= (uint8_t) ~(1u << (slot % 8));
    int any = 0;
    for (size_t i = 0; i < nb; i++)
        any |= valid[i];
    if (any)
        return blob_io(v, "_chunks", "validity", chunk, 1, &valid[slot / 8], 1, (size_t)slot / 8);
    sqlite3_bind_int64(v->st_del_chunk, 1, chunk);
    if ((st = kvi_store_step_done(&v->err, v->db, v->st_del_chunk, "delete chunk")) != KV_OK)
        return st;
    sqlite3_bind_int64(v->st_del_cvec, 1, chunk);
    return kvi_store_step_done(&v->err, v->db, v->st_del_cvec, "delete chunk");
}

/* A delete or an update of one row, and where the row was (set by the
 * body, used to mirror the change into the copy). */
typedef struct {
    int64_t id;
    int *removed;
    const void *row;      /* update: new vector or NULL */
    const void *val;      /* update: new value or NULL */
    size_t vlen;
    int found;            /* the row existed */
    int64_t chunk, slot;  /* its chunk (-1: unchunked) and slot */
} vec_write;

/* Row w->id in the copy: *ch and *slot; 0 when the copy does not have it
 * where the file has it. */
static int copy_locate(vcache *c, const vec_write *w, vchunk **ch, size_t *slot)
{
    if (w->chunk < 0) { /* unchunked rows are sorted by id */
        size_t lo = 0, hi = c->tail.size;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (c->tail.ids[mid] < w->id)
                lo = mid + 1;
            else
                hi = mid;
        }
        *ch = &c->tail;
        *slot = lo;
        return lo < c->tail.size && c->tail.ids[lo] == w->id;
    }
    size_t lo = 0, hi = c->n; /* chunks are sorted by chunk_id */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c->chunks[mid].chunk_id < w->chunk)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == c->n || c->chunks[lo].chunk_id != w->chunk || (size_t)w->slot >= c->chunks[lo].size ||
        c->chunks[lo].ids[w->slot] != w->id)
        return 0;
    *ch = &c->chunks[lo];
    *slot = (size_t)w->slot;
    return 1;
}

/* Mirror a committed delete (del) or vector update into the copy; drop
 * the copy when it does not hold the row where the file did. */
static void cache_apply_row(kv_vector *v, const vec_write *w, int del)
{
    vchunk *ch;
    size_t slot;
    if (!v->cache.loaded || !w->found || (!del && !w->row))
        return;
    if (!copy_locate(&v->cache, w, &ch, &slot)) {
        cache_drop(&v->cache);
        return;
    }
    if (!del) {
        memcpy(ch->vecs + slot * v->row_bytes, w->row, v->row_bytes);
    } else if (ch->valid) {
        ch->valid[slot >> 3] &= (uint8_t) ~(1u << (slot & 7));
    } else {
        ch->size--;
        memmove(ch->ids + slot, ch->ids + slot + 1, (ch->size - slot) * 8);
        memmove(ch->vecs + slot * v->row_bytes, ch->vecs + (slot + 1) * v->row_bytes,
                (ch->size - slot) * v->row_bytes);
    }
}

/* Run `body` between BEGIN IMMEDIATE and COMMIT, then mirror the change
 * into the copy; the write state is rebuilt from the file next time. */
static kv_status write_txn(kv_vector *v, kv_status (*body)(kv_vector *, vec_write *), vec_write *w,
                           int del)
{
    kv_status st = kvi_store_begin(&v->err, v->db, 1);
    if (st != KV_OK)
        return st;
    if ((st = body(v, w)) != KV_OK)
        kvi_store_rollback(&v->err, v->db);
    else
        st = kvi_store_commit(&v->err, v->db);
    v->ws_valid = 0;
    if (st == KV_OK)
        cache_apply_row(v, w, del);
    else
        cache_drop(&v->cache);
    return st;
}

static kv_status delete_body(kv_vector *v, vec_write *w)
{
    int64_t ref;
    kv_status st = locate(v, w->id, &w->found, &ref, &w->chunk, &w->slot);
    if (st != KV_OK || !w->found)
        return st;
    sqlite3_bind_int64(v->st_del_row, 1, w->id);
    if ((st = kvi_store_step_done(&v->err, v->db, v->st_del_row, "delete vector")) != KV_OK)
        return st;
    sqlite3_bind_int64(v->st_del_val, 1, ref);
    if ((st = kvi_store_step_done(&v->err, v->db, v->st_del_val, "delete value")) != KV_OK)
        return st;
    if (w->chunk >= 0 && (st = chunk_clear(v, w->chunk, w->slot)) != KV_OK)
        return st;
    *w->removed = 1;
    return KV_OK;
}

kv_status kv_vector_delete(kv_vector *v, int64_t id, int *removed)
{
    int dummy;
    kvi_err_clear(&v->err);
    if (v->vec0)
        return read_only(v);
    vec_write w = {.id = id, .removed = removed ? removed : &dummy};
    *w.removed = 0;
    return write_txn(v, delete_body, &w, 1);
}

static kv_status update_body(kv_vector *v, vec_write *w)
{
    kv_status st = KV_OK;
    if (w->row && (st = write_state(v)) != KV_OK)   /* with the layout check */
        return st;
    if (w->row) {
        int64_t ref;
        if ((st = locate(v, w->id, &w->found, &ref, &w->chunk, &w->slot)) != KV_OK)
            return st;
        if (w->found && w->chunk < 0) {
            sqlite3_bind_blob64(v->st_upd_vec, 1, w->row, v->row_bytes, SQLITE_STATIC);
            sqlite3_bind_int64(v->st_upd_vec, 2, w->id);
            st = kvi_store_step_done(&v->err, v->db, v->st_upd_vec, "update vector");
        } else if (w->found) {
            st = blob_io(v, "_chunk_vectors", "vectors", w->chunk, 1, (void *)w->row, v->row_bytes,
                         (size_t)w->slot * v->row_bytes);
        }
    }
    if (st == KV_OK && w->val)
        st = kvi_store_set_value(&v->err, v->db, v->st_get_row, v->st_upd_val, w->id, w->val, w->vlen);
    return st;
}

kv_status kv_vector_update(kv_vector *v, int64_t id, const void *vec, size_t vbytes,
                           const void *val, size_t vlen)
{
    kv_status st;
    kvi_err_clear(&v->err);
    if (v->vec0)
        return read_only(v);
    if (!vec && !val)
        return kvi_err_set(&v->err, KV_INVALID, "Must provide either vector or value to update");
    vec_write w = {.id = id, .val = val, .vlen = vlen};
    if (vec && (check_bytes(v, vbytes, 1, &st) < 0 || !(w.row = prepare_rows(v, vec, 1, v->scratch, &st))))
        return st;
    return write_txn(v, update_body, &w, 0);
}

/* ====================================================================== */
/* 5. Search                                                                */
/* ====================================================================== */

void kv_vector_hits_free(kv_vector_hits *h)
{
    if (!h)
        return;
    kvi_free(h->mem_);
    kvi_free(h->hits);
    kvi_free(h);
}

/* One unit of scan work: rows [first, first+n) of a chunk of the copy. */
typedef struct {
    const vchunk *ch;
    size_t first, n;
} scan_unit;

/* One scan job: units [u0, u1) against queries q[0..nq), one heap each;
 * with `claim`, the units are instead taken one at a time from the shared
 * counter *claim (below u1) by every job of the scan. */
typedef struct {
    const kv_vector *v;
    const scan_unit *units;
    size_t u0, u1;
    size_t *claim;      /* shared next unit, or NULL */
    const uint8_t *q;   /* nq * row_bytes */
    size_t nq;
    kvk_heap *heaps;    /* nq heaps */
} scan_job;

static void *scan_run(void *arg)
{
    scan_job *j = arg;
    const kv_vector *v = j->v;
    size_t block = MANY_BLOCK_BYTES / v->row_bytes;
    if (block == 0 || j->nq == 1)
        block = (size_t)-1;
    for (size_t u = j->u0;; u++) {
        if (j->claim)
            u = __atomic_fetch_add(j->claim, 1, __ATOMIC_RELAXED);
        if (u >= j->u1)
            break;
        const scan_unit *su = &j->units[u];
        /* block the rows so each block is read from memory once and stays
         * in cache while every query is scored against it */
        for (size_t b = 0; b < su->n; b += block) {
            size_t m = su->n - b < block ? su->n - b : block, s = su->first + b;
            const uint8_t *rows = su->ch->vecs + s * v->row_bytes;
            for (size_t qi = 0; qi < j->nq; qi++)
                kvk_scan(v->score, j->q + qi * v->row_bytes, rows, m, v->row_bytes, v->dims,
                         su->ch->valid ? su->ch->valid : NULL, su->ch->valid ? s : 0,
                         su->ch->ids + s, &j->heaps[qi]);
        }
    }
    return NULL;
}

static int auto_threads(const kv_vector *v, size_t rows)
{
    if (v->threads > 0)
        return v->threads;
    if ((double)rows * (double)v->row_bytes < PARALLEL_MIN_BYTES)
        return 1;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

/*
 * Scan the copy for nq queries (prepared, nq * row_bytes bytes), keeping
 * the best k of each in heaps[qi] (storage k per heap, caller-owned).
 * Splits the rows into units of one chunk. With several threads each has
 * its own heaps (merged at the end) and takes the next unscanned unit from
 * a shared counter whenever it finishes one, so a thread that gets less
 * CPU (a core shared with other work) scans fewer units instead of making
 * the others wait for its share; the merge by (score, id) makes the result
 * independent of which thread scanned what.
 */
static kv_status scan_copy(kv_vector *v, const uint8_t *q, size_t nq, size_t k, kvk_heap *heaps)
{
    vcache *c = &v->cache;
    size_t nunits = c->n + 1, rows = c->tail.size;
    scan_unit *units = kvi_malloc(nunits * sizeof *units);
    if (!units)
        return kvi_err_set(&v->err, KV_NOMEM, "out of memory");
    size_t nu = 0;
    for (size_t i = 0; i < c->n; i++) {
        units[nu++] = (scan_unit){&c->chunks[i], 0, c->chunks[i].size};
        rows += c->chunks[i].size;
    }
    if (c->tail.size)
        units[nu++] = (scan_unit){&c->tail, 0, c->tail.size};
    int nt = auto_threads(v, rows);
    if ((size_t)nt > nu)
        nt = nu ? (int)nu : 1;
    kv_status st = KV_OK;
    if (nt <= 1) {
        scan_job j = {v, units, 0, nu, NULL, q, nq, heaps};
        scan_run(&j);
        kvi_free(units);
        return KV_OK;
    }
    scan_job *jobs = kvi_calloc((size_t)nt, sizeof *jobs);
    pthread_t *tids = kvi_calloc((size_t)nt, sizeof *tids);
    kvk_cand *store = kvi_malloc((size_t)nt * nq * (k ? k : 1) * sizeof *store);
    kvk_heap *th = kvi_calloc((size_t)nt * nq, sizeof *th);
    if (!jobs || !tids || !store || !th) {
        st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
        goto out;
    }
    size_t claim = 0;
    for (int t = 0; t < nt; t++) {
        jobs[t] = (scan_job){v, units, 0, nu, &claim, q, nq, th + (size_t)t * nq};
        for (size_t qi = 0; qi < nq; qi++)
            jobs[t].heaps[qi] = (kvk_heap){store + ((size_t)t * nq + qi) * (k ? k : 1), 0, k};
    }
    /* jobs 1..nt-1 on new threads, job 0 on this one */
    int started = 1;
    for (; started < nt; started++)
        if (pthread_create(&tids[started], NULL, scan_run, &jobs[started]) != 0)
            break;
    for (int t = started; t < nt; t++)
        scan_run(&jobs[t]); /* could not start a thread: scan here */
    scan_run(&jobs[0]);
    for (int t = 1; t < started; t++)
        pthread_join(tids[t], NULL);
    for (int t = 0; t < nt; t++)
        for (size_t qi = 0; qi < nq; qi++) {
            kvk_heap *h = &jobs[t].heaps[qi];
            for (size_t i = 0; i < h->n; i++)
                kvk_heap_push(&heaps[qi], h->c[i].score, h->c[i].id, h->c[i].row);
        }
out:
    kvi_free(jobs);
    kvi_free(tids);
    kvi_free(store);
    kvi_free(th);
    kvi_free(units);
    return st;
}

/* value_ref of the copy's row at `row` (vec0 tables keep them), else -1. */
static int64_t copy_ref(const vcache *c, const uint8_t *row, size_t row_bytes)
{
    for (size_t i = 0; i < c->n; i++) {
        const vchunk *ch = &c->chunks[i];
        if (ch->refs && row >= ch->vecs && row < ch->vecs + ch->size * row_bytes)
            return ch->refs[(size_t)(row - ch->vecs) / row_bytes];
    }
    return -1;
}

typedef struct {
    double dist;
    int64_t id;
    int64_t ref;
} final_hit;

static int final_cmp(const void *a, const void *b)
{
    const final_hit *x = a, *y = b;
    if (x->dist != y->dist)
        return x->dist < y->dist ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* Turn a heap into results: distances recomputed in double on the stored
 * copy, sorted by (distance, id) and reported rounded to float32
 * (kv_vector_distance), with their values read in the current
 * transaction. */
static kv_status build_hits(kv_vector *v, const uint8_t *q, kvk_heap *hp, kv_vector_hits **out)
{
    kv_status st = KV_OK;
    kv_vector_hits *h = kvi_calloc(1, sizeof *h);
    final_hit *f = kvi_malloc((hp->n ? hp->n : 1) * sizeof *f);
    size_t n = 0, total = 0, cap = 0;
    uint8_t *mem = NULL;
    size_t *offs = kvi_malloc((hp->n ? hp->n : 1) * sizeof *offs);
    if (!h || !f || !offs || (hp->n && !(h->hits = kvi_calloc(hp->n, sizeof *h->hits)))) {
        st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
        goto out;
    }
    /* exact distances; with a value_ref (native rows need one lookup each) */
    for (size_t i = 0; i < hp->n; i++) {
        const uint8_t *row = hp->c[i].row;
        f[n++] = (final_hit){distance_exact(v->metric, v->elem, q, row, v->dims), hp->c[i].id,
                             v->vec0 ? copy_ref(&v->cache, row, v->row_bytes) : -1};
    }
    qsort(f, n, sizeof *f, final_cmp);
    for (size_t i = 0; i < n && st == KV_OK; i++) {
        int64_t ref = f[i].ref;
        if (ref < 0 && v->vec0) {
            st = kvi_err_set(&v->err, KV_CORRUPT, "row %lld has no value_ref", (long long)f[i].id);
            break;
        }
        if (ref < 0) {
            int found;
            int64_t chunk, slot;
            if ((st = locate(v, f[i].id, &found, &ref, &chunk, &slot)) != KV_OK)
                break;
            if (!found) {
                st = kvi_err_set(&v->err, KV_CORRUPT, "row %lld in a chunk but not in the table",
                                 (long long)f[i].id);
                break;
            }
        }
        sqlite3_bind_int64(v->st_get_val, 1, ref);
        int rc = sqlite3_step(v->st_get_val);
        size_t len = 0;
        const void *p = NULL;
        if (rc == SQLITE_ROW) {
            len = (size_t)sqlite3_column_bytes(v->st_get_val, 0);
            p = sqlite3_column_blob(v->st_get_val, 0);
        } else if (rc != SQLITE_DONE) {
            st = sql_fail(v, rc, "read value");
        }
        if (st == KV_OK && total + len + 1 > cap) {
            size_t ncap = (total + len + 1) * 2;
            uint8_t *nm = kvi_realloc(mem, ncap);
            if (!nm)
                st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
            else {
                mem = nm;
                cap = ncap;
            }
        }
        if (st == KV_OK) {
            if (len)
                memcpy(mem + total, p, len);
            offs[i] = total;
            h->hits[i] = (kv_vector_hit){f[i].id, (double)(float)f[i].dist, NULL, len};
            total += len;
        }
        sqlite3_reset(v->st_get_val);
    }
    if (st == KV_OK) {
        for (size_t i = 0; i < n; i++)
            h->hits[i].val = mem + offs[i];
        h->n = n;
        h->mem_ = mem;
        mem = NULL;
    }
out:
    kvi_free(f);
    kvi_free(offs);
    kvi_free(mem);
    if (st != KV_OK) {
        kv_vector_hits_free(h);
        return st;
    }
    *out = h;
    return KV_OK;
}

kv_status kv_vector_search_many(kv_vector *v, const void *queries, size_t nq, size_t qbytes,
                                int64_t k, kv_vector_hits **out)
{
    kv_status st = KV_OK;
    uint8_t *q = NULL;
    kvk_heap *heaps = NULL;
    kvk_cand *store = NULL;

    kvi_err_clear(&v->err);
    for (size_t i = 0; i < nq; i++)
        out[i] = NULL;
    if (k < 0)
        return kvi_err_set(&v->err, KV_INVALID, "k must be >= 0, got %lld", (long long)k);
    if (k > KV_VECTOR_MAX_K)
        return kvi_err_set(&v->err, KV_INVALID,
                           "k value in knn query too large, provided %lld and the limit is %d",
                           (long long)k, KV_VECTOR_MAX_K);
    if (nq == 0)
        return KV_OK;
    if (!queries || check_bytes(v, qbytes, nq, &st) < 0)
        return queries ? st : kvi_err_set(&v->err, KV_INVALID, "query is NULL");
    if (!(q = mi_malloc_aligned(nq * v->row_bytes, 64)))
        return kvi_err_set(&v->err, KV_NOMEM, "out of memory");
    const void *prepared = prepare_rows(v, queries, nq, q, &st);
    if (!prepared)
        goto done_nolock;
    if (prepared != q)
        memcpy(q, prepared, nq * v->row_bytes);
    /* queries go through the scan in groups, which bounds the heaps'
     * memory (group * k candidates) for any batch size */
    size_t kk = (size_t)k, group = nq < MANY_GROUP ? nq : MANY_GROUP;
    heaps = kvi_calloc(group, sizeof *heaps);
    store = kvi_malloc(group * (kk ? kk : 1) * sizeof *store);
    if (!heaps || !store) {
        st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
        goto done_nolock;
    }
    if ((st = kvi_store_begin(&v->err, v->db, 0)) != KV_OK)
        goto done_nolock;
    st = cache_refresh(v);
    for (size_t g = 0; g < nq && st == KV_OK; g += group) {
        size_t gn = nq - g < group ? nq - g : group;
        const uint8_t *gq = q + g * v->row_bytes;
        for (size_t i = 0; i < gn; i++)
            heaps[i] = (kvk_heap){store + i * (kk ? kk : 1), 0, kk};
        if (kk)
            st = scan_copy(v, gq, gn, kk, heaps);
        for (size_t i = 0; i < gn && st == KV_OK; i++)
            st = build_hits(v, gq + i * v->row_bytes, &heaps[i], &out[g + i]);
    }
    kvi_store_read_end(&v->err, v->db, NULL, NULL);
    if (st != KV_OK)
        for (size_t i = 0; i < nq; i++) {
            kv_vector_hits_free(out[i]);
            out[i] = NULL;
        }
done_nolock:
    kvi_free(heaps);
    kvi_free(store);
    kvi_free(q);
    return st;
}

kv_status kv_vector_search(kv_vector *v, const void *query, size_t qbytes, int64_t k,
                           kv_vector_hits **out)
{
    return kv_vector_search_many(v, query, 1, qbytes, k, out);
}

/* ====================================================================== */
/* 6. Reads by id                                                           */
/* ====================================================================== */

/* In a read transaction, vec0 tables: row `id` from the copy. */
static kv_status vec0_row(kv_vector *v, int64_t id, vchunk **ch, size_t *slot)
{
    kv_status st = cache_refresh(v);
    if (st != KV_OK)
        return st;
    if (!cache_find(&v->cache, id, ch, slot))
        return kvi_err_set(&v->err, KV_NOTFOUND, "ID %lld not found", (long long)id);
    return KV_OK;
}

kv_status kv_vector_get_by_id(kv_vector *v, int64_t id, uint8_t **vec, size_t *vbytes,
                              uint8_t **val, size_t *vlen)
{
    kv_status st;
    int64_t ref = 0;
    kvi_err_clear(&v->err);
    *vec = *val = NULL;
    *vbytes = *vlen = 0;
    if ((st = kvi_store_begin(&v->err, v->db, 0)) != KV_OK)
        return st;
    if (!(*vec = kvi_malloc(v->row_bytes))) {
        st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
        goto out;
    }
    *vbytes = v->row_bytes;
    if (v->vec0) {
        vchunk *ch;
        size_t slot;
        if ((st = vec0_row(v, id, &ch, &slot)) != KV_OK)
            goto out;
        memcpy(*vec, ch->vecs + slot * v->row_bytes, v->row_bytes);
        ref = ch->refs[slot];
    } else {
        st = kvi_store_step_id(&v->err, v->db, v->st_get_row, id, id);
        if (st != KV_OK)
            goto out;
        ref = sqlite3_column_int64(v->st_get_row, 0);
        size_t len = (size_t)sqlite3_column_bytes(v->st_get_row, 1);
        if (sqlite3_column_type(v->st_get_row, 2) == SQLITE_NULL) {
            if (len != v->row_bytes)
                st = kvi_err_set(&v->err, KV_CORRUPT, "stored vector of row %lld has %zu bytes, expected %zu",
                                 (long long)id, len, v->row_bytes);
            else
                memcpy(*vec, sqlite3_column_blob(v->st_get_row, 1), len);
        } else {
            int64_t chunk = sqlite3_column_int64(v->st_get_row, 2);
            int64_t slot = sqlite3_column_int64(v->st_get_row, 3);
            st = blob_io(v, "_chunk_vectors", "vectors", chunk, 0, *vec, v->row_bytes,
                         (size_t)slot * v->row_bytes);
        }
        sqlite3_reset(v->st_get_row);
        if (st != KV_OK)
            goto out;
    }
    st = kvi_store_step_id(&v->err, v->db, v->st_get_val, ref, id);
    if (st == KV_OK)
        st = kvi_store_column_copy(&v->err, v->st_get_val, 0, 0, val, vlen);
out:
    kvi_store_read_end(&v->err, v->db, v->st_get_row, v->st_get_val);
    if (st != KV_OK) {
        kvi_free(*vec);
        kvi_free(*val);
        *vec = *val = NULL;
        *vbytes = *vlen = 0;
    }
    return st;
}

kv_status kv_vector_exists(kv_vector *v, int64_t id, int *found)
{
    kvi_err_clear(&v->err);
    if (!v->vec0)
        return kvi_store_exists(&v->err, v->db, v->st_get_row, id, found, "lookup row");
    kv_status st = kvi_store_begin(&v->err, v->db, 0);
    if (st != KV_OK)
        return st;
    vchunk *ch;
    size_t slot;
    st = vec0_row(v, id, &ch, &slot);
    *found = st == KV_OK;
    if (st == KV_NOTFOUND)
        st = KV_OK;
    kvi_store_read_end(&v->err, v->db, NULL, NULL);
    kvi_err_clear(&v->err);
    return st;
}

kv_status kv_vector_count(kv_vector *v, int64_t *count)
{
    kvi_err_clear(&v->err);
    if (v->vec0) {
        kv_status st = kvi_store_begin(&v->err, v->db, 0);
        if (st == KV_OK)
            st = cache_refresh(v);
        int64_t n = 0;
        for (size_t i = 0; st == KV_OK && i < v->cache.n; i++)
            for (size_t s = 0; s < v->cache.chunks[i].size; s++)
                n += (v->cache.chunks[i].valid[s >> 3] >> (s & 7)) & 1;
        kvi_store_read_end(&v->err, v->db, NULL, NULL);
        *count = n;
        return st;
    }
    int rc = sqlite3_step(v->st_count);
    kv_status st = KV_OK;
    if (rc == SQLITE_ROW)
        *count = sqlite3_column_int64(v->st_count, 0);
    else
        st = sql_fail(v, rc, NULL);
    sqlite3_reset(v->st_count);
    return st;
}

/* ====================================================================== */
/* 7. vec0 migration                                                        */
/* ====================================================================== */

/* Drop vec0's shadow tables of v->table and its schema entry, in the open
 * write transaction. A virtual table owns no b-tree pages (rootpage 0), so
 * removing its sqlite_master row with writable_schema loses nothing; the
 * schema cookie is bumped so every connection reloads the schema. */
static kv_status drop_vec0(kv_vector *v)
{
    char sql[1024];
    sqlite3_stmt *s = NULL;
    kv_status st;
    const char *t = v->table;
    char (*names)[300] = NULL;
    size_t n = 0;
    snprintf(sql, sizeof sql,
             "SELECT name FROM sqlite_master WHERE type = 'table' AND (name IN "
             "('%s_chunks', '%s_rowids', '%s_info', '%s_auxiliary') OR name GLOB '%s_vector_chunks[0-9][0-9]' "
             "OR name GLOB '%s_metadatachunks[0-9][0-9]' OR name GLOB '%s_metadatatext[0-9][0-9]')",
             t, t, t, t, t, t, t);
    if ((st = kvi_prepare(v->db, sql, &s, &v->err)) != KV_OK)
        return st;
    if (!(names = kvi_calloc(64, sizeof *names))) {
        sqlite3_finalize(s);
        return kvi_err_set(&v->err, KV_NOMEM, "out of memory");
    }
    while (sqlite3_step(s) == SQLITE_ROW && n < 64)
        snprintf(names[n++], sizeof names[0], "%s", (const char *)sqlite3_column_text(s, 0));
    sqlite3_finalize(s);
    for (size_t i = 0; i < n && st == KV_OK; i++) {
        snprintf(sql, sizeof sql, "DROP TABLE \"%s\"", names[i]);
        st = kvi_exec(v->db, sql, &v->err);
    }
    kvi_free(names);
    if (st != KV_OK)
        return st;
    int64_t cookie = kvi_query_i64(v->db, "PRAGMA schema_version");
    snprintf(sql, sizeof sql,
             "PRAGMA writable_schema = ON;"
             "DELETE FROM sqlite_master WHERE type = 'table' AND name = '%s' AND rootpage = 0 "
             "AND sql LIKE 'CREATE VIRTUAL TABLE%%';"
             "PRAGMA schema_version = %lld;"
             "PRAGMA writable_schema = OFF",
             t, (long long)cookie + 1);
    return kvi_exec(v->db, sql, &v->err);
}

kv_status kv_vector_migrate_vec0(const char *path, const char *table, int64_t *moved, char *err,
                                 size_t errlen)
{
    char msg[512] = "";
    vec0_decl d;
    sqlite3 *db = NULL;
    char *vsql = NULL;
    kv_vector *v = NULL;
    kv_status st;
    int64_t *ids = NULL, *refs = NULL;
    uint8_t *rows = NULL;
    size_t n = 0;

    if (moved)
        *moved = 0;
    if (kvi_table_name_valid(table) != KV_OK) {
        snprintf(msg, sizeof msg, "Invalid table name: %s", table ? table : "(null)");
        st = KV_INVALID;
        goto fail;
    }
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        snprintf(msg, sizeof msg, "cannot open %s: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        st = KV_IO;
        goto fail;
    }
    vsql = vec0_sql(db, table);
    sqlite3_close(db);
    if (!vsql) {
        snprintf(msg, sizeof msg, "table %s of %s is not a sqlite-vec vec0 table", table, path);
        st = KV_INVALID;
        goto fail;
    }
    if (vec0_parse(vsql, &d, msg, sizeof msg) < 0) {
        st = KV_INVALID;
        goto fail;
    }
    if ((st = kv_vector_open(path, table, d.dims, d.metric, d.elem, &v, msg, sizeof msg)) != KV_OK)
        goto fail;
    if ((st = kvi_store_begin(&v->err, v->db, 1)) != KV_OK)
        goto fail_v;
    if ((st = cache_refresh(v)) != KV_OK)
        goto fail_txn;
    /* every valid slot, in chunk order (vec0 appends, so ascending rowid) */
    for (size_t i = 0; i < v->cache.n; i++)
        n += v->cache.chunks[i].size;
    ids = kvi_malloc((n ? n : 1) * 8);
    refs = kvi_malloc((n ? n : 1) * 8);
    rows = mi_malloc_aligned((n ? n : 1) * v->row_bytes, 64);
    if (!ids || !refs || !rows) {
        st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
        goto fail_txn;
    }
    n = 0;
    for (size_t i = 0; i < v->cache.n; i++) {
        const vchunk *ch = &v->cache.chunks[i];
        for (size_t s = 0; s < ch->size; s++) {
            if (!(ch->valid[s >> 3] & (1u << (s & 7))))
                continue;
            ids[n] = ch->ids[s];
            refs[n] = ch->refs[s];
            memcpy(rows + n * v->row_bytes, ch->vecs + s * v->row_bytes, v->row_bytes);
            n++;
        }
    }
    sqlite3_finalize(v->st_load);
    v->st_load = NULL;
    v->vec0 = 0;
    int64_t next_chunk, unchunked, mark;
    if ((st = drop_vec0(v)) != KV_OK || (st = create_schema(v)) != KV_OK ||
        (st = prepare_native(v)) != KV_OK || (st = write_state(v)) != KV_OK ||
        (st = put_rows(v, n, rows, 0, ids, refs, &next_chunk, &unchunked, &mark)) != KV_OK)
        goto fail_txn;
    if ((st = kvi_store_commit(&v->err, v->db)) != KV_OK)
        goto fail_v;
    if (moved)
        *moved = (int64_t)n;
    kvi_free(ids);
    kvi_free(refs);
    kvi_free(rows);
    sqlite3_free(vsql);
    kv_vector_close(v);
    return KV_OK;

fail_txn:
    kvi_store_rollback(&v->err, v->db);
fail_v:
    snprintf(msg, sizeof msg, "migrate %.64s: %.400s", table, v->err.msg);
    kv_vector_close(v);
fail:
    kvi_free(ids);
    kvi_free(refs);
    kvi_free(rows);
    sqlite3_free(vsql);
    kvi_msg_copy(msg, err, errlen);
    return st;
}

KV_API void kv_vector_set_commit_guard(kv_vector *v, kv_commit_guard *g)
{
    kvi_commit_guard_install(v->db, g);
}

KV_API void kv_vector_conn(kv_vector *v, kv_conn *out)
{
    *out = (kv_conn){.db = v->db, .err = &v->err, .stmts = &v->oprec, .mu = NULL};
}

KV_API kv_status kv_vector_tx_begin(kv_vector *v)
{
    KV_ASSERT(v);
    return kvi_store_tx_begin(&v->err, v->db);
}

KV_API kv_status kv_vector_tx_end(kv_vector *v, int commit)
{
    KV_ASSERT(v);
    kv_status st = kvi_store_tx_end(&v->err, v->db, commit);
    if (!commit || st != KV_OK) {
        /* the writes mirrored into the copy and the write state are undone */
        v->ws_valid = 0;
        cache_drop(&v->cache);
    }
    return st;
}
