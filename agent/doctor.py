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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from agent.errors import ConfigError

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


# --- TCP probing -----------------------------------------------------------------------------

async def port_open(host: str, port: int, timeout: float) -> bool:
    """True when something accepts a TCP connection on host:port within ``timeout``."""
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    w.close()
    try:
        await asyncio.wait_for(w.wait_closed(), 1.0)
    except (OSError, asyncio.TimeoutError):
        pass
    return True


async def probe_ports(host: str, ports: Sequence[int], timeout: float) -> list[int]:
    """The ports (in the given order) that accept TCP; probed in parallel."""
    ports = list(dict.fromkeys(ports))
    found = await asyncio.gather(*(port_open(host, p, timeout) for p in ports))
    return [p for p, ok in zip(ports, found) if ok]


# --- a short-lived IB connection: asyncio I/O, ibapi codec -----------------------------------

class _HandshakeSilent(Exception):
    """TCP accepted, but no answer to the API handshake."""


class _Closed(Exception):
    """TWS closed the connection."""


class _NotIB(Exception):
    """The peer answered, but not in IB's API protocol (e.g. a web server on that port)."""


MAX_MESSAGE = 16 * 1024 * 1024      # a length prefix beyond this is not IB talking (b"HTTP" reads as 1.2 GB)


class _Collector:
    """An ibapi EWrapper stand-in: the decoder calls these; each call becomes an event tuple on a queue."""

    def __init__(self, queue: asyncio.Queue):
        self.q = queue

    def __getattr__(self, name: str) -> Callable[..., None]:
        # every other EWrapper callback (farm status, openOrderEnd, …) is of no interest here
        return lambda *a, **k: None

    def error(self, reqId: int, errorCode: int, errorString: str, *rest: Any) -> None:
        self.q.put_nowait(("error", int(reqId), int(errorCode), str(errorString)))

    def managedAccounts(self, accountsList: str) -> None:
        self.q.put_nowait(("accounts", [a for a in accountsList.split(",") if a.strip()]))

    def nextValidId(self, orderId: int) -> None:
        self.q.put_nowait(("next_id", int(orderId)))

    def openOrder(self, orderId: int, contract: Any, order: Any, orderState: Any) -> None:
        self.q.put_nowait(("open_order", int(orderId), getattr(orderState, "status", ""),
                           getattr(orderState, "initMarginChange", "")))

    def orderStatus(self, orderId: int, status: str, *rest: Any) -> None:
        self.q.put_nowait(("order_status", int(orderId), status))

    def tickPrice(self, reqId: int, tickType: int, price: float, attrib: Any) -> None:
        self.q.put_nowait(("tick_price", int(reqId), int(tickType), float(price)))

    def marketDataType(self, reqId: int, marketDataType: int) -> None:
        self.q.put_nowait(("md_type", int(reqId), int(marketDataType)))

    def currentTime(self, time: int) -> None:
        self.q.put_nowait(("current_time", int(time)))

    def connectionClosed(self) -> None:
        pass


