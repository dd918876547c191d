"""Parsers for the requests TWS receives, at server version 157 (pure).

Layouts follow the `ibapi` 9.81 encoder (EClient) at server version 157. Each parser takes the whole
field list (message id first) and raises WireError when fields are missing or not numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from .contracts import RequestContract
from .wire import Fields, WireError

# outgoing-from-client message ids (API → TWS)
REQ_MKT_DATA, CANCEL_MKT_DATA, PLACE_ORDER, CANCEL_ORDER, REQ_OPEN_ORDERS = 1, 2, 3, 4, 5
REQ_ACCT_DATA, REQ_EXECUTIONS, REQ_IDS, REQ_CONTRACT_DATA = 6, 7, 8, 9
REQ_AUTO_OPEN_ORDERS, REQ_ALL_OPEN_ORDERS, REQ_MANAGED_ACCTS = 15, 16, 17
REQ_CURRENT_TIME, REQ_GLOBAL_CANCEL, REQ_MARKET_DATA_TYPE = 49, 58, 59
REQ_POSITIONS, REQ_ACCOUNT_SUMMARY, CANCEL_ACCOUNT_SUMMARY, CANCEL_POSITIONS = 61, 62, 63, 64
START_API, REQ_SEC_DEF_OPT_PARAMS, REQ_COMPLETED_ORDERS = 71, 78, 99
REQ_POSITIONS_MULTI, CANCEL_POSITIONS_MULTI, REQ_ACCOUNT_UPDATES_MULTI, CANCEL_ACCOUNT_UPDATES_MULTI = 74, 75, 76, 77

NAMES = {1: "reqMktData", 2: "cancelMktData", 3: "placeOrder", 4: "cancelOrder", 5: "reqOpenOrders",
         6: "reqAccountUpdates", 7: "reqExecutions", 8: "reqIds", 9: "reqContractDetails",
         10: "reqMktDepth", 15: "reqAutoOpenOrders", 16: "reqAllOpenOrders", 17: "reqManagedAccts",
         20: "reqHistoricalData", 49: "reqCurrentTime", 50: "reqRealTimeBars", 58: "reqGlobalCancel",
         59: "reqMarketDataType", 61: "reqPositions", 62: "reqAccountSummary", 63: "cancelAccountSummary",
         64: "cancelPositions", 71: "startApi", 74: "reqPositionsMulti", 75: "cancelPositionsMulti",
         76: "reqAccountUpdatesMulti", 77: "cancelAccountUpdatesMulti", 78: "reqSecDefOptParams", 99: "reqCompletedOrders"}


def read_contract(f: Fields, *, primary: bool = True, trading_class: bool = True) -> RequestContract:
    """conId, symbol, secType, expiry, strike, right, multiplier, exchange, [primaryExchange], currency,
    localSymbol, [tradingClass] — the common contract block."""
    con_id = f.int()
    symbol, sec_type, expiry = f.str(), f.str(), f.str()
    strike = f.float()
    right, multiplier, exchange = f.str(), f.str(), f.str()
    prim = f.str() if primary else ""
    currency, local_symbol = f.str(), f.str()
    tc = f.str() if trading_class else ""
    if ":" in exchange:                   # "SMART:NASDAQ" form some clients send
        exchange, prim = exchange.split(":", 1)
    return RequestContract(con_id, symbol, sec_type, expiry, strike, right, multiplier, exchange, prim,
                           currency, local_symbol, tc)


@dataclass(frozen=True)
class MktDataRequest:
    req_id: int
    contract: RequestContract
    generic_ticks: tuple[int, ...]
    snapshot: bool
    regulatory: bool
    bad_generic: str = ""        # a generic tick list entry that is not a number


def parse_mkt_data(fields: list[str]) -> MktDataRequest:
    f = Fields(fields, 2)                 # msg id, version
    req_id = f.int()
    c = read_contract(f)
    if c.sec_type.upper() == "BAG":
        n = f.int()
        f.skip(4 * n)
    if f.bool():                          # delta-neutral contract
        f.skip(3)
    generic = f.str()
    snapshot = f.bool()
    regulatory = f.bool() if f.remaining else False
    ticks: list[int] = []
    bad = ""
    for part in generic.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            ticks.append(int(part))
        except ValueError:
            bad = part
    return MktDataRequest(req_id, c, tuple(ticks), snapshot, regulatory, bad)


def parse_contract_details(fields: list[str]) -> tuple[int, RequestContract]:
    f = Fields(fields, 2)
    req_id = f.int()
    return req_id, read_contract(f)


@dataclass(frozen=True)
class PlaceOrderRequest:
    order_id: int
    contract: RequestContract
    action: str
    quantity: float
    order_type: str
    lmt_price: float | None
    aux_price: float | None
    tif: str
    account: str
    order_ref: str
    transmit: bool
    parent_id: int
    outside_rth: bool
    what_if: bool
    e_trade_only: bool = False
    firm_quote_only: bool = False


def _opt_float(s: str) -> float | None:
    if s == "":
        return None
    try:
        v = float(s)
    except ValueError as exc:
        raise WireError(f"{s!r} is not a number") from exc
    return None if v >= 1.7e308 else v


def parse_place_order(fields: list[str]) -> PlaceOrderRequest:
    """placeOrder (3) at v157: no version field. Read field by field up to whatIf, following every
    conditional block the client encoder writes (delta-neutral, scale, hedge, algo)."""
    f = Fields(fields, 1)
    order_id = f.int()
    c = read_contract(f)
    f.skip(2)                             # secIdType, secId
    if c.sec_type.upper() == "BAG":
        raise WireError("combo (BAG) orders are not supported by the simulator")
    action = f.str().upper()
    quantity = f.float()
    order_type = f.str().upper()
    lmt = _opt_float(f.str())
    aux = _opt_float(f.str())
    tif = f.str()
    f.skip(1)                             # ocaGroup
    account = f.str()
    f.skip(2)                             # openClose, origin
    order_ref = f.str()
    transmit = f.bool()
    parent_id = f.int()
    f.skip(4)                             # blockOrder, sweepToFill, displaySize, triggerMethod
    outside_rth = f.bool()
    f.skip(1)                             # hidden
    f.skip(1)                             # sharesAllocation (deprecated)
    f.skip(3)                             # discretionaryAmt, goodAfterTime, goodTillDate
    f.skip(4)                             # faGroup, faMethod, faPercentage, faProfile
    f.skip(1)                             # modelCode
    f.skip(3)                             # shortSaleSlot, designatedLocation, exemptCode
    f.skip(1)                             # ocaType
    f.skip(3)                             # rule80A, settlingFirm, allOrNone
    f.skip(2)                             # minQty, percentOffset
    e_trade_only, firm_quote_only = f.bool(), f.bool()
    f.skip(1)                             # nbboPriceCap
    f.skip(1)                             # auctionStrategy
    f.skip(5)                             # startingPrice, stockRefPrice, delta, stockRangeLower/Upper
    f.skip(1)                             # overridePercentageConstraints
    f.skip(2)                             # volatility, volatilityType
    dn_type = f.str()
    f.skip(1)                             # deltaNeutralAuxPrice
    if dn_type:
        f.skip(4)                         # conId, settlingFirm, clearingAccount, clearingIntent
        f.skip(4)                         # openClose, shortSale, shortSaleSlot, designatedLocation
    f.skip(2)                             # continuousUpdate, referencePriceType
    f.skip(2)                             # trailStopPrice, trailingPercent
    f.skip(2)                             # scaleInitLevelSize, scaleSubsLevelSize
    spi = _opt_float(f.str())             # scalePriceIncrement
    if spi is not None and spi > 0:
        f.skip(7)
    f.skip(3)                             # scaleTable, activeStartTime, activeStopTime
    if f.str():                           # hedgeType
        f.skip(1)                         # hedgeParam
    f.skip(1)                             # optOutSmartRouting
    f.skip(2)                             # clearingAccount, clearingIntent
    f.skip(1)                             # notHeld
    if f.bool():                          # delta-neutral contract
        f.skip(3)
    if f.str():                           # algoStrategy
        n = f.int()
        f.skip(2 * n)
    f.skip(1)                             # algoId
    what_if = f.bool()
    return PlaceOrderRequest(order_id, c, action, quantity, order_type, lmt, aux, tif, account, order_ref,
                             transmit, parent_id, outside_rth, what_if, e_trade_only, firm_quote_only)
