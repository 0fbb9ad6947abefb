/*
 * codec.c - value codec: growable buffers, the 10-byte auto-pack header
 * (docs/api.md §3.1), the MessagePack (msgpack-c) and CBOR (libcbor) streaming
 * encoders, visitor-driven decoders for both (§5.4 model), the vector byte
 * formats (§5.3), the 0x02 payload heuristic (§3.4) and UTF-8 validation.
 *
 * Sections: buffers | header | encoder | msgpack decoder | CBOR decoder |
 * vectors | heuristic | UTF-8.
 */
#include "internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <cbor.h>
#include <msgpack.h>

/* ======================================================================
 * Buffers
 * ==================================================================== */

KV_API void kv_buf_init(kv_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

KV_API void kv_buf_free(kv_buf *b)
{
    kvi_free(b->data);
    kv_buf_init(b);
}

KV_API kv_status kv_buf_reserve(kv_buf *b, size_t extra)
{
    KV_ASSERT(b && b->len <= b->cap && (b->data || b->cap == 0));
    if (b->cap - b->len >= extra)
        return KV_OK;
    if (extra > SIZE_MAX / 2 - b->len)
        return KV_NOMEM;
    size_t nc = b->cap ? b->cap : 64;
    while (nc < b->len + extra)
        nc *= 2;
    uint8_t *nd = kvi_realloc(b->data, nc);
    if (!nd)
        return KV_NOMEM;
    b->data = nd;
    b->cap = nc;
    return KV_OK;
}

KV_API kv_status kv_buf_append(kv_buf *b, const void *p, size_t n)
{
    KV_ASSERT(p || n == 0);
    if (n == 0)
        return KV_OK;
    if (kv_buf_reserve(b, n) != KV_OK)
        return KV_NOMEM;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    KV_ASSERT_INTERNAL(b->len <= b->cap);
    return KV_OK;
}

/* ======================================================================
 * Header
 * ==================================================================== */

KV_API void kv_hdr_write(uint8_t out[KV_HDR_SIZE], uint8_t enc)
{
    out[0] = 0x89;
    out[1] = 0x4B;
    out[2] = 0x01;
    out[3] = enc;
    out[4] = 0x00;
    out[5] = out[6] = out[7] = 0x00;
    out[8] = 0x56;
    out[9] = 0x4B;
}

KV_API kv_hdr_result kv_hdr_parse(const void *data, size_t len, uint8_t *enc,
                                  const uint8_t **payload, size_t *plen)
{
    const uint8_t *p = data;
    if (len < KV_HDR_SIZE || p[0] != 0x89 || p[1] != 0x4B)
        return KV_HDR_NONE;
    if (p[8] != 0x56 || p[9] != 0x4B)
        return KV_HDR_BAD_MAGIC;
    if (p[2] != 0x01)
        return KV_HDR_BAD_VERSION;
    if (p[3] == 0xFF)
        return KV_HDR_RESERVED_ENC;
    if (p[3] > KV_ENC_STR)
        return KV_HDR_BAD_ENCODING;
    if (p[5] || p[6] || p[7])
        return KV_HDR_BAD_RESERVED;
    *enc = p[3];
    *payload = p + KV_HDR_SIZE;
    *plen = len - KV_HDR_SIZE;
    return KV_HDR_OK;
}

KV_API const char *kv_hdr_strerror(kv_hdr_result r)
{
    switch (r) {
    case KV_HDR_NONE: return "no header";
    case KV_HDR_OK: return "ok";
    case KV_HDR_BAD_MAGIC: return "Invalid header: bad closing magic";
    case KV_HDR_BAD_VERSION: return "Invalid header: unsupported version";
    case KV_HDR_BAD_ENCODING: return "Invalid header: unknown encoding type";
    case KV_HDR_RESERVED_ENC: return "Reserved encoding type";
    case KV_HDR_BAD_RESERVED: return "Invalid header: nonzero reserved bytes";
    }
    return "Invalid header";
}

/* ======================================================================
 * Encoder
 * ==================================================================== */

static int mp_write(void *data, const char *buf, size_t len)
{
    kv_enc *e = data;
    if (kv_buf_append(e->out, buf, len) != KV_OK) {
        e->st = KV_NOMEM;
        return -1;
    }
    return 0;
}

#define MP_BEGIN(e)                          \
    msgpack_packer pk;                       \
    msgpack_packer_init(&pk, (e), mp_write)

KV_API void kv_enc_init(kv_enc *e, kv_fmt fmt, kv_buf *out)
{
    e->out = out;
    e->fmt = fmt;
    e->st = KV_OK;
}

/* Reserve 9 bytes (the largest CBOR head) and return the write pointer. */
static unsigned char *cb_room(kv_enc *e)
{
    if (kv_buf_reserve(e->out, 9) != KV_OK) {
        e->st = KV_NOMEM;
        return NULL;
    }
    return e->out->data + e->out->len;
}

#define CB_PUT(e, call)                          \
    do {                                         \
        unsigned char *w_ = cb_room(e);          \
        if (!w_)                                 \
            return KV_NOMEM;                     \
        unsigned char *b_ = w_;                  \
        (void)b_;                                \
        size_t n_ = (call);                      \
        (e)->out->len += n_;                     \
    } while (0)

KV_API kv_status kv_enc_nil(kv_enc *e)
{
    if (e->fmt == KV_FMT_MSGPACK) {
        MP_BEGIN(e);
        msgpack_pack_nil(&pk);
    } else {
        CB_PUT(e, cbor_encode_null(b_, 9));
    }
    return e->st;
}

KV_API kv_status kv_enc_bool(kv_enc *e, int v)
{
    if (e->fmt == KV_FMT_MSGPACK) {
        MP_BEGIN(e);
        if (v)
            msgpack_pack_true(&pk);
        else
            msgpack_pack_false(&pk);
    } else {
        CB_PUT(e, cbor_encode_bool(v != 0, b_, 9));
    }
    return e->st;
}

KV_API kv_status kv_enc_int(kv_enc *e, int64_t v)
{
    if (e->fmt == KV_FMT_MSGPACK) {
        MP_BEGIN(e);
        msgpack_pack_int64(&pk, v);
    } else if (v >= 0) {
        CB_PUT(e, cbor_encode_uint((uint64_t)v, b_, 9));
    } else {
        /* CBOR negative integer n encodes -1 - n */
        CB_PUT(e, cbor_encode_negint((uint64_t)(-(v + 1)), b_, 9));
    }
    return e->st;
}

/* Items both formats write from one unsigned number: an unsigned integer,
 * or the header of an array or a map of n entries. */
typedef enum { ENC_UINT, ENC_ARRAY, ENC_MAP } enc_counted;

static kv_status enc_counted_item(kv_enc *e, enc_counted kind, uint64_t n)
{
    if (e->fmt == KV_FMT_MSGPACK) {
        MP_BEGIN(e);
        if (kind == ENC_UINT)
            msgpack_pack_uint64(&pk, n);
        else if (kind == ENC_ARRAY)
            msgpack_pack_array(&pk, (size_t)n);
        else
            msgpack_pack_map(&pk, (size_t)n);
    } else if (kind == ENC_UINT) {
        CB_PUT(e, cbor_encode_uint(n, b_, 9));
    } else if (kind == ENC_ARRAY) {
        CB_PUT(e, cbor_encode_array_start((size_t)n, b_, 9));
    } else {
        CB_PUT(e, cbor_encode_map_start((size_t)n, b_, 9));
    }
    return e->st;
}

KV_API kv_status kv_enc_uint(kv_enc *e, uint64_t v)
{
    return enc_counted_item(e, ENC_UINT, v);
}

/* IEEE 754 binary16 bits of `v` if v is exactly representable as a half
 * (including ±0, ±inf, NaN as the canonical 0x7e00); else -1. */
static int32_t half_bits_exact(double v)
{
    if (isnan(v))
        return 0x7e00;
    uint32_t sign = signbit(v) ? 0x8000u : 0;
    if (isinf(v))
        return (int32_t)(sign | 0x7c00u);
    if (v == 0)
        return (int32_t)sign;
    double a = fabs(v);
    int ex;
    double m = frexp(a, &ex);      /* a = m * 2^ex, m in [0.5, 1) */
    int E = ex - 1;                /* a = (2m) * 2^E, 2m in [1, 2) */
    if (E > 15)
        return -1;
    if (E >= -14) {
        double f = m * 2048.0;     /* 11 significant bits */
        if (f != floor(f))
            return -1;
        uint32_t mant = (uint32_t)f - 1024u;   /* drop the implicit 1 */
        return (int32_t)(sign | ((uint32_t)(E + 15) << 10) | mant);
    }
    /* subnormal: a = k * 2^-24, k < 1024 */
    double k = ldexp(a, 24);
    if (k != floor(k) || k >= 1024.0)
        return -1;
    return (int32_t)(sign | (uint32_t)k);
}

KV_API kv_status kv_enc_double(kv_enc *e, double v)
{
    if (e->fmt == KV_FMT_MSGPACK) {
        MP_BEGIN(e);
        msgpack_pack_double(&pk, v);     /* always 0xcb float64 */
        return e->st;
    }
    int32_t h = half_bits_exact(v);
    if (h >= 0) {
        uint8_t b[3] = {0xf9, (uint8_t)(h >> 8), (uint8_t)h};
        if (kv_buf_append(e->out, b, 3) != KV_OK)
            e->st = KV_NOMEM;
    } else if ((double)(float)v == v) {
        CB_PUT(e, cbor_encode_single((float)v, b_, 9));
    } else {
        CB_PUT(e, cbor_encode_double(v, b_, 9));
    }
    return e->st;
}

KV_API kv_status kv_enc_str(kv_enc *e, const char *s, size_t n)
{
    if (e->fmt == KV_FMT_MSGPACK) {
        MP_BEGIN(e);
        msgpack_pack_str(&pk, n);
        msgpack_pack_str_body(&pk, s, n);
    } else {
        CB_PUT(e, cbor_encode_string_start(n, b_, 9));
        if (kv_buf_append(e->out, s, n) != KV_OK)
            e->st = KV_NOMEM;
    }
    return e->st;
}

KV_API kv_status kv_enc_array(kv_enc *e, size_t n)
{
    return enc_counted_item(e, ENC_ARRAY, n);
}

KV_API kv_status kv_enc_map(kv_enc *e, size_t n)
{
    return enc_counted_item(e, ENC_MAP, n);
}

/* ======================================================================
 * Decoders
 * ==================================================================== */

static kv_status dec_err(char *err, size_t errlen, kv_status st, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return st;
}

/* ---- MessagePack: msgpack-c unpacks into a zone-backed object tree,
 * which we then walk. */

static kv_status mp_walk(const msgpack_object *o, const kv_visitor *v, void *ctx,
                         int depth, char *err, size_t errlen)
{
    if (depth > KV_DECODE_MAX_DEPTH)
        return dec_err(err, errlen, KV_CORRUPT, "nesting deeper than %d", KV_DECODE_MAX_DEPTH);
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return v->on_nil(ctx) ? KV_CALLBACK : KV_OK;
    case MSGPACK_OBJECT_BOOLEAN:
        return v->on_bool(ctx, o->via.boolean) ? KV_CALLBACK : KV_OK;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 <= (uint64_t)INT64_MAX)
            return v->on_int(ctx, (int64_t)o->via.u64) ? KV_CALLBACK : KV_OK;
        return v->on_uint(ctx, o->via.u64) ? KV_CALLBACK : KV_OK;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return v->on_int(ctx, o->via.i64) ? KV_CALLBACK : KV_OK;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return v->on_double(ctx, o->via.f64) ? KV_CALLBACK : KV_OK;
    case MSGPACK_OBJECT_STR:
        return v->on_str(ctx, o->via.str.ptr, o->via.str.size) ? KV_CALLBACK : KV_OK;
    case MSGPACK_OBJECT_ARRAY: {
        if (v->on_array_begin(ctx, o->via.array.size))
            return KV_CALLBACK;
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            kv_status st = mp_walk(&o->via.array.ptr[i], v, ctx, depth + 1, err, errlen);
            if (st != KV_OK)
                return st;
        }
        return v->on_array_end(ctx) ? KV_CALLBACK : KV_OK;
    }
    case MSGPACK_OBJECT_MAP: {
        if (v->on_map_begin(ctx, o->via.map.size))
            return KV_CALLBACK;
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR)
                return dec_err(err, errlen, KV_UNSUPPORTED, "map keys must be strings");
            if (v->on_str(ctx, kv->key.via.str.ptr, kv->key.via.str.size))
                return KV_CALLBACK;
            kv_status st = mp_walk(&kv->val, v, ctx, depth + 1, err, errlen);
            if (st != KV_OK)
                return st;
        }
        return v->on_map_end(ctx) ? KV_CALLBACK : KV_OK;
    }
    case MSGPACK_OBJECT_BIN:
        return dec_err(err, errlen, KV_UNSUPPORTED, "binary strings are not supported");
    case MSGPACK_OBJECT_EXT:
        return dec_err(err, errlen, KV_UNSUPPORTED, "extension types are not supported");
    }
    return dec_err(err, errlen, KV_CORRUPT, "unknown MessagePack object");
}

