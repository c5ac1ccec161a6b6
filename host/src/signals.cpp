#include <tickhost/logging.hpp>
#include <tickhost/signals.hpp>

#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <mutex>

#if !defined(_WIN32)
#include <pthread.h>
#include <signal.h>
#endif

namespace tickhost {

#if !defined(_WIN32)
namespace {
constexpr int kMaxGuarded = 8;
std::mutex g_mu;
int g_sigs[kMaxGuarded];
bool g_warned[kMaxGuarded];
std::atomic<int> g_count{0};
pthread_t g_signal_thread;

// Runs only where a plugin thread unblocked the signal: hand it to the signal thread, where it is blocked
// and therefore stays pending until sigwait takes it. pthread_kill is async-signal-safe.
extern "C" void forward_signal(int sig) {
    const int saved = errno;
    pthread_kill(g_signal_thread, sig);
    errno = saved;
}

void install(int sig) {
    struct sigaction sa {};
    sa.sa_handler = forward_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(sig, &sa, nullptr);
}
}  // namespace

void guard_signals(std::initializer_list<int> sigs) {
    std::lock_guard<std::mutex> lk(g_mu);
    g_signal_thread = pthread_self();
    int n = 0;
    for (int s : sigs) {
        if (n == kMaxGuarded) break;
        install(s);
        g_sigs[n] = s;
        g_warned[n] = false;
        ++n;
    }
    g_count.store(n, std::memory_order_release);
}

int restore_guarded_signals() {
    if (g_count.load(std::memory_order_acquire) == 0) return 0;
    std::lock_guard<std::mutex> lk(g_mu);
    int restored = 0;
    for (int i = 0; i < g_count.load(std::memory_order_relaxed); ++i) {
        struct sigaction cur {};
        if (sigaction(g_sigs[i], nullptr, &cur) != 0) continue;
        if (!(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == forward_signal) continue;
        const char* what = (cur.sa_flags & SA_SIGINFO) ? "a handler of its own"
                           : cur.sa_handler == SIG_IGN ? "SIG_IGN"
                           : cur.sa_handler == SIG_DFL ? "SIG_DFL"
                                                       : "a handler of its own";
        install(g_sigs[i]);
        ++restored;
        if (!g_warned[i]) {
            g_warned[i] = true;
            get_logger("host")->warn(
                "a plugin set {} to {}; restored: the host handles this signal itself (plugins "
                "must not change signal dispositions)",
                strsignal(g_sigs[i]), what);
        }
    }
    return restored;
}
#else
void guard_signals(std::initializer_list<int>) {}
int restore_guarded_signals() { return 0; }
#endif

}  // namespace tickhost
