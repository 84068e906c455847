"""Power and false positives of the item-level stage test, simulated at item level.

Items are scored at every checkpoint of S runs, as in the experiment. Item i of run s
is right at checkpoint k when a latent ``z[s, i, k] < Phi^-1(mu[k])`` (a threshold
model), where ``z`` is a sum of independent standard-normal parts with shares that add
up to 1:

* ``item``: a persistent item effect, the same in every run (difficulty; at 1 an item
  once learned stays learned - "learn-and-stay");
* ``churn``: an AR(1) process per item and run over checkpoints (``churn_rho``): an
  item learned and forgotten again, persistently;
* ``cluster``: an AR(1) process per cluster (answer token, template) and run, shared by
  the cluster's items: template-shared churn;
* ``seed``: an AR(1) process per run, shared by ALL its items: a run-level shock;
* the rest: fresh noise at every checkpoint (the independent-binomial model's world).

Every part is N(0, 1) marginally, so ``P(right) = mu[k]`` exactly at every checkpoint:
the mean curve is the one specified (rise-then-drop, monotone or flat, from
``power.Effect``), whatever the churn. So a monotone ``mu`` called a drop is a false
positive by construction, and the rates measure the test, not the model.

``fit_churn`` picks the model's shares from a run's own item trajectories (moment
matching on a grid: flip rates at lags 1 and 5, the within-cluster excess of
co-flips, and the between-seed spread of the curves); ``item_power`` simulates a design
under a model and reports detection and false-positive rates with exact intervals.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from babeltower.analysis.item_test import (ItemTestOptions, call_item_curves, cluster_weights,
                                           seed_drops, seed_t)
from babeltower.analysis.power import Effect, Rate
from babeltower.analysis.stage_test import BINOMIAL
from babeltower.errors import BabelError


@dataclass(frozen=True)
class ChurnModel:
    """Shares of the latent's parts (module doc); the rest is fresh noise."""

    item: float = 0.0
    churn: float = 0.0
    churn_rho: float = 0.8
    cluster: float = 0.0
    cluster_rho: float = 0.6
    seed: float = 0.0
    seed_rho: float = 0.5

    def __post_init__(self):
        parts = (self.item, self.churn, self.cluster, self.seed)
        if any(p < 0 for p in parts) or sum(parts) > 1 + 1e-9:
            raise BabelError(f"churn model shares must be >= 0 and sum to <= 1, got {parts}")
        if not all(0 <= r < 1 for r in (self.churn_rho, self.cluster_rho, self.seed_rho)):
            raise BabelError("churn model correlations must lie in [0, 1)")

    @property
    def fresh(self) -> float:
        return max(0.0, 1.0 - self.item - self.churn - self.cluster - self.seed)


# named worlds of docs/stages.md
SCENARIOS: dict[str, ChurnModel] = {
    "independent": ChurnModel(),
    "persistent churn": ChurnModel(item=0.4, churn=0.4, churn_rho=0.8),
    "template-shared churn": ChurnModel(item=0.3, churn=0.3, churn_rho=0.8, cluster=0.15,
                                        cluster_rho=0.6),
    "learn-and-stay": ChurnModel(item=1.0),
    "seed-level shock": ChurnModel(item=0.4, churn=0.4, churn_rho=0.8, seed=0.02, seed_rho=0.5),
}


def _ar1(shape: tuple, rho: float, rng: np.random.Generator) -> np.ndarray:
    """Stationary N(0, 1) AR(1) along the last axis."""
    e = rng.standard_normal(shape)
    if rho == 0:
        return e
    out = np.empty(shape)
    out[..., 0] = e[..., 0]
    c = np.sqrt(1 - rho * rho)
    for k in range(1, shape[-1]):
        out[..., k] = rho * out[..., k - 1] + c * e[..., k]
    return out


def simulate_items(mean: np.ndarray, model: ChurnModel, n_items: int, clusters: np.ndarray,
                   n_seeds: int, sims: int, rng: np.random.Generator) -> np.ndarray:
    """(sims, S, I, K) 0/1 outcomes whose mean at checkpoint k is ``mean[k]`` exactly."""
    k = len(mean)
    _, inv = np.unique(clusters, return_inverse=True)
    n_cl = int(inv.max()) + 1
    z = np.sqrt(model.fresh) * rng.standard_normal((sims, n_seeds, n_items, k))
    if model.item:
        z += np.sqrt(model.item) * rng.standard_normal((sims, 1, n_items, 1))
    if model.churn:
        z += np.sqrt(model.churn) * _ar1((sims, n_seeds, n_items, k), model.churn_rho, rng)
    if model.cluster:
        g = _ar1((sims, n_seeds, n_cl, k), model.cluster_rho, rng)
        z += np.sqrt(model.cluster) * g[:, :, inv, :]
    if model.seed:
        z += np.sqrt(model.seed) * _ar1((sims, n_seeds, 1, k), model.seed_rho, rng)
    with np.errstate(divide="ignore"):
        thr = norm.ppf(np.clip(mean, 0.0, 1.0))
    return (z < thr).astype(np.float64)


