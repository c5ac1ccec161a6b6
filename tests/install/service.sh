#!/usr/bin/env bash
# The system-service files as `cmake --install` put them into the install tests' prefix (tests/install):
#   units  tickhost.service and tickhost@.service pass `systemd-analyze verify` with no output at all (it exits 0
#          on an unknown key, so any output fails), name the installed binary and configuration, and
#          Documentation=man:tickhost(1) resolves to the installed man page
#   man    tickhost(1) renders without a warning (groff -ww, man --warnings), and names every subcommand of
#          `tickhost --help` and every long option of each subcommand's --help
# Outside CI a missing tool skips the test, saying which (exit 77); in CI (CI=true) it fails.
set -euo pipefail
step=$1
: "${TH_WORK:?}"
P=$TH_WORK/prefix
fail() { echo "FAIL: $*" >&2; exit 1; }
need() {  # need <program> <Debian package>
    command -v "$1" >/dev/null && return 0
    [ "${CI:-}" = true ] && fail "$1 is missing (Debian package $2; scripts/deps.sh test installs it)"
    echo "SKIPPED: $1 is missing (Debian package $2; scripts/deps.sh test installs it)"
    exit 77
}

case $step in
units)
    need systemd-analyze systemd
    need man man-db
    units=$P/lib/systemd/system
    for u in tickhost.service tickhost@.service; do
        [ -f "$units/$u" ] || fail "not installed: lib/systemd/system/$u"
    done
    # As installed: the prefix's binary and configuration, which exist (verify checks ExecStart's binary).
    grep -qx "ExecStart=$P/bin/tickhost --config $P/etc/tickhost/host.toml" "$units/tickhost.service" ||
        fail "tickhost.service: $(grep '^ExecStart=' "$units/tickhost.service")"
    grep -qx "ExecStart=$P/bin/tickhost --config $P/etc/tickhost/%i.toml" "$units/tickhost@.service" ||
        fail "tickhost@.service: $(grep '^ExecStart=' "$units/tickhost@.service")"
    [ -f "$P/etc/tickhost/host.toml" ] && [ -d "$P/etc/tickhost/plugins.d" ] || fail "etc/tickhost not installed"
    for key in Type=notify WatchdogSec=30s 'ExecReload=/bin/kill -HUP $MAINPID' User=tickhost NoNewPrivileges=yes; do
        for u in tickhost.service tickhost@.service; do
            grep -qxF "$key" "$units/$u" || fail "$u has no '$key'"
        done
    done
    grep -qx 'RuntimeDirectory=tickhost' "$units/tickhost.service" || fail "tickhost.service: RuntimeDirectory"
    grep -qx 'RuntimeDirectory=tickhost/%i' "$units/tickhost@.service" || fail "tickhost@.service: RuntimeDirectory"
    # An instance of the template too (its %i expanded), from a folder of its own.
    inst=$TH_WORK/units && rm -rf "$inst" && mkdir -p "$inst"
    cp "$units/tickhost@.service" "$inst/tickhost@blue.service"
    export MANPATH=$P/share/man  # Documentation=man:tickhost(1) is looked up with man
    t0=$(date +%s%N)
    for u in "$units/tickhost.service" "$units/tickhost@.service" "$inst/tickhost@blue.service"; do
        out=$(systemd-analyze verify "$u" 2>&1) || fail "systemd-analyze verify $u exited $?: $out"
        [ -z "$out" ] || fail "systemd-analyze verify $u said: $out"
    done
    echo "systemd-analyze verify: 3 units clean in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
    # The check can fail: an unknown key is reported (exit 0, but output).
    sed 's/^Type=notify$/Type=notify\nTypo=notify/' "$units/tickhost.service" >"$inst/tickhost.service"
    out=$(systemd-analyze verify "$inst/tickhost.service" 2>&1) || true
    [[ $out == *"Unknown key 'Typo'"* ]] || fail "an unknown key went unnoticed: '$out'"
    ;;
man)
    need groff groff-base
    need man man-db
    page=$P/share/man/man1/tickhost.1.gz
    [ -f "$page" ] || fail "not installed: share/man/man1/tickhost.1.gz"
    [ "$(MANPATH=$P/share/man man -w tickhost)" = "$page" ] || fail "man -w tickhost: $(MANPATH=$P/share/man man -w tickhost 2>&1)"
    warnings=$(gzip -dc "$page" | LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z 2>&1)
    [ -z "$warnings" ] || fail "groff -ww: $warnings"
    warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null)
    [ -z "$warnings" ] || fail "man --warnings: $warnings"
    text=$(gzip -dc "$page" | LC_ALL=C groff -man -Tascii -P-cbou 2>/dev/null | tr -s ' \n' ' ')
    # The subcommands `tickhost --help` lists ("tickhost check ...", "help [SUBCOMMAND]"), and their options.
    help=$("$P/bin/tickhost" --help)
    subs=$( (grep -o 'tickhost [a-z][a-z-]*' <<<"$help" | cut -d' ' -f2; grep -o '| help ' <<<"$help" | tr -d '| ') | sort -u)
    [[ $subs == *check* ]] || fail "no subcommand found in tickhost --help: $help"
    for s in $subs; do
        "$P/bin/tickhost" "$s" --help >/dev/null || fail "'$s' (from tickhost --help) is not a subcommand"
        [[ $text == *"tickhost $s "* ]] || fail "the man page does not document 'tickhost $s'"
        for o in $("$P/bin/tickhost" "$s" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
            [[ $text == *"$o"* ]] || fail "the man page does not name $o of 'tickhost $s'"
        done
    done
    for o in $(grep -o -- '--[a-z][a-z-]*' <<<"$help" | sort -u); do
        [[ $text == *"$o"* ]] || fail "the man page does not name $o of tickhost"
    done
    for section in SYNOPSIS SUBCOMMANDS SIGNALS "EXIT STATUS" FILES ENVIRONMENT; do
        [[ $text == *"$section"* ]] || fail "no $section section"
    done
    echo "man page: renders cleanly; documents $(wc -w <<<"$subs") subcommands: $(tr '\n' ' ' <<<"$subs")"
    ;;
*) fail "unknown step $step" ;;
esac
