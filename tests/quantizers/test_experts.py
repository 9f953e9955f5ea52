"""int8 for fused MoE experts (transformers 5's 3-D expert tensors): Int8Experts and the Hub layout.

Tiny random Mixtral / Qwen2-MoE (shared expert) / DeepSeek-V3 (MLA, dense first layer) models, and
gpt-oss for the transposed, biased, interleaved-gate layout with its own clamped gate.
"""

import json

import pytest
import torch

import quantkit
from quantkit.errors import ConfigError, InputError
from quantkit.modelbuild import build_model
from quantkit.quantizers.checkpoint import save_quantized
from quantkit.quantizers.experts import Int8Experts, is_fused_experts, quantize_experts
from tests.cli.helpers import assert_one_line_error, run_quantkit
from tests.quantizers.test_quantize_models import IDS, _disk_tensor_bytes, _logits

MOE = ["mixtral-moe", "qwen2-moe-shared", "deepseek-v3-mla-qlora"]


def _experts(model) -> dict:
    return {n: m for n, m in model.named_modules() if is_fused_experts(m)}


@pytest.mark.parametrize("arch", MOE)
@pytest.mark.parametrize("group_size", [None, 16], ids=["per-channel", "g16"])
def test_moe_quantize_save_reload(arch, group_size, tiny_model, tmp_path):
    src = tiny_model(arch)
    model = build_model(src)
    experts = _experts(model)
    assert experts, "the tiny model has fused experts modules"
    shapes = {n: {p: tuple(getattr(m, p).shape) for p in ("gate_up_proj", "down_proj")} for n, m in experts.items()}
    ref = _logits(model)
    config = quantkit.QuantConfig(method="int8", group_size=group_size)
    report = quantkit.quantize(model, config, progress=False)

    for name, shape in shapes.items():
        mod = model.get_submodule(name)
        assert isinstance(mod, Int8Experts) and mod.group_size == group_size
        for proj, (e, out_f, in_f) in shape.items():
            assert getattr(mod, proj).dtype == torch.int8 and tuple(getattr(mod, proj).shape) == (e, out_f, in_f)
    by_name = {r.name: r for r in report.layers}
    for name, shape in shapes.items():
        for proj, (e, out_f, in_f) in shape.items():
            r = by_name[f"{name}.{proj}"]
            assert (r.experts, r.shape) == (e, (out_f, in_f))
            assert 0.002 < r.rel_error < 0.012  # int8 of Gaussian weights: ~0.5-0.7%
    assert not _experts(model), "no float experts module is left"

    q = _logits(model)
    rel = float((q.float() - ref.float()).norm() / ref.float().norm())
    assert rel < 0.03, rel

    out = tmp_path / "q"
    save_quantized(model, out, config, report=report, source_dir=src)
    cfg = json.loads((out / "config.json").read_text())
    assert set(shapes) <= set(cfg["quantization_config"]["quantkit"]["quantized_modules"])
    reloaded = quantkit.load_quantized(out)
    assert torch.equal(_logits(reloaded), q)  # bit for bit
    assert {n for n, m in reloaded.named_modules() if isinstance(m, Int8Experts)} == set(shapes)

    # Bytes on disk = the report's = the estimator's, the experts counted as int8 + scales and
    # what the installed transformers keeps in fp32 (DeepSeek's routers) counted in fp32.
    disk = _disk_tensor_bytes(out)
    assert disk == report.bytes_after
    assert disk == report.estimated_bytes
    assert report.bytes_after < report.bytes_before


def _fp32_experts(arch, tiny_model):
    model = build_model(tiny_model(arch), dtype=torch.float32)
    name, mod = next(iter(_experts(model).items()))
    return name, mod


def _dequantized_into(source, q: Int8Experts) -> None:
    """Write q's dequantized weights (and biases) into the float module, in its own layout."""
    for proj in q.projections:
        w = torch.stack([q.dequantize(proj, e) for e in range(q.num_experts)])  # (E, out, in)
        getattr(source, proj).data.copy_(w.transpose(1, 2) if source.is_transposed else w)
        if f"{proj}_bias" in q._buffers:
            getattr(source, f"{proj}_bias").data.copy_(getattr(q, f"{proj}_bias").float())


