/*
 * resp.c -- RESP2 request parser, reply writer and glob matcher (resp.h).
 *
 * The parser is restartable by re-running it: it keeps no state between
 * calls and returns RESP_MORE until a whole request is in the buffer, so a
 * request split anywhere parses the same as one received at once. Every
 * read is bounds-checked against `len` first.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resp.h"

void resp_limits_default(resp_limits *l)
{
    l->max_bulk = RESP_MAX_BULK_DEFAULT;
    l->max_args = RESP_MAX_ARGS_DEFAULT;
    l->max_inline = RESP_MAX_INLINE_DEFAULT;
}

void resp_argv_free(resp_argv *a)
{
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

/* ======================================================================
 * Parser
 * ==================================================================== */

static int argv_push(resp_argv *a, const char *p, size_t len)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 16;
        resp_arg *v = realloc(a->v, cap * sizeof *v);
        if (!v) return -1;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n].p = p;
    a->v[a->n].len = len;
    a->n++;
    return 0;
}

/* A decimal integer as redis-server's string2ll accepts it: optional '-',
 * no '+', no leading zero (except "0" itself), no overflow. 0 on success. */
static int parse_ll(const char *p, size_t n, long long *out)
{
    if (n == 0 || n > 20) return -1;
    size_t i = 0;
    int neg = 0;
    if (p[0] == '-') {
        neg = 1;
        i = 1;
        if (n == 1) return -1;
    }
    if (p[i] == '0') {
        if (n == 1) { *out = 0; return 0; }
        return -1;
    }
    unsigned long long v = 0;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        unsigned d = (unsigned)(p[i] - '0');
        if (v > (18446744073709551615ull - d) / 10) return -1;
        v = v * 10 + d;
    }
    if (neg) {
        if (v > 9223372036854775808ull) return -1;
        *out = (long long)(0 - v);
    } else {
        if (v > 9223372036854775807ull) return -1;
        *out = (long long)v;
    }
    return 0;
}

/* A count line "<c><digits>\r\n" at buf[pos]: 1 parsed (*val, *next), 0
 * incomplete, -1 malformed, -2 longer than max_inline without a CR. */
static int count_line(const char *buf, size_t len, size_t pos, size_t max_inline, long long *val,
                      size_t *next)
{
    size_t avail = len - pos;
    const char *cr = memchr(buf + pos, '\r', avail);
    if (!cr) return avail > max_inline ? -2 : 0;
    size_t end = (size_t)(cr - buf);
    if (end + 1 >= len) return 0;            /* the '\n' has not arrived */
    if (buf[end + 1] != '\n') return -1;
    if (parse_ll(buf + pos + 1, end - pos - 1, val)) return -1;
    *next = end + 2;
    return 1;
}

static resp_result parse_multibulk(const char *buf, size_t len, const resp_limits *lim,
                                   resp_argv *argv, size_t *used, const char **err)
{
    long long n;
    size_t pos;
    int r = count_line(buf, len, 0, lim->max_inline, &n, &pos);
    if (r == 0) return RESP_MORE;
    if (r == -2) { *err = "ERR Protocol error: too big mbulk count string"; return RESP_EPROTO; }
    if (r < 0 || n > (long long)lim->max_args) {
        *err = "ERR Protocol error: invalid multibulk length";
        return RESP_EPROTO;
    }
    if (n <= 0) { *used = pos; return RESP_OK; }
    for (long long i = 0; i < n; i++) {
        if (pos >= len) return RESP_MORE;
        if (buf[pos] != '$') {
            /* Redis's message names the byte found; a control byte is
             * printed as it is, as redis-server does. */
            snprintf(argv->err, sizeof argv->err, "ERR Protocol error: expected '$', got '%c'",
                     buf[pos]);
            *err = argv->err;
            return RESP_EPROTO;
        }
        long long blen;
        size_t data;
        r = count_line(buf, len, pos, lim->max_inline, &blen, &data);
        if (r == 0) return RESP_MORE;
        if (r == -2) { *err = "ERR Protocol error: too big bulk count string"; return RESP_EPROTO; }
        if (r < 0 || blen < 0 || (unsigned long long)blen > lim->max_bulk) {
            *err = "ERR Protocol error: invalid bulk length";
            return RESP_EPROTO;
        }
        size_t b = (size_t)blen;
        if (len - data < b + 2) {
            *used = data + b + 2;            /* at least this much: lets the caller grow once */
            return RESP_MORE;
        }
        if (buf[data + b] != '\r' || buf[data + b + 1] != '\n') {
            *err = "ERR Protocol error: expected CRLF after bulk string";
            return RESP_EPROTO;
        }
        if (argv_push(argv, buf + data, b)) return RESP_ENOMEM;
        pos = data + b + 2;
    }
    *used = pos;
    return RESP_OK;
}

