/* test_walsnap.c - snapshots of SQLite's WAL-index header (engine/walsnap.c),
 * the validation under both read caches: on only in WAL mode with normal
 * locking on a file; a snapshot stays the same until some connection
 * commits, then differs; reads and checkpoints do not change it; forget
 * and the two-copy take; mxFrame / nBackfill. Real SQLite files. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <sqlite3.h>

#include "kvtest_util.h"
#include "walsnap.h"

static sqlite3 *open_db(const char *path, const char *pragmas)
{
    sqlite3 *db = NULL;
    cr_assert(eq(int, sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL),
                 SQLITE_OK));
    cr_assert(eq(int, sqlite3_exec(db, pragmas, NULL, NULL, NULL), SQLITE_OK), "%s",
              sqlite3_errmsg(db));
    return db;
}

static void exec_ok(sqlite3 *db, const char *sql)
{
    cr_assert(eq(int, sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK), "%s: %s", sql,
              sqlite3_errmsg(db));
}

/* Two WAL connections to one new file; t(x) exists in it. */
static void open_pair(sqlite3 **a, sqlite3 **b)
{
    char path[600];
    kvtest_path(path, sizeof path, "ws.db");
    *a = open_db(path, "PRAGMA journal_mode=WAL; CREATE TABLE t(x)");
    *b = open_db(path, "PRAGMA journal_mode=WAL");
}

Test(walsnap, on_only_for_wal_files_in_normal_locking_mode)
{
    char path[600];
    kvi_walsnap ws;
    sqlite3 *db = open_db(":memory:", "PRAGMA journal_mode=WAL");
    cr_expect(eq(int, kvi_walsnap_open(&ws, db), 0));
    cr_expect(not(kvi_walsnap_on(&ws)));
    sqlite3_close(db);

    db = open_db(kvtest_path(path, sizeof path, "del.db"), "PRAGMA journal_mode=DELETE");
    cr_expect(eq(int, kvi_walsnap_open(&ws, db), 0));
    sqlite3_close(db);

    db = open_db(kvtest_path(path, sizeof path, "excl.db"),
                 "PRAGMA journal_mode=WAL; PRAGMA locking_mode=EXCLUSIVE");
    cr_expect(eq(int, kvi_walsnap_open(&ws, db), 0));
    sqlite3_close(db);

    db = open_db(kvtest_path(path, sizeof path, "wal.db"), "PRAGMA journal_mode=WAL");
    cr_expect(eq(int, kvi_walsnap_open(&ws, db), 1));
    cr_expect(kvi_walsnap_on(&ws));
    cr_expect(not(ws.tag_ok));
    sqlite3_close(db);
}

Test(walsnap, changes_after_a_commit_by_another_connection_only)
{
    sqlite3 *a, *b;
    kvi_walsnap ws;
    uint8_t s1[KVI_WALHDR_BYTES], s2[KVI_WALHDR_BYTES];
    open_pair(&a, &b);
    cr_assert(eq(int, kvi_walsnap_open(&ws, a), 1));

    cr_expect(eq(int, kvi_walsnap_begin(&ws, s1), KVI_WALSNAP_NEW)); /* no tag yet */
    cr_expect(kvi_walsnap_is_tag(&ws, s1));
    cr_expect(eq(int, kvi_walsnap_begin(&ws, s2), KVI_WALSNAP_SAME));
    cr_expect(eq(u8[KVI_WALHDR_BYTES], s1, s2));

    /* reads, on either connection, change nothing */
    exec_ok(a, "SELECT count(*) FROM t");
    exec_ok(b, "SELECT count(*) FROM t");
    cr_expect(kvi_walsnap_unchanged(&ws));
    cr_expect(eq(int, kvi_walsnap_begin(&ws, s2), KVI_WALSNAP_SAME));

    /* a commit by the other connection changes the header */
    exec_ok(b, "INSERT INTO t VALUES (1)");
    cr_expect(not(kvi_walsnap_unchanged(&ws)));
    cr_expect(kvi_walsnap_is_tag(&ws, s1)); /* the tag moves only at begin */
    cr_expect(eq(int, kvi_walsnap_begin(&ws, s2), KVI_WALSNAP_NEW));
    cr_expect(not(kvi_walsnap_is_tag(&ws, s1)));
    cr_expect(kvi_walsnap_is_tag(&ws, s2));
    cr_expect(kvi_walsnap_unchanged(&ws));

    /* a rolled-back write commits nothing */
    exec_ok(b, "BEGIN IMMEDIATE; INSERT INTO t VALUES (2); ROLLBACK");
    cr_expect(eq(int, kvi_walsnap_begin(&ws, s1), KVI_WALSNAP_SAME));

    /* each further commit gives a header never seen before */
    exec_ok(a, "INSERT INTO t VALUES (3)");
    cr_expect(eq(int, kvi_walsnap_begin(&ws, s1), KVI_WALSNAP_NEW));
    cr_expect(not(eq(u8[KVI_WALHDR_BYTES], s1, s2)));
    sqlite3_close(b);
    sqlite3_close(a);
}