def _routing(tokens, experts, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(experts, generator=g)[:k] for _ in range(tokens)])
    w = torch.rand(tokens, k, generator=g).softmax(-1)
    return idx, w


@pytest.mark.parametrize("group_size", [None, 16])
def test_int8_experts_forward_is_the_source_forward_on_dequantized_weights(group_size, tiny_model):
    name, source = _fp32_experts("qwen2-moe-shared", tiny_model)
    q, reports = quantize_experts(name, source, group_size, "fp32")
    _dequantized_into(source, q)
    x = torch.randn(9, source.gate_up_proj.shape[-1])
    idx, w = _routing(9, q.num_experts)
    with torch.no_grad():
        torch.testing.assert_close(q(x, idx, w), source(x, idx, w), rtol=1e-5, atol=1e-6)
    assert [r.name for r in reports] == [f"{name}.gate_up_proj", f"{name}.down_proj"]


def _gpt_oss(dtype=torch.float32):
    from transformers import AutoModelForCausalLM, GptOssConfig

    cfg = GptOssConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                       num_experts_per_tok=2, layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    for n, p in model.named_parameters():
        if "experts" in n and n.endswith("_bias"):
            p.data.normal_(0, 0.02)  # transformers initialises them to zero: make them count
    return model


def test_transposed_biased_interleaved_experts_gpt_oss():
    model = _gpt_oss()
    source = model.model.layers[0].mlp.experts
    assert source.is_transposed and source.has_bias and not source.is_concatenated
    q, _ = quantize_experts("experts", source, None, "fp32")
    assert tuple(q.gate_up_proj.shape) == (4, 192, 64)  # stored (E, out, in) whatever the source layout
    assert tuple(q.gate_up_proj_bias.shape) == (4, 192) and q.gate_up_proj_bias.dtype == torch.bfloat16
    _dequantized_into(source, q)
    source.gate_up_proj_bias.data.copy_(q.gate_up_proj_bias.float())  # the bf16-stored bias
    source.down_proj_bias.data.copy_(q.down_proj_bias.float())
    x = torch.randn(7, 64) * 3  # large enough that gpt-oss's gate clamp (limit 7) bites
    idx, w = _routing(7, 4)
    with torch.no_grad():
        torch.testing.assert_close(q(x, idx, w), source(x, idx, w), rtol=1e-5, atol=1e-5)


def test_gpt_oss_whole_model_quantizes_and_matches_the_estimate():
    model = _gpt_oss(torch.bfloat16)
    ref = _logits(model)
    report = quantkit.quantize(model, quantkit.QuantConfig(method="int8"), progress=False)
    assert isinstance(model.model.layers[1].mlp.experts, Int8Experts)
    rel = float((_logits(model).float() - ref.float()).norm() / ref.float().norm())
    assert rel < 0.03, rel
    # transposed experts with biases, sinks, biased router: counted to the byte by the estimator
    assert report.bytes_after == report.estimated_bytes


def test_post_expert_norm_is_refused(tiny_model):
    name, source = _fp32_experts("mixtral-moe", tiny_model)
    source.has_post_expert_norm = True
    with pytest.raises(ConfigError, match=rf"'{name}' \(MixtralExperts\) applies a norm after each expert.*--skip {name}"):
        quantize_experts(name, source, None)


def test_skip_experts_keeps_them_and_the_estimate_agrees(tiny_model):
    model = build_model(tiny_model("mixtral-moe"))
    names = set(_experts(model))
    report = quantkit.quantize(model, quantkit.QuantConfig(method="int8", skip=["lm_head", "experts"]),
                               progress=False)
    assert set(_experts(model)) == names and set(report.skipped) == names | {"lm_head"}
    assert report.bytes_after == report.estimated_bytes


