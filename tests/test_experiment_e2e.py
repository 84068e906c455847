"""The whole experiment end to end on a tiny real corpus (one small real run).

Real code from this machine (CPython stdlib, libstdc++ headers, npm's JavaScript), a
nano model, two seeds: every stage of the pipeline runs for real. The assertions are
properties that a broken pipeline would violate.
"""

import json
import struct
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "e2e"))
from sources import make_source_tree  # noqa: E402

from babeltower.cli import main  # noqa: E402

pytestmark = pytest.mark.slow


def _config(tmp: Path, src: Path, **over) -> Path:
    cfg = {
        "name": "e2e", "workdir": str(tmp / "work"), "primary": "python",
        "new_languages": ["cpp", "javascript"],
        "corpus": {"fetch": False, "sources": [str(src)], "vocab_size": 1024},
        "model": {"preset": "nano", "seq_len": 64},
        "primary_phase": {"tokens": 40000, "lr": 3.0e-3, "batch_size": 8},
        "continual": {"tokens": 12000, "lr": 1.0e-3, "batch_size": 4},
        "evaluation": {"val_tokens_per_language": 1024},
        "probes": {"neuron_tokens_per_language": 1024},
        "scratch": {"tokens": 12000, "batch_size": 8, "seeds": [0, 1],
                    "mixtures": ["natural", "optimized", "uniform", "regmix"]},
        "regmix": {"proxies": 3, "proxy_tokens": 2048},
    }
    for k, v in over.items():
        cfg[k] = v
    p = tmp / "exp.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    src = tmp / "src"
    got = make_source_tree(src, max_bytes_per_language=250_000)
    assert set(got) == {"python", "cpp", "javascript"}, got
    cfg = _config(tmp, src)
    t0 = time.time()
    assert main(["experiment", str(cfg)]) == 0
    return tmp / "work", cfg, time.time() - t0


def _is_png(p: Path) -> bool:
    head = p.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    w, h = struct.unpack(">II", head[16:24])
    return w > 200 and h > 150


def test_report_and_results_written(experiment):
    work, _, _ = experiment
    report = work / "report.html"
    assert report.exists() and report.stat().st_size > 50_000
    html = report.read_text()
    for heading in ("Answer", "three stages", "logit lens", "LAPE", "Algorithm 1", "Mixtures",
                    "From-scratch comparison", "agrees or disagrees"):
        assert heading in html, heading
    pngs = sorted((work / "figures").glob("*.png"))
    names = {p.stem for p in pngs}
    for need in ("cpt_performance", "cpt_bpb", "working_language_cpp", "working_language_javascript",
                 "transfer_ratio", "calibration", "mixtures", "comparison_equal_tokens",
                 "comparison_equal_epochs"):
        assert need in names, need
    assert all(_is_png(p) for p in pngs)
    results = json.loads((work / "results.json").read_text())
    assert results["provenance"]["config_sha256"]
    assert results["provenance"]["versions"]["torch"]


def _checkpoint_rows(o):
    """Every checkpoint row anywhere in results.json (lists under a 'checkpoints' key)."""
    if isinstance(o, dict):
        for k, v in o.items():
            if k == "checkpoints" and isinstance(v, list) and v and isinstance(v[0], dict):
                yield from v
            else:
                yield from _checkpoint_rows(v)
    elif isinstance(o, list):
        for v in o:
            yield from _checkpoint_rows(v)


def test_every_checkpoint_row_key_is_declared_in_checkpoint_row(experiment, knowledge_experiment):
    from babeltower.results import CheckpointRow

    declared = set(CheckpointRow.__annotations__)
    for work in (experiment[0], knowledge_experiment):
        rows = list(_checkpoint_rows(json.loads((work / "results.json").read_text())))
        assert rows
        written = set().union(*rows)
        assert written <= declared, sorted(written - declared)


def test_continual_pretraining_learns_the_new_language(experiment):
    work, _, _ = experiment
    r = json.loads((work / "results.json").read_text())
    for lang in ("cpp", "javascript"):
        rows = r["cpt"][lang]["checkpoints"]
        assert len(rows) >= 6
        assert rows[0]["tokens"] == 0 and rows[-1]["tokens"] > rows[0]["tokens"]
        # the new language's held-out bpb falls; the model moves its preference to the new
        # identifiers at the output layer (false if training, probes or data were broken)
        assert rows[-1]["bpb"][lang] < rows[0]["bpb"][lang] - 0.3
        assert rows[-1]["lens_new_share_last"][lang] > rows[0]["lens_new_share_last"][lang]
        n_layers = len(rows[0]["lens_layers"][lang]["new_pref_share"])
        assert n_layers == 7  # embeddings + 6 blocks of the nano preset
        assert all(isinstance(r["transfer_count"][lang], int) for r in rows)
        assert sum(rows[-1]["specific_count"].values()) > 0


