"""Streaming quantize (``quantkit.quantizers.stream``): the same tensors, config and report as the
in-memory path (build_model + quantize + save_quantized), many shards in and out, bounded memory."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import quantkit
from quantkit.errors import ConfigError
from quantkit.modelbuild import build_model
from quantkit.quantizers.checkpoint import save_quantized
from quantkit.quantizers.stream import quantize_folder, stream_blocker

from tests.cli.helpers import run_quantkit


def _in_memory(src, out, config, max_shard_bytes=10**9):
    model = build_model(src)
    report = quantkit.quantize(model, config, progress=False)
    save_quantized(model, out, config, report=report, source_dir=src, max_shard_bytes=max_shard_bytes)
    return report


def _tensors(folder):
    from safetensors import safe_open

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                assert k not in out, f"{k} stored twice"
                out[k] = fh.get_tensor(k)
    return out


def _assert_same_checkpoint(a, b):
    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape, k
        assert torch.equal(ta[k].reshape(-1).view(torch.uint8), tb[k].reshape(-1).view(torch.uint8)), k
    ca, cb = (json.loads((f / "config.json").read_text()) for f in (a, b))
    for c in (ca, cb):
        c["quantization_config"]["quantkit"].pop("quantkit_version")
    assert ca == cb
    ra, rb = (json.loads((f / "quant_report.json").read_text()) for f in (a, b))
    for r in (ra, rb):
        r["totals"].pop("seconds")
    assert ra["totals"] == rb["totals"] and ra["skipped"] == rb["skipped"]
    assert [x["name"] for x in ra["layers"]] == [x["name"] for x in rb["layers"]]
    for x, y in zip(ra["layers"], rb["layers"]):
        assert x["shape"] == y["shape"] and x["scale_min"] == y["scale_min"] and x["scale_max"] == y["scale_max"]
        assert x["rel_error"] == pytest.approx(y["rel_error"], rel=1e-4)
        assert x["max_abs_error"] == y["max_abs_error"]


def _reshard(src, dst, max_bytes):
    """Copy the model in ``src`` to ``dst`` as safetensors shards of ~``max_bytes`` plus an index."""
    import shutil

    from safetensors.torch import load_file, save_file

    dst.mkdir()
    state = load_file(src / "model.safetensors")
    shards, cur, size = [], {}, 0
    for k, t in state.items():
        if cur and size + t.numel() * t.element_size() > max_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = t
        size += t.numel() * t.element_size()
    shards.append(cur)
    weight_map = {}
    for i, part in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(part, str(dst / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, dst / f.name)
    assert len(shards) > 3
    return dst


CONFIGS = {"per-channel": dict(method="int8"), "g32": dict(method="int8", group_size=32),
           "fp32-scales": dict(method="int8", scale_dtype="fp32")}


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_sharded_tiny_model_streams_to_the_in_memory_tensors(arch, cfg, tiny_model, tmp_path):
    src = _reshard(tiny_model(arch, num_hidden_layers=3), tmp_path / "src", 40_000)
    config = quantkit.QuantConfig(**cfg)
    report, stats = quantize_folder(src, tmp_path / "s", config, max_shard_bytes=30_000, progress=False)
    ref = _in_memory(src, tmp_path / "m", config)
    _assert_same_checkpoint(tmp_path / "s", tmp_path / "m")
    assert len(stats.files) > 3 and len(list((tmp_path / "s").glob("*.safetensors"))) == len(stats.files)
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == stats.bytes_written == report.bytes_after == ref.bytes_after
    assert report.bytes_after == report.estimated_bytes
    for f in (tmp_path / "s").glob("*.safetensors"):  # a shard exceeds the limit only by one tensor
        sizes = [t.numel() * t.element_size() for t in _tensors_of(f).values()]
        assert sum(sizes) <= 30_000 or len(sizes) == 1
    model = quantkit.load_quantized(tmp_path / "s")
    assert model(torch.arange(8)[None]).logits.shape == (1, 8, model.config.vocab_size)


def _tensors_of(f):
    from safetensors.torch import load_file

    return load_file(f)


@pytest.mark.parametrize("skip", [("lm_head",), ()], ids=["tied-lm-head-kept", "tied-lm-head-quantized"])
def test_tied_embeddings_stream_like_in_memory(skip, tiny_model, tmp_path):
    src = tiny_model("qwen2")  # tie_word_embeddings: the checkpoint has no lm_head.weight
    config = quantkit.QuantConfig(method="int8", skip=skip)
    quantize_folder(src, tmp_path / "s", config, max_shard_bytes=50_000, progress=False)
    _in_memory(src, tmp_path / "m", config)
    _assert_same_checkpoint(tmp_path / "s", tmp_path / "m")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is (skip == ("lm_head",))


@pytest.mark.parametrize("arch", ["mixtral-moe", "qwen2-moe-shared"])
def test_fused_moe_experts_stream_like_in_memory(arch, tiny_model, tmp_path):
    src = tiny_model(arch)
    config = quantkit.QuantConfig(method="int8", group_size=16)
    report, _ = quantize_folder(src, tmp_path / "s", config, max_shard_bytes=20_000, progress=False)
    assert any(r.experts > 1 for r in report.layers)
    _in_memory(src, tmp_path / "m", config)
    _assert_same_checkpoint(tmp_path / "s", tmp_path / "m")


def test_fp32_checkpoint_is_cast_to_bf16_as_in_memory(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    src = tiny_model("llama")
    state = {k: v.float() for k, v in load_file(src / "model.safetensors").items()}
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    config = quantkit.QuantConfig(method="int8")
    quantize_folder(src, tmp_path / "s", config, progress=False)
    _in_memory(src, tmp_path / "m", config)
    _assert_same_checkpoint(tmp_path / "s", tmp_path / "m")


def test_llm_int8_streams_like_in_memory(tiny_model, tmp_path):
    pytest.importorskip("bitsandbytes")
    src = tiny_model("llama")
    config = quantkit.QuantConfig(method="llm.int8")
    quantize_folder(src, tmp_path / "s", config, progress=False)
    _in_memory(src, tmp_path / "m", config)
    _assert_same_checkpoint(tmp_path / "s", tmp_path / "m")


@pytest.mark.shared
@pytest.mark.parametrize("group_size", [None, 64], ids=["per-channel", "g64"])
def test_ref_docs_streams_to_the_in_memory_tensors(group_size, ref_docs_dir, tmp_path):
    config = quantkit.QuantConfig(method="int8", group_size=group_size)
    quantize_folder(ref_docs_dir, tmp_path / "s", config, max_shard_bytes=1_000_000, progress=False)
    _in_memory(ref_docs_dir, tmp_path / "m", config)
    _assert_same_checkpoint(tmp_path / "s", tmp_path / "m")


def test_hub_per_expert_layout_is_not_streamed_and_the_cli_says_so(tmp_path):
    from tests.quantizers.test_experts import _hub_layout

    _hub_layout("mixtral-moe", tmp_path / "src")
    assert "per-expert" in stream_blocker(tmp_path / "src")
    with pytest.raises(ConfigError, match=r"cannot be quantized by streaming: its tensor names are the Hub's"):
        quantize_folder(tmp_path / "src", tmp_path / "s", quantkit.QuantConfig(), progress=False)
    res = run_quantkit("quantize", str(tmp_path / "src"), "--out", str(tmp_path / "q"))
    assert res.returncode == 0, res.stderr
    assert "note: its tensor names are the Hub's per-expert layout" in res.stderr
    assert "quantizing in memory (the whole model is loaded)" in res.stderr


def test_cli_streams_and_says_so(tiny_model, tmp_path):
    res = run_quantkit("quantize", str(tiny_model("llama")), "--out", str(tmp_path / "q"), "--max-shard-size", "20KB")
    assert res.returncode == 0, res.stderr
    assert "streamed one module at a time" in res.stdout and "note:" not in res.stderr
    assert len(list((tmp_path / "q").glob("model-*.safetensors"))) > 1


def test_uncovered_architecture_runs_its_forward_on_a_slice(tmp_path):
    from tests.conftest import write_tiny_model

    src = write_tiny_model(tmp_path / "jamba", "llama")  # the config is replaced below
    from tests.quantizers.test_experts import _uncovered

    model = _uncovered("jamba", expert_layer_period=1, expert_layer_offset=0, attn_layer_period=2,
                       attn_layer_offset=1, mamba_d_state=8, use_mamba_kernels=False, num_experts=4)
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg["architectures"] = ["JambaForCausalLM"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"model_type 'jamba' is not one quantkit covers, and its forward "
                                          r"fails once quantized"):
        quantize_folder(src, tmp_path / "s", quantkit.QuantConfig(), progress=False)
    assert not (tmp_path / "s").exists()
    quantize_folder(src, tmp_path / "k", quantkit.QuantConfig(skip=("lm_head", "dt_proj", "x_proj", "out_proj",
                                                                     "in_proj")), progress=False)


_RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    from tests.conftest import tiny_config
    src, out, layers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    cfg = tiny_config("llama", hidden_size=1024, intermediate_size=2816, num_attention_heads=16,
                      num_key_value_heads=16, num_hidden_layers=layers, vocab_size=8192, head_dim=64)
    if not src.exists():  # write the random model shard by shard (a layer per shard)
        src.mkdir()
        g = torch.Generator().manual_seed(0)
        def r(*shape): return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)
        H, I, V = 1024, 2816, 8192
        wm = {}
        parts = [{"model.embed_tokens.weight": r(V, H), "model.norm.weight": torch.ones(H, dtype=torch.bfloat16),
                  "lm_head.weight": r(V, H)}]
        for i in range(layers):
            p = f"model.layers.{i}."
            parts.append({p + "self_attn.q_proj.weight": r(H, H), p + "self_attn.k_proj.weight": r(H, H),
                          p + "self_attn.v_proj.weight": r(H, H), p + "self_attn.o_proj.weight": r(H, H),
                          p + "mlp.gate_proj.weight": r(I, H), p + "mlp.up_proj.weight": r(I, H),
                          p + "mlp.down_proj.weight": r(H, I),
                          p + "input_layernorm.weight": torch.ones(H, dtype=torch.bfloat16),
                          p + "post_attention_layernorm.weight": torch.ones(H, dtype=torch.bfloat16)})
        for i, part in enumerate(parts):
            name = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
            save_file(part, str(src / name), metadata={"format": "pt"})
            wm.update({k: name for k in part})
        (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
        (src / "config.json").write_text(json.dumps(cfg))
        print(json.dumps({"written": True}))
        sys.exit(0)
    import quantkit
    import transformers.models.llama.modeling_llama  # the imports are not the model's memory
    from quantkit.quantizers.stream import quantize_folder
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report, stats = quantize_folder(src, out, quantkit.QuantConfig(), max_shard_bytes=200_000_000, progress=False)
    print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "base": base,
                      "read": stats.bytes_read, "written": stats.bytes_written}))
""")


@pytest.mark.slow
def test_streaming_memory_is_bounded_by_a_module_not_the_model(tmp_path):
    """24 layers of 1024 x 2816 (0.65 GB bf16): the peak above the imports stays near a few
    modules (the largest, 2 x 16.8 MB embeddings, and the read/write queues), far below the model."""
    repo = str(__import__("pathlib").Path(__file__).resolve().parents[2])
    src, out = tmp_path / "src", tmp_path / "out"
    for _ in range(2):
        res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(src), str(out), "24"],
                             capture_output=True, text=True, cwd=repo, timeout=600)
        assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    model_bytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    assert model_bytes > 600_000_000 and got["read"] > 0.99 * model_bytes
    extra = got["peak"] - got["base"]
    print(f"model {model_bytes / 1e6:.0f} MB, base RSS {got['base'] / 1e6:.0f} MB, peak {got['peak'] / 1e6:.0f} MB")
    assert extra < 250_000_000, extra  # generous: ~10 modules of 5.8 MB bf16, where the model is 650 MB
