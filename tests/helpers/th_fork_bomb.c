// Test helper for test_child_process: a fork bomb that bounds itself. Forks up to <max> children (default
// 64) that only sleep, stops at the first failure, reports "forked=<n>", "max=<max>", "errno=<e>" lines on fd 3 (or
// stdout), then kills and reaps its children and exits 0. The children also die with it (PR_SET_PDEATHSIG)
// and on their own after 30 s: nothing is left behind even if it is killed.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char** argv) {
    int max = argc > 1 ? atoi(argv[1]) : 64;
    if (max < 0 || max > 256) max = 64;
    FILE* out = fcntl(3, F_GETFD) != -1 ? fdopen(3, "w") : stdout;
    pid_t kids[256];
    int n = 0, err = 0;
    const pid_t self = getpid();
    while (n < max) {
        const pid_t p = fork();
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != self) _exit(0);
            alarm(30);
            for (;;) pause();
        }
        if (p < 0) {
            err = errno;
            break;
        }
        kids[n++] = p;
    }
    fprintf(out, "forked=%d\nmax=%d\nerrno=%d\n", n, max, err);
    fflush(out);
    for (int i = 0; i < n; ++i) kill(kids[i], SIGKILL);
    for (int i = 0; i < n; ++i) waitpid(kids[i], NULL, 0);
    return 0;
}
