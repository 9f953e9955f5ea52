"""KV cache: GQA/MQA, MLA latent, sliding windows (incl. Gemma-2 hybrid), dtypes, paged blocks."""

import pytest

from quantkit.calculators.kv_cache import bytes_per_token, kv_cache, tokens_held
from quantkit.catalogue import find_model_card
from quantkit.spec import ModelSpec

from .tiny_configs import TINY


def card_spec(name):
    card = find_model_card(name)
    return ModelSpec.from_hf_config(card.data, name=card.name)


@pytest.mark.parametrize("name, expected", [
    ("llama2-70b", 327_680),  # 2 x 80 layers x 8 kv heads x 128 x 2 B
    ("llama3-8b", 131_072),  # 2 x 32 x 8 x 128 x 2
    ("deepseek-v3", 70_272),  # MLA latent: 61 x (512 + 64) x 2
])
def test_published_kv_bytes_per_token(name, expected):
    assert bytes_per_token(card_spec(name), 2) == expected


def test_mla_decompressed_is_much_larger():
    s = card_spec("deepseek-v3")
    kv = kv_cache(s, batch=1, context=1000, kv_bytes=2)
    assert kv.total == 70_272 * 1000
    # decompressed: 128 heads x (192 + 128) x 2 B x 61 layers per token
    assert kv.decompressed_total == 128 * (192 + 128) * 2 * 61 * 1000


def test_mha_vs_gqa_vs_mqa_scale_with_kv_heads():
    base = {**TINY["llama-gqa-untied"]}
    per = {}
    for kv in (8, 2, 1):
        per[kv] = bytes_per_token(ModelSpec.from_hf_config({**base, "num_key_value_heads": kv}), 2)
    assert per[8] == 4 * per[2] == 8 * per[1] == 2 * 3 * 8 * 8 * 2


def test_sliding_window_bounds_every_layer():
    s = ModelSpec.from_hf_config(TINY["mistral-sliding"])  # window 32, 3 layers
    per_layer = 2 * 2 * 8 * 2
    assert kv_cache(s, 1, 20).total == 3 * 20 * per_layer
    assert kv_cache(s, 1, 1000).total == 3 * 32 * per_layer
    assert kv_cache(s, 4, 1000).total == 4 * 3 * 32 * per_layer


def test_gemma2_hybrid_local_global():
    s = ModelSpec.from_hf_config(TINY["gemma2-4norms"])  # layers: sliding, full, sliding; window 32
    per_layer = 2 * 2 * 16 * 2
    kv = kv_cache(s, 1, 100)
    assert (kv.sliding_layers, kv.full_layers) == (2, 1)
    assert kv.total == (2 * 32 + 1 * 100) * per_layer


def test_gemma2_9b_card_alternates():
    s = card_spec("gemma2-9b")
    assert s.num_sliding_layers == s.num_layers // 2
    assert s.layer_types[0] == "sliding_attention" and s.layer_types[1] == "full_attention"


def test_kv_dtype_and_block_rounding():
    s = ModelSpec.from_hf_config(TINY["llama-gqa-untied"])
    assert kv_cache(s, 2, 100, kv_bytes=1).total * 2 == kv_cache(s, 2, 100, kv_bytes=2).total
    assert tokens_held(100, None, 16) == 112
    assert tokens_held(100, 32, 16) == 32
    assert tokens_held(33, 32, 16) == 32
    assert kv_cache(s, 1, 100, 2, block_size=16).total == kv_cache(s, 1, 112, 2).total
