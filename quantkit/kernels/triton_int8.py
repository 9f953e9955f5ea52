"""Triton kernels for ``y = x @ (W_int8 * scale).T (+ bias)``; the host side lives in ``launch.py``.

Importing this module imports triton and decorates the kernels, so ``TRITON_INTERPRET=1`` must be
set before the first import for the kernels to run in Triton's CPU interpreter (tests do this in a
subprocess). Nothing else in quantkit imports this module eagerly.

Layouts: ``x`` (M, K) in bf16/fp16 (any strides), ``w`` int8 (N, K) (row-major is the fast case:
K contiguous, so a row streams with 16-byte loads), ``s`` (N, n_groups) any float dtype, ``bias``
(N,), ``y`` (M, N) in x's dtype. All products are accumulated in fp32.

SCALE_MODE (chosen per launch by the host, see ``launch.scale_mode``):
  0  per-output-channel scale (n_groups == 1): the int8 values are exact in bf16/fp16, so the
     scale is applied once to the fp32 accumulator in the epilogue (cheapest and most accurate);
  1  per-group scale with BLOCK_K dividing group_size: one scale per (row, K block), a vector load;
  2  per-group scale with group_size not a multiple of BLOCK_K: a gathered (BLOCK_N, BLOCK_K) scale
     tile (the repeated addresses hit L1).

DOT_DTYPE is the operand dtype of ``tl.dot``: x's dtype on the GPU. Under ``TRITON_INTERPRET=1`` it
is float32 for bf16 inputs because the interpreter stores bf16 as uint16 and its ``tl.dot``
multiplies the bit patterns (triton-lang/triton#11584, "we just don't support it yet"; the
interpreter documents bf16 arithmetic as unsupported). fp16 runs the real operand dtype there.
The interpreter also rounds fp32 -> bf16 toward zero where the GPU rounds to nearest even, so its
bf16 outputs carry about twice the GPU's rounding error (still far below the tests' 1e-2).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _scale_tile(w, s_ptr, offs_n, offs_k, mask_n, mask_nk, k0, group_size, stride_sn, stride_sg,
                SCALE_MODE: tl.constexpr):
    """Dequantise an int8 (BLOCK_N, BLOCK_K) tile to fp32 with the group scales applied."""
    wf = w.to(tl.float32)
    if SCALE_MODE == 1:
        # k0 is a multiple of BLOCK_K and BLOCK_K divides group_size: one group for the block
        s = tl.load(s_ptr + offs_n * stride_sn + (k0 // group_size) * stride_sg,
                    mask=mask_n, other=0.0)
        wf = wf * s.to(tl.float32)[:, None]
    if SCALE_MODE == 2:
        g = offs_k // group_size
        s = tl.load(s_ptr + offs_n[:, None] * stride_sn + g[None, :] * stride_sg, mask=mask_nk,
                    other=0.0)
        wf = wf * s.to(tl.float32)
    return wf


@triton.jit
def _load_tiles(x_ptr, w_ptr, offs_m, offs_n, mask_m, mask_n, k0, k_end, stride_xm, stride_xk,
                stride_wn, stride_wk, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """Load the (BLOCK_M, BLOCK_K) activation tile and the (BLOCK_N, BLOCK_K) int8 weight tile at
    k0, masking columns at or past k_end unless EVEN_K; returns (x, w, offs_k, mask_nk)."""
    offs_k = k0 + tl.arange(0, BLOCK_K)
    offs_k = tl.max_contiguous(tl.multiple_of(offs_k, BLOCK_K), BLOCK_K)
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk
    if EVEN_K:
        mask_nk = mask_n[:, None]
        x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
        w = tl.load(w_ptrs, mask=mask_nk, other=0)
    else:
        mask_k = offs_k < k_end
        mask_nk = mask_n[:, None] & mask_k[None, :]
        x = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=mask_nk, other=0)
    return x, w, offs_k, mask_nk


@triton.jit
def _epilogue(acc, s_ptr, b_ptr, y_ptr, offs_m, offs_n, M, N, stride_sn, stride_ym, stride_yn,
              SCALE_MODE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """acc (BLOCK_M, BLOCK_N) fp32 -> per-channel scale, bias, cast, masked store."""
    mask_n = offs_n < N
    if SCALE_MODE == 0:
        s = tl.load(s_ptr + offs_n * stride_sn, mask=mask_n, other=0.0)
        acc = acc * s.to(tl.float32)[None, :]
    if HAS_BIAS:
        b = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0)
        acc = acc + b.to(tl.float32)[None, :]
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & mask_n[None, :])


@triton.jit
def skinny_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr, p_ptr,
                  M, N, K, k_per_split, group_size,
                  stride_xm, stride_xk, stride_wn, stride_wk, stride_sn, stride_sg,
                  stride_ym, stride_yn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  USE_DOT: tl.constexpr, SCALE_MODE: tl.constexpr, EVEN_K: tl.constexpr,
                  WRITE_PARTIAL: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """GEMV / skinny GEMM for M <= BLOCK_M <= 16: every weight byte is read exactly once.

    Grid (cdiv(N, BLOCK_N), n_splits). Program (pid_n, pid_k) streams rows
    [pid_n*BLOCK_N, +BLOCK_N) of W over K range [pid_k*k_per_split, +k_per_split) (k_per_split is
    a multiple of BLOCK_K) and keeps all M activation rows against it. With one split it writes y;
    with several it writes fp32 partials p[pid_k, m, n] that ``splitk_reduce_kernel`` sums.
    USE_DOT: tensor cores on a 16-row tile (BLOCK_M == 16); else fp32 FMAs on the CUDA cores into a
    (BLOCK_M, BLOCK_N, BLOCK_K) accumulator summed over K once at the end, which wastes nothing at
    M = 1..8.
    """
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    k_start = pid_k * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    if USE_DOT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        # element-wise fp32 partial sums; the cross-thread reduction over K runs once after the
        # loop, so the loop body is loads, converts and FMAs only (BM*BN*BK/threads registers)
        acc3 = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        x, w, offs_k, mask_nk = _load_tiles(x_ptr, w_ptr, offs_m, offs_n, mask_m, mask_n, k0, k_end,
                                            stride_xm, stride_xk, stride_wn, stride_wk, BLOCK_K,
                                            EVEN_K)
        if USE_DOT and SCALE_MODE == 0:
            acc = tl.dot(x.to(DOT_DTYPE), tl.trans(w.to(DOT_DTYPE)), acc)
        else:
            wf = _scale_tile(w, s_ptr, offs_n, offs_k, mask_n, mask_nk, k0, group_size, stride_sn,
                             stride_sg, SCALE_MODE)
            if USE_DOT:
                acc = tl.dot(x.to(DOT_DTYPE), tl.trans(wf.to(DOT_DTYPE)), acc)
            else:
                acc3 += x.to(tl.float32)[:, None, :] * wf[None, :, :]
    if not USE_DOT:
        acc = tl.sum(acc3, axis=2)
    if WRITE_PARTIAL:
        p_ptrs = p_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :]
        tl.store(p_ptrs, acc, mask=mask_m[:, None] & mask_n[None, :])
    else:
        _epilogue(acc, s_ptr, b_ptr, y_ptr, offs_m, offs_n, M, N, stride_sn, stride_ym, stride_yn,
                  SCALE_MODE, HAS_BIAS)


@triton.jit
def splitk_reduce_kernel(p_ptr, s_ptr, b_ptr, y_ptr, M, N, n_splits,
                         stride_sn, stride_ym, stride_yn,
                         BLOCK: tl.constexpr, SCALE_MODE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """y[m, n] = sum_s p[s, m, n] (fixed order: deterministic), then scale/bias/cast."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for split in range(0, n_splits):
        acc += tl.load(p_ptr + split * M * N + offs, mask=mask, other=0.0)
    offs_m = offs // N
    offs_n = offs % N
    if SCALE_MODE == 0:
        acc = acc * tl.load(s_ptr + offs_n * stride_sn, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + offs_n, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs_m * stride_ym + offs_n * stride_yn, acc.to(y_ptr.dtype.element_ty),
             mask=mask)


