"""Knowledge-transfer share on hand-made result tables."""

import json

import pytest

from babeltower.errors import BabelError
from babeltower.analysis.statistics import wilson_interval
from babeltower.evaluate.transfer import (knowledge_transfer, load_results, load_series,
                                          primary_specific_subset, problem_key, transfer_share)

PRIMARY = {"a": True, "b": True, "c": True, "d": False, "e": True, "f": True}
NEW_ONLY = {"a": False, "b": False, "c": True, "d": False, "e": True}   # f missing


def test_subset_is_solved_by_primary_and_failed_by_new_only():
    # f is solved by the primary model but absent from the new-only results: unclassifiable
    assert primary_specific_subset(PRIMARY, NEW_ONLY) == {"a", "b"}


def test_share_per_checkpoint_by_hand():
    early = {"a": True, "b": True, "c": True, "d": False, "e": False}   # 2 of 3 in subset
    late = {"a": False, "b": False, "c": True, "d": True, "e": True}    # 0 of 3
    none = {"a": False, "b": False}
    df = knowledge_transfer(PRIMARY, NEW_ONLY, [("s1", 1, early), ("s2", 2, late), ("s0", none)])
    assert list(df.solved) == [3, 3, 0]
    assert list(df.solved_in_subset) == [2, 0, 0]
    assert df.share.iloc[0] == pytest.approx(2 / 3) and df.share.iloc[1] == 0.0
    assert df.share.isna().iloc[2]
    assert (df.subset_size == 2).all()
    assert df.share_lo95.iloc[0] < 2 / 3 < df.share_hi95.iloc[0]


def test_wilson_interval_known_value():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-3) and hi == pytest.approx(0.7634, abs=1e-3)
    assert wilson_interval(0, 0) == (None, None)


def test_problem_keys_line_up_humaneval_and_multipl_e():
    assert problem_key("HumanEval/12") == problem_key("HumanEval_12_longest") == "HumanEval_12"
    assert problem_key("bt_003_count_vowels") == "bt_003_count_vowels"


def _write_passk_dir(root, name, results, n=2):
    d = root / name
    d.mkdir(parents=True)
    per = [{"problem": p, "language": "php", "n": n, "correct": c} for p, c in results.items()]
    (d / "summary.json").write_text(json.dumps({"per_problem": per}))
    return d


def test_load_results_and_series_from_passk_output(tmp_path):
    _write_passk_dir(tmp_path / "run", "step-1", {"HumanEval_0_x": 1, "HumanEval_1_y": 0})
    _write_passk_dir(tmp_path / "run", "step-2", {"HumanEval_0_x": 2, "HumanEval_1_y": 2})
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"checkpoints": [
        {"checkpoint": "step-1", "step": 1}, {"checkpoint": "step-2", "step": 2}]}))
    series = load_series(tmp_path / "run")
    assert [s[0] for s in series] == ["step-1", "step-2"]
    assert series[0][2] == {"HumanEval_0": True, "HumanEval_1": False}
    # the threshold rule: 1 of 2 samples is not "solved" at 0.75
    strict = load_results(tmp_path / "run" / "step-1", solved_if=0.75)
    assert strict == {"HumanEval_0": False, "HumanEval_1": False}
    samples = tmp_path / "s.jsonl"
    samples.write_text("\n".join(json.dumps({"problem": "HumanEval/0", "status": s})
                                 for s in ("fail", "pass")))
    assert load_results(samples) == {"HumanEval_0": True}
    with pytest.raises(BabelError, match="not a pass@k output"):
        load_series(tmp_path)


def test_transfer_share_counts_only_solved_problems():
    s = transfer_share({"a", "b"}, {"a": True, "b": False, "x": True, "y": True})
    assert (s["solved"], s["solved_in_subset"]) == (3, 1)
    assert s["share"] == pytest.approx(1 / 3)
