"""One helper for the benchmarks' own plots: a figure drawn by the caller, saved as
``<out>/<name>.png`` with the headless backend, its path returned for ``BenchResult.plots``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.registry import BenchContext


def save_plot(
    ctx: BenchContext,
    name: str,
    draw: Callable[[Any], None],
    *,
    size: tuple[float, float] = (6, 3.4),
) -> str:
    """``draw(ax)`` fills one axes; titles and labels are the caller's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        draw(ax)
        fig.tight_layout()
        path = Path(ctx.out_dir) / f"{name}.png"
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return str(path)
