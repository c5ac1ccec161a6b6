#!/usr/bin/env bash
# Installs the Debian 12 packages tickhost needs to build and test, if any is missing.
# Runs apt-get as root (directly, or through sudo). Safe to run again: it does nothing when all is there.
# Groups on top of what the host needs (any number of them; .ci/run and scripts/test.sh name theirs):
#   `deps.sh test`  also installs Go (golang-go, Go 1.19: 80 MB of download) for the Go plugin fixture
#                   (tests/fixtures/go); only the tests use it, the host builds and runs without it
#   `deps.sh fuzz`  also installs clang and libFuzzer (libclang-rt-14-dev) for the fuzz targets (.ci/run)
#   `deps.sh deb`   also installs what scripts/deb-test.sh needs to build, lint and try the Debian packages
set -euo pipefail

PACKAGES=(
  g++ make cmake pkg-config          # toolchain
  libboost-dev                       # Boost.DLL (header-only)
  libtomlplusplus-dev                # host.toml
  libssl-dev                         # SHA-256 of plugin files (OpenSSL EVP)
  libcli11-dev                       # the tickhost command line (CLI11, header-only)
  nlohmann-json3-dev                 # JSON output: check --json, tickhost-bench (header-only)
  libspdlog-dev libfmt-dev           # logging
  libgtest-dev libgmock-dev          # tests
  libbenchmark-dev                   # bench/: tickhost-micro (Google Benchmark)
)
for group in "$@"; do
  case "$group" in
    # the real Go plugin fixture (go build -buildmode=c-shared); systemd-analyze verify on the shipped units
    # (systemd, without its recommends: no dbus, no timesyncd); man-db (groff-base): the man page's tests, and
    # systemd-analyze's check of the units' Documentation=man:tickhost(1). On a bare Debian 12 these two bring
    # 16 packages, 8 MB to download (libsystemd-shared, libcryptsetup12, groff-base, ...); nothing is started
    test) PACKAGES+=(golang-go systemd man-db) ;;
    fuzz) PACKAGES+=(clang libclang-rt-14-dev) ;;  # libFuzzer: /usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer*
    # dpkg-dev: dpkg-buildflags, dpkg-shlibdeps (CPack's Depends); file: CPack finds the ELF files with it;
    # mmdebstrap: the bare Debian 12 the packages are installed into; lintian
    deb) PACKAGES+=(dpkg-dev file mmdebstrap lintian) ;;
    *) echo "tickhost: deps.sh: unknown group '$group' (groups: test, fuzz, deb)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${PACKAGES[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "tickhost: installing missing packages: ${missing[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null; then
  SUDO=(sudo)
else
  echo "tickhost: these packages are missing and this is not root: ${missing[*]}" >&2
  echo "  as root, run: apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
