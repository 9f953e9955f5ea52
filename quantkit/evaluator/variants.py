"""The ``--compare`` list: which variants of a model to build, and building them.

Entries (comma-separated, in order):

- ``bf16``, ``fp16``, ``fp32``: the model's weights rounded to that dtype.
- ``int8``, ``int8-g<N>`` (group size N), ``llm.int8``: quantized on the fly with
  ``quantkit.quantize`` from the base variant's weights (the first float entry), or from the
  weights as stored when the list has no float entry.
- a path to a saved checkpoint folder (a quantkit int8 checkpoint, or another float export).

The base of the KL / top-1 comparison is the first float entry. Compute dtype: fp32 on CPU (bf16
matmuls there are slow and less exact); on CUDA a float variant computes in its own dtype and a
quantized one in bf16.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from quantkit.boundary.numbers import check_int
from quantkit.errors import InputError, UnknownNameError

if TYPE_CHECKING:  # torch is imported where variants are built, not where they are parsed
    import torch

    from quantkit.evaluator.model import Decoder

FLOAT_NAMES = ("bf16", "fp16", "fp32")  # keys of loader.DTYPES
_GROUPED = re.compile(r"^int8-g(\d+)$")
QUANT_NAMES = ("int8", "int8-g<N>", "llm.int8")


@dataclass(frozen=True)
class VariantSpec:
    name: str  # as written in --compare
    kind: str  # "float", "quantize" or "checkpoint"
    dtype: str | None = None  # float variants: bf16, fp16, fp32
    method: str | None = None  # quantized variants: int8, llm.int8
    group_size: int | None = None
    path: Path | None = None


@dataclass
class Variant:
    spec: VariantSpec
    runner: Decoder
    compute_dtype: torch.dtype
    est_dtype: str  # what `quantkit estimate` calls these weights: bf16, fp16, fp32, int8
    group_size: int | None
    description: str
    weights_bytes: int  # parameters and buffers as the variant stores them (before the compute cast)


def parse_compare(compare: str | list[str] | tuple[str, ...]) -> list[VariantSpec]:
    """Parse ``--compare``; ``InputError`` / ``UnknownNameError`` name the bad entry."""
    items = compare.split(",") if isinstance(compare, str) else list(compare)
    items = [i.strip() for i in items]
    if not items or any(not i for i in items):
        raise InputError(f"--compare needs comma-separated variants, got {','.join(items)!r}")
    dup = sorted({i for i in items if items.count(i) > 1})
    if dup:
        raise InputError(f"--compare lists {dup[0]!r} twice")
    specs = []
    for item in items:
        m = _GROUPED.match(item)
        if item in FLOAT_NAMES:
            specs.append(VariantSpec(item, "float", dtype=item))
        elif item in ("int8", "llm.int8"):
            specs.append(VariantSpec(item, "quantize", method=item))
        elif m:
            if int(m.group(1)) <= 0:
                raise InputError(f"--compare {item!r}: the group size must be positive")
            check_int(f"--compare {item!r}: the group size", int(m.group(1)))
            specs.append(VariantSpec(item, "quantize", method="int8", group_size=int(m.group(1))))
        elif Path(item).expanduser().is_dir():
            specs.append(VariantSpec(item, "checkpoint", path=Path(item).expanduser()))
        else:
            raise UnknownNameError(
                f"unknown --compare entry {item!r}: use {', '.join(FLOAT_NAMES)}, "
                f"{', '.join(QUANT_NAMES)} or the path of a saved checkpoint folder")
    return specs


def base_name(specs: list[VariantSpec]) -> str | None:
    return next((s.name for s in specs if s.kind == "float"), None)


def build_variants(model_dir: Path, specs: list[VariantSpec], device: torch.device,
                   progress: bool = True, keep_on_cpu: bool = False) -> list[Variant]:
    """Load / quantize every variant onto ``device`` (in the order given), in the compute dtype
    for ``device``. ``keep_on_cpu``: leave them on the CPU (to be dispatched over GPUs later)."""
    import torch

    from quantkit.evaluator.loader import DTYPES, load_runner

    # The model as stored is loaded once (on CPU); the last entry that needs it takes it, the
    # others take copies.
    first_float = next((i for i, s in enumerate(specs) if s.kind == "float"), len(specs))
    users = [i for i, s in enumerate(specs)
             if s.kind == "float" or (s.kind == "quantize" and i < first_float)]
    stored = load_runner(model_dir).runner if users else None
    base_weights = base_dtype = None  # the base variant and the dtype of its weights
    out = []
    for i, s in enumerate(specs):
        if s.kind == "checkpoint":
            out.append(_checkpoint_variant(s, device, model_dir))
            continue
        if i in users:
            src = stored if i == users[-1] else copy.deepcopy(stored)
        else:  # quantized from the base variant's weights
            src = copy.deepcopy(base_weights)
        if s.kind == "float":
            runner = src.to(DTYPES[s.dtype])  # in place: `src` is this variant's own copy
            if base_weights is None:
                base_weights, base_dtype = runner, s.dtype
            out.append(_finish(s, runner, device, DTYPES[s.dtype], s.dtype, None,
                               f"{s.dtype} weights"))
        else:
            # Quantize where the model will run (a GPU quantizes a 7B model in seconds).
            runner = _quantize(src if keep_on_cpu else src.to(device), s, progress)
            desc = f"{s.method} quantized on the fly from the {base_dtype or 'stored'} weights"
            out.append(_finish(s, runner, device, torch.bfloat16, "int8", s.group_size, desc))
    for v in out:
        _cast(v)
        if not keep_on_cpu:
            v.runner.to(device)
    return out


def _quantize(runner: Decoder, s: VariantSpec, progress: bool) -> Decoder:
    import quantkit

    options = {"group_size": s.group_size} if s.group_size is not None else {}
    quantkit.quantize(runner, quantkit.QuantConfig(method=s.method, **options), progress=progress)
    return runner


def _check_same_model(model_dir: Path, ckpt_dir) -> None:
    """A saved checkpoint in --compare must have MODEL's architecture (it is scored with MODEL's
    tokenizer and against MODEL's logits)."""
    import json
    from dataclasses import replace

    from quantkit.errors import InputError
    from quantkit.modelio import read_config
    from quantkit.spec import ModelSpec

    def arch(folder) -> ModelSpec:
        cfg = read_config(folder)  # through quantkit.boundary: capped, inside the folder
        cfg.pop("quantization_config", None)
        return replace(ModelSpec.from_hf_config(cfg, name="x"), torch_dtype=None)

    if arch(model_dir) != arch(ckpt_dir):
        raise InputError(f"checkpoint {ckpt_dir} is not a variant of {model_dir}: its config.json "
                         f"describes another architecture")


