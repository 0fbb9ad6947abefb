/*
 * ring.c -- the submission ring (ring.h): SPSC, variable-length records in a
 * client-created memfd; either side spins, then sleeps on a futex.
 *
 * Wake-up protocol (no lost wake-up, and no wake-up that is not needed).
 * Each sleep has a futex word bumped by the other side (tail_seq: the
 * consumer sleeps for data; head_seq: the producer sleeps for the head to
 * reach a position, for consumption or for space; commit_seq: it sleeps for
 * the committed position), a "sleeping" flag and, for the producer's waits,
 * the position it waits for (head_want, commit_want).
 *
 *   sleeper:  seq = load(word); if ready: done
 *             store want; store-release sleeping = 1; seq_cst fence
 *             if ready: sleeping = 0, done
 *             FUTEX_WAIT(word, seq); sleeping = 0; repeat
 *   waker:    store-release the position (tail / head / committed)
 *             seq_cst fence; if load-acquire(sleeping) and the position
 *             reached want: word += 1; FUTEX_WAKE(word)
 *
 * By the two seq_cst fences, either the sleeper's re-check sees the new
 * position, or the waker sees sleeping = 1 and, through the release/acquire
 * pair on the flag, the want stored before it (or a later one, whose own
 * wait re-checks in the same way); FUTEX_WAIT returns at once if the word
 * moved after the sleeper read it. A flag or want left over from an
 * earlier wait costs at most one spurious wake-up.
 *
 * The consumer's position is split in two: kvshm_ring_consume moves a
 * private head (no store to shared memory), kvshm_ring_release publishes it
 * and wakes the producer only if it sleeps for a position now reached. So a
 * batch of records costs the consumer one shared store and at most one
 * wake-up, and the producer is never woken for less than it waits for.
 *
 * Before sleeping, a wait spins (spinwait.h) with the handle's per-site
 * budget and, when a reader is set (kvshm_ring_set_spin), under the
 * free-core rule of its slot file.
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

#include "internal.h"
#include "kvshm/ring.h"
#include "layout.h"
#include "spinwait.h"

/* Seals of a ring's memfd: its size is fixed for good. */
#define RING_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

