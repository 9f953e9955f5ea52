"""The workbook without a spreadsheet engine: layout, live formulas, cached values = quantkit."""

import csv
import io
import json
import re
import zipfile

import openpyxl
import pytest
from openpyxl.worksheet.formula import ArrayFormula

from quantkit.errors import InputError, OutputExistsError
from quantkit.plan import xlsx as plan_xlsx
from quantkit.plan.export import render_text, write_plan
from quantkit.plan.rows import ROW_KEYS
from tests.plan.conftest import OPTIONS_ASSUME
from tests.plan.expected import Assume, cell_values, formula_cells, mismatches, same


def test_cached_values_are_quantkits_numbers(small_plan, options_plan):
    """Every formula cell carries a cached value, equal to quantkit's result (no recalculation)."""
    for (_, _, path), assume in ((small_plan, Assume()), (options_plan, OPTIONS_ASSUME)):
        assert mismatches(path, path, assume) == []
        values = cell_values(path)
        empty = [k for k in formula_cells(path) if values[k] is None]
        # only the "on GPUs needed" cells of rows that fit nowhere may be empty strings
        assert all(k[0] == "Plan" for k in empty)


def test_plans_cover_both_sides_of_the_prefill_chunk(small_plan, options_plan):
    """Rows whose prefill pass is capped by the chunk and rows below it; and largest batches found
    by either branch of the closed form (b1 x context >= chunk, or the linear b2)."""
    for (plan, rows, _), need_linear_batch in ((small_plan, False), (options_plan, True)):
        chunk = plan.assumptions.prefill_chunk
        sides = {r["batch"] * r["context"] >= chunk for r in rows}
        assert sides == {True, False}, plan.name
        branches = {r["max_batch"] * r["context"] >= chunk for r in rows if r["max_batch"]}
        assert branches == ({True, False} if need_linear_batch else {True}), plan.name


def test_the_check_can_fail(small_plan, tmp_path):
    """A wrong cached value is reported: the comparison is not vacuous."""
    _, _, path = small_plan
    bad = tmp_path / "bad.xlsx"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            body = zin.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":  # Plan
                body, n = re.subn(rb'(<c r="K2"[^>]*><f>[^<]*</f><v>)[^<]*(</v>)', rb"\g<1>999\g<2>", body)
                assert n == 1
            zout.writestr(item, body)
    [report] = mismatches(bad, bad, Assume())
    assert report.startswith("Plan!K2: got 999, quantkit says ")


def test_layout(small_plan):
    plan, rows, path = small_plan
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["Plan", "Chart", "Inputs", "Models", "GPUs", "Weights"]
    ws = wb["Plan"]
    assert ws.max_row == len(rows) + 1 == 49
    assert ws.freeze_panes == "F2" and ws.auto_filter.ref == "A1:W49"
    headers = [c.value for c in ws[1]]
    numeric = [h for h in headers[3:] if not h.startswith(("fits", "context within"))]
    assert all(re.search(r"\((bytes|tokens|sequences|GB = 10\^9 bytes|fraction|tokens/s)", h)
               or h.startswith(("GPUs needed", "Models row", "GPUs row", "Weights row")) for h in numeric), numeric
    # live formulas everywhere a number is computed; an array formula for the TP search
    assert ws["K2"].value == "=F2+G2+H2+I2+J2"
    assert isinstance(ws["O2"].value, ArrayFormula) and ws["O2"].value.text.startswith("=IFERROR(SMALL(IF(")
    assert "gpu_util" in ws["M2"].value and "GPUs!$C:$C" in ws["M2"].value
    assert set(wb.defined_names) >= {"gpu_util", "overhead_bytes", "kv_bytes", "block_size", "prefill_chunk",
                                     "dtype_bits", "dtype_names"}
    rules = {str(r.sqref): [x.formula for x in r.rules] for r in ws.conditional_formatting}
    assert rules["N2:N49"] == [["TRUE"], ["FALSE"]] and rules["O2:O49"] == [['"none"']]
    # data sheets hold the architecture numbers, not bytes
    models = wb["Models"]
    assert [models.cell(2, i).value for i in (1, 5, 9, 11)] == ["llama2-7b", 32, 4096, 32]
    assert str(models["S2"].value).startswith("=IF(")  # KV values per token and layer
    with zipfile.ZipFile(path) as z:
        chart = z.read("xl/charts/chart1.xml").decode()
        assert '<grouping val="stacked" />' in chart and "<f>'Chart'!$B$3:$B$8</f>" in chart
        assert "<strRef><f>'Chart'!$A$3:$A$8</f></strRef>" in chart  # text categories
        assert b'fullCalcOnLoad="1"' in z.read("xl/workbook.xml")


