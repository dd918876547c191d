# IB Data Agent - Windows starter (PowerShell). Right-click > "Run with PowerShell", or from a prompt:
#
#   .\start_windows.ps1            run the agent (Ctrl+C to stop)
#   .\start_windows.ps1 --demo     run it end to end against the built-in TWS simulator and reference relay
#   .\start_windows.ps1 --check    check the setup (TWS, ports, key, relay) and say what to fix
#
# Every argument goes to ib_data_agent.py unchanged. First run: creates a Python environment (.venv) beside
# this script and installs the dependencies; later runs reinstall only when a requirements file changed.
# start_unix.sh and start_windows.bat take the same steps with the same messages: keep the three parallel.
# Windows PowerShell 5.1 compatible (no ternary, no ??, no &&). If Windows refuses to run scripts, use
# start_windows.bat, or: powershell -ExecutionPolicy Bypass -File .\start_windows.ps1

$ErrorActionPreference = 'Continue'
$Here = Split-Path -Parent $MyInvocation.MyCommand.Path
$Venv = Join-Path $Here '.venv'
$VPy = Join-Path $Venv 'Scripts\python.exe'
$AgentArgs = $args

function Exit-WithPause([int]$Code) {
    # Keep a double-clicked window open so the message can be read (not in CI or when asked not to).
    if (-not $env:CI -and -not $env:IB_AGENT_NO_PAUSE) {
        Write-Host ''
        Read-Host 'Press Enter to close this window' | Out-Null
    }
    exit $Code
}

function Test-Python([string[]]$Cmd) {
    # True when the command runs and is Python 3.10 or newer (a missing command is simply not a candidate).
    $exe = $Cmd[0]
    # A missing command must not leave a stale $LASTEXITCODE from an earlier candidate to be read as success.
    if (-not (Get-Command $exe -ErrorAction SilentlyContinue)) { return $false }
    $rest = @()
    if ($Cmd.Length -gt 1) { $rest = $Cmd[1..($Cmd.Length - 1)] }
    try {
        & $exe @rest -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' *> $null
        return ($LASTEXITCODE -eq 0)
    } catch {
        return $false
    }
}

function Show-PythonInstallHelp {
    Write-Host ''
    Write-Host 'IB Data Agent needs Python 3.10 or newer.'
    Write-Host 'Install it, then run this script again:'
    Write-Host '  Windows:        download it from https://www.python.org/downloads/windows/'
    Write-Host '                  and tick "Add Python to PATH" during installation (then restart your computer)'
    Write-Host '  or download the agent again from the MA Tracker web app: it comes with Python bundled.'
    Write-Host 'If Python 3.10+ is installed under another name, set PYTHON=C:\path\to\python.exe and run this script again.'
    Exit-WithPause 1
}

