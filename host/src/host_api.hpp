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
#include <vector>

namespace spdlog {
class logger;
}

namespace tickhost::detail {

struct Entry;

// What a context refers to while it is open. Owned by the plugin manager; outlives every open of it.
struct CtxOwner {
    std::string plugin;                       // plugin name
    std::string task;                         // task name; empty for init/shutdown
    std::shared_ptr<spdlog::logger> logger;   // "plugin.<name>"
    const PluginValues* config = nullptr;     // the plugin's [plugins.<name>.config]
    std::vector<th_task_def>* init_tasks = nullptr;  // set while init runs: where add_task appends
    std::vector<std::unique_ptr<std::string>>* init_names = nullptr;  // owns copied task names
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
    // Closes an init call: also detaches the owner's init_tasks/init_names (add_task is refused after).
    std::string close_init();

private:
    uint32_t index_;
    Entry* entry_;
};

// The th_host_api table given to every plugin.
const th_host_api* host_api_table();

}  // namespace tickhost::detail
