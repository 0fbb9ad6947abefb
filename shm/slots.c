/*
 * slots.c -- reader slots, epochs, dead-owner reaping and stalled-reader
 * eviction.
 *
 * The slot file (layout.h) has one 64-byte slot per attached process. A
 * process owns slot i while it holds an F_OFD_SETLK write lock on byte
 * KVSHM_SLOTS_OFF + 64 * i through its own open file description. The kernel
 * drops that lock when the last descriptor of the description closes -- at
 * the latest when the process dies -- so the writer learns of a dead owner by
 * probing the lock itself (a probe that succeeds means nobody holds it), never
 * by trusting pids.
 *
 * Epoch protocol (the reader side is kvshmi_enter/kvshmi_leave in
 * internal.h):
 *   reader: e = load(hdr.epoch); slot.epoch = e; ...lookups...;
 *           acquire fence; g = load(slot.gen); slot.epoch = 0 (release);
 *           g changed -> evicted, retry.
 *   writer: unlink objects and retire them tagged with the current epoch E;
 *           hdr.epoch = E + 1 (release); membarrier(GLOBAL_EXPEDITED);
 *           min = min(slot epochs != 0, E + 1); reuse objects tagged < min.
 * Why it is safe: a reader whose slot store is not yet visible when the
 * writer scans has, thanks to the membarrier, not yet loaded any shard view
 * either, so it will see only views published before the barrier, which
 * reach no object tagged before them. A reader that read epoch e loaded its
 * views after the writer's store of e, hence after every unlink tagged < e.
 *
 * Spinners: a client that spins in a wait counts itself in the header's
 * sh_spinners and marks its slot (sl_spinning); reaping a dead owner's
 * slot takes the count back (spinwait.h, kvshm_spin_reap).
 *
 * Eviction: when a shard's retired-but-pinned bytes exceed the configured
 * limit, the writer bumps the global epoch, then bumps the generation of each
 * slot holding the oldest epoch (release) and from then on ignores that
 * slot's epoch value. The reader notices at its leave, discards what it read,
 * and retries; its retry reads the bumped epoch, which the writer honours.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

unsigned kvshmi_fork_gen;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) { kvshmi_fork_gen++; }
static void install_atfork(void) { pthread_atfork(NULL, NULL, on_fork_child); }

unsigned kvshmi_fork_generation(void)
{
    pthread_once(&atfork_once, install_atfork);
    return kvshmi_fork_gen;
}

static uint64_t slot_lock_off(uint32_t i) { return KVSHM_SLOTS_OFF + (uint64_t)i * 64; }

static int ofd_lock(int fd, uint32_t i, short type)
{
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = (off_t)slot_lock_off(i);
    fl.l_len = 1;
    return fcntl(fd, F_OFD_SETLK, &fl);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- slot file ---------------------------------------------------------------- */

kvshm_status kvshmi_slots_create(kvshm_writer *w)
{
    uint64_t bytes = KVSHM_SLOTS_OFF + (uint64_t)w->cfg.nslots * sizeof(struct kvshm_slot);
    int fd = shm_open(w->slot_name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) { w->err_no = errno; return errno == EEXIST ? KVSHM_E_EXISTS : KVSHM_E_SYS; }
    kvshm_status st = KVSHM_E_SYS;
    if (kvshmi_set_access(fd, &w->cfg) != 0 || ftruncate(fd, (off_t)bytes) != 0) goto fail;
    int rc = posix_fallocate(fd, 0, (off_t)bytes);
    if (rc) { w->err_no = rc; st = rc == ENOSPC ? KVSHM_E_FULL : KVSHM_E_SYS; goto fail; }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) goto fail;
    w->slot_fd = fd;
    w->slot_base = p;
    w->slot_bytes = bytes;
    w->sh = p;
    w->slots = (struct kvshm_slot *)((uint8_t *)p + KVSHM_SLOTS_OFF);
    w->nslots = w->cfg.nslots;
    w->sh->sh_layout_hash = kvshmi_layout_hash();
    w->sh->sh_generation = w->cfg.generation;
    w->sh->sh_nslots = w->cfg.nslots;
    kvshm_spin_init(&w->idle_spin, KVSHM_SPIN_WRITER_NS);
    kv_atomic_store_release64(&w->sh->sh_magic, KVSHM_MAGIC_SLOTS);
    return KVSHM_OK;
