"""Inference (or training) memory of one GPU's share of a model, component by component."""

from __future__ import annotations

from dataclasses import dataclass

from quantkit.calculators import activations as act
from quantkit.calculators.kv_cache import kv_cache
from quantkit.calculators.params import count_params
from quantkit.calculators.weights import checkpoint_bytes
from quantkit.selection import DEFAULT_SKIP
from quantkit.spec import ModelSpec, ceil_div


@dataclass(frozen=True)
class Memory:
    """Bytes on one GPU (the whole model when tp == 1)."""

    weights: int
    kv_cache: int
    activations: int
    logits: int
    overhead: int
    optimizer: int = 0  # training only: grads + fp32 master + Adam states

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.logits + self.overhead + self.optimizer


@dataclass(frozen=True)
class Setup:
    """Everything but the model that decides the memory (``estimate`` fills every field)."""

    dtype: str = "bf16"
    kv_dtype_bytes: int = 2
    batch: int = 1
    context: int = 4096
    block_size: int | None = None
    prefill_chunk: int = act.DEFAULT_PREFILL_CHUNK
    group_size: int | None = None
    skip: tuple[str, ...] = DEFAULT_SKIP
    overhead_bytes: int = act.DEFAULT_OVERHEAD_BYTES
    train: bool = False
    scale_bytes: int = 2  # bytes per quantization scale
    meta_bytes: int = 0  # bytes per quantized linear beyond values and scales (weight_shape)


def kv_heads_per_gpu(spec: ModelSpec, tp: int) -> float:
    """Fraction of the KV cache each GPU holds: heads are split, replicated when tp > kv_heads.

    MLA's latent is shared by all heads, so every GPU holds all of it (vLLM's layout).
    """
    if spec.mla:
        return 1.0
    return max(1, spec.num_kv_heads // tp) / spec.num_kv_heads


def valid_tp(spec: ModelSpec, tp: int) -> bool:
    """TP must divide the attention heads; KV heads must divide tp or be divisible by it."""
    if spec.num_heads % tp:
        return False
    kv = spec.num_kv_heads
    return spec.mla or kv % tp == 0 or tp % kv == 0


def memory(spec: ModelSpec, s: Setup, tp: int = 1) -> Memory:
    """Per-GPU memory with tensor parallelism over ``tp`` GPUs (weights split evenly)."""
    if s.train:
        params = count_params(spec).total
        return Memory(
            weights=ceil_div(params * 2, tp),  # bf16/fp16 weights
            kv_cache=0,
            activations=ceil_div(act.training_activation_bytes(spec, s.batch, s.context), tp),
            logits=s.batch * s.context * spec.vocab_size * 4,
            overhead=s.overhead_bytes,
            optimizer=ceil_div(act.training_bytes(params) - params * 2, tp),
        )
    weights = checkpoint_bytes(spec, s.dtype, s.group_size, s.skip, s.scale_bytes, 2, s.meta_bytes).total
    kv = kv_cache(spec, s.batch, s.context, s.kv_dtype_bytes, s.block_size).total
    # one prefill forward pass holds at most prefill_chunk tokens of all sequences together
    tokens = min(s.batch * s.context, s.prefill_chunk)
    return Memory(
        weights=ceil_div(weights, tp),
        kv_cache=int(kv * kv_heads_per_gpu(spec, tp)),
        activations=act.prefill_activation_bytes(spec, tokens, 2, tp),
        logits=act.logits_bytes(spec, s.batch),
        overhead=s.overhead_bytes,
    )
