/*
 * segment.c -- creating, attaching and closing the data segment: names,
 * sizes, posix_fallocate reservation, the header checks on attach (magic,
 * layout hash, size, generation, state), and status strings.
 *
 * The writer creates the segment O_EXCL with mode 0600 (0660 and a group
 * with the group option, kvshmi_set_access), reserves every byte
 * with posix_fallocate (so a full /dev/shm fails here, never as SIGBUS
 * later), lays out the header and the shard regions, publishes an empty view
 * per shard and sets state READY last with a release store. Readers map it
 * PROT_READ: they cannot write shared state even by accident.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
/* xxh3 inlined: keys and values are short, a library call costs as much
 * as the hash itself. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "internal.h"

const char *kvshm_strerror(kvshm_status st)
{
    switch (st) {
    case KVSHM_OK: return "ok";
    case KVSHM_NOTFOUND: return "key not cached";
    case KVSHM_DELETED: return "key deleted (tombstone)";
    case KVSHM_EMPTY: return "nothing more";
    case KVSHM_TIMEOUT: return "timed out";
    case KVSHM_E_INVAL: return "invalid argument";
    case KVSHM_E_NOMEM: return "out of process memory";
    case KVSHM_E_FULL: return "shared memory full";
    case KVSHM_E_BUSY: return "frozen memtable still pending";
    case KVSHM_E_SMALLBUF: return "buffer too small";
    case KVSHM_E_SYS: return "system call failed";
    case KVSHM_E_EXISTS: return "shared memory object already exists";
    case KVSHM_E_NOENT: return "no such shared memory object";
    case KVSHM_E_MAGIC: return "not a kohakuvault segment (bad magic)";
    case KVSHM_E_LAYOUT: return "segment layout differs (layout hash)";
    case KVSHM_E_SIZE: return "segment size disagrees with its header";
    case KVSHM_E_GENERATION: return "slot file and segment generations differ";
    case KVSHM_E_NOTREADY: return "segment not ready";
    case KVSHM_E_NOSLOT: return "no free reader slot";
    case KVSHM_E_EVICTED: return "reader evicted by the writer; retry";
    case KVSHM_E_CORRUPT: return "shared memory check failed";
    case KVSHM_E_STALE: return "segment closed by its writer; re-attach";
    }
    return "unknown kvshm status";
}

/* ---- assertion context -------------------------------------------------- */

/* This process's roles: the writer (the segment it created) and the last
 * reader handle attached or re-homed (its segment and slot). */
static struct {
    uint64_t writer_generation;     /* 0: not a writer */
    uint64_t reader_generation;     /* 0: no reader */
    uint32_t reader_slot;
} g_context;

static void assert_context(char *buf, size_t cap)
{
    int n = 0;
    if (g_context.writer_generation)
        n = snprintf(buf, cap, "kvshm writer, segment generation %" PRIu64,
                     g_context.writer_generation);
    if (g_context.reader_generation && n >= 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, "%skvshm reader, segment generation %" PRIu64
                 ", slot %" PRIu32, n ? "; " : "", g_context.reader_generation,
                 g_context.reader_slot);
}

void kvshmi_assert_context(int role, uint64_t generation, uint32_t slot)
{
    if (role == KVSHMI_ROLE_WRITER) {
        g_context.writer_generation = generation;
    } else {
        g_context.reader_generation = generation;
        g_context.reader_slot = slot;
    }
    kv_assert_set_context(assert_context);
}

