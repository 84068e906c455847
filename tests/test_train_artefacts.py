"""Our checkpoints open outside babeltower: the tokenizer a checkpoint carries loads with
``PreTrainedTokenizerFast`` and ``AutoTokenizer`` and names a class transformers 4.x has
(5.x writes ``TokenizersBackend``, which 4.x lacks); the paper-1.3b preset has the paper's
size."""

from __future__ import annotations

import json

import torch

from babeltower.train import checkpointing as ck
from babeltower.train.presets import preset_config
from train_fixtures import make_packed

# tokenizer classes of transformers 4.x that read a tokenizer.json (4.57's
# transformers/__init__.py exports PreTrainedTokenizerFast since 4.0); "TokenizersBackend"
# exists only from 5.0
CLASSES_IN_TRANSFORMERS_4 = {"PreTrainedTokenizerFast"}


def test_checkpoint_tokenizer_loads_in_both_transformers_majors(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    data = make_packed(tmp_path / "data", docs_per_language=20)
    written = json.loads((data / "tokenizer" / "tokenizer_config.json").read_text())
    model = AutoModelForCausalLM.from_config(preset_config("nano", 320, 64))
    ckpt = ck.save_checkpoint(tmp_path / "run", 0, model, {"step": 0}, {"step": 0},
                              tokenizer_dir=data / "tokenizer")
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] in CLASSES_IN_TRANSFORMERS_4, cfg["tokenizer_class"]
    assert "backend" not in cfg
    assert cfg["eos_token"] == written["eos_token"]      # everything else kept
    ref = PreTrainedTokenizerFast.from_pretrained(data / "tokenizer")
    text = "def f(x):\n    return len(x) + 1\n"
    for tok in (PreTrainedTokenizerFast.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt)):
        assert tok(text)["input_ids"] == ref(text)["input_ids"]
        assert tok.eos_token == "<|endoftext|>"


def test_paper_1_3b_preset_has_the_papers_size():
    """configs/paper-1.3b.yaml names a GPT-2 1.3B: count its parameters on the meta device
    and compare with a count derived by hand from the architecture's dimensions."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from babeltower.experiment.config import ExperimentConfig
    from babeltower.train.presets import count_parameters, flops_per_token

    root = Path(__file__).parent.parent / "configs"
    exp = ExperimentConfig.from_yaml(root / "paper-1.3b.yaml")
    from babeltower.train.config import TrainConfig   # the GPU training preset, same model
    assert TrainConfig.from_yaml(root / "train-gpt2-1.3b.yaml").model == exp.model.preset
    vocab, seq = 50257, exp.model.seq_len
    cfg = preset_config(exp.model.preset, vocab, seq)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    n = count_parameters(model)
    # by hand, GPT-2: per block 2 LayerNorms (2*2d), attention qkv d x 3d + 3d bias and
    # proj d x d + d, MLP d x 4d + 4d and 4d x d + d; embeddings V x d and ctx x d
    # (the head is tied); a final LayerNorm 2d
    L, d, ctx = 24, 2048, cfg.n_positions
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    expected = L * block + vocab * d + ctx * d + 2 * d
    assert n["total"] == expected
    assert 1.25e9 < n["total"] < 1.4e9        # "1.3B"
    fpt = flops_per_token(model, seq)
    print(f"paper-1.3b ({exp.model.preset}, seq {seq}): {n['total'] / 1e9:.3f}B parameters "
          f"({n['non_embedding'] / 1e9:.3f}B non-embedding), {fpt / 1e9:.2f} GFLOP/token")
