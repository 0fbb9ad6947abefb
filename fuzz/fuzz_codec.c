/*
 * fuzz_codec.c -- libFuzzer target for the value codec (engine/codec.c):
 * the auto-pack header as a stored value is read (kv_hdr_parse, then the
 * decoder its encoding names), the MessagePack and CBOR decoders through
 * the visitor API, the vector format (kv_vec_parse), the DataPacker read
 * heuristic (kv_packer_guess) and the UTF-8 check.
 *
 * The input is a stored value. It is decoded as found, and again as raw
 * MessagePack and raw CBOR. The visitor checks what every caller relies on
 * (python/ext/autopack.c pre-sizes a list from the announced count): a
 * container delivers exactly the items it announced, map keys are strings,
 * begin/end pair up, strings lie inside the input, one item per success.
 * Every successful decode is re-encoded with the engine's encoder and
 * decoded again: the two event streams must be equal. A second pass aborts
 * from a callback after a number of events taken from the input, so the
 * KV_CALLBACK paths run too.
 *
 * Build and run: docs/fuzzing.md.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kvault/codec.h"

#define CHECK(e) do { if (!(e)) abort(); } while (0)

typedef struct frame {
    uint64_t left;   /* items still announced (maps: keys and values) */
    int is_map;
} frame;

typedef struct fz_ctx {
    const uint8_t *lo, *hi;          /* input bounds (strings must lie inside) */
    frame st[KV_DECODE_MAX_DEPTH + 2];
    int depth;
    int top_items;                   /* complete top-level items */
    uint64_t events, stop_at;        /* abort at event stop_at (0: never) */
    uint64_t hash;                   /* FNV-1a over the event stream */
    kv_enc *re;                      /* re-encoder, or NULL */
} fz_ctx;

static void mix(fz_ctx *c, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) c->hash = (c->hash ^ b[i]) * 0x100000001b3ull;
}

/* One item starts: count it against the open container. */
static int item(fz_ctx *c, int is_str, int tag)
{
    if (c->stop_at && ++c->events >= c->stop_at) return 1;
    if (c->depth > 0) {
        frame *f = &c->st[c->depth - 1];
        CHECK(f->left > 0);                          /* no more items than announced */
        if (f->is_map && f->left % 2 == 0) CHECK(is_str);   /* keys are strings */
        f->left--;
    } else {
        CHECK(c->top_items == 0);                    /* exactly one top-level item */
    }
    mix(c, &tag, sizeof tag);
    return 0;
}

static void done(fz_ctx *c) { if (c->depth == 0) c->top_items++; }

static int v_nil(void *x)
{
    fz_ctx *c = x;
    if (item(c, 0, 1)) return 1;
    if (c->re) kv_enc_nil(c->re);
    done(c);
    return 0;
}

static int v_bool(void *x, int v)
{
    fz_ctx *c = x;
    if (item(c, 0, 2)) return 1;
    v = v != 0;
    mix(c, &v, sizeof v);
    if (c->re) kv_enc_bool(c->re, v);
    done(c);
    return 0;
}

static int v_int(void *x, int64_t v)
{
    fz_ctx *c = x;
    if (item(c, 0, 3)) return 1;
    mix(c, &v, sizeof v);
    if (c->re) kv_enc_int(c->re, v);
    done(c);
    return 0;
}

static int v_uint(void *x, uint64_t v)
{
    fz_ctx *c = x;
    if (item(c, 0, 4)) return 1;
    CHECK(v > (uint64_t)INT64_MAX);    /* smaller ones arrive through on_int */
    mix(c, &v, sizeof v);
    if (c->re) kv_enc_uint(c->re, v);
    done(c);
    return 0;
}

static int v_double(void *x, double v)
{
    fz_ctx *c = x;
    if (item(c, 0, 5)) return 1;
    double h = isnan(v) ? NAN : v;     /* NaN payloads need not survive */
    if (isnan(v)) mix(c, "nan", 3); else mix(c, &h, sizeof h);
    if (c->re) kv_enc_double(c->re, v);
    done(c);
    return 0;
}

static int v_str(void *x, const char *s, size_t n)
{
    fz_ctx *c = x;
    if (item(c, 1, 6)) return 1;
    /* inside the input (msgpack-c may point an empty string elsewhere) */
    CHECK(n == 0 || ((const uint8_t *)s >= c->lo && n <= (size_t)(c->hi - (const uint8_t *)s)));
    mix(c, &n, sizeof n);
    mix(c, s, n);
    if (c->re) kv_enc_str(c->re, s, n);
    done(c);
    return 0;
}

