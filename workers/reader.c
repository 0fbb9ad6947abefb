/*
 * reader.c -- kvault-reader: serves a vault to Redis clients over RESP2
 * (docs/resp.md). Options, listening sockets, the command table and the
 * commands themselves; the event loops are reader_loop_epoll.c and
 * reader_loop_uring.c (reader.h describes a loop round).
 *
 * Commands read through the attach handle (segment, then SQLite) and write
 * through the writer's ring. Replies and error texts follow redis-server 7.0
 * where a command exists in both, so clients and tests can compare them.
 *
 * Layering: calls kv_att_* (shm/) and kv_keys_free (engine/); never SQLite.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "kv_assert.h"
#include "reader.h"

#define READER_VERSION "7.0.0"     /* Redis version whose replies we follow (INFO, HELLO) */
#define SCAN_CURSORS 4096          /* open SCAN cursors kept per reader */
#define SCAN_COUNT_DEFAULT 10      /* Redis's default SCAN COUNT */
#define SCAN_COUNT_MAX 100000
#define MAX_KEY 4096               /* shared-mode key limit (attach.h) */

/* An open SCAN cursor: the last key returned; the cursor number embeds the
 * reader's pid, so a cursor from another reader is refused, not misread. */
typedef struct scan_cursor {
    uint64_t id;
    char *key;
    size_t klen;
} scan_cursor;

struct reader {
    reader_opts o;
    kv_att *att;
    int listen[10];
    int n_listen;
    int tcp_port;                 /* bound TCP port, or -1 */
    char *pass;                   /* requirepass, or NULL */
    size_t pass_len;
    const char *io_name;
    time_t started;
    time_t last_tick;
    uint64_t next_conn_id;
    uint64_t connections;         /* open now */
    uint64_t total_connections;
    uint64_t commands;
    uint64_t rejected;            /* connections closed by a limit */
    resp_argv argv;
    /* writes collected during a round: keys and values copied into `arena`,
     * items[i] hold offsets until the flush turns them into pointers */
    resp_buf arena;
    kv_item *items;
    size_t n_items, cap_items;
    int round_failed;             /* a submission of this round failed */
    rconn *dirty;
    rconn *held;                  /* connections with n_holds > 0 */
    rconn *conns;                 /* every open connection */
    scan_cursor cursors[SCAN_CURSORS];
    uint64_t next_cursor;
};

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { (void)sig; g_stop = 1; }

int reader_stopping(const reader *r) { (void)r; return g_stop != 0; }

const int *reader_listen_fds(const reader *r, int *n)
{
    *n = r->n_listen;
    return r->listen;
}

void reader_set_io_name(reader *r, const char *name) { r->io_name = name; }

size_t reader_recv_hint(const reader *r, const rconn *c)
{
    (void)r;
    size_t want = 16384;
    if (c->need > c->in.len && c->need - c->in.len > want) want = c->need - c->in.len;
    return want;
}

int reader_query_over(const reader *r, const rconn *c) { return c->in.len > r->o.max_query; }

/* ======================================================================
 * Connections
 * ==================================================================== */

rconn *reader_conn_new(reader *r, int fd)
{
    rconn *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return NULL;
    }
    c->fd = fd;
    c->id = ++r->next_conn_id;
    c->authed = r->pass == NULL;
    c->next = r->conns;
    if (r->conns) r->conns->prev = c;
    r->conns = c;
    r->connections++;
    r->total_connections++;
    return c;
}

rconn *reader_conns(reader *r) { return r->conns; }

static void held_unlink(reader *r, rconn *c)
{
    if (c->held_prev) c->held_prev->held_next = c->held_next;
    else r->held = c->held_next;
    if (c->held_next) c->held_next->held_prev = c->held_prev;
    c->held_prev = c->held_next = NULL;
    c->n_holds = 0;
}

void reader_conn_free(reader *r, rconn *c)
{
    KV_ASSERT(c != NULL && r->connections > 0 && !c->dirty);
    if (c->n_holds) held_unlink(r, c);
    if (c->prev) c->prev->next = c->next;
    else r->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    close(c->fd);
    resp_buf_free(&c->in);
    resp_buf_free(&c->out);
    free(c->name);
    free(c);
    r->connections--;
}

void reader_mark_dirty(reader *r, rconn *c)
{
    if (c->dirty) return;
    c->dirty = 1;
    c->next_dirty = r->dirty;
    r->dirty = c;
}

/* ======================================================================
 * Writes of a round
 * ==================================================================== */

static int pend_add(reader *r, const resp_arg *k, const resp_arg *v)
{
    if (r->n_items == r->cap_items) {
        size_t cap = r->cap_items ? r->cap_items * 2 : 256;
        kv_item *it = realloc(r->items, cap * sizeof *it);
        if (!it) return -1;
        r->items = it;
        r->cap_items = cap;
    }
    size_t off = r->arena.len;
    if (resp_buf_append(&r->arena, k->p, k->len) || resp_buf_append(&r->arena, v->p, v->len)) {
        r->arena.len = off;
        return -1;
    }
    /* offsets now, pointers at the flush (the arena may move as it grows) */
    r->items[r->n_items++] = (kv_item){.key = (const void *)(uintptr_t)off, .klen = k->len,
                                       .val = (const void *)(uintptr_t)(off + k->len),
                                       .vlen = v->len};
    return 0;
}

/* Submit the collected pairs (ring, doorbell once, no wait). Reads that
 * follow on this handle wait until they are applied (attach.h). */
static void pend_flush(reader *r)
{
    if (!r->n_items) return;
    for (size_t i = 0; i < r->n_items; i++) {
        r->items[i].key = r->arena.p + (uintptr_t)r->items[i].key;
        r->items[i].val = r->arena.p + (uintptr_t)r->items[i].val;
    }
    kv_status st = kv_att_put_many(r->att, r->items, r->n_items, KV_ATT_ASYNC);
    if (st != KV_OK) {
        fprintf(stderr, "kvault-reader: write failed: %s\n", kv_att_errmsg(r->att));
        r->round_failed = 1;
    }
    r->n_items = 0;
    r->arena.len = 0;
}

