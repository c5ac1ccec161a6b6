// The isolation protocol's codec (host/src/isolation/wire.hpp, white box). The worker is untrusted, so most
// of this is about refusals: every limit with its named error, every prefix of a valid message, the size
// boundary at kMaxMessage. Also the round trip of every message and the splitting of big lists.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "isolation/wire.hpp"

namespace tickhost::detail::wire {

// Field-by-field equality, so that a field that put() and get() both forget still fails the round trip.
// Doubles compare by their bits (NaN payloads and -0.0 must survive too).
bool operator==(const Hello& a, const Hello& b) {
    return std::tie(a.protocol_version, a.log_level, a.max_tasks, a.max_lanes) ==
           std::tie(b.protocol_version, b.log_level, b.max_tasks, b.max_lanes);
}
bool operator==(const Load& a, const Load& b) {
    return std::tie(a.entry_bound_ns, a.max_tasks, a.display_path) ==
           std::tie(b.entry_bound_ns, b.max_tasks, b.display_path);
}
bool operator==(const ConfigEntry& a, const ConfigEntry& b) {
    if (a.key != b.key || a.value.index() != b.value.index()) return false;
    if (const double* x = std::get_if<double>(&a.value)) {
        const double y = std::get<double>(b.value);
        return std::memcmp(x, &y, sizeof y) == 0;
    }
    return a.value == b.value;
}
bool operator==(const Config& a, const Config& b) { return a.entries == b.entries; }
bool operator==(const Init& a, const Init& b) {
    return std::tie(a.bound_ns, a.deadline_ns, a.max_tasks, a.plugin_name) ==
           std::tie(b.bound_ns, b.deadline_ns, b.max_tasks, b.plugin_name);
}
bool operator==(const Call& a, const Call& b) {
    return std::tie(a.task_index, a.is_stop, a.deadline_ns, a.due_ns) ==
           std::tie(b.task_index, b.is_stop, b.deadline_ns, b.due_ns);
}
bool operator==(const Shutdown& a, const Shutdown& b) { return a.bound_ns == b.bound_ns; }
bool operator==(const AddLane& a, const AddLane& b) { return a.lane_index == b.lane_index; }
bool operator==(const SetLogLevel& a, const SetLogLevel& b) { return a.level == b.level; }
bool operator==(const Bye&, const Bye&) { return true; }
bool operator==(const Ready& a, const Ready& b) {
    return std::tie(a.protocol_version, a.pid) == std::tie(b.protocol_version, b.pid);
}
bool operator==(const Loaded& a, const Loaded& b) {
    return std::tie(a.abi_major, a.abi_minor, a.has_init, a.has_shutdown, a.go_runtime, a.name, a.version,
                    a.description, a.static_task_count) == std::tie(b.abi_major, b.abi_minor, b.has_init,
                                                                    b.has_shutdown, b.go_runtime, b.name, b.version,
                                                                    b.description, b.static_task_count);
}
bool operator==(const LoadFailed& a, const LoadFailed& b) {
    return std::tie(a.code, a.reason, a.hint) == std::tie(b.code, b.reason, b.hint);
}
bool operator==(const TaskEntry& a, const TaskEntry& b) {
    return std::tie(a.name, a.interval_ns, a.timeout_ns) == std::tie(b.name, b.interval_ns, b.timeout_ns);
}
bool operator==(const Tasks& a, const Tasks& b) { return a.first_index == b.first_index && a.entries == b.entries; }
bool operator==(const InitDone& a, const InitDone& b) {
    return std::tie(a.status, a.task_count, a.refused_over_cap, a.error, a.thrown) ==
           std::tie(b.status, b.task_count, b.refused_over_cap, b.error, b.thrown);
}
bool operator==(const Result& a, const Result& b) {
    return std::tie(a.status, a.threw, a.error) == std::tie(b.status, b.threw, b.error);
}
bool operator==(const Log& a, const Log& b) {
    return std::tie(a.level, a.task_index, a.text) == std::tie(b.level, b.task_index, b.text);
}
bool operator==(const ShutdownDone& a, const ShutdownDone& b) { return a.thrown == b.thrown; }
bool operator==(const Fatal& a, const Fatal& b) { return a.text == b.text; }

}  // namespace tickhost::detail::wire

using namespace tickhost::detail::wire;
using Bytes = std::vector<uint8_t>;

namespace {

constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();
constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int32_t kI32Min = std::numeric_limits<int32_t>::min();
constexpr int32_t kI32Max = std::numeric_limits<int32_t>::max();
constexpr uint32_t kU32Max = std::numeric_limits<uint32_t>::max();

// Every byte value, NUL and invalid UTF-8 included, `n` bytes long.
std::string all_bytes(size_t n) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = char(uint8_t(i * 7 + 3));
    return s;
}

// A datagram built by hand, for the ones the encoder refuses to make.
struct Raw {
    Bytes b;
    explicit Raw(Type type, uint32_t seq = 0) : Raw(uint8_t(type), 1, 0, seq) {}
    Raw(uint8_t type, uint8_t version, uint16_t reserved, uint32_t seq) { u8(type).u8(version).u16(reserved).u32(seq); }
    Raw& le(uint64_t v, int n) {
        for (int i = 0; i < n; ++i) b.push_back(uint8_t(v >> (8 * i)));
        return *this;
    }
    Raw& u8(uint8_t v) { return le(v, 1); }
    Raw& u16(uint16_t v) { return le(v, 2); }
    Raw& u32(uint32_t v) { return le(v, 4); }
    Raw& i32(int32_t v) { return le(uint32_t(v), 4); }
    Raw& i64(int64_t v) { return le(uint64_t(v), 8); }
    Raw& str(const std::string& s) {
        u32(uint32_t(s.size()));
        b.insert(b.end(), s.begin(), s.end());
        return *this;
    }
};

