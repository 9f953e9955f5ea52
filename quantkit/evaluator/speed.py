"""Speed and memory of one runner on one CUDA GPU, measured the gpt-fast way.

For a batch size B, a prompt of P random tokens and N new tokens (static cache of P + N):

- prefill: ``runner.prefill`` of (B, P), last position's logits only; tokens/s = B x P / time.
- TTFT: prefill plus the argmax of the first token (no tokenizer, no host round trip).
- decode: N - 1 greedy steps through the captured step (``generate.make_step``); tokens/s =
  B x (N - 1) / time. Each step reads all weights once and the whole static cache (the mask hides
  the unwritten slots), which is exactly the roofline's bytes per step at context P + N.
- timing: CUDA events around each phase, ``warmup`` runs first, the median of ``repeats``.
- memory: peak allocated and reserved (``torch.cuda.max_memory_*``) and the peak device memory
  (peak reserved + what ``mem_get_info`` shows outside the allocator: the CUDA context, other
  processes) next to ``quantkit estimate`` for the same model, dtype, batch and context; the
  measured activation and overhead terms are returned to calibrate the estimate against.
- the SDPA backends that ran in the prefill and in a decode step (``sdpa.sdpa_backends``).

A CUDA out-of-memory error is caught and returned as ``error``, with what the estimate says fits.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from quantkit.errors import DependencyError
from quantkit.evaluator.generate import make_step
from quantkit.evaluator.model import Decoder
from quantkit.evaluator.sdpa import sdpa_backends


@dataclass
class SpeedResult:
    batch: int
    prompt_len: int  # tokens per sequence
    new_tokens: int
    graphs: str  # cuda-graph, compile, none
    prefill_tokens_per_s: float | None = None
    ttft_ms: float | None = None
    decode_tokens_per_s: float | None = None  # all sequences of the batch together
    decode_step_ms: float | None = None
    peak_allocated_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    device_used_bytes: int | None = None  # peak reserved + memory outside the allocator (context)
    weights_bytes: int | None = None  # the runner's parameters and buffers, as held
    kv_cache_bytes: int | None = None  # the static cache, as allocated
    estimated_bytes: int | None = None  # quantkit estimate total_bytes, same batch and context
    estimate: dict[str, int] = field(default_factory=dict)  # its terms (bytes)
    memory_error_pct: float | None = None  # (estimated - device_used) / device_used x 100
    memory_error_vs_allocated_pct: float | None = None
    measured_activation_bytes: int | None = None  # peak allocated - weights - cache
    measured_overhead_bytes: int | None = None  # device used - peak allocated
    decode_bound_tokens_per_s: float | None = None  # roofline, for the GPU named in `gpu`
    fraction_of_bound: float | None = None
    decode_bytes_per_step: int | None = None  # weights streamed (not the untied embedding) + cache
    achieved_bandwidth_bytes_per_s: float | None = None  # decode_bytes_per_step / step time
    gpu: str | None = None  # catalogue GPU the bound was taken for
    sdpa_backends: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def weights_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s state dict (parameters and persistent buffers; the KV cache is not
    persistent), tensors shared by two names (tied embeddings) counted once."""
    from quantkit.quantizers.checkpoint import dedup_shared, tensor_bytes

    return tensor_bytes(dedup_shared(module.state_dict()))


def _median_ms(starts, ends) -> float:
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))  # ms


def _events(n):
    return [torch.cuda.Event(enable_timing=True) for _ in range(n)]


def measure_speed(runner: Decoder, batch: int, prompt_len: int, new_tokens: int,
                  graphs: str = "cuda-graph", warmup: int = 2, repeats: int = 5,
                  est_dtype: str = "bf16", group_size: int | None = None, gpu=None,
                  seed: int = 0) -> SpeedResult:
    """Measure ``runner`` (already on its CUDA device) at one batch size. ``est_dtype`` and
    ``group_size`` describe its weights to ``quantkit estimate``; ``gpu`` (catalogue name or
    GpuSpec, or None) gives the roofline bound."""
    device = runner.model.norm.weight.device
    if device.type != "cuda":
        raise DependencyError("speed measurements need the model on a CUDA device")
    res = SpeedResult(batch, prompt_len, new_tokens, graphs)
    context = prompt_len + new_tokens
    est = _estimate(runner, est_dtype, group_size, batch, context, prompt_len, gpu, res)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    step = None
    try:
        with torch.no_grad():
            runner.setup_cache(batch, context)
            gen = torch.Generator(device=device).manual_seed(seed)
            vocab = runner.args.spec.vocab_size
            prompt = torch.randint(0, vocab, (batch, prompt_len), device=device, generator=gen)
            positions = torch.arange(prompt_len, context, device=device)
            step = make_step(runner, graphs)  # captured before the prefill (see generate.py)
            _prefill_timing(runner, prompt, warmup, repeats, res)
            _decode_timing(runner, step, prompt, positions, warmup, repeats, res)
            res.sdpa_backends = {
                "prefill": sdpa_backends(lambda: runner.prefill(prompt)),
                "decode": sdpa_backends(lambda: runner.decode_step(prompt[:, :1], positions[:1])),
            }
            torch.cuda.synchronize(device)
            res.peak_allocated_bytes = torch.cuda.max_memory_allocated(device)
            res.peak_reserved_bytes = torch.cuda.max_memory_reserved(device)
            # Peak as nvidia-smi would show it: the allocator's peak reservation plus what lives
            # outside the allocator (CUDA context, library workspaces), read now.
            free, total = torch.cuda.mem_get_info(device)
            outside = (total - free) - torch.cuda.memory_reserved(device)
            res.device_used_bytes = res.peak_reserved_bytes + outside
            res.weights_bytes = weights_bytes(runner)
            res.kv_cache_bytes = sum(
                layer.self_attn.kv_cache.k.nbytes + layer.self_attn.kv_cache.v.nbytes
                for layer in runner.model.layers)
            # A step reads one embedding row per sequence, not the table (unless tied to lm_head).
            embed = runner.model.embed_tokens.weight
            untied = 0 if runner.ties_embeddings else embed.numel() * embed.element_size()
            res.decode_bytes_per_step = res.weights_bytes - untied + res.kv_cache_bytes
    except torch.cuda.OutOfMemoryError:
        res.error = oom_message(batch, context, est)
    finally:
        del step
        runner.clear_cache()
        torch.cuda.empty_cache()
    if res.error is None:
        _derive(res, est)
    return res


