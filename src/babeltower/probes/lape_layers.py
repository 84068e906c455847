"""Where in depth LAPE's language-specific neurons sit, and which are exclusive.

A reading of a ``neurons.LapeSelection`` (Tang et al.'s rule, ``neurons.lape_select``)
for the LAPE part of Kargaran et al. 2025 (arXiv 2506.01074, section 5; code:
github.com/cisnlp/code-specific-neurons ``code-lape/identify.ipynb``, which runs Tang's
rule with top_rate 0.01, filter_rate 0.95, activation_bar_ratio 0.95 - our defaults).

* **language-specific** neurons of a language: its LAPE set (a neuron can be in several
  languages' sets: it fires above the bar on each of them);
* **exclusive** neurons of a language: those in its set and in no other language's set.

``layer_table`` counts both per layer and language and gives the normalised entropy
(``lape_applicability.normalised_entropy``: 0 = fires on one language only, 1 = equally
on all) of the counted neurons. The counts have an interval from a bootstrap over token
chunks (``chunk_stats`` + ``bootstrap_layer_counts``): each language's chunks are
resampled with replacement, the activation probabilities recomputed and the whole
selection rerun, so the interval covers the sampling of the text, not the model.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from babeltower.analysis.statistics import percentile_interval
from babeltower.errors import BabelError
from babeltower.probes.neurons import LapeSelection, collect_stats, lape_select


def exclusive_sets(sel: LapeSelection) -> dict[str, np.ndarray]:
    """language -> (k, 2) (layer, index) of the neurons in its set and in no other's."""
    masks = sel.as_masks()
    if not masks:
        return {}
    n_sets = np.sum([m for m in masks.values()], axis=0)
    return {l: np.argwhere(m & (n_sets == 1)) for l, m in masks.items()}


def _entropy_lookup(sel: LapeSelection) -> dict[tuple[int, int], float]:
    if sel.kept is None or sel.kept_entropy is None:
        return {}
    return {(int(l), int(i)): float(e) for (l, i), e in zip(sel.kept, sel.kept_entropy)}


def _median(values) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def layer_table(sel: LapeSelection):
    """Tidy DataFrame (layer, language, n_specific, n_exclusive, entropy_specific,
    entropy_exclusive): per layer and language the counts and the median normalised
    entropy of those neurons; language ``"(any)"`` is the union of the sets (each neuron
    once) and the total of the exclusive ones, with ``n_kept`` (neurons LAPE kept in
    that layer, assigned or not)."""
    import pandas as pd

    h = _entropy_lookup(sel)
    excl = exclusive_sets(sel)
    masks = sel.as_masks()
    rows = []
    for layer in range(sel.n_layers):
        for lang in sel.languages:
            spec = sel.sets[lang][sel.sets[lang][:, 0] == layer]
            ex = excl[lang][excl[lang][:, 0] == layer]
            rows.append((layer, lang, len(spec), len(ex),
                         _median([h[(int(a), int(b))] for a, b in spec if (a, b) in h]),
                         _median([h[(int(a), int(b))] for a, b in ex if (a, b) in h]),
                         float("nan")))
        union = np.argwhere(np.any([m[layer] for m in masks.values()], axis=0)) \
            if masks else np.zeros((0, 1), dtype=int)
        ex_all = [tuple(p) for l in sel.languages for p in excl[l][excl[l][:, 0] == layer]]
        kept_here = (int(np.sum(sel.kept[:, 0] == layer)) if sel.kept is not None
                     else float("nan"))
        rows.append((layer, "(any)", len(union), len(ex_all),
                     _median([h[(layer, int(i))] for (i,) in union if (layer, int(i)) in h]),
                     _median([h[(int(a), int(b))] for a, b in ex_all if (a, b) in h]),
                     kept_here))
    return pd.DataFrame(rows, columns=["layer", "language", "n_specific", "n_exclusive",
                                       "entropy_specific", "entropy_exclusive", "n_kept"])


