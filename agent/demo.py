"""`--demo`: the whole agent end to end, with no TWS and no cloud.

Starts the TWS simulator (seeded, realistic quote latency) and the reference relay on 127.0.0.1 (port 0, a demo
key), runs the real agent daemon against them in this process, waits until the relay sees the provider and TWS
is connected, then drives the web app's three flows through the relay's HTTP endpoints, exactly as the MA Tracker
web app would:

  Curate   POST /options/relay/fetch-chain   JNPR (merger target, deal price 40.00), close ~2 months out
  Monitor  POST /options/relay/fetch-prices  a few spread legs taken from that chain
  Account  POST /options/relay/sell-scan     AAPL calls
  status   GET  /options/relay/ib-status
  Orders   POST /options/relay/place-order   a paper limit order well under the market (it rests), then
           GET  /options/relay/open-orders   the order book showing it, and
           POST /options/relay/cancel-order  its cancellation

and prints each answer as a table with its timing. Everything is shut down on the way out (also on Ctrl+C).
Exit status 0 when every flow answered and the agent kept IB's limits (no pacing violation, no market data line
left open, no line refused for too many), 1 (with the reason) otherwise.

HTTP calls use the standard library (urllib in a worker thread), so the demo needs nothing the agent does not,
besides aiohttp for the reference relay itself (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from agent.console import table

DEMO_KEY = "demo-provider-key-0000"     # the reference relay accepts this key and nothing else
DEAL_TICKER, DEAL_PRICE = "JNPR", 40.0
SELL_TICKER = "AAPL"
ORDER_TICKER = "SPY"                    # the demo's paper order: 1 share, limit 20 % under the market (it rests)
HTTP_TIMEOUT = 60.0                     # one flow; the relay's own waits are 60–180 s, the sim answers in seconds
READY_TIMEOUT = 30.0                    # agent authenticated at the relay and connected to the simulator
LINES_SETTLE = 30.0                     # after the flows, the agent's last cancels reach TWS (usually at once)


class DemoFailed(Exception):
    """One step of the demo did not work; the message says which and why."""


@dataclass
class FlowResult:
    name: str
    seconds: float
    data: Any


# --- pure: payloads and tables -------------------------------------------------------------------

def chain_payload(today: dt.date) -> dict:
    """The Curate page's request: a merger target around its deal price, closing about two months out."""
    close = today + dt.timedelta(days=60)
    return {"ticker": DEAL_TICKER, "dealPrice": DEAL_PRICE, "expectedCloseDate": close.isoformat(),
            "scanParams": {"daysBeforeClose": 60}}


def spread_legs(chain: dict, n_spreads: int = 2) -> list[dict]:
    """Legs for the Monitor page: call spreads just below the deal price, from the chain's first expiry with quotes.

    A merger-arb trader buys the lower call and sells the one at the deal price; we take the two strikes under
    the deal price and the one at it, i.e. up to ``n_spreads`` adjacent call spreads.
    """
    rows = [r for r in chain.get("contracts", []) if r.get("right") == "C" and (r.get("bid") or r.get("ask"))]
    if not rows:
        raise DemoFailed("fetch-chain returned no call with a quote to build spread legs from")
    expiries = sorted({r["expiry"] for r in rows})
    for expiry in expiries:
        strikes = sorted({float(r["strike"]) for r in rows if r["expiry"] == expiry})
        below = [s for s in strikes if s <= DEAL_PRICE]
        if len(below) >= 2:
            picked = below[-(n_spreads + 1):]
            return [{"ticker": DEAL_TICKER, "strike": s, "expiry": expiry, "right": "C"} for s in picked]
    # fall back: any two strikes of the first expiry
    expiry = expiries[0]
    strikes = sorted({float(r["strike"]) for r in rows if r["expiry"] == expiry})[:2]
    return [{"ticker": DEAL_TICKER, "strike": s, "expiry": expiry, "right": "C"} for s in strikes]


def _fmt(v: Any, kind: str = "num") -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if kind == "int":
        try:
            return f"{int(round(float(v))):,}"
        except (TypeError, ValueError):
            return str(v)
    if kind == "pct":
        try:
            return f"{float(v) * 100:.1f}%"
        except (TypeError, ValueError):
            return str(v)
    if kind == "greek":
        try:
            return f"{float(v):+.3f}"
        except (TypeError, ValueError):
            return str(v)
    if isinstance(v, (int, float)):
        return f"{v:,.2f}"
    return str(v)


