"""Quantize a checkpoint folder one module at a time, in bounded memory: ``quantize_folder``.

Round-to-nearest int8 needs no calibration, so each quantized module (an ``nn.Linear``, or a
layer's fused MoE experts) is read from the safetensors shards, quantized by the method's own
handler (``handler.quantize_module`` / ``quantize_experts``, exactly what ``quantkit.quantize``
calls), exported by ``checkpoint.module_tensors`` and appended to the output shards
(``shards.ShardWriter``); every other tensor is copied over, cast as ``modelbuild.build_model``
casts it (bf16; fp32 for what transformers keeps in fp32). The model itself exists only on the
meta device, for its names, shapes, tied weights and the selection rule
(``api.select_units``), so the output tensors equal the in-memory path's (tested) and peak memory
is about the largest module plus the read-ahead and write queues, whatever the model's size.

I/O overlaps compute: one thread reads the next modules while this one quantizes, another
writes. Units are read in file order, so the input is read nearly sequentially.

``stream_blocker`` says why a folder cannot be streamed (legacy .bin weights; the Hub's
per-expert MoE names that transformers converts on load): the caller then takes the in-memory
path and says so. Differences from the in-memory path: tensors are placed in shards in file order
(the in-memory path writes quantized modules first), and shard headers carry padding.
"""

from __future__ import annotations

import copy
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from quantkit.errors import ConfigError
from quantkit.quantizers.configs import QuantConfig, handler_for

_READ_AHEAD = 2  # modules read ahead of the one being quantized


@dataclass
class _Unit:
    """One step: a quantized module (``kind`` linear/experts) or one copied tensor (``copy``).
    ``tensors``: {key: checkpoint name}; the key is the module-local name, or for a copy the
    output name."""

    kind: str
    name: str
    tensors: dict
    order: tuple = ()


@dataclass
class StreamStats:
    """What the streamed run read and wrote: bytes (int), seconds, output shard names."""

    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    files: list = field(default_factory=list)


def stream_blocker(model_dir) -> str | None:
    """Why ``model_dir`` cannot be quantized by streaming (None if it can): legacy .bin weights,
    or tensor names that transformers converts on load (the Hub's per-expert MoE layout)."""
    import torch

    from quantkit.modelbuild import empty_model, needs_conversion
    from quantkit.modelio import read_config
    from quantkit.quantizers.shards import tensor_locations

    locs = tensor_locations(model_dir)
    if locs is None:
        return "the weights are legacy .bin files, which cannot be read one tensor at a time"
    if needs_conversion(empty_model(read_config(model_dir), torch.bfloat16), set(locs)):
        return ("its tensor names are the Hub's per-expert layout, which transformers converts "
                "(stacks) on load")
    return None


