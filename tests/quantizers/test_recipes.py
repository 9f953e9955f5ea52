"""Recipes: the shipped ones load; typos and bad values are one-line ConfigErrors naming the key."""

import pytest

from quantkit.errors import ConfigError, UnknownNameError
from quantkit.quantizers.configs import Int8Config, LLMInt8Config, QuantConfig
from quantkit.quantizers.recipes import build_config, load_recipe, shipped_recipes


def test_shipped_recipes():
    assert {"int8", "int8-g128", "llm-int8"} <= set(shipped_recipes())
    assert load_recipe("int8").quant_config() == Int8Config()
    assert load_recipe("int8-g128").quant_config() == QuantConfig(method="int8", group_size=128)
    r = load_recipe("llm-int8.yaml")
    assert r.quant_config() == LLMInt8Config(threshold=6.0)
    assert r.eval["compare"] == ["bf16", "llm.int8"] and r.eval["ctx"] == 2048


def test_recipe_by_path_and_cli_overrides(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("quantization:\n  method: int8\n  group_size: 64\n  skip: [lm_head, '*.mlp.*']\n")
    r = load_recipe(str(p))
    assert r.name == "mine" and r.eval == {}
    assert r.quant_config(group_size=32) == Int8Config(group_size=32, skip=("lm_head", "*.mlp.*"))
    assert r.quant_config(skip=()) == Int8Config(group_size=64, skip=())
    with pytest.raises(ConfigError, match=r"^recipe 'mine.yaml' is for method 'int8', not 'llm.int8'"):
        r.quant_config(method="llm.int8")


@pytest.mark.parametrize("text, pattern", [
    ("quantization:\n  method: int8\n  grup_size: 128\n",
     r"^recipe 'bad.yaml': unknown key 'quantization.grup_size' \(did you mean 'quantization.group_size'\?\)"),
    ("quantisation:\n  method: int8\n",
     r"^recipe 'bad.yaml': unknown key 'quantisation' \(did you mean 'quantization'\?\)"),
    ("quantization:\n  method: int8\neval:\n  stirde: 512\n",
     r"^recipe 'bad.yaml': unknown key 'eval.stirde' \(did you mean 'eval.stride'\?\)"),
    ("quantization:\n  method: int8\n  group_size: -4\n",
     r"^recipe 'bad.yaml': group_size must be a positive integer or null, got -4$"),
    ("quantization:\n  method: int8\n  threshold: 6.0\n",
     r"^recipe 'bad.yaml': method 'int8' has no option 'threshold'"),
    ("quantization:\n  method: int9\n",
     r"^recipe 'bad.yaml': unknown quantization method 'int9' \(did you mean 'int8'\?\)"),
    ("quantization:\n  group_size: 8\n", r"^recipe 'bad.yaml': quantization.method is missing$"),
    ("quantization:\n  method: int8\neval:\n  ctx: 0\n",
     r"^recipe 'bad.yaml': eval.ctx must be a positive integer \(tokens\), got 0$"),
    ("quantization:\n  method: int8\neval:\n  compare: bf16\n",
     r"^recipe 'bad.yaml': eval.compare must be a non-empty list of variant names, got 'bf16'$"),
    ("quantization: [int8\n", r"^recipe 'bad.yaml' is not valid YAML at line \d+"),
    ("- int8\n", r"^recipe 'bad.yaml' must be a mapping"),
])
def test_recipe_errors(tmp_path, text, pattern):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises((ConfigError, UnknownNameError), match=pattern) as exc:
        load_recipe(str(p))
    assert "\n" not in str(exc.value)


def test_unknown_recipe_name_suggests():
    with pytest.raises(UnknownNameError, match=r"no recipe file or shipped recipe named 'int8-g12' "
                                               r"\(did you mean 'int8-g128'\?\)"):
        load_recipe("int8-g12")


def test_build_config_without_recipe():
    assert build_config(None, method="llm.int8", threshold=4) == LLMInt8Config(threshold=4.0)
    assert build_config(None) == Int8Config()
