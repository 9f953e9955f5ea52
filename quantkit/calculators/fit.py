"""Does it fit: headroom, largest context, largest batch and fewest GPUs (tensor parallel)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from quantkit.calculators.memory import Setup, memory, valid_tp
from quantkit.catalogue import GpuSpec
from quantkit.spec import ModelSpec

MAX_BATCH = 1 << 20
MAX_GPUS = 1024


@dataclass(frozen=True)
class Fit:
    gpu: str
    num_gpus: int
    usable_bytes_per_gpu: int
    per_gpu_bytes: int
    fits: bool
    headroom_bytes: int  # per GPU; negative when it does not fit
    max_context: int | None  # at the given batch; 0 if not even 1 token fits; capped at model max
    max_batch: int | None  # at the given context; 0 if not even 1 sequence fits
    min_gpus: int | None  # fewest GPUs (valid TP degree) that fit; None if none up to MAX_GPUS


def usable_bytes(gpu: GpuSpec, utilization: float) -> int:
    return int(gpu.memory_bytes * utilization)


def _largest(lo: int, hi: int, ok) -> int:
    """Largest n in [1, hi] with ok(n), assuming ok is monotone (True then False); 0 if none."""
    if not ok(1):
        return 0
    if ok(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def fit(spec: ModelSpec, s: Setup, gpu: GpuSpec, num_gpus: int = 1, utilization: float = 1.0,
        search_limits: bool = True) -> Fit:
    """Fit of ``spec`` under ``s`` on ``num_gpus`` x ``gpu`` with tensor parallelism.

    ``search_limits=False`` skips the largest-context and largest-batch searches (they are None).
    """
    usable = usable_bytes(gpu, utilization)
    per_gpu = memory(spec, s, num_gpus).total

    def ok(setup: Setup, tp: int) -> bool:
        return memory(spec, setup, tp).total <= usable

    max_context = max_batch = None
    if search_limits:
        max_context = _largest(1, spec.max_context, lambda c: ok(replace(s, context=c), num_gpus))
        max_batch = _largest(1, MAX_BATCH, lambda b: ok(replace(s, batch=b), num_gpus))
    min_gpus = next((n for n in range(1, MAX_GPUS + 1) if valid_tp(spec, n) and ok(s, n)), None)
    return Fit(
        gpu=gpu.name, num_gpus=num_gpus, usable_bytes_per_gpu=usable, per_gpu_bytes=per_gpu,
        fits=per_gpu <= usable, headroom_bytes=usable - per_gpu, max_context=max_context,
        max_batch=max_batch, min_gpus=min_gpus,
    )
