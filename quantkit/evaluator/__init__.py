"""``quantkit eval``'s library: a compact Llama-family runner and what is measured with it.

- ``model``      the decoder (RoPE, RMSNorm, SwiGLU, GQA through SDPA, static KV cache)
- ``loader``     fill it from a Hugging Face folder, a quantkit checkpoint, or random weights
- ``generate``   CUDA-graph / compiled decode steps and greedy generation
- ``text``       evaluation text (.txt, .jsonl, datasets) and its tokens
- ``perplexity`` non-overlapping and strided perplexity, KL and top-1 against a base
- ``speed``      prefill/decode speed, TTFT, peak memory vs the estimate (CUDA)
- ``sdpa``       which attention backend really ran
- ``options``    what can be asked (torch-free); ``variants`` the --compare list;
  ``compare`` the run; ``report`` / ``plot`` the output

Importing this package imports nothing heavy; the modules import torch.
"""
