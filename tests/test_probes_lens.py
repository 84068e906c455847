"""Logit lens: exactness against the model's own logits, padding/batch invariance, outputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from babeltower.cli import main
from babeltower.errors import BabelError
from babeltower.io import sha256_file
from babeltower.batching import pad_batch
from babeltower.probes.lens import (LogitLens, aggregate_items, lens_items, run_lens,
                                    summarize_lens)
from babeltower.probes.suite import load_suite
from test_probes_helpers import save_run, tiny_model, tiny_tokenizer

ARCHS = ["llama", "gpt2", "gpt_neox"]


@pytest.fixture(scope="module")
def checked():
    return load_suite("python", "php").check(tiny_tokenizer(), add_bos=False)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_last_layer_reproduces_model_logits(arch, side):
    model = tiny_model(arch, len(tiny_tokenizer()))
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 15, 16, 17]]
    ids, mask = pad_batch(seqs, pad_id=0, side=side)
    got = LogitLens(model).layer_logits(ids, mask)
    assert got.shape == (model.config.num_hidden_layers + 1, 3, model.config.vocab_size)
    for i, s in enumerate(seqs):  # each prompt alone, no padding at all
        with torch.no_grad():
            ref = model(torch.tensor([s])).logits[0, -1]
        torch.testing.assert_close(got[-1, i], ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_intermediate_layers_use_their_own_norm(arch):
    # independent path: forward hooks on the blocks, then final norm + unembedding by hand
    model = tiny_model(arch, len(tiny_tokenizer()))
    blocks = model.model.layers if arch == "llama" else model.transformer.h
    norm = model.model.norm if arch == "llama" else model.transformer.ln_f
    seen = []
    hooks = [b.register_forward_hook(
        lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o)[:, -1].clone()))
        for b in blocks]
    ids = torch.tensor([[3, 9, 27, 81, 4]])
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    got = LogitLens(model).layer_logits(ids)
    for k in range(len(blocks) - 1):   # the last block's output is normed inside HF
        with torch.no_grad():
            ref = model.get_output_embeddings()(norm(seen[k]))
        torch.testing.assert_close(got[k + 1, 0], ref[0], atol=1e-4, rtol=0)
    # the norm really is recomputed per layer: a cached final scale would differ
    assert not torch.allclose(got[1, 0], got[2, 0], atol=1e-3)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_measures_match_an_independent_forward(arch, checked):
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok))
    items = lens_items(model, tok, checked, batch_size=5)
    last = items[items.layer == model.config.num_hidden_layers]
    for it in checked.items[:12]:
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([it.prompt_ids])).logits[0, -1], -1)
        rows = last[(last.pair_id == it.pair_id) & (last.prompt == it.prompt)
                    & (last.side == it.side)].set_index("measure")["value"]
        assert rows["p_new"] == pytest.approx(logp[it.new_first_id].exp().item(), abs=1e-5)
        assert rows["logp_diff"] == pytest.approx(
            (logp[it.new_first_id] - logp[it.primary_first_id]).item(), abs=1e-4)
        assert rows["top1_target"] == float(logp.argmax().item() == it.target_first_id)
        ctrl = logp[it.control_ids].mean().item()
        assert rows["primary_vs_control"] == pytest.approx(
            logp[it.primary_first_id].item() - ctrl, abs=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_results_independent_of_batch_size_and_padding(arch, checked):
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok))
    a = lens_items(model, tok, checked, batch_size=1, packing="padded")
    b = lens_items(model, tok, checked, batch_size=7, padding_side="left", packing="padded")
    c = lens_items(model, tok, checked, batch_size=64, padding_side="right", packing="padded")
    for other in (b, c):
        assert (a[["pair_id", "side", "layer", "measure"]].values
                == other[["pair_id", "side", "layer", "measure"]].values).all()
        np.testing.assert_allclose(a.value.values, other.value.values, atol=1e-4)


def test_aggregate_counts_and_kinds(checked):
    tok = tiny_tokenizer()
    items = lens_items(tiny_model("llama", len(tok)), tok, checked, batch_size=16)
    agg = aggregate_items(items)
    one = agg[(agg.layer == 0) & (agg.measure == "p_new") & (agg.side == "new")]
    n = {r.kind: r.n for r in one.itertuples()}
    assert n["all"] == n["builtin"] + n["keyword"] == len(checked.select(side="new"))


def test_unsupported_architecture_is_named():
    class Fake(torch.nn.Module):
        class config:
            model_type = "mamba"

    with pytest.raises(BabelError, match="'mamba'.*supported: .*llama"):
        LogitLens(Fake())


def test_run_lens_series_outputs_and_resume(tmp_path):
    run = save_run(tmp_path, "llama", steps=(0, 16))
    out = tmp_path / "lens"
    done = []
    df = run_lens(run, primary="python", new="php", out=out, progress=False,
                  on_checkpoint=done.append)
    assert done == ["step-00000000", "step-00000016"]
    assert set(df.checkpoint) == set(done) and sorted(set(df.step)) == [0, 16]
    assert set(df.layer) == {0, 1, 2, 3}
    assert set(df.attribution) == {"first-token", "full-sequence"}
    assert set(df[df.attribution == "full-sequence"].layer) == {3}
    for f in ("lens.parquet", "lens.csv", "summary.csv", "provenance.json"):
        assert (out / f).exists()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["attribution"] == "first-token" and prov["config_sha256"]
    summ = summarize_lens(df)
    assert list(summ.checkpoint) == done
    assert summ[["share_new_last", "prefers_new_mean"]].notna().all().all()
    # different random models give different lens results
    a, b = (df[(df.checkpoint == c) & (df.measure == "logp_diff")].value.values for c in done)
    assert not np.allclose(a, b)
    assert set(df.weights_sha256) == {sha256_file(run / "checkpoints" / c / "model.safetensors")
                                      for c in done}
    # an interrupted run leaves no output, and its rerun only computes what was missing
    out2 = tmp_path / "lens2"

    def stop(name):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_lens(run, primary="python", new="php", out=out2, progress=False, on_checkpoint=stop)
    assert not out2.exists() and (tmp_path / "lens2.partial").is_dir()
    done.clear()
    df2 = run_lens(run, primary="python", new="php", out=out2, progress=False,
                   on_checkpoint=done.append)
    assert done == ["step-00000016"] and not (tmp_path / "lens2.partial").exists()
    pd.testing.assert_frame_equal(df.reset_index(drop=True), df2.reset_index(drop=True))


def test_cli_lens_and_errors(tmp_path, capsys):
    run = save_run(tmp_path, "gpt2", steps=(0,))
    out = tmp_path / "o"
    rc = main(["probe", "lens", str(run), "--new", "php", "--out", str(out)])
    assert rc == 0 and (out / "heatmap_logp_diff.png").stat().st_size > 1000
    assert (out / "heatmap_logp_diff_mirrored.png").exists()
    capsys.readouterr()
    rc = main(["probe", "lens", str(run), "--new", "php", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "already exists" in err
    rc = main(["probe", "lens", str(tmp_path / "nope"), "--new", "php", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "not found" in err
    rc = main(["probe", "lens", str(run), "--new", "cobol", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "unknown language" in err


def test_cache_from_other_settings_is_refused(tmp_path):
    run = save_run(tmp_path, "llama", steps=(0,))
    out = tmp_path / "lens"
    with pytest.raises(KeyboardInterrupt):
        run_lens(run, primary="python", new="php", out=out, progress=False,
                 on_checkpoint=lambda name: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(BabelError, match="other settings"):
        run_lens(run, primary="python", new="php", out=out, progress=False, add_bos=True)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_full_sequence_scoring(arch, checked):
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok))
    items = checked.items[:40]
    df = lens_items(model, tok, checked, batch_size=6, items=items)
    last = df[df.layer == model.config.num_hidden_layers]
    assert set(last[last.attribution == "full-sequence"].measure) == {
        "seq_logp_diff", "seq_prefers_new", "seq_logp_target"}
    multi = 0
    for it in items:
        rows = last[(last.pair_id == it.pair_id) & (last.prompt == it.prompt)
                    & (last.side == it.side)].set_index("measure")["value"]
        # independent: the model's own logits over prompt + identifier, summed per token
        ids = torch.tensor([it.prompt_ids + it.target_ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0], -1)
        c = len(it.prompt_ids)
        want = sum(lp[c - 1 + k, t].item() for k, t in enumerate(it.target_ids))
        assert rows["seq_logp_target"] == pytest.approx(want, abs=1e-3)
        if len(it.primary_ids) == 1 and len(it.new_ids) == 1:
            # single-token identifiers: both attributions agree
            assert rows["seq_logp_diff"] == pytest.approx(rows["logp_diff"], abs=1e-4)
        else:
            multi += 1
    assert multi > 0


# --------------------------------------------------------------------------- controls

def _word_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]")


def planted_pairs(n_pairs=20, n_prompts=2, counterpart=0.0, own_new=0.0, seed=0, hidden=32):
    """A suite of word-level pairs (prompts only on the new side, one context word per
    prompt) and a 2-layer LLaMA whose blocks add nothing, so every layer's state at a
    prompt is the normed embedding of its context word. Context words of pair i are
    g + P_i + noise (g shared by all, P_i the pair's own direction); unembedding rows are
    noise, new-language tokens + 1.5 g (a uniform preference for new tokens), the primary
    counterpart of pair i + ``counterpart`` * P_i, its new token + ``own_new`` * P_i.
    With both at 0 nothing relates a prompt to its pair: true pair and controls are
    exchangeable, so the specific effects are 0 by construction."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from babeltower.probes.suite import ProbeSuite

    ctx = [[f"c{i}x{r}" for r in range(n_prompts)] for i in range(n_pairs)]
    prim, new = [f"py{i}" for i in range(n_pairs)], [f"nw{i}" for i in range(n_pairs)]
    tok = _word_tokenizer([w for c in ctx for w in c] + prim + new)
    suite = ProbeSuite(primary="python", new="php", pairs=[
        {"id": f"p{i}", "kind": "builtin", "primary": {"identifier": prim[i]},
         "new": {"identifier": new[i], "prompts": [w + " " for w in ctx[i]]}}
        for i in range(n_pairs)])
    g = torch.Generator().manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=16,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=32, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    shared = torch.zeros(hidden)
    shared[0] = 2.0
    pair_dir = torch.randn(n_pairs, hidden, generator=g)
    pair_dir[:, 0] = 0.0
    pair_dir = 2.0 * pair_dir / pair_dir.norm(dim=1, keepdim=True)
    with torch.no_grad():
        emb = 0.5 * torch.randn(len(tok), hidden, generator=g)
        unemb = torch.randn(len(tok), hidden, generator=g)
        for i in range(n_pairs):
            for w in ctx[i]:
                emb[tok.convert_tokens_to_ids(w)] += shared + pair_dir[i]
            unemb[tok.convert_tokens_to_ids(prim[i])] += counterpart * pair_dir[i]
            unemb[tok.convert_tokens_to_ids(new[i])] += 0.75 * shared + own_new * pair_dir[i]
        model.model.embed_tokens.weight.copy_(emb)
        model.lm_head.weight.copy_(unemb)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    checked = suite.check(tok, add_bos=False)
    assert len(checked.items) == n_pairs * n_prompts and not checked.dropped
    return model, tok, checked


def test_controls_equal_the_true_pair_without_a_counterpart_relation():
    from babeltower.probes.lens import lens_controls

    model, tok, checked = planted_pairs()
    table = lens_controls(lens_items(model, tok, checked, vocab="gathered"))
    assert list(table.layer) == [0, 1, 2] and (table.n_prompts == 40).all()
    assert (table.n_clusters == 20).all()   # one cluster per pair: its prompts share ids
    for r in table.itertuples():
        # new tokens are preferred across the board ...
        assert r.share > 0.6 and r.control_a > 0.6 and r.control_b > 0.6
        # ... but nothing is specific to the pair
        assert r.ci_low <= 0 <= r.ci_high and abs(r.specific) < 0.1
        assert r.specific_new_ci_low <= 0 <= r.specific_new_ci_high


def test_planted_counterpart_relation_is_specific():
    from babeltower.probes.lens import lens_controls, lens_controls_summary

    model, tok, checked = planted_pairs(counterpart=3.0)
    items = lens_items(model, tok, checked)
    table = lens_controls(items)
    for r in table.itertuples():
        assert r.specific == pytest.approx(r.control_a - r.share)
        assert r.specific > 0.2 and r.ci_low > 0      # the true counterpart is favoured
        # control B moves with the true pair: other new tokens lose to the raised
        # counterpart as this pair's own new token does
        assert r.specific_new_ci_low <= 0 <= r.specific_new_ci_high
    summ = lens_controls_summary(items).set_index("span")
    assert list(summ.index) == ["layer 0", "layers 1-2", "layer 2", "layer 2, full identifiers"]
    assert summ.loc["layers 1-2", "share"] == pytest.approx(table.share[1:].mean())
    # single-token identifiers: the whole-identifier share is the first-token one
    assert summ.loc["layer 2, full identifiers", "share"] == pytest.approx(table.share.iloc[-1])
    # the pair's own new token raised instead: specific_new, not specific
    model, tok, checked = planted_pairs(own_new=3.0)
    table = lens_controls(lens_items(model, tok, checked))
    assert (table.specific_new_ci_low > 0).all()
    assert ((table.ci_low <= 0) & (0 <= table.ci_high)).all()


def test_controls_group_prompts_that_share_text(checked):
    from babeltower.probes.lens import lens_controls

    tok = tiny_tokenizer()
    items = lens_items(tiny_model("llama", len(tok)), tok, checked, full_sequence=False,
                       vocab="gathered")
    texts = {it.prompt for it in checked.items if it.side == "new"}
    n_new = len([it for it in checked.items if it.side == "new"])
    assert len(texts) < n_new            # the PHP suite has prompts shared between targets
    table = lens_controls(items, n_boot=200)
    assert table.n_prompts.max() == len(texts)
    # share = mean over texts of the mean over each text's items (not over items)
    sel = items[(items.side == "new") & (items.measure == "prefers_new") & (items.layer == 0)]
    assert table.share.iloc[0] == pytest.approx(sel.groupby("prompt").value.mean().mean())
    with pytest.raises(BabelError, match="missing measures"):
        lens_controls(items[items.measure != "other_new_prefers"])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_gathered_rows_equal_the_full_vocabulary(arch, checked):
    tok = tiny_tokenizer()
    model = tiny_model(arch, len(tok))
    lens = LogitLens(model)
    ids, mask = pad_batch([it.prompt_ids for it in checked.items[:9]], 0, "left")
    states = lens.layer_states(ids, mask)
    rows = [3, 17, 5, 250, 3]
    diff = (lens.decode_rows(states, rows) - lens.decode(states)[..., rows]).abs().max()
    assert float(diff) < 1e-4
    items = checked.items[:30]
    full = lens_items(model, tok, checked, batch_size=7, items=items)
    gathered = lens_items(model, tok, checked, batch_size=7, items=items, vocab="gathered")
    from babeltower.probes.lens import PAIRWISE_MEASURES

    assert set(gathered.measure) == set(PAIRWISE_MEASURES) | {
        "seq_logp_diff", "seq_prefers_new", "seq_logp_target"}
    merged = full.merge(gathered, on=["pair_id", "side", "prompt", "layer", "measure"])
    assert len(merged) == len(gathered)
    np.testing.assert_allclose(merged.value_x, merged.value_y, atol=1e-4)
    # the control measures by hand from the full log-probs of one item
    it = next(i for i in items if i.control_ids and i.control_new_ids)
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([it.prompt_ids])).logits[0, -1], -1)
    got = gathered[(gathered.prompt == it.prompt) & (gathered.pair_id == it.pair_id)
                   & (gathered.side == it.side) & (gathered.layer == lens.n_layers)
                   ].set_index("measure").value
    n, p = lp[it.new_first_id], lp[it.primary_first_id]
    assert got["prefers_new_vs_unrelated"] == pytest.approx(
        float((n > lp[it.control_ids]).float().mean()))
    assert got["other_new_prefers"] == pytest.approx(
        float((lp[it.control_new_ids] > p).float().mean()))
    assert got["logp_other_new_vs_primary"] == pytest.approx(
        float(lp[it.control_new_ids].mean() - p), abs=1e-4)


