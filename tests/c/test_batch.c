/* test_batch.c - the shared-mode writer's commit backend (engine/batch.c):
 * batches commit atomically with their last sequence number. */
#include <criterion/criterion.h>
#include <string.h>

#include "kvault/batch.h"
#include "kvault/kvault.h"
#include "kvtest_util.h"

static char path[600];

static void setup(void) { kvtest_path(path, sizeof path, "batch.db"); }

TestSuite(batch, .init = setup);

static kv_batch *open_batch(void)
{
    kv_batch *b = NULL;
    char err[256] = "";
    kv_status st = kv_batch_open(path, NULL, &b, err, sizeof err);
    cr_assert_eq(st, KV_OK, "open: %s", err);
    return b;
}

Test(batch, empty_store_has_sequence_zero)
{
    kv_batch *b = open_batch();
    uint64_t seq = 99;
    cr_assert_eq(kv_batch_last_seq(b, &seq), KV_OK);
    cr_assert_eq(seq, 0);
    kv_batch_close(b);
}

Test(batch, commit_stores_rows_and_sequence_together)
{
    kv_batch *b = open_batch();
    cr_assert_eq(kv_batch_begin(b), KV_OK);
    cr_assert_eq(kv_batch_put(b, "a", 1, "1", 1), KV_OK);
    cr_assert_eq(kv_batch_put(b, "b", 1, "22", 2), KV_OK);
    cr_assert_eq(kv_batch_commit(b, 7), KV_OK);
    cr_assert_eq(kv_batch_begin(b), KV_OK);
    cr_assert_eq(kv_batch_delete(b, "a", 1), KV_OK);
    cr_assert_eq(kv_batch_put(b, "b", 1, "333", 3), KV_OK);
    cr_assert_eq(kv_batch_commit(b, 9), KV_OK);
    kv_batch_close(b);

    b = open_batch();
    uint64_t seq = 0;
    cr_assert_eq(kv_batch_last_seq(b, &seq), KV_OK);
    cr_assert_eq(seq, 9);
    kv_batch_close(b);

    kv_db *db = kvtest_open_db(path);
    const void *v; size_t n;
    cr_assert_eq(kv_get(db, "a", 1, &v, &n), KV_NOTFOUND);
    cr_assert_eq(kv_get(db, "b", 1, &v, &n), KV_OK);
    cr_assert_eq(n, 3);
    cr_assert_eq(memcmp(v, "333", 3), 0);
    kv_get_done(db);
    kv_db_close(db);
}

Test(batch, rollback_and_failed_commit_store_nothing)
{
    kv_batch *b = open_batch();
    cr_assert_eq(kv_batch_begin(b), KV_OK);
    cr_assert_eq(kv_batch_put(b, "x", 1, "1", 1), KV_OK);
    cr_assert_eq(kv_batch_commit(b, 5), KV_OK);
    /* a sequence going backwards is refused and the batch rolled back */
    cr_assert_eq(kv_batch_begin(b), KV_OK);
    cr_assert_eq(kv_batch_put(b, "y", 1, "1", 1), KV_OK);
    cr_assert_eq(kv_batch_commit(b, 4), KV_INVALID);
    cr_assert_eq(kv_batch_begin(b), KV_OK);
    cr_assert_eq(kv_batch_put(b, "z", 1, "1", 1), KV_OK);
    kv_batch_rollback(b);
    uint64_t seq = 0;
    cr_assert_eq(kv_batch_last_seq(b, &seq), KV_OK);
    cr_assert_eq(seq, 5);
    kv_batch_close(b);

    kv_db *db = kvtest_open_db(path);
    int found = 1;
    cr_assert_eq(kv_exists(db, "y", 1, &found), KV_OK);
    cr_assert_eq(found, 0);
    cr_assert_eq(kv_exists(db, "z", 1, &found), KV_OK);
    cr_assert_eq(found, 0);
    cr_assert_eq(kv_exists(db, "x", 1, &found), KV_OK);
    cr_assert_eq(found, 1);
    kv_db_close(db);
}

Test(batch, misuse_is_refused)
{
    kv_batch *b = open_batch();
    cr_assert_eq(kv_batch_put(b, "a", 1, "1", 1), KV_INVALID);
    cr_assert_eq(kv_batch_commit(b, 1), KV_INVALID);
    cr_assert_eq(kv_batch_begin(b), KV_OK);
    cr_assert_eq(kv_batch_begin(b), KV_INVALID);
    kv_batch_close(b);
    kv_batch_opts o;
    kv_batch_opts_default(&o);
    o.table = "bad name";
    char err[128];
    cr_assert_eq(kv_batch_open(path, &o, &b, err, sizeof err), KV_INVALID);
    cr_assert_null(b);
}
