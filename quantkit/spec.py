"""One frozen dataclass for a decoder LLM's architecture, built from a Hugging Face config.json.

Pure Python (no torch). Every field names the config.json key it comes from; derived values are
properties. ``ModelSpec.from_hf_config`` raises ``ConfigError`` naming the missing or bad field.

Supported families: Llama 2/3/3.1/3.2, Mistral, Mixtral, Qwen2/2.5 (+MoE), Qwen3, Gemma/Gemma-2,
Phi-3, DeepSeek-V2/V3 (MLA, MoE), and GPT-NeoX/Falcon/StarCoder2-style plain MLPs with LayerNorm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

from quantkit.boundary.numbers import check_int
from quantkit.errors import ConfigError

# model_type -> (mlp kind, norm kind, attention o_proj has bias when attention_bias)
_GATED = "gated"  # SwiGLU/GeGLU: gate, up, down
_PLAIN = "plain"  # up, down (GELU)
_FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {},
    "mixtral": {},
    "qwen2": {"qkv_bias_default": True, "o_bias": False},
    "qwen2_moe": {"qkv_bias_default": True, "o_bias": False},
    "qwen3": {"qk_norm": True},
    "qwen3_moe": {"qk_norm": True},
    "gemma": {},
    "gemma2": {"norms_per_layer": 4},
    "gemma3_text": {"norms_per_layer": 4, "qk_norm": True},
    "phi3": {"fused": True},
    "deepseek_v2": {"mla": True},
    "deepseek_v3": {"mla": True},
    "starcoder2": {"mlp": _PLAIN, "norm": "layer", "bias_key": "use_bias"},
    # gpt-oss: attention sinks (one logit per head and layer), biased router and experts
    "gpt_oss": {"sinks": True, "router_bias": True, "expert_bias": True},
}


def is_supported(cfg: Mapping[str, Any]) -> bool:
    """True if ``ModelSpec.from_hf_config`` covers this config.json's architecture (model_type)."""
    if isinstance(cfg, Mapping) and "text_config" in cfg and "hidden_size" not in cfg:
        cfg = cfg["text_config"]
    return isinstance(cfg, Mapping) and cfg.get("model_type") in _FAMILIES


