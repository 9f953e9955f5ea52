"""Quantized checkpoints: write them atomically, read them back with ``load_quantized``.

Folder layout::

    config.json                    the model's config + "quantization_config" (below)
    model.safetensors              or model-0000k-of-0000n.safetensors + model.safetensors.index.json
                                   ({"metadata": {"total_size": bytes}, "weight_map": {name: file}})
    quant_report.json              per-layer errors and byte totals (``report.QuantReport``)
    tokenizer files                copied from the source folder when present

Tensor names are transformers' module names (``model.layers.N.self_attn.q_proj`` ...).

Method ``int8`` (format version 2: compressed-tensors "pack-quantized", what llm-compressor's
W8A16 writes, tensor for tensor; see ``layout`` and ``packing``):
  ``<module>.weight_packed`` int32 (out, ceil(in / 4)): int8 values q + 128, four per word, the
                             first in the low byte (compressed-tensors ``pack_to_int32``)
  ``<module>.weight_scale``  (out, n_groups) in the scale dtype (bf16 by default); n_groups = 1 for
                             strategy "channel", in / group_size for strategy "group" (group_size
                             must divide in_features: ``errors.FormatError`` otherwise)
  ``<module>.weight_shape``  int64 [out, in] (16 bytes per quantized linear)
  ``<module>.bias``          bf16 (out,), if the layer has one
  dequantized weight = q * weight_scale.repeat_interleave(group_size, dim=1)
  Fused MoE experts (``experts.Int8Experts``) are written per expert under the names transformers'
  ``save_pretrained`` uses for that architecture (``experts_io``), each a pack-quantized linear.
  Everything else (embeddings, norms, skipped linears such as lm_head) keeps its name and dtype.
  Version 1 folders (``<module>.weight`` int8 + ``weight_scale``, quantkit's own) still load.
Method ``llm.int8`` (bitsandbytes naming, see ``bnb.py``): ``<module>.weight`` int8 (out, in),
  ``<module>.SCB`` fp32 (out,) = row absmax (scale = SCB / 127), ``<module>.bias`` bf16.
Tied embeddings: a tensor shared by two names (lm_head.weight = model.embed_tokens.weight) is
written once, under the first name in the state dict, as transformers does.

``quantization_config`` for int8 is llm-compressor's, key for key (``int8.checkpoint_config``):
``quant_method`` compressed-tensors, ``format`` pack-quantized (top level and in ``group_0``),
``weights`` {num_bits 8, type int, symmetric, strategy channel|group, group_size, observer
"memoryless_minmax", scale_dtype null for bf16 ...}, ``ignore`` [every skipped linear, by full
name], ``quantization_status`` compressed, plus the ``quantkit`` block below; and for llm.int8 transformers' ``BitsAndBytesConfig`` keys (quant_method "bitsandbytes",
load_in_8bit, llm_int8_threshold, llm_int8_skip_modules) plus the same ``quantkit`` block::

    "quantkit": {"version": 1, "quantkit_version": "0.1.0", "method": "int8" | "llm.int8",
                 "bits": 8, "granularity": "channel" | "group", "group_size": null | N,
                 "scale_dtype": "bf16" | "fp16" | "fp32", "config": QuantConfig.to_dict(),
                 "quantized_modules": [...], "skipped_modules": [...],
                 "source": the absolute path of the folder it was made from, or null}

quantkit reads the ``quantkit`` block of its own folders (versions 1 and 2); folders other tools
wrote (llm-compressor pack-quantized, transformers' bitsandbytes 8-bit) get one built from their
``quantization_config`` (``layout.foreign_block``), never from file names.

Differences from llm-compressor's W8A16 output: the extra ``quantkit`` block, ``version`` (the
compressed-tensors release quantkit's layout is tested with), ``ignore`` by full module names,
and the int8 values themselves (quantkit: absmax / 127, q in [-127, 127]; compressed-tensors'
minmax observer: absmax / 127.5, q in [-128, 127]).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from quantkit.errors import ConfigError, InputError, OutputExistsError
from quantkit.fsutil import atomic_dir, atomic_write
from quantkit.quantizers.configs import QuantConfig, handler_for

from quantkit.quantizers.layout import FORMAT_VERSION, READABLE_VERSIONS  # noqa: E402
DEFAULT_MAX_SHARD_BYTES = 5_000_000_000  # 5 GB (10^9), transformers' default shard size


def tensor_bytes(state: dict) -> int:
    """Sum of numel * itemsize over ``state`` (bytes, int)."""
    return sum(t.numel() * t.element_size() for t in state.values())


def dedup_shared(state: dict) -> dict:
    """``state`` without later names of tensors that share storage with an earlier one (ties)."""
    seen, out = set(), {}
    for name, t in state.items():
        if t.device.type == "meta":
            out[name] = t
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key not in seen:
            seen.add(key)
            out[name] = t
    return out


def base_dtype(model):
    """dtype of the model's unquantized float tensors (its input embedding, else first float param)."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and hasattr(emb, "weight"):
        return emb.weight.dtype
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    raise ConfigError("the model has no floating-point parameters")


