"""The option-data path: Curate's chain, Monitor's spread legs and Account's sell scan over one batched path.

Contract selection and row building are pure (agent/selection.py, agent/rows.py). The line work is
agent/batch.py: ``OptionScanner.get_option_data_batch`` streams market data for many contracts through the
daemon's one pacer, on as many lines as the pacer grants the request, ends each contract's line as soon as it has
what the request needs (or is known to have none) and at most ``window`` seconds after it was opened, and answers
without waiting for the cancels, which the bridge sends afterwards. Monitor's legs stay warm between refreshes
(agent/warm.py). The flows (fetch_chain, sell_scan, fetch_prices, fetch_underlying, check_availability) pick
contracts with the pure rules, overlap the lookups that do not depend on each other, and shape the rows the web
app reads.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as _dt
import logging
import time
from typing import Callable, Sequence

from agent.aio import gather_all, settle_all
from agent.exchange_time import new_york_today
from agent.errors import IBDisconnected, IBError, InvalidRequest, RequestTimeout
from agent.protocol import (FetchChainPayload, FetchPricesPayload, FetchUnderlyingPayload, SellScanPayload,
                            TickerPayload)
from agent.rows import (chain_row, price_row, rank_for_seller, sell_row, underlying_price,
                        underlying_row)
from agent.batch import (NEED_GREEKS, NEED_QUOTES, NEED_STATS, SETTLE, Keep, LineBatch, heard_nothing,
                         line_done, line_settled, snapshot, stock_done)
from agent.selection import (add_business_days, chain_expirations, chain_strikes, check_request_size, dedupe,
                             listed_contracts, sell_scan_expirations, sell_scan_strikes)
from agent.types import Contract, ContractInfo, Quote
from agent.lookups import NO_SECURITY, Lookups, Cached
from agent.warm import DEFAULT_WARM_LINES, DEFAULT_WARM_SECONDS, WarmLines

log = logging.getLogger("agent.scanner")

# Generic ticks for option lines: 100 option volume, 101 open interest (27 call / 28 put),
# 104 historical volatility, 106 implied volatility (tick 24). Greeks come with option computation (21).
OPTION_TICKS = "100,101,104,106"
STOCK_TICKS = ""

CHAIN_TTL = 60.0             # fetch_chain answers, per request key (the original's cache)
SPOT_WINDOW = 4.0            # a stock quote may take longer than an option's (delayed data, first request)
RECOVERY_WAIT = 5.0          # lines went silent while TWS was cut off from IB (1100): wait this long for 1101/1102
RECOVERY_POLL = 0.05         # the bridge exposes data_available as a flag, not an awaitable: look this often


CHECK_FARMS = "; check TWS's market data farms and your subscriptions, then retry"


def _no_price(symbol: str, q: Quote, when: str, advice: str) -> RequestTimeout:
    """The error for a stock IB sent no price for: the symbol, IB's own error if it gave one, then ``advice``."""
    why = f" (IB error {q.error_code}: {q.error})" if q.error_code is not None else ""
    return RequestTimeout(f"IB sent no price for {symbol}{when}{why}{advice}")


