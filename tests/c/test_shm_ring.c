/* test_shm_ring.c - the submission ring (shm/ring.c): record framing and
 * wrap-around, full/oversize, untrusted-length checks, and producer/consumer
 * sleeping on futexes across threads and across processes (fd inherited, as
 * SCM_RIGHTS would pass it); wake-ups only at the position a sleeper waits
 * for; ping-pong between processes with spinning on and off (no lost
 * wake-up); the consumer's head; and the formats writer and attach share
 * besides the ring (key records, registry text). */
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "kvshm/proto.h"
#include "kvshm/ring.h"
#include "shm_test_util.h"

TestSuite(shm_ring, .timeout = 120);

static uint32_t rec_len(uint64_t i) { return (uint32_t)(i * 2654435761u % 300); }
static uint8_t rec_byte(uint64_t i, uint32_t j) { return (uint8_t)(i * 31 + j); }

static kvshm_status push_rec(kvshm_ring *p, uint64_t i, int timeout, uint64_t *pos)
{
    uint8_t buf[512];
    uint32_t n = rec_len(i);
    for (uint32_t j = 0; j < n; j++) buf[j] = rec_byte(i, j);
    return kvshm_ring_push(p, (uint32_t)(i & 0xffff), buf, n, timeout, pos);
}

static int check_rec(kvshm_ring *c, uint64_t i)
{
    uint32_t type, len;
    const void *pl;
    if (kvshm_ring_peek(c, &type, &pl, &len) != KVSHM_OK) return 0;
    if (type != (uint32_t)(i & 0xffff) || len != rec_len(i)) return 0;
    for (uint32_t j = 0; j < len; j++)
        if (((const uint8_t *)pl)[j] != rec_byte(i, j)) return 0;
    kvshm_ring_consume(c);
    kvshm_ring_release(c);
    return 1;
}

Test(shm_ring, records_roundtrip_across_wraparound)
{
    kvshm_ring *p, *c;
    cr_assert_eq(kvshm_ring_create(4096, &p), KVSHM_OK);
    cr_assert_eq(kvshm_ring_map(kvshm_ring_fd(p), &c), KVSHM_OK);
    uint32_t t, l; const void *pl;
    cr_assert_eq(kvshm_ring_peek(c, &t, &pl, &l), KVSHM_EMPTY);
    uint64_t next_in = 0, next_out = 0, seed = 1;
    while (next_out < 20000) {
        int burst = (int)(shmt_rand(&seed) % 20);
        for (int b = 0; b < burst; b++) {
            kvshm_status st = push_rec(p, next_in, 0, NULL);
            if (st == KVSHM_E_FULL) break;
            cr_assert_eq(st, KVSHM_OK);
            next_in++;
        }
        int drain = (int)(shmt_rand(&seed) % 20);
        for (int d = 0; d < drain && next_out < next_in; d++)
            cr_assert(check_rec(c, next_out++), "record %lu", (unsigned long)next_out - 1);
    }
    kvshm_ring_close(c);
    kvshm_ring_close(p);
}

Test(shm_ring, full_oversize_and_bad_arguments)
{
    kvshm_ring *p, *c;
    cr_assert_eq(kvshm_ring_create(3000, &p), KVSHM_E_INVAL);
    cr_assert_eq(kvshm_ring_create(4096, &p), KVSHM_OK);
    void *pl;
    cr_assert_eq(kvshm_ring_reserve(p, 4096, &pl, 0), KVSHM_E_INVAL);
    uint8_t data[1000] = { 0 };
    int n = 0;
    while (kvshm_ring_push(p, 1, data, sizeof data, 0, NULL) == KVSHM_OK) n++;
    cr_assert_eq(n, 4);
    cr_assert_eq(kvshm_ring_push(p, 1, data, sizeof data, 50, NULL), KVSHM_TIMEOUT);
    cr_assert_eq(kvshm_ring_push(p, KVSHM_RING_PAD, data, 1, 0, NULL), KVSHM_E_INVAL);
    cr_assert_eq(kvshm_ring_map(kvshm_ring_fd(p), &c), KVSHM_OK);
    uint32_t t, l; const void *q;
    cr_assert_eq(kvshm_ring_peek(c, &t, &q, &l), KVSHM_OK);
    kvshm_ring_close(c);
    kvshm_ring_close(p);
    /* a file that is not a ring (sealed like one) */
    int fd = memfd_create("not-a-ring", MFD_ALLOW_SEALING);
    cr_assert_eq(ftruncate(fd, 256 + 4096), 0);
    cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), 0);
    cr_assert_eq(kvshm_ring_map(fd, &c), KVSHM_E_MAGIC);
    close(fd);
}

