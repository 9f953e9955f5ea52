"""A PNG comparing the variants of one ``quantkit eval`` run: perplexity, decode speed, memory.

Uses ``matplotlib.figure.Figure`` with the Agg canvas directly: no pyplot state and no
process-wide backend switch (``matplotlib.use``) as a side effect of a library call.
The file is written to a temporary name in the same folder and then renamed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quantkit.errors import InputError

GB = 10**9


def plot_results(report: dict[str, Any], path: str | Path, overwrite: bool = True) -> Path:
    """Write the comparison PNG for a ``run_eval`` report to ``path``; returns the path.
    overwrite: False refuses an existing ``path`` (``OutputExistsError``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = check_plot_path(path)
    rows = report["results"]
    names = [r["variant"] for r in rows]
    fig = Figure(figsize=(14, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    _perplexity(axes[0], rows, names, report.get("protocol"))
    _decode(axes[1], rows, names, report.get("speed"))
    _memory(axes[2], rows, names, report.get("speed"))
    fig.suptitle(f"quantkit eval: {report['model']} on {report['device_name']} ({report['device']})")
    from quantkit.fsutil import atomic_write

    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=110), overwrite=overwrite)
    return path


def check_plot_path(path: str | Path) -> Path:
    """``InputError`` unless ``path`` ends in .png and its folder exists (checked before a run)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"--plot writes a PNG: the file name must end in .png, got '{path.name}'")
    if not path.parent.is_dir():
        raise InputError(f"--plot: folder '{path.parent}' does not exist")
    return path


def _not_measured(ax, title: str, why: str) -> None:
    import textwrap

    ax.set_title(title, fontsize=10)
    ax.text(0.5, 0.5, "not measured:\n" + textwrap.fill(why, 36), ha="center", va="center",
            transform=ax.transAxes, fontsize=9, color="0.35")
    ax.set_xticks([])
    ax.set_yticks([])


def _label_bars(ax, bars, fmt: str) -> None:
    for bar in bars:
        h = bar.get_height()
        ax.annotate(fmt.format(h), (bar.get_x() + bar.get_width() / 2, h), ha="center",
                    va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")


def _perplexity(ax, rows, names, protocol) -> None:
    title = "Perplexity (lower is better)"
    if protocol is None:
        return _not_measured(ax, title, "no --ppl text")
    values = [r["perplexity"] for r in rows]
    labels = [n if r.get("kl_vs_base") is None else
              f"{n}\nKL {r['kl_vs_base']:.2e}\ntop-1 {100 * r['top1_agreement']:.2f}%"
              for n, r in zip(names, rows)]
    bars = ax.bar(labels, values, color="tab:blue")
    _label_bars(ax, bars, "{:.4f}")
    # Differences are small: do not start the axis at 0.
    ax.set_ylim(min(values) * 0.99, max(values) * 1.006)
    stride = "non-overlapping" if protocol["stride"] is None else f"stride {protocol['stride']}"
    ax.set_title(f"{title}\nctx {protocol['ctx']}, {stride}, {protocol['tokens']:,} tokens",
                 fontsize=10)
    ax.set_ylabel("perplexity")
    ax.tick_params(axis="x", labelsize=8)


def _speed_missing(speed) -> str | None:
    if speed is None:
        return "no --speed"
    return speed.get("skipped")


def _decode(ax, rows, names, speed) -> None:
    title = "Decode throughput (tokens/s)"
    why = _speed_missing(speed)
    if why:
        return _not_measured(ax, title, why)
    batches = speed["batches"]
    width = 0.8 / len(batches)
    top = 0.0
    for i, b in enumerate(batches):
        xs = [j + (i - (len(batches) - 1) / 2) * width for j in range(len(rows))]
        vals = [_at_batch(r, b, "decode_tokens_per_s") or 0.0 for r in rows]
        bars = ax.bar(xs, vals, width, label=f"batch {b}")
        _label_bars(ax, bars, "{:.0f}")
        bounds = [_at_batch(r, b, "decode_bound_tokens_per_s") for r in rows]
        for x, bound in zip(xs, bounds):
            if bound:
                ax.hlines(bound, x - width / 2, x + width / 2, colors="k", linestyles="dashed")
        top = max([top, *vals, *(x for x in bounds if x)])
    ax.set_ylim(0, top * 1.15 or 1)
    ax.set_xticks(range(len(rows)), names)
    ax.set_ylabel("tokens/s (all sequences)")
    ax.set_title(f"{title}\ndashed: roofline bound on {speed.get('gpu') or '?'}", fontsize=10)
    ax.legend(fontsize=8)


def _memory(ax, rows, names, speed) -> None:
    title = "Peak GPU memory vs estimate"
    why = _speed_missing(speed)
    if why:
        return _not_measured(ax, title, why)
    b = speed["batches"][-1]
    keys = [("peak_allocated_bytes", "allocated"), ("peak_reserved_bytes", "reserved"),
            ("device_used_bytes", "device used"), ("estimated_bytes", "estimate")]
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(rows))]
        vals = [(_at_batch(r, b, key) or 0) / GB for r in rows]
        bars = ax.bar(xs, vals, width, label=label)
        _label_bars(ax, bars, "{:.1f}")
    ax.set_xticks(range(len(rows)), names)
    ax.set_ylabel("GB (10^9 bytes)")
    ax.set_title(f"{title}\nbatch {b}, context {speed['prompt_len'] + speed['new_tokens']}",
                 fontsize=10)
    ax.legend(fontsize=8)


def _at_batch(row, batch, key):
    for s in row.get("speed_by_batch") or []:
        if s["batch"] == batch:
            return s.get(key)
    return None
