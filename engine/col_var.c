/*
 * col_var.c - variable-size columns (docs/api.md §6.4): a `<n>_data` column of
 * packed bytes (elem_size 1) and a `<n>_idx` fixed column of 12-byte
 * entries [chunk_idx i32le][start i32le][end i32le].
 *
 * Placement: new bytes go to the data column's last chunk at its
 * bytes_used cursor; a chunk without room doubles (capped at M) while the
 * element still fits within M, else a new chunk (chunk_idx = last + 1)
 * starts at min * 2^k; an element larger than M gets a chunk of its own,
 * sized exactly. Elements never span chunks. Staged bytes of the current
 * chunk are written once per chunk ("materialised"), so a bulk extend
 * issues one BLOB write or INSERT per chunk.
 *
 * Updates: a value that fits its old slot is rewritten there (shrink); one
 * at the tail of its chunk grows in place when capacity allows; otherwise
 * its bytes are placed anew and its index entry rewritten. Dead bytes are
 * left behind (the format has no compaction).
 */
#include "col_internal.h"

#include <string.h>

#define KVI_IDX_MAX_OFF 0x7FFFFFFF

static void kvi_put_i32(uint8_t *p, int64_t v)
{
    uint32_t u = (uint32_t)(int32_t)v;
    p[0] = (uint8_t)u; p[1] = (uint8_t)(u >> 8); p[2] = (uint8_t)(u >> 16); p[3] = (uint8_t)(u >> 24);
}

