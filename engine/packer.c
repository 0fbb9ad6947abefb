/*
 * packer.c - DataPacker dtype grammar and the C-representable element codecs.
 *
 * Layering: pure functions over memory; no SQLite, no Python. The column
 * engine (col_*.c) only needs kv_packer.pk_elem_size; the Python binding
 * (python/ext/packer_py.c) uses the rest to turn Python values into the byte
 * formats of docs/api.md §5.3.
 *
 * Sections: dtype grammar | scalars | text transcoding | fixed padding |
 * vector headers.
 */
#include "kvault/packer.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------------ */
/* dtype grammar                                                            */
/* ------------------------------------------------------------------------ */

#define PK_MAX_TOKENS 40

/* Parse an unsigned decimal token (digits only) that fits in uint32. */
static int pk_parse_u32(const char *s, uint32_t *out)
{
    if (!*s)
        return -1;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > UINT32_MAX)
            return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

static int pk_parse_enc(const char *s, kv_pk_enc *out)
{
    static const struct { const char *name; kv_pk_enc enc; } encs[] = {
        {"utf8", KV_STR_UTF8},       {"utf-8", KV_STR_UTF8},
        {"utf16le", KV_STR_UTF16LE}, {"utf-16le", KV_STR_UTF16LE},
        {"utf16be", KV_STR_UTF16BE}, {"utf-16be", KV_STR_UTF16BE},
        {"ascii", KV_STR_ASCII},     {"latin1", KV_STR_LATIN1},
        {"iso-8859-1", KV_STR_LATIN1},
    };
    for (size_t i = 0; i < sizeof encs / sizeof encs[0]; i++)
        if (strcasecmp(s, encs[i].name) == 0) {
            *out = encs[i].enc;
            return 0;
        }
    return -1;
}

static int pk_parse_vec_type(const char *s, uint8_t *out)
{
    static const struct { const char *a, *b; uint8_t code; } types[] = {
        {"f32", "float32", KV_VEC_F32}, {"f64", "float64", KV_VEC_F64},
        {"i8", "int8", KV_VEC_I8},      {"i16", "int16", KV_VEC_I16},
        {"i32", "int32", KV_VEC_I32},   {"i64", "int64", KV_VEC_I64},
        {"u8", "uint8", KV_VEC_U8},     {"u16", "uint16", KV_VEC_U16},
        {"u32", "uint32", KV_VEC_U32},  {"u64", "uint64", KV_VEC_U64},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcmp(s, types[i].a) == 0 || strcmp(s, types[i].b) == 0) {
            *out = types[i].code;
            return 0;
        }
    return -1;
}

/* Kinds whose dtype is "<kind>" or "<kind>:<size>" (pk_sized): 1 and
 * *out set when `kind` names one. */
static int pk_sized_kind(const char *kind, kv_pk_kind *out)
{
    static const struct {
        const char *name;
        kv_pk_kind kind;
    } names[] = {{"bytes", KV_PK_BYTES},
                 {"msgpack", KV_PK_MSGPACK},
                 {"messagepack", KV_PK_MSGPACK},
                 {"cbor", KV_PK_CBOR}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(kind, names[i].name) == 0) {
            *out = names[i].kind;
            return 1;
        }
    return 0;
}

/* Record a dtype error in err (KV_PK_ERRLEN bytes; a longer message is
 * cut) and return KV_INVALID. */
static kv_status pk_dtype_error(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static kv_status pk_dtype_error(char *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, KV_PK_ERRLEN, fmt, ap);
    va_end(ap);
    return KV_INVALID;
}

