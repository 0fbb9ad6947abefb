/*
 * kvshm/ring.h -- the submission ring: one client (producer) hands write
 * records to the writer (consumer) through a memfd the client creates and
 * passes over the writer's unix socket (SCM_RIGHTS). Single producer, single
 * consumer, variable-length records, futex words on which either side can
 * sleep and be woken (DESIGN.md, "Write path").
 *
 * The memfd holds a 256-byte header (magic, capacity, and the producer's
 * tail, the consumer's head and committed positions, each with a futex word,
 * on cache lines of their own; drawn in shm/layout.h, private to shm/) and
 * then the data.
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

typedef struct kvshm_ring kvshm_ring;

/*
 * kvshm_ring_create: create a ring of capacity_bytes (power of two, 4 KiB ..
 * 1 GiB) in a new memfd (MFD_CLOEXEC, reserved with posix_fallocate), mapped
 * read-write. Producer (client) only. Pass kvshm_ring_fd() to the writer.
 * Returns KVSHM_OK, KVSHM_E_INVAL, KVSHM_E_FULL, KVSHM_E_SYS, KVSHM_E_NOMEM.
 */
kvshm_status kvshm_ring_create(uint32_t capacity_bytes, kvshm_ring **out);
/*
 * kvshm_ring_map: map a ring received from a client (the fd is dup'ed; the
 * caller keeps its own). Checks magic, layout hash and that the capacity
 * matches the file size. Consumer (writer) only.
 * Returns KVSHM_OK, KVSHM_E_MAGIC, KVSHM_E_LAYOUT, KVSHM_E_SIZE, KVSHM_E_SYS.
 */
kvshm_status kvshm_ring_map(int fd, kvshm_ring **out);
/* Unmap and close. Either side, for its own handle. */
void kvshm_ring_close(kvshm_ring *r);
/* The memfd (owned by the handle). Either side. */
int kvshm_ring_fd(const kvshm_ring *r);
uint32_t kvshm_ring_capacity(const kvshm_ring *r);

/*
 * kvshm_ring_reserve: room for a record of len payload bytes; *payload points
 * into the ring. Nothing is visible to the consumer until
 * kvshm_ring_publish. Producer only. timeout_ms: 0 fails at once with
 * KVSHM_E_FULL, > 0 sleeps on head_seq up to that long (KVSHM_TIMEOUT),
 * < 0 waits forever. Returns KVSHM_OK, KVSHM_E_INVAL (len > capacity / 2 - 8),
 * KVSHM_E_FULL, KVSHM_TIMEOUT.
 */
kvshm_status kvshm_ring_reserve(kvshm_ring *r, uint32_t len, void **payload,
                                int timeout_ms);
/*
 * kvshm_ring_publish: publish the reserved record with this type (any value
 * but KVSHM_RING_PAD): release-stores the tail, then wakes the consumer if
 * it sleeps. Returns the ring position just past the record (use it with
 * kvshm_ring_wait_consumed / _wait_committed). Producer only.
 */
uint64_t kvshm_ring_publish(kvshm_ring *r, uint32_t type);
/* Reserve + copy + publish. Producer only. Statuses as kvshm_ring_reserve. */
kvshm_status kvshm_ring_push(kvshm_ring *r, uint32_t type, const void *data,
                             uint32_t len, int timeout_ms, uint64_t *pos);

/*
 * kvshm_ring_peek: the oldest unconsumed record (acquire load of the tail);
 * *payload stays valid until kvshm_ring_consume. Pad records are skipped.
 * Consumer only. Returns KVSHM_OK, KVSHM_EMPTY, KVSHM_E_CORRUPT (lengths
 * out of bounds: drop this client).
 */
kvshm_status kvshm_ring_peek(kvshm_ring *r, uint32_t *type, const void **payload,
                             uint32_t *len);
/* Release the peeked record (release store of head; wakes a waiting
 * producer). Returns the new head position. Consumer only. */
uint64_t kvshm_ring_consume(kvshm_ring *r);
/* Sleep until data is published (or timeout). Consumer only.
 * Returns KVSHM_OK or KVSHM_TIMEOUT. */
kvshm_status kvshm_ring_wait_data(kvshm_ring *r, int timeout_ms);
/* Ring position up to which records are consumed (acquire load of the
 * head; a free-running byte count, 0 for a new ring). A ring handed over
 * again after a writer restart keeps its head: everything before it was
 * applied by the previous writer. Consumer only. */
uint64_t kvshm_ring_head(const kvshm_ring *r);
/* Mark every record before pos as committed (release) and wake a producer
 * waiting for it. Consumer only. */
void kvshm_ring_set_committed(kvshm_ring *r, uint64_t pos);
/* Producer: wait until the consumer has consumed (applied) / committed every
 * record before pos. Returns KVSHM_OK or KVSHM_TIMEOUT. */
kvshm_status kvshm_ring_wait_consumed(kvshm_ring *r, uint64_t pos, int timeout_ms);
kvshm_status kvshm_ring_wait_committed(kvshm_ring *r, uint64_t pos, int timeout_ms);

#endif /* KVSHM_RING_H */
