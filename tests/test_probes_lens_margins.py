"""Lens margin effects (nats) and the kind-matched control A, on hand-built LLaMAs.

The models: word-level pairs (one context word per prompt, prompts on the new side), a
LLaMA whose attention and MLPs write nothing unless a plant says so, so every layer's
state at a prompt is its context word's embedding. Directions are orthonormal: g (shared
by every context word), K_kind (builtin or keyword contexts) and P_i (pair i's contexts).
Expected values follow from the construction, not from the code under test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from babeltower.errors import BabelError
from babeltower.probes.lens import lens_controls, lens_controls_summary, lens_items
from test_probes_lens import _word_tokenizer


class _Write(torch.nn.Module):
    """An MLP stand-in that writes c * sum_i (x . P_i) * W_U[counterpart_i] / |W_U[...]|
    (the counterpart's unembedding direction, for a context of pair i) and keeps it, so a
    later ``_Erase`` takes exactly that back out of the residual stream."""

    def __init__(self, keys, values, c):
        super().__init__()
        self.map = c * values.T @ keys                  # (hidden, hidden)
        self.last = None

    def forward(self, x):
        self.last = x @ self.map.T
        return self.last


class _Erase(torch.nn.Module):
    def __init__(self, writer):
        super().__init__()
        self.writer = writer

    def forward(self, x):
        return -self.writer.last


def margin_model(kinds=("builtin",) * 20, n_prompts=2, hidden=64, n_layers=4, seed=0,
                 new_pref=0.0, counterpart=0.0, kind_bias=0.0, plant=0.0,
                 plant_layers=(2, 3), primary_bias=0.0, noise=0.15):
    """-> (model, tokenizer, checked suite).

    Context words of pair i: 0.3 * noise + g + K_kind(i) + P_i. Unembedding rows: ``noise``
    * N(0, 1), plus ``new_pref`` * g on every new token (a uniform preference for new
    tokens), ``counterpart`` * P_i on pair i's primary token (a counterpart relation at
    every layer), ``kind_bias`` * K_kind(i) on it (a preference for every primary token of
    the prompt's kind, not for the counterpart). ``plant``: the block before
    ``plant_layers[0]`` writes ``plant`` * (x . P_i) * the counterpart's unembedding
    direction and the block ending at ``plant_layers[-1]`` erases it, so only the states
    of ``plant_layers`` carry it. ``primary_bias``: an LM-head bias of that many nats on
    every primary token."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from babeltower.probes.suite import ProbeSuite

    n_pairs = len(kinds)
    ctx = [[f"c{i}x{r}" for r in range(n_prompts)] for i in range(n_pairs)]
    prim, new = [f"py{i}" for i in range(n_pairs)], [f"nw{i}" for i in range(n_pairs)]
    tok = _word_tokenizer([w for c in ctx for w in c] + prim + new)
    suite = ProbeSuite(primary="python", new="php", pairs=[
        {"id": f"p{i}", "kind": kinds[i], "primary": {"identifier": prim[i]},
         "new": {"identifier": new[i], "prompts": [w + " " for w in ctx[i]]}}
        for i in range(n_pairs)])
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(hidden, n_pairs + 3, generator=g))[0].T
    shared, kind_dir, pair_dir = q[0], {"builtin": q[1], "keyword": q[2]}, q[3:]
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=16,
                      num_hidden_layers=n_layers, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=32,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    ids = tok.convert_tokens_to_ids
    with torch.no_grad():
        emb = 0.3 * torch.randn(len(tok), hidden, generator=g)
        unemb = noise * torch.randn(len(tok), hidden, generator=g)
        for i in range(n_pairs):
            for w in ctx[i]:
                emb[ids(w)] += shared + kind_dir[kinds[i]] + pair_dir[i]
            unemb[ids(prim[i])] += counterpart * pair_dir[i] + kind_bias * kind_dir[kinds[i]]
            unemb[ids(new[i])] += new_pref * shared
        model.model.embed_tokens.weight.copy_(emb)
        head = torch.nn.Linear(hidden, len(tok), bias=True)
        head.weight.copy_(unemb)
        head.bias.zero_()
        head.bias[[ids(p) for p in prim]] = primary_bias
        model.lm_head = head
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    if plant:
        cp = unemb[[ids(p) for p in prim]]
        writer = _Write(pair_dir, cp / cp.norm(dim=1, keepdim=True), plant)
        model.model.layers[plant_layers[0] - 1].mlp = writer
        model.model.layers[plant_layers[-1]].mlp = _Erase(writer)
    checked = suite.check(tok, add_bos=False)
    assert len(checked.items) == n_pairs * n_prompts and not checked.dropped
    return model, tok, checked


