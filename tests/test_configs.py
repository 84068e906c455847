"""Every shipped config (configs/*.yaml) parses and validates, and says what its
comments promise (the paper's setting for paper-1.3b / train-gpt2-1.3b)."""

from __future__ import annotations

from pathlib import Path

import pytest

from babeltower.experiment.config import ExperimentConfig
from babeltower.languages import canonical
from babeltower.train.config import TrainConfig
from babeltower.train.presets import model_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_every_shipped_config_is_covered():
    names = {p.name for p in CONFIGS}
    assert {"default.yaml", "paper-1.3b.yaml", "train-nano.yaml"} <= names
    assert all(n.startswith("train-") or n in ("default.yaml", "mixtures.yaml", "overnight.yaml", "paper-1.3b.yaml")
               for n in names), names   # a new kind of config needs a test here


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name.startswith("train-")],
                         ids=lambda p: p.name)
def test_train_configs_validate_and_build_their_model(path):
    cfg = TrainConfig.from_yaml(path)
    model = model_config(cfg.model, 1024, cfg.seq_len)   # the preset exists and builds
    assert model.vocab_size == 1024
    budgets = cfg.mixture.budgets if hasattr(cfg.mixture, "budgets") else None
    if budgets:
        assert all(canonical(k) == k for k in budgets)


@pytest.mark.parametrize("path", [p for p in CONFIGS if not p.name.startswith("train-")],
                         ids=lambda p: p.name)
def test_experiment_configs_validate(path):
    cfg = ExperimentConfig.from_yaml(path)
    assert cfg.primary == "python" and cfg.primary not in cfg.new_languages
    model_config(cfg.model.preset, 1024, cfg.model.seq_len)


def test_paper_configs_state_the_papers_setting():
    """arXiv 2412.07298: GPT-2 1.3B, Python primary; CPT on PHP, C#, Go and C++."""
    paper = ExperimentConfig.from_yaml(CONFIGS[0].parent / "paper-1.3b.yaml")
    assert set(paper.new_languages) == {"php", "csharp", "go", "cpp"}
    gpt2 = model_config(paper.model.preset, 50257, paper.model.seq_len)
    assert gpt2.model_type == "gpt2" and gpt2.n_layer == 24 and gpt2.n_embd == 2048
    train = TrainConfig.from_yaml(CONFIGS[0].parent / "train-gpt2-1.3b.yaml")
    assert train.seq_len == 2048
