/*
 * reader_loop_epoll.c -- kvault-reader's event loop on epoll (level
 * triggered), the fallback when io_uring lacks multishot accept/receive.
 * One round (reader.h): epoll_wait (without blocking while replies wait
 * for the writer; when it finds nothing, reader_wait_writes) -> accept /
 * receive and process every ready connection -> reader_round_end -> one
 * send per connection with sendable replies. Interest per connection: EPOLLIN unless its output is over
 * READER_OUT_HIGH (back-pressure), EPOLLOUT while output is left unsent.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "reader.h"

#define MAX_EVENTS 256
#define LISTEN_TAG ((uint64_t)1 << 63)   /* epoll data of a listening socket: tag | index */

static void set_interest(int ep, rconn *c)
{
    /* no EPOLLIN once nothing more will be read: an EOF stays readable */
    unsigned want = (c->stalled || c->closing || c->eof ? 0 : EPOLLIN) |
                    (reader_sendable(c) ? EPOLLOUT : 0);
    if (want == c->loop_flags) return;
    struct epoll_event ev = {.events = want, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->loop_flags = want;
}

static void accept_all(reader *r, int ep, int lfd)
{
    for (int i = 0; i < 64; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                fprintf(stderr, "kvault-reader: accept: %m\n");
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  /* fails harmlessly on unix */
        rconn *c = reader_conn_new(r, fd);
        if (!c) continue;
        c->loop_flags = EPOLLIN;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev)) reader_conn_free(r, c);
    }
}

/* Receive what is there (one recv; level-triggered epoll reports the rest). */
static void receive(reader *r, rconn *c)
{
    size_t want = reader_recv_hint(r, c);
    if (resp_buf_reserve(&c->in, want)) {
        c->dead = 1;
        reader_mark_dirty(r, c);
        return;
    }
    ssize_t n = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
    if (n > 0) {
        c->in.len += (size_t)n;
        if (reader_query_over(r, c)) {
            c->dead = 1;              /* as redis-server: closed without a reply */
            reader_mark_dirty(r, c);
            return;
        }
        reader_conn_process(r, c);
    } else if (n == 0) {
        c->eof = 1;                   /* peer done sending: answer what came, then close */
        reader_conn_process(r, c);
        reader_mark_dirty(r, c);
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        c->dead = 1;
        reader_mark_dirty(r, c);
    }
}

/* Send c's sendable output (held replies stay); 0 keep, -1 close. */
static int flush_out(rconn *c)
{
    size_t len;
    while ((len = reader_sendable(c)) != 0) {
        ssize_t n = send(c->fd, c->out.p, len, MSG_NOSIGNAL);
        if (n > 0) {
            reader_sent(c, (size_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
        if (n < 0 && errno == EINTR) continue;
        return -1;
    }
    return (c->closing || c->eof) && reader_out_done(c) ? -1 : 0;
}

int reader_loop_epoll(reader *r)
{
    reader_set_io_name(r, "epoll");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        fprintf(stderr, "kvault-reader: epoll_create1: %m\n");
        return -1;
    }
    int nl;
    const int *lfds = reader_listen_fds(r, &nl);
    for (int i = 0; i < nl; i++) {
        /* EPOLLEXCLUSIVE: of several readers sharing one inherited socket,
         * one is woken per connection */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.u64 = LISTEN_TAG | (uint64_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, lfds[i], &ev)) {
            fprintf(stderr, "kvault-reader: epoll_ctl: %m\n");
            close(ep);
            return -1;
        }
    }
    struct epoll_event evs[MAX_EVENTS];
    rconn *stalled = NULL;   /* connections to process again once their output drained */
    while (!reader_stopping(r)) {
        int holding = reader_holding(r);
        int n = epoll_wait(ep, evs, MAX_EVENTS, stalled || holding ? 0 : 1000);
        if (n < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "kvault-reader: epoll_wait: %m\n");
            break;
        }
        if (n == 0 && holding && !stalled) reader_wait_writes(r);   /* nothing else to do */
        for (rconn *c = stalled, *next; c; c = next) {
            next = c->next_dirty;
            c->next_dirty = NULL;
            reader_conn_process(r, c);
        }
        stalled = NULL;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 & LISTEN_TAG) {
                accept_all(r, ep, lfds[evs[i].data.u64 & ~LISTEN_TAG]);
                continue;
            }
            rconn *c = evs[i].data.ptr;
            if (c->dead) continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                if (c->closing || c->eof) reader_mark_dirty(r, c);
                else receive(r, c);
            }
            if (evs[i].events & EPOLLOUT) reader_mark_dirty(r, c);
        }
        rconn *list = reader_round_end(r);
        for (rconn *c = list, *next; c; c = next) {
            next = c->next_dirty;
            c->dirty = 0;
            c->next_dirty = NULL;
            if (c->dead || flush_out(c)) {
                reader_conn_free(r, c);
                continue;
            }
            if (c->stalled && c->out.len < READER_OUT_HIGH) {
                c->stalled = 0;
                if (c->in.len) {
                    c->next_dirty = stalled;   /* process the rest next round */
                    stalled = c;
                }
            }
            set_interest(ep, c);
        }
        reader_tick(r);
    }
    while (reader_conns(r)) reader_conn_free(r, reader_conns(r));
    close(ep);
    return 0;
}