static int is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }

static resp_result parse_inline(const char *buf, size_t len, const resp_limits *lim,
                                resp_argv *argv, size_t *used, const char **err)
{
    const char *nl = memchr(buf, '\n', len > lim->max_inline + 1 ? lim->max_inline + 1 : len);
    if (!nl) {
        if (len > lim->max_inline) { *err = "ERR Protocol error: too big inline request"; return RESP_EPROTO; }
        return RESP_MORE;
    }
    size_t end = (size_t)(nl - buf);
    size_t i = 0;
    while (i < end) {
        while (i < end && is_blank(buf[i])) i++;
        if (i >= end) break;
        if (buf[i] == '"' || buf[i] == '\'') {
            char q = buf[i++];
            size_t start = i;
            while (i < end && buf[i] != q) i++;
            if (i >= end || (i + 1 < end && !is_blank(buf[i + 1]))) {
                *err = "ERR Protocol error: unbalanced quotes in request";
                return RESP_EPROTO;
            }
            if (argv_push(argv, buf + start, i - start)) return RESP_ENOMEM;
            i++;
        } else {
            size_t start = i;
            while (i < end && !is_blank(buf[i])) i++;
            if (argv_push(argv, buf + start, i - start)) return RESP_ENOMEM;
        }
        if (argv->n > lim->max_args) { *err = "ERR Protocol error: invalid multibulk length"; return RESP_EPROTO; }
    }
    *used = end + 1;
    return RESP_OK;
}

resp_result resp_parse(const char *buf, size_t len, const resp_limits *lim, resp_argv *argv,
                       size_t *used, const char **err)
{
    argv->n = 0;
    *used = 0;
    *err = NULL;
    if (len == 0) return RESP_MORE;
    resp_result r = buf[0] == '*' ? parse_multibulk(buf, len, lim, argv, used, err)
                                  : parse_inline(buf, len, lim, argv, used, err);
    if (r != RESP_OK) argv->n = 0;
    if (r == RESP_MORE && *used <= len) *used = 0;
    return r;
}

/* ======================================================================
 * Reply writer
 * ==================================================================== */

