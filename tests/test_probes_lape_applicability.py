"""LAPE where it can mean something: kept neurons' normalised entropy and the rule that
declares LAPE not applicable (too few languages, kept neurons not language-specific)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from babeltower.cli import main
from babeltower.probes.neurons import (LapeOptions, LapeSelection, lape_applicability,
                                       lape_select, run_neurons, summarize_neurons)
from babeltower.series import SeriesOptions
from test_probes_helpers import packed_data, planted_llama, planted_windows, tiny_tokenizer

LANGS5 = ["python", "php", "go", "cpp", "java"]


def _norm_entropy(p):
    """Entropy of p normalised to sum 1, over log(len(p)) - written out by hand."""
    q = np.asarray(p, float) / np.sum(p)
    return float(-sum(x * math.log(x) for x in q if x > 0) / math.log(len(q)))


def _background(n_lang=5, layers=2, width=40, seed=0):
    """Neurons that fire about equally on every language: one rate per neuron in
    [0.2, 0.6], +-0.01 per language."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.6, size=(1, layers, width))
    return base + rng.uniform(-0.01, 0.01, size=(n_lang, layers, width))


# planted: (layer, index) -> languages it fires on (p = 0.95 there, 0.01 elsewhere)
PLANT = {(0, 3): ("python",), (1, 7): ("php",), (1, 9): ("python", "php")}


def _planted_probs():
    p = _background()
    for (layer, n), langs in PLANT.items():
        p[:, layer, n] = [0.95 if l in langs else 0.01 for l in LANGS5]
    return p


def test_planted_language_specific_neurons_are_found_with_low_entropy():
    p = _planted_probs()
    sel = lape_select(p, LANGS5, top_rate=3 / 80)
    got = {l: {tuple(map(int, x)) for x in s} for l, s in sel.sets.items()}
    assert got == {"python": {(0, 3), (1, 9)}, "php": {(1, 7), (1, 9)}, "go": set(),
                   "cpp": set(), "java": set()}
    want = {k: _norm_entropy(p[:, k[0], k[1]]) for k in PLANT}
    # kept neurons, lowest entropy first, with their normalised entropy
    assert [tuple(map(int, x)) for x in sel.kept] == sorted(want, key=want.get)
    np.testing.assert_allclose(sel.kept_entropy, sorted(want.values()), atol=1e-12)
    summ = sel.entropy_summary()
    assert summ["kept"]["n"] == 3
    assert summ["kept"]["median"] == pytest.approx(sorted(want.values())[1])
    assert summ["sets"]["python"]["median"] == pytest.approx(
        (want[(0, 3)] + want[(1, 9)]) / 2)
    assert summ["sets"]["go"] == {"n": 0, "median": None, "q1": None, "q3": None}
    assert max(want.values()) < 0.5
    app = lape_applicability(sel)
    assert app["applicable"] and app["reason"] is None
    assert app["n_languages"] == 5 and app["kept_entropy_median"] == summ["kept"]["median"]


def test_uniform_neurons_have_high_entropy_and_make_lape_not_applicable():
    p = _background()
    sel = lape_select(p, LANGS5, top_rate=0.05)
    assert sel.n_kept == 4
    for (layer, n), h in zip(sel.kept, sel.kept_entropy):
        assert h == pytest.approx(_norm_entropy(p[:, layer, n]), abs=1e-12)
        assert h > 0.99
    app = lape_applicability(sel)
    assert not app["applicable"]
    assert "median normalised entropy" in app["reason"] and "not language-specific" in app["reason"]
    assert "languages given" not in app["reason"]
    # the same neurons next to planted ones: the planted are kept first and LAPE applies
    sel = lape_select(_planted_probs(), LANGS5, top_rate=3 / 80)
    assert lape_applicability(sel)["applicable"]
    # a stricter threshold than the planted neurons' median: not applicable again
    strict = lape_applicability(sel, max_median_entropy=0.01)
    assert not strict["applicable"] and "> 0.01" in strict["reason"]


