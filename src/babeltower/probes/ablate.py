"""Ablate neuron sets and measure the per-language change in validation loss.

Zeroing a neuron = zeroing its entry of the down-projection's input, which removes its
whole contribution to the residual stream (the same as zeroing that column of the
down-projection weight; tested). A random control set with the same number of neurons
per layer (disjoint from the ablated set) separates "these neurons matter for this
language" from "any neurons matter".
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from babeltower.architectures import neuron_modules
from babeltower.errors import BabelError
from babeltower.io import atomic_write_bytes, atomic_write_json, provenance, refuse_existing
from babeltower.languages import canonical
from babeltower.probes.neurons import load_windows, n_neurons, read_neuron_sets
from babeltower.series import (SeriesOptions, checkpoints_of, parquet_bytes,
                               run_series, safe_name, state_dir_for, write_outputs)


def _as_layer_dict(neurons) -> dict[int, list[int]]:
    if isinstance(neurons, Mapping):
        return {int(k): [int(i) for i in v] for k, v in neurons.items() if len(v)}
    arr = np.asarray(neurons, dtype=np.int64).reshape(-1, 2)
    out: dict[int, list[int]] = {}
    for layer, idx in arr:
        out.setdefault(int(layer), []).append(int(idx))
    return out


@contextmanager
def zero_neurons(model, neurons):
    """Within the block, the given neurons ({layer: [index, ...]} or (k, 2) (layer, index))
    output zero."""
    import torch

    layers = _as_layer_dict(neurons)
    mods = neuron_modules(model, "down_proj_input")
    width = n_neurons(model)
    handles = []
    for layer, idx in layers.items():
        if not 0 <= layer < len(mods):
            raise BabelError(f"layer {layer} out of range (model has {len(mods)} layers)")
        if min(idx) < 0 or max(idx) >= width:
            raise BabelError(f"neuron index out of range at layer {layer} (width {width})")
        index = torch.tensor(sorted(set(idx)), dtype=torch.long)

        def hook(mod, args, index=index):
            x = args[0].clone()
            x[..., index] = 0
            return (x, *args[1:])

        handles.append(mods[layer][0].register_forward_pre_hook(hook))
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


def language_losses(model, windows: Mapping[str, np.ndarray], batch_size: int = 8) -> dict:
    """Mean next-token cross-entropy (nats/token) per language over token windows."""
    import torch
    import torch.nn.functional as F

    out = {}
    with torch.inference_mode():
        for lang, win in windows.items():
            total, n = 0.0, 0
            for b in range(0, len(win), batch_size):
                ids = torch.as_tensor(np.asarray(win[b:b + batch_size], dtype=np.int64))
                logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
                tgt = ids[:, 1:]
                total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                         tgt.reshape(-1), reduction="sum").item()
                n += tgt.numel()
            out[lang] = total / max(n, 1)
    return out


def random_like(neurons, width: int, seed: int = 0) -> dict[int, list[int]]:
    """Same number of neurons per layer, drawn at random outside the given set."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer, idx in _as_layer_dict(neurons).items():
        pool = np.setdiff1d(np.arange(width), np.asarray(idx))
        k = min(len(set(idx)), pool.size)
        out[layer] = sorted(int(i) for i in rng.choice(pool, size=k, replace=False))
    return out


def ablate(model, windows: Mapping[str, np.ndarray], neurons, batch_size: int = 8,
           control_seed: int | None = 0):
    """Per-language loss: base, with ``neurons`` zeroed, and with a random control set
    zeroed. DataFrame (language, condition, loss, delta, n_neurons)."""
    import pandas as pd

    layers = _as_layer_dict(neurons)
    n = sum(len(set(v)) for v in layers.values())
    base = language_losses(model, windows, batch_size)
    rows = [(l, "base", v, 0.0, 0) for l, v in base.items()]
    conds = [("ablated", layers)]
    if control_seed is not None:
        conds.append(("random", random_like(layers, n_neurons(model), control_seed)))
    for name, sel in conds:
        with zero_neurons(model, sel):
            got = language_losses(model, windows, batch_size)
        rows += [(l, name, v, v - base[l], n) for l, v in got.items()]
    return pd.DataFrame(rows, columns=["language", "condition", "loss", "delta", "n_neurons"])


