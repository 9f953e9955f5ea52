"""Quantization configs: one frozen dataclass per method, and the registry that maps names to them.

Torch-free on purpose: the CLI builds its ``--method`` choices from ``METHODS`` without importing
torch. Each entry names the handler module (which does need torch) that is imported on first use.

``QuantConfig`` is both the common base class and the factory::

    QuantConfig(method="int8", group_size=128)   # -> Int8Config(method='int8', group_size=128, ...)
    QuantConfig(method="llm.int8", threshold=6)  # -> LLMInt8Config(...)
    Int8Config(group_size=128)                   # the same as the first line

Adding a method = one config dataclass here (decorated with ``@register``), one handler module
exposing ``quantize_module``/``empty_module``/``checkpoint_config`` (see ``int8.py``), one test file.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from difflib import get_close_matches
from typing import ClassVar

from quantkit.boundary.numbers import check_int
from quantkit.errors import ConfigError, UnknownNameError
from quantkit.selection import DEFAULT_SKIP

DEFAULT_METHOD = "int8"

# Storage dtype of per-channel / per-group scales -> bytes per scale.
SCALE_DTYPES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_cls: type
    module: str  # handler module, imported lazily (it needs torch)
    help: str


METHODS: dict[str, MethodEntry] = {}


def register(name: str, module: str, help: str):
    """Class decorator: add a config dataclass to ``METHODS`` under ``name``."""

    def deco(cls):
        cls.METHOD = name
        METHODS[name] = MethodEntry(name, cls, module, help)
        return cls

    return deco


def get_method(name: str) -> MethodEntry:
    """The registry entry for ``name``; ``UnknownNameError`` with a suggestion otherwise."""
    if name in METHODS:
        return METHODS[name]
    close = get_close_matches(str(name), list(METHODS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnknownNameError(
        f"unknown quantization method {name!r}{hint}; choose from: {', '.join(METHODS)}"
    )


def handler_for(config: "QuantConfig"):
    """The handler module of ``config``'s method (imports torch, and bitsandbytes for llm.int8)."""
    import importlib

    return importlib.import_module(get_method(config.method).module)


def _unknown_key_error(method: str, key: str, allowed: list[str]) -> ConfigError:
    close = get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(
        f"method {method!r} has no option {key!r}{hint}; its options: {', '.join(allowed)}"
    )