def test_two_languages_are_not_applicable_even_with_specific_neurons():
    p = _planted_probs()[:2]                 # python and php only
    sel = lape_select(p, LANGS5[:2], top_rate=3 / 80)
    assert {tuple(map(int, x)) for x in sel.sets["php"]} >= {(1, 7)}
    app = lape_applicability(sel)
    assert not app["applicable"]
    assert app["reason"].startswith("2 languages given, LAPE needs >= 4")
    assert app["kept_entropy_median"] < 0.95          # the entropy alone would pass
    assert lape_applicability(sel, min_languages=2)["applicable"]
    # nothing kept: not applicable, whatever the languages
    empty = lape_select(np.full((5, 1, 10), 0.5), LANGS5, top_rate=0.1)
    assert empty.n_kept == 0
    assert "nothing was kept" in lape_applicability(empty)["reason"]


def test_records_keep_the_entropies_and_old_records_say_so():
    sel = lape_select(_planted_probs(), LANGS5, top_rate=3 / 80)
    rec = json.loads(json.dumps(sel.to_json()))
    assert rec["entropy"]["kept"]["n"] == 3
    back = LapeSelection.from_json(rec)
    np.testing.assert_array_equal(back.kept, sel.kept)
    np.testing.assert_allclose(back.kept_entropy, sel.kept_entropy)
    assert lape_applicability(back) == lape_applicability(sel)
    old = {k: v for k, v in rec.items() if k not in ("kept", "kept_entropy", "entropy")}
    app = lape_applicability(LapeSelection.from_json(old))
    assert not app["applicable"] and "not recorded" in app["reason"]


def test_run_neurons_records_and_the_cli_prints_applicability(tmp_path, capsys):
    run = tmp_path / "run" / "checkpoints" / "step-00000001"
    planted_llama().save_pretrained(run)
    tiny_tokenizer().save_pretrained(run)
    data = packed_data(tmp_path / "data", planted_windows(n=8, seq=16))
    langs = ["python", "php", "go"]
    opts = LapeOptions(languages=langs, seq_len=16, top_rate=5 / 64)
    df = run_neurons(tmp_path / "run", data, opts, out=tmp_path / "n",
                     series=SeriesOptions(progress=False))
    assert (~df.lape_applicable).all()
    assert df.lape_reason.str.startswith("3 languages given").all()
    # the planted neurons fire on their languages only: entropy 0, or log 2 / log 3 for
    # the one planted for python and php
    tot = df[df.layer.isna()].set_index(["language", "measure"]).value
    # (S_python = {(0, 0), (1, 3)}: median of 0 and log 2 / log 3; S_php adds (0, 1), (1, 4))
    assert tot[("python", "entropy_median")] == pytest.approx(math.log(2) / math.log(3) / 2)
    assert tot[("python", "entropy_q3")] == pytest.approx(math.log(2) / math.log(3) * 0.75)
    assert tot[("php", "entropy_median")] == pytest.approx(0.0, abs=1e-12)
    assert tot[("go", "entropy_median")] == pytest.approx(0.0, abs=1e-12)
    summ = summarize_neurons(df)
    assert (summ.kept_entropy_median == 0.0).all() and not summ.applicable.any()
    rec = json.loads((tmp_path / "n" / "checkpoints" / "step-00000001.neurons.json").read_text())
    assert rec["applicability"]["applicable"] is False
    assert rec["applicability"]["min_languages"] == 4
    prov = json.loads((tmp_path / "n" / "provenance.json").read_text())
    assert prov["config"]["min_languages"] == 4 and prov["config"]["max_median_entropy"] == 0.95
    # the rule is a reading: a looser rule changes the verdict, not the counts or the hash
    loose = run_neurons(tmp_path / "run", data, opts.model_copy(update={"min_languages": 3}),
                        series=SeriesOptions(progress=False))
    assert loose.lape_applicable.all() and (loose.lape_reason == "").all()
    assert loose.config_sha256.iloc[0] == df.config_sha256.iloc[0]
    assert loose.value.equals(df.value)
    capsys.readouterr()
    rc = main(["probe", "neurons", str(tmp_path / "run"), "--data", str(data),
               "--languages", "python,php,go", "--out", str(tmp_path / "n2"),
               "--seq-len", "16", "--top-rate", "0.078125"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "LAPE not applicable at step-00000001: 3 languages given, LAPE needs >= 4" in out
    rc = main(["probe", "neurons", str(tmp_path / "run"), "--data", str(data),
               "--languages", "python,php,go", "--out", str(tmp_path / "n3"),
               "--seq-len", "16", "--min-languages", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "min_languages" in err
