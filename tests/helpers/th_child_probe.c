// Test helper for test_child_process: a child that reports what it was given (ids, descriptors, signals,
// limits, process group) and does what its arguments ask, in order. Reports go to fd 3 when it is open,
// else to stdout, as "key=value" lines.
//
//   th_child_probe report            facts: pid ppid pgid uid euid gid egid groups fds fd<N> stdin stdout
//                                    stderr rlimits,
//                                    and NoNewPrivs, Seccomp, SigBlk, SigIgn, CapEff from /proc/self/status
//   th_child_probe thread            thread=<pthread_create's result>
//   th_child_probe fork              fork=ok, or fork=<errno> (the child exits at once)
//   th_child_probe grandchild        forks a child that sleeps 60 s in its process group: grandchild=<pid>
//   th_child_probe cpu <ms>          burns CPU for that long
//   th_child_probe touch <MiB>       allocates and touches that much
//   th_child_probe sleep <s> | exit <code> | raise <signal> | int80 | x32 | ready
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static FILE* out;

static void status_lines(void) {
    FILE* f = fopen("/proc/self/status", "r");
    char line[512];
    if (!f) return;
    while (fgets(line, sizeof line, f)) {
        static const char* keys[] = {"NoNewPrivs:", "Seccomp:", "SigBlk:", "SigIgn:", "CapEff:"};
        for (size_t i = 0; i < sizeof keys / sizeof *keys; ++i)
            if (strncmp(line, keys[i], strlen(keys[i])) == 0) {
                char* v = line + strlen(keys[i]);
                while (*v == ' ' || *v == '\t') ++v;
                fprintf(out, "%.*s=%s", (int)(strlen(keys[i]) - 1), keys[i], v);
            }
    }
    fclose(f);
}

static void limit(const char* name, int resource) {
    struct rlimit rl;
    getrlimit(resource, &rl);
    if (rl.rlim_cur == RLIM_INFINITY)
        fprintf(out, "%s=unlimited\n", name);
    else
        fprintf(out, "%s=%llu\n", name, (unsigned long long)rl.rlim_cur);
}

static void report(void) {
    fprintf(out, "pid=%d\nppid=%d\npgid=%d\n", (int)getpid(), (int)getppid(), (int)getpgid(0));
    fprintf(out, "uid=%d\neuid=%d\ngid=%d\negid=%d\n", (int)getuid(), (int)geteuid(), (int)getgid(), (int)getegid());
    gid_t groups[64];
    int n = getgroups(64, groups);
    fprintf(out, "groups=");
    for (int i = 0; i < n; ++i) fprintf(out, "%s%d", i ? "," : "", (int)groups[i]);
    fprintf(out, "\n");
    status_lines();
    // Descriptors, without the one that lists them.
    int fds[256], nfds = 0;
    DIR* d = opendir("/proc/self/fd");
    struct dirent* e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.' && atoi(e->d_name) != dirfd(d) && nfds < 256) fds[nfds++] = atoi(e->d_name);
    if (d) closedir(d);
    for (int i = 1; i < nfds; ++i)
        for (int j = i; j > 0 && fds[j - 1] > fds[j]; --j) {
            int t = fds[j];
            fds[j] = fds[j - 1];
            fds[j - 1] = t;
        }
    fprintf(out, "fds=");
    for (int i = 0; i < nfds; ++i) fprintf(out, "%s%d", i ? "," : "", fds[i]);
    fprintf(out, "\n");
    for (int i = 0; i < nfds; ++i) {
        struct stat st;
        if (fds[i] >= 3 && fstat(fds[i], &st) == 0)
            fprintf(out, "fd%d=%llu:%llu\n", fds[i], (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    }
    char target[256] = "";
    ssize_t t = readlink("/proc/self/fd/0", target, sizeof target - 1);
    if (t > 0) target[t] = 0;
    fprintf(out, "stdin=%s\n", target);
    t = readlink("/proc/self/fd/1", target, sizeof target - 1);
    target[t > 0 ? t : 0] = 0;
    fprintf(out, "stdout=%s\n", target);
    t = readlink("/proc/self/fd/2", target, sizeof target - 1);
    target[t > 0 ? t : 0] = 0;
    fprintf(out, "stderr=%s\n", target);
    limit("rlimit_data", RLIMIT_DATA);
    limit("rlimit_nofile", RLIMIT_NOFILE);
    limit("rlimit_nproc", RLIMIT_NPROC);
    if (geteuid() != 0) fprintf(out, "setuid0=%d\n", setuid(0) == 0 ? 0 : errno);
}

static void* nothing(void* arg) { return arg; }

int main(int argc, char** argv) {
    out = fcntl(3, F_GETFD) != -1 ? fdopen(3, "w") : stdout;
    if (!out) return 2;
    setvbuf(out, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; ++i) {
        const char* a = argv[i];
        const char* next = i + 1 < argc ? argv[i + 1] : "0";
        if (strcmp(a, "report") == 0) {
            report();
        } else if (strcmp(a, "ready") == 0) {
            fprintf(out, "ready=1\n");
        } else if (strcmp(a, "thread") == 0) {
            pthread_t th;
            int r = pthread_create(&th, NULL, nothing, NULL);
            if (r == 0) pthread_join(th, NULL);
            fprintf(out, "thread=%d\n", r);
        } else if (strcmp(a, "fork") == 0) {
            pid_t p = fork();
            if (p == 0) _exit(0);
            if (p > 0) {
                waitpid(p, NULL, 0);
                fprintf(out, "fork=ok\n");
            } else {
                fprintf(out, "fork=%d\n", errno);
            }
        } else if (strcmp(a, "grandchild") == 0) {
            pid_t p = fork();
            if (p == 0) {
                for (int k = 0; k < 600; ++k) usleep(100000);
                _exit(0);
            }
            fprintf(out, "grandchild=%d\n", (int)p);
        } else if (strcmp(a, "cpu") == 0) {
            ++i;
            struct timespec t0, t;
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
            volatile unsigned long x = 0;
            do {
                for (int k = 0; k < 100000; ++k) x += (unsigned long)k;
                clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
            } while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < atol(next));
        } else if (strcmp(a, "touch") == 0) {
            ++i;
            size_t bytes = (size_t)atol(next) << 20;
            char* p = malloc(bytes);
            if (!p) return 3;
            for (size_t k = 0; k < bytes; k += 4096) p[k] = 1;
            fprintf(out, "touched=%s\n", next);
            free(p);
        } else if (strcmp(a, "sleep") == 0) {
            ++i;
            for (long k = 0; k < atol(next) * 10; ++k) usleep(100000);
        } else if (strcmp(a, "exit") == 0) {
            return atoi(next);
        } else if (strcmp(a, "raise") == 0) {
            // The sanitizers' runtimes handle SIGSEGV and others themselves: back to the default first.
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = SIG_DFL;
            sigaction(atoi(next), &sa, NULL);
            kill(getpid(), atoi(next));
            for (;;) pause();
#if defined(__x86_64__)
        } else if (strcmp(a, "int80") == 0) {
            // The i386 getpid (20) through the 32-bit entry: a foreign ABI to the seccomp filter.
            long r;
            __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
            fprintf(out, "int80=%ld\n", r);
        } else if (strcmp(a, "x32") == 0) {
            long r = syscall(0x40000000L | 39 /* x32 getpid */);
            fprintf(out, "x32=%ld\n", r < 0 ? -errno : r);
#endif
        } else {
            fprintf(out, "unknown=%s\n", a);
            return 2;
        }
    }
    return 0;
}
