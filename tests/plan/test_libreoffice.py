"""Recalculate plan workbooks with LibreOffice headless and compare every formula cell with quantkit.

One soffice call recalculates all the workbooks below (start-up is most of its cost):
  small / options  every formula cell = quantkit's Python result within 1e-9 relative
  planted          a wrong cached value (999) is replaced by the recalculation -- while without
                   recalculation LibreOffice keeps it, and the comparison reports it
  wrong formula    a formula changed on purpose is reported: the comparison can fail
  edited           a GPU's memory edited in the file: fits / GPUs needed follow as estimate says
and, marked slow, the 2,160-row benchmark plan in a call of its own.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import replace
from pathlib import Path

import openpyxl
import pytest

from quantkit.calculators.estimate import estimate
from quantkit.catalogue import find_model_card, get_gpu
from quantkit.plan.sheetxml import sheet_paths
from quantkit.spec import ModelSpec
from tests.plan.conftest import OPTIONS_ASSUME, make
from tests.plan.expected import Assume, cell_values, formula_cells, mismatches
from tests.plan.libreoffice import SKIP_REASON, SOFFICE, convert

pytestmark = pytest.mark.skipif(SOFFICE is None, reason=SKIP_REASON)

BIG = {"models": "llama2-7b,llama2-13b,llama2-70b,llama3.1-8b,llama3.1-70b,mistral-7b,mixtral-8x7b,"
                 "qwen2.5-7b,qwen2.5-72b,gemma2-27b",
       "gpus": "h100-sxm,h200,a100-80gb,a100-40gb,l40s,l4,mi300x,rtx4090", "dtypes": "bf16,int8,int4",
       "contexts": "4096,32768,131072", "batches": "1,8,32"}
H100_EDITED = 24 * 10**9  # bytes: the H100's memory cut to 24 GB in the file


def edit_part(src: Path, dst: Path, sheet: str, edit) -> None:
    """Copy a workbook, passing one sheet's XML through ``edit(bytes) -> bytes``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        part = sheet_paths(zin)[sheet]
        for item in zin.infolist():
            body = zin.read(item.filename)
            zout.writestr(item, edit(body) if item.filename == part else body)


def sub_once(pattern: bytes, repl: bytes):
    def edit(body: bytes) -> bytes:
        out, n = re.subn(pattern, repl, body)
        assert n == 1, pattern
        return out
    return edit


@pytest.fixture(scope="module")
def lo(small_plan, options_plan, plans_dir, tmp_path_factory):
    """Build the variants, then recalculate all of them in one soffice call."""
    small = small_plan[2]
    work = tmp_path_factory.mktemp("libreoffice")
    planted = work / "planted.xlsx"
    edit_part(small, planted, "Plan", sub_once(rb'(<c r="K3"[^>]*><f>[^<]*</f><v>)[^<]*(</v>)', rb"\g<1>999\g<2>"))
    wrong = work / "wrong_formula.xlsx"
    edit_part(small, wrong, "Plan", sub_once(rb"<f>F5\+G5\+H5\+I5\+J5</f>", rb"<f>(F5+G5+H5+I5+J5)*1.01</f>"))
    edited = work / "edited.xlsx"
    row = [c.value for c in openpyxl.load_workbook(small)["GPUs"]["A"]].index("h100-sxm") + 1
    edit_part(small, edited, "GPUs", sub_once(rb'(<c r="C%d"[^>]*><v>)[0-9]+(</v>)' % row,
                                              rb"\g<1>%d\g<2>" % H100_EDITED))
    inputs = {"small": small, "options": options_plan[2], "planted": planted, "wrong": wrong,
              "edited": edited}
    done = dict(zip(inputs, convert(list(inputs.values()), work)))
    [kept] = convert([planted], work, recalculate=False)
    return inputs, done, kept


def test_recalculated_workbook_equals_quantkit(lo):
    inputs, done, _ = lo
    assert len(formula_cells(inputs["small"])) > 900
    assert mismatches(inputs["small"], done["small"], Assume()) == []
    assert mismatches(inputs["options"], done["options"], OPTIONS_ASSUME) == []


def test_planted_cached_value_is_recalculated_not_trusted(lo):
    inputs, done, kept = lo
    assert cell_values(inputs["planted"])[("Plan", "K3")] == 999
    # without recalculation LibreOffice shows the cache, and the comparison catches it ...
    report = mismatches(inputs["planted"], kept, Assume())
    assert len(report) == 1 and report[0].startswith("Plan!K3: got 999, quantkit says ")
    # ... with recalculation the formula's own value replaces it
    assert mismatches(inputs["planted"], done["planted"], Assume()) == []


def test_a_wrong_formula_is_caught(lo):
    inputs, done, _ = lo
    report = mismatches(inputs["wrong"], done["wrong"], Assume())
    assert any(r.startswith("Plan!K5: ") for r in report), report
    assert all(re.match(r"Plan![A-Z]+5: ", r) for r in report), report  # only that row is affected


def test_editing_a_gpus_memory_moves_fits_and_gpus_needed(lo):
    inputs, done, _ = lo
    edited = Assume(gpu_memory={"h100-sxm": H100_EDITED})
    assert mismatches(inputs["edited"], done["edited"], edited) == []
    before, after = cell_values(done["small"]), cell_values(done["edited"])
    ws = openpyxl.load_workbook(inputs["small"])["Plan"]
    small_h100 = replace(get_gpu("h100"), memory_bytes=H100_EDITED)
    changed = 0
    for r in range(2, ws.max_row + 1):
        model, gpu, dtype, context, batch = (ws[f"{c}{r}"].value for c in "ABCDE")
        was, now = (before[("Plan", f"N{r}")], before[("Plan", f"O{r}")]), (after[("Plan", f"N{r}")], after[("Plan", f"O{r}")])
        if gpu != "h100-sxm":
            assert was == now  # the A100 rows do not move
            continue
        spec = ModelSpec.from_hf_config(find_model_card(model).data, name=model)
        e = estimate(spec, dtype=dtype, context=context, batch=batch, gpu=small_h100)
        assert now == (e.fits, e.min_gpus or "none"), (r, now, e.fits, e.min_gpus)
        changed += was != now
    assert changed >= 4  # e.g. llama2-70b int4 fit on one 85 GB H100, not on a 24 GB one


@pytest.mark.slow
def test_big_plan_recalculates_to_quantkits_numbers(plans_dir, tmp_path):
    """The 2,160-row benchmark plan: ~40,000 formula cells (about 10 s, most of it the comparison)."""
    big = make(BIG, plans_dir, "big")[2]
    [done] = convert([big], tmp_path)
    assert openpyxl.load_workbook(big, read_only=True)["Plan"].max_row == 2161
    assert mismatches(big, done, Assume()) == []
