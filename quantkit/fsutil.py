"""Atomic writes: a file or a folder appears complete under its final name, or not at all.

- ``atomic_write(path, data)``: write ``data`` (bytes, str, or a ``write(fh)`` callback) to a temp
  file in the same folder, fsync it, give it the mode a plain ``open(path, "w")`` would
  (``0o666 & ~umask``: ``mkstemp`` makes 0600 files), then ``os.replace`` it onto ``path``.
- ``atomic_dir(out, replace=...)``: yield a temp folder next to ``out`` (marked as quantkit's with
  ``boundary.outputs.PARTIAL_MARKER`` so that a later run may remove it if this one is killed); on
  success its files get the default modes and are fsynced, and it is renamed to ``out``. An
  existing ``out`` is swapped with it in one atomic ``renameat2(RENAME_EXCHANGE)`` where the OS
  offers it (so ``out`` never goes missing, even in a crash), else moved aside first; the old one
  is deleted only once the new folder is in place. On any error the temp folder is removed.

OS errors become ``InputError("cannot write PATH: reason")``; the temp file or folder never stays.
Both need the parent folder to exist: they create no folders above the target.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import IO, Callable, Union

from quantkit.boundary.outputs import PARTIAL_MARKER, mark_partial
from quantkit.errors import InputError, OutputExistsError

Data = Union[bytes, str, Callable[[IO[bytes]], None]]


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it in /proc (``os.umask``
    can only be read by setting it, which briefly affects files other threads create)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a file made by a plain ``open(path, "w")``: 0o666 minus the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode of a folder made by a plain ``mkdir``: 0o777 minus the umask."""
    return 0o777 & ~current_umask()


def atomic_write(path, data: Data, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    overwrite: False refuses (``OutputExistsError``) a ``path`` that exists when the new file is
    ready to be renamed onto it. On failure nothing is left behind and ``path`` is untouched.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), file_mode())
        if not overwrite and (path.exists() or path.is_symlink()):  # appeared while we worked
            raise OutputExistsError(f"{path} exists; pass --force to overwrite it")
        os.replace(tmp, path)
    except OSError as exc:
        _remove_file(tmp)
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _remove_file(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(out, *, replace: bool = False):
    """Yield a fresh temp folder next to ``out``; on success it becomes ``out``, on any error
    (KeyboardInterrupt included) it is removed and ``out`` is untouched.

    replace: an existing ``out`` (folder, file or symlink) is moved aside, the new folder renamed
    in, and only then the old one deleted; without it an existing ``out`` raises
    ``OutputExistsError``. Deciding whether ``out`` may be replaced is the caller's job.
    """
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not replace:
        raise OutputExistsError(f"'{out}' exists; pass --force to replace it")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise InputError(f"cannot write '{out}': {exc.strerror or exc}") from None
    try:
        mark_partial(tmp)
        yield tmp
        try:
            (tmp / PARTIAL_MARKER).unlink()
            _finish_tree(tmp)
            _swap_in(tmp, out, replace)
        except OSError as exc:
            raise InputError(f"cannot write '{out}': {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    fsync_dir(out.parent)


def _swap_in(tmp: Path, out: Path, replace: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        os.rename(tmp, out)
        return
    if not replace:
        raise OutputExistsError(f"'{out}' exists; pass --force to replace it")
    if exchange_paths(tmp, out):  # out now holds the new folder, tmp the old one
        old = tmp
    else:
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)  # put the previous output back
            raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()  # a file, or a symlink (its target is left alone)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two directory entries atomically (Linux ``renameat2(RENAME_EXCHANGE)``). False where
    the OS or filesystem does not offer it (the caller then renames in two steps); other errors
    raise ``OSError``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _finish_tree(folder: Path) -> None:
    # mkdtemp makes a 0700 folder and some writers (mkstemp) 0600 files: give the output the modes
    # a plain mkdir/open would have, and fsync every file and folder so that the rename that
    # publishes it never exposes empty files after a crash.
    fmode, dmode = file_mode(), dir_mode()
    for root, dirs, files in os.walk(folder):
        for name in files:
            f = os.path.join(root, name)
            os.chmod(f, fmode)
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for name in dirs:
            os.chmod(os.path.join(root, name), dmode)
        fsync_dir(root)
    os.chmod(folder, dmode)


def fsync_dir(folder) -> None:
    """fsync a folder so that renames into it are durable. Filesystems that cannot fsync a folder
    (EINVAL/ENOTSUP on some network and FUSE mounts) are accepted: the rename itself is done."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        raise InputError(f"cannot open folder {folder}: {exc.strerror or exc}") from None
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise InputError(f"cannot sync folder {folder}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _remove_file(tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
