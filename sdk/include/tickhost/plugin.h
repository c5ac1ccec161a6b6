/*
 * tickhost plugin ABI, version 1.0 — the whole contract between a task plugin and the host.
 *
 * A complete plugin in plain C (build it with the CMake function `tickhost_add_plugin`, or any compiler
 * invocation that makes a shared library exporting `tickhost_plugin_entry`):
 *
 *     #include <tickhost/plugin.h>
 *     #include <string.h>
 *
 *     static const th_host_api* host;
 *
 *     static th_status tick(void* state, th_ctx ctx, int32_t is_stop) {
 *         (void)state;
 *         const char* msg = is_stop ? "stopping" : "tick";
 *         host->log(ctx, TH_LOG_INFO, msg, strlen(msg));
 *         return TH_OK;
 *     }
 *
 *     static const th_task_def tasks[] = {
 *         {sizeof(th_task_def), "tick", 1000000000, 0, tick, NULL},  // every 1 s, host default timeout
 *     };
 *
 *     static const th_plugin_def plugin = {
 *         sizeof(th_plugin_def), TH_ABI_MAJOR, TH_ABI_MINOR,
 *         "minimal", "1.0.0", "Logs a line every second",
 *         tasks, 1,           // static tasks (may be NULL, 0 if init declares them)
 *         NULL, NULL,         // init, shutdown (optional)
 *     };
 *
 *     TH_EXPORT const th_plugin_def* tickhost_plugin_entry(const th_host_info* info) {
 *         host = info->api;
 *         return &plugin;
 *     }
 *
 * C++ authors: <tickhost/plugin.hpp> wraps all of this in a class and one macro.
 *
 * ------------------------------------------------------------------------------------------------------
 * Rules of this ABI (they are promises; breaking one bumps TH_ABI_MAJOR):
 *  - Pure C: fixed-width integers, `const char*` + length, function pointers, opaque handles. Nothing
 *    allocated on one side is freed on the other. No exception may cross the boundary.
 *  - Every struct starts with `struct_size` (set it to sizeof the struct you compiled against). Structs and
 *    the host API table only grow at the end; a member, once released, never changes meaning or type.
 *    New functions get new names (`foo2`) rather than changing old ones. Members are tagged @since.
 *  - Version negotiation: the plugin states the ABI major.minor it was built against in its th_plugin_def.
 *    The host refuses a different major (TH_E_ABI_MAJOR) and a minor newer than its own
 *    (TH_E_ABI_MINOR_TOO_NEW). A plugin built for 1.0 keeps loading in every 1.x host.
 *  - Alignment and layout are the platform C ABI's (natural alignment, no packing pragmas).
 *  - Durations are signed 64-bit nanoseconds (int64_t). Times are on the host's monotonic clock.
 *
 * Threading:
 *  - Loads, unloads and restarts are serialized: one at a time, on whichever host thread asked for them (the
 *    start-up, the directory watcher, a reload). tickhost_plugin_entry, init and shutdown are each called on
 *    a thread of their own, created for that call, while the asking thread waits for them with a bound:
 *    the entry point and init the plugin's timeout (for the entry point: [plugins.<file stem>] timeout, as
 *    its name is not known yet, else [host] default_timeout), shutdown what is left of the stop bound. One
 *    that does not return in time refuses the plugin (TH_E_ENTRY_TIMEOUT, TH_E_INIT_FAILED) or is left
 *    behind, its library mapped for good since its code may still run. Static constructors run inside the
 *    loader and are not bounded. ("loader thread" below means this.)
 *  - init and shutdown may be called more than once on one loaded library: a settings change in host.toml
 *    restarts the plugin in place (every task's stop call, shutdown, then init again with the new config,
 *    on the same library; no reload, so static and global variables keep their values). An init that
 *    returned TH_OK is followed by exactly one shutdown before init is called again; a plugin whose code
 *    may still be running (a stop call or shutdown that did not return) is never initialised again.
 *  - A task's run() is called on a worker thread. Runs of one task never overlap; different tasks (of this
 *    plugin or others) may run at the same time on different threads.
 *  - Every th_host_api function is thread-safe and may be called from any thread, including threads the
 *    plugin started, with any th_ctx. A context that is no longer valid (its run has returned, its plugin
 *    was shut down) is refused with TH_E_STALE_CONTEXT (or treated as cancelled) — never a crash.
 *
 * What must not outlive the plugin: threads it started, callbacks it handed to other libraries, and
 * thread_local objects with destructors (they pin the library in memory). Stop them in shutdown().
 *
 * Isolation (host.toml: [plugins.<name>] isolation = "process"; Linux): the same file runs in a process of
 * its own (tickhost-worker) that the host starts, feeds and supervises; everything above holds there too,
 * with the same services (is_cancelled reads shared memory: no system call). What differs:
 *  - Its process is not the host's: it has its own globals, environment, working directory and limits, and
 *    runs as [plugins.<name>] user/group when set. It inherits the host's standard output and error and no
 *    other descriptor of the host's but its channel (3, 4, 5, and sockets the host adds while it runs):
 *    never read, write or close a descriptor the plugin did not open itself.
 *  - Log lines travel to the host (at most 1000 per second after a burst of 1000; more are dropped and
 *    counted in the host's log). Each is cut at TH_MAX_TEXT_BYTES as in the host.
 *  - Stated exception to "exactly once" below: when its process dies (a crash, exit(), abort(), a limit
 *    such as memory_max) or is killed (a run that ignored its cancellation for [host] abandon_after past
 *    its deadline, an init or shutdown past its bound), the tasks of that process get no stop call and the
 *    plugin gets no shutdown call: there is nothing left to call them in. The host logs how it ended and
 *    which task was running, and starts the plugin again in a new process (init, then its tasks) after a
 *    back-off, or leaves it down after [host] crash_limit deaths within crash_window.
 *  - A new version, a restart after a crash and a change of isolation start a new process: a Go runtime or
 *    anything else that cannot be unloaded in the host's process is replaced freely.
 *
 * ------------------------------------------------------------------------------------------------------
 * For bindings from other languages (any C FFI): everything at the boundary, on LP64 platforms (x86_64,
 * aarch64 Linux). Other platforms: the platform C ABI's natural layout of the same declarations. All
 * pointers are plain C data pointers or C-calling-convention function pointers; strings are UTF-8 bytes.
 *
 *   type / function        size align  who owns it, how long it lives              called / used on
 *   th_ctx                    8    8   a value; valid during the call it came with  any thread
 *   th_status, levels         4    4   int32_t values                               -
 *   th_host_api              96    8   host; from entry until unload; read-only     any thread
 *     .struct_size @0 u32, .abi_version @4 u32, .log @8, .is_cancelled @16, .remaining_ns @24,
 *     .deadline_ns @32, .config_string @40, .config_int @48, .config_bool @56, .config_duration_ns @64,
 *     .set_error @72, .add_task @80, .due_ns @88
 *   th_host_info             24    8   host; valid only during tickhost_plugin_entry loader thread
 *     .struct_size @0 u32, .abi_version @4 u32, .api @8, .host_version @16 (NUL-terminated, host-owned)
 *   th_task_def              48    8   plugin; static tasks: until unload; passed   loader thread
 *                                      to add_task: copied by the host (name too)
 *     .struct_size @0 u32, .name @8, .default_interval_ns @16 i64, .default_timeout_ns @24 i64, .run @32,
 *     .state @40
 *   th_plugin_def            64    8   plugin; returned by the entry, read until     loader thread
 *                                      unload (a static); never written by the host
 *     .struct_size @0 u32, .abi_major @4 u16, .abi_minor @6 u16, .name @8, .version @16,
 *     .description @24, .tasks @32, .task_count @40 u32, .init @48, .shutdown @56
 *   tickhost_plugin_entry   -      -   exported by the plugin (default visibility)  loader thread, once per load
 *   init / shutdown         -      -   plugin functions; `state` is the plugin's    a host thread; one pair
 *                                                                                   per start (again after a
 *                                                                                   settings change)
 *   run                     -      -   plugin function; `state` as above            a worker thread; runs of
 *                                                                                   one task never overlap
 *   th_host_api functions   -      -   host; strings passed in are copied or only   any thread (thread-safe)
 *                                      read during the call; strings passed out
 *                                      belong to the host (see each member)
 *
 * Memory: the host never frees what the plugin allocated (state, descriptors, names) and the plugin never
 * frees what the host hands out. Nothing the plugin returns may point to its stack.
 * Blocking: run may block, but only until its deadline (poll is_cancelled); entry, init and shutdown hold
 * up every other load, unload and reload while they run (up to their bound), so keep them short. No callback may longjmp or unwind
 * (exceptions, panics) across the boundary: catch everything inside the plugin. (Out of contract, a C++
 * exception that reaches the host from run or init is caught there: the call counts as failed, the
 * exception's text is logged with the task's name, the call's context is closed and the next run is
 * normal. Unwinding through frames built without unwind tables still terminates the process.)
 *
 * Limits (the host refuses more, with a named code): interval and timeout at most TH_MAX_DURATION_NS;
 * static plus add_task tasks at most [host] max_tasks_per_plugin (default 100000, TH_E_TOO_MANY_TASKS);
 * log and set_error texts are cut after TH_MAX_TEXT_BYTES bytes and printed escaped (see log).
 */
