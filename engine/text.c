/*
 * text.c - the full-text store (docs/api.md §7): SQLite FTS5 table plus a value
 * table, BM25 ranking, snippets, phrase escaping of user queries.
 *
 * Sits in engine/ beside kv.c and calls SQLite directly; the Python binding
 * (python/ext/text_py.c) only calls the kv_text_* functions of text.h.
 *
 * Sections: 1. small helpers (errors, SQL text building)  2. open/close
 * 3. writes (insert, update, delete, clear)  4. reads (search, get, ids).
 *
 * Every write runs in one BEGIN IMMEDIATE transaction so a document's FTS
 * row and value row appear and disappear together; with no busy timeout
 * (docs/api.md §7.1) a competing writer makes the call fail at once with KV_BUSY
 * and nothing is changed.
 */
#include "store_internal.h"
#include "kvault/text.h"
#include "kvault/oprec.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct kv_text {
    sqlite3 *db;              /* owned connection */
    char *table;              /* owned table name (validated identifier) */
    size_t ncols;             /* text columns */
    char **cols;              /* owned column names */
    sqlite3_stmt *st_ins_val; /* INSERT INTO t_values(value) VALUES(?1) */
    sqlite3_stmt *st_ins_doc; /* INSERT INTO t(c1..cn, value_ref, rowid) VALUES(...) */
    sqlite3_stmt *st_get_doc; /* SELECT c1..cn, value_ref FROM t WHERE rowid=?1 */
    sqlite3_stmt *st_get_val; /* SELECT value FROM t_values WHERE id=?1 */
    sqlite3_stmt *st_ref;     /* SELECT value_ref FROM t WHERE rowid=?1 */
    sqlite3_stmt *st_del_doc; /* DELETE FROM t WHERE rowid=?1 */
    sqlite3_stmt *st_del_val; /* DELETE FROM t_values WHERE id=?1 */
    sqlite3_stmt *st_upd_doc; /* UPDATE t SET c1=?1.. WHERE rowid=?n+1 */
    sqlite3_stmt *st_upd_val; /* UPDATE t_values SET value=?1 WHERE id=?2 */
    sqlite3_stmt *st_count;   /* SELECT COUNT(*) FROM t */
    sqlite3_stmt *st_keys;    /* SELECT rowid FROM t ORDER BY rowid LIMIT ?1 OFFSET ?2 */
    sqlite3_stmt *st_last;    /* SELECT rowid FROM t ORDER BY rowid DESC LIMIT 1 */
    sqlite3_stmt *st_get;     /* first-column phrase lookup for kv_text_get */
    sqlite3_stmt *st_cmatch;  /* SELECT COUNT(*) FROM t WHERE t MATCH ?1 */
    kvi_err err;              /* last failure */
    kvi_oprec_st oprec;       /* operation records (oprec.c) */
};

/* ====================================================================== */
/* 1. Helpers                                                              */
/* ====================================================================== */

/* A small growable string for building SQL (mimalloc). */
typedef struct {
    char *s;
    size_t len, cap;
    int oom;
} sqlbuf;

static void sb_add(sqlbuf *b, const char *p, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap * 2 : 256;
        while (ncap < b->len + n + 1)
            ncap *= 2;
        char *q = kvi_realloc(b->s, ncap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->s = q;
        b->cap = ncap;
    }
    memcpy(b->s + b->len, p, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_str(sqlbuf *b, const char *p) { sb_add(b, p, strlen(p)); }

static void sb_fmt(sqlbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_fmt(sqlbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        b->oom = 1;
        return;
    }
    sb_add(b, tmp, (size_t)n);
}

/* Append a double-quoted SQL identifier (names never contain '"'). */
static void sb_ident(sqlbuf *b, const char *name)
{
    sb_str(b, "\"");
    sb_str(b, name);
    sb_str(b, "\"");
}

/* Each of the n names as an identifier followed by ", ". */
static void sb_idents_comma(sqlbuf *b, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        sb_ident(b, names[i]);
        sb_str(b, ", ");
    }
}

/* Column name rule of kv_text_open: ASCII alnum/'_' or any non-ASCII byte. */
static int column_name_valid(const char *name)
{
    size_t n = 0;
    if (!name || !name[0])
        return 0;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++, n++) {
        int ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                 (*p >= '0' && *p <= '9') || *p == '_' || *p >= 0x80;
        if (!ok || n >= 1024)
            return 0;
    }
    return strcmp(name, "value_ref") != 0;
}

