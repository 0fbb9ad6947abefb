/*
 * exec.c -- the client side of KVSHM_MSG_EXEC (kvshm/attach.h, kv_exec_*):
 * one table operation to the writer serving the file, one reply after its
 * commit.
 *
 * The handle holds a connection to the writer's socket and the request bell
 * of its slot file (kvshm_bell: the writer polls its socket when the request
 * count moved). It connects at the first call and again when the writer
 * changed: a hung-up socket or a registry that names another generation
 * ends the connection, and the call goes to the writer that serves the file
 * then, or reports that none does.
 *
 * Exactly once: every operation travels with the handle's random token and
 * its number (struct kvshm_exec_id). A re-send of the same call to the next
 * writer keeps both, and so does the next call while the caller has not
 * settled an operation whose writer died before replying (kv_exec_settle):
 * the writer that finds the operation recorded as applied replies with the
 * recorded result instead of applying it again (kvault/oprec.h). A call
 * with other bytes than the unsettled operation is a new operation all the
 * same (a caller that gave up on the unsettled one): it must not be taken
 * for that one's re-send and answered with its result.
 *
 * Pipelined operations (kv_exec_post): sent without waiting, kept with
 * their numbers until their replies arrive in order; the next writer gets
 * the unanswered ones again (it answers those applied from the record:
 * any number up to the recorded one), and with no writer left the caller
 * settles them itself (kv_exec_posted_op). A reply of KV_BUSY (the writer
 * could not begin the group: nothing applied) sends the same bytes again
 * as a new operation.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "internal.h"
#include "kvshm/attach.h"
#include "kvshm/kvshm.h"
#include "kvshm/ops.h"
#include "kvshm/proto.h"

/* How long one wait for a reply lasts before the registry is looked at. */
#define REPLY_STEP_MS 200
/* Sends of one call: the first, and one per writer change. */
#define EXEC_ATTEMPTS 4
/* How long a call waits for a writer that holds the registry but takes no
 * connection yet (one that took over from a dead writer and replays its
 * records first, as the attached handle waits for it), and the poll step. */
#define START_WAIT_MS 30000
#define START_POLL_MS 20

/* A pipelined operation kept until its reply: its bytes, for a re-send
 * to the next writer or the caller's own fallback. */
typedef struct posted {
    uint8_t *op;
    size_t len;
} posted;

/* Most pipelined operations without a reply: the writer drops a reply the
 * client's socket has no room for (MSG_DONTWAIT), and this many small
 * replies fit the default receive buffer many times over. */
#define POST_WINDOW 64

struct kv_exec {
    char *reg_path;             /* <db>-kvault */
    int sock;                   /* connection to the writer, -1 when none */
    uint64_t generation;        /* of that writer */
    kvshm_bell *bell;
    unsigned fork_gen;          /* kvshmi_fork_generation() when connected */
    int memfd;                  /* operations and results above one packet, -1 until used */
    uint8_t *res;               /* the last result */
    size_t res_cap;
    struct kvshm_exec_id id;    /* token, and the number of the current operation */
    unsigned id_fork_gen;       /* kvshmi_fork_generation() when the token was drawn */
    int unsettled;              /* id.x_seq reached a writer that gave no reply */
    uint64_t unsettled_hash;    /* XXH3-64 of that operation's bytes */
    char err[512];
    /* pipelined operations (kv_exec_post): sent, reply not read yet, oldest
     * first, numbered id.x_seq - nout + 1 .. id.x_seq */
    posted *out;
    size_t nout, out_cap;
    kv_status post_st;          /* the first failure a reply reported, or KV_OK */
    uint64_t post_seq;          /* the number of the operation that failed so */
    char post_err[512];
};

/* Forget the pipelined operations (free their bytes). */
static void out_clear(kv_exec *x)
{
    for (size_t i = 0; i < x->nout; i++) free(x->out[i].op);
    x->nout = 0;
}

/* A new token (a forked child must not share its parent's: their
 * operation numbers would collide); numbering starts again. 0, or -1. */
