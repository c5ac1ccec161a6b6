#include "loader.hpp"

#include "bounded_call.hpp"
#include "fault.hpp"
#include "host_api.hpp"
#include "sha256.hpp"

#include <tickhost/config.hpp>
#include <tickhost/tickers.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <memory>
#include <mutex>
#include <set>
#include <string_view>
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

bool check_plugin_dir(const fs::path& dir, const FilePolicy& policy, LoadFailure* err) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0)
        return fail(err, TH_E_NOT_A_LIBRARY, "cannot stat plugin_dir " + dir.string() + ": " + errno_text(errno),
                    "create it or fix [host] plugin_dir");
    return check_trusted(dir, st, "plugin_dir", policy, err);
}

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

// a + b, or UINT64_MAX if that overflows (hostile headers must not wrap around to a small extent).
uint64_t add_sat(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }
uint64_t mul_sat(uint64_t a, uint64_t b) { return b && a > UINT64_MAX / b ? UINT64_MAX : a * b; }

const char* const kRetry = "it may still be being written: it is retried when it changes";

// The first check, on the file's first bytes (`n` of them were read): ELF magic, class, machine, type.
// Nothing else of a file is read or copied before this passes.
bool check_elf_header(const char* b, size_t n, Ehdr* h, LoadFailure* err) {
    if (n < SELFMAG || std::memcmp(b, ELFMAG, SELFMAG) != 0)
        return fail(err, TH_E_NOT_A_LIBRARY, "not an ELF file (no ELF magic in its first bytes)",
                    "plugin_dir may only hold plugin shared libraries");
    if (n < sizeof(Ehdr))
        return fail(err, TH_E_NOT_A_LIBRARY, "truncated ELF file (" + std::to_string(n) + " bytes)", kRetry);
    std::memcpy(h, b, sizeof *h);
    if (h->e_ident[EI_CLASS] != kHostClass)
        return fail(err, TH_E_NOT_A_LIBRARY,
                    std::string("ELF class ") + (h->e_ident[EI_CLASS] == ELFCLASS32 ? "32-bit" : "64-bit") +
                        " does not match this host",
                    "build the plugin for this machine's architecture");
    if (kHostMachine != EM_NONE && h->e_machine != kHostMachine)
        return fail(err, TH_E_NOT_A_LIBRARY,
                    "ELF for another machine (e_machine " + std::to_string(h->e_machine) + ", this host is " +
                        std::to_string(kHostMachine) + ")",
                    "build the plugin for this machine's architecture");
    if (h->e_type != ET_DYN)
        return fail(err, TH_E_NOT_A_LIBRARY,
                    "ELF file is not a shared library (e_type " + std::to_string(h->e_type) + ")",
                    "build it as a shared library (tickhost_add_plugin does)");
    return true;
}

// The second check, on the finished shadow copy (read with pread through `buf`, `cap` bytes): the program
// and section headers and the segments they describe lie inside the file. dlopen maps segments without
// comparing them with the file size, so a truncated copy (still being written) would load and then die
// with SIGBUS at the first touch of a missing page.
bool check_elf_extents(int fd, uint64_t size, const Ehdr& h, char* buf, size_t cap, LoadFailure* err) {
    if (h.e_phentsize != sizeof(Phdr) || add_sat(h.e_phoff, mul_sat(h.e_phnum, sizeof(Phdr))) > size)
        return fail(err, TH_E_NOT_A_LIBRARY, "truncated ELF file: its program headers lie past its end", kRetry);
    uint64_t need = 0;
    const size_t per_read = cap / sizeof(Phdr);
    for (size_t i = 0; i < h.e_phnum; i += per_read) {
        const size_t count = std::min<size_t>(per_read, h.e_phnum - i);
        const size_t len = count * sizeof(Phdr);
        ssize_t got;
        do got = ::pread(fd, buf, len, off_t(h.e_phoff + i * sizeof(Phdr)));
        while (got < 0 && errno == EINTR);
        if (got != ssize_t(len))
            return fail(err, TH_E_NOT_A_LIBRARY, "cannot read back the shadow copy's program headers", kRetry);
        for (size_t k = 0; k < count; ++k) {
            Phdr ph;
            std::memcpy(&ph, buf + k * sizeof(Phdr), sizeof ph);
            if (ph.p_type == PT_LOAD || ph.p_type == PT_DYNAMIC)
                need = std::max(need, add_sat(ph.p_offset, ph.p_filesz));
        }
    }
    if (h.e_shoff) need = std::max(need, add_sat(h.e_shoff, mul_sat(h.e_shnum, h.e_shentsize)));
    if (need > size)
        return fail(
            err, TH_E_NOT_A_LIBRARY,
            "truncated ELF file (" + std::to_string(size) + " bytes; its headers need " + std::to_string(need) + ")",
            kRetry);
    return true;
}