uint64_t kvshmi_layout_hash(void)
{
    const uint64_t v[] = {
        KVSHM_LAYOUT_VERSION, sizeof(struct kvshm_hdr), KVSHM_HDR_BYTES,
        offsetof(struct kvshm_hdr, h_epoch), offsetof(struct kvshm_hdr, h_shard_tbl),
        offsetof(struct kvshm_hdr, h_state), sizeof(struct kvshm_shard),
        offsetof(struct kvshm_shard, s_view), sizeof(struct kvshm_view),
        offsetof(struct kvshm_view, v_tree_root), offsetof(struct kvshm_view, v_tree_height),
        sizeof(struct kvshm_rec), sizeof(struct kvshm_mthdr), KVSHM_MT_HEAD,
        KVSHM_MT_FIRST, KVSHM_MT_MAXH, KVSHM_NODE_BYTES, KVSHM_NODE_KEYS,
        offsetof(struct kvshm_node, c_e), sizeof(struct kvshm_entry),
        offsetof(struct kvshm_node, c_skip),
        sizeof(struct kvshm_slothdr), sizeof(struct kvshm_slot), KVSHM_SLOTS_OFF,
        offsetof(struct kvshm_slot, sl_gen), KVSHM_MAX_KEY, KVSHM_STRIPE_OFF, KVSHM_STRIPES,
    };
    return XXH3_64bits(v, sizeof v);
}

uint64_t kvshm_layout_hash(void) { return kvshmi_layout_hash(); }

uint64_t kvshm_key_hash(const void *key, size_t klen) { return XXH3_64bits(key, klen); }

uint32_t kvshm_shard_of(const void *key, size_t klen, uint32_t shards)
{
    return shards <= 1 ? 0 : (uint32_t)(XXH3_64bits(key, klen) % shards);
}

void kvshm_config_default(kvshm_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->size_bytes = UINT64_C(256) << 20;
    cfg->shards = 4;
    cfg->nslots = 128;
    cfg->memtable_bytes = UINT64_C(4) << 20;
    cfg->retire_limit_bytes = UINT64_C(16) << 20;
    cfg->generation = 1;
}

void kvshm_unlink(const char *seg_name, const char *slot_name)
{
    if (seg_name) shm_unlink(seg_name);
    if (slot_name) shm_unlink(slot_name);
}

/* Map errno of shm_open/ftruncate/posix_fallocate to a status. */
static kvshm_status sys_status(int e)
{
    switch (e) {
    case EEXIST: return KVSHM_E_EXISTS;
    case ENOENT: return KVSHM_E_NOENT;
    case ENOSPC: case EFBIG: return KVSHM_E_FULL;
    case ENOMEM: return KVSHM_E_NOMEM;
    case EINVAL: case ENAMETOOLONG: return KVSHM_E_INVAL;
    default: return KVSHM_E_SYS;
    }
}

int kvshmi_set_access(int fd, const kvshm_config *cfg)
{
    if (cfg->group_access && fchown(fd, (uid_t)-1, (gid_t)cfg->gid) != 0) return -1;
    return fchmod(fd, cfg->group_access ? 0660 : 0600);
}

/* Create a shm object of `bytes`, reserved, with the access of cfg
 * (kvshmi_set_access), mapped read-write and populated. On failure the
 * object is unlinked again and *err_no holds the errno.
 * Populated: posix_fallocate already allocated every page; MAP_POPULATE
 * also enters them in the writer's page table in one pass, so the writer's
 * first store into each 4 KiB page (a block carved for a miss load or a
 * record) takes no page fault. Without it a writer loading large values
 * into a fresh segment took one fault per page written, about a quarter of
 * its CPU time (perf, loader of perf/bench_files.py). On a VM that shadows
 * page tables the first store into each page still costs an exit to the
 * hypervisor (docs/performance.md, "Large values in shared mode"). */
static kvshm_status create_object(const char *name, uint64_t bytes, const kvshm_config *cfg,
                                  int *fd_out, uint8_t **base_out, int *err_no)
{
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) { *err_no = errno; return sys_status(errno); }
    void *p = MAP_FAILED;
    int e = 0;
    if (kvshmi_set_access(fd, cfg) != 0 || ftruncate(fd, (off_t)bytes) != 0)
        e = errno;
    else if ((e = posix_fallocate(fd, 0, (off_t)bytes)) == 0 &&
             (p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                       0)) == MAP_FAILED)
        e = errno;
    if (e) {
        *err_no = e;
        close(fd);
        shm_unlink(name);
        return sys_status(e);
    }
    *fd_out = fd;
    *base_out = p;
    return KVSHM_OK;
}

