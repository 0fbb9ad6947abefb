/*
 * ring.c -- the submission ring (ring.h): SPSC, variable-length records in a
 * client-created memfd, futex sleeps on both sides.
 *
 * Wake-up protocol (no lost wakeup): a side about to sleep reads the futex
 * word, sets its "waiting" flag, issues a seq_cst fence, re-checks its
 * condition and only then FUTEX_WAITs on the word it read. The other side
 * publishes (release store of tail/head/committed), issues a seq_cst fence,
 * and if it sees the flag, bumps the word and FUTEX_WAKEs. By the fences one
 * of the two sees the other's store; FUTEX_WAIT returns at once if the word
 * already moved.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "atomics.h"
#include "kv_assert.h"
#include "kvshm/ring.h"
#include "layout.h"

struct kvshm_ring {
    int fd;
    uint8_t *base;
    size_t bytes;
    struct kvshm_ring_hdr *h;
    uint8_t *data;
    uint32_t cap, mask;
    uint64_t res_pos;     /* producer: reserved record start (after padding) */
    uint32_t res_len;     /* producer: reserved payload length */
    uint64_t peek_next;   /* consumer: head after the peeked record */
};

#define REC_HDR 8u
#define ALIGN8(x) (((uint64_t)(x) + 7) & ~(uint64_t)7)

static long futex(uint32_t *w, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, w, op, val, ts, NULL, 0);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void notify(uint32_t *seqw, uint32_t *waiting)
{
    kv_atomic_fence_seq_cst();
    if (kv_atomic_load_relaxed32(waiting)) {
        kv_atomic_fetch_add_acq_rel32(seqw, 1);
        futex(seqw, FUTEX_WAKE, INT_MAX, NULL);
    }
}

typedef int (*ready_fn)(kvshm_ring *r, uint64_t arg);

static kvshm_status wait_on(kvshm_ring *r, uint32_t *seqw, uint32_t *waiting,
                            ready_fn ready, uint64_t arg, int timeout_ms)
{
    uint64_t deadline = timeout_ms >= 0 ? mono_ms() + (uint64_t)timeout_ms : 0;
    for (;;) {
        uint32_t seq = kv_atomic_load_acquire32(seqw);
        if (ready(r, arg)) return KVSHM_OK;
        if (timeout_ms == 0) return KVSHM_TIMEOUT;
        kv_atomic_store_relaxed32(waiting, 1);
        kv_atomic_fence_seq_cst();
        if (ready(r, arg)) { kv_atomic_store_relaxed32(waiting, 0); return KVSHM_OK; }
        struct timespec ts, *tsp = NULL;
        if (timeout_ms > 0) {
            uint64_t now = mono_ms();
            if (now >= deadline) { kv_atomic_store_relaxed32(waiting, 0); return KVSHM_TIMEOUT; }
            uint64_t left = deadline - now;
            ts.tv_sec = (time_t)(left / 1000);
            ts.tv_nsec = (long)(left % 1000) * 1000000L;
            tsp = &ts;
        }
        futex(seqw, FUTEX_WAIT, seq, tsp);
        kv_atomic_store_relaxed32(waiting, 0);
    }
}

static uint64_t ring_hash(void)
{
    return kvshm_layout_hash() ^ (uint64_t)sizeof(struct kvshm_ring_hdr) * 0x9e3779b97f4a7c15u;
}

static kvshm_status ring_wrap(int fd, uint32_t cap, kvshm_ring **out)
{
    size_t bytes = KVSHM_RING_HDR + (size_t)cap;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return KVSHM_E_SYS;
    kvshm_ring *r = calloc(1, sizeof *r);
    if (!r) { munmap(p, bytes); return KVSHM_E_NOMEM; }
    r->fd = fd;
    r->base = p;
    r->bytes = bytes;
    r->h = p;
    r->data = (uint8_t *)p + KVSHM_RING_HDR;
    r->cap = cap;
    r->mask = cap - 1;
    *out = r;
    return KVSHM_OK;
}