def quantize_folder(model_dir, out, config: QuantConfig, *, force: bool = False,
                    max_shard_bytes: int | None = None, device: str = "cpu", progress: bool = True):
    """Quantize the float checkpoint in ``model_dir`` into ``out`` by streaming; returns
    (``QuantReport``, ``StreamStats``). The folder ``out`` is what ``save_quantized`` writes
    (config.json with the same quantization_config, quant_report.json, tokenizer files, shards),
    published atomically; ``force``/``out`` rules are ``checkpoint.check_output_dir``'s.
    ``ConfigError`` if ``stream_blocker`` names a reason."""
    import json

    from tqdm import tqdm

    from quantkit.fsutil import atomic_write
    from quantkit.modelio import copy_tokenizer_files
    from quantkit.quantizers.checkpoint import (DEFAULT_MAX_SHARD_BYTES, atomic_output_dir,
                                                checkpoint_config)
    from quantkit.quantizers.report import QuantReport
    from quantkit.quantizers.shards import ShardWriter

    start = time.perf_counter()
    plan = _plan(Path(model_dir), config)
    handler = handler_for(config)
    stats = StreamStats()
    reports: dict[str, list] = {}
    max_shard_bytes = DEFAULT_MAX_SHARD_BYTES if max_shard_bytes is None else max_shard_bytes
    reserve = 4096 + sum(4 * (len(n) + 100) for n in plan.locs)  # >= any shard's header
    with atomic_output_dir(out, force, model_dir=model_dir) as tmp:
        writer = ShardWriter(tmp, max_shard_bytes, header_reserve=reserve)
        reader = _Reader(plan)
        bar = tqdm(total=plan.bytes_to_read, unit="B", unit_scale=True, desc=f"quantize {config.method}",
                   file=sys.stderr, disable=not progress)
        try:
            for unit, tensors, nbytes in reader:
                if unit.kind == "copy":
                    for key, t in tensors.items():
                        writer.add(key, t)
                else:
                    reports[unit.name], out_tensors = _quantize_unit(plan, handler, config, unit, tensors, device)
                    del tensors
                    for key, t in out_tensors:
                        writer.add(key, t)
                    del out_tensors
                stats.bytes_read += nbytes
                bar.update(nbytes)
            stats.files, _, stats.bytes_written = writer.close()
        except BaseException:
            reader.stop()
            writer.abort()
            raise
        finally:
            bar.close()
        layers = [r for name in plan.sel.targets for r in reports[name]]
        report = QuantReport(method=config.method, config=config.to_dict(), layers=layers,
                             skipped=list(plan.sel.skipped), bytes_before=plan.bytes_before,
                             bytes_after=stats.bytes_written, estimated_bytes=plan.estimate,
                             seconds=time.perf_counter() - start)
        cfg = plan.meta.config.to_dict()
        cfg["quantization_config"] = checkpoint_config(plan.meta, config, plan.sel.targets,
                                                       plan.sel.skipped, model_dir)
        atomic_write(tmp / "config.json", json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        atomic_write(tmp / "quant_report.json", json.dumps(report.to_dict(), indent=2) + "\n")
        copy_tokenizer_files(model_dir, tmp)
    stats.seconds = time.perf_counter() - start
    return report, stats


def _quantize_unit(plan, handler, config, unit: _Unit, tensors: dict, device: str):
    """(layer reports, [(output name, tensor)]) of one quantized module, built from its checkpoint
    tensors on a copy of the meta model's module (so the handler sees what it sees in memory)."""
    meta_mod = plan.meta.get_submodule(unit.name)
    mod = copy.deepcopy(meta_mod, {id(plan.meta.config): plan.meta.config})
    mod.load_state_dict(tensors, strict=True, assign=True)
    mod = mod.to(device).eval()
    if unit.kind == "experts":
        new, reps = handler.quantize_experts(unit.name, mod, config)
    else:
        new, rep = handler.quantize_module(unit.name, mod, config)
        reps = [rep]
    new.eval()
    from quantkit.quantizers.checkpoint import module_tensors

    return reps, list(module_tensors(handler, new, unit.name, plan.meta).items())


@dataclass
class _Plan:
    meta: object  # the model on the meta device
    locs: dict
    sel: object  # api.Selection
    units: list
    kept: object  # modelbuild.fp32_kept(meta, bf16)
    bytes_to_read: int
    bytes_before: int
    estimate: int | None


def _plan(model_dir: Path, config: QuantConfig) -> _Plan:
    import torch

    from quantkit.modelbuild import check_state_dict, empty_model, fp32_kept, refuse_quantized
    from quantkit.modelio import read_config
    from quantkit.quantizers.api import select_units
    from quantkit.quantizers.report import estimated_checkpoint_bytes
    from quantkit.quantizers.shards import tensor_locations
    from quantkit.spec import is_supported

    cfg = read_config(model_dir)
    refuse_quantized(cfg, model_dir)
    why = stream_blocker(model_dir)
    if why is not None:
        raise ConfigError(f"'{model_dir}' cannot be quantized by streaming: {why}")
    meta = empty_model(cfg, torch.bfloat16)
    locs = tensor_locations(model_dir)
    source = f"the checkpoint in '{model_dir}'"
    check_state_dict(meta, {n: torch.empty(loc.shape, dtype=loc.torch_dtype, device="meta")
                            for n, loc in locs.items()}, source)
    sel = select_units(meta, config)
    if not is_supported(cfg):
        smoke_slice(cfg, config)
    kept = fp32_kept(meta, torch.bfloat16)
    tied = dict(getattr(meta, "all_tied_weights_keys", None) or {})  # {target: source}
    expected = list(meta.state_dict())

    def src(name):  # the checkpoint tensor behind a model tensor (a missing one is tied)
        return name if name in locs else tied[name]

    units, owned = [], set()
    for name in sel.targets:
        keys = list(meta.get_submodule(name).state_dict())
        tensors = {k: src(f"{name}.{k}") for k in keys}
        owned |= {f"{name}.{k}" for k in keys}
        kind = "experts" if name in sel.experts else "linear"
        units.append(_Unit(kind, name, tensors))
        if any(f"{name}.{k}" not in locs for k in keys) and getattr(meta.config, "tie_word_embeddings", False):
            # as quantkit.quantize: a quantized tied lm_head no longer shares the embedding
            meta.config.tie_word_embeddings = False
    written_src, bytes_before = set(), 0
    for name in expected:
        s = src(name)
        if name not in locs and s in written_src:
            continue  # a tied alias: written once, under the first name (as dedup_shared does)
        written_src.add(s)
        loc = locs[s]
        itemsize = (4 if kept(name) else 2) if loc.torch_dtype.is_floating_point else loc.torch_dtype.itemsize
        numel = loc.nbytes // max(1, loc.torch_dtype.itemsize)
        bytes_before += numel * itemsize
        if name not in owned:
            units.append(_Unit("copy", name, {name: s}))
    for unit in units:
        unit.order = min((locs[s].file_index, locs[s].offset) for s in unit.tensors.values())
    units.sort(key=lambda u: u.order)
    estimate = estimated_checkpoint_bytes(meta.config.to_dict(), config, torch.bfloat16.itemsize,
                                          extra_skip=tuple(sorted(sel.unsupported)))
    to_read = sum(locs[s].nbytes for u in units for s in u.tensors.values())
    return _Plan(meta, locs, sel, units, kept, to_read, bytes_before, estimate)


class _Reader:
    """Iterate (unit, {key: tensor cast as build_model casts it}, bytes read) in plan order,
    reading up to ``_READ_AHEAD`` units ahead in a background thread."""

    def __init__(self, plan: _Plan):
        self.plan = plan
        self.q: queue.Queue = queue.Queue(_READ_AHEAD)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="quantkit-reader", daemon=True)
        self.thread.start()

    def _load(self, unit: _Unit):
        import torch

        from quantkit.quantizers.shards import read_tensor

        out, nbytes = {}, 0
        for key, s in unit.tensors.items():
            loc = self.plan.locs[s]
            t = read_tensor(loc)
            nbytes += loc.nbytes
            full = key if unit.kind == "copy" else f"{unit.name}.{key}"
            if t.is_floating_point():
                want = torch.float32 if self.plan.kept(full) else torch.bfloat16
                t = t.to(want)
            out[key] = t
        return unit, out, nbytes

    def _run(self):
        try:
            for unit in self.plan.units:
                item = self._load(unit)
                while not self.stopped.is_set():
                    try:
                        self.q.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if self.stopped.is_set():
                    return
            self.q.put(None)
        except BaseException as exc:  # re-raised in the main thread
            self.q.put(exc)

    def __iter__(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self):
        self.stopped.set()
        while self.thread.is_alive():
            try:
                self.q.get(timeout=0.1)
            except queue.Empty:
                pass


