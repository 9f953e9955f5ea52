"""Count parameters of the transformers model built from a config dict, on the meta device."""

from __future__ import annotations


def hf_param_count(cfg: dict) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in cfg.items() if k not in ("model_type", "_quantkit", "architectures")}
    config = AutoConfig.for_model(cfg["model_type"], **kwargs)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    # parameters() yields a tied lm_head/embedding weight once, as quantkit counts it
    return sum(p.numel() for p in model.parameters())
