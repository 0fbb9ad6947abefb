/* shm_test_util.h - helpers for the shm Criterion suites: unique /dev/shm
 * names per test, a small writer config, a deterministic PRNG, and pipes to
 * talk to forked reader processes. */
#ifndef SHM_TEST_UTIL_H
#define SHM_TEST_UTIL_H

#if defined(__SANITIZE_THREAD__)
/* Criterion cannot start under ThreadSanitizer (issue #274): same API subset,
 * same one-process-per-test model. */
#include "shm_criterion_shim.h"
#else
#include <criterion/criterion.h>
#endif
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvshm/kvshm.h"
#include "structs.h"

static char shmt_seg[64], shmt_slot[64];

/* Fresh names for this test process; .fini removes them. */
static inline void shmt_names(void)
{
    static unsigned n;
    snprintf(shmt_seg, sizeof shmt_seg, "/kvshm-t%d-%u-seg", (int)getpid(), n);
    snprintf(shmt_slot, sizeof shmt_slot, "/kvshm-t%d-%u-slot", (int)getpid(), n);
    n++;
}
static inline void shmt_setup(void) { shmt_names(); }
static inline void shmt_teardown(void) { kvshm_unlink(shmt_seg, shmt_slot); }

static inline kvshm_config shmt_config(uint64_t size, uint32_t shards)
{
    kvshm_config c;
    kvshm_config_default(&c);
    c.seg_name = shmt_seg;
    c.slot_name = shmt_slot;
    c.size_bytes = size;
    c.shards = shards;
    c.nslots = 16;
    c.memtable_bytes = 1u << 20;
    return c;
}

/* Create a writer over shmt_config(size, shards) and attach one reader. */
static inline void shmt_open(uint64_t size, uint32_t shards, kvshm_writer **w, kvshm_reader **r)
{
    kvshm_config c = shmt_config(size, shards);
    cr_assert_eq(kvshm_writer_create(&c, w), KVSHM_OK);
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, r), KVSHM_OK);
}

static inline uint64_t shmt_rand(uint64_t *s)
{
    uint64_t x = (*s += UINT64_C(0x9e3779b97f4a7c15));
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

static inline double shmt_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Blocking read/write of exactly n bytes on a pipe. */
static inline int shmt_read(int fd, void *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)p + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}
static inline int shmt_write(int fd, const void *p, size_t n)
{
    size_t put = 0;
    while (put < n) {
        ssize_t r = write(fd, (const char *)p + put, n - put);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        put += (size_t)r;
    }
    return 0;
}

/* Wait for a child and return its exit status (or 128 + signal). */
static inline int shmt_wait(pid_t pid)
{
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return -1;
    if (WIFEXITED(st)) return WEXITSTATUS(st);
    if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
    return -1;
}

#endif
