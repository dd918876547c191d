"""The newcomer commands: start_unix.sh (and its Windows twins, checked for parity) and run_tests.sh."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIX = ROOT / "start_unix.sh"
BAT = ROOT / "start_windows.bat"
PS1 = ROOT / "start_windows.ps1"
BASH = shutil.which("bash") or "/bin/bash"

# A stand-in for ib_data_agent.py: proves the venv has the runtime dependencies, shows where it runs and what
# arguments it got, and exits with the status asked for (so pass-through of the exit status is visible).
STUB_AGENT = """\
import os, sys
import ibapi, websockets, pydantic, dotenv  # the runtime requirements are installed in this venv
print("STUB-AGENT prefix=%s cwd=%s argv=%r" % (sys.prefix, os.getcwd(), sys.argv[1:]))
if "--exit" in sys.argv:
    sys.exit(int(sys.argv[sys.argv.index("--exit") + 1]))
"""

# User-facing lines that all three start scripts must carry word for word.
SHARED_MESSAGES = [
    "IB Data Agent needs Python 3.10 or newer.",
    "Install it, then run this script again:",
    "Python was not found.",
    "is not a working Python 3.10 or newer",
    "no longer works: recreating it.",
    "Creating the Python environment (.venv) - first run only...",
    "Could not create the Python environment (.venv) with",
    "Installing dependencies (first run or requirements changed)...",
    "Could not install the dependencies (pip's message is above).",
    "Check your internet connection, then run this script again.",
    "Dependencies installed.",
    "If Python 3.10+ is installed under another name",
]


def fake_python(path: Path, version: str, ok: bool, venv_ok: bool = False) -> Path:
    """A fake interpreter that answers the version probe as ``version`` (ok = new enough) and fails venv."""
    path.write_text(
        "#!/bin/sh\n"
        'case "$2" in\n'
        f'  *version_info*) echo {version}; exit {0 if ok else 1} ;;\n'
        f'  *"import venv"*) exit {0 if venv_ok else 1} ;;\n'
        "esac\n"
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then exit 1; fi\n'
        "exit 1\n")
    path.chmod(0o755)
    return path


def bare_path(tmp: Path, tools: tuple[str, ...] = ("dirname", "rm")) -> Path:
    """A PATH directory with only the few tools the script needs, and no Python at all."""
    bindir = tmp / "bin"
    bindir.mkdir()
    for tool in tools:
        found = shutil.which(tool)
        assert found, tool
        (bindir / tool).symlink_to(found)
    return bindir


def agent_copy(dest: Path, *, stub: bool = True) -> Path:
    """A minimal agent folder: start_unix.sh, the requirements files and a stub ib_data_agent.py."""
    dest.mkdir(parents=True)
    for name in ("start_unix.sh", "run_tests.sh", "requirements.txt", "requirements-dev.txt"):
        shutil.copy2(ROOT / name, dest / name)
    if stub:
        (dest / "ib_data_agent.py").write_text(STUB_AGENT)
    return dest


def run(cmd: list[str], *, env: dict | None = None, cwd: Path | None = None, timeout: float = 300) \
        -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VENV_DIR", "VIRTUAL_ENV")}
    base["IB_AGENT_NO_PAUSE"] = "1"
    return subprocess.run(cmd, env={**base, **(env or {})}, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# --- no suitable Python ----------------------------------------------------------------------------

def test_too_old_python_gets_install_guidance(tmp_path):
    """Only a Python 3.8 on PATH: the script names it, prints the brew/apt/dnf lines and exits non-zero."""
    proj = agent_copy(tmp_path / "agent")
    bindir = bare_path(tmp_path)
    fake_python(bindir / "python3", "3.8.10", ok=False)
    res = run([BASH, str(proj / "start_unix.sh")], env={"PATH": str(bindir)})
    assert res.returncode != 0
    assert "Found only Python that is too old: python3=3.8.10" in res.stderr
    for line in ("IB Data Agent needs Python 3.10 or newer.", "brew install python@3.12",
                 "sudo apt-get update && sudo apt-get install python3 python3-venv python3-pip",
                 "sudo dnf install python3 python3-pip"):
        assert line in res.stderr
    assert not (proj / ".venv").exists()


def test_no_python_at_all(tmp_path):
    """No Python on PATH at all: "Python was not found." plus the install guidance, non-zero."""
    proj = agent_copy(tmp_path / "agent")
    res = run([BASH, str(proj / "start_unix.sh"), "--version"], env={"PATH": str(bare_path(tmp_path))})
    assert res.returncode != 0
    assert "Python was not found." in res.stderr and "brew install python@3.12" in res.stderr
    assert "STUB-AGENT" not in res.stdout


def test_python_env_var_too_old_is_refused(tmp_path):
    """$PYTHON pointing at a too-old interpreter is refused by name, not silently replaced."""
    proj = agent_copy(tmp_path / "agent")
    bindir = bare_path(tmp_path)
    old = fake_python(tmp_path / "py38", "3.8.10", ok=False)
    res = run([BASH, str(proj / "start_unix.sh")], env={"PATH": f"{bindir}:{os.environ['PATH']}",
                                                         "PYTHON": str(old)})
    assert res.returncode != 0
    assert f"PYTHON={old} is not a working Python 3.10 or newer (it is Python 3.8.10)." in res.stderr
    assert not (proj / ".venv").exists()


def test_missing_venv_module_explained(tmp_path):
    """A Python without venv (Debian without python3-venv): the script says which package to install."""
    proj = agent_copy(tmp_path / "agent")
    bindir = bare_path(tmp_path)
    py = fake_python(tmp_path / "py312", "3.12.1", ok=True, venv_ok=False)
    res = run([BASH, str(proj / "start_unix.sh")], env={"PATH": str(bindir), "PYTHON": str(py)})
    assert res.returncode != 0
    assert "Creating the Python environment (.venv) - first run only..." in res.stdout
    assert f"Could not create the Python environment (.venv) with {py}." in res.stderr
    assert "sudo apt-get install python3-venv" in res.stderr
    assert not (proj / ".venv").exists()


def test_missing_agent_file_explained(tmp_path):
    """Without ib_data_agent.py beside it the script says to extract all files, and exits non-zero."""
    proj = agent_copy(tmp_path / "agent", stub=False)
    res = run([BASH, str(proj / "start_unix.sh")])
    assert res.returncode != 0
    assert "ib_data_agent.py is not beside this script" in res.stderr


# --- the real thing, once: venv + install in a folder with spaces ---------------------------------------

@pytest.fixture(scope="module")
def spaced_agent(tmp_path_factory):
    """An agent folder under a path with spaces, set up once by a first start_unix.sh run."""
    proj = agent_copy(tmp_path_factory.mktemp("start") / "My IB Agent (copy)")
    first = run([str(proj / "start_unix.sh"), "--version"], cwd=Path("/"))
    return proj, first


@pytest.mark.slow
def test_first_run_creates_venv_and_installs(spaced_agent):
    """First run from another directory, in a path with spaces: venv created, deps installed, agent run."""
    proj, first = spaced_agent
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Creating the Python environment (.venv) - first run only..." in first.stdout
    assert "Installing dependencies (first run or requirements changed)..." in first.stdout
    assert f"STUB-AGENT prefix={proj / '.venv'} cwd={proj} argv=['--version']" in first.stdout
    assert (proj / ".venv" / ".requirements.sha256").is_file()
    assert not (proj / ".venv" / ".requirements-dev.sha256").exists()


@pytest.mark.slow
def test_second_run_skips_install_and_passes_args_and_status(spaced_agent):
    """Second run: no venv creation, no pip; arguments (with spaces) and the exit status pass through."""
    proj, first = spaced_agent
    assert first.returncode == 0
    res = run([str(proj / "start_unix.sh"), "--check", "two words", "--exit", "3"], cwd=proj.parent)
    assert res.returncode == 3
    assert "Creating the Python environment" not in res.stdout
    assert "Installing dependencies" not in res.stdout
    assert "argv=['--check', 'two words', '--exit', '3']" in res.stdout


@pytest.mark.slow
def test_changed_requirements_trigger_reinstall(spaced_agent):
    """Editing requirements.txt makes the next run reinstall, and the run after that does not."""
    proj, first = spaced_agent
    assert first.returncode == 0
    with open(proj / "requirements.txt", "a") as f:
        f.write("# a comment changes the hash\n")
    again = run([str(proj / "start_unix.sh"), "--version"])
    assert again.returncode == 0, again.stderr
    assert "Installing dependencies (first run or requirements changed)..." in again.stdout
    assert "Creating the Python environment" not in again.stdout
    quiet = run([str(proj / "start_unix.sh"), "--version"])
    assert quiet.returncode == 0 and "Installing dependencies" not in quiet.stdout and "STUB-AGENT" in quiet.stdout


def test_run_tests_uses_venv_dir_and_passes_pytest_args():
    """run_tests.sh with VENV_DIR set runs pytest from that venv with the given arguments."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "python").exists() or venv == Path(sys.base_prefix):
        pytest.skip("tests are not running inside a virtual environment")
    res = run([str(ROOT / "run_tests.sh"), "--collect-only", "-q", "tests/test_sim_relay.py::test_heartbeat_is_acked_and_counted"],
              env={"VENV_DIR": str(venv)}, cwd=Path("/"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "tests/test_sim_relay.py::test_heartbeat_is_acked_and_counted" in res.stdout
    assert "1 test collected" in res.stdout


# --- the Windows scripts: same steps, same messages (we cannot run Windows here) ---------------------

def _ps1_text() -> str:
    return PS1.read_text().replace("''", "'")  # a ' inside a single-quoted PowerShell string is doubled


def _steps(text: str) -> list[tuple[str, str]]:
    """(number, title) of each "STEP n: title (...)" comment, the title cut at its first ( . ; or newline."""
    return [(m.group(1), re.split(r"[(.;]", m.group(2))[0].strip())
            for m in re.finditer(r"STEP (\d+): ([^\n]+)", text)]


def _stamp_one_liner(text: str) -> str:
    m = re.search(r'(import hashlib,os,sys;[^"]+)"', text)
    assert m, "requirements stamp one-liner not found"
    return m.group(1)


@pytest.mark.parametrize("script", [UNIX, BAT, PS1], ids=lambda p: p.name)
def test_scripts_carry_the_shared_messages(script):
    """Every user-facing message of the setup steps appears word for word in each start script."""
    text = _ps1_text() if script == PS1 else script.read_text()
    missing = [m for m in SHARED_MESSAGES if m not in text]
    assert missing == []


def test_scripts_take_the_same_steps_in_order():
    """The three scripts have the same numbered steps with the same titles, in the same order."""
    unix = _steps(UNIX.read_text())
    assert [n for n, _ in unix] == ["1", "2", "3", "4"]
    assert _steps(BAT.read_text()) == unix
    assert _steps(_ps1_text()) == unix


def test_scripts_share_the_requirements_stamp():
    """The requirements hash is computed by the same one-liner everywhere, so the stamp means the same."""
    one = _stamp_one_liner(UNIX.read_text())
    assert _stamp_one_liner(BAT.read_text()) == one
    assert _stamp_one_liner(PS1.read_text()) == one  # a double-quoted PowerShell string: quotes as is


def test_stamp_one_liner_detects_change(tmp_path):
    """The stamp one-liner says "stale" before a write, "fresh" after, and "stale" again after an edit."""
    code = _stamp_one_liner(UNIX.read_text())
    req, stamp = tmp_path / "requirements.txt", tmp_path / "stamp"
    req.write_text("pydantic\n")

    def stamp_rc(mode: str) -> int:
        return subprocess.run([sys.executable, "-c", code, mode, str(stamp), str(req)]).returncode

    assert stamp_rc("check") == 1
    assert stamp_rc("write") == 0 and stamp_rc("check") == 0
    req.write_text("pydantic>=2\n")
    assert stamp_rc("check") == 1


def test_windows_scripts_search_python_in_order():
    """Windows: $PYTHON, then python_bundle\\python.exe, then the py -3 launcher, then python."""
    bat = BAT.read_text()
    order = [bat.index("if defined PYTHON goto :try_env_python"), bat.index(r'"%HERE%\python_bundle\python.exe"'),
             bat.index("call :try_python py -3"), bat.index("call :try_python python")]
    assert order == sorted(order)
    ps1 = PS1.read_text()
    order = [ps1.index("if ($env:PYTHON)"), ps1.index(r"'python_bundle\python.exe'"), ps1.index("@('py', '-3')"),
             ps1.index("@(, 'python')")]
    assert order == sorted(order)
    assert "(3, 10)" in bat and "(3, 10)" in ps1


def test_windows_scripts_detect_zip_and_pause_on_error():
    """Windows: both detect a run from inside a ZIP, and keep the window open on errors (not in CI)."""
    bat, ps1 = BAT.read_text(), PS1.read_text()
    for text in (bat, ps1):
        assert "Please extract the ZIP first" in text
        assert "IB_AGENT_NO_PAUSE" in text
    assert "%HERESLASH:.zip\\=%" in bat and "pause" in bat
    assert r"-match '\.zip\\'" in ps1 and "Read-Host" in ps1


def test_bat_has_crlf_line_endings():
    """cmd.exe mis-finds goto labels in LF-only batch files: start_windows.bat is CRLF throughout."""
    data = BAT.read_bytes()
    assert data.count(b"\n") > 10
    assert data.count(b"\r\n") == data.count(b"\n")


@pytest.mark.parametrize("script", ["start_unix.sh", "run_tests.sh", ".ci/run"])
def test_bash_scripts_parse_and_are_executable(script):
    """The bash scripts are syntactically valid and executable (a newcomer runs them as ./name)."""
    path = ROOT / script
    assert os.access(path, os.X_OK)
    res = subprocess.run([BASH, "-n", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
