/*
 * walsnap.c - snapshots of SQLite's WAL-index header (walsnap.h describes
 * the layout; https://www.sqlite.org/walformat.html is the specification).
 *
 * Why a snapshot validates a cache. Let H(t) be the header in shared memory
 * at time t.
 *  1. Every commit changes the header: it appends at least one frame, so
 *     mxFrame grows (and aFrameCksum/iChange change); a WAL restart after a
 *     checkpoint resets mxFrame but increments salt-1 and randomises
 *     salt-2. Within the life of a connection (which holds the -shm's
 *     shared DMS lock, so no other process can re-initialise the
 *     wal-index) a header value never repeats after a commit, so
 *     H(t1) == H(t2) means no transaction committed in between. A
 *     checkpoint without restart copies frames into the database file and
 *     changes no content a reader can see.
 *  2. An operation takes its snapshot S = H(t0) *before* it asks SQLite.
 *     SQLite's read transaction starts after t0 and reads the header itself
 *     (under its own barrier and read lock), so whatever it returns is from
 *     a state at least as new as S; the caller files it under S.
 *  3. A later operation takes H(t1) and may use what was filed under S
 *     only if H(t1) == S: by (1) nothing committed between t0 and t1.
 * Not covered (documented limits): processes that write the file without
 * SQLite's WAL protocol (e.g. copying a file over it), and a 2^32-restart
 * wrap of salt-1 combined with an equal random salt-2, mxFrame and frame
 * checksum.
 *
 * Cost of a take: twelve 8-byte loads, an acquire fence, one 48-byte
 * compare.
 */
#include "walsnap.h"

#define WALINDEX_PGSZ 32768    /* size of a wal-index region */
#define WAL_VERSION 3007000u   /* WalIndexHdr.iVersion */
#define HDR_MXFRAME_OFF 16     /* offset of mxFrame in WalIndexHdr */
#define CKPT_BACKFILL_OFF 96   /* offset of WalCkptInfo.nBackfill in region 0 */

/* Text of a one-row, one-column statement, lower-cased into buf ("" when
 * it fails). */
static void pragma_text(sqlite3 *db, const char *sql, char *buf, size_t n)
{
    sqlite3_stmt *s = NULL;
    buf[0] = '\0';
    if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(s, 0);
        size_t i = 0;
        for (; t && t[i] && i + 1 < n; i++)
            buf[i] = (char)(t[i] >= 'A' && t[i] <= 'Z' ? t[i] + 32 : t[i]);
        buf[i] = '\0';
    }
    sqlite3_finalize(s);
}

int kvi_conn_wal_shared(sqlite3 *db)
{
    char mode[32];
    pragma_text(db, "PRAGMA journal_mode", mode, sizeof mode);
    if (strcmp(mode, "wal") != 0)
        return 0;
    pragma_text(db, "PRAGMA locking_mode", mode, sizeof mode);
    return strcmp(mode, "normal") == 0;
}

int kvi_walsnap_open(kvi_walsnap *ws, sqlite3 *db)
{
    sqlite3_file *f = NULL;
    void volatile *region = NULL;
    uint8_t snap[KVI_WALHDR_BYTES];
    uint32_t version;

    KV_ASSERT(ws && db);
    memset(ws, 0, sizeof *ws);
    if (!kvi_conn_wal_shared(db))
        return 0;
    /* a read, so that SQLite has opened and mapped the wal-index */
    if (sqlite3_exec(db, "SELECT 1 FROM sqlite_master LIMIT 1", NULL, NULL, NULL) != SQLITE_OK)
        return 0;
    /* sqlite3_file and sqlite3_io_methods are public (sqlite3.h, VFS) */
    if (sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &f) != SQLITE_OK || !f ||
        !f->pMethods || f->pMethods->iVersion < 2 || !f->pMethods->xShmMap)
        return 0;
    if (f->pMethods->xShmMap(f, 0, WALINDEX_PGSZ, 0, &region) != SQLITE_OK || !region)
        return 0;
    ws->shm = region;
    if (kvi_walsnap_take(ws, snap)) {
        memcpy(&version, snap, 4);
        if (version == WAL_VERSION)
            return 1;
    }
    ws->shm = NULL;
    return 0;
}

int kvi_walsnap_unchanged(const kvi_walsnap *ws)
{
    uint8_t snap[KVI_WALHDR_BYTES];
    return kvi_walsnap_on(ws) && ws->tag_ok && kvi_walsnap_take(ws, snap) &&
           memcmp(snap, ws->tag, KVI_WALHDR_BYTES) == 0;
}

void kvi_walsnap_frames(const kvi_walsnap *ws, uint32_t *mx_frame, uint32_t *n_backfill)
{
    *mx_frame = *n_backfill = 0;
    if (!kvi_walsnap_on(ws))
        return;
    *mx_frame = __atomic_load_n((const volatile uint32_t *)(ws->shm + HDR_MXFRAME_OFF),
                                __ATOMIC_RELAXED);
    *n_backfill = __atomic_load_n((const volatile uint32_t *)(ws->shm + CKPT_BACKFILL_OFF),
                                  __ATOMIC_RELAXED);
}
