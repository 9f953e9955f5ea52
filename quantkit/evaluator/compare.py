"""``run_eval``: the one library call behind ``quantkit eval``. Returns the stable JSON as a dict.

JSON (bytes as ints, rates in tokens/s, times in ms)::

    {"model", "device", "device_name", "base",
     "protocol": {"name", "ctx", "stride", "tokens", "windows", "predictions", "text", "bos"} | null,
     "results": [{"variant", "description", "compute_dtype", "weights_bytes",
                  "perplexity", "nll", "tokens", "kl_vs_base", "top1_agreement",
                  # with --speed (null when skipped), at the first --batch:
                  "prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms",
                  "peak_allocated_bytes", "peak_reserved_bytes", "estimated_bytes",
                  "decode_bound_tokens_per_s", "fraction_of_bound",
                  "speed_by_batch": [SpeedResult.to_dict(), ...]}],
     "speed": {"batches", "prompt_len", "new_tokens", "graphs", "gpu", "skipped"} | null,
     "notes": [...], "environment": {...}}
"""

from __future__ import annotations

import platform
from typing import Any

from quantkit.errors import ConfigError, DependencyError, InputError, OutOfMemoryError
from quantkit.evaluator.options import DEFAULT_COMPARE, DEFAULT_CTX, EvalOptions

SPEED_KEYS = ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "peak_allocated_bytes",
              "peak_reserved_bytes", "estimated_bytes", "decode_bound_tokens_per_s",
              "fraction_of_bound")


def choose_backend(cfg: dict, opts: EvalOptions) -> tuple[str, str]:
    """("runner" or "transformers", why the runner is not used). ``ConfigError`` where the asked
    backend cannot run this model (``--backend runner`` on an architecture it does not cover,
    ``--speed`` on one the runner does not cover)."""
    from quantkit.evaluator.hf import runner_covers
    from quantkit.modelbuild import check_causal_lm

    covered, why = (True, "") if opts.backend == "transformers" else runner_covers(cfg)
    if opts.backend == "runner":
        if not covered:
            raise ConfigError(f"{why}; --backend transformers (or auto) scores this model's "
                              "perplexity through transformers")
        return "runner", ""
    if opts.backend == "transformers":
        check_causal_lm(cfg)
        return "transformers", "--backend transformers"
    if covered:
        return "runner", ""
    check_causal_lm(cfg)
    if opts.speed:
        raise ConfigError(f"--speed needs quantkit's runner, and {why[0].lower() + why[1:]}; "
                          "perplexity alone runs through transformers (drop --speed)")
    return "transformers", why


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DependencyError(f"--device cuda: no CUDA device is visible (torch {torch.__version__})")
    return torch.device(name)