struct kvshm_ring {
    int fd;
    uint8_t *base;
    size_t bytes;
    struct kvshm_ring_hdr *h;
    uint8_t *data;
    uint32_t cap, mask;
    uint64_t res_pos;     /* producer: reserved record start (after padding) */
    uint32_t res_len;     /* producer: reserved payload length */
    uint64_t head;        /* consumer: private head, records before it consumed */
    uint64_t pub_head;    /* consumer: head as last released */
    uint64_t peek_next;   /* consumer: head after the peeked record */
    kvshm_reader *rd;     /* spin accounting (kvshm_ring_set_spin), or NULL */
    kvshm_spin sp_head;   /* producer waits for consumption */
    kvshm_spin sp_space;  /* producer waits for space */
    kvshm_spin sp_commit; /* producer waits for the committed position */
    kvshm_spin sp_data;   /* consumer waits for data */
    kvshm_ring_counts cnt;
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

/* Waker side: bump the futex word and wake its sleeper. Precondition: the
 * caller stored its position, fenced, and saw the sleeper's flag. */
static void wake(kvshm_ring *r, uint32_t *seqw)
{
    kv_atomic_fetch_add_acq_rel32(seqw, 1);
    futex(seqw, FUTEX_WAKE, INT_MAX, NULL);
    r->cnt.wakes++;
}

/* What a wait waits for: *posw (a position word) reaching pos, or, with
 * posw == NULL, data past the consumer's private head. */
typedef struct wait_cond {
    kvshm_ring *r;
    const uint64_t *posw;
    uint64_t pos;
} wait_cond;

static int cond_ready(void *ctx)
{
    const wait_cond *c = ctx;
    if (!c->posw) return kv_atomic_load_acquire64(&c->r->h->rh_tail) != c->r->head;
    return (int64_t)(kv_atomic_load_acquire64(c->posw) - c->pos) >= 0;
}

/*
 * Spin on c with site's budget, then sleep on seqw (protocol at the top).
 * want (may be NULL) receives c->pos before the flag is raised.
 * timeout_ms: 0 checks once, < 0 waits forever. Returns KVSHM_OK or
 * KVSHM_TIMEOUT.
 */
static kvshm_status wait_on(kvshm_ring *r, kvshm_spin *site, uint32_t *seqw,
                            uint32_t *sleeping, uint64_t *want, wait_cond *c, int timeout_ms)
{
    if (cond_ready(c)) return KVSHM_OK;
    if (timeout_ms == 0) return KVSHM_TIMEOUT;
    uint64_t deadline = timeout_ms > 0 ? mono_ms() + (uint64_t)timeout_ms : 0;
    kvshm_spin_gate gate, *g = NULL;
    if (r->rd) { kvshmi_reader_gate(r->rd, &gate); g = &gate; }
    uint64_t spins = site->spins;
    int hit = kvshm_spin_until(site, g, cond_ready, c);
    r->cnt.spins += site->spins - spins;
    if (hit) { r->cnt.spin_hits++; return KVSHM_OK; }
    for (;;) {
        uint32_t seq = kv_atomic_load_acquire32(seqw);
        if (cond_ready(c)) return KVSHM_OK;
        if (want) kv_atomic_store_relaxed64(want, c->pos);
        kv_atomic_store_release32(sleeping, 1);
        kv_atomic_fence_seq_cst();
        if (cond_ready(c)) { kv_atomic_store_relaxed32(sleeping, 0); return KVSHM_OK; }
        struct timespec ts, *tsp = NULL;
        if (timeout_ms > 0) {
            uint64_t now = mono_ms();
            if (now >= deadline) { kv_atomic_store_relaxed32(sleeping, 0); return KVSHM_TIMEOUT; }
            uint64_t left = deadline - now;
            ts.tv_sec = (time_t)(left / 1000);
            ts.tv_nsec = (long)(left % 1000) * 1000000L;
            tsp = &ts;
        }
        r->cnt.sleeps++;
        futex(seqw, FUTEX_WAIT, seq, tsp);
        kv_atomic_store_relaxed32(sleeping, 0);
    }
}

/* Waker side of the protocol for a position word just stored: wake the
 * sleeper if it sleeps for a position <= pos. */
static void notify_at(kvshm_ring *r, uint64_t pos, uint32_t *seqw, const uint32_t *sleeping,
                      const uint64_t *want)
{
    kv_atomic_fence_seq_cst();
    if (kv_atomic_load_acquire32(sleeping) &&
        (int64_t)(pos - kv_atomic_load_relaxed64(want)) >= 0)
        wake(r, seqw);
}

static uint64_t ring_hash(void)
{
    return kvshm_layout_hash() ^
           ((uint64_t)sizeof(struct kvshm_ring_hdr) * 0x9e3779b97f4a7c15u) ^
           ((uint64_t)offsetof(struct kvshm_ring_hdr, rh_head_want) << 32) ^
           (uint64_t)offsetof(struct kvshm_ring_hdr, rh_head);
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
    kvshm_ring_set_spin(r, NULL, KVSHM_RING_SPIN_DEFAULT);
    *out = r;
    return KVSHM_OK;
}

kvshm_status kvshm_ring_create(uint32_t cap, kvshm_ring **out)
{
    if (cap < 4096 || cap > (UINT32_C(1) << 30) || (cap & (cap - 1))) return KVSHM_E_INVAL;
    int fd = memfd_create("kvshm-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return KVSHM_E_SYS;
    kvshm_status st = KVSHM_E_SYS;
    if (ftruncate(fd, (off_t)(KVSHM_RING_HDR + cap)) != 0) goto fail;
    int rc = posix_fallocate(fd, 0, (off_t)(KVSHM_RING_HDR + cap));
    if (rc) { st = rc == ENOSPC ? KVSHM_E_FULL : KVSHM_E_SYS; goto fail; }
    if (fcntl(fd, F_ADD_SEALS, RING_SEALS) != 0) goto fail;
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
    /* The size is sealed: a client cannot shrink the file under the
     * consumer's mapping (a later access would raise SIGBUS in the writer). */
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0 || (seals & RING_SEALS) != RING_SEALS) return KVSHM_E_SIZE;
    struct stat sb;
    if (fstat(fd, &sb) != 0) return KVSHM_E_SYS;
    if ((uint64_t)sb.st_size < KVSHM_RING_HDR + 4096) return KVSHM_E_SIZE;
    int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dfd < 0) return KVSHM_E_SYS;
    uint64_t cap = (uint64_t)sb.st_size - KVSHM_RING_HDR;
    if (cap > (UINT64_C(1) << 30) || (cap & (cap - 1))) { close(dfd); return KVSHM_E_SIZE; }
    kvshm_status st = ring_wrap(dfd, (uint32_t)cap, out);
    if (st) { close(dfd); return st; }
    kvshm_ring *r = *out;
    struct kvshm_ring_hdr *h = r->h;
    st = KVSHM_OK;
    if (kv_atomic_load_acquire64(&h->rh_magic) != KVSHM_MAGIC_RING) st = KVSHM_E_MAGIC;
    else if (h->rh_layout_hash != ring_hash()) st = KVSHM_E_LAYOUT;
    else if (h->rh_capacity != cap) st = KVSHM_E_SIZE;
    if (st) { kvshm_ring_close(r); *out = NULL; return st; }
    /* a ring handed over again continues where the last consumer released */
    r->head = r->pub_head = r->peek_next = kv_atomic_load_acquire64(&h->rh_head);
    return KVSHM_OK;
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

void kvshm_ring_set_spin(kvshm_ring *r, kvshm_reader *rd, uint32_t cap_ns)
{
    if (cap_ns == KVSHM_RING_SPIN_DEFAULT) cap_ns = KVSHM_SPIN_CLIENT_NS;
    r->rd = rd;
    kvshm_spin_init(&r->sp_head, cap_ns);
    kvshm_spin_init(&r->sp_space, cap_ns);
    kvshm_spin_init(&r->sp_commit, cap_ns);
    kvshm_spin_init(&r->sp_data, cap_ns);
}

void kvshm_ring_stats(const kvshm_ring *r, kvshm_ring_counts *out) { *out = r->cnt; }

/* ---- producer ----------------------------------------------------------------- */

kvshm_status kvshm_ring_reserve(kvshm_ring *r, uint32_t len, void **payload, int timeout_ms)
{
    if ((uint64_t)len + REC_HDR > r->cap / 2) return KVSHM_E_INVAL;
    uint64_t tail = r->h->rh_tail;   /* ours */
    uint64_t rec = ALIGN8(REC_HDR + len);
    uint64_t to_end = r->cap - (tail & r->mask);
    uint64_t need = rec <= to_end ? rec : to_end + rec;   /* pad to the end first */
    /* room for need bytes once the head reaches tail + need - capacity */
    wait_cond c = {.r = r, .posw = &r->h->rh_head, .pos = tail + need - r->cap};
    if (!cond_ready(&c)) {
        if (timeout_ms == 0) return KVSHM_E_FULL;
        kvshm_status st = wait_on(r, &r->sp_space, &r->h->rh_head_seq,
                                  &r->h->rh_producer_waiting, &r->h->rh_head_want, &c,
                                  timeout_ms);
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

uint64_t kvshm_ring_publish_quiet(kvshm_ring *r, uint32_t type)
{
    /* a reservation is pending: its record fits before the buffer's end */
    KV_ASSERT(type != KVSHM_RING_PAD && (uint64_t)r->res_len + REC_HDR <= r->cap / 2);
    KV_ASSERT_INTERNAL((r->res_pos & 7) == 0);
    uint32_t *rh = (uint32_t *)(r->data + (r->res_pos & r->mask));
    rh[0] = r->res_len;
    rh[1] = type;
    uint64_t end = r->res_pos + ALIGN8(REC_HDR + r->res_len);
    kv_atomic_store_release64(&r->h->rh_tail, end);
    return end;
}

void kvshm_ring_notify(kvshm_ring *r)
{
    kv_atomic_fence_seq_cst();
    if (kv_atomic_load_acquire32(&r->h->rh_consumer_waiting)) wake(r, &r->h->rh_tail_seq);
}

uint64_t kvshm_ring_publish(kvshm_ring *r, uint32_t type)
{
    uint64_t end = kvshm_ring_publish_quiet(r, type);
    kvshm_ring_notify(r);
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

kvshm_status kvshm_ring_wait_consumed(kvshm_ring *r, uint64_t pos, int timeout_ms)
{
    wait_cond c = {.r = r, .posw = &r->h->rh_head, .pos = pos};
    return wait_on(r, &r->sp_head, &r->h->rh_head_seq, &r->h->rh_producer_waiting,
                   &r->h->rh_head_want, &c, timeout_ms);
}

kvshm_status kvshm_ring_wait_committed(kvshm_ring *r, uint64_t pos, int timeout_ms)
{
    wait_cond c = {.r = r, .posw = &r->h->rh_committed, .pos = pos};
    return wait_on(r, &r->sp_commit, &r->h->rh_commit_seq, &r->h->rh_commit_waiting,
                   &r->h->rh_commit_want, &c, timeout_ms);
}

/* ---- consumer ----------------------------------------------------------------- */

kvshm_status kvshm_ring_peek(kvshm_ring *r, uint32_t *type, const void **payload,
                             uint32_t *len)
{
    for (;;) {
        uint64_t head = r->head;
        uint64_t tail = kv_atomic_load_acquire64(&r->h->rh_tail);
        if (tail == head) return KVSHM_EMPTY;
        if (tail - head > r->cap || (head & 7) || (tail & 7)) return KVSHM_E_CORRUPT;
        uint64_t to_end = r->cap - (head & r->mask);
        const uint32_t *rh = (const uint32_t *)(r->data + (head & r->mask));
        uint32_t l = rh[0], t = rh[1];
        uint64_t rec = ALIGN8(REC_HDR + (uint64_t)l);
        if (rec > to_end || rec > tail - head) return KVSHM_E_CORRUPT;
        if (t == KVSHM_RING_PAD) {
            r->head = head + rec;   /* released with the next record */
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
    if ((int64_t)(r->peek_next - r->head) > 0) r->head = r->peek_next;
    return r->head;
}

uint64_t kvshm_ring_release(kvshm_ring *r)
{
    uint64_t head = r->head;
    if (head == r->pub_head) return head;
    r->pub_head = head;
    kv_atomic_store_release64(&r->h->rh_head, head);
    notify_at(r, head, &r->h->rh_head_seq, &r->h->rh_producer_waiting, &r->h->rh_head_want);
    return head;
}

int kvshm_ring_has_data(const kvshm_ring *r)
{
    return kv_atomic_load_acquire64(&r->h->rh_tail) != r->head;
}

kvshm_status kvshm_ring_wait_data(kvshm_ring *r, int timeout_ms)
{
    kvshm_ring_release(r);   /* a producer may be waiting for space meanwhile */
    wait_cond c = {.r = r, .posw = NULL, .pos = 0};
    return wait_on(r, &r->sp_data, &r->h->rh_tail_seq, &r->h->rh_consumer_waiting, NULL, &c,
                   timeout_ms);
}

uint64_t kvshm_ring_head(const kvshm_ring *r)
{
    return kv_atomic_load_acquire64(&r->h->rh_head);
}

uint64_t kvshm_ring_committed(const kvshm_ring *r)
{
    return kv_atomic_load_acquire64(&r->h->rh_committed);
}

void kvshm_ring_set_write_consumed(kvshm_ring *r, uint64_t pos)
{
    kv_atomic_store_release64(&r->h->rh_write_consumed, pos);
}

uint64_t kvshm_ring_write_consumed(const kvshm_ring *r)
{
    return kv_atomic_load_acquire64(&r->h->rh_write_consumed);
}

void kvshm_ring_set_committed(kvshm_ring *r, uint64_t pos)
{
    kv_atomic_store_release64(&r->h->rh_committed, pos);
    notify_at(r, pos, &r->h->rh_commit_seq, &r->h->rh_commit_waiting, &r->h->rh_commit_want);
}
