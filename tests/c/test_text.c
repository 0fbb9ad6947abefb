/* test_text.c - the FTS5 full-text store (engine/text.c): layout, BM25
 * ranking and scores, escaping, snippets, CRUD and bad input, on real files. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvault/oprec.h"
#include "kvault/text.h"
#include "kvtest_util.h"

static char path[600]; /* the test's database file, in a fresh directory */

static void setup(void) { kvtest_path(path, sizeof path, "t.db"); }

static void teardown(void) { kvtest_remove_dir_of(path); }

TestSuite(text, .init = setup, .fini = teardown, .timeout = 60);

static kv_text *open1(void)
{
    const char *cols[] = {"content"};
    kv_text *t = NULL;
    char err[256];
    cr_assert(eq(int, kv_text_open(path, "text_vault", cols, 1, &t, err, sizeof err), KV_OK), "%s", err);
    return t;
}

static int64_t ins(kv_text *t, const char *text, const char *val)
{
    const char *texts[] = {text};
    size_t lens[] = {strlen(text)};
    int64_t id = -1;
    cr_assert(eq(int, kv_text_insert(t, texts, lens, val, strlen(val), &id), KV_OK), "%s",
              kv_text_errmsg(t));
    return id;
}

static kv_text_hits *search(kv_text *t, const char *q, int64_t k, unsigned flags)
{
    kv_text_hits *h = NULL;
    cr_assert(eq(int, kv_text_search(t, q, strlen(q), NULL, k, flags, NULL, &h), KV_OK), "%s",
              kv_text_errmsg(t));
    return h;
}

Test(text, schema_matches_api_layout)
{
    kv_text *t = open1();
    kv_text_close(t);
    sqlite3 *db;
    sqlite3_stmt *st;
    cr_assert(eq(int, sqlite3_open(path, &db), SQLITE_OK));
    cr_assert(eq(int, sqlite3_prepare_v2(db, "SELECT name, sql FROM sqlite_master ORDER BY name", -1, &st, NULL), SQLITE_OK));
    int saw_fts = 0, saw_values = 0, saw_seq = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        const char *sql = (const char *)sqlite3_column_text(st, 1);
        if (strcmp(name, "text_vault") == 0) {
            saw_fts = 1;
            cr_expect(strstr(sql, "fts5(\"content\", value_ref UNINDEXED)") != NULL, "%s", sql);
        } else if (strcmp(name, "text_vault_values") == 0) {
            saw_values = 1;
            cr_expect(strstr(sql, "id INTEGER PRIMARY KEY AUTOINCREMENT, value BLOB NOT NULL") != NULL, "%s", sql);
        } else if (strcmp(name, "sqlite_sequence") == 0) {
            saw_seq = 1;
        }
    }
    sqlite3_finalize(st);
    cr_assert(eq(int, sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK));
    cr_assert(eq(int, sqlite3_step(st), SQLITE_ROW));
    cr_expect(eq(str, (char *)sqlite3_column_text(st, 0), "wal"));
    sqlite3_finalize(st);
    sqlite3_close(db);
    cr_expect(saw_fts && saw_values && saw_seq);
}

Test(text, ranking_is_bm25_and_scores_positive_descending)
{
    kv_text *t = open1();
    int64_t a = ins(t, "python python python programming", "a");
    int64_t b = ins(t, "python programming with a very long tail of other words here", "b");
    ins(t, "javascript programming", "c");
    kv_text_hits *h = search(t, "python", 10, KV_TEXT_ESCAPE);
    cr_assert(eq(sz, h->n, 2));
    cr_expect(eq(i64, h->hits[0].id, a));
    cr_expect(eq(i64, h->hits[1].id, b));
    cr_expect(h->hits[0].score > h->hits[1].score);
    cr_expect(h->hits[1].score > 0.0);
    cr_expect(eq(sz, h->hits[0].vlen, 1));
    cr_expect(h->hits[0].val[0] == 'a');
    kv_text_hits_free(h);

    /* score == -bm25 as SQLite computes it */
    double bm = kvtest_sql_double(path, "SELECT bm25(text_vault) FROM text_vault WHERE text_vault"
                                        " MATCH '\"python\"' ORDER BY bm25(text_vault)");
    h = search(t, "python", 1, KV_TEXT_ESCAPE);
    cr_assert(eq(sz, h->n, 1));
    cr_expect(eq(dbl, h->hits[0].score, -bm));
    kv_text_hits_free(h);
    kv_text_close(t);
}

