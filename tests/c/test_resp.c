/* test_resp.c - kvault-reader's RESP2 parser, reply writer and glob matcher
 * (workers/resp.c): every request form, requests cut at every byte (each
 * prefix in its own exactly-sized allocation, so a sanitizer build catches
 * any read past the buffer), limits, malformed input, replies, globs. */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "resp.h"

static resp_limits lim_default(void)
{
    resp_limits l;
    resp_limits_default(&l);
    return l;
}

/* Limits, argument vector and outputs of one test's parses. */
typedef struct pctx {
    resp_limits l;
    resp_argv a;
    size_t used;
    const char *err;
} pctx;

static pctx pctx_new(void) { return (pctx){.l = lim_default()}; }

static resp_result pctx_parse(pctx *c, const char *req, size_t len)
{
    return resp_parse(req, len, &c->l, &c->a, &c->used, &c->err);
}

/* Parse req; expect an empty request of `used` bytes. */
static void expect_empty(pctx *c, const char *req, size_t len)
{
    cr_assert(eq(int, pctx_parse(c, req, len), RESP_OK), "%s", req);
    cr_assert(eq(sz, c->a.n, 0));
    cr_assert(eq(sz, c->used, len));
}

/* Parse a copy of buf[0, len) held in an allocation of exactly len bytes. */
static resp_result parse_exact(const char *buf, size_t len, const resp_limits *l, resp_argv *a,
                               size_t *used, const char **err, char **copy)
{
    *copy = malloc(len ? len : 1);
    memcpy(*copy, buf, len);
    return resp_parse(*copy, len, l, a, used, err);
}

static void expect_args(const resp_argv *a, size_t n, const char *const *want)
{
    cr_assert(eq(sz, a->n, n));
    for (size_t i = 0; i < n; i++) {
        cr_assert(eq(sz, a->v[i].len, strlen(want[i])), "arg %zu", i);
        cr_assert(eq(int, memcmp(a->v[i].p, want[i], a->v[i].len), 0), "arg %zu", i);
    }
}

static void expect_one(const char *req, size_t len, size_t n, const char *const *want)
{
    resp_limits l = lim_default();
    resp_argv a = {0};
    size_t used;
    const char *err;
    char *copy;
    cr_assert(eq(int, parse_exact(req, len, &l, &a, &used, &err, &copy), RESP_OK), "%s", req);
    cr_assert(eq(sz, used, len));
    expect_args(&a, n, want);
    free(copy);
    resp_argv_free(&a);
}

Test(resp, multibulk_forms)
{
    const char *set[] = {"SET", "key", "v\r\nx"};
    expect_one("*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$4\r\nv\r\nx\r\n", 32, 3, set);
    const char *empty_arg[] = {"GET", ""};
    expect_one("*2\r\n$3\r\nGET\r\n$0\r\n\r\n", 19, 2, empty_arg);
    const char *ping[] = {"PING"};
    expect_one("*1\r\n$4\r\nPING\r\n", 14, 1, ping);
}

Test(resp, inline_forms)
{
    const char *w[] = {"SET", "a", "b c", "it's"};
    const char *r = "SET  a \"b c\"\t'it''s'\r\n";
    /* 'it''s' is not Redis syntax: a quote right after a closing quote */
    pctx c = pctx_new();
    cr_assert(eq(int, pctx_parse(&c, r, strlen(r)), RESP_EPROTO));
    cr_assert(eq(str, (char *)c.err, "ERR Protocol error: unbalanced quotes in request"));
    const char *ok = "SET  a \"b c\"\t\"it's\"\r\n";
    expect_one(ok, strlen(ok), 4, w);
    const char *lf[] = {"PING"};
    expect_one("PING\n", 5, 1, lf);
    expect_empty(&c, "  \r\n", 4);   /* a blank line is an empty request */
    resp_argv_free(&c.a);
}

Test(resp, empty_and_null_multibulk_are_skipped)
{
    pctx c = pctx_new();
    expect_empty(&c, "*0\r\n", 4);
    expect_empty(&c, "*-1\r\n", 5);
    resp_argv_free(&c.a);
}

/* A stream of requests, cut at every byte: every prefix shorter than the
 * first request is RESP_MORE, the exact prefix parses, and walking the whole
 * stream request by request yields every request. */