fs::path default_cache_base() {
    // systemd's RuntimeDirectory= (private to the service, one per instance of a template; the first one when
    // the unit names several, separated by ':').
    if (const char* rt = std::getenv("RUNTIME_DIRECTORY"); rt && *rt == '/') {
        const std::string first = std::string(rt).substr(0, std::string(rt).find(':'));
        if (fs::is_directory(first)) return fs::path(first) / "shadow";
    }
    if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg && *xdg && fs::is_directory(xdg))
        return fs::path(xdg) / "tickhost";
    return fs::temp_directory_path() / ("tickhost-" + std::to_string(getuid()));
}

// Creates `dir` with mode 0700 if missing, then refuses it unless it is a real directory owned by us, and
// gives it exactly mode 0700 (whatever the umask: a plugin may have called umask(0777)).
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
    if ((st.st_mode & 07777) != 0700 && ::chmod(dir.c_str(), 0700) != 0) {
        char mode[8];
        std::snprintf(mode, sizeof mode, "%04o", unsigned(st.st_mode & 07777));
        throw std::runtime_error("the shadow cache " + dir.string() + " has mode " + mode +
                                 " and cannot be given mode 0700: " + errno_text(errno));
    }
}

std::atomic<uint64_t> g_copy_counter{0};

// A Go runtime (a c-shared Go library) can neither be unloaded nor started twice in one process: the first
// one loaded is the only one, for the life of the process.
std::mutex g_go_mu;
std::string g_go_loaded_from;
// What became of the plugin whose library started the Go runtime (its runtime stays either way).
enum GoPlugin : int { go_plugin_loaded = 0, go_plugin_removed = 1, go_plugin_refused = 2 };
std::atomic<int> g_go_plugin{go_plugin_loaded};

}  // namespace

std::string status_name(th_status code) {
    const char* name = th_status_name(code);  // plugin.h: one list of names for plugins and the host
    if (std::strcmp(name, "TH_UNKNOWN") == 0) return "TH_UNKNOWN(" + std::to_string(code) + ")";
    return name;
}

// ---- ShadowCache ----------------------------------------------------------------------------------------

ShadowCache::ShadowCache(const fs::path& base_in, std::shared_ptr<spdlog::logger> log) : log_(std::move(log)) {
    base_ = base_in.empty() ? default_cache_base() : base_in;
    const fs::path& base = base_;
    make_private_dir(base);
    struct statvfs vfs {};
    if (::statvfs(base.c_str(), &vfs) == 0 && (vfs.f_flag & ST_NOEXEC))
        throw std::runtime_error("the shadow cache " + base.string() +
                                 " is on a file system mounted noexec, where plugins cannot be loaded; set "
                                 "[host] shadow_dir to a folder on an executable mount");
    // Copies left by host processes that no longer exist (a crash, a kill -9): "<pid>" and "<pid>.staging".
    std::error_code ec;
    for (auto& e : fs::directory_iterator(base, ec)) {
        std::string name = e.path().filename().string();
        if (name.size() > 8 && name.compare(name.size() - 8, 8, ".staging") == 0) name.resize(name.size() - 8);
        if (name.empty() || name.size() > 9 || name.find_first_not_of("0123456789") != std::string::npos) continue;
        const pid_t pid = pid_t(std::stoll(name));
        if (pid == getpid() || (::kill(pid, 0) != 0 && errno == ESRCH)) {
            std::error_code rec;
            fs::remove_all(e.path(), rec);
            if (pid != getpid() && !rec) log_->info("removed stale shadow copies of exited process {}", pid);
        }
    }
    dir_ = base / std::to_string(getpid());
    staging_ = base / (std::to_string(getpid()) + ".staging");
    make_private_dir(dir_);
    make_private_dir(staging_);
}

