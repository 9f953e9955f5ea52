"""The --compare list and ``run_eval``: on-the-fly quantization equals a saved checkpoint."""

from __future__ import annotations

import pytest

from quantkit.errors import InputError, UnknownNameError
from quantkit.evaluator.compare import run_eval
from quantkit.evaluator.options import EvalOptions
from quantkit.evaluator.variants import VariantSpec, base_name, parse_compare


def test_parse_compare(tmp_path):
    specs = parse_compare(f"fp16, int8-g128,llm.int8,{tmp_path}")
    assert specs == [
        VariantSpec("fp16", "float", dtype="fp16"),
        VariantSpec("int8-g128", "quantize", method="int8", group_size=128),
        VariantSpec("llm.int8", "quantize", method="llm.int8"),
        VariantSpec(str(tmp_path), "checkpoint", path=tmp_path),
    ]
    assert base_name(specs) == "fp16" and base_name(parse_compare("int8")) is None
    with pytest.raises(UnknownNameError, match="unknown --compare entry 'int4'"):
        parse_compare("bf16,int4")
    with pytest.raises(InputError, match="group size must be positive"):
        parse_compare("int8-g0")
    with pytest.raises(InputError, match="comma-separated"):
        parse_compare("bf16,,int8")


@pytest.mark.parametrize("kw, msg", [
    ({}, "nothing to measure"), ({"ppl": "x", "ctx": 1}, "--ctx must be an integer >= 2"),
    ({"speed": True, "batches": ()}, "at least one batch size"),
    ({"speed": True, "new_tokens": 1}, "--new-tokens must be an integer >= 2"),
    ({"ppl": "x", "device": "tpu"}, "--device must be one of"),
    ({"ppl": "x", "device_map": "auto", "device": "cpu"}, "needs --device cuda"),
    ({"speed": True, "graphs": "turbo"}, "--graphs must be one of"),
])
def test_options_are_validated(kw, msg):
    with pytest.raises(InputError, match=msg):
        EvalOptions(**kw).validate()


@pytest.mark.shared
def test_saved_checkpoint_equals_on_the_fly_int8(stories_dir, shared_dir, tmp_path):
    import torch

    import quantkit
    from quantkit.modelbuild import build_model
    from quantkit.quantizers.checkpoint import save_quantized

    config = quantkit.QuantConfig(method="int8")
    model = build_model(stories_dir, torch.bfloat16)  # what `quantkit quantize` does
    quantkit.quantize(model, config, progress=False)
    ckpt = save_quantized(model, tmp_path / "int8", config, source_dir=stories_dir)
    text = shared_dir / "data" / "tinystories-valid-head.txt"
    opts = EvalOptions(compare=f"bf16,int8,{ckpt}", ppl=str(text), ctx=128, max_tokens=512,
                       device="cpu", progress=False)
    report = run_eval(str(stories_dir), opts)
    bf16, fly, saved = report["results"]
    assert saved["variant"] == str(ckpt) and "checkpoint" in saved["description"]
    assert saved["perplexity"] == fly["perplexity"]  # identical int8 tensors
    assert saved["kl_vs_base"] == fly["kl_vs_base"] > 0
    assert saved["weights_bytes"] == fly["weights_bytes"] < bf16["weights_bytes"]
    assert report["protocol"]["tokens"] == 512 and report["protocol"]["bos"] is True