static void writer_free(kvshm_writer *w)
{
    if (w->blocks)
        for (uint32_t i = 0; i < w->nshards; i++) kvshm_blocks_fini(&w->blocks[i]);
    free(w->blocks); free(w->trees); free(w->active); free(w->frozen); free(w->fingers); free(w->spare_mt);
    free(w->evicted_epoch);
    free(w->seg_name); free(w->slot_name);
    free(w);
}

kvshm_status kvshm_writer_create(const kvshm_config *cfg, kvshm_writer **out)
{
    kvshm_status st;
    if (!cfg || !cfg->seg_name || !cfg->slot_name || cfg->shards == 0 ||
        cfg->shards > KVSHM_MAX_SHARDS || cfg->nslots == 0 || cfg->nslots > 65536 ||
        cfg->memtable_bytes < 4096 || cfg->memtable_bytes > UINT32_MAX ||
        cfg->generation == 0)
        return KVSHM_E_INVAL;
    uint64_t tbl = KVSHM_HDR_BYTES;
    uint64_t heap = (tbl + (uint64_t)cfg->shards * sizeof(struct kvshm_shard) + 4095) & ~UINT64_C(4095);
    if (cfg->size_bytes <= heap) return KVSHM_E_INVAL;
    uint64_t region = ((cfg->size_bytes - heap) / cfg->shards) & ~UINT64_C(63);
    /* room for two memtables, views and some tree per shard */
    if (region < 2 * kvshm_blocks_class_bytes(cfg->memtable_bytes) + 65536)
        return KVSHM_E_INVAL;

    kvshm_writer *w = calloc(1, sizeof *w);
    if (!w) return KVSHM_E_NOMEM;
    w->cfg = *cfg;
    /* A stalled reader must be evicted while the region still has room:
     * a limit at or above the region would let pinned retired blocks fill
     * it first (every allocation then fails with KVSHM_E_FULL). The cap
     * stays above one and a half memtables, so the memtable one fold
     * retires does not by itself evict a reader that is merely reading. */
    uint64_t mt = kvshm_blocks_class_bytes(cfg->memtable_bytes);
    uint64_t cap = region / 4 > mt + mt / 2 ? region / 4 : mt + mt / 2;
    if (w->cfg.retire_limit_bytes > cap) w->cfg.retire_limit_bytes = cap;
    w->pid = getpid();
    w->nshards = cfg->shards;
    w->slot_fd = -1;
    w->seg.fd = -1;
    w->seg_name = strdup(cfg->seg_name);
    w->slot_name = strdup(cfg->slot_name);
    w->blocks = calloc(cfg->shards, sizeof *w->blocks);
    w->trees = calloc(cfg->shards, sizeof *w->trees);
    w->active = calloc(cfg->shards, sizeof *w->active);
    w->frozen = calloc(cfg->shards, sizeof *w->frozen);
    w->fingers = calloc(cfg->shards, sizeof *w->fingers);
    w->spare_mt = calloc(cfg->shards, sizeof *w->spare_mt);
    w->evicted_epoch = calloc(cfg->nslots, sizeof *w->evicted_epoch);
    if (!w->seg_name || !w->slot_name || !w->blocks || !w->trees || !w->active ||
        !w->frozen || !w->fingers || !w->spare_mt || !w->evicted_epoch) { writer_free(w); return KVSHM_E_NOMEM; }
    w->cfg.seg_name = w->seg_name;
    w->cfg.slot_name = w->slot_name;

    uint8_t *base = NULL;
    st = create_object(cfg->seg_name, cfg->size_bytes, cfg, &w->seg.fd, &base, &w->err_no);
    if (st) { writer_free(w); return st; }
    w->seg.base = base;
    w->seg.size = cfg->size_bytes;
    w->seg.lo = KVSHM_HDR_BYTES;
    w->seg.writable = 1;
    w->hdr = (struct kvshm_hdr *)base;
    w->stripes = (uint64_t *)(base + KVSHM_STRIPE_OFF);
    w->shards = (struct kvshm_shard *)(base + tbl);

    struct kvshm_hdr *h = w->hdr;
    h->h_magic = KVSHM_MAGIC_SEG;
    h->h_layout_hash = kvshmi_layout_hash();
    h->h_size_bytes = cfg->size_bytes;
    h->h_generation = cfg->generation;
    h->h_shards = cfg->shards;
    h->h_hdr_bytes = KVSHM_HDR_BYTES;
    h->h_epoch = 1;
    h->h_shard_tbl = tbl;
    h->h_heap_off = heap;
    h->h_heap_bytes = region * cfg->shards;
    h->h_writer_pid = (uint64_t)getpid();

    for (uint32_t i = 0; i < cfg->shards; i++) {
        struct kvshm_shard *sh = &w->shards[i];
        sh->s_region = heap + region * i;
        sh->s_region_bytes = region;
        kvshm_blocks_init(&w->blocks[i], &w->seg, sh->s_region, region, sh);
        w->blocks[i].poison = getenv("KVSHM_POISON") != NULL; /* tests: catch early reuse */
        if ((st = kvshm_mt_create(&w->blocks[i], cfg->memtable_bytes, &w->active[i])) ||
            (st = kvshmi_publish_view(w, i, 0)))
            goto fail;
        /* The block of the next memtable, taken before the cache can fill
         * (and fragment) the region: a freeze must never lack it. */
        if ((st = kvshm_blocks_alloc(&w->blocks[i], cfg->memtable_bytes, &w->spare_mt[i])))
            goto fail;
    }
    if ((st = kvshmi_slots_create(w))) goto fail;
    kv_atomic_store_release32(&h->h_state, KVSHM_STATE_READY);
    kvshmi_assert_context(KVSHMI_ROLE_WRITER, cfg->generation, 0);
    *out = w;
    return KVSHM_OK;
fail:
    munmap(w->seg.base, w->seg.size);
    close(w->seg.fd);
    shm_unlink(cfg->seg_name);
    writer_free(w);
    return st;
}

