"""The plan workbook's layout and live formulas (pure strings; no openpyxl here).

Sheets: Inputs (editable assumptions, as defined names), Models (architecture numbers and counts),
GPUs (memory, bandwidth, FLOP/s), Weights (per model and dtype: counts -> checkpoint bytes),
Plan (one row per combination; every computed cell a formula) and Chart.

Each formula mirrors one calculator, and the tests recalculate the workbook in LibreOffice and
compare every formula cell with quantkit's own Python result:
  weights      weights.checkpoint_bytes: ceil(quantized x bits / 8) + scales x scale bytes
               + kept params x base bytes + fp32-kept params x (4 - base bytes) + fp32 buffers x 4
               (textbook params x bits / 8 for unquantized dtypes)
  KV cache     kv_cache.kv_cache: batch x (full layers x tokens + sliding layers x
               min(context, window)) x values/token/layer x KV bytes; tokens rounded up to whole
               paged blocks when block_size > 0
  activations  memory.memory + activations.prefill_activation_bytes: one prefill forward pass of
               min(batch x context, prefill chunk) tokens (all sequences together) x
               (2 x hidden + ceil(max(MLP width, attention width) / TP)) x activation bytes
  logits       activations.logits_bytes: batch x vocab x (2 + 4) bytes
  fits         fit.fit: total on one GPU <= floor(memory x utilisation)
  GPUs needed  fit.min_gpus: the smallest valid TP degree (listed on Models) whose per-GPU memory
               fits -- an array formula over that list
  largest batch  fit.max_batch on the GPUs needed: memory(b) = fixed + b x per_seq
               + act_per_token x min(b x context, P), with fixed = weights + overhead, per_seq =
               KV + logits of one sequence and P = the prefill chunk. Where activations are
               capped (b x context >= P) the largest batch is b1 = floor((usable - fixed -
               act_per_token x P) / per_seq); if b1 x context < P the answer lies where memory is
               linear, b2 = floor((usable - fixed) / (per_seq + context x act_per_token)) (that
               line over-estimates memory beyond P, so b2 is exact there). Clamped to
               [0, the calculators' search limit]
  decode bound roofline.roofline: batch x bandwidth / (weights read / TP + KV share), weights read
               = batch-1 active bytes + all routed experts x ((1 - (1 - k/E)^batch) - k/E) (MoE)
Only functions that Excel and LibreOffice both support: INDEX, MATCH, IF, IFERROR, ISNUMBER,
SMALL, MIN, MAX, INT, CEILING, and the ^ operator.
"""

from __future__ import annotations

from dataclasses import dataclass

from openpyxl.utils import get_column_letter

from quantkit.calculators.weights import DTYPE_BITS, QUANTIZED

GB = 10**9
ACT_BYTES = 2  # memory.memory passes 2 (bf16 activations) to prefill_activation_bytes
LOGITS_BYTES_PER_VALUE = 2 + 4  # activations.logits_bytes: bf16 logits + fp32 upcast
SCALE_BYTES = 2  # weights.checkpoint_bytes default (bf16 scales)
BASE_BYTES = 2  # weights.checkpoint_bytes default (bf16 for what is not quantized)


@dataclass(frozen=True)
class Col:
    key: str
    header: str
    fmt: str = "General"  # Excel number format
    formula: str | None = None  # template; "{r}" = this row
    array: bool = False  # a one-cell array formula (CSE)
    width: int = 14


@dataclass(frozen=True)
class InputItem:
    name: str  # also the workbook's defined name
    label: str
    unit: str
    note: str
    fmt: str = "#,##0"


