"""safetensors headers, checked entry by entry before any tensor byte is read.

``check_entries(file_name, tensors, data_start, file_size, dtype_sizes)`` refuses (``InputError`` naming the
file and tensor) what the safetensors library itself refuses: an entry that is not
``{"dtype": str, "shape": [int >= 0, ...], "data_offsets": [begin, end]}`` with integer offsets,
a dtype that is not a safetensors dtype name, a byte count that does not match the shape
(for the dtypes of ``modelio._ST_DTYPES``), offsets past the data, and tensors
whose byte ranges overlap or leave holes (the data must be covered exactly, in order).
"""

from __future__ import annotations

import re

from quantkit.boundary.text import one_line
from quantkit.errors import InputError

_DTYPE_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,15}")  # BF16, F8_E4M3, F8_E8M0, F4 ...
MAX_DIMS = 16
MAX_ELEMENTS = 2**62


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _entry(file_name: str, name: str, info, dtype_sizes: dict) -> tuple[int, int]:
    bad = f"{file_name} is corrupted: bad header entry for tensor '{one_line(name)[:200]}'"
    if not isinstance(info, dict):
        raise InputError(f"{bad} (not an object)")
    offsets, shape, dtype = info.get("data_offsets"), info.get("shape"), info.get("dtype")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise InputError(f"{bad} (data_offsets must be two integers, 0 <= begin <= end)")
    if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(_is_int(d) and d >= 0 for d in shape)):
        raise InputError(f"{bad} (shape must be a list of at most {MAX_DIMS} non-negative integers)")
    if not isinstance(dtype, str) or not _DTYPE_NAME.fullmatch(dtype):
        raise InputError(f"{bad} (dtype {one_line(str(dtype))[:40]!r} is not a safetensors dtype name)")
    numel = 1
    for d in shape:
        numel *= d
        if numel > MAX_ELEMENTS:
            raise InputError(f"{bad} (shape {shape} is too large)")
    begin, end = offsets
    if dtype in dtype_sizes and end - begin != numel * dtype_sizes[dtype]:  # others: sub-byte, new
        raise InputError(f"{file_name} is corrupted: tensor '{one_line(name)[:200]}' has {end - begin} bytes "
                         f"for shape {shape} {dtype}")
    return begin, end


def check_entries(file_name: str, tensors: dict, data_start: int, file_size: int, dtype_sizes: dict) -> None:
    """Validate every entry of a safetensors header (see the module doc); ``data_start`` is 8 plus
    the header length (where offset 0 lies in the file), ``file_size`` the file's bytes."""
    spans = sorted((_entry(file_name, name, info, dtype_sizes) + (name,) for name, info in tensors.items()))
    position = 0
    for begin, end, name in spans:
        if begin < position:
            raise InputError(f"{file_name} is corrupted: tensor '{one_line(name)[:200]}' overlaps the "
                             f"previous tensor's bytes (offset {begin} < {position})")
        if begin > position:
            raise InputError(f"{file_name} is corrupted: {begin - position} bytes before tensor "
                             f"'{one_line(name)[:200]}' belong to no tensor")
        if data_start + end > file_size:
            raise InputError(f"{file_name} is truncated: tensor '{one_line(name)[:200]}' needs bytes up to "
                             f"{data_start + end}, the file has {file_size}")
        position = end