fail:
    if (st == KVSHM_E_SYS) w->err_no = errno;
    close(fd);
    shm_unlink(w->slot_name);
    return st;
}

kvshm_status kvshmi_slots_open(kvshm_reader *r, const char *slot_name)
{
    r->slot_name = strdup(slot_name);
    if (!r->slot_name) return KVSHM_E_NOMEM;
    int fd = shm_open(slot_name, O_RDWR | O_CLOEXEC, 0);
    kvshm_status st;
    if (fd < 0) {
        r->err_no = errno;
        st = errno == ENOENT ? KVSHM_E_NOENT : KVSHM_E_SYS;
        goto fail;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || (uint64_t)sb.st_size < KVSHM_SLOTS_OFF) { st = KVSHM_E_SIZE; goto fail_fd; }
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { r->err_no = errno; st = KVSHM_E_SYS; goto fail_fd; }
    struct kvshm_slothdr *sh = p;
    st = KVSHM_OK;
    if (kv_atomic_load_acquire64(&sh->sh_magic) != KVSHM_MAGIC_SLOTS) st = KVSHM_E_MAGIC;
    else if (sh->sh_layout_hash != kvshmi_layout_hash()) st = KVSHM_E_LAYOUT;
    else if (sh->sh_generation != r->generation) st = KVSHM_E_GENERATION;
    else if (KVSHM_SLOTS_OFF + (uint64_t)sh->sh_nslots * 64 != (uint64_t)sb.st_size) st = KVSHM_E_SIZE;
    if (st) { munmap(p, (size_t)sb.st_size); goto fail_fd; }
    r->slot_base = p;
    r->slot_bytes = (uint64_t)sb.st_size;
    r->sh = sh;
    r->slot_fd = fd;
    return KVSHM_OK;
fail_fd:
    close(fd);
fail:
    free(r->slot_name);
    r->slot_name = NULL;
    return st;
}

void kvshmi_membarrier_register(kvshm_reader *r)
{
#ifdef __SANITIZE_THREAD__
    /* TSan cannot see membarrier's ordering; use explicit fences instead. */
    r->fenced = 1;
#else
    r->fenced = getenv("KVSHM_READER_FENCE") != NULL ||
                syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) != 0;
#endif
}

kvshm_status kvshmi_slot_claim(kvshm_reader *r)
{
    pthread_once(&atfork_once, install_atfork);
    uint32_t n = r->sh->sh_nslots;
    struct kvshm_slot *slots = (struct kvshm_slot *)(r->slot_base + KVSHM_SLOTS_OFF);
    for (uint32_t i = 0; i < n; i++) {
        if (ofd_lock(r->slot_fd, i, F_WRLCK) != 0) {
            if (errno == EAGAIN || errno == EACCES) continue;
            r->err_no = errno;
            return KVSHM_E_SYS;
        }
        /* The lock is ours: nobody else (not even the writer's reaper, which
         * probes the same lock) touches the slot's owner fields now. */
        struct kvshm_slot *sl = &slots[i];
        kvshm_spin_reap(&r->sh->sh_spinners, &sl->sl_spinning);   /* a dead owner's, unreaped */
        kv_atomic_store_release64(&sl->sl_epoch, 0);
        sl->sl_flags = r->fenced ? KVSHM_SLOT_FENCED : 0;
        sl->sl_attach_ns = now_ns();
        kv_atomic_store_release32(&sl->sl_pid, (uint32_t)getpid());
        r->slot = sl;
        r->slot_idx = i;
        r->gen_seen = kv_atomic_load_acquire64(&sl->sl_gen);
        r->fork_gen = kvshmi_fork_gen;
        return KVSHM_OK;
    }
    return KVSHM_E_NOSLOT;
}

void kvshmi_slot_release(kvshm_reader *r)
{
    if (!r->slot) return;
    kv_atomic_store_release64(&r->slot->sl_epoch, 0);
    kv_atomic_store_release32(&r->slot->sl_pid, 0);
    if (r->slot_fd >= 0) close(r->slot_fd); /* last close of the description drops the lock */
    r->slot_fd = -1;
    r->slot = NULL;
}

