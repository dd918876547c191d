"""The order-file command against the TWS simulator: checked, previewed, confirmed, placed, never twice."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import ib_data_agent
from agent.orders.fetch import FetchError, fetch
from agent.orders.runner import EXIT_FAILED, EXIT_INVALID, EXIT_OK, OrderFileRun
from sim.tws import SimConfig, TwsSimulator

from order_stack import agent_settings, sim_orders, until

ROOT = Path(__file__).resolve().parent.parent
CSV = "ticker,action,quantity,limit_price,ref\nAAPL,BUY,10,150,a1\nMSFT,BUY,5,500,m1\nSPY,SELL,1,400,s1\n"


@contextlib.asynccontextmanager
async def simulator(**kw):
    sim = TwsSimulator(SimConfig(port=0, latency="fast", seed=7, **kw))
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


def settings_for(sim, tmp_path, **env):
    accounts = sim.config.accounts
    if any(not a.startswith("D") for a in accounts):
        env.setdefault("IB_MODE", "live")
    return agent_settings(sim.port, LOG_DIR=str(tmp_path / "logs"), **env)


async def run_file(sim, tmp_path, text: str, name: str = "orders.csv", *, answers=(), **kw):
    """One run of the command on ``text`` written to tmp_path/name; returns (exit, printed lines, results)."""
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    lines: list[str] = []
    replies = list(answers)
    run = OrderFileRun(fetch(str(path)), settings_for(sim, tmp_path, **kw.pop("env", {})), out=lines.append,
                       ask=lambda prompt: (lines.append(prompt), replies.pop(0))[1], **kw)
    code = await run.run()
    results = path.with_name(name + ".results.json")
    return code, lines, (json.loads(results.read_text()) if results.exists() else None)


async def test_a_good_csv_file_is_placed_and_filled(tmp_path):
    """Three CSV lines with --yes: placed (one rests, two fill), summary and results file; exit 0."""
    async with simulator() as sim:
        code, lines, res = await run_file(sim, tmp_path, CSV, yes=True, interactive=False)
        assert code == EXIT_OK, lines
        assert any(x.startswith("[1/3] line 2 BUY 10 AAPL LMT 150: placed, Submitted") for x in lines)
        assert [o["outcome"] for o in res["orders"]] == ["placed"] * 3
        assert res["orders"][0]["status"] == "Submitted"                     # it rests
        assert all(o["status"] in ("Submitted", "Filled") for o in res["orders"][1:])   # the fill may follow
        await until(lambda: [o.status for o in sim_orders(sim)] == ["Submitted", "Filled", "Filled"])
        refs = [o["order_ref"] for o in res["orders"]]
        assert len(set(refs)) == 3 and all(ref.startswith("of-") and ref.endswith(f"-{r}")
                                           for ref, r in zip(refs, ("a1", "m1", "s1")))
        assert {o.order_ref for o in sim_orders(sim)} == set(refs)
        assert all(o.client_id == 27 for o in sim_orders(sim))             # the files' own client id


async def test_a_good_json_file_with_an_option_is_placed(tmp_path):
    """A JSON file ({"orders": [...]}) with an option line: placed; the option reached TWS as an option."""
    async with simulator() as sim:
        exp = sim.market.expirations("AAPL")[1]
        doc = {"orders": [{"ticker": "AAPL", "action": "BUY", "quantity": 1, "order_type": "MKT", "sec_type": "OPT",
                           "expiry": exp, "strike": 230, "right": "C"},
                          {"Ticker": "JNPR", "Action": "SELL", "Quantity": 100, "Limit Price": 39.0}]}
        code, lines, res = await run_file(sim, tmp_path, json.dumps(doc), "orders.json", yes=True, interactive=False)
        assert code == EXIT_OK, lines
        opt = [o for o in sim_orders(sim) if o.instrument.sec_type == "OPT"]
        assert len(opt) == 1 and opt[0].instrument.strike == 230
        await until(lambda: opt[0].status == "Filled")
        assert [o["line"] for o in res["orders"]] == ["order #1", "order #2"]


async def test_a_file_with_bad_lines_places_nothing(tmp_path):
    """Several bad lines: each reported with its reasons, exit 2, the simulator saw no order, no results file."""
    async with simulator() as sim:
        text = "ticker,action,quantity,limit_price\nAAPL,BUY,0,150\nMSFT,HOLD,5,\nSPY,BUY,1,400\n"
        code, lines, res = await run_file(sim, tmp_path, text, yes=True, interactive=False)
        assert code == EXIT_INVALID and res is None and not sim.stats()["orders"]
        assert any(x.startswith("  - line 2: quantity must be more than 0") for x in lines)
        assert sum(x.startswith("  - line 3:") for x in lines) == 2


async def test_an_account_tws_does_not_manage_is_found_before_anything_is_placed(tmp_path):
    """The second check (with TWS's accounts) refuses the file when one line names a foreign account."""
    async with simulator() as sim:
        text = "ticker,action,quantity,limit_price,account\nAAPL,BUY,1,150,DU1234567\nMSFT,BUY,1,400,DU9999999\n"
        code, lines, _ = await run_file(sim, tmp_path, text, yes=True, interactive=False)
        assert code == EXIT_INVALID and not sim.broker.orders
        assert any("line 3: account 'DU9999999' is not an account this TWS login manages" in x for x in lines)


async def test_dry_run_previews_with_what_if_figures_and_places_nothing(tmp_path):
    """--dry-run: the table shows the market, TWS's margin and commission, and flags limits > 5 % away."""
    async with simulator() as sim:
        code, lines, res = await run_file(sim, tmp_path, CSV, dry_run=True, interactive=False)
        assert code == EXIT_OK and res is None and not sim.broker.orders
        table = "\n".join(lines)
        assert "margin +" in table and "commission" in table and "limit -34." in table
        row = [x for x in table.splitlines() if x.lstrip().startswith("line 3")][0]
        assert "1,250.00" in row                                  # MSFT 5 x 500 x 50 % initial margin
        assert any(x.startswith("Dry run: 3 order(s) checked, nothing placed") for x in lines)
        assert all(o["what_if"] for o in sim.stats()["orders"])    # only previews reached "TWS"


async def test_without_a_terminal_and_without_yes_nothing_is_placed(tmp_path):
    """No terminal, no --yes: refused with what to do, exit 2, nothing placed."""
    async with simulator() as sim:
        code, lines, _ = await run_file(sim, tmp_path, CSV, interactive=False)
        assert code == EXIT_INVALID and not sim.broker.orders
        assert any("there is no terminal" in x and "--yes" in x for x in lines)


async def test_the_prompt_places_on_yes_and_not_otherwise(tmp_path):
    """In a terminal: 'n' places nothing; 'y' places; the question names the count and the paper account."""
    async with simulator() as sim:
        code, lines, _ = await run_file(sim, tmp_path, CSV, answers=["n"])
        assert code == EXIT_INVALID and not sim.broker.orders
        assert "Place 3 order(s) on paper account DU1234567? [y/N] " in lines
        code, lines, _ = await run_file(sim, tmp_path, CSV, answers=["y"])
        assert code == EXIT_OK and len(sim_orders(sim)) == 3


async def test_live_accounts_need_the_setting_and_the_account_typed(tmp_path):
    """Live: refused without ALLOW_LIVE_ORDERS; with it, --yes alone does not do; the typed id must match."""
    async with simulator(accounts=("U7654321",)) as sim:
        code, lines, _ = await run_file(sim, tmp_path, CSV, yes=True, interactive=True)
        assert code == EXIT_INVALID and any("ALLOW_LIVE_ORDERS=true" in x for x in lines)
        allow = {"ALLOW_LIVE_ORDERS": "true"}
        code, lines, _ = await run_file(sim, tmp_path, CSV, yes=True, interactive=False, env=allow)
        assert code == EXIT_INVALID and any("live account needs its id typed in" in x for x in lines)
        code, _, _ = await run_file(sim, tmp_path, CSV, yes=True, answers=["U765432"], env=allow)
        assert code == EXIT_INVALID and not sim.broker.orders
        code, lines, _ = await run_file(sim, tmp_path, CSV, yes=True, answers=["U7654321"], env=allow)
        assert code == EXIT_OK and len(sim_orders(sim, account="U7654321")) == 3


async def test_running_the_same_file_again_places_nothing_new(tmp_path):
    """A re-run of the same file: every line 'already placed', no new order, exit 0."""
    async with simulator() as sim:
        await run_file(sim, tmp_path, CSV, yes=True, interactive=False)
        code, lines, res = await run_file(sim, tmp_path, CSV, yes=True, interactive=False)
        assert code == EXIT_OK and len(sim_orders(sim)) == 3
        assert [o["outcome"] for o in res["orders"]] == ["already placed"] * 3
        assert "Nothing to place: every order of this file was placed already." in lines


async def test_an_interrupted_run_then_a_rerun_places_only_the_rest(tmp_path):
    """Ctrl+C after the first order's line: the results file says exactly which lines reached TWS (the one in
    flight when the cancel landed included) and which did not; the re-run places only those that did not."""
    async with simulator() as sim:
        path = tmp_path / "orders.csv"
        path.write_text(CSV)
        task = None

        def out(line: str) -> None:
            if line.startswith("[1/3]"):
                task.cancel()                       # Ctrl+C right after the first order's line
        run = OrderFileRun(fetch(str(path)), settings_for(sim, tmp_path), yes=True, interactive=False, out=out)
        task = asyncio.create_task(run.run())
        with pytest.raises(asyncio.CancelledError):
            await task
        res = json.loads((tmp_path / "orders.csv.results.json").read_text())
        outcomes = [o["outcome"] for o in res["orders"]]
        in_tws = [bool(sim_orders(sim, order_ref=o["order_ref"])) for o in res["orders"]]
        assert outcomes[0] == "placed" and "not placed" in outcomes
        assert in_tws == [x in ("placed", "unknown") for x in outcomes]       # the file tells the truth
        code, _, res = await run_file(sim, tmp_path, CSV, yes=True, interactive=False)
        again = [o["outcome"] for o in res["orders"]]
        assert code == EXIT_OK and again == ["already placed" if t else "placed" for t in in_tws]
        assert len(sim_orders(sim)) == 3


async def test_tws_dropping_mid_file_stops_and_the_rerun_finishes(tmp_path):
    """TWS drops after the first order: the rest are 'not placed', exit 1; a re-run places only those."""
    async with simulator() as sim:
        path = tmp_path / "orders.csv"
        path.write_text(CSV)
        drops = []

        def out(line: str) -> None:
            if line.startswith("[1/3]"):
                drops.append(asyncio.ensure_future(sim.drop_clients()))
        run = OrderFileRun(fetch(str(path)), settings_for(sim, tmp_path), yes=True, interactive=False, out=out)
        code = await run.run()
        await asyncio.gather(*drops)
        res = json.loads((tmp_path / "orders.csv.results.json").read_text())
        outcomes = [o["outcome"] for o in res["orders"]]
        assert code == EXIT_FAILED and outcomes[0] == "placed" and outcomes[2] == "not placed"
        # line 3 went out as the connection died, or was refused as not sent: the file says which
        assert outcomes[1] in ("unknown", "not placed")
        if outcomes[1] == "not placed":
            assert not sim_orders(sim, order_ref=res["orders"][1]["order_ref"])
        code, _, res = await run_file(sim, tmp_path, CSV, yes=True, interactive=False)
        assert code == EXIT_OK and len(sim_orders(sim)) == 3


async def test_a_rejected_line_is_reported_and_the_others_go_on(tmp_path):
    """IB refuses one line (off-tick price, 110): it is 'rejected' with the reason; the others are placed; exit 1."""
    async with simulator() as sim:
        text = "ticker,action,quantity,limit_price\nAAPL,BUY,1,150.005\nMSFT,BUY,1,400\n"
        code, lines, res = await run_file(sim, tmp_path, text, yes=True, interactive=False)
        assert code == EXIT_FAILED and [o["outcome"] for o in res["orders"]] == ["rejected", "placed"]
        assert "IB error 110" in res["orders"][0]["reason"]


async def test_a_fixed_line_is_placed_on_the_rerun_and_the_lines_placed_before_are_not(tmp_path):
    """The realistic edit: IB refused one line (110), the trader fixes its price and runs the edited file (a new
    file hash). Only the fixed line is placed; the line placed by the first run is 'already placed', not bought
    twice."""
    async with simulator() as sim:
        first = "ticker,action,quantity,limit_price\nAAPL,BUY,1,150.005\nMSFT,BUY,1,400\n"
        await run_file(sim, tmp_path, first, yes=True, interactive=False)
        assert len([o for o in sim_orders(sim) if o.instrument.symbol == "MSFT"]) == 1
        fixed = "ticker,action,quantity,limit_price\nAAPL,BUY,1,150.01\nMSFT,BUY,1,400\n"
        code, lines, res = await run_file(sim, tmp_path, fixed, yes=True, interactive=False)
        assert code == EXIT_OK, lines
        assert [o["outcome"] for o in res["orders"]] == ["placed", "already placed"]
        assert len([o for o in sim_orders(sim) if o.instrument.symbol == "MSFT"]) == 1


async def test_a_reused_ref_on_a_changed_line_is_flagged_as_a_new_order(tmp_path):
    """A line keeps its ref but asks for something else (a new price): it is a new order, and the preview says that
    the ref was placed before as another order, so the trader sees that the first one still stands."""
    async with simulator() as sim:
        await run_file(sim, tmp_path, CSV + "JNPR,BUY,1,39,x-1\n", yes=True, interactive=False)
        edited = CSV.replace("AAPL,BUY,10,150,a1", "AAPL,BUY,10,151,a1") + "TSLA,BUY,1,250,1\n"
        code, lines, res = await run_file(sim, tmp_path, edited, dry_run=True, interactive=False)
        table = "\n".join(lines)
        row = [x for x in table.splitlines() if x.lstrip().startswith("line 2")]
        assert code == EXIT_OK and row and "ref a1 was placed before as another order" in row[0], table
        assert len([o for o in sim_orders(sim) if o.instrument.symbol == "AAPL"]) == 1
        tsla = [x for x in table.splitlines() if x.lstrip().startswith("line 5")]
        assert tsla and "placed before" not in tsla[0], table          # ref '1' is not ref 'x-1'


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@contextlib.contextmanager
def http_server(directory: Path):
    handler = lambda *a, **k: _Files(*a, directory=str(directory), **k)  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


async def test_a_file_from_a_local_url_is_placed_with_its_results_in_the_current_folder(tmp_path):
    """http://127.0.0.1/... (this machine) is fetched; the URL and SHA-256 are shown; results go to the cwd."""
    serve = tmp_path / "served"
    serve.mkdir()
    (serve / "daily.csv").write_text(CSV)
    here = tmp_path / "here"
    here.mkdir()
    async with simulator() as sim:
        with http_server(serve) as base:
            fetched = await asyncio.to_thread(fetch, f"{base}/daily.csv", cwd=here)
            lines: list[str] = []
            run = OrderFileRun(fetched, settings_for(sim, tmp_path), yes=True, interactive=False, out=lines.append)
            assert await run.run() == EXIT_OK
        assert lines[0].startswith(f"Order file: {base}/daily.csv (") and "SHA-256 " in lines[0]
        assert (here / "daily.csv.results.json").exists() and len(sim_orders(sim)) == 3


def test_urls_and_sizes_are_bounded(tmp_path):
    """http:// to another machine and non-http schemes are refused; a file over the cap is refused by size."""
    with pytest.raises(FetchError, match="plain http"):
        fetch("http://example.com/orders.csv")
    with pytest.raises(FetchError, match="not an https"):
        fetch("ftp://example.com/orders.csv")
    big = tmp_path / "big.csv"
    big.write_bytes(b"x" * 2000)
    with pytest.raises(FetchError, match="over the 1,000-byte limit"):
        fetch(str(big), max_bytes=1000)
    with pytest.raises(FetchError, match="no such file"):
        fetch(str(tmp_path / "missing.csv"))


def test_a_redirect_to_plain_http_elsewhere_is_refused(tmp_path):
    """A served redirect from this machine to http://example.com is refused before it is followed."""
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", "http://example.com/orders.csv")
            self.end_headers()

        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        with pytest.raises(FetchError, match="plain http"):
            fetch(f"http://127.0.0.1:{srv.server_address[1]}/x.csv")
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_command_refuses_a_file_over_the_size_cap(tmp_path, capsys):
    """ib_data_agent.py orders BIG: 'over the … limit', exit 2, before any connection."""
    big = tmp_path / "big.csv"
    big.write_bytes(b"ticker,action,quantity,limit_price\n" + b"AAPL,BUY,1,150\n" * 80_000)
    env = {"LOG_DIR": str(tmp_path / "logs"), "IB_PORT": "9"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert ib_data_agent.main(["orders", str(big)]) == EXIT_INVALID
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert "over the 1,000,000-byte limit" in capsys.readouterr().err


async def test_the_real_command_in_its_own_process(tmp_path):
    """python ib_data_agent.py orders FILE --yes, as a trader runs it (no terminal): exit 0, orders in TWS."""
    async with simulator() as sim:
        path = tmp_path / "orders.csv"
        path.write_text(CSV)
        config = tmp_path / "config.env"
        config.write_text("IB_MODE=paper\n")          # no key: an order file never talks to the relay
        env = {**os.environ, "IB_PORT": str(sim.port), "LOG_DIR": str(tmp_path / "logs"), "IB_PROVIDER_KEY": ""}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "ib_data_agent.py"), "orders", str(path), "--yes", "--config", str(config),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path))
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        text = out.decode()
        assert proc.returncode == 0, text
        assert "3 placed. Results:" in text and len(sim_orders(sim)) == 3