#ifndef TICKHOST_PLUGIN_H
#define TICKHOST_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ABI version this header describes. Packed form: major << 16 | minor. */
#define TH_ABI_MAJOR 1
#define TH_ABI_MINOR 0
#define TH_ABI_VERSION ((uint32_t)((TH_ABI_MAJOR << 16) | TH_ABI_MINOR))

/* Name of the one exported entry point. */
#define TH_ENTRY_SYMBOL "tickhost_plugin_entry"

#if defined(_WIN32)
#define TH_EXPORT __declspec(dllexport)
#else
#define TH_EXPORT __attribute__((visibility("default")))
#endif

/* ---- Status codes: returned by run/init and by host services. ---------------------------------------- */
typedef int32_t th_status;

#define TH_OK 0                   /* success */
#define TH_ERROR 1                /* the task failed; the host logs the message set with set_error */
#define TH_CANCELLED 2            /* the task saw its cancellation flag and gave up early */

/* Host service errors (negative). */
#define TH_E_STALE_CONTEXT (-1)   /* the th_ctx is no longer valid (run returned, plugin shut down) */
#define TH_E_NOT_FOUND (-2)       /* config key absent */
#define TH_E_WRONG_TYPE (-3)      /* config key present with another type */
#define TH_E_INVALID_ARGUMENT (-4) /* null pointer, bad struct_size, bad value */
#define TH_E_NOT_ALLOWED (-5)     /* e.g. add_task outside init */