/* Big-endian unsigned integer of n (1, 2 or 4) bytes at p. */
static uint32_t mp_be(const uint8_t *p, int n)
{
    uint32_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Pre-scan of one MessagePack item (heads only, no allocation) before
 * msgpack-c unpacks it. msgpack-c allocates a container's object array
 * from its announced count before reading a single element, so a 5-byte
 * `dd 7f ff ff ff` would ask for 64 GiB; and the walk below recurses once
 * per level. Returns 0 when every container announces no more elements
 * than bytes follow its head (an element takes at least one byte) and the
 * nesting stays within KV_DECODE_MAX_DEPTH, or when the input is malformed
 * or truncated before a violation (the unpacker reports those); -1 for a
 * count beyond the input, -2 for nesting too deep. */
static int mp_prescan(const uint8_t *p, size_t len)
{
    uint64_t left[KV_DECODE_MAX_DEPTH + 1];   /* items still due per open level */
    int d = 0;
    size_t i = 0;
    left[0] = 1;
    for (;;) {
        while (d > 0 && left[d] == 0)
            d--;
        if ((d == 0 && left[0] == 0) || i >= len)
            return 0;
        left[d]--;
        uint8_t c = p[i];
        size_t head = 1;       /* bytes of the head */
        uint64_t skip = 0;     /* payload bytes after the head */
        uint64_t items = 0;    /* elements of a container (maps: keys and values) */
        int container = 0;
        if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
            /* fixint, nil, bool */
        } else if (c <= 0x8f) {
            container = 1, items = 2 * (uint64_t)(c & 0x0f);
        } else if (c <= 0x9f) {
            container = 1, items = c & 0x0f;
        } else if (c <= 0xbf) {
            skip = c & 0x1f;
        } else {
            /* c4..df: head bytes after the type byte and what they hold */
            static const struct { uint8_t lenb, fixed, kind; } t[] = {
                /* kind 0: fixed payload, 1: length-prefixed, 2: array, 3: map, 4: ext */
                [0xc4 - 0xc4] = {1, 0, 1}, [0xc5 - 0xc4] = {2, 0, 1}, [0xc6 - 0xc4] = {4, 0, 1},
                [0xc7 - 0xc4] = {1, 1, 4}, [0xc8 - 0xc4] = {2, 1, 4}, [0xc9 - 0xc4] = {4, 1, 4},
                [0xca - 0xc4] = {0, 4, 0}, [0xcb - 0xc4] = {0, 8, 0}, [0xcc - 0xc4] = {0, 1, 0},
                [0xcd - 0xc4] = {0, 2, 0}, [0xce - 0xc4] = {0, 4, 0}, [0xcf - 0xc4] = {0, 8, 0},
                [0xd0 - 0xc4] = {0, 1, 0}, [0xd1 - 0xc4] = {0, 2, 0}, [0xd2 - 0xc4] = {0, 4, 0},
                [0xd3 - 0xc4] = {0, 8, 0}, [0xd4 - 0xc4] = {0, 2, 0}, [0xd5 - 0xc4] = {0, 3, 0},
                [0xd6 - 0xc4] = {0, 5, 0}, [0xd7 - 0xc4] = {0, 9, 0}, [0xd8 - 0xc4] = {0, 17, 0},
                [0xd9 - 0xc4] = {1, 0, 1}, [0xda - 0xc4] = {2, 0, 1}, [0xdb - 0xc4] = {4, 0, 1},
                [0xdc - 0xc4] = {2, 0, 2}, [0xdd - 0xc4] = {4, 0, 2}, [0xde - 0xc4] = {2, 0, 3},
                [0xdf - 0xc4] = {4, 0, 3},
            };
            if (c == 0xc1)
                return 0;   /* never used: malformed */
            head = 1 + (size_t)t[c - 0xc4].lenb;
            if (head > len - i)
                return 0;
            uint64_t n = t[c - 0xc4].lenb ? mp_be(p + i + 1, t[c - 0xc4].lenb) : 0;
            switch (t[c - 0xc4].kind) {
            case 0: skip = t[c - 0xc4].fixed; break;
            case 1: skip = n; break;
            case 2: container = 1, items = n; break;
            case 3: container = 1, items = 2 * n; break;
            default: skip = n + 1; break;   /* ext: type byte + data */
            }
        }
        if (head > len - i)
            return 0;
        i += head;
        if (container) {
            if (items > len - i)
                return -1;
            if (items == 0)
                continue;
            if (d == KV_DECODE_MAX_DEPTH)
                return -2;
            left[++d] = items;
        } else {
            if (skip > len - i)
                return 0;
            i += (size_t)skip;
        }
    }
}

