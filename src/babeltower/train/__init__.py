"""Pre-training engine: presets, one typed config, a lean resumable loop, checkpoints.

    from babeltower.train import TrainConfig, train
    run_dir = train(TrainConfig(data="data/packed", model="nano", max_steps=200))

See docs/training.md.
"""

from babeltower.train.config import TrainConfig
from babeltower.train.loop import train
from babeltower.train.presets import PRESETS, model_config, preset_config

__all__ = ["TrainConfig", "train", "PRESETS", "model_config", "preset_config"]
