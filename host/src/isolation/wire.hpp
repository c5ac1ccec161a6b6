// The isolation protocol's messages (version 1): what the host and a tickhost-worker child say to each
// other over their SOCK_SEQPACKET socket pairs, and the codec that turns them into datagrams and back.
// This comment is the protocol's reference. No sockets or processes here: bytes in, messages out.
//
// Framing
//   One message = one datagram of at most kMaxMessage (65536) bytes. All integers are little-endian;
//   i32/i64 are two's complement; f64 is the IEEE 754 binary64 bit pattern as a u64.
//   Header (8 bytes):  u8 type | u8 version (= kProtocolVersion) | u16 reserved (= 0) | u32 seq
//   then the payload of that type, and nothing after it.
//   string = u32 length + that many bytes (no terminator, any byte values; the host escapes them before
//            printing). Each string field has its own length limit, given below.
//   bool   = u8, 0 or 1.
//   A datagram is refused if it is longer than kMaxMessage, shorter than its header, has an unknown type,
//   another version, a nonzero reserved field, a bool other than 0/1, a log level outside 0..6, a string
//   longer than its limit, a field cut short, a count larger than the remaining bytes can hold, or bytes
//   left over after its payload.
//
// Host -> worker (decode_host)
//   1 Hello        u32 protocol_version, i32 log_level (spdlog level 0..6), u32 max_tasks, u32 max_lanes
//   2 Load         i64 entry_bound_ns, u32 max_tasks, string display_path (<= 4096)
//                  (the plugin file's descriptor travels beside it as SCM_RIGHTS)
//   3 Config       u32 count, then count entries: string key (<= 4096), u8 kind, value:
//                    kind 0 bool = u8 | 1 int = i64 | 2 double = f64 | 3 string = string (<= 60000)
//                  A plugin's config may span several Config messages (encode_config splits it).
//   4 Init         i64 bound_ns, i64 deadline_ns, u32 max_tasks, string plugin_name (<= 64)
//   5 Call         u32 task_index, bool is_stop, i64 deadline_ns, i64 due_ns   (header seq = the call's seq)
//   6 Shutdown     i64 bound_ns
//   7 AddLane      u32 lane_index (the lane's socket travels beside it as SCM_RIGHTS)
//   8 SetLogLevel  i32 level (0..6)
//   9 Bye          (empty)
//
// Worker -> host (decode_worker: the peer is untrusted, so everything above is enforced)
//   64 Ready        u32 protocol_version, i32 pid
//   65 Loaded       u16 abi_major, u16 abi_minor, bool has_init, bool has_shutdown, bool go_runtime,
//                   string name (<= 64), string version (<= 4096), string description (<= 4096),
//                   u32 static_task_count (the static tasks follow in Tasks messages)
//   66 LoadFailed   i32 code, string reason (<= 4096), string hint (<= 4096)
//   67 Tasks        u32 first_index, u32 count, then count entries:
//                     string name (<= 4096 on the wire; the host applies its name rules later),
//                     i64 interval_ns, i64 timeout_ns
//                   A list may span several Tasks messages (encode_tasks splits it).
//   68 InitDone     i32 status, u32 task_count (static + declared; the declared ones follow in Tasks
//                   messages), u32 refused_over_cap, string error (<= 16896), string thrown (<= 16896)
//   69 Result       i32 status, bool threw, string error (<= 16896)   (header seq = the call's seq)
//   70 Log          i32 level (0..6), u32 task_index (0xFFFFFFFF = none), string text (<= 16896)
//   71 ShutdownDone string thrown (<= 16896)
//   72 Fatal        string text (<= 4096) (the worker's own error, sent before it exits)
//
// The encoding is canonical: a datagram that decodes re-encodes to the same bytes.
//
// Example:
//     std::vector<uint8_t> bytes;
//     std::string err;
//     if (!wire::encode(wire::WorkerMessage{wire::Result{0, false, ""}}, 7, &bytes, &err)) ...;
//     auto frame = wire::decode_worker(bytes.data(), bytes.size(), &err);  // nullopt + err if refused
//     if (frame) if (auto* r = std::get_if<wire::Result>(&frame->msg)) ...;  // frame->seq == 7
//
// Threading: all functions are pure and reentrant. Errors: none of them throws (std::bad_alloc included);
// failure is false / nullopt plus a one-line message in *err naming the message type and the field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace tickhost::detail::wire {

constexpr uint32_t kProtocolVersion = 1;
constexpr size_t kMaxMessage = 65536;       // bytes in one datagram, header included
constexpr size_t kHeaderSize = 8;           // type, version, reserved, seq
constexpr size_t kMaxText = 4096;           // most string fields: texts, paths, keys, task names on the wire
// Texts that carry a plugin's words as the host prints them (escaped by escape_plugin_text: up to 4096 of its
// bytes, each at most 4 characters, then " … (n bytes truncated)"), inside a line of the host's own: a log
// record ("[task] text"), a call's or init's error, an exception's text. Larger than kMaxText so that an
// isolated plugin's lines and errors are the same, byte for byte, as in the host's own process.
constexpr size_t kMaxReportText = 4 * kMaxText + 512;
constexpr size_t kMaxName = 64;             // plugin names (Init, Loaded)
constexpr size_t kMaxConfigString = 60000;  // a string config value
constexpr int32_t kMaxLogLevel = 6;         // spdlog::level::off; levels are 0 (trace) .. 6

