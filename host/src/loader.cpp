#include "loader.hpp"

#include "host_api.hpp"
#include "sha256.hpp"

#include <tickhost/tickers.hpp>

#include <spdlog/spdlog.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <set>
#include <vector>

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace tickhost::detail {

static_assert(max_duration.count() == TH_MAX_DURATION_NS, "plugin.h and the scheduler state one maximum");

namespace {

std::string errno_text(int e) { return std::strerror(e); }

// "uid 65534 (nobody)", or "uid 1234" for a uid without a name.
std::string user_name(uid_t uid) {
    std::string s = "uid " + std::to_string(uid);
    struct passwd pw {};
    struct passwd* found = nullptr;
    char buf[1024];
    if (getpwuid_r(uid, &pw, buf, sizeof buf, &found) == 0 && found) s += std::string(" (") + found->pw_name + ")";
    return s;
}

bool fail(LoadFailure* err, th_status code, std::string reason, std::string hint) {
    if (err) *err = LoadFailure{code, std::move(reason), std::move(hint)};
    return false;
}

// Reads a whole regular file without following it into a FIFO or device: O_NONBLOCK keeps a FIFO from
// blocking the loader, fstat on the open descriptor decides (no check-then-open race).
}  // namespace

namespace {

// Refuses what someone other than the host's user (or root) could have written: a file or folder that
// group/others may write, or that another user owns. The message says which file, its mode or owner, and
// the command that fixes it.
bool check_trusted(const fs::path& p, const struct stat& st, const char* what, const FilePolicy& policy,
                   LoadFailure* err) {
    if (policy.allow_insecure) return true;
    const std::string escape = " (or set [host] allow_insecure = true in host.toml)";
    const uid_t me = geteuid();
    if (st.st_uid != me && st.st_uid != 0)
        return fail(err, TH_E_INSECURE_FILE,
                    std::string(what) + " " + p.string() + " is owned by " + user_name(st.st_uid) +
                        ", neither the host's user (" + user_name(me) + ") nor root",
                    "run: chown " + std::to_string(me) + " " + p.string() + escape);
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", unsigned(st.st_mode & 07777));
        const char* who = (st.st_mode & S_IWGRP) && (st.st_mode & S_IWOTH) ? "group and others"
                          : (st.st_mode & S_IWGRP)                          ? "its group"
                                                                            : "others";
        return fail(err, TH_E_INSECURE_FILE,
                    std::string(what) + " " + p.string() + " has mode " + mode + ": " + who + " may write it",
                    "run: chmod go-w " + p.string() + escape);
    }
    return true;
}

}  // namespace

bool read_plugin_file(const fs::path& p, std::string* out, LoadFailure* err, const FilePolicy& policy) {
    // O_NOFOLLOW: a symlink fails to open (ELOOP) instead of being followed to wherever it points.
    const int follow = policy.allow_symlinks ? 0 : O_NOFOLLOW;
    int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | follow);
    if (fd < 0) {
        const int e = errno;
        struct stat lst {};
        const bool is_link = ::lstat(p.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode);
        std::error_code ec;
        const std::string target = is_link ? fs::read_symlink(p, ec).string() : "";
        if (is_link && e == ELOOP && !policy.allow_symlinks)
            return fail(err, TH_E_INSECURE_FILE, "it is a symlink (to " + target + "); symlinks are refused",
                        "copy the file itself into plugin_dir, or set [host] allow_symlinks = true in host.toml");
        if (is_link && e == ENOENT)
            return fail(err, TH_E_NOT_A_LIBRARY, "dangling symlink: its target " + target + " does not exist",
                        "fix or remove the link");
        return fail(err, TH_E_NOT_A_LIBRARY, "cannot open: " + errno_text(e),
                    "check that the file exists and the host's user can read it");
    }
    struct stat st {};
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        return fail(err, TH_E_NOT_A_LIBRARY, "not a regular file", "plugin_dir may only hold plugin files");
    }
    if (!check_trusted(p, st, "plugin file", policy, err)) {
        ::close(fd);
        return false;
    }
    out->clear();
    out->reserve(size_t(st.st_size));
    char buf[1 << 16];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            int e = errno;
            ::close(fd);
            return fail(err, TH_E_NOT_A_LIBRARY, "read failed: " + errno_text(e), "check the file system");
        }
        if (n == 0) break;
        out->append(buf, size_t(n));
    }
    ::close(fd);
    if (out->empty())
        return fail(err, TH_E_NOT_A_LIBRARY, "the file is empty",
                    "it may still be being written; it is retried when it changes");
    return true;
}

