"""The runner against transformers: same logits, and KV-cached decode = full forward (CPU, fp32)."""

from __future__ import annotations

import pytest
import torch

from quantkit.errors import ConfigError
from quantkit.evaluator.loader import load_runner
from quantkit.evaluator.model import Decoder, DecoderArgs

# fp32 compute on both sides; the same ops in the same order give ~0 (measured 0.0 on ref-docs),
# the cached paths run other SDPA shapes and differ by float rounding only.
TOL_FULL = 1e-4
TOL_CACHED = 1e-4


def hf_logits(model_dir, ids):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(ids).logits


def check_cached_equals_full(runner: Decoder, ids: torch.Tensor, full: torch.Tensor, split: int):
    """Prefill ids[:, :split], then one token per step, then a 3-token chunk: all == full."""
    B, T = ids.shape
    runner.setup_cache(B, T + 4)
    with torch.no_grad():
        pre = runner.prefill(ids[:, :split], last_only=False)
        torch.testing.assert_close(pre, full[:, :split], atol=TOL_CACHED, rtol=0)
        steps = [runner.decode_step(ids[:, t:t + 1], torch.tensor([t])) for t in range(split, T - 3)]
        torch.testing.assert_close(torch.cat(steps, 1), full[:, split:T - 3], atol=TOL_CACHED, rtol=0)
        chunk = runner(ids[:, T - 3:], torch.arange(T - 3, T), mode="step")
        torch.testing.assert_close(chunk, full[:, T - 3:], atol=TOL_CACHED, rtol=0)
    runner.clear_cache()


@pytest.mark.shared
def test_ref_docs_logits_match_transformers(ref_docs_dir):
    runner = load_runner(ref_docs_dir).runner.float()  # fp32 compute on the bf16 weights
    assert runner.args.spec.num_kv_heads == 2 and runner.args.spec.num_heads == 8  # GQA 4:1
    ids = torch.randint(0, 4096, (2, 96), generator=torch.Generator().manual_seed(0))
    ref = hf_logits(ref_docs_dir, ids)
    with torch.no_grad():
        ours = runner(ids)
    assert ref.abs().max() > 5  # real logits, not a degenerate comparison
    assert (ours - ref).abs().max().item() < TOL_FULL
    check_cached_equals_full(runner, ids, ours, split=60)


@pytest.mark.shared
def test_stories260k_tied_logits_and_llama2c_greedy_text(stories_dir):
    import sentencepiece

    runner = load_runner(stories_dir).runner
    assert runner.lm_head.weight is runner.model.embed_tokens.weight  # tied embeddings
    ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = runner(ids)
    assert (ours - hf_logits(stories_dir, ids)).abs().max().item() < TOL_FULL
    check_cached_equals_full(runner, ids, ours, split=33)
    # llama2.c's documented greedy output from BOS (shared/models/stories260K/SOURCE.md).
    from quantkit.evaluator.generate import greedy_generate

    runner.setup_cache(1, 48)
    out = greedy_generate(runner, torch.tensor([[1]]), 40)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(stories_dir / "tokenizer.model"))
    text = sp.decode(out[0].tolist())
    assert text.startswith("Once upon a time, there was a little girl named Lily. She loved to play")


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


