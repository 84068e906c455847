"""Every architecture in the one table, on a tiny random model built offline from its config:
it loads through our loader, the lens's last layer is the model's logits, the LAPE hooks
fire once per block with the MLP's width."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from babeltower.architectures import ARCHITECTURES, blocks, neuron_modules
from babeltower.checkpoints import list_checkpoints
from babeltower.errors import BabelError
from babeltower.probes.lens import LogitLens
from test_probes_helpers import tiny_tokenizer

_LLAMA_KW = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                 tie_word_embeddings=False)
_GPT2_KW = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64)
# per model_type: config fields of a tiny model, and the MLP width the hooks must see
CONFIGS: dict[str, tuple[dict, int]] = {
    **{t: (_LLAMA_KW, 48) for t in ("llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2",
                                    "smollm3", "phi3")},
    "stablelm": ({**_LLAMA_KW, "num_key_value_heads": 4}, 48),
    "gemma": ({**_LLAMA_KW, "head_dim": 8}, 48),
    # as Gemma 3 270M: one KV head, tied embeddings, a sliding-window layer before a global
    # one; a window of 4 tokens, shorter than the test prompts (the tree tests need both)
    "gemma3_text": ({**_LLAMA_KW, "head_dim": 8, "num_key_value_heads": 1,
                     "tie_word_embeddings": True, "query_pre_attn_scalar": 8,
                     "sliding_window": 4,
                     "layer_types": ["sliding_attention", "full_attention"]}, 48),
    "starcoder2": (_LLAMA_KW, 48),
    "phi": ({k: v for k, v in _LLAMA_KW.items() if k != "num_key_value_heads"}, 48),
    "mixtral": ({**_LLAMA_KW, "num_local_experts": 2, "num_experts_per_tok": 1}, 0),
    "qwen2_moe": ({**_LLAMA_KW, "num_experts": 2, "num_experts_per_tok": 1,
                   "moe_intermediate_size": 16, "shared_expert_intermediate_size": 16}, 0),
    "gpt2": (_GPT2_KW, 128),
    "gpt_bigcode": ({**_GPT2_KW, "n_inner": 40}, 40),
    "gptj": ({**_GPT2_KW, "rotary_dim": 4, "n_inner": 40}, 40),
    "codegen": ({**_GPT2_KW, "n_ctx": 64, "rotary_dim": 4, "n_inner": 40}, 40),
    "gpt_neox": ({k: v for k, v in _LLAMA_KW.items() if k != "num_key_value_heads"}, 48),
}


def test_every_table_entry_has_a_test_config():
    assert set(CONFIGS) == set(ARCHITECTURES)


def _saved_model(tmp_path, model_type: str):
    tok = tiny_tokenizer()
    kw, _ = CONFIGS[model_type]
    eos = tok.eos_token_id
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), pad_token_id=eos,
                               bos_token_id=eos, eos_token_id=eos, **kw)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():  # random init leaves norms at 1 (or 0 for gemma's 1 + w): perturb
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    d = tmp_path / model_type
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_architecture_loads_lenses_and_hooks(tmp_path, model_type):
    refs = list_checkpoints(_saved_model(tmp_path, model_type))
    model, tok = refs[0].load()
    assert model.config.model_type == model_type
    ids = torch.tensor([tok("def size(items):\n    return n")["input_ids"]])
    n_blocks = len(blocks(model))
    assert n_blocks == 2
    lens = LogitLens(model)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, -1]
    layer_logits = lens.layer_logits(ids)
    assert layer_logits.shape[0] == n_blocks + 1
    torch.testing.assert_close(layer_logits[-1], logits, atol=1e-4, rtol=0)
    # an intermediate layer is NOT the output (the lens decodes each layer itself)
    assert not torch.allclose(layer_logits[0], logits, atol=1e-3)
    width = CONFIGS[model_type][1]
    if width == 0:
        with pytest.raises(BabelError, match="mixture of experts"):
            neuron_modules(model, "act_fn")
        return
    seen: dict[str, list] = {}
    for point in ("act_fn", "down_proj_input"):
        handles = []
        for mod, kind in neuron_modules(model, point):
            if kind == "out":
                h = mod.register_forward_hook(lambda m, a, o, p=point: seen.setdefault(p, []).append(o))
            else:
                h = mod.register_forward_pre_hook(lambda m, a, p=point: seen.setdefault(p, []).append(a[0]))
            handles.append(h)
        with torch.no_grad():
            model(input_ids=ids)
        for h in handles:
            h.remove()
        assert len(seen[point]) == n_blocks
        assert all(t.shape == (1, ids.shape[1], width) for t in seen[point])
    # gated MLPs: act(gate) differs from act(gate) * up; GPT-2 style: one and the same tensor
    same = all(torch.equal(a, b) for a, b in zip(seen["act_fn"], seen["down_proj_input"]))
    assert same == (not ARCHITECTURES[model_type].gated)


def test_unknown_architecture_is_one_line():
    class Fake:
        class config:
            model_type = "bert"
    with pytest.raises(BabelError, match="does not support architecture 'bert'"):
        blocks(Fake())