kvshm_status kvshm_ring_create(uint32_t cap, kvshm_ring **out)
{
    if (cap < 4096 || cap > (UINT32_C(1) << 30) || (cap & (cap - 1))) return KVSHM_E_INVAL;
    int fd = memfd_create("kvshm-ring", MFD_CLOEXEC);
    if (fd < 0) return KVSHM_E_SYS;
    kvshm_status st = KVSHM_E_SYS;
    if (ftruncate(fd, (off_t)(KVSHM_RING_HDR + cap)) != 0) goto fail;
    int rc = posix_fallocate(fd, 0, (off_t)(KVSHM_RING_HDR + cap));
    if (rc) { st = rc == ENOSPC ? KVSHM_E_FULL : KVSHM_E_SYS; goto fail; }
    if ((st = ring_wrap(fd, cap, out))) goto fail;
    struct kvshm_ring_hdr *h = (*out)->h;
    h->rh_layout_hash = ring_hash();
    h->rh_capacity = cap;
    kv_atomic_store_release64(&h->rh_magic, KVSHM_MAGIC_RING);
    return KVSHM_OK;
fail:
    close(fd);
    return st;
}

kvshm_status kvshm_ring_map(int fd, kvshm_ring **out)
{
    struct stat sb;
    if (fstat(fd, &sb) != 0) return KVSHM_E_SYS;
    if ((uint64_t)sb.st_size < KVSHM_RING_HDR + 4096) return KVSHM_E_SIZE;
    int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dfd < 0) return KVSHM_E_SYS;
    uint64_t cap = (uint64_t)sb.st_size - KVSHM_RING_HDR;
    if (cap > (UINT64_C(1) << 30) || (cap & (cap - 1))) { close(dfd); return KVSHM_E_SIZE; }
    kvshm_status st = ring_wrap(dfd, (uint32_t)cap, out);
    if (st) { close(dfd); return st; }
    struct kvshm_ring_hdr *h = (*out)->h;
    st = KVSHM_OK;
    if (kv_atomic_load_acquire64(&h->rh_magic) != KVSHM_MAGIC_RING) st = KVSHM_E_MAGIC;
    else if (h->rh_layout_hash != ring_hash()) st = KVSHM_E_LAYOUT;
    else if (h->rh_capacity != cap) st = KVSHM_E_SIZE;
    if (st) { kvshm_ring_close(*out); *out = NULL; }
    return st;
}

void kvshm_ring_close(kvshm_ring *r)
{
    if (!r) return;
    munmap(r->base, r->bytes);
    close(r->fd);
    free(r);
}

int kvshm_ring_fd(const kvshm_ring *r) { return r->fd; }
uint32_t kvshm_ring_capacity(const kvshm_ring *r) { return r->cap; }

/* ---- producer ----------------------------------------------------------------- */

static int has_space(kvshm_ring *r, uint64_t need)
{
    uint64_t head = kv_atomic_load_acquire64(&r->h->rh_head);
    uint64_t tail = r->h->rh_tail;   /* ours */
    return tail - head + need <= r->cap;
}

kvshm_status kvshm_ring_reserve(kvshm_ring *r, uint32_t len, void **payload, int timeout_ms)
{
    if ((uint64_t)len + REC_HDR > r->cap / 2) return KVSHM_E_INVAL;
    uint64_t tail = r->h->rh_tail;
    uint64_t rec = ALIGN8(REC_HDR + len);
    uint64_t to_end = r->cap - (tail & r->mask);
    uint64_t need = rec <= to_end ? rec : to_end + rec;   /* pad to the end first */
    if (!has_space(r, need)) {
        if (timeout_ms == 0) return KVSHM_E_FULL;
        kvshm_status st = wait_on(r, &r->h->rh_head_seq, &r->h->rh_producer_waiting,
                                  has_space, need, timeout_ms);
        if (st) return st;
    }
    if (rec > to_end) {
        /* Pad record to the end; published together with the real one. */
        uint32_t *ph = (uint32_t *)(r->data + (tail & r->mask));
        ph[0] = (uint32_t)(to_end - REC_HDR);
        ph[1] = KVSHM_RING_PAD;
        tail += to_end;
    }
    KV_ASSERT_INTERNAL((tail & 7) == 0 && rec <= r->cap - (tail & r->mask));
    r->res_pos = tail;
    r->res_len = len;
    *payload = r->data + (tail & r->mask) + REC_HDR;
    return KVSHM_OK;
}