def test_algorithm1_and_comparison_are_consistent(experiment):
    work, _, _ = experiment
    r = json.loads((work / "results.json").read_text())
    alg = r["algorithm1"]
    for lang, d in alg["languages"].items():
        assert d["target_tokens"] <= d["available"], lang   # never up-sampled
    mixtures = r["mixtures"]
    assert {"natural", "optimized", "uniform", "regmix"} <= set(mixtures)
    for m in mixtures.values():
        assert abs(sum(m["shares"].values()) - 1) < 1e-6
    comp = r["comparison"]
    eq = [t for t in comp["equal_tokens"] if t["measure"] == "bpb" and t["language"] == "mean"]
    assert {t["mixture"] for t in eq} == {"natural", "optimized", "uniform", "regmix"}
    assert all(t["n_seeds"] == 2 for t in eq)
    nat = next(t for t in eq if t["mixture"] == "natural")
    assert nat["diff_vs_natural"] == 0.0
    assert comp["best_equal_tokens"] == min(eq, key=lambda t: t["mean"])["mixture"]
    assert comp["equal_epochs"]


def test_rerun_skips_finished_steps(experiment, capsys):
    work, cfg, first = experiment
    before = (work / "results.json").read_text()
    t0 = time.time()
    assert main(["experiment", str(cfg)]) == 0
    assert time.time() - t0 < max(30.0, first / 4)
    err = capsys.readouterr().err
    assert "skipped" in err and "finished in" not in err.replace("report", "")
    after = json.loads((work / "results.json").read_text())
    assert after["comparison"] == json.loads(before)["comparison"]


