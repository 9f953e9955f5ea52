"""Activation/logit terms and roofline formulas, checked against hand calculations."""

import pytest

from quantkit.calculators.activations import logits_bytes, prefill_activation_bytes
from quantkit.calculators.memory import Setup
from quantkit.calculators.roofline import _attention_flops, roofline
from quantkit.catalogue import GpuSpec
from quantkit.spec import ModelSpec

from .tiny_configs import TINY

GPU = GpuSpec("test", "test GPU", memory_bytes=10**10, memory_bandwidth_bytes_per_s=10**12,
              bf16_dense_flops=10**14)


def test_prefill_activation_peak_is_mlp_for_llama():
    s = ModelSpec.from_hf_config(TINY["llama-gqa-untied"])  # h 64, inter 160
    # MLP: 2*64 + 3*160 = 608 elements/token > attention: 2*64 + 2*64 + 2*16 = 288
    assert prefill_activation_bytes(s, tokens=10) == 10 * 608 * 2
    # tensor parallel over 2 GPUs splits the intermediate: 2*64 + 240
    assert prefill_activation_bytes(s, tokens=10, tp=2) == 10 * (128 + 240) * 2


def test_logits_keep_last_position_bf16_plus_fp32():
    s = ModelSpec.from_hf_config(TINY["llama-gqa-untied"])
    assert logits_bytes(s, batch=3) == 3 * 320 * 6


def test_attention_flops_causal_and_windowed():
    full = ModelSpec.from_hf_config(TINY["llama-gqa-untied"])  # 3 layers, 8 heads x 8
    width = 8 * (8 + 8)
    assert _attention_flops(full, 1, 10) == 3 * 2 * 55 * width
    sw = ModelSpec.from_hf_config(TINY["mistral-sliding"])  # window 32
    attended = 32 * 33 // 2 + (100 - 32) * 32
    assert _attention_flops(sw, 2, 100) == 2 * 3 * 2 * attended * width


def test_roofline_prefill_and_decode_by_hand():
    s = ModelSpec.from_hf_config(TINY["llama-gqa-untied"])
    setup = Setup(dtype="bf16", batch=2, context=10)
    r = roofline(s, setup, GPU)
    from quantkit.calculators.params import count_params
    from quantkit.calculators.kv_cache import kv_cache

    p = count_params(s).total
    kv = kv_cache(s, 2, 10).total
    assert r.decode_bytes_per_step == 2 * p + kv
    assert r.decode_tokens_per_s == pytest.approx(2 * 10**12 / (2 * p + kv))
    assert r.prefill_flops == 2 * p * 20 + _attention_flops(s, 2, 10)
    assert r.prefill_seconds == pytest.approx(r.prefill_flops / 10**14)


# --- MoE decode: a batch reads every expert at least one of its tokens picked ------------------


def test_moe_read_fraction_matches_simulated_uniform_routing():
    import random

    from quantkit.calculators.roofline import moe_read_fraction

    rng = random.Random(0)
    for k, e, batch in [(2, 8, 1), (2, 8, 8), (8, 256, 16), (4, 60, 3)]:
        trials = 4000
        hit = sum(len({x for _ in range(batch) for x in rng.sample(range(e), k)}) for _ in range(trials))
        assert moe_read_fraction(k, e, batch) == pytest.approx(hit / trials / e, rel=0.02)
    assert moe_read_fraction(2, 8, 1) == 0.25 and moe_read_fraction(2, 8, 8) == pytest.approx(1 - 0.75 ** 8)


def test_moe_decode_reads_more_experts_as_the_batch_grows():
    from quantkit.calculators.params import count_params
    from quantkit.calculators.roofline import decode_weight_bytes
    from quantkit.calculators.weights import checkpoint_bytes

    s = ModelSpec.from_hf_config(TINY["mixtral-moe"])  # 4 experts, top-2
    p = count_params(s)
    routed = p.experts * 2  # bf16
    cb = checkpoint_bytes(s, "bf16")
    assert decode_weight_bytes(s, Setup(dtype="bf16"), 1) == cb.active  # exact at batch 1
    b3 = decode_weight_bytes(s, Setup(dtype="bf16"), 3)
    assert b3 == pytest.approx(cb.active + routed * ((1 - 0.5 ** 3) - 0.5))  # 7/8 of experts read
    assert decode_weight_bytes(s, Setup(dtype="bf16"), float("inf")) == pytest.approx(cb.total)
    # int8: the same fractions of the quantized experts (int8 weights + scales)
    from quantkit.calculators.weights import routed_bytes

    q = Setup(dtype="int8")
    assert decode_weight_bytes(s, q, 3) == pytest.approx(
        checkpoint_bytes(s, "int8").active + routed_bytes(s, "int8", None, ("lm_head",), 2, 2) * (7 / 8 - 0.5))


def test_moe_compute_bound_batch_solves_the_crossover():
    from quantkit.calculators.params import count_params
    from quantkit.calculators.roofline import decode_weight_bytes

    s = ModelSpec.from_hf_config(TINY["mixtral-moe"])
    setup = Setup(dtype="bf16", batch=1, context=1)
    r = roofline(s, setup, GPU)
    b = r.compute_bound_batch
    active = count_params(s).active
    kv_seq = r.decode_bytes_per_step - decode_weight_bytes(s, setup, 1)
    compute = 2 * active * b / GPU.bf16_dense_flops
    memory = (decode_weight_bytes(s, setup, b) + b * kv_seq) / GPU.memory_bandwidth_bytes_per_s
    assert compute == pytest.approx(memory, rel=1e-6)
    # later than the batch-1-weights answer, since a bigger batch reads more experts
    denom = 2 * active * GPU.memory_bandwidth_bytes_per_s - kv_seq * GPU.bf16_dense_flops
    assert b > decode_weight_bytes(s, setup, 1) * GPU.bf16_dense_flops / denom