def run_eval(model: str, opts: EvalOptions) -> dict[str, Any]:
    """Perplexity and/or speed of every ``opts.compare`` variant of ``model``.

    ``model`` may be a quantized checkpoint (quantkit's, or another tool's that quantkit loads):
    then it is itself a variant, and float or on-the-fly entries of ``--compare`` (by default
    ``bf16``) use the base model its ``quantkit.source`` names, when that folder exists."""
    from dataclasses import replace

    from quantkit.evaluator.text import load_text
    from quantkit.evaluator.variants import base_name, build_variants
    from quantkit.modelio import read_config, resolve_model_dir

    # Everything a user can get wrong is checked before a model is loaded.
    opts.validate()
    model_dir = resolve_model_dir(model)
    cfg = read_config(model_dir)
    notes: list[str] = []
    base_dir, specs = _variants_of(model, model_dir, cfg, opts.compare, notes)
    if base_dir != model_dir:  # a quantized MODEL: its base model's weights and tokenizer
        model_dir, cfg = base_dir, read_config(base_dir)
    max_ctx = cfg.get("max_position_embeddings")
    if opts.ctx is None:
        opts = replace(opts, ctx=min(DEFAULT_CTX, max_ctx) if _positive_int(max_ctx) else DEFAULT_CTX)
        if opts.stride is not None and opts.stride > opts.ctx:
            raise InputError(f"--stride ({opts.stride}) must not exceed the window, {opts.ctx} "
                             "tokens (the default --ctx for this model)")
    source = load_text(opts.ppl, opts.max_tokens) if opts.ppl is not None else None

    import torch

    from quantkit.evaluator.text import tokenize_source

    backend, why = choose_backend(cfg, opts)

    if opts.ppl is not None and _positive_int(max_ctx) and opts.ctx > max_ctx:
        raise InputError(f"--ctx {opts.ctx} exceeds the model's max_position_embeddings ({max_ctx}); "
                         f"perplexity beyond it is not meaningful: use --ctx {max_ctx} or less")
    device = resolve_device(opts.device)
    if opts.speed and device.type != "cuda" and opts.ppl is None:
        raise DependencyError("--speed measures GPU speed and memory and needs a CUDA device; on "
                              "this machine pass --ppl FILE for perplexity")
    if backend == "transformers":
        notes.append("perplexity through transformers' implementation of model_type "
                     f"'{cfg.get('model_type')}'" + (f" ({why})" if why else ""))
    tokens = None
    if source is not None:
        tokens = tokenize_source(model_dir, source, cfg.get("bos_token_id"), opts.max_tokens)
    gpu = _gpu_spec(opts, device, notes) if opts.speed else None
    try:
        build = build_variants
        if backend == "transformers":
            from quantkit.evaluator.hf import build_hf_variants as build
        variants = build(model_dir, specs, device, progress=opts.progress,
                         keep_on_cpu=opts.device_map is not None)
    except torch.cuda.OutOfMemoryError:
        raise OutOfMemoryError(_load_oom_message(cfg, specs, device)) from None
    base = base_name(specs)
    out: dict[str, Any] = {
        "model": str(model), "backend": backend, "device": str(device),
        "device_name": _device_name(device),
        "base": base, "protocol": None, "results": [], "speed": None, "notes": notes,
        "environment": _environment(),
    }
    rows = {v.spec.name: _row(v) for v in variants}
    if tokens is not None:
        out["protocol"] = _perplexity(variants, tokens, opts, base, device, rows, notes)
        out["protocol"].update(text=source.name, bos=cfg.get("bos_token_id") is not None)
    if opts.speed:
        out["speed"] = _speed(variants, opts, device, gpu, rows, notes)
    out["results"] = list(rows.values())
    return out


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _variants_of(model: str, model_dir, cfg: dict, compare: str | None, notes: list[str]):
    """(folder whose weights float and on-the-fly variants start from, variant specs).

    A float MODEL: ``compare`` (default bf16,int8) over MODEL. A quantized MODEL is a variant
    itself (added last when ``compare`` does not list it), and float / on-the-fly entries (by
    default bf16, when the base is known) come from the base model its checkpoint names."""
    from pathlib import Path

    from quantkit.evaluator.variants import VariantSpec, parse_compare

    if not isinstance(cfg.get("quantization_config"), dict):
        return model_dir, parse_compare(compare or DEFAULT_COMPARE)
    block = cfg["quantization_config"].get("quantkit")
    src = block.get("source") if isinstance(block, dict) else None
    base = Path(src) if isinstance(src, str) and (Path(src) / "config.json").is_file() else None
    if compare is None:
        compare = "bf16" if base is not None else ""
        if base is None:
            notes.append(f"{model} is a quantized checkpoint whose base model is "
                         + (f"not at '{src}'" if src else "not recorded")
                         + ": it is evaluated alone (no KL or top-1); pass the base model as MODEL "
                           f"and --compare bf16,{model} to compare them")
    specs = parse_compare(compare) if compare else []
    own = Path(model_dir).resolve()
    if not any(s.kind == "checkpoint" and Path(s.path).resolve() == own for s in specs):
        specs.append(VariantSpec(str(model), "checkpoint", path=Path(model_dir)))
    if any(s.kind != "checkpoint" for s in specs):
        if base is None:
            raise InputError(f"{model} is a quantized checkpoint and its base model is "
                             + (f"not at '{src}'" if src else "not recorded in it")
                             + f"; --compare {compare} needs float weights: pass the base model "
                               f"as MODEL and {model} in --compare")
        return base, specs
    return model_dir, specs


def _row(v) -> dict[str, Any]:
    return {"variant": v.spec.name, "description": v.description,
            "compute_dtype": str(v.compute_dtype).replace("torch.", ""),
            "weights_bytes": v.weights_bytes, "perplexity": None, "nll": None,
            "tokens": None, "kl_vs_base": None, "top1_agreement": None}


def _perplexity(variants, tokens, opts: EvalOptions, base, device, rows, notes) -> dict:
    from dataclasses import asdict

    import torch

    from quantkit.evaluator.loader import dispatch_auto, first_device
    from quantkit.evaluator.perplexity import evaluate

    models = {}
    for v in variants:
        if opts.device_map:
            v.runner = dispatch_auto(v.runner)  # an HFLogits is split by its model's own blocks
        models[v.spec.name] = v.runner
    if opts.device_map:
        notes.append("perplexity: models split over the visible GPUs with accelerate "
                     "device_map='auto' (perplexity only)")
    in_device = first_device(variants[0].runner) if opts.device_map else device
    try:
        protocol, results = evaluate(models, tokens, ctx=opts.ctx, stride=opts.stride, base=base,
                                     device=in_device, progress=opts.progress)
    except torch.cuda.OutOfMemoryError:
        raise OutOfMemoryError(
            f"CUDA out of memory in the perplexity forward of {len(models)} model(s) over "
            f"{opts.ctx}-token windows: use a smaller --ctx, compare fewer variants at once, or "
            f"--device-map auto to split the models over several GPUs") from None
    for r in results:
        d = r.to_dict()
        d.pop("variant")
        rows[r.variant].update(d)
    p = asdict(protocol)
    p["name"] = protocol.name
    return p


