"""A compact Llama-family decoder (Llama 2/3, Mistral, Qwen2) for measuring, not for training.

Module names are transformers' ``LlamaForCausalLM`` names (``model.embed_tokens``,
``model.layers.N.self_attn.{q,k,v,o}_proj``, ``model.layers.N.mlp.{gate,up,down}_proj``,
``model.layers.N.{input,post_attention}_layernorm``, ``model.norm``, ``lm_head``), so a Hugging Face
state dict loads as is and ``quantkit.quantize`` swaps the same linear layers it swaps there.

Three ways through the model (``forward(..., mode=)``), each with static shapes where it matters:

- ``"full"``: no cache, positions 0..T-1, causal attention over the T fresh tokens (perplexity).
- ``"prefill"``: the same attention, and k/v are also written to the static cache at 0..T-1.
  Causal attention without a mask is what lets SDPA pick the flash backend on CUDA.
- ``"step"``: tokens at ``input_pos`` (a (T,) long tensor on the device) write k/v into the
  preallocated cache and attend over the whole cache with a position mask. Every shape is fixed by
  ``setup_cache(batch, max_seq_len)``, so one decode step can be captured in a CUDA graph or
  compiled with ``torch.compile(mode="reduce-overhead")`` (see ``generate.py``).

Grouped-query attention never copies k/v in the cached path: the R = n_heads / n_kv query heads
that share a kv head are folded into the query-length axis, q (B, n_kv, R*T, D) against the cache
(B, n_kv, S, D), which is plain SDPA with a mask (mem-efficient backend on CUDA, any dtype).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from quantkit.errors import ConfigError
from quantkit.spec import ModelSpec

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
_ROPE_TYPES = ("default", "linear", "llama3")
# SDPA's enable_gqa keyword exists from torch 2.5; the flash backend (CUDA, fp16/bf16) and the CPU
# flash kernel support it, mem-efficient does not (it would fall back to the slow math backend).
_HAS_ENABLE_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


@dataclass(frozen=True)
class DecoderArgs:
    """What the runner needs: the architecture (``ModelSpec``) plus RoPE and norm constants."""

    spec: ModelSpec
    rms_norm_eps: float  # rms_norm_eps
    rope_theta: float  # rope_parameters.rope_theta / rope_theta
    rope_type: str  # rope_parameters.rope_type / rope_scaling.type: default, linear, llama3
    rope_params: Mapping[str, Any]  # factor, low_freq_factor, ... for scaled RoPE

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any]) -> "DecoderArgs":
        spec = ModelSpec.from_hf_config(cfg)
        if spec.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"the eval runner supports model_type {', '.join(SUPPORTED_MODEL_TYPES)}; "
                f"got {spec.model_type!r}"
            )
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"config.json field 'hidden_act' is {act!r}; the eval runner's "
                              f"SwiGLU MLP needs 'silu'")
        # transformers >= 5 writes rope_parameters; older configs rope_theta + rope_scaling.
        params = dict(cfg.get("rope_scaling") or {})
        params.update(cfg.get("rope_parameters") or {})
        theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type not in _ROPE_TYPES:
            raise ConfigError(
                f"config.json RoPE type {rope_type!r} is not supported by the eval runner; "
                f"supported: {', '.join(_ROPE_TYPES)}"
            )
        needed = {"linear": ("factor",), "llama3": (
            "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
        for key in needed.get(rope_type, ()):
            if key not in params:
                raise ConfigError(f"config.json rope_scaling of type {rope_type!r} needs {key!r}")
        eps = cfg.get("rms_norm_eps", 1e-6)
        return cls(spec=spec, rms_norm_eps=float(eps), rope_theta=theta, rope_type=rope_type,
                   rope_params=params)


def rope_inv_freq(args: DecoderArgs) -> torch.Tensor:
    """Inverse frequencies (head_dim/2,) in fp32, as transformers computes them."""
    dim = args.spec.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    p = args.rope_params
    if args.rope_type == "linear":
        return inv_freq / p["factor"]
    if args.rope_type == "llama3":
        # Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth ramp between.
        factor, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old_ctx = p["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_ctx / lo, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_ctx / hi) * ~(wavelen > old_ctx / lo)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32, then back to x's dtype before the weight (transformers' order).
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class KVCache(nn.Module):
    """Preallocated keys and values, (B, n_kv, S, head_dim) each; S = max_seq_len."""

    def __init__(self, batch: int, n_kv: int, max_seq_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)


class Attention(nn.Module):
    def __init__(self, args: DecoderArgs):
        super().__init__()
        s = args.spec
        self.n_heads, self.n_kv, self.head_dim = s.num_heads, s.num_kv_heads, s.head_dim
        self.q_proj = nn.Linear(s.hidden_size, s.q_dim, bias=s.qkv_bias)
        self.k_proj = nn.Linear(s.hidden_size, s.kv_dim, bias=s.qkv_bias)
        self.v_proj = nn.Linear(s.hidden_size, s.kv_dim, bias=s.qkv_bias)
        self.o_proj = nn.Linear(s.q_dim, s.hidden_size, bias=s.o_bias)
        self.kv_cache: KVCache | None = None

    def forward(self, x, cos, sin, mode: str, input_pos=None, mask=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]  # (B or 1, 1, T, D)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if mode == "step":
            out = self._cached(q, k, v, input_pos, mask)
        else:
            if mode == "prefill":
                self.kv_cache.k[:, :, :T] = k
                self.kv_cache.v[:, :, :T] = v
            out = self._fresh(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def _fresh(self, q, k, v, mask):
        """Causal attention over the T fresh tokens (mask only for a sliding window < T)."""
        causal = mask is None
        rep = self.n_heads // self.n_kv
        if rep > 1 and causal and _HAS_ENABLE_GQA and (
            q.device.type == "cpu" or q.dtype in (torch.float16, torch.bfloat16)
        ):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        if rep > 1:  # fp32 on CUDA or an explicit mask: expand k/v (what transformers does)
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)

    def _cached(self, q, k, v, input_pos, mask):
        """Write k/v at input_pos, then attend over the whole static cache; mask (T, S) bool."""
        cache = self.kv_cache
        cache.k.index_copy_(2, input_pos, k)
        cache.v.index_copy_(2, input_pos, v)
        B, H, T, D = q.shape
        rep = H // self.n_kv
        # Fold the R query heads of each kv head into the length axis: no k/v copy.
        qf = q.reshape(B, self.n_kv, rep * T, D)
        if T > 1 and rep > 1:
            mask = mask[None].expand(rep, -1, -1).reshape(rep * T, -1)
        out = F.scaled_dot_product_attention(qf, cache.k, cache.v, attn_mask=mask)
        return out.reshape(B, H, T, D)  # CUDA SDPA kernels return a transposed (non-contiguous) layout


class MLP(nn.Module):
    def __init__(self, args: DecoderArgs):
        super().__init__()
        s = args.spec
        self.gate_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=s.mlp_bias)
        self.up_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=s.mlp_bias)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=s.mlp_bias)

    def forward(self, x):
        # In place: at most 2 (tokens, intermediate) tensors alive instead of 4 (gate, up,
        # silu(gate), product); the values are those of silu(gate) * up.
        h = F.silu(self.gate_proj(x))
        h.mul_(self.up_proj(x))
        return self.down_proj(h)


class DecoderLayer(nn.Module):
    def __init__(self, args: DecoderArgs):
        super().__init__()
        d = args.spec.hidden_size
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(d, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(d, args.rms_norm_eps)

    def forward(self, x, cos, sin, mode, input_pos=None, mask=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mode, input_pos, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderBody(nn.Module):
    def __init__(self, args: DecoderArgs):
        super().__init__()
        s = args.spec
        # Left uninitialised: the loader and random_runner fill every weight. (Its normal_ init
        # on the meta device would import torch._dynamo, about 2 s, for nothing.)
        self.embed_tokens = nn.Embedding(s.vocab_size, s.hidden_size,
                                         _weight=torch.empty(s.vocab_size, s.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(args) for _ in range(s.num_layers))
        self.norm = RMSNorm(s.hidden_size, args.rms_norm_eps)


class Decoder(nn.Module):
    """The runner. Build with ``Decoder(DecoderArgs.from_hf_config(cfg))`` (on the meta device
    when loading) and fill with ``quantkit.evaluator.loader``."""

    def __init__(self, args: DecoderArgs):
        super().__init__()
        self.args = args
        s = args.spec
        self.model = DecoderBody(args)
        self.lm_head = nn.Linear(s.hidden_size, s.vocab_size, bias=False)
        self.tie_weights()
        self.sliding_window = s.sliding_window if s.num_sliding_layers == s.num_layers else None
        if s.sliding_window and self.sliding_window is None:
            raise ConfigError("the eval runner does not support a sliding window on only some layers")
        # Plain attributes, not buffers: rebuilt in fp32 for the current dtype/device on demand
        # (a buffer would be rounded by model.to(bf16) and stay on the meta device when loading).
        self.rope_cos = self.rope_sin = torch.empty(0)  # (n, head_dim)
        self.cache_pos = torch.empty(0, dtype=torch.long)  # (max_seq_len,) = arange
        self.cache_batch = 0

    # Names that modelbuild.assign_state_dict reads (the transformers PreTrainedModel conventions).
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq$"]

    @property
    def ties_embeddings(self) -> bool:
        # A quantized lm_head (int8 buffers) no longer shares the float embedding matrix.
        return self.args.spec.tie_word_embeddings and type(self.lm_head) is nn.Linear

    @property
    def all_tied_weights_keys(self) -> dict[str, str]:
        return {"lm_head.weight": "model.embed_tokens.weight"} if self.ties_embeddings else {}

    def tie_weights(self) -> None:
        if self.ties_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # ---- RoPE tables ----------------------------------------------------------------------
    def ensure_rope(self, n: int) -> None:
        """Tables (n, head_dim) of cos and sin for positions 0..n-1, in the model's float dtype."""
        dtype, device = self.model.norm.weight.dtype, self.model.norm.weight.device
        c = self.rope_cos
        if c.shape[0] >= n and c.dtype == dtype and c.device == device:
            return
        n = max(n, c.shape[0])
        t = torch.arange(n, device=device, dtype=torch.float32)
        freqs = t[:, None] * rope_inv_freq(self.args).to(device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)  # (n, head_dim): transformers' half layout
        self.rope_cos = emb.cos().to(dtype)
        self.rope_sin = emb.sin().to(dtype)

    # ---- static KV cache --------------------------------------------------------------------
    def setup_cache(self, batch: int, max_seq_len: int, dtype=None) -> None:
        """Preallocate the KV cache: 2 x layers x (batch, n_kv, max_seq_len, head_dim)."""
        s = self.args.spec
        ref = self.model.norm.weight
        dtype = dtype or ref.dtype
        for layer in self.model.layers:
            layer.self_attn.kv_cache = KVCache(batch, s.num_kv_heads, max_seq_len, s.head_dim,
                                               dtype, ref.device)
        self.cache_pos = torch.arange(max_seq_len, device=ref.device)
        self.cache_batch = batch
        self.ensure_rope(max_seq_len)

    def clear_cache(self) -> None:
        for layer in self.model.layers:
            layer.self_attn.kv_cache = None
        self.cache_pos = torch.empty(0, dtype=torch.long, device=self.cache_pos.device)
        self.cache_batch = 0

    @property
    def max_seq_len(self) -> int:
        return int(self.cache_pos.shape[0])

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, input_ids, input_pos=None, *, mode: str = "full", last_only: bool = False):
        """Logits (B, T, vocab) in the compute dtype (``last_only``: (B, 1, vocab)).

        ``input_ids`` (B, T) long. ``mode``: "full" (no cache), "prefill" (also fills the cache at
        0..T-1; needs ``setup_cache``) or "step" (``input_pos`` (T,) long, cache attention).
        """
        B, T = input_ids.shape
        mask = None
        if mode == "step":
            if self.cache_batch != B or input_pos is None:
                raise ValueError(f"mode='step' needs setup_cache(batch={B}) and input_pos")
            cos, sin = self.rope_cos[input_pos][None], self.rope_sin[input_pos][None]
            mask = self.cache_pos[None, :] <= input_pos[:, None]  # (T, S) bool
            if self.sliding_window is not None:
                mask = mask & (self.cache_pos[None, :] > input_pos[:, None] - self.sliding_window)
        elif mode in ("full", "prefill"):
            if mode == "prefill" and (self.cache_batch != B or self.max_seq_len < T):
                raise ValueError(f"prefill of ({B}, {T}) does not fit the cache: call setup_cache")
            self.ensure_rope(T)
            cos, sin = self.rope_cos[:T][None], self.rope_sin[:T][None]
            if self.sliding_window is not None and T > self.sliding_window:
                i = torch.arange(T, device=input_ids.device)
                mask = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - self.sliding_window)
        else:
            raise ValueError(f"mode must be 'full', 'prefill' or 'step', not {mode!r}")
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mode, input_pos, mask)
        x = self.model.norm(x)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x)

    def prefill(self, input_ids, last_only: bool = True):
        return self(input_ids, mode="prefill", last_only=last_only)

    def decode_step(self, input_ids, input_pos):
        """One decode step for CUDA graphs: (B, 1) ids at position input_pos (1,) -> (B, 1, V)."""
        return self(input_ids, input_pos, mode="step")
