"""Mixtures: specs, baseline generators, the seekable sampler, Algorithm 1 and RegMix."""

from babeltower.mixture.generators import natural, temperature, uniform, unimax
from babeltower.mixture.sampler import MixtureSampler, RankView, available_tokens
from babeltower.mixture.spec import MixtureSpec

__all__ = ["MixtureSpec", "MixtureSampler", "RankView", "available_tokens", "natural",
           "uniform", "temperature", "unimax"]
