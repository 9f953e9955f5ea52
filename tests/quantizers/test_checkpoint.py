"""Checkpoint writing is atomic; reading refuses foreign, newer or damaged checkpoints by name."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import quantkit
from quantkit.errors import ConfigError, InputError, OutputExistsError
from quantkit.modelbuild import build_model
from quantkit.quantizers import checkpoint
from quantkit.quantizers.checkpoint import atomic_output_dir, load_quantized, save_quantized

CONFIG = quantkit.QuantConfig(method="int8")


@pytest.fixture
def quantized(tiny_model):
    model = build_model(tiny_model("llama"))
    quantkit.quantize(model, CONFIG, progress=False)
    return model


@pytest.fixture
def saved(quantized, tmp_path):
    return save_quantized(quantized, tmp_path / "q", CONFIG)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_existing_output_refused_then_replaced_with_force(quantized, tmp_path):
    out = tmp_path / "q"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(OutputExistsError, match=r"^'.*/q' exists; pass --force to replace it$"):
        save_quantized(quantized, out, CONFIG)
    assert (out / "keep.txt").read_text() == "old"
    # --force never deletes a folder that is neither empty nor a quantkit checkpoint.
    with pytest.raises(InputError, match=r"^--force replaces only an empty folder or a quantkit checkpoint, "
                                         r"and '.*/q' holds other files"):
        save_quantized(quantized, out, CONFIG, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (out / "keep.txt").unlink()
    save_quantized(quantized, out, CONFIG, force=True)  # an empty folder is replaced
    save_quantized(quantized, out, CONFIG, force=True)  # so is a quantkit checkpoint, all of it
    assert (out / "model.safetensors").is_file() and (out / ".quantkit-manifest.json").is_file()
    (out / "stale.txt").write_text("old")  # but not with a file quantkit did not write
    with pytest.raises(InputError, match=r"holds files quantkit did not write \(stale.txt\)"):
        save_quantized(quantized, out, CONFIG, force=True)
    assert (out / "stale.txt").read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_failure_mid_write_leaves_nothing(quantized, tmp_path, monkeypatch):
    def broken(state, folder, max_shard_bytes):
        (folder / "model-00001-of-00002.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(checkpoint, "write_shards", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_quantized(quantized, tmp_path / "q", CONFIG)
    assert not (tmp_path / "q").exists() and _leftovers(tmp_path) == []

    # With --force, the old checkpoint survives a failed replacement untouched.
    monkeypatch.undo()
    save_quantized(quantized, tmp_path / "q", CONFIG)
    before = {p.name: p.read_bytes() for p in (tmp_path / "q").iterdir()}
    monkeypatch.setattr(checkpoint, "write_shards", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        save_quantized(quantized, tmp_path / "q", CONFIG, force=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "q").iterdir()} == before
    assert _leftovers(tmp_path) == []


def test_atomic_output_dir_on_keyboard_interrupt(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(tmp_path / "x") as tmp:
            (tmp / "a").write_text("a")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def _edit_config(folder, fn):
    cfg = json.loads((folder / "config.json").read_text())
    fn(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_load_refuses_unquantized_and_unknown_methods(saved, tiny_model):
    with pytest.raises(ConfigError, match=r"has no quantization_config: not a quantized checkpoint"):
        load_quantized(tiny_model("llama"))
    ids = torch.arange(1, 9)[None]
    with torch.no_grad():
        before = load_quantized(saved)(ids).logits
    # without the quantkit block it is a plain compressed-tensors pack-quantized folder: still read
    _edit_config(saved, lambda c: c["quantization_config"].pop("quantkit"))
    with torch.no_grad():
        assert torch.equal(load_quantized(saved)(ids).logits, before)
    _edit_config(saved, lambda c: c["quantization_config"].update(quant_method="awq"))
    with pytest.raises(ConfigError, match=r"quantization_config \(quant_method 'awq'\) is not one quantkit reads"):
        load_quantized(saved)


def test_load_refuses_newer_format(saved):
    _edit_config(saved, lambda c: c["quantization_config"]["quantkit"].update(version=3))
    with pytest.raises(ConfigError, match=r"quantkit checkpoint format version 3, this quantkit reads versions 1, 2$"):
        load_quantized(saved)


def test_load_names_mismatched_tensors(saved):
    path = saved / "model.safetensors"
    state = load_file(str(path))
    name = "model.layers.2.self_attn.o_proj"
    good = dict(state)
    state[f"{name}.weight_packed"] = state[f"{name}.weight_packed"].to(torch.bfloat16)
    save_file(state, str(path))
    with pytest.raises(InputError, match=rf"'{name}.weight_packed' torch.bfloat16 \(64, 16\) does not hold "
                                         r"64 x 64 packed 4- or 8-bit values$"):
        load_quantized(saved)
    state = dict(good)
    del state[f"{name}.weight_scale"]
    save_file(state, str(path))
    with pytest.raises(InputError, match=rf"lacks tensor '{name}.weight_scale'"):
        load_quantized(saved)
    state = dict(good)
    state[f"{name}.weight_scale"] = torch.ones(64, 2, dtype=torch.bfloat16)
    save_file(state, str(path))
    with pytest.raises(InputError, match=rf"tensor '{name}.weight_scale' .* has shape \(64, 2\), .* needs \(64, 1\)"):
        load_quantized(saved)


def test_load_truncated_checkpoint_names_tensor(saved):
    path = saved / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(InputError, match=r"model.safetensors is truncated: tensor '[\w.]+' needs bytes"):
        load_quantized(saved)


def test_load_unknown_quantized_module(saved):
    _edit_config(saved, lambda c: c["quantization_config"]["quantkit"]["quantized_modules"].append("model.nope"))
    with pytest.raises(InputError, match=r"quantized module 'model.nope' does not exist"):
        load_quantized(saved)


def test_save_creates_missing_parents_refuses_a_file_parent_and_the_model_folder(quantized, tiny_model, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"^cannot write '.*/file/q': the folder '.*/file' is not a folder$"):
        save_quantized(quantized, tmp_path / "file" / "q", CONFIG)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
    save_quantized(quantized, tmp_path / "missing" / "q", CONFIG)  # missing parents are created
    assert (tmp_path / "missing" / "q" / "config.json").is_file()
    src = tiny_model("llama")
    files = sorted(p.name for p in src.iterdir())
    for out, why in ((src, "is the MODEL folder"), (src.parent, "contains the MODEL folder"),
                     (src / "q", "is inside the MODEL folder")):
        with pytest.raises(InputError, match=why):
            save_quantized(quantized, out, CONFIG, source_dir=src, force=True)
    assert sorted(p.name for p in src.iterdir()) == files


def test_checkpoint_modes_follow_the_umask(quantized, tmp_path):
    import os

    old = os.umask(0o077)
    try:
        save_quantized(quantized, tmp_path / "q", CONFIG, max_shard_bytes=20_000)
    finally:
        os.umask(old)
    assert (tmp_path / "q").stat().st_mode & 0o777 == 0o700
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "q").iterdir()}
    assert "model.safetensors.index.json" in modes and set(modes.values()) == {0o600}
