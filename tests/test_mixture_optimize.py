"""Algorithm 1 (with its guard rails), Eq. 1 and the calibration table with hand-computed
numbers."""

import numpy as np
import pytest

from babeltower.errors import BabelError
from babeltower.analysis.stages import StageOptions
from babeltower.mixture.calibration import calibration_table
from babeltower.mixture.curves import CPTCurve, estimate_beta, read_cpt_runs, system_proportion
from babeltower.mixture.optimize import Algorithm1Options, algorithm1
from babeltower.mixture.spec import MixtureSpec

TOKENS = [0] + [1000 * 2 ** k for k in range(13)]                      # 14 checkpoints
# the paper's numbers by hand: beta = mean of the last 3 losses (2.0), no floor
HAND = Algorithm1Options(beta="last_k", floor_fraction=0.0, stage=StageOptions(n_bootstrap=99))


def curve(loss, perf, trials=400):
    """A CPT curve whose performance is an accuracy over ``trials`` prompts per checkpoint."""
    return CPTCurve(TOKENS, loss, perf, trials=trials)


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
        "php": curve(loss_curve(), peaked(3)),
        # best at index 5: loss 2.5 -> P* = 0.75 -> eta = 3 eta_p = 33000 -> capped: keep 16000
        "csharp": curve(loss_curve(), peaked(5)),
        # best at index 2: loss 3.3 -> P* = 0.35 -> eta = 11000 * 0.35/0.65 = 5923.08
        "go": curve(loss_curve(), peaked(2)),
        # performance only rises: monotone -> keeps all
        "cpp": curve(loss_curve(), np.linspace(0, 0.6, 14).tolist()),
    }
    avail = {"python": 11000, "php": 23000, "csharp": 16000, "go": 11000, "cpp": 28000,
             "rust": 500}
    r = algorithm1(runs, avail, primary="python", options=HAND)
    d = r.decisions
    assert d["php"].alpha == 4.0 and d["php"].beta == 2.0
    assert d["php"].best_index == 3 and d["php"].best_tokens == 4000
    assert d["php"].p_star == pytest.approx(0.5)
    assert d["php"].target_tokens == 11000
    assert d["php"].stage_call == "rise_then_drop" and d["php"].stage_p_value <= 0.05
    assert d["csharp"].p_star == pytest.approx(0.75) and d["csharp"].target_tokens == 16000
    assert "never up-sampled" in d["csharp"].reason
    assert d["go"].p_star == pytest.approx(0.35)
    assert d["go"].target_tokens == round(11000 * 0.35 / 0.65) == 5923
    assert d["cpp"].stage_call == "monotone" and d["cpp"].target_tokens == 28000
    assert d["rust"].target_tokens == 500 and "no CPT run" in d["rust"].reason
    assert d["python"].target_tokens == 11000
    # a smaller primary budget scales the targets (eta_t is proportional to eta_p)
    r2 = algorithm1(runs, avail, primary="python", primary_tokens=5500, options=HAND)
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
    runs = {"php": curve(loss_curve(), peaked(3))}
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
    t = calibration_table(c, p, beta="last_k")
    assert t.pearson == pytest.approx(1.0) and t.rmse == pytest.approx(0.0, abs=1e-12)
    shifted = calibration_table(c, [min(1.0, v + 0.1) for v in p], beta="last_k")
    assert 0.05 < shifted.rmse < 0.1
    partial = calibration_table(c, {0: 0.0, 4000: 0.4, 1024000: 0.95}, beta="last_k")
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
    runs = {"php": curve(loss_curve(), peaked(3)), "go": curve([3.0] * 14, peaked(3))}
    r = algorithm1(runs, {"python": 11000, "php": 23000, "go": 9000}, primary="python",
                   options=HAND)
    # neighbours of c* = 3: losses 3.3 (P 0.35 -> 5923) and 2.8 (P 0.6 -> 16500)
    assert r.decisions["php"].target_range == [5923, 16500]
    assert r.decisions["go"].target_tokens == 9000
    assert "did not fall" in r.decisions["go"].reason


def test_eq2_inverts_algorithm1():
    """Algorithm 1 solves Eq. 2 for eta_t: plugging the target back gives P* again."""
    from babeltower.mixture.curves import mixed_corpus_share

    runs = {"php": curve(loss_curve(), peaked(3)), "go": curve(loss_curve(), peaked(2))}
    r = algorithm1(runs, {"python": 11000, "php": 23000, "go": 11000}, primary="python",
                   options=HAND)
    for lang in ("php", "go"):
        d = r.decisions[lang]
        assert mixed_corpus_share(d.target_tokens, d.eta_p) == pytest.approx(d.p_star, abs=1e-4)
    with pytest.raises(BabelError):
        mixed_corpus_share(0, 0)