def chain_table(data: dict, max_rows: int = 24) -> str:
    rows = data.get("contracts", [])
    body = [[r.get("expiry", ""), _fmt(r.get("strike")), r.get("right", ""), _fmt(r.get("bid")), _fmt(r.get("ask")),
             _fmt(r.get("mid")), _fmt(r.get("volume"), "int"), _fmt(r.get("open_interest"), "int"),
             _fmt(r.get("implied_vol"), "pct"), _fmt(r.get("delta"), "greek")] for r in rows[:max_rows]]
    text = table(["expiry", "strike", "right", "bid", "ask", "mid", "volume", "open int", "IV", "delta"], body)
    if len(rows) > max_rows:
        text += f"\n… and {len(rows) - max_rows} more rows"
    return text


def prices_table(legs: Sequence[dict], data: dict) -> str:
    body = []
    for leg, r in zip(legs, data.get("contracts", [])):
        name = f"{leg['ticker']} {leg['expiry']} {float(leg['strike']):g}{leg['right']}"
        if r is None:
            body.append([name] + ["no quote"] + [""] * 6)
            continue
        body.append([name, _fmt(r.get("bid")), _fmt(r.get("ask")), _fmt(r.get("mid")), _fmt(r.get("delta"), "greek"),
                     _fmt(r.get("gamma"), "greek"), _fmt(r.get("theta"), "greek"), _fmt(r.get("implied_vol"), "pct")])
    return table(["leg", "bid", "ask", "mid", "delta", "gamma", "theta", "IV"], body)


def sell_table(data: dict, max_rows: int = 12) -> str:
    rows = data.get("contracts", [])
    body = [[r.get("expiry", ""), _fmt(r.get("strike")), _fmt(r.get("bid")), _fmt(r.get("ask")), _fmt(r.get("mid")),
             _fmt(r.get("premium")), _fmt(r.get("otm_distance"), "pct"), _fmt(r.get("annual_yield"), "pct"),
             _fmt(r.get("delta"), "greek")] for r in rows[:max_rows]]
    text = table(["expiry", "strike", "bid", "ask", "mid", "premium", "OTM", "yield/yr", "delta"], body)
    if len(rows) > max_rows:
        text += f"\n… and {len(rows) - max_rows} more rows"
    return text


def status_table(data: dict) -> str:
    farms = data.get("farm_status") or {}
    body = [["connected", _fmt(data.get("connected"))],
            ["data available", _fmt(data.get("data_available"))],
            ["read-only session", _fmt(data.get("read_only_session"))],
            ["data farms", ", ".join(f"{k} {'ok' if v else 'down'}" for k, v in sorted(farms.items())) or "—"],
            ["message", str(data.get("message") or "—")]]
    return table(["ib-status", "value"], body)


def orders_table(book: dict) -> str:
    body = []
    for o in book.get("orders", []):
        c, order, state = o.get("contract", {}), o.get("order", {}), o.get("orderState", {})
        body.append([str(o.get("orderId")), str(order.get("account", "")), str(order.get("action", "")),
                     _fmt(order.get("totalQuantity"), "int"), str(c.get("symbol", "")), str(order.get("orderType", "")),
                     _fmt(order.get("lmtPrice")), str(state.get("status", "")), str(order.get("orderRef", ""))])
    return table(["order", "account", "side", "qty", "symbol", "type", "limit", "status", "orderRef"], body)


def order_payload(quote: dict) -> dict:
    """A paper order that rests: BUY 1 at 80 % of the last price, on a penny tick."""
    limit = round(float(quote.get("price") or 0) * 0.8, 2)
    return {"contract": {"symbol": ORDER_TICKER, "secType": "STK", "exchange": "SMART", "currency": "USD"},
            "order": {"action": "BUY", "totalQuantity": 1, "orderType": "LMT", "lmtPrice": limit, "tif": "DAY"},
            "timeout_sec": 20}


# --- HTTP, the web app's side ---------------------------------------------------------------------

def _http(method: str, url: str, body: dict | None, timeout: float) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    # no ProxyHandler settings: the relay is on 127.0.0.1, and an HTTP(S)_PROXY in the environment must not
    # send the demo's requests (or anything else) off this machine
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read() or b"null")
        except ValueError:
            detail = None
        return exc.code, detail