/* Optional ":N" fixed size for bytes/msgpack/cbor (exactly 1 or 2 tokens). */
static kv_status pk_sized(kv_packer *pk, char **tok, int ntok, const char *dtype, char *err)
{
    if (ntok > 2)
        return pk_dtype_error(err, "Invalid dtype: too many parts in '%s'", dtype);
    if (ntok == 2) {
        if (pk_parse_u32(tok[1], &pk->pk_fixed) != 0)
            return pk_dtype_error(err, "Invalid dtype: invalid size '%s' in '%s'", tok[1], dtype);
        pk->pk_has_fixed = 1;
    }
    pk->pk_elem_size = pk->pk_fixed;
    return KV_OK;
}

/* The dtype grammar in one line (docs/api.md §5.1), appended to "Unknown
 * dtype" errors. */
#define PK_DTYPE_HINT                                                                          \
    "valid: i64, f64, str, str:<enc>, str:<N>[:<enc>], bytes[:<N>], msgpack[:<N>], "           \
    "cbor[:<N>], vec:<elem>[:<d1>:<d2>...] with <elem> one of f32 f64 i8 i16 i32 i64 u8 u16 "  \
    "u32 u64; the only scalar numbers are i64 and f64, other element types exist only "        \
    "inside vec:, e.g. vec:f32"

kv_status kv_packer_parse(const char *dtype, kv_packer *out, char *err)
{
    char buf[512];
    char *tok[PK_MAX_TOKENS];
    int ntok = 0;
    kv_packer pk;

    memset(&pk, 0, sizeof pk);
    err[0] = '\0';
    if (!dtype || strlen(dtype) >= sizeof buf) {
        snprintf(err, KV_PK_ERRLEN, "Invalid dtype: Unknown dtype: %.200s", dtype ? dtype : "");
        return KV_INVALID;
    }
    strcpy(buf, dtype);
    /* Split on ':' keeping empty tokens ("vec:" has an empty element type). */
    char *p = buf;
    tok[ntok++] = p;
    for (; *p; p++)
        if (*p == ':') {
            *p = '\0';
            if (ntok == PK_MAX_TOKENS) {
                snprintf(err, KV_PK_ERRLEN, "Invalid dtype: too many parts in '%.200s'", dtype);
                return KV_INVALID;
            }
            tok[ntok++] = p + 1;
        }

    const char *kind = tok[0];
    if (strcmp(kind, "i64") == 0) {
        pk.pk_kind = KV_PK_I64;
        pk.pk_elem_size = 8;
    } else if (strcmp(kind, "f64") == 0) {
        pk.pk_kind = KV_PK_F64;
        pk.pk_elem_size = 8;
    } else if (strcmp(kind, "str") == 0 || strcmp(kind, "string") == 0) {
        pk.pk_kind = KV_PK_STR;
        pk.pk_enc = KV_STR_UTF8;
        if (ntok > 3) {
            snprintf(err, KV_PK_ERRLEN, "Invalid dtype: too many parts in '%.200s'", dtype);
            return KV_INVALID;
        }
        if (ntok >= 2) {
            if (pk_parse_u32(tok[1], &pk.pk_fixed) == 0) {
                pk.pk_has_fixed = 1;
                if (ntok == 3 && pk_parse_enc(tok[2], &pk.pk_enc) != 0) {
                    snprintf(err, KV_PK_ERRLEN, "Invalid dtype: Unknown encoding '%.100s' in '%.200s'",
                             tok[2], dtype);
                    return KV_INVALID;
                }
            } else if (ntok == 2) {
                if (pk_parse_enc(tok[1], &pk.pk_enc) != 0) {
                    snprintf(err, KV_PK_ERRLEN, "Invalid dtype: Unknown encoding '%.100s' in '%.200s'",
                             tok[1], dtype);
                    return KV_INVALID;
                }
            } else {
                snprintf(err, KV_PK_ERRLEN, "Invalid dtype: invalid size '%.100s' in '%.200s'", tok[1],
                         dtype);
                return KV_INVALID;
            }
        }
        pk.pk_elem_size = pk.pk_fixed;
    } else if (pk_sized_kind(kind, &pk.pk_kind)) {
        if (pk_sized(&pk, tok, ntok, dtype, err) != KV_OK)
            return KV_INVALID;
    } else if (strcmp(kind, "vec") == 0 || strcmp(kind, "vector") == 0) {
        pk.pk_kind = KV_PK_VEC;
        if (ntok < 2 || tok[1][0] == '\0') {
            snprintf(err, KV_PK_ERRLEN, "Invalid dtype: vector requires an element type: '%.200s'",
                     dtype);
            return KV_INVALID;
        }
        if (pk_parse_vec_type(tok[1], &pk.pk_vec_type) != 0) {
            snprintf(err, KV_PK_ERRLEN, "Invalid dtype: Unknown vector element type '%.100s' in '%.200s'",
                     tok[1], dtype);
            return KV_INVALID;
        }
        if (ntok - 2 > KV_PK_MAX_DIMS) {
            snprintf(err, KV_PK_ERRLEN, "Invalid dtype: too many dimensions in '%.200s'", dtype);
            return KV_INVALID;
        }
        pk.pk_ndim = (uint8_t)(ntok - 2);
        pk.pk_count = 1;
        for (int i = 2; i < ntok; i++) {
            uint32_t d;
            if (pk_parse_u32(tok[i], &d) != 0 || d == 0) {
                snprintf(err, KV_PK_ERRLEN, "Invalid dtype: invalid dimension '%.100s' in '%.200s'",
                         tok[i], dtype);
                return KV_INVALID;
            }
            pk.pk_dims[i - 2] = d;
            pk.pk_count *= d;
            if (pk.pk_count > ((uint64_t)1 << 40)) {
                snprintf(err, KV_PK_ERRLEN, "Invalid dtype: vector too large in '%.200s'", dtype);
                return KV_INVALID;
            }
        }
        if (pk.pk_ndim > 0)
            pk.pk_elem_size = 1 + (size_t)pk.pk_count * kv_vec_elem_size(pk.pk_vec_type);
        else
            pk.pk_count = 0;
    } else {
        snprintf(err, KV_PK_ERRLEN, "Invalid dtype: Unknown dtype: %.200s (%s)", dtype, PK_DTYPE_HINT);
        return KV_INVALID;
    }
    *out = pk;
    return KV_OK;
}

