"""LAPE neurons and ablation: planted neurons are found exactly; ablation is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from babeltower.cli import main
from babeltower.errors import BabelError
from babeltower.probes.ablate import ablate, language_losses, random_like, zero_neurons
from babeltower.probes.neurons import (LapeOptions, NeuronStats, collect_stats, lape_select,
                                       neuron_table, run_neurons, summarize_neurons)
from babeltower.series import SeriesOptions
from test_probes_helpers import (LANG_RANGES, PLANTED, packed_data, planted_llama,
                                 planted_windows, tiny_model, tiny_tokenizer)

LANGS = ["python", "php", "go"]


def _planted_sets():
    want = {l: set() for l in LANGS}
    for (layer, n), langs in PLANTED.items():
        for l in langs:
            want[l].add((layer, n))
    return want


def test_counts_are_exact_probabilities():
    stats = collect_stats(planted_llama(), planted_windows(n=5, seq=8), batch_size=2)
    assert stats.tokens == {l: 40 for l in LANGS}
    p = stats.probabilities(LANGS)
    assert p.shape == (3, 2, 32)
    for (layer, n), langs in PLANTED.items():
        assert list(p[:, layer, n]) == [1.0 if l in langs else 0.0 for l in LANGS]
    # streaming: two halves added up equal one pass
    w = planted_windows(n=6, seq=8)
    a = collect_stats(planted_llama(), {l: v[:3] for l, v in w.items()})
    a = collect_stats(planted_llama(), {l: v[3:] for l, v in w.items()}, stats=a)
    b = collect_stats(planted_llama(), w, batch_size=4)
    for l in LANGS:
        np.testing.assert_array_equal(a.counts[l], b.counts[l])


# keeping 20% of neurons also keeps random ones; Tang's all-probabilities bar then assigns
# those whose probability is high, the kept-neuron bar ("selected") does not
@pytest.mark.parametrize("top_rate, assign", [(5 / 64, "tang"), (5 / 64, "selected"),
                                              (0.2, "selected")])
def test_lape_finds_exactly_the_planted_neurons(top_rate, assign):
    stats = collect_stats(planted_llama(), planted_windows())
    sel = lape_select(stats.probabilities(LANGS), LANGS, top_rate=top_rate, assign=assign)
    got = {l: {tuple(map(int, x)) for x in s} for l, s in sel.sets.items()}
    assert got == _planted_sets()
    # T = S_python ∩ S_php is the one neuron planted for both
    assert {tuple(map(int, x)) for x in sel.transfer("python", "php")} == {(1, 3)}
    t = neuron_table(sel, "python")
    tot = t[t.layer.isna()].set_index(["language", "measure"]).value
    assert tot[("php", "n_specific")] == 3 and tot[("php", "n_transfer")] == 1
    assert tot[("php", "transfer_ratio")] == pytest.approx(1 / 3)
    assert tot[("go", "n_transfer")] == 0


def test_lape_selection_rules_by_hand():
    # 1 layer, 6 neurons, 2 languages; probabilities chosen by hand
    p = np.array([[[0.9, 0.0, 0.5, 0.5, 0.05, 0.8]],
                  [[0.0, 0.9, 0.5, 0.4, 0.04, 0.7]]])
    sel = lape_select(p, ["a", "b"], top_rate=0.5, filter_rate=0.75, activation_bar_ratio=0.5,
                      assign="selected")
    # filter: 9th smallest of 12 = 0.7 -> neurons 3 and 4 never pass (max <= 0.7)
    assert sel.filter_threshold == 0.7
    # kept: lowest entropy among passing {0, 1, 2, 5}: 0, 1 (entropy 0), then 5 (0.69...)
    assert sel.n_kept == 3
    assert [tuple(x) for x in sel.sets["a"]] == [(0, 0), (0, 5)]
    assert [tuple(x) for x in sel.sets["b"]] == [(0, 1), (0, 5)]
    with pytest.raises(BabelError):
        lape_select(p, ["a"], top_rate=0.5)


def test_gpt2_and_act_fn_points():
    tok = tiny_tokenizer()
    w = {"python": np.arange(0, 64).reshape(4, 16), "php": np.arange(100, 164).reshape(4, 16)}
    g = collect_stats(tiny_model("gpt2", len(tok)), w, point="down_proj_input")
    assert g.counts["python"].shape == (3, 128)      # GPT-2 MLP width 4 * n_embd
    s = collect_stats(tiny_model("llama", len(tok)), w, point="act_fn")
    assert s.counts["php"].shape == (3, 48)
    # GPT-2: the GELU output is both points (no gate), so the counts agree
    a = collect_stats(tiny_model("gpt2", len(tok)), w, point="act_fn")
    np.testing.assert_array_equal(a.counts["php"], g.counts["php"])
    with pytest.raises(BabelError, match="activation point"):
        collect_stats(tiny_model("gpt2", len(tok)), w, point="gate")
    with pytest.raises(BabelError, match="vocabulary"):
        collect_stats(tiny_model("gpt2", len(tok)), {"python": np.full((1, 4), 10_000)})


def test_stats_roundtrip(tmp_path):
    stats = collect_stats(planted_llama(), planted_windows(n=2, seq=8))
    stats.save(tmp_path / "s.npz")
    back = NeuronStats.load(tmp_path / "s.npz")
    assert back.tokens == stats.tokens
    for l in LANGS:
        np.testing.assert_array_equal(back.counts[l], stats.counts[l])


def test_zeroing_neurons_equals_zeroing_weight_columns():
    model = tiny_model("llama", 128)
    ids = torch.randint(0, 128, (2, 10))
    sel = {0: [1, 5], 2: [7]}
    with zero_neurons(model, sel), torch.no_grad():
        hooked = model(ids).logits
    with torch.no_grad():
        ref_model = tiny_model("llama", 128)
        for layer, idx in sel.items():
            ref_model.model.layers[layer].mlp.down_proj.weight[:, idx] = 0
        ref = ref_model(ids).logits
        plain = model(ids).logits            # hooks are gone again
    torch.testing.assert_close(hooked, ref, atol=1e-5, rtol=0)
    assert not torch.allclose(plain, hooked)


def test_ablating_a_language_neuron_hurts_that_language_most():
    model = planted_llama(gate_scale=30.0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # let planted neuron (0, 0) (python) write into the residual
        model.model.layers[0].mlp.down_proj.weight[:, 0] = 3 * torch.randn(16, generator=g)
        model.lm_head.weight.mul_(50)   # a sharper output layer makes the effect visible
    w = planted_windows(n=6, seq=16)
    df = ablate(model, w, {0: [0]})
    d = df[df.condition == "ablated"].set_index("language").delta
    assert abs(d["python"]) > 1e-2
    assert abs(d["php"]) < abs(d["python"]) / 100 and abs(d["go"]) < abs(d["python"]) / 100
    assert set(df.condition) == {"base", "ablated", "random"}
    assert random_like({0: [0, 1]}, 32, seed=3)[0] != [0, 1]
    base = language_losses(model, w)
    assert base == pytest.approx(df[df.condition == "base"].set_index("language").loss.to_dict())


def _planted_run(tmp_path):
    run = tmp_path / "run" / "checkpoints"
    for step in (0, 4):
        d = run / f"step-{step:08d}"
        planted_llama(seed=step).save_pretrained(d)
        tiny_tokenizer().save_pretrained(d)
    return tmp_path / "run"


def test_run_neurons_series_resume_and_cli(tmp_path, capsys):
    run = _planted_run(tmp_path)
    data = packed_data(tmp_path / "data", planted_windows(n=8, seq=16))
    out = tmp_path / "neurons"
    done = []
    opts = LapeOptions(languages=LANGS, primary="python", seq_len=16, top_rate=5 / 64)
    df = run_neurons(run, data, opts, out=out, series=SeriesOptions(progress=False),
                     on_checkpoint=done.append)
    assert done == ["step-00000000", "step-00000004"]
    assert set(df["point"]) == {"act_fn"} and set(df["assign"]) == {"tang"}
    summ = summarize_neurons(df)
    php = summ[summ.language == "php"]
    assert list(php.n_transfer) == [1.0, 1.0] and list(php.transfer_ratio) == [1 / 3, 1 / 3]
    rec = json.loads((out / "checkpoints" / "step-00000004.neurons.json").read_text())
    assert rec["transfer"]["php"]["1"] == [3] and rec["sets"]["go"]["0"] == [2]
    assert rec["point"] == "act_fn" and rec["assign"] == "tang" and rec["weights_sha256"]
    for f in ("neurons.parquet", "neurons.csv", "summary.csv", "provenance.json"):
        assert (out / f).exists()
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["config"]["point"] == "act_fn" and prov["config"]["assign"] == "tang"
    # interrupted after the first checkpoint: no output, the rerun computes only the second
    def stop(name):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_neurons(run, data, opts, out=tmp_path / "n1", series=SeriesOptions(progress=False),
                    on_checkpoint=stop)
    assert not (tmp_path / "n1").exists()
    done.clear()
    df2 = run_neurons(run, data, opts, out=tmp_path / "n1", series=SeriesOptions(progress=False),
                      on_checkpoint=done.append)
    assert done == ["step-00000004"]
    assert df2.equals(df)
    with pytest.raises(BabelError, match="already exists"):
        run_neurons(run, data, opts, out=out, series=SeriesOptions(progress=False))
    # CLI: neurons then ablate the php set, and one-line errors
    capsys.readouterr()
    rc = main(["probe", "neurons", str(run), "--data", str(data), "--languages",
               "python,php,go", "--out", str(tmp_path / "n2"), "--seq-len", "16",
               "--top-rate", "0.078125"])
    assert rc == 0, capsys.readouterr().err
    rc = main(["probe", "ablate", str(run), "--data", str(data), "--languages", "python,php,go",
               "--neurons", str(tmp_path / "n2"), "--set", "transfer:php",
               "--out", str(tmp_path / "ab"), "--seq-len", "16"])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "ab" / "ablate.csv").exists()
    capsys.readouterr()
    rc = main(["probe", "ablate", str(run), "--data", str(data), "--languages", "python,php",
               "--neurons", str(tmp_path / "n2"), "--set", "ruby", "--out", str(tmp_path / "ab2")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "no neuron set 'ruby'" in err
    rc = main(["probe", "neurons", str(run), "--data", str(tmp_path / "missing"),
               "--languages", "python,php", "--out", str(tmp_path / "n3")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert not (tmp_path / "n3" / "neurons.parquet").exists()


def test_raw_text_data(tmp_path):
    tok = tiny_tokenizer()
    (tmp_path / "a.py").write_text("def size(items):\n    return len(items)\n" * 20)
    (tmp_path / "b.php").write_text("<?php\nfunction size($items) { return count($items); }\n" * 20)
    run = tmp_path / "run" / "checkpoints" / "step-00000001"
    tiny_model("llama", len(tok)).save_pretrained(run)
    tok.save_pretrained(run)
    df = run_neurons(tmp_path / "run", {"python": tmp_path / "a.py", "php": tmp_path / "b.php"},
                     LapeOptions(languages=["python", "php"], seq_len=32, top_rate=0.05),
                     series=SeriesOptions(progress=False))
    assert set(df.language) == {"python", "php"}
    assert (df[df.measure == "n_specific"].value >= 0).all()


def test_checkpoint_summary_merges_lens_and_neurons(tmp_path):
    from babeltower.probes import checkpoint_summary, run_lens

    from test_probes_helpers import save_run

    run = save_run(tmp_path, "llama", steps=(0, 4))
    data = packed_data(tmp_path / "data", planted_windows(n=4, seq=16))
    nd = run_neurons(run, data, LapeOptions(languages=LANGS, seq_len=16, top_rate=0.05),
                     out=tmp_path / "n", series=SeriesOptions(progress=False))
    run_lens(run, primary="python", new="php", out=tmp_path / "l", progress=False)
    s = checkpoint_summary(tmp_path / "l", tmp_path / "n")
    assert list(s.checkpoint) == ["step-00000000", "step-00000004"]
    assert s.share_new_last.notna().all() and (s.lape_language == "php").all()
    want = summarize_neurons(nd)
    want = want[want.language == "php"].transfer_ratio.tolist()
    np.testing.assert_allclose(s.lape_transfer_ratio.tolist(), want)


def test_saturated_probabilities_still_select():
    # over 5% of probabilities exactly 1.0: nothing is strictly above the 95% quantile
    p = np.full((2, 1, 20), 0.5)
    p[0, 0, :3] = 1.0          # three neurons always on for "a" only
    p[1, 0, :3] = 0.0
    p[:, 0, 3] = 1.0           # one neuron always on for both
    sel = lape_select(p, ["a", "b"], top_rate=0.2, assign="selected")
    assert sel.filter_threshold == 1.0
    assert [tuple(x) for x in sel.sets["a"]] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert [tuple(x) for x in sel.sets["b"]] == [(0, 3)]


# Hand-made probabilities (1 layer, 8 neurons, languages a and b) for Tang et al.'s rule.
# All 16 values sorted: five 0, .02, .05, .05, .1, .1, .2, .3, .6, .6, .8, .9.
TANG_P = np.array([[[0.9, 0.0, 0.6, 0.30, 0.1, 0.05, 0.2, 0.0]],
                   [[0.0, 0.8, 0.6, 0.02, 0.1, 0.05, 0.0, 0.0]]])


@pytest.mark.parametrize("ratio, want_a, want_b, sel_a, sel_b", [
    # bar over ALL probabilities, k = round(16 * .5) = 8 -> .05; strict > .05.
    # Kept-neuron bar ("selected"): kept probs 0,0,0,.02,.2,.3,.8,.9, k = 4 -> .02, >=.
    (0.5, {0, 3, 6}, {1}, {0, 3, 6}, {1, 3}),
    # all: k = 12 -> .3, strict: n3's .3 is NOT above it.  kept: k = 6 -> .3, >=: n3 is.
    (0.75, {0}, {1}, {0, 3}, {1}),
])
def test_tang_rule_by_hand(ratio, want_a, want_b, sel_a, sel_b):
    # filter bar: k = round(16 * .5) = 8th smallest = .05; strict >: n5 (.05, .05) and n7
    # drop. Entropies: n0, n1, n6 = 0; n3 = H(.9375, .0625) = .234; n2, n4 = ln 2.
    # top_rate .5 of 8 neurons -> 4 kept: n0, n1, n6, n3.
    sel = lape_select(TANG_P, ["a", "b"], top_rate=0.5, filter_rate=0.5,
                      activation_bar_ratio=ratio)
    assert sel.assign == "tang" and sel.filter_threshold == 0.05 and sel.n_kept == 4
    got = {l: {int(i) for i in s[:, 1]} for l, s in sel.sets.items()}
    assert got == {"a": want_a, "b": want_b}
    old = lape_select(TANG_P, ["a", "b"], top_rate=0.5, filter_rate=0.5,
                      activation_bar_ratio=ratio, assign="selected")
    assert {l: {int(i) for i in s[:, 1]} for l, s in old.sets.items()} == {"a": sel_a, "b": sel_b}
    filt = lape_select(TANG_P, ["a", "b"], top_rate=0.5, filter_rate=0.5,
                       activation_bar_ratio=ratio, assign="filter")
    assert {int(i) for i in filt.sets["a"][:, 1]} == {0, 3, 6}   # always the .05 filter bar
    assert sel.to_json()["assign"] == "tang"


def test_tang_rule_drops_everything_when_saturated():
    # nothing strictly above the filter bar: Tang keeps no neuron (no tie fallback)
    p = np.full((2, 1, 20), 0.5)
    p[0, 0, :3] = 1.0
    p[1, 0, :3] = 0.0
    p[:, 0, 3] = 1.0
    sel = lape_select(p, ["a", "b"], top_rate=0.2)
    assert sel.n_kept == 0 and all(len(s) == 0 for s in sel.sets.values())


def test_planted_neurons_tang_default_on_act_fn():
    # a planted neuron whose gate fires on its language; up is negative for every token, so
    # act(gate) * up is never > 0 there: only the act_fn point (the default) finds it
    model = planted_llama()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 3] = -1.0
    w = planted_windows()
    tang = collect_stats(model, w)
    prod = collect_stats(model, w, point="down_proj_input")
    assert tang.probabilities(LANGS)[0, 0, 0] == 1.0 and prod.probabilities(LANGS)[0, 0, 0] == 0.0
    sel = lape_select(tang.probabilities(LANGS), LANGS, top_rate=5 / 64)
    assert {tuple(map(int, x)) for x in sel.sets["python"]} == {(0, 0), (1, 3)}
