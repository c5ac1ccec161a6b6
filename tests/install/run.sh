#!/usr/bin/env bash
# Install tests: one step per ctest test (see CMakeLists.txt), all in $TH_WORK, offline, real builds.
#   install     cmake --install into a temp prefix
#   cpp_plugin  the guide's greeter project (find_package(tickhost) + tickhost_add_plugin), out of tree
#   c_plugin    a C plugin built by a plain Makefile with pkg-config only
#   sdk_only    find_package(tickhost COMPONENTS sdk) with none of the host's dependencies, a C-only project
#   new_plugin  `tickhost new-plugin` (C++ and C) builds and passes `tickhost check` and `run-once` as generated
#   embed       the embedding guide's application: its own task next to a plugin directory, then SIGTERM
#   host        the installed `tickhost` checks, runs once, and hosts the plugins built above
set -euo pipefail
step=$1
: "${TH_BUILD:?}" "${TH_WORK:?}" "${TH_SRC:?}" "${TH_CMAKE:?}"
P=$TH_WORK/prefix
export PATH=$P/bin:$PATH
export PKG_CONFIG_PATH=$P/lib/pkgconfig
cmake_project() {  # cmake_project <src> <build>: configure and build against the installed package only
    "$TH_CMAKE" -S "$1" -B "$2" -G "$TH_GENERATOR" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_C_COMPILER="$TH_CC" -DCMAKE_CXX_COMPILER="$TH_CXX" >"$2.configure.log" 2>&1 ||
        { cat "$2.configure.log"; exit 1; }
    "$TH_CMAKE" --build "$2" -j2 >"$2.build.log" 2>&1 || { cat "$2.build.log"; exit 1; }
}
fail() { echo "FAIL: $*" >&2; exit 1; }
# wait_for <seconds> <command...>: polls until the command succeeds (generous bounds; never a timing assert).
wait_for() {
    local until=$((SECONDS + $1)); shift
    until "$@"; do [ $SECONDS -lt $until ] || return 1; sleep 0.05; done
}
has() { grep -q -- "$2" "$1" 2>/dev/null; }
count_at_least() { [ -f "$1" ] && [ "$(tr -dc 0-9 <"$1")" -ge "$2" ] 2>/dev/null; }
stop_and_wait() {  # stop_and_wait <pid>: SIGTERM, then its exit status (fails after 30 s)
    kill -TERM "$1"
    local until=$((SECONDS + 30))
    while kill -0 "$1" 2>/dev/null; do [ $SECONDS -lt $until ] || { kill -KILL "$1"; fail "pid $1 did not stop"; }; sleep 0.05; done
    wait "$1"
}

case $step in
install)
    rm -rf "$TH_WORK" && mkdir -p "$TH_WORK"
    "$TH_CMAKE" --install "$TH_BUILD" --prefix "$P" --config "$TH_CONFIG" >"$TH_WORK/install.log"
    for f in bin/tickhost include/tickhost/plugin.h include/tickhost/plugin.hpp include/tickhost/version.h \
             include/tickhost/host.hpp lib/libtickhost.a lib/cmake/tickhost/tickhostConfig.cmake \
             lib/cmake/tickhost/tickhostConfigVersion.cmake lib/cmake/tickhost/TickhostPlugin.cmake \
             lib/pkgconfig/tickhost-sdk.pc share/doc/tickhost/writing-plugins.md share/doc/tickhost/embedding.md \
             share/doc/tickhost/README.md share/doc/tickhost/security.md share/doc/tickhost/CHANGELOG.md \
             share/doc/tickhost/examples/host.toml lib/cmake/tickhost/tickhostSdkTargets.cmake \
             lib/cmake/tickhost/tickhostHostTargets.cmake; do
        [ -e "$P/$f" ] || fail "not installed: $f"
    done
    tickhost --version | grep -q "plugin ABI" || fail "installed tickhost --version"
    for c in check run-once new-plugin; do tickhost $c --help | grep -q "usage: tickhost $c" || fail "$c --help"; done
    ;;
cpp_plugin)
    d=$TH_WORK/cpp && rm -rf "$d" && mkdir -p "$d/src"
    cp "$TH_DOC_WP/CMakeLists.txt" "$TH_DOC_WP/greeter.cpp" "$d/src/"
    cmake_project "$d/src" "$d/build"
    [ -f "$d/build/greeter.so" ] || fail "greeter.so not built"
    # A major the package does not have is refused by find_package (SameMajorVersion).
    mkdir -p "$d/v2" && printf 'cmake_minimum_required(VERSION 3.20)\nproject(v2 LANGUAGES NONE)\nfind_package(tickhost 2.0 CONFIG QUIET)\nif(tickhost_FOUND)\n  message(FATAL_ERROR "tickhost 2.0 accepted")\nendif()\n' >"$d/v2/CMakeLists.txt"
    "$TH_CMAKE" -S "$d/v2" -B "$d/v2/build" -DCMAKE_PREFIX_PATH="$P" >/dev/null || fail "find_package(tickhost 2.0) was accepted"
    ;;
