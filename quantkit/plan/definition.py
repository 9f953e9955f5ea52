"""A plan: which models x GPUs x dtypes x contexts x batches to tabulate, and the assumptions.

A plan comes from command-line lists, from a YAML file (``calculators/plans/<name>.yaml`` or a
path), or both (command-line values override the file's). Every name is checked before any number
is computed, and all unknown names are reported in one error. The assumptions' defaults are
``quantkit estimate``'s own (read from its signature), so ``plan`` and ``estimate`` agree. The one
exception is ``skip``: estimate's None means "lm_head, or the checkpoint's own ignore list when the
dtype comes from its quantization_config"; a plan always names its dtypes, so that is
``quantkit.selection.DEFAULT_SKIP``.
"""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from quantkit.boundary.numbers import check_int
from quantkit.calculators.estimate import estimate
from quantkit.calculators.kv_cache import KV_DTYPE_BYTES
from quantkit.calculators.weights import DTYPE_BITS, parse_dtype
from quantkit.catalogue import (
    GpuSpec, data_dir, find_model_card, get_gpu, gpu_names, has_model, model_names,
)
from quantkit.errors import ConfigError, InputError, UnknownNameError, UsageError
from quantkit.selection import DEFAULT_SKIP
from quantkit.spec import ModelSpec

_EST = {k: p.default for k, p in inspect.signature(estimate).parameters.items()}

# Lists a plan may leave out (models and GPUs it may not).
DEFAULT_DTYPES: tuple[str, ...] = ("bf16", "int8", "int4")
DEFAULT_CONTEXTS: tuple[int, ...] = (4096,)
DEFAULT_BATCHES: tuple[int, ...] = (1,)

LIST_KEYS = ("models", "gpus", "dtypes", "contexts", "batches")
# Rows a plan may have at all: a guard against absurd grids (at ~5 ms a row, 10 million rows are
# 14 hours and 4 GB of xlsx). Plans over 100,000 rows run after a warning (export.size_warning).
MAX_ROWS = 10_000_000
SCALAR_KEYS = ("kv_dtype", "block_size", "prefill_chunk", "group_size", "overhead_bytes", "gpu_util", "skip")
FILE_KEYS = ("name", "description", *LIST_KEYS, *SCALAR_KEYS)


@dataclass(frozen=True)
class Assumptions:
    """Everything besides the five plan axes; defaults are ``quantkit estimate``'s."""

    kv_dtype: str = _EST["kv_dtype"]
    block_size: int | None = _EST["block_size"]  # tokens per paged KV block; None = off
    prefill_chunk: int = _EST["prefill_chunk"]  # tokens in one prefill forward pass, all sequences
    group_size: int | None = _EST["group_size"]  # None = the dtype's default (int4: 128)
    overhead_bytes: int = _EST["overhead_bytes"]  # bytes per GPU
    gpu_util: float = _EST["gpu_util"]  # fraction of each GPU's memory usable
    skip: tuple[str, ...] = DEFAULT_SKIP  # linear layers kept at base precision (see module doc)

    @property
    def kv_bytes(self) -> int:
        return KV_DTYPE_BYTES[self.kv_dtype]


@dataclass(frozen=True)
class Plan:
    """A validated plan: resolved model specs and GPU cards, canonical dtype names."""

    models: tuple[ModelSpec, ...]
    gpus: tuple[GpuSpec, ...]
    dtypes: tuple[str, ...]
    contexts: tuple[int, ...]
    batches: tuple[int, ...]
    assumptions: Assumptions = field(default_factory=Assumptions)
    name: str = "plan"
    description: str = ""

    @property
    def num_rows(self) -> int:
        return len(self.models) * len(self.gpus) * len(self.dtypes) * len(self.contexts) * len(self.batches)


def plans_dir() -> Path:
    return data_dir() / "plans"


