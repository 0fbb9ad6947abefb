/*
 * attach.c -- the client side of shared mode (kvshm/attach.h).
 *
 * Sections: registry (is a writer serving? where?), connection (segment,
 * slot, ring, socket: attach and re-attach), fork handling, reads, writes,
 * requests over the socket.
 *
 * Waiting on the writer: every wait is a loop of bounded waits on the ring
 * (200 ms; each spins briefly under the free-core rule of the writer's slot
 * file, then sleeps on a futex); between them the handle checks the
 * writer's socket for a hang-up. A hung-up writer means: wait for the next generation in the
 * registry, re-attach, hand it the same ring, keep waiting. Nothing a put
 * returned for is lost: applied records were in the old segment, which the
 * new writer replays before it listens.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "kv_assert.h"
#include "kvault/batch.h"
#include "kvshm/attach.h"
#include "kvshm/kvshm.h"
#include "kvshm/proto.h"
#include "kvshm/ring.h"
#include "internal.h"

/* One step of a wait on the ring, after which the handle looks whether the
 * writer hung up (a poll of its socket): a writer killed under a waiting
 * call is noticed within it. */
#define WAIT_STEP_MS 20
/* How often a wait rings the writer's doorbell again, in case the writer
 * slept past the call's own ring. */
#define DOORBELL_AGAIN_MS 200
/* How long a wait tolerates a writer that cannot commit before it fails. */
#define FAULT_WAIT_MS 1000
#define MISS_VALUE_MAX (256u * 1024u)
#define STATS_EVERY 4096u

struct kv_att {
    char *db_path;              /* realpath of the database */
    char *reg_path;             /* <db>-kvault */
    kv_attach_opts o;
    char table[136];
    kvshm_reader *r;            /* segment mapping + slot */
    kvshm_ring *ring;           /* our submission ring (producer side) */
    int sock;                   /* connection to the writer */
    uint64_t generation;
    kv_db *db;                  /* own SQLite connection (reads only) */
    unsigned fork_gen;          /* g_fork_gen when this process set the handle up */
    uint64_t last_pos;          /* ring position after our last record */
    int applied_ok;             /* every record up to last_pos is known applied */
    uint8_t *buf;               /* value copy-out buffer */
    size_t cap;
    uint64_t hits, misses, hits_rep, misses_rep;
    uint64_t hits_above;   /* hits served above this layer (kv_att_add_hits) */
    int stopped;                /* the writer stopped cleanly; the ring was committed here */
    int died;                   /* ... or died: this handle replayed it (kv_attach_recover) */
    kv_commit_guard guard;      /* on db: refuses a commit while a writer holds the registry */
    char err[512];
};

/* ---- fork generation -------------------------------------------------- */

static unsigned g_fork_gen;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) { g_fork_gen++; }
static void install_atfork(void) { pthread_atfork(NULL, NULL, on_fork_child); }

static kv_status fail(kv_att *a, kv_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static kv_status fail(kv_att *a, kv_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->err, sizeof a->err, fmt, ap);
    va_end(ap);
    return st;
}

void kv_attach_opts_default(kv_attach_opts *o)
{
    memset(o, 0, sizeof *o);
    o->table = "kv";
    o->ring_bytes = 4u << 20;
    o->reattach_timeout_ms = 60000;
    kv_open_opts_default(&o->db);
}

uint64_t kvshmi_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ======================================================================
 * Registry
 * ==================================================================== */

/* Length of the registry lock of a client replaying a dead writer
 * (kv_attach_recover); a writer's lock covers the whole file (length 0). */
#define RECOVER_LOCK_LEN ((off_t)1 << 40)

/* Tries and pause of registry_text when the text is not whole. */
#define REGISTRY_READ_TRIES 50
#define REGISTRY_READ_PAUSE_US 200

/* The registry text of fd into text (cap bytes, NUL terminated): a whole
 * one (kvshm_registry_complete), read again for up to ~10 ms while a
 * writer rewrites the file (it writes the new text, then truncates). 1, or
 * 0 with text empty when none was whole (a file just created, or one a
 * writer died while writing). */
static int registry_text(int fd, char *text, size_t cap)
{
    for (int i = 0; i < REGISTRY_READ_TRIES; i++) {
        ssize_t n = pread(fd, text, cap - 1, 0);
        text[n > 0 ? n : 0] = 0;
        if (kvshm_registry_complete(text)) return 1;
        usleep(REGISTRY_READ_PAUSE_US);
    }
    text[0] = 0;
    return 0;
}

int kvshmi_registry_read(const char *reg_path, reg_info *ri)
{
    int fd = open(reg_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    int served = 0;
    if (fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK &&
        fl.l_len != RECOVER_LOCK_LEN) {
        char text[2048], gen[32];
        if (registry_text(fd, text, sizeof text)) {
            if (!kvshm_registry_field(text, "generation", gen, sizeof gen) &&
                kvshm_registry_layout_ok(text) &&
                !kvshm_registry_field(text, "segment", ri->segment, sizeof ri->segment) &&
                !kvshm_registry_field(text, "slots", ri->slots, sizeof ri->slots) &&
                !kvshm_registry_field(text, "socket", ri->socket, sizeof ri->socket) &&
                !kvshm_registry_field(text, "table", ri->table, sizeof ri->table) &&
                !kvshm_registry_field(text, "state", ri->state, sizeof ri->state) &&
                !strcmp(ri->state, "ready")) {
                ri->generation = strtoull(gen, NULL, 10);
                served = 1;
            }
        }
    }
    close(fd);
    return served;
}

static char *registry_path(const char *db_path, char **abs_out)
{
    char *abs = realpath(db_path, NULL);
    if (!abs) return NULL;
    size_t n = strlen(abs) + sizeof KVSHM_REGISTRY_SUFFIX;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s%s", abs, KVSHM_REGISTRY_SUFFIX);
    if (abs_out) *abs_out = abs;
    else free(abs);
    return p;
}

int kv_attach_served(const char *db_path, const char *table)
{
    char *reg = registry_path(db_path, NULL);
    if (!reg) return 0;
    reg_info ri;
    int ok = kvshmi_registry_read(reg, &ri) && !strcmp(ri.table, table ? table : "kv");
    free(reg);
    return ok;
}

/* Lock and text of the registry, whoever holds it: 1 if the file exists.
 * *locked = a writer holds its lock; state/table/generation from its text
 * ("" / 0 when the text lacks them). */
static int registry_peek(const char *reg_path, int *locked, uint64_t *generation,
                         char *state, size_t slen, char *table, size_t tlen)
{
    int fd = open(reg_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    *locked = fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
    char text[2048], gen[32];
    registry_text(fd, text, sizeof text);
    close(fd);
    *generation = kvshm_registry_field(text, "generation", gen, sizeof gen) ? 0
                                                                            : strtoull(gen, NULL, 10);
    if (kvshm_registry_field(text, "state", state, slen)) state[0] = 0;
    if (kvshm_registry_field(text, "table", table, tlen)) table[0] = 0;
    return 1;
}

char *kv_attach_registry_path(const char *db_path) { return registry_path(db_path, NULL); }

int kv_attach_registry_locked(const char *reg_path, const char *table)
{
    int locked = 0;
    uint64_t gen;
    char state[16], tbl[136];
    if (!registry_peek(reg_path, &locked, &gen, state, sizeof state, tbl, sizeof tbl))
        return 0;
    /* a writer that is starting may still show its predecessor's text:
     * only another table named in the text lets the caller go on */
    return locked && (!tbl[0] || !strcmp(tbl, table ? table : "kv"));
}

/* ---- recovery of a dead writer by a client (kv_attach_recover) ---------
 * A recovering client locks the registry from byte 0 over
 * RECOVER_LOCK_LEN bytes; a writer locks the whole file (l_len 0). Both
 * conflict with each other, and F_OFD_GETLK tells them apart by l_len. */

#define RECOVER_POLL_MS 20

enum { REG_FREE, REG_WRITER, REG_RECOVERING };

static int registry_lock_kind(int fd)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0};
    if (fcntl(fd, F_OFD_GETLK, &fl) != 0 || fl.l_type == F_UNLCK) return REG_FREE;
    return fl.l_len == RECOVER_LOCK_LEN ? REG_RECOVERING : REG_WRITER;
}

