#include "host_api.hpp"

#include "fault.hpp"

#include "loader.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace tickhost::detail {

// One context: generation, the open call's cancel flag and deadline, its owner and error message.
struct Entry {
    std::atomic<uint32_t> gen{2};  // odd: a call is open
    // The open call is cancelled when *cancel_word == cancel_value (see tickhost::RunContext).
    std::atomic<const std::atomic<uint64_t>*> cancel_word{nullptr};
    std::atomic<uint64_t> cancel_value{0};
    std::atomic<int64_t> deadline_ns{0};
    std::atomic<int64_t> due_ns{0};
    std::atomic<uint64_t> never{0};  // the cancel word of calls that cannot be cancelled (value 1 never matches)
    std::atomic<bool> error_set{false};
    // The level of the owner's logger when the call opened: log() below it returns without a lock.
    std::atomic<int> log_level{spdlog::level::trace};
    std::mutex mu;               // guards owner and error (the slow services take it)
    CtxOwner* owner = nullptr;
    std::string error;
};

std::string escape_plugin_text(std::string_view in, size_t cap) {
    static constexpr char kHex[] = "0123456789abcdef";
    const size_t limit = std::min(in.size(), cap);
    std::string out;
    out.reserve(limit + 32);
    auto byte_escape = [&](unsigned char c) {
        out += "\\x";
        out += kHex[c >> 4];
        out += kHex[c & 15];
    };
    size_t i = 0;
    while (i < limit) {
        const unsigned char c = static_cast<unsigned char>(in[i]);
        if (c >= 0x20 && c < 0x7f) {  // printable ASCII: copy the whole run
            size_t j = i + 1;
            while (j < limit && static_cast<unsigned char>(in[j]) >= 0x20 && static_cast<unsigned char>(in[j]) < 0x7f)
                ++j;
            out.append(in.data() + i, j - i);
            i = j;
            continue;
        }
        if (c < 0x80) {  // C0 control or DEL
            if (c == '\n')
                out += "\\n";
            else if (c == '\r')
                out += "\\r";
            else if (c == '\t')
                out += "\\t";
            else
                byte_escape(c);
            ++i;
            continue;
        }
        // A multi-byte sequence: lead byte, length, and the checks that refuse overlong forms and surrogates.
        size_t n = 0;
        uint32_t cp = 0;
        if (c >= 0xc2 && c <= 0xdf)
            n = 2, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            n = 3, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 4, cp = c & 0x07;
        bool valid = n > 0 && i + n <= in.size();
        for (size_t k = 1; valid && k < n; ++k) {
            const unsigned char cc = static_cast<unsigned char>(in[i + k]);
            valid = (cc & 0xc0) == 0x80;
            cp = (cp << 6) | (cc & 0x3f);
        }
        if (valid && n == 3) valid = cp >= 0x800 && (cp < 0xd800 || cp > 0xdfff);
        if (valid && n == 4) valid = cp >= 0x10000 && cp <= 0x10ffff;
        if (!valid) {
            byte_escape(c);
            ++i;
            continue;
        }
        if (i + n > limit) break;                          // a whole character that crosses the cap: cut before it
        if (cp <= 0x9f || cp == 0x2028 || cp == 0x2029) {  // C1 controls (0x9b is CSI), line separators
            out += "\\u";
            for (int shift = 12; shift >= 0; shift -= 4) out += kHex[(cp >> shift) & 15];
        } else {
            out.append(in.data() + i, n);
        }
        i += n;
    }
    if (i < in.size()) out += " \xe2\x80\xa6 (" + std::to_string(in.size() - i) + " bytes truncated)";
    return out;
}

namespace {

// Entries live in fixed segments that are never freed: a stale or invented handle always finds memory,
// and a lookup takes no lock (is_cancelled is on the plugins' hot path).
class Table {
public:
    static constexpr uint32_t kSegBits = 10;
    static constexpr uint32_t kSegSize = 1u << kSegBits;
    static constexpr uint32_t kMaxSegs = 1u << 14;  // 16M entries

