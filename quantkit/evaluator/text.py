"""Evaluation text: a local ``.txt`` / ``.jsonl`` file or a ``datasets`` name, and its tokens.

The whole text is tokenized as one string, without special tokens, and the model's BOS id is put
first (the convention of the reference numbers in ``shared/models/*/SOURCE.md``). Tokenizers:
``tokenizer.json`` (the ``tokenizers`` package) when the model folder has one, else
``tokenizer.model`` (``sentencepiece``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from quantkit.errors import DependencyError, InputError, OfflineError

# Named datasets: name -> (datasets path, config, split, text field). Documents are joined with
# "\n\n", the GPTQ/AWQ convention for WikiText-2.
DATASETS = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "test", "text"),
    "wikitext103": ("wikitext", "wikitext-103-raw-v1", "test", "text"),
    # C4 as GPTQ/AWQ evaluate it: the first English validation shard
    "c4": ("allenai/c4", None, "validation", "text"),
}
_DATA_FILES = {"c4": {"validation": "en/c4-validation.00000-of-00008.json.gz"}}
_DATA_EXTRA = "pip install 'quantkit[data]'"
_DATASET_PREFIX = "dataset:"


# A text file read whole: 1 GiB (WikiText-103's test split is 1.3 MB, its train split 540 MB).
# Beyond it, --max-tokens reads only a prefix.
MAX_TEXT_BYTES = 2**30
# Bytes read per wanted token at first when --max-tokens is given (tokens average ~4 bytes of
# English); the prefix doubles until it yields enough tokens or the file ends.
BYTES_PER_TOKEN_GUESS = 16
_TOKEN_MARGIN = 64  # tokens past max_tokens, so the cut at the prefix's end cannot change them


@dataclass(frozen=True)
class TextSource:
    text: str
    name: str  # the file path or the dataset spec, for the output
    path: Path | None = None  # the local file, when the text is a prefix of it
    truncated: bool = False  # text is a prefix (cut at a line end) of a longer file


def load_text(source: str, max_tokens: int | None = None) -> TextSource:
    """Read ``source``: a ``.txt`` file, a ``.jsonl`` file (one JSON object with a "text" field, or
    one JSON string, per line; documents joined by a blank line), a name from ``DATASETS``, or
    ``dataset:PATH[:CONFIG[:SPLIT]]`` (field "text"; needs the ``datasets`` package and network).

    A local file must be a regular file (not a FIFO or device); with ``max_tokens`` only a prefix
    is read (``tokenize_source`` reads more if it is too short), without it at most 1 GiB.
    """
    from quantkit.boundary.paths import check_path, regular_file

    path = check_path(source, "--ppl").expanduser()
    if path.is_dir():
        return TextSource(_read_saved_dataset(path), str(path))
    if path.exists():
        size = regular_file(path, "--ppl").st_size
        if path.suffix == ".parquet":
            return TextSource(_read_parquet(path), str(path))
        if path.suffix not in (".jsonl", ".txt", ".text", ".raw", ""):
            raise InputError(f"{path}: the perplexity text must be a .txt, .jsonl or .parquet file")
        limit = MAX_TEXT_BYTES if max_tokens is None else max_tokens * BYTES_PER_TOKEN_GUESS + 4096
        if max_tokens is None and size > MAX_TEXT_BYTES:
            raise InputError(f"{path} is {size:,} bytes, over the {MAX_TEXT_BYTES:,}-byte limit for a "
                             "text read whole; pass --max-tokens N to score its first N tokens")
        return _read_file(path, limit)
    if source in DATASETS:
        return TextSource(_load_dataset(*DATASETS[source], data_files=_DATA_FILES.get(source)), source)
    if source.startswith(_DATASET_PREFIX):
        parts = source[len(_DATASET_PREFIX):].split(":")
        if not parts[0] or len(parts) > 3:
            raise InputError(f"bad dataset spec {source!r}: use dataset:PATH[:CONFIG[:SPLIT]]")
        ds_path, config, split = (parts + [None, None])[:3]
        return TextSource(_load_dataset(ds_path, config, split or "test", "text"), source)
    known = ", ".join(DATASETS)
    raise InputError(
        f"{source!r} is neither a file nor a known dataset ({known}, or dataset:PATH[:CONFIG[:SPLIT]])"
    )


def _read_file(path: Path, limit: int) -> TextSource:
    """The first ``limit`` bytes of ``path`` (cut at the last line end when the file is longer)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    truncated = len(data) > limit
    if truncated:
        cut = data.rfind(b"\n", 0, limit)
        data = data[:cut + 1] if cut > 0 else data[:limit]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not (truncated and exc.reason == "unexpected end of data"):  # else: a character cut in two
            raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        text = data[:exc.start].decode("utf-8")
    if not text.strip():
        raise InputError(f"{path}: no text (the file is empty or blank)")
    if path.suffix == ".jsonl":
        text = _jsonl_text(path, text)
    return TextSource(text, str(path), path, truncated)


def tokenize_source(model_dir: Path, source: TextSource, bos_id: int | None,
                    max_tokens: int | None) -> list[int]:
    """Token ids of ``source`` (``tokenize``), the first ``max_tokens`` of them if given. A
    prefix that yields too few tokens is read again twice as long, until the file ends."""
    while True:
        ids = tokenize(model_dir, source.text, bos_id)
        if max_tokens is None:
            return ids
        if len(ids) >= max_tokens + _TOKEN_MARGIN or not source.truncated:
            return ids[:max_tokens]
        source = _read_file(source.path, 2 * len(source.text.encode("utf-8")) + 4096)


