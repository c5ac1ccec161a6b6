// The isolation protocol's codec (format: wire.hpp). The worker is untrusted: the Reader checks every length
// and count against the bytes that remain before it copies or reserves anything, and stops at the first
// error, so a hostile datagram costs at most O(its size) and yields one line that names the field.
#include "isolation/wire.hpp"

#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

namespace tickhost::detail::wire {
namespace {

// The variants' alternatives follow Type's values; encode and decode rely on it.
static_assert(std::variant_size_v<HostMessage> == size_t(Type::bye) - size_t(Type::hello) + 1);
static_assert(std::variant_size_v<WorkerMessage> == size_t(Type::fatal) - size_t(Type::ready) + 1);
static_assert(std::is_same_v<std::variant_alternative_t<size_t(Type::config) - 1, HostMessage>, Config>);
static_assert(std::is_same_v<std::variant_alternative_t<size_t(Type::bye) - 1, HostMessage>, Bye>);
static_assert(std::is_same_v<std::variant_alternative_t<size_t(Type::tasks) - 64, WorkerMessage>, Tasks>);
static_assert(std::is_same_v<std::variant_alternative_t<size_t(Type::fatal) - 64, WorkerMessage>, Fatal>);

constexpr uint8_t kFirstHost = uint8_t(Type::hello), kLastHost = uint8_t(Type::bye);
constexpr uint8_t kFirstWorker = uint8_t(Type::ready), kLastWorker = uint8_t(Type::fatal);

// The fewest bytes an entry can take: what a count is checked against before anything is reserved.
constexpr size_t kMinConfigEntry = 4 + 1 + 1;  // empty key, kind, bool value
constexpr size_t kMinTaskEntry = 4 + 8 + 8;    // empty name, interval, timeout
// Bytes of a Config / Tasks message with no entries: header, [first_index,] count.
constexpr size_t kConfigFixed = kHeaderSize + 4;
constexpr size_t kTasksFixed = kHeaderSize + 4 + 4;

enum ConfigKind : uint8_t { kBool = 0, kInt = 1, kDouble = 2, kString = 3 };
static_assert(std::is_same_v<std::variant_alternative_t<kString, decltype(ConfigEntry::value)>, std::string>);

// For the out-of-memory paths: an error message that cannot be stored is dropped, never thrown.
void set_error(std::string* err, const char* what) noexcept {
    if (!err) return;
    try {
        *err = what;
    } catch (...) {
    }
}

std::string entry_prefix(bool in_entry, size_t index) {
    return in_entry ? "entry " + std::to_string(index) + ": " : std::string();
}

// Builds one datagram: the header, then the fields in order. Keeps counting past kMaxMessage without storing
// (so a list that is far too big costs no memory) and keeps only the first error.
class Writer {
public:
    Writer(std::vector<uint8_t>* out, Type type, uint32_t seq) : out_(out), type_(type) {
        out_->clear();
        u8(uint8_t(type));
        u8(uint8_t(kProtocolVersion));
        u16(0);
        u32(seq);
    }

    void u8(uint8_t v) { put(v, 1); }
    void u16(uint16_t v) { put(v, 2); }
    void u32(uint32_t v) { put(v, 4); }
    void i32(int32_t v) { put(uint32_t(v), 4); }
    void i64(int64_t v) { put(uint64_t(v), 8); }
    void f64(double v) {
        uint64_t bits;
        std::memcpy(&bits, &v, sizeof bits);
        put(bits, 8);
    }
    void boolean(bool v) { u8(v ? 1 : 0); }
    void level(const char* field, int32_t v) {
        if (v < 0 || v > kMaxLogLevel)
            invalid(std::string(field) + " " + std::to_string(v) + " is not a log level (0..6)");
        i32(v);
    }
    void str(const char* field, const std::string& s, size_t limit) {
        if (s.size() > limit) {
            invalid(std::string(field) + " length " + std::to_string(s.size()) + " exceeds " + std::to_string(limit));
            return;
        }
        u32(uint32_t(s.size()));
        size_ += s.size();
        if (storing()) out_->insert(out_->end(), s.begin(), s.end());
    }
    // Errors from now on name entry `index` (its position in the caller's list).
    void entry(size_t index) {
        in_entry_ = true;
        entry_ = index;
    }
    void invalid(const std::string& what) {
        if (error_.empty()) error_ = std::string(type_name(type_)) + ": " + entry_prefix(in_entry_, entry_) + what;
    }

