"""IB Data Agent — connects your Interactive Brokers TWS / IB Gateway to the MA Tracker web app.

Run it (double-click start_windows.bat, or ./start_unix.sh, or ``python ib_data_agent.py``):

    python ib_data_agent.py                 run the agent (until Ctrl+C)
    python ib_data_agent.py --check         check the setup step by step (TWS, ports, account, relay key)
    python ib_data_agent.py --demo          run against a built-in simulator, no TWS or internet needed
    python ib_data_agent.py orders FILE     place a reviewed order file (JSON or CSV, a path or an https URL)
    python ib_data_agent.py --version
    python ib_data_agent.py --config PATH   use another config.env
"""

from __future__ import annotations

import asyncio
import sys
from typing import Sequence

from agent import VERSION

USAGE = """usage: ib_data_agent.py [--config PATH] [--check | --demo | --version | --help]
       ib_data_agent.py orders FILE [--dry-run] [--yes] [--wait SECONDS] [--config PATH]

  (no option)     run the agent until Ctrl+C
  --check         check TWS / IB Gateway, the account and the relay key, step by step
  --demo          run the agent against a built-in TWS simulator and relay (nothing leaves this machine)
  orders FILE     place a reviewed order file against TWS: checked, previewed, confirmed, never twice
  --config PATH   read settings from PATH instead of config.env beside the agent
  --version       print the version and exit
"""

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _split_config(args: list[str]) -> tuple[str | None, list[str]]:
    """Take --config PATH / --config=PATH out of args."""
    path, rest, i = None, [], 0
    while i < len(args):
        a = args[i]
        if a == "--config":
            if i + 1 >= len(args):
                raise SystemExit("--config needs a path, e.g. --config C:\\ib-data-agent\\config.env")
            path, i = args[i + 1], i + 2
            continue
        if a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return path, rest


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "orders":
        from agent.orders import runner
        return runner.main(args[1:])
    # --check / --demo anywhere on the line; their own options (e.g. --config for --check) go with them.
    if "--check" in args:
        from agent import doctor
        return doctor.main([a for a in args if a != "--check"])
    if "--demo" in args:
        from agent import demo
        return demo.main([a for a in args if a != "--demo"])
    if "--version" in args:
        print(f"IB Data Agent {VERSION}")
        return EXIT_OK
    if "-h" in args or "--help" in args:
        print(USAGE)
        return EXIT_OK
    try:
        config_path, rest = _split_config(args)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return EXIT_CONFIG
    if rest:
        print(f"Unknown option(s): {' '.join(rest)}\n\n{USAGE}", file=sys.stderr)
        return EXIT_CONFIG
    return run_agent(config_path)


def run_agent(config_path: str | None = None) -> int:
    """Load settings (a bad one stops here, before any connection), set up logging, run until Ctrl+C."""
    from agent.errors import ConfigError
    from agent.settings import load_settings
    try:
        settings = load_settings(config_path=config_path)
    except ConfigError as e:
        problems = [e, *getattr(e, "others", ())]
        if len(problems) == 1:
            print(f"Configuration problem: {e.user_message}", file=sys.stderr)
        else:
            print(f"{len(problems)} configuration problems:", file=sys.stderr)
            for p in problems:
                print(f"  - {p.user_message}", file=sys.stderr)
        if any(p.setting == "IB_PROVIDER_KEY" for p in problems):
            print("Your API key comes in the config.env file of the agent you download from the MA Tracker web "
                  "app. If you moved the agent, keep config.env in the same folder as ib_data_agent.py.",
                  file=sys.stderr)
        return EXIT_CONFIG

    from agent import console, daemon
    log_file = console.setup_logging(settings.log_dir, settings.secrets(), level=settings.log_level)
    if log_file is not None:
        import logging
        logging.getLogger("agent").info("Details are logged to %s", log_file)
    try:
        asyncio.run(daemon.serve_until_signal(settings))
    except KeyboardInterrupt:      # Windows: no signal handlers on the event loop; asyncio.run cancelled the agent
        pass
    except Exception:               # noqa: BLE001 - an unexpected fault: one line here, the traceback in the log
        import logging
        logging.getLogger("agent").exception("The agent stopped on an unexpected error")
        return EXIT_FAILED
    finally:
        console.teardown_logging()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