/* Hold c's output from `from` on until the writes up to `ticket` are applied. */
static void hold_add(reader *r, rconn *c, size_t from, uint64_t ticket)
{
    KV_ASSERT_INTERNAL(from < c->out.len);
    if (c->n_holds == 2) {          /* later writes: the second hold waits longer */
        c->hold_ticket[1] = ticket;
        return;
    }
    if (c->n_holds == 0) {
        c->held_prev = NULL;
        c->held_next = r->held;
        if (r->held) r->held->held_prev = c;
        r->held = c;
    }
    c->hold_from[c->n_holds] = from;
    c->hold_ticket[c->n_holds++] = ticket;
}

/* Release c's holds whose writes are applied (all = 1: every hold); c goes
 * on the send list when something was released. A dead connection (the loop
 * may still be closing it) only leaves the held list. */
static void hold_release(reader *r, rconn *c, int all)
{
    if (c->dead) {                  /* being closed: nothing more is sent */
        held_unlink(r, c);
        return;
    }
    unsigned k = 0;
    while (k < c->n_holds && (all || kv_att_applied(r->att, c->hold_ticket[k]))) k++;
    if (!k) return;
    if (k == c->n_holds) {
        held_unlink(r, c);
    } else {
        c->hold_from[0] = c->hold_from[1];
        c->hold_ticket[0] = c->hold_ticket[1];
        c->n_holds = 1;
    }
    reader_mark_dirty(r, c);
}

rconn *reader_round_end(reader *r)
{
    pend_flush(r);
    KV_ASSERT_INTERNAL(r->n_items == 0 && r->arena.len == 0);
    uint64_t ticket = kv_att_write_ticket(r->att);
    for (rconn *c = r->dirty; c; c = c->next_dirty) {
        if (!c->wrote) continue;
        c->wrote = 0;
        if (r->round_failed) c->dead = 1;
        else if (!c->dead) hold_add(r, c, c->wrote_from, ticket);
    }
    r->round_failed = 0;
    for (rconn *c = r->held, *next; c; c = next) {
        next = c->held_next;
        hold_release(r, c, 0);
    }
    rconn *list = r->dirty;
    r->dirty = NULL;
    return list;
}

int reader_holding(const reader *r) { return r->held != NULL; }

void reader_wait_writes(reader *r)
{
    kv_status st = kv_att_wait(r->att, 0);
    if (st != KV_OK) fprintf(stderr, "kvault-reader: write not applied: %s\n", kv_att_errmsg(r->att));
    for (rconn *c = r->held, *next; c; c = next) {
        next = c->held_next;
        if (st != KV_OK && !c->dead) {
            held_unlink(r, c);
            c->dead = 1;
            reader_mark_dirty(r, c);
        } else {
            hold_release(r, c, 1);
        }
    }
}

size_t reader_sendable(const rconn *c) { return c->n_holds ? c->hold_from[0] : c->out.len; }

void reader_sent(rconn *c, size_t n)
{
    KV_ASSERT(n <= reader_sendable(c));
    resp_buf_consume(&c->out, n);
    for (unsigned i = 0; i < c->n_holds; i++) c->hold_from[i] -= n;
}

/* ======================================================================
 * Command helpers
 * ==================================================================== */

static int arg_is(const resp_arg *a, const char *s)
{
    size_t n = strlen(s);
    return a->len == n && strncasecmp(a->p, s, n) == 0;
}

/* A whole argument as a signed 64-bit integer (Redis's string2ll rules). */
static int arg_ll(const resp_arg *a, long long *out)
{
    char tmp[24];
    if (a->len == 0 || a->len >= sizeof tmp) return -1;
    memcpy(tmp, a->p, a->len);
    tmp[a->len] = 0;
    if (tmp[0] == '+' || (tmp[0] == '0' && a->len > 1) || (tmp[0] == '-' && tmp[1] == '0')) return -1;
    char *end;
    errno = 0;
    long long v = strtoll(tmp, &end, 10);
    if (errno || *end || end == tmp || tmp[0] == ' ') return -1;
    *out = v;
    return 0;
}

static int key_ok(size_t klen) { return klen >= 1 && klen <= MAX_KEY; }

static void reply_key_len(rconn *c)
{
    resp_put_errorf(&c->out, "ERR key length must be 1..%d bytes", MAX_KEY);
}

/* A failed kv_att_* call: its status and message. */
static void reply_vault_error(reader *r, rconn *c, kv_status st)
{
    if (st == KV_INVALID) {
        reply_key_len(c);
        return;
    }
    const char *m = kv_att_errmsg(r->att);
    resp_put_errorf(&c->out, "ERR vault error %d: %s", (int)st, m && *m ? m : "(no message)");
}

/* Redis's text for an argument echoed in an error: up to `max` bytes, up to
 * the first NUL (redis-server prints C strings), CR/LF as spaces. */
static size_t err_arg(char *dst, size_t cap, const resp_arg *a, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < a->len && i < max && n + 1 < cap; i++) {
        char ch = a->p[i];
        if (ch == 0) break;
        dst[n++] = (ch == '\r' || ch == '\n') ? ' ' : ch;
    }
    dst[n] = 0;
    return n;
}

/* ======================================================================
 * Commands
 * ==================================================================== */

typedef void (*cmd_fn)(reader *r, rconn *c, resp_arg *a, size_t n);

static void cmd_get(reader *r, rconn *c, resp_arg *a, size_t n)
{
    pend_flush(r);
    if (!key_ok(a[1].len)) {
        if (a[1].len == 0) resp_put_nil(&c->out);   /* the empty key is never stored */
        else reply_key_len(c);
        return;
    }
    const void *v;
    size_t vlen;
    kv_status st = kv_att_get(r->att, a[1].p, a[1].len, &v, &vlen);
    if (st == KV_OK) resp_put_bulk(&c->out, v, vlen);
    else if (st == KV_NOTFOUND) resp_put_nil(&c->out);
    else reply_vault_error(r, c, st);
}

