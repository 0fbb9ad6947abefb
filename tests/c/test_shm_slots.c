/* test_shm_slots.c - reader slots and epochs (shm/slots.c) with real
 * processes: an epoch pins retired memory; kill -9 of a reader inside an
 * epoch (100 rounds): the writer clears the slot within 1 s and used memory
 * returns to its baseline; SIGSTOP of a reader inside an epoch: reclamation
 * stops only up to the configured limit, then the reader is evicted, and
 * after SIGCONT it retries and reads correct values. The doorbell: rung
 * only for a sleeping writer, no lost wake-up between a client process and
 * the writer's idle wait (spinning on and off), a dead spinner's count
 * taken back when its slot is reaped. */
#include <fcntl.h>
#include <sys/mman.h>

#include "kvshm/ring.h"
#include "shm_test_util.h"
#include "spinwait.h"

static void setup(void) { setenv("KVSHM_POISON", "1", 1); shmt_setup(); }
static void teardown(void) { shmt_teardown(); }
TestSuite(shm_slots, .init = setup, .fini = teardown, .timeout = 300);

#define NKEYS 200
#define VLEN 100

static void keyname(char *k, int i) { snprintf(k, 16, "key-%05d", i); }
static void valfor(char *v, int gen, int i)
{
    memset(v, '.', VLEN);
    int n = snprintf(v, VLEN, "gen%d-key%d", gen, i);
    v[n] = '.';
}

/* Overwrite every key's cached value with generation `gen`. */
/* Load generation gen of every key into the cache: its status. */
static kvshm_status try_load_gen(kvshm_writer *w, int gen)
{
    static char keys[NKEYS][16], vals[NKEYS][VLEN];
    kvshm_kv kv[NKEYS];
    for (int i = 0; i < NKEYS; i++) {
        keyname(keys[i], i); valfor(vals[i], gen, i);
        kv[i] = (kvshm_kv){ keys[i], strlen(keys[i]), vals[i], VLEN, (uint64_t)gen };
    }
    return kvshm_writer_cache_load(w, kv, NKEYS);
}

static void load_gen(kvshm_writer *w, int gen) { cr_assert_eq(try_load_gen(w, gen), KVSHM_OK); }

/* Fork a reader that attaches, enters a read section, runs in_section (a
 * nonzero return is its exit code), and is stopped with SIGSTOP there.
 * After SIGCONT it reads the int the test writes to *down_fd and exits
 * with after(r, that int). Returns its pid. */
static pid_t fork_stopped_reader(int (*in_section)(kvshm_reader *),
                                 int (*after)(kvshm_reader *, int), int *down_fd)
{
    int up[2], down[2];
    cr_assert_eq(pipe(up), 0);
    cr_assert_eq(pipe(down), 0);
    pid_t pid = fork();
    if (pid == 0) {
        kvshm_reader *r;
        if (kvshm_reader_attach(shmt_seg, shmt_slot, &r) != KVSHM_OK) _exit(2);
        if (kvshm_reader_enter(r) != KVSHM_OK) _exit(3);
        int rc = in_section ? in_section(r) : 0;
        if (rc) _exit(rc);
        char b = 'r';
        shmt_write(up[1], &b, 1);
        int v;
        if (shmt_read(down[0], &v, sizeof v)) _exit(5);  /* stopped in here */
        _exit(after(r, v));
    }
    char b;
    cr_assert_eq(shmt_read(up[0], &b, 1), 0);
    cr_assert_eq(kill(pid, SIGSTOP), 0);
    int wst;
    cr_assert_eq(waitpid(pid, &wst, WUNTRACED), pid);
    cr_assert(WIFSTOPPED(wst));
    *down_fd = down[1];
    return pid;
}

/* In the child: every key has generation gen? */
static int check_gen(kvshm_reader *r, int gen)
{
    for (int i = 0; i < NKEYS; i++) {
        char k[16], v[VLEN], want[VLEN];
        keyname(k, i); valfor(want, gen, i);
        kvshm_val out = { v, sizeof v, 0, 0, NULL, NULL };
        if (kvshm_reader_get(r, k, strlen(k), &out) != KVSHM_OK) return 0;
        if (out.len != VLEN || memcmp(v, want, VLEN) != 0) return 0;
    }
    return 1;
}

