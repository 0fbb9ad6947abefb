/*
 * fuzz_ops.c -- libFuzzer target for the table operations a client sends
 * with EXEC (kvshm_op_decode, shm/ops.c): every byte is hostile.
 *
 * Input: one encoded operation (kvshm/ops.h), as the writer receives it in
 * a packet or a memfd.
 * Checks: an accepted operation has a known class and operation, an
 * identifier as table name, field counts within bounds, every present
 * field inside the input, the key span inside the input, the 8-byte
 * integer fields the executor (workers/exec.c) reads, for a vector
 * insert_many value lengths that add up to the values field, and for a
 * column operation its fields (element lengths of a pair that add up), for
 * a KV one its chunk size and key/value lengths that add up; a rejected
 * one gets a non-empty reason. The input is copied to an exactly sized
 * buffer so ASan reports any read past it.
 *
 * Build and run: docs/fuzzing.md.
 */
#include <stdlib.h>
#include <string.h>

#include "kvault/oprec.h"
#include "kvshm/ops.h"

#define CHECK(e) do { if (!(e)) abort(); } while (0)

static kvshm_op g_op;

static void check_field(const kvshm_op_field *f, const uint8_t *buf, size_t size)
{
    if (!f->present) {
        CHECK(f->p == NULL && f->len == 0);
        return;
    }
    CHECK(f->p >= buf && (size_t)(f->p - buf) + f->len <= size);
    volatile uint8_t sink = 0;
    for (uint32_t i = 0; i < f->len; i++) sink ^= f->p[i];
    (void)sink;
}

/* i64 lengths (>= 0) adding up to the bytes of `data`. */
static void check_lens(const kvshm_op_field *lens, const kvshm_op_field *data)
{
    CHECK(lens->present && lens->len % 8 == 0);
    uint64_t sum = 0;
    for (uint32_t i = 0; i < lens->len; i += 8) {
        int64_t l;
        memcpy(&l, lens->p + i, 8);
        CHECK(l >= 0);
        sum += (uint64_t)l;
    }
    CHECK(sum == data->len);
}

/* What workers/exec.c reads of a KV operation. */
static void kv_check(const kvshm_op *op)
{
    int ok = 1;
    CHECK(op->nopen == 1 && kvshm_op_i64(&op->open[0], &ok) > 0 && ok);
    const kvshm_op_field *a = op->args;
    switch (op->op) {
    case KVSHM_OP_PUT:
        CHECK(op->nargs == 2 && a[0].present && a[1].present);
        break;
    case KVSHM_OP_DELETE:
        CHECK(op->nargs == 1 && a[0].present);
        break;
    case KVSHM_OP_PUT_MANY:
        CHECK(op->nargs == 4 && a[0].len == a[2].len);
        check_lens(&a[0], &a[1]);
        check_lens(&a[2], &a[3]);
        break;
    case KVSHM_OP_DEL_MANY:
        CHECK(op->nargs == 2);
        check_lens(&a[0], &a[1]);
        break;
    default:
        CHECK(op->op == KVSHM_OP_FEATURE && op->nargs == 1 && a[0].present &&
              a[0].len >= 1 && a[0].len <= 64 && !memchr(a[0].p, 0, a[0].len));
        break;
    }
}

