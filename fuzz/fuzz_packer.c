/*
 * fuzz_packer.c -- libFuzzer target for DataPacker (engine/packer.c): the
 * dtype grammar (kv_packer_parse) and the unpacking of element bytes for the
 * parsed dtype, as a column read hands them over: scalars, text in the five
 * encodings (kv_str_decode, with the fixed-size NUL stripping), fixed-size
 * padding, MessagePack/CBOR element bodies (kv_decode) and both vector
 * layouts (kv_packer_vec_fixed, kv_vec_parse).
 *
 * Input: the dtype up to the first NUL byte, then the element bytes. Checks:
 * a parsed dtype's sizes agree with its kind; decoded text is valid UTF-8
 * and survives encode -> decode unchanged; borrowed pointers stay inside the
 * input. The element bytes are also fed to kv_str_encode as if they were
 * text (it must refuse invalid UTF-8, never overrun).
 *
 * Build and run: docs/fuzzing.md.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvault/packer.h"

#define CHECK(e) do { if (!(e)) abort(); } while (0)

static int n_nil(void *c) { return 0; }
static int n_bool(void *c, int v) { return 0; }
static int n_int(void *c, int64_t v) { return 0; }
static int n_uint(void *c, uint64_t v) { return 0; }
static int n_dbl(void *c, double v) { return 0; }
static int n_str(void *c, const char *s, size_t n) { return 0; }
static int n_beg(void *c, size_t n) { return 0; }
static int n_end(void *c) { return 0; }
static const kv_visitor null_vis = {n_nil, n_bool, n_int, n_uint, n_dbl, n_str,
                                    n_beg, n_end, n_beg, n_end};

/* Text of `len` bytes in `enc` -> UTF-8 -> `enc` -> UTF-8 again: equal. */
static void text_roundtrip(kv_pk_enc enc, const uint8_t *in, size_t len, int strip)
{
    char err[KV_PK_ERRLEN];
    char *u8 = NULL, *u8b = NULL;
    size_t n = 0, nb = 0, en = 0;
    uint8_t *e = NULL;
    if (kv_str_decode(enc, in, len, strip, &u8, &n, err) != KV_OK) return;
    CHECK(u8[n] == 0 && kv_utf8_valid(u8, n));
    CHECK(kv_str_encode(enc, u8, n, &e, &en, err) == KV_OK);
    CHECK(kv_str_decode(enc, e, en, 0, &u8b, &nb, err) == KV_OK);
    CHECK(nb == n && memcmp(u8, u8b, n) == 0);
    free(u8);
    free(u8b);
    free(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, 0, size);
    if (!nul) return 0;
    size_t dlen = (size_t)(nul - data), len = size - dlen - 1;
    /* exactly sized copies: AddressSanitizer reports any read past them */
    char *dtype = malloc(dlen + 1);
    uint8_t *in = malloc(len ? len : 1);
    if (!dtype || !in) { free(dtype); free(in); return 0; }
    memcpy(dtype, data, dlen + 1);
    memcpy(in, nul + 1, len);

    char err[KV_PK_ERRLEN];
    kv_packer pk;
    kv_status st = kv_packer_parse(dtype, &pk, err);
    CHECK(memchr(err, 0, sizeof err));
    if (st != KV_OK) {
        CHECK(st == KV_INVALID && strncmp(err, "Invalid dtype:", 14) == 0);
        goto out;
    }
    uint8_t type;
    const uint8_t *vd;
    size_t nbytes;
    kv_vec_view vv;
    switch (pk.pk_kind) {
    case KV_PK_I64:
    case KV_PK_F64:
        CHECK(pk.pk_elem_size == 8);
        if (len >= 8) (void)(pk.pk_kind == KV_PK_I64 ? (double)kv_unpack_i64(in) : kv_unpack_f64(in));
        break;
    case KV_PK_STR:
        CHECK(pk.pk_elem_size == pk.pk_fixed && pk.pk_enc <= KV_STR_LATIN1);
        if (pk.pk_has_fixed && pk.pk_fixed <= len)
            text_roundtrip(pk.pk_enc, in, pk.pk_fixed, 1);
        else
            text_roundtrip(pk.pk_enc, in, len, 0);
        break;
    case KV_PK_BYTES:
    case KV_PK_MSGPACK:
    case KV_PK_CBOR: {
        CHECK(pk.pk_elem_size == pk.pk_fixed);
        if (pk.pk_has_fixed && pk.pk_fixed <= 4096) {
            uint8_t *slot = malloc(pk.pk_fixed ? pk.pk_fixed : 1);
            if (slot) {
                st = kv_pack_fixed(in, len, pk.pk_fixed, slot, err);
                CHECK(st == (len <= pk.pk_fixed ? KV_OK : KV_INVALID));
                if (st == KV_OK) CHECK(len == 0 || memcmp(slot, in, len) == 0);
                free(slot);
            }
        }
        if (pk.pk_kind != KV_PK_BYTES) {
            char derr[128];
            size_t used = 0;
            kv_fmt f = pk.pk_kind == KV_PK_MSGPACK ? KV_FMT_MSGPACK : KV_FMT_CBOR;
            if (kv_decode(f, in, len, &null_vis, NULL, &used, derr, sizeof derr) == KV_OK)
                CHECK(used >= 1 && used <= len);
        }
        break;
    }
    case KV_PK_VEC:
        CHECK(kv_vec_elem_size(pk.pk_vec_type) != 0 && pk.pk_ndim <= KV_PK_MAX_DIMS);
        if (pk.pk_ndim > 0) {
            uint64_t count = 1;
            for (int i = 0; i < pk.pk_ndim; i++) count *= pk.pk_dims[i];
            CHECK(count == pk.pk_count &&
                  pk.pk_elem_size == 1 + count * kv_vec_elem_size(pk.pk_vec_type));
            if (kv_packer_vec_fixed(&pk, in, len, &type, &vd, &nbytes, err) == KV_OK)
                CHECK(vd == in + 1 && nbytes <= len - 1 &&
                      nbytes == pk.pk_count * kv_vec_elem_size(type));
        } else {
            CHECK(pk.pk_elem_size == 0);
            if (kv_vec_parse(in, len, &vv) == KV_OK)
                CHECK(vv.data >= in && vv.data_len <= len - (size_t)(vv.data - in));
        }
        break;
    default:
        abort();
    }
out:
    /* the element bytes as text to encode: invalid UTF-8 is refused */
    for (kv_pk_enc e = KV_STR_UTF8; e <= KV_STR_LATIN1; e++) {
        uint8_t *o = NULL;
        size_t on = 0;
        st = kv_str_encode(e, (const char *)in, len, &o, &on, err);
        if (st == KV_OK) { CHECK(kv_utf8_valid(in, len)); free(o); }
    }
    free(dtype);
    free(in);
    return 0;
}