async def call(base: str, method: str, route: str, body: dict | None = None,
               timeout: float = HTTP_TIMEOUT) -> FlowResult:
    """One web-app call through the relay; DemoFailed unless HTTP 200."""
    url = f"{base}/options/relay/{route}"
    start = time.perf_counter()
    try:
        status, data = await asyncio.wait_for(asyncio.to_thread(_http, method, url, body, timeout), timeout + 5)
    except (OSError, asyncio.TimeoutError) as exc:
        raise DemoFailed(f"{method} {route}: no answer from the relay ({type(exc).__name__}: {exc})") from None
    seconds = time.perf_counter() - start
    if status != 200:
        detail = data.get("detail") if isinstance(data, dict) else data
        raise DemoFailed(f"{method} {route} answered HTTP {status}: {detail}")
    return FlowResult(route, seconds, data)


# --- orchestration -----------------------------------------------------------------------------

def demo_settings(sim_port: int, relay_url: str, log_dir: Path) -> Any:
    """Settings for the simulator and relay only: never the user's config.env (its key must not reach a demo)."""
    from pydantic import SecretStr

    from agent.settings import Settings
    return Settings(provider_key=SecretStr(DEMO_KEY), ib_host="127.0.0.1", ib_port=sim_port, ib_mode="paper",
                    relay_url=relay_url, log_dir=log_dir,
                    sources={"IB_PROVIDER_KEY": "demo", "IB_PORT": "demo", "RELAY_URL": "demo"})


async def _start_agent(settings: Any) -> tuple[Any, asyncio.Task]:
    """The agent daemon and its task in this loop (cancel = stop); the daemon tells which lines it holds."""
    from agent.daemon import Daemon
    daemon = Daemon(settings)
    return daemon, asyncio.create_task(daemon.run(), name="demo-agent")


async def _wait_ready(relay: Any, agent: asyncio.Task, timeout: float) -> None:
    """Until the relay has our provider and the agent reports TWS connected."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def left() -> float:
        return max(0.1, deadline - loop.time())

    await _unless_agent_stops(relay.wait_provider(left()), agent, left(), "connecting to the relay",
                              f"the agent did not authenticate at the demo relay within {timeout:g} s")
    def tws_connected(f: dict) -> bool:
        return ((f.get("type") == "ib_accounts" and bool(f.get("accounts")))
                or (f.get("type") == "agent_state" and bool(f.get("ib_connected"))))

    await _unless_agent_stops(relay.wait_frame(tws_connected, left()), agent, left(), "connecting to the simulator",
                              f"the agent did not report TWS connected within {timeout:g} s")


async def _unless_agent_stops(aw: Any, agent: asyncio.Task, timeout: float, step: str, too_late: str) -> None:
    """Wait for ``aw``; DemoFailed if the agent task ends first ("stopped before <step>") or ``aw`` fails or is not
    done within ``timeout`` (``too_late``)."""
    waiter = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({waiter, agent}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if agent in done:
        waiter.cancel()
        raise DemoFailed(f"the agent stopped before {step}: {_task_outcome(agent)}")
    if waiter not in done or waiter.exception() is not None:
        waiter.cancel()
        raise DemoFailed(too_late)


def _task_outcome(task: asyncio.Task) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return f"{type(exc).__name__}: {exc}" if exc else "it returned"


async def lines_left_open(sim: Any, daemon: Any, timeout: float) -> int:
    """Market data lines TWS holds beyond those the agent counts as its own (in use, or kept warm): lines it
    forgot to cancel. A flow may answer before its last cancels reach TWS, so this waits (up to ``timeout``) for
    the two counts to meet; TWS drops a client's lines with its socket, so this must be asked before the agent
    stops."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        extra = sim.stats()["active_lines"] - daemon.pacer.lines_in_use
        if extra <= 0 or loop.time() >= deadline:
            return max(0, extra)
        await asyncio.sleep(0.05)     # the simulator's counters offer no event to wait for


def limits_broken(stats: dict, left_open: int) -> str | None:
    """Why the agent broke IB's limits in this run (None when it kept them): pacing violations (error 100), lines
    refused because too many were open (101), lines left open."""
    refused = sum(1 for e in stats.get("errors_sent", []) if e.get("code") == 101)
    problems = [f"{n} {what}" for n, what in ((len(stats["violations"]), "pacing violations (TWS error 100)"),
                                              (refused, "market data lines refused as too many (TWS error 101)"),
                                              (left_open, "market data lines left open")) if n]
    return "the agent broke IB's limits: " + ", ".join(problems) if problems else None


