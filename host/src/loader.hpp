// Loading a plugin file: shadow copy, dlopen (RTLD_NOW | RTLD_LOCAL), entry point, ABI and descriptor
// checks. No init here: the plugin manager decides when a validated library is initialised.
#pragma once

#include <tickhost/plugin.h>

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

// The private directory that holds shadow copies: <base>/<pid>, mode 0700. A library is never loaded from
// the watched file itself (dlopen would hand back the old image for a path it has open, and a file that
// is overwritten while mapped crashes the process with SIGBUS).
class ShadowCache {
public:
    // base empty = $XDG_RUNTIME_DIR/tickhost, else /tmp/tickhost-<uid>. Creates it, checks it is ours and
    // private, removes copies left by processes that no longer exist. Throws std::runtime_error.
    explicit ShadowCache(const std::filesystem::path& base, std::shared_ptr<spdlog::logger> log);
    ~ShadowCache();  // removes this process's directory
    const std::filesystem::path& dir() const { return dir_; }
    // Writes `bytes` to a new file "<stem>.<hash12>.<n>.so" (n never reused in this process).
    std::filesystem::path make_copy(const std::string& bytes, const std::filesystem::path& source,
                                    const std::string& sha256, LoadFailure* err);

private:
    std::filesystem::path dir_;
    std::shared_ptr<spdlog::logger> log_;
};

// One plugin image, loaded from its own shadow copy. Destroying it unloads the image (unless pinned),
// checks that the image is really gone and deletes the shadow copy.
class Library {
public:
    // Reads `source`, copies it into the cache and loads the copy; checks entry point and descriptor.
    // Returns null and fills `err` on failure (the shadow copy is then already removed).
    static std::shared_ptr<Library> load(const std::filesystem::path& source, ShadowCache& cache,
                                         std::shared_ptr<spdlog::logger> log, LoadFailure* err);
    // Same, from the file's bytes already read (read_plugin_file) so that what was hashed is what loads.
    static std::shared_ptr<Library> load(const std::filesystem::path& source, const std::string& bytes,
                                         ShadowCache& cache, std::shared_ptr<spdlog::logger> log, LoadFailure* err);
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

// Who may have put a file there: host.toml's [host] allow_insecure and allow_symlinks.
struct FilePolicy {
    bool allow_insecure = false;  // accept files and plugin_dir writable by group/others or owned by another user
    bool allow_symlinks = false;  // accept a plugin file that is a symlink (its target is checked)
};

// Reads a regular file whole (a FIFO or device is refused without blocking). The checks are made on the
// opened descriptor, so what was checked is what is read: a symlink is refused (TH_E_INSECURE_FILE) unless
// allowed, and a file writable by group/others or owned by neither the host's user nor root is refused
// (TH_E_INSECURE_FILE, with the chmod/chown line that fixes it) unless insecure files are allowed.
// False + err on failure.
bool read_plugin_file(const std::filesystem::path& p, std::string* out, LoadFailure* err,
                      const FilePolicy& policy = FilePolicy{});
// The same owner and mode checks for plugin_dir itself. False + err (TH_E_INSECURE_FILE) when refused.
bool check_plugin_dir(const std::filesystem::path& dir, const FilePolicy& policy, LoadFailure* err);
std::string sha256_hex(const std::string& bytes);

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
