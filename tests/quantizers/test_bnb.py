"""llm.int8 through bitsandbytes' Linear8bitLt (runs on CPU with bitsandbytes >= 0.45)."""

import sys

import pytest
import torch
from torch import nn

import quantkit
from quantkit.errors import DependencyError
from quantkit.modelbuild import build_model
from quantkit.quantizers.checkpoint import save_quantized

IDS = torch.tensor([[1, 5, 9, 200, 17, 3, 44, 101, 7, 8, 250, 2]])


def test_missing_bitsandbytes_is_a_dependency_error(monkeypatch):
    from quantkit.quantizers import bnb

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(DependencyError, match=r"^method llm.int8 needs bitsandbytes: pip install"):
        bnb.quantize_module("fc", nn.Linear(8, 8), quantkit.QuantConfig(method="llm.int8"))


@pytest.fixture
def bitsandbytes():
    return pytest.importorskip("bitsandbytes", reason="bitsandbytes is an optional dependency (quantkit[bnb])")


def test_llm_int8_quantize_save_reload(bitsandbytes, tiny_model, tmp_path):
    src = tiny_model("llama")
    model = build_model(src)
    with torch.no_grad():
        ref = model(IDS).logits.float()
    config = quantkit.QuantConfig(method="llm.int8", threshold=6.0)
    report = quantkit.quantize(model, config, progress=False)
    lt = bitsandbytes.nn.Linear8bitLt
    swapped = [n for n, m in model.named_modules() if isinstance(m, lt)]
    assert len(swapped) == 21 and report.skipped == ["lm_head"]
    assert type(model.lm_head) is nn.Linear
    assert all(r.rel_error < 0.012 for r in report.layers)
    with torch.no_grad():
        q = model(IDS).logits
    rel = float((q.float() - ref).norm() / ref.norm())
    print(f"llm.int8 tiny llama: logits rel err {rel:.4%}")
    assert rel < 0.05

    out = save_quantized(model, tmp_path / "q", config, report=report)
    reloaded = quantkit.load_quantized(out)
    assert sum(isinstance(m, lt) for m in reloaded.modules()) == 21
    with torch.no_grad():
        assert torch.equal(reloaded(IDS).logits, q)
    # int8 weights + fp32 row absmax: the estimator with 4-byte scales counts the same bytes.
    assert report.bytes_after == report.estimated_bytes


def test_threshold_keeps_outlier_columns_exact(bitsandbytes):
    """With an outlier input column, threshold 6 (fp16 outlier path) beats threshold 0 (all int8)."""
    from quantkit.quantizers.bnb import quantize_module

    torch.manual_seed(0)
    lin = nn.Linear(256, 128, bias=False).to(torch.bfloat16)
    x = torch.randn(4, 256, dtype=torch.bfloat16)
    x[:, 3] = 40.0
    with torch.no_grad():
        ref = lin(x).float()
    errs = {}
    for th in (0.0, 6.0):
        mod, _ = quantize_module("fc", lin, quantkit.QuantConfig(method="llm.int8", threshold=th))
        with torch.no_grad():
            errs[th] = float((mod.eval()(x).float() - ref).norm() / ref.norm())
    print(f"threshold 0: {errs[0.0]:.4%}, threshold 6: {errs[6.0]:.4%}")
    assert errs[6.0] < errs[0.0] / 2


def test_cast_notice_silenced_only_inside_quantkit_layers(bitsandbytes, caplog):
    """bitsandbytes logs "MatMul8bitLt: inputs will be cast from ... to float16" on every forward with
    non-fp16 activations; quantkit's layers drop exactly that record, bitsandbytes' own layers don't."""
    import logging

    from quantkit.quantizers.bnb import quantize_module

    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    mod, _ = quantize_module("fc", lin, quantkit.QuantConfig(method="llm.int8"))
    assert isinstance(mod, bitsandbytes.nn.Linear8bitLt)
    mod.eval()
    caplog.set_level(logging.WARNING)
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16, torch.float32):
            mod(torch.randn(2, 64, dtype=dtype))
    assert [r.getMessage() for r in caplog.records] == []

    plain = bitsandbytes.nn.Linear8bitLt(64, 32, has_fp16_weights=False)
    plain.load_state_dict(lin.state_dict())
    plain.eval()
    with torch.no_grad():
        plain(torch.randn(2, 64))
    assert [r.getMessage() for r in caplog.records] == [
        "MatMul8bitLt: inputs will be cast from torch.float32 to float16 during quantization"]
