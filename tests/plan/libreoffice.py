"""Recalculate workbooks with LibreOffice headless (a real spreadsheet engine) and read them back.

LibreOffice does not recalculate an .xlsx on load by default: it shows the cached values, so a
naive round trip compares the cache with itself. ``convert`` runs soffice with a private user
profile whose ``OOXMLRecalcMode`` is 0 ("always recalculate") -- or 1 ("never"), to show the trap.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOFFICE = shutil.which("soffice") or shutil.which("libreoffice")
SKIP_REASON = ("LibreOffice (soffice) is not installed: apt-get install --no-install-recommends "
               "libreoffice-calc-nogui (see .ci/run)")

_XCU = """<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Calc/Formula/Load"><prop oor:name="OOXMLRecalcMode" oor:op="fuse"><value>{mode}</value></prop></item>
<item oor:path="/org.openoffice.Office.Calc/Formula/Load"><prop oor:name="ODFRecalcMode" oor:op="fuse"><value>{mode}</value></prop></item>
</oor:items>
"""


def convert(paths: list[Path], out_dir: Path, recalculate: bool = True, timeout: int = 300) -> list[Path]:
    """Open each workbook in LibreOffice, (re)calculate, save as .xlsx under ``out_dir``."""
    assert SOFFICE, SKIP_REASON
    profile = out_dir / f"profile-{'always' if recalculate else 'never'}"
    (profile / "user").mkdir(parents=True, exist_ok=True)
    (profile / "user" / "registrymodifications.xcu").write_text(_XCU.format(mode=0 if recalculate else 1))
    out = out_dir / ("recalculated" if recalculate else "not-recalculated")
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [SOFFICE, f"-env:UserInstallation={profile.resolve().as_uri()}", "--headless", "--norestore",
         "--convert-to", "xlsx", "--outdir", str(out), *map(str, paths)],
        capture_output=True, text=True, timeout=timeout,
    )
    results = [out / p.name for p in paths]
    missing = [p for p in results if not p.is_file()]
    assert proc.returncode == 0 and not missing, (proc.returncode, proc.stdout, proc.stderr)
    return results
