/* test_shm_ops.c - the table operations of KVSHM_MSG_EXEC (shm/ops.c,
 * kvshm/ops.h): what the encoder writes decodes to the same fields, every
 * shape the executor relies on is checked, and every truncation or change of
 * a length or count is refused; the EXEC request's sizes in kvshm_msg_parse. */
#include <stdlib.h>
#include <string.h>

#include "kvshm/ops.h"
#include "kvshm/proto.h"
#include "shm_test_util.h"

TestSuite(shm_ops, .timeout = 60);

static kvshm_op g_op; /* large: kept off the stack */

static void enc_text_insert(kv_buf *b, const char *table)
{
    kvshm_op_enc e;
    kvshm_op_begin(&e, b, KVSHM_OPC_TEXT, KVSHM_OP_INSERT, table);
    kvshm_op_add(&e, "title", 5);
    kvshm_op_add(&e, "body", 4);
    kvshm_op_args(&e);
    kvshm_op_add(&e, "\x01\x02", 2);   /* value */
    kvshm_op_add(&e, "hello", 5);
    kvshm_op_add(&e, "", 0);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
}

Test(shm_ops, text_insert_round_trip)
{
    kv_buf b;
    kv_buf_init(&b);
    enc_text_insert(&b, "text_vault");
    const char *why = NULL;
    cr_assert_eq(kvshm_op_decode(b.data, b.len, &g_op, &why), 0, "%s", why);
    cr_assert_eq(g_op.cls, KVSHM_OPC_TEXT);
    cr_assert_eq(g_op.op, KVSHM_OP_INSERT);
    cr_assert_eq(g_op.table_len, 10);
    cr_assert(!memcmp(g_op.table, "text_vault", 10));
    cr_assert_eq(g_op.nopen, 2);
    cr_assert_eq(g_op.nargs, 3);
    cr_assert(g_op.open[1].present && g_op.open[1].len == 4 && !memcmp(g_op.open[1].p, "body", 4));
    cr_assert(g_op.args[0].len == 2 && g_op.args[0].p[1] == 2);
    cr_assert(g_op.args[2].present && g_op.args[2].len == 0);
    /* the key spans the table and the open parameters: same store, same key */
    kvshm_op first = g_op;
    kv_buf b2;
    kv_buf_init(&b2);
    kvshm_op_enc e;
    kvshm_op_begin(&e, &b2, KVSHM_OPC_TEXT, KVSHM_OP_DELETE, "text_vault");
    kvshm_op_add(&e, "title", 5);
    kvshm_op_add(&e, "body", 4);
    kvshm_op_args(&e);
    kvshm_op_add_i64(&e, 42);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert_eq(kvshm_op_decode(b2.data, b2.len, &g_op, &why), 0, "%s", why);
    cr_assert_eq(g_op.key_len, first.key_len);
    cr_assert(!memcmp(g_op.key, first.key, first.key_len));
    int ok = 0;
    cr_assert_eq(kvshm_op_i64(&g_op.args[0], &ok), 42);
    cr_assert(ok);
    kv_buf_free(&b);
    kv_buf_free(&b2);
}

Test(shm_ops, every_truncation_and_trailing_byte_is_refused)
{
    kv_buf b;
    kv_buf_init(&b);
    enc_text_insert(&b, "t");
    const char *why;
    for (size_t n = 0; n < b.len; n++)
        cr_assert_eq(kvshm_op_decode(b.data, n, &g_op, &why), -1, "prefix of %zu bytes", n);
    uint8_t *more = malloc(b.len + 1);
    memcpy(more, b.data, b.len);
    more[b.len] = 0;
    cr_assert_eq(kvshm_op_decode(more, b.len + 1, &g_op, &why), -1);
    free(more);
    kv_buf_free(&b);
}

