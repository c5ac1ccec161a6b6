// Loading a plugin file: shadow copy, dlopen (RTLD_NOW | RTLD_LOCAL), entry point, ABI and descriptor
// checks. No init here: the plugin manager decides when a validated library is initialised.
#pragma once

#include <tickhost/plugin.h>
#include <tickhost/tickers.hpp>

#include <boost/dll/shared_library.hpp>

#include <filesystem>
#include <memory>
#include <string>

namespace spdlog {
class logger;
}

namespace tickhost::detail {

// Why a file is not (yet) a usable plugin: a named code, what happened, and what to do about it.
struct LoadFailure {
    th_status code = TH_OK;
    std::string reason;
    std::string hint;
};

// "TH_E_NO_ENTRY", ... for a status code; "TH_UNKNOWN(<n>)" for anything else.
std::string status_name(th_status code);

// The private directory that holds shadow copies: <base>/<pid>, mode 0700, and <base>/<pid>.staging for
// copies being made (moved into <base>/<pid> once complete and checked; removed when they are not needed).
// A library is never loaded from the watched file itself (dlopen would hand back the old image for a path
// it has open, and a file that is overwritten while mapped crashes the process with SIGBUS).
class ShadowCache {
public:
    // base empty = $XDG_RUNTIME_DIR/tickhost, else /tmp/tickhost-<uid>. Creates it, checks it is ours and
    // private, removes copies left by processes that no longer exist. Throws std::runtime_error.
    explicit ShadowCache(const std::filesystem::path& base, std::shared_ptr<spdlog::logger> log);
    ~ShadowCache();  // removes this process's directory
    const std::filesystem::path& dir() const { return dir_; }
    // Creates a new, empty file "<pid>.staging/<stem>.<n>.so" (mode 0700 whatever the umask; n never reused
    // in this process), open for reading and writing. Recreates the cache's folders first if someone removed
    // them (and checks again that they are ours and private). -1 + err on failure.
    int create_copy(const std::filesystem::path& source, std::filesystem::path* path, uint64_t* n, LoadFailure* err);
    // The name a finished copy gets once its content is known: "<stem>.<hash12>.<n>.so".
    std::filesystem::path final_name(const std::filesystem::path& source, const std::string& sha256, uint64_t n) const;

private:
    std::filesystem::path base_, dir_, staging_;
    std::shared_ptr<spdlog::logger> log_;
};

// Who may have put a file there and how large it may be: host.toml's [host] allow_insecure,
// allow_symlinks and max_plugin_size.
struct FilePolicy {
    bool allow_insecure = false;  // accept files and plugin_dir writable by group/others or owned by another user
    bool allow_symlinks = false;  // accept a plugin file that is a symlink (its target is checked)
    uint64_t max_size = 256ull * 1024 * 1024;  // larger files are refused unread (TH_E_FILE_TOO_LARGE)
};

// A plugin file copied into the shadow cache, read once in bounded memory and checked and hashed on the
// way. Owns its copy: removes it when destroyed, unless Library::load took it.
class StagedFile {
public:
    StagedFile() = default;
    ~StagedFile() { discard(); }
    StagedFile(const StagedFile&) = delete;
    StagedFile& operator=(const StagedFile&) = delete;
    void discard();  // removes the copy now (same content as what runs: nothing to load)

    std::filesystem::path source;  // the file in plugin_dir
    std::filesystem::path copy;    // the shadow copy; empty once taken or discarded
    std::string sha256;            // of the bytes copied
    uint64_t size = 0;
    bool go_runtime = false;  // carries Go's build-info marker (a c-shared Go library)
    // Set as soon as the file is open and trusted, also when it is then refused for its content (size, ELF
    // header, changed while read): device, inode, size, mtime and ctime, which stand for its content when
    // it was refused before it was hashed (the same file is not retried until it changes).
    bool opened = false;
    std::string identity;
};

// Opens `p` without following it into a FIFO or device, checks it on the opened descriptor (a symlink is
// refused unless allowed, a file writable by group/others or owned by neither the host's user nor root is
// refused with the chmod/chown line that fixes it: TH_E_INSECURE_FILE), refuses a file larger than
// policy.max_size unread (TH_E_FILE_TOO_LARGE), checks its ELF header, then copies it into `cache` in one
// pass through a fixed buffer, hashing it and looking for a Go runtime on the way, and checks the rest of
// the ELF headers on the copy. A file that changes while it is copied is refused as still being written.
// False + err on failure (nothing is left in the cache); never throws.
bool stage_plugin_file(const std::filesystem::path& p, ShadowCache& cache, const FilePolicy& policy, StagedFile* out,
                       LoadFailure* err);
// The same owner and mode checks for plugin_dir itself. False + err (TH_E_INSECURE_FILE) when refused.
bool check_plugin_dir(const std::filesystem::path& dir, const FilePolicy& policy, LoadFailure* err);

// One plugin image, loaded from its own shadow copy. Destroying it unloads the image (unless pinned),
// checks that the image is really gone and deletes the shadow copy.
class Library {
public:
    // Loads a staged copy (taking it over: `staged.copy` is empty afterwards) and checks entry point and
    // descriptor. The entry point is called on a thread of its own, bounded by `entry_bound`: one that does
    // not return is refused (TH_E_ENTRY_TIMEOUT) and its library stays mapped for good. Returns null and
    // fills `err` on failure (the shadow copy is then already removed, unless the library is pinned).
    // `max_tasks`: [host] max_tasks_per_plugin; a descriptor claiming more static tasks is refused before
    // any of them is read (a lying task_count cannot be detected, but it cannot make the host read far).
    static std::shared_ptr<Library> load(StagedFile& staged, std::shared_ptr<spdlog::logger> log, Duration entry_bound,
                                         LoadFailure* err, uint32_t max_tasks = 100000);
    ~Library();
    Library(const Library&) = delete;
    Library& operator=(const Library&) = delete;

    const th_plugin_def& def() const { return *def_; }
    const std::filesystem::path& source() const { return source_; }
    const std::filesystem::path& shadow() const { return shadow_; }
    const std::string& sha256() const { return sha256_; }
    // Never unload this image: its code may still be running (an abandoned call) or it cannot be unloaded.
    void pin() { pinned_ = true; }
    bool pinned() const { return pinned_; }
    // A Go runtime inside (c-shared): it can never be unloaded, and a second one cannot start in this process.
    bool has_go_runtime() const { return go_runtime_; }

private:
    Library() = default;
    boost::dll::shared_library lib_;
    const th_plugin_def* def_ = nullptr;
    std::filesystem::path source_, shadow_;
    std::string sha256_;
    bool pinned_ = false;
    bool go_runtime_ = false;
    std::shared_ptr<spdlog::logger> log_;
};

// Checks a descriptor's ABI version, size and fields, and its static tasks. False + err on failure.
// More than `max_tasks` static tasks: TH_E_TOO_MANY_TASKS. The default is the largest [host]
// max_tasks_per_plugin host.toml accepts; the plugin manager checks the configured cap before init.
bool validate_descriptor(const th_plugin_def* def, LoadFailure* err, uint32_t max_tasks = 10000000);
// Checks one task definition (static or declared from init): struct_size, a printable name of 1..64 bytes,
// run, 0 < interval <= TH_MAX_DURATION_NS, 0 <= timeout <= TH_MAX_DURATION_NS. False + err (may be null).
bool validate_task(const th_task_def& t, LoadFailure* err);
// [A-Za-z0-9_-]{1,64}
bool valid_plugin_name(const char* name);

// The th_host_info handed to every plugin's entry point.
const th_host_info* host_info();

}  // namespace tickhost::detail
