"""Weights memory: textbook formula and the checkpoint view with scales and kept modules."""

import pytest

from quantkit.calculators.params import count_params
from quantkit.calculators.weights import checkpoint_bytes, parse_dtype, quantized_checkpoint_bytes, textbook_bytes_by_dtype
from quantkit.errors import UnknownNameError
from quantkit.spec import ModelSpec

from .tiny_configs import TINY

LLAMA2_70B = 68_976_648_192


def test_textbook_bytes_per_dtype():
    t = textbook_bytes_by_dtype(LLAMA2_70B)
    assert t == {"fp32": 4 * LLAMA2_70B, "fp16": 2 * LLAMA2_70B, "bf16": 2 * LLAMA2_70B,
                 "fp8": LLAMA2_70B, "int8": LLAMA2_70B, "int4": LLAMA2_70B // 2}
    assert round(t["fp16"] / 1e9, 2) == 137.95 and round(t["fp16"] / 2**30, 2) == 128.48
    assert textbook_bytes_by_dtype(3)["int4"] == 2  # half bytes round up


def test_int8_checkpoint_view_by_hand():
    cfg = TINY["llama-gqa-untied"]  # h 64, inter 160, 3 layers, 8 q heads x 8, 2 kv heads x 8
    s = ModelSpec.from_hf_config(cfg)
    per_layer_linear = 64 * 64 + 2 * (64 * 16) + 64 * 64 + 3 * 64 * 160
    per_layer_outputs = 64 + 16 + 16 + 64 + 160 + 160 + 64  # one bf16 scale per output channel
    kept = 320 * 64 * 2 + (3 * 2 + 1) * 64  # embedding + lm_head (skipped) + norms
    expected = 3 * (per_layer_linear + 2 * per_layer_outputs) + 2 * kept
    wb = checkpoint_bytes(s, "int8")
    assert wb.total == expected
    assert wb.skipped == ("lm_head",)
    assert wb.quantized_params + wb.kept_params == count_params(s).total


def test_group_scales_and_partial_groups():
    s = ModelSpec.from_hf_config(TINY["llama-gqa-untied"])
    per_channel = checkpoint_bytes(s, "int8", None).scale_bytes
    g32 = checkpoint_bytes(s, "int8", 32).scale_bytes
    assert g32 > per_channel
    # in=64 -> 2 groups of 32; in=160 (down_proj) -> 5 groups; per layer outputs 64+16+16+64 (in 64),
    # gate/up 160 outputs (in 64), down 64 outputs (in 160)
    per_layer = (64 + 16 + 16 + 64) * 2 + 2 * 160 * 2 + 64 * 5
    assert g32 == 3 * per_layer * 2
    g48 = checkpoint_bytes(s, "int8", 48).scale_bytes  # 64 -> 2 groups (partial), 160 -> 4 groups
    assert g48 == 3 * ((64 + 16 + 16 + 64) * 2 + 2 * 160 * 2 + 64 * 4) * 2


def test_int4_packs_two_per_byte_and_skip_patterns():
    s = ModelSpec.from_hf_config(TINY["llama-gqa-untied"])
    int8 = checkpoint_bytes(s, "int8", 32)
    int4 = checkpoint_bytes(s, "int4", 32)
    assert int8.total - int4.total == int8.quantized_params // 2
    skip_mlp = checkpoint_bytes(s, "int8", None, ("lm_head", "*.mlp.*"))
    assert len(skip_mlp.skipped) == 1 + 3 * 3
    assert skip_mlp.total > checkpoint_bytes(s, "int8").total
    assert quantized_checkpoint_bytes(s, 8) == checkpoint_bytes(s, "int8").total


def test_moe_active_bytes_read_per_token():
    s = ModelSpec.from_hf_config(TINY["mixtral-moe"])
    wb = checkpoint_bytes(s, "bf16")
    p = count_params(s)
    assert (wb.total, wb.active) == (2 * p.total, 2 * p.active)
    q = checkpoint_bytes(s, "int8")
    assert q.active < q.total


@pytest.mark.parametrize("alias, canon", [("bfloat16", "bf16"), ("FP16", "fp16"), ("float32", "fp32"),
                                          ("int4", "int4"), ("float8_e4m3fn", "fp8")])
def test_parse_dtype(alias, canon):
    assert parse_dtype(alias) == canon


def test_unknown_dtype_lists_accepted():
    with pytest.raises(UnknownNameError, match=r"unknown dtype 'int3'; accepted: fp32, fp16, bf16, fp8, int8, int4"):
        parse_dtype("int3")