Test(text, escape_makes_phrase_and_special_chars_safe)
{
    kv_text *t = open1();
    ins(t, "machine learning rocks", "1");
    ins(t, "learning machine", "2");
    ins(t, "C++ programming guide", "3");
    ins(t, "He said \"hello\" to me", "4");
    kv_text_hits *h = search(t, "machine learning", 10, KV_TEXT_ESCAPE);
    cr_expect(eq(sz, h->n, 1));
    kv_text_hits_free(h);
    const char *odd[] = {"C++", "What is this?", "a@b.c", "Price > 100", "\"hello\"", "NOT OR AND", "col:x*"};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        h = NULL;
        cr_expect(eq(int, kv_text_search(t, odd[i], strlen(odd[i]), NULL, 10, KV_TEXT_ESCAPE, NULL, &h), KV_OK),
                  "query %s: %s", odd[i], kv_text_errmsg(t));
        kv_text_hits_free(h);
    }
    h = search(t, "   \t ", 10, KV_TEXT_ESCAPE);
    cr_expect(eq(sz, h->n, 0));
    kv_text_hits_free(h);
    /* raw FTS5 syntax without escaping */
    h = search(t, "machine AND rocks", 10, 0);
    cr_expect(eq(sz, h->n, 1));
    kv_text_hits_free(h);
    h = NULL;
    cr_expect(eq(int, kv_text_search(t, "\"unbalanced", 11, NULL, 10, 0, NULL, &h), KV_SQLITE));
    cr_expect(h == NULL);
    cr_expect(strlen(kv_text_errmsg(t)) > 0);
    kv_text_close(t);
}

Test(text, build_match_quotes)
{
    char *m;
    size_t n;
    int empty;
    cr_assert(eq(int, kv_text_build_match("say \"hi\"", 8, "body", 1, &m, &n, &empty), KV_OK));
    cr_expect(eq(int, empty, 0));
    cr_expect(eq(str, m, "body:\"say \"\"hi\"\"\""));
    cr_expect(eq(sz, n, strlen(m)));
    kv_text_free(m);
    cr_assert(eq(int, kv_text_build_match("", 0, NULL, 0, &m, &n, &empty), KV_OK));
    cr_expect(eq(int, empty, 1));
    cr_expect(m == NULL);
}

Test(text, build_match_nul_becomes_space)
{
    /* FTS5 ends a string at NUL; the escaped phrase carries a space instead */
    char *m;
    size_t n;
    int empty;
    cr_assert(eq(int, kv_text_build_match("a\0b\"", 4, NULL, 1, &m, &n, &empty), KV_OK));
    cr_expect(eq(int, empty, 0));
    cr_expect(eq(sz, n, 7));
    cr_expect(eq(int, memcmp(m, "\"a b\"\"\"", 7), 0));
    cr_expect(memchr(m, '\0', n) == NULL);
    kv_text_free(m);
}

