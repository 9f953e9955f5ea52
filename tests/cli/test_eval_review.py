"""`quantkit eval` edge cases found in review: wrong checkpoint, ctx beyond the model, blank text,
--speed with nothing measurable on CPU, outputs that are folders."""

from __future__ import annotations

import pytest

from .helpers import assert_one_line_error, run_quantkit


def test_checkpoint_of_another_model_is_refused(stories_dir, ref_docs_dir, shared_dir):
    text = shared_dir / "data" / "tinystories-valid-head.txt"
    proc = run_quantkit("eval", str(stories_dir), "--compare", f"fp32,{ref_docs_dir}", "--ppl", str(text),
                        "--ctx", "128", "--max-tokens", "256", "--device", "cpu", "-q")
    assert_one_line_error(proc, r"^Error: checkpoint .*ref-docs is not a variant of .*stories260K")


def test_ctx_beyond_the_model_is_refused(stories_dir, shared_dir):
    text = shared_dir / "data" / "tinystories-valid-head.txt"
    proc = run_quantkit("eval", str(stories_dir), "--ppl", str(text), "--ctx", "2048", "--device", "cpu")
    assert_one_line_error(proc, r"^Error: --ctx 2048 exceeds the model's max_position_embeddings \(512\)")


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_blank_text_is_refused(stories_dir, tmp_path, content):
    path = tmp_path / "blank.txt"
    path.write_text(content)
    proc = run_quantkit("eval", str(stories_dir), "--ppl", str(path), "--ctx", "128", "--device", "cpu")
    assert_one_line_error(proc, r"blank.txt: no text \(the file is empty or blank\)$")


def test_speed_alone_on_cpu_is_an_error(stories_dir):
    proc = run_quantkit("eval", str(stories_dir), "--speed", "--device", "cpu")
    assert_one_line_error(proc, r"^Error: --speed measures GPU speed and memory and needs a CUDA device")


@pytest.mark.parametrize("flag", ["--output", "--plot"])
def test_output_that_is_a_folder_is_refused_before_work(stories_dir, shared_dir, tmp_path, flag):
    text = shared_dir / "data" / "tinystories-valid-head.txt"
    proc = run_quantkit("eval", str(stories_dir), "--ppl", str(text), "--device", "cpu", flag, str(tmp_path))
    assert_one_line_error(proc, rf"^Error: {flag}: '.*' is a folder; give a file name$")
