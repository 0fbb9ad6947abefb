/*
 * packer.h - DataPacker: the typed element codec of kohakuvault columns.
 *
 * A dtype string (docs/api.md §5.1: "i64", "f64", "str:32:utf16le", "bytes:16",
 * "msgpack", "vec:f32:8", ...) is parsed once into a kv_packer value struct;
 * the struct then says how one element is laid out (elem_size 0 means
 * variable size) and the functions below pack and unpack the kinds that are
 * representable in C: i64, f64, strings in five encodings, raw bytes,
 * fixed-size zero padding and the two numpy vector headers (docs/api.md §5.3).
 * MessagePack and CBOR element bodies are produced by the caller (the Python
 * layer walks Python objects, see python/ext/packer_py.c); the packer only
 * applies their fixed-size padding rules.
 *
 * Thread safety: a kv_packer is an immutable value after kv_packer_parse;
 * every function here is pure (no global state) and may be called from any
 * thread.
 */
#ifndef KVAULT_PACKER_H
#define KVAULT_PACKER_H

#include <stddef.h>
#include <stdint.h>

#include "kvault/kvault.h"
#include "kvault/codec.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Size of the error buffers the functions below fill in (bytes, incl. NUL). */
#define KV_PK_ERRLEN 512
/** Largest number of dimensions a vector dtype or vector header may carry. */
#define KV_PK_MAX_DIMS 32

/** Element kinds of the dtype grammar (first token of the dtype string). */
typedef enum kv_pk_kind {
    KV_PK_I64 = 1,  /**< int64 little-endian, 8 bytes */
    KV_PK_F64,      /**< float64 little-endian, 8 bytes */
    KV_PK_STR,      /**< text in kv_packer.enc, fixed or variable */
    KV_PK_BYTES,    /**< raw bytes, fixed (zero-padded) or variable */
    KV_PK_MSGPACK,  /**< MessagePack body, fixed (zero-padded) or variable */
    KV_PK_CBOR,     /**< CBOR body, fixed (zero-padded) or variable */
    KV_PK_VEC,      /**< numpy vector, fixed shape or arbitrary shape */
} kv_pk_kind;

/** Text encodings of `str` dtypes. */
typedef enum kv_pk_enc {
    KV_STR_UTF8 = 0,
    KV_STR_UTF16LE,
    KV_STR_UTF16BE,
    KV_STR_ASCII,
    KV_STR_LATIN1,
} kv_pk_enc;

/** A parsed dtype. Plain value: copy freely, nothing to free. */
typedef struct kv_packer {
    kv_pk_kind pk_kind;     /**< element kind */
    kv_pk_enc pk_enc;       /**< KV_PK_STR only: text encoding */
    uint32_t pk_fixed;      /**< str/bytes/msgpack/cbor: fixed byte size N, 0 = variable */
    int pk_has_fixed;       /**< 1 when a size token was given (even "bytes:0") */
    uint8_t pk_vec_type;    /**< KV_PK_VEC: element type code (kv_vec_type of codec.h) */
    uint8_t pk_ndim;        /**< KV_PK_VEC: 0 = arbitrary shape, else number of dims */
    uint32_t pk_dims[KV_PK_MAX_DIMS]; /**< KV_PK_VEC fixed shape: each dim >= 1 */
    uint64_t pk_count;      /**< KV_PK_VEC fixed shape: product of dims (elements) */
    size_t pk_elem_size;    /**< bytes per packed element; 0 = variable size */
} kv_packer;

/**
 * Parse a dtype string (docs/api.md §5.1) into *out.
 *
 * @param dtype  NUL-terminated dtype, e.g. "vec:f32:28:28".
 * @param out    filled on KV_OK; untouched otherwise.
 * @param err    KV_PK_ERRLEN bytes; on failure receives the message, which
 *               starts with "Invalid dtype:" ("Invalid dtype: Unknown dtype:
 *               <s>" for an unknown first token).
 * @return KV_OK, or KV_INVALID for any grammar error.
 */
KV_API kv_status kv_packer_parse(const char *dtype, kv_packer *out, char *err);

/** Write an int64 as 8 bytes little-endian into out[0..8). */
KV_API void kv_pack_i64(int64_t v, uint8_t out[8]);
/** Read 8 bytes little-endian as int64. */
KV_API int64_t kv_unpack_i64(const uint8_t in[8]);
/** Write a float64 as 8 bytes little-endian into out[0..8). */
KV_API void kv_pack_f64(double v, uint8_t out[8]);
/** Read 8 bytes little-endian as float64. */
KV_API double kv_unpack_f64(const uint8_t in[8]);

/**
 * Encode UTF-8 text into `enc`.
 *
 * @param utf8, len   valid UTF-8 input of `len` bytes (callers pass what
 *                    CPython's PyUnicode_AsUTF8AndSize returns).
 * @param out         on KV_OK, a malloc'd buffer the caller frees with free();
 *                    *out_len its length in bytes. May be non-NULL for len 0.
 * @param err         KV_PK_ERRLEN bytes, message on failure.
 * @return KV_OK; KV_INVALID with "... non-ASCII ..." (ascii) or "... outside
 *         Latin1 range ..." (latin1) or "invalid UTF-8"; KV_NOMEM.
 */
KV_API kv_status kv_str_encode(kv_pk_enc enc, const char *utf8, size_t len,
                        uint8_t **out, size_t *out_len, char *err);

/**
 * Decode `len` bytes in `enc` into UTF-8.
 *
 * A trailing odd byte of UTF-16 input is dropped (docs/api.md §5.3).
 * @param out   on KV_OK, a malloc'd NUL-terminated UTF-8 buffer (caller
 *              frees); *out_len excludes the NUL.
 * @param strip_nul  when non-zero, trailing U+0000 characters are removed
 *              (fixed-size `str:N` columns pad with them).
 * @return KV_OK; KV_INVALID for malformed input (invalid UTF-8, unpaired
 *         UTF-16 surrogate, byte >= 0x80 in ASCII); KV_NOMEM.
 */
KV_API kv_status kv_str_decode(kv_pk_enc enc, const uint8_t *in, size_t len, int strip_nul,
                        char **out, size_t *out_len, char *err);

/**
 * Copy `len` bytes into a fixed slot of `n` bytes, zero-padding the rest.
 *
 * @param out  n bytes, written on KV_OK.
 * @return KV_OK, or KV_INVALID with "Data too long: <len> > <n>" when len > n.
 */
KV_API kv_status kv_pack_fixed(const void *src, size_t len, size_t n, uint8_t *out, char *err);

/**
 * Locate one fixed-shape vector `[type u8][data]` at in[0..len) for a
 * KV_PK_VEC packer with pk_ndim > 0. The data's element type is the type
 * byte found in the input (docs/api.md §5.3: it may differ from the dtype's);
 * the element count is the packer's pk_count.
 *
 * @param type   receives the type byte.
 * @param data   receives a pointer into `in` (borrowed).
 * @param nbytes receives pk_count * element size of `type`.
 * @return KV_OK; KV_INVALID with "Not enough data ..." when the input is
 *         short, or "Unknown vector type ..." for a bad type byte.
 */
KV_API kv_status kv_packer_vec_fixed(const kv_packer *pk, const uint8_t *in, size_t len,
                                     uint8_t *type, const uint8_t **data, size_t *nbytes,
                                     char *err);

#ifdef __cplusplus
}
#endif
#endif /* KVAULT_PACKER_H */
