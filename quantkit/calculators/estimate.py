"""``estimate``: the one library call behind ``quantkit estimate``. Returns raw numbers (bytes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from quantkit.calculators.fit import Fit, fit
from quantkit.calculators.kv_cache import KV_DTYPE_BYTES, kv_cache
from quantkit.calculators.memory import Memory, Setup, memory
from quantkit.calculators.params import ParamBreakdown, count_params
from quantkit.calculators.roofline import Roofline, roofline
from quantkit.calculators.memory import valid_tp
from quantkit.calculators.weights import (
    DEFAULT_GROUP, DTYPE_BITS, QUANTIZED, checkpoint_bytes, parse_dtype, textbook_bytes_by_dtype,
)
from quantkit.calculators.activations import DEFAULT_OVERHEAD_BYTES, DEFAULT_PREFILL_CHUNK
from quantkit.catalogue import GpuSpec, get_gpu
from quantkit.boundary.numbers import check_int
from quantkit.errors import ConfigError, InputError
from quantkit.selection import DEFAULT_SKIP
from quantkit.spec import ModelSpec

RULE_OF_THUMB = 1.2  # EleutherAI's "<= 20% overhead" over the weights


@dataclass(frozen=True)
class Estimate:
    model: str
    params: ParamBreakdown
    dtype: str
    dtype_source: str  # "argument", "quantization_config (<method>)", "torch_dtype" (bf16/fp16
    # as stored) or "default; the checkpoint stores fp32" (served in bf16, stored otherwise)
    group_size: int | None
    weights_bytes: int  # as stored at `dtype` (quantized view: scales, kept modules)
    weights_bytes_by_dtype: dict[str, int]  # textbook: params x bytes per param
    checkpoint_bytes_by_dtype: dict[str, int]  # as stored (scales, kept modules) at each dtype
    batch: int
    context: int
    kv_dtype: str
    kv_bytes_per_token: int
    kv_cache_bytes: int
    kv_cache_decompressed_bytes: int  # MLA: keys/values decompressed; = kv_cache_bytes otherwise
    rule_of_thumb_bytes: int
    activation_bytes: int
    logits_bytes: int
    overhead_bytes: int
    optimizer_bytes: int  # training only
    total_bytes: int
    train: bool
    gpu: str | None = None
    num_gpus: int | None = None
    per_gpu_bytes: int | None = None
    usable_bytes_per_gpu: int | None = None
    headroom_bytes: int | None = None
    fits: bool | None = None
    max_context: int | None = None
    max_batch: int | None = None
    min_gpus: int | None = None
    decode_tokens_per_s_bound: float | None = None
    prefill_seconds_bound: float | None = None
    compute_bound_batch: float | None = None
    spec: ModelSpec | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON form (raw bytes as integers)."""
        d = asdict(self)
        d.pop("spec")
        p = self.params
        d["params"] = {"total": p.total, "active": p.active, "embedding": p.embedding,
                       "lm_head": p.lm_head, "breakdown": p.as_dict()}
        return d


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return check_int(name, value)  # and not absurdly large (quantkit.boundary.numbers.MAX_INT)


def _resolve_dtype(spec: ModelSpec, dtype: str | None) -> tuple[str, str]:
    """(dtype, where it came from): the argument, the checkpoint's quantization_config, or its
    torch_dtype (fp16 if float16, else bf16: fp32 checkpoints are served in bf16)."""
    if dtype is not None:
        return parse_dtype(dtype), "argument"
    q = spec.quantization
    if q is not None:
        if q.dtype is None:
            raise ConfigError(
                f"config.json's quantization_config has quant_method {q.method!r} with a scheme "
                f"quantkit does not read; pass --dtype (one of {', '.join(DTYPE_BITS)})")
        return q.dtype, f"quantization_config ({q.method})"
    if spec.torch_dtype in ("float16", "bfloat16"):
        return ("fp16" if spec.torch_dtype == "float16" else "bf16"), "torch_dtype"
    stored = {"float32": "fp32", None: None}.get(spec.torch_dtype, spec.torch_dtype)
    return "bf16", ("default; the checkpoint stores " + stored if stored
                    else "default; config.json names no torch_dtype")


def valid_tp_degrees(spec: ModelSpec) -> list[int]:
    return [n for n in range(1, spec.num_heads + 1) if valid_tp(spec, n)]