static void cmd_mget(reader *r, rconn *c, resp_arg *a, size_t n)
{
    pend_flush(r);
    size_t start = c->out.len;
    resp_put_array(&c->out, n - 1);
    for (size_t i = 1; i < n; i++) {
        if (!key_ok(a[i].len)) {
            resp_put_nil(&c->out);
            continue;
        }
        const void *v;
        size_t vlen;
        kv_status st = kv_att_get(r->att, a[i].p, a[i].len, &v, &vlen);
        if (st == KV_OK) {
            resp_put_bulk(&c->out, v, vlen);
        } else if (st == KV_NOTFOUND) {
            resp_put_nil(&c->out);
        } else {
            c->out.len = start;       /* a failed read fails the whole MGET */
            reply_vault_error(r, c, st);
            return;
        }
    }
}

static void cmd_exists(reader *r, rconn *c, resp_arg *a, size_t n)
{
    pend_flush(r);
    int64_t count = 0;
    for (size_t i = 1; i < n; i++) {
        if (!key_ok(a[i].len)) continue;
        int found;
        kv_status st = kv_att_exists(r->att, a[i].p, a[i].len, &found);
        if (st != KV_OK) {
            reply_vault_error(r, c, st);
            return;
        }
        count += found;
    }
    resp_put_int(&c->out, count);
}

static void cmd_set(reader *r, rconn *c, resp_arg *a, size_t n)
{
    if (n > 3) {
        char opt[64];
        err_arg(opt, sizeof opt, &a[3], 32);
        resp_put_errorf(&c->out, "ERR SET option '%s' is not supported by kvault-reader "
                                 "(no expiry, no conditional sets)", opt);
        return;
    }
    if (!key_ok(a[1].len)) {
        reply_key_len(c);
        return;
    }
    if (pend_add(r, &a[1], &a[2])) {
        resp_put_error(&c->out, "ERR out of memory");
        return;
    }
    c->wrote = 1;
    resp_put_simple(&c->out, "OK");
}

static void cmd_mset(reader *r, rconn *c, resp_arg *a, size_t n)
{
    if (n % 2 == 0) {
        resp_put_error(&c->out, "ERR wrong number of arguments for 'mset' command");
        return;
    }
    for (size_t i = 1; i < n; i += 2)
        if (!key_ok(a[i].len)) {
            reply_key_len(c);
            return;
        }
    for (size_t i = 1; i < n; i += 2)
        if (pend_add(r, &a[i], &a[i + 1])) {
            /* pairs already collected stay: report the failure for the whole
             * round so nothing is acknowledged that was not written */
            r->round_failed = 1;
            c->wrote = 1;
            resp_put_error(&c->out, "ERR out of memory");
            return;
        }
    c->wrote = 1;
    resp_put_simple(&c->out, "OK");
}

static void cmd_del(reader *r, rconn *c, resp_arg *a, size_t n)
{
    pend_flush(r);
    const void **keys = malloc((n - 1) * sizeof *keys);
    size_t *lens = malloc((n - 1) * sizeof *lens);
    if (!keys || !lens) {
        free(keys);
        free(lens);
        resp_put_error(&c->out, "ERR out of memory");
        return;
    }
    size_t k = 0;
    for (size_t i = 1; i < n; i++) {
        if (a[i].len == 0) continue;      /* never stored */
        keys[k] = a[i].p;
        lens[k++] = a[i].len;
    }
    size_t removed = 0;
    kv_status st = kv_att_delete_many(r->att, (const void *const *)keys, lens, k, KV_ATT_ASYNC,
                                      &removed);
    free(keys);
    free(lens);
    if (st != KV_OK) {
        reply_vault_error(r, c, st);
        return;
    }
    if (removed) c->wrote = 1;
    resp_put_int(&c->out, (int64_t)removed);
}

static void cmd_dbsize(reader *r, rconn *c, resp_arg *a, size_t n)
{
    pend_flush(r);
    int64_t count;
    kv_status st = kv_att_count(r->att, &count);
    if (st != KV_OK) reply_vault_error(r, c, st);
    else resp_put_int(&c->out, count);
}

static void cmd_ping(reader *r, rconn *c, resp_arg *a, size_t n)
{
    if (n > 2) resp_put_error(&c->out, "ERR wrong number of arguments for 'ping' command");
    else if (n == 2) resp_put_bulk(&c->out, a[1].p, a[1].len);
    else resp_put_simple(&c->out, "PONG");
}

static void cmd_echo(reader *r, rconn *c, resp_arg *a, size_t n)
{
    resp_put_bulk(&c->out, a[1].p, a[1].len);
}

static void cmd_select(reader *r, rconn *c, resp_arg *a, size_t n)
{
    long long db;
    if (arg_ll(&a[1], &db)) resp_put_error(&c->out, "ERR value is not an integer or out of range");
    else if (db != 0) resp_put_error(&c->out, "ERR DB index is out of range");
    else resp_put_simple(&c->out, "OK");
}

static void cmd_quit(reader *r, rconn *c, resp_arg *a, size_t n)
{
    resp_put_simple(&c->out, "OK");
    c->closing = 1;
}

/* 1 if user (NULL: the default user) and password match the configured
 * password, comparing every byte whatever the first difference. */
static int auth_ok(const reader *r, const resp_arg *user, const resp_arg *pw)
{
    if (user && !arg_is(user, "default")) return 0;
    unsigned diff = pw->len != r->pass_len;
    for (size_t i = 0; i < r->pass_len; i++)
        diff |= (unsigned char)r->pass[i] ^ (unsigned char)(i < pw->len ? pw->p[i] : 0);
    return !diff;
}

