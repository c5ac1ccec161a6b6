#!/usr/bin/env bash
# docs.command_blocks: every shell block of README.md and docs/*.md is run as written, in order within its
# file, against a tickhost installed from this build tree. Offline: nothing is downloaded.
#
# The rule the markdown follows (this script enforces it):
#   - A fenced block labelled ```sh, ```bash or ```shell holds commands and is run. An unlabelled fence is an
#     error: label it ```sh (commands) or ```text (a synopsis, a diagram, output: not commands).
#   - HTML comments on the lines directly before the fence say how it is run; a reader sees them next to it:
#       <!-- not run: REASON -->                    the block is not run (a reason is required)
#       <!-- run: substitute 'OLD' -> 'NEW' -->      every OLD in the block becomes NEW before it runs
#       <!-- run: background 'CMD' until 'TEXT', then SIGTERM -->
#                                                    CMD (a command that runs until stopped) runs in the
#                                                    background until its output has TEXT (60 s at most),
#                                                    then gets SIGTERM and must exit 0
#     A marker whose OLD or CMD is not in the block is an error (markers cannot go stale), and so is an
#     unknown `run`/`not run` marker or one on a block that is not a shell block.
#   - NEW may use $PREFIX (the temporary install prefix, the one tests/install installed into) and $BUILD
#     (this build tree).
#   - Each block runs in a new `bash -e -o pipefail` (nothing of an earlier block's shell carries over: a
#     block that needs PATH sets it), in a scratch directory of its file that earlier blocks of the same file
#     wrote into, with the environment of a user who has not set anything up: no tickhost in PATH, no
#     PKG_CONFIG_PATH or CMAKE_PREFIX_PATH; cmake is this build's cmake, CC and CXX its compilers. A command
#     that fails, or a block still running after 180 s, fails the test; the rest of that file is skipped.
set -euo pipefail
: "${TH_SRC:?}" "${TH_BUILD:?}" "${TH_PREFIX:?}" "${TH_WORK:?}" "${TH_CMAKE:?}" "${TH_CC:?}" "${TH_CXX:?}"
[ -x "$TH_PREFIX/bin/tickhost" ] || { echo "FAIL: no tickhost installed in $TH_PREFIX (test install.install)" >&2; exit 1; }

rm -rf "$TH_WORK" && mkdir -p "$TH_WORK"
errors=0
error() { echo "ERROR: $*" >&2; errors=$((errors + 1)); }

# The blocks' PATH: cmake's folder first; no folder that has a tickhost (the docs must say where it is).
block_path=$(dirname "$TH_CMAKE")
IFS=: read -r -a dirs <<<"$PATH"
for d in "${dirs[@]}"; do
    if [ -n "$d" ] && [ ! -x "$d/tickhost" ]; then block_path+=":$d"; fi
done

# th_background <text> <command...>: what the `background` marker puts in front of its command.
th_background() {
    local xtrace=$-
    set +x
    local text=$1 log
    shift
    log=$(mktemp "$TH_BLOCK_LOGS/background.XXXXXX")
    echo "th_background: running in the background until its output has '$text': $*"
    "$@" >"$log" 2>&1 &
    local pid=$! until=$((SECONDS + 60)) status=0
    until grep -qF -- "$text" "$log"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || status=$?
            sed 's/^/    | /' "$log"
            echo "th_background: '$*' exited ($status) before printing '$text'" >&2
            return 1
        fi
        if [ $SECONDS -ge $until ]; then
            kill -KILL "$pid"
            sed 's/^/    | /' "$log"
            echo "th_background: '$*' printed no '$text' within 60 s" >&2
            return 1
        fi
        sleep 0.1
    done
    kill -TERM "$pid"
    wait "$pid" || status=$?
    sed 's/^/    | /' "$log"
    echo "th_background: '$*' exited $status after SIGTERM"
    [[ $xtrace == *x* ]] && set -x
    return "$status"
}
export -f th_background

