"""`quantkit quantize`: end to end, and bad input -> one-line error, exit 2, nothing left behind."""

import json
import re

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


# --- --out safety: never delete or write into the model, never delete unrelated folders -----------


def _snapshot(folder):
    """{relative path: bytes} of every file under ``folder`` (to prove nothing was touched)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_out_containing_the_model_is_refused_even_with_force(tiny_model, tmp_path, monkeypatch):
    """`quantize anc/stories --out anc --force` used to delete the model and everything in anc."""
    anc = tmp_path / "anc"
    src = tiny_model("llama")
    anc.mkdir()
    src.rename(anc / "stories")
    (anc / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    for args in (("--out", anc, "--force"), ("--out", anc), ("--out", tmp_path, "--force")):
        result = _invoke(anc / "stories", *args)
        _assert_error(result, r"Error: --out '.*' contains the MODEL folder '.*/anc/stories'; replacing it "
                              r"would delete the model: choose a new folder outside it")
    monkeypatch.chdir(anc)  # --out . would have wiped the working folder
    _assert_error(_invoke("stories", "--out", ".", "--force"),
                  r"Error: --out '\.' contains the MODEL folder 'stories'; .*")
    assert _snapshot(tmp_path) == before


def test_out_equal_to_or_inside_the_model_is_refused(tiny_model, tmp_path):
    src = tiny_model("llama")
    before = _snapshot(src)
    _assert_error(_invoke(src, "--out", src, "--force"),
                  r"Error: --out '.*' is the MODEL folder; choose a new folder for the output")
    (tmp_path / "link").symlink_to(src)  # the same folder under another name
    _assert_error(_invoke(src, "--out", tmp_path / "link", "--force"), r"Error: --out '.*/link' is the MODEL folder; .*")
    _assert_error(_invoke(src, "--out", src / "int8"),
                  r"Error: --out '.*/int8' is inside the MODEL folder '.*'; choose a new folder outside it")
    assert _snapshot(src) == before and (tmp_path / "link").is_symlink()


def test_force_replaces_only_an_empty_folder_or_a_quantkit_checkpoint(tiny_model, tmp_path):
    src = tiny_model("llama")
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    _assert_error(_invoke(src, "--out", out, "--force"),
                  r"Error: --force replaces only an empty folder or a quantkit checkpoint, and '.*/out' holds "
                  r"other files \(no valid .quantkit-manifest.json listing the files quantkit wrote there\); remove it yourself "
                  r"or choose another --out")
    assert _snapshot(out) == {"thesis.tex": b"years of work"}
    # A plain (unquantized) model folder is not a quantkit checkpoint either.
    other = tiny_model("qwen2")
    before = _snapshot(other)
    _assert_error(_invoke(src, "--out", other, "--force"), r"Error: --force replaces only an empty folder .*")
    assert _snapshot(other) == before
    (tmp_path / "file").write_text("data")
    _assert_error(_invoke(src, "--out", tmp_path / "file", "--force"),
                  r"Error: --force replaces only an empty folder or a quantkit checkpoint, and '.*/file' is "
                  r"not a folder; remove it yourself or choose another --out")
    assert (tmp_path / "file").read_text() == "data"
    # A quantkit checkpoint is replaced, entirely, but not with the user's files next to its own.
    ckpt = tmp_path / "ckpt"
    assert _invoke(src, "--out", ckpt).exit_code == 0
    (ckpt / "stale.txt").write_text("old")
    _assert_error(_invoke(src, "--out", ckpt, "--force"),
                  r"Error: --force replaces only an empty folder or a quantkit checkpoint, and '.*/ckpt' holds "
                  r"files quantkit did not write \(stale.txt\): move them out first; .*")
    assert (ckpt / "stale.txt").read_text() == "old"
    (ckpt / "stale.txt").unlink()
    result = _invoke(src, "--out", ckpt, "--force", "--group-size", "32")
    assert result.exit_code == 0, result.output
    assert json.loads((ckpt / "config.json").read_text())["quantization_config"]["quantkit"]["group_size"] == 32
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_parent_folders_are_created_a_file_in_the_way_is_refused(tiny_model, tmp_path):
    src = tiny_model("llama")
    result = _invoke(src, "--out", tmp_path / "a" / "b" / "o14")  # as save_pretrained does
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "b" / "o14" / "config.json").is_file()
    (tmp_path / "a_file").write_text("x")
    _assert_error(_invoke(src, "--out", tmp_path / "a_file" / "sub" / "o14"),
                  r"Error: cannot write '.*/a_file/sub/o14': the folder '.*/a_file' is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "a_file"]


def test_output_files_have_default_modes(tiny_model, tmp_path):
    import os

    src = tiny_model("llama")
    (src / "tokenizer.json").write_text("{}")
    old = os.umask(0o022)
    try:
        assert _invoke(src, "--out", tmp_path / "out").exit_code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert set(modes) == {"config.json", "model.safetensors", "quant_report.json", "tokenizer.json",
                          ".quantkit-manifest.json"}
    assert set(modes.values()) == {0o644}, modes


# --- --skip: a pattern that matches nothing is an error; the default never is --------------------


def test_skip_pattern_matching_nothing_is_an_error(tiny_model, tmp_path, monkeypatch):
    import quantkit.modelbuild

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded before the skip patterns were checked")

    monkeypatch.setattr(quantkit.modelbuild, "build_model", no_loading)
    src = tiny_model("llama")
    _assert_error(_invoke(src, "--out", tmp_path / "out", "--skip", "lm_haed"),
                  r"Error: skip pattern 'lm_haed' \(did you mean 'lm_head'\?\) matches no nn.Linear module of "
                  r"the model; a pattern is a full module name \('model.layers.0.self_attn.q_proj'\), its last "
                  r"part \('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', "
                  r"'lm_head'\) or a glob \('model.layers.0.self_attn.\*'\)")
    _assert_error(_invoke(src, "--out", tmp_path / "out", "--skip", "lm_head", "--skip", "*.attn.*",
                          "--skip", "mlp"),
                  r"Error: skip patterns '\*\.attn\.\*', 'mlp' match no nn.Linear module of the model; .*")
    _assert_nothing_written(tmp_path)


@pytest.mark.parametrize("skip", [(), ("--skip", "lm_head")], ids=["default", "explicit"])
def test_skip_lm_head_on_tied_embeddings(skip, tiny_model, tmp_path):
    """Tied lm_head is still an nn.Linear (sharing the embedding matrix): lm_head matches it."""
    src = tiny_model("qwen2")
    assert json.loads((src / "config.json").read_text())["tie_word_embeddings"] is True
    result = _invoke(src, "--out", tmp_path / "out", *skip)
    assert result.exit_code == 0, result.output
    block = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]["quantkit"]
    assert block["skipped_modules"] == ["lm_head"]
    assert re.search(r"^skip patterns +lm_head \(the default\)$", result.output, re.MULTILINE)


def test_skip_summary_says_the_list_replaces_the_default(tiny_model, tmp_path):
    result = _invoke(tiny_model("llama"), "--out", tmp_path / "out", "--skip", "*.down_proj")
    assert result.exit_code == 0, result.output
    assert "*.down_proj (replaces the default: lm_head)" in result.output
    assert "REPLACES the default skip list (lm_head)" in " ".join(_invoke("--help").output.split())
