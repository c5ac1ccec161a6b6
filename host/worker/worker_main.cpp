// tickhost-worker: runs one isolated plugin version for a tickhost host that started it.
//
// Started by the host only (never by hand), with these descriptors and nothing else open:
//   3  the control channel (SOCK_SEQPACKET): Hello, Load, Config, Init, Shutdown, AddLane, Bye
//   4  shared memory (memfd, mapped read-only here): a 64-byte cell per lane whose first word is the
//      cancel word: the call with sequence number n on lane i is cancelled once cell i holds n
//   5  the plugin file's checked shadow copy, opened read-only by the host
// Each lane (a SOCK_SEQPACKET socket sent with AddLane) has a thread of its own that executes the
// host's Call messages one at a time and answers with Result; log lines of a call travel on its lane,
// others on the control channel. The plugin is the same file, loaded with the same checks and served by
// the same host services as in the host's own process (host/src/inprocess_instance.cpp). The worker
// exits when the control channel closes (the host is gone or said Bye).
#include <tickhost/logging.hpp>

#include "host_api.hpp"
#include "inprocess_instance.hpp"
#include "isolation/channel.hpp"
#include "isolation/wire.hpp"
#include "loader.hpp"

#include <spdlog/sinks/base_sink.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#if defined(__SANITIZE_THREAD__)
// Under TSan a process with threads sleeps atexit_sleep_ms (1 s) in _exit: every plugin unload, which waits
// for its process to end, would take a second. A worker has nothing to catch in that second (its exits are
// the host's Bye or the host's end). TSAN_OPTIONS still override this.
extern "C" const char* __tsan_default_options() { return "atexit_sleep_ms=0"; }
#endif

namespace wire = tickhost::detail::wire;
namespace channel = tickhost::detail::channel;
using tickhost::detail::LoadFailure;

namespace {

constexpr int kControl = 3, kShared = 4, kPlugin = 5;

thread_local int t_lane = -1;  // the lane socket of the call this thread is executing

[[noreturn]] void die(const std::string& text) {
    std::vector<uint8_t> msg;
    std::string err;
    if (wire::encode(wire::WorkerMessage{wire::Fatal{text.substr(0, wire::kMaxText)}}, 0, &msg, &err))
        channel::send(kControl, msg, -1, nullptr);
    std::fprintf(stderr, "tickhost-worker: %s\n", text.c_str());
    _exit(2);
}

void send_to(int sock, const wire::WorkerMessage& m, uint32_t seq = 0) {
    std::vector<uint8_t> msg;
    std::string err;
    if (!wire::encode(m, seq, &msg, &err)) die("cannot encode a message: " + err);
    if (!channel::send(sock, msg, -1, &err)) _exit(0);  // the host is gone: nothing left to do
}

// Every log line of the worker goes to the host: a plugin's on the lane of its call when it logs from
// one (so that it comes before the call's result), else on the control channel. A plugin's record is
// escaped and capped already (host_api.cpp), as in the host: it fits in kMaxReportText whole.
class ForwardSink : public spdlog::sinks::base_sink<spdlog::details::null_mutex> {
protected:
    void sink_it_(const spdlog::details::log_msg& m) override {
        std::string text(m.payload.data(), std::min(m.payload.size(), wire::kMaxReportText));
        if (m.logger_name.size() < 7 || std::string_view(m.logger_name.data(), 7) != "plugin.")
            text = "(worker) " + text.substr(0, wire::kMaxReportText - 9);
        send_to(t_lane >= 0 ? t_lane : kControl, wire::WorkerMessage{wire::Log{int32_t(m.level), 0xFFFFFFFF, text}});
    }
    void flush_() override {}
};

struct Worker {
    const volatile uint8_t* shared = nullptr;
    uint32_t max_lanes = 0;
    uint32_t max_tasks = 0;
    std::shared_ptr<tickhost::detail::Library> lib;
    std::shared_ptr<tickhost::detail::InProcessInstance> inst;
    tickhost::PluginValues config;
    // One context per task (a task's calls never overlap), made at init.
    struct TaskCtx {
        tickhost::detail::CtxOwner owner;
        std::unique_ptr<tickhost::detail::ContextSlot> slot;
        th_run_fn run = nullptr;
        void* state = nullptr;
    };
    std::vector<std::unique_ptr<TaskCtx>> tasks;
    std::atomic<bool> initialised{false};
    std::mutex mu;  // init/shutdown (control thread) against the lanes' reading of `tasks`
    // Calls executing on the lanes. The host asks for shutdown (or init again) only after the last call's
    // result reached it, but that order runs through the host's process: the control thread waits here
    // until it sees the calls done, so that their end happens-before what it does next in this process
    // too (a plugin's shutdown frees what its runs used).
    std::atomic<uint32_t> calls_in_flight{0};
    void quiesce() const {
        while (calls_in_flight.load(std::memory_order_acquire) != 0)
            std::this_thread::sleep_for(std::chrono::microseconds(100));
    }