/* What workers/exec.c reads of a column operation. */
static void column_check(const kvshm_op *op)
{
    int ok = 1;
    CHECK(op->nopen == 2);
    for (int i = 0; i < 2; i++) {
        (void)kvshm_op_i64(&op->open[i], &ok);
        CHECK(ok);
    }
    if (op->op == KVSHM_OP_COL_CREATE || op->op == KVSHM_OP_COL_DROP) {
        CHECK(op->args[0].present && !memchr(op->args[0].p, 0, op->args[0].len));
        if (op->op == KVSHM_OP_COL_CREATE) {
            CHECK(op->args[1].present && !memchr(op->args[1].p, 0, op->args[1].len));
            (void)kvshm_op_i64(&op->args[2], &ok);
            CHECK(ok);
        }
        return;
    }
    int64_t idx = 0;
    for (int i = 0; i < 2; i++) {
        idx = kvshm_op_i64(&op->args[i], &ok);
        CHECK(ok);
    }
    /* the column's name, last: present, not empty, no NUL */
    CHECK(op->nargs >= 3);
    const kvshm_op_field *pname = &op->args[op->nargs - 1];
    CHECK(pname->present && pname->len && !memchr(pname->p, 0, pname->len));
    uint32_t n = op->nargs - 1;
    if (op->op == KVSHM_OP_APPEND) {
        CHECK(op->args[2].present && n == 3u + (idx != 0));
        if (idx) check_lens(&op->args[3], &op->args[2]);
    } else if (op->op == KVSHM_OP_WRITE) {
        (void)kvshm_op_i64(&op->args[2], &ok);
        CHECK(ok && op->args[3].present && n == 4u + (idx != 0));
        if (idx) check_lens(&op->args[4], &op->args[3]);
    } else if (op->op == KVSHM_OP_INSERT || op->op == KVSHM_OP_DELETE) {
        (void)kvshm_op_i64(&op->args[2], &ok);
        CHECK(ok);
        if (op->op == KVSHM_OP_INSERT) CHECK(n == 4 && op->args[3].present);
    } else {
        CHECK(op->op == KVSHM_OP_CLEAR && n == 2);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    CHECK(buf);
    memcpy(buf, data, size);
    const char *why = NULL;
    if (kvshm_op_decode(buf, size, &g_op, &why) == 0) {
        kvshm_op *op = &g_op;
        CHECK(op->cls == KVSHM_OPC_TEXT || op->cls == KVSHM_OPC_VECTOR ||
              op->cls == KVSHM_OPC_COLUMN || op->cls == KVSHM_OPC_KV);
        CHECK(op->table_len >= 1 && op->table_len <= KVSHM_OP_TABLE_MAX);
        CHECK((const uint8_t *)op->table >= buf &&
              (size_t)((const uint8_t *)op->table - buf) + op->table_len <= size);
        CHECK(op->key == (const uint8_t *)op->table && op->key_len >= op->table_len &&
              (size_t)(op->key - buf) + op->key_len <= size);
        CHECK(op->nopen <= KVSHM_OP_MAX_FIELDS && op->nargs <= KVSHM_OP_MAX_FIELDS);
        for (uint32_t i = 0; i < op->nopen + op->nargs; i++) check_field(&op->fields[i], buf, size);
        int ok = 1;
        if (op->cls == KVSHM_OPC_VECTOR) {
            for (int i = 0; i < 3; i++) {
                (void)kvshm_op_i64(&op->open[i], &ok);
                CHECK(ok);
            }
            if (op->op == KVSHM_OP_INSERT) {
                /* a vector and a value, then an optional id >= 1 (a
                 * pipelined insert's, docs/shared-mode.md) */
                CHECK(op->nargs == 2 || op->nargs == 3);
                if (op->nargs == 3) {
                    int64_t id = kvshm_op_i64(&op->args[2], &ok);
                    CHECK(ok && id >= 1);
                }
            }
            if (op->op == KVSHM_OP_LEASE) {
                int64_t n = kvshm_op_i64(&op->args[0], &ok);
                CHECK(op->nargs == 1 && ok && n >= 1 && n <= KV_LEASE_MAX);
            }
            if (op->op == KVSHM_OP_INSERT_MANY && op->nargs == 4) {
                int64_t n = kvshm_op_i64(&op->args[0], &ok);
                CHECK(ok && n >= 0 && op->args[2].len == (uint64_t)n * 8);
                uint64_t sum = 0;
                for (int64_t i = 0; i < n; i++) {
                    int64_t l;
                    memcpy(&l, op->args[2].p + i * 8, 8);
                    CHECK(l >= 0);
                    sum += (uint64_t)l;
                }
                CHECK(sum == op->args[3].len);
            }
        } else if (op->cls == KVSHM_OPC_COLUMN) {
            column_check(op);
        } else if (op->cls == KVSHM_OPC_KV) {
            kv_check(op);
        } else {
            CHECK(op->nopen >= 1 && op->nopen <= 255);
            if (op->op == KVSHM_OP_INSERT) {
                /* a value and a text per column, then an optional id >= 1
                 * (a pipelined insert's, docs/shared-mode.md) */
                CHECK(op->nargs == op->nopen + 1 || op->nargs == op->nopen + 2);
                if (op->nargs == op->nopen + 2) {
                    int64_t id = kvshm_op_i64(&op->args[op->nargs - 1], &ok);
                    CHECK(ok && id >= 1);
                }
            }
        }
        if (op->cls != KVSHM_OPC_KV && (op->op == KVSHM_OP_DELETE || op->op == KVSHM_OP_UPDATE)) {
            (void)kvshm_op_i64(&op->args[0], &ok);
            CHECK(ok);
        }
    } else {
        CHECK(why && *why);
    }
    free(buf);
    return 0;
}
