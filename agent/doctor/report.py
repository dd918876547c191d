"""The checklist's vocabulary and its pure logic: the seven steps, a result, the advice for a wrong port or mode,
and the printed report. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

USUAL_PORTS: tuple[int, ...] = (7497, 7496, 4002, 4001)
PORT_NAMES = {7497: "TWS paper", 7496: "TWS live", 4002: "IB Gateway paper", 4001: "IB Gateway live"}
CLIENT_ID_OFFSET = 50       # the doctor's own clientId = IB_CLIENT_ID + 50 (error 326 if a running agent held ours)
PROBE_SYMBOL = "SPY"        # a liquid symbol every US equity permission covers

OK, FAIL, SKIP = "ok", "fail", "skip"
MARK = {OK: "✓", FAIL: "✗", SKIP: "–"}


@dataclass(frozen=True)
class Timeouts:
    """Every wait the doctor makes. Sum of the TWS path (worst case) ≈ 1 + 4 + 4 + 4 + 2×4 ≈ 21 s < 30 s."""

    tcp: float = 1.0            # per port probe (they run in parallel)
    handshake: float = 4.0      # server version message after "API\0v100..157"
    start_api: float = 4.0      # managedAccounts (15) + nextValidId (9) after startApi
    what_if: float = 4.0        # openOrder (5) or error 321 after a what-if placeOrder
    quote: float = 4.0          # first price tick, per market data type tried
    relay: float = 6.0          # connect + auth_response


@dataclass
class CheckResult:
    number: int
    title: str
    status: str = SKIP          # ok | fail | skip
    detail: str = ""            # what was found
    fix: str = ""               # what to do (only when failed)
    note: str = ""              # a ✓ with a caveat (e.g. delayed data only)

    @property
    def ok(self) -> bool:
        return self.status == OK


TITLES = {
    1: "Configuration (config.env / environment) is valid",
    2: "TWS / IB Gateway is reachable",
    3: "The API is enabled (IB handshake completes)",
    4: "The account is the mode IB_MODE says (paper / live)",
    5: "'Read-Only API' is unticked",
    6: "Market data permission",
    7: "The relay is reachable and accepts the key",
}

API_SETTINGS = "File → Global Configuration → API → Settings"  # Edit → Global Configuration on some versions


# --- pure logic -------------------------------------------------------------------------------

def account_mode(accounts: Sequence[str]) -> str | None:
    """'paper' when every account id starts with D (DU… individual, DF… advisor), 'live' when any is U…/F…."""
    ids = [a.strip() for a in accounts if a and a.strip()]
    if not ids:
        return None
    if all(a.upper().startswith("D") for a in ids):
        return "paper"
    return "live"


def port_advice(host: str, tried: Sequence[int], answering: Sequence[int]) -> tuple[str, str]:
    """(detail, fix) when nothing answers on the configured port(s). ``answering``: the usual ports that did."""
    tried_s = ", ".join(str(p) for p in tried)
    others = [p for p in answering if p not in tried]
    if others:
        p = others[0]
        where = PORT_NAMES.get(p, "TWS/Gateway")
        also = ""
        if len(others) > 1:
            also = " (also answering: " + ", ".join(str(q) for q in others[1:]) + ")"
        return (f"nothing listens on {tried_s} at {host}; TWS/Gateway seems to be on {p} ({where}){also}",
                f"set IB_PORT={p} in config.env (or check the Socket Port in {API_SETTINGS})")
    return (f"nothing listens on {tried_s} at {host}, nor on any usual port "
            f"({', '.join(str(p) for p in USUAL_PORTS)})",
            "start TWS or IB Gateway and log in; in " + API_SETTINGS + " tick 'Enable ActiveX and Socket Clients' "
            "and check the Socket Port (TWS paper 7497 / live 7496, Gateway paper 4002 / live 4001)")


def mode_advice(mode: str, found: str, accounts: Sequence[str], port: int) -> tuple[str, str]:
    """(detail, fix) when the account TWS is logged in to is not the mode IB_MODE asks for."""
    acc = ", ".join(accounts)
    detail = f"IB_MODE={mode} but TWS on port {port} is logged in to a {found} account ({acc})"
    if mode == "paper":
        fix = ("log TWS/Gateway in with your paper-trading login (accounts starting with D), or, if you really "
               "mean live data, set IB_MODE=live")
    else:
        fix = "log TWS/Gateway in with your live login, or set IB_MODE=paper"
    return detail, fix


def summary_line(results: Sequence[CheckResult]) -> str:
    failed = [r for r in results if r.status == FAIL]
    skipped = [r for r in results if r.status == SKIP]
    if not failed and not skipped:
        return "All checks passed: the agent is ready (./start_unix.sh or start_windows.bat)."
    parts = []
    if failed:
        parts.append(f"{len(failed)} check(s) failed: " + ", ".join(str(r.number) for r in failed))
    if skipped:
        parts.append(f"{len(skipped)} not checked: " + ", ".join(str(r.number) for r in skipped))
    return "; ".join(parts) + ". Fix the first ✗ and run --check again."


def format_report(results: Sequence[CheckResult]) -> str:
    lines = []
    for r in results:
        lines.append(f" {MARK[r.status]} {r.number}. {r.title}")
        for label, text in (("", r.detail), ("note: ", r.note), ("fix: ", r.fix if r.status != OK else "")):
            lines.extend(f"      {label}{line}" for line in text.splitlines())
    lines.append("")
    lines.append(summary_line(results))
    return "\n".join(lines)
