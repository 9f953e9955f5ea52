"""Host side of the Triton int8 kernels: validation, path choice by M, one launch per config.

Every function here is free of host syncs (no ``.item()``, no ``.cpu()``, no
``torch.cuda.synchronize``), so a call whose configuration is already known can be captured into
a CUDA graph. Configurations come from ``tuning.config_for`` (tuned once per shape bucket).
"""

from __future__ import annotations

import os

import torch

from quantkit.errors import InputError, UsageError

# M <= SKINNY_MAX_M streams the weights once through ``skinny_kernel`` (decode); larger M runs the
# tiled tensor-core ``gemm_kernel`` (prefill). 16 is one tensor-core tile of rows.
SKINNY_MAX_M = 16

_TORCH_TO_TL = None


def _tl_dtype(dtype):
    global _TORCH_TO_TL
    if _TORCH_TO_TL is None:
        import triton.language as tl

        _TORCH_TO_TL = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16,
                        torch.float32: tl.float32}
    return _TORCH_TO_TL[dtype]


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def dot_dtype(x_dtype):
    """Operand dtype of ``tl.dot``; fp32 for bf16 in the interpreter (triton-lang/triton#11584)."""
    if interpreting() and x_dtype == torch.bfloat16:
        return _tl_dtype(torch.float32)
    return _tl_dtype(x_dtype)


def select_path(m: int) -> str:
    """``"skinny"`` for 1 <= M <= 16 rows, else ``"gemm"``."""
    return "skinny" if m <= SKINNY_MAX_M else "gemm"


def scale_mode(n_groups: int, group_size: int | None, block_k: int) -> int:
    """0 per-channel, 1 per-group with block_k | group_size, 2 per-group otherwise."""
    if n_groups == 1:
        return 0
    return 1 if group_size % block_k == 0 else 2


