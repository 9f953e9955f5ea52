"""Weight-only int8 (method ``int8``): ``Int8Linear`` and the handler that swaps ``nn.Linear`` for it.

Quantization (per output row, or per group of ``group_size`` input columns within a row):
symmetric absmax, ``scale = max|w| / 127``; the scale is cast to its storage dtype FIRST and the
weights are divided by that stored value, so ``weight * weight_scale`` is exactly what was
quantized against; ``q = round(w / scale)`` (round half to even) clamped to [-127, 127] (the
clamp only bites when the cast rounded the scale down by < 1 ulp). A group whose stored scale is 0
(all-zero weights, or an fp16 scale that underflowed) stores q = 0: no division by zero.

Handler interface (shared by every method module, used by ``api`` and ``checkpoint``):
``MODULE_CLASS``, ``quantize_module``, ``export_tensors``, ``checkpoint_config``, and either
``empty_module`` (a meta shell that ``load_state_dict(assign=True)`` fills) or ``load_module``
(build the module from its tensors, for modules whose parameters cannot simply be assigned).
A handler that also quantizes fused MoE experts (transformers 5's 3-D expert tensors, see
``experts.py``) has ``quantize_experts`` and ``empty_experts``; without them they stay unquantized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from quantkit.errors import InputError
from quantkit.kernels import dequantize, int8_linear
from quantkit.quantizers.configs import Int8Config
from quantkit.quantizers.report import LayerReport, stats_report

SCALE_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BIAS_DTYPE = torch.bfloat16  # biases of quantized layers are kept in bf16 (issue #3)
QMAX = 127  # symmetric int8 range [-127, 127]; -128 unused so that q and -q both exist


def n_groups(in_features: int, group_size: int | None) -> int:
    return 1 if group_size is None else math.ceil(in_features / group_size)


def quantize_weight(weight: torch.Tensor, group_size: int | None = None,
                    scale_dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize one (out, in) weight. Returns (q int8 (out, in), scale (out, n_groups) in scale_dtype).

    ``quantize_weight_stats`` without the error statistics (see there)."""
    res = quantize_weight_stats(weight, group_size, scale_dtype, stats=False)
    return res.q, res.scale


@dataclass(frozen=True)
class Quantized:
    """``quantize_weight_stats``'s result. ``finite`` False: the weight holds inf/nan, q is None.
    ``sum_w2``, ``sum_d2``: Σ w² and Σ (ŵ − w)² over the layer (fp32 terms, summed in float64);
    ``max_err``: max |ŵ − w|; all 0.0 when stats were not asked for."""

    q: torch.Tensor | None
    scale: torch.Tensor
    finite: bool
    sum_w2: float = 0.0
    sum_d2: float = 0.0
    max_err: float = 0.0


_CHUNK = 1 << 17  # elements per row chunk: fp32 temporaries of 512 KiB stay in the CPU caches


