/*
 * kvshm/proto.h -- what the writer process (workers/kvault-writer) and the
 * attach side (shm/attach.c, kv_attach) agree on besides the segment itself:
 * the registry file, the submission-ring record formats and the messages
 * on the writer's unix socket (docs/shared-mode.md, "How it works" and "Write modes").
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
 *     EXEC       one table operation (kvshm/ops.h): payload = struct
 *                kvshm_exec_id (which client, which of its operations),
 *                then the encoded operation (m_arg 0), or, when it does not
 *                fit in one packet, the kvshm_exec_id alone and fd = a memfd
 *                holding the operation from offset 0, m_arg = its byte
 *                length (1..KVSHM_OP_MAX_BYTES). The writer applies it,
 *                commits, and replies with m_status = the operation's
 *                kv_status and as payload its result (kvshm/ops.h) or, on
 *                failure, the engine's message. A result larger than a
 *                packet is written into the request's memfd from offset 0
 *                instead: payload empty, m_arg = its length (an inline
 *                reply has m_arg 0). An operation whose id the writer finds
 *                applied already (a re-send after a writer died between
 *                its commit and its reply) is not applied again: the reply
 *                carries the recorded status and result (exactly once,
 *                kvault/oprec.h).
 *     EXEC_END   payload = struct kvshm_exec_id of a client handle that is
 *                closing (x_seq: its last operation): the writer forgets
 *                the handle's record. No reply.
 * Replies are struct kvshm_msg with m_type = the request's type | REPLY,
 * m_status a kv_status value (0 = ok) and an optional message payload.
 */
#ifndef KVSHM_PROTO_H
#define KVSHM_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "kvshm/kvshm.h"

#define KVSHM_REGISTRY_SUFFIX "-kvault"

/* Copy the value of line `name=value` of registry text `text` (NUL
 * terminated) into out (cap bytes, NUL terminated). Returns 0, or -1 when
 * the name is absent or the value does not fit. Any process; pure. */
int kvshm_registry_field(const char *text, const char *name, char *out, size_t cap);

/* The fields of the registry a writer publishes (strings NUL terminated,
 * owned by the caller). */
typedef struct kvshm_registry {
    uint64_t generation;    /* writer incarnation */
    int pid;                /* writer pid */
    const char *table;      /* key-value table served */
    const char *segment;    /* shm name of the data segment */
    const char *slots;      /* shm name of the slot file */
    const char *socket;     /* abstract socket name, without the leading NUL */
    const char *state;      /* "ready" or "stopped" */
    uint64_t cluster_node;  /* 0; or, for a writer of a cluster node, its node id:
                               the file is the node's copy of the cluster's data,
                               written by its writer alone (never replayed or
                               written by a client) */
} kvshm_registry;

/* Render the registry text of `reg` (every line above, in that order, with
 * layout = this build's segment layout hash; `cluster=<id>` before the
 * state line only when cluster_node is nonzero), then the last line
 * `end=<bytes before it>`) into buf (cap bytes, NUL terminated). Returns the text length in bytes, or -1 when it does not fit.
 * Any process (the writer publishes it); pure. */
int kvshm_registry_format(const kvshm_registry *reg, char *buf, size_t cap);

/* The node id on the `cluster=` line of registry text `text` (a cluster
 * node's writer wrote it: kvshm_registry.cluster_node), or 0 without one.
 * Any process; pure. */
uint64_t kvshm_registry_cluster_node(const char *text);

/* 1 if registry text `text` names this build's segment layout (its layout
 * line equals what kvshm_registry_format writes), else 0: the segment it
 * names cannot be attached by this build. Any process; pure. */
int kvshm_registry_layout_ok(const char *text);

/* 1 if registry text `text` (NUL terminated) is whole: its first `end=`
 * line counts the bytes before it; the text is then cut after that line
 * (what follows is a longer predecessor's tail, before the writer
 * truncated the file). 0 for an empty or partial text, or one whose end
 * line counts other bytes (a reader saw the file while a writer rewrote
 * it: read again). A read torn between two texts whose end lines sit at
 * the same offset is not detected. Pure; any process. */
int kvshm_registry_complete(char *text);

#define KVSHM_PROTO_MAGIC 0x4b565031u /* "KVP1" */

/* ring record types */
#define KVSHM_REC_PUT   1u
#define KVSHM_REC_DEL   2u
#define KVSHM_REC_MISS  3u
#define KVSHM_REC_SYNC  4u
#define KVSHM_REC_STATS 5u
#define KVSHM_REC_KEYHDR 8u /* bytes before the key in PUT/DEL/MISS */

