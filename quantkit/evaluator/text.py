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
}
_DATASET_PREFIX = "dataset:"


@dataclass(frozen=True)
class TextSource:
    text: str
    name: str  # the file path or the dataset spec, for the output


def load_text(source: str) -> TextSource:
    """Read ``source``: a ``.txt`` file, a ``.jsonl`` file (one JSON object with a "text" field, or
    one JSON string, per line; documents joined by a blank line), a name from ``DATASETS``, or
    ``dataset:PATH[:CONFIG[:SPLIT]]`` (field "text"; needs the ``datasets`` package and network).
    """
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix == ".jsonl":
            return TextSource(_read_jsonl(path), str(path))
        if path.suffix in (".txt", ".text", ".raw", ""):
            return TextSource(_read(path), str(path))
        raise InputError(f"{path}: the perplexity text must be a .txt or .jsonl file")
    if source in DATASETS:
        return TextSource(_load_dataset(*DATASETS[source]), source)
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


def _read(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise InputError(f"{path}: no text (the file is empty or blank)")
        return text
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None


def _read_jsonl(path: Path) -> str:
    docs = []
    for lineno, line in enumerate(_read(path).splitlines(), 1):
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


def _offline() -> bool:
    return any(os.environ.get(v, "") not in ("", "0", "false", "False")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _load_dataset(ds_path: str, config: str | None, split: str, field: str) -> str:
    name = ":".join(p for p in (ds_path, config, split) if p)
    if _offline():
        raise OfflineError(f"dataset {name!r} needs the network, and HF offline mode is set; "
                           f"pass a local .txt or .jsonl file to --ppl instead")
    try:
        import datasets
    except ImportError:
        raise DependencyError(
            f"dataset {name!r} needs the 'datasets' package (pip install datasets), "
            f"or pass a local .txt or .jsonl file"
        ) from None
    try:
        ds = datasets.load_dataset(ds_path, config, split=split)
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
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a bare Exception on a malformed file
            raise InputError(f"{model_dir / 'tokenizer.json'}: cannot load ({exc})") from None
        ids = tok.encode(text, add_special_tokens=False).ids
    elif (model_dir / "tokenizer.model").is_file():
        import sentencepiece

        try:
            sp = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
        except (OSError, RuntimeError) as exc:
            raise InputError(f"{model_dir / 'tokenizer.model'}: cannot load ({exc})") from None
        ids = sp.encode(text)
    else:
        raise InputError(f"{model_dir} has neither tokenizer.json nor tokenizer.model")
    return ([bos_id] if bos_id is not None else []) + list(ids)