static int v_open(fz_ctx *c, size_t n, int is_map)
{
    if (item(c, 0, is_map ? 7 : 8)) return 1;
    CHECK(c->depth <= KV_DECODE_MAX_DEPTH);
    /* a container never announces more items than bytes remain */
    CHECK(n <= (size_t)(c->hi - c->lo));
    mix(c, &n, sizeof n);
    if (c->re) (is_map ? kv_enc_map : kv_enc_array)(c->re, n);
    c->st[c->depth].left = is_map ? 2 * (uint64_t)n : n;
    c->st[c->depth].is_map = is_map;
    c->depth++;
    return 0;
}

static int v_close(fz_ctx *c, int is_map)
{
    if (c->stop_at && ++c->events >= c->stop_at) return 1;
    CHECK(c->depth > 0);
    frame *f = &c->st[--c->depth];
    CHECK(f->is_map == is_map && f->left == 0);   /* every announced item came */
    mix(c, "end", 3);
    done(c);
    return 0;
}

static int v_abeg(void *x, size_t n) { return v_open(x, n, 0); }
static int v_mbeg(void *x, size_t n) { return v_open(x, n, 1); }
static int v_aend(void *x) { return v_close(x, 0); }
static int v_mend(void *x) { return v_close(x, 1); }

static const kv_visitor vis = {
    .on_nil = v_nil, .on_bool = v_bool, .on_int = v_int, .on_uint = v_uint,
    .on_double = v_double, .on_str = v_str, .on_array_begin = v_abeg,
    .on_array_end = v_aend, .on_map_begin = v_mbeg, .on_map_end = v_mend,
};

/* Decode p[0..n) as fmt with the checking visitor; on success re-encode,
 * decode the re-encoding and compare. */
static void decode(kv_fmt fmt, const uint8_t *p, size_t n, uint64_t stop_at)
{
    char err[128];
    size_t used = 0;
    kv_buf out;
    kv_buf_init(&out);
    kv_enc enc;
    kv_enc_init(&enc, fmt, &out);
    fz_ctx c = {.lo = p, .hi = p + n, .stop_at = stop_at, .hash = 0xcbf29ce484222325ull,
                .re = stop_at ? NULL : &enc};
    kv_status st = kv_decode(fmt, p, n, &vis, &c, &used, err, sizeof err);
    CHECK(memchr(err, 0, sizeof err));
    if (st == KV_OK) {
        CHECK(c.depth == 0 && c.top_items == 1 && used >= 1 && used <= n);
        if (!stop_at && enc.st == KV_OK) {
            fz_ctx c2 = {.lo = out.data, .hi = out.data + out.len, .hash = 0xcbf29ce484222325ull};
            size_t used2 = 0;
            CHECK(kv_decode(fmt, out.data, out.len, &vis, &c2, &used2, err, sizeof err) == KV_OK);
            CHECK(used2 == out.len && c2.hash == c.hash);
        }
    } else {
        CHECK(st == KV_CORRUPT || st == KV_UNSUPPORTED || st == KV_CALLBACK || st == KV_NOMEM);
        CHECK(st != KV_CALLBACK || stop_at);
    }
    kv_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exactly sized copy: AddressSanitizer reports any read past it */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);

    uint8_t enc;
    const uint8_t *pl;
    size_t plen;
    kv_hdr_result hr = kv_hdr_parse(buf, size, &enc, &pl, &plen);
    if (hr == KV_HDR_OK) {
        CHECK(pl == buf + KV_HDR_SIZE && plen == size - KV_HDR_SIZE);
        kv_guess g;
        switch (enc) {
        case KV_ENC_MSGPACK: decode(KV_FMT_MSGPACK, pl, plen, 0); break;
        case KV_ENC_CBOR: decode(KV_FMT_CBOR, pl, plen, 0); break;
        case KV_ENC_PACKER:
            kv_packer_guess(pl, plen, &g);
            if (g.kind == KV_GUESS_VECTOR)
                CHECK(g.vec.data >= pl && g.vec.data_len <= plen - (size_t)(g.vec.data - pl) &&
                      g.vec.data_len == g.vec.count * kv_vec_elem_size(g.vec.type));
            break;
        case KV_ENC_STR: (void)kv_utf8_valid(pl, plen); break;
        default: break;
        }
    } else if (hr != KV_HDR_NONE) {
        CHECK(kv_hdr_strerror(hr) != NULL);
    }

    decode(KV_FMT_MSGPACK, buf, size, 0);
    decode(KV_FMT_CBOR, buf, size, 0);
    if (size) {
        decode(KV_FMT_MSGPACK, buf, size, 1 + buf[size - 1] % 64);
        decode(KV_FMT_CBOR, buf, size, 1 + buf[size - 1] % 64);
    }
    kv_vec_view vv;
    if (kv_vec_parse(buf, size, &vv) == KV_OK)
        CHECK(vv.data_len <= size - (size_t)(vv.data - buf));
    free(buf);
    return 0;
}
