/* test_vfs_fault.c - the engine against a disk that fails: a test VFS
 * ("kvfault", registered as SQLite's default, wrapping the default unix
 * VFS) fails the Nth write or sync of any file with SQLITE_IOERR while it
 * is armed. The engine's writes (kv_put, the writer's kv_batch commits)
 * must then return a clear error, lose nothing acknowledged before, leave
 * a file that passes PRAGMA integrity_check, and work again once the
 * fault stops. Real SQLite files in per-test temporary directories. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>

#include "kvault/batch.h"
#include "kvault/kvault.h"
#include "kvtest_util.h"

/* ---- the fault VFS -------------------------------------------------------- */

enum { FAULT_WRITE, FAULT_SYNC };

static struct {
    sqlite3_vfs vfs;
    sqlite3_vfs *base;
    sqlite3_io_methods io;
    int kind;          /* FAULT_WRITE or FAULT_SYNC */
    long countdown;    /* operations of that kind left before the first failure; <0: off */
    long failed;       /* operations failed so far */
} g;

typedef struct fault_file {
    sqlite3_file base;    /* our methods */
    sqlite3_file *real;   /* the unix VFS's file, allocated right after this struct */
} fault_file;

/* 1 when an operation of `kind` must fail now (the countdown reached 0). */
static int fault_now(int kind)
{
    if (g.kind != kind || g.countdown < 0) return 0;
    if (g.countdown > 0) {
        g.countdown--;
        return 0;
    }
    g.failed++;
    return 1;
}

#define REAL(f) (((fault_file *)(f))->real)

static int f_close(sqlite3_file *f)
{
    int rc = REAL(f)->pMethods ? REAL(f)->pMethods->xClose(REAL(f)) : SQLITE_OK;
    return rc;
}
static int f_read(sqlite3_file *f, void *p, int n, sqlite3_int64 off)
{
    return REAL(f)->pMethods->xRead(REAL(f), p, n, off);
}
static int f_write(sqlite3_file *f, const void *p, int n, sqlite3_int64 off)
{
    if (fault_now(FAULT_WRITE)) return SQLITE_IOERR_WRITE;
    return REAL(f)->pMethods->xWrite(REAL(f), p, n, off);
}
static int f_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}
static int f_sync(sqlite3_file *f, int flags)
{
    if (fault_now(FAULT_SYNC)) return SQLITE_IOERR_FSYNC;
    return REAL(f)->pMethods->xSync(REAL(f), flags);
}
static int f_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), size);
}
static int f_lock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xLock(REAL(f), l); }
static int f_unlock(sqlite3_file *f, int l) { return REAL(f)->pMethods->xUnlock(REAL(f), l); }
static int f_reserved(sqlite3_file *f, int *out)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int f_fcntl(sqlite3_file *f, int op, void *arg)
{
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int f_sector(sqlite3_file *f) { return REAL(f)->pMethods->xSectorSize(REAL(f)); }
static int f_devchar(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
static int f_shm_map(sqlite3_file *f, int pg, int pgsz, int extend, void volatile **pp)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), pg, pgsz, extend, pp);
}
static int f_shm_lock(sqlite3_file *f, int off, int n, int flags)
{
    return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}
static void f_shm_barrier(sqlite3_file *f) { REAL(f)->pMethods->xShmBarrier(REAL(f)); }
static int f_shm_unmap(sqlite3_file *f, int del)
{
    return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}
