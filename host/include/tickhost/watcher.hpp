// DirectoryWatcher: turns file system activity in one directory into debounced, stable events.
//
// Backends: inotify (Linux) on the directory — never on the files — and a portable polling backend
// (mtime/size/inode scans). Events, delivered on the watcher's own thread:
//   - changed(name): a rename into the directory (IN_MOVED_TO) or a close after writing (IN_CLOSE_WRITE),
//     at once; other signs of change (IN_CREATE, IN_MODIFY, IN_ATTRIB, a changed poll signature) once the
//     file has been quiet for `settle`.
//   - removed(name): a delete or a move out, after `settle` (a delete followed by a new file within settle
//     becomes one changed(name), so delete-then-create works as a replacement).
//   - rescan: at start, after an inotify queue overflow, and when the directory reappears after it was
//     deleted or replaced. The handler should reconcile everything with the directory's content.
// While the directory is missing, nothing is reported (pending removals are dropped: plugins keep
// running) and the watcher checks every poll_interval for it to come back.
#pragma once

#include <tickhost/config.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

namespace tickhost {

struct WatchEvent {
    enum class Kind { changed, removed, rescan };
    Kind kind;
    std::filesystem::path path;  // full path of the file; empty for rescan
};

struct WatchOptions {
    WatchMode mode = WatchMode::automatic;
    Duration poll_interval = std::chrono::seconds(1);
    Duration settle = std::chrono::milliseconds(300);
    // Which names matter (by file name). Default: every name.
    std::function<bool(const std::filesystem::path& name)> filter;
    std::string logger_name = "watch";
};

class DirectoryWatcher {
public:
    using Handler = std::function<void(const WatchEvent&)>;

    // Starts watching at once; the first event is a rescan. mode off: no thread, no events.
    // automatic falls back to polling (logged) when inotify cannot be used.
    DirectoryWatcher(std::filesystem::path dir, WatchOptions options, Handler handler);
    ~DirectoryWatcher();  // stops the thread (waits for a handler call in progress)
    DirectoryWatcher(const DirectoryWatcher&) = delete;
    DirectoryWatcher& operator=(const DirectoryWatcher&) = delete;

    // The backend in use: inotify, poll, or off.
    WatchMode backend() const;
    // Asks for a changed(path) event after `delay` (e.g. to retry a file that failed to load).
    void recheck(const std::filesystem::path& path, Duration delay);
    // Asks for a rescan event as soon as possible.
    void rescan();

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace tickhost
