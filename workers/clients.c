/*
 * clients.c -- the writer's unix socket and its clients' submission rings.
 *
 * The socket is SOCK_SEQPACKET in the abstract namespace (no file to clean
 * up after a crash); one connection per attached process, kept open for the
 * process's lifetime, so a hang-up tells the writer the client is gone.
 * Requests are served from the writer loop (wr_sock_poll, non-blocking):
 * after sending, a client bumps the slot file's request count and rings the
 * doorbell (kvshm_reader_flag_request), which wakes the loop; the loop polls
 * the socket when the count moved, and otherwise once a millisecond for
 * accepts and hang-ups (loop.c).
 *
 * Ring records are untrusted input: lengths are checked against the payload
 * before anything is applied; a malformed ring drops its client.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "kv_assert.h"
#include "writer.h"

/* ---- socket plumbing -------------------------------------------------- */

static socklen_t abstract_addr(const char *name, struct sockaddr_un *a)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    size_t n = strlen(name);
    if (n > sizeof a->sun_path - 2) n = sizeof a->sun_path - 2;
    memcpy(a->sun_path + 1, name, n);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

int wr_sock_listen(wr_state *ws)
{
    struct sockaddr_un a;
    socklen_t alen = abstract_addr(ws->sock_name, &a);
    ws->lsock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ws->lsock < 0) return -1;
    if (bind(ws->lsock, (struct sockaddr *)&a, alen) != 0 || listen(ws->lsock, 128) != 0) {
        wr_log("bind/listen @%s: %s", ws->sock_name, strerror(errno));
        return -1;
    }
    ws->ep = epoll_create1(EPOLL_CLOEXEC);
    if (ws->ep < 0) return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    return epoll_ctl(ws->ep, EPOLL_CTL_ADD, ws->lsock, &ev);
}

