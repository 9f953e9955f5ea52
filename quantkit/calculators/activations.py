"""Activation, logits, runtime-overhead and training memory: simple, documented models.

Inference (flash attention, so no context x context score matrix is kept): one prefill forward
pass holds min(batch x context, prefill_chunk) tokens; the peak inside one decoder layer is the
larger of
  MLP:       2 x hidden (residual + normed input) + 3 x intermediate (gate, up, act(gate)*up)
  attention: 2 x hidden + q + k + v + attention output
elements per token, at the activation dtype. MoE layers count top-k experts' intermediate plus
shared experts. Under tensor parallelism the intermediate/q/k/v terms are split over the GPUs.
Logits: generation keeps only the last position's logits (transformers' ``logits_to_keep=1``):
batch x vocab in bf16 plus its fp32 upcast.
Runtime overhead: the CUDA context, cuBLAS workspaces and allocator slack, taken as a constant per
GPU (``DEFAULT_OVERHEAD_BYTES``); it is calibrated against measured peaks by ``quantkit eval``.
Training (``--train``): mixed-precision Adam = 16 bytes per parameter (bf16 weights 2 + bf16
grads 2 + fp32 master weights 4 + Adam m 4 + v 4) plus activations of 34 x hidden bytes per token
and layer (Korthikanti et al. 2022, "Reducing Activation Recomputation", flash attention, no
recomputation); an approximation for GPT-style blocks, labelled as such.
"""

from __future__ import annotations

from quantkit.spec import ModelSpec, ceil_div

DEFAULT_OVERHEAD_BYTES = 512 * 2**20  # 512 MiB per GPU: CUDA context + cuBLAS workspace
DEFAULT_PREFILL_CHUNK = 8192  # tokens of all sequences in one prefill forward pass (chunked
# prefill; vLLM's max_num_batched_tokens is of this order). HF generate prefills batch x prompt.
TRAIN_BYTES_PER_PARAM = 16  # mixed-precision Adam
TRAIN_ACT_BYTES_PER_TOKEN_LAYER_HIDDEN = 34  # Korthikanti et al. 2022, with flash attention


def inter_per_token(spec: ModelSpec) -> int:
    dense = spec.intermediate_size
    if not spec.is_moe:
        return dense
    moe = spec.moe_intermediate_size * (spec.experts_per_token + spec.shared_experts)
    moe += spec.shared_expert_intermediate_size
    return max(moe, dense if not all(spec.moe_layers) else 0)


def prefill_activation_bytes(spec: ModelSpec, tokens: int, act_bytes: int = 2, tp: int = 1) -> int:
    """Peak transient activation bytes of one forward pass over ``tokens`` tokens (all sequences)."""
    h = spec.hidden_size
    inter = inter_per_token(spec)
    mlp_mult = 3 if spec.mlp_kind == "gated" else 2
    mlp = 2 * h + ceil_div(mlp_mult * inter, tp)
    if spec.mla:
        qk = spec.qk_nope_head_dim + spec.qk_rope_head_dim
        attn = 2 * h + ceil_div(spec.num_heads * (2 * qk + 2 * spec.v_head_dim), tp)
    else:
        attn = 2 * h + ceil_div(2 * spec.q_dim + 2 * spec.kv_dim, tp)
    return tokens * max(mlp, attn) * act_bytes


def logits_bytes(spec: ModelSpec, batch: int, positions: int = 1) -> int:
    """Logits of ``positions`` positions per sequence: bf16 output + its fp32 upcast."""
    return batch * positions * spec.vocab_size * (2 + 4)


def training_bytes(params: int) -> int:
    return params * TRAIN_BYTES_PER_PARAM


def training_activation_bytes(spec: ModelSpec, batch: int, context: int) -> int:
    return spec.num_layers * batch * context * spec.hidden_size * TRAIN_ACT_BYTES_PER_TOKEN_LAYER_HIDDEN
