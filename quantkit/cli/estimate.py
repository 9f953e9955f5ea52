"""``quantkit estimate``: thin command over ``quantkit.calculators.estimate`` (no torch import)."""

from __future__ import annotations

import inspect

import click

from quantkit.boundary.text import terminal_safe
from quantkit.calculators.estimate import estimate
from quantkit.cli import handle_errors
from quantkit.calculators.kv_cache import KV_DTYPE_BYTES
from quantkit.calculators.weights import DTYPE_BITS
from quantkit.export.render import FORMATS, Column, flatten, render_csv, render_json, render_kv, render_table


_DEFAULTS = {k: v.default for k, v in inspect.signature(estimate).parameters.items()}


def _d(name: str) -> str:
    return f" [default: {_DEFAULTS[name]}]"


@click.command("estimate")
@click.argument("model")
@click.option("--dtype", default=None, help=f"Weights dtype: {', '.join(DTYPE_BITS)} [default: the checkpoint's "
              "quantization_config, else fp16 if its torch_dtype is float16, else bf16].")
@click.option("--kv-dtype", default=None, help=f"KV-cache dtype: {', '.join(KV_DTYPE_BYTES)}." + _d("kv_dtype"))
@click.option("--batch", default=None, type=int, help="Sequences decoded together." + _d("batch"))
@click.option("--context", default=None, type=int, help="Tokens held per sequence [default: the model's max context].")
@click.option("--gpu", default=None, help="GPU name (see 'quantkit gpus'): adds fit, limits and speed bounds.")
@click.option("--num-gpus", default=None, type=int, help="GPUs, tensor parallel (must divide the heads)." + _d("num_gpus"))
@click.option("--block-size", default=None, type=int, help="Round KV to paged blocks of N tokens (vLLM: 16) [default: off].")
@click.option("--group-size", default=None, type=int, help="Quantization group size [default: per channel for int8/fp8, 128 for int4].")
@click.option("--prefill-chunk", default=None, type=int,
              help="Tokens in one prefill forward pass, all sequences together (activation peak)." + _d("prefill_chunk"))
