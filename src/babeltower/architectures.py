"""One table of where each Hugging Face architecture keeps the parts the toolkit reaches into.

Per ``config.model_type`` (as tuned-lens's ``model_surgery`` does): the list of transformer
blocks (the logit lens's layers, LAPE's layers, FSDP's sharding unit), the final norm and
the unembedding (the lens), and inside each block the MLP's activation module and its
down-projection (LAPE counting and neuron ablation).

Activation points (``point=``):

* ``"act_fn"`` - the OUTPUT of the MLP's activation module: ``act_fn(gate_proj(x))`` in a
  gated MLP (LLaMA family; Tang et al.'s point), the GELU output ``act(c_fc(x))`` in a
  GPT-2-style MLP. The default for LAPE.
* ``"down_proj_input"`` - the INPUT of the down-projection: ``act(gate) * up`` in a gated
  MLP; in a GPT-2-style MLP the same tensor as ``act_fn``. Zeroing an entry of it removes
  that neuron's whole contribution to the residual stream (what ablation needs).

Every architecture named here is tested on a tiny randomly initialised model built from
its config class (``tests/test_architectures.py``): it loads through
``babeltower.checkpoints``, the lens's last layer equals the model's logits, and the LAPE
hooks fire with the MLP's width. Architectures whose logits are transformed after the
unembedding by anything but Gemma's final-logit soft-capping (Cohere/Granite logit
scales) are left out: the lens would not reproduce their logits. Mixture-of-experts
models (mixtral, qwen2_moe) have no single MLP per block, so they have blocks and a lens
but no neuron points.

Gemma 3 (text, ``gemma3_text``: what a Gemma 3 GGUF and ``Gemma3ForCausalLM`` load as)
is a gated LLaMA-layout MLP (``act_fn`` = GELU-tanh of the gate). What differs is handled
where it acts: the embedding's sqrt(hidden) scaling is inside its embedding module (layer
0 of the lens is the scaled embedding the first block reads), its RMS norms (1 + w) are
the model's own modules the lens calls, a config's ``final_logit_softcapping`` is applied
by the lens (``LogitLens.capped``), and its sliding-window layers get their window in the
prefix-tree mask (``probes.prefix_tree``). The multimodal ``gemma3`` wrapper is not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from babeltower.errors import BabelError

POINTS = ("act_fn", "down_proj_input")


@dataclass(frozen=True)
class Architecture:
    """Attribute paths: ``blocks``/``final_norm``/``unembed`` from the ``*ForCausalLM``
    module, ``act_fn``/``down_proj`` from one block (None: the architecture has none)."""

    blocks: str
    final_norm: str
    unembed: str
    act_fn: str | None
    down_proj: str | None
    gated: bool


_LLAMA = Architecture("model.layers", "model.norm", "lm_head", "mlp.act_fn", "mlp.down_proj",
                      gated=True)
_MOE = Architecture("model.layers", "model.norm", "lm_head", None, None, gated=True)
_GPT2 = Architecture("transformer.h", "transformer.ln_f", "lm_head", "mlp.act", "mlp.c_proj",
                     gated=False)
_GPTJ = Architecture("transformer.h", "transformer.ln_f", "lm_head", "mlp.act", "mlp.fc_out",
                     gated=False)

ARCHITECTURES: dict[str, Architecture] = {
    **{t: _LLAMA for t in ("llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "smollm3",
                           "stablelm", "gemma", "gemma3_text")},
    **{t: _MOE for t in ("mixtral", "qwen2_moe")},
    # fused gate_up_proj: the activation module still sees the gate half alone
    "phi3": Architecture("model.layers", "model.norm", "lm_head", "mlp.activation_fn",
                         "mlp.down_proj", gated=True),
    "starcoder2": Architecture("model.layers", "model.norm", "lm_head", "mlp.act", "mlp.c_proj",
                               gated=False),
    "phi": Architecture("model.layers", "model.final_layernorm", "lm_head", "mlp.activation_fn",
                        "mlp.fc2", gated=False),
    "gpt2": _GPT2,
    "gpt_bigcode": _GPT2,
    "gptj": _GPTJ,
    "codegen": _GPTJ,
    # the unembedding was "embed_out" before transformers 5; get_output_embeddings() finds it
    "gpt_neox": Architecture("gpt_neox.layers", "gpt_neox.final_layer_norm", "lm_head",
                             "mlp.act", "mlp.dense_4h_to_h", gated=False),
}


def get_path(module, path: str):
    """``module.a.b.c`` for ``path = "a.b.c"``."""
    for part in path.split("."):
        module = getattr(module, part)
    return module


def architecture(model, what: str = "this toolkit") -> Architecture:
    """The table entry of a model's ``config.model_type``; a one-line error if absent."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    if mt not in ARCHITECTURES:
        raise BabelError(f"{what} does not support architecture {mt!r} "
                         f"(supported: {', '.join(sorted(ARCHITECTURES))})")
    return ARCHITECTURES[mt]


def blocks(model) -> list:
    """The transformer blocks, in order."""
    return list(get_path(model, architecture(model).blocks))


def final_norm(model):
    return get_path(model, architecture(model, "the logit lens").final_norm)


def unembedding(model):
    out = model.get_output_embeddings()
    return out if out is not None else get_path(model, architecture(model).unembed)


def neuron_modules(model, point: str = "act_fn") -> list[tuple[object, str]]:
    """Per block, ``(module, kind)`` whose activation is read at ``point``: kind ``"out"``
    reads the module's output (``act_fn``), ``"pre"`` its input (``down_proj_input``)."""
    if point not in POINTS:
        raise BabelError(f"unknown activation point {point!r} (choose from {', '.join(POINTS)})")
    arch = architecture(model, "neuron probes")
    path = arch.act_fn if point == "act_fn" else arch.down_proj
    if path is None:
        raise BabelError(f"neuron probes need one MLP per block; {model.config.model_type} "
                         "is a mixture of experts")
    kind = "out" if point == "act_fn" else "pre"
    return [(get_path(b, path), kind) for b in blocks(model)]
