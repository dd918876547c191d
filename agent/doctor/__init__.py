"""`--check`: walk the README's checklist against the real TWS and relay, print ✓/✗ with the fix for each.

Steps (README "Check your setup"):
  1 config valid              agent.settings; a ConfigError's message
  2 TWS reachable             TCP connect to host:port; if not, which of the usual ports answer
  3 API enabled               the IB handshake completes (a port that accepts TCP but never answers it means the
                              API is off or another program holds the port)
  4 paper / live as IB_MODE   managedAccounts (message 15): D… = paper, U…/F… = live
  5 Read-Only API unticked    a what-if order (never transmitted): error 321 means Read-Only is on
  6 market data permission    one SPY quote with market data type 1; error 354 → try type 3 (delayed)
  7 relay reachable, key ok   connect to RELAY_URL, send auth, read auth_response, close

Steps 3–6 share one short-lived connection of the doctor's own (clientId = IB_CLIENT_ID + 50, so a running agent
keeps its id). It encodes and decodes with `ibapi`'s own EClient/Decoder but does its I/O on asyncio, because
`ibapi.EClient.connect()` has no handshake timeout: here every wait is bounded, and the whole check ends in well
under 30 s however broken the setup is. The relay step runs concurrently with the TWS steps.
The key is never printed.

The package, one file per part: report.py (the steps, a result, advice, the report: pure), ib_probe.py (the
short-lived API session), tws_steps.py (steps 2-6), relay_step.py (step 7), checklist.py (step 1, the whole run,
``main``). Imports flow that way: report <- ib_probe <- tws_steps; report <- relay_step; all <- checklist.
"""

from agent.doctor.checklist import main, run, run_checks
from agent.doctor.ib_probe import IbProbe, IBErrorSeen, port_open, probe_ports
from agent.doctor.relay_step import CHECK_VERSION, check_relay
from agent.doctor.report import (CLIENT_ID_OFFSET, FAIL, OK, PORT_NAMES, PROBE_SYMBOL, SKIP, TITLES, USUAL_PORTS,
                                 CheckResult, Timeouts, account_mode, format_report, mode_advice, port_advice,
                                 summary_line)
from agent.doctor.tws_steps import check_market_data, check_read_only, check_tws, open_api_session

__all__ = ["CHECK_VERSION", "CLIENT_ID_OFFSET", "FAIL", "OK", "PORT_NAMES", "PROBE_SYMBOL", "SKIP", "TITLES",
           "USUAL_PORTS", "CheckResult", "IBErrorSeen", "IbProbe", "Timeouts", "account_mode", "check_market_data",
           "check_read_only", "check_relay", "check_tws", "format_report", "main", "mode_advice",
           "open_api_session", "port_advice", "port_open", "probe_ports", "run", "run_checks", "summary_line"]
