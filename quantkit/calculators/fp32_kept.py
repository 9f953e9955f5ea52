"""Tensors that transformers keeps in fp32 when it loads a model in bf16/fp16, per architecture and
transformers version -- so the estimate counts what ``quantkit quantize`` really writes.

transformers lists them per model class in ``_keep_in_fp32_modules_strict``; ``quantkit quantize``
loads through the same rule (``modelbuild.fp32_kept``) and saves those tensors in fp32. The estimate
must not import transformers (it stays torch-free and instant), so the lists are mirrored here with
the release that introduced them, and the installed release is read from the package metadata
(no import). ``tests/calculators/test_fp32_kept.py`` builds every covered architecture in the
installed transformers and checks that these rules name exactly its fp32 tensors, so a release that
changes a list fails the suite instead of silently breaking the byte-exact estimate.

Seen so far (transformers 5.17 .. 5.25):
  deepseek_v3  ``e_score_correction_bias`` (a buffer, n_routed_experts per MoE layer) since 5.0;
               the router weight ``mlp.gate.weight`` (n_routed_experts x hidden) since 5.24
  deepseek_v2  the router weight ``mlp.gate.weight`` since 5.24
"""

from __future__ import annotations

import re
from functools import lru_cache

from quantkit.spec import ModelSpec

ROUTER_WEIGHT = "gate.weight"  # the MoE router's weight (E x hidden), a parameter
ROUTER_BIAS_BUFFER = "e_score_correction_bias"  # DeepSeek-V3's router bias (E), a buffer

# model_type -> ((first transformers release (major, minor), names kept in fp32), ...), oldest first
RULES: dict[str, tuple[tuple[tuple[int, int], tuple[str, ...]], ...]] = {
    "deepseek_v3": (((5, 0), (ROUTER_BIAS_BUFFER,)), ((5, 24), (ROUTER_BIAS_BUFFER, ROUTER_WEIGHT))),
    "deepseek_v2": (((5, 24), (ROUTER_WEIGHT,)),),
}


@lru_cache(maxsize=1)
def installed_transformers() -> tuple[int, int] | None:
    """(major, minor) of the installed transformers, from its metadata; None if not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("transformers")
    except PackageNotFoundError:
        return None
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def kept_names(model_type: str, release: tuple[int, int] | None = None) -> tuple[str, ...]:
    """Names transformers ``release`` (default: the installed one; the newest rule if none is
    installed) keeps in fp32 for ``model_type``."""
    release = installed_transformers() if release is None else release
    names: tuple[str, ...] = ()
    for first, kept in RULES.get(model_type, ()):
        if release is None or release >= first:
            names = kept
    return names


@lru_cache(maxsize=1024)
def fp32_elements(spec: ModelSpec, release: tuple[int, int] | None = None) -> tuple[int, int]:
    """(parameters, buffer elements) that a bf16 load keeps in fp32 for ``spec``.

    The parameters are part of the parameter count (and of ``kept`` params in the byte formula);
    the buffers are not parameters (DeepSeek-V3's router bias) but are saved in the checkpoint."""
    names = kept_names(spec.model_type, release)
    moe_layers = sum(1 for m in spec.moe_layers if m) if spec.is_moe else 0
    params = buffers = 0
    if ROUTER_WEIGHT in names:
        params += moe_layers * spec.num_experts * spec.hidden_size
    if ROUTER_BIAS_BUFFER in names and spec.router_bias:
        buffers += moe_layers * spec.num_experts
    return params, buffers


def fp32_extra_bytes(spec: ModelSpec, base_bytes: int, release: tuple[int, int] | None = None) -> int:
    """Bytes a quantized checkpoint holds beyond ``kept params x base_bytes`` because of fp32 tensors."""
    params, buffers = fp32_elements(spec, release)
    return params * (4 - base_bytes) + buffers * 4
