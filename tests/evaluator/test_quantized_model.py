"""`quantkit eval` takes what `quantkit quantize` writes: a quantized folder as MODEL (compared with
the base model it records), llm.int8 checkpoints in --compare, and --ctx from the model's maximum."""

from __future__ import annotations

import json

import pytest

from quantkit.errors import InputError
from quantkit.evaluator.compare import run_eval
from quantkit.evaluator.options import EvalOptions
from tests.cli.helpers import assert_one_line_error, run_quantkit

pytestmark = pytest.mark.shared


def _quantize(src, out, *args):
    proc = run_quantkit("quantize", str(src), "--out", str(out), *args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def _opts(text, **kw):
    return EvalOptions(**{"ppl": str(text), "max_tokens": 1024, "device": "cpu", "progress": False, **kw})


def test_quantized_folder_as_model_is_compared_with_its_base(ref_docs_dir, ref_docs_valid, tmp_path):
    out = _quantize(ref_docs_dir, tmp_path / "nested" / "int8")  # parents created, as save_pretrained
    block = json.loads((out / "config.json").read_text())["quantization_config"]["quantkit"]
    assert block["source"] == str(ref_docs_dir.resolve())
    report = run_eval(str(out), _opts(ref_docs_valid, ctx=512))
    names = [r["variant"] for r in report["results"]]
    assert names == ["bf16", str(out)] and report["base"] == "bf16"
    direct = run_eval(str(ref_docs_dir), _opts(ref_docs_valid, ctx=512, compare=f"bf16,{out}"))
    assert [r["perplexity"] for r in report["results"]] == [r["perplexity"] for r in direct["results"]]
    assert report["results"][1]["kl_vs_base"] == direct["results"][1]["kl_vs_base"] > 0

    # explicit --compare: float and on-the-fly entries come from the base; MODEL is added last
    both = run_eval(str(out), _opts(ref_docs_valid, ctx=512, compare="bf16,int8"))
    assert [r["variant"] for r in both["results"]] == ["bf16", "int8", str(out)]
    # the checkpoint's int8 equals the on-the-fly int8 of the same base
    assert both["results"][1]["perplexity"] == both["results"][2]["perplexity"]


def test_quantized_folder_without_its_base_is_evaluated_alone(ref_docs_dir, ref_docs_valid, tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(ref_docs_dir, base)
    out = _quantize(base, tmp_path / "int8")
    shutil.rmtree(base)
    report = run_eval(str(out), _opts(ref_docs_valid, ctx=512))
    assert [r["variant"] for r in report["results"]] == [str(out)] and report["base"] is None
    assert report["results"][0]["perplexity"] > 1 and report["results"][0]["kl_vs_base"] is None
    assert any("is evaluated alone" in n and str(base) in n for n in report["notes"])
    with pytest.raises(InputError, match=r"quantized checkpoint and its base model is not at .*; "
                                         r"--compare bf16 needs float weights"):
        run_eval(str(out), _opts(ref_docs_valid, compare="bf16"))


def test_llm_int8_checkpoint_in_compare(ref_docs_dir, ref_docs_valid, tmp_path):
    pytest.importorskip("bitsandbytes")
    out = _quantize(ref_docs_dir, tmp_path / "m-llmint8", "--method", "llm.int8")
    report = run_eval(str(ref_docs_dir), _opts(ref_docs_valid, ctx=512, compare=f"bf16,llm.int8,{out}"))
    fly, saved = report["results"][1:]
    assert "llm.int8" in saved["description"]
    assert saved["perplexity"] == pytest.approx(fly["perplexity"], rel=1e-6)
    assert 0 < saved["kl_vs_base"] < 2e-3 and saved["top1_agreement"] > 0.97


def test_ctx_defaults_to_the_models_maximum(stories_dir, shared_dir):
    text = shared_dir / "data" / "tinystories-valid-head.txt"
    max_pos = json.loads((stories_dir / "config.json").read_text())["max_position_embeddings"]
    assert max_pos < 2048
    report = run_eval(str(stories_dir), _opts(text, compare="fp32"))
    assert report["protocol"]["ctx"] == max_pos
    # an explicit --ctx beyond it is still refused, with the limit named
    proc = run_quantkit("eval", str(stories_dir), "--ppl", str(text), "--ctx", "4096", "--device", "cpu")
    assert_one_line_error(proc, rf"--ctx 4096 exceeds the model's max_position_embeddings \({max_pos}\)")
    proc = run_quantkit("eval", str(stories_dir), "--ppl", str(text), "--stride", "4000", "--device", "cpu")
    assert_one_line_error(proc, rf"--stride \(4000\) must not exceed the window, {max_pos} tokens")