def check_operands(x, qweight, scale, bias, group_size):
    """Validate shapes and dtypes; return (n_groups, group_size_or_None). Raises InputError."""
    if qweight.dtype != torch.int8 or qweight.dim() != 2:
        raise InputError(f"int8_linear: qweight must be a 2-D int8 tensor, got {qweight.dtype} "
                         f"with shape {tuple(qweight.shape)}")
    n, k = qweight.shape
    if x.shape[-1] != k:
        raise InputError(f"int8_linear: x has {x.shape[-1]} input features, qweight has {k}")
    if scale.dim() != 2 or scale.shape[0] != n:
        raise InputError(f"int8_linear: scale must have shape ({n}, n_groups), "
                         f"got {tuple(scale.shape)}")
    n_groups = scale.shape[1]
    if n_groups != 1:
        if group_size is None or group_size <= 0:
            raise InputError(f"int8_linear: scale has {n_groups} groups per row but group_size "
                             f"is {group_size!r}")
        expected = -(-k // group_size)
        if n_groups != expected:
            raise InputError(f"int8_linear: group_size {group_size} over {k} input features "
                             f"needs {expected} scale groups per row, scale has {n_groups}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise InputError(f"int8_linear: bias must have shape ({n},), got {tuple(bias.shape)}")
    for name, t in (("qweight", qweight), ("scale", scale), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise InputError(f"int8_linear: {name} is on {t.device}, x is on {x.device}")
    # the kernels index with int32 offsets
    if qweight.numel() >= 2**31 or x.numel() >= 2**31 or x.numel() // k * n >= 2**31:
        raise UsageError(f"int8_linear: tensors over 2**31 elements are not supported "
                         f"(x {tuple(x.shape)}, qweight {tuple(qweight.shape)})")
    return n_groups, (group_size if n_groups != 1 else None)


def launch_skinny(x2, qweight, scale, bias, group_size, cfg, out):
    """Run ``skinny_kernel`` (+ ``splitk_reduce_kernel`` when cfg.split_k > 1) into ``out``."""
    from quantkit.kernels import triton_int8 as tk

    m, k = x2.shape
    n = qweight.shape[0]
    n_groups = scale.shape[1]
    mode = scale_mode(n_groups, group_size, cfg.block_k)
    k_blocks = -(-k // cfg.block_k)
    k_per_split = -(-k_blocks // cfg.split_k) * cfg.block_k  # whole BLOCK_Ks per split
    n_splits = -(-k // k_per_split)  # splits that get work (<= cfg.split_k)
    partial = None
    if n_splits > 1:
        partial = torch.empty((n_splits, m, n), device=x2.device, dtype=torch.float32)
    has_bias = bias is not None
    grid = (-(-n // cfg.block_n), n_splits)
    tk.skinny_kernel[grid](
        x2, qweight, scale, bias if has_bias else scale, out,
        partial if partial is not None else out,
        m, n, k, k_per_split, group_size or k,
        x2.stride(0), x2.stride(1), qweight.stride(0), qweight.stride(1),
        scale.stride(0), scale.stride(1), out.stride(0), out.stride(1),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        USE_DOT=cfg.use_dot, SCALE_MODE=mode, EVEN_K=(k % cfg.block_k == 0),
        WRITE_PARTIAL=partial is not None, HAS_BIAS=has_bias, DOT_DTYPE=dot_dtype(x2.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=True,
    )
    if partial is not None:
        block = 256
        tk.splitk_reduce_kernel[(-(-(m * n) // block),)](
            partial, scale, bias if has_bias else scale, out, m, n, n_splits,
            scale.stride(0), out.stride(0), out.stride(1),
            BLOCK=block, SCALE_MODE=mode, HAS_BIAS=has_bias, num_warps=4, enable_fp_fusion=True,
        )
    return out


def launch_gemm(x2, qweight, scale, bias, group_size, cfg, out):
    """Run ``gemm_kernel`` into ``out``."""
    from quantkit.kernels import triton_int8 as tk

    m, k = x2.shape
    n = qweight.shape[0]
    mode = scale_mode(scale.shape[1], group_size, cfg.block_k)
    has_bias = bias is not None
    grid = ((-(-m // cfg.block_m)) * (-(-n // cfg.block_n)),)
    tk.gemm_kernel[grid](
        x2, qweight, scale, bias if has_bias else scale, out,
        m, n, k, group_size or k,
        x2.stride(0), x2.stride(1), qweight.stride(0), qweight.stride(1),
        scale.stride(0), scale.stride(1), out.stride(0), out.stride(1),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        SWAP_AB=cfg.swap_ab, SCALE_MODE=mode, EVEN_K=(k % cfg.block_k == 0),
        HAS_BIAS=has_bias, DOT_DTYPE=dot_dtype(x2.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=True,
    )
    return out


def dequantize_triton(qweight, scale, group_size, dtype):
    """(N, K) ``dtype`` weight = qweight * scale in one kernel (the dequantise-then-cuBLAS path)."""
    from quantkit.kernels import triton_int8 as tk

    n, k = qweight.shape
    w = torch.empty((n, k), device=qweight.device, dtype=dtype)
    bn, bk = 32, 128
    tk.dequant_kernel[(-(-n // bn), -(-k // bk))](
        qweight, scale, w, n, k, group_size or k,
        qweight.stride(0), qweight.stride(1), scale.stride(0), scale.stride(1),
        BLOCK_N=bn, BLOCK_K=bk, num_warps=4, enable_fp_fusion=True,
    )
    return w


def launch_dequant_cublas(x2, qweight, scale, bias, group_size, cfg, out):
    """Dequantise to x's dtype with one Triton pass, then cuBLAS ``F.linear`` into ``out``.

    Allocates an (N, K) weight in x's dtype for the duration of the call (2 bytes per weight), so
    the tuner only offers it for the large-M buckets where it can pay.
    """
    w = dequantize_triton(qweight, scale, group_size, x2.dtype)
    b = None if bias is None else bias.to(x2.dtype)
    torch.addmm(b, x2, w.t(), out=out) if b is not None else torch.mm(x2, w.t(), out=out)
    return out


LAUNCHERS = {"skinny": launch_skinny, "gemm": launch_gemm, "dequant_cublas": launch_dequant_cublas}


def run(x, qweight, scale, bias=None, group_size=None, config=None):
    """Fused ``x @ dequant(qweight).T (+ bias)`` for bf16/fp16 ``x`` of shape (..., K).

    ``config`` forces one configuration (tests, tuning); by default the tuned one for this shape
    bucket is used, tuning it first if needed (see ``tuning.config_for``).
    """
    from quantkit.kernels import tuning

    if x.dtype not in (torch.bfloat16, torch.float16):
        raise InputError(f"int8_linear (triton): x must be bfloat16 or float16, got {x.dtype}")
    n_groups, group_size = check_operands(x, qweight, scale, bias, group_size)
    n, k = qweight.shape
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if m == 0:
        return out.reshape(*lead, n)
    if config is None:
        config = tuning.config_for(x2, qweight, scale, bias, group_size)
    LAUNCHERS[config.kind](x2, qweight, scale, bias, group_size, config, out)
    return out.reshape(*lead, n)
