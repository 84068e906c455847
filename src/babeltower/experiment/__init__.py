"""The Babel Tower experiment end to end: corpus -> primary model -> continual pre-training
per new language -> evaluation and probes at every checkpoint -> stages -> Algorithm 1
-> baseline mixtures -> from-scratch comparison -> report."""

from babeltower.experiment.config import ExperimentConfig

__all__ = ["ExperimentConfig", "run_experiment"]


def run_experiment(config, **kwargs):
    from babeltower.experiment.pipeline import run_experiment as _run

    return _run(config, **kwargs)
