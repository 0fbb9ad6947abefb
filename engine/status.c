/*
 * status.c - kv_status texts and the SQLite → kv_status mapping, plus the
 * kvi_err helpers that keep the detailed cause (SQLite extended code,
 * errno, message) next to the coarse status.
 */
#include "internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

KV_API const char *kv_strerror(kv_status st)
{
    switch (st) {
    case KV_OK: return "ok";
    case KV_NOTFOUND: return "Key not found";
    case KV_BUSY: return "database is locked";
    case KV_INVALID: return "invalid argument";
    case KV_IO: return "I/O error";
    case KV_NOMEM: return "out of memory";
    case KV_CORRUPT: return "malformed or corrupt data";
    case KV_SQLITE: return "SQLite error";
    case KV_CLOSED: return "handle is closed";
    case KV_UNSUPPORTED: return "value outside the supported model";
    case KV_SHORT: return "stream ended early";
    case KV_CALLBACK: return "callback failed";
    case KV_NOTCACHED: return "not cached";
    case KV_STATUS_COUNT: break;
    }
    return "unknown status";
}

kv_status kvi_status_from_sqlite(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return KV_OK;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return KV_BUSY;
    case SQLITE_NOMEM:
        return KV_NOMEM;
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
    case SQLITE_FULL:
    case SQLITE_READONLY:
    case SQLITE_PERM:
        return KV_IO;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return KV_CORRUPT;
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
        return KV_INVALID;
    case SQLITE_NOTFOUND:
        return KV_NOTFOUND;
    default:
        return KV_SQLITE;
    }
}

void kvi_err_clear(kvi_err *e)
{
    e->st = KV_OK;
    e->sqlite_rc = 0;
    e->os_errno = 0;
    e->msg[0] = '\0';
}

kv_status kvi_err_set(kvi_err *e, kv_status st, const char *fmt, ...)
{
    va_list ap;
    e->st = st;
    e->sqlite_rc = 0;
    e->os_errno = 0;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return st;
}

kv_status kvi_err_sqlite(kvi_err *e, sqlite3 *db, int rc, const char *op)
{
    const char *m = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    int ext = db ? sqlite3_extended_errcode(db) : rc;
    /* sqlite3_errmsg reflects the most recent API call; if that call
     * succeeded meanwhile (e.g. a reset), fall back to the code's text. */
    if (!m || (ext & 0xff) != (rc & 0xff)) {
        m = sqlite3_errstr(rc);
        ext = rc;
    }
    e->st = kvi_status_from_sqlite(rc);
    if (e->st == KV_OK)
        e->st = KV_SQLITE;
    e->sqlite_rc = ext;
    e->os_errno = 0;
    if (op)
        snprintf(e->msg, sizeof e->msg, "%s: %s", op, m);
    else
        snprintf(e->msg, sizeof e->msg, "%s", m);
    return e->st;
}

kv_status kvi_err_os(kvi_err *e, int err, const char *op)
{
    e->st = (err == ENOMEM) ? KV_NOMEM : KV_IO;
    e->sqlite_rc = 0;
    e->os_errno = err;
    snprintf(e->msg, sizeof e->msg, "%s: %s", op, strerror(err));
    return e->st;
}

void kvi_msg_copy(const char *msg, char *err, size_t errlen)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
}