class QuantConfig:
    """Base class of every method config, and the factory ``QuantConfig(method=..., **options)``.

    Calling ``QuantConfig`` itself dispatches on ``method`` (default ``"int8"``) to the registered
    dataclass; unknown methods raise ``UnknownNameError``, unknown options ``ConfigError``.
    """

    METHOD: ClassVar[str] = ""

    def __new__(cls, *args, **kwargs):
        if cls is QuantConfig:
            if args:
                raise ConfigError("QuantConfig takes keyword arguments only, e.g. method='int8'")
            cls = get_method(kwargs.get("method", DEFAULT_METHOD)).config_cls
            allowed = [f.name for f in fields(cls)]
            for key in kwargs:
                if key not in allowed:
                    raise _unknown_key_error(cls.METHOD, key, allowed)
        return super().__new__(cls)

    @classmethod
    def from_dict(cls, data: dict) -> "QuantConfig":
        """Build from a plain dict (recipe section, checkpoint block); same checks as the factory."""
        if not isinstance(data, dict):
            raise ConfigError(f"a quantization config must be a mapping, got {type(data).__name__}")
        return QuantConfig(**data)

    def to_dict(self) -> dict:
        """JSON-ready dict (tuples become lists) that ``from_dict`` turns back into this config."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    # Shared validation helpers, called from each dataclass's __post_init__.
    def _check_method(self):
        if self.method != self.METHOD:
            raise ConfigError(
                f"{type(self).__name__} is method {self.METHOD!r}, got method={self.method!r}"
            )

    def _normalise_skip(self):
        skip = self.skip
        if isinstance(skip, str):
            skip = (skip,)
        if not isinstance(skip, (list, tuple)) or not all(isinstance(s, str) and s for s in skip):
            raise ConfigError(f"skip must be a list of non-empty module names or patterns, got {skip!r}")
        for pattern in skip:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except (re.error, RecursionError, OverflowError) as exc:
                    raise ConfigError(f"skip pattern {pattern!r} is not a valid regular expression: "
                                      f"{getattr(exc, 'msg', exc)}") from None
        object.__setattr__(self, "skip", tuple(skip))


@register("int8", "quantkit.quantizers.int8", "int8 weights, bf16 activations (weight-only)")
@dataclass(frozen=True)
class Int8Config(QuantConfig):
    """Weight-only int8: symmetric absmax, round to nearest, q in [-127, 127].

    group_size: None = one scale per output channel; N = one scale per N input columns
        (ceil(in_features / N) groups, the last one possibly shorter). Positive int.
    skip: module names or patterns kept unquantized (``quantkit.selection.is_skipped``).
    scale_dtype: storage dtype of the scales, one of ``SCALE_DTYPES`` (bf16, fp16, fp32).
    """

    method: str = "int8"
    group_size: int | None = None
    skip: tuple[str, ...] = field(default=DEFAULT_SKIP)
    scale_dtype: str = "bf16"

    def __post_init__(self):
        self._check_method()
        self._normalise_skip()
        gs = self.group_size
        if gs is not None and (isinstance(gs, bool) or not isinstance(gs, int) or gs <= 0):
            raise ConfigError(f"group_size must be a positive integer or null, got {gs!r}")
        if gs is not None:
            check_int("group_size", gs, error=ConfigError)
        if self.scale_dtype not in SCALE_DTYPES:
            raise ConfigError(
                f"scale_dtype must be one of {', '.join(SCALE_DTYPES)}, got {self.scale_dtype!r}"
            )

    @property
    def bits(self) -> int:
        return 8

    @property
    def granularity(self) -> str:
        return "channel" if self.group_size is None else "group"

    @property
    def scale_bytes(self) -> int:
        return SCALE_DTYPES[self.scale_dtype]

    @property
    def meta_bytes(self) -> int:
        """Bytes stored per quantized linear besides values and scales: the int64 ``weight_shape``
        of compressed-tensors' pack-quantized layout (``quantizers.checkpoint``)."""
        from quantkit.calculators.weights import PACKED_META_BYTES

        return PACKED_META_BYTES


@register("llm.int8", "quantkit.quantizers.bnb", "bitsandbytes LLM.int8(): int8 weights and activations, fp16 outliers")
@dataclass(frozen=True)
class LLMInt8Config(QuantConfig):
    """bitsandbytes LLM.int8() (``Linear8bitLt``): int8 weights with one fp32 absmax per output
    row, activations quantized per token at run time, input columns with any |x| > threshold
    computed in fp16 (threshold 0 disables the outlier path).
    """

    method: str = "llm.int8"
    threshold: float = 6.0
    skip: tuple[str, ...] = field(default=DEFAULT_SKIP)

    def __post_init__(self):
        self._check_method()
        self._normalise_skip()
        th = self.threshold
        if isinstance(th, bool) or not isinstance(th, (int, float)) or not math.isfinite(th) or th < 0:
            raise ConfigError(f"threshold must be a finite number >= 0, got {th!r}")
        object.__setattr__(self, "threshold", float(th))

    @property
    def bits(self) -> int:
        return 8

    @property
    def group_size(self) -> None:
        return None

    @property
    def granularity(self) -> str:
        return "channel"

    @property
    def scale_dtype(self) -> str:
        return "fp32"  # bitsandbytes keeps the row absmax (SCB) in fp32

    @property
    def scale_bytes(self) -> int:
        return SCALE_DTYPES[self.scale_dtype]

    @property
    def meta_bytes(self) -> int:
        return 0  # bitsandbytes' naming: weight, SCB (and bias) only
