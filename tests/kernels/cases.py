"""Operands and the fp32 reference shared by the CPU, interpreter and GPU kernel tests."""

from __future__ import annotations

import torch

from quantkit.kernels import dequantize


def operands(m, n, k, group_size, bias, dtype, seed=0, device="cpu"):
    """Random (x, qweight, scale, bias) like a quantized layer: int8 in [-127, 127], scale > 0."""
    gen = torch.Generator().manual_seed(seed)
    n_groups = 1 if group_size is None else -(-k // group_size)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    s = (torch.rand(n, n_groups, generator=gen) + 0.5) / 127  # fp32 scales, as max|w| / 127
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    move = (lambda t: None if t is None else t.to(device))
    return move(x), move(w), move(s), move(b)


def reference(x, qweight, scale, bias, group_size):
    """fp32 ``x @ dequant(W).T + bias`` with the weights dequantised in fp32."""
    w = dequantize(qweight, scale, group_size, torch.float32)
    y = x.float() @ w.t()
    return y if bias is None else y + bias.float()


def rel_error(y, x, qweight, scale, bias, group_size) -> float:
    """||y - y_ref|| / ||y_ref|| over all elements, y_ref from ``reference``."""
    ref = reference(x.reshape(-1, x.shape[-1]), qweight, scale, bias, group_size)
    diff = y.reshape(ref.shape).float() - ref
    return (diff.norm() / ref.norm()).item()
