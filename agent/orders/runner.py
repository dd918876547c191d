"""``ib_data_agent.py orders FILE``: place a reviewed order file against TWS, locally — validated, previewed,
confirmed, never twice (the broker-integration spike's option 4: a cloud job writes the file, the trader runs this
on the laptop where TWS is logged in).

    python ib_data_agent.py orders FILE|URL [--dry-run] [--yes] [--wait SECONDS] [--config PATH]

1. The file (a path, or an https:// URL) is fetched (size-capped) and its SHA-256 shown; every line is checked;
   one bad line and nothing is placed (exit 2).
2. Connect to TWS with the order files' own API client id (IB_CLIENT_ID + 10: 27 by default), read TWS's order
   lists, check the accounts.
3. Preview: the account (paper or LIVE), each order with the market and TWS's what-if margin and commission;
   a limit more than 5 % from the market, an order already placed, an identical order placed today under
   another ref, and a line whose own ref was placed before as another order (the line changed) are flagged.
   ``--dry-run`` stops here.
4. Confirm: "Place 3 orders on paper account DU…? [y/N]" (``--yes`` answers yes; with no terminal and no ``--yes``
   it refuses). A live account also needs ALLOW_LIVE_ORDERS=true and the account id typed in, every time.
5. Place, one at a time (paced), each waiting for its status; a line whose order is placed already (by any run of
   any order file: the ref is the order's, agent/orders/refs.py) is reported, not placed again. A summary table,
   and ``<file>.results.json``, rewritten after every order.
Exit: 0 every order placed (or placed already), 1 any rejected / unknown / not placed, 2 bad file or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import Any, Callable, Sequence

from agent.errors import AgentError, ConfigError, IBDisconnected, OrderRefused
from agent.exchange_time import new_york_today
from agent.orders.desk import OrderDesk, Placement
from agent.orders.fetch import FetchError, Fetched, fetch
from agent.orders.files import FileOrder, OrderFile, read_order_file
from agent.orders.refs import own_ref_of, ref_tail
from agent.orders.report import LineResult, Preview, counts, now, preview_table, summary_table, write_results
from agent.tws.connect import accounts_are_paper

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130
CLIENT_ID_OFFSET = 10          # the order files' own API client id: IB_CLIENT_ID + 10 (the agent keeps its own)
STATUS_WAIT = 15.0             # per order: how long to wait for TWS's status
CONNECT_WAIT = 20.0            # TWS's order lists read after connecting
PREVIEW_WAIT = 10.0
STOP_WAIT = 3.0                # Ctrl+C: how long the order in flight may wait for its status


def _similar(book_entry: Any, o: FileOrder) -> bool:
    c, t = book_entry.contract, book_entry.ticket
    if c is None or t is None or book_entry.rejected is not None and not book_entry.acknowledged:
        return False
    same_contract = (c.symbol, c.sec_type, c.expiry, round(c.strike, 4), c.right) == \
        (o.contract.symbol, o.contract.sec_type, o.contract.expiry, round(o.contract.strike, 4), o.contract.right)
    return same_contract and (t.action, t.quantity, t.lmt_price) == (o.ticket.action, o.ticket.quantity,
                                                                     o.ticket.lmt_price)


def _same_own_ref(order_ref: str, o: FileOrder) -> bool:
    """Is ``order_ref`` another order-file order's with this line's own ref?"""
    return order_ref != o.order_ref and own_ref_of(order_ref) == ref_tail(o.ref)


class OrderFileRun:
    """One run of the command. ``ask`` prompts (input); ``interactive`` says whether there is a terminal."""

    def __init__(self, fetched: Fetched, settings: Any, *, dry_run: bool = False, yes: bool = False,
                 status_wait: float = STATUS_WAIT, out: Callable[[str], Any] = print,
                 ask: Callable[[str], str] = input, interactive: bool = True, bridge: Any = None):
        self.fetched, self.settings = fetched, settings
        self.dry_run, self.yes, self.status_wait = dry_run, yes, status_wait
        self.out, self.ask, self.interactive = out, ask, interactive
        self.bridge = bridge
        self.desk: OrderDesk | None = None
        self.file: OrderFile | None = None
        self.results: list[LineResult] = []
        self.started = now()
        self._current: int | None = None         # the line being placed (Ctrl+C: what became of it)

    # --- the steps ----------------------------------------------------------------------------------------

    async def run(self) -> int:
        f = self.fetched
        first = read_order_file(f.data, f.name, today=new_york_today(), accounts=None)
        self.out(f"Order file: {f.name} ({len(f.data):,} bytes, SHA-256 {first.sha256})")
        for w in first.warnings:
            self.out(f"Warning: {w}")
        if not first.ok:
            return self._invalid(first)
        try:
            await self._connect()
        except (IBDisconnected, OrderRefused) as e:
            self.out(f"Could not reach TWS: {e}")
            return EXIT_FAILED
        try:
            return await self._with_tws()
        finally:
            await self._disconnect()

    async def _with_tws(self) -> int:
        desk, bridge = self.desk, self.bridge
        self.file = read_order_file(self.fetched.data, self.fetched.name, today=new_york_today(),
                                    accounts=list(bridge.accounts))
        if not self.file.ok:
            return self._invalid(self.file)
        orders = self.file.orders
        accounts = sorted({o.ticket.account for o in orders})
        for a in accounts:
            self.out(f"Account {a}: {'paper' if accounts_are_paper([a]) else 'LIVE'}")
        previews = await self._preview(orders)
        self.out(preview_table(orders, previews))
        self.results = [LineResult.for_order(o) for o in orders]
        if self.dry_run:
            self.out(f"Dry run: {len(orders)} order(s) checked, nothing placed.")
            return EXIT_OK
        live = [a for a in accounts if not accounts_are_paper([a])]
        for a in live:
            refusal = desk.live_refusal(a)
            if refusal:
                self.out(refusal.replace("Order refused", "Not placing"))
                return EXIT_INVALID
        todo = [i for i, p in enumerate(previews) if not p.already]
        for i, p in enumerate(previews):
            if p.already:
                e = desk.book.find_ref(orders[i].order_ref)
                self.results[i].record("already placed", status=e.status, order_id=e.order_id, perm_id=e.perm_id,
                                       filled=e.filled, avg_fill_price=e.avg_fill_price or None,
                                       reason=f"placed by an earlier run ({p.already})")
        if not todo:
            self.out("Nothing to place: every order of this file was placed already.")
            return self._finish()
        if not self._confirm(len(todo), accounts, live):
            return EXIT_INVALID
        try:
            await self._place_all(orders, todo)
        except asyncio.CancelledError:
            await self._interrupted(orders)
            raise
        return self._finish()

    def _invalid(self, f: OrderFile) -> int:
        self.out(f"The order file has {len(f.problems)} problem(s); nothing was placed:")
        for p in f.problems:
            self.out(f"  - {p}")
        return EXIT_INVALID

    async def _connect(self) -> None:
        from agent.pacer import Pacer
        from agent.tws import TwsBridge
        s = self.settings
        if self.bridge is None:
            cid = s.ib_client_id + CLIENT_ID_OFFSET
            s = s.model_copy(update={"ib_client_id": cid})
            self.bridge = TwsBridge(s, Pacer(rate=s.msg_rate, max_lines=s.max_lines, line_margin=s.line_margin))
        self.desk = OrderDesk(self.bridge, self.settings)
        self.bridge.on_event = self.desk.on_bridge_event
        if not self.bridge.connected:
            await self.bridge.connect()
        self.out(f"Connected to TWS on port {self.bridge.port} as API client {self.bridge.client_id}")
        await self.desk.wait_synced(CONNECT_WAIT)

    async def _disconnect(self) -> None:
        if self.desk is not None:
            await self.desk.close()
        if self.bridge is not None:
            await self.bridge.close()

    async def _preview(self, orders: list[FileOrder]) -> list[Preview]:
        previews = [Preview() for _ in orders]
        book = self.desk.book
        for o, p in zip(orders, previews):
            e = book.find_ref(o.order_ref)
            if e is not None:
                p.already = f"order {e.order_id}, {e.status or 'status unknown'}"
                continue
            twins = [x for x in book.entries() if x.order_ref != o.order_ref and _similar(x, o)]
            if twins:
                p.notes.append(f"an identical order was placed today (order {twins[-1].order_id}, ref "
                               f"{twins[-1].order_ref or 'none'})")
            if o.explicit_ref:
                before = [x for x in book.entries() if x.blocks_ref and _same_own_ref(x.order_ref, o)]
                if before:
                    x = before[-1]
                    what = f"{x.ticket.describe()} {x.contract.describe()}" if x.ticket and x.contract else "?"
                    p.notes.append(f"ref {o.ref} was placed before as another order (order {x.order_id}, {what}, "
                                   f"{x.status or 'status unknown'}): this line is a new order, and that one stands")
        quotes = await self._quotes([o.contract for o in orders])
        for p, q in zip(previews, quotes):
            if q is not None:
                p.market = q.mid if q.mid is not None else q.last

        async def what_if(o: FileOrder, p: Preview) -> None:
            ticket = dataclasses.replace(o.ticket, what_if=True, order_ref="")
            try:
                a = await self.desk.place(o.contract, ticket, timeout=PREVIEW_WAIT)
            except OrderRefused as e:
                p.notes.append(f"TWS would refuse it: {e}")
                return
            except AgentError as e:
                p.notes.append(f"no what-if preview ({e})")
                return
            p.init_margin_change, p.commission = a.get("initMarginChange"), a.get("commission")
            if a.get("warningText"):
                p.notes.append(a["warningText"])
        await asyncio.gather(*(what_if(o, p) for o, p in zip(orders, previews) if not p.already))
        return previews

    async def _quotes(self, contracts: list) -> list:
        """The market for each line (through the agent's batched path, paced; lines closed). None where none."""
        try:
            from ib_scanner import OptionScanner
            scanner = OptionScanner(self.bridge, self.bridge.pacer)
            quotes = await scanner.get_option_data_batch(contracts)
        except (AgentError, ImportError) as e:
            self.out(f"(no market prices for the preview: {e})")
            return [None] * len(contracts)
        return [q if q.has_price else None for q in quotes]

    def _confirm(self, n: int, accounts: list[str], live: list[str]) -> bool:
        kinds = ", ".join(f"{'LIVE' if a in live else 'paper'} account {a}" for a in accounts)
        if not self.interactive and (live or not self.yes):
            why = "a live account needs its id typed in" if live else "nothing can ask you to confirm"
            self.out(f"Not placing: there is no terminal ({why}). Review the preview (--dry-run shows it without "
                     f"placing anything), then run again{'' if live else ' with --yes'} in a terminal.")
            return False
        if not self.yes:
            answer = self.ask(f"Place {n} order(s) on {kinds}? [y/N] ").strip().lower()
            if answer not in ("y", "yes"):
                self.out("Not placing: not confirmed.")
                return False
        for a in live:
            typed = self.ask(f"{a} is a LIVE account. Type its account id to place real orders: ").strip()
            if typed != a:
                self.out(f"Not placing: {typed!r} is not {a}.")
                return False
        return True

    async def _place_all(self, orders: list[FileOrder], todo: list[int]) -> None:
        n = len(todo)
        self._save()
        for k, i in enumerate(todo, 1):
            o, r = orders[i], self.results[i]
            self._current = i
            head = f"[{k}/{n}] {o.label} {o.ticket.action} {o.ticket.quantity:g} {o.contract.describe()} " \
                   f"{o.ticket.order_type}{'' if o.ticket.lmt_price is None else f' {o.ticket.lmt_price:g}'}"
            try:
                result = await self.desk.place(o.contract, o.ticket, timeout=self.status_wait)
            except OrderRefused as e:
                if e.code is not None:
                    r.record("rejected", reason=f"{e} (IB error {e.code})")
                else:
                    r.record("not placed", reason=str(e))
            except IBDisconnected as e:
                r.record("not placed", reason=f"TWS connection lost: {e}")
                for j in todo[k:]:
                    self.results[j].record("not placed", reason="not tried: the connection to TWS was lost")
                self.out(f"{head}: not placed ({e}); stopping")
                self._save()
                return
            else:
                self._record(r, result)
            self.out(f"{head}: {r.outcome}" + (f", {r.status}" if r.status else "") +
                     (f" (order {r.order_id})" if r.order_id else "") + (f" — {r.reason}" if r.reason else ""))
            self._save()
        self._current = None

    @staticmethod
    def _record(r: LineResult, p: Placement) -> None:
        e = p.entry
        outcome = {"placed": "placed", "already": "already placed", "unknown": "unknown"}[p.outcome]
        reason = "" if p.outcome == "placed" and not e.warning_text else p.message if p.outcome != "placed" \
            else e.warning_text
        r.record(outcome, status=e.status, order_id=e.order_id, perm_id=e.perm_id or None, filled=e.filled,
                 avg_fill_price=e.avg_fill_price or None, reason=reason)

    async def _interrupted(self, orders: list[FileOrder]) -> None:
        """Ctrl+C: the order in flight gets up to STOP_WAIT s for its status; the results say what is known."""
        i = self._current
        if i is not None:
            e = self.desk.book.find_ref(orders[i].order_ref)
            if e is not None:
                await self.desk.wait_for(lambda: bool(e.status), STOP_WAIT)
                outcome = "placed" if e.status and e.status != "Unknown" else "unknown"
                self.results[i].record(outcome, status=e.status or "Unknown", order_id=e.order_id,
                                       perm_id=e.perm_id or None, filled=e.filled,
                                       reason="sent before the run was interrupted")
        for r in self.results:
            if not r.at:
                r.record("not placed", reason="not tried: the run was interrupted")
        self._save()
        self.out("Interrupted. " + self._results_line())

    def _save(self, finished: str = "") -> None:
        f = self.file
        accounts = sorted({r.account for r in self.results})
        paper = accounts_are_paper(accounts) if accounts else None
        try:
            write_results(self.fetched.results_path, source=self.fetched.name, sha256=f.sha256, accounts=accounts,
                          paper=paper, results=self.results, started=self.started, finished=finished)
        except OSError as e:
            self.out(f"Could not write the results file {self.fetched.results_path}: {e.strerror or e}")

    def _results_line(self) -> str:
        return f"Results: {self.fetched.results_path}"

    def _finish(self) -> int:
        self._save(finished=now())
        self.out(summary_table(self.results))
        c = counts(self.results)
        self.out(", ".join(f"{v} {k}" for k, v in c.items()) + ". " + self._results_line())
        ok = all(r.outcome in ("placed", "already placed") for r in self.results)
        return EXIT_OK if ok else EXIT_FAILED


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ib_data_agent.py orders", description="Place a reviewed order file (JSON or "
                                "CSV) against TWS: checked, previewed, confirmed, never twice.")
    p.add_argument("file", help="the order file: a path, or an https:// URL")
    p.add_argument("--dry-run", action="store_true", help="check and preview only; place nothing")
    p.add_argument("--yes", action="store_true", help="do not ask to confirm (paper accounts; live ones always ask)")
    p.add_argument("--wait", type=float, default=STATUS_WAIT, help=f"seconds to wait for each order's status "
                   f"(default {STATUS_WAIT:g})")
    p.add_argument("--config", help="read settings from this config.env")
    return p.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return EXIT_INVALID if e.code else EXIT_OK
    from agent import console
    from agent.settings import load_settings
    try:
        settings = load_settings(config_path=args.config, need_key=False)
    except ConfigError as e:
        for p in (e, *getattr(e, "others", ())):
            print(f"Configuration problem: {p.user_message}", file=sys.stderr)
        return EXIT_INVALID
    try:
        fetched = fetch(args.file)
    except FetchError as e:
        print(f"Cannot read the order file: {e}", file=sys.stderr)
        return EXIT_INVALID
    console.setup_logging(settings.log_dir, settings.secrets(), level="ERROR", file_name="orders.log")
    run = OrderFileRun(fetched, settings, dry_run=args.dry_run, yes=args.yes, status_wait=args.wait,
                       interactive=sys.stdin.isatty())
    try:
        return asyncio.run(run.run())
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        console.teardown_logging()
