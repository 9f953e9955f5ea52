"""``quantkit models`` and ``quantkit gpus``: list the built-in catalogue."""

from __future__ import annotations

import click

from quantkit.cli import handle_errors
from quantkit.export.render import FORMATS, Column, render_csv, render_json, render_table

_MODEL_COLS = [
    Column("name", "name"), Column("hf_id", "Hugging Face id"), Column("params", "parameters", "int"),
    Column("active", "active", "int"), Column("attention", "attention"), Column("layers", "layers", "int"),
    Column("max_context", "max context", "int"), Column("kv_bytes_per_token", "KV B/token (bf16)", "int"),
]
_GPU_COLS = [
    Column("name", "name"), Column("display_name", "GPU"), Column("memory_bytes", "memory", "bytes"),
    Column("memory_bandwidth_bytes_per_s", "bandwidth", "bytes/s"),
    Column("bf16_dense_flops", "bf16 dense (T4: fp16)", "FLOP/s"), Column("aliases", "aliases"),
]


def _emit(rows, cols, fmt):
    if fmt == "json":
        click.echo(render_json(rows), nl=False)
    elif fmt == "csv":
        click.echo(render_csv(rows, cols), nl=False)
    else:
        click.echo(render_table(rows, cols))


@click.command("models")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@handle_errors
def models_command(fmt):
    """List the built-in model cards (names are case-insensitive; aliases work too)."""
    from quantkit.calculators.kv_cache import bytes_per_token
    from quantkit.calculators.params import count_params
    from quantkit.catalogue import model_cards
    from quantkit.spec import ModelSpec

    rows = []
    for card in model_cards():
        spec = ModelSpec.from_hf_config(card.data, name=card.name)
        p = count_params(spec)
        rows.append({
            "name": card.name, "hf_id": card.data["_quantkit"].get("hf_id", ""), "params": p.total,
            "active": p.active, "attention": spec.attention_kind, "layers": spec.num_layers,
            "max_context": spec.max_context, "kv_bytes_per_token": bytes_per_token(spec, 2),
            "aliases": ", ".join(card.aliases), "source": card.data["_quantkit"].get("source", ""),
        })
    _emit(rows, _MODEL_COLS, fmt)


@click.command("gpus")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@handle_errors
def gpus_command(fmt):
    """List the built-in GPU cards (memory as the device reports it, vendor peak bandwidth/FLOP/s)."""
    from quantkit.catalogue import gpu_cards, gpu_from_card

    rows = []
    for card in gpu_cards():
        g = gpu_from_card(card)
        rows.append({
            "name": g.name, "display_name": g.display_name, "memory_bytes": g.memory_bytes,
            "memory_bandwidth_bytes_per_s": g.memory_bandwidth_bytes_per_s,
            "bf16_dense_flops": g.bf16_dense_flops, "half_dtype": g.half_dtype, "aliases": ", ".join(g.aliases), "source": g.source,
        })
    _emit(rows, _GPU_COLS, fmt)
