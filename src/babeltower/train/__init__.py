"""Pre-training engine: presets, one typed config, a lean resumable loop, checkpoints.

    from babeltower.train import TrainConfig, train
    run_dir = train(TrainConfig(data="data/packed", model="nano", max_steps=200))

See docs/training.md.
"""

from babeltower.train.checkpointing import checkpoint_steps, latest_checkpoint
from babeltower.train.config import TrainConfig
from babeltower.train.loop import (Run, TrainState, fit, lr_at, setup, train, train_step,
                                   validation_loss, validation_windows, write_checkpoint)
from babeltower.train.mfu import measure_peak_flops, mfu
from babeltower.train.presets import (PRESETS, count_parameters, flops_per_token, model_config,
                                      preset_config)

__all__ = ["TrainConfig", "train", "PRESETS", "model_config", "preset_config",
           "count_parameters", "flops_per_token", "checkpoint_steps", "latest_checkpoint",
           "validation_loss", "validation_windows", "lr_at", "measure_peak_flops", "mfu",
           "setup", "fit", "train_step", "write_checkpoint", "Run", "TrainState"]
