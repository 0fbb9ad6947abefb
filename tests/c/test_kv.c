/* test_kv.c - libkvault key-value store: open options and table-name
 * validation, get/put/delete/exists/count, keys listing, put_many, meta
 * features, close; the SQLite work of one autocommit put (statements run,
 * WAL frames appended). Real SQLite files in per-test temporary
 * directories. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <sqlite3.h>

#include "internal.h"
#include "kvault/kvault.h"
#include "kvtest_util.h"

static kv_db *open_db(const char *table, char *path, size_t n)
{
    kv_open_opts o;
    kv_db *db = NULL;
    char err[256];
    kv_open_opts_default(&o);
    o.table = table;
    kvtest_path(path, n, "sub/dir/t.db");
    cr_assert(eq(int, kv_db_open(path, &o, &db, err, sizeof err), KV_OK), "%s", err);
    return db;
}

/* Another handle on the file of open_db: `table`, busy timeout in ms. */
static kv_db *open_second(const char *path, const char *table, int busy_ms)
{
    kv_open_opts o;
    kv_db *db = NULL;
    char err[256];
    kv_open_opts_default(&o);
    o.table = table;
    o.busy_timeout_ms = busy_ms;
    cr_assert(eq(int, kv_db_open(path, &o, &db, err, sizeof err), KV_OK), "%s", err);
    return db;
}

Test(kv, bad_table_names_refused)
{
    const char *bad[] = {"kv; DROP TABLE x", "a b", "", "1abc", "9", "a-b", "t\"x", "kv--", "é"};
    char path[600], err[256];
    kvtest_path(path, sizeof path, "t.db");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kv_open_opts o;
        kv_db *db = (kv_db *)1;
        kv_open_opts_default(&o);
        o.table = bad[i];
        cr_assert(eq(int, kv_db_open(path, &o, &db, err, sizeof err), KV_INVALID), "%s", bad[i]);
        cr_assert(eq(ptr, db, NULL));
        cr_assert(eq(int, strncmp(err, "Invalid table name: ", 20), 0), "%s", err);
    }
    const char *good[] = {"kv", "_x", "A1_b2", "t123"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        kv_open_opts o;
        kv_db *db = NULL;
        kv_open_opts_default(&o);
        o.table = good[i];
        cr_assert(eq(int, kv_db_open(path, &o, &db, err, sizeof err), KV_OK), "%s: %s", good[i], err);
        cr_assert(eq(str, (char *)kv_db_table(db), (char *)good[i]));
        kv_db_close(db);
    }
}

Test(kv, put_get_delete_exists_count)
{
    char path[600];
    kv_db *db = open_db("kv", path, sizeof path);
    const void *v;
    size_t n;
    int64_t c;
    int flag;
    cr_assert(eq(int, kv_get(db, "a", 1, &v, &n), KV_NOTFOUND));
    cr_assert(eq(int, kv_put(db, "a", 1, "hello", 5), KV_OK));
    cr_assert(eq(int, kv_put(db, "", 0, "", 0), KV_OK), "empty key and value are allowed");
    cr_assert(eq(int, kv_get(db, "a", 1, &v, &n), KV_OK));
    cr_assert(eq(sz, n, 5));
    cr_assert(eq(int, memcmp(v, "hello", 5), 0));
    kv_get_done(db);
    cr_assert(eq(int, kv_put(db, "a", 1, "bye", 3), KV_OK), "upsert");
    cr_assert(eq(int, kv_get(db, "a", 1, &v, &n), KV_OK));
    cr_assert(eq(sz, n, 3));
    /* a lent row is released by the next call without kv_get_done */
    cr_assert(eq(int, kv_count(db, &c), KV_OK));
    cr_assert(eq(i64, c, 2));
    cr_assert(eq(int, kv_get(db, "", 0, &v, &n), KV_OK));
    cr_assert(eq(sz, n, 0));
    cr_assert(eq(int, kv_exists(db, "a", 1, &flag), KV_OK));
    cr_assert(eq(int, flag, 1));
    cr_assert(eq(int, kv_delete(db, "a", 1, &flag), KV_OK));
    cr_assert(eq(int, flag, 1));
    cr_assert(eq(int, kv_delete(db, "a", 1, &flag), KV_OK));
    cr_assert(eq(int, flag, 0));
    cr_assert(eq(int, kv_exists(db, "a", 1, &flag), KV_OK));
    cr_assert(eq(int, flag, 0));
    cr_assert(eq(int, kv_db_close(db), KV_OK));

    /* data survives reopening; the schema is the docs/api.md §4.2 one */
    char text[200];
    cr_assert(eq(str, kvtest_sql_text(path, "SELECT sql FROM sqlite_master WHERE name='kv'", text, sizeof text),
                 "CREATE TABLE kv (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL)"));
    cr_assert(eq(str, kvtest_sql_text(path, "PRAGMA journal_mode", text, sizeof text), "wal"));
    cr_assert(eq(i64, kvtest_sql_i64(path, "PRAGMA page_size"), 32768));
}

