"""Algorithm 1, Eq. 1 and the calibration table with hand-computed numbers."""

import numpy as np
import pytest

from babeltower.errors import BabelError
from babeltower.mixture.optimize import (CPTCurve, algorithm1, calibration_table,
                                         read_cpt_runs, system_proportion)
from babeltower.mixture.spec import MixtureSpec

TOKENS = [0] + [1000 * 2 ** k for k in range(13)]                      # 14 checkpoints


def loss_curve(n=14):
    # 4.0 at the start, falling to 2.0, flat at 2.0 over the last 4 checkpoints (beta = 2.0)
    return [4.0, 3.6, 3.3, 3.0, 2.8, 2.5, 2.3, 2.15, 2.05, 2.02, 2.0, 2.0, 2.0, 2.0][:n]


def peaked(at):
    """Performance rising to 0.5 at index `at`, then falling to 0.3 and flat."""
    i = np.arange(14)
    return np.where(i <= at, 0.5 * i / at, np.maximum(0.3, 0.5 - 0.05 * (i - at))).tolist()


def test_system_proportion_eq1():
    assert system_proportion(3.0, 4.0, 2.0) == 0.5
    assert system_proportion(2.5, 4.0, 2.0) == 0.75
    assert system_proportion(1.5, 4.0, 2.0) == 1.0    # below beta: clipped
    assert system_proportion(4.5, 4.0, 2.0) == 0.0
    with pytest.raises(BabelError, match="alpha"):
        system_proportion(3.0, 2.0, 2.0)


def test_algorithm1_hand_computed():
    runs = {
        # best at index 3: loss 3.0 -> P* = (4-3)/(4-2) = 0.5 -> eta = eta_p * 1
        "php": CPTCurve(TOKENS, loss_curve(), peaked(3)),
        # best at index 5: loss 2.5 -> P* = 0.75 -> eta = 3 eta_p = 33000 -> capped: keep 16000
        "csharp": CPTCurve(TOKENS, loss_curve(), peaked(5)),
        # best at index 2: loss 3.3 -> P* = 0.35 -> eta = 11000 * 0.35/0.65 = 5923.08
        "go": CPTCurve(TOKENS, loss_curve(), peaked(2)),
        # performance only rises: monotone -> keeps all
        "cpp": CPTCurve(TOKENS, loss_curve(), np.linspace(0, 0.6, 14).tolist()),
    }
    avail = {"python": 11000, "php": 23000, "csharp": 16000, "go": 11000, "cpp": 28000,
             "rust": 500}
    r = algorithm1(runs, avail, primary="python")
    d = r.decisions
    assert d["php"].alpha == 4.0 and d["php"].beta == 2.0
    assert d["php"].best_index == 3 and d["php"].best_tokens == 4000
    assert d["php"].p_star == pytest.approx(0.5)
    assert d["php"].target_tokens == 11000
    assert d["php"].stage_kind == "three-stage"
    assert d["csharp"].p_star == pytest.approx(0.75) and d["csharp"].target_tokens == 16000
    assert "never up-sampled" in d["csharp"].reason
    assert d["go"].p_star == pytest.approx(0.35)
    assert d["go"].target_tokens == round(11000 * 0.35 / 0.65) == 5923
    assert d["cpp"].stage_kind == "monotone" and d["cpp"].target_tokens == 28000
    assert d["rust"].target_tokens == 500 and "no CPT run" in d["rust"].reason
    assert d["python"].target_tokens == 11000
    # a smaller primary budget scales the targets (eta_t is proportional to eta_p)
    r2 = algorithm1(runs, avail, primary="python", primary_tokens=5500)
    assert r2.decisions["php"].target_tokens == 5500
    assert r2.decisions["python"].target_tokens == 5500

    spec = r.to_mixture()
    assert spec.name == "optimized" and not spec.allow_repeat
    assert spec.resolve(avail) == r.budgets
    assert spec.meta["languages"]["php"]["p_star"] == pytest.approx(0.5)
    assert MixtureSpec.model_validate(spec.model_dump(mode="json")) == spec
    df = r.to_dataframe()
    assert df.loc["go", "target_tokens"] == 5923


