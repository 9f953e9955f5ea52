"""KV-cache memory.

Per layer and token: 2 x kv_heads x head_dim x bytes (keys and values). GQA/MQA fall out of
``kv_heads``. MLA (DeepSeek-V2/V3) caches the compressed latent instead: (kv_lora_rank +
qk_rope_head_dim) x bytes per layer and token, vLLM's layout; the decompressed size
(heads x (qk_head_dim + v_head_dim)) is reported for comparison. A sliding-window layer holds
min(context, window) tokens. With paged attention (``block_size``, 16 in vLLM) each sequence's
tokens per layer are rounded up to whole blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantkit.spec import ModelSpec, ceil_div

KV_DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}


def layer_bytes_per_token(spec: ModelSpec, kv_bytes: int) -> int:
    """Bytes one token occupies in one layer's cache."""
    if spec.mla:
        return (spec.kv_lora_rank + spec.qk_rope_head_dim) * kv_bytes
    return 2 * spec.num_kv_heads * spec.head_dim * kv_bytes


def decompressed_layer_bytes_per_token(spec: ModelSpec, kv_bytes: int) -> int:
    """MLA only: what the cache would hold with keys and values decompressed per head."""
    if not spec.mla:
        return layer_bytes_per_token(spec, kv_bytes)
    qk = spec.qk_nope_head_dim + spec.qk_rope_head_dim
    return spec.num_heads * (qk + spec.v_head_dim) * kv_bytes


def bytes_per_token(spec: ModelSpec, kv_bytes: int) -> int:
    """Sum over all layers of one token's cache bytes (windows not applied)."""
    return spec.num_layers * layer_bytes_per_token(spec, kv_bytes)


def tokens_held(context: int, window: int | None, block_size: int | None) -> int:
    """Tokens of one sequence a layer holds: min(context, window), rounded up to whole blocks."""
    tokens = context if window is None else min(context, window)
    if block_size:
        tokens = ceil_div(tokens, block_size) * block_size
    return tokens


@dataclass(frozen=True)
class KVCache:
    bytes_per_token: int  # all layers, one token, no window
    total: int  # batch x context, windows and blocks applied
    decompressed_total: int  # MLA: decompressed equivalent; = total otherwise
    sliding_layers: int
    full_layers: int


def kv_cache(
    spec: ModelSpec, batch: int, context: int, kv_bytes: int = 2, block_size: int | None = None
) -> KVCache:
    """KV cache for ``batch`` sequences each holding ``context`` tokens."""
    per_layer = layer_bytes_per_token(spec, kv_bytes)
    sliding = spec.num_sliding_layers
    full = spec.num_layers - sliding
    tokens_full = tokens_held(context, None, block_size)
    tokens_sliding = tokens_held(context, spec.sliding_window, block_size) if sliding else 0
    layer_tokens = full * tokens_full + sliding * tokens_sliding
    total = batch * layer_tokens * per_layer
    decompressed = batch * layer_tokens * decompressed_layer_bytes_per_token(spec, kv_bytes)
    return KVCache(spec.num_layers * per_layer, total, decompressed, sliding, full)
