"""One typed config for a training run: YAML in, the same object out.

``TrainConfig`` is what ``babeltower train CONFIG.yaml`` reads and what
``babeltower.train.train(config)`` takes. Every field has a default except ``data``;
a validation failure becomes one ``BabelError`` line naming the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from babeltower.config import Config, apply_overrides
from babeltower.io import read_yaml_mapping, sha256_json

__all__ = ["TrainConfig", "OptimizerConfig", "ScheduleConfig", "CheckpointSchedule",
           "EvalConfig", "COSMETIC_FIELDS", "apply_overrides"]


# Fields that do not define the run: a resumed run may differ in these. Outputs and
# logging cannot change the weights; hardware fields (device, strategy, compile,
# threads) change only float rounding, and moving a run to other hardware is legitimate.
# (The number of processes is checked separately: it changes the global batch.)
COSMETIC_FIELDS = ("out_dir", "progress", "tensorboard", "log_interval", "num_threads",
                   "peak_flops", "device", "strategy", "compile", "deterministic")


class OptimizerConfig(Config):
    """AdamW. Weight decay applies to matrices only (not norms, biases), as in nanoGPT."""

    lr: float = Field(3e-3, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = Field(0.1, ge=0)
    eps: float = Field(1e-8, gt=0)


class ScheduleConfig(Config):
    """Linear warmup, then cosine decay to ``min_lr`` at the last step (or constant)."""

    warmup_steps: int | None = Field(None, ge=0)   # None -> warmup_fraction of the run
    warmup_fraction: float = Field(0.05, ge=0, le=1)
    decay: Literal["cosine", "constant", "linear"] = "cosine"
    min_lr: float | None = Field(None, ge=0)       # None -> 0.1 * lr


class CheckpointSchedule(Config):
    """Which optimizer steps get a checkpoint (the union of all rules; all kept).

    ``log_spaced`` gives 0, 1, 2, 4, ..., up to ``log_until`` (Pythia's early series);
    ``every`` adds multiples of N; ``steps`` adds explicit steps; the final step is
    always saved. Step 0 is the model before any update (the start of a continual
    pre-training phase). All are kept unless ``keep_last`` is set (the series is the
    point of this tool; ``keep_last`` is for long GPU runs that only need to resume).
    """

    steps: list[int] = Field(default_factory=list)
    every: int | None = Field(None, gt=0)
    log_spaced: bool = True
    log_until: int = Field(512, ge=0)
    initial: bool = True   # save step 0 (before any update)
    keep_last: int | None = Field(None, gt=0)   # None: keep all; N: delete all but the last N


class EvalConfig(Config):
    """Validation loss per language on fixed windows (the same windows at every eval).

    Runs at every checkpoint (its value goes into the checkpoint manifest) and, if
    ``interval`` is set, every ``interval`` steps as well.
    """

    tokens_per_language: int = Field(8192, ge=0)   # 0 disables evaluation
    interval: int | None = Field(None, gt=0)
    languages: list[str] | None = None             # None -> every language with a validation split
    batch_size: int = Field(16, gt=0)
    split: str = "validation"


class TrainConfig(Config):
    """A full training run (from scratch or continual pre-training via ``init_from``)."""

    config_name = "train config"

    # what to train
    model: str = "nano"                  # preset name (see presets.PRESETS) or HF config.json / model dir
    init_from: str | None = None         # checkpoint or HF model dir: load weights, fresh optimizer
    data: str                            # packed data directory (babeltower corpus pack)
    mixture: str | dict[str, Any] | None = None   # MixtureSpec YAML path or inline dict; None = natural
    # how long
    max_steps: int | None = Field(None, gt=0)
    tokens: int | None = Field(None, gt=0)  # token budget; steps = ceil(tokens / tokens_per_step)
    # batch
    seq_len: int = Field(256, gt=1)
    micro_batch_size: int = Field(16, gt=0)
    grad_accum: int = Field(1, gt=0)
    # optimisation
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping
    seed: int = 0
    # hardware
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "fp32", "bf16"] = "auto"   # auto: bf16 autocast on CUDA, fp32 on CPU
    strategy: Literal["auto", "single", "ddp", "fsdp"] = "auto"  # auto: ddp under torchrun
    compile: bool = False
    # torch.use_deterministic_algorithms: costs ~25% on CPU (measured, nano) and is not
    # needed there for bit-identical resume (CPU kernels are run-to-run deterministic at a
    # fixed thread count; tested); on GPUs it trades speed for reproducibility
    deterministic: bool = False
    num_threads: int | None = Field(None, gt=0)  # torch intra-op threads (None: torch default)
    peak_flops: float | None = Field(None, gt=0)  # per device; None: measured at start (matmul loop)
    # outputs
    out_dir: str = "runs/train"
    checkpoints: CheckpointSchedule = Field(default_factory=CheckpointSchedule)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    log_interval: int = Field(10, gt=0)
    progress: bool = True
    tensorboard: bool = False

    @model_validator(mode="after")
    def _budget(self) -> "TrainConfig":
        if self.max_steps is not None and self.tokens is not None:
            raise ValueError("give max_steps or tokens, not both")
        return self

    def identity(self) -> dict:
        d = self.model_dump(mode="json")
        for k in COSMETIC_FIELDS:
            d.pop(k, None)
        return d

    def sha256(self) -> str:
        """Hash of everything that determines the weights (resume refuses a mismatch)."""
        return sha256_json(self.identity())

    # ---- YAML in (the base's to_yaml / from_dict / with_overrides for the rest) ----
    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: list[str] | None = None,
                  ) -> "TrainConfig":
        p = Path(path)
        data = read_yaml_mapping(p, cls.config_name)
        # relative data/mixture/model paths are relative to the YAML file, like litgpt
        for key in ("data", "mixture", "init_from", "model"):
            v = data.get(key)
            if isinstance(v, str) and not Path(v).is_absolute() and (p.parent / v).exists():
                data[key] = str((p.parent / v).resolve())
        apply_overrides(data, overrides or [])
        return cls.from_dict(data)

    def tokens_per_step(self, world_size: int = 1) -> int:
        return self.micro_batch_size * self.grad_accum * world_size * self.seq_len