INPUTS = (
    InputItem("gpu_util", "GPU memory utilisation", "fraction of memory",
              "usable memory per GPU = memory x this (vLLM's gpu_memory_utilization is 0.9)", "0.00"),
    InputItem("overhead_bytes", "runtime overhead per GPU", "bytes",
              "CUDA context, cuBLAS workspaces, allocator slack (quantkit default 512 MiB)"),
    InputItem("kv_bytes", "KV cache bytes per value", "bytes", "KV-cache dtype: bf16/fp16 2, fp8/int8 1"),
    InputItem("block_size", "KV block size", "tokens",
              "paged attention rounds each sequence's tokens up to whole blocks (vLLM 16); 0 = off"),
    InputItem("prefill_chunk", "prefill chunk", "tokens per forward pass, all sequences",
              "tokens of all sequences together in one prefill forward pass (vLLM's "
              "max_num_batched_tokens): min(batch x context, this) sets the activation peak"),
    InputItem("act_bytes", "activation bytes per value", "bytes", "bf16 activations"),
    InputItem("logits_bytes", "logits bytes per value", "bytes",
              "last position only: bf16 logits + their fp32 upcast"),
    InputItem("scale_bytes", "scale bytes", "bytes per scale", "quantization scales stored in bf16"),
    InputItem("base_bytes", "base bytes per parameter", "bytes",
              "precision of what is not quantized: embeddings, norms, biases, lm_head"),
    InputItem("max_batch_cap", "largest batch searched", "sequences", "quantkit's search limit"),
)
INPUT_FIRST_ROW = 2  # row 1 holds the headers
DTYPE_HEADER_ROW = INPUT_FIRST_ROW + len(INPUTS) + 1
DTYPE_FIRST_ROW = DTYPE_HEADER_ROW + 1
DTYPES = tuple(DTYPE_BITS)  # fp32, fp16, bf16, fp8, int8, int4


def input_ref(name: str) -> str:
    row = INPUT_FIRST_ROW + [i.name for i in INPUTS].index(name)
    return f"Inputs!$B${row}"


def defined_names() -> dict[str, str]:
    names = {i.name: input_ref(i.name) for i in INPUTS}
    last = DTYPE_FIRST_ROW + len(DTYPES) - 1
    for col, name in (("A", "dtype_names"), ("B", "dtype_bits"), ("C", "dtype_quantized")):
        names[name] = f"Inputs!${col}${DTYPE_FIRST_ROW}:${col}${last}"
    return names


def dtype_table() -> list[tuple[str, int, int]]:
    return [(d, DTYPE_BITS[d], int(d in QUANTIZED)) for d in DTYPES]


def _letters(cols) -> dict[str, str]:
    return {c.key: get_column_letter(i) for i, c in enumerate(cols, start=1)}


# ---- Models ---------------------------------------------------------------------------------
B = "#,##0"  # bytes and counts
MODEL_COLS = (
    Col("name", "model", "@", width=18), Col("hf_id", "Hugging Face id", "@", width=30),
    Col("model_type", "model_type", "@"), Col("attention", "attention", "@", width=10),
    Col("layers", "layers", B, width=8), Col("full_layers", "full-attention layers", B),
    Col("sliding_layers", "sliding-window layers", B),
    Col("window", "sliding window (tokens; 0 = none)", B),
    Col("hidden", "hidden size (values)", B), Col("heads", "attention heads", B, width=10),
    Col("kv_heads", "KV heads", B, width=9), Col("head_dim", "head dim (values)", B, width=10),
    Col("kv_lora_rank", "MLA kv_lora_rank (values; 0 = not MLA)", B),
    Col("rope_dim", "MLA rope head dim (values)", B), Col("vocab", "vocab (tokens)", B),
    Col("max_context", "max context (tokens)", B), Col("total_params", "parameters (count)", B, width=18),
    Col("active_params", "active parameters per token (count)", B, width=18),
    Col("kv_values", "KV values per token per layer (K and V, or MLA latent)", B,
        "=IF(M{r}>0,M{r}+N{r},2*K{r}*L{r})"),
    Col("mlp_width", "MLP activation width (values per token, split by TP)", B),
    Col("attn_width", "attention activation width (values per token, split by TP)", B),
)
ML = _letters(MODEL_COLS)
assert (ML["kv_lora_rank"], ML["rope_dim"], ML["kv_heads"], ML["head_dim"]) == ("M", "N", "K", "L")
TP_FIRST_COL = len(MODEL_COLS) + 1  # valid TP degrees follow, one per column


