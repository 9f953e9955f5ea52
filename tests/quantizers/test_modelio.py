"""quantkit.modelio (finding model folders, reading configs and weights safely) and quantkit.modelbuild.

(Kept next to the quantizer tests that own modelio; it could move to tests/test_modelio.py.)
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from quantkit.errors import ConfigError, InputError, OfflineError
from quantkit.modelbuild import build_model
from quantkit.modelio import copy_tokenizer_files, load_state_dict, read_config, resolve_model_dir


class NotATensor:  # pickled into a .bin below: weights_only loading must refuse it
    pass


def test_resolve_local_folder_and_config_path(tiny_model):
    src = tiny_model("llama")
    assert resolve_model_dir(str(src)) == src
    assert resolve_model_dir(str(src / "config.json")) == src


def test_resolve_folder_without_config(tmp_path):
    with pytest.raises(ConfigError, match=r"^no config.json in '.*': MODEL must be a Hugging Face model folder"):
        resolve_model_dir(str(tmp_path))


def test_resolve_missing_path(tmp_path):
    with pytest.raises(InputError, match=r"^no such model folder: '.*/nope'$"):
        resolve_model_dir(str(tmp_path / "nope"))


def test_resolve_hub_id_offline(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OfflineError, match=r"^'some-org/some-model' is not a local folder and the Hugging "
                                           r"Face Hub could not be reached to fetch it; pass a local model folder"):
        resolve_model_dir("some-org/some-model")


@pytest.mark.parametrize("text, pattern", [
    ("{not json", r"config.json is not valid JSON: .* at line 1 column 2"),
    ("[1, 2]", r"config.json must hold a JSON object, got list"),
    ('{"hidden_size": 8}', r"config.json has no 'model_type'"),
])
def test_read_config_errors(tmp_path, text, pattern):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=pattern):
        read_config(tmp_path)


def test_truncated_safetensors_names_the_tensor(tiny_model):
    src = tiny_model("llama")
    path = src / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(InputError, match=r"^model.safetensors is truncated: tensor '[\w.]+' needs bytes up to "
                                         r"\d+, the file has \d+$"):
        load_state_dict(src)


def test_garbage_safetensors(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(InputError, match=r"^model.safetensors is not a safetensors file \(header length"):
        load_state_dict(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((20).to_bytes(8, "little") + b"{not json at all}   ")
    with pytest.raises(InputError, match=r"^model.safetensors is corrupted: its header is not valid JSON$"):
        load_state_dict(tmp_path)


def test_sharded_safetensors_and_missing_shard(tmp_path):
    save_file({"a": torch.ones(2)}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({"b": torch.zeros(3, dtype=torch.bfloat16)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    state = load_state_dict(tmp_path, dtype=torch.bfloat16)
    assert state["a"].dtype == torch.bfloat16 and state["b"].shape == (3,)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(InputError, match=r"lists 'model-00002-of-00002.safetensors', which is missing"):
        load_state_dict(tmp_path)


def test_legacy_bin_is_read_weights_only(tmp_path):
    torch.save({"w": torch.arange(4.0)}, tmp_path / "pytorch_model.bin")
    assert torch.equal(load_state_dict(tmp_path)["w"], torch.arange(4.0))
    torch.save({"w": torch.zeros(1), "x": NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(InputError, match=r"^pytorch_model.bin could not be read as a weights-only torch checkpoint"):
        load_state_dict(tmp_path)


def test_build_model_refuses_non_causal_lm(tmp_path):
    bert = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 32,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(bert))
    with pytest.raises(ConfigError, match=r"describes BertForMaskedLM \(model_type 'bert'\), not a causal "
                                          r"language model"):
        build_model(tmp_path)


def test_build_model_names_missing_and_misshaped_tensors(tiny_model):
    src = tiny_model("llama")
    from safetensors.torch import load_file

    state = load_file(str(src / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(InputError, match=r"lacks tensor 'model.layers.1.mlp.up_proj.weight'"):
        build_model(src)
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(3, 3, dtype=torch.bfloat16)
    save_file(state, str(src / "model.safetensors"))
    with pytest.raises(InputError, match=r"tensor 'model.layers.1.mlp.up_proj.weight' in .* has shape \(3, 3\), "
                                         r"config.json's model needs \(160, 64\)"):
        build_model(src)


def test_build_model_matches_transformers_on_stories(stories_dir, tmp_path):
    """A real published model (fp32, tied embeddings, no lm_head.weight stored) builds exactly as
    transformers' from_pretrained builds it."""
    from transformers import AutoModelForCausalLM

    ours = build_model(stories_dir, torch.float32)
    theirs = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32, local_files_only=True).eval()
    ids = torch.tensor([[1, 403, 407, 261, 378, 426]])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)
    assert ours.lm_head.weight.data_ptr() == ours.model.embed_tokens.weight.data_ptr()
    assert copy_tokenizer_files(stories_dir, tmp_path) == ["tokenizer.model"]


