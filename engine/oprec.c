/*
 * oprec.c -- records of applied operations in kohakuvault_meta
 * (kvault/oprec.h): the exactly-once check of table operations sent
 * through the shared-mode writer. One implementation for the three store
 * handles; each hands its connection, error record and statements in a
 * kv_conn.
 */
#include "kvault/oprec.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define OPREC_VERSION 1
#define OPREC_HDR 24            /* version, form, reserved, status, seq, time */
#define FORM_RUN 1u             /* form bit: the result is a run of ids */
#define FORM_FAIL 2u            /* form bit: a failure block precedes the result */
#define FAIL_HDR 16             /* fail_seq, fail_status, message length */
#define OPREC_RUN_MIN 3         /* ids stored as a run from this many on */
#define OPREC_PREFIX "exec:"
#define OPREC_KEY_LEN (sizeof OPREC_PREFIX - 1 + 2 * KV_OPREC_TOKEN_BYTES)

static const char *const oprec_sql[KVI_OPREC_COUNT] = {
    [KVI_OPREC_GET] = "SELECT value FROM kohakuvault_meta WHERE key = ?1",
    [KVI_OPREC_PUT] = ("INSERT INTO kohakuvault_meta(key, value) VALUES (?1, ?2)"
                       " ON CONFLICT(key) DO UPDATE SET value = excluded.value"),
    [KVI_OPREC_DEL] = "DELETE FROM kohakuvault_meta WHERE key = ?1",
};

void kvi_oprec_finalize(kvi_oprec_st *s)
{
    for (int i = 0; i < KVI_OPREC_COUNT; i++) {
        sqlite3_finalize(s->st[i]);
        s->st[i] = NULL;
    }
    sqlite3_finalize(s->schema);
    s->schema = NULL;
    s->missing_known = 0;
}

static void conn_lock(const kv_conn *c)
{
    if (c->mu)
        pthread_mutex_lock(c->mu);
}