def _checkpoint_variant(s: VariantSpec, device, base_dir: Path) -> Variant:
    import torch

    from quantkit.evaluator.loader import DTYPE_NAMES, load_runner

    lm = load_runner(s.path)
    _check_same_model(base_dir, s.path)
    q = lm.quantization
    if q is None:
        dtype = lm.runner.model.norm.weight.dtype
        name = DTYPE_NAMES.get(dtype, "fp32")
        return _finish(s, lm.runner, device, dtype, name, None, f"checkpoint {s.path} ({name})")
    from quantkit.quantizers.checkpoint import read_quant_block

    _, block = read_quant_block(lm.config, s.path, s.path)  # also for llm-compressor / bitsandbytes folders
    group = block.get("group_size")
    desc = f"checkpoint {s.path} ({block.get('method', q.get('quant_method'))})"
    return _finish(s, lm.runner, device, torch.bfloat16, "int8", group, desc)


def _finish(s: VariantSpec, runner: Decoder, device, compute: torch.dtype, est_dtype: str,
            group_size, description: str) -> Variant:
    """Record the stored bytes and the compute dtype for ``device``; the cast and the move come
    later, after every variant is built, so that quantized copies start from the stored dtype."""
    import torch

    from quantkit.evaluator.speed import weights_bytes

    if device.type == "cpu":
        compute = torch.float32
    stored_bytes = weights_bytes(runner)
    return Variant(s, runner.eval(), compute, est_dtype, group_size, description,
                   stored_bytes)


def _cast(v: Variant) -> None:
    # Float tensors outside quantized layers only: int8 weights stay int8 and their scales and
    # biases stay as stored (an fp16 or fp32 scale is not rounded to bf16 on the GPU).
    from quantkit.evaluator.hf import cast_activations

    cast_activations(v.runner, v.compute_dtype)
