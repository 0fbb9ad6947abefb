/*
 * kvshm/ops.h -- one encoded table operation, as a client sends it to the
 * writer that serves its file (KVSHM_MSG_EXEC, kvshm/proto.h;
 * docs/shared-mode.md, "Every class through the writer").
 *
 * The writer owns every write to its file. A store other than the served
 * KV table (TextVault, VectorKVault, ColumnVault, a KVault on another
 * table) sends each write as
 * one operation: the class, the operation, the table, the parameters the
 * writer needs to open its own engine handle on that table, then the
 * engine-level arguments. The writer applies it with the same engine call
 * the embedded binding makes and replies once it is committed.
 *
 * Encoding (native byte order: both ends run on one machine):
 *
 *     u32 magic            KVSHM_OP_MAGIC
 *     u8  class            KVSHM_OPC_*
 *     u8  op               KVSHM_OP_* (valid for the class)
 *     u16 nopen            open parameters, 0..KVSHM_OP_MAX_FIELDS
 *     u16 nargs            arguments, 0..KVSHM_OP_MAX_FIELDS
 *     u16 reserved         0
 *     u32 tlen, table[tlen]   ASCII identifier [A-Za-z_][A-Za-z0-9_]*, 1..128
 *     nopen fields, then nargs fields, each:
 *         u32 len, bytes[len]   (len KVSHM_OP_ABSENT: no bytes, "None")
 *
 * and nothing after the last field. An integer field is 8 bytes (i64).
 * What each class puts in its fields is the executor's contract
 * (workers/exec.c, and the table in docs/shared-mode.md):
 *
 *   TEXT   open:   one field per column name (UTF-8, no NUL)
 *          INSERT  args: value, text[0..ncols), [id (i64 > 0: the
 *                  document id, from a lease of the client)]   -> i64 id
 *          LEASE   args: n (i64, 1..65536): a block of n ids for
 *                  the client's inserts (kvault/oprec.h)       -> i64 first
 *          LEASE_END args: next, end (i64): the unused tail of a
 *                  block, given back                           -> (empty)
 *          UPDATE  args: id, value|ABSENT, [text[0..ncols)]    -> (empty)
 *          DELETE  args: id                                    -> u8 removed
 *          CLEAR   args: (none)                                -> (empty)
 *   VECTOR open:   dims, metric, elem (i64 each)
 *          INSERT  args: vector bytes, value                   -> i64 id
 *          INSERT_MANY args: n, vectors (n rows), then either nothing
 *                  (every value empty) or value lengths (n i64) and the
 *                  values back to back                         -> i64 ids[n]
 *          UPDATE  args: id, vector|ABSENT, value|ABSENT       -> (empty)
 *          DELETE  args: id                                    -> u8 removed
 *   COLUMN table:  col_meta (the vault's tables are fixed)
 *          open:   min_chunk_bytes, max_chunk_bytes (i64 each)
 *          COL_CREATE args: name, dtype, elem_size (i64; 0: variable-size
 *                  pair <name>_data/<name>_idx)                -> (empty)
 *          COL_DROP args: name                                 -> u8 deleted
 *          A column is named by col_id and idx_id (i64 each; idx_id 0:
 *          a fixed column, else the _data and _idx col_ids of a pair),
 *          and, as the last argument, `pname`: the col_meta name of row
 *          col_id (the column's name; a pair's <name>_data), which the
 *          writer checks so a handle whose column was deleted, and its id
 *          reused, fails as it does embedded instead of writing elsewhere:
 *          APPEND  args: col_id, idx_id, elements back to back, then for
 *                  a pair their lengths (n i64), pname         -> (empty)
 *          WRITE   args: col_id, idx_id, start, elements[, lengths], pname
 *          INSERT  args: col_id, idx_id, index, element, pname -> (empty)
 *          DELETE  args: col_id, idx_id, index, pname          -> (empty)
 *          CLEAR   args: col_id, idx_id, pname                 -> (empty)
 *   KV     a KVault table other than the one the writer serves through
 *          its segment (which it refuses: its writes go through the ring).
 *          Keys and values are the bytes the embedded binding stores
 *          (values encoded by the client: auto-pack, headers).
 *          open:   chunk_size (i64, > 0: the streaming chunk, bytes)
 *          PUT     args: key, value                            -> (empty)
 *          PUT_MANY args: key lengths (n i64), keys back to back, value
 *                  lengths (n i64), values back to back        -> (empty)
 *          DELETE  args: key                                   -> u8 removed
 *          DEL_MANY args: key lengths (n i64), keys back to back
 *                                                              -> i64 removed
 *          FEATURE args: name (1..64 bytes, no comma)          -> (empty)
 *
 * Layering: pure byte handling; encoding appends to an engine kv_buf.
 */
#ifndef KVSHM_OPS_H
#define KVSHM_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "kvault/codec.h"