def test_in_pass_sequence_scoring_equals_two_pass(checked):
    from babeltower.probes.lens import sequence_logprobs

    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    items = checked.items[:40]
    df = lens_items(model, tok, checked, batch_size=6, items=items, vocab="gathered")
    ctx = [it.prompt_ids for it in items]
    lp_p = sequence_logprobs(model, ctx, [it.primary_ids for it in items])
    lp_n = sequence_logprobs(model, ctx, [it.new_ids for it in items])
    got = df[df.measure == "seq_logp_diff"].value.to_numpy()
    assert any(len(it.primary_ids) > 1 or len(it.new_ids) > 1 for it in items)
    np.testing.assert_allclose(got, lp_n - lp_p, atol=1e-4)


@pytest.mark.parametrize("full_sequence", [False, True])
def test_identical_prompts_run_once_per_batch(checked, monkeypatch, full_sequence):
    """A prompt written for several targets is one token row in the batch's forward, and
    every item still gets its own values (equal to running the items one by one)."""
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok))
    a = next(i for i in checked.items if len(i.target_ids) > 1 or len(i.counterpart_ids) > 1)
    b = next(i for i in checked.items if i.side == a.side and i.pair_id != a.pair_id
             and len(i.prompt_ids) != len(a.prompt_ids))
    # a second target on a's prompt: same prompt tokens, b's identifiers
    twin = dataclasses.replace(b, pair_id="twin", prompt=a.prompt, context=a.context,
                               prompt_ids=list(a.prompt_ids))
    items = [a, b, twin, a]
    single = lens_items(model, tok, checked, batch_size=1, items=items,
                        full_sequence=full_sequence, packing="padded")
    seen = []
    forward = LogitLens.hidden_states

    def counting(self, input_ids, attention_mask):
        seen.append([tuple(r[m.bool()].tolist()) for r, m in zip(input_ids, attention_mask)])
        return forward(self, input_ids, attention_mask)

    monkeypatch.setattr(LogitLens, "hidden_states", counting)
    batched = lens_items(model, tok, checked, batch_size=4, items=items,
                         full_sequence=full_sequence, packing="padded")
    assert len(seen) == 1 and len(seen[0]) == len(set(seen[0]))       # no row twice
    n_rows = len({tuple(r) for it in items for r in _rows_of(it, full_sequence)})
    assert len(seen[0]) == n_rows < sum(len(_rows_of(it, full_sequence)) for it in items)
    np.testing.assert_allclose(single.value.values, batched.value.values, atol=1e-4)
    assert (single[["pair_id", "layer", "measure"]].values
            == batched[["pair_id", "layer", "measure"]].values).all()


