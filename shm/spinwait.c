/*
 * spinwait.c -- adaptive spin-then-sleep waiting (spinwait.h).
 *
 * Budget rule: glibc's adaptive mutex (nptl/pthread_mutex_lock.c,
 * PTHREAD_MUTEX_ADAPTIVE_NP) keeps a per-lock spin count and after each
 * acquisition moves it by `spins += (observed - spins) / 8`. Here the
 * observation of a wait that became ready after t ns of spinning is 2t (so
 * the next wait may take twice as long and still be caught), capped at the
 * site's cap; the observation of a wait that ran out of budget is 0, so a
 * site whose peer keeps it waiting longer than the budget stops spinning
 * after a few dozen waits. A budget below SPIN_LOW_NS no longer spins
 * except every PROBE_EVERY-th wait, which spins up to the cap: a probe that
 * succeeds puts the budget straight back to 2t. Successes never set less
 * than SPIN_MIN_NS, so a site whose waits are all short keeps spinning.
 *
 * Other processes on the CPUs: a spin that has lasted SPIN_YIELD_NS (about
 * an acknowledged put's round trip when writer and client each have a CPU)
 * calls sched_yield at each clock read, since the peer it waits for may be
 * queued behind it. A yield with nobody else runnable returns at once, so
 * yielding early costs little; with a reader keeping one of two CPUs busy
 * (writer and client sharing the other) it raised acknowledged puts from
 * 24-26k/s at 10 us to 40-44k/s at 2 us (medians of 3, two runs each). A spin
 * that finds a gap of SPIN_PREEMPT_NS between two clock reads 16 polls
 * apart was preempted (another task wanted this CPU, perhaps the peer): it
 * stops, and its site drops to probing (budget 0). This extends the
 * free-core rule to processes that do not count themselves in the slot
 * file: a spinner that keeps being preempted does not spin.
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "atomics.h"
#include "spinwait.h"

#define SPIN_MIN_NS 2000u    /* smallest budget a success sets */
#define SPIN_LOW_NS 1000u    /* below it a site spins only to probe */
#define PROBE_EVERY 32u      /* waits between probes while the budget is low */
#define CLOCK_EVERY 16u      /* polls between two clock reads */
#define SPIN_YIELD_NS 2000u  /* after this long a spin yields the CPU at each clock read */
#define SPIN_PREEMPT_NS 50000u /* a gap this long between two clock reads: preempted */

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield" ::: "memory");
#else
    kv_compiler_barrier();
#endif
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- usable CPUs -------------------------------------------------------- */

static _Atomic int g_cpus;   /* 0: not computed in this process yet */
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;
static void cpus_forget(void) { atomic_store_explicit(&g_cpus, 0, memory_order_relaxed); }
static void install_atfork(void) { pthread_atfork(NULL, NULL, cpus_forget); }

/* ceil(quota / period) of a cgroup v2 cpu.max ("max 100000" or
 * "<quota> <period>"), or 0 when it sets no limit or cannot be read. */
static int cgroup_cpus(void)
{
    FILE *f = fopen("/sys/fs/cgroup/cpu.max", "re");
    if (!f) return 0;
    char quota[32];
    unsigned long long period = 0;
    int n = 0;
    if (fscanf(f, "%31s %llu", quota, &period) == 2 && strcmp(quota, "max") != 0 && period) {
        unsigned long long q = strtoull(quota, NULL, 10);
        if (q) n = (int)((q + period - 1) / period);
    }
    fclose(f);
    return n;
}

static int count_cpus(void)
{
    cpu_set_t set;
    int n = 0;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int q = cgroup_cpus();
    if (q > 0 && q < n) n = q;
    return n < 1 ? 1 : n;
}

int kvshm_spin_usable_cpus(void)
{
    int n = atomic_load_explicit(&g_cpus, memory_order_relaxed);
    if (__builtin_expect(n > 0, 1)) return n;
    pthread_once(&g_atfork_once, install_atfork);
    n = count_cpus();
    atomic_store_explicit(&g_cpus, n, memory_order_relaxed);
    return n;
}

/* ---- crowded CPUs ------------------------------------------------------
 * Processes that are not parties of the write path (and so are not counted
 * in the slot file) may fill the CPUs. The kernel tells how long this
 * thread waited on a run queue (/proc/thread-self/schedstat, second field:
 * run_delay in ns). Sampled at most every CROWD_PERIOD_NS per thread: when
 * the thread waited for a CPU more than CROWD_PCT percent of the period, the
 * CPUs are crowded and nobody in this thread spins until the next sample
 * says otherwise. The threshold is measured: the parties of the write path
 * crowd the CPUs themselves (a writer and two clients on two CPUs wait on a
 * run queue about a third of the time), and at 25% or 50% two clients
 * stopped spinning and ran at 0.4-0.5x the acknowledged puts of one client;
 * at 80% they ran at 0.7-1.2x; with no check at all, at about 0.75x (the
 * spin then also runs on CPUs that other processes keep busy, where at a
 * load of 5 on two CPUs it halved the rate of plain futex waits). */

#define CROWD_PERIOD_NS 20000000u  /* 20 ms */
#define CROWD_PCT 80u              /* waiting > 80% of the time: crowded */

static __thread struct { uint64_t at_ns, delay_ns; int crowded; } t_rq;

/* run_delay of this thread in ns, or UINT64_MAX if the kernel does not say. */
static uint64_t run_delay_ns(void)
{
    FILE *f = fopen("/proc/thread-self/schedstat", "re");
    if (!f) return UINT64_MAX;
    unsigned long long on_cpu, delay;
    int n = fscanf(f, "%llu %llu", &on_cpu, &delay);
    fclose(f);
    return n == 2 ? (uint64_t)delay : UINT64_MAX;
}

