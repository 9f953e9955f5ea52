#!/usr/bin/env bash
# Everything of issue 4 that needs a GPU, in one run (about 7 minutes on an H100):
#   1. the GPU tests (pytest -m gpu): CUDA graph and torch.compile decode == eager, flash
#      attention really runs, speed/memory numbers are sane, OOM is caught with the estimate's
#      advice, accelerate device_map="auto" perplexity == one device;
#   2. benchmarks/bench_eval.py: Llama-2-7B-shaped random-weight bf16 vs int8 decode/prefill next
#      to the roofline, peak memory vs the estimate at batch 1 and 8, context 2048.
# Writes nvidia-smi.txt, gpu_tests.log, bench_eval.log and bench_eval.json to the folder given as
# $1, else to $OUT (the device tool's output folder), else to /tmp/quantkit-gpu.
#
#   bash benchmarks/gpu_all.sh            # in a device call: results come back from $OUT
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/quantkit-gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}

{ nvidia-smi; "$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
  > "$out/nvidia-smi.txt" 2>&1
timeout 180 "$py" -m pytest -m gpu tests/evaluator -q -rs -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 420 "$py" benchmarks/bench_eval.py --out "$out/bench_eval.json" 2>&1 | tee "$out/bench_eval.log"
bench_rc=${PIPESTATUS[0]}
echo "gpu tests exit $tests_rc, benchmark exit $bench_rc"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
