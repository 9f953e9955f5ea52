"""Weight-only int8 for fused MoE experts: ``Int8Experts`` and the swap that makes it.

transformers 5 stores a layer's routed experts (Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3, gpt-oss,
...) as one module holding 3-D parameters, not as ``nn.Linear``: ``gate_up_proj`` (E, 2I, H) (or
``up_proj`` (E, I, H) for ungated experts) and ``down_proj`` (E, H, I), transposed as (E, in, out)
in some models, plus optional per-expert biases. Such a module is recognised by the flags that
transformers' ``@use_experts_implementation`` sets on it (``has_gate``, ``has_bias``,
``is_transposed``, ``is_concatenated``) and a 3-D ``down_proj``; ``is_fused_experts`` is the test.

``Int8Experts`` replaces the whole module. Quantization is exactly ``Int8Linear``'s
(``int8.quantize_weight``: symmetric absmax, per output channel or per group), applied to each
expert's matrix, one expert at a time. Its tensors, which are the
checkpoint tensors ``<module>.<name>``, are always in (E, out, in) layout whatever the layout of the
source model:

  gate_up_proj (or up_proj)   int8 (E, out, in)
  gate_up_proj_scale          (E, out, n_groups) in the scale dtype (bf16 by default)
  down_proj                   int8 (E, H, I)
  down_proj_scale             (E, H, n_groups)
  gate_up_proj_bias, down_proj_bias   bf16 (E, out), only when the model's experts have biases

The forward is transformers' eager expert loop: for each expert the batch routes a token to, both
projections go through ``quantkit.kernels.int8_linear`` (the dispatch ``Int8Linear`` uses: the
Triton kernels on CUDA, dequantize + ``F.linear`` elsewhere) and the gate through the source class's
own ``_apply_gate`` (so gpt-oss's clamped, interleaved SwiGLU is kept). Experts with a norm after
each expert (``has_post_expert_norm``) are refused with a ``ConfigError`` naming the module.
"""

from __future__ import annotations

import torch
from torch import nn

from quantkit.errors import ConfigError, InputError
from quantkit.kernels import dequantize, int8_linear
from quantkit.quantizers.int8 import BIAS_DTYPE, SCALE_TORCH_DTYPES, n_groups, quantize_weight_stats
from quantkit.quantizers.report import LayerReport, stats_report

_FLAGS = ("has_gate", "has_bias", "is_transposed", "is_concatenated")


def is_fused_experts(mod) -> bool:
    """True for a transformers fused-experts module (3-D expert weights, not ``nn.Linear``)."""
    down = getattr(mod, "down_proj", None)
    return (isinstance(mod, nn.Module) and not isinstance(mod, Int8Experts)
            and all(hasattr(mod, f) for f in _FLAGS)
            and isinstance(down, torch.Tensor) and down.dim() == 3)


def _projections(mod) -> tuple[str, str]:
    return ("gate_up_proj" if mod.has_gate else "up_proj", "down_proj")


def check_experts_supported(name: str, mod) -> None:
    if getattr(mod, "has_post_expert_norm", False):
        raise ConfigError(f"'{name}' ({type(mod).__name__}) applies a norm after each expert, which "
                          f"quantkit's int8 experts do not support; keep it in bf16 with --skip {name}")


