"""The kernels compile for an H100 (sm_90) with the real Triton pipeline and ptxas, on the CPU.

The interpreter checks arithmetic, not code generation. These cases run Triton's real compiler for
``GPUTarget("cuda", 90, 32)`` on representative launches and check what the benchmark relies on:
no register spills, 16-byte global loads of the int8 rows in the GEMV, Hopper wgmma in the GEMM,
shared memory within the H100's 227 KiB per block. Timing still needs a GPU (benchmarks/).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                       reason="triton is not installed"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                       reason="TRITON_INTERPRET=1 replaces the compiler by the interpreter"),
]

H100_MAX_SHARED = 232448  # bytes per block (cudaDevAttrMaxSharedMemoryPerBlockOptin, sm_90)


def _cfg(**kw):
    from quantkit.kernels.tuning import KernelConfig

    return KernelConfig(**kw)


CASES = [  # (id, M, N, K, group_size, launcher kind, config kwargs, expected MMA instruction)
    ("gemv-m1", 1, 4096, 4096, None, "skinny",
     dict(kind="skinny", block_m=1, block_n=16, block_k=512, split_k=2), None),
    ("gemv-m4-group128", 4, 1024, 4096, 128, "skinny",
     dict(kind="skinny", block_m=4, block_n=16, block_k=256, num_warps=8), None),
    ("skinny-dot-m16", 16, 4096, 11008, None, "skinny",
     dict(kind="skinny", block_m=16, block_n=64, block_k=128, use_dot=True), "mma.sync"),
    ("gemm-m2048", 2048, 4096, 4096, None, "gemm",
     dict(kind="gemm", block_m=128, block_n=256, block_k=64, num_warps=8), "wgmma"),
    ("gemm-swap-group64", 64, 4096, 4096, 64, "gemm",
     dict(kind="gemm", block_m=64, block_n=128, block_k=64, swap_ab=True), "wgmma"),
]


@pytest.fixture(autouse=True)
def _private_triton_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")


@pytest.mark.parametrize("name,m,n,k,group_size,kind,cfg,mma", CASES, ids=[c[0] for c in CASES])
def test_compiles_for_sm90_without_spills(name, m, n, k, group_size, kind, cfg, mma):
    from .sm90_compile import compile_launch, resource_usage

    n_groups = 1 if group_size is None else -(-k // group_size)
    x = torch.zeros(m, k, dtype=torch.bfloat16)
    w = torch.zeros(n, k, dtype=torch.int8)
    s = torch.ones(n, n_groups)
    compiled = compile_launch(kind, x, w, s, None, group_size, _cfg(**cfg))
    assert [c.name for c in compiled][:1] == [f"{kind}_kernel" if kind != "skinny" else
                                              "skinny_kernel"]
    main = compiled[0]
    usage = resource_usage(main)
    assert usage["stack_bytes"] == 0 and "LOCAL:0" in usage["raw"], usage["raw"]
    assert usage["shared_bytes"] <= H100_MAX_SHARED
    ptx = main.asm["ptx"]
    if mma is None:
        assert "ld.global.v4.b32" in ptx  # 16 int8 weights per load
    else:
        assert mma in ptx
    if cfg.get("split_k", 1) > 1:
        assert [c.name for c in compiled] == ["skinny_kernel", "splitk_reduce_kernel"]


def test_dequantise_kernel_compiles():
    from .sm90_compile import compile_launch

    x = torch.zeros(256, 4096, dtype=torch.bfloat16)
    compiled = compile_launch("dequant", x, torch.zeros(1024, 4096, dtype=torch.int8),
                              torch.ones(1024, 32), None, 128, None)
    assert [c.name for c in compiled] == ["dequant_kernel"]
    ptx = compiled[0].asm["ptx"]
    assert "ld.global.v4.b32" in ptx or "ld.global.v2.b32" in ptx  # vectorised int8 loads