void kvshm_writer_destroy(kvshm_writer *w, int unlink_names)
{
    if (!w) return;
    KVSHMI_WRITER_ONLY(w);
    kvshmi_assert_context(KVSHMI_ROLE_WRITER, 0, 0);
    kv_atomic_store_release32(&w->hdr->h_state, KVSHM_STATE_CLOSED);
    munmap(w->seg.base, w->seg.size);
    close(w->seg.fd);
    if (w->slot_base) munmap(w->slot_base, w->slot_bytes);
    if (w->slot_fd >= 0) close(w->slot_fd);
    if (unlink_names) kvshm_unlink(w->seg_name, w->slot_name);
    writer_free(w);
}

const kvshm_seg *kvshm_writer_seg(const kvshm_writer *w) { return &w->seg; }
uint32_t kvshm_writer_shards(const kvshm_writer *w) { return w->nshards; }
uint64_t kvshm_writer_size_bytes(const kvshm_writer *w) { return w->seg.size; }
uint64_t kvshm_writer_generation(const kvshm_writer *w) { return w->cfg.generation; }

/* Add the figures of shard record sh to *out (relaxed loads: statistics). */
static void add_figures(const struct kvshm_shard *sh, kvshm_shard_stats *out)
{
    out->region_bytes += sh->s_region_bytes;
    out->used_bytes += kv_atomic_load_relaxed64(&sh->s_used);
    out->retired_bytes += kv_atomic_load_relaxed64(&sh->s_retired);
    out->tree_keys += kv_atomic_load_relaxed64(&sh->s_tree_keys);
    out->mt_keys += kv_atomic_load_relaxed64(&sh->s_mt_keys);
}

