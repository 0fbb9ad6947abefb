/*
 * reader_loop_uring.c -- kvault-reader's event loop on io_uring (liburing).
 *
 * Each listening socket has one multishot accept; each connection one
 * multishot receive into provided buffers (a buffer ring of BUF_COUNT x
 * BUF_SIZE bytes registered with the kernel): the bytes are appended to the
 * connection's input and the buffer goes straight back to the ring. A round
 * (reader.h) is: submit every queued request and wait for at least one
 * completion in ONE io_uring_enter (while replies wait for the writer:
 * submit without waiting, and when nothing completed, reader_wait_writes)
 * -> handle every completion (receives are processed as they come) ->
 * reader_round_end -> queue one send per connection with sendable replies. So a round of many clients costs one system call
 * instead of epoll's wait + one recv + one send per client.
 *
 * A send in flight owns its bytes: a connection's replies are written into
 * `out` while the previous batch is sent from `sending`; the two swap when
 * the send completes. A connection is freed only once none of its requests
 * is in flight (closing cancels them first).
 *
 * Needs multishot accept (Linux 5.19) and multishot receive with buffer
 * rings (Linux 6.0); reader_uring_supported() checks before the loop starts.
 */
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "kv_assert.h"
#include "reader.h"

#define RING_ENTRIES 1024
#define BUF_COUNT 512            /* provided receive buffers (power of two) */
#define BUF_SIZE 16384
#define BUF_GROUP 0

/* user_data: pointer | op in the low bits (calloc'd connections are 16-aligned);
 * an accept carries the listening socket's index instead of a pointer */
enum { OP_RECV = 0, OP_SEND = 1, OP_ACCEPT = 2, OP_CANCEL = 3 };
#define OP_MASK 3u

/* Per-connection loop state (rconn.loop_data). */
typedef struct uconn {
    resp_buf sending;   /* bytes of the send in flight */
    size_t sent;
    int inflight;       /* requests whose last completion has not come */
    unsigned recv_armed : 1, send_busy : 1, freeing : 1;
} uconn;

typedef struct uloop {
    struct io_uring ring;
    struct io_uring_buf_ring *br;
    char *bufs;
    reader *r;
    const int *lfds;
    int nl;
} uloop;

static struct io_uring_sqe *sqe_get(uloop *L)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&L->ring);
    while (!sqe) {
        io_uring_submit(&L->ring);
        sqe = io_uring_get_sqe(&L->ring);
    }
    return sqe;
}

static void arm_accept(uloop *L, int i)
{
    struct io_uring_sqe *sqe = sqe_get(L);
    io_uring_prep_multishot_accept(sqe, L->lfds[i], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    io_uring_sqe_set_data64(sqe, ((uint64_t)i << 2) | OP_ACCEPT);
}

static void arm_recv(uloop *L, rconn *c)
{
    uconn *u = c->loop_data;
    struct io_uring_sqe *sqe = sqe_get(L);
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BUF_GROUP;
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_RECV);
    u->recv_armed = 1;
    u->inflight++;
}

static void free_conn(uloop *L, rconn *c)
{
    uconn *u = c->loop_data;
    resp_buf_free(&u->sending);
    free(u);
    reader_conn_free(L->r, c);
}

/* Close c: at once when nothing is in flight, else cancel its requests and
 * free it when the last one completes. */
static void start_close(uloop *L, rconn *c)
{
    uconn *u = c->loop_data;
    if (u->freeing) return;
    u->freeing = 1;
    if (!u->inflight) {
        free_conn(L, c);
        return;
    }
    shutdown(c->fd, SHUT_RDWR);
    struct io_uring_sqe *sqe = sqe_get(L);
    io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, OP_CANCEL);
}

/* Send c's sendable replies if no send is in flight. */
static void start_send(uloop *L, rconn *c)
{
    uconn *u = c->loop_data;
    if (u->send_busy || u->freeing) return;
    size_t len = reader_sendable(c);
    if (!len) {
        if ((c->closing || c->eof) && reader_out_done(c)) start_close(L, c);
        return;
    }
    if (len == c->out.len) {        /* all of it: swap the buffers */
        resp_buf t = u->sending;
        u->sending = c->out;
        c->out = t;
        c->out.len = 0;
    } else {                        /* a held tail stays in out */
        KV_ASSERT_INTERNAL(u->sending.len == 0);
        if (resp_buf_append(&u->sending, c->out.p, len)) {
            c->dead = 1;
            start_close(L, c);
            return;
        }
        reader_sent(c, len);
    }
    u->sent = 0;
    struct io_uring_sqe *sqe = sqe_get(L);
    io_uring_prep_send(sqe, c->fd, u->sending.p, u->sending.len, MSG_NOSIGNAL);
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_SEND);
    u->send_busy = 1;
    u->inflight++;
}