static void reply(int sock, uint32_t type, int32_t status, uint64_t arg, const char *msg,
                  size_t mlen)
{
    char buf[KVSHM_MSG_MAX];
    struct kvshm_msg m = {.m_magic = KVSHM_PROTO_MAGIC, .m_type = type | KVSHM_MSG_REPLY,
                          .m_status = status, .m_arg = arg};
    if (mlen > sizeof buf - sizeof m) mlen = sizeof buf - sizeof m;
    m.m_len = (uint32_t)mlen;
    memcpy(buf, &m, sizeof m);
    if (mlen) memcpy(buf + sizeof m, msg, mlen);
    /* A client that went away gets nothing; the hang-up is seen later. */
    if (send(sock, buf, sizeof m + mlen, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno != EPIPE)
        wr_log("reply: %s", strerror(errno));
}

void wr_reply(int sock, uint32_t type, int32_t status, uint64_t arg, const void *payload,
              size_t len)
{
    reply(sock, type, status, arg, payload, len);
}

/* Replies of one wr_reply_many call at most; more are sent in rounds. */
#define REPLY_MANY_MAX 64

void wr_reply_many(const wr_reply_msg *msgs, size_t n)
{
    struct kvshm_msg hdr[REPLY_MANY_MAX];
    struct iovec iov[REPLY_MANY_MAX][2];
    struct mmsghdr mm[REPLY_MANY_MAX];
    uint8_t sent[REPLY_MANY_MAX];
    if (n > REPLY_MANY_MAX) {
        wr_reply_many(msgs, REPLY_MANY_MAX);
        wr_reply_many(msgs + REPLY_MANY_MAX, n - REPLY_MANY_MAX);
        return;
    }
    memset(sent, 0, n);
    for (size_t first = 0; first < n; first++) {
        if (sent[first]) continue;
        int sock = msgs[first].sock;
        unsigned k = 0;
        for (size_t i = first; i < n; i++) {   /* this socket's replies, in order */
            const wr_reply_msg *r = &msgs[i];
            if (sent[i] || r->sock != sock) continue;
            sent[i] = 1;
            size_t len = r->len;
            if (len > KVSHM_MSG_MAX - sizeof hdr[k]) len = KVSHM_MSG_MAX - sizeof hdr[k];
            hdr[k] = (struct kvshm_msg){.m_magic = KVSHM_PROTO_MAGIC,
                                        .m_type = r->type | KVSHM_MSG_REPLY,
                                        .m_status = r->status, .m_arg = r->arg,
                                        .m_len = (uint32_t)len};
            iov[k][0] = (struct iovec){&hdr[k], sizeof hdr[k]};
            iov[k][1] = (struct iovec){(void *)r->payload, len};
            mm[k] = (struct mmsghdr){.msg_hdr = {.msg_iov = iov[k], .msg_iovlen = len ? 2 : 1}};
            k++;
        }
        /* A client that went away gets nothing; the hang-up is seen later. */
        for (unsigned done = 0; done < k;) {
            int m = sendmmsg(sock, mm + done, k - done, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (m > 0) {
                done += (unsigned)m;
                continue;
            }
            if (m < 0 && errno == EINTR) continue;
            if (m < 0 && errno != EPIPE)
                wr_log("reply: %s (%u of %u replies dropped)", strerror(errno), k - done, k);
            break;
        }
    }
}

static void reply_status(int sock, uint32_t type, kv_status st, const char *msg)
{
    reply(sock, type, (int32_t)st, 0, msg, msg ? strlen(msg) : 0);
}

/* ---- clients ------------------------------------------------------------ */

static wr_client *client_new(wr_state *ws, int sock)
{
    for (size_t i = 0; i < ws->nclients; i++)
        if (ws->clients[i].sock < 0) {
            memset(&ws->clients[i], 0, sizeof ws->clients[i]);
            ws->clients[i].sock = sock;
            return &ws->clients[i];
        }
    wr_client *nc = realloc(ws->clients, (ws->nclients + 1) * sizeof *nc);
    if (!nc) return NULL;
    ws->clients = nc;
    wr_client *c = &nc[ws->nclients++];
    memset(c, 0, sizeof *c);
    c->sock = sock;
    return c;
}

static void client_drop(wr_state *ws, wr_client *c)
{
    if (c->sock < 0) return;
    epoll_ctl(ws->ep, EPOLL_CTL_DEL, c->sock, NULL);
    close(c->sock);
    c->sock = -1;
    ws->hits_gone += c->hits;
    ws->misses_gone += c->misses;
    kvshm_ring_close(c->ring);
    c->ring = NULL;
}

void wr_clients_close(wr_state *ws)
{
    for (size_t i = 0; i < ws->nclients; i++) client_drop(ws, &ws->clients[i]);
    free(ws->clients);
    ws->clients = NULL;
    ws->nclients = 0;
}

/* ---- applying ring records ------------------------------------------------ */

int wr_apply_write(wr_state *ws, const uint8_t *key, uint32_t klen, const uint8_t *val,
                   uint32_t vlen, int tomb, uint64_t seq)
{
    for (int attempt = 0;; attempt++) {
        kvshm_status st = kvshm_writer_put(ws->w, key, klen, val, vlen, seq, tomb);
        if (st == KVSHM_OK) break;
        if (st != KVSHM_E_FULL) {
            wr_log("apply failed: %s", kvshm_strerror(st));
            return -1;
        }
        if (attempt >= 3) return 1;   /* still full: leave it in the ring, retry later */
        /* memtable full: finish the commit in flight, freeze, retry */
        if (wr_commit_room(ws) != 0) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    if (seq > ws->seq) ws->seq = seq;
    ws->pending++;
    ws->stat_records++;
    return 0;
}

/* Apply one key record to the memtables; commits first when a memtable is
 * full (backpressure: never a silent drop). 0 applied, 1 no room yet (the
 * record stays in the ring), -1 malformed record. A node of a cluster that
 * does not lead drops writes (clients check the segment's refusal before
 * they publish one: only a write published as the node lost the lead, or
 * left in a ring handed over after a restart, gets here), and is deposed
 * for it (cluster.h): its restart tells the client, which a later SYNC
 * acknowledged here would not. */
static int apply_kv(wr_state *ws, uint32_t type, const uint8_t *p, uint32_t len)
{
    const uint8_t *key, *val;
    uint32_t klen, vlen;
    if (kvshm_keyrec_decode(p, len, &key, &klen, &val, &vlen) != 0) return -1;
    if (type == KVSHM_REC_MISS) {
        wr_miss_add(ws, key, klen);
        return 0;
    }
    if (!wr_cluster_accepts_writes(ws)) {
        ws->stat_refused_writes++;
        wr_cluster_write_dropped(ws);
        return 0;
    }
    int tomb = type == KVSHM_REC_DEL;
    return wr_apply_write(ws, key, klen, tomb ? NULL : val, tomb ? 0 : vlen, tomb, ws->seq + 1);
}

/* Release c's ring up to the records consumed: first the end of the last
 * write record among them (so that a writer handed the ring after a crash
 * can tell consumed writes from other records), then the head. */
static uint64_t ring_release(wr_client *c)
{
    if (c->write_end > kvshm_ring_write_consumed(c->ring))
        kvshm_ring_set_write_consumed(c->ring, c->write_end);
    return kvshm_ring_release(c->ring);
}

size_t wr_drain(wr_state *ws)
{
    size_t total = 0;
    for (size_t i = 0; i < ws->nclients; i++) {
        wr_client *c = &ws->clients[i];
        if (c->sock < 0 || !c->ring) continue;
        size_t n = 0;
        for (;;) {
            uint32_t type, len;
            const void *payload;
            kvshm_status st = kvshm_ring_peek(c->ring, &type, &payload, &len);
            if (st == KVSHM_EMPTY) break;
            if (st != KVSHM_OK) {
                wr_log("client pid %u: corrupt ring, dropped", c->pid);
                ws->stat_bad_records++;
                client_drop(ws, c);
                break;
            }
            int bad = kvshm_rec_check(type, payload, len);
            if (!bad) {
                switch (type) {
                case KVSHM_REC_SYNC:
                    ws->sync_requested = 1;
                    break;
                case KVSHM_REC_STATS: {   /* u64 hits, u64 misses */
                    uint64_t s[2];
                    memcpy(s, payload, KVSHM_REC_STATS_BYTES);
                    c->hits += s[0];
                    c->misses += s[1];
                    break;
                }
                default:   /* PUT, DEL, MISS */
                    bad = apply_kv(ws, type, payload, len);
                }
            }
            if (bad > 0) break;   /* backpressure: not consumed, retried next pass */
            if (bad) {
                wr_log("client pid %u: malformed record (type %u, %u bytes), dropped",
                       c->pid, type, len);
                ws->stat_bad_records++;
                client_drop(ws, c);
                break;
            }
            uint64_t end = kvshm_ring_consume(c->ring);
            if (type == KVSHM_REC_PUT || type == KVSHM_REC_DEL) c->write_end = end;
            n++;
            /* Applied once released: the producer may return from put
             * (docs/shared-mode.md, "Write modes"). A long batch is acknowledged early. */
            if (n % 64 == 0) c->applied_pos = ring_release(c);
            if (n >= 4096) break;   /* fairness between clients */
        }
        if (c->ring) c->applied_pos = ring_release(c);
        if (c->sock >= 0 && c->dead && n == 0) client_drop(ws, c);
        total += n;
    }
    if (total) kvshm_writer_publish_seq(ws->w, ws->seq, 0);
    return total;
}

int wr_has_work(void *ctx, int final)
{
    const wr_idle *idle = ctx;
    wr_state *ws = idle->ws;
    /* a stop signal that came while the loop spun: do not sleep on it */
    if (*ws->stop) return 1;
    for (size_t i = 0; i < ws->nclients; i++) {
        wr_client *c = &ws->clients[i];
        if (c->sock >= 0 && c->ring && kvshm_ring_has_data(c->ring)) return 1;
    }
    if (kvshm_writer_requests(ws->w) != idle->requests) return 1;
    if (!final) return 0;
    /* a request whose sender saw the writer awake and flagged nothing */
    struct epoll_event ev;
    return epoll_wait(ws->ep, &ev, 1, 0) > 0 || wr_cluster_io_ready(ws, 0);
}

/* ---- requests ------------------------------------------------------------ */

static void handle_attach(wr_state *ws, wr_client *c, const struct kvshm_msg *m,
                          const uint8_t *pl, int fd)
{
    struct kvshm_attach_req req;   /* m_len == sizeof req (kvshm_msg_parse) */
    if (fd < 0) {
        reply_status(c->sock, m->m_type, KV_INVALID, "attach: no ring descriptor");
        if (fd >= 0) close(fd);
        return;
    }
    memcpy(&req, pl, sizeof req);
    if (req.a_generation != ws->generation) {
        reply_status(c->sock, m->m_type, KV_INVALID, "attach: generation mismatch");
        close(fd);
        return;
    }
    if (c->ring) kvshm_ring_close(c->ring);
    kvshm_status st = kvshm_ring_map(fd, &c->ring);
    close(fd);
    if (st != KVSHM_OK) {
        c->ring = NULL;
        reply_status(c->sock, m->m_type, KV_INVALID, kvshm_strerror(st));
        return;
    }
    c->pid = req.a_pid;
    c->slot = req.a_slot;
    /* A ring handed over again after a writer restart: everything the old
     * writer applied (before the ring's head) was replayed and committed by
     * this writer before it listened, so it counts as committed -- except
     * in a cluster, where a dead writer's segment is not replayed: write
     * records it consumed past the ring's committed position were not
     * confirmed by the cluster (they may or may not be in its log), and the
     * process must hear so rather than see its next SYNC succeed. Reads,
     * misses and barriers past it are no loss. */
    uint64_t head = kvshm_ring_head(c->ring);
    if (ws->cluster && kvshm_ring_write_consumed(c->ring) > kvshm_ring_committed(c->ring)) {
        kvshm_ring_close(c->ring);
        c->ring = NULL;
        reply_status(c->sock, m->m_type, KV_UNSUPPORTED,
                     "writes of this process that the cluster had not confirmed were in flight"
                     " when the node's writer stopped (cluster mode does not replay them): they"
                     " may be lost; reopen and write them again");
        return;
    }
    c->write_end = kvshm_ring_write_consumed(c->ring);
    c->applied_pos = c->commit_pos = c->committed_pos = head;
    if (head) kvshm_ring_set_committed(c->ring, head);
    reply(c->sock, m->m_type, KV_OK, ws->generation, NULL, 0);
}

static void handle_put_file(wr_state *ws, wr_client *c, const struct kvshm_msg *m,
                            const uint8_t *pl, int fd)
{
    if (fd < 0) {   /* the key is 1..KVSHM_MAX_KEY bytes (kvshm_msg_parse) */
        reply_status(c->sock, m->m_type, KV_INVALID, "put_file: missing descriptor");
        if (fd >= 0) close(fd);
        return;
    }
    /* Only a regular file (or a memfd): a read from a pipe or socket could
     * block the loop, and every client with it. A file shorter than the
     * announced size ends the stream early (kv_put_fd: "short write"). */
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        reply_status(c->sock, m->m_type, KV_INVALID,
                     "put_file: the descriptor must be a regular file or memfd");
        close(fd);
        return;
    }
    if (ws->cluster) {   /* streams are not replicated: refused on every node */
        reply_status(c->sock, m->m_type, KV_UNSUPPORTED,
                     wr_cluster_accepts_writes(ws) ? WR_CLUSTER_NOT_REPLICATED
                                                   : wr_cluster_refusal(ws));
        close(fd);
        return;
    }
    uint64_t chunk;
    memcpy(&chunk, pl, 8);
    const uint8_t *key = pl + 8;
    size_t klen = m->m_len - 8;
    /* Everything applied so far is committed and folded first, so no cached
     * version can shadow the streamed one; then the key leaves the cache. */
    kv_status st = KV_OK;
    if (wr_commit_all(ws) != 0) st = KV_BUSY;
    if (st == KV_OK) st = kv_put_fd(ws->db, key, klen, fd, m->m_arg, (size_t)chunk);
    close(fd);
    const void *kp = key;
    kvshm_writer_cache_evict(ws->w, &kp, &klen, 1);
    reply_status(c->sock, m->m_type, st, st == KV_OK ? NULL : kv_db_errmsg(ws->db));
}

/* 1 if the process that attached c is gone although its connection is
 * not hung up: a child it forked holds the inherited socket (a forked child
 * takes its own connection only at its first call through the handle).
 * Such a client is marked dead: drained, then dropped (wr_drain). */
static int client_orphaned(wr_client *c)
{
    /* the pid of the process that connected, as this writer's pid namespace
     * sees it (SO_PEERCRED), not the one the client reported */
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (c->dead || getsockopt(c->sock, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0 || cr.pid <= 0)
        return c->dead;
    if (kill(cr.pid, 0) != 0 && errno == ESRCH) c->dead = 1;
    return c->dead;
}

size_t wr_status_text(wr_state *ws, char *buf, size_t cap)
{
    kvshm_shard_stats sum;
    kvshm_writer_shard_stats(ws->w, KVSHM_ALL_SHARDS, &sum);
    uint64_t hits = ws->hits_gone, misses = ws->misses_gone;
    unsigned attached = 0;
    for (size_t i = 0; i < ws->nclients; i++) {
        wr_client *c = &ws->clients[i];
        if (c->sock < 0 || !c->ring) continue;
        hits += c->hits;
        misses += c->misses;
        /* attached: live processes only (a hung-up or orphaned client is
         * still drained before it is dropped) */
        if (!client_orphaned(c)) attached++;
    }
    uint64_t ckpts, ckpt_us;
    wr_ckpt_stats(ws->ckpt, &ckpts, &ckpt_us);
    if (!ws->ckpt) ckpt_us = ws->stat_ckpt_max_us;
    int n = snprintf(buf, cap,
        "db=%s\ntable=%s\npid=%d\ngeneration=%" PRIu64 "\nshards=%u\n"
        "keys_cached=%" PRIu64 "\nkeys_in_memtables=%" PRIu64 "\n"
        "hits=%" PRIu64 "\nmisses=%" PRIu64 "\nmiss_loads=%" PRIu64 "\n"
        "applied_seq=%" PRIu64 "\ncommitted_seq=%" PRIu64 "\npending=%" PRIu64 "\n"
        "memory_used=%" PRIu64 "\nmemory_total=%" PRIu64 "\nsegment_bytes=%" PRIu64 "\n"
        "attached=%u\ncommits=%" PRIu64 "\nrecords=%" PRIu64 "\nevicted_keys=%" PRIu64 "\n"
        "replayed=%" PRIu64 "\ncommit_phase=%s\ncommit_steps=%" PRIu64 "\n"
        "commit_insert_steps=%" PRIu64 "\n"
        "commit_max_us=%" PRIu64 "\ncommit_freeze_max_us=%" PRIu64 "\n"
        "commit_insert_max_us=%" PRIu64 "\ncommit_sql_max_us=%" PRIu64 "\n"
        "commit_fold_max_us=%" PRIu64 "\ncommit_sync=%" PRIu64 "\n"
        "applies_during_commit=%" PRIu64 "\nsock_polls=%" PRIu64 "\n"
        "commit_cpu_max_us=%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 "\n"
        "checkpoints=%" PRIu64 "\ncheckpoint_max_us=%" PRIu64 "\n"
        "miss_queued=%zu\nmiss_skipped=%" PRIu64 "\nmiss_declined=%" PRIu64 "\n"
        "refused_peers=%" PRIu64 "\n"
        "dropped_bad_clients=%" PRIu64 "\n",
        ws->db_abs, ws->o.table, (int)getpid(), ws->generation, kvshm_writer_shards(ws->w),
        sum.tree_keys, sum.mt_keys, hits, misses, ws->stat_miss_loads, ws->seq, ws->committed,
        ws->seq - ws->committed, sum.used_bytes, sum.region_bytes,
        kvshm_writer_size_bytes(ws->w), attached, ws->stat_commits, ws->stat_records,
        ws->stat_evicted_keys, ws->stat_replayed, wr_phase_names[ws->phase], ws->stat_commit_steps,
        ws->stat_insert_steps,
        ws->stat_commit_max_us[WR_IDLE], ws->stat_commit_max_us[WR_FREEZE],
        ws->stat_commit_max_us[WR_INSERT], ws->stat_commit_max_us[WR_COMMIT],
        ws->stat_commit_max_us[WR_FOLD], ws->stat_commit_sync, ws->stat_applies_during_commit,
        ws->stat_sock_polls, ws->stat_commit_cpu_max_us[WR_FREEZE],
        ws->stat_commit_cpu_max_us[WR_INSERT], ws->stat_commit_cpu_max_us[WR_COMMIT],
        ws->stat_commit_cpu_max_us[WR_FOLD], ckpts, ckpt_us, ws->nmiss,
        ws->stat_miss_skipped, ws->stat_miss_declined, ws->stat_refused, ws->stat_bad_records);
    if (n < 0) return 0;
    if ((size_t)n < cap) {   /* table operations (exec.c) */
        int e = snprintf(buf + n, cap - (size_t)n, "execs=%" PRIu64 "\nexecs_failed=%" PRIu64
                         "\nexec_batches=%" PRIu64 "\nexec_batched_ops=%" PRIu64
                         "\nexec_batch_max=%" PRIu64 "\nexec_replayed=%" PRIu64
                         "\nexec_leases=%" PRIu64 "\n",
                         ws->stat_execs, ws->stat_exec_failed, ws->stat_exec_batches,
                         ws->stat_exec_batched_ops, ws->stat_exec_batch_max,
                         ws->stat_exec_replayed, ws->stat_exec_leases);
        if (e > 0) n += e;
    }
    if ((size_t)n < cap) n += (int)wr_cluster_status(ws, buf + n, cap - (size_t)n);
    return (size_t)n >= cap ? cap - 1 : (size_t)n;
}

/* Read and handle one request of client c: 1 when one was read, 0 when
 * none was waiting (or the connection ended: c->dead). */
static int handle_request(wr_state *ws, wr_client *c)
{
    uint8_t buf[KVSHM_MSG_MAX];
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof cbuf};
    ssize_t n = recvmsg(c->sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n == 0) { c->dead = 1; return 0; }
    /* ECONNRESET: the client closed with replies unread; the requests it
     * sent before are still queued, and the error is reported once */
    if (n < 0 && errno == ECONNRESET) return 1;
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR) c->dead = 1;
        return 0;
    }
    int fd = -1;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
            memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    struct kvshm_msg m = {0};
    const uint8_t *pl;
    const char *why;
    if (kvshm_msg_parse(buf, (size_t)n, &m, &pl, &why) != 0) {
        char msg[96];
        snprintf(msg, sizeof msg, "bad request: %s", why);
        if (fd >= 0) close(fd);
        reply_status(c->sock, m.m_type, KV_INVALID, msg);
        return 1;
    }
    char text[KVSHM_FEATURE_MAX + 1];
    kv_status st;
    switch (m.m_type) {
    case KVSHM_MSG_ATTACH: handle_attach(ws, c, &m, pl, fd); return 1;
    case KVSHM_MSG_PUT_FILE: handle_put_file(ws, c, &m, pl, fd); return 1;
    case KVSHM_MSG_FEATURE:
        /* the commit in flight holds SQLite's write lock while its
         * transaction is open: finish it first */
        if (ws->cm_open && wr_commit_finish(ws) != 0) { st = KV_BUSY; }
        else {
            memcpy(text, pl, m.m_len);
            text[m.m_len] = 0;
            st = kv_record_feature(ws->db, text);
        }
        reply_status(c->sock, m.m_type, st, st ? kv_db_errmsg(ws->db) : NULL);
        break;
    case KVSHM_MSG_OPTIMIZE:
        wr_ckpt_pause(ws->ckpt);
        st = wr_commit_all(ws) ? KV_BUSY : kv_optimize(ws->db);
        wr_ckpt_resume(ws->ckpt);
        reply_status(c->sock, m.m_type, st, st ? kv_db_errmsg(ws->db) : NULL);
        break;
    case KVSHM_MSG_CHECKPOINT:
        /* What was applied before the request goes into the main file too:
         * commit it first. The checkpointer's own run would make this one a
         * no-op (SQLite lets one checkpoint run at a time): pause it. */
        wr_ckpt_pause(ws->ckpt);
        wr_commit_all(ws);
        kv_checkpoint(ws->db);
        wr_ckpt_resume(ws->ckpt);
        reply_status(c->sock, m.m_type, KV_OK, NULL);
        break;
    case KVSHM_MSG_EXEC: wr_exec_request(ws, c->sock, &m, pl, fd); return 1;   /* owns fd */
    case KVSHM_MSG_EXEC_END: wr_exec_end(ws, pl); break;   /* no reply */
    case KVSHM_MSG_CLUSTER: {
        char msg[512];
        memcpy(text, pl, m.m_len);
        text[m.m_len] = 0;
        st = wr_cluster_change(ws, text, msg, sizeof msg);
        reply_status(c->sock, m.m_type, st, msg);
        break;
    }
    case KVSHM_MSG_STATUS: {
        size_t len = wr_status_text(ws, text, sizeof text);
        reply(c->sock, m.m_type, KV_OK, ws->generation, text, len);
        break;
    }
    default:   /* kvshm_msg_parse admits request types only */
        kv_panic("request type %u passed kvshm_msg_parse", m.m_type);
    }
    if (fd >= 0) close(fd);
    return 1;
}

