"""quantkit's int8 folder = llm-compressor's W8A16 folder, tensor for tensor, and quantkit reads
llm-compressor's folders (load_quantized, estimate). Needs llmcompressor (it pins an older
transformers and compressed-tensors, so it runs in an environment of its own; see README)."""

import json

import pytest
import torch

import quantkit
from quantkit.calculators.estimate import estimate
from quantkit.modelbuild import build_model
from quantkit.modelio import check_safetensors_file
from quantkit.quantizers.checkpoint import save_quantized
from quantkit.quantizers.packing import unpack_int32
from quantkit.spec import ModelSpec

pytest.importorskip("llmcompressor")

IDS = torch.tensor([[1, 5, 9, 200, 17, 3, 44, 101, 7, 8, 250, 2]])


def _llmc(src, out, bits, group_size):
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM

    w = {"num_bits": bits, "type": "int", "symmetric": True, "dynamic": False}
    w.update({"strategy": "channel"} if group_size is None else {"strategy": "group", "group_size": group_size})
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.bfloat16)
    oneshot(model=model, recipe=[QuantizationModifier(
        config_groups={"group_0": {"targets": ["Linear"], "weights": w}}, ignore=["lm_head"])])
    model.save_pretrained(str(out), save_compressed=True)
    return out


def _header(folder):
    return {k: (v["dtype"], v["shape"]) for k, v in check_safetensors_file(folder / "model.safetensors").items()}


@pytest.mark.slow
@pytest.mark.parametrize("group_size", [None, 32], ids=["per-channel", "g32"])
def test_same_layout_as_llm_compressor_w8a16(group_size, tiny_model, tmp_path):
    src = tiny_model("llama")
    theirs = _llmc(src, tmp_path / "llmc", 8, group_size)
    model = build_model(src)
    config = quantkit.QuantConfig(method="int8", group_size=group_size)
    quantkit.quantize(model, config, progress=False)
    ours = save_quantized(model, tmp_path / "ours", config)
    assert _header(ours) == _header(theirs)  # names, dtypes, shapes
    qa = json.loads((ours / "config.json").read_text())["quantization_config"]
    qb = json.loads((theirs / "config.json").read_text())["quantization_config"]
    qa.pop("quantkit")
    assert {k for k in qa.keys() | qb.keys() if qa.get(k) != qb.get(k)} <= {"version"}
    # values: absmax/127 (quantkit) vs compressed-tensors' absmax/127.5: some differ, by 1 at most
    from safetensors.torch import load_file

    a, b = load_file(str(ours / "model.safetensors")), load_file(str(theirs / "model.safetensors"))
    n = differ = 0
    for k in a:
        if k.endswith(".weight_packed"):
            in_f = int(a[k.replace("_packed", "_shape")][1])
            x, y = unpack_int32(a[k], in_f), unpack_int32(b[k], in_f)
            assert int((x.int() - y.int()).abs().max()) <= 1
            n, differ = n + x.numel(), differ + int((x != y).sum())
    assert 0 < differ / n < 0.5


@pytest.mark.slow
@pytest.mark.parametrize("bits", [8, 4])
def test_reads_llm_compressor_folders(bits, tiny_model, tmp_path):
    src = tiny_model("llama")
    theirs = _llmc(src, tmp_path / "llmc", bits, 32)
    cfg = json.loads((theirs / "config.json").read_text())
    e = estimate(ModelSpec.from_hf_config(cfg))
    disk = sum(end - begin for _, _, (begin, end) in (
        (k, v, v["data_offsets"]) for k, v in check_safetensors_file(theirs / "model.safetensors").items()))
    assert (e.dtype, e.group_size) == (f"int{bits}", 32) and e.weights_bytes == disk
    ref = build_model(src)
    with torch.no_grad():
        a = quantkit.load_quantized(theirs)(IDS).logits.float()
        r = ref(IDS).logits.float()
    rel = float((a - r).norm() / r.norm())
    assert rel < (0.03 if bits == 8 else 0.3), rel