Bytes encoded(const HostMessage& m, uint32_t seq = 1) {
    Bytes out;
    std::string err;
    EXPECT_TRUE(encode(m, seq, &out, &err)) << err;
    return out;
}
Bytes encoded(const WorkerMessage& m, uint32_t seq = 1) {
    Bytes out;
    std::string err;
    EXPECT_TRUE(encode(m, seq, &out, &err)) << err;
    return out;
}

// What the encoder says when it refuses `m` (and that it leaves no bytes behind).
std::string encode_error(const HostMessage& m) {
    Bytes out{1, 2, 3};
    std::string err;
    EXPECT_FALSE(encode(m, 1, &out, &err));
    EXPECT_TRUE(out.empty());
    return err;
}
std::string encode_error(const WorkerMessage& m) {
    Bytes out{1, 2, 3};
    std::string err;
    EXPECT_FALSE(encode(m, 1, &out, &err));
    EXPECT_TRUE(out.empty());
    return err;
}

// What the decoder says when it refuses `bytes`.
std::string worker_error(const Bytes& bytes) {
    std::string err;
    EXPECT_FALSE(decode_worker(bytes.data(), bytes.size(), &err));
    EXPECT_FALSE(err.empty());
    EXPECT_EQ(err.find('\n'), std::string::npos) << err;
    return err;
}
std::string host_error(const Bytes& bytes) {
    std::string err;
    EXPECT_FALSE(decode_host(bytes.data(), bytes.size(), &err));
    EXPECT_FALSE(err.empty());
    EXPECT_EQ(err.find('\n'), std::string::npos) << err;
    return err;
}

// encode -> decode gives back the message and the seq; the other direction's decoder refuses the bytes.
template <class M>
void host_round_trip(const M& m, uint32_t seq) {
    const Bytes bytes = encoded(HostMessage{m}, seq);
    ASSERT_LE(bytes.size(), kMaxMessage);
    std::string err;
    const auto frame = decode_host(bytes.data(), bytes.size(), &err);
    ASSERT_TRUE(frame) << err;
    EXPECT_EQ(frame->seq, seq);
    ASSERT_TRUE(std::holds_alternative<M>(frame->msg)) << frame->msg.index();
    EXPECT_TRUE(std::get<M>(frame->msg) == m) << type_name(Type(bytes[0]));
    EXPECT_EQ(encoded(frame->msg, seq), bytes);  // canonical
    EXPECT_FALSE(decode_worker(bytes.data(), bytes.size(), &err));
}
template <class M>
void worker_round_trip(const M& m, uint32_t seq) {
    const Bytes bytes = encoded(WorkerMessage{m}, seq);
    ASSERT_LE(bytes.size(), kMaxMessage);
    std::string err;
    const auto frame = decode_worker(bytes.data(), bytes.size(), &err);
    ASSERT_TRUE(frame) << err;
    EXPECT_EQ(frame->seq, seq);
    ASSERT_TRUE(std::holds_alternative<M>(frame->msg)) << frame->msg.index();
    EXPECT_TRUE(std::get<M>(frame->msg) == m) << type_name(Type(bytes[0]));
    EXPECT_EQ(encoded(frame->msg, seq), bytes);  // canonical
    EXPECT_FALSE(decode_host(bytes.data(), bytes.size(), &err));
}

std::vector<HostMessage> sample_host_messages() {
    Config config;
    config.entries = {{"flag", true},      {"off", false},
                      {"min", kI64Min},    {"max", kI64Max},
                      {"pi", 3.25},        {"nan", std::numeric_limits<double>::quiet_NaN()},
                      {"", std::string()}, {all_bytes(kMaxText), all_bytes(kMaxText)}};
    return {Hello{},
            Hello{kU32Max, 6, kU32Max, 7},
            Load{kI64Max, 4096, "/srv/plugins/a b.so"},
            config,
            Config{},
            Init{kI64Min, kI64Max, 1, "hello"},
            Call{kU32Max, true, -1, kI64Max},
            Call{0, false, 0, 0},
            Shutdown{-5},
            AddLane{3},
            SetLogLevel{0},
            Bye{}};
}

std::vector<WorkerMessage> sample_worker_messages() {
    return {Ready{1, 4242},
            Loaded{1, 3, true, false, true, "heartbeat", "1.2.3", "beats", 2},
            LoadFailed{-7, "no entry point", "export tickhost_plugin_entry"},
            Tasks{5, {{"a", 1, 0}, {"", kI64Max, kI64Min}, {all_bytes(100), 10, 20}}},
            Tasks{0, {}},
            InitDone{-2, 9, 1, "bad config", "std::runtime_error: x"},
            Result{0, false, ""},
            Result{-3, true, all_bytes(kMaxText)},
            Log{4, 2, "line\nwith\0nul"},
            Log{0, kU32Max, ""},
            ShutdownDone{"boom"},
            Fatal{"cannot dlopen"}};
}