/* Load errors (named by the host when it refuses a plugin; th_status_name below names every code). */
#define TH_E_NOT_A_LIBRARY (-100)   /* the loader refused the file (dlerror text is logged) */
#define TH_E_NO_ENTRY (-101)        /* tickhost_plugin_entry is not exported */
#define TH_E_ENTRY_NULL (-102)      /* the entry returned NULL */
#define TH_E_ABI_MAJOR (-103)       /* plugin's ABI major differs from the host's */
#define TH_E_ABI_MINOR_TOO_NEW (-104) /* plugin needs a newer minor than the host has */
#define TH_E_BAD_DESCRIPTOR (-105)  /* struct too small, missing name/run, bad interval, duplicate task */
#define TH_E_INIT_FAILED (-106)     /* init returned an error or threw, or its tasks could not be scheduled */
#define TH_E_DUPLICATE_NAME (-107)  /* another loaded plugin has the same name */
#define TH_E_NO_TASKS (-108)        /* the plugin declared no task */
#define TH_E_INSECURE_FILE (-109)   /* the file or plugin_dir is writable by group/others, owned by another user,
                                       or the file is a symlink (see host.toml allow_insecure, allow_symlinks) */
#define TH_E_CHECKSUM_MISMATCH (-110) /* the file's SHA-256 differs from [plugins.<name>] sha256 in host.toml */
/* Added in host 1.1.0 (values only; the ABI stays 1.0, and a 1.0 host never returns them). */
#define TH_E_FILE_TOO_LARGE (-111)  /* the file is larger than [host] max_plugin_size (default 256 MiB) */
#define TH_E_TOO_MANY_TASKS (-112)  /* static tasks + add_task exceed [host] max_tasks_per_plugin (default 100000) */
#define TH_E_ENTRY_TIMEOUT (-113)   /* tickhost_plugin_entry did not return within the plugin's timeout */