static kv_status sql_fail(kv_text *t, int rc, const char *op)
{
    return kvi_err_sqlite(&t->err, t->db, rc, op);
}

/* ====================================================================== */
/* 2. Open / close                                                          */
/* ====================================================================== */

const char *kv_text_errmsg(const kv_text *t) { return t ? t->err.msg : ""; }

size_t kv_text_ncolumns(const kv_text *t) { return t->ncols; }

void kv_text_free(void *p) { kvi_free(p); }

void kv_text_close(kv_text *t)
{
    if (!t)
        return;
    sqlite3_stmt **sts[] = {&t->st_ins_val, &t->st_ins_doc, &t->st_get_doc, &t->st_get_val,
                            &t->st_ref,     &t->st_del_doc, &t->st_del_val, &t->st_upd_doc,
                            &t->st_upd_val, &t->st_count,   &t->st_keys,    &t->st_get,
                            &t->st_cmatch,  &t->st_last};
    for (size_t i = 0; i < sizeof sts / sizeof sts[0]; i++)
        sqlite3_finalize(*sts[i]);
    kvi_oprec_finalize(&t->oprec);
    if (t->db) {
        sqlite3_wal_checkpoint_v2(t->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        sqlite3_close_v2(t->db);
    }
    for (size_t i = 0; i < t->ncols; i++)
        kvi_free(t->cols ? t->cols[i] : NULL);
    kvi_free(t->cols);
    kvi_free(t->table);
    kvi_free(t);
}

/* Prepare `b`'s SQL into *out; frees nothing. */
static kv_status prep(kv_text *t, sqlbuf *b, sqlite3_stmt **out)
{
    if (b->oom)
        return kvi_err_set(&t->err, KV_NOMEM, "out of memory building SQL");
    kv_status st = kvi_prepare(t->db, b->s, out, &t->err);
    b->len = 0;
    if (b->s)
        b->s[0] = '\0';
    return st;
}

kv_status kv_text_open(const char *path, const char *table, const char *const *columns,
                       size_t ncols, kv_text **out, char *err, size_t errlen)
{
    kv_text *t = NULL;
    sqlbuf b = {0};
    kv_status st;
    kvi_conn_opts o;
    char msg[512] = "";

    *out = NULL;
    if (kvi_table_name_valid(table) != KV_OK) {
        snprintf(msg, sizeof msg, "Invalid table name: %s", table ? table : "(null)");
        st = KV_INVALID;
        goto fail;
    }
    if (ncols == 0 || ncols > 255 || !columns) {
        snprintf(msg, sizeof msg, "a text store needs 1..255 columns, got %zu", ncols);
        st = KV_INVALID;
        goto fail;
    }
    for (size_t i = 0; i < ncols; i++) {
        if (!column_name_valid(columns[i])) {
            snprintf(msg, sizeof msg, "Invalid column name: '%s'", columns[i] ? columns[i] : "");
            st = KV_INVALID;
            goto fail;
        }
        for (size_t j = 0; j < i; j++)
            if (strcmp(columns[i], columns[j]) == 0) {
                snprintf(msg, sizeof msg, "Duplicate column name: '%s'", columns[i]);
                st = KV_INVALID;
                goto fail;
            }
    }

    t = kvi_calloc(1, sizeof *t);
    if (!t || !(t->table = kvi_strdup(table)) || !(t->cols = kvi_calloc(ncols, sizeof(char *)))) {
        st = KV_NOMEM;
        snprintf(msg, sizeof msg, "out of memory");
        goto fail;
    }
    t->ncols = ncols;
    for (size_t i = 0; i < ncols; i++)
        if (!(t->cols[i] = kvi_strdup(columns[i]))) {
            st = KV_NOMEM;
            snprintf(msg, sizeof msg, "out of memory");
            goto fail;
        }
    kvi_err_clear(&t->err);

    kvi_conn_opts_default(&o);
    o.page_size = 0;         /* SQLite's default page size */
    o.mmap_size = -1;        /* SQLite's default */
    o.cache_kb = 0;          /* SQLite's default */
    o.busy_timeout_ms = 0;   /* docs/api.md §7.1: no busy timeout */
    o.nomutex = 1;           /* one thread at a time per handle */
    if ((st = kvi_conn_open(path, &o, &t->db, msg, sizeof msg)) != KV_OK)
        goto fail;

    /* Schema (docs/api.md §7.1, exactly). */
    sb_str(&b, "CREATE VIRTUAL TABLE IF NOT EXISTS ");
    sb_ident(&b, table);
    sb_str(&b, " USING fts5(");
    sb_idents_comma(&b, columns, ncols);
    sb_str(&b, "value_ref UNINDEXED);\nCREATE TABLE IF NOT EXISTS ");
    sb_fmt(&b, "\"%s_values\"", table);
    sb_str(&b, " (id INTEGER PRIMARY KEY AUTOINCREMENT, value BLOB NOT NULL)");
    if (b.oom) {
        st = KV_NOMEM;
        goto fail_msg;
    }
    if ((st = kvi_exec(t->db, b.s, &t->err)) != KV_OK)
        goto fail_msg;
    b.len = 0;

#define PREP(stmt)                                   \
    do {                                             \
        if ((st = prep(t, &b, &(stmt))) != KV_OK)    \
            goto fail_msg;                           \
    } while (0)

    /* Statements over the table name alone (%1$s is the table each time). */
    const struct {
        const char *sql;
        sqlite3_stmt **st;
    } by_table[] = {
        {"INSERT INTO \"%1$s_values\"(value) VALUES(?1)", &t->st_ins_val},
        {"SELECT value FROM \"%1$s_values\" WHERE id = ?1", &t->st_get_val},
        {"SELECT value_ref FROM \"%1$s\" WHERE rowid = ?1", &t->st_ref},
        {"DELETE FROM \"%1$s\" WHERE rowid = ?1", &t->st_del_doc},
        {"DELETE FROM \"%1$s_values\" WHERE id = ?1", &t->st_del_val},
        {"UPDATE \"%1$s_values\" SET value = ?1 WHERE id = ?2", &t->st_upd_val},
        {"SELECT COUNT(*) FROM \"%1$s\"", &t->st_count},
        {"SELECT rowid FROM \"%1$s\" ORDER BY rowid LIMIT ?1 OFFSET ?2", &t->st_keys},
        {"SELECT rowid FROM \"%1$s\" ORDER BY rowid DESC LIMIT 1", &t->st_last},
        {"SELECT v.value FROM \"%1$s\" AS d JOIN \"%1$s_values\" AS v ON v.id = d.value_ref "
         "WHERE \"%1$s\" MATCH ?1 LIMIT 1",
         &t->st_get},
        {"SELECT COUNT(*) FROM \"%1$s\" WHERE \"%1$s\" MATCH ?1", &t->st_cmatch},
    };
    for (size_t i = 0; i < sizeof by_table / sizeof by_table[0]; i++) {
        sb_fmt(&b, by_table[i].sql, table);
        PREP(*by_table[i].st);
    }

    sb_str(&b, "INSERT INTO ");
    sb_ident(&b, table);
    sb_str(&b, "(");
    sb_idents_comma(&b, columns, ncols);
    /* the rowid parameter (?ncols+2) is left NULL for an id SQLite assigns */
    sb_str(&b, "value_ref, rowid) VALUES(");
    for (size_t i = 0; i <= ncols + 1; i++)
        sb_fmt(&b, "%s?%zu", i ? ", " : "", i + 1);
    sb_str(&b, ")");
    PREP(t->st_ins_doc);

    sb_str(&b, "SELECT ");
    sb_idents_comma(&b, columns, ncols);
    sb_str(&b, "value_ref FROM ");
    sb_ident(&b, table);
    sb_str(&b, " WHERE rowid = ?1");
    PREP(t->st_get_doc);

    sb_str(&b, "UPDATE ");
    sb_ident(&b, table);
    sb_str(&b, " SET ");
    for (size_t i = 0; i < ncols; i++) {
        sb_str(&b, i ? ", " : "");
        sb_ident(&b, columns[i]);
        sb_fmt(&b, " = ?%zu", i + 1);
    }
    sb_fmt(&b, " WHERE rowid = ?%zu", ncols + 1);
    PREP(t->st_upd_doc);

#undef PREP

    kvi_free(b.s);
    *out = t;
    return KV_OK;

fail_msg:
    snprintf(msg, sizeof msg, "%s", st == KV_NOMEM && !t->err.msg[0] ? "out of memory" : t->err.msg);
fail:
    kvi_free(b.s);
    kv_text_close(t);
    kvi_msg_copy(msg, err, errlen);
    return st;
}

/* ====================================================================== */
/* 3. Writes                                                                */
/* ====================================================================== */

kv_status kv_text_insert(kv_text *t, const char *const *texts, const size_t *lens,
                         const void *val, size_t vlen, int64_t *id)
{
    return kv_text_insert_at(t, 0, texts, lens, val, vlen, id);
}

kv_status kv_text_insert_at(kv_text *t, int64_t at, const char *const *texts, const size_t *lens,
                            const void *val, size_t vlen, int64_t *id)
{
    kvi_err_clear(&t->err);
    if (at > 0)
        sqlite3_bind_int64(t->st_ins_doc, (int)t->ncols + 2, at);
    for (size_t i = 0; i < t->ncols; i++)
        sqlite3_bind_text64(t->st_ins_doc, (int)i + 1, texts[i] ? texts[i] : "", lens[i],
                            SQLITE_STATIC, SQLITE_UTF8);
    return kvi_store_insert(&t->err, t->db, t->st_ins_val, val, vlen, t->st_ins_doc,
                            (int)t->ncols + 1, "insert document", id);
}

kv_status kv_text_delete(kv_text *t, int64_t id, int *removed)
{
    kvi_err_clear(&t->err);
    return kvi_store_delete(&t->err, t->db, t->st_ref, t->st_del_doc, t->st_del_val, id, removed, "document");
}

kv_status kv_text_update(kv_text *t, int64_t id, const char *const *texts, const size_t *lens,
                         const void *val, size_t vlen)
{
    kvi_err_clear(&t->err);
    if (!texts && !val)
        return kvi_err_set(&t->err, KV_INVALID, "Must provide either texts or value to update");
    if (texts) {
        for (size_t i = 0; i < t->ncols; i++)
            sqlite3_bind_text64(t->st_upd_doc, (int)i + 1, texts[i] ? texts[i] : "", lens[i],
                                SQLITE_STATIC, SQLITE_UTF8);
        sqlite3_bind_int64(t->st_upd_doc, (int)t->ncols + 1, id);
    }
    return kvi_store_update(&t->err, t->db, texts ? t->st_upd_doc : NULL, "update texts", t->st_ref,
                            t->st_upd_val, id, val, vlen);
}

kv_status kv_text_insert_leased(kv_text *t, const char *const *texts, const size_t *lens,
                                const void *val, size_t vlen, int64_t *id)
{
    kv_conn c;
    int64_t at = 0;
    int own = !t->err.nest;   /* else inside kv_text_tx_begin's transaction */
    kv_status st = own ? kvi_store_tx_begin(&t->err, t->db) : KV_OK;
    if (st != KV_OK)
        return st;
    kv_text_conn(t, &c);
    if ((st = kv_text_next_id(t, &at)) == KV_OK && (st = kv_lease_next(&c, t->table, at, &at)) == KV_OK)
        st = kv_text_insert_at(t, at, texts, lens, val, vlen, id);
    if (!own)
        return st;
    char msg[sizeof t->err.msg];
    memcpy(msg, t->err.msg, sizeof msg);   /* the end of the transaction clears it */
    kv_status end = kvi_store_tx_end(&t->err, t->db, st == KV_OK);
    if (st != KV_OK)
        memcpy(t->err.msg, msg, sizeof msg);
    return st != KV_OK ? st : end;
}

kv_status kv_text_next_id(kv_text *t, int64_t *next)
{
    kvi_err_clear(&t->err);
    *next = 1;
    int rc = sqlite3_step(t->st_last);
    if (rc == SQLITE_ROW)
        *next = sqlite3_column_int64(t->st_last, 0) + 1;
    sqlite3_reset(t->st_last);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? KV_OK : kvi_err_sqlite(&t->err, t->db, rc, "last id");
}

kv_status kv_text_clear(kv_text *t)
{
    kv_status st;
    char sql[600];
    kvi_err_clear(&t->err);
    if ((st = kvi_store_begin(&t->err, t->db, 1)) != KV_OK)
        return st;
    snprintf(sql, sizeof sql, "DELETE FROM \"%s\"; DELETE FROM \"%s_values\"", t->table, t->table);
    if ((st = kvi_exec(t->db, sql, &t->err)) != KV_OK) {
        kvi_store_rollback(&t->err, t->db);
        return st;
    }
    return kvi_store_commit(&t->err, t->db);
}

/* ====================================================================== */
/* 4. Reads                                                                 */
/* ====================================================================== */

kv_status kv_text_build_match(const char *query, size_t qlen, const char *column, int escape,
                              char **out, size_t *outlen, int *empty)
{
    sqlbuf b = {0};
    *out = NULL;
    *outlen = 0;
    *empty = 0;
    if (escape) {
        /* Python's str.strip(): an all-whitespace query searches nothing. */
        size_t i = 0;
        while (i < qlen && (query[i] == ' ' || query[i] == '\t' || query[i] == '\n' ||
                            query[i] == '\r' || query[i] == '\f' || query[i] == '\v'))
            i++;
        if (i == qlen) {
            *empty = 1;
            return KV_OK;
        }
    } else if (qlen == 0) {
        *empty = 1;
        return KV_OK;
    }
    if (column) {
        sb_str(&b, column);
        sb_str(&b, ":");
    }
    if (escape) {
        /* Inside the phrase a '"' is doubled and a NUL becomes a space: FTS5's
         * query parser ends a string at NUL ("unterminated string"), while
         * its tokenizers split text at NUL as at a space, so the phrase still
         * matches the text as it was indexed. */
        sb_str(&b, "\"");
        size_t start = 0;
        for (size_t i = 0; i < qlen; i++)
            if (query[i] == '"' || query[i] == '\0') {
                sb_add(&b, query + start, i - start);
                sb_str(&b, query[i] == '"' ? "\"\"" : " ");
                start = i + 1;
            }
        sb_add(&b, query + start, qlen - start);
        sb_str(&b, "\"");
    } else {
        sb_add(&b, query, qlen);
    }
    if (b.oom) {
        kvi_free(b.s);
        return KV_NOMEM;
    }
    *out = b.s;
    *outlen = b.len;
    return KV_OK;
}

void kv_text_hits_free(kv_text_hits *h)
{
    if (!h)
        return;
    kvi_free(h->mem_);
    kvi_free(h->hits);
    kvi_free(h);
}

/* Per-hit offsets into the byte arena while rows are collected (the arena
 * may move as it grows; pointers are fixed up at the end). */
typedef struct {
    int64_t id;
    double score;
    size_t val_off, vlen;
    size_t texts_off;   /* offset of ncols (off,len) size_t pairs, or SIZE_MAX */
    size_t snip_off, snip_len;
    int has_snip;
} hit_tmp;

static int arena_add(sqlbuf *a, const void *p, size_t n, size_t *off)
{
    /* keep 8-byte alignment for the size_t tables stored in the arena */
    static const char pad[8] = {0};
    size_t mis = a->len % 8;
    if (mis)
        sb_add(a, pad, 8 - mis);
    *off = a->len;
    sb_add(a, p, n);
    sb_add(a, "", 1); /* keep every text NUL-terminated */
    return a->oom ? -1 : 0;
}

kv_status kv_text_search(kv_text *t, const char *query, size_t qlen, const char *column,
                         int64_t k, unsigned flags, const kv_text_snippet *snip,
                         kv_text_hits **out)
{
    kv_status st = KV_OK;
    char *match = NULL;
    size_t mlen;
    int empty, rc;
    sqlbuf sql = {0}, arena = {0};
    sqlite3_stmt *stmt = NULL;
    hit_tmp *tmp = NULL;
    size_t n = 0, cap = 0;
    kv_text_hits *h = NULL;
    int with_texts = (flags & KV_TEXT_WITH_TEXTS) != 0;

    kvi_err_clear(&t->err);
    *out = NULL;
    if (column) {
        size_t i;
        for (i = 0; i < t->ncols; i++)
            if (strcmp(column, t->cols[i]) == 0)
                break;
        if (i == t->ncols)
            return kvi_err_set(&t->err, KV_INVALID, "Column '%s' not found. Available columns: %zu",
                               column, t->ncols);
    }
    if (snip && (snip->column < 0 || (size_t)snip->column >= t->ncols))
        return kvi_err_set(&t->err, KV_INVALID, "snippet column index %d out of range", snip->column);

    if ((st = kv_text_build_match(query, qlen, column, (flags & KV_TEXT_ESCAPE) != 0, &match,
                                  &mlen, &empty)) != KV_OK)
        return kvi_err_set(&t->err, st, "out of memory");

    h = kvi_calloc(1, sizeof *h);
    if (!h) {
        st = kvi_err_set(&t->err, KV_NOMEM, "out of memory");
        goto done;
    }
    h->ncols = t->ncols;
    if (empty || k <= 0)
        goto finish;

    /* SELECT d.rowid, bm25(d), v.value [, texts...] [, snippet(...)] */
    sb_fmt(&sql, "SELECT d.rowid, bm25(\"%s\"), v.value", t->table);
    if (with_texts)
        for (size_t i = 0; i < t->ncols; i++) {
            sb_str(&sql, ", d.");
            sb_ident(&sql, t->cols[i]);
        }
    if (snip)
        sb_fmt(&sql, ", snippet(\"%s\", %d, ?3, ?4, ?5, ?6)", t->table, snip->column);
    sb_fmt(&sql, " FROM \"%s\" AS d JOIN \"%s_values\" AS v ON v.id = d.value_ref"
                 " WHERE \"%s\" MATCH ?1 ORDER BY bm25(\"%s\") LIMIT ?2",
           t->table, t->table, t->table, t->table);
    if (sql.oom) {
        st = kvi_err_set(&t->err, KV_NOMEM, "out of memory");
        goto done;
    }
    rc = sqlite3_prepare_v2(t->db, sql.s, -1, &stmt, NULL);
    if (rc != SQLITE_OK) {
        st = sql_fail(t, rc, NULL);
        goto done;
    }
    sqlite3_bind_text64(stmt, 1, match, mlen, SQLITE_STATIC, SQLITE_UTF8);
    sqlite3_bind_int64(stmt, 2, k);
    if (snip) {
        sqlite3_bind_text(stmt, 3, snip->start ? snip->start : "", -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 4, snip->end ? snip->end : "", -1, SQLITE_STATIC);
        sqlite3_bind_text(stmt, 5, snip->ellipsis ? snip->ellipsis : "", -1, SQLITE_STATIC);
        sqlite3_bind_int(stmt, 6, snip->tokens);
    }
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            hit_tmp *p = kvi_realloc(tmp, ncap * sizeof *tmp);
            if (!p) {
                st = kvi_err_set(&t->err, KV_NOMEM, "out of memory");
                goto done;
            }
            tmp = p;
            cap = ncap;
        }
        hit_tmp *x = &tmp[n];
        int col = 0;
        x->id = sqlite3_column_int64(stmt, col++);
        x->score = -sqlite3_column_double(stmt, col++);
        const void *vp = sqlite3_column_blob(stmt, col);
        x->vlen = (size_t)sqlite3_column_bytes(stmt, col++);
        if (arena_add(&arena, vp, x->vlen, &x->val_off) < 0)
            goto oom;
        x->texts_off = SIZE_MAX;
        if (with_texts) {
            size_t pairs[2 * 255];
            for (size_t i = 0; i < t->ncols; i++) {
                const unsigned char *s = sqlite3_column_text(stmt, col);
                size_t len = (size_t)sqlite3_column_bytes(stmt, col++);
                size_t off;
                if (arena_add(&arena, s ? (const void *)s : "", len, &off) < 0)
                    goto oom;
                pairs[2 * i] = off;
                pairs[2 * i + 1] = len;
            }
            if (arena_add(&arena, pairs, sizeof(size_t) * 2 * t->ncols, &x->texts_off) < 0)
                goto oom;
        }
        x->has_snip = snip != NULL;
        if (snip) {
            const unsigned char *s = sqlite3_column_text(stmt, col);
            x->snip_len = (size_t)sqlite3_column_bytes(stmt, col++);
            if (arena_add(&arena, s ? (const void *)s : "", x->snip_len, &x->snip_off) < 0)
                goto oom;
        }
        n++;
    }
    if (rc != SQLITE_DONE) {
        st = sql_fail(t, rc, NULL);
        goto done;
    }

