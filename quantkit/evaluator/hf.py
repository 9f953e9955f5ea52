"""Perplexity through transformers' own model code, for what quantkit's runner does not cover.

The runner (``model.Decoder``) covers the Llama family and is what speed is measured with. Any
other causal LM that ``AutoModelForCausalLM`` builds (Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3,
Gemma-2, Phi-3, ...) is scored here with the same windows, KL and top-1 code: float variants are
loaded by ``modelbuild.build_model`` (Hub MoE layouts included), quantized ones by
``quantkit.quantize`` (``Int8Linear`` and ``Int8Experts``), saved checkpoints by
``load_quantized``. Compute dtype as for the runner: fp32 on CPU; on CUDA a float variant in its own
dtype and a quantized one in bf16. Perplexity only: ``--speed`` needs the runner.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from quantkit.errors import ConfigError, InputError
from quantkit.modelio import read_config

# config.json fields that must agree between MODEL and a saved checkpoint compared with it
_ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size",
              "num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok",
              "moe_intermediate_size", "tie_word_embeddings", "rope_theta", "sliding_window")


class HFLogits(nn.Module):
    """A transformers causal LM as the perplexity code calls models: ids (B, L) -> logits (B, L, V)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()


def runner_covers(cfg: dict) -> tuple[bool, str]:
    """(True, "") if quantkit's runner builds ``cfg``, else (False, why not)."""
    from quantkit.evaluator.model import SUPPORTED_MODEL_TYPES, DecoderArgs

    inner = cfg.get("text_config") if "text_config" in cfg and "hidden_size" not in cfg else cfg
    model_type = inner.get("model_type") if isinstance(inner, dict) else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        return False, (f"the eval runner supports model_type {', '.join(SUPPORTED_MODEL_TYPES)}; "
                       f"got {model_type!r}")
    try:
        DecoderArgs.from_hf_config(cfg)
    except ConfigError as exc:
        return False, str(exc)
    return True, ""


def build_hf_variants(model_dir: Path, specs, device: torch.device, progress: bool = True,
                      keep_on_cpu: bool = False) -> list:
    """One ``variants.Variant`` per spec, its ``runner`` an ``HFLogits``, cast to its compute
    dtype and on ``device`` (left on the CPU with ``keep_on_cpu``, for ``--device-map auto``)."""
    import quantkit
    from quantkit.evaluator.loader import DTYPE_NAMES, DTYPES
    from quantkit.evaluator.speed import weights_bytes
    from quantkit.evaluator.variants import Variant
    from quantkit.modelbuild import build_model

    on_cpu = device.type == "cpu"
    first_float = next((s.dtype for s in specs if s.kind == "float"), None)
    base_dtype = DTYPES[first_float] if first_float else _stored_dtype(model_dir)
    out = []
    for s in specs:
        if s.kind == "float":
            model = build_model(model_dir, DTYPES[s.dtype])
            est, group, compute = s.dtype, None, DTYPES[s.dtype]
            desc = f"{s.dtype} weights (transformers)"
        elif s.kind == "quantize":
            model = build_model(model_dir, base_dtype)
            options = {"group_size": s.group_size} if s.group_size is not None else {}
            report = quantkit.quantize(model, quantkit.QuantConfig(method=s.method, **options),
                                       progress=progress)
            est, group, compute = "int8", s.group_size, torch.bfloat16
            base_name = first_float or DTYPE_NAMES[base_dtype]
            desc = f"{s.method} quantized on the fly from the {base_name} weights (transformers)"
            kept = _kept_experts(model, report.skipped)
            if kept:
                desc += f"; {kept} MoE experts modules kept in {DTYPE_NAMES[base_dtype]}"
        else:
            check_same_architecture(model_dir, s.path)
            model, est, group, compute, desc = _checkpoint(s.path)
        stored = weights_bytes(model)
        compute = torch.float32 if on_cpu else compute
        cast_activations(model, compute)
        if not keep_on_cpu:
            model.to(device)
        out.append(Variant(s, HFLogits(model.eval()), compute, est, group, desc, stored))
    return out


def cast_activations(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast the float tensors the forward computes with to ``dtype``, in place, except those of
    quantized modules (their scales and biases stay as stored: the int8 kernels take them in any
    float dtype) and those transformers keeps in fp32 (``modelbuild.fp32_kept``). bitsandbytes
    layers are cast like any module (their int8 weight is not a float tensor)."""
    from quantkit.modelbuild import fp32_kept
    from quantkit.quantizers.experts import Int8Experts
    from quantkit.quantizers.int8 import Int8Linear

    kept = fp32_kept(getattr(model, "model", model) if isinstance(model, HFLogits) else model, dtype)
    for name, mod in model.named_modules():
        if isinstance(mod, (Int8Linear, Int8Experts)):
            continue
        for key, t in list(mod._parameters.items()) + list(mod._buffers.items()):
            full = f"{name}.{key}" if name else key
            if t is None or not t.is_floating_point() or t.dtype == dtype or kept(full):
                continue
            if key in mod._parameters:
                t.data = t.data.to(dtype)
            else:
                mod._buffers[key] = t.to(dtype)


def _kept_experts(model: nn.Module, skipped: list[str]) -> int:
    from quantkit.quantizers.experts import is_fused_experts

    return sum(1 for n in skipped if is_fused_experts(model.get_submodule(n)))


def _stored_dtype(folder: Path) -> torch.dtype:
    from quantkit.evaluator.loader import DTYPES

    cfg = read_config(folder)
    name = str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16")
    return {"float32": DTYPES["fp32"], "float16": DTYPES["fp16"]}.get(name, DTYPES["bf16"])


def _checkpoint(path: Path):
    import quantkit
    from quantkit.evaluator.loader import DTYPE_NAMES
    from quantkit.modelbuild import build_model
    from quantkit.quantizers.checkpoint import is_quantkit_checkpoint

    cfg = read_config(path)
    if is_quantkit_checkpoint(path) or "quantization_config" in cfg:
        from quantkit.quantizers.checkpoint import read_quant_block

        _, block = read_quant_block(cfg, path, path)  # llm-compressor / bitsandbytes folders too
        model = quantkit.load_quantized(path)
        return (model, "int8", block.get("group_size"), torch.bfloat16,
                f"checkpoint {path} ({block.get('method')}, transformers)")
    dtype = _stored_dtype(path)
    name = DTYPE_NAMES[dtype]
    return build_model(path, dtype), name, None, dtype, f"checkpoint {path} ({name}, transformers)"


def check_same_architecture(model_dir: Path, ckpt_dir: Path) -> None:
    """``InputError`` unless the checkpoint's config.json describes MODEL's architecture, compared
    on transformers' config objects (defaults filled in, aliases such as Qwen3-MoE's num_experts /
    num_local_experts resolved, multimodal wrappers through their text config)."""
    from quantkit.modelbuild import hf_config

    def arch(folder):
        cfg = read_config(folder)
        obj = hf_config(cfg)
        obj = obj.get_text_config() if hasattr(obj, "get_text_config") else obj
        return {k: getattr(obj, k, None) for k in _ARCH_KEYS}

    a, b = arch(model_dir), arch(ckpt_dir)
    diff = [k for k in _ARCH_KEYS if a[k] != b[k]]
    if diff:
        raise InputError(f"checkpoint {ckpt_dir} is not a variant of {model_dir}: its config.json "
                         f"has {diff[0]} {b[diff[0]]!r}, MODEL's is {a[diff[0]]!r}")
