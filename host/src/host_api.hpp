// The host side of th_host_api: context handles and the services a plugin calls.
//
// A th_ctx is a handle (entry index + generation) into a process-wide table whose entries are never freed,
// so any value a plugin hands back — stale, from another thread, made up — is looked up safely and a stale
// one is refused. Each plugin and each plugin task owns one entry for its whole life; every call (init,
// run, stop call) opens the entry with a new odd generation and closes it with the next even one.
#pragma once

#include <tickhost/config.hpp>
#include <tickhost/plugin.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

namespace spdlog {
class logger;
}

namespace tickhost::detail {

struct Entry;

// The most bytes of one plugin text (a log message, a set_error message) the host prints; the rest is cut
// and counted (plugin.h states it).
constexpr size_t kMaxPluginText = TH_MAX_TEXT_BYTES;

// Plugin text made safe to print as (part of) one log record. At most `cap` bytes of input are kept (cut
// on a UTF-8 character boundary) and the rest is replaced by " … (N bytes truncated)". A newline, CR and
// tab become the two characters \n, \r, \t; other C0 controls (NUL, ESC, ...) and DEL become \x00-style
// escapes; C1 controls (U+0080..U+009F) and the line/paragraph separators U+2028/U+2029 become \u009b-style
// escapes; bytes that are not valid UTF-8 become \xNN. Valid multi-byte UTF-8 is kept. Backslashes are kept
// as they are. Throws only std::bad_alloc.
std::string escape_plugin_text(std::string_view text, size_t cap = kMaxPluginText);

// Where add_task records the tasks an init call declares. Created by the manager for one init call and
// shared with the thread that makes it (which may outlive the manager's wait).
struct InitDeclarations {
    std::vector<th_task_def> tasks;                   // copies; names point into `names`
    std::vector<std::unique_ptr<std::string>> names;  // owns the copied task names
    std::unordered_set<std::string_view> seen;        // every task name so far (static ones: the plugin's
                                                      // own strings; declared ones: `names`)
    size_t cap = 0;                                   // static + declared tasks allowed ([host] max_tasks_per_plugin)
    size_t static_count = 0;                          // static tasks (count against the cap)
    size_t refused_over_cap = 0;                      // add_task calls refused with TH_E_TOO_MANY_TASKS
};

// What a context refers to while it is open. Owned by the plugin manager; outlives every open of it.
struct CtxOwner {
    std::string plugin;                       // plugin name
    std::string task;                         // task name; empty for init/shutdown
    std::shared_ptr<spdlog::logger> logger;   // "plugin.<name>"
    const PluginValues* config = nullptr;     // the plugin's [plugins.<name>.config]
    InitDeclarations* init = nullptr;         // set while init runs: where add_task appends
};

// One entry of the table, held by its owner for the owner's whole life.
class ContextSlot {
public:
    explicit ContextSlot(CtxOwner* owner);  // allocates an entry bound to `owner` (which must outlive it)
    ~ContextSlot();  // closes and releases it (its index is reused, its generations never are)
    ContextSlot(const ContextSlot&) = delete;
    ContextSlot& operator=(const ContextSlot&) = delete;

    // Opens a call: returns the handle to pass to the plugin. The call counts as cancelled once
    // *cancel_word == cancel_value (a scheduler worker's word, valid for the registry's life); null: never.
    th_ctx open(const std::atomic<uint64_t>* cancel_word, uint64_t cancel_value,
                std::chrono::steady_clock::time_point deadline,
                std::chrono::steady_clock::time_point due = std::chrono::steady_clock::now());
    // Closes the call: the handle becomes stale. Returns the error message set during the call (if any).
    std::string close();
    // Closes an init call: also detaches the owner's `init` (add_task is refused after).
    std::string close_init();

private:
    uint32_t index_;
    Entry* entry_;
    CtxOwner* owner_;  // read by open() (the owner's own thread) to cache its logger's level
};

// Closes a call's context when it goes out of scope unless close() was called: no path (an exception
// thrown through the plugin's C frames, a forced unwind) leaves a context open.
class CallGuard {
public:
    explicit CallGuard(ContextSlot& slot) : slot_(&slot) {}
    ~CallGuard() {
        if (slot_) slot_->close();
    }
    CallGuard(const CallGuard&) = delete;
    CallGuard& operator=(const CallGuard&) = delete;
    std::string close() {
        ContextSlot* s = slot_;
        slot_ = nullptr;
        return s->close();
    }

private:
    ContextSlot* slot_;
};

// The th_host_api table given to every plugin.
const th_host_api* host_api_table();

}  // namespace tickhost::detail
