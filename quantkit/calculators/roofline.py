"""Speed bounds from the roofline model (vendor peak bandwidth and dense bf16 FLOP/s).

Decode is memory-bound: each step reads the active weights once plus every sequence's KV cache,
so tokens/s (all sequences) <= batch x bandwidth / bytes read per step. Prefill is compute-bound:
time >= FLOPs / peak, FLOPs = 2 x active params x tokens + causal attention (QK^T and AV:
2 x tokens x attended x heads x head_dim per layer, where attended averages context/2).
Decode turns compute-bound at the batch where 2 x active params x batch / peak equals the bytes
read per step / bandwidth.

MoE: one decode step routes each of the batch's tokens to k of E experts per layer, so it reads
the dense weights plus every expert that at least one token picked. Under uniform, independent
routing the expected fraction of a layer's experts read is 1 - (1 - k/E)^batch (k/E at batch 1,
exact; 90% of Mixtral's 8 experts at batch 8); ``moe_read_fraction``. Real routers are skewed,
which reads fewer distinct experts, so at batch > 1 this is the expected read under the uniform
assumption, not a guaranteed bound. The compute-bound batch is then solved numerically.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantkit.calculators.kv_cache import kv_cache
from quantkit.calculators.memory import Setup, kv_heads_per_gpu
from quantkit.calculators.params import count_params
from quantkit.calculators.weights import DTYPE_BITS, QUANTIZED, checkpoint_bytes, routed_bytes
from quantkit.catalogue import GpuSpec
from quantkit.spec import ModelSpec


@dataclass(frozen=True)
class Roofline:
    decode_bytes_per_step: int  # per GPU
    decode_tokens_per_s: float  # all sequences of the batch together
    prefill_flops: int  # whole model, one prefill of batch x context
    prefill_seconds: float
    compute_bound_batch: float | None  # None: KV reads grow as fast as compute, never bound


def _attention_flops(spec: ModelSpec, batch: int, context: int) -> int:
    width = spec.num_heads * (spec.head_dim + (spec.v_head_dim if spec.mla else spec.head_dim))
    flops = 0
    for t in spec.layer_types:
        if t == "sliding_attention" and spec.sliding_window and context > spec.sliding_window:
            w = spec.sliding_window
            attended = w * (w + 1) // 2 + (context - w) * w
        else:
            attended = context * (context + 1) // 2
        flops += 2 * attended * width
    return batch * flops


def moe_read_fraction(experts_per_token: int, experts: int, batch: float) -> float:
    """Expected fraction of a layer's experts that ``batch`` tokens (top-k each) read, uniform routing."""
    return 1.0 - (1.0 - experts_per_token / experts) ** batch


def all_routed_bytes(spec: ModelSpec, dtype: str, group_size: int | None, skip: tuple[str, ...],
                     scale_bytes: int = 2) -> int:
    """Bytes of all routed experts at ``dtype`` (0 for dense models), as decode reads them."""
    if not spec.is_moe:
        return 0
    if dtype in QUANTIZED:
        return routed_bytes(spec, dtype, group_size, skip, scale_bytes, 2)
    return count_params(spec).experts * DTYPE_BITS[dtype] // 8


def decode_weight_bytes(spec: ModelSpec, s: Setup, batch: float) -> float:
    """Weight bytes one decode step of ``batch`` sequences reads (whole model, before TP): the
    batch-1 active bytes, plus for MoE the extra experts a larger batch touches (module docstring)."""
    return _weight_reader(spec, s)(batch)


def _weight_reader(spec: ModelSpec, s: Setup):
    """``batch -> decode_weight_bytes``, with the byte counts computed once (for bisection)."""
    active = checkpoint_bytes(spec, s.dtype, s.group_size, s.skip, s.scale_bytes).active
    if not spec.is_moe:
        return lambda batch: active
    k, e = spec.experts_per_token, spec.num_experts
    routed = all_routed_bytes(spec, s.dtype, s.group_size, s.skip, s.scale_bytes)
    return lambda batch: active if batch == 1 else active + routed * (moe_read_fraction(k, e, batch) - k / e)


def roofline(spec: ModelSpec, s: Setup, gpu: GpuSpec, tp: int = 1) -> Roofline:
    read = _weight_reader(spec, s)
    weights = read(s.batch) / tp
    kv = kv_cache(spec, s.batch, s.context, s.kv_dtype_bytes, s.block_size).total
    kv = kv * kv_heads_per_gpu(spec, tp)
    step_bytes = weights + kv
    bw = gpu.memory_bandwidth_bytes_per_s
    active = count_params(spec).active
    tokens = s.batch * s.context
    flops = 2 * active * tokens + _attention_flops(spec, s.batch, s.context)
    peak = gpu.bf16_dense_flops * tp
    # 2*P*B/peak = (W + B*kv_seq)/bw  =>  B = W*peak_gpu / (2*P/tp*bw - kv_seq*peak_gpu)
    kv_seq = kv / s.batch
    denom = 2 * active / tp * bw - kv_seq * gpu.bf16_dense_flops
    if denom <= 0:
        crit = None
    elif not spec.is_moe:
        crit = weights * gpu.bf16_dense_flops / denom
    else:  # W grows with the batch (more experts read): bisect compute time = memory time
        crit = _moe_crossover(read, tp, denom, gpu.bf16_dense_flops)
    return Roofline(
        decode_bytes_per_step=int(step_bytes),
        decode_tokens_per_s=s.batch * bw / step_bytes,
        prefill_flops=flops,
        prefill_seconds=flops / peak,
        compute_bound_batch=crit,
    )


def _moe_crossover(read, tp: int, denom: float, peak_gpu: float) -> float:
    """The batch B where B x denom = W(B) / tp x peak_gpu (``read``: B -> W(B), the weight bytes
    a step reads). The difference is negative near 0 and positive at the dense answer for all
    experts read, and W is increasing and concave in B, so there is one crossing; bisection to
    1e-9 relative."""
    lo, hi = 0.0, read(float("inf")) / tp * peak_gpu / denom
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid * denom >= read(mid) / tp * peak_gpu:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-9 * hi:
            break
    return hi
