"""Kernel configurations: candidates, a heuristic default, and a per-shape tuning cache.

Configurations are cached per (device, dtype, path, M bucket, N, K, scale groups); the M bucket
is M rounded up to a power of two. The first eager call for a new key benchmarks every candidate
with ``triton.testing.do_bench`` (which flushes L2 before each run, so the weights come from HBM
as they do in a model) and keeps the fastest. Benchmarking synchronises the device, so it cannot
happen inside CUDA-graph capture: call ``warmup`` (or one eager forward) before capturing; an
untuned key met during capture raises ``KernelNotTunedError`` instead of silently picking a config.

``QUANTKIT_INT8_AUTOTUNE=0`` skips benchmarking and uses ``heuristic_config`` (no device sync);
so does the Triton CPU interpreter (``TRITON_INTERPRET=1``), where timing means nothing.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from quantkit.errors import QuantkitError, UsageError
from quantkit.kernels import launch


class KernelNotTunedError(QuantkitError):
    """A shape met during CUDA-graph capture has no tuned configuration yet."""


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """One launch configuration. kind: "skinny" | "gemm" | "dequant_cublas"."""

    kind: str
    block_m: int = 16
    block_n: int = 64
    block_k: int = 128
    split_k: int = 1  # skinny only: K ranges reduced by splitk_reduce_kernel
    use_dot: bool = False  # skinny only: tensor cores on a 16-row tile
    group_m: int = 8  # gemm only: row blocks sharing W tiles in L2
    swap_ab: bool = False  # gemm only: compute W_tile @ x_tile.T
    num_warps: int = 4
    num_stages: int = 3


_CACHE: dict[tuple, KernelConfig] = {}
_LOG: dict[tuple, list[tuple[KernelConfig, float | str]]] = {}
_NUM_SMS: dict[int, int] = {}


def m_bucket(m: int) -> int:
    """M rounded up to a power of two (1, 2, 4, ..., 16, 32, ...)."""
    return 1 << max(0, (m - 1).bit_length())


def autotune_enabled() -> bool:
    """False when ``QUANTKIT_INT8_AUTOTUNE`` is 0/false/off or under the Triton interpreter."""
    value = os.environ.get("QUANTKIT_INT8_AUTOTUNE", "1").strip().lower()
    if value not in ("1", "true", "on", "0", "false", "off"):
        raise UsageError(f"QUANTKIT_INT8_AUTOTUNE={value!r}: expected 1 or 0")
    return value in ("1", "true", "on") and not launch.interpreting()


def _num_sms(device) -> int:
    if device.type != "cuda":
        return 1  # interpreter: one "SM", no split needed for parallelism
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _NUM_SMS:
        _NUM_SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _NUM_SMS[index]


def cache_key(x2, qweight, scale, group_size) -> tuple:
    m = x2.shape[0]
    n, k = qweight.shape
    return (str(x2.device), x2.dtype, launch.select_path(m), m_bucket(m), n, k, scale.shape[1],
            group_size)


def heuristic_config(m: int, n: int, k: int, num_sms: int = 1) -> KernelConfig:
    """A reasonable untuned configuration (used under the interpreter or with autotune off)."""
    b = m_bucket(m)
    if launch.select_path(m) == "gemm":
        bm = min(128, max(32, b))
        return KernelConfig("gemm", block_m=bm, block_n=128, block_k=64,
                            num_warps=8 if bm == 128 else 4, num_stages=3)
    if b >= 8:
        cfg = KernelConfig("skinny", block_m=16, block_n=64, block_k=128, use_dot=True)
    else:
        # 8192 fp32 accumulators over 128 threads; 16+ int8 per thread per load
        cfg = KernelConfig("skinny", block_m=b, block_n=16 if b <= 2 else 8,
                           block_k=512 if b == 1 else 256)
    grid_n = -(-n // cfg.block_n)
    k_blocks = -(-k // cfg.block_k)
    split = 1
    # split K until there are ~2 programs per SM, keeping >= 2 K blocks per split
    while grid_n * split < 2 * num_sms and k_blocks // (split * 2) >= 2 and split < 16:
        split *= 2
    return dataclasses.replace(cfg, split_k=split)


def _splits(grid_n: int, k_blocks: int, num_sms: int) -> list[int]:
    out = [1]
    s = 2
    while s <= 16 and grid_n * s <= 4 * num_sms and k_blocks // s >= 2:
        out.append(s)
        s *= 2
    return out


def candidate_configs(m: int, n: int, k: int, num_sms: int) -> list[KernelConfig]:
    """Every configuration the tuner times for this shape (pruned by tile size and M)."""
    b = m_bucket(m)
    cands: list[KernelConfig] = []
    if launch.select_path(m) == "skinny":
        bases = []
        if b <= 8:  # CUDA-core FMAs: the (b, bn, bk) fp32 accumulator lives in registers
            for bn in (4, 8, 16, 32):
                for bk in (128, 256, 512, 1024):
                    for warps in (4, 8):
                        # <= 64 accumulators per thread; >= 16 int8 per thread per tile, so
                        # every thread issues 16-byte loads
                        if b * bn * bk <= 2048 * warps and bn * bk >= 512 * warps:
                            bases.append(KernelConfig("skinny", block_m=b, block_n=bn,
                                                      block_k=bk, num_warps=warps, num_stages=3))
        if b >= 8:  # tensor cores on a 16-row tile
            for bn, bk, warps, stages in ((32, 128, 4, 4), (64, 128, 4, 3), (64, 256, 4, 3),
                                          (128, 128, 4, 3), (128, 64, 4, 4), (64, 64, 4, 5)):
                bases.append(KernelConfig("skinny", block_m=16, block_n=bn, block_k=bk,
                                          use_dot=True, num_warps=warps, num_stages=stages))
        for base in bases:
            for s in _splits(-(-n // base.block_n), -(-k // base.block_k), num_sms):
                cands.append(dataclasses.replace(base, split_k=s))
        return cands
    tiles = ((128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4),
             (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4), (128, 128, 128, 8, 3),
             (64, 128, 128, 4, 3), (32, 128, 128, 4, 4), (32, 64, 128, 4, 4), (64, 256, 64, 8, 3))
    for bm, bn, bk, warps, stages in tiles:
        if bm > max(32, b):
            continue
        for swap in (False, True):
            cands.append(KernelConfig("gemm", block_m=bm, block_n=bn, block_k=bk, swap_ab=swap,
                                      num_warps=warps, num_stages=stages))
    if b >= 256:
        cands.append(KernelConfig("dequant_cublas"))
    return cands


def _is_out_of_resources(exc: BaseException) -> bool:
    from triton.runtime.errors import OutOfResources

    return isinstance(exc, OutOfResources)


def tune(x2, qweight, scale, bias, group_size, candidates=None) -> KernelConfig:
    """Time every candidate on these operands; return the fastest. Synchronises the device.

    A candidate that does not fit the device (Triton ``OutOfResources``: shared memory or
    registers) is skipped and logged in ``tuning_log``; any other error propagates.
    """
    from triton.testing import do_bench

    if x2.is_cuda and torch.cuda.is_current_stream_capturing():
        raise KernelNotTunedError(
            f"int8_linear: no tuned config for M={x2.shape[0]}, N={qweight.shape[0]}, "
            f"K={qweight.shape[1]} and the stream is capturing a CUDA graph; call "
            "quantkit.kernels.warmup(...) or run one eager forward before capture")
    m, k = x2.shape
    n = qweight.shape[0]
    if candidates is None:
        candidates = candidate_configs(m, n, k, _num_sms(x2.device))
    out = torch.empty((m, n), device=x2.device, dtype=x2.dtype)
    log: list[tuple[KernelConfig, float | str]] = []
    best, best_ms = None, float("inf")
    for cfg in candidates:
        def call(cfg=cfg):
            launch.LAUNCHERS[cfg.kind](x2, qweight, scale, bias, group_size, cfg, out)

        try:
            ms = do_bench(call, warmup=5, rep=20, return_mode="median")
        except Exception as exc:  # noqa: BLE001 - only resource limits are skipped, see below
            if not _is_out_of_resources(exc):
                raise
            log.append((cfg, f"skipped: {type(exc).__name__}"))
            continue
        log.append((cfg, ms))
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best is None:
        raise QuantkitError(f"int8_linear: no kernel configuration fits M={m}, N={n}, K={k} on "
                            f"{x2.device}: {log}")
    _LOG[cache_key(x2, qweight, scale, group_size)] = log
    return best


def config_for(x2, qweight, scale, bias, group_size) -> KernelConfig:
    """The cached configuration for this shape bucket, tuning (or picking the heuristic) once."""
    key = cache_key(x2, qweight, scale, group_size)
    cfg = _CACHE.get(key)
    if cfg is None:
        m, k = x2.shape
        if autotune_enabled():
            cfg = tune(x2, qweight, scale, bias, group_size)
        else:
            cfg = heuristic_config(m, qweight.shape[0], k, _num_sms(x2.device))
        _CACHE[key] = cfg
    return cfg


def tuned_configs() -> dict[tuple, KernelConfig]:
    """A copy of the cache: key (device, dtype, path, M bucket, N, K, n_groups, group_size)."""
    return dict(_CACHE)


def tuning_log() -> dict[tuple, list[tuple[KernelConfig, float | str]]]:
    """Per key, every candidate timed by ``tune`` with its median time in ms (or why skipped)."""
    return {k: list(v) for k, v in _LOG.items()}


def clear_cache() -> None:
    """Forget every tuned configuration (the next call per shape tunes again)."""
    _CACHE.clear()
    _LOG.clear()


def warmup(shapes, dtype=torch.bfloat16, device="cuda", progress=True,
           scale_dtype=torch.bfloat16, bias_dtype=torch.bfloat16) -> dict[tuple, KernelConfig]:
    """Tune and compile every ``(M, N, K)`` or ``(M, N, K, group_size)`` shape now.

    Run this (or one eager forward per batch size) before CUDA-graph capture. The operands are
    random; only shapes, dtypes and device matter. ``dtype`` is the activations', ``scale_dtype``
    and ``bias_dtype`` the layer's stored scales and bias (bf16 by default, as ``Int8Linear``):
    Triton compiles one variant per pointer dtype, so a dtype that differs from the captured
    call's leaves its compile to the capture. Both the bias and the no-bias variant are compiled.
    The global RNG is not touched (a local generator draws the operands). Returns the chosen
    config per cache key.
    """
    from tqdm import tqdm

    shapes = [tuple(s) for s in shapes]
    gen = torch.Generator(device=device).manual_seed(0)
    chosen = {}
    for shape in tqdm(shapes, desc="tuning int8 kernels", unit="shape", disable=not progress):
        if len(shape) not in (3, 4):
            raise UsageError(f"warmup: shape {shape} is not (M, N, K) or (M, N, K, group_size)")
        m, n, k = shape[:3]
        group_size = shape[3] if len(shape) == 4 else None
        n_groups = 1 if group_size is None else -(-k // group_size)
        x = torch.randn((m, k), device=device, dtype=dtype, generator=gen)
        w = torch.randint(-127, 128, (n, k), device=device, dtype=torch.int8, generator=gen)
        s = (torch.rand((n, n_groups), device=device, generator=gen) / 127).to(scale_dtype)
        b = torch.randn((n,), device=device, generator=gen).to(bias_dtype)
        launch.run(x, w, s, None, group_size)  # tunes, then compiles the chosen config
        launch.run(x, w, s, b, group_size)  # compiles its HAS_BIAS variant too
        key = cache_key(x, w, s, group_size if n_groups > 1 else None)
        chosen[key] = _CACHE[key]
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    return chosen