Test(shm_slots, epoch_pins_retired_memory_until_leave)
{
    kvshm_config c = shmt_config(16u << 20, 1);
    kvshm_writer *w;
    cr_assert_eq(kvshm_writer_create(&c, &w), KVSHM_OK);
    load_gen(w, 1);
    kvshm_reader *r;
    cr_assert_eq(kvshm_reader_attach(shmt_seg, shmt_slot, &r), KVSHM_OK);
    kvshm_maint m;
    cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
    uint64_t base = m.used_bytes;
    cr_assert_eq(m.retired_bytes, 0);
    cr_assert_eq(kvshm_reader_enter(r), KVSHM_OK);
    load_gen(w, 2);
    cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
    cr_assert_gt(m.retired_bytes, 0, "the reader's epoch pins generation 1");
    cr_assert_lt(m.min_live_epoch, m.epoch);
    cr_assert_eq(kvshm_reader_leave(r), KVSHM_OK);
    cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
    cr_assert_eq(m.retired_bytes, 0);
    cr_assert_eq(m.used_bytes, base);
    cr_assert_eq(m.live_slots, 1);
    kvshm_reader_detach(r);
    cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
    cr_assert_eq(m.live_slots, 0);
    kvshm_writer_destroy(w, 1);
}

Test(shm_slots, killed_reader_slot_cleared_and_memory_returns)
{
    kvshm_config c = shmt_config(32u << 20, 1);
    kvshm_writer *w;
    cr_assert_eq(kvshm_writer_create(&c, &w), KVSHM_OK);
    load_gen(w, 0);
    kvshm_maint m;
    cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
    cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
    const uint64_t baseline = m.used_bytes;
    cr_assert_eq(m.retired_bytes, 0);
    double worst = 0;
    for (int round = 1; round <= 100; round++) {
        int p[2];
        cr_assert_eq(pipe(p), 0);
        pid_t pid = fork();
        if (pid == 0) {
            kvshm_reader *r;
            if (kvshm_reader_attach(shmt_seg, shmt_slot, &r) != KVSHM_OK) _exit(2);
            kvshm_reader_enter(r);
            char k[16], v[VLEN];
            keyname(k, round % NKEYS);
            kvshm_val out = { v, sizeof v, 0, 0, NULL, NULL };
            if (kvshm_reader_get(r, k, strlen(k), &out) != KVSHM_OK) _exit(3);
            uint32_t slot = kvshm_reader_slot(r);
            shmt_write(p[1], &slot, sizeof slot);
            for (;;) pause();   /* inside the epoch until killed */
        }
        close(p[1]);
        uint32_t slot;
        cr_assert_eq(shmt_read(p[0], &slot, sizeof slot), 0, "child attached (round %d)", round);
        close(p[0]);
        load_gen(w, round);   /* retires the previous generation: pinned by the child */
        cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
        cr_assert_gt(m.retired_bytes, 0, "round %d: child's epoch pins memory", round);
        cr_assert_eq(m.live_slots, 1);
        cr_assert_eq(kill(pid, SIGKILL), 0);
        cr_assert_eq(shmt_wait(pid), 128 + SIGKILL);
        double t0 = shmt_now();
        uint32_t reaped = 0;
        do {
            cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
            reaped += m.reaped;
        } while (reaped == 0 && shmt_now() - t0 < 2.0);
        double dt = shmt_now() - t0;
        if (dt > worst) worst = dt;
        cr_assert_eq(reaped, 1, "round %d: slot %u cleared", round, slot);
        cr_assert_lt(dt, 1.0, "round %d: cleared within 1 s (took %.3f s)", round, dt);
        cr_assert_eq(m.live_slots, 0);
        cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
        cr_assert_eq(m.retired_bytes, 0, "round %d", round);
        cr_assert_eq(m.used_bytes, baseline, "round %d: used memory back to baseline", round);
    }
    const struct kvshm_hdr *h = (const struct kvshm_hdr *)kvshm_writer_seg(w)->base;
    cr_assert_eq(h->h_reaped, 100);
    cr_log_info("killed-reader: worst time to clear a slot %.6f s", worst);
    kvshm_writer_destroy(w, 1);
}

/* stalled_reader_evicted_at_limit_then_retries: the child's read of key 3
 * inside its section, and its retry after the eviction */
static int read_key3(kvshm_reader *r)
{
    char k[16], v[VLEN], want[VLEN];
    keyname(k, 3); valfor(want, 0, 3);
    kvshm_val out = { v, sizeof v, 0, 0, NULL, NULL };
    return kvshm_reader_get(r, k, strlen(k), &out) != KVSHM_OK || memcmp(v, want, VLEN) ? 4 : 0;
}