static int64_t kvi_get_i32(const uint8_t *p)
{
    return (int32_t)((uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                     ((uint32_t)p[3] << 24));
}

/* ------------------------------------------------------------------------ */
/* placement                                                                */
/* ------------------------------------------------------------------------ */

typedef struct kvi_place {
    int64_t idx;         /* chunk_idx of the current chunk, -1 = none */
    int exists;          /* the current chunk has a row */
    int64_t rowid;       /* its rowid when it exists */
    int64_t db_cap;      /* its stored capacity */
    int64_t cap;         /* capacity it will have once materialised */
    int64_t start_used;  /* stored bytes_used: where the staged bytes go */
    int64_t used;        /* cursor after the staged bytes */
    int64_t next_idx;    /* chunk_idx for the next new chunk */
    kv_buf stage;        /* staged bytes of the current chunk */
} kvi_place;

static kv_status kvi_place_init(kv_col *col, kvi_place *p)
{
    kv_colvault *cv = col->cv;
    sqlite3_stmt *s = cv->st[KVI_CS_SEL_LAST];
    memset(p, 0, sizeof *p);
    kv_buf_init(&p->stage);
    p->idx = -1;
    sqlite3_bind_int64(s, 1, col->data.col_id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        p->idx = sqlite3_column_int64(s, 0);
        p->rowid = sqlite3_column_int64(s, 1);
        p->db_cap = p->cap = sqlite3_column_int64(s, 2);
        p->start_used = p->used = sqlite3_column_int64(s, 3);
        p->exists = 1;
        p->next_idx = p->idx + 1;
    } else if (rc != SQLITE_DONE) {
        sqlite3_reset(s);
        return kvi_err_sqlite(&cv->err, cv->db, rc, "select last chunk");
    }
    sqlite3_reset(s);
    return KV_OK;
}

/* Write the current chunk's staged bytes (insert, grow or in-place). */
static kv_status kvi_place_flush(kv_col *col, kvi_place *p)
{
    kv_colvault *cv = col->cv;
    kvi_blob bl = {0};
    sqlite3_stmt *s;
    kv_status st = KV_OK;
    uint8_t *tmp = NULL;
    int rc;

    if (p->idx < 0 || (p->exists && p->stage.len == 0 && p->cap == p->db_cap))
        return KV_OK;
    if (!p->exists || p->cap > p->db_cap) {
        tmp = kvi_calloc(1, (size_t)p->cap);
        if (!tmp)
            return KV_NOMEM;
        if (p->exists && p->db_cap > 0) {
            st = kvi_blob_at(cv, &bl, p->rowid, 0);
            if (st == KV_OK && (rc = sqlite3_blob_read(bl.b, tmp, (int)p->db_cap, 0)) != SQLITE_OK)
                st = kvi_err_sqlite(&cv->err, cv->db, rc, "blob read");
            kvi_blob_done(&bl);
        }
        if (st != KV_OK)
            goto out;
        if (p->stage.len)
            memcpy(tmp + p->start_used, p->stage.data, p->stage.len);
        if (!p->exists) {
            s = cv->st[KVI_CS_INS_CHUNK];
            sqlite3_bind_int64(s, 1, col->data.col_id);
            sqlite3_bind_int64(s, 2, p->idx);
            sqlite3_bind_blob64(s, 3, tmp, (sqlite3_uint64)p->cap, SQLITE_STATIC);
            sqlite3_bind_int64(s, 4, p->cap);
            sqlite3_bind_int64(s, 5, p->used);
        } else {
            s = cv->st[KVI_CS_UPD_CHUNK];
            sqlite3_bind_int64(s, 1, p->rowid);
            sqlite3_bind_blob64(s, 2, tmp, (sqlite3_uint64)p->cap, SQLITE_STATIC);
            sqlite3_bind_int64(s, 3, p->cap);
            sqlite3_bind_int64(s, 4, p->used);
        }
        rc = sqlite3_step(s);
        sqlite3_clear_bindings(s);
        sqlite3_reset(s);
        if (rc != SQLITE_DONE) {
            st = kvi_err_sqlite(&cv->err, cv->db, rc, "write data chunk");
            goto out;
        }
        if (!p->exists)
            p->rowid = sqlite3_last_insert_rowid(cv->db);
    } else {
        st = kvi_blob_at(cv, &bl, p->rowid, 1);
        if (st == KV_OK && p->stage.len &&
            (rc = sqlite3_blob_write(bl.b, p->stage.data, (int)p->stage.len, (int)p->start_used)) !=
                SQLITE_OK)
            st = kvi_err_sqlite(&cv->err, cv->db, rc, "blob write");
        kvi_blob_done(&bl);
        if (st != KV_OK)
            goto out;
        s = cv->st[KVI_CS_UPD_USED];
        sqlite3_bind_int64(s, 1, p->rowid);
        sqlite3_bind_int64(s, 2, p->used);
        st = kvi_col_step_done(cv, s, "update bytes_used");
        if (st != KV_OK)
            goto out;
    }
    p->exists = 1;
    p->db_cap = p->cap;
    p->start_used = p->used;
    p->stage.len = 0;
out:
    kvi_free(tmp);
    return st;
}

/* Write out the current chunk and start a new, empty one of capacity cap. */
static kv_status kvi_place_new_chunk(kv_col *col, kvi_place *p, int64_t cap)
{
    kv_status st = kvi_place_flush(col, p);
    if (st != KV_OK)
        return st;
    p->idx = p->next_idx++;
    p->exists = 0;
    p->db_cap = 0;
    p->cap = cap;
    p->start_used = 0;
    p->used = 0;
    return KV_OK;
}

/* Place `len` bytes; *chunk and *start receive where they will live. */
static kv_status kvi_place_one(kv_col *col, kvi_place *p, const uint8_t *src, size_t len,
                               int64_t *chunk, int64_t *start)
{
    const kvi_fx *fx = &col->data;
    int64_t L = (int64_t)len;
    kv_status st;

    if (L > KVI_IDX_MAX_OFF)
        return kvi_err_set(&col->cv->err, KV_INVALID, "element of %lld bytes exceeds 2 GiB",
                           (long long)L);
    if (L > fx->max) { /* a chunk of its own, sized exactly */
        st = kvi_place_new_chunk(col, p, L);
        if (st != KV_OK)
            return st;
    } else if (p->idx >= 0 && p->used + L <= p->cap) {
        /* fits */
    } else if (p->idx >= 0 && p->cap < fx->max && p->used + L <= fx->max) {
        p->cap = kvi_grow_cap(fx, p->cap, p->used + L);
    } else {
        st = kvi_place_new_chunk(col, p, kvi_first_cap(fx, L));
        if (st != KV_OK)
            return st;
    }
    if (p->idx > KVI_IDX_MAX_OFF)
        return kvi_err_set(&col->cv->err, KV_INVALID, "chunk index overflow");
    st = kv_buf_append(&p->stage, src, len);
    if (st != KV_OK)
        return st;
    *chunk = p->idx;
    *start = p->used;
    p->used += L;
    return KV_OK;
}

/* ------------------------------------------------------------------------ */
/* operations (cv->mu held, inside a transaction)                           */
/* ------------------------------------------------------------------------ */

kv_status kvi_var_append_raw(kv_col *col, const uint8_t *src, const size_t *lens, size_t n)
{
    kvi_place p;
    kv_status st = kvi_place_init(col, &p);
    uint8_t *ent = NULL;
    if (st != KV_OK)
        return st;
    ent = kvi_malloc(n * KV_COL_IDX_ELEM);
    if (!ent) {
        st = KV_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        int64_t chunk = 0, start = 0;
        st = kvi_place_one(col, &p, src, lens[i], &chunk, &start);
        if (st != KV_OK)
            goto out;
        kvi_put_i32(ent + 12 * i, chunk);
        kvi_put_i32(ent + 12 * i + 4, start);
        kvi_put_i32(ent + 12 * i + 8, start + (int64_t)lens[i]);
        src += lens[i];
    }
    st = kvi_place_flush(col, &p);
    if (st == KV_OK)
        st = kvi_fx_append_raw(col->cv, &col->fx, ent, n);
out:
    kv_buf_free(&p.stage);
    kvi_free(ent);
    return st;
}

/* Resolve a data chunk and check that [start, end) lies inside it. */
static kv_status kvi_var_chunk(kv_col *col, int64_t chunk, int64_t start, int64_t end, kvi_chunk *c)
{
    kv_status st = kvi_chunk_get(col->cv, col->data.col_id, chunk, c);
    if (st != KV_OK)
        return st;
    if (!c->exists || start < 0 || end < start || end > c->cap)
        return kvi_err_set(&col->cv->err, KV_CORRUPT,
                           "index entry (chunk %lld, %lld..%lld) outside the data column",
                           (long long)chunk, (long long)start, (long long)end);
    return KV_OK;
}

kv_status kvi_var_read(kv_col *col, int64_t start, int64_t count, kv_buf *data, uint64_t *offs)
{
    kv_colvault *cv = col->cv;
    int64_t len;
    uint8_t *ent = NULL;
    kvi_blob bl = {0};
    kv_status st = kvi_fx_length(cv, &col->fx, &len);
    size_t base = data->len;
    if (st != KV_OK)
        return st;
    st = kvi_col_check_range(cv, "read", start, count, len);
    if (st != KV_OK)
        return st;
    offs[0] = 0;
    if (count == 0)
        return KV_OK;
    ent = kvi_malloc((size_t)count * KV_COL_IDX_ELEM);
    if (!ent)
        return KV_NOMEM;
    st = kvi_fx_read_bytes(cv, &col->fx, (uint64_t)start * KV_COL_IDX_ELEM, ent,
                           (uint64_t)count * KV_COL_IDX_ELEM);
    if (st != KV_OK)
        goto out;
    /* Total size first, so the buffer is reserved once. */
    uint64_t total = 0;
    for (int64_t i = 0; i < count; i++) {
        int64_t s0 = kvi_get_i32(ent + 12 * i + 4), e0 = kvi_get_i32(ent + 12 * i + 8);
        if (e0 < s0) {
            st = kvi_err_set(&cv->err, KV_CORRUPT, "index entry %lld has end < start",
                             (long long)(start + i));
            goto out;
        }
        total += (uint64_t)(e0 - s0);
    }
    st = kv_buf_reserve(data, (size_t)total);
    if (st != KV_OK)
        goto out;
    int64_t i = 0;
    while (i < count) {
        /* A run of entries in one chunk whose bytes are adjacent is one read. */
        int64_t chunk = kvi_get_i32(ent + 12 * i);
        int64_t lo = kvi_get_i32(ent + 12 * i + 4), hi = kvi_get_i32(ent + 12 * i + 8);
        int64_t j = i + 1;
        while (j < count && kvi_get_i32(ent + 12 * j) == chunk &&
               kvi_get_i32(ent + 12 * j + 4) == hi) {
            hi = kvi_get_i32(ent + 12 * j + 8);
            j++;
        }
        kvi_chunk c;
        st = kvi_var_chunk(col, chunk, lo, hi, &c);
        if (st != KV_OK)
            goto out;
        if (hi > lo) {
            st = kvi_blob_at(cv, &bl, c.rowid, 0);
            if (st != KV_OK)
                goto out;
            int rc = sqlite3_blob_read(bl.b, data->data + data->len, (int)(hi - lo), (int)lo);
            if (rc != SQLITE_OK) {
                st = kvi_err_sqlite(&cv->err, cv->db, rc, "blob read");
                goto out;
            }
        }
        for (int64_t k = i; k < j; k++) {
            data->len += (size_t)(kvi_get_i32(ent + 12 * k + 8) - kvi_get_i32(ent + 12 * k + 4));
            offs[k + 1] = data->len - base;
        }
        i = j;
    }
out:
    kvi_blob_done(&bl);
    kvi_free(ent);
    return st;
}

kv_status kvi_var_write(kv_col *col, int64_t start, const uint8_t *src, const size_t *lens, size_t n)
{
    kv_colvault *cv = col->cv;
    kv_status st = KV_OK;
    kvi_blob bl = {0};
    for (size_t k = 0; k < n && st == KV_OK; k++) {
        uint8_t e[12];
        int64_t i = start + (int64_t)k, L = (int64_t)lens[k];
        st = kvi_fx_read_bytes(cv, &col->fx, (uint64_t)i * KV_COL_IDX_ELEM, e, KV_COL_IDX_ELEM);
        if (st != KV_OK)
            break;
        int64_t chunk = kvi_get_i32(e), s0 = kvi_get_i32(e + 4), e0 = kvi_get_i32(e + 8);
        kvi_chunk c;
        st = kvi_var_chunk(col, chunk, s0, e0, &c);
        if (st != KV_OK)
            break;
        int in_place = L <= e0 - s0;                                  /* shrink or same size */
        int tail_grow = !in_place && e0 == c.used && s0 + L <= c.cap; /* last element of its chunk */
        if (in_place || tail_grow) {
            if (L > 0) {
                st = kvi_blob_at(cv, &bl, c.rowid, 1);
                if (st != KV_OK)
                    break;
                int rc = sqlite3_blob_write(bl.b, src, (int)L, (int)s0);
                if (rc != SQLITE_OK) {
                    st = kvi_err_sqlite(&cv->err, cv->db, rc, "blob write");
                    break;
                }
            }
            if (tail_grow) {
                sqlite3_stmt *s = cv->st[KVI_CS_UPD_USED];
                sqlite3_bind_int64(s, 1, c.rowid);
                sqlite3_bind_int64(s, 2, s0 + L);
                st = kvi_col_step_done(cv, s, "update bytes_used");
                if (st != KV_OK)
                    break;
            }
            kvi_put_i32(e + 8, s0 + L);
        } else {
            kvi_place p;
            int64_t nc = 0, ns = 0;
            kvi_blob_done(&bl);
            st = kvi_place_init(col, &p);
            if (st == KV_OK)
                st = kvi_place_one(col, &p, src, lens[k], &nc, &ns);
            if (st == KV_OK)
                st = kvi_place_flush(col, &p);
            kv_buf_free(&p.stage);
            if (st != KV_OK)
                break;
            kvi_put_i32(e, nc);
            kvi_put_i32(e + 4, ns);
            kvi_put_i32(e + 8, ns + L);
        }
        kvi_blob_done(&bl);
        st = kvi_fx_write_bytes(cv, &col->fx, (uint64_t)i * KV_COL_IDX_ELEM, e, KV_COL_IDX_ELEM);
        src += lens[k];
    }
    kvi_blob_done(&bl);
    return st;
}

kv_status kvi_var_clear(kv_col *col)
{
    sqlite3_stmt *s = NULL;
    kv_status st = kvi_prepare(col->cv->db, "UPDATE col_chunks SET bytes_used = 0 WHERE col_id = ?1",
                               &s, &col->cv->err);
    if (st != KV_OK)
        return st;
    sqlite3_bind_int64(s, 1, col->data.col_id);
    int rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        return kvi_err_sqlite(&col->cv->err, col->cv->db, rc, "clear data column");
    return KV_OK;
}
