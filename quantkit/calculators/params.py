"""Exact parameter counts from a ModelSpec, itemised by component, plus the list of linear layers.

The counts equal ``sum(p.numel() for p in model.parameters())`` of the transformers model built
from the same config (tied ``lm_head`` counted once), which tests check card by card on the meta
device. Linear layers are named as in the Hugging Face checkpoints (``model.layers.0.mlp.up_proj``)
so that the quantizer's skip filter applies to them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

from quantkit.spec import ModelSpec


@dataclass(frozen=True)
class Linear:
    """One linear layer (or ``count`` identical ones, e.g. experts) as stored in a checkpoint."""

    name: str  # module name; the weight is "<name>.weight", shape (out_features, in_features)
    in_features: int
    out_features: int
    bias: bool
    kind: str  # "attention", "mlp", "expert", "shared_expert", "lm_head"
    active: bool = True  # read for every token (False for routed experts)

    @property
    def params(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class ParamBreakdown:
    """Parameter counts by component. ``total`` = sum of the components."""

    embedding: int
    attention: int  # q/k/v/o (or MLA projections) incl. biases and MLA/qk norms
    mlp: int  # dense MLPs
    experts: int  # routed experts (MoE)
    shared_experts: int  # shared experts and their gates (MoE)
    router: int  # expert routers (gate weights)
    norms: int  # layer norms outside attention, final norm
    lm_head: int  # 0 when tied to the embeddings
    active: int  # parameters used per token (MoE: top-k experts)

    @property
    def total(self) -> int:
        return (
            self.embedding + self.attention + self.mlp + self.experts + self.shared_experts
            + self.router + self.norms + self.lm_head
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "embedding": self.embedding, "attention": self.attention, "mlp": self.mlp,
            "experts": self.experts, "shared_experts": self.shared_experts, "router": self.router,
            "norms": self.norms, "lm_head": self.lm_head, "total": self.total, "active": self.active,
        }


def _norm_params(spec: ModelSpec, width: int) -> int:
    return width * (2 if spec.norm_kind == "layer" else 1)


def _attention_linears(spec: ModelSpec, p: str) -> list[Linear]:
    h = spec.hidden_size
    if spec.mla:
        qk = spec.qk_nope_head_dim + spec.qk_rope_head_dim
        out = []
        if spec.q_lora_rank is None:
            out.append(Linear(f"{p}.q_proj", h, spec.num_heads * qk, False, "attention"))
        else:
            out.append(Linear(f"{p}.q_a_proj", h, spec.q_lora_rank, spec.qkv_bias, "attention"))
            out.append(Linear(f"{p}.q_b_proj", spec.q_lora_rank, spec.num_heads * qk, False, "attention"))
        out.append(Linear(f"{p}.kv_a_proj_with_mqa", h, spec.kv_lora_rank + spec.qk_rope_head_dim,
                          spec.qkv_bias, "attention"))
        out.append(Linear(f"{p}.kv_b_proj", spec.kv_lora_rank,
                          spec.num_heads * (spec.qk_nope_head_dim + spec.v_head_dim), False, "attention"))
        out.append(Linear(f"{p}.o_proj", spec.num_heads * spec.v_head_dim, h, spec.qkv_bias, "attention"))
        return out
    if spec.fused_projections:
        return [
            Linear(f"{p}.qkv_proj", h, spec.q_dim + 2 * spec.kv_dim, spec.qkv_bias, "attention"),
            Linear(f"{p}.o_proj", spec.q_dim, h, spec.o_bias, "attention"),
        ]
    return [
        Linear(f"{p}.q_proj", h, spec.q_dim, spec.qkv_bias, "attention"),
        Linear(f"{p}.k_proj", h, spec.kv_dim, spec.qkv_bias, "attention"),
        Linear(f"{p}.v_proj", h, spec.kv_dim, spec.qkv_bias, "attention"),
        Linear(f"{p}.o_proj", spec.q_dim, h, spec.o_bias, "attention"),
    ]


def _mlp_linears(spec: ModelSpec, p: str, inter: int, kind: str, active: bool = True) -> list[Linear]:
    h, b = spec.hidden_size, spec.mlp_bias
    if spec.mlp_kind == "plain":
        return [Linear(f"{p}.c_fc", h, inter, b, kind, active), Linear(f"{p}.c_proj", inter, h, b, kind, active)]
    if spec.fused_projections:
        return [Linear(f"{p}.gate_up_proj", h, 2 * inter, b, kind, active),
                Linear(f"{p}.down_proj", inter, h, b, kind, active)]
    return [
        Linear(f"{p}.gate_proj", h, inter, b, kind, active),
        Linear(f"{p}.up_proj", h, inter, b, kind, active),
        Linear(f"{p}.down_proj", inter, h, b, kind, active),
    ]


def _moe_linears(spec: ModelSpec, p: str) -> tuple[list[Linear], int]:
    """Linear layers of one MoE block and its router parameter count.

    Routed experts are named after the one module transformers 5 keeps them in,
    ``<layer>.mlp.experts`` (3-D tensors, Mixtral included), for every projection of every expert:
    that is the unit ``quantkit quantize`` swaps and skip patterns match, so both agree."""
    unit = f"{p}.mlp.experts"
    one = [replace(lin, name=unit)  # frozen: the same objects stand for every expert
           for lin in _mlp_linears(spec, unit, spec.moe_intermediate_size, "expert", False)]
    out: list[Linear] = one * spec.num_experts
    router = spec.num_experts * (spec.hidden_size + (1 if spec.router_has_bias else 0))
    if spec.model_type in ("mixtral", "gpt_oss"):
        return out, router
    # DeepSeek-V3's e_score_correction_bias (one fp32 per expert) is a buffer in transformers,
    # not a parameter, so it is not counted here (256 x 58 values: 59 KB in the checkpoint).
    if spec.shared_experts:
        inter = spec.moe_intermediate_size * spec.shared_experts
        out += _mlp_linears(spec, f"{p}.mlp.shared_experts", inter, "shared_expert")
    if spec.shared_expert_intermediate_size:
        out += _mlp_linears(spec, f"{p}.mlp.shared_expert", spec.shared_expert_intermediate_size,
                            "shared_expert")
    if spec.shared_expert_gate:
        out.append(Linear(f"{p}.mlp.shared_expert_gate", spec.hidden_size, 1, False, "shared_expert"))
    return out, router


@lru_cache(maxsize=256)
def linears(spec: ModelSpec) -> tuple[Linear, ...]:
    """Every linear layer of the model with its checkpoint name, in layer order."""
    out: list[Linear] = []
    for i in range(spec.num_layers):
        p = f"model.layers.{i}"
        out += _attention_linears(spec, f"{p}.self_attn")
        if spec.moe_layers and spec.moe_layers[i]:
            out += _moe_linears(spec, p)[0]
        else:
            out += _mlp_linears(spec, f"{p}.mlp", spec.intermediate_size, "mlp")
    if not spec.tie_word_embeddings:
        out.append(Linear("lm_head", spec.hidden_size, spec.vocab_size, False, "lm_head"))
    return tuple(out)


@lru_cache(maxsize=256)
def count_params(spec: ModelSpec) -> ParamBreakdown:
    """Exact parameter counts by component (see module docstring)."""
    h = spec.hidden_size
    sums = {"attention": 0, "mlp": 0, "expert": 0, "shared_expert": 0, "lm_head": 0}
    active_expert = 0
    router = 0
    for lin in linears(spec):
        sums[lin.kind] += lin.params
    for i in range(spec.num_layers):
        if spec.moe_layers and spec.moe_layers[i]:
            experts, r = _moe_linears(spec, f"model.layers.{i}")
            router += r
            routed = [x for x in experts if x.kind == "expert"]
            active_expert += sum(x.params for x in routed) * spec.experts_per_token // spec.num_experts
    attn_norms = 0
    if spec.mla:
        attn_norms = spec.kv_lora_rank + (spec.q_lora_rank or 0)
    if spec.qk_norm:
        attn_norms += 2 * spec.head_dim
    if spec.attn_sinks:
        attn_norms += spec.num_heads
    attention = sums["attention"] + attn_norms * spec.num_layers
    norms = _norm_params(spec, h) * (spec.num_layers * spec.norms_per_layer + 1)
    embedding = spec.vocab_size * h
    lm_head = sums["lm_head"]
    dense = embedding + attention + sums["mlp"] + sums["shared_expert"] + router + norms + lm_head
    return ParamBreakdown(
        embedding=embedding, attention=attention, mlp=sums["mlp"], experts=sums["expert"],
        shared_experts=sums["shared_expert"], router=router, norms=norms, lm_head=lm_head,
        active=dense + active_expert,
    )