def select_set(record: dict, set_name: str, layer: int | None = None) -> dict[int, list[int]]:
    """Neurons from a ``.neurons.json`` record: ``"<lang>"`` (S_lang) or ``"transfer:<lang>"``
    (T = S_primary ∩ S_lang); optionally only one layer."""
    if set_name.startswith("transfer:"):
        lang = set_name.split(":", 1)[1]
        table = record.get("transfer", {})
    else:
        lang = set_name
        table = record.get("sets", {})
    if lang not in table:
        avail = [*record.get("sets", {}), *(f"transfer:{l}" for l in record.get("transfer", {}))]
        raise BabelError(f"no neuron set {set_name!r} (available: {', '.join(avail)})")
    sets = {int(k): v for k, v in table[lang].items() if v}
    if layer is not None:
        sets = {k: v for k, v in sets.items() if k == layer}
    return sets


class AblateMeasure:
    """Neuron ablation as a series measure: per checkpoint the rows of ``ablate`` for that
    checkpoint's neuron set (``sets[checkpoint name]``)."""

    name = "ablate"

    def __init__(self, data, languages: Sequence[str], sets: dict[str, dict[int, list[int]]],
                 set_name: str, layer: int | None = None, n_tokens: int = 32768,
                 seq_len: int = 256, batch_size: int = 8, split: str = "validation",
                 control_seed: int | None = 0):
        self.data, self.langs, self.sets = data, [canonical(l) for l in languages], sets
        self.set_name, self.layer, self.n_tokens, self.seq_len = set_name, layer, n_tokens, seq_len
        self.batch_size, self.split, self.control_seed = batch_size, split, control_seed

    def config(self) -> dict:
        return {"languages": self.langs, "set": self.set_name, "layer": self.layer,
                "n_tokens": self.n_tokens, "seq_len": self.seq_len, "split": self.split,
                "control_seed": self.control_seed, "data": str(self.data),
                "sets": {k: {str(l): v for l, v in s.items()} for k, s in self.sets.items()}}

    def measure(self, model, tokenizer, ref) -> list[dict]:
        windows = load_windows(self.data, self.langs, tokenizer, self.n_tokens, self.seq_len,
                               self.split)
        df = ablate(model, windows, self.sets[ref.name], self.batch_size, self.control_seed)
        df["set"] = self.set_name
        df["layer"] = self.layer
        return json.loads(df.to_json(orient="records"))


def run_ablate(source, data, languages: Sequence[str], neurons: str | os.PathLike,
               set_name: str, *, layer: int | None = None, revisions: list[str] | None = None,
               out: str | os.PathLike | None = None, n_tokens: int = 32768, seq_len: int = 256,
               batch_size: int = 8, split: str = "validation", control_seed: int | None = 0,
               progress: bool = True, overwrite: bool = False,
               series: SeriesOptions | None = None):
    """Ablate a neuron set in every checkpoint of ``source`` and report per-language loss
    changes. ``neurons``: a ``.neurons.json`` file (used for every checkpoint) or a
    ``run_neurons`` output dir (each checkpoint uses its own ``<name>.neurons.json``)."""
    series = series or SeriesOptions(progress=progress, overwrite=overwrite)
    npath = Path(neurons)
    if not npath.exists():
        raise BabelError(f"neuron sets not found: {npath}")
    refuse_existing(out, series.overwrite)
    refs = checkpoints_of(source, revisions)
    sets = {}
    for ref in refs:  # every neuron set is checked before any model is loaded
        f = npath if npath.is_file() else npath / "checkpoints" / f"{safe_name(ref.name)}.neurons.json"
        sets[ref.name] = select_set(read_neuron_sets(f), set_name, layer)
        if not sets[ref.name]:
            raise BabelError(f"neuron set {set_name!r} is empty for {ref.name}"
                             + (f" at layer {layer}" if layer is not None else ""))
    m = AblateMeasure(data, languages, sets, set_name, layer, n_tokens, seq_len, batch_size,
                      split, control_seed)
    res = run_series(refs, [m], state=state_dir_for(out), options=series)
    df = res.frame("ablate")
    if out is not None:
        def write(d: Path) -> None:
            atomic_write_bytes(d / "ablate.parquet", parquet_bytes(df))
            atomic_write_bytes(d / "ablate.csv", df.to_csv(index=False).encode())
            atomic_write_json(d / "provenance.json", provenance(
                config=m.config(), source=str(source), neurons=str(npath),
                checkpoints=[r.name for r in refs], weights_sha256=res.weights))
        write_outputs(out, write, res, overwrite=True)
    return df