Test(resp, split_at_every_byte)
{
    static const char stream[] =
        "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n"
        "GET k\r\n"
        "*2\r\n$4\r\nECHO\r\n$12\r\n0123456789ab\r\n"
        "*0\r\n"
        "*1\r\n$4\r\nPING\r\n";
    size_t total = sizeof stream - 1;
    resp_limits l = lim_default();
    resp_argv a = {0};
    size_t pos = 0, requests = 0;
    while (pos < total) {
        size_t used = 0, need = 0;
        const char *err;
        char *copy;
        /* find the first prefix that parses; all shorter ones must ask for more */
        for (size_t n = 0; n <= total - pos; n++) {
            resp_result r = parse_exact(stream + pos, n, &l, &a, &used, &err, &copy);
            free(copy);
            if (r == RESP_OK) {
                need = n;
                break;
            }
            cr_assert(eq(int, r, RESP_MORE), "at %zu+%zu", pos, n);
        }
        cr_assert(need > 0 && used == need, "request at %zu never completed", pos);
        pos += used;
        requests++;
    }
    cr_assert(eq(sz, requests, 5));
    resp_argv_free(&a);
}

Test(resp, more_reports_the_bytes_a_bulk_needs)
{
    pctx c = pctx_new();
    const char *r = "*2\r\n$3\r\nSET\r\n$100000\r\nabc";
    cr_assert(eq(int, pctx_parse(&c, r, strlen(r)), RESP_MORE));
    cr_assert(eq(sz, c.used, 4 + 9 + 9 + 100000 + 2));
    resp_argv_free(&c.a);
}

static void expect_error(const char *req, size_t len, const resp_limits *l, const char *msg)
{
    resp_argv a = {0};
    size_t used;
    const char *err = NULL;
    char *copy;
    cr_assert(eq(int, parse_exact(req, len, l, &a, &used, &err, &copy), RESP_EPROTO), "%.*s",
              (int)(len > 40 ? 40 : len), req);
    cr_assert(eq(str, (char *)err, (char *)msg));
    free(copy);
    resp_argv_free(&a);
}

Test(resp, limits)
{
    resp_limits l = {.max_bulk = 10, .max_args = 3, .max_inline = 16};
    expect_error("*1\r\n$11\r\n", 9, &l, "ERR Protocol error: invalid bulk length");
    expect_error("*4\r\n", 4, &l, "ERR Protocol error: invalid multibulk length");
    expect_error("GET aaaaaaaaaaaaaaaaaaaaaaaaa", 29, &l, "ERR Protocol error: too big inline request");
    expect_error("a b c d\r\n", 9, &l, "ERR Protocol error: invalid multibulk length");
    expect_error("*11111111111111111111", 21, &l, "ERR Protocol error: too big mbulk count string");
    expect_error("*1\r\n$11111111111111111111", 25, &l, "ERR Protocol error: too big bulk count string");
    /* at the limits: accepted */
    const char *ok[] = {"0123456789", "b", "c"};
    pctx c = {.l = l};
    const char *r = "*3\r\n$10\r\n0123456789\r\n$1\r\nb\r\n$1\r\nc\r\n";
    cr_assert(eq(int, pctx_parse(&c, r, strlen(r)), RESP_OK));
    expect_args(&c.a, 3, ok);
    resp_argv_free(&c.a);
}

Test(resp, malformed)
{
    resp_limits l = lim_default();
    expect_error("*x\r\n", 4, &l, "ERR Protocol error: invalid multibulk length");
    expect_error("*01\r\n", 5, &l, "ERR Protocol error: invalid multibulk length");
    expect_error("*+1\r\n", 5, &l, "ERR Protocol error: invalid multibulk length");
    expect_error("*1\r\r", 4, &l, "ERR Protocol error: invalid multibulk length");
    expect_error("*1\r\n:1\r\n", 8, &l, "ERR Protocol error: expected '$', got ':'");
    expect_error("*1\r\n$-1\r\n", 9, &l, "ERR Protocol error: invalid bulk length");
    expect_error("*1\r\n$\r\n", 7, &l, "ERR Protocol error: invalid bulk length");
    expect_error("*1\r\n$99999999999999999999999\r\n", 30, &l,
                 "ERR Protocol error: invalid bulk length");
    expect_error("*1\r\n$3\r\nGETxy", 13, &l, "ERR Protocol error: expected CRLF after bulk string");
    expect_error("GET \"a\r\n", 8, &l, "ERR Protocol error: unbalanced quotes in request");
    expect_error("*9223372036854775808\r\n", 22, &l, "ERR Protocol error: invalid multibulk length");
}

