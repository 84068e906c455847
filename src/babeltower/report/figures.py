"""Figures of the report: pure functions from tidy tables to PNG files.

Computing lives elsewhere (evaluate, probes, mixture, analysis); every function here
takes already-computed numbers and only draws them, so a user can re-plot from
``results.json`` in a notebook. Each function writes one PNG (atomically) and returns its
path.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: reports are made on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from babeltower.io import atomic_write_bytes  # noqa: E402

STAGE_COLOURS = {"translation": "#fde0c5", "transition": "#f6c0c0", "stabilization": "#d7ecd9"}
DPI = 110


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _shade_stages(ax, segments: Sequence[dict] | None) -> None:
    """Shade stage segments: dicts with name, x_start, x_end."""
    for seg in segments or []:
        colour = STAGE_COLOURS.get(seg["name"])
        if colour is None or seg["x_end"] is None:
            continue
        ax.axvspan(seg["x_start"], seg["x_end"], color=colour, alpha=0.6, lw=0,
                   label=seg["name"])


def performance_curves(curves: dict[str, dict], path: str | Path, title: str) -> Path:
    """One panel per new language: measures over continual pre-training, stages shaded.

    ``curves[lang] = {"x": [...tokens...], "series": {label: [values]}, "segments":
    [...], "kind": "three-stage"|"monotone"|..., "ylabel": str}``; the x axis is
    symlog because checkpoints are log-spaced early.
    """
    langs = list(curves)
    n = max(1, len(langs))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, lang in zip(axes[0], langs):
        c = curves[lang]
        _shade_stages(ax, c.get("segments"))
        for label, ys in c["series"].items():
            ax.plot(c["x"], ys, marker="o", ms=3, lw=1.4, label=label)
        ax.set_xscale("symlog", linthresh=max(1.0, _min_positive(c["x"])))
        ax.set_xlabel("tokens of continual pre-training")
        ax.set_ylabel(c.get("ylabel", "value"))
        ax.set_title(f"{lang}: {c.get('kind', '')}", fontsize=10)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="best")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _min_positive(xs: Iterable[float]) -> float:
    pos = [x for x in xs if x and x > 0]
    return min(pos) if pos else 1.0


def heatmap(matrix: np.ndarray, path: str | Path, title: str, xlabels: Sequence[str],
            ylabels: Sequence[str], cbar_label: str, vmin: float | None = None,
            vmax: float | None = None, cmap: str = "RdBu_r", center: float | None = None) -> Path:
    """A layers x checkpoints heatmap (rows = layers bottom-up, columns = checkpoints)."""
    m = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * m.shape[1] + 2), max(2.6, 0.35 * m.shape[0] + 1.4)))
    if center is not None and vmin is None and vmax is None:
        span = np.nanmax(np.abs(m - center)) if np.isfinite(m).any() else 1.0
        vmin, vmax = center - span, center + span
    im = ax.imshow(m, aspect="auto", origin="lower", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(xlabels)))
    ax.set_xticklabels(xlabels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(ylabels)))
    ax.set_yticklabels(ylabels, fontsize=7)
    ax.set_xlabel("checkpoint (tokens)")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(cbar_label, fontsize=8)
    return _save(fig, path)


def lines(xs: Sequence[float], series: dict[str, Sequence[float]], path: str | Path, title: str,
          xlabel: str, ylabel: str, logx: bool = True) -> Path:
    """Generic multi-line plot (e.g. transferring-neuron ratio per language over CPT)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for label, ys in series.items():
        x = xs[label] if isinstance(xs, dict) else xs
        ax.plot(x, ys, marker="o", ms=3, lw=1.4, label=label)
    if logx:
        allx = [v for s in (xs.values() if isinstance(xs, dict) else [xs]) for v in s]
        ax.set_xscale("symlog", linthresh=max(1.0, _min_positive(allx)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def calibration(points: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path,
                title: str) -> Path:
    """Loss-derived own-system share P (Eq. 1) against the measured working-language share."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="y = x")
    for lang, (p_loss, measured) in points.items():
        ax.scatter(p_loss, measured, s=18, label=lang)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("P from loss (Eq. 1)")
    ax.set_ylabel("measured new-language share (logit lens)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def mixtures(shares: dict[str, dict[str, float]], path: str | Path, title: str) -> Path:
    """Stacked horizontal bars: each mixture's token share per language."""
    names = list(shares)
    langs = sorted({lang for s in shares.values() for lang in s})
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(names) + 1.4))
    left = np.zeros(len(names))
    cmap = plt.get_cmap("tab10")
    for i, lang in enumerate(langs):
        vals = np.array([shares[n].get(lang, 0.0) for n in names])
        ax.barh(names, vals, left=left, color=cmap(i % 10), label=lang)
        left += vals
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of training tokens")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=min(len(langs), 6), loc="upper center", bbox_to_anchor=(0.5, -0.25))
    ax.invert_yaxis()
    return _save(fig, path)