// A Tasks message of exactly `size` bytes (size >= 16 + 20): one entry whose name takes up the rest.
Tasks tasks_of_size(size_t size) {
    Tasks t;
    size_t left = size - 16;
    while (left > 0) {
        const size_t name = std::min<size_t>(left - 20, kMaxText);
        t.entries.push_back({std::string(name, 'n'), 1, 1});
        left -= 20 + name;
        if (left > 0 && left < 20) {  // give the last entry's name the bytes that cannot form an entry
            t.entries.back().name.resize(t.entries.back().name.size() - (20 - left));
            left = 20;
        }
    }
    return t;
}

}  // namespace

TEST(Wire, HostMessagesRoundTrip) {
    host_round_trip(Hello{}, 0);
    host_round_trip(Hello{kU32Max, 6, kU32Max, kU32Max}, kU32Max);
    host_round_trip(Hello{0, 0, 0, 0}, 1);
    host_round_trip(Load{kI64Min, kU32Max, all_bytes(kMaxText)}, 2);
    host_round_trip(Load{0, 0, ""}, 3);
    Config config;
    config.entries = {{"t", true},
                      {"f", false},
                      {"min", kI64Min},
                      {"max", kI64Max},
                      {"zero", int64_t(0)},
                      {"neg_zero", -0.0},
                      {"inf", -std::numeric_limits<double>::infinity()},
                      {"nan", std::numeric_limits<double>::quiet_NaN()},
                      {"tiny", std::numeric_limits<double>::denorm_min()},
                      {"", std::string()},
                      {all_bytes(kMaxText), all_bytes(kMaxConfigString)}};
    host_round_trip(config, 4);
    host_round_trip(Config{}, 5);
    host_round_trip(Init{kI64Min, kI64Max, kU32Max, std::string(kMaxName, 'p')}, 6);
    host_round_trip(Init{}, 7);
    host_round_trip(Call{kU32Max, true, kI64Min, kI64Max}, 8);
    host_round_trip(Call{0, false, -1, 0}, kU32Max);
    host_round_trip(Shutdown{kI64Min}, 9);
    host_round_trip(Shutdown{kI64Max}, 10);
    host_round_trip(AddLane{kU32Max}, 11);
    host_round_trip(SetLogLevel{0}, 12);
    host_round_trip(SetLogLevel{6}, 13);
    host_round_trip(Bye{}, 14);
}

TEST(Wire, WorkerMessagesRoundTrip) {
    worker_round_trip(Ready{}, 0);
    worker_round_trip(Ready{kU32Max, kI32Min}, kU32Max);
    worker_round_trip(Loaded{0xFFFF, 0xFFFF, true, true, true, std::string(kMaxName, 'n'), all_bytes(kMaxText),
                             all_bytes(kMaxText), kU32Max},
                      1);
    worker_round_trip(Loaded{}, 2);
    worker_round_trip(Loaded{1, 0, false, true, false, "x", "", "d", 0}, 3);
    worker_round_trip(LoadFailed{kI32Min, all_bytes(kMaxText), all_bytes(kMaxText)}, 4);
    worker_round_trip(LoadFailed{kI32Max, "", ""}, 5);
    worker_round_trip(Tasks{kU32Max, {{all_bytes(kMaxText), kI64Max, kI64Min}, {"", 0, -1}}}, 6);
    worker_round_trip(Tasks{}, 7);
    worker_round_trip(InitDone{kI32Min, kU32Max, kU32Max, all_bytes(kMaxText), all_bytes(kMaxText)}, 8);
    worker_round_trip(InitDone{}, 9);
    worker_round_trip(Result{kI32Max, true, all_bytes(kMaxText)}, 10);
    worker_round_trip(Result{kI32Min, false, ""}, 11);
    worker_round_trip(Log{0, 0, all_bytes(kMaxText)}, 12);
    worker_round_trip(Log{0, 0, std::string(kMaxReportText, 'l')}, 12);
    worker_round_trip(Result{0, false, std::string(kMaxReportText, 'e')}, 10);
    worker_round_trip(Log{6, kU32Max, ""}, 13);
    worker_round_trip(ShutdownDone{all_bytes(kMaxText)}, 14);
    worker_round_trip(ShutdownDone{}, 15);
    worker_round_trip(Fatal{all_bytes(kMaxText)}, 16);
    worker_round_trip(Fatal{}, 17);
}

// The byte layout itself, so that a change to the format cannot hide behind a matching encoder and decoder.
TEST(Wire, ByteLayoutIsTheDocumentedOne) {
    EXPECT_EQ(encoded(WorkerMessage{Result{-2, true, "ab"}}, 0x01020304),
              (Bytes{69, 1, 0, 0, 4, 3, 2, 1, 0xFE, 0xFF, 0xFF, 0xFF, 1, 2, 0, 0, 0, 'a', 'b'}));
    EXPECT_EQ(encoded(HostMessage{Bye{}}, 0), (Bytes{9, 1, 0, 0, 0, 0, 0, 0}));
    EXPECT_EQ(encoded(HostMessage{Call{7, true, 0x0102030405060708, -1}}, 5),
              (Bytes{5, 1, 0, 0, 5, 0, 0,    0,    7,    0,    0,    0,    1,    8,   7,
                     6, 5, 4, 3, 2, 1, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}));
    Config config;
    config.entries = {{"k", 1.0}, {"s", std::string("v")}, {"b", true}, {"i", int64_t(-2)}};
    EXPECT_EQ(encoded(HostMessage{config}, 0),
              (Bytes{3, 1, 0, 0, 0,   0, 0,    0,    4,    0,    0,    0,                    // header, count
                     1, 0, 0, 0, 'k', 2, 0,    0,    0,    0,    0,    0,    0xF0, 0x3F,     // double 1.0
                     1, 0, 0, 0, 's', 3, 1,    0,    0,    0,    'v',                        // string
                     1, 0, 0, 0, 'b', 0, 1,                                                  // bool
                     1, 0, 0, 0, 'i', 1, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}));  // int
}