static void reply_wrongpass(rconn *c)
{
    resp_put_error(&c->out, "WRONGPASS invalid username-password pair or user is disabled.");
}

static void cmd_auth(reader *r, rconn *c, resp_arg *a, size_t n)
{
    if (n > 3) {
        resp_put_error(&c->out, "ERR syntax error");
        return;
    }
    if (!r->pass) {
        resp_put_error(&c->out, "ERR AUTH <password> called without any password configured "
                                "for the default user. Are you sure your configuration is correct?");
        return;
    }
    if (auth_ok(r, n == 3 ? &a[1] : NULL, &a[n - 1])) {
        c->authed = 1;
        resp_put_simple(&c->out, "OK");
    } else {
        reply_wrongpass(c);
    }
}

static void cmd_client(reader *r, rconn *c, resp_arg *a, size_t n)
{
    char sub[64];
    if (arg_is(&a[1], "setname") && n == 3) {
        for (size_t i = 0; i < a[2].len; i++)
            if (a[2].p[i] < '!' || a[2].p[i] > '~') {
                resp_put_error(&c->out, "ERR Client names cannot contain spaces, newlines or "
                                        "special characters.");
                return;
            }
        free(c->name);
        c->name = NULL;
        if (a[2].len) {
            c->name = strndup(a[2].p, a[2].len);
            if (!c->name) {
                resp_put_error(&c->out, "ERR out of memory");
                return;
            }
        }
        resp_put_simple(&c->out, "OK");
    } else if (arg_is(&a[1], "getname") && n == 2) {
        if (c->name) resp_put_bulk_str(&c->out, c->name);
        else resp_put_nil(&c->out);
    } else if (arg_is(&a[1], "id") && n == 2) {
        resp_put_int(&c->out, (int64_t)c->id);
    } else {
        err_arg(sub, sizeof sub, &a[1], 32);
        resp_put_errorf(&c->out, "ERR unknown subcommand or wrong number of arguments for "
                                 "'%s'. Try CLIENT HELP.", sub);
    }
}

static void cmd_hello(reader *r, rconn *c, resp_arg *a, size_t n)
{
    size_t i = 1;
    if (n > 1) {
        long long ver;
        if (arg_ll(&a[1], &ver)) {
            resp_put_error(&c->out, "ERR Protocol version is not an integer or out of range");
            return;
        }
        if (ver != 2) {
            resp_put_error(&c->out, "NOPROTO unsupported protocol version");
            return;
        }
        i = 2;
    }
    const resp_arg *name = NULL;
    for (; i < n; i++) {
        if (arg_is(&a[i], "auth") && i + 2 < n) {
            /* without a configured password every user/password pair is
             * accepted, as redis-server's default user has nopass */
            if (r->pass && !auth_ok(r, &a[i + 1], &a[i + 2])) {
                reply_wrongpass(c);
                return;
            }
            c->authed = 1;
            i += 2;
        } else if (arg_is(&a[i], "setname") && i + 1 < n) {
            name = &a[++i];
        } else {
            char opt[64];
            err_arg(opt, sizeof opt, &a[i], 32);
            resp_put_errorf(&c->out, "ERR Syntax error in HELLO option '%s'", opt);
            return;
        }
    }
    if (!c->authed) {
        resp_put_error(&c->out, "NOAUTH HELLO must be called with the client already "
                                "authenticated, otherwise the HELLO AUTH <user> <pass> option "
                                "can be used to authenticate the client and select the RESP "
                                "protocol version at the same time");
        return;
    }
    if (name) {
        free(c->name);
        c->name = name->len ? strndup(name->p, name->len) : NULL;
    }
    resp_put_array(&c->out, 14);
    resp_put_bulk_str(&c->out, "server");
    resp_put_bulk_str(&c->out, "redis");
    resp_put_bulk_str(&c->out, "version");
    resp_put_bulk_str(&c->out, READER_VERSION);
    resp_put_bulk_str(&c->out, "proto");
    resp_put_int(&c->out, 2);
    resp_put_bulk_str(&c->out, "id");
    resp_put_int(&c->out, (int64_t)c->id);
    resp_put_bulk_str(&c->out, "mode");
    resp_put_bulk_str(&c->out, "standalone");
    resp_put_bulk_str(&c->out, "role");
    resp_put_bulk_str(&c->out, "master");
    resp_put_bulk_str(&c->out, "modules");
    resp_put_array(&c->out, 0);
}

static void cmd_config(reader *r, rconn *c, resp_arg *a, size_t n)
{
    if (!arg_is(&a[1], "get") || n < 3) {
        char sub[64];
        err_arg(sub, sizeof sub, &a[1], 32);
        resp_put_errorf(&c->out, "ERR unknown subcommand or wrong number of arguments for "
                                 "'%s'. Try CONFIG HELP.", sub);
        return;
    }
    /* What redis-benchmark asks at start; every other parameter: none. */
    static const char *const known[][2] = {{"save", ""}, {"appendonly", "no"},
                                           {"databases", "1"}};
    size_t hits = 0;
    const char *out[2 * 3];
    for (size_t i = 2; i < n; i++)
        for (size_t k = 0; k < 3; k++)
            if (arg_is(&a[i], known[k][0]) && hits < 3) {
                out[2 * hits] = known[k][0];
                out[2 * hits + 1] = known[k][1];
                hits++;
            }
    resp_put_array(&c->out, 2 * hits);
    for (size_t i = 0; i < 2 * hits; i++) resp_put_bulk_str(&c->out, out[i]);
}

/* ---- SCAN ---- */

static scan_cursor *cursor_find(reader *r, uint64_t id)
{
    scan_cursor *s = &r->cursors[id % SCAN_CURSORS];
    return s->id == id && s->key ? s : NULL;
}

