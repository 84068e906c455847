"""The science of the mapped key variant, on a model trained here: a fact taught in Python
under its Python key is answered in PHP under a *different* PHP key when (and only when)
the query declares the map (``// python: KEY``), and a decoy - the Python key string itself
in PHP's key slot, the declaration naming a name taught nowhere - stays at chance; names
never taught are answered at the answer prior (the shuffled-answer null).

Setting (measured, see docs/knowledge.md): 48 facts per class, 4 answers, 40 exposures;
Python teaches the primary-only and shared facts under their Python keys; PHP teaches only
the map, through the shared facts' renderings (``bridge_keys: fresh``: the Python key
declared, a fresh key per rendering, the answer). The new-only class is left out of
training so that no PHP key slot carries information by itself. A 2-layer, 64-wide LLaMA,
450 steps of 16 x 64 tokens on CPU. At 400 steps in the probe: primary-only facts asked
in PHP through the map 46/48, the decoy 11/48, never-taught 10-14/48 (chance 12/48).
"""

from __future__ import annotations

import random

import pytest

from babeltower.corpus.knowledge import KnowledgeConfig, make_documents, make_facts, \
    make_queries
from babeltower.evaluate.knowledge import knowledge_items, shuffled_null

CFG = dict(primary="python", languages=["php"], keys=["mapped"], facts_per_class=48,
           n_answers=4, exposures=40, facts_per_document=4, seed=0)
CHANCE = 0.25


def _facts(cfg: KnowledgeConfig) -> dict:
    facts = make_facts(cfg)
    return {"config": cfg.model_dump(mode="json"), "facts": facts,
            "queries": make_queries(facts, cfg),
            "answers": sorted({" " + f["answer"] for f in facts}, key=int)}


def _tokenizer(texts):
    from transformers import PreTrainedTokenizerFast

    from tokenizer_fixtures import byte_level_bpe

    tok = byte_level_bpe(texts, 400)
    return tok, PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def _model(vocab: int, eos: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, eos_token_id=eos))


def _k_crit(n: int, p: float, alpha: float) -> int:
    """Smallest k with P(Binomial(n, p) >= k) <= alpha: a count a guessing model reaches
    with probability at most alpha."""
    from scipy.stats import binom

    return next(k for k in range(n + 1) if binom.sf(k - 1, n, p) <= alpha)


def _cell(rows, cls, key, lang):
    rs = [r for r in rows if r["class"] == cls and r["key"] == key and r["language"] == lang]
    return sum(r["correct"] for r in rs), len(rs), rs


@pytest.fixture(scope="module")
def trained():
    import torch

    torch.set_num_threads(1)
    cfg = KnowledgeConfig(**CFG)
    facts = _facts(cfg)
    texts = [d["text"] for d in make_documents(facts["facts"], cfg) if d["class"] != "new-only"]
    random.Random(0).shuffle(texts)
    tok, fast = _tokenizer(texts)
    eos = tok.token_to_id("<|endoftext|>")
    stream = []
    for t in texts:   # as the packed stream: each document after an EOS
        stream += [eos] + tok.encode(t).ids
    data = torch.tensor(stream)
    model = _model(tok.get_vocab_size(), eos)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    for step in range(450):
        ix = torch.randint(0, len(data) - 65, (16,), generator=gen)
        x = torch.stack([data[i:i + 64] for i in ix])
        for g in opt.param_groups:
            g["lr"] = 3e-3 * min(1.0, (step + 1) / 20)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return knowledge_items(model, fast, facts, batch_size=64)


@pytest.mark.slow
def test_transfer_goes_through_the_declared_map_not_the_key_string(trained):
    from scipy.stats import binomtest

    rows = trained
    k_py, n_py, _ = _cell(rows, "primary-only", "mapped", "python")
    k_map, n_map, _ = _cell(rows, "primary-only", "mapped", "php")
    k_dec, n_dec, _ = _cell(rows, "primary-only", "decoy", "php")
    assert n_py == n_map == n_dec == 48
    crit = _k_crit(48, CHANCE, 1e-4)            # 25 of 48: P(guessing >= 25) <= 1e-4
    assert crit == 25
    print(f"\nmap transfer: python {k_py}/48, php through the map {k_map}/48, decoy {k_dec}/48")
    # the facts were learned in Python (asked in a held-out form)
    assert k_py >= crit, (k_py, n_py)
    # ... and are answered in PHP under a PHP key the model never saw, through the map
    assert k_map >= crit, (k_map, n_map)
    # the decoy (the Python key string in PHP's key slot, the map naming an untaught name)
    # is not above chance: the answer comes from the declared map, not the string
    assert binomtest(k_dec, n_dec, CHANCE, alternative="greater").pvalue > 0.01, (k_dec, n_dec)
    assert k_map - k_dec >= crit - 12, (k_map, k_dec)
    # the map is a per-fact route: answered through the map where it is right in Python
    right_py = {r["fact"] for r in rows if r["class"] == "primary-only" and r["key"] == "mapped"
                and r["language"] == "python" and r["correct"]}
    _, _, php = _cell(rows, "primary-only", "mapped", "php")
    assert sum(r["correct"] for r in php if r["fact"] in right_py) >= crit


@pytest.mark.slow
def test_never_taught_names_are_answered_at_the_answer_prior(trained):
    from scipy.stats import binomtest

    for lang in ("python", "php"):
        k, n, rs = _cell(trained, "never-taught", "mapped", lang)
        null = shuffled_null(rs, n_perm=2000)
        assert n == 48
        # not above the shuffled null (the model's own answer prior) at 0.01, and within
        # its two-sided binomial 99.9% interval (a seed-1 run of this setting gave 4/48 in
        # PHP at 450 steps and 10/48 at 600: 48 items swing that far), and the same
        # against 1/answers
        for p0 in (null["expected"], CHANCE):
            assert binomtest(k, n, p0, alternative="greater").pvalue > 0.01, (lang, k, n, p0)
            assert binomtest(k, n, p0).pvalue > 0.001, (lang, k, n, p0)


def test_untrained_model_never_taught_at_the_answer_prior():
    from scipy.stats import binomtest

    cfg = KnowledgeConfig(**{**CFG, "keys": ["same", "mapped"]})
    facts = _facts(cfg)
    tok, fast = _tokenizer([d["text"] for d in make_documents(facts["facts"], cfg)][:400])
    rows = knowledge_items(_model(tok.get_vocab_size(), tok.token_to_id("<|endoftext|>")),
                           fast, facts, batch_size=64)
    rs = [r for r in rows if r["class"] == "never-taught"]
    k, n = sum(r["correct"] for r in rs), len(rs)
    null = shuffled_null(rs, n_perm=1000)
    assert n == 48 * 2 and null["lo95"] <= null["expected"] <= null["hi95"]
    assert binomtest(k, n, null["expected"]).pvalue > 0.01, (k, n, null)
    # an untrained model's answers do not depend on the fact: every class is at its prior
    for cls in ("primary-only", "shared", "new-only"):
        rc = [r for r in rows if r["class"] == cls and r["key"] != "decoy"]
        kc = sum(r["correct"] for r in rc)
        assert binomtest(kc, len(rc), shuffled_null(rc, 200)["expected"]).pvalue > 0.001
