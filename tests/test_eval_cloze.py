"""Cloze accuracy: scores line up with independent unbatched forwards; a real model reads keywords."""

import math

import pytest
import torch

from babeltower.evaluate.cloze import evaluate_cloze, evaluate_cloze_series, score_items
from babeltower.probes.suite import ProbeSuite

SUITE = ProbeSuite.model_validate({
    "primary": "python", "new": "php",
    "pairs": [
        {"id": "len-strlen", "kind": "builtin",
         "primary": {"identifier": "len", "prompts": ["n = ", "k = 1 + "]},
         "new": {"identifier": "strlen", "prompts": ["<?php\n$n = ", "$k = 1 + "]}},
        {"id": "def-function", "kind": "keyword",
         "primary": {"identifier": "def", "prompts": ["\n", "x = 1\n"]},
         "new": {"identifier": "function", "prompts": ["<?php\n", "$x = 1;\n"]}},
    ]})


from tokenizer_fixtures import char_tokenizer  # noqa: E402,F401


def tiny(vocab, seed=0, uniform=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     num_key_value_heads=2, max_position_embeddings=64)).eval()
    if uniform:
        with torch.no_grad():
            m.lm_head.weight.zero_()
    return m


def test_item_scores_equal_unbatched_incremental_forwards():
    tok = char_tokenizer()
    model = tiny(len(tok.get_vocab()), seed=3)
    checked = SUITE.check(tok)
    items = checked.items + checked.shared
    assert len(items) == 8
    rows = score_items(model, items, batch_size=3)
    for it, row in zip(items, rows):
        ids = list(it.prompt_ids)
        lp_sum, exact = 0.0, True
        for j, t in enumerate(it.target_ids):
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1)
            if j == 0:
                assert row["top1"] == (int(lp.argmax()) == t)
                assert row["beats_counterpart"] == bool(lp[t] > lp[it.counterpart_first_id])
            exact &= int(lp.argmax()) == t
            lp_sum += float(lp[t])
            ids.append(t)
        assert row["logprob"] == pytest.approx(lp_sum, rel=1e-4, abs=1e-4)
        assert row["exact"] == exact
        assert row["target_tokens"] == len(it.target)  # char-level: one token per char


def test_uniform_model_and_aggregate_table():
    tok = char_tokenizer()
    V = len(tok.get_vocab())
    agg, per = evaluate_cloze(tiny(V, uniform=True), tok, [SUITE], items=True)
    assert list(per.logprob) == pytest.approx(list(-per.target_tokens * math.log(V)), rel=1e-5)
    assert not per.beats_counterpart.any()  # a tie is not a win
    assert set(agg.side) == {"primary", "new"}
    assert set(agg.kind) == {"builtin", "keyword", "all"}
    allnew = agg[(agg.side == "new") & (agg.kind == "all")].iloc[0]
    assert allnew.n == 4 and (agg.attribution == "first-token").all()


def test_series_with_output(tmp_path):
    import json

    tok = char_tokenizer()
    for step in (0, 4):
        d = tmp_path / "run" / "checkpoints" / f"step-{step:08d}"
        tiny(len(tok.get_vocab()), seed=step).save_pretrained(d)
        tok.save_pretrained(d)
    df = evaluate_cloze_series(tmp_path / "run", [SUITE], out=tmp_path / "c.json",
                               progress=False)
    assert set(df.checkpoint) == {"step-00000000", "step-00000004"}
    rec = json.loads((tmp_path / "c.json").read_text())
    assert rec["attribution"] == "first-token" and rec["rows"]


@pytest.mark.slow
def test_real_model_reads_python_keywords():
    """SmolLM2-135M knows Python: its top-1 after Python prompts is often the keyword."""
    from babeltower.checkpoints import list_checkpoints, smollm2_gguf

    model, tok = list_checkpoints(smollm2_gguf())[0].load()
    agg = evaluate_cloze(model, tok, ["python-php"])
    py = agg[(agg.side == "primary") & (agg.kind == "all")].iloc[0]
    php = agg[(agg.side == "new") & (agg.kind == "all")].iloc[0]
    assert py.n > 50 and php.n > 50
    assert py.top1_acc > 0.2 and php.top1_acc > 0.1
    assert py.exact_acc <= py.top1_acc
    # the identifier beats its other-language counterpart more often than not
    assert py.beats_counterpart > 0.6 and php.beats_counterpart > 0.5
    print(agg.to_string())