static uint64_t cursor_save(reader *r, const uint8_t *key, size_t klen)
{
    uint64_t id = ((uint64_t)(uint32_t)getpid() << 24) | (++r->next_cursor & 0xffffff);
    if (!(id & 0xffffff)) id = ((uint64_t)(uint32_t)getpid() << 24) | (++r->next_cursor & 0xffffff);
    scan_cursor *s = &r->cursors[id % SCAN_CURSORS];
    char *k = malloc(klen ? klen : 1);
    if (!k) return 0;
    memcpy(k, key, klen);
    free(s->key);
    *s = (scan_cursor){.id = id, .key = k, .klen = klen};
    return id;
}

static void cmd_scan(reader *r, rconn *c, resp_arg *a, size_t n)
{
    pend_flush(r);
    char tmp[24];
    if (a[1].len == 0 || a[1].len >= sizeof tmp) goto bad_cursor;
    memcpy(tmp, a[1].p, a[1].len);
    tmp[a[1].len] = 0;
    char *end;
    errno = 0;
    unsigned long long cur = strtoull(tmp, &end, 10);
    if (errno || *end || tmp[0] == '-' || tmp[0] == ' ' || tmp[0] == '+') goto bad_cursor;

    const char *pat = NULL;
    size_t plen = 0;
    long long count = SCAN_COUNT_DEFAULT;
    int type_other = 0;
    for (size_t i = 2; i < n; i += 2) {
        if (i + 1 >= n) {
            resp_put_error(&c->out, "ERR syntax error");
            return;
        }
        if (arg_is(&a[i], "count")) {
            if (arg_ll(&a[i + 1], &count)) {
                resp_put_error(&c->out, "ERR value is not an integer or out of range");
                return;
            }
            if (count < 1) {
                resp_put_error(&c->out, "ERR syntax error");
                return;
            }
        } else if (arg_is(&a[i], "match")) {
            pat = a[i + 1].p;
            plen = a[i + 1].len;
        } else if (arg_is(&a[i], "type")) {
            type_other = !arg_is(&a[i + 1], "string");   /* every value is a string */
        } else {
            resp_put_error(&c->out, "ERR syntax error");
            return;
        }
    }
    if (count > SCAN_COUNT_MAX) count = SCAN_COUNT_MAX;
    const char *after = NULL;
    size_t alen = 0;
    if (cur) {
        scan_cursor *s = cursor_find(r, cur);
        if (!s) {
            resp_put_error(&c->out, "ERR invalid cursor (expired, or issued by another reader)");
            return;
        }
        after = s->key;
        alen = s->klen;
    }
    size_t pre = pat ? resp_glob_prefix(pat, plen) : 0;
    int literal = pat && pre == plen;        /* no wildcard: MATCH names one key */
    kv_keys *ks = NULL;
    kv_status st = kv_att_keys_batch(r->att, pre ? pat : NULL, pre, after, alen, (size_t)count, &ks);
    if (st != KV_OK) {
        reply_vault_error(r, c, st);
        return;
    }
    uint64_t next = 0;
    if (ks->n == (size_t)count && !literal) {
        next = cursor_save(r, ks->data + ks->off[ks->n - 1], ks->off[ks->n] - ks->off[ks->n - 1]);
        if (!next) {
            kv_keys_free(ks);
            resp_put_error(&c->out, "ERR out of memory");
            return;
        }
    }
    size_t matched = 0;
    for (size_t i = 0; i < ks->n; i++) {
        const char *k = (const char *)ks->data + ks->off[i];
        if (!type_other && (!pat || resp_glob_match(pat, plen, k, ks->off[i + 1] - ks->off[i])))
            matched++;
    }
    resp_put_array(&c->out, 2);
    char num[24];
    snprintf(num, sizeof num, "%" PRIu64, next);
    resp_put_bulk_str(&c->out, num);
    resp_put_array(&c->out, matched);
    for (size_t i = 0; i < ks->n; i++) {
        const char *k = (const char *)ks->data + ks->off[i];
        size_t kl = ks->off[i + 1] - ks->off[i];
        if (!type_other && (!pat || resp_glob_match(pat, plen, k, kl))) {
            resp_put_bulk(&c->out, k, kl);
            KV_ASSERT_EXPENSIVE(pre == 0 || (kl >= pre && memcmp(k, pat, pre) == 0));
        }
    }
    kv_keys_free(ks);
    return;
bad_cursor:
    resp_put_error(&c->out, "ERR invalid cursor");
}

/* ---- INFO ---- */

static int section_wanted(resp_arg *a, size_t n, const char *name)
{
    if (n < 2) return 1;
    for (size_t i = 1; i < n; i++)
        if (arg_is(&a[i], name) || arg_is(&a[i], "all") || arg_is(&a[i], "everything") ||
            arg_is(&a[i], "default"))
            return 1;
    return 0;
}

