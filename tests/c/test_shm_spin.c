/* test_shm_spin.c - adaptive spin-then-sleep waiting (shm/spinwait.c): the
 * spin budget shrinks when waits run out of it and stays when they succeed
 * quickly, a low budget is re-grown by a probe; the usable-CPU count (one
 * CPU by sched_setaffinity: no spinning at all); the free-core rule over
 * shared spinner counts (in a shared mapping, from two processes). */
#include <sched.h>
#include <sys/mman.h>

#include "shm_test_util.h"
#include "spinwait.h"

/* spins here must not depend on how busy the machine is */
static void no_crowd_check(void) { kvshm_spin_set_crowd_check(0); }
TestSuite(shm_spin, .init = no_crowd_check, .timeout = 120);

/* Ready after `after` polls (0: never). */
typedef struct polls {
    uint64_t n, after;
    const uint32_t *watch;  /* if set: the first poll records *watch in seen */
    uint32_t seen;
} polls;

static int ready_after(void *ctx)
{
    polls *p = ctx;
    if (p->watch && p->n == 0) p->seen = *(volatile const uint32_t *)p->watch;
    p->n++;
    return p->after && p->n >= p->after;
}

Test(shm_spin, sleeping_waits_shrink_the_budget_quick_ones_keep_it)
{
    if (kvshm_spin_usable_cpus() < 2) return;   /* spins nowhere: the next test covers it */
    kvshm_spin s;
    kvshm_spin_init(&s, KVSHM_SPIN_CLIENT_NS);
    cr_assert_eq(s.budget_ns, KVSHM_SPIN_CLIENT_NS);
    /* quick successes: every wait spins and ends ready; the budget stays
     * above the floor (never collapses to "do not spin") */
    for (int i = 0; i < 200; i++) {
        polls p = {.after = 3};
        cr_assert_eq(kvshm_spin_until(&s, NULL, ready_after, &p), 1);
    }
    cr_assert_eq(s.spins, 200);
    cr_assert_eq(s.hits, 200);
    cr_assert(s.budget_ns >= 2000 && s.budget_ns < KVSHM_SPIN_CLIENT_NS,
              "budget %u ns follows twice the short waits", s.budget_ns);
    /* a wait that runs out of budget (the caller then sleeps) shrinks it */
    uint32_t before = s.budget_ns;
    polls never = {.after = 0};
    double t0 = shmt_now();
    cr_assert_eq(kvshm_spin_until(&s, NULL, ready_after, &never), 0);
    cr_assert_lt(shmt_now() - t0, 0.05, "a spin is bounded by its budget");
    cr_assert_lt(s.budget_ns, before);
    cr_assert_eq(s.spins, 201);
    /* many misses: below 1 us the site stops spinning between probes */
    for (int i = 0; i < 60; i++) kvshm_spin_until(&s, NULL, ready_after, &never);
    cr_assert_lt(s.budget_ns, 1000);
    uint64_t spins = s.spins;
    int spun = 0;
    for (int i = 0; i < 31; i++) {
        polls p = {.after = 0};
        kvshm_spin_until(&s, NULL, ready_after, &p);
        spun += p.n > 1;
    }
    cr_assert_leq(s.spins - spins, 1, "at most one probe in 31 waits");
    cr_assert_leq(spun, 1);
    /* a probe that succeeds puts the budget back up at once */
    for (int i = 0; i < 40 && s.budget_ns < 2000; i++) {
        polls p = {.after = 3};
        kvshm_spin_until(&s, NULL, ready_after, &p);
    }
    cr_assert_geq(s.budget_ns, 2000, "re-grown by a probe");
}

Test(shm_spin, one_usable_cpu_never_spins)
{
    pid_t pid = fork();
    if (pid == 0) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(sched_getcpu(), &one);
        if (sched_setaffinity(0, sizeof one, &one) != 0) _exit(2);
        if (kvshm_spin_usable_cpus() != 1) _exit(3);   /* counted again in the child */
        kvshm_spin s;
        kvshm_spin_init(&s, KVSHM_SPIN_WRITER_NS);
        for (int i = 0; i < 100; i++) {
            polls p = {.after = 0};
            if (kvshm_spin_until(&s, NULL, ready_after, &p) != 0) _exit(4);
            if (p.n > 2) _exit(5);   /* a yield and a check or two, no spin */
        }
        if (s.spins != 0 || s.budget_ns != KVSHM_SPIN_WRITER_NS) _exit(6);
        _exit(0);
    }
    cr_assert_eq(shmt_wait(pid), 0);
    cpu_set_t all;
    cr_assert_eq(sched_getaffinity(0, sizeof all, &all), 0);
    cr_assert_leq(kvshm_spin_usable_cpus(), CPU_COUNT(&all));
    cr_assert_geq(kvshm_spin_usable_cpus(), 1);
}