/* The longest interval or timeout the host accepts anywhere (static descriptors, add_task, host.toml):
 * 365 days, in ns. A longer or non-positive interval is a bad value (TH_E_BAD_DESCRIPTOR in a descriptor,
 * TH_E_INVALID_ARGUMENT from add_task, a file:line:column error in host.toml). */
#define TH_MAX_DURATION_NS INT64_C(31536000000000000)

/* The most bytes of one log or set_error text the host prints (4 KiB); the rest is cut and counted. */
#define TH_MAX_TEXT_BYTES 4096

/* ---- Log levels -------------------------------------------------------------------------------------- */
#define TH_LOG_TRACE 0
#define TH_LOG_DEBUG 1
#define TH_LOG_INFO 2
#define TH_LOG_WARN 3
#define TH_LOG_ERROR 4

/* ---- Context handle -----------------------------------------------------------------------------------
 * An opaque value the host passes to init, run and shutdown; hand it back to th_host_api functions.
 * Passed by value (8 bytes). Valid only during the call it was passed to; after that the host refuses it
 * with TH_E_STALE_CONTEXT. Never dereference or interpret it. */
typedef struct th_ctx {
    uint64_t handle;
} th_ctx;

typedef struct th_task_def th_task_def;

/* ---- Host services --------------------------------------------------------------------------------------
 * A table of function pointers, owned by the host, valid from tickhost_plugin_entry until the plugin is
 * unloaded. It only grows at the end: check `struct_size` before calling a member added after 1.0.
 * Strings passed in are `const char*` + length (need not be NUL-terminated); the host copies what it keeps.
 * Strings passed out point into host memory, are UTF-8 and NUL-terminated (their length is given too, where
 * the member has an out_len, and never counts the NUL); each member says how long they stay valid.
 * No member ever unwinds into the plugin; one that cannot do its work for lack of memory returns TH_ERROR
 * (log: drops the message). */
typedef struct th_host_api {
    uint32_t struct_size;  /* sizeof(th_host_api) of the host */
    uint32_t abi_version;  /* TH_ABI_VERSION of the host */

    /* @since 1.0. Log `len` bytes of `msg` at `level`, tagged with the plugin and task of `ctx`. Each call
     * is exactly one log record: the text is never a format string ("{}", "%s" print as they are), and
     * it is escaped so that it cannot start a line of its own or drive a terminal: a newline, CR and tab
     * print as the two characters \n, \r, \t; NUL, ESC, other C0 controls and DEL as \x00, \x1b, ...;
     * C1 controls and U+2028/U+2029 as \u009b, \u2028, ...; bytes that are not valid UTF-8 as \xNN
     * (valid UTF-8 prints as it is; backslashes too). At most TH_MAX_TEXT_BYTES (4096) bytes of `msg` are
     * printed, cut at a character boundary and followed by " … (N bytes truncated)". A message below
     * the host's level costs one compare (no lock, no copy). NULL `msg` logs an empty text. */
    void (*log)(th_ctx ctx, int32_t level, const char* msg, size_t len);

    /* @since 1.0. 1 when the host wants this call to end early (its deadline passed, or the host is
     * stopping the task: plugin unload or reload, host shutdown), 0 otherwise. A stop call is cancelled
     * only by its own deadline. Stale contexts answer 1. Cheap: poll it in loops. */
    int32_t (*is_cancelled)(th_ctx ctx);

    /* @since 1.0. Nanoseconds left before this call's deadline (negative once past). Stale: 0. */
    int64_t (*remaining_ns)(th_ctx ctx);

    /* @since 1.0. This call's deadline on the host's monotonic clock, in ns. Stale: 0. */
    int64_t (*deadline_ns)(th_ctx ctx);

    /* @since 1.0. Config lookups in this plugin's [plugins.<name>.config] table. `key` may be a dotted
     * path ("db.port"). On success writes *out and returns TH_OK; TH_E_NOT_FOUND, TH_E_WRONG_TYPE,
     * TH_E_STALE_CONTEXT otherwise. A string's bytes stay valid until the plugin's next shutdown (unload,
     * or a settings change, which restarts the plugin with the new config): copy what you keep longer.
     * Durations accept strings with units ("250ms", "10s", "5m", "1h") and are returned in ns. */
    th_status (*config_string)(th_ctx ctx, const char* key, size_t key_len, const char** out, size_t* out_len);
    th_status (*config_int)(th_ctx ctx, const char* key, size_t key_len, int64_t* out);
    th_status (*config_bool)(th_ctx ctx, const char* key, size_t key_len, int32_t* out);
    th_status (*config_duration_ns)(th_ctx ctx, const char* key, size_t key_len, int64_t* out);

    /* @since 1.0. Attach an error message to the current call; the host logs it with the task's name when
     * run/init returns a non-OK status. Last call wins. Cut after TH_MAX_TEXT_BYTES (4096) bytes and escaped
     * as log does (one line; " … (N bytes truncated)" when cut). TH_E_INVALID_ARGUMENT for NULL `msg`
     * with `len` > 0. */
    th_status (*set_error)(th_ctx ctx, const char* msg, size_t len);

    /* @since 1.0. From init only: declare one more task (copied by the host, name too). Lets the number of
     * tasks come from config. Returns TH_OK, or:
     *   TH_E_NOT_ALLOWED      outside init;
     *   TH_E_INVALID_ARGUMENT NULL `task`, struct_size too small, NULL run, a name that is empty, longer
     *                         than 64 bytes, or has spaces, control characters or invalid UTF-8, a name
     *                         another task of this plugin has (static or declared), an interval <= 0 or
     *                         > TH_MAX_DURATION_NS, a timeout < 0 or > TH_MAX_DURATION_NS;
     *   TH_E_TOO_MANY_TASKS   static + declared tasks would exceed [host] max_tasks_per_plugin (default
     *                         100000). The task is not added, and once init returns the plugin is refused
     *                         with TH_E_TOO_MANY_TASKS (its shutdown is called if init returned TH_OK).
     * A refused task is not added; init may carry on (or fail). */
    th_status (*add_task)(th_ctx ctx, const th_task_def* task);

    /* @since 1.0. The time this run was scheduled for, on the host's monotonic clock, in ns: the tick it
     * belongs to (run k of a task is due at its first due time + k * interval). now - due is the run's
     * lateness; label periodic data with it rather than with the time the run happened to start. For init,
     * shutdown and stop calls: the time the call started. Stale: 0. */
    int64_t (*due_ns)(th_ctx ctx);
} th_host_api;