def plan_names() -> list[str]:
    folder = plans_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def read_plan_file(name_or_path: str) -> dict[str, Any]:
    """The raw mapping of a plan file: a path, or a name in ``calculators/plans/``."""
    from quantkit.boundary.data import load_yaml_file
    from quantkit.boundary.paths import check_path, shown

    path = check_path(name_or_path, "--plan").expanduser()
    if not path.exists():
        candidate = plans_dir() / f"{name_or_path}.yaml"
        if not candidate.is_file():
            known = ", ".join(plan_names()) or "none"
            raise UnknownNameError(f"unknown plan {shown(name_or_path)!r}: not a file, and not one of the "
                                   f"built-in plans ({known})")
        path = candidate
    data = load_yaml_file(path, "plan file")  # capped, no aliases, bounded nesting
    if not isinstance(data, dict):
        raise ConfigError(f"{shown(path)}: a plan file must hold a mapping of {', '.join(FILE_KEYS)}")
    unknown = sorted(set(map(str, data)) - set(FILE_KEYS))
    if unknown:
        raise ConfigError(f"{shown(path)}: unknown plan field(s) {', '.join(repr(u[:60]) for u in unknown[:5])}; "
                          f"allowed: {', '.join(FILE_KEYS)}")
    data.setdefault("name", path.stem)
    return data


def _as_list(key: str, value: Any) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    raise ConfigError(f"plan field {key!r} must be a list or a comma-separated string, got {value!r}")


def _positive_ints(key: str, values: list) -> tuple[int, ...]:
    out, bad = [], []
    for v in values:
        try:
            n = int(str(v).replace("_", ""))
        except ValueError:
            n = 0
        (out if n > 0 else bad).append(n if n > 0 else v)
    if bad:
        raise InputError(f"{key} must be positive integers; bad: {', '.join(repr(b)[:40] for b in bad[:5])}")
    if not out:
        raise InputError(f"{key}: the list is empty")
    for n in out:
        check_int(key, n)
    return tuple(dict.fromkeys(out))


def _resolve_model(name: str) -> ModelSpec:
    """Catalogue name/alias or a local config.json path or folder (never the network)."""
    if has_model(name):
        card = find_model_card(name)
        return ModelSpec.from_hf_config(card.data, name=card.name)
    if Path(name).expanduser().exists():
        from quantkit.resolve import load_spec

        return load_spec(name)
    find_model_card(name)  # raises UnknownNameError with suggestions
    raise AssertionError("unreachable")  # pragma: no cover


def _opt_positive(key: str, value: Any) -> int | None:
    if value is None or value == 0 and key == "block_size":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{key} must be a positive integer, got {value!r}")
    return check_int(key, value)


def _expand(names, catalogue: list[str], what: str, errors: list[str]) -> list:
    """``all`` -> every catalogue name; a glob (``llama3*``, ``*-70b``; case-insensitive) -> the
    catalogue names it matches, in catalogue order. A local path with glob characters is kept."""
    out: list = []
    for name in names:
        text = str(name).strip()
        if text.lower() == "all":
            out += catalogue
        elif any(c in text for c in "*?[") and not Path(text).expanduser().exists():
            hits = [n for n in catalogue if fnmatch.fnmatchcase(n.lower(), text.lower())]
            if not hits:
                errors.append(f"{what} pattern {text!r} matches no catalogue {what} "
                              f"(see 'quantkit {what}s')")
            out += hits
        else:
            out.append(name)
    return out


def _resolve_all(names, resolve, errors: list[str]) -> dict:
    """{canonical name: object} for ``names`` in order, duplicates once; every unknown name's
    message goes to ``errors`` so they can be reported all at once."""
    out: dict = {}
    for name in names:
        try:
            obj = resolve(str(name))
            out.setdefault(obj.name, obj)
        except UsageError as exc:
            errors.append(str(exc))
    return out