kvshm_status kvshm_writer_shard_stats(const kvshm_writer *w, uint32_t shard,
                                      kvshm_shard_stats *out)
{
    KVSHMI_WRITER_ONLY(w);
    memset(out, 0, sizeof *out);
    uint32_t lo = shard, hi = shard + 1;
    if (shard == KVSHM_ALL_SHARDS) lo = 0, hi = w->nshards;
    else if (shard >= w->nshards) return KVSHM_E_INVAL;
    for (uint32_t i = lo; i < hi; i++) add_figures(&w->shards[i], out);
    return KVSHM_OK;
}

kvshm_status kvshm_writer_set_miss_policy(kvshm_writer *w, uint32_t policy)
{
    KVSHMI_WRITER_ONLY(w);
    if (policy != KVSHM_MISS_LARGE_FREE && policy != KVSHM_MISS_ALL) return KVSHM_E_INVAL;
    for (uint32_t i = 0; i < w->nshards; i++)
        kv_atomic_store_relaxed64(&w->shards[i].s_miss_policy, policy);
    return KVSHM_OK;
}

/* Reports older than this are taken as handled (loaded elsewhere, declined
 * or skipped by the writer): their credit lapses. */
#define MISS_CREDIT_MS 200

int kvshm_reader_miss_wanted(kvshm_reader *r, const void *key, size_t klen, uint64_t vlen)
{
    uint32_t i = r->nshards == 1 ? 0 : kvshm_shard_of(key, klen, r->nshards);
    const struct kvshm_shard *sh = &r->shards[i];
    if (kv_atomic_load_relaxed64(&sh->s_miss_policy) == KVSHM_MISS_ALL) return 1;
    kvshm_shard_stats st = {0};
    add_figures(sh, &st);
    uint64_t bytes = kvshm_cached_bytes(klen, vlen);
    struct kvshmi_miss_credit *c = r->miss_credit ? &r->miss_credit[i] : NULL;
    if (!c) return kvshm_large_fits(&st, 0, bytes);
    /* the writer's loads since the last look pay off this reader's reports */
    uint64_t live = st.used_bytes - st.retired_bytes;
    if (live > c->live) c->reported -= live - c->live < c->reported ? live - c->live : c->reported;
    c->live = live;
    uint64_t now = kvshmi_now_ms();
    if (c->reported && now - c->since_ms > MISS_CREDIT_MS) c->reported = 0;
    if (!kvshm_large_fits(&st, c->reported, bytes)) return 0;
    if (!c->reported) c->since_ms = now;
    c->reported += bytes;
    return 1;
}

/*
 * Map the existing shm object `name`: read-only and populated (readers: the
 * whole segment is faulted in once here, so lookups never page-fault) or
 * read-write and not populated (recovery of an old segment). Fills *seg.
 * Returns KVSHM_OK, KVSHM_E_NOENT, KVSHM_E_SIZE (smaller than the header),
 * KVSHM_E_SYS (errno in *err_no), or another status of sys_status.
 */
static kvshm_status map_object(const char *name, int writable, kvshm_seg *seg, int *err_no)
{
    int fd = shm_open(name, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC, 0);
    if (fd < 0) { *err_no = errno; return sys_status(errno); }
    struct stat sb;
    kvshm_status st = KVSHM_E_SYS;
    if (fstat(fd, &sb) != 0) { *err_no = errno; goto fail; }
    if ((uint64_t)sb.st_size < KVSHM_HDR_BYTES) { st = KVSHM_E_SIZE; goto fail; }
    void *p = mmap(NULL, (size_t)sb.st_size, writable ? PROT_READ | PROT_WRITE : PROT_READ,
                   writable ? MAP_SHARED : MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) { *err_no = errno; goto fail; }
    *seg = (kvshm_seg){.base = p, .size = (uint64_t)sb.st_size, .lo = KVSHM_HDR_BYTES,
                       .writable = writable, .fd = fd};
    return KVSHM_OK;
fail:
    close(fd);
    return st;
}