enum class Type : uint8_t {
    // host -> worker
    hello = 1,
    load,
    config,
    init,
    call,
    shutdown,
    add_lane,
    set_log_level,
    bye,
    // worker -> host
    ready = 64,
    loaded,
    load_failed,
    tasks,
    init_done,
    result,
    log,
    shutdown_done,
    fatal,
};

// Host -> worker.
struct Hello {
    uint32_t protocol_version = kProtocolVersion;
    int32_t log_level = 2;
    uint32_t max_tasks = 0;
    uint32_t max_lanes = 0;
};
struct Load {
    int64_t entry_bound_ns = 0;
    uint32_t max_tasks = 0;
    std::string display_path;
};
struct ConfigEntry {
    std::string key;
    std::variant<bool, int64_t, double, std::string> value;  // index = the wire's kind byte
};
struct Config {
    std::vector<ConfigEntry> entries;
};
struct Init {
    int64_t bound_ns = 0;
    int64_t deadline_ns = 0;
    uint32_t max_tasks = 0;
    std::string plugin_name;
};
struct Call {
    uint32_t task_index = 0;
    bool is_stop = false;
    int64_t deadline_ns = 0;
    int64_t due_ns = 0;
};
struct Shutdown {
    int64_t bound_ns = 0;
};
struct AddLane {
    uint32_t lane_index = 0;
};
struct SetLogLevel {
    int32_t level = 2;
};
struct Bye {};

// Worker -> host.
struct Ready {
    uint32_t protocol_version = kProtocolVersion;
    int32_t pid = 0;
};
struct Loaded {
    uint16_t abi_major = 0, abi_minor = 0;
    bool has_init = false, has_shutdown = false, go_runtime = false;
    std::string name, version, description;
    uint32_t static_task_count = 0;
};
struct LoadFailed {
    int32_t code = 0;
    std::string reason, hint;
};
struct TaskEntry {
    std::string name;
    int64_t interval_ns = 0;
    int64_t timeout_ns = 0;
};
struct Tasks {
    uint32_t first_index = 0;
    std::vector<TaskEntry> entries;
};
struct InitDone {
    int32_t status = 0;
    uint32_t task_count = 0;
    uint32_t refused_over_cap = 0;
    std::string error, thrown;
};
struct Result {
    int32_t status = 0;
    bool threw = false;
    std::string error;
};
struct Log {
    int32_t level = 2;
    uint32_t task_index = 0xFFFFFFFF;  // 0xFFFFFFFF = not from a task
    std::string text;
};
struct ShutdownDone {
    std::string thrown;
};
struct Fatal {
    std::string text;
};

// Alternatives in Type order: the index of an alternative is its type value minus 1 (host) or 64 (worker).
using HostMessage = std::variant<Hello, Load, Config, Init, Call, Shutdown, AddLane, SetLogLevel, Bye>;
using WorkerMessage = std::variant<Ready, Loaded, LoadFailed, Tasks, InitDone, Result, Log, ShutdownDone, Fatal>;

// A decoded message and the seq from its header.
template <class M>
struct Frame {
    uint32_t seq = 0;
    M msg;
};

// Encodes one message as one datagram into *out (replacing its content). Refuses (false + *err, *out
// emptied) rather than truncating: a string past its limit, a log level outside 0..6, or a message longer
// than kMaxMessage (a big Config or Tasks list: use the splitters below). Callers cut texts to their limit
// (kMaxText, kMaxReportText) first.
bool encode(const HostMessage& m, uint32_t seq, std::vector<uint8_t>* out, std::string* err);
bool encode(const WorkerMessage& m, uint32_t seq, std::vector<uint8_t>* out, std::string* err);

// A Config / Tasks list of any length as consecutive datagrams in *out (replacing its content), each at most
// kMaxMessage, all with the same seq, entries in order; an empty list gives no datagram. Tasks messages carry
// first_index = first_index + the position in `all` of their first entry (declared tasks after InitDone start
// at the static task count). An entry past its limits fails the whole list (false + *err naming the entry's
// position in `all`, *out emptied), and so does a Tasks list whose last index would pass 0xFFFFFFFF.
bool encode_config(const std::vector<ConfigEntry>& all, uint32_t seq, std::vector<std::vector<uint8_t>>* out,
                   std::string* err);
bool encode_tasks(const std::vector<TaskEntry>& all, uint32_t seq, std::vector<std::vector<uint8_t>>* out,
                  std::string* err, uint32_t first_index = 0);

// Decodes one datagram of `size` bytes. Never reads past data + size, allocates O(size) at most (a count or
// length larger than the remaining bytes can hold is refused before anything is reserved), never throws.
// Refused: nullopt and a one-line *err naming the type and field (an entry by its position in this
// datagram), e.g.
//   "Tasks: entry 3: name length 70000 exceeds 4096", "unknown message type 200",
//   "truncated Result: 3 bytes left, error needs 4".
// decode_worker refuses host messages and decode_host worker messages.
std::optional<Frame<WorkerMessage>> decode_worker(const uint8_t* data, size_t size, std::string* err);
std::optional<Frame<HostMessage>> decode_host(const uint8_t* data, size_t size, std::string* err);

// "Hello", "Result", ...; "unknown" for a value that is not a Type.
const char* type_name(Type t);

}  // namespace tickhost::detail::wire