TEST(Wire, TypeNamesNameEveryType) {
    EXPECT_STREQ(type_name(Type::hello), "Hello");
    EXPECT_STREQ(type_name(Type::set_log_level), "SetLogLevel");
    EXPECT_STREQ(type_name(Type::bye), "Bye");
    EXPECT_STREQ(type_name(Type::ready), "Ready");
    EXPECT_STREQ(type_name(Type::init_done), "InitDone");
    EXPECT_STREQ(type_name(Type::result), "Result");
    EXPECT_STREQ(type_name(Type::fatal), "Fatal");
    EXPECT_STREQ(type_name(Type(0)), "unknown");
    EXPECT_STREQ(type_name(Type(10)), "unknown");
    EXPECT_STREQ(type_name(Type(63)), "unknown");
    EXPECT_STREQ(type_name(Type(73)), "unknown");
    EXPECT_STREQ(type_name(Type(200)), "unknown");
    for (int t = 1; t <= 9; ++t) EXPECT_STRNE(type_name(Type(t)), "unknown") << t;
    for (int t = 64; t <= 72; ++t) EXPECT_STRNE(type_name(Type(t)), "unknown") << t;
}

TEST(Wire, SplitsHundredThousandTasksIntoDatagramsThatFit) {
    std::vector<TaskEntry> all(100000);
    for (size_t i = 0; i < all.size(); ++i) {
        std::string name = "task-" + std::to_string(i) + "-";
        name.resize(64, char('a' + i % 26));
        all[i] = {name, int64_t(i + 1), -int64_t(i)};
    }
    std::vector<Bytes> out;
    std::string err;
    ASSERT_TRUE(encode_tasks(all, 77, &out, &err, 10)) << err;
    EXPECT_GT(out.size(), 1u);
    std::vector<TaskEntry> back;
    for (const Bytes& d : out) {
        ASSERT_LE(d.size(), kMaxMessage);
        const auto frame = decode_worker(d.data(), d.size(), &err);
        ASSERT_TRUE(frame) << err;
        EXPECT_EQ(frame->seq, 77u);
        const Tasks& t = std::get<Tasks>(frame->msg);
        EXPECT_EQ(t.first_index, 10 + back.size());  // numbered in order, from the base index
        back.insert(back.end(), t.entries.begin(), t.entries.end());
    }
    EXPECT_TRUE(back == all);
    // Full: the messages are packed, not one entry each (64-byte names: 84 bytes an entry).
    EXPECT_EQ(out.size(), (all.size() + (kMaxMessage - 16) / 84 - 1) / ((kMaxMessage - 16) / 84));
}

TEST(Wire, SplitsABigConfigIntoDatagramsThatFit) {
    std::vector<ConfigEntry> all;
    for (int i = 0; i < 40; ++i) {
        all.push_back({"long." + std::to_string(i), all_bytes(kMaxConfigString - i)});
        all.push_back({all_bytes(kMaxText), int64_t(i)});
        all.push_back({"d" + std::to_string(i), i * 0.5});
        all.push_back({"b" + std::to_string(i), i % 2 == 0});
        all.push_back({"mid." + std::to_string(i), all_bytes(1000 * size_t(i))});
    }
    std::vector<Bytes> out;
    std::string err;
    ASSERT_TRUE(encode_config(all, 3, &out, &err)) << err;
    std::vector<ConfigEntry> back;
    for (const Bytes& d : out) {
        ASSERT_LE(d.size(), kMaxMessage);
        const auto frame = decode_host(d.data(), d.size(), &err);
        ASSERT_TRUE(frame) << err;
        EXPECT_EQ(frame->seq, 3u);
        const Config& c = std::get<Config>(frame->msg);
        EXPECT_FALSE(c.entries.empty());
        back.insert(back.end(), c.entries.begin(), c.entries.end());
    }
    EXPECT_TRUE(back == all);
}

TEST(Wire, SplittersGiveNoDatagramForAnEmptyList) {
    std::vector<Bytes> out{{1}};
    std::string err;
    EXPECT_TRUE(encode_config({}, 1, &out, &err));
    EXPECT_TRUE(out.empty());
    out = {{1}};
    EXPECT_TRUE(encode_tasks({}, 1, &out, &err));
    EXPECT_TRUE(out.empty());
}

