# Sourced by bench/peers/install_*.sh: each benchmark peer lives in its own virtualenv under bench/.
#   peer_venv NAME   sets VENV=bench/.venv-NAME; when VENV/.installed marks it built, says so and
#                    exits the calling script (0); otherwise creates the venv (PYTHON, default
#                    python3) and upgrades its pip. The caller installs, then touches VENV/.installed.
peer_venv() {
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    VENV="$root/bench/.venv-$1"
    if [ -f "$VENV/.installed" ]; then
        echo "bench-peers: $VENV is ready (remove it to rebuild)"
        exit 0
    fi
    test -x "$VENV/bin/python" || "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
}
