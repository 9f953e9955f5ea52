"""``quantkit eval``: thin command over ``quantkit.evaluator.compare.run_eval``.

torch is imported inside the callback only, so ``quantkit eval --help`` stays instant. Data goes
to stdout (a table, or JSON with ``--format json``), progress and notes to stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from quantkit.cli import handle_errors
from quantkit.errors import InputError
from quantkit.evaluator.options import BACKENDS, DEVICES, GRAPH_MODES, EvalOptions

D = EvalOptions  # the defaults live in one place: the dataclass


def _batches(ctx, param, value):
    if value is None:
        return D.batches
    try:
        out = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 1,8, got {value!r}") from None
    if not out or any(b <= 0 for b in out):
        raise click.BadParameter(f"batch sizes must be positive, got {value!r}")
    return out


@click.command("eval")
@click.argument("model")
@click.option("--compare", default=None,
              help="Variants, comma-separated: bf16, fp16, fp32, int8, int8-g<N>, llm.int8 "
                   "(quantized on the fly) or paths of saved checkpoints. The first float one is "
                   "the base of KL and top-1. [default: bf16,int8; for a quantized MODEL, its "
                   "base model's bf16 and MODEL itself]")
@click.option("--ppl", default=None, metavar="FILE|DATASET",
              help="Perplexity text: a .txt or .jsonl file, 'wikitext2', or "
                   "dataset:PATH[:CONFIG[:SPLIT]] (needs the datasets package and network).")
@click.option("--ctx", default=None, type=int,
              help="Tokens per window [default: 2048, or the model's max_position_embeddings if less].")
@click.option("--stride", default=None, type=int,
              help="Strided sliding window (Hugging Face guide) with this stride "
                   "[default: non-overlapping windows].")
@click.option("--max-tokens", default=None, type=int, help="Evaluate the first N tokens only.")
@click.option("--speed", is_flag=True, help="Measure prefill/decode speed, TTFT and peak memory (CUDA).")
@click.option("--batch", "batches", default=None, callback=_batches, metavar="N[,N...]",
              help="Batch sizes for --speed [default: 1].")
@click.option("--prompt-len", default=D.prompt_len, show_default=True, type=int,
              help="Prompt tokens per sequence for --speed.")
@click.option("--new-tokens", default=D.new_tokens, show_default=True, type=int,
              help="Generated tokens per sequence for --speed (context = prompt + new).")
@click.option("--device", default=D.device, show_default=True, type=click.Choice(DEVICES))
@click.option("--graphs", default=D.graphs, show_default=True, type=click.Choice(GRAPH_MODES),
              help="How the decode step avoids launch overhead on CUDA.")
@click.option("--gpu", default=None, help="Catalogue GPU for the roofline bound [default: detected].")
@click.option("--device-map", default=None, type=click.Choice(["auto"]),
              help="Split the models over all GPUs with accelerate (perplexity only).")
@click.option("--backend", default=D.backend, show_default=True, type=click.Choice(BACKENDS),
              help="runner: quantkit's Llama-family decoder (needed for --speed); transformers: "
                   "any causal LM, perplexity only; auto: the runner where it covers the model.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.option("--output", "-o", default=None, type=click.Path(path_type=Path),
              help="Also write the JSON report to this file.")
@click.option("--plot", default=None, type=click.Path(path_type=Path),
              help="Write a PNG comparing perplexity, speed and memory.")
@click.option("--force", is_flag=True, help="Overwrite existing --output / --plot files.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars on stderr.")
@handle_errors
def eval_command(model, compare, ppl, ctx, stride, max_tokens, speed, batches, prompt_len,
                 new_tokens, device, graphs, gpu, device_map, backend, fmt, output, plot, force, quiet):
    """Perplexity, KL divergence and top-1 agreement, speed and memory of MODEL's variants.

    MODEL is a local Hugging Face folder (config.json + safetensors + tokenizer) or a Hub id
    (needs network). Bytes are raw integers in JSON; the table shows GB (10^9) and GiB (2^30).
    """
    from quantkit.boundary.outputs import check_output_file
    from quantkit.evaluator.plot import check_plot_path

    # Outputs are checked before any work: writable folder, not a folder, no overwrite without --force.
    if output is not None:
        check_output_file(output, force, "--output")
    if plot is not None:
        check_output_file(plot, force, "--plot")
        check_plot_path(plot)
    if output is not None and plot is not None and output.resolve() == plot.resolve():
        raise InputError("--output and --plot name the same file")
    opts = EvalOptions(compare=compare, ppl=ppl, ctx=ctx, stride=stride, max_tokens=max_tokens,
                       speed=speed, batches=batches, prompt_len=prompt_len, new_tokens=new_tokens,
                       device=device, graphs=graphs, gpu=gpu, device_map=device_map,
                       backend=backend, progress=not quiet)
    opts.validate()

    from quantkit.evaluator.compare import run_eval

    report = run_eval(model, opts)
    from quantkit.boundary.text import finite_json, terminal_safe

    # NaN/inf (e.g. from NaN scales in a checkpoint) are not JSON: written as null, and said so.
    report, non_finite = finite_json(report)
    if non_finite:
        report["notes"].append(f"not finite, written as null: {', '.join(non_finite[:4])} "
                               "(the model produced non-finite logits: check its weights and scales)")
    for note in report["notes"]:
        click.echo(terminal_safe(f"note: {note}"), err=True)
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    if output is not None:
        _write_atomic(output, text, force)
    if plot is not None:
        from quantkit.evaluator.plot import plot_results

        plot_results(report, plot, overwrite=force)
    if fmt == "json":
        click.echo(text, nl=False)
    else:
        from quantkit.evaluator.report import render_report

        click.echo(render_report(report))


def _write_atomic(path: Path, text: str, force: bool) -> None:
    from quantkit.fsutil import atomic_write

    atomic_write(path, text.encode(), overwrite=force)