shell_blocks=0 ran=0
run_file() {  # run_file <markdown file, relative to TH_SRC>
    local md=$1 name=${1//\//_}
    local dir=$TH_WORK/$name
    mkdir -p "$dir/.logs"
    local n=0 in=0 lang="" start=0 code="" line failed=0 p
    local -a pending=()
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        if [ $in = 1 ]; then
            if [[ $line =~ $re_fence_close ]]; then
                in=0
                handle_block "$md" "$start" "$lang" "$code" "$dir" $failed "${pending[@]+"${pending[@]}"}" || failed=1
                pending=()
            else
                code+="$line"$'\n'
            fi
        elif [[ $line =~ $re_fence_open ]]; then
            lang=${BASH_REMATCH[1]}
            lang=${lang%%[[:space:]]*}
            in=1 start=$n code=""
        elif [[ $line =~ $re_fence_other ]]; then
            error "$md:$n: an indented or ~~~ fence: use \`\`\` at the start of the line"
        elif [[ $line =~ $re_comment ]]; then
            pending+=("$line")
        else
            for p in "${pending[@]+"${pending[@]}"}"; do
                if [[ $p =~ $re_marker ]]; then error "$md:$((n - 1)): a run marker not directly before a block: $p"; fi
            done
            pending=()
        fi
    done <"$TH_SRC/$md"
    [ $in = 0 ] || error "$md:$start: unterminated block"
}

q="'"
re_fence_close='^```[[:space:]]*$'
re_fence_open='^```(.*)$'
re_fence_other='^([[:space:]]+```|~~~)'
re_comment='^<!--.*-->$'
re_marker='^<!-- *(run|not run)'
re_not_run='^<!-- not run: *(.*[^[:space:]]) *-->$'
re_subst="^<!-- run: substitute ${q}([^${q}]+)${q} -> ${q}([^${q}]*)${q} -->\$"
re_background="^<!-- run: background ${q}([^${q}]+)${q} until ${q}([^${q}]+)${q}, then SIGTERM -->\$"

# handle_block <md> <line> <lang> <code> <dir> <skip> <marker lines...>: checks the block's markers and runs
# it (unless <skip> is 1: an earlier block of the file failed); returns 1 if it failed when run.
handle_block() {
    local md=$1 at=$2 lang=$3 code=$4 dir=$5 skip=$6
    shift 6
    local where="$md:$at"
    if [ -z "$lang" ]; then
        error "$where: an unlabelled block: label it \`\`\`sh if it holds commands (they are run), \`\`\`text if not"
        return 0
    fi
    local shell=0
    if [[ $lang =~ ^(sh|bash|shell)$ ]]; then shell=1; fi
    local not_run="" how="" m old new bad=0
    local -a subst_old=() subst_new=()
    for m in "$@"; do
        if [[ $m =~ $re_not_run ]]; then
            not_run=${BASH_REMATCH[1]}
        elif [[ $m =~ $re_subst ]]; then
            subst_old+=("${BASH_REMATCH[1]}") subst_new+=("${BASH_REMATCH[2]}")
            how+="${how:+, }'${BASH_REMATCH[1]}' -> '${BASH_REMATCH[2]}'"
        elif [[ $m =~ $re_background ]]; then
            subst_old+=("${BASH_REMATCH[1]}") subst_new+=("th_background '${BASH_REMATCH[2]}' ${BASH_REMATCH[1]}")
            how+="${how:+, }'${BASH_REMATCH[1]}' in the background until '${BASH_REMATCH[2]}', then SIGTERM"
        elif [[ $m =~ $re_marker ]]; then
            error "$where: an unknown run marker: $m"
            bad=1
        fi
    done
    if [ $shell = 0 ]; then
        [ -z "$not_run$how" ] || error "$where: a run marker on a \`\`\`$lang block (only shell blocks are run)"
        return 0
    fi
    shell_blocks=$((shell_blocks + 1))
    if [ -n "$not_run" ]; then
        [ -z "$how" ] || error "$where: both 'run' and 'not run' markers"
        echo "$where: not run: $not_run"
        return 0
    fi
    local i script=$code
    for i in "${!subst_old[@]}"; do
        old=${subst_old[$i]} new=${subst_new[$i]}
        [[ $script == *"$old"* ]] || { error "$where: the marker's '$old' is not in the block"; bad=1; }
        script=${script//"$old"/"$new"}
    done
    if [ $bad = 1 ]; then
        echo "$where: not run: its markers are wrong (above)"
        return 1
    fi
    if [ "$skip" = 1 ]; then
        echo "$where: skipped after the failure above"
        return 1
    fi
    local f
    f=$(printf '%s/.logs/%03d.sh' "$dir" "$at")
    printf '%s' "$script" >"$f"
    local t0=$SECONDS status=0
    (cd "$dir" && env -u PKG_CONFIG_PATH -u CMAKE_PREFIX_PATH -u CMAKE_GENERATOR PATH="$block_path" \
        CC="$TH_CC" CXX="$TH_CXX" PREFIX="$TH_PREFIX" BUILD="$TH_BUILD" TH_BLOCK_LOGS="$dir/.logs" \
        timeout -k 10 180 bash -e -o pipefail -x "$f") >"$f.log" 2>&1 </dev/null || status=$?
    ran=$((ran + 1))
    if [ $status = 0 ]; then
        echo "$where: ok in $((SECONDS - t0)) s (${how:-as written})"
        return 0
    fi
    echo "---- $where, run as ($f):"
    sed 's/^/    /' "$f"
    echo "---- its output:"
    cat "$f.log"
    if [ $status = 124 ] || [ $status = 137 ]; then
        error "$where: still running after 180 s (a command that runs until stopped needs a background marker)"
    else
        error "$where: failed (exit $status) (${how:-as written})"
    fi
    return 1
}

for md in README.md $(cd "$TH_SRC" && ls docs/*.md); do
    run_file "$md"
done
[ $shell_blocks -gt 0 ] || error "no shell block found"
echo "$shell_blocks shell blocks, $ran run"
[ $errors = 0 ] || { echo "FAIL: $errors error(s)" >&2; exit 1; }
echo "ok"
