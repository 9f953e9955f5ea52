"""Text that leaves quantkit: terminals, spreadsheets, JSON.

- ``terminal_safe(text)``: control characters (C0 except newline and tab, DEL, C1 such as CSI
  ``\\x9b``) shown as ``\\xNN`` escapes, so a model name cannot move the cursor, retitle the
  window or hide text.
- ``csv_cell(value)``: a string cell that a spreadsheet would run as a formula (starts with
  ``= + - @``, tab or CR: OWASP "CSV injection") gets a leading ``'``; control characters are
  escaped as for the terminal. Numbers pass unchanged.
- ``xlsx_text(value)``: a string for an xlsx cell: XML-illegal control characters removed (the
  caller writes it with string type, so a leading ``=`` is text, not a formula).
- ``finite_json(obj)``: ``obj`` with NaN/inf floats replaced by None, and the paths of those
  values, so ``json.dumps`` never writes the invalid bare ``NaN``.
"""

from __future__ import annotations

import math
import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _escape(m: re.Match) -> str:
    return f"\\x{ord(m.group()):02x}"


def terminal_safe(text: str) -> str:
    """``text`` with control characters (other than newline and tab) escaped as ``\\xNN``."""
    return _CONTROL.sub(_escape, text)


def one_line(text: str) -> str:
    """``terminal_safe`` and on one line (newlines and tabs escaped too): for error messages."""
    return terminal_safe(text).replace("\n", "\\n").replace("\t", "\\t")


def csv_cell(value: Any) -> Any:
    """A CSV cell: strings neutralised against formula injection and control characters."""
    if not isinstance(value, str):
        return value
    if value.startswith(_FORMULA_START):
        value = "'" + value
    return terminal_safe(value).replace("\t", "\\x09")


def xlsx_text(value: str) -> str:
    """A string an xlsx cell can hold: characters XML 1.0 forbids removed."""
    return _XML_ILLEGAL.sub("", value)


def finite_json(obj: Any, path: str = "") -> tuple[Any, list[str]]:
    """(``obj`` with non-finite floats as None, the dotted paths of those floats)."""
    bad: list[str] = []

    def walk(o, where):
        if isinstance(o, float) and not math.isfinite(o):
            bad.append(f"{where} = {o}")
            return None
        if isinstance(o, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(o)]
        return o

    return walk(obj, path), bad
