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


@pytest.fixture
def fake_hub():
    """A Hub stand-in on 127.0.0.1: serves one config.json, 403 for a gated repo, 404 otherwise."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    config = json.dumps({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                         "vocab_size": 100, "max_position_embeddings": 256}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path.startswith("/org/tiny/resolve/main/config.json"):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(config)
            else:
                self.send_response(403 if "gated" in self.path else 404)
                self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HUB_OFFLINE": "0",
           "HF_HOME": "/nonexistent-quantkit-test-cache"}
    server.shutdown()


def test_hub_id_fetches_config(fake_hub):
    proc = run_quantkit("estimate", "org/tiny", "--format", "json", env=fake_hub)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["model"] == "org/tiny" and d["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 2


@pytest.mark.parametrize("model, pattern", [
    ("org/missing", r"^Error: no model 'org/missing' with a config.json on the Hugging Face Hub \(HTTP 404\)"),
    ("org/gated", r"^Error: 'org/gated' on the Hugging Face Hub is gated or private \(HTTP 403\)"),
])
def test_hub_errors_are_precise(fake_hub, model, pattern):
    assert_one_line_error(run_quantkit("estimate", model, env=fake_hub), pattern)


def test_unreachable_hub_fails_with_one_line():
    # one request, no retry loop: huggingface_hub's retries would print "Retrying in ..." lines
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0", "HF_HOME": "/nonexistent-quantkit-test-cache"}
    proc = run_quantkit("estimate", "org/model", env=env)
    assert_one_line_error(proc, r"^Error: could not fetch config.json for 'org/model' .*no connection.*quantkit models")


def test_offline_flag_is_honoured():
    assert_one_line_error(run_quantkit("estimate", "org/model", env={"HF_HUB_OFFLINE": "1"}),
                          r"HF_HUB_OFFLINE is set and it is not in the local cache")


def test_path_like_argument_says_no_such_file():
    assert_one_line_error(run_quantkit("estimate", "mymodel/config.json"), r"^Error: no such file or folder: mymodel/config.json$")


@pytest.mark.parametrize("torch_dtype, label", [
    ("float32", "weights (bf16 (default; the checkpoint stores fp32))"),
    (None, "weights (bf16 (default; config.json names no torch_dtype))"),
    ("bfloat16", "weights (bf16; dtype from torch_dtype)"),
    ("float16", "weights (fp16; dtype from torch_dtype)"),
])
def test_weights_label_says_when_the_default_differs_from_the_stored_dtype(tmp_path, torch_dtype, label):
    from tests.conftest import tiny_config

    cfg = tiny_config("llama")
    cfg.pop("torch_dtype", None), cfg.pop("dtype", None)
    if torch_dtype:
        cfg["torch_dtype"] = torch_dtype
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    proc = run_quantkit("estimate", str(tmp_path / "config.json"))
    assert proc.returncode == 0, proc.stderr
    assert label in proc.stdout
    data = json.loads(run_quantkit("estimate", str(tmp_path / "config.json"), "--format", "json").stdout)
    assert data["dtype"] == label.split("(")[1].split()[0].rstrip(";")
