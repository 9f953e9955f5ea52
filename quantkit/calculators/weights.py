"""Weights memory: the textbook formula and the bytes a (quantized) checkpoint really occupies.

Textbook: parameters x bytes per parameter (fp32 4, fp16 2, bf16 2, fp8 1, int8 1, int4 0.5).

Checkpoint view for fp8/int8/int4: every linear weight not matched by the skip filter is stored
at ``bits`` per weight (int4 packed two per byte) plus one scale of ``scale_bytes`` per output
channel (per-channel) or per output channel and group of ``group_size`` input columns (per-group;
a partial last group gets its own scale). Symmetric schemes, so no zero points. Everything else
(embeddings, norms, biases, routers, skipped linears such as ``lm_head``) stays at ``base_bytes``
(bf16: 2), except the tensors transformers keeps in fp32 (DeepSeek's router weights and router
bias, per transformers release: ``fp32_kept``), which quantize loads and writes in fp32.
``meta_bytes`` is what a format stores per quantized linear besides values and scales:
compressed-tensors "pack-quantized" (quantkit's int8 checkpoints, llm-compressor's W8A16/W4A16)
keeps each layer's [out, in] as an int64 ``weight_shape`` tensor, ``PACKED_META_BYTES`` = 16; its
int32 words hold 32 / bits values, so a row takes exactly in x bits / 8 bytes whenever in x bits
is a multiple of 32 (every real model; quantkit's writer pads a partial last word).
With ``meta_bytes=PACKED_META_BYTES`` this is exactly the tensor bytes of a quantkit int8
checkpoint, checked in tests on every supported transformers release; the default 0 is the
values-and-scales view the plan uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from quantkit.calculators.fp32_kept import fp32_extra_bytes
from quantkit.calculators.params import count_params, linears
from quantkit.errors import UnknownNameError
from quantkit.selection import DEFAULT_SKIP, is_skipped
from quantkit.spec import ModelSpec, ceil_div

DTYPE_BITS: dict[str, int] = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4}
_DTYPE_ALIASES = {
    "float32": "fp32", "float": "fp32", "f32": "fp32",
    "float16": "fp16", "half": "fp16", "f16": "fp16",
    "bfloat16": "bf16",
    "float8": "fp8", "fp8_e4m3": "fp8", "float8_e4m3fn": "fp8", "e4m3": "fp8",
    "i8": "int8", "w8a16": "int8", "i4": "int4", "w4a16": "int4",
}
QUANTIZED = ("fp8", "int8", "int4")
PACKED_META_BYTES = 16  # bytes: compressed-tensors' int64 weight_shape [out, in], per quantized linear
# Default group size per quantized dtype: int8/fp8 per output channel, int4 groups of 128 (GPTQ/AWQ)
DEFAULT_GROUP = {"fp8": None, "int8": None, "int4": 128}


def parse_dtype(name: str, allowed: tuple[str, ...] = tuple(DTYPE_BITS), what: str = "dtype") -> str:
    """Canonical dtype name (``bfloat16`` -> ``bf16``); ``UnknownNameError`` lists ``allowed``."""
    key = str(name).strip().lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in allowed:
        raise UnknownNameError(f"unknown {what} {name!r}; accepted: {', '.join(allowed)}")
    return key


def textbook_bytes(params: int, dtype: str) -> int:
    """parameters x bytes per parameter, rounded up to whole bytes (int4: 0.5 byte)."""
    return ceil_div(params * DTYPE_BITS[dtype], 8)


def textbook_bytes_by_dtype(params: int) -> dict[str, int]:
    return {d: textbook_bytes(params, d) for d in DTYPE_BITS}


@dataclass(frozen=True)
class WeightBytes:
    """Bytes of a checkpoint at one dtype/scheme; ``active`` = what one token at batch 1 reads."""

    total: int
    active: int
    quantized_params: int  # weights stored at low precision
    scale_bytes: int  # quantization scales
    kept_params: int  # parameters kept at base precision (embeddings, norms, skipped linears)
    skipped: tuple[str, ...]  # linear layers kept at base precision by the skip filter
    fp32_extra: int = 0  # bytes beyond base precision of tensors transformers keeps in fp32


@lru_cache(maxsize=4096)
def checkpoint_bytes(
    spec: ModelSpec,
    dtype: str,
    group_size: int | None = None,
    skip: tuple[str, ...] = DEFAULT_SKIP,
    scale_bytes: int = 2,
    base_bytes: int = 2,
    meta_bytes: int = 0,
) -> WeightBytes:
    """Bytes the weights occupy at ``dtype`` (see module docstring for the quantized layout).

    ``dtype``: one of fp32, fp16, bf16, fp8, int8, int4. ``group_size``: None = per output channel.
    ``meta_bytes``: stored per quantized linear besides values and scales (``PACKED_META_BYTES``).
    """
    params = count_params(spec)
    if dtype not in QUANTIZED:
        size = DTYPE_BITS[dtype] // 8
        return WeightBytes(params.total * size, params.active * size, 0, 0, params.total, ())
    bits = DTYPE_BITS[dtype]
    total = active = quantized = scales = 0
    skipped = []
    for lin in linears(spec):
        if is_skipped(lin.name, skip):
            nbytes = lin.params * base_bytes
            skipped.append(lin.name)
        else:
            n_groups = 1 if group_size is None else ceil_div(lin.in_features, group_size)
            s = lin.out_features * n_groups * scale_bytes
            nbytes = ceil_div(lin.in_features * lin.out_features * bits, 8) + s
            nbytes += lin.out_features * base_bytes if lin.bias else 0
            nbytes += meta_bytes
            quantized += lin.in_features * lin.out_features
            scales += s
        total += nbytes
        if lin.active:
            active += nbytes
    linear_params = sum(lin.params for lin in linears(spec))
    other = params.total - linear_params  # embeddings, norms, routers
    extra = fp32_extra_bytes(spec, base_bytes)  # routers (read by every token) kept in fp32
    total += other * base_bytes + extra
    # routed experts: one token at batch 1 reads experts_per_token of num_experts
    if spec.is_moe:
        routed = routed_bytes(spec, dtype, group_size, skip, scale_bytes, base_bytes, meta_bytes)
        active += routed * spec.experts_per_token // spec.num_experts
    active += other * base_bytes + extra
    return WeightBytes(total, active, quantized, scales, params.total - quantized, tuple(skipped), extra)


def routed_bytes(spec, dtype, group_size, skip, scale_bytes, base_bytes, meta_bytes: int = 0) -> int:
    """Bytes of all routed experts (MoE) at ``dtype``, their biases included; a token at batch 1
    reads top-k of them."""
    bits = DTYPE_BITS[dtype]
    out = 0
    for lin in linears(spec):
        if lin.active:
            continue
        if is_skipped(lin.name, skip):
            out += lin.params * base_bytes
        else:
            n_groups = 1 if group_size is None else ceil_div(lin.in_features, group_size)
            out += ceil_div(lin.in_features * lin.out_features * bits, 8)
            out += lin.out_features * n_groups * scale_bytes
            out += lin.out_features * base_bytes if lin.bias else 0  # gpt-oss: experts have biases
            out += meta_bytes
    return out


def quantized_checkpoint_bytes(
    spec: ModelSpec,
    bits: int = 8,
    group_size: int | None = None,
    skip: tuple[str, ...] = DEFAULT_SKIP,
    scale_bytes: int = 2,
    base_bytes: int = 2,
    meta_bytes: int = 0,
) -> int:
    """Tensor bytes of a quantkit int{bits} checkpoint (``bits``: 8 or 4); ``meta_bytes``: the
    method's per-linear metadata (``QuantConfig.meta_bytes``: int8 ``PACKED_META_BYTES``)."""
    if bits not in (4, 8):
        raise UnknownNameError(f"unknown bit width {bits!r}; accepted: 4, 8")
    dtype = "int8" if bits == 8 else "int4"
    return checkpoint_bytes(spec, dtype, group_size, tuple(skip), scale_bytes, base_bytes, meta_bytes).total