def test_csv_and_json_carry_the_workbooks_numbers(small_plan):
    plan, rows, path = small_plan
    values = cell_values(path)
    ws = openpyxl.load_workbook(path)["Plan"]
    col = {}
    for c in ws[1]:
        col.setdefault(c.value, c.column_letter)
    header_of = {"weights_bytes": "weights (bytes)", "kv_cache_bytes": "KV cache (bytes)",
                 "activation_bytes": "activations (bytes)", "logits_bytes": "logits (bytes)",
                 "overhead_bytes": "overhead (bytes)", "total_bytes": "total, 1 GPU (bytes)",
                 "usable_bytes_per_gpu": "usable per GPU (bytes)", "fits": "fits on 1 GPU",
                 "min_gpus": "GPUs needed (smallest valid TP degree)",
                 "kv_share_per_gpu": "KV cache share per GPU on GPUs needed (fraction)",
                 "per_gpu_bytes": "per GPU on GPUs needed (bytes)",
                 "max_batch": "largest batch on GPUs needed (sequences)",
                 "decode_tokens_per_s_bound": "decode bound on GPUs needed (tokens/s, all sequences)",
                 "within_max_context": "context within model's max", "model": "model", "gpu": "GPU",
                 "dtype": "dtype", "context": "context (tokens)", "batch": "batch (sequences)"}
    assert set(header_of) == set(ROW_KEYS)
    csv_rows = list(csv.DictReader(io.StringIO(render_text(plan, rows, "csv"))))
    data = json.loads(render_text(plan, rows, "json"))
    assert data["assumptions"]["overhead_bytes"] == 512 * 2**20 and len(data["rows"]) == len(csv_rows) == 48
    for i, (c_row, j_row) in enumerate(zip(csv_rows, data["rows"]), start=2):
        for key, header in header_of.items():
            cell = values[("Plan", f"{col[header]}{i}")]
            want = None if cell in ("", "none") else cell
            assert same(j_row[key], want), (i, key, j_row[key], cell)
            text = c_row[key]
            parsed = {"True": True, "False": False, "": None}.get(text, text)
            if isinstance(want, (int, float)) and not isinstance(want, bool):
                parsed = float(text)
                assert isinstance(j_row[key], int) or key in ("kv_share_per_gpu", "decode_tokens_per_s_bound")
            assert same(parsed, want), (i, key, text, cell)


def test_existing_file_needs_force_and_failures_leave_nothing(small_plan, tmp_path, monkeypatch):
    plan, rows, _ = small_plan
    out = tmp_path / "plan.xlsx"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="exists; pass --force"):
        write_plan(plan, rows, out, "xlsx")
    assert out.read_bytes() == b"keep me"

    def broken(plan, rows, fh, command=None):
        fh.write(b"PK half a zip")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(plan_xlsx, "write_xlsx", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_plan(plan, rows, out, "xlsx", force=True)
    assert out.read_bytes() == b"keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["plan.xlsx"]
    monkeypatch.undo()
    write_plan(plan, rows, out, "xlsx", force=True)
    assert zipfile.is_zipfile(out) and sorted(p.name for p in tmp_path.iterdir()) == ["plan.xlsx"]


def test_unwritable_destinations(small_plan, tmp_path):
    plan, rows, _ = small_plan
    (tmp_path / "a_file").write_text("x")
    for target, pattern in ((tmp_path / "missing" / "p.csv", "does not exist"),
                            (tmp_path / "a_file" / "p.csv", "is not a folder"),
                            (tmp_path, "is a folder")):
        with pytest.raises(InputError, match=pattern):
            write_plan(plan, rows, target, "csv", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_permission_denied_is_a_one_line_error(small_plan, tmp_path, monkeypatch):
    """What a read-only folder does for a non-root user (CI runs as root, where chmod can't show it)."""
    import errno
    import os
    import tempfile

    plan, rows, _ = small_plan

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    # patched on the modules themselves: whichever module does the writing (export, fsutil) fails
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(InputError, match=r"^cannot write .*plan\.json: Permission denied$"):
        write_plan(plan, rows, tmp_path / "plan.json", "json")
    monkeypatch.undo()
    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(InputError, match=r"^cannot write .*plan\.json: Permission denied$"):
        write_plan(plan, rows, tmp_path / "plan.json", "json")
    assert list(tmp_path.iterdir()) == []  # the temporary file went too