@click.option("--gpu-util", default=None, type=float, help="Fraction of GPU memory usable (vLLM: 0.9)." + _d("gpu_util"))
@click.option("--train", is_flag=True, help="Training memory (mixed-precision Adam) instead of inference.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@handle_errors
def estimate_command(model, dtype, kv_dtype, batch, context, gpu, num_gpus, block_size, group_size,
                     prefill_chunk, gpu_util, train, fmt):
    """Memory (weights, KV cache, activations, total), GPU fit and speed bounds for MODEL.

    MODEL is a catalogue name ('quantkit models'), a config.json path or model folder, or a
    Hugging Face Hub id (needs network). Sizes are shown in GB (10^9 bytes) and GiB (2^30 bytes).
    """
    from quantkit.resolve import load_spec

    spec = load_spec(model)
    given = dict(kv_dtype=kv_dtype, batch=batch, num_gpus=num_gpus, prefill_chunk=prefill_chunk,
                 gpu_util=gpu_util)
    est = estimate(spec, dtype=dtype, context=context, gpu=gpu, block_size=block_size,
                   group_size=group_size, train=train, **{k: v for k, v in given.items() if v is not None})
    if fmt == "json":
        click.echo(render_json(est.to_dict()), nl=False)
    elif fmt == "csv":
        flat = flatten(est.to_dict())
        click.echo(render_csv([flat], [Column(k, k) for k in flat]), nl=False)
    else:
        click.echo(render_estimate(est))


def render_estimate(est) -> str:
    s, p = est.spec, est.params
    attn = f"{s.attention_kind}: {s.num_heads} query / {s.num_kv_heads} KV heads, head_dim {s.head_dim}"
    if s.mla:
        attn = f"MLA: {s.num_heads} heads, kv_lora_rank {s.kv_lora_rank}, rope dim {s.qk_rope_head_dim}"
    moe = f", MoE {s.experts_per_token} of {s.num_experts} experts" if s.is_moe else ""
    win = f", sliding window {s.sliding_window} on {s.num_sliding_layers}/{s.num_layers} layers" if s.num_sliding_layers else ""
    head = f"{est.model}: {s.model_type}, {s.num_layers} layers, hidden {s.hidden_size}, {attn}{moe}{win}"
    sections = [terminal_safe(head)]
    sections.append(render_kv([
        ("total", p.total, "int"), ("active per token", p.active, "int"),
        ("embedding", p.embedding, "int"),
        ("lm_head", p.lm_head if p.lm_head else "tied to embedding", "int" if p.lm_head else "str"),
        ("attention", p.attention, "int"), ("MLP (dense)", p.mlp, "int"),
        *([("experts (routed)", p.experts, "int"), ("shared experts", p.shared_experts, "int"),
           ("routers", p.router, "int")] if s.is_moe else []),
        ("norms", p.norms, "int"),
    ], "Parameters"))
    rows = [{"dtype": d, "textbook": b, "checkpoint": est.checkpoint_bytes_by_dtype[d]}
            for d, b in est.weights_bytes_by_dtype.items()]
    sections.append("Weights (textbook = params x bytes/param; checkpoint = as stored: int8/fp8 per-channel\n"
                    "and int4 group-128 scales, lm_head and embeddings kept in bf16)\n" + render_table(rows, [
                        Column("dtype", "dtype"), Column("textbook", "textbook", "bytes"),
                        Column("checkpoint", "checkpoint", "bytes")]))
    mode = "training (mixed-precision Adam)" if est.train else "inference"
    g = f", group {est.group_size}" if est.group_size else ""
    kv_note = f"{est.kv_bytes_per_token:,} B/token ({est.kv_dtype})"
    mem = [
        (f"weights ({est.dtype}{g} ({est.dtype_source}))" if est.dtype_source.startswith("default")
         else f"weights ({est.dtype}{g}; dtype from {est.dtype_source})", est.weights_bytes, "bytes"),
        (f"KV cache, {kv_note}", est.kv_cache_bytes, "bytes"),
    ]
    if s.mla and not est.train:
        mem.append(("KV cache if MLA were decompressed (comparison)", est.kv_cache_decompressed_bytes, "bytes"))
    if est.train:
        mem.append(("grads + fp32 master + Adam states", est.optimizer_bytes, "bytes"))
    mem += [
        ("activations (peak of a prefill chunk)" if not est.train else "activations (34 x hidden B/token/layer)",
         est.activation_bytes, "bytes"),
        ("logits", est.logits_bytes, "bytes"),
        ("runtime overhead (CUDA context, allocator)", est.overhead_bytes, "bytes"),
        ("total (breakdown)", est.total_bytes, "bytes"),
        ("rule of thumb: 1.2 x weights", est.rule_of_thumb_bytes, "bytes"),
    ]
    beyond = f" (beyond the model's max context, {s.max_context:,})" if est.context > s.max_context else ""
    sections.append(render_kv(mem, f"Memory, {mode}: batch {est.batch}, context {est.context:,} tokens{beyond}"))
    if est.gpu:
        fit = [
            (f"per GPU ({est.num_gpus} x {est.gpu}, tensor parallel)", est.per_gpu_bytes, "bytes"),
            ("usable per GPU", est.usable_bytes_per_gpu, "bytes"),
            ("fits", est.fits, "bool"),
            ("headroom per GPU", est.headroom_bytes, "bytes"),
            (f"largest context at batch {est.batch} (tokens)",
             f"{est.max_context:,} (the model's max)" if est.max_context == s.max_context else est.max_context,
             "str" if est.max_context == s.max_context else "int"),
            (f"largest batch at context {est.context:,}", est.max_batch, "int"),
            ("fewest GPUs (valid TP degree)", est.min_gpus if est.min_gpus else "none up to 1024",
             "int" if est.min_gpus else "str"),
        ]
        if est.decode_tokens_per_s_bound is not None:
            cb = est.compute_bound_batch
            fit += [
                ("decode bound, all sequences (tokens/s)", est.decode_tokens_per_s_bound, "float"),
                ("decode bound, per sequence (tokens/s)", est.decode_tokens_per_s_bound / est.batch, "float"),
                ("prefill of batch x context, lower bound (s)", est.prefill_seconds_bound, "float"),
                ("batch where decode turns compute-bound", cb if cb else "never (KV reads grow as fast)",
                 "float" if cb else "str"),
            ]
        sections.append(render_kv(fit, f"GPU fit and roofline: {est.gpu}"))
    return "\n\n".join(sections)
