"""Speed bounds from the roofline model (vendor peak bandwidth and dense bf16 FLOP/s).

Decode is memory-bound: each step reads the active weights once plus every sequence's KV cache,
so tokens/s (all sequences) <= batch x bandwidth / bytes read per step. Prefill is compute-bound:
time >= FLOPs / peak, FLOPs = 2 x active params x tokens + causal attention (QK^T and AV:
2 x tokens x attended x heads x head_dim per layer, where attended averages context/2).
Decode turns compute-bound at the batch where 2 x active params x batch / peak equals the bytes
read per step / bandwidth. MoE: at batch > 1 more experts are read than at batch 1; the bound
uses the batch-1 active weights, so it is optimistic there.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantkit.calculators.kv_cache import kv_cache
from quantkit.calculators.memory import Setup, kv_heads_per_gpu
from quantkit.calculators.params import count_params
from quantkit.calculators.weights import checkpoint_bytes
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


def roofline(spec: ModelSpec, s: Setup, gpu: GpuSpec, tp: int = 1) -> Roofline:
    weights = checkpoint_bytes(spec, s.dtype, s.group_size, s.skip, s.scale_bytes).active / tp
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
    crit = weights * gpu.bf16_dense_flops / denom if denom > 0 else None
    return Roofline(
        decode_bytes_per_step=int(step_bytes),
        decode_tokens_per_s=s.batch * bw / step_bytes,
        prefill_flops=flops,
        prefill_seconds=flops / peak,
        compute_bound_batch=crit,
    )
