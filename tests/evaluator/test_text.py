"""Evaluation text sources and tokenization (local files only; datasets faked, never fetched)."""

from __future__ import annotations

import sys
import types

import pytest

from quantkit.errors import DependencyError, InputError, OfflineError
from quantkit.evaluator.text import load_text, tokenize


def test_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("hello\nworld\n")
    assert load_text(str(tmp_path / "a.txt")).text == "hello\nworld\n"
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n\n"two"\n{"text": "three", "id": 3}\n')
    src = load_text(str(tmp_path / "b.jsonl"))
    assert src.text == "one\n\ntwo\n\nthree" and src.name.endswith("b.jsonl")


@pytest.mark.parametrize("content, msg", [
    ('{"text": "ok"}\n{"text": 3}\n', r"b.jsonl:2: expected an object with a string 'text' field"),
    ('{"text": "ok"}\n{oops\n', r"b.jsonl:2: not valid JSON"),
    ("\n\n", "no text"),
    ('{"text": "  "}\n', "no text"),
])
def test_bad_jsonl_names_the_line(tmp_path, content, msg):
    (tmp_path / "b.jsonl").write_text(content)
    with pytest.raises(InputError, match=msg):
        load_text(str(tmp_path / "b.jsonl"))


def test_bad_sources(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=r"must be a \.txt or \.jsonl file"):
        load_text(str(tmp_path / "x.csv"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(InputError, match="not UTF-8"):
        load_text(str(tmp_path / "bin.txt"))
    with pytest.raises(InputError, match="neither a file nor a known dataset"):
        load_text(str(tmp_path / "missing.txt"))
    with pytest.raises(InputError, match="bad dataset spec"):
        load_text("dataset:")


def test_datasets_offline_mode_is_an_offline_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="'wikitext:wikitext-2-raw-v1:test' needs the network"):
        load_text("wikitext2")


def test_datasets_missing_package_is_a_dependency_error(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DependencyError, match="pip install datasets"):
        load_text("dataset:wikitext:wikitext-2-raw-v1")


def test_datasets_unreachable_hub_is_an_offline_error(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    calls = []

    def load_dataset(path, config, split):
        calls.append((path, config, split))
        raise ConnectionError("Couldn't reach 'wikitext' on the Hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(OfflineError, match=r"could not fetch dataset 'wikitext:wikitext-2-raw-v1:test' \(ConnectionError\)"):
        load_text("wikitext2")
    assert calls == [("wikitext", "wikitext-2-raw-v1", "test")]


def test_datasets_text_is_joined_like_gptq(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    class Split(dict):
        column_names = ["text"]

    fake = types.SimpleNamespace(load_dataset=lambda p, c, split: Split(text=["a", "", "b"]))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    assert load_text("dataset:some/set::validation").text == "a\n\n\n\nb"


@pytest.mark.shared
def test_tokenizer_json_and_model_agree_and_bos_comes_first(ref_docs_dir):
    text = "Python's ``print()`` writes 12345 to stdout.\n\nSee :ref:`tut`."
    ids = tokenize(ref_docs_dir, text, 1)
    assert ids[0] == 1 and 1 not in ids[1:]
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(ref_docs_dir / "tokenizer.model"))
    assert ids[1:] == sp.encode(text)  # tokenizer.json (preferred) == tokenizer.model
    assert tokenize(ref_docs_dir, text, None) == ids[1:]


def test_no_tokenizer(tmp_path):
    with pytest.raises(InputError, match="neither tokenizer.json nor tokenizer.model"):
        tokenize(tmp_path, "x", 1)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match=r"tokenizer\.json: cannot load"):
        tokenize(tmp_path, "x", 1)