class _Sink:
    """Stands in for ibapi's Connection so EClient's encoders write straight to our asyncio stream."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer

    def isConnected(self) -> bool:
        return not self.writer.is_closing()

    def sendMsg(self, msg: bytes) -> int:
        self.writer.write(msg)
        return len(msg)

    def disconnect(self) -> None:
        self.writer.close()


class IbProbe:
    """One short-lived API session: handshake, startApi, then a few requests, each awaited with a timeout."""

    def __init__(self, host: str, port: int, client_id: int):
        self.host, self.port, self.client_id = host, port, client_id
        self.events: asyncio.Queue = asyncio.Queue()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.server_version = 0
        self.client: Any = None
        self._pump: asyncio.Task | None = None
        self.closed = False

    async def open(self, tcp_timeout: float, handshake_timeout: float) -> int:
        from ibapi import comm
        from ibapi.server_versions import MAX_CLIENT_VER, MIN_CLIENT_VER

        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), tcp_timeout)
        self.writer.write(b"API\0" + comm.make_msg(f"v{MIN_CLIENT_VER}..{MAX_CLIENT_VER}"))
        try:
            fields = await asyncio.wait_for(self._read_fields(), handshake_timeout)
        except asyncio.TimeoutError:
            raise _HandshakeSilent() from None
        # the answer is two fields, no message id: server version, connection time
        try:
            self.server_version = int(fields[0])
        except (ValueError, IndexError):
            raise _NotIB(f"the first answer was {fields[:2]!r}, not a server version") from None
        return self.server_version

    async def start(self, client_id: int, timeout: float) -> tuple[list[str], int]:
        """startApi; returns (accounts, next order id). Raises IBErrorSeen(326) etc. or _Closed / TimeoutError."""
        from ibapi.client import EClient
        from ibapi.decoder import Decoder

        self.client_id = client_id
        wrapper = _Collector(self.events)
        client = EClient(wrapper)
        client.conn = _Sink(self.writer)
        client.serverVersion_ = self.server_version
        client.clientId = client_id
        client.setConnState(EClient.CONNECTED)
        self.client = client
        self._decoder = Decoder(wrapper, self.server_version)
        self._pump = asyncio.ensure_future(self._pump_messages())
        client.startApi()
        accounts: list[str] | None = None
        next_id: int | None = None

        def seen(ev: tuple) -> bool:
            nonlocal accounts, next_id
            if ev[0] == "accounts":
                accounts = ev[1]
            elif ev[0] == "next_id":
                next_id = ev[1]
            elif ev[0] == "error" and ev[2] in (326, 502, 504, 507):   # 326 clientId in use
                raise IBErrorSeen(ev[2], ev[3])
            return accounts is not None and next_id is not None

        await self.expect(seen, timeout)
        return accounts or [], next_id or 1

    async def expect(self, predicate: Callable[[tuple], bool], timeout: float) -> tuple:
        """Consume events until predicate(event) is true; raises asyncio.TimeoutError or _Closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise asyncio.TimeoutError()
            ev = await asyncio.wait_for(self.events.get(), left)
            if ev[0] == "closed":
                self.events.put_nowait(ev)      # later waits see it too
                raise _Closed()
            if predicate(ev):
                return ev

    async def _read_fields(self) -> tuple:
        from ibapi import comm
        assert self.reader is not None
        head = await self.reader.readexactly(4)
        size = struct.unpack("!I", head)[0]
        if size > MAX_MESSAGE:
            raise _NotIB(f"it sent {head!r}, which is not an IB API message")
        body = await self.reader.readexactly(size)
        return comm.read_fields(body)

    async def _pump_messages(self) -> None:
        try:
            while True:
                fields = await self._read_fields()
                try:
                    self._decoder.interpret(fields)
                except Exception as exc:  # one bad message must not end the check
                    self.events.put_nowait(("bad_message", repr(exc)))
        except (asyncio.IncompleteReadError, OSError, _NotIB):
            pass
        finally:
            self.events.put_nowait(("closed",))

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            try:
                await asyncio.wait_for(self._pump, 1.0)
            except (asyncio.CancelledError, asyncio.TimeoutError, Exception):
                pass
        if self.writer is not None:
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 1.0)
            except (OSError, asyncio.TimeoutError):
                pass
        self.closed = True


class IBErrorSeen(Exception):
    def __init__(self, code: int, message: str):
        self.code, self.message = code, message
        super().__init__(f"IB error {code}: {message}")


def _stock(symbol: str) -> Any:
    from ibapi.contract import Contract
    c = Contract()
    c.symbol, c.secType, c.exchange, c.currency = symbol, "STK", "SMART", "USD"
    return c


