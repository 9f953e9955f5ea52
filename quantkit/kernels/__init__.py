"""int8-weight x floating-point-activation matmul: ``y = x @ dequant(W_int8).T (+ bias)``.

``int8_linear`` is the one entry point ``Int8Linear`` calls. This module holds the plain torch
reference path (CPU and GPU). A fused GPU kernel (Triton) plugs in behind the same signature.

Shapes: ``x`` (..., in_features) in bf16/fp16/fp32; ``qweight`` int8 (out_features, in_features);
``scale`` (out_features, n_groups) where n_groups = 1 for per-output-channel scales and
ceil(in_features / group_size) for per-group scales; ``bias`` (out_features,) or None.
The output has x's dtype.
"""

from __future__ import annotations


def dequantize(qweight, scale, group_size: int | None, dtype):
    """Return ``qweight * scale`` in ``dtype``, shape (out, in)."""
    out_features, in_features = qweight.shape
    if group_size is None or scale.shape[1] == 1:
        return qweight.to(dtype) * scale.to(dtype)
    expanded = scale.to(dtype).repeat_interleave(group_size, dim=1)[:, :in_features]
    return qweight.to(dtype) * expanded


def int8_linear_reference(x, qweight, scale, bias=None, group_size: int | None = None):
    """Plain torch: dequantize the weight to x's dtype, then ``F.linear``."""
    import torch.nn.functional as F

    w = dequantize(qweight, scale, group_size, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def int8_linear(x, qweight, scale, bias=None, group_size: int | None = None):
    """Dispatch: the fused kernel where one is available for this device, else the reference."""
    return int8_linear_reference(x, qweight, scale, bias, group_size)
