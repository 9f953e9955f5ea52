"""Safetensors in and out one tensor at a time, for the streaming quantizer.

- ``tensor_locations(model_dir)``: {name: ``Loc``} from the headers of every shard (validated by
  ``modelio.check_safetensors_file``); nothing but headers is read.
- ``read_tensor(loc)``: one tensor by plain ``preadv`` into a fresh tensor (no memory map: a
  map keeps every page it touched resident, so reading a 26 GB model through one would count
  26 GB against the process).
- ``ShardWriter``: appends tensors to output shards of at most ``max_shard_bytes`` as they come,
  from a background thread; each shard's header is written last, into space reserved at the
  start of the file and padded with spaces (the safetensors format allows header padding), so
  no shard is ever held in memory. Names and the index follow ``checkpoint.write_shards``:
  one shard is ``model.safetensors``, more are ``model-0000k-of-0000n.safetensors`` plus
  ``model.safetensors.index.json`` written last.
"""

from __future__ import annotations

import json
import os
import queue
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from quantkit.errors import InputError
from quantkit.modelio import _ST_DTYPES, check_safetensors_file, weight_files


@dataclass(frozen=True)
class Loc:
    """Where one tensor lies: file, absolute byte offset and length, safetensors dtype, shape."""

    path: Path
    file_index: int
    offset: int  # bytes from the start of the file
    nbytes: int
    dtype: str  # safetensors name: "BF16", "F32", ...
    shape: tuple

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, _ST_DTYPES[self.dtype][1])


