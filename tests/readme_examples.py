"""Run README.md's shell examples verbatim, as a user would, against the shared models.

Every fenced ``bash`` block is an example. A block whose first line is a marker comment is skipped
and says why in the README itself: ``# set-up`` (installs packages or runs the suite),
``# needs: gpu`` (CUDA), ``# needs: network`` (the Hugging Face Hub). The others run in order in one
working folder whose ``../shared`` is the shared models and data (as from the repository root), with
``quantkit`` on PATH running this checkout, under ``bash -euo pipefail``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKERS = {"# set-up": "set-up", "# needs: gpu": "gpu", "# needs: network": "network"}
_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Example:
    line: int  # 1-based line of the opening fence in README.md
    code: str
    skip: str | None  # "set-up", "gpu", "network" or None


def examples(markdown: str) -> list[Example]:
    out = []
    for m in _BLOCK.finditer(markdown):
        code = m.group(1)
        first = code.lstrip().splitlines()[0].strip() if code.strip() else ""
        skip = next((why for marker, why in MARKERS.items() if first.startswith(marker)), None)
        out.append(Example(markdown.count("\n", 0, m.start()) + 1, code, skip))
    return out


def workdir(tmp: Path, shared: Path) -> tuple[Path, dict]:
    """A folder with ``../shared`` and an environment whose ``quantkit`` is this checkout's."""
    (tmp / "shared").symlink_to(shared.resolve(), target_is_directory=True)
    work = tmp / "work"
    (work).mkdir()
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "quantkit"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m quantkit "$@"\n')
    shim.chmod(0o755)
    # a script, not a symlink: a venv's interpreter finds its site-packages by its own path
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return work, env


def run(example: Example, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", example.code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
