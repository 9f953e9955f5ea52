"""Perplexity protocols: the shared references (ref-docs 16.11, stories260K 4.082), int8 vs bf16,
strided vs non-overlapping, and the window arithmetic."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from quantkit.errors import InputError
from quantkit.evaluator.loader import load_runner
from quantkit.evaluator.perplexity import evaluate, make_windows
from quantkit.evaluator.text import load_text, tokenize


def scored(windows):
    return [t for w in windows for t in range(w.score_from, w.end)]


def test_non_overlapping_windows_partition_the_tokens():
    ws = make_windows(1030, 512)
    assert [(w.begin, w.end, w.score_from) for w in ws] == [(0, 512, 1), (512, 1024, 513),
                                                            (1024, 1030, 1025)]
    assert make_windows(1025, 512)[-1].end == 1024  # a 1-token tail predicts nothing: dropped


@pytest.mark.parametrize("n, ctx, stride", [(1030, 512, 256), (5000, 512, 100), (700, 64, 1),
                                            (100, 512, 128), (1000, 512, 511)])
def test_strided_windows_score_every_token_once(n, ctx, stride):
    ws = make_windows(n, ctx, stride)
    assert scored(ws) == list(range(1, n))  # each token after the first, once, in order
    assert all(w.end - w.begin <= ctx for w in ws)
    # Every scored token after the first window sees at least ctx - stride tokens of context.
    for w in ws[1:]:
        assert w.score_from - w.begin >= min(ctx - stride, w.begin)


def test_stride_equal_to_ctx_is_the_non_overlapping_protocol():
    # Then the first token of every window has no context in the window and is not scored.
    for n in (1024, 1025, 1030, 2000):
        assert make_windows(n, 512, 512) == make_windows(n, 512)


@pytest.mark.parametrize("n, ctx, stride, msg", [
    (100, 1, None, "--ctx must be at least 2"), (100, 64, 65, "--stride must be between 1"),
    (100, 64, 0, "--stride must be between 1"), (1, 64, None, "at least 2 are needed")])
def test_bad_protocols(n, ctx, stride, msg):
    with pytest.raises(InputError, match=msg):
        make_windows(n, ctx, stride)


@pytest.fixture(scope="module")
def ref_docs(ref_docs_dir, ref_docs_valid):
    lm = load_runner(ref_docs_dir)  # bf16 weights as stored
    tokens = tokenize(ref_docs_dir, load_text(str(ref_docs_valid)).text, lm.config["bos_token_id"])
    return lm.runner, tokens


@pytest.mark.shared
def test_ref_docs_reference_perplexity(ref_docs):
    """SOURCE.md: transformers fp32 on the bf16 weights, first 16,384 tokens, 512-token windows:
    16.11. (int8 within 0.5% of it: tests/cli/test_eval_cli.py runs the must-show command.)"""
    base, tokens = ref_docs
    assert len(tokens) == 431_688 and tokens[0] == 1  # data/SOURCE.md: BOS first
    protocol, (b,) = evaluate({"bf16": copy.deepcopy(base).float()}, tokens[:16384], ctx=512,
                              progress=False)
    assert (protocol.windows, protocol.predictions, b.tokens) == (32, 32 * 511, 32 * 511)
    assert b.perplexity == pytest.approx(16.11, abs=0.01)
    assert b.nll == pytest.approx(math.log(b.perplexity))
    assert b.kl_vs_base is None and b.top1_agreement is None


@pytest.mark.shared
def test_strided_is_lower_than_non_overlapping_on_ref_docs(ref_docs):
    base, tokens = ref_docs
    model = {"fp32": copy.deepcopy(base).float()}
    toks = tokens[:1024]
    _, (plain,) = evaluate(model, toks, ctx=256, progress=False)
    p_str, (strided,) = evaluate(model, toks, ctx=256, stride=128, progress=False)
    _, (same,) = evaluate(model, toks, ctx=256, stride=256, progress=False)
    assert p_str.predictions == strided.tokens == len(toks) - 1
    assert strided.perplexity < plain.perplexity  # more context per scored token
    assert same.perplexity == pytest.approx(plain.perplexity, rel=1e-12)
    assert same.tokens == plain.tokens


@pytest.mark.shared
def test_stories260k_reference_perplexity(stories_dir, shared_dir):
    """SOURCE.md: BOS + the file as one text with tokenizer.model (sentencepiece), first 16,384
    tokens, 512-token windows, transformers fp32: perplexity 4.082."""
    lm = load_runner(stories_dir)
    assert not (stories_dir / "tokenizer.json").exists()  # the sentencepiece path is exercised
    text = load_text(str(shared_dir / "data" / "tinystories-valid-head.txt")).text
    tokens = tokenize(stories_dir, text, lm.config["bos_token_id"])
    assert len(tokens) == 393_013
    _, (r,) = evaluate({"fp32": lm.runner}, tokens[:16384], ctx=512, progress=False)
    assert r.perplexity == pytest.approx(4.082, abs=0.001)


def test_identical_models_have_zero_kl_and_full_agreement(tiny_model):
    runner = load_runner(tiny_model("llama")).runner.float()
    tokens = torch.randint(0, 320, (300,), generator=torch.Generator().manual_seed(0)).tolist()
    _, (a, b) = evaluate({"a": runner, "b": copy.deepcopy(runner)}, tokens, ctx=64, base="a",
                         progress=False)
    assert b.kl_vs_base == pytest.approx(0.0, abs=1e-7) and b.top1_agreement == 1.0
    assert a.perplexity == pytest.approx(b.perplexity, rel=1e-6)
    with pytest.raises(InputError, match="base variant 'c'"):
        evaluate({"a": runner}, tokens, ctx=64, base="c", progress=False)


def test_kl_is_positive_for_a_perturbed_model(tiny_model):
    runner = load_runner(tiny_model("llama")).runner.float()
    noisy = copy.deepcopy(runner)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tokens = torch.randint(0, 320, (200,), generator=torch.Generator().manual_seed(0)).tolist()
    _, (_, r) = evaluate({"a": runner, "n": noisy}, tokens, ctx=64, base="a", progress=False)
    assert r.kl_vs_base > 1e-4 and r.top1_agreement < 1.0