def _speed(variants, opts: EvalOptions, device, gpu, rows, notes) -> dict:
    info = {"batches": list(opts.batches), "prompt_len": opts.prompt_len,
            "new_tokens": opts.new_tokens, "graphs": opts.graphs,
            "gpu": gpu.name if gpu is not None else None, "skipped": None}
    if device.type != "cuda":
        info["skipped"] = ("no CUDA device: prefill/decode speed, TTFT and peak GPU memory are "
                           "GPU-only measurements and were skipped")
        notes.append(f"speed: {info['skipped']}")
        for row in rows.values():
            row.update({k: None for k in SPEED_KEYS}, speed_by_batch=[])
        return info
    import torch

    from quantkit.evaluator.speed import measure_speed

    for v in variants:  # one variant on the GPU at a time, so its peak memory is its own
        v.runner.to("cpu")
    torch.cuda.empty_cache()
    for v in variants:
        try:
            v.runner.to(device)
        except torch.cuda.OutOfMemoryError:
            raise OutOfMemoryError(
                f"CUDA out of memory moving {v.spec.name} to the GPU for --speed; 'quantkit estimate' "
                f"with --dtype {v.est_dtype} says what fits") from None
        graphs = opts.graphs
        if v.spec.method == "llm.int8" and graphs != "none":
            # bitsandbytes' int8 matmul syncs with the host (outlier check): not capturable
            graphs = "none"
            notes.append(f"speed {v.spec.name}: decoded eagerly (bitsandbytes cannot be captured "
                         f"in a CUDA graph or compiled whole)")
        per_batch = []
        for b in opts.batches:
            r = measure_speed(v.runner, b, opts.prompt_len, opts.new_tokens, graphs=graphs,
                              est_dtype=v.est_dtype, group_size=v.group_size, gpu=gpu)
            if r.error:
                notes.append(f"speed {v.spec.name} batch {b}: {r.error}")
            per_batch.append(r.to_dict())
        first = per_batch[0]
        rows[v.spec.name].update({k: first[k] for k in SPEED_KEYS}, speed_by_batch=per_batch)
        v.runner.to("cpu")
        torch.cuda.empty_cache()
    return info


def _gpu_spec(opts: EvalOptions, device, notes):
    from quantkit.catalogue import get_gpu
    from quantkit.errors import UnknownNameError

    if opts.gpu is not None:
        return get_gpu(opts.gpu)  # an unknown name given by the user is an error
    if device.type != "cuda":
        return None
    name = _device_name(device)
    for candidate in (name, name.removeprefix("NVIDIA ")):
        try:
            return get_gpu(candidate)
        except UnknownNameError:
            continue
    notes.append(f"GPU {name!r} is not in the catalogue ('quantkit gpus'): no roofline bound; "
                 f"pass --gpu NAME")
    return None


def _device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _load_oom_message(cfg, specs, device) -> str:
    from quantkit.calculators.estimate import estimate
    from quantkit.spec import ModelSpec

    import torch

    from quantkit.spec import is_supported

    free, total = torch.cuda.mem_get_info(device)
    generic = (f"CUDA out of memory while loading {', '.join(s.name for s in specs)} (the GPU has "
               f"{total / 1e9:.2f} GB); compare fewer variants, or use --device-map auto")
    if not is_supported(cfg):
        return generic
    try:
        spec = ModelSpec.from_hf_config(cfg)
    except ConfigError:  # a config transformers completes with defaults that quantkit needs spelled out
        return generic
    need = sum(estimate(spec, dtype="int8" if s.kind != "float" else s.dtype, batch=1,
                        context=1).weights_bytes for s in specs)
    return (f"CUDA out of memory while loading {', '.join(s.name for s in specs)}: quantkit "
            f"estimate puts their weights at {need / 1e9:.2f} GB together, the GPU has "
            f"{total / 1e9:.2f} GB; compare fewer variants, or use --device-map auto to split "
            f"them over several GPUs (perplexity only)")


def _environment() -> dict[str, str]:
    import sys
    from importlib.metadata import version

    import torch

    from quantkit import __version__

    return {"quantkit": __version__, "torch": torch.__version__,
            "transformers": version("transformers"), "python": sys.version.split()[0],
            "command": " ".join(sys.argv)}