/* 1 if registry text `text` names a writer of `table` that did not stop
 * cleanly and whose data segment still exists: its applied records may not
 * all be committed. seg/slots (96 bytes each) receive the names. */
static int registry_unreplayed(const char *text, const char *table, char *seg, char *slots)
{
    char state[16], tbl[136], path[128];
    struct stat sb;
    if (kvshm_registry_field(text, "state", state, sizeof state) || !strcmp(state, "stopped") ||
        kvshm_registry_field(text, "segment", seg, 96) || seg[0] != '/')
        return 0;
    if (kvshm_registry_field(text, "slots", slots, 96)) slots[0] = 0;
    if (!kvshm_registry_field(text, "table", tbl, sizeof tbl) && tbl[0] &&
        strcmp(tbl, table ? table : "kv"))
        return 0;
    snprintf(path, sizeof path, "/dev/shm%s", seg);
    return stat(path, &sb) == 0;
}

/* The cluster node named by the registry at reg_path
 * (kvshm_registry_cluster_node; 0: none, or unreadable). Such a file is
 * the node's copy of the cluster's data: a client never replays its dead
 * writer's segment nor commits its own ring there (the Raft log restores
 * what the cluster committed when the node restarts), and no embedded
 * commit may add writes the cluster does not have. */
static uint64_t registry_cluster_at(const char *reg_path)
{
    int fd = open(reg_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char text[2048];
    registry_text(fd, text, sizeof text);
    close(fd);
    return kvshm_registry_cluster_node(text);
}

int kv_attach_recover_pending(const char *reg_path, const char *table)
{
    int fd = open(reg_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    int kind = registry_lock_kind(fd), pending = kind == REG_RECOVERING;
    if (kind == REG_FREE) {
        char text[2048], seg[96], slots[96];
        registry_text(fd, text, sizeof text);
        pending = kvshm_registry_cluster_node(text) ||
                  registry_unreplayed(text, table, seg, slots);
    }
    close(fd);
    return pending;
}

int kvshmi_registry_writer_locked(const char *reg_path)
{
    int fd = open(reg_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    int kind = registry_lock_kind(fd);
    close(fd);
    return kind == REG_WRITER;
}

/* Replay the segment named in `text` into `db_abs` (the registry lock is
 * held by fd) and mark the registry stopped. */
static kv_status recover_locked(int fd, const char *db_abs, const char *table, char *text,
                                const char *seg, const char *slots, uint64_t *replayed,
                                char *err, size_t errlen)
{
    kv_batch_opts bo;
    kv_batch_opts_default(&bo);
    bo.table = table ? table : "kv";
    kv_batch *b = NULL;
    kv_status st = kv_batch_open(db_abs, &bo, &b, err, errlen);
    if (st != KV_OK) return st;
    uint64_t committed = 0, top = 0;
    st = kv_batch_last_seq(b, &committed);
    if (st == KV_OK) {
        kvshm_status ks = kvshm_replay_segment(seg, b, committed, replayed, &top);
        if (ks == KVSHM_E_SYS) st = (kv_batch_sqlite_errcode(b) & 0xff) == 5 /* SQLITE_BUSY */ ? KV_BUSY : KV_IO;
        else if (ks != KVSHM_OK && ks != KVSHM_E_NOENT && ks != KVSHM_E_LAYOUT) st = KV_IO;
        if (st != KV_OK)
            snprintf(err, errlen, "replay of the dead writer's segment %s: %s", seg,
                     ks == KVSHM_E_SYS ? kv_batch_errmsg(b) : kvshm_strerror(ks));
    } else {
        snprintf(err, errlen, "%s", kv_batch_errmsg(b));
    }
    kv_batch_close(b);
    if (st != KV_OK) return st;
    kvshm_unlink(seg, slots[0] ? slots : NULL);
    /* the registry says what a clean stop says: every applied record of
     * that writer is committed (clients waiting for it continue; the next
     * writer finds nothing to replay) */
    char *line = strstr(text, "\nstate="), *end = strstr(text, "\nend=");
    if (line && end && end > line) {
        /* the text up to its end line, state replaced, then a new end line;
         * written over the old text, then cut to its length (as the writer
         * does: readers see a whole text or reject a torn one) */
        char *eol = strchr(line + 1, '\n');
        char out[2048];
        int n = snprintf(out, sizeof out, "%.*s\nstate=stopped%.*s\n", (int)(line - text), text,
                         (int)(end - eol), eol);
        int e = n > 0 && (size_t)n < sizeof out
                    ? snprintf(out + n, sizeof out - (size_t)n, "end=%d\n", n) : -1;
        if (e > 0 && (size_t)e < sizeof out - (size_t)n && pwrite(fd, out, (size_t)(n + e), 0) == n + e &&
            ftruncate(fd, n + e) == 0)
            fsync(fd);
    }
    return KV_OK;
}

kv_status kv_attach_recover(const char *db_path, const char *table, int wait_ms,
                            uint64_t *replayed, char *err, size_t errlen)
{
    char *abs = NULL, *reg = registry_path(db_path, &abs);
    kv_status st = KV_OK;
    uint64_t n = 0;
    uint64_t deadline = kvshmi_now_ms() + (uint64_t)(wait_ms > 0 ? wait_ms : 0);
    /* a cluster node's file: refused from a read-only look, so a node
     * writer starting meanwhile never finds the registry locked */
    uint64_t node = reg ? registry_cluster_at(reg) : 0;
    if (node) {
        st = KV_UNSUPPORTED;
        snprintf(err, errlen, "%s is the copy of cluster node %" PRIu64 " and only its "
                 "writer writes it; start the node again (kvault-launch serve), or, "
                 "once it has left its cluster, delete %s to use the file alone",
                 db_path, node, reg);
    }
    while (!node && reg && kv_attach_recover_pending(reg, table)) {
        int fd = open(reg, O_RDWR | O_CLOEXEC);
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0,
                           .l_len = RECOVER_LOCK_LEN};
        if (fd >= 0 && fcntl(fd, F_OFD_SETLK, &fl) == 0) {
            char text[2048], seg[96], slots[96];
            registry_text(fd, text, sizeof text);
            /* (one that became a cluster node's since the look above is
             * left alone) */
            if (!kvshm_registry_cluster_node(text) &&
                registry_unreplayed(text, table, seg, slots))
                st = recover_locked(fd, abs, table, text, seg, slots, &n, err, errlen);
            close(fd);   /* releases the lock */
            if (st != KV_BUSY) break;
        } else if (fd >= 0) {
            close(fd);
        }
        if (kvshmi_now_ms() >= deadline) {
            if (st == KV_OK) {
                st = KV_BUSY;
                snprintf(err, errlen, "%s: a dead writer's records are being replayed by "
                         "another process", db_path);
            }
            break;
        }
        struct timespec ts = {0, RECOVER_POLL_MS * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (replayed) *replayed = n;
    free(reg);
    free(abs);
    return st;
}

/* 1 if the writer of generation `gen` stopped cleanly (state=stopped: it
 * committed everything it applied) and no newer writer is named, or a
 * newer one did and stopped too (its lock is free). */
static int registry_stopped(const char *reg_path, uint64_t gen)
{
    int locked = 0;
    uint64_t g = 0;
    char state[16], tbl[136];
    return registry_peek(reg_path, &locked, &g, state, sizeof state, tbl, sizeof tbl) &&
           (g == gen || (g > gen && !locked)) && !strcmp(state, "stopped");
}

/* 1 if the writer of generation `gen` is dead: nobody holds the registry
 * lock (neither a writer nor a recovering client), the text still names
 * generation `gen` and it did not stop cleanly. */
static int registry_dead(const char *reg_path, uint64_t gen)
{
    int locked = 1;
    uint64_t g = 0;
    char state[16], tbl[136];
    return registry_peek(reg_path, &locked, &g, state, sizeof state, tbl, sizeof tbl) &&
           !locked && g == gen && strcmp(state, "stopped") != 0;
}

/* Commit guard of the own connection (kv_db_set_commit_guard). */
static int guard_check(void *ctx)
{
    kv_att *a = ctx;
    return kv_attach_registry_locked(a->reg_path, a->table);
}

/* ======================================================================
 * Connection
 * ==================================================================== */

void kvshmi_msg_pass_fd(struct msghdr *mh, char *cbuf, int fd)
{
    memset(cbuf, 0, CMSG_SPACE(sizeof(int)));
    mh->msg_control = cbuf;
    mh->msg_controllen = CMSG_SPACE(sizeof(int));
    struct cmsghdr *cm = CMSG_FIRSTHDR(mh);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof fd);
}

int kvshmi_sock_connect(const char *name)
{
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t n = strlen(name);
    if (n > sizeof addr.sun_path - 2) return -1;
    memcpy(addr.sun_path + 1, name, n);
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    if (connect(s, (struct sockaddr *)&addr,
                (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n)) != 0) {
        close(s);
        return -1;
    }
    return s;
}

/* Send one request (optionally with a descriptor) and wait for its reply.
 * reply payload (text) is copied into out (NUL-terminated) if out != NULL.
 * Returns the writer's status, or KV_IO when the socket failed. */
static kv_status request(kv_att *a, uint32_t type, uint64_t arg, const void *p1, size_t l1,
                         const void *p2, size_t l2, int fd, char *out, size_t outcap,
                         uint64_t *reply_arg)
{
    struct kvshm_msg m = {.m_magic = KVSHM_PROTO_MAGIC, .m_type = type,
                          .m_len = (uint32_t)(l1 + l2), .m_arg = arg};
    if (sizeof m + l1 + l2 > KVSHM_MSG_MAX) return fail(a, KV_INVALID, "request too large");
    struct iovec iov[3] = {{&m, sizeof m}, {(void *)p1, l1}, {(void *)p2, l2}};
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct msghdr mh = {.msg_iov = iov, .msg_iovlen = 3};
    if (fd >= 0) kvshmi_msg_pass_fd(&mh, cbuf, fd);
    if (sendmsg(a->sock, &mh, MSG_NOSIGNAL) < 0)
        return fail(a, KV_IO, "send to writer: %s", strerror(errno));
    if (a->r) kvshm_reader_flag_request(a->r);
    uint8_t buf[KVSHM_MSG_MAX];
    for (;;) {
        ssize_t n = recv(a->sock, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < (ssize_t)sizeof m) return fail(a, KV_IO, "writer closed the connection");
        memcpy(&m, buf, sizeof m);
        if (m.m_type != (type | KVSHM_MSG_REPLY)) continue;
        size_t len = (size_t)n - sizeof m;
        if (out && outcap) {
            if (len >= outcap) len = outcap - 1;
            memcpy(out, buf + sizeof m, len);
            out[len] = 0;
        }
        if (reply_arg) *reply_arg = m.m_arg;
        if (m.m_status != KV_OK) {
            size_t l = (size_t)n - sizeof m;
            if (l >= sizeof a->err) l = sizeof a->err - 1;
            memcpy(a->err, buf + sizeof m, l);
            a->err[l] = 0;
            if (!a->err[0]) snprintf(a->err, sizeof a->err, "%s",
                                     kv_strerror((kv_status)m.m_status));
        }
        return (kv_status)m.m_status;
    }
}

/* Map the segment named by ri, take a slot, connect, hand over our ring. */
static kv_status connect_writer(kv_att *a, const reg_info *ri)
{
    if (!a->r) {
        kvshm_status ks = kvshm_reader_attach(ri->segment, ri->slots, &a->r);
        if (ks != KVSHM_OK) {
            a->r = NULL;
            return fail(a, KV_IO, "attach segment %s: %s", ri->segment, kvshm_strerror(ks));
        }
    }
    a->generation = kvshm_reader_generation(a->r);
    a->sock = kvshmi_sock_connect(ri->socket);
    if (a->sock < 0) {
        kvshm_reader_detach(a->r);
        a->r = NULL;
        return fail(a, KV_IO, "connect to writer @%s: %s", ri->socket, strerror(errno));
    }
    /* our waits spin under the free-core rule of this writer's slot file */
    kvshm_ring_set_spin(a->ring, a->r, KVSHM_RING_SPIN_DEFAULT);
    struct kvshm_attach_req req = {.a_pid = (uint32_t)getpid(),
                                   .a_slot = kvshm_reader_slot(a->r),
                                   .a_generation = a->generation};
    kv_status st = request(a, KVSHM_MSG_ATTACH, 0, &req, sizeof req, NULL, 0,
                           kvshm_ring_fd(a->ring), NULL, 0, NULL);
    if (st != KV_OK) {
        close(a->sock);
        a->sock = -1;
        kvshm_ring_set_spin(a->ring, NULL, KVSHM_RING_SPIN_DEFAULT);
        kvshm_reader_detach(a->r);
        a->r = NULL;
    }
    return st;
}

static void disconnect(kv_att *a)
{
    if (a->sock >= 0) close(a->sock);
    a->sock = -1;
    if (a->ring) kvshm_ring_set_spin(a->ring, NULL, KVSHM_RING_SPIN_DEFAULT);   /* borrows a->r */
    if (a->r) kvshm_reader_detach(a->r);
    a->r = NULL;
}

/* Apply the records of our ring that no writer consumed to the own
 * connection, as the writer would have (puts and deletes in ring order),
 * each commit under the guard: KV_OK when the ring is empty, KV_BUSY when
 * a writer took the registry meanwhile (what is left stays in the ring for
 * it), or a failure. We map our own ring as its consumer: no writer does
 * any more. */
static kv_status commit_ring_here(kv_att *a)
{
    kvshm_ring *cons = NULL;
    if (kvshm_ring_map(kvshm_ring_fd(a->ring), &cons) != KVSHM_OK)
        return fail(a, KV_IO, "map own ring: %s", strerror(errno));
    kv_status st = KV_OK;
    for (;;) {
        uint32_t type, len, klen, vlen;
        const void *pl;
        const uint8_t *key, *val;
        kvshm_status ks = kvshm_ring_peek(cons, &type, &pl, &len);
        if (ks == KVSHM_EMPTY) break;
        if (ks != KVSHM_OK) {
            st = fail(a, KV_CORRUPT, "own ring: %s", kvshm_strerror(ks));
            break;
        }
        if (type == KVSHM_REC_PUT || type == KVSHM_REC_DEL) {
            if (kvshm_keyrec_decode(pl, len, &key, &klen, &val, &vlen) != 0) {
                st = fail(a, KV_CORRUPT, "own ring: malformed record");
                break;
            }
            a->guard.refused = 0;
            st = type == KVSHM_REC_PUT ? kv_put(a->db, key, klen, val, vlen)
                                       : kv_delete(a->db, key, klen, NULL);
            if (st != KV_OK) {
                st = a->guard.refused ? KV_BUSY : fail(a, st, "%s", kv_db_errmsg(a->db));
                break;
            }
        }
        kvshm_ring_consume(cons);
        kvshm_ring_release(cons);
    }
    kvshm_ring_close(cons);
    if (st == KV_OK) a->applied_ok = 1;
    return st;
}

/* The writer is gone (hang-up or closed segment): wait up to timeout_ms for
 * a newer one and re-attach with the same ring. With continue_on_stop, a
 * writer that stopped cleanly ends the wait at once: the ring's records
 * are committed here (commit_ring_here) and the handle is stopped
 * (kv_att_stopped; KV_IO returned). So does a dead writer (registry lock
 * free, checked every 20 ms of the wait, for TAKEOVER_GRACE_MS) once this
 * handle replayed its applied records (kv_attach_recover) or another
 * process did; with o.respawn, the handle first asks for a new writer and
 * waits for it as for a restart. */
/* How long a dead writer's registry lock stays free before a handle with
 * continue_on_stop takes over: kvault-launch notices a dead writer within
 * its 100 ms poll and restarts it, and the replacement takes the lock
 * first thing, so a supervised restart wins; the figure keeps the
 * take-over within 1 s of noticing. */
#define TAKEOVER_GRACE_MS 500

static kv_status reattach_within(kv_att *a, int timeout_ms)
{
    uint64_t old = a->generation;
    disconnect(a);
    uint64_t deadline = kvshmi_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    uint64_t free_since = 0;   /* when the registry lock was first seen free */
    int respawned = 0;         /* o.respawn was called for this dead writer */
    kv_status st = KV_IO;
    /* a cluster node's writer that stopped or died is never taken over
     * here (its file is written by the node's writer alone): wait for its
     * restart, as without continue_on_stop */
    int node = a->o.continue_on_stop && !a->stopped && registry_cluster_at(a->reg_path) != 0;
    for (;;) {
        reg_info ri;
        if (kvshmi_registry_read(a->reg_path, &ri) && ri.generation > old) {
            st = connect_writer(a, &ri);
            if (st == KV_OK) {
                a->stopped = 0;
                a->died = 0;
                return KV_OK;
            }
            /* the new writer refuses this ring for good (a cluster node's
             * writer: records the dead one applied were lost): say so now */
            if (st == KV_UNSUPPORTED) return st;
        }
        int dead = 0;
        if (a->stopped || !a->o.continue_on_stop || node || !registry_dead(a->reg_path, old)) {
            free_since = 0;
        } else if (!free_since) {
            free_since = kvshmi_now_ms();
        } else if (kvshmi_now_ms() - free_since >= TAKEOVER_GRACE_MS) {
            /* no successor took the registry within the grace */
            if (a->o.respawn && !respawned) {
                /* start one (it replays the dead writer's records) and wait
                 * for it with the ring, as for a restart */
                respawned = 1;
                if (a->o.respawn(a->o.respawn_ctx)) free_since = 0;
                continue;
            }
            /* replay the dead writer's applied records once (which marks it
             * stopped), before the ring's later records are committed below */
            char rerr[256] = "";
            st = kv_attach_recover(a->db_path, a->table, 0, NULL, rerr, sizeof rerr);
            if (st != KV_OK && st != KV_BUSY) return fail(a, st, "recover: %s", rerr);
            dead = st == KV_OK;
            a->died |= dead;
        }
        if (a->stopped || dead ||
            (a->o.continue_on_stop && !node && registry_stopped(a->reg_path, old))) {
            st = commit_ring_here(a);   /* also what was pushed since it stopped */
            if (st == KV_OK) {
                a->stopped = 1;
                return fail(a, KV_IO, "writer of %s %s", a->db_path,
                            a->died ? "died" : "stopped");
            }
            if (st != KV_BUSY) return st;   /* KV_BUSY: a new writer is starting */
        }
        if (kvshmi_now_ms() >= deadline) break;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return fail(a, st == KV_OK || st == KV_BUSY ? KV_IO : st,
                "writer of %s (generation %" PRIu64 ") is gone and none came back", a->db_path,
                old);
}

static kv_status reattach(kv_att *a) { return reattach_within(a, a->o.reattach_timeout_ms); }

/* 1 if the writer hung up on us. */
static int writer_gone(kv_att *a)
{
    if (a->sock < 0) return 1;
    struct pollfd p = {.fd = a->sock, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

/* After fork: this process gets its own ring, slot, socket and connection.
 * The inherited ones belong to the parent: their mappings/descriptors are
 * dropped in the child only (the SQLite handle is left alone: closing it
 * in the child could disturb the parent's locks). */
static kv_status after_fork(kv_att *a)
{
    char err[256];
    a->fork_gen = g_fork_gen;
    if (a->sock >= 0) close(a->sock);
    a->sock = -1;
    kvshm_ring_close(a->ring);         /* child's mapping and fd only */
    a->ring = NULL;
    a->db = NULL;
    a->last_pos = 0;
    a->applied_ok = 1;
    kvshm_status ks = kvshm_ring_create(a->o.ring_bytes, &a->ring);
    if (ks != KVSHM_OK) return fail(a, KV_IO, "ring: %s", kvshm_strerror(ks));
    kv_open_opts dbo = a->o.db;
    dbo.table = a->table;
    kv_status st = kv_db_open(a->db_path, &dbo, &a->db, err, sizeof err);
    if (st != KV_OK) return fail(a, st, "%s", err);
    kv_db_set_commit_guard(a->db, &a->guard);
    reg_info ri;
    if (a->r && kvshmi_registry_read(a->reg_path, &ri) && ri.generation == a->generation) {
        /* The inherited reader handle takes a slot of its own for the child
         * on its first use (kvshm rehome); enter/leave makes that happen. */
        if (kvshm_reader_enter(a->r) == KVSHM_OK) {
            kvshm_reader_leave(a->r);
            kv_status cst = connect_writer(a, &ri);
            if (cst == KV_OK) return KV_OK;
        }
    }
    a->r = NULL;   /* the inherited mapping stays mapped; the new writer's is used */
    return reattach(a);
}

/* Free the handle's own memory (descriptors, mappings and the connection
 * are the caller's to release first). */
static void att_free(kv_att *a)
{
    free(a->buf);
    free(a->db_path);
    free(a->reg_path);
    free(a);
}

static inline kv_status check(kv_att *a)
{
    if (__builtin_expect(a->fork_gen != g_fork_gen, 0)) return after_fork(a);
    if (__builtin_expect(!a->r, 0)) return reattach(a);
    return KV_OK;
}

/* check() for a read: without a writer it looks at the registry once and
 * does not wait; the read then goes to the own connection (a->r NULL). */
static inline kv_status check_read(kv_att *a)
{
    if (__builtin_expect(a->fork_gen != g_fork_gen, 0)) return after_fork(a);
    if (__builtin_expect(!a->r, 0)) reattach_within(a, 0);
    return KV_OK;
}

kv_status kv_attach(const char *db_path, const kv_attach_opts *o, kv_att **out, char *err,
                    size_t errlen)
{
    kv_attach_opts def;
    *out = NULL;
    pthread_once(&g_once, install_atfork);
    if (!o) {
        kv_attach_opts_default(&def);
        o = &def;
    }
    kv_att *a = calloc(1, sizeof *a);
    if (!a) return KV_NOMEM;
    a->sock = -1;
    a->o = *o;
    a->applied_ok = 1;
    a->fork_gen = g_fork_gen;
    snprintf(a->table, sizeof a->table, "%s", o->table ? o->table : "kv");
    kv_status st;
    reg_info ri;
    a->reg_path = registry_path(db_path, &a->db_path);
    if (!a->reg_path) {
        st = fail(a, KV_NOTFOUND, "no writer serves %s (%s)", db_path, strerror(errno));
        goto fail;
    }
    if (!kvshmi_registry_read(a->reg_path, &ri)) {
        st = fail(a, KV_NOTFOUND, "no writer serves %s", db_path);
        goto fail;
    }
    if (strcmp(ri.table, a->table)) {
        st = fail(a, KV_NOTFOUND, "the writer of %s serves table '%s', not '%s'", db_path,
                  ri.table, a->table);
        goto fail;
    }
    kvshm_status ks = kvshm_ring_create(o->ring_bytes, &a->ring);
    if (ks != KVSHM_OK) {
        st = fail(a, KV_IO, "ring: %s", kvshm_strerror(ks));
        goto fail;
    }
    kv_open_opts dbo = o->db;
    dbo.table = a->table;
    char e2[256];
    if ((st = kv_db_open(a->db_path, &dbo, &a->db, e2, sizeof e2)) != KV_OK) {
        fail(a, st, "%s", e2);
        goto fail;
    }
    a->guard.check = guard_check;
    a->guard.ctx = a;
    kv_db_set_commit_guard(a->db, &a->guard);
    if ((st = connect_writer(a, &ri)) != KV_OK) goto fail;
    *out = a;
    return KV_OK;
fail:
    if (err && errlen) snprintf(err, errlen, "%s", a->err);
    a->fork_gen = g_fork_gen;
    disconnect(a);
    kvshm_ring_close(a->ring);
    kv_db_close(a->db);
    att_free(a);
    return st;
}

const char *kv_att_errmsg(const kv_att *a) { return a ? a->err : ""; }
int kv_att_stopped(const kv_att *a) { return a->stopped ? 1 + a->died : 0; }
uint64_t kv_att_generation(const kv_att *a) { return a->generation; }

uint64_t kv_att_key_hash(const void *key, size_t klen) { return kvshm_key_hash(key, klen); }

uint64_t kv_att_stamp(const kv_att *a, uint64_t key_hash, int after_read)
{
    if (__builtin_expect(!a->r || !a->applied_ok || a->fork_gen != g_fork_gen, 0)) return 0;
    uint64_t e = kvshm_reader_stamp(a->r, key_hash, after_read);
    if (e & 1) return 0;
    return (e + 2) ^ (a->generation << 48);
}
void kv_att_counters(const kv_att *a, uint64_t *hits, uint64_t *misses)
{
    if (hits) *hits = a->hits;
    if (misses) *misses = a->misses;
}


/* ======================================================================
 * Waiting
 * ==================================================================== */

/* While a wait is not over: a writer that cannot commit (a full disk) fails
 * the wait once the fault has lasted FAULT_WAIT_MS of it, with its reason.
 * *since is the wait's own clock (0 before the first fault seen). */
static kv_status fault_check(kv_att *a, uint64_t *since)
{
    int64_t code = 0;
    uint32_t st = a->r ? kvshm_reader_fault(a->r, &code) : 0;
    if (!st) { *since = 0; return KV_OK; }
    uint64_t now = kvshmi_now_ms();
    if (!*since) *since = now;
    if (now - *since < FAULT_WAIT_MS) return KV_OK;
    return fail(a, KV_IO, "the writer of %s cannot commit (%s); this write is queued and is"
                " applied once a commit succeeds", a->db_path,
                code ? kv_sqlite_errstr((int)code) : kv_strerror((kv_status)st));
}

/* While waiting for a commit: a writer that refuses writes (a cluster node
 * that lost the lead, kvshm_writer_set_refusal) may never mark a write of
 * this client committed, since the cluster may not have it: once the
 * refusal has lasted FAULT_WAIT_MS of the wait, fail it with the refusal's
 * text. *since: as for fault_check. */
static kv_status refusal_check(kv_att *a, uint64_t *since)
{
    char why[KVSHM_REFUSE_MSG_MAX];
    if (!kvshm_reader_refusal(a->r, why, sizeof why)) { *since = 0; return KV_OK; }
    uint64_t now = kvshmi_now_ms();
    if (!*since) *since = now;
    if (now - *since < FAULT_WAIT_MS) return KV_OK;
    return fail(a, KV_UNSUPPORTED, "%s (a write of this process was not confirmed as"
                " replicated)", why);
}

/* Wait until the ring position pos is consumed (applied) or committed. */
static kv_status wait_pos(kv_att *a, uint64_t pos, int committed)
{
    uint64_t fault_since = 0, refused_since = 0, rung = kvshmi_now_ms();
    for (;;) {
        kvshm_status ks = committed ? kvshm_ring_wait_committed(a->ring, pos, WAIT_STEP_MS)
                                    : kvshm_ring_wait_consumed(a->ring, pos, WAIT_STEP_MS);
        if (ks == KVSHM_OK) return KV_OK;
        if (writer_gone(a)) {
            kv_status st = reattach(a);
            /* stopped: every record of the ring is committed here */
            if (st != KV_OK) return a->stopped ? KV_OK : st;
        } else if (a->r) {
            if (kvshmi_now_ms() - rung >= DOORBELL_AGAIN_MS) {
                kvshm_reader_ring_doorbell(a->r);   /* in case the writer slept past us */
                rung = kvshmi_now_ms();
            }
            kv_status st = fault_check(a, &fault_since);
            if (st == KV_OK && committed) st = refusal_check(a, &refused_since);
            if (st != KV_OK) return st;
        }
    }
}

kv_status kv_att_wait(kv_att *a, int committed)
{
    /* stopped (check or a reattach below): the ring is committed here */
    kv_status st = check(a);
    if (st) return a->stopped ? KV_OK : st;
    if (committed) {
        uint64_t pos;
        for (;;) {
            kvshm_status ks = kvshm_ring_push(a->ring, KVSHM_REC_SYNC, NULL, 0,
                                              WAIT_STEP_MS, &pos);
            if (ks == KVSHM_OK) break;
            if (ks != KVSHM_TIMEOUT && ks != KVSHM_E_FULL)
                return fail(a, KV_IO, "ring: %s", kvshm_strerror(ks));
            if (writer_gone(a) && (st = reattach(a)) != KV_OK) return a->stopped ? KV_OK : st;
        }
        a->last_pos = pos;
        kvshm_reader_ring_doorbell(a->r);
        st = wait_pos(a, pos, 1);
        if (st == KV_OK) a->applied_ok = 1;
        return st;
    }
    if (a->applied_ok) return KV_OK;
    st = wait_pos(a, a->last_pos, 0);
    if (st == KV_OK) a->applied_ok = 1;
    return st;
}

uint64_t kv_att_write_ticket(const kv_att *a) { return a->last_pos; }

int kv_att_applied(kv_att *a, uint64_t ticket)
{
    if (a->applied_ok || ticket == 0) return 1;
    if (!a->ring || a->fork_gen != g_fork_gen) return 0;
    /* free-running positions: compare by difference, as the ring's waits do */
    if ((int64_t)(kvshm_ring_head(a->ring) - ticket) < 0) return 0;
    if (ticket == a->last_pos) a->applied_ok = 1;
    return 1;
}

kv_status kv_attach_close(kv_att *a)
{
    if (!a) return KV_OK;
    kv_status st = KV_OK;
    /* nothing to wait for when the writer already committed our last
     * record (e.g. it stopped cleanly after its final commit): a SYNC
     * pushed now would wait for a writer that may never come */
    if (a->fork_gen == g_fork_gen && a->r && a->last_pos &&
        kvshm_ring_wait_committed(a->ring, a->last_pos, 0) != KVSHM_OK)
        st = kv_att_wait(a, 1);
    if (a->fork_gen != g_fork_gen) {
        /* inherited from the parent: release nothing of the parent's */
        if (a->sock >= 0) close(a->sock);
        att_free(a);
        return KV_OK;
    }
    disconnect(a);
    kvshm_ring_close(a->ring);
    kv_db_close(a->db);
    att_free(a);
    return st;
}

/* ======================================================================
 * Reads
 * ==================================================================== */

static int grow(kv_att *a, size_t need)
{
    if (need <= a->cap) return 0;
    size_t nc = a->cap ? a->cap : 256;
    while (nc < need) nc *= 2;
    uint8_t *nb = realloc(a->buf, nc);
    if (!nb) return -1;
    a->buf = nb;
    a->cap = nc;
    return 0;
}

static void push_small(kv_att *a, uint32_t type, const void *key, size_t klen)
{
    void *p;
    if (kvshm_ring_reserve(a->ring, (uint32_t)kvshm_keyrec_bytes(klen, 0), &p, 0) != KVSHM_OK)
        return;   /* ring full: the report is only a hint */
    kvshm_keyrec_encode(p, key, (uint32_t)klen, NULL, 0);
    kvshm_ring_publish(a->ring, type);   /* a hint: nobody waits for it */
}

static void maybe_stats(kv_att *a)
{
    uint64_t hits = a->hits + a->hits_above;
    if ((hits + a->misses) - (a->hits_rep + a->misses_rep) < STATS_EVERY) return;
    uint64_t s[2] = {hits - a->hits_rep, a->misses - a->misses_rep};
    uint64_t pos;
    if (kvshm_ring_push(a->ring, KVSHM_REC_STATS, s, sizeof s, 0, &pos) == KVSHM_OK) {
        a->hits_rep = hits;
        a->misses_rep = a->misses;
    }
}

void kv_att_add_hits(kv_att *a, uint64_t n)
{
    a->hits_above += n;
    maybe_stats(a);
}

/* Segment lookup into *v: KV_OK, KV_NOTFOUND (deleted), KV_NOTCACHED (not
 * cached: read SQLite), or a failure. Without v->alloc the value lands in
 * a->buf (grown as needed); with it, in the buffer alloc returns. */
static kv_status seg_get(kv_att *a, const void *key, size_t klen, kvshm_val *v)
{
    for (;;) {
        if (!a->r) {   /* no writer: the own connection answers */
            a->misses++;
            return KV_NOTCACHED;
        }
        if (!v->alloc) {
            v->buf = a->buf;
            v->cap = a->cap;
        }
        kvshm_status ks = kvshm_reader_get(a->r, key, klen, v);
        switch (ks) {
        case KVSHM_OK: a->hits++; return KV_OK;
        case KVSHM_DELETED: a->hits++; return KV_NOTFOUND;
        case KVSHM_NOTFOUND: a->misses++; return KV_NOTCACHED;
        case KVSHM_E_SMALLBUF:
            if (v->alloc || grow(a, v->len)) return fail(a, KV_NOMEM, "out of memory");
            continue;
        case KVSHM_E_NOMEM: return fail(a, KV_NOMEM, "out of memory");
        case KVSHM_E_STALE:
            reattach_within(a, 0);   /* none yet: a->r is NULL, read SQLite */
            continue;
        case KVSHM_E_INVAL: a->misses++; return KV_NOTCACHED;   /* key too long to cache */
        default: return fail(a, KV_CORRUPT, "segment read: %s", kvshm_strerror(ks));
        }
    }
}

/* kv_get_into's allocator of kv_att_get: the value lands once in a->buf,
 * grown to hold it (a value read from SQLite goes straight there). */
static void *buf_alloc(void *ctx, size_t n)
{
    kv_att *a = ctx;
    return grow(a, n ? n : 1) ? NULL : a->buf;
}

/* Whether a value of vlen bytes read after a miss is worth reporting: short
 * enough to be cached, and, for a large one (KV_GET_DIRECT_MIN bytes or
 * more, the writer's free-room rule), one the writer would load now
 * (kvshm_reader_miss_wanted). A report the writer would decline still costs
 * it a ring record and a lookup in SQLite; a loader reading more large
 * values than the segment holds would send one per read. */
static int miss_report(kv_att *a, const void *key, size_t klen, size_t vlen)
{
    if (vlen > MISS_VALUE_MAX || klen > KVSHM_MAX_KEY) return 0;
    return vlen < KV_GET_DIRECT_MIN || !a->r || kvshm_reader_miss_wanted(a->r, key, klen, vlen);
}

/* A segment miss: the own connection reads the value into alloc's buffer
 * (kv_get_into), and the value is reported when miss_report says so. */
static kv_status miss_get(kv_att *a, const void *key, size_t klen, kv_alloc_fn alloc,
                          void *ctx, size_t *vlen)
{
    kv_status st = kv_get_into(a->db, key, klen, KV_GET_DIRECT_MIN, alloc, ctx, vlen);
    if (st == KV_OK) {
        if (miss_report(a, key, klen, *vlen))
            push_small(a, KVSHM_REC_MISS, key, klen);
    } else if (st == KV_NOMEM) {
        fail(a, KV_NOMEM, "out of memory");
    } else if (st != KV_NOTFOUND) {
        fail(a, st, "%s", kv_db_errmsg(a->db));
    }
    maybe_stats(a);
    return st;
}

kv_status kv_att_get(kv_att *a, const void *key, size_t klen, const void **val, size_t *vlen)
{
    KV_ASSERT(a != NULL && val != NULL && vlen != NULL);
    kv_status st = check_read(a);
    if (st) return st;
    if (!a->applied_ok && (st = kv_att_wait(a, 0))) return st;
    kvshm_val v = {0};
    st = seg_get(a, key, klen, &v);
    if (st == KV_OK) {
        *val = a->buf;
        *vlen = v.len;
        maybe_stats(a);
        return KV_OK;
    }
    if (st != KV_NOTCACHED) return st;
    st = miss_get(a, key, klen, buf_alloc, a, vlen);
    if (st == KV_OK) *val = a->buf;
    return st;
}

kv_status kv_att_get_into(kv_att *a, const void *key, size_t klen, kv_alloc_fn alloc, void *ctx,
                          size_t *vlen)
{
    KV_ASSERT(a != NULL && alloc != NULL && vlen != NULL);
    kv_status st = check_read(a);
    if (st) return st;
    if (!a->applied_ok && (st = kv_att_wait(a, 0))) return st;
    kvshm_val v = {.alloc = alloc, .alloc_ctx = ctx};
    st = seg_get(a, key, klen, &v);
    if (st == KV_OK) {
        *vlen = v.len;
        maybe_stats(a);
        return KV_OK;
    }
    if (st != KV_NOTCACHED) return st;
    return miss_get(a, key, klen, alloc, ctx, vlen);
}

kv_status kv_att_exists(kv_att *a, const void *key, size_t klen, int *found)
{
    const void *v;
    size_t n;
    kv_status st = kv_att_get(a, key, klen, &v, &n);
    *found = st == KV_OK;
    return st == KV_NOTFOUND ? KV_OK : st;
}

/* ======================================================================
 * Writes
 * ==================================================================== */

/* Room for a record of len payload bytes in the ring. A full ring means the
 * writer has not drained what this batch published: ring the doorbell
 * (*published = 0: nothing left unannounced) and wait for room, re-attaching
 * when the writer is gone. Precondition: check(a) succeeded. */
static kv_status batch_reserve(kv_att *a, uint32_t len, void **p, int *published)
{
    kvshm_status ks = kvshm_ring_reserve(a->ring, len, p, 0);
    uint64_t fault_since = 0;
    while (ks != KVSHM_OK) {
        if (ks == KVSHM_E_INVAL) return fail(a, KV_INVALID, "record too large for the ring");
        kvshm_reader_ring_doorbell(a->r);
        *published = 0;
        if (writer_gone(a)) {
            kv_status st = reattach(a);
            if (st) return st;
        } else {
            kv_status st = fault_check(a, &fault_since);
            if (st) return st;
        }
        ks = kvshm_ring_reserve(a->ring, len, p, WAIT_STEP_MS);
    }
    return KV_OK;
}

/* Publish one PUT/DEL record without ringing the doorbell; *published
 * counts the records the writer has not been told about. */
static kv_status batch_push(kv_att *a, uint32_t type, const void *key, size_t klen,
                            const void *val, size_t vlen, int *published)
{
    KV_ASSERT(a->ring != NULL && a->r != NULL && klen >= 1 && klen <= KVSHM_MAX_KEY);
    /* a cluster follower's writer takes no writes: the leader's does */
    char why[KVSHM_REFUSE_MSG_MAX];
    if (__builtin_expect(kvshm_reader_refusal(a->r, why, sizeof why), 0))
        return fail(a, KV_UNSUPPORTED, "%s", why);
    void *p;
    kv_status st = batch_reserve(a, (uint32_t)kvshm_keyrec_bytes(klen, vlen), &p, published);
    if (st) return st;
    kvshm_keyrec_encode(p, key, (uint32_t)klen, val, (uint32_t)vlen);
    /* the writer drains our ring from its loop or its idle spin; only a
     * sleeping writer needs the doorbell (batch_announce) */
    a->last_pos = kvshm_ring_publish_quiet(a->ring, type);
    a->applied_ok = 0;
    (*published)++;
    return KV_OK;
}

/* Ring the doorbell for the records published since the last ring. */
static void batch_announce(kv_att *a, int *published)
{
    if (*published && a->r) kvshm_reader_ring_doorbell(a->r);
    *published = 0;
}

/* One record: publish it, then ring the doorbell if the writer sleeps. */
static kv_status push_kv(kv_att *a, uint32_t type, const void *key, size_t klen,
                         const void *val, size_t vlen)
{
    int published = 0;
    kv_status st = batch_push(a, type, key, klen, val, vlen, &published);
    batch_announce(a, &published);
    return st;
}

kv_status kv_att_put(kv_att *a, const void *key, size_t klen, const void *val, size_t vlen,
                     int flags)
{
    KV_ASSERT(a != NULL && (key != NULL || klen == 0) && (val != NULL || vlen == 0));
    kv_status st = check(a);
    if (st) return st;
    if (klen == 0 || klen > KVSHM_MAX_KEY)
        return fail(a, KV_INVALID, "key length must be 1..%u bytes in shared mode", KVSHM_MAX_KEY);
    if (KVSHM_REC_KEYHDR + klen + vlen + 8 > kvshm_ring_capacity(a->ring) / 2) {
        /* Too large for the ring: hand the writer a memfd holding the value. */
        int fd = memfd_create("kvault-value", MFD_CLOEXEC);
        if (fd < 0) return fail(a, KV_IO, "memfd: %s", strerror(errno));
        size_t off = 0;
        while (off < vlen) {
            ssize_t w = write(fd, (const uint8_t *)val + off, vlen - off);
            if (w < 0) {
                if (errno == EINTR) continue;
                close(fd);
                return fail(a, KV_IO, "memfd write: %s", strerror(errno));
            }
            off += (size_t)w;
        }
        lseek(fd, 0, SEEK_SET);
        st = kv_att_put_fd(a, key, klen, fd, vlen, 0);
        close(fd);
        return st;
    }
    if ((st = push_kv(a, KVSHM_REC_PUT, key, klen, val, vlen))) return st;
    if (flags & KV_ATT_SYNC) return kv_att_wait(a, 1);
    if (flags & KV_ATT_ASYNC) return KV_OK;
    return kv_att_wait(a, 0);
}

kv_status kv_att_delete(kv_att *a, const void *key, size_t klen, int *existed)
{
    size_t removed = 0;
    kv_status st = kv_att_delete_many(a, &key, &klen, 1, 0, &removed);
    if (existed) *existed = removed != 0;
    return st;
}

kv_status kv_att_count(kv_att *a, int64_t *count)
{
    kv_status st = kv_att_wait(a, 1);
    if (st) return st;
    st = kv_count(a->db, count);
    if (st) fail(a, st, "%s", kv_db_errmsg(a->db));
    return st;
}

kv_status kv_att_keys_batch(kv_att *a, const void *prefix, size_t plen, const void *after,
                            size_t alen, size_t max, kv_keys **out)
{
    kv_status st = after ? check(a) : kv_att_wait(a, 1);  /* first batch: commit first */
    if (st) return st;
    st = kv_keys_batch(a->db, prefix, plen, after, alen, max, out);
    if (st) fail(a, st, "%s", kv_db_errmsg(a->db));
    return st;
}

/* ======================================================================
 * Streams and requests
 * ==================================================================== */

kv_status kv_att_put_fd(kv_att *a, const void *key, size_t klen, int fd, uint64_t size,
                        size_t chunk)
{
    kv_status st = check(a);
    if (st) return st;
    if ((st = kv_att_wait(a, 0))) return st;   /* our earlier writes first */
    uint64_t ch = chunk;
    for (;;) {
        st = request(a, KVSHM_MSG_PUT_FILE, size, &ch, sizeof ch, key, klen, fd, NULL, 0, NULL);
        if (st != KV_IO || !writer_gone(a)) return st;
        if ((st = reattach(a))) return st;
    }
}

kv_status kv_att_get_to_fd(kv_att *a, const void *key, size_t klen, int fd, size_t chunk,
                           uint64_t *written)
{
    *written = 0;
    kv_status st = check_read(a);
    if (st) return st;
    if (!a->applied_ok && (st = kv_att_wait(a, 0))) return st;
    kvshm_val v = {0};
    st = seg_get(a, key, klen, &v);
    size_t n = v.len;
    if (st == KV_OK) {
        size_t off = 0;
        while (off < n) {
            ssize_t w = write(fd, a->buf + off, n - off);
            if (w < 0) {
                if (errno == EINTR) continue;
                return fail(a, KV_IO, "write: %s", strerror(errno));
            }
            off += (size_t)w;
        }
        *written = n;
        return KV_OK;
    }
    if (st != KV_NOTCACHED) return st;
    st = kv_get_to_fd(a->db, key, klen, fd, chunk, written);
    if (st != KV_OK && st != KV_NOTFOUND) fail(a, st, "%s", kv_db_errmsg(a->db));
    return st;
}

static kv_status simple_request(kv_att *a, uint32_t type, const void *p, size_t l, char *out,
                                size_t cap)
{
    kv_status st = check(a);
    if (st) return st;
    for (;;) {
        st = request(a, type, 0, p, l, NULL, 0, -1, out, cap, NULL);
        if (st != KV_IO || !writer_gone(a)) return st;
        if ((st = reattach(a))) return st;
    }
}

kv_status kv_att_record_feature(kv_att *a, const char *name)
{
    return simple_request(a, KVSHM_MSG_FEATURE, name, strlen(name), NULL, 0);
}

kv_status kv_att_optimize(kv_att *a)
{
    return simple_request(a, KVSHM_MSG_OPTIMIZE, NULL, 0, NULL, 0);
}

kv_status kv_att_checkpoint(kv_att *a)
{
    return simple_request(a, KVSHM_MSG_CHECKPOINT, NULL, 0, NULL, 0);
}

kv_status kv_att_status(kv_att *a, char *buf, size_t cap)
{
    return simple_request(a, KVSHM_MSG_STATUS, NULL, 0, buf, cap);
}

/* ======================================================================
 * Batches: submit every record, ring the doorbell once, wait once
 * ==================================================================== */

/* End of a batch: announce it, then return as `flags` say (kv_att_put). */
static kv_status batch_finish(kv_att *a, int published, int flags)
{
    batch_announce(a, &published);
    if (flags & KV_ATT_SYNC) return kv_att_wait(a, 1);
    if (flags & KV_ATT_ASYNC) return KV_OK;
    return kv_att_wait(a, 0);
}

static int key_ok(size_t klen) { return klen >= 1 && klen <= KVSHM_MAX_KEY; }

kv_status kv_att_put_many(kv_att *a, const kv_item *items, size_t n, int flags)
{
    KV_ASSERT(a != NULL && (items != NULL || n == 0));
    kv_status st = check(a);
    if (st) return st;
    for (size_t i = 0; i < n; i++)
        if (!key_ok(items[i].klen))
            return fail(a, KV_INVALID, "key length must be 1..%u bytes in shared mode",
                        KVSHM_MAX_KEY);
    size_t half = kvshm_ring_capacity(a->ring) / 2;
    int published = 0;
    for (size_t i = 0; i < n; i++) {
        const kv_item *it = &items[i];
        if (KVSHM_REC_KEYHDR + it->klen + it->vlen + 8 > half) {
            batch_announce(a, &published);   /* the stream goes after what came before */
            st = kv_att_put(a, it->key, it->klen, it->val, it->vlen, 0);
        } else {
            st = batch_push(a, KVSHM_REC_PUT, it->key, it->klen, it->val, it->vlen, &published);
        }
        if (st) {
            batch_announce(a, &published);
            return st;
        }
    }
    return batch_finish(a, published, flags);
}

/* One key of a delete batch, sorted by hash to find repeated keys. */
typedef struct del_ent {
    uint64_t h;
    size_t i;
} del_ent;

static int del_ent_cmp(const void *x, const void *y)
{
    const del_ent *a = x, *b = y;
    if (a->h != b->h) return a->h < b->h ? -1 : 1;
    return a->i < b->i ? -1 : a->i > b->i;
}

/* dup[i] = 1 for every key equal to an earlier one (keys[j], j < i). */
static int mark_repeats(const void *const *keys, const size_t *klens, size_t n, uint8_t *dup)
{
    memset(dup, 0, n);
    if (n < 2) return 0;
    del_ent *e = malloc(n * sizeof *e);
    if (!e) return -1;
    for (size_t i = 0; i < n; i++) e[i] = (del_ent){kvshm_key_hash(keys[i], klens[i]), i};
    qsort(e, n, sizeof *e, del_ent_cmp);
    for (size_t s = 0; s < n; s++)          /* within a run of equal hashes, in index order */
        for (size_t t = s + 1; t < n && e[t].h == e[s].h; t++)
            if (!dup[e[t].i] && klens[e[t].i] == klens[e[s].i] &&
                !memcmp(keys[e[t].i], keys[e[s].i], klens[e[s].i]))
                dup[e[t].i] = 1;
    free(e);
    return 0;
}

kv_status kv_att_delete_many(kv_att *a, const void *const *keys, const size_t *klens, size_t n,
                             int flags, size_t *removed)
{
    KV_ASSERT(a != NULL && ((keys != NULL && klens != NULL) || n == 0));
    if (removed) *removed = 0;
    kv_status st = check(a);
    if (st) return st;
    uint8_t *skip = malloc(n ? n : 1);
    if (!skip || mark_repeats(keys, klens, n, skip)) {
        free(skip);
        return fail(a, KV_NOMEM, "out of memory");
    }
    /* Look every key up before submitting any record: the first lookup
     * waits for this handle's earlier writes, the others do not wait. */
    size_t count = 0;
    for (size_t i = 0; i < n && st == KV_OK; i++) {
        int found = 0;
        if (skip[i] || (st = kv_att_exists(a, keys[i], klens[i], &found))) continue;
        if (found && !key_ok(klens[i]))
            st = fail(a, KV_INVALID, "key too long for shared mode");
        count += (size_t)found;
        skip[i] = !key_ok(klens[i]);
    }
    int published = 0;
    for (size_t i = 0; i < n && st == KV_OK; i++)
        if (!skip[i]) st = batch_push(a, KVSHM_REC_DEL, keys[i], klens[i], NULL, 0, &published);
    free(skip);
    if (st) {
        batch_announce(a, &published);
        return st;
    }
    if (removed) *removed = count;
    return batch_finish(a, published, flags);
}
