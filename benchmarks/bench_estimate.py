"""Benchmark: `quantkit estimate` start-up time and a 10,000-estimate sweep through the Python API.

Prints numbers; asserts nothing (targets: CLI well under 1 s, sweep under 1 s). Run:
    python benchmarks/bench_estimate.py
"""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quantkit.calculators.estimate import estimate  # noqa: E402
from quantkit.catalogue import find_model_card  # noqa: E402
from quantkit.spec import ModelSpec  # noqa: E402

MODELS = ["llama2-7b", "llama2-70b", "llama3-8b", "llama3.1-405b", "mistral-7b", "mixtral-8x7b",
          "qwen2.5-72b", "gemma2-27b", "phi3-mini", "deepseek-v3"]
DTYPES = ["bf16", "fp8", "int8", "int4", "fp16"]
CONTEXTS = [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 512, 3000]
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


def sweep(n: int = 10_000, gpu: str | None = None) -> float:
    specs = [ModelSpec.from_hf_config(find_model_card(m).data, name=m) for m in MODELS]
    combos = itertools.islice(itertools.cycle(itertools.product(specs, DTYPES, CONTEXTS, BATCHES)), n)
    t0 = time.perf_counter()
    count = 0
    for spec, dtype, ctx, batch in combos:
        estimate(spec, dtype=dtype, context=ctx, batch=batch, gpu=gpu)
        count += 1
    return time.perf_counter() - t0


def cli_seconds(runs: int = 5) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "quantkit", "estimate", "llama2-70b"], check=True,
                       capture_output=True, cwd=REPO)
        times.append(time.perf_counter() - t0)
    return times


if __name__ == "__main__":
    t = cli_seconds()
    print(f"quantkit estimate llama2-70b (process start to exit): median {statistics.median(t) * 1e3:.0f} ms, "
          f"min {min(t) * 1e3:.0f} ms over {len(t)} runs")
    s = sweep(10_000)
    print(f"10,000 estimates (10 models x 5 dtypes x 10 contexts x 10 batches, no GPU): {s:.3f} s "
          f"({s / 10_000 * 1e6:.1f} us each)")
    s = sweep(1_000, gpu="h100")
    print(f"1,000 estimates with --gpu h100 (fit: binary searches for max context/batch, min GPUs): "
          f"{s:.3f} s ({s / 1_000 * 1e3:.2f} ms each)")
