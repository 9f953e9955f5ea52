"""int8-weight x floating-point-activation matmul: ``y = x @ dequant(W_int8).T (+ bias)``.

``int8_linear`` is the one entry point ``Int8Linear`` calls. It dispatches by a fixed rule:

* the fused Triton kernels (``launch.run``) when ``x`` is on CUDA, ``x`` is bfloat16 or float16
  and ``import triton`` succeeds. M <= 16 rows take the skinny/GEMV kernel (weights streamed once,
  split-K where the shape needs it), larger M the tiled tensor-core kernel (or dequantise + cuBLAS
  where the tuner measured that faster);
* the plain torch reference (``int8_linear_reference``) otherwise: CPU tensors, fp32 activations,
  or no triton. This is the documented rule by device, not a fallback on error: a Triton compile
  or launch error on CUDA propagates. bf16/fp16 on CUDA without an importable triton is the one
  case that costs speed unexpectedly, so it warns once per process (``warnings.warn``) with the
  install command.

``dispatch_reason(x)`` says which path a given ``x`` takes and why. The backend can be forced for
A/B tests with ``set_backend`` or the environment variable ``QUANTKIT_INT8_KERNEL``:

* ``auto`` (default): the rule above;
* ``reference``: always the torch reference;
* ``triton``: always the Triton kernels; raises ``DependencyError`` where they cannot run. On CPU
  this runs them in Triton's interpreter when ``TRITON_INTERPRET=1`` was set before triton was
  imported (that is how the CPU tests exercise the kernels; it is slow).

Tuning and CUDA graphs: each (dtype, M bucket, N, K, scale groups) is tuned on its first eager
call (a few seconds, synchronising the device) and cached for the process. Call
``warmup([(M, N, K), ...])`` or run one eager forward per batch size before capturing a CUDA
graph; after that a call does no host sync and only allocates its output (and, for split-K, an
fp32 partial buffer), which capture records in the graph's memory pool. An untuned shape during
capture raises ``KernelNotTunedError``. Warm up with exactly what will be captured: Triton
compiles one variant per argument specialisation (M == 1, M % 16 == 0, bias or not, and the dtype
of every pointer: activations, scales, bias), and compiling inside capture is not safe.
``warmup``'s ``scale_dtype`` and ``bias_dtype`` default to bf16, ``Int8Linear``'s defaults; pass
the model's if it stores other dtypes. ``QUANTKIT_INT8_AUTOTUNE=0`` replaces tuning by a fixed
heuristic config (no device sync, so nothing to tune before capture; compiling still needs
``warmup`` or one eager call).

``torch.compile``: the call is one opaque custom op, ``torch.ops.quantkit.int8_linear``, registered
when this package is imported after torch (as ``Int8Linear``'s module does) or on the first eager
call; its body is the dispatch above.

Shapes: ``x`` (..., in_features) in bf16/fp16/fp32; ``qweight`` int8 (out_features, in_features);
``scale`` (out_features, n_groups) where n_groups = 1 for per-output-channel scales and
ceil(in_features / group_size) for per-group scales; ``bias`` (out_features,) or None.
The output has x's dtype. Importing this package imports neither torch nor triton.
"""

from __future__ import annotations

import os
import sys
import warnings

from quantkit.errors import DependencyError, UnknownNameError

BACKENDS = ("auto", "triton", "reference")
ENV_BACKEND = "QUANTKIT_INT8_KERNEL"

_backend_override: str | None = None
_triton_import_error: str | None = None  # "" once triton imported fine
_warned_no_triton = False  # the CUDA-without-triton warning is given once per process


def dequantize(qweight, scale, group_size: int | None, dtype):
    """Return ``qweight * scale`` in ``dtype``, shape (out, in)."""
    out_features, in_features = qweight.shape
    if group_size is None or scale.shape[1] == 1:
        return qweight.to(dtype) * scale.to(dtype)
    expanded = scale.to(dtype).repeat_interleave(group_size, dim=1)[:, :in_features]
    return qweight.to(dtype) * expanded


def int8_linear_reference(x, qweight, scale, bias=None, group_size: int | None = None):
    """Plain torch: dequantize the weight to x's dtype, then ``F.linear``."""
    import torch.nn.functional as F

    w = dequantize(qweight, scale, group_size, x.dtype)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def set_backend(name: str | None) -> None:
    """Force ``"auto"``, ``"triton"`` or ``"reference"`` in this process; None defers to the env."""
    global _backend_override
    if name is not None and name not in BACKENDS:
        raise UnknownNameError(f"int8 kernel backend {name!r}: choose one of {', '.join(BACKENDS)}")
    _backend_override = name


def get_backend() -> str:
    """The backend in force: ``set_backend``'s, else ``$QUANTKIT_INT8_KERNEL``, else ``"auto"``."""
    if _backend_override is not None:
        return _backend_override
    value = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise UnknownNameError(f"{ENV_BACKEND}={value!r}: choose one of {', '.join(BACKENDS)}")
    return value


INSTALL_HINT = "install it with `pip install triton` (or the extra: pip install 'quantkit[triton]')"


def _triton_problem() -> str:
    """'' when triton imports, else why not (checked once per process)."""
    global _triton_import_error
    if _triton_import_error is None:
        try:
            import triton  # noqa: F401
        except ImportError as exc:  # the documented "no triton -> reference" rule, not a fallback
            if isinstance(exc, ModuleNotFoundError) and exc.name == "triton":
                _triton_import_error = "triton is not installed"
            else:  # installed but broken (a missing shared library, a version clash...)
                _triton_import_error = f"triton is installed but fails to import ({exc})"
        else:
            _triton_import_error = ""
    return _triton_import_error


