"""quantkit.fsutil: atomic file and folder writes, default modes, nothing left behind on failure."""

import os

import pytest

from quantkit import fsutil
from quantkit.errors import InputError, OutputExistsError
from quantkit.fsutil import atomic_dir, atomic_write


@pytest.fixture
def umask():
    """Set the process umask for one test: ``umask(0o027)``; restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _mode(path):
    return path.stat().st_mode & 0o777


def test_current_umask_reads_without_changing_it(umask):
    for mask in (0o022, 0o077, 0o002):
        umask(mask)
        assert fsutil.current_umask() == mask
        assert os.umask(mask) == mask  # unchanged by the read


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_gives_plain_open_modes(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write(tmp_path / "a.txt", "text")
    atomic_write(tmp_path / "b.bin", b"\x00\x01")
    atomic_write(tmp_path / "c.bin", lambda fh: fh.write(b"cb"))
    with open(tmp_path / "plain", "w") as fh:  # what atomic_write must match
        fh.write("x")
    assert {p.name: _mode(p) for p in tmp_path.iterdir()} == {n: mode for n in ("a.txt", "b.bin", "c.bin", "plain")}
    assert (tmp_path / "a.txt").read_text() == "text" and (tmp_path / "c.bin").read_bytes() == b"cb"


def test_atomic_write_replace_refuse_and_failure(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    with pytest.raises(OutputExistsError, match=r"f\.json exists; pass --force to overwrite it$"):
        atomic_write(path, "new", overwrite=False)
    assert path.read_text() == "old"

    def broken(fh):
        fh.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, broken)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]
    atomic_write(path, "new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["f.json"]


def test_atomic_write_missing_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match=r"^cannot write .*/missing/f\.txt: No such file or directory$"):
        atomic_write(tmp_path / "missing" / "f.txt", "x")
    assert list(tmp_path.iterdir()) == []  # the folder is not created


def test_atomic_dir_modes_and_fsync(tmp_path, umask, monkeypatch):
    umask(0o022)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                        real_fsync(fd)))
    with atomic_dir(tmp_path / "out") as tmp:
        fd = os.open(tmp / "secret", os.O_WRONLY | os.O_CREAT, 0o600)  # as mkstemp/safetensors do
        os.write(fd, b"w")
        os.close(fd)
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "f").write_text("x")
    out = tmp_path / "out"
    assert (_mode(out), _mode(out / "secret"), _mode(out / "sub"), _mode(out / "sub" / "f")) == \
        (0o755, 0o644, 0o755, 0o644)
    names = {os.path.basename(p) for p in synced}
    assert {"secret", "f", "sub", tmp_path.name} <= names  # files, folders and the parent
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_dir_replace_and_failure_keep_the_old_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(OutputExistsError, match=r"^'.*/out' exists; pass --force to replace it$"):
        with atomic_dir(out):
            pass
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with atomic_dir(out, replace=True) as tmp:
                (tmp / "new").write_text("new")
                raise exc
        assert os.listdir(out) == ["old"] and sorted(os.listdir(tmp_path)) == ["out"]
    with atomic_dir(out, replace=True) as tmp:
        (tmp / "new").write_text("new")
    assert os.listdir(out) == ["new"] and sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_dir_failed_rename_restores_the_old_folder(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    real_rename = os.rename

    def rename(src, dst):
        if ".tmp-" in str(src):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(fsutil.os, "rename", rename)
    monkeypatch.setattr(fsutil, "exchange_paths", lambda a, b: False)  # the two-rename fallback
    with pytest.raises(InputError, match=r"^cannot write '.*/out': No space left on device$"):
        with atomic_dir(out, replace=True) as tmp:
            (tmp / "new").write_text("new")
    assert os.listdir(out) == ["old"] and sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_dir_replaces_a_symlink_not_its_target(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("k")
    (tmp_path / "link").symlink_to(target)
    with atomic_dir(tmp_path / "link", replace=True) as tmp:
        (tmp / "new").write_text("n")
    assert not (tmp_path / "link").is_symlink() and os.listdir(tmp_path / "link") == ["new"]
    assert os.listdir(target) == ["keep"]


def test_atomic_dir_creates_no_parent_folders(tmp_path):
    with pytest.raises(InputError, match=r"^cannot write '.*/missing/out': No such file or directory$"):
        with atomic_dir(tmp_path / "missing" / "out"):
            pass
    assert list(tmp_path.iterdir()) == []
