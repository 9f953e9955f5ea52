"""Activation peak of one prefill, measured on CPU by counting live tensor bytes, vs the estimate.

    python benchmarks/bench_activations_cpu.py [--hidden 512 --inter 1376 --layers 2 --heads 8
                                                --kv-heads 2 --batch 1,4 --tokens 512]

What it measures: every tensor an aten op creates during ``prefill`` is counted from its creation
until the last Python reference to its storage is gone (a ``TorchDispatchMode``; weights, buffers
and the preallocated KV cache are excluded). The peak of that sum is the activation peak of the
code itself, independent of any allocator: no CUDA caching-allocator rounding, fragmentation,
cuBLAS workspace or CUDA context, which only a GPU run (``bench_eval.py``) shows. Both quantkit's
runner (``quantkit eval``) and transformers' Llama (HF ``generate``'s prefill, ``logits_to_keep=1``,
SDPA, its KV cache excluded) are measured, next to ``activations.prefill_activation_bytes`` +
``logits_bytes`` for the same shape. Bytes per prefill token; B = bytes.
"""

from __future__ import annotations

import argparse
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Peak bytes of storages created inside the mode and still referenced (CPU, eager)."""

    def __init__(self, exclude=()):
        super().__init__()
        self.exclude, self.live, self.cur, self.peak = set(exclude), {}, 0, 0

    def _release(self, ptr):
        entry = self.live.get(ptr)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.cur -= entry[0]
                del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if ptr in self.exclude or nbytes == 0:
                continue
            entry = self.live.get(ptr)
            if entry is None:
                self.live[ptr] = [nbytes, 1]
                self.cur += nbytes
                self.peak = max(self.peak, self.cur)
            else:
                entry[1] += 1
            weakref.finalize(t, self._release, ptr)
        return out


def _ptrs(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def measure_runner(cfg: dict, batch: int, tokens: int) -> int:
    from quantkit.evaluator.loader import random_runner

    runner = random_runner(cfg, torch.bfloat16).runner
    runner.setup_cache(batch, tokens)
    ids = torch.randint(0, cfg["vocab_size"], (batch, tokens))
    keep = list(runner.parameters()) + list(runner.buffers())
    for layer in runner.model.layers:
        keep += [layer.self_attn.kv_cache.k, layer.self_attn.kv_cache.v]
    with torch.no_grad():
        runner.prefill(ids)  # RoPE tables and lazy state exist before the measured pass
        keep += list(runner.buffers()) + [getattr(runner, n) for n in ("rope_cos", "rope_sin")
                                          if isinstance(getattr(runner, n, None), torch.Tensor)]
        mode = LiveBytes(_ptrs(keep))
        with mode:
            runner.prefill(ids)
    return mode.peak


def measure_transformers(cfg: dict, batch: int, tokens: int) -> int:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("model_type", "architectures")},
                         attn_implementation="sdpa")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    ids = torch.randint(0, cfg["vocab_size"], (batch, tokens))
    with torch.no_grad():
        mode = LiveBytes(_ptrs(list(model.parameters()) + list(model.buffers())))
        with mode:
            out = model(ids, use_cache=True, logits_to_keep=1)
    kv = sum(t.untyped_storage().nbytes() for layer in out.past_key_values.layers
             for t in (layer.keys, layer.values))
    return mode.peak - kv  # the KV cache is its own term of the estimate


def main() -> None:
    from quantkit.calculators.activations import logits_bytes, prefill_activation_bytes
    from quantkit.spec import ModelSpec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--inter", type=int, default=1376)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=1000)
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--tokens", type=int, default=512)
    a = ap.parse_args()
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=a.hidden,
               intermediate_size=a.inter, num_hidden_layers=a.layers, num_attention_heads=a.heads,
               num_key_value_heads=a.kv_heads, head_dim=a.hidden // a.heads, vocab_size=a.vocab,
               max_position_embeddings=max(4096, a.tokens), rms_norm_eps=1e-5)
    spec = ModelSpec.from_hf_config(cfg)
    print(f"Llama shape: hidden {a.hidden}, intermediate {a.inter}, heads {a.heads}/{a.kv_heads} KV, "
          f"{a.layers} layers, vocab {a.vocab}; bf16; bytes per prefill token (B)")
    print(f"{'batch x tokens':>15} {'estimate':>10} {'runner':>10} {'(vs est)':>9} {'transformers':>13} {'(vs est)':>9}")
    for b in (int(x) for x in a.batch.split(",")):
        n = b * a.tokens
        est = (prefill_activation_bytes(spec, n) + logits_bytes(spec, b)) / n
        run = measure_runner(cfg, b, a.tokens) / n
        hf = measure_transformers(cfg, b, a.tokens) / n
        print(f"{f'{b} x {a.tokens}':>15} {est:>10,.0f} {run:>10,.0f} {run / est - 1:>+9.1%} "
              f"{hf:>13,.0f} {hf / est - 1:>+9.1%}")


if __name__ == "__main__":
    main()