def test_algorithm1_errors():
    runs = {"php": CPTCurve(TOKENS, loss_curve(), peaked(3))}
    with pytest.raises(BabelError, match="primary language"):
        algorithm1(runs, {"php": 10}, primary="python")
    with pytest.raises(BabelError, match="no go"):
        algorithm1({"go": runs["php"]}, {"python": 10, "php": 10}, primary="python")
    with pytest.raises(BabelError, match="exceeds"):
        algorithm1(runs, {"python": 10, "php": 10}, primary="python", primary_tokens=20)
    with pytest.raises(BabelError, match="equal length"):
        CPTCurve([0, 1, 2], [3.0, 2.0])


def test_calibration_table():
    c = CPTCurve(TOKENS, loss_curve(), peaked(3))
    p = [(4.0 - v) / 2.0 for v in loss_curve()]
    t = calibration_table(c, p)
    assert t.pearson == pytest.approx(1.0) and t.rmse == pytest.approx(0.0, abs=1e-12)
    shifted = calibration_table(c, [min(1.0, v + 0.1) for v in p])
    assert 0.05 < shifted.rmse < 0.1
    partial = calibration_table(c, {0: 0.0, 4000: 0.4, 1024000: 0.95})
    assert list(partial.rows["p_loss"]) == pytest.approx([0.0, 0.5, 1.0])
    assert partial.rmse == pytest.approx(np.sqrt((0.1 ** 2 + 0.05 ** 2) / 3))
    assert partial.spearman == pytest.approx(1.0)


def test_read_cpt_runs_csv_and_json(tmp_path):
    lines = ["language,step,tokens,loss,performance"]
    for i, (t, lo, pf) in enumerate(zip(TOKENS, loss_curve(), peaked(3))):
        lines.append(f"PHP,{i},{t},{lo},{pf}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    runs = read_cpt_runs(tmp_path / "m.csv")
    assert list(runs) == ["php"] and runs["php"].steps[3] == 3
    assert runs["php"].loss[3] == 3.0
    (tmp_path / "m.json").write_text('{"runs": {"go": {"tokens": [0, 1], "loss": [3, 2]}}}')
    go = read_cpt_runs(tmp_path / "m.json")["go"]
    assert list(go.performance) == [-3, -2]
    (tmp_path / "bad.csv").write_text("language,loss\nphp,3\n")
    with pytest.raises(BabelError, match="tokens"):
        read_cpt_runs(tmp_path / "bad.csv")


def test_target_range_and_loss_that_never_fell():
    runs = {"php": CPTCurve(TOKENS, loss_curve(), peaked(3)),
            "go": CPTCurve(TOKENS, [3.0] * 14, peaked(3))}
    r = algorithm1(runs, {"python": 11000, "php": 23000, "go": 9000}, primary="python")
    # neighbours of c* = 3: losses 3.3 (P 0.35 -> 5923) and 2.8 (P 0.6 -> 16500)
    assert r.decisions["php"].target_range == [5923, 16500]
    assert r.decisions["go"].target_tokens == 9000
    assert "did not fall" in r.decisions["go"].reason


def test_eq2_inverts_algorithm1():
    """Algorithm 1 solves Eq. 2 for eta_t: plugging the target back gives P* again."""
    from babeltower.mixture.optimize import mixed_corpus_share

    runs = {"php": CPTCurve(TOKENS, loss_curve(), peaked(3)),
            "go": CPTCurve(TOKENS, loss_curve(), peaked(2))}
    r = algorithm1(runs, {"python": 11000, "php": 23000, "go": 11000}, primary="python")
    for lang in ("php", "go"):
        d = r.decisions[lang]
        assert mixed_corpus_share(d.target_tokens, d.eta_p) == pytest.approx(d.p_star, abs=1e-4)
    with pytest.raises(BabelError):
        mixed_corpus_share(0, 0)