    static Table& get() {
        static Table* t = new Table;  // never destroyed: plugin threads may call in during exit
        return *t;
    }
    uint32_t allocate() {
        std::lock_guard<std::mutex> lk(mu_);
        if (!free_.empty()) {
            uint32_t i = free_.back();
            free_.pop_back();
            return i;
        }
        const uint32_t i = count_.load(std::memory_order_relaxed);
        if (i >= kSegSize * kMaxSegs) throw std::length_error("too many plugin contexts");
        if (!segs_[i >> kSegBits].load(std::memory_order_relaxed))
            segs_[i >> kSegBits].store(new Entry[kSegSize], std::memory_order_release);
        count_.store(i + 1, std::memory_order_release);
        return i;
    }
    void release(uint32_t i) {
        std::lock_guard<std::mutex> lk(mu_);
        free_.push_back(i);
    }
    // nullptr when the index was never allocated.
    Entry* find(uint32_t i) const {
        if (i >= count_.load(std::memory_order_acquire)) return nullptr;
        return &segs_[i >> kSegBits].load(std::memory_order_acquire)[i & (kSegSize - 1)];
    }

private:
    std::mutex mu_;
    std::atomic<Entry*> segs_[kMaxSegs] = {};
    std::vector<uint32_t> free_;
    std::atomic<uint32_t> count_{0};
};

uint32_t index_of(th_ctx c) { return uint32_t(c.handle); }
uint32_t gen_of(th_ctx c) { return uint32_t(c.handle >> 32); }

// The entry of an open call, or nullptr for a stale or invented handle.
Entry* live(th_ctx c) {
    const uint32_t g = gen_of(c);
    if (!(g & 1)) return nullptr;
    Entry* e = Table::get().find(index_of(c));
    if (!e || e->gen.load(std::memory_order_acquire) != g) return nullptr;
    return e;
}

// Runs f(owner, entry) under the entry's lock if the call is still open.
template <typename F>
th_status with_owner(th_ctx c, F&& f) {
    Entry* e = live(c);
    if (!e) return TH_E_STALE_CONTEXT;
    std::lock_guard<std::mutex> lk(e->mu);
    if (e->gen.load(std::memory_order_relaxed) != gen_of(c) || !e->owner) return TH_E_STALE_CONTEXT;
    fault_point("host_api", e->owner->plugin);  // tests: a service that throws inside must still answer
    return f(*e->owner, *e);
}

int64_t now_ns() { return std::chrono::steady_clock::now().time_since_epoch().count(); }

spdlog::level::level_enum to_level(int32_t level) {
    switch (level) {
    case TH_LOG_TRACE: return spdlog::level::trace;
    case TH_LOG_DEBUG: return spdlog::level::debug;
    case TH_LOG_INFO: return spdlog::level::info;
    case TH_LOG_WARN: return spdlog::level::warn;
    default: return spdlog::level::err;
    }
}

// ---- the services -------------------------------------------------------------------------------------

// Every service catches everything: nothing the host does may throw into the plugin's C frames.

void api_log(th_ctx c, int32_t level, const char* msg, size_t len) {
    try {
        Entry* e = live(c);
        if (!e) return;
        const auto lvl = to_level(level);
        // Below the level seen when the call opened: one compare, no lock, no copy.
        if (int(lvl) < e->log_level.load(std::memory_order_relaxed)) return;
        if (!msg) len = 0;
        with_owner(c, [&](CtxOwner& o, Entry&) {
            if (!o.logger || !o.logger->should_log(lvl)) return TH_OK;
            // One record per call: the text is escaped (no line breaks, no terminal controls, no invalid
            // UTF-8) and capped. It is an argument, never a format string: "{}" and "%s" print literally.
            const std::string text = escape_plugin_text(std::string_view(msg ? msg : "", len));
            if (o.task.empty())
                o.logger->log(lvl, "{}", text);
            else
                o.logger->log(lvl, "[{}] {}", o.task, text);
            return TH_OK;
        });
    } catch (...) {
        // Out of memory, or a sink that threw: the message is lost, the plugin is not.
    }
}

int32_t api_is_cancelled(th_ctx c) {  // no allocation, no lock: cannot throw
    Entry* e = live(c);
    if (!e) return 1;
    const std::atomic<uint64_t>* word = e->cancel_word.load(std::memory_order_acquire);
    const uint64_t want = e->cancel_value.load(std::memory_order_relaxed);
    bool v = word && word->load(std::memory_order_relaxed) == want;
    if (e->gen.load(std::memory_order_acquire) != gen_of(c)) return 1;  // closed meanwhile
    return v ? 1 : 0;
}

int64_t api_deadline_ns(th_ctx c) {
    Entry* e = live(c);
    if (!e) return 0;
    int64_t d = e->deadline_ns.load(std::memory_order_relaxed);
    return e->gen.load(std::memory_order_acquire) == gen_of(c) ? d : 0;
}

int64_t api_due_ns(th_ctx c) {
    Entry* e = live(c);
    if (!e) return 0;
    int64_t d = e->due_ns.load(std::memory_order_relaxed);
    return e->gen.load(std::memory_order_acquire) == gen_of(c) ? d : 0;
}

int64_t api_remaining_ns(th_ctx c) {
    int64_t d = api_deadline_ns(c);
    return d ? d - now_ns() : 0;
}

template <typename T, typename Get>
th_status config_lookup(th_ctx c, const char* key, size_t key_len, T* out, Get get) {
    if (!key || !out) return TH_E_INVALID_ARGUMENT;
    try {
        return with_owner(c, [&](CtxOwner& o, Entry&) -> th_status {
            if (!o.config) return TH_E_NOT_FOUND;
            switch (get(*o.config, std::string_view(key, key_len), out)) {
            case PluginValues::Lookup::ok: return TH_OK;
            case PluginValues::Lookup::not_found: return TH_E_NOT_FOUND;
            default: return TH_E_WRONG_TYPE;
            }
        });
    } catch (...) {
        return TH_ERROR;  // the host could not answer (out of memory); nothing was written
    }
}

th_status api_config_string(th_ctx c, const char* key, size_t key_len, const char** out, size_t* out_len) {
    if (!out_len) return TH_E_INVALID_ARGUMENT;
    return config_lookup(c, key, key_len, out, [&](const PluginValues& v, std::string_view k, const char** o) {
        const std::string* s = nullptr;
        auto r = v.get_string(k, &s);
        if (r == PluginValues::Lookup::ok) *o = s->c_str(), *out_len = s->size();
        return r;
    });
}

th_status api_config_int(th_ctx c, const char* key, size_t key_len, int64_t* out) {
    return config_lookup(c, key, key_len, out,
                         [](const PluginValues& v, std::string_view k, int64_t* o) { return v.get_int(k, o); });
}

th_status api_config_bool(th_ctx c, const char* key, size_t key_len, int32_t* out) {
    return config_lookup(c, key, key_len, out, [](const PluginValues& v, std::string_view k, int32_t* o) {
        bool b = false;
        auto r = v.get_bool(k, &b);
        if (r == PluginValues::Lookup::ok) *o = b ? 1 : 0;
        return r;
    });
}

th_status api_config_duration_ns(th_ctx c, const char* key, size_t key_len, int64_t* out) {
    return config_lookup(c, key, key_len, out, [](const PluginValues& v, std::string_view k, int64_t* o) {
        Duration d{};
        auto r = v.get_duration(k, &d);
        if (r == PluginValues::Lookup::ok) *o = d.count();
        return r;
    });
}

th_status api_set_error(th_ctx c, const char* msg, size_t len) {
    if (!msg && len) return TH_E_INVALID_ARGUMENT;
    try {
        if (!live(c)) return TH_E_STALE_CONTEXT;
        // Escaped and capped here, once: the message is printed in the host's lines about the call.
        std::string text = escape_plugin_text(std::string_view(msg ? msg : "", len));
        return with_owner(c, [&](CtxOwner&, Entry& e) {
            e.error = std::move(text);
            e.error_set.store(true, std::memory_order_relaxed);
            return TH_OK;
        });
    } catch (...) {
        return TH_ERROR;  // out of memory: the previous message (if any) stays
    }
}

th_status api_add_task(th_ctx c, const th_task_def* def) {
    if (!def) return TH_E_INVALID_ARGUMENT;
    try {
        return with_owner(c, [&](CtxOwner& o, Entry&) -> th_status {
            if (!o.init) return TH_E_NOT_ALLOWED;
            InitDeclarations& d = *o.init;
            // struct_size first: nothing past the plugin's own struct is read.
            if (def->struct_size < offsetof(th_task_def, state) + sizeof(void*)) return TH_E_INVALID_ARGUMENT;
            th_task_def copy{};
            std::memcpy(&copy, def, sizeof(th_task_def));
            if (!copy.name) return TH_E_INVALID_ARGUMENT;
            // Bounded read: the name need not be terminated within its 64 bytes.
            const size_t n = strnlen(copy.name, 65);
            if (n == 0 || n > 64) return TH_E_INVALID_ARGUMENT;
            auto name = std::make_unique<std::string>(copy.name, n);
            copy.struct_size = sizeof(th_task_def);
            copy.name = name->c_str();
            // The checks a static task gets: printable name, run, 0 < interval <= max, 0 <= timeout <= max.
            if (!validate_task(copy, nullptr)) return TH_E_INVALID_ARGUMENT;
            if (d.seen.count(std::string_view(*name))) return TH_E_INVALID_ARGUMENT;  // unique within the plugin
            if (d.static_count + d.tasks.size() >= d.cap) {
                ++d.refused_over_cap;
                return TH_E_TOO_MANY_TASKS;
            }
            // Copied: the plugin's definition (and its name) need not outlive this call. Room is made first
            // (growing geometrically), so that nothing below can throw once the name is in `seen`.
            auto room = [](auto& v) {
                if (v.size() == v.capacity()) v.reserve(std::max<size_t>(16, v.capacity() * 2));
            };
            room(d.tasks);
            room(d.names);
            d.seen.insert(*name);  // a view of the copy: `names` owns it, at a stable address
            d.tasks.push_back(copy);
            d.names.push_back(std::move(name));
            return TH_OK;
        });
    } catch (...) {
        return TH_ERROR;  // out of memory: the task was not added
    }
}

const th_host_api kApi = {
    sizeof(th_host_api),   TH_ABI_VERSION,   api_log,           api_is_cancelled,    api_remaining_ns,
    api_deadline_ns,       api_config_string, api_config_int,   api_config_bool,     api_config_duration_ns,
    api_set_error,         api_add_task,      api_due_ns,
};

}  // namespace