static kv_status decode_msgpack(const uint8_t *p, size_t len, const kv_visitor *v, void *ctx,
                                size_t *consumed, char *err, size_t errlen)
{
    msgpack_unpacked up;
    size_t off = 0;
    kv_status st;

    if (len == 0)
        return dec_err(err, errlen, KV_CORRUPT, "truncated input");
    int pre = mp_prescan(p, len);
    if (pre == -1)
        return dec_err(err, errlen, KV_CORRUPT, "truncated input: a container announces more items than bytes follow");
    if (pre == -2)
        return dec_err(err, errlen, KV_CORRUPT, "nesting deeper than %d", KV_DECODE_MAX_DEPTH);
    msgpack_unpacked_init(&up);
    msgpack_unpack_return r = msgpack_unpack_next(&up, (const char *)p, len, &off);
    switch (r) {
    case MSGPACK_UNPACK_SUCCESS:
    case MSGPACK_UNPACK_EXTRA_BYTES:
        st = mp_walk(&up.data, v, ctx, 0, err, errlen);
        if (st == KV_OK && consumed)
            *consumed = off;
        break;
    case MSGPACK_UNPACK_CONTINUE:
        st = dec_err(err, errlen, KV_CORRUPT, "truncated input");
        break;
    case MSGPACK_UNPACK_NOMEM_ERROR:
        st = dec_err(err, errlen, KV_NOMEM, "out of memory");
        break;
    default:
        st = dec_err(err, errlen, KV_CORRUPT, "malformed MessagePack");
        break;
    }
    msgpack_unpacked_destroy(&up);
    return st;
}

