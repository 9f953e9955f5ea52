"""Exact parameter counts: every architecture feature and every catalogue card vs transformers."""

import pytest

from quantkit.calculators.params import count_params, linears
from quantkit.catalogue import find_model_card, model_cards
from quantkit.spec import ModelSpec

from .hf_count import hf_param_count
from .tiny_configs import TINY


def spec_of(cfg, name="t"):
    return ModelSpec.from_hf_config(cfg, name=name)


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_config_matches_transformers(name):
    cfg = TINY[name]
    assert count_params(spec_of(cfg)).total == hf_param_count(cfg)


def test_llama2_70b_reference_count():
    spec = spec_of(find_model_card("llama2-70b").data)
    p = count_params(spec)
    assert p.total == 68_976_648_192
    assert p.lm_head == p.embedding == 32000 * 8192  # untied
    assert p.active == p.total


def test_breakdown_sums_and_tied_lm_head():
    p = count_params(spec_of(TINY["llama-mha-tied"]))
    assert p.lm_head == 0
    d = p.as_dict()
    parts = ("embedding", "attention", "mlp", "experts", "shared_experts", "router", "norms", "lm_head")
    assert sum(d[k] for k in parts) == d["total"]


def test_gqa_mqa_attention_counts():
    # q: h*q_dim, k/v: h*kv_dim, o: q_dim*h ; MQA has one KV head
    cfg = TINY["llama-mqa-bias-headdim"]
    s = spec_of(cfg)
    assert (s.attention_kind, s.kv_dim, s.q_dim) == ("MQA", 16, 128)
    names = {lin.name.rsplit(".", 1)[-1]: lin for lin in linears(s) if ".layers.0." in lin.name}
    assert names["k_proj"].out_features == 16 and names["q_proj"].out_features == 128
    assert names["o_proj"].bias and names["k_proj"].bias  # Llama attention_bias covers o_proj


def test_qwen2_biases_only_on_qkv():
    s = spec_of(TINY["qwen2-bias-tied"])
    layer0 = {lin.name.rsplit(".", 1)[-1]: lin for lin in linears(s) if ".layers.0." in lin.name}
    assert layer0["q_proj"].bias and layer0["k_proj"].bias and layer0["v_proj"].bias
    assert not layer0["o_proj"].bias


def test_moe_total_and_active():
    s = spec_of(TINY["mixtral-moe"])
    p = count_params(s)
    per_expert = 3 * 64 * 160
    assert p.experts == 3 * 4 * per_expert
    assert p.total - p.active == 3 * (4 - 2) * per_expert  # 2 of 4 experts unused per token


def test_deepseek_dense_first_layer_and_shared_experts():
    s = spec_of(TINY["deepseek-v2-lite-mla"])
    assert s.moe_layers == (False, True, True)
    p = count_params(s)
    assert p.shared_experts == 2 * 3 * 64 * (2 * 32)  # 2 MoE layers x gated MLP of 2 x 32
    assert p.mlp == 3 * 64 * 160  # first_k_dense_replace = 1


@pytest.mark.parametrize("card", model_cards(), ids=lambda c: c.name)
def test_every_catalogue_card_matches_transformers(card):
    try:
        expected = hf_param_count(card.data)
    except (ValueError, KeyError) as exc:  # a model_type this transformers cannot build
        pytest.skip(f"transformers cannot build {card.name}: {exc}")
    assert count_params(spec_of(card.data, card.name)).total == expected