def depth_summary(table, n_layers: int, bottom: int | None = None, top: int | None = None):
    """Share of all language-specific and of all exclusive neurons in the bottom and the
    top layers (``(any)`` rows of ``layer_table``). ``bottom``/``top``: how many layers
    count as bottom/top; default the same FRACTION of depth as the paper's 0-4 and
    29-31 of 32 (5/32 and 3/32 of the layers, at least one)."""
    bottom = bottom if bottom is not None else max(1, round(n_layers * 5 / 32))
    top = top if top is not None else max(1, round(n_layers * 3 / 32))
    t = table[table.language == "(any)"].set_index("layer")
    out = {"bottom_layers": f"0-{bottom - 1}", "top_layers": f"{n_layers - top}-{n_layers - 1}",
           "bottom_fraction_of_depth": bottom / n_layers, "top_fraction_of_depth": top / n_layers}
    for col in ("n_specific", "n_exclusive"):
        total = float(t[col].sum())
        b = float(t.loc[t.index < bottom, col].sum())
        tp = float(t.loc[t.index >= n_layers - top, col].sum())
        out[f"{col}_total"] = total
        out[f"{col}_bottom_share"] = b / total if total else float("nan")
        out[f"{col}_top_share"] = tp / total if total else float("nan")
    return out


# --------------------------------------------------------------------------- intervals

def chunk_stats(model, windows: Mapping[str, np.ndarray], windows_per_chunk: int = 4,
                batch_size: int = 4, point: str = "act_fn", progress: bool = False
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Positive-activation counts per chunk of ``windows_per_chunk`` token windows:
    language -> (counts (n_chunks, n_layers, width) int32, tokens (n_chunks,)). Their
    sum over chunks is exactly ``collect_stats``' count over all windows."""
    out = {}
    for lang, win in windows.items():
        win = np.asarray(win)
        counts, tokens = [], []
        for c in range(0, len(win), windows_per_chunk):
            part = win[c:c + windows_per_chunk]
            st = collect_stats(model, {lang: part}, batch_size=batch_size, point=point,
                               progress=False)
            counts.append(st.counts[lang].astype(np.int32))
            tokens.append(st.tokens[lang])
        if progress:
            print(f"LAPE counts: {lang} ({len(win)} windows)", flush=True)
        out[lang] = (np.stack(counts), np.asarray(tokens, dtype=np.int64))
    return out


def probabilities_of(chunks: Mapping[str, tuple[np.ndarray, np.ndarray]],
                     languages: Sequence[str], draws: Mapping[str, np.ndarray] | None = None
                     ) -> np.ndarray:
    """(n_languages, n_layers, width) activation probabilities from chunk counts; with
    ``draws`` (language -> chunk indices, repeats allowed) from those chunks only."""
    probs = []
    for lang in languages:
        if lang not in chunks:
            raise BabelError(f"no activation counts for {lang}")
        c, t = chunks[lang]
        idx = np.arange(len(t)) if draws is None else draws[lang]
        probs.append(c[idx].sum(axis=0, dtype=np.int64) / t[idx].sum())
    return np.stack(probs)


def bootstrap_layer_counts(chunks: Mapping[str, tuple[np.ndarray, np.ndarray]],
                           languages: Sequence[str], n_boot: int = 100, seed: int = 0,
                           level: float = 0.95, **select_kwargs):
    """Percentile bootstrap intervals of ``layer_table``'s counts: per draw, every
    language's chunks are resampled with replacement and LAPE reruns on the resulting
    probabilities. -> DataFrame (layer, language, measure, lo, hi) for measures
    n_specific and n_exclusive."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        draws = {l: rng.integers(0, len(chunks[l][1]), size=len(chunks[l][1]))
                 for l in languages}
        sel = lape_select(probabilities_of(chunks, languages, draws), list(languages),
                          **select_kwargs)
        samples.append(layer_table(sel)[["layer", "language", "n_specific", "n_exclusive"]])
    allb = pd.concat(samples, keys=range(n_boot), names=["draw", None]).reset_index(level=0)
    out = []
    for m in ("n_specific", "n_exclusive"):
        for (layer, lang), v in allb.groupby(["layer", "language"])[m]:
            lo, hi = percentile_interval(v.to_numpy(dtype=float), level)
            out.append((int(layer), lang, m, float(lo), float(hi)))
    return pd.DataFrame(out, columns=["layer", "language", "measure", "lo", "hi"])
