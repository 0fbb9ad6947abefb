/*
 * codec.h - libkvault's value codec: the 10-byte auto-pack header (docs/api.md
 * §3.1), a streaming MessagePack/CBOR encoder, a visitor-based decoder for
 * both (docs/api.md §5.4 data model), the vector byte formats (§5.3) and the
 * 8-byte int/float read heuristic of DataPacker payloads (§3.4).
 *
 * Who may call what: everything here is public. The Python extension
 * (autopack.c, the DataPacker/columns/text/vector bindings) and C programs
 * use it to produce exactly the bytes that kohakuvault files hold. The
 * functions are pure (no I/O, no globals): any thread may call them on
 * distinct buffers/encoders at once.
 *
 * Memory: kv_buf owns a mimalloc'd growable byte buffer; free it with
 * kv_buf_free. Nothing else here allocates except through a kv_buf.
 */
#ifndef KVAULT_CODEC_H
#define KVAULT_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include "kvault.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------
 * Growable byte buffer
 * ---------------------------------------------------------------------- */

/** A growable byte buffer: `len` bytes used of `cap` allocated at `data`.
 *  Zero-initialise (or kv_buf_init) before use; free with kv_buf_free. */
typedef struct kv_buf {
    uint8_t *data;   /**< mimalloc'd storage, NULL when cap == 0 */
    size_t len;      /**< bytes in use */
    size_t cap;      /**< bytes allocated */
} kv_buf;

/** Make *b empty (no allocation). */
KV_API void kv_buf_init(kv_buf *b);
/** Free the storage and make *b empty. */
KV_API void kv_buf_free(kv_buf *b);
/** Ensure room for `extra` more bytes. Returns KV_OK or KV_NOMEM. */
KV_API kv_status kv_buf_reserve(kv_buf *b, size_t extra);
/** Append `n` bytes. Returns KV_OK or KV_NOMEM. */
KV_API kv_status kv_buf_append(kv_buf *b, const void *p, size_t n);

/* ------------------------------------------------------------------------
 * Auto-pack header (docs/api.md §3.1): 89 4B | ver 01 | enc | flags | 00 00 00 | 56 4B
 * ---------------------------------------------------------------------- */

#define KV_HDR_SIZE 10   /**< bytes of the auto-pack header */

/** Encoding ids of the header's byte 3. */
typedef enum kv_encoding {
    KV_ENC_RAW = 0x00,       /**< payload bytes */
    KV_ENC_PICKLE = 0x01,    /**< Python pickle */
    KV_ENC_PACKER = 0x02,    /**< DataPacker i64 / f64 / vector (§3.4) */
    KV_ENC_JSON = 0x03,      /**< UTF-8 JSON */
    KV_ENC_MSGPACK = 0x04,   /**< MessagePack (§5.4) */
    KV_ENC_CBOR = 0x05,      /**< CBOR (§5.4) */
    KV_ENC_STR = 0x06,       /**< UTF-8 string */
    KV_ENC_RESERVED = 0xFF   /**< reserved: decoding it is an error */
} kv_encoding;

/** Write the 10-byte header for encoding `enc` (flags 0, reserved 0) at `out`. */
KV_API void kv_hdr_write(uint8_t out[KV_HDR_SIZE], uint8_t enc);

/** Result of kv_hdr_parse. */
typedef enum kv_hdr_result {
    KV_HDR_NONE = 0,      /**< no header: treat the whole value as raw bytes */
    KV_HDR_OK,            /**< valid header; *enc and the payload are set */
    KV_HDR_BAD_MAGIC,     /**< starts 89 4B but bytes 8..9 are not 56 4B */
    KV_HDR_BAD_VERSION,   /**< version byte is not 1 */
    KV_HDR_BAD_ENCODING,  /**< unknown encoding id */
    KV_HDR_RESERVED_ENC,  /**< encoding id 0xFF */
    KV_HDR_BAD_RESERVED   /**< a reserved byte (5..7) is nonzero */
} kv_hdr_result;

/** Inspect the start of a stored value of `len` bytes (docs/api.md §3.1 read
 *  rules). Length < 10 or first bytes not 89 4B → KV_HDR_NONE. On
 *  KV_HDR_OK, *enc is the id and *payload and *plen point into `data` after
 *  the header (borrowed). Other results are malformed headers; see
 *  kv_hdr_strerror. Never reads past data+len. */