static int f_fetch(sqlite3_file *f, sqlite3_int64 off, int n, void **pp)
{
    return REAL(f)->pMethods->xFetch(REAL(f), off, n, pp);
}
static int f_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static int v_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out)
{
    (void)vfs;
    fault_file *ff = (fault_file *)file;
    ff->real = (sqlite3_file *)(ff + 1);
    memset(ff->real, 0, (size_t)g.base->szOsFile);
    int rc = g.base->xOpen(g.base, name, ff->real, flags, out);
    file->pMethods = rc == SQLITE_OK ? &g.io : NULL;
    return rc;
}
static int v_delete(sqlite3_vfs *v, const char *n, int sync)
{
    (void)v;
    return g.base->xDelete(g.base, n, sync);
}
static int v_access(sqlite3_vfs *v, const char *n, int flags, int *out)
{
    (void)v;
    return g.base->xAccess(g.base, n, flags, out);
}
static int v_full(sqlite3_vfs *v, const char *n, int cap, char *out)
{
    (void)v;
    return g.base->xFullPathname(g.base, n, cap, out);
}
static int v_random(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return g.base->xRandomness(g.base, n, out);
}
static int v_sleep(sqlite3_vfs *v, int us)
{
    (void)v;
    return g.base->xSleep(g.base, us);
}
static int v_time(sqlite3_vfs *v, double *out)
{
    (void)v;
    return g.base->xCurrentTime(g.base, out);
}
static int v_lasterr(sqlite3_vfs *v, int n, char *out)
{
    (void)v;
    return g.base->xGetLastError(g.base, n, out);
}
static int v_time64(sqlite3_vfs *v, sqlite3_int64 *out)
{
    (void)v;
    return g.base->xCurrentTimeInt64(g.base, out);
}

/* Register "kvfault" as the default VFS (once per process), disarmed. */
static void fault_vfs_install(void)
{
    g.countdown = -1;
    g.failed = 0;
    if (g.base) return;
    g.base = sqlite3_vfs_find(NULL);
    cr_assert(g.base != NULL);
    g.io = (sqlite3_io_methods){
        .iVersion = 3, .xClose = f_close, .xRead = f_read, .xWrite = f_write,
        .xTruncate = f_truncate, .xSync = f_sync, .xFileSize = f_size, .xLock = f_lock,
        .xUnlock = f_unlock, .xCheckReservedLock = f_reserved, .xFileControl = f_fcntl,
        .xSectorSize = f_sector, .xDeviceCharacteristics = f_devchar, .xShmMap = f_shm_map,
        .xShmLock = f_shm_lock, .xShmBarrier = f_shm_barrier, .xShmUnmap = f_shm_unmap,
        .xFetch = f_fetch, .xUnfetch = f_unfetch};
    g.vfs = (sqlite3_vfs){
        .iVersion = 2, .szOsFile = (int)sizeof(fault_file) + g.base->szOsFile,
        .mxPathname = g.base->mxPathname, .zName = "kvfault", .xOpen = v_open,
        .xDelete = v_delete, .xAccess = v_access, .xFullPathname = v_full,
        .xDlOpen = g.base->xDlOpen, .xDlError = g.base->xDlError, .xDlSym = g.base->xDlSym,
        .xDlClose = g.base->xDlClose, .xRandomness = v_random, .xSleep = v_sleep,
        .xCurrentTime = v_time, .xGetLastError = v_lasterr, .xCurrentTimeInt64 = v_time64};
    cr_assert(sqlite3_vfs_register(&g.vfs, 1) == SQLITE_OK);
}

/* Fail every operation of `kind` after the next `after` ones succeed. */
static void fault_arm(int kind, long after)
{
    g.kind = kind;
    g.failed = 0;
    g.countdown = after;
}

static void fault_disarm(void) { g.countdown = -1; }

/* ---- checks ---------------------------------------------------------------- */

static void key_of(char *k, size_t n, const char *prefix, int i)
{
    snprintf(k, n, "%s%06d", prefix, i);
}

/* Every key prefix0..prefix(n-1) holds its own name as value (checked by a
 * fresh handle on the default unix VFS, i.e. what is on disk). */
static void check_keys(const char *path, const char *prefix, int n)
{
    fault_disarm();
    kv_db *db = kvtest_open_db(path);
    for (int i = 0; i < n; i++) {
        char k[32];
        const void *v;
        size_t vn;
        key_of(k, sizeof k, prefix, i);
        cr_assert(eq(int, kv_get(db, k, strlen(k), &v, &vn), KV_OK), "%s lost", k);
        cr_assert(vn == strlen(k) && memcmp(v, k, vn) == 0, "%s: wrong value", k);
        kv_get_done(db);
    }
    kv_db_close(db);
    char ok[64];
    cr_assert(eq(str, kvtest_sql_text(path, "PRAGMA integrity_check", ok, sizeof ok), "ok"));
}

