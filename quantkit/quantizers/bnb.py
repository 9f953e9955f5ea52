"""LLM.int8() through bitsandbytes (method ``llm.int8``), for comparison with weight-only int8.

Each selected ``nn.Linear`` becomes a ``bitsandbytes.nn.Linear8bitLt`` (``has_fp16_weights=False``):
int8 weights with one fp32 absmax per output row (``SCB``; scale = SCB / 127), quantized by
bitsandbytes' own ``int8_vectorwise_quant`` from the fp16 weight, exactly as ``Linear8bitLt.to()``
does. At run time activations are quantized per token and input columns with any |x| > threshold
run in fp16 (threshold 0 disables that outlier path).

The modules are a ``Linear8bitLt`` subclass whose forward only silences bitsandbytes' per-call
"inputs will be cast to float16" log notice (the cast is this method's design); the math is
bitsandbytes'.

Measured on CPU with bitsandbytes 0.50.2 and torch 2.13 (CPU build): ``Linear8bitLt`` runs there
in eval mode (the int8 path with outlier decomposition; in train mode bitsandbytes dequantizes the
weight instead), so this method needs no GPU. Call ``model.eval()`` before comparing numbers.

Checkpoint tensors follow bitsandbytes'/transformers' 8-bit naming: ``<module>.weight`` int8
(out, in), ``<module>.SCB`` fp32 (out,), ``<module>.bias`` bf16; the ``weight_format`` scalar
that bitsandbytes adds is not written (bitsandbytes reads its absence as row-major, the only
layout it still produces). ``quantization_config`` is transformers' ``BitsAndBytesConfig``
(``quant_method: bitsandbytes``, ``load_in_8bit``) plus the quantkit block; loading these files
with ``transformers.from_pretrained`` was not tested here.
"""

from __future__ import annotations

import contextvars
import logging

import torch
from torch import nn

from quantkit.errors import DependencyError, InputError
from quantkit.quantizers.configs import LLMInt8Config
from quantkit.quantizers.int8 import BIAS_DTYPE, QMAX
from quantkit.quantizers.report import layer_report

MIN_VERSION = (0, 45)  # first bitsandbytes release whose Linear8bitLt runs on CPU
FP16_MAX = 65504.0  # bitsandbytes quantizes from fp16; larger weights would overflow


def bnb():
    """The bitsandbytes module, or ``DependencyError`` saying how to install it."""
    try:
        import bitsandbytes
    except ImportError:
        raise DependencyError("method llm.int8 needs bitsandbytes: pip install 'bitsandbytes>=0.45' "
                              "(or pip install 'quantkit[bnb]')") from None
    version = tuple(int(p) for p in bitsandbytes.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_VERSION:
        raise DependencyError(f"method llm.int8 needs bitsandbytes >= 0.45 (its CPU support); "
                              f"found {bitsandbytes.__version__}")
    return bitsandbytes


def _module_class():
    return bnb().nn.Linear8bitLt


# bitsandbytes logs "MatMul8bitLt: inputs will be cast from <dtype> to float16 during
# quantization" (logger.warning, bitsandbytes/autograd/_functions.py, 0.45-0.50) on EVERY forward
# whose activations are not fp16, i.e. on every call with quantkit's bf16/fp32 activations, where
# the cast is LLM.int8()'s design, not a problem. The filter below drops exactly that record, and
# only while a quantkit-built layer is running its forward (a context variable, so other threads
# and bitsandbytes layers built elsewhere still log it).
_CAST_MESSAGE = "MatMul8bitLt: inputs will be cast from"
_BNB_LOGGER = "bitsandbytes.autograd._functions"
_IN_QUANTKIT_FORWARD = contextvars.ContextVar("quantkit_bnb_forward", default=False)


class _CastNoticeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_IN_QUANTKIT_FORWARD.get() and str(record.msg).startswith(_CAST_MESSAGE))


_quiet_class = None


def _quiet_module_class():
    """``Linear8bitLt`` whose forward drops bitsandbytes' per-call cast notice (see above)."""
    global _quiet_class
    if _quiet_class is None:
        logger = logging.getLogger(_BNB_LOGGER)
        if not any(isinstance(f, _CastNoticeFilter) for f in logger.filters):
            logger.addFilter(_CastNoticeFilter())

        class QuietLinear8bitLt(_module_class()):
            """``bitsandbytes.nn.Linear8bitLt`` without the per-call cast notice; same math."""

            def forward(self, x):
                token = _IN_QUANTKIT_FORWARD.set(True)
                try:
                    return super().forward(x)
                finally:
                    _IN_QUANTKIT_FORWARD.reset(token)

        QuietLinear8bitLt.__qualname__ = "QuietLinear8bitLt"
        _quiet_class = QuietLinear8bitLt
    return _quiet_class


