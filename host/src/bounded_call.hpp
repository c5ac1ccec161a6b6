// A call into plugin code that may never return (an entry point, init, shutdown), made on a thread of its
// own and waited for with a bound, so that it costs one thread and its memory, not the loader.
#pragma once

#include <tickhost/signals.hpp>
#include <tickhost/tickers.hpp>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace tickhost::detail {

// Runs `fn` on a thread of its own and waits up to `bound` for it to return. C++ cannot stop a thread: if
// `fn` does not return in time it is left running, and the caller must keep the plugin's code mapped.
// `fn` must hold (by value, shared pointers) everything it uses: it may outlive the caller.
// An exception that `fn` lets out (plugin code throwing across the C ABI, out of contract) is caught on its
// thread and its text put in *threw (the call counts as returned). Plugin code may also have changed the
// dispositions of the signals the host handles: they are put back as soon as it returns.
inline bool call_bounded(std::function<void()> fn, Duration bound, std::string* threw = nullptr) {
    struct Done {
        std::mutex mu;
        std::condition_variable cv;
        bool done = false;
        std::string threw;
    };
    auto d = std::make_shared<Done>();
    std::thread t([d, fn = std::move(fn)] {
        std::string what;
        try {
            fn();
        } catch (const std::exception& e) {
            what = std::string("threw: ") + e.what();
        } catch (...) {
            what = "threw an exception that is not a std::exception";
        }
        restore_guarded_signals();
        std::lock_guard<std::mutex> lk(d->mu);
        d->threw = std::move(what);
        d->done = true;
        d->cv.notify_all();
    });
    bool returned;
    {
        std::unique_lock<std::mutex> lk(d->mu);
        returned = d->cv.wait_for(lk, bound, [&] { return d->done; });
        if (returned && threw) *threw = d->threw;
    }
    if (returned)
        t.join();
    else
        t.detach();  // holds what it needs (shared pointers); ends if the plugin's code ever returns
    return returned;
}

}  // namespace tickhost::detail