def smoke_slice(cfg: dict, config: QuantConfig, layers: int = 2) -> None:
    """``api.smoke_forward`` for an architecture quantkit does not cover, on a slice of the model:
    its first ``layers`` layers (per-layer lists in config.json cut to match), random weights,
    quantized in memory with ``config``'s method; ``ConfigError`` if its forward fails once
    quantized. Skip patterns are kept only where they match a module of the slice."""
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM

    from quantkit.modelbuild import hf_config
    from quantkit.quantizers.api import quantizable_modules, quantize
    from quantkit.selection import is_skipped

    n = int(cfg.get("num_hidden_layers") or 0)
    small = dict(cfg)
    if n > layers:
        small["num_hidden_layers"] = layers
        for key, value in cfg.items():  # layer_types and other per-layer lists
            if isinstance(value, list) and len(value) == n:
                small[key] = value[:layers]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(hf_config(small), dtype=torch.bfloat16).eval()
    names = [name for name, _ in quantizable_modules(model)]
    skip = tuple(p for p in config.skip if any(is_skipped(name, (p,)) for name in names))
    if not [name for name in names if not is_skipped(name, skip)]:
        return  # the slice has nothing to quantize: its forward would be the float one
    quantize(model, dataclasses.replace(config, skip=skip), progress=False)  # runs smoke_forward