Test(shm_ops, lengths_counts_and_names_are_checked)
{
    kv_buf b;
    kv_buf_init(&b);
    enc_text_insert(&b, "t");
    const char *why;
    uint8_t *p = malloc(b.len);
    /* a field length running past the end (the value's, after the header,
     * the table and two column names) */
    size_t val_len_at = KVSHM_OP_HDR + 4 + 1 + 4 + 5 + 4 + 4;
    memcpy(p, b.data, b.len);
    uint32_t huge = 0x7fffffffu;
    memcpy(p + val_len_at, &huge, 4);
    cr_assert_eq(kvshm_op_decode(p, b.len, &g_op, &why), -1);
    /* counts that do not match the operation's shape */
    memcpy(p, b.data, b.len);
    uint16_t nargs = 2;
    memcpy(p + 8, &nargs, 2);
    cr_assert_eq(kvshm_op_decode(p, b.len, &g_op, &why), -1);
    nargs = 0xffff;
    memcpy(p + 8, &nargs, 2);
    cr_assert_eq(kvshm_op_decode(p, b.len, &g_op, &why), -1);
    /* unknown class and operation, bad magic, reserved bytes */
    memcpy(p, b.data, b.len);
    p[4] = 9;
    cr_assert_eq(kvshm_op_decode(p, b.len, &g_op, &why), -1);
    memcpy(p, b.data, b.len);
    p[5] = 77;
    cr_assert_eq(kvshm_op_decode(p, b.len, &g_op, &why), -1);
    memcpy(p, b.data, b.len);
    p[0] ^= 1;
    cr_assert_eq(kvshm_op_decode(p, b.len, &g_op, &why), -1);
    memcpy(p, b.data, b.len);
    p[10] = 1;
    cr_assert_eq(kvshm_op_decode(p, b.len, &g_op, &why), -1);
    /* a table name that is not an identifier */
    memcpy(p, b.data, b.len);
    p[KVSHM_OP_HDR + 4] = '"';
    cr_assert_eq(kvshm_op_decode(p, b.len, &g_op, &why), -1);
    cr_assert(strstr(why, "identifier"));
    free(p);
    kv_buf_free(&b);
    /* the encoder refuses what the decoder would */
    kv_buf_init(&b);
    kvshm_op_enc e;
    kvshm_op_begin(&e, &b, KVSHM_OPC_TEXT, KVSHM_OP_CLEAR, "");
    cr_assert_eq(kvshm_op_end(&e), KV_INVALID);
    kv_buf_free(&b);
}

/* A vector operation on table "vectors" (4 dims, cosine, f32), at its arguments. */
static void begin_vector(kvshm_op_enc *e, kv_buf *b, unsigned op)
{
    kvshm_op_begin(e, b, KVSHM_OPC_VECTOR, op, "vectors");
    kvshm_op_add_i64(e, 4);
    kvshm_op_add_i64(e, 0);
    kvshm_op_add_i64(e, 0);
    kvshm_op_args(e);
}

Test(shm_ops, vector_shapes)
{
    kv_buf b;
    kv_buf_init(&b);
    kvshm_op_enc e;
    const char *why = NULL;
    /* insert_many: 3 rows, value lengths and values back to back */
    size_t lens[3] = {1, 0, 2};
    const void *parts[3] = {"a", "", "bc"};
    begin_vector(&e, &b, KVSHM_OP_INSERT_MANY);
    kvshm_op_add_i64(&e, 3);
    kvshm_op_add(&e, "0123456789abcdef0123456789abcdef0123456789abcdef", 48);
    kvshm_op_add(&e, lens, sizeof lens);
    kvshm_op_add_gather(&e, parts, lens, 3);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert_eq(kvshm_op_decode(b.data, b.len, &g_op, &why), 0, "%s", why);
    cr_assert_eq(g_op.args[3].len, 3);
    /* value lengths that do not add up are refused */
    size_t bad_at = b.len - 3 - 4 - 24 + 16;   /* the third length */
    int64_t three = 3;
    memcpy(b.data + bad_at, &three, 8);
    cr_assert_eq(kvshm_op_decode(b.data, b.len, &g_op, &why), -1);
    kv_buf_free(&b);
    /* update with nothing to update */
    kv_buf_init(&b);
    begin_vector(&e, &b, KVSHM_OP_UPDATE);
    kvshm_op_add_i64(&e, 1);
    kvshm_op_add_absent(&e);
    kvshm_op_add_absent(&e);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert_eq(kvshm_op_decode(b.data, b.len, &g_op, &why), -1);
    kv_buf_free(&b);
}

