"""``corpus stats``: per-language table for a built corpus or a packed data directory.

Computing (``corpus_stats`` -> a pandas DataFrame) is kept apart from rendering
(``render_stats`` -> a rich Table), so a notebook can use the numbers directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from babeltower.corpus.shards import SPLITS
from babeltower.errors import BabelError


def _load(path: Path) -> tuple[str, dict]:
    from babeltower.io import read_json

    m = read_json(path / "manifest.json", "manifest (want a built corpus or a packed data dir)")
    fmt = m.get("format", "")
    if fmt.startswith("babeltower-corpus/"):
        return "corpus", m
    if "eos_id" in m and "languages" in m:
        return "data", m
    raise BabelError(f"{path} is neither a built corpus nor a packed data dir (format {fmt!r})")


def corpus_stats(path: str | os.PathLike) -> pd.DataFrame:
    """One row per language: inputs, kept files and bytes per split, tokens (packed
    dirs), drops by reason."""
    kind, m = _load(Path(path))
    rows = []
    if kind == "corpus":
        summary = m["languages"]
    else:
        summary = m.get("corpus_summary", {})
    langs = sorted(set(summary) | (set(m["languages"]) if kind == "data" else set()))
    for lang in langs:
        info = summary.get(lang, {})
        row = {"language": lang, "inputs": info.get("inputs", 0)}
        for split in SPLITS:
            s = info.get("splits", {}).get(split, {})
            row[f"{split}_files"] = s.get("files", 0)
            row[f"{split}_bytes"] = s.get("bytes", 0)
            if kind == "data":
                d = m["languages"].get(lang, {}).get(split, {})
                row[f"{split}_docs"] = d.get("documents", 0)
                row[f"{split}_tokens"] = d.get("tokens", 0)
        dropped = info.get("dropped", {})
        row["dropped"] = sum(dropped.values())
        row["drops_by_reason"] = ", ".join(f"{k}={v}" for k, v in
                                           sorted(dropped.items(), key=lambda kv: -kv[1]))
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["kind"] = kind
    return df


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def render_stats(df: pd.DataFrame, title: str = ""):
    from rich.table import Table

    kind = df.attrs.get("kind", "corpus")
    t = Table(title=title or None)
    for col in ("language", "inputs", "kept", "dropped", "train MB", "val MB", "test MB"):
        t.add_column(col, justify="left" if col == "language" else "right")
    if kind == "data":
        for col in ("train tok", "val tok", "test tok"):
            t.add_column(col, justify="right")
    t.add_column("drops by reason")
    for r in df.to_dict("records"):
        kept = sum(r[f"{s}_files"] for s in SPLITS)
        cells = [r["language"], str(r["inputs"]), str(kept), str(r["dropped"])]
        cells += [_mb(r[f"{s}_bytes"]) for s in SPLITS]
        if kind == "data":
            cells += [f"{r[f'{s}_tokens']:,}" for s in SPLITS]
        cells.append(r["drops_by_reason"])
        t.add_row(*cells)
    return t


def print_stats(path: str | os.PathLike) -> pd.DataFrame:
    from rich.console import Console

    df = corpus_stats(path)
    console = Console()
    if not console.is_terminal:  # logs and pipes: do not squeeze the table to 80 columns
        console = Console(width=200)
    console.print(render_stats(df, title=f"{df.attrs['kind']}: {path}"))
    return df
