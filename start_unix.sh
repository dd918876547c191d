#!/usr/bin/env bash
# IB Data Agent - Mac/Linux starter.
#
#   ./start_unix.sh            run the agent (Ctrl+C to stop)
#   ./start_unix.sh --demo     run it end to end against the built-in TWS simulator and reference relay
#   ./start_unix.sh --check    check the setup (TWS, ports, key, relay) and say what to fix
#
# Every argument goes to ib_data_agent.py unchanged. First run: creates a Python environment (.venv) beside
# this script and installs the dependencies; later runs reinstall only when a requirements file changed.
# start_windows.bat and start_windows.ps1 take the same steps with the same messages: keep the three parallel.
#
# run_tests.sh sources this file for its functions (IB_AGENT_SOURCED=1 there): keep it bash 3.2 compatible
# (macOS's /bin/bash), so no associative arrays, no ${var,,}, no mapfile.

MIN_PY_MAJOR=3
MIN_PY_MINOR=10
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"

say() { printf '%s\n' "$*"; }
err() { printf '%s\n' "$*" >&2; }

# Prints "X.Y.Z" and succeeds when "$1" is a working Python >= 3.10. A pyenv shim for a version that is not
# selected exists on PATH but fails when run, so a candidate counts only if it actually runs.
python_ok() {
    "$1" -c "import sys; print('%d.%d.%d' % sys.version_info[:3]); sys.exit(0 if sys.version_info >= ($MIN_PY_MAJOR, $MIN_PY_MINOR) else 1)" 2>/dev/null
}

python_install_help() {
    err ""
    err "IB Data Agent needs Python 3.10 or newer."
    err "Install it, then run this script again:"
    err "  Mac:            brew install python@3.12"
    err "                  (or download it from https://www.python.org/downloads/macos/)"
    err "  Ubuntu/Debian:  sudo apt-get update && sudo apt-get install python3 python3-venv python3-pip"
    err "  Fedora/RHEL:    sudo dnf install python3 python3-pip"
    err "If Python 3.10+ is installed under another name, run: PYTHON=/path/to/python3 ./start_unix.sh"
}

# STEP 1: find Python 3.10 or newer ($PYTHON if set, else python3.13 ... python3.10, then python3). Sets PY.
find_python() {
    PY=""
    local cand ver too_old=""
    if [ -n "${PYTHON:-}" ]; then
        if ver="$(python_ok "$PYTHON")"; then
            PY="$PYTHON"
            return 0
        fi
        err "PYTHON=$PYTHON is not a working Python 3.10 or newer${ver:+ (it is Python $ver)}."
        python_install_help
        return 1
    fi
    for cand in python3.13 python3.12 python3.11 python3.10 python3; do
        command -v "$cand" >/dev/null 2>&1 || continue
        if ver="$(python_ok "$cand")"; then
            PY="$(command -v "$cand")"
            return 0
        fi
        if [ -n "$ver" ]; then too_old="$too_old $cand=$ver"; fi
    done
    if [ -n "$too_old" ]; then
        err "Found only Python that is too old:$too_old"
    else
        err "Python was not found."
    fi
    python_install_help
    return 1
}

venv_python() { printf '%s\n' "$1/bin/python"; }

# STEP 2: create the virtual environment on first run (or when the old one no longer runs, e.g. after a
# Python upgrade removed the interpreter it points to).
ensure_venv() {
    local venv="$1" vpy
    vpy="$(venv_python "$venv")"
    if [ -x "$vpy" ] && python_ok "$vpy" >/dev/null; then
        return 0
    fi
    if [ -e "$venv" ]; then
        say "The Python environment in $venv no longer works: recreating it."
        rm -rf "$venv"
    fi
    say "Creating the Python environment (.venv) - first run only..."
    # Debian/Ubuntu ship Python without venv/ensurepip (package python3-venv): check first so the message
    # names the fix instead of a traceback.
    if ! "$PY" -c "import venv, ensurepip" >/dev/null 2>&1 || ! "$PY" -m venv "$venv"; then
        rm -rf "$venv"
        err ""
        err "Could not create the Python environment (.venv) with $PY."
        err "On Ubuntu/Debian the venv module is a separate package:"
        err "  sudo apt-get install python3-venv"
        err "  (or python3.X-venv matching your Python, e.g. python3.12-venv)"
        err "Then run this script again."
        return 1
    fi
}

# The requirements stamp: sha256 of the interpreter version and each file's bytes, kept in the venv. The same
# one-liner runs in all three start scripts. Usage: req_stamp check|write STAMPFILE FILE...
REQ_STAMP_PY="import hashlib,os,sys; m,s=sys.argv[1:3]; h=hashlib.sha256(sys.version.encode()); [h.update(open(f,'rb').read()) for f in sys.argv[3:]]; d=h.hexdigest(); o=open(s).read().strip() if os.path.exists(s) else ''; m=='write' and open(s,'w').write(d); sys.exit(0 if m=='write' or o==d else 1)"
req_stamp() {
    "$VPY" -c "$REQ_STAMP_PY" "$@"
}

# STEP 3: install the dependencies, only when a requirements file changed since the last install.
# "runtime" = requirements.txt; "dev" = requirements-dev.txt (tests, the demo's simulator relay), which
# includes requirements.txt, so a dev install stamps both.
ensure_requirements() {
    local venv="$1" kind="$2" req rt_stamp dev_stamp
    VPY="$(venv_python "$venv")"
    rt_stamp="$venv/.requirements.sha256"
    dev_stamp="$venv/.requirements-dev.sha256"
    if [ "$kind" = "dev" ]; then
        req="$HERE/requirements-dev.txt"
        if req_stamp check "$dev_stamp" "$HERE/requirements.txt" "$req"; then return 0; fi
    else
        req="$HERE/requirements.txt"
        if req_stamp check "$rt_stamp" "$req"; then return 0; fi
    fi
    say "Installing dependencies (first run or requirements changed)..."
    if ! "$VPY" -m pip install --disable-pip-version-check -q -r "$req"; then
        err ""
        err "Could not install the dependencies (pip's message is above)."
        err "Check your internet connection, then run this script again."
        return 1
    fi
    req_stamp write "$rt_stamp" "$HERE/requirements.txt"
    if [ "$kind" = "dev" ]; then
        req_stamp write "$dev_stamp" "$HERE/requirements.txt" "$req"
    fi
    say "Dependencies installed."
}

main() {
    if [ ! -f "$HERE/ib_data_agent.py" ]; then
        err "ib_data_agent.py is not beside this script ($HERE). Download the agent again and extract all its files."
        return 1
    fi
    find_python || return 1
    ensure_venv "$VENV" || return 1
    local kind=runtime
    if [ "${1:-}" = "--demo" ]; then kind=dev; fi
    ensure_requirements "$VENV" "$kind" || return 1
    # STEP 4: run the agent with every argument passed through. exec: Ctrl+C goes straight to Python and the
    # agent's exit status is this script's.
    cd "$HERE" || return 1
    exec "$VPY" "$HERE/ib_data_agent.py" "$@"
}

if [ -z "${IB_AGENT_SOURCED:-}" ]; then
    main "$@"
    exit $?
fi
