"""`quantkit estimate`, `models`, `gpus`: output, no torch import, one-line errors with exit 2."""

import json
import sys

import pytest

from .helpers import REPO, assert_one_line_error, run_quantkit


def test_estimate_llama2_70b_table():
    proc = run_quantkit("estimate", "llama2-70b", "--dtype", "fp16")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "68,976,648,192" in out
    assert "137.95 GB (128.48 GiB)" in out
    assert "165.54 GB" in out  # rule of thumb
    for label in ("KV cache", "activations", "logits", "runtime overhead", "total (breakdown)"):
        assert label in out


def test_estimate_json_with_gpu():
    proc = run_quantkit("estimate", "Llama-2-70b-hf", "--gpu", "h100", "--num-gpus", "2",
                        "--context", "4096", "--batch", "8", "--format", "json")
    d = json.loads(proc.stdout)
    assert d["model"] == "llama2-70b" and d["kv_bytes_per_token"] == 327_680
    assert d["fits"] is True and d["min_gpus"] == 2 and d["decode_tokens_per_s_bound"] > 0


def test_estimate_csv_has_raw_bytes():
    proc = run_quantkit("estimate", "llama3-8b", "--format", "csv")
    header, row = proc.stdout.strip().splitlines()
    cols = dict(zip(header.split(","), row.split(",")))
    assert cols["kv_bytes_per_token"] == "131072"
    assert cols["params.total"] == "8030261248"


def test_estimate_does_not_import_torch():
    code = (
        "import sys; from quantkit.cli import main\n"
        "try:\n    main(['estimate', 'llama2-70b', '--gpu', 'h100'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules\nprint('lean')"
    )
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("lean")


@pytest.mark.parametrize("command", ["estimate", "models", "gpus", "quantize", "eval", "plan", None])
def test_help_for_every_command(command):
    args = [command, "--help"] if command else ["--help"]
    proc = run_quantkit(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout


def test_version():
    proc = run_quantkit("--version")
    assert proc.returncode == 0 and "quantkit" in proc.stdout


def test_models_and_gpus_list():
    models = run_quantkit("models", "--format", "json")
    names = {m["name"] for m in json.loads(models.stdout)}
    assert {"llama2-70b", "deepseek-v3", "gemma2-27b"} <= names
    gpus = run_quantkit("gpus")
    assert gpus.returncode == 0 and "h100" in gpus.stdout


@pytest.mark.parametrize("args, pattern", [
    (["estimate", "llama2-70"], r"^Error: unknown model 'llama2-70'; did you mean .*llama2-70b"),
    (["estimate", "llama2-7b", "--batch", "0"], r"^Error: batch must be a positive integer, got 0$"),
    (["estimate", "llama2-7b", "--context", "-1"], r"^Error: context must be a positive integer, got -1$"),
    (["estimate", "llama2-7b", "--dtype", "int3"], r"^Error: unknown dtype 'int3'; accepted: fp32, fp16"),
    (["estimate", "llama2-7b", "--gpu", "h1000"], r"^Error: unknown GPU 'h1000'"),
    (["estimate", "llama2-7b", "--batch", "many"], r"^Error: Invalid value for '--batch'"),
    (["estimate", "some-org/some-model"], r"^Error: could not fetch config.json for 'some-org/some-model'.*quantkit models"),
    (["estimat", "llama2-7b"], r"^Error: No such command 'estimat'"),
])
def test_bad_input_is_one_line_exit_2(args, pattern):
    assert_one_line_error(run_quantkit(*args), pattern)


def test_malformed_config_names_field(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    assert_one_line_error(run_quantkit("estimate", str(tmp_path)),
                          r"^Error: config.json is missing the field 'num_attention_heads'$")