def test_already_quantized_experts_are_refused(tiny_model):
    model = build_model(tiny_model("mixtral-moe"))
    quantkit.quantize(model, quantkit.QuantConfig(method="int8", skip=["lm_head", "*.self_attn.*"]),
                      progress=False)  # only the experts
    with pytest.raises(ConfigError, match=r"'model.layers.0.mlp.experts' is already quantized \(Int8Experts\)"):
        quantkit.quantize(model, quantkit.QuantConfig(method="int8"), progress=False)


def test_llm_int8_keeps_experts_in_bf16_and_says_so(tiny_model):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (extra 'bnb')")
    model = build_model(tiny_model("mixtral-moe"))
    names = set(_experts(model))
    report = quantkit.quantize(model, quantkit.QuantConfig(method="llm.int8"), progress=False)
    assert set(_experts(model)) == names  # bitsandbytes swaps nn.Linear only
    assert set(report.skipped) == names | {"lm_head"}
    assert report.bytes_after == report.estimated_bytes  # counted in bf16 by the estimate too


# --- the Hub layout: one tensor per expert, converted by transformers on load ------------------------


def _hub_layout(arch, folder):
    """save_pretrained of a tiny model: transformers 5 writes MoE experts back in the Hub layout."""
    from tests.conftest import tiny_config
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cfg = tiny_config(arch)
    config = CONFIG_MAPPING[cfg["model_type"]](**{k: v for k, v in cfg.items() if k != "model_type"})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    model.save_pretrained(folder)
    return model


@pytest.mark.parametrize("arch", ["mixtral-moe", "qwen2-moe-shared"])
def test_hub_layout_moe_loads_exactly(arch, tmp_path):
    from safetensors import safe_open

    original = _hub_layout(arch, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as fh:
        names = list(fh.keys())
    assert any(".experts.0." in n for n in names)  # per-expert tensors, not the fused ones
    assert not any(n.endswith("experts.gate_up_proj") for n in names)
    loaded = build_model(tmp_path)
    assert torch.equal(_logits(loaded), _logits(original))


def test_hub_layout_moe_quantizes_through_the_cli(tmp_path):
    _hub_layout("mixtral-moe", tmp_path / "src")
    res = run_quantkit("quantize", str(tmp_path / "src"), "--out", str(tmp_path / "q"))
    assert res.returncode == 0, res.stderr
    assert "model.layers.0.mlp.experts.gate_up_proj" in res.stdout
    model = quantkit.load_quantized(tmp_path / "q")
    assert isinstance(model.model.layers[0].mlp.experts, Int8Experts)
    saved = json.loads((tmp_path / "q" / "quant_report.json").read_text())["totals"]
    assert saved["bytes_after"] == saved["estimated_bytes"] == _disk_tensor_bytes(tmp_path / "q")


def test_hub_layout_missing_expert_is_one_line_error(tmp_path):
    from safetensors.torch import load_file, save_file

    _hub_layout("qwen2-moe-shared", tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.0.mlp.experts.1.down_proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"lacks tensor 'model.layers.0.mlp.experts.1.down_proj.weight'"):
        build_model(tmp_path)
    res = run_quantkit("quantize", str(tmp_path), "--out", str(tmp_path.parent / "q-missing"))
    assert_one_line_error(res, r"Error: the checkpoint in '.*' lacks tensor "
                               r"'model.layers.0.mlp.experts.1.down_proj.weight' .*names as the checkpoint stores them")
    assert not (tmp_path.parent / "q-missing").exists()


# --- found in review: architectures outside the estimator, renumbered experts, fp32 tensors ------


def _uncovered(model_type, **extra):
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    base = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                num_experts_per_tok=2, max_position_embeddings=256)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(CONFIG_MAPPING[model_type](**{**base, **extra}),
                                            dtype=torch.bfloat16).eval()