/* ---- kv_put (embedded writes) ---------------------------------------------- */

static void put_until_failure(kv_db *db, const char *prefix, int *acked, kv_status *failed)
{
    *failed = KV_OK;
    for (int i = 0; i < 10000; i++) {
        char k[32];
        key_of(k, sizeof k, prefix, i);
        kv_status st = kv_put(db, k, strlen(k), k, strlen(k));
        if (st != KV_OK) {
            *failed = st;
            return;
        }
        *acked = i + 1;
    }
}

Test(vfs_fault, failed_writes_are_reported_and_lose_nothing_acknowledged)
{
    char path[600];
    kvtest_path(path, sizeof path, "w.db");
    fault_vfs_install();
    kv_db *db = kvtest_open_db(path);
    int before = 0, during = 0;
    kv_status st;
    put_until_failure(db, "a", &before, &st);   /* disarmed: 10000 puts */
    cr_assert(eq(int, before, 10000));
    for (long after = 0; after < 40; after += 7) {
        fault_arm(FAULT_WRITE, after);
        during = 0;
        put_until_failure(db, "b", &during, &st);
        cr_assert(st != KV_OK, "armed after %ld writes: no put failed", after);
        cr_assert(g.failed > 0);
        const char *msg = kv_db_errmsg(db);
        cr_assert(strstr(msg, "I/O error") != NULL, "message: %s", msg);
        fault_disarm();
        /* the fault is gone: the same handle writes again */
        char k[32];
        key_of(k, sizeof k, "b", during);
        cr_assert(eq(int, kv_put(db, k, strlen(k), k, strlen(k)), KV_OK), "%s",
                  kv_db_errmsg(db));
    }
    kv_db_close(db);
    check_keys(path, "a", before);
    check_keys(path, "b", during + 1);
    kvtest_remove_dir_of(path);
}

/* ---- kv_batch (the writer's commits) with fsync failures ------------------- */

Test(vfs_fault, failed_fsync_of_a_batch_commit_is_reported_and_recovers)
{
    char path[600], err[256] = "";
    kvtest_path(path, sizeof path, "s.db");
    fault_vfs_install();
    kv_batch_opts bo;
    kv_batch_opts_default(&bo);
    bo.synchronous = 2;   /* FULL: every commit syncs the WAL */
    kv_batch *b = NULL;
    cr_assert(eq(int, kv_batch_open(path, &bo, &b, err, sizeof err), KV_OK), "%s", err);
    uint64_t seq = 0;
    int acked = 0;
    for (int round = 0; round < 20; round++) {
        if (round % 4 == 3) fault_arm(FAULT_SYNC, 0);   /* the commit's WAL sync */
        kv_status st = kv_batch_begin(b);
        for (int j = 0; st == KV_OK && j < 50; j++) {
            char k[32];
            key_of(k, sizeof k, "s", acked + j);
            st = kv_batch_put(b, k, strlen(k), k, strlen(k));
        }
        if (st == KV_OK) st = kv_batch_commit(b, seq + 1);
        if (round % 4 == 3) {
            cr_assert(st != KV_OK, "round %d: a commit whose fsync failed was acknowledged",
                      round);
            cr_assert(strstr(kv_batch_errmsg(b), "I/O error") != NULL, "%s",
                      kv_batch_errmsg(b));
            kv_batch_rollback(b);
            fault_disarm();
            continue;
        }
        cr_assert(eq(int, st, KV_OK), "round %d: %s", round, kv_batch_errmsg(b));
        acked += 50;
        seq++;
    }
    uint64_t last = 0;
    cr_assert(eq(int, kv_batch_last_seq(b, &last), KV_OK));
    cr_assert(last >= seq, "committed sequence %llu < acknowledged %llu",
              (unsigned long long)last, (unsigned long long)seq);
    kv_batch_close(b);
    check_keys(path, "s", acked);
    kvtest_remove_dir_of(path);
}