bool check_plugin_dir(const fs::path& dir, const FilePolicy& policy, LoadFailure* err) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0)
        return fail(err, TH_E_NOT_A_LIBRARY, "cannot stat plugin_dir " + dir.string() + ": " + errno_text(errno),
                    "create it or fix [host] plugin_dir");
    return check_trusted(dir, st, "plugin_dir", policy, err);
}

std::string sha256_hex(const std::string& bytes) { return Sha256::hex_of(bytes); }

namespace {

#if defined(__x86_64__)
constexpr uint16_t kHostMachine = EM_X86_64;
#elif defined(__aarch64__)
constexpr uint16_t kHostMachine = EM_AARCH64;
#elif defined(__i386__)
constexpr uint16_t kHostMachine = EM_386;
#elif defined(__arm__)
constexpr uint16_t kHostMachine = EM_ARM;
#elif defined(__riscv)
constexpr uint16_t kHostMachine = EM_RISCV;
#else
constexpr uint16_t kHostMachine = EM_NONE;  // unknown: leave the check to the loader
#endif

#if UINTPTR_MAX == 0xffffffffffffffffu
using Ehdr = Elf64_Ehdr;
using Phdr = Elf64_Phdr;
constexpr unsigned char kHostClass = ELFCLASS64;
#else
using Ehdr = Elf32_Ehdr;
using Phdr = Elf32_Phdr;
constexpr unsigned char kHostClass = ELFCLASS32;
#endif

// Checks the ELF headers before dlopen sees the file. dlopen maps segments without comparing them with
// the file size, so a truncated copy (still being written) would load and then die with SIGBUS at the
// first touch of a missing page; an ELF for another machine gets a clearer message here too.
bool check_elf(const std::string& b, LoadFailure* err) {
    const std::string retry = "it may still be being written: it is retried when it changes";
    if (b.size() < 4 || std::memcmp(b.data(), ELFMAG, SELFMAG) != 0)
        return fail(err, TH_E_NOT_A_LIBRARY, "not an ELF file (no ELF magic in its first bytes)",
                    "plugin_dir may only hold plugin shared libraries");
    if (b.size() < sizeof(Ehdr))
        return fail(err, TH_E_NOT_A_LIBRARY, "truncated ELF file (" + std::to_string(b.size()) + " bytes)", retry);
    Ehdr h;
    std::memcpy(&h, b.data(), sizeof h);
    if (h.e_ident[EI_CLASS] != kHostClass)
        return fail(err, TH_E_NOT_A_LIBRARY,
                    std::string("ELF class ") + (h.e_ident[EI_CLASS] == ELFCLASS32 ? "32-bit" : "64-bit") +
                        " does not match this host",
                    "build the plugin for this machine's architecture");
    if (kHostMachine != EM_NONE && h.e_machine != kHostMachine)
        return fail(err, TH_E_NOT_A_LIBRARY,
                    "ELF for another machine (e_machine " + std::to_string(h.e_machine) + ", this host is " +
                        std::to_string(kHostMachine) + ")",
                    "build the plugin for this machine's architecture");
    if (h.e_type != ET_DYN)
        return fail(err, TH_E_NOT_A_LIBRARY, "ELF file is not a shared library (e_type " + std::to_string(h.e_type) + ")",
                    "build it as a shared library (tickhost_add_plugin does)");
    const uint64_t size = b.size();
    if (h.e_phentsize != sizeof(Phdr) || uint64_t(h.e_phoff) + uint64_t(h.e_phnum) * sizeof(Phdr) > size)
        return fail(err, TH_E_NOT_A_LIBRARY, "truncated ELF file: its program headers lie past its end", retry);
    uint64_t need = 0;
    for (uint16_t i = 0; i < h.e_phnum; ++i) {
        Phdr ph;
        std::memcpy(&ph, b.data() + h.e_phoff + uint64_t(i) * sizeof(Phdr), sizeof ph);
        if (ph.p_type == PT_LOAD || ph.p_type == PT_DYNAMIC) need = std::max<uint64_t>(need, ph.p_offset + ph.p_filesz);
    }
    if (h.e_shoff) need = std::max<uint64_t>(need, uint64_t(h.e_shoff) + uint64_t(h.e_shnum) * h.e_shentsize);
    if (need > size)
        return fail(err, TH_E_NOT_A_LIBRARY,
                    "truncated ELF file (" + std::to_string(size) + " bytes; its headers need " + std::to_string(need) + ")",
                    retry);
    return true;
}

fs::path default_cache_base() {
    if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg && *xdg && fs::is_directory(xdg))
        return fs::path(xdg) / "tickhost";
    return fs::temp_directory_path() / ("tickhost-" + std::to_string(getuid()));
}