def quantize_weight_stats(weight: torch.Tensor, group_size: int | None = None,
                          scale_dtype: torch.dtype = torch.bfloat16, stats: bool = True) -> Quantized:
    """Quantize one (out, in) float weight (any float dtype, any device) and, with ``stats``, the
    error terms of ``report.stats_report`` from the same pass.

    Exactly the arithmetic of the module docstring, in the weight's own dtype where it is exact:
    the per-group absmax is taken on the stored values (max of |x| is one of them, so no fp32
    copy is needed), ``amax / 127`` in fp32 then cast to the scale dtype, and ``w / scale`` in fp32
    (``torch.div`` promotes each element, as ``w.float() / scale`` does) a chunk of rows at a time,
    so the only fp32 temporaries are one chunk's. A non-finite weight shows up as a non-finite
    absmax (max propagates nan), so no separate isfinite pass over the weight is needed.
    """
    w = weight.detach()
    out_f, in_f = w.shape
    g = in_f if group_size is None else group_size
    groups = n_groups(in_f, group_size)
    pad = groups * g - in_f  # zero columns that complete the last group; they do not move absmax
    wg = (nn.functional.pad(w, (0, pad)) if pad else w).reshape(out_f, groups, g)
    lo, hi = torch.aminmax(wg, dim=-1)  # (out, n_groups) in w's dtype
    amax = torch.maximum(lo.float().abs_(), hi.float().abs_())  # abs: +0.0 for all-zero groups
    if not bool(torch.isfinite(amax).all()):
        return Quantized(None, amax.to(scale_dtype), False)
    scale = (amax / QMAX).to(scale_dtype)  # (out, n_groups), the stored value
    s = scale.float().unsqueeze(-1)  # (out, n_groups, 1)
    zero = s == 0
    any_zero = bool(zero.any())
    div = s.masked_fill(zero, 1.0) if any_zero else s
    q = torch.empty(out_f, groups, g, dtype=torch.int8, device=w.device)
    rows = max(1, _CHUNK // (groups * g))
    sum_w2 = sum_d2 = max_err = 0.0
    for r0 in range(0, out_f, rows):
        sl = slice(r0, min(out_f, r0 + rows))
        x = torch.div(wg[sl], div[sl])  # fp32 (rows, groups, g)
        x.round_().clamp_(-QMAX, QMAX)
        if any_zero:
            x.masked_fill_(zero[sl], 0)
        q[sl] = x  # integer-valued fp32 in [-127, 127]: the int8 cast is exact
        if stats:
            wf = wg[sl].float()
            d = x.mul_(s[sl]).sub_(wf)  # dequantized - original
            sum_w2 += float(wf.square_().sum(dtype=torch.float64))
            sum_d2 += float(d.square().sum(dtype=torch.float64))
            max_err = max(max_err, float(d.abs_().max()) if d.numel() else 0.0)
    q = q.view(out_f, groups * g)
    if pad:
        q = q[:, :in_f].contiguous()
    return Quantized(q, scale, True, sum_w2, sum_d2, max_err)


class Int8Linear(nn.Module):
    """``y = x @ (weight * weight_scale).T + bias`` with int8 ``weight`` and bf16 activations.

    Buffers (these are the checkpoint tensor names, ``<module>.<buffer>``):
      weight        int8 (out_features, in_features)
      weight_scale  (out_features, n_groups) in the scale dtype (bf16 by default); n_groups = 1
                    per output channel, ceil(in_features / group_size) per group
      bias          bf16 (out_features,), or None
    The forward is the one-line dispatch to ``quantkit.kernels.int8_linear`` and computes in x's
    dtype. Note: ``module.to(dtype)`` casts floating buffers, scales included; don't cast a
    quantized model, pick the activation dtype when loading it.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 group_size: int | None = None, scale_dtype: torch.dtype = torch.bfloat16, device=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        groups = n_groups(in_features, group_size)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.zeros(out_features, groups, dtype=scale_dtype, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=BIAS_DTYPE, device=device))
        else:
            self.bias = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int | None = None,
                    scale_dtype: torch.dtype = torch.bfloat16, weight: torch.Tensor | None = None) -> "Int8Linear":
        """Quantize ``linear`` (any float dtype, any device) into a new ``Int8Linear`` on its device.

        weight: the weight to quantize instead of ``linear.weight`` (same shape), if the caller has it.
        """
        q, scale = quantize_weight(linear.weight if weight is None else weight, group_size, scale_dtype)
        return cls.from_quantized(linear, q, scale, group_size)

    @classmethod
    def from_quantized(cls, linear: nn.Linear, q: torch.Tensor, scale: torch.Tensor,
                       group_size: int | None = None) -> "Int8Linear":
        """An ``Int8Linear`` holding ``q`` and ``scale`` (from ``quantize_weight``) and ``linear``'s bias."""
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  group_size, scale.dtype, device="meta")
        mod.weight, mod.weight_scale = q, scale  # replace the meta buffers
        if linear.bias is not None:
            mod.bias = linear.bias.detach().to(BIAS_DTYPE).clone()
        return mod

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight the forward uses, (out, in) in ``dtype``."""
        return dequantize(self.weight, self.weight_scale, self.group_size, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.weight, self.weight_scale, self.bias, self.group_size)

    def extra_repr(self) -> str:
        gran = "per-channel" if self.group_size is None else f"group_size={self.group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {gran}, scale_dtype={self.weight_scale.dtype}")


# ----------------------------------------------------------------------------------------------
# Handler

MODULE_CLASS = Int8Linear


def quantize_module(name: str, linear: nn.Linear, config: Int8Config) -> tuple[Int8Linear, LayerReport]:
    """Quantize one ``nn.Linear``; returns the replacement and its error statistics."""
    res = quantize_weight_stats(linear.weight, config.group_size, SCALE_TORCH_DTYPES[config.scale_dtype])
    if not res.finite:
        raise InputError(f"weight of '{name}' has non-finite values (inf/nan); cannot quantize it")
    if not torch.isfinite(res.scale).all():
        raise InputError(f"'{name}': a scale overflows {config.scale_dtype}; use scale_dtype fp32")
    mod = Int8Linear.from_quantized(linear, res.q, res.scale, config.group_size)
    return mod, stats_report(name, tuple(res.q.shape), res.scale, res.sum_w2, res.sum_d2, res.max_err)


def export_tensors(module: Int8Linear) -> dict:
    """Checkpoint tensors of one quantized module, keyed by local name, in compressed-tensors'
    pack-quantized layout: ``weight_packed`` int32 (out, ceil(in / 4)), ``weight_scale``
    (out, n_groups), ``weight_shape`` int64 [out, in], ``bias`` if any (see ``checkpoint``)."""
    from quantkit.quantizers.packing import pack_int32

    out = {"weight_packed": pack_int32(module.weight, 8), "weight_scale": module.weight_scale,
           "weight_shape": torch.tensor([module.out_features, module.in_features], dtype=torch.int64)}
    if module.bias is not None:
        out["bias"] = module.bias
    return out


def quantize_experts(name: str, experts: nn.Module, config: Int8Config):
    """Quantize a fused MoE experts module (``experts.Int8Experts``); returns it and its reports."""
    from quantkit.quantizers.experts import quantize_experts as quantize_fused

    return quantize_fused(name, experts, config.group_size, config.scale_dtype)


def empty_experts(experts: nn.Module, config: Int8Config) -> nn.Module:
    """A meta ``Int8Experts`` shell shaped like the fused experts module ``experts``."""
    from quantkit.quantizers.experts import empty_experts as empty_fused

    return empty_fused(experts, config.group_size, SCALE_TORCH_DTYPES[config.scale_dtype])


def empty_module(linear: nn.Linear, config: Int8Config) -> Int8Linear:
    """An ``Int8Linear`` shell on the meta device for ``linear``'s shape, to be filled by
    ``load_state_dict(..., assign=True)`` (its buffers are replaced, nothing is allocated)."""
    return Int8Linear(linear.in_features, linear.out_features, linear.bias is not None,
                      config.group_size, SCALE_TORCH_DTYPES[config.scale_dtype], device="meta")


# The compressed-tensors release whose pack-quantized layout these checkpoints are tested against
# (written as quantization_config "version", as llm-compressor writes the release it used).
COMPRESSED_TENSORS_VERSION = "0.20.1"


def checkpoint_config(config: Int8Config, quantized: list[str], skipped: list[str]) -> dict:
    """config.json's ``quantization_config``: what llm-compressor's W8A16 writes (compressed-tensors
    "pack-quantized", symmetric int8, strategy channel or group), key for key. ``scale_dtype`` is
    null for bf16 scales (compressed-tensors then uses the model's dtype, as llm-compressor does)."""
    scale = SCALE_TORCH_DTYPES[config.scale_dtype]
    return {
        "config_groups": {
            "group_0": {
                "format": "pack-quantized",
                "input_activations": None,
                "output_activations": None,
                "targets": ["Linear"],
                "weights": {
                    "actorder": None,
                    "block_structure": None,
                    "dynamic": False,
                    "group_size": config.group_size,
                    "num_bits": 8,
                    "observer": "memoryless_minmax",
                    "observer_kwargs": {},
                    "scale_dtype": None if scale == torch.bfloat16 else str(scale),
                    "strategy": config.granularity,
                    "symmetric": True,
                    "type": "int",
                    "zp_dtype": None,
                },
            }
        },
        "format": "pack-quantized",
        "global_compression_ratio": None,
        "ignore": list(skipped),
        "kv_cache_scheme": None,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": COMPRESSED_TENSORS_VERSION,
    }
