"""Mixtures: specs, baseline generators, the seekable sampler, Algorithm 1 and RegMix.

Names are imported on first use, so ``import babeltower.mixture.spec`` (and the CLI's
start-up) does not load torch or scipy.
"""

from importlib import import_module

_WHERE = {
    "make_baseline": "generators", "natural": "generators", "temperature": "generators",
    "uniform": "generators", "unimax": "generators",
    "Algorithm1Result": "optimize", "CPTCurve": "optimize", "algorithm1": "optimize",
    "calibration_table": "optimize", "mixed_corpus_share": "optimize",
    "read_cpt_runs": "optimize", "system_proportion": "optimize",
    "fit_regression": "regmix", "predict_best": "regmix",
    "sample_dirichlet_mixtures": "regmix", "weights_to_mixture": "regmix",
    "MixtureSampler": "sampler", "RankView": "sampler", "available_tokens": "sampler",
    "MixtureSpec": "spec",
    "count_exposures": "exposures", "exposure_curve": "exposures", "fact_exposures": "exposures",
}

__all__ = ["MixtureSpec", "MixtureSampler", "RankView", "available_tokens", "fact_exposures",
           "count_exposures", "exposure_curve", "natural",
           "uniform", "temperature", "unimax", "make_baseline", "CPTCurve", "algorithm1",
           "Algorithm1Result", "calibration_table", "mixed_corpus_share", "read_cpt_runs",
           "system_proportion", "sample_dirichlet_mixtures", "fit_regression", "predict_best",
           "weights_to_mixture"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"babeltower.mixture.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'babeltower.mixture' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
