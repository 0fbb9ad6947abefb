/*
 * internal.h -- private types shared by segment.c, slots.c and view.c: the
 * writer and reader handles and the reader's epoch enter/leave. Not
 * installed; nothing outside shm/ includes it.
 */
#ifndef KVSHM_INTERNAL_H
#define KVSHM_INTERNAL_H

#include <sys/types.h>
#include <unistd.h>

#include "atomics.h"
#include "kv_assert.h"
#include "kvshm/kvshm.h"
#include "spinwait.h"
#include "structs.h"

struct kvshm_writer {
    kvshm_config cfg;
    pid_t pid;                      /* the writer process (the creator) */
    char *seg_name, *slot_name;
    kvshm_seg seg;
    struct kvshm_hdr *hdr;
    uint64_t *stripes;              /* key-stripe stamps (layout.h) */
    struct kvshm_shard *shards;     /* shard table in the segment */
    uint32_t nshards;
    kvshm_blocks *blocks;           /* per shard, writer-private */
    kvshm_tree *trees;              /* per shard: the published tree */
    uint64_t *active, *frozen;      /* per shard memtable offsets */
    kvshm_mt_finger *fingers;       /* per shard: insertion hint of the active memtable */
    uint64_t *spare_mt;             /* per shard: a block for the next memtable, or 0 */
    /* slot file */
    int slot_fd;
    uint8_t *slot_base;
    uint64_t slot_bytes;
    struct kvshm_slothdr *sh;
    struct kvshm_slot *slots;
    uint32_t nslots;
    uint64_t *evicted_epoch;        /* per slot: epoch value ignored since eviction */
    kvshm_spin idle_spin;           /* kvshm_writer_idle_wait's spin budget */
    int membarrier_ok;
    int err_no;
};

struct kvshm_reader {
    kvshm_seg seg;
    const struct kvshm_hdr *hdr;
    const uint64_t *stripes;        /* key-stripe stamps (layout.h) */
    const struct kvshm_shard *shards;
    uint32_t nshards;
    uint64_t generation;
    char *slot_name;
    int slot_fd;                    /* our open file description: holds the OFD lock */
    uint8_t *slot_base;
    uint64_t slot_bytes;
    struct kvshm_slothdr *sh;
    struct kvshm_slot *slot;        /* our slot (written only by us, and the writer) */
    uint32_t slot_idx;
    uint64_t gen_seen;              /* slot generation at our last leave */
    int fenced;                     /* membarrier unavailable: fence on enter */
    int in_section;                 /* inside kvshm_reader_enter/leave */
    unsigned fork_gen;              /* kvshmi_fork_gen when the slot was claimed */
    int err_no;
    struct kvshmi_miss_credit *miss_credit; /* per shard (kvshm_reader_miss_wanted) */
};

/* A reader's large-miss reports its shard's live bytes do not show yet: the
 * bytes reported since the writer last loaded, so that a burst of misses
 * faster than the writer's loads is not all reported into the same free
 * room (kvshm_reader_miss_wanted). */
struct kvshmi_miss_credit {
    uint64_t live;       /* the shard's used - retired bytes when last looked at */
    uint64_t reported;   /* cached bytes of reports not seen loaded since */
    uint64_t since_ms;   /* when the oldest of them was sent (kvshmi_now_ms) */
};

extern unsigned kvshmi_fork_gen;

/* What the registry of a served file names (attach.c). */
typedef struct reg_info {
    uint64_t generation;
    char segment[96], slots[96], socket[96], table[136], state[16];
} reg_info;

/* 1 and *ri filled if a live writer holds the registry at `reg_path` and
 * says ready (not a client replaying a dead one: the text is still the dead
 * one's), else 0. One open, fcntl and pread. Any process and thread. */
int kvshmi_registry_read(const char *reg_path, reg_info *ri);

/* 1 if a writer (not a client replaying a dead one) holds the registry
 * lock at `reg_path`, whatever its text says: a writer that took over from
 * a dead one shows its predecessor's text, "ready" with a socket nobody
 * listens on, until it has replayed and serves. One open and fcntl. Any
 * process and thread. */
int kvshmi_registry_writer_locked(const char *reg_path);