def collect_state(model, config: QuantConfig) -> tuple[dict, list[str], list[str]]:
    """(tensors to save, quantized module names, skipped module names) for ``model``; skipped are
    the float ``nn.Linear`` and fused MoE experts modules left unquantized."""
    from torch import nn

    from quantkit.quantizers import experts as fused

    handler = handler_for(config)
    qcls = handler.MODULE_CLASS
    quantized, skipped = [], []
    for name, mod in model.named_modules():
        if isinstance(mod, (qcls, fused.Int8Experts)):
            quantized.append(name)
        elif isinstance(mod, nn.Linear) or fused.is_fused_experts(mod):
            skipped.append(name)
    if not quantized:
        raise ConfigError(f"the model has no {config.method} layers: run quantkit.quantize first")
    done = set(quantized)
    state = {}
    for name in quantized:
        state.update(module_tensors(handler, model.get_submodule(name), name, model))
    for key, t in model.state_dict().items():
        if key.rsplit(".", 1)[0] not in done:
            state[key] = t
    return dedup_shared(state), quantized, skipped


def module_tensors(handler, mod, name: str, model) -> dict:
    """Checkpoint tensors (full names) of the quantized module ``mod`` that stands at ``name``:
    the one export the in-memory and the streaming writers share. ``model`` holds that module,
    quantized or still float (meta tensors suffice): fused MoE experts are written per expert
    under the names transformers' ``save_pretrained`` gives them (``experts_io``)."""
    from quantkit.quantizers import experts as fused

    if isinstance(mod, fused.Int8Experts):
        from quantkit.quantizers.experts_io import export

        return export(model, name, mod)
    return {f"{name}.{key}": t for key, t in handler.export_tensors(mod).items()}


def checkpoint_config(model, config: QuantConfig, quantized, skipped, source=None) -> dict:
    """``quantization_config`` for config.json (``quantization_config``), plus for int8 the fused
    experts modules written under names only quantkit reads (no per-expert Hub layout: gpt-oss).
    ``model`` holds the quantized modules, quantized or still float (meta suffices)."""
    qc = quantization_config(config, quantized, skipped, source)
    if config.method == "int8":
        from quantkit.quantizers.experts import Int8Experts, is_fused_experts
        from quantkit.quantizers.experts_io import pieces

        def experts(n):
            m = model.get_submodule(n)
            return isinstance(m, Int8Experts) or is_fused_experts(m)

        qc["quantkit"]["experts_not_hub_layout"] = [
            n for n in quantized if experts(n) and not pieces(model, n)[1]]
    return qc