@triton.jit
def gemm_kernel(x_ptr, w_ptr, s_ptr, b_ptr, y_ptr,
                M, N, K, group_size,
                stride_xm, stride_xk, stride_wn, stride_wk, stride_sn, stride_sg,
                stride_ym, stride_yn,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                GROUP_M: tl.constexpr, SWAP_AB: tl.constexpr, SCALE_MODE: tl.constexpr,
                EVEN_K: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_DTYPE: tl.constexpr):
    """Tiled GEMM for large M: int8 tiles are widened to DOT_DTYPE in registers before tl.dot.

    1-D grid with GROUP_M row-block swizzling (Triton matmul tutorial) so the W tiles of a column
    block are reused from L2 by GROUP_M row blocks. SWAP_AB computes the (BLOCK_N, BLOCK_M)
    transposed tile ``W_tile @ x_tile.T``: on Hopper the widened weight then is the left operand,
    which wgmma may take from registers (the right one must sit in shared memory); the tuner
    measures both orientations.
    """
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    group_id = pid // width
    first_m = group_id * GROUP_M
    group_rows = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_rows
    pid_n = (pid % width) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        x, w, offs_k, mask_nk = _load_tiles(x_ptr, w_ptr, offs_m, offs_n, mask_m, mask_n, k0, K,
                                            stride_xm, stride_xk, stride_wn, stride_wk, BLOCK_K,
                                            EVEN_K)
        if SCALE_MODE == 0:
            wd = w.to(DOT_DTYPE)  # exact: |int8| <= 128 fits bf16/fp16 mantissas
        else:
            # group scales go on the (BLOCK_N, BLOCK_K) tile, which is cheaper than scaling the
            # (BLOCK_M, BLOCK_N) partial product at every K step; rounding w*s to bf16 is what
            # ``dequantize`` (the reference) does too
            wd = _scale_tile(w, s_ptr, offs_n, offs_k, mask_n, mask_nk, k0, group_size, stride_sn,
                             stride_sg, SCALE_MODE).to(DOT_DTYPE)
        if SWAP_AB:
            acc = tl.dot(wd, tl.trans(x.to(DOT_DTYPE)), acc)
        else:
            acc = tl.dot(x.to(DOT_DTYPE), tl.trans(wd), acc)
    if SWAP_AB:
        acc = tl.trans(acc)
    _epilogue(acc, s_ptr, b_ptr, y_ptr, offs_m, offs_n, M, N, stride_sn, stride_ym, stride_yn,
              SCALE_MODE, HAS_BIAS)


@triton.jit
def dequant_kernel(w_ptr, s_ptr, out_ptr, N, K, group_size,
                   stride_wn, stride_wk, stride_sn, stride_sg,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out (N, K) contiguous = (w * s[n, k // group_size]) rounded to out's dtype.

    One pass (1 byte read + 2 bytes written per weight) for the dequantise-then-cuBLAS strategy;
    group_size = K for per-channel scales (every k maps to group 0).
    """
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
    w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk, mask=mask,
                other=0)
    s = tl.load(s_ptr + offs_n[:, None] * stride_sn + (offs_k // group_size)[None, :] * stride_sg,
                mask=mask, other=0.0)
    out = w.to(tl.float32) * s.to(tl.float32)
    tl.store(out_ptr + offs_n[:, None] * K + offs_k[None, :], out.to(out_ptr.dtype.element_ty),
             mask=mask)