/* A spin that counts itself in *inside (shared) while admitted: the
 * first poll enters and checks the count, the second leaves and ends the
 * wait (no clock read falls between them, so nothing else ends it). */
typedef struct inside_poll {
    uint32_t *inside, max;
    int polls, over;
} inside_poll;

static int ready_inside(void *ctx)
{
    inside_poll *p = ctx;
    if (p->polls++ == 0) {
        if (__atomic_add_fetch(p->inside, 1, __ATOMIC_SEQ_CST) > p->max) p->over = 1;
        return 0;
    }
    __atomic_sub_fetch(p->inside, 1, __ATOMIC_SEQ_CST);
    return 1;
}

/* 2000 short spins through a client gate; 1 if, while one of them was
 * admitted, more than `max` were admitted at once. */
static int race_for_core(const kvshm_spin_gate *g, uint32_t *inside, uint32_t max)
{
    kvshm_spin s;
    int over = 0;
    for (int i = 0; i < 2000; i++) {
        kvshm_spin_init(&s, KVSHM_SPIN_CLIENT_NS);
        inside_poll q = {.inside = inside, .max = max};
        kvshm_spin_until(&s, g, ready_inside, &q);
        over |= q.over;
    }
    return over;
}

/* The shared words of the rule, in a mapping both processes see. */
struct words {
    uint32_t spinners, mark, writer_spinning, inside;
};

Test(shm_spin, free_core_rule_counts_spinning_clients)
{
    int cpus = kvshm_spin_usable_cpus();
    if (cpus < 2) return;
    struct words *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    cr_assert_neq(w, MAP_FAILED);
    kvshm_spin_gate client = {.spinners = &w->spinners, .mark = &w->mark};
    kvshm_spin_gate writer = {.spinners = &w->spinners, .mark = &w->writer_spinning, .writer = 1};
    kvshm_spin s;
    /* (cpus - 1) clients spinning: one core left, the client takes it
     * and counts and marks itself while spinning */
    w->spinners = (uint32_t)cpus - 1;
    kvshm_spin_init(&s, KVSHM_SPIN_CLIENT_NS);
    polls p = {.after = 5, .watch = &w->spinners};
    cr_assert_eq(kvshm_spin_until(&s, &client, ready_after, &p), 1);
    cr_assert_eq(p.seen, (uint32_t)cpus, "counted while spinning");
    cr_assert_eq(w->spinners, (uint32_t)cpus - 1, "uncounted after");
    p = (polls){.after = 5, .watch = &w->mark};
    cr_assert_eq(kvshm_spin_until(&s, &client, ready_after, &p), 1);
    cr_assert_eq(p.seen, 1, "slot marked while spinning");
    cr_assert_eq(w->mark, 0);
    /* cpus clients spinning: no core left */
    w->spinners = (uint32_t)cpus;
    p = (polls){.after = 5};
    cr_assert_eq(kvshm_spin_until(&s, &client, ready_after, &p), 0);
    cr_assert_eq(p.n, 0, "did not spin");
    cr_assert_eq(w->spinners, (uint32_t)cpus);
    /* the writer spins idle beside them, not beside more (leaked counts) */
    kvshm_spin ws;
    kvshm_spin_init(&ws, KVSHM_SPIN_WRITER_NS);
    p = (polls){.after = 5, .watch = &w->writer_spinning};
    cr_assert_eq(kvshm_spin_until(&ws, &writer, ready_after, &p), 1);
    cr_assert_eq(p.seen, 1, "writer_spinning set while spinning");
    cr_assert_eq(w->writer_spinning, 0);
    w->spinners = (uint32_t)cpus + 1;
    p = (polls){.after = 5};
    cr_assert_eq(kvshm_spin_until(&ws, &writer, ready_after, &p), 0);
    cr_assert_eq(p.n, 0);

    /* two processes racing for the last core: never both admitted (a
     * refused party's count comes and goes, but it never spins) */
    w->spinners = (uint32_t)cpus - 1;
    pid_t pid = fork();
    if (pid == 0) _exit(race_for_core(&client, &w->inside, 1));
    cr_assert_eq(race_for_core(&client, &w->inside, 1), 0);
    cr_assert_eq(shmt_wait(pid), 0, "the child never spun beside another spinner");
    cr_assert_eq(w->spinners, (uint32_t)cpus - 1, "every count taken back");
    /* a spinner that died marked is taken back once */
    w->spinners = 3;
    w->mark = 1;
    kvshm_spin_reap(&w->spinners, &w->mark);
    kvshm_spin_reap(&w->spinners, &w->mark);
    cr_assert_eq(w->spinners, 2);
    cr_assert_eq(w->mark, 0);
    munmap(w, 4096);
}