static void cmd_info(reader *r, rconn *c, resp_arg *a, size_t n)
{
    pend_flush(r);
    resp_buf t = {0};
    char line[512];
#define ADD(...) do { int k_ = snprintf(line, sizeof line, __VA_ARGS__); \
                      resp_buf_append(&t, line, (size_t)k_ < sizeof line ? (size_t)k_ : sizeof line - 1); } while (0)
    if (section_wanted(a, n, "server")) {
        ADD("# Server\r\nredis_version:%s\r\nredis_mode:standalone\r\nkvault_server:kvault-reader\r\n",
            READER_VERSION);
        ADD("process_id:%d\r\ntcp_port:%d\r\nuptime_in_seconds:%lld\r\nio_engine:%s\r\n",
            (int)getpid(), r->tcp_port < 0 ? 0 : r->tcp_port,
            (long long)(time(NULL) - r->started), r->io_name ? r->io_name : "none");
        ADD("vault_db:%s\r\nvault_table:%s\r\n\r\n", r->o.db, r->o.table);
    }
    if (section_wanted(a, n, "clients"))
        ADD("# Clients\r\nconnected_clients:%" PRIu64 "\r\n\r\n", r->connections);
    if (section_wanted(a, n, "stats"))
        ADD("# Stats\r\ntotal_connections_received:%" PRIu64 "\r\ntotal_commands_processed:%" PRIu64
            "\r\nrejected_connections:%" PRIu64 "\r\n\r\n", r->total_connections, r->commands,
            r->rejected);
    if (section_wanted(a, n, "vault")) {
        char st[4096];
        ADD("# Vault\r\n");
        if (kv_att_status(r->att, st, sizeof st) == KV_OK) {
            for (char *s = st, *nl; *s; s = nl ? nl + 1 : s + strlen(s)) {
                nl = strchr(s, '\n');
                size_t len = nl ? (size_t)(nl - s) : strlen(s);
                char *eq = memchr(s, '=', len);
                if (!eq) continue;
                ADD("vault_%.*s:%.*s\r\n", (int)(eq - s), s, (int)(len - (size_t)(eq - s) - 1), eq + 1);
            }
        }
        uint64_t hits, misses;
        kv_att_counters(r->att, &hits, &misses);
        ADD("reader_hits:%" PRIu64 "\r\nreader_misses:%" PRIu64 "\r\n\r\n", hits, misses);
    }
    if (section_wanted(a, n, "keyspace")) {
        int64_t keys = 0;
        ADD("# Keyspace\r\n");
        if (kv_att_count(r->att, &keys) == KV_OK && keys > 0)
            ADD("db0:keys=%" PRId64 ",expires=0,avg_ttl=0\r\n", keys);
    }
#undef ADD
    /* Redis ends the text without the last blank line's CRLF pair */
    while (t.len >= 2 && t.p[t.len - 2] == '\r' && t.p[t.len - 1] == '\n' && t.len >= 4 &&
           t.p[t.len - 4] == '\r' && t.p[t.len - 3] == '\n')
        t.len -= 2;
    resp_put_bulk(&c->out, t.p, t.len);
    resp_buf_free(&t);
}

/* ---- COMMAND ---- */

static void cmd_command(reader *r, rconn *c, resp_arg *a, size_t n);

/* The command table: lower-case name, Redis arity (n > 0: exactly n
 * arguments with the name; n < 0: at least -n), flags for COMMAND, key
 * positions, whether it needs AUTH first. */
typedef struct command {
    const char *name;
    int arity;
    const char *flags;      /* space separated, as COMMAND lists them */
    int first_key, last_key, step;
    int no_auth;
    cmd_fn fn;
} command;