Test(resp, many_arguments_grow_argv)
{
    resp_limits l = lim_default();
    resp_buf b = {0};
    resp_put_array(&b, 5000);
    for (int i = 0; i < 5000; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%d", i);
        resp_put_bulk_str(&b, k);
    }
    pctx c = {.l = l};
    cr_assert(eq(int, pctx_parse(&c, b.p, b.len), RESP_OK));
    cr_assert(eq(sz, c.a.n, 5000));
    cr_assert(eq(sz, c.used, b.len));
    cr_assert(eq(int, memcmp(c.a.v[4999].p, "k4999", 5), 0));
    resp_argv_free(&c.a);
    resp_buf_free(&b);
}

Test(resp, replies)
{
    resp_buf b = {0};
    resp_put_simple(&b, "OK");
    resp_put_error(&b, "ERR x");
    resp_put_int(&b, -9223372036854775807LL - 1);
    resp_put_int(&b, 0);
    resp_put_bulk(&b, "a\0b", 3);
    resp_put_bulk(&b, "", 0);
    resp_put_nil(&b);
    resp_put_array(&b, 2);
    resp_put_errorf(&b, "ERR %s %d", "n", 5);
    const char want[] = "+OK\r\n-ERR x\r\n:-9223372036854775808\r\n:0\r\n$3\r\na\0b\r\n$0\r\n\r\n"
                        "$-1\r\n*2\r\n-ERR n 5\r\n";
    cr_assert(eq(sz, b.len, sizeof want - 1));
    cr_assert(eq(int, memcmp(b.p, want, b.len), 0));
    resp_buf_consume(&b, 5);
    cr_assert(eq(int, memcmp(b.p, "-ERR x", 6), 0));
    resp_buf_free(&b);
}

static int gm(const char *p, const char *s) { return resp_glob_match(p, strlen(p), s, strlen(s)); }

Test(resp, glob)
{
    cr_assert(gm("*", "") != 0);
    cr_assert(gm("*", "abc") != 0);
    cr_assert(gm("a*", "a") != 0);
    cr_assert(gm("a*", "abc") != 0);
    cr_assert(not(gm("a*", "ba")));
    cr_assert(gm("*b*", "abc") != 0);
    cr_assert(gm("a*c", "abbbc") != 0);
    cr_assert(not(gm("a*c", "abbb")));
    cr_assert(gm("a?c", "abc") != 0);
    cr_assert(not(gm("a?c", "ac")));
    cr_assert(gm("h[ae]llo", "hallo") != 0);
    cr_assert(not(gm("h[ae]llo", "hillo")));
    cr_assert(gm("h[^e]llo", "hallo") != 0);
    cr_assert(not(gm("h[^e]llo", "hello")));
    cr_assert(gm("h[a-b]llo", "hbllo") != 0);
    cr_assert(gm("h[b-a]llo", "hallo") != 0);
    cr_assert(not(gm("h[a-b]llo", "hcllo")));
    cr_assert(gm("a\\*b", "a*b") != 0);
    cr_assert(not(gm("a\\*b", "axb")));
    cr_assert(gm("k[0-4]", "k3") != 0);
    cr_assert(gm("**a**b**", "xxaxxbxx") != 0);
    cr_assert(not(gm("", "a")));
    cr_assert(gm("", "") != 0);
    cr_assert(resp_glob_match("a\0*", 3, "a\0zz", 4));
    cr_assert(eq(sz, resp_glob_prefix("user:*", 6), 5));
    cr_assert(eq(sz, resp_glob_prefix("abc", 3), 3));
    cr_assert(eq(sz, resp_glob_prefix("a[bc]*", 6), 1));
    cr_assert(eq(sz, resp_glob_prefix("a\\*", 3), 1));
}
