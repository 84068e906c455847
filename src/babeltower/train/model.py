"""The model a run trains: built from a preset or config (seeded init), or loaded from
``init_from`` (a run dir, a checkpoint, a GGUF file); the blocks FSDP shards."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from babeltower.architectures import blocks as model_blocks
from babeltower.checkpoints import last_checkpoint, quiet_hf, resolve
from babeltower.corpus.shards import TokenShards
from babeltower.errors import BabelError
from babeltower.train.config import TrainConfig
from babeltower.train.presets import model_config


def _tokenizer_vocab(path: Path) -> dict | None:
    f = path / "tokenizer.json"
    if not f.exists():
        return None
    try:
        return json.loads(f.read_text()).get("model", {}).get("vocab")
    except (json.JSONDecodeError, AttributeError):
        return None



def load_model(path: str | Path, what: str = "", **kw) -> torch.nn.Module:
    """An HF causal LM in fp32, train mode; a load failure is one BabelError line."""
    # transformers is imported here, not at the top: it costs ~1.5 s of CLI start-up
    from transformers import AutoModelForCausalLM

    try:
        with quiet_hf():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw)
    except (OSError, ValueError, RuntimeError) as e:
        raise BabelError(f"cannot load {what}{path}: {str(e).splitlines()[0]}") from None
    model.train()
    return model



def build_model(config: TrainConfig, shards: TokenShards):
    """Fresh model from a preset/config (seeded init) or weights from ``init_from``."""
    from transformers import AutoModelForCausalLM   # lazy: see load_model

    torch.manual_seed(config.seed)
    if config.init_from:
        ref = last_checkpoint(config.init_from)   # a run dir: its last checkpoint
        path, kw = resolve(ref)   # a GGUF converted, a revision, or a verified dir
        model = load_model(path, "init_from ", **kw)
        if model.config.vocab_size != shards.vocab_size:
            raise BabelError(f"init_from {ref.path} has vocab_size {model.config.vocab_size} but "
                             f"the data's tokenizer has {shards.vocab_size} ids")
        theirs = _tokenizer_vocab(Path(ref.path))
        ours = _tokenizer_vocab(shards.tokenizer_dir)
        if theirs is not None and ours is not None and theirs != ours:
            raise BabelError(f"init_from {ref.path} was trained with a different tokenizer than "
                             f"the data in {shards.root} (same size, different vocabulary)")
        return model, {"init_from": str(ref.path), "init_step": ref.step}
    bos = shards.manifest.get("bos_id")
    cfg = model_config(config.model, shards.vocab_size, config.seq_len,
                       bos_token_id=bos,
                       eos_token_id=shards.eos_id)
    if getattr(cfg, "n_positions", None) is not None and cfg.n_positions < config.seq_len:
        raise BabelError(f"model {config.model} has n_positions {cfg.n_positions} < "
                         f"seq_len {config.seq_len}")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    return model, {"init_from": None}



def find_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, the FSDP sharding unit (from the architecture table)."""
    return model_blocks(model)



def unsharded_copy(model):
    """A plain CPU model of the same config (FSDP saves go through it on rank 0)."""
    from transformers import AutoModelForCausalLM   # lazy: see load_model

    return AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
