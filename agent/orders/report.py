"""What the order-file command prints and writes (pure): the preview table, the summary table and the results
file (``<file>.results.json``), rewritten after every order so an interrupted run says exactly what was placed."""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.console import table
from agent.orders.files import FileOrder

FAR_FROM_MARKET = 0.05          # a limit more than 5 % from the market is flagged in the preview

OUTCOMES = ("placed", "already placed", "rejected", "unknown", "not placed")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Preview:
    """What the preview knows of one line: the market, TWS's what-if, and anything to look at twice."""

    market: float | None = None           # mid (or last) when the preview was made
    init_margin_change: float | None = None
    commission: float | None = None
    notes: list[str] = field(default_factory=list)
    already: str = ""                     # "order 12, Filled (…)" when this line's order exists already

    def far_from_market(self, limit: float | None) -> float | None:
        """The limit's distance from the market (a fraction) when over FAR_FROM_MARKET, else None."""
        if limit is None or not self.market:
            return None
        d = (limit - self.market) / self.market
        return d if abs(d) > FAR_FROM_MARKET else None


@dataclass
class LineResult:
    line: str
    ref: str
    order_ref: str
    account: str
    action: str
    quantity: float
    contract: str
    order_type: str
    limit_price: float | None
    tif: str
    outcome: str = "not placed"
    status: str = ""
    order_id: int | None = None
    perm_id: int | None = None
    filled: float = 0.0
    avg_fill_price: float | None = None
    reason: str = ""
    at: str = ""

    @staticmethod
    def for_order(o: FileOrder) -> "LineResult":
        t = o.ticket
        return LineResult(line=o.label, ref=o.ref, order_ref=o.order_ref, account=t.account, action=t.action,
                          quantity=t.quantity, contract=o.contract.describe(), order_type=t.order_type,
                          limit_price=t.lmt_price, tif=t.tif)

    def record(self, outcome: str, *, status: str = "", order_id: int | None = None, perm_id: int | None = None,
               filled: float = 0.0, avg_fill_price: float | None = None, reason: str = "") -> None:
        self.outcome, self.status, self.order_id, self.perm_id = outcome, status, order_id, perm_id
        self.filled, self.avg_fill_price, self.reason, self.at = filled, avg_fill_price, reason, now()


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def preview_table(orders: list[FileOrder], previews: list[Preview]) -> str:
    rows = []
    for o, p in zip(orders, previews):
        t = o.ticket
        notes = list(p.notes)
        far = p.far_from_market(t.lmt_price)
        if far is not None:
            notes.insert(0, f"limit {far:+.1%} from the market")
        if p.already:
            notes.insert(0, f"already placed: {p.already}")
        rows.append([o.label, o.ref, t.action, f"{t.quantity:g}", o.contract.describe(), t.order_type,
                     _f(t.lmt_price), t.tif, _f(p.market), _f(p.init_margin_change), _f(p.commission),
                     "; ".join(notes)])
    return table(["line", "ref", "side", "qty", "contract", "type", "limit", "tif", "market", "margin +",
                  "commission", "check"], rows)


def summary_table(results: list[LineResult]) -> str:
    rows = [[r.line, r.ref, r.outcome, r.status or "—", _f(r.order_id), f"{r.filled:g}", _f(r.avg_fill_price, 4),
             r.reason] for r in results]
    return table(["line", "ref", "result", "status", "order", "filled", "avg price", "reason"], rows)


def counts(results: list[LineResult]) -> dict[str, int]:
    return {k: sum(r.outcome == k for r in results) for k in OUTCOMES if any(r.outcome == k for r in results)}


def write_results(path: Path, *, source: str, sha256: str, accounts: list[str], paper: bool | None,
                  results: list[LineResult], started: str, finished: str = "") -> None:
    """Write the results file atomically (a crash mid-write leaves the previous version, never half a file)."""
    doc = {"file": source, "sha256": sha256, "accounts": accounts, "paper": paper, "started": started,
           "finished": finished, "summary": counts(results), "orders": [asdict(r) for r in results]}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".results-", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