/* ---- CBOR: libcbor's streaming decoder reports one head at a time; we
 * track open containers on a stack to emit the end events and check that
 * map keys are strings. */

typedef struct cb_frame {
    uint64_t remaining;   /* items still expected (maps: 2 per pair) */
    int is_map;
} cb_frame;

typedef struct cb_state {
    const kv_visitor *v;
    void *ctx;
    cb_frame stack[KV_DECODE_MAX_DEPTH + 1];
    int depth;            /* open containers */
    int started;          /* the top-level item began */
    int done;             /* the top-level item is complete */
    size_t left;          /* input bytes from the head being decoded to the end */
    kv_status st;
    char msg[96];
} cb_state;

static void cb_fail(cb_state *s, kv_status st, const char *msg)
{
    if (s->st == KV_OK) {
        s->st = st;
        snprintf(s->msg, sizeof s->msg, "%s", msg);
    }
}

/* Before an item: it must not be a non-string map key. */
static int cb_pre(cb_state *s, int is_str)
{
    if (s->st != KV_OK)
        return -1;
    s->started = 1;
    if (s->depth > 0) {
        cb_frame *f = &s->stack[s->depth - 1];
        if (f->is_map && (f->remaining % 2) == 0 && !is_str) {
            cb_fail(s, KV_UNSUPPORTED, "map keys must be strings");
            return -1;
        }
    }
    return 0;
}

