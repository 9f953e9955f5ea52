"""compressed-tensors "pack-quantized" packing: int values <-> int32 words, bit for bit.

The layout (compressed-tensors ``pack_to_int32`` / ``unpack_from_int32``, read by vLLM's
compressed-tensors WNA16 scheme and by transformers' compressed-tensors integration): each value
q of ``bits`` bits (4 or 8) is stored unsigned as q + 2^(bits-1); along the input dimension, value
i of a row sits at bits [i*bits, (i+1)*bits) of the row's bit string, little-end first, cut into
int32 words. A row of ``in`` values takes ceil(in * bits / 32) words; a partial last word is
zero-padded (so for 8 bits, word k holds values 4k..4k+3, value 4k in the low byte).

Pure torch, computed with shifts (no reinterpretation of memory), so the host's byte order
does not matter.
"""

from __future__ import annotations

import torch

PACK_BITS = (4, 8)


def packed_words(in_features: int, bits: int) -> int:
    """int32 words per row of ``in_features`` values of ``bits`` bits."""
    return -(-in_features * bits // 32)


def pack_int32(q: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """(..., in) int8 values in [-2^(bits-1), 2^(bits-1)) -> (..., ceil(in * bits / 32)) int32."""
    if bits not in PACK_BITS:
        raise ValueError(f"bits must be one of {PACK_BITS}, got {bits}")
    per = 32 // bits
    in_f = q.shape[-1]
    words = packed_words(in_f, bits)
    u = q.to(torch.int64) + (1 << (bits - 1))  # unsigned, in [0, 2^bits)
    pad = words * per - in_f
    if pad:
        u = torch.nn.functional.pad(u, (0, pad))
    u = u.reshape(*q.shape[:-1], words, per)
    shifts = torch.arange(per, dtype=torch.int64, device=q.device) * bits
    w = (u << shifts).sum(dim=-1)  # in [0, 2^32): no bits overlap
    w = torch.where(w >= 1 << 31, w - (1 << 32), w)  # two's complement int32
    return w.to(torch.int32).contiguous()


def unpack_int32(packed: torch.Tensor, in_features: int, bits: int = 8) -> torch.Tensor:
    """Inverse of ``pack_int32``: (..., words) int32 -> (..., in_features) int8."""
    if bits not in PACK_BITS:
        raise ValueError(f"bits must be one of {PACK_BITS}, got {bits}")
    per = 32 // bits
    w = packed.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(per, dtype=torch.int64, device=packed.device) * bits
    u = (w.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)  # (..., words, per)
    u = u.reshape(*packed.shape[:-1], packed.shape[-1] * per)[..., :in_features]
    return (u - (1 << (bits - 1))).to(torch.int8).contiguous()
