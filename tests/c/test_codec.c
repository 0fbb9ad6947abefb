/* test_codec.c - libkvault value codec: auto-pack header, MessagePack/CBOR
 * encoder + visitor decoder round trips, malformed input, vectors, the 0x02
 * read heuristic. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kvault/codec.h"

/* ---- a test visitor that renders the decoded item as text ---- */
typedef struct { char s[4096]; size_t n; int first[64]; int depth; } tv;
static void tv_put(tv *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tv_put(tv *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    /* Deeply nested input renders past the buffer: keep the text truncated
     * (n never passes the last byte) instead of writing beyond it. */
    if (t->n < sizeof t->s - 1) {
        int w = vsnprintf(t->s + t->n, sizeof t->s - t->n, fmt, ap);
        if (w > 0)
            t->n = t->n + (size_t)w < sizeof t->s - 1 ? t->n + (size_t)w : sizeof t->s - 1;
    }
    va_end(ap);
}
/* first[] tracks "no element yet" per nesting level; levels past its end
 * (the deep-nesting tests) share its last entry. */
#define TV_LEVEL(t) ((t)->depth < 63 ? (t)->depth : 63)
static void tv_sep(tv *t)
{
    if (t->depth > 0) {
        if (!t->first[TV_LEVEL(t)])
            tv_put(t, ",");
        t->first[TV_LEVEL(t)] = 0;
    }
}
static int v_nil(void *c) { tv_sep(c); tv_put(c, "nil"); return 0; }
static int v_bool(void *c, int b) { tv_sep(c); tv_put(c, b ? "true" : "false"); return 0; }
static int v_int(void *c, int64_t i) { tv_sep(c); tv_put(c, "%lld", (long long)i); return 0; }
static int v_uint(void *c, uint64_t u) { tv_sep(c); tv_put(c, "u%llu", (unsigned long long)u); return 0; }
static int v_dbl(void *c, double d) { tv_sep(c); tv_put(c, "%g", d); return 0; }
static int v_str(void *c, const char *s, size_t n) { tv_sep(c); tv_put(c, "\"%.*s\"", (int)n, s); return 0; }
static int v_ab(void *c, size_t n) { tv *t = c; tv_sep(t); tv_put(t, "["); ++t->depth; t->first[TV_LEVEL(t)] = 1; return 0; }
static int v_ae(void *c) { tv *t = c; t->depth--; tv_put(t, "]"); return 0; }
static int v_mb(void *c, size_t n) { tv *t = c; tv_sep(t); tv_put(t, "{"); ++t->depth; t->first[TV_LEVEL(t)] = 1; return 0; }
static int v_me(void *c) { tv *t = c; t->depth--; tv_put(t, "}"); return 0; }
static const kv_visitor tvis = {v_nil, v_bool, v_int, v_uint, v_dbl, v_str, v_ab, v_ae, v_mb, v_me};

static kv_status decode_text(kv_fmt f, const void *p, size_t n, tv *t, char *err)
{
    memset(t, 0, sizeof *t);
    return kv_decode(f, p, n, &tvis, t, NULL, err, 128);
}

/* encode {"a":[1,-2,2.5,nil,true],"b":"x","c":u(2^64-1)} */
static void encode_sample(kv_fmt f, kv_buf *b)
{
    kv_enc e;
    kv_enc_init(&e, f, b);
    kv_enc_map(&e, 3);
    kv_enc_str(&e, "a", 1);
    kv_enc_array(&e, 5);
    kv_enc_int(&e, 1);
    kv_enc_int(&e, -2);
    kv_enc_double(&e, 2.5);
    kv_enc_nil(&e);
    kv_enc_bool(&e, 1);
    kv_enc_str(&e, "b", 1);
    kv_enc_str(&e, "x", 1);
    kv_enc_str(&e, "c", 1);
    cr_assert(eq(int, kv_enc_uint(&e, UINT64_MAX), KV_OK));
}

Test(codec, header_roundtrip_every_encoding)
{
    for (int enc = 0; enc <= 6; enc++) {
        uint8_t v[14];
        kv_hdr_write(v, (uint8_t)enc);
        memcpy(v + 10, "data", 4);
        uint8_t got;
        const uint8_t *p;
        size_t n;
        cr_assert(eq(int, kv_hdr_parse(v, sizeof v, &got, &p, &n), KV_HDR_OK));
        cr_assert(eq(int, got, enc));
        cr_assert(eq(sz, n, 4));
        cr_assert(eq(int, memcmp(p, "data", 4), 0));
    }
    static const uint8_t exact[10] = {0x89, 0x4B, 0x01, 0x04, 0, 0, 0, 0, 0x56, 0x4B};
    uint8_t h[10];
    kv_hdr_write(h, KV_ENC_MSGPACK);
    cr_assert(eq(int, memcmp(h, exact, 10), 0), "header bytes must match docs/api.md §3.1");
}

Test(codec, header_malformed)
{
    uint8_t v[12], enc;
    const uint8_t *p;
    size_t n;
    kv_hdr_write(v, KV_ENC_STR);
    /* truncated: < 10 bytes → treated as raw, never read past the end */
    for (size_t len = 0; len < 10; len++)
        cr_assert(eq(int, kv_hdr_parse(v, len, &enc, &p, &n), KV_HDR_NONE));
    /* wrong opening magic → raw */
    v[0] = 0x88;
    cr_assert(eq(int, kv_hdr_parse(v, 12, &enc, &p, &n), KV_HDR_NONE));
    kv_hdr_write(v, KV_ENC_STR);
    v[9] = 0;
    cr_assert(eq(int, kv_hdr_parse(v, 12, &enc, &p, &n), KV_HDR_BAD_MAGIC));
    kv_hdr_write(v, KV_ENC_STR);
    v[2] = 2;
    cr_assert(eq(int, kv_hdr_parse(v, 12, &enc, &p, &n), KV_HDR_BAD_VERSION));
    kv_hdr_write(v, 0x07);
    cr_assert(eq(int, kv_hdr_parse(v, 12, &enc, &p, &n), KV_HDR_BAD_ENCODING));
    kv_hdr_write(v, 0xFF);
    cr_assert(eq(int, kv_hdr_parse(v, 12, &enc, &p, &n), KV_HDR_RESERVED_ENC));
    cr_assert(eq(str, (char *)kv_hdr_strerror(KV_HDR_RESERVED_ENC), "Reserved encoding type"));
    kv_hdr_write(v, KV_ENC_STR);
    v[6] = 1;
    cr_assert(eq(int, kv_hdr_parse(v, 12, &enc, &p, &n), KV_HDR_BAD_RESERVED));
    kv_hdr_write(v, KV_ENC_STR);
    v[4] = 0x80;   /* flags are ignored on read */
    cr_assert(eq(int, kv_hdr_parse(v, 12, &enc, &p, &n), KV_HDR_OK));
}

/* encode_sample in `fmt` decodes back to the same model. */
static void expect_sample_roundtrip(kv_fmt fmt)
{
    kv_buf b = {0};
    tv t;
    char err[128];
    encode_sample(fmt, &b);
    cr_assert(eq(int, decode_text(fmt, b.data, b.len, &t, err), KV_OK), "%s", err);
    cr_assert(eq(str, t.s, "{\"a\",[1,-2,2.5,nil,true],\"b\",\"x\",\"c\",u18446744073709551615}"));
    kv_buf_free(&b);
}

Test(codec, msgpack_roundtrip_and_bytes)
{
    kv_buf b = {0};
    expect_sample_roundtrip(KV_FMT_MSGPACK);
    /* floats are always float64 (0xcb); small ints are fixints */
    kv_enc e;
    kv_enc_init(&e, KV_FMT_MSGPACK, &b);
    kv_enc_double(&e, 1.0);
    kv_enc_int(&e, 5);
    kv_enc_int(&e, 300);
    static const uint8_t want[] = {0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0x05, 0xcd, 0x01, 0x2c};
    cr_assert(eq(sz, b.len, sizeof want));
    cr_assert(eq(int, memcmp(b.data, want, sizeof want), 0));
    kv_buf_free(&b);
}

Test(codec, cbor_roundtrip_and_shortest_floats)
{
    kv_buf b = {0};
    tv t;
    char err[128];
    expect_sample_roundtrip(KV_FMT_CBOR);
    struct { double v; size_t len; uint8_t first; } cases[] = {
        {1.5, 3, 0xf9}, {0.0, 3, 0xf9}, {65504.0, 3, 0xf9}, {5.960464477539063e-08, 3, 0xf9},
        {INFINITY, 3, 0xf9}, {NAN, 3, 0xf9}, {100000.0, 5, 0xfa}, {3.4028234663852886e38, 5, 0xfa},
        {0.1, 9, 0xfb}, {1e300, 9, 0xfb},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kv_enc e;
        kv_enc_init(&e, KV_FMT_CBOR, &b);
        kv_enc_double(&e, cases[i].v);
        cr_assert(eq(sz, b.len, cases[i].len), "value %g", cases[i].v);
        cr_assert(eq(u8, b.data[0], cases[i].first), "value %g", cases[i].v);
        cr_assert(eq(int, decode_text(KV_FMT_CBOR, b.data, b.len, &t, err), KV_OK));
        char want[64];
        snprintf(want, sizeof want, "%g", cases[i].v);
        cr_assert(eq(str, t.s, want));
        kv_buf_free(&b);
    }
}

Test(codec, malformed_inputs_fail_cleanly)
{
    kv_buf b = {0};
    tv t;
    char err[128];
    for (int f = KV_FMT_MSGPACK; f <= KV_FMT_CBOR; f++) {
        encode_sample((kv_fmt)f, &b);
        /* every truncation is an error, never a crash */
        for (size_t len = 0; len < b.len; len++)
            cr_assert(eq(int, decode_text((kv_fmt)f, b.data, len, &t, err), KV_CORRUPT),
                      "fmt %d len %zu", f, len);
        kv_buf_free(&b);
    }
    static const uint8_t mp_bin[] = {0xc4, 0x01, 0x00};          /* bin8 */
    static const uint8_t mp_ext[] = {0xd4, 0x01, 0x00};          /* fixext1 */
    static const uint8_t mp_intkey[] = {0x81, 0x01, 0x02};       /* {1: 2} */
    static const uint8_t mp_bad[] = {0xc1};                      /* never used */
    cr_assert(eq(int, decode_text(KV_FMT_MSGPACK, mp_bin, 3, &t, err), KV_UNSUPPORTED));
    cr_assert(eq(int, decode_text(KV_FMT_MSGPACK, mp_ext, 3, &t, err), KV_UNSUPPORTED));
    cr_assert(eq(int, decode_text(KV_FMT_MSGPACK, mp_intkey, 3, &t, err), KV_UNSUPPORTED));
    cr_assert(eq(str, err, "map keys must be strings"));
    cr_assert(eq(int, decode_text(KV_FMT_MSGPACK, mp_bad, 1, &t, err), KV_CORRUPT));
    static const uint8_t cb_bytes[] = {0x41, 0x00};
    static const uint8_t cb_tag[] = {0xc1, 0x00};
    static const uint8_t cb_intkey[] = {0xa1, 0x01, 0x02};
    static const uint8_t cb_bad[] = {0xfc};
    cr_assert(eq(int, decode_text(KV_FMT_CBOR, cb_bytes, 2, &t, err), KV_UNSUPPORTED));
    cr_assert(eq(int, decode_text(KV_FMT_CBOR, cb_tag, 2, &t, err), KV_UNSUPPORTED));
    cr_assert(eq(int, decode_text(KV_FMT_CBOR, cb_intkey, 3, &t, err), KV_UNSUPPORTED));
    cr_assert(ne(int, decode_text(KV_FMT_CBOR, cb_bad, 1, &t, err), KV_OK));
    /* absurd nesting: rejected, no stack overflow */
    uint8_t deep[100000];
    memset(deep, 0x91, sizeof deep);   /* msgpack fixarray(1) repeated */
    cr_assert(eq(int, decode_text(KV_FMT_MSGPACK, deep, sizeof deep, &t, err), KV_CORRUPT));
    memset(deep, 0x81, sizeof deep);   /* cbor array(1) repeated */
    cr_assert(eq(int, decode_text(KV_FMT_CBOR, deep, sizeof deep, &t, err), KV_CORRUPT));
}

/* Found by fuzz/fuzz_codec.c: a container head announcing more elements
 * than bytes follow. msgpack-c allocated the announced object array first
 * (64 GiB for 5 bytes); CBOR handed the count to the visitor (whose caller
 * pre-sizes a list from it) and wrapped a map of 2^63 pairs to 0 items. Now
 * refused before any visitor call, with nothing rendered. */
Test(codec, container_count_beyond_input_refused)
{
    tv t;
    char err[128];
    static const uint8_t mp_arr[] = {0xdd, 0x7f, 0xff, 0xff, 0xff};     /* array32 2^31-1 */
    static const uint8_t mp_map[] = {0x91, 0xdf, 0x00, 0x01, 0x00, 0x00, 0xc0}; /* [map32 65536] */
    static const uint8_t cb_arr[] = {0x9b, 0, 0, 0, 1, 0, 0, 0, 0};     /* array 2^32 */
    static const uint8_t cb_map[] = {0xbb, 0x80, 0, 0, 0, 0, 0, 0, 1};  /* map 2^63+1 pairs */
    static const uint8_t cb_two[] = {0x82, 0x01};                       /* array 2, 1 item */
    cr_assert(eq(int, decode_text(KV_FMT_MSGPACK, mp_arr, sizeof mp_arr, &t, err), KV_CORRUPT));
    cr_assert(eq(str, err, "truncated input: a container announces more items than bytes follow"));
    cr_assert(eq(int, decode_text(KV_FMT_MSGPACK, mp_map, sizeof mp_map, &t, err), KV_CORRUPT));
    cr_assert(eq(str, err, "truncated input: a container announces more items than bytes follow"));
    cr_assert(eq(int, decode_text(KV_FMT_CBOR, cb_arr, sizeof cb_arr, &t, err), KV_CORRUPT));
    cr_assert(eq(sz, t.n, 0));
    cr_assert(eq(int, decode_text(KV_FMT_CBOR, cb_map, sizeof cb_map, &t, err), KV_CORRUPT));
    cr_assert(eq(sz, t.n, 0));
    cr_assert(eq(int, decode_text(KV_FMT_CBOR, cb_two, sizeof cb_two, &t, err), KV_CORRUPT));
    cr_assert(eq(str, err, "truncated input: a container announces more items than bytes follow"));
    /* exactly as many one-byte items as announced still decode */
    static const uint8_t mp_ok[] = {0x93, 0x01, 0x02, 0x03};
    static const uint8_t cb_ok[] = {0xa1, 0x61, 0x6b, 0xf6};            /* {"k": null} */
    cr_assert(eq(int, decode_text(KV_FMT_MSGPACK, mp_ok, sizeof mp_ok, &t, err), KV_OK));
    cr_assert(eq(str, t.s, "[1,2,3]"));
    cr_assert(eq(int, decode_text(KV_FMT_CBOR, cb_ok, sizeof cb_ok, &t, err), KV_OK));
    cr_assert(eq(str, t.s, "{\"k\",nil}"));
}

Test(codec, vectors_and_heuristic)
{
    kv_buf b = {0};
    uint64_t dims[2] = {2, 3};
    float data[6] = {1, 2, 3, 4, 5, 6};
    cr_assert(eq(int, kv_vec_header_write(&b, KV_VEC_F32, 2, dims), KV_OK));
    kv_buf_append(&b, data, sizeof data);
    cr_assert(eq(sz, b.len, 2 + 8 + 24));
    kv_vec_view v;
    cr_assert(eq(int, kv_vec_parse(b.data, b.len, &v), KV_OK));
    cr_assert(eq(u8, v.ndim, 2));
    cr_assert(eq(u32, v.dims[1], 3));
    cr_assert(eq(u64, v.count, 6));
    cr_assert(eq(int, memcmp(v.data, data, 24), 0));
    for (size_t len = 0; len < b.len; len++)
        cr_assert(eq(int, kv_vec_parse(b.data, len, &v), KV_CORRUPT));
    kv_guess g;
    kv_packer_guess(b.data, b.len, &g);
    cr_assert(eq(int, g.kind, KV_GUESS_VECTOR));
    b.data[0] = 0x0B;
    cr_assert(eq(int, kv_vec_parse(b.data, b.len, &v), KV_CORRUPT));
    kv_buf_free(&b);

    double d = 2.5;
    int64_t i = 42, big = 1000000000000LL;
    kv_packer_guess(&d, 8, &g);
    cr_assert(eq(int, g.kind, KV_GUESS_FLOAT));
    cr_assert(eq(dbl, g.f64, 2.5));
    kv_packer_guess(&i, 8, &g);
    cr_assert(eq(int, g.kind, KV_GUESS_INT));
    cr_assert(eq(i64, g.i64, 42));
    kv_packer_guess(&big, 8, &g);
    cr_assert(eq(int, g.kind, KV_GUESS_FLOAT), "|i| >= 1e12 reads back as float (§3.4)");
    d = 0.0;
    kv_packer_guess(&d, 8, &g);
    cr_assert(eq(int, g.kind, KV_GUESS_INT), "0.0 reads back as int 0 (§3.4)");
    d = 3.0;
    kv_packer_guess(&d, 8, &g);
    cr_assert(eq(int, g.kind, KV_GUESS_FLOAT), "3.0 stays a float");
    kv_packer_guess("", 0, &g);
    cr_assert(eq(int, g.kind, KV_GUESS_EMPTY));
    kv_packer_guess("hello world", 11, &g);
    cr_assert(eq(int, g.kind, KV_GUESS_STR));
    kv_packer_guess("\xff\xfe\x00", 3, &g);
    cr_assert(eq(int, g.kind, KV_GUESS_BYTES));
    cr_assert(kv_utf8_valid("h\xc3\xa9", 3));
    cr_assert(not(kv_utf8_valid("\xc0\xaf", 2)));      /* overlong */
    cr_assert(not(kv_utf8_valid("\xed\xa0\x80", 3)));  /* surrogate */
    cr_assert(not(kv_utf8_valid("\xe2\x82", 2)));      /* truncated */
}
