"""On-disk layouts of int8 checkpoints and the in-memory layout ``Int8Linear`` holds.

quantkit writes (format version 2) compressed-tensors "pack-quantized", tensor for tensor what
llm-compressor's W8A16 writes: ``<module>.weight_packed`` int32 (out, ceil(in / 4)),
``<module>.weight_scale`` (out, n_groups), ``<module>.weight_shape`` int64 [out, in]
(``packing``). In memory an ``Int8Linear`` keeps ``weight`` int8 (out, in): ``to_memory``
converts whatever a folder holds into that, per quantized module:

- version 2 / compressed-tensors pack-quantized (quantkit's, or llm-compressor's W8A16 and W4A16,
  symmetric, channel or group): unpacked with ``weight_shape``; 4-bit values are kept in int8
  (the same dequantized weight, q * scale, with int8 storage);
- version 1 (quantkit <= 0.1 "int-quantized": ``weight`` int8, ``weight_scale``): as stored;
- bitsandbytes 8-bit (transformers' ``save_pretrained`` of a ``load_in_8bit`` model: ``weight``
  int8, ``SCB`` fp32 row absmax): ``weight_scale`` = SCB / 127 in fp32, so the dequantized weight
  is bitsandbytes' q * SCB / 127 to fp32 rounding; read as weight-only int8 (bitsandbytes'
  activation quantization and fp16 outlier path are not reproduced).

``foreign_block`` gives checkpoints written by other tools the ``quantkit`` block quantkit's own
folders carry, built from their ``quantization_config`` and tensor names (never from file
names); anything else is a one-line ``ConfigError`` naming what is not read.
"""

from __future__ import annotations

from pathlib import Path

from quantkit.errors import ConfigError, FormatError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
PACKED = ("weight_packed", "weight_shape")


def check_exportable(shapes: dict[str, tuple[int, int]], group_size: int | None) -> None:
    """``FormatError`` unless every quantized linear's ``in_features`` is a multiple of
    ``group_size`` (compressed-tensors, llm-compressor and vLLM require it; ``shapes``: module
    name -> (out, in)). Packing itself takes any in_features (a partial last int32 word)."""
    if group_size is None:
        return
    bad = {name: s for name, s in shapes.items() if s[1] % group_size}
    if not bad:
        return
    name, (_, in_f) = next(iter(bad.items()))
    ins = sorted({s[1] for s in shapes.values()})
    g = ins[0]
    for i in ins[1:]:
        import math

        g = math.gcd(g, i)
    valid = [d for d in range(1, g + 1) if g % d == 0]
    raise FormatError(
        f"group size {group_size} does not divide in_features {in_f} of '{name}' ({len(bad)} layers), "
        f"which the compressed-tensors format cannot store; valid group sizes for this model: "
        f"{', '.join(map(str, valid))}, or per channel (no --group-size)")


def quantized_shapes(model, names) -> dict[str, tuple[int, int]]:
    """(out, in) of each named quantized (or quantizable) linear, and of each projection of a fused
    experts module (``<module>.<proj>``), for ``check_exportable``."""
    shapes = {}
    for name in names:
        mod = model.get_submodule(name)
        if hasattr(mod, "in_features"):
            shapes[name] = (int(mod.out_features), int(mod.in_features))
            continue
        for proj in ("gate_up_proj", "up_proj", "down_proj"):
            t = getattr(mod, proj, None)
            if t is not None and getattr(t, "dim", lambda: 0)() == 3:
                _, a, b = t.shape
                transposed = getattr(mod, "is_transposed", False) and not hasattr(mod, "projections")
                shapes[f"{name}.{proj}"] = (int(b), int(a)) if transposed else (int(a), int(b))
    return shapes


