"""Is a logit-lens preference specific to the pair? Shares and margins against controls.

``lens_items`` (module ``lens``) gives per prompt and layer, for the prompt's new token
n, its true primary counterpart p, the UNRELATED primary tokens u (other pairs' primary
first tokens after the same context) and the OTHER pairs' new tokens o, with s(.) the
layer's log-probability (differences of logits, the normaliser cancels):

=======================  ===========================  =====================================
effect                   share (fraction, 0..1)       margin (nats)
=======================  ===========================  =====================================
true pair                share = [s(n) > s(p)]        margin = s(n) - s(p)
control A                control_a = mean_u [s(n) >    margin_a = s(n) - mean_u s(u)
                         s(u)]
control B                control_b = mean_o [s(o) >    margin_b = mean_o s(o) - s(p)
                         s(p)]
specific (counterpart)   specific = control_a - share  margin_specific = margin_a - margin
                                                       = s(p) - mean_u s(u)
specific_new             specific_new = share -        margin_specific_new = margin -
                         control_b                     margin_b = s(n) - mean_o s(o)
=======================  ===========================  =====================================

Every effect is first a mean over the items that share a prompt text (one unit per
text), then a mean over texts, with a percentile bootstrap interval over CLUSTERS of texts
(texts linked by a shared pair or a shared text: one pair's prompts share its identifiers
and are not independent). All columns of one call use the same bootstrap draws.

Shares saturate: where s(n) - s(p) is far from 0 for most prompts (share near 0 or 1)
the counterpart can be preferred by several nats over unrelated primary tokens while
control_a - share stays near 0; and a uniform shift of every primary token moves the
shares (and their difference) while the margins' differences do not move at all. The
margins are linear in the log-probabilities, so they do not saturate and a constant
added to every primary token (or every new token) cancels in margin_specific (and
margin_specific_new).

Control A's unrelated primary tokens are, by default (``control="kind"``), those of the
other pairs of the SAME kind (keyword | builtin) as the prompt's pair: a model that only
knows "a keyword goes here" raises every keyword, and against unrelated tokens of both
kinds that would read as a counterpart effect. ``control="all"`` is the earlier control
(all other pairs); the table records which one was used (``table.attrs["control"]``).
"""

from __future__ import annotations

from babeltower.analysis.statistics import percentile_interval
from babeltower.errors import BabelError

#: control A's unrelated primary tokens: same-kind pairs only (default) or all other pairs
CONTROLS = ("kind", "all")

#: lens_items measures behind each effect, per control (share, then margin effects)
SHARE_MEASURES = {
    "kind": {"share": "prefers_new", "control_a": "prefers_new_vs_unrelated_kind",
             "control_b": "other_new_prefers"},
    "all": {"share": "prefers_new", "control_a": "prefers_new_vs_unrelated",
            "control_b": "other_new_prefers"},
}
MARGIN_MEASURES = {
    "kind": {"margin": "logp_diff", "margin_a": "logp_new_vs_unrelated_kind",
             "margin_b": "logp_other_new_vs_primary",
             "margin_specific": "primary_vs_control_kind",
             "margin_specific_new": "new_vs_other_new"},
    "all": {"margin": "logp_diff", "margin_a": "logp_new_vs_unrelated",
            "margin_b": "logp_other_new_vs_primary", "margin_specific": "primary_vs_control",
            "margin_specific_new": "new_vs_other_new"},
}
#: the share measures of the earlier (all-pairs) control A, kept under their old name
CONTROL_MEASURES = SHARE_MEASURES["all"]
#: margin columns that carry an interval (``<name>_ci_low`` / ``<name>_ci_high``)
MARGIN_COLUMNS = tuple(MARGIN_MEASURES["kind"])


def _units(item_df, measure: str, columns):
    """Prompt texts x columns of one measure, averaged over the items that share a prompt
    text: prompts written for several targets (``"n = "`` for len and for str) count once."""
    sel = item_df[item_df.measure == measure]
    return sel.pivot_table(index="prompt", columns="layer", values="value",
                           aggfunc="mean", dropna=False).reindex(columns=columns)


