"""Tables for a ``run_eval`` report (the JSON form is the report itself)."""

from __future__ import annotations

from typing import Any

from quantkit.export.render import Column, render_table

QUALITY = [
    Column("variant", "variant"), Column("description", "weights"),
    Column("compute_dtype", "compute"), Column("weights_bytes", "weights", "bytes"),
    Column("ppl", "perplexity"), Column("nll_str", "NLL (nats/token)"),
    Column("tokens", "tokens scored", "int"), Column("kl_vs_base", "KL(base||v) nats", "float"),
    Column("top1_pct", "top-1 agree %", "float"),
]
SPEED = [
    Column("variant", "variant"), Column("batch", "batch", "int"),
    Column("prefill_tokens_per_s", "prefill tok/s", "float"), Column("ttft_ms", "TTFT ms", "float"),
    Column("decode_tokens_per_s", "decode tok/s", "float"),
    Column("decode_bound_tokens_per_s", "bound tok/s", "float"),
    Column("fraction_pct", "% of bound", "float"),
    Column("achieved_bandwidth_bytes_per_s", "achieved", "bytes/s"),
    Column("sdpa", "SDPA prefill/decode"), Column("error", "error"),
]
MEMORY = [
    Column("variant", "variant"), Column("batch", "batch", "int"),
    Column("peak_allocated_bytes", "peak allocated", "bytes"),
    Column("peak_reserved_bytes", "peak reserved", "bytes"),
    Column("device_used_bytes", "device used", "bytes"),
    Column("estimated_bytes", "estimate", "bytes"),
    Column("memory_error_pct", "estimate error % (vs used)", "float"),
]


def render_report(report: dict[str, Any]) -> str:
    backend = {"runner": "quantkit runner", "transformers": "transformers"}.get(report.get("backend"), "")
    out = [f"{report['model']} on {report['device']} ({report['device_name']})"
           + (f", {backend}" if backend else "")]
    p = report.get("protocol")
    if p is not None:
        stride = "non-overlapping" if p["stride"] is None else f"strided, stride {p['stride']}"
        out.append(f"perplexity: {p['text']}, {p['tokens']:,} tokens ({'BOS first, ' if p['bos'] else ''}"
                   f"{p['windows']} window{'s' if p['windows'] != 1 else ''} of ctx {p['ctx']}, {stride}, {p['predictions']:,} "
                   f"predictions); base for KL/top-1: {report['base'] or 'none'}")
    rows = []
    for r in report["results"]:
        top1 = r.get("top1_agreement")
        rows.append({**r, "top1_pct": None if top1 is None else 100 * top1,
                     "ppl": _fixed(r.get("perplexity"), 4), "nll_str": _fixed(r.get("nll"), 5)})
    out.append(render_table(rows, QUALITY))
    speed = report.get("speed")
    if speed is not None:
        if speed.get("skipped"):
            out.append(f"speed: skipped ({speed['skipped']})")
        else:
            out.append(f"speed: prompt {speed['prompt_len']} + {speed['new_tokens']} new tokens, "
                       f"decode via {speed['graphs']}, roofline for {speed['gpu'] or 'no GPU card'}")
            per_batch = [{"variant": r["variant"], **s,
                          "fraction_pct": None if s.get("fraction_of_bound") is None
                          else 100 * s["fraction_of_bound"],
                          "sdpa": " / ".join(",".join(s["sdpa_backends"].get(k, [])) or "-"
                                             for k in ("prefill", "decode"))}
                         for r in report["results"] for s in r.get("speed_by_batch", [])]
            out.append(render_table(per_batch, SPEED))
            out.append(render_table(per_batch, MEMORY))
    return "\n\n".join(out)


def _fixed(value, digits: int) -> str | None:
    return None if value is None else f"{value:.{digits}f}"
