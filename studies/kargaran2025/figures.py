"""Figures of the Kargaran et al. 2025 study, in the paper's style: lens curves over
layers per token class with their bootstrap band; LAPE neuron counts per layer (bars
with bootstrap intervals) and per language x layer. Drawing only; run.py computes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from babeltower.io import atomic_write_bytes

COLORS = {"english": "#1f77b4", "english_only": "#17becf", "keyword_any": "#ff7f0e",
          "source": "#2ca02c", "target": "#d62728", "correct": "#7f7f7f"}
LABELS = {"english": "English word", "english_only": "English, not a keyword",
          "keyword_any": "keyword/built-in (any PL)", "source": "input PL keyword",
          "target": "output PL keyword", "correct": "true next token"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    _plt().close(fig)


def _curves(ax, df, prefix, classes):
    for c in classes:
        s = df[df.measure == f"{prefix}_{c}"].sort_values("layer")
        ax.plot(s.layer, s["mean"], color=COLORS[c], label=LABELS[c], lw=1.8)
        ax.fill_between(s.layer, s.lo, s.hi, color=COLORS[c], alpha=0.2, lw=0)
    ax.set_xlabel("layer")
    ax.grid(alpha=0.3)


def lens_figure(overall, path: Path, model: str, n_pairs: int) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharex=True)
    for ax, prefix, title in zip(axes, ("prob", "share", "top1"),
                                 ("probability mass in top-10", "share of top-10 tokens",
                                  "share of top-1 tokens")):
        _curves(ax, overall, prefix, list(COLORS))
        ax.set_title(title)
        ax.set_ylim(0, None)
    axes[0].set_ylabel("mean over prompts (95% bootstrap band)")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"{model}: logit lens during few-shot code translation ({n_pairs} PL pairs)")
    _save(fig, path)


def lens_kind_figure(by_kind, path: Path, model: str) -> None:
    plt = _plt()
    kinds = sorted(by_kind.kind.unique())
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), sharey=True)
    for ax, k in zip(np.atleast_1d(axes), kinds):
        _curves(ax, by_kind[by_kind.kind == k], "prob",
                ["english_only", "keyword_any", "source", "target", "correct"])
        ax.set_title(f"{k} concepts")
    np.atleast_1d(axes)[0].set_ylabel("probability mass in top-10")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle(f"{model}: lens by concept kind")
    _save(fig, path)


def lape_figure(table, path: Path, model: str) -> None:
    plt = _plt()
    t = table[table.language == "(any)"].sort_values("layer")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    for ax, col, title in zip(axes, ("n_specific", "n_exclusive"),
                              ("language-specific neurons", "exclusive neurons (one language)")):
        err = np.vstack([t[col] - t[f"{col}_lo"], t[f"{col}_hi"] - t[col]]).clip(min=0)
        ax.bar(t.layer, t[col], color="#4c72b0", yerr=err, capsize=2, ecolor="#333")
        ax.set_title(title)
        ax.set_xlabel("layer")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("neurons (95% bootstrap interval over text chunks)")
    fig.suptitle(f"{model}: LAPE neurons per layer")
    _save(fig, path)


def lape_heatmap(table, path: Path, model: str) -> None:
    plt = _plt()
    t = table[table.language != "(any)"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    for ax, col, title in zip(axes, ("n_specific", "n_exclusive"),
                              ("language-specific", "exclusive")):
        grid = t.pivot_table(index="language", columns="layer", values=col)
        im = ax.imshow(grid.to_numpy(float), aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(grid.index)), grid.index)
        ax.set_xlabel("layer")
        ax.set_title(f"{title} neurons per language and layer")
        fig.colorbar(im, ax=ax, fraction=0.03)
    fig.suptitle(f"{model}: LAPE")
    _save(fig, path)


def _shown(token: str) -> str:
    """A token as a cell label: spaces as a visible mark, newlines escaped, short."""
    return token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423")[:9]


def lens_example(top1, read_tokens, path: Path, model: str, title: str) -> None:
    """The paper's Figure 1 style for one prompt: layers x read positions, each cell the
    top-1 lens token, coloured by its probability. ``read_tokens``: the true next token
    at each read position (x axis)."""
    plt = _plt()
    n_pos = int(top1.position.max()) + 1
    layers = sorted(top1.layer.unique())
    prob = top1.pivot_table(index="layer", columns="position", values="prob")
    text = top1.set_index(["layer", "position"]).token
    fig, ax = plt.subplots(figsize=(2.0 + 1.3 * n_pos, 0.28 * len(layers) + 1.5))
    im = ax.imshow(prob.to_numpy(float), aspect="auto", cmap="RdBu", vmin=0, vmax=1,
                   origin="lower")
    for layer in layers:
        for q in range(n_pos):
            tok = _shown(text[(layer, q)])
            ax.text(q, layer, tok, ha="center", va="center", fontsize=6.5,
                    color="white" if prob.loc[layer, q] > 0.7 or prob.loc[layer, q] < 0.3
                    else "black")
    ax.set_xticks(range(n_pos), [_shown(t) for t in read_tokens], fontsize=8)
    ax.set_xlabel("next token of the target snippet (teacher forced)")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, fraction=0.04, label="top-1 probability")
    ax.set_title(f"{model}: {title}", fontsize=9)
    _save(fig, path)
