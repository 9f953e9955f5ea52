"""quantkit's own Python result for every formula cell of a plan workbook.

Independent of the workbook writer: the Plan rows' keys (model, GPU, dtype, context, batch) are
read from the sheet and each row is recomputed with ``quantkit.calculators.estimate`` (on one GPU,
and on ``min_gpus`` GPUs for the columns measured there), ``weights.checkpoint_bytes``,
``kv_cache.layer_bytes_per_token`` and ``memory.kv_heads_per_gpu``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.worksheet.formula import ArrayFormula

from quantkit.calculators.activations import DEFAULT_PREFILL_CHUNK
from quantkit.calculators.estimate import estimate
from quantkit.calculators.kv_cache import layer_bytes_per_token
from quantkit.calculators.memory import kv_heads_per_gpu
from quantkit.calculators.params import count_params
from quantkit.calculators.weights import DEFAULT_GROUP, DTYPE_BITS, QUANTIZED, routed_bytes, checkpoint_bytes
from quantkit.catalogue import find_model_card, get_gpu
from quantkit.selection import DEFAULT_SKIP
from quantkit.spec import ModelSpec

REL_TOL = 1e-9


@dataclass
class Assume:
    kv_dtype: str = "bf16"
    block_size: int | None = None
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK
    group_size: int | None = None
    overhead_bytes: int = 512 * 2**20
    gpu_util: float = 1.0
    skip: tuple = DEFAULT_SKIP
    gpu_memory: dict = field(default_factory=dict)  # GPU name -> edited memory_bytes


def _spec(name: str) -> ModelSpec:
    card = find_model_card(name)
    return ModelSpec.from_hf_config(card.data, name=card.name)


def formula_cells(path: Path) -> dict[tuple[str, str], str]:
    """(sheet, cell) -> formula text for every formula cell of the workbook."""
    wb = openpyxl.load_workbook(path)
    out = {}
    for ws in wb.worksheets:
        for row in ws.iter_rows():
            for c in row:
                v = c.value
                if isinstance(v, ArrayFormula):
                    out[(ws.title, c.coordinate)] = v.text
                elif isinstance(v, str) and v.startswith("="):
                    out[(ws.title, c.coordinate)] = v
    return out


def cell_values(path: Path) -> dict[tuple[str, str], Any]:
    """(sheet, cell) -> the value stored (a formula cell's cached or recalculated value)."""
    wb = openpyxl.load_workbook(path, data_only=True)
    return {(ws.title, c.coordinate): c.value for ws in wb.worksheets for row in ws.iter_rows() for c in row}


def _headers(ws) -> dict[str, str]:
    return {c.value: c.column_letter for c in ws[1] if c.value}


def expected_values(path: Path, a: Assume) -> dict[tuple[str, str], Any]:
    wb = openpyxl.load_workbook(path)  # formulas, and the data cells as written
    out: dict[tuple[str, str], Any] = {}
    models = [r[0].value for r in wb["Models"].iter_rows(min_row=2) if r[0].value]
    gpus = [r[0].value for r in wb["GPUs"].iter_rows(min_row=2) if r[0].value]
    wkeys = [r[0].value for r in wb["Weights"].iter_rows(min_row=2) if r[0].value]

    def gpu(name):
        g = get_gpu(name)
        return replace(g, memory_bytes=a.gpu_memory[name]) if name in a.gpu_memory else g

    ws = wb["Models"]
    col = _headers(ws)["KV values per token per layer (K and V, or MLA latent)"]
    for i, name in enumerate(models, start=2):
        out[("Models", f"{col}{i}")] = layer_bytes_per_token(_spec(name), 1)
    ws = wb["GPUs"]
    col = _headers(ws)["memory (GB = 10^9 bytes)"]
    for i, name in enumerate(gpus, start=2):
        out[("GPUs", f"{col}{i}")] = gpu(name).memory_bytes / 1e9
    ws = wb["Weights"]
    h = _headers(ws)
    for i, key in enumerate(wkeys, start=2):
        model, dtype = key.split("|")
        s = _spec(model)
        group = a.group_size if a.group_size is not None else DEFAULT_GROUP.get(dtype)
        cb = checkpoint_bytes(s, dtype, group, tuple(a.skip))
        out[("Weights", f"{h['bits per weight']}{i}")] = DTYPE_BITS[dtype]
        out[("Weights", f"{h['quantized layout (1 = yes)']}{i}")] = int(dtype in QUANTIZED)
        out[("Weights", f"{h['routed experts, all (bytes)']}{i}")] = (
            routed_bytes(s, dtype, group, tuple(a.skip), 2, 2) if dtype in QUANTIZED else 0)
        out[("Weights", f"{h['weights (bytes)']}{i}")] = cb.total
        out[("Weights", f"{h['weights read per token at batch 1 (bytes)']}{i}")] = cb.active
        out[("Weights", f"{h['routed experts, all, as decode reads them (bytes)']}{i}")] = (
            routed_bytes(s, dtype, group, tuple(a.skip), 2, 2) if dtype in QUANTIZED
            else count_params(s).experts * DTYPE_BITS[dtype] / 8)
    ws = wb["Plan"]
    h = _headers(ws)
    plan_vals: dict[str, Any] = {}
    for r in range(2, ws.max_row + 1):
        model, gname, dtype, context, batch = (ws[f"{c}{r}"].value for c in "ABCDE")
        s, g = _spec(model), gpu(gname)
        group = a.group_size if dtype in QUANTIZED else None  # estimate() refuses one for bf16
        kw = dict(dtype=dtype, kv_dtype=a.kv_dtype, batch=batch, context=context, gpu=g,
                  block_size=a.block_size, prefill_chunk=a.prefill_chunk, group_size=group,
                  skip=tuple(a.skip), overhead_bytes=a.overhead_bytes, gpu_util=a.gpu_util)
        e1 = estimate(s, search_limits=False, **kw)  # the largest batch is read on n GPUs only
        n = e1.min_gpus
        en = estimate(s, num_gpus=n, **kw) if n else None
        row = {
            "weights (bytes)": e1.weights_bytes, "KV cache (bytes)": e1.kv_cache_bytes,
            "activations (bytes)": e1.activation_bytes, "logits (bytes)": e1.logits_bytes,
            "overhead (bytes)": e1.overhead_bytes, "total, 1 GPU (bytes)": e1.total_bytes,
            "total, 1 GPU (GB = 10^9 bytes)": e1.total_bytes / 1e9,
            "usable per GPU (bytes)": e1.usable_bytes_per_gpu, "fits on 1 GPU": e1.fits,
            "GPUs needed (smallest valid TP degree)": n if n else "none",
            "KV cache share per GPU on GPUs needed (fraction)": kv_heads_per_gpu(s, n) if n else None,
            "per GPU on GPUs needed (bytes)": en.per_gpu_bytes if en else None,
            "largest batch on GPUs needed (sequences)": en.max_batch if en else None,
            "decode bound on GPUs needed (tokens/s, all sequences)": en.decode_tokens_per_s_bound if en else None,
            "context within model's max": context <= s.max_context,
            "Models row (lookup)": models.index(model) + 2, "GPUs row (lookup)": gpus.index(gname) + 2,
            "Weights row (lookup)": wkeys.index(f"{model}|{dtype}") + 2,
        }
        for header, value in row.items():
            out[("Plan", f"{h[header]}{r}")] = value
            plan_vals[f"{h[header]}{r}"] = value
    for (sheet, ref), text in formula_cells(path).items():
        if sheet == "Chart":  # =Plan!F12/10^9: the referenced Plan value in GB
            m = re.fullmatch(r"=Plan!([A-Z]+[0-9]+)/10\^9", text)
            assert m, text
            out[(sheet, ref)] = plan_vals[m.group(1)] / 1e9
    return out


def same(got: Any, want: Any) -> bool:
    if want is None or want == "":
        return got in (None, "")
    if isinstance(want, bool) or isinstance(got, bool):
        return got == want and isinstance(got, bool) == isinstance(want, bool)
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(got, want, rel_tol=REL_TOL, abs_tol=0.0) or got == want
    return got == want


def mismatches(path: Path, values_path: Path, a: Assume) -> list[str]:
    """Every formula cell of ``path`` whose value in ``values_path`` differs from quantkit's."""
    formulas = formula_cells(path)
    want = expected_values(path, a)
    unchecked = sorted(set(formulas) - set(want))
    assert not unchecked, f"formula cells without a Python result: {unchecked[:10]}"
    got = cell_values(values_path)
    return [f"{s}!{r}: got {got.get((s, r))!r}, quantkit says {want[(s, r)]!r}"
            for (s, r) in sorted(formulas) if not same(got.get((s, r)), want[(s, r)])]
