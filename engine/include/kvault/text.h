/*
 * text.h - full-text store of libkvault: SQLite FTS5 with BM25 ranking
 * (docs/api.md §7, the engine behind kohakuvault.TextVault).
 *
 * Layout in the user's file (docs/api.md §7.1, exactly):
 *
 *   CREATE VIRTUAL TABLE IF NOT EXISTS <table>
 *       USING fts5(<col1>, ..., <colN>, value_ref UNINDEXED)
 *   CREATE TABLE IF NOT EXISTS <table>_values
 *       (id INTEGER PRIMARY KEY AUTOINCREMENT, value BLOB NOT NULL)
 *
 * A document is one FTS row (its rowid is the document id) whose value_ref
 * holds the id of its <table>_values row; the value bytes are opaque to the
 * engine (the Python layer stores §3-encoded values there).
 *
 * Ranking: SQLite's bm25() with default weights (FTS5 documentation,
 * https://sqlite.org/fts5.html §5.1.1); rows are returned in ascending bm25
 * order and reported with score = -bm25, so scores are positive and
 * descending, higher = more relevant.
 *
 * Thread safety: a kv_text handle is not internally locked: one thread at a
 * time (the Python binding serialises with its own mutex). Distinct handles
 * may be used concurrently, also from several processes (WAL). Do not use a
 * handle in a child after fork().
 */
#ifndef KVAULT_TEXT_H
#define KVAULT_TEXT_H

#include "kvault/kvault.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Opaque full-text store handle: one SQLite connection and its statements. */
typedef struct kv_text kv_text;

/** Open (creating if needed) the full-text store `table` with `ncols`
 *  text columns in the database at `path`.
 *
 *  Connection pragmas (docs/api.md §7.1): journal_mode=WAL, synchronous=NORMAL,
 *  temp_store=MEMORY, no busy timeout (a locked database fails at once with
 *  KV_BUSY). No kohakuvault_meta table is created.
 *
 *  `table` must be an ASCII identifier `[A-Za-z_][A-Za-z0-9_]*` (1..128
 *  bytes). Each column name (NUL-terminated UTF-8) must be non-empty and made
 *  of ASCII letters, digits, '_' or non-ASCII UTF-8 bytes (the Python layer
 *  checks the stricter Unicode rule), must not be "value_ref", and names must
 *  be distinct. ncols is 1..255.
 *
 *  On success *out owns the handle (free with kv_text_close). On failure
 *  *out is NULL and `err` (may be NULL) receives a NUL-terminated message of
 *  at most errlen-1 bytes. Returns KV_OK; KV_INVALID (bad name or count);
 *  KV_BUSY; KV_IO; KV_CORRUPT; KV_NOMEM; KV_SQLITE (e.g. an existing table of
 *  another kind under that name). Thread-safe. */
KV_API kv_status kv_text_open(const char *path, const char *table,
                              const char *const *columns, size_t ncols,
                              kv_text **out, char *err, size_t errlen);

/** Run a passive WAL checkpoint (errors ignored), finalize the statements,
 *  close the connection and free the handle. NULL is a no-op. */
KV_API void kv_text_close(kv_text *t);

/** Message of the last failure on `t` ("" if none), e.g. SQLite's
 *  "fts5: syntax error near ..." or "database is locked". Owned by the
 *  handle; valid until the next call on `t`. */
KV_API const char *kv_text_errmsg(const kv_text *t);

/** Number of text columns of the store. */
KV_API size_t kv_text_ncolumns(const kv_text *t);

/** Insert one document: `texts[i]` (UTF-8, `lens[i]` bytes) for column i,
 *  i < ncols, and the value `val` (`vlen` bytes, may be empty). Writes the
 *  value row, then the FTS row, in one transaction. *id receives the FTS
 *  rowid (the document id). Copies every buffer. Returns KV_OK, KV_BUSY,
 *  KV_IO, KV_NOMEM, KV_SQLITE. */
KV_API kv_status kv_text_insert(kv_text *t, const char *const *texts, const size_t *lens,
                                const void *val, size_t vlen, int64_t *id);

/** kv_text_insert with the document id chosen by the caller: `at` > 0 is
 *  the FTS rowid of the new document (an id already in use fails with
 *  KV_SQLITE, "constraint failed", and nothing is written); `at` <= 0 lets
 *  SQLite assign max(rowid) + 1, as kv_text_insert does. The shared-mode
 *  writer inserts the documents of a client that took its ids from a
 *  lease (kvault/oprec.h, kv_lease_grant). Statuses as kv_text_insert. */
KV_API kv_status kv_text_insert_at(kv_text *t, int64_t at, const char *const *texts,
                                   const size_t *lens, const void *val, size_t vlen, int64_t *id);

/** kv_text_insert with the id kv_lease_next gives (kvault/oprec.h): the
 *  next id above every document and every block of ids the shared-mode
 *  writer granted (a client of a writer that died may still insert the
 *  ids of its block). In one transaction of its own, or inside
 *  kv_text_tx_begin's. Statuses as kv_text_insert. */