async def run_flows(base: str, out: Callable[[str], Any], today: dt.date) -> list[FlowResult]:
    results = []

    payload = chain_payload(today)
    out(f"\n1) Curate — fetch-chain {DEAL_TICKER} around the {DEAL_PRICE:.2f} deal price, "
        f"expected close {payload['expectedCloseDate']}")
    chain = await call(base, "POST", "fetch-chain", payload)
    results.append(chain)
    n = len(chain.data.get("contracts", []))
    if n == 0:
        raise DemoFailed("fetch-chain answered with no contracts")
    out(f"   {n} contracts, spot {_fmt(chain.data.get('spotPrice'))}, expirations "
        f"{', '.join(chain.data.get('expirations', []))} — {chain.seconds:.2f} s")
    out(_indent(chain_table(chain.data)))

    legs = spread_legs(chain.data)
    out(f"\n2) Monitor — fetch-prices for {len(legs)} spread legs")
    prices = await call(base, "POST", "fetch-prices", {"contracts": legs})
    results.append(prices)
    if len(prices.data.get("contracts", [])) != len(legs):
        raise DemoFailed("fetch-prices did not answer one row per leg")
    out(f"   {prices.seconds:.2f} s")
    out(_indent(prices_table(legs, prices.data)))

    out(f"\n3) Account — sell-scan {SELL_TICKER} calls")
    scan = await call(base, "POST", "sell-scan", {"ticker": SELL_TICKER, "right": "C", "ntm_pct": 0.05,
                                                  "business_days": 15})
    results.append(scan)
    m = len(scan.data.get("contracts", []))
    if m == 0:
        raise DemoFailed("sell-scan answered with no contracts")
    out(f"   {m} contracts, spot {_fmt(scan.data.get('spotPrice'))} — {scan.seconds:.2f} s (best yield first)")
    out(_indent(sell_table(scan.data)))

    status = await call(base, "GET", "ib-status")
    results.append(status)
    out(f"\n4) Status light — ib-status ({status.seconds:.2f} s)")
    out(_indent(status_table(status.data)))
    if not status.data.get("connected"):
        raise DemoFailed("ib-status says TWS is not connected")

    results += await order_flow(base, out)
    return results


async def order_flow(base: str, out: Callable[[str], Any]) -> list[FlowResult]:
    """5) Orders: a paper limit order that rests, the book showing it, its cancellation."""
    quote = await call(base, "POST", "stock-quote", {"ticker": ORDER_TICKER})
    payload = order_payload(quote.data)
    order = payload["order"]
    out(f"\n5) Orders — place-order {order['action']} {order['totalQuantity']} {ORDER_TICKER} LMT "
        f"{order['lmtPrice']:.2f} (paper; 20 % under the market, so it rests), show the book, cancel it")
    placed = await call(base, "POST", "place-order", payload)
    oid = placed.data.get("orderId")
    if placed.data.get("status") not in ("Submitted", "PreSubmitted"):
        raise DemoFailed(f"place-order answered status {placed.data.get('status')!r}, expected a resting order")
    out(f"   order {oid}: {placed.data.get('status')} — {placed.seconds:.2f} s")
    book = await call(base, "GET", "open-orders")
    if oid not in [o.get("orderId") for o in book.data.get("orders", [])]:
        raise DemoFailed(f"open-orders does not list order {oid}")
    out(f"   open-orders ({book.seconds:.2f} s):")
    out(_indent(orders_table(book.data)))
    cancelled = await call(base, "POST", "cancel-order", {"orderId": oid})
    if cancelled.data.get("ok") is not True or cancelled.data.get("status") != "Cancelled":
        raise DemoFailed(f"cancel-order answered {cancelled.data}")
    out(f"   cancel-order: {cancelled.data.get('status')} — {cancelled.seconds:.2f} s")
    return [placed, book, cancelled]


