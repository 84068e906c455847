"""Prefix-tree packing: the tree is the set of distinct prefixes, one tree-masked forward
gives every row's states as if the row ran alone (every architecture in the table, both
attention implementations that take the mask), and the lens's values do not depend on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, AutoModelForCausalLM

from babeltower.architectures import ARCHITECTURES
from babeltower.errors import BabelError
from babeltower.probes.lens import LogitLens, lens_items
from babeltower.probes.prefix_tree import (build_tree, supports_tree, tree_batches,
                                          tree_inputs)
from babeltower.probes.suite import load_suite
from test_architectures import CONFIGS
from test_probes_helpers import tiny_model, tiny_tokenizer

ROWS = ["def size(items):\n    return n", "def size(x)", "def f", "import os",
        "import os.path as p", "def size(items):\n    return n"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=6), min_size=1, max_size=12))
def test_tree_nodes_are_the_distinct_prefixes(rows):
    tree = build_tree(rows)
    prefixes = {tuple(r[:k]) for r in rows for k in range(1, len(r) + 1)}
    assert len(tree) == len(prefixes)
    for r, row in enumerate(rows):
        path = tree.node[r]
        assert [tree.tokens[n] for n in path] == row
        assert [tree.depth[n] for n in path] == list(range(len(row)))
        assert [tree.parent[n] for n in path] == [-1] + path[:-1]
    # a parent comes before its child (the mask is built in that order)
    assert all(p < i for i, p in enumerate(tree.parent))
    # the mask: a node sees exactly itself and its ancestors
    mask = tree.inputs()["attention_mask"][0, 0] == 0
    for r, row in enumerate(rows):
        for k, n in enumerate(tree.node[r]):
            assert set(torch.nonzero(mask[n]).flatten().tolist()) == set(tree.node[r][:k + 1])


def _model(model_type: str, attn: str):
    tok = tiny_tokenizer()
    eos = tok.eos_token_id
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), pad_token_id=eos,
                               bos_token_id=eos, eos_token_id=eos, **CONFIGS[model_type][0])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()
    with torch.no_grad():     # perturb norms so a state read at the wrong place shows
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model, tok


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_tree_forward_equals_each_row_alone(model_type, attn):
    model, tok = _model(model_type, attn)
    rows = [tok(t)["input_ids"] for t in ROWS]
    tree = build_tree(rows)
    assert len(tree) < sum(map(len, rows))            # prefixes are shared
    assert supports_tree(model, max(map(len, rows)))
    lens = LogitLens(model)
    hs = lens.hidden_states(**tree_inputs(model, tree))
    worst = 0.0
    for r, row in enumerate(rows):
        alone = lens.hidden_states(torch.tensor([row]), torch.ones(1, len(row)))
        for got, want in zip(hs, alone):
            worst = max(worst, (got[0, tree.node[r]] - want[0]).abs().max().item())
    assert worst < 1e-5
    # the mask is what makes it right: the same packed tokens under a plain causal mask
    # (every earlier node visible) give other states
    inp = tree_inputs(model, tree)
    causal = lens.hidden_states(inp["input_ids"], torch.ones_like(inp["input_ids"]),
                                position_ids=inp["position_ids"])
    deepest = max(range(len(rows)), key=lambda r: tree.node[r][-1])
    assert (causal[-1][0, tree.node[deepest]]
            - lens.hidden_states(torch.tensor([rows[deepest]]),
                                 torch.ones(1, len(rows[deepest])))[-1][0]).abs().max() > 1e-3


def test_tree_batches_cover_every_item_once_within_the_budget():
    rng = np.random.default_rng(0)
    item_rows = [[list(rng.integers(0, 5, rng.integers(1, 8)))
                  for _ in range(rng.integers(1, 3))] for _ in range(80)]
    for budget in (1, 10, 40, 10_000):
        batches = tree_batches(item_rows, budget)
        assert sorted(i for b in batches for i in b) == list(range(len(item_rows)))
        for b in batches:
            nodes = len(build_tree([r for i in b for r in item_rows[i]]))
            assert nodes <= budget or len(b) == 1
        if budget == 10_000:
            assert len(batches) == 1


def test_supports_tree_refuses_what_the_mask_cannot_express():
    model = tiny_model("llama", len(tiny_tokenizer()))
    assert supports_tree(model, 10)
    model.config._attn_implementation = "flash_attention_2"     # no arbitrary masks
    assert not supports_tree(model)
    tok = tiny_tokenizer()
    checked = load_suite("python", "php").check(tok, add_bos=False)
    with pytest.raises(BabelError, match="packing='tree' cannot run this model: flash_attention_2 attention takes no "
                       "arbitrary mask"):
        lens_items(model, tok, checked, packing="tree")
    with pytest.raises(BabelError, match="packing must be one of"):
        lens_items(model, tok, checked, packing="zip")
    mistral, _ = _model("mistral", "sdpa")
    mistral.config.sliding_window = 4            # rows longer than the window: refused
    assert supports_tree(mistral, 4) and not supports_tree(mistral, 5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("vocab", ["full", "gathered"])
def test_lens_values_do_not_depend_on_packing(arch, vocab, monkeypatch):
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok))
    checked = load_suite("python", "php").check(tok, add_bos=False)
    padded = lens_items(model, tok, checked, packing="padded", vocab=vocab)
    tokens_seen = []
    forward = LogitLens.hidden_states

    def counting(self, input_ids, attention_mask, position_ids=None):
        tokens_seen.append(input_ids.numel())
        return forward(self, input_ids, attention_mask, position_ids)

    monkeypatch.setattr(LogitLens, "hidden_states", counting)
    for budget in (40, 100_000):
        tokens_seen.clear()
        tree = lens_items(model, tok, checked, packing="tree", vocab=vocab,
                          max_tree_nodes=budget)
        assert (padded[["pair_id", "side", "prompt", "layer", "measure"]].values
                == tree[["pair_id", "side", "prompt", "layer", "measure"]].values).all()
        np.testing.assert_allclose(padded.value.values, tree.value.values, atol=1e-4)
        if budget == 40:
            assert len(tokens_seen) > 1
        else:   # one forward over the distinct prefixes of every row the items run
            from babeltower.probes.lens.items import _item_rows

            rows = [r for it in checked.items for r in _item_rows(it, True)[0]]
            assert tokens_seen == [len({tuple(r[:k]) for r in rows
                                        for k in range(1, len(r) + 1)})]
            assert tokens_seen[0] < sum(len(r) for r in {tuple(r) for r in rows})


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tree_forward_in_bfloat16(attn):
    """The mask takes the model's dtype (SDPA wants the query's): in bfloat16 the tree's
    states stay within bfloat16 rounding of each row alone, far closer than a wrong mask."""
    model, tok = _model("llama", attn)
    model = model.to(torch.bfloat16)
    rows = [tok(t)["input_ids"] for t in ROWS]
    tree = build_tree(rows)
    lens = LogitLens(model)
    inp = tree.inputs(dtype=torch.bfloat16)
    assert inp["attention_mask"].dtype == torch.bfloat16
    tree_hs = lens.hidden_states(**inp)
    causal_hs = lens.hidden_states(inp["input_ids"], torch.ones_like(inp["input_ids"]),
                                   position_ids=inp["position_ids"])
    err_tree = err_causal = 0.0
    for r, row in enumerate(rows):
        alone = lens.hidden_states(torch.tensor([row]), torch.ones(1, len(row)))[-1][0].float()
        err_tree = max(err_tree, (tree_hs[-1][0, tree.node[r]].float() - alone).abs().max().item())
        err_causal = max(err_causal,
                         (causal_hs[-1][0, tree.node[r]].float() - alone).abs().max().item())
    scale = max(h.float().abs().max().item() for h in tree_hs)
    assert err_tree <= 4 * 2.0 ** -8 * scale          # a few bfloat16 ulps
    assert err_tree < 0.1 * err_causal
