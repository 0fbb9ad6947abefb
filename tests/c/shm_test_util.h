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
/* The writer and reader opened by shmt_open; shmt_teardown closes them. */
static kvshm_writer *shmt_w __attribute__((unused));
static kvshm_reader *shmt_r __attribute__((unused));

/* Fresh names for this test process; .fini removes them. */
static inline void shmt_names(void)
{
    static unsigned n;
    snprintf(shmt_seg, sizeof shmt_seg, "/kvshm-t%d-%u-seg", (int)getpid(), n);
    snprintf(shmt_slot, sizeof shmt_slot, "/kvshm-t%d-%u-slot", (int)getpid(), n);
    n++;
}
static inline void shmt_setup(void) { shmt_names(); }

/* Detach the fixture's reader and destroy its writer (either may be gone). */
static inline void shmt_close(void)
{
    kvshm_reader_detach(shmt_r);
    shmt_r = NULL;
    kvshm_writer_destroy(shmt_w, 1);
    shmt_w = NULL;
}
static inline void shmt_teardown(void)
{
    shmt_close();
    kvshm_unlink(shmt_seg, shmt_slot);
}

/* A small writer config over this test's names: `size` bytes, `shards`
 * shards, 16 slots, 1 MiB memtables, the default retire limit. */
static inline kvshm_config shmt_config(uint64_t size, uint32_t shards)
{
    kvshm_config d;
    kvshm_config_default(&d);
    return (kvshm_config){.seg_name = shmt_seg, .slot_name = shmt_slot, .size_bytes = size,
                          .shards = shards, .nslots = 16, .memtable_bytes = 1u << 20,
                          .retire_limit_bytes = d.retire_limit_bytes,
                          .generation = d.generation};
}

/* Create a writer over shmt_config(size, shards) and attach one reader; both
 * stay the fixture's (shmt_w, shmt_r) until shmt_close or the teardown. */
static inline void shmt_open(uint64_t size, uint32_t shards, kvshm_writer **w, kvshm_reader **r)
{
    kvshm_config c = shmt_config(size, shards);
    cr_assert_eq(kvshm_writer_create(&c, &shmt_w), KVSHM_OK);
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &shmt_r), KVSHM_OK);
    *w = shmt_w;
    *r = shmt_r;
}

/*
 * White-box suites of the blocks inside a shard (blocks, memtable, tree):
 * suite `name` over a one-shard writer W of seg_bytes, whose mapping is S,
 * and a scratch allocator B over the last scratch_bytes of it (the writer's
 * own shard allocator only bump-allocates from the front: one memtable and
 * a view here, so the two never meet). poison: B fills freed blocks with
 * 0xdb, so a block reused while still reachable shows at once.
 */
#define SHMT_SCRATCH_SUITE(name, seg_bytes, scratch_bytes, poison_freed, timeout_s) \
    static kvshm_writer *W;                                                          \
    static kvshm_blocks B;                                                           \
    static kvshm_seg *S;                                                             \
    static void scratch_setup(void)                                                  \
    {                                                                                \
        shmt_setup();                                                                \
        kvshm_config c = shmt_config((seg_bytes), 1);                                \
        cr_assert_eq(kvshm_writer_create(&c, &W), KVSHM_OK);                         \
        S = (kvshm_seg *)kvshm_writer_seg(W);                                        \
        kvshm_blocks_init(&B, S, S->size - (scratch_bytes), (scratch_bytes), NULL);  \
        B.poison = (poison_freed);                                                   \
    }                                                                                \
    static void scratch_teardown(void)                                               \
    {                                                                                \
        kvshm_blocks_fini(&B);                                                       \
        kvshm_writer_destroy(W, 1);                                                  \
        shmt_teardown();                                                             \
    }                                                                                \
    TestSuite(name, .init = scratch_setup, .fini = scratch_teardown, .timeout = (timeout_s))

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
