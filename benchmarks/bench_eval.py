"""bf16 vs int8 decode/prefill speed and peak memory of a Llama-2-7B-shaped model, next to the
roofline and to ``quantkit estimate`` (issue 4). Prints numbers; asserts nothing. Needs CUDA.

    python benchmarks/bench_eval.py --out bench_eval.json          # ~5 min on an H100

The model has random N(0, 0.02) weights (norms 1): speed and memory do not depend on the values.
int8 is ``quantkit.quantize(method="int8")`` (per-channel, lm_head kept in bf16) applied in place
after the bf16 runs. Two settings per variant:

- speed: prompt 128 + 128 new tokens at batch 1 and 8, decode step through a CUDA graph and
  through torch.compile(mode="reduce-overhead"); targets: bf16 batch-1 decode >= 80% of the
  bound (>= 175 tokens/s on an H100), int8 decode faster than bf16.
- memory: context 2048 (prompt 1920 + 128 new) at batch 1 and 8 (CUDA graph): the measured peak
  next to the estimate (target: within 5%).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama2-7b", help="catalogue name or config.json path")
    p.add_argument("--variants", default="bf16,int8")
    p.add_argument("--graphs", default="cuda-graph,compile")
    p.add_argument("--speed-batches", type=ints, default=[1, 8])
    p.add_argument("--speed-prompt", type=int, default=128)
    p.add_argument("--speed-new", type=int, default=128)
    p.add_argument("--memory-batches", type=ints, default=[1, 8])
    p.add_argument("--memory-context", type=int, default=2048)
    p.add_argument("--memory-new", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gpu", default=None, help="catalogue GPU for the bound [default: detected]")
    p.add_argument("--out", default=None, help="JSON file [default: $OUT/bench_eval.json if $OUT]")
    return p.parse_args(argv)


def model_config(name: str) -> dict:
    from quantkit.catalogue import find_model_card
    from quantkit.resolve import read_config_file

    path = Path(name)
    if path.is_dir():
        path = path / "config.json"
    return read_config_file(path) if path.is_file() else dict(find_model_card(name).data)


def gpu_spec(name):
    import torch

    from quantkit.catalogue import get_gpu

    return get_gpu(name or torch.cuda.get_device_name())


def run(label, fn, records, **meta):
    """One measurement; an exception is recorded and printed, the benchmark goes on."""
    t0 = time.perf_counter()
    try:
        res = fn().to_dict()
    except Exception as exc:  # a benchmark reports every failure and continues with the rest
        res = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    res.update(meta, wall_s=round(time.perf_counter() - t0, 1))
    records.append(res)
    if res.get("error"):
        print(f"{label}: ERROR {res['error']}", flush=True)
        return res
    frac = res.get("fraction_of_bound")
    print(f"{label}: prefill {res['prefill_tokens_per_s']:,.0f} tok/s, TTFT {res['ttft_ms']:.1f} ms, "
          f"decode {res['decode_tokens_per_s']:,.1f} tok/s ({res['decode_step_ms']:.2f} ms/step"
          + (f", {100 * frac:.1f}% of bound {res['decode_bound_tokens_per_s']:,.0f}" if frac else "")
          + f"), peak {res['peak_allocated_bytes'] / 1e9:.2f} GB alloc / "
          f"{res['peak_reserved_bytes'] / 1e9:.2f} GB reserved / {res['device_used_bytes'] / 1e9:.2f}"
          f" GB used vs estimate {res['estimated_bytes'] / 1e9:.2f} GB "
          f"({res['memory_error_pct']:+.1f}%), SDPA {res['sdpa_backends']}", flush=True)
    return res


def summary(records) -> dict:
    def find(variant, setting, graphs, batch):
        for r in records:
            key = (r["variant"], r["setting"], r["graphs_mode"], r.get("batch"))
            if key == (variant, setting, graphs, batch) and not r.get("error"):
                return r
        return None

    out = {}
    for graphs in ("cuda-graph", "compile"):
        b = find("bf16", "speed", graphs, 1)
        q = find("int8", "speed", graphs, 1)
        if b:
            out[f"bf16_decode_b1_{graphs}"] = {
                "tokens_per_s": b["decode_tokens_per_s"], "fraction_of_bound": b["fraction_of_bound"],
                "target": ">= 0.80 of the bound and >= 175 tokens/s (H100)"}
        if b and q:
            out[f"int8_over_bf16_decode_b1_{graphs}"] = q["decode_tokens_per_s"] / b["decode_tokens_per_s"]
    out["memory_error_pct"] = {f"{r['variant']}_b{r['batch']}": r.get("memory_error_pct")
                               for r in records if r["setting"] == "memory" and not r.get("error")}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import quantkit
    from quantkit.evaluator.loader import random_runner
    from quantkit.evaluator.speed import measure_speed

    if not torch.cuda.is_available():
        print("bench_eval: no CUDA device; this benchmark measures GPU speed and memory only",
              file=sys.stderr)
        return 2
    cfg = model_config(args.model)
    gpu = gpu_spec(args.gpu)
    name = torch.cuda.get_device_name()
    print(f"{args.model} (random weights) on {name}; roofline for {gpu.name}: "
          f"{gpu.memory_bandwidth_bytes_per_s / 1e12:.2f} TB/s", flush=True)
    runner = random_runner(cfg, torch.bfloat16, device="cuda", seed=0).runner
    records: list[dict] = []
    for variant in args.variants.split(","):
        est_dtype = "bf16"
        if variant == "int8":
            quantkit.quantize(runner, quantkit.QuantConfig(method="int8"), progress=False)
            torch.cuda.empty_cache()
            est_dtype = "int8"
        elif variant != "bf16":
            raise SystemExit(f"bench_eval: variant must be bf16 or int8, got {variant!r}")
        # Memory first: compiled graphs (cudagraph trees) keep pools that would inflate the peak.
        for b in args.memory_batches:
            prompt = args.memory_context - args.memory_new
            run(f"{variant} memory ctx {args.memory_context} batch {b}",
                lambda: measure_speed(runner, b, prompt, args.memory_new, graphs="cuda-graph",
                                      warmup=1, repeats=3, est_dtype=est_dtype, gpu=gpu),
                records, variant=variant, setting="memory", graphs_mode="cuda-graph", batch=b)
        for graphs in args.graphs.split(","):
            for b in args.speed_batches:
                run(f"{variant} speed {graphs} batch {b}",
                    lambda: measure_speed(runner, b, args.speed_prompt, args.speed_new, graphs=graphs,
                                          warmup=args.warmup, repeats=args.repeats,
                                          est_dtype=est_dtype, gpu=gpu),
                    records, variant=variant, setting="speed", graphs_mode=graphs, batch=b)
                if graphs == "compile":
                    torch._dynamo.reset()  # drop compiled graphs and their CUDA-graph pools
                    torch.cuda.empty_cache()
    report = {
        "benchmark": "bench_eval", "model": args.model, "weights": "random N(0, 0.02)",
        "gpu": name, "gpu_card": gpu.name, "date": datetime.date.today().isoformat(),
        "torch": torch.__version__, "quantkit": quantkit.__version__,
        "command": " ".join(sys.argv), "records": records, "summary": summary(records),
    }
    print(json.dumps(report["summary"], indent=2))
    out = args.out or (os.path.join(os.environ["OUT"], "bench_eval.json") if os.environ.get("OUT") else None)
    if out:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(out)), prefix=".bench_eval.")
        with os.fdopen(fd, "w") as fh:
            json.dump(report, fh, indent=2)
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