static void conn_unlock(const kv_conn *c)
{
    if (c->mu)
        pthread_mutex_unlock(c->mu);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* "exec:" + the token in lower-case hex (OPREC_KEY_LEN chars + NUL). */
static void oprec_key(const uint8_t *token, char key[OPREC_KEY_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    memcpy(key, OPREC_PREFIX, sizeof OPREC_PREFIX - 1);
    char *p = key + sizeof OPREC_PREFIX - 1;
    for (int i = 0; i < KV_OPREC_TOKEN_BYTES; i++) {
        *p++ = hex[token[i] >> 4];
        *p++ = hex[token[i] & 15];
    }
    *p = 0;
}

/* Statement `which` of c, prepared at first use. KV_OK; *missing = 1 (and
 * KV_OK) when the file has no kohakuvault_meta table; else the failure. */
/* The schema version of c's database (PRAGMA schema_version) into *v:
 * 0, or -1 when it cannot be read. */
static int schema_version(const kv_conn *c, kvi_oprec_st *s, int64_t *v)
{
    if (!s->schema && sqlite3_prepare_v3(c->db, "PRAGMA schema_version", -1,
                                         SQLITE_PREPARE_PERSISTENT, &s->schema, NULL) != SQLITE_OK) {
        s->schema = NULL;
        return -1;
    }
    int rc = sqlite3_step(s->schema);
    if (rc == SQLITE_ROW)
        *v = sqlite3_column_int64(s->schema, 0);
    sqlite3_reset(s->schema);
    return rc == SQLITE_ROW ? 0 : -1;
}

/* Statement `which` of c, prepared at first use: *out, or *missing = 1
 * when the file has no kohakuvault_meta table. A missing table is
 * remembered with the schema version it was missing at, so a file without
 * one (every embedded store: each insert looks up its lease) pays a pragma
 * read per look instead of a failing prepare, which makes SQLite read the
 * schema again each time (measured: embedded VectorKVault inserts at about
 * half their rate). */
static kv_status oprec_stmt(const kv_conn *c, int which, sqlite3_stmt **out, int *missing)
{
    kvi_oprec_st *s = c->stmts;
    *missing = 0;
    if (!s->st[which]) {
        sqlite3 *db = c->db;
        int64_t v = -1;
        int have_v = schema_version(c, s, &v) == 0;
        if (have_v && s->missing_known && v == s->missing_at) {
            *missing = 1;
            return KV_OK;
        }
        s->missing_known = 0;
        int rc = sqlite3_prepare_v3(db, oprec_sql[which], -1, SQLITE_PREPARE_PERSISTENT,
                                    &s->st[which], NULL);
        if (rc != SQLITE_OK) {
            s->st[which] = NULL;
            if (strstr(sqlite3_errmsg(db), "no such table")) {
                *missing = 1;
                s->missing_known = have_v;   /* read before the prepare: never too new */
                s->missing_at = v;
                return KV_OK;
            }
            return kvi_err_sqlite(c->err, db, rc, "prepare operation record");
        }
    }
    *out = s->st[which];
    return KV_OK;
}

/* Parse a stored value into *r (res malloc'd). 1, 0 when not a record,
 * -1 out of memory. */
static int oprec_parse(const uint8_t *v, size_t n, kv_oprec *r)
{
    if (n < OPREC_HDR || v[0] != OPREC_VERSION || v[1] > (FORM_RUN | FORM_FAIL))
        return 0;
    memcpy(&r->status, v + 4, 4);
    memcpy(&r->seq, v + 8, 8);
    memcpy(&r->time_ms, v + 16, 8);
    const uint8_t *body = v + OPREC_HDR;
    size_t blen = n - OPREC_HDR;
    if (v[1] & FORM_FAIL) {   /* fail_seq, fail_status, message length, message */
        uint32_t ml;
        if (blen < FAIL_HDR)
            return 0;
        memcpy(&r->fail_seq, body, 8);
        memcpy(&r->fail_status, body + 8, 4);
        memcpy(&ml, body + 12, 4);
        if (ml > blen - FAIL_HDR)
            return 0;
        if (!(r->fail_msg = kvi_malloc((size_t)ml + 1)))
            return -1;
        memcpy(r->fail_msg, body + FAIL_HDR, ml);
        r->fail_msg[ml] = 0;
        body += FAIL_HDR + ml;
        blen -= FAIL_HDR + ml;
    }
    if (v[1] & FORM_RUN) {   /* a run of ids */
        int64_t first;
        uint64_t count;
        if (blen != 16)
            return 0;
        memcpy(&first, body, 8);
        memcpy(&count, body + 8, 8);
        if (count > SIZE_MAX / 8)
            return 0;
        r->res_len = (size_t)count * 8;
        if (!(r->res = kvi_malloc(r->res_len ? r->res_len : 1)))
            return -1;
        for (uint64_t i = 0; i < count; i++) {
            int64_t id = first + (int64_t)i;
            memcpy(r->res + i * 8, &id, 8);
        }
        return 1;
    }
    r->res_len = blen;
    if (!(r->res = kvi_malloc(blen ? blen : 1)))
        return -1;
    if (blen)
        memcpy(r->res, body, blen);
    return 1;
}

KV_API const char *kv_conn_errmsg(const kv_conn *c)
{
    return ((const kvi_err *)c->err)->msg;
}

KV_API kv_status kv_oprec_get(const kv_conn *c, const uint8_t token[KV_OPREC_TOKEN_BYTES],
                              kv_oprec *out, int *found)
{
    char key[OPREC_KEY_LEN + 1];
    sqlite3_stmt *s = NULL;
    int missing;
    memset(out, 0, sizeof *out);
    *found = 0;
    oprec_key(token, key);
    conn_lock(c);
    kv_status st = oprec_stmt(c, KVI_OPREC_GET, &s, &missing);
    if (st == KV_OK && !missing) {
        sqlite3_bind_text(s, 1, key, (int)OPREC_KEY_LEN, SQLITE_STATIC);
        int rc = sqlite3_step(s);
        if (rc == SQLITE_ROW) {
            int p = oprec_parse(sqlite3_column_blob(s, 0), (size_t)sqlite3_column_bytes(s, 0), out);
            if (p < 0)
                st = kvi_err_set(c->err, KV_NOMEM, "operation record: out of memory");
            *found = p > 0;
        } else if (rc != SQLITE_DONE) {
            st = kvi_err_sqlite(c->err, c->db, rc, "read operation record");
        }
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
    }
    conn_unlock(c);
    return st;
}

KV_API void kv_oprec_free(kv_oprec *r)
{
    kvi_free(r->res);
    kvi_free(r->fail_msg);
    r->res = NULL;
    r->res_len = 0;
    r->fail_msg = NULL;
}

/* 1 when res[0..len) is a run of at least OPREC_RUN_MIN i64 ids, each one
 * above the one before. */
static int id_run(const uint8_t *res, size_t len)
{
    if (len % 8 || len / 8 < OPREC_RUN_MIN)
        return 0;
    int64_t first, id;
    memcpy(&first, res, 8);
    for (size_t i = 1; i < len / 8; i++) {
        memcpy(&id, res + i * 8, 8);
        if (id != first + (int64_t)i)
            return 0;
    }
    return 1;
}

/* Bind `key` (and blob v[0..n) when v) to statement s of c and run it to
 * its end; failures recorded as "<op>: ...". */
static kv_status oprec_run(const kv_conn *c, sqlite3_stmt *s, const char *key, const void *v,
                           size_t n, const char *op)
{
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    if (v)
        sqlite3_bind_blob64(s, 2, v, n, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    kv_status st = rc == SQLITE_DONE ? KV_OK : kvi_err_sqlite(c->err, c->db, rc, op);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return st;
}

/* Upsert the kohakuvault_meta row `key` = blob v[0..n) (creates the table
 * when missing); failures recorded as "<op>: ...". Lock held. */
static kv_status meta_put(const kv_conn *c, const char *key, const void *v, size_t n,
                          const char *op)
{
    sqlite3_stmt *s = NULL;
    int missing;
    kv_status st = oprec_stmt(c, KVI_OPREC_PUT, &s, &missing);
    if (st == KV_OK && missing &&
        (st = kvi_exec(c->db,
                       "CREATE TABLE IF NOT EXISTS kohakuvault_meta (key TEXT PRIMARY KEY, value BLOB)",
                       c->err)) == KV_OK)
        st = oprec_stmt(c, KVI_OPREC_PUT, &s, &missing);
    if (st == KV_OK && missing)
        st = kvi_err_set(c->err, KV_SQLITE, "%s: no kohakuvault_meta table", op);
    if (st == KV_OK)
        st = oprec_run(c, s, key, v, n, op);
    return st;
}

KV_API kv_status kv_oprec_put_failed(const kv_conn *c, const uint8_t token[KV_OPREC_TOKEN_BYTES],
                                     uint64_t seq, int32_t status, const void *res, size_t len,
                                     uint64_t fail_seq, int32_t fail_status, const char *fail_msg)
{
    char key[OPREC_KEY_LEN + 1];
    int run = id_run(res, len);
    size_t ml = fail_seq && fail_msg ? strlen(fail_msg) : 0;
    size_t fail = fail_seq ? FAIL_HDR + ml : 0;
    size_t n = OPREC_HDR + fail + (run ? 16 : len);
    uint8_t *v = kvi_malloc(n);
    if (!v)
        return kvi_err_set(c->err, KV_NOMEM, "operation record: out of memory");
    int64_t t = now_ms();
    memset(v, 0, OPREC_HDR);
    v[0] = OPREC_VERSION;
    v[1] = (uint8_t)((run ? FORM_RUN : 0) | (fail_seq ? FORM_FAIL : 0));
    memcpy(v + 4, &status, 4);
    memcpy(v + 8, &seq, 8);
    memcpy(v + 16, &t, 8);
    uint8_t *body = v + OPREC_HDR;
    if (fail_seq) {
        uint32_t ml32 = (uint32_t)ml;
        memcpy(body, &fail_seq, 8);
        memcpy(body + 8, &fail_status, 4);
        memcpy(body + 12, &ml32, 4);
        if (ml)
            memcpy(body + FAIL_HDR, fail_msg, ml);
        body += fail;
    }
    if (run) {
        uint64_t count = len / 8;
        memcpy(body, res, 8);
        memcpy(body + 8, &count, 8);
    } else if (len) {
        memcpy(body, res, len);
    }
    oprec_key(token, key);
    conn_lock(c);
    kv_status st = meta_put(c, key, v, n, "write operation record");
    conn_unlock(c);
    kvi_free(v);
    return st;
}

KV_API kv_status kv_oprec_put(const kv_conn *c, const uint8_t token[KV_OPREC_TOKEN_BYTES],
                              uint64_t seq, int32_t status, const void *res, size_t len)
{
    return kv_oprec_put_failed(c, token, seq, status, res, len, 0, 0, NULL);
}

KV_API kv_status kv_oprec_drop(const kv_conn *c, const uint8_t token[KV_OPREC_TOKEN_BYTES])
{
    char key[OPREC_KEY_LEN + 1];
    sqlite3_stmt *s = NULL;
    int missing;
    oprec_key(token, key);
    conn_lock(c);
    kv_status st = oprec_stmt(c, KVI_OPREC_DEL, &s, &missing);
    if (st == KV_OK && !missing)
        st = oprec_run(c, s, key, NULL, 0, "drop operation record");
    conn_unlock(c);
    return st;
}

KV_API kv_status kv_oprec_expire(const kv_conn *c, int64_t max_age_ms, int64_t *dropped)
{
    sqlite3 *db = c->db;
    sqlite3_stmt *s = NULL;
    char (*keys)[OPREC_KEY_LEN + 1] = NULL;
    size_t nkeys = 0, cap = 0;
    int64_t now = now_ms();
    int rc;
    if (dropped)
        *dropped = 0;
    conn_lock(c);
    kv_status st = kvi_exec(db, "BEGIN IMMEDIATE", c->err);
    if (st != KV_OK)
        goto out;
    /* the records sort between "exec:" and "exec;" (the next character);
     * the stale ones are collected first, then deleted */
    rc = sqlite3_prepare_v2(db,
                            "SELECT key, value FROM kohakuvault_meta"
                            " WHERE key >= 'exec:' AND key < 'exec;'",
                            -1, &s, NULL);
    if (rc != SQLITE_OK) {
        if (!strstr(sqlite3_errmsg(db), "no such table"))
            st = kvi_err_sqlite(c->err, db, rc, "expire operation records");
        goto end;
    }
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        kv_oprec r = {0};
        int p = oprec_parse(sqlite3_column_blob(s, 1), (size_t)sqlite3_column_bytes(s, 1), &r);
        kv_oprec_free(&r);
        if (p > 0 && r.time_ms >= now - max_age_ms && r.time_ms <= now + max_age_ms)
            continue;
        if (sqlite3_column_bytes(s, 0) != (int)OPREC_KEY_LEN)
            continue;   /* not a key this API writes */
        if (nkeys == cap) {
            void *k = kvi_realloc(keys, (cap = cap ? 2 * cap : 16) * sizeof *keys);
            if (!k) {
                st = kvi_err_set(c->err, KV_NOMEM, "expire operation records: out of memory");
                goto end;
            }
            keys = k;
        }
        memcpy(keys[nkeys++], sqlite3_column_text(s, 0), OPREC_KEY_LEN + 1);
    }
    if (rc != SQLITE_DONE) {
        st = kvi_err_sqlite(c->err, db, rc, "expire operation records");
        goto end;
    }
    sqlite3_finalize(s);
    s = NULL;
    if (nkeys && (rc = sqlite3_prepare_v2(db, "DELETE FROM kohakuvault_meta WHERE key = ?1", -1,
                                          &s, NULL)) != SQLITE_OK) {
        st = kvi_err_sqlite(c->err, db, rc, "expire operation records");
        goto end;
    }
    for (size_t i = 0; i < nkeys; i++) {
        sqlite3_bind_text(s, 1, keys[i], (int)OPREC_KEY_LEN, SQLITE_STATIC);
        rc = sqlite3_step(s);
        sqlite3_reset(s);
        if (rc != SQLITE_DONE) {
            st = kvi_err_sqlite(c->err, db, rc, "expire operation records");
            goto end;
        }
    }
end:
    sqlite3_finalize(s);
    if (st == KV_OK)
        st = kvi_exec(db, "COMMIT", c->err);
    if (st != KV_OK) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        nkeys = 0;
    }
out:
    conn_unlock(c);
    kvi_free(keys);
    if (dropped)
        *dropped = (int64_t)nkeys;
    return st;
}

/* ---- id leases (kv_lease_grant) ---------------------------------------- */

#define LEASE_PREFIX "lease:"
#define LEASE_NAME_MAX 256

/* The key of lease `name` ("lease:" + name) into key. 0, or -1 too long. */
static int lease_key(const char *name, char key[sizeof LEASE_PREFIX + LEASE_NAME_MAX])
{
    size_t n = strlen(name);
    if (n == 0 || n > LEASE_NAME_MAX)
        return -1;
    memcpy(key, LEASE_PREFIX, sizeof LEASE_PREFIX - 1);
    memcpy(key + sizeof LEASE_PREFIX - 1, name, n + 1);
    return 0;
}

/* The stored next id of lease key `key` into *next (0 when none). */
static kv_status lease_read(const kv_conn *c, const char *key, int64_t *next)
{
    sqlite3_stmt *s = NULL;
    int missing;
    *next = 0;
    kv_status st = oprec_stmt(c, KVI_OPREC_GET, &s, &missing);
    if (st != KV_OK || missing)
        return st;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && sqlite3_column_bytes(s, 0) == 8)
        memcpy(next, sqlite3_column_blob(s, 0), 8);
    else if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        st = kvi_err_sqlite(c->err, c->db, rc, "read lease");
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return st;
}