    bool finish(std::string* err) {
        if (error_.empty() && size_ > kMaxMessage)
            error_ = std::string(type_name(type_)) + ": " + std::to_string(size_) + " bytes exceed the " +
                     std::to_string(kMaxMessage) + "-byte message limit";
        if (error_.empty()) return true;
        out_->clear();
        if (err) *err = error_;
        return false;
    }

private:
    bool storing() const { return error_.empty() && size_ <= kMaxMessage; }
    void put(uint64_t v, int n) {
        size_ += size_t(n);
        if (!storing()) return;
        for (int i = 0; i < n; ++i) out_->push_back(uint8_t(v >> (8 * i)));
    }

    std::vector<uint8_t>* out_;
    Type type_;
    size_t size_ = 0;
    bool in_entry_ = false;
    size_t entry_ = 0;
    std::string error_;
};

// Reads one datagram's payload. After the first error every read returns zero/empty and leaves the error
// alone, so decoders read straight through and check once at the end (loops also stop on !ok()).
class Reader {
public:
    Reader(const uint8_t* data, size_t size, Type type) : p_(data), left_(size), type_(type) {}

    bool ok() const { return error_.empty(); }
    uint8_t u8(const char* field) { return uint8_t(get(field, 1)); }
    uint16_t u16(const char* field) { return uint16_t(get(field, 2)); }
    uint32_t u32(const char* field) { return uint32_t(get(field, 4)); }
    int32_t i32(const char* field) { return int32_t(uint32_t(get(field, 4))); }
    int64_t i64(const char* field) { return int64_t(get(field, 8)); }
    double f64(const char* field) {
        const uint64_t bits = get(field, 8);
        double v;
        std::memcpy(&v, &bits, sizeof v);
        return v;
    }
    bool boolean(const char* field) {
        const uint8_t v = u8(field);
        if (ok() && v > 1) invalid(std::string(field) + " is " + std::to_string(v) + ", not 0 or 1");
        return v == 1;
    }
    int32_t level(const char* field) {
        const int32_t v = i32(field);
        if (ok() && (v < 0 || v > kMaxLogLevel))
            invalid(std::string(field) + " " + std::to_string(v) + " is not a log level (0..6)");
        return v;
    }
    std::string str(const char* field, size_t limit) {
        const uint32_t n = u32(field);
        if (!ok()) return {};
        if (n > limit) {
            invalid(std::string(field) + " length " + std::to_string(n) + " exceeds " + std::to_string(limit));
            return {};
        }
        if (n > left_) {
            truncated(field, n);
            return {};
        }
        std::string s(reinterpret_cast<const char*>(p_), n);
        p_ += n;
        left_ -= n;
        return s;
    }
    // A count of entries of at least min_entry bytes each, refused when the rest of the datagram cannot hold
    // them: only then may the caller reserve `count` entries.
    uint32_t count(size_t min_entry) {
        const uint32_t n = u32("count");
        if (ok() && n > left_ / min_entry)
            invalid("count " + std::to_string(n) + " needs at least " + std::to_string(n * uint64_t(min_entry)) +
                    " bytes, " + std::to_string(left_) + " left");
        return ok() ? n : 0;
    }
    void entry(size_t index) {
        in_entry_ = true;
        entry_ = index;
    }
    void invalid(const std::string& what) {
        if (ok()) error_ = std::string(type_name(type_)) + ": " + entry_prefix(in_entry_, entry_) + what;
    }

