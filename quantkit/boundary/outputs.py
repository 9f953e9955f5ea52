"""Outputs: created new or replaced only with --force, and --force deletes only what quantkit wrote.

- ``check_output_file(path, force, flag)``: before any work, an output file's folder exists and is
  writable, the path is not a folder, and an existing file is refused without ``force`` (and must
  itself be writable with it).
- ``write_manifest(folder)`` / ``read_manifest(folder)``: ``.quantkit-manifest.json`` in every
  checkpoint folder quantkit writes, listing every file it wrote (relative path -> bytes).
- ``replaceable(folder)``: why a folder may not be replaced by ``--force`` (None if it may): it
  must be empty, or hold a valid manifest and nothing that the manifest does not list. A folder
  that merely looks like a checkpoint, or a checkpoint with the user's files next to quantkit's,
  is refused with the names of the foreign entries.
- ``PARTIAL_MARKER``: a file quantkit puts in a temporary output folder the moment it creates it
  (holding its process id); ``remove_leftovers(out)`` deletes ``.NAME.tmp-*`` / ``.NAME.old-*``
  folders next to ``out`` that carry the marker (of a process that is gone) or a valid manifest,
  and are older than this run. Anything else with such a name is left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from quantkit.boundary.paths import check_path, shown
from quantkit.errors import InputError, OutputExistsError

MANIFEST = ".quantkit-manifest.json"
PARTIAL_MARKER = ".quantkit-partial"
_RUN_START = time.time()  # seconds; leftovers must be older than this process


def check_output_file(path, force: bool, flag: str) -> Path:
    """``InputError``/``OutputExistsError`` now, before any work, if ``path`` cannot be written."""
    path = check_path(path, flag)
    parent = path.parent
    if path.is_dir():
        raise InputError(f"{flag}: '{shown(path)}' is a folder; give a file name")
    if not parent.is_dir():
        why = "is not a folder" if parent.exists() else "does not exist"
        raise InputError(f"{flag}: cannot write '{shown(path)}': the folder '{shown(parent)}' {why}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag}: cannot write '{shown(path)}': the folder '{shown(parent)}' is not writable")
    if path.exists() or path.is_symlink():
        if not force:
            raise OutputExistsError(f"{flag}: '{shown(path)}' exists; pass --force to overwrite it")
    return path


def _files(folder: Path) -> dict[str, int]:
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in files:
            full = Path(root) / name
            rel = full.relative_to(folder).as_posix()
            if rel not in (MANIFEST, PARTIAL_MARKER):
                out[rel] = full.lstat().st_size
    return out


def write_manifest(folder) -> None:
    """List every file under ``folder`` (relative path -> bytes) in its manifest."""
    folder = Path(folder)
    body = {"format": "quantkit-manifest", "version": 1, "files": dict(sorted(_files(folder).items()))}
    (folder / MANIFEST).write_text(json.dumps(body, indent=2) + "\n")


def read_manifest(folder) -> dict[str, int] | None:
    """{relative path: bytes} of ``folder``'s manifest, or None if it has no valid one."""
    path = Path(folder) / MANIFEST
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 16 * 2**20:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and data.get("format") == "quantkit-manifest"
            and isinstance(data.get("files"), dict)):
        return None
    files = data["files"]
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in files.items()):
        return None
    return files


def replaceable(folder) -> str | None:
    """None if ``--force`` may delete ``folder``; else why not ("is not a folder", "holds ..."),
    to follow the folder's name in a one-line error."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return "is not a folder"
    entries = list(folder.iterdir())
    if not entries:
        return None
    listed = read_manifest(folder)
    if listed is None:
        return f"holds other files (no valid {MANIFEST} listing the files quantkit wrote there)"
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            if (Path(root) / name).is_symlink():
                files.append(name)
        for name in files:
            rel = (Path(root) / name).relative_to(folder).as_posix()
            if rel not in (MANIFEST, PARTIAL_MARKER):
                found[rel] = (Path(root) / name)
    foreign = sorted(rel for rel, p in found.items()
                     if rel not in listed or p.is_symlink() or p.lstat().st_size != listed[rel])
    empty_dirs = sorted(Path(r).relative_to(folder).as_posix() for r, d, f in os.walk(folder)
                        if not d and not f and Path(r) != folder)
    foreign = sorted(foreign + empty_dirs)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        names = ", ".join(shown(n) for n in foreign[:3])
        return f"holds files quantkit did not write ({names}{more}): move them out first"
    return None


def mark_partial(folder) -> None:
    """Put the marker that proves a temporary folder is quantkit's (with this process id)."""
    (Path(folder) / PARTIAL_MARKER).write_text(f"{os.getpid()}\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours_and_stale(folder: Path) -> bool:
    if folder.is_symlink() or not folder.is_dir():
        return False
    try:
        if folder.lstat().st_mtime >= _RUN_START:
            return False
        marker = folder / PARTIAL_MARKER
        if marker.is_file() and not marker.is_symlink():
            text = marker.read_text()[:32].strip()
            return text.isdigit() and not _pid_alive(int(text))
    except OSError:
        return False
    return read_manifest(folder) is not None and replaceable(folder) is None


def remove_leftovers(out) -> list[Path]:
    """Delete ``.NAME.tmp-*`` and ``.NAME.old-*`` folders next to ``out`` left by interrupted
    runs (provably quantkit's, see the module doc); return what was removed."""
    out = Path(out)
    parent = out.parent
    removed = []
    try:
        candidates = [p for p in parent.iterdir()
                      if p.name.startswith((f".{out.name}.tmp-", f".{out.name}.old-"))]
    except OSError:
        return removed
    for p in candidates:
        if _ours_and_stale(p):
            shutil.rmtree(p)
            removed.append(p)
    return removed