finish:
    /* Fix up pointers now that the arena no longer moves. Text tables are
     * stored as (offset, length) pairs and rewritten in place into
     * (pointer array, length array) views below. */
    h->n = n;
    if (n) {
        size_t extra = with_texts ? n * t->ncols * (sizeof(char *) + sizeof(size_t)) : 0;
        h->hits = kvi_calloc(n, sizeof(kv_text_hit));
        if (!h->hits)
            goto oom;
        /* One block: the arena bytes, then the texts' pointer and length
         * views, freed together by kv_text_hits_free. */
        size_t alen = arena.len, base_pad = (alen + 7) & ~(size_t)7;
        char *mem = kvi_malloc(base_pad + extra + 1);
        if (!mem)
            goto oom;
        if (alen)
            memcpy(mem, arena.s, alen);
        const char **ptrs = (const char **)(mem + base_pad);
        size_t *lens = (size_t *)(mem + base_pad + (with_texts ? n * t->ncols * sizeof(char *) : 0));
        for (size_t i = 0; i < n; i++) {
            kv_text_hit *o = &h->hits[i];
            o->id = tmp[i].id;
            o->score = tmp[i].score;
            o->val = (const uint8_t *)mem + tmp[i].val_off;
            o->vlen = tmp[i].vlen;
            if (with_texts) {
                const size_t *pairs = (const size_t *)(mem + tmp[i].texts_off);
                o->texts = &ptrs[i * t->ncols];
                o->text_lens = &lens[i * t->ncols];
                for (size_t c = 0; c < t->ncols; c++) {
                    ptrs[i * t->ncols + c] = mem + pairs[2 * c];
                    lens[i * t->ncols + c] = pairs[2 * c + 1];
                }
            }
            if (tmp[i].has_snip) {
                o->snippet = mem + tmp[i].snip_off;
                o->snippet_len = tmp[i].snip_len;
            }
        }
        h->mem_ = mem;
    }
    *out = h;
    h = NULL;
    st = KV_OK;
    goto done;

