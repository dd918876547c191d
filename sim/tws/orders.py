"""Orders, fills, positions and account values of the simulated accounts (pure: no I/O).

The session layer turns what happens here into openOrder / orderStatus / execDetails messages.
Fills happen at the touch: a buy at the ask, a sell at the bid; market orders without a quote on their
side rest until one appears. Whole fills by default; with partial fills on, each fill takes at most the
size shown at the touch and the rest waits for the next quote. Commissions follow IB's fixed US pricing.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

from .contracts import Instrument, stock_instrument
from .market import Market, option_tick

STARTING_CASH = 1_000_000.0
MANUAL_CLIENT = -1               # the client id the simulator files orders typed into TWS under


@dataclass
class SimOrder:
    order_id: int
    client_id: int
    perm_id: int
    account: str
    instrument: Instrument
    action: str                  # BUY / SELL
    quantity: float
    order_type: str              # MKT / LMT (others rest: see README)
    lmt_price: float | None
    aux_price: float | None
    tif: str = "DAY"
    order_ref: str = ""
    what_if: bool = False
    transmit: bool = True
    parent_id: int = 0
    outside_rth: bool = False
    status: str = "PendingSubmit"
    filled: float = 0.0
    avg_fill_price: float = 0.0
    last_fill_price: float = 0.0
    completed_time: str = ""
    completed_status: str = ""
    last_fill_step: int = -1     # partial fills: one fill per quote (walk step)
    manual: bool = False         # typed into TWS by hand: client MANUAL_CLIENT, a negative id for binding

    @property
    def remaining(self) -> float:
        return max(self.quantity - self.filled, 0.0)

    @property
    def is_open(self) -> bool:
        return self.status in ("PendingSubmit", "PreSubmitted", "Submitted")

    def summary(self) -> dict:
        ins = self.instrument
        return {"order_id": self.order_id, "client_id": self.client_id, "perm_id": self.perm_id,
                "account": self.account, "symbol": ins.symbol, "sec_type": ins.sec_type, "expiry": ins.expiry,
                "strike": ins.strike, "right": ins.right, "con_id": ins.con_id, "action": self.action,
                "quantity": self.quantity, "order_type": self.order_type, "lmt_price": self.lmt_price,
                "order_ref": self.order_ref, "what_if": self.what_if, "status": self.status,
                "filled": self.filled, "avg_fill_price": self.avg_fill_price}


@dataclass
class Execution:
    exec_id: str
    order_id: int
    client_id: int
    perm_id: int
    account: str
    instrument: Instrument
    side: str            # BOT / SLD
    shares: float
    price: float
    time: str            # "YYYYMMDD  HH:MM:SS" as TWS writes it
    exchange: str
    cum_qty: float
    avg_price: float
    order_ref: str
    commission: float
    realized_pnl: float | None


@dataclass
class Position:
    instrument: Instrument
    qty: float = 0.0
    avg_cost: float = 0.0      # per unit including the multiplier, as IB reports averageCost
    realized: float = 0.0


@dataclass
class Account:
    name: str
    cash: float = STARTING_CASH
    positions: dict[int, Position] = field(default_factory=dict)
    realized: float = 0.0


def min_tick(ins: Instrument, price: float) -> float:
    """The price increment an order on ``ins`` must respect: the market model's own (option_tick), pennies for
    stocks."""
    return option_tick(ins.symbol, price) if ins.is_option else 0.01


def on_tick(price: float, tick: float) -> bool:
    steps = price / tick
    return abs(steps - round(steps)) < 1e-6


def commission_for(ins: Instrument, qty: float, price: float) -> float:
    if ins.is_option:
        return round(max(0.65 * qty, 1.0), 2)
    return round(min(max(0.005 * qty, 1.0), 0.01 * qty * price), 2)


class Broker:
    """The simulated accounts and their orders."""

    def __init__(self, market: Market, accounts: tuple[str, ...], clock: Callable[[], float] = time.time,
                 seed_positions: bool = True) -> None:
        self.market = market
        self.clock = clock
        self.accounts: dict[str, Account] = {a: Account(a) for a in accounts}
        self.orders: dict[tuple[int, int], SimOrder] = {}     # (client_id, order_id) -> order
        self.executions: list[Execution] = []
        self._perm = itertools.count(1_000_000_001)
        self._exec = itertools.count(1)
        if seed_positions:
            for acct in self.accounts.values():
                for sym, qty, cost in (("AAPL", 100.0, 210.0), ("JNPR", 300.0, 38.90)):
                    u = market.underlyings.get(sym)
                    if u is not None:
                        ins = stock_instrument(u)
                        acct.positions[ins.con_id] = Position(ins, qty, cost)
                        acct.cash -= qty * cost

    # ---- prices ---------------------------------------------------------------------------------

    def touch(self, ins: Instrument) -> tuple[float, float, float]:
        """(bid, ask, mark) now; bid/ask -1 when there is none."""
        if ins.is_option:
            q = self.market.option_quote(ins.symbol, ins.expiry, ins.strike, ins.right)
            mark = q.mid if q.mid is not None else q.model_price
            return q.bid, q.ask, mark
        q = self.market.stock_quote(ins.symbol)
        return q.bid, q.ask, q.last

    # ---- orders ---------------------------------------------------------------------------------

    def new_order(self, **kw) -> SimOrder:
        o = SimOrder(perm_id=next(self._perm), **kw)
        if not o.what_if:
            self.orders[(o.client_id, o.order_id)] = o
        return o

    def fill_price(self, o: SimOrder) -> float | None:
        """The price this order fills at now, or None if it is not marketable."""
        bid, ask, _ = self.touch(o.instrument)
        if o.action == "BUY":
            if ask <= 0:
                return None
            if o.order_type == "MKT" or (o.order_type == "LMT" and o.lmt_price is not None and o.lmt_price >= ask):
                return ask
            return None
        if bid <= 0:
            return None
        if o.order_type == "MKT" or (o.order_type == "LMT" and o.lmt_price is not None and o.lmt_price <= bid):
            return bid
        return None

    def size_at_touch(self, o: SimOrder) -> float:
        """Quantity shown on the side this order takes (stock sizes are quoted in round lots of 100)."""
        ins = o.instrument
        if ins.is_option:
            q = self.market.option_quote(ins.symbol, ins.expiry, ins.strike, ins.right)
            return float(q.ask_size if o.action == "BUY" else q.bid_size)
        q = self.market.stock_quote(ins.symbol)
        return float((q.ask_size if o.action == "BUY" else q.bid_size) * 100)

    def fill(self, o: SimOrder, price: float, qty: float | None = None) -> Execution:
        """Fill ``qty`` (default: all that remains) at ``price``; update position, cash and the order."""
        qty = o.remaining if qty is None else min(max(qty, 0.0), o.remaining)
        ins = o.instrument
        acct = self.accounts[o.account]
        signed = qty if o.action == "BUY" else -qty
        mult = ins.mult
        commission = commission_for(ins, qty, price)
        pos = acct.positions.get(ins.con_id) or Position(ins)
        realized: float | None = None
        if pos.qty == 0 or (pos.qty > 0) == (signed > 0):
            total = abs(pos.qty) * pos.avg_cost + qty * price * mult + commission
            pos.qty += signed
            pos.avg_cost = total / abs(pos.qty)
        else:
            closing = min(abs(signed), abs(pos.qty))
            direction = 1 if pos.qty > 0 else -1
            realized = round(direction * closing * (price * mult - pos.avg_cost) - commission, 2)
            pos.realized += realized
            acct.realized += realized
            pos.qty += signed
            if abs(pos.qty) < 1e-9:
                pos.qty = 0.0
            elif (pos.qty > 0) != (direction > 0):           # flipped through zero
                pos.avg_cost = price * mult
        acct.positions[ins.con_id] = pos
        acct.cash -= signed * price * mult + commission
        o.avg_fill_price = (o.avg_fill_price * o.filled + price * qty) / (o.filled + qty)
        o.filled += qty
        o.last_fill_price = price
        now = dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc)
        if o.remaining <= 1e-9:
            o.status = "Filled"
            o.completed_status = "Filled"
            o.completed_time = now.strftime("%Y%m%d %H:%M:%S UTC")
        e = Execution(exec_id=f"0000e0d5.{next(self._exec):08x}.01.01", order_id=o.order_id,
                      client_id=o.client_id, perm_id=o.perm_id, account=o.account, instrument=ins,
                      side="BOT" if o.action == "BUY" else "SLD", shares=qty, price=price,
                      time=now.strftime("%Y%m%d  %H:%M:%S"), exchange="CBOE" if ins.is_option else "ISLAND",
                      cum_qty=o.filled, avg_price=round(o.avg_fill_price, 6), order_ref=o.order_ref,
                      commission=commission,
                      realized_pnl=realized)
        self.executions.append(e)
        return e

    def cancel(self, o: SimOrder) -> None:
        o.status = "Cancelled"
        o.completed_status = "Cancelled by Trader"
        o.completed_time = dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc).strftime("%Y%m%d %H:%M:%S UTC")

    def buying_check(self, account: str, ins: Instrument, quantity: float, lmt_price: float | None
                     ) -> tuple[float, float]:
        """(initial margin a buy needs, equity with loan value): stocks 50 % of the notional, options all of it."""
        _, ask, mark = self.touch(ins)
        price = lmt_price if lmt_price else (ask if ask > 0 else mark)
        notional = abs(quantity) * price * ins.mult
        need = notional if ins.is_option else 0.5 * notional
        return need, self.values(account)["EquityWithLoanValue"]

    def what_if(self, o: SimOrder) -> dict:
        """The margin fields of a what-if answer (strings, as TWS sends them)."""
        vals = self.values(o.account)
        _, _, mark = self.touch(o.instrument)
        price = o.lmt_price if o.lmt_price else mark
        notional = abs(o.quantity) * price * o.instrument.mult
        if o.instrument.is_option:
            if o.action == "BUY":
                init = maint = 0.0          # long options are paid in full: no margin, only cash
            else:
                und = self.market.spot(o.instrument.symbol)
                init = maint = notional + 0.20 * und * 100 * abs(o.quantity)
        else:
            init, maint = 0.5 * notional, 0.25 * notional
        ewl = vals["EquityWithLoanValue"]
        fmt = lambda x: f"{x:.2f}"  # noqa: E731
        return {"init_before": fmt(vals["InitMarginReq"]), "maint_before": fmt(vals["MaintMarginReq"]),
                "ewl_before": fmt(ewl), "init_change": fmt(init), "maint_change": fmt(maint),
                "ewl_change": fmt(0.0), "init_after": fmt(vals["InitMarginReq"] + init),
                "maint_after": fmt(vals["MaintMarginReq"] + maint), "ewl_after": fmt(ewl),
                "commission": commission_for(o.instrument, o.quantity, price), "commission_currency": "USD"}

    # ---- account --------------------------------------------------------------------------------

    def portfolio(self, account: str) -> list[dict]:
        rows = []
        for pos in self.accounts[account].positions.values():
            _, _, mark = self.touch(pos.instrument)
            mv = pos.qty * mark * pos.instrument.mult
            rows.append({"instrument": pos.instrument, "qty": pos.qty, "market_price": round(mark, 4),
                         "market_value": round(mv, 2), "avg_cost": round(pos.avg_cost, 4),
                         "unrealized": round(mv - pos.qty * pos.avg_cost, 2), "realized": round(pos.realized, 2)})
        return rows

    def values(self, account: str) -> dict[str, float]:
        acct = self.accounts[account]
        gross = 0.0
        net_pos = 0.0
        init = maint = 0.0
        unrealized = 0.0
        for row in self.portfolio(account):
            mv = row["market_value"]
            net_pos += mv
            gross += abs(mv)
            unrealized += row["unrealized"]
            if row["instrument"].is_option and row["qty"] < 0:
                init += abs(mv) * 1.2
                maint += abs(mv) * 1.2
            elif not row["instrument"].is_option:
                init += abs(mv) * 0.5
                maint += abs(mv) * 0.25
        nlv = acct.cash + net_pos
        excess = nlv - maint
        return {"NetLiquidation": round(nlv, 2), "TotalCashValue": round(acct.cash, 2),
                "SettledCash": round(acct.cash, 2), "AccruedCash": 0.0, "GrossPositionValue": round(gross, 2),
                "EquityWithLoanValue": round(nlv, 2), "InitMarginReq": round(init, 2),
                "MaintMarginReq": round(maint, 2), "AvailableFunds": round(nlv - init, 2),
                "ExcessLiquidity": round(excess, 2), "BuyingPower": round(max(nlv - init, 0) * 4, 2),
                "Cushion": round(excess / nlv, 4) if nlv else 0.0, "Leverage": round(gross / nlv, 4) if nlv else 0.0,
                "UnrealizedPnL": round(unrealized, 2), "RealizedPnL": round(acct.realized, 2),
                "FullInitMarginReq": round(init, 2), "FullMaintMarginReq": round(maint, 2),
                "FullAvailableFunds": round(nlv - init, 2), "FullExcessLiquidity": round(excess, 2),
                "LookAheadInitMarginReq": round(init, 2), "LookAheadMaintMarginReq": round(maint, 2),
                "LookAheadAvailableFunds": round(nlv - init, 2), "LookAheadExcessLiquidity": round(excess, 2),
                "DayTradesRemaining": -1.0}
