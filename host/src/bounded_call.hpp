// A call into plugin code that may never return (an entry point, init, shutdown), made on a thread of its
// own and waited for with a bound, so that it costs one thread and its memory, not the loader.
#pragma once

#include <tickhost/tickers.hpp>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace tickhost::detail {

// Runs `fn` on a thread of its own and waits up to `bound` for it to return. C++ cannot stop a thread: if
// `fn` does not return in time it is left running, and the caller must keep the plugin's code mapped.
// `fn` must hold (by value, shared pointers) everything it uses: it may outlive the caller.
inline bool call_bounded(std::function<void()> fn, Duration bound) {
    struct Done {
        std::mutex mu;
        std::condition_variable cv;
        bool done = false;
    };
    auto d = std::make_shared<Done>();
    std::thread t([d, fn = std::move(fn)] {
        fn();
        std::lock_guard<std::mutex> lk(d->mu);
        d->done = true;
        d->cv.notify_all();
    });
    bool returned;
    {
        std::unique_lock<std::mutex> lk(d->mu);
        returned = d->cv.wait_for(lk, bound, [&] { return d->done; });
    }
    if (returned)
        t.join();
    else
        t.detach();  // holds what it needs (shared pointers); ends if the plugin's code ever returns
    return returned;
}

}  // namespace tickhost::detail