static void on_accept(uloop *L, int i, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE)) arm_accept(L, i);
    if (cqe->res < 0) {
        if (cqe->res != -EAGAIN && cqe->res != -ECONNABORTED && cqe->res != -EINTR)
            fprintf(stderr, "kvault-reader: accept: %s\n", strerror(-cqe->res));
        return;
    }
    int fd = cqe->res;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  /* fails harmlessly on unix */
    rconn *c = reader_conn_new(L->r, fd);
    if (!c) return;
    c->loop_data = calloc(1, sizeof(uconn));
    if (!c->loop_data) {
        reader_conn_free(L->r, c);
        return;
    }
    arm_recv(L, c);
}

static void on_recv(uloop *L, rconn *c, struct io_uring_cqe *cqe)
{
    uconn *u = c->loop_data;
    int more = cqe->flags & IORING_CQE_F_MORE;
    if (!more) {
        u->recv_armed = 0;
        u->inflight--;
    }
    if (cqe->flags & IORING_CQE_F_BUFFER) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        char *buf = L->bufs + (size_t)bid * BUF_SIZE;
        if (cqe->res > 0 && !u->freeing && !c->closing && !c->eof && !c->dead &&
            resp_buf_append(&c->in, buf, (size_t)cqe->res) != 0)
            c->dead = 1;
        io_uring_buf_ring_add(L->br, buf, BUF_SIZE, (unsigned short)bid,
                              io_uring_buf_ring_mask(BUF_COUNT), 0);
        io_uring_buf_ring_advance(L->br, 1);
    }
    if (u->freeing) {
        if (!u->inflight) free_conn(L, c);
        return;
    }
    if (cqe->res > 0 && !c->dead && !c->closing && !c->eof) {
        if (reader_query_over(L->r, c)) c->dead = 1;   /* as redis-server: closed, no reply */
        else if (!c->stalled) reader_conn_process(L->r, c);
    } else if (cqe->res == 0) {
        c->eof = 1;              /* peer done sending: answer what came, then close */
        if (!c->stalled) reader_conn_process(L->r, c);
    } else if (cqe->res < 0 && cqe->res != -ENOBUFS) {
        c->dead = 1;
    }
    if (c->dead || c->closing || c->eof) reader_mark_dirty(L->r, c);
    else if (!more) arm_recv(L, c);   /* ENOBUFS or the kernel ended the multishot */
}

static void on_send(uloop *L, rconn *c, struct io_uring_cqe *cqe)
{
    uconn *u = c->loop_data;
    u->send_busy = 0;
    u->inflight--;
    if (u->freeing) {
        if (!u->inflight) free_conn(L, c);
        return;
    }
    if (cqe->res < 0) {
        if (cqe->res == -EAGAIN || cqe->res == -EINTR) {
            cqe->res = 0;
        } else {
            c->dead = 1;         /* closed in the send phase, off every list */
            reader_mark_dirty(L->r, c);
            return;
        }
    }
    u->sent += (size_t)cqe->res;
    if (u->sent < u->sending.len) {           /* short send: the rest */
        struct io_uring_sqe *sqe = sqe_get(L);
        io_uring_prep_send(sqe, c->fd, u->sending.p + u->sent, u->sending.len - u->sent,
                           MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)c | OP_SEND);
        u->send_busy = 1;
        u->inflight++;
        return;
    }
    u->sending.len = 0;
    if (c->stalled && c->out.len < READER_OUT_HIGH) reader_conn_process(L->r, c);
    if (reader_sendable(c) || ((c->closing || c->eof) && reader_out_done(c)))
        reader_mark_dirty(L->r, c);
}

