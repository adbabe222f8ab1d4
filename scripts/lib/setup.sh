# Idempotent machine set-up shared by scripts/test, scripts/demo and scripts/bench.
# Sourced, not run. Needs root for apt (as on the project's machines).

LAZYFS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV="$LAZYFS_ROOT/.venv"

# Debian packages the project needs: FUSE and its headers (pyfuse3 builds against them),
# the CNCF distribution registry, and the peer tools the tests use as oracles.
APT_PACKAGES=(fuse3 libfuse3-dev pkg-config gcc binutils python3-dev python3-venv tar docker-registry skopeo umoci
    containerd runc crun runsc busybox-static stargz-snapshotter)

say() { printf '==> %s\n' "$*" >&2; }

ensure_apt() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

find_python() {
    local py
    for py in python3.13 python3.12 python3.11 python3; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    echo "lazyfs needs Python 3.11 or newer" >&2
    return 1
}

# ensure_venv EXTRAS: a .venv with lazyfs installed (editable) with the given extras.
# Reinstalls only when pyproject.toml or the extras changed.
ensure_venv() {
    local extras=${1:-} py stamp want
    py=$(find_python)
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV"
        "$py" -m venv "$VENV"
    fi
    local hash have
    # (+compat: venvs installed before the editable mode below changed get reinstalled)
    hash="$(sha256sum "$LAZYFS_ROOT/pyproject.toml" | cut -d' ' -f1)+compat"
    want="$hash extras=$extras"
    stamp="$VENV/.lazyfs-installed"
    have=$(cat "$stamp" 2>/dev/null || true)
    # Up to date if pyproject.toml is unchanged and the installed extras cover the wanted ones.
    # lazyfs's own bytecode, compiled ahead (editable installs are not): with
    # PYTHONDONTWRITEBYTECODE set, every command would otherwise compile ~50 modules
    # (about 0.1 s of each start). Up-to-date files are skipped.
    "$VENV/bin/python" -m compileall -q "$LAZYFS_ROOT/lazyfs" >/dev/null 2>&1 || true
    if [ "$have" = "$want" ] || { [ -z "$extras" ] && [ "${have%% *}" = "$hash" ]; }; then
        return 0
    fi
    if true; then
        say "installing lazyfs${extras:+[$extras]} into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        # The "compat" editable mode puts the repository on sys.path with a plain .pth line;
        # the default mode imports a finder module (pathlib, re, urllib...) at every Python
        # start in the venv: 15-20 ms of every lazyfs command, more with a cold page cache.
        # setuptools calls the mode transitional, so fall back to the default if it goes.
        "$VENV/bin/python" -m pip install -q -e "$LAZYFS_ROOT${extras:+[$extras]}" \
            --config-settings editable_mode=compat 2>/dev/null ||
            "$VENV/bin/python" -m pip install -q -e "$LAZYFS_ROOT${extras:+[$extras]}"
        echo "$want" >"$stamp"
    fi
}

ensure_fuse() {
    if [ ! -e /dev/fuse ]; then
        say "warning: /dev/fuse is missing; mounts will not work"
    fi
}