/* Store `next` as lease key `key` (creates kohakuvault_meta when missing). */
static kv_status lease_write(const kv_conn *c, const char *key, int64_t next)
{
    return meta_put(c, key, &next, 8, "write lease");
}

KV_API kv_status kv_lease_grant(const kv_conn *c, const char *name, int64_t floor, int64_t n,
                                int64_t *lo)
{
    char key[sizeof LEASE_PREFIX + LEASE_NAME_MAX];
    int64_t next = 0;
    if (n < 1 || n > KV_LEASE_MAX || floor < 1 || lease_key(name, key) != 0)
        return kvi_err_set(c->err, KV_INVALID, "lease: bad name, floor or count");
    conn_lock(c);
    kv_status st = lease_read(c, key, &next);
    if (st == KV_OK) {
        *lo = next > floor ? next : floor;
        st = lease_write(c, key, *lo + n);
    }
    conn_unlock(c);
    return st;
}

KV_API kv_status kv_lease_take(const kv_conn *c, const char *name, int64_t floor, int64_t n,
                               int64_t *lo)
{
    char key[sizeof LEASE_PREFIX + LEASE_NAME_MAX];
    int64_t next = 0;
    if (floor < 1 || n < 1 || n > INT64_MAX - floor || lease_key(name, key) != 0)
        return kvi_err_set(c->err, KV_INVALID, "lease: bad name, floor or count");
    conn_lock(c);
    kv_status st = lease_read(c, key, &next);
    if (st == KV_OK) {
        *lo = next > floor ? next : floor;
        if (next >= floor)   /* blocks reach the store's end: step past these ids too */
            st = lease_write(c, key, *lo + n);
    }
    conn_unlock(c);
    return st;
}

KV_API kv_status kv_lease_next(const kv_conn *c, const char *name, int64_t floor, int64_t *id)
{
    return kv_lease_take(c, name, floor, 1, id);
}

KV_API kv_status kv_lease_return(const kv_conn *c, const char *name, int64_t next, int64_t end)
{
    char key[sizeof LEASE_PREFIX + LEASE_NAME_MAX];
    int64_t cur = 0;
    if (next < 1 || end < next || lease_key(name, key) != 0)
        return kvi_err_set(c->err, KV_INVALID, "lease: bad name or range");
    conn_lock(c);
    int own = sqlite3_get_autocommit(c->db);   /* no transaction open: one of its own */
    kv_status st = own ? kvi_exec(c->db, "BEGIN IMMEDIATE", c->err) : KV_OK;
    if (st == KV_OK)
        st = lease_read(c, key, &cur);
    if (st == KV_OK && cur == end && next < end)
        st = lease_write(c, key, next);
    if (own && !sqlite3_get_autocommit(c->db)) {
        if (st == KV_OK)
            st = kvi_exec(c->db, "COMMIT", c->err);
        if (st != KV_OK)
            sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
    }
    conn_unlock(c);
    return st;
}
