"""`quantkit eval`: the stable JSON, CPU behaviour of --speed, --plot, and one-line errors."""

from __future__ import annotations

import json
import sys

import pytest

from .helpers import REPO, assert_one_line_error, run_quantkit

pytestmark = pytest.mark.shared

RESULT_KEYS = {"variant", "perplexity", "nll", "tokens", "kl_vs_base", "top1_agreement"}
SPEED_KEYS = {"prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms", "peak_allocated_bytes",
              "peak_reserved_bytes", "estimated_bytes"}


def test_eval_help_does_not_import_torch():
    code = ("import sys; from quantkit.cli import main\n"
            "try:\n    main(['eval', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')")
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for option in ("--compare", "--ppl", "--ctx", "--stride", "--max-tokens", "--speed", "--batch",
                   "--prompt-len", "--new-tokens", "--device", "--format", "--plot"):
        assert option in proc.stdout
    assert proc.stdout.strip().endswith("ok")


def test_ref_docs_bf16_vs_int8_json(ref_docs_dir, ref_docs_valid):
    """The must-show command: stable JSON, the reference perplexity, int8 within 0.5%."""
    proc = run_quantkit("eval", str(ref_docs_dir), "--compare", "bf16,int8", "--ppl",
                        str(ref_docs_valid), "--ctx", "512", "--max-tokens", "16384",
                        "--device", "cpu", "--format", "json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert {"model", "device", "protocol", "results"} <= set(d)
    assert d["device"] == "cpu" and d["base"] == "bf16"
    p = d["protocol"]
    assert (p["ctx"], p["stride"], p["tokens"], p["name"]) == (512, None, 16384, "non-overlapping")
    bf16, int8 = d["results"]
    assert RESULT_KEYS <= set(bf16) and RESULT_KEYS <= set(int8)
    assert not SPEED_KEYS & set(bf16)  # speed keys only with --speed
    assert (bf16["variant"], int8["variant"]) == ("bf16", "int8")
    assert bf16["perplexity"] == pytest.approx(16.11, abs=0.01) and bf16["tokens"] == 32 * 511
    assert bf16["kl_vs_base"] is None and bf16["top1_agreement"] is None
    assert abs(int8["perplexity"] / bf16["perplexity"] - 1) < 0.005
    assert 0 < int8["kl_vs_base"] < 1e-3 and int8["top1_agreement"] > 0.98
    assert isinstance(int8["weights_bytes"], int) and int8["weights_bytes"] < bf16["weights_bytes"]


def test_speed_on_cpu_is_skipped_and_plot_and_output_are_written(stories_dir, shared_dir, tmp_path):
    text = shared_dir / "data" / "tinystories-valid-head.txt"
    png, out = tmp_path / "cmp.png", tmp_path / "report.json"
    proc = run_quantkit("eval", str(stories_dir), "--compare", "fp32,int8", "--ppl", str(text),
                        "--ctx", "128", "--stride", "64", "--max-tokens", "1024", "--device",
                        "cpu", "--speed", "--batch", "1,8", "--plot", str(png), "--output",
                        str(out), "--format", "json", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "note: speed: no CUDA device" in proc.stderr
    d = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == d
    assert d["protocol"]["stride"] == 64 and d["protocol"]["name"] == "strided"
    assert d["protocol"]["predictions"] == 1023
    assert d["speed"]["skipped"].startswith("no CUDA device") and d["speed"]["batches"] == [1, 8]
    for r in d["results"]:
        assert SPEED_KEYS <= set(r) and all(r[k] is None for k in SPEED_KEYS)
        assert r["perplexity"] > 1  # CPU perplexity still works
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_table_output(stories_dir, shared_dir):
    text = shared_dir / "data" / "tinystories-valid-head.txt"
    proc = run_quantkit("eval", str(stories_dir), "--compare", "fp32,int8", "--ppl", str(text),
                        "--ctx", "128", "--max-tokens", "256", "--device", "cpu", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "perplexity" in proc.stdout and "top-1 agree %" in proc.stdout
    assert "int8 quantized on the fly from the fp32 weights" in proc.stdout


@pytest.mark.parametrize("args, pattern", [
    (["--compare", "bf16,int4", "--ppl", "X"], r"unknown --compare entry 'int4'"),
    (["--compare", "bf16,bf16", "--ppl", "X"], r"--compare lists 'bf16' twice"),
    (["--ppl", "missing.txt"], r"'missing.txt' is neither a file nor a known dataset"),
    (["--ppl", "X", "--ctx", "512", "--stride", "600"], r"--stride \(600\) must not exceed --ctx"),
    (["--ppl", "X", "--ctx", "1"], r"--ctx must be an integer >= 2"),
    (["--speed", "--batch", "0"], r"Invalid value for '--batch': batch sizes must be positive"),
    (["--speed", "--plot", "out.jpg"], r"--plot writes a PNG"),
    (["--speed", "--device-map", "auto"], r"--device-map auto is for perplexity only"),
    ([], r"nothing to measure: pass --ppl FILE and/or --speed"),
    (["--ppl", "X", "--format", "xml"], r"Invalid value for '--format'"),
])
def test_bad_inputs_one_line_exit_2(ref_docs_dir, ref_docs_valid, args, pattern):
    args = [str(ref_docs_valid) if a == "X" else a for a in args]
    assert_one_line_error(run_quantkit("eval", str(ref_docs_dir), *args), pattern)


def test_bad_model_and_no_cuda(tmp_path, ref_docs_dir):
    assert_one_line_error(run_quantkit("eval", str(tmp_path), "--speed"), r"no config.json in")
    import torch

    if not torch.cuda.is_available():
        assert_one_line_error(run_quantkit("eval", str(ref_docs_dir), "--speed", "--device", "cuda"),
                              r"--device cuda: no CUDA device is visible")