def test_linear_subclass_with_its_own_forward_is_kept():
    model = _uncovered("phimoe")  # its router is an nn.Linear subclass that returns a tuple
    routers = {n for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and type(m) is not torch.nn.Linear}
    assert routers
    report = quantkit.quantize(model, quantkit.QuantConfig(method="int8"), progress=False)
    assert routers <= set(report.skipped)
    with torch.no_grad():
        assert model(IDS[:, :6]).logits.shape == (2, 6, 256)
    assert report.estimated_bytes is None  # phimoe is not in quantkit estimate's families
    from quantkit.quantizers.report import render

    assert "n/a (no transformers config, or an architecture quantkit estimate does not cover)" in render(report)


def test_uncovered_model_whose_forward_breaks_is_refused():
    model = _uncovered("jamba", expert_layer_period=1, expert_layer_offset=0, attn_layer_period=2,
                       attn_layer_offset=1, mamba_d_state=8, use_mamba_kernels=False, num_experts=4)
    with pytest.raises(ConfigError, match=r"model_type 'jamba' is not one quantkit covers, and its forward "
                                          r"fails once quantized \(RuntimeError: .*\); keep .* --skip"):
        quantkit.quantize(model, quantkit.QuantConfig(method="int8"), progress=False)


def test_int8_experts_pickle_round_trip():
    import pickle

    q, _ = quantize_experts("experts", _gpt_oss().model.layers[0].mlp.experts, None)
    x, (idx, w) = torch.randn(5, 64), _routing(5, 4)
    assert torch.equal(pickle.loads(pickle.dumps(q))(x, idx, w), q(x, idx, w))


def test_hub_layout_renumbered_expert_is_refused(tmp_path):
    """Experts 0, 2, 3, 7 of 4 stack to the right shape; the names must still be refused."""
    from safetensors.torch import load_file, save_file

    _hub_layout("qwen2-moe-shared", tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    for k in [k for k in state if k.startswith("model.layers.0.mlp.experts.1.")]:
        state[k.replace("experts.1.", "experts.7.")] = state.pop(k)
    save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InputError, match=r"lacks tensor 'model.layers.0.mlp.experts.1.down_proj.weight'"):
        build_model(tmp_path)


def test_fp32_router_bias_stays_fp32_through_quantize_and_reload(tiny_model, tmp_path):
    model = build_model(tiny_model("deepseek-v3-mla-qlora"))
    bias = {n: b for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")}
    assert bias and all(b.dtype == torch.float32 for b in bias.values())  # as from_pretrained keeps it
    config = quantkit.QuantConfig(method="int8")
    report = quantkit.quantize(model, config, progress=False)
    save_quantized(model, tmp_path / "q", config, report=report)
    reloaded = dict(quantkit.load_quantized(tmp_path / "q").named_buffers())
    for n, b in bias.items():
        assert reloaded[n].dtype == torch.float32 and torch.equal(reloaded[n], b)


def test_qwen3_moe_estimate_counts_experts_from_either_config_spelling():
    from quantkit.spec import ModelSpec
    from tests.conftest import tiny_config
    from transformers import Qwen3MoeConfig

    cfg = {**tiny_config("qwen2-moe-shared"), "model_type": "qwen3_moe"}
    hub = ModelSpec.from_hf_config(cfg)  # config.json spelling: num_experts
    as_dict = Qwen3MoeConfig(**{k: v for k, v in cfg.items() if k != "model_type"}).to_dict()
    assert "num_experts" not in as_dict or as_dict["num_experts"] is None  # transformers 5 renames it
    assert hub.num_experts == ModelSpec.from_hf_config(as_dict).num_experts == 4


def test_hub_layout_moe_as_legacy_bin_loads_exactly(tmp_path):
    """pytorch_model.bin names are known only once loaded (weights_only); then the same rule."""
    from safetensors.torch import load_file

    original = _hub_layout("mixtral-moe", tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save(state, tmp_path / "pytorch_model.bin")
    assert torch.equal(_logits(build_model(tmp_path)), _logits(original))
