"""Knowledge evaluation: per-query scoring checked against an independent unbatched forward
pass, curves and transfer shares checked against counts done by hand, and the three
classes behaving as defined on a tiny primary-only model trained here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from babeltower.corpus.knowledge import (KnowledgeConfig, load_facts, make_documents,
                                         write_knowledge)
from babeltower.evaluate.knowledge import (CURVE_BY, ROW_SCHEMA, knowledge_curves,
                                           knowledge_items, transfer_shares)

# ------------------------------------------------------------------ hand-counted series


def _row(fact, cls, lang, side, correct, target="php", split="test"):
    return {"query": f"q-{fact}-{lang}", "fact": fact, "class": cls,
            "target": None if cls == "primary-only" else target, "language": lang,
            "side": side, "form": "definition", "split": split, "correct": correct}


def _checkpoint(po_new, sh_new, no_new, po_py, sh_py, no_py):
    rows = []
    for cls, new, py in (("primary-only", po_new, po_py), ("shared", sh_new, sh_py),
                         ("new-only", no_new, no_py)):
        for i, (c_new, c_py) in enumerate(zip(new, py)):
            fact = f"{cls}-{i}"
            rows.append(_row(fact, cls, "php", "new", c_new))
            rows.append(_row(fact, cls, "python", "primary", c_py))
    return rows


SERIES = [
    # checkpoint, step, php outcomes (po x4, shared x2, new-only x2), python outcomes
    ("step-0", 0, _checkpoint([1, 1, 0, 0], [1, 0], [0, 0], [1, 1, 1, 0], [1, 1], [0, 1])),
    ("step-10", 10, _checkpoint([0, 0, 0, 0], [1, 1], [1, 1], [1, 0, 0, 0], [1, 0], [0, 0])),
    ("step-20", 20, _checkpoint([0, 0, 0, 0], [0, 0], [0, 0], [0, 0, 0, 0], [0, 0], [0, 0])),
]


def _wilson_by_hand(k, n):
    # Wilson score interval, z = 1.96, written out from its textbook formula
    z2 = 1.96 ** 2
    centre = (k + z2 / 2) / (n + z2)
    half = 1.96 * math.sqrt(n) / (n + z2) * math.sqrt(k / n * (1 - k / n) + z2 / (4 * n))
    return centre - half, centre + half


def test_transfer_share_matches_hand_counts():
    df = transfer_shares(SERIES).set_index("checkpoint")
    # step-0: php solved = 2 primary-only + 1 shared + 0 new-only = 3; share 2/3
    r = df.loc["step-0"]
    assert (r.queries, r.solved, r.solved_primary_only) == (8, 3, 2)
    assert r.share == pytest.approx(2 / 3)
    lo, hi = _wilson_by_hand(2, 3)
    assert (r.share_lo95, r.share_hi95) == (pytest.approx(lo), pytest.approx(hi))
    assert r.share_lo95 == pytest.approx(0.2077, abs=1e-4)   # hand: 0.57309 - 0.36543
    assert r.share_at_chance == pytest.approx(4 / 8)
    # step-10: 0 primary-only among 4 solved
    r = df.loc["step-10"]
    assert (r.solved, r.solved_primary_only, r.share) == (4, 0, 0.0)
    assert r.share_hi95 == pytest.approx(_wilson_by_hand(0, 4)[1])
    # step-20: nothing solved -> no share
    r = df.loc["step-20"]
    assert r.solved == 0 and (r.share is None or math.isnan(r.share))
    assert list(df["language"]) == ["php"] * 3     # only new-language queries count


def test_curves_match_hand_counts():
    df = knowledge_curves(SERIES, n_answers=4)
    got = {(r.checkpoint, r["class"], r.language): (r.k, r.n) for _, r in df.iterrows()}
    assert got[("step-0", "primary-only", "php")] == (2, 4)
    assert got[("step-0", "primary-only", "python")] == (3, 4)
    assert got[("step-0", "new-only", "python")] == (1, 2)
    assert got[("step-10", "shared", "php")] == (2, 2)
    assert got[("step-10", "primary-only", "python")] == (1, 4)
    assert got[("step-20", "shared", "python")] == (0, 2)
    assert len(got) == 3 * 3 * 2                   # checkpoint x class x query language
    r = df[(df.checkpoint == "step-0") & (df["class"] == "primary-only")
           & (df.language == "python")].iloc[0]
    assert r.accuracy == 0.75 and r.chance == 0.25 and r.target == "all"
    assert (r.lo95, r.hi95) == tuple(pytest.approx(x) for x in _wilson_by_hand(3, 4))
    # a query split is a filter: the test split holds every row here, validation none
    assert knowledge_curves(SERIES, split="validation").empty
    assert transfer_shares(dict((n, rows) for n, _, rows in SERIES)).shape[0] == 3


# ------------------------------------------------------------------ scoring vs by hand


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from tokenizer_fixtures import byte_level_bpe

    cfg = KnowledgeConfig(languages=["php"], facts_per_class=4, exposures=30, n_answers=4)
    kdir = write_knowledge(cfg, tmp_path_factory.mktemp("k") / "k")
    docs = [d["text"] for d in make_documents(load_facts(kdir)["facts"], cfg)]
    tok = byte_level_bpe(docs, 400)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    import torch

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)).eval()
    return model, fast, load_facts(kdir)


def test_items_match_an_unbatched_forward_pass(small):
    import torch

    model, tok, facts = small
    answer_ids = [tok.encode(a)[0] for a in facts["answers"]]
    for eos in (True, False):
        rows = knowledge_items(model, tok, facts, batch_size=5, eos=eos)   # uneven batches
        assert len(rows) == len(facts["queries"])
        for q, r in zip(facts["queries"], rows):
            ids = tok.encode(q["prefix"] + q["answer"])
            # as in the packed stream: the document's tokens after the previous EOS
            prompt = ([tok.convert_tokens_to_ids("<|endoftext|>")] if eos else []) + ids[:-1]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
            full = torch.log_softmax(logits, -1)
            on_set = torch.log_softmax(logits[answer_ids], -1)
            right = answer_ids.index(ids[-1])
            best_other = max(float(on_set[i]) for i in range(len(answer_ids)) if i != right)
            assert r["logprob"] == pytest.approx(float(full[ids[-1]]), abs=1e-4)
            assert r["logprob_answer_set"] == pytest.approx(float(on_set[right]), abs=1e-4)
            assert r["margin"] == pytest.approx(float(on_set[right]) - best_other, abs=1e-4)
            assert (r["margin"] > 0) == bool(r["correct"])
            assert r["correct"] == int(answer_ids[int(on_set.argmax())] == ids[-1])
            assert r["predicted"] == facts["answers"][int(on_set.argmax())]
            assert r["eos"] is eos and set(r) == set(ROW_SCHEMA)
            assert {k: r[k] for k in ("fact", "class", "key", "language", "form")} == \
                {k: q[k] for k in ("fact", "class", "key", "language", "form")}
    assert len(knowledge_items(model, tok, facts, split="validation")) == \
        sum(q["split"] == "validation" for q in facts["queries"])


# ------------------------------------------------------------------ a primary-only model


TINY_KNOWLEDGE = dict(primary="python", languages=["php"], facts_per_class=12, exposures=40,
                      n_answers=4, facts_per_document=4, seed=0, keys=["same"])


def _pack_primary(root: Path, facts: dict, cfg: KnowledgeConfig) -> Path:
    """Python-only packed data: the injected Python documents (primary-only + shared)."""
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    from babeltower.corpus.shards import ShardWriter, dtype_for_vocab, write_manifest
    from tokenizer_fixtures import byte_level_bpe

    docs = [d["text"] for d in make_documents(facts["facts"], cfg) if d["language"] == "python"]
    tok = byte_level_bpe(docs, 400)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(
        root / "tokenizer")
    eos, vocab = tok.token_to_id("<|endoftext|>"), tok.get_vocab_size()
    dtype = dtype_for_vocab(vocab)
    splits = {}
    for split, ds in {"train": docs, "validation": docs[:16]}.items():
        w = ShardWriter(root / "python" / split, dtype, eos)
        for d in ds:
            w.add(tok.encode(d).ids, len(d.encode()))
        splits[split] = w.close()
    write_manifest(root, {"languages": {"python": splits}, "eos_id": eos, "vocab_size": vocab,
                          "dtype": dtype.name, "tokenizer": "tokenizer"})
    # a 2-layer, 64-wide LLaMA: learns 24 facts in 160 steps (12/12 in a probe; 100 steps gave 5/12)
    LlamaConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, max_position_embeddings=64,
                eos_token_id=eos).to_json_file(root / "model.json")
    return root


@pytest.mark.slow
def test_classes_behave_as_defined_on_a_primary_only_model(tmp_path):
    from scipy.stats import binomtest

    from babeltower.cli import main
    from babeltower.train import TrainConfig, train

    cfg = KnowledgeConfig(**TINY_KNOWLEDGE)
    facts = load_facts(write_knowledge(cfg, tmp_path / "k"))
    data = _pack_primary(tmp_path / "data", facts, cfg)
    run = train(TrainConfig.from_dict(dict(
        model=str(data / "model.json"), data=str(data), out_dir=str(tmp_path / "run"),
        max_steps=160, seq_len=64, micro_batch_size=16, progress=False, peak_flops=1e11,
        optimizer={"lr": 3e-3}, eval={"tokens_per_language": 0},
        checkpoints={"log_spaced": False, "steps": [80]})))
    out = tmp_path / "knowledge.json"
    assert main(["eval", "knowledge", str(run), "--facts", str(tmp_path / "k/facts.json"),
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["chance"] == 0.25 and res["provenance"]["config"]["split"] is None
    # through the series runner: every checkpoint's weights hash recorded, resume state
    # removed once the output is written
    assert len(res["provenance"]["weights_sha256"]) == 3
    assert not (tmp_path / "knowledge.json.partial").exists()
    curves = {(r["step"], r["class"], r["language"]): (r["k"], r["n"]) for r in res["curves"]}
    assert {r["key"] for r in res["curves"]} == {"same"} and len(curves) == len(res["curves"])
    assert sorted({s for s, _, _ in curves}) == [0, 80, 160]
    for cls in ("primary-only", "shared", "new-only", "never-taught"):
        k, n = curves[(160, cls, "python")]
        p_above = binomtest(k, n, 0.25, alternative="greater").pvalue
        if cls in ("new-only", "never-taught"):   # not in this corpus: at chance
            assert binomtest(k, n, 0.25).pvalue > 0.01, (cls, k, n)
        else:                   # in the primary corpus, asked in a held-out form
            assert p_above < 1e-3, (cls, k, n)
        k0, n0 = curves[(0, cls, "python")]   # the untrained model knows nothing
        assert binomtest(k0, n0, 0.25).pvalue > 0.01, (cls, k0, n0)
    # the items are the curves' raw material: the counts agree
    items = [r for r in res["items"] if r["step"] == 160 and r["language"] == "python"
             and r["class"] == "shared"]
    assert sum(r["correct"] for r in items) == curves[(160, "shared", "python")][0]
    assert {r["language"] for r in res["shares"]} == {"php"}
    # v2 outputs: the row schema, each row with EOS, nulls next to every cell, agreement
    from babeltower.evaluate.knowledge import ROW_SCHEMA

    assert res["row_schema"] == list(ROW_SCHEMA) and res["provenance"]["config"]["eos"]
    assert all(r["eos"] is True and set(ROW_SCHEMA) <= set(r) for r in res["items"])
    nulls = {(r["step"], r["class"], r["language"]): r for r in res["nulls"]}
    nv = nulls[(160, "primary-only", "python")]
    assert nv["k"] == curves[(160, "primary-only", "python")][0]
    assert nv["never_taught_n"] == curves[(160, "never-taught", "python")][1]
    assert {r["key"] for r in res["form_curves"]} == {"same"}
    assert sum(r["n"] for r in res["form_curves"] if r["step"] == 160) == \
        sum(n for (s, _, _), (_, n) in curves.items() if s == 160)
    ag = [a for a in res["agreement"] if a["step"] == 160 and a["classes"] == ["shared"]]
    # shared facts are asked in both languages: every one is in the agreement table
    assert len(ag) == 1 and ag[0]["facts"] == 12 and ag[0]["lang_b"] == "php"


# ------------------------------------------------------------------ nulls and agreement


def _arow(fact, lang, correct, predicted, answer, lp, key="same", cls="primary-only"):
    return {"query": f"q-{fact}-{lang}", "fact": fact, "class": cls, "target": None,
            "key": key, "language": lang, "side": "primary" if lang == "python" else "new",
            "form": "definition", "split": "test", "correct": correct, "predicted": predicted,
            "answer": answer, "logprob_answer_set": lp}


def _agreement_rows():
    # 20 facts; A = python right on f0-f9. B = php right on f0-f7 (8 of the 10 A-right)
    # and on f10-f11 (2 of the 10 A-wrong): P(B|A right) = 0.8, P(B|A wrong) = 0.2.
    # Both wrong: f12-f19 (answers " 10" x4, " 20" x4); A and B give the same wrong answer
    # on f12-f17 (6 of 8).
    rows = []
    ans = [" 10", " 20", " 30", " 40"]
    for i in range(20):
        a = " 10" if i < 16 else " 20"
        a = ans[i % 2] if i < 12 else (" 10" if i < 16 else " 20")
        right_a, right_b = i < 10, i < 8 or i in (10, 11)
        wrong_a = " 30" if i % 3 else " 40"
        wrong_b = wrong_a if 12 <= i < 18 else ({" 30": " 40", " 40": " 30"}[wrong_a])
        rows.append(_arow(f"f{i}", "python", int(right_a), a if right_a else wrong_a, a, -i / 10))
        rows.append(_arow(f"f{i}", "php", int(right_b), a if right_b else wrong_b, a,
                          -(19 - i) / 10 if i in (0, 19) else -i / 10))
    rows.append(_arow("f0", "php", 1, " 10", " 10", 0.0, key="decoy"))   # never counted
    return rows


def test_fact_agreement_matches_hand_counts():
    from babeltower.evaluate.knowledge import fact_agreement

    ag = fact_agreement(_agreement_rows(), "python", "php", n_perm=2000, n_boot=500)
    assert ag["facts"] == 20
    r, w = ag["p_b_given_right_a"], ag["p_b_given_wrong_a"]
    assert (r["k"], r["n"], w["k"], w["n"]) == (8, 10, 2, 10)
    assert (r["lo95"], r["hi95"]) == tuple(pytest.approx(x) for x in _wilson_by_hand(8, 10))
    # Newcombe's method 10 from the two hand Wilson intervals
    (l1, u1), (l2, u2) = _wilson_by_hand(8, 10), _wilson_by_hand(2, 10)
    d = ag["difference"]
    assert d["estimate"] == pytest.approx(0.6)
    assert d["lo95"] == pytest.approx(0.6 - math.sqrt((0.8 - l1) ** 2 + (u2 - 0.2) ** 2))
    assert d["hi95"] == pytest.approx(0.6 + math.sqrt((u1 - 0.8) ** 2 + (0.2 - l2) ** 2))
    assert d["lo95"] > 0
    # same wrong answer: 6 of the 8 both-wrong facts. The within-answer permutation null,
    # exactly: per stratum (right answer), E[matches] = (1/m) sum_i sum_j [A_i == B_j]
    sw = ag["same_wrong"]
    assert (sw["k"], sw["n"], sw["n_permutable"]) == (6, 8, 8)
    rows = {(x["fact"], x["language"]): x for x in _agreement_rows() if x["key"] != "decoy"}
    exp = 0.0
    for stratum in ([f"f{i}" for i in range(12, 16)], [f"f{i}" for i in range(16, 20)]):
        pa = [rows[(f, "python")]["predicted"] for f in stratum]
        pb = [rows[(f, "php")]["predicted"] for f in stratum]
        exp += sum(x == y for x in pa for y in pb) / len(stratum)
    assert sw["null_mean"] == pytest.approx(exp / 8, abs=0.02)
    assert sw["null_lo95"] <= sw["null_mean"] <= sw["null_hi95"] and 0 < sw["p_value"] <= 1
    # Spearman: B's log-probs are A's with facts f0 and f19 swapped: d = 19 for both
    n = 20
    want = 1 - 6 * (2 * 19 ** 2) / (n * (n * n - 1))
    sp = ag["spearman"]
    assert sp["rho"] == pytest.approx(want) and sp["lo95"] <= sp["hi95"] <= 1
    # filters: classes and key select rows; an unknown key leaves no facts
    assert fact_agreement(_agreement_rows(), "python", "php", key="mapped")["facts"] == 0
    assert fact_agreement(_agreement_rows(), "python", "php", classes=["shared"])["facts"] == 0


def test_independent_languages_give_no_agreement():
    # B's outcomes drawn independently of A's: the difference interval covers 0 and the
    # same-wrong rate sits inside its permutation null (a check that would fail if the
    # conditional rates were computed on the wrong facts)
    import random

    from babeltower.evaluate.knowledge import fact_agreement

    rng = random.Random(1)
    ans = [" 11", " 22", " 33", " 44"]
    rows = []
    for i in range(400):
        a = ans[i % 4]
        for lang in ("python", "php"):
            p = rng.choice(ans)
            rows.append(_arow(f"f{i}", lang, int(p == a), p, a, rng.random()))
    ag = fact_agreement(rows, "python", "php", n_perm=500, n_boot=200)
    assert ag["difference"]["lo95"] < 0 < ag["difference"]["hi95"]
    assert ag["same_wrong"]["p_value"] > 0.01
    assert ag["spearman"]["lo95"] < 0 < ag["spearman"]["hi95"]


def test_shuffled_null_and_never_taught_by_hand():
    from babeltower.evaluate.knowledge import knowledge_nulls, shuffled_null

    # 8 items; the model always says " 10"; the key holds " 10" three times: whatever the
    # permutation, accuracy is 3/8 - the shuffled null is the answer prior's, not 1/4
    rows = [_arow(f"f{i}", "php", int(a == " 10"), " 10", a, -1.0)
            for i, a in enumerate([" 10", " 10", " 10", " 20", " 30", " 40", " 20", " 30"])]
    sh = shuffled_null(rows, n_perm=200)
    assert sh["expected"] == pytest.approx(3 / 8) and sh["lo95"] == sh["hi95"] == 3 / 8
    assert sh["observed"] == 3 / 8 and sh["p_above"] == 1.0
    # predictions equal to the key: E = sum_a n_a^2 / n^2 = (9 + 4 + 4 + 1) / 64
    right = [{**r, "predicted": r["answer"], "correct": 1} for r in rows]
    sh = shuffled_null(right, n_perm=2000)
    assert sh["expected"] == pytest.approx(18 / 64)
    assert sh["observed"] == 1.0 and sh["p_above"] < 0.01
    never = [_arow(f"n{i}", "php", int(i < 2), " 10", " 10", -1.0, cls="never-taught")
             for i in range(8)]
    df = knowledge_nulls([("c", 5, right + never)], n_answers=4, n_perm=100)
    cell = df[df["class"] == "primary-only"].iloc[0]
    assert (cell.k, cell.n, cell.chance) == (8, 8, 0.25)
    assert (cell.never_taught_k, cell.never_taught_n, cell.never_taught_accuracy) == (2, 8, 0.25)
    assert (cell.never_taught_lo95, cell.never_taught_hi95) == \
        tuple(pytest.approx(x) for x in _wilson_by_hand(2, 8))
    assert cell.shuffled_expected == pytest.approx(18 / 64)


def test_curves_by_key_and_form():
    rows = [_arow(f"f{i}", "php", i % 2, " 10", " 10", -1.0, key=("same", "mapped")[i % 2])
            for i in range(6)]
    rows[0]["form"] = "config"
    rows.append(_arow("f9", "php", 1, " 10", " 10", -1.0, key="decoy"))
    df = knowledge_curves([("c", 1, rows)], n_answers=4, by=CURVE_BY)
    got = {r.key: (r.k, r.n) for _, r in df.iterrows()}
    assert got == {"same": (0, 3), "mapped": (3, 3), "decoy": (1, 1)}
    # the default (v1's cells) pools same and mapped and leaves the decoy out
    df = knowledge_curves([("c", 1, rows)], n_answers=4)
    assert "key" not in df.columns and [(r.k, r.n) for _, r in df.iterrows()] == [(3, 6)]
    df = knowledge_curves([("c", 1, rows[:-1])], by=("key", "form"))
    assert {(r.key, r.form): r.n for _, r in df.iterrows()} == {
        ("same", "config"): 1, ("same", "definition"): 2, ("mapped", "definition"): 3}


def test_summary_is_the_functions_output_in_json():
    from babeltower.evaluate.knowledge import fact_agreement, knowledge_summary

    rows = _agreement_rows()
    out = knowledge_summary(rows, n_answers=4, primary="python", n_boot=100, n_perm=100)
    json.dumps(out)                               # JSON-ready
    curves = knowledge_curves([("c", 0, rows)], 4, by=CURVE_BY)
    assert [(c["key"], c["language"], c["k"], c["n"]) for c in out["curves"]] == \
        [(r.key, r.language, r.k, r.n) for _, r in curves.iterrows()]
    assert {c["form"] for c in out["form_curves"]} == {"definition"}
    (ag,) = [a for a in out["agreement"] if a["key"] == "same"]
    want = fact_agreement(rows, "python", "php", classes=["primary-only"], key="same",
                          n_boot=100, n_perm=100)
    assert ag["p_b_given_right_a"] == want["p_b_given_right_a"]
    assert ag["same_wrong"] == want["same_wrong"] and ag["spearman"] == want["spearman"]
    assert {t["key"] for t in out["transfer"]} == {"same"} and out["chance"] == 0.25
