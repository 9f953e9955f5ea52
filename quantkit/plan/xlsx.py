"""Write the plan workbook: live formulas (``formulas.py``) plus their cached values.

openpyxl lays out the sheets, styles, conditional formats, defined names and the chart;
``sheetxml.finish`` then puts quantkit's Python result into every formula cell's cached value (so
readers that do not recalculate -- LibreOffice's default for .xlsx, pandas, viewers -- see the
numbers) and writes the Plan rows. The workbook keeps openpyxl's ``fullCalcOnLoad`` so that Excel
recalculates on open.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import IO, Any

from openpyxl import Workbook
from openpyxl.chart import BarChart, Reference
from openpyxl.chart.data_source import AxDataSource, StrRef
from openpyxl.formatting.rule import CellIsRule
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.workbook.defined_name import DefinedName
from openpyxl.worksheet.formula import ArrayFormula

from quantkit.boundary.text import xlsx_text
from quantkit.calculators.fit import MAX_BATCH
from quantkit.calculators.kv_cache import layer_bytes_per_token
from quantkit.calculators.params import count_params
from quantkit.calculators.roofline import all_routed_bytes
from quantkit.calculators.weights import checkpoint_bytes
from quantkit.catalogue import GpuSpec
from quantkit.plan import formulas as F
from quantkit.plan.definition import Plan
from quantkit.plan.rows import ModelData, model_data, weight_data
from quantkit.plan.sheetxml import finish

_HEAD_FONT = Font(bold=True)
_HEAD_FILL = PatternFill("solid", fgColor="DDEBF7")
_HEAD_ALIGN = Alignment(wrap_text=True, vertical="top")
_GREEN = PatternFill("solid", fgColor="C6EFCE")
_RED = PatternFill("solid", fgColor="FFC7CE")
_AMBER = PatternFill("solid", fgColor="FFEB9C")


def _text(ws, r: int, c: int, value):
    """A data cell: a string is written as text (a leading '=' is not a formula) without the
    control characters XML forbids (``quantkit.boundary.text.xlsx_text``); numbers as numbers."""
    if not isinstance(value, str):
        return ws.cell(r, c, value)
    cell = ws.cell(r, c)
    cell.value = xlsx_text(value)
    cell.data_type = "s"  # openpyxl would read "=..." as a formula
    return cell


def _header(ws, cols) -> None:
    for i, col in enumerate(cols, start=1):
        cell = ws.cell(1, i, col.header)
        cell.font, cell.fill, cell.alignment = _HEAD_FONT, _HEAD_FILL, _HEAD_ALIGN
        ws.column_dimensions[cell.column_letter].width = col.width
    ws.row_dimensions[1].height = 60


def _table(ws, cols, records: list[dict], cache: dict[str, Any]) -> None:
    """Write ``records`` under a header; formula columns get their template, data columns the value.

    ``records[i][key]`` is the data value, or for a formula column the Python result to cache.
    """
    _header(ws, cols)
    # (column number, letter, key, template, array, number format); ws.cell, never ws[row]:
    # openpyxl rescans every cell for ws[row], which is quadratic in the sheet size
    spec = [(i, ws.cell(1, i).column_letter, c.key, c.formula, c.array, c.fmt)
            for i, c in enumerate(cols, start=1)]
    for r, rec in enumerate(records, start=2):
        for i, letter, key, tpl, array, fmt in spec:
            if tpl is None:
                cell = _text(ws, r, i, rec[key])
            else:
                ref = f"{letter}{r}"
                text = tpl.replace("{r}", str(r))
                cell = ws.cell(r, i, ArrayFormula(ref, text) if array else text)
                cache[ref] = rec[key]
            if fmt != "General":
                cell.number_format = fmt


def _inputs_sheet(ws, plan: Plan, command: str | None) -> None:
    from quantkit import __version__

    a = plan.assumptions
    values = {
        "gpu_util": a.gpu_util, "overhead_bytes": a.overhead_bytes, "kv_bytes": a.kv_bytes,
        "block_size": a.block_size or 0, "prefill_chunk": a.prefill_chunk, "act_bytes": F.ACT_BYTES,
        "logits_bytes": F.LOGITS_BYTES_PER_VALUE, "scale_bytes": F.SCALE_BYTES,
        "base_bytes": F.BASE_BYTES, "max_batch_cap": MAX_BATCH,
    }
    heads = ("input (defined name)", "value", "unit", "meaning", "label")
    for i, h in enumerate(heads, start=1):
        c = ws.cell(1, i, h)
        c.font, c.fill = _HEAD_FONT, _HEAD_FILL
    for r, item in enumerate(F.INPUTS, start=F.INPUT_FIRST_ROW):
        ws.cell(r, 1, item.name)
        ws.cell(r, 2, values[item.name]).number_format = item.fmt
        ws.cell(r, 3, item.unit)
        ws.cell(r, 4, item.note)
        ws.cell(r, 5, item.label)
    for i, h in enumerate(("dtype", "bits per weight", "quantized layout (1 = scales + kept params)"), 1):
        c = ws.cell(F.DTYPE_HEADER_ROW, i, h)
        c.font, c.fill = _HEAD_FONT, _HEAD_FILL
    for r, row in enumerate(F.dtype_table(), start=F.DTYPE_FIRST_ROW):
        for i, v in enumerate(row, start=1):
            ws.cell(r, i, v)
    r = F.DTYPE_FIRST_ROW + len(F.DTYPES) + 1
    group = "dtype default (int8/fp8 per output channel, int4 128)" if a.group_size is None else a.group_size
    about = [
        ("plan", plan.name), ("description", plan.description),
        ("generated by", f"quantkit {__version__}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"),
        ("command", command or ""), ("KV dtype", a.kv_dtype),
        ("quantization group size", str(group)), ("kept at base precision", ", ".join(a.skip) or "none"),
        ("units", "bytes are raw bytes; GB = 10^9 bytes; GiB (2^30) is not used"),
        ("edit", "change any value in column B, a GPU's memory or a plan row's context/batch: "
                 "the Plan sheet follows (Weights counts were computed for the group size above)"),
    ]
    for k, v in about:
        ws.cell(r, 1, k).font = _HEAD_FONT
        _text(ws, r, 2, v)
        r += 1
    for letter, width in zip("ABCDE", (22, 16, 20, 70, 28)):
        ws.column_dimensions[letter].width = width
    ws.freeze_panes = "A2"


def _models_records(datas: list[ModelData]) -> list[dict]:
    out = []
    for d in datas:
        s = d.spec
        rec = {
            "name": s.name, "hf_id": d.hf_id, "model_type": s.model_type, "attention": s.attention_kind,
            "layers": s.num_layers, "full_layers": s.num_layers - s.num_sliding_layers,
            "sliding_layers": s.num_sliding_layers,
            "window": s.sliding_window if s.num_sliding_layers else 0, "hidden": s.hidden_size,
            "heads": s.num_heads, "kv_heads": s.num_kv_heads, "head_dim": s.head_dim,
            "kv_lora_rank": s.kv_lora_rank if s.mla else 0, "rope_dim": s.qk_rope_head_dim if s.mla else 0,
            "vocab": s.vocab_size, "max_context": s.max_context, "total_params": d.total_params,
            "active_params": d.active_params, "kv_values": layer_bytes_per_token(s, 1),
            "mlp_width": d.mlp_act_width, "attn_width": d.attn_act_width,
        }
        out.append(rec)
    return out


def _gpu_records(gpus: tuple[GpuSpec, ...]) -> list[dict]:
    return [{"name": g.name, "display_name": g.display_name, "memory_bytes": g.memory_bytes,
             "bandwidth": g.memory_bandwidth_bytes_per_s, "flops": g.bf16_dense_flops,
             "memory_gb": g.memory_bytes / F.GB, "source": g.source} for g in gpus]


def _weight_records(plan: Plan) -> list[dict]:
    from quantkit.calculators.weights import QUANTIZED

    a = plan.assumptions
    out = []
    for spec in plan.models:
        for dtype in plan.dtypes:
            w = weight_data(spec, dtype, a.group_size, a.skip)
            # plans name their dtypes, so estimate() uses bf16 scales (not a checkpoint's own)
            cb = checkpoint_bytes(spec, dtype, w.group_size, a.skip, F.SCALE_BYTES)
            routed = w.routed_bytes(F.DTYPE_BITS[dtype], F.SCALE_BYTES, F.BASE_BYTES)
            out.append({
                "key": f"{spec.name}|{dtype}", "model": spec.name, "dtype": dtype, "group_size": w.group_size,
                "quantized_params": w.quantized_params, "scales": w.scales, "kept_params": w.kept_params,
                "routed_quantized_params": w.routed_quantized_params, "routed_scales": w.routed_scales,
                "routed_kept_params": w.routed_kept_params, "routed_bias_params": w.routed_bias_params,
                "total_params": w.total_params, "active_params": w.active_params, "experts": w.experts,
                "experts_per_token": w.experts_per_token, "bits": F.DTYPE_BITS[dtype],
                "quantized": int(dtype in QUANTIZED), "routed_bytes": routed,
                "weights_bytes": cb.total, "active_weights_bytes": cb.active,
                "routed_params": count_params(spec).experts,
                "routed_read_bytes": all_routed_bytes(spec, dtype, w.group_size, a.skip, F.SCALE_BYTES),
                "fp32_params": w.fp32_params, "fp32_buffers": w.fp32_buffers,
            })
    return out


def _plan_records(rows: list[dict], plan: Plan) -> list[dict]:
    model_row = {s.name: i for i, s in enumerate(plan.models, start=2)}
    gpu_row = {g.name: i for i, g in enumerate(plan.gpus, start=2)}
    weight_row = {(s.name, d): 2 + i * len(plan.dtypes) + j
                  for i, s in enumerate(plan.models) for j, d in enumerate(plan.dtypes)}
    out = []
    for row in rows:
        rec = {k: ("" if v is None else v) for k, v in row.items()}
        if row["min_gpus"] is None:
            rec["min_gpus"] = "none"
        rec["total_gb"] = row["total_bytes"] / F.GB
        rec["models_row"] = model_row[row["model"]]
        rec["gpus_row"] = gpu_row[row["gpu"]]
        rec["weights_row"] = weight_row[(row["model"], row["dtype"])]
        out.append(rec)
    return out


def _plan_sheet(ws, cols, records, cache) -> None:
    """Header, one template row (``sheetxml.finish`` writes all rows), panes, filter, formats."""
    _table(ws, cols, records[:1], cache)
    last = len(records) + 1
    letters = {c.key: ws.cell(1, i).column_letter for i, c in enumerate(cols, start=1)}
    ws.freeze_panes = "F2"
    ws.auto_filter.ref = f"A1:{letters[cols[-1].key]}{last}"
    if not records:
        return
    fits = f"{letters['fits']}2:{letters['fits']}{last}"
    ws.conditional_formatting.add(fits, CellIsRule(operator="equal", formula=["TRUE"], fill=_GREEN))
    ws.conditional_formatting.add(fits, CellIsRule(operator="equal", formula=["FALSE"], fill=_RED))
    need = f"{letters['min_gpus']}2:{letters['min_gpus']}{last}"
    ws.conditional_formatting.add(need, CellIsRule(operator="equal", formula=['"none"'], fill=_RED))
    within = f"{letters['within_max_context']}2:{letters['within_max_context']}{last}"
    ws.conditional_formatting.add(within, CellIsRule(operator="equal", formula=["FALSE"], fill=_AMBER))


def _chart_sheet(ws, plan: Plan, rows: list[dict], cache: dict[str, Any]) -> None:
    """Memory by component for each model and dtype at the plan's largest context and batch."""
    ci = max(range(len(plan.contexts)), key=lambda i: plan.contexts[i])
    bi = max(range(len(plan.batches)), key=lambda i: plan.batches[i])
    ng, nd, nc, nb = len(plan.gpus), len(plan.dtypes), len(plan.contexts), len(plan.batches)
    ws.cell(1, 1, f"Memory by component on one GPU (GB = 10^9 bytes) at context "
                  f"{plan.contexts[ci]:,} tokens, batch {plan.batches[bi]} (formulas over the Plan sheet)"
            ).font = _HEAD_FONT
    heads = ["model / dtype", *[h for _, h, _ in F.CHART_COLS]]
    for i, h in enumerate(heads, start=1):
        c = ws.cell(2, i, h)
        c.font, c.fill, c.alignment = _HEAD_FONT, _HEAD_FILL, _HEAD_ALIGN
    ws.column_dimensions["A"].width = 24
    r = 3
    for mi, spec in enumerate(plan.models):
        for di, dtype in enumerate(plan.dtypes):
            idx = (((mi * ng + 0) * nd + di) * nc + ci) * nb + bi
            row, plan_row = rows[idx], idx + 2
            _text(ws, r, 1, f"{spec.name} {dtype}")
            for j, (key, _, letter) in enumerate(F.CHART_COLS, start=2):
                cell = ws.cell(r, j, f"=Plan!{letter}{plan_row}/10^9")
                cell.number_format = "0.00"
                cache[cell.coordinate] = row[key] / F.GB
            r += 1
    if r == 3:
        return
    chart = BarChart()
    chart.type, chart.grouping, chart.overlap = "col", "stacked", 100
    chart.title = "Memory by component, one GPU"
    chart.y_axis.title = "GB (10^9 bytes)"
    chart.x_axis.delete = chart.y_axis.delete = False
    chart.add_data(Reference(ws, min_col=2, max_col=1 + len(F.CHART_COLS), min_row=2, max_row=r - 1),
                   titles_from_data=True)
    labels = AxDataSource(strRef=StrRef(f=f"'Chart'!$A$3:$A${r - 1}"))  # text labels: strRef, not numRef
    for series in chart.series:
        series.cat = labels
    chart.width, chart.height = max(16.0, 1.2 * (r - 3)), 10.0
    ws.add_chart(chart, "H2")


