#!/usr/bin/env bash
# The Debian packages end to end (CI stage "Debian packages"; as root, with Debian's archive reachable):
#   1. builds tickhost_<version>-1_amd64.deb and tickhost-dev_<version>-1_amd64.deb (cmake/TickhostPackage.cmake):
#      CMAKE_BUILD_TYPE=None with dpkg-buildflags' hardening flags (as Debian builds) without -g, then cpack
#   2. runs lintian on both: any error fails (the warnings left are listed in docs/operating.md)
#   3. meanwhile (in the background) creates a bare Debian 12 (mmdebstrap --variant=minbase, plus g++, cmake
#      and make to build a plugin), and once the packages are there runs scripts/deb-test-inside.sh in it:
#      `apt-get install ./tickhost_*.deb ./tickhost-dev_*.deb` (their dependencies come from the archive), the
#      user and the files, a plugin built against tickhost-dev, `tickhost check`, the packaged host.toml run as
#      the tickhost user, a purge.
# The chroot is a tmpfs mounted in a mount namespace of its own (unshare) for its whole life: dpkg runs at memory
# speed, nothing is cached anywhere, and when the namespace ends the chroot and everything mounted in it (proc,
# mmdebstrap's own mounts; never a bind of /dev) are gone at once, however this script ends. The packages and
# the logs stay in the build tree (default build-deb/). Prints the time of each step.
#   scripts/deb-test.sh [BUILD_DIR]
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
root=$build/chroot
mkdir -p "$build/tmp" "$build/debs" "$root"
export TMPDIR=$build/tmp
rm -f "$build"/debs/* "$build"/*.deb
# The chroot's folder is only the mount point of its tmpfs: empty, and nothing mounted on it in this namespace.
if grep -qF " $root " /proc/self/mountinfo || [ -n "$(ls -A "$root")" ]; then
    fail "$root is mounted or not empty (left by something else?); unmount or remove it first"
fi

# A private mount namespace: its mounts vanish with its last process and are never seen outside. Inside a chroot
# (fresh-ci.sh, CI's proof run) "/" is no mount point and its propagation cannot be changed: a new namespace all
# the same, whose mounts reach the parent only through a shared mount (and the tmpfs is unmounted at its end).
ns=(unshare --mount --propagation private)
"${ns[@]}" true 2>/dev/null || ns=(unshare --mount --propagation unchanged)

# 3, in the background: the bare Debian 12 on a tmpfs, then (once the packages are built) the checks inside it.
chroot_job() {
    set -euo pipefail
    mount -t tmpfs -o size=6g,mode=0755 tickhost-deb-test "$root"
    trap 'umount "$root/proc" 2>/dev/null || true; umount "$root" 2>/dev/null || umount -l "$root"' EXIT
    local t0
    t0=$(date +%s)
    mmdebstrap --mode=root --variant=minbase --include=g++,cmake,make --skip=cleanup/apt/lists \
        --skip=chroot/mount/sys --aptopt='Acquire::Languages "none"' bookworm "$root" >"$build/mmdebstrap.log" 2>&1 ||
        { tail -30 "$build/mmdebstrap.log"; echo "deb-test: FAIL: mmdebstrap (log: $build/mmdebstrap.log)"; exit 1; }
    echo "deb-test: mmdebstrap --variant=minbase bookworm (+ g++ cmake make): $(( $(date +%s) - t0 )) s," \
         "$(du -sh --one-file-system "$root" | cut -f1) on a tmpfs"
    until [ -e "$build/debs/ready" ]; do  # written by the main script once the packages pass lintian
        kill -0 "$main_pid" 2>/dev/null || exit 1
        sleep 0.2
    done
    mkdir -p "$root/tmp/debs"
    cp "$build"/debs/*.deb "$root/tmp/debs/"
    cp "$src/scripts/deb-test-inside.sh" "$root/tmp/inside.sh"
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    mount -t proc proc "$root/proc"
    t0=$(date +%s)
    chroot "$root" /usr/bin/env -i HOME=/root bash /tmp/inside.sh
    echo "deb-test: the checks in the chroot took $(( $(date +%s) - t0 )) s"
}
export -f chroot_job
export root build src main_pid=$$
echo "deb-test: a bare Debian 12 (mmdebstrap) on a tmpfs at $root, in the background (log: $build/chroot.log)"
setsid --wait "${ns[@]}" bash -c chroot_job >"$build/chroot.log" 2>&1 &
chroot_pid=$!
cleanup() { [ -n "$chroot_pid" ] && kill -TERM -- "-$chroot_pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

# 1. The packages: Debian's compiler and linker flags (hardening on, no -g: the binaries are stripped anyway).
step "building the packages in $build"
export DEB_BUILD_MAINT_OPTIONS=hardening=+all
nog() { sed 's/\(^\| \)-g\( \|$\)/ /'; }
cflags="$(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CFLAGS | nog) -DNDEBUG"
cxxflags="$(dpkg-buildflags --get CPPFLAGS) $(dpkg-buildflags --get CXXFLAGS | nog) -DNDEBUG"
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=None -DCMAKE_INSTALL_PREFIX=/usr -DTICKHOST_DEB=ON \
    -DTICKHOST_BUILD_TESTS=OFF -DTICKHOST_BUILD_PLUGINS=OFF -DTICKHOST_BUILD_BENCH=OFF -DTICKHOST_FAULT_SEAMS=OFF \
    "-DCMAKE_C_FLAGS=$cflags" "-DCMAKE_CXX_FLAGS=$cxxflags" \
    "-DCMAKE_EXE_LINKER_FLAGS=$(dpkg-buildflags --get LDFLAGS)" >"$build/configure.log" 2>&1 ||
    { cat "$build/configure.log"; fail "cmake configure"; }
cmake --build "$build" -j"$(nproc)" >"$build/build.log" 2>&1 || { tail -50 "$build/build.log"; fail "build"; }
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

# 3. Hand the packages to the chroot job and wait for its checks.
cp "$deb" "$dev" "$build/debs/"
touch "$build/debs/ready"
step "waiting for the bare Debian 12 and the checks inside it"
status=0
wait "$chroot_pid" || status=$?
chroot_pid=""
cat "$build/chroot.log"
[ "$status" -eq 0 ] || fail "the chroot's part failed (exit $status; above)"
grep -qF " $root " /proc/self/mountinfo && fail "$root is still mounted"
step "done"
echo "deb-test: passed in $(( $(date +%s) - t_start )) s: $(basename "$deb"), $(basename "$dev")"
