#!/bin/sh
# System packages the test suite needs beyond `uv sync`, installed only when missing.
#
#   bubblewrap  the `python` tool's subprocess sandbox (bwrap: namespaces, no network)
#   python3     the interpreter run inside that sandbox (Debian's /usr/bin/python3: readable by the
#               unprivileged sandbox users, unlike a pyenv/uv Python under /root)
#   tmux        a real terminal for the tests of live views (`tether batch run`'s progress)
#
# Idempotent; needs root to install (prints what to do otherwise). Debian/Ubuntu (apt-get).
set -eu

need=""
command -v bwrap >/dev/null 2>&1 || need="$need bubblewrap"
[ -x /usr/bin/python3 ] || need="$need python3"
command -v tmux >/dev/null 2>&1 || need="$need tmux"

if [ -z "$need" ]; then
    echo "setup-system: bubblewrap, /usr/bin/python3 and tmux are installed; nothing to do"
else
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup-system: missing:$need -- run as root: apt-get install -y$need" >&2
        echo "setup-system: without them the sandbox and terminal tests skip (and fail under CI=true)" >&2
        exit 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup-system: missing:$need and there is no apt-get; install them with your package manager" >&2
        exit 1
    fi
    echo "setup-system: installing:$need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $need </dev/null
fi

# Warn (do not fail) when the kernel forbids what bubblewrap needs.
for f in /proc/sys/user/max_user_namespaces /proc/sys/kernel/unprivileged_userns_clone; do
    if [ -r "$f" ] && [ "$(cat "$f")" = "0" ]; then
        name=$(echo "${f#/proc/sys/}" | tr / .)
        echo "setup-system: warning: $f is 0; the sandbox needs user namespaces (sysctl -w $name=1)" >&2
    fi
done
if command -v bwrap >/dev/null 2>&1; then
    echo "setup-system: $(bwrap --version)"
fi