Test(walsnap, checkpoint_keeps_the_header_and_a_restart_changes_it)
{
    sqlite3 *a, *b;
    kvi_walsnap ws;
    uint8_t s[KVI_WALHDR_BYTES];
    uint32_t mx0, bf0, mx1, bf1;
    open_pair(&a, &b);
    cr_assert(eq(int, kvi_walsnap_open(&ws, a), 1));
    kvi_walsnap_frames(&ws, &mx0, &bf0);
    exec_ok(b, "INSERT INTO t VALUES (randomblob(100000))");
    kvi_walsnap_frames(&ws, &mx1, &bf1);
    cr_expect(gt(u32, mx1, mx0), "mxFrame grows with a commit");

    cr_expect(eq(int, kvi_walsnap_begin(&ws, s), KVI_WALSNAP_NEW));
    cr_assert(eq(int, sqlite3_wal_checkpoint_v2(b, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL),
                 SQLITE_OK));
    kvi_walsnap_frames(&ws, &mx0, &bf0);
    cr_expect(eq(u32, bf0, mx1), "a complete checkpoint backfills every frame");
    cr_expect(eq(int, kvi_walsnap_begin(&ws, s), KVI_WALSNAP_SAME));

    /* the next write restarts the WAL at frame 1: mxFrame drops, the salts change */
    exec_ok(b, "INSERT INTO t VALUES (1)");
    kvi_walsnap_frames(&ws, &mx0, &bf0);
    cr_expect(lt(u32, mx0, mx1));
    cr_expect(eq(int, kvi_walsnap_begin(&ws, s), KVI_WALSNAP_NEW));
    sqlite3_close(b);
    sqlite3_close(a);
}

Test(walsnap, forget_and_torn_copies)
{
    sqlite3 *a, *b;
    kvi_walsnap ws, fake;
    uint8_t s[KVI_WALHDR_BYTES], region[2 * KVI_WALHDR_BYTES] __attribute__((aligned(8)));
    open_pair(&a, &b);
    cr_assert(eq(int, kvi_walsnap_open(&ws, a), 1));
    cr_expect(eq(int, kvi_walsnap_begin(&ws, s), KVI_WALSNAP_NEW));
    kvi_walsnap_forget(&ws);
    cr_expect(not(kvi_walsnap_is_tag(&ws, s)));
    cr_expect(not(kvi_walsnap_unchanged(&ws)));
    cr_expect(eq(int, kvi_walsnap_begin(&ws, s), KVI_WALSNAP_NEW));

    /* a header whose two copies differ (a writer between them) or that is
     * not initialised is no snapshot, and forgets the tag */
    memcpy(region, (const uint8_t *)ws.shm, sizeof region);
    fake = ws;
    fake.shm = region;
    cr_expect(eq(int, kvi_walsnap_begin(&fake, s), KVI_WALSNAP_SAME));
    region[KVI_WALHDR_BYTES + 20] ^= 1;
    cr_expect(eq(int, kvi_walsnap_begin(&fake, s), KVI_WALSNAP_NONE));
    cr_expect(not(fake.tag_ok));
    region[KVI_WALHDR_BYTES + 20] ^= 1;
    region[KVI_WALHDR_ISINIT_OFF] = region[KVI_WALHDR_BYTES + KVI_WALHDR_ISINIT_OFF] = 0;
    cr_expect(eq(int, kvi_walsnap_take(&fake, s), 0));
    sqlite3_close(b);
    sqlite3_close(a);
}