def _clusters(item_df, texts) -> list[int]:
    """Cluster id per prompt text: texts linked through a shared pair (one pair's prompts
    share its identifiers, so their values are not independent) or a shared text fall in
    one cluster; the bootstrap resamples clusters (union-find over pairs and texts)."""
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for text, pair in item_df[["prompt", "pair_id"]].drop_duplicates().itertuples(index=False):
        parent[find(("text", text))] = find(("pair", pair))
    roots = [find(("text", t)) for t in texts]
    ids = {r: i for i, r in enumerate(dict.fromkeys(roots))}
    return [ids[r] for r in roots]


def _boot_means(x, weights):
    """Weighted means over units (rows of x, NaN = missing) for each bootstrap weight row."""
    import numpy as np

    ok = ~np.isnan(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ np.where(ok, x, 0.0)) / (weights @ ok)


def _controls_frame(units: dict, clusters: list[int], n_boot: int, seed: int,
                    confidence: float):
    """share / control_a / control_b / specific (+ interval) / specific_new (+ interval),
    and each margin in ``units`` with its interval, for unit matrices (prompt texts x
    columns), with one bootstrap over clusters of texts for all of them."""
    import numpy as np
    import pandas as pd

    share, ca, cb = (units[k].to_numpy(float) for k in ("share", "control_a", "control_b"))
    specific, specific_new = ca - share, share - cb
    n_units, n_clusters = share.shape[0], max(clusters) + 1
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)
    weights = draws[:, clusters] * 1.0                       # (n_boot, n_units)
    out = pd.DataFrame(index=units["share"].columns)
    ones = np.ones((1, n_units))

    def put(name, x, prefix):
        out[name] = _boot_means(x, ones)[0]
        if prefix is not None:
            boot = _boot_means(x, weights)
            lo, hi = percentile_interval(boot, confidence, axis=0)
            out[f"{prefix}ci_low"], out[f"{prefix}ci_high"] = lo, hi

    for name, x in (("share", share), ("control_a", ca), ("control_b", cb),
                    ("specific", specific), ("specific_new", specific_new)):
        put(name, x, None if name in ("control_a", "control_b")
            else "" if name == "specific" else f"{name}_")
    out["n_prompts"] = (~np.isnan(specific)).sum(axis=0)
    out["n_clusters"] = n_clusters
    for name in MARGIN_COLUMNS:
        if name in units:
            put(name, units[name].to_numpy(float), f"{name}_")
    return out


def _control_items(item_df, side: str, kind: str | None, control: str):
    if control not in CONTROLS:
        raise BabelError(f"control must be one of {', '.join(CONTROLS)}, not {control!r}")
    sel = item_df[item_df.side == side]
    if kind not in (None, "all"):
        sel = sel[sel.kind == kind]
    need = list(SHARE_MEASURES[control].values()) + list(MARGIN_MEASURES[control].values())
    have = set(sel.measure)
    missing = list(dict.fromkeys(m for m in need if m not in have))
    if sel.empty or missing:
        raise BabelError(f"no lens rows for the controls (side={side}, kind={kind}"
                         + (f"; missing measures {', '.join(missing)}" if missing else "") + ")")
    return sel


def _all_units(sel, control: str, layers, span_of=None):
    """Unit matrices of every share and margin measure, reindexed to one set of texts;
    ``span_of(per_layer)`` turns a texts x layers matrix into texts x spans."""
    measures = {**SHARE_MEASURES[control], **MARGIN_MEASURES[control]}
    units = {k: _units(sel, m, layers) for k, m in measures.items()}
    texts = units["share"].index
    units = {k: u.reindex(texts) for k, u in units.items()}
    if span_of is not None:
        units = {k: span_of(u) for k, u in units.items()}
    return units