    const std::atomic<uint64_t>* cancel_word(uint32_t lane) const {
        return reinterpret_cast<const std::atomic<uint64_t>*>(const_cast<const uint8_t*>(shared) + size_t(lane) * 64);
    }
};

void send_tasks(const std::vector<wire::TaskEntry>& all, uint32_t first) {
    if (all.empty()) return;
    std::vector<std::vector<uint8_t>> msgs;
    std::string err;
    if (!wire::encode_tasks(all, 0, &msgs, &err, first)) die("cannot encode the task list: " + err);
    for (auto& m : msgs)
        if (!channel::send(kControl, m, -1, &err)) _exit(0);
}

std::vector<wire::TaskEntry> entries(const std::vector<th_task_def>& ts, size_t from) {
    std::vector<wire::TaskEntry> out;
    for (size_t i = from; i < ts.size(); ++i)
        out.push_back({ts[i].name ? ts[i].name : "", ts[i].default_interval_ns, ts[i].default_timeout_ns});
    return out;
}

void serve_lane(Worker* w, int sock, uint32_t lane) {
    t_lane = sock;
    std::vector<uint8_t> buf;
    for (;;) {
        std::string err;
        const auto r = channel::receive(sock, &buf, nullptr, false, &err);
        if (r != channel::Recv::message) _exit(r == channel::Recv::closed ? 0 : 2);
        auto f = wire::decode_host(buf.data(), buf.size(), &err);
        if (!f) die("lane " + std::to_string(lane) + ": " + err);
        const auto* call = std::get_if<wire::Call>(&f->msg);
        if (!call) die("lane " + std::to_string(lane) + ": only Call messages are expected on a lane");
        Worker::TaskCtx* t = nullptr;
        {
            std::lock_guard<std::mutex> lk(w->mu);
            if (w->initialised && call->task_index < w->tasks.size()) t = w->tasks[call->task_index].get();
        }
        wire::Result res;
        if (!t) {
            res.status = TH_E_NOT_FOUND;
            res.error = "no task " + std::to_string(call->task_index) + " in this process";
        } else {
            using std::chrono::steady_clock;
            const auto at = [](int64_t ns) { return steady_clock::time_point(std::chrono::nanoseconds(ns)); };
            w->calls_in_flight.fetch_add(1, std::memory_order_relaxed);
            th_ctx c = t->slot->open(w->cancel_word(lane), f->seq, at(call->deadline_ns), at(call->due_ns));
            tickhost::TaskResult tr = tickhost::detail::call_plugin_run(*t->slot, t->run, t->state, c, call->is_stop);
            w->calls_in_flight.fetch_sub(1, std::memory_order_release);
            res.status = tr.ok ? TH_OK : TH_ERROR;
            res.error = tr.error.substr(0, wire::kMaxReportText);
        }
        send_to(sock, wire::WorkerMessage{res}, f->seq);
    }
}

}  // namespace

