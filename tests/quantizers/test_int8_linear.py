"""Int8Linear and the int8 weight quantizer: error bounds, edge cases, forward."""

import math

import pytest
import torch
from torch import nn

from quantkit.errors import InputError
from quantkit.kernels import int8_linear_reference
from quantkit.quantizers.configs import Int8Config
from quantkit.quantizers.int8 import Int8Linear, quantize_module, quantize_weight


def _rel(w, w_hat):
    return float((w - w_hat).norm() / w.norm())


def _normal_quantile(p: float) -> float:
    """Inverse standard normal CDF by bisection (no scipy)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def test_per_channel_gaussian_error_under_one_percent():
    """Per-channel int8 of Gaussian weights has a relative error under 1%, for this reason.

    A row of n iid N(0, σ²) weights gets scale s = M / 127 with M = max|w|. Round to nearest makes
    an error uniform on [-s/2, s/2], of variance s²/12, independent of w; so the relative error is
    sqrt(E[s²]/12) / σ = sqrt(E[M²]) / (127 · sqrt(12) · σ).

    M is the maximum of n half-normal values: its typical value is the (1 - 1/(2n)) normal
    quantile (P(|w| > m) = 1/n), 3.67σ for n = 4096 -> 0.83%; and M < σ·sqrt(2 ln(2n)) = 4.25σ
    except for a few rows, which bounds the error by sqrt(2 ln(2n)) / (127·sqrt(12)) = 0.965% < 1%.
    The bf16 storage of the scale moves s by < 2^-8 relative, which does not change these figures.
    """
    out_f, n = 256, 4096
    gen = torch.Generator().manual_seed(0)
    sigma = 0.02
    w = torch.randn(out_f, n, generator=gen) * sigma
    q, scale = quantize_weight(w, None, torch.bfloat16)
    w_hat = q.float() * scale.float()
    rel = _rel(w, w_hat)

    typical = _normal_quantile(1 - 1 / (2 * n)) / (127 * math.sqrt(12))
    bound = math.sqrt(2 * math.log(2 * n)) / (127 * math.sqrt(12))
    from_observed_absmax = float((scale.float() * 127).pow(2).mean().sqrt()) / (127 * math.sqrt(12) * sigma)
    print(f"n={n}: measured {rel:.4%}, from observed absmax {from_observed_absmax:.4%}, "
          f"typical {typical:.4%}, bound {bound:.4%}")
    assert bound < 0.01
    assert rel < bound
    assert rel == pytest.approx(from_observed_absmax, rel=0.03)  # the uniform-rounding model holds
    assert rel == pytest.approx(typical, rel=0.1)


def test_group_wise_beats_per_channel():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(128, 1024, generator=gen) * 0.02
    w[:, 7] *= 20  # one outlier column inflates every per-channel scale
    q_c, s_c = quantize_weight(w, None)
    q_g, s_g = quantize_weight(w, 128)
    assert s_c.shape == (128, 1) and s_g.shape == (128, 8)
    rel_c = _rel(w, q_c.float() * s_c.float())
    rel_g = _rel(w, q_g.float() * s_g.float().repeat_interleave(128, dim=1))
    print(f"per-channel {rel_c:.4%}, g128 {rel_g:.4%}")
    assert rel_g < rel_c


def test_partial_last_group_and_range():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(16, 100, generator=gen)
    q, s = quantize_weight(w, 32)  # groups of 32, 32, 32, 4
    assert q.dtype == torch.int8 and q.shape == (16, 100)
    assert s.shape == (16, 4) and s.dtype == torch.bfloat16
    assert int(q.abs().max()) <= 127
    # The largest |w| of every group maps to ±127 (or 126 if the bf16 cast rounded the scale up).
    for g in range(4):
        cols = slice(32 * g, min(32 * (g + 1), 100))
        assert int(q[:, cols].abs().amax(dim=1).min()) >= 126


def test_quantized_with_the_stored_scale():
    """Rounding is against the scale as stored (bf16), so every element is within half a step."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(64, 256, generator=gen) * 0.05
    for scale_dtype in (torch.bfloat16, torch.float16, torch.float32):
        q, s = quantize_weight(w, 64, scale_dtype)
        assert s.dtype == scale_dtype
        step = s.float().repeat_interleave(64, dim=1)
        err = (w - q.float() * step).abs()
        clamped = q.abs() == 127  # where a rounded-down scale made |w|/s exceed 127 slightly
        assert bool((err[~clamped] <= step[~clamped] / 2 * (1 + 1e-6)).all())
        assert bool((err[clamped] <= step[clamped] * 0.51).all())


def test_all_zero_rows_and_groups_do_not_divide_by_zero():
    w = torch.randn(4, 64)
    w[1] = 0  # whole row
    w[2, 32:] = 0  # one group of 32
    for gs in (None, 32):
        q, s = quantize_weight(w, gs)
        assert torch.isfinite(s.float()).all()
        assert int(q[1].abs().max()) == 0 and float(s[1].float().abs().max()) == 0
    q, s = quantize_weight(w, 32)
    assert int(q[2, 32:].abs().max()) == 0 and float(s[2, 1]) == 0


