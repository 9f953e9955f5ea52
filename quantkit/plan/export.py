"""Render a plan's rows as xlsx, csv, json or a table, and write files atomically.

CSV and JSON carry the rows exactly as built (raw bytes as integers, the same numbers the workbook
caches and recalculates); only the table converts units (GB = 10^9 and GiB = 2^30).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Callable

from quantkit.errors import InputError, OutputExistsError
from quantkit.export.render import Column, render_csv, render_json, render_table
from quantkit.fsutil import atomic_write
from quantkit.plan.definition import Plan
from quantkit.plan.rows import ROW_KEYS, plan_json

FORMATS = ("xlsx", "csv", "json", "table")
_SUFFIX = {".xlsx": "xlsx", ".csv": "csv", ".json": "json"}

# CSV columns: the row keys as headers (raw bytes, unit in the name where it is not obvious)
CSV_COLUMNS = [Column(k, k) for k in ROW_KEYS]
TABLE_COLUMNS = [
    Column("model", "model"), Column("gpu", "GPU"), Column("dtype", "dtype"),
    Column("context", "context", "int"), Column("batch", "batch", "int"),
    Column("weights_bytes", "weights", "bytes"), Column("kv_cache_bytes", "KV cache", "bytes"),
    Column("total_bytes", "total, 1 GPU", "bytes"), Column("fits", "fits 1 GPU", "bool"),
    Column("min_gpus", "GPUs needed", "int"), Column("max_batch", "max batch on them", "int"),
    Column("decode_tokens_per_s_bound", "decode bound", "tokens/s"),
]


LARGE_PLAN_ROWS = 100_000  # above this, the command warns before it starts
# Measured 2026-12-04 (1,680-row plan, this repository's 2-core CI machine): bytes per row of each
# format, and about 5 ms of one CPU core per row to compute and write.
BYTES_PER_ROW = {"csv": 160, "xlsx": 400, "json": 600, "table": 200}
SECONDS_PER_ROW = 0.005


def size_warning(num_rows: int, fmt: str) -> str | None:
    """A warning for plans over ``LARGE_PLAN_ROWS`` rows: their size and rough time; else None."""
    if num_rows <= LARGE_PLAN_ROWS:
        return None
    size = num_rows * BYTES_PER_ROW[fmt]
    minutes = num_rows * SECONDS_PER_ROW / 60
    return (f"warning: {num_rows:,} rows: about {size / 1e6:,.0f} MB as {fmt} (MB = 10^6 bytes) and "
            f"roughly {minutes:,.0f} min; narrow --models/--gpus/--contexts/--batches for a smaller plan")


def format_for(out: str | None, fmt: str | None) -> str:
    """The output format: ``fmt`` if given, else from the ``out`` suffix, else a table."""
    if fmt:
        return fmt
    if out is None:
        return "table"
    suffix = Path(out).suffix.lower()
    if suffix not in _SUFFIX:
        raise InputError(f"cannot tell the format of {out!r} from its suffix; use .xlsx, .csv or "
                         f".json, or pass --format")
    return _SUFFIX[suffix]


def render_text(plan: Plan, rows: list[dict], fmt: str) -> str:
    if fmt == "csv":
        return render_csv(rows, CSV_COLUMNS)
    if fmt == "json":
        return render_json(plan_json(plan, rows))
    if fmt == "table":
        return render_table(rows, TABLE_COLUMNS) + "\n"
    raise InputError(f"the {fmt} format needs --out FILE")


def check_writable(path: Path, force: bool) -> None:
    """Fail before any work if ``path`` exists (without ``force``) or its folder cannot take it."""
    from quantkit.boundary.paths import check_path

    path = check_path(path, "--out")
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to overwrite it")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"cannot write {path}: {parent} is not a folder")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {path}: the folder {parent} is not writable")


def write_atomic(path: Path, write: Callable[[IO[bytes]], None], force: bool = False) -> None:
    """Write through ``write(file)`` to a temporary file in the same folder, then rename it
    (``quantkit.fsutil.atomic_write``: fsynced, mode 0o666 minus the umask like a plain open).

    Nothing is left behind on failure; an existing ``path`` is replaced only with ``force``.
    """
    check_writable(path, force)
    atomic_write(path, write, overwrite=force)


def write_plan(plan: Plan, rows: list[dict], path: Path, fmt: str, force: bool = False,
               command: str | None = None) -> None:
    """Write ``rows`` to ``path`` as ``fmt`` (xlsx, csv or json), atomically."""
    if fmt == "xlsx":
        from quantkit.plan.xlsx import write_xlsx

        write_atomic(path, lambda fh: write_xlsx(plan, rows, fh, command), force)
    elif fmt in ("csv", "json"):
        text = render_text(plan, rows, fmt).encode()
        write_atomic(path, lambda fh: fh.write(text), force)
    else:
        raise InputError(f"cannot write the {fmt} format to a file; use xlsx, csv or json")
