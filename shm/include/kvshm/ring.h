/*
 * kvshm/ring.h -- the submission ring: one client (producer) hands write
 * records to the writer (consumer) through a memfd the client creates and
 * passes over the writer's unix socket (SCM_RIGHTS). Single producer, single
 * consumer, variable-length records; either side waits by spinning
 * briefly, then sleeping on a futex word the other side bumps only when it
 * sleeps for what was just published (docs/shared-mode.md, "Write modes"; the
 * protocol is at the top of shm/ring.c).
 *
 * The memfd holds a 256-byte header (magic, capacity; the producer's tail,
 * the positions it sleeps for and its futex word; the consumer's head and
 * committed positions and their futex words: the producer's words and the
 * consumer's on cache lines of their own; drawn in shm/layout.h, private to
 * shm/) and then the data.
 *
 * Consumption is split: kvshm_ring_consume moves the consumer's private
 * head past the peeked record, kvshm_ring_release publishes it (one store,
 * at most one wake-up for a whole batch). Records consumed but not released
 * still occupy the ring and do not count as consumed for the producer.
 *
 * A record is {u32 len; u32 type} followed by len payload bytes, padded to
 * 8 bytes; a record never wraps: the producer fills the end of the buffer
 * with a KVSHM_RING_PAD record instead. Positions are free-running u64
 * counters indexed with `pos & (capacity - 1)` (liburing's scheme).
 *
 * Trust: the writer must treat ring contents as untrusted input. The
 * consumer functions bound-check every length against the capacity and the
 * published tail; payloads may still be changed by a misbehaving producer
 * while the writer reads them, so the writer copies what it applies.
 */
#ifndef KVSHM_RING_H
#define KVSHM_RING_H

#include <stddef.h>
#include <stdint.h>

#include "kvshm/kvshm.h"

#define KVSHM_RING_PAD 0xffffffffu /* record type of the filler at the buffer end */
/* kvshm_ring_set_spin's cap_ns for the default: 50 us, the client cap of
 * shm/spinwait.h */
#define KVSHM_RING_SPIN_DEFAULT 0xffffffffu

typedef struct kvshm_ring kvshm_ring;

/* Process-local counters of one handle (kvshm_ring_stats). */
typedef struct kvshm_ring_counts {
    uint64_t wakes;      /* FUTEX_WAKE calls this handle made (publish, release, commit) */
    uint64_t sleeps;     /* FUTEX_WAIT calls this handle made */
    uint64_t spins;      /* waits that spun before sleeping or succeeding */
    uint64_t spin_hits;  /* waits that ended while spinning */
} kvshm_ring_counts;

/*
 * kvshm_ring_create: create a ring of capacity_bytes (power of two, 4 KiB ..
 * 1 GiB) in a new memfd (MFD_CLOEXEC, reserved with posix_fallocate, its
 * size sealed: F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), mapped read-write. Producer (client) only. Pass kvshm_ring_fd() to the writer.
 * Returns KVSHM_OK, KVSHM_E_INVAL, KVSHM_E_FULL, KVSHM_E_SYS, KVSHM_E_NOMEM.
 */
kvshm_status kvshm_ring_create(uint32_t capacity_bytes, kvshm_ring **out);
/*
 * kvshm_ring_map: map a ring received from a client (the fd is dup'ed; the
 * caller keeps its own). Checks the size seals (a ring whose file could shrink
 * under the mapping is refused: KVSHM_E_SIZE), magic, layout hash and that
 * the capacity matches the file size. Consumer (writer) only.
 * Returns KVSHM_OK, KVSHM_E_MAGIC, KVSHM_E_LAYOUT, KVSHM_E_SIZE, KVSHM_E_SYS.
 */
kvshm_status kvshm_ring_map(int fd, kvshm_ring **out);
/* Unmap and close. Either side, for its own handle. */
void kvshm_ring_close(kvshm_ring *r);
/* The memfd (owned by the handle). Either side. */
int kvshm_ring_fd(const kvshm_ring *r);
uint32_t kvshm_ring_capacity(const kvshm_ring *r);

/*
 * kvshm_ring_set_spin: how this handle's waits spin before they sleep.
 * cap_ns bounds the spin of one wait in nanoseconds (0: never spin;
 * KVSHM_RING_SPIN_DEFAULT: 50 us, the default of a new handle); each wait
 * site (consumption, space, commit, data) adapts its own budget below it
 * and starts again at the cap after this call. rd (may be NULL) is the
 * attached reader whose slot file counts spinners: with it the waits obey
 * the free-core rule of shm/spinwait.h (they spin only if the writer and
 * the other spinners leave a usable CPU free); without it only the usable
 * CPU count limits them (one CPU: never spin). rd is borrowed: it must
 * stay attached while set; set NULL before kvshm_reader_detach. Either
 * side, for its own handle, between waits.
 */
void kvshm_ring_set_spin(kvshm_ring *r, kvshm_reader *rd, uint32_t cap_ns);
/* This handle's counters (process-local, for tests and diagnostics).
 * Either side, for its own handle. */
void kvshm_ring_stats(const kvshm_ring *r, kvshm_ring_counts *out);

