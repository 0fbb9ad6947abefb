/*
 * fuzz_ops.c -- libFuzzer target for the table operations a client sends
 * with EXEC (kvshm_op_decode, shm/ops.c): every byte is hostile.
 *
 * Input: one encoded operation (kvshm/ops.h), as the writer receives it in
 * a packet or a memfd.
 * Checks: an accepted operation has a known class and operation, an
 * identifier as table name, field counts within bounds, every present
 * field inside the input, the key span inside the input, the 8-byte
 * integer fields the executor (workers/exec.c) reads, and for a vector
 * insert_many value lengths that add up to the values field; a rejected
 * one gets a non-empty reason. The input is copied to an exactly sized
 * buffer so ASan reports any read past it.
 *
 * Build and run: docs/fuzzing.md.
 */
#include <stdlib.h>
#include <string.h>

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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1);
    CHECK(buf);
    memcpy(buf, data, size);
    const char *why = NULL;
    if (kvshm_op_decode(buf, size, &g_op, &why) == 0) {
        kvshm_op *op = &g_op;
        CHECK(op->cls == KVSHM_OPC_TEXT || op->cls == KVSHM_OPC_VECTOR);
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
        } else {
            CHECK(op->nopen >= 1 && op->nopen <= 255);
            if (op->op == KVSHM_OP_INSERT) CHECK(op->nargs == op->nopen + 1);
        }
        if (op->op == KVSHM_OP_DELETE || op->op == KVSHM_OP_UPDATE) {
            (void)kvshm_op_i64(&op->args[0], &ok);
            CHECK(ok);
        }
    } else {
        CHECK(why && *why);
    }
    free(buf);
    return 0;
}
