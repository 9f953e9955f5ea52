"""Compile the int8 kernels ahead of time for a CUDA target, on a machine without a GPU.

Triton's JIT needs a driver to launch, but ``triton.compile`` with an explicit ``GPUTarget`` runs
the whole pipeline (TTIR -> TTGIR -> LLVM -> PTX -> cubin through the ptxas bundled with the
triton wheel) on the CPU. ``compile_launch`` runs one of quantkit's host launchers with the kernels
swapped for recorders, specialises every argument exactly as the JIT launcher would
(``native_specialize_impl``: ints equal to 1 become constants, ints and pointers divisible by 16
get ``tt.divisibility``), and compiles each recorded launch. ``resource_usage`` reads registers,
spills and shared memory from the cubin with the bundled ``cuobjdump``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import CUDABackend
from triton.compiler import ASTSource
from triton.runtime.jit import native_specialize_impl

from quantkit.kernels import launch
from quantkit.kernels import triton_int8 as tk

_KERNELS = ("skinny_kernel", "splitk_reduce_kernel", "gemm_kernel", "dequant_kernel")
_OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")


class _Recorder:
    def __init__(self, fn, calls):
        self.fn, self.calls = fn, calls

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            self.calls.append((self.fn, args, kwargs))
        return record


@contextlib.contextmanager
def _recording(calls):
    saved = {name: getattr(tk, name) for name in _KERNELS}
    try:
        for name, fn in saved.items():
            setattr(tk, name, _Recorder(fn, calls))
        yield
    finally:
        for name, fn in saved.items():
            setattr(tk, name, fn)


def _source(fn, args, kwargs):
    params = fn.arg_names
    values = dict(zip(params, args))
    values.update({k: v for k, v in kwargs.items() if k not in _OPTIONS})
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(params):
        value = values[name]
        if fn.params[i].is_constexpr:
            signature[name] = "constexpr"
            constexprs[name] = value
            continue
        kind, spec = native_specialize_impl(CUDABackend, value, False, True, True)
        if kind == "constexpr":
            signature[name] = "constexpr"
            constexprs[name] = spec
            continue
        signature[name] = kind
        if spec == "D":
            attrs[(i,)] = [["tt.divisibility", 16]]
    options = {k: kwargs[k] for k in _OPTIONS if k in kwargs}
    return ASTSource(fn, signature, constexprs=constexprs, attrs=attrs), options


def compile_launch(kind, x2, qweight, scale, bias, group_size, cfg, capability=90):
    """Compile every kernel launch the ``kind`` launcher makes for these CPU operands."""
    calls = []
    out = x2.new_empty((x2.shape[0], qweight.shape[0]))
    with _recording(calls):
        if kind == "dequant":
            launch.dequantize_triton(qweight, scale, group_size, x2.dtype)
        else:
            launch.LAUNCHERS[kind](x2, qweight, scale, bias, group_size, cfg, out)
    target = GPUTarget("cuda", capability, 32)
    compiled = []
    for fn, args, kwargs in calls:
        src, options = _source(fn, args, kwargs)
        compiled.append(triton.compile(src, target=target, options=options))
    return compiled


def resource_usage(kernel) -> dict:
    """{'registers', 'spill_stores', 'spill_loads', 'shared_bytes'} from the kernel's cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as fh:
            fh.write(kernel.asm["cubin"])
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                            "cuobjdump")
        text = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True,
                              check=True).stdout
    regs = re.search(r"REG:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    return {"registers": int(regs.group(1)) if regs else -1,
            "stack_bytes": int(stack.group(1)) if stack else -1,
            "shared_bytes": int(kernel.metadata.shared), "raw": text.strip()}
