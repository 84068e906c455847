"""Plots for probe results. Computing lives in probes/lens/ and neurons.py; this only draws."""

from __future__ import annotations

import os
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def lens_heatmap(df, path: str | os.PathLike, measure: str = "logp_diff", side: str = "new",
                 kind: str = "all", title: str | None = None) -> Path:
    """Heatmap layers (rows) x checkpoints (columns) of one lens measure, written as PNG.

    ``df`` is ``run_lens``'s table. For ``logp_diff`` red means the new-language
    identifier is preferred, blue the primary-language one.
    """
    import numpy as np

    from babeltower.errors import BabelError
    from babeltower.io import atomic_write_bytes

    sel = df[(df.measure == measure) & (df.side == side) & (df.kind == kind)]
    if sel.empty:
        raise BabelError(f"no lens rows for measure={measure} side={side} kind={kind}")
    order = sel.drop_duplicates("checkpoint")[["checkpoint", "step"]]
    cks = list(order.sort_values("step", kind="stable", na_position="last").checkpoint)
    grid = sel.pivot_table(index="layer", columns="checkpoint", values="value").reindex(
        columns=cks)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(cks) + 2), max(3, 0.3 * len(grid) + 1.5)))
    vals = grid.to_numpy(dtype=float)
    if measure == "logp_diff":
        lim = float(np.nanmax(np.abs(vals))) or 1.0
        im = ax.imshow(vals, aspect="auto", origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
    else:
        im = ax.imshow(vals, aspect="auto", origin="lower", cmap="viridis")
    ax.set_xticks(range(len(cks)))
    ax.set_xticklabels(cks, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(grid.index)))
    ax.set_yticklabels([str(i) for i in grid.index], fontsize=7)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("layer (0 = embeddings)")
    attribution = sel["attribution"].iloc[0] if "attribution" in sel else "first-token"
    suite = sel["suite"].iloc[0] if "suite" in sel else ""
    ax.set_title(title or f"{suite} {measure} ({side} prompts, {kind}; {attribution})",
                 fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
