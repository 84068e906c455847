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