uint64_t kvshm_ring_publish(kvshm_ring *r, uint32_t type)
{
    /* a reservation is pending: its record fits before the buffer's end */
    KV_ASSERT(type != KVSHM_RING_PAD && (uint64_t)r->res_len + REC_HDR <= r->cap / 2);
    KV_ASSERT_INTERNAL((r->res_pos & 7) == 0);
    uint32_t *rh = (uint32_t *)(r->data + (r->res_pos & r->mask));
    rh[0] = r->res_len;
    rh[1] = type;
    uint64_t end = r->res_pos + ALIGN8(REC_HDR + r->res_len);
    kv_atomic_store_release64(&r->h->rh_tail, end);
    notify(&r->h->rh_tail_seq, &r->h->rh_consumer_waiting);
    return end;
}

kvshm_status kvshm_ring_push(kvshm_ring *r, uint32_t type, const void *data,
                             uint32_t len, int timeout_ms, uint64_t *pos)
{
    if (type == KVSHM_RING_PAD) return KVSHM_E_INVAL;
    void *p;
    kvshm_status st = kvshm_ring_reserve(r, len, &p, timeout_ms);
    if (st) return st;
    if (len) memcpy(p, data, len);
    uint64_t end = kvshm_ring_publish(r, type);
    if (pos) *pos = end;
    return KVSHM_OK;
}

static int consumed_ready(kvshm_ring *r, uint64_t pos)
{ return (int64_t)(kv_atomic_load_acquire64(&r->h->rh_head) - pos) >= 0; }
static int committed_ready(kvshm_ring *r, uint64_t pos)
{ return (int64_t)(kv_atomic_load_acquire64(&r->h->rh_committed) - pos) >= 0; }

kvshm_status kvshm_ring_wait_consumed(kvshm_ring *r, uint64_t pos, int timeout_ms)
{
    return wait_on(r, &r->h->rh_head_seq, &r->h->rh_producer_waiting,
                   consumed_ready, pos, timeout_ms);
}

kvshm_status kvshm_ring_wait_committed(kvshm_ring *r, uint64_t pos, int timeout_ms)
{
    return wait_on(r, &r->h->rh_commit_seq, &r->h->rh_commit_waiting,
                   committed_ready, pos, timeout_ms);
}

/* ---- consumer ----------------------------------------------------------------- */

kvshm_status kvshm_ring_peek(kvshm_ring *r, uint32_t *type, const void **payload,
                             uint32_t *len)
{
    uint64_t head = r->h->rh_head;   /* ours */
    for (;;) {
        uint64_t tail = kv_atomic_load_acquire64(&r->h->rh_tail);
        if (tail == head) return KVSHM_EMPTY;
        if (tail - head > r->cap || (head & 7) || (tail & 7)) return KVSHM_E_CORRUPT;
        uint64_t to_end = r->cap - (head & r->mask);
        const uint32_t *rh = (const uint32_t *)(r->data + (head & r->mask));
        uint32_t l = rh[0], t = rh[1];
        uint64_t rec = ALIGN8(REC_HDR + (uint64_t)l);
        if (rec > to_end || rec > tail - head) return KVSHM_E_CORRUPT;
        if (t == KVSHM_RING_PAD) {
            head += rec;
            kv_atomic_store_release64(&r->h->rh_head, head);
            continue;
        }
        *type = t;
        *len = l;
        *payload = rh + 2;
        KV_ASSERT_INTERNAL(rec >= REC_HDR && (rec & 7) == 0);
        r->peek_next = head + rec;
        return KVSHM_OK;
    }
}

uint64_t kvshm_ring_consume(kvshm_ring *r)
{
    uint64_t head = r->peek_next;
    if ((int64_t)(head - r->h->rh_head) <= 0) return r->h->rh_head;
    kv_atomic_store_release64(&r->h->rh_head, head);
    notify(&r->h->rh_head_seq, &r->h->rh_producer_waiting);
    return head;
}

static int data_ready(kvshm_ring *r, uint64_t unused)
{
    (void)unused;
    return kv_atomic_load_acquire64(&r->h->rh_tail) != r->h->rh_head;
}

kvshm_status kvshm_ring_wait_data(kvshm_ring *r, int timeout_ms)
{
    return wait_on(r, &r->h->rh_tail_seq, &r->h->rh_consumer_waiting, data_ready, 0,
                   timeout_ms);
}

uint64_t kvshm_ring_head(const kvshm_ring *r)
{
    return kv_atomic_load_acquire64(&r->h->rh_head);
}

void kvshm_ring_set_committed(kvshm_ring *r, uint64_t pos)
{
    kv_atomic_store_release64(&r->h->rh_committed, pos);
    notify(&r->h->rh_commit_seq, &r->h->rh_commit_waiting);
}
