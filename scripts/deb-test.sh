#!/usr/bin/env bash
# The Debian packages end to end (CI stage "Debian packages"; as root, with Debian's archive reachable):
#   1. builds tickhost_<version>-1_amd64.deb and tickhost-dev_<version>-1_amd64.deb (cmake/TickhostPackage.cmake):
#      a Release-like build (CMAKE_BUILD_TYPE=None with dpkg-buildflags' hardening flags, as Debian builds), cpack
#   2. runs lintian on both: any error fails (the warnings left are listed in docs/operating.md)
#   3. meanwhile creates a bare Debian 12 (mmdebstrap --variant=minbase, plus g++, cmake and make to build a
#      plugin) inside the build tree, then in it: `apt-get install ./tickhost_*.deb ./tickhost-dev_*.deb` (their
#      dependencies come from the archive), checks the system user and the files, builds a plugin project made
#      by `tickhost new-plugin` against tickhost-dev, runs `tickhost check` and `tickhost run-once` on it, runs
#      the packaged /etc/tickhost/host.toml as the tickhost user with that plugin in /etc/tickhost/plugins.d
#      until it runs, then purges the package.
# Everything lives in the build tree (default build-deb/; nothing is cached elsewhere). The chroot's mounts (proc,
# and mmdebstrap's own while it runs; never a bind of /dev) are made in a mount namespace of their own (unshare),
# and the chroot is removed only after checking that nothing is mounted below it, with rm --one-file-system
# (which never descends into another file system). Prints the time of each step.
#   scripts/deb-test.sh [BUILD_DIR]          KEEP_CHROOT=1 keeps BUILD_DIR/chroot for a look afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
build=$(realpath -m "${1:-build-deb}")
t_start=$(date +%s)
step_t0=$t_start
step() {  # step NAME: prints the time of the previous step and starts the next
    local now
    now=$(date +%s)
    echo "deb-test: [$((now - step_t0)) s] done; $1 ..."
    step_t0=$now
}
fail() { echo "deb-test: FAIL: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "needs root (chroot, mount); run it as root"
scripts/deps.sh deb
mkdir -p "$build/tmp"
export TMPDIR=$build/tmp

root=$build/chroot
mounted_below() { grep -F " $root/" /proc/self/mountinfo || grep -F " $root " /proc/self/mountinfo; }
remove_chroot() {
    [ -e "$root" ] || return 0
    if mounted_below >/dev/null; then
        echo "deb-test: something is still mounted below $root; NOT removing it:" >&2
        mounted_below >&2
        return 1
    fi
    rm -rf --one-file-system "$root"
}
bootstrap_pid=""
cleanup() {
    [ -n "$bootstrap_pid" ] && kill "$bootstrap_pid" 2>/dev/null && wait "$bootstrap_pid" 2>/dev/null
    [ "${KEEP_CHROOT:-0}" = 1 ] || remove_chroot || true
}
trap cleanup EXIT
remove_chroot || fail "cannot start from a clean chroot"

# A private mount namespace: its mounts vanish with its last process and are never seen outside. Inside a chroot
# (fresh-ci.sh, CI's proof run) "/" is no mount point and its propagation cannot be changed: a new namespace all
# the same, whose mounts reach the parent only through a shared mount; nothing but proc (and mmdebstrap's devpts
# and proc while it runs) is mounted in it, and each is unmounted before this script goes on.
ns=(unshare --mount --propagation private)
"${ns[@]}" true 2>/dev/null || ns=(unshare --mount --propagation unchanged)

# 3a (in the background, while the packages build): the bare Debian 12, in a mount namespace of its own.
# dpkg under eatmydata (mmdebstrap's hook): no fsync (a throw-away chroot; it halves the time of dpkg's
# part); the package lists stay for apt-get install below.
echo "deb-test: mmdebstrap --variant=minbase bookworm (+ g++ cmake make) into $root, in the background"
"${ns[@]}" mmdebstrap --mode=root --variant=minbase --include=g++,cmake,make --skip=cleanup/apt/lists \
    --skip=chroot/mount/sys \
    --hook-dir=/usr/share/mmdebstrap/hooks/eatmydata --aptopt='Acquire::Languages "none"' \
    bookworm "$root" >"$build/mmdebstrap.log" 2>&1 &
bootstrap_pid=$!
t_bootstrap=$(date +%s)

# 1. The packages: Debian's compiler and linker flags (hardening on, no -g: the binaries are stripped).
step "building the packages in $build"
export DEB_BUILD_MAINT_OPTIONS=hardening=+all
cflags="$(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CFLAGS | sed 's/\(^\| \)-g\( \|$\)/ /') -DNDEBUG"
cxxflags="$(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CXXFLAGS | sed 's/\(^\| \)-g\( \|$\)/ /') -DNDEBUG"
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=None -DCMAKE_INSTALL_PREFIX=/usr -DTICKHOST_DEB=ON \
    -DTICKHOST_BUILD_TESTS=OFF -DTICKHOST_BUILD_PLUGINS=OFF -DTICKHOST_BUILD_BENCH=OFF -DTICKHOST_FAULT_SEAMS=OFF \
    "-DCMAKE_C_FLAGS=$cflags" "-DCMAKE_CXX_FLAGS=$cxxflags" \
    "-DCMAKE_EXE_LINKER_FLAGS=$(dpkg-buildflags --get LDFLAGS)" >"$build/configure.log" 2>&1 ||
    { cat "$build/configure.log"; fail "cmake configure"; }
cmake --build "$build" -j"$(nproc)" >"$build/build.log" 2>&1 || { tail -50 "$build/build.log"; fail "build"; }
rm -f "$build"/*.deb
(cd "$build" && cpack -G DEB) >"$build/cpack.log" 2>&1 || { cat "$build/cpack.log"; fail "cpack"; }
version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")
deb=$build/tickhost_${version}-1_amd64.deb
dev=$build/tickhost-dev_${version}-1_amd64.deb
[ -f "$deb" ] && [ -f "$dev" ] || fail "cpack made $(ls "$build"/*.deb 2>/dev/null | xargs -n1 basename | tr '\n' ' ')"
ls -l "$deb" "$dev"

# 2. lintian: no error (it prints every tag it finds, warnings and infos included).
step "lintian on both packages"
lint=0
lintian --fail-on error --pedantic --info --display-info "$deb" "$dev" >"$build/lintian.log" 2>&1 || lint=$?
grep -v '^running with root privileges' "$build/lintian.log" || true
[ "$lint" -eq 0 ] || fail "lintian found errors (above; exit $lint)"

# 3b. The chroot: install both packages with apt, then the checks (tests below, run inside it).
step "waiting for the bare Debian 12"
wait "$bootstrap_pid" || { tail -30 "$build/mmdebstrap.log"; fail "mmdebstrap"; }
bootstrap_pid=""
echo "deb-test: mmdebstrap took $(( $(date +%s) - t_bootstrap )) s in the background ($(du -sh "$root" | cut -f1))"
step "apt-get install ./tickhost_*.deb ./tickhost-dev_*.deb in the chroot, and the checks"
mkdir -p "$root/tmp/debs"
cp "$deb" "$dev" "$root/tmp/debs/"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
cat >"$root/tmp/inside.sh" <<'INSIDE'
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin
fail() { echo "deb-test (chroot): FAIL: $*" >&2; exit 1; }
cd /tmp/debs
apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 ./tickhost_*.deb ./tickhost-dev_*.deb
# The system user: made by postinst with useradd, a system uid, no login.
getent passwd tickhost || fail "no user tickhost"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd tickhost)
[ "$uid" -lt 1000 ] || fail "tickhost has uid $uid, not a system uid"
[ "$(getent group tickhost | cut -d: -f3)" = "$gid" ] || fail "no group tickhost"
[ "$home" = /var/lib/tickhost ] && [ "$shell" = /usr/sbin/nologin ] || fail "home $home, shell $shell"
# The files, their owners and modes.
for f in /usr/bin/tickhost /usr/libexec/tickhost/tickhost-worker /etc/tickhost/host.toml \
         /lib/systemd/system/tickhost.service /lib/systemd/system/tickhost@.service \
         /usr/share/man/man1/tickhost.1.gz /usr/share/doc/tickhost/copyright /usr/share/doc/tickhost/changelog.Debian.gz \
         /usr/share/doc/tickhost-dev/copyright /usr/include/tickhost/plugin.h /usr/include/tickhost/host.hpp \
         /usr/lib/x86_64-linux-gnu/libtickhost.a /usr/lib/x86_64-linux-gnu/cmake/tickhost/tickhostConfig.cmake \
         /usr/lib/x86_64-linux-gnu/pkgconfig/tickhost-sdk.pc; do
    [ -e "$f" ] || fail "not installed: $f"
done
[ "$(stat -c '%U:%G %a' /etc/tickhost/plugins.d)" = "root:root 755" ] || fail "plugins.d: $(stat -c '%U:%G %a' /etc/tickhost/plugins.d)"
[ "$(stat -c '%U:%G %a' /var/lib/tickhost)" = "tickhost:tickhost 700" ] || fail "/var/lib/tickhost: $(stat -c '%U:%G %a' /var/lib/tickhost)"
grep -qx /etc/tickhost/host.toml /var/lib/dpkg/info/tickhost.conffiles || fail "host.toml is not a conffile"
grep -q '^ExecStart=/usr/bin/tickhost --config /etc/tickhost/host.toml$' /lib/systemd/system/tickhost.service ||
    fail "tickhost.service: $(grep ExecStart /lib/systemd/system/tickhost.service)"
tickhost --version
# A plugin project, as an author starts one, built against tickhost-dev, checked and run once.
mkdir -p /tmp/author && cd /tmp/author
tickhost new-plugin debdemo
cmake -S debdemo -B debdemo/build -DCMAKE_BUILD_TYPE=Release >/tmp/author/cmake.log 2>&1 || { cat /tmp/author/cmake.log; fail "cmake"; }
cmake --build debdemo/build >/tmp/author/build.log 2>&1 || { cat /tmp/author/build.log; fail "build"; }
tickhost check debdemo/build/debdemo.so
tickhost run-once debdemo/build/debdemo.so
# The packaged host.toml with that plugin, as the service runs it: the tickhost user, a root-owned plugins.d.
install -m 0644 debdemo/build/debdemo.so /etc/tickhost/plugins.d/
setpriv --reuid=tickhost --regid=tickhost --init-groups tickhost --config /etc/tickhost/host.toml >/tmp/author/host.log 2>&1 &
host=$!
for _ in $(seq 1 300); do grep -q "debdemo" /tmp/author/host.log && grep -q "\[plugin.debdemo\]" /tmp/author/host.log && break; sleep 0.1; done
kill -TERM "$host"
status=0
wait "$host" || status=$?
cat /tmp/author/host.log
[ "$status" -eq 0 ] || fail "the host exited $status"
grep -q "loaded plugin 'debdemo'" /tmp/author/host.log || fail "the packaged host did not load the plugin"
grep -q "\[plugin.debdemo\]" /tmp/author/host.log || fail "the plugin did not run"
# Purge: the configuration and the state go, the user stays (Debian keeps system users).
rm /etc/tickhost/plugins.d/debdemo.so
apt-get purge -y -q -o Dpkg::Use-Pty=0 tickhost-dev tickhost
[ ! -e /etc/tickhost/host.toml ] && [ ! -e /var/lib/tickhost ] && [ ! -e /usr/bin/tickhost ] || fail "left after purge"
getent passwd tickhost >/dev/null || fail "purge removed the user"
echo "deb-test (chroot): all checks passed"
INSIDE
# /proc for the chroot, in the mount namespace of its own; unmounted however the checks end.
"${ns[@]}" bash -c '
    set -e
    mount -t proc proc "$1/proc"
    trap "umount \"\$1/proc\"" EXIT
    chroot "$1" /usr/bin/env -i HOME=/root bash /tmp/inside.sh
' unshare-chroot "$root"
step "removing the chroot"
remove_chroot || fail "could not remove $root"
step "done"
echo "deb-test: passed in $(( $(date +%s) - t_start )) s: $(basename "$deb"), $(basename "$dev")"
