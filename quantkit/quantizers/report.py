"""What a quantization did: per-layer error statistics and byte totals (``quant_report.json``).

Per layer (W = original weight in fp32, Ŵ = the dequantized int8 weight the forward uses):
  relative error  ||W - Ŵ||_F / ||W||_F
  SQNR            20 log10(||W||_F / ||W - Ŵ||_F) dB  (null when Ŵ == W exactly)
  max abs error   max |W - Ŵ|
  scale min/max   over the layer's per-channel / per-group scales
Totals: tensor bytes of the model's state dict before (float, in the dtype it was loaded in) and
after (exactly the tensors a checkpoint holds; tied tensors once), the estimator's figure for the
same config (``quantkit.calculators.weights.quantized_checkpoint_bytes``) and the time taken.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

REPORT_VERSION = 1


@dataclass(frozen=True)
class LayerReport:
    name: str
    shape: tuple[int, int]  # (out_features, in_features)
    scale_min: float
    scale_max: float
    rel_error: float
    sqnr_db: float | None
    max_abs_error: float
    experts: int = 1  # > 1: a fused MoE experts tensor; shape is one expert's, errors over all


def layer_report(name: str, w, w_hat, scale) -> LayerReport:
    """Statistics of one layer from fp32 tensors ``w`` and ``w_hat`` (out, in) and its scales.

    ``w_hat`` is overwritten (it becomes ``w_hat - w``): pass a temporary.
    """
    norm_w = float(w.norm())
    diff = w_hat.sub_(w)  # in place: w_hat is a temporary, one fp32 copy of the layer fewer
    norm_d = float(diff.norm())
    rel = norm_d / norm_w if norm_w > 0 else 0.0
    sqnr = None if norm_d == 0 or norm_w == 0 else 20.0 * math.log10(norm_w / norm_d)
    return LayerReport(
        name=name,
        shape=(int(w.shape[0]), int(w.shape[1])),
        scale_min=float(scale.min()),
        scale_max=float(scale.max()),
        rel_error=rel,
        sqnr_db=sqnr,
        max_abs_error=float(diff.abs().max()) if diff.numel() else 0.0,
    )


def stats_report(name: str, shape, scale, sum_w2: float, sum_d2: float, max_err: float,
                 experts: int = 1) -> LayerReport:
    """``LayerReport`` from running sums (``int8.quantize_weight_stats``): Σ w², Σ (ŵ − w)² and
    max |ŵ − w| over the layer (over every expert of a fused MoE tensor: the Frobenius norms add)."""
    rel = math.sqrt(sum_d2 / sum_w2) if sum_w2 > 0 else 0.0
    sqnr = None if sum_d2 == 0 or sum_w2 == 0 else 10.0 * math.log10(sum_w2 / sum_d2)
    out_f, in_f = shape[-2], shape[-1]
    return LayerReport(name=name, shape=(int(out_f), int(in_f)), scale_min=float(scale.min()),
                       scale_max=float(scale.max()), rel_error=rel, sqnr_db=sqnr,
                       max_abs_error=max_err, experts=int(experts))


@dataclass
class QuantReport:
    """Result of ``quantkit.quantize``; bytes are ints, seconds a float."""

    method: str
    config: dict
    layers: list[LayerReport] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    # None for models without a transformers config or of an architecture the estimator does not
    # cover (``quantkit.spec.is_supported``): the quantization itself does not need it.
    estimated_bytes: int | None = None
    seconds: float = 0.0

    @property
    def worst_layer(self) -> LayerReport | None:
        return max(self.layers, key=lambda r: r.rel_error, default=None)

    def to_dict(self) -> dict:
        worst = self.worst_layer
        return {
            "version": REPORT_VERSION,
            "method": self.method,
            "config": self.config,
            "totals": {
                "quantized_layers": len(self.layers),
                "skipped_layers": len(self.skipped),
                "bytes_before": self.bytes_before,
                "bytes_after": self.bytes_after,
                "estimated_bytes": self.estimated_bytes,
                "compression": self.bytes_before / self.bytes_after if self.bytes_after else None,
                "max_rel_error": worst.rel_error if worst else None,
                "max_rel_error_layer": worst.name if worst else None,
                "seconds": self.seconds,
            },
            "skipped": list(self.skipped),
            "layers": [{**asdict(r), "shape": list(r.shape)} for r in self.layers],
        }


def render(report: QuantReport, max_rows: int | None = None) -> str:
    """Plain-text summary: per-layer table, then totals (GB = 1e9 bytes, GiB = 2**30 bytes)."""
    from tabulate import tabulate

    layers = report.layers if max_rows is None else report.layers[:max_rows]
    rows = [
        [r.name, (f"{r.experts}x" if r.experts > 1 else "") + f"{r.shape[0]}x{r.shape[1]}",
         f"{r.scale_min:.3g}", f"{r.scale_max:.3g}",
         f"{100 * r.rel_error:.3f}", "exact" if r.sqnr_db is None else f"{r.sqnr_db:.1f}",
         f"{r.max_abs_error:.3g}"]
        for r in layers
    ]
    table = tabulate(rows, headers=["layer", "[experts x] out x in", "scale min", "scale max", "rel err %",
                                    "SQNR dB", "max |err|"], disable_numparse=True)
    lines = [table]
    if max_rows is not None and len(report.layers) > max_rows:
        lines.append(f"... {len(report.layers) - max_rows} more layers in quant_report.json")
    worst = report.worst_layer
    est = ("n/a (no transformers config, or an architecture quantkit estimate does not cover)"
           if report.estimated_bytes is None else _bytes(report.estimated_bytes))
    totals = [
        ["method", report.method],
        ["layers quantized / skipped", f"{len(report.layers)} / {len(report.skipped)}"],
        ["skip patterns", _skip_patterns(report.config.get("skip"))],
        ["skipped", ", ".join(report.skipped) or "-"],
        ["bytes before", _bytes(report.bytes_before)],
        ["bytes after", _bytes(report.bytes_after)],
        ["estimated bytes after", est],
        ["worst layer", f"{worst.name} ({100 * worst.rel_error:.3f}% rel err)" if worst else "-"],
        ["time", f"{report.seconds:.2f} s"],
    ]
    lines.append(tabulate(totals, tablefmt="plain", disable_numparse=True))
    return "\n".join(lines)


def _skip_patterns(skip) -> str:
    from quantkit.selection import DEFAULT_SKIP

    if skip is None:
        return "-"
    given = ", ".join(skip) or "none"
    if tuple(skip) == DEFAULT_SKIP:
        return f"{given} (the default)"
    return f"{given} (replaces the default: {', '.join(DEFAULT_SKIP)})"


def _bytes(n: int) -> str:
    return f"{n:,} B ({n / 1e9:.4f} GB, {n / 2**30:.4f} GiB)"


def estimated_checkpoint_bytes(hf_config: dict, config, base_bytes: int, extra_skip: tuple = ()) -> int | None:
    """The estimator's bytes for this model and config (the number ``quantkit estimate`` shows),
    None for an architecture it does not cover (``quantkit.spec.is_supported``).
    ``extra_skip``: modules the method leaves unquantized besides ``config.skip``."""
    from quantkit.calculators.weights import quantized_checkpoint_bytes
    from quantkit.spec import ModelSpec, is_supported

    if not is_supported(hf_config) or "text_config" in hf_config:
        return None  # (a multimodal wrapper: the estimate counts its language model only)
    spec = ModelSpec.from_hf_config(hf_config)
    return quantized_checkpoint_bytes(spec, bits=config.bits, group_size=config.group_size,
                                      skip=tuple(config.skip) + tuple(extra_skip), scale_bytes=config.scale_bytes,
                                      base_bytes=base_bytes, meta_bytes=config.meta_bytes)