Test(shm_ops, exec_request_sizes)
{
    const size_t idn = sizeof(struct kvshm_exec_id);
    uint8_t pkt[sizeof(struct kvshm_msg) + sizeof(struct kvshm_exec_id) + KVSHM_OP_HDR];
    struct kvshm_msg m = {.m_magic = KVSHM_PROTO_MAGIC, .m_type = KVSHM_MSG_EXEC};
    struct kvshm_exec_id id = {.x_token = {1, 2, 3}, .x_seq = 1};
    struct kvshm_msg out;
    const uint8_t *pl;
    const char *why;
    memset(pkt, 0, sizeof pkt);
    memcpy(pkt + sizeof m, &id, idn);
    /* inline: the id, then at least the operation header, m_arg 0 */
    m.m_len = (uint32_t)(idn + KVSHM_OP_HDR);
    memcpy(pkt, &m, sizeof m);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof pkt, &out, &pl, &why), 0);
    cr_assert_eq(pl, pkt + sizeof m);
    m.m_arg = 5;
    memcpy(pkt, &m, sizeof m);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof pkt, &out, &pl, &why), -1);
    /* an operation shorter than its header after the id */
    m.m_arg = 0;
    m.m_len = (uint32_t)(idn + KVSHM_OP_HDR - 1);
    memcpy(pkt, &m, sizeof m);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof pkt - 1, &out, &pl, &why), -1);
    /* in a memfd: the id alone, m_arg 1..KVSHM_OP_MAX_BYTES */
    m.m_len = (uint32_t)idn;
    m.m_arg = 100;
    memcpy(pkt, &m, sizeof m);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof m + idn, &out, &pl, &why), 0);
    m.m_arg = 0;
    memcpy(pkt, &m, sizeof m);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof m + idn, &out, &pl, &why), -1);
    m.m_arg = KVSHM_OP_MAX_BYTES + 1;
    memcpy(pkt, &m, sizeof m);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof m + idn, &out, &pl, &why), -1);
    /* no id, or operation number 0 */
    m.m_len = 0;
    m.m_arg = 100;
    memcpy(pkt, &m, sizeof m);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof m, &out, &pl, &why), -1);
    id.x_seq = 0;
    memcpy(pkt + sizeof m, &id, idn);
    m.m_len = (uint32_t)idn;
    memcpy(pkt, &m, sizeof m);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof m + idn, &out, &pl, &why), -1);
    /* EXEC_END: exactly an id */
    id.x_seq = 9;
    memcpy(pkt + sizeof m, &id, idn);
    m.m_type = KVSHM_MSG_EXEC_END;
    m.m_arg = 0;
    memcpy(pkt, &m, sizeof m);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof m + idn, &out, &pl, &why), 0);
    m.m_len = (uint32_t)(idn + 1);
    memcpy(pkt, &m, sizeof m);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof m + idn + 1, &out, &pl, &why), -1);
}

/* A column operation (chunk bounds 128 KiB .. 16 MiB), at its arguments:
 * col_id 3, idx_id `idx` (0: a fixed column) unless `vault_op`. */
static void begin_column(kvshm_op_enc *e, kv_buf *b, unsigned op, int64_t idx, int vault_op)
{
    kvshm_op_begin(e, b, KVSHM_OPC_COLUMN, op, "col_meta");
    kvshm_op_add_i64(e, 131072);
    kvshm_op_add_i64(e, 16777216);
    kvshm_op_args(e);
    if (vault_op)
        return;
    kvshm_op_add_i64(e, 3);
    kvshm_op_add_i64(e, idx);
}

static int decodes(const kv_buf *b)
{
    const char *why = NULL;
    return kvshm_op_decode(b->data, b->len, &g_op, &why) == 0;
}