KV_API kv_status kv_text_insert_leased(kv_text *t, const char *const *texts, const size_t *lens,
                                       const void *val, size_t vlen, int64_t *id);

/** *next = the id kv_text_insert would give the next document now:
 *  max(rowid) + 1, or 1 for an empty store (ids of deleted documents at the
 *  top are given again, as SQLite does for a rowid table). Reads in the
 *  connection's open transaction, if any. KV_OK, KV_BUSY, KV_IO, KV_SQLITE. */
KV_API kv_status kv_text_next_id(kv_text *t, int64_t *next);

/** One search result. All pointers borrow the kv_text_hits that holds it. */
typedef struct kv_text_hit {
    int64_t id;             /**< document id (FTS rowid) */
    double score;           /**< -bm25(table): positive, higher is better */
    const uint8_t *val;     /**< stored value bytes */
    size_t vlen;            /**< bytes at val */
    const char **texts;     /**< ncols column texts (UTF-8) if requested, else NULL */
    const size_t *text_lens;/**< byte lengths of texts[i], or NULL */
    const char *snippet;    /**< snippet text (UTF-8) if requested, else NULL */
    size_t snippet_len;     /**< bytes at snippet */
} kv_text_hit;

/** Results of kv_text_search: `n` hits in ascending bm25 (descending score)
 *  order. Allocated by the engine; free with kv_text_hits_free. */
typedef struct kv_text_hits {
    size_t n;               /**< number of hits */
    kv_text_hit *hits;      /**< n hits */
    size_t ncols;           /**< entries in each hit's texts/text_lens */
    void *mem_;             /**< private: backing storage */
} kv_text_hits;

/** Snippet request for kv_text_search (FTS5 snippet(), docs/api.md §7.2). */
typedef struct kv_text_snippet {
    int column;             /**< column index 0..ncols-1 */
    const char *start;      /**< highlight start text, e.g. "**" (NUL-terminated) */
    const char *end;        /**< highlight end text (NUL-terminated) */
    const char *ellipsis;   /**< text for trimmed parts, "..." in the API */
    int tokens;             /**< max tokens in the snippet (FTS5 limits it to 1..64) */
} kv_text_snippet;

/** Search flags. */
#define KV_TEXT_ESCAPE     0x1u  /**< quote the query as one FTS5 phrase (docs/api.md §7.3) */
#define KV_TEXT_WITH_TEXTS 0x2u  /**< fill each hit's texts/text_lens */

/** Build the FTS5 MATCH expression of docs/api.md §7.3 from a user query.
 *
 *  With `escape`: a query that is empty or only ASCII whitespace yields
 *  *empty = 1 (no search should run); otherwise the whole query becomes one
 *  FTS5 string: internal '"' doubled, each NUL byte replaced by a space
 *  (the tokenizer splits indexed text at NUL too), wrapped in '"'. Without `escape`: the
 *  query is used as is; an empty string yields *empty = 1. If `column` is
 *  non-NULL the expression becomes `<column>:<expr>`.
 *
 *  On KV_OK with *empty == 0, *out receives a mi_malloc'd NUL-terminated
 *  string (free with kv_text_free) and *outlen its length in bytes; with
 *  *empty == 1, *out is NULL. Returns KV_OK or KV_NOMEM. Thread-safe. */
KV_API kv_status kv_text_build_match(const char *query, size_t qlen, const char *column,
                                     int escape, char **out, size_t *outlen, int *empty);

/** Free memory returned by kv_text_build_match (NULL is a no-op). */
KV_API void kv_text_free(void *p);

/** Full-text search: the best `k` documents matching `query` (`qlen`
 *  bytes), ranked by bm25.
 *
 *  `column` (may be NULL) restricts the match to that column (must be one
 *  of the store's columns, else KV_INVALID); `flags` is a combination of
 *  KV_TEXT_ESCAPE and KV_TEXT_WITH_TEXTS; `snip` (may be NULL) requests a
 *  snippet per hit. The MATCH expression is built by kv_text_build_match;
 *  an empty query gives zero hits without touching SQLite. k <= 0 gives
 *  zero hits.
 *
 *  On KV_OK *out owns the results (free with kv_text_hits_free). Returns
 *  KV_OK; KV_INVALID (unknown column, bad snippet column); KV_SQLITE (FTS5
 *  syntax error in an unescaped query; message via kv_text_errmsg);
 *  KV_BUSY; KV_IO; KV_NOMEM. */
KV_API kv_status kv_text_search(kv_text *t, const char *query, size_t qlen,
                                const char *column, int64_t k, unsigned flags,
                                const kv_text_snippet *snip, kv_text_hits **out);

/** kv_db_set_commit_guard on the store's connection: `g` (NULL removes it)
 *  runs in every write transaction of `t` that commits, as there; a refused
 *  commit makes the write fail (rolled back, nothing changed) with
 *  g->refused set. `g` must outlive the guard. One thread at a time. */
KV_API void kv_text_set_commit_guard(kv_text *t, kv_commit_guard *g);

