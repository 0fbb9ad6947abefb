/*
 * segment.c -- creating, attaching and closing the data segment: names,
 * sizes, posix_fallocate reservation, the header checks on attach (magic,
 * layout hash, size, generation, state), and status strings.
 *
 * The writer creates the segment O_EXCL with mode 0600, reserves every byte
 * with posix_fallocate (so a full /dev/shm fails here, never as SIGBUS
 * later), lays out the header and the shard regions, publishes an empty view
 * per shard and sets state READY last with a release store. Readers map it
 * PROT_READ: they cannot write shared state even by accident.
 */
#include <errno.h>
#include <fcntl.h>
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

/* Create a shm object of `bytes`, reserved, mode 0600, mapped read-write. */
static kvshm_status create_object(const char *name, uint64_t bytes, int *fd_out,
                                  uint8_t **base_out, int *err_no)
{
    kvshm_status st;
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) { *err_no = errno; return sys_status(errno); }
    if (fchmod(fd, 0600) != 0 || ftruncate(fd, (off_t)bytes) != 0) {
        *err_no = errno; st = sys_status(errno); goto fail;
    }
    int rc = posix_fallocate(fd, 0, (off_t)bytes);
    if (rc != 0) { *err_no = rc; st = sys_status(rc); goto fail; }
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { *err_no = errno; st = sys_status(errno); goto fail; }
    *fd_out = fd;
    *base_out = p;
    return KVSHM_OK;
fail:
    close(fd);
    shm_unlink(name);
    return st;
}

static void writer_free(kvshm_writer *w)
{
    if (w->blocks)
        for (uint32_t i = 0; i < w->nshards; i++) kvshm_blocks_fini(&w->blocks[i]);
    free(w->blocks); free(w->trees); free(w->active); free(w->frozen);
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
    w->nshards = cfg->shards;
    w->slot_fd = -1;
    w->seg.fd = -1;
    w->seg_name = strdup(cfg->seg_name);
    w->slot_name = strdup(cfg->slot_name);
    w->blocks = calloc(cfg->shards, sizeof *w->blocks);
    w->trees = calloc(cfg->shards, sizeof *w->trees);
    w->active = calloc(cfg->shards, sizeof *w->active);
    w->frozen = calloc(cfg->shards, sizeof *w->frozen);
    w->evicted_epoch = calloc(cfg->nslots, sizeof *w->evicted_epoch);
    if (!w->seg_name || !w->slot_name || !w->blocks || !w->trees || !w->active ||
        !w->frozen || !w->evicted_epoch) { writer_free(w); return KVSHM_E_NOMEM; }
    w->cfg.seg_name = w->seg_name;
    w->cfg.slot_name = w->slot_name;

    uint8_t *base = NULL;
    st = create_object(cfg->seg_name, cfg->size_bytes, &w->seg.fd, &base, &w->err_no);
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
    }
    if ((st = kvshmi_slots_create(w))) goto fail;
    kv_atomic_store_release32(&h->h_state, KVSHM_STATE_READY);
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

kvshm_status kvshm_reader_attach(const char *seg_name, const char *slot_name,
                                 kvshm_reader **out)
{
    kvshm_status st;
    if (!seg_name || !slot_name) return KVSHM_E_INVAL;
    kvshm_reader *r = calloc(1, sizeof *r);
    if (!r) return KVSHM_E_NOMEM;
    r->slot_fd = -1;
    r->seg.fd = -1;
    int fd = shm_open(seg_name, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) { r->err_no = errno; st = sys_status(errno); free(r); return st; }
    struct stat sb;
    if (fstat(fd, &sb) != 0) { st = KVSHM_E_SYS; goto fail_fd; }
    if ((uint64_t)sb.st_size < KVSHM_HDR_BYTES) { st = KVSHM_E_SIZE; goto fail_fd; }
    /* MAP_POPULATE: fault the whole (already reserved) segment in now, so
     * lookups never take minor page faults later; attach pays once. */
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (p == MAP_FAILED) { r->err_no = errno; st = KVSHM_E_SYS; goto fail_fd; }
    r->seg.base = p;
    r->seg.size = (uint64_t)sb.st_size;
    r->seg.lo = KVSHM_HDR_BYTES;
    r->seg.fd = fd;
    const struct kvshm_hdr *h = p;
    r->hdr = h;
    r->stripes = (const uint64_t *)((const uint8_t *)p + KVSHM_STRIPE_OFF);
    uint32_t state = kv_atomic_load_acquire32(&h->h_state);
    if (h->h_magic != KVSHM_MAGIC_SEG) { st = KVSHM_E_MAGIC; goto fail_map; }
    if (h->h_layout_hash != kvshmi_layout_hash()) { st = KVSHM_E_LAYOUT; goto fail_map; }
    if (state == KVSHM_STATE_CLOSED) { st = KVSHM_E_STALE; goto fail_map; }
    if (state != KVSHM_STATE_READY) { st = KVSHM_E_NOTREADY; goto fail_map; }
    if (h->h_size_bytes != r->seg.size || h->h_shards == 0 ||
        h->h_shards > KVSHM_MAX_SHARDS ||
        !kvshm_at(&r->seg, h->h_shard_tbl, (uint64_t)h->h_shards * sizeof(struct kvshm_shard)))
    { st = KVSHM_E_SIZE; goto fail_map; }
    r->shards = (const struct kvshm_shard *)((const uint8_t *)p + h->h_shard_tbl);
    r->nshards = h->h_shards;
    r->generation = h->h_generation;
    if ((st = kvshmi_slots_open(r, slot_name))) goto fail_map;
    kvshmi_membarrier_register(r);
    if ((st = kvshmi_slot_claim(r))) goto fail_slots;
    *out = r;
    return KVSHM_OK;
fail_slots:
    munmap(r->slot_base, r->slot_bytes);
    if (r->slot_fd >= 0) close(r->slot_fd);
    free(r->slot_name);
fail_map:
    munmap(r->seg.base, r->seg.size);
fail_fd:
    close(fd);
    free(r);
    return st;
}

void kvshm_reader_detach(kvshm_reader *r)
{
    if (!r) return;
    if (r->fork_gen == kvshmi_fork_gen) kvshmi_slot_release(r);
    else if (r->slot_fd >= 0) close(r->slot_fd); /* the parent's slot: not ours */
    munmap(r->slot_base, r->slot_bytes);
    munmap(r->seg.base, r->seg.size);
    close(r->seg.fd);
    free(r->slot_name);
    free(r);
}

uint32_t kvshm_reader_slot(const kvshm_reader *r) { return r->slot_idx; }
uint64_t kvshm_reader_generation(const kvshm_reader *r) { return r->generation; }
int kvshm_reader_errno(const kvshm_reader *r) { return r->err_no; }
const kvshm_seg *kvshm_reader_seg(const kvshm_reader *r) { return &r->seg; }

void kvshm_reader_seqs(const kvshm_reader *r, uint64_t *applied, uint64_t *committed)
{
    if (applied) *applied = kv_atomic_load_acquire64(&r->hdr->h_applied_seq);
    if (committed) *committed = kv_atomic_load_acquire64(&r->hdr->h_committed_seq);
}