c_plugin)
    d=$TH_WORK/c && rm -rf "$d" && mkdir -p "$d"
    [ "$(pkg-config --modversion tickhost-sdk)" = "$TH_VERSION" ] || fail "pkg-config --modversion"
    (cd "$d" && make -s -f "$TH_SRC/c_plugin/Makefile" VPATH="$TH_SRC/c_plugin" CC="$TH_CC") || fail "make"
    [ -f "$d/cprobe.so" ] || fail "cprobe.so not built"
    ;;
sdk_only)
    # A C plugin author's project needs the SDK component only: none of the host's dependencies, no C++.
    d=$TH_WORK/sdk && rm -rf "$d" && mkdir -p "$d/src"
    cp "$TH_SRC/c_plugin/cprobe.c" "$d/src/"
    printf '%s\n' 'cmake_minimum_required(VERSION 3.20)' 'project(sdk_only LANGUAGES C)' \
        'find_package(tickhost 1.0 CONFIG REQUIRED COMPONENTS sdk)' \
        'if(TARGET tickhost::host)' '  message(FATAL_ERROR "COMPONENTS sdk brought tickhost::host")' 'endif()' \
        'tickhost_add_plugin(cprobe SOURCES cprobe.c)' >"$d/src/CMakeLists.txt"
    nodeps=(-DCMAKE_DISABLE_FIND_PACKAGE_spdlog=ON -DCMAKE_DISABLE_FIND_PACKAGE_tomlplusplus=ON
            -DCMAKE_DISABLE_FIND_PACKAGE_fmt=ON -DCMAKE_DISABLE_FIND_PACKAGE_Threads=ON)
    "$TH_CMAKE" -S "$d/src" -B "$d/build" -G "$TH_GENERATOR" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_C_COMPILER="$TH_CC" \
        "${nodeps[@]}" >"$d/configure.log" 2>&1 || { cat "$d/configure.log"; fail "sdk component needed more"; }
    "$TH_CMAKE" --build "$d/build" >"$d/build.log" 2>&1 || { cat "$d/build.log"; fail "sdk-only build"; }
    tickhost check "$d/build/cprobe.so" >"$d/check.txt" || { cat "$d/check.txt"; fail "check the sdk-only plugin"; }
    # The host component says what it misses, and that a plugin needs only the SDK.
    mkdir -p "$d/host"
    printf '%s\n' 'cmake_minimum_required(VERSION 3.20)' 'project(host_wanted LANGUAGES C CXX)' \
        'find_package(tickhost 1.0 CONFIG REQUIRED COMPONENTS host)' >"$d/host/CMakeLists.txt"
    "$TH_CMAKE" -S "$d/host" -B "$d/host/build" -DCMAKE_PREFIX_PATH="$P" "${nodeps[@]}" >"$d/host.log" 2>&1 &&
        fail "COMPONENTS host passed without spdlog"
    has "$d/host.log" "COMPONENTS sdk" || { cat "$d/host.log"; fail "no hint for the missing host dependencies"; }
    # Plain find_package(tickhost) still means everything.
    mkdir -p "$d/all"
    printf '%s\n' 'cmake_minimum_required(VERSION 3.20)' 'project(all LANGUAGES C CXX)' \
        'find_package(tickhost 1.0 CONFIG REQUIRED)' \
        'if(NOT TARGET tickhost::host OR NOT TARGET tickhost::sdk)' '  message(FATAL_ERROR "targets missing")' 'endif()' \
        >"$d/all/CMakeLists.txt"
    "$TH_CMAKE" -S "$d/all" -B "$d/all/build" -DCMAKE_PREFIX_PATH="$P" >"$d/all.log" 2>&1 || { cat "$d/all.log"; fail "find_package(tickhost)"; }
    ;;
new_plugin)
    d=$TH_WORK/new && rm -rf "$d" && mkdir -p "$d" && cd "$d"
    tickhost new-plugin np_cpp >/dev/null
    tickhost new-plugin np-c --lang c --dir np_c >/dev/null
    tickhost new-plugin np_cpp >/dev/null 2>&1 && fail "new-plugin overwrote a project"
    tickhost new-plugin "bad name" >/dev/null 2>&1 && fail "new-plugin accepted a bad name"
    for p in np_cpp:np_cpp np_c:np-c; do
        dir=${p%%:*} name=${p#*:}
        cmake_project "$d/$dir" "$d/$dir/build"
        tickhost check "$d/$dir/build/$name.so" >"$d/$dir.check" || { cat "$d/$dir.check"; fail "check $name"; }
        has "$d/$dir.check" "name         $name" || fail "check output of $name"
        tickhost run-once "$d/$dir/build/$name.so" >"$d/$dir.once" || { cat "$d/$dir.once"; fail "run-once $name"; }
        has "$d/$dir.once" "hello" || fail "run-once $name: no log line"
        has "$d/$dir.once" "result ok" || fail "run-once $name: no result"
    done
    ;;
embed)
    d=$TH_WORK/embed && rm -rf "$d" && mkdir -p "$d/src" "$d/run/plugins.d"
    cp "$TH_DOC_EMBED/CMakeLists.txt" "$TH_DOC_EMBED/embed.cpp" "$d/src/"
    cmake_project "$d/src" "$d/build"
    cp "$TH_WORK/cpp/build/greeter.so" "$TH_WORK/c/cprobe.so" "$d/run/plugins.d/"
    cat >"$d/run/host.toml" <<TOML