/* After a complete item: count it and close finished containers. */
static void cb_post(cb_state *s)
{
    if (s->depth == 0) {
        s->done = 1;
        return;
    }
    s->stack[s->depth - 1].remaining--;
    while (s->depth > 0 && s->stack[s->depth - 1].remaining == 0) {
        int is_map = s->stack[s->depth - 1].is_map;
        s->depth--;
        if ((is_map ? s->v->on_map_end(s->ctx) : s->v->on_array_end(s->ctx))) {
            cb_fail(s, KV_CALLBACK, "callback failed");
            return;
        }
        if (s->depth == 0) {
            s->done = 1;
            return;
        }
        s->stack[s->depth - 1].remaining--;
    }
}

#define CB_CALL(s, expr)                              \
    do {                                              \
        if (expr) {                                   \
            cb_fail((s), KV_CALLBACK, "callback failed"); \
            return;                                   \
        }                                             \
        cb_post(s);                                   \
    } while (0)

static void cb_uint(void *c, uint64_t x)
{
    cb_state *s = c;
    if (cb_pre(s, 0))
        return;
    if (x <= (uint64_t)INT64_MAX)
        CB_CALL(s, s->v->on_int(s->ctx, (int64_t)x));
    else
        CB_CALL(s, s->v->on_uint(s->ctx, x));
}
static void cb_u8(void *c, uint8_t x) { cb_uint(c, x); }
static void cb_u16(void *c, uint16_t x) { cb_uint(c, x); }
static void cb_u32(void *c, uint32_t x) { cb_uint(c, x); }
static void cb_u64(void *c, uint64_t x) { cb_uint(c, x); }