/* A ring whose file could shrink under the consumer's mapping (SIGBUS in the
 * writer) is refused: a copy of a real ring's bytes in an unsealed memfd, a
 * sealed one that can still shrink, and a regular file. */
Test(shm_ring, consumer_requires_size_seals)
{
    kvshm_ring *p, *c;
    cr_assert_eq(kvshm_ring_create(4096, &p), KVSHM_OK);
    int seals = fcntl(kvshm_ring_fd(p), F_GET_SEALS);
    cr_assert_eq(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
                 F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    cr_assert_neq(ftruncate(kvshm_ring_fd(p), 1024), 0);   /* the producer cannot either */
    uint8_t img[256 + 4096];
    cr_assert_eq(pread(kvshm_ring_fd(p), img, sizeof img, 0), (ssize_t)sizeof img);
    kvshm_ring_close(p);
    for (int kind = 0; kind < 3; kind++) {
        int fd;
        if (kind < 2) {
            fd = memfd_create("forged-ring", MFD_ALLOW_SEALING);
        } else {
            char path[] = "/tmp/kvshm-ring-XXXXXX";
            fd = mkstemp(path);
            unlink(path);
        }
        cr_assert_geq(fd, 0);
        cr_assert_eq(pwrite(fd, img, sizeof img, 0), (ssize_t)sizeof img);
        if (kind == 1) cr_assert_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SEAL), 0);
        cr_assert_eq(kvshm_ring_map(fd, &c), KVSHM_E_SIZE, "kind %d", kind);
        close(fd);
    }
}

Test(shm_ring, consumer_rejects_corrupt_lengths)
{
    kvshm_ring *p, *c;
    cr_assert_eq(kvshm_ring_create(4096, &p), KVSHM_OK);
    cr_assert_eq(kvshm_ring_map(kvshm_ring_fd(p), &c), KVSHM_OK);
    cr_assert_eq(kvshm_ring_push(p, 9, "abc", 3, 0, NULL), KVSHM_OK);
    /* map the raw file and damage it the way a buggy client could */
    uint8_t *raw = mmap(NULL, 256 + 4096, PROT_READ | PROT_WRITE, MAP_SHARED, kvshm_ring_fd(p), 0);
    cr_assert_neq(raw, MAP_FAILED);
    struct kvshm_ring_hdr *h = (struct kvshm_ring_hdr *)raw;
    uint32_t *rec = (uint32_t *)(raw + 256);
    rec[0] = 100000;                         /* length past the published tail */
    uint32_t t, l; const void *q;
    cr_assert_eq(kvshm_ring_peek(c, &t, &q, &l), KVSHM_E_CORRUPT);
    rec[0] = 3;
    h->rh_tail = 1u << 20;                   /* tail beyond capacity */
    cr_assert_eq(kvshm_ring_peek(c, &t, &q, &l), KVSHM_E_CORRUPT);
    h->rh_tail = 16;
    cr_assert_eq(kvshm_ring_peek(c, &t, &q, &l), KVSHM_OK);
    cr_assert_eq(l, 3);
    munmap(raw, 256 + 4096);
    kvshm_ring_close(c);
    kvshm_ring_close(p);
}

#define NREC 200000

static void consume_all(kvshm_ring *c, int *ok)
{
    *ok = 1;
    uint64_t i = 0;
    while (i < NREC) {
        uint32_t t, l; const void *q;
        kvshm_status st = kvshm_ring_peek(c, &t, &q, &l);
        if (st == KVSHM_EMPTY) { kvshm_ring_wait_data(c, 1000); continue; }
        if (!check_rec(c, i)) { *ok = 0; return; }
        i++;
        if (i % 1000 == 0) kvshm_ring_set_committed(c, kvshm_ring_consume(c));
    }
    kvshm_ring_set_committed(c, kvshm_ring_consume(c));
}

static void *consumer_thread(void *arg)
{
    static int ok;
    consume_all(arg, &ok);
    return &ok;
}