/* Payload bytes of a PUT/DEL/MISS record with these key and value lengths. */
static inline size_t kvshm_keyrec_bytes(size_t klen, size_t vlen)
{ return KVSHM_REC_KEYHDR + klen + vlen; }
/* Write a PUT/DEL/MISS payload into dst (kvshm_keyrec_bytes(klen, vlen)
 * bytes: a ring reservation): the header, key[klen], then val[vlen] (vlen 0
 * for DEL and MISS; val may then be NULL). Producer side; pure. */
void kvshm_keyrec_encode(void *dst, const void *key, uint32_t klen, const void *val,
                         uint32_t vlen);
/* Split an untrusted PUT/DEL/MISS payload of len bytes into the key (key,
 * klen) and the bytes after it (val, vlen: the value of a PUT). Pointers are
 * into the payload. Returns 0, or -1 when malformed (shorter than the header,
 * klen 0 or above KVSHM_MAX_KEY, or the key runs past len). Consumer side
 * (the writer, which must copy what it applies: the producer may still change
 * the payload); pure. */
int kvshm_keyrec_decode(const void *payload, uint32_t len, const uint8_t **key,
                        uint32_t *klen, const uint8_t **val, uint32_t *vlen);

/* Size of a STATS record's payload: u64 hits, u64 misses (native order). */
#define KVSHM_REC_STATS_BYTES 16u

/* Check one ring record's payload against its type, as the writer must
 * before acting on it: PUT, DEL and MISS hold a key record that decodes
 * (kvshm_keyrec_decode); SYNC holds nothing; STATS exactly
 * KVSHM_REC_STATS_BYTES. Returns 0 when well formed, -1 for a malformed
 * record or an unknown type (the writer drops the client that sent it).
 * Reads only len bytes at payload; pure. */
int kvshm_rec_check(uint32_t type, const void *payload, uint32_t len);

/* socket message types */
#define KVSHM_MSG_ATTACH     1u
#define KVSHM_MSG_PUT_FILE   2u
#define KVSHM_MSG_FEATURE    3u
#define KVSHM_MSG_OPTIMIZE   4u
#define KVSHM_MSG_CHECKPOINT 5u
#define KVSHM_MSG_STATUS     6u
#define KVSHM_MSG_EXEC       7u
#define KVSHM_MSG_EXEC_END   8u
#define KVSHM_MSG_CLUSTER    9u   /* membership change: "add ID@HOST:PORT", "remove ID" */
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

/* The id of one EXEC operation, first in its payload: a random token per
 * client handle (getrandom) and the handle's operation number (1, 2, ...;
 * a re-send of the same call keeps it). */
#define KVSHM_EXEC_TOKEN 16u
struct kvshm_exec_id {
    uint8_t x_token[KVSHM_EXEC_TOKEN];
    uint64_t x_seq;     /* >= 1 */
};
_Static_assert(sizeof(struct kvshm_exec_id) == 24, "exec id size");

/* Longest FEATURE payload (a feature name), bytes. */
#define KVSHM_FEATURE_MAX 4095u

/* Validate one control-socket request packet as the writer receives it:
 * `buf`, `n` = the bytes one recvmsg returned (any alignment). On success
 * copies the header to *m, points *payload at its m_len payload bytes inside
 * buf and returns 0. Returns -1 and points *why at a static message when the
 * packet is shorter than the header, its magic is wrong, m_len is not the
 * rest of the packet, the type is not a request type, or the payload does not
 * fit its type: ATTACH carries a struct kvshm_attach_req; PUT_FILE a u64
 * chunk size and a key of 1..KVSHM_MAX_KEY bytes; FEATURE 1..KVSHM_FEATURE_MAX
 * bytes; CLUSTER 1..KVSHM_FEATURE_MAX bytes of text; OPTIMIZE, CHECKPOINT
 * and STATUS take no payload; EXEC carries a
 * struct kvshm_exec_id with x_seq >= 1, then either an operation of at
 * least its header (m_arg 0) or nothing with m_arg = the byte length of the
 * memfd passed (1..KVSHM_OP_MAX_BYTES; the operation itself is checked by
 * kvshm_op_decode); EXEC_END exactly a kvshm_exec_id. Descriptors passed
 * with the packet are the caller's to check. Pure; any thread. The writer
 * trusts nothing a client sends: this is the only reading of a request's
 * header and sizes (fuzz/fuzz_msg.c). */
int kvshm_msg_parse(const void *buf, size_t n, struct kvshm_msg *m, const uint8_t **payload,
                    const char **why);


#endif /* KVSHM_PROTO_H */