async def check_read_only(probe: IbProbe, order_id: int, timeout: float,
                          symbol: str = PROBE_SYMBOL) -> CheckResult:
    """Step 5: a what-if order is a margin preview TWS never transmits; error 321 = Read-Only API is on."""
    from agent.tws.wrapper import new_ib_order

    r = CheckResult(5, TITLES[5])
    order = new_ib_order()
    order.action, order.orderType, order.totalQuantity = "BUY", "LMT", 1
    order.lmtPrice = 1.00
    order.whatIf = True
    order.transmit = True
    probe.client.placeOrder(order_id, _stock(symbol), order)

    def answer(ev: tuple) -> bool:
        return (ev[0] in ("open_order", "order_status") and ev[1] == order_id) or \
               (ev[0] == "error" and ev[1] == order_id)

    try:
        ev = await probe.expect(answer, timeout)
    except asyncio.TimeoutError:
        r.status = FAIL
        r.detail = f"no answer to a what-if order within {timeout:g} s, so Read-Only could not be checked"
        r.fix = (f"in {API_SETTINGS} make sure 'Read-Only API' is unticked; if TWS shows a dialog about the "
                 "order, answer it")
        return r
    if ev[0] == "error" and ev[2] == 321:
        r.status = FAIL
        r.detail = f"TWS answered error 321: {ev[3]}"
        r.fix = (f"in TWS: {API_SETTINGS}, untick 'Read-Only API', click Apply (market data works either way, "
                 "but orders and the order book are blocked)")
        return r
    r.status = OK
    if ev[0] == "error":
        # any other rejection of the preview (e.g. 201) comes after the read-only test, which TWS makes first
        r.detail = f"orders are accepted by the API (the what-if preview itself answered {ev[2]}: {ev[3]})"
    else:
        r.detail = "a what-if order (never transmitted) was accepted"
    return r


DELAYED_ADVISORY = 10167        # "Requested market data is not subscribed. Displaying delayed market data."
NO_PERMISSION = (354, 10089, 10090, 10168)
PRICE_TICKS = {1, 2, 4, 9, 66, 67, 68, 75}      # bid, ask, last, close; delayed 66/67/68/75


async def _one_quote(probe: IbProbe, req_id: int, md_type: int, timeout: float, symbol: str) -> tuple[str, str]:
    """('price'|'delayed'|'denied'|'timeout', text). Cancels the line in every case."""
    probe.client.reqMarketDataType(md_type)
    probe.client.reqMktData(req_id, _stock(symbol), "", False, False, [])
    delayed = False

    def answer(ev: tuple) -> bool:
        nonlocal delayed
        if ev[0] == "md_type" and ev[1] == req_id and ev[2] in (3, 4):
            delayed = True
        if ev[0] == "error" and ev[1] == req_id and ev[2] == DELAYED_ADVISORY:
            delayed = True
            return False
        if ev[0] == "tick_price" and ev[1] == req_id and ev[2] in PRICE_TICKS and ev[3] > 0:
            delayed = delayed or ev[2] >= 66
            return True
        return ev[0] == "error" and ev[1] == req_id
    try:
        ev = await probe.expect(answer, timeout)
    except asyncio.TimeoutError:
        return "timeout", f"no {symbol} price within {timeout:g} s"
    finally:
        if not probe.writer.is_closing():
            probe.client.cancelMktData(req_id)
    if ev[0] == "tick_price":
        return ("delayed" if delayed else "price"), f"{symbol} {ev[3]:g}"
    return "denied", f"error {ev[2]}: {ev[3]}"