Test(text, multi_column_texts_snippets_and_column_filter)
{
    const char *cols[] = {"title", "body"};
    kv_text *t = NULL;
    char err[256];
    cr_assert(eq(int, kv_text_open(path, "docs", cols, 2, &t, err, sizeof err), KV_OK), "%s", err);
    const char *d1[] = {"Python Guide", "Learn programming basics"};
    const char *d2[] = {"Java Guide", "Python comparison included"};
    size_t l1[] = {strlen(d1[0]), strlen(d1[1])}, l2[] = {strlen(d2[0]), strlen(d2[1])};
    int64_t id1, id2;
    cr_assert(eq(int, kv_text_insert(t, d1, l1, "x", 1, &id1), KV_OK));
    cr_assert(eq(int, kv_text_insert(t, d2, l2, "y", 1, &id2), KV_OK));

    kv_text_hits *h = NULL;
    cr_assert(eq(int, kv_text_search(t, "Python", 6, "body", 10, KV_TEXT_ESCAPE | KV_TEXT_WITH_TEXTS, NULL, &h), KV_OK));
    cr_assert(eq(sz, h->n, 1));
    cr_expect(eq(i64, h->hits[0].id, id2));
    cr_expect(eq(str, (char *)h->hits[0].texts[0], "Java Guide"));
    cr_expect(eq(sz, h->hits[0].text_lens[1], strlen(d2[1])));
    kv_text_hits_free(h);

    cr_expect(eq(int, kv_text_search(t, "Python", 6, "nope", 10, KV_TEXT_ESCAPE, NULL, &h), KV_INVALID));

    kv_text_snippet sn = {.column = 1, .start = "<b>", .end = "</b>", .ellipsis = "...", .tokens = 10};
    cr_assert(eq(int, kv_text_search(t, "Python", 6, NULL, 10, KV_TEXT_ESCAPE, &sn, &h), KV_OK));
    cr_assert(eq(sz, h->n, 2));
    int highlighted = 0;
    for (size_t i = 0; i < h->n; i++)
        if (strstr(h->hits[i].snippet, "<b>Python</b>"))
            highlighted++;
    cr_expect(eq(int, highlighted, 1)); /* only d2's body holds the word */
    kv_text_hits_free(h);
    sn.column = 2;
    cr_expect(eq(int, kv_text_search(t, "Python", 6, NULL, 10, KV_TEXT_ESCAPE, &sn, &h), KV_INVALID));

    uint8_t *val;
    size_t vlen;
    cr_expect(eq(int, kv_text_get(t, "Python", 6, &val, &vlen), KV_INVALID));
    kv_text_close(t);
}

Test(text, crud_get_update_delete_count_keys_clear)
{
    kv_text *t = open1();
    int64_t a = ins(t, "unique_key_123", "va");
    int64_t b = ins(t, "another key here", "vb");
    uint8_t *val;
    size_t vlen;
    cr_assert(eq(int, kv_text_get(t, "unique_key_123", 14, &val, &vlen), KV_OK));
    cr_expect(eq(sz, vlen, 2));
    cr_expect(memcmp(val, "va", 2) == 0);
    kv_text_free(val);
    cr_expect(eq(int, kv_text_get(t, "missing", 7, &val, &vlen), KV_NOTFOUND));
    /* a quote in the key is bound, not spliced */
    cr_expect(eq(int, kv_text_get(t, "it's", 4, &val, &vlen), KV_NOTFOUND));

    kv_text_doc *d;
    cr_assert(eq(int, kv_text_get_by_id(t, b, &d), KV_OK));
    cr_expect(eq(str, d->texts[0], "another key here"));
    cr_expect(memcmp(d->val, "vb", 2) == 0);
    kv_text_doc_free(d);
    cr_expect(eq(int, kv_text_get_by_id(t, 999, &d), KV_NOTFOUND));
    cr_expect(eq(str, (char *)kv_text_errmsg(t), "ID 999 not found"));

    const char *nt[] = {"replaced words"};
    size_t nl[] = {14};
    cr_assert(eq(int, kv_text_update(t, a, nt, nl, "new", 3), KV_OK));
    cr_assert(eq(int, kv_text_get_by_id(t, a, &d), KV_OK));
    cr_expect(eq(str, d->texts[0], "replaced words"));
    cr_expect(eq(sz, d->vlen, 3));
    kv_text_doc_free(d);
    cr_expect(eq(int, kv_text_update(t, 999, nt, nl, NULL, 0), KV_OK)); /* texts: no-op */
    cr_expect(eq(int, kv_text_update(t, 999, NULL, NULL, "v", 1), KV_NOTFOUND));
    cr_expect(eq(int, kv_text_update(t, a, NULL, NULL, NULL, 0), KV_INVALID));

    int64_t c;
    cr_assert(eq(int, kv_text_count_matches(t, "replaced OR another", 19, &c), KV_OK));
    cr_expect(eq(i64, c, 2));
    cr_expect(eq(int, kv_text_count_matches(t, "AND AND", 7, &c), KV_SQLITE));

    int64_t *ids;
    size_t n;
    for (int i = 0; i < 8; i++)
        ins(t, "filler", "f");
    cr_assert(eq(int, kv_text_keys(t, 3, 2, &ids, &n), KV_OK));
    cr_expect(eq(sz, n, 3));
    for (size_t i = 1; i < n; i++)
        cr_expect(ids[i] > ids[i - 1]);
    kv_text_free(ids);

    int removed, found;
    cr_assert(eq(int, kv_text_delete(t, a, &removed), KV_OK));
    cr_expect(eq(int, removed, 1));
    cr_assert(eq(int, kv_text_delete(t, a, &removed), KV_OK));
    cr_expect(eq(int, removed, 0));
    cr_assert(eq(int, kv_text_exists(t, a, &found), KV_OK));
    cr_expect(eq(int, found, 0));
    cr_assert(eq(int, kv_text_count(t, &c), KV_OK));
    cr_expect(eq(i64, c, 9));
    cr_assert(eq(int, kv_text_clear(t), KV_OK));
    cr_assert(eq(int, kv_text_count(t, &c), KV_OK));
    cr_expect(eq(i64, c, 0));
    kv_text_close(t);

    /* value rows went with their documents */
    cr_expect(eq(i64, kvtest_sql_i64(path, "SELECT COUNT(*) FROM text_vault_values"), 0));
}