oom:
    st = kvi_err_set(&t->err, KV_NOMEM, "out of memory");
done:
    sqlite3_finalize(stmt);
    kvi_free(sql.s);
    kvi_free(arena.s);
    kvi_free(tmp);
    kvi_free(match);
    kv_text_hits_free(h);
    return st;
}

kv_status kv_text_get(kv_text *t, const char *key, size_t klen, uint8_t **val, size_t *vlen)
{
    char *match = NULL;
    size_t mlen;
    int empty, rc;
    kv_status st;
    kvi_err_clear(&t->err);
    *val = NULL;
    *vlen = 0;
    if (t->ncols != 1)
        return kvi_err_set(&t->err, KV_INVALID,
                           "get() only works with single-column TextVault; use search() instead");
    if ((st = kv_text_build_match(key, klen, NULL, 1, &match, &mlen, &empty)) != KV_OK)
        return kvi_err_set(&t->err, st, "out of memory");
    if (empty)
        return kvi_err_set(&t->err, KV_NOTFOUND, "KeyError('Key not found: %.*s')", (int)klen, key);
    sqlite3_bind_text64(t->st_get, 1, match, mlen, SQLITE_STATIC, SQLITE_UTF8);
    rc = sqlite3_step(t->st_get);
    if (rc == SQLITE_ROW) {
        const void *p = sqlite3_column_blob(t->st_get, 0);
        size_t n = (size_t)sqlite3_column_bytes(t->st_get, 0);
        *val = kvi_malloc(n ? n : 1);
        if (!*val) {
            st = kvi_err_set(&t->err, KV_NOMEM, "out of memory");
        } else {
            if (n)
                memcpy(*val, p, n);
            *vlen = n;
            st = KV_OK;
        }
    } else if (rc == SQLITE_DONE) {
        st = kvi_err_set(&t->err, KV_NOTFOUND, "KeyError('Key not found: %.*s')",
                         (int)(klen > 200 ? 200 : klen), key);
    } else {
        st = sql_fail(t, rc, NULL);
    }
    sqlite3_reset(t->st_get);
    sqlite3_clear_bindings(t->st_get);
    kvi_free(match);
    return st;
}