static void produce_all(kvshm_ring *p)
{
    uint64_t pos = 0;
    for (uint64_t i = 0; i < NREC; i++)
        cr_assert_eq(push_rec(p, i, 5000, &pos), KVSHM_OK, "record %lu", (unsigned long)i);
    cr_assert_eq(kvshm_ring_wait_consumed(p, pos, 10000), KVSHM_OK);
    cr_assert_eq(kvshm_ring_wait_committed(p, pos, 10000), KVSHM_OK);
}

Test(shm_ring, producer_and_consumer_threads_sleep_and_wake)
{
    kvshm_ring *p, *c;
    cr_assert_eq(kvshm_ring_create(4096, &p), KVSHM_OK);
    cr_assert_eq(kvshm_ring_map(kvshm_ring_fd(p), &c), KVSHM_OK);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, consumer_thread, c), 0);
    produce_all(p);
    void *res;
    pthread_join(th, &res);
    cr_assert(*(int *)res, "consumer saw every record intact and in order");
    kvshm_ring_close(c);
    kvshm_ring_close(p);
}

/* Fork a consumer process: it maps p's ring (fd inherited, as SCM_RIGHTS
 * would pass it), sets its spin cap and exits with body's status. */
static pid_t fork_consumer(kvshm_ring *p, uint32_t spin_ns, int (*body)(kvshm_ring *c))
{
    pid_t pid = fork();
    if (pid == 0) {
        kvshm_ring *c;
        if (kvshm_ring_map(kvshm_ring_fd(p), &c) != KVSHM_OK) _exit(2);
        kvshm_ring_set_spin(c, NULL, spin_ns);
        _exit(body(c));
    }
    return pid;
}

static int consume_all_status(kvshm_ring *c)
{
    int ok;
    consume_all(c, &ok);
    return ok ? 0 : 1;
}

Test(shm_ring, producer_and_consumer_processes)
{
    kvshm_ring *p;
    cr_assert_eq(kvshm_ring_create(8192, &p), KVSHM_OK);
    pid_t pid = fork_consumer(p, KVSHM_RING_SPIN_DEFAULT, consume_all_status);
    produce_all(p);
    cr_assert_eq(shmt_wait(pid), 0);
    kvshm_ring_close(p);
}

/* The consumer's position: 0 for a new ring, then where release published
 * it (consume alone moves only the private head), as seen through any
 * mapping of the ring. */
Test(shm_ring, head_follows_consume)
{
    kvshm_ring *p, *c, *c2;
    cr_assert_eq(kvshm_ring_create(4096, &p), KVSHM_OK);
    cr_assert_eq(kvshm_ring_map(kvshm_ring_fd(p), &c), KVSHM_OK);
    cr_assert_eq(kvshm_ring_head(c), 0);
    uint64_t pos;
    for (uint64_t i = 0; i < 3; i++) cr_assert_eq(push_rec(p, i, 0, &pos), KVSHM_OK);
    cr_assert(check_rec(c, 0));
    cr_assert(check_rec(c, 1));
    uint32_t type, len;
    const void *pl;
    cr_assert_eq(kvshm_ring_peek(c, &type, &pl, &len), KVSHM_OK);
    uint64_t before = kvshm_ring_head(c);
    uint64_t head = kvshm_ring_consume(c);
    cr_assert_eq(head, pos);
    cr_assert_eq(kvshm_ring_head(c), before, "consume alone publishes nothing");
    cr_assert_eq(kvshm_ring_release(c), pos);
    cr_assert_eq(kvshm_ring_head(c), pos);
    cr_assert_eq(kvshm_ring_map(kvshm_ring_fd(p), &c2), KVSHM_OK);   /* handed over again */
    cr_assert_eq(kvshm_ring_head(c2), pos);
    kvshm_ring_close(c2);
    kvshm_ring_close(c);
    kvshm_ring_close(p);
}

/* ---- wake-ups: only for the position waited for ------------------------- */

/* The ring's header through a raw mapping of its memfd (white box). */
static struct kvshm_ring_hdr *raw_hdr(kvshm_ring *r)
{
    void *p = mmap(NULL, 256, PROT_READ | PROT_WRITE, MAP_SHARED, kvshm_ring_fd(r), 0);
    cr_assert_neq(p, MAP_FAILED);
    return p;
}

