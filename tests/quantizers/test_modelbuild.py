"""quantkit.modelbuild: checkpoints that transformers converts on load, beyond MoE experts."""

import json

import torch

import quantkit
from quantkit.modelbuild import build_model


def _tiny_gemma3_multimodal(folder):
    """Gemma3ForConditionalGeneration (text + SigLIP vision) saved by save_pretrained: the Hub
    layout (language_model.model.*), tied lm_head, which transformers 5 renames on load."""
    from transformers import AutoModelForCausalLM, Gemma3Config

    text = dict(model_type="gemma3_text", vocab_size=320, hidden_size=64, intermediate_size=160,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                sliding_window=32, max_position_embeddings=256)
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                  num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          image_token_index=300, boi_token_index=301, eoi_token_index=302)
    config.architectures = ["Gemma3ForConditionalGeneration"]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    model.save_pretrained(folder)
    return model


def test_gemma3_multimodal_hub_layout_loads_quantizes_and_reloads(tmp_path):
    from safetensors import safe_open

    from quantkit.quantizers.checkpoint import save_quantized

    original = _tiny_gemma3_multimodal(tmp_path / "src")
    with safe_open(str(tmp_path / "src" / "model.safetensors"), "pt") as fh:
        assert any(k.startswith("language_model.model.") for k in fh.keys())  # the Hub names
    ids = torch.tensor([[2, 5, 9, 20, 33, 7]])
    model = build_model(tmp_path / "src")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    config = quantkit.QuantConfig(method="int8")
    report = quantkit.quantize(model, config, progress=False)
    assert report.estimated_bytes is None  # the estimate counts the language model only
    out = save_quantized(model, tmp_path / "q", config, report=report)
    with torch.no_grad():
        assert torch.equal(quantkit.load_quantized(out)(ids).logits, model(ids).logits)
    assert json.loads((out / "config.json").read_text())["model_type"] == "gemma3"