def test_build_model_refuses_quantized_input(tiny_model, tmp_path):
    src = tiny_model("llama")
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "compressed-tensors"}
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"is already quantized \(quantization_config, quant_method "
                                          r"'compressed-tensors'\)"):
        build_model(src)
    shutil.rmtree(src)


@pytest.mark.parametrize("reader", ["plain reads", "safe_open"])
def test_fp32_checkpoint_is_cast_one_tensor_at_a_time(reader, tmp_path, monkeypatch):
    """Loading fp32 weights as bf16 casts each tensor as it is read: when a tensor is cast, every
    fp32 tensor read before it is already gone (no fp32 copy of the file is held), and the result
    equals safetensors' own reading, cast. CPU loads use plain reads; safe_open is the path for
    other devices, big-endian hosts and dtypes torch lacks (forced here by hiding one)."""
    import weakref

    from quantkit import modelio

    from safetensors.torch import load_file

    torch.manual_seed(0)
    stored = {f"layer{i}.weight": torch.randn(64, 48) for i in range(6)}
    stored.update({
        "q.weight": torch.randint(-127, 128, (8, 16), dtype=torch.int8),  # integers keep their dtype
        "h.bias": torch.randn(5, dtype=torch.float16), "d.scale": torch.randn(3, dtype=torch.float64),
        "b.weight": torch.randn(4, 4, dtype=torch.bfloat16), "ids": torch.arange(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4),
    })
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    save_file(stored, str(tmp_path / "model.safetensors"))

    alive, cast_calls = [], []
    real_to = torch.Tensor.to

    def spy_to(self, *args, **kwargs):
        if self.dtype == torch.float32:
            assert all(ref() is None for ref in alive), "an fp32 tensor read earlier is still held"
            alive.append(weakref.ref(self))
            cast_calls.append(tuple(self.shape))
        return real_to(self, *args, **kwargs)

    if reader == "safe_open":  # as if this torch had no bool dtype
        monkeypatch.delitem(modelio._ST_DTYPES, "BOOL")
    monkeypatch.setattr(torch.Tensor, "to", spy_to)
    state = load_state_dict(tmp_path, dtype=torch.bfloat16)
    monkeypatch.undo()
    assert len(cast_calls) == 8  # the six fp32 matrices, the fp32 scalar and the empty fp32 tensor

    want = load_file(str(tmp_path / "model.safetensors"))
    assert set(state) == set(want)
    for name, t in want.items():
        expected = t.to(torch.bfloat16) if t.is_floating_point() else t
        assert state[name].dtype == expected.dtype and torch.equal(state[name], expected), name
    assert load_state_dict(tmp_path)["layer0.weight"].dtype == torch.float32  # no dtype: as stored


def test_build_model_of_an_fp32_checkpoint_is_bf16(stories_dir):
    model = build_model(stories_dir)  # stories260K is stored in fp32
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
