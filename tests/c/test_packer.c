/* test_packer.c - DataPacker dtype grammar (docs/api.md §5.1), element sizes,
 * scalar/text/padding codecs and fixed-shape vector parsing, including
 * malformed input (clear error, no crash). */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kvault/packer.h"

static kv_packer parse_ok(const char *d)
{
    kv_packer pk;
    char err[KV_PK_ERRLEN];
    cr_assert(eq(int, kv_packer_parse(d, &pk, err), KV_OK), "%s: %s", d, err);
    return pk;
}

Test(packer, elem_sizes_of_every_dtype_form)
{
    static const struct { const char *d; size_t es; } cases[] = {
        {"i64", 8}, {"i64:x", 8}, {"f64", 8}, {"str", 0}, {"string", 0}, {"str:utf16le", 0},
        {"str:32", 32}, {"str:10:ASCII", 10}, {"str:4:latin1", 4}, {"str:8:utf-16be", 8},
        {"bytes", 0}, {"bytes:16", 16}, {"bytes:0", 0}, {"msgpack", 0}, {"messagepack", 0},
        {"msgpack:64", 64}, {"cbor", 0}, {"cbor:9", 9}, {"vec:f32", 0}, {"vector:u8", 0},
        {"vec:f32:8", 33}, {"vec:u8:28:28", 785}, {"vec:float64:2:3", 49}, {"vec:i16:5", 11},
        {"vec:uint64:1", 9}, {"vec:int8:3:1:2", 7},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kv_packer pk = parse_ok(cases[i].d);
        cr_expect(eq(sz, pk.pk_elem_size, cases[i].es), "%s", cases[i].d);
    }
    kv_packer pk = parse_ok("vec:u8:28:28");
    cr_assert(eq(int, pk.pk_ndim, 2));
    cr_assert(eq(u32, pk.pk_dims[1], 28));
    cr_assert(eq(int, pk.pk_vec_type, KV_VEC_U8));
    pk = parse_ok("str:10:ASCII");
    cr_assert(eq(int, pk.pk_enc, KV_STR_ASCII));
}

Test(packer, invalid_dtypes_name_the_problem)
{
    static const char *bad[] = {"i32", "f32", "", "vec", "vec:", "vec:f16", "vec:f32:0",
                                "vec:f32:x", "str:8:utf32", "str:x:utf8", "str:1:utf8:z",
                                "bytes:x", "bytes:-1", "msgpack:1:2", "Vec:f32", "vec:F32"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kv_packer pk;
        char err[KV_PK_ERRLEN];
        cr_expect(eq(int, kv_packer_parse(bad[i], &pk, err), KV_INVALID), "%s", bad[i]);
        cr_expect(strncmp(err, "Invalid dtype:", 14) == 0, "%s -> %s", bad[i], err);
    }
    kv_packer pk;
    char err[KV_PK_ERRLEN];
    kv_packer_parse("i32", &pk, err);
    cr_assert(strstr(err, "Unknown dtype: i32") != NULL, "%s", err);
    /* the grammar follows, pointing scalar element types at vec: */
    cr_expect(strstr(err, "valid: i64, f64") != NULL && strstr(err, "vec:f32") != NULL, "%s", err);
}

Test(packer, scalars_round_trip_little_endian)
{
    uint8_t b[8];
    int64_t iv[] = {0, 1, -1, INT64_MAX, INT64_MIN, 1234567890123LL};
    for (size_t i = 0; i < 6; i++) {
        kv_pack_i64(iv[i], b);
        cr_assert(eq(i64, kv_unpack_i64(b), iv[i]));
    }
    kv_pack_i64(1, b);
    cr_assert(b[0] == 1 && b[7] == 0);
    double dv[] = {0.0, -0.5, 3.25e300, INFINITY};
    for (size_t i = 0; i < 4; i++) {
        kv_pack_f64(dv[i], b);
        cr_assert(kv_unpack_f64(b) == dv[i]);
    }
    kv_pack_f64(NAN, b);
    cr_assert(isnan(kv_unpack_f64(b)));
}

static void str_rt(kv_pk_enc enc, const char *s, size_t want_len)
{
    uint8_t *o = NULL;
    char *back = NULL;
    size_t n = 0, bn = 0;
    char err[KV_PK_ERRLEN];
    cr_assert(eq(int, kv_str_encode(enc, s, strlen(s), &o, &n, err), KV_OK), "%s", err);
    cr_assert(eq(sz, n, want_len));
    cr_assert(eq(int, kv_str_decode(enc, o, n, 0, &back, &bn, err), KV_OK), "%s", err);
    cr_assert(eq(str, back, (char *)s));
    free(o);
    free(back);
}