Test(shm_ops, column_shapes)
{
    kv_buf b;
    kvshm_op_enc e;
    /* create and drop: names without NUL */
    kv_buf_init(&b);
    begin_column(&e, &b, KVSHM_OP_COL_CREATE, 0, 1);
    kvshm_op_add(&e, "prices", 6);
    kvshm_op_add(&e, "i64", 3);
    kvshm_op_add_i64(&e, 8);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(decodes(&b));
    cr_assert_eq(g_op.cls, KVSHM_OPC_COLUMN);
    cr_assert_eq(kvshm_op_i64(&g_op.open[1], NULL), 16777216);
    b.len = 0;
    begin_column(&e, &b, KVSHM_OP_COL_CREATE, 0, 1);
    kvshm_op_add(&e, "a\0b", 3);
    kvshm_op_add(&e, "i64", 3);
    kvshm_op_add_i64(&e, 8);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(!decodes(&b));
    b.len = 0;
    begin_column(&e, &b, KVSHM_OP_COL_DROP, 0, 1);
    kvshm_op_add(&e, "prices", 6);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(decodes(&b));
    /* append to a fixed column: col_id, idx_id 0, the elements */
    b.len = 0;
    begin_column(&e, &b, KVSHM_OP_APPEND, 0, 0);
    kvshm_op_add(&e, "0123456701234567", 16);
    kvshm_op_add(&e, "prices", 6);   /* the column's name, last */
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(decodes(&b));
    cr_assert_eq(g_op.args[2].len, 16);
    /* append to a pair: element lengths must cover the bytes exactly */
    size_t lens[2] = {3, 2};
    b.len = 0;
    begin_column(&e, &b, KVSHM_OP_APPEND, 4, 0);
    kvshm_op_add(&e, "abcde", 5);
    kvshm_op_add(&e, lens, sizeof lens);
    kvshm_op_add(&e, "prices", 6);   /* the column's name, last */
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(decodes(&b));
    int64_t four = 4;
    memcpy(b.data + b.len - 8 - (4 + 6), &four, 8);   /* the last length, before the name */
    cr_assert(!decodes(&b));
    /* a pair without lengths, a fixed column with them */
    b.len = 0;
    begin_column(&e, &b, KVSHM_OP_APPEND, 4, 0);
    kvshm_op_add(&e, "abcde", 5);
    kvshm_op_add(&e, "prices", 6);   /* the column's name, last */
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(!decodes(&b));
    b.len = 0;
    begin_column(&e, &b, KVSHM_OP_APPEND, 0, 0);
    kvshm_op_add(&e, "abcde", 5);
    kvshm_op_add(&e, lens, sizeof lens);
    kvshm_op_add(&e, "prices", 6);   /* the column's name, last */
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(!decodes(&b));
    /* write, insert, delete, clear */
    b.len = 0;
    begin_column(&e, &b, KVSHM_OP_WRITE, 4, 0);
    kvshm_op_add_i64(&e, 7);
    kvshm_op_add(&e, "abcde", 5);
    kvshm_op_add(&e, lens, sizeof lens);
    kvshm_op_add(&e, "prices", 6);   /* the column's name, last */
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(decodes(&b));
    b.len = 0;
    begin_column(&e, &b, KVSHM_OP_INSERT, 0, 0);
    kvshm_op_add_i64(&e, 0);
    kvshm_op_add(&e, "01234567", 8);
    kvshm_op_add(&e, "prices", 6);   /* the column's name, last */
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(decodes(&b));
    b.len = 0;
    begin_column(&e, &b, KVSHM_OP_DELETE, 0, 0);
    kvshm_op_add(&e, "idx", 3);   /* not an i64 */
    kvshm_op_add(&e, "prices", 6);   /* the column's name, last */
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(!decodes(&b));
    b.len = 0;
    begin_column(&e, &b, KVSHM_OP_CLEAR, 0, 0);
    kvshm_op_add(&e, "prices", 6);   /* the column's name, last */
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(decodes(&b));
    /* the column's name must come last, without NUL */
    b.len = 0;
    begin_column(&e, &b, KVSHM_OP_APPEND, 0, 0);
    kvshm_op_add(&e, "0123456701234567", 16);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(!decodes(&b));
    b.len = 0;
    begin_column(&e, &b, KVSHM_OP_CLEAR, 0, 0);
    kvshm_op_add(&e, "pri\0ces", 7);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(!decodes(&b));
    /* operations of other classes, open parameters of another shape */
    b.len = 0;
    begin_column(&e, &b, KVSHM_OP_INSERT_MANY, 0, 0);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(!decodes(&b));
    b.len = 0;
    kvshm_op_begin(&e, &b, KVSHM_OPC_COLUMN, KVSHM_OP_CLEAR, "col_meta");
    kvshm_op_add_i64(&e, 131072);
    kvshm_op_args(&e);
    kvshm_op_add_i64(&e, 3);
    kvshm_op_add_i64(&e, 0);
    cr_assert_eq(kvshm_op_end(&e), KV_OK);
    cr_assert(!decodes(&b));
    kv_buf_free(&b);
}

/* One KV operation on table "other": `chunk` as open parameter, then up to
 * four argument fields (len SIZE_MAX: absent), and whether it decodes. */
typedef struct kv_case {
    unsigned op;
    int64_t chunk;
    size_t nargs;
    struct { const void *p; size_t len; } a[4];
    int ok;
} kv_case;

/* KV operations (a KVault table the writer does not serve): the shapes the
 * executor relies on. */
