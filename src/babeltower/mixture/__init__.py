"""Mixtures: specs, baseline generators, the seekable sampler, Algorithm 1 and RegMix."""

from babeltower.mixture.exposures import count_exposures, exposure_curve, fact_exposures
from babeltower.mixture.generators import make_baseline, natural, temperature, uniform, unimax
from babeltower.mixture.optimize import (Algorithm1Result, CPTCurve, algorithm1,
                                         calibration_table, mixed_corpus_share, read_cpt_runs,
                                         system_proportion)
from babeltower.mixture.regmix import (fit_regression, predict_best, sample_dirichlet_mixtures,
                                       weights_to_mixture)
from babeltower.mixture.sampler import MixtureSampler, RankView, available_tokens
from babeltower.mixture.spec import MixtureSpec

__all__ = ["MixtureSpec", "MixtureSampler", "RankView", "available_tokens", "fact_exposures",
           "count_exposures", "exposure_curve", "natural",
           "uniform", "temperature", "unimax", "make_baseline", "CPTCurve", "algorithm1",
           "Algorithm1Result", "calibration_table", "mixed_corpus_share", "read_cpt_runs", "system_proportion",
           "sample_dirichlet_mixtures", "fit_regression", "predict_best", "weights_to_mixture"]