ShadowCache::~ShadowCache() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
    fs::remove_all(staging_, ec);
}

int ShadowCache::create_copy(const fs::path& source, fs::path* path, uint64_t* n_out, LoadFailure* err) {
    // Someone may have removed the cache while the host runs (rm -rf, a tmp cleaner): make it again, and
    // check it again (ours, a real directory, mode 0700), rather than refuse every later plugin.
    const bool missing = ::access(dir_.c_str(), F_OK) != 0 || ::access(staging_.c_str(), F_OK) != 0;
    try {
        if (missing) make_private_dir(base_);
        make_private_dir(dir_);
        make_private_dir(staging_);
    } catch (const std::exception& e) {
        fail(err, TH_E_NOT_A_LIBRARY, e.what(), "fix the shadow cache folder, or set [host] shadow_dir in host.toml");
        return -1;
    }
    if (missing) log_->warn("the shadow cache {} had been removed; created it again", dir_.string());
    const uint64_t n = ++g_copy_counter;
    *path = staging_ / (source.stem().string() + "." + std::to_string(n) + source.extension().string());
    const int fd = ::open(path->c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0700);
    if (fd < 0) {
        const int e = errno;
        path->clear();
        fail(err, TH_E_NOT_A_LIBRARY, "cannot create a shadow copy in " + staging_.string() + ": " + errno_text(e),
             "check free space and permissions of the shadow cache");
        return -1;
    }
    // Exactly 0700 whatever the umask (open's mode is masked by it; a plugin may have called umask(0777)).
    if (::fchmod(fd, 0700) != 0) {
        const int e = errno;
        ::close(fd);
        ::unlink(path->c_str());
        path->clear();
        fail(err, TH_E_NOT_A_LIBRARY,
             "cannot set the mode of a shadow copy in " + staging_.string() + ": " + errno_text(e),
             "check the permissions of the shadow cache");
        return -1;
    }
    *n_out = n;
    return fd;
}

fs::path ShadowCache::final_name(const fs::path& source, const std::string& sha256, uint64_t n) const {
    return dir_ / (source.stem().string() + "." + sha256.substr(0, 12) + "." + std::to_string(n) +
                   source.extension().string());
}

void StagedFile::discard() {
    if (copy.empty()) return;
    std::error_code ec;
    fs::remove(copy, ec);
    copy.clear();
}

// ---- reading and staging a plugin file ------------------------------------------------------------------