void kv_text_doc_free(kv_text_doc *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->ncols; i++)
        kvi_free(d->texts ? d->texts[i] : NULL);
    kvi_free(d->texts);
    kvi_free(d->text_lens);
    kvi_free(d->val);
    kvi_free(d);
}

kv_status kv_text_get_by_id(kv_text *t, int64_t id, kv_text_doc **out)
{
    kv_status st;
    kv_text_doc *d = NULL;
    kvi_err_clear(&t->err);
    *out = NULL;
    /* Both reads in one snapshot. */
    if ((st = kvi_store_begin(&t->err, t->db, 0)) != KV_OK)
        return st;
    if ((st = kvi_store_step_id(&t->err, t->db, t->st_get_doc, id, id)) != KV_OK)
        goto done;
    d = kvi_calloc(1, sizeof *d);
    if (!d || !(d->texts = kvi_calloc(t->ncols, sizeof(char *))) ||
        !(d->text_lens = kvi_calloc(t->ncols, sizeof(size_t)))) {
        st = kvi_err_set(&t->err, KV_NOMEM, "out of memory");
        goto done;
    }
    d->ncols = t->ncols;
    for (size_t i = 0; i < t->ncols && st == KV_OK; i++) {
        uint8_t *text = NULL; /* one byte more than the text, for its NUL */
        st = kvi_store_column_copy(&t->err, t->st_get_doc, (int)i, 1, &text, &d->text_lens[i]);
        if (st == KV_OK) {
            text[d->text_lens[i]] = '\0';
            d->texts[i] = (char *)text;
        }
    }
    if (st != KV_OK)
        goto done;
    const int64_t ref = sqlite3_column_int64(t->st_get_doc, (int)t->ncols);
    if ((st = kvi_store_step_id(&t->err, t->db, t->st_get_val, ref, id)) != KV_OK)
        goto done;
    if ((st = kvi_store_column_copy(&t->err, t->st_get_val, 0, 0, &d->val, &d->vlen)) != KV_OK)
        goto done;
    *out = d;
    d = NULL;
done:
    kvi_store_read_end(&t->err, t->db, t->st_get_doc, t->st_get_val);
    kv_text_doc_free(d);
    return st;
}