Test(text, bad_names_rejected)
{
    kv_text *t = (kv_text *)0x1;
    char err[256];
    const char *bad1[] = {"ok", "has space"};
    const char *bad2[] = {"a\"b"};
    const char *dup[] = {"a", "a"};
    const char *good[] = {"content"};
    cr_expect(eq(int, kv_text_open(path, "t", bad1, 2, &t, err, sizeof err), KV_INVALID));
    cr_expect(t == NULL);
    cr_expect(eq(int, kv_text_open(path, "t", bad2, 1, &t, err, sizeof err), KV_INVALID));
    cr_expect(eq(int, kv_text_open(path, "t", dup, 2, &t, err, sizeof err), KV_INVALID));
    cr_expect(eq(int, kv_text_open(path, "bad table;", good, 1, &t, err, sizeof err), KV_INVALID));
    cr_expect(strstr(err, "Invalid table name") != NULL);
    cr_expect(eq(int, kv_text_open(path, "t", good, 0, &t, err, sizeof err), KV_INVALID));
}

Test(text, locked_database_fails_fast_without_losing_data)
{
    kv_text *t = open1();
    ins(t, "kept document", "v");
    sqlite3 *db;
    cr_assert(eq(int, sqlite3_open(path, &db), SQLITE_OK));
    cr_assert(eq(int, sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK));
    const char *texts[] = {"blocked"};
    size_t lens[] = {7};
    int64_t id;
    cr_expect(eq(int, kv_text_insert(t, texts, lens, "x", 1, &id), KV_BUSY));
    cr_expect(strstr(kv_text_errmsg(t), "locked") != NULL, "%s", kv_text_errmsg(t));
    sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(db);
    int64_t c;
    cr_assert(eq(int, kv_text_count(t, &c), KV_OK));
    cr_expect(eq(i64, c, 1));
    kv_text_close(t);
}

/* Group commit (kv_text_tx_begin): writes join one transaction, each in its
 * savepoint; a failing one is undone alone with its usual status; nothing is
 * visible to another connection before the commit; a rollback undoes all. */
Test(text, tx_groups_writes_and_a_failing_one_is_undone_alone)
{
    kv_text *t = open1(), *other = open1();
    int64_t n = -1;
    cr_assert(eq(int, kv_text_tx_begin(t), KV_OK), "%s", kv_text_errmsg(t));
    int64_t a = ins(t, "alpha one", "a");
    const char *texts[] = {"x"};
    size_t lens[] = {1};
    cr_expect(eq(int, kv_text_update(t, 999, texts, lens, "v", 1), KV_NOTFOUND));
    cr_expect(strstr(kv_text_errmsg(t), "no rows") != NULL || strstr(kv_text_errmsg(t), "not found") != NULL, "%s", kv_text_errmsg(t));
    int64_t b = ins(t, "beta two", "b");
    cr_expect(eq(int, kv_text_count(t, &n), KV_OK));
    cr_expect(eq(i64, n, 2));
    cr_expect(eq(int, kv_text_count(other, &n), KV_OK));
    cr_expect(eq(i64, n, 0));   /* not committed yet */
    cr_assert(eq(int, kv_text_tx_end(t, 1), KV_OK), "%s", kv_text_errmsg(t));
    cr_expect(eq(int, kv_text_count(other, &n), KV_OK));
    cr_expect(eq(i64, n, 2));
    cr_expect(eq(i64, b, a + 1));
    /* rolled back: nothing stays; the handle writes alone again after */
    cr_assert(eq(int, kv_text_tx_begin(t), KV_OK));
    ins(t, "gamma three", "c");
    cr_assert(eq(int, kv_text_tx_end(t, 0), KV_OK));
    cr_expect(eq(int, kv_text_count(other, &n), KV_OK));
    cr_expect(eq(i64, n, 2));
    ins(t, "delta four", "d");
    cr_expect(eq(int, kv_text_count(other, &n), KV_OK));
    cr_expect(eq(i64, n, 3));
    /* another connection holding the write lock: KV_BUSY, nothing opened */
    cr_assert(eq(int, kv_text_tx_begin(other), KV_OK));
    cr_expect(eq(int, kv_text_tx_begin(t), KV_BUSY));
    cr_assert(eq(int, kv_text_tx_end(other, 1), KV_OK));
    ins(t, "epsilon five", "e");
    kv_text_close(other);
    kv_text_close(t);
}