namespace {

// The one buffer a file is copied through: memory per load is this much, whatever the file's size.
constexpr size_t kChunk = 256 * 1024;
// Go's c-shared libraries carry their build-info section and its magic. A marker may straddle two reads:
// the last kOverlap bytes of each read are searched again with the next.
constexpr std::string_view kGoMarkers[] = {".go.buildinfo", "\xff Go buildinf:"};
constexpr size_t kOverlap = 13;  // the longest marker's length - 1
static_assert(kGoMarkers[0].size() - 1 <= kOverlap && kGoMarkers[1].size() - 1 <= kOverlap);

struct Fd {
    int fd;
    explicit Fd(int f) : fd(f) {}
    ~Fd() {
        if (fd >= 0) ::close(fd);
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
};

// Reads up to `n` bytes: fewer only at the end of the file. -1 (errno set) on error.
ssize_t read_full(int fd, char* buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        const ssize_t r = ::read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (r == 0) break;
        got += size_t(r);
    }
    return ssize_t(got);
}

bool write_all(int fd, const char* buf, size_t n) {
    while (n > 0) {
        const ssize_t w = ::write(fd, buf, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        buf += w, n -= size_t(w);
    }
    return true;
}

bool all_zero(const char* p, size_t n) { return n == 0 || (p[0] == 0 && std::memcmp(p, p + 1, n - 1) == 0); }

// "100 GiB", "1.5 MiB", "100 bytes": a file's size for people.
std::string human_size(uint64_t n) {
    static const char* const units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    double v = double(n);
    size_t u = 0;
    while (v >= 1024 && u + 1 < std::size(units)) v /= 1024, ++u;
    char buf[48];
    if (u == 0)
        std::snprintf(buf, sizeof buf, "%llu bytes", static_cast<unsigned long long>(n));
    else
        std::snprintf(buf, sizeof buf, v == double(uint64_t(v)) ? "%.0f %s" : "%.1f %s", v, units[u]);
    return buf;
}

// "256MiB": a size the way host.toml writes it.
std::string config_size(uint64_t n) {
    static const std::pair<uint64_t, const char*> units[] = {
        {1ull << 30, "GiB"}, {1ull << 20, "MiB"}, {1ull << 10, "KiB"}};
    for (auto& [k, name] : units)
        if (n >= k && n % k == 0) return std::to_string(n / k) + name;
    return std::to_string(n) + "B";
}

bool open_checked(const fs::path& p, const FilePolicy& policy, int* fd_out, struct stat* st, LoadFailure* err) {
    // O_NOFOLLOW: a symlink fails to open (ELOOP) instead of being followed to wherever it points.
    // O_NONBLOCK: a FIFO does not block the loader; fstat on the open descriptor decides (no check-then-open race).
    const int follow = policy.allow_symlinks ? 0 : O_NOFOLLOW;
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | follow);
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
    *fd_out = fd;
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode))
        return fail(err, TH_E_NOT_A_LIBRARY, "not a regular file", "plugin_dir may only hold plugin files");
    return check_trusted(p, *st, "plugin file", policy, err);
}

bool stage(const fs::path& p, ShadowCache& cache, const FilePolicy& policy, StagedFile* out, LoadFailure* err) {
    int raw = -1;
    struct stat st {};
    const bool opened = open_checked(p, policy, &raw, &st, err);
    Fd in(raw);
    if (!opened) return false;
    out->opened = true;
    out->identity = "file " + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) + " size " +
                    std::to_string(st.st_size) + " mtime " + std::to_string(st.st_mtim.tv_sec) + "." +
                    std::to_string(st.st_mtim.tv_nsec) + " ctime " + std::to_string(st.st_ctim.tv_sec) + "." +
                    std::to_string(st.st_ctim.tv_nsec);
    const uint64_t size = uint64_t(st.st_size);
    if (size == 0)
        return fail(err, TH_E_NOT_A_LIBRARY, "the file is empty",
                    "it may still be being written; it is retried when it changes");
    // Refused unread: a sparse 100 GiB file costs the host nothing.
    if (size > policy.max_size)
        return fail(err, TH_E_FILE_TOO_LARGE,
                    p.filename().string() + " is " + human_size(size) +
                        ", larger than [host] max_plugin_size = " + config_size(policy.max_size) + "; it was not read",
                    "raise [host] max_plugin_size in host.toml if this is really a plugin");

    // One buffer, kOverlap bytes of the previous read in front of each new one (for the Go markers).
    std::unique_ptr<char[]> mem(new char[kOverlap + kChunk]);
    char* const buf = mem.get() + kOverlap;
    ssize_t n = read_full(in.fd, buf, size_t(std::min<uint64_t>(size, kChunk)));
    if (n < 0) return fail(err, TH_E_NOT_A_LIBRARY, "read failed: " + errno_text(errno), "check the file system");
    Ehdr h{};
#if defined(__linux__)
    // The first bytes are checked before anything is copied.
    if (!check_elf_header(buf, size_t(n), &h, err)) return false;