/* ---- What the host tells the plugin at entry ------------------------------------------------------------ */
typedef struct th_host_info {
    uint32_t struct_size;      /* sizeof(th_host_info) of the host */
    uint32_t abi_version;      /* TH_ABI_VERSION of the host */
    const th_host_api* api;    /* host services, valid until unload */
    const char* host_version;  /* NUL-terminated, e.g. "1.0.0" */
} th_host_info;

/* ---- A task ---------------------------------------------------------------------------------------------
 * run(state, ctx, is_stop):
 *   is_stop == 0: one periodic run. Return TH_OK, or TH_ERROR after set_error(ctx, ...).
 *   is_stop == 1: the stop call, made exactly once when the task is removed (plugin removed or replaced, host
 *                 stopping), after its last run returned. Bounded by the same timeout. Exception: an isolated
 *                 plugin's tasks get none when its process died or was killed (see "Isolation" above).
 *   `state` is the task's own `state` member if non-NULL, else the plugin state that init stored.
 * Required: name, run, 0 < default_interval_ns <= TH_MAX_DURATION_NS; 0 <= default_timeout_ns <=
 * TH_MAX_DURATION_NS. A static descriptor that breaks one is refused with TH_E_BAD_DESCRIPTOR. */
typedef th_status (*th_run_fn)(void* state, th_ctx ctx, int32_t is_stop);

struct th_task_def {
    uint32_t struct_size;        /* sizeof(th_task_def) */
    const char* name;            /* required; unique within the plugin; 1..64 bytes of UTF-8, no spaces or
                                    control characters */
    int64_t default_interval_ns; /* required, 1..TH_MAX_DURATION_NS; host.toml may override */
    int64_t default_timeout_ns;  /* optional, 0..TH_MAX_DURATION_NS; 0 = the host's default_timeout (10 s
                                    unless configured) */
    th_run_fn run;               /* required */
    void* state;                 /* optional; passed to run instead of the plugin state when non-NULL */
};

/* Strings in th_task_def and th_plugin_def (names, version, description) have no length member: each must
 * be a NUL-terminated UTF-8 string that stays valid for as long as its struct (add_task copies its name). */

