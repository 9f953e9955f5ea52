"""Which scaled-dot-product-attention backend really ran: read from the profiler, not assumed.

``F.scaled_dot_product_attention`` picks a kernel at run time (flash, mem-efficient, cuDNN, math
on CUDA; a flash-style kernel on CPU) and silently falls back when the inputs do not qualify
(fp32, a mask, GQA without flash...). The dispatcher records the chosen ATen op, so a profile of
one call names the backend.
"""

from __future__ import annotations

from typing import Callable

# ATen op (as the profiler names it) -> backend name. Order matters only for readability.
_OPS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "cpu_flash",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
    "aten::_scaled_dot_product_attention_math": "math",
}


def sdpa_backends(fn: Callable[[], object]) -> list[str]:
    """Run ``fn()`` once under the profiler; return the SDPA backends it used, sorted.

    An SDPA call that dispatched to none of the fused kernels is reported as "math" (the math
    path may decompose into plain matmul/softmax ops without a dedicated ATen op).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = [e.name for e in prof.events()]
    found = {_OPS[n] for n in names if n in _OPS}
    calls = names.count("aten::scaled_dot_product_attention")
    fused = sum(1 for n in names if n in _OPS and _OPS[n] != "math")
    if calls > fused:
        found.add("math")
    return sorted(found)
