"""``quantkit plan``: thin command over ``quantkit.plan`` (no torch import)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from quantkit.boundary.paths import shown
from quantkit.cli import handle_errors
from quantkit.plan.definition import DEFAULT_BATCHES, DEFAULT_CONTEXTS, DEFAULT_DTYPES, Assumptions
from quantkit.plan.export import FORMATS

_A = Assumptions()
PROGRESS_ROWS = 2_000


def _csv(values) -> str:
    return ",".join(map(str, values))


@click.command("plan")
@click.option("--plan", "plan_file", default=None, metavar="NAME|FILE",
              help="A plan YAML: a file, or a name in calculators/plans/ (e.g. datacenter). "
                   "The options below override its fields.")
@click.option("--models", default=None, help="Comma-separated model names (see 'quantkit models'), "
                                            "globs (llama3*), 'all', or config.json paths.")
@click.option("--gpus", default=None, help="Comma-separated GPU names (see 'quantkit gpus'), globs (h1*) or 'all'.")
@click.option("--dtypes", default=None, help=f"Comma-separated weight dtypes: fp32, fp16, bf16, fp8, int8, int4 [default: {_csv(DEFAULT_DTYPES)}].")
@click.option("--contexts", default=None, help=f"Comma-separated tokens per sequence [default: {_csv(DEFAULT_CONTEXTS)}].")
@click.option("--batches", default=None, help=f"Comma-separated batch sizes (sequences) [default: {_csv(DEFAULT_BATCHES)}].")
@click.option("--kv-dtype", default=None, help=f"KV-cache dtype: bf16, fp16, fp8, int8, fp32 [default: {_A.kv_dtype}].")
@click.option("--block-size", default=None, type=int, help="Round KV to paged blocks of N tokens (vLLM: 16) [default: off].")
@click.option("--prefill-chunk", default=None, type=int, help=f"Tokens in one prefill forward pass, all sequences together [default: {_A.prefill_chunk}].")
@click.option("--group-size", default=None, type=int, help="Quantization group size [default: per channel for int8/fp8, 128 for int4].")
@click.option("--gpu-util", default=None, type=float, help=f"Fraction of GPU memory usable (vLLM: 0.9) [default: {_A.gpu_util}].")
@click.option("--overhead-bytes", default=None, type=int, help=f"Runtime overhead per GPU in bytes [default: {_A.overhead_bytes:,} = {_A.overhead_bytes / 2**20:g} MiB].")
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False), help="Write to FILE (.xlsx, .csv or .json).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Output format [default: from --out's suffix; a table on stdout without --out].")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@handle_errors
def plan_command(plan_file, models, gpus, dtypes, contexts, batches, kv_dtype, block_size, prefill_chunk,
                 group_size, gpu_util, overhead_bytes, out, fmt, force):
    """Capacity plan over models x GPUs x dtypes x contexts x batches.

    Each row: weights, KV cache, activations, logits, overhead and total on one GPU (bytes), whether
    it fits, the GPUs needed (smallest valid tensor-parallel degree), and on those GPUs the memory
    per GPU, the largest batch and the decode tokens/s bound -- the numbers 'quantkit estimate'
    gives. The .xlsx has live formulas (edit an input, a GPU's memory or a row's context and
    the plan follows) plus cached values; .csv and .json carry the same numbers as raw bytes.
    """
    from quantkit.plan.definition import build_plan, read_plan_file
    from quantkit.plan.export import format_for, render_text, size_warning, write_plan
    from quantkit.plan.rows import build_rows

    fmt = format_for(out, fmt)
    path = Path(out).expanduser() if out else None
    if path is not None:
        from quantkit.plan.export import check_writable

        check_writable(path, force)  # fail before computing anything
    raw = dict(read_plan_file(plan_file)) if plan_file else {}
    given = {"models": models, "gpus": gpus, "dtypes": dtypes, "contexts": contexts, "batches": batches,
             "kv_dtype": kv_dtype, "block_size": block_size, "prefill_chunk": prefill_chunk,
             "group_size": group_size, "gpu_util": gpu_util, "overhead_bytes": overhead_bytes}
    raw.update({k: v for k, v in given.items() if v is not None})
    plan = build_plan(raw)
    warning = size_warning(plan.num_rows, fmt)
    if warning:
        click.echo(warning, err=True)
    rows = build_rows(plan, progress=_progress(plan.num_rows))
    if path is None:
        click.echo(render_text(plan, rows, fmt), nl=False)
        return
    command = "quantkit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_plan(plan, rows, path, fmt, force, command)
    click.echo(f"wrote {plan.num_rows:,} rows to {shown(path)}", err=True)


def _progress(total: int):
    from tqdm import tqdm

    def wrap(it):
        # shown on a terminal, and for long plans (over 2,000 rows) wherever stderr goes
        return tqdm(it, total=total, desc="plan rows", unit="row", file=sys.stderr,
                    disable=None if total <= PROGRESS_ROWS else False, leave=False, mininterval=1.0)

    return wrap
