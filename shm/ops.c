/*
 * ops.c -- the encoded table operation of KVSHM_MSG_EXEC (kvshm/ops.h):
 * the client's encoder and the writer's one bounds-checked decoder.
 */
#include <string.h>

#include "kvault/oprec.h"
#include "kvshm/ops.h"

/* ---- decoding ----------------------------------------------------------- */

static int ident_ok(const uint8_t *p, uint32_t n)
{
    if (n == 0 || n > KVSHM_OP_TABLE_MAX) return 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        int alpha = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return 0;
    }
    return 1;
}

static int is_i64(const kvshm_op_field *f) { return f->present && f->len == 8; }

int64_t kvshm_op_i64(const kvshm_op_field *f, int *ok)
{
    int64_t v = 0;
    if (!is_i64(f)) {
        if (ok) *ok = 0;
        return 0;
    }
    memcpy(&v, f->p, 8);
    if (ok) *ok = 1;
    return v;
}

/* 1 when `lens` holds i64 lengths (>= 0) that add up to the bytes of
 * `data` exactly (both present). */
static int lens_cover(const kvshm_op_field *lens, const kvshm_op_field *data)
{
    if (!lens->present || !data->present || lens->len % 8) return 0;
    uint64_t sum = 0;
    for (uint32_t i = 0; i < lens->len; i += 8) {
        int64_t l;
        memcpy(&l, lens->p + i, 8);
        if (l < 0 || (uint64_t)l > data->len - sum) return 0;
        sum += (uint64_t)l;
    }
    return sum == data->len;
}

/* Column operations: the fields after col_id and idx_id (kvshm/ops.h). */
static const char *column_shape(const kvshm_op *op)
{
    const kvshm_op_field *a = op->args;
    uint32_t n = op->nargs;
    switch (op->op) {
    case KVSHM_OP_COL_CREATE:
        return n == 3 && a[0].present && a[0].len && a[1].present && is_i64(&a[2]) &&
                       !memchr(a[0].p, 0, a[0].len) && !memchr(a[1].p, 0, a[1].len)
                   ? NULL
                   : "column create: name, dtype, elem_size";
    case KVSHM_OP_COL_DROP:
        return n == 1 && a[0].present && !memchr(a[0].p ? (const void *)a[0].p : "", 0, a[0].len)
                   ? NULL
                   : "column drop: name";
    default:
        break;
    }
    if (n < 3 || !is_i64(&a[0]) || !is_i64(&a[1])) return "column: col_id, idx_id first";
    const kvshm_op_field *pname = &a[n - 1];
    if (!pname->present || !pname->len || memchr(pname->p, 0, pname->len))
        return "column: the column's name last";
    n--;   /* the shapes below, without the name */
    int pair = kvshm_op_i64(&a[1], NULL) != 0;
    switch (op->op) {
    case KVSHM_OP_APPEND:
        if (n != 3u + (unsigned)pair || !a[2].present) return "column append: elements[, lengths]";
        return !pair || lens_cover(&a[3], &a[2]) ? NULL
                                                  : "column append: lengths do not cover the elements";
    case KVSHM_OP_WRITE:
        if (n != 4u + (unsigned)pair || !is_i64(&a[2]) || !a[3].present)
            return "column write: start, elements[, lengths]";
        return !pair || lens_cover(&a[4], &a[3]) ? NULL
                                                  : "column write: lengths do not cover the elements";
    case KVSHM_OP_INSERT:
        return n == 4 && is_i64(&a[2]) && a[3].present ? NULL : "column insert: index, element";
    case KVSHM_OP_DELETE:
        return n == 3 && is_i64(&a[2]) ? NULL : "column delete: index";
    case KVSHM_OP_CLEAR:
        return n == 2 ? NULL : "column clear: unexpected arguments";
    default:
        return "column: unknown operation";
    }
}

