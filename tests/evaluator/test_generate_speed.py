"""Decode steps, speed and memory. CPU: the errors and the eager path. GPU (``-m gpu``): CUDA
graphs and torch.compile equal eager, flash attention really runs, speed/memory numbers, OOM."""

from __future__ import annotations

import copy

import pytest
import torch

from quantkit.errors import DependencyError, InputError
from quantkit.evaluator.generate import greedy_generate, make_step
from quantkit.evaluator.loader import load_runner, random_runner
from quantkit.evaluator.speed import measure_speed, oom_message, weights_bytes

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def runner(tiny_model):
    return load_runner(tiny_model("llama")).runner.float()


def test_step_modes_on_cpu(runner):
    with pytest.raises(InputError, match="needs a KV cache"):
        make_step(runner, "none")
    runner.setup_cache(1, 16)
    assert make_step(runner, "none") == runner.decode_step
    for mode in ("cuda-graph", "compile"):
        with pytest.raises(DependencyError, match="needs the model on a CUDA device"):
            make_step(runner, mode)
    with pytest.raises(InputError, match="graphs must be one of"):
        make_step(runner, "turbo")


def test_greedy_generate_checks_the_cache(runner):
    runner.setup_cache(1, 8)
    with pytest.raises(InputError, match="needs more"):
        greedy_generate(runner, torch.zeros((1, 4), dtype=torch.long), 5)
    out = greedy_generate(runner, torch.zeros((1, 4), dtype=torch.long), 4)
    assert out.shape == (1, 4)


def test_speed_needs_cuda(runner):
    with pytest.raises(DependencyError, match="CUDA device"):
        measure_speed(runner, 1, 8, 4)


def test_weights_bytes_counts_tied_weights_once(tiny_model):
    r = load_runner(tiny_model("qwen2")).runner  # bf16, tied
    n = sum(p.numel() for p in r.parameters())  # parameters() yields a shared tensor once
    assert weights_bytes(r) == 2 * n
    r.setup_cache(2, 10)
    assert weights_bytes(r) == 2 * n  # the cache is not a weight


def test_oom_message_says_what_fits():
    from quantkit.calculators.estimate import estimate
    from quantkit.catalogue import find_model_card
    from quantkit.spec import ModelSpec

    spec = ModelSpec.from_hf_config(find_model_card("llama2-7b").data)
    est = estimate(spec, dtype="bf16", batch=64, context=4096, gpu="h100")
    msg = oom_message(64, 4096, est)
    assert msg.startswith("CUDA out of memory at batch 64, context 4096; quantkit estimate puts this at")
    assert f"at most batch {est.max_batch} at context 4096" in msg and "h100-sxm" in msg
    assert 0 < est.max_batch < 64


# ---- GPU ------------------------------------------------------------------------------------

def _gpu_runner(arch_cfg="llama", dtype=torch.bfloat16, **overrides):
    from tests.conftest import tiny_config

    cfg = tiny_config(arch_cfg, **overrides)
    return random_runner(cfg, dtype, device="cuda", seed=0).runner


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("graphs", ["cuda-graph", "compile"])
def test_graphed_decode_equals_eager(graphs):
    r = _gpu_runner(hidden_size=256, num_attention_heads=8, num_key_value_heads=2,
                    intermediate_size=512)
    prompt = torch.randint(0, 320, (2, 24), device="cuda")
    r.setup_cache(2, 48)
    eager = greedy_generate(r, prompt, 20)
    logits_eager = [r.decode_step(eager[:, i:i + 1], torch.tensor([24 + i], device="cuda")).clone()
                    for i in range(3)]
    r.setup_cache(2, 48)
    step = make_step(r, graphs)
    graphed = greedy_generate(r, prompt, 20, step)
    if graphs == "cuda-graph":  # the same kernels replayed: the same tokens
        assert torch.equal(graphed, eager)
    logits = [step(eager[:, i:i + 1], torch.tensor([24 + i], device="cuda")).clone() for i in range(3)]
    for a, b in zip(logits, logits_eager):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=0)  # bf16; compile may fuse differently


@pytest.mark.gpu
@cuda
def test_flash_attention_runs_for_prefill_and_gqa():
    from quantkit.evaluator.sdpa import sdpa_backends

    r = _gpu_runner(head_dim=64, hidden_size=512, num_attention_heads=8, num_key_value_heads=2)
    ids = torch.randint(0, 320, (1, 128), device="cuda")
    r.setup_cache(1, 160)
    with torch.no_grad():
        assert "flash" in sdpa_backends(lambda: r.prefill(ids))
        assert "flash" in sdpa_backends(lambda: r(ids))  # perplexity path
        decode = sdpa_backends(lambda: r.decode_step(ids[:, :1], torch.tensor([128], device="cuda")))
    assert "math" not in decode  # the folded-GQA cache attention stays on a fused kernel


@pytest.mark.gpu
@cuda
def test_measure_speed_reports_sane_numbers():
    import quantkit

    r = _gpu_runner(hidden_size=512, num_attention_heads=8, num_key_value_heads=2,
                    intermediate_size=1024, head_dim=64)
    res = measure_speed(r, batch=2, prompt_len=64, new_tokens=32, gpu="h100", warmup=1, repeats=3)
    assert res.error is None
    assert res.prefill_tokens_per_s > 0 and res.decode_tokens_per_s > 0 and res.ttft_ms > 0
    assert res.peak_allocated_bytes >= res.weights_bytes + res.kv_cache_bytes
    assert res.peak_reserved_bytes >= res.peak_allocated_bytes
    assert res.estimated_bytes > 0 and res.decode_bound_tokens_per_s > 0
    assert "flash" in res.sdpa_backends["prefill"]
    q = copy.deepcopy(r)
    quantkit.quantize(q, quantkit.QuantConfig(method="int8"), progress=False)
    res8 = measure_speed(q, batch=2, prompt_len=64, new_tokens=32, est_dtype="int8", gpu="h100",
                         warmup=1, repeats=3)
    assert res8.error is None and res8.weights_bytes < res.weights_bytes


@pytest.mark.gpu
@cuda
def test_out_of_memory_is_caught_with_the_estimates_advice():
    r = _gpu_runner()
    free, _ = torch.cuda.mem_get_info()
    # A KV cache far larger than the free memory: 2 x layers x batch x kv x S x head_dim x 2 B.
    batch = int(free // (2 * 3 * 2 * 64 * 8 * 2)) + 1024
    res = measure_speed(r, batch=batch, prompt_len=32, new_tokens=32, gpu="h100")
    assert res.error is not None and res.error.startswith("CUDA out of memory at batch")
    assert "quantkit estimate" in res.error
    assert r.cache_batch == 0  # the cache was released
    ok = measure_speed(r, batch=1, prompt_len=8, new_tokens=4, warmup=0, repeats=1)
    assert ok.error is None  # the GPU is usable again


@pytest.mark.gpu
@cuda
def test_device_map_auto_perplexity_equals_one_device(tiny_model):
    from quantkit.evaluator.loader import dispatch_auto, first_device
    from quantkit.evaluator.perplexity import evaluate

    r = load_runner(tiny_model("llama")).runner.float()
    tokens = torch.randint(0, 320, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    _, (ref,) = evaluate({"a": copy.deepcopy(r).cuda()}, tokens, ctx=64, device="cuda",
                         progress=False)
    split = dispatch_auto(r)
    _, (got,) = evaluate({"a": split}, tokens, ctx=64, device=first_device(split), progress=False)
    assert got.perplexity == pytest.approx(ref.perplexity, rel=1e-5)
