/* kvtest_writer.h - a real kvault-writer process for a Criterion test:
 * started on a database from the build tree beside the test executable,
 * stopped with a signal. */
#ifndef KVTEST_WRITER_H
#define KVTEST_WRITER_H

#include <criterion/criterion.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kvshm/attach.h"

/* Start build/<x>/workers/kvault-writer on `db` (the test is
 * build/<x>/tests/c/<name>) with `--commit-interval-ms interval
 * --batch-size 100000000` when interval is not NULL; stdout goes to
 * /dev/null and the writer dies with the test. Returns once it serves the
 * file (up to 10 s, else the test fails); its pid. */
static inline pid_t kvtest_writer_start(const char *db, const char *interval)
{
    char self[512], exe[600];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    cr_assert(len > 0);
    self[len] = 0;
    snprintf(exe, sizeof exe, "%s/../../workers/kvault-writer", dirname(self));
    pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);   /* never outlive a timed-out test */
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        if (interval)
            execl(exe, exe, "--commit-interval-ms", interval, "--batch-size", "100000000", db,
                  (char *)NULL);
        else
            execl(exe, exe, db, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 1000; i++) {
        if (kv_attach_served(db, "kv")) return pid;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    cr_assert_fail("writer did not become ready");
    return pid;
}

/* Send `sig` to writer `pid` (> 0) and reap it; a SIGTERM must end it
 * cleanly (exit status 0). */
static inline void kvtest_writer_stop(pid_t pid, int sig)
{
    if (pid <= 0) return;
    kill(pid, sig);
    int st;
    waitpid(pid, &st, 0);
    if (sig == SIGTERM) cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

#endif /* KVTEST_WRITER_H */
