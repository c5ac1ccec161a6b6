// Helpers shared by the tests: polling with a generous bound (never a tight wall-clock assertion),
// temporary directories, file reading, process facts.
#pragma once

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

namespace tickhost::test {

// Polls `pred` until it holds or `bound` passes. Generous bounds only: this is for "eventually", not timing.
inline bool eventually(const std::function<bool()>& pred,
                       std::chrono::milliseconds bound = std::chrono::milliseconds(10000)) {
    auto until = std::chrono::steady_clock::now() + bound;
    while (!pred()) {
        if (std::chrono::steady_clock::now() >= until) return pred();
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return true;
}

// The plugin suites run twice (tests/CMakeLists.txt): as they are, and as "isolated.<Suite>.<Test>" with
// TICKHOST_TEST_ISOLATION=process, where every plugin runs in a tickhost-worker process of its own
// ([host] isolation = "process") under the same assertions. What cannot hold in a child process by nature
// (a library mapped in the host, the host's own threads) asserts the isolated equivalent or is skipped.
inline bool isolated() {
    const char* mode = std::getenv("TICKHOST_TEST_ISOLATION");
    return mode && std::strcmp(mode, "process") == 0;
}

// The line of [host] that sets the mode, for the host.toml files the tests write (empty in-process).
inline std::string isolation_toml() { return isolated() ? "isolation = \"process\"\n" : ""; }

#ifdef TICKHOST_WORKER_EXE
// The host finds the tickhost-worker of this build through $TICKHOST_WORKER (the test binaries are not
// beside it), from the start of the test program.
inline const bool kWorkerFromThisBuild = ::setenv("TICKHOST_WORKER", TICKHOST_WORKER_EXE, 1) == 0;
#endif

inline std::string proc_status_field(pid_t pid, const std::string& key) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(key + ":", 0) == 0) {
            const size_t v = line.find_first_not_of(" \t", key.size() + 1);
            return v == std::string::npos ? "" : line.substr(v);
        }
    return "";
}

// The processes whose parent is this one: "<pid> <name> <state>" each (state: R, S, Z...).
inline std::vector<std::string> child_processes() {
    std::vector<std::string> out;
    std::error_code ec;
    const std::string self = std::to_string(::getpid());
    for (auto it = std::filesystem::directory_iterator("/proc", ec); !ec && it != std::filesystem::directory_iterator();
         it.increment(ec)) {
        const std::string pid = it->path().filename().string();
        if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
        if (proc_status_field(std::stoi(pid), "PPid") != self) continue;
        out.push_back(pid + " " + proc_status_field(std::stoi(pid), "Name") + " " +
                      proc_status_field(std::stoi(pid), "State").substr(0, 1));
    }
    return out;
}

// The pids of this process's tickhost-worker children (their Name is cut to 15 characters).
inline std::vector<pid_t> worker_pids() {
    std::vector<pid_t> out;
    for (auto& c : child_processes()) {
        std::istringstream in(c);
        pid_t pid;
        std::string name;
        in >> pid >> name;
        if (name == "tickhost-worker") out.push_back(pid);
    }
    return out;
}

// The distinct files whose path contains `part` mapped into process `pid` (0: this one).
inline std::set<std::string> mapped_files(pid_t pid, const std::string& part) {
    std::ifstream maps(pid ? "/proc/" + std::to_string(pid) + "/maps" : std::string("/proc/self/maps"));
    std::set<std::string> files;
    std::string line;
    while (std::getline(maps, line))
        if (auto pos = line.find(part); pos != std::string::npos) files.insert(line.substr(pos));
    return files;
}

// True if `p` is mapped into one of this process's tickhost-worker children (where an isolated plugin's
// image lives).
inline bool mapped_in_a_worker(const std::filesystem::path& p) {
    for (pid_t pid : worker_pids())
        if (!mapped_files(pid, p.string()).empty()) return true;
    return false;
}

// The plugin images loaded from shadow copies under `dir`: the distinct files there mapped into this process
// and into its tickhost-worker children (in-process every image is here; isolated, each is in its own).
inline size_t images_mapped(const std::filesystem::path& dir) {
    std::set<std::string> all = mapped_files(0, dir.string());
    for (pid_t pid : worker_pids())
        for (auto& f : mapped_files(pid, dir.string())) all.insert(f);
    return all.size();
}

inline int open_fd_count() {
    int n = 0;
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
        ++n;
    return n;
}

inline int thread_count() {
    std::ifstream in("/proc/self/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("Threads:", 0) == 0) return std::atoi(line.c_str() + 8);
    return -1;
}

inline std::string read_file(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline void write_file(const std::filesystem::path& p, const std::string& text) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << text;
}

// A fresh directory under the system temp folder, removed with everything in it when destroyed.
class TempDir {
public:
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "tickhost-test-XXXXXX").string();
        if (!mkdtemp(tmpl.data())) std::abort();
        path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
    std::filesystem::path path_;
};

}  // namespace tickhost::test