def __getattr__(name):
    # MODULE_CLASS is looked up lazily so that importing this file never imports bitsandbytes.
    if name == "MODULE_CLASS":
        return _module_class()
    raise AttributeError(name)


def _build(cb: torch.Tensor, scb: torch.Tensor, bias, threshold: float):
    b = bnb()
    out_f, in_f = cb.shape
    with torch.device("meta"):
        mod = _quiet_module_class()(in_f, out_f, bias=bias is not None, has_fp16_weights=False,
                                    threshold=threshold)
    # The state Linear8bitLt reaches after .to(device) quantized its weight: data = CB, plus SCB.
    mod.weight = b.nn.Int8Params(cb, requires_grad=False, has_fp16_weights=False, CB=cb, SCB=scb)
    if bias is not None:
        mod.bias = nn.Parameter(bias, requires_grad=False)
    return mod


def quantize_module(name: str, linear: nn.Linear, config: LLMInt8Config):
    """Replace one ``nn.Linear`` by a ``Linear8bitLt``; returns it and its weight error statistics."""
    b = bnb()
    w = linear.weight.detach()
    wf = w.float()
    if not torch.isfinite(wf).all():
        raise InputError(f"weight of '{name}' has non-finite values (inf/nan); cannot quantize it")
    if wf.abs().max() > FP16_MAX:
        raise InputError(f"weight of '{name}' exceeds the fp16 range that bitsandbytes quantizes from")
    cb, scb, _ = b.functional.int8_vectorwise_quant(w.to(torch.float16).contiguous())
    bias = None if linear.bias is None else linear.bias.detach().to(BIAS_DTYPE).clone()
    mod = _build(cb, scb, bias, config.threshold)
    scale = scb.float() / QMAX  # (out,)
    report = layer_report(name, wf, cb.float() * scale.unsqueeze(1), scale)
    return mod, report


def export_tensors(module) -> dict:
    """Checkpoint tensors of one ``Linear8bitLt`` (before or after its first forward)."""
    scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
    cb = module.state.CB if module.state.CB is not None else module.weight.data
    out = {"weight": cb, "SCB": scb}
    if module.bias is not None:
        out["bias"] = module.bias.data
    return out


def load_module(name: str, linear: nn.Linear, config: LLMInt8Config, tensors: dict):
    """Rebuild the ``Linear8bitLt`` for ``name`` from its checkpoint tensors (``Int8Params`` must
    be constructed with CB/SCB; ``load_state_dict(assign=True)`` would replace it by a plain
    Parameter, so there is no ``empty_module`` for this method)."""
    want = {
        "weight": ((linear.out_features, linear.in_features), torch.int8),
        "SCB": ((linear.out_features,), torch.float32),
    }
    if linear.bias is not None:
        want["bias"] = ((linear.out_features,), BIAS_DTYPE)
    _check_tensors(name, tensors, want)
    return _build(tensors["weight"], tensors["SCB"], tensors.get("bias"), config.threshold)


def _check_tensors(name: str, tensors: dict, want: dict) -> None:
    for key, (shape, dtype) in want.items():
        if key not in tensors:
            raise InputError(f"checkpoint lacks tensor '{name}.{key}'")
        t = tensors[key]
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise InputError(f"tensor '{name}.{key}' is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}")
    extra = sorted(set(tensors) - set(want))
    if extra:
        raise InputError(f"checkpoint has unexpected tensor '{name}.{extra[0]}'")


def checkpoint_config(config: LLMInt8Config, quantized: list[str], skipped: list[str]) -> dict:
    """config.json's ``quantization_config``: transformers' ``BitsAndBytesConfig`` (8-bit) keys."""
    return {
        "quant_method": "bitsandbytes",
        "load_in_8bit": True,
        "load_in_4bit": False,
        "llm_int8_threshold": config.threshold,
        "llm_int8_skip_modules": list(skipped),
        "llm_int8_has_fp16_weight": False,
        "llm_int8_enable_fp32_cpu_offload": False,
    }