def lens_controls(item_df, side: str = "new", kind: str | None = None, n_boot: int = 2000,
                  seed: int = 0, confidence: float = 0.95, control: str = "kind"):
    """Per layer: the working-language share with its two controls and the specific effects,
    as shares and as margins in nats (module docstring for the definitions).

    ``item_df`` is ``lens_items``'s output (one model). Columns: layer, share (true pair:
    new token beats its primary counterpart) with share_ci_low/high, control_a (the new
    token against UNRELATED primary tokens), control_b (OTHER pairs' new tokens against
    this primary token), specific = control_a - share (how much more often the TRUE
    counterpart beats the new token than an unrelated primary token does) with
    ci_low/ci_high, specific_new = share - control_b with its interval, n_prompts
    (distinct prompt texts with both measures), n_clusters; then margin, margin_a,
    margin_b, margin_specific (= s(p) - mean s(u): the counterpart's margin over unrelated
    primary tokens, nats), margin_specific_new (= s(n) - mean s(o)), each with
    ``<name>_ci_low`` / ``<name>_ci_high``. Which control A was used is
    ``table.attrs["control"]`` ("kind" | "all"; not a column, so every column stays
    numeric).

    ``control="kind"`` (default): control A's unrelated primary tokens come from pairs of
    the prompt's own kind (keyword | builtin); ``"all"``: from every other pair (the
    earlier control, whose columns are then exactly the earlier ones).
    Intervals: percentile bootstrap over prompt TEXTS (items sharing a text are averaged
    first), resampled in clusters (texts linked by a pair or a shared text). Layer 0
    (embeddings) is a row of its own; ``lens_controls_summary`` reports it apart from the
    mean over the blocks."""
    sel = _control_items(item_df, side, kind, control)
    layers = sorted(set(sel.layer))
    units = _all_units(sel, control, layers)
    out = _controls_frame(units, _clusters(sel, units["share"].index), n_boot, seed,
                          confidence)
    out.index.name = "layer"
    out = out.reset_index()
    out.attrs["control"] = control
    return out


def lens_controls_summary(item_df, side: str = "new", kind: str | None = None,
                          n_boot: int = 2000, seed: int = 0, confidence: float = 0.95,
                          control: str = "kind"):
    """``lens_controls``'s columns for three spans, one row each: "layer 0" (embeddings),
    "layers 1-L" (the mean over the blocks, embeddings left out), "layer L" (the output
    layer, first-token attribution); plus "layer L, full identifiers": the share and the
    margin scored with whole identifiers (``seq_prefers_new``, ``seq_logp_diff``; their
    controls are not computed, NaN)."""
    import numpy as np
    import pandas as pd

    sel = _control_items(item_df, side, kind, control)
    layers = sorted(set(sel.layer))
    last = layers[-1]
    spans = {"layer 0": [0], f"layers 1-{last}": layers[1:], f"layer {last}": [last]}

    def span_of(per_layer):
        return pd.DataFrame({name: per_layer[cols].mean(axis=1, skipna=False)
                             for name, cols in spans.items()})

    units = _all_units(sel, control, layers, span_of)
    clusters = _clusters(sel, units["share"].index)
    out = _controls_frame(units, clusters, n_boot, seed, confidence)
    full = {"share": "seq_prefers_new", "margin": "seq_logp_diff"}
    if (sel.measure == full["share"]).any():
        n_c = max(clusters) + 1
        draws = np.random.default_rng(seed).multinomial(n_c, np.full(n_c, 1 / n_c), n_boot)
        weights = draws[:, clusters] * 1.0
        row = pd.Series(np.nan, index=out.columns)
        for col, m in full.items():
            if not (sel.measure == m).any():
                continue
            s = (sel[sel.measure == m].groupby("prompt")["value"].mean()
                 .reindex(units["share"].index).to_numpy(float))
            boot = _boot_means(s[:, None], weights)[:, 0]
            lo, hi = percentile_interval(boot, confidence)
            s = s[~np.isnan(s)]
            row[[col, f"{col}_ci_low", f"{col}_ci_high"]] = [s.mean(), lo, hi]
            if col == "share":
                row["n_prompts"] = len(s)
        out.loc[f"layer {last}, full identifiers"] = row
    out.index.name = "span"
    out = out.reset_index()
    out.attrs["control"] = control
    return out
