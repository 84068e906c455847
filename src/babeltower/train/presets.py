"""Model presets as plain Hugging Face configs.

Two families: LLaMA-style (``LlamaConfig``: RMSNorm, SwiGLU, RoPE, untied embeddings)
and GPT-2 style (``GPT2Config``: LayerNorm, GELU MLP, learned positions, tied
embeddings - the paper's architecture). Sizes count non-embedding parameters, since
the embedding size follows the tokenizer:

=========  ======  ======  =====  =========  ===================================
size       layers  hidden  heads  FFN        non-embedding params (llama / gpt2)
=========  ======  ======  =====  =========  ===================================
nano       6       128     4      352 / 512  1.21M / 1.19M
micro      8       256     8      512 / 1024 5.25M / 6.32M
small      12      384     6      1024/1536  21.2M / 21.3M
125m       12      768     12     2048/3072  84.9M / 84.9M (GPT-2 small; the GPU check)
1.3b       24      2048    16     5504/8192  1.21B / 1.21B (the paper: GPT-2 1.3B, ctx 2048)
=========  ======  ======  =====  =========  ===================================

(Non-embedding = Kaplan's N: without input embedding, learned positions and output
head. GPT-2 keeps its classic 4 x hidden MLP.) ``nano`` is ``llama-nano``. Depth is
favoured over width at small sizes: a throw-away spike found 6-8 layers at hidden 128 better for probing than 4 (intermediate layers to
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
    "micro": (8, 256, 8, 512),
    "small": (12, 384, 6, 1024),
    "125m": (12, 768, 12, 2048),
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
    """Parameter counts: total; embedding (input lookup + learned positions); output_head
    (an untied unembedding; 0 if tied); non_embedding (Kaplan's N: the rest)."""
    seen: set[int] = set()

    def n(mod) -> int:
        out = 0
        for p in (mod.parameters() if mod is not None else []):
            if id(p) not in seen:
                seen.add(id(p))
                out += p.numel()
        return out

    total = sum(p.numel() for p in model.parameters())
    emb = n(model.get_input_embeddings())
    emb += n(getattr(getattr(model, "transformer", None), "wpe", None))
    head = n(model.get_output_embeddings())
    return {"total": total, "embedding": emb, "output_head": head,
            "non_embedding": total - emb - head}


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (weights used in matmuls) + attention scores.

    Matmul weights are the 2-D non-embedding parameters plus the output head (tied or not;
    a tied head is one matrix used twice, the lookup being free). Biases and norm scales
    are elementwise, not matmuls, so they are left out (they were counted before; +0.7% on
    gpt2-nano). Attention adds 6 * 2 * layers * hidden * seq_len (QK^T and AV over the
    whole T x T score matrix, forward + backward, no causal halving), as in PaLM's MFU
    definition. ``tests/test_train_config.py`` checks this against torch's FlopCounterMode.
    """
    cfg = model.config
    lookups = {id(p) for mod in (model.get_input_embeddings(),
                                 getattr(getattr(model, "transformer", None), "wpe", None))
               if mod is not None for p in mod.parameters()}
    matrices = {id(p): p.numel() for p in model.parameters()
                if p.dim() == 2 and id(p) not in lookups}
    out = model.get_output_embeddings()
    if out is not None:                    # a tied head shares the lookup's matrix
        matrices[id(out.weight)] = out.weight.numel()
    matmul_params = sum(matrices.values())
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer")
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")
    return 6.0 * matmul_params + 12.0 * layers * hidden * seq_len