/* CLOCK_MONOTONIC in milliseconds (attach.c). */
uint64_t kvshmi_now_ms(void);

/* A blocking SOCK_SEQPACKET connection (close-on-exec) to the writer's
 * abstract socket `name` (attach.c). The descriptor, or -1 (errno). */
int kvshmi_sock_connect(const char *name);

/* Attach descriptor `fd` to the message `mh` as SCM_RIGHTS ancillary data,
 * in the caller's buffer cbuf (attach.c). */
struct msghdr;
void kvshmi_msg_pass_fd(struct msghdr *mh, char *cbuf, int fd);

/* kvshmi_fork_gen, with its fork handler installed first (slots.c): a value
 * that changes in every forked child. */
unsigned kvshmi_fork_generation(void);

/* Precondition of every "writer only" function: called by the process that
 * created the segment (not a forked child of it). Assertion builds only. */
#define KVSHMI_WRITER_ONLY(w) KV_ASSERT((w) != NULL && (w)->pid == getpid())

/* slots.c */
kvshm_status kvshmi_slots_create(kvshm_writer *w);
kvshm_status kvshmi_slots_open(kvshm_reader *r, const char *slot_name);
/* The free-core gate (spinwait.h) of a client waiting on the writer: r's
 * slot-file spinner count, the writer's sleeping flag and r's slot mark. */
void kvshmi_reader_gate(kvshm_reader *r, kvshm_spin_gate *g);
kvshm_status kvshmi_slot_claim(kvshm_reader *r);
void kvshmi_slot_release(kvshm_reader *r);
kvshm_status kvshmi_rehome(kvshm_reader *r);
void kvshmi_membarrier_register(kvshm_reader *r);

/* segment.c */
/* Give a newly created object of the writer its access: fchown to cfg->gid
 * and mode 0660 with cfg->group_access, else mode 0600 (an fchmod, so the
 * umask never narrows or widens it). 0, or -1 with errno set. */
int kvshmi_set_access(int fd, const kvshm_config *cfg);
uint64_t kvshmi_layout_hash(void);

/* segment.c: what an assertion or panic report prints about this process's
 * segments (kv_assert_set_context): the generation of the segment it writes,
 * and of the one its last reader handle maps with that handle's slot.
 * Generation 0 clears the role. */
enum { KVSHMI_ROLE_WRITER = 1, KVSHMI_ROLE_READER = 2 };
void kvshmi_assert_context(int role, uint64_t generation, uint32_t slot);

/* view.c */
kvshm_status kvshmi_publish_view(kvshm_writer *w, uint32_t shard, uint64_t preallocated);
/* Give the shard a spare memtable block if it has none and one can be
 * allocated (a reclaimed memtable's block is the usual source). Writer only. */
void kvshmi_refill_spare(kvshm_writer *w, uint32_t shard);

/*
 * Enter an epoch: read the global epoch and store it in our slot. One load
 * and one plain (release) store; the StoreLoad ordering against the lookups
 * that follow is supplied by the writer's membarrier(GLOBAL_EXPEDITED), or by
 * the fence below when this process could not register for it.
 */
static inline void kvshmi_enter(kvshm_reader *r)
{
    uint64_t e = kv_atomic_load_acquire64(&r->hdr->h_epoch);
    kv_atomic_store_release64(&r->slot->sl_epoch, e);
    if (__builtin_expect(r->fenced, 0)) kv_atomic_fence_seq_cst();
    else kv_compiler_barrier();
}

/*
 * Leave: re-check the slot generation after all lookups (acquire fence, so
 * they are ordered before it), then clear the epoch with a release store.
 * Returns 1 when the writer evicted us during the section: whatever was read
 * must be discarded. The acquire load of the generation also guarantees that
 * the retry's enter reads an epoch newer than the evicted one (the writer
 * bumps the epoch before the generation).
 */
static inline int kvshmi_leave(kvshm_reader *r)
{
    kv_atomic_fence_acquire();
    uint64_t g = kv_atomic_load_acquire64(&r->slot->sl_gen);
    kv_atomic_store_release64(&r->slot->sl_epoch, 0);
    if (__builtin_expect(g != r->gen_seen, 0)) { r->gen_seen = g; return 1; }
    return 0;
}

#endif /* KVSHM_INTERNAL_H */