// Creates `dir` with mode 0700 if missing, then refuses it unless it is a real directory owned by us
// and not accessible to anyone else.
void make_private_dir(const fs::path& dir) {
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
        throw std::runtime_error("cannot create the shadow cache " + dir.string() + ": " + errno_text(errno));
    struct stat st {};
    if (::lstat(dir.c_str(), &st) != 0)
        throw std::runtime_error("cannot stat the shadow cache " + dir.string() + ": " + errno_text(errno));
    if (!S_ISDIR(st.st_mode))
        throw std::runtime_error("the shadow cache " + dir.string() + " is not a directory (a symlink?); remove it");
    if (st.st_uid != geteuid())
        throw std::runtime_error("the shadow cache " + dir.string() + " belongs to uid " + std::to_string(st.st_uid) +
                                 ", not to this process's user; remove it or set [host] shadow_dir");
    if (st.st_mode & 077) {
        if (::chmod(dir.c_str(), 0700) != 0)
            throw std::runtime_error("the shadow cache " + dir.string() + " is accessible to other users and "
                                     "cannot be made private: " + errno_text(errno));
    }
}

std::atomic<uint64_t> g_copy_counter{0};

// A Go runtime (a c-shared Go library) can neither be unloaded nor started twice in one process: the first
// one loaded is the only one, for the life of the process.
std::mutex g_go_mu;
std::string g_go_loaded_from;

}  // namespace

std::string status_name(th_status code) {
    const char* name = th_status_name(code);  // plugin.h: one list of names for plugins and the host
    if (std::strcmp(name, "TH_UNKNOWN") == 0) return "TH_UNKNOWN(" + std::to_string(code) + ")";
    return name;
}

// ---- ShadowCache ----------------------------------------------------------------------------------------

ShadowCache::ShadowCache(const fs::path& base_in, std::shared_ptr<spdlog::logger> log) : log_(std::move(log)) {
    const fs::path base = base_in.empty() ? default_cache_base() : base_in;
    make_private_dir(base);
    struct statvfs vfs {};
    if (::statvfs(base.c_str(), &vfs) == 0 && (vfs.f_flag & ST_NOEXEC))
        throw std::runtime_error("the shadow cache " + base.string() +
                                 " is on a file system mounted noexec, where plugins cannot be loaded; set "
                                 "[host] shadow_dir to a folder on an executable mount");
    // Copies left by host processes that no longer exist (a crash, a kill -9).
    std::error_code ec;
    for (auto& e : fs::directory_iterator(base, ec)) {
        const std::string name = e.path().filename().string();
        if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
        const pid_t pid = pid_t(std::stoll(name));
        if (pid == getpid() || (::kill(pid, 0) != 0 && errno == ESRCH)) {
            std::error_code rec;
            fs::remove_all(e.path(), rec);
            if (pid != getpid() && !rec) log_->info("removed stale shadow copies of exited process {}", pid);
        }
    }
    dir_ = base / std::to_string(getpid());
    make_private_dir(dir_);
}

ShadowCache::~ShadowCache() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
}