/* Key-value operations (a KVault table the writer does not serve). */
static const char *kv_shape(const kvshm_op *op)
{
    const kvshm_op_field *a = op->args;
    uint32_t n = op->nargs;
    if (op->nopen != 1 || !is_i64(&op->open[0]) || kvshm_op_i64(&op->open[0], NULL) <= 0)
        return "kv: the open parameter is chunk_size";
    switch (op->op) {
    case KVSHM_OP_PUT:
        return n == 2 && a[0].present && a[1].present ? NULL : "kv put: key, value";
    case KVSHM_OP_DELETE:
        return n == 1 && a[0].present ? NULL : "kv delete: key";
    case KVSHM_OP_PUT_MANY:
        if (n != 4 || !lens_cover(&a[0], &a[1]) || !lens_cover(&a[2], &a[3]))
            return "kv put_many: key lengths, keys, value lengths, values";
        return a[0].len == a[2].len ? NULL : "kv put_many: as many values as keys";
    case KVSHM_OP_DEL_MANY:
        return n == 2 && lens_cover(&a[0], &a[1]) ? NULL : "kv delete_many: key lengths, keys";
    case KVSHM_OP_FEATURE:
        return n == 1 && a[0].present && a[0].len >= 1 && a[0].len <= 64 &&
                       !memchr(a[0].p, ',', a[0].len) && !memchr(a[0].p, 0, a[0].len)
                   ? NULL
                   : "kv feature: a name of 1..64 bytes without commas";
    default:
        return "kv: unknown operation";
    }
}

/* The shape of LEASE (a count of 1..KV_LEASE_MAX ids) and LEASE_END (next,
 * end) of a text (text != 0) or vector operation: NULL when it fits, else
 * why not. */
static const char *lease_shape(const kvshm_op *op, int text)
{
    const kvshm_op_field *a = op->args;
    if (op->op == KVSHM_OP_LEASE)
        return op->nargs == 1 && is_i64(&a[0]) && kvshm_op_i64(&a[0], NULL) >= 1 &&
                       kvshm_op_i64(&a[0], NULL) <= KV_LEASE_MAX
                   ? NULL
               : text ? "text lease: a count of 1..65536 ids"
                      : "vector lease: a count of 1..65536 ids";
    return op->nargs == 2 && is_i64(&a[0]) && is_i64(&a[1]) && kvshm_op_i64(&a[0], NULL) >= 1 &&
                   kvshm_op_i64(&a[1], NULL) >= kvshm_op_i64(&a[0], NULL)
               ? NULL
           : text ? "text lease end: next, end"
                  : "vector lease end: next, end";
}

/* The per-class shape of an operation: counts and integer fields. NULL
 * when it fits, else why not. */
