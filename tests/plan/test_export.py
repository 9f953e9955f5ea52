"""Plan files get the modes a plain open() gives (0o666 minus the umask), not mkstemp's 0600."""

import os

import pytest

from quantkit.plan.export import write_plan


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)],
                         ids=["umask022", "umask002", "umask077"])
@pytest.mark.parametrize("fmt", ["xlsx", "csv", "json"])
def test_plan_files_have_default_modes(small_plan, tmp_path, fmt, umask, mode):
    plan, rows, _ = small_plan
    out = tmp_path / f"plan.{fmt}"
    old = os.umask(umask)
    try:
        write_plan(plan, rows, out, fmt)
        first = out.stat().st_mode & 0o777
        out.chmod(0o600)
        write_plan(plan, rows, out, fmt, force=True)  # a replaced file gets the default mode too
    finally:
        os.umask(old)
    assert (first, out.stat().st_mode & 0o777) == (mode, mode)
    assert out.stat().st_size > 0 and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