TEST(Wire, SplittersRefuseAnEntryPastItsLimitsByItsPosition) {
    std::vector<ConfigEntry> config(10, ConfigEntry{"k", int64_t(1)});
    config[5].value = std::string(kMaxConfigString + 1, 'x');
    std::vector<Bytes> out;
    std::string err;
    EXPECT_FALSE(encode_config(config, 1, &out, &err));
    EXPECT_EQ(err, "Config: entry 5: value length 60001 exceeds 60000");
    EXPECT_TRUE(out.empty());
    config[5].value = true;
    config[7].key = std::string(kMaxText + 1, 'k');
    EXPECT_FALSE(encode_config(config, 1, &out, &err));
    EXPECT_EQ(err, "Config: entry 7: key length 4097 exceeds 4096");

    std::vector<TaskEntry> tasks(5000, TaskEntry{std::string(64, 't'), 1, 1});
    tasks[4000].name.assign(kMaxText + 1, 'n');
    EXPECT_FALSE(encode_tasks(tasks, 1, &out, &err));
    EXPECT_EQ(err, "Tasks: entry 4000: name length 4097 exceeds 4096");
    EXPECT_TRUE(out.empty());

    // Task indexes are u32 on the wire: a list that would run past the last one cannot be numbered.
    EXPECT_FALSE(encode_tasks({TaskEntry{"a", 1, 1}, TaskEntry{"b", 1, 1}}, 1, &out, &err, kU32Max));
    EXPECT_EQ(err, "Tasks: 2 entries from index 4294967295 run past task index 4294967295");
    EXPECT_TRUE(encode_tasks({TaskEntry{"a", 1, 1}}, 1, &out, &err, kU32Max)) << err;
}

TEST(Wire, EncoderRefusesStringsPastTheirLimits) {
    const std::string text(kMaxText + 1, 'x'), name(kMaxName + 1, 'n'), report(kMaxReportText + 1, 'r');
    EXPECT_EQ(encode_error(Load{0, 0, text}), "Load: display_path length 4097 exceeds 4096");
    EXPECT_EQ(encode_error(Init{0, 0, 0, name}), "Init: plugin_name length 65 exceeds 64");
    EXPECT_EQ(encode_error(Loaded{1, 0, false, false, false, name, "", "", 0}), "Loaded: name length 65 exceeds 64");
    EXPECT_EQ(encode_error(Loaded{1, 0, false, false, false, "n", text, "", 0}),
              "Loaded: version length 4097 exceeds 4096");
    EXPECT_EQ(encode_error(Loaded{1, 0, false, false, false, "n", "", text, 0}),
              "Loaded: description length 4097 exceeds 4096");
    EXPECT_EQ(encode_error(LoadFailed{1, text, ""}), "LoadFailed: reason length 4097 exceeds 4096");
    EXPECT_EQ(encode_error(LoadFailed{1, "", text}), "LoadFailed: hint length 4097 exceeds 4096");
    EXPECT_EQ(encode_error(Tasks{0, {{"a", 1, 1}, {text, 1, 1}}}), "Tasks: entry 1: name length 4097 exceeds 4096");
    // A plugin's escaped words in a line of the host's: up to kMaxReportText.
    EXPECT_EQ(encode_error(InitDone{0, 0, 0, report, ""}), "InitDone: error length 16897 exceeds 16896");
    EXPECT_EQ(encode_error(InitDone{0, 0, 0, "", report}), "InitDone: thrown length 16897 exceeds 16896");
    EXPECT_EQ(encode_error(Result{0, true, report}), "Result: error length 16897 exceeds 16896");
    EXPECT_EQ(encode_error(Log{2, 0, report}), "Log: text length 16897 exceeds 16896");
    EXPECT_EQ(encode_error(ShutdownDone{report}), "ShutdownDone: thrown length 16897 exceeds 16896");
    EXPECT_EQ(encode_error(Fatal{text}), "Fatal: text length 4097 exceeds 4096");
    Config config;
    config.entries = {{"a", true}, {"b", std::string(kMaxConfigString + 1, 'v')}};
    EXPECT_EQ(encode_error(config), "Config: entry 1: value length 60001 exceeds 60000");
    config.entries = {{text, true}};
    EXPECT_EQ(encode_error(config), "Config: entry 0: key length 4097 exceeds 4096");
}

TEST(Wire, EncoderRefusesLogLevelsOutsideSpdlogs) {
    EXPECT_EQ(encode_error(Log{7, 0, ""}), "Log: level 7 is not a log level (0..6)");
    EXPECT_EQ(encode_error(Log{-1, 0, ""}), "Log: level -1 is not a log level (0..6)");
    EXPECT_EQ(encode_error(SetLogLevel{7}), "SetLogLevel: level 7 is not a log level (0..6)");
    EXPECT_EQ(encode_error(Hello{1, -1, 0, 0}), "Hello: log_level -1 is not a log level (0..6)");
}

TEST(Wire, EncoderRefusesAListTooBigForOneDatagram) {
    Config config;
    config.entries = {{"a", std::string(kMaxConfigString, 'a')}, {"b", std::string(kMaxConfigString, 'b')}};
    EXPECT_EQ(encode_error(config), "Config: 120032 bytes exceed the 65536-byte message limit");
    Tasks tasks;
    tasks.entries.assign(100000, TaskEntry{std::string(64, 't'), 1, 1});
    EXPECT_EQ(encode_error(tasks), "Tasks: 8400016 bytes exceed the 65536-byte message limit");
}

