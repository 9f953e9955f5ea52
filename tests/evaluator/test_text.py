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
    with pytest.raises(InputError, match=r"must be a \.txt, \.jsonl or \.parquet file"):
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
    with pytest.raises(DependencyError, match=r"pip install 'quantkit\[data\]'"):
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
    with pytest.raises(InputError, match="has no tokenizer: tokenizer.json, a sentencepiece or tiktoken"):
        tokenize(tmp_path, "x", 1)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match=r"tokenizer\.json: cannot load"):
        tokenize(tmp_path, "x", 1)


def test_c4_is_the_first_english_validation_shard(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    calls = []

    class Split(dict):
        column_names = ["text", "url"]

    def load_dataset(path, config, split, **kw):
        calls.append((path, config, split, kw))
        return Split(text=["first doc", "second doc"])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert load_text("c4").text == "first doc\n\nsecond doc"
    assert calls == [("allenai/c4", None, "validation",
                      {"data_files": {"validation": "en/c4-validation.00000-of-00008.json.gz"}})]


def test_parquet_and_save_to_disk_folders(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["alpha beta", "", "gamma"], "id": [1, 2, 3]})
    ds.to_parquet(str(tmp_path / "t.parquet"))
    assert load_text(str(tmp_path / "t.parquet")).text == "alpha beta\n\n\n\ngamma"
    ds.save_to_disk(str(tmp_path / "saved"))
    assert load_text(str(tmp_path / "saved")).text == "alpha beta\n\n\n\ngamma"
    datasets.DatasetDict({"train": ds, "test": ds.select([2])}).save_to_disk(str(tmp_path / "dd"))
    assert load_text(str(tmp_path / "dd")).text == "gamma"  # the test split of a DatasetDict
    datasets.Dataset.from_dict({"body": ["x"]}).to_parquet(str(tmp_path / "nobody.parquet"))
    with pytest.raises(InputError, match=r"nobody.parquet: no 'text' column \(columns: body\)"):
        load_text(str(tmp_path / "nobody.parquet"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match="is a folder but not a datasets save_to_disk folder"):
        load_text(str(tmp_path / "plain"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="bad.parquet: not a readable parquet file"):
        load_text(str(tmp_path / "bad.parquet"))


@pytest.mark.shared
def test_missing_sentencepiece_is_a_dependency_error(stories_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import sentencepiece -> ImportError
    with pytest.raises(DependencyError, match=r"needs the 'sentencepiece' package, which quantkit installs"):
        tokenize(stories_dir, "Once upon a time", 1)


def test_gpt2_style_bpe_files_tokenize_through_transformers(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "h": 1, "e": 2, "l": 3, "o": 4, "Ġ": 5, "he": 6, "ll": 7, "hell": 8, "hello": 9}
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o")]
    import json

    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    bpe = Tokenizer(models.BPE.from_file(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert tokenize(tmp_path, "hello hello", 0) == [0] + bpe.encode("hello hello").ids