static void cb_neg(void *c, uint64_t x)
{
    cb_state *s = c;
    if (cb_pre(s, 0))
        return;
    /* value = -1 - x; representable in int64 only when x <= INT64_MAX */
    if (x > (uint64_t)INT64_MAX) {
        cb_fail(s, KV_UNSUPPORTED, "integer out of range");
        return;
    }
    CB_CALL(s, s->v->on_int(s->ctx, -1 - (int64_t)x));
}
static void cb_n8(void *c, uint8_t x) { cb_neg(c, x); }
static void cb_n16(void *c, uint16_t x) { cb_neg(c, x); }
static void cb_n32(void *c, uint32_t x) { cb_neg(c, x); }
static void cb_n64(void *c, uint64_t x) { cb_neg(c, x); }

static void cb_str(void *c, cbor_data d, uint64_t n)
{
    cb_state *s = c;
    if (cb_pre(s, 1))
        return;
    CB_CALL(s, s->v->on_str(s->ctx, (const char *)d, (size_t)n));
}

static void cb_bytes(void *c, cbor_data d, uint64_t n)
{
    cb_fail(c, KV_UNSUPPORTED, "binary strings are not supported");
}

static void cb_indef(void *c)
{
    cb_fail(c, KV_UNSUPPORTED, "indefinite-length items are not supported");
}

static void cb_tag(void *c, uint64_t t)
{
    cb_fail(c, KV_UNSUPPORTED, "tags are not supported");
}

static void cb_undef(void *c)
{
    cb_fail(c, KV_UNSUPPORTED, "undefined is not supported");
}

static void cb_open(cb_state *s, uint64_t n, int is_map)
{
    if (cb_pre(s, 0))
        return;
    /* An element takes at least one byte after this head: a count beyond
     * the input is refused before a visitor sees it (python/ext/autopack.c
     * pre-sizes its list from it; a map of 2^63 pairs would also wrap
     * `items` to 0). */
    if (n > (s->left - 1) / (is_map ? 2 : 1)) {
        cb_fail(s, KV_CORRUPT, "truncated input: a container announces more items than bytes follow");
        return;
    }
    if (is_map ? s->v->on_map_begin(s->ctx, (size_t)n) : s->v->on_array_begin(s->ctx, (size_t)n)) {
        cb_fail(s, KV_CALLBACK, "callback failed");
        return;
    }
    uint64_t items = is_map ? 2 * n : n;
    if (items == 0) {
        if (is_map ? s->v->on_map_end(s->ctx) : s->v->on_array_end(s->ctx)) {
            cb_fail(s, KV_CALLBACK, "callback failed");
            return;
        }
        cb_post(s);
        return;
    }
    if (s->depth >= KV_DECODE_MAX_DEPTH) {
        cb_fail(s, KV_CORRUPT, "nesting too deep");
        return;
    }
    s->stack[s->depth].remaining = items;
    s->stack[s->depth].is_map = is_map;
    s->depth++;
}
static void cb_array(void *c, uint64_t n) { cb_open(c, n, 0); }
static void cb_map(void *c, uint64_t n) { cb_open(c, n, 1); }

static void cb_f(void *c, double x)
{
    cb_state *s = c;
    if (cb_pre(s, 0))
        return;
    CB_CALL(s, s->v->on_double(s->ctx, x));
}
static void cb_f2(void *c, float x) { cb_f(c, x); }
static void cb_f8(void *c, double x) { cb_f(c, x); }

