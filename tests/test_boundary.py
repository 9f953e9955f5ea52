"""quantkit.boundary: hostile model folders and inputs. Each test names the class of the issue's
list it proves (1 secrets, 2 index escapes, 3 formula injection, 4 terminal escapes, 5 --force,
7 overlapping offsets, 8 crash-safe replace, 9 bombs, 10 overflow/recursion, 11 messages)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from quantkit.boundary import outputs
from quantkit.boundary.data import load_yaml_file, parse_json
from quantkit.boundary.paths import check_path, inside, regular_file
from quantkit.boundary.text import csv_cell, finite_json, terminal_safe, xlsx_text
from quantkit.errors import ConfigError, InputError


def _safetensors(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


# 1. secrets: tokenizer/generation files that are symlinks leaving the folder are never copied
def test_symlinked_tokenizer_files_are_refused_not_copied(tmp_path):
    from quantkit.modelio import copy_tokenizer_files

    src, dst = tmp_path / "model", tmp_path / "out"
    src.mkdir(), dst.mkdir()
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    (src / "generation_config.json").symlink_to(secret)
    with pytest.raises(InputError, match=r"generation_config.json is a symlink that leaves"):
        copy_tokenizer_files(src, dst)
    (src / "generation_config.json").unlink()
    (src / "added_tokens.json").symlink_to("/etc/passwd")
    with pytest.raises(InputError, match=r"added_tokens.json is a symlink that leaves"):
        copy_tokenizer_files(src, dst)
    assert list(dst.iterdir()) == []
    (src / "added_tokens.json").unlink()
    (src / "tokenizer.json").write_text("{}")
    (src / "vocab.json").symlink_to("tokenizer.json")  # a link inside the folder is fine
    assert copy_tokenizer_files(src, dst) == ["tokenizer.json", "vocab.json"]


def test_hub_cache_snapshot_may_point_into_its_blobs(tmp_path):
    repo = tmp_path / "models--org--m"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_text("{}")
    snap = repo / "snapshots" / "rev"
    snap.mkdir(parents=True)
    (snap / "tokenizer.json").symlink_to("../../blobs/abc")
    assert inside(snap, "tokenizer.json") == snap / "tokenizer.json"


# 2. the weights index reads only inside the model folder, and never prints a file's bytes
@pytest.mark.parametrize("entry", ["../other/model.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_index_entries_outside_the_folder_are_refused(tmp_path, entry):
    from quantkit.modelio import weight_files

    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model.safetensors").write_bytes(b"x" * 16)
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": entry}}))
    with pytest.raises(InputError, match=r"only names inside the folder are allowed"):
        weight_files(model)


def test_text_file_as_weights_does_not_print_its_first_bytes(tmp_path):
    from quantkit.modelio import check_weights

    (tmp_path / "model.safetensors").write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(InputError) as exc:
        check_weights(tmp_path)
    leaked = str(struct.unpack("<Q", b"root:x:0")[0])
    assert leaked not in str(exc.value) and "not a safetensors file" in str(exc.value)


# 3. formula injection: CSV cells get a leading ', xlsx cells are strings
@pytest.mark.parametrize("text", ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx"])
def test_csv_cells_starting_a_formula_are_neutralised(text):
    assert csv_cell(text).startswith("'") and csv_cell(3) == 3


# 4. terminal escapes
def test_control_characters_are_escaped_for_terminals():
    assert terminal_safe("a\x1b]0;pwned\x07b\x9bc\nd") == "a\\x1b]0;pwned\\x07b\\x9bc\nd"
    assert xlsx_text("a\x1b\x00b") == "ab"


# 5. --force deletes only what quantkit wrote
def test_replaceable_needs_a_manifest_and_nothing_foreign(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    assert outputs.replaceable(ckpt) is None  # empty
    (ckpt / "config.json").write_text(json.dumps({"quantization_config": {"quantkit": {}}}))
    assert "no valid .quantkit-manifest.json" in outputs.replaceable(ckpt)  # merely looks like one
    outputs.write_manifest(ckpt)
    assert outputs.replaceable(ckpt) is None
    (ckpt / "my_results.txt").write_text("mine")
    (ckpt / "experiments").mkdir()
    assert outputs.replaceable(ckpt) == ("holds files quantkit did not write (experiments, my_results.txt): "
                                        "move them out first")
    (ckpt / "my_results.txt").unlink()
    (ckpt / "experiments").rmdir()
    (ckpt / "config.json").write_text("changed by the user")
    assert "config.json" in outputs.replaceable(ckpt)


# 8. crash-safe replace: one atomic exchange, and leftovers of killed runs are removed
def test_replace_uses_an_atomic_exchange(tmp_path, monkeypatch):
    from quantkit import fsutil

    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    calls = []
    real = fsutil.exchange_paths
    monkeypatch.setattr(fsutil, "exchange_paths", lambda a, b: calls.append((a, b)) or real(a, b))
    monkeypatch.setattr(fsutil.os, "rename", lambda *a: pytest.fail("two-step rename used"))
    with fsutil.atomic_dir(out, replace=True) as tmp:
        (tmp / "new").write_text("new")
    assert calls and os.listdir(out) == ["new"] and sorted(os.listdir(tmp_path)) == ["out"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_killed_runs_are_removed_only_if_ours(tmp_path):
    out = tmp_path / "ckpt"
    partial = tmp_path / ".ckpt.tmp-abc123"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    (partial / outputs.PARTIAL_MARKER).write_text(f"{_dead_pid()}\n")
    old = tmp_path / ".ckpt.old-deadbeef"
    old.mkdir()
    (old / "config.json").write_text("{}")
    outputs.write_manifest(old)
    alive = tmp_path / ".ckpt.tmp-live"
    alive.mkdir()
    (alive / outputs.PARTIAL_MARKER).write_text(f"{os.getpid()}\n")
    foreign = tmp_path / ".ckpt.tmp-user"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for p in (partial, old, alive, foreign):
        os.utime(p, (outputs._RUN_START - 60, outputs._RUN_START - 60))
    assert sorted(p.name for p in outputs.remove_leftovers(out)) == [old.name, partial.name]
    assert alive.is_dir() and (foreign / "notes.txt").read_text() == "mine"


# 9. bombs: YAML aliases refused, sizes checked before reading
def test_yaml_aliases_are_refused(tmp_path):
    bomb = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (tmp_path / "plan.yaml").write_text(bomb)
    with pytest.raises(ConfigError, match=r"^plan file .* is not valid YAML at line 2: aliases \(\*a\) are "
                                          r"not allowed$"):
        load_yaml_file(tmp_path / "plan.yaml", "plan file")


def test_big_files_are_refused_before_reading(tmp_path):
    from quantkit.boundary.data import load_json_file

    big = tmp_path / "config.json"
    with open(big, "wb") as fh:  # sparse: no disk used
        fh.truncate(65 * 2**20)
    with pytest.raises(InputError, match=r"over the 67,108,864-byte limit"):
        load_json_file(big, "config.json")


# 10. recursion and overflow are one-line errors
def test_deep_json_and_yaml_and_huge_floats(tmp_path):
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_json("[" * 100_000 + "]" * 100_000, "config.json")
    with pytest.raises(ConfigError, match="1e400 is out of the range"):
        parse_json('{"a": 1e400}', "config.json")
    (tmp_path / "r.yaml").write_text("a: " + "[" * 200 + "]" * 200)
    with pytest.raises(ConfigError, match="nested deeper than 64 levels"):
        load_yaml_file(tmp_path / "r.yaml", "recipe")


def test_path_components_over_255_bytes(tmp_path):
    with pytest.raises(InputError, match=r"a path component is longer than 255 bytes \(300\)"):
        check_path(tmp_path / ("a" * 300))


# 11. FIFO and devices are named, not "no such file"
def test_fifo_and_devices_are_named(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"is a FIFO \(named pipe\), not a regular file"):
        regular_file(fifo, "config.json")
    with pytest.raises(InputError, match=r"is a character device, not a regular file"):
        regular_file("/dev/zero", "config.json")


def test_non_finite_numbers_become_null_and_are_listed():
    obj, bad = finite_json({"results": [{"perplexity": float("nan"), "nll": 1.5}]})
    assert obj == {"results": [{"perplexity": None, "nll": 1.5}]} and bad == ["results[0].perplexity = nan"]
    json.dumps(obj, allow_nan=False)


# 7. overlapping tensor offsets, and malformed shapes
@pytest.mark.parametrize("header, pattern", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, r"overlaps the previous tensor"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, r"overlaps the previous tensor"),
    ({"a": {"dtype": "F32", "shape": [None], "data_offsets": [0, 8]}}, r"shape must be a list"),
    ({"a": {"dtype": "F32", "shape": [-1, 0], "data_offsets": [0, 0]}}, r"shape must be a list"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, r"4 bytes before tensor 'a' belong to no tensor"),
    ({"a": {"dtype": 7, "shape": [2], "data_offsets": [0, 8]}}, r"is not a safetensors dtype name"),
])
def test_bad_safetensors_headers(tmp_path, header, pattern):
    from quantkit.modelio import check_weights

    _safetensors(tmp_path / "model.safetensors", header, b"\0" * 16)
    with pytest.raises(InputError, match=pattern):
        check_weights(tmp_path)
