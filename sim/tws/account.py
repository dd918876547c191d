"""Positions and account values for one session (mixed into `Session`)."""

from __future__ import annotations

import datetime as dt

from . import messages as M
from .wire import Fields

SUMMARY_TAGS = ("AccountType", "NetLiquidation", "TotalCashValue", "SettledCash", "AccruedCash", "BuyingPower",
                "EquityWithLoanValue", "GrossPositionValue", "InitMarginReq", "MaintMarginReq",
                "AvailableFunds", "ExcessLiquidity", "Cushion", "FullInitMarginReq", "FullMaintMarginReq",
                "FullAvailableFunds", "FullExcessLiquidity", "LookAheadInitMarginReq",
                "LookAheadMaintMarginReq", "LookAheadAvailableFunds", "LookAheadExcessLiquidity",
                "DayTradesRemaining", "Leverage")


class AccountHandlers:
    """reqPositions(+Multi), reqAccountSummary, reqAccountUpdates(+Multi) (mixed into Session)."""

    # ---- account --------------------------------------------------------------------------------

    def req_positions(self, fields: list[str]) -> None:
        self.positions_sub = True
        broker = self.sim.broker
        for name, acct in broker.accounts.items():
            for pos in acct.positions.values():
                self.send(M.position(name, pos.instrument, pos.qty, round(pos.avg_cost, 4)))
        self.send(M.position_end())

    def cancel_positions(self, fields: list[str]) -> None:
        self.positions_sub = False

    def req_account_summary(self, fields: list[str]) -> None:
        f = Fields(fields, 2)
        rid = f.int()
        f.str()                                            # group ("All")
        tags = tuple(t.strip() for t in f.str().split(",") if t.strip())
        if rid not in self.summary_subs and len(self.summary_subs) >= 2:
            self.error(rid, 322, "Error processing request.-'bd' : cause - Maximum number of account summary "
                                 "requests exceeded")
            return
        self.summary_subs[rid] = tags
        self.send_account_summary(rid, tags)

    def send_account_summary(self, rid: int, tags: tuple[str, ...]) -> None:
        wanted = [t for t in tags if t in SUMMARY_TAGS]
        for name in self.sim.broker.accounts:
            vals = self.sim.broker.values(name)
            for tag in wanted:
                if tag == "AccountType":
                    self.send(M.account_summary(rid, name, tag, "INDIVIDUAL", ""))
                elif tag == "DayTradesRemaining":
                    self.send(M.account_summary(rid, name, tag, "-1", ""))
                else:
                    self.send(M.account_summary(rid, name, tag, f"{vals[tag]:.2f}", "USD"))
        self.send(M.account_summary_end(rid))

    def cancel_account_summary(self, fields: list[str]) -> None:
        self.summary_subs.pop(Fields(fields, 2).int(), None)

    def req_account_updates(self, fields: list[str]) -> None:
        f = Fields(fields, 2)
        subscribe = f.bool()
        acct = f.str() or self.sim.accounts[0]
        if not subscribe:
            self.account_sub = None
            return
        if acct not in self.sim.broker.accounts:
            self.error(-1, 321, f"Error validating request.-'bB' : cause - Invalid account code {acct}")
            return
        self.account_sub = acct
        self.send_account_update(acct, full=True)

    def send_account_update(self, acct: str, full: bool, con_id: int | None = None) -> None:
        broker = self.sim.broker
        vals = broker.values(acct)
        if full:
            self.send(M.account_value("AccountCode", acct, "", acct))
            self.send(M.account_value("AccountType", "INDIVIDUAL", "", acct))
            self.send(M.account_value("Currency", "USD", "USD", acct))
        for key, val in vals.items():
            self.send(M.account_value(key, f"{val:.2f}", "" if key == "DayTradesRemaining" else "USD", acct))
        for row in broker.portfolio(acct):
            if con_id is not None and row["instrument"].con_id != con_id:
                continue
            self.send(M.portfolio_value(row["instrument"], row["qty"], row["market_price"], row["market_value"],
                                        row["avg_cost"], row["unrealized"], row["realized"], acct))
        self.send(M.account_update_time(dt.datetime.now(dt.timezone.utc).strftime("%H:%M")))
        if full:
            self.send(M.account_download_end(acct))

    def req_positions_multi(self, fields: list[str]) -> None:
        f = Fields(fields, 2)
        rid, acct, model = f.int(), f.str(), f.str()
        for name, account in self.sim.broker.accounts.items():
            if acct and acct != name:
                continue
            for pos in account.positions.values():
                self.send(M.position_multi(rid, name, pos.instrument, pos.qty, round(pos.avg_cost, 4), model))
        self.send(M.position_multi_end(rid))

    def req_account_updates_multi(self, fields: list[str]) -> None:
        """Per-account values (ib_async asks for these on connect and waits for the end marker)."""
        f = Fields(fields, 2)
        rid, acct, model = f.int(), f.str(), f.str()
        for name in self.sim.broker.accounts:
            if acct and acct != name:
                continue
            for key, val in self.sim.broker.values(name).items():
                self.send(M.account_update_multi(rid, name, model, key, f"{val:.2f}", "USD"))
        self.send(M.account_update_multi_end(rid))

    def cancel_multi(self, fields: list[str]) -> None:
        """cancelPositionsMulti / cancelAccountUpdatesMulti: the answers above are one-off, nothing to stop."""
