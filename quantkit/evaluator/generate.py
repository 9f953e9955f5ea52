"""Decode steps that are not launch-bound, and greedy generation over the static KV cache.

``make_step(runner, graphs)`` returns ``step(ids (B, 1), pos (1,)) -> logits (B, 1, V)``:

- ``"cuda-graph"``: one decode step captured in a ``torch.cuda.CUDAGraph`` (the pattern of the
  PyTorch CUDA-graphs docs: warm up on a side stream, capture, then ``replay`` after copying the
  new inputs into the captured input tensors). One launch per token instead of ~10 per layer.
- ``"compile"``: ``torch.compile(mode="reduce-overhead", fullgraph=True)`` (gpt-fast's choice),
  which also fuses elementwise ops and the int8 dequantization; CUDA graphs via cudagraph trees.
- ``"none"``: eager (the only choice on CPU).

The returned logits tensor may be overwritten by the next call: read it (argmax) before stepping
again. Capture happens before the prefill and warms up at position ``max_seq_len - 1``: a cache
slot that the mask hides until a real step writes it, so warm-up never corrupts the cache.
"""

from __future__ import annotations

from typing import Callable

import torch

from quantkit.errors import DependencyError, InputError
from quantkit.evaluator.model import Decoder
from quantkit.evaluator.options import GRAPH_MODES
Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_step(runner: Decoder, graphs: str = "cuda-graph") -> Step:
    """A decode step for ``runner`` (``setup_cache`` first). ``graphs``: one of ``GRAPH_MODES``."""
    if graphs not in GRAPH_MODES:
        raise InputError(f"graphs must be one of {', '.join(GRAPH_MODES)}, got {graphs!r}")
    if runner.cache_batch == 0:
        raise InputError("make_step needs a KV cache: call runner.setup_cache(batch, max_seq_len)")
    device = runner.model.norm.weight.device
    if graphs != "none" and device.type != "cuda":
        raise DependencyError(f"graphs={graphs!r} needs the model on a CUDA device, it is on {device}")
    if graphs == "cuda-graph":
        return _GraphedStep(runner)
    if graphs == "compile":
        compiled = torch.compile(runner.decode_step, mode="reduce-overhead", fullgraph=True)
        # One position tensor for every call: slices of a positions tensor would differ in
        # storage offset, which dynamo guards on (a recompile per step).
        pos_buf = torch.zeros(1, dtype=torch.long, device=device)

        def step(ids, pos):
            pos_buf.copy_(pos)
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs are consumed
            return compiled(ids, pos_buf)

        return step
    return runner.decode_step


class _GraphedStep:
    def __init__(self, runner: Decoder, warmup: int = 3):
        device = runner.model.norm.weight.device
        self.ids = torch.zeros((runner.cache_batch, 1), dtype=torch.long, device=device)
        self.pos = torch.full((1,), runner.max_seq_len - 1, dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(warmup):  # cuBLAS handles, workspaces and autotuning happen here
                runner.decode_step(self.ids, self.pos)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.logits = runner.decode_step(self.ids, self.pos)

    def __call__(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.ids.copy_(ids)
        self.pos.copy_(pos)
        self.graph.replay()
        return self.logits


@torch.no_grad()
def greedy_generate(runner: Decoder, prompt: torch.Tensor, new_tokens: int,
                    step: Step | None = None) -> torch.Tensor:
    """Greedy continuation (B, new_tokens) of ``prompt`` (B, T); the cache must hold T + new_tokens."""
    B, T = prompt.shape
    if runner.cache_batch != B or runner.max_seq_len < T + new_tokens:
        raise InputError(f"the KV cache holds batch {runner.cache_batch} x {runner.max_seq_len} "
                         f"tokens; generating {new_tokens} after ({B}, {T}) needs more")
    step = step or runner.decode_step
    positions = torch.arange(T, T + new_tokens, device=prompt.device)
    tok = runner.prefill(prompt)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    out = [tok]
    for i in range(new_tokens - 1):
        tok = step(tok, positions[i:i + 1])[:, -1].argmax(-1, keepdim=True)
        out.append(tok)
    return torch.cat(out, dim=1)