/*
 * After fork the child shares the parent's open file description and thus
 * its lock: the child opens a description of its own and claims a new slot.
 * Closing the inherited descriptor leaves the parent's lock in place.
 */
kvshm_status kvshmi_rehome(kvshm_reader *r)
{
    int old = r->slot_fd;
    int fd = shm_open(r->slot_name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) { r->err_no = errno; return KVSHM_E_SYS; }
    r->slot_fd = fd;
    r->slot = NULL;
    kvshmi_membarrier_register(r);
    kvshm_status st = kvshmi_slot_claim(r);
    if (old >= 0) close(old);
    if (st) { close(fd); r->slot_fd = -1; }
    else kvshmi_assert_context(KVSHMI_ROLE_READER, r->generation, r->slot_idx);
    return st;
}

/* ---- writer: reaping, reclamation, eviction ---------------------------------- */

/* Clear the slot of a dead owner. Returns 1 if slot i was reaped. */
static int reap_slot(kvshm_writer *w, uint32_t i, int *err)
{
    struct kvshm_slot *sl = &w->slots[i];
    if (kv_atomic_load_acquire32(&sl->sl_pid) == 0 &&
        kv_atomic_load_acquire64(&sl->sl_epoch) == 0)
        return 0;
    if (ofd_lock(w->slot_fd, i, F_WRLCK) != 0) {
        if (errno != EAGAIN && errno != EACCES) { *err = errno; }
        return 0;  /* owner alive (or just claiming it) */
    }
    /* We hold the lock: the owner is gone and no claimer can get in. */
    kvshm_spin_reap(&w->sh->sh_spinners, &sl->sl_spinning);
    kv_atomic_store_release64(&sl->sl_epoch, 0);
    kv_atomic_store_release32(&sl->sl_pid, 0);
    kv_atomic_store_release64(&sl->sl_gen, sl->sl_gen + 1);
    w->evicted_epoch[i] = 0;
    ofd_lock(w->slot_fd, i, F_UNLCK);
    return 1;
}

static void writer_barrier(kvshm_writer *w)
{
    kv_atomic_fence_seq_cst();
#ifndef __SANITIZE_THREAD__
    if (w->membarrier_ok >= 0 &&
        syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) != 0)
        w->membarrier_ok = -1;  /* readers then fence themselves (sl_flags) */
#endif
    kv_atomic_fence_seq_cst();
}

/* Oldest epoch held by a live, non-evicted slot; `cur` if none. */
static uint64_t min_live(kvshm_writer *w, uint64_t cur, uint32_t *live)
{
    uint64_t m = cur;
    uint32_t nlive = 0;
    for (uint32_t i = 0; i < w->nslots; i++) {
        struct kvshm_slot *sl = &w->slots[i];
        uint64_t e = kv_atomic_load_acquire64(&sl->sl_epoch);
        if (kv_atomic_load_relaxed32(&sl->sl_pid)) nlive++;
        if (e != w->evicted_epoch[i]) w->evicted_epoch[i] = 0;
        if (e == 0 || e == w->evicted_epoch[i]) continue;
        if (e < m) m = e;
    }
    if (live) *live = nlive;
    return m;
}

