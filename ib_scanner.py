"""The option-data path: Curate's chain, Monitor's spread legs and Account's sell scan over one batched path.

Contract selection and row building are pure (agent/selection.py, agent/rows.py). This module adds the I/O:
``OptionScanner.get_option_data_batch`` streams market data for many contracts through the daemon's one pacer,
keeping up to 50 lines per request busy (fewer when the relay's ``_max_batch_size`` or the free line budget says
so), ends each contract's line as soon as it has what the request needs (or is known to have none) and at most
``window`` seconds after it was opened, and cancels every line in ``finally``. The flows (fetch_chain, sell_scan,
fetch_prices, fetch_underlying, check_availability) pick contracts with the pure rules and shape the rows the web
app reads.

Line ownership (docs/design.md): a line reserved with ``pacer.acquire_lines`` is consumed by
``bridge.open_market_data``; ``bridge.close_market_data`` returns it to the pacer after the cancelMktData went out;
this module releases only lines it reserved and never opened.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as _dt
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from agent.exchange_time import new_york_today
from agent.errors import AgentError, IBDisconnected, IBError, InvalidRequest, RequestTimeout
from agent.protocol import (FetchChainPayload, FetchPricesPayload, FetchUnderlyingPayload, SellScanPayload,
                            TickerPayload)
from agent.rows import (chain_row, has_two_sided_nothing, price_row, rank_for_seller, sell_row, underlying_price,
                        underlying_row)
from agent.pacer import SMALL_REQUEST_LINES
from agent.selection import (chain_expirations, chain_strikes, check_request_size,
                             concurrency, dedupe, listed_contracts, merge_option_params, pick_multiplier,
                             sell_scan_expirations, sell_scan_strikes, add_business_days)
from agent.types import Contract, ContractInfo, Quote

log = logging.getLogger("agent.scanner")

# Generic ticks for option lines: 100 option volume, 101 open interest (27 call / 28 put),
# 104 historical volatility, 106 implied volatility (tick 24). Greeks come with option computation (21).
OPTION_TICKS = "100,101,104,106"
STOCK_TICKS = ""
NO_SECURITY = 200            # IB: no security definition has been found for the request

CHAIN_TTL = 60.0             # fetch_chain answers, per request key (the original's cache)
PARAMS_TTL = 15 * 60.0       # expirations/strikes from reqSecDefOptParams
SPOT_WINDOW = 4.0            # a stock quote may take longer than an option's (delayed data, first request)
LISTING_TIMEOUT = 4.0        # one expiry's contract list (reqContractDetails, partly specified); else keep all strikes
LISTING_RETRY = 60.0         # ask again this long after a listing did not come
SETTLE = 0.3                 # after quotes + greeks, how long a chain line waits for volume / open interest
RECOVERY_WAIT = 5.0          # lines went silent while TWS was cut off from IB (1100): wait this long for 1101/1102
RECOVERY_POLL = 0.05         # the bridge exposes data_available as a flag, not an awaitable: look this often

# What a line must have before it can be cancelled early.
NEED_QUOTES, NEED_GREEKS, NEED_STATS = 1, 2, 4


@dataclass
class _Cached:
    at: float
    value: Any


def _side_known(price: float | None, size: float | None) -> bool:
    # IB sends a side as tickPrice then tickSize; "no bid" is price -1 (None here) with size 0, so a size
    # without a price means the side is known to be empty.
    return price is not None or size is not None


def line_done(q: Quote, needs: int) -> bool:
    """Has this line what the request needs, or is it known to have none? (pure)"""
    if q.error_code is not None and not q.has_price:
        return True                                   # 200 no such contract, 354 no permission, ...
    quotes_known = _side_known(q.bid, q.bid_size) and _side_known(q.ask, q.ask_size)
    if needs & NEED_QUOTES and not quotes_known:
        return False
    if quotes_known and has_two_sided_nothing(q) and q.last is None:
        return True                                   # illiquid: "no bid" and "no ask", nothing to wait for
    if needs & NEED_GREEKS and q.delta is None:
        return False
    if needs & NEED_STATS and q.open_interest is None:
        return False
    return True


def line_settled(q: Quote, needs: int) -> bool:
    """Done, and also holding what usually follows within milliseconds: open interest (first burst) and, when
    greeks are wanted, the model computation (tick 13), which TWS sends right after the bid/ask/last ones. (pure)"""
    if not line_done(q, needs | NEED_STATS):
        return False
    if needs & NEED_GREEKS and q.error_code is None:
        comps = q.extra.get("computations")
        if isinstance(comps, dict) and comps and "model" not in comps:
            return False
    return True


def stock_done(q: Quote) -> bool:
    """A stock line is done once it has a price to show (or failed)."""
    if q.error_code is not None and not q.has_price:
        return True
    if q.last is not None and q.last > 0:
        return True
    return _side_known(q.bid, q.bid_size) and _side_known(q.ask, q.ask_size) and underlying_price(q) is not None


def heard_nothing(q: Quote) -> bool:
    """TWS sent nothing at all for this line: no price, no size (not even "no bid"), no error. (pure)"""
    return (q.error_code is None and q.bid is None and q.ask is None and q.last is None and q.bid_size is None
            and q.ask_size is None and q.close is None)


CHECK_FARMS = "; check TWS's market data farms and your subscriptions, then retry"


def _no_price(symbol: str, q: Quote, when: str, advice: str) -> RequestTimeout:
    """The error for a stock IB sent no price for: the symbol, IB's own error if it gave one, then ``advice``."""
    why = f" (IB error {q.error_code}: {q.error})" if q.error_code is not None else ""
    return RequestTimeout(f"IB sent no price for {symbol}{when}{why}{advice}")


