"""What ``quantkit eval`` can be asked, validated before anything heavy is imported (no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from quantkit.boundary.numbers import check_int
from quantkit.errors import InputError

DEVICES = ("auto", "cuda", "cpu")
GRAPH_MODES = ("cuda-graph", "compile", "none")  # see generate.make_step
BACKENDS = ("auto", "runner", "transformers")  # see compare.choose_backend
DEFAULT_CTX = 2048  # tokens per perplexity window, unless the model's max_position_embeddings is less
DEFAULT_COMPARE = "bf16,int8"


@dataclass(frozen=True)
class EvalOptions:
    """Everything ``quantkit eval`` can be asked; the CLI's defaults are these."""

    compare: str | None = None  # None: "bf16,int8"; for a quantized MODEL, its base and itself
    ppl: str | None = None  # .txt / .jsonl path, or a dataset name (see text.load_text)
    ctx: int | None = None  # tokens per window; None: min(DEFAULT_CTX, the model's maximum)
    stride: int | None = None  # None: non-overlapping windows
    max_tokens: int | None = None  # evaluate the first N tokens only
    speed: bool = False
    batches: tuple[int, ...] = (1,)
    prompt_len: int = 512
    new_tokens: int = 128
    device: str = "auto"  # auto, cuda, cpu
    graphs: str = "cuda-graph"  # cuda-graph, compile, none
    gpu: str | None = None  # catalogue GPU for the roofline bound (default: detected)
    device_map: str | None = None  # "auto": split over GPUs with accelerate (perplexity only)
    backend: str = "auto"  # runner (quantkit's, Llama family, speed), transformers (any causal LM)
    progress: bool = True

    def validate(self) -> None:
        def positive(name, v, least=1):
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise InputError(f"{name} must be an integer >= {least}, got {v!r}")
            check_int(name, v, least)  # and not absurdly large

        if self.ppl is None and not self.speed:
            raise InputError("nothing to measure: pass --ppl FILE and/or --speed")
        if self.ctx is not None:
            positive("--ctx", self.ctx, 2)
        if self.stride is not None:
            positive("--stride", self.stride)
            if self.ctx is not None and self.stride > self.ctx:
                raise InputError(f"--stride ({self.stride}) must not exceed --ctx ({self.ctx})")
        if self.max_tokens is not None:
            positive("--max-tokens", self.max_tokens, 2)
        if not self.batches:
            raise InputError("--batch needs at least one batch size")
        for b in self.batches:
            positive("--batch", b)
        positive("--prompt-len", self.prompt_len)
        positive("--new-tokens", self.new_tokens, 2)
        if self.device not in DEVICES:
            raise InputError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.device_map not in (None, "auto"):
            raise InputError(f"--device-map must be 'auto', got {self.device_map!r}")
        if self.device_map and self.speed:
            raise InputError("--device-map auto is for perplexity only (the static KV cache and "
                             "CUDA graphs need the model on one GPU); drop --speed")
        if self.device_map and self.device == "cpu":
            raise InputError("--device-map auto spreads the model over GPUs; it needs --device cuda")
        if self.backend not in BACKENDS:
            raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.backend == "transformers" and self.speed:
            raise InputError("--speed runs quantkit's runner (static KV cache, CUDA graphs); "
                             "--backend transformers is for perplexity only: drop --speed")
        if self.graphs not in GRAPH_MODES:
            raise InputError(f"--graphs must be one of {', '.join(GRAPH_MODES)}, got {self.graphs!r}")
