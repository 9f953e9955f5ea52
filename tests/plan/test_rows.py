"""Plan rows come from quantkit's calculators; the quantities the workbook's formulas rely on hold.

The workbook computes the largest batch in closed form and the weights from parameter and scale
counts; these tests prove, over the catalogue, that both equal the calculators' own results.
"""

import itertools
from collections import Counter
from dataclasses import replace

import pytest

from quantkit.calculators.activations import logits_bytes, prefill_activation_bytes
from quantkit.calculators.estimate import estimate
from quantkit.calculators.kv_cache import kv_cache
from quantkit.calculators.fit import MAX_BATCH, fit, usable_bytes
from quantkit.calculators.memory import Setup, kv_heads_per_gpu, memory
from quantkit.calculators.weights import DEFAULT_GROUP, DTYPE_BITS, QUANTIZED, routed_bytes, checkpoint_bytes
from quantkit.catalogue import find_model_card, get_gpu, model_names
from quantkit.errors import ConfigError
from quantkit.plan.definition import build_plan
from quantkit.plan.rows import build_rows, valid_tp_degrees, weight_data
from quantkit.spec import ModelSpec, ceil_div

MODELS = ("llama2-7b", "llama2-13b", "llama2-70b", "mixtral-8x7b", "deepseek-v2-lite", "gemma2-9b",
          "mistral-7b", "qwen2.5-7b", "phi3-mini")


def spec(name):
    return ModelSpec.from_hf_config(find_model_card(name).data, name=name)


def test_rows_are_estimates_on_one_gpu_and_on_the_gpus_needed():
    p = build_plan({"models": "llama2-7b,llama2-70b", "gpus": "h100,a100-80gb", "dtypes": "bf16,int4",
                    "contexts": "4096,32768", "batches": "1,32", "gpu_util": 0.9, "block_size": 16})
    rows = build_rows(p)
    assert len(rows) == p.num_rows == 32
    seen_multi = False
    for row in rows:
        s, g = spec(row["model"]), get_gpu(row["gpu"])
        kw = dict(dtype=row["dtype"], batch=row["batch"], context=row["context"], gpu=g, gpu_util=0.9,
                  block_size=16)
        e1 = estimate(s, **kw)
        assert row["total_bytes"] == e1.total_bytes and row["fits"] == e1.fits
        assert row["min_gpus"] == e1.min_gpus
        if e1.min_gpus is None:
            assert row["per_gpu_bytes"] is row["max_batch"] is row["decode_tokens_per_s_bound"] is None
            continue
        en = estimate(s, num_gpus=e1.min_gpus, **kw)
        seen_multi |= e1.min_gpus > 1
        assert en.fits and row["per_gpu_bytes"] == en.per_gpu_bytes
        assert (row["max_batch"], row["decode_tokens_per_s_bound"]) == (en.max_batch, en.decode_tokens_per_s_bound)
    assert seen_multi  # llama2-70b bf16 needs several GPUs


def closed_form_max_batch(usable: int, fixed: int, per_seq: int, act_per_token: int, context: int,
                          chunk: int) -> tuple[int, str]:
    """The Plan sheet's largest batch, in Python: (batch, which branch gave it).

    memory(b) = fixed + b x per_seq + act_per_token x min(b x context, chunk). Where activations are
    capped the answer is b1; if b1 x context < chunk it lies where memory is linear: b2.
    """
    b1 = (usable - fixed - act_per_token * chunk) // per_seq
    if b1 * context >= chunk:
        b, branch = b1, "capped"
    else:
        b, branch = (usable - fixed) // (per_seq + context * act_per_token), "linear"
    return max(0, min(MAX_BATCH, b)), branch


