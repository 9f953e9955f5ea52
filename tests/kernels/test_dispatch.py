"""Dispatch rule, backend switch, operand checks, tuning bookkeeping: CPU, no triton needed."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from quantkit import kernels
from quantkit.errors import DependencyError, InputError, UnknownNameError
from quantkit.kernels import launch, tuning

from .cases import operands, rel_error

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_backend(monkeypatch):
    monkeypatch.delenv(kernels.ENV_BACKEND, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    kernels.set_backend(None)
    yield
    kernels.set_backend(None)


def test_import_quantkit_kernels_imports_neither_torch_nor_triton():
    code = ("import sys, quantkit, quantkit.kernels; "
            "print('torch' in sys.modules, 'triton' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": ""}, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("group_size", [None, 32, 64, 128])
@pytest.mark.parametrize("k", [256, 300])  # a multiple and not a multiple of every group size
def test_reference_matches_fp32_dequantised_weights(group_size, k):
    x, w, s, b = operands(5, 48, k, group_size, True, torch.bfloat16, seed=k)
    y = kernels.int8_linear_reference(x, w, s, b, group_size)
    assert y.dtype == torch.bfloat16
    assert rel_error(y, x, w, s, b, group_size) < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cpu_tensors_take_the_reference_path(dtype):
    x, w, s, b = operands(3, 16, 64, None, True, dtype, seed=1)
    path, why = kernels.dispatch_reason(x)
    assert path == "reference"
    assert ("cpu" in why) or ("float32" in why)
    y = kernels.int8_linear(x, w, s, b)
    assert torch.equal(y, kernels.int8_linear_reference(x, w, s, b))


def test_backend_can_be_forced_by_env_and_by_function(monkeypatch):
    x = torch.zeros(1, 8, dtype=torch.bfloat16)
    monkeypatch.setenv(kernels.ENV_BACKEND, "reference")
    assert kernels.get_backend() == "reference"
    assert kernels.dispatch_reason(x) == (
        "reference", "backend forced to 'reference' (QUANTKIT_INT8_KERNEL or set_backend)")
    kernels.set_backend("auto")  # the function wins over the environment
    assert kernels.get_backend() == "auto"
    kernels.set_backend(None)
    assert kernels.get_backend() == "reference"


def test_unknown_backend_names_are_usage_errors(monkeypatch):
    with pytest.raises(UnknownNameError, match="choose one of auto, triton, reference"):
        kernels.set_backend("cuda")
    monkeypatch.setenv(kernels.ENV_BACKEND, "fast")
    with pytest.raises(UnknownNameError, match=r"QUANTKIT_INT8_KERNEL='fast'"):
        kernels.get_backend()


def test_forcing_triton_where_it_cannot_run_raises():
    kernels.set_backend("triton")
    with pytest.raises(DependencyError, match="x is on cpu; the Triton kernels run on CUDA"):
        kernels.int8_linear(*operands(1, 8, 32, None, False, torch.bfloat16))
    with pytest.raises(DependencyError, match="torch.float32"):
        kernels.int8_linear(*operands(1, 8, 32, None, False, torch.float32))


@pytest.mark.parametrize("change,message", [
    (lambda x, w, s, b: (x[:, :-1], w, s, b, None), "x has 63 input features, qweight has 64"),
    (lambda x, w, s, b: (x, w.float(), s, b, None), "qweight must be a 2-D int8 tensor"),
    (lambda x, w, s, b: (x, w, s[:-1], b, None), r"scale must have shape \(8, n_groups\)"),
    (lambda x, w, s, b: (x, w, s.repeat(1, 3), b, None), "3 groups per row but group_size is None"),
    (lambda x, w, s, b: (x, w, s.repeat(1, 3), b, 32), "group_size 32 over 64 input features "
                                                       "needs 2 scale groups per row, scale has 3"),
    (lambda x, w, s, b: (x, w, s, b[:-1], None), r"bias must have shape \(8,\)"),
])
def test_bad_operands_raise_input_errors(change, message):
    args = change(*operands(2, 8, 64, None, True, torch.bfloat16))
    with pytest.raises(InputError, match=message):
        launch.check_operands(*args)


def test_path_by_rows_and_m_buckets():
    assert [launch.select_path(m) for m in (1, 8, 16, 17, 4096)] == \
        ["skinny", "skinny", "skinny", "gemm", "gemm"]
    assert [tuning.m_bucket(m) for m in (1, 2, 3, 5, 16, 17, 70, 2048, 2049)] == \
        [1, 2, 4, 8, 16, 32, 128, 2048, 4096]


def test_scale_modes():
    assert launch.scale_mode(1, None, 128) == 0
    assert launch.scale_mode(4, 128, 64) == 1  # BLOCK_K divides the group: one scale per block
    assert launch.scale_mode(4, 32, 64) == 2  # groups inside a block: gathered scales


def test_candidates_respect_register_budget_and_split_rules():
    for m in (1, 2, 4, 8, 16):
        cands = tuning.candidate_configs(m, 1024, 4096, num_sms=132)
        assert cands and all(c.kind == "skinny" for c in cands)
        for c in cands:
            if not c.use_dot:
                assert c.block_m == tuning.m_bucket(m)
                assert c.block_m * c.block_n * c.block_k <= 2048 * c.num_warps
                assert c.block_n * c.block_k >= 512 * c.num_warps  # 16-byte loads per thread
            k_blocks = -(-4096 // c.block_k)
            assert c.split_k == 1 or (k_blocks // c.split_k >= 2
                                      and -(-1024 // c.block_n) * c.split_k <= 4 * 132)
        assert any(c.split_k > 1 for c in cands)  # N=1024 fills 132 SMs only with split-K
    big = tuning.candidate_configs(2048, 4096, 4096, num_sms=132)
    assert {c.kind for c in big} == {"gemm", "dequant_cublas"}
    assert {c.swap_ab for c in big if c.kind == "gemm"} == {False, True}
    small = tuning.candidate_configs(20, 4096, 4096, num_sms=132)
    assert max(c.block_m for c in small) == 32 and all(c.kind == "gemm" for c in small)


def test_heuristic_split_k_fills_the_device():
    cfg = tuning.heuristic_config(1, 1024, 4096, num_sms=132)  # 64 row blocks of 16
    assert cfg.kind == "skinny" and cfg.split_k == 4
    assert tuning.heuristic_config(1, 11008, 4096, num_sms=132).split_k == 1
    assert tuning.heuristic_config(1, 1024, 4096, num_sms=1).split_k == 1
    assert tuning.heuristic_config(64, 4096, 4096, num_sms=132).kind == "gemm"
    for m in range(1, 17):  # the untuned defaults obey the candidates' register/load rules
        cfg = tuning.heuristic_config(m, 4096, 4096, num_sms=132)
        assert cfg.block_m >= m and (cfg.use_dot or (
            cfg.block_m * cfg.block_n * cfg.block_k <= 2048 * cfg.num_warps
            and cfg.block_n * cfg.block_k >= 512 * cfg.num_warps))


def test_autotune_switch(monkeypatch):
    monkeypatch.setenv("QUANTKIT_INT8_AUTOTUNE", "0")
    assert tuning.autotune_enabled() is False
    monkeypatch.setenv("QUANTKIT_INT8_AUTOTUNE", "1")
    assert tuning.autotune_enabled() is True
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert tuning.autotune_enabled() is False  # nothing to time in the interpreter
    monkeypatch.setenv("QUANTKIT_INT8_AUTOTUNE", "maybe")
    with pytest.raises(Exception, match="expected 1 or 0"):
        tuning.autotune_enabled()


def test_torch_compile_sees_one_opaque_custom_op():
    x, w, s, b = operands(2, 16, 64, 32, True, torch.bfloat16, seed=4)
    traced = []

    def backend(gm, example_inputs):
        traced.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    fn = torch.compile(lambda t: kernels.int8_linear(t, w, s, b, 32) * 2, backend=backend,
                       fullgraph=True)
    y = fn(x)
    assert traced == ["quantkit.int8_linear.default", "<built-in function mul>"]
    assert torch.equal(y, kernels.int8_linear_reference(x, w, s, b, 32) * 2)


def test_warmup_defaults_match_int8linear_defaults():
    """warmup's dtypes default to what Int8Linear stores: the default warm-up is the capture's."""
    import inspect

    from quantkit.quantizers import int8

    scale_default = inspect.signature(int8.Int8Linear.__init__).parameters["scale_dtype"].default
    for fn in (kernels.warmup, tuning.warmup):
        params = inspect.signature(fn).parameters
        assert params["scale_dtype"].default in (None, scale_default)
        assert params["bias_dtype"].default in (None, int8.BIAS_DTYPE)
    assert inspect.signature(tuning.warmup).parameters["scale_dtype"].default == scale_default
    assert inspect.signature(tuning.warmup).parameters["bias_dtype"].default == int8.BIAS_DTYPE


@pytest.mark.parametrize("kwargs,expect", [
    ({}, (torch.bfloat16, torch.bfloat16, torch.bfloat16)),  # Int8Linear's defaults
    ({"dtype": torch.float16, "scale_dtype": torch.float32, "bias_dtype": torch.float16},
     (torch.float16, torch.float32, torch.float16)),
])
def test_warmup_passes_dtypes_through_and_leaves_the_global_rng_alone(monkeypatch, kwargs, expect):
    monkeypatch.setenv("QUANTKIT_INT8_AUTOTUNE", "0")  # heuristic configs: nothing to time on CPU
    tuning.clear_cache()
    calls = []

    def spy_run(x, w, s, b, group_size):
        calls.append((tuple(x.shape), x.dtype, w.dtype, tuple(s.shape), s.dtype,
                      None if b is None else b.dtype, group_size))
        tuning.config_for(x, w, s, b, group_size)  # what launch.run does before launching
        return x.new_empty((x.shape[0], w.shape[0]))

    monkeypatch.setattr(launch, "run", spy_run)
    torch.manual_seed(1234)
    expected_next = torch.rand(4)
    torch.manual_seed(1234)
    chosen = kernels.warmup([(1, 32, 64), (20, 16, 64, 32)], device="cpu", progress=False,
                            **kwargs)
    assert torch.equal(torch.rand(4), expected_next)  # the caller's random stream is untouched
    x_dtype, s_dtype, b_dtype = expect
    assert calls == [
        ((1, 64), x_dtype, torch.int8, (32, 1), s_dtype, None, None),
        ((1, 64), x_dtype, torch.int8, (32, 1), s_dtype, b_dtype, None),  # the HAS_BIAS variant
        ((20, 64), x_dtype, torch.int8, (16, 2), s_dtype, None, 32),
        ((20, 64), x_dtype, torch.int8, (16, 2), s_dtype, b_dtype, 32),
    ]
    assert [k[1:] for k in chosen] == [(x_dtype, "skinny", 1, 32, 64, 1, None),
                                       (x_dtype, "gemm", 32, 16, 64, 2, 32)]
    tuning.clear_cache()


def test_warmup_operands_are_reproducible(monkeypatch):
    """A local generator seeded per call: two warm-ups draw the same operands."""
    monkeypatch.setenv("QUANTKIT_INT8_AUTOTUNE", "0")
    tuning.clear_cache()
    drawn = []

    def spy_run(x, w, s, b, group_size):
        drawn.append((x, w, s, b))
        tuning.config_for(x, w, s, b, group_size)

    monkeypatch.setattr(launch, "run", spy_run)
    for _ in range(2):
        kernels.warmup([(2, 4, 8)], device="cpu", progress=False)
    first, second = drawn[1], drawn[3]  # the calls with bias
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert first[0].std() > 0.5  # random operands, not zeros
    tuning.clear_cache()


@pytest.fixture
def cuda_without_triton(monkeypatch):
    """A CPU tensor stands in for a CUDA one, and ``import triton`` fails as if not installed."""
    monkeypatch.setattr(kernels, "_is_cuda", lambda x: True)
    monkeypatch.setitem(sys.modules, "triton", None)  # import raises ModuleNotFoundError
    monkeypatch.setattr(kernels, "_triton_import_error", None)  # forget this process's answer
    monkeypatch.setattr(kernels, "_warned_no_triton", False)


def test_cuda_without_triton_warns_once_and_dispatch_reason_says_the_same(cuda_without_triton):
    x, w, s, b = operands(2, 8, 32, None, True, torch.bfloat16, seed=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # no filter dedups: only the module's flag may
        path, why = kernels.dispatch_reason(x)
        assert caught == []  # asking is not calling
        y1 = kernels.int8_linear(x, w, s, b)
        y2 = kernels.int8_linear(x, w, s, b)
    assert path == "reference"
    assert why.startswith("the fused int8 Triton kernel is unavailable because triton is not "
                          "installed; int8_linear uses the torch reference path")
    for part in ("~4x slower", "`pip install triton`", "pip install 'quantkit[triton]'"):
        assert part in why
    assert [(c.category, str(c.message)) for c in caught] == [(UserWarning, why)]
    assert caught[0].filename == __file__  # points at the line that called int8_linear
    ref = kernels.int8_linear_reference(x, w, s, b)
    assert torch.equal(y1, ref) and torch.equal(y2, ref)


def test_cuda_without_triton_no_warning_where_the_reference_is_chosen(cuda_without_triton):
    x32 = operands(2, 8, 32, None, False, torch.float32)
    x16 = operands(2, 8, 32, None, False, torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kernels.int8_linear(*x32)  # fp32 activations take the reference by rule
        kernels.set_backend("reference")
        kernels.int8_linear(*x16)  # asked for
    assert caught == []
    assert kernels._warned_no_triton is False
    kernels.set_backend("triton")
    with pytest.raises(DependencyError, match=r"forced to 'triton' but triton is not installed; "
                                              r"install it with `pip install triton`"):
        kernels.int8_linear(*x16)


def test_broken_triton_install_is_reported_as_such(cuda_without_triton, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "triton":
            raise ImportError("libcuda.so.1: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    path, why = kernels.dispatch_reason(torch.zeros(1, 8, dtype=torch.float16))
    assert path == "reference"
    assert why.startswith("the fused int8 Triton kernel is unavailable because triton is "
                          "installed but fails to import (libcuda.so.1: cannot open shared")