void resp_buf_free(resp_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

int resp_buf_reserve(resp_buf *b, size_t more)
{
    if (b->cap - b->len >= more) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < more) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

int resp_buf_append(resp_buf *b, const void *p, size_t n)
{
    if (resp_buf_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

void resp_buf_consume(resp_buf *b, size_t n)
{
    if (n >= b->len) { b->len = 0; return; }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

/* "<c><v>\r\n" */
static int put_num(resp_buf *b, char c, long long v)
{
    if (resp_buf_reserve(b, 24)) return -1;
    char *o = b->p + b->len;
    *o++ = c;
    char tmp[21];
    int k = 0;
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do { tmp[k++] = (char)('0' + u % 10); u /= 10; } while (u);
    if (v < 0) *o++ = '-';
    while (k) *o++ = tmp[--k];
    *o++ = '\r';
    *o++ = '\n';
    b->len = (size_t)(o - b->p);
    return 0;
}

static int put_line(resp_buf *b, char c, const char *s)
{
    size_t n = strlen(s);
    if (resp_buf_reserve(b, n + 3)) return -1;
    b->p[b->len] = c;
    memcpy(b->p + b->len + 1, s, n);
    memcpy(b->p + b->len + 1 + n, "\r\n", 2);
    b->len += n + 3;
    return 0;
}

int resp_put_simple(resp_buf *b, const char *s) { return put_line(b, '+', s); }
int resp_put_error(resp_buf *b, const char *s) { return put_line(b, '-', s); }
int resp_put_int(resp_buf *b, int64_t v) { return put_num(b, ':', v); }
int resp_put_array(resp_buf *b, size_t n) { return put_num(b, '*', (long long)n); }
int resp_put_nil(resp_buf *b) { return resp_buf_append(b, "$-1\r\n", 5); }

int resp_put_errorf(resp_buf *b, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return put_line(b, '-', msg);
}

int resp_put_bulk(resp_buf *b, const void *p, size_t n)
{
    if (resp_buf_reserve(b, n + 26)) return -1;
    put_num(b, '$', (long long)n);
    if (n) memcpy(b->p + b->len, p, n);
    memcpy(b->p + b->len + n, "\r\n", 2);
    b->len += n + 2;
    return 0;
}

int resp_put_bulk_str(resp_buf *b, const char *s) { return resp_put_bulk(b, s, strlen(s)); }

/* ======================================================================
 * Glob matching
 * ==================================================================== */

/* Position just past a [...] class starting at pat[i] (pat[i] == '['), and
 * whether byte c is in it. An unterminated class runs to the end. */
static size_t class_match(const char *pat, size_t plen, size_t i, unsigned char c, int *hit)
{
    i++;
    int neg = i < plen && pat[i] == '^';
    if (neg) i++;
    int in = 0;
    while (i < plen && pat[i] != ']') {
        if (pat[i] == '\\' && i + 1 < plen) {
            i++;
            if ((unsigned char)pat[i] == c) in = 1;
            i++;
        } else if (i + 2 < plen && pat[i + 1] == '-' && pat[i + 2] != ']') {
            unsigned char lo = (unsigned char)pat[i], hi = (unsigned char)pat[i + 2];
            if (lo > hi) { unsigned char t = lo; lo = hi; hi = t; }
            if (c >= lo && c <= hi) in = 1;
            i += 3;
        } else {
            if ((unsigned char)pat[i] == c) in = 1;
            i++;
        }
    }
    if (i < plen) i++;  /* the ']' */
    *hit = neg ? !in : in;
    return i;
}

int resp_glob_match(const char *pat, size_t plen, const char *str, size_t slen)
{
    size_t p = 0, s = 0;
    size_t star_p = (size_t)-1, star_s = 0;  /* backtrack point of the last '*' */
    while (s < slen) {
        if (p < plen && pat[p] == '*') {
            while (p < plen && pat[p] == '*') p++;
            if (p == plen) return 1;
            star_p = p;
            star_s = s;
            continue;
        }
        if (p < plen) {
            int ok;
            size_t np;
            if (pat[p] == '?') {
                ok = 1;
                np = p + 1;
            } else if (pat[p] == '[') {
                np = class_match(pat, plen, p, (unsigned char)str[s], &ok);
            } else if (pat[p] == '\\' && p + 1 < plen) {
                ok = pat[p + 1] == str[s];
                np = p + 2;
            } else {
                ok = pat[p] == str[s];
                np = p + 1;
            }
            if (ok) {
                p = np;
                s++;
                continue;
            }
        }
        if (star_p == (size_t)-1) return 0;
        p = star_p;
        s = ++star_s;
    }
    while (p < plen && pat[p] == '*') p++;
    return p == plen;
}

size_t resp_glob_prefix(const char *pat, size_t plen)
{
    size_t i = 0;
    while (i < plen && pat[i] != '*' && pat[i] != '?' && pat[i] != '[' && pat[i] != '\\') i++;
    return i;
}
