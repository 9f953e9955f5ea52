"""benchmarks/bench_kernels.py without a GPU: arguments, shape tables, sums, targets, JSON."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_kernels.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_llama2_7b_layer_matches_the_issue_weight_bytes(bench):
    shapes = bench.layer_shapes("llama2-7b")
    assert [s[0] for s in shapes] == list(bench.LAYER_NAMES)
    bf16 = sum(n * k * 2 for _, n, k in shapes)
    assert bf16 == 404_750_336  # "405 MB of bf16 weights" (issue 5)
    assert sum(n * k for _, n, k in shapes) == 202_375_168  # "202 MB in int8"


def test_gqa_shapes(bench):
    l3 = dict((name, (n, k)) for name, n, k in bench.layer_shapes("llama3-8b"))
    assert l3["k_proj"] == l3["v_proj"] == (1024, 4096) and l3["down_proj"] == (4096, 14336)
    l70 = dict((name, (n, k)) for name, n, k in bench.layer_shapes("llama2-70b"))
    assert l70["q_proj"] == (8192, 8192) and l70["v_proj"] == (1024, 8192)
    assert l70["gate_proj"] == (28672, 8192) and l70["down_proj"] == (8192, 28672)


def test_argument_defaults_and_out_from_env(bench, monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    args = bench.parse_args([])
    assert args.models == ["llama2-7b", "llama3-8b", "llama2-70b"]
    assert args.m == [1, 2, 4, 8, 16, 64, 256, 2048]
    assert (args.reps, args.autotune, args.group_size) == (50, True, None)
    assert args.out == str(tmp_path / "bench_kernels.json")
    monkeypatch.delenv("OUT")
    args = bench.parse_args(["--models", "llama3-8b", "--m", "1,16", "--no-autotune",
                             "--group-size", "128"])
    assert (args.models, args.m, args.autotune, args.group_size, args.out) == \
        (["llama3-8b"], [1, 16], False, 128, None)


@pytest.mark.parametrize("argv", [["--models", "llama9"], ["--m", "0"], ["--m", "a,b"],
                                  ["--group-size", "0"], ["--reps", "0"]])
def test_bad_arguments_exit_2(bench, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_rotation_exceeds_l2_and_byte_counts(bench):
    l2 = 50 * 2**20
    assert bench.rotation_copies(1024 * 4096, l2, 3.0) == 38  # 4 MiB copies, 150 MiB > 3 x L2
    assert bench.rotation_copies(28672 * 8192, l2, 3.0) == 2  # never fewer than two
    assert bench.moved_bytes(1, 4096, 4096, "int8", 1) == 4096 * 4096 + 4096 * 4 + 2 * 4096 * 2
    assert bench.moved_bytes(1, 4096, 4096, "bf16", 1) == 4096 * 4096 * 2 + 2 * 4096 * 2


def _rows(bench, model, m, int8_us, bf16_us):
    return [{"model": model, "layer": name, "M": m, "impl": impl, "median_us": us}
            for name, _, _ in bench.layer_shapes(model)
            for impl, us in (("int8", int8_us), ("bf16", bf16_us))]


def test_layer_sums_and_targets(bench):
    rows = (_rows(bench, "llama2-7b", 1, 13.0, 26.0)  # 91 µs vs 182 µs: 2.0x, under 100 µs
            + _rows(bench, "llama2-7b", 16, 20.0, 27.0)  # 1.35x: misses 1.5x
            + _rows(bench, "llama3-8b", 2048, 1.0, 1.0))
    sums = bench.layer_sums(rows)
    s1 = next(s for s in sums if s["model"] == "llama2-7b" and s["M"] == 1)
    assert s1["int8_us"] == pytest.approx(91.0) and s1["speedup_vs_bf16"] == pytest.approx(2.0)
    targets = {t["M"]: t for t in bench.check_targets(sums)}
    assert targets[1]["passed"] is True
    assert targets[16]["passed"] is False
    assert targets[2048]["passed"] is None  # Llama-2-7B at 2048 not measured here
    text = bench.render([], sums, list(targets.values()), 3000.0)
    assert "M=2048  >= 0.95x [bf16 1,188-1,215 µs]: not measured" in text
    assert "FAIL" in text and "PASS" in text


def test_write_json_is_atomic_and_complete(bench, tmp_path):
    path = tmp_path / "sub" / "bench.json"
    bench.write_json(str(path), {"rows": [{"bytes": 202_375_168}]})
    assert json.loads(path.read_text()) == {"rows": [{"bytes": 202_375_168}]}
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]  # no temp file left
    with pytest.raises(TypeError):
        bench.write_json(str(path), {"bad": object()})
    assert json.loads(path.read_text()) == {"rows": [{"bytes": 202_375_168}]}  # old file intact
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_write_json_gets_the_mode_of_a_plainly_created_file(bench, tmp_path, umask):
    """mkstemp's 0600 would hide results from other users: 0666 minus the umask, as open()."""
    import os
    import stat

    path = tmp_path / "bench.json"
    old = os.umask(umask)
    try:
        bench.write_json(str(path), {"rows": []})
        assert os.umask(umask) == umask  # write_json restored the process umask
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_without_cuda_the_script_fails_with_a_clear_message():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--m", "1"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"Error: bench_kernels needs a CUDA GPU; torch.cuda.is_available() is False "
        f"(torch {torch.__version__})"]
    assert proc.stdout == ""


def test_measure_to_json_pipeline_on_cpu(bench, monkeypatch, tmp_path):
    """The whole measure -> sums -> targets -> render -> JSON path, CPU tensors, wall-clock timer."""
    import time

    import torch

    monkeypatch.setitem(bench.MODELS, "llama2-7b", dict(hidden=64, intermediate=96, kv_dim=32))
    calls = []

    def timer(torch_mod, fn, n_copies, reps, warmup):
        out = []
        for i in range(warmup + reps):  # cycles through every weight copy like the GPU timer
            t0 = time.perf_counter()
            fn(i % n_copies)
            out.append((time.perf_counter() - t0) * 1e6)
        calls.append(n_copies)
        return out[warmup:]

    args = bench.parse_args(["--models", "llama2-7b", "--m", "1,16", "--reps", "3",
                             "--warmup", "1"])
    rows = bench.measure(torch, args, torch.bfloat16, l2_bytes=64 * 1024, copy_GBps=100.0,
                         device="cpu", timer=timer)
    assert len(rows) == 2 * 7 * 2 and len(calls) == 2 * 7 * 2
    assert min(calls) >= 2
    int8 = [r for r in rows if r["impl"] == "int8"]
    assert all(r["rel_error_vs_fp32"] < 1e-2 and r["median_us"] > 0 and r["GBps"] > 0
               for r in int8)
    q = next(r for r in int8 if r["layer"] == "q_proj" and r["M"] == 1)
    assert q["bytes"] == bench.moved_bytes(1, 64, 64, "int8", 1)
    sums = bench.layer_sums(rows)
    targets = bench.check_targets(sums)
    assert {t["M"]: t["passed"] is None for t in targets} == {1: False, 16: False, 2048: True}
    text = bench.render(rows, sums, targets, 100.0)
    assert "q_proj" in text and "per decoder layer" in text
    out = tmp_path / "bench.json"
    bench.write_json(str(out), {"rows": rows, "layer_sums": sums, "targets": targets})
    assert len(json.loads(out.read_text())["rows"]) == 28
