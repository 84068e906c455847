"""The reviewers' missing check: Eq. 1 against the measured own-language share, per
checkpoint of a CPT run (Pearson and Spearman, RMSE)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from babeltower.analysis.statistics import pearson
from babeltower.errors import BabelError
from babeltower.mixture.curves import CPTCurve, estimate_beta, system_proportion


@dataclass
class CalibrationTable:
    rows: Any                 # pandas DataFrame: tokens, loss, p_loss, measured_share
    pearson: float | None
    spearman: float | None
    rmse: float
    alpha: float
    beta: float

    def to_dict(self) -> dict:
        return {"pearson": self.pearson, "spearman": self.spearman, "rmse": self.rmse,
                "alpha": self.alpha, "beta": self.beta,
                "rows": self.rows.to_dict(orient="records")}



def calibration_table(cpt_curve: CPTCurve, measured_share: Sequence[float] | dict,
                      beta: str = "fit_exp", beta_k: int = 3,
                      beta_tail_from: float | None = None) -> CalibrationTable:
    """Loss-derived P (Eq. 1) next to the measured own-language share per checkpoint.

    ``measured_share``: one value per checkpoint (in the curve's token order), or a dict
    tokens -> share (checkpoints without a measurement are left out). The share is e.g.
    the logit-lens share of prompts/layers that resolve to the new language's token.
    Reports Pearson and Spearman correlation and the RMSE of P against the share.
    """
    import pandas as pd

    c = cpt_curve if isinstance(cpt_curve, CPTCurve) else CPTCurve(**cpt_curve)
    a, b = c.alpha(), estimate_beta(c, beta, beta_k, beta_tail_from).value
    if isinstance(measured_share, dict):
        share = {float(k): float(v) for k, v in measured_share.items()}
        keep = [i for i, t in enumerate(c.tokens) if float(t) in share]
        if not keep:
            raise BabelError("no checkpoint of the CPT curve has a measured share")
        meas = np.array([share[float(c.tokens[i])] for i in keep])
    else:
        meas = np.asarray(measured_share, dtype=float)
        if len(meas) != len(c.tokens):
            raise BabelError(f"measured_share has {len(meas)} values for {len(c.tokens)} "
                             "checkpoints")
        keep = list(range(len(c.tokens)))
    p = np.array([system_proportion(c.loss[i], a, b) for i in keep])
    rows = pd.DataFrame({"tokens": c.tokens[keep], "loss": c.loss[keep], "p_loss": p,
                         "measured_share": meas})
    rank = lambda v: pd.Series(v).rank().to_numpy()  # noqa: E731
    return CalibrationTable(rows, pearson(p, meas), pearson(rank(p), rank(meas)),
                            float(np.sqrt(np.mean((p - meas) ** 2))), a, b)
