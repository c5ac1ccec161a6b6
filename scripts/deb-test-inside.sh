#!/usr/bin/env bash
# Runs inside the bare Debian 12 that scripts/deb-test.sh makes (as root, with the two packages in /tmp/debs):
# installs them with apt, checks the system user and the files, builds a plugin project made by
# `tickhost new-plugin` against tickhost-dev, runs `tickhost check` and `run-once` on it, runs the packaged
# /etc/tickhost/host.toml as the tickhost user with that plugin in plugins.d, and purges the package.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 PATH=/usr/sbin:/usr/bin:/sbin:/bin
fail() { echo "deb-test (chroot): FAIL: $*" >&2; exit 1; }
cd /tmp/debs
apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 ./tickhost_*.deb ./tickhost-dev_*.deb
# The system user: made by postinst with useradd, a system uid, no login.
getent passwd tickhost || fail "no user tickhost"
IFS=: read -r _ _ uid gid _ home shell <<<"$(getent passwd tickhost)"
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