def _items(**kw):
    model, tok, checked = margin_model(**kw)
    return lens_items(model, tok, checked, vocab="gathered", full_sequence=False)


def _covers0(r, name):
    return r[f"{name}_ci_low"] <= 0 <= r[f"{name}_ci_high"]


def test_margin_definitions_from_the_item_rows():
    """Each margin column is the mean over prompt texts of its per-item measure, and the
    identities margin_specific = margin_a - margin, margin_specific_new = margin - margin_b
    hold (every item here has both controls)."""
    items = _items(counterpart=1.0, new_pref=1.0)
    table = lens_controls(items, n_boot=200).set_index("layer")
    for layer, r in table.iterrows():
        at = items[items.layer == layer]

        def mean(m):
            return at[at.measure == m].groupby("prompt").value.mean().mean()

        assert r.margin == pytest.approx(mean("logp_diff"))
        assert r.margin_a == pytest.approx(mean("logp_new_vs_unrelated_kind"))
        assert r.margin_b == pytest.approx(mean("logp_other_new_vs_primary"))
        assert r.margin_specific == pytest.approx(r.margin_a - r.margin, abs=1e-5)
        assert r.margin_specific_new == pytest.approx(r.margin - r.margin_b, abs=1e-5)
        for m in ("margin", "margin_a", "margin_b", "margin_specific", "margin_specific_new"):
            assert r[f"{m}_ci_low"] <= r[m] <= r[f"{m}_ci_high"]
    assert table.attrs["control"] == "kind"


def test_planted_counterpart_direction_shows_at_those_layers_only():
    base = lens_controls(_items(), n_boot=1000).set_index("layer")
    table = lens_controls(_items(plant=0.5, plant_layers=(2, 3)), n_boot=1000).set_index("layer")
    assert list(table.index) == [0, 1, 2, 3, 4]
    for layer in (2, 3):      # the counterpart's own unembedding direction was written here
        r = table.loc[layer]
        assert r.margin_specific_ci_low > 0
        assert r.margin_specific > base.loc[layer, "margin_specific"] + 2.0
    for layer in (0, 1, 4):   # the residual stream there is the unplanted one, exactly
        r = table.loc[layer]
        assert r.margin_specific == pytest.approx(base.loc[layer, "margin_specific"], abs=1e-4)
        # nothing relates a prompt to its counterpart there: ~0 (seed 0, see the docs)
        assert _covers0(r, "margin_specific")
        assert abs(r.margin_specific) < 0.1 * table.loc[2, "margin_specific"]


def test_uniform_primary_preference_leaves_the_margin_effect_and_moves_the_share_effect():
    # (a) no counterpart relation: +1 nat on every primary token
    a0 = lens_controls(_items(), n_boot=1000).set_index("layer")
    a1 = lens_controls(_items(primary_bias=1.0), n_boot=1000).set_index("layer")
    np.testing.assert_allclose(a1.margin_specific, a0.margin_specific, atol=1e-4)
    np.testing.assert_allclose(a1.margin_a, a0.margin_a - 1.0, atol=1e-4)   # s(n) - s(u)
    np.testing.assert_allclose(a1.margin, a0.margin - 1.0, atol=1e-4)       # s(n) - s(p)
    assert all(_covers0(r, "margin_specific") for _, r in a1.iterrows())
    # (b) a real counterpart relation under a strong preference for new tokens: the shares
    # saturate near 1, so control_a - share misses what the margin shows ...
    kw = dict(counterpart=0.5, new_pref=1.3, noise=0.1)
    sat = lens_controls(_items(**kw), n_boot=1000).set_index("layer")
    for _, r in sat.iterrows():
        assert r.share > 0.95 and r.control_a > 0.95
        assert abs(r.specific) < 0.05
        assert r.margin_specific_ci_low > 0.5
    # ... and +1 nat on every primary token moves the share effect, not the margin
    shifted = lens_controls(_items(primary_bias=1.0, **kw), n_boot=1000).set_index("layer")
    np.testing.assert_allclose(shifted.margin_specific, sat.margin_specific, atol=1e-4)
    np.testing.assert_allclose(shifted.margin_specific_ci_low, sat.margin_specific_ci_low,
                               atol=1e-4)
    for layer, r in shifted.iterrows():
        assert r.ci_low > 0 and r.specific > sat.loc[layer, "specific"] + 0.15