async def check_market_data(probe: IbProbe, timeout: float, symbol: str = PROBE_SYMBOL) -> CheckResult:
    """Step 6: live quote (type 1); on 354 & co. try delayed (type 3): delayed only is ✓ with a note."""
    r = CheckResult(6, TITLES[6])
    kind, text = await _one_quote(probe, 9001, 1, timeout, symbol)
    if kind == "price":
        r.status, r.detail = OK, f"live data ({text})"
        return r
    if kind == "delayed":
        r.status, r.detail = OK, f"delayed data only ({text})"
        r.note = ("quotes are 15–20 minutes late: subscribe to US options/equity market data in Client Portal "
                  "for live quotes")
        return r
    first = text
    kind, text = await _one_quote(probe, 9002, 3, timeout, symbol)
    if kind in ("price", "delayed"):
        r.status, r.detail = OK, f"delayed data only ({text}; live data: {first})"
        r.note = ("no live market data subscription: the agent falls back to delayed quotes. Subscribe in "
                  "Client Portal → Settings → Market Data Subscriptions for live quotes")
        return r
    r.status = FAIL
    r.detail = f"no {symbol} quote, live ({first}) nor delayed ({text})"
    r.fix = ("check that TWS is logged in and its data farms are connected (green in the TWS status bar); "
             "subscribe to market data in Client Portal, or enable delayed data; outside market hours a quote "
             "can take longer: run --check again")
    return r


class StepFailed(Exception):
    """A step's ✗: what was found and what to do."""

    def __init__(self, detail: str, fix: str):
        super().__init__(detail)
        self.detail, self.fix = detail, fix


async def open_api_session(host: str, port: int, base_id: int,
                           timeouts: Timeouts) -> tuple[IbProbe, int, list[str], int]:
    """Step 3: handshake + startApi. Returns (probe, server version, accounts, next order id) or raises StepFailed
    (the probe is closed then). Error 326 (clientId in use) moves on to the next id, twice."""
    for attempt in range(3):
        cid = base_id + attempt
        probe = IbProbe(host, port, cid)
        try:
            version = await probe.open(timeouts.tcp, timeouts.handshake)
            accounts, next_id = await probe.start(cid, timeouts.start_api)
            return probe, version, accounts, next_id
        except IBErrorSeen as exc:
            await probe.close()
            if exc.code == 326 and attempt < 2:
                continue
            raise StepFailed(f"TWS refused the API session: {exc}",
                             "another program uses this clientId: close it or set IB_CLIENT_ID to another number"
                             if exc.code == 326 else "restart TWS and try again") from None
        except _HandshakeSilent:
            await probe.close()
            raise StepFailed(
                f"port {port} accepts TCP but never answers IB's API handshake (waited {timeouts.handshake:g} s)",
                f"look for a TWS dialog asking to accept the incoming API connection (add 127.0.0.1 to 'Trusted "
                f"IPs' to stop it); in TWS: {API_SETTINGS}, tick 'Enable ActiveX and Socket Clients' and click "
                f"Apply; if it is ticked, another program holds port {port}: check the Socket Port, or restart "
                f"TWS") from None
        except _NotIB as exc:
            await probe.close()
            raise StepFailed(f"something other than TWS/IB Gateway answers on port {port}: {exc}",
                             f"check the Socket Port in {API_SETTINGS} and set IB_PORT to it; another program "
                             f"holds port {port}") from None
        except (_Closed, asyncio.IncompleteReadError, ConnectionError) as exc:
            await probe.close()
            raise StepFailed(f"TWS closed the connection during the handshake ({type(exc).__name__})",
                             f"in TWS: {API_SETTINGS}, add 127.0.0.1 to 'Trusted IPs' (or accept the "
                             "incoming-connection dialog), make sure no other session uses the same clientId, "
                             "then try again") from None
        except (asyncio.TimeoutError, OSError) as exc:
            await probe.close()
            raise StepFailed(f"the handshake started but TWS sent no accounts / next order id within "
                             f"{timeouts.start_api:g} s ({type(exc).__name__})",
                             "TWS may be showing a dialog (e.g. accept the incoming API connection) or still "
                             "logging in") from None
    raise AssertionError("unreachable: the last attempt returns or raises")