    bool finish(std::string* err) {
        if (ok() && left_ > 0) {
            in_entry_ = false;
            invalid(std::to_string(left_) + " trailing byte" + (left_ == 1 ? "" : "s") + " after the payload");
        }
        if (ok()) return true;
        if (err) *err = error_;
        return false;
    }

private:
    void truncated(const char* field, size_t needed) {
        if (ok())
            error_ = "truncated " + std::string(type_name(type_)) + ": " + std::to_string(left_) + " byte" +
                     (left_ == 1 ? "" : "s") + " left, " + entry_prefix(in_entry_, entry_) + field + " needs " +
                     std::to_string(needed);
    }
    uint64_t get(const char* field, size_t n) {
        if (!ok()) return 0;
        if (left_ < n) {
            truncated(field, n);
            return 0;
        }
        uint64_t v = 0;
        for (size_t i = 0; i < n; ++i) v |= uint64_t(p_[i]) << (8 * i);
        p_ += n;
        left_ -= n;
        return v;
    }

    const uint8_t* p_;
    size_t left_;
    Type type_;
    bool in_entry_ = false;
    size_t entry_ = 0;
    std::string error_;
};

// ---- Payloads, host -> worker. put() and get() of one type list the same fields in the same order.

void put(Writer& w, const Hello& m) {
    w.u32(m.protocol_version);
    w.level("log_level", m.log_level);
    w.u32(m.max_tasks);
    w.u32(m.max_lanes);
}
void get(Reader& r, Hello* m) {
    m->protocol_version = r.u32("protocol_version");
    m->log_level = r.level("log_level");
    m->max_tasks = r.u32("max_tasks");
    m->max_lanes = r.u32("max_lanes");
}

void put(Writer& w, const Load& m) {
    w.i64(m.entry_bound_ns);
    w.u32(m.max_tasks);
    w.str("display_path", m.display_path, kMaxText);
}
void get(Reader& r, Load* m) {
    m->entry_bound_ns = r.i64("entry_bound_ns");
    m->max_tasks = r.u32("max_tasks");
    m->display_path = r.str("display_path", kMaxText);
}

size_t config_entry_size(const ConfigEntry& e) {
    size_t value = 8;
    if (const auto* s = std::get_if<std::string>(&e.value)) value = 4 + s->size();
    if (std::holds_alternative<bool>(e.value)) value = 1;
    return 4 + e.key.size() + 1 + value;
}
// all[begin, end) as one Config payload; errors name an entry by its position in `all`.
void put_config(Writer& w, const std::vector<ConfigEntry>& all, size_t begin, size_t end) {
    w.u32(uint32_t(end - begin));
    for (size_t i = begin; i < end; ++i) {
        const ConfigEntry& e = all[i];
        w.entry(i);
        w.str("key", e.key, kMaxText);
        w.u8(uint8_t(e.value.index()));
        switch (e.value.index()) {
            case kBool:
                w.boolean(std::get<bool>(e.value));
                break;
            case kInt:
                w.i64(std::get<int64_t>(e.value));
                break;
            case kDouble:
                w.f64(std::get<double>(e.value));
                break;
            case kString:
                w.str("value", std::get<std::string>(e.value), kMaxConfigString);
                break;
            default:
                w.invalid("value holds nothing");
                break;  // valueless_by_exception
        }
    }
}
void put(Writer& w, const Config& m) { put_config(w, m.entries, 0, m.entries.size()); }
void get(Reader& r, Config* m) {
    const uint32_t n = r.count(kMinConfigEntry);
    m->entries.reserve(n);
    for (uint32_t i = 0; i < n && r.ok(); ++i) {
        r.entry(i);
        ConfigEntry e;
        e.key = r.str("key", kMaxText);
        const uint8_t kind = r.u8("kind");
        switch (kind) {
            case kBool:
                e.value = r.boolean("value");
                break;
            case kInt:
                e.value = r.i64("value");
                break;
            case kDouble:
                e.value = r.f64("value");
                break;
            case kString:
                e.value = r.str("value", kMaxConfigString);
                break;
            default:
                r.invalid("unknown value kind " + std::to_string(kind));
                break;
        }
        m->entries.push_back(std::move(e));
    }
}

void put(Writer& w, const Init& m) {
    w.i64(m.bound_ns);
    w.i64(m.deadline_ns);
    w.u32(m.max_tasks);
    w.str("plugin_name", m.plugin_name, kMaxName);
}
void get(Reader& r, Init* m) {
    m->bound_ns = r.i64("bound_ns");
    m->deadline_ns = r.i64("deadline_ns");
    m->max_tasks = r.u32("max_tasks");
    m->plugin_name = r.str("plugin_name", kMaxName);
}

void put(Writer& w, const Call& m) {
    w.u32(m.task_index);
    w.boolean(m.is_stop);
    w.i64(m.deadline_ns);
    w.i64(m.due_ns);
}
void get(Reader& r, Call* m) {
    m->task_index = r.u32("task_index");
    m->is_stop = r.boolean("is_stop");
    m->deadline_ns = r.i64("deadline_ns");
    m->due_ns = r.i64("due_ns");
}

void put(Writer& w, const Shutdown& m) { w.i64(m.bound_ns); }
void get(Reader& r, Shutdown* m) { m->bound_ns = r.i64("bound_ns"); }

void put(Writer& w, const AddLane& m) { w.u32(m.lane_index); }
void get(Reader& r, AddLane* m) { m->lane_index = r.u32("lane_index"); }

void put(Writer& w, const SetLogLevel& m) { w.level("level", m.level); }
void get(Reader& r, SetLogLevel* m) { m->level = r.level("level"); }

void put(Writer&, const Bye&) {}
void get(Reader&, Bye*) {}

// ---- Payloads, worker -> host.

void put(Writer& w, const Ready& m) {
    w.u32(m.protocol_version);
    w.i32(m.pid);
}
void get(Reader& r, Ready* m) {
    m->protocol_version = r.u32("protocol_version");
    m->pid = r.i32("pid");
}

void put(Writer& w, const Loaded& m) {
    w.u16(m.abi_major);
    w.u16(m.abi_minor);
    w.boolean(m.has_init);
    w.boolean(m.has_shutdown);
    w.boolean(m.go_runtime);
    w.str("name", m.name, kMaxName);
    w.str("version", m.version, kMaxText);
    w.str("description", m.description, kMaxText);
    w.u32(m.static_task_count);
}
void get(Reader& r, Loaded* m) {
    m->abi_major = r.u16("abi_major");
    m->abi_minor = r.u16("abi_minor");
    m->has_init = r.boolean("has_init");
    m->has_shutdown = r.boolean("has_shutdown");
    m->go_runtime = r.boolean("go_runtime");
    m->name = r.str("name", kMaxName);
    m->version = r.str("version", kMaxText);
    m->description = r.str("description", kMaxText);
    m->static_task_count = r.u32("static_task_count");
}

void put(Writer& w, const LoadFailed& m) {
    w.i32(m.code);
    w.str("reason", m.reason, kMaxText);
    w.str("hint", m.hint, kMaxText);
}
void get(Reader& r, LoadFailed* m) {
    m->code = r.i32("code");
    m->reason = r.str("reason", kMaxText);
    m->hint = r.str("hint", kMaxText);
}

size_t task_entry_size(const TaskEntry& e) { return 4 + e.name.size() + 8 + 8; }
// all[begin, end) as one Tasks payload starting at task index first_index; errors name an entry by its
// position in `all`.
void put_tasks(Writer& w, uint32_t first_index, const std::vector<TaskEntry>& all, size_t begin, size_t end) {
    w.u32(first_index);
    w.u32(uint32_t(end - begin));
    for (size_t i = begin; i < end; ++i) {
        w.entry(i);
        w.str("name", all[i].name, kMaxText);
        w.i64(all[i].interval_ns);
        w.i64(all[i].timeout_ns);
    }
}
void put(Writer& w, const Tasks& m) { put_tasks(w, m.first_index, m.entries, 0, m.entries.size()); }
void get(Reader& r, Tasks* m) {
    m->first_index = r.u32("first_index");
    const uint32_t n = r.count(kMinTaskEntry);
    m->entries.reserve(n);
    for (uint32_t i = 0; i < n && r.ok(); ++i) {
        r.entry(i);
        TaskEntry e;
        e.name = r.str("name", kMaxText);
        e.interval_ns = r.i64("interval_ns");
        e.timeout_ns = r.i64("timeout_ns");
        m->entries.push_back(std::move(e));
    }
}

void put(Writer& w, const InitDone& m) {
    w.i32(m.status);
    w.u32(m.task_count);
    w.u32(m.refused_over_cap);
    w.str("error", m.error, kMaxReportText);
    w.str("thrown", m.thrown, kMaxReportText);
}
void get(Reader& r, InitDone* m) {
    m->status = r.i32("status");
    m->task_count = r.u32("task_count");
    m->refused_over_cap = r.u32("refused_over_cap");
    m->error = r.str("error", kMaxReportText);
    m->thrown = r.str("thrown", kMaxReportText);
}

void put(Writer& w, const Result& m) {
    w.i32(m.status);
    w.boolean(m.threw);
    w.str("error", m.error, kMaxReportText);
}
void get(Reader& r, Result* m) {
    m->status = r.i32("status");
    m->threw = r.boolean("threw");
    m->error = r.str("error", kMaxReportText);
}

void put(Writer& w, const Log& m) {
    w.level("level", m.level);
    w.u32(m.task_index);
    w.str("text", m.text, kMaxReportText);
}
void get(Reader& r, Log* m) {
    m->level = r.level("level");
    m->task_index = r.u32("task_index");
    m->text = r.str("text", kMaxReportText);
}

void put(Writer& w, const ShutdownDone& m) { w.str("thrown", m.thrown, kMaxReportText); }
void get(Reader& r, ShutdownDone* m) { m->thrown = r.str("thrown", kMaxReportText); }

void put(Writer& w, const Fatal& m) { w.str("text", m.text, kMaxText); }
void get(Reader& r, Fatal* m) { m->text = r.str("text", kMaxText); }

// ---- Framing.

template <class Variant>
bool encode_any(const Variant& m, Type type, uint32_t seq, std::vector<uint8_t>* out, std::string* err) {
    try {
        Writer w(out, type, seq);
        std::visit([&w](const auto& payload) { put(w, payload); }, m);
        return w.finish(err);
    } catch (const std::bad_alloc&) {
        out->clear();
        set_error(err, "out of memory while encoding a message");
        return false;
    }
}

// Cuts `all` into runs [begin, end) whose datagrams fit kMaxMessage (`fixed` bytes plus their entries); an
// entry too big to fit even alone gets a run of its own, whose encoding then reports why.
template <class Entry>
std::vector<std::pair<size_t, size_t>> runs(const std::vector<Entry>& all, size_t fixed,
                                            size_t (*size_of)(const Entry&)) {
    std::vector<std::pair<size_t, size_t>> out;
    size_t begin = 0, bytes = fixed;
    for (size_t i = 0; i < all.size(); ++i) {
        const size_t n = size_of(all[i]);
        if (i > begin && bytes + n > kMaxMessage) {
            out.emplace_back(begin, i);
            begin = i;
            bytes = fixed;
        }
        bytes += n;
    }
    if (begin < all.size()) out.emplace_back(begin, all.size());
    return out;
}

// The payload of a datagram whose header has been checked, as alternative M of Variant.
template <class M, class Variant>
std::optional<Frame<Variant>> read_payload(Reader& r, uint32_t seq, std::string* err) {
    M m;
    get(r, &m);
    if (!r.finish(err)) return std::nullopt;
    return Frame<Variant>{seq, Variant{std::move(m)}};
}

// Checks the header; on success *type, *seq and a Reader positioned on the payload are ready.
bool read_header(const uint8_t* data, size_t size, bool from_worker, Type* type, uint32_t* seq, std::string* err) {
    auto fail = [err](std::string what) {
        if (err) *err = std::move(what);
        return false;
    };
    if (size > kMaxMessage)
        return fail("message of " + std::to_string(size) + " bytes exceeds " + std::to_string(kMaxMessage));
    if (size < kHeaderSize)
        return fail("truncated header: " + std::to_string(size) + " of " + std::to_string(kHeaderSize) + " bytes");
    const uint8_t t = data[0], version = data[1];
    const uint16_t reserved = uint16_t(data[2] | data[3] << 8);
    // Another version may number its types differently: say so before naming the type.
    if (version != kProtocolVersion)
        return fail("protocol version " + std::to_string(version) + ", expected " + std::to_string(kProtocolVersion) +
                    " (message type " + std::to_string(t) + ")");
    const bool host = t >= kFirstHost && t <= kLastHost, worker = t >= kFirstWorker && t <= kLastWorker;
    if (!host && !worker) return fail("unknown message type " + std::to_string(t));
    if (from_worker && !worker)
        return fail(std::string(type_name(Type(t))) + " (type " + std::to_string(t) +
                    ") is a host message, not one a worker sends");
    if (!from_worker && !host)
        return fail(std::string(type_name(Type(t))) + " (type " + std::to_string(t) +
                    ") is a worker message, not one the host sends");
    if (reserved != 0)
        return fail(std::string(type_name(Type(t))) + ": reserved header field is " + std::to_string(reserved) +
                    ", must be 0");
    *type = Type(t);
    *seq = uint32_t(data[4]) | uint32_t(data[5]) << 8 | uint32_t(data[6]) << 16 | uint32_t(data[7]) << 24;
    return true;
}

}  // namespace

bool encode(const HostMessage& m, uint32_t seq, std::vector<uint8_t>* out, std::string* err) {
    return encode_any(m, Type(kFirstHost + m.index()), seq, out, err);
}

bool encode(const WorkerMessage& m, uint32_t seq, std::vector<uint8_t>* out, std::string* err) {
    return encode_any(m, Type(kFirstWorker + m.index()), seq, out, err);
}

bool encode_config(const std::vector<ConfigEntry>& all, uint32_t seq, std::vector<std::vector<uint8_t>>* out,
                   std::string* err) {
    try {
        out->clear();
        for (const auto& [begin, end] : runs(all, kConfigFixed, config_entry_size)) {
            Writer w(&out->emplace_back(), Type::config, seq);
            put_config(w, all, begin, end);
            if (!w.finish(err)) {
                out->clear();
                return false;
            }
        }
        return true;
    } catch (const std::bad_alloc&) {
        out->clear();
        set_error(err, "Config: out of memory while encoding");
        return false;
    }
}

bool encode_tasks(const std::vector<TaskEntry>& all, uint32_t seq, std::vector<std::vector<uint8_t>>* out,
                  std::string* err, uint32_t first_index) {
    try {
        out->clear();
        // Every index must fit the u32 first_index; past that the list cannot be numbered on the wire.
        if (!all.empty() && uint64_t(first_index) + (all.size() - 1) > UINT32_MAX) {
            if (err)
                *err = "Tasks: " + std::to_string(all.size()) + " entries from index " + std::to_string(first_index) +
                       " run past task index " + std::to_string(UINT32_MAX);
            return false;
        }
        for (const auto& [begin, end] : runs(all, kTasksFixed, task_entry_size)) {
            Writer w(&out->emplace_back(), Type::tasks, seq);
            put_tasks(w, uint32_t(first_index + begin), all, begin, end);
            if (!w.finish(err)) {
                out->clear();
                return false;
            }
        }
        return true;
    } catch (const std::bad_alloc&) {
        out->clear();
        set_error(err, "Tasks: out of memory while encoding");
        return false;
    }
}

std::optional<Frame<WorkerMessage>> decode_worker(const uint8_t* data, size_t size, std::string* err) {
    using V = WorkerMessage;
    try {
        Type type;
        uint32_t seq;
        if (!read_header(data, size, true, &type, &seq, err)) return std::nullopt;
        Reader r(data + kHeaderSize, size - kHeaderSize, type);
        switch (type) {
            case Type::ready:
                return read_payload<Ready, V>(r, seq, err);
            case Type::loaded:
                return read_payload<Loaded, V>(r, seq, err);
            case Type::load_failed:
                return read_payload<LoadFailed, V>(r, seq, err);
            case Type::tasks:
                return read_payload<Tasks, V>(r, seq, err);
            case Type::init_done:
                return read_payload<InitDone, V>(r, seq, err);
            case Type::result:
                return read_payload<Result, V>(r, seq, err);
            case Type::log:
                return read_payload<Log, V>(r, seq, err);
            case Type::shutdown_done:
                return read_payload<ShutdownDone, V>(r, seq, err);
            case Type::fatal:
                return read_payload<Fatal, V>(r, seq, err);
            default:
                break;  // read_header let only worker types through
        }
    } catch (const std::bad_alloc&) {
        set_error(err, "out of memory while decoding a worker message");
    }
    return std::nullopt;
}

std::optional<Frame<HostMessage>> decode_host(const uint8_t* data, size_t size, std::string* err) {
    using V = HostMessage;
    try {
        Type type;
        uint32_t seq;
        if (!read_header(data, size, false, &type, &seq, err)) return std::nullopt;
        Reader r(data + kHeaderSize, size - kHeaderSize, type);
        switch (type) {
            case Type::hello:
                return read_payload<Hello, V>(r, seq, err);
            case Type::load:
                return read_payload<Load, V>(r, seq, err);
            case Type::config:
                return read_payload<Config, V>(r, seq, err);
            case Type::init:
                return read_payload<Init, V>(r, seq, err);
            case Type::call:
                return read_payload<Call, V>(r, seq, err);
            case Type::shutdown:
                return read_payload<Shutdown, V>(r, seq, err);
            case Type::add_lane:
                return read_payload<AddLane, V>(r, seq, err);
            case Type::set_log_level:
                return read_payload<SetLogLevel, V>(r, seq, err);
            case Type::bye:
                return read_payload<Bye, V>(r, seq, err);
            default:
                break;  // read_header let only host types through
        }
    } catch (const std::bad_alloc&) {
        set_error(err, "out of memory while decoding a host message");
    }
    return std::nullopt;
}

const char* type_name(Type t) {
    switch (t) {
        case Type::hello:
            return "Hello";
        case Type::load:
            return "Load";
        case Type::config:
            return "Config";
        case Type::init:
            return "Init";
        case Type::call:
            return "Call";
        case Type::shutdown:
            return "Shutdown";
        case Type::add_lane:
            return "AddLane";
        case Type::set_log_level:
            return "SetLogLevel";
        case Type::bye:
            return "Bye";
        case Type::ready:
            return "Ready";
        case Type::loaded:
            return "Loaded";
        case Type::load_failed:
            return "LoadFailed";
        case Type::tasks:
            return "Tasks";
        case Type::init_done:
            return "InitDone";
        case Type::result:
            return "Result";
        case Type::log:
            return "Log";
        case Type::shutdown_done:
            return "ShutdownDone";
        case Type::fatal:
            return "Fatal";
    }
    return "unknown";
}

}  // namespace tickhost::detail::wire
