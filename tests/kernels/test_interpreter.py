"""Run ``interpret_cases.py`` under ``TRITON_INTERPRET=1`` in a child pytest process.

The interpreter must be switched on before triton is first imported and stays on for the life of
the process, so it gets its own process: nothing leaks into the other test folders. About 10 s on
two CPU cores (33 cases).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CASES = Path(__file__).with_name("interpret_cases.py")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (pip install 'quantkit[triton]'); the kernel "
                           "cases need its CPU interpreter")
def test_kernels_under_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO),
           "QUANTKIT_INT8_KERNEL": "auto", "TRITON_DEFAULT_FP_FUSION": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(CASES), "-q", "-p", "no:cacheprovider",
         "-o", "addopts=", "--rootdir", str(REPO)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 30, tail
    assert "skipped" not in proc.stdout.splitlines()[-1], tail
