"""Run the real ``quantkit`` entry point in a subprocess (exit codes and stderr as a user sees)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_quantkit(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "quantkit", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, pattern: str, code: int = 2) -> None:
    import re

    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(pattern, lines[0]), lines[0]