/* Wait (up to 10 s) until *flag reads 1: the other process sleeps. */
static void until_asleep(const uint32_t *flag)
{
    double t0 = shmt_now();
    while (!__atomic_load_n(flag, __ATOMIC_ACQUIRE)) {
        cr_assert_lt(shmt_now() - t0, 10.0, "the producer never went to sleep");
        usleep(1000);
    }
}

/* Consume the next record and release it; returns the released head. */
static uint64_t release_one(kvshm_ring *c)
{
    uint32_t t, l;
    const void *q;
    cr_assert_eq(kvshm_ring_peek(c, &t, &q, &l), KVSHM_OK);
    kvshm_ring_consume(c);
    return kvshm_ring_release(c);
}

/* The consumer handle has made exactly `n` FUTEX_WAKE calls. */
static void expect_wakes(kvshm_ring *c, uint64_t n)
{
    kvshm_ring_counts k;
    kvshm_ring_stats(c, &k);
    cr_assert_eq(k.wakes, n, "%lu wake-ups, expected %lu", (unsigned long)k.wakes,
                 (unsigned long)n);
}

/* Reap the producer process (exit status 0) and close both handles. */
static void finish_pair(pid_t pid, struct kvshm_ring_hdr *h, kvshm_ring *c, kvshm_ring *p)
{
    cr_assert_eq(shmt_wait(pid), 0);
    munmap(h, 256);
    kvshm_ring_close(c);
    kvshm_ring_close(p);
}

static void assert_still_waiting(pid_t pid, const uint32_t *flag)
{
    usleep(20000);
    int status;
    cr_assert_eq(waitpid(pid, &status, WNOHANG), 0, "the producer returned early");
    cr_assert_eq(__atomic_load_n(flag, __ATOMIC_ACQUIRE), 1, "the producer was woken");
}

/* A producer (another process, spinning off) sleeping for the consumption
 * of its 10th record is not woken while the consumer releases records 1..9
 * one by one, nor by a commit short of what it waits for; it is woken once
 * when the position is released (and committed). */
Test(shm_ring, producer_woken_only_at_the_position_it_waits_for)
{
    kvshm_ring *p, *c;
    cr_assert_eq(kvshm_ring_create(8192, &p), KVSHM_OK);
    cr_assert_eq(kvshm_ring_map(kvshm_ring_fd(p), &c), KVSHM_OK);
    struct kvshm_ring_hdr *h = raw_hdr(p);
    uint64_t pos[10];
    for (int i = 0; i < 10; i++) cr_assert_eq(push_rec(p, (uint64_t)i, 0, &pos[i]), KVSHM_OK);
    pid_t pid = fork();
    if (pid == 0) {
        kvshm_ring_set_spin(p, NULL, 0);
        if (kvshm_ring_wait_consumed(p, pos[9], 20000) != KVSHM_OK) _exit(1);
        if (kvshm_ring_wait_committed(p, pos[9], 20000) != KVSHM_OK) _exit(2);
        kvshm_ring_counts n;
        kvshm_ring_stats(p, &n);
        _exit(n.spins == 0 && n.sleeps >= 2 ? 0 : 3);
    }
    until_asleep(&h->rh_producer_waiting);
    cr_assert_eq(h->rh_head_want, pos[9]);
    for (int i = 0; i < 9; i++) cr_assert_eq(release_one(c), pos[i]);
    expect_wakes(c, 0);   /* none short of the wanted position */
    assert_still_waiting(pid, &h->rh_producer_waiting);
    cr_assert_eq(release_one(c), pos[9]);
    expect_wakes(c, 1);
    /* then the commit: short of the position, no wake-up */
    until_asleep(&h->rh_commit_waiting);
    cr_assert_eq(h->rh_commit_want, pos[9]);
    kvshm_ring_set_committed(c, pos[4]);
    kvshm_ring_set_committed(c, pos[8]);
    expect_wakes(c, 1);
    assert_still_waiting(pid, &h->rh_commit_waiting);
    kvshm_ring_set_committed(c, pos[9]);
    expect_wakes(c, 2);
    finish_pair(pid, h, c, p);
}

/* A producer waiting for room sleeps for the head position that frees it:
 * releasing less wakes nothing. */