def test_unmeetable_budget_fails_before_training(tmp_path, capsys):
    src = tmp_path / "src"
    make_source_tree(src, max_bytes_per_language=60_000)
    cfg = _config(tmp_path, src, primary_phase={"tokens": 10 ** 9, "lr": 1e-3})
    assert main(["experiment", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and "exceeds" in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "work" / "runs").exists()


# ---- the default experiment's shape: knowledge benchmark, replay arm, even checkpoints ----
@pytest.fixture(scope="module")
def knowledge_experiment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kexp")
    src = tmp / "src"
    make_source_tree(src, max_bytes_per_language=150_000)
    cfg = _config(
        tmp, src, new_languages=["javascript"],
        corpus={"fetch": False, "sources": [str(src)], "vocab_size": 1024,
                "validation": 0.1, "test": 0.1,
                "knowledge": {"facts_per_class": 10, "exposures": 12, "n_answers": 5}},
        continual={"tokens": 12000, "lr": 1.0e-3, "batch_size": 4, "min_lr_ratio": 1.0,
                   "checkpoints": "even", "n_checkpoints": 8, "replay_share": 0.25,
                   "seeds": [0, 1, 2], "replay_without_facts": True},
        evaluation={"val_tokens_per_language": 1024, "performance": "knowledge",
                    "primary_loss_every": 3, "power_sims": 20},
        probes={"neurons": False},
        scratch={"tokens": 8000, "batch_size": 8, "seeds": [0, 1], "equal_epochs": False,
                 "mixtures": ["natural", "optimized"], "original": {"python": 0.3, "javascript": 0.7}})
    assert main(["experiment", str(cfg)]) == 0
    return tmp / "work"


def test_knowledge_replay_and_stage_test_reach_results_and_report(knowledge_experiment):
    work = knowledge_experiment
    r = json.loads((work / "results.json").read_text())
    assert r["version"] == 3
    rows = r["cpt"]["javascript"]["checkpoints"]
    assert len(rows) == 9                                   # step 0 + 8 even checkpoints
    # the new language's bpb at every checkpoint, the primary's on every 3rd and the last;
    # the replay arm's at its ends
    assert all("javascript" in r["bpb"] for r in rows)
    assert [i for i, r in enumerate(rows) if "python" in r["bpb"]] == [0, 3, 6, 8]
    replay_rows = r["cpt_replay"]["javascript"]["checkpoints"]
    assert [i for i, x in enumerate(replay_rows) if "bpb" in x] == [0, len(replay_rows) - 1]
    assert all("knowledge" in x for x in replay_rows)
    curves = rows[-1]["knowledge"]["curves"]
    classes = {(c["class"], c["language"]) for c in curves}
    for cls in ("primary-only", "shared", "new-only"):
        assert (cls, "javascript") in classes, cls
    assert all(0 <= c["k"] <= c["n"] and c["n"] > 0 for c in curves)
    # the replay arm trained on both languages, the other on the new language only
    assert r["cpt_replay"]["javascript"]["budgets"]["python"] > 0
    assert set(r["cpt"]["javascript"]["budgets"]) == {"javascript"}
    rep = r["replay"]["javascript"]
    assert rep["no_replay"]["transfer_stage"]["call"] in ("rise_then_drop", "monotone", "flat",
                                                          "undetermined")
    st = r["stages"]["javascript"]
    assert st["performance_measure"].startswith("knowledge")
    assert st["performance"]["call"] in ("rise_then_drop", "monotone", "flat", "undetermined")
    # every CPT arm ran over three data-order seeds, each with per-item outcomes at every
    # checkpoint; the call pools the seeds (item-level test), one call per seed beside it
    meta = r["knowledge_items"]
    for arm in ("cpt", "cpt_replay"):
        seeds = r[arm]["javascript"]["seeds"]
        assert [s["seed"] for s in seeds] == [0, 1, 2]
        for s in seeds:
            assert len(s["checkpoints"]) == 9
            full = arm == "cpt" and s["seed"] == 0
            for i, row in enumerate(s["checkpoints"]):
                items = row["knowledge"]["items"]
                assert len(items["correct"]) == len(meta) == len(items["logprob_answer_set"])
                ends = i in (0, len(s["checkpoints"]) - 1)
                # the first no-replay seed scores every item everywhere; the other runs
                # the new language's taught items everywhere and everything at the ends
                assert set(items["correct"]) <= ({0, 1} if full or ends else {-1, 0, 1})
                scored = {m["language"] for m, c in zip(meta, items["correct"]) if c >= 0}
                assert scored == {"python", "javascript"} if full or ends else {"javascript"}
    # the replay arm without fact documents re-shows no primary-only fact; the replay arm
    # with them does; exposures are counted from each run's own sampler
    exp = {a: r[a]["javascript"]["seeds"][0]["exposures"]["by_language_class"]
           for a in ("cpt", "cpt_replay", "cpt_replay_nofacts")}
    assert exp["cpt_replay_nofacts"]["python/primary-only"]["max"] == 0
    assert exp["cpt_replay"]["python/primary-only"]["total"] > 0
    assert "python/primary-only" not in exp["cpt"] or exp["cpt"]["python/primary-only"]["max"] == 0
    assert r["primary_exposures"]["by_language_class"]["python/primary-only"]["min"] > 0
    assert set(r["replay"]["javascript"]) >= {"no_replay", "replay", "replay_nofacts"}
    it = st["item_test"]
    assert it["n_seeds"] == 3 and len(it["per_seed"]) == 3
    assert {"p_items", "p_seeds", "seed_drops"} <= set(it["pooled"])
    assert st["performance"]["p_value"] == max(it["pooled"]["p_items"], it["pooled"]["p_seeds"])
    assert st["binomial_model"]["assumption"]
    assert 0 <= st["power"]["effect"]["pooled"]["rate"] <= 1
    assert set(st["power"]["fitted_churn"]["model"]) >= {"item", "churn", "cluster", "seed"}
    assert len(st["transfer"]["per_seed"]) == 3
    curves = r["seed_curves"]["none"]["javascript"]
    assert set(r["seed_curves"]) == {"none", "replay", "replay_nofacts"}
    c = curves["primary-only asked in javascript"]
    assert len(c["per_seed"]) == 3 and len(c["ci95"][0]) == 9
    # benchmark v2: both key variants and the decoy side by side, the never-taught class,
    # per-fact agreement at every checkpoint and the nulls
    assert {"primary-only asked in javascript (same key)",
            "primary-only asked in javascript (mapped key)",
            "primary-only asked in javascript (decoy key)",
            "never-taught asked in javascript"} <= set(curves)
    kc = r["knowledge_controls"]["javascript"]
    assert {a["checkpoint"] for a in kc["agreement"]} == {x["checkpoint"] for x in rows}
    a0 = kc["agreement"][0]
    assert {"p_b_given_right_a", "p_b_given_wrong_a", "difference", "same_wrong",
            "spearman"} <= set(a0)
    assert any(n["never_taught_n"] for n in kc["nulls"])
    assert all(x["knowledge"]["eos"] for x in rows)
    assert st["bpb_item_test"]["pooled"]["call"] in ("rise_then_drop", "monotone", "flat",
                                                     "undetermined")
    # Algorithm 1 never drops a language, the original corpus has the configured shape
    alg = r["algorithm1"]["languages"]["javascript"]
    assert alg["target_tokens"] > 0
    orig = r["original_corpus"]
    assert orig["javascript"] > orig["python"]
    assert any(t["measure"] == "transfer" for t in r["comparison"]["equal_tokens"])
    html = (work / "report.html").read_text()
    for heading in ("Controlled knowledge", "Replay control", "Stage test"):
        assert heading in html, heading
    assert _is_png(work / "figures" / "knowledge.png")
    assert _is_png(work / "figures" / "specific_javascript.png")