fs::path ShadowCache::make_copy(const std::string& bytes, const fs::path& source, const std::string& sha256,
                                LoadFailure* err) {
    const uint64_t n = ++g_copy_counter;
    fs::path p = dir_ / (source.stem().string() + "." + sha256.substr(0, 12) + "." + std::to_string(n) +
                         source.extension().string());
    int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0700);
    if (fd < 0) {
        fail(err, TH_E_NOT_A_LIBRARY, "cannot create the shadow copy " + p.string() + ": " + errno_text(errno),
             "check free space and permissions of the shadow cache");
        return {};
    }
    size_t off = 0;
    while (off < bytes.size()) {
        ssize_t w = ::write(fd, bytes.data() + off, bytes.size() - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno;
            ::close(fd);
            ::unlink(p.c_str());
            fail(err, TH_E_NOT_A_LIBRARY, "cannot write the shadow copy " + p.string() + ": " + errno_text(e),
                 "check free space in the shadow cache");
            return {};
        }
        off += size_t(w);
    }
    ::close(fd);
    return p;
}

// ---- validation -----------------------------------------------------------------------------------------

bool valid_plugin_name(const char* name) {
    if (!name) return false;
    size_t n = 0;
    for (const char* c = name; *c; ++c, ++n) {
        const unsigned char u = static_cast<unsigned char>(*c);
        if (n >= 64 || !(std::isalnum(u) || u == '_' || u == '-')) return false;
    }
    return n > 0;
}

bool validate_task(const th_task_def& t, LoadFailure* err) {
    // Names reach log lines: the part shown here is escaped like any plugin text.
    const std::string where =
        t.name ? "task '" + escape_plugin_text(std::string_view(t.name, strnlen(t.name, 64))) + "'" : "a task";
    constexpr size_t v1_size = offsetof(th_task_def, state) + sizeof(void*);
    if (t.struct_size < v1_size)
        return fail(err, TH_E_BAD_DESCRIPTOR,
                    where + ": struct_size " + std::to_string(t.struct_size) + " is smaller than th_task_def of ABI 1.0 (" +
                        std::to_string(v1_size) + ")",
                    "set struct_size = sizeof(th_task_def)");
    if (!t.name || !*t.name)
        return fail(err, TH_E_BAD_DESCRIPTOR, "a task has no name", "give every task a name");
    const size_t len = strnlen(t.name, 65);
    if (len > 64) return fail(err, TH_E_BAD_DESCRIPTOR, where + ": name longer than 64 bytes", "shorten it");
    // Printable: no space, no control character (C0, DEL, C1), valid UTF-8 (escaping would change it).
    const std::string_view name(t.name, len);
    if (name.find(' ') != std::string_view::npos || escape_plugin_text(name) != name)
        return fail(err, TH_E_BAD_DESCRIPTOR, where + ": name has spaces, control characters or invalid UTF-8",
                    "use printable characters only");
    if (!t.run) return fail(err, TH_E_BAD_DESCRIPTOR, where + ": run is NULL", "set the task's run function");
    const std::string max = std::to_string(TH_MAX_DURATION_NS) + " ns (TH_MAX_DURATION_NS, 365 days)";
    if (t.default_interval_ns <= 0)
        return fail(err, TH_E_BAD_DESCRIPTOR,
                    where + ": default interval " + std::to_string(t.default_interval_ns) + " ns is not positive",
                    "declare an interval > 0");
    if (t.default_interval_ns > TH_MAX_DURATION_NS)
        return fail(err, TH_E_BAD_DESCRIPTOR,
                    where + ": default interval " + std::to_string(t.default_interval_ns) +
                        " ns is longer than the maximum, " + max,
                    "declare an interval of at most 365 days");
    if (t.default_timeout_ns < 0)
        return fail(err, TH_E_BAD_DESCRIPTOR, where + ": default timeout is negative",
                    "use 0 for the host's default, or a positive value");
    if (t.default_timeout_ns > TH_MAX_DURATION_NS)
        return fail(err, TH_E_BAD_DESCRIPTOR,
                    where + ": default timeout " + std::to_string(t.default_timeout_ns) +
                        " ns is longer than the maximum, " + max,
                    "declare a timeout of at most 365 days (0 for the host's default)");
    return true;
}