Test(kv, keys_prefix_order_and_pagination)
{
    char path[600];
    kv_db *db = open_db("kv", path, sizeof path);
    const char *ks[] = {"b", "a", "ab", "a\xff", "abc", "c", "\xff", "a0"};
    for (size_t i = 0; i < 8; i++)
        cr_assert(eq(int, kv_put(db, ks[i], strlen(ks[i]), "v", 1), KV_OK));
    kv_keys *k;
    cr_assert(eq(int, kv_keys_batch(db, "a", 1, NULL, 0, 100, &k), KV_OK));
    /* prefix <= key < prefix||0xFF: "a\xff" is excluded (docs/api.md §4.5) */
    const char *want[] = {"a", "a0", "ab", "abc"};
    cr_assert(eq(sz, k->n, 4));
    for (size_t i = 0; i < 4; i++) {
        cr_assert(eq(sz, k->off[i + 1] - k->off[i], strlen(want[i])));
        cr_assert(eq(int, memcmp(k->data + k->off[i], want[i], strlen(want[i])), 0));
    }
    kv_keys_free(k);
    /* all keys, in batches of 3, continuing after the last key */
    const char *all[] = {"a", "a0", "ab", "abc", "a\xff", "b", "c", "\xff"};
    size_t seen = 0;
    char last[8];
    size_t lastn = 0;
    for (;;) {
        cr_assert(eq(int, kv_keys_batch(db, NULL, 0, seen ? last : NULL, lastn, 3, &k), KV_OK));
        if (k->n == 0) {
            kv_keys_free(k);
            break;
        }
        for (size_t i = 0; i < k->n; i++, seen++) {
            size_t l = k->off[i + 1] - k->off[i];
            cr_assert(eq(sz, l, strlen(all[seen])));
            cr_assert(eq(int, memcmp(k->data + k->off[i], all[seen], l), 0));
            memcpy(last, k->data + k->off[i], l);
            lastn = l;
        }
        kv_keys_free(k);
    }
    cr_assert(eq(sz, seen, 8));
    kv_db_close(db);
}

Test(kv, put_many_and_features)
{
    char path[600];
    kv_db *db = open_db("kv", path, sizeof path);
    kv_item items[100];
    char keys[100][8];
    for (int i = 0; i < 100; i++) {
        snprintf(keys[i], 8, "k%03d", i);
        items[i] = (kv_item){keys[i], 4, "value", 5};
    }
    cr_assert(eq(int, kv_put_many(db, items, 100), KV_OK));
    int64_t c;
    kv_count(db, &c);
    cr_assert(eq(i64, c, 100));
    cr_assert(eq(int, kv_record_feature(db, "headers_v1"), KV_OK));
    cr_assert(eq(int, kv_record_feature(db, "auto_pack_v1"), KV_OK));
    cr_assert(eq(int, kv_record_feature(db, "headers_v1"), KV_OK));
    cr_assert(eq(int, kv_record_feature(db, "a,b"), KV_INVALID));
    cr_assert(eq(int, kv_checkpoint(db), KV_OK));
    cr_assert(eq(int, kv_optimize(db), KV_OK));
    kv_db_close(db);
    sqlite3 *s;
    sqlite3_stmt *st;
    sqlite3_open(path, &s);
    sqlite3_prepare_v2(s, "SELECT value FROM kohakuvault_meta WHERE key='kv_features'", -1, &st, NULL);
    cr_assert(eq(int, sqlite3_step(st), SQLITE_ROW));
    cr_assert(eq(str, (char *)sqlite3_column_text(st, 0), "headers_v1,auto_pack_v1"));
    sqlite3_finalize(st);
    sqlite3_close(s);
}

