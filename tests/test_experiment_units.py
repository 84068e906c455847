"""Experiment pieces without training: config validation, feasibility, the original
corpus, the performance-signal fallback, the comparison with intervals, the report."""

import json
import math

import pytest
import yaml

from babeltower.errors import BabelError
from babeltower.analysis.statistics import t_interval
from babeltower.experiment.analysis import compare, performance_curve
from babeltower.experiment.config import ExperimentConfig
from babeltower.experiment.pipeline import check_feasible, original_corpus

BASE = {"primary": "python", "new_languages": ["php", "go"],
        "primary_phase": {"tokens": 1000, "lr": 1e-3}, "continual": {"tokens": 500, "lr": 1e-3},
        "scratch": {"tokens": 3000, "seeds": [0, 1]}}


def cfg(**over):
    d = json.loads(json.dumps(BASE))
    d.update(over)
    return ExperimentConfig.from_dict(d)


@pytest.mark.parametrize("over,msg", [
    ({"new_languages": ["python"]}, "also listed as a new language"),
    ({"new_languages": []}, "at least one new language"),
    ({"new_languages": ["klingon"]}, "unknown language"),
    ({"scratch": {"tokens": 10, "mixtures": ["natural", "zipf"]}}, "unknown mixture"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_configs_fail_at_load(over, msg):
    with pytest.raises(BabelError, match=msg):
        cfg(**over)


def test_yaml_round_trip_and_overrides(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text(yaml.safe_dump(BASE))
    c = ExperimentConfig.from_yaml(p, {"scratch.seeds": "[0, 1, 2]", "model.preset": "micro"})
    assert c.scratch.seeds == [0, 1, 2] and c.model.preset == "micro"
    c.to_yaml(tmp_path / "out.yaml")
    assert ExperimentConfig.from_yaml(tmp_path / "out.yaml") == c
    p.write_text("primary: python\nnew_languages: [php\n")
    with pytest.raises(BabelError, match="cannot parse experiment config"):
        ExperimentConfig.from_yaml(p)


def test_feasibility_names_the_budget_and_the_language():
    c = cfg()
    check_feasible(c, {"python": 5000, "php": 5000, "go": 5000})
    with pytest.raises(BabelError, match="primary_phase.tokens=1000 exceeds the 999 python"):
        check_feasible(c, {"python": 999, "php": 5000, "go": 5000})
    with pytest.raises(BabelError, match="continual.tokens=500 exceeds the 10 go"):
        check_feasible(c, {"python": 5000, "php": 5000, "go": 10})
    with pytest.raises(BabelError, match="no php training tokens"):
        check_feasible(c, {"python": 5000, "go": 5000})


def test_original_corpus_is_natural_and_exact():
    c = cfg()
    o = original_corpus(c, {"python": 6000, "php": 3000, "go": 1000, "rust": 99999})
    assert sum(o.values()) == 3000 and set(o) == {"python", "php", "go"}
    assert o["python"] == 1800 and o["php"] == 900 and o["go"] == 300


def test_natural_is_the_original_corpus_and_equals_optimized_when_nothing_is_cut():
    """The comparison's "natural" is the corpus Algorithm 1 cuts (scratch.original's
    shape), not the train split's distribution: when Algorithm 1 keeps every language,
    optimized and natural have the same shares (and so share their runs)."""
    from babeltower.experiment.analysis import baseline_mixtures, optimized_mixture
    from babeltower.experiment.pipeline import _round_shares

    c = cfg(scratch={"tokens": 3000, "seeds": [0, 1], "original": {"python": 1, "php": 2, "go": 3}})
    available = {"python": 6000, "php": 3000, "go": 1500}
    o = original_corpus(c, available)
    assert o == {"python": 500, "php": 1000, "go": 1500}
    nat = baseline_mixtures(c, available, o)["natural"]
    assert nat["shares"] == pytest.approx({"python": 1 / 6, "php": 2 / 6, "go": 3 / 6})
    with pytest.raises(BabelError, match="go 1500 > 1000 tokens"):
        original_corpus(c, {**available, "go": 1000})
    kept = optimized_mixture({"budgets": dict(o)}, o)
    assert _round_shares(kept["shares"]) == _round_shares(nat["shares"])


def test_performance_falls_back_to_bpb_when_cloze_is_flat():
    c = cfg()
    rows = [{"tokens": t, "cloze_new": {"php": 0.0 if t != 8 else 0.01},
             "bpb": {"php": 4.0 - 0.1 * i}} for i, t in enumerate([0, 1, 2, 4, 8, 16, 32, 64])]
    pc = performance_curve(c, rows, "php")
    assert "bits per byte" in pc.label and pc.y[0] == -4.0 and pc.y[-1] > pc.y[0]
    assert pc.measure == "bpb" and pc.noise is None     # no bpb_se recorded: no noise model
    with_se = [{**r, "bpb_se": {"php": 0.01}} for r in rows]
    assert list(performance_curve(c, with_se, "php").noise.se) == [0.01] * len(rows)
    rising = [{"tokens": r["tokens"], "cloze_new": {"php": 0.05 * i}, "bpb": r["bpb"],
               "cloze_new_n": {"php": 100}} for i, r in enumerate(rows)]
    pc = performance_curve(c, rising, "php")
    assert "cloze" in pc.label and pc.measure == "cloze" and list(pc.noise.trials) == [100] * len(rows)
    # the same rising curve without the prompt counts behind it cannot be tested
    blind = [{k: v for k, v in r.items() if k != "cloze_new_n"} for r in rising]
    assert "no prompt counts" in performance_curve(c, blind, "php").label


def test_t_interval_matches_student_t():
    m, lo, hi = t_interval([1.0, 3.0])
    assert m == 2.0 and math.isclose(hi - m, 12.706 * 1.0, rel_tol=1e-3)
    assert math.isnan(t_interval([1.0])[1])


def _run(mixture, seed, bpb):
    return {"mixture": mixture, "seed": seed, "protocol": "equal_tokens", "tokens": 3000,
            "checkpoints": [{"bpb": {"python": bpb, "php": bpb + 1, "go": bpb + 2},
                             "cloze_new": {"php": 0.1, "go": 0.2}}]}


def test_comparison_pairs_by_seed_and_ranks():
    c = cfg()
    runs = [_run("natural", 0, 3.0), _run("natural", 1, 3.2),
            _run("uniform", 0, 2.9), _run("uniform", 1, 3.1)]
    out = compare(c, runs)
    rows = {(t["mixture"], t["language"], t["measure"]): t for t in out["equal_tokens"]}
    u = rows[("uniform", "mean", "bpb")]
    assert math.isclose(u["mean"], 4.0) and u["n_seeds"] == 2
    # the paired difference is exactly -0.1 for both seeds: zero-width interval
    assert math.isclose(u["diff_vs_natural"], -0.1) and math.isclose(u["diff_ci_low"], -0.1)
    assert out["best_equal_tokens"] == "uniform"
    assert rows[("natural", "php", "cloze_new")]["mean"] == 0.1


def test_comparison_adjusts_p_values_over_the_family():
    c = cfg()
    runs = [_run("natural", s, 3.0 + 0.1 * s) for s in range(3)]
    # uniform: bpb lower by 0.1, 0.2, 0.3 (mean and php/go/python all the same diffs)
    runs += [_run("uniform", s, 2.9 + 0.0 * s) for s in range(3)]
    runs += [_run("unimax", s, 3.0 + 0.1 * s + [0.05, -0.05, 0.1][s]) for s in range(3)]
    out = compare(c, runs)["equal_tokens"]
    fam = [t for t in out if t["mixture"] != "natural" and t["diff_p"] == t["diff_p"]]
    m = len(fam)
    assert m > 0 and all(t["family_size"] == m for t in fam)
    # Holm by hand over the family
    ps = sorted(t["diff_p"] for t in fam)
    running, expect = 0.0, {}
    for k, p in enumerate(ps):
        running = max(running, min(1.0, (m - k) * p))
        expect.setdefault(p, running)
    for t in fam:
        assert t["diff_p_holm"] == pytest.approx(expect[t["diff_p"]])
        assert t["diff_ci_low_simultaneous"] <= t["diff_ci_low"]
        assert t["diff_ci_high_simultaneous"] >= t["diff_ci_high"]
        assert "diffs" not in t


def test_answer_says_nothing_to_compare_when_optimized_is_natural():
    """A difference of exactly 0 between the same runs is no finding: the report's answer
    says the corpora are identical instead of 'not established'; with separate runs it
    reports the Holm-corrected difference."""
    from babeltower.report.sections import answer_section

    def row(mixture, diff=0.0, p=None):
        return {"mixture": mixture, "language": "mean", "measure": "bpb", "mean": 3.0 + diff,
                "ci_low": 2.9, "ci_high": 3.1, "n_seeds": 3, "tokens": 300, "diff_vs_natural": diff,
                "diff_ci_low": diff - 0.01, "diff_ci_high": diff + 0.01, "diff_p_holm": p}

    nat = [{"name": f"n{s}", "mixture": "natural", "seed": s} for s in range(3)]
    same = [{"name": f"n{s}", "mixture": "optimized", "seed": s, "same_run_as": f"n{s}"}
            for s in range(3)]
    results = {"comparison": {"equal_tokens": [row("natural"), row("optimized")]},
               "scratch_runs": nat + same, "algorithm1": {"languages": {}}}
    text = answer_section(results).text
    assert "Optimised = natural" in text and "Holm" not in text
    own = [{"name": f"o{s}", "mixture": "optimized", "seed": s} for s in range(3)]
    results = {**results, "scratch_runs": nat + own,
               "comparison": {"equal_tokens": [row("natural"), row("optimized", -0.05, 0.01)]}}
    text = answer_section(results).text
    assert "Optimised = natural" not in text and "survives Holm's correction" in text