Test(shm_ring, space_wait_woken_only_when_enough_is_released)
{
    kvshm_ring *p, *c;
    cr_assert_eq(kvshm_ring_create(4096, &p), KVSHM_OK);
    cr_assert_eq(kvshm_ring_map(kvshm_ring_fd(p), &c), KVSHM_OK);
    struct kvshm_ring_hdr *h = raw_hdr(p);
    uint8_t data[1000] = {0};
    int n = 0;
    while (kvshm_ring_push(p, 1, data, sizeof data, 0, NULL) == KVSHM_OK) n++;
    cr_assert_eq(n, 4);   /* 4 x 1008 bytes of 4096: 64 free */
    pid_t pid = fork();
    if (pid == 0) {
        kvshm_ring_set_spin(p, NULL, 0);
        uint8_t big[2000] = {0};   /* needs two records' room */
        _exit(kvshm_ring_push(p, 2, big, sizeof big, 20000, NULL) == KVSHM_OK ? 0 : 1);
    }
    until_asleep(&h->rh_producer_waiting);
    release_one(c);
    expect_wakes(c, 0);   /* one record's room is not enough */
    assert_still_waiting(pid, &h->rh_producer_waiting);
    release_one(c);
    expect_wakes(c, 1);
    finish_pair(pid, h, c, p);
}

/* Ping-pong between two processes: every record is published and waited
 * for by the producer; the consumer waits for data, consumes and releases.
 * A lost wake-up would stall one side until its 10 s timeout. */
enum { ROUNDS = 20000 };

/* The consumer side of the ping-pong: 0 when every record came in order. */
static int pong(kvshm_ring *c)
{
    for (uint64_t i = 0; i < ROUNDS;) {
        uint32_t t, l;
        const void *q;
        kvshm_status st = kvshm_ring_peek(c, &t, &q, &l);
        if (st == KVSHM_EMPTY) {
            if (kvshm_ring_wait_data(c, 10000) != KVSHM_OK) return 3;
            continue;
        }
        if (st != KVSHM_OK || t != (uint32_t)(i & 0xffff)) return 4;
        kvshm_ring_consume(c);
        kvshm_ring_release(c);
        i++;
    }
    return 0;
}

static void ping_pong(uint32_t spin_ns)
{
    kvshm_ring *p;
    cr_assert_eq(kvshm_ring_create(4096, &p), KVSHM_OK);
    pid_t pid = fork_consumer(p, spin_ns, pong);
    kvshm_ring_set_spin(p, NULL, spin_ns);
    double t0 = shmt_now();
    for (uint64_t i = 0; i < ROUNDS; i++) {
        uint64_t pos;
        cr_assert_eq(kvshm_ring_push(p, (uint32_t)(i & 0xffff), &i, sizeof i, 10000, &pos),
                     KVSHM_OK);
        cr_assert_eq(kvshm_ring_wait_consumed(p, pos, 10000), KVSHM_OK, "round %lu",
                     (unsigned long)i);
    }
    cr_assert_eq(shmt_wait(pid), 0);
    kvshm_ring_counts n;
    kvshm_ring_stats(p, &n);
    cr_log_info("ping-pong spin %u ns: %.0f rounds/s, %lu sleeps, %lu spins (%lu hits)",
                spin_ns, ROUNDS / (shmt_now() - t0), (unsigned long)n.sleeps,
                (unsigned long)n.spins, (unsigned long)n.spin_hits);
    if (spin_ns == 0) cr_assert_eq(n.spins, 0);
    kvshm_ring_close(p);
}

Test(shm_ring, ping_pong_processes_no_lost_wakeup_spinning_off) { ping_pong(0); }
Test(shm_ring, ping_pong_processes_no_lost_wakeup_spinning_on)
{
    ping_pong(KVSHM_RING_SPIN_DEFAULT);
}

/* ---- what writer and attach agree on (kvshm/proto.h) ------------------- */

