/*
 * vector.c - the vector store (API.md §8): vectors in a plain SQLite table,
 * exact k-nearest-neighbour search by a brute-force scan with a bounded
 * max-heap. Layout and distance definitions: include/kvault/vector.h and
 * docs/vectors.md.
 *
 * Sections: 1. distances  2. open/close  3. writes  4. search and reads.
 *
 * The scan reads each row's vector straight from SQLite's row buffer
 * (sqlite3_column_blob, no copy) inside one read transaction, so a search
 * sees one snapshot of the table and its values.
 */
#include "store_internal.h"
#include "kvault/vector.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "vector.c reads stored float32 LE vectors in place: little-endian hosts only"
#endif

struct kv_vector {
    sqlite3 *db;              /* owned connection */
    char *table;              /* owned table name */
    size_t dims;              /* dimensions */
    size_t row_bytes;         /* bytes of one stored vector */
    kv_vector_metric metric;
    kv_vector_elem elem;
    float *scratch;           /* row_bytes-sized buffer for normalised copies */
    sqlite3_stmt *st_ins_val; /* INSERT INTO t_values(value) VALUES(?1) */
    sqlite3_stmt *st_ins_vec; /* INSERT INTO t(value_ref, vector) VALUES(?1, ?2) */
    sqlite3_stmt *st_scan;    /* SELECT id, value_ref, vector FROM t */
    sqlite3_stmt *st_get_val; /* SELECT value FROM t_values WHERE id=?1 */
    sqlite3_stmt *st_get_row; /* SELECT value_ref, vector FROM t WHERE id=?1 */
    sqlite3_stmt *st_del_vec; /* DELETE FROM t WHERE id=?1 */
    sqlite3_stmt *st_del_val; /* DELETE FROM t_values WHERE id=?1 */
    sqlite3_stmt *st_upd_vec; /* UPDATE t SET vector=?1 WHERE id=?2 */
    sqlite3_stmt *st_upd_val; /* UPDATE t_values SET value=?1 WHERE id=?2 */
    sqlite3_stmt *st_count;   /* SELECT COUNT(*) FROM t */
    kvi_err err;              /* last failure */
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
    size_t i = 0;
    for (; i + 8 <= nbytes; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        acc += (uint64_t)__builtin_popcountll(x ^ y);
    }
    for (; i < nbytes; i++)
        acc += (uint64_t)__builtin_popcount((unsigned)(a[i] ^ b[i]));
    return (double)acc;
}