static void unmap_object(kvshm_seg *seg)
{
    munmap(seg->base, seg->size);
    close(seg->fd);
    seg->fd = -1;
}

kvshm_status kvshm_reader_attach(const char *seg_name, const char *slot_name,
                                 kvshm_reader **out)
{
    kvshm_status st;
    if (!seg_name || !slot_name) return KVSHM_E_INVAL;
    kvshm_reader *r = calloc(1, sizeof *r);
    if (!r) return KVSHM_E_NOMEM;
    r->slot_fd = -1;
    if ((st = map_object(seg_name, 0, &r->seg, &r->err_no))) { free(r); return st; }
    const struct kvshm_hdr *h = (const struct kvshm_hdr *)r->seg.base;
    r->hdr = h;
    r->stripes = (const uint64_t *)(r->seg.base + KVSHM_STRIPE_OFF);
    uint32_t state = kv_atomic_load_acquire32(&h->h_state);
    if (h->h_magic != KVSHM_MAGIC_SEG) { st = KVSHM_E_MAGIC; goto fail_map; }
    if (h->h_layout_hash != kvshmi_layout_hash()) { st = KVSHM_E_LAYOUT; goto fail_map; }
    if (state == KVSHM_STATE_CLOSED) { st = KVSHM_E_STALE; goto fail_map; }
    if (state != KVSHM_STATE_READY) { st = KVSHM_E_NOTREADY; goto fail_map; }
    if (h->h_size_bytes != r->seg.size || h->h_shards == 0 ||
        h->h_shards > KVSHM_MAX_SHARDS ||
        !kvshm_at(&r->seg, h->h_shard_tbl, (uint64_t)h->h_shards * sizeof(struct kvshm_shard)))
    { st = KVSHM_E_SIZE; goto fail_map; }
    r->shards = (const struct kvshm_shard *)(r->seg.base + h->h_shard_tbl);
    r->nshards = h->h_shards;
    r->generation = h->h_generation;
    r->miss_credit = calloc(r->nshards, sizeof *r->miss_credit); /* NULL: no credit kept */
    if ((st = kvshmi_slots_open(r, slot_name))) goto fail_map;
    kvshmi_membarrier_register(r);
    if ((st = kvshmi_slot_claim(r))) goto fail_slots;
    kvshmi_assert_context(KVSHMI_ROLE_READER, r->generation, r->slot_idx);
    *out = r;
    return KVSHM_OK;
fail_slots:
    munmap(r->slot_base, r->slot_bytes);
    if (r->slot_fd >= 0) close(r->slot_fd);
    free(r->slot_name);
fail_map:
    unmap_object(&r->seg);
    free(r->miss_credit);
    free(r);
    return st;
}

void kvshm_reader_detach(kvshm_reader *r)
{
    if (!r) return;
    kvshmi_assert_context(KVSHMI_ROLE_READER, 0, 0);
    if (r->fork_gen == kvshmi_fork_gen) kvshmi_slot_release(r);
    else if (r->slot_fd >= 0) close(r->slot_fd); /* the parent's slot: not ours */
    munmap(r->slot_base, r->slot_bytes);
    unmap_object(&r->seg);
    free(r->slot_name);
    free(r->miss_credit);
    free(r);
}

uint32_t kvshm_reader_slot(const kvshm_reader *r) { return r->slot_idx; }
uint64_t kvshm_reader_generation(const kvshm_reader *r) { return r->generation; }
int kvshm_reader_errno(const kvshm_reader *r) { return r->err_no; }
const kvshm_seg *kvshm_reader_seg(const kvshm_reader *r) { return &r->seg; }

uint32_t kvshm_reader_fault(const kvshm_reader *r, int64_t *sqlite_code)
{
    uint32_t st = kv_atomic_load_acquire32(&r->hdr->h_fault);
    if (sqlite_code) *sqlite_code = st ? r->hdr->h_fault_code : 0;
    return st;
}