def comparison(table: dict[str, dict[str, tuple[float, float, float]]], path: str | Path,
               title: str, ylabel: str, zero_line: bool = False) -> Path:
    """Grouped bars: per language (groups) and mixture (bars), mean with a CI error bar.

    ``table[mixture][language] = (mean, ci_low, ci_high)``.
    """
    mixtures_ = list(table)
    langs = list(dict.fromkeys(lang for row in table.values() for lang in row))  # caller's order
    width = 0.8 / max(1, len(mixtures_))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.2 * len(langs) + 2), 3.6))
    x = np.arange(len(langs))
    for i, m in enumerate(mixtures_):
        mean = np.array([table[m].get(lang, (np.nan,) * 3)[0] for lang in langs])
        lo = np.array([table[m].get(lang, (np.nan,) * 3)[1] for lang in langs])
        hi = np.array([table[m].get(lang, (np.nan,) * 3)[2] for lang in langs])
        err = np.vstack([np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)])
        ax.bar(x + i * width - 0.4 + width / 2, mean, width, yerr=err, capsize=2, label=m)
    if zero_line:
        ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(langs)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=2)
    finite = [v for row in table.values() for t in row.values() for v in t if np.isfinite(v)]
    if finite:
        lo_, hi_ = min(finite), max(finite)
        pad = 0.1 * (hi_ - lo_ or 1.0)
        ax.set_ylim(lo_ - pad, hi_ + pad)
    return _save(fig, path)


def band_curves(panels: dict[str, dict], path: str | Path, title: str) -> Path:
    """One panel per entry: curves with their uncertainty bands over checkpoints.

    ``panels[name] = {"x": [...], "series": {label: {"y": [...], "lo": [...], "hi": [...],
    "dashed": bool, "per_seed": [[...], ...]}}, "chance": float | None, "segments": [...], "ylabel": str,
    "xlabel": str}``. Bands are whatever interval the caller computed (binomial Wilson,
    bootstrap); a dashed series is a control arm drawn next to its treatment.
    """
    names = list(panels)
    n = max(1, len(names))
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.5 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        p = panels[name]
        _shade_stages(ax, p.get("segments"))
        for i, (label, s) in enumerate(p["series"].items()):
            colour = f"C{i % 10}"
            x = p.get("x_by_series", {}).get(label, p["x"])
            y = np.asarray(s["y"], dtype=float)
            ax.plot(x, y, ls="--" if s.get("dashed") else "-", marker="o", ms=2.5, lw=1.3,
                    color=colour, label=label)
            for seed_y in s.get("per_seed") or []:   # each seed thin, behind its mean
                ax.plot(x, np.asarray(seed_y, dtype=float), ls="-", lw=0.6, alpha=0.35,
                        color=colour)
            if s.get("lo") is not None and s.get("hi") is not None:
                ax.fill_between(x, np.asarray(s["lo"], dtype=float), np.asarray(s["hi"], dtype=float),
                                color=colour, alpha=0.15, lw=0)
        if p.get("chance") is not None:
            ax.axhline(p["chance"], color="grey", lw=0.8, ls=":", label="chance")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(p.get("xlabel", "tokens of continual pre-training"))
        ax.set_ylabel(p.get("ylabel", ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