static const command commands[] = {
    {"get", 2, "readonly fast", 1, 1, 1, 0, cmd_get},
    {"set", -3, "write denyoom", 1, 1, 1, 0, cmd_set},
    {"del", -2, "write", 1, -1, 1, 0, cmd_del},
    {"exists", -2, "readonly fast", 1, -1, 1, 0, cmd_exists},
    {"mget", -2, "readonly fast", 1, -1, 1, 0, cmd_mget},
    {"mset", -3, "write denyoom", 1, -1, 2, 0, cmd_mset},
    {"scan", -2, "readonly", 0, 0, 0, 0, cmd_scan},
    {"dbsize", 1, "readonly fast", 0, 0, 0, 0, cmd_dbsize},
    {"ping", -1, "fast", 0, 0, 0, 0, cmd_ping},
    {"echo", 2, "fast", 0, 0, 0, 0, cmd_echo},
    {"info", -1, "loading stale", 0, 0, 0, 0, cmd_info},
    {"select", 2, "loading stale fast", 0, 0, 0, 0, cmd_select},
    {"quit", -1, "noscript loading stale fast no_auth allow_busy", 0, 0, 0, 1, cmd_quit},
    {"client", -2, "noscript loading stale", 0, 0, 0, 0, cmd_client},
    {"hello", -1, "noscript loading stale fast no_auth allow_busy", 0, 0, 0, 1, cmd_hello},
    {"auth", -2, "noscript loading stale fast no_auth allow_busy", 0, 0, 0, 1, cmd_auth},
    {"command", -1, "loading stale", 0, 0, 0, 0, cmd_command},
    {"config", -2, "admin noscript loading stale", 0, 0, 0, 0, cmd_config},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static const command *lookup(const resp_arg *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (arg_is(name, commands[i].name)) return &commands[i];
    return NULL;
}

static void put_command_info(rconn *c, const command *k)
{
    resp_put_array(&c->out, 6);
    resp_put_bulk_str(&c->out, k->name);
    resp_put_int(&c->out, k->arity);
    size_t nf = 0;
    for (const char *f = k->flags; *f; f++)
        if (f == k->flags || f[-1] == ' ') nf++;
    resp_put_array(&c->out, nf);
    for (const char *f = k->flags; *f;) {
        const char *sp = strchr(f, ' ');
        size_t len = sp ? (size_t)(sp - f) : strlen(f);
        resp_buf_append(&c->out, "+", 1);   /* status string "+flag" */
        resp_buf_append(&c->out, f, len);
        resp_buf_append(&c->out, "\r\n", 2);
        f += len + (sp ? 1 : 0);
    }
    resp_put_int(&c->out, k->first_key);
    resp_put_int(&c->out, k->last_key);
    resp_put_int(&c->out, k->step);
}

static void cmd_command(reader *r, rconn *c, resp_arg *a, size_t n)
{
    if (n == 1) {
        resp_put_array(&c->out, N_COMMANDS);
        for (size_t i = 0; i < N_COMMANDS; i++) put_command_info(c, &commands[i]);
    } else if (arg_is(&a[1], "count") && n == 2) {
        resp_put_int(&c->out, (int64_t)N_COMMANDS);
    } else if (arg_is(&a[1], "info")) {
        resp_put_array(&c->out, n - 2);
        for (size_t i = 2; i < n; i++) {
            const command *k = lookup(&a[i]);
            if (k) put_command_info(c, k);
            else resp_put_nil(&c->out);
        }
    } else if (arg_is(&a[1], "docs")) {
        resp_put_array(&c->out, 0);      /* no documentation: clients fall back to none */
    } else {
        char sub[64];
        err_arg(sub, sizeof sub, &a[1], 32);
        resp_put_errorf(&c->out, "ERR unknown subcommand or wrong number of arguments for "
                                 "'%s'. Try COMMAND HELP.", sub);
    }
}

/* ======================================================================
 * Dispatch
 * ==================================================================== */

static void reply_unknown(rconn *c, resp_arg *a, size_t n)
{
    /* redis-server 7.0 (server.c, processCommand): the name up to 128 bytes,
     * then each argument quoted and followed by a space while the list is
     * under 128 bytes, each cut to what is left of the 128 */
    char name[160], args[512], one[160];
    err_arg(name, sizeof name, &a[0], 128);
    size_t al = 0;
    args[0] = 0;
    for (size_t i = 1; i < n && al < 128; i++) {
        err_arg(one, sizeof one, &a[i], 128 - al);
        al += (size_t)snprintf(args + al, sizeof args - al, "'%s' ", one);
    }
    resp_put_errorf(&c->out, "ERR unknown command '%s', with args beginning with: %s", name, args);
}

static void dispatch(reader *r, rconn *c, resp_arg *a, size_t n)
{
    KV_ASSERT(n >= 1 && !c->closing && !c->dead);
    r->commands++;
    const command *k = lookup(&a[0]);
    if (!k) {
        reply_unknown(c, a, n);
        return;
    }
    if ((k->arity > 0 && (int)n != k->arity) || (k->arity < 0 && (int)n < -k->arity)) {
        resp_put_errorf(&c->out, "ERR wrong number of arguments for '%s' command", k->name);
        return;
    }
    if (!c->authed && !k->no_auth) {
        resp_put_error(&c->out, "NOAUTH Authentication required.");
        return;
    }
    size_t before = c->out.len;
    int wrote = c->wrote;
    k->fn(r, c, a, n);
    if (!wrote && c->wrote) c->wrote_from = before;   /* replies from here on wait for the round's writes */
}

void reader_conn_process(reader *r, rconn *c)
{
    size_t pos = 0;
    c->stalled = 0;
    c->need = 0;
    while (pos < c->in.len && !c->closing && !c->dead) {
        if (c->out.len > READER_OUT_HIGH) {
            c->stalled = 1;
            break;
        }
        size_t used;
        const char *err;
        resp_result res = resp_parse(c->in.p + pos, c->in.len - pos, &r->o.lim, &r->argv, &used, &err);
        if (res == RESP_MORE) {
            c->need = used;
            break;
        }
        if (res == RESP_EPROTO || res == RESP_ENOMEM) {
            resp_put_error(&c->out, res == RESP_ENOMEM ? "ERR out of memory" : err);
            c->closing = 1;
            r->rejected++;
            break;
        }
        pos += used;
        if (r->argv.n) dispatch(r, c, r->argv.v, r->argv.n);
    }
    resp_buf_consume(&c->in, pos);
    if (c->out.len || c->closing || c->eof || c->dead) reader_mark_dirty(r, c);
}

/* ======================================================================
 * Stats file, options, sockets, main
 * ==================================================================== */

void reader_tick(reader *r)
{
    time_t now = time(NULL);
    if (now == r->last_tick || !r->o.stats_file) return;
    r->last_tick = now;
    char tmp[4096 + 16];
    snprintf(tmp, sizeof tmp, "%s.tmp", r->o.stats_file);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    fprintf(f, "pid=%d\nio=%s\nport=%d\nconnections=%" PRIu64 "\ntotal_connections=%" PRIu64
               "\ncommands=%" PRIu64 "\nrejected=%" PRIu64 "\nupdated=%lld\n",
            (int)getpid(), r->io_name ? r->io_name : "none", r->tcp_port, r->connections,
            r->total_connections, r->commands, r->rejected, (long long)now);
    if (fclose(f) == 0) rename(tmp, r->o.stats_file);
}

static void usage(FILE *f)
{
    fprintf(f,
        "usage: kvault-reader [options] DB\n"
        "Serves the vault DB (attached to its kvault-writer) to Redis clients (RESP2).\n"
        "  --port P               TCP port on --bind (SO_REUSEPORT: readers share it; 0: any)\n"
        "  --bind ADDR            IPv4 address to listen on (default 127.0.0.1)\n"
        "  --unix PATH            unix socket to create, mode 0600\n"
        "  --listen-fd FD         an inherited listening socket (repeatable)\n"
        "  --io auto|epoll|uring  event loop (default auto: io_uring when the kernel has\n"
        "                         multishot accept/receive, else epoll)\n"
        "  --requirepass-file F   clients must AUTH with the file's first line\n"
        "  --stats-file F         counters rewritten once a second\n"
        "  --table NAME           key-value table (default kv)\n"
        "  --max-bulk SIZE        longest bulk string (default 64M)\n"
        "  --max-args N           most arguments of a request (default 1048576)\n"
        "  --max-inline SIZE      longest inline request (default 64K)\n"
        "  --max-query SIZE       most buffered input of a connection (default 128M)\n");
}

static int parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-') return -1;
    switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    default: break;
    }
    if (*end || v == 0) return -1;
    *out = (size_t)v;
    return 0;
}

static int read_pass(reader *r, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "kvault-reader: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[1024];
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
    size_t n = strcspn(line, "\r\n");
    line[n] = 0;
    if (n == 0) {
        fprintf(stderr, "kvault-reader: %s: empty password\n", path);
        return -1;
    }
    r->pass = strdup(line);
    r->pass_len = n;
    return r->pass ? 0 : -1;
}

static int listen_tcp(reader *r)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one)) goto fail;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)r->o.port)};
    if (inet_pton(AF_INET, r->o.bind, &sa.sin_addr) != 1) {
        errno = EINVAL;
        goto fail;
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) || listen(fd, 511)) goto fail;
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    r->tcp_port = ntohs(sa.sin_port);
    r->listen[r->n_listen++] = fd;
    return 0;
