"""Integers from files and options, kept within a range the calculators and torch can take.

``MAX_INT`` (2^40 ~ 1.1e12) bounds every count quantkit reads: layers, hidden sizes, vocabularies,
contexts, batches, group sizes. The largest real values are ~10^7 (contexts), so the bound only
refuses values that would overflow an index (``10**30`` layers) or make a calculation run for ever.
"""

from __future__ import annotations

from quantkit.errors import InputError

MAX_INT = 2**40


def check_int(name: str, value, least: int = 1, most: int = MAX_INT, error=InputError) -> int:
    """``value`` if it is an int (not a bool) in [least, most]; ``error`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        shown = repr(value) if not isinstance(value, int) or abs(value) < 10**15 else f"{value:.3e}"
        raise error(f"{name} must be an integer from {least:,} to {most:,}, got {shown[:60]}")
    return value