def test_kind_matched_control_removes_a_kind_level_bias():
    kinds = ("builtin",) * 10 + ("keyword",) * 10
    model, tok, checked = margin_model(kinds=kinds, kind_bias=0.6)
    # the kind-matched ids are exactly the same-kind pairs' primary tokens
    prim = {p.id: tok.convert_tokens_to_ids(p.primary.identifier) for p in checked.suite.pairs}
    kind = {p.id: p.kind for p in checked.suite.pairs}
    for it in checked.items:
        assert sorted(it.control_kind_ids) == sorted(
            prim[q] for q in prim if q != it.pair_id and kind[q] == it.kind)
        assert set(it.control_kind_ids) < set(it.control_ids)
    items = lens_items(model, tok, checked, vocab="gathered", full_sequence=False)
    unmatched = lens_controls(items, control="all", n_boot=1000)
    matched = lens_controls(items, n_boot=1000)
    assert unmatched.attrs["control"] == "all" and matched.attrs["control"] == "kind"
    # the same model without the kind bias: K_kind is orthogonal to everything else, so
    # the bias adds the same logit to every primary token of the prompt's kind, and the
    # kind-matched margin cannot see it at all
    no_bias = lens_controls(_items(kinds=kinds), n_boot=1000)
    np.testing.assert_allclose(matched.margin_specific, no_bias.margin_specific, atol=1e-4)
    for u, m in zip(unmatched.itertuples(), matched.itertuples()):
        # against tokens of both kinds, the kind preference reads as a counterpart effect
        assert u.margin_specific_ci_low > 0 and u.ci_low > 0
        # against same-kind tokens it is gone
        assert m.margin_specific_ci_low <= 0 <= m.margin_specific_ci_high
        assert m.ci_low <= 0 <= m.ci_high
        assert u.margin_specific > m.margin_specific + 0.5
        # the columns that do not involve control A are the same in both tables
        assert m.share == u.share and m.control_b == u.control_b and m.margin == u.margin
    with pytest.raises(BabelError, match="control must be one of kind, all"):
        lens_controls(items, control="same")
    with pytest.raises(BabelError, match="missing measures prefers_new_vs_unrelated_kind"):
        lens_controls(items[items.measure != "prefers_new_vs_unrelated_kind"])


def test_summary_spans_carry_the_margins():
    model, tok, checked = margin_model(plant=0.5, plant_layers=(2, 3))
    items = lens_items(model, tok, checked, vocab="gathered")
    table = lens_controls(items, n_boot=200).set_index("layer")
    summ = lens_controls_summary(items, n_boot=200).set_index("span")
    assert list(summ.index) == ["layer 0", "layers 1-4", "layer 4", "layer 4, full identifiers"]
    assert summ.loc["layers 1-4", "margin_specific"] == pytest.approx(
        table.margin_specific[1:].mean())
    assert summ.loc["layer 4", "margin_a"] == pytest.approx(table.loc[4, "margin_a"])
    full = summ.loc["layer 4, full identifiers"]
    # single-token identifiers: the whole-identifier margin is the first-token one
    assert full.margin == pytest.approx(table.loc[4, "margin"], abs=1e-4)
    assert full.margin_ci_low <= full.margin <= full.margin_ci_high
    assert np.isnan(full.margin_specific) and summ.attrs["control"] == "kind"


def test_summarize_lens_reports_the_kind_matched_control_and_margins():
    from babeltower.probes.lens import aggregate_items, summarize_lens

    kinds = ("builtin",) * 10 + ("keyword",) * 10
    model, tok, checked = margin_model(kinds=kinds, kind_bias=0.6, plant=0.5)
    items = lens_items(model, tok, checked, vocab="gathered", full_sequence=False)
    df = aggregate_items(items).assign(checkpoint="c", step=0, tokens=0)
    row = summarize_lens(df).iloc[0]
    # one item per prompt text here, so the item means are the text means
    kind_t = lens_controls(items, n_boot=50).set_index("layer")
    all_t = lens_controls(items, n_boot=50, control="all").set_index("layer")
    assert row.control_margin_kind_last == pytest.approx(kind_t.loc[4, "margin_specific"])
    assert row.control_margin_last == pytest.approx(all_t.loc[4, "margin_specific"])
    assert row.specific_kind_last == pytest.approx(kind_t.loc[4, "specific"])
    assert row.control_margin_kind_mean == pytest.approx(kind_t.margin_specific[1:].mean())
    assert row.control_margin_mean == pytest.approx(all_t.margin_specific[1:].mean())