static int new_token(kv_exec *x)
{
    for (size_t got = 0; got < sizeof x->id.x_token;) {
        ssize_t n = getrandom(x->id.x_token + got, sizeof x->id.x_token - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        got += (size_t)n;
    }
    x->id.x_seq = 0;
    x->unsettled = 0;
    x->id_fork_gen = kvshmi_fork_generation();
    out_clear(x);   /* a forked child's copies: the parent's to settle */
    x->post_st = KV_OK;
    return 0;
}

kv_status kv_exec_open(const char *db_path, kv_exec **out)
{
    *out = NULL;
    char *reg = kv_attach_registry_path(db_path);
    if (!reg) return errno == ENOMEM ? KV_NOMEM : KV_NOTFOUND;
    kv_exec *x = calloc(1, sizeof *x);
    if (!x) {
        free(reg);
        return KV_NOMEM;
    }
    x->reg_path = reg;
    x->sock = x->memfd = -1;
    if (new_token(x) != 0) {
        free(reg);
        free(x);
        return KV_IO;
    }
    *out = x;
    return KV_OK;
}

static void disconnect(kv_exec *x)
{
    /* in a forked child these are the parent's: the child's close leaves
     * the parent's connection open */
    if (x->sock >= 0) close(x->sock);
    x->sock = -1;
    kvshm_bell_close(x->bell);
    x->bell = NULL;
}

void kv_exec_close(kv_exec *x)
{
    if (!x) return;
    /* the writer forgets this handle's record (kvshm/proto.h, EXEC_END);
     * no reply awaited. A handle whose writer is gone leaves it to the
     * age bound. */
    if (x->sock >= 0 && x->fork_gen == kvshmi_fork_generation() &&
        x->id_fork_gen == x->fork_gen && x->id.x_seq && !x->unsettled && !x->nout) {
        struct kvshm_msg m = {.m_magic = KVSHM_PROTO_MAGIC, .m_type = KVSHM_MSG_EXEC_END,
                              .m_len = sizeof x->id};
        struct iovec iov[2] = {{&m, sizeof m}, {&x->id, sizeof x->id}};
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
        if (sendmsg(x->sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0) kvshm_bell_request(x->bell);
    }
    disconnect(x);
    if (x->memfd >= 0) close(x->memfd);
    out_clear(x);
    free(x->out);
    free(x->res);
    free(x->reg_path);
    free(x);
}

int kv_exec_served(const kv_exec *x)
{
    reg_info ri;
    return kvshmi_registry_read(x->reg_path, &ri);
}

const char *kv_exec_errmsg(const kv_exec *x) { return x->err; }

int kv_exec_unsettled(const kv_exec *x, uint8_t token[KVSHM_EXEC_TOKEN], uint64_t *seq)
{
    if (!x->unsettled || x->id_fork_gen != kvshmi_fork_generation()) return 0;
    memcpy(token, x->id.x_token, KVSHM_EXEC_TOKEN);
    *seq = x->id.x_seq;
    return 1;
}

void kv_exec_settle(kv_exec *x) { x->unsettled = 0; }

/* Connect to the writer the registry names now. 1, or 0 when none serves
 * the file (or it went away while connecting). */
static int connect_writer(kv_exec *x)
{
    reg_info ri;
    if (!kvshmi_registry_read(x->reg_path, &ri)) return 0;
    kvshm_bell *bell = NULL;
    if (kvshm_bell_open(ri.slots, ri.generation, &bell) != KVSHM_OK) return 0;
    int s = kvshmi_sock_connect(ri.socket);
    if (s < 0) {
        kvshm_bell_close(bell);
        return 0;
    }
    x->sock = s;
    x->bell = bell;
    x->generation = ri.generation;
    x->fork_gen = kvshmi_fork_generation();
    return 1;
}

/* Connect as connect_writer, waiting while a writer holds the registry but
 * takes no connection yet (a successor replaying a dead writer) up to
 * START_WAIT_MS from the first wait of the caller's call (*deadline: 0
 * before it). 1 connected, 0 when no writer serves the file (nobody holds
 * the registry, or the wait ran out). */
static int connect_waiting(kv_exec *x, uint64_t *deadline)
{
    for (;;) {
        if (connect_writer(x)) return 1;
        if (!kvshmi_registry_writer_locked(x->reg_path)) return 0;
        uint64_t now = kvshmi_now_ms();
        if (!*deadline) *deadline = now + START_WAIT_MS;
        if (now >= *deadline) return 0;
        usleep(START_POLL_MS * 1000);
    }
}

/* The operation in the handle's memfd (from offset 0). 0, or -1 (errno). */
static int memfd_put(kv_exec *x, const void *op, size_t len)
{
    if (x->memfd < 0 && (x->memfd = memfd_create("kvault-exec", MFD_CLOEXEC)) < 0) return -1;
    if (ftruncate(x->memfd, (off_t)len) != 0) return -1;
    for (size_t off = 0; off < len;) {
        ssize_t n = pwrite(x->memfd, (const uint8_t *)op + off, len - off, (off_t)off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        off += (size_t)n;
    }
    return 0;
}

static int res_room(kv_exec *x, size_t n)
{
    if (n <= x->res_cap) return 0;
    uint8_t *p = realloc(x->res, n);
    if (!p) return -1;
    x->res = p;
    x->res_cap = n;
    return 0;
}

/* 1 when the writer we are connected to still serves the file. */
static int same_writer(kv_exec *x)
{
    reg_info ri;
    return kvshmi_registry_read(x->reg_path, &ri) && ri.generation == x->generation;
}

/* One send and its reply. 1 reached (status in *st), 0 the connection ended
 * first (the caller reconnects), -1 a local failure (*st, message set). */
static int exchange(kv_exec *x, const void *op, size_t len, size_t result_max, kv_status *st,
                    size_t *rlen)
{
    struct kvshm_msg m = {.m_magic = KVSHM_PROTO_MAGIC, .m_type = KVSHM_MSG_EXEC};
    const size_t idn = sizeof x->id;
    int big = sizeof m + idn + len > KVSHM_MSG_MAX || sizeof m + result_max > KVSHM_MSG_MAX;
    struct iovec iov[3] = {{&m, sizeof m}, {&x->id, idn}, {(void *)op, big ? 0 : len}};
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 3};
    if (big) {
        if (memfd_put(x, op, len) != 0) {
            snprintf(x->err, sizeof x->err, "exec: memfd: %s", strerror(errno));
            *st = KV_IO;
            return -1;
        }
        m.m_arg = len;
        m.m_len = (uint32_t)idn;
        kvshmi_msg_pass_fd(&mh, cbuf, x->memfd);
    } else {
        m.m_len = (uint32_t)(idn + len);
    }
    /* room for the reply first: once sent, the call waits for it */
    if (res_room(x, KVSHM_MSG_MAX) != 0) {
        *st = KV_NOMEM;
        snprintf(x->err, sizeof x->err, "exec: out of memory");
        return -1;
    }
    if (sendmsg(x->sock, &mh, MSG_NOSIGNAL) < 0) return 0;
    x->unsettled = 1;   /* until its reply: the writer may apply it */
    kvshm_bell_request(x->bell);
    for (;;) {
        struct pollfd pf = {.fd = x->sock, .events = POLLIN};
        int pr = poll(&pf, 1, REPLY_STEP_MS);
        if (pr < 0 && errno == EINTR) continue;
        if (pr == 0) {
            if (!same_writer(x)) return 0;
            continue;
        }
        ssize_t n = recv(x->sock, x->res, KVSHM_MSG_MAX, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < (ssize_t)sizeof m) return 0;
        memcpy(&m, x->res, sizeof m);
        if (m.m_magic != KVSHM_PROTO_MAGIC || m.m_type != (KVSHM_MSG_EXEC | KVSHM_MSG_REPLY) ||
            m.m_len != (size_t)n - sizeof m)
            continue;
        *st = (kv_status)m.m_status;
        size_t plen = m.m_len;
        if (m.m_arg) {   /* the result is in the memfd */
            if (!big || m.m_arg > KVSHM_OP_MAX_BYTES || res_room(x, m.m_arg) != 0 ||
                pread(x->memfd, x->res, m.m_arg, 0) != (ssize_t)m.m_arg) {
                *st = KV_IO;
                snprintf(x->err, sizeof x->err, "exec: unreadable result of %llu bytes",
                         (unsigned long long)m.m_arg);
                return -1;
            }
            *rlen = m.m_arg;
            return 1;
        }
        memmove(x->res, x->res + sizeof m, plen);
        if (*st != KV_OK) {
            size_t l = plen < sizeof x->err - 1 ? plen : sizeof x->err - 1;
            memcpy(x->err, x->res, l);
            x->err[l] = 0;
            if (!x->err[0]) snprintf(x->err, sizeof x->err, "%s", kv_strerror(*st));
        }
        *rlen = plen;
        return 1;
    }
}

kv_status kv_exec_call(kv_exec *x, const void *op, size_t len, size_t result_max,
                       const uint8_t **res, size_t *rlen, int *reached)
{
    *reached = 0;
    *res = NULL;
    *rlen = 0;
    x->err[0] = 0;
    if (x->nout && x->id_fork_gen == kvshmi_fork_generation()) {
        /* the pipelined operations come first (the caller flushes them) */
        kv_status pst = kv_exec_flush(x, reached);
        if (!*reached || pst != KV_OK) return *reached ? pst : KV_NOTFOUND;
        *reached = 0;
    }
    if (x->sock >= 0 && x->fork_gen != kvshmi_fork_generation()) disconnect(x);   /* the parent's */
    if (x->id_fork_gen != kvshmi_fork_generation() && new_token(x) != 0) {
        snprintf(x->err, sizeof x->err, "exec: getrandom: %s", strerror(errno));
        return KV_IO;
    }
    /* a new operation, unless the last one is unsettled and this call
     * sends the same bytes: its re-send */
    if (x->unsettled && XXH3_64bits(op, len) != x->unsettled_hash) x->unsettled = 0;
    if (!x->unsettled) x->id.x_seq++;
    uint64_t start_deadline = 0;
    for (int attempt = 0; attempt < EXEC_ATTEMPTS; attempt++) {
        if (x->sock < 0 && !connect_waiting(x, &start_deadline)) break;
        kv_status st = KV_OK;
        int was = x->unsettled;
        int r = exchange(x, op, len, result_max, &st, rlen);
        if (x->unsettled && !was) x->unsettled_hash = XXH3_64bits(op, len);
        if (r < 0) return st;
        if (r > 0) {
            *reached = 1;
            x->unsettled = 0;
            *res = x->res;
            return st;
        }
        disconnect(x);
    }
    snprintf(x->err, sizeof x->err, "no kvault-writer serves the file");
    return KV_NOTFOUND;
}

/* ---- pipelined operations (kv_exec_post) -------------------------------- */

_Static_assert(KV_EXEC_POST_MAX ==
                   KVSHM_MSG_MAX - sizeof(struct kvshm_msg) - sizeof(struct kvshm_exec_id),
               "KV_EXEC_POST_MAX is one packet less its header and id");

/* Send one operation numbered seq inline (it fits one packet: checked by
 * kv_exec_post). 0, or -1 when the connection ended. */
static int send_inline(kv_exec *x, uint64_t seq, const void *op, size_t len)
{
    struct kvshm_exec_id id = x->id;
    id.x_seq = seq;
    struct kvshm_msg m = {.m_magic = KVSHM_PROTO_MAGIC, .m_type = KVSHM_MSG_EXEC,
                          .m_len = (uint32_t)(sizeof id + len)};
    struct iovec iov[3] = {{&m, sizeof m}, {&id, sizeof id}, {(void *)op, len}};
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 3};
    for (;;) {
        if (sendmsg(x->sock, &mh, MSG_NOSIGNAL) >= 0) return 0;
        if (errno != EINTR) return -1;
    }
}

/* Send pipelined operation o again as the handle's next operation (o's
 * reply said it was not applied); `dead`: the connection ended, o only
 * takes its new number (the caller re-sends it with the rest). 0, or -1
 * when the connection ended. */
static int requeue(kv_exec *x, posted o, int dead)
{
    x->out[x->nout++] = o;   /* room: it was just taken off the array */
    x->id.x_seq++;
    if (dead || send_inline(x, x->id.x_seq, o.op, o.len) != 0) return -1;
    kvshm_bell_request(x->bell);
    return 0;
}

/* Number of the oldest pipelined operation without a reply. */
static uint64_t out_first_seq(const kv_exec *x) { return x->id.x_seq - x->nout + 1; }

/* Read the replies of pipelined operations (in order: one per operation,
 * oldest first) until at most `left` are waiting. wait 0: only the replies
 * that arrived already. 1, or 0 when the connection ended first (or a wait
 * of REPLY_STEP_MS saw nothing and another writer serves the file now).
 * The first failure a reply reports is kept (post_st, post_err). */
static int collect(kv_exec *x, size_t left, int wait)
{
    int dead = 0;   /* a re-send failed: the replies still buffered are read */
    while (x->nout > left) {
        /* not waiting: straight to recv (one system call per reply, and
         * one more to find none left) */
        int pr = 1;
        if (wait) {
            struct pollfd pf = {.fd = x->sock, .events = POLLIN};
            pr = poll(&pf, 1, REPLY_STEP_MS);
            if (pr < 0 && errno == EINTR) continue;
        }
        if (pr == 0) {
            if (dead) return 0;   /* requeued ones were not sent: the caller re-sends */
            if (!same_writer(x)) return 0;
            continue;
        }
        ssize_t n = recv(x->sock, x->res, KVSHM_MSG_MAX, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            if (!wait) return dead ? 0 : 1;
            continue;
        }
        struct kvshm_msg m;
        if (n < (ssize_t)sizeof m) return 0;
        memcpy(&m, x->res, sizeof m);
        if (m.m_magic != KVSHM_PROTO_MAGIC || m.m_type != (KVSHM_MSG_EXEC | KVSHM_MSG_REPLY) ||
            m.m_len != (size_t)n - sizeof m)
            continue;
        posted head = x->out[0];
        uint64_t head_seq = out_first_seq(x);
        memmove(x->out, x->out + 1, (x->nout - 1) * sizeof *x->out);
        x->nout--;
        if (m.m_status == KV_BUSY) {
            /* the writer could not take SQLite's write lock for the group
             * (another connection held it): nothing of it was applied. The
             * same bytes go again as a new operation (numbers must rise).
             * The writer may have committed later operations of the handle
             * since, so its record may hold a larger number: every BUSY
             * reply it sent must be read and its operation renumbered
             * above the others, also when the connection ended (the writer
             * died), or the operation would count as applied by a record
             * number above its old one. The writer sends a pass's replies
             * before its next pass runs, so they are in the socket. */
            if (requeue(x, head, dead) != 0) dead = 1;
            continue;
        }
        if (m.m_status != KV_OK && x->post_st == KV_OK) {
            size_t l = m.m_len < sizeof x->post_err - 1 ? m.m_len : sizeof x->post_err - 1;
            x->post_st = (kv_status)m.m_status;
            x->post_seq = head_seq;
            memcpy(x->post_err, x->res + sizeof m, l);
            x->post_err[l] = 0;
            if (!l) snprintf(x->post_err, sizeof x->post_err, "%s", kv_strerror(x->post_st));
        }
        free(head.op);
    }
    return 1;
}

/* Send every pipelined operation without a reply again, with its number
 * (a new writer: it replies with the recorded result to those applied). 1,
 * or 0 when the connection ended. */
static int resend(kv_exec *x)
{
    uint64_t seq = out_first_seq(x);
    for (size_t i = 0; i < x->nout; i++, seq++)
        if (send_inline(x, seq, x->out[i].op, x->out[i].len) != 0) return 0;
    kvshm_bell_request(x->bell);
    return 1;
}

/* Wait for the reply of every pipelined operation, re-sending them to the
 * next writer when the one that had them died. 1, or 0 when no writer
 * serves the file (message in x->err); a failure a reply reported stays
 * kept (post_st). */
static int flush_out(kv_exec *x)
{
    uint64_t start_deadline = 0;
    for (int attempt = 0; x->nout;) {
        if (x->sock >= 0 && x->fork_gen == kvshmi_fork_generation() && collect(x, 0, 1)) break;
        disconnect(x);
        if (attempt++ == EXEC_ATTEMPTS) {
            snprintf(x->err, sizeof x->err, "no kvault-writer serves the file");
            return 0;
        }
        if (!connect_waiting(x, &start_deadline)) attempt = EXEC_ATTEMPTS;
        else if (!resend(x)) disconnect(x);
    }
    return 1;
}

kv_status kv_exec_failure(kv_exec *x)
{
    kv_status st = x->post_st;
    if (st != KV_OK) memcpy(x->err, x->post_err, sizeof x->err);
    x->post_st = KV_OK;
    return st;
}

kv_status kv_exec_flush(kv_exec *x, int *reached)
{
    *reached = 1;
    if (x->id_fork_gen != kvshmi_fork_generation()) return KV_OK;   /* the parent's */
    if (!flush_out(x)) {
        *reached = 0;
        return KV_NOTFOUND;
    }
    return kv_exec_failure(x);
}

/* The end of kv_exec_post for operation `seq`, sent, when it had to wait
 * for the replies (the connection ended): the operation's own failure,
 * else KV_OK (a failure of an earlier one stays kept for the next call). */
static kv_status post_flush(kv_exec *x, uint64_t seq, int *reached)
{
    if (!(*reached = flush_out(x))) return KV_NOTFOUND;
    return x->post_st != KV_OK && x->post_seq == seq ? kv_exec_failure(x) : KV_OK;
}

kv_status kv_exec_post(kv_exec *x, const void *op, size_t len, int *reached, int *queued)
{
    *reached = *queued = 0;
    x->err[0] = 0;
    if (len > KV_EXEC_POST_MAX) return KV_INVALID;
    if (x->sock >= 0 && x->fork_gen != kvshmi_fork_generation()) disconnect(x);   /* the parent's */
    if (x->id_fork_gen != kvshmi_fork_generation() && new_token(x) != 0) {
        snprintf(x->err, sizeof x->err, "exec: getrandom: %s", strerror(errno));
        return KV_IO;
    }
    if (x->unsettled) return KV_INVALID;   /* kv_exec_call settles it first */
    /* the replies that arrived (at the window, wait for half of them): a
     * failure of an earlier one is reported before this one is sent, so an
     * operation whose call failed was never applied */
    if (x->sock >= 0 && x->nout && x->fork_gen == kvshmi_fork_generation() &&
        !collect(x, x->nout >= POST_WINDOW ? POST_WINDOW / 2 : 0, x->nout >= POST_WINDOW))
        disconnect(x);   /* the connection ended: re-sent below (kv_exec_flush) */
    if (x->post_st != KV_OK) {
        *reached = 1;
        return kv_exec_failure(x);
    }
    if (res_room(x, KVSHM_MSG_MAX) != 0) return KV_NOMEM;
    if (x->nout == x->out_cap) {
        size_t cap = x->out_cap ? 2 * x->out_cap : 16;
        posted *o = realloc(x->out, cap * sizeof *o);
        if (!o) return KV_NOMEM;
        x->out = o;
        x->out_cap = cap;
    }
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return KV_NOMEM;
    if (x->sock < 0 && x->nout) {   /* earlier ones without a reply: theirs first */
        kv_status st = kv_exec_flush(x, reached);
        if (st != KV_OK || !*reached) {
            free(copy);
            return st;   /* this one not sent */
        }
    }
    if (x->sock < 0 && !connect_writer(x)) {
        free(copy);
        *reached = 0;
        return KV_OK;   /* no writer: nothing posted, the caller applies it */
    }
    memcpy(copy, op, len);
    x->out[x->nout++] = (posted){copy, len};
    uint64_t seq = ++x->id.x_seq;
    *queued = 1;
    if (send_inline(x, seq, op, len) != 0) return post_flush(x, seq, reached);
    kvshm_bell_request(x->bell);
    *reached = 1;   /* its reply is read by the next call */
    return KV_OK;
}

size_t kv_exec_posted(const kv_exec *x)
{
    return x->id_fork_gen == kvshmi_fork_generation() ? x->nout : 0;
}

void kv_exec_posted_op(const kv_exec *x, size_t i, const uint8_t **op, size_t *len, uint64_t *seq)
{
    *op = x->out[i].op;
    *len = x->out[i].len;
    *seq = out_first_seq(x) + i;
}

void kv_exec_token(const kv_exec *x, uint8_t token[KVSHM_EXEC_TOKEN])
{
    memcpy(token, x->id.x_token, KVSHM_EXEC_TOKEN);
}

void kv_exec_forget(kv_exec *x)
{
    out_clear(x);
    x->post_st = KV_OK;
}