@pytest.mark.parametrize("arch, overrides, T", [
    ("qwen2", {}, 40),  # q/k/v biases, tied embeddings, GQA
    ("mistral", {"sliding_window": 16}, 40),  # T > window: the banded mask is exercised
    ("llama", {"rope_parameters": LLAMA3_ROPE}, 40),  # Llama 3.1 RoPE scaling (all 3 regimes)
    ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}}, 40),
    ("llama-mqa-bias-headdim", {}, 24),  # MQA, explicit head_dim, o_proj and MLP biases
    ("llama-mha-tied", {}, 24),  # plain MHA
])
def test_tiny_architectures_match_transformers(tiny_model, arch, overrides, T):
    folder = tiny_model(arch, seed=3, **overrides)
    runner = load_runner(folder).runner.float()
    vocab = runner.args.spec.vocab_size
    ids = torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(2))
    ref = hf_logits(folder, ids)
    with torch.no_grad():
        ours = runner(ids)
    assert (ours - ref).abs().max().item() < TOL_FULL
    check_cached_equals_full(runner, ids, ours, split=T // 2)


def test_llama3_rope_frequencies_equal_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from quantkit.evaluator.model import rope_inv_freq
    from tests.conftest import tiny_config

    cfg = tiny_config("llama", rope_parameters=LLAMA3_ROPE)
    ours = rope_inv_freq(DecoderArgs.from_hf_config(cfg))
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](LlamaConfig(**{k: v for k, v in cfg.items()
                                                            if k != "model_type"}))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    plain = rope_inv_freq(DecoderArgs.from_hf_config(tiny_config("llama")))
    assert not torch.equal(ours, plain)  # the scaling did something


def test_unsupported_configs_raise_config_error():
    from tests.conftest import tiny_config

    with pytest.raises(ConfigError, match="supports model_type llama, mistral, qwen2; got 'phi3'"):
        DecoderArgs.from_hf_config(tiny_config("phi3-fused"))
    yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    with pytest.raises(ConfigError, match="RoPE type 'yarn' is not supported"):
        DecoderArgs.from_hf_config(tiny_config("llama", rope_parameters=yarn))
    with pytest.raises(ConfigError, match="'hidden_act' is 'gelu'"):
        DecoderArgs.from_hf_config(tiny_config("llama", hidden_act="gelu"))
    with pytest.raises(ConfigError, match="needs 'low_freq_factor'"):
        DecoderArgs.from_hf_config(tiny_config("llama", rope_scaling={"type": "llama3", "factor": 8.0}))


def test_modes_check_the_cache(tiny_model):
    runner = load_runner(tiny_model("llama")).runner.float()
    ids = torch.zeros((1, 4), dtype=torch.long)
    with pytest.raises(ValueError, match="setup_cache"):
        runner(ids, torch.arange(4), mode="step")
    runner.setup_cache(2, 8)
    with pytest.raises(ValueError, match="does not fit the cache"):
        runner.prefill(ids)  # batch 1 against a cache of batch 2
    with pytest.raises(ValueError, match="mode must be"):
        runner(ids, mode="decode")


def test_sdpa_backend_is_read_from_the_profiler(tiny_model):
    from quantkit.evaluator.sdpa import sdpa_backends

    runner = load_runner(tiny_model("llama")).runner.float()
    ids = torch.randint(0, 320, (1, 16))
    runner.setup_cache(1, 20)
    with torch.no_grad():
        # On CPU every path (GQA + causal, cache + mask) runs the fused CPU flash kernel.
        assert sdpa_backends(lambda: runner(ids)) == ["cpu_flash"]
        assert sdpa_backends(lambda: runner.decode_step(ids[:, :1], torch.tensor([16]))) == ["cpu_flash"]
    assert sdpa_backends(lambda: None) == []


def test_attention_accepts_non_contiguous_sdpa_output(monkeypatch, tiny_model):
    """CUDA's flash/efficient SDPA kernels return a transposed, non-contiguous tensor; the CPU
    kernel does not, so emulate that layout here."""
    import torch
    import torch.nn.functional as F

    from quantkit.evaluator.loader import load_runner

    real = F.scaled_dot_product_attention

    def transposed(*args, **kwargs):
        out = real(*args, **kwargs)
        return out.transpose(1, 2).contiguous().transpose(1, 2)  # same values, CUDA-like strides

    runner = load_runner(tiny_model("llama", num_key_value_heads=2)).runner.float()
    ids = torch.randint(0, 100, (2, 7))

    def decode():
        runner.setup_cache(2, 8)
        with torch.no_grad():
            runner.prefill(ids[:, :6])
            return runner.decode_step(ids[:, 6:7], torch.tensor([6]))  # the cached GQA path

    expected = decode()
    monkeypatch.setattr(F, "scaled_dot_product_attention", transposed)
    assert torch.equal(decode(), expected)