class AgentConsole:
    """The agent's console lines (logger "agent", INFO and up, key redacted), kept aside while the demo prints its
    tables, then shown at the end: what a trader would see in the agent's window. The simulator's and relay's
    warnings join them; their chatter below WARNING does not."""

    def __init__(self) -> None:
        import io
        import logging

        from agent import console
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(console.ConsoleFormatter())
        self.handler.addFilter(console.RedactingFilter([DEMO_KEY]))
        self._saved: list[tuple[Any, int, bool]] = []
        self._levels = {"agent": logging.INFO, "sim": logging.WARNING, "ibapi": logging.CRITICAL,
                        "websockets": logging.CRITICAL, "aiohttp": logging.ERROR}

    def __enter__(self) -> "AgentConsole":
        import logging
        for name, level in self._levels.items():
            lg = logging.getLogger(name)
            self._saved.append((lg, lg.level, lg.propagate))
            lg.setLevel(level)
            lg.addHandler(self.handler)
            lg.propagate = False        # the demo's stdout stays readable; nothing reaches the root logger
        return self

    def __exit__(self, *exc: Any) -> None:
        for lg, level, propagate in self._saved:
            lg.removeHandler(self.handler)
            lg.setLevel(level)
            lg.propagate = propagate

    def lines(self) -> list[str]:
        return [line for line in self.buffer.getvalue().splitlines() if line.strip()]


def _indent(text: str) -> str:
    return "\n".join("   " + line for line in text.splitlines())


async def run(*, latency: str = "realistic", seed: int = 7, out: Callable[[str], Any] = print,
              ready_timeout: float = READY_TIMEOUT, log_dir: Path | None = None) -> int:
    """The whole demo; returns the exit status. ``latency="fast"`` for tests."""
    from sim.relay import ReferenceRelay
    from sim.tws import SimConfig, TwsSimulator

    started = time.perf_counter()
    sim = TwsSimulator(SimConfig(port=0, latency=latency, seed=seed))
    relay = ReferenceRelay(api_key=DEMO_KEY, port=0)
    agent: asyncio.Task | None = None
    agent_console = AgentConsole()
    tmp = None
    if log_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ib-agent-demo-")
        log_dir = Path(tmp.name)
    agent_console.__enter__()
    try:
        await sim.start()
        await relay.start()
        out(f"Demo: TWS simulator on 127.0.0.1:{sim.port} (seed {seed}, {latency} latency), "
            f"reference relay on {relay.http_url}")
        settings = demo_settings(sim.port, relay.ws_url, log_dir)
        daemon, agent = await _start_agent(settings)
        await _wait_ready(relay, agent, ready_timeout)
        out(f"Agent connected to the simulator and the relay in {time.perf_counter() - started:.1f} s")
        results = await run_flows(relay.http_url, out, dt.date.today())
        out("\nTimings: " + ", ".join(f"{r.name} {r.seconds:.2f} s" for r in results))
        left_open = await lines_left_open(sim, daemon, LINES_SETTLE)
        stats = sim.stats()
        warm = daemon.pacer.lines_warm
        out(f"Simulator: peak {stats['peak_msg_rate']} messages/s from the agent (TWS allows 50), "
            f"{len(stats['violations'])} pacing violations, peak {stats['peak_lines']} market data lines, "
            f"{left_open} left open ({warm} legs kept warm for Monitor's next refresh)")
        broken = limits_broken(stats, left_open)
        if broken:
            raise DemoFailed(broken)
        out(f"Demo finished in {time.perf_counter() - started:.1f} s: all flows answered.")
        return 0
    except DemoFailed as exc:
        out(f"\nDEMO FAILED: {exc}")
        return 1
    finally:
        if agent is not None:
            agent.cancel()
            try:
                await asyncio.wait_for(agent, 10)
            except (asyncio.CancelledError, asyncio.TimeoutError):
                pass
            except Exception as exc:  # the agent's own failure is already reported, or irrelevant on the way out
                out(f"(agent stopped with {type(exc).__name__}: {exc})")
        await relay.stop()
        await sim.stop()
        agent_console.__exit__(None, None, None)
        lines = agent_console.lines()
        if lines:
            out("\nWhat the agent printed meanwhile:")
            out(_indent("\n".join(lines)))
        if tmp is not None:
            tmp.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ib_data_agent.py --demo")
    parser.add_argument("--demo", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--latency", default="realistic", choices=["realistic", "fast"],
                        help="the simulator's quote latency (default: realistic)")
    parser.add_argument("--seed", type=int, default=7, help="the simulator's random seed (default: 7)")
    args, _unknown = parser.parse_known_args(list(argv) if argv is not None else sys.argv[1:])
    try:
        return asyncio.run(run(latency=args.latency, seed=args.seed))
    except KeyboardInterrupt:
        print("demo interrupted")
        return 130