TEST(Wire, MessageOfExactlyMaxSizePassesAndOneByteMoreDoesNot) {
    // Worker side: a Tasks message of exactly kMaxMessage bytes.
    Tasks tasks = tasks_of_size(kMaxMessage);
    Bytes bytes = encoded(WorkerMessage{tasks});
    ASSERT_EQ(bytes.size(), kMaxMessage);
    std::string err;
    const auto frame = decode_worker(bytes.data(), bytes.size(), &err);
    ASSERT_TRUE(frame) << err;
    EXPECT_TRUE(std::get<Tasks>(frame->msg) == tasks);
    // One more byte in the last name: the encoder refuses it, and so does the decoder when a peer sends it.
    tasks.entries.back().name += 'n';
    EXPECT_EQ(encode_error(tasks), "Tasks: 65537 bytes exceed the 65536-byte message limit");
    Raw raw(Type::tasks);
    raw.u32(tasks.first_index).u32(uint32_t(tasks.entries.size()));
    for (const TaskEntry& e : tasks.entries) raw.str(e.name).i64(e.interval_ns).i64(e.timeout_ns);
    ASSERT_EQ(raw.b.size(), kMaxMessage + 1);
    EXPECT_EQ(worker_error(raw.b), "message of 65537 bytes exceeds 65536");
    // Host side: a Config message of exactly kMaxMessage bytes (header + count + entry = 8 + 4 + 10 + value).
    Config config;
    config.entries = {{"a", std::string(kMaxConfigString, 'x')},
                      {"b", std::string(kMaxMessage - 12 - (10 + kMaxConfigString) - 10, 'y')}};
    bytes = encoded(HostMessage{config});
    ASSERT_EQ(bytes.size(), kMaxMessage);
    ASSERT_TRUE(decode_host(bytes.data(), bytes.size(), &err)) << err;
    std::get<std::string>(config.entries[1].value) += 'y';
    EXPECT_EQ(encode_error(config), "Config: 65537 bytes exceed the 65536-byte message limit");
    bytes.push_back(0);
    EXPECT_EQ(host_error(bytes), "message of 65537 bytes exceeds 65536");
}

TEST(Wire, DecoderRefusesStringsPastTheirLimits) {
    // The example of wire.hpp: the fourth entry's name claims 70000 bytes.
    Raw tasks(Type::tasks);
    tasks.u32(0).u32(5);
    for (int i = 0; i < 3; ++i) tasks.str("t").i64(1).i64(1);
    tasks.u32(70000);
    tasks.b.resize(tasks.b.size() + 200, 'x');
    EXPECT_EQ(worker_error(tasks.b), "Tasks: entry 3: name length 70000 exceeds 4096");

    const std::string text(kMaxText + 1, 'x'), name(kMaxName + 1, 'n'), report(kMaxReportText + 1, 'r');
    EXPECT_EQ(worker_error(Raw(Type::result).i32(0).u8(0).str(report).b), "Result: error length 16897 exceeds 16896");
    EXPECT_EQ(worker_error(Raw(Type::fatal).str(text).b), "Fatal: text length 4097 exceeds 4096");
    EXPECT_EQ(worker_error(Raw(Type::shutdown_done).str(report).b), "ShutdownDone: thrown length 16897 exceeds 16896");
    EXPECT_EQ(worker_error(Raw(Type::log).i32(2).u32(0).str(report).b), "Log: text length 16897 exceeds 16896");
    EXPECT_EQ(worker_error(Raw(Type::load_failed).i32(1).str(text).str("").b),
              "LoadFailed: reason length 4097 exceeds 4096");
    EXPECT_EQ(worker_error(Raw(Type::load_failed).i32(1).str("").str(text).b),
              "LoadFailed: hint length 4097 exceeds 4096");
    EXPECT_EQ(worker_error(Raw(Type::init_done).i32(0).u32(0).u32(0).str(report).str("").b),
              "InitDone: error length 16897 exceeds 16896");
    EXPECT_EQ(worker_error(Raw(Type::init_done).i32(0).u32(0).u32(0).str("").str(report).b),
              "InitDone: thrown length 16897 exceeds 16896");
    const auto loaded = [](const std::string& n, const std::string& v, const std::string& d) {
        return Raw(Type::loaded).u16(1).u16(0).u8(0).u8(0).u8(0).str(n).str(v).str(d).u32(0).b;
    };
    EXPECT_EQ(worker_error(loaded(name, "", "")), "Loaded: name length 65 exceeds 64");
    EXPECT_EQ(worker_error(loaded("n", text, "")), "Loaded: version length 4097 exceeds 4096");
    EXPECT_EQ(worker_error(loaded("n", "", text)), "Loaded: description length 4097 exceeds 4096");
    // At the limit they pass.
    const Bytes at_limit = loaded(std::string(kMaxName, 'n'), all_bytes(kMaxText), all_bytes(kMaxText));
    EXPECT_TRUE(decode_worker(at_limit.data(), at_limit.size(), nullptr));

    EXPECT_EQ(host_error(Raw(Type::load).i64(0).u32(0).str(text).b), "Load: display_path length 4097 exceeds 4096");
    EXPECT_EQ(host_error(Raw(Type::init).i64(0).i64(0).u32(0).str(name).b), "Init: plugin_name length 65 exceeds 64");
    EXPECT_EQ(host_error(Raw(Type::config).u32(1).str(text).u8(0).u8(0).b),
              "Config: entry 0: key length 4097 exceeds 4096");
    EXPECT_EQ(host_error(Raw(Type::config).u32(2).str("a").u8(0).u8(1).str("b").u8(3).str(std::string(60001, 'v')).b),
              "Config: entry 1: value length 60001 exceeds 60000");
    // A length no larger than its limit but larger than what is left is a truncation.
    EXPECT_EQ(worker_error(Raw(Type::fatal).u32(100).str("abc").b), "truncated Fatal: 7 bytes left, text needs 100");
}