/* Peer credentials: only processes of the writer's own user (or root) may
 * talk to it, and with --group also processes whose effective or
 * supplementary groups include that group. The socket is abstract, so no
 * file mode guards it; this check also holds for a socket reached another
 * way (a passed descriptor).
 * The groups are the peer's own, as the kernel recorded them at connect()
 * (SO_PEERGROUPS, Linux 4.13+): a process that dropped the group
 * (setgroups) is refused although /etc/group lists its user, which a
 * getgrouplist() of the peer's uid would miss, and no /proc/<pid> read can
 * race with the pid being reused. */
static int peer_allowed(const wr_state *ws, int sock)
{
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0) return 0;
    if (cr.uid == geteuid() || cr.uid == 0) return 1;
    if (!ws->o.group_access) return 0;
    if (cr.gid == (gid_t)ws->o.gid) return 1;
    gid_t few[64], *groups = few;
    socklen_t glen = sizeof few;
    int rc = getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, groups, &glen);
    if (rc != 0 && errno == ERANGE && (groups = malloc(glen)) != NULL)
        rc = getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, groups, &glen);
    int allowed = 0;
    for (size_t i = 0; rc == 0 && i < glen / sizeof *groups; i++)
        allowed |= groups[i] == (gid_t)ws->o.gid;
    if (groups != few) free(groups);
    return allowed;
}

