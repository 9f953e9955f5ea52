"""``quantkit eval --backend transformers``: perplexity of any causal LM (MoE included).

The backend is checked against the runner on ref-docs (the same windows through two model
implementations must give the same numbers) and run on a tiny random Mixtral, whose experts the
runner does not cover.
"""

import json
import random

import pytest

from quantkit.errors import ConfigError, InputError
from quantkit.evaluator.compare import run_eval
from quantkit.evaluator.options import EvalOptions
from tests.cli.helpers import assert_one_line_error, run_quantkit

WORDS = [f"w{i}" for i in range(200)]


def _with_tokenizer(folder, n_words=3000, seed=0):
    """A word-level tokenizer.json over WORDS (ids < the tiny models' vocab) and a text file."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    rng = random.Random(seed)
    text = folder.parent / f"{folder.name}-text.txt"
    text.write_text(" ".join(rng.choice(WORDS) for _ in range(n_words)))
    return text


def test_transformers_backend_equals_the_runner_on_ref_docs(ref_docs_dir, ref_docs_valid):
    common = dict(compare="bf16,int8", ppl=str(ref_docs_valid), ctx=256, max_tokens=2048,
                  device="cpu", progress=False)
    runner = run_eval(str(ref_docs_dir), EvalOptions(**common))
    hf = run_eval(str(ref_docs_dir), EvalOptions(backend="transformers", **common))
    assert (runner["backend"], hf["backend"]) == ("runner", "transformers")
    assert hf["protocol"]["predictions"] == runner["protocol"]["predictions"] > 1900
    for a, b in zip(runner["results"], hf["results"]):
        assert a["variant"] == b["variant"] and a["tokens"] == b["tokens"]
        assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-4)
        assert a["weights_bytes"] == b["weights_bytes"]
    assert hf["results"][1]["kl_vs_base"] == pytest.approx(runner["results"][1]["kl_vs_base"], rel=0.05)


def test_moe_perplexity_through_transformers(tiny_model, tmp_path):
    import quantkit
    from quantkit.modelbuild import build_model
    from quantkit.quantizers.checkpoint import save_quantized

    src = tiny_model("mixtral-moe")
    text = _with_tokenizer(src)
    config = quantkit.QuantConfig(method="int8")
    model = build_model(src)
    quantkit.quantize(model, config, progress=False)
    ckpt = save_quantized(model, tmp_path / "int8", config, source_dir=src)

    report = run_eval(str(src), EvalOptions(compare=f"bf16,int8,int8-g16,{ckpt}", ppl=str(text),
                                            ctx=256, device="cpu", progress=False))
    assert report["backend"] == "transformers"
    assert any("transformers' implementation of model_type 'mixtral'" in n for n in report["notes"])
    bf16, int8, g16, saved = report["results"]
    assert bf16["tokens"] == int8["tokens"] == report["protocol"]["predictions"] > 2900
    for r in (int8, g16, saved):
        assert abs(r["perplexity"] / bf16["perplexity"] - 1) < 0.005
        assert 0 < r["kl_vs_base"] < 1e-3 and r["top1_agreement"] > 0.95
        assert r["weights_bytes"] < 0.65 * bf16["weights_bytes"]  # tiny dims: scales weigh more
    assert saved["perplexity"] == int8["perplexity"]  # the same int8 tensors, saved and reloaded


def test_speed_on_a_model_the_runner_does_not_cover_is_refused(tiny_model):
    src = tiny_model("mixtral-moe")
    text = _with_tokenizer(src)
    with pytest.raises(ConfigError, match=r"--speed needs quantkit's runner, and the eval runner supports "
                                          r"model_type .*; got 'mixtral'.*drop --speed"):
        run_eval(str(src), EvalOptions(compare="bf16", ppl=str(text), speed=True, device="cpu",
                                       progress=False))
    with pytest.raises(InputError, match=r"--backend transformers is for perplexity only"):
        EvalOptions(backend="transformers", speed=True).validate()
    with pytest.raises(ConfigError, match=r"the eval runner supports model_type"):
        run_eval(str(src), EvalOptions(compare="bf16", ppl=str(text), backend="runner", device="cpu",
                                       progress=False))


def test_cli_backend_transformers_json(tiny_model, tmp_path):
    src = tiny_model("qwen2-moe-shared")
    text = _with_tokenizer(src, n_words=1200)
    res = run_quantkit("eval", str(src), "--compare", "bf16,int8", "--ppl", str(text), "--ctx", "128",
                       "--device", "cpu", "--format", "json", "-q", "-o", str(tmp_path / "e.json"))
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report == json.loads((tmp_path / "e.json").read_text())
    assert report["backend"] == "transformers" and report["results"][1]["kl_vs_base"] > 0
    bad = run_quantkit("eval", str(src), "--backend", "nope", "--ppl", str(text))
    assert_one_line_error(bad, r"Error: Invalid value for '--backend': 'nope' is not one of 'auto', "
                               r"'runner', 'transformers'")


# --- found in review ---------------------------------------------------------------------------


def test_checkpoint_architecture_check_reads_transformers_configs(tiny_model, tmp_path):
    from quantkit.evaluator.hf import check_same_architecture

    src = tiny_model("qwen2-moe-shared")
    cfg = json.loads((src / "config.json").read_text())
    hub = tmp_path / "hub"  # a Hub-style config: no head_dim (derived), same model
    hub.mkdir()
    (hub / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "head_dim"}))
    check_same_architecture(hub, src)
    check_same_architecture(src, hub)
    flipped = tmp_path / "flipped"
    flipped.mkdir()
    (flipped / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": not cfg["tie_word_embeddings"]}))
    with pytest.raises(InputError, match=r"is not a variant of .*: its config.json has tie_word_embeddings"):
        check_same_architecture(src, flipped)


def test_qwen3_moe_hub_config_against_its_own_quantized_checkpoint(tiny_model, tmp_path):
    from quantkit.evaluator.hf import check_same_architecture

    import quantkit
    from quantkit.modelbuild import build_model
    from quantkit.quantizers.checkpoint import save_quantized

    src = tiny_model("qwen2-moe-shared", model_type="qwen3_moe")
    cfg = json.loads((src / "config.json").read_text())
    cfg["num_experts"] = cfg.pop("num_local_experts", cfg.get("num_experts"))  # the Hub spelling
    (src / "config.json").write_text(json.dumps(cfg))
    model = build_model(src)
    config = quantkit.QuantConfig(method="int8")
    quantkit.quantize(model, config, progress=False)
    check_same_architecture(src, save_quantized(model, tmp_path / "q", config))


def test_cast_keeps_quantized_tensors_and_fp32_router_bias(tiny_model):
    import torch

    import quantkit
    from quantkit.evaluator.hf import cast_activations
    from quantkit.modelbuild import build_model

    model = build_model(tiny_model("deepseek-v3-mla-qlora"), dtype=torch.float16)
    quantkit.quantize(model, quantkit.QuantConfig(method="int8", scale_dtype="fp32"), progress=False)
    cast_activations(model, torch.bfloat16)
    dtypes = {n: t.dtype for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    assert all(d == torch.float32 for n, d in dtypes.items() if n.endswith("e_score_correction_bias"))
    assert all(d == torch.float32 for n, d in dtypes.items() if n.endswith("_scale"))  # not rounded
    assert dtypes["model.norm.weight"] == torch.bfloat16
    assert dtypes["model.layers.0.self_attn.q_a_proj.weight"] == torch.int8


def test_llm_int8_on_moe_says_the_experts_stay_float(tiny_model):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (extra 'bnb')")
    src = tiny_model("mixtral-moe")
    text = _with_tokenizer(src, n_words=600)
    report = run_eval(str(src), EvalOptions(compare="bf16,llm.int8", ppl=str(text), ctx=128,
                                            device="cpu", progress=False))
    assert "; 3 MoE experts modules kept in bf16" in report["results"][1]["description"]


def test_auto_uses_the_runner_even_for_old_architecture_names(ref_docs_dir, ref_docs_valid, tmp_path):
    import shutil

    model = tmp_path / "old-name"
    shutil.copytree(ref_docs_dir, model)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "architectures": ["LLaMAForCausalLM"]}))
    report = run_eval(str(model), EvalOptions(compare="bf16", ppl=str(ref_docs_valid), ctx=128,
                                              max_tokens=256, device="cpu", progress=False))
    assert report["backend"] == "runner"
