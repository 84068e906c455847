"""Held-out loss and bits-per-byte: exact on models whose answer is known."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from babeltower.corpus.shards import ShardWriter, write_manifest
from babeltower.errors import BabelError
from babeltower.evaluate.loss import (Document, evaluate_loss, score_documents,
                                      select_documents, windows)

VOCAB = 50
EOS = 0


from tokenizer_fixtures import char_tokenizer  # noqa: E402,F401


def tiny_model(seed=0, uniform=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=64, eos_token_id=EOS, tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg).eval()
    if uniform:
        with torch.no_grad():
            m.lm_head.weight.zero_()
    return m


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    manifest = {"languages": {}, "eos_id": EOS, "vocab_size": VOCAB, "dtype": "uint16"}
    for lang, n_docs in (("python", 6), ("php", 4)):
        w = ShardWriter(root / lang / "validation", np.uint16, EOS)
        for i in range(n_docs):
            n = int(rng.integers(5, 150))  # some longer than the 64-token context
            w.add(rng.integers(1, VOCAB, n), n_bytes=3 * n + i)
        manifest["languages"][lang] = {"validation": w.close()}
    write_manifest(root, manifest)
    return root


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(2, 40), st.data())
def test_windows_score_every_target_once_within_context(n, context, data):
    stride = data.draw(st.integers(1, context))
    seen = []
    for b, e, new in windows(n, context, stride):
        assert 0 < e - b <= context and 1 <= new <= e - b
        targets = list(range(e - new + 1, e + 1))
        seen.extend(targets)
        # every scored target has at least context - stride tokens (or all before it)
        for t in targets:
            assert t - b >= min(t, context - stride + 1) or b == 0
    assert seen == list(range(1, n + 1))


def test_uniform_model_gives_log_vocab_exactly(data_dir):
    df = evaluate_loss(tiny_model(uniform=True), data_dir, progress=False)
    assert set(df.language) == {"python", "php"}
    for _, r in df.iterrows():
        assert r.loss == pytest.approx(math.log(VOCAB), rel=1e-6)
        assert r.bits_per_byte == pytest.approx(r.tokens * math.log2(VOCAB) / r.bytes, rel=1e-6)


def test_windowed_score_equals_a_plain_per_token_loop():
    model = tiny_model(seed=1)
    rng = np.random.default_rng(1)
    doc = Document("python", rng.integers(1, VOCAB, 40), 100)
    # reference: each token predicted from the non-overlapping window it falls in
    context = 16
    seq = torch.tensor(np.concatenate([[EOS], doc.tokens]))
    ref = 0.0
    for b in range(0, 40, context):
        inp = seq[b:b + context + 1]
        with torch.no_grad():
            logp = torch.log_softmax(model(inp[None, :-1]).logits[0], -1)
        ref -= float(logp[torch.arange(len(inp) - 1), inp[1:]].sum())
    got = score_documents(model, [doc], EOS, context=context, batch_size=3)
    assert got["nats"] == pytest.approx(ref, rel=1e-5)
    assert got["tokens"] == 40 and got["bytes"] == 100
    # more context (sliding window) changes the number, padding in a batch does not
    slid = score_documents(model, [doc], EOS, context=context, stride=4, batch_size=1)
    slid_b = score_documents(model, [doc, doc], EOS, context=context, stride=4, batch_size=8)
    assert slid["nats"] != pytest.approx(ref, rel=1e-6)
    assert slid_b["nats"] == pytest.approx(2 * slid["nats"], rel=1e-5)


def test_budget_is_deterministic_whole_documents():
    docs = np.array([[0, 10, 30], [11, 0, 0], [12, 25, 70], [38, 5, 9], [44, 7, 7]])
    assert select_documents(docs, 30) == [0, 2]
    assert select_documents(docs, 1000) == [0, 2, 3, 4]
    assert select_documents(docs, 1000, max_docs=2) == [0, 2]


def test_series_resume_and_output(data_dir, tmp_path):
    run = tmp_path / "run" / "checkpoints"
    for step, seed in ((0, 0), (8, 1)):
        tiny_model(seed).save_pretrained(run / f"step-{step:08d}")
        char_tokenizer().save_pretrained(run / f"step-{step:08d}")
    out = tmp_path / "loss.json"
    df = evaluate_loss(tmp_path / "run", data_dir, ["php"], max_tokens_per_language=100,
                       out=out, progress=False)
    assert list(df.checkpoint) == ["step-00000000", "step-00000008"]
    assert list(df.step) == [0, 8] and df.tokens.iloc[0] >= 100
    rec = json.loads(out.read_text())
    assert rec["provenance"]["config"]["max_tokens_per_language"] == 100
    assert len(rec["rows"]) == 2
    # resume: a finished checkpoint in the partial file is not recomputed
    fake = dict(rec["rows"][0], loss=123.0)
    (tmp_path / "loss.json.partial").mkdir()
    (tmp_path / "loss.json.partial" / "loss.rank0.jsonl").write_text(json.dumps(fake) + "\n")
    df2 = evaluate_loss(tmp_path / "run", data_dir, ["php"], max_tokens_per_language=100,
                        out=out, progress=False)
    assert df2.loss.iloc[0] == 123.0 and df2.loss.iloc[1] == pytest.approx(df.loss.iloc[1])


def test_raw_text_with_the_models_own_tokenizer(tmp_path):
    tok = char_tokenizer()
    vocab = tok.get_vocab()
    (tmp_path / "a.py").write_text("print('hello')\n")
    (tmp_path / "b.php").write_text("<?php echo 1;\n")
    (tmp_path / "notes.xyz").write_text("ignored")
    from transformers import LlamaConfig, LlamaForCausalLM

    m = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=16,
                                     intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=2,
                                     max_position_embeddings=32)).eval()
    with torch.no_grad():
        m.lm_head.weight.zero_()
    df = evaluate_loss(m, text=tmp_path, tokenizer=tok, progress=False)
    assert sorted(df.language) == ["php", "python"]
    py = df[df.language == "python"].iloc[0]
    assert py.tokens == len("print('hello')\n") and py.bytes == py.tokens
    assert py.bits_per_byte == pytest.approx(math.log2(len(vocab)), rel=1e-6)


def test_bad_inputs(data_dir, tmp_path):
    with pytest.raises(BabelError, match="not a packed data directory"):
        evaluate_loss(tiny_model(), tmp_path, progress=False)
    with pytest.raises(BabelError, match="not in"):
        evaluate_loss(tiny_model(), data_dir, ["go"], progress=False)
    small = tiny_model()
    small.resize_token_embeddings(10)
    with pytest.raises(BabelError, match="another tokenizer"):
        evaluate_loss(small, data_dir, progress=False)


def test_document_bootstrap_interval():
    from babeltower.analysis.statistics import Estimate

    nats = np.array([10.0, 20.0, 30.0, 40.0])
    units = np.array([10.0, 10.0, 10.0, 10.0])
    e = Estimate.ratio_bootstrap(nats, units)
    assert e.kind == "bootstrap" and e.n == 4 and e.value == 2.5
    assert 1.0 <= e.lo < 2.5 < e.hi <= 4.0
    # equal units: the ratio is the mean of 1, 2, 3, 4, whose bootstrap se is the
    # population sd over sqrt(n) = sqrt(1.25) / 2
    assert abs(e.se - np.sqrt(1.25) / 2) < 0.05
    # identical documents: no spread at all
    same = Estimate.ratio_bootstrap(np.full(5, 3.0), np.full(5, 2.0))
    assert (same.lo, same.hi, same.se) == (1.5, 1.5, 0.0)
    one = Estimate.ratio_bootstrap(np.array([3.0]), np.array([2.0]))
    assert (one.lo, one.hi, one.se) == (1.5, 1.5, None)


def test_rows_carry_intervals_around_the_point(data_dir):
    df = evaluate_loss(tiny_model(seed=2), data_dir, progress=False)
    for _, r in df.iterrows():
        assert r.loss_lo95 <= r.loss <= r.loss_hi95
        assert r.bpb_lo95 <= r.bits_per_byte <= r.bpb_hi95
        assert r.bpb_hi95 > r.bpb_lo95
