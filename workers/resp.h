/*
 * resp.h -- the Redis serialization protocol, version 2 (RESP2), as spoken by
 * kvault-reader: a request parser and a reply writer. Pure: memory in, memory
 * out, no I/O, no global state. Any thread, one call at a time per object.
 *
 * Requests (https://redis.io/docs/reference/protocol-spec/):
 *   multibulk  *<n>\r\n then n times $<len>\r\n<len bytes>\r\n
 *   inline     a line of words separated by blanks, ended by \n (\r\n),
 *              as telnet sends them; "..." and '...' group words (no escapes)
 * Limits (resp_limits) turn oversized requests into protocol errors: the
 * caller replies with the error and closes the connection, as redis-server
 * does. The parser reads only bytes [buf, buf + len).
 */
#ifndef KV_RESP_H
#define KV_RESP_H

#include <stddef.h>
#include <stdint.h>

/* ======================================================================
 * Limits
 * ==================================================================== */

/** Default limits. redis-server allows 512 MB bulks and a 1 GB query buffer;
 *  a reader keeps every pipelined request of a connection in memory, so we
 *  choose: 64 MiB per bulk string (a value; larger ones go through the
 *  Python or C API as streams), 1,048,576 elements per array (Redis's limit
 *  for unauthenticated clients is 10; for others INT_MAX), 64 KiB per inline
 *  request (Redis's PROTO_INLINE_MAX_SIZE, server.h). */
#define RESP_MAX_BULK_DEFAULT   (64u << 20)
#define RESP_MAX_ARGS_DEFAULT   (1u << 20)
#define RESP_MAX_INLINE_DEFAULT (64u << 10)

typedef struct resp_limits {
    size_t max_bulk;    /**< longest bulk string, bytes */
    size_t max_args;    /**< most elements of a request array */
    size_t max_inline;  /**< longest inline request or count line, bytes */
} resp_limits;

/** The defaults above. */
void resp_limits_default(resp_limits *l);

/* ======================================================================
 * Parser
 * ==================================================================== */

/** One argument: borrowed pointer into the parsed buffer and its length. */
typedef struct resp_arg {
    const char *p;
    size_t len;
} resp_arg;

/** Arguments of one request. Owned by the caller (zero-initialise; free
 *  with resp_argv_free); resp_parse grows `v` as needed. */
typedef struct resp_argv {
    resp_arg *v;
    size_t n;     /**< arguments of the last parsed request (0: empty request) */
    size_t cap;
    char err[64]; /**< room for a protocol error message naming a byte */
} resp_argv;

void resp_argv_free(resp_argv *a);

typedef enum resp_result {
    RESP_OK = 0,   /**< one request parsed: argv->n arguments, *used bytes */
    RESP_MORE,     /**< incomplete: read more (*used = total bytes needed if known, else 0) */
    RESP_EPROTO,   /**< malformed or over a limit: *err says why; close after replying */
    RESP_ENOMEM    /**< argv could not grow */
} resp_result;

/** Parse the first request in buf[0, len). On RESP_OK, argv->v[i] point into
 *  buf (valid while buf is), and *used is the request's length; argv->n == 0
 *  is an empty request (blank inline line, `*0`, `*-1`) to skip. On
 *  RESP_EPROTO, *err is a message (static, or in argv->err) in Redis's words without the
 *  leading "-" and CRLF, e.g. "ERR Protocol error: invalid bulk length". */
resp_result resp_parse(const char *buf, size_t len, const resp_limits *lim, resp_argv *argv,
                       size_t *used, const char **err);

/* ======================================================================
 * Reply writer: appends RESP2 replies to a growable byte buffer
 * ==================================================================== */

/** A growable byte buffer. Zero-initialise; free with resp_buf_free. Every
 *  append returns 0, or -1 when memory ran out (the buffer is unchanged). */
typedef struct resp_buf {
    char *p;
    size_t len;
    size_t cap;
} resp_buf;

void resp_buf_free(resp_buf *b);
/** Make room for `more` bytes past len. */
int resp_buf_reserve(resp_buf *b, size_t more);
int resp_buf_append(resp_buf *b, const void *p, size_t n);
/** Drop the first n bytes (n <= len). */
void resp_buf_consume(resp_buf *b, size_t n);

int resp_put_simple(resp_buf *b, const char *s);           /* +s\r\n */
int resp_put_error(resp_buf *b, const char *s);            /* -s\r\n */
int resp_put_errorf(resp_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int resp_put_int(resp_buf *b, int64_t v);                  /* :v\r\n */
int resp_put_bulk(resp_buf *b, const void *p, size_t n);   /* $n\r\n<bytes>\r\n */
int resp_put_nil(resp_buf *b);                             /* $-1\r\n */
int resp_put_array(resp_buf *b, size_t n);                 /* *n\r\n */
int resp_put_bulk_str(resp_buf *b, const char *s);

/* ======================================================================
 * Glob matching (SCAN MATCH)
 * ==================================================================== */

/** 1 if str[0, slen) matches the glob pattern pat[0, plen), else 0, with
 *  Redis's KEYS/SCAN rules: `*` any run, `?` one byte, `[abc]`, `[^abc]`,
 *  `[a-z]` classes, `\x` the byte x literally. Bytes, not characters. */
int resp_glob_match(const char *pat, size_t plen, const char *str, size_t slen);

/** Length of the literal prefix of a glob pattern: the bytes before its
 *  first `*`, `?`, `[` or `\` (every key matching the pattern starts with
 *  them). */
size_t resp_glob_prefix(const char *pat, size_t plen);

#endif /* KV_RESP_H */
