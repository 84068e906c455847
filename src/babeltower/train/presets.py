"""Model presets as plain Hugging Face configs.

Two families: LLaMA-style (``LlamaConfig``: RMSNorm, SwiGLU, RoPE, untied embeddings)
and GPT-2 style (``GPT2Config``: LayerNorm, GELU MLP, learned positions, tied
embeddings - the paper's architecture). Sizes count non-embedding parameters, since
the embedding size follows the tokenizer:

=========  ======  ======  =====  =====  ==========================
size       layers  hidden  heads  FFN    non-embedding params
=========  ======  ======  =====  =====  ==========================
nano       6       128     4      352    ~1.2M (llama) / ~1.2M (gpt2)
micro      8       256     8      704    ~6.3M / ~6.3M
small      12      384     6      1024   ~21M / ~21M
1.3b       24      2048    16     5504   ~1.3B (the paper: GPT-2 1.3B, ctx 2048)
=========  ======  ======  =====  =====  ==========================

``nano`` is ``llama-nano``. Depth is favoured over width at small sizes: a throw-away
spike found 6-8 layers at hidden 128 better for probing than 4 (intermediate layers to
read). Dropout is 0 everywhere (determinism; tiny models do not need it).
``vocab_size`` always comes from the tokenizer of the packed data.
"""

from __future__ import annotations

import json
from pathlib import Path

from babeltower.errors import BabelError

# (layers, hidden, heads, ffn)
SIZES: dict[str, tuple[int, int, int, int]] = {
    "nano": (6, 128, 4, 352),
    "micro": (8, 256, 8, 704),
    "small": (12, 384, 6, 1024),
    "1.3b": (24, 2048, 16, 5504),
}
FAMILIES = ("llama", "gpt2")
PRESETS: tuple[str, ...] = tuple(
    [f"{fam}-{size}" for fam in FAMILIES for size in SIZES] + list(SIZES))


def _resolve_name(name: str) -> tuple[str, str]:
    if name in SIZES:
        return "llama", name
    fam, _, size = name.partition("-")
    if fam in FAMILIES and size in SIZES:
        return fam, size
    raise BabelError(f"unknown model preset {name!r} (presets: {', '.join(PRESETS)}; "
                     "or give a path to an HF config.json or model directory)")


def preset_config(name: str, vocab_size: int, seq_len: int = 2048,
                  bos_token_id: int | None = None, eos_token_id: int | None = None):
    """The HF config of a preset for a tokenizer of ``vocab_size`` ids."""
    from transformers import GPT2Config, LlamaConfig

    fam, size = _resolve_name(name)
    layers, hidden, heads, ffn = SIZES[size]
    if fam == "llama":
        cfg = LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=ffn,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
            max_position_embeddings=max(seq_len, 2048), rms_norm_eps=1e-5,
            tie_word_embeddings=False, attention_dropout=0.0, hidden_act="silu",
            bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        )
    else:
        # GPT-2's MLP has two matrices; 4*hidden keeps its size close to the SwiGLU's three
        cfg = GPT2Config(
            vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
            n_inner=4 * hidden if size != "1.3b" else None,
            n_positions=max(seq_len, 1024 if size != "1.3b" else 2048),
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
            bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        )
    cfg._attn_implementation = "sdpa"
    return cfg


def model_config(spec: str, vocab_size: int, seq_len: int = 2048,
                 bos_token_id: int | None = None, eos_token_id: int | None = None):
    """A preset name, an HF ``config.json`` file, or an HF model directory -> HF config.

    A given config whose ``vocab_size`` differs from the tokenizer's is a BabelError:
    token ids would index the wrong (or no) embedding rows.
    """
    from transformers import AutoConfig

    p = Path(spec)
    if spec in PRESETS or (not p.exists() and "/" not in spec and not spec.endswith(".json")):
        return preset_config(spec, vocab_size, seq_len, bos_token_id, eos_token_id)
    if not p.exists():
        raise BabelError(f"model config not found: {p}")
    try:
        if p.is_dir():
            cfg = AutoConfig.from_pretrained(p)
        else:
            data = json.loads(p.read_text())
            data.pop("transformers_version", None)
            cfg = AutoConfig.for_model(**data)
    except (OSError, ValueError, KeyError) as e:
        raise BabelError(f"cannot read model config {p}: {str(e).splitlines()[0]}") from None
    if getattr(cfg, "vocab_size", None) != vocab_size:
        raise BabelError(f"model config {p} has vocab_size {getattr(cfg, 'vocab_size', None)} "
                         f"but the data's tokenizer has {vocab_size} ids")
    return cfg


def count_parameters(model) -> dict[str, int]:
    """Total, embedding (input lookup + positions) and non-embedding parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    emb = 0
    seen = set()
    for mod in (model.get_input_embeddings(), getattr(getattr(model, "transformer", None),
                                                      "wpe", None)):
        if mod is not None:
            for p in mod.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    emb += p.numel()
    return {"total": total, "embedding": emb, "non_embedding": total - emb}


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (parameters used in matmuls) + attention scores.

    The input-embedding lookup is not a matmul and is left out; a tied output head is
    a matmul and counts (it is counted once in ``parameters()``, so it is added back).
    Attention adds 6 * 2 * layers * hidden * seq_len (QK^T and AV, forward + backward),
    as in PaLM's MFU definition.
    """
    counts = count_parameters(model)
    cfg = model.config
    matmul_params = counts["non_embedding"]
    out = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    if out is not None and inp is not None and out.weight is inp.weight:
        matmul_params += out.weight.numel()
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer")
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")
    return 6.0 * matmul_params + 12.0 * layers * hidden * seq_len