static void cb_null(void *c)
{
    cb_state *s = c;
    if (cb_pre(s, 0))
        return;
    CB_CALL(s, s->v->on_nil(s->ctx));
}

static void cb_bool(void *c, bool b)
{
    cb_state *s = c;
    if (cb_pre(s, 0))
        return;
    CB_CALL(s, s->v->on_bool(s->ctx, b));
}

/* libcbor's callback signatures use size_t/uint64_t variants; adapt. */
static void cb_str_sz(void *c, cbor_data d, size_t n) { cb_str(c, d, n); }
static void cb_bytes_sz(void *c, cbor_data d, size_t n) { cb_bytes(c, d, n); }
static void cb_array_sz(void *c, size_t n) { cb_array(c, n); }
static void cb_map_sz(void *c, size_t n) { cb_map(c, n); }

static const struct cbor_callbacks cb_table = {
    .uint8 = cb_u8, .uint16 = cb_u16, .uint32 = cb_u32, .uint64 = cb_u64,
    .negint8 = cb_n8, .negint16 = cb_n16, .negint32 = cb_n32, .negint64 = cb_n64,
    .byte_string_start = cb_indef, .byte_string = cb_bytes_sz,
    .string = cb_str_sz, .string_start = cb_indef,
    .indef_array_start = cb_indef, .array_start = cb_array_sz,
    .indef_map_start = cb_indef, .map_start = cb_map_sz,
    .tag = cb_tag, .float2 = cb_f2, .float4 = cb_f2, .float8 = cb_f8,
    .undefined = cb_undef, .null = cb_null, .boolean = cb_bool,
    .indef_break = cb_indef,
};

static kv_status decode_cbor(const uint8_t *p, size_t len, const kv_visitor *v, void *ctx,
                             size_t *consumed, char *err, size_t errlen)
{
    cb_state *s = kvi_malloc(sizeof *s);
    kv_status st = KV_OK;
    size_t off = 0;
    if (!s)
        return dec_err(err, errlen, KV_NOMEM, "out of memory");
    s->v = v;
    s->ctx = ctx;
    s->depth = 0;
    s->started = 0;
    s->done = 0;
    s->st = KV_OK;
    s->msg[0] = '\0';
    while (!s->done) {
        if (off >= len) {
            st = dec_err(err, errlen, KV_CORRUPT, "truncated input");
            goto out;
        }
        s->left = len - off;
        struct cbor_decoder_result r = cbor_stream_decode(p + off, len - off, &cb_table, s);
        if (s->st != KV_OK) {
            st = dec_err(err, errlen, s->st, "%s", s->msg);
            goto out;
        }
        if (r.status == CBOR_DECODER_NEDATA) {
            st = dec_err(err, errlen, KV_CORRUPT, "truncated input");
            goto out;
        }
        if (r.status != CBOR_DECODER_FINISHED || r.read == 0) {
            st = dec_err(err, errlen, KV_CORRUPT, "malformed CBOR");
            goto out;
        }
        off += r.read;
    }
    if (consumed)
        *consumed = off;
out:
    kvi_free(s);
    return st;
}

KV_API kv_status kv_decode(kv_fmt fmt, const void *data, size_t len,
                           const kv_visitor *v, void *ctx, size_t *consumed,
                           char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (fmt == KV_FMT_MSGPACK)
        return decode_msgpack(data, len, v, ctx, consumed, err, errlen);
    if (fmt == KV_FMT_CBOR)
        return decode_cbor(data, len, v, ctx, consumed, err, errlen);
    return dec_err(err, errlen, KV_INVALID, "unknown format");
}

/* ======================================================================
 * Vectors
 * ==================================================================== */

static const struct {
    uint8_t code;
    size_t size;
    const char *name;
} vec_types[] = {
    {KV_VEC_F32, 4, "float32"}, {KV_VEC_F64, 8, "float64"}, {KV_VEC_I32, 4, "int32"},
    {KV_VEC_I64, 8, "int64"},   {KV_VEC_U8, 1, "uint8"},    {KV_VEC_U16, 2, "uint16"},
    {KV_VEC_U32, 4, "uint32"},  {KV_VEC_U64, 8, "uint64"},  {KV_VEC_I8, 1, "int8"},
    {KV_VEC_I16, 2, "int16"},
};

KV_API size_t kv_vec_elem_size(uint8_t t)
{
    return (t >= 1 && t <= 10) ? vec_types[t - 1].size : 0;
}