#endif

    uint64_t serial = 0;
    Fd copy(cache.create_copy(p, &out->copy, &serial, err));
    if (copy.fd < 0) return false;
    auto cannot_write = [&](int e) {
        return fail(err, TH_E_NOT_A_LIBRARY,
                    "cannot write the shadow copy " + out->copy.string() + ": " + errno_text(e),
                    "check free space in the shadow cache");
    };
    fault_point("stage", p.filename().string());  // tests: an exception here is a named refusal, no copy left
    Sha256 sha;
    bool go = false;
    size_t carry = 0;  // bytes of the previous read kept in front of buf
    uint64_t done = 0;
    while (n > 0) {
        const size_t len = size_t(n);
        sha.update(buf, len);
        if (!go) {
            const char* region = buf - carry;
            const size_t region_len = carry + len;
            for (auto m : kGoMarkers) go = go || ::memmem(region, region_len, m.data(), m.size()) != nullptr;
            const size_t keep = std::min(kOverlap, region_len);
            std::memmove(buf - keep, region + region_len - keep, keep);
            carry = keep;
        }
        // Runs of zeros stay holes in the copy: a sparse file costs no space in the cache.
        if (all_zero(buf, len) ? ::lseek(copy.fd, off_t(len), SEEK_CUR) < 0 : !write_all(copy.fd, buf, len))
            return cannot_write(errno);
        done += len;
        if (done >= size) break;  // at most what fstat said: a file that grows is caught below
        n = read_full(in.fd, buf, size_t(std::min<uint64_t>(size - done, kChunk)));
        if (n < 0) return fail(err, TH_E_NOT_A_LIBRARY, "read failed: " + errno_text(errno), "check the file system");
    }
    struct stat now {};
    if (done != size || ::fstat(in.fd, &now) != 0 || uint64_t(now.st_size) != size ||
        now.st_mtim.tv_sec != st.st_mtim.tv_sec || now.st_mtim.tv_nsec != st.st_mtim.tv_nsec)
        return fail(err, TH_E_NOT_A_LIBRARY,
                    "the file changed while it was read (" + std::to_string(size) + " bytes when opened, " +
                        std::to_string(now.st_size) + " bytes now" +
                        (uint64_t(now.st_size) == size ? ", modified" : "") + ")",
                    "it is still being written: it is retried when it changes");
    if (::ftruncate(copy.fd, off_t(size)) != 0) return cannot_write(errno);
#if defined(__linux__)
    // The rest of the headers, on the copy: what is checked is what dlopen maps.
    if (!check_elf_extents(copy.fd, size, h, buf, kChunk, err)) return false;
#endif
    out->sha256 = Sha256::hex(sha.finish());
    const fs::path final_path = cache.final_name(p, out->sha256, serial);
    if (::rename(out->copy.c_str(), final_path.c_str()) != 0) {
        const int e = errno;
        return fail(err, TH_E_NOT_A_LIBRARY,
                    "cannot name the shadow copy " + final_path.string() + ": " + errno_text(e),
                    "check the shadow cache");
    }
    out->copy = final_path;
    out->source = p;
    out->size = size;
    out->go_runtime = go;
    return true;
}

}  // namespace

