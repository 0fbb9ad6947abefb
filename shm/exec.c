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
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "kvshm/attach.h"
#include "kvshm/kvshm.h"
#include "kvshm/ops.h"
#include "kvshm/proto.h"

/* How long one wait for a reply lasts before the registry is looked at. */
#define REPLY_STEP_MS 200
/* Sends of one call: the first, and one per writer change. */
#define EXEC_ATTEMPTS 4

struct kv_exec {
    char *reg_path;             /* <db>-kvault */
    int sock;                   /* connection to the writer, -1 when none */
    uint64_t generation;        /* of that writer */
    kvshm_bell *bell;
    unsigned fork_gen;          /* kvshmi_fork_generation() when connected */
    int memfd;                  /* operations and results above one packet, -1 until used */
    uint8_t *res;               /* the last result */
    size_t res_cap;
    char err[512];
};

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
    disconnect(x);
    if (x->memfd >= 0) close(x->memfd);
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
    int big = sizeof m + len > KVSHM_MSG_MAX || sizeof m + result_max > KVSHM_MSG_MAX;
    struct iovec iov[2] = {{&m, sizeof m}, {(void *)op, big ? 0 : len}};
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 2};
    if (big) {
        if (memfd_put(x, op, len) != 0) {
            snprintf(x->err, sizeof x->err, "exec: memfd: %s", strerror(errno));
            *st = KV_IO;
            return -1;
        }
        m.m_arg = len;
        kvshmi_msg_pass_fd(&mh, cbuf, x->memfd);
    } else {
        m.m_len = (uint32_t)len;
    }
    if (sendmsg(x->sock, &mh, MSG_NOSIGNAL) < 0) return 0;
    kvshm_bell_request(x->bell);
    if (res_room(x, KVSHM_MSG_MAX) != 0) {
        *st = KV_NOMEM;
        snprintf(x->err, sizeof x->err, "exec: out of memory");
        return -1;
    }
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
    if (x->sock >= 0 && x->fork_gen != kvshmi_fork_generation()) disconnect(x);   /* the parent's */
    for (int attempt = 0; attempt < EXEC_ATTEMPTS; attempt++) {
        if (x->sock < 0 && !connect_writer(x)) break;
        kv_status st = KV_OK;
        int r = exchange(x, op, len, result_max, &st, rlen);
        if (r < 0) return st;
        if (r > 0) {
            *reached = 1;
            *res = x->res;
            return st;
        }
        disconnect(x);
    }
    snprintf(x->err, sizeof x->err, "no kvault-writer serves the file");
    return KV_NOTFOUND;
}