/* Requests read from one client in one round of wr_sock_poll. */
#define WR_REQUEST_BURST 32

/* --linger-ms: once no process has been connected for linger_ms, ask the
 * loop for a clean stop (as SIGTERM does). A connection counts from its
 * accept on, so a process that is attaching keeps the writer. */
/* Until the first client connected, a writer waits at least this long:
 * the process that spawned it attaches only after reading its ready line,
 * which on a loaded machine can take longer than a short linger. */
#define WR_FIRST_CLIENT_GRACE_MS 10000u

static void linger_check(wr_state *ws)
{
    static uint64_t idle_since;   /* one writer per process */
    static int had_client;
    if (ws->o.linger_ms < 0 || *ws->stop) return;
    for (size_t i = 0; i < ws->nclients; i++)
        if (ws->clients[i].sock >= 0 && !ws->clients[i].dead) {
            idle_since = 0;
            had_client = 1;
            return;
        }
    uint64_t now = wr_now_ms();
    if (!idle_since) idle_since = now;
    uint64_t linger = (uint64_t)ws->o.linger_ms;
    if (!had_client && linger < WR_FIRST_CLIENT_GRACE_MS) linger = WR_FIRST_CLIENT_GRACE_MS;
    if (now - idle_since >= linger) {
        wr_log("no client for %llu ms: stopping", (unsigned long long)linger);
        *ws->stop = 1;
    }
}

