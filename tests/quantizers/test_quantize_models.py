"""quantize -> save -> load_quantized on tiny random Llama, Mistral and Qwen2 models."""

import json

import pytest
import torch
from torch import nn

import quantkit
from safetensors.torch import load_file

from quantkit.errors import ConfigError, FormatError
from quantkit.modelio import check_safetensors_file, weight_files
from quantkit.modelbuild import build_model
from quantkit.quantizers.checkpoint import save_quantized
from quantkit.quantizers.int8 import Int8Linear
from quantkit.selection import is_skipped

ARCHS = ["llama", "mistral", "qwen2"]
IDS = torch.tensor([[1, 5, 9, 200, 17, 3, 44, 101, 7, 8, 250, 2], [1, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70]])


def _disk_tensor_bytes(folder) -> int:
    _, files, _ = weight_files(folder)
    total = 0
    for f in files:
        for info in check_safetensors_file(f).values():
            begin, end = info["data_offsets"]
            total += end - begin
    return total


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("options", [{}, {"group_size": 32}], ids=["per-channel", "g32"])
def test_quantize_save_reload(arch, options, tiny_model, tmp_path):
    src = tiny_model(arch)
    model = build_model(src)
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    ref = _logits(model)
    config = quantkit.QuantConfig(method="int8", **options)
    report = quantkit.quantize(model, config, progress=False)

    # Every nn.Linear but the skipped ones is replaced, and nothing else is touched.
    skipped = {n for n in linears if is_skipped(n, config.skip)}
    assert skipped == {"lm_head"}
    for name in linears - skipped:
        mod = model.get_submodule(name)
        assert isinstance(mod, Int8Linear) and mod.group_size == config.group_size
    assert all(type(model.get_submodule(n)) is nn.Linear for n in skipped)
    assert sorted(r.name for r in report.layers) == sorted(linears - skipped)
    assert report.skipped == ["lm_head"]
    assert all(r.rel_error < 0.012 for r in report.layers)  # ~0.5-0.9% for these Gaussian inits

    q = _logits(model)
    rel = float((q.float() - ref.float()).norm() / ref.float().norm())
    assert rel < 0.03, rel

    out = tmp_path / "q"
    save_quantized(model, out, config, report=report, source_dir=src)
    reloaded = quantkit.load_quantized(out)
    assert torch.equal(_logits(reloaded), q)  # bit for bit
    assert {n for n, m in reloaded.named_modules() if isinstance(m, Int8Linear)} == linears - skipped

    # Bytes on disk = the report's = the estimator's (quantkit estimate's quantized view).
    disk = _disk_tensor_bytes(out)
    assert disk == report.bytes_after == report.estimated_bytes
    assert report.bytes_after < report.bytes_before
    saved = json.loads((out / "quant_report.json").read_text())
    assert saved["totals"]["bytes_after"] == disk and saved["totals"]["estimated_bytes"] == disk


def test_tied_lm_head_quantized_is_untied(tiny_model, tmp_path):
    """Qwen2's tiny config ties lm_head to the embeddings; quantizing lm_head unties them."""
    src = tiny_model("qwen2")
    model = build_model(src)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    config = quantkit.QuantConfig(method="int8", skip=[])
    report = quantkit.quantize(model, config, progress=False)
    assert isinstance(model.lm_head, Int8Linear) and report.skipped == []
    assert model.config.tie_word_embeddings is False
    q = _logits(model)
    save_quantized(model, tmp_path / "q", config)
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    assert torch.equal(_logits(quantkit.load_quantized(tmp_path / "q")), q)
    assert _disk_tensor_bytes(tmp_path / "q") == report.bytes_after == report.estimated_bytes