static int setup(uloop *L, reader *r)
{
    memset(L, 0, sizeof *L);
    L->r = r;
    struct io_uring_params p = {0};
    p.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN;
    int rc = io_uring_queue_init_params(RING_ENTRIES, &L->ring, &p);
    if (rc < 0) {
        memset(&p, 0, sizeof p);
        rc = io_uring_queue_init_params(RING_ENTRIES, &L->ring, &p);
    }
    if (rc < 0) return rc;
    size_t br_bytes = BUF_COUNT * sizeof(struct io_uring_buf);
    L->br = mmap(NULL, br_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    L->bufs = malloc((size_t)BUF_COUNT * BUF_SIZE);
    if (L->br == MAP_FAILED || !L->bufs) {
        rc = -ENOMEM;
        goto fail;
    }
    struct io_uring_buf_reg reg = {.ring_addr = (uint64_t)(uintptr_t)L->br,
                                   .ring_entries = BUF_COUNT, .bgid = BUF_GROUP};
    rc = io_uring_register_buf_ring(&L->ring, &reg, 0);
    if (rc < 0) goto fail;
    io_uring_buf_ring_init(L->br);
    for (int i = 0; i < BUF_COUNT; i++)
        io_uring_buf_ring_add(L->br, L->bufs + (size_t)i * BUF_SIZE, BUF_SIZE, (unsigned short)i,
                              io_uring_buf_ring_mask(BUF_COUNT), i);
    io_uring_buf_ring_advance(L->br, BUF_COUNT);
    return 0;
fail:
    if (L->br && L->br != MAP_FAILED) munmap(L->br, br_bytes);
    free(L->bufs);
    io_uring_queue_exit(&L->ring);
    return rc < 0 ? rc : -ENOMEM;
}

static void teardown(uloop *L)
{
    io_uring_queue_exit(&L->ring);
    munmap(L->br, BUF_COUNT * sizeof(struct io_uring_buf));
    free(L->bufs);
}

int reader_uring_supported(void)
{
    struct utsname u;
    int major = 0, minor = 0;
    if (uname(&u) || sscanf(u.release, "%d.%d", &major, &minor) != 2 || major < 6) return 0;
    uloop L;
    if (setup(&L, NULL)) return 0;
    teardown(&L);
    return 1;
}

int reader_loop_uring(reader *r)
{
    uloop L;
    int rc = setup(&L, r);
    if (rc) {
        fprintf(stderr, "kvault-reader: io_uring setup: %s; using epoll\n", strerror(-rc));
        return -1;
    }
    reader_set_io_name(r, "uring");
    L.lfds = reader_listen_fds(r, &L.nl);
    for (int i = 0; i < L.nl; i++) arm_accept(&L, i);
    struct __kernel_timespec ts = {.tv_sec = 1};
    while (!reader_stopping(r)) {
        struct io_uring_cqe *cqe;
        int holding = reader_holding(r);
        /* replies wait for the writer: submit, take what completed, and
         * block on the writer only when nothing did */
        rc = holding ? io_uring_submit(&L.ring)
                     : io_uring_submit_and_wait_timeout(&L.ring, &cqe, 1, &ts, NULL);
        if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY) {
            fprintf(stderr, "kvault-reader: io_uring wait: %s\n", strerror(-rc));
            break;
        }
        if (holding && io_uring_cq_ready(&L.ring) == 0) reader_wait_writes(r);
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&L.ring, head, cqe) {
            seen++;
            uint64_t ud = cqe->user_data;
            unsigned op = (unsigned)(ud & OP_MASK);
            if (op == OP_ACCEPT) on_accept(&L, (int)(ud >> 2), cqe);
            else if (op == OP_CANCEL) continue;
            else if (op == OP_RECV) on_recv(&L, (rconn *)(uintptr_t)(ud & ~(uint64_t)OP_MASK), cqe);
            else on_send(&L, (rconn *)(uintptr_t)(ud & ~(uint64_t)OP_MASK), cqe);
        }
        io_uring_cq_advance(&L.ring, seen);
        rconn *list = reader_round_end(r);
        for (rconn *c = list, *next; c; c = next) {
            next = c->next_dirty;
            c->dirty = 0;
            c->next_dirty = NULL;
            if (c->dead) start_close(&L, c);
            else start_send(&L, c);
        }
        reader_tick(r);
    }
    teardown(&L);   /* the kernel drops every request in flight */
    while (reader_conns(r)) free_conn(&L, reader_conns(r));
    return 0;
}