#define KVSHM_OP_MAGIC 0x314f564bu /* "KVO1" */
#define KVSHM_OP_HDR 12u           /* bytes of the fixed header */
#define KVSHM_OP_MAX_FIELDS 1024u  /* per section (open parameters, arguments) */
#define KVSHM_OP_TABLE_MAX 128u    /* longest table name, bytes */
#define KVSHM_OP_ABSENT 0xffffffffu
/* Largest encoded operation the writer accepts (bytes; passed in a memfd
 * when above what one socket packet holds). */
#define KVSHM_OP_MAX_BYTES ((uint64_t)1 << 30)

/* classes */
#define KVSHM_OPC_TEXT   1u
#define KVSHM_OPC_VECTOR 2u
#define KVSHM_OPC_COLUMN 3u
#define KVSHM_OPC_KV     4u

/* operations */
#define KVSHM_OP_INSERT      1u
#define KVSHM_OP_UPDATE      2u
#define KVSHM_OP_DELETE      3u
#define KVSHM_OP_CLEAR       4u
#define KVSHM_OP_INSERT_MANY 5u
#define KVSHM_OP_COL_CREATE  6u
#define KVSHM_OP_COL_DROP    7u
#define KVSHM_OP_APPEND      8u
#define KVSHM_OP_WRITE       9u
#define KVSHM_OP_PUT         10u
#define KVSHM_OP_PUT_MANY    11u
#define KVSHM_OP_DEL_MANY    12u
#define KVSHM_OP_FEATURE     13u
#define KVSHM_OP_LEASE       14u
#define KVSHM_OP_LEASE_END   15u

/* One field of a decoded operation: `len` bytes at `p` (into the decoded
 * buffer), or absent (p NULL, len 0). */
typedef struct kvshm_op_field {
    const uint8_t *p;
    uint32_t len;
    int present;
} kvshm_op_field;

/* A decoded operation: pointers into the buffer given to kvshm_op_decode,
 * valid while it lives. `key`/`key_len` span the table name and the open
 * parameters (with the class in key_class): two operations with equal
 * class and key bytes open the same engine handle. */
typedef struct kvshm_op {
    uint8_t cls, op;
    const char *table;        /* not NUL-terminated */
    uint32_t table_len;
    uint32_t nopen, nargs;
    kvshm_op_field *open;     /* nopen fields (into `fields`) */
    kvshm_op_field *args;     /* nargs fields */
    const uint8_t *key;
    size_t key_len;
    kvshm_op_field fields[2 * KVSHM_OP_MAX_FIELDS];
} kvshm_op;

/* Check and split an untrusted encoded operation of `len` bytes at `buf`
 * (any alignment). Fills *op and returns 0, or returns -1 and points *why at
 * a static message: short header, bad magic, unknown class or operation,
 * field counts above KVSHM_OP_MAX_FIELDS or not those of the operation,
 * nonzero reserved bytes, a table name that is not an identifier of
 * 1..KVSHM_OP_TABLE_MAX bytes, a field running past the end, an integer
 * field not 8 bytes, bytes after the last field. Reads only [buf, buf+len).
 * Pure; any thread. The writer's one reading of an operation
 * (fuzz/fuzz_ops.c). */
int kvshm_op_decode(const void *buf, size_t len, kvshm_op *op, const char **why);

/* i64 of an 8-byte field (kvshm_op_decode checked the size of every
 * integer field it knows of; others: returns 0 and *ok = 0). */
int64_t kvshm_op_i64(const kvshm_op_field *f, int *ok);

/* Encoder: appends one operation to a kv_buf. Call begin, the open
 * parameters (add/add_i64/add_absent), kvshm_op_args, the arguments, then
 * end, which patches the counts; failures (memory, too many fields) are
 * kept and reported by end. One thread per encoder. */
typedef struct kvshm_op_enc {
    kv_buf *b;
    size_t start;             /* offset of the header in b */
    uint32_t nopen, nargs;
    int in_args;
    kv_status st;
} kvshm_op_enc;

void kvshm_op_begin(kvshm_op_enc *e, kv_buf *b, unsigned cls, unsigned op, const char *table);
void kvshm_op_add(kvshm_op_enc *e, const void *p, size_t len);
/* One field made of n parts back to back (parts[i]: lens[i] bytes). */
void kvshm_op_add_gather(kvshm_op_enc *e, const void *const *parts, const size_t *lens,
                         size_t n);
void kvshm_op_add_i64(kvshm_op_enc *e, int64_t v);
void kvshm_op_add_absent(kvshm_op_enc *e);
/* The fields added next are arguments. */
void kvshm_op_args(kvshm_op_enc *e);
/* KV_OK; KV_NOMEM; KV_INVALID (a field above 4 GiB - 2 or too many fields,
 * or a table name that is not 1..KVSHM_OP_TABLE_MAX bytes). */
kv_status kvshm_op_end(kvshm_op_enc *e);

#endif /* KVSHM_OPS_H */
