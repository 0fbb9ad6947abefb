/*
 * spinwait.h -- adaptive spin-then-sleep waiting, private to shm/.
 *
 * A party that waits for another process (a client for the writer to apply
 * its record, the writer for a client to publish one) first spins on the
 * condition for a bounded time, and only then sleeps on a futex: a futex
 * wake-up across processes costs about 12 us, where the wait itself is often
 * 1-5 us. Two rules keep spinning from doing harm:
 *
 *   budget     each wait site keeps a spin budget in nanoseconds that adapts
 *              to how long its waits really last (kvshm_spin below): a wait
 *              that became ready while spinning after t ns moves the budget
 *              toward 2t; a wait that ran out of budget (and went to sleep)
 *              shrinks it, so a site whose peer is slow (a writer in the
 *              middle of a commit) stops burning CPU; a budget below
 *              1 us is re-grown by an occasional probe at the full cap.
 *   free core  a party spins only if it would not take a core that the
 *              party it waits on needs (kvshm_spin_gate below). With one
 *              usable CPU nobody spins; nor does a thread that has lately
 *              waited for a CPU more than 80% of the time (other processes
 *              crowd the CPUs: its run-queue delay, sampled every 20 ms),
 *              nor a spin that finds itself preempted.
 *
 * Caps: 50 us for client waits and 200 us for the writer's idle spin. They
 * are the values that did best when spin-then-futex waits were measured on
 * the project's 2-core VM (client ~50 us, writer ~200 us: 463k acknowledged
 * puts/s from one Python process): long enough to cover a put's round trip and a client's
 * time between two puts, short enough that a miss costs little next to the
 * futex sleep that follows.
 *
 * Threads: a kvshm_spin is owned by one thread at a time (its wait site);
 * the gate's shared words are atomics and may be used by any number of
 * processes at once.
 */
#ifndef KVSHM_SPINWAIT_H
#define KVSHM_SPINWAIT_H

#include <stdint.h>

#define KVSHM_SPIN_CLIENT_NS 50000u   /* cap of a client's waits (see above) */
#define KVSHM_SPIN_WRITER_NS 200000u  /* cap of the writer's idle spin (see above) */

/* Per-site spin state. Zero-initialised means "never spin"; use
 * kvshm_spin_init. The counters are statistics of this site. */
typedef struct kvshm_spin {
    uint32_t budget_ns;  /* current budget, <= cap_ns */
    uint32_t cap_ns;     /* upper bound; 0: this site never spins */
    uint32_t probe_in;   /* waits left before the next probe while the budget is low */
    uint32_t pad;
    uint64_t spins;      /* waits that spun */
    uint64_t hits;       /* of which became ready while spinning */
    uint64_t preempts;   /* of which were preempted (then the budget drops to 0) */
} kvshm_spin;

/*
 * The free-core rule's shared words (both may be NULL, then nothing is
 * counted and only the usable CPU count limits spinning).
 *
 * A client (writer == 0) spins only if fewer clients than usable CPUs spin
 * already (counted before its own increment). The writer is not counted:
 * while clients wait for it, it is either applying their records or about
 * to, and a client that spins instead of sleeping spares it a FUTEX_WAKE
 * per acknowledgement. A third spinner on two CPUs is a spin that mostly
 * waits for a CPU: refused. While spinning a client holds +1 in *spinners
 * and *mark = 1 (its slot's sl_spinning, which lets the writer take a dead
 * spinner's count back when it reaps the slot).
 *
 * The writer (writer == 1) waits for clients and spins idle unless more
 * clients spin than there are CPUs (only possible with counts leaked by
 * killed clients); it sets *mark = 1 (sh_writer_spinning) while spinning.
 *
 * Measured on 2 CPUs (acknowledged puts from Python): with the writer
 * counted as a busy core, two clients ran at 0.4x the rate of one; with
 * this rule at 0.7-1.2x. The preemption check and the yield in long spins
 * (kvshm_spin_until) keep the three parties of that case from starving
 * each other. On 2 CPUs: the writer and up to 2 clients spin; on 1 CPU
 * nobody spins.
 */
typedef struct kvshm_spin_gate {
    uint32_t *spinners;  /* sh_spinners of the slot file */
    uint32_t *mark;      /* client: its sl_spinning; writer: sh_writer_spinning */
    int writer;          /* 1: the writer's idle spin */
} kvshm_spin_gate;

/* Condition polled while spinning: nonzero when the wait is over. Must be
 * cheap (a few loads) and free of side effects. */
typedef int (*kvshm_spin_ready)(void *ctx);

/* A site that spins at most cap_ns per wait (0: never); starts at the cap. */
void kvshm_spin_init(kvshm_spin *s, uint32_t cap_ns);

/*
 * kvshm_spin_until: spin until ready(ctx) or the site's budget runs out,
 * within the free-core rule of gate (NULL: no accounting). Returns 1 if
 * ready became true while spinning (the budget moves toward twice the time
 * it took), 0 if the caller must sleep: the budget ran out (it shrinks), or
 * the site may not spin now (budget too low between probes, one usable CPU,
 * no free core, CPUs crowded; the budget is unchanged), or the spin was preempted (the
 * budget drops to 0: only probes spin until one succeeds). On one usable CPU it yields the
 * CPU twice (sched_yield) before giving up, so a peer that was just woken
 * on the same CPU can finish first. Reads CLOCK_MONOTONIC every 16 polls.
 * Caller: the thread owning s.
 */
int kvshm_spin_until(kvshm_spin *s, const kvshm_spin_gate *gate, kvshm_spin_ready ready,
                     void *ctx);

/*
 * Usable CPUs of this process: min(CPU_COUNT of sched_getaffinity, the
 * cgroup v2 quota ceil(quota / period) of /sys/fs/cgroup/cpu.max when it
 * sets one), at least 1. Computed once per process (again in a forked
 * child). Any thread.
 */
int kvshm_spin_usable_cpus(void);

/* Whether spins check for crowded CPUs (run-queue delay, see above); on
 * by default. White-box tests turn it off so that their spins do not
 * depend on the machine's load. Process-wide; any thread. */
void kvshm_spin_set_crowd_check(int on);

/* Take back the count of a spinner that died while spinning: if *mark is
 * set, clear it and decrement *spinners. Called by the writer when it reaps
 * the dead owner's slot (nobody else writes the mark then). */
void kvshm_spin_reap(uint32_t *spinners, uint32_t *mark);

#endif /* KVSHM_SPINWAIT_H */
