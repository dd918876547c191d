"""Builders for the messages TWS sends, laid out for server version 157 (pure: fields in, list out).

Each function returns the field list of one message (message id first). Layouts follow the
`ibapi` 9.81 decoder at server version 157; tests decode every builder's output with ibapi itself.
Numeric fields are never empty; the order fields IB sends empty when unset ("show unset" fields in
the decoders) are sent as "" exactly when unset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from .contracts import Instrument

if TYPE_CHECKING:  # pragma: no cover
    from .orders import Execution, SimOrder

SERVER_VERSION = 157
UNSET_DOUBLE = "1.7976931348623157E308"   # what TWS writes for "no value" in plain double fields

# incoming-to-client message ids (TWS → API)
TICK_PRICE, TICK_SIZE, ORDER_STATUS, ERR_MSG, OPEN_ORDER = 1, 2, 3, 4, 5
ACCT_VALUE, PORTFOLIO_VALUE, ACCT_UPDATE_TIME, NEXT_VALID_ID, CONTRACT_DATA, EXECUTION_DATA = 6, 7, 8, 9, 10, 11
MANAGED_ACCTS, TICK_OPTION_COMPUTATION, TICK_GENERIC, TICK_STRING, CURRENT_TIME = 15, 21, 45, 46, 49
CONTRACT_DATA_END, OPEN_ORDER_END, ACCT_DOWNLOAD_END, EXECUTION_DATA_END = 52, 53, 54, 55
TICK_SNAPSHOT_END, MARKET_DATA_TYPE, COMMISSION_REPORT, POSITION_DATA, POSITION_END = 57, 58, 59, 61, 62
ACCOUNT_SUMMARY, ACCOUNT_SUMMARY_END, SECDEF_OPT_PARAMS, SECDEF_OPT_PARAMS_END = 63, 64, 75, 76
TICK_REQ_PARAMS, COMPLETED_ORDER, COMPLETED_ORDERS_END = 81, 101, 102
POSITION_MULTI, POSITION_MULTI_END, ACCOUNT_UPDATE_MULTI, ACCOUNT_UPDATE_MULTI_END = 71, 72, 73, 74


def _u(v: float | None) -> object:
    """A "show unset" field: empty when unset."""
    return "" if v is None else v


# ---- session --------------------------------------------------------------------------------------

def managed_accounts(accounts: Sequence[str]) -> list:
    return [MANAGED_ACCTS, 1, ",".join(accounts)]


def next_valid_id(order_id: int) -> list:
    return [NEXT_VALID_ID, 1, order_id]


def error(req_id: int, code: int, message: str) -> list:
    return [ERR_MSG, 2, req_id, code, message]


def current_time(epoch: int) -> list:
    return [CURRENT_TIME, 1, epoch]


# ---- market data ----------------------------------------------------------------------------------

def tick_price(req_id: int, tick_type: int, price: float, size: int, attr_mask: int = 0) -> list:
    return [TICK_PRICE, 6, req_id, tick_type, price, size, attr_mask]


def tick_size(req_id: int, tick_type: int, size: int) -> list:
    return [TICK_SIZE, 6, req_id, tick_type, size]


def tick_generic(req_id: int, tick_type: int, value: float) -> list:
    return [TICK_GENERIC, 6, req_id, tick_type, value]


def tick_string(req_id: int, tick_type: int, value: str) -> list:
    return [TICK_STRING, 6, req_id, tick_type, value]


def tick_option_computation(req_id: int, tick_type: int, iv: float | None, delta: float | None,
                            opt_price: float | None, pv_dividend: float | None, gamma: float | None,
                            vega: float | None, theta: float | None, und_price: float | None,
                            attrib: int = 1) -> list:
    """Tick 21 at v157 (no version field; tickAttrib 1 = price based). "Not computed": iv -1, greeks -2,
    prices -1, as TWS sends them."""
    return [TICK_OPTION_COMPUTATION, req_id, tick_type, attrib,
            -1 if iv is None else iv, -2 if delta is None else delta,
            -1 if opt_price is None else opt_price, -1 if pv_dividend is None else pv_dividend,
            -2 if gamma is None else gamma, -2 if vega is None else vega, -2 if theta is None else theta,
            -1 if und_price is None else und_price]


def tick_snapshot_end(req_id: int) -> list:
    return [TICK_SNAPSHOT_END, 1, req_id]


def market_data_type(req_id: int, data_type: int) -> list:
    return [MARKET_DATA_TYPE, 1, req_id, data_type]


def tick_req_params(req_id: int, min_tick: float, bbo_exchange: str, snapshot_permissions: int) -> list:
    return [TICK_REQ_PARAMS, req_id, min_tick, bbo_exchange, snapshot_permissions]


# ---- contracts ------------------------------------------------------------------------------------

def contract_data(req_id: int, ins: Instrument, *, long_name: str, min_tick: float, under_con_id: int,
                  primary_exchange: str, industry: str = "", category: str = "", stock_type: str = "",
                  valid_exchanges: str = "", order_types: str = "", real_expiration: str = "") -> list:
    """contractDetails (10), version 8, v157 trailing fields (aggGroup, underSymbol/SecType, marketRuleIds,
    realExpirationDate, stockType)."""
    is_opt = ins.is_option
    last_trade = f"{ins.expiry} 16:00 US/Eastern" if is_opt else ""
    hours = "20250101:0930-20250101:1600" if not is_opt else "20250101:0930-20250101:1615"
    return [CONTRACT_DATA, 8, req_id, ins.symbol, ins.sec_type, last_trade, ins.strike, ins.right,
            ins.exchange, ins.currency, ins.local_symbol, ins.trading_class, ins.trading_class, ins.con_id,
            min_tick, 1 if is_opt else 100, ins.multiplier, order_types, valid_exchanges, 1,
            under_con_id, long_name, primary_exchange, ins.expiry[:6] if is_opt else "", industry, category,
            "", "US/Eastern", hours, hours, "", 0,
            0,                                    # no secIds
            1 if is_opt else 2, ins.symbol if is_opt else "", "STK" if is_opt else "", "32,109" if is_opt
            else "26", real_expiration, stock_type]


def contract_data_end(req_id: int) -> list:
    return [CONTRACT_DATA_END, 1, req_id]


def secdef_opt_params(req_id: int, exchange: str, under_con_id: int, trading_class: str, multiplier: str,
                      expirations: Sequence[str], strikes: Sequence[float]) -> list:
    return [SECDEF_OPT_PARAMS, req_id, exchange, under_con_id, trading_class, multiplier,
            len(expirations), *expirations, len(strikes), *strikes]


def secdef_opt_params_end(req_id: int) -> list:
    return [SECDEF_OPT_PARAMS_END, req_id]


# ---- account and positions ------------------------------------------------------------------------

def _contract_short(ins: Instrument) -> list:
    return [ins.con_id, ins.symbol, ins.sec_type, ins.expiry, ins.strike, ins.right, ins.multiplier]


def position(account: str, ins: Instrument, qty: float, avg_cost: float) -> list:
    return [POSITION_DATA, 3, account, *_contract_short(ins), ins.exchange if ins.is_option else "",
            ins.currency, ins.local_symbol, ins.trading_class, qty, avg_cost]


def position_end() -> list:
    return [POSITION_END, 1]


def account_summary(req_id: int, account: str, tag: str, value: str, currency: str) -> list:
    return [ACCOUNT_SUMMARY, 1, req_id, account, tag, value, currency]


def account_summary_end(req_id: int) -> list:
    return [ACCOUNT_SUMMARY_END, 1, req_id]


def position_multi(req_id: int, account: str, ins: Instrument, qty: float, avg_cost: float,
                   model_code: str = "") -> list:
    return [POSITION_MULTI, 1, req_id, account, *_contract_short(ins), ins.exchange if ins.is_option else "",
            ins.currency, ins.local_symbol, ins.trading_class, qty, avg_cost, model_code]


def position_multi_end(req_id: int) -> list:
    return [POSITION_MULTI_END, 1, req_id]


def account_update_multi(req_id: int, account: str, model_code: str, key: str, value: str, currency: str) -> list:
    return [ACCOUNT_UPDATE_MULTI, 1, req_id, account, model_code, key, value, currency]


def account_update_multi_end(req_id: int) -> list:
    return [ACCOUNT_UPDATE_MULTI_END, 1, req_id]


def account_value(key: str, value: str, currency: str, account: str) -> list:
    return [ACCT_VALUE, 2, key, value, currency, account]


def portfolio_value(ins: Instrument, qty: float, market_price: float, market_value: float, avg_cost: float,
                    unrealized: float, realized: float, account: str) -> list:
    return [PORTFOLIO_VALUE, 8, *_contract_short(ins), ins.primary_exchange, ins.currency, ins.local_symbol,
            ins.trading_class, qty, market_price, market_value, avg_cost, unrealized, realized, account]


def account_update_time(hhmm: str) -> list:
    return [ACCT_UPDATE_TIME, 1, hhmm]


def account_download_end(account: str) -> list:
    return [ACCT_DOWNLOAD_END, 1, account]


# ---- orders ---------------------------------------------------------------------------------------

def order_status(o: "SimOrder", ids: tuple[int, int] | None = None) -> list:
    """orderStatus (3) at v157: no version field; mktCapPrice last. ``ids``: (orderId, clientId) as this client
    sees them (an order typed into TWS shows 0, 0 unless bound to client 0)."""
    order_id, client_id = ids or (o.order_id, o.client_id)
    return [ORDER_STATUS, order_id, o.status, o.filled, o.remaining, o.avg_fill_price, o.perm_id,
            o.parent_id, o.last_fill_price, client_id, "", 0]


def _contract_for_order(ins: Instrument) -> list:
    return [ins.con_id, ins.symbol, ins.sec_type, ins.expiry, ins.strike, ins.right, ins.multiplier,
            ins.exchange, ins.currency, ins.local_symbol, ins.trading_class]


def open_order(o: "SimOrder", status: str | None = None, margin: dict | None = None,
               ids: tuple[int, int] | None = None) -> list:
    """openOrder (5) at v157 (no version field: version = server version). ``ids`` as in order_status."""
    m = margin or {}
    ins = o.instrument
    order_id, client_id = ids or (o.order_id, o.client_id)
    return [
        OPEN_ORDER, order_id, *_contract_for_order(ins),
        o.action, o.quantity, o.order_type, _u(o.lmt_price), _u(o.aux_price), o.tif, "", o.account, "", 0,
        o.order_ref, client_id, o.perm_id, o.outside_rth, False, 0, "",
        "",                                   # sharesAllocation (deprecated)
        "", "", "", "",                       # FA group, method, percentage, profile
        "", "", "",                           # modelCode, goodTillDate, rule80A
        "", "",                               # percentOffset (unset), settlingFirm
        0, "", -1,                            # shortSaleSlot, designatedLocation, exemptCode
        0,                                    # auctionStrategy
        "", "", "", "", "",                   # startingPrice, stockRefPrice, delta, stockRangeLower/Upper
        0, False, False, False, "", 0,        # displaySize, blockOrder, sweepToFill, allOrNone, minQty, ocaType
        False, False, "",                     # eTradeOnly, firmQuoteOnly, nbboPriceCap
        o.parent_id, 0,                       # parentId, triggerMethod
        "", 0, "", "",                        # volatility, volatilityType, deltaNeutralOrderType, dnAuxPrice
        False, 0,                             # continuousUpdate, referencePriceType
        "", "",                               # trailStopPrice, trailingPercent
        "", "",                               # basisPoints, basisPointsType
        "", 0, 0,                             # comboLegsDescrip, comboLegs, orderComboLegs
        0,                                    # smartComboRoutingParams
        "", "", "",                           # scaleInitLevelSize, scaleSubsLevelSize, scalePriceIncrement
        "",                                   # hedgeType
        False, "", "", False,                 # optOutSmartRouting, clearingAccount, clearingIntent, notHeld
        False, "",                            # deltaNeutralContract present, algoStrategy
        False,                                # solicited
        o.what_if, status or o.status,
        m.get("init_before", ""), m.get("maint_before", ""), m.get("ewl_before", ""),
        m.get("init_change", ""), m.get("maint_change", ""), m.get("ewl_change", ""),
        m.get("init_after", ""), m.get("maint_after", ""), m.get("ewl_after", ""),
        _u(m.get("commission")), _u(m.get("min_commission")), _u(m.get("max_commission")),
        m.get("commission_currency", ""), m.get("warning", ""),
        False, False,                         # randomizeSize, randomizePrice
        0,                                    # conditions
        "", UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, UNSET_DOUBLE, 0,
        "", "", "",                           # softDollarTier name, value, displayName
        UNSET_DOUBLE,                         # cashQty
        False, False, False, False,           # dontUseAutoPriceForHedge, isOmsContainer, discretionaryUpTo.., usePriceMgmtAlgo
    ]


def open_order_end() -> list:
    return [OPEN_ORDER_END, 1]


def completed_order(o: "SimOrder") -> list:
    """completedOrder (101): the order fields without orderId/clientId, then the completion fields."""
    ins = o.instrument
    return [
        COMPLETED_ORDER, *_contract_for_order(ins),
        o.action, o.quantity, o.order_type, _u(o.lmt_price), _u(o.aux_price), o.tif, "", o.account, "", 0,
        o.order_ref, o.perm_id, o.outside_rth, False, 0, "",
        "", "", "", "",                       # FA
        "", "", "",                           # modelCode, goodTillDate, rule80A
        "", "",                               # percentOffset, settlingFirm
        0, "", -1,                            # shortSaleSlot, designatedLocation, exemptCode
        "", "", "", "", "",                   # startingPrice, stockRefPrice, delta, stockRangeLower/Upper
        0, False, False, "", 0,               # displaySize, sweepToFill, allOrNone, minQty, ocaType
        0,                                    # triggerMethod
        "", 0, "", "", False, 0,              # volatility params (no delta-neutral attribs)
        "", "",                               # trailStopPrice, trailingPercent
        "", 0, 0, 0,                          # combo legs descr, legs, order legs, smart combo params
        "", "", "",                           # scale
        "",                                   # hedgeType
        "", "", False,                        # clearingAccount, clearingIntent, notHeld
        False, "", False,                     # deltaNeutralContract, algoStrategy, solicited
        o.status,
        False, False,                         # randomize
        0,                                    # conditions
        UNSET_DOUBLE, UNSET_DOUBLE,           # trailStopPrice, lmtPriceOffset
        UNSET_DOUBLE,                         # cashQty
        False, False,                         # dontUseAutoPriceForHedge, isOmsContainer
        "", o.filled, 0, False, "", False, False, 0,   # autoCancelDate, filledQuantity, refFuturesConId,
                                                       # autoCancelParent, shareholder, imbalanceOnly,
                                                       # routeMarketableToBbo, parentPermId
        o.completed_time, o.completed_status,
    ]


def completed_orders_end() -> list:
    return [COMPLETED_ORDERS_END]


def execution_data(req_id: int, e: "Execution", ids: tuple[int, int] | None = None) -> list:
    """execDetails (11) at v157 (no version field). ``ids`` as in order_status."""
    ins = e.instrument
    order_id, client_id = ids or (e.order_id, e.client_id)
    return [EXECUTION_DATA, req_id, order_id, *_contract_short(ins), ins.exchange, ins.currency,
            ins.local_symbol, ins.trading_class, e.exec_id, e.time, e.account, e.exchange, e.side, e.shares,
            e.price, e.perm_id, client_id, 0, e.cum_qty, e.avg_price, e.order_ref, "", 0, "", 1]


def execution_data_end(req_id: int) -> list:
    return [EXECUTION_DATA_END, 1, req_id]


def commission_report(e: "Execution") -> list:
    return [COMMISSION_REPORT, 1, e.exec_id, e.commission, "USD",
            UNSET_DOUBLE if e.realized_pnl is None else e.realized_pnl, UNSET_DOUBLE, 0]
