"""Every command, fed malformed files and options, exits 2 with exactly one line on stderr (no
traceback), through the real entry point ``quantkit.cli.main`` run in-process."""

from __future__ import annotations

import json
import os
import struct

import pytest

from quantkit.catalogue import find_model_card
from quantkit.cli import main

LONG = "a" * 300
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def _config(**overrides) -> dict:
    cfg = {k: v for k, v in find_model_card("llama2-7b").data.items() if k != "_quantkit"}
    cfg.update(overrides)
    return cfg


def _folder(d, name, config_text=None, weights=None, **overrides):
    f = d / name
    f.mkdir(exist_ok=True)
    (f / "config.json").write_text(config_text if config_text is not None else json.dumps(_config(**overrides)))
    if weights is not None:
        raw = json.dumps(weights).encode()
        (f / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)
    return f


def _files(d):
    """The hostile inputs: each a path (str) under ``d``."""
    tiny = dict(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    good_w = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    p = {
        "nonutf8": _folder(d, "nonutf8", config_text="\xff\xfe{"),
        "deep": _folder(d, "deep", config_text="[" * 100_000 + "]" * 100_000),
        "nan": _folder(d, "nan", config_text='{"model_type": "llama", "hidden_size": NaN}'),
        "layers1e30": _folder(d, "layers1e30", num_hidden_layers=1e30),
        "layers10e30": _folder(d, "layers10e30", num_hidden_layers=10**30),
        "list": _folder(d, "list", config_text="[1, 2]"),
        "evil_act": _folder(d, "evil_act", weights=good_w, hidden_act="evil", **tiny),
        "overlap": _folder(d, "overlap", weights={**good_w, "b": {"dtype": "F32", "shape": [2],
                                                                  "data_offsets": [4, 12]}}, **tiny),
        "shape_null": _folder(d, "shape_null", weights={"a": {"dtype": "F32", "shape": [None],
                                                              "data_offsets": [0, 8]}}, **tiny),
        "escape_index": _folder(d, "escape_index", **tiny),
    }
    (p["escape_index"] / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../overlap/model.safetensors"}}))
    fifo = d / "fifo"
    fifo.mkdir(exist_ok=True)
    if not (fifo / "config.json").exists():
        os.mkfifo(fifo / "config.json")
    p["fifo"] = fifo
    big = d / "big"
    big.mkdir(exist_ok=True)
    with open(big / "config.json", "wb") as fh:
        fh.truncate(100 * 2**20)  # sparse
    p["big"] = big
    for name, text in (("bomb.yaml", BOMB), ("nonutf8.yaml", "\xff: 1"), ("deep.yaml", "a: " + "[" * 300),
                       ("badtype.yaml", "quantization: {method: int8, group_size: 1e20}\n"),
                       ("skiptype.yaml", "quantization: {method: int8, skip: [{a: 1}]}\n"),
                       ("bigint.yaml", "quantization: {method: int8, group_size: 100000000000000000000000}\n"),
                       ("plan_types.yaml", "models: [{a: 1}]\ngpus: h100\ncontexts: [1e30]\n"),
                       ("plan_list.yaml", "- 1\n")):
        (d / name).write_bytes(text.encode("latin-1"))
        p[name] = d / name
    (d / "exists.json").write_text("{}")
    p["exists"] = d / "exists.json"
    return {k: str(v) for k, v in p.items()}


def _cases():
    e = ["estimate"]
    pl = ["plan", "--gpus", "h100", "--models", "llama2-7b"]
    q = ["quantize"]
    ev = ["eval"]
    return [
        # estimate
        (e + ["/tmp/" + LONG],), (e + ["{d}/" + LONG + "/config.json"],), (e + ["{nonutf8}"],),
        (e + ["{deep}"],), (e + ["{nan}"],), (e + ["{layers1e30}"],), (e + ["{layers10e30}"],),
        (e + ["{list}"],), (e + ["{fifo}"],), (e + ["{big}"],), (e + ["/dev/zero"],),
        (e + ["llama2-7b", "--group-size", str(10**20), "--dtype", "int4"],),
        (e + ["llama2-7b", "--context", str(10**30), "--gpu", "h100"],),
        (e + ["llama2-7b", "--batch", str(10**30)],), (e + ["llama2-7b", "--gpu-util", "nan"],),
        (e + ["\x1b]0;pwned\x07"],), (e + ["llama2-7b", "--dtype", "\x1b[31m"],),
        (e + ["llama2-7b", "--group-size", "1e20"],), (e + ["llama2-7b", "--format", "xml"],),
        # models, gpus
        (["models", "--format", "xml"],), (["gpus", "--format", "=x"],), (["models", "extra"],),
        # plan
        (["plan", "--models", ",", "--gpus", "h100"],), (pl + ["--dtypes", ""],),
        (pl + ["--contexts", str(10**30)],), (pl + ["--group-size", str(10**20)],),
        (["plan", "--models", "/tmp/" + LONG, "--gpus", "h100"],), (pl + ["--out", "/tmp/" + LONG + ".csv"],),
        (["plan", "--plan", "{bomb.yaml}"],), (["plan", "--plan", "{nonutf8.yaml}"],),
        (["plan", "--plan", "{deep.yaml}"],), (["plan", "--plan", "{plan_types.yaml}"],),
        (["plan", "--plan", "{plan_list.yaml}"],), (pl + ["--models", "{nonutf8}"],),
        (pl + ["--out", "{exists}"],), (pl + ["--out", "{d}/missing/x.csv"],),
        (["plan", "--models", "llama2-7b,llama3-8b,llama2-13b,llama2-70b", "--gpus", "h100,a100,l4,t4",
          "--contexts", ",".join(str(256 * i) for i in range(1, 301)), "--batches", ",".join(map(str, range(1, 1001))),
          "--dtypes", "bf16,int8,int4,fp8", "--out", "{d}/huge.xlsx"],),
        # quantize
        (q + ["{nonutf8}", "--out", "{d}/o"],), (q + ["{deep}", "--out", "{d}/o"],),
        (q + ["{fifo}", "--out", "{d}/o"],), (q + ["{big}", "--out", "{d}/o"],),
        (q + ["/tmp/" + LONG, "--out", "{d}/o"],), (q + ["{evil_act}", "--out", "{d}/" + LONG],),
        (q + ["{evil_act}", "--out", "{d}/o"],), (q + ["{overlap}", "--out", "{d}/o"],),
        (q + ["{shape_null}", "--out", "{d}/o"],), (q + ["{escape_index}", "--out", "{d}/o"],),
        (q + ["{overlap}", "--out", "{d}/o", "--recipe", "{bomb.yaml}"],),
        (q + ["{overlap}", "--out", "{d}/o", "--recipe", "{nonutf8.yaml}"],),
        (q + ["{overlap}", "--out", "{d}/o", "--recipe", "{deep.yaml}"],),
        (q + ["{overlap}", "--out", "{d}/o", "--recipe", "{badtype.yaml}"],),
        (q + ["{overlap}", "--out", "{d}/o", "--recipe", "{skiptype.yaml}"],),
        (q + ["{overlap}", "--out", "{d}/o", "--recipe", "{bigint.yaml}"],),
        (q + ["{overlap}", "--out", "{d}/o", "--skip", "re:("],),
        (q + ["{overlap}", "--out", "{d}/o", "--max-shard-size", "0.5"],),
        (q + ["{overlap}", "--out", "{d}/o", "--group-size", str(10**20)],),
        (q + ["{overlap}", "--out", "{d}/o", "--group-size", "1e20"],),
        # eval
        (ev + ["{evil_act}", "--ppl", "{fifo}/config.json", "--device", "cpu"],),
        (ev + ["{evil_act}", "--ppl", "/dev/zero", "--device", "cpu"],),
        (ev + ["{evil_act}", "--ppl", "{d}/" + LONG + ".txt", "--device", "cpu"],),
        (ev + ["{evil_act}", "--ppl", "{exists}", "--device", "cpu", "-o", "{exists}"],),
        (ev + ["{evil_act}", "--ppl", "{exists}", "--device", "cpu", "-o", "{d}/missing/x.json"],),
        (ev + ["{evil_act}", "--ppl", "{exists}", "--device", "cpu", "--compare", "int8-g1e23"],),
        (ev + ["{evil_act}", "--ppl", "{exists}", "--device", "cpu", "--compare", "int8-g" + "9" * 30],),
        (ev + ["{evil_act}", "--ppl", "{exists}", "--device", "cpu", "--ctx", str(10**30)],),
        (ev + ["{nonutf8}", "--ppl", "{exists}", "--device", "cpu"],),
        (ev + ["/tmp/" + LONG, "--ppl", "{exists}", "--device", "cpu"],),
    ]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    files = _files(d)
    files["d"] = str(d)
    return files


@pytest.mark.parametrize("args", [c[0] for c in _cases()], ids=lambda a: " ".join(a)[:60])
def test_malformed_input_is_one_line_exit_2(hostile, capsys, args):
    argv = []
    for a in args:
        for key, value in hostile.items():
            a = a.replace("{" + key + "}", value)
        argv.append(a)
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("Error: "), err[-2000:]
    assert "Traceback" not in err and "\x1b" not in err and "\x07" not in err
    assert not os.path.exists(os.path.join(hostile["d"], "o"))
