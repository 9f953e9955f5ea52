"""The catalogue: every card parses and cites a source; lookup by name/alias, never substring."""

import pytest

from quantkit.catalogue import find_model_card, get_gpu, gpu_cards, model_cards
from quantkit.errors import ConfigError, InputError, UnknownNameError
from quantkit.resolve import load_spec
from quantkit.spec import ModelSpec

REQUIRED_MODELS = """llama2-7b llama2-13b llama2-70b llama3-8b llama3-70b llama3.1-8b llama3.1-70b
llama3.1-405b llama3.2-1b llama3.2-3b mistral-7b mixtral-8x7b mixtral-8x22b qwen2.5-0.5b qwen2.5-7b
qwen2.5-14b qwen2.5-72b gemma2-2b gemma2-9b gemma2-27b phi3-mini tinyllama-1.1b deepseek-v2-lite
deepseek-v3""".split()
REQUIRED_GPUS = "t4 l4 a10 rtx3090 rtx4090 a100-40gb a100-80gb h100-sxm h100 h100-pcie h200 b200 mi300x".split()


@pytest.mark.parametrize("name", REQUIRED_MODELS)
def test_required_model_cards(name):
    card = find_model_card(name)
    assert card.data["_quantkit"]["source"].startswith("http")
    ModelSpec.from_hf_config(card.data, name=card.name)


@pytest.mark.parametrize("name", REQUIRED_GPUS)
def test_required_gpu_cards(name):
    g = get_gpu(name)
    assert g.memory_bytes > 10**9 and g.memory_bandwidth_bytes_per_s > 10**11 and g.bf16_dense_flops > 10**13


def test_every_card_has_a_source():
    assert all(c.data["_quantkit"].get("source") for c in model_cards())
    assert all(c.data.get("source") for c in gpu_cards())


@pytest.mark.parametrize("alias", ["llama2-70b", "LLAMA2-70B", "Llama-2-70b-hf", "meta-llama/Llama-2-70b-hf"])
def test_aliases_case_insensitive(alias):
    assert find_model_card(alias).name == "llama2-70b"
    assert load_spec(alias).name == "llama2-70b"


def test_h100_alias():
    assert get_gpu("H100").name == get_gpu("h100-sxm").name


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownNameError, match=r"unknown model 'llama2-70' ?; did you mean .*llama2-70b"):
        find_model_card("llama2-70")


def test_no_substring_match():
    with pytest.raises(UnknownNameError):
        find_model_card("llama")


def test_config_path_and_folder(tmp_path):
    cfg = find_model_card("llama3-8b").data
    import json

    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert load_spec(str(tmp_path)).num_kv_heads == 8
    assert load_spec(str(tmp_path / "config.json")).num_layers == 32


def test_folder_without_config(tmp_path):
    with pytest.raises(InputError, match="has no config.json"):
        load_spec(str(tmp_path))


@pytest.mark.parametrize("broken, field", [
    ({"hidden_size": None}, "hidden_size"),
    ({"num_attention_heads": "x"}, "num_attention_heads"),
    ({"num_key_value_heads": 3}, "num_key_value_heads"),
    ({"model_type": "bert"}, "model_type 'bert' is not supported"),
])
def test_malformed_config_names_the_field(tmp_path, broken, field):
    import json

    cfg = {**find_model_card("llama2-7b").data, **broken}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=field):
        load_spec(str(tmp_path))


def test_invalid_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_spec(str(tmp_path / "config.json"))
