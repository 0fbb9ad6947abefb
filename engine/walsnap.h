/*
 * walsnap.h - snapshots of SQLite's WAL-index header, the validation both
 * process-local read caches (readcache.c for kv_get, col_rcache.c for
 * columns) rest on. Engine-private (kvi_ prefix), not installed.
 *
 * The WAL-index header is a documented file format
 * (https://www.sqlite.org/walformat.html, "The WAL-Index Header"): region 0
 * of the wal-index (the -shm file every connection maps shared) starts with
 * two copies of the 48-byte WalIndexHdr (iVersion, unused, iChange, isInit,
 * bigEndCksum, szPage, mxFrame, nPage, aFrameCksum[2], aSalt[2], aCksum[2]),
 * followed at byte 96 by the WalCkptInfo (nBackfill first). We read these
 * bytes by that layout, never through SQLite's private C structures.
 *
 * Thread safety: a kvi_walsnap belongs to one handle and is used by one
 * thread at a time (the handle's rule); the mapping it reads is written
 * concurrently by other connections, which the take protocol tolerates.
 */
#ifndef KVAULT_WALSNAP_H
#define KVAULT_WALSNAP_H

#include <stdint.h>
#include <string.h>
#include <sqlite3.h>

#include "kv_assert.h"

/** Size in bytes of one copy of SQLite's WAL-index header (WalIndexHdr). */
#define KVI_WALHDR_BYTES 48
/** Offset of WalIndexHdr.isInit. */
#define KVI_WALHDR_ISINIT_OFF 12

/** Outcome of kvi_walsnap_begin. */
typedef enum kvi_walsnap_state {
    KVI_WALSNAP_NONE = 0, /**< no usable snapshot (torn or uninitialised); tag forgotten */
    KVI_WALSNAP_SAME,     /**< the header equals the tag: nothing committed since */
    KVI_WALSNAP_NEW       /**< the header differs from the tag (or there was none); adopted */
} kvi_walsnap_state;

/** The header a handle's cached state was read under. */
typedef struct kvi_walsnap {
    const volatile uint8_t *shm;      /**< SQLite's mapping of wal-index region 0; NULL = off */
    uint8_t tag[KVI_WALHDR_BYTES];    /**< header the cached state belongs to */
    int tag_ok;                       /**< tag holds a header */
} kvi_walsnap;

/** 1 when connection `db` is in WAL journal mode with the normal locking
 *  mode, so that other connections of this or other processes read the
 *  file concurrently with it; 0 otherwise (rollback journal, ":memory:",
 *  exclusive locking, a failed query). Runs two PRAGMA queries. Call
 *  outside a transaction. */
int kvi_conn_wal_shared(sqlite3 *db);

/** Find SQLite's mapping of wal-index region 0 for connection `db` (runs
 *  one read so SQLite has mapped it). Uses only public interfaces:
 *  SQLITE_FCNTL_FILE_POINTER and the sqlite3_io_methods.xShmMap method
 *  (bExtend = 0) of the database file, so it reads the same shared mapping
 *  SQLite reads, valid until the connection closes; we never open the -shm
 *  ourselves (closing a descriptor would drop the POSIX locks SQLite holds
 *  on it). Needs WAL mode, normal locking mode, a file (not ":memory:"), a
 *  header with iVersion 3007000. Returns 1 when on; 0 leaves ws->shm NULL.
 *  Never an error. Call outside a transaction. */
int kvi_walsnap_open(kvi_walsnap *ws, sqlite3 *db);

/** 1 when kvi_walsnap_open found the header. */
static inline int kvi_walsnap_on(const kvi_walsnap *ws)
{
    return ws->shm != NULL;
}

/** Copy the header into out the way SQLite's readers do: copy 1, an acquire
 *  fence, copy 2; returns 1 if both copies are equal and isInit == 1 (out
 *  holds copy 1), 0 if torn by a concurrent writer or not initialised.
 *  Precondition: kvi_walsnap_on(ws). Inline: the read caches call it on
 *  every lookup. */
static inline int kvi_walsnap_take(const kvi_walsnap *ws, uint8_t out[KVI_WALHDR_BYTES])
{
    uint64_t a[6], b[6];
    KV_ASSERT(kvi_walsnap_on(ws));
    const volatile uint64_t *p = (const volatile uint64_t *)ws->shm;
    /* relaxed atomic loads: plain loads on x86-64/arm64, and no data race
     * for ThreadSanitizer when another connection of this process commits */
    for (int i = 0; i < 6; i++)
        a[i] = __atomic_load_n(&p[i], __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    for (int i = 0; i < 6; i++)
        b[i] = __atomic_load_n(&p[6 + i], __ATOMIC_RELAXED);
    if (memcmp(a, b, sizeof a) != 0)
        return 0;
    memcpy(out, a, KVI_WALHDR_BYTES);
    return out[KVI_WALHDR_ISINIT_OFF] == 1;
}

/** Take a snapshot (into out) at the start of an operation and compare it
 *  with the tag: SAME, NEW (the tag is now the snapshot: the caller drops
 *  what it cached under the old one), or NONE (the tag is forgotten, so
 *  the next usable snapshot is NEW; the caller neither looks up nor
 *  fills). Precondition: kvi_walsnap_on(ws). */
static inline kvi_walsnap_state kvi_walsnap_begin(kvi_walsnap *ws, uint8_t out[KVI_WALHDR_BYTES])
{
    if (!kvi_walsnap_take(ws, out)) {
        ws->tag_ok = 0; /* unknown state: whatever was filed under the tag is suspect */
        return KVI_WALSNAP_NONE;
    }
    if (ws->tag_ok && memcmp(out, ws->tag, KVI_WALHDR_BYTES) == 0)
        return KVI_WALSNAP_SAME;
    memcpy(ws->tag, out, KVI_WALHDR_BYTES);
    ws->tag_ok = 1;
    return KVI_WALSNAP_NEW;
}

/** 1 when `snap` (from kvi_walsnap_begin) is still the tag. */
static inline int kvi_walsnap_is_tag(const kvi_walsnap *ws, const uint8_t snap[KVI_WALHDR_BYTES])
{
    return ws->tag_ok && memcmp(snap, ws->tag, KVI_WALHDR_BYTES) == 0;
}

/** 1 when the header in shared memory still equals the tag (no commit
 *  since the tag was adopted). 0 when off, no tag, or torn. */
int kvi_walsnap_unchanged(const kvi_walsnap *ws);

/** Forget the tag (the next kvi_walsnap_begin reports NEW). */
static inline void kvi_walsnap_forget(kvi_walsnap *ws)
{
    ws->tag_ok = 0;
}

/** Current WalIndexHdr.mxFrame (last valid frame of the WAL) and
 *  WalCkptInfo.nBackfill (frames already copied into the database) as
 *  single loads, without the two-copy check: an estimate, exact only while
 *  the caller holds the write lock and no checkpoint runs. Both 0 when off. */
void kvi_walsnap_frames(const kvi_walsnap *ws, uint32_t *mx_frame, uint32_t *n_backfill);

#endif /* KVAULT_WALSNAP_H */