def test_fp16_scale_underflow_stores_zero_not_garbage():
    w = torch.full((2, 8), 1e-7)  # absmax / 127 = 8e-10 underflows to 0 in fp16
    q, s = quantize_weight(w, None, torch.float16)
    assert float(s.float().max()) == 0 and int(q.abs().max()) == 0


def test_int8_linear_forward_matches_dequantized_linear():
    torch.manual_seed(0)
    lin = nn.Linear(96, 40, bias=True).to(torch.bfloat16)
    mod = Int8Linear.from_linear(lin, group_size=32)
    assert mod.weight.dtype == torch.int8 and mod.weight.shape == (40, 96)
    assert mod.weight_scale.shape == (40, 3) and mod.bias.dtype == torch.bfloat16
    assert (mod.in_features, mod.out_features, mod.group_size) == (96, 40, 32)
    assert set(mod.state_dict()) == {"weight", "weight_scale", "bias"}
    x = torch.randn(2, 5, 96, dtype=torch.bfloat16)
    y = mod(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 5, 40)
    w = mod.dequantize(torch.bfloat16)
    assert torch.equal(y, nn.functional.linear(x, w, mod.bias))
    assert torch.equal(y, int8_linear_reference(x, mod.weight, mod.weight_scale, mod.bias, 32))
    with torch.no_grad():
        ref = lin(x).float()
    assert float((y.float() - ref).norm() / ref.norm()) < 0.02


def test_no_bias_and_fp32_activations():
    lin = nn.Linear(64, 16, bias=False)
    mod = Int8Linear.from_linear(lin)
    assert mod.bias is None and "bias" not in mod.state_dict()
    x = torch.randn(3, 64)
    assert mod(x).dtype == torch.float32


def test_quantize_module_reports_errors_and_refuses_non_finite():
    torch.manual_seed(0)
    lin = nn.Linear(256, 64)
    mod, rep = quantize_module("blk.fc", lin, Int8Config())
    assert rep.name == "blk.fc" and rep.shape == (64, 256)
    assert 0 < rep.rel_error < 0.01 and rep.sqnr_db == pytest.approx(-20 * math.log10(rep.rel_error))
    assert 0 < rep.scale_min <= rep.scale_max and rep.max_abs_error <= rep.scale_max * 0.51
    with torch.no_grad():
        lin.weight[3, 5] = float("nan")
    with pytest.raises(InputError, match=r"weight of 'blk.fc' has non-finite values"):
        quantize_module("blk.fc", lin, Int8Config())


def _fp32_reference_quantize(weight, group_size, scale_dtype):
    """The fp32 formulation of the module docstring (what quantize_weight computed before it
    worked in the weight's dtype chunk by chunk): the new one must give the same bits."""
    w = weight.detach().float()
    out_f, in_f = w.shape
    g = in_f if group_size is None else group_size
    groups = math.ceil(in_f / g)
    pad = groups * g - in_f
    wg = (nn.functional.pad(w, (0, pad)) if pad else w).reshape(out_f, groups, g)
    scale = (wg.abs().amax(dim=-1) / 127).to(scale_dtype)
    s = scale.float().unsqueeze(-1)
    zero = s == 0
    q = wg / s.masked_fill(zero, 1.0)
    q.round_().clamp_(-127, 127).masked_fill_(zero, 0)
    return q.view(out_f, groups * g)[:, :in_f].to(torch.int8).contiguous(), scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("group_size", [None, 32, 100])
def test_quantize_weight_is_bit_identical_to_the_fp32_formulation(dtype, group_size):
    from quantkit.quantizers import int8

    gen = torch.Generator().manual_seed(1)
    w = (torch.randn(300, 1000, generator=gen) * 0.02).to(dtype)
    w[3], w[5, :40], w[7] = 0, 0, w[7] * 1e-6  # zero row, zero group, fp16-underflowing scales
    for scale_dtype in (torch.bfloat16, torch.float16, torch.float32):
        want_q, want_s = _fp32_reference_quantize(w, group_size, scale_dtype)
        for chunk in (int8._CHUNK, 1000):  # many rows per chunk, and one row per chunk
            old, int8._CHUNK = int8._CHUNK, chunk
            try:
                q, s = quantize_weight(w, group_size, scale_dtype)
            finally:
                int8._CHUNK = old
            assert q.dtype == torch.int8 and q.is_contiguous() and torch.equal(q, want_q)
            assert s.dtype == scale_dtype
            assert torch.equal(s.view(torch.uint8), want_s.view(torch.uint8))  # +0.0, not -0.0


def test_error_statistics_from_the_quantize_pass_match_a_dequantized_comparison():
    from quantkit.quantizers.int8 import quantize_weight_stats

    gen = torch.Generator().manual_seed(2)
    w = (torch.randn(64, 200, generator=gen) * 0.05).to(torch.bfloat16)
    for gs in (None, 64):
        res = quantize_weight_stats(w, gs)
        w_hat = Int8Linear.from_quantized(nn.Linear(200, 64, bias=False), res.q, res.scale, gs).dequantize()
        diff = w_hat - w.float()
        assert res.sum_w2 == pytest.approx(float(w.float().square().sum()), rel=1e-5)
        assert res.sum_d2 == pytest.approx(float(diff.square().sum()), rel=1e-5)
        assert res.max_err == float(diff.abs().max())
    w[1, 2] = float("inf")
    assert not quantize_weight_stats(w).finite
