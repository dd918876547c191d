"""The scanner's reference data from TWS, cached: a stock's conId, its option parameters (expirations, strikes,
multiplier) and the strikes IB lists per expiry. A mixin of ``OptionScanner`` (ib_scanner.py), which provides
``bridge``, ``_clock`` and the cache dicts.

Concurrent callers asking for the same thing share one TWS request (``_once``). Only strikes IB lists are asked
for market data: an unlisted strike costs a message and comes back as error 200.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from agent.aio import gather_all
from agent.errors import IBError, InvalidRequest, RequestTimeout
from agent.selection import merge_option_params, pick_multiplier
from agent.types import Contract, ContractInfo

log = logging.getLogger("agent.scanner")

NO_SECURITY = 200            # IB: no security definition has been found for the request
PARAMS_TTL = 15 * 60.0       # expirations/strikes from reqSecDefOptParams
LISTING_TIMEOUT = 4.0        # one expiry's contract list (reqContractDetails, partly specified); else keep all strikes
LISTING_RETRY = 60.0         # ask again this long after a listing did not come


@dataclass
class Cached:
    at: float
    value: Any


class Lookups:
    """``resolve_stock``, ``option_chain_params``, ``listed_strikes`` (cached, single-flight)."""

    bridge: Any
    _clock: Callable[[], float]
    _stocks: dict[str, ContractInfo]
    _params: dict[str, Cached]
    _listings: dict[tuple, Cached]
    _inflight: dict[tuple, asyncio.Future]

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
            self._params[sym] = Cached(self._clock(), value)
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
            self._listings[key] = Cached(self._clock() - (PARAMS_TTL - LISTING_RETRY if value is None else 0), value)
            return value

        return await self._once(("listing", sym, expiry), lookup)

    async def _listings_for(self, ticker: str, expiries: Sequence[str], multiplier: str) -> dict:
        """expiry -> the strikes IB lists for it (None: unknown), all expiries asked at once."""
        listings = await gather_all(*(self.listed_strikes(ticker, e, multiplier) for e in expiries))
        return dict(zip(expiries, listings))