Test(packer, text_encodings_round_trip)
{
    str_rt(KV_STR_UTF8, "h\xc3\xa9llo \xf0\x9f\x99\x82", 11);
    str_rt(KV_STR_UTF16LE, "h\xc3\xa9\xf0\x9f\x99\x82", 8);   /* 2 + 2 + surrogate pair 4 */
    str_rt(KV_STR_UTF16BE, "abc", 6);
    str_rt(KV_STR_ASCII, "plain", 5);
    str_rt(KV_STR_LATIN1, "caf\xc3\xa9", 4);
    uint8_t le[] = {'h', 0, 'i', 0};
    char *s;
    size_t n;
    char err[KV_PK_ERRLEN];
    cr_assert(eq(int, kv_str_decode(KV_STR_UTF16LE, (uint8_t[]){'h', 0, 'i'}, 3, 0, &s, &n, err), KV_OK));
    cr_assert(eq(str, s, "h"), "a trailing odd byte is dropped");
    free(s);
    cr_assert(eq(int, kv_str_decode(KV_STR_UTF16LE, le, 4, 0, &s, &n, err), KV_OK));
    free(s);
    uint8_t padded[] = {'a', 'b', 0, 0};
    cr_assert(eq(int, kv_str_decode(KV_STR_UTF8, padded, 4, 1, &s, &n, err), KV_OK));
    cr_assert(eq(sz, n, 2));
    free(s);
}

Test(packer, text_violations_are_clear_errors)
{
    uint8_t *o = NULL;
    size_t n;
    char *s;
    char err[KV_PK_ERRLEN];
    cr_assert(eq(int, kv_str_encode(KV_STR_ASCII, "caf\xc3\xa9", 5, &o, &n, err), KV_INVALID));
    cr_assert(strstr(err, "non-ASCII") != NULL, "%s", err);
    cr_assert(eq(int, kv_str_encode(KV_STR_LATIN1, "\xe6\xbc\xa2", 3, &o, &n, err), KV_INVALID));
    cr_assert(strstr(err, "outside Latin1 range") != NULL, "%s", err);
    cr_assert(eq(int, kv_str_decode(KV_STR_UTF8, (uint8_t *)"\xff\xfe", 2, 0, &s, &n, err), KV_INVALID));
    cr_assert(eq(int, kv_str_decode(KV_STR_UTF8, (uint8_t *)"\xe6\xbc", 2, 0, &s, &n, err), KV_INVALID),
              "truncated multibyte sequence");
    cr_assert(eq(int, kv_str_decode(KV_STR_UTF16LE, (uint8_t[]){0x00, 0xD8}, 2, 0, &s, &n, err), KV_INVALID),
              "unpaired surrogate");
    cr_assert(eq(int, kv_str_decode(KV_STR_ASCII, (uint8_t[]){0x80}, 1, 0, &s, &n, err), KV_INVALID));
}

Test(packer, fixed_padding_and_overflow)
{
    uint8_t out[4];
    char err[KV_PK_ERRLEN];
    cr_assert(eq(int, kv_pack_fixed("ab", 2, 4, out, err), KV_OK));
    cr_assert(out[0] == 'a' && out[1] == 'b' && out[2] == 0 && out[3] == 0);
    cr_assert(eq(int, kv_pack_fixed("abcde", 5, 4, out, err), KV_INVALID));
    cr_assert(eq(str, err, "Data too long: 5 > 4"));
}

Test(packer, fixed_vector_parse_and_short_input)
{
    kv_packer pk = parse_ok("vec:f32:2:2");
    uint8_t buf[17] = {KV_VEC_F32};
    uint8_t t;
    const uint8_t *d;
    size_t nb;
    char err[KV_PK_ERRLEN];
    cr_assert(eq(int, kv_packer_vec_fixed(&pk, buf, 17, &t, &d, &nb, err), KV_OK));
    cr_assert(eq(sz, nb, 16));
    cr_assert(d == buf + 1);
    cr_assert(eq(int, kv_packer_vec_fixed(&pk, buf, 10, &t, &d, &nb, err), KV_INVALID));
    cr_assert(strstr(err, "Not enough data") != NULL, "%s", err);
    cr_assert(eq(int, kv_packer_vec_fixed(&pk, buf, 0, &t, &d, &nb, err), KV_INVALID));
    buf[0] = 0x0B;
    cr_assert(eq(int, kv_packer_vec_fixed(&pk, buf, 17, &t, &d, &nb, err), KV_INVALID));
    buf[0] = KV_VEC_U8; /* a different type byte in the data decides the size */
    cr_assert(eq(int, kv_packer_vec_fixed(&pk, buf, 5, &t, &d, &nb, err), KV_OK));
    cr_assert(eq(sz, nb, 4));
}