async def check_tws(settings: Any, timeouts: Timeouts, usual_ports: Sequence[int],
                    symbol: str = PROBE_SYMBOL) -> list[CheckResult]:
    """Steps 2–6 in order; a failed step marks those that depend on it as not checked."""
    r2, r3, r4, r5, r6 = (CheckResult(n, TITLES[n]) for n in (2, 3, 4, 5, 6))
    results = [r2, r3, r4, r5, r6]
    host = settings.ib_host
    candidates = list(settings.candidate_ports())
    configured = [settings.ib_port] if settings.ib_port else candidates

    open_ports = await probe_ports(host, list(configured) + [p for p in usual_ports if p not in configured],
                                   timeouts.tcp)
    port = next((p for p in configured if p in open_ports), None)
    if port is None:
        r2.status = FAIL
        r2.detail, r2.fix = port_advice(host, configured, open_ports)
        _skip(results[1:], "TWS is not reachable")
        return results
    r2.status = OK
    r2.detail = f"{host}:{port} accepts connections"
    if not settings.ib_port:
        r2.detail += f" (IB_PORT not set; tried {', '.join(map(str, candidates))} for IB_MODE={settings.ib_mode})"

    try:
        probe, version, accounts, next_id = await open_api_session(
            host, port, int(settings.ib_client_id) + CLIENT_ID_OFFSET, timeouts)
    except StepFailed as exc:
        r3.status, r3.detail, r3.fix = FAIL, exc.detail, exc.fix
        _skip(results[2:], "no API session")
        return results
    r3.status = OK
    r3.detail = f"handshake completed (server version {version}, clientId {probe.client_id})"

    try:
        found = account_mode(accounts)
        if found is None:
            r4.status = FAIL
            r4.detail = "TWS named no account (managedAccounts was empty)"
            r4.fix = "finish logging in to TWS / IB Gateway, then try again"
        elif found != settings.ib_mode:
            r4.status = FAIL
            r4.detail, r4.fix = mode_advice(settings.ib_mode, found, accounts, port)
        else:
            r4.status = OK
            r4.detail = f"{found} account{'s' if len(accounts) > 1 else ''} {', '.join(accounts)}"
            if port in PORT_NAMES and not PORT_NAMES[port].endswith(found):
                r4.note = (f"port {port} is {PORT_NAMES[port]} by IB's defaults, yet the account is {found}: "
                           "the agent goes by the account, not the port")

        try:
            results[3] = await check_read_only(probe, next_id, timeouts.what_if, symbol)
        except _Closed:
            r5.status, r5.detail = FAIL, "TWS closed the connection after a what-if order"
            r5.fix = "restart TWS and run --check again"
        try:
            results[4] = await check_market_data(probe, timeouts.quote, symbol)
        except _Closed:
            r6.status, r6.detail = FAIL, "TWS closed the connection during the market data request"
            r6.fix = "restart TWS and run --check again"
    finally:
        await _close(probe)
    return results


async def _close(probe: IbProbe | None) -> None:
    if probe is not None and not probe.closed:
        await probe.close()


def _skip(results: Sequence[CheckResult], why: str) -> None:
    for r in results:
        if r.status == SKIP and not r.detail:
            r.detail = f"not checked: {why}"


# --- relay ------------------------------------------------------------------------------------

# The relay routes a user's requests to the connected agent with the highest version (dotted integers; anything else
# ties, and the later login wins). The check logs in as version 0, below every agent, so a running agent keeps
# receiving the web app's requests while the check is connected.
CHECK_VERSION = "0"