/** Group commit: open a write transaction (BEGIN IMMEDIATE) on the store's
 *  connection that the next writes of `t` join, each in its own savepoint:
 *  a write that fails is rolled back alone and returns its usual status and
 *  message, the others stay, and all become visible at kv_text_tx_end.
 *  Reads of `t` in between see the transaction's changes. Returns KV_OK,
 *  KV_BUSY (another connection holds the write lock; nothing opened),
 *  KV_IO, KV_SQLITE. Not nestable. One thread at a time. */
KV_API kv_status kv_text_tx_begin(kv_text *t);

/** End kv_text_tx_begin's transaction: commit != 0 commits it (KV_OK, or
 *  the failure after which every write since kv_text_tx_begin is undone),
 *  commit == 0 rolls it back (KV_OK). The handle writes in its own
 *  transactions again afterwards. */
KV_API kv_status kv_text_tx_end(kv_text *t, int commit);

/** Free search results (NULL is a no-op). */
KV_API void kv_text_hits_free(kv_text_hits *h);

/** Value of the first document (lowest rowid) whose first column contains
 *  `key` as a phrase (FTS5 `"key"` match; the key is bound, never spliced
 *  into SQL). On KV_OK *val receives a mi_malloc'd copy of `*vlen` bytes
 *  (free with kv_text_free). Returns KV_OK; KV_NOTFOUND; KV_INVALID (the
 *  store has more than one column, or the key is empty); KV_SQLITE; KV_BUSY;
 *  KV_IO; KV_NOMEM. */
KV_API kv_status kv_text_get(kv_text *t, const char *key, size_t klen,
                             uint8_t **val, size_t *vlen);

/** A document fetched by id (kv_text_get_by_id); free with kv_text_doc_free. */
typedef struct kv_text_doc {
    size_t ncols;           /**< number of texts */
    char **texts;           /**< ncols NUL-terminated UTF-8 texts */
    size_t *text_lens;      /**< byte lengths of texts[i] */
    uint8_t *val;           /**< value bytes */
    size_t vlen;            /**< bytes at val */
} kv_text_doc;

/** Fetch document `id`: its column texts and value. On KV_OK *out owns a
 *  new document (free with kv_text_doc_free). Returns KV_OK; KV_NOTFOUND
 *  (no such id, or its value row is gone); KV_BUSY; KV_IO; KV_NOMEM;
 *  KV_SQLITE. */
KV_API kv_status kv_text_get_by_id(kv_text *t, int64_t id, kv_text_doc **out);

/** Free a document from kv_text_get_by_id (NULL is a no-op). */
KV_API void kv_text_doc_free(kv_text_doc *d);

/** Delete document `id` and its value row in one transaction. *removed
 *  (may be NULL) is 1 if a document was removed, 0 if the id was unknown
 *  (not an error). Returns KV_OK, KV_BUSY, KV_IO, KV_SQLITE. */
KV_API kv_status kv_text_delete(kv_text *t, int64_t id, int *removed);

/** Update document `id` in one transaction: if `texts` is non-NULL replace
 *  every column with texts[i] (`lens[i]` bytes); an unknown id makes this
 *  part a no-op. If `val` is non-NULL replace the value with `vlen` bytes;
 *  an unknown id then gives KV_NOTFOUND (message "Query returned no rows")
 *  and nothing is changed. Returns KV_OK, KV_NOTFOUND, KV_INVALID (both
 *  NULL), KV_BUSY, KV_IO, KV_SQLITE. */
KV_API kv_status kv_text_update(kv_text *t, int64_t id, const char *const *texts,
                                const size_t *lens, const void *val, size_t vlen);

/** *found = 1 if document `id` exists. Returns KV_OK, KV_BUSY, KV_IO,
 *  KV_SQLITE. */
KV_API kv_status kv_text_exists(kv_text *t, int64_t id, int *found);

/** *count = number of rows of the FTS table. Returns KV_OK, KV_BUSY,
 *  KV_IO, KV_SQLITE. */
KV_API kv_status kv_text_count(kv_text *t, int64_t *count);

/** *count = number of documents matching the raw FTS5 expression `query`
 *  (never escaped). Returns KV_OK; KV_SQLITE (FTS5 syntax error, message via
 *  kv_text_errmsg); KV_BUSY; KV_IO. */
KV_API kv_status kv_text_count_matches(kv_text *t, const char *query, size_t qlen,
                                       int64_t *count);

/** Delete every document and value row in one transaction. Returns KV_OK,
 *  KV_BUSY, KV_IO, KV_SQLITE. */
KV_API kv_status kv_text_clear(kv_text *t);

/** Document ids in table (rowid) order, skipping `offset` and returning at
 *  most `limit` (limit < 0: no limit). On KV_OK *ids receives a mi_malloc'd
 *  array of *n ids (free with kv_text_free; NULL when *n == 0). Returns
 *  KV_OK, KV_INVALID (offset < 0), KV_BUSY, KV_IO, KV_NOMEM, KV_SQLITE. */
KV_API kv_status kv_text_keys(kv_text *t, int64_t limit, int64_t offset,
                              int64_t **ids, size_t *n);

#ifdef __cplusplus
}
#endif
#endif /* KVAULT_TEXT_H */