kvshm_status kvshm_writer_maintain(kvshm_writer *w, kvshm_maint *out)
{
    KVSHMI_WRITER_ONLY(w);
    kvshm_maint m;
    memset(&m, 0, sizeof m);
    int err = 0;
    uint64_t epoch = w->hdr->h_epoch + 1;
    KV_ASSERT_INTERNAL(epoch > 1);   /* epochs start at 1 and only grow */
    kv_atomic_store_release64(&w->hdr->h_epoch, epoch);
    for (uint32_t i = 0; i < w->nslots; i++) m.reaped += (uint32_t)reap_slot(w, i, &err);
    writer_barrier(w);
    uint64_t minl = min_live(w, epoch, &m.live_slots);
    /* readers enter the epoch they read from the header: none is ahead */
    KV_ASSERT_INTERNAL(minl <= epoch);
    for (uint32_t s = 0; s < w->nshards; s++) {
        m.reclaimed_bytes += kvshm_blocks_reclaim(&w->blocks[s], minl);
        kvshmi_refill_spare(w, s);
    }

    /* Stalled readers: while a shard holds more retired bytes than the limit
     * and the oldest live epoch pins them, evict the readers at that epoch. */
    for (int round = 0; round < 64; round++) {
        int over = 0;
        for (uint32_t s = 0; s < w->nshards; s++)
            if (w->blocks[s].retired > w->cfg.retire_limit_bytes &&
                kvshm_blocks_oldest_retired(&w->blocks[s]) >= minl)
                over = 1;
        if (!over || minl >= epoch) break;
        /* New epoch first, so an evicted reader's retry is told apart. */
        epoch++;
        kv_atomic_store_release64(&w->hdr->h_epoch, epoch);
        for (uint32_t i = 0; i < w->nslots; i++) {
            struct kvshm_slot *sl = &w->slots[i];
            uint64_t e = kv_atomic_load_acquire64(&sl->sl_epoch);
            if (e == 0 || e != minl || e == w->evicted_epoch[i]) continue;
            w->evicted_epoch[i] = e;
            kv_atomic_store_release64(&sl->sl_gen, sl->sl_gen + 1);
            m.evicted++;
        }
        /* Order the generation bumps before any later reuse of the memory. */
        writer_barrier(w);
        minl = min_live(w, epoch, NULL);
        for (uint32_t s = 0; s < w->nshards; s++)
            m.reclaimed_bytes += kvshm_blocks_reclaim(&w->blocks[s], minl);
    }
    if (m.reaped)
        kv_atomic_store_relaxed64(&w->hdr->h_reaped, w->hdr->h_reaped + m.reaped);
    if (m.evicted)
        kv_atomic_store_relaxed64(&w->hdr->h_evictions, w->hdr->h_evictions + m.evicted);
    m.epoch = epoch;
    m.min_live_epoch = minl;
    for (uint32_t s = 0; s < w->nshards; s++) {
        m.used_bytes += w->blocks[s].used;
        m.retired_bytes += w->blocks[s].retired;
    }
    if (out) *out = m;
    if (err) { w->err_no = err; return KVSHM_E_SYS; }
    return KVSHM_OK;
}

/* ---- doorbell and the writer's idle wait --------------------------------------
 *
 * The writer sleeps on sh_doorbell only after it has run out of work and
 * out of idle spin. No lost wake-up:
 *   writer: seen = load(doorbell); sleeping = 1; seq_cst fence;
 *           re-check every ring and the request count; FUTEX_WAIT(seen)
 *   client: publish (release store of its ring's tail); seq_cst fence;
 *           if sleeping: doorbell += 1; FUTEX_WAKE
 * By the fences, either the writer's re-check sees the record or the client
 * sees the flag; FUTEX_WAIT returns at once if the doorbell moved after the
 * writer read it. A client that finds the writer awake does nothing more:
 * no store to the shared line, no system call.
 */

static long futex(uint32_t *uaddr, int op, uint32_t val, const struct timespec *ts)
{
    return syscall(SYS_futex, uaddr, op, val, ts, NULL, 0);
}

uint32_t kvshm_writer_requests(const kvshm_writer *w)
{
    return kv_atomic_load_acquire32(&w->sh->sh_requests);
}

typedef struct idle_ctx {
    int (*has_work)(void *ctx, int final);
    void *ctx;
} idle_ctx;

static int idle_ready(void *p)
{
    const idle_ctx *c = p;
    return c->has_work(c->ctx, 0);
}