def tp_range(num_tp: int) -> str:
    first, last = get_column_letter(TP_FIRST_COL), get_column_letter(TP_FIRST_COL + num_tp - 1)
    return f"Models!${first}:${last}"


# ---- GPUs -----------------------------------------------------------------------------------
GPU_COLS = (
    Col("name", "GPU", "@", width=14), Col("display_name", "name", "@", width=26),
    Col("memory_bytes", "memory (bytes)", B, width=18),
    Col("bandwidth", "memory bandwidth (bytes/s)", B, width=22),
    Col("flops", "bf16 dense (FLOP/s)", B, width=24),
    Col("memory_gb", "memory (GB = 10^9 bytes)", "0.00", "=C{r}/10^9"),
    Col("source", "source", "@", width=40),
)

# ---- Weights (one row per model and dtype) --------------------------------------------------
WEIGHT_COLS = (
    Col("key", "model|dtype", "@", width=22), Col("model", "model", "@", width=18),
    Col("dtype", "dtype", "@", width=7),
    Col("group_size", "group size (input columns per scale; blank = per output channel)", B),
    Col("quantized_params", "quantized weights (count)", B, width=18),
    Col("scales", "scales (count)", B), Col("kept_params", "kept at base precision (count)", B, width=18),
    Col("routed_quantized_params", "routed experts: quantized weights (count)", B, width=18),
    Col("routed_scales", "routed experts: scales (count)", B),
    Col("routed_kept_params", "routed experts: kept params (count)", B),
    Col("routed_bias_params", "routed experts: biases of quantized layers (count)", B),
    Col("total_params", "parameters (count)", B, width=18),
    Col("active_params", "active parameters (count)", B, width=18),
    Col("experts", "experts", B, width=8), Col("experts_per_token", "experts per token", B, width=8),
    Col("bits", "bits per weight", B, "=INDEX(dtype_bits,MATCH(C{r},dtype_names,0))", width=8),
    Col("quantized", "quantized layout (1 = yes)", B, "=INDEX(dtype_quantized,MATCH(C{r},dtype_names,0))",
        width=10),
    Col("routed_bytes", "routed experts, all (bytes)", B,
        "=IF(Q{r}=1,CEILING(H{r}*P{r}/8,1)+I{r}*scale_bytes+(J{r}+K{r})*base_bytes,0)", width=18),
    Col("weights_bytes", "weights (bytes)", B,
        "=IF(Q{r}=1,CEILING(E{r}*P{r}/8,1)+F{r}*scale_bytes+G{r}*base_bytes+W{r}*(4-base_bytes)+X{r}*4,"
        "L{r}*P{r}/8)", width=18),
    Col("active_weights_bytes", "weights read per token at batch 1 (bytes)", B,
        "=IF(Q{r}=1,S{r}-R{r}+IF(N{r}>0,INT(R{r}*O{r}/N{r}),0),M{r}*P{r}/8)", width=18),
    Col("routed_params", "routed experts: parameters (count)", B, width=18),
    Col("routed_read_bytes", "routed experts, all, as decode reads them (bytes)", B,
        "=IF(Q{r}=1,R{r},U{r}*P{r}/8)", width=18),
    Col("fp32_params", "kept params that transformers keeps in fp32 (count)", B, width=18),
    Col("fp32_buffers", "fp32 buffers saved with the checkpoint (count)", B, width=18),
)
WL = _letters(WEIGHT_COLS)
assert (WL["bits"], WL["quantized"], WL["routed_bytes"], WL["weights_bytes"]) == ("P", "Q", "R", "S")
assert (WL["experts"], WL["experts_per_token"], WL["active_weights_bytes"], WL["routed_params"],
        WL["routed_read_bytes"], WL["fp32_params"], WL["fp32_buffers"]) == ("N", "O", "T", "U", "V", "W", "X")


