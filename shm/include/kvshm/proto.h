/*
 * kvshm/proto.h -- what the writer process (workers/kvault-writer) and the
 * attach side (shm/attach.c, kv_attach) agree on besides the segment itself:
 * the registry file, the submission-ring record formats and the messages
 * on the writer's unix socket (DESIGN.md, "The shared segment", "Write path").
 *
 * Registry file `<db>-kvault` (beside the database). The writer holds an
 * F_OFD_SETLK write lock on the whole file while it is alive; a process that
 * sees no such lock (F_OFD_GETLK) knows no writer serves the file. Content,
 * text, one `name=value` per line, rewritten in one pwrite by the writer:
 *
 *     kvault-registry=1
 *     layout=<kvshm_layout_hash(), 16 hex digits>
 *     generation=<writer incarnation, decimal>
 *     pid=<writer pid>
 *     table=<key-value table served>
 *     segment=</shm name of the data segment>
 *     slots=</shm name of the slot file>
 *     socket=<abstract unix socket name, without the leading NUL>
 *     state=<ready|stopped>
 *
 * Submission-ring records (kvshm/ring.h; type = KVSHM_REC_*), payload:
 *     PUT    u32 klen, u32 reserved, key[klen], value[rest]
 *     DEL    u32 klen, u32 reserved, key[klen]
 *     MISS   u32 klen, u32 reserved, key[klen]     (load it into the cache)
 *     SYNC   empty                                  (commit promptly)
 *     STATS  u64 hits, u64 misses                   (increments since last STATS)
 *
 * Socket: SOCK_SEQPACKET in the abstract namespace; every message is one
 * packet of struct kvshm_msg followed by `m_len` payload bytes; requests
 * that pass a descriptor carry it as SCM_RIGHTS ancillary data.
 *     ATTACH     fd = the client's ring memfd; payload kvshm_attach_req.
 *                reply: status, m_arg = generation.
 *     PUT_FILE   fd = source file (read from its current offset);
 *                m_arg = size in bytes; payload u64 chunk, key.
 *     FEATURE    payload = feature name (kohakuvault_meta kv_features)
 *     OPTIMIZE   PRAGMA optimize; VACUUM
 *     CHECKPOINT WAL checkpoint
 *     STATUS     reply payload: `name=value` lines (segment figures)
 * Replies are struct kvshm_msg with m_type = the request's type | REPLY,
 * m_status a kv_status value (0 = ok) and an optional message payload.
 */
#ifndef KVSHM_PROTO_H
#define KVSHM_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define KVSHM_REGISTRY_SUFFIX "-kvault"

/* Copy the value of line `name=value` of registry text `text` (NUL
 * terminated) into out (cap bytes, NUL terminated). Returns 0, or -1 when
 * the name is absent or the value does not fit. Any process; pure. */
int kvshm_registry_field(const char *text, const char *name, char *out, size_t cap);
#define KVSHM_PROTO_MAGIC 0x4b565031u /* "KVP1" */

/* ring record types */
#define KVSHM_REC_PUT   1u
#define KVSHM_REC_DEL   2u
#define KVSHM_REC_MISS  3u
#define KVSHM_REC_SYNC  4u
#define KVSHM_REC_STATS 5u
#define KVSHM_REC_KEYHDR 8u /* bytes before the key in PUT/DEL/MISS */

/* socket message types */
#define KVSHM_MSG_ATTACH     1u
#define KVSHM_MSG_PUT_FILE   2u
#define KVSHM_MSG_FEATURE    3u
#define KVSHM_MSG_OPTIMIZE   4u
#define KVSHM_MSG_CHECKPOINT 5u
#define KVSHM_MSG_STATUS     6u
#define KVSHM_MSG_REPLY      0x100u
#define KVSHM_MSG_MAX        (64u * 1024u)   /* largest packet, header included */

struct kvshm_msg {
    uint32_t m_magic;   /* KVSHM_PROTO_MAGIC */
    uint32_t m_type;    /* KVSHM_MSG_* (| KVSHM_MSG_REPLY in replies) */
    int32_t  m_status;  /* replies: kv_status; requests: 0 */
    uint32_t m_len;     /* payload bytes after this header */
    uint64_t m_arg;     /* per type (size, generation) */
};
_Static_assert(sizeof(struct kvshm_msg) == 24, "msg size");

struct kvshm_attach_req {
    uint32_t a_pid;     /* client pid (diagnostics) */
    uint32_t a_slot;    /* slot the client claimed in the slot file */
    uint64_t a_generation; /* segment generation the client mapped */
};

#endif /* KVSHM_PROTO_H */
