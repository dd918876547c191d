"""`--demo` (agent/demo.py): the pure helpers, and the whole demo end to end in-process."""

from __future__ import annotations

import asyncio
import datetime as dt
import re

import pytest

from agent import demo


def _row(expiry: str, strike: float, right: str = "C", bid: float = 1.0, ask: float = 1.1) -> dict:
    return {"symbol": "JNPR", "expiry": expiry, "strike": strike, "right": right, "bid": bid, "ask": ask,
            "mid": (bid + ask) / 2, "volume": 10, "open_interest": 100, "implied_vol": 0.06, "delta": 0.5}


def test_chain_payload_is_two_months_out_around_the_deal_price():
    """The Curate request names JNPR, the 40.00 deal price and a close date 60 days after today."""
    p = demo.chain_payload(dt.date(2026, 1, 10))
    assert p["ticker"] == "JNPR" and p["dealPrice"] == 40.0
    assert p["expectedCloseDate"] == "2026-03-11"


def test_spread_legs_take_adjacent_calls_at_and_below_the_deal_price():
    """Legs are the quoted calls of the first expiry, the highest strikes at or under the deal price."""
    chain = {"contracts": [_row("20260320", s) for s in (32.5, 35.0, 37.5, 40.0, 42.5)]
             + [_row("20260320", 40.0, "P")] + [_row("20260417", 37.5)]}
    legs = demo.spread_legs(chain)
    assert [(leg["strike"], leg["right"], leg["expiry"]) for leg in legs] == \
        [(35.0, "C", "20260320"), (37.5, "C", "20260320"), (40.0, "C", "20260320")]


def test_spread_legs_skip_unquoted_rows():
    """A call with neither bid nor ask is not used as a leg."""
    chain = {"contracts": [_row("20260320", 37.5, bid=0, ask=0), _row("20260417", 37.5), _row("20260417", 40.0)]}
    legs = demo.spread_legs(chain)
    assert {leg["expiry"] for leg in legs} == {"20260417"}


def test_spread_legs_without_quotes_fail_clearly():
    """A chain with no quoted call is a demo failure with a reason, not an empty request."""
    try:
        demo.spread_legs({"contracts": [_row("20260320", 40.0, bid=0, ask=0)]})
    except demo.DemoFailed as exc:
        assert "no call" in str(exc)
    else:
        raise AssertionError("DemoFailed not raised")


def test_prices_table_shows_a_missing_leg():
    """A null price row (no bid, no ask) is printed as 'no quote' on its leg's line."""
    legs = [{"ticker": "JNPR", "strike": 40.0, "expiry": "20260320", "right": "C"}]
    text = demo.prices_table(legs, {"contracts": [None]})
    assert "JNPR 20260320 40C" in text and "no quote" in text


def test_tables_format_missing_values_as_dash():
    """None values print as — and percentages as percent."""
    text = demo.chain_table({"contracts": [dict(_row("20260320", 40.0), implied_vol=None, delta=None)]})
    assert "—" in text
    text = demo.sell_table({"contracts": [dict(_row("20260320", 240.0), premium=105.0, otm_distance=0.05,
                                               annual_yield=0.123)]})
    assert "12.3%" in text and "5.0%" in text


async def test_demo_runs_end_to_end(tmp_path):
    """The demo starts the simulator, the relay and the agent, answers all three flows and exits 0."""
    lines: list[str] = []
    status = await demo.run(latency="fast", out=lines.append, log_dir=tmp_path)
    text = "\n".join(lines)
    assert status == 0, text
    assert "fetch-chain" in text and "fetch-prices" in text and "sell-scan" in text
    # the three tables: chain, legs (one priced row per leg), seller ranking
    assert "open int" in text and "yield/yr" in text
    n_legs = int(re.search(r"fetch-prices for (\d+) spread legs", text)[1])
    leg_rows = re.findall(r"^ +JNPR \d{8} [\d.]+C +\d+\.\d\d +\d+\.\d\d ", text, re.MULTILINE)
    assert n_legs >= 2 and len(leg_rows) == n_legs, text
    assert "all flows answered" in text
    # the agent kept IB's limits: the numbers themselves ("10 pacing violations" contains "0 pacing violations")
    limits = re.search(r"(\d+) pacing violations, peak (\d+) market data lines, (\d+) left open", text)
    assert limits and int(limits[1]) == 0 and int(limits[2]) > 0 and int(limits[3]) == 0, text
    assert demo.DEMO_KEY not in text


