"""Steps 2-6 on one IbProbe session: reachable, API enabled, paper / live, Read-Only unticked, market data."""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from agent.doctor.ib_probe import ClosedByTWS, HandshakeSilent, IbProbe, IBErrorSeen, NotIB, probe_ports
from agent.doctor.report import (API_SETTINGS, CLIENT_ID_OFFSET, FAIL, OK, PORT_NAMES, PROBE_SYMBOL, SKIP, TITLES,
                                 CheckResult, Timeouts, account_mode, mode_advice, port_advice)

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
        except HandshakeSilent:
            await probe.close()
            raise StepFailed(
                f"port {port} accepts TCP but never answers IB's API handshake (waited {timeouts.handshake:g} s)",
                f"look for a TWS dialog asking to accept the incoming API connection (add 127.0.0.1 to 'Trusted "
                f"IPs' to stop it); in TWS: {API_SETTINGS}, tick 'Enable ActiveX and Socket Clients' and click "
                f"Apply; if it is ticked, another program holds port {port}: check the Socket Port, or restart "
                f"TWS") from None
        except NotIB as exc:
            await probe.close()
            raise StepFailed(f"something other than TWS/IB Gateway answers on port {port}: {exc}",
                             f"check the Socket Port in {API_SETTINGS} and set IB_PORT to it; another program "
                             f"holds port {port}") from None
        except (ClosedByTWS, asyncio.IncompleteReadError, ConnectionError) as exc:
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
        except ClosedByTWS:
            r5.status, r5.detail = FAIL, "TWS closed the connection after a what-if order"
            r5.fix = "restart TWS and run --check again"
        try:
            results[4] = await check_market_data(probe, timeouts.quote, symbol)
        except ClosedByTWS:
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
