"""Weight quantizers: one config dataclass and one handler module per method.

- ``configs``    method configs and the registry (torch-free, so the CLI's ``--help`` stays instant)
- ``api``        ``quantize(model, config)``: swap ``nn.Linear`` modules layer by layer
- ``int8``       ``Int8Linear``: int8 weights, per-channel or per-group scales (weight-only)
- ``bnb``        ``llm.int8`` through bitsandbytes' ``Linear8bitLt`` (for comparison)
- ``checkpoint`` save/reload quantized checkpoints (safetensors + ``quantization_config``)
- ``report``     per-layer error statistics and byte totals
- ``recipes``    schema-checked YAML recipes (quantization + eval settings)
"""