def build_plan(raw: Mapping[str, Any]) -> Plan:
    """Validate a mapping of plan fields (file and/or command line) into a ``Plan``.

    Required: models, gpus (names, ``all``, or globs over the catalogue). Optional: dtypes (default bf16,int8,int4), contexts (4096), batches (1)
    and the assumptions (see ``Assumptions``). All unknown model, GPU and dtype names are reported
    together in one ``UnknownNameError``.
    """
    missing = [k for k in ("models", "gpus") if not raw.get(k)]
    if missing:
        raise InputError(f"a plan needs {' and '.join('--' + k for k in missing)} (or --plan FILE)")
    lists = {k: _as_list(k, raw[k]) for k in LIST_KEYS if raw.get(k) is not None}
    for key, values in lists.items():  # "--models ," or "--dtypes ''": an error, not an empty plan
        if not values:
            raise InputError(f"--{key}: the list is empty (got {str(raw[key])[:40]!r})")
    errors: list[str] = []
    lists["models"] = _expand(lists["models"], model_names(), "model", errors)
    lists["gpus"] = _expand(lists["gpus"], gpu_names(), "gpu", errors)
    rows = 1
    for key in LIST_KEYS:
        rows *= len(set(map(str, lists.get(key, ())))) or 1
    if rows > MAX_ROWS:  # before any model is resolved or row built
        raise InputError(f"the plan would have {rows:,} rows (models x GPUs x dtypes x contexts x "
                         f"batches), over the {MAX_ROWS:,}-row limit; split it into smaller plans")
    models: dict[str, ModelSpec] = _resolve_all(lists["models"], _resolve_model, errors)
    gpus: dict[str, GpuSpec] = _resolve_all(lists["gpus"], get_gpu, errors)
    dtypes: list[str] = []
    for name in lists.get("dtypes", DEFAULT_DTYPES):
        try:
            dtypes.append(parse_dtype(str(name)))
        except UsageError as exc:
            errors.append(str(exc))
    kv_dtype = raw.get("kv_dtype") or Assumptions.kv_dtype
    try:
        kv_dtype = parse_dtype(str(kv_dtype), tuple(KV_DTYPE_BYTES), "KV dtype")
    except UsageError as exc:
        errors.append(str(exc))
    if errors:
        raise UnknownNameError("; ".join(errors))
    contexts = _positive_ints("contexts", lists.get("contexts", list(DEFAULT_CONTEXTS)))
    batches = _positive_ints("batches", lists.get("batches", list(DEFAULT_BATCHES)))
    util = raw.get("gpu_util", Assumptions.gpu_util)
    if util is None:
        util = Assumptions.gpu_util
    if isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 < util <= 1:
        raise InputError(f"gpu_util must be in (0, 1], got {util!r}")
    skip = raw.get("skip")
    skip = Assumptions.skip if skip is None else tuple(_as_list("skip", skip))
    a = Assumptions(
        kv_dtype=kv_dtype,
        block_size=_opt_positive("block_size", raw.get("block_size")),
        prefill_chunk=_opt_positive("prefill_chunk", raw.get("prefill_chunk")) or Assumptions.prefill_chunk,
        group_size=_opt_positive("group_size", raw.get("group_size")),
        overhead_bytes=_non_negative("overhead_bytes", raw.get("overhead_bytes", Assumptions.overhead_bytes)),
        gpu_util=float(util),
        skip=tuple(str(s) for s in skip),
    )
    return Plan(tuple(models.values()), tuple(gpus.values()), tuple(dict.fromkeys(dtypes)), contexts,
                batches, a, str(raw.get("name") or "plan"), str(raw.get("description") or ""))


def _non_negative(key: str, value: Any) -> int:
    if value is None:
        return Assumptions.overhead_bytes
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"{key} must be a non-negative integer (bytes), got {value!r}")
    return check_int(key, value, least=0)


__all__ = ["Assumptions", "Plan", "build_plan", "read_plan_file", "plan_names", "DTYPE_BITS"]
