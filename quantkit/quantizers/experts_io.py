"""int8 MoE experts on disk: one pack-quantized linear per expert and projection, under the names
transformers' ``save_pretrained`` writes for the architecture (its Hub layout).

transformers 5 runs a layer's routed experts as one module of 3-D tensors (``experts.py``) but
saves them per expert (Mixtral: ``model.layers.N.block_sparse_moe.experts.E.w1.weight``, w3, w2;
Qwen2/3-MoE and DeepSeek: ``mlp.experts.E.gate_proj.weight`` ...): its conversion mapping is
reverted on save. Its compressed-tensors integration loads a quantized MoE the same way, through
that mapping, dequantizing each expert's ``weight_packed`` / ``weight_scale`` / ``weight_shape``
before stacking (``CompressedTensorsDequantize``); vLLM's Mixtral and Qwen-MoE loaders read the
same per-expert names. So quantkit writes each expert's rows under those names.

Which rows of which expert a Hub tensor holds is not hard-coded: ``pieces`` runs transformers'
own ``revert_weight_conversion`` on an index tensor (value e * out + r at expert e, output row r;
one column), so the split (Mixtral's gate_up_proj into w1 and w3) is whatever transformers does.
A model type without a per-expert conversion (gpt-oss stores fused experts on the Hub) gets
quantkit's own ``<module>.<E>.gate_proj|up_proj|down_proj`` names (gate and up rows split as the
model's gate function reads them): quantkit loads those, transformers and vLLM do not (``pieces``
says so with its second value; the checkpoint's quantkit block lists such modules under
``experts_not_hub_layout``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantkit.errors import InputError


@dataclass(frozen=True)
class Piece:
    prefix: str  # e.g. model.layers.0.block_sparse_moe.experts.3.w1
    proj: str  # gate_up_proj, up_proj or down_proj of the fused module
    expert: int
    rows: torch.Tensor  # int64 output rows of that expert's (out, in) matrix


def _canonical_out(mod, proj: str) -> tuple[int, int]:
    t = getattr(mod, proj)
    e, a, b = t.shape
    fused_source = not hasattr(mod, "projections")  # an Int8Experts keeps (E, out, in) already
    return (int(e), int(b)) if (fused_source and mod.is_transposed) else (int(e), int(a))


def _projections(mod) -> tuple[str, str]:
    return tuple(mod.projections) if hasattr(mod, "projections") else (
        "gate_up_proj" if mod.has_gate else "up_proj", "down_proj")


def pieces(model, name: str) -> tuple[list[Piece], bool]:
    """(pieces of the fused experts module ``name``, whether the names are transformers' Hub
    layout). ``model``: the transformers model holding it (meta tensors suffice)."""
    from transformers.core_model_loading import revert_weight_conversion

    mod = model.get_submodule(name)
    index, ranges, start = {}, {}, 0
    for proj in _projections(mod):  # disjoint value ranges tell the projections apart
        e, out_f = _canonical_out(mod, proj)
        idx = torch.arange(start, start + e * out_f, dtype=torch.int64).reshape(e, out_f, 1)
        index[f"{name}.{proj}"] = idx.transpose(1, 2) if mod.is_transposed else idx
        ranges[proj] = (start, out_f)
        start += e * out_f
    try:
        reverted = revert_weight_conversion(model, dict(index))
    except (KeyError, ValueError, RuntimeError, TypeError):  # no usable mapping: fallback names
        reverted = index
    out = []
    hub = bool(reverted) and not any(k in index for k in reverted)
    for key, v in reverted.items() if hub else ():
        flat = v.reshape(-1)
        proj = next(p for p, (lo, n) in ranges.items() if lo <= int(flat[0]) < lo + n * _canonical_out(mod, p)[0])
        lo, out_f = ranges[proj]
        experts = torch.unique((flat - lo) // out_f)
        if experts.numel() != 1 or not key.endswith(".weight") or int(flat.min()) < lo:
            hub = False
            break
        out.append(Piece(key[: -len(".weight")], proj, int(experts[0]), (flat - lo) % out_f))
    if not hub:  # quantkit's own names, one linear per expert and matrix as the estimator counts
        out = []
        for proj in _projections(mod):
            e, out_f = _canonical_out(mod, proj)
            rows = {proj: torch.arange(out_f)}
            if proj == "gate_up_proj":  # gate and up rows: halves, or interleaved (gpt-oss)
                half = torch.arange(out_f // 2)
                rows = ({"gate_proj": half, "up_proj": half + out_f // 2} if mod.is_concatenated
                        else {"gate_proj": 2 * half, "up_proj": 2 * half + 1})
            out += [Piece(f"{name}.{i}.{key}", proj, i, r) for i in range(e) for key, r in rows.items()]
    return out, hub


def export(model, name: str, mod=None) -> dict:
    """Checkpoint tensors (full names) of the ``Int8Experts`` at ``name`` (``mod``, or the module
    ``model`` holds there): per piece ``weight_packed`` int32, ``weight_scale``, ``weight_shape``
    int64 [rows, in] and ``bias``. The names come from ``model``'s module at ``name``, quantized
    or still float (the streaming writer's meta model)."""
    from quantkit.quantizers.packing import pack_int32

    mod = model.get_submodule(name) if mod is None else mod
    out = {}
    for p in pieces(model, name)[0]:
        q = getattr(mod, p.proj)[p.expert][p.rows]
        out[f"{p.prefix}.weight_packed"] = pack_int32(q, 8)
        out[f"{p.prefix}.weight_scale"] = getattr(mod, f"{p.proj}_scale")[p.expert][p.rows].contiguous()
        out[f"{p.prefix}.weight_shape"] = torch.tensor(list(q.shape), dtype=torch.int64)
        bias = mod._buffers.get(f"{p.proj}_bias")
        if bias is not None:
            out[f"{p.prefix}.bias"] = bias[p.expert][p.rows].contiguous()
    return out


def to_fused(model, state: dict, names, source) -> dict:
    """``state`` with the per-expert pieces of each fused experts module in ``names`` (of the meta
    ``model``, before its experts are swapped) stacked into ``Int8Experts`` tensors: ``<proj>``
    int8 (E, out, in), ``<proj>_scale`` and ``<proj>_bias``."""
    from quantkit.quantizers.packing import unpack_int32

    state = dict(state)
    for name in names:
        mod = model.get_submodule(name)
        parts, _ = pieces(model, name)
        acc: dict[str, dict] = {}
        for p in parts:
            packed = state.pop(f"{p.prefix}.weight_packed", None)
            shape = state.pop(f"{p.prefix}.weight_shape", None)
            scale = state.pop(f"{p.prefix}.weight_scale", None)
            bias = state.pop(f"{p.prefix}.bias", None)
            if packed is None or shape is None or scale is None:
                raise InputError(f"{source} lacks '{p.prefix}.weight_packed', '.weight_scale' or "
                                 f"'.weight_shape' (expert {p.expert} of '{name}')")
            rows, in_f = (int(v) for v in shape.tolist())
            if rows != p.rows.numel():
                raise InputError(f"{source}: '{p.prefix}.weight_shape' is {shape.tolist()}, "
                                 f"expected {p.rows.numel()} rows")
            e = _canonical_out(mod, p.proj)[0]
            slot = acc.setdefault(p.proj, {})
            if not slot:
                out_f = _canonical_out(mod, p.proj)[1]
                slot["q"] = torch.zeros(e, out_f, in_f, dtype=torch.int8)
                slot["s"] = torch.zeros(e, out_f, scale.shape[-1], dtype=scale.dtype)
                slot["b"] = None if bias is None else torch.zeros(e, out_f, dtype=bias.dtype)
            slot["q"][p.expert, p.rows] = unpack_int32(packed, in_f, 8)
            slot["s"][p.expert, p.rows] = scale
            if bias is not None:
                slot["b"][p.expert, p.rows] = bias
        for proj, slot in acc.items():
            state[f"{name}.{proj}"] = slot["q"]
            state[f"{name}.{proj}_scale"] = slot["s"]
            if slot["b"] is not None:
                state[f"{name}.{proj}_bias"] = slot["b"]
    return state
