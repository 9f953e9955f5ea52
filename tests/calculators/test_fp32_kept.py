"""The estimator's fp32-kept tensors (``calculators/fp32_kept.py``) = what the installed transformers
keeps in fp32 when it loads the model in bf16, architecture by architecture.

This is what makes the int8 estimate byte-exact across transformers releases: run on the oldest and
the newest supported release, it fails the day a release changes ``_keep_in_fp32_modules_strict``.
"""

import pytest

from quantkit.calculators.fp32_kept import RULES, fp32_elements, installed_transformers, kept_names
from quantkit.catalogue import find_model_card, model_names
from quantkit.spec import ModelSpec

from .tiny_configs import TINY

MOE_CARDS = [n for n in model_names() if ModelSpec.from_hf_config(find_model_card(n).data, name=n).is_moe]


def _hf_fp32_elements(cfg: dict) -> tuple[int, int]:
    """(parameters, buffer elements) the transformers model of ``cfg`` holds in fp32 after a bf16
    load, by the same rule ``from_pretrained`` and quantkit's loader apply."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from quantkit.modelbuild import fp32_kept

    kwargs = {k: v for k, v in cfg.items() if k not in ("model_type", "_quantkit", "architectures")}
    config = AutoConfig.for_model(cfg["model_type"], **kwargs)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    keep = fp32_kept(model, torch.bfloat16)
    params = sum(p.numel() for n, p in model.named_parameters() if keep(n))
    buffers = sum(b.numel() for n, b in model.named_buffers() if keep(n))
    return params, buffers


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_architectures_match_installed_transformers(name):
    cfg = TINY[name]
    assert fp32_elements(ModelSpec.from_hf_config(cfg, name=name)) == _hf_fp32_elements(cfg)


@pytest.mark.parametrize("name", MOE_CARDS)
def test_moe_catalogue_cards_match_installed_transformers(name):
    card = find_model_card(name)
    assert fp32_elements(ModelSpec.from_hf_config(card.data, name=name)) == _hf_fp32_elements(card.data)


def test_rules_are_per_release():
    assert installed_transformers() is not None
    assert kept_names("deepseek_v3", (5, 17)) == ("e_score_correction_bias",)
    assert kept_names("deepseek_v3", (5, 24)) == ("e_score_correction_bias", "gate.weight")
    assert kept_names("deepseek_v2", (5, 23)) == ()
    assert kept_names("llama", (5, 25)) == ()
    assert set(RULES) == {"deepseek_v2", "deepseek_v3"}


def test_deepseek_v3_int8_estimate_counts_the_fp32_router():
    """On the real DeepSeek-V3 the fp32 router weights are 58 MoE layers x 256 x 7168 x 2 extra
    bytes (212.9 MB) from transformers 5.24 on, plus 58 x 256 x 4 bytes of router bias."""
    from quantkit.calculators.weights import checkpoint_bytes

    card = find_model_card("deepseek-v3")
    spec = ModelSpec.from_hf_config(card.data, name="deepseek-v3")
    assert fp32_elements(spec, (5, 24)) == (58 * 256 * 7168, 58 * 256)
    assert fp32_elements(spec, (5, 17)) == (0, 58 * 256)
    wb = checkpoint_bytes(spec, "int8")
    assert wb.fp32_extra == sum(n * b for n, b in zip(fp32_elements(spec), (2, 4)))