def foreign_block(qc: dict, names: set[str], where) -> dict:
    """A ``quantkit`` block (as ``checkpoint.quantization_config`` writes it) for a checkpoint
    another tool wrote: compressed-tensors pack-quantized (symmetric int, 4 or 8 bits, channel or
    group) or bitsandbytes 8-bit. ``names``: the checkpoint's tensor names."""
    method = qc.get("quant_method")
    if method == "compressed-tensors":
        groups = list((qc.get("config_groups") or {}).values())
        fmt = {g.get("format") or qc.get("format") for g in groups}
        if len(groups) != 1 or fmt != {"pack-quantized"}:
            raise ConfigError(f"'{where}': quantkit reads compressed-tensors checkpoints with one config "
                              f"group in format pack-quantized (W8A16, W4A16); this one has "
                              f"{len(groups)} groups, format {sorted(map(str, fmt))}")
        w = groups[0].get("weights") or {}
        if (w.get("type"), w.get("num_bits"), w.get("symmetric")) not in (("int", 8, True), ("int", 4, True)):
            raise ConfigError(f"'{where}': quantkit reads symmetric int8/int4 weights; this checkpoint has "
                              f"type {w.get('type')!r}, num_bits {w.get('num_bits')!r}, symmetric {w.get('symmetric')!r}")
        if w.get("strategy") not in ("channel", "group") or groups[0].get("input_activations"):
            raise ConfigError(f"'{where}': quantkit reads weight-only channel/group schemes; this checkpoint "
                              f"has strategy {w.get('strategy')!r} with input activations "
                              f"{groups[0].get('input_activations')!r}")
        quantized = sorted(n[: -len(".weight_packed")] for n in names if n.endswith(".weight_packed"))
        group_size = w.get("group_size") if w.get("strategy") == "group" else None
        bits = int(w["num_bits"])
    elif method == "bitsandbytes":
        if not qc.get("load_in_8bit"):
            raise ConfigError(f"'{where}': quantkit reads bitsandbytes 8-bit checkpoints only (load_in_8bit); "
                              "this one is 4-bit")
        quantized = sorted(n[: -len(".SCB")] for n in names if n.endswith(".SCB"))
        group_size, bits = None, 8
    else:
        raise ConfigError(f"'{where}': quantization_config (quant_method {method!r}) is not one quantkit "
                          "reads: compressed-tensors pack-quantized, bitsandbytes 8-bit, or a quantkit checkpoint")
    if not quantized:
        raise ConfigError(f"'{where}': its quantization_config says {method} but it has no quantized tensors")
    config = {"method": "int8", "group_size": group_size, "scale_dtype": "fp32" if method == "bitsandbytes" else "bf16"}
    return {"version": FORMAT_VERSION, "method": "int8", "bits": bits, "source": method,
            "granularity": "channel" if group_size is None else "group", "group_size": group_size,
            "config": config, "quantized_modules": quantized, "skipped_modules": []}


def to_memory(state: dict, quantized, source) -> dict:
    """``state`` with each quantized module's tensors in ``Int8Linear``'s layout (``weight`` int8,
    ``weight_scale``, ``bias``); other tensors untouched. ``InputError``-free by design: shapes are
    checked afterwards by ``modelbuild.assign_state_dict``."""
    import torch

    from quantkit.errors import InputError
    from quantkit.quantizers.packing import unpack_int32

    out = dict(state)
    for name in quantized:
        packed = out.pop(f"{name}.weight_packed", None)
        if packed is not None:
            shape = out.pop(f"{name}.weight_shape", None)
            if shape is None or shape.numel() != 2:
                raise InputError(f"{source}: '{name}.weight_shape' is missing or not [out, in]")
            out_f, in_f = (int(v) for v in shape.tolist())
            words = packed.shape[-1]
            bits = 8 if -(-in_f // 4) == words else 4 if -(-in_f // 8) == words else None
            if bits is None or packed.dtype != torch.int32 or packed.shape[0] != out_f:
                raise InputError(f"{source}: '{name}.weight_packed' {packed.dtype} {tuple(packed.shape)} "
                                 f"does not hold {out_f} x {in_f} packed 4- or 8-bit values")
            out[f"{name}.weight"] = unpack_int32(packed, in_f, bits)
        scb = out.pop(f"{name}.SCB", None)
        if scb is not None:
            out.pop(f"{name}.weight_format", None)
            out[f"{name}.weight_scale"] = (scb.float() / 127.0).unsqueeze(1)
        bias = out.get(f"{name}.bias")
        if bias is not None and bias.dtype != torch.bfloat16:
            out[f"{name}.bias"] = bias.to(torch.bfloat16)
    return out


def tensor_names(folder) -> set[str]:
    """Tensor names of a checkpoint folder (safetensors headers; legacy .bin: loaded)."""
    from quantkit.modelbuild import checkpoint_names
    from quantkit.modelio import load_state_dict

    names = checkpoint_names(Path(folder))
    return set(load_state_dict(folder)) if names is None else names