# ---- guard rails ------------------------------------------------------------------------
def test_a_curve_that_only_falls_never_gets_zero_tokens():
    """The old Algorithm 1 took c* = checkpoint 0 (P* = 0, target 0 tokens) here."""
    falling = np.linspace(0.5, 0.1, 14).tolist()
    r = algorithm1({"php": curve(loss_curve(), falling)}, {"python": 11000, "php": 23000},
                   primary="python", options=HAND)
    d = r.decisions["php"]
    assert d.stage_call == "undetermined" and d.target_tokens == 23000
    assert "keeps all data" in d.reason


def test_the_floor_binds_and_says_so():
    # best at index 1: loss 3.6 -> P* = 0.2 -> eta = 1000 * 0.25 = 250 < 5% of 23000 = 1150
    r = algorithm1({"php": curve(loss_curve(), peaked(1))}, {"python": 1000, "php": 23000},
                   primary="python", options=Algorithm1Options(
                       beta="last_k", stage=StageOptions(n_bootstrap=99)))
    d = r.decisions["php"]
    assert d.p_star == pytest.approx(0.2) and d.eta_t_unclipped == pytest.approx(250)
    assert d.floor_tokens == 1150 and d.target_tokens == 1150 and d.floor_bound
    assert "floor bound" in d.reason


def test_low_confidence_and_untested_calls_keep_all():
    noisy = curve(loss_curve(), peaked(3), trials=400)
    strict = Algorithm1Options(beta="last_k", p_threshold=0.001,
                               stage=StageOptions(n_bootstrap=99))
    d = algorithm1({"php": noisy}, {"python": 11000, "php": 23000}, "python",
                   options=strict).decisions["php"]
    # with 99 replicates the smallest p-value is 0.01 > 0.001: the call is not trusted
    assert d.stage_call == "rise_then_drop" and d.target_tokens == 23000
    assert "p_threshold" in d.reason
    blind = CPTCurve(TOKENS, loss_curve(), peaked(3))     # no trials, no standard error
    d = algorithm1({"php": blind}, {"python": 11000, "php": 23000}, "python",
                   options=HAND).decisions["php"]
    assert d.stage_call is None and d.target_tokens == 23000 and "uncertainty" in d.reason


def test_c_star_is_inside_the_translation_stage_not_the_global_argmax():
    # rise to 0.35 at index 4, dip to 0.2, recover to 0.45 at the end (global argmax 13)
    perf = np.interp(np.arange(14), [0, 4, 7, 13], [0.05, 0.35, 0.20, 0.45]).tolist()
    d = algorithm1({"php": curve(loss_curve(), perf, trials=1000)},
                   {"python": 11000, "php": 23000}, "python", options=HAND).decisions["php"]
    assert d.stage_call == "rise_then_drop" and d.best_index == 4
    assert d.p_star == pytest.approx((4.0 - 2.8) / 2.0)


def test_beta_is_a_fitted_asymptote_with_an_interval_carried_to_p_star_and_eta_t():
    t = np.linspace(0, 1, 14)
    loss = 2.0 + 2.0 * np.exp(-2.0 * t)       # still falling at the end: converges to 2.0
    c = CPTCurve(t * 1e6, loss, peaked(3), trials=400,
                 loss_se=0.01)
    noisy = loss + np.random.default_rng(0).normal(0, 0.01, 14)
    b = estimate_beta(CPTCurve(t * 1e6, noisy, loss_se=0.01))
    assert abs(b.value - 2.0) < 3 * b.se and 0 < b.se < 0.2
    # the mean of the last 3 losses sits above the asymptote (the curve has not converged)
    assert estimate_beta(c, "last_k").value > estimate_beta(c).value + 0.2
    r = algorithm1({"php": CPTCurve(t * 1e6, noisy, peaked(3), trials=400, loss_se=0.01)},
                   {"python": 11000, "php": 23000}, "python",
                   options=Algorithm1Options(stage=StageOptions(n_bootstrap=99)))
    d = r.decisions["php"]
    lo, hi = d.p_star_interval
    assert d.beta_method == "fit_exp" and lo < d.p_star < hi
    # P* and eta_t at beta's interval ends, by hand (P* rises with beta)
    assert lo == pytest.approx((d.alpha - d.best_loss) / (d.alpha - (d.beta - 1.96 * d.beta_se)),
                               rel=1e-3)
    assert d.target_interval[0] <= d.target_tokens <= d.target_interval[1]
    assert d.target_interval[0] == round(11000 * lo / (1 - lo))
    tail = estimate_beta(CPTCurve(TOKENS, loss_curve(), peaked(3)), "tail", tail_from=256000)
    assert tail.value == pytest.approx(np.mean([2.02, 2.0, 2.0, 2.0, 2.0])) and tail.se > 0
