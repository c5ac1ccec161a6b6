// Test helper for test_child_process: allocates and touches memory 1 MiB at a time, up to <max MiB>
// (default 1024), reporting "progress=<MiB>" every 16 MiB and "done=<MiB>" at the end on fd 3 (or stdout).
// An allocation that fails reports "failed=<MiB> errno=<e>" and exits 2. Built without sanitizers (their
// shadow memory would count against the RLIMIT_DATA it is tested under).
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
    long max = argc > 1 ? atol(argv[1]) : 1024;
    if (max <= 0 || max > 4096) max = 1024;
    FILE* out = fcntl(3, F_GETFD) != -1 ? fdopen(3, "w") : stdout;
    setvbuf(out, NULL, _IOLBF, 0);
    for (long mib = 1; mib <= max; ++mib) {
        char* p = malloc(1 << 20);
        if (!p) {
            fprintf(out, "failed=%ld errno=%d\n", mib, errno);
            return 2;
        }
        memset(p, 0x5a, 1 << 20);  // touched: resident, not only reserved
        if (mib % 16 == 0) fprintf(out, "progress=%ld\n", mib);
    }
    fprintf(out, "done=%ld\n", max);
    return 0;
}
