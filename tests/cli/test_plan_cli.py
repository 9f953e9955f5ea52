"""`quantkit plan`: files and stdout, one-line errors with exit 2, nothing half-written, no torch."""

import csv
import io
import json
import os
import subprocess
import sys
import zipfile

import openpyxl
import pytest

from .helpers import REPO, assert_one_line_error, run_quantkit

SMALL = ("--models", "llama2-7b,llama2-70b", "--gpus", "h100-80gb,a100-80gb", "--dtypes", "bf16,int4",
         "--contexts", "4096", "--batches", "1,8")


def test_writes_xlsx_csv_json_with_the_same_rows(tmp_path):
    outs = {}
    for suffix in ("xlsx", "csv", "json"):
        path = tmp_path / f"plan.{suffix}"
        proc = run_quantkit("plan", *SMALL, "--out", str(path))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "" and f"wrote 16 rows to {path}" in proc.stderr
        outs[suffix] = path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.csv", "plan.json", "plan.xlsx"]
    rows = json.loads(outs["json"].read_text())["rows"]
    table = list(csv.DictReader(io.StringIO(outs["csv"].read_text())))
    ws = openpyxl.load_workbook(outs["xlsx"], data_only=True)["Plan"]
    assert len(rows) == len(table) == ws.max_row - 1 == 16
    for i, (row, line) in enumerate(zip(rows, table), start=2):
        assert (row["model"], row["gpu"], row["dtype"]) == (ws[f"A{i}"].value, ws[f"B{i}"].value, ws[f"C{i}"].value)
        assert row["total_bytes"] == int(line["total_bytes"]) == ws[f"K{i}"].value
        assert row["fits"] == (line["fits"] == "True") == ws[f"N{i}"].value
    llama70_bf16 = rows[8]
    assert (llama70_bf16["model"], llama70_bf16["dtype"], llama70_bf16["fits"]) == ("llama2-70b", "bf16", False)
    assert llama70_bf16["min_gpus"] == 2  # 137.95 GB of weights: two 80 GB GPUs
    with zipfile.ZipFile(outs["xlsx"]) as z:
        assert z.testzip() is None


def test_table_and_json_on_stdout_and_a_plan_file_with_overrides():
    proc = run_quantkit("plan", *SMALL)
    assert proc.returncode == 0, proc.stderr
    assert "GPUs needed" in proc.stdout and "137.95 GB (128.48 GiB)" in proc.stdout
    proc = run_quantkit("plan", "--plan", "datacenter", "--contexts", "1024", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["name"] == "datacenter" and d["contexts"] == [1024]
    assert d["assumptions"]["gpu_util"] == 0.9 and d["assumptions"]["block_size"] == 16
    assert len(d["rows"]) == len(d["models"]) * len(d["gpus"]) * len(d["dtypes"]) * len(d["batches"])


def test_unknown_names_all_at_once_and_no_file(tmp_path):
    out = tmp_path / "plan.xlsx"
    proc = run_quantkit("plan", "--models", "llama2-7b,llama9-7b,foo", "--gpus", "h100,h900",
                        "--dtypes", "bf16,int3", "--out", str(out))
    assert_one_line_error(proc, r"^Error: unknown model 'llama9-7b'.*unknown model 'foo'.*unknown GPU 'h900'"
                                r".*unknown dtype 'int3'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("target, pattern", [
    ("missing/plan.xlsx", r"cannot write .*plan\.xlsx: the folder .*missing does not exist"),
    ("a_file/plan.xlsx", r"cannot write .*plan\.xlsx: .*a_file is not a folder"),
    ("plan.txt", r"cannot tell the format of .*plan\.txt"),
])
def test_unwritable_outputs(tmp_path, target, pattern):
    (tmp_path / "a_file").write_text("x")
    proc = run_quantkit("plan", *SMALL, "--out", str(tmp_path / target))
    assert_one_line_error(proc, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        proc = run_quantkit("plan", *SMALL, "--out", str(folder / "plan.xlsx"))
        assert_one_line_error(proc, r"cannot write .*plan\.xlsx: the folder .* is not writable")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


def test_existing_file_needs_force(tmp_path):
    out = tmp_path / "plan.csv"
    out.write_text("keep me")
    proc = run_quantkit("plan", *SMALL, "--out", str(out))
    assert_one_line_error(proc, r"plan\.csv exists; pass --force to overwrite it")
    assert out.read_text() == "keep me"
    proc = run_quantkit("plan", *SMALL, "--out", str(out), "--force")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().startswith("model,gpu,dtype,context,batch,weights_bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.csv"]


@pytest.mark.parametrize("args, pattern", [
    (("--gpus", "h100"), r"a plan needs --models"),
    (("--plan", "nosuch"), r"unknown plan 'nosuch'.*datacenter"),
    ((*SMALL, "--contexts", "0,abc"), r"contexts must be positive integers; bad: '0', 'abc'"),
    ((*SMALL, "--gpu-util", "1.5"), r"gpu_util must be in \(0, 1\]"),
    ((*SMALL, "--format", "xlsx"), r"the xlsx format needs --out FILE"),
])
def test_bad_input_is_one_line(args, pattern):
    assert_one_line_error(run_quantkit("plan", *args), pattern)


def test_plan_does_not_import_torch(tmp_path):
    code = (
        "import sys; from quantkit.cli import main\n"
        f"try:\n    main(['plan', '--models', 'llama2-7b', '--gpus', 'h100', '--out', {str(tmp_path / 'p.xlsx')!r}])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules\nprint('lean')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("lean") and (tmp_path / "p.xlsx").is_file()


def test_all_and_globs_expand_over_the_catalogue():
    from quantkit.catalogue import gpu_names, model_names
    from quantkit.plan.definition import build_plan

    plan = build_plan({"models": "all", "gpus": "h1*,H200"})
    assert [m.name for m in plan.models] == model_names()
    assert [g.name for g in plan.gpus] == [n for n in gpu_names() if n.startswith("h1")] + ["h200"]
    plan = build_plan({"models": "llama3.1-*,llama2-7b,llama3.1-8b", "gpus": "all"})
    assert [m.name for m in plan.models] == ["llama3.1-405b", "llama3.1-70b", "llama3.1-8b", "llama2-7b"]
    proc = run_quantkit("plan", "--models", "gpt5*,llama2-7b", "--gpus", "zz*")
    assert_one_line_error(proc, r"model pattern 'gpt5\*' matches no catalogue model .*; gpu pattern "
                                r"'zz\*' matches no catalogue gpu")


def test_large_plans_warn_with_rows_and_size_and_show_progress(tmp_path):
    from quantkit.plan.export import LARGE_PLAN_ROWS, size_warning

    assert size_warning(LARGE_PLAN_ROWS, "xlsx") is None
    assert size_warning(450_000, "xlsx") == (
        "warning: 450,000 rows: about 180 MB as xlsx (MB = 10^6 bytes) and roughly 38 min; "
        "narrow --models/--gpus/--contexts/--batches for a smaller plan")
    # 31 x 2 x 3 x 4 x 3 = 2,232 rows (over 2,000): progress on stderr although it is not a terminal
    proc = run_quantkit("plan", "--models", "all", "--gpus", "h100-sxm,l4", "--contexts", "1024,2048,4096,8192",
                        "--batches", "1,8,64", "--out", str(tmp_path / "p.csv"), timeout=600)
    assert proc.returncode == 0, proc.stderr
    n = 31 * 2 * 3 * 4 * 3
    assert f"wrote {n:,} rows" in proc.stderr and "plan rows" in proc.stderr
    assert "warning" not in proc.stderr