async def check_relay(settings: Any, timeout: float, version: str = CHECK_VERSION) -> CheckResult:
    """Step 7: connect, send auth, read auth_response, close (code 1000)."""
    import websockets

    from agent.protocol import auth_frame

    r = CheckResult(7, TITLES[7])
    url = settings.relay_url
    key = settings.provider_key.get_secret_value()
    extra: dict = {}
    if _loopback_url(url) and _connect_takes_proxy():
        extra["proxy"] = None       # never route a local relay through an HTTP proxy from the environment

    async def exchange() -> str:
        ws = await websockets.connect(url, open_timeout=timeout, close_timeout=1.0, max_size=2 ** 20, **extra)
        try:
            await ws.send(json.dumps(auth_frame(key, version)))
            return await ws.recv()
        finally:
            await ws.close()

    try:
        raw = await asyncio.wait_for(exchange(), timeout)
    except (asyncio.TimeoutError, TimeoutError):
        r.status = FAIL
        r.detail = f"WebSocket connection failed: no answer from {url} within {timeout:g} s"
        r.fix = "check your internet connection and RELAY_URL; a firewall or proxy may block WebSockets"
        return r
    except Exception as exc:        # websockets' InvalidURI / InvalidHandshake / ConnectionClosed, OSError
        r.status = FAIL
        r.detail = f"WebSocket connection failed: {type(exc).__name__}: {_redact(str(exc), key)}"
        r.fix = ("check your internet connection and RELAY_URL (default wss://dr3-dashboard.com/ws/data-provider); "
                 "the cloud may be briefly unavailable: the agent itself retries")
        return r
    try:
        msg = json.loads(raw)
    except (TypeError, ValueError):
        msg = {}
    if msg.get("type") == "auth_response" and msg.get("success") is True:
        r.status = OK
        r.detail = f"authenticated at {url} (provider id {msg.get('provider_id') or '?'})"
        r.note = ("the relay keeps one connection per key: if the agent is running, it may have been switched "
                  "to this check for a moment; it reconnects by itself")
        return r
    r.status = FAIL
    if msg.get("type") == "auth_response":
        r.detail = f"Authentication failed: the relay answered {msg.get('error') or 'no reason'!r}"
        r.fix = ("your API key may have been regenerated: download a fresh copy of the agent from the MA Tracker "
                 "web app (or set IB_PROVIDER_KEY to the new key)")
    else:
        r.detail = f"the relay at {url} did not answer the auth message as expected"
        r.fix = "check RELAY_URL: it must be the relay's /ws/data-provider address"
    return r


def _loopback_url(url: str) -> bool:
    from urllib.parse import urlsplit

    from agent.settings import is_loopback
    try:
        return is_loopback(urlsplit(url).hostname or "")
    except ValueError:
        return False


def _connect_takes_proxy() -> bool:
    """websockets >= 15 reads HTTP(S)_PROXY by default (``proxy=True``); older versions have no such argument."""
    import inspect

    import websockets
    try:
        return "proxy" in inspect.signature(websockets.connect).parameters
    except (TypeError, ValueError):
        return False


