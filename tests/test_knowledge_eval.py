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
from babeltower.evaluate.knowledge import (knowledge_curves, knowledge_items,
                                           transfer_shares)

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
    rows = knowledge_items(model, tok, facts, batch_size=5)   # uneven batches, padding
    assert len(rows) == len(facts["queries"])
    answer_ids = [tok.encode(a)[0] for a in facts["answers"]]
    for q, r in zip(facts["queries"], rows):
        ids = tok.encode(q["prefix"] + q["answer"])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0, -1]
        full = torch.log_softmax(logits, -1)
        on_set = logits[answer_ids]
        assert r["logprob"] == pytest.approx(float(full[ids[-1]]), abs=1e-4)
        assert r["correct"] == int(answer_ids[int(on_set.argmax())] == ids[-1])
        assert r["predicted"] == facts["answers"][int(on_set.argmax())]
        assert (r["fact"], r["class"], r["language"]) == (q["fact"], q["class"], q["language"])
    assert len(knowledge_items(model, tok, facts, split="validation")) == \
        sum(q["split"] == "validation" for q in facts["queries"])


# ------------------------------------------------------------------ a primary-only model


TINY_KNOWLEDGE = dict(primary="python", languages=["php"], facts_per_class=12, exposures=40,
                      n_answers=4, facts_per_document=4, seed=0)


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
    curves = {(r["step"], r["class"], r["language"]): (r["k"], r["n"]) for r in res["curves"]}
    assert sorted({s for s, _, _ in curves}) == [0, 80, 160]
    for cls in ("primary-only", "shared", "new-only"):
        k, n = curves[(160, cls, "python")]
        p_above = binomtest(k, n, 0.25, alternative="greater").pvalue
        if cls == "new-only":   # never in the corpus: at chance
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