Test(kv, two_tables_one_file_and_busy_is_reported)
{
    char path[600];
    kv_db *a = open_db("t1", path, sizeof path), *b = open_second(path, "t2", 50);
    cr_assert(eq(int, kv_put(a, "k", 1, "A", 1), KV_OK));
    cr_assert(eq(int, kv_put(b, "k", 1, "B", 1), KV_OK));
    const void *v;
    size_t n;
    cr_assert(eq(int, kv_get(b, "k", 1, &v, &n), KV_OK));
    cr_assert(eq(int, memcmp(v, "B", 1), 0));
    kv_get_done(b);
    /* hold the write lock on another connection: b sees KV_BUSY with text */
    sqlite3 *s;
    sqlite3_open(path, &s);
    cr_assert(eq(int, sqlite3_exec(s, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK));
    cr_assert(eq(int, kv_put(b, "x", 1, "y", 1), KV_BUSY));
    cr_assert(not(eq(ptr, strstr(kv_db_errmsg(b), "database is locked"), NULL)), "%s", kv_db_errmsg(b));
    cr_assert(eq(int, kv_db_sqlite_errcode(b) & 0xff, SQLITE_BUSY));
    sqlite3_exec(s, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(s);
    cr_assert(eq(int, kv_put(b, "x", 1, "y", 1), KV_OK));
    kv_db_close(a);
    kv_db_close(b);
}

/* sqlite3_trace_v2 callback: count the statements a connection starts. */
static int count_stmt(unsigned type, void *ctx, void *p, void *x)
{
    (void)p;
    (void)x;
    if (type == SQLITE_TRACE_STMT)
        (*(int *)ctx)++;
    return 0;
}

/* Bytes in the -wal file of `path` (0 when there is none). */
static off_t wal_bytes(const char *path)
{
    char wal[620];
    struct stat sb;
    snprintf(wal, sizeof wal, "%s-wal", path);
    return stat(wal, &sb) == 0 ? sb.st_size : 0;
}

/* The cost model of an embedded put without the write-back cache: one
 * statement (the upsert; no BEGIN/COMMIT, no read before it, no meta row),
 * committed on return, appending one WAL frame (24-byte header + one page)
 * per page SQLite must change: the table leaf and the key index leaf for a
 * new key, only the table leaf for a new value of a stored key. No
 * checkpoint runs in between (wal_autocheckpoint=1000 frames), so the -wal
 * file grows by exactly those frames. Checked for the default page size and
 * for 4096. */
Test(kv, autocommit_put_is_one_statement_and_one_frame_per_changed_page)
{
    const int pages[] = {0, 4096};
    char v1[100], v2[100];
    memset(v1, 'a', sizeof v1);
    memset(v2, 'b', sizeof v2);
    for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++) {
        char path[600], err[256];
        kv_open_opts o;
        kv_db *db = NULL;
        int stmts = 0;
        kv_open_opts_default(&o);
        if (pages[i])
            o.page_size = pages[i];
        kvtest_path(path, sizeof path, "t.db");
        cr_assert(eq(int, kv_db_open(path, &o, &db, err, sizeof err), KV_OK), "%s", err);
        off_t frame = 24 + (off_t)(pages[i] ? pages[i] : 32768);
        cr_assert(eq(i64, kvtest_sql_i64(path, "PRAGMA page_size") + 24, (int64_t)frame));
        cr_assert(eq(int, kv_put(db, "k0", 2, v1, sizeof v1), KV_OK));
        sqlite3_trace_v2(db->db, SQLITE_TRACE_STMT, count_stmt, &stmts);

        off_t w0 = wal_bytes(path);
        cr_assert(eq(int, kv_put(db, "k1", 2, v1, sizeof v1), KV_OK));
        cr_expect(eq(int, stmts, 1), "statements run by a put of a new key");
        cr_expect(sqlite3_get_autocommit(db->db), "no transaction left open");
        cr_expect(eq(i64, (int64_t)(wal_bytes(path) - w0), (int64_t)(2 * frame)),
                  "a new key: table leaf + index leaf (page size %d)", (int)(frame - 24));

        stmts = 0;
        w0 = wal_bytes(path);
        cr_assert(eq(int, kv_put(db, "k1", 2, v2, sizeof v2), KV_OK));
        cr_expect(eq(int, stmts, 1), "statements run by a put of a stored key");
        cr_expect(eq(i64, (int64_t)(wal_bytes(path) - w0), (int64_t)frame),
                  "a new value of a stored key: the table leaf only (page size %d)",
                  (int)(frame - 24));

        const void *v;
        size_t n;
        cr_assert(eq(int, kv_get(db, "k1", 2, &v, &n), KV_OK));
        cr_assert(eq(sz, n, sizeof v2));
        cr_assert(eq(int, memcmp(v, v2, n), 0));
        kv_get_done(db);
        sqlite3_trace_v2(db->db, 0, NULL, NULL);
        kv_db_close(db);
        kvtest_remove_dir_of(path);
    }
}

/* Group commit (kv_db_tx_begin): writes join one transaction, each in its
 * own savepoint; a write that fails is undone alone; nothing is visible to
 * another connection before kv_db_tx_end, and a rolled-back group leaves
 * nothing. */
Test(kv, group_transaction_keeps_each_write_atomic)
{
    char path[600];
    kv_db *db = open_db("grp", path, sizeof path), *other = open_second(path, "grp", 0);
    cr_assert(eq(int, kv_put(db, "gone", 4, "x", 1), KV_OK));

    cr_assert(eq(int, kv_db_tx_begin(db), KV_OK), "%s", kv_db_errmsg(db));
    cr_assert(eq(int, kv_put(db, "a", 1, "1", 1), KV_OK));
    kv_item items[2] = {{"b", 1, "2", 1}, {"c", 1, "3", 1}};
    cr_assert(eq(int, kv_put_many(db, items, 2), KV_OK));
    /* a stream from a descriptor that cannot be read fails after its upsert:
     * that write alone is rolled back */
    cr_assert(eq(int, kv_put_fd(db, "bad", 3, -1, 100, 0), KV_IO));
    const void *keys[2] = {"gone", "nothing"};
    size_t klens[2] = {4, 7}, removed = 0;
    cr_assert(eq(int, kv_delete_many(db, keys, klens, 2, &removed), KV_OK));
    cr_assert(eq(sz, removed, 1));
    cr_assert(eq(int, kv_record_feature(db, "grouped"), KV_OK), "%s", kv_db_errmsg(db));
    /* the group holds the write lock and its changes are not visible yet */
    int found = 1;
    cr_assert(eq(int, kv_exists(other, "a", 1, &found), KV_OK));
    cr_assert(eq(int, found, 0));
    cr_assert(eq(int, kv_db_tx_begin(other), KV_BUSY));
    cr_assert(eq(int, kv_db_tx_end(db, 1), KV_OK), "%s", kv_db_errmsg(db));

    int64_t n = 0;
    cr_assert(eq(int, kv_count(other, &n), KV_OK));
    cr_assert(eq(i64, n, 3));   /* a, b, c; "gone" deleted, "bad" undone */
    cr_assert(eq(int, kv_exists(other, "bad", 3, &found), KV_OK));
    cr_assert(eq(int, found, 0));
    cr_assert(eq(int, kv_exists(other, "gone", 4, &found), KV_OK));
    cr_assert(eq(int, found, 0));

    /* a group rolled back leaves nothing; the handle commits on its own again */
    cr_assert(eq(int, kv_db_tx_begin(db), KV_OK));
    cr_assert(eq(int, kv_put(db, "d", 1, "4", 1), KV_OK));
    cr_assert(eq(int, kv_db_tx_end(db, 0), KV_OK));
    cr_assert(eq(int, kv_exists(other, "d", 1, &found), KV_OK));
    cr_assert(eq(int, found, 0));
    cr_assert(eq(int, kv_put(db, "e", 1, "5", 1), KV_OK));
    cr_assert(eq(int, kv_exists(other, "e", 1, &found), KV_OK));
    cr_assert(eq(int, found, 1));
    kv_db_close(other);
    kv_db_close(db);
}
