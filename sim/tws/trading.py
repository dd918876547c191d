"""Orders for one session: placeOrder (incl. what-if), cancelOrder and the order lists (mixed into `Session`).

The order state itself lives in `orders.Broker`; fills and their messages are the server's (`try_fill`),
because orders outlive the session that placed them.
"""

from __future__ import annotations

from . import messages as M
from . import requests as R
from .contracts import resolve
from .orders import MANUAL_CLIENT, SimOrder, min_tick, on_tick
from .wire import Fields, WireError

READ_ONLY_TEXT = "The API interface is currently in Read-Only mode."


class OrderHandlers:
    """placeOrder, cancelOrder, reqGlobalCancel, open/completed orders, executions (mixed into Session)."""

    # ---- orders ---------------------------------------------------------------------------------

    def _read_only_error(self, order_id: int) -> None:
        self.error(order_id, 321, f"Error validating request.-'bN' : cause - {READ_ONLY_TEXT}")

    def place_order(self, fields: list[str]) -> None:
        sim = self.sim
        try:
            req = R.parse_place_order(fields)
        except WireError as exc:
            oid = int(fields[1]) if len(fields) > 1 and fields[1].lstrip("-").isdigit() else -1
            self.error(oid, 321, f"Error validating request.-'bN' : cause - {exc}")
            return
        oid = req.order_id
        sim.note_order_id(self.client_id, oid)
        if sim.read_only:
            sim._record_order({"client_id": self.client_id, "order_id": oid, "rejected": 321,
                               "what_if": req.what_if})
            self._read_only_error(oid)
            return
        # TWS 10.x no longer supports these two attributes, which ibapi 9.81 sends as True by default.
        if req.e_trade_only:
            self.error(oid, 10268, "The 'EtradeOnly' order attribute is not supported.")
            return
        if req.firm_quote_only:
            self.error(oid, 10269, "The 'firmQuoteOnly' order attribute is not supported.")
            return
        found = resolve(sim.market, req.contract)
        if len(found) != 1:
            self.error(oid, 200, "No security definition has been found for the request")
            return
        ins = found[0]
        problem = ""
        if req.action not in ("BUY", "SELL"):
            problem = f"Invalid side {req.action!r}"
        elif req.quantity <= 0:
            problem = "Order quantity must be positive"
        elif req.order_type == "LMT" and req.lmt_price is None:
            problem = "Limit price is missing"
        if problem:
            self.error(oid, 321, f"Error validating request.-'bN' : cause - {problem}")
            return
        if not req.account and len(sim.accounts) > 1:
            self.error(oid, 435, "You must specify an allocation (either a single account, group, or profile).")
            return
        account = req.account or sim.accounts[0]
        if account not in sim.broker.accounts:
            self.error(oid, 321, f"Error validating request.-'bN' : cause - Invalid account code {account}")
            return
        if req.lmt_price is not None and not on_tick(req.lmt_price, min_tick(ins, req.lmt_price)):
            self.error(oid, 110, "The price does not conform to the minimum price variation for this contract.")
            return
        existing = self._own_order(oid)
        if existing is None and not req.what_if and req.action == "BUY":
            need, have = sim.broker.buying_check(account, ins, req.quantity, req.lmt_price)
            if need > have:
                self.error(oid, 201, f"Order rejected - reason:YOUR ORDER IS NOT ACCEPTED. IN ORDER TO OBTAIN THE "
                                     f"DESIRED POSITION YOUR EQUITY WITH LOAN VALUE [{have:.2f} USD] MUST EXCEED THE "
                                     f"INITIAL MARGIN [{need:.2f} USD]")
                return
        if existing is not None and not req.what_if:
            if existing.status == "Filled":
                self.error(oid, 104, "Can't modify a filled order.")
                return
            if not existing.is_open:
                self.error(oid, 103, "Duplicate order id")
                return
            # a placeOrder with the id of an open order modifies it
            existing.quantity, existing.lmt_price = req.quantity, req.lmt_price
            existing.order_type, existing.aux_price = req.order_type, req.aux_price
            existing.tif, existing.outside_rth = req.tif or existing.tif, req.outside_rth
            sim._publish_order(existing)
            sim.try_fill(existing)
            return
        order = sim.broker.new_order(order_id=oid, client_id=self.client_id, account=account, instrument=ins,
                                     action=req.action, quantity=req.quantity, order_type=req.order_type,
                                     lmt_price=req.lmt_price, aux_price=req.aux_price, tif=req.tif or "DAY",
                                     order_ref=req.order_ref, what_if=req.what_if, transmit=req.transmit,
                                     parent_id=req.parent_id, outside_rth=req.outside_rth)
        sim._record_order(order)
        if req.what_if:
            # what-if: the margin answer in openOrder's orderState, nothing is placed
            order.status = "PreSubmitted"
            self.send(M.open_order(order, margin=sim.broker.what_if(order)))
            return
        order.status = "PreSubmitted"
        sim._publish_order(order)
        if order.tif == "OPG":
            # An at-the-open order waits, PreSubmitted, for an opening auction the simulator never holds.
            self.error(oid, 399, "Order Message:\nWarning: your order will not be placed at the exchange until "
                                 "the market opens.")
            return
        sim._spawn(sim._submit(order), name=f"sim-submit-{order.perm_id}")   # orders outlive the session

    def cancel_order(self, fields: list[str]) -> None:
        sim = self.sim
        f = Fields(fields, 2)
        oid = f.int()
        if sim.read_only:
            self._read_only_error(oid)
            return
        order = self._own_order(oid)
        if order is None:
            self.error(oid, 10147, f"OrderId {oid} that needs to be cancelled is not found.")
            return
        if not order.is_open:
            self.error(oid, 10148, f"OrderId {oid} that needs to be cancelled cannot be cancelled, state: "
                                   f"{order.status}.")
            return
        sim.cancel(order)

    def req_global_cancel(self, fields: list[str]) -> None:
        if self.sim.read_only:
            self._read_only_error(-1)
            return
        for order in list(self.sim.broker.orders.values()):
            if order.is_open:
                self.sim.cancel(order)

    def _send_open_orders(self, orders: list[SimOrder]) -> None:
        if not self.sim.read_only:           # read-only API hides order information: just the end marker
            for o in orders:
                if o.is_open:
                    ids = self.sim.ids_for(self, o)
                    self.send(M.open_order(o, ids=ids))
                    self.send(M.order_status(o, ids=ids))
        self.send(M.open_order_end())

    def req_open_orders(self, fields: list[str]) -> None:
        self._send_open_orders([o for o in self.sim.broker.orders.values() if o.client_id == self.client_id
                                or (o.manual and self.sim.ids_for(self, o) != (0, 0))])

    def _own_order(self, order_id: int) -> SimOrder | None:
        """This client's order ``order_id``; for client 0 after reqAutoOpenOrders(true) also a bound manual order."""
        order = self.sim.broker.orders.get((self.client_id, order_id))
        if order is None and order_id < 0 and self.client_id == 0 and self.auto_bind:
            order = self.sim.broker.orders.get((MANUAL_CLIENT, order_id))
        return order

    def req_all_open_orders(self, fields: list[str]) -> None:
        self._send_open_orders(list(self.sim.broker.orders.values()))

    def req_auto_open_orders(self, fields: list[str]) -> None:
        bind = Fields(fields, 2).bool()
        if self.client_id != 0:
            self.error(-1, 321, "Error validating request.-'bd' : cause - Auto bind of orders is only "
                                "possible for client id 0")
            return
        self.auto_bind = bind
        self._send_open_orders(list(self.sim.broker.orders.values()))

    def req_completed_orders(self, fields: list[str]) -> None:
        if not self.sim.read_only:
            for o in self.sim.broker.orders.values():
                if not o.is_open:
                    self.send(M.completed_order(o))
        self.send(M.completed_orders_end())

    def req_executions(self, fields: list[str]) -> None:
        f = Fields(fields, 2)
        rid = f.int()
        client_id = f.int()
        acct, since, symbol, sec_type, exchange, side = (f.str() for _ in range(6))
        since_key = since.replace("-", " ").strip()
        for e in self.sim.broker.executions:
            if client_id and e.client_id != client_id:
                continue
            if acct and e.account != acct:
                continue
            if symbol and e.instrument.symbol != symbol.upper():
                continue
            if sec_type and e.instrument.sec_type != sec_type.upper():
                continue
            if exchange and e.exchange != exchange.upper():
                continue
            if side and {"BUY": "BOT", "SELL": "SLD"}.get(side.upper(), side.upper()) != e.side:
                continue
            if since_key and e.time.replace("  ", " ") < since_key:
                continue
            order = self.sim.broker.orders.get((e.client_id, e.order_id))
            self.send(M.execution_data(rid, e, ids=self.sim.ids_for(self, order)))
            self.send(M.commission_report(e))
        self.send(M.execution_data_end(rid))
