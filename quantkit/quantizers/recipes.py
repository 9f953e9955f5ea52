"""Recipes: YAML files that name a quantization and the evaluation to run on it.

Schema (every key optional except ``quantization.method``; unknown keys are errors)::

    name: int8-g128                 # defaults to the file name without .yaml
    description: one line
    quantization:                   # QuantConfig options (see quantkit.quantizers.configs)
      method: int8                  # a registered method: int8, llm.int8
      group_size: 128               # int8 only; null = per output channel
      scale_dtype: bf16             # int8 only; bf16 | fp16 | fp32
      threshold: 6.0                # llm.int8 only; outlier threshold
      skip: [lm_head]               # module names or glob patterns kept unquantized
    eval:                           # read by `quantkit eval`; same names as its options
      ppl: path/to/text.txt         # text to score (null: pass --ppl)
      ctx: 2048                     # window length, tokens
      stride: null                  # sliding-window stride, tokens (null: non-overlapping windows)
      max_tokens: null              # score at most this many tokens (null: the whole text)
      compare: [bf16, int8]         # variants to compare
      speed: false                  # also measure prefill/decode speed
      batch: [1, 8]                 # decode batch sizes for the speed run
      prompt_len: 512               # tokens
      new_tokens: 128               # tokens

``--recipe`` takes a path, or the bare name of a shipped recipe: ``recipes/NAME.yaml`` in a source
checkout, ``quantkit/_recipes/NAME.yaml`` in an installed wheel. Command-line options override
the recipe's values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path

from quantkit.errors import ConfigError, QuantkitError, UnknownNameError
from quantkit.quantizers.configs import QuantConfig

_PKG = Path(__file__).resolve().parents[1]
RECIPE_DIRS = (_PKG.parent / "recipes", _PKG / "_recipes")  # source checkout, installed wheel

TOP_KEYS = ("name", "description", "quantization", "eval")
QUANT_KEYS = ("method", "group_size", "scale_dtype", "threshold", "skip")


def _pos_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _str_list(v):
    return isinstance(v, list) and all(isinstance(s, str) and s for s in v)


# eval key -> (check, description of allowed values)
EVAL_KEYS = {
    "ppl": (lambda v: v is None or (isinstance(v, str) and v), "a file path or null"),
    "ctx": (_pos_int, "a positive integer (tokens)"),
    "stride": (lambda v: v is None or _pos_int(v), "a positive integer (tokens) or null"),
    "max_tokens": (lambda v: v is None or _pos_int(v), "a positive integer (tokens) or null"),
    "compare": (lambda v: _str_list(v) and len(v) > 0, "a non-empty list of variant names"),
    "speed": (lambda v: isinstance(v, bool), "true or false"),
    "batch": (lambda v: isinstance(v, list) and len(v) > 0 and all(_pos_int(b) for b in v),
              "a non-empty list of positive integers"),
    "prompt_len": (_pos_int, "a positive integer (tokens)"),
    "new_tokens": (_pos_int, "a positive integer (tokens)"),
}


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    description: str
    quantization: dict  # validated options as written (method always present)
    eval: dict = field(default_factory=dict)  # validated; absent keys = the eval command's defaults

    def quant_config(self, **overrides) -> QuantConfig:
        """The recipe's QuantConfig with ``overrides`` (values that are not None) applied on top."""
        return build_config(self, **overrides)


def shipped_recipes() -> dict[str, Path]:
    """{name: path} of the recipes shipped with quantkit."""
    found: dict[str, Path] = {}
    for folder in RECIPE_DIRS:
        if folder.is_dir():
            for p in sorted(folder.glob("*.yaml")):
                found.setdefault(p.stem, p)
    return found


def resolve_recipe(name_or_path: str) -> Path:
    """Path of a recipe given as a path or as a shipped recipe's bare name."""
    from quantkit.boundary.paths import check_path

    path = check_path(name_or_path, "--recipe").expanduser()
    if path.exists():  # a regular file, else load_recipe's reader names what it is
        return path
    shipped = shipped_recipes()
    stem = name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path
    if "/" not in name_or_path and stem in shipped:
        return shipped[stem]
    close = get_close_matches(stem, list(shipped), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnknownNameError(f"no recipe file or shipped recipe named '{name_or_path}'{hint}; "
                           f"shipped: {', '.join(shipped) or 'none'}")


def load_recipe(name_or_path: str) -> Recipe:
    """Read and schema-check a recipe; ``ConfigError`` naming the file and key on any problem."""
    from quantkit.boundary.data import load_yaml_file

    path = resolve_recipe(name_or_path)
    where = f"recipe '{path.name}'"
    data = load_yaml_file(path, "recipe", where=where)  # capped, no aliases, bounded nesting
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping with a 'quantization' section")
    _check_keys(where, "", data, TOP_KEYS)
    quant = data.get("quantization")
    if not isinstance(quant, dict):
        raise ConfigError(f"{where}: 'quantization' must be a mapping with at least 'method'")
    _check_keys(where, "quantization.", quant, QUANT_KEYS)
    if "method" not in quant:
        raise ConfigError(f"{where}: quantization.method is missing")
    ev = data.get("eval") or {}
    if not isinstance(ev, dict):
        raise ConfigError(f"{where}: 'eval' must be a mapping")
    _check_keys(where, "eval.", ev, tuple(EVAL_KEYS))
    for key, value in ev.items():
        check, allowed = EVAL_KEYS[key]
        if not check(value):
            raise ConfigError(f"{where}: eval.{key} must be {allowed}, got {value!r}")
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{where}: '{key}' must be a string, got {data[key]!r}")
    recipe = Recipe(name=data.get("name", path.stem), path=path,
                    description=data.get("description", ""), quantization=dict(quant), eval=dict(ev))
    build_config(recipe)  # method and option values checked now, with the file named
    return recipe


def build_config(recipe: Recipe | None = None, **overrides) -> QuantConfig:
    """QuantConfig from a recipe's quantization section (if any) with non-None ``overrides`` on top."""
    options = dict(recipe.quantization) if recipe is not None else {}
    method = overrides.get("method")
    if recipe is not None and method is not None and method != options["method"]:
        raise ConfigError(f"recipe '{recipe.path.name}' is for method '{options['method']}', "
                          f"not '{method}': drop one of --recipe and --method")
    options.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return QuantConfig(**options)
    except QuantkitError as exc:
        if recipe is None:
            raise
        raise type(exc)(f"recipe '{recipe.path.name}': {exc}") from None


def _check_keys(where: str, prefix: str, data: dict, allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            close = get_close_matches(str(key), list(allowed), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{prefix}{key}'{hint}; "
                              f"allowed: {', '.join(allowed)}")