def is_quantkit_checkpoint(folder) -> bool:
    """True if ``folder`` has a config.json whose quantization_config holds a ``quantkit`` block."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, not UTF-8 or not JSON
        return False
    qc = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    return isinstance(qc, dict) and isinstance(qc.get("quantkit"), dict)


def check_output_dir(out, force: bool = False, model_dir=None) -> Path:
    """Refuse an output folder that would lose data, before any work; return ``out``.

    Refused (``InputError``, ``OutputExistsError``): a path the OS cannot take; an ``out`` that is
    the model folder, contains it or lies inside it (symlinks resolved); a parent that is a file or not writable
    (missing parent folders are created by ``atomic_output_dir``); an existing ``out`` without ``force``; with ``force``, an existing ``out``
    that is not an empty folder or a checkpoint whose every file quantkit wrote (its
    ``.quantkit-manifest.json``, ``quantkit.boundary.outputs.replaceable``): a file, a folder of
    other things, or a checkpoint with the user's files next to quantkit's is never deleted.
    """
    from quantkit.boundary.outputs import replaceable
    from quantkit.boundary.paths import check_path, shown

    out = check_path(out, "--out")
    target = out.resolve()  # what a write would land in, symlinks followed
    if model_dir is not None:
        model = Path(model_dir).resolve()
        if target == model:
            raise InputError(f"--out '{shown(out)}' is the MODEL folder; choose a new folder for the output")
        if target in model.parents:
            raise InputError(f"--out '{shown(out)}' contains the MODEL folder '{shown(model_dir)}'; replacing it "
                             "would delete the model: choose a new folder outside it")
        if model in target.parents:
            raise InputError(f"--out '{shown(out)}' is inside the MODEL folder '{shown(model_dir)}'; "
                             "choose a new folder outside it")
    entry = _entry(out)
    if not entry.name:
        raise InputError(f"--out '{shown(out)}' is the filesystem root; choose a new folder")
    parent = entry.parent  # created with its missing parents when the output is written
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot write '{shown(out)}': the folder '{shown(existing)}' is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cannot write '{shown(out)}': the folder '{shown(existing)}' is not writable")
    if entry.exists() or entry.is_symlink():
        if not force:
            raise OutputExistsError(f"'{shown(out)}' exists; pass --force to replace it")
        why = replaceable(entry)
        if why is not None:
            raise InputError(f"--force replaces only an empty folder or a quantkit checkpoint, and "
                             f"'{shown(out)}' {why}; remove it yourself or choose another --out")
    return out


def _entry(out: Path) -> Path:
    # The directory entry a write replaces: the parent resolved, the last component kept as it
    # is (a symlink named as --out is replaced, its target left alone). "." and ".." resolve.
    if out.name in ("", ".", ".."):
        return out.resolve()
    return out.parent.resolve() / out.name


@contextlib.contextmanager
def atomic_output_dir(out, force: bool = False, model_dir=None):
    """Yield a fresh temp folder next to ``out``; on success it becomes ``out``, on any error it is
    removed (``quantkit.fsutil.atomic_dir``). ``out`` is checked first (``check_output_dir``): an
    existing one is replaced only with ``force``, only once the new folder is complete, and only
    if it is an empty folder or a checkpoint quantkit wrote; ``model_dir`` (the source model) is
    never inside, around or equal to ``out``. Leftovers of interrupted runs next to ``out`` are
    removed first; the new folder gets a manifest of its files (what a later ``--force`` may
    delete). A full disk or another OS error while writing is an ``InputError``."""
    from quantkit.boundary.outputs import remove_leftovers, write_manifest

    check_output_dir(out, force, model_dir)
    entry = _entry(Path(out))
    try:  # missing parent folders are created, as transformers' save_pretrained does
        entry.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write '{out}': {exc.strerror or exc}") from None
    remove_leftovers(entry)
    with atomic_dir(entry, replace=force) as tmp:
        try:
            yield tmp
            write_manifest(tmp)
        except OSError as exc:
            raise InputError(f"cannot write '{out}': {exc.strerror or exc}") from None
        except Exception as exc:
            from safetensors import SafetensorError  # wraps the I/O error of save_file

            if isinstance(exc, SafetensorError):
                raise InputError(f"cannot write '{out}': {str(exc).splitlines()[0]}") from None
            raise


def write_shards(state: dict, folder: Path, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """Write ``state`` as safetensors shards of at most ``max_shard_bytes`` (a bigger tensor gets a
    shard of its own); one shard is ``model.safetensors``, more add an index. Returns file names."""
    from safetensors.torch import save_file

    if max_shard_bytes <= 0:
        raise ConfigError(f"max shard size must be positive, got {max_shard_bytes}")
    shards, current, size = [], [], 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    if current:
        shards.append(current)
    n = len(shards)
    files = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for fname, names in zip(files, shards):
        # One shard at a time on CPU: a GPU model is copied out shard by shard.
        save_file({k: _standalone(state[k]) for k in names}, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in names})
    if n > 1:
        index = {"metadata": {"total_size": tensor_bytes(state)}, "weight_map": weight_map}
        atomic_write(folder / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
    return files


def _standalone(t):
    # safetensors refuses tensors that share storage (e.g. slices of one fused matrix): copy those.
    t = t.detach().to("cpu").contiguous()
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def quantization_config(config: QuantConfig, quantized: list[str], skipped: list[str],
                        source=None) -> dict:
    """The ``quantization_config`` entry of config.json for a model quantized with ``config``;
    ``source``: the model folder it was made from (``quantkit eval`` compares against it)."""
    from quantkit import __version__

    qc = handler_for(config).checkpoint_config(config, quantized, skipped)
    qc["quantkit"] = {
        "version": FORMAT_VERSION,
        "quantkit_version": __version__,
        "method": config.method,
        "bits": config.bits,
        "granularity": config.granularity,
        "group_size": config.group_size,
        "scale_dtype": config.scale_dtype,
        "config": config.to_dict(),
        "quantized_modules": list(quantized),
        "skipped_modules": list(skipped),
        "source": None if source is None else str(Path(source).resolve()),
    }
    return qc


def save_quantized(model, out, config: QuantConfig, *, report=None, source_dir=None,
                   force: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Write a quantized ``model`` (a transformers causal LM after ``quantize``) to ``out`` atomically.

    report: a ``QuantReport`` written as quant_report.json; source_dir: the source model folder,
    whose tokenizer files are copied and which ``out`` may not be, contain or lie inside.
    Missing parent folders of ``out`` are created; an existing ``out`` is replaced only with ``force`` and
    only if it is an empty folder or a quantkit checkpoint (``check_output_dir``). Returns ``out``.
    """
    from quantkit.modelio import copy_tokenizer_files

    if not hasattr(getattr(model, "config", None), "to_dict"):
        raise ConfigError("save_quantized needs a transformers model (its .config becomes config.json)")
    state, quantized, skipped = collect_state(model, config)
    if config.method == "int8":
        from quantkit.quantizers.layout import check_exportable, quantized_shapes

        check_exportable(quantized_shapes(model, quantized), config.group_size)
    cfg = model.config.to_dict()
    cfg["quantization_config"] = checkpoint_config(model, config, quantized, skipped, source_dir)
    with atomic_output_dir(out, force, model_dir=source_dir) as tmp:
        write_shards(state, tmp, max_shard_bytes)
        atomic_write(tmp / "config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if report is not None:
            atomic_write(tmp / "quant_report.json", json.dumps(report.to_dict(), indent=2) + "\n")
        if source_dir is not None:
            copy_tokenizer_files(source_dir, tmp)
    return Path(out)


def read_quant_block(cfg: dict, where, folder=None) -> tuple[QuantConfig, dict]:
    """(QuantConfig, quantkit block) of a quantized config.json; ``ConfigError`` if there is none.
    A folder another tool wrote (no ``quantkit`` block: llm-compressor pack-quantized,
    bitsandbytes 8-bit) gets a block from ``layout.foreign_block`` when ``folder`` is given."""
    from quantkit.quantizers.layout import foreign_block, tensor_names

    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict):
        raise ConfigError(f"'{where}' has no quantization_config: not a quantized checkpoint")
    block = qc.get("quantkit")
    if not isinstance(block, dict):
        if folder is None:
            raise ConfigError(f"'{where}': quantization_config (quant_method "
                              f"'{qc.get('quant_method')}') was not written by quantkit; it has no 'quantkit' block")
        block = foreign_block(qc, tensor_names(folder), where)
    if block.get("version") not in READABLE_VERSIONS:
        raise ConfigError(f"'{where}': quantkit checkpoint format version {block.get('version')!r}, "
                          f"this quantkit reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    for key in ("config", "quantized_modules", "skipped_modules"):
        if key not in block:
            raise ConfigError(f"'{where}': quantization_config.quantkit lacks '{key}'")
        if key != "config" and not (isinstance(block[key], list) and all(isinstance(n, str) and n for n in block[key])):
            raise ConfigError(f"'{where}': quantization_config.quantkit.{key} must be a list of module names")
    if not isinstance(block["config"], dict):
        raise ConfigError(f"'{where}': quantization_config.quantkit.config must be a mapping")
    return QuantConfig.from_dict(block["config"]), block


def _target(model, name: str, source, experts_ok: bool = True):
    from torch import nn

    from quantkit.quantizers.experts import is_fused_experts

    try:
        mod = model.get_submodule(name)
    except AttributeError:
        raise InputError(f"'{source}': quantized module '{name}' does not exist in the model of config.json") from None
    if not isinstance(mod, nn.Linear) and not (experts_ok and is_fused_experts(mod)):
        kinds = "a Linear or a fused experts module" if experts_ok else "a Linear"
        raise InputError(f"'{source}': quantized module '{name}' is a {type(mod).__name__}, not {kinds}")
    return mod


def prepare_quantized(model, cfg: dict, source="checkpoint", folder=None) -> tuple[QuantConfig, list[str]]:
    """Swap the modules that a quantkit checkpoint's config lists as quantized for empty (meta)
    quantized modules, so that ``modelbuild.assign_state_dict(model, state)`` then fills every
    tensor. ``model`` is any module tree with the checkpoint's module names (a transformers model
    or the eval runner), built on the meta device. Returns (config, quantized module names).
    """
    config, block = read_quant_block(cfg, source, folder)
    handler = handler_for(config)
    if not hasattr(handler, "empty_module"):
        raise ConfigError(f"'{source}': {config.method} modules are built from their tensors "
                          "(load_built_modules), not prepared empty")
    quantized = list(block["quantized_modules"])
    from torch import nn

    for name in quantized:
        mod = _target(model, name, source, experts_ok=hasattr(handler, "empty_experts"))
        empty = handler.empty_module if isinstance(mod, nn.Linear) else handler.empty_experts
        model.set_submodule(name, empty(mod, config))
    return config, quantized


def load_quantized(path, device="cpu", dtype=None):
    """Load a quantkit checkpoint folder as a transformers causal LM in eval mode.

    Calling it with a (B, T) LongTensor of token ids returns an output with ``.logits``
    (B, T, vocab). ``dtype`` (default torch.bfloat16) is the activation dtype: embeddings, norms
    and skipped layers are cast to it; int8 weights, scales and quantized-layer biases stay as
    stored. The model is built on the meta device and the stored tensors are assigned, not copied.
    """
    import torch

    from quantkit.modelio import load_state_dict, read_config

    from quantkit.modelbuild import assign_state_dict, empty_model, fp32_kept
    from quantkit.quantizers.layout import to_memory

    dtype = torch.bfloat16 if dtype is None else dtype
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"no such checkpoint folder: '{path}'")
    cfg = read_config(path)
    config, block = read_quant_block(cfg, path, path)
    handler = handler_for(config)
    model = empty_model(cfg, dtype)
    state = load_state_dict(path)
    if hasattr(handler, "empty_module"):  # int8: packed / bitsandbytes tensors -> Int8Linear's
        if block["version"] >= 2:  # per-expert pieces -> Int8Experts' (E, out, in) tensors
            from quantkit.quantizers.experts import is_fused_experts
            from quantkit.quantizers.experts_io import to_fused

            experts = [n for n in block["quantized_modules"] if is_fused_experts(_target(model, n, path))]
            state = to_fused(model, state, experts, f"the checkpoint in '{path}'")
        state = to_memory(state, block["quantized_modules"], f"'{path}'")
    quantized = frozenset(block["quantized_modules"])
    kept = fp32_kept(model, dtype)  # tensors transformers keeps in fp32 (router biases ...)
    rest = {k: (t.to(torch.float32 if kept(k) else dtype) if t.is_floating_point() else t)
            for k, t in state.items() if k.rsplit(".", 1)[0] not in quantized}
    source = f"the checkpoint in '{path}'"
    if hasattr(handler, "empty_module"):
        prepare_quantized(model, cfg, path, path)
        rest.update({k: t for k, t in state.items() if k.rsplit(".", 1)[0] in quantized})
        assign_state_dict(model, rest, source)
    else:  # modules built from their tensors (bitsandbytes)
        load_built_modules(model, config, block["quantized_modules"], state, path)
        assign_state_dict(model, rest, source, handled_modules=quantized)
    return model.to(device).eval()


def load_built_modules(model, config: QuantConfig, names, state: dict, source) -> None:
    """Swap each module in ``names`` for the one its method's handler builds from its stored
    tensors (methods without ``empty_module``: bitsandbytes' ``Linear8bitLt``). ``model`` is a
    transformers model or the eval runner; the caller assigns the other tensors."""
    handler = handler_for(config)
    wanted = frozenset(names)
    by_owner: dict[str, dict] = {}
    for key, t in state.items():
        owner, local = key.rsplit(".", 1)
        if owner in wanted:
            by_owner.setdefault(owner, {})[local] = t
    for name in names:
        linear = _target(model, name, source, experts_ok=False)
        model.set_submodule(name, handler.load_module(name, linear, config, by_owner.get(name, {})))
