"""``quantkit quantize``: thin command over ``quantkit.quantize`` and ``save_quantized``.

torch is imported inside the callback only, so ``quantkit quantize --help`` stays instant.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import click

from quantkit.cli import handle_errors
from quantkit.errors import ConfigError, DependencyError, InputError
from quantkit.quantizers.configs import METHODS, SCALE_DTYPES, get_method

DEVICES = ("cpu", "cuda")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """'5GB' -> 5_000_000_000 (GB = 10^9, GiB = 2^30); a bare number is bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--max-shard-size must be a positive size like 5GB, 500MB or 2GiB, got {text!r}")
    size = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if size < 1:  # "0.5" bytes: refused now, not after quantizing
        raise ConfigError(f"--max-shard-size must be at least 1 byte, got {text!r}")
    return size


@click.command("quantize")
@click.argument("model")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path),
              help="New output folder, written atomically; its parent folder must exist, and it may "
                   "not be, contain or lie inside MODEL.")
@click.option("--method", default=None, metavar="METHOD",
              help=f"One of: {', '.join(METHODS)} [default: int8, or the recipe's].")
@click.option("--group-size", type=int, default=None,
              help="int8: one scale per N input columns [default: one per output channel].")
@click.option("--skip", multiple=True, metavar="PATTERN",
              help="Linear or MoE experts module kept unquantized: full name "
                   "(model.layers.0.mlp.down_proj), last part (lm_head, experts) or glob (*.mlp.*); "
                   "repeat for several. Given at all, the list REPLACES the default skip list "
                   "(lm_head): add --skip lm_head to keep lm_head in bf16; --skip none quantizes "
                   "every Linear. A pattern matching no such module is an error.")
@click.option("--scale-dtype", default=None, metavar="DTYPE",
              help=f"int8 scale storage dtype: {', '.join(SCALE_DTYPES)} [default: bf16].")
@click.option("--threshold", type=float, default=None,
              help="llm.int8 outlier threshold [default: 6.0].")
@click.option("--recipe", default=None, metavar="NAME|PATH",
              help="Recipe YAML (path, or a shipped name: int8, int8-g128, llm-int8); options override it.")
@click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda",
              help="Where to load and quantize the model.")
@click.option("--max-shard-size", default="5GB", show_default=True,
              help="Largest safetensors shard (GB = 10^9 bytes, GiB = 2^30 bytes).")
@click.option("--force", is_flag=True,
              help="Replace an existing --out that is an empty folder or a quantkit checkpoint "
                   "(once the new one is complete); anything else is refused.")
@handle_errors
def quantize_command(model, out, method, group_size, skip, scale_dtype, threshold, recipe, device,
                     max_shard_size, force):
    """Quantize MODEL's linear weights to int8 and save a reloadable checkpoint in OUT.

    MODEL is a local Hugging Face model folder (config.json + safetensors; tokenizer files are
    copied along) or a Hub id (needs network). Each module is read from the safetensors shards,
    quantized (weights cast to bf16 first) and appended to OUT's shards, so memory stays near the
    largest module whatever the model's size; legacy .bin weights and the Hub's per-expert MoE
    names are loaded whole instead (a note says so). OUT gets safetensors shards, config.json with
    a quantization_config, and quant_report.json. The per-layer errors and byte totals are printed.
    """
    from quantkit.quantizers.recipes import build_config, load_recipe

    if method is not None:
        get_method(method)  # one-line error with a suggestion for an unknown name
    if device not in DEVICES:
        raise InputError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if skip:
        skip = () if [s.lower() for s in skip] == ["none"] else tuple(skip)
    else:
        skip = None
    shard_bytes = parse_size(max_shard_size)
    rec = load_recipe(recipe) if recipe else None
    config = build_config(rec, method=method, group_size=group_size, skip=skip,
                          scale_dtype=scale_dtype, threshold=threshold)
    from quantkit.modelio import check_weights, read_config, resolve_model_dir
    from quantkit.modelbuild import build_model, check_causal_lm
    from quantkit.quantizers.checkpoint import check_output_dir

    # --out is checked before any work (and before a Hub download): not MODEL, not inside or
    # around it, parent exists, replaced only with --force and only if empty or a checkpoint.
    model_dir = resolve_model_dir(model) if Path(model).expanduser().exists() else None
    check_output_dir(out, force, model_dir)
    if model_dir is None:
        model_dir = resolve_model_dir(model)  # a Hub id, fetched into the Hugging Face cache
        check_output_dir(out, force, model_dir)
    cfg = read_config(model_dir)
    check_causal_lm(cfg)
    check_weights(model_dir)  # headers only: a damaged checkpoint fails before any model is built

    import torch

    from quantkit.modelbuild import empty_model
    from quantkit.quantizers.api import check_skip, quantizable_modules, quantize

    # --skip typos fail now, on the meta-device model's Linear names, not after loading the weights.
    meta = empty_model(cfg, torch.bfloat16)
    units = [n for n, _ in quantizable_modules(meta)]
    check_skip(config, units)
    if config.method == "int8":  # a group size the compressed-tensors format cannot store fails now
        from quantkit.quantizers.layout import check_exportable, quantized_shapes
        from quantkit.selection import is_skipped

        check_exportable(quantized_shapes(meta, [n for n in units if not is_skipped(n, config.skip)]),
                         config.group_size)
    from quantkit.quantizers.report import render
    from quantkit.quantizers.stream import quantize_folder, stream_blocker

    if device == "cuda" and not torch.cuda.is_available():
        raise DependencyError("--device cuda: no CUDA device is available to torch")
    why = stream_blocker(model_dir)
    if why is None:  # one module at a time: memory bounded by the largest module, not the model
        report, stats = quantize_folder(model_dir, out, config, force=force, max_shard_bytes=shard_bytes,
                                        device=device)
        click.echo(render(report))
        click.echo(f"wrote {out} in {stats.seconds:.2f} s, streamed one module at a time "
                   f"(read {stats.bytes_read / 1e9:.3f} GB, wrote {stats.bytes_written / 1e9:.3f} GB "
                   f"in {len(stats.files)} shard{'s' if len(stats.files) > 1 else ''})")
        return
    from quantkit.quantizers.checkpoint import save_quantized

    start = time.perf_counter()
    net = build_model(model_dir, torch.bfloat16, device)  # a bad checkpoint fails first, in one line
    click.echo(f"note: {why}; quantizing in memory (the whole model is loaded)", err=True)
    loaded = time.perf_counter()
    report = quantize(net, config)
    save_quantized(net, out, config, report=report, source_dir=model_dir, force=force,
                   max_shard_bytes=shard_bytes)
    click.echo(render(report))
    import json

    block = json.loads((Path(out) / "config.json").read_text(encoding="utf-8"))["quantization_config"]["quantkit"]
    if block.get("experts_not_hub_layout"):
        click.echo(f"note: {len(block['experts_not_hub_layout'])} MoE experts modules are written under "
                   "quantkit's own per-expert names (this model type has no per-expert Hub layout in "
                   "transformers): quantkit.load_quantized reads this folder, transformers and vLLM do not",
                   err=True)
    click.echo(f"wrote {out} in {time.perf_counter() - start:.2f} s "
               f"(load {loaded - start:.2f} s, quantize {report.seconds:.2f} s)")
