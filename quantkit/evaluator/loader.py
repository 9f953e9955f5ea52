"""Fill the eval runner (``Decoder``) from a Hugging Face folder, a quantkit int8 checkpoint, or
random weights (for speed benchmarks of a model shape).

- ``load_runner(model)``: bf16/fp16/fp32 safetensors (single or sharded) or a quantkit checkpoint
  (config.json with ``quantization_config``): the runner is built on the meta device, quantized
  modules are rebuilt from their stored tensors by the method's handler, and the other tensors
  are assigned, so the weights are allocated once.
- ``random_runner(cfg)``: the same architecture with N(0, 0.02) weights (norms 1), made directly
  on the target device.
- ``dispatch_auto(runner)``: split a loaded runner over all visible GPUs with accelerate's
  ``device_map="auto"`` (perplexity only: the static KV cache and CUDA graphs assume one device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from quantkit.errors import ConfigError, InputError
from quantkit.evaluator.model import Decoder, DecoderArgs

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}  # torch dtype -> fp32 / bf16 / fp16


@dataclass
class LoadedModel:
    runner: Decoder
    model_dir: Path | None  # None for random weights
    config: dict[str, Any]
    quantization: dict[str, Any] | None  # config.json's quantization_config, when quantized


def load_runner(model: str | Path, dtype: torch.dtype | None = None,
                device: str | torch.device = "cpu") -> LoadedModel:
    """Load ``model`` (a folder, a config.json path or a Hub id) into a ``Decoder`` on ``device``.

    dtype: float dtype the non-quantized tensors are cast to as they are read (None: as stored);
    int8 weights, their scales and quantized layers' biases stay as stored.
    """
    from quantkit.modelio import load_state_dict, read_config, resolve_model_dir
    from quantkit.modelbuild import assign_state_dict

    model_dir = resolve_model_dir(str(model))
    cfg = read_config(model_dir)
    args = DecoderArgs.from_hf_config(cfg)
    with torch.device("meta"):
        runner = Decoder(args)
    source = f"the checkpoint in '{model_dir}'"
    qcfg = cfg.get("quantization_config")
    if qcfg is None:
        assign_state_dict(runner, load_state_dict(model_dir, dtype=dtype), source)
    else:
        _fill_quantized(runner, cfg, model_dir, dtype, source)
    runner.tie_weights()  # also when the checkpoint stores a (tied) lm_head.weight of its own
    runner.to(device).eval()
    return LoadedModel(runner, model_dir, cfg, qcfg)


def _fill_quantized(runner: Decoder, cfg: dict, model_dir: Path, dtype, source: str) -> None:
    """Swap the modules the checkpoint lists as quantized for empty quantized modules
    (``prepare_quantized``), then assign every stored tensor; only the tensors of modules that
    are not quantized are cast to ``dtype``."""
    from quantkit.modelio import load_state_dict
    from quantkit.modelbuild import assign_state_dict
    from quantkit.quantizers.checkpoint import load_built_modules, prepare_quantized, read_quant_block
    from quantkit.quantizers.configs import handler_for

    from quantkit.quantizers.layout import to_memory

    config, block = read_quant_block(cfg, model_dir, model_dir)
    built = not hasattr(handler_for(config), "empty_module")  # bitsandbytes: built from tensors
    state = load_state_dict(model_dir)
    if built:
        quantized = block["quantized_modules"]
        load_built_modules(runner, config, quantized, state, model_dir)
        state = {k: t for k, t in state.items() if k.rpartition(".")[0] not in frozenset(quantized)}
    else:
        _, quantized = prepare_quantized(runner, cfg, model_dir, model_dir)
        state = to_memory(state, quantized, f"'{model_dir}'")
    done = frozenset(quantized)
    if dtype is not None:
        state = {k: (t.to(dtype) if t.is_floating_point() and k.rpartition(".")[0] not in done
                     else t) for k, t in state.items()}
    assign_state_dict(runner, state, source, handled_modules=done if built else frozenset())


def random_runner(cfg: dict, dtype: torch.dtype = torch.bfloat16,
                  device: str | torch.device = "cpu", seed: int = 0) -> LoadedModel:
    """A runner of ``cfg``'s shape with random weights: N(0, 0.02) for matrices and embeddings,
    1 for norm weights, 0 for biases. Made on ``device`` directly (no CPU copy of 13 GB)."""
    args = DecoderArgs.from_hf_config(cfg)
    with torch.device("meta"):
        runner = Decoder(args)
    runner.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in runner.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
    runner.tie_weights()
    runner.to(dtype).eval()
    return LoadedModel(runner, None, dict(cfg), None)


def dispatch_auto(runner: torch.nn.Module, max_memory: dict | None = None,
                  device_map: dict | str = "auto") -> torch.nn.Module:
    """Split ``runner`` (a ``Decoder``, or an ``hf.HFLogits`` around a transformers model) over the
    visible GPUs (accelerate ``infer_auto_device_map`` + ``dispatch_model``), whole decoder layers
    per device. Perplexity only: mode "full"."""
    from accelerate import dispatch_model, infer_auto_device_map

    inner = getattr(runner, "model", runner)
    hf = not isinstance(runner, Decoder)
    no_split = list(getattr(inner, "_no_split_modules", None) or []) if hf else ["DecoderLayer"]
    if device_map == "auto":
        if not torch.cuda.is_available():
            raise ConfigError("device_map='auto' spreads a model over GPUs; no CUDA device is visible")
        dtype = runner.get_input_embeddings().weight.dtype if hf else runner.model.norm.weight.dtype
        device_map = infer_auto_device_map(runner, max_memory=max_memory,
                                           no_split_module_classes=no_split, dtype=dtype)
        if any(d in ("cpu", "disk") for d in device_map.values()):
            raise InputError("the model does not fit on the visible GPUs even when split "
                             f"(accelerate placed some layers on {sorted(set(map(str, device_map.values())))})")
    return dispatch_model(runner, device_map=device_map)


def first_device(runner: torch.nn.Module) -> torch.device:
    """Where input ids go: the embedding's device."""
    if isinstance(runner, Decoder):
        return runner.model.embed_tokens.weight.device
    return runner.get_input_embeddings().weight.device