def test_limits_broken_names_each_breach_with_its_count():
    """Pacing violations, lines refused as too many (101) and lines left open each fail the demo, with their
    counts; a clean run (other TWS errors aside) passes."""
    clean = {"violations": [], "errors_sent": [{"code": 200}, {"code": 2104}]}
    assert demo.limits_broken(clean, 0) is None
    ten = {"violations": [{"client_id": 17, "code": 100}] * 10, "errors_sent": []}
    assert re.search(r"\b10 pacing violations", demo.limits_broken(ten, 0))
    refused = {"violations": [], "errors_sent": [{"code": 101}] * 2 + [{"code": 200}]}
    assert re.search(r"\b2 market data lines refused", demo.limits_broken(refused, 0))
    assert re.search(r"\b3 market data lines left open", demo.limits_broken(clean, 3))


async def test_demo_with_a_line_the_agent_never_cancelled_exits_non_zero(tmp_path, monkeypatch):
    """An agent that leaves a market data line open at TWS (its first cancelMktData never sent) fails the demo:
    exit 1, naming the line left open, though every flow answered."""
    from agent.tws import TwsBridge
    real_send = TwsBridge._send
    skipped = []

    def forget_first_cancel(self, session, what, fn, *args):
        if what == "cancelMktData" and not skipped:
            skipped.append(args)
            return
        real_send(self, session, what, fn, *args)
    monkeypatch.setattr(TwsBridge, "_send", forget_first_cancel)
    monkeypatch.setattr(demo, "LINES_SETTLE", 0.5)      # the leak lasts: no need to wait long for it
    lines: list[str] = []
    status = await demo.run(latency="fast", out=lines.append, log_dir=tmp_path)
    text = "\n".join(lines)
    assert skipped and status == 1, text
    assert "DEMO FAILED: the agent broke IB's limits" in text
    assert int(re.search(r"(\d+) market data lines left open", text)[1]) >= 1
    assert "all flows answered" not in text


async def test_demo_reports_a_failing_flow_and_exits_non_zero(tmp_path, monkeypatch):
    """A flow the agent cannot serve (a symbol the simulator does not list) ends the demo with exit 1 and the reason."""
    monkeypatch.setattr(demo, "DEAL_TICKER", "ZZZZ")
    lines: list[str] = []
    status = await demo.run(latency="fast", out=lines.append, log_dir=tmp_path)
    text = "\n".join(lines)
    assert status == 1
    assert "DEMO FAILED" in text and "fetch-chain answered HTTP 500" in text


def test_demo_settings_say_they_are_the_demos(tmp_path):
    """The demo's start-up lines name the demo as the settings' and the key's source (they said 'No config.env
    file' and then 'API key: set, from config.env')."""
    s = demo.demo_settings(4002, "ws://127.0.0.1:9/ws/data-provider", tmp_path)
    lines = s.source_lines()
    assert any(line.startswith("Demo settings") for line in lines)
    assert not any("No config.env" in line for line in lines)
    assert s.key_source.startswith("the demo") and "config.env" not in s.key_source


class _SilentRelay:
    """A relay no agent ever logs in to."""

    async def wait_provider(self, timeout: float) -> None:
        await asyncio.sleep(timeout)
        raise asyncio.TimeoutError

    async def wait_frame(self, pred, timeout: float) -> dict:
        await asyncio.sleep(timeout)
        raise asyncio.TimeoutError


async def test_wait_ready_says_whether_the_agent_stopped_or_never_logged_in():
    """The readiness wait names an agent that stopped (with its error) apart from one that never logged in."""
    async def crashing_agent():
        raise RuntimeError("boom")

    agent = asyncio.create_task(crashing_agent())
    with pytest.raises(demo.DemoFailed, match="stopped before connecting to the relay: RuntimeError: boom"):
        await demo._wait_ready(_SilentRelay(), agent, 5.0)

    idle = asyncio.create_task(asyncio.sleep(60))
    try:
        with pytest.raises(demo.DemoFailed, match="did not authenticate at the demo relay within 0.2 s"):
            await demo._wait_ready(_SilentRelay(), idle, 0.2)
    finally:
        idle.cancel()