@dataclass
class ItemDesign:
    """What is simulated: checkpoints (fractions of CPT), items, clusters, seeds."""

    x: np.ndarray
    n_items: int = 150
    n_clusters: int = 20
    n_seeds: int = 3

    def clusters(self) -> np.ndarray:
        return np.arange(self.n_items) % self.n_clusters


def call_simulated(values: np.ndarray, clusters: np.ndarray, options: ItemTestOptions,
                   rng: np.random.Generator, chunk: int = 50) -> dict[str, np.ndarray]:
    """Calls of the per-run test (seed 0 of each simulation) and of the pooled test over
    all seeds, for (sims, S, I, K) outcomes. Returns arrays over simulations."""
    sims, n_seeds, n_items, _ = values.shape
    units = float(n_items)
    out = {k: [] for k in ("run_drop", "pooled_drop", "pooled_items_drop", "p_items", "p_seeds")}
    c = np.unique(clusters).size
    scale = np.sqrt(c / (c - 1))
    for a in range(0, sims, chunk):
        v = values[a:a + chunk]
        r = len(v)
        curves = v.sum(axis=2) / units                                    # (r, S, K)
        w = np.stack([cluster_weights(clusters, options.n_bootstrap, rng) for _ in range(r)])
        den = w.sum(axis=2)                                               # (r, B)
        rep = np.einsum("rbi,rsik->rbsk", w, v) / den[:, :, None, None]   # (r, B, S, K)
        run_res = (rep[:, :, 0] - curves[:, None, 0]) * scale
        dp, _, _, _, rp, _, _ = call_item_curves(curves[:, 0], run_res, options)
        out["run_drop"].append((dp <= options.alpha) & (rp <= options.alpha))
        pooled = curves.mean(axis=1)
        pool_res = (rep.mean(axis=2) - pooled[:, None]) * scale
        dp, _, _, _, rp, _, se = call_item_curves(pooled, pool_res, options)
        ps = np.ones(r)
        if n_seeds >= 3:
            ps = seed_t(seed_drops(curves, se, options.statistic))[1]
        out["p_items"].append(dp)
        out["p_seeds"].append(ps)
        rose = rp <= options.alpha
        out["pooled_drop"].append((np.maximum(dp, ps) <= options.alpha) & rose)
        out["pooled_items_drop"].append((dp <= options.alpha) & rose)
    return {k: np.concatenate(v) for k, v in out.items()}


def item_power(design: ItemDesign, model: ChurnModel, effect: Effect = Effect(), sims: int = 1000,
               options: ItemTestOptions = ItemTestOptions(n_bootstrap=199), seed: int = 0,
               curves: tuple[str, ...] = ("effect", "monotone", "flat")) -> dict:
    """Detection (``effect``) and false-positive (``monotone``, ``flat``) rates of the
    per-run and the pooled test under ``model`` (module doc), each with its exact 95%
    interval, plus the binomial test's rate on the same per-run curves for contrast."""
    from babeltower.analysis.stages import BinomialNoise, StageOptions, call_curves

    if sims < 1:
        raise BabelError(f"sims must be >= 1, got {sims}")
    rng = np.random.default_rng(seed)
    clusters = design.clusters()
    means = effect.curves(np.asarray(design.x, dtype=float), BINOMIAL)
    result = {"model": dataclasses.asdict(model), "mean_curves": dataclasses.asdict(effect),
              "design": {"n_checkpoints": len(design.x), "n_items": design.n_items,
                         "n_clusters": design.n_clusters, "n_seeds": design.n_seeds},
              "options": dataclasses.asdict(options), "sims": sims}
    for name in curves:
        vals = simulate_items(means[name], model, design.n_items, clusters, design.n_seeds,
                              sims, rng)
        calls = call_simulated(vals, clusters, options, rng)
        run_curves = vals[:, 0].mean(axis=1)
        binom = call_curves(design.x, run_curves, BinomialNoise(design.n_items),
                            options=StageOptions(n_bootstrap=options.n_bootstrap,
                                                 seed=int(rng.integers(2 ** 31))))
        result[name] = {
            "per_run": Rate(int(calls["run_drop"].sum()), sims).to_dict(),
            "pooled": Rate(int(calls["pooled_drop"].sum()), sims).to_dict(),
            "pooled_items_only": Rate(int(calls["pooled_items_drop"].sum()), sims).to_dict(),
            "binomial_per_run": Rate(int((binom.call == "rise_then_drop").sum()), sims).to_dict()}
    return result


