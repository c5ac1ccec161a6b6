// Test helper for test_child_process: a host of its own that uses ChildProcess, for what a test cannot do to
// its own process (be SIGKILLed, give up root). Reports "key=value" lines on fd 3 (or stdout).
//
//   th_spawner short-thread <probe>   spawns `<probe> sleep 120` from a thread that then ends, checks the
//                                     child outlived that thread, reports grandchild=<pid>, then waits to be
//                                     killed (the child must die with it: PR_SET_PDEATHSIG)
//   th_spawner as-nobody <probe>      drops to uid/gid 65534, then asks for a child with uid 65534:
//                                     reports err=<spawn's error>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "isolation/child_process.hpp"

using tickhost::detail::ChildProcess;
using tickhost::detail::ChildSpec;

int main(int argc, char** argv) {
    if (argc < 3) return 2;
    FILE* out = ::fcntl(3, F_GETFD) != -1 ? ::fdopen(3, "w") : stdout;
    const std::string mode = argv[1];
    ChildSpec spec;
    spec.exe = argv[2];
    spec.name = "probe";
    if (mode == "short-thread") {
        spec.args = {"sleep", "120"};
        std::unique_ptr<ChildProcess> child;
        std::string err;
        std::thread([&] { child = ChildProcess::spawn(spec, &err); }).join();
        if (!child) {
            std::fprintf(out, "err=%s\n", err.c_str());
            return 1;
        }
        // The thread that asked for the child has ended; the child must not have ended with it.
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        const bool alive = !child->try_wait();
        std::fprintf(out, "alive_after_thread=%d\ngrandchild=%d\n", alive ? 1 : 0, int(child->pid()));
        std::fflush(out);
        for (;;) ::pause();
    }
    if (mode == "as-nobody") {
        const gid_t g = 65534;
        if (::setgroups(1, &g) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) return 3;
        spec.args = {"exit", "0"};
        spec.uid = 65534;
        spec.gid = 65534;
        std::string err;
        auto child = ChildProcess::spawn(spec, &err);
        std::fprintf(out, "started=%d\nerr=%s\n", child ? 1 : 0, err.c_str());
        return 0;
    }
    return 2;
}
