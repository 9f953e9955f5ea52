"""Shared fixtures: the read-only ../shared folder and tiny random Hugging Face model folders.

- ``shared_dir``: ``<repo>/../shared`` (skips the test with the reason when it is absent)
- ``ref_docs_dir`` / ``stories_dir``: the two shared models; ``ref_docs_valid``: held-out text
- ``tiny_model(arch, **overrides)``: writes config.json + model.safetensors (bf16, random
  init, seeded) for a small Llama / Mistral / Qwen2 (or any key of
  ``tests.calculators.tiny_configs.TINY``) into a fresh tmp folder and returns its path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Short architecture names -> the small configs the estimator tests also count exactly.
TINY_ARCH = {"llama": "llama-gqa-untied", "mistral": "mistral-sliding", "qwen2": "qwen2-bias-tied"}


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (the read-only ../shared folder next to the repository)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED, "shared data")


@pytest.fixture(scope="session")
def ref_docs_dir(shared_dir) -> Path:
    return _require(shared_dir / "models" / "ref-docs", "the ref-docs model")


@pytest.fixture(scope="session")
def stories_dir(shared_dir) -> Path:
    return _require(shared_dir / "models" / "stories260K", "the stories260K model")


@pytest.fixture(scope="session")
def ref_docs_valid(shared_dir) -> Path:
    return _require(shared_dir / "data" / "ref-docs-valid.txt", "the ref-docs held-out text")


def tiny_config(arch: str, **overrides) -> dict:
    """config.json dict of a tiny model: ``arch`` is llama, mistral, qwen2 or a TINY key."""
    from tests.calculators.tiny_configs import TINY
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    base = dict(TINY[TINY_ARCH.get(arch, arch)])
    base.update(overrides)
    base.setdefault("architectures", [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[base["model_type"]]])
    return base


def write_tiny_model(folder: Path, arch: str = "llama", seed: int = 0, **overrides) -> Path:
    """Write config.json + model.safetensors (bf16, transformers' random init) into ``folder``."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cfg = tiny_config(arch, **overrides)
    config = CONFIG_MAPPING[cfg["model_type"]](**{k: v for k, v in cfg.items() if k != "model_type"})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for name, t in model.state_dict().items():  # tied tensors once, as save_pretrained does
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            state[name] = t.contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    out = config.to_dict()
    out["architectures"] = cfg["architectures"]
    (folder / "config.json").write_text(json.dumps(out, indent=2))
    return folder


@pytest.fixture
def tiny_model(tmp_path_factory):
    """Factory: ``tiny_model("qwen2", seed=1, num_hidden_layers=2) -> Path`` of a fresh folder."""

    def make(arch: str = "llama", seed: int = 0, **overrides) -> Path:
        return write_tiny_model(tmp_path_factory.mktemp(f"tiny-{arch}"), arch, seed, **overrides)

    return make


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly, with the reason, where torch sees no CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
        for item in gpu_items:
            item.add_marker(skip)