kv_status kv_text_exists(kv_text *t, int64_t id, int *found)
{
    kvi_err_clear(&t->err);
    return kvi_store_exists(&t->err, t->db, t->st_ref, id, found, "lookup value_ref");
}

static kv_status count_stmt(kv_text *t, sqlite3_stmt *st, int64_t *count)
{
    int rc = sqlite3_step(st);
    kv_status s = KV_OK;
    if (rc == SQLITE_ROW)
        *count = sqlite3_column_int64(st, 0);
    else
        s = sql_fail(t, rc, NULL);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return s;
}

kv_status kv_text_count(kv_text *t, int64_t *count)
{
    kvi_err_clear(&t->err);
    return count_stmt(t, t->st_count, count);
}

kv_status kv_text_count_matches(kv_text *t, const char *query, size_t qlen, int64_t *count)
{
    kvi_err_clear(&t->err);
    sqlite3_bind_text64(t->st_cmatch, 1, query ? query : "", qlen, SQLITE_STATIC, SQLITE_UTF8);
    return count_stmt(t, t->st_cmatch, count);
}

kv_status kv_text_keys(kv_text *t, int64_t limit, int64_t offset, int64_t **ids, size_t *n)
{
    int rc;
    size_t cap = 0;
    int64_t *arr = NULL;
    kv_status st = KV_OK;
    kvi_err_clear(&t->err);
    *ids = NULL;
    *n = 0;
    if (offset < 0)
        return kvi_err_set(&t->err, KV_INVALID, "offset must be >= 0");
    sqlite3_bind_int64(t->st_keys, 1, limit < 0 ? -1 : limit);
    sqlite3_bind_int64(t->st_keys, 2, offset);
    while ((rc = sqlite3_step(t->st_keys)) == SQLITE_ROW) {
        if (*n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            int64_t *p = kvi_realloc(arr, ncap * sizeof *arr);
            if (!p) {
                st = kvi_err_set(&t->err, KV_NOMEM, "out of memory");
                break;
            }
            arr = p;
            cap = ncap;
        }
        arr[(*n)++] = sqlite3_column_int64(t->st_keys, 0);
    }
    if (st == KV_OK && rc != SQLITE_DONE)
        st = sql_fail(t, rc, NULL);
    sqlite3_reset(t->st_keys);
    if (st != KV_OK) {
        kvi_free(arr);
        *n = 0;
        return st;
    }
    *ids = arr;
    return KV_OK;
}

KV_API void kv_text_set_commit_guard(kv_text *t, kv_commit_guard *g)
{
    kvi_commit_guard_install(t->db, g);
}

KV_API void kv_text_conn(kv_text *t, kv_conn *out)
{
    *out = (kv_conn){.db = t->db, .err = &t->err, .stmts = &t->oprec, .mu = NULL};
}

KV_API kv_status kv_text_tx_begin(kv_text *t)
{
    KV_ASSERT(t);
    return kvi_store_tx_begin(&t->err, t->db);
}

KV_API kv_status kv_text_tx_end(kv_text *t, int commit)
{
    KV_ASSERT(t);
    return kvi_store_tx_end(&t->err, t->db, commit);
}
