"""Perplexity, mean NLL and, against a base model, KL divergence and top-1 agreement.

Two protocols over the same token sequence (the first ``max_tokens`` tokens of the text):

- non-overlapping (``stride=None``): windows [0, ctx), [ctx, 2 ctx), ...; every window predicts its
  tokens 1..L-1 from the tokens before them in that window (ctx - 1 predictions per full window;
  the GPTQ/AWQ convention, except that a shorter last window is scored too, not dropped).
- strided sliding window (``stride=s``, the Hugging Face perplexity guide): windows start at
  0, s, 2s, ...; each covers up to ctx tokens and scores only the tokens not scored before, so
  every token after the first is predicted once, with at least ctx - s tokens of context (the first
  window: fewer). With ``stride == ctx`` it is the non-overlapping protocol exactly.

Every model sees the same windows in lockstep, so the KL divergence KL(base || variant) of the
next-token distributions and top-1 agreement are taken position by position without storing the
base's logits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import torch

from quantkit.errors import InputError


@dataclass(frozen=True)
class Window:
    begin: int  # first token of the window (index into the token sequence)
    end: int  # one past the last token
    score_from: int  # first token scored as a target (predicted from the tokens before it)


@dataclass(frozen=True)
class Protocol:
    ctx: int  # tokens per window
    stride: int | None  # None: non-overlapping windows
    tokens: int  # tokens evaluated (after --max-tokens), BOS included
    windows: int
    predictions: int  # next-token predictions scored (= tokens - 1)

    @property
    def name(self) -> str:
        return "non-overlapping" if self.stride is None else "strided"


@dataclass
class PerplexityResult:
    variant: str
    perplexity: float
    nll: float  # mean negative log-likelihood, nats per predicted token
    tokens: int  # predictions scored
    kl_vs_base: float | None  # mean KL(base || variant), nats per position; None for the base
    top1_agreement: float | None  # fraction of positions where both argmaxes agree

    def to_dict(self) -> dict:
        return asdict(self)


def make_windows(n_tokens: int, ctx: int, stride: int | None = None) -> list[Window]:
    """The windows of a protocol over ``n_tokens`` tokens (see the module docstring)."""
    if ctx < 2:
        raise InputError(f"--ctx must be at least 2 tokens, got {ctx}")
    if stride is not None and not 1 <= stride <= ctx:
        raise InputError(f"--stride must be between 1 and --ctx ({ctx}), got {stride}")
    if n_tokens < 2:
        raise InputError(f"the text has {n_tokens} token(s); at least 2 are needed")
    windows = []
    if stride is None:
        for begin in range(0, n_tokens, ctx):
            end = min(begin + ctx, n_tokens)
            if end - begin >= 2:
                windows.append(Window(begin, end, begin + 1))
        return windows
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + ctx, n_tokens)
        if max(prev_end, begin + 1) < end:  # a window with nothing new to score is skipped
            windows.append(Window(begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == n_tokens:
            break
    return windows


class _Accumulator:
    def __init__(self):
        self.nll = 0.0  # nats, summed in float64 on the host
        self.count = 0
        self.kl = 0.0
        self.agree = 0


def evaluate(
    models: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
    tokens: Sequence[int],
    ctx: int = 2048,
    stride: int | None = None,
    base: str | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[Protocol, list[PerplexityResult]]:
    """Score every model on the same windows.

    ``models``: variant name -> callable mapping input ids (1, L) on ``device`` to logits (1, L, V)
    (a ``Decoder`` in mode "full", or a dispatched model). ``base``: the variant that KL and top-1
    are measured against (None: no KL). Returns the protocol and one result per variant, in order.
    """
    if base is not None and base not in models:
        raise InputError(f"base variant {base!r} is not among {', '.join(models)}")
    ids = torch.as_tensor(list(tokens), dtype=torch.long)
    windows = make_windows(len(ids), ctx, stride)
    acc = {name: _Accumulator() for name in models}
    bar = _progress(len(windows), progress)
    with torch.inference_mode():
        for w in windows:
            window = ids[w.begin:w.end].to(device)[None]
            # Logits at position j predict token j + 1: score targets [score_from, end).
            lo, hi = w.score_from - w.begin - 1, w.end - w.begin - 1
            targets = window[0, lo + 1:hi + 1]
            base_logp = None
            if base is not None:
                base_logp = _score(models[base], window, lo, hi, targets, acc[base], None)
            for name, model in models.items():
                if name != base:
                    _score(model, window, lo, hi, targets, acc[name], base_logp)
            bar.update(1)
    bar.close()
    n_pred = sum(w.end - w.score_from for w in windows)
    protocol = Protocol(ctx=ctx, stride=stride, tokens=len(ids), windows=len(windows),
                        predictions=n_pred)
    results = []
    for name in models:
        a = acc[name]
        nll = a.nll / a.count
        has_base = base is not None and name != base
        results.append(PerplexityResult(
            variant=name, perplexity=math.exp(nll), nll=nll, tokens=a.count,
            kl_vs_base=a.kl / a.count if has_base else None,
            top1_agreement=a.agree / a.count if has_base else None,
        ))
    return protocol, results


def _score(model, window, lo, hi, targets, acc: _Accumulator, base_logp):
    logits = model(window)
    # Move to the targets' device (a model split by accelerate returns logits on its last GPU).
    logp = torch.log_softmax(logits[0, lo:hi].float(), dim=-1).to(targets.device)  # (n, V) fp32
    acc.nll -= logp.gather(-1, targets[:, None]).sum().item()
    acc.count += targets.numel()
    if base_logp is not None:
        # KL(base || variant) = sum_v p_base (log p_base - log p_variant), per position.
        kl = (base_logp.exp() * (base_logp - logp)).sum(-1)
        acc.kl += kl.sum().item()
        acc.agree += (base_logp.argmax(-1) == logp.argmax(-1)).sum().item()
    return logp


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="perplexity windows", unit="win", disable=not enabled,
                leave=False)
