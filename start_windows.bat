@echo off
rem IB Data Agent - Windows starter. Double-click it, or run from a command prompt:
rem
rem   start_windows.bat            run the agent (Ctrl+C to stop)
rem   start_windows.bat --demo     run it end to end against the built-in TWS simulator and reference relay
rem   start_windows.bat --check    check the setup (TWS, ports, key, relay) and say what to fix
rem
rem Every argument goes to ib_data_agent.py unchanged. First run: creates a Python environment (.venv) beside
rem this script and installs the dependencies; later runs reinstall only when a requirements file changed.
rem start_unix.sh and start_windows.ps1 take the same steps with the same messages: keep the three parallel.
rem
rem cmd notes: no parenthesised blocks around paths (a path such as "Program Files (x86)" would end the
rem block early), so the flow is goto-based; and no "%" or double quotes inside the Python one-liners.

setlocal EnableExtensions DisableDelayedExpansion
set "HERE=%~dp0"
if "%HERE:~-1%"=="\" set "HERE=%HERE:~0,-1%"
set "VENV=%HERE%\.venv"
set "VPY=%VENV%\Scripts\python.exe"
set "PY="

rem Run from inside a ZIP, Explorer extracts only this file to %TEMP%\...\name.zip\: nothing else is there.
set "HERESLASH=%HERE%\"
if /i not "%HERESLASH:.zip\=%"=="%HERESLASH%" goto :in_zip
if not exist "%HERE%\ib_data_agent.py" goto :in_zip

rem STEP 1: find Python 3.10 or newer (%PYTHON% if set, else the bundled python_bundle\python.exe, then the
rem py -3 launcher, then python). Sets PY.
if defined PYTHON goto :try_env_python
if exist "%HERE%\python_bundle\python.exe" call :try_python "%HERE%\python_bundle\python.exe"
if defined PY goto :have_python
call :try_python py -3
if defined PY goto :have_python
call :try_python python
if defined PY goto :have_python
echo Python was not found.
goto :python_install_help

:try_env_python
call :try_python "%PYTHON%"
if defined PY goto :have_python
echo PYTHON=%PYTHON% is not a working Python 3.10 or newer.
goto :python_install_help

:have_python
rem STEP 2: create the virtual environment on first run (or when the old one no longer runs).
if not exist "%VPY%" goto :create_venv
"%VPY%" -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)" >nul 2>&1
if not errorlevel 1 goto :have_venv
echo The Python environment in %VENV% no longer works: recreating it.
rmdir /s /q "%VENV%"

:create_venv
echo Creating the Python environment (.venv) - first run only...
%PY% -c "import venv, ensurepip" >nul 2>&1
if errorlevel 1 goto :venv_failed
%PY% -m venv "%VENV%"
if errorlevel 1 goto :venv_failed

:have_venv
rem STEP 3: install the dependencies, only when a requirements file changed since the last install.
rem The stamp is sha256 of the interpreter version and each file's bytes (same one-liner as start_unix.sh).
set "REQ_STAMP_PY=import hashlib,os,sys; m,s=sys.argv[1:3]; h=hashlib.sha256(sys.version.encode()); [h.update(open(f,'rb').read()) for f in sys.argv[3:]]; d=h.hexdigest(); o=open(s).read().strip() if os.path.exists(s) else ''; m=='write' and open(s,'w').write(d); sys.exit(0 if m=='write' or o==d else 1)"
set "RT_STAMP=%VENV%\.requirements.sha256"
set "DEV_STAMP=%VENV%\.requirements-dev.sha256"
set "KIND=runtime"
if /i "%~1"=="--demo" set "KIND=dev"
if "%KIND%"=="dev" goto :check_dev
set "REQ=%HERE%\requirements.txt"
"%VPY%" -c "%REQ_STAMP_PY%" check "%RT_STAMP%" "%HERE%\requirements.txt"
if not errorlevel 1 goto :run_agent
goto :install
:check_dev
set "REQ=%HERE%\requirements-dev.txt"
"%VPY%" -c "%REQ_STAMP_PY%" check "%DEV_STAMP%" "%HERE%\requirements.txt" "%REQ%"
if not errorlevel 1 goto :run_agent

:install
echo Installing dependencies (first run or requirements changed)...
"%VPY%" -m pip install --disable-pip-version-check -q -r "%REQ%"
if errorlevel 1 goto :pip_failed
"%VPY%" -c "%REQ_STAMP_PY%" write "%RT_STAMP%" "%HERE%\requirements.txt"
if "%KIND%"=="dev" "%VPY%" -c "%REQ_STAMP_PY%" write "%DEV_STAMP%" "%HERE%\requirements.txt" "%REQ%"
echo Dependencies installed.

:run_agent
rem STEP 4: run the agent with every argument passed through; its exit status is this script's.
cd /d "%HERE%"
"%VPY%" "%HERE%\ib_data_agent.py" %*
set "RC=%ERRORLEVEL%"
if not "%RC%"=="0" goto :pause_exit
exit /b 0

rem --- subroutines and error exits ----------------------------------------------------------------

:try_python
rem Sets PY (a command, quoted where it is a path) when "%*" runs and is Python 3.10 or newer.
%* -c "import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)" >nul 2>&1
if errorlevel 1 exit /b 1
set PY=%*
exit /b 0

:python_install_help
echo.
echo IB Data Agent needs Python 3.10 or newer.
echo Install it, then run this script again:
echo   Windows:        download it from https://www.python.org/downloads/windows/
echo                   and tick "Add Python to PATH" during installation (then restart your computer)
echo   or download the agent again from the MA Tracker web app: it comes with Python bundled.
echo If Python 3.10+ is installed under another name, set PYTHON=C:\path\to\python.exe and run this script again.
set "RC=1"
goto :pause_exit

:venv_failed
if exist "%VENV%" rmdir /s /q "%VENV%"
echo.
echo Could not create the Python environment (.venv) with %PY%.
echo Install Python from https://www.python.org/downloads/windows/ (tick "Add Python to PATH"),
echo Then run this script again.
set "RC=1"
goto :pause_exit

:pip_failed
echo.
echo Could not install the dependencies (pip's message is above).
echo Check your internet connection, then run this script again.
set "RC=1"
goto :pause_exit

:in_zip
echo.
echo This script is running from inside a ZIP file (or without the agent's other files beside it).
echo Please extract the ZIP first: right-click it, choose "Extract All...", then run start_windows.bat
echo from the extracted folder.
set "RC=1"
goto :pause_exit

:pause_exit
rem Keep a double-clicked window open so the message can be read (not in CI or when asked not to).
if defined CI exit /b %RC%
if defined IB_AGENT_NO_PAUSE exit /b %RC%
echo.
pause
exit /b %RC%
