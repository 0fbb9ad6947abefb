/*
 * fuzz_colmeta.c -- libFuzzer target for what a ColumnVault reads from a
 * file it did not write: the col_meta rows (dtype, elem_size, length,
 * chunk_bytes, min/max_chunk_bytes; engine/col_meta.c checks their
 * geometry) and the col_chunks rows the reads then follow (actual_size,
 * bytes_used, the chunk bytes; for a variable-size pair the 12-byte index
 * entries pointing into the data column).
 *
 * One in-memory vault serves every input; each input empties both tables
 * and inserts hostile rows through the vault's own connection, then runs
 * what opening and reading a column runs: kv_col_info_get, the dtype
 * parse, kv_col_list / kv_col_count, kv_col_open_fixed + kv_col_len +
 * kv_col_read_fixed at both ends, kv_col_open_var + kv_col_read_var. Each
 * must return a status (KV_CORRUPT, KV_INVALID, ...) or data of the sizes
 * asked, never crash or overrun.
 *
 * Input: a byte stream read front to back (missing bytes read as 0):
 *   2 column rows (col_id 1 "c_data", 2 "c_idx"):
 *     dtype: u8 n, n bytes; then elem_size, length, chunk_bytes,
 *     min_chunk_bytes, max_chunk_bytes, each a tagged integer
 *   u8 chunk count (mod 8), each: u8 col_id (1 or 2), tagged chunk_idx,
 *     tagged actual_size, tagged bytes_used, u16 n, n data bytes
 * A tagged integer is a tag byte: 0 NULL, 1 int8, 2 int32, 3 int64, each
 * little-endian after the tag.
 *
 * Build and run: docs/fuzzing.md.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "col_internal.h"
#include "kvault/column.h"
#include "kvault/packer.h"

#define CHECK(e) do { if (!(e)) abort(); } while (0)

typedef struct rd {
    const uint8_t *p;
    size_t n;
} rd;

static uint64_t take(rd *r, size_t k)
{
    uint64_t v = 0;
    size_t m = k < r->n ? k : r->n;
    memcpy(&v, r->p, m);
    r->p += m;
    r->n -= m;
    return v;
}

/* Bind a tagged integer to parameter i. */
static void bind_tagged(sqlite3_stmt *s, int i, rd *r)
{
    switch (take(r, 1) % 4) {
    case 0: sqlite3_bind_null(s, i); break;
    case 1: sqlite3_bind_int64(s, i, (int8_t)take(r, 1)); break;
    case 2: sqlite3_bind_int64(s, i, (int32_t)take(r, 4)); break;
    default: sqlite3_bind_int64(s, i, (int64_t)take(r, 8)); break;
    }
}

static kv_colvault *cv;
static sqlite3_stmt *ins_meta, *ins_chunk, *del_meta, *del_chunks;