[host]
plugin_dir = "plugins.d"
shadow_dir = "shadow"
workers = 2
[plugins.greeter]
interval = "50ms"
[plugins.greeter.config]
who = "embedder"
[plugins.cprobe]
interval = "50ms"
[plugins.cprobe.config]
path = "$d/run/cprobe.count"
TOML
    "$d/build/embed_example" "$d/run/host.toml" >"$d/app.log" 2>&1 &
    pid=$!
    wait_for 60 has "$d/app.log" "hello, embedder #2" || { cat "$d/app.log"; fail "greeter did not run in the app"; }
    wait_for 60 count_at_least "$d/run/cprobe.count" 2 || { cat "$d/app.log"; fail "cprobe did not run in the app"; }
    status=0; stop_and_wait $pid || status=$?
    [ $status -eq 0 ] || { cat "$d/app.log"; fail "embed_example exited $status"; }
    grep -Eq "app/flush: final flush after [1-9][0-9]* runs" "$d/app.log" || { cat "$d/app.log"; fail "app task"; }
    grep -Eq "^[0-9:.]+ info  \[plugin.greeter\] \[greet\] goodbye, embedder" "$d/app.log" ||
        { cat "$d/app.log"; fail "plugin logs not routed to the app's logger"; }
    has "$d/run/cprobe.count" "stopped" || fail "cprobe got no stop call"
    ;;
host)
    d=$TH_WORK/host && rm -rf "$d" && mkdir -p "$d/plugins.d"
    cp "$TH_WORK/cpp/build/greeter.so" "$TH_WORK/c/cprobe.so" "$d/plugins.d/"
    tickhost check "$d/plugins.d/greeter.so" "$d/plugins.d/cprobe.so" >"$d/check.txt" || { cat "$d/check.txt"; fail "check"; }
    grep -q "version      2.1.0" "$d/check.txt" && grep -q "greet every 1s, timeout 10s" "$d/check.txt" || { cat "$d/check.txt"; fail "check output"; }
    tickhost check --json "$d/plugins.d/cprobe.so" | grep -q '"name":"cprobe","version":"2.1.0"' || fail "check --json"
    tickhost check "$TH_DOC_WP/greeter.cpp" >"$d/bad.txt" && fail "check accepted a source file"
    grep -q "refused: TH_E_NOT_A_LIBRARY" "$d/bad.txt" || { cat "$d/bad.txt"; fail "check error"; }
    tickhost run-once "$d/plugins.d/greeter.so" --set who=tester >"$d/once.txt" || { cat "$d/once.txt"; fail "run-once"; }
    has "$d/once.txt" "hello, tester #1" && has "$d/once.txt" "goodbye, tester" || { cat "$d/once.txt"; fail "run-once output"; }
    tickhost run-once "$d/plugins.d/cprobe.so" --set path="$d/once.count" >"$d/once2.txt" || { cat "$d/once2.txt"; fail "run-once cprobe"; }
    [ "$(cat "$d/once.count")" = "stopped 1" ] || fail "run-once cprobe: $(cat "$d/once.count")"
    tickhost run-once "$d/plugins.d/cprobe.so" >"$d/once3.txt" && fail "run-once without config passed"
    has "$d/once3.txt" "TH_E_INIT_FAILED" || { cat "$d/once3.txt"; fail "run-once init error"; }
    cat >"$d/host.toml" <<TOML
[host]
plugin_dir = "plugins.d"
shadow_dir = "shadow"
[plugins.cprobe]
interval = "50ms"
[plugins.cprobe.config]
path = "$d/cprobe.count"
TOML
    tickhost --config "$d/host.toml" >"$d/host.log" 2>&1 &
    pid=$!
    wait_for 60 count_at_least "$d/cprobe.count" 2 || { cat "$d/host.log"; fail "cprobe did not run in the host"; }
    wait_for 60 has "$d/host.log" "hello, world #1" || { cat "$d/host.log"; fail "greeter did not run in the host"; }
    status=0; stop_and_wait $pid || status=$?
    [ $status -eq 0 ] || { cat "$d/host.log"; fail "tickhost exited $status"; }
    has "$d/host.log" "loaded plugin 'cprobe' 2.1.0" || { cat "$d/host.log"; fail "host log names the version"; }
    has "$d/cprobe.count" "stopped" || fail "cprobe got no stop call in the host"
    ;;
*) fail "unknown step $step" ;;
esac
echo "ok: $step"
