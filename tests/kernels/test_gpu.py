"""The Triton kernels on a CUDA GPU: large shapes, every tuning candidate, CUDA-graph capture."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from quantkit import kernels

from .cases import operands, rel_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                       reason="triton is not installed"),
]

BF16, FP16 = torch.bfloat16, torch.float16


@pytest.fixture
def heuristic_configs(monkeypatch):
    """Fixed configs (no tuning) so the shape sweep stays fast; tuning is tested separately."""
    from quantkit.kernels import tuning

    monkeypatch.setenv("QUANTKIT_INT8_AUTOTUNE", "0")
    tuning.clear_cache()
    yield
    tuning.clear_cache()


@pytest.mark.parametrize("m", [1, 2, 3, 8, 16, 17, 64, 255, 1024, 4096])
@pytest.mark.parametrize("n,k,group_size", [(4100, 4096, None), (1000, 11000, 128),
                                            (11008, 4096, 64), (4096, 2080, 32)])
def test_large_shapes_match_fp32_reference(heuristic_configs, m, n, k, group_size):
    x, w, s, b = operands(m, n, k, group_size, m % 2 == 1, BF16, seed=m, device="cuda")
    assert kernels.dispatch_reason(x)[0] == "triton"
    y = kernels.int8_linear(x, w, s, b, group_size)
    assert y.dtype == BF16 and y.shape == (m, n)
    assert rel_error(y, x, w, s, b, group_size) < 1e-2


def test_fp16_and_3d_input(heuristic_configs):
    x, w, s, b = operands(24, 3000, 4096, None, True, FP16, seed=5, device="cuda")
    y = kernels.int8_linear(x.reshape(2, 12, 4096), w, s, b)
    assert y.shape == (2, 12, 3000) and y.dtype == FP16
    assert rel_error(y.reshape(24, 3000), x, w, s, b, None) < 1e-2


def test_fp32_activations_on_cuda_use_the_reference():
    x, w, s, b = operands(4, 64, 128, None, False, torch.float32, device="cuda")
    assert kernels.dispatch_reason(x)[0] == "reference"


@pytest.mark.slow
@pytest.mark.parametrize("m", [1, 2, 4, 8, 16, 64, 2048])
@pytest.mark.parametrize("group_size", [None, 64])
def test_every_tuning_candidate_is_correct(m, group_size):
    """Whatever the tuner picks must be right: run every candidate it would time."""
    from quantkit.kernels import launch, tuning

    n, k = 1040, 3072  # N over no block size; 1040 rows leave ragged tiles everywhere
    x, w, s, b = operands(m, n, k, group_size, True, BF16, seed=m, device="cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for cfg in tuning.candidate_configs(m, n, k, sms):
        try:
            y = launch.run(x, w, s, b, group_size, config=cfg)
        except Exception as exc:  # resource limits are the tuner's business; correctness is ours
            if tuning._is_out_of_resources(exc):
                continue
            raise
        assert rel_error(y, x, w, s, b, group_size) < 1e-2, cfg


def test_autotune_tunes_once_per_bucket_and_caches(monkeypatch):
    from quantkit.kernels import tuning

    monkeypatch.setenv("QUANTKIT_INT8_AUTOTUNE", "1")
    tuning.clear_cache()
    x, w, s, b = operands(3, 2048, 1024, None, False, BF16, device="cuda")
    y = kernels.int8_linear(x, w, s, b)
    assert rel_error(y, x, w, s, b, None) < 1e-2
    (key, cfg), = tuning.tuned_configs().items()
    assert key[2:6] == ("skinny", 4, 2048, 1024) and cfg.kind == "skinny"
    log = tuning.tuning_log()[key]
    assert len(log) == len(tuning.candidate_configs(3, 2048, 1024, torch.cuda.get_device_properties(
        0).multi_processor_count))
    assert min(ms for _, ms in log if isinstance(ms, float)) > 0
    monkeypatch.setattr(tuning, "tune", lambda *a, **k: pytest.fail("tuned twice"))
    kernels.int8_linear(x, w, s, b)  # M=3 again
    kernels.int8_linear(torch.cat([x, x[:1]]), w, s, b)  # M=4: same bucket (4)
    tuning.clear_cache()


@pytest.mark.parametrize("m", [1, 16, 64])
def test_cuda_graph_capture_after_warmup(m, monkeypatch):
    from quantkit.kernels import tuning

    monkeypatch.setenv("QUANTKIT_INT8_AUTOTUNE", "1")
    tuning.clear_cache()
    n, k = 1024, 4096  # split-K territory at M = 1
    x, w, s, b = operands(m, n, k, None, True, BF16, seed=m, device="cuda")
    chosen = kernels.warmup([(m, n, k)], progress=False)
    assert len(chosen) == 1
    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        kernels.int8_linear(static_x, w, s, b)  # the usual side-stream eager run before capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = kernels.int8_linear(static_x, w, s, b)
    for seed in (1, 2):
        fresh, _, _, _ = operands(m, n, k, None, False, BF16, seed=100 + seed, device="cuda")
        static_x.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_y, kernels.int8_linear(fresh, w, s, b))  # same kernels, same bits
        assert rel_error(static_y, fresh, w, s, b, None) < 1e-2
    tuning.clear_cache()


def test_untuned_shape_during_capture_raises(monkeypatch):
    from quantkit.kernels import tuning

    monkeypatch.setenv("QUANTKIT_INT8_AUTOTUNE", "1")
    tuning.clear_cache()
    x, w, s, b = operands(2, 512, 512, None, False, BF16, device="cuda")
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(kernels.KernelNotTunedError, match="warmup"):
        with torch.cuda.graph(graph):
            kernels.int8_linear(x, w, s, b)


@pytest.fixture
def no_compiling(monkeypatch):
    """Call ``forbid()`` to make any Triton compile from then on fail the test."""
    import triton.compiler

    from quantkit.kernels import triton_int8 as tk

    compiled = []

    def forbid():
        real = triton.compiler.compile

        def spy(src, *args, **kwargs):
            compiled.append(getattr(getattr(src, "fn", None), "__name__", repr(src)))
            return real(src, *args, **kwargs)

        # JITFunction keeps the compiler it bound on its first launch as ``self.compile``; a
        # function launched for the first time binds the module attribute
        monkeypatch.setattr(triton.compiler, "compile", spy)
        for fn in (tk.skinny_kernel, tk.splitk_reduce_kernel, tk.gemm_kernel, tk.dequant_kernel):
            if hasattr(fn, "compile"):
                monkeypatch.setattr(fn, "compile", spy)

    yield forbid, compiled


@pytest.mark.parametrize("m,group_size,dtype", [(1, None, BF16), (16, 128, BF16), (64, None, FP16)])
def test_warmup_alone_prepares_capture_of_an_int8linear(m, group_size, dtype, monkeypatch,
                                                        no_compiling):
    """warmup with its defaults, then capture at once: no eager call, no compile inside capture."""
    from torch import nn

    from quantkit.kernels import tuning
    from quantkit.quantizers.int8 import Int8Linear

    monkeypatch.setenv("QUANTKIT_INT8_AUTOTUNE", "1")
    tuning.clear_cache()
    n, k = 1024, 4096  # split-K territory at M = 1
    torch.manual_seed(m)
    linear = nn.Linear(k, n, bias=True, device="cuda")
    layers = [Int8Linear.from_linear(linear, group_size),  # bf16 scales and bias, the defaults
              Int8Linear.from_linear(nn.Linear(k, n, bias=False, device="cuda"), group_size)]
    assert layers[0].weight_scale.dtype == BF16
    static_x = torch.randn(m, k, device="cuda", dtype=dtype)
    kernels.warmup([(m, n, k) if group_size is None else (m, n, k, group_size)], dtype=dtype,
                   progress=False)
    forbid, compiled = no_compiling
    forbid()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_ys = [layer(static_x) for layer in layers]
    assert compiled == []  # warm-up compiled every variant the capture launches
    for seed in (1, 2):
        fresh = torch.randn(m, k, device="cuda", dtype=dtype,
                            generator=torch.Generator(device="cuda").manual_seed(seed))
        static_x.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        for layer, static_y in zip(layers, static_ys):
            assert torch.equal(static_y, layer(fresh))  # same kernels, same bits
            assert rel_error(static_y, fresh, layer.weight, layer.weight_scale, layer.bias,
                             group_size) < 1e-2
    assert compiled == []
    tuning.clear_cache()
