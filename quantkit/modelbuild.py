"""Build transformers causal LMs from the folders ``quantkit.modelio`` reads, strictly.

- ``check_causal_lm(cfg)``, ``hf_config(cfg)``: refuse what ``AutoModelForCausalLM`` does not build.
- ``empty_model(cfg, dtype)``: the model on the meta device.
- ``assign_state_dict(model, state, source)``: fill it with ``assign=True`` after checking every
  name, shape and integer dtype (``InputError`` naming the first problem).
- ``build_model(model_dir, dtype, device)``: both, from a float checkpoint. Checkpoints whose
  tensor names are not the model's because transformers converts them on load (the Hub layout of
  MoE models: one tensor per expert, ``experts.0.gate_proj.weight`` or Mixtral's
  ``block_sparse_moe.experts.0.w1.weight``, which transformers 5 stacks into 3-D
  ``mlp.experts.gate_up_proj``) are loaded by transformers' own ``from_pretrained`` with its
  conversion mapping for that model type, offline, and refused if it reports any missing,
  unexpected or mis-shaped tensor. Everything else takes the strict assign path.
"""

from __future__ import annotations

import re
from pathlib import Path

from quantkit.errors import ConfigError, InputError
from quantkit.modelio import load_state_dict, read_config, weight_files


def check_causal_lm(cfg: dict, where: str = "config.json") -> None:
    """``ConfigError`` unless ``cfg`` describes a model that ``AutoModelForCausalLM`` builds."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if archs:
        if not any(a in causal_classes for a in archs):
            raise ConfigError(
                f"{where} describes {', '.join(archs)} (model_type '{model_type}'), not a causal "
                "language model: quantkit handles decoder LLMs that AutoModelForCausalLM builds"
            )
    elif model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or cfg.get("is_encoder_decoder"):
        raise ConfigError(f"{where}: model_type '{model_type}' is not a causal language model "
                          "that AutoModelForCausalLM builds")


def hf_config(cfg: dict):
    """A transformers config object from a config.json dict, without its quantization_config."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = cfg["model_type"]
    if model_type not in CONFIG_MAPPING:
        import transformers

        raise ConfigError(f"model_type '{model_type}' is unknown to transformers {transformers.__version__}")
    clean = {k: v for k, v in cfg.items() if k != "quantization_config"}
    try:
        return CONFIG_MAPPING[model_type].from_dict(clean)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"config.json is not a valid {model_type} config: {exc}") from None