def _redact(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text


# --- the whole check --------------------------------------------------------------------------

async def run_checks(environ: dict | None = None, config_path: Any = None, *,
                     timeouts: Timeouts = Timeouts(), usual_ports: Sequence[int] = USUAL_PORTS,
                     settings: Any = None, probe_symbol: str = PROBE_SYMBOL) -> list[CheckResult]:
    """All seven results, in order. ``settings`` short-cuts step 1 (tests, demo)."""
    r1 = CheckResult(1, TITLES[1])
    if settings is None:
        from agent.settings import load_settings
        try:
            settings = load_settings(environ=environ, config_path=config_path)
        except ConfigError as exc:
            problems = [exc, *getattr(exc, "others", ())]
            r1.status = FAIL
            r1.detail = "\n".join(_config_problem(e) for e in problems)
            r1.fix = "\n".join(e.fix for e in problems if e.fix)
            # A missing or wrong key is the commonest first-run problem, and TWS can be checked without it.
            without_key = _settings_without_key(exc, environ, config_path)
            if without_key is None:
                rest = [CheckResult(n, TITLES[n], detail="not checked: the configuration is not valid")
                        for n in range(2, 8)]
                return [r1] + rest
            tws = await _guarded_tws(without_key, timeouts, usual_ports, probe_symbol)
            return [r1, *tws, CheckResult(7, TITLES[7], detail="not checked: no usable API key (see 1)")]
    r1.status = OK
    r1.detail = _config_summary(settings)
    tws, relay = await asyncio.gather(_guarded_tws(settings, timeouts, usual_ports, probe_symbol),
                                      check_relay(settings, timeouts.relay), return_exceptions=True)
    if isinstance(relay, BaseException):
        if not isinstance(relay, Exception):
            raise relay
        relay = CheckResult(7, TITLES[7], FAIL, f"the check itself failed: {type(relay).__name__}",
                            fix="please report this to the MA Tracker team")
    return [r1, *tws, relay]


def _config_problem(exc: ConfigError) -> str:
    shown = "" if exc.value is None else f" (got {exc.value!r})"
    return f"{exc.setting}{shown}: {exc.problem}"


NO_KEY = "doctor-checks-tws-without-a-key"     # stands in for a missing key so the TWS steps can still run


def _settings_without_key(exc: ConfigError, environ: dict | None, config_path: Any) -> Any:
    """Settings with a stand-in key when the key was the only problem; None otherwise. Never sent anywhere:
    the relay step is skipped."""
    if exc.setting != "IB_PROVIDER_KEY" or getattr(exc, "others", ()):
        return None
    import os

    from agent.settings import load_settings
    env = dict(os.environ if environ is None else environ)
    env["IB_PROVIDER_KEY"] = NO_KEY
    try:
        return load_settings(environ=env, config_path=config_path)
    except ConfigError:
        return None


async def _guarded_tws(settings: Any, timeouts: Timeouts, usual_ports: Sequence[int],
                       symbol: str) -> list[CheckResult]:
    try:
        return await check_tws(settings, timeouts, usual_ports, symbol)
    except Exception as exc:  # noqa: BLE001 - --check prints a ✗, never a traceback
        return [CheckResult(n, TITLES[n], FAIL if n == 2 else SKIP,
                            f"the check itself failed: {type(exc).__name__}: {exc}" if n == 2 else "not checked",
                            fix="please report this (with the lines above) to the MA Tracker team" if n == 2 else "")
                for n in range(2, 7)]


def _config_summary(settings: Any) -> str:
    port = settings.ib_port if settings.ib_port else "auto"
    text = (f"IB {settings.ib_host}:{port}, IB_MODE={settings.ib_mode}, clientId {settings.ib_client_id}, "
            f"relay {settings.relay_url}")
    overridden = list(getattr(settings, "overridden", []) or [])
    if overridden:
        text += f" (the environment overrides config.env for {', '.join(sorted(overridden))})"
    return text


async def run(environ: dict | None = None, config_path: Any = None, *, out: Callable[[str], Any] = print,
              timeouts: Timeouts = Timeouts(), usual_ports: Sequence[int] = USUAL_PORTS,
              settings: Any = None, probe_symbol: str = PROBE_SYMBOL) -> int:
    """Run every check, print the report, return the exit status (0 only when all pass)."""
    started = time.monotonic()
    out("IB Data Agent — checking your setup")
    out("")
    results = await run_checks(environ, config_path, timeouts=timeouts, usual_ports=usual_ports, settings=settings,
                               probe_symbol=probe_symbol)
    out(format_report(results))
    out(f"(checked in {time.monotonic() - started:.1f} s)")
    return 0 if all(r.ok for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ib_data_agent.py --check", add_help=True)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help="path of config.env (default: beside the agent)")
    args, _unknown = parser.parse_known_args(list(argv) if argv is not None else sys.argv[1:])
    try:
        return asyncio.run(run(config_path=args.config))
    except KeyboardInterrupt:
        print("check interrupted")
        return 130
