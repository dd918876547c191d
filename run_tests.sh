#!/usr/bin/env bash
# Run the tests: ./run_tests.sh [pytest arguments]   e.g. ./run_tests.sh -q -m "not slow"
#
# Does its own setup like start_unix.sh (whose functions it uses): finds Python 3.10+, creates the venv on
# first run, installs requirements-dev.txt when it changed, then runs python -m pytest with your arguments.
# Overrides (for CI): VENV_DIR=.venv-3.10 (relative to this folder, or absolute), PYTHON=python3.10.

HERE_TESTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IB_AGENT_SOURCED=1
# shellcheck source=start_unix.sh
. "$HERE_TESTS/start_unix.sh" || exit 1

case "${VENV_DIR:-.venv}" in
    /*) VENV="${VENV_DIR}" ;;
    *) VENV="$HERE/${VENV_DIR:-.venv}" ;;
esac

find_python || exit 1
ensure_venv "$VENV" || exit 1
ensure_requirements "$VENV" dev || exit 1
cd "$HERE" || exit 1
exec "$VPY" -m pytest "$@"