def empty_model(cfg: dict, dtype):
    """The causal LM for ``cfg`` with its parameters on the meta device (buffers such as RoPE
    frequencies are real, on CPU), ready for ``load_state_dict(..., assign=True)``."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    check_causal_lm(cfg)
    config = hf_config(cfg)
    try:
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (KeyError, ValueError, TypeError, AttributeError, OverflowError, RuntimeError) as exc:
        # transformers validates some values only while building (hidden_act "evil": KeyError)
        raise ConfigError(f"config.json: transformers cannot build a {cfg.get('model_type')} model from "
                          f"it ({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    return model


def assign_state_dict(model, state: dict, source: str, handled_modules=frozenset()) -> None:
    """Load ``state`` into a meta-device ``model`` with ``assign=True`` after checking names and
    shapes (``check_state_dict``); ``InputError`` naming the first missing, unexpected or
    mis-shaped tensor.

    handled_modules: names of modules already filled by the caller (e.g. quantized layers rebuilt
    from their tensors); their entries are neither expected nor assigned here.
    """
    expected = check_state_dict(model, state, source, handled_modules)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False, assign=True)
    if tied and any(k not in state for k in tied):
        model.tie_weights()
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.device.type == "meta":
            raise InputError(f"{source} leaves tensor '{name}' unset")


def check_state_dict(model, state: dict, source: str, handled_modules=frozenset()) -> dict:
    """``InputError`` naming the first tensor of ``state`` (real or meta tensors: only names,
    shapes and dtypes are read) that ``model`` lacks, or the first one ``model`` needs that is
    missing (tied ones may be), mis-shaped, or of another integer dtype. Returns the model's
    expected {name: tensor}."""
    expected = {k: v for k, v in model.state_dict().items()
                if k.rsplit(".", 1)[0] not in handled_modules}
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    for name, tensor in expected.items():
        if name not in state:
            if name in tied:
                continue
            raise InputError(f"{source} lacks tensor '{name}' that the model in config.json needs")
        got = state[name]
        if tuple(got.shape) != tuple(tensor.shape):
            raise InputError(f"tensor '{name}' in {source} has shape {tuple(got.shape)}, "
                             f"config.json's model needs {tuple(tensor.shape)}")
        # Float tensors may be cast on load; integer ones (int8 weights) must match exactly.
        if got.is_floating_point() != tensor.is_floating_point() or (
                not tensor.is_floating_point() and got.dtype != tensor.dtype):
            raise InputError(f"tensor '{name}' in {source} is {got.dtype}, the model needs {tensor.dtype}")
    ignore = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    extra = [k for k in state if k not in expected and not any(p.search(k) for p in ignore)]
    if extra:
        raise InputError(f"{source} has tensor '{sorted(extra)[0]}' that the model in config.json does not have")
    return expected


def build_model(model_dir, dtype=None, device="cpu"):
    """The transformers causal LM of a local folder, in ``dtype`` (default torch.bfloat16), in eval mode.

    Built on the meta device and filled from the checkpoint, so peak memory is one copy of the
    weights in ``dtype``; never touches the network. Refuses configs that are not causal LMs and
    already-quantized checkpoints (``ConfigError``).
    """
    import torch

    dtype = torch.bfloat16 if dtype is None else dtype
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    refuse_quantized(cfg, model_dir)
    model = empty_model(cfg, dtype)
    names = checkpoint_names(model_dir)
    if names is not None and needs_conversion(model, names):
        check_converted_names(model, model_dir, names)
        return _from_pretrained(model_dir, cfg, dtype, device)
    state = load_state_dict(model_dir, dtype=dtype, keep=fp32_kept(model, dtype))
    if names is None and needs_conversion(model, set(state)):  # legacy .bin: names known only now
        check_converted_names(model, model_dir, set(state))
        del state
        return _from_pretrained(model_dir, cfg, dtype, device)
    assign_state_dict(model, state, f"the checkpoint in '{model_dir}'")
    return model.to(device).eval()


def refuse_quantized(cfg: dict, model_dir) -> None:
    """``ConfigError`` if config.json ``cfg`` has a quantization_config: quantize starts from floats."""
    if "quantization_config" in cfg:
        qc = cfg["quantization_config"]
        method = qc.get("quant_method", "?") if isinstance(qc, dict) else "?"
        raise ConfigError(f"'{model_dir}' is already quantized (quantization_config, quant_method "
                          f"'{method}'); start from a bf16/fp16/fp32 model")


def fp32_kept(model, dtype):
    """``keep(name) -> bool``: the tensors transformers keeps in fp32 when loading ``model`` in
    ``dtype`` (``_keep_in_fp32_modules_strict`` for fp16 and bf16, ``_keep_in_fp32_modules`` for
    fp16 only: DeepSeek-V3's router bias, Ernie's router, ...), so that quantkit's loads give the
    tensors ``from_pretrained`` gives."""
    import torch

    mods = []
    if dtype in (torch.float16, torch.bfloat16):
        mods += list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    if dtype == torch.float16:
        mods += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    if not mods:
        return lambda name: False
    pattern = re.compile(r"(^|\.)(" + "|".join(re.escape(m) for m in mods) + r")(\.|$)")
    return lambda name: pattern.search(name) is not None


def checkpoint_names(model_dir) -> set[str] | None:
    """Tensor names of a safetensors checkpoint from its headers/index (no data read); None for
    legacy .bin checkpoints, whose names are only known by loading them."""
    from quantkit.modelio import check_safetensors_file

    kind, files, weight_map = weight_files(model_dir)
    if kind != "safetensors":
        return None
    if weight_map is not None:
        return set(weight_map)
    return {name for path in files for name in check_safetensors_file(path)}


def needs_conversion(model, names: set[str]) -> bool:
    """True if the checkpoint's tensor ``names`` are not the meta ``model``'s and transformers has
    a checkpoint conversion mapping for this model (the Hub layout of MoE experts, Gemma-3's
    language_model.* names)."""
    from transformers.conversion_mapping import extract_weight_conversions_for_model

    if not (names - set(model.state_dict())):
        return False
    return extract_weight_conversions_for_model(model) is not None


def check_converted_names(model, model_dir, names: set[str]) -> None:
    """``InputError`` naming the first tensor the checkpoint lacks or has beyond the names
    transformers' conversion mapping expects for the meta ``model`` (reverted to the Hub layout).
    Checked before loading: transformers stacks whatever expert indices it finds, so a missing
    expert offset by a stray one (experts 0, 2, 3, 7 of 4) would pass its shape checks."""
    from transformers.core_model_loading import revert_weight_conversion

    state = model.state_dict()
    expected = set(revert_weight_conversion(model, state))
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    # tied keys are named in the model's layout: revert them too (Gemma-3's language_model.lm_head)
    tied |= set(revert_weight_conversion(model, {k: state[k] for k in tied if k in state}))
    ignore = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    source = f"the checkpoint in '{model_dir}'"
    missing = sorted(expected - names - tied)
    if missing:
        raise InputError(f"{source} lacks tensor '{missing[0]}' that the model in config.json needs "
                         "(names as the checkpoint stores them, before transformers converts them)")
    extra = sorted(k for k in names - expected if not any(p.search(k) for p in ignore))
    if extra:
        raise InputError(f"{source} has tensor '{extra[0]}' that the model in config.json does not "
                         "have (names as the checkpoint stores them, before transformers converts them)")


def _from_pretrained(model_dir, cfg: dict, dtype, device):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    source = f"the checkpoint in '{model_dir}'"
    # transformers logs a many-line load report before raising; quantkit gives one line instead.
    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a failed load must end in one line; restored below
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(model_dir), config=hf_config(cfg), dtype=dtype, local_files_only=True,
            output_loading_info=True, ignore_mismatched_sizes=True)  # mismatches: refused below
    except RuntimeError as exc:
        if "conversion" not in str(exc):
            raise
        raise InputError(f"{source}: transformers could not convert its tensors into the layout of "
                         "the model in config.json (a tensor is missing or has another shape)") from None
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{source} could not be loaded by transformers: {first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()
    problems = [("lacks tensor", info.get("missing_keys")), ("has tensor", info.get("unexpected_keys")),
                ("has a mis-shaped tensor", info.get("mismatched_keys"))]
    for what, keys in problems:
        if keys:
            key = sorted(keys, key=str)[0]
            key = key[0] if isinstance(key, tuple) else key
            raise InputError(f"{source} {what} '{key}' for the model in config.json "
                             "(after transformers' conversion of its tensor names)")
    return model.to(device).eval()