int main(int argc, char** argv) {
    (void)argc;
    (void)argv;
    // The host started us and will reap us; nothing here may outlive it (it set PR_SET_PDEATHSIG too).
    Worker w;
    auto sink = std::make_shared<ForwardSink>();
    tickhost::set_log_sinks({sink}, spdlog::level::info);

    std::vector<uint8_t> buf;
    std::string err;
    auto next = [&](int* fd) -> wire::Frame<wire::HostMessage> {
        const auto r = channel::receive(kControl, &buf, fd, false, &err);
        if (r == channel::Recv::closed) _exit(0);
        if (r != channel::Recv::message) die("control channel: " + err);
        auto f = wire::decode_host(buf.data(), buf.size(), &err);
        if (!f) die("control channel: " + err);
        return std::move(*f);
    };

    // Hello: the protocol, the log level, the shared memory's size.
    auto hello_frame = next(nullptr);
    const auto* hello = std::get_if<wire::Hello>(&hello_frame.msg);
    if (!hello) die("the first message must be Hello");
    if (hello->protocol_version != wire::kProtocolVersion)
        die("protocol version " + std::to_string(hello->protocol_version) + " is not " +
            std::to_string(wire::kProtocolVersion) + " (the host and tickhost-worker come from different builds)");
    w.max_lanes = hello->max_lanes;
    w.max_tasks = hello->max_tasks;
    tickhost::set_log_sinks({sink}, spdlog::level::level_enum(std::clamp(hello->log_level, 0, 6)));
    void* mem = ::mmap(nullptr, size_t(w.max_lanes) * 64, PROT_READ, MAP_SHARED, kShared, 0);
    if (mem == MAP_FAILED) die(std::string("cannot map the shared memory: ") + std::strerror(errno));
    w.shared = static_cast<const uint8_t*>(mem);
    send_to(kControl, wire::WorkerMessage{wire::Ready{wire::kProtocolVersion, int32_t(::getpid())}});

    for (;;) {
        int fd = -1;
        auto f = next(&fd);
        if (auto* m = std::get_if<wire::Load>(&f.msg)) {
            if (w.lib) die("a second Load");
            tickhost::detail::StagedFile staged;
            staged.source = m->display_path;
            staged.copy = "/proc/self/fd/" + std::to_string(kPlugin);
            LoadFailure lf;
            auto lib = tickhost::detail::Library::load(staged, tickhost::get_logger("plugins"),
                                                       std::chrono::nanoseconds(m->entry_bound_ns), &lf, m->max_tasks);
            if (!lib) {
                send_to(kControl, wire::WorkerMessage{wire::LoadFailed{int32_t(lf.code), lf.reason.substr(0, wire::kMaxText),
                                                                        lf.hint.substr(0, wire::kMaxText)}});
                continue;
            }
            w.lib = lib;
            w.inst = std::make_shared<tickhost::detail::InProcessInstance>(lib, tickhost::get_logger("plugins"));
            w.inst->call_inline();  // the host bounds init and shutdown by killing this process
            const th_plugin_def& d = lib->def();
            auto text = [](const char* s) { return s ? std::string(s).substr(0, wire::kMaxText) : std::string(); };
            send_to(kControl, wire::WorkerMessage{wire::Loaded{d.abi_major, d.abi_minor, d.init != nullptr,
                                                               d.shutdown != nullptr, lib->has_go_runtime(), text(d.name),
                                                               text(d.version), text(d.description), d.task_count}});
            std::vector<th_task_def> statics(d.tasks, d.tasks + d.task_count);
            send_tasks(entries(statics, 0), 0);
        } else if (auto* m = std::get_if<wire::Config>(&f.msg)) {
            for (auto& e : m->entries)
                std::visit([&](auto& v) { w.config.set(e.key, v); }, e.value);
        } else if (auto* m = std::get_if<wire::Init>(&f.msg)) {
            if (!w.inst) die("Init before a successful Load");
            w.quiesce();  // a restart in place: the previous calls are over
            tickhost::detail::TaskList list;
            auto e = w.inst->init(w.config, std::chrono::nanoseconds(m->bound_ns), m->max_tasks, &list);
            w.config = {};
            wire::InitDone done;
            if (e) {
                done.status = e->code;
                done.error = e->reason.substr(0, wire::kMaxReportText);
                done.thrown = e->hint.substr(0, wire::kMaxReportText);
                send_to(kControl, wire::WorkerMessage{done});
                continue;
            }
            {
                std::lock_guard<std::mutex> lk(w.mu);
                w.tasks.clear();
                const auto& defs = w.inst->task_defs();
                for (auto& t : defs) {
                    auto tc = std::make_unique<Worker::TaskCtx>();
                    tc->owner.plugin = m->plugin_name;
                    tc->owner.task = t.name;
                    tc->owner.logger = w.inst->owner().logger;
                    tc->owner.config = &w.inst->config();
                    tc->slot = std::make_unique<tickhost::detail::ContextSlot>(&tc->owner);
                    tc->run = t.run;
                    tc->state = t.state ? t.state : w.inst->state();
                    w.tasks.push_back(std::move(tc));
                }
                w.initialised = true;
            }
            done.status = TH_OK;
            done.task_count = uint32_t(list.tasks.size());
            send_to(kControl, wire::WorkerMessage{done});
            send_tasks(entries(list.tasks, w.lib->def().task_count), w.lib->def().task_count);
        } else if (auto* m = std::get_if<wire::AddLane>(&f.msg)) {
            if (fd < 0) die("AddLane without a socket");
            if (m->lane_index >= w.max_lanes) die("lane index past the shared memory");
            try {
                std::thread(serve_lane, &w, fd, m->lane_index).detach();
            } catch (const std::system_error& e) {
                die("cannot start a thread for lane " + std::to_string(m->lane_index) + ": " + e.what() +
                    " (memory_max or processes_max reached?)");
            }
        } else if (auto* m = std::get_if<wire::Shutdown>(&f.msg)) {
            w.quiesce();
            {
                std::lock_guard<std::mutex> lk(w.mu);
                w.initialised = false;
            }
            // The host keeps the bound and kills us when it runs out; ours is a backstop past it.
            bool returned = w.inst ? w.inst->shutdown(std::chrono::nanoseconds(m->bound_ns)) : true;
            if (!returned) _exit(3);
            send_to(kControl, wire::WorkerMessage{wire::ShutdownDone{}});
        } else if (auto* m = std::get_if<wire::SetLogLevel>(&f.msg)) {
            tickhost::set_log_sinks({sink}, spdlog::level::level_enum(std::clamp(m->level, 0, 6)));
        } else if (std::get_if<wire::Bye>(&f.msg)) {
            _exit(0);  // no static destructors: a plugin's may hang, and nothing is left to save
        } else {
            die(std::string("unexpected message ") + wire::type_name(wire::Type(buf.size() ? buf[0] : 0)));
        }
        if (fd >= 0 && !std::get_if<wire::AddLane>(&f.msg)) ::close(fd);
    }
}