def _is_cuda(x) -> bool:
    return x.is_cuda  # one place, so the CPU tests can stand in for a CUDA tensor


def _route(x) -> tuple[str, str, bool]:
    """(path, why, slowed): slowed is True when x could take the Triton kernels but triton is
    missing, the one case where the reference path is a surprise worth a warning."""
    import torch

    backend = get_backend()
    if backend == "reference":
        return "reference", f"backend forced to 'reference' ({ENV_BACKEND} or set_backend)", False
    from quantkit.kernels.launch import interpreting

    on_cuda = _is_cuda(x)
    missing_triton = False
    if x.dtype not in (torch.bfloat16, torch.float16):
        problem = f"x is {x.dtype}; the Triton kernels take bfloat16 or float16"
    elif not on_cuda and not (backend == "triton" and x.device.type == "cpu" and interpreting()):
        problem = f"x is on {x.device}; the Triton kernels run on CUDA"
    else:
        problem = _triton_problem()
        missing_triton = bool(problem)
    if not problem:
        where = "CUDA" if on_cuda else "the Triton CPU interpreter"
        return "triton", f"{x.dtype} activations on {where}", False
    if backend == "triton":
        hint = f"; {INSTALL_HINT}" if missing_triton else ""
        raise DependencyError(f"int8 kernel backend forced to 'triton' but {problem}{hint}")
    if missing_triton and on_cuda:
        # "~4x" is an estimate, not a measurement: at decode sizes (memory bound) the reference
        # moves ~9 bytes per weight (int8 read + bf16 cast written, read and scaled + written,
        # read again by F.linear) where the fused kernel reads 1 byte plus the scales
        return "reference", (
            f"the fused int8 Triton kernel is unavailable because {problem}; int8_linear uses the "
            "torch reference path, which dequantises the whole weight on every call (~4x slower "
            f"or worse at decode batch sizes); {INSTALL_HINT}"), True
    return "reference", problem, False


def dispatch_reason(x) -> tuple[str, str]:
    """(``"triton"`` | ``"reference"``, why) for an activation tensor ``x``.

    Raises ``DependencyError`` when the backend is forced to ``triton`` and it cannot run.
    """
    path, why, _ = _route(x)
    return path, why


def int8_linear(x, qweight, scale, bias=None, group_size: int | None = None):
    """Dispatch: the fused kernel where one is available for this device, else the reference.

    Under ``torch.compile`` the call is one opaque custom op (``torch.ops.quantkit.int8_linear``)
    whose body is this same dispatch, so dynamo never traces the tuner or the Triton launches
    (inductor's CUDA graphs then need the same warm-up as any capture, see the module docstring).
    """
    import torch

    if torch.compiler.is_compiling():
        if _OP is not None:
            return _OP(x, qweight, scale, bias, group_size)
        # not registered yet (registration cannot run while dynamo traces): trace the dispatch
        return _dispatch(x, qweight, scale, bias, group_size)
    if _OP is None:
        _custom_op()
    return _dispatch(x, qweight, scale, bias, group_size)


def _dispatch(x, qweight, scale, bias, group_size):
    global _warned_no_triton
    path, why, slowed = _route(x)
    if path == "triton":
        from quantkit.kernels.launch import run

        return run(x, qweight, scale, bias, group_size)
    if slowed and not _warned_no_triton:
        _warned_no_triton = True  # a flag, not a warnings filter: the caller's filters stay theirs
        # stacklevel 3: the line that called int8_linear (e.g. Int8Linear.forward)
        warnings.warn(why, stacklevel=3)
    return int8_linear_reference(x, qweight, scale, bias, group_size)


_OP = None


def _custom_op():
    """Register ``torch.ops.quantkit.int8_linear`` once (it must happen outside dynamo tracing:
    at import when torch is already loaded, as for ``Int8Linear``, or on the first eager call)."""
    global _OP
    if _OP is None:
        import torch

        schema = "(Tensor x, Tensor qweight, Tensor scale, Tensor? bias, int? group_size) -> Tensor"

        @torch.library.custom_op("quantkit::int8_linear", mutates_args=(), schema=schema)
        def op(x, qweight, scale, bias, group_size):
            return _dispatch(x, qweight, scale, bias, group_size)

        @op.register_fake
        def _(x, qweight, scale, bias, group_size):
            return x.new_empty((*x.shape[:-1], qweight.shape[0]))

        _OP = op
    return _OP


def warmup(shapes, dtype=None, device="cuda", progress=True, scale_dtype=None, bias_dtype=None):
    """Tune and compile the Triton kernels for ``(M, N, K[, group_size])`` shapes before capture.

    ``dtype`` (activations), ``scale_dtype`` and ``bias_dtype`` default to torch.bfloat16, what
    ``Int8Linear`` stores by default; they must be the dtypes the captured calls pass, since
    Triton compiles one variant per pointer dtype. Returns the chosen config per cache key. See
    ``quantkit.kernels.tuning.warmup``.
    """
    import torch

    from quantkit.kernels.tuning import warmup as _warmup

    bf16 = torch.bfloat16
    return _warmup(shapes, dtype=dtype or bf16, device=device, progress=progress,
                   scale_dtype=scale_dtype or bf16, bias_dtype=bias_dtype or bf16)


def __getattr__(name):
    # lazy so that importing quantkit.kernels does not import torch
    if name == "KernelNotTunedError":
        from quantkit.kernels.tuning import KernelNotTunedError

        return KernelNotTunedError
    raise AttributeError(f"module 'quantkit.kernels' has no attribute {name!r}")


if "torch" in sys.modules:  # never imports torch itself; see _custom_op
    _custom_op()

__all__ = ["BACKENDS", "dequantize", "dispatch_reason", "get_backend", "int8_linear",
           "int8_linear_reference", "set_backend", "warmup"]