void wr_sock_poll(wr_state *ws)
{
    linger_check(ws);
    struct epoll_event evs[32];
    for (;;) {
        int n = epoll_wait(ws->ep, evs, 32, 0);
        if (n <= 0) return;
        int accepted = 0;
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == UINT64_MAX) {
                accepted = 1;
                for (;;) {
                    int s = accept4(ws->lsock, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                    if (s < 0) break;
                    if (!peer_allowed(ws, s)) { ws->stat_refused++; close(s); continue; }
                    wr_client *c = client_new(ws, s);
                    if (!c) { close(s); continue; }
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP,
                                             .data.u64 = (uint64_t)(c - ws->clients)};
                    epoll_ctl(ws->ep, EPOLL_CTL_ADD, s, &ev);
                }
                continue;
            }
            size_t idx = (size_t)evs[i].data.u64;
            if (idx >= ws->nclients || ws->clients[idx].sock < 0) continue;
            wr_client *c = &ws->clients[idx];
            /* a client that pipelines its operations (kv_exec_post) has
             * several waiting: up to WR_REQUEST_BURST of them join this
             * round's group commit; one that hung up, all it sent (it may
             * have exited right after sending) */
            int hup = (evs[i].events & (EPOLLHUP | EPOLLRDHUP | EPOLLERR)) != 0;
            for (int k = 0; (hup || k < WR_REQUEST_BURST) && (evs[i].events & EPOLLIN) && !c->dead; k++)
                if (!handle_request(ws, c)) break;
            if (hup) {
                c->dead = 1;
                /* stop watching; the ring is drained, then dropped */
                epoll_ctl(ws->ep, EPOLL_CTL_DEL, c->sock, NULL);
            }
            /* a connection that never attached (STATUS, a probe) has no
             * ring for wr_drain to finish: drop it now (after the replies
             * to its kept requests) */
            if (c->dead && !c->ring) {
                wr_exec_flush(ws);
                client_drop(ws, c);
            }
        }
        /* the EXEC requests of this round, in group commits */
        wr_exec_flush(ws);
        /* A new connection's ATTACH may be waiting already: its flag was
         * counted before this poll, so look again now. */
        if (n < 32 && !accepted) return;
    }
}