# ---- Plan -----------------------------------------------------------------------------------
MROW, GROW, WROW = "U", "V", "W"  # the lookup columns at the end of the Plan sheet
def plan_cols(num_tp: int) -> tuple[Col, ...]:
    """Plan columns; ``num_tp`` = width of the valid-TP list on the Models sheet."""
    def m(key: str) -> str:  # a Models field of this row's model
        return f"INDEX(Models!${ML[key]}:${ML[key]},${MROW}{{r}})"

    tps = f"INDEX({tp_range(num_tp)},${MROW}{{r}},0)"
    # activation bytes per prefill token on one of {n} GPUs, and the tokens of one prefill pass
    act_tok = f"(2*{m('hidden')}+CEILING(MAX({m('mlp_width')},{m('attn_width')})/{{n}},1))*act_bytes"
    prefill_tokens = "MIN(E{r}*D{r},prefill_chunk)"
    tok = "IF(block_size>0,CEILING({x},block_size),{x})"
    kv = (f"=E{{r}}*({m('full_layers')}*{tok.format(x='D{r}')}+{m('sliding_layers')}*"
          f"{tok.format(x='MIN(D{r},' + m('window') + ')')})*{m('kv_values')}*kv_bytes")
    kvh = m("kv_heads")
    # per-GPU memory at each TP degree t (an array): MAX(1, x) is written IF(x>1, x, 1) because
    # MAX would collapse the array to one number.
    share_t = f"IF(INT({kvh}/{tps})>1,INT({kvh}/{tps}),1)/{kvh}"
    act_t, act_o = act_tok.replace("{n}", tps), act_tok.replace("{n}", "O{r}")
    per_gpu_t = (f"CEILING(F{{r}}/{tps},1)+IF({m('kv_lora_rank')}>0,G{{r}},INT(G{{r}}*({share_t})))+"
                 f"{prefill_tokens}*{act_t}+I{{r}}+J{{r}}")
    per_gpu_o = f"CEILING(F{{r}}/O{{r}},1)+INT(G{{r}}*P{{r}})+{prefill_tokens}*{act_o}+I{{r}}+J{{r}}"
    # largest batch on O GPUs (see the module docstring): per sequence = KV share + logits
    per_seq_o = f"G{{r}}/E{{r}}*P{{r}}+{m('vocab')}*logits_bytes"
    free_o = "(M{r}-CEILING(F{r}/O{r},1)-J{r})"  # usable - fixed (weights share + overhead)
    b1 = f"INT(({free_o}-{act_o}*prefill_chunk)/({per_seq_o}))"
    b2 = f"INT({free_o}/({per_seq_o}+D{{r}}*{act_o}))"
    max_batch = f"MAX(0,MIN(max_batch_cap,IF({b1}*D{{r}}>=prefill_chunk,{b1},{b2})))"
    has = 'IF(ISNUMBER(O{r}),'
    # weights one decode step reads: batch-1 active bytes + the extra experts E{r} sequences touch,
    # all routed x ((1 - (1 - k/E)^batch) - k/E) (roofline.decode_weight_bytes)
    def w(col: str) -> str:
        return f"INDEX(Weights!${col}:${col},${WROW}{{r}})"
    kfrac = f"{w('O')}/{w('N')}"
    step_weights = (f"({w('T')}+IF({w('N')}>0,{w('V')}*((1-(1-{kfrac})^E{{r}})-{kfrac}),0))")
    return (
        Col("model", "model", "@", width=18), Col("gpu", "GPU", "@", width=12),
        Col("dtype", "dtype", "@", width=7), Col("context", "context (tokens)", B, width=10),
        Col("batch", "batch (sequences)", B, width=10),
        Col("weights_bytes", "weights (bytes)", B, f"=INDEX(Weights!$S:$S,${WROW}{{r}})", width=17),
        Col("kv_cache_bytes", "KV cache (bytes)", B, kv, width=17),
        Col("activation_bytes", "activations (bytes)", B,
            f"={prefill_tokens}*(2*{m('hidden')}+MAX({m('mlp_width')},{m('attn_width')}))*act_bytes",
            width=15),
        Col("logits_bytes", "logits (bytes)", B, f"=E{{r}}*{m('vocab')}*logits_bytes", width=13),
        Col("overhead_bytes", "overhead (bytes)", B, "=overhead_bytes", width=13),
        Col("total_bytes", "total, 1 GPU (bytes)", B, "=F{r}+G{r}+H{r}+I{r}+J{r}", width=17),
        Col("total_gb", "total, 1 GPU (GB = 10^9 bytes)", "0.00", "=K{r}/10^9", width=11),
        Col("usable_bytes_per_gpu", "usable per GPU (bytes)", B,
            f"=INT(INDEX(GPUs!$C:$C,${GROW}{{r}})*gpu_util)", width=17),
        Col("fits", "fits on 1 GPU", "General", "=K{r}<=M{r}", width=8),
        Col("min_gpus", "GPUs needed (smallest valid TP degree)", "0",
            f'=IFERROR(SMALL(IF({per_gpu_t}<=M{{r}},{tps}),1),"none")', array=True, width=10),
        Col("kv_share_per_gpu", "KV cache share per GPU on GPUs needed (fraction)", "0.0000",
            f'={has}IF({m("kv_lora_rank")}>0,1,MAX(1,INT({kvh}/O{{r}}))/{kvh}),"")', width=10),
        Col("per_gpu_bytes", "per GPU on GPUs needed (bytes)", B, f'={has}{per_gpu_o},"")', width=17),
        Col("max_batch", "largest batch on GPUs needed (sequences)", B,
            f'={has}{max_batch},"")', width=11),
        Col("decode_tokens_per_s_bound", "decode bound on GPUs needed (tokens/s, all sequences)", "#,##0.0",
            f'={has}E{{r}}*INDEX(GPUs!$D:$D,${GROW}{{r}})/({step_weights}/O{{r}}+G{{r}}*P{{r}}),"")',
            width=13),
        Col("within_max_context", "context within model's max", "General", f"=D{{r}}<={m('max_context')}",
            width=9),
        Col("models_row", "Models row (lookup)", "0", "=MATCH(A{r},Models!$A:$A,0)", width=8),
        Col("gpus_row", "GPUs row (lookup)", "0", "=MATCH(B{r},GPUs!$A:$A,0)", width=8),
        Col("weights_row", "Weights row (lookup)", "0", '=MATCH(A{r}&"|"&C{r},Weights!$A:$A,0)', width=8),
    )


def check_plan_letters(cols) -> None:
    """The templates above name columns by letter; fail loudly if the order ever drifts."""
    want = {"weights_bytes": "F", "kv_cache_bytes": "G", "activation_bytes": "H", "logits_bytes": "I",
            "overhead_bytes": "J", "total_bytes": "K", "usable_bytes_per_gpu": "M", "min_gpus": "O",
            "kv_share_per_gpu": "P", "models_row": MROW, "gpus_row": GROW, "weights_row": WROW}
    got = _letters(cols)
    bad = {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}
    if bad:
        raise RuntimeError(f"plan column letters drifted: {bad}")


CHART_COLS = (
    ("weights_bytes", "weights (GB = 10^9 bytes)", "F"),
    ("kv_cache_bytes", "KV cache (GB)", "G"),
    ("activation_bytes", "activations (GB)", "H"),
    ("logits_bytes", "logits (GB)", "I"),
    ("overhead_bytes", "overhead (GB)", "J"),
)