static int retry_after_eviction(kvshm_reader *r, int final_gen)
{
    /* still "inside" the old section: the writer has evicted us */
    char k[16], v[VLEN];
    keyname(k, 3);
    kvshm_val out = { v, sizeof v, 0, 0, NULL, NULL };
    kvshm_reader_get(r, k, strlen(k), &out);
    if (kvshm_reader_leave(r) != KVSHM_E_EVICTED) return 6;
    /* retry: fresh reads see the latest generation */
    if (!check_gen(r, final_gen)) return 7;
    kvshm_reader_detach(r);
    return 0;
}

Test(shm_slots, stalled_reader_evicted_at_limit_then_retries)
{
    kvshm_config c = shmt_config(32u << 20, 1);
    c.retire_limit_bytes = 96u << 10;
    kvshm_writer *w;
    cr_assert_eq(kvshm_writer_create(&c, &w), KVSHM_OK);
    load_gen(w, 0);
    kvshm_maint m;
    cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
    int down;
    pid_t pid = fork_stopped_reader(read_key3, retry_after_eviction, &down);
    uint64_t prev_retired = 0, per_batch = 0, max_before = 0;
    int evicted_at = 0, gen;
    for (gen = 1; gen <= 40 && !evicted_at; gen++) {
        load_gen(w, gen);
        cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
        if (gen == 1) per_batch = m.retired_bytes;
        if (m.evicted) { evicted_at = gen; break; }
        cr_assert_geq(m.retired_bytes, prev_retired, "pinned: nothing reclaimed while stalled");
        cr_assert_leq(m.retired_bytes, c.retire_limit_bytes,
                      "gen %d: retired %lu beyond the limit without eviction", gen,
                      (unsigned long)m.retired_bytes);
        prev_retired = max_before = m.retired_bytes;
    }
    cr_assert_gt(evicted_at, 1, "the stalled reader was evicted (after %d batches)", evicted_at);
    cr_assert_eq(m.evicted, 1);
    cr_assert_gt(per_batch, 0);
    cr_assert_gt(max_before + per_batch, c.retire_limit_bytes, "evicted only once the limit was crossed");
    cr_assert_leq(m.retired_bytes, per_batch, "after eviction the backlog is reclaimed");
    /* keep writing: the evicted reader no longer pins anything */
    for (int i = 0; i < 5; i++) {
        load_gen(w, ++gen);
        cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
        cr_assert_eq(m.retired_bytes, 0);
        cr_assert_eq(m.evicted, 0);
    }
    const struct kvshm_hdr *h = (const struct kvshm_hdr *)kvshm_writer_seg(w)->base;
    cr_assert_eq(h->h_evictions, 1);
    cr_assert_eq(shmt_write(down, &gen, sizeof gen), 0);
    cr_assert_eq(kill(pid, SIGCONT), 0);
    cr_assert_eq(shmt_wait(pid), 0, "child retried after eviction and read generation %d", gen);
    kvshm_writer_destroy(w, 1);
}

/* A region smaller than the configured retire limit (the default 16 MiB
 * against a 6 MiB shard): the limit in force is capped at a quarter of the
 * region, so a reader stalled in a read section is evicted and the writer
 * keeps loading. Uncapped, the pinned retired blocks fill the region and
 * the load fails with KVSHM_E_FULL before the limit is ever crossed. */
static int leave_evicted(kvshm_reader *r, int gen)
{
    (void)gen;
    if (kvshm_reader_leave(r) != KVSHM_E_EVICTED) return 6;
    kvshm_reader_detach(r);
    return 0;
}