def tensor_locations(model_dir) -> dict[str, Loc] | None:
    """{name: Loc} of a safetensors checkpoint, in file then offset order; None for legacy .bin
    checkpoints. ``InputError`` for a truncated or corrupted header, an unknown dtype, a tensor
    stored twice, or an index entry that its file lacks."""
    kind, files, weight_map = weight_files(model_dir)
    if kind != "safetensors":
        return None
    locs: dict[str, Loc] = {}
    for i, path in enumerate(files):
        tensors = check_safetensors_file(path)
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
        for name, info in sorted(tensors.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if info["dtype"] not in _ST_DTYPES:
                raise InputError(f"{path.name}: tensor '{name}' has dtype {info['dtype']}, which quantkit cannot read")
            if name in locs:
                raise InputError(f"tensor '{name}' is stored twice ({locs[name].path.name} and {path.name})")
            begin, end = info["data_offsets"]
            locs[name] = Loc(path, i, 8 + n + begin, end - begin, info["dtype"], tuple(info["shape"]))
        if weight_map is not None:
            missing = sorted(k for k, f in weight_map.items() if f == path.name and k not in tensors)
            if missing:
                raise InputError(f"{path.name} lacks tensor '{missing[0]}' that the index places in it")
    return locs


def read_tensor(loc: Loc):
    """The tensor at ``loc`` as a new CPU tensor in its stored dtype (``InputError`` if the file
    ends early)."""
    import torch

    t = torch.empty(loc.shape, dtype=loc.torch_dtype)
    if loc.nbytes == 0:
        return t
    buf = memoryview(t.reshape(-1).view(torch.uint8).numpy())
    fd = os.open(loc.path, os.O_RDONLY)
    try:
        done = 0
        while done < loc.nbytes:  # Linux returns at most ~2 GiB per call
            got = os.preadv(fd, [buf[done:]], loc.offset + done)
            if got <= 0:
                raise InputError(f"{loc.path.name} is truncated: a tensor ends past the end of the file")
            done += got
    finally:
        os.close(fd)
    return t


_TORCH_TO_ST = None


def _st_dtype(dtype) -> str:
    global _TORCH_TO_ST
    if _TORCH_TO_ST is None:
        import torch

        _TORCH_TO_ST = {getattr(torch, tname): st for st, (_, tname) in _ST_DTYPES.items() if hasattr(torch, tname)}
    return _TORCH_TO_ST[dtype]


class ShardWriter:
    """Append tensors to safetensors shards of at most ``max_shard_bytes`` of tensor data in
    ``folder`` (a bigger tensor gets a shard of its own), written by one background thread.

    ``header_reserve``: bytes kept for each shard's header; a shard whose header would outgrow
    it is closed early. ``add`` may block while ``max_pending`` tensors wait to be written
    (that bounds the memory held here). ``close`` returns (file names, {tensor: file}, bytes).
    """

    def __init__(self, folder, max_shard_bytes: int, header_reserve: int = 1 << 16, max_pending: int = 4):
        if max_shard_bytes <= 0:
            raise InputError(f"max shard size must be positive, got {max_shard_bytes}")
        self.folder = Path(folder)
        self.max_shard_bytes = max_shard_bytes
        self.reserve = (max(header_reserve, 64) + 7) // 8 * 8  # 8-byte aligned, as safetensors pads
        self.total_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self._header: dict = {}
        self._header_len = 0
        self._size = 0
        self._fd = None
        self._ops: queue.Queue = queue.Queue(max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="quantkit-shard-writer", daemon=True)
        self._thread.start()

    def add(self, name: str, tensor) -> None:
        """Queue ``tensor`` (any device; written contiguous, as stored) under ``name``."""
        self._raise_pending()
        t = tensor.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        entry = {"dtype": _st_dtype(t.dtype), "shape": list(t.shape),
                 "data_offsets": [self._size, self._size + nbytes]}
        entry_len = len(json.dumps({name: entry})) + 1
        full = self._fd is not None and (self._size + nbytes > self.max_shard_bytes
                                         or self._header_len + entry_len > self.reserve - 64)
        if self._fd is None or full:
            self._next_shard()
            entry["data_offsets"] = [0, nbytes]
            entry_len = len(json.dumps({name: entry})) + 1
            if entry_len > self.reserve - 64:
                raise InputError(f"tensor name '{name[:80]}...' is too long for a shard header")
        self._header[name] = entry
        self._header_len += entry_len
        self._size += nbytes
        self.total_bytes += nbytes
        self._shards[-1][1].append(name)
        if nbytes:
            self._put(("data", self._fd, t))

    def close(self) -> tuple[list[str], dict, int]:
        """Finish the last shard, wait for every write, name the shards and write the index."""
        if self._fd is not None:
            self._finish_shard()
        self._put(None)
        self._thread.join()
        self._raise_pending()
        n = len(self._shards)
        names = (["model.safetensors"] if n == 1 else
                 [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
        weight_map = {}
        for (path, tensors), fname in zip(self._shards, names):
            os.replace(path, self.folder / fname)
            weight_map.update({k: fname for k in tensors})
        if n > 1:
            from quantkit.fsutil import atomic_write

            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            atomic_write(self.folder / "model.safetensors.index.json", json.dumps(index, indent=2) + "\n")
        return names, weight_map, self.total_bytes

    def abort(self) -> None:
        """Stop the thread after an error elsewhere (the caller removes the folder)."""
        if self._thread.is_alive():
            while True:  # drop what is queued, then stop
                try:
                    self._ops.get_nowait()
                except queue.Empty:
                    break
            self._ops.put(None)
            self._thread.join()

    # -- main thread ---------------------------------------------------------------------------

    def _next_shard(self) -> None:
        if self._fd is not None:
            self._finish_shard()
        path = self.folder / f".shard-{len(self._shards) + 1:05d}.part"
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        self._shards.append((path, []))
        self._header, self._header_len, self._size = {"__metadata__": {"format": "pt"}}, 32, 0
        self._put(("seek", self._fd, 8 + self.reserve))

    def _finish_shard(self) -> None:
        header = json.dumps(self._header, separators=(",", ":")).encode()
        if len(header) > self.reserve:  # _header_len over-counts, so this cannot happen
            raise AssertionError("shard header outgrew its reserved space")
        header += b" " * (self.reserve - len(header))
        self._put(("finish", self._fd, struct.pack("<Q", self.reserve) + header))
        self._fd = None

    def _put(self, op) -> None:
        while True:
            self._raise_pending()
            try:
                self._ops.put(op, timeout=0.5)
                return
            except queue.Full:
                continue

    def _raise_pending(self) -> None:
        if self._error is not None:
            exc = self._error
            raise InputError(f"cannot write to {self.folder}: {getattr(exc, 'strerror', None) or exc}") from None

    # -- writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        while True:
            op = self._ops.get()
            if op is None:
                return
            if self._error is not None:
                continue  # keep draining so that the main thread never blocks on a full queue
            try:
                kind, fd, arg = op
                if kind == "seek":
                    os.lseek(fd, arg, os.SEEK_SET)
                elif kind == "data":
                    _write_all(fd, memoryview(arg.reshape(-1).view(torch.uint8).numpy()))
                else:  # finish: the header goes into the reserved space at the start
                    os.lseek(fd, 0, os.SEEK_SET)
                    _write_all(fd, memoryview(arg))
                    os.close(fd)
            except BaseException as exc:  # reported to the main thread on its next call
                self._error = exc


def _write_all(fd: int, buf: memoryview) -> None:
    done = 0
    while done < len(buf):
        done += os.write(fd, buf[done:])