@pytest.mark.parametrize("name", model_names())
def test_largest_batch_closed_form_equals_fit(name):
    """fit.max_batch = the sheet's closed form, over dtypes, contexts, prefill chunks, KV blocks,
    GPUs and TP degrees; the memory decomposition it rests on holds on both sides of the chunk."""
    s = spec(name)
    tps = valid_tp_degrees(s)  # the smallest and the largest: deepseek-v3 fits only on many GPUs
    branches = Counter()
    for dtype, context, chunk, block, gpu, tp in itertools.product(
            ("bf16", "int4"), (1000, 4096, 32768), (512, 8192, 131072, 1 << 20), (None, 16),
            (get_gpu("h100"), get_gpu("l4")), sorted({*tps[:2], *tps[-2:]})):
        setup = Setup(dtype=dtype, context=context, block_size=block, prefill_chunk=chunk,
                      group_size=DEFAULT_GROUP.get(dtype))
        m1 = memory(s, setup, tp)
        fixed = m1.weights + m1.overhead  # weights and overhead do not grow with the batch
        # per sequence as the Plan sheet adds it up: KV x share + logits (activations apart)
        kv_seq = kv_cache(s, 1, context, 2, block).total * kv_heads_per_gpu(s, tp)
        assert kv_seq == int(kv_seq)  # whole bytes: memory()'s int() truncates nothing
        per_seq = int(kv_seq) + logits_bytes(s, 1)
        act_per_token = prefill_activation_bytes(s, 1, 2, tp)
        # the decomposition, below, at and above the chunk (b x context vs chunk)
        for b in {1, 2, 7, max(1, chunk // context), chunk // context + 1}:
            mb = memory(s, replace(setup, batch=b), tp).total
            assert mb == fixed + b * per_seq + act_per_token * min(b * context, chunk), (b, dtype, context, chunk)
        usable = usable_bytes(gpu, 0.9)
        closed, branch = closed_form_max_batch(usable, fixed, per_seq, act_per_token, context, chunk)
        assert fit(s, setup, gpu, tp, 0.9).max_batch == closed, (dtype, context, chunk, block, gpu.name, tp)
        branches[branch if closed else "none fits"] += 1
    assert branches["capped"] >= 10 and branches["linear"] >= 10, branches  # both sides of the chunk


def test_closed_form_branches_at_the_boundary():
    """Hand-made numbers around b x context = chunk: the b2 branch is exact, not b1's line."""
    # fixed 10, per_seq 5, 1 byte per activation token, context 4, chunk 16 (capped from b = 4)
    def mem(b):
        return 10 + 5 * b + min(4 * b, 16)

    for usable in range(0, 200):
        want = max((b for b in range(0, 100) if b == 0 or mem(b) <= usable), default=0)
        assert closed_form_max_batch(usable, 10, 5, 1, 4, 16)[0] == want, usable


def test_valid_tp_degrees_are_what_min_gpus_searches():
    for name in model_names():
        s = spec(name)
        tps = valid_tp_degrees(s)
        assert tps[0] == 1 and all(s.num_heads % n == 0 for n in tps)
        assert max(tps) <= s.num_heads  # fit.min_gpus never finds a larger valid degree
    assert valid_tp_degrees(spec("qwen2.5-7b")) == [1, 2, 4, 28]  # 28 heads, 4 KV heads
    assert valid_tp_degrees(spec("llama2-13b")) == [1, 2, 4, 5, 8, 10, 20, 40]


@pytest.mark.parametrize("name", [*MODELS, "deepseek-v3", "mixtral-8x22b", "qwen2.5-0.5b", "gemma2-2b"])
def test_weight_counts_give_checkpoint_bytes(name):
    """The Weights sheet's formulas, in Python, over its counts = weights.checkpoint_bytes."""
    s = spec(name)
    for dtype in DTYPE_BITS:
        for group in ({None, DEFAULT_GROUP.get(dtype), 64} if dtype in QUANTIZED else {None}):
            w = weight_data(s, dtype, group, ("lm_head",))
            cb = checkpoint_bytes(s, dtype, w.group_size, ("lm_head",))
            bits = DTYPE_BITS[dtype]
            if dtype in QUANTIZED:
                total = (ceil_div(w.quantized_params * bits, 8) + 2 * w.scales + 2 * w.kept_params
                         + 2 * w.fp32_params + 4 * w.fp32_buffers)
                routed = w.routed_bytes(bits, 2, 2)
                assert routed == routed_bytes(s, dtype, w.group_size, ("lm_head",), 2, 2)
                active = total - routed + (
                    routed * w.experts_per_token // w.experts if w.experts else 0)
            else:
                total, active = w.total_params * bits // 8, w.active_params * bits // 8
            assert (total, active) == (cb.total, cb.active), (dtype, group)


def test_skip_patterns_move_weights_to_kept():
    s = spec("mixtral-8x7b")
    plain = weight_data(s, "int8", None, ("lm_head",))
    # the experts of layer 0: one module in transformers 5 (all 8 experts' 3-D tensors)
    skipped = weight_data(s, "int8", None, ("lm_head", "model.layers.0.mlp.experts"))
    assert skipped.routed_kept_params == 8 * 3 * 4096 * 14336
    assert skipped.quantized_params == plain.quantized_params - skipped.routed_kept_params
    cb = checkpoint_bytes(s, "int8", None, ("lm_head", "model.layers.0.mlp.experts"))
    assert cb.total == skipped.quantized_params + 2 * skipped.scales + 2 * skipped.kept_params


def test_int4_odd_layer_is_refused_not_mispacked():
    from tests.calculators.tiny_configs import TINY

    odd = ModelSpec.from_hf_config({**TINY["llama-gqa-untied"], "hidden_size": 63, "intermediate_size": 33,
                                    "num_attention_heads": 7, "num_key_value_heads": 7, "head_dim": 9})
    weight_data(odd, "int8", None, ("lm_head",))  # whole bytes at 8 bits: fine
    with pytest.raises(ConfigError, match="odd number of weights; int4 packing"):
        weight_data(odd, "int4", None, ("lm_head",))