Test(shm_ring, key_records_roundtrip_and_reject_malformed)
{
    uint8_t buf[64];
    const uint8_t *key, *val;
    uint32_t klen, vlen;
    cr_assert_eq(kvshm_keyrec_bytes(5, 3), KVSHM_REC_KEYHDR + 8);
    kvshm_keyrec_encode(buf, "hello", 5, "abc", 3);
    cr_assert_eq(kvshm_keyrec_decode(buf, (uint32_t)kvshm_keyrec_bytes(5, 3), &key, &klen,
                                     &val, &vlen), 0);
    cr_assert_eq(klen, 5);
    cr_assert_eq(vlen, 3);
    cr_assert_arr_eq(key, "hello", 5);
    cr_assert_arr_eq(val, "abc", 3);
    kvshm_keyrec_encode(buf, "k", 1, NULL, 0);   /* DEL / MISS */
    cr_assert_eq(kvshm_keyrec_decode(buf, (uint32_t)kvshm_keyrec_bytes(1, 0), &key, &klen,
                                     &val, &vlen), 0);
    cr_assert_eq(klen, 1);
    cr_assert_eq(vlen, 0);
    /* shorter than the header, key past the payload, empty key, key too long */
    cr_assert_eq(kvshm_keyrec_decode(buf, KVSHM_REC_KEYHDR - 1, &key, &klen, &val, &vlen), -1);
    kvshm_keyrec_encode(buf, "hello", 5, NULL, 0);
    cr_assert_eq(kvshm_keyrec_decode(buf, KVSHM_REC_KEYHDR + 4, &key, &klen, &val, &vlen), -1);
    uint32_t bad[2] = { 0, 0 };
    memcpy(buf, bad, sizeof bad);
    cr_assert_eq(kvshm_keyrec_decode(buf, 16, &key, &klen, &val, &vlen), -1);
    bad[0] = KVSHM_MAX_KEY + 1;
    memcpy(buf, bad, sizeof bad);
    cr_assert_eq(kvshm_keyrec_decode(buf, 16, &key, &klen, &val, &vlen), -1);
}

Test(shm_ring, record_check_by_type)
{
    uint8_t buf[64] = {0};
    kvshm_keyrec_encode(buf, "key", 3, "v", 1);
    uint32_t put = (uint32_t)kvshm_keyrec_bytes(3, 1);
    cr_assert_eq(kvshm_rec_check(KVSHM_REC_PUT, buf, put), 0);
    cr_assert_eq(kvshm_rec_check(KVSHM_REC_DEL, buf, put), 0);
    cr_assert_eq(kvshm_rec_check(KVSHM_REC_MISS, buf, put), 0);
    cr_assert_eq(kvshm_rec_check(KVSHM_REC_PUT, buf, KVSHM_REC_KEYHDR + 2), -1, "key cut");
    cr_assert_eq(kvshm_rec_check(KVSHM_REC_SYNC, buf, 0), 0);
    cr_assert_eq(kvshm_rec_check(KVSHM_REC_SYNC, buf, 8), -1, "sync with a payload");
    cr_assert_eq(kvshm_rec_check(KVSHM_REC_STATS, buf, KVSHM_REC_STATS_BYTES), 0);
    cr_assert_eq(kvshm_rec_check(KVSHM_REC_STATS, buf, 8), -1, "stats too short");
    cr_assert_eq(kvshm_rec_check(KVSHM_REC_STATS, buf, 24), -1, "stats too long");
    cr_assert_eq(kvshm_rec_check(99, buf, put), -1, "unknown type");
}

Test(shm_ring, control_packet_parse)
{
    uint8_t pkt[sizeof(struct kvshm_msg) + 32] = {0};
    struct kvshm_msg h = {.m_magic = KVSHM_PROTO_MAGIC, .m_type = KVSHM_MSG_STATUS}, m;
    const uint8_t *pl;
    const char *why;
    memcpy(pkt, &h, sizeof h);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof h, &m, &pl, &why), 0);
    cr_assert_eq(m.m_type, KVSHM_MSG_STATUS);
    cr_assert_eq(pl, pkt + sizeof h);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof h - 1, &m, &pl, &why), -1);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof h + 4, &m, &pl, &why), -1, "length mismatch");
    h.m_type = KVSHM_MSG_PUT_FILE;
    h.m_len = 8 + 3;   /* u64 chunk + a 3-byte key */
    memcpy(pkt, &h, sizeof h);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof h + 11, &m, &pl, &why), 0);
    h.m_len = 8;       /* no key */
    memcpy(pkt, &h, sizeof h);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof h + 8, &m, &pl, &why), -1);
    cr_assert_str_eq(why, "put_file: key missing or too long");
    h.m_type = KVSHM_MSG_CLUSTER;   /* a membership change: 1.. bytes of text */
    h.m_len = 8;
    memcpy(pkt, &h, sizeof h);
    memcpy(pkt + sizeof h, "remove 3", 8);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof h + 8, &m, &pl, &why), 0);
    h.m_len = 0;
    memcpy(pkt, &h, sizeof h);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof h, &m, &pl, &why), -1);
    cr_assert_str_eq(why, "cluster: bad request length");
    h.m_type = 77;
    h.m_len = 0;
    memcpy(pkt, &h, sizeof h);
    cr_assert_eq(kvshm_msg_parse(pkt, sizeof h, &m, &pl, &why), -1);
    cr_assert_str_eq(why, "unknown request type");
}