ContextSlot::ContextSlot(CtxOwner* owner) : index_(Table::get().allocate()), owner_(owner) {
    entry_ = Table::get().find(index_);
    std::lock_guard<std::mutex> lk(entry_->mu);
    entry_->owner = owner;
}

ContextSlot::~ContextSlot() {
    Entry& e = *entry_;
    {
        std::lock_guard<std::mutex> lk(e.mu);
        uint32_t g = e.gen.load(std::memory_order_relaxed);
        if (g & 1) e.gen.store(g + 1, std::memory_order_release);
        e.owner = nullptr;
        e.error.clear();
        e.error_set.store(false, std::memory_order_relaxed);
    }
    Table::get().release(index_);
}

th_ctx ContextSlot::open(const std::atomic<uint64_t>* cancel_word, uint64_t cancel_value,
                         std::chrono::steady_clock::time_point deadline, std::chrono::steady_clock::time_point due) {
    Entry& e = *entry_;
    if (e.error_set.load(std::memory_order_acquire)) {  // left by a late set_error from another thread
        std::lock_guard<std::mutex> lk(e.mu);
        e.error.clear();
        e.error_set.store(false, std::memory_order_relaxed);
    }
    e.cancel_word.store(cancel_word ? cancel_word : &e.never, std::memory_order_relaxed);
    e.cancel_value.store(cancel_word ? cancel_value : 1, std::memory_order_relaxed);
    e.deadline_ns.store(deadline.time_since_epoch().count(), std::memory_order_relaxed);
    e.due_ns.store(due.time_since_epoch().count(), std::memory_order_relaxed);
    // The logger's level for this call (a level changed while the call runs applies from the next call).
    e.log_level.store(owner_ && owner_->logger ? int(owner_->logger->level()) : int(spdlog::level::off),
                      std::memory_order_relaxed);
    uint32_t g = e.gen.load(std::memory_order_relaxed) + 1;  // odd: open
    if (g == 0xffffffffu) g = 1;  // wraps after 2^31 calls; a handle that old is long stale
    e.gen.store(g, std::memory_order_release);
    return th_ctx{(uint64_t(g) << 32) | index_};
}

std::string ContextSlot::close() {
    Entry& e = *entry_;
    // Only an error set during the call needs the lock; the common path is one store.
    if (!e.error_set.load(std::memory_order_acquire)) {
        e.gen.store(e.gen.load(std::memory_order_relaxed) + 1, std::memory_order_release);
        if (!e.error_set.load(std::memory_order_acquire)) return {};
    }
    std::lock_guard<std::mutex> lk(e.mu);
    uint32_t g = e.gen.load(std::memory_order_relaxed);
    if (g & 1) e.gen.store(g + 1, std::memory_order_release);
    std::string err;
    err.swap(e.error);
    e.error_set.store(false, std::memory_order_relaxed);
    return err;
}

std::string ContextSlot::close_init() {
    Entry& e = *entry_;
    std::lock_guard<std::mutex> lk(e.mu);
    uint32_t g = e.gen.load(std::memory_order_relaxed);
    if (g & 1) e.gen.store(g + 1, std::memory_order_release);
    if (e.owner) e.owner->init = nullptr;
    std::string err;
    err.swap(e.error);
    e.error_set.store(false, std::memory_order_relaxed);
    return err;
}

const th_host_api* host_api_table() { return &kApi; }

}  // namespace tickhost::detail
