"""``quantkit.quantize(model, config)``: swap a model's ``nn.Linear`` modules (and fused MoE experts)
for quantized ones.

Example::

    import quantkit
    report = quantkit.quantize(model, quantkit.QuantConfig(method="int8", group_size=128))
    print(report.bytes_before, report.bytes_after, report.worst_layer)

The swap is in place and goes one module at a time (progress bar on stderr): each weight is
read, quantized in fp32 and released before the next, so peak memory beyond the model is about
one layer. Which modules are skipped is decided by ``quantkit.selection.is_skipped`` (default
``lm_head``; embeddings are not ``nn.Linear`` and are never touched); a skip pattern other than the
default that matches no ``nn.Linear`` or experts module is a ``ConfigError`` (a typo must not
quantize a kept layer). transformers 5's fused MoE experts (one module per layer holding every
expert's weights as 3-D tensors) become ``experts.Int8Experts`` with method int8; llm.int8 keeps
them in the base dtype and lists them as skipped.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from quantkit.errors import ConfigError
from quantkit.quantizers.configs import METHODS, QuantConfig, handler_for
from quantkit.quantizers.report import QuantReport, estimated_checkpoint_bytes
from quantkit.selection import DEFAULT_SKIP, is_skipped

__all__ = ["quantize", "QuantConfig", "METHODS", "handler_for", "quantizable_modules"]


def linear_modules(model):
    """(name, module) of every plain float ``nn.Linear`` in ``model``, in module order.

    ``ConfigError`` if a quantized layer (``Int8Linear``, ``Int8Experts`` or a bitsandbytes
    ``nn.Linear`` subclass) is found: the model is already quantized.
    """
    from torch import nn

    return [(n, m) for n, m in quantizable_modules(model) if isinstance(m, nn.Linear)]


def quantizable_modules(model):
    """(name, module) of every unit a quantization may swap, in module order: each plain float
    ``nn.Linear`` and each fused MoE experts module (transformers 5's 3-D expert tensors, see
    ``quantkit.quantizers.experts``). Skip patterns match these names. ``ConfigError`` if the model
    is already quantized."""
    from torch import nn

    from quantkit.quantizers.experts import Int8Experts, is_fused_experts
    from quantkit.quantizers.int8 import Int8Linear

    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, (Int8Linear, Int8Experts)):
            raise ConfigError(f"'{name}' is already quantized ({type(mod).__name__})")
        if isinstance(mod, nn.Linear):
            if any(c.__module__.startswith("bitsandbytes") for c in type(mod).__mro__):
                raise ConfigError(f"'{name}' is already quantized ({type(mod).__name__})")
            out.append((name, mod))
        elif is_fused_experts(mod):
            out.append((name, mod))
    return out


def quantize(model, config: QuantConfig | None = None, *, progress: bool = True) -> QuantReport:
    """Quantize ``model``'s linear layers in place according to ``config`` (default int8 per-channel).

    Returns a ``QuantReport`` (per-layer errors, bytes before/after, the estimator's bytes,
    seconds). ``ConfigError`` if the skip patterns leave nothing to quantize.
    """
    from torch import nn
    from tqdm import tqdm

    from quantkit.quantizers.checkpoint import base_dtype, collect_state, dedup_shared, tensor_bytes
    from quantkit.spec import is_supported

    config = QuantConfig() if config is None else config
    if not isinstance(config, QuantConfig):
        raise ConfigError(f"config must be a QuantConfig, got {type(config).__name__}")
    handler = handler_for(config)
    start = time.perf_counter()
    base = base_dtype(model)
    bytes_before = tensor_bytes(dedup_shared(model.state_dict()))

    hf_cfg = getattr(model, "config", None)
    sel = select_units(model, config)
    experts, unsupported, targets, skipped = sel.experts, sel.unsupported, sel.targets, sel.skipped
    tied = _tied_names(model, [n for n in targets if n not in experts])

    layers = []
    for name in tqdm(targets, desc=f"quantize {config.method}", unit="layer", file=sys.stderr,
                     disable=not progress):
        old = model.get_submodule(name)
        if name in experts:
            new, reports = handler.quantize_experts(name, old, config)
        else:
            new, layer = handler.quantize_module(name, old, config)
            reports = [layer]
        new.train(old.training)  # an eval model stays in eval mode (bitsandbytes' path depends on it)
        model.set_submodule(name, new)  # the float weight is released here (unless tied)
        del old
        layers.extend(reports)
    if tied and getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        # A quantized lm_head no longer shares the embedding matrix: say so in the config, or
        # transformers would re-tie (overwrite) the int8 weight with the bf16 embedding.
        model.config.tie_word_embeddings = False

    if hf_cfg is not None and hasattr(hf_cfg, "to_dict") and not is_supported(hf_cfg.to_dict()):
        smoke_forward(model)
    state, _, _ = collect_state(model, config)
    estimate = None
    if hf_cfg is not None and hasattr(hf_cfg, "to_dict"):
        estimate = estimated_checkpoint_bytes(hf_cfg.to_dict(), config, base.itemsize,
                                              extra_skip=tuple(sorted(unsupported)))
    return QuantReport(
        method=config.method,
        config=config.to_dict(),
        layers=layers,
        skipped=skipped,
        bytes_before=bytes_before,
        bytes_after=tensor_bytes(state),
        estimated_bytes=estimate,
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True)
class Selection:
    """Which of a model's ``quantizable_modules`` a config quantizes. ``targets`` and ``skipped``
    are in module order; ``experts``: the fused MoE experts modules among all units;
    ``unsupported``: units the method cannot quantize (listed as skipped)."""

    targets: list
    skipped: list
    experts: frozenset
    unsupported: frozenset


def select_units(model, config: QuantConfig) -> Selection:
    """The ``Selection`` for ``model`` (real or on the meta device) and ``config``: the one rule the
    in-memory and the streaming quantizers share. ``ConfigError`` if a skip pattern matches
    nothing, nothing is left to quantize, or a targeted experts module is unsupported."""
    from torch import nn

    from quantkit.quantizers.experts import check_experts_supported, is_fused_experts

    handler = handler_for(config)
    units = quantizable_modules(model)
    check_skip(config, [n for n, _ in units])
    experts = {n for n, m in units if is_fused_experts(m)}
    # A method without a fused-experts path (llm.int8: bitsandbytes swaps nn.Linear only) keeps
    # them in the base dtype; so are nn.Linear subclasses with a forward of their own (routers
    # that return tuples: PhiMoE, Llama 4): both are listed as skipped and estimated so.
    unsupported = set() if hasattr(handler, "quantize_experts") else set(experts)
    unsupported |= {n for n, m in units if n not in experts and type(m).forward is not nn.Linear.forward}
    targets = [n for n, _ in units if not is_skipped(n, config.skip) and n not in unsupported]
    skipped = [n for n, _ in units if is_skipped(n, config.skip) or n in unsupported]
    if not targets:
        raise ConfigError(f"nothing to quantize: the skip patterns {list(config.skip)} match all "
                          f"{len(units)} linear and expert modules")
    for name in targets:  # refuse unsupported experts before anything is swapped
        if name in experts:
            check_experts_supported(name, model.get_submodule(name))
    return Selection(targets, skipped, frozenset(experts), frozenset(unsupported))


def smoke_forward(model) -> None:
    """One 4-token forward of a quantized model whose architecture quantkit's tests do not cover
    (``quantkit.spec.is_supported``): ``ConfigError`` if it fails (a model that reads a linear's
    ``.weight`` itself, as Jamba's ``dt_proj`` does, breaks when that weight becomes int8)."""
    import torch

    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    device = emb.weight.device if emb is not None else next(model.parameters()).device
    ids = torch.arange(4, device=device)[None] % int(getattr(model.config, "vocab_size", 4) or 4)
    try:
        with torch.no_grad():
            model(ids)
    except Exception as exc:  # any failure means the quantized model is unusable: say which
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(
            f"model_type '{getattr(model.config, 'model_type', '?')}' is not one quantkit covers, and "
            f"its forward fails once quantized ({type(exc).__name__}: {first}); keep the layers it "
            "uses directly in bf16 with --skip") from None


def check_skip(config: QuantConfig, names: list[str]) -> None:
    """``check_skip_patterns`` for ``config.skip`` unless it is the default list, which may name
    nothing (a model whose output layer is not an ``nn.Linear`` called lm_head) without error.
    ``names``: those of ``quantizable_modules`` (a meta-device model gives them for free)."""
    if tuple(config.skip) != DEFAULT_SKIP:
        check_skip_patterns(config.skip, names)


def check_skip_patterns(patterns, names: list[str]) -> None:
    """``ConfigError`` naming every skip pattern that matches none of ``names`` (the model's
    ``nn.Linear`` and fused-experts module names), with the kinds of names that do match and a close match if any:
    a typo such as ``lm_haed`` must not quietly quantize the layer it meant to keep."""
    from difflib import get_close_matches

    unmatched = [p for p in patterns if not any(is_skipped(n, (p,)) for n in names)]
    if not unmatched:
        return
    if not names:
        raise ConfigError("the model has no nn.Linear modules, so no skip pattern can match")
    lasts = list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))  # unique, in module order
    shown = ", ".join(repr(x) for x in lasts[:10]) + (", ..." if len(lasts) > 10 else "")
    hints = []
    for p in unmatched:
        is_glob = any(c in p for c in "*?[")  # a near-miss name is no hint for a glob
        close = [] if is_glob else get_close_matches(p, lasts + names, n=1)
        hints.append(f"'{p}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    first = names[0]
    glob = f"{first.rsplit('.', 1)[0]}.*" if "." in first else f"{first}*"
    raise ConfigError(
        f"skip pattern{'s' if len(unmatched) > 1 else ''} {', '.join(hints)} "
        f"match{'' if len(unmatched) > 1 else 'es'} no nn.Linear module of the model; a pattern is "
        f"a full module name ('{first}'), its last part ({shown}) or a "
        f"glob ('{glob}')"
    )


def _tied_names(model, targets: list[str]) -> list[str]:
    """Targets whose weight shares storage with another parameter (tied lm_head/embeddings)."""
    owners: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(p.data_ptr(), []).append(pname)
    out = []
    for name in targets:
        w = model.get_submodule(name).weight
        if len(owners.get(w.data_ptr(), [])) > 1:
            out.append(name)
    return out
