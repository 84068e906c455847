"""One row per checkpoint from the lens and the neuron results: what an experiment
report or the stage detector consumes."""

from __future__ import annotations

import os
from pathlib import Path

from babeltower.errors import BabelError


def _frame(x, name: str):
    import pandas as pd

    if x is None or isinstance(x, pd.DataFrame):
        return x
    p = Path(x)
    if p.is_dir():
        p = p / name
    if not p.exists():
        raise BabelError(f"probe results not found: {p}")
    return pd.read_parquet(p)


def checkpoint_summary(lens=None, neurons=None, new: str | None = None):
    """Merge ``summarize_lens`` and ``summarize_neurons`` on (checkpoint, step).

    ``lens`` / ``neurons``: a ``run_lens`` / ``run_neurons`` DataFrame or its output dir.
    ``new``: the new language whose neuron row to keep (default: the lens suite's new
    language). Neuron columns are prefixed ``lape_``.
    """
    from babeltower.probes.lens import summarize_lens
    from babeltower.probes.neurons import summarize_neurons

    lens_df = _frame(lens, "lens.parquet")
    neur_df = _frame(neurons, "neurons.parquet")
    if lens_df is None and neur_df is None:
        raise BabelError("give lens and/or neuron results")
    out = summarize_lens(lens_df) if lens_df is not None else None
    if new is None and lens_df is not None and "suite" in lens_df:
        new = str(lens_df["suite"].iloc[0]).split("-", 1)[1]
    if neur_df is not None:
        ns = summarize_neurons(neur_df)
        if new is not None:
            ns = ns[ns.language == new]
        ns = ns.rename(columns={c: f"lape_{c}" for c in ns.columns
                                if c not in ("checkpoint", "step", "tokens")})
        if out is None:
            return ns.reset_index(drop=True)
        out = out.merge(ns.drop(columns=["tokens"]), on=["checkpoint", "step"], how="outer")
    return out.reset_index(drop=True)
