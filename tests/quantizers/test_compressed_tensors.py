"""quantkit int8 folders load in transformers through compressed-tensors, and compressed-tensors'
own decompressor gives back quantkit's int8 values and scales (needs compressed-tensors)."""

import json

import pytest
import torch

import quantkit
from quantkit.modelbuild import build_model
from quantkit.quantizers.checkpoint import save_quantized
from quantkit.quantizers.experts import Int8Experts
from quantkit.quantizers.int8 import Int8Linear

ct = pytest.importorskip("compressed_tensors")

IDS = torch.tensor([[1, 5, 9, 200, 17, 3, 44, 101, 7, 8, 250, 2], [1, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70]])


def _quantize_save(src, group_size, out):
    model = build_model(src)
    config = quantkit.QuantConfig(method="int8", group_size=group_size)
    quantkit.quantize(model, config, progress=False)
    save_quantized(model, out, config, source_dir=src)
    return model


def _from_pretrained(out):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        return AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16, output_loading_info=True)
    finally:
        logging.set_verbosity(verbosity)


def _check_loads_and_agrees(src, group_size, out):
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors.torch import load_file

    model = _quantize_save(src, group_size, out)
    hf, info = _from_pretrained(out)
    assert {k: v for k, v in info.items() if v} == {}  # no missing / unexpected / mismatched keys
    ours = quantkit.load_quantized(out)
    with torch.no_grad():
        a, b = hf(IDS).logits.float(), ours(IDS).logits.float()
    # both compute in bf16 with the same dequantized weights: at most bf16 rounding apart
    torch.testing.assert_close(a, b, rtol=1.6e-2, atol=1.6e-2)

    # compressed-tensors' own pack-quantized decompressor on the stored tensors -> q * scale
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    scheme = QuantizationScheme.model_validate(qc["config_groups"]["group_0"])
    compressor = BaseCompressor.get_value_from_registry(qc["format"])
    stored = load_file(str(out / "model.safetensors"))
    checked = 0
    for name, mod in model.named_modules():
        if not isinstance(mod, Int8Linear):
            continue
        local = {k: stored[f"{name}.{k}"] for k in ("weight_packed", "weight_scale", "weight_shape")}
        # compressed-tensors' unpacking gives quantkit's int8 values, bit for bit, and the scales
        q = unpack_from_int32(local["weight_packed"], 8, torch.Size(local["weight_shape"].tolist()))
        assert torch.equal(q, mod.weight) and torch.equal(local["weight_scale"], mod.weight_scale)
        # its decompressor's weight is q * scale rounded to the bf16 scale dtype: one bf16 rounding
        dense = compressor.decompress(local, scheme)["weight"]
        torch.testing.assert_close(dense.float(), mod.dequantize(torch.float32), rtol=2 ** -8, atol=0)
        checked += 1
    assert checked == len(qc["quantkit"]["quantized_modules"])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("group_size", [None, 32], ids=["per-channel", "g32"])
def test_tiny_models_load_in_transformers(arch, group_size, tiny_model, tmp_path):
    _check_loads_and_agrees(tiny_model(arch), group_size, tmp_path / "q")


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("group_size", [None, 64], ids=["per-channel", "g64"])
def test_ref_docs_loads_in_transformers(group_size, ref_docs_dir, tmp_path):
    _check_loads_and_agrees(ref_docs_dir, group_size, tmp_path / "q")  # 704 = 11 x 64: g128 is refused


@pytest.mark.slow
@pytest.mark.parametrize("group_size", [None, 16], ids=["per-channel", "g16"])
def test_mixtral_int8_round_trips_through_transformers(group_size, tiny_model, tmp_path):
    """Mixtral's experts are written per expert under its Hub names (w1/w3/w2), which
    transformers' compressed-tensors integration dequantizes and stacks into its fused experts."""
    src = tiny_model("mixtral-moe")
    out = tmp_path / "q"
    model = _quantize_save(src, group_size, out)
    assert any(isinstance(m, Int8Experts) for m in model.modules())
    names = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"] \
        if (out / "model.safetensors.index.json").exists() else None
    from quantkit.modelio import check_safetensors_file

    header = names or check_safetensors_file(out / "model.safetensors")
    assert "model.layers.0.block_sparse_moe.experts.3.w3.weight_packed" in header
    assert not any(k.endswith("experts.gate_up_proj") for k in header)
    hf, info = _from_pretrained(out)
    assert {k: v for k, v in info.items() if v} == {}
    with torch.no_grad():
        a, b = hf(IDS).logits.float(), model(IDS).logits.float()
        c = quantkit.load_quantized(out)(IDS).logits.float()
    assert torch.equal(b, c)  # quantkit's own reload: bit for bit
    torch.testing.assert_close(a, b, rtol=1.6e-2, atol=1.6e-2)  # transformers: bf16 dequantized experts