Test(shm_slots, stalled_reader_evicted_before_a_small_region_fills)
{
    kvshm_config c = shmt_config(8u << 20, 1);
    cr_assert_gt(c.retire_limit_bytes, 8u << 20, "the default limit exceeds this region");
    kvshm_writer *w;
    cr_assert_eq(kvshm_writer_create(&c, &w), KVSHM_OK);
    load_gen(w, 0);
    int down;
    pid_t pid = fork_stopped_reader(NULL, leave_evicted, &down);
    /* 200 keys x 100 bytes per generation: 600 generations retire several
     * times the region */
    kvshm_maint m;
    uint64_t evicted = 0, worst = 0;
    int gen;
    for (gen = 1; gen <= 600; gen++) {
        kvshm_status st = try_load_gen(w, gen);
        cr_assert_eq(st, KVSHM_OK, "generation %d: %s (retired %lu bytes, %lu evictions)", gen,
                     kvshm_strerror(st), (unsigned long)worst, (unsigned long)evicted);
        cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
        evicted += m.evicted;
        if (m.retired_bytes > worst) worst = m.retired_bytes;
    }
    cr_assert_eq(evicted, 1, "the stalled reader was evicted once");
    cr_assert_leq(worst, (8u << 20) / 4 + 64 * 1024, "retired memory stayed near a quarter");
    cr_assert_eq(shmt_write(down, &gen, sizeof gen), 0);
    cr_assert_eq(kill(pid, SIGCONT), 0);
    cr_assert_eq(shmt_wait(pid), 0, "the child saw its eviction");
    kvshm_writer_destroy(w, 1);
}

/* ---- doorbell and the writer's idle wait ------------------------------------ */

static int flag_work(void *ctx, int final) { (void)final; return *(int *)ctx; }
static int flag_ready(void *ctx) { return *(volatile int *)ctx; }

/* The slot file (header and the fixture's 16 slots) through a mapping of
 * our own (white box). */
