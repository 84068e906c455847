"""Logit lens: exactness against the model's own logits, padding/batch invariance, outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from babeltower.cli import main
from babeltower.errors import BabelError
from babeltower.io import sha256_file
from babeltower.probes.lens import (LogitLens, aggregate_items, lens_items, pad_batch,
                                    run_lens, summarize_lens)
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
    a = lens_items(model, tok, checked, batch_size=1)
    b = lens_items(model, tok, checked, batch_size=7, padding_side="left")
    c = lens_items(model, tok, checked, batch_size=64, padding_side="right")
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
