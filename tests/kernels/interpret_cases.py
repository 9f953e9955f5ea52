"""Kernel correctness under Triton's CPU interpreter, run by ``test_interpreter.py`` in a child.

Not collected by a plain ``pytest`` run (the name does not match ``test_*.py``):
``TRITON_INTERPRET`` must be set before triton is first imported, and setting it in the main
test process would change every later triton import. Run directly with
``TRITON_INTERPRET=1 python -m pytest tests/kernels/interpret_cases.py``.

Shapes are small and irregular (N, K not multiples of any block size; K both a multiple and not a
multiple of the group size) so both kernels' masks, the split-K tail and every scale mode run.
"""

from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 before triton is imported (see test_interpreter.py)",
                allow_module_level=True)

import torch  # noqa: E402

from quantkit import kernels  # noqa: E402
from quantkit.kernels import launch  # noqa: E402
from quantkit.kernels.tuning import KernelConfig  # noqa: E402

from .cases import operands, rel_error  # noqa: E402

BF16, FP16 = torch.bfloat16, torch.float16


@pytest.fixture(autouse=True)
def _triton_backend():
    kernels.set_backend("triton")  # CPU tensors run through the interpreter only when forced
    yield
    kernels.set_backend(None)


# (M, N, K, group_size, bias, dtype): heuristic configs, i.e. what the dispatch picks by itself
DISPATCH_CASES = [
    (1, 37, 300, None, True, BF16),
    (3, 200, 257, 32, False, BF16),  # K % 32 != 0: short last group
    (16, 129, 192, 64, True, BF16),  # K % 64 == 0
    (17, 200, 300, 128, False, BF16),  # first M on the GEMM path
    (70, 65, 256, None, True, BF16),
    (70, 200, 300, 64, True, FP16),
    (1, 200, 300, 128, False, FP16),
]


@pytest.mark.parametrize("m,n,k,group_size,bias,dtype", DISPATCH_CASES)
def test_int8_linear_matches_fp32_reference(m, n, k, group_size, bias, dtype):
    x, w, s, b = operands(m, n, k, group_size, bias, dtype, seed=m * 1000 + n)
    y = kernels.int8_linear(x, w, s, b, group_size)
    assert y.dtype == dtype and y.shape == (m, n)
    assert rel_error(y, x, w, s, b, group_size) < 1e-2


# forced configurations: every branch of the kernels, whatever the heuristic would pick
FORCED = [
    # split-K with a short last split (K=300 -> 5 blocks of 64 over 3 splits), mode 2 (G=100)
    (5, 37, 300, 100, True, KernelConfig("skinny", block_m=8, block_n=16, block_k=64, split_k=3)),
    # split-K, EVEN_K, mode 1 (BK=32 divides G=64), per-split scaling before the reduction
    (2, 50, 256, 64, False, KernelConfig("skinny", block_m=2, block_n=16, block_k=32, split_k=4)),
    # tensor-core skinny tile, split-K, per-channel (scale in the reduce kernel)
    (9, 37, 300, None, True, KernelConfig("skinny", block_m=16, block_n=32, block_k=32, split_k=4,
                                          use_dot=True)),
    # tensor-core skinny tile, mode 1 and mode 2
    (16, 40, 192, 32, True, KernelConfig("skinny", block_m=16, block_n=16, block_k=32,
                                         use_dot=True)),
    (12, 40, 200, 32, False, KernelConfig("skinny", block_m=16, block_n=32, block_k=64,
                                          use_dot=True)),
    # GEMM both orientations, modes 0/1/2, K tail
    (33, 50, 300, None, True, KernelConfig("gemm", block_m=32, block_n=32, block_k=64)),
    (33, 50, 300, 64, False, KernelConfig("gemm", block_m=32, block_n=32, block_k=32,
                                          swap_ab=True)),
    (40, 70, 300, 32, True, KernelConfig("gemm", block_m=32, block_n=64, block_k=64, group_m=2,
                                         swap_ab=True)),
    (100, 20, 96, 128, True, KernelConfig("gemm", block_m=16, block_n=16, block_k=32, group_m=4)),
    # dequantise + torch matmul
    (33, 50, 300, 32, True, KernelConfig("dequant_cublas")),
    (20, 50, 300, None, False, KernelConfig("dequant_cublas")),
]


@pytest.mark.parametrize("m,n,k,group_size,bias,cfg", FORCED)
@pytest.mark.parametrize("dtype", [BF16, FP16])
def test_forced_configs_match_fp32_reference(m, n, k, group_size, bias, cfg, dtype):
    x, w, s, b = operands(m, n, k, group_size, bias, dtype, seed=m + k)
    y = launch.run(x, w, s, b, group_size, config=cfg)
    assert rel_error(y, x, w, s, b, group_size) < 1e-2


def test_leading_dims_and_strided_input():
    x, w, s, b = operands(6, 30, 100, 32, True, BF16, seed=3)
    x3 = x.reshape(2, 3, 100)
    y3 = kernels.int8_linear(x3, w, s, b, 32)
    assert y3.shape == (2, 3, 30)
    assert rel_error(y3.reshape(6, 30), x, w, s, b, 32) < 1e-2
    wide = torch.zeros(6, 200, dtype=BF16)
    wide[:, ::2] = x  # stride 2 along K: the launcher copies to a contiguous row
    y = kernels.int8_linear(wide[:, ::2], w, s, b, 32)
    assert rel_error(y, x, w, s, b, 32) < 1e-2


def test_dispatch_picks_skinny_up_to_16_rows_then_gemm(monkeypatch):
    seen = []
    for kind, fn in list(launch.LAUNCHERS.items()):
        def spy(*args, _kind=kind, _fn=fn, **kw):
            seen.append(_kind)
            return _fn(*args, **kw)
        monkeypatch.setitem(launch.LAUNCHERS, kind, spy)
    for m in (1, 16, 17, 70):
        x, w, s, b = operands(m, 24, 64, None, False, BF16, seed=m)
        assert kernels.dispatch_reason(x)[0] == "triton"
        assert rel_error(kernels.int8_linear(x, w, s, b), x, w, s, b, None) < 1e-2
    assert seen == ["skinny", "skinny", "gemm", "gemm"]


def test_auto_backend_keeps_cpu_on_the_reference_even_when_interpreting(monkeypatch):
    kernels.set_backend("auto")
    x, w, s, b = operands(2, 8, 32, None, False, BF16, seed=1)
    calls = []
    monkeypatch.setattr(launch, "run", lambda *a, **k: calls.append(a))
    path, why = kernels.dispatch_reason(x)
    assert path == "reference" and "cpu" in why
    kernels.int8_linear(x, w, s, b)
    assert calls == []


def test_empty_batch_returns_empty_output():
    x, w, s, b = operands(1, 8, 32, None, True, BF16, seed=0)
    y = kernels.int8_linear(x[:0], w, s, b)
    assert y.shape == (0, 8) and y.dtype == BF16


def test_warmup_fills_the_config_cache_per_bucket():
    from quantkit.kernels import tuning

    tuning.clear_cache()
    chosen = kernels.warmup([(1, 24, 100), (3, 24, 100, 32), (40, 24, 100)], device="cpu",
                            progress=False)
    assert [(key[2], key[3], key[6], key[7]) for key in chosen] == \
        [("skinny", 1, 1, None), ("skinny", 4, 4, 32), ("gemm", 64, 1, None)]
    assert tuning.tuned_configs() == chosen
    assert tuning.tuning_log() == {}  # the interpreter never times anything
    tuning.clear_cache()