/* Leases (kvault/oprec.h): blocks above every document and every block
 * granted, the tail given back when it is the last block, explicit ids,
 * and inserts without an id that never take a granted one. */
Test(text, leased_ids_blocks_and_explicit_inserts)
{
    kv_text *t = open1();
    kv_conn c;
    kv_text_conn(t, &c);
    const char *texts[1] = {"a"};
    size_t lens[1] = {1};
    int64_t next = 0, lo = 0, id = 0;
    cr_assert_eq(kv_text_next_id(t, &next), KV_OK);
    cr_assert_eq(next, 1);
    cr_assert_eq(ins(t, "one", "v"), 1);
    cr_assert_eq(kv_text_next_id(t, &next), KV_OK);
    cr_assert_eq(next, 2);
    /* a block [2, 6), then one above it */
    cr_assert_eq(kv_lease_grant(&c, "text_vault", next, 4, &lo), KV_OK, "%s", kv_text_errmsg(t));
    cr_assert_eq(lo, 2);
    cr_assert_eq(kv_lease_grant(&c, "text_vault", next, 2, &lo), KV_OK);
    cr_assert_eq(lo, 6);
    /* explicit ids, out of order; a taken one fails and writes nothing */
    cr_assert_eq(kv_text_insert_at(t, 6, texts, lens, "x", 1, &id), KV_OK);
    cr_assert_eq(id, 6);
    cr_assert_eq(kv_text_insert_at(t, 2, texts, lens, "y", 1, &id), KV_OK);
    cr_assert_eq(id, 2);
    int64_t count = 0;
    cr_assert_neq(kv_text_insert_at(t, 2, texts, lens, "z", 1, &id), KV_OK);
    cr_assert_eq(kv_text_count(t, &count), KV_OK);
    cr_assert_eq(count, 3);
    /* an insert without an id skips every granted block */
    cr_assert_eq(kv_text_insert_leased(t, texts, lens, "w", 1, &id), KV_OK);
    cr_assert_eq(id, 8);
    /* the first block's tail is not the last block: nothing changes; the
     * last block's tail is, but an insert took the id after it */
    cr_assert_eq(kv_lease_return(&c, "text_vault", 3, 6), KV_OK);
    cr_assert_eq(kv_lease_return(&c, "text_vault", 7, 8), KV_OK);
    cr_assert_eq(kv_text_insert_leased(t, texts, lens, "w", 1, &id), KV_OK);
    cr_assert_eq(id, 9);
    /* a last block given back whole: the next id follows the documents */
    cr_assert_eq(kv_text_next_id(t, &next), KV_OK);
    cr_assert_eq(next, 10);
    cr_assert_eq(kv_lease_grant(&c, "text_vault", next, 16, &lo), KV_OK);
    cr_assert_eq(lo, 10);
    cr_assert_eq(kv_lease_return(&c, "text_vault", 10, 26), KV_OK);
    cr_assert_eq(kv_text_insert_leased(t, texts, lens, "w", 1, &id), KV_OK);
    cr_assert_eq(id, 10);
    cr_assert_eq(kv_text_insert(t, texts, lens, "w", 1, &id), KV_OK);
    cr_assert_eq(id, 11);
    cr_assert_eq(kv_lease_grant(&c, "text_vault", 1, 0, &lo), KV_INVALID);
    cr_assert_eq(kv_lease_return(&c, "text_vault", 5, 4), KV_INVALID);
    kv_text_close(t);
}
