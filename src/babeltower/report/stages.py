"""Drawing a stage result (the computation lives in ``babeltower.analysis.stages``)."""

from __future__ import annotations

import numpy as np

from babeltower.analysis.stages import StageResult


def plot_stages(result: StageResult, ax=None, label: str | None = None):
    """Points, fitted curve and shaded stages on a matplotlib axis (returns the axis)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    x = result.x
    ax.plot(x, result.y, "o", ms=3, alpha=0.6, label=label or "checkpoints")
    ax.plot(x, result.fitted, "-", lw=1.5, label="fitted (isotonic pieces)")
    colours = {"translation": "#fde0c5", "transition": "#f6b2b2", "stabilization": "#c9e4c5",
               "rise": "#fde0c5", "plateau": "#c9e4c5"}
    for seg in result.segments:
        if seg.name in colours:
            ax.axvspan(seg.start_x, seg.end_x, color=colours[seg.name], alpha=0.5, lw=0)
    if len(x) and np.all(x > 0) and x.max() / x.min() > 20:
        ax.set_xscale("log")
    ax.set_title(f"{result.call} (drop test p = {result.p_value:.3g})")
    ax.legend(fontsize=7)
    return ax