/*
 * kvshm_ring_reserve: room for a record of len payload bytes; *payload points
 * into the ring. Nothing is visible to the consumer until
 * kvshm_ring_publish. Producer only. timeout_ms: 0 fails at once with
 * KVSHM_E_FULL, > 0 spins then sleeps up to that long for the consumer to
 * release the head position that frees the room (KVSHM_TIMEOUT), < 0 waits
 * forever. Returns KVSHM_OK, KVSHM_E_INVAL (len > capacity / 2 - 8),
 * KVSHM_E_FULL, KVSHM_TIMEOUT.
 */
kvshm_status kvshm_ring_reserve(kvshm_ring *r, uint32_t len, void **payload,
                                int timeout_ms);
/*
 * kvshm_ring_publish: publish the reserved record with this type (any value
 * but KVSHM_RING_PAD): release-stores the tail, then (seq_cst fence) wakes
 * the consumer only if it sleeps in kvshm_ring_wait_data: no system call
 * otherwise. Returns the ring position just past the record (use it with
 * kvshm_ring_wait_consumed / _wait_committed). Producer only.
 */
uint64_t kvshm_ring_publish(kvshm_ring *r, uint32_t type);
/* kvshm_ring_publish without the wake-up check: for a batch, publish each
 * record quietly and call kvshm_ring_notify once after the last. A
 * consumer sleeping in kvshm_ring_wait_data is not woken until then.
 * Producer only. */
uint64_t kvshm_ring_publish_quiet(kvshm_ring *r, uint32_t type);
/* Wake the consumer if it sleeps in kvshm_ring_wait_data (seq_cst fence,
 * then one load; FUTEX_WAKE only if it sleeps). Producer only. */
void kvshm_ring_notify(kvshm_ring *r);
/* Reserve + copy + publish. Producer only. Statuses as kvshm_ring_reserve. */
kvshm_status kvshm_ring_push(kvshm_ring *r, uint32_t type, const void *data,
                             uint32_t len, int timeout_ms, uint64_t *pos);

/*
 * kvshm_ring_peek: the oldest record past the private head (acquire load
 * of the tail); *payload stays valid until the next kvshm_ring_release.
 * Pad records are skipped. Consumer only. Returns KVSHM_OK, KVSHM_EMPTY,
 * KVSHM_E_CORRUPT (lengths out of bounds: drop this client).
 */
kvshm_status kvshm_ring_peek(kvshm_ring *r, uint32_t *type, const void **payload,
                             uint32_t *len);
/* Move the private head past the peeked record: no store to shared memory,
 * the producer sees nothing until kvshm_ring_release. Returns the private
 * head (the position just past the record). Consumer only. */
uint64_t kvshm_ring_consume(kvshm_ring *r);
/* Publish the private head (release store, if it moved) and wake the
 * producer only if it sleeps for a position the head now reached (seq_cst
 * fence, then its flag and wanted position). Returns the released head.
 * Consumer only. */
uint64_t kvshm_ring_release(kvshm_ring *r);
/* 1 if records are published past the private head (one acquire load; no
 * fence). Consumer only. */
int kvshm_ring_has_data(const kvshm_ring *r);
/* Release (kvshm_ring_release), then spin and sleep until data is
 * published past the private head (or timeout). Consumer only.
 * Returns KVSHM_OK or KVSHM_TIMEOUT. */
kvshm_status kvshm_ring_wait_data(kvshm_ring *r, int timeout_ms);
/* Ring position up to which records are consumed and released (acquire
 * load of the shared head; a free-running byte count, 0 for a new ring). A
 * ring handed over again after a writer restart keeps its head: everything
 * before it was applied by the previous writer, and a new mapping's private
 * head starts there. Either side. */
uint64_t kvshm_ring_head(const kvshm_ring *r);
/* Ring position up to which records are marked committed (acquire load;
 * kvshm_ring_set_committed). Either side. */
uint64_t kvshm_ring_committed(const kvshm_ring *r);
/* The consumer's note of the end of the last write record (PUT/DEL) it
 * consumed, stored (release) before kvshm_ring_release publishes a head past
 * it, so that a later consumer of a handed-over ring can tell whether writes
 * were consumed and not committed (kvshm_ring_write_consumed above
 * kvshm_ring_committed) from reads and barriers that were. Consumer only /
 * either side. 0 for a new ring. */
void kvshm_ring_set_write_consumed(kvshm_ring *r, uint64_t pos);
uint64_t kvshm_ring_write_consumed(const kvshm_ring *r);
/* Mark every record before pos as committed (release store) and wake the
 * producer only if it sleeps for a committed position <= pos. Consumer
 * only. */
void kvshm_ring_set_committed(kvshm_ring *r, uint64_t pos);
/* Producer: wait until the consumer has released (applied) / committed
 * every record before pos: spin (kvshm_ring_set_spin), then sleep with pos
 * stored as the position to be woken for. timeout_ms: 0 checks once, < 0
 * waits forever. Returns KVSHM_OK or KVSHM_TIMEOUT. */
kvshm_status kvshm_ring_wait_consumed(kvshm_ring *r, uint64_t pos, int timeout_ms);
kvshm_status kvshm_ring_wait_committed(kvshm_ring *r, uint64_t pos, int timeout_ms);

#endif /* KVSHM_RING_H */
