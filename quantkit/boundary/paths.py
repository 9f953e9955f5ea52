"""Paths from the user and files inside a model folder.

- ``check_path(text, what)``: a path argument the OS can take (``InputError`` otherwise).
- ``regular_file(path, what)``: ``path`` is an existing regular file (symlinks followed); a FIFO,
  device, socket or folder is refused by name, so nothing blocks on a FIFO or reads /dev/zero.
- ``inside(folder, name)``: the path of ``name`` in ``folder`` if it stays there (see module doc of
  ``quantkit.boundary``); refuses ``..``, absolute names and symlinks that leave the folder.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from quantkit.errors import InputError

NAME_MAX = 255  # bytes per path component (Linux, macOS)
PATH_MAX = 4096  # bytes per path (Linux)


def shown(path) -> str:
    """A path for a one-line message: control characters escaped, long ones shortened."""
    from quantkit.boundary.text import terminal_safe

    text = terminal_safe(str(path))
    return text if len(text) <= 200 else text[:120] + "..." + text[-60:]


def check_path(text, what: str = "path") -> Path:
    """``Path(text)`` after checking the OS can take it: no NUL byte, components of at most 255
    bytes, at most 4,096 bytes in all (the OS would raise ENAMETOOLONG or ValueError later)."""
    raw = os.fsencode(os.fspath(text))
    if b"\0" in raw:
        printable = os.fsdecode(raw.replace(b"\0", b"?"))
        raise InputError(f"{what} {shown(printable)}: contains a NUL byte")
    if len(raw) > PATH_MAX:
        raise InputError(f"{what} {shown(text)}: longer than {PATH_MAX} bytes")
    for part in raw.split(b"/"):
        if len(part) > NAME_MAX:
            raise InputError(f"{what} {shown(text)}: a path component is longer than {NAME_MAX} bytes "
                             f"({len(part)})")
    return Path(os.fsdecode(raw))


def file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def regular_file(path, what: str = "file") -> os.stat_result:
    """``os.stat`` of ``path`` if it is a regular file; ``InputError`` naming what it is otherwise."""
    path = check_path(path, what)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{what} {shown(path)}: no such file") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {shown(path)}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} {shown(path)} is {file_kind(st.st_mode)}, not a regular file")
    return st


def _hub_blobs(folder: Path) -> Path | None:
    # huggingface_hub's cache: <cache>/models--org--name/snapshots/<revision>/<file> is a symlink
    # to ../../blobs/<hash>. Those targets belong to the same repository and are allowed.
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent / "blobs"
    return None


def inside(folder, name: str, what: str = "file") -> Path:
    """Path of ``name`` within ``folder``, refusing any way out of it.

    Refused (``InputError``): an absolute ``name``, a ``..`` component, and a path whose real
    location (symlinks resolved) is outside ``folder`` (a Hugging Face cache snapshot may point into
    its repository's ``blobs/``). The path need not exist.
    """
    folder = Path(folder)
    check_path(name, what)
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise InputError(f"{what} {shown(name)} in '{shown(folder)}': only names inside the folder are "
                         f"allowed (no absolute paths, no '..')")
    root = folder.resolve()
    path = folder / rel
    real = path.resolve()
    if real == root or root not in real.parents:
        blobs = _hub_blobs(root)
        if blobs is None or blobs.resolve() not in real.parents:
            raise InputError(f"{what} {shown(path)} is a symlink that leaves '{shown(folder)}'; "
                             f"quantkit reads only files inside the model folder")
    return path
