"""Pre-training engine: presets, one typed config, a lean resumable loop, checkpoints.

    from babeltower.train import TrainConfig, train
    run_dir = train(TrainConfig(data="data/packed", model="nano", max_steps=200))

See docs/training.md. Names are imported on first use, so ``import babeltower.train``
(and the CLI's start-up) does not load torch. ``babeltower.train.mfu`` is the module
(its function: ``babeltower.train.mfu.mfu``).
"""

from importlib import import_module

_WHERE = {
    "checkpoint_steps": "checkpointing", "latest_checkpoint": "checkpointing",
    "TrainConfig": "config",
    "Run": "loop", "TrainState": "loop", "fit": "loop", "lr_at": "schedule", "setup": "loop",
    "train": "loop", "train_step": "loop", "validation_loss": "validation",
    "validation_windows": "validation", "write_checkpoint": "loop",
    "build_model": "model", "load_model": "model", "make_optimizer": "schedule",
    "plan_steps": "schedule", "resolve_mixture": "schedule",
    "measure_peak_flops": "mfu",
    "PRESETS": "presets", "count_parameters": "presets", "flops_per_token": "presets",
    "model_config": "presets", "preset_config": "presets",
}

__all__ = ["TrainConfig", "train", "PRESETS", "model_config", "preset_config",
           "count_parameters", "flops_per_token", "checkpoint_steps", "latest_checkpoint",
           "validation_loss", "validation_windows", "lr_at", "measure_peak_flops",
           "setup", "fit", "train_step", "write_checkpoint", "Run", "TrainState"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"babeltower.train.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'babeltower.train' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
