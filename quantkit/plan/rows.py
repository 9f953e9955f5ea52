"""Build a plan's rows once, from quantkit's calculators; every export renders these rows.

One row per (model, GPU, dtype, context, batch). The memory columns are ``estimate(...)`` on one
GPU; "GPUs needed" is its ``min_gpus`` (the smallest valid tensor-parallel degree that fits); the
per-GPU memory, largest batch and decode bound are ``estimate(..., num_gpus=min_gpus)``, i.e. on
the GPUs needed. Raw numbers: bytes as int, None where a value does not exist (no TP degree fits).
Only the estimate on the GPUs needed runs ``estimate``'s binary searches (for its ``max_batch``;
its ``max_context`` is unused); the one-GPU call passes ``search_limits=False`` (the searches are
most of an estimate's time).

Besides the rows, the workbook needs per-model data its formulas start from (``model_data``) and
per-model-and-dtype weight counts (``weight_data``): counts of parameters, scales and layers,
never bytes, so that the spreadsheet's formulas turn them into bytes from the Inputs sheet.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable

# valid_tp_degrees: the TP degrees fit.min_gpus may pick (they divide the head count); the same
# list estimate() names when it refuses an invalid num_gpus
from quantkit.calculators.estimate import Estimate, estimate, valid_tp_degrees
from quantkit.calculators.fp32_kept import fp32_elements
from quantkit.calculators.memory import kv_heads_per_gpu
from quantkit.calculators.params import count_params, linears
from quantkit.calculators.weights import DEFAULT_GROUP, DTYPE_BITS, QUANTIZED
from quantkit.catalogue import GpuSpec
from quantkit.errors import ConfigError
from quantkit.plan.definition import Plan
from quantkit.selection import is_skipped
from quantkit.spec import ModelSpec, ceil_div

# Row keys in order; the CSV header is the key, the JSON object uses the same keys.
ROW_KEYS = (
    "model", "gpu", "dtype", "context", "batch",
    "weights_bytes", "kv_cache_bytes", "activation_bytes", "logits_bytes", "overhead_bytes",
    "total_bytes", "usable_bytes_per_gpu", "fits", "min_gpus", "kv_share_per_gpu",
    "per_gpu_bytes", "max_batch", "decode_tokens_per_s_bound", "within_max_context",
)


def estimate_for(plan: Plan, spec: ModelSpec, gpu: GpuSpec, dtype: str, context: int, batch: int,
                 num_gpus: int = 1, search_limits: bool = True) -> Estimate:
    """``quantkit estimate`` for one plan cell, with the plan's assumptions.

    ``search_limits=False``: no largest-context/batch searches (``max_context``/``max_batch`` None).
    """
    a = plan.assumptions
    # the plan's group size is for its quantized dtypes; estimate() refuses one for bf16 and co.
    group = a.group_size if dtype in QUANTIZED else None
    return estimate(spec, dtype=dtype, kv_dtype=a.kv_dtype, batch=batch, context=context, gpu=gpu,
                    num_gpus=num_gpus, block_size=a.block_size, prefill_chunk=a.prefill_chunk,
                    group_size=group, skip=a.skip, overhead_bytes=a.overhead_bytes,
                    gpu_util=a.gpu_util, search_limits=search_limits)


def row_for(plan: Plan, spec: ModelSpec, gpu: GpuSpec, dtype: str, context: int, batch: int) -> dict:
    # one GPU: memory, fits and min_gpus only; the largest batch is wanted on the GPUs needed
    one = estimate_for(plan, spec, gpu, dtype, context, batch, search_limits=False)
    n = one.min_gpus
    on_n = estimate_for(plan, spec, gpu, dtype, context, batch, n) if n else None
    return {
        "model": spec.name, "gpu": gpu.name, "dtype": dtype, "context": context, "batch": batch,
        "weights_bytes": one.weights_bytes, "kv_cache_bytes": one.kv_cache_bytes,
        "activation_bytes": one.activation_bytes, "logits_bytes": one.logits_bytes,
        "overhead_bytes": one.overhead_bytes, "total_bytes": one.total_bytes,
        "usable_bytes_per_gpu": one.usable_bytes_per_gpu, "fits": one.fits, "min_gpus": n,
        "kv_share_per_gpu": kv_heads_per_gpu(spec, n) if n else None,
        "per_gpu_bytes": on_n.per_gpu_bytes if on_n else None,
        "max_batch": on_n.max_batch if on_n else None,
        "decode_tokens_per_s_bound": on_n.decode_tokens_per_s_bound if on_n else None,
        "within_max_context": context <= spec.max_context,
    }


def combinations(plan: Plan) -> Iterable[tuple[ModelSpec, GpuSpec, str, int, int]]:
    for spec in plan.models:
        for gpu in plan.gpus:
            for dtype in plan.dtypes:
                for context in plan.contexts:
                    for batch in plan.batches:
                        yield spec, gpu, dtype, context, batch


def build_rows(plan: Plan, progress: Callable[[Iterable], Iterable] | None = None) -> list[dict]:
    """One row per combination, in the order models > GPUs > dtypes > contexts > batches."""
    combos: Iterable = combinations(plan)
    if progress is not None:
        combos = progress(combos)
    return [row_for(plan, *c) for c in combos]


# ---- data the workbook's formulas start from ---------------------------------------------------

def _act_widths(spec: ModelSpec) -> tuple[int, int]:
    """(MLP, attention) activation values per token and layer that tensor parallelism splits.

    Mirrors ``activations.prefill_activation_bytes``: peak = 2 x hidden + max(these) / tp.
    """
    from quantkit.calculators.activations import inter_per_token

    mlp = (3 if spec.mlp_kind == "gated" else 2) * inter_per_token(spec)
    if spec.mla:
        qk = spec.qk_nope_head_dim + spec.qk_rope_head_dim
        return mlp, spec.num_heads * (2 * qk + 2 * spec.v_head_dim)
    return mlp, 2 * spec.q_dim + 2 * spec.kv_dim


@dataclass(frozen=True)
class ModelData:
    spec: ModelSpec
    hf_id: str
    total_params: int
    active_params: int
    mlp_act_width: int
    attn_act_width: int
    tp_degrees: tuple[int, ...]


def model_data(spec: ModelSpec) -> ModelData:
    p = count_params(spec)
    mlp, attn = _act_widths(spec)
    return ModelData(spec, str(spec.source.get("hf_id", "")), p.total, p.active, mlp, attn,
                     tuple(valid_tp_degrees(spec)))


@dataclass(frozen=True)
class WeightData:
    """Counts behind the checkpoint bytes of one model at one dtype (see ``weights.py``)."""

    model: str
    dtype: str
    group_size: int | None  # None: one scale per output channel
    quantized_params: int  # weights stored at `bits`
    scales: int  # number of scales
    kept_params: int  # parameters at base precision (embeddings, norms, biases, skipped linears)
    routed_quantized_params: int  # the same three for routed experts only (MoE)
    routed_scales: int
    routed_kept_params: int  # skipped routed linears
    routed_bias_params: int  # biases of quantized routed linears
    total_params: int
    active_params: int
    experts: int
    experts_per_token: int
    fp32_params: int = 0  # of the kept params, those transformers keeps in fp32 (DeepSeek routers)
    fp32_buffers: int = 0  # fp32 buffers saved with quantized checkpoints (DeepSeek-V3 router bias)

    def routed_bytes(self, bits: int, scale_bytes: int, base_bytes: int) -> int:
        """Bytes of all routed experts as ``weights.routed_bytes`` counts them (biases included)."""
        if self.dtype not in QUANTIZED:
            return 0
        return (ceil_div(self.routed_quantized_params * bits, 8) + self.routed_scales * scale_bytes
                + (self.routed_kept_params + self.routed_bias_params) * base_bytes)


@lru_cache(maxsize=256)
def _linear_groups(spec: ModelSpec, skip: tuple[str, ...]) -> tuple[tuple[tuple, int], ...]:
    """((in, out, bias, routed, skipped), how many) over all linear layers: experts collapse."""
    groups = Counter((lin.in_features, lin.out_features, lin.bias, not lin.active, is_skipped(lin.name, skip))
                     for lin in linears(spec))
    return tuple(groups.items())


def weight_data(spec: ModelSpec, dtype: str, group_size: int | None, skip: tuple[str, ...]) -> WeightData:
    """Parameter and scale counts; raises ``ConfigError`` if int4 packing would need padding."""
    p = count_params(spec)
    group = group_size if group_size is not None else DEFAULT_GROUP.get(dtype)
    q = s = rq = rs = rk = rb = 0
    if dtype in QUANTIZED:
        for (n_in, n_out, bias, routed, skipped), count in _linear_groups(spec, tuple(skip)):
            if skipped:
                rk += (n_in * n_out + (n_out if bias else 0)) * count if routed else 0
                continue
            n_w = n_in * n_out
            if n_w * DTYPE_BITS[dtype] % 8:
                # The sheet computes ceil(sum x bits / 8); per-layer padding would differ from it.
                raise ConfigError(f"{spec.name}: a {n_in}x{n_out} linear layer has an odd number of "
                                  f"weights; {dtype} packing padding is not modelled by the plan workbook")
            n_s = n_out * (1 if group is None else ceil_div(n_in, group))
            q += n_w * count
            s += n_s * count
            if routed:
                rq += n_w * count
                rs += n_s * count
                rb += (n_out if bias else 0) * count
    return WeightData(
        model=spec.name, dtype=dtype, group_size=group if dtype in QUANTIZED else None,
        quantized_params=q, scales=s, kept_params=p.total - q, routed_quantized_params=rq,
        routed_scales=rs, routed_kept_params=rk, routed_bias_params=rb, total_params=p.total,
        active_params=p.active, experts=spec.num_experts, experts_per_token=spec.experts_per_token,
        **(dict(zip(("fp32_params", "fp32_buffers"), fp32_elements(spec))) if dtype in QUANTIZED else {}),
    )


def plan_json(plan: Plan, rows: list[dict]) -> dict[str, Any]:
    """The JSON export: the plan's assumptions and its rows (raw bytes as integers)."""
    from quantkit import __version__

    a = plan.assumptions
    return {
        "quantkit_plan_version": 1,
        "quantkit_version": __version__,
        "name": plan.name,
        "assumptions": {
            "kv_dtype": a.kv_dtype, "kv_bytes_per_value": a.kv_bytes, "block_size": a.block_size,
            "prefill_chunk": a.prefill_chunk, "group_size": a.group_size,
            "overhead_bytes": a.overhead_bytes, "gpu_util": a.gpu_util, "skip": list(a.skip),
        },
        "models": [s.name for s in plan.models],
        "gpus": [g.name for g in plan.gpus],
        "dtypes": list(plan.dtypes),
        "contexts": list(plan.contexts),
        "batches": list(plan.batches),
        "rows": rows,
    }
