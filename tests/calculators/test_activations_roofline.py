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