def _prefill_timing(runner, prompt, warmup, repeats, res: SpeedResult) -> None:
    B, P = prompt.shape
    starts, mids, ends = _events(repeats), _events(repeats), _events(repeats)
    for i in range(warmup + repeats):
        if i >= warmup:
            starts[i - warmup].record()
        logits = runner.prefill(prompt)
        if i >= warmup:
            mids[i - warmup].record()
        logits[:, -1].argmax(-1)
        if i >= warmup:
            ends[i - warmup].record()
    torch.cuda.synchronize()
    prefill_ms = _median_ms(starts, mids)
    res.prefill_tokens_per_s = B * P / (prefill_ms / 1e3)
    res.ttft_ms = _median_ms(starts, ends)


def _decode_timing(runner, step, prompt, positions, warmup, repeats, res: SpeedResult) -> None:
    B = prompt.shape[0]
    n_steps = positions.numel() - 1
    if n_steps < 1:
        return
    starts, ends = _events(repeats), _events(repeats)
    for i in range(warmup + repeats):
        tok = runner.prefill(prompt)[:, -1].argmax(-1, keepdim=True)
        if i >= warmup:
            starts[i - warmup].record()
        for j in range(n_steps):
            tok = step(tok, positions[j:j + 1])[:, -1].argmax(-1, keepdim=True)
        if i >= warmup:
            ends[i - warmup].record()
    torch.cuda.synchronize()
    ms = _median_ms(starts, ends)
    res.decode_tokens_per_s = B * n_steps / (ms / 1e3)
    res.decode_step_ms = ms / n_steps


def _estimate(runner, dtype, group_size, batch, context, prompt_len, gpu, res: SpeedResult):
    from quantkit.calculators.estimate import estimate

    est = estimate(runner.args.spec, dtype=dtype, kv_dtype=_kv_dtype(runner), batch=batch,
                   context=context, gpu=gpu, group_size=group_size,
                   prefill_chunk=batch * prompt_len)  # the runner prefills the whole batch at once
    res.estimated_bytes = est.total_bytes
    res.estimate = {k: getattr(est, k) for k in (
        "weights_bytes", "kv_cache_bytes", "activation_bytes", "logits_bytes", "overhead_bytes",
        "total_bytes")}
    res.gpu = est.gpu
    res.decode_bound_tokens_per_s = est.decode_tokens_per_s_bound
    return est


def _kv_dtype(runner) -> str:
    from quantkit.evaluator.loader import DTYPE_NAMES

    return DTYPE_NAMES[runner.model.norm.weight.dtype]


def _derive(res: SpeedResult, est) -> None:
    if res.device_used_bytes:
        res.memory_error_pct = 100.0 * (est.total_bytes - res.device_used_bytes) / res.device_used_bytes
        res.measured_overhead_bytes = res.device_used_bytes - res.peak_allocated_bytes
    if res.peak_allocated_bytes:
        res.memory_error_vs_allocated_pct = (
            100.0 * (est.total_bytes - res.peak_allocated_bytes) / res.peak_allocated_bytes)
        res.measured_activation_bytes = res.peak_allocated_bytes - res.weights_bytes - res.kv_cache_bytes
    if res.decode_step_ms:
        res.achieved_bandwidth_bytes_per_s = res.decode_bytes_per_step / (res.decode_step_ms / 1e3)
    if res.decode_tokens_per_s and res.decode_bound_tokens_per_s:
        res.fraction_of_bound = res.decode_tokens_per_s / res.decode_bound_tokens_per_s


def oom_message(batch: int, context: int, est) -> str:
    """One line: what ran out, and what ``quantkit estimate`` says would fit."""
    msg = (f"CUDA out of memory at batch {batch}, context {context}; quantkit estimate puts this "
           f"at {est.total_bytes / 1e9:.2f} GB")
    if est.gpu is not None:
        msg += (f" on {est.gpu} ({est.usable_bytes_per_gpu / 1e9:.2f} GB usable): it estimates at "
                f"most batch {est.max_batch} at context {context}, or context {est.max_context} "
                f"at batch {batch}")
    return msg