def test_skip_patterns_and_sharding(tiny_model, tmp_path):
    src = tiny_model("llama")
    model = build_model(src)
    config = quantkit.QuantConfig(method="int8", skip=["lm_head", "*.mlp.*"], scale_dtype="fp32")
    report = quantkit.quantize(model, config, progress=False)
    assert all(".mlp." not in r.name for r in report.layers)
    assert sorted(report.skipped) == sorted(["lm_head"] + [f"model.layers.{i}.mlp.{p}"
                                                          for i in range(3) for p in ("gate_proj", "up_proj", "down_proj")])
    assert model.model.layers[0].self_attn.q_proj.weight_scale.dtype == torch.float32
    q = _logits(model)
    out = tmp_path / "sharded"
    save_quantized(model, out, config, max_shard_bytes=20_000)
    kind, files, weight_map = weight_files(out)
    assert len(files) > 2 and weight_map is not None
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == report.bytes_after == _disk_tensor_bytes(out)
    assert torch.equal(_logits(quantkit.load_quantized(out)), q)
    assert report.estimated_bytes == report.bytes_after
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert sorted(qc["ignore"]) == sorted(report.skipped) == sorted(qc["quantkit"]["skipped_modules"])


def test_checkpoint_layout_is_compressed_tensors_pack_quantized(tiny_model, tmp_path):
    src = tiny_model("llama")
    model = build_model(src)
    config = quantkit.QuantConfig(method="int8", group_size=32)
    quantkit.quantize(model, config, progress=False)
    q = model.model.layers[0].mlp.down_proj.weight.clone()
    save_quantized(model, tmp_path / "q", config)
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "pack-quantized"
    group = qc["config_groups"]["group_0"]
    assert group["format"] == "pack-quantized" and group["targets"] == ["Linear"] and qc["ignore"] == ["lm_head"]
    w = group["weights"]
    assert (w["num_bits"], w["type"], w["symmetric"], w["strategy"], w["group_size"]) == (8, "int", True, "group", 32)
    block = qc["quantkit"]
    assert (block["version"], block["method"], block["bits"], block["granularity"], block["scale_dtype"]) == \
        (2, "int8", 8, "group", "bf16")
    header = check_safetensors_file(tmp_path / "q" / "model.safetensors")
    p = "model.layers.0.mlp.down_proj"  # (64, 160): 40 int32 words per row, 160 / 32 = 5 groups
    assert (header[f"{p}.weight_packed"]["dtype"], header[f"{p}.weight_packed"]["shape"]) == ("I32", [64, 40])
    assert (header[f"{p}.weight_scale"]["dtype"], header[f"{p}.weight_scale"]["shape"]) == ("BF16", [64, 5])
    assert (header[f"{p}.weight_shape"]["dtype"], header[f"{p}.weight_shape"]["shape"]) == ("I64", [2])
    assert f"{p}.weight" not in header and header["lm_head.weight"]["dtype"] == "BF16"
    assert not any(k.endswith("zero_point") for k in header)  # symmetric: no zero points
    stored = load_file(str(tmp_path / "q" / "model.safetensors"))
    assert stored[f"{p}.weight_shape"].tolist() == [64, 160]
    # word k of a row holds values 4k..4k+3 as q + 128, the first in the low byte
    word = int(stored[f"{p}.weight_packed"][3, 5]) & 0xFFFFFFFF
    assert [((word >> (8 * i)) & 0xFF) - 128 for i in range(4)] == q[3, 20:24].tolist()


def test_group_size_the_format_cannot_store_is_refused_at_save(tiny_model, tmp_path):
    """Group-wise scales with a last, shorter group work in memory (eval's int8-g<N>), but
    compressed-tensors needs group_size | in_features: saving names the valid sizes."""
    model = build_model(tiny_model("llama"))
    config = quantkit.QuantConfig(method="int8", group_size=48)
    quantkit.quantize(model, config, progress=False)
    with pytest.raises(FormatError, match=r"^group size 48 does not divide in_features 64 of "
                                          r"'model.layers.0.self_attn.q_proj' \(21 layers\), which the "
                                          r"compressed-tensors format cannot store; valid group sizes for this "
                                          r"model: 1, 2, 4, 8, 16, 32, or per channel \(no --group-size\)$"):
        save_quantized(model, tmp_path / "q", config)
    assert not (tmp_path / "q").exists()