def _jsonl_text(path: Path, text: str) -> str:
    docs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if isinstance(obj, dict) and isinstance(obj.get("text"), str):
            docs.append(obj["text"])
        elif isinstance(obj, str):
            docs.append(obj)
        else:
            raise InputError(f"{path}:{lineno}: expected an object with a string 'text' field")
    text = "\n\n".join(docs)
    if not text.strip():
        raise InputError(f"{path}: no text (no document has any)")
    return text


def _joined(docs, where) -> str:
    text = "\n\n".join(d for d in docs if isinstance(d, str))
    if not text.strip():
        raise InputError(f"{where}: no text (no document has any)")
    return text


def _read_parquet(path: Path) -> str:
    """The "text" column of a parquet file (pyarrow, which the datasets extra brings)."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DependencyError(f"{path}: reading parquet needs pyarrow ({_DATA_EXTRA})") from None
    try:
        schema = pq.read_schema(path)
        if "text" not in schema.names:
            raise InputError(f"{path}: no 'text' column (columns: {', '.join(schema.names)})")
        return _joined(pq.read_table(path, columns=["text"]).column("text").to_pylist(), path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None


def _read_saved_dataset(path: Path) -> str:
    """The "text" column of a ``datasets`` ``save_to_disk`` folder (its "test" split, or its only
    split, for a DatasetDict)."""
    if not any((path / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        raise InputError(f"{path} is a folder but not a datasets save_to_disk folder; pass a .txt, "
                         ".jsonl or .parquet file")
    try:
        import datasets
    except ImportError:
        raise DependencyError(f"{path}: a save_to_disk folder needs the datasets package ({_DATA_EXTRA})") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as exc:
        raise InputError(f"{path}: cannot load the saved dataset ({str(exc).splitlines()[0]})") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if "test" not in ds and len(splits) != 1:
            raise InputError(f"{path}: a dataset with splits {', '.join(splits)}; save the split to score")
        ds = ds["test" if "test" in ds else splits[0]]
    if "text" not in ds.column_names:
        raise InputError(f"{path}: no 'text' column (columns: {', '.join(ds.column_names)})")
    return _joined(ds["text"], path)


def _offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0", "false", "False")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _load_dataset(ds_path: str, config: str | None, split: str, field: str, data_files=None) -> str:
    name = ":".join(p for p in (ds_path, config, split) if p)
    if _offline():
        raise OfflineError(f"dataset {name!r} needs the network, and HF offline mode is set; "
                           f"pass a local .txt or .jsonl file to --ppl instead")
    try:
        import datasets
    except ImportError:
        raise DependencyError(
            f"dataset {name!r} needs the 'datasets' package ({_DATA_EXTRA}), "
            f"or pass a local .txt or .jsonl file"
        ) from None
    try:
        extra = {"data_files": data_files} if data_files else {}
        ds = datasets.load_dataset(ds_path, config, split=split, **extra)
    except (ConnectionError, OSError, TimeoutError) as exc:
        # datasets raises ConnectionError (or an OSError subclass) when the Hub is unreachable.
        raise OfflineError(f"could not fetch dataset {name!r} ({type(exc).__name__}); "
                           f"pass a local .txt or .jsonl file to --ppl instead") from None
    except (ValueError, FileNotFoundError) as exc:
        raise InputError(f"dataset {name!r}: {exc}") from None
    if field not in ds.column_names:
        raise InputError(f"dataset {name!r} has no {field!r} column ({', '.join(ds.column_names)})")
    return "\n\n".join(ds[field])


def tokenize(model_dir: Path, text: str, bos_id: int | None) -> list[int]:
    """Token ids of ``text`` as one string, with ``bos_id`` first when it is not None."""
    from quantkit.boundary.paths import inside, regular_file

    model_dir = Path(model_dir)
    for name in ("tokenizer.json", "tokenizer.model"):  # inside the folder, regular (no FIFO)
        if (model_dir / name).exists() or (model_dir / name).is_symlink():
            regular_file(inside(model_dir, name, "tokenizer file"), "tokenizer file")
    if (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise InputError(f"{model_dir / 'tokenizer.json'}: cannot load ({exc})") from None
        ids = tok.encode(text, add_special_tokens=False).ids
    elif (model_dir / "tokenizer.model").is_file() and _is_sentencepiece(model_dir / "tokenizer.model"):
        sentencepiece = _require("sentencepiece", "a sentencepiece tokenizer.model")
        try:
            sp = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
        except (OSError, RuntimeError) as exc:
            raise InputError(f"{model_dir / 'tokenizer.model'}: cannot load ({exc})") from None
        ids = sp.encode(text)
    elif any((model_dir / f).is_file() for f in _OTHER_TOKENIZER_FILES):
        ids = _auto_tokenizer(model_dir).encode(text, add_special_tokens=False)
    else:
        raise InputError(f"{model_dir} has no tokenizer: tokenizer.json, a sentencepiece or tiktoken "
                         f"tokenizer.model, or vocab.json + merges.txt")
    return ([bos_id] if bos_id is not None else []) + list(ids)


# Tokenizer files that transformers' AutoTokenizer reads when there is no tokenizer.json: GPT-2
# style BPE (vocab.json + merges.txt), tiktoken BPE files (Llama-3 original, Kimi, ...).
_OTHER_TOKENIZER_FILES = ("tokenizer.model", "vocab.json", "tokenizer.tiktoken", "tiktoken.model")


def _is_sentencepiece(path: Path) -> bool:
    """A sentencepiece model is a protobuf (binary); a tiktoken BPE file is base64 text lines."""
    with open(path, "rb") as fh:
        head = fh.read(256)
    return not head or any(b < 9 or 13 < b < 32 for b in head)


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DependencyError(f"reading {what} needs the '{module}' package, which quantkit installs: "
                              f"reinstall it (pip install quantkit) or pip install {module}") from None


def _auto_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{model_dir}: cannot load its tokenizer ({first})") from None