/* ---- The plugin -----------------------------------------------------------------------------------------
 * init(ctx, &state): optional. Read config, allocate state, declare tasks with add_task. Return TH_OK, or
 *   TH_ERROR after set_error (the plugin is then refused and unloaded; shutdown is not called).
 * shutdown(state): optional. Called once after every task's stop call, before unload, and before each
 *   restart in place (a settings change: init is then called again on the same library). Free state here.
 *   Not called for an isolated plugin whose process died or was killed (see "Isolation" above).
 * More static tasks than [host] max_tasks_per_plugin: TH_E_TOO_MANY_TASKS, init is not called. */
typedef th_status (*th_init_fn)(th_ctx ctx, void** state);
typedef void (*th_shutdown_fn)(void* state);

typedef struct th_plugin_def {
    uint32_t struct_size;        /* sizeof(th_plugin_def) */
    uint16_t abi_major;          /* TH_ABI_MAJOR the plugin was built against */
    uint16_t abi_minor;          /* TH_ABI_MINOR the plugin was built against */
    const char* name;            /* required; the key of [plugins.<name>]; [A-Za-z0-9_-], 1..64 bytes */
    const char* version;         /* optional; free-form, e.g. "1.2.0" (logged escaped, first 64 bytes) */
    const char* description;     /* optional; one line (logged escaped, first 256 bytes) */
    const th_task_def* tasks;    /* static tasks; may be NULL when init declares them */
    uint32_t task_count;
    th_init_fn init;             /* optional */
    th_shutdown_fn shutdown;     /* optional */
} th_plugin_def;

/* Required export. Called once per load, before anything else. Return a pointer to a descriptor that stays
 * valid until unload (a static), or NULL to refuse loading. */
typedef const th_plugin_def* (*th_entry_fn)(const th_host_info* info);
TH_EXPORT const th_plugin_def* tickhost_plugin_entry(const th_host_info* info);

/* The name of a status code ("TH_E_STALE_CONTEXT"), as the host writes it in its log; "TH_UNKNOWN" for a
 * value this header does not define. A header function, not part of the host API table: any plugin (or
 * tool) can call it, in every host version. The returned string is static. */
static inline const char* th_status_name(th_status s) {
    switch (s) {
    case TH_OK: return "TH_OK";
    case TH_ERROR: return "TH_ERROR";
    case TH_CANCELLED: return "TH_CANCELLED";
    case TH_E_STALE_CONTEXT: return "TH_E_STALE_CONTEXT";
    case TH_E_NOT_FOUND: return "TH_E_NOT_FOUND";
    case TH_E_WRONG_TYPE: return "TH_E_WRONG_TYPE";
    case TH_E_INVALID_ARGUMENT: return "TH_E_INVALID_ARGUMENT";
    case TH_E_NOT_ALLOWED: return "TH_E_NOT_ALLOWED";
    case TH_E_NOT_A_LIBRARY: return "TH_E_NOT_A_LIBRARY";
    case TH_E_NO_ENTRY: return "TH_E_NO_ENTRY";
    case TH_E_ENTRY_NULL: return "TH_E_ENTRY_NULL";
    case TH_E_ABI_MAJOR: return "TH_E_ABI_MAJOR";
    case TH_E_ABI_MINOR_TOO_NEW: return "TH_E_ABI_MINOR_TOO_NEW";
    case TH_E_BAD_DESCRIPTOR: return "TH_E_BAD_DESCRIPTOR";
    case TH_E_INIT_FAILED: return "TH_E_INIT_FAILED";
    case TH_E_DUPLICATE_NAME: return "TH_E_DUPLICATE_NAME";
    case TH_E_NO_TASKS: return "TH_E_NO_TASKS";
    case TH_E_INSECURE_FILE: return "TH_E_INSECURE_FILE";
    case TH_E_CHECKSUM_MISMATCH: return "TH_E_CHECKSUM_MISMATCH";
    case TH_E_FILE_TOO_LARGE: return "TH_E_FILE_TOO_LARGE";
    case TH_E_TOO_MANY_TASKS: return "TH_E_TOO_MANY_TASKS";
    case TH_E_ENTRY_TIMEOUT: return "TH_E_ENTRY_TIMEOUT";
    default: return "TH_UNKNOWN";
    }
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* TICKHOST_PLUGIN_H */