TEST(Wire, DecoderRefusesCountsLargerThanTheRemainingBytes) {
    EXPECT_EQ(worker_error(Raw(Type::tasks).u32(0).u32(kU32Max).b),
              "Tasks: count 4294967295 needs at least 85899345900 bytes, 0 left");
    // Three entries of 20 bytes do not fit in 59.
    Raw tasks(Type::tasks);
    tasks.u32(0).u32(3);
    tasks.b.resize(tasks.b.size() + 59);
    EXPECT_EQ(worker_error(tasks.b), "Tasks: count 3 needs at least 60 bytes, 59 left");
    EXPECT_EQ(host_error(Raw(Type::config).u32(1000000).str("k").u8(0).u8(1).b),
              "Config: count 1000000 needs at least 6000000 bytes, 7 left");
    // A count that fits the bytes but whose entries are larger is caught by the entries' own checks.
    Raw config(Type::config);
    config.u32(2).str("k").u8(3).str(std::string(20, 'v'));
    EXPECT_EQ(host_error(config.b), "truncated Config: 0 bytes left, entry 1: key needs 4");
}

TEST(Wire, DecoderRefusesTrailingBytes) {
    Bytes bytes = encoded(WorkerMessage{Result{0, false, "ok"}});
    bytes.push_back(0);
    EXPECT_EQ(worker_error(bytes), "Result: 1 trailing byte after the payload");
    bytes = encoded(WorkerMessage{Tasks{0, {{"a", 1, 1}}}});
    bytes.insert(bytes.end(), {1, 2, 3});
    EXPECT_EQ(worker_error(bytes), "Tasks: 3 trailing bytes after the payload");
    bytes = encoded(HostMessage{Bye{}});
    bytes.push_back(9);
    EXPECT_EQ(host_error(bytes), "Bye: 1 trailing byte after the payload");
}

TEST(Wire, DecoderRefusesBadHeaders) {
    EXPECT_EQ(worker_error(Raw(200, 1, 0, 0).b), "unknown message type 200");
    EXPECT_EQ(worker_error(Raw(0, 1, 0, 0).b), "unknown message type 0");
    EXPECT_EQ(worker_error(Raw(73, 1, 0, 0).b), "unknown message type 73");
    EXPECT_EQ(host_error(Raw(10, 1, 0, 0).b), "unknown message type 10");
    EXPECT_EQ(host_error(Raw(63, 1, 0, 0).b), "unknown message type 63");
    // Each side refuses the other side's messages.
    EXPECT_EQ(worker_error(encoded(HostMessage{Bye{}})), "Bye (type 9) is a host message, not one a worker sends");
    EXPECT_EQ(host_error(encoded(WorkerMessage{Fatal{"x"}})),
              "Fatal (type 72) is a worker message, not one the host sends");
    // Version and reserved field.
    Bytes bytes = encoded(WorkerMessage{Result{}});
    bytes[1] = 2;
    EXPECT_EQ(worker_error(bytes), "protocol version 2, expected 1 (message type 69)");
    bytes[1] = 0;
    EXPECT_EQ(worker_error(bytes), "protocol version 0, expected 1 (message type 69)");
    bytes[1] = 1;
    bytes[3] = 1;
    EXPECT_EQ(worker_error(bytes), "Result: reserved header field is 256, must be 0");
    bytes[3] = 0;
    bytes[2] = 0x80;
    EXPECT_EQ(worker_error(bytes), "Result: reserved header field is 128, must be 0");
    bytes = encoded(HostMessage{Shutdown{}});
    bytes[2] = 1;
    EXPECT_EQ(host_error(bytes), "Shutdown: reserved header field is 1, must be 0");
    // Shorter than a header, down to nothing (and a null pointer with it).
    EXPECT_EQ(worker_error(Bytes{69, 1, 0, 0, 0}), "truncated header: 5 of 8 bytes");
    std::string err;
    EXPECT_FALSE(decode_worker(nullptr, 0, &err));
    EXPECT_EQ(err, "truncated header: 0 of 8 bytes");
    EXPECT_FALSE(decode_host(nullptr, 0, &err));
    EXPECT_FALSE(decode_worker(nullptr, 0, nullptr));  // err is optional
}

TEST(Wire, DecoderRefusesBoolsOtherThanZeroOrOne) {
    EXPECT_EQ(worker_error(Raw(Type::result).i32(0).u8(2).str("").b), "Result: threw is 2, not 0 or 1");
    EXPECT_EQ(worker_error(Raw(Type::result).i32(0).u8(255).str("").b), "Result: threw is 255, not 0 or 1");
    const auto loaded = [](uint8_t a, uint8_t b, uint8_t c) {
        return Raw(Type::loaded).u16(1).u16(0).u8(a).u8(b).u8(c).str("n").str("").str("").u32(0).b;
    };
    EXPECT_EQ(worker_error(loaded(2, 0, 0)), "Loaded: has_init is 2, not 0 or 1");
    EXPECT_EQ(worker_error(loaded(1, 2, 0)), "Loaded: has_shutdown is 2, not 0 or 1");
    EXPECT_EQ(worker_error(loaded(1, 1, 2)), "Loaded: go_runtime is 2, not 0 or 1");
    EXPECT_EQ(host_error(Raw(Type::call).u32(0).u8(2).i64(0).i64(0).b), "Call: is_stop is 2, not 0 or 1");
    EXPECT_EQ(host_error(Raw(Type::config).u32(2).str("a").u8(0).u8(1).str("b").u8(0).u8(2).b),
              "Config: entry 1: value is 2, not 0 or 1");
}

