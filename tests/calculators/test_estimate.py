"""estimate(): JSON interface, rule of thumb, fit (limits, TP), roofline bounds, training, errors."""

import json

import pytest

from quantkit.calculators.estimate import estimate
from quantkit.calculators.memory import Setup, memory, valid_tp
from quantkit.catalogue import find_model_card, get_gpu
from quantkit.errors import InputError, UnknownNameError
from quantkit.spec import ModelSpec

STABLE_KEYS = {
    "model", "params", "dtype", "weights_bytes", "weights_bytes_by_dtype", "batch", "context",
    "kv_dtype", "kv_bytes_per_token", "kv_cache_bytes", "rule_of_thumb_bytes", "activation_bytes",
    "overhead_bytes", "total_bytes", "gpu", "fits", "max_context", "max_batch", "min_gpus",
    "decode_tokens_per_s_bound",
}


def spec(name):
    card = find_model_card(name)
    return ModelSpec.from_hf_config(card.data, name=card.name)


def test_llama2_70b_fp16_headline_numbers():
    e = estimate(spec("llama2-70b"), dtype="fp16")
    assert e.weights_bytes == 137_953_296_384  # 137.95 GB = 128.48 GiB
    assert e.rule_of_thumb_bytes == round(1.2 * 137_953_296_384)
    assert round(e.rule_of_thumb_bytes / 1e9, 1) == 165.5
    assert e.context == 4096  # the model's max by default
    assert e.kv_cache_bytes == 327_680 * 4096
    assert e.total_bytes == (e.weights_bytes + e.kv_cache_bytes + e.activation_bytes
                             + e.logits_bytes + e.overhead_bytes)


def test_json_keys_are_stable_and_serialisable():
    d = estimate(spec("llama3-8b"), gpu="h100").to_dict()
    assert STABLE_KEYS <= set(d)
    assert set(d["params"]) >= {"total", "active", "embedding", "lm_head"}
    assert set(d["weights_bytes_by_dtype"]) == {"fp32", "fp16", "bf16", "fp8", "int8", "int4"}
    json.dumps(d)
    assert estimate(spec("llama3-8b")).to_dict()["decode_tokens_per_s_bound"] is None


def test_int8_view_is_about_half_of_bf16():
    s = spec("llama2-7b")
    bf16 = estimate(s, dtype="bf16").weights_bytes
    int8 = estimate(s, dtype="int8").weights_bytes
    assert 0.5 < int8 / bf16 < 0.53  # lm_head and embeddings stay bf16, plus scales


def test_fit_limits_are_tight():
    s = spec("llama2-70b")
    e = estimate(s, dtype="bf16", gpu="h100", num_gpus=2, batch=4, context=4096)
    assert e.fits and e.headroom_bytes == e.usable_bytes_per_gpu - e.per_gpu_bytes
    # the largest batch fits and one more does not
    at_max = estimate(s, dtype="bf16", gpu="h100", num_gpus=2, batch=e.max_batch, context=4096)
    over = estimate(s, dtype="bf16", gpu="h100", num_gpus=2, batch=e.max_batch + 1, context=4096)
    assert at_max.fits and not over.fits
    one = estimate(s, dtype="bf16", gpu="h100", num_gpus=1, context=4096)
    assert not one.fits and one.max_batch == 0 and one.max_context == 0
    assert one.min_gpus == 2


def test_max_context_is_capped_at_model_max_and_tight_below():
    s = spec("llama3.1-8b")
    e = estimate(s, dtype="bf16", gpu="l4", batch=8, context=1024)
    assert 0 < e.max_context < s.max_context
    assert estimate(s, dtype="bf16", gpu="l4", batch=8, context=e.max_context).fits
    assert not estimate(s, dtype="bf16", gpu="l4", batch=8, context=e.max_context + 1).fits
    big = estimate(spec("llama3.2-1b"), gpu="h200", batch=1, context=1024)
    assert big.max_context == 131072


def test_tp_must_divide_heads_and_kv_is_replicated_beyond_kv_heads():
    s = spec("llama2-70b")  # 64 heads, 8 KV heads
    assert valid_tp(s, 8) and valid_tp(s, 16) and not valid_tp(s, 3) and not valid_tp(s, 12)
    base = Setup(dtype="bf16", batch=1, context=4096)
    kv8 = memory(s, base, 8).kv_cache
    kv16 = memory(s, base, 16).kv_cache
    assert kv8 == kv16 == memory(s, base, 1).kv_cache // 8  # one KV head per GPU either way


def test_mla_latent_replicated_under_tp():
    s = spec("deepseek-v3")
    base = Setup(dtype="fp8", batch=1, context=4096)
    assert memory(s, base, 8).kv_cache == memory(s, base, 1).kv_cache