KV_API kv_hdr_result kv_hdr_parse(const void *data, size_t len, uint8_t *enc,
                                  const uint8_t **payload, size_t *plen);

/** Message for a malformed-header result, e.g. "Reserved encoding type",
 *  "Invalid header: bad closing magic". Static string. */
KV_API const char *kv_hdr_strerror(kv_hdr_result r);

/* ------------------------------------------------------------------------
 * MessagePack / CBOR streaming encoder (docs/api.md §5.4 data model)
 *
 * Call the kv_enc_* functions in document order: kv_enc_array(n) must be
 * followed by n items, kv_enc_map(n) by n key/value pairs, where keys are
 * kv_enc_str (the caller sorts keys bytewise). The encoder appends to the
 * kv_buf given to kv_enc_init; it does not check the structure.
 * MessagePack: ints in the smallest width, floats always float64 (0xcb),
 * strings fixstr/str8/16/32. CBOR: shortest ints, floats in the shortest of
 * half/single/double that represents the value exactly, definite lengths.
 * ---------------------------------------------------------------------- */

/** Wire format of the encoder/decoder. */
typedef enum kv_fmt {
    KV_FMT_MSGPACK = 1,
    KV_FMT_CBOR = 2
} kv_fmt;

/** Encoder state (stack-allocatable). Fields are private. */
typedef struct kv_enc {
    kv_buf *out;        /**< borrowed output buffer */
    int fmt;            /**< kv_fmt */
    kv_status st;       /**< sticky status: first failure (KV_NOMEM) */
} kv_enc;

/** Start encoding `fmt` onto `out` (appends after out->len). */
KV_API void kv_enc_init(kv_enc *e, kv_fmt fmt, kv_buf *out);
/** Append nil / CBOR null. */
KV_API kv_status kv_enc_nil(kv_enc *e);
/** Append a boolean (nonzero = true). */
KV_API kv_status kv_enc_bool(kv_enc *e, int v);
/** Append a signed integer (smallest encoding). */
KV_API kv_status kv_enc_int(kv_enc *e, int64_t v);
/** Append an unsigned integer (smallest encoding). */
KV_API kv_status kv_enc_uint(kv_enc *e, uint64_t v);
/** Append a float (msgpack float64; CBOR shortest exact). */
KV_API kv_status kv_enc_double(kv_enc *e, double v);
/** Append a UTF-8 string of `n` bytes (not validated). */
KV_API kv_status kv_enc_str(kv_enc *e, const char *s, size_t n);
/** Start an array of `n` items. */
KV_API kv_status kv_enc_array(kv_enc *e, size_t n);
/** Start a map of `n` pairs. */
KV_API kv_status kv_enc_map(kv_enc *e, size_t n);

/* ------------------------------------------------------------------------
 * Decoder: walks one encoded item and calls a visitor.
 * ---------------------------------------------------------------------- */

/** Callbacks for kv_decode. Each returns 0 to continue or nonzero to abort
 *  (kv_decode then returns KV_CALLBACK). All must be non-NULL. Strings are
 *  borrowed from the input (valid during the call only). Inside a map the
 *  visitor sees key, value, key, value...; keys are always on_str. Floats
 *  of every width arrive widened to double. */
typedef struct kv_visitor {
    int (*on_nil)(void *ctx);
    int (*on_bool)(void *ctx, int v);
    int (*on_int)(void *ctx, int64_t v);      /**< negative integers, and non-negative ones when they fit */
    int (*on_uint)(void *ctx, uint64_t v);    /**< integers above INT64_MAX */
    int (*on_double)(void *ctx, double v);
    int (*on_str)(void *ctx, const char *s, size_t n);
    int (*on_array_begin)(void *ctx, size_t n);
    int (*on_array_end)(void *ctx);
    int (*on_map_begin)(void *ctx, size_t n);
    int (*on_map_end)(void *ctx);
} kv_visitor;

/** Maximum nesting depth accepted by kv_decode. */
#define KV_DECODE_MAX_DEPTH 512

/** Decode ONE item of format `fmt` from data[0..len) calling `v`.
 *  *consumed (may be NULL) receives the bytes the item used (trailing bytes
 *  are left alone). On failure `err` (may be NULL) receives a message of at
 *  most errlen-1 bytes ("truncated input", "binary strings are not
 *  supported", "map keys must be strings", ...).
 *  Returns KV_OK; KV_CORRUPT (truncated or malformed input, nesting deeper
 *  than KV_DECODE_MAX_DEPTH); KV_UNSUPPORTED (binary, ext, tags, undefined,
 *  non-string map keys); KV_CALLBACK (a callback aborted); KV_NOMEM. */
