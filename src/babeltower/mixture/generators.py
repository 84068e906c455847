"""Baseline mixtures: natural, uniform, temperature-sampled and UniMax.

Every generator takes ``available`` (tokens per language, e.g. from
``available_tokens(shards)``) and a ``total_tokens`` budget and returns a
``MixtureSpec`` with absolute integer budgets that

* sum exactly to ``total_tokens`` (rounding by largest remainder), and
* never exceed ``max_epochs x available`` for any language
  (``allow_repeat`` is set only when some budget exceeds one epoch).

A target that cannot be met within those caps is a BabelError naming the language and
both numbers, except in UniMax, whose point is to redistribute what cannot be used.
``meta`` records the generator, its parameters, and the resulting shares and epochs.
"""

from __future__ import annotations

import math

from babeltower.errors import BabelError
from babeltower.languages import canonical
from babeltower.mixture.spec import MixtureSpec, largest_remainder


def _check(available: dict[str, int], total_tokens: int | None, max_epochs: float
           ) -> tuple[dict[str, int], int]:
    avail = {canonical(k): int(v) for k, v in available.items()}
    if not avail:
        raise BabelError("no languages available to build a mixture from")
    empty = sorted(k for k, v in avail.items() if v <= 0)
    if empty:
        raise BabelError(f"language {empty[0]} has 0 available tokens; drop it from the mixture")
    if not (max_epochs > 0 and math.isfinite(max_epochs)):
        raise BabelError(f"max_epochs must be a positive number, got {max_epochs}")
    total = sum(avail.values()) if total_tokens is None else int(total_tokens)
    if total < len(avail):
        raise BabelError(f"total_tokens {total} is smaller than the number of languages")
    return avail, total


def _caps(avail: dict[str, int], max_epochs: float) -> dict[str, int]:
    return {k: int(math.floor(v * max_epochs + 1e-9)) for k, v in avail.items()}


def _finish(name: str, targets: dict[str, float], avail: dict[str, int], total: int,
            max_epochs: float, meta: dict) -> MixtureSpec:
    caps = _caps(avail, max_epochs)
    for lang, t in sorted(targets.items()):
        if t > caps[lang] + 1e-6:
            raise BabelError(
                f"{name} mixture needs {t:.0f} tokens of {lang} but only {avail[lang]} are "
                f"available (cap {caps[lang]} at max_epochs={max_epochs:g}); raise max_epochs, "
                f"lower total_tokens, or use unimax")
    budgets = largest_remainder(targets, total, caps)
    epochs = {k: budgets[k] / avail[k] for k in budgets}
    meta = {"generator": name, "total_tokens": total, "max_epochs": max_epochs, **meta,
            "available": dict(sorted(avail.items())),
            "shares": {k: budgets[k] / total for k in sorted(budgets)},
            "epochs": {k: round(v, 6) for k, v in sorted(epochs.items())}}
    return MixtureSpec(name=name, budgets={k: v for k, v in budgets.items() if v > 0},
                       total_tokens=total, allow_repeat=any(e > 1 for e in epochs.values()),
                       meta=meta)


def temperature(available: dict[str, int], total_tokens: int | None, tau: float,
                max_epochs: float = 1.0) -> MixtureSpec:
    """Temperature sampling: p_l proportional to n_l ** tau.

    Convention: ``tau`` is the EXPONENT (tau=1: natural proportions; tau -> 0: uniform;
    tau=0.3 / 0.5 as in mT5/XLM-R style sampling). Papers that write p ~ n^(1/T) use
    T = 1/tau.
    """
    if not (math.isfinite(tau) and tau >= 0):
        raise BabelError(f"tau must be a finite number >= 0, got {tau}")
    avail, total = _check(available, total_tokens, max_epochs)
    weights = {k: float(v) ** tau for k, v in avail.items()}
    s = sum(weights.values())
    return _finish(f"temperature-{tau:g}" if tau not in (0, 1) else
                   ("uniform" if tau == 0 else "natural"),
                   {k: total * w / s for k, w in weights.items()}, avail, total, max_epochs,
                   {"tau": tau, "rule": "p_l ~ n_l**tau"})


def natural(available: dict[str, int], total_tokens: int | None = None,
            max_epochs: float = 1.0) -> MixtureSpec:
    """Languages in proportion to their available tokens (tau = 1); total defaults to all."""
    return temperature(available, total_tokens, 1.0, max_epochs)


def uniform(available: dict[str, int], total_tokens: int | None = None,
            max_epochs: float = 1.0) -> MixtureSpec:
    """The same number of tokens for every language (tau = 0).

    With ``total_tokens=None`` the total is n_languages x the smallest language, so no
    language repeats.
    """
    avail = {canonical(k): int(v) for k, v in available.items()}
    if total_tokens is None and avail:
        total_tokens = len(avail) * min(avail.values())
    return temperature(avail, total_tokens, 0.0, max_epochs)


def unimax(available: dict[str, int], total_tokens: int, max_epochs: float = 1.0) -> MixtureSpec:
    """UniMax (Chung et al. 2023): as uniform as possible with at most ``max_epochs`` per language.

    Languages are visited from smallest to largest; each gets an equal share of the
    budget still unassigned, capped at ``max_epochs x`` its size; what a small language
    cannot use is thereby spread over the larger ones.
    """
    avail, total = _check(available, total_tokens, max_epochs)
    caps = _caps(avail, max_epochs)
    if total > sum(caps.values()):
        raise BabelError(f"unimax: total_tokens {total} exceeds all data x max_epochs "
                         f"({sum(caps.values())}); raise max_epochs or lower total_tokens")
    remaining = float(total)
    targets: dict[str, float] = {}
    capped: list[str] = []
    order = sorted(avail, key=lambda k: (avail[k], k))
    for i, lang in enumerate(order):
        share = remaining / (len(order) - i)
        targets[lang] = min(share, float(caps[lang]))
        if targets[lang] < share:
            capped.append(lang)
        remaining -= targets[lang]
    return _finish("unimax", targets, avail, total, max_epochs, {"capped": capped})


GENERATORS = {"natural": natural, "uniform": uniform, "temperature": temperature,
              "unimax": unimax}


def make_baseline(name: str, available: dict[str, int], total_tokens: int | None = None,
                  max_epochs: float = 1.0) -> MixtureSpec:
    """A baseline by name: ``natural``, ``uniform``, ``unimax`` or ``temperature-<tau>``
    (e.g. ``temperature-0.3``), the names experiment configs use."""
    key = name.strip().lower()
    if key == "natural":
        return natural(available, total_tokens, max_epochs)
    if key == "uniform":
        return uniform(available, total_tokens, max_epochs)
    if key == "unimax":
        if total_tokens is None:
            raise BabelError("unimax needs total_tokens")
        return unimax(available, total_tokens, max_epochs)
    if key.startswith("temperature-") or key.startswith("temperature="):
        try:
            tau = float(key.split("-", 1)[1] if "-" in key else key.split("=", 1)[1])
        except ValueError:
            tau = None
        if tau is not None:
            spec = temperature(available, total_tokens, tau, max_epochs)
            return spec.model_copy(update={"name": f"temperature-{tau:g}"})
    raise BabelError(f"unknown baseline mixture {name!r} (known: natural, uniform, unimax, "
                     "temperature-<tau>)")
