"""Find, validate and load Hugging Face causal-LM folders without network and without unpickling.

- ``resolve_model_dir(model)``: a local folder (or the path of its config.json), or a Hub id
  fetched with ``huggingface_hub.snapshot_download`` (``OfflineError`` when the Hub is unreachable).
- ``read_config(model_dir)``: config.json as a dict (``ConfigError`` naming the problem).
- ``load_state_dict(model_dir)``: safetensors (single file or sharded with
  ``model.safetensors.index.json``); legacy ``pytorch_model*.bin`` only through
  ``torch.load(weights_only=True)``. Truncated or corrupted files raise ``InputError`` naming the
  file and, where the header allows, the tensor.
- ``copy_tokenizer_files(src, dst)``.

Building models from these files (``build_model``, ``empty_model``, ...) is ``quantkit.modelbuild``.

torch is imported inside the functions that need it, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from quantkit.errors import ConfigError, InputError, OfflineError

# A Hub id: "name" or "org/name" (letters, digits, '-', '_', '.'), never an absolute/relative path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")

# Tokenizer (and generation) files copied next to a quantized checkpoint when present.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)

# safetensors dtype names -> (bytes per element, torch dtype name) (format spec, huggingface/safetensors).
_ST_DTYPES = {
    "BOOL": (1, "bool"), "U8": (1, "uint8"), "I8": (1, "int8"), "F8_E4M3": (1, "float8_e4m3fn"),
    "F8_E5M2": (1, "float8_e5m2"), "I16": (2, "int16"), "U16": (2, "uint16"), "F16": (2, "float16"),
    "BF16": (2, "bfloat16"), "I32": (4, "int32"), "U32": (4, "uint32"), "F32": (4, "float32"),
    "I64": (8, "int64"), "U64": (8, "uint64"), "F64": (8, "float64"),
}
_MAX_HEADER = 100_000_000  # bytes; safetensors itself refuses headers above 100 MB


def resolve_model_dir(model: str) -> Path:
    """Local model folder for ``model``: a folder with config.json, the path of a config.json,
    or a Hub id ("org/name") downloaded to the Hugging Face cache (config, safetensors, tokenizer).
    """
    from quantkit.boundary.paths import check_path

    path = check_path(model, "MODEL").expanduser()
    if path.is_file() and path.name == "config.json":
        path = path.parent
    if path.is_dir():
        if not ((path / "config.json").exists() or (path / "config.json").is_symlink()):
            raise ConfigError(
                f"no config.json in '{path}': MODEL must be a Hugging Face model folder "
                "(config.json + safetensors) or a Hub id"
            )
        return path
    if path.exists():
        raise InputError(f"'{model}' is a file, not a model folder (config.json + safetensors)")
    if not _HUB_ID.match(model):
        raise InputError(f"no such model folder: '{model}'")
    return _download(model)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, RepositoryNotFoundError,
    )

    offline = OfflineError(
        f"'{repo_id}' is not a local folder and the Hugging Face Hub could not be reached to "
        "fetch it; pass a local model folder (config.json + safetensors)"
    )
    try:
        path = Path(snapshot_download(
            repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "merges.txt", "*.jinja"]
        ))
        if not any(path.glob("*.safetensors")):  # legacy weights, read with weights_only=True
            path = Path(snapshot_download(repo_id, allow_patterns=["pytorch_model*.bin"]))
        return path
    except RepositoryNotFoundError as exc:  # includes gated repositories
        raise InputError(f"'{repo_id}' is not a local folder, and the Hub has no accessible model "
                         f"repository of that name ({type(exc).__name__})") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise offline from None
    except HfHubHTTPError as exc:
        raise InputError(f"could not fetch '{repo_id}' from the Hub: {str(exc).splitlines()[0]}") from None


def read_config(model_dir) -> dict:
    """config.json of ``model_dir`` as a dict; ``ConfigError`` if missing, not JSON or not a model config.
    Read through ``quantkit.boundary``: a regular file inside the folder, at most 64 MiB."""
    from quantkit.boundary.data import load_json_file
    from quantkit.boundary.paths import inside, shown

    path = Path(model_dir) / "config.json"
    if not (path.exists() or path.is_symlink()):
        raise ConfigError(f"no config.json in '{shown(model_dir)}'")
    data = load_json_file(inside(model_dir, "config.json", "config.json"), "config.json")
    if not isinstance(data, dict):
        raise ConfigError(f"{shown(path)} must hold a JSON object, got {type(data).__name__}")
    if not isinstance(data.get("model_type"), str):
        raise ConfigError(f"{shown(path)} has no 'model_type' (a transformers config.json names its model type)")
    return data


# ---------------------------------------------------------------------------------------------
# Weights


def weight_files(model_dir) -> tuple[str, list[Path], dict | None]:
    """(kind, files, weight_map): kind is "safetensors" or "bin"; weight_map from an index, if any."""
    from quantkit.boundary.paths import inside, shown

    model_dir = Path(model_dir)
    for kind, single, index in (
        ("safetensors", "model.safetensors", "model.safetensors.index.json"),
        ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (model_dir / index).is_file():
            weight_map = _read_index(inside(model_dir, index, index))
            # Each listed file must be a plain name inside the folder: "../x" or "/etc/x" are refused.
            files = sorted({inside(model_dir, f, f"{index} entry") for f in weight_map.values()})
            for f in files:
                if not f.is_file():
                    raise InputError(f"{index} lists '{shown(f.name)}', which is missing from '{shown(model_dir)}'")
            return kind, files, weight_map
        if (model_dir / single).is_file():
            return kind, [inside(model_dir, single, single)], None
    others = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if others:
        raise InputError(f"'{model_dir}' has {', '.join(others)} but no model.safetensors or "
                         "model.safetensors.index.json saying which tensors they hold")
    raise InputError(f"no weights in '{model_dir}': expected model.safetensors, "
                     "model.safetensors.index.json or pytorch_model.bin")


def _read_index(path: Path) -> dict:
    from quantkit.boundary.data import load_json_file

    data = load_json_file(path, path.name)
    try:
        weight_map = data["weight_map"]
    except (KeyError, TypeError):
        raise InputError(f"{path.name} is not a valid index (JSON with a 'weight_map')") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{path.name}: 'weight_map' must map tensor names to file names")
    return weight_map


def check_safetensors_file(path: Path) -> dict:
    """Validate a safetensors header against the file size; return the header's tensor entries.

    Catches truncated and garbled files before safetensors would fail with a less helpful
    message, and names the first tensor whose bytes lie beyond the end of the file; entries are
    checked by ``quantkit.boundary.weights.check_entries`` (shapes, dtypes, overlaps, holes).
    """
    from quantkit.boundary.paths import regular_file
    from quantkit.boundary.weights import check_entries

    size = regular_file(path, "weights file").st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise InputError(f"{path.name} is truncated or not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER:  # the number is the file's first 8 bytes: never shown (it may be a secret)
            raise InputError(f"{path.name} is not a safetensors file (header length over the "
                             f"{_MAX_HEADER:,}-byte limit)")
        if 8 + n > size:
            raise InputError(f"{path.name} is truncated or not a safetensors file: its header would "
                             f"need more bytes than the file's {size}")
        try:
            header = json.loads(fh.read(n))
        except (ValueError, RecursionError):  # JSON or UTF-8 errors, or absurd nesting
            raise InputError(f"{path.name} is corrupted: its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise InputError(f"{path.name} is corrupted: its header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    check_entries(path.name, tensors, 8 + n, size, {k: v[0] for k, v in _ST_DTYPES.items()})
    return tensors


def check_weights(model_dir) -> None:
    """Validate every safetensors header of ``model_dir`` against its file (pure Python, no torch):
    a truncated or garbled checkpoint fails here, before any model is built."""
    kind, files, _ = weight_files(model_dir)
    if kind == "safetensors":
        for path in files:
            check_safetensors_file(path)


def load_state_dict(model_dir, dtype=None, device="cpu", keep=None) -> dict:
    """All tensors of the checkpoint in ``model_dir`` as {name: Tensor} on ``device``.

    keep: ``keep(name) -> bool`` for float tensors to load in fp32 instead of ``dtype`` (the
    model's ``_keep_in_fp32_modules``, see ``modelbuild.fp32_kept``).

    dtype: if given, floating-point tensors are cast to it one at a time as they are read (int
    tensors, e.g. int8 weights, are kept as stored): an fp32 checkpoint loaded as bf16 holds the
    bf16 tensors plus one fp32 tensor, never an fp32 copy of a whole file."""
    import torch

    kind, files, weight_map = weight_files(model_dir)
    state: dict = {}
    for path in files:
        if kind == "safetensors":
            items = _safetensors_items(path, device)
        else:
            from quantkit.boundary.paths import regular_file

            regular_file(path, "weights file")
            try:
                part = torch.load(path, map_location=device, weights_only=True, mmap=True)
            except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError here
                # torch's own message advises weights_only=False, i.e. running the pickle: never
                # repeated. Only the kind of failure is shown.
                raise InputError(f"{path.name} could not be read as a weights-only torch checkpoint "
                                 f"({_bin_failure(exc)}); quantkit never unpickles arbitrary objects: "
                                 "convert it to safetensors with a tool you trust") from None
            if not isinstance(part, dict):
                raise InputError(f"{path.name} does not hold a state dict")
            items = ((name, part.pop(name)) for name in list(part))  # pop: released once cast
        names = set()
        for name, tensor in items:  # ints (int8 weights) stay as stored; floats cast if asked
            want = torch.float32 if keep is not None and keep(name) else dtype
            cast = want is not None and tensor.is_floating_point() and tensor.dtype != want
            state[name] = tensor.to(want) if cast else tensor
            names.add(name)
            del tensor  # the stored-dtype tensor goes now, before the next one is read
        if weight_map is not None:
            listed = {k for k, f in weight_map.items() if f == path.name}
            missing = sorted(listed - names)
            if missing:
                raise InputError(f"{path.name} lacks tensor '{missing[0]}' that the index places in it")
    return state


def _bin_failure(exc: Exception) -> str:
    import pickle

    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return "it holds objects other than tensors"
    if isinstance(exc, EOFError) or "failed finding central directory" in text:
        return "truncated or not a torch file"
    return type(exc).__name__


def _safetensors_items(path: Path, device):
    """Yield (name, tensor in its stored dtype) of one safetensors file, one tensor at a time.

    On CPU, plain reads into one buffer per tensor: safe_open's memory map keeps each page it
    touched resident until closed (an fp32 271M-param Llama cast to bf16 peaked at 1.97 GiB RSS in
    `quantkit quantize`, 1.31 GiB this way). Other devices, dtypes this torch lacks and big-endian
    hosts go through safe_open."""
    import sys

    import torch

    tensors = check_safetensors_file(path)
    dtypes = {k: getattr(torch, v) for k, (_, v) in _ST_DTYPES.items() if hasattr(torch, v)}
    if (str(device) == "cpu" and sys.byteorder == "little"
            and all(info["dtype"] in dtypes for info in tensors.values())):
        yield from _read_plain(path, tensors, dtypes)
    else:
        yield from _read_safe_open(path, device)


def _read_plain(path: Path, tensors: dict, dtypes: dict):
    import torch  # safetensors data: little-endian, row-major, at 8 + header length + offset

    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        for name, info in sorted(tensors.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            begin, end = info["data_offsets"]
            dtype, shape = dtypes[info["dtype"]], info["shape"]
            if end == begin:
                t = torch.empty(shape, dtype=dtype)
            else:
                buf = bytearray(end - begin)
                fh.seek(8 + n + begin)
                if fh.readinto(buf) != end - begin:
                    raise InputError(f"{path.name} is truncated: tensor '{name}' ends past the file")
                t = torch.frombuffer(buf, dtype=dtype).reshape(shape)  # shares buf, no copy
                del buf
            yield name, t
            del t


def _read_safe_open(path: Path, device):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            for name in fh.keys():
                try:  # yielded directly: the generator keeps no reference to the tensor
                    yield name, fh.get_tensor(name)
                except SafetensorError as exc:
                    raise InputError(f"{path.name}: cannot read tensor '{name}': {exc}") from None
    except SafetensorError as exc:
        raise InputError(f"{path.name} is not a readable safetensors file: {exc}") from None


MAX_TOKENIZER_BYTES = 512 * 2**20  # tokenizer.json of large-vocabulary models: ~35 MB


def copy_tokenizer_files(src, dst) -> list[str]:
    """Copy the tokenizer (and generation config) files that exist in ``src`` to ``dst``; return
    their names. Each must be a regular file inside ``src`` (``quantkit.boundary.paths.inside``: a
    symlink to a key file or /etc/passwd is refused, never copied) of at most 512 MiB."""
    from quantkit.boundary.data import read_bytes_capped
    from quantkit.boundary.paths import inside

    copied = []
    for name in TOKENIZER_FILES:
        path = Path(src) / name
        if not (path.exists() or path.is_symlink()):
            continue
        data = read_bytes_capped(inside(src, name, "tokenizer file"), "tokenizer file", MAX_TOKENIZER_BYTES)
        (Path(dst) / name).write_bytes(data)
        copied.append(name)
    return copied
