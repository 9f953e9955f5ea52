"""`quantkit quantize`: end to end, and bad input -> one-line error, exit 2, nothing left behind."""

import json

import pytest
from click.testing import CliRunner

from quantkit.cli import cli

from .helpers import assert_one_line_error, run_quantkit


def _invoke(*args):
    return CliRunner().invoke(cli, ["quantize", *map(str, args)])


def _assert_error(result, pattern):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    import re

    assert re.fullmatch(pattern, lines[0]), lines[0]


def _assert_nothing_written(parent, name="out"):
    assert not (parent / name).exists()
    assert not [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_help_lists_methods():
    result = _invoke("--help")
    assert result.exit_code == 0
    for text in ("--out", "--method", "int8, llm.int8", "--group-size", "--skip", "--recipe", "--force"):
        assert text in result.output


def test_end_to_end_subprocess(tiny_model, tmp_path):
    src = tiny_model("mistral")
    (src / "tokenizer.json").write_text("{}")
    proc = run_quantkit("quantize", str(src), "--out", str(tmp_path / "out"), "--group-size", "32")
    assert proc.returncode == 0, proc.stderr
    assert "model.layers.2.mlp.down_proj" in proc.stdout and "estimated bytes after" in proc.stdout
    assert "quantize int8" in proc.stderr  # the progress bar goes to stderr
    assert (tmp_path / "out" / "tokenizer.json").read_text() == "{}"
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["quantization_config"]["quantkit"]["group_size"] == 32
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_recipe_with_cli_override(tiny_model, tmp_path):
    src = tiny_model("llama")
    result = _invoke(src, "--out", tmp_path / "out", "--recipe", "int8-g128", "--group-size", "16",
                     "--skip", "lm_head", "--skip", "*.k_proj")
    assert result.exit_code == 0, result.output
    block = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]["quantkit"]
    assert block["group_size"] == 16
    assert sorted(block["skipped_modules"]) == ["lm_head"] + [f"model.layers.{i}.self_attn.k_proj" for i in range(3)]


def test_force_replaces(tiny_model, tmp_path):
    src = tiny_model("llama")
    out = tmp_path / "out"
    out.mkdir()
    result = _invoke(src, "--out", out)
    _assert_error(result, r"Error: '.*/out' exists; pass --force to replace it")
    assert list(out.iterdir()) == []
    result = _invoke(src, "--out", out, "--force")
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file()


def test_no_config_json(tmp_path):
    (tmp_path / "model").mkdir()
    result = _invoke(tmp_path / "model", "--out", tmp_path / "out")
    _assert_error(result, r"Error: no config.json in '.*/model': MODEL must be a Hugging Face model folder "
                          r"\(config.json \+ safetensors\) or a Hub id")
    _assert_nothing_written(tmp_path)


def test_non_causal_lm_config(tmp_path):
    (tmp_path / "bert").mkdir()
    bert = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 100}
    (tmp_path / "bert" / "config.json").write_text(json.dumps(bert))
    result = _invoke(tmp_path / "bert", "--out", tmp_path / "out")
    _assert_error(result, r"Error: config.json describes BertForMaskedLM \(model_type 'bert'\), not a causal "
                          r"language model: quantkit handles decoder LLMs that AutoModelForCausalLM builds")
    _assert_nothing_written(tmp_path)


def test_corrupted_safetensors(tiny_model, tmp_path):
    src = tiny_model("qwen2")
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    result = _invoke(src, "--out", tmp_path / "out")
    _assert_error(result, r"Error: model.safetensors is truncated: tensor '[\w.]+' needs bytes up to \d+, "
                          r"the file has \d+")
    _assert_nothing_written(tmp_path)


def test_corrupted_safetensors_subprocess(tiny_model, tmp_path):
    """The same through the real entry point: stderr is exactly one line, no traceback."""
    src = tiny_model("llama")
    (src / "model.safetensors").write_bytes(b"\x00\x00")
    proc = run_quantkit("quantize", str(src), "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, r"^Error: model.safetensors is truncated or not a safetensors file \(2 bytes\)$")
    _assert_nothing_written(tmp_path)


def test_unknown_method(tiny_model, tmp_path):
    result = _invoke(tiny_model("llama"), "--out", tmp_path / "out", "--method", "int4")
    _assert_error(result, r"Error: unknown quantization method 'int4' \(did you mean 'int8'\?\); "
                          r"choose from: int8, llm.int8")
    _assert_nothing_written(tmp_path)


def test_recipe_with_typo(tiny_model, tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("quantization:\n  method: int8\n  grup_size: 128\n")
    result = _invoke(tiny_model("llama"), "--out", tmp_path / "out", "--recipe", recipe)
    _assert_error(result, r"Error: recipe 'typo.yaml': unknown key 'quantization.grup_size' "
                          r"\(did you mean 'quantization.group_size'\?\); allowed: .*")
    _assert_nothing_written(tmp_path)


def test_bad_option_values(tiny_model, tmp_path):
    src = tiny_model("llama")
    _assert_error(_invoke(src, "--out", tmp_path / "out", "--group-size", "0"),
                  r"Error: group_size must be a positive integer or null, got 0")
    _assert_error(_invoke(src, "--out", tmp_path / "out", "--max-shard-size", "lots"),
                  r"Error: --max-shard-size must be a positive size like 5GB, 500MB or 2GiB, got 'lots'")
    _assert_error(_invoke(src, "--out", tmp_path / "out", "--device", "tpu"),
                  r"Error: --device must be one of cpu, cuda, got 'tpu'")
    _assert_nothing_written(tmp_path)


def test_hub_id_offline(tmp_path):
    proc = run_quantkit("quantize", "some-org/some-model", "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, r"^Error: 'some-org/some-model' is not a local folder and the Hugging Face Hub "
                                r"could not be reached to fetch it; pass a local model folder")
    _assert_nothing_written(tmp_path)


def test_cuda_without_gpu(tiny_model, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = _invoke(tiny_model("llama"), "--out", tmp_path / "out", "--device", "cuda")
    _assert_error(result, r"Error: --device cuda: no CUDA device is available to torch")
    _assert_nothing_written(tmp_path)
