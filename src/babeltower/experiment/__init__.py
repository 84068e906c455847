"""The Babel Tower experiment end to end: corpus -> primary model -> continual pre-training
per new language -> evaluation and probes at every checkpoint -> stages -> Algorithm 1
-> baseline mixtures -> from-scratch comparison -> report.

Names are imported on first use, so ``babeltower experiment --help`` stays light."""

__all__ = ["ExperimentConfig", "run_experiment"]


def __getattr__(name: str):
    if name == "ExperimentConfig":
        from babeltower.experiment.config import ExperimentConfig

        return ExperimentConfig
    raise AttributeError(f"module 'babeltower.experiment' has no attribute {name!r}")


def run_experiment(config, **kwargs):
    from babeltower.experiment.pipeline import run_experiment as _run

    return _run(config, **kwargs)
