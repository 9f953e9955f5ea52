"""A checkpoint's own quantization_config sets the default dtype, group size, skips and scales."""

import pytest

from quantkit.calculators.estimate import estimate
from quantkit.calculators.params import linears
from quantkit.calculators.weights import PACKED_META_BYTES, checkpoint_bytes
from quantkit.catalogue import find_model_card
from quantkit.errors import ConfigError
from quantkit.selection import is_skipped
from quantkit.spec import ModelSpec

from .tiny_configs import TINY


def with_qc(qc):
    return ModelSpec.from_hf_config({**TINY["llama-gqa-untied"], "quantization_config": qc})


CT_GROUP = {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head", "re:.*layers\\.0\\..*"],
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
                "num_bits": 4, "type": "int", "strategy": "group", "group_size": 32, "symmetric": True,
                "scale_dtype": "torch.float32"}}}}


def test_compressed_tensors_group_scheme():
    s = with_qc(CT_GROUP)
    e = estimate(s)
    assert (e.dtype, e.group_size, e.dtype_source) == ("int4", 32, "quantization_config (compressed-tensors)")
    # pack-quantized: an int64 weight_shape (16 bytes) per quantized linear besides values and scales
    expected = checkpoint_bytes(s, "int4", 32, ("lm_head", "re:.*layers\\.0\\..*"), 4, 2, PACKED_META_BYTES).total
    assert e.weights_bytes == expected
    n_quantized = sum(1 for lin in linears(s) if not is_skipped(lin.name, s.quantization.skip))
    assert n_quantized > 0 and expected - checkpoint_bytes(s, "int4", 32, ("lm_head", "re:.*layers\\.0\\..*"), 4).total == 16 * n_quantized
    # the regex ignore keeps layer 0 in bf16: more bytes than quantizing it
    assert expected > checkpoint_bytes(s, "int4", 32, ("lm_head",), 4).total


def test_argument_overrides_checkpoint():
    e = estimate(with_qc(CT_GROUP), dtype="bf16")
    assert (e.dtype, e.dtype_source, e.group_size) == ("bf16", "argument", None)


def test_deepseek_v3_card_defaults_to_fp8():
    card = find_model_card("deepseek-v3")
    e = estimate(ModelSpec.from_hf_config(card.data, name=card.name))
    assert e.dtype == "fp8" and e.dtype_source == "quantization_config (fp8)"
    assert 0.99 < e.weights_bytes / e.params.total < 1.01


@pytest.mark.parametrize("qc, dtype, group", [
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, "int4", 128),
    ({"quant_method": "awq", "bits": 4, "group_size": 64}, "int4", 64),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "int8", None),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "int4", 64),
])
def test_other_methods(qc, dtype, group):
    e = estimate(with_qc(qc))
    assert (e.dtype, e.group_size) == (dtype, group)


def test_unknown_method_asks_for_dtype():
    s = with_qc({"quant_method": "hqq"})
    with pytest.raises(ConfigError, match=r"quant_method 'hqq' .* pass --dtype"):
        estimate(s)
    assert estimate(s, dtype="bf16").dtype == "bf16"


def test_regex_skip_patterns_match_from_the_start():
    assert is_skipped("model.layers.0.mlp.up_proj", ["re:.*mlp\\.up_proj$"])
    assert not is_skipped("model.layers.0.mlp.up_proj", ["re:mlp"])  # re.match, not search


def test_gpt_oss_mxfp4_checkpoint_bytes():
    """gpt-oss: experts in MXFP4 (4-bit values + one 1-byte scale per 32), the modules named in
    modules_to_not_convert (and everything inside them) in bf16."""
    from quantkit.calculators.params import count_params, linears

    card = find_model_card("gpt-oss-20b")
    s = ModelSpec.from_hf_config(card.data, name=card.name)
    e = estimate(s)
    assert (e.dtype, e.group_size, e.dtype_source) == ("int4", 32, "quantization_config (mxfp4)")
    p = count_params(s)
    assert p.total == 20_914_757_184  # transformers' meta-device count (tests/calculators)
    assert round((p.active - p.embedding) / 1e9, 1) == 3.6  # published: "3.6B active parameters"
    routed = [lin for lin in linears(s) if not lin.active]
    q = sum(lin.in_features * lin.out_features for lin in routed)
    scales = sum(lin.out_features * (lin.in_features // 32) for lin in routed)
    biases = sum(lin.out_features for lin in routed)
    assert e.weights_bytes == q // 2 + scales + 2 * (p.total - q)  # everything else bf16
    assert biases > 0 and all(is_skipped(f"model.layers.{i}.self_attn.q_proj", s.quantization.skip)
                               for i in (0, 23))
