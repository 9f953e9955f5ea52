"""Which linear modules a quantization touches: one filter keyed by module name.

The quantizer (module swap) and the estimator (quantized checkpoint bytes) both call
``is_skipped``, so the two agree by construction.

A pattern matches a module's fully qualified name (``model.layers.0.self_attn.q_proj``) when it is
equal to it, equal to its last component (``lm_head``), or matches it as an ``fnmatch`` glob
(``*.mlp.*``, ``model.layers.0.*``), or, for a pattern starting with ``re:`` (compressed-tensors'
convention), when the regular expression after it matches the start of the name.
Patterns are never substring matches.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Iterable

# Kept in bf16 by default: the output projection. Embeddings are not nn.Linear and are never
# quantized by the int8 weight-only methods.
DEFAULT_SKIP: tuple[str, ...] = ("lm_head",)


def is_skipped(name: str, patterns: Iterable[str]) -> bool:
    """True if module ``name`` matches any of ``patterns`` (exact, last component, or glob)."""
    return _is_skipped(name, tuple(patterns))


@lru_cache(maxsize=1 << 16)  # the estimator asks for the same (name, patterns) per expert
def _is_skipped(name: str, patterns: tuple[str, ...]) -> bool:
    last = name.rsplit(".", 1)[-1]
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], name):
                return True
            continue
        if pattern == name or pattern == last or fnmatchcase(name, pattern):
            return True
    return False