class Int8Experts(nn.Module):
    """int8 weights for every routed expert of one MoE layer (see the module docstring)."""

    def __init__(self, source: nn.Module, group_size: int | None = None,
                 scale_dtype: torch.dtype = torch.bfloat16, device=None):
        """An empty shell (zeros, or nothing allocated with ``device="meta"``) shaped like the
        fused-experts module ``source``, keeping its flags, activation and gate function."""
        super().__init__()
        for key, value in vars(source).items():  # flags, sizes, config, gpt-oss's alpha/limit
            if not key.startswith("_") and key != "training" and not isinstance(value, torch.Tensor):
                setattr(self, key, value)
        for key, child in source.named_children():  # the activation (act_fn)
            self.add_module(key, child)
        # The source class's gate (SwiGLU, or gpt-oss's clamped interleaved one), a plain function
        # (pickles by qualified name) called with self: it reads only the attributes copied above.
        self._gate_fn = type(source)._apply_gate
        self.source_class = type(source).__name__
        self.group_size = group_size
        self.num_experts = int(source.down_proj.shape[0])
        self.projections = _projections(source)
        for proj in self.projections:
            e, out_f, in_f = _canonical_shape(source, proj)
            self.register_buffer(proj, torch.zeros(e, out_f, in_f, dtype=torch.int8, device=device))
            self.register_buffer(f"{proj}_scale", torch.zeros(e, out_f, n_groups(in_f, group_size),
                                                              dtype=scale_dtype, device=device))
            bias = getattr(source, f"{proj}_bias", None) if source.has_bias else None
            if bias is not None:
                self.register_buffer(f"{proj}_bias", torch.zeros(e, out_f, dtype=BIAS_DTYPE, device=device))

    def _apply_gate(self, gate_up: torch.Tensor) -> torch.Tensor:
        return self._gate_fn(self, gate_up)

    def _bias(self, proj: str, e: int):
        return self._buffers.get(f"{proj}_bias")[e] if f"{proj}_bias" in self._buffers else None

    def _linear(self, x, proj: str, e: int):
        return int8_linear(x, getattr(self, proj)[e], getattr(self, f"{proj}_scale")[e],
                           self._bias(proj, e), self.group_size)

    def dequantize(self, proj: str, e: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Expert ``e``'s ``proj`` weight as the forward uses it, (out, in) in ``dtype``."""
        return dequantize(getattr(self, proj)[e], getattr(self, f"{proj}_scale")[e], self.group_size, dtype)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        up_name, down_name = self.projections
        final = torch.zeros_like(hidden_states)
        with torch.no_grad():  # which tokens go to which expert (index E = expert-parallel sentinel)
            mask = nn.functional.one_hot(top_k_index, num_classes=self.num_experts + 1).permute(2, 1, 0)
            hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
        for e in hit.flatten().tolist():
            if e == self.num_experts:
                continue
            top_k_pos, token_idx = torch.where(mask[e])
            h = self._linear(hidden_states[token_idx], up_name, e)
            h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
            h = self._linear(h, down_name, e) * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, h.to(final.dtype))
        return final

    def extra_repr(self) -> str:
        gran = "per-channel" if self.group_size is None else f"group_size={self.group_size}"
        shapes = ", ".join(f"{p}={tuple(getattr(self, p).shape)}" for p in self.projections)
        return f"{self.source_class}, experts={self.num_experts}, {shapes}, {gran}"


def _canonical_shape(source, proj: str) -> tuple[int, int, int]:
    e, a, b = getattr(source, proj).shape
    return (e, b, a) if source.is_transposed else (e, a, b)


def _canonical(source, proj: str, e: int) -> torch.Tensor:
    """Expert ``e``'s ``proj`` weight as an (out, in) tensor in its stored dtype (a view)."""
    w = getattr(source, proj)[e].detach()
    return w.t() if source.is_transposed else w


def empty_experts(source: nn.Module, group_size: int | None, scale_dtype: torch.dtype) -> Int8Experts:
    """A meta-device ``Int8Experts`` shell for ``source``, for ``load_state_dict(assign=True)``."""
    return Int8Experts(source, group_size, scale_dtype, device="meta")


def quantize_experts(name: str, source: nn.Module, group_size: int | None,
                     scale_dtype: str = "bf16") -> tuple[Int8Experts, list[LayerReport]]:
    """Quantize every expert of ``source`` into a new ``Int8Experts`` on its device; returns it and
    one ``LayerReport`` per projection (errors over all experts: the Frobenius norms add up)."""
    check_experts_supported(name, source)
    sdtype = SCALE_TORCH_DTYPES[scale_dtype]
    device = source.down_proj.device
    mod = Int8Experts(source, group_size, sdtype, device=device)
    reports = []
    for proj in mod.projections:
        q_all, s_all = getattr(mod, proj), getattr(mod, f"{proj}_scale")
        sum_w2 = sum_d2 = max_err = 0.0
        for e in range(mod.num_experts):
            res = quantize_weight_stats(_canonical(source, proj, e), group_size, sdtype)
            if not res.finite:
                raise InputError(f"weight '{name}.{proj}' of expert {e} has non-finite values (inf/nan); "
                                 "cannot quantize it")
            if not torch.isfinite(res.scale).all():
                raise InputError(f"'{name}.{proj}' expert {e}: a scale overflows {scale_dtype}; "
                                 "use scale_dtype fp32")
            q_all[e], s_all[e] = res.q, res.scale
            sum_w2, sum_d2 = sum_w2 + res.sum_w2, sum_d2 + res.sum_d2
            max_err = max(max_err, res.max_err)
        bias = getattr(source, f"{proj}_bias", None) if source.has_bias else None
        if bias is not None:
            setattr(mod, f"{proj}_bias", bias.detach().to(device=device, dtype=BIAS_DTYPE).clone())
        reports.append(stats_report(f"{name}.{proj}", q_all.shape, s_all, sum_w2, sum_d2, max_err,
                                    experts=q_all.shape[0]))
    return mod, reports


def export_tensors(mod: Int8Experts) -> dict:
    """Checkpoint tensors of one ``Int8Experts``, keyed by local name."""
    return dict(mod.named_buffers(recurse=False))