def estimate(
    spec: ModelSpec,
    dtype: str | None = None,
    kv_dtype: str = "bf16",
    batch: int = 1,
    context: int | None = None,
    gpu: str | GpuSpec | None = None,
    num_gpus: int = 1,
    block_size: int | None = None,
    prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    group_size: int | None = None,
    skip: tuple[str, ...] | None = None,
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
    gpu_util: float = 1.0,
    train: bool = False,
    search_limits: bool = True,
) -> Estimate:
    """Memory, fit and speed bounds for ``spec``.

    dtype: fp32, fp16, bf16, fp8, int8, int4 (default: the checkpoint's quantization_config if
    it has one, else fp16 if its torch_dtype is float16, else bf16).
    kv_dtype: bf16, fp16, fp8, int8, fp32. context: tokens held per sequence (default: model max).
    prefill_chunk: tokens in one prefill forward pass, all sequences together (the activation
    peak; vLLM's max_num_batched_tokens). group_size: None = the dtype's default (int8/fp8 per
    channel, int4 groups of 128) or the checkpoint's. skip: linear layers kept in bf16 (default
    ``lm_head``, or the checkpoint's ignore list). gpu: a catalogue name or GpuSpec; enables fit,
    max context/batch, min GPUs and speed bounds (``search_limits=False`` skips the max-context
    and max-batch searches). num_gpus: tensor-parallel degree; must divide the attention heads.
    train: mixed-precision Adam training memory (weights in bf16/fp16).
    """
    dtype, dtype_source = _resolve_dtype(spec, dtype)
    from_checkpoint = dtype_source.startswith("quantization_config")
    kv_dtype = parse_dtype(kv_dtype, tuple(KV_DTYPE_BYTES), "KV dtype")
    batch = _positive("batch", batch)
    context = _positive("context", context if context is not None else spec.max_context)
    num_gpus = _positive("number of GPUs", num_gpus)
    prefill_chunk = _positive("prefill chunk", prefill_chunk)
    if block_size is not None:
        _positive("block size", block_size)
    if group_size is not None:
        _positive("group size", group_size)
        if dtype not in QUANTIZED:
            raise InputError(f"a group size applies only to quantized dtypes ({', '.join(QUANTIZED)}), "
                             f"not to {dtype}")
    if train and dtype not in ("bf16", "fp16"):
        raise InputError(f"--train models mixed-precision Adam with bf16 or fp16 weights, not {dtype}")
    if not 0 < gpu_util <= 1:
        raise InputError(f"GPU memory utilization must be in (0, 1], got {gpu_util!r}")
    if not valid_tp(spec, num_gpus):
        degrees = ", ".join(map(str, valid_tp_degrees(spec)))
        raise InputError(
            f"{num_gpus} GPUs is not a valid tensor-parallel degree for {spec.name} "
            f"({spec.num_heads} attention heads, {spec.num_kv_heads} KV heads); valid: {degrees}")
    scale_bytes = 2
    if group_size is None:
        group_size = spec.quantization.group_size if from_checkpoint else DEFAULT_GROUP.get(dtype)
    if skip is None:
        skip = spec.quantization.skip if from_checkpoint else DEFAULT_SKIP
    meta_bytes = 0  # a checkpoint's format may store more per quantized linear (weight_shape)
    if from_checkpoint:
        scale_bytes = spec.quantization.scale_bytes
        meta_bytes = spec.quantization.meta_bytes
    setup = Setup(dtype, KV_DTYPE_BYTES[kv_dtype], batch, context, block_size, prefill_chunk,
                  group_size, tuple(skip), overhead_bytes, train, scale_bytes, meta_bytes)
    params = count_params(spec)
    weights = checkpoint_bytes(spec, dtype, group_size, tuple(skip), scale_bytes, 2, meta_bytes).total
    if train:
        weights = memory(spec, setup, 1).weights
    kv = kv_cache(spec, batch, context, KV_DTYPE_BYTES[kv_dtype], block_size)
    mem: Memory = memory(spec, setup, 1)
    out = dict(
        model=spec.name, params=params, dtype=dtype, dtype_source=dtype_source, group_size=group_size,
        weights_bytes=weights,
        weights_bytes_by_dtype=textbook_bytes_by_dtype(params.total),
        checkpoint_bytes_by_dtype={
            d: checkpoint_bytes(spec, d, group_size if d == dtype else DEFAULT_GROUP.get(d), tuple(skip),
                                scale_bytes, 2, meta_bytes if d == dtype else 0).total for d in DTYPE_BITS},
        batch=batch, context=context, kv_dtype=kv_dtype,
        kv_bytes_per_token=kv.bytes_per_token, kv_cache_bytes=mem.kv_cache,
        kv_cache_decompressed_bytes=kv.decompressed_total if not train else 0,
        rule_of_thumb_bytes=round(RULE_OF_THUMB * weights),
        activation_bytes=mem.activations, logits_bytes=mem.logits, overhead_bytes=mem.overhead,
        optimizer_bytes=mem.optimizer, total_bytes=mem.total, train=train, spec=spec,
    )
    if gpu is not None:
        g = get_gpu(gpu) if isinstance(gpu, str) else gpu
        f: Fit = fit(spec, setup, g, num_gpus, gpu_util, search_limits)
        out.update(gpu=g.name, num_gpus=num_gpus, per_gpu_bytes=f.per_gpu_bytes,
                   usable_bytes_per_gpu=f.usable_bytes_per_gpu, headroom_bytes=f.headroom_bytes,
                   fits=f.fits, max_context=f.max_context, max_batch=f.max_batch, min_gpus=f.min_gpus)
        if not train:
            r: Roofline = roofline(spec, setup, g, num_gpus)
            out.update(decode_tokens_per_s_bound=r.decode_tokens_per_s,
                       prefill_seconds_bound=r.prefill_seconds, compute_bound_batch=r.compute_bound_batch)
    return Estimate(**out)