bool stage_plugin_file(const fs::path& p, ShadowCache& cache, const FilePolicy& policy, StagedFile* out,
                       LoadFailure* err) {
    out->discard();
    out->opened = false;
    out->identity.clear();
    bool ok = false;
    try {
        ok = stage(p, cache, policy, out, err);
    } catch (const std::exception& e) {  // std::bad_alloc, a filesystem error: a named refusal, never a crash
        ok = fail(err, TH_E_NOT_A_LIBRARY, std::string("the host could not read it: ") + e.what(),
                  "it is retried when it changes; check the host's free memory and the file system");
    }
    if (!ok) out->discard();  // nothing of a refused file stays in the cache
    return ok;
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
                    "it declares " + std::to_string(def->task_count) + " static tasks; [host] max_tasks_per_plugin is " +
                        std::to_string(max_tasks),
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

std::shared_ptr<Library> Library::load(StagedFile& staged, std::shared_ptr<spdlog::logger> log, Duration entry_bound,
                                       LoadFailure* err, uint32_t max_tasks) {
    const fs::path source = staged.source;
    std::shared_ptr<Library> lib(new Library());
    lib->log_ = std::move(log);
    lib->source_ = source;
    lib->sha256_ = staged.sha256;
    lib->go_runtime_ = staged.go_runtime;
    lib->shadow_ = staged.copy;  // the library owns the copy from here: ~Library removes it
    staged.copy.clear();
    std::unique_lock<std::mutex> go_lock(g_go_mu, std::defer_lock);
    if (lib->go_runtime_) {
        go_lock.lock();  // held until the outcome is known, so two loads cannot both start a runtime
        if (!g_go_loaded_from.empty()) {
            const int was = g_go_plugin.load();
            if (was == go_plugin_loaded)
                fail(err, TH_E_NOT_ALLOWED,
                     "it contains a Go runtime, and one already runs in this process (loaded from " + g_go_loaded_from +
                         "); a second Go runtime cannot start",
                     "restart the host to load or upgrade a Go plugin");
            else
                fail(err, TH_E_NOT_ALLOWED,
                     "it contains a Go runtime, and a Go runtime from " + g_go_loaded_from +
                         " is already in this process (its plugin was " +
                         (was == go_plugin_removed ? "removed" : "refused") + ", but a Go runtime cannot be unloaded)",
                     "restart the host to load " + source.string());
            return nullptr;
        }
    }

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
        g_go_plugin = go_plugin_loaded;
        lib->pinned_ = true;
    }
    if (!lib->lib_.has(TH_ENTRY_SYMBOL)) {
        fail(err, TH_E_NO_ENTRY, "it does not export " TH_ENTRY_SYMBOL,
             "define the plugin with TICKHOST_PLUGIN(...) or export tickhost_plugin_entry with TH_EXPORT");
        return nullptr;
    }
    using EntryFn = const th_plugin_def* (*)(const th_host_info*);
    const EntryFn entry = &lib->lib_.get<const th_plugin_def*(const th_host_info*)>(TH_ENTRY_SYMBOL);
    // The entry point runs on a thread of its own, bounded like init: one that never returns costs a
    // thread, not the loader. (Static constructors run inside dlopen above and are not bounded.)
    struct EntryCall {
        const th_plugin_def* def = nullptr;
        std::string threw;
    };
    auto call = std::make_shared<EntryCall>();
    const bool returned = call_bounded(
        [call, entry] {
            try {
                call->def = entry(host_info());
            } catch (const std::exception& e) {
                call->threw = e.what();
            } catch (...) {
                call->threw = "an exception of unknown type";
            }
        },
        entry_bound);
    if (!returned) {
        lib->pinned_ = true;  // the entry point may still be running: never unmap it
        fail(err, TH_E_ENTRY_TIMEOUT,
             TH_ENTRY_SYMBOL " did not return within " + format_duration(entry_bound) +
                 "; the plugin is refused and its library stays mapped until the host exits",
             "fix the plugin's entry point (it must only return its descriptor; work belongs in init or a task), "
             "or raise [plugins." +
                 source.stem().string() + "] timeout in host.toml");
        return nullptr;
    }
    if (!call->threw.empty()) {
        fail(err, TH_E_ENTRY_NULL, TH_ENTRY_SYMBOL " threw " + call->threw,
             "the plugin's entry point must not throw; fix the plugin");
        return nullptr;
    }
    const th_plugin_def* def = call->def;
    if (!def) {
        fail(err, TH_E_ENTRY_NULL, TH_ENTRY_SYMBOL " returned NULL", "the plugin refused to load; see its own log");
        return nullptr;
    }
    if (!validate_descriptor(def, err, max_tasks)) return nullptr;
    lib->def_ = def;
    return lib;
}

Library::~Library() {
    if (lib_.is_loaded()) {
        // The plugin whose library started the Go runtime is gone; the runtime is not.
        if (go_runtime_) g_go_plugin = def_ ? go_plugin_removed : go_plugin_refused;
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