static _Atomic int g_crowd_check = 1;

void kvshm_spin_set_crowd_check(int on)
{
    atomic_store_explicit(&g_crowd_check, on, memory_order_relaxed);
}

static int cpus_crowded(uint64_t now)
{
    if (!atomic_load_explicit(&g_crowd_check, memory_order_relaxed)) return 0;
    if (t_rq.at_ns && now - t_rq.at_ns < CROWD_PERIOD_NS) return t_rq.crowded;
    uint64_t d = run_delay_ns();
    /* unknown, first sample, or a new task (a forked child): not crowded */
    if (d == UINT64_MAX || !t_rq.at_ns || d < t_rq.delay_ns) t_rq.crowded = 0;
    else t_rq.crowded = (d - t_rq.delay_ns) * 100u > (now - t_rq.at_ns) * CROWD_PCT;
    t_rq.at_ns = now;
    t_rq.delay_ns = d;
    return t_rq.crowded;
}

/* ---- the free-core rule ------------------------------------------------- */

/* Take a core for spinning if the rule allows; 1 if taken (undo with
 * gate_leave). */
static int gate_enter(const kvshm_spin_gate *g, int cpus)
{
    if (!g || !g->spinners) return 1;
    if (g->writer) {
        if (kv_atomic_load_relaxed32(g->spinners) > (uint32_t)cpus) return 0;
        if (g->mark) kv_atomic_store_relaxed32(g->mark, 1);
        return 1;
    }
    /* cheap refusal first: no locked instruction when there is clearly no
     * room */
    if (kv_atomic_load_relaxed32(g->spinners) >= (uint32_t)cpus) return 0;
    uint32_t prev = kv_atomic_fetch_add_acq_rel32(g->spinners, 1);
    if (prev >= (uint32_t)cpus) {
        kv_atomic_fetch_add_acq_rel32(g->spinners, (uint32_t)-1);
        return 0;
    }
    /* count first, mark second: a spinner killed between the two leaks
     * one count (spinning is then merely rarer) but never makes the
     * reaper take back a count that was not added */
    if (g->mark) kv_atomic_store_release32(g->mark, 1);
    return 1;
}

static void gate_leave(const kvshm_spin_gate *g)
{
    if (!g || !g->spinners) return;
    if (g->writer) {
        if (g->mark) kv_atomic_store_relaxed32(g->mark, 0);
        return;
    }
    if (g->mark) kv_atomic_store_release32(g->mark, 0);
    kv_atomic_fetch_add_acq_rel32(g->spinners, (uint32_t)-1);
}

void kvshm_spin_reap(uint32_t *spinners, uint32_t *mark)
{
    if (kv_atomic_load_acquire32(mark)) {
        kv_atomic_store_relaxed32(mark, 0);
        kv_atomic_fetch_add_acq_rel32(spinners, (uint32_t)-1);
    }
}

/* ---- budget -------------------------------------------------------------- */

void kvshm_spin_init(kvshm_spin *s, uint32_t cap_ns)
{
    memset(s, 0, sizeof *s);
    s->cap_ns = cap_ns;
    s->budget_ns = cap_ns;
    s->probe_in = PROBE_EVERY;
}

/* glibc's rule: budget += (observed - budget) / 8. */
static void adapt(kvshm_spin *s, uint64_t observed)
{
    int64_t d = ((int64_t)observed - (int64_t)s->budget_ns) / 8;
    s->budget_ns = (uint32_t)((int64_t)s->budget_ns + d);
}

int kvshm_spin_until(kvshm_spin *s, const kvshm_spin_gate *gate, kvshm_spin_ready ready,
                     void *ctx)
{
    if (s->cap_ns == 0) return 0;
    int cpus = kvshm_spin_usable_cpus();
    if (cpus < 2) {
        /* One CPU: spinning could only delay the peer. A peer we just woke
         * may be runnable on this CPU: let it run first. */
        for (int i = 0; i < 2; i++) {
            sched_yield();
            if (ready(ctx)) return 1;
        }
        return 0;
    }
    uint64_t budget = s->budget_ns;
    int probe = 0;
    if (budget < SPIN_LOW_NS) {
        if (--s->probe_in > 0) return 0;
        s->probe_in = PROBE_EVERY;
        budget = s->cap_ns;
        probe = 1;
    }
    uint64_t t0 = now_ns();
    if (cpus_crowded(t0)) return 0;
    if (!gate_enter(gate, cpus)) return 0;
    s->spins++;
    int hit = 0;
    uint64_t last = 0;
    int preempted = 0;
    for (uint32_t i = 1;; i++) {
        if (ready(ctx)) { hit = 1; break; }
        cpu_relax();
        if (i % CLOCK_EVERY == 0) {
            uint64_t t = now_ns() - t0;
            if (t - last >= SPIN_PREEMPT_NS) { preempted = 1; break; }
            last = t;
            if (t >= budget) break;
            /* past the typical round trip the peer may be waiting for this
             * CPU (other processes share it): offer it */
            if (t >= SPIN_YIELD_NS) sched_yield();
        }
    }
    gate_leave(gate);
    if (preempted) {
        /* another task wanted this CPU: spinning now costs the peer (or
         * someone) CPU time; only probes spin until one succeeds again */
        s->preempts++;
        s->budget_ns = 0;
        return 0;
    }
    if (!hit) {
        if (!probe) adapt(s, 0);
        return 0;
    }
    s->hits++;
    uint64_t target = 2 * (now_ns() - t0);
    if (target < SPIN_MIN_NS) target = SPIN_MIN_NS;
    if (target > s->cap_ns) target = s->cap_ns;
    if (probe) {
        if (target > s->budget_ns) s->budget_ns = (uint32_t)target;
    } else {
        adapt(s, target);
    }
    return 1;
}