# Run from inside a ZIP, Explorer extracts only this file to %TEMP%\...\name.zip\: nothing else is there.
if (("$Here\" -match '\.zip\\') -or -not (Test-Path (Join-Path $Here 'ib_data_agent.py'))) {
    Write-Host ''
    Write-Host 'This script is running from inside a ZIP file (or without the agent''s other files beside it).'
    Write-Host 'Please extract the ZIP first: right-click it, choose "Extract All...", then run start_windows.bat'
    Write-Host 'from the extracted folder.'
    Exit-WithPause 1
}

# STEP 1: find Python 3.10 or newer ($env:PYTHON if set, else the bundled python_bundle\python.exe, then the
# py -3 launcher, then python). Sets $Py (a command and its leading arguments).
$Py = $null
if ($env:PYTHON) {
    if (Test-Python @(, $env:PYTHON)) {
        $Py = @(, $env:PYTHON)
    } else {
        Write-Host "PYTHON=$($env:PYTHON) is not a working Python 3.10 or newer."
        Show-PythonInstallHelp
    }
} else {
    $candidates = @()
    $bundled = Join-Path $Here 'python_bundle\python.exe'
    if (Test-Path $bundled) { $candidates += , @(, $bundled) }
    $candidates += , @('py', '-3')
    $candidates += , @(, 'python')
    foreach ($c in $candidates) {
        if (Test-Python $c) { $Py = $c; break }
    }
    if (-not $Py) {
        Write-Host 'Python was not found.'
        Show-PythonInstallHelp
    }
}
$PyExe = $Py[0]
$PyRest = @()
if ($Py.Length -gt 1) { $PyRest = $Py[1..($Py.Length - 1)] }

# STEP 2: create the virtual environment on first run (or when the old one no longer runs).
$venvOk = (Test-Path $VPy) -and (Test-Python @(, $VPy))
if (-not $venvOk) {
    if (Test-Path $Venv) {
        Write-Host "The Python environment in $Venv no longer works: recreating it."
        Remove-Item -Recurse -Force $Venv
    }
    Write-Host 'Creating the Python environment (.venv) - first run only...'
    & $PyExe @PyRest -c 'import venv, ensurepip' *> $null
    $created = ($LASTEXITCODE -eq 0)
    if ($created) {
        & $PyExe @PyRest -m venv $Venv
        $created = ($LASTEXITCODE -eq 0)
    }
    if (-not $created) {
        if (Test-Path $Venv) { Remove-Item -Recurse -Force $Venv }
        Write-Host ''
        Write-Host "Could not create the Python environment (.venv) with $($Py -join ' ')."
        Write-Host 'Install Python from https://www.python.org/downloads/windows/ (tick "Add Python to PATH"),'
        Write-Host 'Then run this script again.'
        Exit-WithPause 1
    }
}

# STEP 3: install the dependencies, only when a requirements file changed since the last install.
# The stamp is sha256 of the interpreter version and each file's bytes (same one-liner as start_unix.sh).
$ReqStampPy = "import hashlib,os,sys; m,s=sys.argv[1:3]; h=hashlib.sha256(sys.version.encode()); [h.update(open(f,'rb').read()) for f in sys.argv[3:]]; d=h.hexdigest(); o=open(s).read().strip() if os.path.exists(s) else ''; m=='write' and open(s,'w').write(d); sys.exit(0 if m=='write' or o==d else 1)"
$RtStamp = Join-Path $Venv '.requirements.sha256'
$DevStamp = Join-Path $Venv '.requirements-dev.sha256'
$RtReq = Join-Path $Here 'requirements.txt'
$Kind = 'runtime'
if ($AgentArgs.Count -gt 0 -and $AgentArgs[0] -eq '--demo') { $Kind = 'dev' }
if ($Kind -eq 'dev') {
    $Req = Join-Path $Here 'requirements-dev.txt'
    & $VPy -c $ReqStampPy check $DevStamp $RtReq $Req
} else {
    $Req = $RtReq
    & $VPy -c $ReqStampPy check $RtStamp $RtReq
}
if ($LASTEXITCODE -ne 0) {
    Write-Host 'Installing dependencies (first run or requirements changed)...'
    & $VPy -m pip install --disable-pip-version-check -q -r $Req
    if ($LASTEXITCODE -ne 0) {
        Write-Host ''
        Write-Host 'Could not install the dependencies (pip''s message is above).'
        Write-Host 'Check your internet connection, then run this script again.'
        Exit-WithPause 1
    }
    & $VPy -c $ReqStampPy write $RtStamp $RtReq
    if ($Kind -eq 'dev') { & $VPy -c $ReqStampPy write $DevStamp $RtReq $Req }
    Write-Host 'Dependencies installed.'
}

# STEP 4: run the agent with every argument passed through; its exit status is this script's.
Set-Location $Here
& $VPy (Join-Path $Here 'ib_data_agent.py') @AgentArgs
$rc = $LASTEXITCODE
if ($rc -ne 0) { Exit-WithPause $rc }
exit 0