Test(shm_ring, registry_text_roundtrip)
{
    char text[1024], v[64];
    kvshm_registry reg = { .generation = 7, .pid = 1234, .table = "kv", .segment = "/seg",
                           .slots = "/seg-slots", .socket = "sock", .state = "ready" };
    int n = kvshm_registry_format(&reg, text, sizeof text);
    cr_assert(n > 0 && (size_t)n == strlen(text));
    const char *names[] = { "generation", "pid", "table", "segment", "slots", "socket", "state" };
    const char *want[] = { "7", "1234", "kv", "/seg", "/seg-slots", "sock", "ready" };
    for (int i = 0; i < 7; i++) {
        cr_assert_eq(kvshm_registry_field(text, names[i], v, sizeof v), 0, "%s", names[i]);
        cr_assert_str_eq(v, want[i]);
    }
    cr_assert_eq(kvshm_registry_field(text, "kvault-registry", v, sizeof v), 0);
    cr_assert_str_eq(v, "1");
    cr_assert(kvshm_registry_layout_ok(text));
    char *layout = strstr(text, "layout=");
    cr_assert_not_null(layout);
    layout[7] = layout[7] == '0' ? '1' : '0';
    cr_assert(!kvshm_registry_layout_ok(text), "another build's layout");
    cr_assert_eq(kvshm_registry_format(&reg, text, 40), -1, "does not fit");
    cr_assert_neq(kvshm_registry_field(text, "cluster", v, sizeof v), 0, "single node: no line");
    reg.cluster_node = 3;   /* a cluster node's writer */
    cr_assert_gt(kvshm_registry_format(&reg, text, sizeof text), 0);
    cr_assert_eq(kvshm_registry_field(text, "cluster", v, sizeof v), 0);
    cr_assert_str_eq(v, "3");
    cr_assert_eq(kvshm_registry_cluster_node(text), 3);
    cr_assert(kvshm_registry_complete(text));
}

/* A whole registry text ends with end=<bytes before it>: a partial or
 * empty one, or one whose end line counts other bytes, is rejected; a whole one followed by a longer
 * predecessor's tail is cut after its end line. */
Test(shm_ring, registry_text_complete_only_when_whole)
{
    char text[1024], torn[1024], longer[1200];
    kvshm_registry reg = { .generation = 7, .pid = 1234, .table = "kv", .segment = "/seg",
                           .slots = "/seg-slots", .socket = "sock", .state = "ready" };
    int n = kvshm_registry_format(&reg, text, sizeof text);
    cr_assert(n > 0);
    cr_assert(strstr(text, "\nend=") != NULL);
    strcpy(torn, text);
    cr_assert(kvshm_registry_complete(torn));
    cr_assert_str_eq(torn, text);
    for (int cut = 0; cut < n; cut++) {   /* every prefix: partial */
        memcpy(torn, text, (size_t)cut);
        torn[cut] = 0;
        cr_assert(!kvshm_registry_complete(torn), "prefix of %d bytes", cut);
    }
    /* the new text over a longer old one, before the truncate */
    snprintf(longer, sizeof longer, "%sstate=stopped\nend=999\n", text);
    cr_assert(kvshm_registry_complete(longer));
    cr_assert_str_eq(longer, text);
    /* an end line that does not count the bytes before it */
    strcpy(torn, text);
    char *gen = strstr(torn, "generation=7");
    memmove(gen + 11, gen + 12, strlen(gen + 12) + 1);   /* "generation=" */
    cr_assert(!kvshm_registry_complete(torn));
}
