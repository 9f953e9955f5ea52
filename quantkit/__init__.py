"""quantkit: exact, offline memory planning, int8 weight quantization and evaluation for LLMs.

The top-level names that need torch (``quantize``, ``QuantConfig``, ``load_quantized``) are loaded
lazily, so ``import quantkit`` and ``quantkit estimate`` never import torch.
"""

__version__ = "0.1.0"

_LAZY = {
    "quantize": "quantkit.quantizers.api",
    "QuantConfig": "quantkit.quantizers.api",
    "load_quantized": "quantkit.quantizers.checkpoint",
    "ModelSpec": "quantkit.spec",
    "estimate": "quantkit.calculators.estimate",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'quantkit' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