def test_decode_bound_is_bandwidth_over_bytes():
    s = spec("llama2-7b")
    h100 = get_gpu("h100")
    e = estimate(s, dtype="bf16", gpu=h100, batch=1, context=1)
    step = e.weights_bytes + e.kv_cache_bytes
    assert e.decode_tokens_per_s_bound == pytest.approx(h100.memory_bandwidth_bytes_per_s / step)
    i8 = estimate(s, dtype="int8", gpu=h100, batch=1, context=1)
    assert 1.85 < i8.decode_tokens_per_s_bound / e.decode_tokens_per_s_bound < 2.0
    # compute-bound batch ~ peak/bandwidth x (bytes/param)/2 for bf16 weights
    assert e.compute_bound_batch == pytest.approx(
        h100.bf16_dense_flops * e.weights_bytes / (2 * e.params.active * h100.memory_bandwidth_bytes_per_s
                                                   - e.kv_cache_bytes * h100.bf16_dense_flops), rel=1e-9)


def test_training_is_16_bytes_per_param_plus_activations():
    s = spec("llama3.2-1b")
    e = estimate(s, train=True, batch=2, context=1024)
    p = e.params.total
    assert e.weights_bytes + e.optimizer_bytes == 16 * p
    assert e.activation_bytes == s.num_layers * 2 * 1024 * s.hidden_size * 34
    assert e.kv_cache_bytes == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"batch": 0}, "batch must be a positive integer, got 0"),
    ({"context": -5}, "context must be a positive integer, got -5"),
    ({"num_gpus": 0}, "number of GPUs must be a positive integer, got 0"),
    ({"gpu_util": 1.5}, r"GPU memory utilization must be in \(0, 1\], got 1.5"),
])
def test_bad_numbers(kwargs, message):
    with pytest.raises(InputError, match=message):
        estimate(spec("llama2-7b"), **kwargs)


def test_unknown_names():
    with pytest.raises(UnknownNameError, match="unknown KV dtype 'fp4'; accepted: fp32, bf16, fp16, fp8, int8"):
        estimate(spec("llama2-7b"), kv_dtype="fp4")
    with pytest.raises(UnknownNameError, match="unknown GPU 'h1000'; did you mean"):
        estimate(spec("llama2-7b"), gpu="h1000")


def test_invalid_tp_degree_lists_valid_ones():
    with pytest.raises(InputError, match=r"3 GPUs is not a valid tensor-parallel degree for llama2-70b "
                                         r"\(64 attention heads, 8 KV heads\); valid: 1, 2, 4, 8, 16, 32, 64$"):
        estimate(spec("llama2-70b"), gpu="h100", num_gpus=3)


def test_train_needs_half_precision_and_rule_of_thumb_follows_weights():
    with pytest.raises(InputError, match="--train models mixed-precision Adam with bf16 or fp16 weights, not int8"):
        estimate(spec("llama3-8b"), train=True, dtype="int8")
    e = estimate(spec("llama3-8b"), train=True)
    assert e.rule_of_thumb_bytes == round(1.2 * e.weights_bytes)


def test_group_size_only_for_quantized_dtypes():
    with pytest.raises(InputError, match=r"a group size applies only to quantized dtypes \(fp8, int8, int4\), not to bf16"):
        estimate(spec("llama2-7b"), dtype="bf16", group_size=64)


def test_checkpoint_column_follows_group_size():
    e = estimate(spec("llama2-7b"), dtype="int4", group_size=32)
    assert e.checkpoint_bytes_by_dtype["int4"] == e.weights_bytes
    assert e.checkpoint_bytes_by_dtype["int4"] > estimate(spec("llama2-7b"), dtype="int4").weights_bytes


def test_prefill_chunk_bounds_the_tokens_of_one_forward_pass():
    s = spec("llama3-8b")
    small = estimate(s, batch=2, context=1000, prefill_chunk=8192)
    assert small.activation_bytes == 2000 * (2 * 4096 + 3 * 14336) * 2  # all 2,000 tokens fit
    big = estimate(s, batch=64, context=4096, prefill_chunk=8192)
    assert big.activation_bytes == 8192 * (2 * 4096 + 3 * 14336) * 2  # capped at one chunk
    # largest batch is set by the KV cache once the chunk is full, not by activations
    e = estimate(s, dtype="bf16", gpu="h100", context=2048)
    per_seq = 131_072 * 2048 + s.vocab_size * 6  # KV cache + logits of one sequence
    full_chunk_act = big.activation_bytes
    fixed = e.total_bytes - e.kv_cache_bytes - e.logits_bytes - e.activation_bytes + full_chunk_act
    assert e.max_batch == (e.usable_bytes_per_gpu - fixed) // per_seq == 251
