"""Post-process the workbook openpyxl wrote: cached values into formula cells, and fast Plan rows.

openpyxl writes a formula cell as ``<c r="F5" s="3"><f>...</f><v /></c>``: no cached value, so a
reader that does not recalculate shows nothing. ``inject_cached_values`` fills each ``<v>`` with
quantkit's Python result (numbers plain, ``t="b"`` booleans, ``t="str"`` strings).

openpyxl also needs ~30 us per cell, too slow for a 2,160-row plan, so the Plan sheet is written
by openpyxl with its header and one template row only (that fixes the cell style ids, conditional
formats, filter and panes); ``expand_rows`` then replaces the template row with every row,
generated here with the same style ids, formulas and cached values.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import IO, Any, Sequence
from xml.sax.saxutils import escape

from quantkit.boundary.text import xlsx_text

# a formula cell with no cached value: openpyxl writes <v />; <v></v> or no <v> mean the same
_FORMULA_CELL = re.compile(rb'<c r="([A-Z]+[0-9]+)"([^>]*)><f([^>]*)>([^<]*)</f>(?:<v\s*/>|<v>\s*</v>)?</c>')
_SHEET = re.compile(rb'<sheet [^>]*?name="([^"]+)"[^>]*?r:id="([^"]+)"')
_REL = re.compile(rb'<Relationship [^>]*?Target="([^"]+)"[^>]*?Id="([^"]+)"|'
                  rb'<Relationship [^>]*?Id="([^"]+)"[^>]*?Target="([^"]+)"')
_STYLE = re.compile(rb'<c r="[A-Z]+2"(?:[^>]*? s="([0-9]+)")?')


def _value_xml(value: Any) -> tuple[str, str]:
    """(type attribute, <v> text) of a cached formula value."""
    if isinstance(value, bool):
        return ' t="b"', "1" if value else "0"
    if isinstance(value, int):
        return "", str(value)
    if isinstance(value, float):
        return "", repr(value)
    return ' t="str"', escape(xlsx_text(str(value)))


def _data_xml(ref: str, style: str, value: Any) -> str:
    if value is None or value == "":
        return f'<c r="{ref}"{style}/>'
    if isinstance(value, bool):
        return f'<c r="{ref}"{style} t="b"><v>{int(value)}</v></c>'
    if isinstance(value, (int, float)):
        return f'<c r="{ref}"{style}><v>{value!r}</v></c>'
    text = escape(xlsx_text(str(value)))
    space = ' xml:space="preserve"' if text != text.strip() else ""
    return f'<c r="{ref}"{style} t="inlineStr"><is><t{space}>{text}</t></is></c>'


def rows_xml(cols: Sequence, records: Sequence[dict], styles: Sequence[str], first_row: int = 2) -> bytes:
    """``<row>`` elements for ``records`` (formula columns: template + cached value)."""
    from openpyxl.utils import get_column_letter

    spec = [(get_column_letter(i), c.key, c.formula, c.array, s)
            for i, (c, s) in enumerate(zip(cols, styles), start=1)]
    parts: list[str] = []
    for r, rec in enumerate(records, start=first_row):
        rs = str(r)
        parts.append(f'<row r="{rs}">')
        for letter, key, tpl, array, style in spec:
            ref = letter + rs
            if tpl is None:
                parts.append(_data_xml(ref, style, rec[key]))
                continue
            t, v = _value_xml(rec[key])
            f = escape(tpl[1:].replace("{r}", rs))  # without the leading "="
            fattr = f' t="array" ref="{ref}"' if array else ""
            parts.append(f'<c r="{ref}"{style}{t}><f{fattr}>{f}</f><v>{v}</v></c>')
        parts.append("</row>")
    return "".join(parts).encode()


def sheet_paths(zin: zipfile.ZipFile) -> dict[str, str]:
    """Sheet title -> its part name in the package (via workbook.xml and its relationships)."""
    rels = {}
    for m in _REL.finditer(zin.read("xl/_rels/workbook.xml.rels")):
        target, rid = (m.group(1), m.group(2)) if m.group(1) else (m.group(4), m.group(3))
        rels[rid] = target.decode().lstrip("/")
    out = {}
    for m in _SHEET.finditer(zin.read("xl/workbook.xml")):
        target = rels[m.group(2)]
        out[m.group(1).decode()] = target if target.startswith("xl/") else f"xl/{target}"
    return out


def _inject(body: bytes, values: dict[str, Any], part: str) -> bytes:
    missing: list[str] = []

    def sub(m: re.Match) -> bytes:
        ref = m.group(1).decode()
        if ref not in values:
            missing.append(ref)
            return m.group(0)
        t, v = _value_xml(values[ref])
        attrs = re.sub(rb' t="[^"]*"', b"", m.group(2))
        return b'<c r="%s"%s%s><f%s>%s</f><v>%s</v></c>' % (
            m.group(1), attrs, t.encode(), m.group(3), m.group(4), v.encode())

    body, n = _FORMULA_CELL.subn(sub, body)
    if missing or n != len(values):
        raise RuntimeError(f"{part}: {n} formula cells but {len(values)} cached values; "
                           f"no value for {missing[:5]}")
    return body


def _expand(body: bytes, cols: Sequence, records: Sequence[dict], last_col: str) -> bytes:
    start = body.index(b'<row r="2"')
    end = body.index(b"</row>", start) + len(b"</row>")
    template = body[start:end]
    styles = [f' s="{m.group(1).decode()}"' if m.group(1) else "" for m in _STYLE.finditer(template)]
    if len(styles) != len(cols):
        raise RuntimeError(f"Plan template row has {len(styles)} cells, expected {len(cols)}")
    body = body[:start] + rows_xml(cols, records, styles) + body[end:]
    return re.sub(rb'<dimension ref="[^"]*"', f'<dimension ref="A1:{last_col}{len(records) + 1}"'.encode(),
                  body, count=1)


def finish(data: bytes, cache: dict[str, dict[str, Any]], out: IO[bytes],
           expand: tuple[str, Sequence, Sequence[dict]] | None = None) -> None:
    """Write the package ``data`` to ``out`` with cached values and (``expand``) the full Plan rows.

    ``expand`` = (sheet title, columns, records): that sheet was written with one template row.
    """
    from openpyxl.utils import get_column_letter

    with zipfile.ZipFile(io.BytesIO(data)) as zin:
        paths = sheet_paths(zin)
        by_part = {paths[name]: values for name, values in cache.items() if name in paths}
        expand_part = paths[expand[0]] if expand else None
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zout:
            for item in zin.infolist():
                body = zin.read(item.filename)
                if item.filename == expand_part:
                    _, cols, records = expand
                    body = _expand(body, cols, records, get_column_letter(len(cols)))
                elif item.filename in by_part:
                    body = _inject(body, by_part[item.filename], item.filename)
                zout.writestr(item.filename, body, zipfile.ZIP_DEFLATED)