static const char *shape_check(const kvshm_op *op)
{
    const kvshm_op_field *a = op->args;
    switch (op->cls) {
    case KVSHM_OPC_TEXT:
        if (op->nopen == 0 || op->nopen > 255) return "text: 1..255 columns";
        for (uint32_t i = 0; i < op->nopen; i++)
            if (!op->open[i].present || op->open[i].len == 0 ||
                memchr(op->open[i].p, 0, op->open[i].len))
                return "text: bad column name";
        switch (op->op) {
        case KVSHM_OP_INSERT:
            if (op->nargs != 1 + op->nopen && op->nargs != 2 + op->nopen)
                return "text insert: one value and a text per column, then an optional id";
            for (uint32_t i = 0; i < op->nargs; i++)
                if (!a[i].present) return "text insert: absent field";
            if (op->nargs == 2 + op->nopen &&
                (!is_i64(&a[op->nargs - 1]) || kvshm_op_i64(&a[op->nargs - 1], NULL) < 1))
                return "text insert: bad id";
            return NULL;
        case KVSHM_OP_LEASE:
        case KVSHM_OP_LEASE_END:
            return lease_shape(op, 1);
        case KVSHM_OP_UPDATE:
            if (op->nargs != 2 && op->nargs != 2 + op->nopen)
                return "text update: id, value, optional texts";
            if (!is_i64(&a[0])) return "text update: bad id";
            for (uint32_t i = 2; i < op->nargs; i++)
                if (!a[i].present) return "text update: absent text";
            if (op->nargs == 2 && !a[1].present) return "text update: nothing to update";
            return NULL;
        case KVSHM_OP_DELETE:
            return op->nargs == 1 && is_i64(&a[0]) ? NULL : "text delete: bad id";
        case KVSHM_OP_CLEAR:
            return op->nargs == 0 ? NULL : "text clear: unexpected arguments";
        default:
            return "text: unknown operation";
        }
    case KVSHM_OPC_VECTOR:
        if (op->nopen != 3 || !is_i64(&op->open[0]) || !is_i64(&op->open[1]) ||
            !is_i64(&op->open[2]))
            return "vector: open parameters are dims, metric, elem";
        switch (op->op) {
        case KVSHM_OP_INSERT:   /* vector, value, [id] */
            if ((op->nargs != 2 && op->nargs != 3) || !a[0].present || !a[1].present)
                return "vector insert: vector, value, then an optional id";
            if (op->nargs == 3 && (!is_i64(&a[2]) || kvshm_op_i64(&a[2], NULL) < 1))
                return "vector insert: bad id";
            return NULL;
        case KVSHM_OP_LEASE:
        case KVSHM_OP_LEASE_END:
            return lease_shape(op, 0);
        case KVSHM_OP_INSERT_MANY: {
            if ((op->nargs != 2 && op->nargs != 4) || !is_i64(&a[0]) || !a[1].present)
                return "vector insert_many: n, vectors, value lengths, values";
            int64_t n = kvshm_op_i64(&a[0], NULL);
            if (n < 0 || (uint64_t)n > KVSHM_OP_MAX_BYTES / 8)
                return "vector insert_many: bad count";
            if (op->nargs == 2) return NULL;
            if (!a[2].present || !a[3].present || a[2].len != (uint64_t)n * 8)
                return "vector insert_many: value lengths do not match the count";
            return lens_cover(&a[2], &a[3]) ? NULL
                                            : "vector insert_many: value lengths do not cover the values";
        }
        case KVSHM_OP_UPDATE:
            if (op->nargs != 3 || !is_i64(&a[0])) return "vector update: id, vector, value";
            return a[1].present || a[2].present ? NULL : "vector update: nothing to update";
        case KVSHM_OP_DELETE:
            return op->nargs == 1 && is_i64(&a[0]) ? NULL : "vector delete: bad id";
        default:
            return "vector: unknown operation";
        }
    case KVSHM_OPC_COLUMN:
        if (op->nopen != 2 || !is_i64(&op->open[0]) || !is_i64(&op->open[1]))
            return "column: open parameters are min_chunk_bytes, max_chunk_bytes";
        return column_shape(op);
    case KVSHM_OPC_KV:
        return kv_shape(op);
    default:
        return "unknown class";
    }
}

/* Read one u32 at *pos (bounds checked): 0, or -1 past the end. */
static int rd_u32(const uint8_t *p, size_t len, size_t *pos, uint32_t *out)
{
    if (len - *pos < 4) return -1;
    memcpy(out, p + *pos, 4);
    *pos += 4;
    return 0;
}

