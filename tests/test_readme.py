"""README.md is executable: every shell example runs verbatim and succeeds (see readme_examples)."""

from __future__ import annotations

import pytest

from tests.readme_examples import REPO, examples, run, workdir

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_examples_are_found_and_skips_are_marked():
    found = examples(README)
    assert len(found) >= 8
    skipped = {e.skip for e in found if e.skip}
    assert skipped <= {"set-up", "gpu", "network"}
    # The two set-up commands are the README's first two examples.
    assert [e.skip for e in found[:2]] == ["set-up", "set-up"]
    assert "quantkit estimate llama2-70b" in found[0].code and "bash .ci/run" in found[1].code
    assert sum(1 for e in found if e.skip is None) >= 4


@pytest.mark.slow
@pytest.mark.shared
def test_every_readme_example_runs_verbatim(shared_dir, tmp_path):
    cwd, env = workdir(tmp_path, shared_dir)
    for ex in examples(README):
        if ex.skip:
            continue
        proc = run(ex, cwd, env)
        assert proc.returncode == 0, (f"README.md line {ex.line}: exit {proc.returncode}\n{ex.code}\n"
                                      f"{proc.stderr[-2000:]}")
        assert "Traceback" not in proc.stderr, (ex.line, proc.stderr[-2000:])


@pytest.mark.shared
def test_a_broken_example_fails(shared_dir, tmp_path):
    """The check can fail: the README's first runnable example with an option misspelled."""
    cwd, env = workdir(tmp_path, shared_dir)
    first = next(e for e in examples(README) if e.skip is None)
    assert "quantkit estimate" in first.code
    broken = type(first)(first.line, first.code.replace("quantkit estimate", "quantkit estimate --contxt 5", 1), None)
    proc = run(broken, cwd, env)
    assert proc.returncode == 2 and "No such option '--contxt'" in proc.stderr