/* ------------------------------------------------------------------------ */
/* scalars                                                                  */
/* ------------------------------------------------------------------------ */

void kv_pack_i64(int64_t v, uint8_t out[8])
{
    uint64_t u = (uint64_t)v;
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(u >> (8 * i));
}

int64_t kv_unpack_i64(const uint8_t in[8])
{
    uint64_t u = 0;
    for (int i = 0; i < 8; i++)
        u |= (uint64_t)in[i] << (8 * i);
    return (int64_t)u;
}

void kv_pack_f64(double v, uint8_t out[8])
{
    uint64_t u;
    memcpy(&u, &v, 8);
    kv_pack_i64((int64_t)u, out);
}

double kv_unpack_f64(const uint8_t in[8])
{
    uint64_t u = (uint64_t)kv_unpack_i64(in);
    double v;
    memcpy(&v, &u, 8);
    return v;
}

/* ------------------------------------------------------------------------ */
/* text transcoding                                                         */
/* ------------------------------------------------------------------------ */

/* Decode one UTF-8 code point at s[*i] (strict: no overlongs, no
 * surrogates, <= U+10FFFF). Returns the code point or -1. */
static int32_t pk_utf8_next(const uint8_t *s, size_t len, size_t *i)
{
    uint8_t c = s[*i];
    if (c < 0x80) {
        (*i)++;
        return c;
    }
    int n;
    int32_t cp, min;
    if ((c & 0xE0) == 0xC0) { n = 1; cp = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { n = 2; cp = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { n = 3; cp = c & 0x07; min = 0x10000; }
    else return -1;
    if (*i + (size_t)n >= len)
        return -1;
    for (int k = 1; k <= n; k++) {
        uint8_t cc = s[*i + (size_t)k];
        if ((cc & 0xC0) != 0x80)
            return -1;
        cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return -1;
    *i += (size_t)n + 1;
    return cp;
}

static size_t pk_utf8_put(int32_t cp, char *o)
{
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

kv_status kv_str_encode(kv_pk_enc enc, const char *utf8, size_t len, uint8_t **out,
                        size_t *out_len, char *err)
{
    const uint8_t *s = (const uint8_t *)utf8;
    /* Worst case: UTF-16 of ASCII doubles the size. */
    size_t cap = (enc == KV_STR_UTF16LE || enc == KV_STR_UTF16BE) ? 2 * len + 4 : len + 1;
    uint8_t *o = malloc(cap);
    size_t n = 0, i = 0;
    if (!o)
        return KV_NOMEM;
    if (enc == KV_STR_UTF8) {
        while (i < len)
            if (pk_utf8_next(s, len, &i) < 0)
                goto bad_utf8;
        memcpy(o, s, len);
        n = len;
    } else {
        while (i < len) {
            size_t at = i;
            int32_t cp = pk_utf8_next(s, len, &i);
            if (cp < 0)
                goto bad_utf8;
            switch (enc) {
            case KV_STR_ASCII:
                if (cp >= 0x80) {
                    snprintf(err, KV_PK_ERRLEN,
                             "String contains non-ASCII characters (U+%04X at byte %zu)", (unsigned)cp, at);
                    free(o);
                    return KV_INVALID;
                }
                o[n++] = (uint8_t)cp;
                break;
            case KV_STR_LATIN1:
                if (cp > 0xFF) {
                    snprintf(err, KV_PK_ERRLEN,
                             "String contains characters outside Latin1 range (U+%04X at byte %zu)",
                             (unsigned)cp, at);
                    free(o);
                    return KV_INVALID;
                }
                o[n++] = (uint8_t)cp;
                break;
            default: { /* UTF-16 */
                uint16_t units[2];
                int nu = 1;
                if (cp >= 0x10000) {
                    int32_t v = cp - 0x10000;
                    units[0] = (uint16_t)(0xD800 | (v >> 10));
                    units[1] = (uint16_t)(0xDC00 | (v & 0x3FF));
                    nu = 2;
                } else {
                    units[0] = (uint16_t)cp;
                }
                for (int k = 0; k < nu; k++) {
                    if (enc == KV_STR_UTF16LE) {
                        o[n++] = (uint8_t)(units[k] & 0xFF);
                        o[n++] = (uint8_t)(units[k] >> 8);
                    } else {
                        o[n++] = (uint8_t)(units[k] >> 8);
                        o[n++] = (uint8_t)(units[k] & 0xFF);
                    }
                }
            }
            }
        }
    }
    *out = o;
    *out_len = n;
    return KV_OK;
bad_utf8:
    snprintf(err, KV_PK_ERRLEN, "invalid UTF-8 input at byte %zu", i);
    free(o);
    return KV_INVALID;
}

kv_status kv_str_decode(kv_pk_enc enc, const uint8_t *in, size_t len, int strip_nul, char **out,
                        size_t *out_len, char *err)
{
    /* UTF-8 output is at most 3 bytes per input byte (Latin-1 -> 2, UTF-16 -> 3/2). */
    size_t cap = (enc == KV_STR_UTF8 || enc == KV_STR_ASCII) ? len + 1 : 2 * len + 1;
    char *o = malloc(cap);
    size_t n = 0;
    if (!o)
        return KV_NOMEM;
    switch (enc) {
    case KV_STR_UTF8: {
        size_t i = 0;
        while (i < len)
            if (pk_utf8_next(in, len, &i) < 0) {
                snprintf(err, KV_PK_ERRLEN, "Invalid UTF-8 data at byte %zu", i);
                goto fail;
            }
        memcpy(o, in, len);
        n = len;
        break;
    }
    case KV_STR_ASCII:
        for (size_t i = 0; i < len; i++) {
            if (in[i] >= 0x80) {
                snprintf(err, KV_PK_ERRLEN, "Invalid ASCII data: non-ASCII byte 0x%02X at %zu", in[i], i);
                goto fail;
            }
            o[n++] = (char)in[i];
        }
        break;
    case KV_STR_LATIN1:
        for (size_t i = 0; i < len; i++)
            n += pk_utf8_put(in[i], o + n);
        break;
    default: {
        size_t units = len / 2; /* a trailing odd byte is dropped */
        for (size_t u = 0; u < units; u++) {
            const uint8_t *b = in + 2 * u;
            uint32_t w = enc == KV_STR_UTF16LE ? (uint32_t)(b[0] | (b[1] << 8))
                                               : (uint32_t)((b[0] << 8) | b[1]);
            int32_t cp = (int32_t)w;
            if (w >= 0xD800 && w <= 0xDBFF) {
                if (u + 1 >= units)
                    goto bad16;
                const uint8_t *b2 = in + 2 * (u + 1);
                uint32_t w2 = enc == KV_STR_UTF16LE ? (uint32_t)(b2[0] | (b2[1] << 8))
                                                    : (uint32_t)((b2[0] << 8) | b2[1]);
                if (w2 < 0xDC00 || w2 > 0xDFFF)
                    goto bad16;
                cp = (int32_t)(0x10000 + ((w - 0xD800) << 10) + (w2 - 0xDC00));
                u++;
            } else if (w >= 0xDC00 && w <= 0xDFFF) {
                goto bad16;
            }
            /* 4 UTF-8 bytes from 4 UTF-16 bytes, 3 from 2: fits 2*len. */
            n += pk_utf8_put(cp, o + n);
        }
        break;
    bad16:
        snprintf(err, KV_PK_ERRLEN, "Invalid UTF-16 data: unpaired surrogate");
        goto fail;
    }
    }
    if (strip_nul)
        while (n > 0 && o[n - 1] == '\0')
            n--;
    o[n] = '\0';
    *out = o;
    *out_len = n;
    return KV_OK;
fail:
    free(o);
    return KV_INVALID;
}

/* ------------------------------------------------------------------------ */
/* fixed padding                                                            */
/* ------------------------------------------------------------------------ */

kv_status kv_pack_fixed(const void *src, size_t len, size_t n, uint8_t *out, char *err)
{
    if (len > n) {
        snprintf(err, KV_PK_ERRLEN, "Data too long: %zu > %zu", len, n);
        return KV_INVALID;
    }
    if (len)
        memcpy(out, src, len);
    memset(out + len, 0, n - len);
    return KV_OK;
}

/* ------------------------------------------------------------------------ */
/* vector headers                                                           */
/* ------------------------------------------------------------------------ */

kv_status kv_packer_vec_fixed(const kv_packer *pk, const uint8_t *in, size_t len,
                              uint8_t *type, const uint8_t **data, size_t *nbytes, char *err)
{
    if (len < 1) {
        snprintf(err, KV_PK_ERRLEN, "Not enough data for vector: need %zu bytes, have 0",
                 pk->pk_elem_size);
        return KV_INVALID;
    }
    size_t es = kv_vec_elem_size(in[0]);
    if (!es) {
        snprintf(err, KV_PK_ERRLEN, "Unknown vector type 0x%02X", in[0]);
        return KV_INVALID;
    }
    size_t need = (size_t)pk->pk_count * es;
    if (len - 1 < need) {
        snprintf(err, KV_PK_ERRLEN, "Not enough data for vector: need %zu bytes, have %zu", need,
                 len - 1);
        return KV_INVALID;
    }
    *type = in[0];
    *data = in + 1;
    *nbytes = need;
    return KV_OK;
}