#define SLOTFILE_BYTES (KVSHM_SLOTS_OFF + 16 * sizeof(struct kvshm_slot))
static struct kvshm_slothdr *map_slothdr(void)
{
    int fd = shm_open(shmt_slot, O_RDWR, 0);
    cr_assert_geq(fd, 0);
    void *p = mmap(NULL, SLOTFILE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    cr_assert_neq(p, MAP_FAILED);
    return p;
}

static int ring_has_data(void *ctx, int final)
{
    (void)final;
    return kvshm_ring_has_data(ctx);
}

/* A client process publishes records one at a time and waits for each to
 * be released; the writer drains and, when the ring is empty, waits with
 * kvshm_writer_idle_wait. A lost wake-up on either side stalls a wait
 * until its 10 s timeout and fails the test. */
static void doorbell_ping_pong(int spin)
{
    enum { ROUNDS = 20000 };
    kvshm_writer *w;
    kvshm_config c = shmt_config(16u << 20, 1);
    cr_assert_eq(kvshm_writer_create(&c, &w), KVSHM_OK);
    shmt_w = w;
    struct kvshm_slothdr *sh = map_slothdr();
    if (!spin) sh->sh_spinners = 1000;   /* no free core for the writer's idle spin */
    kvshm_ring *p, *cons;
    cr_assert_eq(kvshm_ring_create(4096, &p), KVSHM_OK);
    cr_assert_eq(kvshm_ring_map(kvshm_ring_fd(p), &cons), KVSHM_OK);
    pid_t pid = fork();
    if (pid == 0) {
        kvshm_reader *r;
        if (kvshm_reader_attach(shmt_seg, shmt_slot, &r) != KVSHM_OK) _exit(2);
        kvshm_ring_set_spin(p, r, spin ? KVSHM_RING_SPIN_DEFAULT : 0);
        for (uint64_t i = 0; i < ROUNDS; i++) {
            void *pl;
            if (kvshm_ring_reserve(p, sizeof i, &pl, 10000) != KVSHM_OK) _exit(3);
            memcpy(pl, &i, sizeof i);
            uint64_t pos = kvshm_ring_publish_quiet(p, 1);
            kvshm_reader_ring_doorbell(r);
            if (kvshm_ring_wait_consumed(p, pos, 10000) != KVSHM_OK) _exit(4);
        }
        kvshm_ring_set_spin(p, NULL, 0);
        kvshm_reader_detach(r);
        _exit(0);
    }
    uint64_t got = 0;
    double t0 = shmt_now();
    while (got < ROUNDS) {
        uint32_t t, l;
        const void *q;
        kvshm_status st = kvshm_ring_peek(cons, &t, &q, &l);
        if (st == KVSHM_EMPTY) {
            kvshm_ring_release(cons);
            cr_assert_eq(kvshm_writer_idle_wait(w, ring_has_data, cons, 10000), KVSHM_OK,
                         "record %lu never arrived", (unsigned long)got);
            continue;
        }
        cr_assert_eq(st, KVSHM_OK);
        uint64_t v;
        memcpy(&v, q, sizeof v);
        cr_assert_eq(v, got);
        kvshm_ring_consume(cons);
        got++;
    }
    kvshm_ring_release(cons);
    cr_assert_eq(shmt_wait(pid), 0);
    cr_log_info("doorbell ping-pong, spinning %s: %.0f rounds/s, doorbell rung %u times",
                spin ? "on" : "off", ROUNDS / (shmt_now() - t0), sh->sh_doorbell);
    if (!spin) cr_assert_gt(sh->sh_doorbell, 0, "the writer slept and was rung awake");
    cr_assert_eq(sh->sh_writer_sleeping, 0);
    munmap(sh, SLOTFILE_BYTES);
    kvshm_ring_close(cons);
    kvshm_ring_close(p);
}

Test(shm_slots, doorbell_no_lost_wakeup_spinning_off) { doorbell_ping_pong(0); }
Test(shm_slots, doorbell_no_lost_wakeup_spinning_on) { doorbell_ping_pong(1); }

/* A client that finds the writer awake does not touch the doorbell (no
 * store to the shared line, no system call); one that finds it asleep
 * bumps it once per ring. */
Test(shm_slots, doorbell_rung_only_for_a_sleeping_writer)
{
    kvshm_writer *w;
    kvshm_reader *r;
    shmt_open(16u << 20, 1, &w, &r);
    struct kvshm_slothdr *sh = map_slothdr();
    for (int i = 0; i < 1000; i++) kvshm_reader_ring_doorbell(r);
    cr_assert_eq(sh->sh_doorbell, 0);
    sh->sh_writer_sleeping = 1;
    for (int i = 0; i < 3; i++) kvshm_reader_ring_doorbell(r);
    cr_assert_eq(sh->sh_doorbell, 3);
    sh->sh_writer_sleeping = 0;
    /* the idle wait returns at once with work, and times out without */
    int yes = 1, no = 0;
    cr_assert_eq(kvshm_writer_idle_wait(w, flag_work, &yes, 1000), KVSHM_OK);
    double t0 = shmt_now();
    cr_assert_eq(kvshm_writer_idle_wait(w, flag_work, &no, 30), KVSHM_TIMEOUT);
    cr_assert_geq(shmt_now() - t0, 0.025);
    cr_assert_eq(sh->sh_writer_sleeping, 0);
    cr_assert_eq(sh->sh_writer_spinning, 0);
    munmap(sh, SLOTFILE_BYTES);
}

/* A client killed while spinning in a wait leaves its count in the slot
 * file; reaping its slot takes it back. */
Test(shm_slots, dead_spinner_count_taken_back_when_reaped)
{
    if (kvshm_spin_usable_cpus() < 2) return;   /* nobody spins on one CPU */
    kvshm_writer *w;
    kvshm_config c = shmt_config(16u << 20, 1);
    cr_assert_eq(kvshm_writer_create(&c, &w), KVSHM_OK);
    shmt_w = w;
    struct kvshm_slothdr *sh = map_slothdr();
    pid_t pid = fork();
    if (pid == 0) {
        kvshm_reader *r;
        if (kvshm_reader_attach(shmt_seg, shmt_slot, &r) != KVSHM_OK) _exit(2);
        kvshm_spin s;
        kvshm_spin_init(&s, UINT32_MAX);   /* about 4 s */
        /* a client's gate, as the ring builds it from the reader */
        struct kvshm_slot *sl = (struct kvshm_slot *)((uint8_t *)sh + KVSHM_SLOTS_OFF);
        kvshm_spin_gate g = {.spinners = &sh->sh_spinners,
                             .mark = &sl[kvshm_reader_slot(r)].sl_spinning};
        int never = 0;
        kvshm_spin_set_crowd_check(0);
        for (;;) kvshm_spin_until(&s, &g, flag_ready, &never);   /* until killed */
    }
    double t0 = shmt_now();
    while (__atomic_load_n(&sh->sh_spinners, __ATOMIC_ACQUIRE) != 1)
        cr_assert_lt(shmt_now() - t0, 3.0, "the child never spun");
    cr_assert_eq(kill(pid, SIGKILL), 0);
    cr_assert_eq(shmt_wait(pid), 128 + SIGKILL);
    cr_assert_eq(sh->sh_spinners, 1, "left behind by the dead spinner");
    kvshm_maint m;
    cr_assert_eq(kvshm_writer_maintain(w, &m), KVSHM_OK);
    cr_assert_eq(m.reaped, 1);
    cr_assert_eq(sh->sh_spinners, 0, "taken back with the slot");
    munmap(sh, SLOTFILE_BYTES);
}