KV_API kv_status kv_decode(kv_fmt fmt, const void *data, size_t len,
                           const kv_visitor *v, void *ctx, size_t *consumed,
                           char *err, size_t errlen);

/* ------------------------------------------------------------------------
 * Vectors (docs/api.md §5.3)
 * ---------------------------------------------------------------------- */

/** Element type codes of the vector formats. */
typedef enum kv_vec_type {
    KV_VEC_F32 = 0x01, KV_VEC_F64 = 0x02, KV_VEC_I32 = 0x03, KV_VEC_I64 = 0x04,
    KV_VEC_U8 = 0x05, KV_VEC_U16 = 0x06, KV_VEC_U32 = 0x07, KV_VEC_U64 = 0x08,
    KV_VEC_I8 = 0x09, KV_VEC_I16 = 0x0A
} kv_vec_type;

/** Bytes per element of type code `t`, or 0 for an unknown code. */
KV_API size_t kv_vec_elem_size(uint8_t t);

/** numpy dtype name of type code `t` ("float32", ...) or NULL. */
KV_API const char *kv_vec_type_name(uint8_t t);

/** Type code for a numpy dtype name ("float32", "int8", ...), 0 if none. */
KV_API uint8_t kv_vec_type_from_name(const char *name);

/** A parsed arbitrary-shape vector; `data` borrows the input. */
typedef struct kv_vec_view {
    uint8_t type;             /**< element type code */
    uint8_t ndim;             /**< number of dimensions (0..255) */
    uint32_t dims[255];       /**< dims[0..ndim) */
    uint64_t count;           /**< product of dims (1 when ndim == 0) */
    const uint8_t *data;      /**< count × elem_size bytes, little-endian, C order */
    size_t data_len;          /**< count × elem_size */
} kv_vec_view;

/** Parse `[type u8][ndim u8][ndim × u32le dims][data]` from p[0..len).
 *  Trailing bytes after the data are ignored. Returns KV_OK, or KV_CORRUPT
 *  (unknown type, truncated header or data, element count overflow). */
KV_API kv_status kv_vec_parse(const void *p, size_t len, kv_vec_view *out);

/** Append the arbitrary-shape header for `ndim` dims (each ≤ UINT32_MAX)
 *  to `out`; the caller appends the data. Returns KV_OK, KV_INVALID
 *  (unknown type, ndim > 255, a dim too large), KV_NOMEM. */
KV_API kv_status kv_vec_header_write(kv_buf *out, uint8_t type, size_t ndim,
                                     const uint64_t *dims);

/* ------------------------------------------------------------------------
 * DataPacker (0x02) read heuristic (docs/api.md §3.4)
 * ---------------------------------------------------------------------- */

/** What a 0x02 payload is guessed to be. */
typedef enum kv_guess_kind {
    KV_GUESS_EMPTY = 0,   /**< empty payload → b"" */
    KV_GUESS_INT,         /**< 8 bytes → int (i64 field) */
    KV_GUESS_FLOAT,       /**< 8 bytes → float (f64 field) */
    KV_GUESS_VECTOR,      /**< arbitrary-shape vector (vec field) */
    KV_GUESS_STR,         /**< valid UTF-8 → str */
    KV_GUESS_BYTES        /**< anything else → bytes */
} kv_guess_kind;

/** Result of kv_packer_guess. */
typedef struct kv_guess {
    kv_guess_kind kind;
    int64_t i64;          /**< KV_GUESS_INT */
    double f64;           /**< KV_GUESS_FLOAT */
    kv_vec_view vec;      /**< KV_GUESS_VECTOR (borrows the payload) */
} kv_guess;

/** Apply the §3.4 rules to payload p[0..len): empty; exactly 8 bytes →
 *  float if finite with |f - trunc f| > 1e-9, else int if |i| < 10^12, else
 *  float; longer with first byte 0x01..0x0A and a valid vector → vector;
 *  valid UTF-8 → str; else bytes. Never fails. */
KV_API void kv_packer_guess(const void *p, size_t len, kv_guess *out);

/** 1 if s[0..n) is well-formed UTF-8 (no overlongs, no surrogates, ≤ U+10FFFF). */
KV_API int kv_utf8_valid(const void *s, size_t n);

#ifdef __cplusplus
}
#endif
#endif /* KVAULT_CODEC_H */
