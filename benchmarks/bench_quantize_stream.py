"""Streaming ``quantkit quantize`` on a random bf16 checkpoint of a catalogue shape: wall time, peak
RSS, bytes in and out, and the ratio to a plain ``cp -r`` of the input folder. Prints numbers;
never asserted in tests.

    python benchmarks/bench_quantize_stream.py --model llama2-13b --dir /work/bench-tmp
    python benchmarks/bench_quantize_stream.py --model llama2-7b --layers 4 --peers

The checkpoint is written shard by shard by this script (5 GB shards, random N(0, 0.02) data
reused across tensors, so writing it costs disk time, not RNG time). ``--layers`` cuts the layer
count. ``--peers`` also times torchao Int8WeightOnlyConfig and optimum-quanto qint8 (load +
quantize + save) where the model fits in memory. Each run is a fresh process: wall time from
start to exit, peak RSS from ``getrusage(RUSAGE_CHILDREN)``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

PEER = r"""
import sys, time, torch
from transformers import AutoModelForCausalLM
src, out, which = sys.argv[1], sys.argv[2], sys.argv[3]
m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
if which == "torchao":
    from torchao.quantization import Int8WeightOnlyConfig, quantize_
    quantize_(m, Int8WeightOnlyConfig())
    m.save_pretrained(out, safe_serialization=False)
else:
    from optimum.quanto import freeze, qint8, quantize
    quantize(m, weights=qint8); freeze(m)
    m.save_pretrained(out)
"""


def write_checkpoint(model: str, layers: int | None, folder: Path) -> int:
    """A random bf16 checkpoint of catalogue ``model`` in ``folder``; returns its tensor bytes."""
    import torch

    from quantkit.catalogue import find_model_card
    from quantkit.modelbuild import empty_model
    from quantkit.quantizers.shards import ShardWriter

    cfg = {k: v for k, v in find_model_card(model).data.items() if not k.startswith("_")}
    if layers:
        cfg["num_hidden_layers"] = layers
    cfg["torch_dtype"] = "bfloat16"
    meta = empty_model(cfg, torch.bfloat16)
    shapes = {k: tuple(t.shape) for k, t in meta.state_dict().items()}
    tied = set(getattr(meta, "all_tied_weights_keys", None) or {})
    biggest = max(int(torch.Size(s).numel()) for s in shapes.values())
    pool = (torch.randn(biggest + 4096, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    folder.mkdir(parents=True)
    writer = ShardWriter(folder, 5_000_000_000, header_reserve=4096 + 200 * len(shapes))
    for i, (name, shape) in enumerate(shapes.items()):
        if name in tied:
            continue
        n = int(torch.Size(shape).numel())
        t = torch.ones(shape, dtype=torch.bfloat16) if name.endswith("norm.weight") else \
            pool[i % 4096: i % 4096 + n].view(shape)
        writer.add(name, t)
    _, _, total = writer.close()
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return total


_WRAP = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
         "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
         "sys.exit(r.returncode)")


def timed(cmd: list[str], env=None) -> tuple[float, int, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS bytes of ``cmd``, result), ``cmd`` run under a small wrapper
    process that reports its own child's ru_maxrss."""
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
    peak = int(res.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) * 1024
    return wall, peak, res


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama2-13b")
    ap.add_argument("--layers", type=int, default=None, help="keep only this many decoder layers")
    ap.add_argument("--dir", type=Path, default=Path("bench-tmp"))
    ap.add_argument("--max-shard-size", default="5GB")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--peers", action="store_true", help="also time torchao and optimum-quanto")
    ap.add_argument("--keep", action="store_true", help="keep the files (deleted by default)")
    args = ap.parse_args()

    import torch

    src = args.dir / f"{args.model}{'-l' + str(args.layers) if args.layers else ''}"
    env = dict(os.environ)
    try:
        if not src.exists():
            t0 = time.perf_counter()
            write_checkpoint(args.model, args.layers, src)
            print(f"wrote {src} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        in_bytes = folder_bytes(src)
        rows = []
        for _ in range(args.repeat):
            copy = args.dir / "cp-copy"
            wall, _, _ = timed(["bash", "-c", f"cp -r '{src}' '{copy}' && sync"])
            shutil.rmtree(copy)
            rows.append(("cp -r + sync", wall, None, in_bytes))
            out = args.dir / "q-out"
            wall, peak, res = timed([str(Path(sys.executable).parent / "quantkit"), "quantize", str(src), "--out", str(out),
                                     "--max-shard-size", args.max_shard_size, "--force"], env)
            rep = json.loads((out / "quant_report.json").read_text())["totals"]
            rows.append(("quantkit quantize (streaming)", wall, peak, folder_bytes(out)))
            print(f"report: bytes_after {rep['bytes_after']:,}, estimated_bytes {rep['estimated_bytes']:,}, "
                  f"equal: {rep['bytes_after'] == rep['estimated_bytes']}")
            shutil.rmtree(out)
            if args.peers:
                for peer in ("torchao", "quanto"):
                    pout = args.dir / f"{peer}-out"
                    try:
                        wall, peak, _ = timed([sys.executable, "-c", PEER, str(src), str(pout), peer], env)
                        rows.append((peer, wall, peak, folder_bytes(pout)))
                    finally:
                        shutil.rmtree(pout, ignore_errors=True)
        cp = min(w for n, w, _, _ in rows if n.startswith("cp"))
        print(f"model {args.model}{f' ({args.layers} layers)' if args.layers else ''}: input {in_bytes:,} B "
              f"({in_bytes / 1e9:.2f} GB); torch {torch.__version__}, {os.cpu_count()} CPUs, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        print(f"{'run':32} {'wall s':>8} {'peak RSS GB':>12} {'output GB':>10} {'x cp':>6}")
        for name, wall, peak, nbytes in rows:
            print(f"{name:32} {wall:8.1f} {'' if peak is None else f'{peak / 1e9:.2f}':>12} "
                  f"{nbytes / 1e9:10.3f} {wall / cp:6.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(src, ignore_errors=True)


if __name__ == "__main__":
    main()