int kvshm_reader_refusal(const kvshm_reader *r, char *msg, size_t cap)
{
    KV_ASSERT(cap >= 1);
    const struct kvshm_hdr *h = r->hdr;
    /* A writer killed halfway through a change leaves the version odd for
     * good: after that many tries the refusal reads as lifted (the client
     * finds the writer gone by its other checks). */
    for (int tries = 0; tries < 100000; tries++) {
        uint32_t v = kv_atomic_load_acquire32(&h->h_refuse_ver);
        if (v & 1) continue;   /* the writer is changing it: a few stores */
        int refused = (int)kv_atomic_load_relaxed32(&h->h_refuse);
        size_t n = 0;
        if (refused) {
            for (; n + 1 < cap && n < KVSHM_REFUSE_MSG_MAX - 1 && h->h_refuse_msg[n]; n++)
                msg[n] = h->h_refuse_msg[n];
        }
        msg[n] = 0;
        kv_atomic_fence_acquire();
        if (kv_atomic_load_relaxed32(&h->h_refuse_ver) == v) return refused;
    }
    msg[0] = 0;
    return 0;
}

void kvshm_reader_seqs(const kvshm_reader *r, uint64_t *applied, uint64_t *committed)
{
    if (applied) *applied = kv_atomic_load_acquire64(&r->hdr->h_applied_seq);
    if (committed) *committed = kv_atomic_load_acquire64(&r->hdr->h_committed_seq);
}

/* ---- recovery ------------------------------------------------------------ */

/* Map a previous writer's segment read-write and check that it has this
 * build's layout. On KVSHM_OK *h is its header. */
static kvshm_status recover_map(const char *seg_name, kvshm_seg *seg, struct kvshm_hdr **h)
{
    int err_no = 0;
    kvshm_status st = map_object(seg_name, 1, seg, &err_no);
    if (st == KVSHM_E_SIZE) st = KVSHM_E_CORRUPT;   /* too small to hold a header */
    if (st) return st;
    *h = (struct kvshm_hdr *)seg->base;
    if ((*h)->h_magic != KVSHM_MAGIC_SEG) st = KVSHM_E_MAGIC;
    else if ((*h)->h_layout_hash != kvshmi_layout_hash()) st = KVSHM_E_LAYOUT;
    else if ((*h)->h_size_bytes != seg->size) st = KVSHM_E_SIZE;
    if (st) unmap_object(seg);
    return st;
}

kvshm_status kvshm_recover_scan(const char *seg_name, kvshm_rec_fn fn, void *ctx)
{
    kvshm_seg seg;
    struct kvshm_hdr *h;
    kvshm_status st = recover_map(seg_name, &seg, &h);
    if (st) return st;
    const struct kvshm_shard *shards =
        kvshm_at(&seg, h->h_shard_tbl, (uint64_t)h->h_shards * sizeof(struct kvshm_shard));
    int stopped = 0;
    if (!shards) st = KVSHM_E_CORRUPT;
    for (uint32_t i = 0; shards && i < h->h_shards && !stopped; i++) {
        uint64_t voff = kv_atomic_load_acquire64(&shards[i].s_view);
        const struct kvshm_view *view = kvshm_at(&seg, voff, sizeof *view);
        if (!view) continue;
        const uint64_t mts[2] = {view->v_frozen, view->v_active};
        for (int k = 0; k < 2 && !stopped; k++)
            if (mts[k]) kvshm_mt_scan_valid(&seg, mts[k], fn, ctx, &stopped);
    }
    unmap_object(&seg);
    return st;
}

kvshm_status kvshm_recover_close(const char *seg_name)
{
    kvshm_seg seg;
    struct kvshm_hdr *h;
    kvshm_status st = recover_map(seg_name, &seg, &h);
    if (st) return st;
    kv_atomic_store_release32(&h->h_state, KVSHM_STATE_CLOSED);
    unmap_object(&seg);
    return KVSHM_OK;
}