# ---- fitting the model to a run's own items --------------------------------------------
def churn_moments(values: np.ndarray, clusters: np.ndarray) -> dict[str, float]:
    """Moments of (S, I, K) 0/1 trajectories that identify the churn model: flip rates at
    lags 1 and 5, the within-cluster excess correlation of flips, and the between-seed
    variance of the curves in excess of their within-run binomial variance."""
    v = np.asarray(values, dtype=float)
    s, i, k = v.shape
    out = {"flip1": float(np.mean(v[..., 1:] != v[..., :-1]))}
    lag = min(5, k - 1)
    out["flip5"] = float(np.mean(v[..., lag:] != v[..., :-lag]))
    f = (v[..., 1:] != v[..., :-1]).astype(float)                 # (S, I, K-1)
    fc = f - f.mean(axis=1, keepdims=True)                         # remove each step's rate
    _, inv = np.unique(clusters, return_inverse=True)
    n_cl = int(inv.max()) + 1
    within = sum(fc[:, inv == c].sum(axis=1) ** 2 - (fc[:, inv == c] ** 2).sum(axis=1)
                 for c in range(n_cl))
    pairs_w = sum(int((inv == c).sum()) * (int((inv == c).sum()) - 1) for c in range(n_cl))
    var = float(np.mean(fc ** 2)) or 1e-12
    out["cluster_corr"] = float(np.sum(within) / max(1, pairs_w) / (s * (k - 1)) / var)
    if s >= 2:
        curves = v.mean(axis=1)                                    # (S, K)
        between = float(np.mean(curves.var(axis=0, ddof=1)))
        p = curves.mean(axis=0)
        binom = float(np.mean(p * (1 - p) / i))
        out["seed_excess"] = between - binom
    return out


FIT_GRID = {"item": (0.0, 0.2, 0.4, 0.6, 0.8, 0.95), "churn": (0.0, 0.2, 0.4, 0.6),
            "churn_rho": (0.5, 0.8, 0.95), "cluster": (0.0, 0.05, 0.15)}


def fit_churn(values: np.ndarray, clusters: np.ndarray, reps: int = 4, seed: int = 0) -> dict:
    """The grid model whose simulated moments are closest to the observed ones
    (relative squared error), simulated around the run's own mean curve; the seed
    share follows from the between-seed excess. Returns the model and both moments."""
    v = np.asarray(values, dtype=float)
    s, i, k = v.shape
    target = churn_moments(v, clusters)
    mean = np.clip(v.mean(axis=(0, 1)), 0.0, 1.0)
    rng = np.random.default_rng(seed)
    best, best_err, best_m = None, np.inf, None
    keys = ("flip1", "flip5", "cluster_corr")
    for item, churn, rho, cl in itertools.product(*FIT_GRID.values()):
        if item + churn + cl > 1 + 1e-9:
            continue
        model = ChurnModel(item=item, churn=churn, churn_rho=rho, cluster=cl)
        sim = simulate_items(mean, model, i, clusters, 1, reps, rng)
        m = [churn_moments(sim[j], clusters) for j in range(reps)]
        got = {key: float(np.mean([x[key] for x in m])) for key in keys}
        err = sum((got[key] - target[key]) ** 2 / max(abs(target[key]), 1e-3) ** 2 for key in keys)
        if err < best_err:
            best, best_err, best_m = model, err, got
    seed_share = 0.0
    if s >= 2 and target.get("seed_excess", 0.0) > 0:
        # a shock of share w moves the curve by ~phi(Phi^-1(p)) sqrt(w): match its variance
        dens = float(np.mean(norm.pdf(norm.ppf(np.clip(mean, 0.02, 0.98))) ** 2))
        seed_share = float(min(0.2, target["seed_excess"] / max(dens, 1e-6)))
    if seed_share and best.item + best.churn + best.cluster + seed_share <= 1:
        best = dataclasses.replace(best, seed=round(seed_share, 4))
    return {"model": dataclasses.asdict(best), "observed": target, "fitted": best_m,
            "relative_error": float(best_err)}