def test_nothing_to_quantize_is_an_error(tiny_model):
    model = build_model(tiny_model("llama"))
    with pytest.raises(ConfigError, match=r"nothing to quantize: the skip patterns \['\*'\] match all 22"):
        quantkit.quantize(model, quantkit.QuantConfig(skip=["*"]), progress=False)


@pytest.mark.gpu
def test_cuda_quantization_matches_cpu(tiny_model, tmp_path):
    """Quantizing on the GPU stores the same int8 weights and scales as on the CPU (absmax,
    division by 127 and round-half-even are exact/correctly rounded on both)."""
    src = tiny_model("llama")
    cpu, gpu = build_model(src), build_model(src, device="cuda")
    config = quantkit.QuantConfig(method="int8", group_size=32)
    quantkit.quantize(cpu, config, progress=False)
    quantkit.quantize(gpu, config, progress=False)
    for name, mod in cpu.named_modules():
        if isinstance(mod, Int8Linear):
            other = gpu.get_submodule(name)
            assert torch.equal(mod.weight, other.weight.cpu()) and torch.equal(mod.weight_scale, other.weight_scale.cpu())
    save_quantized(gpu, tmp_path / "q", config)
    reloaded = quantkit.load_quantized(tmp_path / "q", device="cuda")
    with torch.no_grad():
        assert torch.equal(reloaded(IDS.cuda()).logits, gpu(IDS.cuda()).logits)


def test_quantizing_twice_is_refused(tiny_model):
    model = build_model(tiny_model("llama"))
    quantkit.quantize(model, progress=False)
    with pytest.raises(ConfigError, match=r"^'model.layers.0.self_attn.q_proj' is already quantized \(Int8Linear\)$"):
        quantkit.quantize(model, progress=False)


def test_skip_pattern_matching_nothing_is_an_error(tiny_model):
    model = build_model(tiny_model("llama"))
    with pytest.raises(ConfigError, match=r"^skip pattern 'lm_haed' \(did you mean 'lm_head'\?\) matches no "
                                          r"nn.Linear module of the model; a pattern is a full module name "
                                          r"\('model.layers.0.self_attn.q_proj'\), its last part \('q_proj', .*"):
        quantkit.quantize(model, quantkit.QuantConfig(skip=["lm_haed"]), progress=False)
    with pytest.raises(ConfigError, match=r"^skip patterns 'model.layers.9.\*', 'o_prj' \(did you mean 'o_proj'\?\) "
                                          r"match no nn.Linear"):
        quantkit.quantize(model, quantkit.QuantConfig(skip=["lm_head", "model.layers.9.*", "o_prj"]),
                          progress=False)
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))  # nothing swapped


def test_default_skip_never_errors():
    """The default ("lm_head") is not checked: a model whose output layer has another name (or a
    plain module tree) quantizes every Linear, as before."""
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8)).to(torch.bfloat16)
    report = quantkit.quantize(model, quantkit.QuantConfig(), progress=False)
    assert len(report.layers) == 2 and report.skipped == []


def test_tied_lm_head_is_a_linear_that_lm_head_matches(stories_dir):
    """stories260K ties lm_head to the embeddings: transformers still builds lm_head as an nn.Linear
    (sharing the embedding matrix), so the default and an explicit lm_head pattern both match it."""
    for skip in (None, ["lm_head", "*.down_proj"]):
        model = build_model(stories_dir)
        assert type(model.lm_head) is nn.Linear
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        config = quantkit.QuantConfig() if skip is None else quantkit.QuantConfig(skip=skip)
        report = quantkit.quantize(model, config, progress=False)
        assert "lm_head" in report.skipped and type(model.lm_head) is nn.Linear
