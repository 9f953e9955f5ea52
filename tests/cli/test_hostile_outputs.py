"""Outputs under hostile conditions: spreadsheets, overwrites, --force next to user files, and
bounded time and memory for bombs and huge files (the slow ones run in a subprocess measuring
peak RSS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from quantkit.catalogue import find_model_card
from quantkit.cli import cli

from .helpers import REPO


def _model_folder(parent, name):
    folder = parent / name
    folder.mkdir()
    cfg = {k: v for k, v in find_model_card("llama2-7b").data.items() if k != "_quantkit"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


# 3 + 4: a model folder named like a formula with terminal escapes
def test_plan_outputs_neutralise_formula_and_escape_names(tmp_path):
    folder = _model_folder(tmp_path, "=HYPERLINK(\"http:x\")\x1b]0;t\x07")
    args = ["plan", "--models", str(folder), "--gpus", "h100", "--dtypes", "bf16"]
    table = CliRunner().invoke(cli, args)
    assert table.exit_code == 0 and "\x1b" not in table.stdout and "\\x1b]0;t\\x07" in table.stdout
    assert CliRunner().invoke(cli, args + ["--out", str(tmp_path / "p.csv")]).exit_code == 0
    import csv

    row = list(csv.reader((tmp_path / "p.csv").open()))[1]
    assert row[0].startswith("'=HYPERLINK") and "\x1b" not in row[0]
    estimate = CliRunner().invoke(cli, ["estimate", str(folder), "--format", "csv"])
    assert estimate.exit_code == 0 and "'=HYPERLINK" in estimate.stdout
    result = CliRunner().invoke(cli, args + ["--out", str(tmp_path / "p.xlsx")])
    assert result.exit_code == 0, result.output
    import openpyxl

    cell = openpyxl.load_workbook(tmp_path / "p.xlsx")["Models"]["A2"]
    assert cell.data_type == "s" and cell.value.startswith("=HYPERLINK") and "\x1b" not in cell.value


# 6: eval -o / --plot never overwrite silently, and are checked before the work
@pytest.mark.parametrize("flag, name", [("-o", "report.json"), ("--plot", "plot.png")])
def test_eval_refuses_existing_outputs_without_force(tmp_path, flag, name):
    target = tmp_path / name
    target.write_text("the user's file")
    text = tmp_path / "t.txt"
    text.write_text("hello")
    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["eval", str(tmp_path / "no-model"), "--ppl", str(text), flag, str(target)])
    assert result.exit_code == 2 and "exists; pass --force to overwrite it" in result.stderr
    assert target.read_text() == "the user's file" and time.perf_counter() - start < 5


# 5: --force on a real checkpoint with the user's files next to it refuses and deletes nothing
def test_quantize_force_keeps_user_files(tiny_model, tmp_path):
    src = tiny_model("llama")
    out = tmp_path / "ckpt"
    assert CliRunner().invoke(cli, ["quantize", str(src), "--out", str(out)]).exit_code == 0
    (out / "my_results.txt").write_text("mine")
    (out / "experiments").mkdir()
    (out / "experiments" / "run1.log").write_text("log")
    result = CliRunner().invoke(cli, ["quantize", str(src), "--out", str(out), "--force"])
    assert result.exit_code == 2 and "holds files quantkit did not write" in result.stderr
    assert (out / "my_results.txt").read_text() == "mine" and (out / "experiments" / "run1.log").is_file()
    # a folder that merely looks like a checkpoint (no manifest) is not deleted either
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"quantization_config": {"quantkit": {"version": 1}}}))
    (fake / "data.bin").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["quantize", str(src), "--out", str(fake), "--force"])
    assert result.exit_code == 2 and (fake / "data.bin").is_file()


# 8: leftovers of a killed run next to --out are removed by the next run
def test_quantize_removes_leftovers_of_a_killed_run(tiny_model, tmp_path):
    from quantkit.boundary import outputs

    src = tiny_model("llama")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    left = tmp_path / ".ckpt.tmp-killed1"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"partial")
    (left / outputs.PARTIAL_MARKER).write_text(f"{proc.pid}\n")
    os.utime(left, (outputs._RUN_START - 60, outputs._RUN_START - 60))  # older than this run
    result = CliRunner().invoke(cli, ["quantize", str(src), "--out", str(tmp_path / "ckpt")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# 2: the index pointing outside the model folder, end to end
def test_quantize_refuses_an_index_that_leaves_the_folder(tiny_model, tmp_path):
    src = tiny_model("llama")
    other = tiny_model("llama", seed=1)
    (src / "model.safetensors").unlink()
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"lm_head.weight": str(other / "model.safetensors")}}))
    result = CliRunner().invoke(cli, ["quantize", str(src), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "only names inside the folder are allowed" in result.stderr


# 1: end to end, a symlinked generation_config.json never reaches --out
def test_quantize_never_copies_a_symlinked_secret(tiny_model, tmp_path):
    src = tiny_model("llama")
    secret = tmp_path / "secret.key"
    secret.write_text("PRIVATE")
    (src / "generation_config.json").symlink_to(secret)
    result = CliRunner().invoke(cli, ["quantize", str(src), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "symlink that leaves" in result.stderr
    assert not (tmp_path / "o").exists()


_MEASURE = """
import sys, time
from quantkit.cli import main
start = time.perf_counter()
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code
# VmHWM: this process's peak RSS (kB); ru_maxrss can carry the parent's peak across fork+exec
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print("RESULT", code, hwm, time.perf_counter() - start, file=sys.stderr)
"""


def _measure(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("RESULT")][-1].split()
    return int(line[1]), int(line[2]) * 1024, float(line[3]), proc  # exit code, peak RSS bytes, seconds


# 9: bombs and huge files: seconds, under 1 GB RSS
@pytest.mark.slow
def test_yaml_bomb_and_2gb_config_are_bounded(tmp_path):
    bomb = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (tmp_path / "bomb.yaml").write_text(bomb)
    code, rss, secs, proc = _measure("plan", "--plan", tmp_path / "bomb.yaml")
    print(f"YAML bomb: exit {code}, peak RSS {rss / 2**20:.0f} MiB, {secs:.2f} s")
    assert code == 2 and rss < 2**30 and secs < 10 and len(proc.stderr.splitlines()) == 2
    big = tmp_path / "m"
    big.mkdir()
    with open(big / "config.json", "wb") as fh:
        fh.truncate(2 * 10**9)  # sparse: no disk used
    for cmd in ("estimate", "quantize"):
        extra = ["--out", tmp_path / "o"] if cmd == "quantize" else []
        code, rss, secs, proc = _measure(cmd, big, *extra)
        print(f"2 GB config.json, {cmd}: exit {code}, peak RSS {rss / 2**20:.0f} MiB, {secs:.2f} s")
        assert code == 2 and rss < 2**30 and secs < 30 and "over the 67,108,864-byte limit" in proc.stderr


@pytest.mark.slow
@pytest.mark.shared
def test_eval_max_tokens_on_a_2gb_text_reads_a_prefix(ref_docs_dir, ref_docs_valid, tmp_path):
    chunk = ref_docs_valid.read_bytes()
    big = tmp_path / "big.txt"
    with open(big, "wb") as fh:
        fh.write(chunk)
        fh.truncate(2 * 10**9)  # the rest is a sparse hole of NUL bytes: never read
    code, rss, secs, proc = _measure("eval", ref_docs_dir, "--ppl", big, "--max-tokens", 512, "--ctx", 256,
                                     "--compare", "bf16", "--device", "cpu", "--format", "json", "-q",
                                     timeout=300)
    print(f"eval --max-tokens 512 on 2 GB: exit {code}, peak RSS {rss / 2**20:.0f} MiB, {secs:.2f} s")
    assert code == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["protocol"]["tokens"] > 0 and rss < 2**30 and secs < 60
    # the prefix gives the same tokens as the whole text
    from quantkit.evaluator.text import load_text, tokenize, tokenize_source

    whole = tokenize(ref_docs_dir, ref_docs_valid.read_text(), 1)[:512]
    assert tokenize_source(ref_docs_dir, load_text(str(ref_docs_valid), 512), 1, 512) == whole