double kv_vector_distance(kv_vector_metric metric, kv_vector_elem elem, const void *a, const void *b,
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
    return (double)(float)d; /* float32 precision, as sqlite-vec reports */
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

/* ====================================================================== */
/* 2. Open / close                                                          */
/* ====================================================================== */

const char *kv_vector_errmsg(const kv_vector *v) { return v ? v->err.msg : ""; }

void kv_vector_free(void *p) { kvi_free(p); }

void kv_vector_close(kv_vector *v)
{
    if (!v)
        return;
    sqlite3_stmt *sts[] = {v->st_ins_val, v->st_ins_vec, v->st_scan,    v->st_get_val,
                           v->st_get_row, v->st_del_vec, v->st_del_val, v->st_upd_vec,
                           v->st_upd_val, v->st_count};
    for (size_t i = 0; i < sizeof sts / sizeof sts[0]; i++)
        sqlite3_finalize(sts[i]);
    if (v->db) {
        sqlite3_wal_checkpoint_v2(v->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        sqlite3_close_v2(v->db);
    }
    kvi_free(v->scratch);
    kvi_free(v->table);
    kvi_free(v);
}

kv_status kv_vector_open(const char *path, const char *table, size_t dims, kv_vector_metric metric,
                         kv_vector_elem elem, kv_vector **out, char *err, size_t errlen)
{
    kv_vector *v = NULL;
    kv_status st;
    kvi_conn_opts o;
    char msg[512] = "", sql[1024];

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
    o.busy_timeout_ms = 0; /* API.md §8.1: no busy timeout */
    o.nomutex = 1;
    if ((st = kvi_conn_open(path, &o, &v->db, msg, sizeof msg)) != KV_OK)
        goto fail;

    snprintf(sql, sizeof sql,
             "CREATE TABLE IF NOT EXISTS \"%s\" (id INTEGER PRIMARY KEY, "
             "value_ref INTEGER NOT NULL, vector BLOB NOT NULL);\n"
             "CREATE TABLE IF NOT EXISTS \"%s_values\" "
             "(id INTEGER PRIMARY KEY AUTOINCREMENT, value BLOB NOT NULL)",
             table, table);
    if ((st = kvi_exec(v->db, sql, &v->err)) != KV_OK)
        goto fail_msg;

#define PREP(stmt, ...)                                              \
    do {                                                             \
        snprintf(sql, sizeof sql, __VA_ARGS__);                      \
        if ((st = kvi_prepare(v->db, sql, &(stmt), &v->err)) != KV_OK) \
            goto fail_msg;                                           \
    } while (0)

    PREP(v->st_ins_val, "INSERT INTO \"%s_values\"(value) VALUES(?1)", table);
    PREP(v->st_ins_vec, "INSERT INTO \"%s\"(value_ref, vector) VALUES(?1, ?2)", table);
    PREP(v->st_scan, "SELECT id, value_ref, vector FROM \"%s\"", table);
    PREP(v->st_get_val, "SELECT value FROM \"%s_values\" WHERE id = ?1", table);
    PREP(v->st_get_row, "SELECT value_ref, vector FROM \"%s\" WHERE id = ?1", table);
    PREP(v->st_del_vec, "DELETE FROM \"%s\" WHERE id = ?1", table);
    PREP(v->st_del_val, "DELETE FROM \"%s_values\" WHERE id = ?1", table);
    PREP(v->st_upd_vec, "UPDATE \"%s\" SET vector = ?1 WHERE id = ?2", table);
    PREP(v->st_upd_val, "UPDATE \"%s_values\" SET value = ?1 WHERE id = ?2", table);
    PREP(v->st_count, "SELECT COUNT(*) FROM \"%s\"", table);
#undef PREP
    *out = v;
    return KV_OK;

fail_msg:
    snprintf(msg, sizeof msg, "%s", v->err.msg);
fail:
    kv_vector_close(v);
    kvi_msg_copy(msg, err, errlen);
    return st;
}

/* ====================================================================== */
/* 3. Writes                                                                */
/* ====================================================================== */

static kv_status sql_fail(kv_vector *v, int rc, const char *op)
{
    return kvi_err_sqlite(&v->err, v->db, rc, op);
}

/*
 * Check a caller's vector and return the bytes to store/search with: the
 * input itself, or (cosine) a normalised copy in v->scratch. NULL with the
 * error recorded on failure.
 */
static const void *prepare_vec(kv_vector *v, const void *vec, size_t vbytes, kv_status *st)
{
    *st = KV_OK;
    if (!vec || vbytes != v->row_bytes) {
        *st = kvi_err_set(&v->err, KV_INVALID, "Expected %zu dimensions, got %zu", v->dims,
                          v->elem == KV_VECTOR_F32 ? vbytes / 4 : v->elem == KV_VECTOR_BIT ? vbytes * 8 : vbytes);
        return NULL;
    }
    if (v->elem != KV_VECTOR_F32)
        return vec;
    const uint8_t *p = vec;
    double norm2 = 0.0;
    for (size_t i = 0; i < v->dims; i++) {
        float f = load_f32(p + 4 * i);
        if (!isfinite(f)) {
            *st = kvi_err_set(&v->err, KV_INVALID, "vector element %zu is not finite", i);
            return NULL;
        }
        norm2 += (double)f * f;
    }
    if (v->metric != KV_VECTOR_COSINE || norm2 == 0.0)
        return vec;
    double inv = 1.0 / sqrt(norm2);
    for (size_t i = 0; i < v->dims; i++)
        v->scratch[i] = (float)(load_f32(p + 4 * i) * inv);
    return v->scratch;
}

kv_status kv_vector_insert(kv_vector *v, const void *vec, size_t vbytes, const void *val,
                           size_t vlen, int64_t *id)
{
    kv_status st;
    kvi_err_clear(&v->err);
    const void *row = prepare_vec(v, vec, vbytes, &st);
    if (!row)
        return st;
    sqlite3_bind_blob64(v->st_ins_vec, 2, row, v->row_bytes, SQLITE_STATIC);
    return kvi_store_insert(&v->err, v->db, v->st_ins_val, val, vlen, v->st_ins_vec, 1,
                            "insert vector", id);
}

kv_status kv_vector_delete(kv_vector *v, int64_t id, int *removed)
{
    kvi_err_clear(&v->err);
    return kvi_store_delete(&v->err, v->db, v->st_get_row, v->st_del_vec, v->st_del_val, id, removed, "vector");
}

kv_status kv_vector_update(kv_vector *v, int64_t id, const void *vec, size_t vbytes,
                           const void *val, size_t vlen)
{
    kv_status st;
    const void *row = NULL;
    kvi_err_clear(&v->err);
    if (!vec && !val)
        return kvi_err_set(&v->err, KV_INVALID, "Must provide either vector or value to update");
    if (vec && !(row = prepare_vec(v, vec, vbytes, &st)))
        return st;
    if (row) {
        sqlite3_bind_blob64(v->st_upd_vec, 1, row, v->row_bytes, SQLITE_STATIC);
        sqlite3_bind_int64(v->st_upd_vec, 2, id);
    }
    return kvi_store_update(&v->err, v->db, row ? v->st_upd_vec : NULL, "update vector",
                            v->st_get_row, v->st_upd_val, id, val, vlen);
}

/* ====================================================================== */
/* 4. Search and reads                                                      */
/* ====================================================================== */

/* Heap entry: a candidate and where its value lives. */
typedef struct {
    double dist;
    int64_t id;
    int64_t ref;
} cand;

/* Total order of candidates: distance, then id (lower is better). */
static inline int cand_worse(const cand *a, const cand *b)
{
    return a->dist > b->dist || (a->dist == b->dist && a->id > b->id);
}

/* Max-heap on "worse": heap[0] is the worst kept candidate, evicted when a
 * better one arrives (bounded heap of size k). */
static void heap_sift_down(cand *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && cand_worse(&h[l], &h[m]))
            m = l;
        if (r < n && cand_worse(&h[r], &h[m]))
            m = r;
        if (m == i)
            return;
        cand t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void heap_sift_up(cand *h, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_worse(&h[i], &h[p]))
            return;
        cand t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

void kv_vector_hits_free(kv_vector_hits *h)
{
    if (!h)
        return;
    kvi_free(h->mem_);
    kvi_free(h->hits);
    kvi_free(h);
}

kv_status kv_vector_search(kv_vector *v, const void *query, size_t qbytes, int64_t k,
                           kv_vector_hits **out)
{
    kv_status st = KV_OK;
    cand *heap = NULL;
    size_t n = 0;
    kv_vector_hits *h = NULL;
    uint8_t *q = NULL;
    int rc;

    kvi_err_clear(&v->err);
    *out = NULL;
    if (k < 0)
        return kvi_err_set(&v->err, KV_INVALID, "k must be >= 0, got %lld", (long long)k);
    if (k > KV_VECTOR_MAX_K)
        return kvi_err_set(&v->err, KV_INVALID,
                           "k value in knn query too large, provided %lld and the limit is %d",
                           (long long)k, KV_VECTOR_MAX_K);
    const void *prepared = prepare_vec(v, query, qbytes, &st);
    if (!prepared)
        return st;
    /* own copy: scratch is reused by nothing below, but keep it explicit */
    if (!(q = kvi_malloc(v->row_bytes)) || !(h = kvi_calloc(1, sizeof *h))) {
        kvi_free(q);
        return kvi_err_set(&v->err, KV_NOMEM, "out of memory");
    }
    memcpy(q, prepared, v->row_bytes);
    if (k == 0)
        goto finish_nolock;
    if (!(heap = kvi_malloc((size_t)k * sizeof *heap))) {
        st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
        goto done_nolock;
    }

    if ((st = kvi_store_begin(&v->err, v->db, 0)) != KV_OK)
        goto done_nolock;
    /* Scan: invariant — heap holds the best min(k, rows seen) candidates,
     * heap[0] the worst of them. */
    while ((rc = sqlite3_step(v->st_scan)) == SQLITE_ROW) {
        size_t len = (size_t)sqlite3_column_bytes(v->st_scan, 2);
        const void *vec = sqlite3_column_blob(v->st_scan, 2);
        if (len != v->row_bytes) {
            st = kvi_err_set(&v->err, KV_CORRUPT,
                             "stored vector of row %lld has %zu bytes, expected %zu "
                             "(table opened with %zu dimensions)",
                             (long long)sqlite3_column_int64(v->st_scan, 0), len, v->row_bytes,
                             v->dims);
            break;
        }
        cand c = {kv_vector_distance(v->metric, v->elem, q, vec, v->dims),
                  sqlite3_column_int64(v->st_scan, 0), sqlite3_column_int64(v->st_scan, 1)};
        if (n < (size_t)k) {
            heap[n] = c;
            heap_sift_up(heap, n++);
        } else if (cand_worse(&heap[0], &c)) {
            heap[0] = c;
            heap_sift_down(heap, n, 0);
        }
    }
    if (st == KV_OK && rc != SQLITE_DONE)
        st = sql_fail(v, rc, "scan");
    sqlite3_reset(v->st_scan);
    if (st != KV_OK)
        goto done;

    /* Heap sort in place: pop the worst to the back, giving ascending order. */
    for (size_t m = n; m > 1; m--) {
        cand t = heap[0];
        heap[0] = heap[m - 1];
        heap[m - 1] = t;
        heap_sift_down(heap, m - 1, 0);
    }

    /* Values, in the same snapshot. */
    if (n) {
        size_t total = 0, off = 0;
        uint8_t *mem = NULL;
        h->hits = kvi_calloc(n, sizeof *h->hits);
        size_t *offs = kvi_malloc(n * sizeof *offs);
        if (!h->hits || !offs) {
            kvi_free(offs);
            st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < n && st == KV_OK; i++) {
            sqlite3_bind_int64(v->st_get_val, 1, heap[i].ref);
            rc = sqlite3_step(v->st_get_val);
            size_t len = 0;
            const void *p = NULL;
            if (rc == SQLITE_ROW) {
                len = (size_t)sqlite3_column_bytes(v->st_get_val, 0);
                p = sqlite3_column_blob(v->st_get_val, 0);
            } else if (rc != SQLITE_DONE) {
                st = sql_fail(v, rc, "read value");
            }
            if (st == KV_OK && total + len + 1 > off) {
                size_t ncap = (total + len + 1) * 2;
                uint8_t *nm = kvi_realloc(mem, ncap);
                if (!nm)
                    st = kvi_err_set(&v->err, KV_NOMEM, "out of memory");
                else {
                    mem = nm;
                    off = ncap; /* capacity */
                }
            }
            if (st == KV_OK) {
                if (len)
                    memcpy(mem + total, p, len);
                offs[i] = total;
                h->hits[i].id = heap[i].id;
                h->hits[i].distance = heap[i].dist;
                h->hits[i].vlen = len;
                total += len;
            }
            sqlite3_reset(v->st_get_val);
        }
        if (st == KV_OK)
            for (size_t i = 0; i < n; i++)
                h->hits[i].val = mem + offs[i];
        h->mem_ = mem;
        kvi_free(offs);
        if (st != KV_OK)
            goto done;
    }
    h->n = n;

done:
    kvi_store_read_end(v->db, NULL, NULL);
done_nolock:
    if (st != KV_OK) {
        kvi_free(heap);
        kvi_free(q);
        kv_vector_hits_free(h);
        return st;
    }
finish_nolock:
    kvi_free(heap);
    kvi_free(q);
    *out = h;
    return KV_OK;
}

kv_status kv_vector_get_by_id(kv_vector *v, int64_t id, uint8_t **vec, size_t *vbytes,
                              uint8_t **val, size_t *vlen)
{
    kv_status st;
    kvi_err_clear(&v->err);
    *vec = *val = NULL;
    *vbytes = *vlen = 0;
    if ((st = kvi_store_begin(&v->err, v->db, 0)) != KV_OK)
        return st;
    st = kvi_store_step_id(&v->err, v->db, v->st_get_row, id, id);
    if (st == KV_OK)
        st = kvi_store_column_copy(&v->err, v->st_get_row, 1, 0, vec, vbytes);
    if (st == KV_OK)
        st = kvi_store_step_id(&v->err, v->db, v->st_get_val,
                               sqlite3_column_int64(v->st_get_row, 0), id);
    if (st == KV_OK)
        st = kvi_store_column_copy(&v->err, v->st_get_val, 0, 0, val, vlen);
    kvi_store_read_end(v->db, v->st_get_row, v->st_get_val);
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
    return kvi_store_exists(&v->err, v->db, v->st_get_row, id, found, "lookup row");
}

kv_status kv_vector_count(kv_vector *v, int64_t *count)
{
    kvi_err_clear(&v->err);
    int rc = sqlite3_step(v->st_count);
    kv_status st = KV_OK;
    if (rc == SQLITE_ROW)
        *count = sqlite3_column_int64(v->st_count, 0);
    else
        st = sql_fail(v, rc, NULL);
    sqlite3_reset(v->st_count);
    return st;
}