static void setup(void)
{
    char err[256];
    if (cv) return;
    CHECK(kv_colvault_open(":memory:", 64, 4096, &cv, err, sizeof err) == KV_OK);
    CHECK(sqlite3_prepare_v2(cv->db,
                             "INSERT INTO col_meta(col_id, name, dtype, elem_size, length,"
                             " chunk_bytes, min_chunk_bytes, max_chunk_bytes)"
                             " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                             -1, &ins_meta, NULL) == SQLITE_OK);
    CHECK(sqlite3_prepare_v2(cv->db,
                             "INSERT OR REPLACE INTO col_chunks(col_id, chunk_idx, data,"
                             " actual_size, bytes_used) VALUES (?1, ?2, ?3, ?4, ?5)",
                             -1, &ins_chunk, NULL) == SQLITE_OK);
    CHECK(sqlite3_prepare_v2(cv->db, "DELETE FROM col_meta", -1, &del_meta, NULL) == SQLITE_OK);
    CHECK(sqlite3_prepare_v2(cv->db, "DELETE FROM col_chunks", -1, &del_chunks, NULL) == SQLITE_OK);
}

/* Run one statement; NOT NULL and type failures are part of the game. */
static int run(sqlite3_stmt *s)
{
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc;
}

static int list_cb(void *ctx, const char *name, const char *dtype, int64_t length)
{
    CHECK(name && dtype);
    return 0;
}

static void read_fixed(void)
{
    kv_col *col = NULL;
    if (kv_col_open_fixed(cv, 1, &col) != KV_OK) return;
    int64_t n = -1, es = kv_col_elem_size(col);
    if (kv_col_len(col, &n) == KV_OK && es > 0 && es <= 4096) {
        uint8_t *out = malloc(8 * (size_t)es);
        CHECK(out);
        int64_t cnt = n < 8 ? n : 8;
        if (cnt > 0) {
            (void)kv_col_read_fixed(col, 0, cnt, out);
            (void)kv_col_read_fixed(col, n - cnt, cnt, out);
        }
        (void)kv_col_read_fixed(col, -1, 1, out);
        free(out);
    }
    kv_col_close(col);
}

static void read_var(void)
{
    kv_col *col = NULL;
    if (kv_col_open_var(cv, 1, 2, &col) != KV_OK) return;
    int64_t n = -1;
    if (kv_col_len(col, &n) == KV_OK && n > 0) {
        kv_buf b;
        kv_buf_init(&b);
        uint64_t offs[9];
        int64_t cnt = n < 8 ? n : 8;
        if (kv_col_read_var(col, n - cnt, cnt, &b, offs) == KV_OK) {
            CHECK(offs[0] == 0);
            for (int64_t i = 0; i < cnt; i++) CHECK(offs[i] <= offs[i + 1]);
            CHECK(offs[cnt] == b.len);
        }
        kv_buf_free(&b);
    }
    kv_col_close(col);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    rd r = {data, size};
    CHECK(run(del_chunks) == SQLITE_DONE && run(del_meta) == SQLITE_DONE);
    static const char *const names[2] = {"c_data", "c_idx"};
    for (int c = 0; c < 2; c++) {
        size_t dn = (size_t)take(&r, 1);
        if (dn > r.n) dn = r.n;
        sqlite3_bind_int64(ins_meta, 1, c + 1);
        sqlite3_bind_text(ins_meta, 2, names[c], -1, SQLITE_STATIC);
        sqlite3_bind_text(ins_meta, 3, (const char *)r.p, (int)dn, SQLITE_TRANSIENT);
        r.p += dn;
        r.n -= dn;
        for (int i = 4; i <= 8; i++) bind_tagged(ins_meta, i, &r);
        run(ins_meta);
    }
    for (int k = (int)(take(&r, 1) % 8); k > 0; k--) {
        sqlite3_bind_int64(ins_chunk, 1, 1 + (int64_t)(take(&r, 1) & 1));
        bind_tagged(ins_chunk, 2, &r);
        bind_tagged(ins_chunk, 4, &r);
        bind_tagged(ins_chunk, 5, &r);
        size_t n = (size_t)take(&r, 2);
        if (n > r.n) n = r.n;
        sqlite3_bind_blob(ins_chunk, 3, n ? (const void *)r.p : "", (int)n, SQLITE_TRANSIENT);
        r.p += n;
        r.n -= n;
        run(ins_chunk);
    }

    kv_col_info ci;
    if (kv_col_info_get(cv, "c_data", &ci) == KV_OK) {
        CHECK(memchr(ci.ci_dtype, 0, sizeof ci.ci_dtype));
        kv_packer pk;
        char err[KV_PK_ERRLEN];
        (void)kv_packer_parse(ci.ci_dtype, &pk, err);
    }
    int64_t count = 0;
    (void)kv_col_count(cv, &count);
    (void)kv_col_list(cv, list_cb, NULL);
    read_fixed();
    read_var();
    return 0;
}
