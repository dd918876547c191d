"""Order files (pure): a reviewed JSON or CSV file of orders (ticker, action, quantity, limit price, ...) read and
checked as a whole before anything is placed. The command that places them is agent/orders/runner.py.

Formats:
- JSON: ``[{...}, ...]`` or ``{"orders": [{...}, ...]}``; orders are numbered "order #1", "order #2", ...
- CSV with a header row; rows are numbered by their line in the file ("line 2" is the first order).
Columns (names are case- and spacing-tolerant: "Limit Price" = ``limit_price``): ``ticker``, ``action`` (BUY/SELL),
``quantity``, ``limit_price`` (required: a file places no market order unless ``order_type`` says MKT), and optional
``order_type`` (LMT), ``tif`` (DAY), ``account``, ``sec_type`` (STK; OPT with ``expiry``, ``strike``, ``right``),
``ref`` (the line's own id; else its line or position). Unknown columns are a warning.

Each order's orderRef is ``of-`` + a hash of what it asks for (``order_identity``) and of the line's own ``ref`` if
it has one, shown at the end (agent/orders/refs.py): the same file run again, or an edited one, finds the orders it
placed already; only a changed or new line is a new order.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from agent.orders.refs import file_ref
from agent.orders.validation import FILE_FIELDS, check_order, shown
from agent.types import Contract, OrderTicket

# column (normalised) -> canonical field of agent/orders/validation.py ("ref" stays the line's own id)
COLUMNS = {
    "ticker": "symbol", "symbol": "symbol", "action": "action", "side": "action", "quantity": "quantity",
    "qty": "quantity", "limit_price": "lmt_price", "limit": "lmt_price", "lmt_price": "lmt_price",
    "stop_price": "aux_price", "order_type": "order_type", "type": "order_type", "tif": "tif",
    "time_in_force": "tif", "account": "account", "sec_type": "sec_type", "security_type": "sec_type",
    "expiry": "expiry", "expiration": "expiry", "strike": "strike", "right": "right", "ref": "ref",
    "exchange": "exchange", "currency": "currency", "multiplier": "multiplier", "outside_rth": "outside_rth",
}
CONTRACT_FIELDS = ("symbol", "sec_type", "expiry", "strike", "right", "exchange", "currency", "multiplier")
MAX_REF = 32


def order_identity(contract: Contract, t: OrderTicket) -> str:
    """What an order asks for, as canonical text: the same order written another way (moved, reformatted, in JSON or
    CSV, its one managed account written out) gives the same text; any change of what goes to TWS changes it."""
    def num(x: Any) -> float | None:
        return None if x is None else float(x)

    def multiplier(m: str) -> str:                       # "100", "100.0" and 100.0 are one multiplier
        try:
            return f"{float(m):g}"
        except ValueError:
            return m
    return json.dumps([list(contract.key), multiplier(contract.multiplier), t.action, float(t.quantity), t.order_type,
                       num(t.lmt_price), num(t.aux_price), num(t.trail_stop_price), num(t.trailing_percent),
                       num(t.lmt_price_offset), t.tif, bool(t.outside_rth), t.account.upper(), t.open_close],
                      separators=(",", ":"))


def column_name(header: Any) -> str:
    """'Limit Price', 'limitPrice', ' LIMIT_PRICE ' -> 'limit_price'."""
    h = str(header).strip()
    if any(ch.islower() for ch in h):
        h = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", h)          # camelCase -> camel_Case
    h = re.sub(r"[\s\-./]+", "_", h.lower())
    return re.sub(r"_+", "_", h).strip("_")


@dataclass
class FileOrder:
    label: str                 # "line 2" / "order #1"
    ref: str                   # the line's own id, or L2 / 1
    order_ref: str             # what TWS keeps: of-<hash of the order>[-<own ref>]
    contract: Contract
    ticket: OrderTicket
    explicit_ref: bool = False


@dataclass
class OrderFile:
    name: str
    sha256: str
    size: int
    format: str = ""
    orders: list[FileOrder] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _rows(text: str, fmt: str, out: OrderFile) -> list[tuple[str, str, dict]]:
    """(label, default ref, raw row with normalised keys) per order; problems go to ``out``."""
    rows: list[tuple[str, str, dict]] = []
    unknown: list[str] = []

    def norm(raw: dict) -> dict:
        row = {}
        for k, v in raw.items():
            if k is None:                     # a CSV row with more cells than the header has columns
                continue
            name = column_name(k)
            if name in COLUMNS:
                row[COLUMNS[name]] = v
            elif str(k).strip() and str(k).strip() not in unknown:
                unknown.append(str(k).strip())
        return row

    if fmt == "json":
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as e:
            out.problems.append(f"the file is not valid JSON ({str(e)[:120]})")
            return []
        items = doc.get("orders") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            out.problems.append('the JSON must be a list of orders, or {"orders": [...]}')
            return []
        for i, item in enumerate(items, 1):
            if not isinstance(item, dict):
                out.problems.append(f"order #{i} is not an object of fields")
                continue
            rows.append((f"order #{i}", str(i), norm(item)))
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            if not reader.fieldnames:
                out.problems.append("the file has no header row")
                return []
            for raw in reader:
                if not any((v or "").strip() for v in raw.values() if isinstance(v, str)):
                    continue                  # a blank line
                rows.append((f"line {reader.line_num}", f"L{reader.line_num}", norm(raw)))
        except csv.Error as e:
            out.problems.append(f"the CSV cannot be read near line {reader.line_num} ({e})")
            return []
    for name in unknown:
        out.warnings.append(f"unknown column {shown(name)} is ignored")
    if not rows and not out.problems:
        out.problems.append("the file has a header but no orders" if fmt == "csv" else "the file lists no orders")
    return rows


def read_order_file(data: bytes, name: str, *, today: _dt.date, accounts: Sequence[str] | None) -> OrderFile:
    """Read and check a whole order file. ``accounts``: those TWS manages (None before connecting: unchecked)."""
    out = OrderFile(name=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    if not data.strip():
        out.problems.append("the file is empty")
        return out
    try:
        text = data.decode("utf-8-sig")                     # a spreadsheet's byte-order mark is fine
    except UnicodeDecodeError as e:
        out.problems.append(f"the file is not UTF-8 text (byte 0x{data[e.start]:02x} at position {e.start}): save it "
                            f"as UTF-8 (in Excel: 'CSV UTF-8')")
        return out
    lower = name.lower()
    fmt = "json" if lower.endswith(".json") else "csv" if lower.endswith(".csv") else \
        ("json" if text.lstrip()[:1] in ("[", "{") else "csv")
    out.format = fmt
    refs: dict[str, str] = {}
    seen: dict[str, tuple[str, bool]] = {}
    for label, default_ref, row in _rows(text, fmt, out):
        problems: list[str] = []
        raw_ref = row.pop("ref", None)
        explicit = raw_ref is not None and str(raw_ref).strip() != ""
        ref = str(raw_ref).strip() if explicit else default_ref
        if explicit and (len(ref) > MAX_REF or not ref.isprintable()):
            problems.append(f"ref must be at most {MAX_REF} printable characters (got {shown(raw_ref)})")
        elif ref in refs:
            out.problems.append(f"ref {shown(ref)} is used on {refs[ref]} and {label}: each line needs its own ref")
        else:
            refs[ref] = label
        otype = row.get("order_type")
        if isinstance(otype, str) and otype.strip().upper() == "MKT" and \
                str(row.get("lmt_price") or "").strip() not in ("", "None"):
            problems.append("limit_price is given but order_type is MKT: remove one of them")
        contract = {k: row[k] for k in CONTRACT_FIELDS if k in row}
        order = {k: v for k, v in row.items() if k not in CONTRACT_FIELDS}
        chk = check_order(contract, order, today=today, accounts=accounts, fields=FILE_FIELDS)
        problems += chk.problems
        if problems:
            out.problems += [f"{label}: {p}" for p in problems]
            continue
        key = order_identity(chk.contract, chk.ticket)
        t = dataclasses.replace(chk.ticket, order_ref=file_ref(key, ref if explicit else None))
        if key in seen and not (explicit and seen[key][1]):
            out.problems.append(f"{seen[key][0]} and {label} are the same order: remove one, or give each its own "
                                f"ref if you mean both")
        seen.setdefault(key, (label, explicit))
        out.orders.append(FileOrder(label, ref, t.order_ref, chk.contract, t, explicit))
    if out.problems:
        out.orders = []                                      # nothing is placed from a file with a bad line
    return out