def write_xlsx(plan: Plan, rows: list[dict], out: IO[bytes], command: str | None = None) -> None:
    """Write the workbook for ``plan`` and its ``rows`` (from ``build_rows``) to a binary file."""
    datas = [model_data(s) for s in plan.models]
    num_tp = max(len(d.tp_degrees) for d in datas)
    plan_cols = F.plan_cols(num_tp)
    F.check_plan_letters(plan_cols)
    wb = Workbook()
    ws_plan = wb.active
    ws_plan.title = "Plan"
    sheets = {name: wb.create_sheet(name) for name in ("Chart", "Inputs", "Models", "GPUs", "Weights")}
    cache: dict[str, dict[str, Any]] = {name: {} for name in ("Plan", *sheets)}
    _inputs_sheet(sheets["Inputs"], plan, command)
    ws_m = sheets["Models"]
    _table(ws_m, F.MODEL_COLS, _models_records(datas), cache["Models"])
    for r, d in enumerate(datas, start=2):
        # pad with the last degree: a repeat never changes the smallest that fits
        padded = list(d.tp_degrees) + [d.tp_degrees[-1]] * (num_tp - len(d.tp_degrees))
        for j, n in enumerate(padded):
            ws_m.cell(r, F.TP_FIRST_COL + j, n)
    for j in range(num_tp):
        c = ws_m.cell(1, F.TP_FIRST_COL + j, f"valid TP degree {j + 1} (GPUs)")
        c.font, c.fill, c.alignment = _HEAD_FONT, _HEAD_FILL, _HEAD_ALIGN
    ws_m.freeze_panes = "B2"
    _table(sheets["GPUs"], F.GPU_COLS, _gpu_records(plan.gpus), cache["GPUs"])
    sheets["GPUs"].freeze_panes = "B2"
    _table(sheets["Weights"], F.WEIGHT_COLS, _weight_records(plan), cache["Weights"])
    sheets["Weights"].freeze_panes = "D2"
    records = _plan_records(rows, plan)
    _plan_sheet(ws_plan, plan_cols, records, cache.pop("Plan"))
    _chart_sheet(sheets["Chart"], plan, rows, cache["Chart"])
    for name, ref in F.defined_names().items():
        wb.defined_names[name] = DefinedName(name, attr_text=ref)
    buf = io.BytesIO()
    wb.save(buf)
    finish(buf.getvalue(), cache, out, expand=("Plan", plan_cols, records))