def _req(cfg: Mapping[str, Any], key: str, kind=int) -> Any:
    if key not in cfg or cfg[key] is None:
        raise ConfigError(f"config.json is missing the field {key!r}")
    value = cfg[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigError(f"config.json field {key!r} must be a positive integer, got {value!r}")
    if kind is int:
        check_int(f"config.json field {key!r}", value, error=ConfigError)
    return value


def _opt_int(cfg: Mapping[str, Any], key: str, default: int | None = None) -> int | None:
    value = cfg.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"config.json field {key!r} must be a non-negative integer, got {value!r}")
    return check_int(f"config.json field {key!r}", value, least=0, error=ConfigError)


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only LLM's architecture. Field comments name the config.json key."""

    name: str  # catalogue name, or the folder / file it was read from
    model_type: str  # model_type
    vocab_size: int  # vocab_size
    hidden_size: int  # hidden_size
    intermediate_size: int  # intermediate_size (dense MLP)
    num_layers: int  # num_hidden_layers
    num_heads: int  # num_attention_heads
    num_kv_heads: int  # num_key_value_heads (absent = num_attention_heads, i.e. MHA)
    head_dim: int  # head_dim (absent = hidden_size // num_attention_heads)
    max_context: int  # max_position_embeddings
    tie_word_embeddings: bool  # tie_word_embeddings
    qkv_bias: bool  # attention_bias (Qwen2: always true)
    o_bias: bool  # attention_bias for o_proj (Llama yes, Qwen2 no)
    mlp_bias: bool  # mlp_bias
    mlp_kind: str  # "gated" (gate, up, down) or "plain" (up, down)
    norm_kind: str  # "rms" (weight) or "layer" (weight + bias)
    norms_per_layer: int  # 2; Gemma-2 has 4 (pre/post attention and MLP)
    qk_norm: bool  # Qwen3/Gemma-3 RMSNorm over q and k (head_dim each)
    fused_projections: bool  # Phi-3: qkv_proj and gate_up_proj (same counts, other names)
    torch_dtype: str | None  # torch_dtype / dtype
    # Sliding windows: layer_types[i] == "sliding_attention" holds min(context, sliding_window)
    sliding_window: int | None  # sliding_window (when in effect)
    layer_types: tuple[str, ...]  # layer_types, or derived per family
    # Mixture of experts
    num_experts: int = 0  # num_local_experts / n_routed_experts / num_experts
    experts_per_token: int = 0  # num_experts_per_tok
    moe_intermediate_size: int = 0  # moe_intermediate_size (Mixtral: intermediate_size)
    shared_experts: int = 0  # n_shared_experts
    attn_sinks: bool = False  # gpt-oss: a learned sink logit per attention head and layer
    router_has_bias: bool = False  # gpt-oss: the router (E x hidden) has a bias (E)
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE shared_expert_intermediate_size
    shared_expert_gate: bool = False  # Qwen2-MoE has a 1-output gate for its shared expert
    router_bias: bool = False  # DeepSeek-V3 e_score_correction_bias (noaux_tc)
    moe_layers: tuple[bool, ...] = ()  # per layer: MoE or dense
    # Multi-head latent attention (DeepSeek-V2/V3)
    mla: bool = False
    q_lora_rank: int | None = None  # q_lora_rank (None: plain q_proj)
    kv_lora_rank: int = 0  # kv_lora_rank
    qk_rope_head_dim: int = 0  # qk_rope_head_dim
    qk_nope_head_dim: int = 0  # qk_nope_head_dim
    v_head_dim: int = 0  # v_head_dim
    # Pre-quantized checkpoints: what config.json's quantization_config says (None: not quantized)
    quantization: "QuantInfo | None" = None
    source: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # ---- derived -------------------------------------------------------------------------
    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def attention_kind(self) -> str:
        if self.mla:
            return "MLA"
        if self.num_kv_heads == 1:
            return "MQA"
        if self.num_kv_heads < self.num_heads:
            return "GQA"
        return "MHA"

    @cached_property  # hot in plan sweeps; the frozen dataclass stays hashable and equal
    def num_sliding_layers(self) -> int:
        return sum(t == "sliding_attention" for t in self.layer_types)

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any], name: str | None = None) -> "ModelSpec":
        """Build from a config.json dict. Raises ``ConfigError`` naming the bad field."""
        if not isinstance(cfg, Mapping):
            raise ConfigError("config.json must hold a JSON object")
        if "text_config" in cfg and "hidden_size" not in cfg:  # multimodal wrappers
            cfg = cfg["text_config"]
        model_type = cfg.get("model_type")
        if not isinstance(model_type, str):
            raise ConfigError("config.json is missing the field 'model_type'")
        fam = _FAMILIES.get(model_type)
        if fam is None:
            known = ", ".join(sorted(_FAMILIES))
            raise ConfigError(f"model_type {model_type!r} is not supported; supported: {known}")
        name = name or cfg.get("_quantkit", {}).get("name") or cfg.get("_name_or_path") or model_type
        hidden = _req(cfg, "hidden_size")
        heads = _req(cfg, "num_attention_heads")
        layers = _req(cfg, "num_hidden_layers")
        vocab = _req(cfg, "vocab_size")
        kv_heads = _opt_int(cfg, "num_key_value_heads") or heads
        if heads % kv_heads:
            raise ConfigError(
                f"config.json field 'num_key_value_heads' ({kv_heads}) must divide "
                f"'num_attention_heads' ({heads})"
            )
        head_dim = _opt_int(cfg, "head_dim") or (hidden // heads)
        mla = bool(fam.get("mla"))
        bias_key = fam.get("bias_key", "attention_bias")
        attn_bias = bool(cfg.get(bias_key, fam.get("qkv_bias_default", False)))
        if model_type in ("qwen2", "qwen2_moe"):
            attn_bias = True  # Qwen2Attention always has q/k/v biases
        mlp_bias = bool(cfg.get("mlp_bias", cfg.get("use_bias", False))) or bool(fam.get("expert_bias"))
        kw: dict[str, Any] = {}
        if mla:
            kw.update(
                mla=True,
                q_lora_rank=_opt_int(cfg, "q_lora_rank"),
                kv_lora_rank=_req(cfg, "kv_lora_rank"),
                qk_rope_head_dim=_req(cfg, "qk_rope_head_dim"),
                qk_nope_head_dim=_req(cfg, "qk_nope_head_dim"),
                v_head_dim=_req(cfg, "v_head_dim"),
            )
            head_dim = kw["qk_nope_head_dim"] + kw["qk_rope_head_dim"]
        kw.update(_moe_fields(cfg, model_type, layers))
        kw.update(attn_sinks=bool(fam.get("sinks")), router_has_bias=bool(fam.get("router_bias")))
        sliding, layer_types = _sliding_fields(cfg, model_type, layers)
        dtype = cfg.get("torch_dtype") or cfg.get("dtype")
        return cls(
            name=str(name),
            model_type=model_type,
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=_req(cfg, "intermediate_size"),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            max_context=_req(cfg, "max_position_embeddings"),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", model_type.startswith("gemma"))),
            qkv_bias=attn_bias,
            o_bias=attn_bias and fam.get("o_bias", True),
            mlp_bias=mlp_bias,
            mlp_kind=fam.get("mlp", _GATED),
            norm_kind=fam.get("norm", "rms"),
            norms_per_layer=fam.get("norms_per_layer", 2),
            qk_norm=bool(fam.get("qk_norm")),
            fused_projections=bool(fam.get("fused")),
            torch_dtype=str(dtype) if dtype else None,
            sliding_window=sliding,
            layer_types=layer_types,
            quantization=_quant_info(cfg.get("quantization_config")),
            source=dict(cfg.get("_quantkit", {})),
            **kw,
        )


@dataclass(frozen=True)
class QuantInfo:
    """A checkpoint's own quantization_config, read for the default ``--dtype`` of an estimate.

    ``dtype`` is None when quantkit does not understand ``method`` (the estimate then asks for
    ``--dtype``). ``skip`` holds the modules the checkpoint keeps unquantized (patterns as in
    ``quantkit.selection``; compressed-tensors' ``re:`` regexes included).
    """

    method: str
    dtype: str | None
    group_size: int | None = None
    skip: tuple[str, ...] = ("lm_head",)
    scale_bytes: int = 2
    meta_bytes: int = 0  # per quantized linear beyond values and scales (weights.checkpoint_bytes)


_SCALE_BYTES = {"torch.float32": 4, "float32": 4, "torch.float16": 2, "float16": 2,
                "torch.bfloat16": 2, "bfloat16": 2}


def _quant_info(qc: Any) -> QuantInfo | None:
    if not qc:
        return None
    if not isinstance(qc, Mapping):
        raise ConfigError("config.json field 'quantization_config' must be a JSON object")
    method = str(qc.get("quant_method", "unknown"))
    if method == "compressed-tensors":
        groups = list((qc.get("config_groups") or {}).values())
        weights = groups[0].get("weights") if groups and isinstance(groups[0], Mapping) else None
        if not weights:
            return QuantInfo(method, None)
        bits, kind = weights.get("num_bits"), weights.get("type", "int")
        dtype = {(8, "int"): "int8", (4, "int"): "int4", (8, "float"): "fp8"}.get((bits, kind))
        group = weights.get("group_size") if weights.get("strategy") == "group" else None
        skip = tuple(qc.get("ignore") or ())
        scale = _SCALE_BYTES.get(str(weights.get("scale_dtype")), 2)
        fmt = groups[0].get("format") or qc.get("format")
        # pack-quantized stores an int64 [out, in] weight_shape per linear: 16 bytes
        meta = 16 if fmt == "pack-quantized" and kind == "int" else 0
        return QuantInfo(method, dtype, group, skip, scale, meta)
    if method == "fp8":  # DeepSeek-V3 style; block scales are counted as per-channel scales
        return QuantInfo(method, "fp8", None, _module_patterns(qc.get("modules_to_not_convert") or ("lm_head",)), 4)
    if method == "mxfp4":  # gpt-oss: 4-bit values + one 8-bit (E8M0) scale per 32, experts only
        return QuantInfo(method, "int4", 32, _module_patterns(qc.get("modules_to_not_convert") or ("lm_head",)), 1)
    if method in ("gptq", "awq"):
        bits = qc.get("bits", qc.get("w_bit"))
        group = qc.get("group_size", qc.get("q_group_size"))
        dtype = {8: "int8", 4: "int4"}.get(bits)
        return QuantInfo(method, dtype, group if isinstance(group, int) and group > 0 else None)
    if method == "bitsandbytes":
        if qc.get("load_in_8bit"):
            return QuantInfo(method, "int8", None, tuple(qc.get("llm_int8_skip_modules") or ("lm_head",)), 4)
        if qc.get("load_in_4bit"):
            return QuantInfo(method, "int4", 64, tuple(qc.get("llm_int8_skip_modules") or ("lm_head",)), 4)
    return QuantInfo(method, None)


def _module_patterns(names) -> tuple[str, ...]:
    """transformers' ``modules_to_not_convert`` names a module and everything inside it
    (``model.layers.*.self_attn``): as quantkit skip patterns, each name and ``name.*``."""
    out: list[str] = []
    for n in names:
        out += [str(n), f"{n}.*"]
    return tuple(out)


def _moe_fields(cfg: Mapping[str, Any], model_type: str, layers: int) -> dict[str, Any]:
    experts = _opt_int(cfg, "num_local_experts") or _opt_int(cfg, "n_routed_experts") or 0
    if model_type in ("qwen2_moe", "qwen3_moe"):
        # config.json says num_experts; transformers 5's Qwen3MoeConfig.to_dict() num_local_experts
        experts = _opt_int(cfg, "num_experts") or _opt_int(cfg, "num_local_experts") or 0
    if not experts:
        return {"moe_layers": (False,) * layers}
    top_k = _req(cfg, "num_experts_per_tok")
    if top_k > experts:
        raise ConfigError(f"config.json field 'num_experts_per_tok' ({top_k}) exceeds the number of "
                          f"experts ({experts})")
    if model_type in ("mixtral", "gpt_oss"):
        moe_inter = _req(cfg, "intermediate_size")
    else:
        moe_inter = _req(cfg, "moe_intermediate_size")
    first_dense = _opt_int(cfg, "first_k_dense_replace") or 0
    freq = _opt_int(cfg, "moe_layer_freq") or _opt_int(cfg, "decoder_sparse_step") or 1
    sparse_step_offset = model_type in ("qwen2_moe", "qwen3_moe")
    mlp_only = set(cfg.get("mlp_only_layers") or [])
    moe_layers = []
    for i in range(layers):
        if sparse_step_offset:
            is_moe = i not in mlp_only and (i + 1) % freq == 0
        else:
            is_moe = i >= first_dense and i % freq == 0
        moe_layers.append(is_moe)
    return {
        "num_experts": experts,
        "experts_per_token": top_k,
        "moe_intermediate_size": moe_inter,
        "shared_experts": _opt_int(cfg, "n_shared_experts") or 0,
        "shared_expert_intermediate_size": _opt_int(cfg, "shared_expert_intermediate_size") or 0,
        "shared_expert_gate": model_type == "qwen2_moe",
        "router_bias": model_type == "deepseek_v3" and cfg.get("topk_method", "noaux_tc") == "noaux_tc",
        "moe_layers": tuple(moe_layers),
    }


def _sliding_fields(cfg: Mapping[str, Any], model_type: str, layers: int):
    """Which layers hold a bounded window of tokens, following transformers' rules."""
    window = cfg.get("sliding_window")
    types = cfg.get("layer_types")
    if types is not None:
        if len(types) != layers or any(t not in ("sliding_attention", "full_attention") for t in types):
            raise ConfigError(
                "config.json field 'layer_types' must list 'sliding_attention' or "
                f"'full_attention' for each of the {layers} layers"
            )
        if "sliding_attention" in types and not window:
            raise ConfigError("config.json has sliding layers in 'layer_types' but no 'sliding_window'")
        return (window if "sliding_attention" in types else None), tuple(types)
    if not window:
        return None, ("full_attention",) * layers
    if not isinstance(window, int) or window <= 0:
        raise ConfigError(f"config.json field 'sliding_window' must be a positive integer, got {window!r}")
    if model_type in ("gemma2", "gemma3_text"):
        # Gemma-2 alternates: even layers (0, 2, ...) are local (sliding), odd layers global.
        pattern = cfg.get("sliding_window_pattern", 2)
        types = tuple(
            "sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)
        )
        return window, types
    if model_type in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"):
        if not cfg.get("use_sliding_window", False):
            return None, ("full_attention",) * layers
        # transformers: layers at index >= max_window_layers use the window
        max_window_layers = cfg.get("max_window_layers", layers)
        types = tuple(
            "sliding_attention" if i >= max_window_layers else "full_attention" for i in range(layers)
        )
        return window, types
    if model_type in ("mistral", "mixtral", "phi3", "starcoder2"):
        return window, ("sliding_attention",) * layers
    return None, ("full_attention",) * layers


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = ["ModelSpec", "ceil_div"]
