"""Can a LAPE selection mean "language-specific"? Kept neurons' entropy and a rule.

LAPE (Tang et al. 2024) ranks neurons by the entropy of their firing probabilities
normalised over languages. The NORMALISED entropy H / log(n_languages) is 0 for a neuron
that fires on one language only and 1 for one that fires equally on all. Two things make
the selection meaningless, and ``lape_applicability`` says which:

* **Too few languages.** With two languages "lowest entropy" only compares two rates,
  and the quantile bars are set by those two languages alone; Tang et al. use seven. The
  rule asks for at least ``min_languages`` (default 4).
* **Kept neurons that are not language-specific.** ``top_rate`` keeps a fixed share of
  the neurons that pass the filter, whatever their entropy: when few pass, the kept ones
  can fire almost equally everywhere (the issue measured a median normalised entropy of
  0.997-0.999 with python and php). The rule asks for a median normalised entropy of the
  kept neurons of at most ``max_median_entropy`` (default 0.95). No kept neuron at all is
  also "not applicable".

The rule is a reading of a selection: it changes no count and no set.
"""

from __future__ import annotations

import math

import numpy as np

#: fewest languages for which LAPE's entropy ranking is read as language specificity
LAPE_MIN_LANGUAGES = 4
#: highest median normalised entropy of the kept neurons read as language-specific
LAPE_MAX_MEDIAN_ENTROPY = 0.95


def normalised_entropy(entropy, n_languages: int):
    """Entropy (nats, over ``n_languages`` probabilities) divided by log(n_languages):
    0 = one language only, 1 = uniform over languages. NaN for fewer than 2 languages."""
    e = np.asarray(entropy, dtype=np.float64)
    if n_languages < 2:
        return np.full(e.shape, np.nan)
    return e / math.log(n_languages) + 0.0      # + 0.0: no -0.0 for a one-language neuron


def _quartiles(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "median": None, "q1": None, "q3": None}
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"n": int(v.size), "median": float(med), "q1": float(q1), "q3": float(q3)}


def entropy_summary(sel) -> dict | None:
    """Normalised entropy of the kept neurons of a ``LapeSelection``: n, median and
    quartiles over all kept neurons (``"kept"``) and over each language's set
    (``"sets"[lang]``). None when the selection does not carry its kept neurons' entropy
    (a record written before it was kept)."""
    if sel.kept is None or sel.kept_entropy is None:
        return None
    h = {(int(l), int(i)): float(e) for (l, i), e in zip(sel.kept, sel.kept_entropy)}
    return {"kept": _quartiles(sel.kept_entropy),
            "sets": {lang: _quartiles([h[(int(l), int(i))] for l, i in s])
                     for lang, s in sel.sets.items()}}


def lape_applicability(sel, min_languages: int = LAPE_MIN_LANGUAGES,
                       max_median_entropy: float = LAPE_MAX_MEDIAN_ENTROPY) -> dict:
    """Whether a ``LapeSelection`` can be read as language-specific neurons (module
    docstring). -> {"applicable": bool, "reason": None or one line (every failed
    condition), "n_languages", "min_languages", "kept_entropy_median", "max_median_entropy",
    "n_kept"}."""
    n_lang = len(sel.languages)
    summ = entropy_summary(sel)
    median = summ["kept"]["median"] if summ else None
    reasons = []
    if n_lang < min_languages:
        reasons.append(f"{n_lang} languages given, LAPE needs >= {min_languages} (Tang et "
                       f"al. use 7): with so few the entropy ranking only compares "
                       f"{n_lang} rates")
    if sel.n_kept == 0:
        reasons.append("no neuron passed the filter, nothing was kept")
    elif median is None:
        reasons.append("the kept neurons' entropy was not recorded")
    elif median > max_median_entropy:
        reasons.append(f"the kept neurons' median normalised entropy is {median:.3f} > "
                       f"{max_median_entropy} (1 = equal on every language): they are not "
                       f"language-specific")
    return {"applicable": not reasons, "reason": "; ".join(reasons) or None,
            "n_languages": n_lang, "min_languages": int(min_languages),
            "kept_entropy_median": median, "max_median_entropy": float(max_median_entropy),
            "n_kept": int(sel.n_kept)}