bool validate_descriptor(const th_plugin_def* def, LoadFailure* err, uint32_t max_tasks) {
    // The first three members are fixed for every ABI version: read them before anything else.
    if (def->abi_major != TH_ABI_MAJOR)
        return fail(err, TH_E_ABI_MAJOR,
                    "the plugin was built for ABI " + std::to_string(def->abi_major) + "." +
                        std::to_string(def->abi_minor) + "; this host speaks ABI " + std::to_string(TH_ABI_MAJOR) +
                        "." + std::to_string(TH_ABI_MINOR),
                    "rebuild the plugin against tickhost SDK " + std::to_string(TH_ABI_MAJOR) + ".x");
    if (def->abi_minor > TH_ABI_MINOR)
        return fail(err, TH_E_ABI_MINOR_TOO_NEW,
                    "the plugin needs ABI " + std::to_string(def->abi_major) + "." + std::to_string(def->abi_minor) +
                        "; this host has ABI " + std::to_string(TH_ABI_MAJOR) + "." + std::to_string(TH_ABI_MINOR),
                    "upgrade the host, or rebuild the plugin against this host's SDK");
    constexpr size_t v1_size = offsetof(th_plugin_def, shutdown) + sizeof(th_shutdown_fn);
    if (def->struct_size < v1_size)
        return fail(err, TH_E_BAD_DESCRIPTOR,
                    "th_plugin_def.struct_size is " + std::to_string(def->struct_size) + ", smaller than ABI " +
                        std::to_string(def->abi_major) + "." + std::to_string(def->abi_minor) + " requires (" +
                        std::to_string(v1_size) + ")",
                    "set struct_size = sizeof(th_plugin_def)");
    if (!valid_plugin_name(def->name))
        return fail(err, TH_E_BAD_DESCRIPTOR, "the plugin's name is missing or not of [A-Za-z0-9_-]{1,64}",
                    "name the plugin with letters, digits, '_' or '-'");
    if (def->task_count > 0 && !def->tasks)
        return fail(err, TH_E_BAD_DESCRIPTOR, "task_count is " + std::to_string(def->task_count) + " but tasks is NULL",
                    "point tasks at the array of th_task_def");
    if (def->task_count > max_tasks)
        return fail(err, TH_E_TOO_MANY_TASKS,
                    "it declares " + std::to_string(def->task_count) + " static tasks; at most " +
                        std::to_string(max_tasks) + " are allowed ([host] max_tasks_per_plugin)",
                    "declare fewer tasks, or raise [host] max_tasks_per_plugin in host.toml");
    if (def->task_count == 0 && !def->init)
        return fail(err, TH_E_NO_TASKS, "the plugin declares no task and has no init to declare them",
                    "declare at least one task");
    std::set<std::string> names;
    for (uint32_t i = 0; i < def->task_count; ++i) {
        if (!validate_task(def->tasks[i], err)) return false;
        if (!names.insert(def->tasks[i].name).second)
            return fail(err, TH_E_BAD_DESCRIPTOR, "two tasks are named '" + std::string(def->tasks[i].name) + "'",
                        "give each task a unique name");
    }
    return true;
}

const th_host_info* host_info() {
    static const th_host_info info = {sizeof(th_host_info), TH_ABI_VERSION, host_api_table(), "1.0.0"};
    return &info;
}

// ---- Library --------------------------------------------------------------------------------------------

std::shared_ptr<Library> Library::load(const fs::path& source, ShadowCache& cache,
                                       std::shared_ptr<spdlog::logger> log, LoadFailure* err) {
    std::string bytes;
    if (!read_plugin_file(source, &bytes, err)) return nullptr;
    return load(source, bytes, cache, std::move(log), err);
}