KV_API const char *kv_vec_type_name(uint8_t t)
{
    return (t >= 1 && t <= 10) ? vec_types[t - 1].name : NULL;
}

KV_API uint8_t kv_vec_type_from_name(const char *name)
{
    for (size_t i = 0; i < sizeof vec_types / sizeof vec_types[0]; i++)
        if (strcmp(vec_types[i].name, name) == 0)
            return vec_types[i].code;
    return 0;
}

KV_API kv_status kv_vec_parse(const void *p, size_t len, kv_vec_view *out)
{
    const uint8_t *b = p;
    if (len < 2)
        return KV_CORRUPT;
    size_t esz = kv_vec_elem_size(b[0]);
    if (!esz)
        return KV_CORRUPT;
    out->type = b[0];
    out->ndim = b[1];
    size_t hdr = 2 + 4 * (size_t)out->ndim;
    if (len < hdr)
        return KV_CORRUPT;
    uint64_t count = 1;
    for (unsigned i = 0; i < out->ndim; i++) {
        const uint8_t *d = b + 2 + 4 * i;
        uint32_t dim = (uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 |
                       (uint32_t)d[3] << 24;
        out->dims[i] = dim;
        if (dim && count > UINT64_MAX / dim)
            return KV_CORRUPT;
        count *= dim;
    }
    if (count > (len - hdr) / esz)
        return KV_CORRUPT;
    out->count = count;
    out->data = b + hdr;
    out->data_len = (size_t)count * esz;
    return KV_OK;
}

KV_API kv_status kv_vec_header_write(kv_buf *out, uint8_t type, size_t ndim,
                                     const uint64_t *dims)
{
    if (!kv_vec_elem_size(type) || ndim > 255)
        return KV_INVALID;
    if (kv_buf_reserve(out, 2 + 4 * ndim) != KV_OK)
        return KV_NOMEM;
    uint8_t *w = out->data + out->len;
    w[0] = type;
    w[1] = (uint8_t)ndim;
    for (size_t i = 0; i < ndim; i++) {
        if (dims[i] > UINT32_MAX)
            return KV_INVALID;
        uint32_t d = (uint32_t)dims[i];
        w[2 + 4 * i] = (uint8_t)d;
        w[3 + 4 * i] = (uint8_t)(d >> 8);
        w[4 + 4 * i] = (uint8_t)(d >> 16);
        w[5 + 4 * i] = (uint8_t)(d >> 24);
    }
    out->len += 2 + 4 * ndim;
    return KV_OK;
}

/* ======================================================================
 * 0x02 heuristic (docs/api.md §3.4)
 * ==================================================================== */

KV_API void kv_packer_guess(const void *p, size_t len, kv_guess *out)
{
    const uint8_t *b = p;
    if (len == 0) {
        out->kind = KV_GUESS_EMPTY;
        return;
    }
    if (len == 8) {
        double f;
        int64_t i;
        memcpy(&f, b, 8);     /* x86-64 and aarch64 are little-endian */
        memcpy(&i, b, 8);
        if (isfinite(f) && fabs(f - trunc(f)) > 1e-9) {
            out->kind = KV_GUESS_FLOAT;
            out->f64 = f;
        } else if (i > -1000000000000LL && i < 1000000000000LL) {
            out->kind = KV_GUESS_INT;
            out->i64 = i;
        } else {
            out->kind = KV_GUESS_FLOAT;
            out->f64 = f;
        }
        return;
    }
    if (len > 8 && b[0] >= 0x01 && b[0] <= 0x0A && kv_vec_parse(b, len, &out->vec) == KV_OK) {
        out->kind = KV_GUESS_VECTOR;
        return;
    }
    out->kind = kv_utf8_valid(b, len) ? KV_GUESS_STR : KV_GUESS_BYTES;
}

/* ======================================================================
 * UTF-8 (RFC 3629: no overlongs, no surrogates, max U+10FFFF)
 * ==================================================================== */

KV_API int kv_utf8_valid(const void *s, size_t n)
{
    const uint8_t *p = s, *e = p + n;
    while (p < e) {
        uint8_t c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        size_t need;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if ((size_t)(e - p) <= need)
            return 0;
        for (size_t k = 1; k <= need; k++) {
            if ((p[k] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[k] & 0x3F);
        }
        if ((need == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        p += need + 1;
    }
    return 1;
}