class OptionScanner(Lookups):
    def __init__(self, bridge, pacer, *, chunk_size: int | None = None, window: float = 2.5,
                 clock: Callable[[], float] = time.monotonic,
                 today: Callable[[], _dt.date] = new_york_today, settle: float = SETTLE,
                 msg_rate: float | None = None, warm_lines: int = DEFAULT_WARM_LINES,
                 warm_seconds: float = DEFAULT_WARM_SECONDS):
        self.bridge = bridge
        self.pacer = pacer
        self.window = window
        self.spot_window = SPOT_WINDOW
        self.msg_rate = float(msg_rate or getattr(pacer, "rate", 45.0) or 45.0)
        self._clock = clock
        self._today = today
        self._stocks: dict[str, ContractInfo] = {}            # conIds for the session
        self._params: dict[str, Cached] = {}                 # symbol -> (expirations, strikes, multiplier)
        self._chains: dict[tuple, Cached] = {}               # fetch_chain answers
        self._listings: dict[tuple, Cached] = {}             # (symbol, expiry) -> strikes IB lists
        self._inflight: dict[tuple, asyncio.Future] = {}      # single-flight for the lookups above
        self.stats = {"contracts": 0, "lines_opened": 0, "early_ends": 0, "window_ends": 0, "chain_cache_hits": 0,
                      "silent_lines": 0, "retried_contracts": 0, "warm_answers": 0}
        self.lines = LineBatch(bridge, pacer, self.stats, chunk_size=chunk_size, settle=settle)
        self.warm = WarmLines(bridge, pacer, lines=warm_lines, seconds=warm_seconds, clock=clock)

    # --- the batched path (agent/batch.py) -------------------------------------------------------------

    async def get_option_data_batch(self, contracts: list[Contract], *, need_greeks: bool = False,
                                    max_batch: int | None = None, need_stats: bool = False,
                                    keep: Keep | None = None) -> list[Quote]:
        """Quotes for ``contracts`` in input order; a failed contract's Quote carries error / error_code.

        Duplicates are fetched once. As many lines are busy at once as the pacer grants this request (the line
        budget less the reserve for small requests, at most ``max_batch``); the next contract starts as soon as
        a line is free. ``keep``: offered each finished line instead of its cancel (warm legs).
        """
        unique, index = dedupe(contracts)
        needs = NEED_QUOTES | (NEED_GREEKS if need_greeks else 0) | (NEED_STATS if need_stats else 0)

        async def fetch(cs: Sequence[Contract]) -> list[Quote]:
            return await self.lines.fetch(cs, lambda q: line_done(q, needs), OPTION_TICKS, self.window, max_batch,
                                          settle_pred=lambda q: line_settled(q, needs), keep=keep)

        outages_before = self.lines.silent_in_outage
        quotes = await fetch(unique)
        silent = [i for i, q in enumerate(quotes) if heard_nothing(q)]
        # Lines that went silent while TWS was cut off from IB (1100, the nightly reset) are asked once more
        # when TWS says data flows again (1101/1102); other silence (a farm down, TWS busy) is not retried.
        if silent and self.lines.silent_in_outage > outages_before and await self._data_back(RECOVERY_WAIT):
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

    async def _quote_stock(self, contract: Contract) -> Quote:
        # Once there is a price, give the rest of TWS's first burst (close, volume) a moment to land.
        return (await self.lines.fetch([contract], stock_done, STOCK_TICKS, self.spot_window, None,
                                       settle_pred=lambda q: q.close is not None and q.volume is not None))[0]

    async def get_available_expirations(self, ticker: str) -> list[str]:
        """Listed expirations from today on (YYYYMMDD, sorted)."""
        exps, _, _ = await self.option_chain_params(ticker)
        today = self._today().strftime("%Y%m%d")
        return [e for e in exps if e >= today]

    async def spot_price(self, info: ContractInfo) -> tuple[float | None, Quote]:
        q = await self._quote_stock(info.contract)
        return underlying_price(q), q

    async def _early_spot(self, ticker: str) -> tuple[float | None, Quote]:
        """The stock's price, asked at once: a stock quote needs only the symbol, so it does not wait for the
        stock's contract lookup (which the option parameters need). If IB cannot place the symbol alone
        (error 200), it is asked again by conId once the lookup is in (an unknown symbol raises InvalidRequest)."""
        sym = ticker.strip().upper()
        info = self._stocks.get(sym)
        q = await self._quote_stock(info.contract if info is not None else Contract.stock(sym))
        if info is None and q.error_code == NO_SECURITY:
            q = await self._quote_stock((await self.resolve_stock(sym)).contract)
        return underlying_price(q), q

    async def _require_spot(self, ticker: str) -> float:
        spot, q = await self._early_spot(ticker)
        if spot is None:
            raise _no_price(ticker.strip().upper(), q, f" within {self.spot_window:g} s", CHECK_FARMS)
        return spot

    # --- flows --------------------------------------------------------------------------------------------
    # What waits for what: the stock's price needs only the symbol; the option parameters need the stock's conId;
    # each expiry's listing needs the expiries; the contracts need the price (the strike window) and the
    # listings. So the price, the lookup and the listings overlap, and the batch starts when both ends are in.

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

        spot_task = asyncio.ensure_future(self._early_spot(p.ticker))
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
                ref = await self._spot_from(spot_task, p.ticker)
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
            await settle_all([t for t in (spot_task, listing_task) if t is not None])
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
            self._chains[key] = Cached(self._clock(), copy.deepcopy(data))
        return data

    async def _spot_from(self, task: asyncio.Future, ticker: str) -> float:
        spot, q = await asyncio.shield(task)
        if spot is None:
            raise _no_price(ticker.strip().upper(), q, "",
                            ", and no dealPrice was given to centre the chain on; send a dealPrice or retry")
        return spot

    async def sell_scan(self, p: SellScanPayload) -> dict:
        """Account: calls or puts to sell near the money, expiring within ``business_days`` weekdays, ranked."""
        today = self._today()
        spot_task = asyncio.ensure_future(self._require_spot(p.ticker))
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
            await settle_all([t for t in (spot_task, listing_task) if t is not None])
        check_request_size("sell_scan", len(contracts), "Lower business_days or ntm_pct.", self.msg_rate)
        quotes = await self.get_option_data_batch(contracts, need_greeks=True, max_batch=p.max_batch_size)
        self._require_some_data("sell scan", quotes)
        rows = rank_for_seller(sell_row(c, q, spot, today) for c, q in zip(contracts, quotes)
                               if q.error_code != NO_SECURITY)
        return {"ticker": p.ticker, "spotPrice": spot, "right": p.right, "expirations": sel_exps,
                "contracts": rows, "delayed": any(r["delayed"] for r in rows)}

    async def fetch_prices(self, p: FetchPricesPayload) -> dict:
        """Monitor: the legs' prices and greeks in input order; a leg with no bid and no ask is null.

        Legs still warm from an earlier refresh answer from their live lines at once; the others go through the
        batched path, and their lines stay warm afterwards (agent/warm.py). Each row says how old its quote's
        last tick is (``tick_age_s``) and whether it came from a warm line (``warm``).
        """
        if not p.contracts:
            raise InvalidRequest("No contracts specified")
        today = self._today().strftime("%Y%m%d")
        contracts = []
        for i, leg in enumerate(p.contracts):
            if leg.expiry < today:
                raise InvalidRequest(f"leg {i + 1} ({leg.ticker} {leg.expiry} {leg.strike:g}{leg.right}): the expiry "
                                     f"is in the past")
            contracts.append(Contract.option(leg.ticker, leg.expiry, leg.strike, leg.right))
        unique, _ = dedupe(contracts)
        check_request_size("fetch_prices", len(unique), "Send fewer legs per request.", self.msg_rate)
        by_key = await self._leg_quotes(unique, p.max_batch_size)
        quotes = [by_key[c.key][0] for c in contracts]
        self._require_some_data("price refresh", quotes)
        now = time.monotonic()
        rows = []
        for c in contracts:
            q, warm = by_key[c.key]
            row = price_row(c, q)
            if row is not None:
                at = q.extra.get("at")
                row["tick_age_s"] = round(max(0.0, now - at), 3) if at is not None else None
                row["warm"] = warm
            rows.append(row)
        # A leg that failed (IB error) or that TWS said nothing about within its window is null with its reason.
        errors = [{"index": i, "contract": c.describe(), "error": q.error or f"IB error {q.error_code}",
                   "code": q.error_code}
                  for i, (c, q) in enumerate(zip(contracts, quotes))
                  if (q.error_code is not None and not q.has_price) or heard_nothing(q)]
        data: dict = {"success": True, "contracts": rows}
        if errors:
            data["errors"] = errors
        return data

    async def _leg_quotes(self, legs: Sequence[Contract], max_batch: int | None) -> dict:
        """contract key -> (quote, from a warm line?) for distinct legs: warm ones from their live lines, the
        rest through the batched path (kept warm afterwards)."""
        started = self._clock()
        warm = self.warm.lines_for(c.key for c in legs) if getattr(self.bridge, "data_available", True) else {}
        needs = NEED_QUOTES | NEED_GREEKS

        async def read_warm() -> dict:
            # A warm line normally has everything already; one re-requested after 1101 may still be filling.
            await asyncio.gather(*(line.wait(lambda q: line_done(q, needs), timeout=self.window)
                                   for line in warm.values()))
            return {k: snapshot(line) for k, line in warm.items() if not line.closed}

        cold = [c for c in legs if c.key not in warm]
        fetch_cold = self.get_option_data_batch(cold, need_greeks=True, max_batch=max_batch,
                                                keep=self.warm.keeper(started))       # no cold leg: []
        warm_quotes, cold_quotes = await gather_all(read_warm(), fetch_cold)
        out = {c.key: (q, False) for c, q in zip(cold, cold_quotes)}
        out.update({k: (q, True) for k, q in warm_quotes.items()})
        lost = [c for c in legs if c.key not in out]        # a warm line that closed while read (disconnect)
        if lost:
            out.update({c.key: (q, False) for c, q in zip(lost, await self.get_option_data_batch(
                lost, need_greeks=True, max_batch=max_batch))})
        self.stats["warm_answers"] += len(warm_quotes)
        return out

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