kvshm_status kvshm_writer_idle_wait(kvshm_writer *w, int (*has_work)(void *ctx, int final),
                                    void *ctx, int timeout_ms)
{
    KVSHMI_WRITER_ONLY(w);
    if (has_work(ctx, 0)) return KVSHM_OK;
    if (timeout_ms == 0) return KVSHM_TIMEOUT;
    struct kvshm_slothdr *sh = w->sh;
    kvshm_spin_gate g = {.spinners = &sh->sh_spinners, .mark = &sh->sh_writer_spinning,
                         .writer = 1};
    idle_ctx ic = {has_work, ctx};
    if (kvshm_spin_until(&w->idle_spin, &g, idle_ready, &ic)) return KVSHM_OK;
    uint32_t seen = kv_atomic_load_acquire32(&sh->sh_doorbell);
    kv_atomic_store_release32(&sh->sh_writer_sleeping, 1);
    kv_atomic_fence_seq_cst();
    kvshm_status st = KVSHM_OK;
    if (!has_work(ctx, 1)) {
        struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
        if (futex(&sh->sh_doorbell, FUTEX_WAIT, seen, timeout_ms > 0 ? &ts : NULL) != 0 &&
            errno == ETIMEDOUT)
            st = KVSHM_TIMEOUT;
    }
    kv_atomic_store_release32(&sh->sh_writer_sleeping, 0);
    return st;
}

/* The doorbell protocol above, on the slot file's header. */
static void ring_doorbell(struct kvshm_slothdr *sh)
{
    kv_atomic_fence_seq_cst();
    if (kv_atomic_load_relaxed32(&sh->sh_writer_sleeping)) {
        kv_atomic_fetch_add_acq_rel32(&sh->sh_doorbell, 1);
        futex(&sh->sh_doorbell, FUTEX_WAKE, 1, NULL);
    }
}

/* A request flagged on the slot file's header (kvshm_reader_flag_request). */
static void flag_request(struct kvshm_slothdr *sh)
{
    /* seq_cst RMW after the sendmsg: a writer that reads the new count
     * (kvshm_writer_requests) and then polls its socket finds the request. */
    atomic_fetch_add_explicit(KVSHM_A32(&sh->sh_requests), 1, memory_order_seq_cst);
    ring_doorbell(sh);
}

void kvshm_reader_ring_doorbell(kvshm_reader *r) { ring_doorbell(r->sh); }

void kvshmi_reader_gate(kvshm_reader *r, kvshm_spin_gate *g)
{
    g->spinners = &r->sh->sh_spinners;
    /* before a forked child re-homes, the slot is still the parent's */
    g->mark = r->slot && r->fork_gen == kvshmi_fork_gen ? &r->slot->sl_spinning : NULL;
    g->writer = 0;
}

/* ---- pending socket requests ------------------------------------------------ */

void kvshm_reader_flag_request(kvshm_reader *r) { flag_request(r->sh); }

/* ---- the request bell of a process that only sends requests --------------- */

struct kvshm_bell {
    struct kvshm_slothdr *sh;   /* the slot file's header, mapped read-write */
    size_t bytes;
};

kvshm_status kvshm_bell_open(const char *slot_name, uint64_t generation, kvshm_bell **out)
{
    *out = NULL;
    int fd = shm_open(slot_name, O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) return errno == ENOENT ? KVSHM_E_NOENT : KVSHM_E_SYS;
    struct stat sb;
    size_t bytes = sizeof(struct kvshm_slothdr);
    void *p = MAP_FAILED;
    if (fstat(fd, &sb) == 0 && (uint64_t)sb.st_size >= KVSHM_SLOTS_OFF)
        p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return KVSHM_E_SIZE;
    struct kvshm_slothdr *sh = p;
    kvshm_status st = KVSHM_OK;
    if (kv_atomic_load_acquire64(&sh->sh_magic) != KVSHM_MAGIC_SLOTS) st = KVSHM_E_MAGIC;
    else if (sh->sh_layout_hash != kvshmi_layout_hash()) st = KVSHM_E_LAYOUT;
    else if (sh->sh_generation != generation) st = KVSHM_E_GENERATION;
    kvshm_bell *b = st ? NULL : malloc(sizeof *b);
    if (!b) {
        munmap(p, bytes);
        return st ? st : KVSHM_E_NOMEM;
    }
    *b = (kvshm_bell){.sh = sh, .bytes = bytes};
    *out = b;
    return KVSHM_OK;
}

void kvshm_bell_request(kvshm_bell *b) { flag_request(b->sh); }

void kvshm_bell_close(kvshm_bell *b)
{
    if (!b) return;
    munmap(b->sh, b->bytes);
    free(b);
}

