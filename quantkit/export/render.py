"""One renderer for rows of raw numbers: table (tabulate), json and csv.

Rows hold raw values (bytes as int). Units are converted only here: tables show bytes as both
GB (10^9) and GiB (2^30); CSV and JSON keep raw bytes with the unit in the column name.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from quantkit.boundary.text import csv_cell, terminal_safe

GB = 10**9
GiB = 2**30
FORMATS = ("table", "json", "csv")


def fmt_bytes(n: int | None) -> str:
    """``137.95 GB (128.48 GiB)``; small values in MB/MiB."""
    if n is None:
        return "-"
    if abs(n) < 10**8:
        return f"{n / 10**6:,.2f} MB ({n / 2**20:,.2f} MiB)"
    return f"{n / GB:,.2f} GB ({n / GiB:,.2f} GiB)"


def fmt_value(value: Any, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        return fmt_bytes(value)
    if unit == "bytes/s":
        return f"{value / 1e12:,.2f} TB/s" if value >= 1e12 else f"{value / 1e9:,.0f} GB/s"
    if unit == "FLOP/s":
        return f"{value / 1e12:,.1f} TFLOP/s"
    if unit == "bool":
        return "yes" if value else "no"
    if unit == "int":
        return f"{value:,}"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    unit: str = "str"  # "bytes", "int", "float", "bool", "str", "tokens/s", "s" ...

    @property
    def csv_header(self) -> str:
        return f"{self.key}_bytes" if self.unit == "bytes" and not self.key.endswith("bytes") else self.key

    @property
    def table_header(self) -> str:
        return self.header if self.unit in ("str", "int", "bool", "float", "bytes", "bytes/s", "FLOP/s") else f"{self.header} ({self.unit})"


def render_table(rows: Sequence[dict], columns: Sequence[Column], tablefmt: str = "simple") -> str:
    from tabulate import tabulate

    body = [[terminal_safe(fmt_value(r.get(c.key), c.unit)) for c in columns] for r in rows]
    return tabulate(body, headers=[c.table_header for c in columns], tablefmt=tablefmt,
                    disable_numparse=True)


def render_kv(pairs: Iterable[tuple[str, Any, str]], title: str | None = None) -> str:
    """A two-column table of (label, value, unit)."""
    from tabulate import tabulate

    body = [[terminal_safe(label), terminal_safe(fmt_value(value, unit))] for label, value, unit in pairs]
    out = tabulate(body, tablefmt="simple", disable_numparse=True)
    return f"{terminal_safe(title)}\n{out}" if title else out


def render_csv(rows: Sequence[dict], columns: Sequence[Column]) -> str:
    """CSV with raw values; text cells are neutralised for spreadsheets (``boundary.text.csv_cell``:
    a leading = + - @ tab or CR gets a ``'``, control characters are escaped)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([csv_cell(c.csv_header) for c in columns])
    for r in rows:
        writer.writerow(["" if r.get(c.key) is None else csv_cell(r.get(c.key)) for c in columns])
    return buf.getvalue()


def render_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def flatten(d: dict, prefix: str = "") -> dict:
    """{'params': {'total': 1}} -> {'params.total': 1} (for CSV)."""
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