async def _settle_all(tasks: list[asyncio.Task]) -> None:
    """Cancel what is still running and wait for every task's ``finally`` (where lines are cancelled)."""
    for t in tasks:
        if not t.done():
            t.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def _gather(*aws: Awaitable[Any]) -> list:
    """asyncio.gather that, when one fails or the caller is cancelled, cancels and waits for the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    finally:
        await _settle_all(tasks)


class OptionScanner:
    def __init__(self, bridge, pacer, *, chunk_size: int = 50, window: float = 2.5,
                 clock: Callable[[], float] = time.monotonic,
                 today: Callable[[], _dt.date] = new_york_today, settle: float = SETTLE,
                 msg_rate: float | None = None):
        self.bridge = bridge
        self.pacer = pacer
        self.chunk_size = max(1, min(50, int(chunk_size)))
        self.window = window
        self.spot_window = SPOT_WINDOW
        self.settle = settle
        self.msg_rate = float(msg_rate or getattr(pacer, "rate", 45.0) or 45.0)
        self._clock = clock
        self._today = today
        self._stocks: dict[str, ContractInfo] = {}            # conIds for the session
        self._params: dict[str, _Cached] = {}                 # symbol -> (expirations, strikes, multiplier)
        self._chains: dict[tuple, _Cached] = {}               # fetch_chain answers
        self._listings: dict[tuple, _Cached] = {}             # (symbol, expiry) -> strikes IB lists
        self._inflight: dict[tuple, asyncio.Future] = {}      # single-flight for the lookups above
        self.stats = {"contracts": 0, "lines_opened": 0, "early_ends": 0, "window_ends": 0, "chain_cache_hits": 0,
                      "silent_lines": 0, "retried_contracts": 0}
        self._silent_in_outage = 0     # lines that heard nothing while the bridge said TWS had no data (1100)

    # --- the batched path -----------------------------------------------------------------------------

    async def get_option_data_batch(self, contracts: list[Contract], *, need_greeks: bool = False,
                                    max_batch: int | None = None, need_stats: bool = False) -> list[Quote]:
        """Quotes for ``contracts`` in input order; a failed contract's Quote carries error / error_code.

        Duplicates are fetched once. Up to ``concurrency(...)`` lines are busy at once for this request; the next
        contract starts as soon as a line is free (the pacer decides whose turn it is across requests).
        """
        unique, index = dedupe(contracts)
        needs = NEED_QUOTES | (NEED_GREEKS if need_greeks else 0) | (NEED_STATS if need_stats else 0)

        async def fetch(cs: Sequence[Contract]) -> list[Quote]:
            return await self._fetch_many(cs, lambda q: line_done(q, needs), OPTION_TICKS, self.window, max_batch,
                                          settle_pred=lambda q: line_settled(q, needs))

        outages_before = self._silent_in_outage
        quotes = await fetch(unique)
        silent = [i for i, q in enumerate(quotes) if heard_nothing(q)]
        # Lines that went silent while TWS was cut off from IB (1100, the nightly reset) are asked once more
        # when TWS says data flows again (1101/1102); other silence (a farm down, TWS busy) is not retried.
        if silent and self._silent_in_outage > outages_before and await self._data_back(RECOVERY_WAIT):
            self.stats["retried_contracts"] += len(silent)
            again = await fetch([unique[i] for i in silent])
            for i, q in zip(silent, again):
                quotes[i] = q
            silent = [i for i in silent if heard_nothing(quotes[i])]
        if silent:
            why = self._silence_reason()
            for i in silent:
                quotes[i].error = why
        return [quotes[i] for i in index]

    def _silence_reason(self) -> str:
        """The error a row gets when TWS sent nothing for it within its window (not even "no bid")."""
        down = self._farms_down()
        if down:
            cause = f"TWS reports these data farms down: {', '.join(down)}"
        elif not getattr(self.bridge, "data_available", True):
            cause = "TWS has lost its connection to IB's servers (nightly reset?)"
        else:
            cause = "TWS may be busy or reconnecting to IB"
        return f"no data from TWS within {self.window:g} s ({cause})"

    def _farms_down(self) -> list[str]:
        return sorted(name for name, ok in (getattr(self.bridge, "farm_status", {}) or {}).items() if not ok)

    async def _data_back(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the bridge says TWS has market data again (1101/1102 after 1100)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not getattr(self.bridge, "data_available", True):
            if loop.time() >= end:
                return False
            await asyncio.sleep(RECOVERY_POLL)
        return True

    async def get_option_data(self, contract: Contract, need_greeks: bool = True) -> Quote:
        """One contract through the same machinery (one-off use)."""
        return (await self.get_option_data_batch([contract], need_greeks=need_greeks))[0]

    async def _fetch_many(self, contracts: Sequence[Contract], done: Callable[[Quote], bool], ticks: str,
                          window: float, max_batch: int | None,
                          settle_pred: Callable[[Quote], bool] | None = None) -> list[Quote]:
        n = len(contracts)
        results: list[Quote | None] = [None] * n
        if n == 0:
            return []
        limit = concurrency(n, self.chunk_size, max_batch)
        running: set[asyncio.Task] = set()
        all_tasks: list[asyncio.Task] = []
        next_i = 0

        started: set[int] = set()
        index_of: dict[asyncio.Task, int] = {}

        async def one(i: int) -> None:
            started.add(i)      # from here on _fetch_one owns the reserved line (opens it or releases it)
            results[i] = await self._fetch_one(contracts[i], done, ticks, window, settle_pred)

        try:
            while next_i < n or running:
                free_slots = limit - len(running)
                left = n - next_i
                want = min(free_slots, left)
                # A request with many contracts asks for lines in groups larger than SMALL_REQUEST_LINES, so
                # it never dips into the reserve the pacer keeps for small requests (a 4-leg Monitor refresh).
                min_group = min(SMALL_REQUEST_LINES + 1, limit, left) if left > SMALL_REQUEST_LINES else 1
                # With lines of our own running, ask only when lines are free for us now: a waiting big request
                # would otherwise sit in the pacer's queue ahead of a later small one. Our own lines come back
                # within the window, so the wait for one of them is bounded.
                if want >= max(1, min_group) and (not running or self._lines_for(want) >= min_group):
                    granted = await self.pacer.acquire_lines(want)
                    for _ in range(granted):
                        if next_i >= n:                     # cannot happen (granted <= want); never leak
                            self.pacer.release_lines(1)
                            continue
                        t = asyncio.ensure_future(one(next_i))
                        index_of[t] = next_i
                        next_i += 1
                        running.add(t)
                        all_tasks.append(t)
                    continue
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for t in finished:
                    running.discard(t)
                    if not t.cancelled() and t.exception() is not None:
                        raise t.exception()
            for t in all_tasks:
                if not t.cancelled() and t.exception() is not None:
                    raise t.exception()
        finally:
            await _settle_all(all_tasks)
            # A task cancelled before its first step never ran: the line reserved for it is still ours.
            unstarted = sum(1 for t in all_tasks if index_of[t] not in started)
            if unstarted:
                self.pacer.release_lines(unstarted)
        self.stats["contracts"] += n
        return [q if q is not None else Quote(error="not fetched") for q in results]

    async def _fetch_one(self, contract: Contract, done: Callable[[Quote], bool], ticks: str, window: float,
                         settle_pred: Callable[[Quote], bool] | None) -> Quote:
        """One contract on one line the caller reserved. Only IBDisconnected escapes; other failures are data."""
        try:
            line = await self.bridge.open_market_data(contract, generic_ticks=ticks, snapshot=False)
        except asyncio.CancelledError:
            self._release_unopened()
            raise
        except IBDisconnected:
            self._release_unopened()
            raise
        except IBError as e:
            self._release_unopened()
            return Quote(error_code=e.code, error=e.message)
        except AgentError as e:
            self._release_unopened()
            return Quote(error=e.user_message)
        self.stats["lines_opened"] += 1
        try:
            t0 = self._clock()
            ok = await line.wait(done, timeout=window)
            if ok and settle_pred is not None and not settle_pred(line.quote):
                left = min(self.settle, window - (self._clock() - t0))
                if left > 0:
                    await line.wait(settle_pred, timeout=left)
            self.stats["early_ends" if ok else "window_ends"] += 1
            quote = copy.copy(line.quote)
            if heard_nothing(quote):
                self.stats["silent_lines"] += 1
                if not getattr(self.bridge, "data_available", True):
                    self._silent_in_outage += 1
            return quote
        finally:
            # Cancel the line whatever happened (done, window over, error, request cancelled): no leaks.
            await self.bridge.close_market_data(line)

    def _require_some_data(self, what: str, quotes: Sequence[Quote]) -> None:
        """Every line silent for its whole window is not "no market": TWS sent nothing (a market data farm down,
        TWS busy or reconnecting). Say so rather than answer with rows of zeros."""
        if not quotes or not all(heard_nothing(q) for q in quotes):
            return
        down = self._farms_down()
        why = (f"TWS reports these data farms down: {', '.join(down)}" if down
               else "TWS may be busy, reconnecting to IB, or its market data farm is down")
        raise RequestTimeout(f"IB sent no quotes for any of the {len(quotes)} contracts of this {what} within "
                             f"{self.window:g} s: {why}. Retry in a minute; check TWS's connection status.")

    def _lines_for(self, want: int) -> int:
        """Lines the pacer could grant a request wanting ``want`` right now (big requests leave the reserve)."""
        reserve = getattr(self.pacer, "line_reserve", 0) if want > SMALL_REQUEST_LINES else 0
        return self.pacer.lines_free - reserve

    def _release_unopened(self) -> None:
        # open_market_data did not open a line (it raised before the reqMktData went out): the reserved
        # line is still ours to give back.
        self.pacer.release_lines(1)

    async def _quote_stock(self, contract: Contract) -> Quote:
        # Once there is a price, give the rest of TWS's first burst (close, volume) a moment to land.
        return (await self._fetch_many([contract], stock_done, STOCK_TICKS, self.spot_window, None,
                                       settle_pred=lambda q: q.close is not None and q.volume is not None))[0]

    # --- cached lookups ---------------------------------------------------------------------------------

    async def _once(self, key: tuple, factory: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``factory`` once for concurrent callers with the same key (one TWS request, many waiters)."""
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(factory())
            self._inflight[key] = fut

            def _done(f: asyncio.Future, key=key) -> None:
                if self._inflight.get(key) is f:
                    del self._inflight[key]
                if not f.cancelled():
                    f.exception()       # retrieved: no "never retrieved" warning when every waiter left
            fut.add_done_callback(_done)
        return await asyncio.shield(fut)

    async def resolve_stock(self, ticker: str) -> ContractInfo:
        """The stock's contract details (conId), cached for the session. Unknown symbol -> InvalidRequest."""
        sym = ticker.strip().upper()
        hit = self._stocks.get(sym)
        if hit is not None:
            return hit

        async def lookup() -> ContractInfo:
            try:
                infos = await self.bridge.contract_details(Contract.stock(sym))
            except IBError as e:
                if e.code == NO_SECURITY:
                    raise InvalidRequest(f"Unknown ticker '{sym}': IB has no stock by that symbol") from None
                raise
            if not infos:
                raise InvalidRequest(f"Unknown ticker '{sym}': IB has no stock by that symbol")
            info = next((i for i in infos if i.contract.currency == "USD"), infos[0])
            self._stocks[sym] = info
            return info

        return await self._once(("stock", sym), lookup)

    async def option_chain_params(self, ticker: str) -> tuple[list[str], list[float], str]:
        """(expirations, strikes merged across exchanges, multiplier), cached for 15 minutes."""
        sym = ticker.strip().upper()
        hit = self._params.get(sym)
        if hit is not None and self._clock() - hit.at < PARAMS_TTL:
            return hit.value
        info = await self.resolve_stock(sym)

        async def lookup():
            params = await self.bridge.option_params(sym, info.contract.con_id, "STK")
            exps, strikes = merge_option_params(params)
            value = (exps, strikes, pick_multiplier(params, sym))
            self._params[sym] = _Cached(self._clock(), value)
            return value

        return await self._once(("params", sym), lookup)

    async def listed_strikes(self, ticker: str, expiry: str, multiplier: str = "100") -> frozenset[float] | None:
        """The strikes IB lists for one expiry (one contract-details request for the whole expiry, calls only;
        cached 15 minutes). None when IB does not say in time: then every merged strike is asked for."""
        sym = ticker.strip().upper()
        key = (sym, expiry)
        hit = self._listings.get(key)
        if hit is not None and self._clock() - hit.at < PARAMS_TTL:
            return hit.value

        async def lookup() -> frozenset[float] | None:
            probe = Contract(symbol=sym, sec_type="OPT", expiry=expiry, right="C", multiplier=multiplier)
            try:
                infos = await self.bridge.contract_details(probe, timeout=LISTING_TIMEOUT)
            except (IBError, RequestTimeout) as e:
                log.info("no contract list for %s %s (%s): asking for every merged strike", sym, expiry, e)
                value = None
            else:
                value = frozenset(round(i.contract.strike, 4) for i in infos if i.contract.strike > 0) or None
            # An unknown listing is remembered briefly too, so a TWS that is slow to list does not cost every
            # request the full LISTING_TIMEOUT.
            self._listings[key] = _Cached(self._clock() - (PARAMS_TTL - LISTING_RETRY if value is None else 0), value)
            return value

        return await self._once(("listing", sym, expiry), lookup)

    async def _listings_for(self, ticker: str, expiries: Sequence[str], multiplier: str) -> dict:
        """expiry -> the strikes IB lists for it (None: unknown), all expiries asked at once."""
        listings = await _gather(*(self.listed_strikes(ticker, e, multiplier) for e in expiries))
        return dict(zip(expiries, listings))

    async def get_available_expirations(self, ticker: str) -> list[str]:
        """Listed expirations from today on (YYYYMMDD, sorted)."""
        exps, _, _ = await self.option_chain_params(ticker)
        today = self._today().strftime("%Y%m%d")
        return [e for e in exps if e >= today]

    async def spot_price(self, info: ContractInfo) -> tuple[float | None, Quote]:
        q = await self._quote_stock(info.contract)
        return underlying_price(q), q

    async def _require_spot(self, info: ContractInfo) -> float:
        spot, q = await self.spot_price(info)
        if spot is None:
            raise _no_price(info.contract.symbol, q, f" within {self.spot_window:g} s", CHECK_FARMS)
        return spot

    # --- flows --------------------------------------------------------------------------------------------

    async def fetch_chain(self, p: FetchChainPayload) -> dict:
        """Curate: the close-date expiry + the next three, strikes 0.75-1.10 x deal price, calls and puts."""
        today = self._today()
        if p.expectedCloseDate < today:
            raise InvalidRequest(f"expectedCloseDate {p.expectedCloseDate.isoformat()} is in the past "
                                 f"(today is {today.isoformat()}); send the deal's expected close date")
        key = (p.ticker, round(p.dealPrice, 4), p.expectedCloseDate, p.scanParams.daysBeforeClose)
        hit = self._chains.get(key)
        if hit is not None and self._clock() - hit.at < CHAIN_TTL:
            self.stats["chain_cache_hits"] += 1
            return copy.deepcopy(hit.value)

        info = await self.resolve_stock(p.ticker)
        spot_task = asyncio.ensure_future(self.spot_price(info))
        listing_task: asyncio.Future | None = None
        try:
            exps, strikes, mult = await self.option_chain_params(p.ticker)
            sel_exps = chain_expirations(exps, p.expectedCloseDate)
            if not sel_exps:
                last = exps[-1] if exps else "none"
                raise InvalidRequest(f"IB lists no {p.ticker} option expiry on or after "
                                     f"{p.expectedCloseDate.isoformat()} (last listed: {last})")
            # Which strikes each expiry lists does not depend on the price: ask while the spot quote comes in.
            listing_task = asyncio.ensure_future(self._listings_for(p.ticker, sel_exps, mult))
            ref = p.dealPrice
            if ref <= 0:
                ref = await self._spot_from(spot_task, info)
            sel_strikes = chain_strikes(strikes, ref)
            if not sel_strikes:
                raise InvalidRequest(f"IB lists no {p.ticker} strike between {0.75 * ref:.2f} and {1.10 * ref:.2f} "
                                     f"(0.75-1.10 x {ref:g}); check the deal price")
            contracts, skipped = listed_contracts(p.ticker, sel_exps, sel_strikes, ("C", "P"),
                                                  await listing_task, mult)
            if not contracts:
                raise InvalidRequest(f"IB lists none of the {p.ticker} strikes {sel_strikes[0]:g}-{sel_strikes[-1]:g} "
                                     f"for the expiries {', '.join(sel_exps)}; check the deal price")
            check_request_size("fetch_chain", len(contracts),
                               "This symbol lists too many strikes for one chain: price the strikes you need with "
                               "fetch-prices instead.", self.msg_rate)
            quotes = await self.get_option_data_batch(contracts, need_greeks=True, need_stats=True,
                                                      max_batch=p.max_batch_size)
            self._require_some_data("chain", quotes)
            spot, _ = await spot_task
        finally:
            await _settle_all([t for t in (spot_task, listing_task) if t is not None])
        rows = [chain_row(c, q) for c, q in zip(contracts, quotes) if q.error_code != NO_SECURITY]
        data = {"ticker": p.ticker, "spotPrice": spot if spot is not None else 0.0, "expirations": sel_exps,
                "contracts": rows, "not_listed": skipped + len(contracts) - len(rows),
                "delayed": any(r["delayed"] for r in rows)}
        if any(heard_nothing(q) for q in quotes):
            # Rows TWS said nothing about (each carries its error) are not "no market": do not serve them again
            # for a minute; the next request asks TWS afresh.
            log.warning("%s chain: %d of %d contracts heard nothing from TWS: answer not cached", p.ticker,
                        sum(heard_nothing(q) for q in quotes), len(quotes))
        else:
            self._chains[key] = _Cached(self._clock(), copy.deepcopy(data))
        return data

    async def _spot_from(self, task: asyncio.Future, info: ContractInfo) -> float:
        spot, q = await asyncio.shield(task)
        if spot is None:
            raise _no_price(info.contract.symbol, q, "",
                            ", and no dealPrice was given to centre the chain on; send a dealPrice or retry")
        return spot

    async def sell_scan(self, p: SellScanPayload) -> dict:
        """Account: calls or puts to sell near the money, expiring within ``business_days`` weekdays, ranked."""
        today = self._today()
        info = await self.resolve_stock(p.ticker)
        spot_task = asyncio.ensure_future(self._require_spot(info))
        listing_task: asyncio.Future | None = None
        try:
            exps, strikes, mult = await self.option_chain_params(p.ticker)
            sel_exps = sell_scan_expirations(exps, today, p.business_days)
            if not sel_exps:
                until = add_business_days(today, p.business_days)
                later = [e for e in exps if e > until.strftime("%Y%m%d")]
                nxt = f"; the next is {later[0]}" if later else ""
                raise InvalidRequest(f"IB lists no {p.ticker} expiry from {today.isoformat()} through "
                                     f"{until.isoformat()} ({p.business_days} business days){nxt}: raise "
                                     f"business_days")
            listing_task = asyncio.ensure_future(self._listings_for(p.ticker, sel_exps, mult))
            spot = await asyncio.shield(spot_task)
            sel_strikes = sell_scan_strikes(strikes, spot, p.ntm_pct)
            if not sel_strikes:
                raise InvalidRequest(f"IB lists no {p.ticker} strike within {p.ntm_pct:.0%} of the price {spot:g}: "
                                     f"raise ntm_pct")
            contracts, _ = listed_contracts(p.ticker, sel_exps, sel_strikes, (p.right,), await listing_task, mult)
            if not contracts:
                raise InvalidRequest(f"IB lists none of the {p.ticker} strikes {sel_strikes[0]:g}-{sel_strikes[-1]:g} "
                                     f"for the expiries {', '.join(sel_exps)}: raise ntm_pct or business_days")
        finally:
            await _settle_all([t for t in (spot_task, listing_task) if t is not None])
        check_request_size("sell_scan", len(contracts), "Lower business_days or ntm_pct.", self.msg_rate)
        quotes = await self.get_option_data_batch(contracts, need_greeks=True, max_batch=p.max_batch_size)
        self._require_some_data("sell scan", quotes)
        rows = rank_for_seller(sell_row(c, q, spot, today) for c, q in zip(contracts, quotes)
                               if q.error_code != NO_SECURITY)
        return {"ticker": p.ticker, "spotPrice": spot, "right": p.right, "expirations": sel_exps,
                "contracts": rows, "delayed": any(r["delayed"] for r in rows)}

    async def fetch_prices(self, p: FetchPricesPayload) -> dict:
        """Monitor: the legs' prices and greeks in input order; a leg with no bid and no ask is null."""
        if not p.contracts:
            raise InvalidRequest("No contracts specified")
        today = self._today().strftime("%Y%m%d")
        contracts = []
        for i, leg in enumerate(p.contracts):
            if leg.expiry < today:
                raise InvalidRequest(f"leg {i + 1} ({leg.ticker} {leg.expiry} {leg.strike:g}{leg.right}): the expiry "
                                     f"is in the past")
            contracts.append(Contract.option(leg.ticker, leg.expiry, leg.strike, leg.right))
        check_request_size("fetch_prices", len(dedupe(contracts)[0]), "Send fewer legs per request.", self.msg_rate)
        quotes = await self.get_option_data_batch(contracts, need_greeks=True, max_batch=p.max_batch_size)
        self._require_some_data("price refresh", quotes)
        rows = [price_row(c, q) for c, q in zip(contracts, quotes)]
        # A leg that failed (IB error) or that TWS said nothing about within its window is null with its reason.
        errors = [{"index": i, "contract": c.describe(), "error": q.error or f"IB error {q.error_code}",
                   "code": q.error_code}
                  for i, (c, q) in enumerate(zip(contracts, quotes))
                  if (q.error_code is not None and not q.has_price) or heard_nothing(q)]
        data: dict = {"success": True, "contracts": rows}
        if errors:
            data["errors"] = errors
        return data

    async def fetch_underlying(self, p: FetchUnderlyingPayload) -> dict:
        """The underlying's price (stocks by symbol; other types by the fields given)."""
        if p.secType == "STK" and not p.conId:
            contract = (await self.resolve_stock(p.ticker)).contract
        else:
            contract = Contract(symbol=p.ticker, sec_type=p.secType, exchange=p.exchange or "SMART",
                                currency=p.currency or "USD", expiry=p.lastTradeDateOrContractMonth or "",
                                multiplier=p.multiplier or "", con_id=p.conId or 0)
        q = await self._quote_stock(contract)
        if underlying_price(q) is None:
            if q.error_code is not None:
                raise IBError(q.error_code, 0, q.error or "no market data")
            raise _no_price(p.ticker, q, f" within {self.spot_window:g} s", CHECK_FARMS)
        return underlying_row(p.ticker, q)

    async def check_availability(self, p: TickerPayload) -> dict:
        """Does IB list options on this symbol? An unknown symbol is 'not available', not an error."""
        try:
            exps = await self.get_available_expirations(p.ticker)
        except InvalidRequest:
            return {"available": False, "expirationCount": 0}
        return {"available": bool(exps), "expirationCount": len(exps)}


# --- routes -----------------------------------------------------------------------------------------------

def _route(method: str):
    async def handler(ctx, payload) -> dict:
        scanner = getattr(ctx, "scanner", None)
        if scanner is None:
            raise IBDisconnected("IB not connected")
        return await getattr(scanner, method)(payload)
    handler.__name__ = method
    return handler


def register(dispatcher) -> None:
    """Route the option-data request types; deadlines sit inside the relay's own waits."""
    dispatcher.add("fetch_chain", FetchChainPayload, _route("fetch_chain"), 170.0)
    dispatcher.add("fetch_prices", FetchPricesPayload, _route("fetch_prices"), 55.0)
    dispatcher.add("sell_scan", SellScanPayload, _route("sell_scan"), 110.0)
    dispatcher.add("fetch_underlying", FetchUnderlyingPayload, _route("fetch_underlying"), 13.0)
    dispatcher.add("check_availability", TickerPayload, _route("check_availability"), 13.0)