int kvshm_op_decode(const void *buf, size_t len, kvshm_op *op, const char **why)
{
    const uint8_t *p = buf;
    uint32_t magic, tlen;
    uint16_t nopen, nargs, reserved;
    if (len < KVSHM_OP_HDR) { *why = "shorter than the operation header"; return -1; }
    memcpy(&magic, p, 4);
    if (magic != KVSHM_OP_MAGIC) { *why = "bad operation magic"; return -1; }
    op->cls = p[4];
    op->op = p[5];
    memcpy(&nopen, p + 6, 2);
    memcpy(&nargs, p + 8, 2);
    memcpy(&reserved, p + 10, 2);
    if (reserved) { *why = "reserved bytes set"; return -1; }
    if (nopen > KVSHM_OP_MAX_FIELDS || nargs > KVSHM_OP_MAX_FIELDS) {
        *why = "too many fields";
        return -1;
    }
    size_t pos = KVSHM_OP_HDR;
    if (rd_u32(p, len, &pos, &tlen) || tlen > len - pos || !ident_ok(p + pos, tlen)) {
        *why = "table name missing or not an identifier";
        return -1;
    }
    op->table = (const char *)p + pos;
    op->table_len = tlen;
    op->key = p + pos;
    pos += tlen;
    op->nopen = nopen;
    op->nargs = nargs;
    op->open = op->fields;
    op->args = op->fields + nopen;
    for (uint32_t i = 0; i < (uint32_t)nopen + nargs; i++) {
        uint32_t flen;
        kvshm_op_field *f = &op->fields[i];
        if (rd_u32(p, len, &pos, &flen)) { *why = "field length past the end"; return -1; }
        if (flen == KVSHM_OP_ABSENT) {
            *f = (kvshm_op_field){NULL, 0, 0};
        } else {
            if (flen > len - pos) { *why = "field runs past the end"; return -1; }
            *f = (kvshm_op_field){p + pos, flen, 1};
            pos += flen;
        }
        if (i + 1 == nopen) op->key_len = (size_t)(p + pos - op->key);
    }
    if (nopen == 0) op->key_len = tlen;
    if (pos != len) { *why = "bytes after the last field"; return -1; }
    const char *bad = shape_check(op);
    if (bad) { *why = bad; return -1; }
    return 0;
}

/* ---- encoding ------------------------------------------------------------- */

static void put(kvshm_op_enc *e, const void *p, size_t n)
{
    if (e->st == KV_OK && n) e->st = kv_buf_append(e->b, p, n);
}

void kvshm_op_begin(kvshm_op_enc *e, kv_buf *b, unsigned cls, unsigned op, const char *table)
{
    size_t tlen = strlen(table);
    *e = (kvshm_op_enc){.b = b, .start = b->len, .st = KV_OK};
    uint8_t hdr[KVSHM_OP_HDR] = {0};
    uint32_t magic = KVSHM_OP_MAGIC, t = (uint32_t)tlen;
    memcpy(hdr, &magic, 4);
    hdr[4] = (uint8_t)cls;
    hdr[5] = (uint8_t)op;
    put(e, hdr, sizeof hdr);
    if (tlen == 0 || tlen > KVSHM_OP_TABLE_MAX) e->st = KV_INVALID;
    put(e, &t, 4);
    put(e, table, tlen);
}

static int count_field(kvshm_op_enc *e)
{
    uint32_t *n = e->in_args ? &e->nargs : &e->nopen;
    if (++*n > KVSHM_OP_MAX_FIELDS && e->st == KV_OK) e->st = KV_INVALID;
    return e->st == KV_OK;
}

void kvshm_op_add(kvshm_op_enc *e, const void *p, size_t len)
{
    if (!count_field(e)) return;
    if (len >= KVSHM_OP_ABSENT) {
        e->st = KV_INVALID;
        return;
    }
    uint32_t n = (uint32_t)len;
    put(e, &n, 4);
    put(e, p, len);
}

void kvshm_op_add_gather(kvshm_op_enc *e, const void *const *parts, const size_t *lens, size_t n)
{
    if (!count_field(e)) return;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] >= KVSHM_OP_ABSENT - total) {
            e->st = KV_INVALID;
            return;
        }
        total += lens[i];
    }
    uint32_t t = (uint32_t)total;
    put(e, &t, 4);
    for (size_t i = 0; i < n; i++) put(e, parts[i], lens[i]);
}

void kvshm_op_add_i64(kvshm_op_enc *e, int64_t v) { kvshm_op_add(e, &v, 8); }

void kvshm_op_add_absent(kvshm_op_enc *e)
{
    uint32_t n = KVSHM_OP_ABSENT;
    if (count_field(e)) put(e, &n, 4);
}

void kvshm_op_args(kvshm_op_enc *e) { e->in_args = 1; }

kv_status kvshm_op_end(kvshm_op_enc *e)
{
    if (e->st != KV_OK) return e->st;
    uint16_t no = (uint16_t)e->nopen, na = (uint16_t)e->nargs;
    memcpy(e->b->data + e->start + 6, &no, 2);
    memcpy(e->b->data + e->start + 8, &na, 2);
    return KV_OK;
}
