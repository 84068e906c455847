"""Tiny offline tokenizers and models for the probe tests (no tests here; imported by them)."""

from __future__ import annotations

import functools

CODE_SAMPLE = """
def size(items):
    n = len(items)
    if n == 0:
        return None
    return n

class Parser:
    def __init__(self, name):
        self.name = name
        self.items = []

    def add(self, x):
        self.items.append(x)
        return True
<?php
function size($items) {
    $n = count($items);
    $m = strlen($name);
    if ($n == 0) {
        return null;
    }
    return $n;
}
class Parser {
    public function __construct($name) {
        $this->name = $name;
        array_push($this->items, $x);
    }
}
strlen strlen strlen strlen
"""


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(vocab_size: int = 400):
    """A ByteLevel BPE tokenizer (GPT-2 style) trained in-process on a few lines of code."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CODE_SAMPLE] * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_model(arch: str, vocab_size: int, n_layers: int = 3, seed: int = 0):
    """A tiny random causal LM of a given architecture (llama | gpt2 | gpt_neox)."""
    import torch
    from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                              LlamaConfig, LlamaForCausalLM)

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48,
                          num_hidden_layers=n_layers, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256,
                          tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=n_layers, n_head=4,
                         n_positions=256)
        model = GPT2LMHeadModel(cfg)
    elif arch == "gpt_neox":
        cfg = GPTNeoXConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48,
                            num_hidden_layers=n_layers, num_attention_heads=4,
                            max_position_embeddings=256)
        model = GPTNeoXForCausalLM(cfg)
    else:
        raise ValueError(arch)
    # random init leaves norms at weight 1: perturb them so a wrong norm is visible
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def save_run(tmp_path, arch: str = "llama", steps=(0, 8), n_layers: int = 3):
    """A babeltower-style run dir RUN/checkpoints/step-XXXXXXXX/ with tiny random models."""
    tok = tiny_tokenizer()
    run = tmp_path / "run"
    for i, step in enumerate(steps):
        d = run / "checkpoints" / f"step-{step:08d}"
        model = tiny_model(arch, len(tok), n_layers=n_layers, seed=i)
        model.save_pretrained(d)
        tok.save_pretrained(d)
    return run