TEST(Wire, DecoderRefusesLogLevelsOutsideSpdlogs) {
    // spdlog indexes its level names by level: an out-of-range level must not reach it.
    EXPECT_EQ(worker_error(Raw(Type::log).i32(7).u32(0).str("x").b), "Log: level 7 is not a log level (0..6)");
    EXPECT_EQ(worker_error(Raw(Type::log).i32(-1).u32(0).str("x").b), "Log: level -1 is not a log level (0..6)");
    EXPECT_EQ(worker_error(Raw(Type::log).i32(kI32Min).u32(0).str("x").b),
              "Log: level -2147483648 is not a log level (0..6)");
    EXPECT_EQ(host_error(Raw(Type::set_log_level).i32(9).b), "SetLogLevel: level 9 is not a log level (0..6)");
    EXPECT_EQ(host_error(Raw(Type::hello).u32(1).i32(-3).u32(0).u32(0).b),
              "Hello: log_level -3 is not a log level (0..6)");
}

TEST(Wire, DecoderRefusesUnknownConfigKinds) {
    EXPECT_EQ(host_error(Raw(Type::config).u32(1).str("k").u8(4).i64(0).b), "Config: entry 0: unknown value kind 4");
    EXPECT_EQ(host_error(Raw(Type::config).u32(1).str("k").u8(255).b), "Config: entry 0: unknown value kind 255");
}

TEST(Wire, TruncationsNameTheFieldThatIsCut) {
    // The example of wire.hpp: status and threw are there, the error's length is not.
    Bytes bytes = encoded(WorkerMessage{Result{1, true, "some error"}});
    bytes.resize(8 + 4 + 1 + 3);
    EXPECT_EQ(worker_error(bytes), "truncated Result: 3 bytes left, error needs 4");
    bytes = encoded(WorkerMessage{Result{1, true, "some error"}});
    bytes.resize(bytes.size() - 1);
    EXPECT_EQ(worker_error(bytes), "truncated Result: 9 bytes left, error needs 10");
    bytes = encoded(WorkerMessage{Tasks{0, {{"a", 1, 1}, {"b", 1, 1}}}});
    bytes.resize(bytes.size() - 9);
    EXPECT_EQ(worker_error(bytes), "Tasks: count 2 needs at least 40 bytes, 33 left");
    bytes = encoded(WorkerMessage{Ready{}});
    bytes.resize(9);
    EXPECT_EQ(worker_error(bytes), "truncated Ready: 1 byte left, protocol_version needs 4");
}

// Every prefix of a valid message is refused, with an error and without reading past it (ASan builds check
// the last part: each prefix is copied into a buffer of exactly its size).
TEST(Wire, EveryPrefixOfAValidMessageIsRefused) {
    size_t checked = 0;
    for (const WorkerMessage& m : sample_worker_messages()) {
        const Bytes whole = encoded(m, 12345);
        for (size_t n = 0; n < whole.size(); ++n) {
            const Bytes prefix(whole.begin(), whole.begin() + n);
            std::string err;
            ASSERT_FALSE(decode_worker(prefix.data(), prefix.size(), &err)) << type_name(Type(whole[0])) << " " << n;
            ASSERT_FALSE(err.empty());
            ++checked;
        }
        ASSERT_TRUE(decode_worker(whole.data(), whole.size(), nullptr));
    }
    for (const HostMessage& m : sample_host_messages()) {
        const Bytes whole = encoded(m, 12345);
        for (size_t n = 0; n < whole.size(); ++n) {
            const Bytes prefix(whole.begin(), whole.begin() + n);
            std::string err;
            ASSERT_FALSE(decode_host(prefix.data(), prefix.size(), &err)) << type_name(Type(whole[0])) << " " << n;
            ASSERT_FALSE(err.empty());
            ++checked;
        }
        ASSERT_TRUE(decode_host(whole.data(), whole.size(), nullptr));
    }
    EXPECT_GT(checked, 10000u);
}

// Random byte flips of valid messages: each decodes to an error or to a message that re-encodes to exactly the
// same bytes (the encoding is canonical). The fuzzer (fuzz/fuzz_wire.cpp) does this at length.
TEST(Wire, MutatedMessagesAreRefusedOrReencodeIdentically) {
    std::mt19937 rng(20240601);
    std::vector<Bytes> seeds;
    for (const WorkerMessage& m : sample_worker_messages()) seeds.push_back(encoded(m, 9));
    for (const HostMessage& m : sample_host_messages()) seeds.push_back(encoded(m, 9));
    size_t accepted = 0, refused = 0;
    for (int round = 0; round < 20000; ++round) {
        Bytes b = seeds[rng() % seeds.size()];
        const int flips = 1 + int(rng() % 3);
        for (int i = 0; i < flips; ++i) {
            const size_t at = rng() % b.size();
            b[at] = (rng() % 4 == 0) ? uint8_t(rng()) : uint8_t(b[at] ^ (1u << (rng() % 8)));
        }
        std::string err;
        Bytes again;
        if (auto w = decode_worker(b.data(), b.size(), &err)) {
            ASSERT_TRUE(encode(w->msg, w->seq, &again, &err)) << err;
            ASSERT_EQ(again, b);
            ++accepted;
        } else if (auto h = decode_host(b.data(), b.size(), &err)) {
            ASSERT_TRUE(encode(h->msg, h->seq, &again, &err)) << err;
            ASSERT_EQ(again, b);
            ++accepted;
        } else {
            ASSERT_FALSE(err.empty());
            ++refused;
        }
    }
    EXPECT_GT(accepted, 0u);
    EXPECT_GT(refused, 0u);
}
