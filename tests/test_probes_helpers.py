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
    from transformers import PreTrainedTokenizerFast

    from tokenizer_fixtures import byte_level_bpe

    tok = byte_level_bpe([CODE_SAMPLE] * 20, vocab_size)
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


# Hand-built model for LAPE: token ids 0-19 are language A, 20-39 B, 40-59 C.
LANG_RANGES = {"python": range(0, 20), "php": range(20, 40), "go": range(40, 60)}
# planted neurons: (layer, index) -> languages it fires on (everything else never fires)
PLANTED = {(0, 0): {"python"}, (0, 1): {"php"}, (0, 2): {"go"},
           (1, 3): {"python", "php"}, (1, 4): {"php"}}


def planted_llama(width: int = 32, hidden: int = 16, seed: int = 0, gate_scale: float = 1.0):
    """A 2-layer LLaMA whose residual stream is the token embedding at every layer
    (attention and MLP outputs zeroed) and whose MLP neurons in ``PLANTED`` fire (> 0)
    exactly on their languages; all other neurons read language-independent dimensions."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    g = torch.Generator().manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=width,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=128, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        emb = torch.randn(64, hidden, generator=g)          # dims 4.. identical law for all
        emb[:, :4] = -1.0
        emb[:, 3] = 1.0                                      # constant dimension
        for d, lang in enumerate(("python", "php", "go")):
            emb[list(LANG_RANGES[lang]), d] = 1.0            # language indicator dimensions
        model.model.embed_tokens.weight.copy_(emb)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
            gate = torch.randn(width, hidden, generator=g)
            up = torch.randn(width, hidden, generator=g)
            gate[:, :4] = 0.0
            up[:, :4] = 0.0
            layer.mlp.gate_proj.weight.copy_(gate)
            layer.mlp.up_proj.weight.copy_(up)
        for (li, n), langs in PLANTED.items():
            mlp = model.model.layers[li].mlp
            w = torch.zeros(hidden)
            for lang in langs:
                w[("python", "php", "go").index(lang)] = 1.0
            # indicators are +1/-1: sum of the neuron's indicators + 0.5 * const is > 0
            # iff the token is in one of its languages (one: 1.5 vs -0.5; two: 0.5 vs -1.5)
            w[3] = 0.5
            mlp.gate_proj.weight[n] = gate_scale * w
            up = torch.zeros(hidden)
            up[3] = 1.0      # up > 0 for every token, so act(gate) * up > 0 iff gate > 0
            mlp.up_proj.weight[n] = up
    return model


def planted_windows(n: int = 12, seq: int = 16, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return {lang: rng.integers(r.start, r.stop, size=(n, seq)) for lang, r in LANG_RANGES.items()}


def packed_data(root, windows_by_lang, eos_id: int = 63, vocab_size: int = 64):
    """A packed DATA dir (validation split only) holding the given token ids."""
    import numpy as np

    from babeltower.corpus.shards import ShardWriter, dtype_for_vocab, write_manifest

    root.mkdir(parents=True, exist_ok=True)
    langs = {}
    for lang, win in windows_by_lang.items():
        w = ShardWriter(root / lang / "validation", dtype_for_vocab(vocab_size), eos_id)
        for row in np.asarray(win):
            w.add(row, n_bytes=len(row))
        langs[lang] = {"validation": w.close()}
    write_manifest(root, {"languages": langs, "dtype": str(dtype_for_vocab(vocab_size)),
                          "eos_id": eos_id, "vocab_size": vocab_size})
    return root