Test(shm_ops, kv_shapes)
{
    static const int64_t kl[2] = {1, 2}, vl[2] = {3, 0};
    const kv_case cases[] = {
        /* an empty key and value are values; absent ones are not */
        {KVSHM_OP_PUT, 1 << 20, 2, {{"", 0}, {"", 0}}, 1},
        {KVSHM_OP_PUT, 4096, 2, {{"k", 1}, {NULL, SIZE_MAX}}, 0},
        /* the chunk size is part of the handle's key and must be positive */
        {KVSHM_OP_PUT, 0, 2, {{"k", 1}, {"v", 1}}, 0},
        /* put_many: lengths cover the bytes, as many values as keys */
        {KVSHM_OP_PUT_MANY, 4096, 4, {{kl, 16}, {"abc", 3}, {vl, 16}, {"xyz", 3}}, 1},
        {KVSHM_OP_PUT_MANY, 4096, 4, {{kl, 16}, {"abc", 3}, {vl, 8}, {"xyz", 3}}, 0},
        {KVSHM_OP_PUT_MANY, 4096, 4, {{kl, 16}, {"abcd", 4}, {vl, 16}, {"xyz", 3}}, 0},
        {KVSHM_OP_DELETE, 4096, 1, {{"k", 1}}, 1},
        {KVSHM_OP_DELETE, 4096, 2, {{"k", 1}, {"k", 1}}, 0},
        {KVSHM_OP_DEL_MANY, 4096, 2, {{kl, 16}, {"abc", 3}}, 1},
        {KVSHM_OP_DEL_MANY, 4096, 2, {{kl, 16}, {"ab", 2}}, 0},
        {KVSHM_OP_FEATURE, 4096, 1, {{"headers", 7}}, 1},
        {KVSHM_OP_FEATURE, 4096, 1, {{"a,b", 3}}, 0},
        /* an operation of another class is not a KV one */
        {KVSHM_OP_APPEND, 4096, 0, {{NULL, 0}}, 0},
    };
    kv_buf b;
    kv_buf_init(&b);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const kv_case *c = &cases[i];
        kvshm_op_enc e;
        b.len = 0;
        kvshm_op_begin(&e, &b, KVSHM_OPC_KV, c->op, "other");
        kvshm_op_add_i64(&e, c->chunk);
        kvshm_op_args(&e);
        for (size_t k = 0; k < c->nargs; k++) {
            if (c->a[k].len == SIZE_MAX)
                kvshm_op_add_absent(&e);
            else
                kvshm_op_add(&e, c->a[k].p, c->a[k].len);
        }
        cr_assert_eq(kvshm_op_end(&e), KV_OK);
        cr_assert_eq(decodes(&b), c->ok, "case %zu", i);
        if (c->ok)
            cr_assert(g_op.cls == KVSHM_OPC_KV && g_op.nargs == c->nargs, "case %zu", i);
    }
    kv_buf_free(&b);
}

/* TEXT INSERT with an id, LEASE and LEASE_END (pipelined inserts). */
Test(shm_ops, text_lease_shapes)
{
    struct {
        unsigned op;
        int64_t args[3];
        int nargs;      /* i64 arguments after the insert's value and text */
        int ok;
    } cases[] = {
        {KVSHM_OP_INSERT, {7}, 1, 1},   {KVSHM_OP_INSERT, {0}, 1, 0},
        {KVSHM_OP_INSERT, {-3}, 1, 0},  {KVSHM_OP_INSERT, {1, 2}, 2, 0},
        {KVSHM_OP_LEASE, {1}, 1, 1},    {KVSHM_OP_LEASE, {65536}, 1, 1},
        {KVSHM_OP_LEASE, {0}, 1, 0},    {KVSHM_OP_LEASE, {65537}, 1, 0},
        {KVSHM_OP_LEASE, {1, 1}, 2, 0}, {KVSHM_OP_LEASE_END, {3, 9}, 2, 1},
        {KVSHM_OP_LEASE_END, {3, 3}, 2, 1}, {KVSHM_OP_LEASE_END, {9, 3}, 2, 0},
        {KVSHM_OP_LEASE_END, {0, 3}, 2, 0}, {KVSHM_OP_LEASE_END, {3}, 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kv_buf b;
        kv_buf_init(&b);
        kvshm_op_enc e;
        kvshm_op_begin(&e, &b, KVSHM_OPC_TEXT, cases[i].op, "t");
        kvshm_op_add(&e, "content", 7);
        kvshm_op_args(&e);
        if (cases[i].op == KVSHM_OP_INSERT) {
            kvshm_op_add(&e, "v", 1);
            kvshm_op_add(&e, "text", 4);
        }
        for (int k = 0; k < cases[i].nargs; k++) kvshm_op_add_i64(&e, cases[i].args[k]);
        cr_assert_eq(kvshm_op_end(&e), KV_OK);
        const char *why = NULL;
        cr_assert_eq(kvshm_op_decode(b.data, b.len, &g_op, &why) == 0, cases[i].ok,
                     "case %zu: %s", i, why ? why : "decoded");
        kv_buf_free(&b);
    }
}
