"""Loading the runner: quantkit int8 checkpoints, bad checkpoints, random weights, dispatch."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from quantkit.errors import ConfigError, InputError
from quantkit.evaluator.loader import dispatch_auto, load_runner, random_runner


def save_int8_checkpoint(src, out, **options):
    """Quantize a transformers model with quantkit and save it (what `quantkit quantize` does)."""
    import quantkit
    from quantkit.modelbuild import build_model
    from quantkit.quantizers.checkpoint import save_quantized

    config = quantkit.QuantConfig(method="int8", **options)
    model = build_model(src, torch.bfloat16)
    quantkit.quantize(model, config, progress=False)
    save_quantized(model, out, config, source_dir=src)
    return out


@pytest.mark.parametrize("arch, options", [("qwen2", {}), ("llama", {"group_size": 32})])
def test_int8_checkpoint_equals_quantizing_the_runner(tiny_model, tmp_path, arch, options):
    import quantkit
    from quantkit.quantizers.int8 import Int8Linear

    src = tiny_model(arch, seed=5)
    ckpt = save_int8_checkpoint(src, tmp_path / "q", **options)
    loaded = load_runner(ckpt)
    assert loaded.quantization["quantkit"]["method"] == "int8"
    r = loaded.runner
    assert isinstance(r.model.layers[0].self_attn.q_proj, Int8Linear)
    assert type(r.lm_head) is torch.nn.Linear  # skipped by default
    if arch == "qwen2":  # quantized layers keep their q/k/v biases
        assert r.model.layers[0].self_attn.k_proj.bias is not None
    fly = load_runner(src).runner
    quantkit.quantize(fly, quantkit.QuantConfig(method="int8", **options), progress=False)
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = r.float()(ids), fly.float()(ids)
    assert torch.equal(a, b)  # same tensors, same ops


def test_quantized_checkpoint_with_a_missing_tensor(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = save_int8_checkpoint(tiny_model("llama"), tmp_path / "q")
    state = load_file(str(ckpt / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight_scale"]
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(InputError, match="model.layers.1.mlp.up_proj.weight_scale"):
        load_runner(ckpt)


def test_quantized_module_that_the_runner_lacks(tiny_model, tmp_path):
    ckpt = save_int8_checkpoint(tiny_model("llama"), tmp_path / "q")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["quantization_config"]["quantkit"]["quantized_modules"].append("model.layers.9.mlp.up_proj")
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="'model.layers.9.mlp.up_proj' does not exist"):
        load_runner(ckpt)


def test_float_checkpoint_errors(tiny_model):
    from safetensors.torch import load_file, save_file

    folder = tiny_model("llama")
    state = load_file(str(folder / "model.safetensors"))
    state["model.layers.0.self_attn.q_proj.weight"] = state["model.layers.0.self_attn.q_proj.weight"][:8]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(InputError, match=r"q_proj.weight' .* has shape \(8, 64\)"):
        load_runner(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError):
        load_runner(folder)


def test_old_checkpoints_with_rotary_inv_freq_load(tiny_model):
    from safetensors.torch import load_file, save_file

    folder = tiny_model("llama")
    state = load_file(str(folder / "model.safetensors"))
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
    save_file(state, str(folder / "model.safetensors"))
    assert load_runner(folder).runner.args.spec.num_layers == 3


def test_random_runner_is_seeded_and_nonzero():
    from tests.conftest import tiny_config

    cfg = tiny_config("qwen2")
    a = random_runner(cfg, torch.float32, seed=1).runner
    b = random_runner(cfg, torch.float32, seed=1).runner
    w = a.model.layers[0].mlp.down_proj.weight
    assert w.abs().min() >= 0 and w.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(w, b.model.layers[0].mlp.down_proj.weight)
    assert torch.all(a.model.norm.weight == 1) and torch.all(a.model.layers[0].self_attn.q_proj.bias == 0)
    assert a.lm_head.weight is a.model.embed_tokens.weight  # qwen2 tiny config ties
    with torch.no_grad():
        assert torch.isfinite(a(torch.zeros((1, 4), dtype=torch.long))).all()


def test_dispatch_with_a_device_map_keeps_the_logits(tiny_model):
    runner = load_runner(tiny_model("llama")).runner.float()
    ids = torch.randint(0, 320, (1, 20))
    with torch.no_grad():
        ref = runner(ids)
    # Every top-level block on its own (CPU) entry: accelerate's hooks run, the values must not move.
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                  "model.layers.2": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    split = dispatch_auto(copy.deepcopy(runner), device_map=device_map)
    with torch.no_grad():
        assert torch.equal(split(ids), ref)


def test_dispatch_auto_needs_cuda(tiny_model):
    if torch.cuda.is_available():
        pytest.skip("checks the message shown without CUDA")
    runner = load_runner(tiny_model("llama")).runner
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        dispatch_auto(runner)
