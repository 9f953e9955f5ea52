"""The built-in catalogue: model cards (config.json form), GPU cards and plan definitions.

The data lives in the repository's ``calculators/`` folder, which a wheel ships as
``quantkit/_catalogue``. Lookup is by exact name or alias, case-insensitive, never by substring;
an unknown name raises ``UnknownNameError`` with close suggestions.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from quantkit.errors import ConfigError, UnknownNameError

_PKG = Path(__file__).resolve().parent


def data_dir() -> Path:
    """``quantkit/_catalogue`` in an installed wheel, else the source tree's ``calculators/``."""
    for candidate in (_PKG / "_catalogue", _PKG.parent / "calculators"):
        if (candidate / "models").is_dir():
            return candidate
    raise ConfigError(
        f"the built-in catalogue is missing: neither {_PKG / '_catalogue'} nor "
        f"{_PKG.parent / 'calculators'} holds a 'models' folder; reinstall quantkit"
    )


def _norm(name: str) -> str:
    return name.strip().lower()


def _load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


@dataclass(frozen=True)
class Card:
    name: str
    aliases: tuple[str, ...]
    path: Path
    data: dict[str, Any]


def _index(kind: str) -> tuple[dict[str, Card], dict[str, Card]]:
    cards: dict[str, Card] = {}
    lookup: dict[str, Card] = {}
    for path in sorted((data_dir() / kind).glob("*.json")):
        data = _load_json(path)
        meta = data.get("_quantkit", data) if kind == "models" else data
        name = meta.get("name", path.stem)
        card = Card(name, tuple(meta.get("aliases", ())), path, data)
        cards[name] = card
        for key in (name, *card.aliases):
            other = lookup.get(_norm(key))
            if other is not None and other.name != name:
                raise ConfigError(f"catalogue alias {key!r} is claimed by both {other.name} and {name}")
            lookup[_norm(key)] = card
    return cards, lookup


@lru_cache(maxsize=None)
def _models():
    return _index("models")


@lru_cache(maxsize=None)
def _gpus():
    return _index("gpus")


def _find(kind: str, name: str, index) -> Card:
    cards, lookup = index
    card = lookup.get(_norm(name))
    if card is not None:
        return card
    close = difflib.get_close_matches(_norm(name), list(lookup), n=3, cutoff=0.6)
    names = sorted({lookup[c].name for c in close})
    hint = f"; did you mean {', '.join(names)}?" if names else ""
    listing = "quantkit models" if kind == "model" else "quantkit gpus"
    raise UnknownNameError(f"unknown {kind} {name!r}{hint} (see '{listing}' for the list)")


def model_names() -> list[str]:
    return list(_models()[0])


def find_model_card(name: str) -> Card:
    """The model card for a catalogue name or alias (case-insensitive)."""
    return _find("model", name, _models())


def has_model(name: str) -> bool:
    return _norm(name) in _models()[1]


@dataclass(frozen=True)
class GpuSpec:
    """A GPU card. ``memory_bytes`` is the total the device reports (e.g. torch's total_memory)."""

    name: str
    display_name: str
    memory_bytes: int  # bytes
    memory_bandwidth_bytes_per_s: int  # bytes/s, vendor peak
    bf16_dense_flops: int  # FLOP/s, dense (no sparsity); GPUs without bf16 (T4): the fp16 rate
    aliases: tuple[str, ...] = ()
    half_dtype: str = "bf16"  # "fp16" where the GPU has no bf16 tensor cores
    source: str = ""


def gpu_from_card(card: Card) -> GpuSpec:
    d = card.data
    try:
        half = "bf16" if d["bf16_dense_flops"] is not None else "fp16"
        flops = d["bf16_dense_flops"] if half == "bf16" else d["fp16_dense_flops"]
        if flops is None:
            raise KeyError("fp16_dense_flops")
        return GpuSpec(
            name=card.name,
            display_name=d.get("display_name", card.name),
            memory_bytes=int(d["memory_bytes"]),
            memory_bandwidth_bytes_per_s=int(d["memory_bandwidth_bytes_per_s"]),
            bf16_dense_flops=int(flops),
            aliases=card.aliases,
            source=d.get("source", ""),
            half_dtype=half,
        )
    except KeyError as exc:
        raise ConfigError(f"GPU card {card.path} is missing the field {exc.args[0]!r}") from None


def gpu_names() -> list[str]:
    return list(_gpus()[0])


def get_gpu(name: str) -> GpuSpec:
    """A GPU by name or alias (case-insensitive): ``h100``, ``H100-SXM``, ``a100-80gb`` ..."""
    return gpu_from_card(_find("GPU", name, _gpus()))


def gpu_cards() -> list[Card]:
    return list(_gpus()[0].values())


def model_cards() -> list[Card]:
    return list(_models()[0].values())