fail:
    fprintf(stderr, "kvault-reader: listen on %s:%d: %s\n", r->o.bind, r->o.port, strerror(errno));
    close(fd);
    return -1;
}

static int listen_unix(reader *r)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(r->o.unix_path) >= sizeof sa.sun_path) {
        fprintf(stderr, "kvault-reader: unix socket path too long\n");
        return -1;
    }
    strcpy(sa.sun_path, r->o.unix_path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct stat stb;
    if (lstat(r->o.unix_path, &stb) == 0 && S_ISSOCK(stb.st_mode)) unlink(r->o.unix_path);
    mode_t old = umask(0177);   /* created 0600: no window with wider rights */
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc || listen(fd, 511)) {
        fprintf(stderr, "kvault-reader: listen on %s: %s\n", r->o.unix_path, strerror(errno));
        close(fd);
        return -1;
    }
    r->listen[r->n_listen++] = fd;
    return 0;
}

int main(int argc, char **argv)
{
    static reader rd;
    reader *r = &rd;
    reader_opts *o = &r->o;
    o->table = "kv";
    o->bind = "127.0.0.1";
    o->port = -1;
    o->io = "auto";
    o->max_query = 128u << 20;
    resp_limits_default(&o->lim);
    r->tcp_port = -1;

    enum { O_PORT = 1, O_BIND, O_UNIX, O_LFD, O_IO, O_PASS, O_STATS, O_TABLE, O_BULK, O_ARGS,
           O_INLINE, O_QUERY, O_HELP };
    static const struct option lo[] = {
        {"port", 1, 0, O_PORT}, {"bind", 1, 0, O_BIND}, {"unix", 1, 0, O_UNIX},
        {"listen-fd", 1, 0, O_LFD}, {"io", 1, 0, O_IO}, {"requirepass-file", 1, 0, O_PASS},
        {"stats-file", 1, 0, O_STATS}, {"table", 1, 0, O_TABLE}, {"max-bulk", 1, 0, O_BULK},
        {"max-args", 1, 0, O_ARGS}, {"max-inline", 1, 0, O_INLINE}, {"max-query", 1, 0, O_QUERY},
        {"help", 0, 0, O_HELP}, {0, 0, 0, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        size_t v;
        switch (opt) {
        case O_PORT:
            o->port = atoi(optarg);
            if (o->port < 0 || o->port > 65535) goto bad;
            break;
        case O_BIND: o->bind = optarg; break;
        case O_UNIX: o->unix_path = optarg; break;
        case O_LFD:
            if (o->n_listen_fds == 8) goto bad;
            o->listen_fds[o->n_listen_fds++] = atoi(optarg);
            break;
        case O_IO:
            if (strcmp(optarg, "auto") && strcmp(optarg, "epoll") && strcmp(optarg, "uring")) goto bad;
            o->io = optarg;
            break;
        case O_PASS: o->pass_file = optarg; break;
        case O_STATS: o->stats_file = optarg; break;
        case O_TABLE: o->table = optarg; break;
        case O_BULK: if (parse_size(optarg, &v)) goto bad; o->lim.max_bulk = v; break;
        case O_ARGS: if (parse_size(optarg, &v)) goto bad; o->lim.max_args = v; break;
        case O_INLINE: if (parse_size(optarg, &v)) goto bad; o->lim.max_inline = v; break;
        case O_QUERY: if (parse_size(optarg, &v)) goto bad; o->max_query = v; break;
        case 'h': case O_HELP: usage(stdout); return 0;
        default: goto bad;
        }
    }
    if (optind != argc - 1) goto bad;
    o->db = argv[optind];
    if (o->port < 0 && !o->unix_path && !o->n_listen_fds) {
        fprintf(stderr, "kvault-reader: give --port, --unix or --listen-fd\n");
        return 2;
    }
    if (o->pass_file && read_pass(r, o->pass_file)) return 2;

    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    kv_attach_opts ao;
    kv_attach_opts_default(&ao);
    ao.table = o->table;
    char err[512];
    kv_status st = kv_attach(o->db, &ao, &r->att, err, sizeof err);
    if (st != KV_OK) {
        fprintf(stderr, "kvault-reader: attach %s: %s\n", o->db, err);
        return 1;
    }
    for (int i = 0; i < o->n_listen_fds; i++) {
        int fd = o->listen_fds[i];
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        fcntl(fd, F_SETFD, FD_CLOEXEC);
        r->listen[r->n_listen++] = fd;
    }
    if (o->port >= 0 && listen_tcp(r)) return 1;
    if (o->unix_path && listen_unix(r)) return 1;
    r->started = time(NULL);
    reader_tick(r);   /* the stats file exists from the start */

    int use_uring = strcmp(o->io, "uring") == 0 ||
                    (strcmp(o->io, "auto") == 0 && reader_uring_supported());
    if (strcmp(o->io, "uring") == 0 && !reader_uring_supported()) {
        fprintf(stderr, "kvault-reader: io_uring with multishot accept/receive is not available\n");
        return 1;
    }
    printf("ready port=%d pid=%d io=%s\n", r->tcp_port, (int)getpid(), use_uring ? "uring" : "epoll");
    fflush(stdout);
    int rc = use_uring ? reader_loop_uring(r) : -1;
    if (rc < 0) rc = reader_loop_epoll(r);

    if (o->unix_path) unlink(o->unix_path);
    if (o->stats_file) unlink(o->stats_file);
    for (size_t i = 0; i < SCAN_CURSORS; i++) free(r->cursors[i].key);
    resp_argv_free(&r->argv);
    resp_buf_free(&r->arena);
    free(r->items);
    free(r->pass);
    kv_attach_close(r->att);
    return rc < 0 ? 1 : 0;
bad:
    usage(stderr);
    return 2;
}