def _rows_of(it, full_sequence):
    from babeltower.probes.lens import _item_rows

    return _item_rows(it, full_sequence)[0]


def test_length_batches_cut_where_padding_costs_more_than_a_forward():
    from babeltower.probes.lens import FORWARD_COST_TOKENS, _length_batches

    def rows(n):
        return [[7] * n]

    # 15 one-token prompts and one of 40 tokens: padding them all to 40 costs 600 token
    # positions, a second forward FORWARD_COST_TOKENS; the long prompt runs alone
    items = [rows(1) for _ in range(15)] + [rows(40)]
    assert FORWARD_COST_TOKENS < 15 * 39
    assert _length_batches(items, 16) == [list(range(15)), [15]]
    # equal lengths: the fewest forwards, every item exactly once, <= batch_size each
    same = [[[i, i + 1, i + 2]] for i in range(37)]
    runs = _length_batches(same, 16)
    assert len(runs) == 3 and max(map(len, runs)) <= 16
    assert sorted(i for r in runs for i in r) == list(range(37))
    # identical prompts: 20 copies of one prompt are one row per forward, two forwards
    runs = _length_batches([rows(5)] * 20, 16)
    assert len(runs) == 2 and max(map(len, runs)) <= 16
    assert _length_batches([], 16) == []