std::shared_ptr<Library> Library::load(const fs::path& source, const std::string& bytes, ShadowCache& cache,
                                       std::shared_ptr<spdlog::logger> log, LoadFailure* err) {
#if defined(__linux__)
    if (!check_elf(bytes, err)) return nullptr;
#endif
    std::shared_ptr<Library> lib(new Library());
    lib->log_ = std::move(log);
    lib->source_ = source;
    lib->sha256_ = Sha256::hex_of(bytes);
    // Go's c-shared libraries carry their build info section and its magic.
    lib->go_runtime_ = bytes.find(".go.buildinfo") != std::string::npos ||
                       bytes.find("\xff Go buildinf:") != std::string::npos;
    std::unique_lock<std::mutex> go_lock(g_go_mu, std::defer_lock);
    if (lib->go_runtime_) {
        go_lock.lock();  // held until the outcome is known, so two loads cannot both start a runtime
        if (!g_go_loaded_from.empty()) {
            fail(err, TH_E_NOT_ALLOWED,
                 "it contains a Go runtime, and one already runs in this process (loaded from " + g_go_loaded_from +
                     "); a second Go runtime cannot start",
                 "restart the host to load or upgrade a Go plugin");
            return nullptr;
        }
    }
    lib->shadow_ = cache.make_copy(bytes, source, lib->sha256_, err);
    if (lib->shadow_.empty()) return nullptr;

    // RTLD_NOW: a missing symbol fails here with the loader's text, not later inside a run.
    // RTLD_LOCAL: two plugins' symbols never interpose on each other.
    boost::dll::fs::error_code ec;
    (void)dlerror();
    lib->lib_.load(lib->shadow_, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local, ec);
    if (ec || !lib->lib_.is_loaded()) {
        // Boost's error_code says only "Bad file descriptor"; dlerror() has the loader's own words.
        const char* why = dlerror();
        std::string text = why ? why : ec.message();
        // dlerror names the shadow copy; name the operator's file instead.
        for (size_t pos; (pos = text.find(lib->shadow_.string())) != std::string::npos;)
            text.replace(pos, lib->shadow_.string().size(), source.filename().string());
        fail(err, TH_E_NOT_A_LIBRARY, "the loader refused it: " + text,
             "make sure it is a shared library built for this machine with all its dependencies installed "
             "(if it is still being copied, it is retried when it changes)");
        return nullptr;  // ~Library deletes the shadow copy
    }
    if (lib->go_runtime_) {
        g_go_loaded_from = source.string();  // its runtime started with dlopen: it stays, whatever follows
        lib->pinned_ = true;
    }
    if (!lib->lib_.has(TH_ENTRY_SYMBOL)) {
        fail(err, TH_E_NO_ENTRY, "it does not export " TH_ENTRY_SYMBOL,
             "define the plugin with TICKHOST_PLUGIN(...) or export tickhost_plugin_entry with TH_EXPORT");
        return nullptr;
    }
    auto entry = lib->lib_.get<const th_plugin_def*(const th_host_info*)>(TH_ENTRY_SYMBOL);
    const th_plugin_def* def = entry(host_info());
    if (!def) {
        fail(err, TH_E_ENTRY_NULL, TH_ENTRY_SYMBOL " returned NULL", "the plugin refused to load; see its own log");
        return nullptr;
    }
    if (!validate_descriptor(def, err)) return nullptr;
    lib->def_ = def;
    return lib;
}

Library::~Library() {
    if (lib_.is_loaded()) {
        if (pinned_) {
            // Deliberately kept for the life of the process: code of this image may still run. Held in a
            // list that is never destroyed, so the mapping stays and leak checkers see it as reachable.
            static std::mutex kept_mu;
            static auto* kept = new std::vector<std::unique_ptr<boost::dll::shared_library>>;
            {
                std::lock_guard<std::mutex> lk(kept_mu);
                kept->push_back(std::make_unique<boost::dll::shared_library>(std::move(lib_)));
            }
            if (log_)
                log_->warn("{}: kept mapped ({}); shadow copy {} kept", source_.string(),
                           go_runtime_ ? "a Go runtime cannot be unloaded" : "its code may still be running",
                           shadow_.string());
            return;
        }
        lib_.unload();
        // Unload honesty: GNU unique symbols and thread_local destructors can keep an image mapped.
        if (void* still = dlopen(shadow_.c_str(), RTLD_NOW | RTLD_NOLOAD)) {
            dlclose(still);
            if (log_)
                log_->warn("{}: the image stays mapped after unload (GNU unique symbols or thread_local "
                           "destructors pin it; build plugins with -fno-gnu-unique); a new version still loads "
                           "from its own copy",
                           source_.string());
        }
    }
    if (!shadow_.empty()) {
        std::error_code ec;
        fs::remove(shadow_, ec);
    }
}

}  // namespace tickhost::detail
